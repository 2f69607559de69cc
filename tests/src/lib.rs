//! Harness for end-to-end tests: starts the real `soundbox-gateway` binary on
//! port 0 in a temp dir with real plugins, and talks to it over loopback.
//!
//! The binary and the plugins must be built first; `make test` does both.

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

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `soundbox-gateway run` with `config` (its `listen` and `data_dir`
    /// are set here) and waits until ingress listens.
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\nid = \"e2e\"\n{config}"
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config");
        let (child, addr, logs) = spawn(&dir.path().join("config.toml"));
        Gateway {
            child,
            addr,
            dir,
            logs,
        }
    }

    /// Stops with SIGTERM, then starts again on the same config and data dir.
    pub fn restart(&mut self) -> std::process::ExitStatus {
        let status = self.terminate();
        let (child, addr, logs) = spawn(&self.dir.path().join("config.toml"));
        self.child = child;
        self.addr = addr;
        self.logs = logs;
        status
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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
fn spawn(config: &Path) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(gateway_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("SOUNDBOX_LOG", "info")
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

/// POSTs `body` with `headers`.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Reply {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Reply { status, body }
}

/// Runs the gateway binary with `args` to completion.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway cli")
}
