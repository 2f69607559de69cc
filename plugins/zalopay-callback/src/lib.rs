//! ZaloPay payment callbacks → balance changes.
//!
//! ZaloPay POSTs `{"data": "<JSON text>", "mac": "<hex>", "type": 1}` once a
//! payment has succeeded (it sends no callback for a failed one). `mac` is
//! hex HMAC-SHA256(key2, `data`), where `data` is the string value after the
//! outer JSON is parsed (its escapes undone), which is what ZaloPay's own
//! samples sign: they parse the body and HMAC the `data` field.
//!
//! ZaloPay reads the JSON reply, not the HTTP status, so every answer this
//! plugin gives is HTTP 200 with a `return_code`: `1` accepted (also for a
//! callback that is valid but carries no payment), `-1` refused for good (bad
//! mac, malformed, wrong app, a replay), `0` "call again" when the mac is
//! valid but the gateway's clock cannot be trusted to judge `server_time`.
//!
//! Which code makes ZaloPay call again follows ZaloPay's official callback
//! sample (docs.zalopay.vn, "callback" sample code: `return_code = 0 //
//! ZaloPay server sẽ callback lại (tối đa 3 lần)`, i.e. up to 3 more calls).
//! Nothing ZaloPay publishes says it calls again after an HTTP 5xx; its order
//! query page counts "Merchant Service Unavailable" among the ways a callback
//! is *missed*. So a clock problem is answered 200 + `0`, and the gateway is
//! told of the failure through [`FAULT_HEADER`] (counted on `/readyz`, never
//! sent to ZaloPay).
//!
//! Config (`[connector.config]`):
//! - `key2`: ZaloPay's callback key (required)
//! - `app_id`: when set, callbacks for another app are refused
//! - `account`: the account the payments are credited to (default: the `app_id` in the callback)
//! - `max_age_secs`: how far `server_time` may be from now (default 3600; `0` turns the check off)
//! - `max_clock_error_secs`: how far in the past a signed `server_time` is
//!   still put down to a wrong clock (answered `0`) rather than a replay
//!   (answered `-1`) (default 86400)

use serde::Deserialize;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, HttpRequest, HttpResponse, WebhookConnector, WebhookOutcome,
    config, export_webhook_connector, log, signature,
};

/// The dedupe provider: the transaction id is ZaloPay's `zp_trans_id`.
pub const PROVIDER: &str = "zalopay";

/// Default replay window. A replay inside it is absorbed by the gateway's
/// dedupe (30 days by default), so it only has to stay well below that while
/// leaving room for ZaloPay's retries and a clock that is somewhat off.
pub const DEFAULT_MAX_AGE_SECS: u64 = 3600;

/// Default for `max_clock_error_secs`. Assumption, easy to change: a clock
/// running *ahead* by more than a day is rarer than an old capture being
/// replayed. A `server_time` in the gateway's future is always put down to
/// the clock (a replay is never newer than the payment), however far.
pub const DEFAULT_MAX_CLOCK_ERROR_SECS: u64 = 86_400;

/// Reply header the gateway takes out and counts as this call's failure
/// (the gateway's `FAULT_HEADER`): how a 200 "call again" still shows on
/// `/readyz`.
pub const FAULT_HEADER: &str = "x-soundbox-connector-fault";

/// Longest `item` / `embed_data` copied into `extra` (ZaloPay caps them at
/// 2048 and 1024 characters); keeps the change under the gateway's 8 KiB
/// limit for `extra`.
const MAX_EXTRA_VALUE: usize = 2048;

/// The outer document ZaloPay posts.
#[derive(Debug, Deserialize)]
struct Envelope {
    data: String,
    mac: String,
    /// 1 = order (a payment), 2 = agreement (a wallet binding). Older
    /// callbacks have no `type`. Not covered by `mac`.
    #[serde(default, rename = "type")]
    kind: Option<i64>,
}

/// An id ZaloPay documents as a number; a string is accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(u64),
    Text(String),
}

