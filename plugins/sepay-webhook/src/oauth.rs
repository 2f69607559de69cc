//! SePay's OAuth 2.0 webhook mode, with the token endpoint served here.
//!
//! SePay first POSTs `{"clientId","clientSecret"}` (JSON) to the shop's token
//! URL and expects `{"data":{"accessToken","refreshToken","expiredIn"}}`; it
//! then calls the webhook with `Authorization: Bearer <accessToken>`. The
//! gateway routes only `/hooks/<connector>` to a plugin, so the token URL is
//! this same connector with a query: `https://<host>/hooks/<connector>?oauth=token`.
//!
//! Tokens are stateless, so nothing is stored and a restart loses nothing:
//! `v1.<expiry, Unix seconds>.<hex HMAC-SHA256(oauth_client_secret, "<kind>:<expiry>")>`,
//! `kind` being `access` or `refresh`. Rotating the secret revokes every token.
//!
//! Assumptions where SePay's page is silent (each a constant below):
//! - the token reply is `200` with exactly the three documented fields (no
//!   `tokenType`; the page says the reply must follow its format);
//! - `expiredIn` is seconds (the page recommends "1 hour = 3600 seconds");
//! - SePay documents no refresh call, so a refresh token is accepted in place
//!   of `clientSecret` on the same endpoint. A refresh token is never a bearer.
//! - wrong credentials are a 401 with the gateway's JSON reason.

use serde::Deserialize;
use soundbox_plugin_sdk::{
    ConnectorError, HttpRequest, HttpResponse, WebhookOutcome, config, log, signature,
};

use crate::AuthMode;

/// The query parameter that turns a request into a token request.
pub const TOKEN_QUERY_KEY: &str = "oauth";
pub const TOKEN_QUERY_VALUE: &str = "token";
/// Status of a successful token reply (SePay does not say; any 2xx is likely fine).
const TOKEN_REPLY_STATUS: u16 = 200;
/// `oauth_token_ttl_secs` default: SePay's recommendation.
const DEFAULT_ACCESS_TTL_SECS: i64 = 3600;
/// How long a refresh token lasts: a month, as SePay's own API refresh tokens.
const REFRESH_TTL_SECS: i64 = 30 * 24 * 3600;
/// Upper bound for `oauth_token_ttl_secs`: a leaked bearer should not live long.
const MAX_ACCESS_TTL_SECS: i64 = 7 * 24 * 3600;
const TOKEN_VERSION: &str = "v1";
/// A token is `v1.` + at most 12 digits + `.` + 64 hex: anything longer is not ours.
const MAX_TOKEN_BYTES: usize = 96;

/// What a token is for; part of what is signed, so one cannot stand for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Access,
    Refresh,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Refresh => "refresh",
        }
    }
}

/// Whether the request is for the token endpoint (`?oauth=token`). Any other
/// `oauth` value is a malformed request rather than a webhook.
pub fn is_token_request(request: &HttpRequest) -> Result<bool, ConnectorError> {
    match request
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == TOKEN_QUERY_KEY)
    {
        None => Ok(false),
        Some((_, v)) if v == TOKEN_QUERY_VALUE => Ok(true),
        Some(_) => Err(ConnectorError::BadRequest(format!(
            "unknown `{TOKEN_QUERY_KEY}` endpoint; the token URL ends in \
             `?{TOKEN_QUERY_KEY}={TOKEN_QUERY_VALUE}`"
        ))),
    }
}

/// The body SePay posts to the token URL.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    client_id: String,
    client_secret: String,
}

