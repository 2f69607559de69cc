//! The event log's segment files (`data_dir/events/<id>.seg`) and the
//! in-memory index that finds a payment in them by sequence number.
//!
//! Payments stay where their commit wrote them: nothing copies them into
//! sled, so sled holds only small things (dedupe keys, the sink registry and
//! acknowledgements, plugin KV) and neither its memory nor its checkpoints
//! grow with the backlog. The index is 8 bytes per payment. A segment is
//! collected once every payment in it is gone from the index and a
//! checkpoint lies after it; its file is kept for reuse (no zero-filling,
//! no change of size) or deleted when enough are spare. A dead letter that
//! would hold an old segment is moved into sled's `events` tree first, where
//! the payments of stores from before the segments also stay.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LogError;
use super::disk::Disk;
use super::engine::Engine;
use super::segment::{self, LogWrite, Op, Position, SegmentFile, io_error};

/// Collected segment files kept for reuse.
const SPARE_FILES: usize = 2;

/// Where one payment's record lies.
#[derive(Debug, Clone)]
pub struct Location {
    pub seq: u64,
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// The record's bytes (for [`super::record::decode`]).
    pub fn read(&self) -> Result<Vec<u8>, LogError> {
        let mut bytes = vec![0u8; self.len as usize];
        self.file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|e| LogError::storage("event log read", e))?;
        Ok(bytes)
    }
}

/// One segment's payments: slot `seq - first` holds (offset, length), or
/// (0, 0) once removed.
#[derive(Debug)]
struct Slots {
    segment: u64,
    file: Arc<File>,
    first: u64,
    slots: Vec<(u32, u32)>,
    live: usize,
}

impl Slots {
    /// The payment in slot `i`, unless removed.
    fn location(&self, i: usize) -> Option<Location> {
        let &(offset, len) = self.slots.get(i)?;
        (len != 0).then(|| Location {
            seq: self.first + i as u64,
            file: self.file.clone(),
            offset: offset.into(),
            len,
        })
    }
}

/// Sequence number → place in a segment, for every payment the segments hold.
#[derive(Debug, Default)]
pub struct Index {
    /// By the first sequence number in the segment.
    by_first: BTreeMap<u64, Slots>,
    /// Segment id → its first sequence number.
    first_of: HashMap<u64, u64>,
}

impl Index {
    fn insert(&mut self, seq: u64, segment: u64, file: &Arc<File>, (offset, len): (u64, u32)) {
        let first = *self.first_of.entry(segment).or_insert(seq);
        let slots = self.by_first.entry(first).or_insert_with(|| Slots {
            segment,
            file: file.clone(),
            first,
            slots: Vec::new(),
            live: 0,
        });
        let Some(i) = seq.checked_sub(first).map(|i| i as usize) else {
            return; // not written in order: cannot happen
        };
        if slots.slots.len() <= i {
            slots.slots.resize(i + 1, (0, 0));
        }
        if slots.slots[i].1 == 0 {
            slots.live += 1;
        }
        slots.slots[i] = (offset as u32, len);
    }

    fn remove(&mut self, seq: u64) {
        if let Some((_, slots)) = self.by_first.range_mut(..=seq).next_back()
            && let Some(slot) = slots.slots.get_mut((seq - slots.first) as usize)
            && slot.1 != 0
        {
            *slot = (0, 0);
            slots.live -= 1;
        }
    }

    /// Applies the payments a record written in `segment` writes or removes.
    pub fn apply(&mut self, segment: u64, file: &Arc<File>, log: &[LogWrite]) {
        for &(seq, place) in log {
            match place {
                Some(place) => self.insert(seq, segment, file, place),
                None => self.remove(seq),
            }
        }
    }

