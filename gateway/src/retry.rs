//! When to try a failed call again: the backoff every sink, poller and
//! MQTT link uses, and a server's `Retry-After`.

use std::time::{Duration, SystemTime};

/// Capped exponential backoff with full jitter: attempt `n` waits a uniformly
/// random time in `[0, min(max, initial * 2^n))`. Full jitter (rather than
/// adding jitter on top of the exponential delay) spreads the retries of many
/// shops that lost the same upstream at once. A server's `Retry-After` wins
/// over the computed delay, up to `max_retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.max);
        let ceiling_ms = ceiling.as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=ceiling_ms))
    }
}

/// The `Retry-After` of a response, if it has a valid one.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_under_the_exponential_ceiling_and_the_cap() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(10),
        };
        for attempt in 0..40 {
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt.min(20))).min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(policy.delay(attempt, None) <= ceiling, "attempt {attempt}");
            }
        }
    }

    #[test]
    fn delay_is_jittered_over_the_whole_range() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let samples: Vec<Duration> = (0..500).map(|_| policy.delay(5, None)).collect();
        assert!(samples.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(750)));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(86_400))),
            policy.max_retry_after
        );
    }

    #[test]
    fn parses_both_retry_after_forms() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
