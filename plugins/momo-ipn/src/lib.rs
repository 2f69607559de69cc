//! MoMo IPN (instant payment notification) → balance changes.
//!
//! MoMo posts one JSON object per payment attempt. Its `signature` is hex
//! HMAC-SHA256(secretKey, `accessKey=…&amount=…&…&transId=…`): thirteen
//! fields in a fixed order, values as received and not URL-encoded. Only
//! `resultCode` 0 is a payment; MoMo expects `204 No Content` either way.
//!
//! Config (`[connector.config]`):
//! - `access_key`, `secret_key`: from MoMo's business portal (required)
//! - `partner_code`: when set, IPNs for another partner code are refused
//! - `account`: the account changes are filed under (default: the partnerCode)
//! - `max_age_secs`: how far `responseTime` may be from now, 0 = no check (default 86400)

use serde_json::{Map, Value};
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, HttpRequest, HttpResponse, WebhookConnector, WebhookOutcome,
    config, export_webhook_connector, log, signature,
};

/// The dedupe provider: MoMo's own `transId`s.
pub const PROVIDER: &str = "momo";

/// MoMo's retry behaviour is not documented; a day is generous for a
/// re-sent IPN, and the dedupe key already stops a replay being announced twice.
const DEFAULT_MAX_AGE_SECS: i64 = 86_400;

/// `extraData` (often base64 JSON) is kept only when this short.
const MAX_EXTRA_DATA_BYTES: usize = 256;

/// The signed fields after `accessKey`, in signing order.
const SIGNED_FIELDS: [&str; 12] = [
    "amount",
    "extraData",
    "message",
    "orderId",
    "orderInfo",
    "orderType",
    "partnerCode",
    "payType",
    "requestId",
    "responseTime",
    "resultCode",
    "transId",
];

/// Fields without which an IPN means nothing.
const REQUIRED_FIELDS: [&str; 7] = [
    "partnerCode",
    "orderId",
    "requestId",
    "amount",
    "transId",
    "resultCode",
    "responseTime",
];

pub struct MomoConnector;

impl WebhookConnector for MomoConnector {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        let settings = Settings::from_config()?;
        let ipn = Ipn::parse(&request.body)?;
        ipn.verify(&settings, soundbox_plugin_sdk::time::now_ms())?;
        Ok(WebhookOutcome {
            changes: ipn.to_change(&settings)?.into_iter().collect(),
            reply: Some(HttpResponse::empty(204)),
        })
    }
}

export_webhook_connector!(MomoConnector);

/// The connector's config, read once per call.
#[derive(Debug)]
pub struct Settings {
    pub access_key: String,
    pub secret_key: String,
    pub partner_code: Option<String>,
    pub account: Option<String>,
    pub max_age_secs: i64,
}

impl Settings {
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let set = |key: &str| config::get(key).filter(|v| !v.trim().is_empty());
        let required = |key: &str| {
            set(key).ok_or_else(|| ConnectorError::Fatal(format!("config `{key}` is not set")))
        };
        let max_age_secs = match config::get("max_age_secs") {
            None => DEFAULT_MAX_AGE_SECS,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ConnectorError::Fatal(
                        "config `max_age_secs` is not a whole number of seconds".into(),
                    )
                })?,
        };
        Ok(Settings {
            access_key: required("access_key")?,
            secret_key: required("secret_key")?,
            partner_code: set("partner_code"),
            account: set("account"),
            max_age_secs,
        })
    }
}

/// An IPN's fields as text, the way they are signed.
#[derive(Debug)]
pub struct Ipn {
    fields: Map<String, Value>,
    signature: String,
}

impl Ipn {
    /// Parses the body: a JSON object with every required field present.
    pub fn parse(body: &[u8]) -> Result<Ipn, ConnectorError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| bad_request(&format!("not a MoMo IPN: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(bad_request("not a MoMo IPN: not a JSON object"));
        };
        let ipn = Ipn {
            signature: String::new(),
            fields,
        };
        for name in REQUIRED_FIELDS {
            if ipn.text(name)?.trim().is_empty() {
                return Err(bad_request(&format!("`{name}` is missing")));
            }
        }
        let signature = ipn.text("signature")?;
        Ok(Ipn { signature, ..ipn })
    }

