//! Hello Bank webhooks → balance changes: the example connector.
//!
//! Hello Bank is made up. It posts one JSON object per incoming payment,
//! `{"id": "t1", "account": "0001", "amount": 150000, "memo": "..."}`, and
//! signs the raw body: `X-Signature` = hex HMAC-SHA256(secret, body).
//!
//! Config (`[connector.config]`): `secret`, the shared key (required).

use serde::Deserialize;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, HttpRequest, HttpResponse, WebhookConnector, WebhookOutcome,
    config, export_webhook_connector, signature,
};

/// The dedupe provider: every connector that sees Hello Bank's payments uses
/// this name, so a payment seen twice (a retry, a second connector) is
/// announced once.
pub const PROVIDER: &str = "hello-bank";

/// Hello Bank's webhook body.
#[derive(Debug, Deserialize)]
pub struct Payment {
    pub id: String,
    pub account: String,
    /// Whole đồng: VND has no minor unit.
    pub amount: u64,
    pub memo: Option<String>,
}

pub struct Hello;

impl WebhookConnector for Hello {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        // 1. Verify over the raw body bytes, in constant time, before parsing.
        verify(&request)?;
        // 2. Parse and normalise.
        let change = parse(&request.body)?;
        // 3. The reply Hello Bank expects; sent once the change is stored.
        Ok(WebhookOutcome {
            changes: vec![change],
            reply: Some(HttpResponse::json(200, r#"{"ok":true}"#)),
        })
    }
}

export_webhook_connector!(Hello);

/// `X-Signature` = hex HMAC-SHA256(`secret`, raw body), either hex case.
pub fn verify(request: &HttpRequest) -> Result<(), ConnectorError> {
    let secret = config::require("secret")?;
    if secret.is_empty() {
        // An empty key would accept anyone who knows that: a config mistake.
        return Err(ConnectorError::Fatal(
            "config key `secret` is not set".into(),
        ));
    }
    let given = request
        .header("x-signature")
        .ok_or_else(|| ConnectorError::Unauthorized("missing X-Signature".into()))?;
    let expected = signature::hmac_sha256(secret.as_bytes(), &request.body);
    if signature::verify_hex(given, &expected) {
        Ok(())
    } else {
        Err(ConnectorError::Unauthorized("bad signature".into()))
    }
}

/// Hello Bank's JSON → one incoming balance change.
pub fn parse(body: &[u8]) -> Result<BalanceChange, ConnectorError> {
    let bad = |reason: &str| ConnectorError::BadRequest(reason.to_string());
    let payment: Payment = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadRequest(format!("bad JSON: {e}")))?;
    if payment.id.is_empty() {
        return Err(bad("`id` must be a non-empty string"));
    }
    if payment.account.is_empty() {
        return Err(bad("`account` must be a non-empty string"));
    }
    if payment.amount == 0 {
        return Err(bad("`amount` must be a positive integer (VND)"));
    }
    // (provider, transaction id) is the dedupe key.
    Ok(BalanceChange {
        content: payment.memo,
        ..BalanceChange::incoming(PROVIDER, &payment.id, &payment.account, payment.amount)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::Direction;
    use soundbox_plugin_sdk::testing::TestHost;

    /// The sample shared by the three language versions, byte for byte.
    const SAMPLE: &str = include_str!("../../payload.json");
    /// Computed independently of this crate:
    /// `openssl dgst -sha256 -hmac s3cret examples/hello-connector/payload.json`
    const SAMPLE_SIGNATURE: &str =
        "2caa8b8650813f6db94b45aee2e03cedf32b161d9d06565b374a57aa798009c0";

    fn host() -> TestHost {
        TestHost::new().config("secret", "s3cret")
    }

    fn signed(body: &str) -> HttpRequest {
        let sig = signature::hmac_sha256_hex(b"s3cret", body.as_bytes());
        HttpRequest::post_json(body).with_header("X-Signature", &sig)
    }

    fn error(host: &TestHost, request: HttpRequest) -> ConnectorError {
        match host.run(|| Hello::handle(request)) {
            Ok(outcome) => panic!("accepted: {:?}", outcome.changes),
            Err(e) => e,
        }
    }

    #[test]
    fn signed_sample_is_one_incoming_payment_and_replies_ok() {
        let request = HttpRequest::post_json(SAMPLE).with_header("X-Signature", SAMPLE_SIGNATURE);
        let outcome = host().run(|| Hello::handle(request)).expect("accepted");
        assert_eq!(outcome.changes.len(), 1);
        let change = &outcome.changes[0];
        assert_eq!(change.provider, "hello-bank");
        assert_eq!(change.transaction_id, "t1");
        assert_eq!(change.account, "0001");
        assert_eq!(change.amount, 150_000);
        assert_eq!(change.currency, "VND");
        assert_eq!(change.direction, Direction::Incoming);
        assert_eq!(change.content.as_deref(), Some("thanh toan don 1"));
        let reply = outcome.reply.expect("reply");
        assert_eq!((reply.status, reply.text()), (200, r#"{"ok":true}"#.into()));
    }

    #[test]
    fn upper_case_hex_is_the_same_signature() {
        let request = HttpRequest::post_json(SAMPLE)
            .with_header("X-Signature", &SAMPLE_SIGNATURE.to_ascii_uppercase());
        assert!(host().run(|| Hello::handle(request)).is_ok());
    }

    #[test]
    fn tampered_body_is_unauthorized() {
        let tampered = SAMPLE.replace("150000", "950000");
        let request = HttpRequest::post_json(tampered).with_header("X-Signature", SAMPLE_SIGNATURE);
        assert_eq!(
            error(&host(), request),
            ConnectorError::Unauthorized("bad signature".into())
        );
    }

    #[test]
    fn wrong_key_is_unauthorized() {
        let request = HttpRequest::post_json(SAMPLE).with_header("X-Signature", SAMPLE_SIGNATURE);
        let other = TestHost::new().config("secret", "not-s3cret");
        assert!(matches!(
            error(&other, request),
            ConnectorError::Unauthorized(_)
        ));
    }

    #[test]
    fn missing_or_garbled_signature_is_unauthorized() {
        let request = HttpRequest::post_json(SAMPLE);
        assert_eq!(
            error(&host(), request),
            ConnectorError::Unauthorized("missing X-Signature".into())
        );
        let request = HttpRequest::post_json(SAMPLE).with_header("X-Signature", "zz-not-hex");
        assert!(matches!(
            error(&host(), request),
            ConnectorError::Unauthorized(_)
        ));
    }

    #[test]
    fn missing_secret_is_fatal() {
        let request = HttpRequest::post_json(SAMPLE).with_header("X-Signature", SAMPLE_SIGNATURE);
        assert!(matches!(
            error(&TestHost::new(), request.clone()),
            ConnectorError::Fatal(_)
        ));
        let empty = TestHost::new().config("secret", "");
        assert!(matches!(error(&empty, request), ConnectorError::Fatal(_)));
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            "{\"id\": \"t1\",",
            "[1, 2]",
            r#"{"account": "0001", "amount": 1}"#,
            r#"{"id": "", "account": "0001", "amount": 1}"#,
            r#"{"id": "t1", "account": "", "amount": 1}"#,
            r#"{"id": "t1", "account": "0001", "amount": 0}"#,
            r#"{"id": "t1", "account": "0001", "amount": -5}"#,
            r#"{"id": "t1", "account": "0001", "amount": 1.5}"#,
            r#"{"id": "t1", "account": "0001", "amount": "150000"}"#,
            r#"{"id": "t1", "account": "0001", "amount": 1, "memo": 7}"#,
        ] {
            assert!(
                matches!(error(&host(), signed(body)), ConnectorError::BadRequest(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn memo_is_optional() {
        let body = r#"{"id": "t2", "account": "0001", "amount": 5000}"#;
        let outcome = host()
            .run(|| Hello::handle(signed(body)))
            .expect("accepted");
        assert_eq!(outcome.changes[0].content, None);
    }
}