/// Answers a token request: checks the client credentials (or a refresh token
/// in place of the secret) and returns fresh tokens. No balance change.
pub fn issue(request: &HttpRequest, now_secs: i64) -> Result<WebhookOutcome, ConnectorError> {
    if crate::auth_mode()? != AuthMode::OAuth2 {
        return Err(ConnectorError::BadRequest(
            "this connector's auth is not oauth2; it serves no token endpoint".into(),
        ));
    }
    let client_id = config::require("oauth_client_id")?;
    let secret = config::require("oauth_client_secret")?;
    let ttl = access_ttl()?;
    let given: TokenRequest = serde_json::from_slice(&request.body).map_err(|e| {
        ConnectorError::BadRequest(format!("not a token request (clientId, clientSecret): {e}"))
    })?;
    // Both compared every time, in constant time: no early exit to time.
    let id_ok = signature::constant_time_eq(given.client_id.as_bytes(), client_id.as_bytes());
    let secret_ok = signature::constant_time_eq(given.client_secret.as_bytes(), secret.as_bytes());
    let refresh_ok = verify(&given.client_secret, Kind::Refresh, &secret, now_secs).is_ok();
    if !(id_ok && (secret_ok || refresh_ok)) {
        return Err(ConnectorError::Unauthorized(
            "wrong OAuth client id or secret".into(),
        ));
    }
    let body = serde_json::json!({
        "data": {
            "accessToken": mint(Kind::Access, now_secs + ttl, &secret),
            "refreshToken": mint(Kind::Refresh, now_secs + REFRESH_TTL_SECS, &secret),
            "expiredIn": ttl,
        }
    });
    log::info(if refresh_ok && !secret_ok {
        "OAuth access token issued for a refresh token"
    } else {
        "OAuth access token issued"
    });
    let mut reply = HttpResponse::json(TOKEN_REPLY_STATUS, body.to_string());
    // RFC 6749 §5.1: token replies must not be cached.
    reply
        .headers
        .push(("cache-control".into(), "no-store".into()));
    Ok(WebhookOutcome {
        changes: Vec::new(),
        reply: Some(reply),
    })
}

/// Checks `Authorization: Bearer <access token>` on a webhook.
pub fn verify_bearer(request: &HttpRequest, now_secs: i64) -> Result<(), ConnectorError> {
    let secret = config::require("oauth_client_secret")?;
    let given = request
        .header("authorization")
        .ok_or_else(|| unauthorized("missing Authorization header"))?;
    let (scheme, token) = given
        .trim()
        .split_once(' ')
        .ok_or_else(|| unauthorized("Authorization is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("Authorization scheme is not Bearer"));
    }
    verify(token.trim(), Kind::Access, &secret, now_secs).map_err(unauthorized)
}

/// A token of `kind` valid until `expiry` (Unix seconds).
pub fn mint(kind: Kind, expiry: i64, secret: &str) -> String {
    let mac = signature::hmac_sha256_hex(secret.as_bytes(), signed(kind, expiry).as_bytes());
    format!("{TOKEN_VERSION}.{expiry}.{mac}")
}

/// Checks a token's MAC (constant time) and expiry. The reason is for the log
/// and the sender; it never echoes the token.
pub fn verify(token: &str, kind: Kind, secret: &str, now_secs: i64) -> Result<(), &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("not a token issued by this gateway");
    }
    let mut parts = token.split('.');
    let (Some(version), Some(expiry), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a token issued by this gateway");
    };
    if version != TOKEN_VERSION || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not a token issued by this gateway");
    }
    let expiry: i64 = expiry
        .parse()
        .map_err(|_| "not a token issued by this gateway")?;
    let expected = signature::hmac_sha256(secret.as_bytes(), signed(kind, expiry).as_bytes());
    if !signature::verify_hex(mac, &expected) {
        return Err("token signature does not match (forged, or the secret changed)");
    }
    if expiry <= now_secs {
        return Err("token expired");
    }
    Ok(())
}

fn signed(kind: Kind, expiry: i64) -> String {
    format!("{}:{expiry}", kind.label())
}

/// `oauth_token_ttl_secs`: how long an access token lasts, also sent as `expiredIn`.
fn access_ttl() -> Result<i64, ConnectorError> {
    let text = config::get_or("oauth_token_ttl_secs", &DEFAULT_ACCESS_TTL_SECS.to_string());
    match text.trim().parse::<i64>() {
        Ok(ttl) if (60..=MAX_ACCESS_TTL_SECS).contains(&ttl) => Ok(ttl),
        _ => Err(ConnectorError::Fatal(format!(
            "config `oauth_token_ttl_secs` must be whole seconds from 60 to {MAX_ACCESS_TTL_SECS}"
        ))),
    }
}

