//! The gateway under test: `soundbox-gateway run` in a temp dir of its own,
//! on free loopback ports, started by a [`GatewayBuilder`] and killed on
//! drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::net::free_port;
use crate::wait::{wait_until, wait_until_blocking};
use crate::{gateway_bin, run_cli};

/// The log line that says the gateway is up, with where ingress listens.
const LISTENING: &str = "webhook ingress listening";
/// How long a gateway may take to say so.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: String,
    /// The admin API (`queue` commands while running).
    pub admin_addr: String,
    pub dir: tempfile::TempDir,
    logs: Logs,
    /// How it is run, again on a restart.
    launch: Launch,
}

/// Where the process's JSON log lines go.
enum Logs {
    /// Its stderr, read line by line as they come.
    Captured(Arc<Mutex<Vec<String>>>),
    /// A file, read when asked.
    File(PathBuf),
}

/// How the process is run, on its first start and on each restart.
struct Launch {
    binary: PathBuf,
    /// Extra environment (secrets for `${ENV}`, log level).
    env: Vec<(String, String)>,
    /// Log at the gateway's own default level instead of `info`.
    default_log_level: bool,
    /// Log to this file instead of capturing stderr.
    log_file: Option<PathBuf>,
    /// Stop reading stderr once the gateway listens.
    stall_log: bool,
}

/// What runs on a gateway's directory before it starts.
type Setup<'a> = Box<dyn FnOnce(&Path) + 'a>;

/// What a gateway is started with; [`GatewayBuilder::start`] starts it.
///
/// The config file is `[gateway]` (free ports for `listen` and
/// `admin_listen`, `data_dir = "data"`, `id = "e2e"` unless the gateway
/// keys name one, then the [gateway keys](GatewayBuilder::gateway_keys)),
/// `[plugins] unsigned` unless the config has `[plugins]` (the plugins
/// built from `plugins/` are unsigned), the config, and a ten-year
/// `[log] dedupe_retention_days` unless either has `[log]` (the sample
/// payloads are from 2023-2024, older than the default window, and the
/// gateway refuses payments that old; `stale.rs` tests the default).
pub struct GatewayBuilder<'a> {
    config: String,
    gateway_keys: String,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    setup: Option<Setup<'a>>,
    binary: Option<PathBuf>,
    parent: Option<PathBuf>,
    log_file: bool,
    default_log_level: bool,
    stall_log: bool,
}

impl<'a> GatewayBuilder<'a> {
    /// Extra keys of the `[gateway]` table (`shutdown_grace_secs = 5`,
    /// `id = "shop-1"`).
    pub fn gateway_keys(mut self, keys: &str) -> Self {
        self.gateway_keys = keys.to_string();
        self
    }

