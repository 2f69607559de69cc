//! MoMo IPNs through the real gateway: 204 on success, 401 on a bad or
//! replayed signature, unpaid result codes acknowledged, retries stored once.
//! Bodies are signed here at test time so `responseTime` is fresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};
use soundbox_plugin_sdk::signature::hmac_sha256_hex;

const ACCESS_KEY: &str = "momo-e2e-access-key";
const SECRET_KEY: &str = "momo-e2e-secret-key";
const PARTNER: &str = "MOMOE2E2024";
/// Signed with the README's sample keys; its 2024 `responseTime` passes only
/// with `max_age_secs = 0`.
const SAMPLE: &str = include_str!("../../../examples/payloads/momo-ipn.json");

fn config(sink: &CountingSink) -> String {
    let wasm = plugin("momo_ipn");
    format!(
        "[[connector]]\nname = \"momo\"\nplugin = \"{w}\"\n[connector.config]\n\
         access_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\npartner_code = \"{PARTNER}\"\n\n\
         [[connector]]\nname = \"momo-sample\"\nplugin = \"{w}\"\n[connector.config]\n\
         access_key = \"momo-sample-access-key\"\nsecret_key = \"momo-sample-secret-key\"\nmax_age_secs = 0\n\n\
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

    // Validly signed, two days old: a replay.
    let old = ipn(4_100_000_002, 20_000, 0, now_ms() - 2 * 86_400_000);
    let replayed = post(&url, &[], old).await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert!(
        replayed.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("too far from now"),
        "{}",
        replayed.body
    );

    // The payer cancelled (resultCode 1006): acknowledged, nothing recorded.
    let cancelled = post(&url, &[], ipn(4_100_000_003, 50_000, 1006, now_ms())).await;
    assert_eq!(cancelled.status, 204, "{}", cancelled.body);

    // The README's sample, on the connector without a replay window.
    let sample = post(&gw.url("/hooks/momo-sample"), &[], SAMPLE).await;
    assert_eq!(sample.status, 204, "{}", sample.body);
    assert!(
        sink.wait_for(2, Duration::from_secs(10)),
        "sample forwarded"
    );
    assert_eq!(sink.arrivals()[1].transaction_id, "4014083433");

    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<_> = sink
        .arrivals()
        .into_iter()
        .map(|a| a.transaction_id)
        .collect();
    assert_eq!(ids, ["4100000001", "4014083433"]);
    assert_eq!(sink.deliveries(), 2, "the retry was stored once");
    assert!(
        !gw.logs().contains(SECRET_KEY),
        "secret key leaked into the log"
    );
}
