//! The speaker sink: each incoming payment routed to the shop's SePay
//! SoundBox speakers through the Speaker API, one lane per speaker.
//!
//! - `[[route]]` maps an account to speaker hardware ids; by default only
//!   incoming money is announced, optionally above a minimum amount.
//! - **One lane per speaker** ([`lane::SpeakerLane`]): each is a sink of its
//!   own in the log (`speaker:<hardware id>`, with its own cursor, outcomes
//!   and dead letters), so a speaker that is offline, retrying or rate
//!   limited holds only its own payments. Within a lane, payments are
//!   announced in log order.
//! - The `requestId` is derived from the payment's dedupe key and the
//!   speaker, so a retry after a crash or a timeout is idempotent at SePay.
//! - `notify` answering `SENT` frees the lane; `check_notify` is polled
//!   beside it ([`confirm`]) and the outcome is published on MQTT's
//!   `announcements` topic.
//! - A refused notify is classified by asking `pair/check` ([`lane`]), never
//!   by a guessed error code: SePay does not publish its codes.
//! - Every routed speaker is checked with `pair/check` at start, after
//!   failures and every minute ([`health`]).

pub mod confirm;
pub mod health;
pub mod lane;

use sha2::{Digest, Sha256};

use crate::config::{RouteConfig, SpeakerConfig};
use crate::log::LogEntry;
use crate::model::Direction;

pub use health::{SpeakerHealth, SpeakerState};
pub use lane::{SpeakerLane, SpeakerService};

/// What the speaker sink was called before it had lanes: its cursor is
/// where the lanes start on the first run after an upgrade.
pub const LEGACY_SINK_NAME: &str = "speaker";

/// Lane names start with this, then the speaker's hardware id.
pub const LANE_PREFIX: &str = "speaker:";

/// The log's name for `hardware_id`'s lane (its cursor and dead letters).
pub fn lane_name(hardware_id: &str) -> String {
    format!("{LANE_PREFIX}{hardware_id}")
}

/// The speaker a lane name belongs to, if it is one.
pub fn lane_speaker(sink: &str) -> Option<&str> {
    sink.strip_prefix(LANE_PREFIX)
}

/// Every speaker the routes name, once each, in route order.
pub fn routed_speakers(routes: &[RouteConfig]) -> Vec<String> {
    let mut speakers: Vec<String> = Vec::new();
    for s in routes.iter().flat_map(|r| &r.speakers) {
        if !speakers.contains(s) {
            speakers.push(s.clone());
        }
    }
    speakers
}

/// The routes that name `hardware_id`: all a lane needs to know.
pub fn routes_of(routes: &[RouteConfig], hardware_id: &str) -> Vec<RouteConfig> {
    routes
        .iter()
        .filter(|r| r.speakers.iter().any(|s| s == hardware_id))
        .cloned()
        .collect()
}

/// The speakers that should announce `entry`, in route order.
pub fn speakers_for<'a>(
    config: &SpeakerConfig,
    routes: &'a [RouteConfig],
    entry: &LogEntry,
) -> Vec<&'a str> {
    let change = &entry.change;
    if change.direction == Direction::Out && !config.announce_outgoing {
        return Vec::new();
    }
    // notify takes whole đồng: another currency must never be spoken as VND.
    if !change.currency.eq_ignore_ascii_case("VND") {
        return Vec::new();
    }
    if change.amount < config.min_amount {
        return Vec::new();
    }
    let mut speakers: Vec<&str> = Vec::new();
    for route in routes {
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

/// Which payments go to which speaker, for the views of the lanes'
/// queues (`queue status|list`, the status page): a lane's backlog is the
/// payments routed to its speaker, not every payment after its cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub config: SpeakerConfig,
    pub routes: Vec<RouteConfig>,
}

impl Routing {
    /// The routing of `config`, when it has a `[speaker]`.
    pub fn of(config: &crate::config::Config) -> Option<Routing> {
        Some(Routing {
            config: config.speaker.clone()?,
            routes: config.routes.clone(),
        })
    }

    /// Whether `sink` is a lane and `entry` is routed to its speaker; None
    /// for a sink that is not a lane (it takes everything).
    pub fn lane_wants(&self, sink: &str, entry: &LogEntry) -> Option<bool> {
        let hw = lane_speaker(sink)?;
        Some(speakers_for(&self.config, &self.routes, entry).contains(&hw))
    }
}

/// The `requestId` for `dedupe_key` on `hardware_id`: stable across retries
/// and restarts, unique per payment and speaker, 36 characters of letters,
/// digits and `-` (SePay publishes no limit; speaker-api.md keeps ids at
/// most 40 plain characters).
pub fn request_id(dedupe_key: &str, hardware_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(dedupe_key.as_bytes());
    hasher.update([0x1f]);
    hasher.update(hardware_id.as_bytes());
    format!("sbx-{}", hex::encode(&hasher.finalize()[..16]))
}

/// The `requestId` of the one new notify a `FAILED` announcement gets: a
/// new id, since SePay dedupes by `requestId` and would not play the first
/// one again; derived, so a crash and restart cannot make it a third play.
pub fn retry_request_id(request_id: &str) -> String {
    format!("{request_id}-r1")
}

#[cfg(test)]
mod tests;
