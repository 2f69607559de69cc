use super::*;
use proptest::prelude::*;
use serde_json::json;

/// SePay's documented automatic retries, minutes after the first attempt.
const RETRY_MINUTES: [i64; 8] = [0, 1, 2, 4, 7, 12, 20, 33];
const HORIZON: i64 = 40 * 60;

fn uuid(n: u128) -> String {
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A webhook body as SePay sends it; only `id` enters the key.
fn webhook_body(id: u64, amount: u64, reference: Option<&str>, date: &str) -> String {
    json!({
        "id": id, "gateway": "Vietcombank", "transactionDate": date,
        "accountNumber": "0123499999", "code": null, "content": "thanh toan",
        "transferType": "in", "transferAmount": amount, "accumulated": 0,
        "subAccount": null, "referenceCode": reference, "description": ""
    })
    .to_string()
}

/// The key a webhook body gets (what `sepay-webhook` does with its `id`).
fn key_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("json");
    webhook_transaction_id(value["id"].as_u64().expect("id"))
}

#[test]
fn keys_look_like_this() {
    assert_eq!(webhook_transaction_id(92704_u64), "92704");
    assert_eq!(webhook_transaction_id(" 92704\n"), "92704");
    assert_eq!(
        poll_transaction_id(" 07ad3dc9-0000-4000-8000-0afffe87053b "),
        Some("v2/07ad3dc9-0000-4000-8000-0afffe87053b".into())
    );
    assert_eq!(poll_transaction_id(""), None);
    assert_eq!(poll_transaction_id(&"a".repeat(126)), None, "never cut");
}

#[test]
fn the_ledger_waits_out_the_horizon_then_reports_once() {
    let mut ledger = Ledger::default();
    let u = uuid(1);
    assert_eq!(
        ledger.observe_failed(&u, 100, 1_000, HORIZON),
        Verdict::Wait
    );
    assert_eq!(
        ledger.observe_failed(&u, 100, 1_000 + HORIZON - 1, HORIZON),
        Verdict::Wait
    );
    assert_eq!(
        ledger.observe_failed(&u, 100, 1_000 + HORIZON, HORIZON),
        Verdict::Emit
    );
    assert_eq!(
        ledger.observe_failed(&u, 100, 9_999, HORIZON),
        Verdict::Emitted
    );
    let json = serde_json::to_string(&ledger).expect("json");
    assert_eq!(serde_json::from_str::<Ledger>(&json).expect("back"), ledger);
    ledger.prune(101);
    assert!(ledger.is_empty());
}

#[test]
fn the_ledger_is_bounded() {
    let mut ledger = Ledger::default();
    for n in 0..Ledger::MAX_ENTRIES as u128 {
        assert_eq!(
            ledger.observe_failed(&uuid(n), 5, 0, HORIZON),
            Verdict::Wait
        );
    }
    assert_eq!(
        ledger.observe_failed(&uuid(u128::MAX), 5, 0, HORIZON),
        Verdict::Full
    );
    let json = serde_json::to_vec(&ledger).expect("json");
    assert!(json.len() < 64 << 10, "{} bytes", json.len());
}

proptest! {
    /// Distinct real movements (distinct SePay ids, whatever their amount,
    /// reference or second) never share a key, from either source.
    #[test]
    fn distinct_movements_never_collide(
        a in any::<u64>(), b in any::<u64>(),
        ua in any::<u128>(), ub in any::<u128>(),
        amount in 1..10_000_000_u64,
        reference in proptest::option::of("[A-Z]{2}[0-9]{6}"),
    ) {
        let date = "2024-07-25 14:02:37";
        let (ka, kb) = (
            key_of(&webhook_body(a, amount, reference.as_deref(), date)),
            key_of(&webhook_body(b, amount, reference.as_deref(), date)),
        );
        prop_assert_eq!(ka == kb, a == b);
        let (pa, pb) = (poll_transaction_id(&uuid(ua)), poll_transaction_id(&uuid(ub)));
        prop_assert!(pa.is_some() && pb.is_some());
        prop_assert_eq!(pa == pb, ua == ub);
        // A webhook key is never a poller key.
        prop_assert!(pa.as_deref() != Some(ka.as_str()));
    }

    /// SePay's retry (or manual replay) of a webhook resends the same body,
    /// or at least the same `id`: always the same key.
    #[test]
    fn a_retry_of_the_same_webhook_always_collides(
        id in any::<u64>(), amount in 1..10_000_000_u64,
        reference in proptest::option::of("[A-Z]{2}[0-9]{6}"),
        redated in any::<bool>(),
    ) {
        let first = webhook_body(id, amount, reference.as_deref(), "2024-07-25 14:02:37");
        let retry = if redated {
            // Even if a replay wrote the date differently.
            webhook_body(id, amount, reference.as_deref(), "2024-07-25 14:02:38")
        } else {
            first.clone()
        };
        prop_assert_eq!(key_of(&first), key_of(&retry));
    }

    /// One payment, its webhook and the poller: with the webhook delivered
    /// (at any of SePay's retries) the poller never reports it; with every
    /// attempt failed, the poller reports it exactly once, and only after
    /// the horizon. So the log holds it once, under one of the two keys.
    #[test]
    fn webhook_and_poller_never_both_report_one_payment(
        webhook_id in any::<u64>(), v2 in any::<u128>(),
        delivered_at_attempt in proptest::option::of(0..RETRY_MINUTES.len()),
        poller_starts in 0..(6 * 3600_i64),
        gaps in proptest::collection::vec(1..900_i64, 1..60),
    ) {
        let recorded = 1_721_890_957_i64; // SePay records it (first attempt).
        let delivered = delivered_at_attempt.map(|i| recorded + RETRY_MINUTES[i] * 60);
        let listed_failed = |t: i64| delivered.is_none_or(|d| t < d);

        let mut ledger = Ledger::default();
        let mut reported = Vec::new();
        let mut t = recorded + poller_starts;
        for gap in gaps {
            if listed_failed(t)
                && ledger.observe_failed(&uuid(v2), recorded, t, HORIZON) == Verdict::Emit
            {
                reported.push(t);
            }
            t += gap;
        }
        let webhook_key = delivered.map(|_| webhook_transaction_id(webhook_id));
        match webhook_key {
            Some(_) => prop_assert!(reported.is_empty(), "reported at {:?}", reported),
            None => {
                prop_assert!(reported.len() <= 1);
                if let Some(at) = reported.first() {
                    prop_assert!(*at >= recorded + RETRY_MINUTES[7] * 60);
                }
            }
        }
        let poll_key = poll_transaction_id(&uuid(v2));
        prop_assert!(poll_key.is_some());
        prop_assert!(webhook_key.is_none() || poll_key != webhook_key);
    }
}
