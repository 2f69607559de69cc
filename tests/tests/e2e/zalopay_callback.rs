//! ZaloPay callbacks through the real gateway: a signed callback is stored and
//! forwarded once, ZaloPay's retry is answered alike and stored once, a
//! tampered or stale one gets `return_code: -1` and changes nothing, and one
//! the gateway's clock cannot judge gets `return_code: 0` (ZaloPay calls
//! again) and shows on `/readyz`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};
use soundbox_plugin_sdk::signature;

/// The test key the sample is signed with (see the plugin's README).
const KEY2: &str = "zalopay-test-key2";
/// Signed with [`KEY2`], paid in 2024: older than the default replay window.
const SAMPLE: &str = include_str!("../../../examples/payloads/zalopay-callback.json");

/// Connector failures in a row before `/readyz` names the connector.
const FAILURES: u64 = 3;

fn zalopay_gateway(sink_url: &str) -> Gateway {
    Gateway::start(&format!(
        "[[connector]]\nname = \"zalopay\"\nplugin = \"{}\"\n\
         [connector.config]\nkey2 = \"{KEY2}\"\napp_id = 2553\n\n\
         {forward}\n[admin]\nconnector_failures = {FAILURES}\n",
        plugin("zalopay_callback").display(),
        forward = forward_to(sink_url),
    ))
}

/// A callback for `zp_trans_id`, paid just now, signed as ZaloPay signs:
/// HMAC-SHA256(key2, the `data` string).
fn callback(zp_trans_id: u64, amount: u64) -> String {
    callback_at(zp_trans_id, amount, 0)
}

/// The same with ZaloPay's clock `skew_ms` off ours: what the gateway sees
/// when its own clock is off by `-skew_ms`.
fn callback_at(zp_trans_id: u64, amount: u64, skew_ms: i64) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let now_ms = now_ms.saturating_add_signed(skew_ms);
    let data = json!({
        "app_id": 2553,
        "app_trans_id": format!("e2e_{zp_trans_id}"),
        "app_time": now_ms - 30_000,
        "app_user": "shop-demo",
        "amount": amount,
        "embed_data": "{\"order\":\"DH1\"}",
        "item": "[]",
        "zp_trans_id": zp_trans_id,
        "server_time": now_ms,
        "channel": 38,
        "merchant_user_id": "e2e-user",
        "user_fee_amount": 0,
        "discount_amount": 0
    })
    .to_string();
    let mac = signature::hmac_sha256_hex(KEY2.as_bytes(), data.as_bytes());
    json!({ "data": data, "mac": mac, "type": 1 }).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn zalopay_callback_signed_retried_tampered_and_stale() {
    let sink = CountingSink::start();
    let gw = zalopay_gateway(&sink.url);
    let url = gw.url("/hooks/zalopay");
    let success = json!({ "return_code": 1, "return_message": "success" });

    let body = callback(260_101_000_000_001, 150_000);
    let ok = post(&url, &[], body.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json(), success);
    assert!(
        gw.wait_for_log(
            "\"transaction_id\":\"260101000000001\"",
            Duration::from_secs(5)
        ),
        "accepted change is logged: {}",
        gw.logs()
    );
    assert!(sink.wait_for(1, Duration::from_secs(10)), "forwarded");
    let arrival = &sink.arrivals()[0];
    assert_eq!(arrival.transaction_id, "260101000000001");
    assert_eq!(arrival.amount, 150_000);

    // ZaloPay calls again (it does so up to 3 times): same answer, stored once.
    let again = post(&url, &[], body.clone()).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json(), success);
    assert!(
        gw.wait_for_log("duplicate balance change ignored", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    // Tampered amount: 200 with ZaloPay's refusal, nothing stored.
    let tampered = body.replace("\\\"amount\\\":150000", "\\\"amount\\\":950000");
    assert_ne!(tampered, body);
    let bad = post(&url, &[], tampered).await;
    assert_eq!(bad.status, 200, "{}", bad.body);
    assert_eq!(
        bad.json(),
        json!({ "return_code": -1, "return_message": "mac not equal" })
    );

    // The static sample is validly signed but from 2024: outside the default
    // one-hour window, so refused as a replay.
    let stale = post(&url, &[], SAMPLE).await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert_eq!(stale.json()["return_code"], -1);
    assert!(
        stale.json()["return_message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_age_secs"),
        "{}",
        stale.body
    );

    // Not even JSON: refused the same way, not a 400.
    let junk = post(&url, &[], "data=1").await;
    assert_eq!(junk.status, 200, "{}", junk.body);
    assert_eq!(junk.json()["return_code"], -1);

    // A second payment goes through; in all, each payment reached the sink once.
    let second = post(&url, &[], callback(260_101_000_000_002, 20_000)).await;
    assert_eq!(second.json(), success);
    assert!(
        sink.wait_for(2, Duration::from_secs(10)),
        "second forwarded"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.arrivals().len(), 2);
    assert_eq!(sink.deliveries(), 2, "the retry was not delivered again");
    assert!(!gw.logs().contains(KEY2), "key2 leaked into the log");
}

/// The gateway's clock 2 h behind ZaloPay's (a Pi after a power cut, before
/// NTP) — simulated by a callback whose `server_time` is 2 h ahead — and then
/// 2 h ahead: each validly signed callback is answered `return_code: 0`, which
/// makes ZaloPay call again, nothing is stored, and after
/// `admin.connector_failures` of them `/readyz` names the clock. ZaloPay's
/// retry once the clock is right is a payment and clears the fault.
#[tokio::test(flavor = "multi_thread")]
async fn zalopay_callback_with_the_clock_two_hours_off_is_called_again_and_shows_on_readyz() {
    let sink = CountingSink::start();
    let gw = zalopay_gateway(&sink.url);
    let url = gw.url("/hooks/zalopay");
    assert_eq!(gw.admin_get("/readyz").await.0, 200, "{}", gw.logs());

    let two_hours_ms = 2 * 3_600_000;
    for (i, skew) in [two_hours_ms, two_hours_ms, -two_hours_ms]
        .into_iter()
        .enumerate()
    {
        let body = callback_at(260_101_000_000_010 + i as u64, 150_000, skew);
        let reply = post(&url, &[], body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["return_code"], 0, "call again: {}", reply.body);
        assert!(
            !reply.body.contains("NTP"),
            "the detail is for the shop, not ZaloPay: {}",
            reply.body
        );
    }
    let (code, body) = gw.admin_get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("connector `zalopay`") && body.contains("clock") && body.contains("NTP"),
        "{body}"
    );
    assert!(
        gw.logs().contains("2 h behind ZaloPay"),
        "the log says which way: {}",
        gw.logs()
    );
    assert_eq!(sink.arrivals().len(), 0, "nothing stored or forwarded");

    // The clock is right again and ZaloPay calls again: stored, ready.
    let retry = post(&url, &[], callback(260_101_000_000_010, 150_000)).await;
    assert_eq!(retry.json()["return_code"], 1, "{}", retry.body);
    assert!(sink.wait_for(1, Duration::from_secs(10)), "forwarded");
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
}
