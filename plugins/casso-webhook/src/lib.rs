//! Casso webhook v2 → balance changes.
//!
//! Casso watches a shop's bank accounts and posts one JSON object per bank
//! transaction, `{"error": 0, "data": {...}}`, signed in `X-Casso-Signature:
//! t=<unix ms>,v1=<hex>` with v1 = HMAC-SHA512(key, `t + "." + canonical
//! JSON of the body`) (see [`canonical`]). This plugin checks that, parses the
//! body and answers `{"success": true}`.
//!
//! Config (`[connector.config]`):
//! - `checksum_key`: the integration's "Key bảo mật" (required)
//! - `max_age_secs`: how far `t` may be from now, 0 = no check (default 86400)
//! - `non_ascii`: `raw` | `escape` | `either` (default `either`): how non-ASCII
//!   text is written in the signed JSON
//! - `account_source`: `account` | `virtual` (default `account`)

pub mod canonical;

use canonical::{Dialect, NonAscii, canonical_json};
use serde::Deserialize;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, WebhookConnector,
    WebhookOutcome, config, export_webhook_connector, log, signature, time,
};

/// The dedupe provider: Casso's own transaction ids.
pub const PROVIDER: &str = "casso";

/// Casso retries are undocumented and may re-send the original `t`, so the
/// default window is generous; the dedupe key already stops a replayed
/// transaction from being announced twice.
const DEFAULT_MAX_AGE_SECS: i64 = 86_400;

/// The webhook body.
#[derive(Debug, Deserialize)]
pub struct CassoWebhook {
    /// 0 when all is well; anything else is Casso reporting its own error.
    #[serde(default)]
    pub error: i64,
    pub data: Option<CassoTransaction>,
}

/// One bank transaction, as Casso documents it. Strings may be empty or null.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CassoTransaction {
    /// Casso's transaction id (an integer; 0 in test pings).
    pub id: serde_json::Value,
    pub reference: Option<String>,
    pub description: Option<String>,
    /// Negative for money going out.
    pub amount: serde_json::Number,
    pub running_balance: Option<serde_json::Number>,
    pub transaction_date_time: Option<String>,
    pub account_number: Option<String>,
    pub bank_name: Option<String>,
    pub bank_abbreviation: Option<String>,
    pub virtual_account_number: Option<String>,
    pub virtual_account_name: Option<String>,
    pub counter_account_name: Option<String>,
    pub counter_account_number: Option<String>,
    pub counter_account_bank_id: Option<String>,
    pub counter_account_bank_name: Option<String>,
}

pub struct CassoConnector;

impl WebhookConnector for CassoConnector {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        let settings = Settings::from_config()?;
        if let Some(why) = legacy_integration(&request) {
            // The sender is told too (a 400 passes the reason on).
            log::warn(why);
            return Err(ConnectorError::BadRequest(why.into()));
        }
        verify(&request, &settings, time::now_ms())?;
        let changes = parse(&request.body, settings.account_source)?;
        Ok(WebhookOutcome {
            changes: changes.into_iter().collect(),
            reply: Some(HttpResponse::json(200, r#"{"success":true}"#)),
        })
    }
}

export_webhook_connector!(CassoConnector);

/// Which account number a change is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSource {
    /// The bank account (`accountNumber`).
    Account,
    /// The virtual account (`virtualAccountNumber`) when there is one, e.g. to
    /// route each counter's QR to its own speaker; else `accountNumber`.
    Virtual,
}

/// Which spellings of non-ASCII text a signature may be made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonAsciiMode {
    Raw,
    Escape,
    /// Raw first, then escaped (only tried when the text has non-ASCII).
    Either,
}

/// The connector's config, read once per call.
#[derive(Debug)]
pub struct Settings {
    pub checksum_key: String,
    pub max_age_secs: i64,
    pub non_ascii: NonAsciiMode,
    pub account_source: AccountSource,
}

