//! The JSON the gateway publishes: each payment ([`EventJson`], on MQTT's
//! `events` topic and to HTTP forwards) and what each speaker was asked to
//! say ([`AnnouncementJson`], on MQTT's `announcements` topic). Consumers
//! depend on them: fields are only ever added, and `schema` changes when a
//! field's meaning does.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::log::LogEntry;
use crate::model::Direction;

/// Bumped only on an incompatible change.
pub const EVENT_SCHEMA: u32 = 1;

/// One payment as sinks publish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventJson {
    pub schema: u32,
    /// Stable for the payment (derived from provider + transaction id), so
    /// consumers dedupe by it across retries and restarts.
    pub id: String,
    /// Position in this gateway's log.
    pub seq: u64,
    pub provider: String,
    pub connector: String,
    pub account: String,
    pub direction: Direction,
    pub amount: u64,
    pub currency: String,
    pub transaction_id: String,
    pub reference: Option<String>,
    pub counterparty: Option<String>,
    pub content: Option<String>,
    /// RFC 3339, UTC; when the bank booked it, if the connector knows.
    pub occurred_at: Option<String>,
    /// RFC 3339, UTC; when the gateway received it.
    pub received_at: String,
}

/// A stable id for a payment: 32 hex characters of SHA-256 of its dedupe key.
pub fn event_id(dedupe_key: &str) -> String {
    let digest = Sha256::digest(dedupe_key.as_bytes());
    hex::encode(&digest[..16])
}

/// What one speaker was asked to say about one payment, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnouncementJson {
    pub schema: u32,
    /// The payment's [`EventJson::id`].
    pub event_id: String,
    pub seq: u64,
    pub hardware_id: String,
    /// The Speaker API `requestId` (stable for this payment and speaker).
    pub request_id: String,
    pub amount: u64,
    /// What the speaker says, in Vietnamese.
    pub words: String,
    /// `played`, `sent` (accepted, play not yet confirmed), `failed` (the
    /// speaker could not play it), `unconfirmed` (accepted, status unknown),
    /// `expired` (too old to announce, not sent) or `refused` (the API
    /// refused it for good, e.g. an unknown speaker).
    pub result: String,
    /// Why, for `failed`, `unconfirmed`, `expired` and `refused`.
    pub detail: Option<String>,
    /// RFC 3339, UTC.
    pub at: String,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

impl EventJson {
    pub fn from_entry(entry: &LogEntry) -> Self {
        let c = &entry.change;
        EventJson {
            schema: EVENT_SCHEMA,
            id: event_id(&c.dedupe_key()),
            seq: entry.seq,
            provider: c.provider.clone(),
            connector: c.connector.clone(),
            account: c.account.clone(),
            direction: c.direction,
            amount: c.amount,
            currency: c.currency.clone(),
            transaction_id: c.transaction_id.clone(),
            reference: c.reference.clone(),
            counterparty: c.counterparty.clone(),
            content: c.content.clone(),
            occurred_at: c.occurred_at_ms.map(rfc3339),
            received_at: rfc3339(c.received_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable_and_distinguishes_payments() {
        assert_eq!(event_id("sepay\u{1f}1"), event_id("sepay\u{1f}1"));
        assert_ne!(event_id("sepay\u{1f}1"), event_id("sepay\u{1f}2"));
        assert_eq!(event_id("sepay\u{1f}1").len(), 32);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
