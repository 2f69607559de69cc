//! The SePay poller alone (`mode = "all"`, a shop with no webhook) through
//! the real gateway, against the fake SePay API v2; and a rotated API token.

use std::collections::BTreeSet;
use std::time::Duration;

use soundbox_e2e::sepay_api::{SepayApi, SepayTx, vietnam_minutes_ago};
use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin};

const TOKEN: &str = "e2e-sepay-token";

fn config(api: &SepayApi, sink: &CountingSink, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay-poll\"\nplugin = \"{}\"\npoll_interval_secs = 1\n\
         allowed_hosts = [\"{host}\"]\n\
         [connector.config]\napi_token = \"{TOKEN}\"\nbase_url = \"{}\"\n{extra}\n\n\
         {forward}",
        plugin("sepay_poll").display(),
        api.url,
        host = api.url.trim_start_matches("http://"),
        forward = forward_to(&sink.url),
    )
}

/// Every id in `expected` arrived once, and nothing more within 3 s
/// (see [`CountingSink::assert_each_once`]).
async fn each_once(sink: &CountingSink, expected: &BTreeSet<String>, gw: &Gateway) {
    sink.assert_each_once(expected, Duration::from_secs(3), gw)
        .await;
}

/// A day of payments (more than a page) is read by date on the first run,
/// then the cursor (`since_id`) follows what SePay records, across a
/// restart, including one recorded late with an old bank time; the
/// reconcile sweeps (every 6 s here) re-read the window and add nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_poller_alone_delivers_every_transaction_once_across_a_restart() {
    const N: u64 = 150;
    let api = SepayApi::start(TOKEN);
    let mut expected = BTreeSet::new();
    for n in 1..=N {
        // From 5 minutes to 12.5 hours ago, oldest recorded first.
        let tx = SepayTx::incoming(n, 1_000 * n).at(&vietnam_minutes_ago(5 * (N + 1 - n)));
        expected.insert(tx.poll_key());
        api.add(tx);
    }
    api.rate_limit_next(1);

    let sink = CountingSink::start();
    let mut gw = Gateway::start(&config(&api, &sink, "mode = \"all\"\nreconcile_mins = 0.1"));
    each_once(&sink, &expected, &gw).await;
    assert_eq!(api.rate_limited(), 1);
    assert!(gw.logs().contains("rate-limited"), "{}", gw.logs());
    let queries = api.queries();
    assert!(
        queries.iter().any(|q| q.contains_key("since_id")
            && q.get("transaction_date_sort").map(String::as_str) == Some("asc")),
        "the cursor is followed: {queries:?}"
    );

    // Off for a while: SePay records more, one of them late (bank time
    // 3 hours ago, older than the cursor's).
    assert!(gw.shut_down().success());
    for n in N + 1..=N + 5 {
        let tx = SepayTx::incoming(n, 1_000 * n).at(&vietnam_minutes_ago(1));
        expected.insert(tx.poll_key());
        api.add(tx);
    }
    let late = SepayTx::incoming(N + 6, 99_000).at(&vietnam_minutes_ago(180));
    expected.insert(late.poll_key());
    api.add(late);
    gw.start_again();
    each_once(&sink, &expected, &gw).await;
    // Past a reconcile sweep: nothing new.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(sink.deliveries(), expected.len() as u64);
    assert!(
        !gw.logs().contains(TOKEN),
        "the API token leaked into the log"
    );
}

/// A token rotated in SePay's dashboard: the poller keeps trying (with
/// backoff), `/readyz` and the status API name the reason after
/// `connector_failures` failures in a row, and all is well again once the
/// API accepts the token, with the payment of meanwhile delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_shows_on_readyz_and_recovers() {
    let api = SepayApi::start(TOKEN);
    api.reject_token(true);
    let sink = CountingSink::start();
    let config = format!(
        "[admin]\nconnector_failures = 3\n\n{}",
        config(&api, &sink, "mode = \"all\"")
    );
    let gw = Gateway::start(&config);
    let (code, body) = gw.wait_ready(503, Duration::from_secs(30)).await;
    assert_eq!(code, 503, "{body}\n{}", gw.logs());
    assert!(
        body.contains("SePay rejected the API token (401); check api_token"),
        "{body}"
    );
    let (_, status) = gw.admin_get("/api/status").await;
    assert!(status.contains("SePay rejected the API token"), "{status}");
    let (_, page) = gw.admin_get("/").await;
    assert!(
        page.contains("SePay rejected the API token (401); check api_token"),
        "the status page names it: {page}"
    );
    assert!(!body.contains(TOKEN) && !status.contains(TOKEN));
    let rejected = api.unauthorized();

    let tx = SepayTx::incoming(1, 50_000);
    api.add(tx.clone());
    api.reject_token(false);
    let (code, body) = gw.wait_ready(200, Duration::from_secs(30)).await;
    assert_eq!(code, 200, "{body}");
    assert!(sink.wait_for(1, Duration::from_secs(10)), "{}", gw.logs());
    assert_eq!(sink.arrivals()[0].transaction_id, tx.poll_key());
    assert!(rejected >= 3, "kept asking: {rejected}");
}

/// The other way out of a rotated token: the shop puts the new one in the
/// config; the reload starts the connector afresh and `/readyz` is green
/// again once it polls.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_fixed_in_the_config_recovers_on_reload() {
    let api = SepayApi::start(TOKEN);
    let sink = CountingSink::start();
    let config = format!(
        "[admin]\nconnector_failures = 3\n\n{}",
        config(&api, &sink, "mode = \"all\"").replace(TOKEN, "the-old-token")
    );
    let gw = Gateway::start(&config);
    let (code, body) = gw.wait_ready(503, Duration::from_secs(30)).await;
    assert_eq!(code, 503, "{body}\n{}", gw.logs());
    assert!(
        body.contains("SePay rejected the API token (401)"),
        "{body}"
    );

    let tx = SepayTx::incoming(1, 50_000);
    api.add(tx.clone());
    gw.edit_config("the-old-token", TOKEN);
    assert!(
        gw.wait_for_log("config reloaded", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    let (code, body) = gw.wait_ready(200, Duration::from_secs(30)).await;
    assert_eq!(code, 200, "{body}");
    assert!(sink.wait_for(1, Duration::from_secs(10)), "{}", gw.logs());
    assert_eq!(sink.arrivals()[0].transaction_id, tx.poll_key());
}