impl Settings {
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let checksum_key = config::require("checksum_key")?;
        if checksum_key.is_empty() {
            return Err(fatal("config `checksum_key` is empty"));
        }
        let max_age_secs = match config::get("max_age_secs") {
            None => DEFAULT_MAX_AGE_SECS,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| fatal("config `max_age_secs` is not a whole number of seconds"))?,
        };
        let non_ascii = match config::get("non_ascii").as_deref() {
            None | Some("either") => NonAsciiMode::Either,
            Some("raw") => NonAsciiMode::Raw,
            Some("escape") => NonAsciiMode::Escape,
            Some(other) => {
                return Err(fatal(&format!(
                    "config `non_ascii` is `{other}`; expected raw, escape or either"
                )));
            }
        };
        let account_source = match config::get("account_source").as_deref() {
            None | Some("account") => AccountSource::Account,
            Some("virtual") => AccountSource::Virtual,
            Some(other) => {
                return Err(fatal(&format!(
                    "config `account_source` is `{other}`; expected account or virtual"
                )));
            }
        };
        Ok(Settings {
            checksum_key,
            max_age_secs,
            non_ascii,
            account_source,
        })
    }
}

/// The parts of `X-Casso-Signature`: the timestamp and every `v1` given.
fn parse_signature_header(header: &str) -> Result<(i64, Vec<&str>), ConnectorError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value.trim()),
            Some(("v1", value)) => v1.push(value.trim()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| unauthorized("X-Casso-Signature has no `t=`"))?;
    let t = t
        .parse::<i64>()
        .map_err(|_| unauthorized("X-Casso-Signature `t` is not Unix milliseconds"))?;
    if v1.is_empty() {
        return Err(unauthorized("X-Casso-Signature has no `v1=`"));
    }
    Ok((t, v1))
}

/// Checks `X-Casso-Signature` against the body and the replay window.
pub fn verify(
    request: &HttpRequest,
    settings: &Settings,
    now_ms: i64,
) -> Result<(), ConnectorError> {
    let header = request
        .header("x-casso-signature")
        .ok_or_else(|| unauthorized("missing X-Casso-Signature"))?;
    let (t, given) = parse_signature_header(header)?;
    if settings.max_age_secs > 0 && now_ms.abs_diff(t) > settings.max_age_secs.unsigned_abs() * 1000
    {
        return Err(unauthorized(
            "X-Casso-Signature `t` is too far from now (replay?)",
        ));
    }
    let key = settings.checksum_key.as_bytes();
    let plain = canonical_json(&request.body, Dialect::PLAIN)
        .map_err(|e| ConnectorError::BadRequest(format!("not a Casso webhook: {e}")))?;
    for dialect in dialects(&plain, settings.non_ascii) {
        let json = if dialect == Dialect::PLAIN {
            plain.clone()
        } else {
            canonical_json(&request.body, dialect)
                .map_err(|e| ConnectorError::BadRequest(format!("not a Casso webhook: {e}")))?
        };
        // The signed string is `t` as a number (Casso's sample code parses
        // it) then the canonical JSON.
        let expected = signature::hmac_sha512(key, format!("{t}.{json}").as_bytes());
        if given.iter().any(|v1| signature::verify_hex(v1, &expected)) {
            return Ok(());
        }
    }
    Err(unauthorized("bad X-Casso-Signature"))
}

/// The dialects worth trying for a body whose plain canonical form is
/// `plain`: every combination of [`Dialect`]'s three choices (at most 8),
/// less those that give the same text (no `/` in the body: `\/` or not is
/// moot). Accepting any of them weakens nothing: each is the same content,
/// signed with the same key.
pub fn dialects(plain: &str, non_ascii: NonAsciiMode) -> Vec<Dialect> {
    let non_ascii: &[NonAscii] = match non_ascii {
        NonAsciiMode::Raw => &[NonAscii::Raw],
        NonAsciiMode::Escape => &[NonAscii::Escape],
        NonAsciiMode::Either if plain.bytes().any(|b| b > 0x7e) => {
            &[NonAscii::Raw, NonAscii::Escape]
        }
        NonAsciiMode::Either => &[NonAscii::Raw],
    };
    let slash: &[bool] = if plain.contains('/') {
        &[false, true]
    } else {
        &[false]
    };
    let html: &[bool] = if plain.contains(['&', '<', '>', '\u{2028}', '\u{2029}']) {
        &[false, true]
    } else {
        &[false]
    };
    let mut out = Vec::with_capacity(8);
    for &non_ascii in non_ascii {
        for &escape_slash in slash {
            for &escape_html in html {
                out.push(Dialect {
                    non_ascii,
                    escape_slash,
                    escape_html,
                });
            }
        }
    }
    out
}

