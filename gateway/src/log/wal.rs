//! The write-ahead file: one disk wait per commit.
//!
//! sled's `flush()` waits for its own write (`sync_file_range`) and an
//! `fdatasync` after it waits again, and each flush dirties fresh pages: two
//! disk waits and some 20 KiB written per payment. Instead, a commit's writes
//! (puts and removes, each the key's whole new value) are appended here as
//! one checksummed record and made durable with a single `fdatasync`, and
//! only then applied to sled, which writes them out in its own time. Every
//! so often a checkpoint flushes and syncs sled and starts the file over.
//! Opening replays what the file holds since the last checkpoint: replaying
//! blind writes in order over any state sled recovered (always one it had at
//! or after that checkpoint) gives the state after the last durable commit.
//!
//! The file is written full of zeros when created and then only rewritten in
//! place, so an `fdatasync` never has to write the file's size or extents:
//! its one wait is for the pages of the record. Its pages are then dropped
//! from the page cache: the kernel caches a file written or read in large
//! chunks in large folios (2 MiB on this project's build machine), and a
//! record dirtying a byte of one has the whole folio written back; measured,
//! 1 MiB written per commit instead of 4 KiB. Written afresh, a record's page
//! comes back as a single 4 KiB page.
//!
//! Layout: a 4 KiB header (magic, epoch, CRC), then records `[len u32][crc
//! u32][epoch u64][payload]`, the CRC over epoch and payload. A checkpoint
//! bumps the epoch, which retires every record before it; replay stops at the
//! first record that is empty, torn, or of another epoch.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::LogError;
use super::disk::Disk;

const MAGIC: &[u8; 8] = b"SBXWAL01";
const HEADER_BYTES: u64 = 4096;
const RECORD_HEADER: usize = 4 + 4 + 8;

/// One write of a commit: `key` in `tree` becomes `value` (None: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub tree: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub struct Wal {
    file: File,
    disk: Arc<dyn Disk>,
    epoch: u64,
    /// Where the next record goes.
    end: u64,
    /// Everything before this is durable.
    synced: u64,
    capacity: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("epoch", &self.epoch)
            .field("end", &self.end)
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    let reason = format!("{what} {}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            LogError::Full(reason)
        }
        _ => LogError::Storage(reason),
    }
}

impl Wal {
    /// Opens the file at `path` (created, zero-filled to `capacity`, if
    /// missing) and returns it with the records written since the last
    /// checkpoint, oldest first.
    pub fn open(
        path: &Path,
        capacity: u64,
        disk: Arc<dyn Disk>,
    ) -> Result<(Wal, Vec<Vec<Op>>), LogError> {
        let capacity = capacity.max(HEADER_BYTES * 4);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error("stat", path, e))?
            .len();
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error("read", path, e))?;
        let epoch = read_header(&bytes);
        let capacity = capacity.max(len);
        let mut wal = Wal {
            file,
            disk,
            epoch: epoch.unwrap_or(0),
            end: HEADER_BYTES,
            synced: HEADER_BYTES,
            capacity,
        };
        if len < capacity {
            // Zeros up to the capacity, once; later writes only overwrite.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < capacity {
                let n = (capacity - at).min(zeros.len() as u64) as usize;
                wal.disk
                    .write_at(&wal.file, &zeros[..n], at)
                    .map_err(|e| io_error("preallocate", path, e))?;
                at += n as u64;
            }
        }
        let records = match epoch {
            Some(epoch) => {
                let (records, end) = read_records(&bytes, epoch);
                wal.end = end;
                wal.synced = end;
                records
            }
            None => Vec::new(),
        };
        if epoch.is_none() || len < capacity {
            // New file (or a torn header): start at epoch 1, durably, with
            // the zeros written above.
            if epoch.is_none() {
                wal.epoch = 1;
                wal.write_header()?;
            }
            wal.disk
                .sync_data(&wal.file)
                .map_err(|e| io_error("fdatasync", path, e))?;
        }
        // Clean now (synced before, or just above): out of the page cache,
        // and with them the large folios the reads and writes above made.
        if let Err(e) = rustix::fs::fadvise(&wal.file, 0, None, rustix::fs::Advice::DontNeed) {
            tracing::debug!(error = %e, "cannot drop the write-ahead file's pages from the cache");
        }
        Ok((wal, records))
    }

    fn write_header(&self) -> Result<(), LogError> {
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        self.disk
            .write_at(&self.file, &header, 0)
            .map_err(|e| LogError::Storage(format!("write-ahead header: {e}")))
    }

    /// Whether a record of `ops` fits before the end of the file.
    pub fn fits(&self, ops: &[Op]) -> bool {
        self.end + (RECORD_HEADER + encoded_len(ops)) as u64 <= self.capacity
    }

    /// Bytes used since the last checkpoint, and the file's capacity.
    pub fn usage(&self) -> (u64, u64) {
        (self.end - HEADER_BYTES, self.capacity - HEADER_BYTES)
    }

    /// Writes a record of `ops`: in the file at once (a killed process
    /// loses nothing written), durable with the next [`Wal::sync`]. The
    /// caller checked [`Wal::fits`].
    pub fn append(&mut self, ops: &[Op]) -> Result<(), LogError> {
        let mut record = Vec::with_capacity(RECORD_HEADER + encoded_len(ops));
        record.extend_from_slice(&[0u8; 8]);
        record.extend_from_slice(&self.epoch.to_le_bytes());
        encode(ops, &mut record);
        let len = (record.len() - RECORD_HEADER) as u32;
        let crc = crc32fast::hash(&record[8..]);
        record[0..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        self.disk
            .write_at(&self.file, &record, self.end)
            .map_err(|e| LogError::Storage(format!("write-ahead write: {e}")))?;
        self.end += record.len() as u64;
        Ok(())
    }

    /// Whether records were written since the last sync.
    pub fn has_unsynced(&self) -> bool {
        self.end > self.synced
    }

    /// Makes every record written so far durable: one `fdatasync`.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if !self.has_unsynced() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.disk.sync_data(&self.file);
        super::committer::observe_sync("fdatasync", started);
        result.map_err(|e| LogError::Storage(format!("fdatasync of the write-ahead file: {e}")))?;
        self.synced = self.end;
        Ok(())
    }

    /// Retires every record (they are all in sled's synced files now) and
    /// starts the file over.
    pub fn reset(&mut self) -> Result<(), LogError> {
        self.epoch += 1;
        self.write_header()?;
        self.disk
            .sync_data(&self.file)
            .map_err(|e| LogError::Storage(format!("fdatasync of the write-ahead file: {e}")))?;
        self.end = HEADER_BYTES;
        self.synced = HEADER_BYTES;
        Ok(())
    }
}

