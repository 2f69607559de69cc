//! One thread owns every write. It takes everything that queued up while
//! the previous commit ran (appends, settlements, registrations, plugin KV,
//! GC's removals), works out each write against the store plus what the
//! batch already wrote, appends the lot to the event log's active segment
//! as one record, syncs it once if anyone in the batch needs durability,
//! applies it (payments to the index, the rest to sled), and only then
//! answers each caller.
//!
//! Long because every kind of write (append, settle, pass, register, forget,
//! requeue, GC's removals) is worked out against one transaction here; split
//! by kind, the rules that keep a commit all-or-nothing would be spread over
//! files.
//!
//! Durability by kind: appends (with their plugin KV), registrations,
//! forgetting and requeues are answered after the `fdatasync`. Settlements,
//! passes and GC's removals are answered once applied and become durable
//! with the next sync, at most [`LAZY_SYNC`] later: losing them to a power
//! cut only means a redelivery, which the Speaker API (`requestId`) and MQTT
//! subscribers (event id) absorb, and syncing each would cost a disk wait and
//! a freshly dirtied page per delivered payment per sink.
//!
//! When sled or the disk fails (a really full disk: sled keeps failing until
//! reopened), the committer answers errors, and every [`RECOVER_EVERY`]
//! reopens sled in place, reads the segments again and replays the records
//! since the last checkpoint into sled; once that works the store carries on
//! with nothing lost and no restart.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{self, ACKED, CURSOR, DEAD, Engine, OUTCOME, REQUEUED, RETIRED, be, keyed};
use super::record::{self, LogEntry};
use super::segment::{LOG, Op};
use super::segments::{self, Segments};
use super::store::Shared;
use super::{Appended, Committed, KvBatch, KvOp, LogError, Settlement, StorageError};
use crate::model::{BalanceChange, now_ms};

/// At most this many requests share one commit, to bound the record.
const MAX_BATCH: usize = 512;
/// Lazily durable writes are synced at most this long after they were made.
const LAZY_SYNC: Duration = Duration::from_millis(200);
/// A checkpoint at least this often while there are records.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// A checkpoint once this many bytes of writes are staged in front of sled:
/// bounds that memory, and the replay at open.
const CHECKPOINT_BYTES: u64 = 512 << 10;
/// How often a failed store is reopened.
const RECOVER_EVERY: Duration = Duration::from_millis(500);
/// How often the disk-space check really asks the filesystem.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

pub(super) enum Message {
    Append {
        changes: Vec<BalanceChange>,
        kv: Option<KvBatch>,
        reply: Reply<Committed>,
    },
    Settle {
        sink: String,
        seqs: Vec<u64>,
        settlement: Settlement,
        reply: Reply<()>,
    },
    Pass {
        sink: String,
        through: u64,
        reply: Reply<()>,
    },
    Register {
        sink: String,
        start: Option<u64>,
        reply: Reply<u64>,
    },
    Retire {
        sink: String,
        reply: Reply<()>,
    },
    Forget {
        sink: String,
        reply: Reply<bool>,
    },
    Requeue {
        sink: String,
        seq: Option<u64>,
        reply: Reply<usize>,
    },
    /// Removals GC worked out; lazily durable.
    Remove {
        ops: Vec<Op>,
        reply: Reply<()>,
    },
    /// Apply the staged writes to sled and flush it.
    Checkpoint {
        reply: Reply<()>,
    },
    /// Commit what is queued, checkpoint, then stop.
    Close,
}

impl Message {
    fn needs_sync(&self) -> bool {
        !matches!(
            self,
            Message::Settle { .. } | Message::Pass { .. } | Message::Remove { .. }
        )
    }

    fn fail(self, error: LogError) {
        match self {
            Message::Append { reply, .. } => drop(reply.send(Err(error))),
            Message::Settle { reply, .. }
            | Message::Pass { reply, .. }
            | Message::Retire { reply, .. }
            | Message::Remove { reply, .. }
            | Message::Checkpoint { reply } => drop(reply.send(Err(error))),
            Message::Register { reply, .. } => drop(reply.send(Err(error))),
            Message::Forget { reply, .. } => drop(reply.send(Err(error))),
            Message::Requeue { reply, .. } => drop(reply.send(Err(error))),
            Message::Close => {}
        }
    }
}

