//! The HTTP forward sink: POSTs each payment as [`EventJson`] to a URL of the
//! shop's choosing (a POS, an ERP, a chain's backend), with an
//! `Idempotency-Key` header equal to the event id so the receiver can drop
//! the redeliveries that at-least-once implies.
//!
//! Status classes: 2xx delivered; 408, 429 and 5xx retried (honouring
//! `Retry-After`); any other status is permanent (dead letter); transport
//! errors and timeouts are retried.

use std::time::Duration;

use reqwest::StatusCode;

use super::event::EventJson;
use super::{RetryPolicy, Sink, SinkError, retry_after};
use crate::config::ForwardConfig;
use crate::log::LogEntry;
use crate::outbound::outbound_client;

/// Status bodies quoted in dead-letter reasons are cut to this.
const REASON_BODY_BYTES: usize = 200;

#[derive(Debug)]
pub struct HttpSink {
    config: ForwardConfig,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(config: ForwardConfig) -> Result<Self, reqwest::Error> {
        let client = outbound_client(config.timeout)?;
        Ok(HttpSink { config, client })
    }
}

/// Whether an HTTP status is worth retrying.
pub fn is_retriable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn max_age(&self) -> Option<Duration> {
        self.config.max_age
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.config.retry
    }

    async fn deliver(&self, entry: &LogEntry) -> Result<(), SinkError> {
        let event = EventJson::from_entry(entry);
        let mut request = self
            .client
            .post(self.config.url.clone())
            .header("Idempotency-Key", &event.id)
            .json(&event);
        for (name, value) in &self.config.headers {
            request = request.header(name, value.expose());
        }
        let response = request.send().await.map_err(|e| {
            // Without the URL: it may carry credentials.
            SinkError::retriable(format!("request failed: {}", e.without_url()))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(&response);
        let body = response.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(REASON_BODY_BYTES).collect();
        let reason = format!("HTTP {status}: {snippet}");
        if is_retriable(status) {
            Err(SinkError::Retriable {
                reason,
                retry_after,
            })
        } else {
            Err(SinkError::permanent(reason))
        }
    }
}

#[cfg(test)]
mod tests;