    pub fn get(&self, seq: u64) -> Option<Location> {
        let (_, slots) = self.by_first.range(..=seq).next_back()?;
        slots.location((seq - slots.first) as usize)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// Up to `limit` payments with `seq >= from`, in order.
    pub fn from(&self, from: u64, limit: usize) -> Vec<Location> {
        let start = self
            .by_first
            .range(..=from)
            .next_back()
            .map_or(from, |(first, _)| *first);
        let mut out = Vec::new();
        for slots in self.by_first.range(start..).map(|(_, s)| s) {
            let skip = from.saturating_sub(slots.first) as usize;
            for i in skip..slots.slots.len() {
                if out.len() >= limit {
                    return out;
                }
                out.extend(slots.location(i));
            }
        }
        out
    }

    /// Up to `limit` payments with `seq < before`, newest first.
    pub fn before(&self, before: u64, limit: usize) -> Vec<Location> {
        let mut out = Vec::new();
        for slots in self.by_first.range(..before).rev().map(|(_, s)| s) {
            let end = (before - slots.first).min(slots.slots.len() as u64) as usize;
            for i in (0..end).rev() {
                if out.len() >= limit {
                    return out;
                }
                out.extend(slots.location(i));
            }
        }
        out
    }

    /// One past the highest sequence number ever indexed (removed ones too).
    pub fn end(&self) -> u64 {
        self.by_first
            .values()
            .next_back()
            .map_or(0, |s| s.first + s.slots.len() as u64)
    }

    /// Payments still in segment `id`.
    pub fn live(&self, id: u64) -> usize {
        self.first_of
            .get(&id)
            .and_then(|first| self.by_first.get(first))
            .map_or(0, |s| s.live)
    }

    /// The payments still in each segment but the newest, by segment id.
    pub fn live_by_segment(&self) -> Vec<(u64, Vec<u64>)> {
        let newest = self.by_first.values().next_back().map(|s| s.segment);
        let mut out = Vec::new();
        for slots in self.by_first.values().filter(|s| Some(s.segment) != newest) {
            let seqs = slots
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.1 != 0)
                .map(|(i, _)| slots.first + i as u64)
                .collect();
            out.push((slots.segment, seqs));
        }
        out
    }

    /// Gives back what growing the slot lists reserved.
    pub fn shrink(&mut self) {
        for slots in self.by_first.values_mut() {
            slots.slots.shrink_to_fit();
        }
    }

    /// Segment `id` was collected.
    pub fn forget_segment(&mut self, id: u64) {
        if let Some(first) = self.first_of.remove(&id) {
            self.by_first.remove(&first);
        }
    }
}

/// What [`Segments::open`] found.
pub struct Opened {
    pub segments: Segments,
    pub index: Index,
    /// The writes of the records from the checkpoint on (the payments
    /// aside), to apply to sled in order.
    pub replay: Vec<Vec<Op>>,
}

