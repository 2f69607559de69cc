//! The gateway's stale rule through the real binary: whatever a connector
//! says, a payment whose bank time is older than `log.dedupe_retention_days`
//! minus a day is refused and counted in `soundbox_stale_changes_total`.
//! The connector is the permissive generic webhook (it takes any date), with
//! the default 30-day window set explicitly.

use std::time::{Duration, SystemTime};

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};
use soundbox_plugin_sdk::signature::hmac_sha256_hex;

const SECRET: &str = "stale-test-secret";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn config(sink: &CountingSink) -> String {
    format!(
        r#"[[connector]]
name = "bank"
plugin = "{}"
[connector.config]
provider = "bank"
items_pointer = "/items"
id_pointer = "/id"
amount_pointer = "/amount"
account_pointer = "/account"
occurred_at_pointer = "/at"
occurred_at_format = "vietnam_local"
auth = "hmac"
hmac_header = "X-Signature"
hmac_secret = "{SECRET}"

[log]
dedupe_retention_days = 30

{forward}"#,
        plugin("generic_webhook").display(),
        forward = forward_to(&sink.url),
    )
}

/// `ago` before now, in Vietnam local time (`YYYY-MM-DD HH:MM:SS`).
fn vietnam_time(ago: Duration) -> String {
    let at = SystemTime::now() - ago + Duration::from_secs(7 * 3600);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// A batch body of `(id, age)` items and its signature header value.
fn batch(items: &[(&str, Duration)]) -> (String, String) {
    let items: Vec<_> = items
        .iter()
        .map(|(id, ago)| {
            serde_json::json!({
                "id": id, "amount": 120_000, "account": "0123499999", "at": vietnam_time(*ago),
            })
        })
        .collect();
    let body = serde_json::json!({ "items": items }).to_string();
    let signature = hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
    (body, signature)
}

/// `soundbox_stale_changes_total{connector="bank"}`, 0 when not yet exported.
async fn stale_count(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .value("soundbox_stale_changes_total", &[("connector", "bank")])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_older_than_the_dedupe_window_are_refused_and_counted() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/bank");

    // 40 days old, correctly signed: 400 stale, nothing logged.
    let (body, sig) = batch(&[("OLD40", 40 * DAY)]);
    let refused = post(&url, &[("X-Signature", &sig)], body.clone()).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(
        refused.json(),
        serde_json::json!({"error": "stale", "reason": "payment is older than the dedupe window"})
    );
    // Sent again: the same answer, never accepted.
    let again = post(&url, &[("X-Signature", &sig)], body).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert_eq!(stale_count(&gw).await, 2.0);

    // Just outside (29 days and a minute) next to a fresh one: the fresh
    // one is stored and the plugin's answer sent; the stale one dropped.
    let (body, sig) = batch(&[
        ("FRESH", Duration::from_secs(60)),
        ("OLD29", 29 * DAY + Duration::from_secs(60)),
    ]);
    let mixed = post(&url, &[("X-Signature", &sig)], body).await;
    assert_eq!(mixed.status, 200, "{}", mixed.body);
    assert_eq!(stale_count(&gw).await, 3.0);

    // Just inside (29 days less a minute): accepted.
    let (body, sig) = batch(&[("INSIDE", 29 * DAY - Duration::from_secs(60))]);
    let inside = post(&url, &[("X-Signature", &sig)], body).await;
    assert_eq!(inside.status, 200, "{}", inside.body);

    assert!(sink.wait_for(2, Duration::from_secs(10)), "{}", gw.logs());
    std::thread::sleep(Duration::from_millis(300));
    let mut got: Vec<String> = sink
        .arrivals()
        .into_iter()
        .map(|a| a.transaction_id)
        .collect();
    got.sort();
    assert_eq!(got, ["FRESH", "INSIDE"]);
    let logs = gw.logs();
    assert!(
        logs.contains("stale balance change refused") && logs.contains("OLD40"),
        "{logs}"
    );
    for old in ["OLD40", "OLD29"] {
        assert!(
            !logs
                .lines()
                .any(|l| l.contains(old) && l.contains("balance change logged")),
            "{old} was logged: {logs}"
        );
    }
    assert_eq!(stale_count(&gw).await, 3.0);
}
