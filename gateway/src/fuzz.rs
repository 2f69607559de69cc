//! Fuzz checks: one function per `cargo fuzz` target (`fuzz/fuzz_targets/`),
//! each taking arbitrary bytes, never panicking on its own and asserting what
//! must hold for every input. A failed assertion is a finding.
//!
//! Not part of the product: compiled for the gateway's own tests and with
//! the `fuzzing` feature, which the fuzz crate (`fuzz/Cargo.toml`) enables.
//!
//! The tests at the bottom run every file of `fuzz/corpus/<target>/` through
//! its check, so the seed corpus and every crash kept there are regression
//! tests of `cargo test`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tokio::sync::watch;

use crate::config::{Config, ConfigError, ConnectorConfig, PluginLimits};
use crate::connectors::{Connectors, Plugin, Runtime};
use crate::ingress::Ingress;
use crate::log::record::{self, DecodeError, LogEntry, SCHEMA_VERSION};
use crate::log::{Appended, Committed, EventLog, KvBatch, LogFuture, Settlement};
use crate::model::{BalanceChange, Direction};

/// The path configs are parsed as. Relative plugin paths resolve under
/// `fuzz/`, where no `.wasm` file is; parsing only stats such paths, and no
/// assertion depends on whether a file exists.
const CONFIG_PATH: &str = "fuzz/config.toml";

/// `Config::parse` on the input as UTF-8 (other inputs are skipped).
///
/// An error names the file and a line and column inside the text; a syntax
/// or type error is located where the TOML parser put it. A config that
/// parses keeps the numbers it was given (no unit conversion wraps).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(CONFIG_PATH);
    match Config::parse(path, text) {
        Ok(config) => check_config(text, &config),
        Err(error) => check_config_error(text, &error),
    }
}

fn check_config_error(text: &str, error: &ConfigError) {
    let ConfigError::Invalid {
        path,
        line,
        column,
        key,
        message,
    } = error
    else {
        panic!("parse does not read files, yet returned {error}");
    };
    assert_eq!(path, Path::new(CONFIG_PATH));
    let shown = error.to_string();
    let prefix = format!("{CONFIG_PATH}:{line}:{column}: ");
    assert!(shown.starts_with(&prefix), "{shown:?} lacks {prefix:?}");
    assert!(!key.is_empty() && !message.is_empty(), "{shown:?}");
    // The position is inside the text: a real line, a column on it.
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(*line >= 1 && *line <= lines.len(), "{shown:?}");
    assert!(
        *column >= 1 && *column <= lines[line - 1].len() + 1,
        "{shown:?}"
    );
    // A TOML syntax error is located where the TOML parser found it. Without
    // a span from the parser there is nothing to point at: 1:1. Only the same
    // error: parsing as a plain table also fails on values the config's own
    // types may never reach (an integer past i64 in an unknown table).
    if let Err(syntax) = toml::from_str::<toml::Table>(text)
        && syntax.message() == message
    {
        let at = syntax.span().map_or((1, 1), |s| position(text, s.start));
        assert_eq!((*line, *column), at, "{shown:?} vs {syntax}");
    }
}

/// 1-based line and byte column of `offset`, counted independently of the
/// config module.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, before.len() - line_start + 1)
}

