use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::log::disk::faulty::FaultyDisk;
use crate::log::{Appended, LogFuture};

fn change(txid: &str) -> BalanceChange {
    BalanceChange::example(txid, 150_000)
}

/// Small segments, so the tests roll over into new ones, collect them and
/// move dead letters out of them.
fn options() -> LogOptions {
    LogOptions {
        cache_bytes: 1 << 20,
        segment_bytes: 16 << 10,
        min_free_disk_bytes: 0,
        keep_settled: Duration::ZERO,
        ..LogOptions::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, options()).expect("open log")
}

/// Closes and opens again. sled releases its file lock when its last
/// background I/O thread lets go of the file, which can be a moment after
/// the handle is dropped, so a reopen in the same process waits for it.
fn reopen(log: Store, dir: &Path) -> Store {
    log.close().expect("close");
    drop(log);
    open_when_unlocked(dir, options())
}

fn open_when_unlocked(dir: &Path, options: LogOptions) -> Store {
    for _ in 0..200 {
        match Store::open(dir, options.clone()) {
            Err(LogError::Locked(_)) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.expect("reopen"),
        }
    }
    panic!("store still locked 2 s after close");
}

/// Waits for a store call that must succeed.
fn w<T: Send>(f: LogFuture<T>) -> T {
    crate::log::block_on(f).expect("store call")
}

fn append(log: &Store, txids: &[&str]) -> Vec<Appended> {
    w(log.append_changes(txids.iter().map(|t| change(t)).collect())).appended
}

fn register(log: &Store, sink: &str) -> u64 {
    w(log.register(sink, None))
}

fn settle(log: &Store, sink: &str, seq: u64, settlement: Settlement) {
    w(log.settle(sink, vec![seq], settlement))
}

fn txids(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.change.transaction_id.clone())
        .collect()
}

#[test]
fn appends_in_order_and_dedupes_within_and_across_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert_eq!(
        append(&log, &["a", "b", "a"]),
        vec![Appended::New(0), Appended::New(1), Appended::Duplicate(0)]
    );
    assert_eq!(
        append(&log, &["b", "c"]),
        vec![Appended::Duplicate(1), Appended::New(2)]
    );
    assert_eq!(txids(&log.read_now(0, 10).expect("read")), ["a", "b", "c"]);
    assert_eq!(txids(&log.read_now(1, 1).expect("read")), ["b"]);
}

#[test]
fn unsettled_entries_survive_reopen_and_settled_ones_never_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert_eq!(register(&log, "pos"), 0);
    append(&log, &["1", "2", "3"]);
    settle(&log, "pos", 0, Settlement::Delivered);
    settle(
        &log,
        "pos",
        1,
        Settlement::Dead {
            reason: "HTTP 400".into(),
        },
    );
    let log = reopen(log, dir.path());
    let cursor = log.cursor_now("pos").expect("cursor");
    assert_eq!(cursor, 2);
    assert_eq!(txids(&log.read_now(cursor, 10).expect("read")), ["3"]);
    // The dedupe index outlives the restart too.
    assert_eq!(
        append(&log, &["1", "4"]),
        [Appended::Duplicate(0), Appended::New(3)]
    );
    let status = log.status("pos").expect("status");
    assert_eq!(
        (status.pending, status.dead_letters, status.delivered),
        (2, 1, 1)
    );
}

/// A commit whose sync failed may still be on the disk: its record is in
/// the write-ahead file. The store reopens itself and replays it, so the
/// sender's retry is a duplicate of the same payment, and numbers are never
/// handed out twice.
#[test]
fn a_failed_sync_keeps_its_sequence_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FaultyDisk::new();
    let log = Store::open_on(dir.path(), options(), disk.clone()).expect("open");
    assert_eq!(append(&log, &["a"]), vec![Appended::New(0)]);
    disk.fail_next_sync();
    assert!(crate::log::block_on(log.append_changes(vec![change("b")])).is_err());
    assert!(log.health().last_error.is_some(), "the failure is reported");
    let c = retry_until_stored(&log, "c");
    let retry = retry_until_stored(&log, "b");
    let (Appended::New(c_seq), Appended::Duplicate(b_seq)) = (c, retry) else {
        panic!("c: {c:?}, retry of b: {retry:?}");
    };
    assert_ne!(c_seq, b_seq);
    let b = log.entry(b_seq).expect("read").expect("b is there");
    assert_eq!(b.change.transaction_id, "b");
    assert_eq!(txids(&log.read_now(0, 10).expect("read")), ["a", "b", "c"]);
    assert_eq!(log.health().last_error, None, "recovered in place");
}

