//! VNPay IPN calls → balance changes.
//!
//! VNPay calls the shop's IPN URL with `vnp_*` parameters in the query string
//! (GET, in VNPay's demo). A POST is accepted too, its parameters in the query
//! or, when the query has none, in an `application/x-www-form-urlencoded` body.
//!
//! `vnp_SecureHash` = hex HMAC-SHA512(hash secret, the other `vnp_*`
//! parameters but `vnp_SecureHashType`, sorted by name, each
//! `urlencode(name)=urlencode(value)`, joined with `&`). VNPay's demos in
//! different languages encode a few punctuation characters differently (see
//! [`ENCODINGS`]) and differ on empty parameters: the Java and .NET demos
//! leave them out, the PHP and Node.js demos sign them as `name=`. Either is
//! accepted ([`verify`]).
//!
//! VNPay reads the JSON reply (`RspCode`), always sent with HTTP 200: `00` once
//! the payment is stored (also for a failed payment, which is acknowledged and
//! not stored), `97` bad signature, `01` another terminal's payment, `04` an
//! amount that is not whole đồng, `02` a payment older than `max_age_secs`,
//! `99` malformed. VNPay stops retrying on `00` and `02`.
//!
//! Replays: VNPay's return URL hands the payer's browser the very parameters
//! and hash of the IPN, so a signed IPN proves nothing about *when* it was
//! sent. A paid IPN whose `vnp_PayDate` is older than `max_age_secs` is
//! refused; VNPay re-sends an IPN at most 10 times, 5 minutes apart (its IPN
//! guide), so nothing genuine is older than about an hour, and the default
//! of two days leaves room for a gateway clock that is off.
//!
//! Config (`[connector.config]`):
//! - `hash_secret`: the terminal's hash secret (`vnp_HashSecret`, required)
//! - `tmn_code`: when set, payments for another terminal are refused with `01`
//! - `account`: the account payments are credited to (default: `vnp_TmnCode`)
//! - `max_age_secs`: the replay window on `vnp_PayDate` (default 172800, two
//!   days; 1 to [`MAX_MAX_AGE_SECS`])

use std::collections::BTreeMap;

use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, HttpRequest, HttpResponse, WebhookConnector, WebhookOutcome,
    config, export_webhook_connector, http, log, signature, time,
};

/// The dedupe provider: the transaction id is VNPay's `vnp_TransactionNo`.
pub const PROVIDER: &str = "vnpay";

/// How VNPay's official demos form-encode each name and value before hashing:
/// UTF-8 bytes, space → `+`, `A-Z a-z 0-9 - _ .` kept, plus the listed
/// characters, everything else `%XX`. They differ only in those characters,
/// which VNPay's rules keep out of `vnp_OrderInfo`; a hash matching any of
/// them is accepted. Each is an injective encoding of the same decoded
/// values, so accepting several lets no one alter a value.
///
/// Not accepted: the Java demo's `US_ASCII` charset, which turns every
/// non-ASCII character into `?` (`%3F`), so values differing only in accented
/// letters would share one hash.
pub const ENCODINGS: &[(&str, &[u8])] = &[
    ("PHP urlencode", b""),
    ("Java URLEncoder", b"*"),
    ("Python quote_plus", b"~"),
    (".NET WebUtility.UrlEncode", b"!()*"),
    ("JavaScript encodeURIComponent", b"!'()*~"),
];

/// The default replay window: two days. VNPay's last retry comes about 50
/// minutes after the payment; the rest is room for clocks.
pub const DEFAULT_MAX_AGE_SECS: i64 = 2 * 24 * 3600;

/// The longest window allowed: a week, well inside the gateway's dedupe
/// window (`log.dedupe_retention_days`, 30 by default), so a replay is
/// refused here before its dedupe key can be forgotten.
pub const MAX_MAX_AGE_SECS: i64 = 7 * 24 * 3600;

/// Longest `content` the gateway takes.
const MAX_CONTENT: usize = 2048;

/// The connector's settings, read once per call. No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct Settings {
    pub hash_secret: String,
    pub tmn_code: Option<String>,
    pub account: Option<String>,
    /// The replay window on `vnp_PayDate`, in seconds.
    pub max_age_secs: i64,
}

impl Settings {
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let non_empty = |key: &str| {
            config::get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let max_age_secs = match non_empty("max_age_secs") {
            None => DEFAULT_MAX_AGE_SECS,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_MAX_AGE_SECS).contains(n))
                .ok_or_else(|| {
                    ConnectorError::Fatal(format!(
                        "config `max_age_secs` must be whole seconds from 1 to {MAX_MAX_AGE_SECS} \
                         (a replay window cannot be turned off), not `{v}`"
                    ))
                })?,
        };
        Ok(Settings {
            hash_secret: config::require("hash_secret")?,
            tmn_code: non_empty("tmn_code"),
            account: non_empty("account"),
            max_age_secs,
        })
    }
}

