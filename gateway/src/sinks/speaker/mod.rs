//! The speaker sink: each incoming payment routed to the shop's SePay
//! SoundBox speakers through the Speaker API.
//!
//! - `[[route]]` maps an account to speaker hardware ids; by default only
//!   incoming money is announced, optionally above a minimum amount.
//! - The `requestId` is derived from the payment's dedupe key and the
//!   speaker, so a retry after a crash or a timeout is idempotent at SePay.
//! - After `notify`, `check_notify` is polled a few times to confirm the
//!   speaker played it; the outcome is logged.
//! - An offline or unpaired speaker is retried until the payment is older
//!   than `speaker.max_age_secs`; then it expires with that reason.
//! - One worker handles the whole sink, in log order, so each speaker hears
//!   its payments in order.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{RetryPolicy, Sink, SinkError};
use crate::config::{RouteConfig, SpeakerConfig};
use crate::log::LogEntry;
use crate::model::Direction;
use crate::speaker_api::client::{SpeakerClient, SpeakerError};

/// The sink's name in the log (its cursor and dead letters).
pub const SINK_NAME: &str = "speaker";

/// `check_notify` polls after a notify, and the pause between them.
const CONFIRM_POLLS: u32 = 3;
const CONFIRM_PAUSE: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct SpeakerSink {
    client: Arc<SpeakerClient>,
    config: SpeakerConfig,
    routes: Vec<RouteConfig>,
}

/// The `requestId` for `dedupe_key` on `hardware_id`: stable across retries
/// and restarts, unique per payment and speaker, 36 characters.
pub fn request_id(dedupe_key: &str, hardware_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(dedupe_key.as_bytes());
    hasher.update([0x1f]);
    hasher.update(hardware_id.as_bytes());
    format!("sbx-{}", hex::encode(&hasher.finalize()[..16]))
}

impl SpeakerSink {
    pub fn new(
        client: Arc<SpeakerClient>,
        config: SpeakerConfig,
        routes: Vec<RouteConfig>,
    ) -> Self {
        SpeakerSink {
            client,
            config,
            routes,
        }
    }

    /// The speakers that should announce `entry`.
    pub fn speakers_for(&self, entry: &LogEntry) -> Vec<&str> {
        let change = &entry.change;
        if change.direction == Direction::Out && !self.config.announce_outgoing {
            return Vec::new();
        }
        if change.amount < self.config.min_amount {
            return Vec::new();
        }
        let mut speakers: Vec<&str> = Vec::new();
        for route in &self.routes {
            let matches = route.account == "*" || route.account == change.account;
            if matches && change.amount >= route.min_amount {
                for s in &route.speakers {
                    if !speakers.contains(&s.as_str()) {
                        speakers.push(s);
                    }
                }
            }
        }
        speakers
    }

    async fn announce(&self, entry: &LogEntry, hardware_id: &str) -> Result<(), SinkError> {
        let id = request_id(&entry.change.dedupe_key(), hardware_id);
        self.client
            .notify(hardware_id, entry.change.amount, &id)
            .await
            .map_err(|e| classify(hardware_id, e))?;
        let mut outcome = "unconfirmed".to_string();
        for _ in 0..CONFIRM_POLLS {
            match self.client.check_notify(hardware_id, &id).await {
                Ok(status) if status.status == "SENT" => {
                    outcome = status.status;
                    tokio::time::sleep(CONFIRM_PAUSE).await;
                }
                Ok(status) => {
                    outcome = status.status;
                    break;
                }
                Err(e) => {
                    outcome = format!("check_notify failed: {e}");
                    break;
                }
            }
        }
        tracing::info!(
            sink = SINK_NAME,
            seq = entry.seq,
            %hardware_id,
            request_id = %id,
            amount = entry.change.amount,
            %outcome,
            "announcement sent"
        );
        Ok(())
    }
}

/// Speaker API errors as the sink's retry loop sees them.
fn classify(hardware_id: &str, error: SpeakerError) -> SinkError {
    let reason = format!("speaker {hardware_id}: {error}");
    match error {
        SpeakerError::RateLimited { retry_after } => SinkError::Retriable {
            reason,
            retry_after,
        },
        e if e.is_retriable() => SinkError::retriable(reason),
        _ => SinkError::permanent(reason),
    }
}

impl Sink for SpeakerSink {
    fn name(&self) -> &str {
        SINK_NAME
    }

    fn max_age(&self) -> Option<Duration> {
        Some(self.config.max_age)
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.config.retry
    }

    async fn deliver(&self, entry: &LogEntry) -> Result<(), SinkError> {
        // Every routed speaker, in route order; one that fails stops here
        // and the whole entry is retried (the ones done are idempotent).
        for hardware_id in self.speakers_for(entry) {
            self.announce(entry, hardware_id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
