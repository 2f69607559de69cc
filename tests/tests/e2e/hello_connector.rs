//! The hello connector of `examples/hello-connector`, written in Rust, Python
//! and JavaScript, loaded side by side by the real gateway: the same signed
//! body gives the same balance change from each, a tampered one a 401, and a
//! restart loads the big Python and JavaScript components from the compiled
//! plugin cache instead of compiling them again.
//!
//! The components are built by `make hello-connectors` (`make test` does);
//! this test builds nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use soundbox_e2e::net::serve;
use soundbox_e2e::{Gateway, post, run_cli, workspace};
use soundbox_plugin_sdk::signature::hmac_sha256_hex;

const SAMPLE: &str = include_str!("../../../examples/hello-connector/payload.json");
/// Computed independently of every connector:
/// `openssl dgst -sha256 -hmac s3cret examples/hello-connector/payload.json`
const SAMPLE_SIGNATURE: &str = "2caa8b8650813f6db94b45aee2e03cedf32b161d9d06565b374a57aa798009c0";
const SECRET: &str = "s3cret";
const LANGUAGES: [&str; 3] = ["rust", "python", "js"];
/// How long a wait for a delivery or a log line may take. Each returns as
/// soon as what it waits for is there (well under a second here); the
/// bound is for a CI machine whose two cores also run the suite's other
/// tests.
const PATIENCE: Duration = Duration::from_secs(30);

