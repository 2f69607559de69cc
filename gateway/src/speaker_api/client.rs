//! Client of the SePay Speaker API (developer.sepay.vn/vi/speaker-api/:
//! "tong-quan", "bat-dau-nhanh" and one page per call).
//!
//! - The token (`/token/create`, "tao-access-token": HTTP 201, the token
//!   beside the envelope, 6000 s) is fetched lazily with HTTP Basic auth,
//!   reused until shortly before it expires, and refreshed by one caller at
//!   a time (concurrent callers wait for that one refresh). There is no
//!   refresh call: a new token is created.
//! - A 401, as HTTP status or as envelope `code` inside HTTP 200, creates a
//!   new token once and retries the call once (SePay's one error example is
//!   `{"code":401,"message":"Unauthorized"}`, its HTTP status unstated).
//! - SePay does not say whether business errors are HTTP 4xx or HTTP 200
//!   with an error `code`: the envelope `code` is read whatever the HTTP
//!   status, and the HTTP status stands in when a 4xx has no envelope.
//! - SePay does not publish which codes mean offline, not paired, unknown
//!   device or wrong OTP, so no code is given a meaning: every refusal is
//!   [`SpeakerError::Refused`] with SePay's own message. A caller that needs
//!   to know why asks `pair/check` ([`SpeakerClient::check`]).
//! - 429 (HTTP or envelope) and `Retry-After` come back as
//!   [`SpeakerError::RateLimited`], 5xx as [`SpeakerError::Server`]: HTTP's
//!   meanings, an assumption (SePay publishes no rate limit for this API).
//! - With a call rate set ([`SpeakerClient::with_max_calls_per_sec`]), calls
//!   are spaced evenly so a backlog drains at the allowed rate instead of
//!   bursting into 429s.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
// std's Instant, except that tests on tokio's paused clock move it.
use tokio::time::Instant;

use super::types::{
    CheckNotifyRequest, Device, Envelope, HardwareRequest, NotifyCheck, NotifyRequest,
    NotifyStatus, PairSession, Paired, TokenReply, VerifyRequest, codes,
};
use crate::outbound::outbound_client;
use crate::retry::retry_after;
use crate::secret::Secret;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot reach the Speaker API: {0}")]
    Transport(String),
    #[error("the Speaker API is rate limiting (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx, or an envelope `code` of 500 or more.
    #[error("the Speaker API failed with code {0}")]
    Server(u16),
    #[error("the Speaker API refused the client credentials (client_id / client_secret)")]
    BadCredentials,
    /// Any other non-2xx `code`, with SePay's message. What it means is
    /// not published: ask `pair/check` rather than reading the code.
    #[error("the Speaker API refused the call: code {code}: {message}")]
    Refused { code: i64, message: String },
    #[error("unexpected answer from the Speaker API: {0}")]
    Decode(String),
}

impl SpeakerError {
    /// Worth retrying as is, later. A refusal is not: whether it will pass
    /// later (a speaker coming back online) is for `pair/check` to tell.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            SpeakerError::Transport(_) | SpeakerError::RateLimited { .. } | SpeakerError::Server(_)
        )
    }
}

/// What one HTTP exchange amounted to, before `data` is decoded.
enum Verdict {
    /// A 2xx code, with the envelope's `data`, if any.
    Ok(Option<serde_json::Value>),
    Unauthorized,
    Err(SpeakerError),
}