fn check_config(text: &str, config: &Config) {
    assert_eq!(config.source, Path::new(CONFIG_PATH));
    let table: toml::Table = toml::from_str(text).expect("a config that parses is a TOML table");
    let number = |section: &str, key: &str| -> Option<u128> {
        let value = table.get(section)?.get(key)?.as_integer()?;
        u128::try_from(value).ok()
    };
    const MB: u128 = 1 << 20;
    let expect = |section: &str, key: &str, scale: u128, actual: u128| {
        if let Some(given) = number(section, key) {
            assert_eq!(actual, given * scale, "{section}.{key} = {given}");
        }
    };
    let limits = &config.limits;
    expect("limits", "memory_mb", MB, limits.memory_bytes as u128);
    expect("limits", "cpu_budget_ms", 1, limits.cpu_budget.as_millis());
    expect(
        "limits",
        "call_timeout_ms",
        1,
        limits.call_timeout.as_millis(),
    );
    let log = &config.log;
    expect("log", "cache_mb", MB, log.cache_bytes.into());
    expect("log", "max_disk_mb", MB, log.max_disk_bytes.into());
    expect(
        "log",
        "min_free_disk_mb",
        MB,
        log.min_free_disk_bytes.into(),
    );
    let days = log.dedupe_retention.as_secs().into();
    expect("log", "dedupe_retention_days", 86_400, days);
    let hours = log.keep_settled.as_secs().into();
    expect("log", "keep_settled_hours", 3_600, hours);
    let gateway = &config.gateway;
    expect(
        "gateway",
        "max_body_bytes",
        1,
        gateway.max_body_bytes as u128,
    );
    expect(
        "gateway",
        "shutdown_grace_secs",
        1,
        gateway.shutdown_grace.as_secs().into(),
    );

    // Caps the runtime and the log rely on being positive.
    assert!(limits.memory_bytes > 0 && limits.max_changes_per_call > 0);
    assert!(!limits.cpu_budget.is_zero() && !limits.call_timeout.is_zero());
    assert!(log.cache_bytes > 0 && log.max_disk_bytes > 0);
    assert!(gateway.max_body_bytes > 0);

    // Connector names become URL path segments and KV tree names.
    let mut names = std::collections::BTreeSet::new();
    for c in &config.connectors {
        assert!(names.insert(c.name.as_str()), "duplicate {}", c.name);
        assert!(
            !c.name.is_empty()
                && c.name.len() <= 64
                && c.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                }),
            "connector name {:?}",
            c.name
        );
        assert!(
            c.plugin.is_absolute() || c.plugin.starts_with("fuzz"),
            "plugin path {} not resolved against the config's folder",
            c.plugin.display()
        );
    }
    let mut sink_names = std::collections::BTreeSet::new();
    for mqtt in &config.mqtt {
        assert!(mqtt.window >= 1 && mqtt.window <= 1000);
        assert!(sink_names.insert(mqtt.sink_name()), "duplicate MQTT sink");
    }
}

/// `record::decode` on the input, and on the input behind a valid header
/// (so the payload parser is reached past the checksum). Whatever decodes
/// re-encodes to itself, and one changed byte of an encoding is caught.
pub fn log_record(data: &[u8]) {
    check_record(data, data);
    let mut framed = Vec::with_capacity(data.len() + 5);
    framed.push(SCHEMA_VERSION);
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    check_record(&framed, data);
}

fn check_record(bytes: &[u8], data: &[u8]) {
    match record::decode(bytes) {
        Ok(entry) => {
            let encoded = record::encode(&entry);
            assert_eq!(record::decode(&encoded), Ok(entry.clone()), "round trip");
            assert_eq!(record::encode(&entry), encoded, "encode is deterministic");
            // Any change of one byte (a CRC-32 catches every burst of up to
            // 32 bits), at a place and with a mask the input picks.
            let at = data.iter().map(|&b| b as usize).sum::<usize>() % encoded.len();
            let mask = data.last().copied().unwrap_or(1).max(1);
            let mut damaged = encoded;
            damaged[at] ^= mask;
            let result = record::decode(&damaged);
            assert!(
                result.is_err(),
                "byte {at} ^ {mask:#04x} undetected: {result:?}"
            );
        }
        Err(DecodeError::Truncated(n)) => assert!(n == bytes.len() && n < 5),
        Err(DecodeError::UnknownVersion(v)) => {
            assert!(v == bytes[0] && (v == 0 || v > SCHEMA_VERSION));
        }
        Err(DecodeError::Checksum { stored, computed }) => {
            assert_ne!(stored, computed);
            assert_eq!(stored.to_le_bytes(), bytes[1..5]);
            assert_eq!(computed, crc32fast::hash(&bytes[5..]));
        }
        Err(DecodeError::Payload(reason)) => {
            assert!(!reason.is_empty());
            assert!(serde_json::from_slice::<LogEntry>(&bytes[5..]).is_err());
        }
    }
}

/// The API key the fuzzed SePay connector is configured with.
const SEPAY_KEY: &str = "fuzz-key";

