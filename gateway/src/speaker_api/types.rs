//! The Speaker API's wire format: every answer is an envelope
//! `{code, message, data}`; field names are the API's own (camelCase, with
//! `session_id` as documented).

use serde::{Deserialize, Serialize};

/// Every answer. `code` is the real verdict: the API can answer HTTP 200
/// with an error `code`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub code: i64,
    #[serde(default)]
    pub message: String,
    pub data: Option<T>,
}

/// `/token/create` puts the token beside the envelope fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenReply {
    pub code: i64,
    #[serde(default)]
    pub message: String,
    pub access_token: Option<String>,
    /// Seconds.
    pub ttl: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareRequest {
    pub hardware_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub hardware_id: String,
    pub model: String,
    pub is_paired: bool,
    pub online: bool,
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRequest {
    pub hardware_id: String,
    #[serde(rename = "session_id")]
    pub session_id: String,
    pub otp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paired {
    pub hardware_id: String,
    pub model: String,
    pub is_paired: bool,
    /// `YYYY-MM-DD HH:MM:SS`, Vietnam time.
    pub paired_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyRequest {
    pub hardware_id: String,
    /// Whole đồng.
    pub amount: u64,
    /// Unique per payment and speaker: the API's idempotency key.
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckNotifyRequest {
    pub hardware_id: String,
    pub request_id: String,
}

/// `notify` and `check_notify` answers. `status` is `SENT` after notify;
/// `check_notify` reports whether the speaker played it (`PLAYED`), is still
/// to (`SENT`), or could not (`FAILED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyStatus {
    pub hardware_id: String,
    pub request_id: String,
    pub status: String,
}

/// Envelope codes the simulator uses for business errors (HTTP 200), and
/// the client maps to typed errors.
pub mod codes {
    pub const OK: i64 = 200;
    pub const CREATED: i64 = 201;
    pub const BAD_REQUEST: i64 = 400;
    pub const UNAUTHORIZED: i64 = 401;
    pub const NOT_PAIRED: i64 = 403;
    pub const NOT_FOUND: i64 = 404;
    pub const OFFLINE: i64 = 409;
    pub const SESSION_EXPIRED: i64 = 410;
    pub const WRONG_OTP: i64 = 422;
    pub const RATE_LIMITED: i64 = 429;
}
