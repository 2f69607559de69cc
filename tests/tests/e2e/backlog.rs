//! A long Speaker API outage while payments keep arriving: every webhook is
//! acknowledged and queued; when the API comes back (rate-limited, as real
//! APIs are) the queue drains in log order, no faster than the API allows,
//! each payment announced once, with the gateway's memory bounded.
//!
//! CI size: 2,000 payments, the API allowing 400 calls/s. With
//! `SOUNDBOX_CHAOS_LONG=1`: 100,000 payments at 2,000 calls/s. The figures
//! (ingest and drain rates, RSS) are printed; see them with `--nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use soundbox_e2e::{
    Gateway, RssPeak, SpeakerApi, chaos_size, free_port, rss_kib, sepay_connector, sepay_webhook,
};

const SPEAKER: &str = "VNS-SHOP-1";
/// Amounts are `BASE_AMOUNT + id`, so a play names its payment.
const BASE_AMOUNT: u64 = 10_000;
const SENDERS: u64 = 8;

fn config(api_port: u16, calls_per_sec: u32) -> String {
    format!(
        "{}\
         [speaker]\nbase_url = \"http://127.0.0.1:{api_port}/devices/v1\"\n\
         client_id = \"sim-client\"\nclient_secret = \"sim-secret\"\n\
         max_calls_per_sec = {calls_per_sec}\nmax_age_secs = 86400\n\
         retry_initial_ms = 50\nretry_max_ms = 500\ntimeout_ms = 2000\n\n\
         [[route]]\naccount = \"*\"\nspeakers = [\"{SPEAKER}\"]\n",
        sepay_connector()
    )
}

/// When a payment was sent and when its 200 came back.
#[derive(Clone, Copy)]
struct Sent {
    sent: Instant,
    acked: Instant,
}

/// Posts payments `0..n` from `SENDERS` concurrent senders; every one must get 200.
async fn post_all(url: String, n: u64) -> BTreeMap<u64, Sent> {
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (next, client, url) = (next.clone(), client.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= n {
                    return sent;
                }
                let at = Instant::now();
                let reply = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(sepay_webhook(id, BASE_AMOUNT + id))
                    .send()
                    .await
                    .expect("webhook POST");
                assert_eq!(reply.status().as_u16(), 200, "payment {id}");
                sent.push((
                    id,
                    Sent {
                        sent: at,
                        acked: Instant::now(),
                    },
                ));
            }
        }));
    }
    let mut all = BTreeMap::new();
    for sender in senders {
        all.extend(sender.await.expect("sender"));
    }
    all
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_built_while_the_speaker_api_is_down_drains_in_order_at_its_rate() {
    let (payments, calls_per_sec) = chaos_size((2_000, 400), (100_000, 2_000));
    let api_port = free_port();
    // The API is down from the start: nothing listens on its port.
    let gw = Gateway::start(&config(api_port, calls_per_sec));
    let idle = rss_kib(gw.pid());

    let ingest_peak = RssPeak::watch(gw.pid(), Duration::from_millis(100));
    let started = Instant::now();
    let sent = post_all(gw.url("/hooks/sepay"), payments).await;
    let ingest = started.elapsed();
    let ingest_peak = ingest_peak.finish();
    assert_eq!(sent.len() as u64, payments);
    let queued = rss_kib(gw.pid());

    let drain_peak = RssPeak::watch(gw.pid(), Duration::from_millis(100));
    // Calls beyond `calls_per_sec` answered 429 with `Retry-After`, as a
    // rate-limited API does.
    let api = SpeakerApi::builder(api_port)
        .args(&["--max-calls-per-sec", &calls_per_sec.to_string()])
        .start();
    let back = Instant::now();
    // Two calls a payment (notify, check_notify): the drain cannot be faster
    // than `payments * 2 / calls_per_sec`; allow three times that.
    let expected = Duration::from_secs(payments * 2 / u64::from(calls_per_sec));
    let deadline = back + expected * 3 + Duration::from_secs(60);
    loop {
        let stats = api.stats().await;
        if stats["plays"].as_u64() == Some(payments) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?}: {stats}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain = back.elapsed();
    let drain_peak = drain_peak.finish();
    let stats = api.stats().await;
    let plays = api.plays().await;

    // Each payment announced exactly once, on the routed speaker.
    assert_eq!(plays.len() as u64, payments);
    let request_ids: BTreeSet<&str> = plays
        .iter()
        .filter_map(|p| p["request_id"].as_str())
        .collect();
    assert_eq!(
        request_ids.len() as u64,
        payments,
        "a requestId played twice"
    );
    assert!(plays.iter().all(|p| p["hardware_id"] == SPEAKER));
    let played: Vec<u64> = plays
        .iter()
        .map(|p| p["amount"].as_u64().expect("amount") - BASE_AMOUNT)
        .collect();
    assert_eq!(
        played.iter().copied().collect::<BTreeSet<_>>(),
        sent.keys().copied().collect::<BTreeSet<_>>()
    );

    // Log order: a payment acknowledged before another was even sent was
    // appended first, so it must be played first.
    let mut latest_sent_before: Option<Instant> = None;
    for id in &played {
        let this = sent[id];
        if let Some(latest) = latest_sent_before {
            assert!(
                this.acked >= latest,
                "payment {id} was acknowledged before a payment played ahead of it was sent"
            );
        }
        latest_sent_before = Some(latest_sent_before.map_or(this.sent, |l| l.max(this.sent)));
    }

    // No faster than the API allows: the gateway paces itself, so the API
    // refused (almost) nothing and accepted no more than its rate.
    let calls = stats["calls"].as_u64().expect("calls");
    let refused = stats["rate_limited"].as_u64().expect("rate_limited");
    let allowed = u64::from(calls_per_sec) * (drain.as_secs() + 2);
    assert!(
        calls - refused <= allowed,
        "{calls} calls in {drain:?} at {calls_per_sec}/s"
    );
    assert!(refused <= calls / 100, "{refused} of {calls} calls got 429");

    // Memory stays bounded: the backlog lives on disk, not in the process.
    let peak = ingest_peak.max(drain_peak);
    assert!(
        peak < idle + 200 * 1024,
        "RSS peak {:.1} MiB from {:.1} MiB idle",
        mib(peak),
        mib(idle)
    );

    println!(
        "backlog of {payments}: ingest {:.1} s ({:.0} webhooks/s); drain {:.1} s, \
         {calls} calls ({:.0}/s of {calls_per_sec}/s allowed, {refused} got 429), \
         {:.0} payments/s",
        ingest.as_secs_f64(),
        payments as f64 / ingest.as_secs_f64(),
        drain.as_secs_f64(),
        calls as f64 / drain.as_secs_f64(),
        payments as f64 / drain.as_secs_f64(),
    );
    println!(
        "gateway RSS: idle {:.1} MiB, peak while queueing {:.1} MiB, queued {:.1} MiB, \
         peak while draining {:.1} MiB, after {:.1} MiB",
        mib(idle),
        mib(ingest_peak),
        mib(queued),
        mib(drain_peak),
        mib(rss_kib(gw.pid())),
    );
}
