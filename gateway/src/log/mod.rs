//! The store: everything durable, and the rules that keep "acknowledged
//! means announced" true, in one place.
//!
//! - [`EventLog::append`] resolves only after the changes (and the plugin
//!   KV writes of the call that returned them) would survive a power cut:
//!   one record in the event log's segment files and one `fdatasync`,
//!   group-committed so concurrent appends share it ([`segment`],
//!   [`committer`]).
//! - A dedupe index on `(provider, transaction id)` makes a repeated payment a
//!   no-op that is still acknowledged.
//! - A persisted registry of sinks. Each registered sink acknowledges entries
//!   in any order; the store works out its cursor (the first entry still
//!   open), with outcome, cursor and counters changed in one write. GC keeps
//!   whatever a registered sink still needs, running or not; only
//!   [`Store::forget`] lets go of a sink.
//! - Writes go through one committer thread; reads run on tokio's blocking
//!   pool. No disk call runs on an async worker.
//! - After a failure (a really full disk) the committer reopens sled in place
//!   and replays the records since the last checkpoint: no restart needed.
//!
//! The payments stay in the segments ([`segments`]: the files and the
//! in-memory index that finds a payment by sequence number); sled holds the
//! rest ([`engine`] lays it out), so neither sled's memory nor its writes
//! grow with the backlog. [`disk`] is the seam tests use to make the disk
//! slow or failing.

mod committer;
pub mod disk;
mod engine;
mod open;
pub mod record;
mod segment;
mod segments;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::BalanceChange;

pub use record::{DecodeError, LogEntry};
pub use store::Store;

/// Why the log could not do what was asked. Ingress answers 503 to every one
/// of these, so the sender retries and nothing acknowledged is lost.
///
/// How it prints: the `Display` text is the whole story, ending with the
/// error underneath (`storage failed: segment write: No space left on
/// device`), so `%error` in a log line or `to_string()` loses nothing.
/// `source()` hands the same underlying error to code that wants it (its
/// `io::ErrorKind`, say); a chain printer must not print it again, which
/// [`crate::error::chain`] sees to. It is `Clone` (one commit failure answers
/// every caller of a batch), so the underlying errors are shared in an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the event log is full ({0}); free disk space or raise log.max_disk_mb")]
    Full(#[source] StorageError),
    #[error("storage failed: {0}")]
    Storage(#[source] StorageError),
    #[error("the event log in {0} is in use by another gateway process")]
    Locked(String),
    #[error(
        "the event log was written by a newer gateway (schema {found}, this one reads up to {supported})"
    )]
    NewerSchema { found: u8, supported: u8 },
    #[error("the event log is shut down")]
    Closed,
    #[error("sink `{0}` is not registered in the store (forgotten, or never configured)")]
    NotRegistered(String),
    #[error(
        "the event log store {path} cannot be opened ({reason}); it is left as it is. \
         Only `soundbox-gateway run` recovers a damaged store (it moves it aside and \
         salvages what still reads): start the gateway (systemctl start soundbox-gateway)"
    )]
    Damaged {
        path: String,
        #[source]
        reason: StorageError,
    },
}

impl LogError {
    /// `Storage`: `context` (what was being done) failed with `source`.
    pub(crate) fn storage(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        LogError::Storage(StorageError::new(context, source))
    }

    /// `Full` if the disk or a quota ran out, else `Storage`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let kind = source.kind();
        let error = StorageError::new(context, source);
        match kind {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                LogError::Full(error)
            }
            _ => LogError::Storage(error),
        }
    }
}

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Storage(StorageError::new(String::new(), e))
    }
}

