//! Casso webhook v2 through the real gateway: signed over canonical JSON,
//! replay window, test pings, retries stored once; every published JSON
//! dialect accepted; the older "Webhook" integration refused with its reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};
use soundbox_plugin_sdk::signature::hmac_sha512_hex;

const KEY: &str = "casso-e2e-checksum-key";
const SAMPLE: &str = include_str!("../../../examples/payloads/casso-webhook.json");
/// The sample's header (key `casso-sample-checksum-key`, see the plugin's README).
const SAMPLE_SIGNATURE: &str = "t=1734924830020,v1=eb4b4108f0c72278f0bf7a66a565220298b74a54eec532ad214344634e386812ea340b1f29b17003b5dd3fc35dfd31cebf7b431e308303923175698f7f724e8e";

fn config(sink: &CountingSink) -> String {
    let wasm = plugin("casso_webhook");
    format!(
        "[[connector]]\nname = \"casso\"\nplugin = \"{w}\"\n[connector.config]\nchecksum_key = \"{KEY}\"\n\n\
         # The 2024 sample, accepted only without a replay window.\n\
         [[connector]]\nname = \"casso-sample\"\nplugin = \"{w}\"\n[connector.config]\n\
         checksum_key = \"casso-sample-checksum-key\"\nmax_age_secs = 0\n\n\
         {forward}",
        w = wasm.display(),
        forward = forward_to(&sink.url),
    )
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

/// One transaction: `(body as posted, its canonical form)`. The posted body
/// has keys out of order and spaces, as any JSON writer may produce; Casso
/// signs the canonical form (keys sorted, no spaces).
fn transaction(id: u64, amount: i64) -> (String, String) {
    let posted = format!(
        r#"{{ "error": 0, "data": {{ "id": {id}, "amount": {amount}, "description": "DH{id} thanh toan",
            "accountNumber": "123456789", "reference": "FT{id}", "transactionDateTime": "2024-12-23 07:00:00",
            "runningBalance": 16925000, "bankName": "MBBank", "bankAbbreviation": "MBB",
            "virtualAccountNumber": "", "virtualAccountName": "", "counterAccountName": "NGUYEN VAN A",
            "counterAccountNumber": "8888888888", "counterAccountBankId": "970415",
            "counterAccountBankName": "VietinBank" }} }}"#
    );
    let canonical = format!(
        r#"{{"data":{{"accountNumber":"123456789","amount":{amount},"bankAbbreviation":"MBB","bankName":"MBBank","counterAccountBankId":"970415","counterAccountBankName":"VietinBank","counterAccountName":"NGUYEN VAN A","counterAccountNumber":"8888888888","description":"DH{id} thanh toan","id":{id},"reference":"FT{id}","runningBalance":16925000,"transactionDateTime":"2024-12-23 07:00:00","virtualAccountName":"","virtualAccountNumber":""}},"error":0}}"#
    );
    (posted, canonical)
}

fn sign(t_ms: u128, canonical: &str) -> String {
    let v1 = hmac_sha512_hex(KEY.as_bytes(), format!("{t_ms}.{canonical}").as_bytes());
    format!("t={t_ms},v1={v1}")
}