impl Wal {
    /// The records a write-ahead file's bytes hold since its last checkpoint.
    pub fn records_in(bytes: &[u8]) -> Vec<Vec<Op>> {
        match read_header(bytes) {
            Some(epoch) => read_records(bytes, epoch).0,
            None => Vec::new(),
        }
    }
}

/// The epoch in a valid header.
fn read_header(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(..20)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().ok()?);
    if crc32fast::hash(&header[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(header[8..16].try_into().ok()?))
}

/// The valid records of `epoch` from the start, and where they end.
fn read_records(bytes: &[u8], epoch: u64) -> (Vec<Vec<Op>>, u64) {
    let mut at = HEADER_BYTES as usize;
    let mut records = Vec::new();
    while let Some(head) = bytes.get(at..at + RECORD_HEADER) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let record_epoch = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if len == 0 || record_epoch != epoch {
            break;
        }
        let Some(payload) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if crc32fast::hash(&bytes[at + 8..at + RECORD_HEADER + len]) != crc {
            break;
        }
        let Some(ops) = decode(payload) else { break };
        records.push(ops);
        at += RECORD_HEADER + len;
    }
    (records, at as u64)
}

fn encoded_len(ops: &[Op]) -> usize {
    4 + ops
        .iter()
        .map(|op| {
            2 + op.tree.len() + 4 + op.key.len() + 1 + 4 + op.value.as_ref().map_or(0, Vec::len)
        })
        .sum::<usize>()
}

fn encode(ops: &[Op], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        out.extend_from_slice(&(op.tree.len() as u16).to_le_bytes());
        out.extend_from_slice(op.tree.as_bytes());
        out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&op.key);
        match &op.value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&0u32.to_le_bytes());
            }
        }
    }
}

fn decode(mut bytes: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn u32_of(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let count = u32_of(&mut bytes)?;
    let mut ops = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let tree_len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().ok()?) as usize;
        let tree = String::from_utf8(take(&mut bytes, tree_len)?.to_vec()).ok()?;
        let key_len = u32_of(&mut bytes)?;
        let key = take(&mut bytes, key_len)?.to_vec();
        let present = take(&mut bytes, 1)?[0] == 1;
        let value_len = u32_of(&mut bytes)?;
        let value = take(&mut bytes, value_len)?.to_vec();
        ops.push(Op {
            tree,
            key,
            value: present.then_some(value),
        });
    }
    bytes.is_empty().then_some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::disk::os_disk;

    fn op(tree: &str, key: &str, value: Option<&str>) -> Op {
        Op {
            tree: tree.into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn records_come_back_until_a_checkpoint_retires_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (mut wal, replay) = Wal::open(&path, 1 << 16, os_disk()).expect("open");
        assert!(replay.is_empty());
        let first = vec![op("events", "1", Some("a")), op("dedupe", "k", None)];
        let second = vec![op("sink/x", "c", Some(""))];
        wal.append(&first).expect("append");
        wal.append(&second).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (mut wal, replay) = Wal::open(&path, 1 << 16, os_disk()).expect("reopen");
        assert_eq!(replay, vec![first.clone(), second]);
        wal.reset().expect("reset");
        wal.append(&first).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (_, replay) = Wal::open(&path, 1 << 16, os_disk()).expect("reopen");
        assert_eq!(replay, vec![first], "records before the reset are retired");
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 1 << 16, os_disk()).expect("open");
        wal.append(&[op("t", "a", Some("1"))]).expect("append");
        let torn_at = wal.end + RECORD_HEADER as u64 + 3;
        wal.append(&[op("t", "b", Some("2"))]).expect("append");
        wal.append(&[op("t", "c", Some("3"))]).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        os_disk().write_at(&file, &[0xff], torn_at).expect("damage");
        let (wal, replay) = Wal::open(&path, 1 << 16, os_disk()).expect("reopen");
        assert_eq!(replay, vec![vec![op("t", "a", Some("1"))]]);
        assert!(wal.end < torn_at, "new records overwrite the torn one");
    }

    #[test]
    fn the_file_is_written_once_to_its_full_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let (wal, _) = Wal::open(&path, 1 << 16, os_disk()).expect("open");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 16);
        assert!(wal.fits(&[op("t", "k", Some("v"))]));
        assert!(!wal.fits(&[op("t", "k", Some(&"v".repeat(1 << 16)))]));
    }
}
