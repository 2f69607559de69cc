//! The `kv` import: a small persistent map per connector (poll cursors), one
//! sled tree each, so connectors cannot see each other's keys. A call's
//! writes are staged in [`KvWrites`] and applied only once the gateway has
//! stored the changes that call returned.

use std::collections::BTreeMap;

use sled::transaction::{ConflictableTransactionError, TransactionError};

const MAX_KEY_BYTES: usize = 256;
const MAX_VALUE_BYTES: usize = 64 << 10;
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone)]
pub struct PluginKv {
    tree: sled::Tree,
}

impl PluginKv {
    pub fn open(db: &sled::Db, connector: &str) -> sled::Result<Self> {
        Ok(PluginKv {
            tree: db.open_tree(format!("kv/{connector}"))?,
        })
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.tree.get(key).ok().flatten().map(|v| v.to_vec())
    }

    fn check(&self, key: &str, value: &[u8]) -> Result<(), String> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("values are at most {MAX_VALUE_BYTES} bytes"));
        }
        if self.tree.len() >= MAX_ENTRIES && !self.tree.contains_key(key).unwrap_or(false) {
            return Err(format!("at most {MAX_ENTRIES} keys per connector"));
        }
        Ok(())
    }

    /// Applies one call's writes atomically and makes them reach the disk.
    ///
    /// The writes are replayed in order, so a compare-and-swap is checked
    /// against the store as it is now: if another call changed the key in the
    /// meantime, nothing of this call is applied and the plugin finds the
    /// current value on its next call.
    pub fn commit(&self, writes: KvWrites) -> Result<(), KvCommitError> {
        if writes.ops.is_empty() {
            return Ok(());
        }
        let result = self.tree.transaction(|tx| {
            for op in &writes.ops {
                match op {
                    KvOp::Set(key, value) => {
                        tx.insert(key.as_bytes(), value.as_slice())?;
                    }
                    KvOp::Delete(key) => {
                        tx.remove(key.as_bytes())?;
                    }
                    KvOp::Swap { key, expected, new } => {
                        let current = tx.get(key.as_bytes())?;
                        if current.as_deref() != expected.as_deref() {
                            return Err(ConflictableTransactionError::Abort(key.clone()));
                        }
                        tx.insert(key.as_bytes(), new.as_slice())?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(key)) => return Err(KvCommitError::Conflict(key)),
            Err(TransactionError::Storage(e)) => return Err(KvCommitError::Storage(e.to_string())),
        }
        // Cursor writes are rare; making each one reach the disk keeps a
        // poller from re-fetching after a restart (dedupe would absorb it).
        self.tree
            .flush()
            .map(|_| ())
            .map_err(|e| KvCommitError::Storage(e.to_string()))
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
    #[error("compare-and-swap on `{0}` no longer holds (changed by another call)")]
    Conflict(String),
    #[error("storage: {0}")]
    Storage(String),
}

#[derive(Debug, Clone)]
enum KvOp {
    Set(String, Vec<u8>),
    Delete(String),
    Swap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
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
}

impl KvWrites {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// `key` as this call sees it: its own writes first, then the store.
    pub fn get(&self, kv: &PluginKv, key: &str) -> Option<Vec<u8>> {
        match self.view.get(key) {
            Some(value) => value.clone(),
            None => kv.get(key),
        }
    }

    pub fn set(&mut self, kv: &PluginKv, key: &str, value: &[u8]) -> Result<(), String> {
        kv.check(key, value)?;
        self.ops.push(KvOp::Set(key.into(), value.to_vec()));
        self.view.insert(key.into(), Some(value.to_vec()));
        Ok(())
    }

    pub fn delete(&mut self, key: &str) -> Result<(), String> {
        check_key(key)?;
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
        kv.check(key, new)?;
        if self.get(kv, key).as_deref() != expected {
            return Ok(false);
        }
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

    /// No background flusher: its thread can still hold the store's lock
    /// for a moment after the `Db` is dropped, failing the reopen below.
    fn open(path: &std::path::Path) -> sled::Db {
        sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .expect("open")
    }

    #[test]
    fn persists_and_isolates_connectors() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open(dir.path());
            let a = PluginKv::open(&db, "a").expect("tree");
            let b = PluginKv::open(&db, "b").expect("tree");
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
            a.commit(call).expect("commit");
            assert_eq!(b.get("cursor"), None);
            let mut call = KvWrites::default();
            assert!(call.compare_and_swap(&b, "new", None, b"x").expect("cas"));
            b.commit(call).expect("commit");
        }
        let db = open(dir.path());
        let a = PluginKv::open(&db, "a").expect("tree");
        assert_eq!(a.get("cursor").as_deref(), Some(&b"2"[..]));
        let mut call = KvWrites::default();
        call.delete("cursor").expect("delete");
        assert_eq!(call.get(&a, "cursor"), None);
        assert_eq!(a.get("cursor").as_deref(), Some(&b"2"[..]), "not yet");
        a.commit(call).expect("commit");
        assert_eq!(a.get("cursor"), None);
    }

    #[test]
    fn writes_are_invisible_until_committed_and_dropped_with_the_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let kv = PluginKv::open(&db, "poller").expect("tree");
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
        let kv = PluginKv::open(&db, "c").expect("tree");
        let mut first = KvWrites::default();
        first.set(&kv, "other", b"x").expect("set");
        assert!(first.compare_and_swap(&kv, "n", None, b"1").expect("cas"));
        // A concurrent call gets there first.
        let mut second = KvWrites::default();
        assert!(second.compare_and_swap(&kv, "n", None, b"9").expect("cas"));
        kv.commit(second).expect("commit");
        assert!(matches!(kv.commit(first), Err(KvCommitError::Conflict(k)) if k == "n"));
        assert_eq!(kv.get("n").as_deref(), Some(&b"9"[..]));
        assert_eq!(kv.get("other"), None, "all or nothing");
    }
}
