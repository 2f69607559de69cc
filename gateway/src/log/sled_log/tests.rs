use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::log::Appended;

fn change(txid: &str) -> BalanceChange {
    BalanceChange::example(txid, 150_000)
}

fn options() -> LogOptions {
    LogOptions {
        cache_bytes: 1 << 20,
        min_free_disk_bytes: 0,
        keep_settled: Duration::ZERO,
        ..LogOptions::default()
    }
}

fn open(dir: &Path) -> SledLog {
    SledLog::open(dir, options()).expect("open log")
}

/// Closes and opens again. sled releases its file lock when its last
/// background I/O thread lets go of the file, which can be a moment after
/// the handle is dropped, so a reopen in the same process waits for it.
fn reopen(log: SledLog, dir: &Path) -> SledLog {
    log.close().expect("close");
    drop(log);
    open_when_unlocked(dir, options())
}

fn open_when_unlocked(dir: &Path, options: LogOptions) -> SledLog {
    for _ in 0..200 {
        match SledLog::open(dir, options.clone()) {
            Err(LogError::Locked(_)) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.expect("reopen"),
        }
    }
    panic!("store still locked 2 s after close");
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn append(log: &SledLog, txids: &[&str]) -> Vec<Appended> {
    block(log.append(txids.iter().map(|t| change(t)).collect())).expect("append")
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
    assert_eq!(txids(&log.read(0, 10).expect("read")), ["a", "b", "c"]);
    assert_eq!(txids(&log.read(1, 1).expect("read")), ["b"]);
}

#[test]
fn unsettled_entries_survive_reopen_and_settled_ones_never_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert_eq!(log.cursor("pos").expect("cursor"), 0);
    append(&log, &["1", "2", "3"]);
    log.settle("pos", 0, &Settlement::Delivered)
        .expect("settle");
    log.settle(
        "pos",
        1,
        &Settlement::Dead {
            reason: "HTTP 400".into(),
        },
    )
    .expect("settle");
    let log = reopen(log, dir.path());
    let cursor = log.cursor("pos").expect("cursor");
    assert_eq!(cursor, 2);
    assert_eq!(txids(&log.read(cursor, 10).expect("read")), ["3"]);
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

/// A commit whose sync failed was still written: its entries and dedupe
/// keys are in the tree. The next commit must not reuse their sequence
/// numbers, or it overwrites them and the sender's retry is acknowledged as
/// a duplicate of a different payment.
#[test]
fn a_failed_sync_keeps_its_sequence_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    assert_eq!(append(&log, &["a"]), vec![Appended::New(0)]);
    log.inner.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(block(log.append(vec![change("b")])).is_err());
    let c = append(&log, &["c"]);
    let retry = append(&log, &["b"]);
    let (Appended::New(c_seq), Appended::Duplicate(b_seq)) = (c[0], retry[0]) else {
        panic!("c: {c:?}, retry of b: {retry:?}");
    };
    assert_ne!(c_seq, b_seq);
    let b = log.entry(b_seq).expect("read").expect("b is there");
    assert_eq!(b.change.transaction_id, "b");
    assert_eq!(txids(&log.read(0, 10).expect("read")), ["a", "b", "c"]);
}

#[test]
fn a_new_sink_starts_at_the_end_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1", "2"]);
    assert_eq!(log.cursor("late").expect("cursor"), 2);
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
                log.append(vec![change(&i.to_string())]).await
            }));
        }
        let mut seqs = Vec::new();
        for task in tasks {
            match task.await.expect("join").expect("append").as_slice() {
                [Appended::New(seq)] => seqs.push(*seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        seqs
    });
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct, (0..200).collect());
    assert_eq!(log.read(0, 1000).expect("read").len(), 200);
}

#[test]
fn dead_letters_can_be_requeued_and_then_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    log.cursor("pos").expect("cursor");
    append(&log, &["1", "2"]);
    log.settle(
        "pos",
        0,
        &Settlement::Dead {
            reason: "HTTP 422".into(),
        },
    )
    .expect("settle");
    log.settle("pos", 1, &Settlement::Delivered)
        .expect("settle");
    let dead = log.list("pos", Some("dead"), 10).expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("HTTP 422"));
    assert_eq!(log.requeue("pos", Some(1)).expect("requeue"), 0, "not dead");
    assert_eq!(log.requeue("pos", None).expect("requeue"), 1);
    assert_eq!(txids(&log.requeued("pos", 10).expect("requeued")), ["1"]);
    assert_eq!(log.status("pos").expect("status").pending, 1);
    log.settle("pos", 0, &Settlement::Delivered)
        .expect("settle");
    assert!(log.requeued("pos", 10).expect("requeued").is_empty());
    let status = log.status("pos").expect("status");
    assert_eq!(
        (status.pending, status.dead_letters, status.cursor),
        (0, 0, 2)
    );
}

