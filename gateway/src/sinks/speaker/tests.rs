//! Speaker lanes against the simulator, in both of SePay's possible error
//! styles: routing, one offline speaker holding only itself, refusals
//! classified by `pair/check`, confirmations, and 500 payments through
//! injected 5xx, 429 and a short token TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::confirm::ConfirmPolicy;
use super::*;
use crate::config::{Secret, SpeakerApi};
use crate::log::{EventLog, Store, scratch_log};
use crate::model::{BalanceChange, now_ms};
use crate::sinks::event::AnnouncementJson;
use crate::sinks::{RetryPolicy, Shutdown, SinkStats, run_sink};
use crate::speaker_api::client::{SpeakerClient, SpeakerCredentials};
use crate::speaker_api::sim::testing::{device, serve_on_loopback};
use crate::speaker_api::sim::{ErrorStyle, Faults, SimConfig, Simulator};
use crate::tasks::Tasks;

const STYLES: [ErrorStyle; 2] = [ErrorStyle::Http200, ErrorStyle::Http4xx];

fn change(txid: &str, account: &str, amount: u64, direction: Direction) -> BalanceChange {
    BalanceChange {
        account: account.into(),
        direction,
        ..BalanceChange::example(txid, amount)
    }
}

fn config(max_age: Duration) -> SpeakerConfig {
    SpeakerConfig {
        api: SpeakerApi::Remote {
            base_url: String::new(),
            client_id: "sim-client".into(),
            client_secret: Secret::new("sim-secret"),
        },
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

/// A simulator that plays for 50 ms, answering business errors in `style`.
fn simulator(devices: Vec<crate::speaker_api::sim::SimDevice>, style: ErrorStyle) -> Simulator {
    Simulator::new(SimConfig {
        devices,
        play_time: Duration::from_millis(50),
        faults: Faults {
            error_style: style,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
}

#[test]
fn request_ids_are_stable_per_payment_and_speaker() {
    let a = request_id("sepay\u{1f}1", "VNS-1");
    assert_eq!(a, request_id("sepay\u{1f}1", "VNS-1"));
    assert_ne!(a, request_id("sepay\u{1f}1", "VNS-2"));
    assert_ne!(a, request_id("sepay\u{1f}2", "VNS-1"));
    assert_eq!(a.len(), 36);
    let again = retry_request_id(&a);
    assert_ne!(again, a);
    assert!(again.len() <= 40, "{again}");
    assert!(again.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
}

#[test]
fn routes_incoming_vnd_to_the_accounts_speakers() {
    let routes = vec![
        route("111", &["A", "B"], 0),
        route("*", &["B", "C"], 50_000),
    ];
    let config = config(Duration::from_secs(300));
    let speakers = |account: &str, amount: u64, dir: Direction| -> Vec<String> {
        speakers_for(&config, &routes, &entry(change("t", account, amount, dir)))
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
    let mut usd = change("t", "111", 10_000, Direction::In);
    usd.currency = "USD".into();
    assert!(
        speakers_for(&config, &routes, &entry(usd)).is_empty(),
        "another currency is never spoken as VND"
    );
    assert_eq!(routed_speakers(&routes), ["A", "B", "C"]);
    assert_eq!(routes_of(&routes, "A").len(), 1);
    assert_eq!(routes_of(&routes, "B").len(), 2);
    assert_eq!(lane_speaker(&lane_name("VNS-1")), Some("VNS-1"));
    assert_eq!(lane_speaker("mqtt"), None);
}

/// Every lane of `routes`, running against `sim`.
struct Run {
    _dir: tempfile::TempDir,
    log: Store,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    announcements: broadcast::Receiver<AnnouncementJson>,
    health: Arc<SpeakerHealth>,
}

async fn start(sim: &Simulator, max_age: Duration, routes: Vec<RouteConfig>) -> Run {
    let speakers = routed_speakers(&routes);
    let lanes: Vec<String> = speakers.iter().map(|s| lane_name(s)).collect();
    let lane_refs: Vec<&str> = lanes.iter().map(String::as_str).collect();
    let (dir, log) = scratch_log(&lane_refs);
    let (to_mqtt, announcements) = broadcast::channel(4096);
    let health = Arc::new(SpeakerHealth::default());
    let service = Arc::new(
        SpeakerService::new(
            client(serve_on_loopback(sim).await),
            config(max_age),
            health.clone(),
        )
        .with_announcements(to_mqtt)
        .with_confirm_policy(ConfirmPolicy {
            first: Duration::from_millis(30),
            every: Duration::from_millis(30),
            polls: 20,
        }),
    );
    let tasks = Tasks::new();
    let stop = tasks.token().clone();
    let mut workers = Vec::new();
    for hw in &speakers {
        let lane = Arc::new(SpeakerLane::new(
            service.clone(),
            hw,
            routes_of(&routes, hw),
            tasks.clone(),
        ));
        let log: Arc<dyn EventLog> = Arc::new(log.clone());
        let shutdown = Shutdown {
            stop: stop.clone(),
            grace: Duration::from_secs(1),
        };
        workers.push(tokio::spawn(async move {
            let health = tokio::spawn(lane.clone().watch_health());
            run_sink(lane.clone(), log, Arc::new(SinkStats::default()), shutdown).await;
            lane.stopped().await;
            let _ = health.await;
        }));
    }
    Run {
        _dir: dir,
        log,
        stop,
        workers,
        announcements,
        health,
    }
}

impl Run {
    /// Waits until `hardware_id`'s lane has settled everything below `n`.
    async fn lane_at(&self, hardware_id: &str, n: u64, within: Duration) {
        let lane = lane_name(hardware_id);
        let deadline = tokio::time::Instant::now() + within;
        while self.log.cursor_now(&lane).expect("cursor") < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lane {lane} at {} of {n}",
                self.log.cursor_now(&lane).expect("cursor")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Announcements reported so far (as the MQTT sink would publish them).
    fn announced(&mut self) -> Vec<AnnouncementJson> {
        std::iter::from_fn(|| self.announcements.try_recv().ok()).collect()
    }

    /// Collects announcements until `done` says the set is complete.
    async fn announced_until(
        &mut self,
        within: Duration,
        done: impl Fn(&[AnnouncementJson]) -> bool,
    ) -> Vec<AnnouncementJson> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        loop {
            all.extend(self.announced());
            if done(&all) {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "announcements so far: {:?}",
                all.iter()
                    .map(|a| (&a.hardware_id, a.amount, &a.result))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) {
        self.stop.cancel();
        for worker in self.workers {
            worker.await.expect("worker");
        }
    }
}

/// The final result of each (speaker, amount), ignoring `sent`.
fn results(announced: &[AnnouncementJson]) -> BTreeMap<(String, u64), String> {
    announced
        .iter()
        .filter(|a| a.result != "sent")
        .map(|a| ((a.hardware_id.clone(), a.amount), a.result.clone()))
        .collect()
}

#[tokio::test]
async fn an_offline_speaker_holds_only_its_own_lane() {
    for style in STYLES {
        let sim = simulator(
            vec![
                device("VNS-OFF", true, false),
                device("VNS-ON", true, true),
                device("VNS-BOTH", true, true),
            ],
            style,
        );
        let mut run = start(
            &sim,
            Duration::from_secs(600),
            vec![
                route("111", &["VNS-OFF", "VNS-BOTH"], 0),
                route("222", &["VNS-ON"], 0),
            ],
        )
        .await;
        run.log
            .append_changes(vec![
                change("1", "111", 10_000, Direction::In),
                change("2", "222", 20_000, Direction::In),
                change("3", "222", 30_000, Direction::In),
            ])
            .await
            .expect("append");
        // The online speakers announce while VNS-OFF's lane keeps retrying:
        // VNS-ON its two, VNS-BOTH the one it shares with VNS-OFF.
        run.lane_at("VNS-ON", 3, Duration::from_secs(10)).await;
        run.lane_at("VNS-BOTH", 3, Duration::from_secs(10)).await;
        let played: Vec<(String, u64)> = sim
            .plays()
            .into_iter()
            .map(|p| (p.hardware_id, p.amount))
            .collect();
        assert_eq!(
            played.iter().filter(|(hw, _)| hw == "VNS-ON").count(),
            2,
            "{style:?}: {played:?}"
        );
        assert!(played.contains(&("VNS-BOTH".into(), 10_000)), "{played:?}");
        assert!(!played.iter().any(|(hw, _)| hw == "VNS-OFF"));
        assert_eq!(
            run.log.cursor_now(&lane_name("VNS-OFF")).expect("cursor"),
            0
        );
        let status = run.log.status(&lane_name("VNS-OFF")).expect("status");
        assert_eq!(
            status.dead_letters, 0,
            "{style:?}: offline is not a dead letter"
        );
        assert_eq!(
            run.health.get("VNS-OFF").and_then(|s| s.trouble()),
            Some("offline"),
            "{style:?}: the lane asked pair/check why it was refused"
        );

        // Back online: its payment is announced, once.
        assert!(sim.set_online("VNS-OFF", true));
        run.lane_at("VNS-OFF", 1, Duration::from_secs(10)).await;
        let off_plays: Vec<u64> = sim
            .plays()
            .into_iter()
            .filter(|p| p.hardware_id == "VNS-OFF")
            .map(|p| p.amount)
            .collect();
        assert_eq!(off_plays, [10_000], "{style:?}");
        let announced = run
            .announced_until(Duration::from_secs(10), |a| results(a).len() == 4)
            .await;
        assert!(
            results(&announced).values().all(|r| r == "played"),
            "{style:?}: {:?}",
            results(&announced)
        );
        run.finish().await;
    }
}

#[tokio::test]
async fn a_speaker_that_is_not_paired_expires_at_once_with_the_reason() {
    for style in STYLES {
        let sim = simulator(vec![device("VNS-NEW", false, true)], style);
        let mut run = start(
            &sim,
            Duration::from_secs(600),
            vec![route("111", &["VNS-NEW"], 0)],
        )
        .await;
        run.log
            .append_changes(vec![change("1", "111", 20_000, Direction::In)])
            .await
            .expect("append");
        run.lane_at("VNS-NEW", 1, Duration::from_secs(10)).await;
        let expired = run
            .log
            .list(&lane_name("VNS-NEW"), Some("expired"), 10)
            .expect("list");
        assert_eq!(expired.len(), 1, "{style:?}");
        let reason = expired[0].reason.clone().unwrap_or_default();
        assert!(reason.contains("not paired"), "{style:?}: {reason}");
        let announced = run
            .announced_until(Duration::from_secs(5), |a| !a.is_empty())
            .await;
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].result, "expired");
        assert_eq!(
            run.health.get("VNS-NEW").and_then(|s| s.trouble()),
            Some("not paired")
        );
        run.finish().await;
    }
}

#[tokio::test]
async fn an_unknown_speaker_is_a_dead_letter_with_sepays_message() {
    for style in STYLES {
        let sim = simulator(Vec::new(), style);
        let mut run = start(
            &sim,
            Duration::from_secs(600),
            vec![route("111", &["VNS-GONE"], 0)],
        )
        .await;
        run.log
            .append_changes(vec![change("1", "111", 20_000, Direction::In)])
            .await
            .expect("append");
        run.lane_at("VNS-GONE", 1, Duration::from_secs(10)).await;
        let dead = run
            .log
            .list(&lane_name("VNS-GONE"), Some("dead"), 10)
            .expect("list");
        assert_eq!(dead.len(), 1, "{style:?}");
        let reason = dead[0].reason.clone().unwrap_or_default();
        assert!(
            reason.contains("VNS-GONE") && reason.contains("does not know the speaker"),
            "{style:?}: {reason}"
        );
        let announced = run
            .announced_until(Duration::from_secs(5), |a| !a.is_empty())
            .await;
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].result, "refused");
        assert_eq!(announced[0].detail.as_deref(), Some(reason.as_str()));
        run.finish().await;
    }
}

#[tokio::test]
async fn an_offline_speakers_payments_expire_after_max_age_with_the_reason() {
    let sim = simulator(vec![device("VNS-OFF", true, false)], ErrorStyle::Http4xx);
    let mut run = start(
        &sim,
        Duration::from_secs(1),
        vec![route("111", &["VNS-OFF"], 0)],
    )
    .await;
    run.log
        .append_changes(vec![
            change("1", "111", 20_000, Direction::In),
            change("2", "111", 30_000, Direction::In),
        ])
        .await
        .expect("append");
    run.lane_at("VNS-OFF", 2, Duration::from_secs(15)).await;
    assert!(sim.plays().is_empty());
    let lane = lane_name("VNS-OFF");
    let expired = run.log.list(&lane, Some("expired"), 10).expect("list");
    assert_eq!(expired.len(), 2);
    let first = expired
        .iter()
        .find(|e| e.transaction_id == "1")
        .expect("first");
    let reason = first.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("max age") && reason.contains("offline"),
        "{reason}"
    );
    // Kept, not deleted: still in the log for MQTT and the status page.
    assert_eq!(run.log.read_now(0, 10).expect("read").len(), 2);
    // Announced once the lane has heard its settlement is stored: a moment
    // after the cursor moved.
    let announced = run
        .announced_until(Duration::from_secs(5), |a| a.len() >= 2)
        .await;
    let results: Vec<(&str, &str)> = announced
        .iter()
        .map(|a| (a.hardware_id.as_str(), a.result.as_str()))
        .collect();
    assert_eq!(results, [("VNS-OFF", "expired"), ("VNS-OFF", "expired")]);
    run.finish().await;
}

#[tokio::test]
async fn failed_plays_get_one_new_notify_and_silent_speakers_are_unconfirmed() {
    // Every play fails: the new notify fails too, and it is reported failed.
    let sim = simulator(vec![device("VNS-1", true, true)], ErrorStyle::Http200);
    sim.set_faults(Faults {
        failed_rate: 1.0,
        ..Faults::default()
    });
    let mut run = start(
        &sim,
        Duration::from_secs(600),
        vec![route("111", &["VNS-1"], 0)],
    )
    .await;
    run.log
        .append_changes(vec![change("1", "111", 20_000, Direction::In)])
        .await
        .expect("append");
    let announced = run
        .announced_until(Duration::from_secs(10), |a| {
            a.iter().any(|a| a.result == "failed")
        })
        .await;
    let failed = announced
        .iter()
        .find(|a| a.result == "failed")
        .expect("failed");
    let id = request_id(
        &change("1", "111", 20_000, Direction::In).dedupe_key(),
        "VNS-1",
    );
    assert_eq!(failed.request_id, retry_request_id(&id), "one new notify");
    assert!(sim.plays().is_empty());
    assert_eq!(
        sim.stats().failed,
        2,
        "the first notify and the one new one"
    );

    // A speaker that never confirms: unconfirmed, and the lane went on.
    sim.set_faults(Faults {
        never_confirm: true,
        ..Faults::default()
    });
    run.log
        .append_changes(vec![
            change("2", "111", 30_000, Direction::In),
            change("3", "111", 40_000, Direction::In),
        ])
        .await
        .expect("append");
    run.lane_at("VNS-1", 3, Duration::from_secs(10)).await;
    let announced = run
        .announced_until(Duration::from_secs(10), |a| {
            a.iter().filter(|a| a.result == "unconfirmed").count() == 2
        })
        .await;
    assert!(
        announced
            .iter()
            .filter(|a| a.result == "unconfirmed")
            .all(|a| a.detail.as_deref().is_some_and(|d| d.contains("PENDING")))
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_payments_through_5xx_429_and_short_tokens_are_each_announced_once() {
    let sim = Simulator::new(SimConfig {
        devices: vec![device("VNS-1", true, true), device("VNS-2", true, true)],
        token_ttl: Duration::from_secs(5),
        play_time: Duration::from_millis(20),
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
        vec![route("111", &["VNS-1"], 0), route("222", &["VNS-2"], 0)],
    )
    .await;
    let mut expected = BTreeSet::new();
    for batch in 0..10 {
        let changes: Vec<BalanceChange> = (0..50)
            .map(|i| {
                let account = if i % 2 == 0 { "111" } else { "222" };
                change(
                    &format!("{batch}-{i}"),
                    account,
                    1_000 * (i + 1),
                    Direction::In,
                )
            })
            .collect();
        for c in &changes {
            let hw = if c.account == "111" { "VNS-1" } else { "VNS-2" };
            expected.insert(request_id(&c.dedupe_key(), hw));
        }
        run.log.append_changes(changes).await.expect("append");
        // Spread over more than one token lifetime.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    run.lane_at("VNS-1", 499, Duration::from_secs(120)).await;
    run.lane_at("VNS-2", 500, Duration::from_secs(120)).await;
    let plays = sim.plays();
    let played: BTreeSet<String> = plays.iter().map(|p| p.request_id.clone()).collect();
    assert_eq!(played, expected, "every routed payment announced");
    assert_eq!(plays.len(), 500, "none announced twice");
    assert!(
        sim.tokens_issued() >= 2,
        "tokens were replaced as they expired: {}",
        sim.tokens_issued()
    );
    for hw in ["VNS-1", "VNS-2"] {
        let status = run.log.status(&lane_name(hw)).expect("status");
        assert_eq!((status.delivered, status.dead_letters), (250, 0), "{hw}");
    }
    let announced = run
        .announced_until(Duration::from_secs(30), |a| {
            a.iter().filter(|a| a.result != "sent").count() == 500
        })
        .await;
    let sent: BTreeSet<String> = announced
        .iter()
        .filter(|a| a.result == "sent")
        .map(|a| a.request_id.clone())
        .collect();
    assert_eq!(sent, expected, "each announcement reported as sent");
    // Confirmations run through the same faults: played, or unconfirmed
    // when check_notify kept failing.
    assert!(
        announced
            .iter()
            .filter(|a| a.result != "sent")
            .all(|a| a.result == "played" || a.result == "unconfirmed"),
        "{:?}",
        announced.iter().map(|a| &a.result).collect::<BTreeSet<_>>()
    );
    let one = announced.iter().find(|a| a.amount == 50_000).expect("50k");
    assert_eq!(one.words, "năm mươi nghìn đồng");
    run.finish().await;
}
