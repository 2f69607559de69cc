//! sled, as the store lays its data out in it.
//!
//! Trees:
//! - `events`: seq (u64 BE) → record ([`super::record`]), for payments not
//!   in a segment: those of stores from before the segments, and dead
//!   letters moved out of a segment so it could be collected.
//! - `dedupe`: `provider\x1ftransaction id` → seq BE ++ appended-at BE.
//! - `meta`: `schema`; `next_seq` (written by GC before it removes entries,
//!   so sequence numbers never repeat even when every entry was collected);
//!   `checkpointed` (where in the segments the replay at open starts);
//!   `registry` once the sink registry exists.
//! - `quarantine`: seq BE → the bytes that failed their checksum.
//! - `sinks`: the registry, sink name → registered-at ms BE. GC keeps what
//!   any sink in it still needs, running or not.
//! - `sink/<name>`: `c` → cursor BE (the first entry not settled or passed);
//!   `a`+seq → () for entries acknowledged above the cursor (out of order);
//!   `o`+seq → settlement JSON (expired, dead; none kept for delivered); `d`+seq → () (dead letters); `r`+seq → ()
//!   (requeued); `n/<state>` → count BE; `handed-over` → () once its cursor
//!   went to other sinks (speaker lanes).
//! - `kv/<connector>`: the plugin's own keys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::LogError;
use super::segment::{LOG, Op, Position};

pub const NEXT_SEQ: &[u8] = b"next_seq";
/// In `meta`: the [`Position`] in the segments before which every record's
/// writes are in sled (stored, then flushed, at each checkpoint).
pub const CHECKPOINTED: &[u8] = b"checkpointed";
pub const SCHEMA: &[u8] = b"schema";
/// In `meta` once every sink with a cursor was put in the registry.
pub const REGISTRY_MADE: &[u8] = b"registry";
pub const CURSOR: &[u8] = b"c";
pub const ACKED: u8 = b'a';
pub const OUTCOME: u8 = b'o';
pub const DEAD: u8 = b'd';
pub const REQUEUED: u8 = b'r';
/// A sink whose cursor was handed over to others. Its first byte must be
/// none of the per-entry prefixes above, which are scanned by prefix.
pub const RETIRED: &[u8] = b"handed-over";

pub const EVENTS: &str = "events";
pub const DEDUPE: &str = "dedupe";
pub const META: &str = "meta";
pub const QUARANTINE: &str = "quarantine";
pub const REGISTRY: &str = "sinks";

pub fn sink_tree(sink: &str) -> String {
    format!("sink/{sink}")
}

pub fn kv_tree(connector: &str) -> String {
    format!("kv/{connector}")
}

pub fn count_key(state: &str) -> Vec<u8> {
    format!("n/{state}").into_bytes()
}

