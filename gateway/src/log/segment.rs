//! One segment file of the event log: a commit is one checksummed record
//! appended here and made durable with a single `fdatasync`.
//!
//! Long because the file format, its writer and its scanner (which tells a
//! torn last record from damage) must agree byte for byte.
//!
//! A record holds the commit's writes (puts and removes, each a key's whole
//! new value): the payments themselves (tree [`LOG`], which stays in the
//! segments and is found through an in-memory index) and everything else,
//! which is applied to sled and written out at checkpoints. A checkpoint
//! stores in sled the [`Position`] its flush covers; replaying the records
//! after it over any state sled recovered (always one it had at or after
//! that checkpoint) gives the state after the last durable commit: they are
//! blind writes, in order.
//!
//! A segment is written full of zeros when created (or is a collected one
//! reused) and then only rewritten in place, so an `fdatasync` never has to
//! write the file's size or extents: its one wait is for the pages of the
//! record. The file being written is dropped from the page cache once
//! zeroed: the kernel caches a file written or read in large chunks in large
//! folios (2 MiB on this project's build machine), and a record dirtying a
//! byte of one has the whole folio written back; measured, 1 MiB written
//! per commit instead of 4 KiB.
//!
//! Layout: a 4 KiB header (magic, segment id, CRC), then records `[len
//! u32][crc u32][id u64][payload]`, the CRC over id and payload. A reused
//! file gets a new id, which retires every record in it; a scan stops at the
//! first record that is empty, torn, or of another id.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::LogError;
use super::disk::Disk;
use super::engine::be;

const MAGIC: &[u8; 8] = b"SBXSEG01";
/// The write-ahead file of stores before the segments; read once, to upgrade.
const LEGACY_MAGIC: &[u8; 8] = b"SBXWAL01";
pub const HEADER_BYTES: u64 = 4096;
pub const RECORD_HEADER: usize = 4 + 4 + 8;

/// The tree of the payments themselves: in the segments, never in sled.
pub const LOG: &str = "log";

/// One write of a commit: `key` in `tree` becomes `value` (None: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub tree: String,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Where a record starts: segment id and byte offset in it. Ordered as the
/// records were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

