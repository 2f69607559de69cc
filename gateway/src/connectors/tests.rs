//! The sandbox's bounds against the hostile fixture (`plugins/fixtures/hostile`,
//! built by `make plugins`): result size, KV, memory and CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use super::host::{MemoryBudget, MemoryLimiter};
use super::*;

const MIB: usize = 1 << 20;

fn fixture() -> PathBuf {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/fixture_hostile.wasm");
    assert!(wasm.is_file(), "build the plugins first: make plugins");
    wasm
}

struct Hostile {
    plugin: Plugin,
    runtime: Arc<Runtime>,
    store: crate::log::Store,
    _dir: tempfile::TempDir,
}

impl Hostile {
    /// Commits a call's KV writes as ingress would (with no changes).
    async fn commit_kv(&self, writes: kv::KvWrites) {
        use crate::log::EventLog;
        if let Some(batch) = self.plugin.kv_batch(writes) {
            self.store
                .append(Vec::new(), Some(batch))
                .await
                .expect("commit");
        }
    }
}

async fn hostile(attack: &str, limits: PluginLimits, extra: &[(&str, &str)]) -> Hostile {
    let runtime = Arc::new(Runtime::new(limits, None).expect("engine"));
    let (dir, store) = crate::log::scratch_log(&[]);
    let mut settings = toml::Table::new();
    settings.insert("attack".into(), attack.into());
    for (k, v) in extra {
        settings.insert((*k).into(), (*v).into());
    }
    let mut config = ConnectorConfig::ad_hoc(fixture(), settings);
    config.name = format!("hostile-{attack}");
    let plugin = Plugin::load(
        runtime.clone(),
        &config,
        &PluginTrustConfig::run_any(),
        &store,
    )
    .await
    .expect("load the hostile fixture");
    Hostile {
        plugin,
        runtime,
        store,
        _dir: dir,
    }
}

fn request(body: &str) -> IncomingRequest {
    IncomingRequest {
        method: "POST".into(),
        path: "/hooks/hostile".into(),
        body: body.as_bytes().to_vec(),
        ..IncomingRequest::default()
    }
}

/// Peak resident memory of this process so far.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kib| kib << 10)
}

// --- A: a result is bounded before it is lifted -------------------------

#[tokio::test]
async fn a_huge_result_fails_before_the_host_copies_it() {
    let h = hostile("huge-result", PluginLimits::default(), &[]).await;
    let before = peak_rss();
    // Each shape points every string at one 4 MiB buffer: lifted whole,
    // `changes` alone is 4 GB of host strings, `extra` and `headers` 1.6 TB.
    for shape in ["changes", "wide", "extra", "headers"] {
        let error = h.plugin.handle(request(shape)).await.expect_err(shape);
        assert!(matches!(error, CallError::TooLarge(_)), "{shape}: {error}");
        assert!(
            error.to_string().contains("more than 1048576 bytes"),
            "{shape}: {error}"
        );
    }
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "peak RSS grew {} MiB while refusing the results",
        grown / MIB
    );
    let fine = h.plugin.handle(request("fine")).await.expect("still works");
    assert_eq!(fine.changes.len(), 1);
}

#[tokio::test]
async fn all_of_a_result_together_is_capped() {
    let limits = PluginLimits {
        max_result_bytes: 1024,
        ..PluginLimits::default()
    };
    let h = hostile("huge-result", limits, &[]).await;
    // One ordinary change fits in 1 KiB of host memory; with the cap at
    // 100 bytes (less than the host's `BalanceChange` alone) it does not.
    h.plugin.handle(request("fine")).await.expect("fits");
    let limits = PluginLimits {
        max_result_bytes: 100,
        ..PluginLimits::default()
    };
    let h = hostile("huge-result", limits, &[]).await;
    let error = h.plugin.handle(request("fine")).await.expect_err("too big");
    assert!(matches!(error, CallError::TooLarge(_)), "{error}");
    assert!(error.to_string().contains("more than 100 bytes"), "{error}");
}

// --- B: KV quotas ---------------------------------------------------------

