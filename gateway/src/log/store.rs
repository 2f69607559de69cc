//! [`Store`]: everything durable, behind one committer thread for writes
//! and tokio's blocking pool for reads, so no disk call runs on an async
//! worker.
//!
//! Long because it holds the store's whole read side (scans that merge the
//! segments with sled, status, queue list, GC's plan) next to the async API;
//! the write side is the committer.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::committer::{self, Committer, Message};
use super::disk::{Disk, os_disk};
use super::engine::{self, ACKED, CURSOR, DEAD, Engine, OUTCOME, REQUEUED, RETIRED, be, keyed};
use super::open::Recovery;
use super::record::{self, LogEntry};
use super::segment::{self, LOG, Op};
use super::segments::{Index, Segments};
use super::{
    AppendExpected, Committed, EventLog, GcReport, KvBatch, LogError, LogFuture, LogHealth,
    LogOptions, QueueItem, Settlement, SinkStatus, StorageError,
};
use crate::model::{BalanceChange, now_ms};

/// How many entries past a filtered sink's cursor [`Store::status_where`]
/// looks at; a backlog beyond that is counted whole.
const FILTERED_STATUS_SCAN: usize = 10_000;
/// GC hands its removals to the committer this many at a time, so a large
/// collection never holds up a webhook's commit for long.
const GC_CHUNK: usize = 4096;
/// Index entries taken per lock while scanning.
const SCAN_CHUNK: usize = 256;

/// Which way [`Store::scan`] reads the log.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// In order, from this sequence number.
    From(u64),
    /// Newest first, from the end.
    Back,
}

/// What the committer and the readers share.
pub(super) struct Shared {
    data_dir: PathBuf,
    engine: RwLock<Option<Arc<Engine>>>,
    pub options: LogOptions,
    pub disk: Arc<dyn Disk>,
    /// An open handle on the data directory (free-space checks, `syncfs`).
    pub dir_handle: File,
    /// One past the last entry applied (durable and readable).
    pub next_seq: AtomicU64,
    notify: watch::Sender<u64>,
    health: Mutex<LogHealth>,
    /// Records readers found damaged, for the committer to quarantine.
    damaged: Mutex<std::collections::BTreeSet<u64>>,
    /// Where each payment lies in the segments; changed by the committer only.
    index: RwLock<Index>,
    /// Webhooks between their arrival and their append ([`AppendExpected`]).
    appends_expected: Arc<AtomicUsize>,
}