/// The reason a call from Casso's older "Webhook" integration is refused,
/// if `request` is one: no `X-Casso-Signature`, and the key in a
/// `secure-token` header or `data` a list of transactions. Assumption, from
/// Casso's older integration guides: that header name and that body shape.
pub fn legacy_integration(request: &HttpRequest) -> Option<&'static str> {
    if request.header("x-casso-signature").is_some() {
        return None;
    }
    let data_is_a_list = serde_json::from_slice::<serde_json::Value>(&request.body)
        .ok()
        .is_some_and(|body| body.get("data").is_some_and(serde_json::Value::is_array));
    (request.header("secure-token").is_some() || data_is_a_list).then_some(
        "this is Casso's older \"Webhook\" integration (secure-token, `data` a list), \
         which is not supported: in Casso, add a \"Webhook V2\" integration for this URL",
    )
}

/// Parses a verified body: `None` for test pings (`id` 0), Casso-side errors
/// and zero amounts, which are acknowledged and not announced.
pub fn parse(
    body: &[u8],
    account_source: AccountSource,
) -> Result<Option<BalanceChange>, ConnectorError> {
    let hook: CassoWebhook = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadRequest(format!("not a Casso webhook: {e}")))?;
    if hook.error != 0 {
        log::warn(&format!(
            "Casso reports error {}; nothing to record",
            hook.error
        ));
        return Ok(None);
    }
    let tx = hook
        .data
        .ok_or_else(|| ConnectorError::BadRequest("`data` is missing".into()))?;
    let id = match &tx.id {
        serde_json::Value::Number(n) if n.as_u64().is_some() => n.to_string(),
        serde_json::Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            return Err(ConnectorError::BadRequest(
                "`data.id` is not a transaction id".into(),
            ));
        }
    };
    if id == "0" {
        log::info("Casso test webhook (id 0) acknowledged");
        return Ok(None);
    }
    let amount = whole_number(&tx.amount)
        .ok_or_else(|| ConnectorError::BadRequest("`data.amount` is not a whole number".into()))?;
    let direction = if amount < 0 {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };
    let amount = amount.unsigned_abs();
    if amount == 0 {
        log::warn(&format!(
            "Casso transaction {id} has amount 0; not recorded"
        ));
        return Ok(None);
    }
    let non_empty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let account_number = non_empty(tx.account_number)
        .ok_or_else(|| ConnectorError::BadRequest("`data.accountNumber` is empty".into()))?;
    let virtual_account = non_empty(tx.virtual_account_number);
    let account = match (account_source, &virtual_account) {
        (AccountSource::Virtual, Some(va)) => va.clone(),
        _ => account_number.clone(),
    };
    let counter_name = non_empty(tx.counter_account_name);
    let counter_number = non_empty(tx.counter_account_number);
    let counterparty = counter_name.clone().or_else(|| counter_number.clone());
    let occurred_at_ms = tx
        .transaction_date_time
        .as_deref()
        .and_then(time::parse_vietnam_local);

    let mut extra = Vec::new();
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            extra.push((k.to_string(), v));
        }
    };
    keep("accountNumber", Some(account_number));
    keep("bankName", non_empty(tx.bank_name));
    keep("bankAbbreviation", non_empty(tx.bank_abbreviation));
    keep("virtualAccountNumber", virtual_account);
    keep("virtualAccountName", non_empty(tx.virtual_account_name));
    keep("counterAccountName", counter_name);
    keep("counterAccountNumber", counter_number);
    keep(
        "counterAccountBankId",
        non_empty(tx.counter_account_bank_id),
    );
    keep(
        "counterAccountBankName",
        non_empty(tx.counter_account_bank_name),
    );
    keep("runningBalance", tx.running_balance.map(|n| n.to_string()));
    keep("transactionDateTime", non_empty(tx.transaction_date_time));

    Ok(Some(BalanceChange {
        provider: PROVIDER.into(),
        transaction_id: id,
        account,
        amount,
        currency: "VND".into(),
        direction,
        reference: non_empty(tx.reference),
        counterparty,
        content: non_empty(tx.description),
        occurred_at_ms,
        extra,
    }))
}

/// An integer, also when written as a float with no fraction (`150000.0`).
fn whole_number(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // Beyond ±2^53 a float no longer holds every whole number exactly.
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
}

fn unauthorized(reason: &str) -> ConnectorError {
    ConnectorError::Unauthorized(reason.into())
}

