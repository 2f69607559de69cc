//! The speaker sink against the simulator: routing, idempotent request ids,
//! and 500 payments through injected 5xx, 429 and a short token TTL.

use std::collections::BTreeSet;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Secret;
use crate::log::{EventLog, SledLog, scratch_log};
use crate::model::{BalanceChange, now_ms};
use crate::sinks::{Shutdown, SinkStats, run_sink};
use crate::speaker_api::client::SpeakerCredentials;
use crate::speaker_api::sim::testing::{device, serve_on_loopback};
use crate::speaker_api::sim::{Faults, SimConfig, Simulator};

fn change(txid: &str, account: &str, amount: u64, direction: Direction) -> BalanceChange {
    BalanceChange {
        account: account.into(),
        direction,
        ..BalanceChange::example(txid, amount)
    }
}

fn config(max_age: Duration) -> SpeakerConfig {
    SpeakerConfig {
        simulator: None,
        base_url: String::new(),
        client_id: "sim-client".into(),
        client_secret: Secret::new("sim-secret"),
        max_age,
        announce_outgoing: false,
        min_amount: 0,
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(1),
        },
        max_calls_per_sec: None,
    }
}

fn route(account: &str, speakers: &[&str], min_amount: u64) -> RouteConfig {
    RouteConfig {
        account: account.into(),
        speakers: speakers.iter().map(|s| s.to_string()).collect(),
        min_amount,
    }
}

fn entry(change: BalanceChange) -> LogEntry {
    LogEntry {
        seq: 0,
        appended_at_ms: now_ms(),
        change,
    }
}

fn client(base_url: String) -> Arc<SpeakerClient> {
    Arc::new(
        SpeakerClient::new(
            SpeakerCredentials {
                base_url,
                client_id: "sim-client".into(),
                client_secret: Secret::new("sim-secret"),
            },
            Duration::from_secs(5),
        )
        .expect("client"),
    )
}

#[test]
fn request_ids_are_stable_per_payment_and_speaker() {
    let a = request_id("sepay\u{1f}1", "VNS-1");
    assert_eq!(a, request_id("sepay\u{1f}1", "VNS-1"));
    assert_ne!(a, request_id("sepay\u{1f}1", "VNS-2"));
    assert_ne!(a, request_id("sepay\u{1f}2", "VNS-1"));
    assert_eq!(a.len(), 36);
}

