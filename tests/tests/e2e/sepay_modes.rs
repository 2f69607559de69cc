//! SePay's other webhook modes through the real gateway: form-urlencoded and
//! multipart bodies with an API key, and OAuth 2.0 with the token endpoint
//! the connector serves itself (`/hooks/<connector>?oauth=token`).

use std::time::Duration;

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post, post_as, sepay_webhook};

const API_KEY: &str = "sepay-modes-e2e-key";
const CLIENT_ID: &str = "shop-e2e";
const CLIENT_SECRET: &str = "sepay-oauth-e2e-secret";
const BOUNDARY: &str = "----sepayE2eBoundary";

fn config(sink: &CountingSink) -> String {
    let wasm = plugin("sepay_webhook");
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{w}\"\n[connector.config]\n\
         api_key = \"{API_KEY}\"\n\n\
         [[connector]]\nname = \"sepay-oauth\"\nplugin = \"{w}\"\n[connector.config]\n\
         auth = \"oauth2\"\noauth_client_id = \"{CLIENT_ID}\"\n\
         oauth_client_secret = \"${{SEPAY_OAUTH_CLIENT_SECRET}}\"\n\n\
         {forward}",
        w = wasm.display(),
        forward = forward_to(&sink.url),
    )
}

/// A SePay webhook's fields as a form sends them: every value text, `null`
/// empty, and a Vietnamese memo.
fn form_fields(id: u64, amount: u64) -> Vec<(String, String)> {
    let mut hook: serde_json::Value =
        serde_json::from_str(&sepay_webhook(id, amount)).expect("json");
    hook["content"] = format!("Thanh toán đơn {id} – cảm ơn & hẹn gặp lại").into();
    hook.as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

fn urlencoded(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                soundbox_plugin_sdk::http::form_encode(k),
                soundbox_plugin_sdk::http::form_encode(v)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn multipart(fields: &[(String, String)]) -> String {
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    body
}

fn logged(gw: &Gateway) -> usize {
    gw.logs().matches("balance change logged").count()
}

#[tokio::test]
async fn form_multipart_and_oauth2_webhooks_are_accepted_once() {
    let sink = CountingSink::start();
    let gw = Gateway::builder(&config(&sink))
        .env("SEPAY_OAUTH_CLIENT_SECRET", CLIENT_SECRET)
        .start();
    let url = gw.url("/hooks/sepay");
    let apikey = format!("Apikey {API_KEY}");
    let auth = [("Authorization", apikey.as_str())];

    // Form-urlencoded and multipart, each delivered twice (a SePay retry).
    let form = urlencoded(&form_fields(410_001, 110_000));
    let parts = multipart(&form_fields(410_002, 220_000));
    let multipart_type = format!("multipart/form-data; boundary={BOUNDARY}");
    for _ in 0..2 {
        let reply = post_as(
            &url,
            "application/x-www-form-urlencoded",
            &auth,
            form.clone(),
        )
        .await;
        assert_eq!(reply.status, 200, "form: {}", reply.body);
        assert_eq!(reply.json(), serde_json::json!({ "success": true }));
        let reply = post_as(&url, &multipart_type, &auth, parts.clone()).await;
        assert_eq!(reply.status, 200, "multipart: {}", reply.body);
    }
    assert!(sink.wait_for(2, Duration::from_secs(10)), "both forwarded");
    let mut amounts: Vec<u64> = sink.arrivals().iter().map(|a| a.amount).collect();
    amounts.sort_unstable();
    assert_eq!(amounts, vec![110_000, 220_000]);
    assert_eq!(logged(&gw), 2, "each logged once: {}", gw.logs());

    // A malformed form is a 400, and the key still guards form bodies.
    let broken = post_as(
        &url,
        "application/x-www-form-urlencoded",
        &auth,
        form.replace("transferAmount=110000", "transferAmount=11%zz"),
    )
    .await;
    assert_eq!(broken.status, 400, "{}", broken.body);
    let unkeyed = post_as(&url, "application/x-www-form-urlencoded", &[], form).await;
    assert_eq!(unkeyed.status, 401, "{}", unkeyed.body);

    // OAuth 2.0: SePay asks the token URL, then sends the bearer.
    let oauth_url = gw.url("/hooks/sepay-oauth");
    let token_url = format!("{oauth_url}?oauth=token");
    let wrong = post(
        &token_url,
        &[],
        serde_json::json!({ "clientId": CLIENT_ID, "clientSecret": "guess" }).to_string(),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.json()["error"], "unauthorized");
    assert!(
        wrong.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("client")
    );

    let issued = post(
        &token_url,
        &[],
        serde_json::json!({ "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET }).to_string(),
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let data = issued.json()["data"].clone();
    assert_eq!(data["expiredIn"], 3600);
    assert!(data["refreshToken"].is_string());
    let access = data["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_string();
    assert_eq!(logged(&gw), 2, "a token request is no payment");

    let bearer = format!("Bearer {access}");
    let body = sepay_webhook(410_003, 330_000);
    let accepted = post(&oauth_url, &[("Authorization", &bearer)], body.clone()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert_eq!(accepted.json(), serde_json::json!({ "success": true }));
    assert!(
        sink.wait_for(3, Duration::from_secs(10)),
        "oauth payment forwarded"
    );
    assert!(sink.arrivals().iter().any(|a| a.amount == 330_000));

    let made_up = post(
        &oauth_url,
        &[("Authorization", "Bearer v1.9999999999.deadbeef")],
        sepay_webhook(410_004, 440_000),
    )
    .await;
    assert_eq!(made_up.status, 401, "{}", made_up.body);
    assert_eq!(made_up.json()["error"], "unauthorized");
    assert_eq!(logged(&gw), 3, "{}", gw.logs());

    // Neither the client secret nor a token reaches the log.
    let logs = gw.logs();
    assert!(!logs.contains(CLIENT_SECRET), "client secret leaked");
    assert!(!logs.contains(&access), "access token leaked");
    assert!(!logs.contains(API_KEY), "API key leaked");
}
