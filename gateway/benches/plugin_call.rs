//! One `handle` call of the SePay plugin on a ~500-byte body, through the
//! runtime with a fresh instance per call, against the same parsing compiled
//! natively. Run: `cargo bench -p soundbox-gateway --bench plugin_call`
//! (needs `make plugins`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sepay_webhook::SepayConnector;
use soundbox_gateway::config::{ConnectorConfig, PluginLimits};
use soundbox_gateway::connectors::{IncomingRequest, Plugin, Runtime};
use soundbox_plugin_sdk::testing::TestHost;
use soundbox_plugin_sdk::{HttpRequest, WebhookConnector};

const WASM_CALLS: usize = 5_000;
const NATIVE_CALLS: usize = 50_000;

fn body() -> Vec<u8> {
    let sample = include_str!("../../examples/payloads/sepay-webhook.json");
    let mut json: serde_json::Value = serde_json::from_str(sample).expect("sample");
    let base = serde_json::to_vec(&json).expect("json").len();
    json["description"] = serde_json::Value::String("x".repeat(500 - base));
    let body = serde_json::to_vec(&json).expect("json");
    assert_eq!(body.len(), 500);
    body
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let total: Duration = samples.iter().sum();
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        mean: total / samples.len() as u32,
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let body = body();
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/sepay_webhook.wasm");
    assert!(wasm.is_file(), "build the plugins first: make plugins");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let scratch = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(scratch.path())
        .open()
        .expect("sled");
    let mut settings = toml::Table::new();
    settings.insert("api_key".into(), "k".into());
    let config = ConnectorConfig::ad_hoc(wasm, settings);
    let runtime = Arc::new(Runtime::new(PluginLimits::default(), None).expect("runtime"));
    let plugin = rt
        .block_on(Plugin::load(runtime, &config, &db))
        .expect("load plugin");
    let request = IncomingRequest {
        method: "POST".into(),
        path: "/hooks/test".into(),
        query: String::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "Apikey k".into()),
        ],
        body: body.clone(),
    };

    let wasm_samples = rt.block_on(async {
        for _ in 0..200 {
            plugin.handle(request.clone()).await.expect("warm-up call");
        }
        let mut samples = Vec::with_capacity(WASM_CALLS);
        for _ in 0..WASM_CALLS {
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
        HttpRequest::post_json(body.clone()).with_header("Authorization", "Apikey k");
    let native_samples = host.run(|| {
        for _ in 0..1000 {
            SepayConnector::handle(native_request.clone()).expect("warm-up");
        }
        let mut samples = Vec::with_capacity(NATIVE_CALLS);
        for _ in 0..NATIVE_CALLS {
            let req = native_request.clone();
            let t = Instant::now();
            let outcome = SepayConnector::handle(req).expect("native call");
            samples.push(t.elapsed());
            assert_eq!(outcome.changes.len(), 1);
        }
        samples
    });

    let w = stats(wasm_samples);
    let n = stats(native_samples);
    println!("plugin_call: SePay webhook handle(), 500-byte body, api-key auth");
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "mean µs"
    );
    println!(
        "{:<34} {:>10.1} {:>10.1} {:>10.1}",
        "wasm, fresh instance per call",
        micros(w.p50),
        micros(w.p99),
        micros(w.mean)
    );
    println!(
        "{:<34} {:>10.2} {:>10.2} {:>10.2}",
        "native (same crate, same parsing)",
        micros(n.p50),
        micros(n.p99),
        micros(n.mean)
    );
    println!(
        "ratio wasm/native: p50 {:.1}x, p99 {:.1}x, mean {:.1}x",
        micros(w.p50) / micros(n.p50),
        micros(w.p99) / micros(n.p99),
        micros(w.mean) / micros(n.mean)
    );
}
