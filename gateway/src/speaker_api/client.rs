//! Client of the SePay Speaker API.
//!
//! - The token is fetched lazily with HTTP Basic auth, reused until shortly
//!   before it expires, and refreshed by one caller at a time (concurrent
//!   callers wait for that one refresh instead of each fetching their own).
//! - A 401 on a call refreshes the token once and retries the call once.
//! - Every answer is an envelope `{code, message, data}`; a non-2xx `code`
//!   is an error even inside HTTP 200.
//! - 429 and `Retry-After` come back as [`SpeakerError::RateLimited`]; the
//!   caller (the sink's retry loop) decides when to try again.
//! - With a call rate set ([`SpeakerClient::with_max_calls_per_sec`]), calls
//!   are spaced evenly so a backlog drains at the API's allowed rate instead
//!   of bursting into 429s.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::types::{
    CheckNotifyRequest, Device, Envelope, HardwareRequest, NotifyRequest, NotifyStatus,
    PairSession, Paired, TokenReply, VerifyRequest, codes,
};
use crate::config::Secret;
use crate::sinks::http::outbound_client;
use crate::sinks::retry_after;

/// The production API.
pub const DEFAULT_BASE_URL: &str = "https://speaker-api.sepay.vn/devices/v1";

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot reach the Speaker API: {0}")]
    Transport(String),
    #[error("the Speaker API is rate limiting (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the Speaker API failed with HTTP {0}")]
    Server(u16),
    #[error("the Speaker API refused the client credentials (client_id / client_secret)")]
    BadCredentials,
    #[error("the speaker is not paired")]
    NotPaired,
    #[error("the speaker is offline")]
    Offline,
    /// No such speaker (or, for `check_notify`, no such notification).
    #[error("not found: {0}")]
    NotFound(String),
    #[error("wrong OTP")]
    WrongOtp,
    #[error("the pairing session expired; request a new OTP")]
    SessionExpired,
    #[error("the Speaker API refused the call: code {code}: {message}")]
    Refused { code: i64, message: String },
    #[error("unexpected answer from the Speaker API: {0}")]
    Decode(String),
}

impl SpeakerError {
    /// Worth retrying as is, later.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            SpeakerError::Transport(_)
                | SpeakerError::RateLimited { .. }
                | SpeakerError::Server(_)
                | SpeakerError::Offline
                | SpeakerError::NotPaired
        )
    }

    fn from_code(code: i64, message: String) -> SpeakerError {
        match code {
            codes::NOT_PAIRED => SpeakerError::NotPaired,
            codes::OFFLINE => SpeakerError::Offline,
            codes::NOT_FOUND => SpeakerError::NotFound(message),
            codes::WRONG_OTP => SpeakerError::WrongOtp,
            codes::SESSION_EXPIRED => SpeakerError::SessionExpired,
            codes::RATE_LIMITED => SpeakerError::RateLimited { retry_after: None },
            _ => SpeakerError::Refused { code, message },
        }
    }
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

    async fn fetch_token(&self) -> Result<Token, SpeakerError> {
        self.paced().await;
        let response = self
            .http
            .post(self.url("/token/create"))
            .basic_auth(
                &self.credentials.client_id,
                Some(self.credentials.client_secret.expose()),
            )
            .send()
            .await
            .map_err(|e| SpeakerError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SpeakerError::BadCredentials);
        }
        check_status(&response)?;
        let reply: TokenReply = response
            .json()
            .await
            .map_err(|e| SpeakerError::Decode(e.without_url().to_string()))?;
        if !(200..300).contains(&reply.code) {
            return Err(SpeakerError::from_code(reply.code, reply.message));
        }
        let (Some(value), Some(ttl)) = (reply.access_token, reply.ttl) else {
            return Err(SpeakerError::Decode(
                "token reply without access_token or ttl".into(),
            ));
        };
        let ttl = Duration::from_secs(ttl);
        Ok(Token {
            value: Secret::new(value),
            refresh_at: Instant::now() + ttl - refresh_margin(ttl),
        })
    }

    /// POSTs `body` to `path` with the bearer token; on 401, refreshes the
    /// token once and tries once more.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, SpeakerError> {
        let mut token = self.token(None).await?;
        for attempt in 0..2 {
            self.paced().await;
            let response = self
                .http
                .post(self.url(path))
                .bearer_auth(token.expose())
                .json(body)
                .send()
                .await
                .map_err(|e| SpeakerError::Transport(e.without_url().to_string()))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                if attempt == 0 {
                    token = self.token(Some(token.expose())).await?;
                    continue;
                }
                return Err(SpeakerError::BadCredentials);
            }
            check_status(&response)?;
            let envelope: Envelope<T> = response
                .json()
                .await
                .map_err(|e| SpeakerError::Decode(e.without_url().to_string()))?;
            if !(200..300).contains(&envelope.code) {
                return Err(SpeakerError::from_code(envelope.code, envelope.message));
            }
            return envelope
                .data
                .ok_or_else(|| SpeakerError::Decode(format!("{path}: reply without data")));
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

    pub async fn check_notify(
        &self,
        hardware_id: &str,
        request_id: &str,
    ) -> Result<NotifyStatus, SpeakerError> {
        let request = CheckNotifyRequest {
            hardware_id: hardware_id.to_string(),
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

/// 429 and 5xx become errors before the body is read.
fn check_status(response: &reqwest::Response) -> Result<(), SpeakerError> {
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(SpeakerError::RateLimited {
            retry_after: retry_after(response),
        });
    }
    if status.is_server_error() {
        return Err(SpeakerError::Server(status.as_u16()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
