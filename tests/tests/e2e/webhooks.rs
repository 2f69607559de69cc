//! SePay webhooks through the real gateway.

use std::time::Duration;

use soundbox_e2e::{Gateway, plugin, post, sepay_connector, sepay_webhook};

const SAMPLE: &str = include_str!("../../../examples/payloads/sepay-webhook.json");

fn sepay_gateway(auth: &str) -> Gateway {
    Gateway::start(&format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\n{auth}\n",
        plugin("sepay_webhook").display()
    ))
}

#[tokio::test]
async fn sepay_webhook_with_api_key() {
    let gw = sepay_gateway("api_key = \"k3y\"");
    let url = gw.url("/hooks/sepay");

    let ok = post(&url, &[("Authorization", "Apikey k3y")], SAMPLE).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json(), serde_json::json!({ "success": true }));
    assert!(
        gw.wait_for_log("\"transaction_id\":\"92704\"", Duration::from_secs(5)),
        "accepted change is logged: {}",
        gw.logs()
    );

    let wrong = post(&url, &[("Authorization", "Apikey nope")], SAMPLE).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.json()["error"], "unauthorized");
    assert_eq!(wrong.json()["reason"], "wrong API key");

    let missing = post(&url, &[], SAMPLE).await;
    assert_eq!(missing.status, 401, "{}", missing.body);

    let malformed = post(&url, &[("Authorization", "Apikey k3y")], "{\"id\": 1,").await;
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(malformed.json()["error"], "bad_request");
    assert!(
        malformed.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a SePay webhook")
    );

    // The secret never reaches the log.
    assert!(!gw.logs().contains("k3y"), "API key leaked into the log");
}

#[tokio::test]
async fn unknown_connector_oversized_body_and_wrong_route() {
    let gw = sepay_gateway("auth = \"none\"\nallow_unsigned = true");
    let unknown = post(&gw.url("/hooks/nope"), &[], SAMPLE).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "unknown_connector");

    let huge = format!("{{\"pad\":\"{}\"}}", "a".repeat(70_000));
    let too_large = post(&gw.url("/hooks/sepay"), &[], huge).await;
    assert_eq!(too_large.status, 413, "{}", too_large.body);
    assert_eq!(too_large.json()["error"], "body_too_large");

    let elsewhere = post(&gw.url("/webhook"), &[], SAMPLE).await;
    assert_eq!(elsewhere.status, 404);

    // And the gateway still takes the next good one.
    let ok = post(&gw.url("/hooks/sepay"), &[], SAMPLE).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test]
async fn restart_reuses_the_compiled_plugin_cache_and_sigterm_exits_cleanly() {
    let mut gw = sepay_gateway("auth = \"none\"\nallow_unsigned = true");
    let cache = gw.dir.path().join("data/plugin-cache");
    let entries = || -> Vec<(std::ffi::OsString, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .expect("cache dir exists")
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.modified().ok()?)))
            .collect();
        v.sort();
        v
    };
    let first = entries();
    assert_eq!(first.len(), 1, "one compiled plugin cached: {first:?}");
    assert!(first[0].0.to_string_lossy().ends_with(".cwasm"));

    let status = gw.restart();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    assert_eq!(entries(), first, "the cache entry is reused, not rewritten");
    let ok = post(&gw.url("/hooks/sepay"), &[], SAMPLE).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let status = gw.stop();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}

/// A log reader that stops reading (journald stuck behind a slow SD card)
/// costs log lines, not payments. Written inline, each webhook's log line
/// held an async worker once the 64 KiB pipe was full: the gateway stopped
/// answering within a few hundred webhooks, and then did not stop on SIGTERM.
#[tokio::test]
async fn a_stalled_log_reader_stalls_no_webhook() {
    let mut gw = Gateway::builder(&sepay_connector())
        .stall_log_reader()
        .start();
    let url = gw.url("/hooks/sepay");
    // An accepted webhook logs a line of some 350 bytes: 600 of them are
    // three times what the pipe holds.
    let statuses = tokio::time::timeout(Duration::from_secs(120), async {
        let mut statuses = Vec::new();
        for id in 0..600 {
            let body = sepay_webhook(700_000 + id, 10_000 + id);
            statuses.push(post(&url, &[], body).await.status);
        }
        statuses
    })
    .await
    .expect("webhooks stalled behind the unread log");
    let refused: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(refused.is_empty(), "not all answered 200: {refused:?}");
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    assert!(gw.shut_down().success(), "a clean stop on SIGTERM");
}
