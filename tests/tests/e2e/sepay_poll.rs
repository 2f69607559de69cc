//! The SePay poller through the real gateway, against a fake SePay API v2.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use soundbox_e2e::sepay_api::{SepayApi, SepayTx, vietnam_minutes_ago};
use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin};

const TOKEN: &str = "e2e-sepay-token";

fn config(api: &SepayApi, sink: &CountingSink) -> String {
    format!(
        "[[connector]]\nname = \"sepay-poll\"\nplugin = \"{}\"\npoll_interval_secs = 1\n\
         allowed_hosts = [\"{host}\"]\n\
         [connector.config]\napi_token = \"{TOKEN}\"\nbase_url = \"{}\"\nper_page = 100\n\n\
         {forward}",
        plugin("sepay_poll").display(),
        api.url,
        host = api.url.trim_start_matches("http://"),
        forward = forward_to(&sink.url),
    )
}

/// A day of payments the gateway never saw (more than a page of them) is
/// paged through on the first polls, each delivered once, a 429 on the way
/// included; the later sweeps' overlap finds nothing new.
#[tokio::test(flavor = "multi_thread")]
async fn the_poller_alone_backfills_every_transaction_once() {
    const N: u64 = 230;
    let api = SepayApi::start(TOKEN);
    let mut expected = BTreeSet::new();
    for n in 1..=N {
        // From 5 to ~20 hours ago: inside the first poll's 24 h window.
        let tx = SepayTx::incoming(n, 1_000 * n).at(&vietnam_minutes_ago(5 * n));
        expected.insert(tx.transaction_id());
        api.add(tx);
    }
    // A recent one, so the overlap of every later sweep fetches it again.
    let recent = SepayTx::incoming(N + 1, 777_000).at(&vietnam_minutes_ago(1));
    expected.insert(recent.transaction_id());
    api.add(recent);
    api.rate_limit_next(1);

    let sink = CountingSink::start();
    let gw = Gateway::start(&config(&api, &sink));
    let total = expected.len();
    assert!(
        sink.wait_for(total, Duration::from_secs(60)),
        "{} of {total} arrived; {} requests\n{}",
        sink.arrivals().len(),
        api.requests(),
        gw.logs()
    );

    // A few more sweeps (interval 1 s) re-fetch the overlap: no new deliveries.
    let after_backfill = api.requests();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.requests() < after_backfill + 3 {
        assert!(Instant::now() < deadline, "the poller stopped polling");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gw.wait_for_log("duplicate balance change ignored", Duration::from_secs(5)),
        "the overlap is re-fetched and deduped\n{}",
        gw.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let arrivals = sink.arrivals();
    let got: BTreeSet<String> = arrivals.iter().map(|a| a.transaction_id.clone()).collect();
    assert_eq!(got, expected);
    assert_eq!(sink.deliveries(), total as u64, "each delivered once");
    assert_eq!(api.rate_limited(), 1);
    assert!(gw.logs().contains("rate-limited"), "{}", gw.logs());

    // It paged: one sweep asked for pages 1, 2 and 3 of 100, from 24 h ago.
    let queries = api.queries();
    let first_sweep: Vec<&str> = queries
        .iter()
        .skip(1) // the 429
        .take(3)
        .map(|q| q.get("page").map(String::as_str).unwrap_or("?"))
        .collect();
    assert_eq!(first_sweep, ["1", "2", "3"], "{queries:?}");
    assert!(
        queries
            .iter()
            .all(|q| q.get("per_page").map(String::as_str) == Some("100"))
    );
    let from = &queries[0]["transaction_date_from"];
    assert!(
        from.as_str() <= vietnam_minutes_ago(24 * 60 - 1).as_str()
            && from.as_str() >= vietnam_minutes_ago(24 * 60 + 5).as_str(),
        "first poll looks back 24 h: {from}"
    );
    // Later sweeps start 10 minutes (the overlap) before the newest payment.
    let last = &queries[queries.len() - 1]["transaction_date_from"];
    assert!(
        last.as_str() >= vietnam_minutes_ago(12).as_str()
            && last.as_str() <= vietnam_minutes_ago(10).as_str(),
        "resumes with overlap: {last}"
    );
    assert!(
        !gw.logs().contains(TOKEN),
        "the API token leaked into the log"
    );
}