/// A commit that must sync waits for a webhook on its way to an append
/// (up to `gather`), so both share one `fdatasync`; with nobody coming, an
/// append is committed at once, however long `gather` is.
#[test]
fn an_expected_append_joins_the_commit_ahead_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FaultyDisk::new();
    let gather = Duration::from_secs(5);
    let options = LogOptions {
        gather,
        ..options()
    };
    let log = Store::open_on(dir.path(), options, disk.clone()).expect("open");
    let started = std::time::Instant::now();
    assert_eq!(append(&log, &["alone"]), vec![Appended::New(0)]);
    assert!(started.elapsed() < gather / 2, "nobody was coming: no wait");

    let syncs = disk.syncs();
    let coming = log.expect_append();
    let first = log.append_changes(vec![change("a")]);
    // The committer has `a` in hand and waits for the expected one.
    std::thread::sleep(Duration::from_millis(100));
    drop(coming);
    let second = log.append_changes(vec![change("b")]);
    let first = crate::log::block_on(first).expect("a stored");
    let second = crate::log::block_on(second).expect("b stored");
    assert_eq!(first.appended, vec![Appended::New(1)]);
    assert_eq!(second.appended, vec![Appended::New(2)]);
    assert_eq!(disk.syncs() - syncs, 1, "a and b share one fdatasync");
}

/// Appends `txid` until the store takes it (it refuses while it reopens).
fn retry_until_stored(log: &Store, txid: &str) -> Appended {
    for _ in 0..100 {
        if let Ok(committed) = crate::log::block_on(log.append_changes(vec![change(txid)])) {
            return committed.appended[0];
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the store did not recover within 5 s");
}

#[test]
fn a_new_sink_starts_at_the_end_of_the_log_once_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1", "2"]);
    // Reading a cursor registers nothing.
    assert!(matches!(
        log.cursor_now("late"),
        Err(LogError::NotRegistered(_))
    ));
    assert!(log.known_sinks().expect("sinks").is_empty());
    assert_eq!(register(&log, "late"), 2);
    assert_eq!(log.cursor_now("late").expect("cursor"), 2);
    assert_eq!(log.known_sinks().expect("sinks"), ["late"]);
}

#[test]
fn concurrent_appends_all_commit_with_distinct_sequence_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let seqs: Vec<u64> = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append_changes(vec![change(&i.to_string())]).await
            }));
        }
        let mut seqs = Vec::new();
        for task in tasks {
            match task
                .await
                .expect("join")
                .expect("append")
                .appended
                .as_slice()
            {
                [Appended::New(seq)] => seqs.push(*seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        seqs
    });
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct, (0..200).collect());
    assert_eq!(log.read_now(0, 1000).expect("read").len(), 200);
}

#[test]
fn dead_letters_can_be_requeued_and_then_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    register(&log, "pos");
    append(&log, &["1", "2"]);
    settle(
        &log,
        "pos",
        0,
        Settlement::Dead {
            reason: "HTTP 422".into(),
        },
    );
    settle(&log, "pos", 1, Settlement::Delivered);
    let dead = log.list("pos", Some("dead"), 10).expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("HTTP 422"));
    assert_eq!(w(log.requeue("pos", Some(1))), 0, "not dead");
    assert_eq!(w(log.requeue("pos", None)), 1);
    assert_eq!(txids(&w(log.requeued("pos", 10))), ["1"]);
    assert_eq!(log.status("pos").expect("status").pending, 1);
    settle(&log, "pos", 0, Settlement::Delivered);
    assert!(w(log.requeued("pos", 10)).is_empty());
    let status = log.status("pos").expect("status");
    assert_eq!(
        (status.pending, status.dead_letters, status.cursor),
        (0, 0, 2)
    );
}

