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
//! - `max_age_secs`: how old `responseTime` may be (default 86400, one day;
//!   1 to [`MAX_MAX_AGE_SECS`]; `0` is a config error)
//!
//! Replays: MoMo's redirect hands the payer's browser the same signed
//! fields, so a valid signature says nothing about when it was sent. An IPN
//! whose `responseTime` is older than `max_age_secs` is acknowledged with
//! 204 and not recorded ([`MomoConnector`]).

use serde_json::{Map, Value};
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, HttpRequest, HttpResponse, WebhookConnector, WebhookOutcome,
    config, export_webhook_connector, log, signature,
};

/// The dedupe provider: MoMo's own `transId`s.
pub const PROVIDER: &str = "momo";

/// MoMo's IPN page (developers.momo.vn, "Payment Notification") asks for a
/// 204 within 15 s (30 s on another version) and publishes no retry schedule,
/// nor whether a retry keeps its `responseTime`. A day is generous for any
/// re-sent IPN, and the dedupe key stops a replay inside it being announced
/// twice.
pub const DEFAULT_MAX_AGE_SECS: i64 = 86_400;

/// The longest window allowed: a week, well inside the gateway's dedupe
/// window (`log.dedupe_retention_days`, 30 by default). `0` used to turn
/// the window off, which let a captured redirect be replayed once the dedupe
/// key was forgotten; it is now refused.
pub const MAX_MAX_AGE_SECS: i64 = 7 * 24 * 3600;

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
        handle_at(request, soundbox_plugin_sdk::time::now_ms())
    }
}

