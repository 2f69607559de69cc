//! A webhook for any bank or service without a plugin of its own.
//!
//! The config says where each field of a balance change sits in the JSON
//! body (RFC 6901 pointers), how the sender authenticates (none, an API key
//! header, or an HMAC over the raw body) and what to reply. See README.md
//! for every key.

pub mod auth;
pub mod extract;
pub mod settings;

use soundbox_plugin_sdk::{
    ConnectorError, HttpRequest, WebhookConnector, WebhookOutcome, export_webhook_connector,
};

use settings::Settings;

pub struct GenericWebhook;

impl WebhookConnector for GenericWebhook {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        handle_at(request, soundbox_plugin_sdk::time::now_ms())
    }
}

export_webhook_connector!(GenericWebhook);

/// [`GenericWebhook::handle`] with the clock passed in (tests).
pub fn handle_at(request: HttpRequest, now_ms: i64) -> Result<WebhookOutcome, ConnectorError> {
    // Config first: a broken config is a 500 whatever the request is.
    let settings = Settings::load()?;
    auth::verify(&settings.auth, &request, now_ms)?;
    let changes = extract::changes(&settings, &request.body)?;
    Ok(WebhookOutcome {
        changes,
        reply: Some(settings.reply()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use soundbox_plugin_sdk::testing::TestHost;
    use soundbox_plugin_sdk::{BalanceChange, Direction};

    const SAMPLE: &str = include_str!("../../../examples/payloads/generic-webhook.json");
    /// `openssl dgst -sha256 -hmac vdbank-test-secret examples/payloads/generic-webhook.json`
    /// (Python's `hmac.new(..., hashlib.sha256)` agrees).
    const SAMPLE_SIG: &str = "2c23ff8b866ebaedcff89d206569f355797f793a09e2009eaf296e03fbc8ac97";

    /// The README's worked example (VD Bank).
    fn vdbank() -> TestHost {
        TestHost::new()
            .config("provider", "vdbank")
            .config("items_pointer", "/data/transactions")
            .config("id_pointer", "/txnId")
            .config("amount_pointer", "/amount")
            .config("amount_scale", "2")
            .config("account_pointer", "/accountNo")
            .config("direction_pointer", "/type")
            .config("incoming_values", "C")
            .config("outgoing_values", "D")
            .config("reference_pointer", "/ref")
            .config("content_pointer", "/memo")
            .config("counterparty_pointer", "/payer/name")
            .config("occurred_at_pointer", "/bookedAt")
            .config("occurred_at_format", "vietnam_local")
            .config("extra_pointers", "channel=/channel,payerBank=/payer/bank")
            .config("auth", "hmac")
            .config("hmac_header", "X-VDB-Signature")
            .config("hmac_secret", "vdbank-test-secret")
            .config("hmac_prefix", "sha256=")
            .config("reply_body", r#"{"code":"00","message":"received"}"#)
    }

    /// A one-transaction body and no auth: the smallest config.
    fn minimal() -> TestHost {
        TestHost::new()
            .config("provider", "acme")
            .config("id_pointer", "/id")
            .config("amount_pointer", "/amount")
            .config("account", "0001")
            .config("auth", "none")
            .config("allow_unsigned", "true")
    }

    const NOW: i64 = 1_721_890_960_000;

    fn run(host: &TestHost, req: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| handle_at(req, NOW))
    }

    fn changes(host: &TestHost, body: &str) -> Result<Vec<BalanceChange>, ConnectorError> {
        run(host, HttpRequest::post_json(body)).map(|o| o.changes)
    }

    fn reason_of(result: Result<impl std::fmt::Debug, ConnectorError>) -> (String, String) {
        let err = result.expect_err("should fail");
        let kind = match &err {
            ConnectorError::BadRequest(_) => "bad_request",
            ConnectorError::Unauthorized(_) => "unauthorized",
            ConnectorError::Transient(_) => "transient",
            ConnectorError::Fatal(_) => "fatal",
        };
        (kind.into(), err.reason().to_string())
    }

    #[test]
    fn worked_example_maps_every_field() {
        let req = HttpRequest::post_json(SAMPLE)
            .with_header("X-VDB-Signature", &format!("sha256={SAMPLE_SIG}"));
        let outcome = run(&vdbank(), req).expect("accepted");
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), r#"{"code":"00","message":"received"}"#);
        let [incoming, outgoing] = outcome.changes.as_slice() else {
            panic!("two changes: {:?}", outcome.changes)
        };
        assert_eq!(incoming.provider, "vdbank");
        assert_eq!(incoming.transaction_id, "VDB2407250001");
        assert_eq!(incoming.account, "1900123456789");
        assert_eq!(incoming.amount, 150_000);
        assert_eq!(incoming.currency, "VND");
        assert_eq!(incoming.direction, Direction::Incoming);
        assert_eq!(incoming.reference.as_deref(), Some("FT24207XK3P1"));
        assert_eq!(incoming.counterparty.as_deref(), Some("NGUYEN VAN AN"));
        assert_eq!(
            incoming.content.as_deref(),
            Some("NGUYEN VAN AN chuyen tien ca phe")
        );
        // 2024-07-25 14:02:37 +07:00 = 1721890957 (`date -d '2024-07-25 14:02:37 +0700' +%s`).
        assert_eq!(incoming.occurred_at_ms, Some(1_721_890_957_000));
        assert_eq!(
            incoming.extra,
            vec![
                ("channel".into(), "NAPAS247".into()),
                ("payerBank".into(), "VCB".into())
            ]
        );
        assert_eq!(outgoing.transaction_id, "VDB2407250002");
        assert_eq!(outgoing.direction, Direction::Outgoing);
        assert_eq!(outgoing.amount, 11_000);
        assert_eq!(outgoing.counterparty, None, "null payer");
        assert_eq!(outgoing.extra, vec![("channel".into(), "FEE".into())]);
    }

    #[test]
    fn hmac_sha256_hex_over_the_body() {
        let host = vdbank();
        let with = |sig: &str, body: &str| {
            run(
                &host,
                HttpRequest::post_json(body).with_header("X-VDB-Signature", sig),
            )
        };
        assert!(with(&format!("sha256={SAMPLE_SIG}"), SAMPLE).is_ok());
        assert!(with(SAMPLE_SIG, SAMPLE).is_ok(), "prefix optional");
        assert!(with(&SAMPLE_SIG.to_uppercase(), SAMPLE).is_ok(), "hex case");

        let tampered = SAMPLE.replace("150000.00", "950000.00");
        let (kind, reason) = reason_of(with(SAMPLE_SIG, &tampered));
        assert_eq!(kind, "unauthorized");
        assert_eq!(reason, "bad x-vdb-signature signature");

        // Same body, signed with another key: `openssl dgst -sha256 -hmac other-secret`.
        let other = "f51c30859e23c65f1f349b4b2726ee8e6a225f82b5039bdbd7c4972c39246b98";
        assert_eq!(reason_of(with(other, SAMPLE)).0, "unauthorized");
        assert_eq!(reason_of(with("not hex", SAMPLE)).0, "unauthorized");
        let missing = run(&host, HttpRequest::post_json(SAMPLE));
        assert_eq!(reason_of(missing).1, "missing x-vdb-signature header");
    }

    /// The README's second example: HMAC-SHA512, base64, over `<ts>.<body>`.
    fn paynow() -> TestHost {
        TestHost::new()
            .config("provider", "paynow")
            .config("id_pointer", "/id")
            .config("amount_pointer", "/amount")
            .config("negative_is_outgoing", "true")
            .config("account_pointer", "/accountNumber")
            .config("content_pointer", "/description")
            .config("reference_pointer", "/reference")
            .config("occurred_at_pointer", "/createdAt")
            .config("occurred_at_format", "unix_ms")
            .config("auth", "hmac")
            .config("hmac_header", "X-Signature")
            .config("hmac_secret", "paynow-test-key")
            .config("hmac_algorithm", "sha512")
            .config("hmac_encoding", "base64")
            .config("timestamp_header", "X-Timestamp")
            .config("reply_status", "202")
            .config("reply_body", "OK")
    }

    const PAYNOW_BODY: &str = r#"{"id":884213,"accountNumber":"0071000123456","amount":-250000,"description":"Thanh toan don 1234","reference":"MB.884213","createdAt":1721890957000}"#;
    /// Python: `base64.b64encode(hmac.new(b"paynow-test-key", b"1721890960." + body,
    /// hashlib.sha512).digest())`; `openssl dgst -sha512 -hmac paynow-test-key -binary | base64` agrees.
    const PAYNOW_SIG_S: &str =
        "9jfXt4ucLIJIBzkOhFQemaSFBrEWDUIl1G0QMfu8wEEWEfTmnpqKGD2GlkJQ/5ZlNValRH91GhgD5bf9Y2TIaw==";
    /// The same over `1721890960123.` + body (a sender that sends milliseconds).
    const PAYNOW_SIG_MS: &str =
        "F6LiLpw95R4h/BTXxy4voz8OECZw2NHEpIcEt5ZGpfmxTNCAP67vzl3VAYSG3syjQ0SA/geq3WXbeKPyE7y1jg==";

    fn paynow_req(ts: &str, sig: &str, body: &str) -> HttpRequest {
        HttpRequest::post_json(body)
            .with_header("X-Timestamp", ts)
            .with_header("X-Signature", sig)
    }

    #[test]
    fn hmac_sha512_base64_with_timestamp() {
        let host = paynow();
        let outcome = run(&host, paynow_req("1721890960", PAYNOW_SIG_S, PAYNOW_BODY)).expect("ok");
        let reply = outcome.reply.expect("reply");
        assert_eq!((reply.status, reply.text()), (202, "OK".to_string()));
        assert_eq!(
            reply.headers,
            vec![("content-type".into(), "text/plain; charset=utf-8".into())]
        );
        let change = &outcome.changes[0];
        assert_eq!(change.transaction_id, "884213");
        assert_eq!(change.amount, 250_000);
        assert_eq!(change.direction, Direction::Outgoing);
        assert_eq!(change.occurred_at_ms, Some(1_721_890_957_000));

        // Milliseconds are told apart by size.
        assert!(
            run(
                &host,
                paynow_req("1721890960123", PAYNOW_SIG_MS, PAYNOW_BODY)
            )
            .is_ok()
        );
        // Unpadded and URL-safe base64 decode to the same bytes.
        let unpadded = PAYNOW_SIG_S.trim_end_matches('=');
        assert!(run(&host, paynow_req("1721890960", unpadded, PAYNOW_BODY)).is_ok());
        let url_safe = PAYNOW_SIG_S.replace('/', "_").replace('+', "-");
        assert!(run(&host, paynow_req("1721890960", &url_safe, PAYNOW_BODY)).is_ok());

        let unauthorized = |req| reason_of(run(&host, req)).0 == "unauthorized";
        let tampered = PAYNOW_BODY.replace("-250000", "-950000");
        assert!(unauthorized(paynow_req(
            "1721890960",
            PAYNOW_SIG_S,
            &tampered
        )));
        // The signature covers the timestamp: another one does not verify.
        assert!(unauthorized(paynow_req(
            "1721890961",
            PAYNOW_SIG_S,
            PAYNOW_BODY
        )));
        assert!(unauthorized(paynow_req(
            "1721890960",
            PAYNOW_SIG_MS,
            PAYNOW_BODY
        )));
        assert!(unauthorized(paynow_req("1721890960", "%%%", PAYNOW_BODY)));
        let wrong_key = paynow().config("hmac_secret", "other");
        assert!(matches!(
            run(
                &wrong_key,
                paynow_req("1721890960", PAYNOW_SIG_S, PAYNOW_BODY)
            ),
            Err(ConnectorError::Unauthorized(_))
        ));
        let missing_ts =
            HttpRequest::post_json(PAYNOW_BODY).with_header("X-Signature", PAYNOW_SIG_S);
        assert_eq!(
            reason_of(run(&host, missing_ts)).1,
            "missing x-timestamp header"
        );
    }

    #[test]
    fn hmac_timestamp_outside_the_window_is_refused() {
        let host = paynow();
        let req = || paynow_req("1721890960", PAYNOW_SIG_S, PAYNOW_BODY);
        // 300 s either side is fine, 301 is not.
        assert!(host.run(|| handle_at(req(), NOW + 300_000)).is_ok());
        assert!(host.run(|| handle_at(req(), NOW - 300_000)).is_ok());
        let (kind, reason) = reason_of(host.run(|| handle_at(req(), NOW + 301_000)));
        assert_eq!(kind, "unauthorized");
        assert!(reason.contains("more than 300s from now"), "{reason}");
        let wider = paynow().config("max_skew_secs", "3600");
        assert!(wider.run(|| handle_at(req(), NOW + 3_000_000)).is_ok());
        let garbage = paynow_req("yesterday", PAYNOW_SIG_S, PAYNOW_BODY);
        assert_eq!(reason_of(run(&host, garbage)).0, "unauthorized");
    }

    #[test]
    fn hmac_timestamp_checked_but_unsigned_with_signed_payload_body() {
        // Python: hmac.new(b"k", b'{"id":"t-1","amount":150000}', hashlib.sha256).hexdigest()
        let body = r#"{"id":"t-1","amount":150000}"#;
        let sig = "92c481a10bd6ae90c56d1bc4ba62acbcbab4ec6c83aef1a588aedcb7b09fd692";
        let host = minimal()
            .config("auth", "hmac")
            .config("hmac_header", "x-sig")
            .config("hmac_secret", "k")
            .config("timestamp_header", "x-ts")
            .config("signed_payload", "body");
        let req = |ts: &str| {
            HttpRequest::post_json(body)
                .with_header("x-sig", sig)
                .with_header("x-ts", ts)
        };
        assert!(run(&host, req("1721890960")).is_ok());
        assert!(run(&host, req("1721890999")).is_ok(), "ts is not signed");
        assert!(run(&host, req("1721880000")).is_err(), "but is checked");
        let no_ts = minimal()
            .config("auth", "hmac")
            .config("hmac_header", "x-sig")
            .config("hmac_secret", "k");
        let req = HttpRequest::post_json(body).with_header("x-sig", sig);
        assert!(run(&no_ts, req).is_ok());
    }

    #[test]
    fn api_key_with_and_without_prefix() {
        let body = r#"{"id":"t-1","amount":150000}"#;
        let host = minimal().config("auth", "apikey").config("api_key", "k3y");
        let with = |host: &TestHost, name: &str, value: &str| {
            run(host, HttpRequest::post_json(body).with_header(name, value))
        };
        assert!(with(&host, "Authorization", "k3y").is_ok());
        assert!(
            with(&host, "Authorization", "Apikey k3y").is_err(),
            "no prefix configured"
        );
        assert_eq!(
            reason_of(with(&host, "Authorization", "nope")).1,
            "wrong API key"
        );
        assert_eq!(
            reason_of(run(&host, HttpRequest::post_json(body))).1,
            "missing authorization header"
        );

        let prefixed = host.clone().config("apikey_prefix", "Apikey ");
        assert!(with(&prefixed, "Authorization", "Apikey k3y").is_ok());
        assert!(
            with(&prefixed, "Authorization", "apikey k3y").is_ok(),
            "scheme case"
        );
        assert!(with(&prefixed, "Authorization", "Bearer k3y").is_err());
        assert!(with(&prefixed, "Authorization", "Apikey nope").is_err());
        assert!(with(&prefixed, "Authorization", "k3y").is_err());

        let custom = host.config("apikey_header", "X-Api-Key");
        assert!(with(&custom, "x-api-key", "k3y").is_ok());
        assert!(with(&custom, "Authorization", "k3y").is_err());
    }

    #[test]
    fn amounts_integer_string_and_scaled_decimals() {
        let amount = |v: serde_json::Value, scale| extract::amount(&v, scale);
        assert_eq!(amount(json!(150000), 0), Ok((150_000, false)));
        assert_eq!(amount(json!("150000"), 0), Ok((150_000, false)));
        assert_eq!(amount(json!(" 150000 "), 0), Ok((150_000, false)));
        assert_eq!(amount(json!(-150000), 0), Ok((150_000, true)));
        assert_eq!(amount(json!("-150000"), 0), Ok((150_000, true)));
        assert_eq!(amount(json!("150000.00"), 2), Ok((150_000, false)));
        assert_eq!(amount(json!("150000.0"), 2), Ok((150_000, false)));
        // A JSON float 150000.00 is 150000.0 once parsed.
        let float: serde_json::Value = serde_json::from_str("150000.00").unwrap();
        assert_eq!(amount(float.clone(), 2), Ok((150_000, false)));
        for (value, scale, why) in [
            (float, 0, "decimal digit"),
            (json!("150000.00"), 0, "decimal digit"),
            (json!("150000.000"), 2, "3 decimal digit"),
            (json!("150000.50"), 2, "non-zero fraction"),
            (json!(150000.5), 2, "non-zero fraction"),
            (json!("1e5"), 2, "plain decimal"),
            (json!(1e20), 2, "too large"),
            (json!("150,000"), 0, "plain decimal"),
            (json!("+150000"), 0, "plain decimal"),
            (json!(""), 0, "plain decimal"),
            (json!("99999999999999999999"), 0, "too large"),
            (json!(true), 0, "expected a number"),
            (json!(null), 0, "expected a number"),
        ] {
            let err = amount(value.clone(), scale).expect_err(&format!("{value}"));
            assert!(err.contains(why), "{value}: {err}");
        }
    }

    #[test]
    fn negative_zero_and_signed_amounts() {
        let host = minimal();
        let (kind, reason) = reason_of(changes(&host, r#"{"id":1,"amount":-5000}"#));
        assert_eq!(kind, "bad_request");
        assert!(reason.contains("negative_is_outgoing"), "{reason}");
        let (_, reason) = reason_of(changes(&host, r#"{"id":1,"amount":0}"#));
        assert_eq!(reason, "`amount_pointer` /amount: amount is 0");
        let signed = minimal().config("negative_is_outgoing", "true");
        let c = changes(&signed, r#"{"id":1,"amount":-5000}"#).unwrap();
        assert_eq!((c[0].amount, c[0].direction), (5000, Direction::Outgoing));
        let c = changes(&signed, r#"{"id":1,"amount":5000}"#).unwrap();
        assert_eq!(c[0].direction, Direction::Incoming);
    }

    #[test]
    fn direction_values() {
        let host = minimal().config("direction_pointer", "/dir");
        let dir = |v: &str| {
            changes(&host, &format!(r#"{{"id":1,"amount":5,"dir":{v}}}"#)).map(|c| c[0].direction)
        };
        // Defaults, any case.
        assert_eq!(dir(r#""in""#), Ok(Direction::Incoming));
        assert_eq!(dir(r#""CREDIT""#), Ok(Direction::Incoming));
        assert_eq!(dir(r#""debit""#), Ok(Direction::Outgoing));
        let (kind, reason) = reason_of(dir(r#""sideways""#));
        assert_eq!(kind, "bad_request");
        assert!(
            reason.starts_with("`direction_pointer` /dir is `sideways`"),
            "{reason}"
        );
        assert!(reason_of(dir("{}")).1.contains("is an object"));
        assert!(
            reason_of(changes(&host, r#"{"id":1,"amount":5}"#))
                .1
                .contains("not found")
        );
        // Numbers compare as text.
        let numeric = host
            .config("incoming_values", "1")
            .config("outgoing_values", "2");
        let dir = |v: &str| {
            changes(&numeric, &format!(r#"{{"id":1,"amount":5,"dir":{v}}}"#))
                .map(|c| c[0].direction)
        };
        assert_eq!(dir("1"), Ok(Direction::Incoming));
        assert_eq!(dir(r#""2""#), Ok(Direction::Outgoing));
    }

    #[test]
    fn pointers_escape_and_whole_body_array() {
        let host = minimal()
            .config("id_pointer", "/tx~1id")
            .config("amount_pointer", "/a~0b/0")
            .config("items_pointer", "");
        let c = changes(
            &host,
            r#"[{"tx/id":"x1","a~b":[1000]},{"tx/id":"x2","a~b":[2000]}]"#,
        )
        .unwrap();
        assert_eq!(
            c.iter()
                .map(|c| (c.transaction_id.as_str(), c.amount))
                .collect::<Vec<_>>(),
            vec![("x1", 1000), ("x2", 2000)]
        );
        assert_eq!(changes(&host, "[]").unwrap(), vec![]);
        let (kind, reason) = reason_of(changes(&host, r#"[{"tx/id":"x1"}]"#));
        assert_eq!(kind, "bad_request");
        assert_eq!(
            reason,
            "item 0: `amount_pointer` /a~0b/0 not found in the body"
        );
        let (_, reason) = reason_of(changes(&host, r#"{"tx/id":"x1"}"#));
        assert_eq!(reason, "`items_pointer` (the whole body) is not an array");
    }

    #[test]
    fn account_from_body_falls_back_to_fixed() {
        let host = minimal().config("account_pointer", "/acct");
        let account = |body: &str| changes(&host, body).map(|c| c[0].account.clone());
        assert_eq!(
            account(r#"{"id":1,"amount":5,"acct":"999"}"#),
            Ok("999".into())
        );
        assert_eq!(
            account(r#"{"id":1,"amount":5,"acct":12345}"#),
            Ok("12345".into())
        );
        assert_eq!(
            account(r#"{"id":1,"amount":5,"acct":null}"#),
            Ok("0001".into())
        );
        assert_eq!(account(r#"{"id":1,"amount":5}"#), Ok("0001".into()));
        let only_pointer = TestHost::new()
            .config("provider", "acme")
            .config("id_pointer", "/id")
            .config("amount_pointer", "/amount")
            .config("account_pointer", "/acct")
            .config("auth", "none")
            .config("allow_unsigned", "true");
        let (kind, reason) = reason_of(changes(&only_pointer, r#"{"id":1,"amount":5}"#));
        assert_eq!(
            (kind.as_str(), reason.as_str()),
            (
                "bad_request",
                "`account_pointer` /acct not found in the body"
            )
        );
    }

    #[test]
    fn time_formats() {
        use extract::parse_time;
        use settings::TimeFormat::*;
        // 2024-07-25T07:02:37Z = 1721890957 (`date -ud 2024-07-25T07:02:37Z +%s`).
        let t = 1_721_890_957_000;
        assert_eq!(parse_time("2024-07-25T07:02:37Z", Rfc3339), Some(t));
        assert_eq!(parse_time("2024-07-25T14:02:37+07:00", Rfc3339), Some(t));
        assert_eq!(parse_time("2024-07-25 14:02:37+07:00", Rfc3339), Some(t));
        assert_eq!(parse_time("2024-07-25T04:32:37-02:30", Rfc3339), Some(t));
        assert_eq!(parse_time("2024-07-25T07:02:37.5Z", Rfc3339), Some(t + 500));
        assert_eq!(
            parse_time("2024-07-25T07:02:37.123456Z", Rfc3339),
            Some(t + 123)
        );
        for bad in [
            "2024-07-25T07:02:37",
            "2024-07-25T07:02:37.Z",
            "2024-07-25T07:02:37+7:00",
            "2024-07-25T07:02:37+07:60",
            "2024-13-25T07:02:37Z",
            "25/07/2024",
        ] {
            assert_eq!(parse_time(bad, Rfc3339), None, "{bad}");
        }
        assert_eq!(parse_time("1721890957", UnixSecs), Some(t));
        assert_eq!(parse_time("1721890957000", UnixMillis), Some(t));
        assert_eq!(parse_time("2024-07-25 14:02:37", VietnamLocal), Some(t));
        assert_eq!(parse_time("20240725140237", VietnamCompact), Some(t));
        assert_eq!(parse_time("1721890957.5", UnixSecs), None);

        let host = minimal()
            .config("occurred_at_pointer", "/at")
            .config("occurred_at_format", "unix_s");
        let at = |v: &str| {
            changes(&host, &format!(r#"{{"id":1,"amount":5,"at":{v}}}"#))
                .map(|c| c[0].occurred_at_ms)
        };
        assert_eq!(at("1721890957"), Ok(Some(t)));
        assert_eq!(at(r#""1721890957""#), Ok(Some(t)));
        assert_eq!(at("null"), Ok(None));
        assert_eq!(at(r#""""#), Ok(None));
        let (kind, reason) = reason_of(at(r#""soon""#));
        assert_eq!(kind, "bad_request");
        assert_eq!(reason, "`occurred_at_pointer` /at: `soon` is not unix_s");
    }

    #[test]
    fn skip_rule_acknowledges_pings() {
        let host = minimal()
            .config("skip_pointer", "/id")
            .config("skip_values", "0, test");
        let outcome = run(&host, HttpRequest::post_json(r#"{"id":0}"#)).expect("acknowledged");
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.reply.expect("reply").text(), r#"{"ok":true}"#);
        assert!(changes(&host, r#"{"id":"TEST"}"#).unwrap().is_empty());
        assert_eq!(changes(&host, r#"{"id":7,"amount":5}"#).unwrap().len(), 1);
        let batch = host.config("items_pointer", "/items");
        let c = changes(&batch, r#"{"items":[{"id":0},{"id":8,"amount":9}]}"#).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].transaction_id, "8");
    }

    #[test]
    fn malformed_bodies_name_the_pointer() {
        let host = minimal().config("content_pointer", "/memo");
        for (body, expected) in [
            ("", "body is not JSON"),
            ("{", "body is not JSON"),
            (r#"{"amount":5}"#, "`id_pointer` /id not found in the body"),
            (
                r#"{"id":1}"#,
                "`amount_pointer` /amount not found in the body",
            ),
            (
                r#"{"id":{"x":1},"amount":5}"#,
                "`id_pointer` /id must be a string or an integer",
            ),
            (
                r#"{"id":1.5,"amount":5}"#,
                "`id_pointer` /id must be a string or an integer",
            ),
            (r#"{"id":"  ","amount":5}"#, "`id_pointer` /id is empty"),
            (
                r#"{"id":"a\nb","amount":5}"#,
                "`id_pointer` /id contains control characters",
            ),
            (
                r#"{"id":1,"amount":[5]}"#,
                "`amount_pointer` /amount: expected a number",
            ),
            (
                r#"{"id":1,"amount":5,"memo":[1]}"#,
                "`content_pointer` /memo is an array",
            ),
        ] {
            let (kind, reason) = reason_of(changes(&host, body));
            assert_eq!(kind, "bad_request", "{body}");
            assert!(reason.starts_with(expected), "{body}: {reason}");
        }
        let long_id = format!(r#"{{"id":"{}","amount":5}}"#, "x".repeat(129));
        assert!(
            reason_of(changes(&host, &long_id))
                .1
                .contains("longer than 128")
        );
    }

    #[test]
    fn long_memo_is_cut_on_a_character_boundary() {
        let host = minimal().config("content_pointer", "/memo");
        let memo = "đ".repeat(1500); // 3000 bytes
        let c = changes(&host, &json!({"id":1,"amount":5,"memo":memo}).to_string()).unwrap();
        let content = c[0].content.clone().unwrap();
        assert_eq!(content.len(), 2048);
        assert!(content.chars().all(|ch| ch == 'đ'));
    }

    #[test]
    fn config_mistakes_are_fatal_and_name_the_key() {
        let body = r#"{"id":1,"amount":5}"#;
        let fatal = |host: TestHost, expected: &str| {
            let (kind, reason) = reason_of(changes(&host, body));
            assert_eq!(kind, "fatal", "{reason}");
            assert!(
                reason.contains(expected),
                "wanted `{expected}` in: {reason}"
            );
        };
        let without = |key: &str| {
            let mut host = TestHost::new();
            for (k, v) in [
                ("provider", "acme"),
                ("id_pointer", "/id"),
                ("amount_pointer", "/amount"),
                ("account", "0001"),
                ("auth", "none"),
                ("allow_unsigned", "true"),
            ] {
                if k != key {
                    host = host.config(k, v);
                }
            }
            host
        };
        fatal(without("provider"), "`provider` is not set");
        fatal(without("id_pointer"), "`id_pointer` is not set");
        fatal(without("amount_pointer"), "`amount_pointer` is not set");
        fatal(without("account"), "`account_pointer`");
        fatal(without("auth"), "`auth` is not set");
        fatal(
            minimal().config("id_pointer", "id"),
            "`id_pointer` = `id` is not a JSON pointer",
        );
        fatal(
            minimal().config("amount_pointer", "/a~2"),
            "`amount_pointer`",
        );
        fatal(
            minimal().config("content_pointer", "memo"),
            "`content_pointer`",
        );
        fatal(
            minimal().config("items_pointer", "items"),
            "`items_pointer`",
        );
        fatal(
            minimal().config("extra_pointers", "bank"),
            "`extra_pointers`",
        );
        fatal(
            minimal().config("extra_pointers", "bank=x"),
            "`extra_pointers`",
        );
        fatal(minimal().config("auth", "oauth"), "`auth` is `oauth`");
        fatal(minimal().config("currency", "vnd"), "`currency`");
        fatal(minimal().config("amount_scale", "two"), "`amount_scale`");
        fatal(minimal().config("reply_status", "500"), "`reply_status`");
        fatal(
            minimal().config("negative_is_outgoing", "yes"),
            "`negative_is_outgoing`",
        );
        fatal(
            minimal().config("amount_pointr", "/x"),
            "unknown config key(s): amount_pointr",
        );
        fatal(
            minimal().config("occurred_at_pointer", "/at"),
            "`occurred_at_format`",
        );
        fatal(
            minimal()
                .config("occurred_at_pointer", "/at")
                .config("occurred_at_format", "iso"),
            "`occurred_at_format` is `iso`",
        );
        fatal(
            minimal()
                .config("direction_pointer", "/d")
                .config("negative_is_outgoing", "true"),
            "choose one",
        );
        fatal(
            minimal()
                .config("direction_pointer", "/d")
                .config("incoming_values", "in")
                .config("outgoing_values", "IN"),
            "`in` is in both",
        );
        fatal(
            minimal().config("skip_pointer", "/id"),
            "`skip_values` is not set",
        );
        let hmac = || minimal().config("auth", "hmac");
        fatal(
            hmac().config("hmac_secret", "s"),
            "`hmac_header` is not set",
        );
        fatal(
            hmac().config("hmac_header", "x"),
            "`hmac_secret` is not set",
        );
        let hmac_ok = || hmac().config("hmac_header", "x").config("hmac_secret", "s");
        fatal(
            hmac_ok().config("hmac_algorithm", "md5"),
            "`hmac_algorithm` is `md5`",
        );
        fatal(
            hmac_ok().config("hmac_encoding", "b32"),
            "`hmac_encoding` is `b32`",
        );
        fatal(
            hmac_ok().config("signed_payload", "timestamp.body"),
            "needs `timestamp_header`",
        );
        fatal(
            hmac_ok()
                .config("timestamp_header", "x-ts")
                .config("max_skew_secs", "-1"),
            "`max_skew_secs`",
        );
        fatal(minimal().config("auth", "apikey"), "`api_key` is not set");
    }

    #[test]
    fn default_reply_and_currency() {
        let host = minimal().config("currency", "USD");
        let outcome = run(&host, HttpRequest::post_json(r#"{"id":"a","amount":"12"}"#)).unwrap();
        let reply = outcome.reply.unwrap();
        assert_eq!((reply.status, reply.text()), (200, r#"{"ok":true}"#.into()));
        assert_eq!(outcome.changes[0].currency, "USD");
        let empty = minimal().config("reply_status", "204");
        let reply = run(
            &empty,
            HttpRequest::post_json(r#"{"id":"a","amount":"12"}"#),
        )
        .unwrap()
        .reply
        .unwrap();
        assert_eq!((reply.status, reply.body.len()), (204, 0));
    }
}