/// `POST /hooks/sepay` through the gateway's router (ingress, the real SePay
/// plugin in the connector runtime, change validation, the append) with a
/// JSON body.
///
/// Input: the first byte picks the `Authorization` header (mod 4: 0 the
/// right API key, 1 none, 2 a wrong key, 3 the bytes up to the first `\n`);
/// the rest is the body. Seeds start with `0`..`3` so they stay readable.
///
/// Holds for every input: no 5xx (a trap, a CPU or memory cap, or a change
/// the gateway refuses is a plugin bug; SePay would retry forever); a 4xx
/// carries a reason and stores nothing; a request without the key is a 401;
/// a body that is not a JSON object is a 400; a 2xx stores exactly the one
/// valid change the body describes and answers SePay's `{"success":true}`.
pub fn sepay_webhook(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let wrong = format!("Apikey {SEPAY_KEY}x");
    let right = format!("Apikey {SEPAY_KEY}");
    let (authorization, body): (Option<&[u8]>, &[u8]) = match selector % 4 {
        0 => (Some(right.as_bytes()), rest),
        1 => (None, rest),
        2 => (Some(wrong.as_bytes()), rest),
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (Some(&rest[..nl]), &rest[nl + 1..]),
            None => (Some(rest), &[][..]),
        },
    };
    let harness = sepay_harness();
    let _serial = harness
        .serial
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    harness.log.appended().clear();

    let mut request = Request::post("/hooks/sepay").header("content-type", "application/json");
    let authorization = authorization.and_then(|v| axum::http::HeaderValue::from_bytes(v).ok());
    if let Some(value) = &authorization {
        request = request.header("authorization", value.clone());
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a request from valid parts");
    let (status, reply) = harness.runtime.block_on(async {
        let response = crate::http_server::call(harness.router.clone(), request).await;
        let status = response.status();
        let reply = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a buffered reply");
        (status, reply)
    });
    let stored = std::mem::take(&mut *harness.log.appended());
    let shown = String::from_utf8_lossy(&reply);

    assert!(
        status.is_success() || status.is_client_error(),
        "{status} {shown}"
    );
    if status.is_client_error() {
        assert!(stored.is_empty(), "a {status} stored {stored:?}");
        let reason: serde_json::Value =
            serde_json::from_slice(&reply).expect("a 4xx reply is JSON");
        assert!(
            reason["error"].as_str().is_some_and(|e| !e.is_empty())
                && reason["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{status} without a reason: {shown}"
        );
    }
    let authenticated = authorization.as_ref().is_some_and(|v| {
        v.to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, key)| {
                scheme.eq_ignore_ascii_case("apikey") && key.trim() == SEPAY_KEY
            })
    });
    if !authenticated {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{shown}");
        return;
    }
    // Lossy: serde skips an unknown field's string without checking its
    // UTF-8, so such a body is still a SePay webhook.
    let json = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(body)).ok();
    let Some(hook) = json.as_ref().and_then(|v| v.as_object()) else {
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "not a JSON object: {shown}"
        );
        return;
    };
    if !status.is_success() {
        return;
    }
    assert_eq!(&reply[..], br#"{"success":true}"#);
    let [change] = &stored[..] else {
        panic!("a 2xx stored {} changes", stored.len());
    };
    assert_eq!(change.validate(), Ok(()));
    assert_eq!((&*change.provider, &*change.connector), ("sepay", "sepay"));
    assert_eq!(Some(change.amount), hook["transferAmount"].as_u64());
    // Trimmed, as `sepay-poll` stores it: routes match accounts exactly.
    assert_eq!(
        Some(&*change.account),
        hook["accountNumber"].as_str().map(str::trim)
    );
    let direction = match change.direction {
        Direction::In => "in",
        Direction::Out => "out",
    };
    assert_eq!(Some(direction), hook["transferType"].as_str());
}

/// The SePay plugin loaded once per process, behind the ingress router.
struct SepayHarness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    log: Arc<RecordingLog>,
    /// One call at a time: the log's record is per call.
    serial: Mutex<()>,
    /// The plugin KV store (the plugin keeps none; it must exist).
    _kv: (tempfile::TempDir, crate::log::Store),
}