/// One IPN received at `now_ms` (the gateway's clock). A signed IPN older
/// than `max_age_secs` gets the 204 MoMo expects and is not recorded: it was
/// MoMo's, so a 401 would be untrue, and any other status would only ask
/// MoMo (were it MoMo sending) to retry what can never be accepted. Logged
/// at warn.
pub fn handle_at(request: HttpRequest, now_ms: i64) -> Result<WebhookOutcome, ConnectorError> {
    let settings = Settings::from_config()?;
    let ipn = Ipn::parse(&request.body)?;
    ipn.verify(&settings)?;
    let changes = match ipn.too_old(&settings, now_ms)? {
        Some(why) => {
            log::warn(&format!("MoMo IPN not recorded: {why}"));
            Vec::new()
        }
        None => ipn.to_change(&settings)?.into_iter().collect(),
    };
    Ok(WebhookOutcome {
        changes,
        reply: Some(HttpResponse::empty(204)),
    })
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
        let max_age_secs = match set("max_age_secs") {
            None => DEFAULT_MAX_AGE_SECS,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_MAX_AGE_SECS).contains(n))
                .ok_or_else(|| {
                    ConnectorError::Fatal(format!(
                        "config `max_age_secs` must be whole seconds from 1 to {MAX_MAX_AGE_SECS}, \
                         not `{}` (0 no longer turns the replay window off)",
                        v.trim()
                    ))
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

    /// Checks the signature, then `partnerCode`.
    pub fn verify(&self, settings: &Settings) -> Result<(), ConnectorError> {
        if self.signature.trim().is_empty() {
            return Err(unauthorized("missing `signature`"));
        }
        let raw = self.signed_string(&settings.access_key)?;
        let expected = signature::hmac_sha256(settings.secret_key.as_bytes(), raw.as_bytes());
        if !signature::verify_hex(&self.signature, &expected) {
            return Err(unauthorized("bad signature"));
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

    /// Why the IPN is outside the replay window at `now_ms`, if it is. Only
    /// the past is judged: a replay is always of an old IPN, and a time ahead
    /// of now means this box's clock is behind (the gateway logs that).
    pub fn too_old(
        &self,
        settings: &Settings,
        now_ms: i64,
    ) -> Result<Option<String>, ConnectorError> {
        let response_time: i64 = self
            .text("responseTime")?
            .trim()
            .parse()
            .map_err(|_| bad_request("`responseTime` is not Unix milliseconds"))?;
        let age_ms = now_ms.saturating_sub(response_time);
        Ok((age_ms > settings.max_age_secs.saturating_mul(1000)).then(|| {
            format!(
                "transId {}: responseTime {response_time} is {} s old, more than max_age_secs ({}); a replay?",
                self.text("transId").unwrap_or_default(),
                age_ms / 1000,
                settings.max_age_secs
            )
        }))
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

    /// When the vectors are evaluated: a minute after their `responseTime`.
    const NOW: i64 = SAMPLE_RESPONSE_TIME + 60_000;

    fn host() -> TestHost {
        TestHost::new()
            .config("access_key", "momo-sample-access-key")
            .config("secret_key", "momo-sample-secret-key")
    }

    /// The connector at [`NOW`].
    fn run(host: &TestHost, body: &str) -> Result<WebhookOutcome, ConnectorError> {
        run_at(host, body, NOW)
    }

    fn run_at(host: &TestHost, body: &str, now: i64) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| handle_at(HttpRequest::post_json(body), now))
    }

    /// A paid IPN with `responseTime` `at`, signed here by hand (the raw
    /// string written out, the SDK's HMAC; not this crate's signing code).
    fn fresh(trans_id: u64, at: i64) -> String {
        let raw = format!(
            "accessKey=momo-sample-access-key&amount=42000&extraData=&message=Thành công.\
             &orderId=DH{trans_id}&orderInfo=Thanh toan&orderType=momo_wallet\
             &partnerCode=MOMOSAMPLE2024&payType=qr&requestId=DH{trans_id}\
             &responseTime={at}&resultCode=0&transId={trans_id}"
        );
        let signature = signature::hmac_sha256_hex(b"momo-sample-secret-key", raw.as_bytes());
        serde_json::json!({
            "partnerCode": "MOMOSAMPLE2024", "orderId": format!("DH{trans_id}"),
            "requestId": format!("DH{trans_id}"), "amount": 42000, "orderInfo": "Thanh toan",
            "orderType": "momo_wallet", "transId": trans_id, "resultCode": 0,
            "message": "Thành công.", "payType": "qr", "responseTime": at, "extraData": "",
            "signature": signature,
        })
        .to_string()
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
    fn replay_window_boundaries() {
        let h = host().config("max_age_secs", "300");
        let at = |now: i64| run_at(&h, SAMPLE, now).expect("answered");
        // Just inside (exactly 300 s old), and "from the future" (this box's
        // clock behind): recorded.
        for now in [
            SAMPLE_RESPONSE_TIME + 300_000,
            SAMPLE_RESPONSE_TIME - 3 * 86_400_000,
        ] {
            assert_eq!(at(now).changes.len(), 1, "{now}");
        }
        // Just outside, and 40 days later: 204, nothing recorded.
        for now in [
            SAMPLE_RESPONSE_TIME + 300_001,
            SAMPLE_RESPONSE_TIME + 40 * 86_400_000,
        ] {
            let outcome = at(now);
            assert!(outcome.changes.is_empty(), "{now}");
            assert_eq!(outcome.reply.expect("reply").status, 204);
        }
        // The default window: a day.
        let day = |now: i64| {
            run_at(&host(), SAMPLE, now)
                .expect("answered")
                .changes
                .len()
        };
        assert_eq!(day(SAMPLE_RESPONSE_TIME + 86_400_000), 1);
        assert_eq!(day(SAMPLE_RESPONSE_TIME + 86_400_001), 0);
        // Forged and old: still 401, the signature comes first.
        let tampered = SAMPLE.replace("150000", "950000");
        assert!(is_unauthorized(run_at(
            &host(),
            &tampered,
            SAMPLE_RESPONSE_TIME + 40 * 86_400_000
        )));
    }

    /// The connector as the gateway calls it, on the real clock.
    #[test]
    fn handle_records_a_fresh_ipn_and_not_the_2024_sample() {
        let now = soundbox_plugin_sdk::time::now_ms();
        let outcome = host()
            .run(|| MomoConnector::handle(HttpRequest::post_json(fresh(5_000_001, now - 5_000))))
            .expect("accepted");
        assert_eq!(outcome.changes[0].transaction_id, "5000001");
        assert_eq!(outcome.changes[0].amount, 42_000);
        let (outcome, after) =
            host().run_and_keep(|| MomoConnector::handle(HttpRequest::post_json(SAMPLE)));
        let outcome = outcome.expect("answered");
        assert!(outcome.changes.is_empty());
        assert_eq!(outcome.reply.expect("reply").status, 204);
        assert!(
            after.logs().iter().any(|(_, l)| l.contains("not recorded")
                && l.contains("4014083433")
                && l.contains("max_age_secs (86400)")),
            "{:?}",
            after.logs()
        );
    }

    #[test]
    fn max_age_secs_zero_or_out_of_range_is_fatal() {
        let with = |v: &str| host().config("max_age_secs", v).run(Settings::from_config);
        assert_eq!(with("3600").map(|s| s.max_age_secs).ok(), Some(3600));
        assert_eq!(
            with("604800").map(|s| s.max_age_secs).ok(),
            Some(MAX_MAX_AGE_SECS)
        );
        for bad in ["0", "-1", "604801", "a while"] {
            match with(bad) {
                Err(ConnectorError::Fatal(why)) => {
                    assert!(why.contains("max_age_secs") && why.contains(bad), "{why}")
                }
                other => panic!("`{bad}`: {other:?}"),
            }
        }
        assert_eq!(
            host()
                .run(Settings::from_config)
                .map(|s| s.max_age_secs)
                .ok(),
            Some(DEFAULT_MAX_AGE_SECS)
        );
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