#[tokio::test]
async fn kv_flood_is_refused_per_call_and_per_connector() {
    let limits = PluginLimits {
        kv_max_bytes: 600 << 10,
        ..PluginLimits::default()
    };
    let h = hostile("kv-flood", limits, &[]).await;
    let reply = |r: &WebhookResult| {
        let body = r.reply.as_ref().expect("a reply").body.clone();
        serde_json::from_slice::<serde_json::Value>(&body).expect("json")
    };
    // Rewriting one key: capped per call, not held without bound.
    let same = h.plugin.handle(request("same")).await.expect("call");
    let said = reply(&same);
    assert!(
        said["refusal"]
            .as_str()
            .unwrap_or_default()
            .contains("per call"),
        "{said}"
    );
    assert_eq!(
        said["stored"], 3,
        "{said}: 256 KiB per call holds three 64 KiB values"
    );
    assert!(same.kv_writes.len() <= kv::MAX_WRITES_PER_CALL);
    h.commit_kv(same.kv_writes).await;
    // New keys, call after call: the connector's quota, counted.
    let mut refusals = Vec::new();
    for call in 0..6 {
        let result = h
            .plugin
            .handle(request(&format!("c{call}")))
            .await
            .expect("call");
        refusals.push(
            reply(&result)["refusal"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        h.commit_kv(result.kv_writes).await;
    }
    assert!(
        refusals.iter().any(|r| r.contains("KV quota")),
        "{refusals:?}"
    );
    let usage = h.runtime.kv_quotas().usage("hostile-kv-flood");
    assert!(usage.bytes <= 600 << 10, "{usage:?}");
    assert!(usage.bytes > 400 << 10, "filled up to the quota: {usage:?}");
}

// --- C: the memory of a call, and of all calls, is capped ---------------

#[test]
fn the_memory_cap_counts_all_memories_of_a_call() {
    let budget = Arc::new(MemoryBudget::new(1 << 30));
    let mut limiter = MemoryLimiter::new(16 * MIB, budget.clone());
    // A component has several memories; each alone is under the cap.
    assert!(limiter.memory_growing(0, 10 * MIB, None).is_ok());
    assert!(
        limiter.memory_growing(0, 10 * MIB, None).is_err(),
        "a second memory takes the call past 16 MiB"
    );
    assert_eq!(limiter.exceeded, Some(host::MemoryExceeded::Call));
    assert!(limiter.memory_growing(0, 6 * MIB, None).is_ok());
    assert_eq!(limiter.memory_bytes(), 16 * MIB);
    // Tables are summed too.
    assert!(limiter.table_growing(0, 60_000, None).expect("table"));
    assert!(!limiter.table_growing(0, 60_000, None).expect("table"));
    drop(limiter);
    assert_eq!(budget.used(), 0, "given back when the call ends");
}

#[test]
fn calls_in_flight_share_one_memory_budget() {
    let budget = Arc::new(MemoryBudget::new(24 * MIB));
    let mut first = MemoryLimiter::new(16 * MIB, budget.clone());
    let mut second = MemoryLimiter::new(16 * MIB, budget.clone());
    assert!(first.memory_growing(0, 16 * MIB, None).is_ok());
    assert!(second.memory_growing(0, 4 * MIB, None).is_ok());
    assert!(second.memory_growing(4 * MIB, 12 * MIB, None).is_err());
    assert_eq!(second.exceeded, Some(host::MemoryExceeded::Budget));
    assert_eq!(budget.used(), 20 * MIB);
    drop(first);
    let mut third = MemoryLimiter::new(16 * MIB, budget.clone());
    assert!(third.memory_growing(0, 16 * MIB, None).is_ok());
    drop((second, third));
    assert_eq!(budget.used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_memory_hogs_stay_within_the_budget() {
    let limits = PluginLimits {
        memory_bytes: 16 * MIB,
        total_memory_bytes: 40 * MIB,
        cpu_budget: Duration::from_millis(400),
        ..PluginLimits::default()
    };
    let h = Arc::new(hostile("memory-sum", limits, &[("hold_mb", "12")]).await);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.plugin.handle(request("hog")).await })
        })
        .collect();
    let mut refused = 0;
    let mut peak = 0;
    while calls.iter().any(|c| !c.is_finished()) {
        peak = peak.max(h.runtime.memory_budget().used());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for call in calls {
        match call.await.expect("task") {
            Err(CallError::MemoryBudget(_)) => refused += 1,
            Err(CallError::CpuBudget(_)) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(peak <= 40 * MIB, "peak {peak}");
    assert!(
        refused > 0,
        "six calls of 12+ MiB do not fit in 40 MiB at once"
    );
    assert_eq!(h.runtime.memory_budget().used(), 0);
    h.plugin.handle(request("fine")).await.expect("still works");
}

// --- E: a spinning plugin yields its worker -----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_plugins_do_not_hold_the_workers() {
    let limits = PluginLimits {
        cpu_budget: Duration::from_millis(1500),
        ..PluginLimits::default()
    };
    let h = Arc::new(hostile("spin", limits, &[]).await);
    // More spinners than workers.
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.plugin.handle(request("spin")).await })
        })
        .collect();
    // Not a tokio sleep: with both workers spinning no timer would fire.
    std::thread::sleep(Duration::from_millis(200));
    let spawned = Instant::now();
    let probe = tokio::spawn(async move { spawned.elapsed() })
        .await
        .expect("probe");
    println!("a task spawned beside 3 spinners on 2 workers ran after {probe:?}");
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "the probe ran only once a spinner had given up its worker for good"
    );
    for spinner in spinners {
        let error = spinner.await.expect("task").expect_err("spins");
        assert!(matches!(error, CallError::CpuBudget(_)), "{error}");
    }
}

