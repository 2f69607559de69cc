//! The demo bank poller through the real gateway: payments appear on their
//! own, at the configured rate, each once.

use std::collections::BTreeSet;
use std::time::Duration;

use soundbox_e2e::{CountingSink, Gateway, forward_to, plugin};

#[tokio::test(flavor = "multi_thread")]
async fn demo_bank_polls_payments_into_the_sink() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&format!(
        r#"[[connector]]
name = "demo"
plugin = "{}"
poll_interval_secs = 1
[connector.config]
payments_per_minute = 600
min_amount = 20000
max_amount = 500000

{forward}"#,
        plugin("demo_bank").display(),
        forward = forward_to(&sink.url),
    ));

    // 10 a second, polled about once a second: 25 within a few seconds.
    assert!(
        sink.wait_for(25, Duration::from_secs(20)),
        "payments arrive: {} so far\n{}",
        sink.arrivals().len(),
        gw.logs()
    );
    let arrivals = sink.arrivals();
    let ids: BTreeSet<&str> = arrivals.iter().map(|a| a.transaction_id.as_str()).collect();
    assert_eq!(ids.len(), arrivals.len(), "distinct ids");
    assert!(ids.contains("demo-1-1"), "the first poll emits at once");
    assert!(ids.iter().all(|id| id.starts_with("demo-1-")), "{ids:?}");
    for a in &arrivals {
        assert!(
            (20_000..=500_000).contains(&a.amount) && a.amount % 1000 == 0,
            "{a:?}"
        );
    }
    assert_eq!(sink.deliveries(), arrivals.len() as u64, "each once");
}
