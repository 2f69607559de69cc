//! The store's sink registry with the real binary: a configured sink that
//! failed to start at a reload keeps its backlog through GC passes and, once
//! it starts again, gets every payment it missed; a sink removed from the
//! config keeps its backlog, shown in `queue status`, until `queue forget`.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use soundbox_e2e::mqtt::Subscriber;
use soundbox_e2e::{
    CountingSink, Gateway, forward_to, free_port, plugin, post, sepay_transaction_id, sepay_webhook,
};

/// GC every 200 ms instead of every 10 minutes (a test knob of the gateway).
const GC_EVERY_200_MS: (&str, &str) = ("SOUNDBOX_TEST_GC_EVERY_MS", "200");
/// Where the MQTT sink publishes payments (default prefix, gateway `e2e`).
const EVENTS: &str = "soundbox/e2e/events";
/// The counter of GC passes on the admin server's `/metrics`.
const GC_RUNS: &str = "soundbox_log_gc_runs_total";

/// A SePay connector, a forward to `sink_url`, `[mqtt]` with `broker_keys`,
/// and a log that keeps nothing once it is settled.
fn config(sink_url: &str, broker_keys: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n\
         {forward}\n[mqtt]\n{broker_keys}\nretry_initial_ms = 50\nretry_max_ms = 500\n\n\
         [log]\nkeep_settled_hours = 0\nmin_free_disk_mb = 0\n",
        plugin("sepay_webhook").display(),
        forward = forward_to(sink_url),
    )
}

/// Posts webhooks `ids` one by one; each must be acknowledged with 200.
async fn post_payments(gw: &Gateway, ids: RangeInclusive<u64>) {
    for id in ids {
        let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(id, 1_000 + id)).await;
        assert_eq!(r.status, 200, "payment {id}: {}", r.body);
    }
}

fn expected(ids: RangeInclusive<u64>) -> BTreeSet<String> {
    ids.map(sepay_transaction_id).collect()
}

/// The distinct transaction ids the subscriber got on [`EVENTS`].
fn on_mqtt(sub: &Subscriber) -> BTreeSet<String> {
    sub.on(EVENTS)
        .iter()
        .filter_map(|m| m.json()["transaction_id"].as_str().map(str::to_string))
        .collect()
}

/// Waits up to `timeout` until `done` holds; whether it did.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Replaces `from` by `to` in the config file the way an editor does (a new
/// file renamed over it) and waits until the gateway applied the change.
async fn reload(gw: &Gateway, from: &str, to: &str) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains(from), "{from} not in the config");
    let reloads = || gw.logs().matches("config reloaded").count();
    let before = reloads();
    let tmp = path.with_extension("toml.new");
    std::fs::write(&tmp, text.replace(from, to)).expect("write config");
    std::fs::rename(&tmp, &path).expect("rename config");
    assert!(
        wait_until(Duration::from_secs(30), || reloads() > before).await,
        "the change was not applied\n{}",
        gw.logs()
    );
}