    /// A field as its text in the body: strings as they are, numbers as
    /// written (`50000`, whether sent as `50000` or `"50000"`), absent or
    /// `null` as empty.
    pub fn text(&self, name: &str) -> Result<String, ConnectorError> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(bad_request(&format!("`{name}` is not a string or number"))),
        }
    }

    /// The exact string MoMo signs.
    pub fn signed_string(&self, access_key: &str) -> Result<String, ConnectorError> {
        let mut raw = format!("accessKey={access_key}");
        for name in SIGNED_FIELDS {
            raw.push('&');
            raw.push_str(name);
            raw.push('=');
            raw.push_str(&self.text(name)?);
        }
        Ok(raw)
    }

    /// Checks the signature, then `responseTime` and `partnerCode`.
    pub fn verify(&self, settings: &Settings, now_ms: i64) -> Result<(), ConnectorError> {
        if self.signature.trim().is_empty() {
            return Err(unauthorized("missing `signature`"));
        }
        let raw = self.signed_string(&settings.access_key)?;
        let expected = signature::hmac_sha256(settings.secret_key.as_bytes(), raw.as_bytes());
        if !signature::verify_hex(&self.signature, &expected) {
            return Err(unauthorized("bad signature"));
        }
        let response_time: i64 = self
            .text("responseTime")?
            .trim()
            .parse()
            .map_err(|_| bad_request("`responseTime` is not Unix milliseconds"))?;
        if settings.max_age_secs > 0
            && now_ms.abs_diff(response_time) > settings.max_age_secs.unsigned_abs() * 1000
        {
            return Err(unauthorized("`responseTime` is too far from now (replay?)"));
        }
        if let Some(expected) = &settings.partner_code {
            let given = self.text("partnerCode")?;
            if given.trim() != expected.trim() {
                return Err(unauthorized(&format!(
                    "partnerCode `{given}` is not the configured one"
                )));
            }
        }
        Ok(())
    }

    /// The payment a verified IPN reports: `None` unless `resultCode` is 0.
    pub fn to_change(&self, settings: &Settings) -> Result<Option<BalanceChange>, ConnectorError> {
        let result_code = self.text("resultCode")?;
        if result_code.trim() != "0" {
            log::info(&format!(
                "MoMo order {} not paid: resultCode {result_code} ({})",
                self.text("orderId")?,
                self.text("message")?
            ));
            return Ok(None);
        }
        let amount = whole_amount(self.fields.get("amount"))
            .filter(|a| *a > 0)
            .ok_or_else(|| bad_request("`amount` is not a positive whole number of VND"))?;
        let partner_code = self.text("partnerCode")?;
        let account = settings.account.clone().unwrap_or(partner_code.clone());
        let non_empty = |s: String| Some(s).filter(|s| !s.trim().is_empty());
        let response_time = self.text("responseTime")?.trim().parse().ok();

        let mut extra = vec![("partnerCode".to_string(), partner_code)];
        for name in ["requestId", "payType", "orderType"] {
            if let Some(v) = non_empty(self.text(name)?) {
                extra.push((name.to_string(), v));
            }
        }
        let extra_data = self.text("extraData")?;
        if !extra_data.is_empty() && extra_data.len() <= MAX_EXTRA_DATA_BYTES {
            extra.push(("extraData".to_string(), extra_data));
        }

        Ok(Some(BalanceChange {
            reference: non_empty(self.text("orderId")?),
            content: non_empty(self.text("orderInfo")?),
            occurred_at_ms: response_time,
            extra,
            ..BalanceChange::incoming(PROVIDER, self.text("transId")?.trim(), &account, amount)
        }))
    }
}