/// The segment files, written by the committer alone.
pub struct Segments {
    dir: PathBuf,
    dir_handle: File,
    disk: Arc<dyn Disk>,
    segment_bytes: u64,
    active: SegmentFile,
    /// Sealed segments (and the active one), by id.
    paths: BTreeMap<u64, PathBuf>,
    /// Collected files, to reuse for the next segments.
    spare: Vec<PathBuf>,
    /// The last checkpoint: sled's files hold every write of the records
    /// before it.
    checkpointed: Position,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("dir", &self.dir)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

impl Segments {
    /// Opens `dir` (created if missing), reads every segment in order into
    /// the index, and returns the writes of the records from `checkpointed`
    /// (where sled's files end) on.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        disk: Arc<dyn Disk>,
        checkpointed: Position,
    ) -> Result<Opened, LogError> {
        super::open::create_private_dir(dir).map_err(|e| io_error("create", dir, e))?;
        let dir_handle = File::open(dir).map_err(|e| io_error("open", dir, e))?;
        let mut paths = BTreeMap::new();
        let mut spare = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
            let path = entry.map_err(|e| io_error("list", dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name
                .strip_suffix(".seg")
                .and_then(|id| u64::from_str_radix(id, 16).ok())
            {
                Some(id) => drop(paths.insert(id, path)),
                None if name.starts_with("spare-") => spare.push(path),
                None => {}
            }
        }
        let mut index = Index::default();
        let mut replay: Vec<Vec<Op>> = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        let newest = paths.keys().next_back().copied();
        for (&id, path) in &paths.clone() {
            let file = Arc::new(File::open(path).map_err(|e| io_error("open", path, e))?);
            // Sealed segments were synced whole; the newest up to the
            // checkpoint.
            let durable = match Some(id) == newest {
                true if checkpointed.segment == id => checkpointed.offset,
                true => 0,
                false => u64::MAX,
            };
            let ops_from = match id.cmp(&checkpointed.segment) {
                std::cmp::Ordering::Less => u64::MAX,
                std::cmp::Ordering::Equal => checkpointed.offset,
                std::cmp::Ordering::Greater => 0,
            };
            let scanned = segment::scan(&file, durable, ops_from)
                .map_err(|e| io_error("read", path, e))?
                .filter(|s| s.id == id);
            let Some(segment::Scanned {
                records,
                end,
                damaged: damage,
                ..
            }) = scanned
            else {
                // Created or reused but never given its id (a crash in
                // between): nothing in it was ever acknowledged.
                paths.remove(&id);
                spare.push(path.clone());
                continue;
            };
            if damage > 0 {
                tracing::error!(
                    segment = %path.display(),
                    damaged = damage,
                    "event log segment has damaged records; their payments are checked one by one when read"
                );
            }
            for record in records {
                index.apply(id, &file, &record.log);
                if record.at >= checkpointed && !record.ops.is_empty() {
                    replay.push(record.ops);
                }
            }
            last = Some((id, end));
        }
        index.shrink();
        let active = match last {
            Some((id, end)) => SegmentFile::resume(&paths[&id], id, end, disk.clone())?,
            None => {
                let path = segment_path(dir, 1);
                let active = SegmentFile::create(&path, 1, segment_bytes, disk.clone())?;
                paths.insert(1, path);
                sync_dir(&dir_handle, dir)?;
                active
            }
        };
        Ok(Opened {
            segments: Segments {
                dir: dir.to_path_buf(),
                dir_handle,
                disk,
                segment_bytes,
                active,
                paths,
                spare,
                checkpointed,
            },
            index,
            replay,
        })
    }

    /// [`Segments::open`] from where `engine`'s last checkpoint ends, with
    /// the writes since then replayed into it.
    pub fn open_replayed(
        dir: &Path,
        segment_bytes: u64,
        disk: Arc<dyn Disk>,
        engine: &Engine,
    ) -> Result<(Segments, Index), LogError> {
        let opened = Segments::open(dir, segment_bytes, disk, engine.checkpointed()?)?;
        for ops in &opened.replay {
            engine.apply(ops)?;
        }
        Ok((opened.segments, opened.index))
    }

    /// Where the next record goes.
    pub fn end(&self) -> Position {
        self.active.end()
    }

    #[cfg(test)]
    pub fn active_id(&self) -> u64 {
        self.active.id
    }

    pub fn active_file(&self) -> Arc<File> {
        self.active.file()
    }

    pub fn checkpointed(&self) -> Position {
        self.checkpointed
    }

    /// Bytes the segment files take (spare ones included).
    pub fn disk_bytes(&self) -> u64 {
        self.paths
            .values()
            .chain(&self.spare)
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Writes a record of `ops` (in a new segment if the active one is
    /// full); returns its segment and the payments it writes or removes.
    pub fn append(&mut self, ops: &[Op]) -> Result<(u64, Vec<LogWrite>), LogError> {
        if !self.active.fits(ops) {
            self.roll(segment::record_len(ops))?;
        }
        let log = self.active.append(ops)?;
        Ok((self.active.id, log))
    }

    pub fn sync(&mut self) -> Result<(), LogError> {
        self.active.sync()
    }

    /// See [`SegmentFile::rewrite_unsynced`].
    pub fn rewrite_unsynced(&mut self) -> Result<(), LogError> {
        self.active.rewrite_unsynced()
    }

    /// Seals the active segment (synced first: a later segment's records
    /// must never be durable without the earlier ones) and starts the next,
    /// large enough for a record of `need` bytes.
    fn roll(&mut self, need: u64) -> Result<(), LogError> {
        self.active.sync()?;
        let id = self.active.id + 1;
        let path = segment_path(&self.dir, id);
        let capacity = self.segment_bytes.max(need + segment::HEADER_BYTES);
        if let Some(spare) = self.spare.pop() {
            std::fs::rename(&spare, &path).map_err(|e| io_error("rename", &spare, e))?;
        }
        let next = SegmentFile::create(&path, id, capacity, self.disk.clone())?;
        sync_dir(&self.dir_handle, &self.dir)?;
        self.paths.insert(id, path);
        self.active = next;
        Ok(())
    }

    /// Sled's synced files hold everything before `at` (the caller stored
    /// it there and flushed): collects the segments before `at` for which
    /// `empty` says no payment is left in them, and returns their ids.
    pub fn checkpoint(
        &mut self,
        at: Position,
        empty: impl Fn(u64) -> bool,
    ) -> Result<Vec<u64>, LogError> {
        self.checkpointed = at;
        let collect: Vec<u64> = self
            .paths
            .range(..at.segment)
            .map(|(id, _)| *id)
            .filter(|id| *id != self.active.id && empty(*id))
            .collect();
        for &id in &collect {
            let Some(path) = self.paths.remove(&id) else {
                continue;
            };
            if self.spare.len() < SPARE_FILES {
                let to = self.dir.join(format!("spare-{id:016x}"));
                std::fs::rename(&path, &to).map_err(|e| io_error("rename", &path, e))?;
                self.spare.push(to);
            } else {
                std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
            }
        }
        if !collect.is_empty() {
            sync_dir(&self.dir_handle, &self.dir)?;
        }
        Ok(collect)
    }
}

fn sync_dir(handle: &File, dir: &Path) -> Result<(), LogError> {
    handle
        .sync_all()
        .map_err(|e| io_error("fsync of the directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::disk::os_disk;
    use crate::log::segment::LOG;

    fn put(seq: u64, value: &str) -> Op {
        Op {
            tree: LOG.into(),
            key: seq.to_be_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn remove(seq: u64) -> Op {
        Op {
            tree: LOG.into(),
            key: seq.to_be_bytes().to_vec(),
            value: None,
        }
    }

    fn other(key: &str) -> Op {
        Op {
            tree: "meta".into(),
            key: key.as_bytes().to_vec(),
            value: Some(vec![1]),
        }
    }

    fn read(index: &Index, seq: u64) -> Option<String> {
        index
            .get(seq)
            .map(|l| String::from_utf8(l.read().expect("read")).expect("utf8"))
    }

    /// Appends a record and indexes it, as the committer does.
    fn write(segments: &mut Segments, index: &mut Index, ops: &[Op]) {
        let (id, log) = segments.append(ops).expect("append");
        let file = segments.active_file();
        index.apply(id, &file, &log);
    }

    #[test]
    fn payments_are_found_across_segments_and_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Opened {
            mut segments,
            mut index,
            replay,
            ..
        } = Segments::open(dir.path(), 1 << 14, os_disk(), Position::default()).expect("open");
        assert!(replay.is_empty());
        let big = "x".repeat(3000);
        for seq in 0..20 {
            write(
                &mut segments,
                &mut index,
                &[put(seq, &format!("{seq}{big}"))],
            );
        }
        write(&mut segments, &mut index, &[remove(3), other("k")]);
        segments.sync().expect("sync");
        assert!(segments.active_id() > 3, "rolled over into new segments");
        assert_eq!(read(&index, 3), None);
        assert!(read(&index, 19).expect("19").starts_with("19x"));
        assert_eq!(
            index.from(2, 3).iter().map(|l| l.seq).collect::<Vec<_>>(),
            [2, 4, 5]
        );
        assert_eq!(
            index.before(5, 3).iter().map(|l| l.seq).collect::<Vec<_>>(),
            [4, 2, 1]
        );
        drop(segments);
        let opened =
            Segments::open(dir.path(), 1 << 14, os_disk(), Position::default()).expect("reopen");
        assert_eq!(read(&opened.index, 3), None);
        assert!(read(&opened.index, 0).expect("0").starts_with("0x"));
        assert_eq!(opened.index.end(), 20);
        assert_eq!(opened.replay, vec![vec![other("k")]], "no checkpoint yet");
    }

    #[test]
    fn a_checkpoint_collects_empty_segments_and_the_replay_starts_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Opened {
            mut segments,
            mut index,
            ..
        } = Segments::open(dir.path(), 1 << 14, os_disk(), Position::default()).expect("open");
        let big = "x".repeat(6000);
        for seq in 0..6 {
            write(&mut segments, &mut index, &[put(seq, &big), other("a")]);
        }
        let first_segments = segments.paths.len();
        for seq in 0..4 {
            write(&mut segments, &mut index, &[remove(seq)]);
        }
        let at = segments.end();
        for id in segments
            .checkpoint(at, |id| index.live(id) == 0)
            .expect("checkpoint")
        {
            index.forget_segment(id);
        }
        assert!(
            segments.paths.len() < first_segments,
            "empty ones collected"
        );
        assert_eq!(segments.spare.len().min(SPARE_FILES), segments.spare.len());
        write(&mut segments, &mut index, &[other("b")]);
        segments.sync().expect("sync");
        drop(segments);
        let opened = Segments::open(dir.path(), 1 << 14, os_disk(), at).expect("reopen");
        assert_eq!(
            opened.replay,
            vec![vec![other("b")]],
            "the replay starts at the checkpoint"
        );
        assert!(opened.index.contains(4) && opened.index.contains(5));
        assert!(!opened.index.contains(0));
        // Spare files are reused for the next segments.
        let Opened {
            mut segments,
            mut index,
            ..
        } = opened;
        let spare = segments.spare.len();
        for seq in 6..12 {
            write(&mut segments, &mut index, &[put(seq, &big)]);
        }
        assert!(segments.spare.len() < spare || spare == 0);
    }
}