#[test]
fn gc_removes_only_what_every_sink_settled_and_keeps_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SledLog::open(
        dir.path(),
        LogOptions {
            keep_settled: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    let sinks = vec!["a".to_string(), "b".to_string()];
    for s in &sinks {
        log.cursor(s).expect("cursor");
    }
    append(&log, &["1", "2", "3", "4"]);
    for seq in 0..3 {
        log.settle("a", seq, &Settlement::Delivered)
            .expect("settle");
    }
    log.settle("b", 0, &Settlement::Delivered).expect("settle");
    log.settle(
        "b",
        1,
        &Settlement::Dead {
            reason: "no".into(),
        },
    )
    .expect("settle");
    let report = log.gc(&sinks).expect("gc");
    assert_eq!(report.events_removed, 1);
    assert_eq!(txids(&log.read(0, 10).expect("read")), ["2", "3", "4"]);
    // Still a duplicate after GC: the dedupe window is separate.
    assert_eq!(append(&log, &["1"]), [Appended::Duplicate(0)]);
}

#[test]
fn dedupe_keys_older_than_retention_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SledLog::open(
        dir.path(),
        LogOptions {
            dedupe_retention: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    append(&log, &["1"]);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(log.gc(&[]).expect("gc").dedupe_removed, 1);
    assert_eq!(append(&log, &["1"]), [Appended::New(1)]);
}

#[test]
fn sequence_numbers_never_repeat_after_everything_was_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SledLog::open(
        dir.path(),
        LogOptions {
            keep_settled: Duration::ZERO,
            ..options()
        },
    )
    .expect("open");
    append(&log, &["1", "2"]);
    assert_eq!(log.gc(&[]).expect("gc").events_removed, 2);
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
    let err = block(full.append(vec![change("2")])).expect_err("full");
    assert!(matches!(err, LogError::Full(_)), "{err}");
    assert_eq!(txids(&full.read(0, 10).expect("read")), ["1"]);
}

#[test]
fn a_second_process_on_the_same_store_is_refused_not_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    append(&log, &["1"]);
    // flock is per open file description, so this process's second open
    // conflicts exactly like another process would.
    let err = SledLog::open(dir.path(), options()).expect_err("locked");
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
    let mut damaged = log
        .inner
        .events
        .get(1u64.to_be_bytes())
        .expect("get")
        .expect("some")
        .to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x20;
    log.inner
        .events
        .insert(1u64.to_be_bytes(), damaged)
        .expect("insert");
    let log = reopen(log, dir.path());
    // Found when read (a sink reaching it, `queue list`), not by a scan at open.
    assert_eq!(txids(&log.read(0, 10).expect("read")), ["1", "3"]);
    assert_eq!(log.health().quarantined, 1);
    assert!(log.health().is_degraded());
    assert_eq!(txids(&log.read(0, 10).expect("read")), ["1", "3"]);
    assert_eq!(log.health().quarantined, 1, "reported once");
    assert_eq!(log.inner.quarantine.len(), 1);
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
        match SledLog::open_as_is(dir.path(), options()) {
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
    assert_eq!(names, ["state"], "nothing moved aside or created");
}

// ---- model-based property test -------------------------------------------------

/// What the log must behave like, kept in memory.
#[derive(Debug, Default)]
struct Model {
    /// seq → transaction id, for entries not collected.
    events: BTreeMap<u64, String>,
    dedupe: HashMap<String, u64>,
    next_seq: u64,
    cursors: [u64; 2],
    dead: [BTreeSet<u64>; 2],
    requeued: [BTreeSet<u64>; 2],
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Settle { sink: usize, n: usize, dead: bool },
    Requeue(usize),
    RetryRequeued(usize),
    Reopen,
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..24, 1..5).prop_map(Op::Append),
        3 => (0usize..2, 1usize..4, proptest::bool::weighted(0.2))
            .prop_map(|(sink, n, dead)| Op::Settle { sink, n, dead }),
        1 => (0usize..2).prop_map(Op::Requeue),
        1 => (0usize..2).prop_map(Op::RetryRequeued),
        1 => Just(Op::Reopen),
        1 => Just(Op::Gc),
    ]
}

const SINKS: [&str; 2] = ["speaker", "mqtt"];

fn check(log: &SledLog, model: &Model) {
    let all = log.read(0, 10_000).expect("read");
    let got: BTreeMap<u64, String> = all
        .iter()
        .map(|e| (e.seq, e.change.transaction_id.clone()))
        .collect();
    assert_eq!(got, model.events, "log contents");
    for (i, sink) in SINKS.iter().enumerate() {
        assert_eq!(
            log.cursor(sink).expect("cursor"),
            model.cursors[i],
            "{sink} cursor"
        );
        let requeued: BTreeSet<u64> = log
            .requeued(sink, 10_000)
            .expect("requeued")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(requeued, model.requeued[i], "{sink} requeued");
        let status = log.status(sink).expect("status");
        assert_eq!(
            status.dead_letters,
            model.dead[i].len() as u64,
            "{sink} dead"
        );
        let pending = model.events.range(model.cursors[i]..).count() + model.requeued[i].len();
        assert_eq!(status.pending, pending as u64, "{sink} pending");
    }
}