/// A connector's settings hold its secrets: `{:?}` of what it shares across
/// calls names the keys, never the values.
#[tokio::test]
async fn the_context_debug_hides_setting_values() {
    let h = hostile(
        "spin",
        PluginLimits::default(),
        &[("api_key", "sk-live-123")],
    )
    .await;
    let shown = format!("{:?}", h.plugin.context);
    assert!(shown.contains("api_key"), "{shown}");
    assert!(!shown.contains("sk-live-123"), "{shown}");
}

// --- Errors keep their cause ---------------------------------------------

/// A trap reads as its first line; the whole wasmtime error, with the trap
/// and its backtrace, stays behind it as the source.
#[tokio::test]
async fn a_trap_shows_its_first_line_and_keeps_the_wasmtime_error() {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/fixture_panicking.wasm");
    assert!(wasm.is_file(), "build the plugins first: make plugins");
    let runtime = Arc::new(Runtime::new(PluginLimits::default(), None).expect("engine"));
    let (_dir, store) = crate::log::scratch_log(&[]);
    let mut config = ConnectorConfig::ad_hoc(wasm, toml::Table::new());
    config.name = "panicking".into();
    let plugin = Plugin::load(runtime, &config, &PluginTrustConfig::run_any(), &store)
        .await
        .expect("load the panicking fixture");
    let error = plugin
        .handle(request("panic"))
        .await
        .expect_err("it panics");
    let CallError::Trap(trap) = &error else {
        panic!("not a trap: {error}");
    };
    let shown = error.to_string();
    assert!(shown.starts_with("plugin trapped: "), "{shown}");
    assert!(!shown.contains('\n'), "one line, no backtrace: {shown:?}");
    assert!(trap.downcast_ref::<wasmtime::Trap>().is_some(), "{trap:?}");
    let source = std::error::Error::source(&error).expect("the wasmtime error");
    assert!(!source.to_string().is_empty());
}