impl Id {
    fn text(&self) -> String {
        match self {
            Id::Number(n) => n.to_string(),
            Id::Text(s) => s.trim().to_string(),
        }
    }
}

/// The `data` of an order callback, as documented.
#[derive(Debug, Deserialize)]
pub struct CallbackData {
    pub app_id: Id,
    pub app_trans_id: String,
    pub app_user: Option<String>,
    pub amount: u64,
    pub embed_data: Option<serde_json::Value>,
    pub item: Option<serde_json::Value>,
    pub zp_trans_id: Id,
    /// When ZaloPay took the payment, Unix milliseconds.
    pub server_time: i64,
    pub channel: Option<i64>,
    pub merchant_user_id: Option<String>,
    pub user_fee_amount: Option<i64>,
    pub discount_amount: Option<i64>,
}

/// The connector's settings, read once per call. No `Debug`: it holds the key.
#[derive(Clone)]
pub struct Settings {
    pub key2: String,
    pub app_id: Option<String>,
    pub account: Option<String>,
    /// 0: no check.
    pub max_age_secs: u64,
    pub max_clock_error_secs: u64,
}

impl Settings {
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let seconds = |key: &str, default: u64| match config::get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                ConnectorError::Fatal(format!(
                    "config `{key}` is `{v}`; expected a whole number of seconds"
                ))
            }),
        };
        let max_age_secs = seconds("max_age_secs", DEFAULT_MAX_AGE_SECS)?;
        let max_clock_error_secs = seconds("max_clock_error_secs", DEFAULT_MAX_CLOCK_ERROR_SECS)?;
        let non_empty = |key: &str| {
            config::get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Ok(Settings {
            key2: config::require("key2")?,
            app_id: non_empty("app_id"),
            account: non_empty("account"),
            max_age_secs,
            max_clock_error_secs,
        })
    }
}

/// What a callback comes to.
#[derive(Debug)]
pub enum Verdict {
    /// A payment: store it, then answer `return_code: 1`.
    Paid(BalanceChange),
    /// Genuine but nothing to store (e.g. an agreement callback): `1`, no change.
    Ignored(String),
    /// Refused for good: `-1` with this message, no change.
    Refused(String),
    /// Genuine, but `server_time` is so far from the gateway's clock that the
    /// clock is the likelier culprit: `0` (ZaloPay calls again), no change,
    /// and this reason reported to the gateway as a failure.
    ClockOff(String),
}

pub struct ZaloPayConnector;

impl WebhookConnector for ZaloPayConnector {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        let settings = Settings::from_config()?;
        let now_ms = soundbox_plugin_sdk::time::now_ms();
        Ok(outcome(evaluate(&request.body, &settings, now_ms)))
    }
}

export_webhook_connector!(ZaloPayConnector);

/// What the gateway stores and sends for a verdict.
pub fn outcome(verdict: Verdict) -> WebhookOutcome {
    let (changes, reply) = match verdict {
        Verdict::Paid(change) => (vec![change], reply(1, "success")),
        Verdict::Ignored(why) => {
            log::info(&format!("callback acknowledged without a payment: {why}"));
            (Vec::new(), reply(1, "success"))
        }
        Verdict::Refused(why) => {
            // The gateway logs nothing for a 200, so say it here.
            log::warn(&format!("callback refused (return_code -1): {why}"));
            (Vec::new(), reply(-1, &why))
        }
        Verdict::ClockOff(why) => {
            log::warn(&format!(
                "callback not judged, ZaloPay asked to call again (return_code 0): {why}"
            ));
            (Vec::new(), retry_reply(&why))
        }
    };
    WebhookOutcome {
        changes,
        reply: Some(reply),
    }
}

/// ZaloPay's reply document.
pub fn reply(return_code: i32, message: &str) -> HttpResponse {
    let body = serde_json::json!({ "return_code": return_code, "return_message": message });
    HttpResponse::json(200, body.to_string())
}