fn apply(log: SledLog, dir: &Path, model: &mut Model, op: &Op) -> SledLog {
    match op {
        Op::Append(ids) => {
            let ids: Vec<String> = ids.iter().map(|i| format!("tx{i}")).collect();
            let got = block(log.append(ids.iter().map(|t| change(t)).collect())).expect("append");
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
        Op::Settle { sink, n, dead } => {
            let name = SINKS[*sink];
            let batch = log.read(model.cursors[*sink], *n).expect("read");
            let expected: Vec<u64> = model
                .events
                .range(model.cursors[*sink]..)
                .take(*n)
                .map(|(s, _)| *s)
                .collect();
            assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
            for entry in batch {
                let settlement = if *dead {
                    model.dead[*sink].insert(entry.seq);
                    Settlement::Dead {
                        reason: "test".into(),
                    }
                } else {
                    Settlement::Delivered
                };
                log.settle(name, entry.seq, &settlement).expect("settle");
                model.cursors[*sink] = entry.seq + 1;
            }
        }
        Op::Requeue(sink) => {
            let n = log.requeue(SINKS[*sink], None).expect("requeue");
            assert_eq!(n, model.dead[*sink].len());
            let dead = std::mem::take(&mut model.dead[*sink]);
            model.requeued[*sink].extend(dead);
        }
        Op::RetryRequeued(sink) => {
            for entry in log.requeued(SINKS[*sink], 10_000).expect("requeued") {
                log.settle(SINKS[*sink], entry.seq, &Settlement::Delivered)
                    .expect("settle");
            }
            model.requeued[*sink].clear();
        }
        Op::Reopen => return reopen(log, dir),
        Op::Gc => {
            let sinks: Vec<String> = SINKS.iter().map(|s| s.to_string()).collect();
            log.gc(&sinks).expect("gc");
            let horizon = model.cursors[0].min(model.cursors[1]);
            let keep: BTreeSet<u64> = model
                .dead
                .iter()
                .chain(&model.requeued)
                .flatten()
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
        let mut log = SledLog::open(dir.path(), LogOptions { keep_settled: Duration::ZERO, ..options() })
            .expect("open");
        let mut model = Model::default();
        for sink in SINKS {
            log.cursor(sink).expect("cursor");
        }
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
    log.cursor("lane").expect("cursor");
    append(&log, &["a", "b", "c", "d"]);
    let mine = |e: &LogEntry| e.change.transaction_id == "b" || e.change.transaction_id == "d";
    let status = log.status_where("lane", Some(&mine)).expect("status");
    assert_eq!(status.pending, 2, "only b and d wait for it");
    assert_eq!(log.status("lane").expect("status").pending, 4);

    // a passed, b delivered, c passed: the cursor is at d, nothing recorded for a and c.
    log.pass("lane", 0).expect("pass");
    log.settle("lane", 1, &Settlement::Delivered)
        .expect("settle");
    log.pass("lane", 2).expect("pass");
    assert_eq!(log.cursor("lane").expect("cursor"), 3);
    log.pass("lane", 0)
        .expect("a pass never moves a cursor back");
    assert_eq!(log.cursor("lane").expect("cursor"), 3);
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
    log.cursor("speaker").expect("cursor");
    append(&log, &["a", "b", "c"]);
    log.settle("speaker", 0, &Settlement::Delivered)
        .expect("settle");
    // The old sink stopped at 1: the first lanes start there.
    assert_eq!(log.handover_cursor("speaker").expect("handover"), Some(1));
    assert_eq!(log.register_at("speaker:A", 1).expect("register"), 1);
    assert_eq!(
        log.register_at("speaker:A", 3).expect("register"),
        1,
        "an existing cursor is kept"
    );
    log.retire("speaker").expect("retire");
    let log = reopen(log, dir.path());
    assert_eq!(log.handover_cursor("speaker").expect("handover"), None);
    let retired = log.status("speaker").expect("status");
    assert_eq!(retired.pending, 0, "a retired sink waits for nothing");
    assert_eq!(log.cursor("speaker:A").expect("cursor"), 1);
    // A sink that never existed has nothing to hand over.
    assert_eq!(log.handover_cursor("never").expect("handover"), None);
    // A start past the end is clamped to it.
    assert_eq!(log.register_at("speaker:B", 99).expect("register"), 3);
}