/// A plugin file that cannot be read or compiled: the message is as before,
/// the I/O or wasmtime error is its source.
#[tokio::test]
async fn load_errors_keep_the_io_or_wasmtime_error_as_their_source() {
    let runtime = Arc::new(Runtime::new(PluginLimits::default(), None).expect("engine"));
    let (dir, store) = crate::log::scratch_log(&[]);
    let load = |path: PathBuf| {
        let (runtime, store) = (runtime.clone(), store.clone());
        async move {
            let config = ConnectorConfig::ad_hoc(path, toml::Table::new());
            Plugin::load(runtime, &config, &PluginTrustConfig::run_any(), &store)
                .await
                .expect_err("does not load")
        }
    };

    let missing = load(dir.path().join("missing.wasm")).await;
    assert!(
        matches!(&missing, LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{missing:?}"
    );
    assert!(
        missing.to_string().starts_with("cannot read plugin "),
        "{missing}"
    );
    let source = std::error::Error::source(&missing).expect("the I/O error");
    assert!(source.downcast_ref::<std::io::Error>().is_some());

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm").expect("write");
    let invalid = load(garbage).await;
    assert!(matches!(invalid, LoadError::Compile { .. }), "{invalid:?}");
    let shown = invalid.to_string();
    assert!(
        shown.contains("is not a valid WebAssembly component: "),
        "{shown}"
    );
    let source = std::error::Error::source(&invalid).expect("the wasmtime error");
    assert!(shown.contains(&source.to_string()), "{shown}");
}

#[test]
fn an_engine_error_names_what_failed_and_keeps_it() {
    let error = LoadError::engine(std::io::Error::other("no threads left"), "epoch thread");
    assert_eq!(
        error.to_string(),
        "wasm engine: epoch thread: no threads left"
    );
    let mut chain = Vec::new();
    let mut next = std::error::Error::source(&error);
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    assert_eq!(chain, ["epoch thread", "no threads left"]);
}

#[test]
fn a_fault_header_is_taken_out_of_the_reply() {
    let mut reply = Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "X-Soundbox-Connector-Fault".into(),
                "clock is 2 h off".into(),
            ),
            (super::FAULT_HEADER.into(), "second".into()),
        ],
        body: b"{}".to_vec(),
    };
    assert_eq!(
        super::take_fault(&mut reply).as_deref(),
        Some("clock is 2 h off")
    );
    assert_eq!(
        reply.headers,
        vec![("content-type".to_string(), "application/json".to_string())]
    );
    assert_eq!(super::take_fault(&mut reply), None);
}

// --- Signed plugins: the manifest's needs bound what the plugin gets -----

#[tokio::test]
async fn a_signed_plugin_gets_the_memory_and_kv_its_manifest_declares() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = trust::keygen(keys_dir.path(), "acme").expect("keygen");
    let wasm = keys_dir.path().join("hostile.wasm");
    std::fs::copy(fixture(), &wasm).expect("copy the fixture");
    trust::sign(
        &wasm,
        &keys.secret_key,
        &trust::ManifestFields {
            name: "hostile".into(),
            version: "1.0.0".into(),
            publisher: "Acme".into(),
            allowed_hosts: Vec::new(),
            kv: false,
            memory_mb: 16,
        },
    )
    .expect("sign");
    let trusted = PluginTrustConfig {
        trusted_keys: vec![trust::TrustedKey::from_file(&keys.public_key).expect("key")],
        ..PluginTrustConfig::default()
    };
    let runtime = Arc::new(Runtime::new(PluginLimits::default(), None).expect("engine"));
    let (_dir, store) = crate::log::scratch_log(&[]);
    let mut settings = toml::Table::new();
    settings.insert("attack".into(), "kv-flood".into());
    let config = ConnectorConfig::ad_hoc(wasm.clone(), settings);
    let plugin = Plugin::load(runtime.clone(), &config, &trusted, &store)
        .await
        .expect("a plugin signed by a trusted key loads");
    assert_eq!(
        plugin.limits.memory_bytes,
        16 * MIB,
        "the manifest's 16 MB, under the limit's 32"
    );
    assert!(matches!(
        plugin.signature(),
        trust::Signature::Signed { .. }
    ));

    let result = plugin.handle(request("same")).await.expect("call");
    let body = result.reply.as_ref().expect("a reply").body.clone();
    let said: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(said["stored"], 0, "{said}");
    assert!(
        said["refusal"]
            .as_str()
            .unwrap_or_default()
            .contains("does not declare kv = true"),
        "{said}"
    );
    assert!(result.kv_writes.is_empty());

    // Not trusted without the key; unsigned refused without the words.
    let refused = Plugin::load(
        runtime.clone(),
        &config,
        &PluginTrustConfig::default(),
        &store,
    )
    .await
    .expect_err("no trusted key");
    assert!(
        refused
            .to_string()
            .contains("not one of the trusted publisher keys"),
        "{refused}"
    );
    let unsigned = ConnectorConfig::ad_hoc(fixture(), toml::Table::new());
    let refused = Plugin::load(runtime, &unsigned, &trusted, &store)
        .await
        .expect_err("unsigned");
    assert!(refused.to_string().contains("is unsigned"), "{refused}");
}
