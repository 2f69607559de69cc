//! VNPay IPN calls through the real gateway, by real HTTP GET with the fields
//! in the query string (and a POST with a form body): a signed payment is
//! stored and forwarded once, a retry is answered `00` and stored once, a
//! tampered one gets `97`, a failed payment `00` with nothing stored.

use std::time::Duration;

use serde_json::json;
use soundbox_e2e::{CountingSink, Gateway, Reply, forward_to, plugin};
use soundbox_plugin_sdk::{http::form_encode, signature};

/// The test secret the sample is signed with (see the plugin's README).
const SECRET: &str = "vnpay-test-hash-secret";
/// 150 000 VND paid, `vnp_TransactionNo=14512345`.
const SAMPLE: &str = include_str!("../../../examples/payloads/vnpay-ipn.txt");

fn vnpay_gateway(sink_url: &str) -> Gateway {
    Gateway::start(&format!(
        "[[connector]]\nname = \"vnpay\"\nplugin = \"{}\"\n\
         [connector.config]\nhash_secret = \"{SECRET}\"\ntmn_code = \"DEMOSHOP\"\n\n\
         {forward}",
        plugin("vnpay_ipn").display(),
        forward = forward_to(sink_url),
    ))
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Reply { status, body }
}

async fn get(url: &str, query: &str) -> Reply {
    send(reqwest::Client::new().get(format!("{url}?{}", query.trim()))).await
}

/// An IPN query string for `transaction_no`, signed as VNPay signs it. The
/// values are plain ASCII, where every demo's form encoding agrees.
fn ipn(transaction_no: &str, amount_vnd: u64, response_code: &str) -> String {
    let mut params = [
        ("vnp_Amount", (amount_vnd * 100).to_string()),
        ("vnp_BankCode", "NCB".into()),
        ("vnp_CardType", "ATM".into()),
        ("vnp_OrderInfo", format!("Thanh toan don {transaction_no}")),
        ("vnp_PayDate", "20260101120000".into()),
        ("vnp_ResponseCode", response_code.into()),
        ("vnp_TmnCode", "DEMOSHOP".into()),
        ("vnp_TransactionNo", transaction_no.into()),
        ("vnp_TransactionStatus", response_code.into()),
        ("vnp_TxnRef", format!("DH{transaction_no}")),
    ];
    params.sort();
    let signed = params
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let hash = signature::hmac_sha512_hex(SECRET.as_bytes(), signed.as_bytes());
    format!("{signed}&vnp_SecureHash={hash}")
}

#[tokio::test(flavor = "multi_thread")]
async fn vnpay_ipn_by_get_and_post() {
    let sink = CountingSink::start();
    let gw = vnpay_gateway(&sink.url);
    let url = gw.url("/hooks/vnpay");
    let confirmed = json!({ "RspCode": "00", "Message": "Confirm Success" });

    let ok = get(&url, SAMPLE).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json(), confirmed);
    assert!(
        gw.wait_for_log("\"transaction_id\":\"14512345\"", Duration::from_secs(5)),
        "accepted change is logged: {}",
        gw.logs()
    );
    assert!(sink.wait_for(1, Duration::from_secs(10)), "forwarded");
    let arrival = &sink.arrivals()[0];
    assert_eq!(arrival.transaction_id, "14512345");
    assert_eq!(arrival.amount, 150_000);

    // VNPay re-sends until it gets 00: same answer, stored once.
    let again = get(&url, SAMPLE).await;
    assert_eq!(again.json(), confirmed);
    assert!(
        gw.wait_for_log("duplicate balance change ignored", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    // Tampered amount: 97 with HTTP 200, nothing stored.
    let tampered = SAMPLE.replace("vnp_Amount=15000000", "vnp_Amount=95000000");
    assert_ne!(tampered, SAMPLE);
    let bad = get(&url, &tampered).await;
    assert_eq!(bad.status, 200, "{}", bad.body);
    assert_eq!(
        bad.json(),
        json!({ "RspCode": "97", "Message": "Invalid Checksum" })
    );

    // A cancelled payment is acknowledged and not stored.
    let cancelled = get(&url, &ipn("0", 50_000, "24")).await;
    assert_eq!(cancelled.json(), confirmed);

    // No parameters at all: 99.
    let empty = send(reqwest::Client::new().get(&url)).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json()["RspCode"], "99");

    // A POST with the fields as a form body.
    let form = send(
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(ipn("14512399", 20_000, "00")),
    )
    .await;
    assert_eq!(form.status, 200, "{}", form.body);
    assert_eq!(form.json(), confirmed);
    assert!(
        sink.wait_for(2, Duration::from_secs(10)),
        "second forwarded"
    );
    assert_eq!(sink.arrivals()[1].transaction_id, "14512399");
    assert_eq!(sink.arrivals()[1].amount, 20_000);

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.arrivals().len(), 2);
    assert_eq!(sink.deliveries(), 2, "the retry was not delivered again");
    assert!(
        !gw.logs().contains(SECRET),
        "hash secret leaked into the log"
    );
}
