//! The speaker sink: each incoming payment routed to the shop's SePay
//! SoundBox speakers through the Speaker API.
//!
//! - `[[route]]` maps an account to speaker hardware ids; by default only
//!   incoming money is announced, optionally above a minimum amount.
//! - The `requestId` is derived from the payment's dedupe key and the
//!   speaker, so a retry after a crash or a timeout is idempotent at SePay.
//! - After `notify`, `check_notify` is polled a few times to confirm the
//!   speaker played it; the outcome is logged and, with `[mqtt]`, published
//!   on the `announcements` topic (as are expired and refused ones).
//! - An offline or unpaired speaker is retried until the payment is older
//!   than `speaker.max_age_secs`; then it expires with that reason.
//! - One worker handles the whole sink, in log order, so each speaker hears
//!   its payments in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::event::{AnnouncementJson, EVENT_SCHEMA, event_id, rfc3339};
use super::{RetryPolicy, Sink, SinkError};
use crate::config::{RouteConfig, SpeakerConfig};
use crate::log::{LogEntry, Settlement};
use crate::model::{Direction, now_ms};
use crate::speaker_api::client::{SpeakerClient, SpeakerError};
use crate::speaker_api::types::NotifyState;
use crate::speaker_api::words::amount_words;

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
    /// Where announcements are reported (the MQTT sink listens), if anywhere.
    announcements: Option<broadcast::Sender<AnnouncementJson>>,
    /// The speakers that already took the entry being delivered (by seq), so
    /// an entry that then expires is reported only for the others.
    announced: Mutex<(u64, Vec<String>)>,
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
            announcements: None,
            announced: Mutex::new((u64::MAX, Vec::new())),
        }
    }

    /// Reports every announcement (and expired or refused one) to `to`.
    pub fn with_announcements(mut self, to: broadcast::Sender<AnnouncementJson>) -> Self {
        self.announcements = Some(to);
        self
    }

    fn report(&self, entry: &LogEntry, hardware_id: &str, result: &str, detail: Option<String>) {
        let Some(to) = &self.announcements else {
            return;
        };
        let key = entry.change.dedupe_key();
        // No receiver (MQTT not connected yet) is not an error.
        let _ = to.send(AnnouncementJson {
            schema: EVENT_SCHEMA,
            event_id: event_id(&key),
            seq: entry.seq,
            hardware_id: hardware_id.to_string(),
            request_id: request_id(&key, hardware_id),
            amount: entry.change.amount,
            words: amount_words(entry.change.amount),
            result: result.to_string(),
            detail,
            at: rfc3339(now_ms()),
        });
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
        if let Err(e) = self
            .client
            .notify(hardware_id, entry.change.amount, &id)
            .await
        {
            return Err(self.refusal(hardware_id, e).await);
        }
        if let Ok(mut announced) = self.announced.lock() {
            if announced.0 != entry.seq {
                *announced = (entry.seq, Vec::new());
            }
            announced.1.push(hardware_id.to_string());
        }
        let mut outcome = "SENT".to_string();
        let mut detail = None;
        for _ in 0..CONFIRM_POLLS {
            match self.client.check_notify(&id).await {
                Ok(check) if check.status == NotifyState::Pending => {
                    outcome = "SENT".to_string();
                    tokio::time::sleep(CONFIRM_PAUSE).await;
                }
                Ok(check) => {
                    outcome = match check.status {
                        NotifyState::Success => "PLAYED".to_string(),
                        other => other.to_string(),
                    };
                    break;
                }
                Err(e) => {
                    outcome = "unconfirmed".to_string();
                    detail = Some(format!("check_notify failed: {e}"));
                    break;
                }
            }
        }
        self.report(entry, hardware_id, &outcome.to_ascii_lowercase(), detail);
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

impl SpeakerSink {
    /// A failed notify as the retry loop sees it. SePay does not publish
    /// which refusal codes mean offline or not paired, so a refusal is
    /// explained by `pair/check`: offline or not paired is retried (until
    /// the payment is too old), anything else is final with SePay's message.
    async fn refusal(&self, hardware_id: &str, error: SpeakerError) -> SinkError {
        if !matches!(error, SpeakerError::Refused { .. }) {
            return classify(hardware_id, error);
        }
        match self.client.check(hardware_id).await {
            Ok(d) if !d.online => {
                SinkError::retriable(format!("speaker {hardware_id} is offline: {error}"))
            }
            Ok(d) if !d.is_paired => {
                SinkError::retriable(format!("speaker {hardware_id} is not paired: {error}"))
            }
            Err(check) if check.is_retriable() => classify(hardware_id, check),
            _ => classify(hardware_id, error),
        }
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

    fn settled(&self, entry: &LogEntry, settlement: &Settlement) {
        let result = match settlement {
            Settlement::Delivered => return,
            Settlement::Expired { .. } => "expired",
            Settlement::Dead { .. } => "refused",
        };
        let done = match self.announced.lock() {
            Ok(announced) if announced.0 == entry.seq => announced.1.clone(),
            _ => Vec::new(),
        };
        for hardware_id in self.speakers_for(entry) {
            if !done.iter().any(|d| d == hardware_id) {
                let detail = settlement.reason().map(str::to_string);
                self.report(entry, hardware_id, result, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests;
