//! Harness for end-to-end tests: starts the real `soundbox-gateway` binary on
//! port 0 in a temp dir with real plugins, and talks to it over loopback.
//!
//! The binary and the plugins must be built first; `make test` does both.

pub mod mqtt;
pub mod nats;
pub mod sepay_api;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The gateway binary under test (`SOUNDBOX_BIN` overrides).
pub fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOUNDBOX_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("debug").join("soundbox-gateway");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p soundbox-gateway` (make test does)",
        bin.display()
    );
    bin
}

/// A built plugin or fixture, by crate name with underscores (`sepay_webhook`).
pub fn plugin(name: &str) -> PathBuf {
    let path = workspace()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make plugins` (make test does)",
        path.display()
    );
    path
}

/// A loopback port free right now, picked below Linux's ephemeral range
/// (32768 and up): a gateway restarted on the same ports must not find one
/// taken by another test's outgoing connection, which the OS numbers from
/// that range. Two tests picking the same port at once is rarer still.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// Whether the long chaos variants run (`SOUNDBOX_CHAOS_LONG=1`): more
/// cycles, longer outages, more payments. CI runs the short ones.
pub fn chaos_long() -> bool {
    std::env::var("SOUNDBOX_CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` under `SOUNDBOX_CHAOS_LONG=1`.
pub fn chaos_size<T>(short: T, long: T) -> T {
    if chaos_long() { long } else { short }
}

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: String,
    /// The admin API (`queue` commands while running).
    pub admin_addr: String,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    /// Extra environment of the process (secrets for `${ENV}`, log level).
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts `soundbox-gateway run` with `config` (its `[gateway]` table is
    /// written here: fixed free ports, so a restart keeps the addresses) and
    /// waits until ingress listens.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_gateway_keys(config, "")
    }

    /// Like [`Gateway::start`], with extra `[gateway]` keys.
    pub fn start_with_gateway_keys(config: &str, gateway_keys: &str) -> Gateway {
        Self::start_wrapped(config, gateway_keys, &[])
    }

    /// Like [`Gateway::start`], run under `wrapper` (e.g. `strace -f -o FILE`).
    pub fn start_wrapped(config: &str, gateway_keys: &str, wrapper: &[&str]) -> Gateway {
        Self::start_full(config, gateway_keys, wrapper, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_full(config, "", &[], env)
    }

    /// Like [`Gateway::start_with_env`], with `setup` run on the gateway's
    /// directory before the process starts (e.g. to mount a filesystem on
    /// `data/`, its data dir).
    pub fn start_with_setup(
        config: &str,
        env: &[(&str, &str)],
        setup: impl FnOnce(&Path),
    ) -> Gateway {
        Self::start_inner(config, "", &[], env, setup)
    }

    fn start_full(
        config: &str,
        gateway_keys: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        Self::start_inner(config, gateway_keys, wrapper, env, |_| {})
    }

    fn start_inner(
        config: &str,
        gateway_keys: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        setup: impl FnOnce(&Path),
    ) -> Gateway {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_addr = format!("127.0.0.1:{}", free_port());
        // The sample payloads are from 2023-2024, older than the default
        // dedupe window, and the gateway refuses payments that old (its
        // stale rule, tested with the default window in `stale.rs`). A test
        // that does not set `[log]` itself gets a ten-year window, so the
        // samples still reach what it tests.
        let log = if config.contains("[log]") || gateway_keys.contains("[log]") {
            ""
        } else {
            "\n[log]\ndedupe_retention_days = 3650\n"
        };
        // The plugins built from `plugins/` are unsigned: they run as on a
        // developer's machine, unless the test says whose plugins run
        // (signed_plugins.rs).
        let plugins = if config.contains("[plugins]") {
            ""
        } else {
            "[plugins]\nunsigned = \"allowed for local development\"\n\n"
        };
        // `id = "e2e"` unless the test names the gateway itself.
        let id = if gateway_keys
            .lines()
            .any(|l| l.trim_start().starts_with("id "))
        {
            ""
        } else {
            "id = \"e2e\"\n"
        };
        let config = format!(
            "[gateway]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"{admin_addr}\"\ndata_dir = \"data\"\n{id}{gateway_keys}\n{plugins}{config}{log}",
            free_port()
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        setup(dir.path());
        let (child, addr, logs) = spawn_wrapped(&dir.path().join("config.toml"), wrapper, &env);
        Gateway {
            child,
            addr,
            admin_addr,
            dir,
            logs,
            env,
        }
    }

    /// The process started: the gateway, or its wrapper.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// SIGKILLs the process (no shutdown code runs), then starts it again on
    /// the same config and data dir.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr, logs) = spawn(&self.config_path(), &self.env);
        self.child = child;
        self.addr = addr;
        self.logs = logs;
    }

    /// SIGKILLs the process and leaves it dead.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops with SIGTERM (a clean shutdown) and leaves it stopped.
    pub fn shut_down(&mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// Starts the stopped (or killed) process again on the same config and
    /// data dir.
    pub fn start_again(&mut self) {
        let (child, addr, logs) = spawn(&self.config_path(), &self.env);
        self.child = child;
        self.addr = addr;
        self.logs = logs;
    }

    /// Stops with SIGTERM, then starts again on the same config and data dir.
    pub fn restart(&mut self) -> std::process::ExitStatus {
        let status = self.terminate();
        let (child, addr, logs) = spawn(&self.dir.path().join("config.toml"), &self.env);
        self.child = child;
        self.addr = addr;
        self.logs = logs;
        status
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The control API of the in-process Speaker API simulator
    /// (`[speaker] simulator = true`), served on the admin listener.
    pub fn simulator(&self) -> SimControl {
        SimControl::new(&format!("http://{}/speaker-sim", self.admin_addr))
    }

    /// Every log line so far (JSON, one per line).
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns the binary on `config`, collects its JSON log lines and waits for
/// the line that says where ingress listens.
fn spawn(config: &Path, env: &[(String, String)]) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    spawn_wrapped(config, &[], env)
}

fn spawn_wrapped(
    config: &Path,
    wrapper: &[&str],
    env: &[(String, String)],
) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(gateway_bin());
            c
        }
        None => Command::new(gateway_bin()),
    };
    let mut child = command
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("SOUNDBOX_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["fields"]["message"] == "webhook ingress listening"
            {
                let addr = json["fields"]["addr"].as_str().unwrap_or_default();
                let _ = tx.send(addr.to_string());
            }
            sink.lock().expect("log lock").push(line);
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(addr) => (child, addr, logs),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "gateway did not start; log:\n{}",
                logs.lock().expect("log lock").join("\n")
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone Speaker API simulator (`speaker-sim` of the real binary)
/// with one paired speaker, `VNS-SHOP-1` unless told otherwise: the part a
/// test can take down, and that survives the gateway's kills. Killed on drop.
pub struct SpeakerApi {
    pub port: u16,
    child: Child,
}

impl SpeakerApi {
    /// Starts it on `port` (fixed, so a restart keeps the address), with the
    /// simulator's default credentials unless `client_secret` is given.
    pub fn start(port: u16, client_secret: Option<&str>) -> SpeakerApi {
        let secret: Vec<&str> = client_secret
            .map(|secret| vec!["--client-secret", secret])
            .unwrap_or_default();
        Self::spawn(port, &["VNS-SHOP-1:paired"], &secret)
    }

    /// Like [`SpeakerApi::start`], answering calls beyond `max_calls_per_sec`
    /// with 429 and `Retry-After`, as a rate-limited API does.
    pub fn start_rate_limited(port: u16, max_calls_per_sec: u32) -> SpeakerApi {
        Self::spawn(
            port,
            &["VNS-SHOP-1:paired"],
            &["--max-calls-per-sec", &max_calls_per_sec.to_string()],
        )
    }

    /// Starts it on `port` with `devices` (`HWID:paired[:offline]`, as
    /// `speaker-sim --device` takes them) and extra `speaker-sim` flags
    /// (`--error-style http4xx`, `--play-ms 200`).
    pub fn start_with(port: u16, devices: &[&str], args: &[&str]) -> SpeakerApi {
        Self::spawn(port, devices, args)
    }

    fn spawn(port: u16, devices: &[&str], args: &[&str]) -> SpeakerApi {
        let child = Command::new(gateway_bin())
            .args(["speaker-sim", "--listen", &format!("127.0.0.1:{port}")])
            .args(devices.iter().flat_map(|d| ["--device", d]))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("speaker-sim");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "speaker-sim did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        SpeakerApi { port, child }
    }

    /// Its control API (`/_sim`).
    pub fn control(&self) -> SimControl {
        SimControl::new(&format!("http://127.0.0.1:{}", self.port))
    }

    /// The simulator's counters: `calls`, `plays`, `tokens_issued`, `rate_limited`.
    pub async fn stats(&self) -> serde_json::Value {
        self.control().stats().await
    }

    /// Every announcement played, in order: `hardware_id`, `request_id`, `amount`, `words`.
    pub async fn plays(&self) -> Vec<serde_json::Value> {
        self.control().plays().await
    }

    /// `[speaker]` keys that point the gateway at it.
    pub fn speaker_keys(&self) -> String {
        format!(
            "base_url = \"http://127.0.0.1:{}/devices/v1\"\nclient_id = \"sim-client\"\n",
            self.port
        )
    }

    /// Takes the API down (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpeakerApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control API of a Speaker API simulator (`/_sim/...`): standalone
/// ([`SpeakerApi::control`]) or in process ([`Gateway::simulator`]).
#[derive(Debug, Clone)]
pub struct SimControl {
    /// Where `/_sim` and `/devices/v1` are, without a trailing `/`.
    pub base: String,
    client: reqwest::Client,
}

impl SimControl {
    pub fn new(base: &str) -> SimControl {
        SimControl {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}/_sim/{path}", self.base))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("simulator control API GET {path}: {e}"))
            .json()
            .await
            .expect("simulator JSON")
    }

    async fn put(&self, path: &str, body: &serde_json::Value) {
        self.client
            .put(format!("{}/_sim/{path}", self.base))
            .json(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("simulator control API PUT {path}: {e}"));
    }

    /// Every announcement played, in order: `hardware_id`, `request_id`, `amount`, `words`.
    pub async fn plays(&self) -> Vec<serde_json::Value> {
        match self.get("plays").await {
            serde_json::Value::Array(plays) => plays,
            other => panic!("plays: {other}"),
        }
    }

    /// Every accepted notification that ended `FAILED` (never played).
    pub async fn failed(&self) -> Vec<serde_json::Value> {
        match self.get("failed").await {
            serde_json::Value::Array(failed) => failed,
            other => panic!("failed: {other}"),
        }
    }

    /// The counters: `calls`, `plays`, `failed`, `tokens_issued`, `rate_limited`.
    pub async fn stats(&self) -> serde_json::Value {
        self.get("stats").await
    }

    /// Replaces the injected faults (every key of `Faults` not given is off).
    pub async fn set_faults(&self, faults: serde_json::Value) {
        self.put("faults", &faults).await;
    }

    /// Switches speaker `hardware_id` on or off.
    pub async fn set_online(&self, hardware_id: &str, online: bool) {
        self.put(
            &format!("devices/{hardware_id}/online"),
            &serde_json::Value::Bool(online),
        )
        .await;
    }
}

/// The `[[forward]]` table (sink `pos`) that POSTs every payment to `url`,
/// retrying quickly, as most tests want.
pub fn forward_to(url: &str) -> String {
    format!(
        "[[forward]]\nname = \"pos\"\nurl = \"{url}\"\nretry_initial_ms = 10\nretry_max_ms = 100\n"
    )
}

/// A reply: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }
}

/// POSTs `body` as JSON with `headers`.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Reply {
    post_as(url, "application/json", headers, body).await
}

/// POSTs `body` as `content_type` with `headers`.
pub async fn post_as(
    url: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Reply { status, body }
}

/// POSTs `body` as JSON to `url` until it gets a 2xx, the way a provider
/// retries: a 5xx or a failed request (a gateway killed mid-request, or
/// restarting) is tried again after 20 ms; any other status fails the test,
/// naming `what`.
pub async fn post_until_2xx(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    what: &(dyn std::fmt::Debug + Sync),
) {
    loop {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => assert!(
                r.status().is_server_error(),
                "payment {what:?}: unexpected {}",
                r.status()
            ),
            Err(_) => {} // killed mid-request, or restarting
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the gateway binary with `args` to completion.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway cli")
}

/// What [`CountingSink`] saw of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub idempotency_key: String,
    pub transaction_id: String,
    pub seq: u64,
    pub amount: u64,
}

#[derive(Debug, Default)]
struct Counts {
    per_key: std::collections::HashMap<String, u32>,
    /// First arrival of each key, in arrival order.
    first: Vec<Arrival>,
    refused: u64,
}

/// An HTTP endpoint for the gateway's `[[forward]]` sink that counts
/// deliveries per `Idempotency-Key`, the way a receiver that dedupes would
/// (SePay's speaker API does so by `requestId`). It can be switched "down"
/// (answers 503) to simulate an outage.
pub struct CountingSink {
    pub url: String,
    counts: Arc<Mutex<Counts>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds to wait before answering each delivery.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingSink {
    pub fn start() -> CountingSink {
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::Ordering;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/events", listener.local_addr().expect("addr"));
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, d, slow) = (counts.clone(), down.clone(), delay_ms.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (counts, down, slow) = (c.clone(), d.clone(), slow.clone());
                async move {
                    let delay = slow.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let mut counts = counts.lock().expect("counts");
                    if down.load(Ordering::SeqCst) {
                        counts.refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok())
                    else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let n = counts.per_key.entry(key.to_string()).or_default();
                    *n += 1;
                    if *n == 1 {
                        counts.first.push(Arrival {
                            idempotency_key: key.to_string(),
                            transaction_id: event["transaction_id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            seq: event["seq"].as_u64().unwrap_or(u64::MAX),
                            amount: event["amount"].as_u64().unwrap_or(0),
                        });
                    }
                    StatusCode::OK
                }
            }),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sink runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        CountingSink {
            url,
            counts,
            down,
            delay_ms,
        }
    }

    /// Answers each delivery only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// While down, every delivery gets 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Each payment's first arrival, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.counts.lock().expect("counts").first.clone()
    }

    /// Deliveries accepted in all, redeliveries included.
    pub fn deliveries(&self) -> u64 {
        let counts = self.counts.lock().expect("counts");
        counts.per_key.values().map(|n| u64::from(*n)).sum()
    }

    /// Deliveries refused while down.
    pub fn refused(&self) -> u64 {
        self.counts.lock().expect("counts").refused
    }

    /// Waits until `n` distinct payments arrived, up to `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.arrivals().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until every transaction id in `expected` arrived, then `settle`
    /// longer for anything that should not come, and asserts each arrived
    /// exactly once and nothing else did. `gw`'s log is shown on a miss.
    pub async fn assert_each_once(
        &self,
        expected: &std::collections::BTreeSet<String>,
        settle: Duration,
        gw: &Gateway,
    ) {
        assert!(
            self.wait_for(expected.len(), Duration::from_secs(60)),
            "{} of {} arrived\n{}",
            self.arrivals().len(),
            expected.len(),
            gw.logs()
        );
        tokio::time::sleep(settle).await;
        let got: std::collections::BTreeSet<String> = self
            .arrivals()
            .iter()
            .map(|a| a.transaction_id.clone())
            .collect();
        assert_eq!(&got, expected);
        assert_eq!(
            self.deliveries(),
            expected.len() as u64,
            "each payment delivered once"
        );
    }
}

/// Now in Vietnam (UTC+7) as SePay writes `transactionDate`.
pub fn vietnam_now() -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(7 * 3600);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// The account [`sepay_webhook`] pays into.
pub const SEPAY_ACCOUNT: &str = "0123499999";

/// A SePay webhook body for transaction `id` of `amount` VND, made now, into
/// [`SEPAY_ACCOUNT`]. Its bank reference is `MBVCB.<id>`, so distinct ids
/// are distinct payments.
pub fn sepay_webhook(id: u64, amount: u64) -> String {
    sepay_webhook_to(SEPAY_ACCOUNT, id, amount)
}

/// [`sepay_webhook`] into bank account `account` (what `[[route]] account`
/// matches).
pub fn sepay_webhook_to(account: &str, id: u64, amount: u64) -> String {
    serde_json::json!({
        "id": id,
        "gateway": "Vietcombank",
        "transactionDate": vietnam_now(),
        "accountNumber": account,
        "code": null,
        "content": format!("thanh toan don {id}"),
        "transferType": "in",
        "transferAmount": amount,
        "accumulated": 19_077_000,
        "subAccount": null,
        "referenceCode": format!("MBVCB.{id}"),
        "description": ""
    })
    .to_string()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of process `pid` (`VmRSS`), KiB; 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The transaction id the gateway stores for [`sepay_webhook`]`(id, _)`:
/// SePay's own integer id (see `plugins/sepay-common`).
pub fn sepay_transaction_id(id: u64) -> String {
    id.to_string()
}

/// The `id` given to [`sepay_webhook`], back from a stored transaction id.
pub fn sepay_webhook_id(transaction_id: &str) -> Option<u64> {
    transaction_id.parse().ok()
}
