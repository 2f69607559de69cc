//! Startup to ready, and idle memory, of the real binary on the default
//! config (SePay webhook plugin, Speaker API simulator, embedded MQTT broker)
//! with a warm compiled-plugin cache. Each run starts the process, polls
//! `/readyz` until it answers 200, then stops it with SIGTERM. The baseline,
//! measured in the same run, is the same binary printing `--version`: what
//! starting any process of this size costs here.
//! Run: `cargo bench -p soundbox-gateway --bench startup` (after `make plugins`).

mod common;

use std::time::Duration;

use common::{default_config, median, ms, stop, time_to_ready, version_time};
use soundbox_e2e::rss_kib;

const RUNS: usize = 15;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, admin) = default_config(dir.path());

    // Warm the cache (and the page cache) once.
    let (cold, child) = time_to_ready(&config, &admin);
    std::thread::sleep(Duration::from_secs(2));
    let cold_rss = rss_kib(child.id());
    stop(child);

    let mut ready = Vec::new();
    let mut idle_rss = 0;
    for run in 0..RUNS {
        let (t, child) = time_to_ready(&config, &admin);
        ready.push(t);
        if run == RUNS - 1 {
            std::thread::sleep(Duration::from_secs(2));
            idle_rss = rss_kib(child.id());
        }
        stop(child);
    }
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        baseline.push(version_time());
    }
    let (ready_med, base_med) = (median(ready.clone()), median(baseline));
    let worst = ready.iter().max().copied().unwrap_or_default();
    println!("startup to /readyz 200, default config, warm plugin cache ({RUNS} runs)");
    println!("  first start (cold cache):  {:8.1} ms", ms(cold));
    println!(
        "  warm, median:              {:8.1} ms   (max {:.1} ms)",
        ms(ready_med),
        ms(worst)
    );
    println!("  baseline `--version`:      {:8.1} ms", ms(base_med));
    println!(
        "  ratio warm / baseline:     {:8.1}x",
        ready_med.as_secs_f64() / base_med.as_secs_f64()
    );
    println!(
        "  idle RSS 2 s after ready:  {:8.1} MiB   (after a cold start that compiled: {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        cold_rss as f64 / 1024.0
    );
}
