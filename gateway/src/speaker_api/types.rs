//! The Speaker API's wire format, as SePay's pages under
//! developer.sepay.vn/vi/speaker-api/ show it: every answer is an envelope
//! `{code, message, data}` ("tong-quan"); field names are the API's own
//! (camelCase, with `session_id` as documented). Where a struct is lenient
//! beyond the examples, its doc says so and why.

use serde::{Deserialize, Serialize};

/// Every answer. `code` is the real verdict: SePay does not say whether a
/// business error is an HTTP 4xx or HTTP 200 with an error `code`, so both
/// are read the same way. `message` may be missing (SePay's 401 example has
/// no `data`) or null.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub code: i64,
    #[serde(default)]
    pub message: Option<String>,
    pub data: Option<T>,
}

/// `/token/create` ("tao-access-token") answers HTTP 201 and puts the token beside
/// the envelope fields; its `data` is a string ("—") and is ignored, whatever
/// its type.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenReply {
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    pub access_token: Option<String>,
    /// Seconds (6000 in SePay's example).
    pub ttl: Option<u64>,
}

/// The token is a bearer credential: `{:?}` says whether there is one.
impl std::fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReply")
            .field("code", &self.code)
            .field("message", &self.message)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "[redacted]"),
            )
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareRequest {
    pub hardware_id: String,
}

/// The `pair/check` answer ("Kiểm tra thiết bị" page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub hardware_id: String,
    pub model: String,
    pub is_paired: bool,
    pub online: bool,
}

/// The `pair/request` answer ("yeu-cau-lien-ket-thiet-bi"): the speaker now
/// reads a 4-digit code aloud; the session lasts about 2 minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairSession {
    pub hardware_id: String,
    pub model: String,
    pub is_paired: bool,
    #[serde(rename = "session_id")]
    pub session_id: String,
    pub online: bool,
}

/// The `pair/verify` request ("kiem-tra-otp"): `otp` is a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    pub hardware_id: String,
    #[serde(rename = "session_id")]
    pub session_id: String,
    pub otp: String,
}

/// The `pair/verify` answer ("kiem-tra-otp").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paired {
    pub hardware_id: String,
    pub model: String,
    pub is_paired: bool,
    /// `YYYY-MM-DD HH:MM:SS`; no zone is given (Vietnam time is the safe reading).
    pub paired_time: String,
}

/// The `notify` request ("api-thong-bao-bien-dong-so-du").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyRequest {
    pub hardware_id: String,
    /// Whole đồng (the page: an integer in VND).
    pub amount: u64,
    /// Unique per transaction: SePay uses it to prevent duplicates.
    pub request_id: String,
}

/// `check_notify` takes the `requestId` alone ("Chi tiết trạng thái thông
/// báo" page): the notification is SePay's, not the speaker's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckNotifyRequest {
    pub request_id: String,
}

/// The `notify` answer ("api-thong-bao-bien-dong-so-du"): `status` is `SENT`,
/// meaning SePay took it, not that the speaker said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyStatus {
    pub hardware_id: String,
    pub request_id: String,
    pub status: String,
}

/// The `check_notify` answer's `data` ("Chi tiết trạng thái thông báo" page).
///
/// SePay sends `amount` and `retriesCount` as strings; a number is accepted
/// too (an assumption: the pages show strings only, and a type change on
/// their side should not make a delivered announcement unreadable). Only
/// `requestId` and `status` are required for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyCheck {
    pub request_id: String,
    #[serde(default)]
    pub hardware_id: String,
    /// Whole đồng, as SePay writes it ("1000").
    #[serde(default, deserialize_with = "string_or_number")]
    pub amount: String,
    pub status: NotifyState,
    /// SePay's own words for the status ("Đang chờ xử lý", "Gửi thành công"…).
    #[serde(default, deserialize_with = "string_or_null")]
    pub message: String,
    /// How often SePay retried the delivery to the speaker ("0").
    #[serde(default, deserialize_with = "string_or_number")]
    pub retries_count: String,
    #[serde(default)]
    pub last_retry_time: Option<String>,
    /// `YYYY-MM-DD HH:MM:SS`, no zone given (Vietnam time is the safe reading).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// `check_notify`'s `status`: the three SePay documents, and anything else
/// kept as is rather than failing to decode (SePay may add states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyState {
    /// "Đang chờ xử lý": not said yet (the speaker may still be talking, or
    /// SePay is still retrying the delivery).
    Pending,
    /// "Gửi thành công": the speaker said it.
    Success,
    /// "Gửi thất bại": SePay gave up delivering it.
    Failed,
    Other(String),
}

impl NotifyState {
    pub fn as_str(&self) -> &str {
        match self {
            NotifyState::Pending => "PENDING",
            NotifyState::Success => "SUCCESS",
            NotifyState::Failed => "FAILED",
            NotifyState::Other(other) => other,
        }
    }
}

impl From<&str> for NotifyState {
    fn from(text: &str) -> Self {
        match text.to_ascii_uppercase().as_str() {
            "PENDING" => NotifyState::Pending,
            "SUCCESS" => NotifyState::Success,
            "FAILED" => NotifyState::Failed,
            _ => NotifyState::Other(text.to_string()),
        }
    }
}

impl std::fmt::Display for NotifyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for NotifyState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NotifyState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(NotifyState::from(text.as_str()))
    }
}

/// A string, or a number written as one (`1000` → "1000"); null → "".
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        other => Err(D::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

/// A string; null → "".
fn string_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// Envelope codes.
///
/// SePay publishes only 200, 201 (token) and 401 ("Unauthorized", the one
/// error example); the client acts on those and on 429 and codes ≥ 500 (HTTP
/// meanings, an assumption). The rest are the simulator's own choice: SePay
/// does not publish which codes mean offline, not paired, unknown device or
/// wrong OTP, so the simulator deliberately uses a plain 400 for all of them
/// and the client must never infer a meaning from these codes (it asks
/// `pair/check` instead).
pub mod codes {
    /// Published.
    pub const OK: i64 = 200;
    /// Published: `/token/create` answers 201.
    pub const CREATED: i64 = 201;
    /// Simulator only: any refusal (offline, not paired, wrong OTP, expired
    /// session, bad request).
    pub const BAD_REQUEST: i64 = 400;
    /// Published (the one error example).
    pub const UNAUTHORIZED: i64 = 401;
    /// Simulator only: unknown device or unknown `requestId`.
    pub const NOT_FOUND: i64 = 404;
    /// Assumed (HTTP's meaning); SePay publishes no rate limit for this API.
    pub const RATE_LIMITED: i64 = 429;
}
