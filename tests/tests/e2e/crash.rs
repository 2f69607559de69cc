//! Crash safety with the real binary: the gateway is SIGKILLed at random
//! moments while webhooks pour in. Every payment that got a 2xx must reach
//! the sink, in log order, and a redelivery may only come from a kill.
//! `SOUNDBOX_CHAOS_LONG=1` runs the long loops (5000 payments, 100 kills
//! or more; see `chaos.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use soundbox_e2e::{
    CountingSink, Gateway, chaos_size, post_until_2xx, sepay_connector, sepay_webhook,
    sepay_webhook_id,
};

/// Payments per run.
fn payments() -> u64 {
    chaos_size(1_000, 5_000)
}

/// Kills per run, at least.
fn min_kills() -> usize {
    chaos_size(20, 100)
}

fn config(sink: &CountingSink) -> String {
    format!(
        "{}\
         [[forward]]\nname = \"pos\"\nurl = \"{}\"\nretry_initial_ms = 10\nretry_max_ms = 200\ntimeout_ms = 2000\n",
        sepay_connector(),
        sink.url
    )
}

/// Posts every payment until it gets a 2xx, the way a provider retries.
/// Returns the ids that were acknowledged (all of them, eventually).
async fn post_all(url: String, workers: u64, done: Arc<AtomicBool>) -> BTreeSet<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for id in (1..=payments()).filter(|i| i % workers == w) {
                let body = sepay_webhook(id, 1_000 * id);
                post_until_2xx(&client, &url, &body, &id).await;
                acked.push(id);
                // Pace the senders so kills land throughout the run.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        }));
    }
    let mut acked = BTreeSet::new();
    for task in tasks {
        acked.extend(task.await.expect("sender"));
    }
    done.store(true, Ordering::SeqCst);
    acked
}

fn crash_run(sink_down_first_half: bool) {
    let sink = CountingSink::start();
    sink.set_down(sink_down_first_half);
    let mut gw = Gateway::start(&config(&sink));
    let url = gw.url("/hooks/sepay");

    let done = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sender = runtime.spawn(post_all(url, 4, done.clone()));

    let kills = AtomicUsize::new(0);
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) || kills.load(Ordering::SeqCst) < min_kills() {
        std::thread::sleep(Duration::from_millis(fastrand_ms(50, 400)));
        if sink_down_first_half && kills.load(Ordering::SeqCst) == min_kills() / 2 {
            sink.set_down(false);
        }
        gw.kill_and_restart();
        kills.fetch_add(1, Ordering::SeqCst);
        assert!(
            started.elapsed() < Duration::from_secs(chaos_size(600, 3600)),
            "crash run took too long"
        );
    }
    sink.set_down(false);
    let acked = runtime.block_on(sender).expect("sender");
    assert_eq!(
        acked.len() as u64,
        payments(),
        "every payment was eventually acknowledged"
    );

    assert!(
        sink.wait_for(acked.len(), Duration::from_secs(120)),
        "only {} of {} acknowledged payments reached the sink; gateway log:\n{}",
        sink.arrivals().len(),
        acked.len(),
        gw.logs()
    );
    let arrivals = sink.arrivals();
    let delivered: BTreeSet<u64> = arrivals
        .iter()
        .map(|a| sepay_webhook_id(&a.transaction_id).expect("a sepay_webhook() id"))
        .collect();
    assert_eq!(
        delivered, acked,
        "delivered exactly the acknowledged payments"
    );
    for a in &arrivals {
        let id = sepay_webhook_id(&a.transaction_id).expect("a sepay_webhook() id");
        assert_eq!(a.amount, 1_000 * id, "amount of {id}");
    }
    // Each payment is in the log once: first arrivals follow log order with
    // one sequence number per payment.
    let seqs: Vec<u64> = arrivals.iter().map(|a| a.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "delivered out of log order: {seqs:?}"
    );
    assert_eq!(
        seqs.iter().collect::<BTreeSet<_>>().len(),
        arrivals.len(),
        "a payment got two log entries"
    );
    // At-least-once: a kill between the sink's 200 and the recorded outcome
    // resends that one entry (same Idempotency-Key). Nothing else may repeat.
    let kills = kills.load(Ordering::SeqCst) as u64;
    let redelivered = sink.deliveries() - arrivals.len() as u64;
    assert!(
        redelivered <= kills,
        "{redelivered} redeliveries from {kills} kills"
    );
    if sink_down_first_half {
        assert!(sink.refused() > 0, "the sink was down for a while");
    }
    eprintln!(
        "crash run: {} payments, {kills} kills, {redelivered} redeliveries, {} refused while down, {:.1}s",
        payments(),
        sink.refused(),
        started.elapsed().as_secs_f64()
    );
    gw.stop();
}

/// A random delay in `[lo, hi)` ms, from the clock (no extra dependency).
fn fastrand_ms(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    lo + u64::from(nanos) % (hi - lo)
}

#[test]
fn sigkill_loop_loses_and_duplicates_nothing() {
    crash_run(false);
}

#[test]
fn sigkill_loop_with_the_sink_down_for_the_first_half() {
    crash_run(true);
}