#[test]
fn gc_removes_only_what_every_sink_settled_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Store::open(
        dir.path(),
        LogOptions {
            keep_settled: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    let sinks = vec!["a".to_string(), "b".to_string()];
    for s in &sinks {
        register(&log, s);
    }
    append(&log, &["1", "2", "3", "4"]);
    for seq in 0..3 {
        settle(&log, "a", seq, Settlement::Delivered);
    }
    settle(&log, "b", 0, Settlement::Delivered);
    settle(
        &log,
        "b",
        1,
        Settlement::Dead {
            reason: "no".into(),
        },
    );
    let report = log.gc().expect("gc");
    assert_eq!(report.events_removed, 1);
    assert_eq!(txids(&log.read_now(0, 10).expect("read")), ["2", "3", "4"]);
    // Still a duplicate after GC: the dedupe window is separate.
    assert_eq!(append(&log, &["1"]), [Appended::Duplicate(0)]);
}

#[test]
fn dedupe_keys_older_than_retention_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Store::open(
        dir.path(),
        LogOptions {
            dedupe_retention: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    append(&log, &["1"]);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(log.gc().expect("gc").dedupe_removed, 1);
    assert_eq!(append(&log, &["1"]), [Appended::New(1)]);
}

#[test]
fn sequence_numbers_never_repeat_after_everything_was_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Store::open(
        dir.path(),
        LogOptions {
            keep_settled: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    append(&log, &["1", "2"]);
    assert_eq!(log.gc().expect("gc").events_removed, 2);
    let log = reopen(log, dir.path());
    assert_eq!(append(&log, &["3"]), [Appended::New(2)]);
}

#[test]
fn a_full_store_refuses_appends_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1"]);
    let log = reopen(log, dir.path());
    log.close().expect("close");
    drop(log);
    let full = open_when_unlocked(
        dir.path(),
        LogOptions {
            max_disk_bytes: 1,
            ..options()
        },
    );
    let err = crate::log::block_on(full.append_changes(vec![change("2")])).expect_err("full");
    assert!(matches!(err, LogError::Full(_)), "{err}");
    assert_eq!(txids(&full.read_now(0, 10).expect("read")), ["1"]);
}

#[test]
fn a_second_process_on_the_same_store_is_refused_not_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1"]);
    // flock is per open file description, so this process's second open
    // conflicts exactly like another process would.
    let err = Store::open(dir.path(), options()).expect_err("locked");
    assert!(matches!(err, LogError::Locked(_)), "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().contains("damaged")),
        "{names:?}"
    );
}

#[test]
fn damaged_records_are_quarantined_and_the_rest_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1", "2", "3"]);
    w(log.checkpoint());
    // One bit of payment 1's record flipped where it lies in its segment
    // (the segment's own checksum over the commit is not checked on reads).
    let place = log.shared.index().get(1).expect("payment 1 in a segment");
    let last = place.offset + u64::from(place.len) - 1;
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&*place.file, &mut byte, last).expect("read");
    let segment = std::fs::read_dir(dir.path().join("events"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x20], last).expect("damage");
    drop(place);
    let log = reopen(log, dir.path());
    // Found when read (a sink reaching it, `queue list`), not by a scan at open.
    assert_eq!(txids(&log.read_now(0, 10).expect("read")), ["1", "3"]);
    let quarantined = || {
        log.look_now(|_, engine| Ok(engine.quarantine.len()))
            .expect("quarantine")
    };
    for _ in 0..100 {
        if quarantined() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(quarantined(), 1, "moved to quarantine by the committer");
    assert_eq!(log.health().quarantined, 1);
    assert!(log.health().is_degraded());
    assert_eq!(txids(&log.read_now(0, 10).expect("read")), ["1", "3"]);
    assert_eq!(log.health().quarantined, 1, "reported once");
    // Appends keep working, with fresh sequence numbers.
    assert_eq!(append(&log, &["4"]), [Appended::New(3)]);
}

