//! Memory while a large backlog drains: 100,000 pending payments are written
//! to a store, then a fresh process opens it and delivers all of them to a
//! sink that accepts instantly. Peak RSS of that process is compared with
//! the same process on an empty store (the baseline), measured in one run.
//! Goal: peak RSS with 100,000 queued within 10 MiB of the empty store's,
//! at the same drain rate or better (the rate is printed; the empty store
//! has nothing to drain, so compare it with earlier runs).
//! Run: `cargo bench -p soundbox-gateway --bench backlog`

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use soundbox_gateway::log::{EventLog, LogEntry, LogOptions, Store};
use soundbox_gateway::model::BalanceChange;
use soundbox_gateway::sinks::{Shutdown, Sink, SinkError, SinkStats, run_sink};
use tokio_util::sync::CancellationToken;

const BACKLOG: usize = 100_000;

struct Accept;

impl Sink for Accept {
    fn name(&self) -> &str {
        "pos"
    }

    async fn deliver(&self, _entry: &LogEntry) -> Result<(), SinkError> {
        Ok(())
    }
}

fn options() -> LogOptions {
    LogOptions {
        min_free_disk_bytes: 0,
        ..LogOptions::default()
    }
}

fn change(i: usize) -> BalanceChange {
    BalanceChange {
        reference: Some(format!("MBVCB.{i}")),
        content: Some("CT DEN:0123456789 thanh toan don hang".into()),
        ..BalanceChange::example(&format!("backlog-{i}"), 150_000)
    }
}

/// Child process: open the store, drain it, print
/// `pending peak_kib_after_open peak_kib secs`.
fn drain(dir: &Path) {
    let rt = common::runtime("drain");
    let log = Store::open(dir, options()).expect("open");
    let after_open = soundbox_e2e::status_kib(std::process::id(), "VmHWM:");
    let pending = log.status("pos").expect("status").pending;
    let started = Instant::now();
    let stop = CancellationToken::new();
    let shared: Arc<dyn EventLog> = Arc::new(log.clone());
    let worker = rt.spawn(run_sink(
        Arc::new(Accept),
        shared,
        Arc::new(SinkStats::default()),
        Shutdown {
            stop: stop.clone(),
            grace: Duration::from_secs(1),
        },
    ));
    rt.block_on(async {
        while log.cursor_now("pos").expect("cursor") < pending {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    rt.block_on(worker).expect("worker");
    log.close().expect("close");
    println!(
        "{pending} {after_open} {} {secs:.2}",
        soundbox_e2e::status_kib(std::process::id(), "VmHWM:")
    );
}

fn run_child(dir: &Path) -> (u64, u64, u64, f64) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("--drain")
        .arg(dir)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let mut next = || parts.next().expect("child output").to_string();
    (
        next().parse().expect("n"),
        next().parse().expect("kib"),
        next().parse().expect("kib"),
        next().parse().expect("secs"),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--drain") {
        drain(Path::new(&args[i + 1]));
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio");
    let empty = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let full = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    for dir in [empty.path(), full.path()] {
        let log = Store::open(dir, options()).expect("open");
        rt.block_on(log.register("pos", None)).expect("register");
        log.close().expect("close");
    }
    let log = Store::open(full.path(), options()).expect("open");
    rt.block_on(async {
        for start in (0..BACKLOG).step_by(500) {
            log.append_changes((start..start + 500).map(change).collect())
                .await
                .expect("append");
        }
    });
    log.close().expect("close");
    drop(log);
    // sled's files and the event log's segments.
    let on_disk: u64 =
        walk_size(&full.path().join("state")) + walk_size(&full.path().join("events"));

    let (_, _, base_kib, _) = run_child(empty.path());
    let (n, open_kib, peak_kib, secs) = run_child(full.path());
    assert_eq!(n as usize, BACKLOG);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let over_mib = mib(peak_kib) - mib(base_kib);
    println!(
        "backlog drain: {BACKLOG} pending payments, store {} MiB on disk",
        on_disk >> 20
    );
    println!(
        "  peak RSS, empty store (baseline): {:>7.1} MiB ({base_kib} KiB)",
        mib(base_kib)
    );
    println!(
        "  peak RSS, draining {BACKLOG}:        {:>7.1} MiB ({peak_kib} KiB; {:.2}x baseline, {over_mib:+.1} MiB)",
        mib(peak_kib),
        peak_kib as f64 / base_kib as f64,
    );
    println!(
        "  peak RSS right after opening the full store: {:.1} MiB",
        mib(open_kib)
    );
    println!(
        "  drained in {secs:.1} s: {:.0} payments/s through the sink worker (the empty store: nothing to drain)",
        BACKLOG as f64 / secs
    );
    println!("goals:");
    common::goal(
        &format!("peak RSS draining {BACKLOG} over the empty store's"),
        over_mib,
        10.0,
        "MiB",
        false,
    );
}

fn walk_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