/// A built hello connector, `target/hello-connector/hello_<language>.wasm`.
fn component(language: &str) -> PathBuf {
    let path = workspace()
        .join("target/hello-connector")
        .join(format!("hello_{language}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make hello-connectors` (make test does)",
        path.display()
    );
    path
}

/// `[[connector]]` tables: `hello-<language>` with the secret, and
/// `hello-<language>-unset` without one.
fn connectors(languages: &[&str]) -> String {
    let mut toml = String::new();
    for language in languages {
        let wasm = component(language);
        toml += &format!(
            "[[connector]]\nname = \"hello-{language}\"\nplugin = \"{}\"\n\
             [connector.config]\nsecret = \"{SECRET}\"\n\n",
            wasm.display()
        );
    }
    for language in languages {
        let wasm = component(language);
        toml += &format!(
            "[[connector]]\nname = \"hello-{language}-unset\"\nplugin = \"{}\"\n\n",
            wasm.display()
        );
    }
    toml
}

/// An HTTP receiver for a `[[forward]]` sink that keeps every event JSON.
struct EventSink {
    url: String,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl EventSink {
    fn start() -> EventSink {
        let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = events.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: String| {
                let kept = kept.clone();
                async move {
                    match serde_json::from_str(&body) {
                        Ok(event) => {
                            kept.lock().expect("events").push(event);
                            axum::http::StatusCode::OK
                        }
                        Err(_) => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let addr = serve(app);
        let url = format!("http://{addr}/events");
        EventSink { url, events }
    }

    /// The first event for `transaction_id`, waiting up to [`PATIENCE`].
    fn event(&self, transaction_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events.lock().expect("events").clone();
            if let Some(event) = events
                .into_iter()
                .find(|e| e["transaction_id"] == transaction_id)
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no event for {transaction_id} reached the sink"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The compiled plugin cache: each entry's name and modification time.
fn cache_entries(gw: &Gateway) -> Vec<(String, SystemTime)> {
    let dir = gw.dir.path().join("data/plugin-cache");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("plugin cache dir exists")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), modified))
        })
        .collect();
    entries.sort();
    entries
}

/// Log lines (JSON) whose message is `message`, as their `fields`.
fn log_fields(logs: &str, message: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .map(|line| line["fields"].clone())
        .collect()
}

/// Waits up to [`PATIENCE`] for a log line with `message` whose fields
/// satisfy `matches`.
fn wait_for_fields(gw: &Gateway, message: &str, matches: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !log_fields(&gw.logs(), message).iter().any(&matches) {
        assert!(
            Instant::now() < deadline,
            "no `{message}` line as expected: {}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn hello_connector_in_rust_python_and_javascript() {
    let sink = EventSink::start();
    // Python's component starts with 12.5 MiB of linear memory and
    // JavaScript's with 9.1 MiB (Rust's: about 1 MiB), so 16 MiB holds each
    // call; the default of 32 does too. Calls take 10-40 ms of CPU in this
    // debug build: the budget leaves room for a loaded test machine.
    let base = format!(
        "[limits]\nmemory_mb = 16\ncpu_budget_ms = 1000\n\n\
         [[forward]]\nname = \"pos\"\nurl = \"{}\"\nretry_initial_ms = 10\nretry_max_ms = 100\n\n",
        sink.url
    );
    // The harness gives a start 120 s; compiling the Python and JavaScript
    // components in a debug build can take longer on a busy machine. So the
    // gateway starts with the Rust connector alone, then `check` (which
    // compiles every plugin into the data dir's cache, as an operator may
    // before a restart) does the slow part, then the restart loads all three.
    // The gateway is stopped while the config changes: running, it would
    // reload the new config and compile the components itself, racing
    // `check` for the same cache entries.
    let mut gw = Gateway::start(&format!("{base}{}", connectors(&["rust"])));
    let status = gw.shut_down();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let config_path = gw.config_path();
    let config = std::fs::read_to_string(&config_path).expect("read config");
    let config = config.replace(&connectors(&["rust"]), &connectors(&LANGUAGES));
    std::fs::write(&config_path, &config).expect("write config");

    let clock = Instant::now();
    let config_arg = config_path.display().to_string();
    let check = run_cli(&["--log-format", "json", "check", "--config", &config_arg]);
    let check_log = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "check failed: {check_log}");
    eprintln!("check took {:.1?}", clock.elapsed());
    let compiled = log_fields(&check_log, "plugin loaded");
    for language in ["python", "js"] {
        let load = compiled
            .iter()
            .find(|l| l["plugin"] == component(language).display().to_string())
            .unwrap_or_else(|| panic!("hello_{language}.wasm loaded: {check_log}"));
        assert_eq!(load["from_cache"], false, "compiled by check: {load}");
        eprintln!("  hello_{language}.wasm compiled in {} ms", load["ms"]);
    }
    let cached = cache_entries(&gw);
    assert_eq!(
        cached.len(),
        3,
        "one compiled entry per component: {cached:?}"
    );

    let clock = Instant::now();
    gw.start_again();
    eprintln!("restart took {:.1?}", clock.elapsed());
    let loads = log_fields(&gw.logs(), "plugin loaded");
    assert_eq!(loads.len(), 6, "one load per connector: {}", gw.logs());
    for load in &loads {
        assert_eq!(
            load["from_cache"], true,
            "the restart compiles nothing: {load}"
        );
        eprintln!("  {} from the cache in {} ms", load["plugin"], load["ms"]);
    }
    assert_eq!(
        cache_entries(&gw),
        cached,
        "the restart rewrites no cache entry"
    );
    assert_eq!(
        log_fields(&gw.logs(), "connector loaded").len(),
        6,
        "{}",
        gw.logs()
    );

    // The same signed sample to each: all accept it; the dedupe key
    // (hello-bank, t1) stores it once.
    for language in LANGUAGES {
        let url = gw.url(&format!("/hooks/hello-{language}"));
        let clock = Instant::now();
        let ok = post(&url, &[("X-Signature", SAMPLE_SIGNATURE)], SAMPLE).await;
        eprintln!(
            "hello-{language}: sample answered in {:.1?}",
            clock.elapsed()
        );
        assert_eq!(ok.status, 200, "hello-{language}: {}", ok.body);
        assert_eq!(ok.json(), serde_json::json!({ "ok": true }));
    }
    let first = sink.event("t1");
    assert_eq!(first["connector"], "hello-rust");
    for language in ["python", "js"] {
        wait_for_fields(&gw, "duplicate balance change ignored", |d| {
            d["connector"] == format!("hello-{language}") && d["transaction_id"] == "t1"
        });
    }

    // A payment of its own per connector: the same event from each language.
    for language in LANGUAGES {
        let id = format!("t-{language}");
        let body = SAMPLE.replace("\"t1\"", &format!("\"{id}\""));
        let signature = hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
        let url = gw.url(&format!("/hooks/hello-{language}"));
        let ok = post(&url, &[("X-Signature", &signature)], body).await;
        assert_eq!(ok.status, 200, "hello-{language}: {}", ok.body);
        assert_eq!(ok.json(), serde_json::json!({ "ok": true }));
        let event = sink.event(&id);
        assert_eq!(event["connector"], format!("hello-{language}"));
        assert_eq!(event["provider"], "hello-bank", "{event}");
        assert_eq!(event["account"], "0001", "{event}");
        assert_eq!(event["amount"], 150_000, "{event}");
        assert_eq!(event["currency"], "VND", "{event}");
        assert_eq!(event["direction"], "in", "{event}");
        assert_eq!(event["content"], "thanh toan don 1", "{event}");
        assert_eq!(event["reference"], serde_json::Value::Null, "{event}");
        assert_eq!(event["occurred_at"], serde_json::Value::Null, "{event}");
    }

    // What each refuses, and how.
    let tampered = SAMPLE.replace("150000", "950000");
    let malformed = "{\"id\": \"t9\",";
    let zero = SAMPLE.replace("150000", "0");
    for language in LANGUAGES {
        let url = gw.url(&format!("/hooks/hello-{language}"));
        let who = format!("hello-{language}");

        let reply = post(&url, &[("X-Signature", SAMPLE_SIGNATURE)], tampered.clone()).await;
        assert_eq!(reply.status, 401, "{who}: {}", reply.body);
        assert_eq!(reply.json()["error"], "unauthorized", "{who}");
        assert_eq!(reply.json()["reason"], "bad signature", "{who}");

        let reply = post(&url, &[], SAMPLE).await;
        assert_eq!(reply.status, 401, "{who}: {}", reply.body);
        assert_eq!(reply.json()["reason"], "missing X-Signature", "{who}");

        let signature = hmac_sha256_hex(SECRET.as_bytes(), malformed.as_bytes());
        let reply = post(&url, &[("X-Signature", &signature)], malformed).await;
        assert_eq!(reply.status, 400, "{who}: {}", reply.body);
        assert_eq!(reply.json()["error"], "bad_request", "{who}");

        let signature = hmac_sha256_hex(SECRET.as_bytes(), zero.as_bytes());
        let reply = post(&url, &[("X-Signature", &signature)], zero.clone()).await;
        assert_eq!(reply.status, 400, "{who}: {}", reply.body);
        assert_eq!(
            reply.json()["reason"],
            "`amount` must be a positive integer (VND)",
            "{who}"
        );

        let unset = gw.url(&format!("/hooks/hello-{language}-unset"));
        let reply = post(&unset, &[("X-Signature", SAMPLE_SIGNATURE)], SAMPLE).await;
        assert_eq!(reply.status, 500, "{who}-unset: {}", reply.body);
        assert_eq!(reply.json()["error"], "connector_failed", "{who}-unset");
        assert_eq!(reply.json()["reason"], "connector failed", "{who}-unset");
        assert!(
            gw.wait_for_log("config key `secret` is not set", PATIENCE),
            "{who}-unset: the plugin's reason is logged"
        );
    }

    // Nothing refused was stored: four payments in all.
    assert_eq!(sink.events.lock().expect("events").len(), 4);
    assert!(
        !gw.logs().contains(SECRET),
        "the secret leaked into the log"
    );
    let status = gw.stop();
    assert!(status.success(), "SIGTERM exit: {status:?}");
}