/// `amount` as whole VND, from a number or a numeric string.
fn whole_amount(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            // Up to 2^53 a float holds every whole number exactly.
            (f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&f)).then_some(f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn bad_request(reason: &str) -> ConnectorError {
    ConnectorError::BadRequest(reason.into())
}

fn unauthorized(reason: &str) -> ConnectorError {
    ConnectorError::Unauthorized(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::Direction;
    use soundbox_plugin_sdk::testing::TestHost;

    /// Signed with access key `momo-sample-access-key` and secret key
    /// `momo-sample-secret-key`; the signature was computed with Python's
    /// `hmac.new(secret, raw, hashlib.sha256).hexdigest()` over the raw string
    /// in [`SAMPLE_RAW`].
    const SAMPLE: &str = include_str!("../../../examples/payloads/momo-ipn.json");
    const SAMPLE_RAW: &str = "accessKey=momo-sample-access-key&amount=150000&extraData=&message=Thành công.&orderId=DH1024-1712108682648&orderInfo=Thanh toan don hang DH1024&orderType=momo_wallet&partnerCode=MOMOSAMPLE2024&payType=qr&requestId=DH1024-1712108682648&responseTime=1712108811069&resultCode=0&transId=4014083433";
    const SAMPLE_SIGNATURE: &str =
        "5db72a9a0602a5739131da79d88daeff608c5d547369734c502b242cfc34fb95";
    const SAMPLE_RESPONSE_TIME: i64 = 1_712_108_811_069;

    /// A refused payment (resultCode 1006), signed the same way (Python
    /// `hmac`, same keys) over `accessKey=momo-sample-access-key&amount=150000&
    /// extraData=&message=Giao dịch bị từ chối bởi người dùng.&orderId=DH1025-1712108700000&
    /// orderInfo=Thanh toan don hang DH1025&orderType=momo_wallet&partnerCode=MOMOSAMPLE2024&
    /// payType=qr&requestId=DH1025-1712108700000&responseTime=1712108811069&resultCode=1006&
    /// transId=4014083434` (without the line breaks).
    const REFUSED: &str = r#"{"partnerCode":"MOMOSAMPLE2024","orderId":"DH1025-1712108700000","requestId":"DH1025-1712108700000","amount":150000,"orderInfo":"Thanh toan don hang DH1025","orderType":"momo_wallet","transId":4014083434,"resultCode":1006,"message":"Giao dịch bị từ chối bởi người dùng.","payType":"qr","responseTime":1712108811069,"extraData":"","signature":"3214fe19a74a1eef554161efeea69d3229efeefcdc065a1b2330c55f6fbebc0a"}"#;

    fn host() -> TestHost {
        // The vectors are old: no replay window unless a test sets one.
        TestHost::new()
            .config("access_key", "momo-sample-access-key")
            .config("secret_key", "momo-sample-secret-key")
            .config("max_age_secs", "0")
    }

    fn run(host: &TestHost, body: &str) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| MomoConnector::handle(HttpRequest::post_json(body)))
    }

    fn is_unauthorized(result: Result<WebhookOutcome, ConnectorError>) -> bool {
        matches!(result, Err(ConnectorError::Unauthorized(_)))
    }

    #[test]
    fn signed_string_matches_the_independent_vector() {
        let ipn = Ipn::parse(SAMPLE.as_bytes()).expect("parses");
        assert_eq!(
            ipn.signed_string("momo-sample-access-key").expect("raw"),
            SAMPLE_RAW
        );
        assert!(SAMPLE.contains(SAMPLE_SIGNATURE));
    }

    #[test]
    fn sample_is_a_payment_and_replies_204() {
        let outcome = run(&host(), SAMPLE).expect("accepted");
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 204);
        assert!(reply.body.is_empty());
        let [change] = outcome.changes.as_slice() else {
            panic!("one change: {:?}", outcome.changes);
        };
        assert_eq!(change.provider, "momo");
        assert_eq!(change.transaction_id, "4014083433");
        assert_eq!(change.account, "MOMOSAMPLE2024");
        assert_eq!(change.amount, 150_000);
        assert_eq!(change.direction, Direction::Incoming);
        assert_eq!(change.reference.as_deref(), Some("DH1024-1712108682648"));
        assert_eq!(
            change.content.as_deref(),
            Some("Thanh toan don hang DH1024")
        );
        assert_eq!(change.occurred_at_ms, Some(SAMPLE_RESPONSE_TIME));
        for kv in [
            ("requestId", "DH1024-1712108682648"),
            ("payType", "qr"),
            ("orderType", "momo_wallet"),
        ] {
            assert!(change.extra.contains(&(kv.0.into(), kv.1.into())), "{kv:?}");
        }
        assert!(!change.extra.iter().any(|(k, _)| k == "extraData"), "empty");

        let outcome = run(&host().config("account", "shop-1"), SAMPLE).expect("accepted");
        assert_eq!(outcome.changes[0].account, "shop-1");
    }

    #[test]
    fn numbers_sent_as_strings_sign_the_same() {
        let body = SAMPLE
            .replace("150000,", "\"150000\",")
            .replace("4014083433,", "\"4014083433\",")
            .replace("1712108811069,", "\"1712108811069\",")
            .replace("\"resultCode\": 0,", "\"resultCode\": \"0\",");
        assert_ne!(body, SAMPLE);
        let outcome = run(&host(), &body).expect("accepted");
        assert_eq!(outcome.changes[0].amount, 150_000);
        assert_eq!(outcome.changes[0].transaction_id, "4014083433");
    }

    #[test]
    fn tampered_and_wrong_keys_are_unauthorized() {
        let tampered = SAMPLE.replace("150000", "950000");
        assert!(is_unauthorized(run(&host(), &tampered)));
        let wrong_secret = host().config("secret_key", "other");
        assert!(is_unauthorized(run(&wrong_secret, SAMPLE)));
        let wrong_access = host().config("access_key", "other");
        assert!(is_unauthorized(run(&wrong_access, SAMPLE)));
        let no_signature = SAMPLE.replace(SAMPLE_SIGNATURE, "");
        assert!(is_unauthorized(run(&host(), &no_signature)));
        let garbage = SAMPLE.replace(SAMPLE_SIGNATURE, "not-hex");
        assert!(is_unauthorized(run(&host(), &garbage)));
        // Hex case does not matter.
        let upper = SAMPLE.replace(SAMPLE_SIGNATURE, &SAMPLE_SIGNATURE.to_uppercase());
        assert!(run(&host(), &upper).is_ok());
    }

    #[test]
    fn replayed_response_time_is_rejected() {
        let host = host().config("max_age_secs", "300");
        let settings = host.run(Settings::from_config).expect("settings");
        let ipn = Ipn::parse(SAMPLE.as_bytes()).expect("parses");
        assert!(
            ipn.verify(&settings, SAMPLE_RESPONSE_TIME + 299_000)
                .is_ok()
        );
        assert!(
            ipn.verify(&settings, SAMPLE_RESPONSE_TIME - 299_000)
                .is_ok()
        );
        for now in [
            SAMPLE_RESPONSE_TIME + 301_000,
            SAMPLE_RESPONSE_TIME - 301_000,
        ] {
            assert!(matches!(
                ipn.verify(&settings, now),
                Err(ConnectorError::Unauthorized(_))
            ));
        }
        // The default window (a day) rejects the 2024 sample today.
        let default = TestHost::new()
            .config("access_key", "momo-sample-access-key")
            .config("secret_key", "momo-sample-secret-key");
        assert!(is_unauthorized(run(&default, SAMPLE)));
    }

    #[test]
    fn partner_code_is_checked_when_configured() {
        assert!(run(&host().config("partner_code", "MOMOSAMPLE2024"), SAMPLE).is_ok());
        assert!(is_unauthorized(run(
            &host().config("partner_code", "MOMOOTHER"),
            SAMPLE
        )));
    }

    #[test]
    fn unpaid_result_codes_are_acknowledged_without_a_change() {
        let outcome = run(&host(), REFUSED).expect("accepted");
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.reply.expect("reply").status, 204);
        // Still signed: a forged failure is refused like any forgery.
        let forged = REFUSED.replace("1006", "1005");
        assert!(is_unauthorized(run(&host(), &forged)));
    }

    #[test]
    fn long_extra_data_is_not_kept() {
        let settings = host().run(Settings::from_config).expect("settings");
        let with = |extra: &str| {
            let body = SAMPLE.replace(
                "\"extraData\": \"\"",
                &format!("\"extraData\": \"{extra}\""),
            );
            let ipn = Ipn::parse(body.as_bytes()).expect("parses");
            ipn.to_change(&settings)
                .expect("change")
                .expect("paid")
                .extra
        };
        assert!(with("eyJhIjoxfQ==").contains(&("extraData".into(), "eyJhIjoxfQ==".into())));
        assert!(!with(&"x".repeat(300)).iter().any(|(k, _)| k == "extraData"));
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let settings = host().run(Settings::from_config).expect("settings");
        for body in [
            "",
            "{",
            "[]",
            "\"x\"",
            r#"{"partnerCode":"P"}"#,
            &SAMPLE.replace("\"transId\": 4014083433", "\"transId\": \"\""),
            &SAMPLE.replace("\"orderType\": \"momo_wallet\"", "\"orderType\": [1]"),
        ] {
            assert!(
                matches!(run(&host(), body), Err(ConnectorError::BadRequest(_))),
                "{body}"
            );
        }
        // A paid IPN whose amount is not whole VND (checked once signed).
        for amount in ["0", "-5", "1.5", "\"abc\""] {
            let body = SAMPLE.replace("150000", amount);
            let ipn = Ipn::parse(body.as_bytes()).expect("parses");
            assert!(
                matches!(ipn.to_change(&settings), Err(ConnectorError::BadRequest(_))),
                "{amount}"
            );
        }
    }

    #[test]
    fn config_mistakes_are_fatal() {
        let fatal = |h: TestHost| matches!(run(&h, SAMPLE), Err(ConnectorError::Fatal(_)));
        assert!(fatal(TestHost::new()));
        assert!(fatal(
            TestHost::new().config("access_key", "momo-sample-access-key")
        ));
        assert!(fatal(host().config("secret_key", "")));
        assert!(fatal(host().config("max_age_secs", "a while")));
    }
}
