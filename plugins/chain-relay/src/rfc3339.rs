//! RFC 3339 timestamps, as the gateway writes `occurred_at`
//! (`2023-11-14T22:13:20.123Z`). The same parser as generic-webhook's
//! `extract::parse_rfc3339`, copied: a plugin crate cannot depend on another
//! plugin crate without exporting its connector too.

use soundbox_plugin_sdk::time;

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` → Unix milliseconds.
pub fn parse(text: &str) -> Option<i64> {
    let civil = text.get(..19)?;
    let rest = text.get(19..)?;
    // The SDK reads a zone-less date as UTC+7; add that back for UTC+0.
    let as_utc = time::parse_vietnam_local(civil)? + time::VIETNAM_OFFSET_SECS * 1000;
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            r.split_at(digits)
        }
        None => ("", rest),
    };
    let millis: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{:0<3}", &fraction[..fraction.len().min(3)])
            .parse()
            .ok()?
    };
    let offset_secs: i64 = match zone {
        "Z" | "z" => 0,
        _ => {
            let b = zone.as_bytes();
            if b.len() != 6 || b[3] != b':' {
                return None;
            }
            let sign = match b[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = zone.get(1..3)?.parse().ok()?;
            let minutes: i64 = zone.get(4..6)?.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    Some(as_utc + millis - offset_secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn what_the_gateway_writes() {
        // `date -u -d @1700000000` = 2023-11-14 22:13:20 UTC.
        assert_eq!(parse("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse("2023-11-15T05:13:20+07:00"), Some(1_700_000_000_000));
        assert_eq!(
            parse("2023-11-14T21:13:20.5-01:00"),
            Some(1_700_000_000_500)
        );
        assert_eq!(
            parse("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "yesterday",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0700",
            "2023-11-14T22:13:20+24:00",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14Ă22:13:20Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
