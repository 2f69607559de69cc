//! Durable append: the event log against the physical limit of the same disk
//! (plain `File` append + `fdatasync`), measured in one run.
//! Run: `cargo bench -p soundbox-gateway --bench log_append`
//!
//! Rows:
//! - raw: one 300-byte write + `sync_data` per event, one writer (the floor).
//! - sled+syncfs: sled `insert` + `flush` + `syncfs` per event, one writer,
//!   no group commit (what the log would cost without it).
//! - log x1: `Store::append` of one change at a time, awaited (one webhook at a time).
//! - log xN: N concurrent appenders (N webhooks in flight) sharing group commits.

mod common;

use std::fs::File;
use std::time::{Duration, Instant};

use common::quantile;

use soundbox_gateway::log::{LogOptions, Store};
use soundbox_gateway::model::BalanceChange;

const SEQUENTIAL: usize = 2_000;
const CONCURRENT_TOTAL: usize = 40_000;

struct Row {
    name: String,
    events_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn row(name: &str, mut samples: Vec<Duration>, elapsed: Duration) -> Row {
    samples.sort();
    Row {
        name: name.to_string(),
        events_per_sec: samples.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&samples, 0.50),
        p99: quantile(&samples, 0.99),
    }
}

fn change(i: usize) -> BalanceChange {
    BalanceChange {
        reference: Some(format!("MBVCB.{i}")),
        content: Some("CT DEN:0123456789 thanh toan don hang".into()),
        ..BalanceChange::example(&format!("bench-{i}"), 150_000)
    }
}

fn scratch() -> tempfile::TempDir {
    // Under target/: the same disk as a real data dir, not a tmpfs.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Times `op(i)` for each of `SEQUENTIAL` events, one after another.
fn sequential(name: &str, mut op: impl FnMut(usize)) -> Row {
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let started = Instant::now();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        op(i);
        samples.push(t.elapsed());
    }
    row(name, samples, started.elapsed())
}

fn raw_fdatasync() -> Row {
    let dir = scratch();
    let (samples, elapsed) = common::raw_fdatasync(dir.path(), 300, SEQUENTIAL);
    row("raw append + fdatasync", samples, elapsed)
}

/// sled `insert` + `flush` + one `sync` of the file at `target` (relative to
/// the scratch dir) per event: the log's write path without group commit.
fn sled_then(name: &str, target: &str, sync: fn(&File)) -> Row {
    let dir = scratch();
    let db = sled::Config::new()
        .path(dir.path().join("state"))
        .cache_capacity(8 << 20)
        .open()
        .expect("sled");
    let handle = File::open(dir.path().join(target)).expect("sync target");
    let record = vec![b'x'; 300];
    sequential(name, |i| {
        db.insert((i as u64).to_be_bytes(), record.as_slice())
            .expect("insert");
        db.flush().expect("flush");
        sync(&handle);
    })
}

fn log_options() -> LogOptions {
    LogOptions {
        min_free_disk_bytes: 0,
        ..LogOptions::default()
    }
}

fn log_sequential(rt: &tokio::runtime::Runtime) -> Row {
    let dir = scratch();
    let log = Store::open(dir.path(), log_options()).expect("log");
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..SEQUENTIAL {
            let t = Instant::now();
            log.append_changes(vec![change(i)]).await.expect("append");
            samples.push(t.elapsed());
        }
    });
    let elapsed = started.elapsed();
    log.close().expect("close");
    row("log append x1", samples, elapsed)
}

fn log_concurrent(rt: &tokio::runtime::Runtime, writers: usize) -> Row {
    let dir = scratch();
    let log = Store::open(dir.path(), log_options()).expect("log");
    let per_writer = CONCURRENT_TOTAL / writers;
    let started = Instant::now();
    let samples = rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let t = Instant::now();
                    log.append_changes(vec![change(w * per_writer + i)])
                        .await
                        .expect("append");
                    samples.push(t.elapsed());
                }
                samples
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer"));
        }
        all
    });
    let elapsed = started.elapsed();
    log.close().expect("close");
    row(&format!("log append x{writers}"), samples, elapsed)
}

fn main() {
    let rt = common::runtime("log append");
    let rows = vec![
        raw_fdatasync(),
        sled_then("sled insert+flush+syncfs", "", |dir| {
            rustix::fs::syncfs(dir).expect("syncfs")
        }),
        sled_then("sled insert+flush+fdatasync", "state/db", |db| {
            db.sync_data().expect("fdatasync")
        }),
        log_sequential(&rt),
        log_concurrent(&rt, 16),
        log_concurrent(&rt, 64),
    ];
    let floor = &rows[0];
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>12}",
        "durable append", "events/s", "p50 µs", "p99 µs", "p99 / raw"
    );
    for r in &rows {
        println!(
            "{:<28} {:>10.0} {:>10.0} {:>10.0} {:>11.2}x",
            r.name,
            r.events_per_sec,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() / floor.p99.as_secs_f64()
        );
    }
    let single = &rows[3];
    let best = rows[4..]
        .iter()
        .map(|r| r.events_per_sec)
        .fold(0.0, f64::max);
    println!();
    println!(
        "target: one append p99 <= 2x one fdatasync p99: {:.2}x ({})",
        single.p99.as_secs_f64() / floor.p99.as_secs_f64(),
        if single.p99 <= floor.p99 * 2 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "target: >= 5,000 events/s with group commit: {best:.0}/s ({}); {:.1}x the raw single-writer rate",
        if best >= 5_000.0 { "met" } else { "NOT met" },
        best / floor.events_per_sec
    );
}
