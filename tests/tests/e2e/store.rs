//! The store's sink registry with the real binary: a configured sink that
//! failed to start at a reload keeps its backlog through GC passes and, once
//! it starts again, gets every payment it missed; a sink removed from the
//! config keeps its backlog, shown in `queue status`, until `queue forget`.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use soundbox_e2e::admin;
use soundbox_e2e::mqtt::Subscriber;
use soundbox_e2e::{
    CountingSink, Gateway, forward_to, free_port, post, sepay_connector, sepay_transaction_id,
    sepay_webhook, wait_until,
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
        "{sepay}{forward}\n[mqtt]\n{broker_keys}\nretry_initial_ms = 50\nretry_max_ms = 500\n\n\
         [log]\nkeep_settled_hours = 0\nmin_free_disk_mb = 0\n",
        sepay = sepay_connector(),
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

/// [`GC_RUNS`] now, if `/metrics` has it.
async fn gc_runs(gw: &Gateway) -> Option<f64> {
    gw.metrics().await.value(GC_RUNS, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_failed_to_start_keeps_its_backlog_through_gc() {
    let sink = CountingSink::start();
    let mqtt_port = free_port();
    let embedded = format!("broker = \"embedded\"\nembedded_listen = \"127.0.0.1:{mqtt_port}\"");
    let gw = Gateway::builder(&config(&sink.url, &embedded))
        .envs(&[GC_EVERY_200_MS])
        .start();
    let sub = Subscriber::connect(mqtt_port, EVENTS).await;

    // Both sinks deliver.
    post_payments(&gw, 1..=5).await;
    let both = async || sink.arrivals().len() == 5 && sub.transaction_ids(EVENTS).len() == 5;
    assert!(
        wait_until(Duration::from_secs(30), both).await,
        "forwarded {:?}, on MQTT {:?}\n{}",
        sink.arrivals(),
        sub.transaction_ids(EVENTS),
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
    gw.reload(&embedded, &broken).await;
    let not_started = async || {
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
        wait_until(Duration::from_secs(30), async || sink.arrivals().len()
            == 35)
        .await,
        "{} of 35 forwarded\n{}",
        sink.arrivals().len(),
        gw.logs()
    );

    // GC passes run over the MQTT sink's backlog.
    let before = gc_runs(&gw).await.unwrap_or(0.0);
    let mut runs = None;
    let passed = wait_until(Duration::from_secs(30), async || {
        runs = gc_runs(&gw).await;
        runs.is_some_and(|n| n >= before + 3.0)
    })
    .await;
    assert!(
        passed,
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
    assert_eq!(
        sub.transaction_ids(EVENTS),
        expected(1..=5),
        "the MQTT sink was not running"
    );

    // The sink fixed: it resumes from its cursor and sends its whole
    // backlog; each payment reaches each sink once (a QoS 1 resend of the
    // same event is allowed on MQTT, a second event for one payment is not).
    gw.reload(&broken, &embedded).await;
    let all = expected(1..=35);
    let arrived = wait_until(Duration::from_secs(60), async || {
        sub.transaction_ids(EVENTS) == all
    })
    .await;
    assert!(
        arrived,
        "never on MQTT: {:?}\n{}",
        all.difference(&sub.transaction_ids(EVENTS))
            .collect::<Vec<_>>(),
        gw.logs()
    );
    assert_eq!(sub.distinct_ids(EVENTS).len(), 35, "one event per payment");
    sink.assert_each_once(&all, Duration::from_millis(500), &gw)
        .await;
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_removed_from_the_config_keeps_its_backlog_until_forgotten() {
    let sink = CountingSink::start();
    // A second forward to a port nothing listens on: its payments wait.
    let down = format!(
        "[[forward]]\nname = \"old\"\nurl = \"http://127.0.0.1:{}/\"\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        free_port()
    );
    let gw = Gateway::start(&format!(
        "{}{}{down}",
        sepay_connector(),
        forward_to(&sink.url)
    ));
    post_payments(&gw, 1..=3).await;
    assert!(
        wait_until(Duration::from_secs(30), async || sink.arrivals().len() == 3).await,
        "{}",
        gw.logs()
    );

    // Removed from the config: still listed, with its backlog, as not configured.
    gw.reload(&down, "").await;
    let report = gw.queue_status();
    let old = admin::sink(&report, "old").expect("`old` still in queue status");
    assert_eq!(old["pending"], 3, "{report}");
    assert_eq!(old["configured"], false, "{report}");
    assert_eq!(
        admin::sink(&report, "pos").expect("pos")["configured"],
        true
    );

    // A configured sink cannot be forgotten; a removed one can, once.
    let (code, _, err) = gw.queue(&["forget", "pos"]);
    assert_ne!(code, 0, "forgetting a configured sink");
    assert!(err.contains("in the config"), "{err}");
    let (code, _, err) = gw.queue(&["forget", "old"]);
    assert_eq!(code, 0, "{err}");
    assert!(admin::sink(&gw.queue_status(), "old").is_none());
    let (code, _, _) = gw.queue(&["forget", "old"]);
    assert_ne!(code, 0, "already forgotten");
}