/// VNPay's `RspCode`s this plugin answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RspCode {
    /// `00`: received; VNPay stops retrying.
    Confirmed,
    /// `01`: not our order (another terminal).
    OrderNotFound,
    /// `02`: "order already confirmed", for a paid IPN older than
    /// `max_age_secs`. Genuine or replayed, it was settled long ago, and `02`
    /// is, with `00`, the code on which VNPay stops re-sending; `97`/`99`
    /// would have it retry what can never be accepted.
    AlreadyConfirmed,
    /// `04`: the amount is not whole đồng.
    InvalidAmount,
    /// `97`: bad or missing `vnp_SecureHash`.
    InvalidChecksum,
    /// `99`: malformed.
    Unknown,
}

impl RspCode {
    /// The code and the message VNPay's demos send with it.
    pub fn code_and_message(self) -> (&'static str, &'static str) {
        match self {
            RspCode::Confirmed => ("00", "Confirm Success"),
            RspCode::OrderNotFound => ("01", "Order not found"),
            RspCode::AlreadyConfirmed => ("02", "Order already confirmed"),
            RspCode::InvalidAmount => ("04", "Invalid amount"),
            RspCode::InvalidChecksum => ("97", "Invalid Checksum"),
            RspCode::Unknown => ("99", "Unknown error"),
        }
    }

    /// The reply document, always HTTP 200, keys in the demos' order.
    pub fn reply(self) -> HttpResponse {
        let (code, message) = self.code_and_message();
        HttpResponse::json(
            200,
            format!(r#"{{"RspCode":"{code}","Message":"{message}"}}"#),
        )
    }
}

/// What an IPN call comes to.
#[derive(Debug)]
pub enum Verdict {
    /// A successful payment: store it, then answer `00`.
    Paid(BalanceChange),
    /// Genuine, nothing to store (a failed or cancelled payment): `00`.
    Acknowledged(String),
    /// Not accepted: this code, no change, and why (for our log).
    Refused(RspCode, String),
}

pub struct VnpayConnector;

impl WebhookConnector for VnpayConnector {
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
        let settings = Settings::from_config()?;
        let (changes, code) = match evaluate(&request, &settings, time::now_ms()) {
            Verdict::Paid(change) => (vec![change], RspCode::Confirmed),
            Verdict::Acknowledged(why) => {
                log::info(&format!("IPN acknowledged without a payment: {why}"));
                (Vec::new(), RspCode::Confirmed)
            }
            Verdict::Refused(code, why) => {
                // The gateway logs nothing for a 200, so say it here.
                let (rsp, _) = code.code_and_message();
                log::warn(&format!("IPN refused (RspCode {rsp}): {why}"));
                (Vec::new(), code)
            }
        };
        Ok(WebhookOutcome {
            changes,
            reply: Some(code.reply()),
        })
    }
}

export_webhook_connector!(VnpayConnector);

