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
