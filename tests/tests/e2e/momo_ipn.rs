//! MoMo IPNs through the real gateway: 204 on success, 401 on a bad
//! signature, 204 and nothing recorded for a signed IPN outside the replay
//! window (a day by default; `0` is a config error), unpaid result codes
//! acknowledged, retries stored once. Bodies are signed here at test time so
//! `responseTime` is fresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post, run_cli};
use soundbox_plugin_sdk::signature::hmac_sha256_hex;

const ACCESS_KEY: &str = "momo-e2e-access-key";
const SECRET_KEY: &str = "momo-e2e-secret-key";
const PARTNER: &str = "MOMOE2E2024";
/// Signed with the README's sample keys; its 2024 `responseTime` is outside
/// any replay window.
const SAMPLE: &str = include_str!("../../../examples/payloads/momo-ipn.json");

fn config(sink: &CountingSink) -> String {
    let wasm = plugin("momo_ipn");
    format!(
        "[[connector]]\nname = \"momo\"\nplugin = \"{w}\"\n[connector.config]\n\
         access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\npartner_code = \"{PARTNER}\"\n\n\
         [[connector]]\nname = \"momo-sample\"\nplugin = \"{w}\"\n[connector.config]\n\
         access_key = \"momo-sample-access-key\"\nsecret_key = \"momo-sample-secret-key\"\n\n\
         [[connector]]\nname = \"momo-zero\"\nplugin = \"{w}\"\n[connector.config]\n\
         access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\nmax_age_secs = 0\n\n\
         {forward}",
        w = wasm.display(),
        forward = forward_to(&sink.url),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A signed IPN for `trans_id` of `amount` VND at `response_time` (ms).
fn ipn(trans_id: u64, amount: u64, result_code: i64, response_time: u64) -> String {
    let order_id = format!("DH{trans_id}");
    let message = if result_code == 0 {
        "Thành công."
    } else {
        "Giao dịch bị từ chối bởi người dùng."
    };
    let raw = format!(
        "accessKey={ACCESS_KEY}&amount={amount}&extraData=&message={message}&orderId={order_id}\
         &orderInfo=Thanh toan {order_id}&orderType=momo_wallet&partnerCode={PARTNER}&payType=qr\
         &requestId={order_id}&responseTime={response_time}&resultCode={result_code}&transId={trans_id}"
    );
    let signature = hmac_sha256_hex(SECRET_KEY.as_bytes(), raw.as_bytes());
    serde_json::json!({
        "partnerCode": PARTNER,
        "orderId": order_id,
        "requestId": order_id,
        "amount": amount,
        "orderInfo": format!("Thanh toan {order_id}"),
        "orderType": "momo_wallet",
        "transId": trans_id,
        "resultCode": result_code,
        "message": message,
        "payType": "qr",
        "responseTime": response_time,
        "extraData": "",
        "signature": signature,
    })
    .to_string()
}

#[tokio::test]
async fn momo_ipn_paid_tampered_replayed_unpaid_and_retry() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/momo");

    let paid = ipn(4_100_000_001, 150_000, 0, now_ms());
    let ok = post(&url, &[], paid.clone()).await;
    assert_eq!(ok.status, 204, "{}", ok.body);
    assert!(ok.body.is_empty(), "204 has no body: {}", ok.body);
    assert!(sink.wait_for(1, Duration::from_secs(10)), "event forwarded");
    assert_eq!(sink.arrivals()[0].transaction_id, "4100000001");
    assert_eq!(sink.arrivals()[0].amount, 150_000);
    assert!(
        gw.wait_for_log("\"transaction_id\":\"4100000001\"", Duration::from_secs(5)),
        "accepted change is logged: {}",
        gw.logs()
    );

    // MoMo re-sends the same IPN: acknowledged again, stored once.
    let retry = post(&url, &[], paid.clone()).await;
    assert_eq!(retry.status, 204, "{}", retry.body);

    // Tampered amount: refused.
    let tampered = paid.replace("150000", "950000");
    let bad = post(&url, &[], tampered).await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(bad.json()["error"], "unauthorized");
    assert_eq!(bad.json()["reason"], "bad signature");

    // Validly signed, 40 days old (past the dedupe window), and just past
    // the default one-day window: a replay. 204, so MoMo would not retry
    // it, and nothing recorded.
    for (id, age_ms) in [
        (4_100_000_002, 40 * 86_400_000),
        (4_100_000_004, 86_400_000 + 60_000),
    ] {
        let old = ipn(id, 20_000, 0, now_ms() - age_ms);
        let replayed = post(&url, &[], old).await;
        assert_eq!(replayed.status, 204, "{}", replayed.body);
        assert!(
            gw.wait_for_log(&format!("transId {id}"), Duration::from_secs(5)),
            "{}",
            gw.logs()
        );
    }
    // Inside the window (23 hours old): recorded.
    let inside = ipn(4_100_000_005, 30_000, 0, now_ms() - 23 * 3_600_000);
    assert_eq!(post(&url, &[], inside).await.status, 204);

    // The payer cancelled (resultCode 1006): acknowledged, nothing recorded.
    let cancelled = post(&url, &[], ipn(4_100_000_003, 50_000, 1006, now_ms())).await;
    assert_eq!(cancelled.status, 204, "{}", cancelled.body);

    // The README's 2024 sample: signed, outside the window, not recorded.
    let sample = post(&gw.url("/hooks/momo-sample"), &[], SAMPLE).await;
    assert_eq!(sample.status, 204, "{}", sample.body);
    assert!(
        gw.wait_for_log("transId 4014083433", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    // `max_age_secs = 0` no longer turns the window off: a config error.
    let zero = post(
        &gw.url("/hooks/momo-zero"),
        &[],
        ipn(4_100_000_006, 10_000, 0, now_ms()),
    )
    .await;
    assert_eq!(zero.status, 500, "{}", zero.body);
    assert!(
        gw.wait_for_log(
            "0 no longer turns the replay window off",
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );
    assert!(sink.wait_for(2, Duration::from_secs(10)), "{}", gw.logs());

    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<_> = sink
        .arrivals()
        .into_iter()
        .map(|a| a.transaction_id)
        .collect();
    assert_eq!(ids, ["4100000001", "4100000005"]);
    for id in ["4100000002", "4100000004", "4014083433", "4100000006"] {
        assert!(
            !gw.logs()
                .lines()
                .any(|l| l.contains(id) && l.contains("balance change logged")),
            "{id} logged: {}",
            gw.logs()
        );
    }
    assert_eq!(sink.deliveries(), 2, "the retry was stored once");
    assert!(
        !gw.logs().contains(SECRET_KEY),
        "secret key leaked into the log"
    );
}

#[test]
fn plugin_test_does_not_record_the_2024_sample() {
    let wasm = plugin("momo_ipn");
    let sample = soundbox_e2e::workspace().join("examples/payloads/momo-ipn.json");
    let out = run_cli(&[
        "plugin",
        "test",
        wasm.to_str().expect("utf-8 path"),
        "--webhook",
        sample.to_str().expect("utf-8 path"),
        "--set",
        "access_key=momo-sample-access-key",
        "--set",
        "secret_key=momo-sample-secret-key",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["changes"], serde_json::json!([]));
    assert_eq!(json["reply"]["status"], 204);
    assert!(stderr.contains("not recorded"), "{stderr}");
}
