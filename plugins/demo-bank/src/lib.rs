//! A pretend bank for demos and soak tests: each poll returns the payments
//! that fell due since the last one, at `payments_per_minute`.
//!
//! Each call is a fresh sandbox, so the only memory is the KV entry
//! [`STATE_KEY`]: how many payments were emitted and when the last one was
//! due. Payment number `n` is derived from (`seed`, `n`) alone, so a poll
//! whose state write was lost gives the same ids again and the gateway's
//! dedupe absorbs them.

use serde::{Deserialize, Serialize};
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, Direction, PollOutcome, PollingConnector, config,
    export_polling_connector, kv, log, time,
};

/// The dedupe provider.
pub const PROVIDER: &str = "demo-bank";
/// The KV key holding [`State`] as JSON.
pub const STATE_KEY: &str = "state";
/// At most this many payments per poll, so a long pause does not flood the
/// speaker (also the gateway's default `max_changes_per_call`).
pub const MAX_PER_POLL: u64 = 100;
/// Never ask to be polled sooner than this: faster rates come in batches.
pub const MIN_NEXT_POLL_MS: u64 = 1_000;
/// The highest rate: [`MAX_PER_POLL`] per [`MIN_NEXT_POLL_MS`].
pub const MAX_PER_MINUTE: f64 = 6_000.0;

const KNOWN_KEYS: &[&str] = &[
    "payments_per_minute",
    "account",
    "min_amount",
    "max_amount",
    "seed",
    "outgoing_share",
];

pub struct DemoBank;

impl PollingConnector for DemoBank {
    fn poll() -> Result<PollOutcome, ConnectorError> {
        poll_at(time::now_ms())
    }
}

export_polling_connector!(DemoBank);

/// The connector's config, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Time between two payments.
    pub interval_ms: u64,
    pub account: String,
    /// Amounts are `thousands * 1000` for `thousands` in this range.
    pub min_thousands: u64,
    pub max_thousands: u64,
    pub seed: u64,
    pub outgoing_share: f64,
}

fn fatal(message: String) -> ConnectorError {
    ConnectorError::Fatal(message)
}

fn number<T: std::str::FromStr>(key: &str, default: T) -> Result<T, ConnectorError> {
    match config::get(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| fatal(format!("config `{key}` = `{text}` is not a valid number"))),
    }
}

impl Settings {
    pub fn load() -> Result<Settings, ConnectorError> {
        if let Some(unknown) = config::keys()
            .into_iter()
            .find(|k| !KNOWN_KEYS.contains(&k.as_str()))
        {
            return Err(fatal(format!("unknown config key `{unknown}` (typo?)")));
        }
        let per_minute: f64 = number("payments_per_minute", 6.0)?;
        if !(per_minute > 0.0 && per_minute <= MAX_PER_MINUTE) {
            return Err(fatal(format!(
                "config `payments_per_minute` must be above 0 and at most {MAX_PER_MINUTE}"
            )));
        }
        let interval_ms = ((60_000.0 / per_minute).round() as u64).max(1);
        let account = config::get_or("account", "0123456789").trim().to_string();
        if account.is_empty() || account.len() > 64 || account.chars().any(char::is_control) {
            return Err(fatal(
                "config `account` must be 1-64 bytes without control characters".into(),
            ));
        }
        let min_amount: u64 = number("min_amount", 10_000)?;
        let max_amount: u64 = number("max_amount", 2_000_000)?;
        let min_thousands = min_amount.div_ceil(1000).max(1);
        let max_thousands = max_amount / 1000;
        if min_thousands > max_thousands {
            return Err(fatal(format!(
                "config `min_amount` ({min_amount}) to `max_amount` ({max_amount}) holds no multiple of 1000"
            )));
        }
        if max_thousands > 1_000_000_000 {
            return Err(fatal(
                "config `max_amount` is above 1,000,000,000,000".into(),
            ));
        }
        let outgoing_share: f64 = number("outgoing_share", 0.0)?;
        if !(0.0..=1.0).contains(&outgoing_share) {
            return Err(fatal("config `outgoing_share` must be 0 to 1".into()));
        }
        Ok(Settings {
            interval_ms,
            account,
            min_thousands,
            max_thousands,
            seed: number("seed", 1)?,
            outgoing_share,
        })
    }
}

/// What survives between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Payments emitted so far; the next one is number `emitted + 1`.
    pub emitted: u64,
    /// When the last emitted payment was due (Unix ms).
    pub last_ms: i64,
}