impl Shared {
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }

    /// The event log's segment files.
    pub fn segments_dir(&self) -> PathBuf {
        self.data_dir.join("events")
    }

    /// How many webhooks are on their way to an append.
    pub fn appends_expected(&self) -> usize {
        self.appends_expected.load(Ordering::Acquire)
    }

    pub fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The open engine, or an error while it is being reopened.
    pub fn engine(&self) -> Result<Arc<Engine>, LogError> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| LogError::Storage(StorageError::msg("the store is being reopened")))
    }

    /// Takes the engine away and waits (briefly) for readers to let go of it,
    /// so sled can be opened again in this process.
    pub fn close_engine(&self) {
        let taken = self
            .engine
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(engine) = taken {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&engine) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(engine);
        }
    }

    pub fn reopen_engine(&self) -> Result<Engine, LogError> {
        let db = super::open::reopen(&self.state_dir(), &self.options)?;
        Engine::new(db)
    }

    pub fn install_engine(&self, engine: Engine) {
        *self.engine.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(engine));
    }

    /// Entries below `next` are applied: wake the sinks.
    pub fn advance(&self, next: u64) {
        if self.make_readable(next) {
            self.wake_readers(next);
        }
    }

    /// Entries below `next` become readable (never moves back); true if
    /// that is news for the sinks.
    pub fn make_readable(&self, next: u64) -> bool {
        let before = self.next_seq.fetch_max(next, Ordering::AcqRel);
        next > before
    }

    /// Tells the sinks waiting for new entries that `next` is readable.
    pub fn wake_readers(&self, next: u64) {
        self.notify.send_replace(next);
    }

    pub fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut health) = self.health.lock() {
            health.last_error = error;
        }
    }

    /// Decodes `bytes` stored at `seq`. A record that fails its checksum is
    /// skipped and noted; the committer moves it to quarantine, so it is
    /// reported once and never delivered.
    fn decode(&self, seq: u64, bytes: &[u8]) -> Option<LogEntry> {
        match record::decode(bytes) {
            Ok(entry) => Some(entry),
            Err(error) => {
                let mut damaged = self.damaged.lock().unwrap_or_else(|e| e.into_inner());
                if damaged.insert(seq) {
                    tracing::error!(seq, %error, "event log record is damaged; skipped and moved to quarantine");
                }
                None
            }
        }
    }

    /// Entry `seq`'s record as stored, with the tree that holds it: a
    /// segment ([`LOG`]) or sled's `events`.
    pub fn record(
        &self,
        engine: &Engine,
        seq: u64,
    ) -> Result<Option<(&'static str, Vec<u8>)>, LogError> {
        let place = self.index().get(seq);
        Ok(match place {
            Some(place) => Some((LOG, place.read()?)),
            None => engine
                .events
                .get(seq.to_be_bytes())?
                .map(|v| (engine::EVENTS, v.to_vec())),
        })
    }

    /// Damaged records noted by readers since the last call.
    pub fn take_damaged(&self) -> Vec<u64> {
        let mut damaged = self.damaged.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *damaged).into_iter().collect()
    }

    /// Puts back records whose move to quarantine failed, to try again.
    pub fn return_damaged(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut damaged = self.damaged.lock().unwrap_or_else(|e| e.into_inner());
        damaged.extend(seqs);
    }

    pub fn count_quarantined(&self, n: u64) {
        if let Ok(mut health) = self.health.lock() {
            health.quarantined += n;
        }
    }
}

