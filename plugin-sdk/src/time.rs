//! Timestamps. Vietnamese providers often send local time without a zone:
//! that is UTC+7 (Vietnam has no daylight saving).

/// Vietnam's offset from UTC in seconds.
pub const VIETNAM_OFFSET_SECS: i64 = 7 * 3600;

/// Now, in Unix milliseconds (0 if the clock says before 1970). In a plugin
/// this is the gateway's clock (WASI wall clock): use it for replay windows.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// Parses `YYYY-MM-DD HH:MM:SS` (or with a `T`) as Vietnam local time into
/// Unix milliseconds. `None` when malformed.
pub fn parse_vietnam_local(text: &str) -> Option<i64> {
    let text = text.trim();
    let b = text.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || (b[10] != b' ' && b[10] != b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let secs = civil_to_unix(year, month, day, hour, minute, second)?;
    Some((secs - VIETNAM_OFFSET_SECS) * 1000)
}

/// Parses compact `yyyyMMddHHmmss` (VNPay) as Vietnam local time.
pub fn parse_vietnam_compact(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.len() != 14 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let expanded = format!(
        "{}-{}-{} {}:{}:{}",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[8..10],
        &t[10..12],
        &t[12..14]
    );
    parse_vietnam_local(&expanded)
}

/// An RFC 3339 timestamp, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`
/// (e.g. `2023-11-14T22:13:20.123Z`, what the gateway itself writes), as Unix
/// milliseconds; a fraction past milliseconds is cut off.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let civil = text.get(..19)?;
    let rest = text.get(19..)?;
    // The SDK reads a zone-less date as UTC+7; add that back for UTC+0.
    let as_utc = parse_vietnam_local(civil)? + VIETNAM_OFFSET_SECS * 1000;
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

fn civil_to_unix(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> Option<i64> {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
        return None;
    }
    if !(0..24).contains(&hh) || !(0..60).contains(&mm) || !(0..61).contains(&ss) {
        return None;
    }
    // Days from civil, Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vietnam_local_is_utc_plus_seven() {
        // 2024-07-25 14:02:37 +07:00 == 2024-07-25T07:02:37Z == 1721890957
        assert_eq!(
            parse_vietnam_local("2024-07-25 14:02:37"),
            Some(1_721_890_957_000)
        );
        assert_eq!(parse_vietnam_local("1970-01-01 07:00:00"), Some(0));
        assert_eq!(
            parse_vietnam_compact("20240725140237"),
            Some(1_721_890_957_000)
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "2024-13-01 00:00:00",
            "2023-02-29 00:00:00",
            "2024-07-25",
            "2024/07/25 14:02:37",
            "2024-07-25 24:00:00",
        ] {
            assert_eq!(parse_vietnam_local(bad), None, "{bad}");
        }
        assert!(parse_vietnam_local("2024-02-29 00:00:00").is_some());
    }
}

#[cfg(test)]
mod rfc3339_tests {
    use super::parse_rfc3339 as parse;

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
