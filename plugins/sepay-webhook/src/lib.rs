//! SePay webhooks → balance changes.
//!
//! SePay posts one object per bank transaction, as JSON, form-urlencoded or
//! multipart ([`body`]). This plugin checks the auth mode the shop chose in
//! SePay's dashboard, parses the body and answers `{"success": true}`, which
//! SePay expects (anything else makes it retry). In OAuth 2.0 mode it also
//! serves SePay's token URL, `/hooks/<connector>?oauth=token` ([`oauth`]).
//!
//! The transaction id is SePay's integer `id` (see
//! `sepay_common::webhook_transaction_id`); it also stays in `extra` as
//! `sepayId`.
//!
//! Config (`[connector.config]`):
//! - `auth`: `apikey` | `hmac` | `oauth2` | `none` (default: `apikey` when
//!   `api_key` is set, `hmac` when `hmac_secret` is, `oauth2` when
//!   `oauth_client_secret` is; with none of them every request is refused)
//! - `allow_unsigned`: must be `true` for `auth = "none"` (loopback listeners only)
//! - `api_key`: for `Authorization: Apikey <key>`
//! - `hmac_secret`: for `X-SePay-Signature` over `<X-SePay-Timestamp>.<raw body>`
//! - `max_skew_secs`: allowed distance of the HMAC timestamp from now (default 300)
//! - `oauth_client_id`, `oauth_client_secret`: what the shop typed into SePay's
//!   OAuth 2.0 form; `oauth_token_ttl_secs`: access token life (default 3600)

pub mod body;
pub mod oauth;

use serde::Deserialize;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, WebhookConnector,
    WebhookOutcome, config, export_webhook_connector, signature, text::truncate, time,
};

/// The dedupe provider, shared with `sepay-poll`; the two never report one
/// payment (see [`sepay_common::webhook_transaction_id`]).
pub use sepay_common::PROVIDER;

/// SePay's webhook body, as documented.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SepayWebhook {
    pub id: u64,
    pub gateway: Option<String>,
    pub transaction_date: Option<String>,
    pub account_number: String,
    pub sub_account: Option<String>,
    pub code: Option<String>,
    pub content: Option<String>,
    pub transfer_type: String,
    pub transfer_amount: u64,
    pub accumulated: Option<i64>,
    pub reference_code: Option<String>,
    pub description: Option<String>,
}

pub struct SepayConnector;

/// The gateway's limits on a change's fields (see its `validate`). A body
/// past the amount or account limits is malformed (400); a memo, reference
/// or extra past theirs is cut or dropped rather than refuse the payment. A
/// change the gateway refused would be a 500, which SePay retries forever.
const MAX_AMOUNT: u64 = 1_000_000_000_000_000;
const MAX_ACCOUNT_BYTES: usize = 64;
const MAX_REFERENCE_BYTES: usize = 256;
const MAX_CONTENT_BYTES: usize = 2048;
const MAX_EXTRA_VALUE_BYTES: usize = 256;

impl WebhookConnector for SepayConnector {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        if oauth::is_token_request(&request)? {
            return oauth::issue(&request, time::now_secs());
        }
        // Signatures are checked over the raw body, before any decoding.
        authenticate(&request, time::now_secs())?;
        let change = parse(&body::as_json(&request)?)?;
        Ok(WebhookOutcome {
            changes: vec![change],
            reply: Some(HttpResponse::json(200, r#"{"success":true}"#)),
        })
    }
}

export_webhook_connector!(SepayConnector);

/// How the shop told SePay to authenticate its webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    None,
    ApiKey,
    Hmac,
    OAuth2,
}

