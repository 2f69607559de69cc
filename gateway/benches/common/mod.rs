//! Helpers the benches share (`mod common;` in each): a tiny HTTP status
//! getter, disk writes of a process, percentiles, goal verdicts, the raw
//! `fdatasync` floor, the plugin-call measurement and the startup
//! measurement. Paths, ports and the processes of the end-to-end bench are
//! the e2e harness's (`soundbox_e2e`). Not a bench itself: a subdirectory
//! is not auto-discovered.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sepay_webhook::SepayConnector;
use soundbox_gateway::config::{ConnectorConfig, PluginLimits};
use soundbox_gateway::connectors::{IncomingRequest, Plugin, Runtime};
use soundbox_plugin_sdk::testing::TestHost;
use soundbox_plugin_sdk::{HttpRequest, WebhookConnector};

use soundbox_e2e::{free_port, plugin, workspace};

/// The whole response to `GET path` (`Connection: close`), or None if
/// nothing answers.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        // The admin server answers only its own address as Host (DNS rebinding).
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The status of `GET path`, or None if nothing answers yet.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    http_get(addr, path)?.get(9..12)?.parse().ok()
}

/// The body of `GET path` (the admin server's `/metrics`, say), or None if
/// nothing answers.
pub fn http_body(addr: &str, path: &str) -> Option<String> {
    let response = http_get(addr, path)?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// The cumulative buckets `(le, count)` of Prometheus histogram `name` in
/// the exposition `text`, for the series whose labels include each of
/// `labels` (`connector="sepay"`, say), in the order exposed (ascending).
pub fn histogram_buckets(text: &str, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = line.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// The `q` quantile (0.0–1.0) of what a histogram observed between two
/// scrapes of [`histogram_buckets`], interpolated linearly inside its
/// bucket as Prometheus's `histogram_quantile` does: exact to a bucket's
/// width. None if nothing was observed or it fell in the `+Inf` bucket.
pub fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<Duration> {
    // Each bucket's count between the scrapes (a series absent before counted 0).
    let observed: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, count)| {
            let earlier = before.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
            (le, count - earlier)
        })
        .collect();
    let total = observed.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in observed {
        if count >= rank {
            if le.is_infinite() {
                return None;
            }
            let within = (rank - below) / (count - below).max(f64::MIN_POSITIVE);
            return Some(Duration::from_secs_f64(lower + (le - lower) * within));
        }
        (lower, below) = (le, count);
    }
    None
}

/// A multi-threaded tokio runtime with two workers (the load generator, a
/// baseline server); `what` names it if it cannot be built.
pub fn runtime(what: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{what} runtime: {e}"))
}

/// Bytes process `pid` has caused to be written to storage so far: the
/// `write_bytes` of `/proc/<pid>/io`, counted as it dirties page-cache pages
/// (4 KiB each, again each time a page synced clean is written to). 0 once
/// the process is gone.
pub fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// p50, p99 and mean of a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

/// The `q` quantile (0.0–1.0) of sorted `samples` (nearest rank below).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

