//! The durable queue from the outside: dead letters and `queue` commands
//! (gateway running and stopped), a full store answering 503 without losing
//! anything, and a damaged store that does not stop the gateway.

use std::time::{Duration, Instant};

use soundbox_e2e::{
    CountingSink, Gateway, forward_to, post, sepay_connector, sepay_transaction_id, sepay_webhook,
    wait_until_blocking,
};

fn config(url: &str, extra: &str) -> String {
    format!(
        "{}\
         {forward}{extra}",
        sepay_connector(),
        forward = forward_to(url),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_retried_while_running_and_while_stopped() {
    let sink = CountingSink::start();
    // A path the receiver does not have: 404, a permanent failure.
    let broken = sink.url.replace("/events", "/missing");
    let mut gw = Gateway::start(&config(&broken, ""));
    for id in [1, 2] {
        let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(id, 50_000)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Running: the CLI goes through the admin API.
    assert!(
        wait_until_blocking(Duration::from_secs(20), || {
            gw.queue_status()["sinks"][0]["dead_letters"] == 2
        }),
        "timed out waiting for two dead letters"
    );
    let (code, out, err) = gw.queue(&["list", "--state", "dead", "--json"]);
    assert_eq!(code, 0, "{err}");
    let items: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(items.as_array().map(Vec::len), Some(2), "{out}");
    assert!(
        items[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("404"),
        "{out}"
    );
    let (code, out, _) = gw.queue(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("pos") && out.contains("log: healthy"), "{out}");

    // Stopped: the CLI opens the store itself and sees the same.
    gw.kill();
    let status = gw.queue_status();
    assert_eq!(status["sinks"][0]["dead_letters"], 2, "{status}");
    let (code, _, err) = gw.queue(&["retry", "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a dead letter"), "{err}");

    // Fix the URL, start again, retry from the CLI while running.
    gw.edit_config(&broken, &sink.url);
    gw.kill_and_restart();
    let (code, out, err) = gw.queue(&["retry", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requeued 2"), "{out}");
    assert!(sink.wait_for(2, Duration::from_secs(20)), "{}", gw.logs());
    let status = gw.queue_status();
    assert_eq!(status["sinks"][0]["dead_letters"], 0, "{status}");
    assert_eq!(status["sinks"][0]["pending"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_answers_503_and_loses_nothing() {
    let sink = CountingSink::start();
    // Far more free space than any machine has: every append is refused.
    let mut gw = Gateway::start(&config(
        &sink.url,
        "\n[log]\nmin_free_disk_mb = 1000000000\n",
    ));
    let body = sepay_webhook(7, 70_000);
    let refused = post(&gw.url("/hooks/sepay"), &[], body.clone()).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "log_full");
    assert_eq!(refused.json()["reason"], "storage full, retry later");
    assert!(
        gw.wait_for_log("MiB free", Duration::from_secs(5)),
        "the detail is logged"
    );

    // Space comes back; the provider retries; the payment goes through once.
    gw.edit_config("min_free_disk_mb = 1000000000", "min_free_disk_mb = 1");
    gw.kill_and_restart();
    let accepted = post(&gw.url("/hooks/sepay"), &[], body).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    assert!(sink.wait_for(1, Duration::from_secs(20)));
    assert_eq!(sink.arrivals()[0].transaction_id, sepay_transaction_id(7));
}

/// What [`stopped_with_a_damaged_store`] writes over sled's config file.
const DAMAGE: &[u8] = b"\xff\xfe not a sled config";

/// A gateway that stored and delivered one payment, then was killed, and
/// whose store sled can no longer open.
async fn stopped_with_a_damaged_store(sink: &CountingSink) -> Gateway {
    let mut gw = Gateway::start(&config(&sink.url, ""));
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 10_000)).await;
    assert_eq!(r.status, 200);
    assert!(sink.wait_for(1, Duration::from_secs(20)));
    gw.kill();
    let conf = gw.dir.path().join("data/state/conf");
    std::fs::write(conf, DAMAGE).expect("damage");
    gw
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_moved_aside_and_the_gateway_keeps_serving() {
    let sink = CountingSink::start();
    let mut gw = stopped_with_a_damaged_store(&sink).await;
    gw.kill_and_restart();
    assert!(
        gw.wait_for_log("moving it aside", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(2, 20_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(sink.wait_for(2, Duration::from_secs(20)));
    let status = gw.queue_status();
    let aside = status["health"]["damaged_store"]
        .as_str()
        .expect("reported");
    assert!(std::path::Path::new(aside).exists(), "{aside}");
    let (_, out, _) = gw.queue(&["status"]);
    assert!(out.contains("DEGRADED"), "{out}");
}

/// `queue status` only looks: on a damaged store (gateway stopped) it
/// stops with what to do and leaves the store, dedupe keys and cursors
/// included, where it is. Only `run` moves it aside.
#[tokio::test(flavor = "multi_thread")]
async fn queue_status_leaves_a_damaged_store_for_run_to_recover() {
    let sink = CountingSink::start();
    let mut gw = stopped_with_a_damaged_store(&sink).await;
    let data = gw.dir.path().join("data");

    let (code, _, err) = gw.queue(&["status"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be opened") && err.contains("soundbox-gateway run"),
        "says what to do: {err}"
    );
    let entries: Vec<String> = std::fs::read_dir(&data)
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !entries.iter().any(|n| n.starts_with("state.damaged")),
        "nothing moved aside: {entries:?}"
    );
    assert_eq!(
        std::fs::read(data.join("state/conf")).expect("conf"),
        DAMAGE,
        "the store is as it was"
    );

    gw.kill_and_restart();
    assert!(
        gw.wait_for_log("moving it aside", Duration::from_secs(5)),
        "run recovers: {}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_delivery_finish_within_the_grace_period() {
    let sink = CountingSink::start();
    sink.set_delay(Duration::from_millis(800));
    let mut gw = Gateway::builder(&config(&sink.url, ""))
        .gateway_keys("shutdown_grace_secs = 5")
        .start();
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 10_000)).await;
    assert_eq!(r.status, 200);
    assert!(gw.wait_for_log("sink started", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200)); // the delivery is in flight
    let status = gw.restart();
    assert!(status.success(), "{status:?}");
    assert_eq!(sink.deliveries(), 1, "finished before exit: {}", gw.logs());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.deliveries(), 1, "and not sent again after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_a_slow_delivery_after_the_grace_period_and_resends_it_later() {
    let sink = CountingSink::start();
    sink.set_delay(Duration::from_secs(30));
    let mut gw = Gateway::builder(&config(&sink.url, ""))
        .gateway_keys("shutdown_grace_secs = 1")
        .start();
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 10_000)).await;
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let stop_took = {
        let status = gw.restart();
        assert!(status.success(), "{status:?}");
        started.elapsed()
    };
    assert!(
        stop_took < Duration::from_secs(10),
        "took {stop_took:?} to stop"
    );
    sink.set_delay(Duration::ZERO);
    assert!(sink.wait_for(1, Duration::from_secs(20)), "{}", gw.logs());
}