/// The mode from `auth`, or from which secret is set. Secure by default:
/// with neither, the connector refuses every request (500, flagged in the
/// status page) rather than announce payments anyone could have invented;
/// `none` needs `allow_unsigned = true`, which the gateway allows only on a
/// loopback listener.
fn auth_mode() -> Result<AuthMode, ConnectorError> {
    match config::get("auth").as_deref() {
        None if config::get("api_key").is_some() => Ok(AuthMode::ApiKey),
        None if config::get("hmac_secret").is_some() => Ok(AuthMode::Hmac),
        None if config::get("oauth_client_secret").is_some() => Ok(AuthMode::OAuth2),
        None => Err(ConnectorError::Fatal(
            "set `auth` to apikey, hmac or oauth2, as chosen in SePay's webhook settings, \
             with `api_key`, `hmac_secret` or `oauth_client_id` and `oauth_client_secret`"
                .into(),
        )),
        Some("none") if config::allow_unsigned() => Ok(AuthMode::None),
        Some("none") => Err(config::unsigned_refused("auth = \"none\"")),
        Some("apikey") | Some("api_key") => Ok(AuthMode::ApiKey),
        Some("hmac") => Ok(AuthMode::Hmac),
        Some("oauth2") | Some("oauth") => Ok(AuthMode::OAuth2),
        Some(other) => Err(ConnectorError::Fatal(format!(
            "config `auth` is `{other}`; expected apikey, hmac, oauth2 or none"
        ))),
    }
}

/// Checks the request against the configured auth mode.
pub fn authenticate(request: &HttpRequest, now_secs: i64) -> Result<(), ConnectorError> {
    match auth_mode()? {
        AuthMode::None => Ok(()),
        AuthMode::ApiKey => {
            let expected = config::require("api_key")?;
            let given = request
                .header("authorization")
                .ok_or_else(|| unauthorized("missing Authorization header"))?;
            let (scheme, key) = given
                .split_once(' ')
                .ok_or_else(|| unauthorized("Authorization is not `Apikey <key>`"))?;
            if !scheme.eq_ignore_ascii_case("apikey") {
                return Err(unauthorized("Authorization scheme is not Apikey"));
            }
            if signature::constant_time_eq(key.trim().as_bytes(), expected.as_bytes()) {
                Ok(())
            } else {
                Err(unauthorized("wrong API key"))
            }
        }
        AuthMode::Hmac => {
            let secret = config::require("hmac_secret")?;
            let max_skew: i64 = config::get_or("max_skew_secs", "300")
                .parse()
                .map_err(|_| {
                    ConnectorError::Fatal("config `max_skew_secs` is not an integer".into())
                })?;
            let timestamp = request
                .header("x-sepay-timestamp")
                .ok_or_else(|| unauthorized("missing X-SePay-Timestamp"))?;
            let ts: i64 = timestamp
                .trim()
                .parse()
                .map_err(|_| unauthorized("X-SePay-Timestamp is not Unix seconds"))?;
            if (now_secs - ts).abs() > max_skew {
                return Err(unauthorized(
                    "X-SePay-Timestamp is too far from now (replay?)",
                ));
            }
            let given = request
                .header("x-sepay-signature")
                .ok_or_else(|| unauthorized("missing X-SePay-Signature"))?;
            let given = given.trim();
            let given = given.strip_prefix("sha256=").unwrap_or(given);
            let mut signed = Vec::with_capacity(timestamp.len() + 1 + request.body.len());
            signed.extend_from_slice(timestamp.trim().as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(&request.body);
            let expected = signature::hmac_sha256(secret.as_bytes(), &signed);
            if signature::verify_hex(given, &expected) {
                Ok(())
            } else {
                Err(unauthorized("bad X-SePay-Signature"))
            }
        }
        AuthMode::OAuth2 => oauth::verify_bearer(request, now_secs),
    }
}

/// Parses SePay's JSON into a balance change.
pub fn parse(body: &[u8]) -> Result<BalanceChange, ConnectorError> {
    let hook: SepayWebhook = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadRequest(format!("not a SePay webhook: {e}")))?;
    let direction = match hook.transfer_type.as_str() {
        "in" => Direction::Incoming,
        "out" => Direction::Outgoing,
        other => {
            return Err(ConnectorError::BadRequest(format!(
                "transferType is `{other}`; expected in or out"
            )));
        }
    };
    if hook.transfer_amount == 0 || hook.transfer_amount > MAX_AMOUNT {
        return Err(ConnectorError::BadRequest(format!(
            "transferAmount {} is not a plausible amount",
            hook.transfer_amount
        )));
    }
    let account = hook.account_number.trim().to_string();
    if account.is_empty() {
        return Err(ConnectorError::BadRequest("accountNumber is empty".into()));
    }
    if account.len() > MAX_ACCOUNT_BYTES || account.chars().any(char::is_control) {
        return Err(ConnectorError::BadRequest(
            "accountNumber is not a plausible account".into(),
        ));
    }
    let occurred_at_ms = hook
        .transaction_date
        .as_deref()
        .and_then(time::parse_vietnam_local);
    // SePay's own id: see `sepay_common::webhook_transaction_id` for why.
    let transaction_id = sepay_common::webhook_transaction_id(hook.id);
    let mut extra = vec![("sepayId".to_string(), hook.id.to_string())];
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            extra.push((
                k.to_string(),
                truncate(&v, MAX_EXTRA_VALUE_BYTES).to_string(),
            ));
        }
    };
    keep("gateway", hook.gateway);
    keep("subAccount", hook.sub_account);
    keep("code", hook.code);
    keep("accumulated", hook.accumulated.map(|a| a.to_string()));
    keep("description", hook.description);
    keep("transactionDate", hook.transaction_date);
    Ok(BalanceChange {
        provider: PROVIDER.into(),
        transaction_id,
        account,
        amount: hook.transfer_amount,
        currency: "VND".into(),
        direction,
        reference: hook
            .reference_code
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty() && r.len() <= MAX_REFERENCE_BYTES),
        counterparty: None,
        content: hook
            .content
            .map(|c| truncate(&c, MAX_CONTENT_BYTES).to_string()),
        occurred_at_ms,
        extra,
    })
}

