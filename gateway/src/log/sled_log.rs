//! The sled backend of the event log.
//!
//! Trees:
//! - `events`: seq (u64 BE) → record ([`super::record`]).
//! - `dedupe`: `provider\x1ftransaction id` → seq BE ++ appended-at BE.
//! - `meta`: `schema`; `next_seq` (written by GC before it removes entries,
//!   so sequence numbers never repeat even when every entry was collected).
//! - `quarantine`: seq BE → the bytes that failed their checksum.
//! - `sink/<name>`: `c` → cursor BE; `o`+seq → settlement JSON;
//!   `d`+seq → () (dead letters); `r`+seq → () (requeued); `n/<state>` → count BE;
//!   `handed-over` → () once its cursor went to other sinks (speaker lanes).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::committer::{self, Message, Request};
use super::open::Recovery;
use super::record::{self, LogEntry};
use super::{
    AppendFuture, EventLog, LogError, LogHealth, LogOptions, QueueItem, Settlement, SinkStatus,
};
use crate::model::{BalanceChange, now_ms};

pub(super) const NEXT_SEQ: &[u8] = b"next_seq";
pub(super) const SCHEMA: &[u8] = b"schema";
const CURSOR: &[u8] = b"c";
const OUTCOME: u8 = b'o';
const DEAD: u8 = b'd';
const REQUEUED: u8 = b'r';
/// A sink whose cursor was handed over to others (see [`SledLog::retire`]).
/// Its first byte must be none of the per-entry prefixes (`o`, `d`, `r`),
/// which are scanned by prefix.
const RETIRED: &[u8] = b"handed-over";
/// How many entries past a filtered sink's cursor [`SledLog::status_where`]
/// looks at; a backlog beyond that is counted whole.
const FILTERED_STATUS_SCAN: usize = 10_000;

/// How often the disk-space check really asks the filesystem.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The durable event log on sled. Cheap to clone.
#[derive(Clone)]
pub struct SledLog {
    inner: Arc<Inner>,
    requests: mpsc::Sender<Message>,
    committer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub db: sled::Db,
    pub path: PathBuf,
    pub events: sled::Tree,
    pub dedupe: sled::Tree,
    pub meta: sled::Tree,
    quarantine: sled::Tree,
    /// An open handle on the data directory (free-space checks, `syncfs`).
    pub dir_handle: File,
    /// sled's data file, `state/db`, for `fdatasync` after each commit.
    pub data_file: File,
    options: LogOptions,
    next_seq: AtomicU64,
    notify: watch::Sender<u64>,
    health: Mutex<LogHealth>,
    space: Mutex<Option<(Instant, Result<(), LogError>)>>,
    /// Tests: the next commit's sync fails (as `fdatasync` can, with ENOSPC or EIO).
    #[cfg(test)]
    pub fail_next_sync: std::sync::atomic::AtomicBool,
}

impl Inner {
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Takes the sequence numbers below `next` (written, not yet durable).
    pub fn reserve(&self, next: u64) {
        self.next_seq.store(next, Ordering::Release);
    }

    /// Takes the numbers below `next` and wakes the sinks: they are durable.
    pub fn advance(&self, next: u64) {
        self.next_seq.store(next, Ordering::Release);
        self.notify.send_replace(next);
    }