/// `return_code: 0` ("call again"), with `why` for the gateway's health in
/// [`FAULT_HEADER`]; ZaloPay gets a generic message.
pub fn retry_reply(why: &str) -> HttpResponse {
    let mut reply = reply(0, "merchant clock out of sync; call again");
    reply.headers.push((FAULT_HEADER.into(), why.into()));
    reply
}

/// A duration for people: minutes under 90, hours under two days, else days.
fn roughly(secs: u64) -> String {
    match secs {
        s if s < 5_400 => format!("{} min", s.div_ceil(60)),
        s if s < 172_800 => format!("{} h", (s + 1_800) / 3_600),
        s => format!("{} days", (s + 43_200) / 86_400),
    }
}

/// Judges `server_time` against the gateway's clock.
///
/// Why a time check at all, with a valid mac: a captured callback (a proxy's
/// or a log's copy; the payer never sees the signed `data`, ZaloPay's
/// redirect carries a different checksum) replayed after the gateway's dedupe
/// retention (30 days) has forgotten `zp_trans_id` would be announced again.
/// Inside the retention the dedupe absorbs any replay, so the window only has
/// to be well inside it; an hour also covers ZaloPay's few retries.
///
/// Outside the window, a signed callback from the gateway's *future* can only
/// mean a wrong clock (typically a Pi after a power cut, before NTP), and one
/// from the past within `max_clock_error_secs` most likely does too: those get
/// "call again" and a visible fault instead of a lost payment. Older ones are
/// refused as replays.
fn judge_time(server_time_ms: i64, settings: &Settings, now_ms: i64) -> Option<Verdict> {
    if settings.max_age_secs == 0 {
        return None;
    }
    let ahead_ms = server_time_ms.saturating_sub(now_ms);
    let off_secs = (ahead_ms / 1000).unsigned_abs();
    if off_secs <= settings.max_age_secs {
        return None;
    }
    if ahead_ms > 0 {
        return Some(Verdict::ClockOff(format!(
            "gateway clock is {} behind ZaloPay's (callback server_time); check NTP",
            roughly(off_secs)
        )));
    }
    if off_secs <= settings.max_clock_error_secs {
        return Some(Verdict::ClockOff(format!(
            "gateway clock is {} ahead of ZaloPay's (callback server_time), or a replay; check NTP",
            roughly(off_secs)
        )));
    }
    Some(Verdict::Refused(format!(
        "server_time is {off_secs} s before now, more than max_age_secs {} (a replay)",
        settings.max_age_secs
    )))
}

/// Verifies and parses one callback body at `now_ms`.
pub fn evaluate(body: &[u8], settings: &Settings, now_ms: i64) -> Verdict {
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            return Verdict::Refused(format!(
                "not a ZaloPay callback (expected JSON with string `data` and `mac`): {e}"
            ));
        }
    };
    let expected = signature::hmac_sha256(settings.key2.as_bytes(), envelope.data.as_bytes());
    if !signature::verify_hex(&envelope.mac, &expected) {
        return Verdict::Refused("mac not equal".into());
    }
    if let Some(kind) = envelope.kind.filter(|k| *k != 1) {
        return Verdict::Ignored(format!("callback type {kind} is not an order payment"));
    }
    let data: CallbackData = match serde_json::from_str(&envelope.data) {
        Ok(d) => d,
        Err(e) => return Verdict::Refused(format!("callback `data` is not an order: {e}")),
    };
    let app_id = data.app_id.text();
    if let Some(wanted) = &settings.app_id
        && *wanted != app_id
    {
        return Verdict::Refused(format!(
            "app_id {app_id} is not the configured app_id {wanted}"
        ));
    }
    if let Some(verdict) = judge_time(data.server_time, settings, now_ms) {
        return verdict;
    }
    let transaction_id = data.zp_trans_id.text();
    if transaction_id.is_empty() {
        return Verdict::Refused("zp_trans_id is empty".into());
    }
    if data.amount == 0 {
        return Verdict::Ignored(format!("zp_trans_id {transaction_id} has amount 0"));
    }
    let account = settings.account.clone().unwrap_or_else(|| app_id.clone());
    if account.is_empty() {
        return Verdict::Refused("app_id is empty and no `account` is configured".into());
    }
    Verdict::Paid(to_change(data, transaction_id, account, app_id))
}