#[test]
fn a_store_that_will_not_open_is_moved_aside_and_a_fresh_one_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1"]);
    log.close().expect("close");
    drop(log);
    // Garbage where sled keeps its config: sled refuses to open it.
    std::fs::write(dir.path().join("state").join("conf"), b"\xff\xfe garbage").expect("write");
    let log = open_when_unlocked(dir.path(), options());
    let health = log.health();
    let aside = health.damaged_store.clone().expect("moved aside");
    assert!(Path::new(&aside).exists(), "{aside}");
    assert!(health.is_degraded());
    // The fresh store works.
    assert!(matches!(
        append(&log, &["2"]).as_slice(),
        [Appended::New(_)]
    ));
}

#[test]
fn the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("fresh/data");
    let _log = open(&fresh);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    // One made world-readable before (an older version, a umask of 022).
    let old = dir.path().join("old");
    std::fs::create_dir(&old).expect("mkdir");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let _log = open(&old);
    assert_eq!(mode(&old), 0o750, "others lose access, the group keeps its");
}

#[test]
fn open_as_is_leaves_a_damaged_store_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1"]);
    log.close().expect("close");
    drop(log);
    let conf = dir.path().join("state").join("conf");
    std::fs::write(&conf, b"\xff\xfe garbage").expect("write");
    let error = loop {
        match Store::open_as_is(dir.path(), options()) {
            Err(LogError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => break error,
            Ok(_) => panic!("a damaged store opened"),
        }
    };
    assert!(matches!(error, LogError::Damaged { .. }), "{error}");
    assert_eq!(std::fs::read(&conf).expect("conf"), b"\xff\xfe garbage");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    let mut names: Vec<_> = names
        .iter()
        .map(|n| n.to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["events", "state"], "nothing moved aside or created");
}

// ---- model-based property test -------------------------------------------------

/// One sink as the store must see it.
#[derive(Debug, Default, Clone)]
struct SinkModel {
    registered: bool,
    /// The first entry neither settled nor passed.
    cursor: u64,
    /// Settled above the cursor (acknowledged out of order).
    acked: BTreeSet<u64>,
    dead: BTreeSet<u64>,
    requeued: BTreeSet<u64>,
}

impl SinkModel {
    /// Entries it still waits for: above the cursor, not acknowledged.
    fn open(&self, events: &BTreeMap<u64, String>) -> Vec<u64> {
        events
            .range(self.cursor..)
            .map(|(s, _)| *s)
            .filter(|s| !self.acked.contains(s))
            .collect()
    }

    fn advance(&mut self, next_seq: u64) {
        while self.cursor < next_seq && self.acked.remove(&self.cursor) {
            self.cursor += 1;
        }
    }
}

/// What the store must behave like, kept in memory.
#[derive(Debug, Default)]
struct Model {
    /// seq → transaction id, for entries not collected.
    events: BTreeMap<u64, String>,
    dedupe: HashMap<String, u64>,
    next_seq: u64,
    sinks: [SinkModel; 3],
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    /// Settles some of the sink's open entries, picked by index, in the
    /// order given: acknowledgements out of order.
    Settle {
        sink: usize,
        picks: Vec<usize>,
        dead: bool,
    },
    /// Passes everything up to an open entry (a lane skipping others' payments).
    Pass {
        sink: usize,
        pick: usize,
    },
    Requeue(usize),
    RetryRequeued(usize),
    Register(usize),
    Forget(usize),
    Reopen,
    Gc,
    /// Sled flushed, a marker written, empty segments collected.
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..120, 1..8).prop_map(Op::Append),
        4 => (0usize..3, proptest::collection::vec(0usize..6, 1..4), proptest::bool::weighted(0.2))
            .prop_map(|(sink, picks, dead)| Op::Settle { sink, picks, dead }),
        1 => (0usize..3, 0usize..4).prop_map(|(sink, pick)| Op::Pass { sink, pick }),
        1 => (0usize..3).prop_map(Op::Requeue),
        1 => (0usize..3).prop_map(Op::RetryRequeued),
        1 => (1usize..3).prop_map(Op::Register),
        1 => (1usize..3).prop_map(Op::Forget),
        1 => Just(Op::Reopen),
        2 => Just(Op::Gc),
        1 => Just(Op::Checkpoint),
    ]
}