#[tokio::test]
async fn routes_incoming_money_to_the_accounts_speakers() {
    let sink = SpeakerSink::new(
        client("http://127.0.0.1:9".into()),
        config(Duration::from_secs(300)),
        vec![
            route("111", &["A", "B"], 0),
            route("*", &["B", "C"], 50_000),
        ],
    );
    let speakers = |account: &str, amount: u64, dir: Direction| -> Vec<String> {
        sink.speakers_for(&entry(change("t", account, amount, dir)))
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(speakers("111", 10_000, Direction::In), ["A", "B"]);
    assert_eq!(speakers("111", 60_000, Direction::In), ["A", "B", "C"]);
    assert_eq!(speakers("222", 60_000, Direction::In), ["B", "C"]);
    assert!(speakers("222", 10_000, Direction::In).is_empty());
    assert!(
        speakers("111", 10_000, Direction::Out).is_empty(),
        "outgoing is silent by default"
    );
}

struct Run {
    _dir: tempfile::TempDir,
    log: SledLog,
    stop: CancellationToken,
    worker: tokio::task::JoinHandle<()>,
    announcements: tokio::sync::broadcast::Receiver<AnnouncementJson>,
}

async fn start(sim: &Simulator, max_age: Duration, routes: Vec<RouteConfig>) -> Run {
    let (dir, log) = scratch_log(&[SINK_NAME]);
    let (to_mqtt, announcements) = tokio::sync::broadcast::channel(1024);
    let sink = SpeakerSink::new(
        client(serve_on_loopback(sim).await),
        config(max_age),
        routes,
    )
    .with_announcements(to_mqtt);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(run_sink(
        Arc::new(sink),
        Arc::new(log.clone()),
        Arc::new(SinkStats::default()),
        Shutdown {
            stop: stop.clone(),
            grace: Duration::from_secs(1),
        },
    ));
    Run {
        _dir: dir,
        log,
        stop,
        worker,
        announcements,
    }
}

impl Run {
    async fn settled(&self, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.log.cursor(SINK_NAME).expect("cursor") < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} settled",
                self.log.cursor(SINK_NAME).expect("cursor")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Announcements reported so far (as the MQTT sink would publish them).
    fn announced(&mut self) -> Vec<AnnouncementJson> {
        std::iter::from_fn(|| self.announcements.try_recv().ok()).collect()
    }

    async fn finish(self) {
        self.stop.cancel();
        self.worker.await.expect("worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_payments_through_5xx_429_and_short_tokens_are_each_announced_once() {
    let sim = Simulator::new(SimConfig {
        devices: vec![device("VNS-1", true, true)],
        token_ttl: Duration::from_secs(5),
        play_time: Duration::ZERO,
        faults: Faults {
            error_rate: 0.3,
            rate_limit_rate: 0.1,
            retry_after_secs: 0,
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let mut run = start(
        &sim,
        Duration::from_secs(600),
        vec![route("111", &["VNS-1"], 0)],
    )
    .await;
    let mut expected = BTreeSet::new();
    for batch in 0..10 {
        let changes: Vec<BalanceChange> = (0..50)
            .map(|i| {
                change(
                    &format!("{batch}-{i}"),
                    "111",
                    1_000 * (i + 1),
                    Direction::In,
                )
            })
            .collect();
        for c in &changes {
            expected.insert(request_id(&c.dedupe_key(), "VNS-1"));
        }
        run.log.append(changes).await.expect("append");
        // Spread over more than one token lifetime.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    run.settled(500, Duration::from_secs(120)).await;
    let plays = sim.plays();
    let played: BTreeSet<String> = plays.iter().map(|p| p.request_id.clone()).collect();
    assert_eq!(played, expected, "every routed payment announced");
    assert_eq!(plays.len(), 500, "none announced twice");
    assert!(
        sim.tokens_issued() >= 2,
        "tokens were replaced as they expired: {}",
        sim.tokens_issued()
    );
    let status = run.log.status(SINK_NAME).expect("status");
    assert_eq!((status.delivered, status.dead_letters), (500, 0));
    let announced = run.announced();
    let reported: BTreeSet<String> = announced.iter().map(|a| a.request_id.clone()).collect();
    assert_eq!(reported, expected, "each announcement reported");
    assert_eq!(announced.len(), 500);
    // The simulator plays at once, unless check_notify itself hit a fault.
    assert!(
        announced
            .iter()
            .all(|a| a.result == "played" || a.result == "unconfirmed"),
        "{:?}",
        announced.iter().map(|a| &a.result).collect::<BTreeSet<_>>()
    );
    let one = announced.iter().find(|a| a.amount == 50_000).expect("50k");
    assert_eq!(one.words, "năm mươi nghìn đồng");
    assert_eq!(one.hardware_id, "VNS-1");
    run.finish().await;
}

#[tokio::test]
async fn an_unknown_speaker_is_a_dead_letter_with_its_reason() {
    let sim = Simulator::new(SimConfig::default());
    let mut run = start(
        &sim,
        Duration::from_secs(600),
        vec![route("111", &["VNS-GONE"], 0)],
    )
    .await;
    run.log
        .append(vec![change("1", "111", 20_000, Direction::In)])
        .await
        .expect("append");
    run.settled(1, Duration::from_secs(10)).await;
    let dead = run.log.list(SINK_NAME, Some("dead"), 10).expect("list");
    assert_eq!(dead.len(), 1);
    let reason = dead[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("VNS-GONE") && reason.contains("Không tìm thấy thiết bị"),
        "{reason}"
    );
    let announced = run.announced();
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].result, "refused");
    assert_eq!(announced[0].detail.as_deref(), Some(reason.as_str()));
    run.finish().await;
}

#[tokio::test]
async fn an_offline_speakers_payments_expire_after_the_ttl_with_the_reason() {
    let sim = Simulator::new(SimConfig {
        devices: vec![device("VNS-OFF", true, false)],
        ..SimConfig::default()
    });
    let mut run = start(
        &sim,
        Duration::from_secs(1),
        vec![route("111", &["VNS-OFF"], 0)],
    )
    .await;
    run.log
        .append(vec![
            change("1", "111", 20_000, Direction::In),
            change("2", "111", 30_000, Direction::In),
        ])
        .await
        .expect("append");
    run.settled(2, Duration::from_secs(15)).await;
    assert!(sim.plays().is_empty());
    let expired = run.log.list(SINK_NAME, Some("expired"), 10).expect("list");
    assert_eq!(expired.len(), 2);
    // The first one was tried (and refused) until it expired; the second
    // was already too old when its turn came.
    let first = expired
        .iter()
        .find(|e| e.transaction_id == "1")
        .expect("first");
    let reason = first.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("max age") && reason.contains("offline"),
        "{reason}"
    );
    assert_eq!(run.log.status(SINK_NAME).expect("status").expired, 2);
    // Kept, not deleted: still in the log for MQTT and the status page.
    assert_eq!(run.log.read(0, 10).expect("read").len(), 2);
    let announced = run.announced();
    let results: Vec<(&str, &str)> = announced
        .iter()
        .map(|a| (a.hardware_id.as_str(), a.result.as_str()))
        .collect();
    assert_eq!(results, [("VNS-OFF", "expired"), ("VNS-OFF", "expired")]);
    assert!(
        announced[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("offline"))
    );
    run.finish().await;
}