    /// An extra environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Extra environment variables of the process.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        for (key, value) in env {
            self = self.env(key, value);
        }
        self
    }

    /// Runs the first start under `wrapper` (`strace -f -o FILE`, `sh -c
    /// ...`); restarts run the gateway alone.
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs `setup` on the gateway's directory, its config written, before
    /// the process starts (e.g. to mount a filesystem on `data/`).
    pub fn setup(mut self, setup: impl FnOnce(&Path) + 'a) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }

    /// Runs `binary` (the bench's release build) instead of
    /// [`gateway_bin`].
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = Some(binary.to_path_buf());
        self
    }

    /// Makes the gateway's temp dir inside `parent` (a real disk, say).
    pub fn dir_in(mut self, parent: &Path) -> Self {
        self.parent = Some(parent.to_path_buf());
        self
    }

    /// Logs to `gateway.log` in its directory instead of into this process,
    /// which then reads nothing while the gateway runs (a bench under load).
    pub fn log_file(mut self) -> Self {
        self.log_file = true;
        self
    }

    /// Logs at the gateway's own default level, as a shop runs it, instead
    /// of `SOUNDBOX_LOG=info`.
    pub fn default_log_level(mut self) -> Self {
        self.default_log_level = true;
        self
    }

    /// Stops reading the gateway's stderr once it listens, and keeps the
    /// pipe open unread, as a stalled journald does; [`Gateway::logs`] then
    /// has the lines up to there.
    pub fn stall_log_reader(mut self) -> Self {
        self.stall_log = true;
        self
    }

    /// Writes the config, starts the process and waits until ingress
    /// listens.
    pub fn start(self) -> Gateway {
        let dir = match &self.parent {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let (config, gateway_keys) = (&self.config, &self.gateway_keys);
        let log = if config.contains("[log]") || gateway_keys.contains("[log]") {
            ""
        } else {
            "\n[log]\ndedupe_retention_days = 3650\n"
        };
        let plugins = if config.contains("[plugins]") {
            ""
        } else {
            "[plugins]\nunsigned = \"allowed for local development\"\n\n"
        };
        let id = if gateway_keys
            .lines()
            .any(|l| l.trim_start().starts_with("id "))
        {
            ""
        } else {
            "id = \"e2e\"\n"
        };
        let text = format!(
            "[gateway]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"{admin_addr}\"\ndata_dir = \"data\"\n{id}{gateway_keys}\n{plugins}{config}{log}",
            free_port()
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, text).expect("write config");
        if let Some(setup) = self.setup {
            setup(dir.path());
        }
        let launch = Launch {
            binary: self.binary.unwrap_or_else(gateway_bin),
            env: self.env,
            default_log_level: self.default_log_level,
            log_file: self.log_file.then(|| dir.path().join("gateway.log")),
            stall_log: self.stall_log,
        };
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let (child, addr, logs) = launch.spawn(&config_path, &wrapper);
        Gateway {
            child,
            addr,
            admin_addr,
            dir,
            logs,
            launch,
        }
    }
}

impl Launch {
    /// Spawns the binary on `config` and waits for the log line that says
    /// where ingress listens.
    fn spawn(&self, config: &Path, wrapper: &[&str]) -> (Child, String, Logs) {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(config);
        if self.default_log_level {
            command.env_remove("SOUNDBOX_LOG");
        } else {
            command.env("SOUNDBOX_LOG", "info");
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        match &self.log_file {
            Some(path) => {
                let file = std::fs::File::create(path).expect("gateway log file");
                let child = command.stderr(file).spawn().expect("spawn gateway");
                self.wait_listening_in_file(child, path)
            }
            None => {
                let child = command
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn gateway");
                capture(child, self.stall_log)
            }
        }
    }

    fn wait_listening_in_file(&self, mut child: Child, path: &Path) -> (Child, String, Logs) {
        let mut addr = None;
        let mut exited = None;
        wait_until_blocking(START_LIMIT, || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            addr = text.lines().find_map(listening_addr);
            exited = child.try_wait().ok().flatten();
            addr.is_some() || exited.is_some()
        });
        match addr {
            Some(addr) => (child, addr, Logs::File(path.to_path_buf())),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway did not start ({}); log:\n{}",
                    exited.map_or("still running".to_string(), |s| format!("it exited: {s}")),
                    std::fs::read_to_string(path).unwrap_or_default()
                );
            }
        }
    }
}

/// Collects `child`'s JSON log lines from its stderr and waits for the line
/// that says where ingress listens; with `stall`, reads nothing after it
/// (the reading thread parks for good, holding the pipe open).
fn capture(mut child: Child, stall: bool) -> (Child, String, Logs) {
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(Ok(line)) = lines.next() {
            let listening = listening_addr(&line);
            sink.lock().expect("log lock").push(line);
            if let Some(addr) = listening {
                let _ = tx.send(addr);
                if stall {
                    loop {
                        std::thread::park();
                    }
                }
            }
        }
    });
    match rx.recv_timeout(START_LIMIT) {
        Ok(addr) => (child, addr, Logs::Captured(logs)),
        Err(_) => {
            let _ = child.kill();
            panic!(
                "gateway did not start; log:\n{}",
                logs.lock().expect("log lock").join("\n")
            );
        }
    }
}

