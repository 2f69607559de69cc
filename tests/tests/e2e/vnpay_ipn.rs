//! VNPay IPN calls through the real gateway, by real HTTP GET with the fields
//! in the query string (and a POST with a form body): a signed payment is
//! stored and forwarded once, a retry is answered `00` and stored once, a
//! tampered one gets `97`, a failed payment `00` with nothing stored, and a
//! correctly signed one paid long ago (a replay of the return URL) `02`,
//! stored nowhere, by the gateway and by `plugin test`.

use std::time::{Duration, SystemTime};

use serde_json::json;
use soundbox_e2e::{CountingSink, Gateway, Reply, forward_to, plugin, run_cli};
use soundbox_plugin_sdk::{http::form_encode, signature};

/// The test secret the sample is signed with (see the plugin's README).
const SECRET: &str = "vnpay-test-hash-secret";
/// 150 000 VND paid, `vnp_TransactionNo=14512345`, on 2024-07-25: long
/// outside the replay window.
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

/// `ago` before now as VNPay writes `vnp_PayDate` (Vietnam time, `yyyyMMddHHmmss`).
fn pay_date(ago: Duration) -> String {
    let at = SystemTime::now() - ago + Duration::from_secs(7 * 3600);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// An IPN query string for `transaction_no`, paid a minute ago, signed as
/// VNPay signs it.
fn ipn(transaction_no: &str, amount_vnd: u64, response_code: &str) -> String {
    ipn_paid(
        transaction_no,
        amount_vnd,
        response_code,
        Duration::from_secs(60),
    )
}

/// [`ipn`], paid `ago` before now. The values are plain ASCII, where every
/// demo's form encoding agrees.
fn ipn_paid(transaction_no: &str, amount_vnd: u64, response_code: &str, ago: Duration) -> String {
    let mut params = [
        ("vnp_Amount", (amount_vnd * 100).to_string()),
        ("vnp_BankCode", "NCB".into()),
        ("vnp_CardType", "ATM".into()),
        ("vnp_OrderInfo", format!("Thanh toan don {transaction_no}")),
        ("vnp_PayDate", pay_date(ago)),
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

    let paid = ipn("14512345", 150_000, "00");
    let ok = get(&url, &paid).await;
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
    let again = get(&url, &paid).await;
    assert_eq!(again.json(), confirmed);
    assert!(
        gw.wait_for_log("duplicate balance change ignored", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    // Tampered amount: 97 with HTTP 200, nothing stored.
    let tampered = paid.replace("vnp_Amount=15000000", "vnp_Amount=95000000");
    assert_ne!(tampered, paid);
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

#[tokio::test(flavor = "multi_thread")]
async fn vnpay_ipn_paid_40_days_ago_is_refused() {
    let sink = CountingSink::start();
    let gw = vnpay_gateway(&sink.url);
    let url = gw.url("/hooks/vnpay");
    let already = json!({ "RspCode": "02", "Message": "Order already confirmed" });

    // Correctly signed, paid 40 days ago (past the 30-day dedupe window):
    // 02, so VNPay would stop, and nothing logged or forwarded.
    let old = ipn_paid(
        "14519001",
        90_000,
        "00",
        Duration::from_secs(40 * 24 * 3600),
    );
    for _ in 0..2 {
        let refused = get(&url, &old).await;
        assert_eq!(refused.status, 200, "{}", refused.body);
        assert_eq!(refused.json(), already);
    }
    // The 2024 sample too, and just outside the default two-day window.
    assert_eq!(get(&url, SAMPLE).await.json(), already);
    let outside = ipn_paid(
        "14519002",
        90_000,
        "00",
        Duration::from_secs(2 * 24 * 3600 + 120),
    );
    assert_eq!(get(&url, &outside).await.json(), already);
    // Inside the window (a day and 23 hours): accepted.
    let inside = ipn_paid("14519003", 30_000, "00", Duration::from_secs(47 * 3600));
    assert_eq!(
        get(&url, &inside).await.json(),
        json!({ "RspCode": "00", "Message": "Confirm Success" })
    );
    assert!(sink.wait_for(1, Duration::from_secs(10)), "{}", gw.logs());
    std::thread::sleep(Duration::from_millis(300));
    let arrivals = sink.arrivals();
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    assert_eq!(arrivals[0].transaction_id, "14519003");
    let logs = gw.logs();
    assert!(logs.contains("RspCode 02"), "{logs}");
    for refused in ["14519001", "14512345", "14519002"] {
        assert!(
            !logs
                .lines()
                .any(|l| l.contains(refused) && l.contains("balance change logged")),
            "{refused} logged: {logs}"
        );
    }
}

#[test]
fn plugin_test_refuses_an_ipn_paid_40_days_ago() {
    let wasm = plugin("vnpay_ipn");
    let run = |query: &str| {
        let out = run_cli(&[
            "plugin",
            "test",
            wasm.to_str().expect("utf-8 path"),
            "--method",
            "GET",
            "--query",
            query,
            "--set",
            &format!("hash_secret={SECRET}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON on stdout")
    };
    let old = run(&ipn_paid(
        "14519101",
        90_000,
        "00",
        Duration::from_secs(40 * 24 * 3600),
    ));
    assert_eq!(old["changes"], json!([]));
    assert_eq!(
        old["reply"]["body"],
        r#"{"RspCode":"02","Message":"Order already confirmed"}"#
    );
    let fresh = run(&ipn("14519102", 90_000, "00"));
    assert_eq!(fresh["changes"][0]["transaction_id"], "14519102");
    assert_eq!(
        fresh["reply"]["body"],
        r#"{"RspCode":"00","Message":"Confirm Success"}"#
    );
}