/// What a store call was doing when it failed, and the error underneath
/// when there is one. Prints as `context: cause` (or either alone).
#[derive(Debug, Clone)]
pub struct StorageError {
    context: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    pub fn new(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError {
            context: context.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A failure with nothing underneath (a refusal, a panic).
    pub fn msg(context: impl Into<String>) -> Self {
        StorageError {
            context: context.into(),
            source: None,
        }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) if self.context.is_empty() => write!(f, "{source}"),
            Some(source) => write!(f, "{}: {source}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
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

/// What one [`EventLog::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// One per change, in order.
    pub appended: Vec<Appended>,
    /// Whether the plugin's KV writes went in with them, or why not
    /// (a compare-and-swap that no longer holds, a quota).
    pub kv: Result<(), String>,
}

/// One plugin KV write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Set(String, Vec<u8>),
    Delete(String),
    /// Set `key` to `new` only if it still holds `expected` (None: absent).
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

/// What the store asks of whoever keeps the KV quotas.
pub trait KvQuota: Send + Sync + std::fmt::Debug {
    /// Whether `connector` may grow by `keys` keys and `bytes` bytes.
    fn check(&self, connector: &str, keys: i64, bytes: i64) -> Result<(), String>;
    /// The writes that passed [`KvQuota::check`] are durable.
    fn applied(&self, connector: &str, keys: i64, bytes: i64);
}

/// The KV writes of one plugin call, committed with the changes it returned:
/// a poller's cursor and the payments before it move together. Checked
/// against the store as it is at commit time; if a check fails none of them
/// is applied (the changes still are).
#[derive(Debug, Clone)]
pub struct KvBatch {
    pub connector: String,
    pub ops: Vec<KvOp>,
    pub quota: Arc<dyn KvQuota>,
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
    /// 2 MiB: draining a 100,000-payment backlog took 17 MiB over an empty
    /// store's peak with it and 27 MiB with 8 MiB, and drained faster
    /// (`cargo bench --bench backlog`); sinks read recent entries.
    pub cache_bytes: u64,
    /// How long a `(provider, transaction id)` is remembered.
    pub dedupe_retention: Duration,
    /// How long an entry every sink is done with stays readable (status page, `queue list`).
    pub keep_settled: Duration,
    /// Refuse appends once the store is this large.
    pub max_disk_bytes: u64,
    /// Refuse appends once the filesystem has less than this free.
    pub min_free_disk_bytes: u64,
    /// Size of one segment file of the event log (written once, then
    /// reused once collected).
    pub segment_bytes: u64,
    /// How long a commit that must sync waits for the webhooks on their way
    /// to an append ([`AppendExpected`]) to join it: PostgreSQL's
    /// `commit_delay` with `commit_siblings`, but only while one is really
    /// coming; alone, a webhook's commit starts at once. 500 µs: with 32
    /// senders on the e2e load, 2.8 → 2.25 KiB written per payment, same
    /// rate. The bound is what a slow plugin call (one waiting on its own
    /// HTTP request) costs every sync made while it runs.
    pub gather: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            cache_bytes: 2 << 20,
            dedupe_retention: Duration::from_secs(30 * 24 * 3600),
            keep_settled: Duration::from_secs(24 * 3600),
            max_disk_bytes: 1 << 30,
            min_free_disk_bytes: 64 << 20,
            segment_bytes: 4 << 20,
            gather: Duration::from_micros(500),
        }
    }
}

/// A webhook on its way to [`EventLog::append`], from its arrival until
/// right before its append is queued (dropped then: dropped after, a
/// committer that already has the append would wait for it in vain). While
/// any is, the committer holds a commit that must sync a little longer, so
/// they share its `fdatasync` and page writes instead of each paying for
/// its own; alone, a webhook waits for nobody.
#[derive(Debug, Default)]
pub struct AppendExpected(Option<Arc<AtomicUsize>>);

impl AppendExpected {
    /// Counts one more expected append in `expected` until dropped.
    fn counted_in(expected: &Arc<AtomicUsize>) -> Self {
        expected.fetch_add(1, Ordering::AcqRel);
        AppendExpected(Some(expected.clone()))
    }
}

impl Drop for AppendExpected {
    fn drop(&mut self) {
        if let Some(expected) = &self.0 {
            expected.fetch_sub(1, Ordering::Release);
        }
    }
}

/// What the store's async calls return.
pub type LogFuture<T> = Pin<Box<dyn Future<Output = Result<T, LogError>> + Send>>;

/// What ingress and the sinks need from the store, and nothing more.
pub trait EventLog: Send + Sync + std::fmt::Debug + 'static {
    /// Makes `changes` (and `kv`, the plugin's writes from the same call)
    /// durable; resolves only once they would survive a power cut.
    fn append(&self, changes: Vec<BalanceChange>, kv: Option<KvBatch>) -> LogFuture<Committed>;