/// The ingress address, if `line` is the one that says it listens.
fn listening_addr(line: &str) -> Option<String> {
    if !line.contains(LISTENING) {
        return None;
    }
    let json = serde_json::from_str::<serde_json::Value>(line).ok()?;
    (json["fields"]["message"] == LISTENING).then(|| {
        json["fields"]["addr"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

impl Gateway {
    /// What to start a gateway on `config` with (see [`GatewayBuilder`]).
    pub fn builder<'a>(config: &str) -> GatewayBuilder<'a> {
        GatewayBuilder {
            config: config.to_string(),
            gateway_keys: String::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            setup: None,
            binary: None,
            parent: None,
            log_file: false,
            default_log_level: false,
            stall_log: false,
        }
    }

    /// Starts `soundbox-gateway run` with `config` (its `[gateway]` table is
    /// written here: fixed free ports, so a restart keeps the addresses) and
    /// waits until ingress listens: `Gateway::builder(config).start()`.
    pub fn start(config: &str) -> Gateway {
        Self::builder(config).start()
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
        self.kill();
        self.start_again();
    }

    /// SIGKILLs the process and leaves it dead.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops with SIGTERM (a clean shutdown) and leaves it stopped.
    pub fn shut_down(&mut self) -> ExitStatus {
        self.terminate()
    }

    /// Starts the stopped (or killed) process again on the same config and
    /// data dir. Its log starts afresh.
    pub fn start_again(&mut self) {
        let (child, addr, logs) = self.launch.spawn(&self.config_path(), &[]);
        self.child = child;
        self.addr = addr;
        self.logs = logs;
    }

    /// Stops with SIGTERM, then starts again on the same config and data dir.
    pub fn restart(&mut self) -> ExitStatus {
        let status = self.terminate();
        self.start_again();
        status
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every log line so far (JSON, one per line).
    pub fn logs(&self) -> String {
        match &self.logs {
            Logs::Captured(lines) => lines.lock().expect("log lock").join("\n"),
            Logs::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
        }
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until_blocking(timeout, || self.logs().contains(needle))
    }

    /// Polls `done` until it holds; fails naming `what`, with the log's
    /// tail, after `timeout`.
    pub async fn eventually(&self, what: &str, timeout: Duration, done: impl AsyncFnMut() -> bool) {
        assert!(
            wait_until(timeout, done).await,
            "timed out waiting for {what}; gateway log (tail):\n{}",
            self.log_tail(300)
        );
    }

    /// Fails unless the log shows no panic.
    pub fn assert_no_panic(&self) {
        assert!(
            !self.logs().contains("panicked"),
            "the gateway panicked:\n{}",
            self.log_tail(300)
        );
    }

    /// Replaces the config file the way an editor does: a new file renamed
    /// over it (the gateway sees one complete change).
    pub fn write_config(&self, text: &str) {
        let path = self.config_path();
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    }

    /// Replaces `from` by `to` in the config file in place (the file is
    /// truncated and written again, as `sed -i` or a simple editor does).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = self.config_with(from, to);
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// The config file's text with `from` replaced by `to`.
    fn config_with(&self, from: &str, to: &str) -> String {
        let text = std::fs::read_to_string(self.config_path()).expect("read config");
        assert!(text.contains(from), "{from} not in the config");
        text.replace(from, to)
    }

    /// Config reloads the gateway applied so far (`config reloaded` lines).
    pub fn reloads(&self) -> usize {
        self.logs().matches("config reloaded").count()
    }

    /// Replaces `from` by `to` in the config ([`Gateway::write_config`])
    /// and waits until the gateway applied the change.
    pub async fn reload(&self, from: &str, to: &str) {
        let text = self.config_with(from, to);
        let before = self.reloads();
        self.write_config(&text);
        self.eventually("the config reloaded", Duration::from_secs(30), async || {
            self.reloads() > before
        })
        .await;
    }

    /// `soundbox-gateway queue --config <its config> <args>` run to
    /// completion (through the admin API while the gateway runs): exit
    /// code, stdout, stderr.
    pub fn queue(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config_path().display().to_string();
        let mut all = vec!["queue", "--config", &config];
        all.extend_from_slice(args);
        let out = run_cli(&all);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `queue status --json`; fails unless it succeeds.
    pub fn queue_status(&self) -> serde_json::Value {
        let (code, out, err) = self.queue(&["status", "--json"]);
        assert_eq!(code, 0, "queue status failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut exited = None;
        wait_until_blocking(Duration::from_secs(20), || {
            exited = self.child.try_wait().ok().flatten();
            exited.is_some()
        });
        exited.expect("gateway did not exit after SIGTERM")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