    pub fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut health) = self.health.lock() {
            health.last_error = error;
        }
    }

    /// Refuses appends when the store or the filesystem is full; asks the
    /// filesystem at most once a second.
    pub fn check_space(&self) -> Result<(), LogError> {
        let mut cached = self
            .space
            .lock()
            .map_err(|_| LogError::Storage("space check poisoned".into()))?;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < SPACE_CHECK_EVERY
        {
            return result.clone();
        }
        let result = self.measure_space();
        *cached = Some((Instant::now(), result.clone()));
        result
    }

    fn measure_space(&self) -> Result<(), LogError> {
        let used = self.db.size_on_disk()?;
        if used >= self.options.max_disk_bytes {
            return Err(LogError::Full(format!(
                "store is {} MiB, limit {} MiB",
                used >> 20,
                self.options.max_disk_bytes >> 20
            )));
        }
        let stat = rustix::fs::fstatvfs(&self.dir_handle)
            .map_err(|e| LogError::Storage(format!("statvfs: {e}")))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.options.min_free_disk_bytes {
            return Err(LogError::Full(format!(
                "{} MiB free on the data filesystem, {} MiB reserved",
                free >> 20,
                self.options.min_free_disk_bytes >> 20
            )));
        }
        Ok(())
    }

    /// Decodes `bytes` stored at `seq`; a record that fails its checksum is
    /// moved to quarantine so it is reported once and never delivered.
    fn decode_or_quarantine(&self, seq: u64, bytes: &[u8]) -> Option<LogEntry> {
        match record::decode(bytes) {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::error!(seq, %error, "event log record is damaged; moved to quarantine");
                let moved = self
                    .quarantine
                    .insert(seq.to_be_bytes(), bytes)
                    .and_then(|_| self.events.remove(seq.to_be_bytes()));
                if let Err(e) = moved {
                    tracing::error!(seq, error = %e, "could not quarantine a damaged record");
                }
                if let Ok(mut health) = self.health.lock() {
                    health.quarantined += 1;
                }
                None
            }
        }
    }
}

/// What one GC pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub events_removed: u64,
    pub dedupe_removed: u64,
}