/// What a processed message answers once the batch is durable.
enum Answer {
    Append(Reply<Committed>, Committed, Option<KvApplied>),
    Unit(Reply<()>),
    Seq(Reply<u64>, u64),
    Flag(Reply<bool>, bool),
    Count(Reply<usize>, usize),
}

/// A KV batch that passed its checks, to count once it is applied.
struct KvApplied {
    batch: KvBatch,
    keys: i64,
    bytes: i64,
}

pub(super) struct Committer {
    shared: Arc<Shared>,
    segments: Segments,
    data_file: File,
    /// The next sequence number to hand out. Above the durable end while a
    /// failed commit holds numbers nobody may reuse.
    next: u64,
    /// The store failed and must be reopened before anything else.
    broken: Option<LogError>,
    last_recovery: Option<Instant>,
    last_checkpoint: Instant,
    /// When the oldest lazily durable write not yet synced was made.
    unsynced_since: Option<Instant>,
    space: Option<(Instant, Result<(), LogError>)>,
    /// Forgotten sinks whose trees are dropped after the next checkpoint.
    to_drop: Vec<String>,
}

impl Committer {
    pub fn new(shared: Arc<Shared>, segments: Segments, data_file: File, next: u64) -> Committer {
        Committer {
            shared,
            segments,
            data_file,
            next,
            broken: None,
            last_recovery: None,
            last_checkpoint: Instant::now(),
            unsynced_since: None,
            space: None,
            to_drop: Vec::new(),
        }
    }

    /// Runs until told to close or every sender is gone.
    pub fn run(mut self, requests: Receiver<Message>) {
        loop {
            let first = match requests.recv_timeout(LAZY_SYNC / 2) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let (batch, closing) = self.gather(&requests, first);
            self.commit(batch);
            if closing {
                break;
            }
        }
        if self.broken.is_none()
            && let Err(error) = self.checkpoint()
        {
            tracing::error!(%error, "event log: final checkpoint failed; the write-ahead file has everything");
        }
    }

    /// The next commit's requests: `first` and whatever is queued behind
    /// it; and if that must sync while webhooks are on their way to an
    /// append, those that come within `LogOptions::gather` too. True if
    /// told to close.
    fn gather(&self, requests: &Receiver<Message>, first: Message) -> (Vec<Message>, bool) {
        let mut batch = Vec::new();
        let mut next = Some(first);
        let until = Instant::now() + self.shared.options.gather;
        loop {
            match next.take() {
                Some(Message::Close) => return (batch, true),
                Some(message) => batch.push(message),
                None => {}
            }
            if batch.len() >= MAX_BATCH {
                return (batch, false);
            }
            next = requests.try_recv().ok();
            if next.is_some() {
                continue;
            }
            let worth_waiting =
                self.shared.appends_expected() > 0 && batch.iter().any(Message::needs_sync);
            let left = until.saturating_duration_since(Instant::now());
            if !worth_waiting || left.is_zero() {
                return (batch, false);
            }
            match requests.recv_timeout(left) {
                Ok(message) => next = Some(message),
                Err(_) => return (batch, false),
            }
        }
    }