/// What one poll emits, decided from the state and the clock alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The number of the first payment in `due_at`.
    pub first: u64,
    /// When each payment to emit was due.
    pub due_at: Vec<i64>,
    pub state: State,
    pub next_poll_ms: u64,
}

/// The first poll emits one payment at once, so a demo shows something
/// straight away; later polls emit one per `interval_ms` elapsed, at most
/// [`MAX_PER_POLL`], dropping an older backlog (after a long pause the
/// latest payments are the ones worth announcing).
pub fn plan(interval_ms: u64, state: Option<State>, now_ms: i64) -> Plan {
    let interval = interval_ms.max(1);
    let Some(state) = state else {
        return Plan {
            first: 1,
            due_at: vec![now_ms],
            state: State {
                emitted: 1,
                last_ms: now_ms,
            },
            next_poll_ms: interval.max(MIN_NEXT_POLL_MS),
        };
    };
    // A clock that went back emits nothing until it passes `last_ms` again.
    let elapsed = u64::try_from(now_ms.saturating_sub(state.last_ms)).unwrap_or(0);
    let due = elapsed / interval;
    let take = due.min(MAX_PER_POLL);
    // `due * interval <= elapsed`, so this stays within i64.
    let last_ms = state.last_ms + (due * interval) as i64;
    let due_at = (0..take)
        .map(|i| last_ms - ((take - 1 - i) * interval) as i64)
        .collect();
    let until_next = u64::try_from(last_ms + interval as i64 - now_ms).unwrap_or(interval);
    Plan {
        first: state.emitted + 1,
        due_at,
        state: State {
            emitted: state.emitted + take,
            last_ms,
        },
        next_poll_ms: until_next.min(interval).max(MIN_NEXT_POLL_MS),
    }
}

/// [`DemoBank::poll`] at a given time (tests pass a fake clock).
pub fn poll_at(now_ms: i64) -> Result<PollOutcome, ConnectorError> {
    let settings = Settings::load()?;
    let stored = kv::get(STATE_KEY);
    let state: Option<State> = match &stored {
        None => None,
        Some(bytes) => Some(serde_json::from_slice(bytes).map_err(|e| {
            fatal(format!(
                "KV `{STATE_KEY}` is not a demo-bank state ({e}); reset the connector's KV"
            ))
        })?),
    };
    let plan = plan(settings.interval_ms, state, now_ms);
    if Some(plan.state) != state {
        let new = serde_json::to_vec(&plan.state)
            .map_err(|e| fatal(format!("cannot encode state: {e}")))?;
        match kv::compare_and_swap(STATE_KEY, stored.as_deref(), &new) {
            Ok(true) => {}
            Ok(false) => {
                // Another poll got there first and emitted these same payments.
                log::debug("state changed under this poll; leaving it to the other one");
                return Ok(PollOutcome {
                    changes: Vec::new(),
                    next_poll_ms: Some(MIN_NEXT_POLL_MS),
                });
            }
            Err(e) => return Err(ConnectorError::Transient(format!("KV write failed: {e}"))),
        }
    }
    let changes = plan
        .due_at
        .iter()
        .zip(plan.first..)
        .map(|(at, n)| payment(&settings, n, *at))
        .collect();
    Ok(PollOutcome {
        changes,
        next_poll_ms: Some(plan.next_poll_ms),
    })
}