/// The big-endian u64 at the start of `bytes` (sequence numbers, counters,
/// timestamps are all stored this way, so keys sort in numeric order).
pub(super) fn be(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(..8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

fn keyed(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn sink_tree_name(sink: &str) -> String {
    format!("sink/{sink}")
}

impl SledLog {
    /// Opens (or creates) the log in `data_dir/state`. A store that sled
    /// cannot open is moved aside and a fresh one is used; see
    /// [`LogHealth`]. A store locked by another process is an error.
    pub fn open(data_dir: &Path, options: LogOptions) -> Result<SledLog, LogError> {
        Self::open_with(data_dir, options, Recovery::MoveAside)
    }

    /// Like [`SledLog::open`], but a store sled cannot open stays where it is
    /// and is an error ([`LogError::Damaged`]): for commands that only look.
    pub fn open_as_is(data_dir: &Path, options: LogOptions) -> Result<SledLog, LogError> {
        Self::open_with(data_dir, options, Recovery::Refuse)
    }

    fn open_with(
        data_dir: &Path,
        options: LogOptions,
        recovery: Recovery,
    ) -> Result<SledLog, LogError> {
        let opened = super::open::open_or_recover(data_dir, &options, recovery)?;
        let db = opened.db;
        let tree = |name: &str| db.open_tree(name);
        let meta = tree("meta")?;
        if let Some(found) = meta.get(SCHEMA)? {
            let found = found.first().copied().unwrap_or(0);
            if found > record::SCHEMA_VERSION {
                return Err(LogError::NewerSchema {
                    found,
                    supported: record::SCHEMA_VERSION,
                });
            }
        } else {
            meta.insert(SCHEMA, &[record::SCHEMA_VERSION])?;
        }
        let events = tree("events")?;
        let stored_next = meta.get(NEXT_SEQ)?.map_or(0, |v| be(&v));
        let after_last = events.last()?.map_or(0, |(k, _)| be(&k) + 1);
        let next_seq = stored_next.max(after_last);
        let dir_handle = File::open(data_dir)
            .map_err(|e| LogError::Storage(format!("open {}: {e}", data_dir.display())))?;
        let data_file = File::open(data_dir.join("state").join("db"))
            .map_err(|e| LogError::Storage(format!("open state/db: {e}")))?;
        // Once: a fresh store's files and directory entries become durable.
        committer::sync_filesystem(&dir_handle)?;
        let (notify, _) = watch::channel(next_seq);
        let inner = Arc::new(Inner {
            path: data_dir.join("state"),
            events,
            dedupe: tree("dedupe")?,
            quarantine: tree("quarantine")?,
            meta,
            db,
            dir_handle,
            data_file,
            options,
            next_seq: AtomicU64::new(next_seq),
            notify,
            health: Mutex::new(opened.health),
            space: Mutex::new(None),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        });
        let (requests, receiver) = mpsc::channel();
        let committer_inner = inner.clone();
        let committer = std::thread::Builder::new()
            .name("log-committer".into())
            .spawn(move || committer::run(committer_inner, receiver))
            .map_err(|e| LogError::Storage(format!("cannot start the committer: {e}")))?;
        let committer = Arc::new(Mutex::new(Some(committer)));
        let health = inner.health.lock().map(|h| h.clone()).unwrap_or_default();
        if health.is_degraded() {
            tracing::error!(?health, "event log opened degraded");
        }
        Ok(SledLog {
            inner,
            requests,
            committer,
        })
    }

    /// Stops accepting appends once those already queued are committed,
    /// then syncs. Appends after this fail with [`LogError::Closed`].
    pub fn close(&self) -> Result<(), LogError> {
        let _ = self.requests.send(Message::Close);
        let handle = self.committer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.sync()
    }

    /// The underlying store, shared with the plugins' KV trees.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    pub fn health(&self) -> LogHealth {
        self.inner
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Flushes and syncs everything written so far (sink settlements included).
    pub fn sync(&self) -> Result<(), LogError> {
        self.inner.db.flush()?;
        committer::sync_to_disk(&self.inner.data_file)
    }

    fn sink_tree(&self, sink: &str) -> Result<sled::Tree, LogError> {
        Ok(self.inner.db.open_tree(sink_tree_name(sink))?)
    }

    /// Every sink that has state in the store.
    pub fn known_sinks(&self) -> Vec<String> {
        self.inner
            .db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok()?.strip_prefix("sink/"))
            .map(str::to_string)
            .collect()
    }

    /// Registers `sink` with its cursor at `start` (clamped to the log's
    /// end) if it has none yet; returns its cursor either way. A sink that
    /// takes over another's work (speaker lanes from the single speaker sink
    /// of earlier versions) starts where that one stopped.
    pub fn register_at(&self, sink: &str, start: u64) -> Result<u64, LogError> {
        let tree = self.sink_tree(sink)?;
        if let Some(c) = tree.get(CURSOR)? {
            return Ok(be(&c));
        }
        let start = start.min(self.inner.next_seq());
        tree.insert(CURSOR, &start.to_be_bytes())?;
        self.inner.db.flush()?;
        Ok(start)
    }

    /// The cursor `sink` stopped at if it has one and has not been retired
    /// ([`SledLog::retire`]); lanes inherit it once.
    pub fn handover_cursor(&self, sink: &str) -> Result<Option<u64>, LogError> {
        if !self.known_sinks().iter().any(|s| s == sink) {
            return Ok(None);
        }
        let tree = self.sink_tree(sink)?;
        if tree.contains_key(RETIRED)? {
            return Ok(None);
        }
        Ok(tree.get(CURSOR)?.map(|c| be(&c)))
    }

    /// Marks `sink` as handed over: its history stays readable, its cursor
    /// is no longer inherited.
    pub fn retire(&self, sink: &str) -> Result<(), LogError> {
        self.sink_tree(sink)?.insert(RETIRED, &[])?;
        self.inner.db.flush()?;
        Ok(())
    }

    pub fn entry(&self, seq: u64) -> Result<Option<LogEntry>, LogError> {
        Ok(self
            .inner
            .events
            .get(seq.to_be_bytes())?
            .and_then(|v| self.inner.decode_or_quarantine(seq, &v)))
    }

    pub fn status(&self, sink: &str) -> Result<SinkStatus, LogError> {
        self.status_where(sink, None)
    }

    /// [`SledLog::status`] of a sink that takes only the entries `wants`
    /// accepts (a speaker lane: the payments routed to its speaker), so
    /// its pending count and oldest age are its own, not the whole log's.
    pub fn status_where(
        &self,
        sink: &str,
        wants: Option<&dyn Fn(&LogEntry) -> bool>,
    ) -> Result<SinkStatus, LogError> {
        let tree = self.sink_tree(sink)?;
        let cursor = self.cursor(sink)?;
        let now = now_ms();
        let retired = tree.contains_key(RETIRED)?;
        let (mut pending, mut oldest) = match wants {
            // Its work went to other sinks: nothing waits for it any more.
            _ if retired => (0, None),
            // Sequence numbers are dense above every cursor (GC only removes
            // below the lowest), so this counts without reading the backlog;
            // only a quarantined record would make it overcount.
            None => (
                self.inner.next_seq().saturating_sub(cursor),
                match self.inner.events.range(cursor.to_be_bytes()..).next() {
                    Some(item) => record::decode(&item?.1).ok().map(|e| e.appended_at_ms),
                    None => None,
                },
            ),
            Some(wants) => {
                let (mut pending, mut oldest, mut scanned) = (0u64, None, 0usize);
                for item in self.inner.events.range(cursor.to_be_bytes()..) {
                    let (key, value) = item?;
                    scanned += 1;
                    if scanned > FILTERED_STATUS_SCAN {
                        // Too long to read for a status: count the rest whole.
                        pending += self.inner.next_seq().saturating_sub(be(&key));
                        break;
                    }
                    let Ok(entry) = record::decode(&value) else {
                        continue;
                    };
                    if wants(&entry) {
                        pending += 1;
                        oldest.get_or_insert(entry.appended_at_ms);
                    }
                }
                (pending, oldest)
            }
        };
        for item in tree.scan_prefix([REQUEUED]) {
            let (key, _) = item?;
            pending += 1;
            if let Some(entry) = self.entry(be(&key[1..]))? {
                oldest =
                    Some(oldest.map_or(entry.appended_at_ms, |o: i64| o.min(entry.appended_at_ms)));
            }
        }
        let count = |state: &str| -> Result<u64, LogError> {
            Ok(tree.get(format!("n/{state}"))?.map_or(0, |v| be(&v)))
        };
        Ok(SinkStatus {
            sink: sink.to_string(),
            cursor,
            pending,
            oldest_pending_age_ms: oldest.map(|o| (now - o).max(0)),
            dead_letters: tree.scan_prefix([DEAD]).count() as u64,
            delivered: count("delivered")?,
            expired: count("expired")?,
        })
    }

    /// Entries of `sink`, newest first: what is pending, then what was settled.
    /// `state` filters (`pending`, `dead`, `delivered`, ...).
    pub fn list(
        &self,
        sink: &str,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, LogError> {
        self.list_where(sink, state, limit, None)
    }

    /// [`SledLog::list`] of a sink that takes only the entries `wants`
    /// accepts: the others are left out, pending or passed.
    pub fn list_where(
        &self,
        sink: &str,
        state: Option<&str>,
        limit: usize,
        wants: Option<&dyn Fn(&LogEntry) -> bool>,
    ) -> Result<Vec<QueueItem>, LogError> {
        let tree = self.sink_tree(sink)?;
        let cursor = self.cursor(sink)?;
        let mut items = Vec::new();
        for item in self.inner.events.iter().rev() {
            if items.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let seq = be(&key);
            let Some(entry) = self.inner.decode_or_quarantine(seq, &value) else {
                continue;
            };
            let (item_state, reason) = if tree.contains_key(keyed(REQUEUED, seq))? {
                ("requeued".to_string(), None)
            } else if seq >= cursor {
                if wants.is_some_and(|wants| !wants(&entry)) {
                    continue;
                }
                ("pending".to_string(), None)
            } else if let Some(o) = tree.get(keyed(OUTCOME, seq))? {
                match serde_json::from_slice::<Settlement>(&o) {
                    Ok(settlement) => (
                        settlement.state().to_string(),
                        settlement.reason().map(str::to_string),
                    ),
                    Err(_) => ("unknown".to_string(), None),
                }
            } else if wants.is_some() {
                continue; // passed: never this sink's
            } else {
                ("settled".to_string(), None)
            };
            if state.is_some_and(|s| s != item_state) {
                continue;
            }
            let c = entry.change;
            items.push(QueueItem {
                seq,
                appended_at_ms: entry.appended_at_ms,
                provider: c.provider,
                transaction_id: c.transaction_id,
                account: c.account,
                amount: c.amount,
                currency: c.currency,
                state: item_state,
                reason,
            });
        }
        Ok(items)
    }

    /// Sends dead letters of `sink` again: `seq`, or every one when `None`.
    /// Returns how many were requeued.
    pub fn requeue(&self, sink: &str, seq: Option<u64>) -> Result<usize, LogError> {
        let tree = self.sink_tree(sink)?;
        let dead: Vec<u64> = match seq {
            Some(seq) if tree.contains_key(keyed(DEAD, seq))? => vec![seq],
            Some(_) => Vec::new(),
            None => tree
                .scan_prefix([DEAD])
                .keys()
                .map(|k| k.map(|k| be(&k[1..])))
                .collect::<Result<_, _>>()?,
        };
        let mut batch = sled::Batch::default();
        for seq in &dead {
            batch.remove(&keyed(DEAD, *seq));
            batch.insert(&keyed(REQUEUED, *seq), &[]);
        }
        tree.apply_batch(batch)?;
        if !dead.is_empty() {
            self.sync()?;
            // Wake the sink's worker.
            self.inner.notify.send_replace(self.inner.next_seq());
        }
        Ok(dead.len())
    }

    /// Removes entries every sink in `sinks` is done with that are older than
    /// `keep_settled`, and dedupe keys older than the retention window. Dead
    /// letters and requeued entries are kept.
    pub fn gc(&self, sinks: &[String]) -> Result<GcReport, LogError> {
        let now = now_ms();
        let mut report = GcReport::default();
        let mut horizon = self.inner.next_seq();
        let mut keep = std::collections::BTreeSet::new();
        let mut trees = Vec::new();
        for sink in sinks {
            horizon = horizon.min(self.cursor(sink)?);
        }
        for sink in self.known_sinks() {
            let tree = self.sink_tree(&sink)?;
            for key in tree
                .scan_prefix([DEAD])
                .keys()
                .chain(tree.scan_prefix([REQUEUED]).keys())
            {
                keep.insert(be(&key?[1..]));
            }
            trees.push(tree);
        }
        // Sequence numbers must not restart if everything below is removed.
        self.inner
            .meta
            .insert(NEXT_SEQ, &self.inner.next_seq().to_be_bytes())?;
        let keep_ms = self.inner.options.keep_settled.as_millis() as i64;
        let mut batch = sled::Batch::default();
        let mut removed = Vec::new();
        for item in self.inner.events.range(..horizon.to_be_bytes()) {
            let (key, value) = item?;
            let seq = be(&key);
            if keep.contains(&seq) {
                continue;
            }
            let Ok(entry) = record::decode(&value) else {
                continue;
            };
            if now - entry.appended_at_ms < keep_ms {
                break; // appended in order: everything after is younger
            }
            batch.remove(&key);
            removed.push(seq);
        }
        self.inner.events.apply_batch(batch)?;
        for tree in &trees {
            let mut batch = sled::Batch::default();
            for seq in &removed {
                batch.remove(&keyed(OUTCOME, *seq));
            }
            tree.apply_batch(batch)?;
        }
        report.events_removed = removed.len() as u64;

        let cutoff = now - self.inner.options.dedupe_retention.as_millis() as i64;
        let mut batch = sled::Batch::default();
        for item in self.inner.dedupe.iter() {
            let (key, value) = item?;
            let at = value.get(8..16).map_or(i64::MAX, |b| be(b) as i64);
            if at < cutoff {
                batch.remove(key);
                report.dedupe_removed += 1;
            }
        }
        self.inner.dedupe.apply_batch(batch)?;
        self.inner.db.flush()?;
        Ok(report)
    }
}

impl EventLog for SledLog {
    fn append(&self, changes: Vec<BalanceChange>) -> AppendFuture {
        let (reply, receiver) = oneshot::channel();
        let sent = self
            .requests
            .send(Message::Append(Request { changes, reply }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(LogError::Closed);
            }
            receiver.await.map_err(|_| LogError::Closed)?
        })
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.inner.notify.subscribe()
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        let mut out = Vec::with_capacity(limit.min(256));
        for item in self.inner.events.range(from.to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if let Some(entry) = self.inner.decode_or_quarantine(be(&key), &value) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn cursor(&self, sink: &str) -> Result<u64, LogError> {
        let tree = self.sink_tree(sink)?;
        if let Some(c) = tree.get(CURSOR)? {
            return Ok(be(&c));
        }
        // A new sink starts at the end of the log.
        let start = self.inner.next_seq();
        tree.insert(CURSOR, &start.to_be_bytes())?;
        Ok(start)
    }

    fn requeued(&self, sink: &str, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        let tree = self.sink_tree(sink)?;
        let mut out = Vec::new();
        for key in tree.scan_prefix([REQUEUED]).keys().take(limit) {
            let key = key?;
            let seq = be(&key[1..]);
            match self.entry(seq)? {
                Some(entry) => out.push(entry),
                // Gone (quarantined): nothing left to send.
                None => {
                    tree.remove(&key)?;
                }
            }
        }
        Ok(out)
    }

    fn settle(&self, sink: &str, seq: u64, settlement: &Settlement) -> Result<(), LogError> {
        self.settle_many(sink, &[seq], settlement)
    }

    fn pass(&self, sink: &str, through: u64) -> Result<(), LogError> {
        let tree = self.sink_tree(sink)?;
        if self.cursor(sink)? > through {
            return Ok(());
        }
        tree.insert(CURSOR, &(through + 1).to_be_bytes())?;
        // Written through like a settlement; losing it to a power cut only
        // means the lane looks at those entries again and passes them again.
        self.inner.db.flush()?;
        Ok(())
    }

    fn settle_many(
        &self,
        sink: &str,
        seqs: &[u64],
        settlement: &Settlement,
    ) -> Result<(), LogError> {
        let Some(&last) = seqs.iter().max() else {
            return Ok(());
        };
        let tree = self.sink_tree(sink)?;
        let cursor = self.cursor(sink)?;
        let mut batch = sled::Batch::default();
        let outcome = serde_json::to_vec(settlement).unwrap_or_default();
        for &seq in seqs {
            batch.insert(&keyed(OUTCOME, seq), outcome.as_slice());
            batch.remove(&keyed(REQUEUED, seq));
            match settlement {
                Settlement::Dead { .. } => batch.insert(&keyed(DEAD, seq), &[]),
                _ => batch.remove(&keyed(DEAD, seq)),
            }
        }
        if last >= cursor {
            batch.insert(CURSOR, &(last + 1).to_be_bytes());
        }
        tree.apply_batch(batch)?;
        tree.update_and_fetch(format!("n/{}", settlement.state()), |old| {
            let n = old.map_or(0, be) + seqs.len() as u64;
            Some(n.to_be_bytes().to_vec())
        })?;
        // Written through to the file (not synced: a power cut may lose the
        // last few settlements, which only means a redelivery that receivers
        // dedupe by event id). Without it a kill would lose up to sled's
        // 500 ms flush interval of settlements.
        self.inner.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