#[tokio::test]
async fn casso_webhook_signed_tampered_replayed_ping_and_retry() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/casso");

    let (body, canonical) = transaction(310_001, 150_000);
    let header = sign(now_ms(), &canonical);
    let ok = post(&url, &[("X-Casso-Signature", &header)], body.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json(), serde_json::json!({ "success": true }));
    assert!(sink.wait_for(1, Duration::from_secs(10)), "event forwarded");
    assert_eq!(sink.arrivals()[0].transaction_id, "310001");
    assert_eq!(sink.arrivals()[0].amount, 150_000);

    // Casso retries the same call: acknowledged again, stored once.
    let retry = post(&url, &[("X-Casso-Signature", &header)], body.clone()).await;
    assert_eq!(retry.status, 200, "{}", retry.body);

    // Tampered amount: refused.
    let tampered = body.replace("150000", "950000");
    let bad = post(&url, &[("X-Casso-Signature", &header)], tampered).await;
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(bad.json()["error"], "unauthorized");
    assert_eq!(bad.json()["reason"], "bad X-Casso-Signature");

    // A validly signed call from two days ago: a replay.
    let (old_body, old_canonical) = transaction(310_002, 20_000);
    let old = sign(now_ms() - 2 * 86_400_000, &old_canonical);
    let replayed = post(&url, &[("X-Casso-Signature", &old)], old_body).await;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert!(
        replayed.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("too far from now"),
        "{}",
        replayed.body
    );

    // A test ping (id 0): acknowledged, nothing announced.
    let (ping, ping_canonical) = transaction(0, 599_000);
    let pinged = post(
        &url,
        &[("X-Casso-Signature", &sign(now_ms(), &ping_canonical))],
        ping,
    )
    .await;
    assert_eq!(pinged.status, 200, "{}", pinged.body);
    assert_eq!(pinged.json(), serde_json::json!({ "success": true }));

    // The README's sample on the connector without a replay window.
    let sample = post(
        &gw.url("/hooks/casso-sample"),
        &[("X-Casso-Signature", SAMPLE_SIGNATURE)],
        SAMPLE,
    )
    .await;
    assert_eq!(sample.status, 200, "{}", sample.body);
    assert!(
        sink.wait_for(2, Duration::from_secs(10)),
        "sample forwarded"
    );
    assert_eq!(sink.arrivals()[1].transaction_id, "218897");

    // Give a wrongly stored retry or ping time to show up: still two payments.
    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<_> = sink
        .arrivals()
        .into_iter()
        .map(|a| a.transaction_id)
        .collect();
    assert_eq!(ids, ["310001", "218897"]);
    assert_eq!(sink.deliveries(), 2, "the retry was stored once");
    assert!(!gw.logs().contains(KEY), "checksum key leaked into the log");
}

/// A description with `/`, `&`, `<`, `>` and Vietnamese text, signed in each
/// JSON dialect Casso's official samples would produce (JavaScript/Java/C#
/// plain, Python's `\uXXXX`, PHP's `\uXXXX` and `\/`, Go's `\u0026`-style
/// HTML escapes), each accepted and stored; the older integration gets a 400
/// saying to choose "Webhook V2".
#[tokio::test]
async fn casso_dialects_accepted_and_the_older_integration_refused() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/casso");
    let description = "Thanh toán đơn hàng DH{id}/A & <quà> tặng";
    // (name, PHP/Python's non-ASCII escapes, PHP's `\/`, Go's HTML escapes)
    let dialects = [
        ("javascript", false, false, false),
        ("python", true, false, false),
        ("php", true, true, false),
        ("go", false, false, true),
    ];
    for (i, (name, non_ascii, slash, html)) in dialects.into_iter().enumerate() {
        let id = 320_001 + i as u64;
        let text = description.replace("{id}", &id.to_string());
        let body = serde_json::json!({ "data": {
            "accountNumber": "123456789", "amount": 125_000,
            "counterAccountName": "NGUYỄN VĂN B", "description": text, "id": id,
            "reference": format!("FT{id}"), "transactionDateTime": "2024-12-23 08:45:00"
        }, "error": 0 });
        // Keys written sorted, compact: the plain canonical form.
        let mut canonical = body.to_string();
        if non_ascii {
            canonical = canonical
                .chars()
                .map(|c| match c as u32 {
                    0x7f.. => c
                        .encode_utf16(&mut [0; 2])
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect(),
                    _ => c.to_string(),
                })
                .collect();
        }
        if slash {
            canonical = canonical.replace('/', "\\/");
        }
        if html {
            canonical = canonical
                .replace('&', "\\u0026")
                .replace('<', "\\u003c")
                .replace('>', "\\u003e");
        }
        let header = sign(now_ms(), &canonical);
        let reply = post(&url, &[("X-Casso-Signature", &header)], body.to_string()).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        assert!(
            sink.wait_for(i + 1, Duration::from_secs(10)),
            "{name} forwarded"
        );
        assert_eq!(sink.arrivals()[i].transaction_id, id.to_string());
    }

    let legacy = r#"{"error":0,"data":[{"id":1,"tid":"FT1","description":"DH1","amount":150000,"when":"2024-12-23 08:45:00","bank_sub_acc_id":"123456789"}]}"#;
    let refused = post(&url, &[("Secure-Token", KEY)], legacy).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let reason = refused.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("\"Webhook V2\""), "{reason}");
    assert!(
        gw.wait_for_log("Webhook V2", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    assert_eq!(sink.arrivals().len(), dialects.len(), "nothing else stored");
}