fn fatal(reason: &str) -> ConnectorError {
    ConnectorError::Fatal(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;

    const SAMPLE: &str = include_str!("../../../examples/payloads/casso-webhook.json");
    /// The sample's signature: `node` running Casso's own sortObjDataByKey +
    /// JSON.stringify + crypto.createHmac("sha512", "casso-sample-checksum-key")
    /// over `1734924830020.<json>`, and the same from Python's
    /// `json.dumps(body, sort_keys=True, separators=(",", ":"))` + `hmac`.
    const SAMPLE_SIGNATURE: &str = "t=1734924830020,v1=eb4b4108f0c72278f0bf7a66a565220298b74a54eec532ad214344634e386812ea340b1f29b17003b5dd3fc35dfd31cebf7b431e308303923175698f7f724e8e";
    const SAMPLE_KEY: &str = "casso-sample-checksum-key";
    const SAMPLE_T_MS: i64 = 1_734_924_830_020;

    /// Casso's official vector (CassoHQ/casso-webhook-v2-verify-signature,
    /// python.py, also in php.php, golang.go, java.java and dotnet.cs): the
    /// body, key and header exactly as published there. It is a test ping (`id` 0).
    const OFFICIAL_BODY: &str = r#"{
        "error": 0,
        "data": {
            "id": 0,
            "reference": "MA_GIAO_DICH_THU_NGHIEM",
            "description": "giao dich thu nghiem",
            "amount": 599000,
            "runningBalance": 25000000,
            "transactionDateTime": "2024-10-03 15:06:37",
            "accountNumber": "88888888",
            "bankName": "VPBank",
            "bankAbbreviation": "VPB",
            "virtualAccountNumber": "",
            "virtualAccountName": "",
            "counterAccountName": "NGUYEN VAN A",
            "counterAccountNumber": "8888888888",
            "counterAccountBankId": "970415",
            "counterAccountBankName": "VietinBank"
        }
    }"#;
    const OFFICIAL_KEY: &str = "mgExMrjj4i7a1p8Cs6LmFbpCd8lbw4sSX4LZXPag7TKazeIogtR90tvWYTkwQbvs";
    const OFFICIAL_SIGNATURE: &str = "t=1727948258788,v1=ed0a4bd2e826d5cb69988cdb141e6c1a080e21f3b57eb72cd78192220042b9e7dde0868fc667faea8e224900fa7904e7c88dfa098032fb2d6b6996856e8b7ff3";

    /// Vietnamese text and a negative amount, signed by the sample key at
    /// t=1734928200000. RAW: `node` with Casso's sample code (raw UTF-8).
    /// ESCAPED: Python `json.dumps(body, sort_keys=True, separators=(",", ":"))`
    /// with its default `ensure_ascii=True`, then `hmac.new(key, msg, sha512)`.
    const UTF8_BODY: &str = r#"{"error":0,"data":{"id":218898,"reference":"FT24364030863635","description":"Thanh toán đơn hàng DH1025","amount":-75000,"runningBalance":16850000,"transactionDateTime":"2024-12-23 08:30:00","accountNumber":"123456789","bankName":"MBBank","bankAbbreviation":"MBB","virtualAccountNumber":"","virtualAccountName":"","counterAccountName":"NGUYỄN VĂN B","counterAccountNumber":"0011223344","counterAccountBankId":"970436","counterAccountBankName":"Vietcombank"}}"#;
    const UTF8_T_MS: i64 = 1_734_928_200_000;
    const UTF8_RAW: &str = "c8288286f4529a11da217ca5e517c31efbd9e101e0f917cb9f1734bac25eeec5b03be395f97350cbbfe96b8434f2efee280f91310a5373e1d12e51a1af1f2e22";
    const UTF8_ESCAPED: &str = "d4e524afc6d07d4c5c926db04ecf1b124880d87959f480ea1dc6382019c76fd919bf1bc6b79315b90bb554d0999b652d99084e52934dacda6a6d344ed47072d0";

    fn host(key: &str) -> TestHost {
        // The vectors are old: no replay window unless a test sets one.
        TestHost::new()
            .config("checksum_key", key)
            .config("max_age_secs", "0")
    }

    fn request(body: &str, signature: &str) -> HttpRequest {
        HttpRequest::post_json(body).with_header("X-Casso-Signature", signature)
    }

    fn run(host: &TestHost, req: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        host.run(|| CassoConnector::handle(req))
    }

    fn is_unauthorized(result: Result<WebhookOutcome, ConnectorError>) -> bool {
        matches!(result, Err(ConnectorError::Unauthorized(_)))
    }

    #[test]
    fn official_vector_verifies_and_is_a_ping() {
        let outcome = run(
            &host(OFFICIAL_KEY),
            request(OFFICIAL_BODY, OFFICIAL_SIGNATURE),
        )
        .expect("official vector accepted");
        assert!(outcome.changes.is_empty(), "id 0 is a test ping");
        assert_eq!(outcome.reply.expect("reply").text(), r#"{"success":true}"#);
        // The same body re-indented and with keys in another order still verifies.
        let compact = OFFICIAL_BODY
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(run(&host(OFFICIAL_KEY), request(&compact, OFFICIAL_SIGNATURE)).is_ok());
        let tampered = OFFICIAL_BODY.replace("599000", "599001");
        assert!(is_unauthorized(run(
            &host(OFFICIAL_KEY),
            request(&tampered, OFFICIAL_SIGNATURE)
        )));
    }

    #[test]
    fn sample_is_accepted_and_parsed() {
        let outcome =
            run(&host(SAMPLE_KEY), request(SAMPLE, SAMPLE_SIGNATURE)).expect("sample accepted");
        assert_eq!(outcome.reply.expect("reply").text(), r#"{"success":true}"#);
        let [change] = outcome.changes.as_slice() else {
            panic!("one change: {:?}", outcome.changes);
        };
        assert_eq!(change.provider, "casso");
        assert_eq!(change.transaction_id, "218897");
        assert_eq!(change.account, "123456789");
        assert_eq!(change.amount, 150_000);
        assert_eq!(change.direction, Direction::Incoming);
        assert_eq!(change.reference.as_deref(), Some("FT24364030863634"));
        assert_eq!(
            change.content.as_deref(),
            Some("DH1024 thanh toan don hang")
        );
        assert_eq!(change.counterparty.as_deref(), Some("NGUYEN VAN A"));
        // 2024-12-23 07:00:00 +07:00 == 2024-12-23T00:00:00Z
        assert_eq!(change.occurred_at_ms, Some(1_734_912_000_000));
        for kv in [
            ("virtualAccountNumber", "VQRQA0001"),
            ("bankName", "MBBank"),
            ("counterAccountNumber", "8888888888"),
            ("runningBalance", "16925000"),
        ] {
            assert!(
                change.extra.contains(&(kv.0.into(), kv.1.into())),
                "{kv:?} in {:?}",
                change.extra
            );
        }
    }

    #[test]
    fn account_source_virtual_files_under_the_virtual_account() {
        let host = host(SAMPLE_KEY).config("account_source", "virtual");
        let outcome = run(&host, request(SAMPLE, SAMPLE_SIGNATURE)).expect("accepted");
        assert_eq!(outcome.changes[0].account, "VQRQA0001");
        // Without a virtual account it falls back to the bank account.
        let sig = format!("t={UTF8_T_MS},v1={UTF8_RAW}");
        let outcome = run(&host, request(UTF8_BODY, &sig)).expect("accepted");
        assert_eq!(outcome.changes[0].account, "123456789");
    }

    #[test]
    fn tampered_wrong_key_and_bad_headers_are_unauthorized() {
        let h = host(SAMPLE_KEY);
        let tampered = SAMPLE.replace("150000", "950000");
        assert!(is_unauthorized(run(
            &h,
            request(&tampered, SAMPLE_SIGNATURE)
        )));
        assert!(is_unauthorized(run(
            &host("another-key"),
            request(SAMPLE, SAMPLE_SIGNATURE)
        )));
        let other_t = SAMPLE_SIGNATURE.replace("t=1734924830020", "t=1734924830021");
        assert!(is_unauthorized(run(&h, request(SAMPLE, &other_t))));
        for header in [
            "",
            "v1=eb4b",
            "t=1734924830020",
            "t=abc,v1=eb4b",
            "t=1734924830020,v1=zz",
        ] {
            assert!(
                is_unauthorized(run(&h, request(SAMPLE, header))),
                "{header}"
            );
        }
        assert!(is_unauthorized(run(&h, HttpRequest::post_json(SAMPLE))));
        // Order and spacing of the header's parts do not matter; hex case neither.
        let (t, v1) = SAMPLE_SIGNATURE.split_once(',').expect("two parts");
        let swapped = format!("{} , {}", v1.to_uppercase().replace("V1=", "v1="), t);
        assert!(run(&h, request(SAMPLE, &swapped)).is_ok());
    }

    #[test]
    fn replayed_timestamp_is_rejected_when_a_window_is_set() {
        let h = host(SAMPLE_KEY).config("max_age_secs", "300");
        let req = request(SAMPLE, SAMPLE_SIGNATURE);
        let settings = h.run(Settings::from_config).expect("settings");
        // Just inside the window, either side of `t`.
        assert!(verify(&req, &settings, SAMPLE_T_MS + 299_000).is_ok());
        assert!(verify(&req, &settings, SAMPLE_T_MS - 299_000).is_ok());
        // Replayed later, or from the future.
        assert!(matches!(
            verify(&req, &settings, SAMPLE_T_MS + 301_000),
            Err(ConnectorError::Unauthorized(_))
        ));
        assert!(matches!(
            verify(&req, &settings, SAMPLE_T_MS - 301_000),
            Err(ConnectorError::Unauthorized(_))
        ));
        // The default window (a day) rejects the sample today: it is from 2024.
        let default = TestHost::new().config("checksum_key", SAMPLE_KEY);
        assert!(is_unauthorized(run(
            &default,
            request(SAMPLE, SAMPLE_SIGNATURE)
        )));
    }

    #[test]
    fn non_ascii_spellings_per_config() {
        let raw = format!("t={UTF8_T_MS},v1={UTF8_RAW}");
        let escaped = format!("t={UTF8_T_MS},v1={UTF8_ESCAPED}");
        let with = |mode: &str| host(SAMPLE_KEY).config("non_ascii", mode);
        // Default `either` takes both.
        assert!(run(&host(SAMPLE_KEY), request(UTF8_BODY, &raw)).is_ok());
        assert!(run(&host(SAMPLE_KEY), request(UTF8_BODY, &escaped)).is_ok());
        assert!(run(&with("raw"), request(UTF8_BODY, &raw)).is_ok());
        assert!(is_unauthorized(run(
            &with("raw"),
            request(UTF8_BODY, &escaped)
        )));
        assert!(run(&with("escape"), request(UTF8_BODY, &escaped)).is_ok());
        assert!(is_unauthorized(run(
            &with("escape"),
            request(UTF8_BODY, &raw)
        )));
        // The body may itself spell the text escaped: same canonical form.
        let escaped_body = UTF8_BODY.replace("toán", "to\\u00e1n");
        assert!(run(&with("raw"), request(&escaped_body, &raw)).is_ok());
    }

    #[test]
    fn negative_amount_is_outgoing() {
        let sig = format!("t={UTF8_T_MS},v1={UTF8_RAW}");
        let outcome = run(&host(SAMPLE_KEY), request(UTF8_BODY, &sig)).expect("accepted");
        let change = &outcome.changes[0];
        assert_eq!(change.direction, Direction::Outgoing);
        assert_eq!(change.amount, 75_000);
        assert_eq!(change.counterparty.as_deref(), Some("NGUYỄN VĂN B"));
        assert!(
            !change
                .extra
                .iter()
                .any(|(k, _)| k == "virtualAccountNumber")
        );
    }

    #[test]
    fn parse_edge_cases() {
        let parse = |body: &str| parse(body.as_bytes(), AccountSource::Account);
        let tx = |fields: &str| {
            format!(
                r#"{{"error":0,"data":{{"id":7,"amount":1000,"accountNumber":"1",{fields}"description":null}}}}"#
            )
        };
        // Casso-side error and zero amounts: acknowledged, nothing recorded.
        assert!(parse(r#"{"error":1,"data":null}"#).unwrap().is_none());
        assert!(
            parse(r#"{"error":0,"data":{"id":7,"amount":0,"accountNumber":"1"}}"#)
                .unwrap()
                .is_none()
        );
        // A string id, a float amount without fraction.
        let c = parse(r#"{"data":{"id":"abc","amount":2500.0,"accountNumber":"1"}}"#)
            .unwrap()
            .unwrap();
        assert_eq!((c.transaction_id.as_str(), c.amount), ("abc", 2500));
        // Unparseable dates are kept as text, not guessed.
        let c = parse(&tx(r#""transactionDateTime":"23/12/2024","#))
            .unwrap()
            .unwrap();
        assert_eq!(c.occurred_at_ms, None);
        assert!(
            c.extra
                .contains(&("transactionDateTime".into(), "23/12/2024".into()))
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"error":0}"#,
            r#"{"error":0,"data":{"id":7,"amount":1000}}"#,
            r#"{"error":0,"data":{"id":7,"amount":1000,"accountNumber":" "}}"#,
            r#"{"error":0,"data":{"id":7,"amount":10.5,"accountNumber":"1"}}"#,
            r#"{"error":0,"data":{"id":-7,"amount":10,"accountNumber":"1"}}"#,
            r#"{"error":0,"data":{"id":null,"amount":10,"accountNumber":"1"}}"#,
            r#"{"error":0,"data":{"id":7,"amount":"10","accountNumber":"1"}}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ConnectorError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_signed_bodies_are_bad_requests() {
        let h = host(SAMPLE_KEY);
        for body in ["", "{", "not json", "{\"a\":1,\"a\":2}"] {
            let result = run(&h, request(body, SAMPLE_SIGNATURE));
            assert!(
                matches!(result, Err(ConnectorError::BadRequest(_))),
                "{body}: {result:?}"
            );
        }
    }

    #[test]
    fn config_mistakes_are_fatal() {
        let req = || request(SAMPLE, SAMPLE_SIGNATURE);
        let fatal = |h: TestHost| matches!(run(&h, req()), Err(ConnectorError::Fatal(_)));
        assert!(fatal(TestHost::new()), "no checksum_key");
        assert!(fatal(host("")), "empty checksum_key");
        assert!(fatal(host(SAMPLE_KEY).config("max_age_secs", "soon")));
        assert!(fatal(host(SAMPLE_KEY).config("max_age_secs", "-1")));
        assert!(fatal(host(SAMPLE_KEY).config("non_ascii", "utf7")));
        assert!(fatal(host(SAMPLE_KEY).config("account_source", "iban")));
    }

    /// Vietnamese text with `/`, `&`, `<` and `>` in the description, signed
    /// by the sample key at t=1734928200000 in each of the 8 dialects
    /// ([`Dialect`]). Computed outside this crate: Python's
    /// `json.dumps(body, sort_keys=True, separators=(",", ":"),
    /// ensure_ascii=<non-ASCII escaped>)`, then PHP's `/` → `\/` and Go's
    /// `& < >` → `\u0026 \u003c \u003e` substituted on that text, then
    /// `hmac.new(key, f"{t}.{json}".encode(), hashlib.sha512)`. The plain one
    /// is also what `node` gives with Casso's sample code (JSON.stringify).
    const MIXED_BODY: &str = r#"{"error":0,"data":{"id":218899,"reference":"FT24364030863636","description":"Thanh toán đơn hàng DH1025/A & <quà> tặng","amount":125000,"runningBalance":16975000,"transactionDateTime":"2024-12-23 08:45:00","accountNumber":"123456789","bankName":"MBBank","bankAbbreviation":"MBB","virtualAccountNumber":"","virtualAccountName":"","counterAccountName":"NGUYỄN VĂN B","counterAccountNumber":"0011223344","counterAccountBankId":"970436","counterAccountBankName":"Vietcombank"}}"#;
    const MIXED_T_MS: i64 = 1_734_928_200_000;
    /// (non-ASCII escaped, `\/`, Go's HTML escapes, v1); the samples that
    /// would sign each are named where there is one.
    const MIXED_VECTORS: [(bool, bool, bool, &str); 8] = [
        // JavaScript, Java (Jackson), C# (Newtonsoft)
        (
            false,
            false,
            false,
            "a1e1a12148ce8c800cc0641edd00b08720eecdc9df0370c2cdb39ae8721e7e1510f58267ccf5c0ec551fa80521529d978c58982a8db7999c4ee0c67f8a982f31",
        ),
        // Go
        (
            false,
            false,
            true,
            "bcc46d5fe49a5de382268bf0a52a07634dfec9c6f01a485209796cd19d77d7d31ca6e157acb808952f1d8310309f86e11a981d0944f3adff8b1b92c7f366a6c9",
        ),
        (
            false,
            true,
            false,
            "4369005b5d46aa0f4eead71a0187d4e4de00e1a0f48d1a1f33d35734f08c41204c0489f16497a960dda807dc0a0218772e17b4cf4adae9f3fc88966f92093cad",
        ),
        (
            false,
            true,
            true,
            "e146abb1e206dedb77549ab05e3b9218908d74daeb54dadf217b5d04d85b4d5020725cc4226ac359733da2a3f64ed667c388768d00ceaf0596979bc597508d1e",
        ),
        // Python
        (
            true,
            false,
            false,
            "cbaed442c10a2db160ca6359508f1749d15d26942f3b92862f05f3ec6c7dbce88702f4f6db98665a6a7aa509a3e7dc5e7bf17e0545e3f5d738fadfb64371b584",
        ),
        (
            true,
            false,
            true,
            "b723f1494095701eed5398ebe1005ce0d672b383dbbe33ee9e91fe702cc7cc616a6891b8395c9e35adc8cf011e6da4c5515f55887e3e9ce26175b70d753aafde",
        ),
        // PHP
        (
            true,
            true,
            false,
            "32dc2e804df658ca9af0b6f8be1d99fa63196e78146afb11b3115856d62a2942aaf7c1ee8ab3e494c38f520d175ae4cec1ebbad4ce2e3699e3010ede92f78e6f",
        ),
        (
            true,
            true,
            true,
            "6510b3d09f122602ae354e7cbb215329b4734ae14d1d9abbb692b0a98344c7651c27e62213a3356d30c572c0333fca0bcf5b57874bbba039166d910b82df9057",
        ),
    ];

    #[test]
    fn slash_ampersand_angle_brackets_and_vietnamese_verify_in_every_dialect() {
        for (escaped, slash, html, v1) in MIXED_VECTORS {
            let header = format!("t={MIXED_T_MS},v1={v1}");
            let outcome =
                run(&host(SAMPLE_KEY), request(MIXED_BODY, &header)).unwrap_or_else(|e| {
                    panic!("non-ASCII escaped {escaped}, \\/ {slash}, html {html}: {e:?}")
                });
            let change = &outcome.changes[0];
            assert_eq!(change.transaction_id, "218899");
            assert_eq!(
                change.content.as_deref(),
                Some("Thanh toán đơn hàng DH1025/A & <quà> tặng")
            );
            // The same body as PHP or Go would send it (escaped spellings)
            // is the same content: it verifies too.
            let respelled = MIXED_BODY
                .replace('/', "\\/")
                .replace('&', "\\u0026")
                .replace('<', "\\u003C")
                .replace("à", "\\u00e0");
            assert!(run(&host(SAMPLE_KEY), request(&respelled, &header)).is_ok());
            // Tampered: no dialect matches.
            let tampered = MIXED_BODY.replace("125000", "725000");
            assert!(is_unauthorized(run(
                &host(SAMPLE_KEY),
                request(&tampered, &header)
            )));
        }
        // Pinning non-ASCII to `raw` leaves only the four raw dialects.
        let raw_only = host(SAMPLE_KEY).config("non_ascii", "raw");
        for (escaped, _, _, v1) in MIXED_VECTORS {
            let header = format!("t={MIXED_T_MS},v1={v1}");
            assert_eq!(
                run(&raw_only, request(MIXED_BODY, &header)).is_ok(),
                !escaped
            );
        }
    }

    #[test]
    fn dialects_tried_are_bounded_and_only_those_that_differ() {
        assert_eq!(
            dialects("{\"a\":\"x\"}", NonAsciiMode::Either),
            [Dialect::PLAIN]
        );
        assert_eq!(dialects("{\"a\":\"đ/&\"}", NonAsciiMode::Either).len(), 8);
        assert_eq!(dialects("{\"a\":\"đ/&\"}", NonAsciiMode::Raw).len(), 4);
        assert_eq!(dialects("{\"a\":\"x/\"}", NonAsciiMode::Either).len(), 2);
    }

    #[test]
    fn the_older_webhook_integration_is_refused_with_the_way_out() {
        // Casso's older "Webhook": the key in a `secure-token` header and
        // `data` a list of transactions, no X-Casso-Signature.
        let legacy = r#"{"error":0,"data":[{"id":1,"tid":"FT1","description":"DH1","amount":150000,"cusum_balance":1,"when":"2024-12-23 08:45:00","bank_sub_acc_id":"123456789","subAccId":"123456789"}]}"#;
        let with_token = HttpRequest::post_json(legacy).with_header("Secure-Token", "k");
        let without = HttpRequest::post_json(legacy);
        for req in [with_token, without] {
            let (result, host) = host(SAMPLE_KEY).run_and_keep(|| CassoConnector::handle(req));
            let Err(ConnectorError::BadRequest(why)) = result else {
                panic!("expected a 400 with the reason, got {result:?}");
            };
            assert!(why.contains("\"Webhook V2\""), "{why}");
            assert!(
                why.chars().count() <= 200,
                "the gateway passes 200 characters on: {why}"
            );
            assert!(
                host.logs()
                    .iter()
                    .any(|(_, line)| line.contains("Webhook V2")),
                "and logs it"
            );
        }
        // A V2 body without its signature header is still just unauthorized.
        assert!(is_unauthorized(run(
            &host(SAMPLE_KEY),
            HttpRequest::post_json(SAMPLE)
        )));
    }
}
