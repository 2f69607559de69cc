//! The fleet health document as the MQTT sinks receive it: made by
//! `fleet::keep_fresh` from the gateway's status, kept retained by each sink.

use std::sync::Arc;

use tokio::sync::watch;

/// The latest document, serialized, with its fingerprint (what changed in
/// it that is worth publishing at once).
#[derive(Debug)]
pub struct HealthSnapshot {
    pub fingerprint: u64,
    pub json: Vec<u8>,
}

/// What the MQTT sinks follow.
pub type HealthFeed = watch::Receiver<Option<Arc<HealthSnapshot>>>;
