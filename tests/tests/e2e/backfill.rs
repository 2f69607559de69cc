//! SePay webhooks and the SePay poller (`mode = "backfill"`, the default)
//! together through the real gateway: the poller reports only what the
//! webhook failed to deliver and can no longer deliver, so each payment
//! reaches the log once, under the webhook's key or the poller's. The retry
//! horizon is 3 s here (`webhook_retry_horizon_mins = 0.05`) instead of 40
//! minutes, so "40 minutes late" and "SePay gave up" take seconds.

use std::collections::BTreeSet;
use std::time::Duration;

use soundbox_e2e::sepay_api::{SepayApi, SepayTx, vietnam_minutes_ago};
use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin, post, wait_until};

const TOKEN: &str = "e2e-backfill-token";

fn config(api: &SepayApi, sink: &CountingSink, poll_keys: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{webhook}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n\
         [[connector]]\nname = \"sepay-poll\"\nplugin = \"{poll}\"\npoll_interval_secs = 1\n\
         allowed_hosts = [\"{host}\"]\n\
         [connector.config]\napi_token = \"{TOKEN}\"\nbase_url = \"{api}\"\nwebhook_retry_horizon_mins = 0.05\n{poll_keys}\n\n\
         {forward}\
         {extra}",
        webhook = plugin("sepay_webhook").display(),
        poll = plugin("sepay_poll").display(),
        api = api.url,
        host = api.url.trim_start_matches("http://"),
        forward = forward_to(&sink.url),
    )
}

/// SePay delivers `tx`'s webhook to the gateway, and then marks it so.
async fn deliver(gw: &Gateway, api: &SepayApi, tx: &SepayTx) {
    let r = post(&gw.url("/hooks/sepay"), &[], tx.webhook_body()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    api.set_webhook_success(&tx.id, true);
}

/// Every id in `expected` arrived once, and nothing more within 7 s
/// (see [`CountingSink::assert_each_once`]).
async fn each_once(sink: &CountingSink, expected: &BTreeSet<String>, gw: &Gateway) {
    sink.assert_each_once(expected, Duration::from_secs(7), gw)
        .await;
}

/// A transaction SePay records 40 minutes late (its bank time is 40
/// minutes old) while every webhook attempt fails: the poller finds it in
/// its window, waits out the horizon, and it is delivered once. Beside it, one
/// whose webhook fails at first and gets through on a retry within the
/// horizon: delivered once, by the webhook.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_transaction_whose_webhook_fails_is_delivered_once() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&api, &sink, "", ""));
    let late = SepayTx::incoming(1, 120_000).at(&vietnam_minutes_ago(40));
    api.add(late.clone());
    let retried = SepayTx::incoming(2, 80_000);
    api.add(retried.clone());
    // SePay's retry gets through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    deliver(&gw, &api, &retried).await;

    let expected = BTreeSet::from([late.poll_key(), retried.webhook_key()]);
    each_once(&sink, &expected, &gw).await;
    assert!(gw.logs().contains("can no longer arrive"), "{}", gw.logs());
}

/// Two distinct transfers of the same amount with the same bank reference,
/// each delivered by webhook with its own SePay id: two payments.
#[tokio::test(flavor = "multi_thread")]
async fn two_transfers_sharing_a_reference_and_amount_are_delivered_twice() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&api, &sink, "", ""));
    let date = vietnam_minutes_ago(0);
    let a = SepayTx::incoming(11, 50_000)
        .at(&date)
        .reference(Some("FT24001"));
    let b = SepayTx::incoming(12, 50_000)
        .at(&date)
        .reference(Some("FT24001"));
    // And two more of one amount in one second with no reference at all.
    let c = SepayTx::incoming(13, 20_000).at(&date).reference(None);
    let d = SepayTx::incoming(14, 20_000).at(&date).reference(None);
    for tx in [&a, &b, &c, &d] {
        api.add(tx.clone());
        deliver(&gw, &api, tx).await;
    }
    let expected = [&a, &b, &c, &d].map(SepayTx::webhook_key).into();
    each_once(&sink, &expected, &gw).await;
}

/// A payment delivered by webhook that the poller also sees (SePay lists it
/// with `webhook_success = 1`, and without `webhook_success=0` too): once.
/// SePay's own retry of the same webhook is acknowledged and ignored.
#[tokio::test(flavor = "multi_thread")]
async fn a_payment_seen_by_webhook_and_poller_is_delivered_once() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&api, &sink, "", ""));
    let tx = SepayTx::incoming(21, 75_000);
    api.add(tx.clone());
    deliver(&gw, &api, &tx).await;
    let again = post(&gw.url("/hooks/sepay"), &[], tx.webhook_body()).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let expected = BTreeSet::from([tx.webhook_key()]);
    each_once(&sink, &expected, &gw).await;
    assert!(
        api.queries()
            .iter()
            .all(|q| q.get("webhook_success").map(String::as_str) == Some("0")),
        "backfill reads only failed webhooks"
    );
}

/// The story of a shop whose gateway was down longer than SePay retries
/// webhooks: payments before the outage come by webhook, the ones during it
/// only from SePay's API (after the horizon), the ones after by webhook.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_longer_than_sepays_retries_loses_nothing() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let mut gw = Gateway::start(&config(&api, &sink, "per_page = 5", ""));
    let mut expected = BTreeSet::new();
    let tx = |n: u64, minutes_ago: u64| {
        SepayTx::incoming(n, 10_000 * n).at(&vietnam_minutes_ago(minutes_ago))
    };
    for n in 1..=5 {
        let t = tx(n, 90 - n);
        api.add(t.clone());
        deliver(&gw, &api, &t).await;
        expected.insert(t.webhook_key());
    }
    assert!(gw.shut_down().success());
    // Every webhook attempt fails; SePay gives up (webhook_success stays 0).
    for n in 6..=17 {
        let t = tx(n, 80 - n);
        api.add(t.clone());
        expected.insert(t.poll_key());
    }
    gw.start_again();
    for n in 18..=20 {
        let t = tx(n, 21 - n);
        api.add(t.clone());
        deliver(&gw, &api, &t).await;
        expected.insert(t.webhook_key());
    }
    each_once(&sink, &expected, &gw).await;
}

/// A poll whose payments the log cannot store (disk full) must not move the
/// poller's state: it writes its ledger in the same call, and the gateway
/// applies it only once the payments are stored. Were it applied anyway,
/// the ledger would say "reported" and the payments would be lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_poll_the_log_cannot_store_does_not_move_the_state() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let mut expected = BTreeSet::new();
    for n in 1..=6 {
        let t = SepayTx::incoming(n, 10_000 * n).at(&vietnam_minutes_ago(60 * n));
        expected.insert(t.poll_key());
        api.add(t);
    }
    // Far more free space than any machine has: every append is refused.
    let mut gw = Gateway::start(&config(
        &api,
        &sink,
        "per_page = 2",
        "\n[log]\nmin_free_disk_mb = 1000000000\ndedupe_retention_days = 3650\n",
    ));
    let refused = wait_until(Duration::from_secs(30), async || {
        gw.logs().matches("could not store polled changes").count() >= 3
    })
    .await;
    assert!(refused, "{}", gw.logs());
    assert_eq!(sink.deliveries(), 0);

    // Space comes back.
    gw.edit_config("min_free_disk_mb = 1000000000", "min_free_disk_mb = 1");
    gw.kill_and_restart();
    each_once(&sink, &expected, &gw).await;
}