fn to_change(
    data: CallbackData,
    transaction_id: String,
    account: String,
    app_id: String,
) -> BalanceChange {
    let mut extra = vec![("app_id".to_string(), app_id)];
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty() && v.len() <= MAX_EXTRA_VALUE) {
            extra.push((k.to_string(), v));
        }
    };
    keep("app_user", data.app_user);
    keep("channel", data.channel.map(|c| c.to_string()));
    keep("merchant_user_id", data.merchant_user_id);
    keep(
        "user_fee_amount",
        data.user_fee_amount
            .filter(|a| *a != 0)
            .map(|a| a.to_string()),
    );
    keep(
        "discount_amount",
        data.discount_amount
            .filter(|a| *a != 0)
            .map(|a| a.to_string()),
    );
    // Merchant-defined JSON, kept verbatim for whoever matches orders.
    keep(
        "embed_data",
        json_text(data.embed_data).filter(|t| t != "{}"),
    );
    keep("item", json_text(data.item).filter(|t| t != "[]"));
    BalanceChange {
        // ZaloPay caps app_trans_id at 40 characters; the gateway at 256 bytes.
        reference: Some(data.app_trans_id).filter(|r| !r.trim().is_empty() && r.len() <= 256),
        // ZaloPay's callback has no payer memo (the order's `description` is
        // not sent back); `item` and `embed_data` are in `extra`.
        content: None,
        occurred_at_ms: Some(data.server_time),
        extra,
        ..BalanceChange::incoming(PROVIDER, &transaction_id, &account, data.amount)
    }
}

