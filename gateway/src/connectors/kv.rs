//! The `kv` import: a small persistent map per connector (poll cursors), kept
//! in the store, one namespace each, so connectors cannot see each other's
//! keys. A call's writes are staged in [`KvWrites`] and committed in the same
//! store commit as the changes that call returned ([`PluginKv::batch`]).
//!
//! Quotas are counted, never scanned: each connector's keys and bytes (key
//! plus value) are counted once when its tree is opened and kept up to date
//! by every commit; a staged write is checked against the committed count
//! plus what the call has staged so far. All connectors together have their
//! own budget (`limits.kv_total_mb`), far below the event log's
//! `max_disk_mb`, so a plugin filling its KV cannot make the log refuse
//! webhooks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::log::{EventLog, KvBatch, KvOp, KvQuota, LogError, Store};

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 << 10;
/// Keys per connector, committed and staged together.
const MAX_ENTRIES: u64 = 10_000;
/// Writes (set, delete, swap) one call may stage.
pub const MAX_WRITES_PER_CALL: usize = 256;
/// Bytes (keys and values) of the writes one call may stage, repeats of
/// the same key included: they are all held until the call's commit.
pub const MAX_STAGED_BYTES_PER_CALL: usize = 256 << 10;

/// Keys and bytes kept by a connector (or all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub keys: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    connectors: HashMap<String, KvUsage>,
    total_bytes: u64,
}

/// The KV quotas of the process: per connector and all together, with the
/// counts they are checked against.
#[derive(Debug)]
pub struct KvQuotas {
    max_bytes: u64,
    total_bytes: u64,
    /// Also serialises commits, so a commit's check and its count agree.
    ledger: Mutex<Ledger>,
}

