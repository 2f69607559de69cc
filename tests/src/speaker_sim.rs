//! The Speaker API simulator (`speaker-sim` of the real binary): standalone
//! as [`SpeakerApi`], the part a test can take down and that survives the
//! gateway's kills, and the control API of any simulator, [`SimControl`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::gateway::Gateway;
use crate::gateway_bin;
use crate::wait::wait_until_blocking;

/// The speaker a simulator has unless told otherwise: paired, online.
const DEFAULT_DEVICE: &str = "VNS-SHOP-1:paired";

/// One play as a simulator logged it ([`SpeakerApiBuilder::log_plays`]):
/// which run of the process (1 for the first start, one more each
/// [`SpeakerApi::restart`]), the `requestId`, the amount.
pub type LoggedPlay = (u32, String, u64);

/// What a standalone simulator is started with; [`SpeakerApiBuilder::start`]
/// starts it.
pub struct SpeakerApiBuilder {
    port: u16,
    devices: Vec<String>,
    args: Vec<String>,
    binary: Option<PathBuf>,
    log_plays: bool,
}

impl SpeakerApiBuilder {
    /// Its speakers, as `speaker-sim --device` takes them
    /// (`HWID[:paired[:offline]]`); one paired `VNS-SHOP-1` if none is given.
    pub fn devices<S: AsRef<str>>(mut self, devices: &[S]) -> Self {
        self.devices = devices.iter().map(|d| d.as_ref().to_string()).collect();
        self
    }

    /// Extra `speaker-sim` flags (`--error-style http4xx`, `--play-ms 200`,
    /// `--client-secret S`).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Runs `binary` (the bench's release build) instead of [`gateway_bin`].
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = Some(binary.to_path_buf());
        self
    }

    /// Collects every play from the simulator's log, which outlives a kill
    /// (a killed simulator forgets what it played; the real API does not):
    /// [`SpeakerApi::logged_plays`].
    pub fn log_plays(mut self) -> Self {
        self.log_plays = true;
        self
    }

    /// Starts it and waits until it listens.
    pub fn start(self) -> SpeakerApi {
        let devices = if self.devices.is_empty() {
            vec![DEFAULT_DEVICE.to_string()]
        } else {
            self.devices
        };
        let mut api = SpeakerApi {
            port: self.port,
            child: None,
            binary: self.binary.unwrap_or_else(gateway_bin),
            devices,
            args: self.args,
            log_plays: self.log_plays,
            runs: 0,
            plays: Arc::default(),
        };
        api.restart();
        api
    }
}

/// A standalone Speaker API simulator on a fixed port (a restart keeps the
/// address), with one paired speaker, `VNS-SHOP-1`, unless told otherwise.
/// Killed on drop.
pub struct SpeakerApi {
    pub port: u16,
    child: Option<Child>,
    binary: PathBuf,
    devices: Vec<String>,
    args: Vec<String>,
    log_plays: bool,
    /// Processes started so far.
    runs: u32,
    plays: Arc<Mutex<Vec<LoggedPlay>>>,
}

impl SpeakerApi {
    /// What to start a simulator on `port` with (see [`SpeakerApiBuilder`]).
    pub fn builder(port: u16) -> SpeakerApiBuilder {
        SpeakerApiBuilder {
            port,
            devices: Vec::new(),
            args: Vec::new(),
            binary: None,
            log_plays: false,
        }
    }

    /// Starts it on `port` with one paired `VNS-SHOP-1`, with the
    /// simulator's default credentials unless `client_secret` is given.
    pub fn start(port: u16, client_secret: Option<&str>) -> SpeakerApi {
        let secret: Vec<&str> = client_secret
            .map(|secret| vec!["--client-secret", secret])
            .unwrap_or_default();
        Self::builder(port).args(&secret).start()
    }

    /// Starts the process (again, after [`SpeakerApi::stop`]) on the same
    /// port, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        self.runs += 1;
        let mut command = Command::new(&self.binary);
        if self.log_plays {
            command
                .args(["--log-format", "json"])
                .env("SOUNDBOX_LOG", "info");
        } else {
            // Nobody reads it: no time spent logging each play.
            command.env("SOUNDBOX_LOG", "warn");
        }
        let mut child = command
            .args([
                "speaker-sim",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
            ])
            .args(self.devices.iter().flat_map(|d| ["--device", d]))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(if self.log_plays {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("speaker-sim");
        if let Some(stderr) = child.stderr.take() {
            let (plays, run) = (self.plays.clone(), self.runs);
            std::thread::spawn(move || collect_plays(stderr, run, &plays));
        }
        let port = self.port;
        let mut exited = None;
        let listens = wait_until_blocking(Duration::from_secs(20), || {
            exited = child.try_wait().ok().flatten();
            exited.is_some() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Some(status) = exited {
            panic!(
                "speaker-sim exited ({status}): does it take these flags? {:?}",
                self.args
            );
        }
        assert!(listens, "speaker-sim did not listen");
        self.child = Some(child);
    }

    /// Its control API (`/_sim`).
    pub fn control(&self) -> SimControl {
        SimControl::new(&self.url(""))
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The simulator's counters: `calls`, `plays`, `tokens_issued`, `rate_limited`.
    pub async fn stats(&self) -> serde_json::Value {
        self.control().stats().await
    }

    /// Every announcement played, in order: `hardware_id`, `request_id`, `amount`, `words`.
    pub async fn plays(&self) -> Vec<serde_json::Value> {
        self.control().plays().await
    }

    /// Every play of every run so far, from the log
    /// ([`SpeakerApiBuilder::log_plays`]).
    pub fn logged_plays(&self) -> Vec<LoggedPlay> {
        self.plays.lock().expect("plays").clone()
    }

    /// `[speaker]` keys that point the gateway at it.
    pub fn speaker_keys(&self) -> String {
        format!(
            "base_url = \"{}\"\nclient_id = \"sim-client\"\n",
            self.url("/devices/v1")
        )
    }

    /// Takes the API down (SIGKILL: it vanishes mid-request).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SpeakerApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds each `speaker plays` line of a simulator's JSON log to `plays`.
fn collect_plays(stderr: impl std::io::Read, run: u32, plays: &Mutex<Vec<LoggedPlay>>) {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &json["fields"];
        if fields["message"] == "speaker plays" {
            let id = fields["request_id"].as_str().unwrap_or_default();
            let amount = fields["amount"].as_u64().unwrap_or(0);
            plays
                .lock()
                .expect("plays")
                .push((run, id.to_string(), amount));
        }
    }
}

impl Gateway {
    /// The control API of the in-process Speaker API simulator
    /// (`[speaker] simulator = true`), served on the admin listener.
    pub fn simulator(&self) -> SimControl {
        SimControl::new(&self.admin_url("/speaker-sim"))
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