/// Reads an answer: the envelope `code` whatever the HTTP status, the HTTP
/// status when a 4xx has no envelope.
fn verdict(status: reqwest::StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Verdict {
    let http = i64::from(status.as_u16());
    let envelope: Option<Envelope<serde_json::Value>> = serde_json::from_slice(body).ok();
    let (code, message, data) = match envelope {
        // An HTTP error whose envelope says 2xx contradicts itself: the
        // HTTP status wins (an assumption; SePay shows no such answer).
        Some(e) if !status.is_success() && (200..300).contains(&e.code) => {
            (http, e.message.unwrap_or_default(), None)
        }
        Some(e) => (e.code, e.message.unwrap_or_default(), e.data),
        None if status.is_success() => {
            return Verdict::Err(SpeakerError::Decode(format!(
                "HTTP {status} without an envelope: {}",
                excerpt(body)
            )));
        }
        None => (http, excerpt(body), None),
    };
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || code == codes::RATE_LIMITED {
        return Verdict::Err(SpeakerError::RateLimited { retry_after });
    }
    if status.is_server_error() {
        return Verdict::Err(SpeakerError::Server(status.as_u16()));
    }
    if code >= 500 {
        return Verdict::Err(SpeakerError::Server(
            u16::try_from(code).unwrap_or(u16::MAX),
        ));
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || code == codes::UNAUTHORIZED {
        return Verdict::Unauthorized;
    }
    if (200..300).contains(&code) {
        return Verdict::Ok(data);
    }
    Verdict::Err(SpeakerError::Refused { code, message })
}

/// The start of a body that is not an envelope, for an error message.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// Where and who: base URL and the partner credentials.
#[derive(Debug, Clone)]
pub struct SpeakerCredentials {
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
}

struct Token {
    value: Secret,
    /// Refresh from here on (a margin before the real expiry).
    refresh_at: Instant,
}

pub struct SpeakerClient {
    http: reqwest::Client,
    credentials: SpeakerCredentials,
    token: Mutex<Option<Token>>,
    /// Spaces calls (token requests included) to the allowed rate, if set.
    pacer: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for SpeakerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerClient")
            .field("base_url", &self.credentials.base_url)
            .finish_non_exhaustive()
    }
}

/// How long before expiry a token is replaced: a tenth of its life, at most a minute.
fn refresh_margin(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(60))
}

impl SpeakerClient {
    pub fn new(credentials: SpeakerCredentials, timeout: Duration) -> Result<Self, SpeakerError> {
        let http = outbound_client(timeout).map_err(|e| SpeakerError::Transport(e.to_string()))?;
        Ok(SpeakerClient {
            http,
            credentials,
            token: Mutex::new(None),
            pacer: None,
        })
    }

    /// At most `rate` calls per second, evenly spaced (no bursts): `None`
    /// leaves calls unpaced.
    pub fn with_max_calls_per_sec(mut self, rate: Option<NonZeroU32>) -> Self {
        self.pacer = rate
            .map(|rate| RateLimiter::direct(Quota::per_second(rate).allow_burst(NonZeroU32::MIN)));
        self
    }

    /// Waits for the pacer's next slot, if calls are paced.
    async fn paced(&self) {
        if let Some(pacer) = &self.pacer {
            pacer.until_ready().await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.credentials.base_url.trim_end_matches('/'))
    }