fn unauthorized(reason: &str) -> ConnectorError {
    ConnectorError::Unauthorized(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;

    const SAMPLE: &str = include_str!("../../../examples/payloads/sepay-webhook.json");

    fn run(host: &TestHost, req: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| SepayConnector::handle(req))
    }

    #[test]
    fn parses_the_documented_sample() {
        let change = parse(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(change.provider, "sepay");
        assert_eq!(change.transaction_id, "92704", "SePay's id");
        assert_eq!(change.account, "0123499999");
        assert_eq!(change.amount, 2_277_000);
        assert_eq!(change.direction, Direction::Incoming);
        assert_eq!(change.reference.as_deref(), Some("MBVCB.3278907687"));
        assert_eq!(change.occurred_at_ms, Some(1_701_933_300_000));
        assert!(
            change
                .extra
                .contains(&("gateway".into(), "Vietcombank".into()))
        );
        assert!(change.extra.contains(&("sepayId".into(), "92704".into())));
    }

    #[test]
    fn the_outgoing_sample_keys_on_sepays_id_too() {
        let out = include_str!("../../../examples/payloads/sepay-webhook-out.json");
        let change = parse(out.as_bytes()).expect("sample parses");
        assert_eq!(change.direction, Direction::Outgoing);
        assert_eq!(change.transaction_id, "92705");
        assert!(change.extra.contains(&("sepayId".into(), "92705".into())));
    }

    #[test]
    fn without_a_reference_the_key_is_still_sepays_id() {
        for reference in ["null", "\"\"", "\" \""] {
            let body = SAMPLE.replace("\"MBVCB.3278907687\"", reference);
            let change = parse(body.as_bytes()).expect("parses");
            // Still SePay's id: a reference is not what makes it unique.
            assert_eq!(change.transaction_id, "92704");
            assert_eq!(change.reference, None);
        }
    }

    #[test]
    fn unsigned_only_when_the_config_says_so_in_words() {
        let unsigned = TestHost::new()
            .config("auth", "none")
            .config("allow_unsigned", "true");
        let outcome = run(&unsigned, HttpRequest::post_json(SAMPLE)).expect("accepted");
        assert_eq!(outcome.changes.len(), 1);
        assert_eq!(outcome.reply.expect("reply").text(), r#"{"success":true}"#);

        for host in [
            TestHost::new(),
            TestHost::new().config("auth", "none"),
            TestHost::new()
                .config("auth", "none")
                .config("allow_unsigned", "false"),
        ] {
            assert!(matches!(
                run(&host, HttpRequest::post_json(SAMPLE)),
                Err(ConnectorError::Fatal(_))
            ));
        }
    }

    #[test]
    fn a_secret_alone_picks_its_mode() {
        let host = TestHost::new().config("hmac_secret", "s3cret");
        assert!(matches!(
            run(&host, HttpRequest::post_json(SAMPLE)),
            Err(ConnectorError::Unauthorized(_))
        ));
    }

    #[test]
    fn api_key_checked() {
        let host = TestHost::new().config("api_key", "k3y");
        let ok = HttpRequest::post_json(SAMPLE).with_header("Authorization", "Apikey k3y");
        assert!(run(&host, ok).is_ok());
        let wrong = HttpRequest::post_json(SAMPLE).with_header("Authorization", "Apikey nope");
        assert!(matches!(
            run(&host, wrong),
            Err(ConnectorError::Unauthorized(_))
        ));
        let missing = HttpRequest::post_json(SAMPLE);
        assert!(matches!(
            run(&host, missing),
            Err(ConnectorError::Unauthorized(_))
        ));
        let bearer = HttpRequest::post_json(SAMPLE).with_header("Authorization", "Bearer k3y");
        assert!(matches!(
            run(&host, bearer),
            Err(ConnectorError::Unauthorized(_))
        ));
    }

    fn signed(secret: &str, ts: i64, body: &str, prefix: &str) -> HttpRequest {
        let sig = signature::hmac_sha256_hex(secret.as_bytes(), format!("{ts}.{body}").as_bytes());
        HttpRequest::post_json(body)
            .with_header("X-SePay-Timestamp", &ts.to_string())
            .with_header("X-SePay-Signature", &format!("{prefix}{sig}"))
    }

    #[test]
    fn hmac_valid_tampered_wrong_key_replayed() {
        let host = TestHost::new()
            .config("auth", "hmac")
            .config("hmac_secret", "s3cret");
        let now = time::now_secs();
        assert!(run(&host, signed("s3cret", now, SAMPLE, "sha256=")).is_ok());
        assert!(
            run(&host, signed("s3cret", now, SAMPLE, "")).is_ok(),
            "prefix optional"
        );

        let mut tampered = signed("s3cret", now, SAMPLE, "sha256=");
        tampered.body = SAMPLE.replace("2277000", "9277000").into_bytes();
        assert!(matches!(
            run(&host, tampered),
            Err(ConnectorError::Unauthorized(_))
        ));

        let wrong_key = signed("other", now, SAMPLE, "sha256=");
        assert!(matches!(
            run(&host, wrong_key),
            Err(ConnectorError::Unauthorized(_))
        ));

        let replayed = signed("s3cret", now - 3600, SAMPLE, "sha256=");
        assert!(matches!(
            run(&host, replayed),
            Err(ConnectorError::Unauthorized(_))
        ));
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        for body in [
            "",
            "{",
            "[]",
            r#"{"id":1}"#,
            &SAMPLE.replace("\"in\"", "\"sideways\""),
        ] {
            let result = run(
                &TestHost::new()
                    .config("auth", "none")
                    .config("allow_unsigned", "true"),
                HttpRequest::post_json(body),
            );
            assert!(
                matches!(result, Err(ConnectorError::BadRequest(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn what_the_gateway_would_refuse_is_a_bad_request() {
        let long_account = format!("\"{}\"", "1".repeat(65));
        for (from, to) in [
            ("2277000", "0"),
            ("2277000", "1000000000000000001"),
            ("\"0123499999\"", "\"0123\\u000b499999\""),
            ("\"0123499999\"", long_account.as_str()),
        ] {
            let body = SAMPLE.replace(from, to);
            assert!(
                matches!(parse(body.as_bytes()), Err(ConnectorError::BadRequest(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn long_text_is_cut_to_the_gateway_limits() {
        let mut hook: serde_json::Value = serde_json::from_str(SAMPLE).expect("sample");
        hook["content"] = "đ".repeat(3000).into();
        hook["description"] = "x".repeat(9000).into();
        hook["gateway"] = "y".repeat(9000).into();
        hook["referenceCode"] = "R".repeat(300).into();
        hook["accountNumber"] = " 0123499999 ".into();
        let body = serde_json::to_vec(&hook).expect("json");
        let change = parse(&body).expect("accepted, cut");
        assert_eq!(change.account, "0123499999");
        assert!(change.content.expect("content").len() <= MAX_CONTENT_BYTES);
        assert_eq!(change.reference, None);
        let extra: usize = change.extra.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(extra <= 8192, "{extra}");
    }

    #[test]
    fn unknown_auth_mode_is_fatal() {
        let host = TestHost::new().config("auth", "oauth9");
        let result = run(&host, HttpRequest::post_json(SAMPLE));
        assert!(matches!(result, Err(ConnectorError::Fatal(_))));
    }
}