/// SplitMix64: tiny, fast and good enough to make up payments.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream for payment `n` of `seed`.
    pub fn for_payment(seed: u64, n: u64) -> Self {
        let mut base = SplitMix64(seed);
        SplitMix64(base.next_u64() ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`; modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
}

const FAMILY: &[&str] = &[
    "NGUYEN", "TRAN", "LE", "PHAM", "HOANG", "HUYNH", "VU", "VO", "DANG", "BUI", "DO", "HO", "NGO",
    "DUONG", "LY",
];
const MIDDLE: &[&str] = &[
    "VAN", "THI", "DUC", "MINH", "THANH", "NGOC", "QUOC", "HONG", "ANH", "GIA", "HOAI",
];
const GIVEN: &[&str] = &[
    "AN", "BINH", "CHI", "DUNG", "HA", "HAI", "HANH", "HIEU", "HOA", "HUNG", "HUONG", "KHANH",
    "LAN", "LINH", "LONG", "MAI", "NAM", "PHUONG", "QUANG", "TAM", "THAO", "TRANG", "TUAN", "VY",
    "YEN",
];
/// Memos payers type; `{n}` becomes a number, `{name}` the payer's name.
const INCOMING_MEMOS: &[&str] = &[
    "CK tien ca phe",
    "Thanh toan don {n}",
    "{name} chuyen tien",
    "TT tien tra sua ban {n}",
    "mua banh mi",
    "ck tien hang don {n}",
    "Thanh toan QR {n}",
    "{name} thanh toan hoa don {n}",
    "tien com trua",
    "Chuyen khoan mua hang",
    "{name} CK tien bun bo",
    "tra tien nuoc mia",
];
const OUTGOING_MEMOS: &[&str] = &[
    "Thanh toan tien dien",
    "Tra tien nhap hang don {n}",
    "Chuyen tien luong nhan vien",
    "Phi dich vu SMS Banking",
    "Thanh toan tien nuoc",
];
const PAYEES: &[&str] = &[
    "CONG TY DIEN LUC",
    "CTY TNHH THUC PHAM AN PHAT",
    "CONG TY CP CAP NUOC",
    "CTY TNHH CA PHE SAI GON",
];

/// Payment number `n`: everything but the time comes from (`seed`, `n`).
pub fn payment(settings: &Settings, n: u64, due_ms: i64) -> BalanceChange {
    let mut rng = SplitMix64::for_payment(settings.seed, n);
    let outgoing = rng.unit() < settings.outgoing_share;
    // The smaller of two draws: small payments are commoner, as in a shop.
    let span = settings.max_thousands - settings.min_thousands + 1;
    let thousands = settings.min_thousands + rng.below(span).min(rng.below(span));
    let name = format!(
        "{} {} {}",
        rng.pick(FAMILY),
        rng.pick(MIDDLE),
        rng.pick(GIVEN)
    );
    let memos = if outgoing {
        OUTGOING_MEMOS
    } else {
        INCOMING_MEMOS
    };
    let memo = rng
        .pick(memos)
        .replace("{n}", &(1000 + rng.below(9000)).to_string())
        .replace("{name}", &name);
    let counterparty = if outgoing {
        rng.pick(PAYEES).to_string()
    } else {
        name
    };
    let reference = reference(&mut rng, due_ms);
    BalanceChange {
        direction: if outgoing {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        reference: Some(reference),
        counterparty: Some(counterparty),
        content: Some(memo),
        occurred_at_ms: Some(due_ms),
        extra: vec![("bank".into(), "Demo Bank".into())],
        ..BalanceChange::incoming(
            PROVIDER,
            &format!("demo-{}-{n}", settings.seed),
            &settings.account,
            thousands * 1000,
        )
    }
}

/// A bank reference the way Vietnamese banks print them: `FT`, the year and
/// day of the year (Vietnam time), then five random characters.
fn reference(rng: &mut SplitMix64, at_ms: i64) -> String {
    const CHARS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let (year, day) = vietnam_year_and_day(at_ms).unwrap_or((1970, 1));
    let tail: String = (0..5)
        .map(|_| char::from(CHARS[rng.below(CHARS.len() as u64) as usize]))
        .collect();
    format!("FT{:02}{day:03}{tail}", year % 100)
}

/// (year, day of year from 1) of `at_ms` in Vietnam.
pub fn vietnam_year_and_day(at_ms: i64) -> Option<(i64, i64)> {
    let local_days = (at_ms + time::VIETNAM_OFFSET_SECS * 1000).div_euclid(86_400_000);
    // Estimate the year, then step to the one whose 1 January is not after it.
    let mut year = 1970 + local_days.div_euclid(366);
    let jan1 = |y: i64| -> Option<i64> {
        let ms = time::parse_vietnam_local(&format!("{y:04}-01-01 00:00:00"))?;
        Some((ms + time::VIETNAM_OFFSET_SECS * 1000).div_euclid(86_400_000))
    };
    while jan1(year + 1)? <= local_days {
        year += 1;
    }
    Some((year, local_days - jan1(year)? + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;

    /// 2024-07-25 14:02:37 +07:00.
    const T0: i64 = 1_721_890_957_000;

    fn settings(host: &TestHost) -> Settings {
        host.run(Settings::load).expect("valid config")
    }

    /// Polls at `now`, keeping the host's KV for the next poll.
    fn poll(host: TestHost, now: i64) -> (PollOutcome, TestHost) {
        let (outcome, host) = host.run_and_keep(|| poll_at(now));
        (outcome.expect("poll ok"), host)
    }

    fn ids(outcome: &PollOutcome) -> Vec<String> {
        outcome
            .changes
            .iter()
            .map(|c| c.transaction_id.clone())
            .collect()
    }

    #[test]
    fn same_seed_and_number_give_the_same_payment() {
        let s = settings(&TestHost::new());
        assert_eq!(payment(&s, 7, T0), payment(&s, 7, T0));
        assert_eq!(payment(&s, 7, T0).transaction_id, "demo-1-7");
        assert_ne!(payment(&s, 7, T0).content, payment(&s, 8, T0).content);
        let other = settings(&TestHost::new().config("seed", "2"));
        let (a, b) = (payment(&s, 7, T0), payment(&other, 7, T0));
        assert_eq!(b.transaction_id, "demo-2-7");
        assert_ne!((a.amount, a.reference), (b.amount, b.reference));
    }

    #[test]
    fn payments_look_real() {
        let s = settings(&TestHost::new());
        let p = payment(&s, 1, T0);
        assert_eq!(p.provider, "demo-bank");
        assert_eq!(p.account, "0123456789");
        assert_eq!(p.currency, "VND");
        assert_eq!(p.direction, Direction::Incoming);
        assert_eq!(p.occurred_at_ms, Some(T0));
        // 25 July 2024 is day 207 of a leap year.
        let reference = p.reference.expect("reference");
        assert!(reference.starts_with("FT24207"), "{reference}");
        assert_eq!(reference.len(), 12);
        assert!(!p.content.expect("memo").contains('{'));
        assert!(p.counterparty.expect("payer").split(' ').count() == 3);
    }

    #[test]
    fn amounts_in_range_rounded_and_mostly_small() {
        let s = settings(&TestHost::new());
        let amounts: Vec<u64> = (1..=2000).map(|n| payment(&s, n, T0).amount).collect();
        assert!(
            amounts
                .iter()
                .all(|a| (10_000..=2_000_000).contains(a) && a % 1000 == 0)
        );
        let small = amounts.iter().filter(|a| **a < 1_000_000).count();
        assert!(small > 1300, "{small} of 2000 under 1M: skewed to small");
        let odd = settings(
            &TestHost::new()
                .config("min_amount", "10500")
                .config("max_amount", "12999"),
        );
        let mut seen: Vec<u64> = (1..=200).map(|n| payment(&odd, n, T0).amount).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![11_000, 12_000]);
    }

    #[test]
    fn outgoing_share() {
        let count = |share: &str| {
            let s = settings(&TestHost::new().config("outgoing_share", share));
            (1..=1000)
                .filter(|n| payment(&s, *n, T0).direction == Direction::Outgoing)
                .count()
        };
        assert_eq!(count("0"), 0);
        assert_eq!(count("1"), 1000);
        let half = count("0.5");
        assert!((400..600).contains(&half), "{half}");
    }

    #[test]
    fn first_poll_emits_one_then_the_rate_holds() {
        let host = TestHost::new().config("payments_per_minute", "6");
        let (first, host) = poll(host, T0);
        assert_eq!(ids(&first), vec!["demo-1-1"]);
        assert_eq!(first.next_poll_ms, Some(10_000));

        let (early, host) = poll(host, T0 + 9_999);
        assert!(early.changes.is_empty());
        assert_eq!(
            early.next_poll_ms,
            Some(MIN_NEXT_POLL_MS),
            "1 ms left, floored"
        );

        let (second, host) = poll(host, T0 + 10_000);
        assert_eq!(ids(&second), vec!["demo-1-2"]);
        assert_eq!(second.changes[0].occurred_at_ms, Some(T0 + 10_000));

        // 55 s later: five more, each at its own due time.
        let (batch, host) = poll(host, T0 + 65_000);
        assert_eq!(
            ids(&batch),
            ["demo-1-3", "demo-1-4", "demo-1-5", "demo-1-6", "demo-1-7"]
        );
        let times: Vec<_> = batch.changes.iter().map(|c| c.occurred_at_ms).collect();
        assert_eq!(times, [20, 30, 40, 50, 60].map(|s| Some(T0 + s * 1000)));
        assert_eq!(batch.next_poll_ms, Some(5_000));

        // Over an hour at 6 a minute: 360 payments, whatever the poll pattern.
        let mut host = host;
        let mut total = 7;
        for step in 1..=360 {
            let (o, h) = poll(host, T0 + 65_000 + step * 10_000);
            total += o.changes.len();
            host = h;
        }
        assert_eq!(total, 7 + 360);
    }

    #[test]
    fn fractional_rate() {
        let host = TestHost::new().config("payments_per_minute", "0.5");
        let (first, host) = poll(host, T0);
        assert_eq!(first.next_poll_ms, Some(120_000));
        let (none, host) = poll(host, T0 + 119_000);
        assert!(none.changes.is_empty());
        let (one, _) = poll(host, T0 + 120_000);
        assert_eq!(ids(&one), vec!["demo-1-2"]);
    }

    #[test]
    fn a_long_pause_is_capped_and_the_backlog_dropped() {
        let host = TestHost::new().config("payments_per_minute", "600");
        let (_, host) = poll(host, T0);
        let hour = T0 + 3_600_000;
        let (burst, host) = poll(host, hour);
        assert_eq!(burst.changes.len(), MAX_PER_POLL as usize);
        assert_eq!(burst.changes[0].transaction_id, "demo-1-2");
        assert_eq!(burst.changes[99].transaction_id, "demo-1-101");
        // The latest ones: the last due just now.
        assert_eq!(burst.changes[99].occurred_at_ms, Some(hour));
        assert_eq!(burst.changes[0].occurred_at_ms, Some(hour - 99 * 100));
        let (next, _) = poll(host, hour + 1_000);
        assert_eq!(next.changes.len(), 10, "back to the normal rate");
        assert_eq!(next.changes[0].transaction_id, "demo-1-102");
    }

    #[test]
    fn kv_counter_advances_and_a_lost_write_repeats_the_same_ids() {
        let host = TestHost::new().config("payments_per_minute", "60");
        let (_, host) = poll(host, T0);
        assert_eq!(
            host.kv_value(STATE_KEY),
            Some(format!(r#"{{"emitted":1,"last_ms":{T0}}}"#).as_bytes())
        );
        let (a, after) = poll(host.clone(), T0 + 3_000);
        assert_eq!(
            after.kv_value(STATE_KEY),
            Some(format!(r#"{{"emitted":4,"last_ms":{}}}"#, T0 + 3_000).as_bytes())
        );
        // The gateway did not keep that poll's KV write: the same poll again.
        let (b, _) = poll(host, T0 + 3_000);
        assert_eq!(a.changes, b.changes);
        assert_eq!(ids(&a), ["demo-1-2", "demo-1-3", "demo-1-4"]);
    }

    #[test]
    fn clock_going_back_emits_nothing() {
        let host = TestHost::new().config("payments_per_minute", "6");
        let (_, host) = poll(host, T0);
        let (back, host) = poll(host, T0 - 3_600_000);
        assert!(back.changes.is_empty());
        assert_eq!(back.next_poll_ms, Some(10_000));
        let (on, _) = poll(host, T0 + 10_000);
        assert_eq!(ids(&on), vec!["demo-1-2"]);
    }

    #[test]
    fn corrupt_state_and_bad_config_are_fatal() {
        let host = TestHost::new().kv(STATE_KEY, b"garbage");
        assert!(matches!(
            host.run(|| poll_at(T0)),
            Err(ConnectorError::Fatal(_))
        ));
        for (key, value, expected) in [
            ("payments_per_minute", "0", "`payments_per_minute`"),
            ("payments_per_minute", "fast", "`payments_per_minute`"),
            ("payments_per_minute", "6001", "`payments_per_minute`"),
            ("min_amount", "5000000", "holds no multiple of 1000"),
            ("max_amount", "999", "holds no multiple of 1000"),
            ("outgoing_share", "1.5", "`outgoing_share`"),
            ("seed", "-1", "`seed`"),
            ("account", " ", "`account`"),
            ("rate", "6", "unknown config key `rate`"),
        ] {
            let host = TestHost::new().config(key, value);
            match host.run(|| poll_at(T0)) {
                Err(ConnectorError::Fatal(reason)) => {
                    assert!(reason.contains(expected), "{key}={value}: {reason}")
                }
                other => panic!("{key}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn year_and_day() {
        // Vietnam's new year starts at 17:00 UTC on 31 December.
        let new_year_vn = 1_704_042_000_000; // 2024-01-01 00:00 +07:00
        assert_eq!(vietnam_year_and_day(new_year_vn), Some((2024, 1)));
        assert_eq!(vietnam_year_and_day(new_year_vn - 1), Some((2023, 365)));
        assert_eq!(vietnam_year_and_day(T0), Some((2024, 207)));
        assert_eq!(
            vietnam_year_and_day(1_735_664_400_000 - 1),
            Some((2024, 366))
        );
    }
}