/// [`GC_RUNS`] now, if `/metrics` has it.
async fn gc_runs(gw: &Gateway) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", gw.admin_addr))
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == GC_RUNS)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .reduce(|a, b| a + b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_failed_to_start_keeps_its_backlog_through_gc() {
    let sink = CountingSink::start();
    let mqtt_port = free_port();
    let embedded = format!("broker = \"embedded\"\nembedded_listen = \"127.0.0.1:{mqtt_port}\"");
    let gw = Gateway::start_with_env(&config(&sink.url, &embedded), &[GC_EVERY_200_MS]);
    let sub = Subscriber::connect(mqtt_port, EVENTS).await;

    // Both sinks deliver.
    post_payments(&gw, 1..=5).await;
    let both = || sink.arrivals().len() == 5 && on_mqtt(&sub).len() == 5;
    assert!(
        wait_until(Duration::from_secs(30), both).await,
        "forwarded {:?}, on MQTT {:?}\n{}",
        sink.arrivals(),
        on_mqtt(&sub),
        gw.logs()
    );

    // A reload with a CA file that holds no certificate: the config is
    // valid (the file exists), the MQTT sink cannot be built, the forward
    // runs on.
    let bad_ca = gw.dir.path().join("bad-ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").expect("write CA file");
    let broken = format!(
        "broker = \"mqtts://127.0.0.1:{mqtt_port}\"\nca_file = \"{}\"",
        bad_ca.display()
    );
    reload(&gw, &embedded, &broken).await;
    let not_started = || {
        gw.logs()
            .lines()
            .any(|l| l.contains(r#""level":"ERROR""#) && l.contains("bad-ca.pem"))
    };
    assert!(
        wait_until(Duration::from_secs(10), not_started).await,
        "no error naming the CA file\n{}",
        gw.logs()
    );

    // While it is not running, payments are acknowledged and forwarded.
    post_payments(&gw, 6..=35).await;
    assert!(
        wait_until(Duration::from_secs(30), || sink.arrivals().len() == 35).await,
        "{} of 35 forwarded\n{}",
        sink.arrivals().len(),
        gw.logs()
    );

    // GC passes run over the MQTT sink's backlog.
    let before = gc_runs(&gw).await.unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = gc_runs(&gw).await;
        if runs.is_some_and(|n| n >= before + 3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            match runs {
                None => format!(
                    "no {GC_RUNS} on /metrics: the gateway must count GC passes there \
                     and run them every {} ms under {}",
                    GC_EVERY_200_MS.1, GC_EVERY_200_MS.0
                ),
                Some(n) => format!("{GC_RUNS} went from {before} to {n}, not up by 3, in 30 s"),
            }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        on_mqtt(&sub),
        expected(1..=5),
        "the MQTT sink was not running"
    );

    // The sink fixed: it resumes from its cursor and sends its whole
    // backlog; each payment reaches each sink once (a QoS 1 resend of the
    // same event is allowed on MQTT, a second event for one payment is not).
    reload(&gw, &broken, &embedded).await;
    let all = expected(1..=35);
    let arrived = wait_until(Duration::from_secs(60), || on_mqtt(&sub) == all).await;
    assert!(
        arrived,
        "never on MQTT: {:?}\n{}",
        all.difference(&on_mqtt(&sub)).collect::<Vec<_>>(),
        gw.logs()
    );
    assert_eq!(sub.distinct_ids(EVENTS).len(), 35, "one event per payment");
    sink.assert_each_once(&all, Duration::from_millis(500), &gw)
        .await;
    assert!(
        !gw.logs().contains("panicked"),
        "the gateway panicked:\n{}",
        gw.logs()
    );
}

/// `queue status --json` through the CLI (the running gateway answers it).
fn queue_status(gw: &Gateway) -> serde_json::Value {
    let config = gw.config_path().display().to_string();
    let out = soundbox_e2e::run_cli(&["queue", "--config", &config, "status", "--json"]);
    assert!(
        out.status.success(),
        "queue status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("queue status JSON")
}

fn sink_status<'a>(report: &'a serde_json::Value, sink: &str) -> Option<&'a serde_json::Value> {
    report["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["sink"] == sink))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_removed_from_the_config_keeps_its_backlog_until_forgotten() {
    let sink = CountingSink::start();
    // A second forward to a port nothing listens on: its payments wait.
    let down = format!(
        "[[forward]]\nname = \"old\"\nurl = \"http://127.0.0.1:{}/\"\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        free_port()
    );
    let sepay = format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n",
        plugin("sepay_webhook").display()
    );
    let gw = Gateway::start(&format!("{sepay}{}{down}", forward_to(&sink.url)));
    post_payments(&gw, 1..=3).await;
    assert!(
        wait_until(Duration::from_secs(30), || sink.arrivals().len() == 3).await,
        "{}",
        gw.logs()
    );

    // Removed from the config: still listed, with its backlog, as not configured.
    reload(&gw, &down, "").await;
    let report = queue_status(&gw);
    let old = sink_status(&report, "old").expect("`old` still in queue status");
    assert_eq!(old["pending"], 3, "{report}");
    assert_eq!(old["configured"], false, "{report}");
    assert_eq!(
        sink_status(&report, "pos").expect("pos")["configured"],
        true
    );

    // A configured sink cannot be forgotten; a removed one can, once.
    let config = gw.config_path().display().to_string();
    let forget =
        |sink: &str| soundbox_e2e::run_cli(&["queue", "--config", &config, "forget", sink]);
    let refused = forget("pos");
    assert!(!refused.status.success(), "forgetting a configured sink");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in the config"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let forgot = forget("old");
    assert!(
        forgot.status.success(),
        "{}",
        String::from_utf8_lossy(&forgot.stderr)
    );
    assert!(sink_status(&queue_status(&gw), "old").is_none());
    assert!(!forget("old").status.success(), "already forgotten");
}