impl Position {
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = self.segment.to_le_bytes().to_vec();
        out.extend_from_slice(&self.offset.to_le_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Position> {
        Some(Position {
            segment: u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
            offset: u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

/// A payment a record writes (its place in the file: offset, length) or
/// removes (None), by sequence number.
pub type LogWrite = (u64, Option<(u64, u32)>);

/// One record read back: its writes other than payments, and the payments
/// it writes or removes (never copied out of the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: Position,
    pub ops: Vec<Op>,
    pub log: Vec<LogWrite>,
}

pub struct SegmentFile {
    pub id: u64,
    file: Arc<File>,
    disk: Arc<dyn Disk>,
    /// Where the next record goes.
    end: u64,
    /// Everything before this is durable.
    synced: u64,
    capacity: u64,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("id", &self.id)
            .field("end", &self.end)
            .field("capacity", &self.capacity)
            .finish()
    }
}

pub fn io_error(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::io(format!("{what} {}", path.display()), e)
}

impl SegmentFile {
    /// Makes `path` segment `id`, ready to be written from the start: a
    /// file collected earlier (`reuse`, renamed to `path` by the caller) is
    /// only given the new id; a new one is zero-filled to `capacity` once.
    pub fn create(
        path: &Path,
        id: u64,
        capacity: u64,
        disk: Arc<dyn Disk>,
    ) -> Result<SegmentFile, LogError> {
        let capacity = capacity.max(HEADER_BYTES * 4);
        let file = OpenOptions::new()
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
        let capacity = capacity.max(len);
        if len < capacity {
            // Zeros up to the capacity, once; later writes only overwrite.
            let zeros = vec![0u8; 1 << 20];
            let mut at = len;
            while at < capacity {
                let n = (capacity - at).min(zeros.len() as u64) as usize;
                disk.write_at(&file, &zeros[..n], at)
                    .map_err(|e| io_error("preallocate", path, e))?;
                at += n as u64;
            }
        }
        let segment = SegmentFile {
            id,
            file: Arc::new(file),
            disk,
            end: HEADER_BYTES,
            synced: HEADER_BYTES,
            capacity,
        };
        segment.write_header(MAGIC)?;
        segment
            .disk
            .sync_data(&segment.file)
            .map_err(|e| io_error("fdatasync", path, e))?;
        segment.drop_cache();
        Ok(segment)
    }

    /// Opens an existing segment to go on writing after its last valid
    /// record (`end`, found by [`scan`]).
    pub fn resume(path: &Path, id: u64, end: u64, disk: Arc<dyn Disk>) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        let capacity = file
            .metadata()
            .map_err(|e| io_error("stat", path, e))?
            .len();
        let segment = SegmentFile {
            id,
            file: Arc::new(file),
            disk,
            end,
            synced: end,
            capacity,
        };
        segment.drop_cache();
        Ok(segment)
    }

    /// Out of the page cache (clean pages only), and with them any large
    /// folios reads or writes made; see the module doc.
    fn drop_cache(&self) {
        if let Err(e) = rustix::fs::fadvise(&*self.file, 0, None, rustix::fs::Advice::DontNeed) {
            tracing::debug!(error = %e, "cannot drop a segment's pages from the cache");
        }
    }

    fn write_header(&self, magic: &[u8; 8]) -> Result<(), LogError> {
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(magic);
        header.extend_from_slice(&self.id.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        self.disk
            .write_at(&self.file, &header, 0)
            .map_err(|e| LogError::storage("segment header", e))
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Where the next record goes.
    pub fn end(&self) -> Position {
        Position {
            segment: self.id,
            offset: self.end,
        }
    }

    /// Whether a record of `ops` fits before the end of the file.
    pub fn fits(&self, ops: &[Op]) -> bool {
        self.end + record_len(ops) <= self.capacity
    }

    /// Writes a record of `ops`: in the file at once (a killed process
    /// loses nothing written), durable with the next [`SegmentFile::sync`].
    /// The caller checked [`SegmentFile::fits`]. Returns the payments it
    /// writes, as [`Record::log`].
    pub fn append(&mut self, ops: &[Op]) -> Result<Vec<LogWrite>, LogError> {
        let mut record = Vec::with_capacity(record_len(ops) as usize);
        record.extend_from_slice(&[0u8; 8]);
        record.extend_from_slice(&self.id.to_le_bytes());
        let log = encode(ops, &mut record, self.end);
        let len = (record.len() - RECORD_HEADER) as u32;
        let crc = crc32fast::hash(&record[8..]);
        record[0..4].copy_from_slice(&len.to_le_bytes());
        record[4..8].copy_from_slice(&crc.to_le_bytes());
        self.disk
            .write_at(&self.file, &record, self.end)
            .map_err(|e| LogError::io("segment write", e))?;
        self.end += record.len() as u64;
        Ok(log)
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
        result.map_err(|e| LogError::io("fdatasync of the event log", e))?;
        self.synced = self.end;
        Ok(())
    }

    /// After a failed sync: Linux marks the pages whose write-back failed
    /// clean, so a later sync would not write them again and a power cut
    /// could lose them under records synced after them. Writing the unsynced
    /// bytes again makes them dirty, and syncs them.
    pub fn rewrite_unsynced(&mut self) -> Result<(), LogError> {
        if !self.has_unsynced() {
            return Ok(());
        }
        let mut bytes = vec![0u8; (self.end - self.synced) as usize];
        self.file
            .read_exact_at(&mut bytes, self.synced)
            .map_err(|e| LogError::storage("segment read", e))?;
        self.disk
            .write_at(&self.file, &bytes, self.synced)
            .map_err(|e| LogError::io("segment write", e))?;
        self.sync()
    }
}

/// What [`scan`] read from a segment file.
#[derive(Debug, Default)]
pub struct Scanned {
    pub id: u64,
    pub records: Vec<Record>,
    /// Where the next record goes.
    pub end: u64,
    /// Damaged stretches skipped (bits flipped on the medium): their
    /// payments are kept (each has its own checksum, checked when read),
    /// their other writes are not trusted.
    pub damaged: u64,
}

/// The records of a segment file, in order, read through a small window
/// (the file is never in memory whole). `None` if the header is not a
/// segment's. A record that fails its checksum ends the segment if it may
/// be a write torn by a crash (never acknowledged): nothing valid follows
/// it and it lies at or after `durable`, below which the file is known to
/// have been synced (a sealed segment: all of it; the one being written:
/// up to the last checkpoint). Otherwise it is damage and the scan goes on.
/// The writes other than payments are decoded only from `ops_from` on
/// (what a replay needs); before it [`Record::ops`] is empty.
pub fn scan(file: &File, durable: u64, ops_from: u64) -> std::io::Result<Option<Scanned>> {
    let mut window = Window::new(file)?;
    let Some(id) = window.get(0, 20).and_then(|h| read_header(h, MAGIC)) else {
        return Ok(None);
    };
    Ok(Some(read_records(&mut window, id, durable, ops_from)))
}

/// The writes of a write-ahead file from before the segments (the same
/// record layout, one epoch), to replay once when upgrading.
pub fn legacy_wal_records(path: &Path) -> Vec<Vec<Op>> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let Ok(mut window) = Window::new(&file) else {
        return Vec::new();
    };
    match window.get(0, 20).and_then(|h| read_header(h, LEGACY_MAGIC)) {
        Some(epoch) => read_records(&mut window, epoch, 0, 0)
            .records
            .into_iter()
            .map(|r| r.ops)
            .collect(),
        None => Vec::new(),
    }
}

/// The id in a valid header.
fn read_header(header: &[u8], magic: &[u8; 8]) -> Option<u64> {
    let header = header.get(..20)?;
    if &header[..8] != magic {
        return None;
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().ok()?);
    if crc32fast::hash(&header[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(header[8..16].try_into().ok()?))
}

/// Reads a file through a 256 KiB window, so scanning a segment costs
/// that much memory whatever its size.
struct Window<'f> {
    file: &'f File,
    len: u64,
    buf: Vec<u8>,
    start: u64,
    /// A read larger than the window.
    big: Vec<u8>,
}

const WINDOW: usize = 256 << 10;

impl<'f> Window<'f> {
    fn new(file: &'f File) -> std::io::Result<Window<'f>> {
        Ok(Window {
            file,
            len: file.metadata()?.len(),
            buf: Vec::new(),
            start: 0,
            big: Vec::new(),
        })
    }

    /// `n` bytes at `at`, if the file has them (and they read).
    fn get(&mut self, at: u64, n: usize) -> Option<&[u8]> {
        let end = at.checked_add(n as u64)?;
        if end > self.len {
            return None;
        }
        if n > WINDOW {
            self.big.resize(n, 0);
            self.file.read_exact_at(&mut self.big, at).ok()?;
            return Some(&self.big);
        }
        if at < self.start || end > self.start + self.buf.len() as u64 {
            let take = (self.len - at).min(WINDOW as u64) as usize;
            self.buf.resize(take, 0);
            self.file.read_exact_at(&mut self.buf, at).ok()?;
            self.start = at;
        }
        let from = (at - self.start) as usize;
        Some(&self.buf[from..from + n])
    }

    /// The length of a record of `id` at `at` whose header is sane (it
    /// fits in the file), and whether its checksum holds.
    fn record_at(&mut self, at: u64, id: u64) -> Option<(usize, bool)> {
        let head = self.get(at, RECORD_HEADER)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let record_id = u64::from_le_bytes(head[8..16].try_into().ok()?);
        if len == 0 || record_id != id {
            return None;
        }
        let whole = self.get(at + 8, RECORD_HEADER - 8 + len)?;
        Some((len, crc32fast::hash(whole) == crc))
    }

    /// The first valid record of `id` at or after `from`.
    fn next_valid(&mut self, from: u64, id: u64) -> Option<u64> {
        let pattern = id.to_le_bytes();
        let mut at = from;
        while at + RECORD_HEADER as u64 <= self.len {
            let n = (self.len - at).min(WINDOW as u64) as usize;
            let found = self
                .get(at, n)?
                .windows(8)
                .skip(8)
                .position(|w| w == pattern);
            match found {
                Some(i) => {
                    let candidate = at + i as u64;
                    if let Some((_, true)) = self.record_at(candidate, id) {
                        return Some(candidate);
                    }
                    at = candidate + 1;
                }
                None if n < WINDOW => return None,
                None => at += (n - 16) as u64,
            }
        }
        None
    }
}

/// The records of `id` from the start; see [`scan`].
fn read_records(window: &mut Window<'_>, id: u64, durable: u64, ops_from: u64) -> Scanned {
    let mut scanned = Scanned {
        id,
        ..Scanned::default()
    };
    let mut at = HEADER_BYTES;
    loop {
        let (len, intact) = match window.record_at(at, id) {
            Some(found) => found,
            None => match window.next_valid(at, id) {
                // Unreadable header, valid records after it: damage.
                Some(next) => {
                    scanned.damaged += 1;
                    at = next;
                    continue;
                }
                None => break,
            },
        };
        let next = at + (RECORD_HEADER + len) as u64;
        if !intact && at >= durable && window.next_valid(next, id).is_none() {
            break; // torn at the end
        }
        let payload_at = at + RECORD_HEADER as u64;
        let decoded = window
            .get(payload_at, len)
            .and_then(|payload| decode(payload, payload_at, at >= ops_from));
        if let Some((ops, log)) = decoded {
            scanned.records.push(Record {
                at: Position {
                    segment: id,
                    offset: at,
                },
                // A damaged record's other writes are not trusted.
                ops: if intact { ops } else { Vec::new() },
                log,
            });
        }
        if !intact {
            scanned.damaged += 1;
        }
        at = next;
    }
    scanned.end = at;
    scanned
}

/// Bytes a record of `ops` takes, header included.
pub fn record_len(ops: &[Op]) -> u64 {
    (RECORD_HEADER
        + 4
        + ops
            .iter()
            .map(|op| {
                2 + op.tree.len() + 4 + op.key.len() + 1 + 4 + op.value.as_ref().map_or(0, Vec::len)
            })
            .sum::<usize>()) as u64
}

/// Appends the payload of `ops` to `out` (which will be written at
/// `record_at`); returns the payments it writes or removes.
fn encode(ops: &[Op], out: &mut Vec<u8>, record_at: u64) -> Vec<LogWrite> {
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    let mut log = Vec::new();
    for op in ops {
        out.extend_from_slice(&(op.tree.len() as u16).to_le_bytes());
        out.extend_from_slice(op.tree.as_bytes());
        out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&op.key);
        let place = match &op.value {
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                let at = record_at + out.len() as u64;
                out.extend_from_slice(value);
                Some((at, value.len() as u32))
            }
            None => {
                out.push(0);
                out.extend_from_slice(&0u32.to_le_bytes());
                None
            }
        };
        if op.tree == LOG {
            log.push((be(&op.key), place));
        }
    }
    log
}

/// The writes of a payload that lies at `payload_at` in its file: those
/// other than payments (if `with_ops`), and the payments (not copied).
fn decode(bytes: &[u8], payload_at: u64, with_ops: bool) -> Option<(Vec<Op>, Vec<LogWrite>)> {
    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
            self.at += n;
            Some(slice)
        }
        fn u32(&mut self) -> Option<usize> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
        }
    }
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()?;
    let mut ops = Vec::new();
    let mut log = Vec::new();
    for _ in 0..count {
        let tree_len = u16::from_le_bytes(r.take(2)?.try_into().ok()?) as usize;
        let tree = std::str::from_utf8(r.take(tree_len)?).ok()?;
        let key_len = r.u32()?;
        let key = r.take(key_len)?;
        let present = r.take(1)?[0] == 1;
        let value_len = r.u32()?;
        let value_at = payload_at + r.at as u64;
        let value = r.take(value_len)?;
        if tree == LOG {
            log.push((be(key), present.then_some((value_at, value_len as u32))));
        } else if with_ops {
            ops.push(Op {
                tree: tree.to_string(),
                key: key.to_vec(),
                value: present.then(|| value.to_vec()),
            });
        }
    }
    (r.at == bytes.len()).then_some((ops, log))
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

    fn payment(seq: u64, value: &str) -> Op {
        Op {
            tree: LOG.into(),
            key: seq.to_be_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn ops_of(records: &[Record]) -> Vec<Vec<Op>> {
        records.iter().map(|r| r.ops.clone()).collect()
    }

    fn scan_path(path: &Path, durable: u64) -> Scanned {
        let file = File::open(path).expect("open");
        scan(&file, durable, 0).expect("read").expect("a segment")
    }

    fn flip_byte(path: &Path, at: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).expect("read");
        os_disk()
            .write_at(&file, &[byte[0] ^ 1], at)
            .expect("damage");
    }

    #[test]
    fn records_come_back_with_where_their_payments_lie() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let mut segment = SegmentFile::create(&path, 7, 1 << 16, os_disk()).expect("create");
        let first = vec![payment(1, "payment"), op("dedupe", "k", None)];
        let second = vec![op("sink/x", "c", Some(""))];
        let log = segment.append(&first).expect("append");
        segment.append(&second).expect("append");
        segment.sync().expect("sync");
        let scanned = scan_path(&path, 0);
        assert_eq!((scanned.id, scanned.end), (7, segment.end().offset));
        assert_eq!(
            ops_of(&scanned.records),
            vec![vec![op("dedupe", "k", None)], second]
        );
        assert_eq!(scanned.records[0].log, log);
        let (at, len) = log[0].1.expect("a payment's place");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[at as usize..][..len as usize], b"payment");
    }

    #[test]
    fn a_reused_file_retires_its_old_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let mut old = SegmentFile::create(&path, 1, 1 << 16, os_disk()).expect("create");
        old.append(&[op("t", "a", Some("1"))]).expect("append");
        old.append(&[op("t", "b", Some("2"))]).expect("append");
        old.sync().expect("sync");
        drop(old);
        let mut new = SegmentFile::create(&path, 2, 1 << 16, os_disk()).expect("reuse");
        new.append(&[op("t", "c", Some("3"))]).expect("append");
        new.sync().expect("sync");
        let scanned = scan_path(&path, 0);
        assert_eq!(scanned.id, 2);
        assert_eq!(
            ops_of(&scanned.records),
            vec![vec![op("t", "c", Some("3"))]]
        );
    }

    #[test]
    fn a_torn_record_ends_the_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let mut segment = SegmentFile::create(&path, 1, 1 << 16, os_disk()).expect("create");
        segment.append(&[op("t", "a", Some("1"))]).expect("append");
        let torn_at = segment.end().offset + RECORD_HEADER as u64 + 3;
        segment.append(&[op("t", "b", Some("2"))]).expect("append");
        segment.sync().expect("sync");
        flip_byte(&path, torn_at);
        let scanned = scan_path(&path, 0);
        assert_eq!(
            ops_of(&scanned.records),
            vec![vec![op("t", "a", Some("1"))]]
        );
        assert!(scanned.end < torn_at, "new records overwrite the torn one");
    }

    #[test]
    fn damage_in_the_middle_keeps_the_records_after_it_and_the_payments_in_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let mut segment = SegmentFile::create(&path, 1, 1 << 16, os_disk()).expect("create");
        let damaged = vec![payment(1, "payment"), op("dedupe", "k", Some("1"))];
        let log = segment.append(&damaged).expect("append");
        segment.append(&[op("t", "b", Some("2"))]).expect("append");
        segment.sync().expect("sync");
        // A bit flipped in the dedupe value: the record's checksum fails.
        let (at, len) = log[0].1.expect("place");
        let flip = at + u64::from(len) + 18;
        flip_byte(&path, flip);
        let scanned = scan_path(&path, 0);
        assert_eq!(scanned.damaged, 1);
        assert_eq!(scanned.records[0].log, log, "the payment is kept");
        assert_eq!(
            ops_of(&scanned.records),
            vec![vec![], vec![op("t", "b", Some("2"))]],
            "the untrusted dedupe write is not"
        );
        assert_eq!(scanned.end, segment.end().offset);
        // The same damage in the last record of a segment still being
        // written is a torn write; in a sealed one (or before the last
        // checkpoint) it is damage.
        let mut torn = SegmentFile::create(&path, 2, 1 << 16, os_disk()).expect("create");
        torn.append(&damaged).expect("append");
        torn.sync().expect("sync");
        flip_byte(&path, flip);
        assert!(scan_path(&path, 0).records.is_empty());
        assert_eq!(scan_path(&path, u64::MAX).records.len(), 1);
    }

    #[test]
    fn the_file_is_written_once_to_its_full_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let segment = SegmentFile::create(&path, 1, 1 << 16, os_disk()).expect("create");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 16);
        assert!(segment.fits(&[op("t", "k", Some("v"))]));
        assert!(!segment.fits(&[op("t", "k", Some(&"v".repeat(1 << 16)))]));
    }
}