    /// Between commits: sync lazy writes that waited long enough, checkpoint
    /// when due, reopen a failed store.
    fn idle(&mut self) {
        if self.broken.is_some() {
            let _ = self.recover_if_due();
            return;
        }
        self.quarantine();
        let result = (|| {
            if self
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= LAZY_SYNC)
            {
                self.segments.sync()?;
                self.unsynced_since = None;
            }
            if self.segments.end() != self.segments.checkpointed()
                && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            {
                self.checkpoint()?;
            }
            Ok::<_, LogError>(())
        })();
        if let Err(error) = result {
            // Nobody waits for these writes, so nobody else logs it.
            tracing::error!(%error, "event log sync or checkpoint failed; the store is reopened in place");
            self.failed(error);
        }
    }

    fn commit(&mut self, batch: Vec<Message>) {
        if let Err(error) = self.recover_if_due() {
            for message in batch {
                message.fail(error.clone());
            }
            return;
        }
        let engine = match self.shared.engine() {
            Ok(engine) => engine,
            Err(error) => {
                for message in batch {
                    message.fail(error.clone());
                }
                return;
            }
        };
        let needs_sync = batch.iter().any(Message::needs_sync);
        let wants_checkpoint = batch
            .iter()
            .any(|m| matches!(m, Message::Checkpoint { .. } | Message::Forget { .. }));
        let shared = self.shared.clone();
        let mut txn = Txn::new(&engine, &shared);
        let applied_next = self.shared.next_seq.load(Ordering::Acquire);
        let mut answers = Vec::with_capacity(batch.len());
        let mut next = self.next;
        let mut failed = None;
        for message in batch {
            if let Some(error) = &failed {
                message.fail(LogError::clone(error));
                continue;
            }
            match self.process(&mut txn, message, &mut next, applied_next) {
                Ok(Some(answer)) => answers.push(answer),
                Ok(None) => {}
                Err(error) => failed = Some(error),
            }
        }
        if let Some(error) = failed {
            // A read failed: sled is failing. Nobody in this batch is told
            // "done"; the numbers handed out stay taken.
            self.next = next;
            drop(txn);
            drop(engine);
            self.failed(error.clone());
            fail_answers(answers, &error);
            return;
        }
        let ops = txn.into_ops();
        let written = if ops.is_empty() {
            Ok(())
        } else {
            self.write(&engine, &ops, needs_sync)
        };
        // Numbers in a record that may have reached the disk stay taken even
        // if it failed: reusing them could pair a replayed entry's dedupe key
        // with a different payment.
        self.next = next;
        if let Err(error) = written {
            drop(engine);
            self.failed(error.clone());
            fail_answers(answers, &error);
            return;
        }
        let news = self.shared.make_readable(next);
        let checkpointed = if wants_checkpoint {
            self.checkpoint()
        } else {
            Ok(())
        };
        drop(engine);
        match checkpointed {
            Ok(()) => answers.into_iter().for_each(Answer::send),
            Err(error) => {
                self.failed(error.clone());
                fail_answers(answers, &error);
            }
        }
        // Callers first: sinks woken first would take the async workers
        // while a webhook's 2xx waited behind them.
        if news {
            self.shared.wake_readers(next);
        }
    }

    /// Moves the records readers found damaged to the quarantine tree.
    fn quarantine(&mut self) {
        let damaged = self.shared.take_damaged();
        if damaged.is_empty() {
            return;
        }
        let Ok(engine) = self.shared.engine() else {
            return;
        };
        let mut ops = Vec::new();
        let mut moved = Vec::new();
        for seq in damaged {
            let key = seq.to_be_bytes().to_vec();
            let Ok(Some((tree, value))) = self.shared.record(&engine, seq) else {
                continue;
            };
            if record::decode(&value).is_ok() {
                continue;
            }
            ops.push(Op {
                tree: engine::QUARANTINE.into(),
                key: key.clone(),
                value: Some(value),
            });
            ops.push(Op {
                tree: tree.into(),
                key,
                value: None,
            });
            moved.push(seq);
        }
        drop(engine);
        if moved.is_empty() {
            return;
        }
        let (reply, mut answer) = oneshot::channel();
        self.commit(vec![Message::Remove { ops, reply }]);
        // Answered by now; no one else waits for it.
        match answer.try_recv() {
            Ok(Ok(())) => self.shared.count_quarantined(moved.len() as u64),
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot move damaged records to quarantine; will try again");
                self.shared.return_damaged(moved);
            }
            Err(_) => self.shared.return_damaged(moved),
        }
    }

    /// Logs `ops` and applies them. Synced now if anyone needs it, else
    /// within [`LAZY_SYNC`].
    fn write(&mut self, engine: &Engine, ops: &[Op], needs_sync: bool) -> Result<(), LogError> {
        let (segment, log) = self.segments.append(ops)?;
        if needs_sync {
            self.segments.sync()?;
            self.unsynced_since = None;
        } else if self.unsynced_since.is_none() {
            self.unsynced_since = Some(Instant::now());
        }
        // The record is durable (or a lazy one is written): readers may see it.
        engine.stage(ops)?;
        let file = self.segments.active_file();
        self.shared.index_mut().apply(segment, &file, &log);
        if engine.staged_bytes() >= CHECKPOINT_BYTES {
            self.checkpoint_with(engine)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), LogError> {
        let engine = self.shared.engine()?;
        self.checkpoint_with(&engine)
    }

    /// Everything applied so far becomes durable in sled's files, with
    /// where in the segments that is; segments no payment is left in are
    /// collected.
    fn checkpoint_with(&mut self, engine: &Engine) -> Result<(), LogError> {
        let at = self.segments.end();
        engine.checkpoint(at, &self.data_file, &*self.shared.disk)?;
        let collected = {
            let index = self.shared.index();
            self.segments.checkpoint(at, |id| index.live(id) == 0)?
        };
        if !collected.is_empty() {
            let mut index = self.shared.index_mut();
            for id in collected {
                index.forget_segment(id);
            }
        }
        self.unsynced_since = None;
        self.last_checkpoint = Instant::now();
        for sink in std::mem::take(&mut self.to_drop) {
            // Its registry entry and cursor are gone for good (checkpointed);
            // the rest of its tree goes now.
            engine.db.drop_tree(engine::sink_tree(&sink))?;
        }
        Ok(())
    }

    /// Marks the store broken; it is reopened in place before the next
    /// commit. Logged once, by whoever handles the error: the callers that
    /// were waiting (ingress answers 503, a sink retries, GC tries again
    /// later), or the committer itself where nobody waits (idle syncs and
    /// checkpoints, the quarantine).
    fn failed(&mut self, error: LogError) {
        tracing::debug!(%error, "event log commit failed; the store is reopened in place");
        self.shared.set_last_error(Some(error.to_string()));
        self.broken = Some(error);
    }

    /// Reopens a failed store, at most every [`RECOVER_EVERY`].
    fn recover_if_due(&mut self) -> Result<(), LogError> {
        let Some(error) = self.broken.clone() else {
            return Ok(());
        };
        if self
            .last_recovery
            .is_some_and(|at| at.elapsed() < RECOVER_EVERY)
        {
            return Err(error);
        }
        self.last_recovery = Some(Instant::now());
        match self.recover() {
            Ok(()) => {
                tracing::warn!("event log reopened in place after a failure; accepting again");
                self.broken = None;
                self.shared.set_last_error(None);
                Ok(())
            }
            Err(error) => {
                tracing::debug!(%error, "event log still cannot be reopened");
                self.shared.set_last_error(Some(error.to_string()));
                self.broken = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Drops sled, opens it again, reads the segments again and replays
    /// the records since the last checkpoint.
    fn recover(&mut self) -> Result<(), LogError> {
        // Records whose sync failed are written again first: the kernel
        // may have dropped them as clean.
        self.segments.rewrite_unsynced()?;
        self.shared.close_engine();
        let engine = self.shared.reopen_engine()?;
        let (segments, index) = Segments::open_replayed(
            &self.shared.segments_dir(),
            self.shared.options.segment_bytes,
            self.shared.disk.clone(),
            &engine,
        )?;
        self.segments = segments;
        *self.shared.index_mut() = index;
        self.data_file = engine::open_data_file(&self.shared.state_dir())?;
        self.unsynced_since = None;
        self.space = None;
        self.checkpoint_with(&engine)?;
        let durable_next = engine.stored_next_seq()?.max(self.shared.index().end());
        self.next = self.next.max(durable_next);
        self.shared.install_engine(engine);
        // Never moves back: `advance` keeps the larger.
        self.shared.advance(durable_next);
        Ok(())
    }

    /// Refuses appends when the store or the filesystem is full; asks the
    /// filesystem at most once a second.
    fn check_space(&mut self, engine: &Engine) -> Result<(), LogError> {
        if let Some((at, result)) = &self.space
            && at.elapsed() < SPACE_CHECK_EVERY
        {
            return result.clone();
        }
        let result = self.measure_space(engine);
        self.space = Some((Instant::now(), result.clone()));
        result
    }

    fn measure_space(&self, engine: &Engine) -> Result<(), LogError> {
        let options = &self.shared.options;
        let used = engine.db.size_on_disk()? + self.segments.disk_bytes();
        if used >= options.max_disk_bytes {
            return Err(LogError::Full(StorageError::msg(format!(
                "store is {} MiB, limit {} MiB",
                used >> 20,
                options.max_disk_bytes >> 20
            ))));
        }
        let free = self
            .shared
            .disk
            .free_bytes(&self.shared.dir_handle)
            .map_err(|e| LogError::storage("statvfs", e))?;
        if free < options.min_free_disk_bytes {
            return Err(LogError::Full(StorageError::msg(format!(
                "{} MiB free on the data filesystem, {} MiB reserved",
                free >> 20,
                options.min_free_disk_bytes >> 20
            ))));
        }
        Ok(())
    }

    /// Works out one message's writes into `txn`. `Err` only for a storage
    /// failure; a refusal (full, not registered) is answered here.
    fn process(
        &mut self,
        txn: &mut Txn<'_>,
        message: Message,
        next: &mut u64,
        applied_next: u64,
    ) -> Result<Option<Answer>, LogError> {
        match message {
            Message::Append { changes, kv, reply } => {
                if let Err(error) = self.check_space(txn.engine) {
                    drop(reply.send(Err(error)));
                    return Ok(None);
                }
                let mut appended = Vec::with_capacity(changes.len());
                let now = now_ms();
                for change in &changes {
                    let key = change.dedupe_key();
                    if let Some(existing) = txn.get(engine::DEDUPE, key.as_bytes())? {
                        appended.push(Appended::Duplicate(be(&existing)));
                        continue;
                    }
                    let seq = *next;
                    let entry = LogEntry {
                        seq,
                        appended_at_ms: now,
                        change: change.clone(),
                    };
                    txn.put(LOG, seq.to_be_bytes().to_vec(), record::encode(&entry));
                    let mut value = seq.to_be_bytes().to_vec();
                    value.extend_from_slice(&now.to_be_bytes());
                    txn.put(engine::DEDUPE, key.into_bytes(), value);
                    appended.push(Appended::New(seq));
                    *next += 1;
                }
                let (kv_result, kv_applied) = match kv {
                    Some(batch) => match stage_kv(txn, &batch)? {
                        Ok((keys, bytes)) => (Ok(()), Some(KvApplied { batch, keys, bytes })),
                        Err(refusal) => (Err(refusal), None),
                    },
                    None => (Ok(()), None),
                };
                Ok(Some(Answer::Append(
                    reply,
                    Committed {
                        appended,
                        kv: kv_result,
                    },
                    kv_applied,
                )))
            }
            Message::Settle {
                sink,
                seqs,
                settlement,
                reply,
            } => {
                let Some(cursor) = registered_cursor(txn, &sink)? else {
                    drop(reply.send(Err(LogError::NotRegistered(sink))));
                    return Ok(None);
                };
                let tree = engine::sink_tree(&sink);
                let outcome = serde_json::to_vec(&settlement).unwrap_or_default();
                let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
                for &seq in &seqs {
                    // Only outcomes other than delivered are kept per entry
                    // (one key per delivered payment per sink was most of
                    // sled's writes); an entry settled without one was
                    // delivered.
                    let before = match txn.get(&tree, &keyed(OUTCOME, seq))? {
                        Some(b) => serde_json::from_slice::<Settlement>(&b)
                            .ok()
                            .map(|s| s.state()),
                        None if seq < cursor || txn.get(&tree, &keyed(ACKED, seq))?.is_some() => {
                            Some("delivered")
                        }
                        None => None,
                    };
                    if let Some(state) = before {
                        *counts.entry(state).or_default() -= 1;
                    }
                    *counts.entry(settlement.state()).or_default() += 1;
                    match settlement {
                        Settlement::Delivered => txn.remove(&tree, keyed(OUTCOME, seq).to_vec())?,
                        _ => txn.put(&tree, keyed(OUTCOME, seq).to_vec(), outcome.clone()),
                    }
                    txn.remove(&tree, keyed(REQUEUED, seq).to_vec())?;
                    match settlement {
                        Settlement::Dead { .. } => {
                            txn.put(&tree, keyed(DEAD, seq).to_vec(), Vec::new())
                        }
                        _ => txn.remove(&tree, keyed(DEAD, seq).to_vec())?,
                    }
                    if seq >= cursor {
                        txn.put(&tree, keyed(ACKED, seq).to_vec(), Vec::new());
                    }
                }
                for (state, delta) in counts {
                    if delta == 0 {
                        continue;
                    }
                    let key = engine::count_key(state);
                    let n = txn.get(&tree, &key)?.map_or(0, |v| be(&v));
                    txn.put(
                        &tree,
                        key,
                        n.saturating_add_signed(delta).to_be_bytes().to_vec(),
                    );
                }
                advance_cursor(txn, &tree, cursor, applied_next)?;
                Ok(Some(Answer::Unit(reply)))
            }
            Message::Pass {
                sink,
                through,
                reply,
            } => {
                let Some(cursor) = registered_cursor(txn, &sink)? else {
                    drop(reply.send(Err(LogError::NotRegistered(sink))));
                    return Ok(None);
                };
                let tree = engine::sink_tree(&sink);
                if through >= cursor {
                    let through = through.min(applied_next.saturating_sub(1));
                    for key in
                        txn.keys_between(&tree, &keyed(ACKED, cursor), &keyed(ACKED, through + 1))?
                    {
                        txn.remove(&tree, key)?;
                    }
                    advance_cursor(txn, &tree, through + 1, applied_next)?;
                }
                Ok(Some(Answer::Unit(reply)))
            }
            Message::Register { sink, start, reply } => {
                let tree = engine::sink_tree(&sink);
                let cursor = match txn.get(&tree, CURSOR)? {
                    Some(c) if txn.get(engine::REGISTRY, sink.as_bytes())?.is_some() => be(&c),
                    _ => {
                        let start = start.unwrap_or(applied_next).min(applied_next);
                        txn.put(&tree, CURSOR.to_vec(), start.to_be_bytes().to_vec());
                        txn.remove(&tree, RETIRED.to_vec())?;
                        txn.put(
                            engine::REGISTRY,
                            sink.clone().into_bytes(),
                            now_ms().to_be_bytes().to_vec(),
                        );
                        start
                    }
                };
                Ok(Some(Answer::Seq(reply, cursor)))
            }
            Message::Retire { sink, reply } => {
                txn.put(&engine::sink_tree(&sink), RETIRED.to_vec(), Vec::new());
                txn.remove(engine::REGISTRY, sink.into_bytes())?;
                Ok(Some(Answer::Unit(reply)))
            }
            Message::Forget { sink, reply } => {
                let known = txn.get(engine::REGISTRY, sink.as_bytes())?.is_some();
                if known {
                    txn.remove(engine::REGISTRY, sink.clone().into_bytes())?;
                    txn.remove(&engine::sink_tree(&sink), CURSOR.to_vec())?;
                    self.to_drop.push(sink);
                }
                Ok(Some(Answer::Flag(reply, known)))
            }
            Message::Requeue { sink, seq, reply } => {
                let tree = engine::sink_tree(&sink);
                let dead: Vec<u64> = match seq {
                    Some(seq) if txn.get(&tree, &keyed(DEAD, seq))?.is_some() => vec![seq],
                    Some(_) => Vec::new(),
                    None => txn
                        .keys_between(&tree, &[DEAD], &[DEAD + 1])?
                        .iter()
                        .map(|k| be(&k[1..]))
                        .collect(),
                };
                for seq in &dead {
                    txn.remove(&tree, keyed(DEAD, *seq).to_vec())?;
                    txn.put(&tree, keyed(REQUEUED, *seq).to_vec(), Vec::new());
                }
                Ok(Some(Answer::Count(reply, dead.len())))
            }
            Message::Remove { ops, reply } => {
                for op in ops {
                    match op.value {
                        Some(value) => txn.put(&op.tree, op.key, value),
                        None => txn.remove(&op.tree, op.key)?,
                    }
                }
                Ok(Some(Answer::Unit(reply)))
            }
            Message::Checkpoint { reply } => Ok(Some(Answer::Unit(reply))),
            Message::Close => Ok(None),
        }
    }
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Append(reply, committed, kv) => {
                if let Some(kv) = kv {
                    kv.batch
                        .quota
                        .applied(&kv.batch.connector, kv.keys, kv.bytes);
                }
                drop(reply.send(Ok(committed)));
            }
            Answer::Unit(reply) => drop(reply.send(Ok(()))),
            Answer::Seq(reply, seq) => drop(reply.send(Ok(seq))),
            Answer::Flag(reply, flag) => drop(reply.send(Ok(flag))),
            Answer::Count(reply, n) => drop(reply.send(Ok(n))),
        }
    }

    fn fail(self, error: LogError) {
        match self {
            Answer::Append(reply, ..) => drop(reply.send(Err(error))),
            Answer::Unit(reply) => drop(reply.send(Err(error))),
            Answer::Seq(reply, _) => drop(reply.send(Err(error))),
            Answer::Flag(reply, _) => drop(reply.send(Err(error))),
            Answer::Count(reply, _) => drop(reply.send(Err(error))),
        }
    }
}

fn fail_answers(answers: Vec<Answer>, error: &LogError) {
    for answer in answers {
        answer.fail(error.clone());
    }
}

/// `sink`'s cursor if it is registered.
fn registered_cursor(txn: &Txn<'_>, sink: &str) -> Result<Option<u64>, LogError> {
    if txn.get(engine::REGISTRY, sink.as_bytes())?.is_none() {
        return Ok(None);
    }
    Ok(Some(
        txn.get(&engine::sink_tree(sink), CURSOR)?
            .map_or(0, |c| be(&c)),
    ))
}

/// Moves the cursor in `tree` from `from` over every entry acknowledged out
/// of order or no longer in the log (quarantined, or numbers a failed commit
/// took), up to the first one still open; never past `end`.
fn advance_cursor(txn: &mut Txn<'_>, tree: &str, from: u64, end: u64) -> Result<(), LogError> {
    let mut cursor = from;
    while cursor < end {
        let acked = keyed(ACKED, cursor);
        if txn.get(tree, &acked)?.is_some() {
            txn.remove(tree, acked.to_vec())?;
        } else if txn.has_entry(cursor)? {
            break;
        }
        cursor += 1;
    }
    let stored = txn.get(tree, CURSOR)?.map_or(0, |c| be(&c));
    if cursor > stored {
        txn.put(tree, CURSOR.to_vec(), cursor.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Checks a plugin call's KV writes against the store as it is now and the
/// quotas; stages them if they pass. The outer `Err` is a storage failure,
/// the inner one the reason the writes were refused.
fn stage_kv(txn: &mut Txn<'_>, batch: &KvBatch) -> Result<Result<(i64, i64), String>, LogError> {
    let tree = engine::kv_tree(&batch.connector);
    let mut view: BTreeMap<&str, Option<&[u8]>> = BTreeMap::new();
    let mut keys = 0i64;
    let mut bytes = 0i64;
    for op in &batch.ops {
        let (key, value) = match op {
            KvOp::Set(key, value) => (key, Some(value.as_slice())),
            KvOp::Delete(key) => (key, None),
            KvOp::Swap { key, expected, new } => {
                let current = match view.get(key.as_str()) {
                    Some(v) => v.map(<[u8]>::to_vec),
                    None => txn.get(&tree, key.as_bytes())?,
                };
                if current.as_deref() != expected.as_deref() {
                    return Ok(Err(format!(
                        "compare-and-swap on `{key}` no longer holds (changed by another call)"
                    )));
                }
                (key, Some(new.as_slice()))
            }
        };
        let before = match view.get(key.as_str()) {
            Some(v) => v.map(<[u8]>::len),
            None => txn.get(&tree, key.as_bytes())?.map(|v| v.len()),
        };
        let size = |v: Option<usize>| v.map_or(0, |n| (key.len() + n) as i64);
        keys += i64::from(value.is_some()) - i64::from(before.is_some());
        bytes += size(value.map(<[u8]>::len)) - size(before);
        view.insert(key, value);
    }
    if let Err(refusal) = batch.quota.check(&batch.connector, keys, bytes) {
        return Ok(Err(refusal));
    }
    for (key, value) in view {
        match value {
            Some(value) => txn.put(&tree, key.as_bytes().to_vec(), value.to_vec()),
            None => txn.remove(&tree, key.as_bytes().to_vec())?,
        }
    }
    Ok(Ok((keys, bytes)))
}

/// The writes of one commit, read back by the messages after them.
struct Txn<'e> {
    engine: &'e Engine,
    /// The segments' index as it was before this commit (only the
    /// committer changes it, after the commit).
    index: std::sync::RwLockReadGuard<'e, segments::Index>,
    writes: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'e> Txn<'e> {
    fn new(engine: &'e Engine, shared: &'e Shared) -> Txn<'e> {
        Txn {
            engine,
            index: shared.index(),
            writes: BTreeMap::new(),
        }
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        if let Some(value) = self.writes.get(tree).and_then(|t| t.get(key)) {
            return Ok(value.clone());
        }
        self.engine.get(tree, key)
    }

    /// Whether entry `seq` is in the log (a segment, or sled's `events`
    /// tree) as the store plus this commit's writes have it.
    fn has_entry(&self, seq: u64) -> Result<bool, LogError> {
        let key = seq.to_be_bytes();
        if let Some(value) = self.writes.get(LOG).and_then(|t| t.get(key.as_slice())) {
            return Ok(value.is_some());
        }
        if let Some(value) = self
            .writes
            .get(engine::EVENTS)
            .and_then(|t| t.get(key.as_slice()))
        {
            return Ok(value.is_some());
        }
        Ok(self.index.contains(seq) || self.engine.events.contains_key(key)?)
    }

    fn put(&mut self, tree: &str, key: Vec<u8>, value: Vec<u8>) {
        self.writes
            .entry(tree.to_string())
            .or_default()
            .insert(key, Some(value));
    }

    /// Removes `key`; nothing is written if it is not there (most removals
    /// of a settlement, e.g. a requeued mark, find nothing: skipping them
    /// keeps records small). Safe for replay: a key absent now stays absent
    /// until a later write, which is replayed too.
    fn remove(&mut self, tree: &str, key: Vec<u8>) -> Result<(), LogError> {
        let in_store = if tree == LOG {
            self.index.contains(be(&key))
        } else {
            self.engine.contains(tree, &key)?
        };
        let writes = self.writes.entry(tree.to_string()).or_default();
        if in_store {
            writes.insert(key, None);
        } else {
            // Put earlier in this commit (an acknowledgement the cursor
            // then passed), or never there: nothing to write either way.
            writes.remove(&key);
        }
        Ok(())
    }

    /// Keys in `[from, to)` as the store plus this commit's writes have them.
    fn keys_between(&self, tree: &str, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, LogError> {
        let mut keys = std::collections::BTreeSet::new();
        self.engine.for_each(tree, from, Some(to), |key, _| {
            keys.insert(key.to_vec());
            Ok(true)
        })?;
        if let Some(written) = self.writes.get(tree) {
            for (key, value) in written.range(from.to_vec()..to.to_vec()) {
                match value {
                    Some(_) => keys.insert(key.clone()),
                    None => keys.remove(key),
                };
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn into_ops(self) -> Vec<Op> {
        let mut ops = Vec::new();
        for (tree, writes) in self.writes {
            for (key, value) in writes {
                ops.push(Op {
                    tree: tree.clone(),
                    key,
                    value,
                });
            }
        }
        ops
    }
}

pub(super) fn observe_sync(call: &str, started: Instant) {
    crate::metrics::metrics()
        .fsync_seconds
        .with_label_values(&[call])
        .observe(started.elapsed().as_secs_f64());
}

/// Makes everything on the data directory's filesystem durable.
pub(super) fn sync_filesystem(dir: &File) -> Result<(), LogError> {
    let started = Instant::now();
    let result = rustix::fs::syncfs(dir).map_err(|e| LogError::storage("syncfs", e));
    observe_sync("syncfs", started);
    result
}
