//! Startup to ready, and idle memory, of the real binary on the default
//! config (SePay webhook plugin, Speaker API simulator, embedded MQTT broker)
//! with a warm compiled-plugin cache. Each run starts the process, polls
//! `/readyz` until it answers 200, then stops it with SIGTERM. The baseline,
//! measured in the same run, is the same binary printing `--version`: what
//! starting any process of this size costs here.
//! Run: `cargo bench -p soundbox-gateway --bench startup` (after `make plugins`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 15;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status line of `GET path`, or None if nothing answers yet.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn config(dir: &Path) -> (PathBuf, String) {
    let plugin = workspace().join("plugins/target/wasm32-wasip2/release/sepay_webhook.wasm");
    assert!(plugin.is_file(), "build the plugins first: make plugins");
    let admin = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(workspace().join("config.toml"))
        .expect("config.toml")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8081", &admin)
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "plugins/target/wasm32-wasip2/release/sepay_webhook.wasm",
            &plugin.display().to_string(),
        );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    (path, admin)
}

fn start(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_soundbox-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("SOUNDBOX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Time from spawn to `/readyz` 200; the caller stops the child.
#[allow(clippy::zombie_processes)]
fn time_to_ready(config: &Path, admin: &str) -> (Duration, Child) {
    let started = Instant::now();
    let mut child = start(config);
    loop {
        if http_status(admin, "/readyz") == Some(200) {
            return (started.elapsed(), child);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway was not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, admin) = config(dir.path());

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
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_soundbox-gateway"))
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .expect("--version");
        assert!(status.success());
        baseline.push(started.elapsed());
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
