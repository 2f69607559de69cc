//! The durable event log: the single source of truth between the connectors
//! and the sinks.
//!
//! - [`EventLog::append`] resolves only after the changes are on disk in a way
//!   that survives a power cut (sled `flush()` followed by `fdatasync` of
//!   sled's data file), group-committed so concurrent appends share one sync. Ingress
//!   answers the sender 2xx only after that.
//! - A dedupe index on `(provider, transaction id)` makes a repeated payment a
//!   no-op that is still acknowledged.
//! - Each sink keeps its own cursor and per-entry outcomes in the same store,
//!   so one sink being down never holds back another.
//!
//! [`SledLog`] is the one backend; the trait is what the rest of the flow sees.

mod committer;
mod open;
pub mod record;
mod sled_log;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::BalanceChange;

pub use record::{DecodeError, LogEntry};
pub use sled_log::{GcReport, SledLog};

/// Why the log could not do what was asked. Ingress answers 503 to every one
/// of these, so the sender retries and nothing acknowledged is lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the event log is full ({0}); free disk space or raise log.max_disk_mb")]
    Full(String),
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the event log in {0} is in use by another gateway process")]
    Locked(String),
    #[error(
        "the event log was written by a newer gateway (schema {found}, this one reads up to {supported})"
    )]
    NewerSchema { found: u8, supported: u8 },
    #[error("the event log is shut down")]
    Closed,
    #[error(
        "the event log store {path} cannot be opened ({reason}); it is left as it is. \
         Only `soundbox-gateway run` recovers a damaged store (it moves it aside and \
         salvages what still reads): start the gateway (systemctl start soundbox-gateway)"
    )]
    Damaged { path: String, reason: String },
}

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Storage(e.to_string())
    }
}

/// What happened to one change handed to [`EventLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly in the log at this sequence number.
    New(u64),
    /// Already in the log (same provider and transaction id) at this sequence number.
    Duplicate(u64),
}

/// How a sink finished with an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Settlement {
    Delivered,
    /// Too old for this sink when its turn came (kept, and still published elsewhere).
    Expired {
        reason: String,
    },
    /// Refused for good (e.g. a 4xx); kept as a dead letter until retried.
    Dead {
        reason: String,
    },
}

impl Settlement {
    pub fn state(&self) -> &'static str {
        match self {
            Settlement::Delivered => "delivered",
            Settlement::Expired { .. } => "expired",
            Settlement::Dead { .. } => "dead",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Settlement::Delivered => None,
            Settlement::Expired { reason } | Settlement::Dead { reason } => Some(reason),
        }
    }
}

/// Tunables of the log; [`LogOptions::default`] suits a Raspberry Pi.
#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// sled's page cache (its own default, 1 GiB, is more than a Pi has).
    pub cache_bytes: u64,
    /// How long a `(provider, transaction id)` is remembered.
    pub dedupe_retention: Duration,
    /// How long an entry every sink is done with stays readable (status page, `queue list`).
    pub keep_settled: Duration,
    /// Refuse appends once the store is this large.
    pub max_disk_bytes: u64,
    /// Refuse appends once the filesystem has less than this free.
    pub min_free_disk_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            cache_bytes: 8 << 20,
            dedupe_retention: Duration::from_secs(30 * 24 * 3600),
            keep_settled: Duration::from_secs(24 * 3600),
            max_disk_bytes: 1 << 30,
            min_free_disk_bytes: 64 << 20,
        }
    }
}

/// The future [`EventLog::append`] returns.
pub type AppendFuture = Pin<Box<dyn Future<Output = Result<Vec<Appended>, LogError>> + Send>>;

/// What ingress and the sinks need from the log, and nothing more.
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Makes `changes` durable; resolves with one [`Appended`] per change, in
    /// order, only once they would survive a power cut.
    fn append(&self, changes: Vec<BalanceChange>) -> AppendFuture;

    /// The next sequence number to be assigned; changes after every commit.
    fn watch(&self) -> watch::Receiver<u64>;

    /// Up to `limit` entries with `seq >= from`, in order. Entries that fail
    /// their checksum are quarantined and skipped, never returned.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<LogEntry>, LogError>;

    /// The first sequence number `sink` has not settled yet. A sink seen for
    /// the first time starts at the end of the log (it does not replay history).
    fn cursor(&self, sink: &str) -> Result<u64, LogError>;

    /// Dead letters of `sink` that an operator asked to send again, oldest first.
    fn requeued(&self, sink: &str, limit: usize) -> Result<Vec<LogEntry>, LogError>;

    /// Records how `sink` finished with `seq` and moves its cursor past it.
    fn settle(&self, sink: &str, seq: u64, settlement: &Settlement) -> Result<(), LogError>;

    /// [`EventLog::settle`] for many entries in one write (a sink that
    /// delivers a window at a time); the cursor moves past the highest.
    fn settle_many(
        &self,
        sink: &str,
        seqs: &[u64],
        settlement: &Settlement,
    ) -> Result<(), LogError>;

    /// Moves `sink`'s cursor past `through` without recording an outcome:
    /// the entries up to it are not for this sink (a speaker lane passes
    /// the payments routed to other speakers). Never moves a cursor back.
    fn pass(&self, sink: &str, through: u64) -> Result<(), LogError>;
}

/// The state of one sink's queue, for `queue status` and the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    pub sink: String,
    pub cursor: u64,
    /// Entries not yet settled (including requeued dead letters).
    pub pending: u64,
    /// Age of the oldest pending entry, ms.
    pub oldest_pending_age_ms: Option<i64>,
    pub dead_letters: u64,
    pub delivered: u64,
    pub expired: u64,
}

/// One entry as `queue list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub seq: u64,
    pub appended_at_ms: i64,
    pub provider: String,
    pub transaction_id: String,
    pub account: String,
    pub amount: u64,
    pub currency: String,
    /// `pending`, `requeued`, `delivered`, `expired` or `dead`.
    pub state: String,
    pub reason: Option<String>,
}

/// What went wrong with the store and what was done about it; shown in
/// health, logs and `queue status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHealth {
    /// A store that would not open, moved aside to this path.
    pub damaged_store: Option<String>,
    /// Entries copied out of the damaged store.
    pub salvaged: u64,
    /// Entries that failed their checksum, moved to the quarantine tree.
    pub quarantined: u64,
    /// The last storage error, if the most recent commit failed.
    pub last_error: Option<String>,
}

impl LogHealth {
    pub fn is_degraded(&self) -> bool {
        self.damaged_store.is_some() || self.quarantined > 0 || self.last_error.is_some()
    }
}

/// A fresh log in a temp dir for tests, each given sink starting at its
/// beginning; no free-space floor (a test machine's disk may be nearly full).
#[cfg(test)]
pub(crate) fn scratch_log(sinks: &[&str]) -> (tempfile::TempDir, SledLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        min_free_disk_bytes: 0,
        ..LogOptions::default()
    };
    let log = SledLog::open(dir.path(), options).expect("open scratch log");
    for sink in sinks {
        log.cursor(sink).expect("cursor");
    }
    (dir, log)
}