fn sepay_harness() -> &'static SepayHarness {
    static HARNESS: OnceLock<SepayHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/target/wasm32-wasip2/release/sepay_webhook.wasm");
        assert!(wasm.is_file(), "build the plugins first: make plugins");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let kv = tempfile::tempdir().expect("tempdir");
        let store = crate::log::Store::open(
            kv.path(),
            crate::log::LogOptions {
                min_free_disk_bytes: 0,
                segment_bytes: 1 << 20,
                ..crate::log::LogOptions::default()
            },
        )
        .expect("scratch store for the plugin's KV");
        let mut settings = toml::Table::new();
        settings.insert("api_key".into(), SEPAY_KEY.into());
        let mut connector = ConnectorConfig::ad_hoc(wasm, settings);
        connector.name = "sepay".into();
        let engine = Arc::new(Runtime::new(PluginLimits::default(), None).expect("wasm engine"));
        let plugin = runtime
            .block_on(Plugin::load(
                engine,
                &connector,
                &crate::config::PluginTrustConfig::run_any(),
                &store,
            ))
            .expect("load the SePay plugin");
        let log = Arc::new(RecordingLog::default());
        let ingress = Arc::new(Ingress {
            connectors: Arc::new(ArcSwap::from_pointee(Connectors::from_plugins([Arc::new(
                plugin,
            )]))),
            log: log.clone(),
            max_body_bytes: crate::config::Config::parse(Path::new(CONFIG_PATH), "")
                .expect("the empty config")
                .gateway
                .max_body_bytes,
            stale: crate::ingress::StaleRule::new(
                crate::log::LogOptions::default().dedupe_retention,
            ),
        });
        SepayHarness {
            runtime,
            router: ingress.router(),
            log,
            serial: Mutex::new(()),
            _kv: (kv, store),
        }
    })
}

/// An event log that keeps what was appended in memory, for the check to
/// inspect: the fuzzed path is ingress and the plugin, not sled.
#[derive(Debug)]
struct RecordingLog {
    appended: Mutex<Vec<BalanceChange>>,
    next: AtomicU64,
    seq: watch::Sender<u64>,
}

impl Default for RecordingLog {
    fn default() -> Self {
        RecordingLog {
            appended: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            seq: watch::Sender::new(1),
        }
    }
}

impl RecordingLog {
    fn appended(&self) -> std::sync::MutexGuard<'_, Vec<BalanceChange>> {
        self.appended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventLog for RecordingLog {
    fn append(&self, changes: Vec<BalanceChange>, _kv: Option<KvBatch>) -> LogFuture<Committed> {
        let appended = changes
            .iter()
            .map(|_| Appended::New(self.next.fetch_add(1, Ordering::Relaxed)))
            .collect();
        self.appended().extend(changes);
        self.seq.send_replace(self.next.load(Ordering::Relaxed));
        Box::pin(std::future::ready(Ok(Committed {
            appended,
            kv: Ok(()),
        })))
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    fn read(&self, _from: u64, _limit: usize) -> LogFuture<Vec<LogEntry>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn cursor(&self, _sink: &str) -> LogFuture<u64> {
        Box::pin(std::future::ready(Ok(self.next.load(Ordering::Relaxed))))
    }

    fn requeued(&self, _sink: &str, _limit: usize) -> LogFuture<Vec<LogEntry>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn next_batch(&self, _sink: &str, _limit: usize) -> LogFuture<(Vec<LogEntry>, bool)> {
        Box::pin(std::future::ready(Ok((Vec::new(), false))))
    }

    fn settle(&self, _sink: &str, _seqs: Vec<u64>, _settlement: Settlement) -> LogFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn pass(&self, _sink: &str, _through: u64) -> LogFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Runs `check` on every file of `fuzz/corpus/<target>/`.
    fn corpus(target: &str, check: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{} fails its check", file.display());
            }
        }
    }

    #[test]
    fn config_corpus() {
        corpus("config", super::config);
    }

    #[test]
    fn log_record_corpus() {
        corpus("log_record", super::log_record);
    }

    #[test]
    fn sepay_webhook_corpus() {
        corpus("sepay_webhook", super::sepay_webhook);
    }
}