    /// Says an append is coming (a webhook is in its plugin); drop the
    /// guard right before calling [`EventLog::append`].
    fn expect_append(&self) -> AppendExpected {
        AppendExpected::default()
    }

    /// The next sequence number to be assigned; changes after every commit.
    fn watch(&self) -> watch::Receiver<u64>;

    /// Up to `limit` entries with `seq >= from`, in order. Entries that fail
    /// their checksum are quarantined and skipped, never returned.
    fn read(&self, from: u64, limit: usize) -> LogFuture<Vec<LogEntry>>;

    /// The first entry registered `sink` has not settled or passed. Only
    /// reads: registering is [`Store::register`].
    fn cursor(&self, sink: &str) -> LogFuture<u64>;

    /// Dead letters of `sink` that an operator asked to send again, oldest first.
    fn requeued(&self, sink: &str, limit: usize) -> LogFuture<Vec<LogEntry>>;

    /// What `sink` should deliver next, in one trip to the disk: its
    /// requeued dead letters if any (flagged `true`), else up to `limit`
    /// entries from its cursor.
    fn next_batch(&self, sink: &str, limit: usize) -> LogFuture<(Vec<LogEntry>, bool)>;

    /// Records how `sink` finished with `seqs`, in any order; the store moves
    /// the cursor over every entry settled so far without a gap.
    fn settle(&self, sink: &str, seqs: Vec<u64>, settlement: Settlement) -> LogFuture<()>;

    /// Marks the entries up to `through` as not for `sink` (a speaker lane
    /// passes the payments routed to other speakers): no outcome, the cursor
    /// moves past them. Never moves a cursor back.
    fn pass(&self, sink: &str, through: u64) -> LogFuture<()>;
}

/// What one GC pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub events_removed: u64,
    pub dedupe_removed: u64,
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
    /// Whether the config names this sink. One that is registered but not
    /// configured still holds its backlog until `queue forget`.
    #[serde(default = "configured_by_default")]
    pub configured: bool,
}

fn configured_by_default() -> bool {
    true
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

/// A fresh store in a temp dir for tests, each given sink registered at
/// its beginning; no free-space floor (a test machine's disk may be nearly
/// full).
#[cfg(test)]
pub(crate) fn scratch_log(sinks: &[&str]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        min_free_disk_bytes: 0,
        segment_bytes: 1 << 20,
        ..LogOptions::default()
    };
    let log = Store::open(dir.path(), options).expect("open scratch log");
    for sink in sinks {
        block_on(log.register(sink, Some(0))).expect("register");
    }
    (dir, log)
}

/// Waits for a store future from synchronous code (tests, GC's thread), on
/// a thread of its own so it works inside or outside a runtime.
pub fn block_on<T: Send>(future: LogFuture<T>) -> Result<T, LogError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LogError::storage("runtime", e))?
                    .block_on(future)
            })
            .join()
            .map_err(|_| LogError::Storage(StorageError::msg("store call panicked")))?
    })
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::LogError;

    #[test]
    fn a_storage_error_keeps_its_cause_and_prints_it_once() {
        let full = io::ErrorKind::StorageFull;
        let error = LogError::io("create /data/events/7", full.into());
        assert!(matches!(error, LogError::Full(_)), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "the event log is full (create /data/events/7: {}); \
                 free disk space or raise log.max_disk_mb",
                io::Error::from(full)
            )
        );
        let cause = std::error::Error::source(&error)
            .and_then(|e| e.source())
            .and_then(|e| e.downcast_ref::<io::Error>());
        assert_eq!(cause.map(io::Error::kind), Some(full));
        assert_eq!(crate::error::chain(&error), error.to_string());

        let denied = LogError::io("open state/db", io::ErrorKind::PermissionDenied.into());
        assert!(matches!(denied, LogError::Storage(_)), "{denied}");
    }
}