impl KvQuotas {
    /// `max_bytes` per connector, `total_bytes` all connectors together.
    pub fn new(max_bytes: u64, total_bytes: u64) -> Arc<Self> {
        Arc::new(KvQuotas {
            max_bytes,
            total_bytes,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// Opens `connector`'s KV. Its keys and bytes are counted here, once
    /// per process (a reloaded connector keeps its count). Reads the store:
    /// call it off the async workers.
    pub fn open(self: &Arc<Self>, store: &Store, connector: &str) -> Result<PluginKv, LogError> {
        let mut ledger = self.lock();
        if !ledger.connectors.contains_key(connector) {
            let mut usage = KvUsage::default();
            for (key, value) in store.kv_sizes(connector)? {
                usage.keys += 1;
                usage.bytes += (key + value) as u64;
            }
            if usage.bytes > self.max_bytes || usage.keys > MAX_ENTRIES {
                tracing::warn!(
                    connector,
                    keys = usage.keys,
                    bytes = usage.bytes,
                    "plugin KV is over its quota; writes that add to it are refused"
                );
            }
            ledger.total_bytes += usage.bytes;
            ledger.connectors.insert(connector.to_string(), usage);
        }
        Ok(PluginKv {
            store: store.clone(),
            connector: connector.to_string(),
            quotas: self.clone(),
        })
    }

    /// What `connector` keeps, as counted.
    pub fn usage(&self, connector: &str) -> KvUsage {
        self.lock()
            .connectors
            .get(connector)
            .copied()
            .unwrap_or_default()
    }

    /// Bytes all connectors keep, as counted.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding it leaves counts that are still whole numbers.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a connector whose keys and bytes would be `usage` moved by
    /// `delta`, when that grows past a quota.
    fn check_with(&self, ledger: &Ledger, connector: &str, delta: Delta) -> Result<(), String> {
        let usage = ledger
            .connectors
            .get(connector)
            .copied()
            .unwrap_or_default();
        let keys = usage.keys.saturating_add_signed(delta.keys);
        let bytes = usage.bytes.saturating_add_signed(delta.bytes);
        if delta.keys > 0 && keys > MAX_ENTRIES {
            return Err(format!("at most {MAX_ENTRIES} keys per connector"));
        }
        if delta.bytes > 0 && bytes > self.max_bytes {
            return Err(format!(
                "KV quota: at most {} bytes (keys and values) per connector",
                self.max_bytes
            ));
        }
        if delta.bytes > 0
            && ledger.total_bytes.saturating_add_signed(delta.bytes) > self.total_bytes
        {
            return Err(format!(
                "KV quota: the gateway's KV budget of {} bytes for all connectors is used up",
                self.total_bytes
            ));
        }
        Ok(())
    }
}

impl KvQuota for KvQuotas {
    fn check(&self, connector: &str, keys: i64, bytes: i64) -> Result<(), String> {
        self.check_with(&self.lock(), connector, Delta { keys, bytes })
    }

    fn applied(&self, connector: &str, keys: i64, bytes: i64) {
        let mut ledger = self.lock();
        let usage = ledger.connectors.entry(connector.to_string()).or_default();
        usage.keys = usage.keys.saturating_add_signed(keys);
        usage.bytes = usage.bytes.saturating_add_signed(bytes);
        ledger.total_bytes = ledger.total_bytes.saturating_add_signed(bytes);
    }
}

/// How a write moves a connector's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    keys: i64,
    bytes: i64,
}

impl Delta {
    /// From an entry of `before` bytes (None: absent) to one of `after`.
    fn of(before: Option<usize>, after: Option<usize>) -> Delta {
        let size = |s: Option<usize>| s.map_or(0, |n| n as i64);
        Delta {
            keys: i64::from(after.is_some()) - i64::from(before.is_some()),
            bytes: size(after) - size(before),
        }
    }

    fn add(self, other: Delta) -> Delta {
        Delta {
            keys: self.keys + other.keys,
            bytes: self.bytes + other.bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PluginKv {
    store: Store,
    connector: String,
    quotas: Arc<KvQuotas>,
}

impl PluginKv {
    /// The committed value of `key`. A point read of a small tree sled keeps
    /// in its cache; a storage error reads as absent (the plugin sees no
    /// cursor and starts over, and dedupe absorbs what it fetches again).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.store.kv_get(&self.connector, key) {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(connector = %self.connector, %error, "plugin KV read failed");
                None
            }
        }
    }

    /// The committed entry's size (key plus value), a point lookup.
    fn entry_size(&self, key: &str) -> Option<usize> {
        self.get(key).map(|v| key.len() + v.len())
    }

    /// What this connector keeps, as counted.
    pub fn usage(&self) -> KvUsage {
        self.quotas.usage(&self.connector)
    }

    /// One call's writes, to commit with the changes it returned. The store
    /// replays them in order at commit time, so a compare-and-swap is checked
    /// against the store as it is then: if another call changed the key in
    /// the meantime, nothing of this call is applied and the plugin finds the
    /// current value on its next call. The quotas are checked again then too.
    pub fn batch(&self, writes: KvWrites) -> Option<KvBatch> {
        if writes.ops.is_empty() {
            return None;
        }
        Some(KvBatch {
            connector: self.connector.clone(),
            ops: writes.ops,
            quota: self.quotas.clone(),
        })
    }

    /// Commits one call's writes on their own (a call that returned no
    /// changes), durably.
    pub async fn commit(&self, writes: KvWrites) -> Result<(), KvCommitError> {
        let Some(batch) = self.batch(writes) else {
            return Ok(());
        };
        let committed = self
            .store
            .append(Vec::new(), Some(batch))
            .await
            .map_err(|e| KvCommitError::Storage(e.to_string()))?;
        committed.kv.map_err(KvCommitError::Refused)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("keys are 1-{MAX_KEY_BYTES} bytes"));
    }
    Ok(())
}

/// Why a call's KV writes were not applied.
#[derive(Debug, thiserror::Error)]
pub enum KvCommitError {
    /// A compare-and-swap that no longer holds, or a quota.
    #[error("{0}")]
    Refused(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// The KV writes of one plugin call, held back until the gateway has stored
/// the changes that call returned. A poller writes its cursor in the same call
/// that returns the payments before it; if storing them fails (disk full),
/// the cursor must not move, or those payments would never be fetched again.
/// Reads within the call see the call's own writes.
#[derive(Debug, Default)]
pub struct KvWrites {
    ops: Vec<KvOp>,
    /// The value each written key has after this call (`None`: deleted).
    view: BTreeMap<String, Option<Vec<u8>>>,
    /// Each written key's committed entry size when the call first wrote it.
    committed: BTreeMap<String, Option<usize>>,
    /// Bytes of every staged op (keys and values, expected values too).
    staged_bytes: usize,
    /// How the call's view moves the connector's counts.
    delta: Delta,
}

impl KvWrites {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Writes staged so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// `key` as this call sees it: its own writes first, then the store.
    pub fn get(&self, kv: &PluginKv, key: &str) -> Option<Vec<u8>> {
        match self.view.get(key) {
            Some(value) => value.clone(),
            None => kv.get(key),
        }
    }

    /// Checks the per-call caps and the quotas for writing `value` (None:
    /// deleting) to `key`; on success counts it, and the caller stages it.
    fn admit(
        &mut self,
        kv: &PluginKv,
        key: &str,
        value: Option<&[u8]>,
        op_bytes: usize,
    ) -> Result<(), String> {
        check_key(key)?;
        if value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(format!("values are at most {MAX_VALUE_BYTES} bytes"));
        }
        if self.ops.len() >= MAX_WRITES_PER_CALL {
            return Err(format!("at most {MAX_WRITES_PER_CALL} KV writes per call"));
        }
        let staged = self.staged_bytes.saturating_add(op_bytes);
        if staged > MAX_STAGED_BYTES_PER_CALL {
            return Err(format!(
                "at most {MAX_STAGED_BYTES_PER_CALL} bytes of KV writes per call"
            ));
        }
        let committed = match self.committed.get(key) {
            Some(size) => *size,
            None => kv.entry_size(key),
        };
        let before = match self.view.get(key) {
            Some(current) => current.as_ref().map(|v| key.len() + v.len()),
            None => committed,
        };
        let write = Delta::of(before, value.map(|v| key.len() + v.len()));
        let delta = self.delta.add(write);
        // A write that frees space is always let through.
        if write.keys > 0 || write.bytes > 0 {
            kv.quotas
                .check_with(&kv.quotas.lock(), &kv.connector, delta)?;
        }
        self.committed.entry(key.to_string()).or_insert(committed);
        self.staged_bytes = staged;
        self.delta = delta;
        Ok(())
    }

    pub fn set(&mut self, kv: &PluginKv, key: &str, value: &[u8]) -> Result<(), String> {
        self.admit(kv, key, Some(value), key.len() + value.len())?;
        self.ops.push(KvOp::Set(key.into(), value.to_vec()));
        self.view.insert(key.into(), Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, kv: &PluginKv, key: &str) -> Result<(), String> {
        self.admit(kv, key, None, key.len())?;
        self.ops.push(KvOp::Delete(key.into()));
        self.view.insert(key.into(), None);
        Ok(())
    }

    pub fn compare_and_swap(
        &mut self,
        kv: &PluginKv,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        check_key(key)?;
        if self.get(kv, key).as_deref() != expected {
            return Ok(false);
        }
        let bytes = key.len() + new.len() + expected.map_or(0, <[u8]>::len);
        self.admit(kv, key, Some(new), bytes)?;
        self.ops.push(KvOp::Swap {
            key: key.into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        });
        self.view.insert(key.into(), Some(new.to_vec()));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `path`; the same path opened again after the first one is
    /// closed sees what it committed.
    fn open(path: &std::path::Path) -> Store {
        let options = crate::log::LogOptions {
            min_free_disk_bytes: 0,
            segment_bytes: 1 << 20,
            ..crate::log::LogOptions::default()
        };
        for _ in 0..200 {
            match Store::open(path, options.clone()) {
                Err(LogError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.expect("open"),
            }
        }
        panic!("store still locked");
    }

    /// Commits a call's writes the way ingress does, and waits.
    fn commit(kv: &PluginKv, writes: KvWrites) -> Result<(), KvCommitError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(kv.commit(writes))
    }

    fn quotas() -> Arc<KvQuotas> {
        KvQuotas::new(1 << 20, 16 << 20)
    }

    #[test]
    fn persists_and_isolates_connectors() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let q = quotas();
            let db = open(dir.path());
            let a = q.open(&db, "a").expect("tree");
            let b = q.open(&db, "b").expect("tree");
            let mut call = KvWrites::default();
            call.set(&a, "cursor", b"1").expect("set");
            assert_eq!(call.get(&a, "cursor").as_deref(), Some(&b"1"[..]));
            assert!(
                call.compare_and_swap(&a, "cursor", Some(b"1"), b"2")
                    .expect("cas")
            );
            assert!(
                !call
                    .compare_and_swap(&a, "cursor", Some(b"1"), b"3")
                    .expect("cas")
            );
            assert!(call.set(&a, "", b"x").is_err());
            assert!(call.set(&a, "k", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
            commit(&a, call).expect("commit");
            assert_eq!(b.get("cursor"), None);
            let mut call = KvWrites::default();
            assert!(call.compare_and_swap(&b, "new", None, b"x").expect("cas"));
            commit(&b, call).expect("commit");
            db.close().expect("close");
        }
        let db = open(dir.path());
        let q = quotas();
        let a = q.open(&db, "a").expect("tree");
        assert_eq!(a.get("cursor").as_deref(), Some(&b"2"[..]));
        let mut call = KvWrites::default();
        call.delete(&a, "cursor").expect("delete");
        assert_eq!(call.get(&a, "cursor"), None);
        assert_eq!(a.get("cursor").as_deref(), Some(&b"2"[..]), "not yet");
        commit(&a, call).expect("commit");
        assert_eq!(a.get("cursor"), None);
    }

    #[test]
    fn writes_are_invisible_until_committed_and_dropped_with_the_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let q = quotas();
        let kv = q.open(&db, "poller").expect("tree");
        let mut call = KvWrites::default();
        call.set(&kv, "cursor", b"page-2").expect("set");
        assert_eq!(kv.get("cursor"), None, "not visible before commit");
        drop(call);
        assert_eq!(kv.get("cursor"), None, "a dropped call leaves nothing");
    }

    #[test]
    fn a_swap_that_no_longer_holds_applies_none_of_the_calls_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let q = quotas();
        let kv = q.open(&db, "c").expect("tree");
        let mut first = KvWrites::default();
        first.set(&kv, "other", b"x").expect("set");
        assert!(first.compare_and_swap(&kv, "n", None, b"1").expect("cas"));
        // A concurrent call gets there first.
        let mut second = KvWrites::default();
        assert!(second.compare_and_swap(&kv, "n", None, b"9").expect("cas"));
        commit(&kv, second).expect("commit");
        assert!(
            matches!(commit(&kv, first), Err(KvCommitError::Refused(r)) if r.contains("`n`")),
            "the swap on `n` no longer holds"
        );
        assert_eq!(kv.get("n").as_deref(), Some(&b"9"[..]));
        assert_eq!(kv.get("other"), None, "all or nothing");
    }

    #[test]
    fn one_call_cannot_stage_without_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let kv = quotas().open(&db, "flood").expect("tree");
        let value = vec![7u8; 60 << 10];
        let mut call = KvWrites::default();
        let mut refused = None;
        for _ in 0..1000 {
            if let Err(e) = call.set(&kv, "same", &value) {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("rewriting one key is capped too");
        assert!(refused.contains("per call"), "{refused}");
        assert!(call.staged_bytes <= MAX_STAGED_BYTES_PER_CALL);
        let mut call = KvWrites::default();
        let refused = (0..1000)
            .find_map(|i| call.delete(&kv, &format!("k{i}")).err())
            .expect("deletes are counted");
        assert!(refused.contains("per call"), "{refused}");
        assert_eq!(call.len(), MAX_WRITES_PER_CALL);
    }

    #[test]
    fn keys_and_bytes_count_staged_writes_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = 2 + (60 << 10);
        {
            let db = open(dir.path());
            let q = KvQuotas::new(150 << 10, 16 << 20);
            let kv = q.open(&db, "c").expect("tree");
            let value = vec![1u8; 60 << 10];
            let mut call = KvWrites::default();
            call.set(&kv, "k0", &value).expect("within quota");
            call.set(&kv, "k1", &value).expect("within quota");
            // Nothing is committed yet: the quota counts what is staged.
            let refused = call.set(&kv, "k2", &value).expect_err("over 150 KiB");
            assert!(refused.contains("KV quota"), "{refused}");
            // Rewriting a staged key smaller, and freeing space, still work.
            call.set(&kv, "k0", b"small").expect("shrinks");
            call.delete(&kv, "k1").expect("frees");
            call.set(&kv, "k2", &value).expect("fits again");
            commit(&kv, call).expect("commit");
            let usage = kv.usage();
            assert_eq!(usage.keys, 2);
            assert_eq!(usage.bytes, (2 + 5) + entry as u64);
            assert_eq!(q.total_bytes(), usage.bytes);
            // Another call starts from the committed count.
            let mut call = KvWrites::default();
            call.set(&kv, "k3", &value).expect("fits");
            assert!(call.set(&kv, "k4", &value).is_err());
            db.close().expect("close");
        }
        let db = open(dir.path());
        let q = KvQuotas::new(150 << 10, 16 << 20);
        let kv = q.open(&db, "c").expect("tree");
        assert_eq!(kv.usage().keys, 2, "counted once at open");
        assert_eq!(kv.usage().bytes, (2 + 5) + entry as u64);
    }

    #[test]
    fn the_key_cap_counts_staged_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let q = KvQuotas::new(1 << 30, 1 << 30);
        let kv = q.open(&db, "keys").expect("tree");
        // Fill to the cap less one call's worth, through commits.
        let mut i = 0;
        while (i as u64) < MAX_ENTRIES - 10 {
            let mut call = KvWrites::default();
            for _ in 0..MAX_WRITES_PER_CALL.min((MAX_ENTRIES - 10) as usize - i) {
                call.set(&kv, &format!("k{i}"), b"v").expect("set");
                i += 1;
            }
            commit(&kv, call).expect("commit");
        }
        let mut call = KvWrites::default();
        let refused = (0..20)
            .find_map(|n| call.set(&kv, &format!("new{n}"), b"v").err())
            .expect("the 11th new key is refused before any commit");
        assert!(refused.contains("keys per connector"), "{refused}");
        assert_eq!(call.len(), 10);
    }