    /// A valid token: the cached one, or a fresh one fetched by exactly one caller.
    async fn token(&self, stale: Option<&str>) -> Result<Secret, SpeakerError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref() {
            let is_stale = stale.is_some_and(|s| s == token.value.expose());
            if !is_stale && Instant::now() < token.refresh_at {
                return Ok(token.value.clone());
            }
        }
        let fetched = self.fetch_token().await?;
        let value = fetched.value.clone();
        *slot = Some(fetched);
        Ok(value)
    }

    /// `/token/create` ("tao-access-token"): any 2xx carrying
    /// `access_token` and `ttl` will do (SePay answers HTTP 201 and code 201,
    /// with `data` a string this client ignores, whatever its type).
    async fn fetch_token(&self) -> Result<Token, SpeakerError> {
        self.paced().await;
        let (status, retry_after, body) = self
            .post(self.http.post(self.url("/token/create")).basic_auth(
                &self.credentials.client_id,
                Some(self.credentials.client_secret.expose()),
            ))
            .await?;
        // The token sits beside the envelope, not in `data`.
        if let Some(TokenReply {
            code,
            access_token: Some(value),
            ttl: Some(ttl),
            ..
        }) = serde_json::from_slice::<TokenReply>(&body).ok()
            && status.is_success()
            && code.is_none_or(|code| (200..300).contains(&code))
        {
            // 6000 s is documented; a day at most keeps `Instant` arithmetic sane.
            let ttl = Duration::from_secs(ttl.min(86_400));
            return Ok(Token {
                value: Secret::new(value),
                refresh_at: Instant::now() + ttl - refresh_margin(ttl),
            });
        }
        match verdict(status, retry_after, &body) {
            Verdict::Ok(_) => Err(SpeakerError::Decode(
                "token reply without access_token or ttl".into(),
            )),
            Verdict::Unauthorized => Err(SpeakerError::BadCredentials),
            Verdict::Err(e) => Err(e),
        }
    }

    /// Sends a request; the status, `Retry-After` and the body.
    async fn post(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Option<Duration>, Vec<u8>), SpeakerError> {
        let response = request
            .send()
            .await
            .map_err(|e| SpeakerError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let body = response
            .bytes()
            .await
            .map_err(|e| SpeakerError::Transport(e.without_url().to_string()))?;
        Ok((status, retry_after, body.to_vec()))
    }

    /// POSTs `body` to `path` with the bearer token; on a 401 (HTTP or
    /// envelope), creates a new token once and tries once more.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, SpeakerError> {
        let mut token = self.token(None).await?;
        for attempt in 0..2 {
            self.paced().await;
            let (status, retry_after, reply) = self
                .post(
                    self.http
                        .post(self.url(path))
                        .bearer_auth(token.expose())
                        .json(body),
                )
                .await?;
            match verdict(status, retry_after, &reply) {
                Verdict::Ok(data) => {
                    let data = data.filter(|d| !d.is_null()).ok_or_else(|| {
                        SpeakerError::Decode(format!("{path}: reply without data"))
                    })?;
                    return serde_json::from_value(data)
                        .map_err(|e| SpeakerError::Decode(format!("{path}: {e}")));
                }
                Verdict::Unauthorized if attempt == 0 => {
                    token = self.token(Some(token.expose())).await?;
                }
                Verdict::Unauthorized => return Err(SpeakerError::BadCredentials),
                Verdict::Err(e) => return Err(e),
            }
        }
        Err(SpeakerError::BadCredentials)
    }

    pub async fn check(&self, hardware_id: &str) -> Result<Device, SpeakerError> {
        self.call("/speaker/pair/check", &hardware(hardware_id))
            .await
    }

    /// Asks the speaker to read a pairing OTP aloud.
    pub async fn pair_request(&self, hardware_id: &str) -> Result<PairSession, SpeakerError> {
        self.call("/speaker/pair/request", &hardware(hardware_id))
            .await
    }

    pub async fn pair_verify(
        &self,
        hardware_id: &str,
        session_id: &str,
        otp: &str,
    ) -> Result<Paired, SpeakerError> {
        let request = VerifyRequest {
            hardware_id: hardware_id.to_string(),
            session_id: session_id.to_string(),
            otp: otp.to_string(),
        };
        self.call("/speaker/pair/verify", &request).await
    }

    /// Asks the speaker to announce `amount`; `request_id` makes it idempotent.
    pub async fn notify(
        &self,
        hardware_id: &str,
        amount: u64,
        request_id: &str,
    ) -> Result<NotifyStatus, SpeakerError> {
        let request = NotifyRequest {
            hardware_id: hardware_id.to_string(),
            amount,
            request_id: request_id.to_string(),
        };
        self.call("/speaker/transactions/notify", &request).await
    }

    /// Whether SePay delivered a notification ("Chi tiết trạng thái thông
    /// báo" page): by `requestId` alone, as the page documents.
    pub async fn check_notify(&self, request_id: &str) -> Result<NotifyCheck, SpeakerError> {
        let request = CheckNotifyRequest {
            request_id: request_id.to_string(),
        };
        self.call("/speaker/transactions/check_notify", &request)
            .await
    }
}

fn hardware(hardware_id: &str) -> HardwareRequest {
    HardwareRequest {
        hardware_id: hardware_id.to_string(),
    }
}

#[cfg(test)]
mod tests;