pub fn stats(mut samples: Vec<Duration>) -> Stats {
    if samples.is_empty() {
        return Stats::default();
    }
    samples.sort();
    let total: Duration = samples.iter().sum();
    Stats {
        p50: quantile(&samples, 0.50),
        p99: quantile(&samples, 0.99),
        mean: total / samples.len() as u32,
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A goal's verdict line: `value` against `limit`, lower is better unless
/// `at_least`.
pub fn goal(name: &str, value: f64, limit: f64, unit: &str, at_least: bool) -> bool {
    let met = if at_least {
        value >= limit
    } else {
        value <= limit
    };
    let by = if at_least {
        format!("{:.2}x the floor", value / limit)
    } else {
        format!("{:.0}% of the limit", value / limit * 100.0)
    };
    println!(
        "  [{}] {name}: {value:.2} {unit} (limit {} {limit} {unit}; {by})",
        if met { " met  " } else { "NOT met" },
        if at_least { ">=" } else { "<=" },
    );
    met
}

/// The physical limit of durable appends on the disk holding `dir`: `count`
/// records of `record_bytes`, each a plain append + `fdatasync`, one writer.
/// Returns each append's time and the total.
pub fn raw_fdatasync(dir: &Path, record_bytes: usize, count: usize) -> (Vec<Duration>, Duration) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .expect("open the raw file");
    let record = vec![b'x'; record_bytes];
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    (samples, started.elapsed())
}

/// The bench's SePay webhook body, exactly `len` bytes (the sample payload
/// with its description padded).
pub fn sepay_body(len: usize) -> Vec<u8> {
    let sample = include_str!("../../../examples/payloads/sepay-webhook.json");
    let mut json: serde_json::Value = serde_json::from_str(sample).expect("sample");
    let base = serde_json::to_vec(&json).expect("json").len();
    json["description"] = serde_json::Value::String("x".repeat(len - base));
    let body = serde_json::to_vec(&json).expect("json");
    assert_eq!(body.len(), len);
    body
}

/// One `handle` call of the SePay plugin (api-key auth, a fresh instance per
/// call, through the runtime) and the same parsing compiled natively, on the
/// same `body`: `wasm_calls` and `native_calls` timed calls after a warm-up.
pub fn plugin_call_samples(
    body: &[u8],
    wasm_calls: usize,
    native_calls: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let rt = runtime("plugin call");
    let scratch = tempfile::tempdir().expect("tempdir");
    let store = soundbox_gateway::log::Store::open(
        scratch.path(),
        soundbox_gateway::log::LogOptions {
            min_free_disk_bytes: 0,
            ..Default::default()
        },
    )
    .expect("store");
    let mut settings = toml::Table::new();
    settings.insert("api_key".into(), "k".into());
    let config = ConnectorConfig::ad_hoc(plugin("sepay_webhook"), settings);
    let runtime = Arc::new(Runtime::new(PluginLimits::default(), None).expect("runtime"));
    let plugin = rt
        .block_on(Plugin::load(
            runtime,
            &config,
            &soundbox_gateway::config::PluginTrustConfig::run_any(),
            &store,
        ))
        .expect("load plugin");
    let request = IncomingRequest {
        method: "POST".into(),
        path: "/hooks/test".into(),
        query: String::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Apikey k".into()),
        ],
        body: body.to_vec(),
    };

    let wasm = rt.block_on(async {
        for _ in 0..200 {
            plugin.handle(request.clone()).await.expect("warm-up call");
        }
        let mut samples = Vec::with_capacity(wasm_calls);
        for _ in 0..wasm_calls {
            let req = request.clone();
            let t = Instant::now();
            let result = plugin.handle(req).await.expect("call");
            samples.push(t.elapsed());
            assert_eq!(result.changes.len(), 1);
        }
        samples
    });

    let host = TestHost::new().config("api_key", "k");
    let native_request =
        HttpRequest::post_json(body.to_vec()).with_header("Authorization", "Apikey k");
    let native = host.run(|| {
        for _ in 0..1000 {
            SepayConnector::handle(native_request.clone()).expect("warm-up");
        }
        let mut samples = Vec::with_capacity(native_calls);
        for _ in 0..native_calls {
            let req = native_request.clone();
            let t = Instant::now();
            let outcome = SepayConnector::handle(req).expect("native call");
            samples.push(t.elapsed());
            assert_eq!(outcome.changes.len(), 1);
        }
        samples
    });
    (wasm, native)
}

/// The default `config.toml` in `dir` on free ports with the absolute plugin
/// path; returns its path and the admin address.
pub fn default_config(dir: &Path) -> (PathBuf, String) {
    let plugin = plugin("sepay_webhook");
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

/// `soundbox-gateway run --config <config>` (the release binary), logging
/// warnings only, to nowhere.
pub fn start_gateway(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_soundbox-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("SOUNDBOX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway")
}

/// SIGTERM (a clean stop), then wait.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Polls `GET /readyz` on `admin` until 200; false after `limit`.
pub fn wait_ready(admin: &str, started: Instant, limit: Duration) -> bool {
    loop {
        if http_status(admin, "/readyz") == Some(200) {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Time from spawn to `/readyz` 200; the caller stops the child.
#[allow(clippy::zombie_processes)]
pub fn time_to_ready(config: &Path, admin: &str) -> (Duration, Child) {
    let started = Instant::now();
    let mut child = start_gateway(config);
    if wait_ready(admin, started, Duration::from_secs(60)) {
        return (started.elapsed(), child);
    }
    // Exited (a port taken since it was picked, say) or hung?
    let exited = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "the gateway was not ready within 60 s ({}); run it on {} to see why",
        exited.map_or("still running".to_string(), |s| format!("it exited: {s}")),
        config.display()
    );
}

/// Time of `soundbox-gateway --version`: what starting any process of this
/// size costs here (the startup baseline).
pub fn version_time() -> Duration {
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_soundbox-gateway"))
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .expect("--version");
    assert!(status.success());
    started.elapsed()
}