    #[test]
    fn all_connectors_share_their_own_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let q = KvQuotas::new(200 << 10, 300 << 10);
        let value = vec![1u8; 60 << 10];
        let mut refused = None;
        for name in ["a", "b", "c"] {
            let kv = q.open(&db, name).expect("tree");
            let mut call = KvWrites::default();
            for i in 0..3 {
                if let Err(e) = call.set(&kv, &format!("k{i}"), &value) {
                    refused = Some(e);
                    break;
                }
            }
            commit(&kv, call).expect("commit what was admitted");
        }
        let refused = refused.expect("the third connector runs into the total");
        assert!(refused.contains("all connectors"), "{refused}");
        assert!(q.total_bytes() <= 300 << 10);
    }

    #[test]
    fn a_commit_over_quota_applies_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let q = KvQuotas::new(100 << 10, 16 << 20);
        let kv = q.open(&db, "race").expect("tree");
        let value = vec![1u8; 60 << 10];
        // Two calls each fit alone; whichever commits second does not.
        let mut first = KvWrites::default();
        first.set(&kv, "a", &value).expect("fits");
        let mut second = KvWrites::default();
        second.set(&kv, "b", &value).expect("fits");
        commit(&kv, first).expect("commit");
        assert!(
            matches!(commit(&kv, second), Err(KvCommitError::Refused(r)) if r.contains("KV quota"))
        );
        assert_eq!(kv.get("b"), None);
        assert_eq!(kv.usage().keys, 1);
    }
}