/// `speaker:A` is registered from the start and never runs: GC must keep
/// its backlog. The others come and go.
const SINKS: [&str; 3] = ["speaker:A", "mqtt", "pos"];

fn check(log: &Store, model: &Model) {
    let all = log.read_now(0, 10_000).expect("read");
    let got: BTreeMap<u64, String> = all
        .iter()
        .map(|e| (e.seq, e.change.transaction_id.clone()))
        .collect();
    assert_eq!(got, model.events, "log contents");
    let registered: BTreeSet<String> = SINKS
        .iter()
        .zip(&model.sinks)
        .filter(|(_, m)| m.registered)
        .map(|(s, _)| s.to_string())
        .collect();
    let known: BTreeSet<String> = log.known_sinks().expect("sinks").into_iter().collect();
    assert_eq!(known, registered, "registry");
    for (sink, m) in SINKS.iter().zip(&model.sinks) {
        if !m.registered {
            assert!(matches!(
                log.cursor_now(sink),
                Err(LogError::NotRegistered(_))
            ));
            continue;
        }
        assert_eq!(
            log.cursor_now(sink).expect("cursor"),
            m.cursor,
            "{sink} cursor"
        );
        // The invariant: every acknowledged, unsettled entry of a
        // registered sink is readable.
        for seq in m
            .open(&model.events)
            .into_iter()
            .chain(m.requeued.iter().copied())
        {
            assert!(
                log.entry(seq).expect("entry").is_some(),
                "{sink} still needs {seq}, and it is gone"
            );
        }
        let requeued: BTreeSet<u64> = w(log.requeued(sink, 10_000))
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(requeued, m.requeued, "{sink} requeued");
        let status = log.status(sink).expect("status");
        assert_eq!(status.dead_letters, m.dead.len() as u64, "{sink} dead");
        let pending = m.open(&model.events).len() + m.requeued.len();
        assert_eq!(status.pending, pending as u64, "{sink} pending");
    }
}