/// A documented "JSON string" field as text: the string itself, or compact
/// JSON should ZaloPay ever send it unquoted.
fn json_text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;

    const SAMPLE: &str = include_str!("../../../examples/payloads/zalopay-callback.json");
    const KEY2: &str = "zalopay-test-key2";
    /// The sample's `server_time` (2024-07-25 14:02:37 +07:00).
    const SAMPLE_TIME_MS: i64 = 1_721_890_957_000;

    fn settings() -> Settings {
        Settings {
            key2: KEY2.into(),
            app_id: None,
            account: None,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            max_clock_error_secs: DEFAULT_MAX_CLOCK_ERROR_SECS,
        }
    }

    fn clock_off(verdict: Verdict) -> String {
        match verdict {
            Verdict::ClockOff(why) => why,
            other => panic!("expected a clock problem, got {other:?}"),
        }
    }

    fn paid(verdict: Verdict) -> BalanceChange {
        match verdict {
            Verdict::Paid(change) => change,
            other => panic!("expected a payment, got {other:?}"),
        }
    }

    fn refused(verdict: Verdict) -> String {
        match verdict {
            Verdict::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // The sample's mac, computed independently of this crate with Python:
    //   d = json.load(open("examples/payloads/zalopay-callback.json"))
    //   hmac.new(b"zalopay-test-key2", d["data"].encode(), hashlib.sha256).hexdigest()
    // (`json.load` undoes the outer escapes, as ZaloPay's samples do.)
    const SAMPLE_MAC: &str = "e3baa13e4b3e3c34ac3c2ef40918dd1e33ee9a7720f442a6f0838abf6dd7ceba";
    // What a wrong reading of the scheme gives: the same HMAC over the `data`
    // literal as it stands in the body, escapes and all (Python:
    //   json.dumps(d["data"], ensure_ascii=False)[1:-1]).
    const ESCAPED_LITERAL_MAC: &str =
        "e4fc11d90b317bc74aeb0c094ff55aae63e0b12c2d4abc26f142778d0b31a764";

    #[test]
    fn sample_is_signed_with_the_test_key() {
        let envelope: Envelope = serde_json::from_str(SAMPLE).expect("sample parses");
        assert_eq!(envelope.mac, SAMPLE_MAC);
        let expected = signature::hmac_sha256(KEY2.as_bytes(), envelope.data.as_bytes());
        assert!(signature::verify_hex(SAMPLE_MAC, &expected));
    }

    #[test]
    fn valid_sample_is_a_payment() {
        let change = paid(evaluate(
            SAMPLE.as_bytes(),
            &settings(),
            SAMPLE_TIME_MS + 5_000,
        ));
        assert_eq!(change.provider, "zalopay");
        assert_eq!(change.transaction_id, "240725000000123");
        assert_eq!(change.account, "2553");
        assert_eq!(change.amount, 150_000);
        assert_eq!(
            change.reference.as_deref(),
            Some("240725_2553_1721890920000")
        );
        assert_eq!(change.content, None);
        assert_eq!(change.occurred_at_ms, Some(SAMPLE_TIME_MS));
        assert!(change.extra.contains(&("channel".into(), "38".into())));
        assert!(
            change
                .extra
                .contains(&("app_user".into(), "shop-demo".into()))
        );
        assert!(
            change
                .extra
                .iter()
                .any(|(k, v)| k == "embed_data" && v.contains("bàn 5"))
        );
    }

    /// The whole connector: config, reply document, stored change.
    #[test]
    fn handle_replies_success_or_mac_not_equal() {
        let host = TestHost::new()
            .config("key2", KEY2)
            .config("max_age_secs", "0");
        let outcome = host
            .run(|| ZaloPayConnector::handle(HttpRequest::post_json(SAMPLE)))
            .expect("handled");
        assert_eq!(outcome.changes.len(), 1);
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 200);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reply.body).expect("json"),
            serde_json::json!({"return_code": 1, "return_message": "success"})
        );

        let wrong = TestHost::new()
            .config("key2", "another-key")
            .config("max_age_secs", "0");
        let outcome = wrong
            .run(|| ZaloPayConnector::handle(HttpRequest::post_json(SAMPLE)))
            .expect("handled");
        assert!(outcome.changes.is_empty());
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 200);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reply.body).expect("json"),
            serde_json::json!({"return_code": -1, "return_message": "mac not equal"})
        );
    }

    #[test]
    fn tampered_data_and_wrong_key_are_refused() {
        let tampered = SAMPLE.replace(r#"\"amount\":150000"#, r#"\"amount\":950000"#);
        assert_ne!(tampered, SAMPLE);
        let now = SAMPLE_TIME_MS;
        assert_eq!(
            refused(evaluate(tampered.as_bytes(), &settings(), now)),
            "mac not equal"
        );
        let other_key = Settings {
            key2: "zalopay-other-key2".into(),
            ..settings()
        };
        assert_eq!(
            refused(evaluate(SAMPLE.as_bytes(), &other_key, now)),
            "mac not equal"
        );
        // A mac over the `data` literal as it stands in the body is not the scheme.
        let literal = SAMPLE.replace(SAMPLE_MAC, ESCAPED_LITERAL_MAC);
        assert_eq!(
            refused(evaluate(literal.as_bytes(), &settings(), now)),
            "mac not equal"
        );
    }

    #[test]
    fn mac_covers_data_after_the_outer_escapes_are_undone() {
        // The same callback with `à` written as `\u00e0` in the outer JSON:
        // a different body, the same `data` string, so the same mac.
        let escaped = SAMPLE.replace('à', "\\u00e0");
        assert_ne!(escaped, SAMPLE);
        let change = paid(evaluate(escaped.as_bytes(), &settings(), SAMPLE_TIME_MS));
        assert!(
            change
                .extra
                .iter()
                .any(|(k, v)| k == "embed_data" && v.contains("bàn 5"))
        );
    }

    #[test]
    fn mac_is_compared_in_either_case() {
        let upper = SAMPLE.replace(SAMPLE_MAC, &SAMPLE_MAC.to_uppercase());
        paid(evaluate(upper.as_bytes(), &settings(), SAMPLE_TIME_MS));
    }

    #[test]
    fn server_time_outside_the_window_is_a_clock_problem_or_a_replay() {
        let s = settings();
        let window_ms = DEFAULT_MAX_AGE_SECS as i64 * 1000;
        paid(evaluate(SAMPLE.as_bytes(), &s, SAMPLE_TIME_MS + window_ms));
        paid(evaluate(SAMPLE.as_bytes(), &s, SAMPLE_TIME_MS - window_ms));
        // Our clock behind ZaloPay's: always the clock, however far (a Pi
        // that booted in 1970 included).
        let behind = clock_off(evaluate(
            SAMPLE.as_bytes(),
            &s,
            SAMPLE_TIME_MS - window_ms - 1_000,
        ));
        assert!(
            behind.contains("behind") && behind.contains("NTP"),
            "{behind}"
        );
        let epoch = clock_off(evaluate(SAMPLE.as_bytes(), &s, 0));
        assert!(epoch.contains("days behind"), "{epoch}");
        // Our clock ahead by up to max_clock_error_secs: the clock too.
        let ahead = clock_off(evaluate(
            SAMPLE.as_bytes(),
            &s,
            SAMPLE_TIME_MS + window_ms + 1_000,
        ));
        assert!(ahead.contains("ahead"), "{ahead}");
        // Older than that: a replay, refused for good.
        let old = refused(evaluate(
            SAMPLE.as_bytes(),
            &s,
            SAMPLE_TIME_MS + (DEFAULT_MAX_CLOCK_ERROR_SECS as i64 + 1) * 1000,
        ));
        assert!(old.contains("replay"), "{old}");
        // 0 turns the check off: a callback from years later still verifies.
        let off = Settings {
            max_age_secs: 0,
            ..settings()
        };
        paid(evaluate(
            SAMPLE.as_bytes(),
            &off,
            SAMPLE_TIME_MS + 10 * 365 * 86_400_000,
        ));
        // A bad mac with a wrong clock is still a bad mac.
        let tampered = SAMPLE.replace(r#"\"amount\":150000"#, r#"\"amount\":950000"#);
        assert_eq!(
            refused(evaluate(
                tampered.as_bytes(),
                &s,
                SAMPLE_TIME_MS - 7_200_000
            )),
            "mac not equal"
        );
    }

    /// The issue's case: the sample (mac computed with Python's `hmac`, see
    /// SAMPLE_MAC) reaching a gateway whose clock is 2 h behind, and 2 h ahead.
    #[test]
    fn clock_two_hours_off_is_answered_call_again_and_reported() {
        for (now, word) in [
            (SAMPLE_TIME_MS - 7_200_000, "2 h behind"),
            (SAMPLE_TIME_MS + 7_200_000, "2 h ahead"),
        ] {
            let outcome = outcome(evaluate(SAMPLE.as_bytes(), &settings(), now));
            assert!(outcome.changes.is_empty(), "nothing stored");
            let reply = outcome.reply.expect("reply");
            assert_eq!(
                reply.status, 200,
                "ZaloPay reads return_code, not the status"
            );
            let body: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
            assert_eq!(body["return_code"], 0, "0 = ZaloPay calls again: {body}");
            let fault = reply
                .headers
                .iter()
                .find(|(k, _)| k == FAULT_HEADER)
                .map(|(_, v)| v.as_str())
                .expect("the gateway is told");
            assert!(
                fault.contains(word) && fault.contains("clock") && fault.contains("NTP"),
                "{fault}"
            );
        }
        // A valid callback names no fault.
        let fine = outcome(evaluate(SAMPLE.as_bytes(), &settings(), SAMPLE_TIME_MS));
        assert!(
            fine.reply
                .expect("reply")
                .headers
                .iter()
                .all(|(k, _)| k != FAULT_HEADER)
        );
    }

    #[test]
    fn app_id_and_account_config() {
        let other_app = Settings {
            app_id: Some("9999".into()),
            ..settings()
        };
        let why = refused(evaluate(SAMPLE.as_bytes(), &other_app, SAMPLE_TIME_MS));
        assert!(why.contains("app_id 2553"), "{why}");
        let same_app = Settings {
            app_id: Some("2553".into()),
            account: Some("shop-1".into()),
            ..settings()
        };
        let change = paid(evaluate(SAMPLE.as_bytes(), &same_app, SAMPLE_TIME_MS));
        assert_eq!(change.account, "shop-1");
    }

    /// Signs `data` with the test key as ZaloPay would (for shape tests,
    /// where the mac is not what is under test).
    fn envelope(data: &serde_json::Value, kind: Option<i64>) -> String {
        let data = data.to_string();
        let mac = signature::hmac_sha256_hex(KEY2.as_bytes(), data.as_bytes());
        let mut body = serde_json::json!({ "data": data, "mac": mac });
        if let Some(kind) = kind {
            body["type"] = kind.into();
        }
        body.to_string()
    }

    fn order(amount: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "app_id": 2553, "app_trans_id": "240725_2553_x", "app_time": SAMPLE_TIME_MS,
            "app_user": "u", "amount": amount, "embed_data": "{}", "item": "[]",
            "zp_trans_id": "240725000000999", "server_time": SAMPLE_TIME_MS,
            "channel": 38, "merchant_user_id": "m", "user_fee_amount": 0, "discount_amount": 0
        })
    }

    #[test]
    fn agreement_callbacks_and_zero_amounts_are_acknowledged_without_a_change() {
        let s = settings();
        let agreement = envelope(&serde_json::json!({"binding_id": "b1"}), Some(2));
        assert!(matches!(
            evaluate(agreement.as_bytes(), &s, SAMPLE_TIME_MS),
            Verdict::Ignored(_)
        ));
        let zero = envelope(&order(0.into()), Some(1));
        assert!(matches!(
            evaluate(zero.as_bytes(), &s, SAMPLE_TIME_MS),
            Verdict::Ignored(_)
        ));
        // No `type` at all (older callbacks) is an order; a string zp_trans_id is fine.
        let untyped = envelope(&order(20_000.into()), None);
        let change = paid(evaluate(untyped.as_bytes(), &s, SAMPLE_TIME_MS));
        assert_eq!(change.transaction_id, "240725000000999");
        assert!(
            !change
                .extra
                .iter()
                .any(|(k, _)| k == "item" || k == "embed_data"),
            "empty item/embed_data are not kept: {:?}",
            change.extra
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let s = settings();
        for body in [
            "",
            "{",
            "[]",
            r#"{"data":"{}"}"#,
            r#"{"mac":"00"}"#,
            r#"{"data":{"amount":1},"mac":"00"}"#,
        ] {
            let why = refused(evaluate(body.as_bytes(), &s, SAMPLE_TIME_MS));
            assert!(why.starts_with("not a ZaloPay callback"), "{body}: {why}");
        }
        // Signed, but `data` is not an order: negative amount, missing fields, not JSON.
        for data in [
            order((-5).into()).to_string(),
            r#"{"app_id":2553}"#.to_string(),
            "not json".to_string(),
        ] {
            let mac = signature::hmac_sha256_hex(KEY2.as_bytes(), data.as_bytes());
            let body = serde_json::json!({ "data": data, "mac": mac }).to_string();
            let why = refused(evaluate(body.as_bytes(), &s, SAMPLE_TIME_MS));
            assert!(why.starts_with("callback `data` is not an order"), "{why}");
        }
    }

    #[test]
    fn bad_config_is_fatal() {
        let missing = TestHost::new();
        assert!(matches!(
            missing.run(|| ZaloPayConnector::handle(HttpRequest::post_json(SAMPLE))),
            Err(ConnectorError::Fatal(_))
        ));
        for key in ["max_age_secs", "max_clock_error_secs"] {
            let bad = TestHost::new().config("key2", KEY2).config(key, "an hour");
            assert!(matches!(
                bad.run(|| ZaloPayConnector::handle(HttpRequest::post_json(SAMPLE))),
                Err(ConnectorError::Fatal(_))
            ));
        }
    }
}