/// Verifies and parses one IPN call received at `now_ms` (the gateway's clock).
pub fn evaluate(request: &HttpRequest, settings: &Settings, now_ms: i64) -> Verdict {
    let params = match vnp_params(request) {
        Ok(p) => p,
        Err(why) => return Verdict::Refused(RspCode::Unknown, why),
    };
    if let Err(why) = verify(&params, settings.hash_secret.as_bytes()) {
        return Verdict::Refused(RspCode::InvalidChecksum, why);
    }
    let field = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let require = |name: &str| field(name).ok_or_else(|| format!("{name} is missing"));
    let (tmn_code, response_code, status) = match (
        require("vnp_TmnCode"),
        require("vnp_ResponseCode"),
        require("vnp_TransactionStatus"),
    ) {
        (Ok(t), Ok(r), Ok(s)) => (t, r, s),
        (Err(why), _, _) | (_, Err(why), _) | (_, _, Err(why)) => {
            return Verdict::Refused(RspCode::Unknown, why);
        }
    };
    if let Some(wanted) = &settings.tmn_code
        && wanted != tmn_code
    {
        return Verdict::Refused(
            RspCode::OrderNotFound,
            format!("vnp_TmnCode {tmn_code} is not the configured tmn_code {wanted}"),
        );
    }
    let txn_ref = field("vnp_TxnRef").unwrap_or("?");
    if response_code != "00" || status != "00" {
        return Verdict::Acknowledged(format!(
            "order {txn_ref} was not paid (vnp_ResponseCode {response_code}, vnp_TransactionStatus {status})"
        ));
    }
    let amount = match require("vnp_Amount")
        .map_err(|why| (RspCode::Unknown, why))
        .and_then(parse_amount)
    {
        Ok(a) => a,
        Err((code, why)) => return Verdict::Refused(code, why),
    };
    let transaction_id = match require("vnp_TransactionNo") {
        Ok(t) => t,
        Err(why) => return Verdict::Refused(RspCode::Unknown, why),
    };
    // The replay window. A paid IPN without a readable vnp_PayDate cannot be
    // judged, so it is refused as malformed (VNPay always sends one).
    let Some(paid_at) = field("vnp_PayDate").and_then(time::parse_vietnam_compact) else {
        return Verdict::Refused(
            RspCode::Unknown,
            "vnp_PayDate is missing or not yyyyMMddHHmmss".into(),
        );
    };
    // Only the past is judged: a replay is always of an old IPN, and a date
    // ahead of now means this box's clock is behind (the gateway logs that).
    if now_ms.saturating_sub(paid_at) > settings.max_age_secs.saturating_mul(1000) {
        return Verdict::Refused(
            RspCode::AlreadyConfirmed,
            format!(
                "order {txn_ref}: vnp_PayDate {} is more than max_age_secs ({}) ago; a replay",
                field("vnp_PayDate").unwrap_or("?"),
                settings.max_age_secs
            ),
        );
    }
    let account = settings.account.as_deref().unwrap_or(tmn_code);
    let mut extra = Vec::new();
    for name in [
        "vnp_TmnCode",
        "vnp_BankCode",
        "vnp_BankTranNo",
        "vnp_CardType",
        "vnp_PayDate",
    ] {
        if let Some(v) = field(name) {
            extra.push((name.to_string(), v.to_string()));
        }
    }
    Verdict::Paid(BalanceChange {
        // VNPay caps vnp_TxnRef at 100 characters; the gateway at 256 bytes.
        reference: field("vnp_TxnRef")
            .filter(|r| r.len() <= 256)
            .map(str::to_string),
        content: field("vnp_OrderInfo")
            .map(|c| soundbox_plugin_sdk::text::truncate(c, MAX_CONTENT).to_string()),
        occurred_at_ms: Some(paid_at),
        extra,
        ..BalanceChange::incoming(PROVIDER, transaction_id, account, amount)
    })
}

/// `vnp_Amount` is đồng × 100.
fn parse_amount(text: &str) -> Result<u64, (RspCode, String)> {
    let hundredths: u64 = text.parse().map_err(|_| {
        (
            RspCode::Unknown,
            format!("vnp_Amount `{text}` is not an integer"),
        )
    })?;
    if hundredths == 0 || !hundredths.is_multiple_of(100) {
        return Err((
            RspCode::InvalidAmount,
            format!("vnp_Amount {text} is not a positive whole number of VND × 100"),
        ));
    }
    Ok(hundredths / 100)
}

