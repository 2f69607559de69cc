//! The generic webhook through the real gateway, configured as in its
//! README's worked example (VD Bank: a batch of two, HMAC-SHA256 over the
//! raw body).

use std::time::Duration;

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};

const SAMPLE: &str = include_str!("../../../examples/payloads/generic-webhook.json");
/// `openssl dgst -sha256 -hmac vdbank-test-secret examples/payloads/generic-webhook.json`
const SIGNATURE: &str = "sha256=2c23ff8b866ebaedcff89d206569f355797f793a09e2009eaf296e03fbc8ac97";

fn config(sink: &CountingSink) -> String {
    format!(
        r#"[[connector]]
name = "vdbank"
plugin = "{}"
[connector.config]
provider = "vdbank"
items_pointer = "/data/transactions"
id_pointer = "/txnId"
amount_pointer = "/amount"
amount_scale = 2
account_pointer = "/accountNo"
direction_pointer = "/type"
incoming_values = "C"
outgoing_values = "D"
reference_pointer = "/ref"
content_pointer = "/memo"
counterparty_pointer = "/payer/name"
occurred_at_pointer = "/bookedAt"
occurred_at_format = "vietnam_local"
extra_pointers = "channel=/channel"
auth = "hmac"
hmac_header = "X-VDB-Signature"
hmac_secret = "vdbank-test-secret"
hmac_prefix = "sha256="
reply_body = '{{"code":"00","message":"received"}}'

{forward}"#,
        plugin("generic_webhook").display(),
        forward = forward_to(&sink.url),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn generic_webhook_hmac_batch() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/vdbank");

    let ok = post(&url, &[("X-VDB-Signature", SIGNATURE)], SAMPLE).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.json(),
        serde_json::json!({ "code": "00", "message": "received" })
    );
    assert!(
        sink.wait_for(2, Duration::from_secs(10)),
        "both changes forwarded: {:?}\n{}",
        sink.arrivals(),
        gw.logs()
    );
    let mut got: Vec<(String, u64)> = sink
        .arrivals()
        .into_iter()
        .map(|a| (a.transaction_id, a.amount))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("VDB2407250001".to_string(), 150_000),
            ("VDB2407250002".to_string(), 11_000)
        ]
    );

    // Tampered amount: the signature no longer matches.
    let tampered = SAMPLE.replace("150000.00", "950000.00");
    let bad = post(&url, &[("X-VDB-Signature", SIGNATURE)], tampered).await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(bad.json()["error"], "unauthorized");
    assert_eq!(bad.json()["reason"], "bad x-vdb-signature signature");
    let unsigned = post(&url, &[], SAMPLE).await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);

    // The provider retries the same batch: acknowledged, stored once.
    let again = post(&url, &[("X-VDB-Signature", SIGNATURE)], SAMPLE).await;
    assert_eq!(again.status, 200, "{}", again.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.arrivals().len(), 2);
    assert_eq!(sink.deliveries(), 2, "the retry was not forwarded again");

    assert!(!gw.logs().contains("vdbank-test-secret"), "secret leaked");
}