fn apply(log: Store, dir: &Path, model: &mut Model, op: &Op) -> Store {
    match op {
        Op::Append(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| format!("tx{i}")).collect();
            let got = w(log.append_changes(ids.iter().map(|t| change(t)).collect())).appended;
            let mut expected = Vec::new();
            for id in ids {
                if let Some(seq) = model.dedupe.get(&id) {
                    expected.push(Appended::Duplicate(*seq));
                } else {
                    let seq = model.next_seq;
                    model.next_seq += 1;
                    model.dedupe.insert(id.clone(), seq);
                    model.events.insert(seq, id);
                    expected.push(Appended::New(seq));
                }
            }
            assert_eq!(got, expected);
        }
        Op::Settle { sink, picks, dead } => {
            let m = &mut model.sinks[*sink];
            if !m.registered {
                return log;
            }
            let open = m.open(&model.events);
            for pick in picks {
                let Some(&seq) = open.get(*pick) else {
                    continue;
                };
                let settlement = if *dead {
                    m.dead.insert(seq);
                    Settlement::Dead {
                        reason: "test".into(),
                    }
                } else {
                    m.dead.remove(&seq);
                    Settlement::Delivered
                };
                settle(&log, SINKS[*sink], seq, settlement);
                m.acked.insert(seq);
                m.advance(model.next_seq);
            }
        }
        Op::Pass { sink, pick } => {
            let m = &mut model.sinks[*sink];
            let Some(&through) = m.open(&model.events).get(*pick).filter(|_| m.registered) else {
                return log;
            };
            w(log.pass(SINKS[*sink], through));
            m.acked.retain(|s| *s > through);
            m.cursor = m.cursor.max(through + 1);
            m.advance(model.next_seq);
        }
        Op::Requeue(sink) => {
            let m = &mut model.sinks[*sink];
            if !m.registered {
                return log;
            }
            let n = w(log.requeue(SINKS[*sink], None));
            assert_eq!(n, m.dead.len());
            let dead = std::mem::take(&mut m.dead);
            m.requeued.extend(dead);
        }
        Op::RetryRequeued(sink) => {
            let m = &mut model.sinks[*sink];
            if !m.registered {
                return log;
            }
            for entry in w(log.requeued(SINKS[*sink], 10_000)) {
                settle(&log, SINKS[*sink], entry.seq, Settlement::Delivered);
            }
            m.requeued.clear();
        }
        Op::Register(sink) => {
            let m = &mut model.sinks[*sink];
            if !m.registered {
                *m = SinkModel {
                    registered: true,
                    cursor: model.next_seq,
                    ..SinkModel::default()
                };
            }
            assert_eq!(register(&log, SINKS[*sink]), m.cursor);
        }
        Op::Forget(sink) => {
            let m = &mut model.sinks[*sink];
            assert_eq!(w(log.forget(SINKS[*sink])), m.registered);
            *m = SinkModel::default();
        }
        Op::Reopen => return reopen(log, dir),
        Op::Checkpoint => w(log.checkpoint()),
        Op::Gc => {
            log.gc().expect("gc");
            let registered: Vec<&SinkModel> = model.sinks.iter().filter(|m| m.registered).collect();
            let horizon = registered
                .iter()
                .map(|m| m.cursor)
                .min()
                .unwrap_or(model.next_seq);
            let keep: BTreeSet<u64> = registered
                .iter()
                .flat_map(|m| m.dead.iter().chain(&m.requeued))
                .copied()
                .collect();
            model
                .events
                .retain(|seq, _| *seq >= horizon || keep.contains(seq));
        }
    }
    log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn behaves_like_the_in_memory_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Store::open(dir.path(), LogOptions { keep_settled: Duration::ZERO, ..options() })
            .expect("open");
        let mut model = Model::default();
        register(&log, SINKS[0]);
        model.sinks[0].registered = true;
        for op in &ops {
            log = apply(log, dir.path(), &mut model, op);
            check(&log, &model);
        }
    }
}

#[test]
fn a_sink_that_takes_some_entries_passes_the_others_and_counts_only_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    register(&log, "lane");
    append(&log, &["a", "b", "c", "d"]);
    let mine = |e: &LogEntry| e.change.transaction_id == "b" || e.change.transaction_id == "d";
    let status = log.status_where("lane", Some(&mine)).expect("status");
    assert_eq!(status.pending, 2, "only b and d wait for it");
    assert_eq!(log.status("lane").expect("status").pending, 4);

    // a passed, b delivered, c passed: the cursor is at d, nothing recorded for a and c.
    w(log.pass("lane", 0));
    settle(&log, "lane", 1, Settlement::Delivered);
    w(log.pass("lane", 2));
    assert_eq!(log.cursor_now("lane").expect("cursor"), 3);
    w(log.pass("lane", 0));
    assert_eq!(log.cursor_now("lane").expect("cursor"), 3);
    let listed = log.list_where("lane", None, 10, Some(&mine)).expect("list");
    let states: Vec<(String, String)> = listed
        .iter()
        .map(|i| (i.transaction_id.clone(), i.state.clone()))
        .collect();
    assert_eq!(
        states,
        [
            ("d".to_string(), "pending".to_string()),
            ("b".to_string(), "delivered".to_string())
        ]
    );
    assert_eq!(
        log.status_where("lane", Some(&mine))
            .expect("status")
            .pending,
        1
    );
}

#[test]
fn lanes_take_over_a_retired_sinks_cursor_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    register(&log, "speaker");
    append(&log, &["a", "b", "c"]);
    settle(&log, "speaker", 0, Settlement::Delivered);
    // The old sink stopped at 1: the first lanes start there.
    assert_eq!(log.handover_cursor("speaker").expect("handover"), Some(1));
    assert_eq!(w(log.register("speaker:A", Some(1))), 1);
    assert_eq!(
        w(log.register("speaker:A", Some(3))),
        1,
        "an existing cursor is kept"
    );
    w(log.retire("speaker"));
    let log = reopen(log, dir.path());
    assert_eq!(log.handover_cursor("speaker").expect("handover"), None);
    // Out of the registry: nothing waits for it, GC keeps nothing for it.
    assert!(matches!(
        log.status("speaker"),
        Err(LogError::NotRegistered(_))
    ));
    assert_eq!(log.known_sinks().expect("sinks"), ["speaker:A"]);
    assert_eq!(log.cursor_now("speaker:A").expect("cursor"), 1);
    // A sink that never existed has nothing to hand over.
    assert_eq!(log.handover_cursor("never").expect("handover"), None);
    // A start past the end is clamped to it.
    assert_eq!(w(log.register("speaker:B", Some(99))), 3);
}