/// The request's `vnp_*` parameters, decoded, by name: from the query string,
/// else (a POST) from a form body. Other parameters are ignored, as VNPay's
/// PHP demo does, so the shop may add its own to the IPN URL.
pub fn vnp_params(request: &HttpRequest) -> Result<BTreeMap<String, String>, String> {
    let only_vnp = |pairs: Vec<(String, String)>| -> Vec<(String, String)> {
        pairs
            .into_iter()
            .filter(|(k, _)| k.starts_with("vnp_"))
            .collect()
    };
    // parse_form decodes `+` as space and `%XX` as bytes (UTF-8, lossy).
    let mut pairs = only_vnp(http::parse_form(&request.query));
    if pairs.is_empty() && !request.body.is_empty() {
        let body = std::str::from_utf8(&request.body)
            .map_err(|_| "the body is not UTF-8 form data".to_string())?;
        pairs = only_vnp(http::parse_form(body.trim()));
    }
    if pairs.is_empty() {
        return Err("no vnp_* parameters in the query string or a form body".into());
    }
    let mut params = BTreeMap::new();
    for (name, value) in pairs {
        // Which copy would the signer have meant? Refuse rather than guess.
        if params.contains_key(&name) {
            return Err(format!("{name} appears more than once"));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// Checks `vnp_SecureHash` against every encoding in [`ENCODINGS`], each with
/// empty parameters left out and signed as `name=`. Accepting both lets no
/// one alter a value: an empty parameter is in the hash or adds nothing, and
/// it cannot be told apart from a missing one either way. Each comparison is
/// constant-time.
pub fn verify(params: &BTreeMap<String, String>, secret: &[u8]) -> Result<(), String> {
    let given = params
        .get("vnp_SecureHash")
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .ok_or("vnp_SecureHash is missing")?;
    let mut tried: Vec<String> = Vec::with_capacity(2 * ENCODINGS.len());
    let variants = [false, true]
        .into_iter()
        .flat_map(|with_empty| ENCODINGS.iter().map(move |(_, keep)| (*keep, with_empty)));
    for (keep, with_empty) in variants {
        let signed = signed_string(params, keep, with_empty);
        // Most IPNs have none of the characters the encodings differ in.
        if tried.contains(&signed) {
            continue;
        }
        if signature::verify_hex(given, &signature::hmac_sha512(secret, signed.as_bytes())) {
            return Ok(());
        }
        tried.push(signed);
    }
    Err("vnp_SecureHash does not match".into())
}

/// The string VNPay signs, with `keep` as in [`ENCODINGS`], empty parameters
/// in (`name=`) or out. `params` is sorted by name already.
pub fn signed_string(params: &BTreeMap<String, String>, keep: &[u8], with_empty: bool) -> String {
    params
        .iter()
        .filter(|(k, v)| {
            *k != "vnp_SecureHash" && *k != "vnp_SecureHashType" && (with_empty || !v.is_empty())
        })
        .map(|(k, v)| format!("{}={}", form_encode(k, keep), form_encode(v, keep)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Form encoding: space → `+`, `A-Z a-z 0-9 - _ .` and `keep` as they are,
/// every other UTF-8 byte `%XX` in upper-case hex. (The SDK's
/// `http::form_encode` is the `*`-keeping Java variant only.)
pub fn form_encode(input: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(byte as char),
            b' ' => out.push('+'),
            b if keep.contains(&b) => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use soundbox_plugin_sdk::testing::TestHost;

    // Every vector below was made independently of this crate, with Python's
    // `hmac` (SHA-512) and `urllib.parse`: the signed string is the sorted
    // non-empty `vnp_*` pairs, each side encoded as VNPay's PHP demo does
    // (`quote_plus(s, safe="").replace("~", "%7E")`, i.e. PHP `urlencode`)
    // unless the vector says otherwise, under the test secret below; the
    // query string is the same pairs in the same encoding plus
    // `&vnp_SecureHash=<hex>`. Java's `URLEncoder` and Node's
    // `encodeURIComponent` were run to confirm the variant encodings.
    const SECRET: &str = "vnpay-test-hash-secret";

    /// The vectors' `vnp_PayDate`, 2024-07-25 14:02:37 +07:00, in Unix ms.
    const PAID_AT: i64 = 1_721_890_957_000;
    /// When the vectors below are evaluated: five minutes after they were paid.
    const NOW: i64 = PAID_AT + 300_000;

    /// [`super::evaluate`] at [`NOW`].
    fn evaluate(request: &HttpRequest, settings: &Settings) -> Verdict {
        super::evaluate(request, settings, NOW)
    }

    /// `examples/payloads/vnpay-ipn.txt`: 150 000 VND paid, order DH1024.
    const SAMPLE: &str = include_str!("../../../examples/payloads/vnpay-ipn.txt");

    /// The sample's signed string, as Python built it.
    const SAMPLE_SIGNED: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512345&vnp_TransactionStatus=00&vnp_TxnRef=DH1024";

    /// `vnp_OrderInfo` = `Thanh toán đơn hàng #DH1024` (UTF-8, `#` encoded).
    const UTF8: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Thanh+to%C3%A1n+%C4%91%C6%A1n+h%C3%A0ng+%23DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512346&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=1393ac05f6ab65b5bdefd407683026d2fc112ce7c03c6c20ba1a48cb19340de5fb8c5829417dcdada9ae1ff0541b9ac3f5eb92369933fe7833db5d554168988a";

    /// `vnp_OrderInfo` = `Ban *5* ~ok`, signed three ways: PHP (`%2A`, `%7E`),
    /// Java (`quote_plus(s, safe="*")` with `~` → `%7E`: `*` kept) and Python
    /// (`quote_plus(s, safe="")`: `~` kept).
    const STAR_PHP: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Ban+%2A5%2A+%7Eok&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512347&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=8db631f70590621e3f56b9f8ca7726080966aa5a25b905c0160eea5b380d888b22f1628d82390acaef3affc0b266f218575a90c8ab945dcd6bdb4093cf0ef158";
    const STAR_JAVA: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Ban+*5*+%7Eok&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512347&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=14ca6e85662afa65726642e80c1b2b86998c92a392f56fb7c7d95d200fe480284fbd2f93db32473701d54775197f05647a7d81ccda66d363c9e2c74d21dfa2b1";
    const STAR_PYTHON: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Ban+%2A5%2A+~ok&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512347&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=b617e75ee6dd97d80a5e7ac6f244c9cc6437b7a5390abbbfb7b5ea1281ff2703082792ccb3059dd211ce3cc464ea2c56d3bb6c0053d82c9ae59751d030d209b8";

    /// `vnp_OrderInfo` = `Ban (5) it's!*~`, JavaScript style
    /// (`quote(s, safe="!'()*~").replace("%20", "+")`).
    const JS: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Ban+(5)+it's!*~&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512348&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=67a70509dec6c2ce3627acfca5143055787e88c819ddd41175a0e9c72812c94e1ae83f170cb33a13744ac467dafb7c433c4ab95777b9eaee42039f7798955b28";

    /// `vnp_BankTranNo=` sent empty: left out of the signed string.
    const EMPTY_PARAM: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512349&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=75b7168fc977ecfbd0ee468d4fae01685e045bf4f5ae23cb82b65ddfb5ac20b59a5202d20782be44d4d4f08adec035c61f86115391e5f85c1acba4e1d78cb86f";

    /// [`EMPTY_PARAM`]'s fields (another `vnp_TransactionNo`) signed as the
    /// PHP and Node.js demos sign them: `vnp_BankTranNo=` in the signed string.
    const EMPTY_SIGNED: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512352&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=f7c46d8f915f025be859e00fb1ddb8db9cf63dde47ee03b5affe90a0bd00693ce3abe61713d4d250f2273f2d63e360d20a66a5dac8fa4d10294191dabdcab2b8";

    /// A cancelled payment (`vnp_ResponseCode=24`, status `02`).
    const FAILED: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=24&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=0&vnp_TransactionStatus=02&vnp_TxnRef=DH1024&vnp_SecureHash=59d0039873f6b14651fa2930ef1aa83834f7be467cdb7614b6a0bdae914af2274111b07fbb79b61d90bd46f9b1a4c9ad430cb45d36be8cb50f9ed60b843460ab";

    /// `vnp_Amount=15000050`: 150 000.50 VND.
    const ODD_AMOUNT: &str = "vnp_Amount=15000050&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512350&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHash=007076c3ab7dbc7e563144173339a73e4b9f34dfa973d32ab4f99cbe43968246a15deeee559d51ec6f8c823c741718d49427bc3f2552dc4e0afefdb422861e17";

    /// With `vnp_SecureHashType=HmacSHA512`, which is not signed.
    const HASH_TYPE: &str = "vnp_Amount=15000000&vnp_BankCode=NCB&vnp_BankTranNo=VNP14512345&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+don+hang+DH1024&vnp_PayDate=20240725140237&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo=14512351&vnp_TransactionStatus=00&vnp_TxnRef=DH1024&vnp_SecureHashType=HmacSHA512&vnp_SecureHash=0dddf2af4d37af91746c889ac5f5fec190870f92beec209d3a6d31093b49fe7634201a1f70372cda224ad612c3b6199c3e1e7aec6a308dd1745ddbb06598f900";

    fn settings() -> Settings {
        Settings {
            hash_secret: SECRET.into(),
            tmn_code: None,
            account: None,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
        }
    }

    /// `unix_ms` as VNPay writes `vnp_PayDate`: Vietnam time, `yyyyMMddHHmmss`
    /// (Howard Hinnant's days-to-civil).
    fn vietnam_compact(unix_ms: i64) -> String {
        let secs = unix_ms.div_euclid(1000) + 7 * 3600;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
        format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}")
    }

    /// A paid IPN at `paid_at_ms`, signed here by hand (ASCII values, sorted
    /// by hand, the SDK's encoder and HMAC; not this crate's signing code).
    fn fresh(transaction_no: &str, paid_at_ms: i64) -> String {
        let signed = format!(
            "vnp_Amount=5000000&vnp_BankCode=NCB&vnp_CardType=ATM&vnp_OrderInfo=Thanh+toan+DH{transaction_no}\
             &vnp_PayDate={}&vnp_ResponseCode=00&vnp_TmnCode=DEMOSHOP&vnp_TransactionNo={transaction_no}\
             &vnp_TransactionStatus=00&vnp_TxnRef=DH{transaction_no}",
            vietnam_compact(paid_at_ms)
        );
        let hash = signature::hmac_sha512_hex(SECRET.as_bytes(), signed.as_bytes());
        format!("{signed}&vnp_SecureHash={hash}")
    }

    fn get(query: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: "/hooks/vnpay".into(),
            query: query.trim().into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn paid(verdict: Verdict) -> BalanceChange {
        match verdict {
            Verdict::Paid(change) => change,
            other => panic!("expected a payment, got {other:?}"),
        }
    }

    fn refused(verdict: Verdict) -> (RspCode, String) {
        match verdict {
            Verdict::Refused(code, why) => (code, why),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn sample_signed_string_matches_python() {
        let params = vnp_params(&get(SAMPLE)).expect("params");
        assert_eq!(signed_string(&params, b"", false), SAMPLE_SIGNED);
        assert_eq!(signed_string(&params, b"", true), SAMPLE_SIGNED);
        assert_eq!(vietnam_compact(PAID_AT), "20240725140237");
    }

    #[test]
    fn valid_sample_is_a_payment() {
        let change = paid(evaluate(&get(SAMPLE), &settings()));
        assert_eq!(change.provider, "vnpay");
        assert_eq!(change.transaction_id, "14512345");
        assert_eq!(change.account, "DEMOSHOP");
        assert_eq!(change.amount, 150_000);
        assert_eq!(change.reference.as_deref(), Some("DH1024"));
        assert_eq!(
            change.content.as_deref(),
            Some("Thanh toan don hang DH1024")
        );
        assert_eq!(change.counterparty, None);
        // 2024-07-25 14:02:37 +07:00
        assert_eq!(change.occurred_at_ms, Some(1_721_890_957_000));
        for (k, v) in [
            ("vnp_BankCode", "NCB"),
            ("vnp_BankTranNo", "VNP14512345"),
            ("vnp_CardType", "ATM"),
        ] {
            assert!(change.extra.contains(&(k.into(), v.into())), "{k}");
        }
    }

    /// The whole connector: config, reply document, stored change.
    #[test]
    fn handle_replies_confirm_success_or_invalid_checksum() {
        let body = |r: HttpResponse| {
            assert_eq!(r.status, 200);
            serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")
        };
        let host = TestHost::new().config("hash_secret", SECRET);
        let ipn = fresh("900001", time::now_ms() - 60_000);
        let outcome = host
            .run(|| VnpayConnector::handle(get(&ipn)))
            .expect("handled");
        assert_eq!(outcome.changes.len(), 1);
        let reply = outcome.reply.expect("reply");
        assert_eq!(
            reply.text(),
            r#"{"RspCode":"00","Message":"Confirm Success"}"#
        );
        assert_eq!(
            body(reply),
            serde_json::json!({"RspCode": "00", "Message": "Confirm Success"})
        );

        let wrong = TestHost::new().config("hash_secret", "another-secret");
        let (outcome, after) = wrong.run_and_keep(|| VnpayConnector::handle(get(SAMPLE)));
        let outcome = outcome.expect("handled");
        assert!(outcome.changes.is_empty());
        assert_eq!(
            body(outcome.reply.expect("reply")),
            serde_json::json!({"RspCode": "97", "Message": "Invalid Checksum"})
        );
        assert!(
            after.logs()[0].1.contains("RspCode 97"),
            "{:?}",
            after.logs()
        );
    }

    #[test]
    fn tampered_wrong_key_and_missing_hash_are_invalid_checksums() {
        let s = settings();
        for (tampered, what) in [
            (
                SAMPLE.replace("vnp_Amount=15000000", "vnp_Amount=95000000"),
                "amount",
            ),
            (SAMPLE.replace("don+hang", "don+hangx"), "order info"),
            (
                SAMPLE.replace("vnp_ResponseCode=00", "vnp_ResponseCode=01"),
                "status",
            ),
            // An extra signed-looking parameter.
            (
                format!("vnp_Bill_Mobile=0900000000&{}", SAMPLE.trim()),
                "added",
            ),
        ] {
            assert_eq!(
                refused(evaluate(&get(&tampered), &s)).0,
                RspCode::InvalidChecksum,
                "{what}"
            );
        }
        let other = Settings {
            hash_secret: "vnpay-other-secret".into(),
            ..settings()
        };
        assert_eq!(
            refused(evaluate(&get(SAMPLE), &other)).0,
            RspCode::InvalidChecksum
        );
        let no_hash = SAMPLE.split("&vnp_SecureHash=").next().unwrap_or_default();
        let (code, why) = refused(evaluate(&get(no_hash), &s));
        assert_eq!(code, RspCode::InvalidChecksum);
        assert!(why.contains("missing"), "{why}");
    }

    #[test]
    fn hash_is_compared_in_either_case_and_non_vnp_params_are_ignored() {
        let (head, hash) = SAMPLE.trim().split_once("vnp_SecureHash=").expect("hash");
        let upper = format!("{head}vnp_SecureHash={}", hash.to_uppercase());
        paid(evaluate(&get(&upper), &settings()));
        let with_own = format!("shop=1&{}&utm=x", SAMPLE.trim());
        paid(evaluate(&get(&with_own), &settings()));
    }

    #[test]
    fn utf8_values_and_each_demo_encoding_verify() {
        let change = paid(evaluate(&get(UTF8), &settings()));
        assert_eq!(
            change.content.as_deref(),
            Some("Thanh toán đơn hàng #DH1024")
        );
        for vector in [STAR_PHP, STAR_JAVA, STAR_PYTHON] {
            let change = paid(evaluate(&get(vector), &settings()));
            assert_eq!(change.content.as_deref(), Some("Ban *5* ~ok"));
        }
        let change = paid(evaluate(&get(JS), &settings()));
        assert_eq!(change.content.as_deref(), Some("Ban (5) it's!*~"));
    }

    #[test]
    fn empty_params_and_hash_type_are_not_signed() {
        let change = paid(evaluate(&get(EMPTY_PARAM), &settings()));
        assert!(!change.extra.iter().any(|(k, _)| k == "vnp_BankTranNo"));
        paid(evaluate(&get(HASH_TYPE), &settings()));
    }

    #[test]
    fn empty_params_verify_signed_either_way() {
        // Java/.NET style (left out) and PHP/Node.js style (`name=`).
        let out = paid(evaluate(&get(EMPTY_PARAM), &settings()));
        let signed_in = paid(evaluate(&get(EMPTY_SIGNED), &settings()));
        assert_eq!(out.transaction_id, "14512349");
        assert_eq!(signed_in.transaction_id, "14512352");
        // Either way the values are what was signed: dropping the empty
        // parameter or filling it in breaks the hash.
        let dropped = EMPTY_SIGNED.replace("vnp_BankTranNo=&", "");
        assert_eq!(
            refused(evaluate(&get(&dropped), &settings())).0,
            RspCode::InvalidChecksum
        );
        let filled = EMPTY_SIGNED.replace("vnp_BankTranNo=&", "vnp_BankTranNo=X&");
        assert_eq!(
            refused(evaluate(&get(&filled), &settings())).0,
            RspCode::InvalidChecksum
        );
    }

    #[test]
    fn replay_window_on_pay_date() {
        let s = settings();
        let window = DEFAULT_MAX_AGE_SECS * 1000;
        let at = |now: i64| super::evaluate(&get(SAMPLE), &s, now);
        // Just inside: exactly max_age_secs old.
        assert_eq!(paid(at(PAID_AT + window)).occurred_at_ms, Some(PAID_AT));
        // Just outside, and 40 days later: 02, nothing stored.
        for now in [PAID_AT + window + 1, PAID_AT + 40 * 86_400_000] {
            let (code, why) = refused(at(now));
            assert_eq!(code, RspCode::AlreadyConfirmed);
            assert!(
                why.contains("20240725140237") && why.contains("replay"),
                "{why}"
            );
        }
        // Paid "in the future" (this box's clock is behind): accepted.
        paid(at(PAID_AT - 3 * 86_400_000));
        // A shorter window from config.
        let hour = Settings {
            max_age_secs: 3600,
            ..settings()
        };
        paid(super::evaluate(&get(SAMPLE), &hour, PAID_AT + 3_600_000));
        assert_eq!(
            refused(super::evaluate(&get(SAMPLE), &hour, PAID_AT + 3_600_001)).0,
            RspCode::AlreadyConfirmed
        );
        // A paid IPN without a pay date cannot be judged: 99.
        let fields = fresh("900002", PAID_AT);
        let (fields, _) = fields.split_once("&vnp_SecureHash=").expect("hash");
        let fields = fields.replace("&vnp_PayDate=20240725140237", "");
        let hash = signature::hmac_sha512_hex(SECRET.as_bytes(), fields.as_bytes());
        let (code, why) = refused(evaluate(
            &get(&format!("{fields}&vnp_SecureHash={hash}")),
            &s,
        ));
        assert_eq!(code, RspCode::Unknown);
        assert!(why.contains("vnp_PayDate"), "{why}");
        // A cancelled payment is acknowledged whatever its age.
        assert!(matches!(
            super::evaluate(&get(FAILED), &s, PAID_AT + 40 * 86_400_000),
            Verdict::Acknowledged(_)
        ));
    }

    #[test]
    fn an_ipn_paid_40_days_ago_gets_02_through_handle() {
        let host = TestHost::new().config("hash_secret", SECRET);
        let ipn = fresh("900003", time::now_ms() - 40 * 86_400_000);
        let (outcome, after) = host.run_and_keep(|| VnpayConnector::handle(get(&ipn)));
        let outcome = outcome.expect("handled");
        assert!(outcome.changes.is_empty());
        let reply = outcome.reply.expect("reply");
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.text(),
            r#"{"RspCode":"02","Message":"Order already confirmed"}"#
        );
        assert!(
            after.logs()[0].1.contains("RspCode 02"),
            "{:?}",
            after.logs()
        );
    }

    #[test]
    fn max_age_secs_config() {
        let with = |v: &str| {
            TestHost::new()
                .config("hash_secret", SECRET)
                .config("max_age_secs", v)
                .run(Settings::from_config)
        };
        assert_eq!(with("3600").map(|s| s.max_age_secs).ok(), Some(3600));
        assert_eq!(
            with(" 604800 ").map(|s| s.max_age_secs).ok(),
            Some(MAX_MAX_AGE_SECS)
        );
        for bad in ["0", "-1", "604801", "2d", "1.5"] {
            match with(bad) {
                Err(ConnectorError::Fatal(why)) => assert!(why.contains("max_age_secs"), "{why}"),
                _ => panic!("`{bad}` accepted"),
            }
        }
        let default = TestHost::new()
            .config("hash_secret", SECRET)
            .run(Settings::from_config);
        assert_eq!(
            default.map(|s| s.max_age_secs).ok(),
            Some(DEFAULT_MAX_AGE_SECS)
        );
    }

    #[test]
    fn post_with_a_form_body_or_the_query() {
        let form = HttpRequest {
            method: "POST".into(),
            body: SAMPLE.as_bytes().to_vec(),
            headers: vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            ..get("")
        };
        paid(evaluate(&form, &settings()));
        let query = HttpRequest {
            method: "POST".into(),
            ..get(SAMPLE)
        };
        paid(evaluate(&query, &settings()));
        // The query wins; a body is then not read.
        let both = HttpRequest {
            body: b"vnp_Amount=1".to_vec(),
            ..query
        };
        paid(evaluate(&both, &settings()));
    }

    #[test]
    fn failed_payment_is_acknowledged_without_a_change() {
        assert!(matches!(
            evaluate(&get(FAILED), &settings()),
            Verdict::Acknowledged(_)
        ));
        let host = TestHost::new().config("hash_secret", SECRET);
        let outcome = host
            .run(|| VnpayConnector::handle(get(FAILED)))
            .expect("handled");
        assert!(outcome.changes.is_empty());
        assert!(
            outcome
                .reply
                .expect("reply")
                .text()
                .contains(r#""RspCode":"00""#)
        );
    }

    #[test]
    fn amount_not_whole_dong_is_invalid_amount() {
        let (code, why) = refused(evaluate(&get(ODD_AMOUNT), &settings()));
        assert_eq!(code, RspCode::InvalidAmount);
        assert!(why.contains("15000050"), "{why}");
        assert_eq!(
            parse_amount("0").map_err(|e| e.0),
            Err(RspCode::InvalidAmount)
        );
        assert_eq!(parse_amount("1e5").map_err(|e| e.0), Err(RspCode::Unknown));
        assert_eq!(parse_amount("-100").map_err(|e| e.0), Err(RspCode::Unknown));
        assert_eq!(parse_amount("100"), Ok(1));
    }

    #[test]
    fn tmn_code_and_account_config() {
        let other = Settings {
            tmn_code: Some("OTHERTMN".into()),
            ..settings()
        };
        let (code, why) = refused(evaluate(&get(SAMPLE), &other));
        assert_eq!(code, RspCode::OrderNotFound);
        assert!(why.contains("DEMOSHOP"), "{why}");
        let ours = Settings {
            tmn_code: Some("DEMOSHOP".into()),
            account: Some("0123499999".into()),
            ..settings()
        };
        assert_eq!(paid(evaluate(&get(SAMPLE), &ours)).account, "0123499999");
    }

    #[test]
    fn malformed_requests_are_unknown_errors() {
        let s = settings();
        for query in ["", "a=1&b=2", "&&="] {
            let (code, why) = refused(evaluate(&get(query), &s));
            assert_eq!(code, RspCode::Unknown, "{query}");
            assert!(why.contains("no vnp_* parameters"), "{why}");
        }
        let twice = format!("{}&vnp_Amount=15000000", SAMPLE.trim());
        let (code, why) = refused(evaluate(&get(&twice), &s));
        assert_eq!(code, RspCode::Unknown);
        assert!(why.contains("vnp_Amount appears more than once"), "{why}");
        let json = HttpRequest {
            method: "POST".into(),
            body: br#"{"vnp_Amount":"15000000"}"#.to_vec(),
            ..get("")
        };
        assert_eq!(refused(evaluate(&json, &s)).0, RspCode::Unknown);
        let not_utf8 = HttpRequest {
            method: "POST".into(),
            body: vec![0xff, 0xfe],
            ..get("")
        };
        assert_eq!(refused(evaluate(&not_utf8, &s)).0, RspCode::Unknown);
    }

    #[test]
    fn missing_secret_is_fatal() {
        assert!(matches!(
            TestHost::new().run(|| VnpayConnector::handle(get(SAMPLE))),
            Err(ConnectorError::Fatal(_))
        ));
    }

    #[test]
    fn form_encode_variants() {
        let s = "a b*~!'()-_.+&=#/à";
        assert_eq!(
            form_encode(s, b""),
            "a+b%2A%7E%21%27%28%29-_.%2B%26%3D%23%2F%C3%A0"
        );
        // What Java's URLEncoder.encode(s, "UTF-8") printed for the same input.
        assert_eq!(
            form_encode(s, b"*"),
            "a+b*%7E%21%27%28%29-_.%2B%26%3D%23%2F%C3%A0"
        );
        // The SDK's encoder is that Java variant.
        assert_eq!(form_encode(s, b"*"), http::form_encode(s));
        assert_eq!(soundbox_plugin_sdk::text::truncate("àà", 3), "à");
    }
}