fn unauthorized(reason: &str) -> ConnectorError {
    ConnectorError::Unauthorized(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SepayConnector;
    use soundbox_plugin_sdk::testing::TestHost;
    use soundbox_plugin_sdk::{WebhookConnector, time};

    const SAMPLE: &str = include_str!("../../../examples/payloads/sepay-webhook.json");

    fn host() -> TestHost {
        TestHost::new()
            .config("auth", "oauth2")
            .config("oauth_client_id", "shop-1")
            .config("oauth_client_secret", "oauth-s3cret")
    }

    fn token_request(client_id: &str, client_secret: &str) -> HttpRequest {
        HttpRequest::post_json(
            serde_json::json!({ "clientId": client_id, "clientSecret": client_secret }).to_string(),
        )
        .with_query("oauth=token")
    }

    fn run(host: &TestHost, req: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| SepayConnector::handle(req))
    }

    /// `(accessToken, refreshToken, expiredIn)` from a token reply.
    fn tokens(outcome: WebhookOutcome) -> (String, String, i64) {
        assert!(outcome.changes.is_empty());
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains(&("cache-control".into(), "no-store".into()))
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
        let data = &body["data"];
        assert_eq!(data.as_object().expect("data").len(), 3, "{body}");
        (
            data["accessToken"].as_str().expect("access").into(),
            data["refreshToken"].as_str().expect("refresh").into(),
            data["expiredIn"].as_i64().expect("expiredIn"),
        )
    }

    fn webhook(bearer: &str) -> HttpRequest {
        HttpRequest::post_json(SAMPLE).with_header("Authorization", &format!("Bearer {bearer}"))
    }

    #[test]
    fn token_issued_then_the_bearer_is_accepted() {
        let host = host();
        let (access, refresh, expired_in) =
            tokens(run(&host, token_request("shop-1", "oauth-s3cret")).expect("issued"));
        assert_eq!(expired_in, 3600);
        assert!(access.starts_with("v1.") && access.len() <= MAX_TOKEN_BYTES);
        assert_ne!(access, refresh);
        let outcome = run(&host, webhook(&access)).expect("bearer accepted");
        assert_eq!(outcome.changes.len(), 1);
        // Lower-case scheme, as some HTTP stacks write it.
        let lower = HttpRequest::post_json(SAMPLE)
            .with_header("Authorization", &format!("bearer {access}"));
        assert!(run(&host, lower).is_ok());
    }

    #[test]
    fn ttl_is_configurable_and_checked() {
        let (_, _, ttl) = tokens(
            run(
                &host().config("oauth_token_ttl_secs", "600"),
                token_request("shop-1", "oauth-s3cret"),
            )
            .expect("issued"),
        );
        assert_eq!(ttl, 600);
        for bad in ["0", "-5", "abc", "99999999"] {
            let result = run(
                &host().config("oauth_token_ttl_secs", bad),
                token_request("shop-1", "oauth-s3cret"),
            );
            assert!(matches!(result, Err(ConnectorError::Fatal(_))), "{bad}");
        }
    }

    #[test]
    fn wrong_client_credentials_are_401() {
        let host = host();
        for (id, secret) in [
            ("shop-1", "wrong"),
            ("shop-2", "oauth-s3cret"),
            ("", ""),
            ("shop-1", "oauth-s3cret "),
        ] {
            let result = run(&host, token_request(id, secret));
            assert!(
                matches!(&result, Err(ConnectorError::Unauthorized(r)) if r.contains("client")),
                "{id}/{secret}: {result:?}"
            );
        }
        let malformed = run(
            &host,
            HttpRequest::post_json("{\"clientId\":1}").with_query("oauth=token"),
        );
        assert!(matches!(malformed, Err(ConnectorError::BadRequest(_))));
    }

    #[test]
    fn a_refresh_token_stands_in_for_the_secret_but_is_no_bearer() {
        let host = host();
        let (access, refresh, _) =
            tokens(run(&host, token_request("shop-1", "oauth-s3cret")).expect("issued"));
        let (again, _, _) =
            tokens(run(&host, token_request("shop-1", &refresh)).expect("refreshed"));
        assert!(run(&host, webhook(&again)).is_ok());
        assert!(matches!(
            run(&host, webhook(&refresh)),
            Err(ConnectorError::Unauthorized(_))
        ));
        // Nor is an access token a refresh token.
        assert!(matches!(
            run(&host, token_request("shop-1", &access)),
            Err(ConnectorError::Unauthorized(_))
        ));
        let now = time::now_secs();
        let expired_refresh = mint(Kind::Refresh, now - 1, "oauth-s3cret");
        assert!(matches!(
            run(&host, token_request("shop-1", &expired_refresh)),
            Err(ConnectorError::Unauthorized(_))
        ));
    }

    #[test]
    fn expired_forged_and_foreign_bearers_are_refused() {
        let host = host();
        let now = time::now_secs();
        let good = mint(Kind::Access, now + 60, "oauth-s3cret");
        let (_, _, mac) = {
            let mut p = good.splitn(3, '.');
            (p.next(), p.next(), p.next().expect("mac").to_string())
        };
        let cases = [
            ("expired", mint(Kind::Access, now, "oauth-s3cret")),
            (
                "expired long ago",
                mint(Kind::Access, now - 86_400, "oauth-s3cret"),
            ),
            ("other secret", mint(Kind::Access, now + 60, "rotated")),
            // An attacker extends the expiry of a real token.
            ("expiry moved", format!("v1.{}.{mac}", now + 999_999)),
            ("flipped mac", {
                let mut t = good.clone();
                let last = t.pop().expect("char");
                t.push(if last == '0' { '1' } else { '0' });
                t
            }),
            ("made up", "made-up-token".into()),
            ("v2", good.replacen("v1.", "v2.", 1)),
            ("extra part", format!("{good}.x")),
            ("signed expiry", format!("v1.+{}.{mac}", now + 60)),
            ("long", format!("{good}{}", "0".repeat(100))),
            ("empty", String::new()),
        ];
        for (what, token) in cases {
            let result = run(&host, webhook(&token));
            assert!(
                matches!(result, Err(ConnectorError::Unauthorized(_))),
                "{what}: {result:?}"
            );
        }
        assert!(run(&host, webhook(&good)).is_ok());
        for header in [
            None,
            Some(format!("Apikey {good}")),
            Some(good.clone()),
            Some("Bearer".into()),
        ] {
            let mut req = HttpRequest::post_json(SAMPLE);
            if let Some(h) = header {
                req = req.with_header("Authorization", &h);
            }
            assert!(matches!(
                run(&host, req),
                Err(ConnectorError::Unauthorized(_))
            ));
        }
    }

    #[test]
    fn the_token_endpoint_exists_only_in_oauth2_mode() {
        let apikey = TestHost::new().config("api_key", "k3y");
        assert!(matches!(
            run(&apikey, token_request("shop-1", "oauth-s3cret")),
            Err(ConnectorError::BadRequest(_))
        ));
        assert!(matches!(
            run(
                &host(),
                token_request("a", "b").with_query("oauth=authorize")
            ),
            Err(ConnectorError::BadRequest(_))
        ));
        // The client secret alone picks the mode.
        let implied = TestHost::new()
            .config("oauth_client_id", "shop-1")
            .config("oauth_client_secret", "oauth-s3cret");
        assert!(run(&implied, token_request("shop-1", "oauth-s3cret")).is_ok());
        // No client id configured: a config error, not the sender's.
        let no_id = TestHost::new()
            .config("auth", "oauth2")
            .config("oauth_client_secret", "oauth-s3cret");
        assert!(matches!(
            run(&no_id, token_request("shop-1", "oauth-s3cret")),
            Err(ConnectorError::Fatal(_))
        ));
    }

    /// Secrets and MACs are compared only through the SDK's constant-time
    /// helpers: a plain `==` on them would leak, byte by byte, how much of a
    /// guess is right.
    #[test]
    fn constant_time_compare_is_used() {
        let source = include_str!("oauth.rs");
        let code = source.split("#[cfg(test)]").next().expect("code");
        assert!(code.contains("signature::constant_time_eq(given.client_id"));
        assert!(code.contains("signature::constant_time_eq(given.client_secret"));
        assert!(code.contains("signature::verify_hex(mac, &expected)"));
        for line in code.lines().filter(|l| l.contains("==")) {
            assert!(
                !(line.contains("secret") || line.contains("mac") || line.contains("token")),
                "non-constant-time compare: {line}"
            );
        }
        // The pure function agrees: tokens differing in any one place fail.
        let now = time::now_secs();
        let good = mint(Kind::Access, now + 60, "k");
        assert!(verify(&good, Kind::Access, "k", now).is_ok());
        for i in good.len() - 64..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let forged = String::from_utf8(bytes).expect("ascii");
            assert!(verify(&forged, Kind::Access, "k", now).is_err(), "{i}");
        }
    }
}
