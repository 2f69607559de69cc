//! The `kv` import: a small persistent map per connector (poll cursors), one
//! sled tree each, so connectors cannot see each other's keys.

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

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.check(key, value)?;
        self.tree.insert(key, value).map_err(|e| e.to_string())?;
        self.persist()
    }

    pub fn delete(&self, key: &str) -> Result<(), String> {
        self.tree.remove(key).map_err(|e| e.to_string())?;
        self.persist()
    }

    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, String> {
        self.check(key, new)?;
        match self
            .tree
            .compare_and_swap(key, expected, Some(new))
            .map_err(|e| e.to_string())?
        {
            Ok(()) => self.persist().map(|()| true),
            Err(_) => Ok(false),
        }
    }

    fn check(&self, key: &str, value: &[u8]) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("keys are 1-{MAX_KEY_BYTES} bytes"));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!("values are at most {MAX_VALUE_BYTES} bytes"));
        }
        if self.tree.len() >= MAX_ENTRIES && !self.tree.contains_key(key).unwrap_or(false) {
            return Err(format!("at most {MAX_ENTRIES} keys per connector"));
        }
        Ok(())
    }

    /// Cursor writes are rare; making each one reach the disk keeps a poller
    /// from re-fetching after a restart (dedupe would absorb it anyway).
    fn persist(&self) -> Result<(), String> {
        self.tree.flush().map(|_| ()).map_err(|e| e.to_string())
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
            a.set("cursor", b"1").expect("set");
            assert_eq!(b.get("cursor"), None);
            assert!(a.compare_and_swap("cursor", Some(b"1"), b"2").expect("cas"));
            assert!(!a.compare_and_swap("cursor", Some(b"1"), b"3").expect("cas"));
            assert!(b.compare_and_swap("new", None, b"x").expect("cas"));
            assert!(a.set("", b"x").is_err());
            assert!(a.set("k", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
        }
        let db = open(dir.path());
        let a = PluginKv::open(&db, "a").expect("tree");
        assert_eq!(a.get("cursor").as_deref(), Some(&b"2"[..]));
        a.delete("cursor").expect("delete");
        assert_eq!(a.get("cursor"), None);
    }
}