/// The big-endian u64 at the start of `bytes` (sequence numbers, counters,
/// timestamps are all stored this way, so keys sort in numeric order).
pub fn be(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(..8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

pub fn keyed(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Writes staged in memory until the next checkpoint, by tree and key
/// (None: removed).
type Staged = BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// An open sled database and the trees every call needs, with the writes
/// of the commits since the last checkpoint held in memory in front of it.
///
/// sled keeps every insert in its log and its page state until a flush, and
/// one insert per commit (a sink's cursor at each delivery) grew the
/// process by ~180 bytes a commit (+15 MiB draining 100,000 payments one at
/// a time). Staged here, a key written a thousand times between checkpoints
/// is one entry, and sled sees it once, at the checkpoint. The segment
/// record holds every write, so nothing staged is lost with the process.
/// `events` and `quarantine` (rare, large values) go straight to sled.
pub struct Engine {
    pub db: sled::Db,
    pub events: sled::Tree,
    pub dedupe: sled::Tree,
    pub meta: sled::Tree,
    pub quarantine: sled::Tree,
    pub registry: sled::Tree,
    staged: RwLock<Staged>,
    /// Bytes of keys and values staged.
    staged_bytes: AtomicU64,
}

fn staged_directly(tree: &str) -> bool {
    tree == EVENTS || tree == QUARANTINE
}

impl Engine {
    pub fn new(db: sled::Db) -> Result<Engine, LogError> {
        let tree = |name: &str| db.open_tree(name);
        Ok(Engine {
            events: tree(EVENTS)?,
            dedupe: tree(DEDUPE)?,
            meta: tree(META)?,
            quarantine: tree(QUARANTINE)?,
            registry: tree(REGISTRY)?,
            db,
            staged: RwLock::default(),
            staged_bytes: AtomicU64::new(0),
        })
    }

    fn staged(&self) -> std::sync::RwLockReadGuard<'_, Staged> {
        self.staged.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A commit's writes: payments aside (they stay in the segments),
    /// staged until the next checkpoint.
    pub fn stage(&self, ops: &[Op]) -> Result<(), LogError> {
        let direct: Vec<Op> = ops
            .iter()
            .filter(|op| staged_directly(&op.tree))
            .cloned()
            .collect();
        self.apply(&direct)?;
        let mut staged = self.staged.write().unwrap_or_else(|e| e.into_inner());
        let mut bytes = 0;
        for op in ops
            .iter()
            .filter(|op| op.tree != LOG && !staged_directly(&op.tree))
        {
            bytes += (op.key.len() + op.value.as_ref().map_or(0, Vec::len)) as u64;
            staged
                .entry(op.tree.clone())
                .or_default()
                .insert(op.key.clone(), op.value.clone());
        }
        self.staged_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes written into the stage since the last checkpoint.
    pub fn staged_bytes(&self) -> u64 {
        self.staged_bytes.load(Ordering::Relaxed)
    }

    /// Applies the staged writes to sled (a checkpoint then flushes),
    /// leaving them staged so readers see the same values meanwhile.
    fn apply_staged(&self) -> Result<(), LogError> {
        let staged = self.staged();
        for (name, writes) in staged.iter() {
            let tree = self.tree(name)?;
            for (key, value) in writes {
                match value {
                    Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                    None => tree.remove(key.as_slice())?,
                };
            }
        }
        Ok(())
    }

    /// After a flush of what [`Engine::apply_staged`] applied.
    fn clear_staged(&self) {
        self.staged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.staged_bytes.store(0, Ordering::Relaxed);
    }

    /// `key` in `tree`, staged or in sled.
    pub fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        if let Some(value) = self.staged().get(tree).and_then(|t| t.get(key)) {
            return Ok(value.clone());
        }
        Ok(self.tree(tree)?.get(key)?.map(|v| v.to_vec()))
    }

    pub fn contains(&self, tree: &str, key: &[u8]) -> Result<bool, LogError> {
        Ok(self.get(tree, key)?.is_some())
    }

    /// Calls `each` with every key and value in `tree` from `from` (to
    /// before `to`), staged writes over sled's, in key order, until it
    /// returns false.
    pub fn for_each(
        &self,
        tree: &str,
        from: &[u8],
        to: Option<&[u8]>,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let upper = match to {
            Some(to) => std::ops::Bound::Excluded(to.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let range = (std::ops::Bound::Included(from.to_vec()), upper);
        // A copy of the staged part (bounded by the checkpoint size).
        let staged: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .staged()
            .get(tree)
            .map(|t| {
                t.range(range.clone())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut staged = staged.into_iter().peekable();
        for item in self.tree(tree)?.range(range) {
            let (key, value) = item?;
            while let Some((k, v)) = staged.next_if(|(k, _)| k.as_slice() < &*key) {
                if let Some(v) = v
                    && !each(&k, &v)?
                {
                    return Ok(());
                }
            }
            // A staged write of this very key replaces sled's value.
            if let Some((k, v)) = staged.next_if(|(k, _)| k.as_slice() == &*key) {
                if let Some(v) = v
                    && !each(&k, &v)?
                {
                    return Ok(());
                }
                continue;
            }
            if !each(&key, &value)? {
                return Ok(());
            }
        }
        for (k, v) in staged {
            if let Some(v) = v
                && !each(&k, &v)?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    pub fn tree(&self, name: &str) -> Result<sled::Tree, LogError> {
        Ok(match name {
            EVENTS => self.events.clone(),
            DEDUPE => self.dedupe.clone(),
            META => self.meta.clone(),
            QUARANTINE => self.quarantine.clone(),
            REGISTRY => self.registry.clone(),
            other => self.db.open_tree(other)?,
        })
    }

    /// Applies `ops` one key at a time. Not atomic by itself: the
    /// segment record that holds the same ops is what makes a commit all
    /// or nothing. (A sled `Batch` would be atomic, but sled seals its log
    /// buffer for every batch and writes it out with a `sync_file_range`:
    /// measured, eight of them per append-and-two-settlements.)
    pub fn apply(&self, ops: &[Op]) -> Result<(), LogError> {
        let mut tree: Option<(&str, sled::Tree)> = None;
        // Payments stay in the segments.
        for op in ops.iter().filter(|op| op.tree != LOG) {
            let current = match &tree {
                Some((name, t)) if *name == op.tree => t,
                _ => &tree.insert((&op.tree, self.tree(&op.tree)?)).1,
            };
            match &op.value {
                Some(value) => current.insert(op.key.as_slice(), value.as_slice())?,
                None => current.remove(op.key.as_slice())?,
            };
        }
        Ok(())
    }

    /// Keys and values in `tree` starting with `prefix`, in order.
    pub fn prefixed(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, LogError> {
        let mut out = Vec::new();
        self.for_each(tree, prefix, None, |k, v| {
            if !k.starts_with(prefix) {
                return Ok(false);
            }
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Where the records not yet in sled's files begin.
    pub fn checkpointed(&self) -> Result<Position, LogError> {
        Ok(self
            .meta
            .get(CHECKPOINTED)?
            .and_then(|v| Position::from_bytes(&v))
            .unwrap_or_default())
    }

    /// The next sequence number, from what the store holds.
    pub fn stored_next_seq(&self) -> Result<u64, LogError> {
        let stored = self.get(META, NEXT_SEQ)?.map_or(0, |v| be(&v));
        let after_last = self.events.last()?.map_or(0, |(k, _)| be(&k) + 1);
        Ok(stored.max(after_last))
    }

    /// Registers every sink that has a cursor and was not handed over, once:
    /// stores from before the registry had only their sink trees.
    pub fn make_registry(&self, now_ms: i64) -> Result<(), LogError> {
        if self.meta.contains_key(REGISTRY_MADE)? {
            return Ok(());
        }
        for sink in self.sink_trees()? {
            let tree = self.db.open_tree(sink_tree(&sink))?;
            if tree.contains_key(CURSOR)? && !tree.contains_key(RETIRED)? {
                self.registry.insert(sink, &now_ms.to_be_bytes())?;
            }
        }
        self.meta.insert(REGISTRY_MADE, &[1])?;
        Ok(())
    }

    /// Every sink tree there is (registered, retired or left over), with
    /// the sink's name.
    pub fn sink_trees(&self) -> Result<Vec<String>, LogError> {
        let mut names: std::collections::BTreeSet<String> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok().map(str::to_string))
            .collect();
        names.extend(self.staged().keys().cloned());
        let mut out = Vec::new();
        for name in names {
            if let Some(sink) = name.strip_prefix("sink/") {
                out.push(sink.to_string());
            }
        }
        Ok(out)
    }

    /// Whether `tree` exists (in sled, or written since the last checkpoint).
    pub fn has_tree(&self, tree: &str) -> bool {
        self.staged().contains_key(tree)
            || self.db.tree_names().iter().any(|n| **n == *tree.as_bytes())
    }

    /// Registered sinks, by name.
    pub fn registered(&self) -> Result<Vec<String>, LogError> {
        let mut out = Vec::new();
        self.for_each(REGISTRY, &[], None, |key, _| {
            if let Ok(name) = std::str::from_utf8(key) {
                out.push(name.to_string());
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// A checkpoint: the staged writes go into sled with `at`, the place in
    /// the segments they reach, then `flush()` and an `fdatasync` of sled's
    /// data file make them survive a power cut; the next opening replays
    /// from `at`.
    pub fn checkpoint(
        &self,
        at: Position,
        data_file: &std::fs::File,
        disk: &dyn super::disk::Disk,
    ) -> Result<(), LogError> {
        self.apply_staged()?;
        self.meta.insert(CHECKPOINTED, at.to_bytes())?;
        self.db.flush()?;
        let started = std::time::Instant::now();
        let synced = disk.sync_data(data_file);
        super::committer::observe_sync("fdatasync", started);
        synced.map_err(|e| LogError::storage("fdatasync of the store", e))?;
        self.clear_staged();
        Ok(())
    }
}

/// sled's data file, `state/db`, which holds every segment of its log.
pub fn open_data_file(state: &Path) -> Result<std::fs::File, LogError> {
    std::fs::File::open(state.join("db")).map_err(|e| LogError::storage("open state/db", e))
}