/// An SD card that hangs in `fdatasync`: the commit waiting on it waits,
/// and nothing else does. The runtime here has one thread, so any disk call
/// made on it would hold up the timer and the read below for the whole
/// stall; `/healthz` and the other handlers share that position.
#[test]
fn a_stalled_fdatasync_holds_only_the_commits_waiting_on_it() {
    const STALL: Duration = Duration::from_millis(1500);
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = FaultyDisk::new();
    let log = Store::open_on(dir.path(), options(), disk.clone()).expect("open");
    append(&log, &["before"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        disk.stall_syncs(STALL);
        let started = std::time::Instant::now();
        let stalled = tokio::spawn(log.append_changes(vec![change("stalled")]));
        while disk.stalled_syncs() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The commit is on the disk. The runtime is free: a timer fires and
        // a read from the blocking pool comes back long before the stall ends.
        let free = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let read = log.read(0, 10).await.expect("read");
        assert_eq!(txids(&read), ["before"]);
        assert!(
            free.elapsed() < STALL / 3,
            "the runtime waited {:?} on a stalled sync",
            free.elapsed()
        );
        // Another connector's webhook arriving now waits for the commit on
        // the disk and then its own, nothing more.
        let other = std::time::Instant::now();
        let committed = log
            .append_changes(vec![change("other")])
            .await
            .expect("other");
        assert!(matches!(committed.appended[..], [Appended::New(_)]));
        assert!(
            other.elapsed() < STALL * 2 + STALL / 2,
            "another webhook waited {:?}, more than the stall in progress and its own",
            other.elapsed()
        );
        stalled.await.expect("join").expect("stalled commit");
        assert!(started.elapsed() >= STALL, "the stall was real");
    });
    disk.stall_syncs(Duration::ZERO);
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("events"))
        .expect("segments")
        .filter(|e| {
            e.as_ref()
                .expect("entry")
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

#[test]
fn collected_segments_go_and_a_dead_letter_in_one_outlives_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    register(&log, "pos");
    let ids: Vec<String> = (0..200).map(|i| format!("tx{i}")).collect();
    for chunk in ids.chunks(10) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        append(&log, &chunk);
    }
    let written = segment_files(dir.path());
    assert!(written > 3, "200 payments fill several 16 KiB segments");
    settle(
        &log,
        "pos",
        3,
        Settlement::Dead {
            reason: "no".into(),
        },
    );
    w(log.settle(
        "pos",
        (0..200).filter(|s| *s != 3).collect(),
        Settlement::Delivered,
    ));
    log.gc().expect("gc");
    w(log.checkpoint());
    assert!(
        segment_files(dir.path()) < written,
        "{} of {written} segments left",
        segment_files(dir.path())
    );
    assert!(
        log.shared.index().get(3).is_none(),
        "the dead letter moved out of its segment"
    );
    let log = reopen(log, dir.path());
    let left = log.read_now(0, 1000).expect("read");
    assert_eq!(txids(&left), ["tx3"], "only the dead letter is kept");
    assert_eq!(w(log.requeue("pos", Some(3))), 1);
    assert_eq!(txids(&w(log.requeued("pos", 10))), ["tx3"]);
    // The next payments go on with fresh numbers, in reused files.
    assert_eq!(append(&log, &["tx-new"]), [Appended::New(200)]);
    assert_eq!(
        append(&log, &["tx5"]),
        [Appended::Duplicate(5)],
        "dedupe outlives GC"
    );
}