/// The durable store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Message>,
    committer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.shared.data_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir/state`. A store that sled
    /// cannot open is moved aside and a fresh one is used; see
    /// [`LogHealth`]. A store locked by another process is an error.
    pub fn open(data_dir: &Path, options: LogOptions) -> Result<Store, LogError> {
        Self::open_with(data_dir, options, Recovery::MoveAside, os_disk())
    }

    /// Like [`Store::open`], but a store sled cannot open stays where it is
    /// and is an error ([`LogError::Damaged`]): for commands that only look.
    pub fn open_as_is(data_dir: &Path, options: LogOptions) -> Result<Store, LogError> {
        Self::open_with(data_dir, options, Recovery::Refuse, os_disk())
    }

    /// [`Store::open`] on a given disk (tests and benches make it slow or failing).
    pub fn open_on(
        data_dir: &Path,
        options: LogOptions,
        disk: Arc<dyn Disk>,
    ) -> Result<Store, LogError> {
        Self::open_with(data_dir, options, Recovery::MoveAside, disk)
    }

    fn open_with(
        data_dir: &Path,
        options: LogOptions,
        recovery: Recovery,
        disk: Arc<dyn Disk>,
    ) -> Result<Store, LogError> {
        let opened = super::open::open_or_recover(data_dir, &options, recovery)?;
        let engine = Engine::new(opened.db)?;
        if let Some(found) = engine.meta.get(engine::SCHEMA)? {
            let found = found.first().copied().unwrap_or(0);
            if found > record::SCHEMA_VERSION {
                return Err(LogError::NewerSchema {
                    found,
                    supported: record::SCHEMA_VERSION,
                });
            }
        } else {
            engine
                .meta
                .insert(engine::SCHEMA, &[record::SCHEMA_VERSION])?;
        }
        let state = data_dir.join("state");
        // A store from before the segments kept its last commits in a
        // write-ahead file of the same record layout: replay it once.
        let legacy_wal = state.join("wal");
        let legacy = segment::legacy_wal_records(&legacy_wal);
        for ops in opened.replay.iter().chain(&legacy) {
            engine.apply(ops)?;
        }
        let (mut segments, mut index) = Segments::open_replayed(
            &data_dir.join("events"),
            options.segment_bytes,
            disk.clone(),
            &engine,
        )?;
        engine.make_registry(now_ms())?;
        let data_file = engine::open_data_file(&state)?;
        // Replayed writes are in sled's synced files now: the next opening
        // starts from here.
        let at = segments.end();
        engine.checkpoint(at, &data_file, &*disk)?;
        for id in segments.checkpoint(at, |id| index.live(id) == 0)? {
            index.forget_segment(id);
        }
        if legacy_wal.exists() {
            std::fs::remove_file(&legacy_wal)
                .map_err(|e| LogError::storage(format!("remove {}", legacy_wal.display()), e))?;
        }
        let dir_handle = File::open(data_dir)
            .map_err(|e| LogError::storage(format!("open {}", data_dir.display()), e))?;
        // Once: a fresh store's files and directory entries become durable.
        committer::sync_filesystem(&dir_handle)?;
        let next_seq = engine.stored_next_seq()?.max(index.end());
        let (notify, _) = watch::channel(next_seq);
        let shared = Arc::new(Shared {
            data_dir: data_dir.to_path_buf(),
            engine: RwLock::new(Some(Arc::new(engine))),
            options,
            disk,
            dir_handle,
            next_seq: AtomicU64::new(next_seq),
            appends_expected: Arc::default(),
            notify,
            health: Mutex::new(opened.health),
            damaged: Mutex::default(),
            index: RwLock::new(index),
        });
        let (requests, receiver) = mpsc::channel();
        let committer = Committer::new(shared.clone(), segments, data_file, next_seq);
        let committer = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || committer.run(receiver))
            .map_err(|e| LogError::storage("cannot start the committer", e))?;
        let store = Store {
            shared,
            requests,
            committer: Arc::new(Mutex::new(Some(committer))),
        };
        let health = store.health();
        if health.is_degraded() {
            tracing::error!(?health, "event log opened degraded");
        }
        Ok(store)
    }

    /// Commits what is queued, checkpoints, and stops the committer; later
    /// writes fail with [`LogError::Closed`].
    pub fn close(&self) -> Result<(), LogError> {
        let _ = self.requests.send(Message::Close);
        let handle = self.committer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        Ok(())
    }

    pub fn health(&self) -> LogHealth {
        self.shared
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Queues `message` for the committer now; the future only waits for
    /// the answer (dropping it does not withdraw the write).
    fn ask<T: Send + 'static>(
        &self,
        message: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Message,
    ) -> LogFuture<T> {
        let (reply, receiver) = oneshot::channel();
        let sent = self.requests.send(message(reply)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(LogError::Closed);
            }
            receiver.await.map_err(|_| LogError::Closed)?
        })
    }

    /// Runs `read` on the blocking pool against the open engine.
    fn look<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store, &Engine) -> Result<T, LogError> + Send + 'static,
    ) -> LogFuture<T> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.look_now(read))
                .await
                .map_err(|e| LogError::storage("store read panicked", e))?
        })
    }

    /// Runs `read` on this thread, for callers already off the async
    /// workers (the blocking pool, the CLI).
    pub fn look_now<T>(
        &self,
        read: impl FnOnce(&Store, &Engine) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let engine = self.shared.engine()?;
        read(self, &engine)
    }

    /// Registers `sink`: it starts at `start` (clamped to the log's end) or
    /// the end, unless it is registered already; returns its cursor.
    pub fn register(&self, sink: &str, start: Option<u64>) -> LogFuture<u64> {
        let sink = sink.to_string();
        self.ask(|reply| Message::Register { sink, start, reply })
    }

    /// Takes `sink` out of the registry and drops its state: GC no longer
    /// keeps anything for it. False if it was not registered.
    pub fn forget(&self, sink: &str) -> LogFuture<bool> {
        let sink = sink.to_string();
        self.ask(|reply| Message::Forget { sink, reply })
    }

    /// Marks `sink` as handed over to others (speaker lanes): out of the
    /// registry, its history still readable, its cursor not inherited again.
    pub fn retire(&self, sink: &str) -> LogFuture<()> {
        let sink = sink.to_string();
        self.ask(|reply| Message::Retire { sink, reply })
    }

    /// Sends dead letters of `sink` again: `seq`, or every one when `None`.
    /// Returns how many were requeued.
    pub fn requeue(&self, sink: &str, seq: Option<u64>) -> LogFuture<usize> {
        let sink = sink.to_string();
        let shared = self.shared.clone();
        let asked = self.ask(|reply| Message::Requeue { sink, seq, reply });
        Box::pin(async move {
            let n = asked.await?;
            if n > 0 {
                // Wake the sink's worker.
                shared.wake_readers(shared.next_seq.load(Ordering::Acquire));
            }
            Ok(n)
        })
    }

    /// Flushes sled and starts the write-ahead file over: everything so far
    /// is in sled's synced files.
    pub fn checkpoint(&self) -> LogFuture<()> {
        self.ask(|reply| Message::Checkpoint { reply })
    }

    /// Registered sinks.
    pub fn known_sinks(&self) -> Result<Vec<String>, LogError> {
        self.look_now(|_, engine| engine.registered())
    }

    /// The cursor `sink` stopped at if it has one and was not handed over
    /// ([`Store::retire`]); speaker lanes inherit it once.
    pub fn handover_cursor(&self, sink: &str) -> Result<Option<u64>, LogError> {
        self.look_now(|_, engine| {
            let tree = engine::sink_tree(sink);
            if !engine.has_tree(&tree) || engine.contains(&tree, RETIRED)? {
                return Ok(None);
            }
            Ok(engine.get(&tree, CURSOR)?.map(|c| be(&c)))
        })
    }

    /// A plugin's KV value; sled keeps these small trees in its cache.
    pub fn kv_get(&self, connector: &str, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.look_now(|_, engine| engine.get(&engine::kv_tree(connector), key.as_bytes()))
    }

    /// Every key and value size of a plugin's KV (quota counting at load).
    pub fn kv_sizes(&self, connector: &str) -> Result<Vec<(usize, usize)>, LogError> {
        self.look_now(|_, engine| {
            let mut out = Vec::new();
            engine.for_each(&engine::kv_tree(connector), &[], None, |key, value| {
                out.push((key.len(), value.len()));
                Ok(true)
            })?;
            Ok(out)
        })
    }

    pub fn entry(&self, seq: u64) -> Result<Option<LogEntry>, LogError> {
        self.look_now(|store, engine| store.entry_in(engine, seq))
    }

    fn entry_in(&self, engine: &Engine, seq: u64) -> Result<Option<LogEntry>, LogError> {
        Ok(self
            .shared
            .record(engine, seq)?
            .and_then(|(_, bytes)| self.shared.decode(seq, &bytes)))
    }

    fn cursor_in(&self, engine: &Engine, sink: &str) -> Result<u64, LogError> {
        if !engine.contains(engine::REGISTRY, sink.as_bytes())? {
            return Err(LogError::NotRegistered(sink.to_string()));
        }
        Ok(engine
            .get(&engine::sink_tree(sink), CURSOR)?
            .map_or(0, |c| be(&c)))
    }

    /// The cursor, on this thread (tests, the CLI).
    pub fn cursor_now(&self, sink: &str) -> Result<u64, LogError> {
        self.look_now(|store, engine| store.cursor_in(engine, sink))
    }

    /// Calls `each` with every entry's record in the order `scan` asks,
    /// until it returns false: the segments' payments merged with sled's
    /// `events` tree (stores from before the segments, dead letters moved out
    /// of collected segments).
    fn scan(
        &self,
        engine: &Engine,
        scan: Scan,
        mut each: impl FnMut(u64, &[u8]) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let (in_sled, mut next): (Box<dyn Iterator<Item = _>>, u64) = match scan {
            Scan::From(from) => (Box::new(engine.events.range(from.to_be_bytes()..)), from),
            Scan::Back => (Box::new(engine.events.iter().rev()), u64::MAX),
        };
        let mut in_sled = in_sled.peekable();
        // Whether `a` comes before `b` in this scan.
        let earlier = |a: u64, b: u64| match scan {
            Scan::From(_) => a < b,
            Scan::Back => a > b,
        };
        loop {
            let chunk = match scan {
                Scan::From(_) => self.shared.index().from(next, SCAN_CHUNK),
                Scan::Back => self.shared.index().before(next, SCAN_CHUNK),
            };
            let last_chunk = chunk.len() < SCAN_CHUNK;
            for place in chunk {
                while let Some(item) =
                    in_sled.next_if(|i| !matches!(i, Ok((k, _)) if !earlier(be(k), place.seq)))
                {
                    let (key, value) = item?;
                    if !each(be(&key), &value)? {
                        return Ok(());
                    }
                }
                // A move out of a segment cut short by a crash: the
                // segment's copy is the one.
                in_sled.next_if(|i| matches!(i, Ok((k, _)) if be(k) == place.seq));
                if !each(place.seq, &place.read()?)? {
                    return Ok(());
                }
                next = match scan {
                    Scan::From(_) => place.seq + 1,
                    Scan::Back => place.seq,
                };
            }
            if last_chunk {
                break;
            }
        }
        for item in in_sled {
            let (key, value) = item?;
            if !each(be(&key), &value)? {
                break;
            }
        }
        Ok(())
    }

    fn read_in(&self, engine: &Engine, from: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        let mut out = Vec::with_capacity(limit.min(256));
        if limit == 0 {
            return Ok(out);
        }
        self.scan(engine, Scan::From(from), |seq, bytes| {
            if let Some(entry) = self.shared.decode(seq, bytes) {
                out.push(entry);
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// [`EventLog::read`] on this thread (the blocking pool, the CLI).
    pub fn read_now(&self, from: u64, limit: usize) -> Result<Vec<LogEntry>, LogError> {
        self.look_now(|store, engine| store.read_in(engine, from, limit))
    }

    pub fn status(&self, sink: &str) -> Result<SinkStatus, LogError> {
        self.status_where(sink, None)
    }

    /// [`Store::status`] of a sink that takes only the entries `wants`
    /// accepts (a speaker lane: the payments routed to its speaker), so
    /// its pending count and oldest age are its own, not the whole log's.
    pub fn status_where(
        &self,
        sink: &str,
        wants: Option<&dyn Fn(&LogEntry) -> bool>,
    ) -> Result<SinkStatus, LogError> {
        self.look_now(|store, engine| store.status_in(engine, sink, wants))
    }

    fn status_in(
        &self,
        engine: &Engine,
        sink: &str,
        wants: Option<&dyn Fn(&LogEntry) -> bool>,
    ) -> Result<SinkStatus, LogError> {
        let cursor = self.cursor_in(engine, sink)?;
        let tree = engine::sink_tree(sink);
        let next_seq = self.shared.next_seq.load(Ordering::Acquire);
        let now = now_ms();
        let mut pending = 0u64;
        let mut oldest: Option<i64> = None;
        // Entries above the cursor acknowledged out of order are not pending.
        let acked: std::collections::BTreeSet<u64> = engine
            .prefixed(&tree, &[ACKED])?
            .iter()
            .map(|(k, _)| be(&k[1..]))
            .collect();
        match wants {
            // Sequence numbers are dense above every cursor (GC only removes
            // below the lowest), so this counts without reading the backlog.
            None => {
                pending = next_seq.saturating_sub(cursor) - acked.len() as u64;
                self.scan(engine, Scan::From(cursor), |seq, bytes| {
                    if acked.contains(&seq) {
                        return Ok(true);
                    }
                    oldest = record::decode(bytes).ok().map(|e| e.appended_at_ms);
                    Ok(false)
                })?;
            }
            Some(wants) => {
                let mut scanned = 0;
                self.scan(engine, Scan::From(cursor), |seq, bytes| {
                    scanned += 1;
                    if scanned > FILTERED_STATUS_SCAN {
                        // Too long to read for a status: count the rest whole.
                        pending += next_seq.saturating_sub(seq);
                        return Ok(false);
                    }
                    if acked.contains(&seq) {
                        return Ok(true);
                    }
                    if let Ok(entry) = record::decode(bytes)
                        && wants(&entry)
                    {
                        pending += 1;
                        oldest.get_or_insert(entry.appended_at_ms);
                    }
                    Ok(true)
                })?;
            }
        }
        for (key, _) in engine.prefixed(&tree, &[REQUEUED])? {
            pending += 1;
            if let Some(entry) = self.entry_in(engine, be(&key[1..]))? {
                oldest = Some(oldest.map_or(entry.appended_at_ms, |o| o.min(entry.appended_at_ms)));
            }
        }
        let count = |state: &str| -> Result<u64, LogError> {
            Ok(engine
                .get(&tree, &engine::count_key(state))?
                .map_or(0, |v| be(&v)))
        };
        Ok(SinkStatus {
            sink: sink.to_string(),
            cursor,
            pending,
            oldest_pending_age_ms: oldest.map(|o| (now - o).max(0)),
            dead_letters: engine.prefixed(&tree, &[DEAD])?.len() as u64,
            delivered: count("delivered")?,
            expired: count("expired")?,
            configured: true,
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

    /// [`Store::list`] of a sink that takes only the entries `wants`
    /// accepts: the others are left out, pending or passed.
    pub fn list_where(
        &self,
        sink: &str,
        state: Option<&str>,
        limit: usize,
        wants: Option<&dyn Fn(&LogEntry) -> bool>,
    ) -> Result<Vec<QueueItem>, LogError> {
        self.look_now(|store, engine| {
            let cursor = store.cursor_in(engine, sink)?;
            let tree = engine::sink_tree(sink);
            let mut items = Vec::new();
            if limit == 0 {
                return Ok(items);
            }
            store.scan(engine, Scan::Back, |seq, bytes| {
                let Some(entry) = store.shared.decode(seq, bytes) else {
                    return Ok(true);
                };
                let outcome = engine.get(&tree, &keyed(OUTCOME, seq))?;
                let wanted = wants.is_none_or(|wants| wants(&entry));
                let (item_state, reason) = if engine.contains(&tree, &keyed(REQUEUED, seq))? {
                    ("requeued".to_string(), None)
                } else if let Some(o) = outcome {
                    match serde_json::from_slice::<Settlement>(&o) {
                        Ok(settlement) => (
                            settlement.state().to_string(),
                            settlement.reason().map(str::to_string),
                        ),
                        Err(_) => ("unknown".to_string(), None),
                    }
                } else if !wanted {
                    return Ok(true); // another speaker's: passed, or not yet
                } else if seq >= cursor && !engine.contains(&tree, &keyed(ACKED, seq))? {
                    ("pending".to_string(), None)
                } else {
                    // Settled with no outcome kept: delivered.
                    ("delivered".to_string(), None)
                };
                if state.is_some_and(|s| s != item_state) {
                    return Ok(true);
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
                Ok(items.len() < limit)
            })?;
            Ok(items)
        })
    }

    /// Removes entries every registered sink is done with that are older
    /// than `keep_settled`, and dedupe keys older than the retention window.
    /// Dead letters and requeued entries are kept. A sink counts whether or
    /// not it is running: only [`Store::forget`] stops it counting. Runs on
    /// the caller's thread (a blocking one); the removals go through the
    /// committer a chunk at a time.
    pub fn gc(&self) -> Result<GcReport, LogError> {
        let (report, ops) = self.look_now(|store, engine| store.gc_plan(engine))?;
        for (i, chunk) in ops.chunks(GC_CHUNK).enumerate() {
            let mut chunk = chunk.to_vec();
            if i == 0 {
                // Sequence numbers must not restart if everything below is removed.
                chunk.push(Op {
                    tree: engine::META.into(),
                    key: engine::NEXT_SEQ.to_vec(),
                    value: Some(
                        self.shared
                            .next_seq
                            .load(Ordering::Acquire)
                            .to_be_bytes()
                            .to_vec(),
                    ),
                });
            }
            let (reply, receiver) = oneshot::channel();
            self.requests
                .send(Message::Remove { ops: chunk, reply })
                .map_err(|_| LogError::Closed)?;
            receiver.blocking_recv().map_err(|_| LogError::Closed)??;
        }
        Ok(report)
    }

    fn gc_plan(&self, engine: &Engine) -> Result<(GcReport, Vec<Op>), LogError> {
        let now = now_ms();
        let mut report = GcReport::default();
        let mut horizon = self.shared.next_seq.load(Ordering::Acquire);
        let mut keep = std::collections::BTreeSet::new();
        let registered = engine.registered()?;
        for sink in &registered {
            horizon = horizon.min(self.cursor_in(engine, sink)?);
            let tree = engine::sink_tree(sink);
            for (key, _) in engine
                .prefixed(&tree, &[DEAD])?
                .into_iter()
                .chain(engine.prefixed(&tree, &[REQUEUED])?)
            {
                keep.insert(be(&key[1..]));
            }
        }
        let keep_ms = self.shared.options.keep_settled.as_millis() as i64;
        let mut removals = Vec::new();
        let mut removed = Vec::new();
        self.scan(engine, Scan::From(0), |seq, bytes| {
            if seq >= horizon {
                return Ok(false);
            }
            if keep.contains(&seq) {
                return Ok(true);
            }
            let Ok(entry) = record::decode(bytes) else {
                return Ok(true);
            };
            if now - entry.appended_at_ms < keep_ms {
                return Ok(false); // appended in order: everything after is younger
            }
            let tree = if self.shared.index().contains(seq) {
                LOG
            } else {
                engine::EVENTS
            };
            removals.push(Op {
                tree: tree.into(),
                key: seq.to_be_bytes().to_vec(),
                value: None,
            });
            removed.push(seq);
            Ok(true)
        })?;
        // A segment left holding only dead letters would never be
        // collected: they move into sled's `events` tree (each move one
        // pair of ops, first, so no chunk below splits it).
        let mut ops = Vec::new();
        let gone: std::collections::BTreeSet<u64> = removed.iter().copied().collect();
        for (_, live) in self.shared.index().live_by_segment() {
            let held: Vec<u64> = live.iter().copied().filter(|s| !gone.contains(s)).collect();
            if held.is_empty() || !held.iter().all(|s| keep.contains(s)) {
                continue;
            }
            for seq in held {
                let Some(place) = self.shared.index().get(seq) else {
                    continue;
                };
                let key = seq.to_be_bytes().to_vec();
                ops.push(Op {
                    tree: engine::EVENTS.into(),
                    key: key.clone(),
                    value: Some(place.read()?),
                });
                ops.push(Op {
                    tree: LOG.into(),
                    key,
                    value: None,
                });
            }
        }
        ops.extend(removals);
        // Outcomes of removed entries, in every sink tree (retired ones too).
        for sink in engine.sink_trees()? {
            let tree = engine::sink_tree(&sink);
            for seq in &removed {
                if engine.contains(&tree, &keyed(OUTCOME, *seq))? {
                    ops.push(Op {
                        tree: engine::sink_tree(&sink),
                        key: keyed(OUTCOME, *seq).to_vec(),
                        value: None,
                    });
                }
            }
        }
        report.events_removed = removed.len() as u64;
        let cutoff = now - self.shared.options.dedupe_retention.as_millis() as i64;
        engine.for_each(engine::DEDUPE, &[], None, |key, value| {
            let at = value.get(8..16).map_or(i64::MAX, |b| be(b) as i64);
            if at < cutoff {
                ops.push(Op {
                    tree: engine::DEDUPE.into(),
                    key: key.to_vec(),
                    value: None,
                });
                report.dedupe_removed += 1;
            }
            Ok(true)
        })?;
        Ok((report, ops))
    }

    /// Up to `limit` requeued dead letters of `sink`, oldest first, and the
    /// numbers of those no longer in the log.
    fn requeued_in(
        &self,
        engine: &Engine,
        sink: &str,
        limit: usize,
    ) -> Result<(Vec<LogEntry>, Vec<u64>), LogError> {
        let tree = engine::sink_tree(sink);
        let (mut entries, mut gone) = (Vec::new(), Vec::new());
        for (key, _) in engine.prefixed(&tree, &[REQUEUED])?.into_iter().take(limit) {
            let seq = be(&key[1..]);
            match self.entry_in(engine, seq)? {
                Some(entry) => entries.push(entry),
                None => gone.push(seq),
            }
        }
        Ok((entries, gone))
    }

    /// Settles requeued entries that were quarantined since (nothing left to
    /// send) and passes the found ones on.
    async fn settle_gone(
        &self,
        sink: &str,
        (entries, gone): (Vec<LogEntry>, Vec<u64>),
    ) -> Result<Vec<LogEntry>, LogError> {
        if !gone.is_empty() {
            let reason = "the entry is no longer in the log (damaged record)".to_string();
            self.settle(sink, gone, Settlement::Dead { reason }).await?;
        }
        Ok(entries)
    }

    /// Appends changes alone (no plugin KV).
    pub fn append_changes(&self, changes: Vec<BalanceChange>) -> LogFuture<Committed> {
        EventLog::append(self, changes, None)
    }
}

impl EventLog for Store {
    fn append(&self, changes: Vec<BalanceChange>, kv: Option<KvBatch>) -> LogFuture<Committed> {
        self.ask(|reply| Message::Append { changes, kv, reply })
    }

    fn expect_append(&self) -> AppendExpected {
        AppendExpected::counted_in(&self.shared.appends_expected)
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.shared.notify.subscribe()
    }

    fn read(&self, from: u64, limit: usize) -> LogFuture<Vec<LogEntry>> {
        self.look(move |store, engine| store.read_in(engine, from, limit))
    }

    fn cursor(&self, sink: &str) -> LogFuture<u64> {
        let sink = sink.to_string();
        self.look(move |store, engine| store.cursor_in(engine, &sink))
    }

    fn requeued(&self, sink: &str, limit: usize) -> LogFuture<Vec<LogEntry>> {
        let name = sink.to_string();
        let found = self.look(move |store, engine| store.requeued_in(engine, &name, limit));
        let (store, sink) = (self.clone(), sink.to_string());
        Box::pin(async move { store.settle_gone(&sink, found.await?).await })
    }

    fn next_batch(&self, sink: &str, limit: usize) -> LogFuture<(Vec<LogEntry>, bool)> {
        let name = sink.to_string();
        let found = self.look(move |store, engine| {
            let requeued = store.requeued_in(engine, &name, limit)?;
            if !requeued.0.is_empty() || !requeued.1.is_empty() {
                return Ok((requeued, true));
            }
            let cursor = store.cursor_in(engine, &name)?;
            Ok(((store.read_in(engine, cursor, limit)?, Vec::new()), false))
        });
        let (store, sink) = (self.clone(), sink.to_string());
        Box::pin(async move {
            let (found, requeued) = found.await?;
            Ok((store.settle_gone(&sink, found).await?, requeued))
        })
    }

    fn settle(&self, sink: &str, seqs: Vec<u64>, settlement: Settlement) -> LogFuture<()> {
        if seqs.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let sink = sink.to_string();
        self.ask(|reply| Message::Settle {
            sink,
            seqs,
            settlement,
            reply,
        })
    }

    fn pass(&self, sink: &str, through: u64) -> LogFuture<()> {
        let sink = sink.to_string();
        self.ask(|reply| Message::Pass {
            sink,
            through,
            reply,
        })
    }
}

#[cfg(test)]
mod tests;
