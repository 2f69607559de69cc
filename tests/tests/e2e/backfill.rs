//! SePay webhooks and the SePay poller together through the real gateway:
//! the poller fills what the webhooks missed, and each payment is delivered
//! once however many paths saw it.

use std::collections::BTreeSet;
use std::time::Duration;

use soundbox_e2e::sepay_api::{SepayApi, SepayTx, vietnam_minutes_ago};
use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post};

const TOKEN: &str = "e2e-backfill-token";

fn config(api: &SepayApi, sink: &CountingSink, per_page: u32, log_keys: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{webhook}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n\
         [[connector]]\nname = \"sepay-poll\"\nplugin = \"{poll}\"\npoll_interval_secs = 1\n\
         allowed_hosts = [\"{host}\"]\n\
         [connector.config]\napi_token = \"{TOKEN}\"\nbase_url = \"{api}\"\nper_page = {per_page}\n\n\
         {forward}\
         {log_keys}",
        webhook = plugin("sepay_webhook").display(),
        poll = plugin("sepay_poll").display(),
        api = api.url,
        host = api.url.trim_start_matches("http://"),
        forward = forward_to(&sink.url),
    )
}

/// Waits until `sink` has every id in `expected`, then a little longer for
/// duplicates that should not come, and checks each arrived exactly once.
async fn assert_each_delivered_once(
    sink: &CountingSink,
    expected: &BTreeSet<String>,
    gw: &Gateway,
) {
    assert!(
        sink.wait_for(expected.len(), Duration::from_secs(60)),
        "{} of {} arrived\n{}",
        sink.arrivals().len(),
        expected.len(),
        gw.logs()
    );
    // Two more poll sweeps (1 s interval) re-fetch the overlap.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got: BTreeSet<String> = sink
        .arrivals()
        .iter()
        .map(|a| a.transaction_id.clone())
        .collect();
    assert_eq!(&got, expected);
    assert_eq!(
        sink.deliveries(),
        expected.len() as u64,
        "each payment delivered once"
    );
}

/// The story of a shop whose internet (or gateway) was down longer than
/// SePay retries webhooks: payments before the outage come by webhook, the
/// ones during it only from SePay's API, the ones after by both; a late
/// webhook retry of a backfilled payment is acknowledged and ignored.
#[tokio::test(flavor = "multi_thread")]
async fn webhooks_and_the_poller_together_deliver_each_payment_once() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let mut gw = Gateway::start(&config(&api, &sink, 100, ""));
    let mut expected = BTreeSet::new();
    let mut pay = |n: u64, minutes_ago: u64| {
        let tx = SepayTx::incoming(n, 10_000 * n).at(&vietnam_minutes_ago(minutes_ago));
        expected.insert(tx.transaction_id());
        api.add(tx.clone());
        tx
    };

    // Before the outage: webhooks arrive.
    for n in 1..=5 {
        let tx = pay(n, 90 - n);
        let r = post(&gw.url("/hooks/sepay"), &[], tx.webhook_body()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // The outage (a clean stop: a SIGKILL could make the forward sink send
    // one payment twice, which is at-least-once delivery, not this test's
    // subject): every webhook fails, and SePay gives up on them.
    assert!(gw.shut_down().success());
    let mut missed = Vec::new();
    for n in 6..=15 {
        let tx = pay(n, 80 - n);
        let sent = reqwest::Client::new()
            .post(gw.url("/hooks/sepay"))
            .body(tx.webhook_body())
            .send()
            .await;
        assert!(sent.is_err(), "the gateway is down");
        missed.push(tx);
    }

    // Back up: the poller finds what SePay never delivered.
    gw.start_again();
    for n in 16..=20 {
        let tx = pay(n, 21 - n);
        let r = post(&gw.url("/hooks/sepay"), &[], tx.webhook_body()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_each_delivered_once(&sink, &expected, &gw).await;

    // SePay's very late retry of one it had given up on: accepted, not resent.
    let late = post(&gw.url("/hooks/sepay"), &[], missed[1].webhook_body()).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(late.json(), serde_json::json!({ "success": true }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.deliveries(), expected.len() as u64);
    assert!(
        gw.logs().contains("duplicate balance change ignored"),
        "{}",
        gw.logs()
    );
}

/// A poll whose payments the log cannot store (disk full) must not move the
/// poller's cursor: it writes the cursor in the same call, and the gateway
/// applies it only once the payments are stored. With two per page, a cursor
/// that moved past page 1 would lose the newest payments for good (later
/// sweeps start from the newest one stored, minus a few minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_the_log_cannot_store_does_not_move_the_cursor() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let mut expected = BTreeSet::new();
    for n in 1..=6 {
        let tx = SepayTx::incoming(n, 10_000 * n).at(&vietnam_minutes_ago(60 * n));
        expected.insert(tx.transaction_id());
        api.add(tx);
    }
    // Far more free space than any machine has: every append is refused.
    let mut gw = Gateway::start(&config(
        &api,
        &sink,
        2,
        "\n[log]\nmin_free_disk_mb = 1000000000\n",
    ));
    // Several polls (and so several pages' worth of cursor writes) refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gw.logs().matches("could not store polled changes").count() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sink.deliveries(), 0);

    // Space comes back.
    let text = std::fs::read_to_string(gw.config_path()).expect("read config");
    std::fs::write(
        gw.config_path(),
        text.replace("min_free_disk_mb = 1000000000", "min_free_disk_mb = 1"),
    )
    .expect("write config");
    gw.kill_and_restart();
    assert_each_delivered_once(&sink, &expected, &gw).await;
}
