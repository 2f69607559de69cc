use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use rumqttc::{PubAck, Publish};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::{Endpoint, MqttTls};
use crate::log::{Store, scratch_log};
use crate::model::BalanceChange;
use crate::sinks::RetryPolicy;

/// A free loopback port below the ephemeral range: a port the OS handed out
/// for `:0` and that was released can be taken by another test's outgoing
/// connection before the broker binds it (seen in CI as a subscriber that
/// never got its SUBACK).
fn free_port() -> SocketAddr {
    for _ in 0..1000 {
        let addr = SocketAddr::from(([127, 0, 0, 1], fastrand::u16(20_000..32_000)));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// What the guard of a test broker protects: not `soundbox`, so the sinks
/// of these tests (external clients to it) may publish there through it.
fn test_access() -> broker::Access {
    broker::Access {
        prefix: "guarded".into(),
        gateway_client_id: "guarded-gateway".into(),
        users: Vec::new(),
    }
}

/// An embedded broker on a free loopback port.
fn embedded_broker() -> SocketAddr {
    let addr = free_port();
    broker::start(addr, test_access()).expect("embedded broker");
    addr
}

fn config(broker_addr: SocketAddr, window: usize) -> MqttConfig {
    MqttConfig {
        name: None,
        broker: MqttBroker::External(Endpoint {
            host: broker_addr.ip().to_string(),
            port: broker_addr.port(),
            tls: None,
        }),
        topic_prefix: "soundbox".into(),
        client_id: format!("test-{}", fastrand::u64(..)),
        username: None,
        password: None,
        embedded_users: Vec::new(),
        keep_alive: Duration::from_secs(5),
        window,
        retry: RetryPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(1),
        },
        relay: None,
        health_every: Duration::from_secs(60),
    }
}

/// A subscriber to everything under `soundbox/#`, recording what arrives.
struct Subscriber {
    received: Arc<Mutex<Vec<Publish>>>,
    _client: AsyncClient,
}

impl Subscriber {
    async fn connect(broker_addr: SocketAddr) -> Self {
        let id = format!("sub-{}", fastrand::u64(..));
        let options = MqttOptions::new(id, broker_addr.ip().to_string(), broker_addr.port());
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe("soundbox/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        let mut subscribed = Some(subscribed);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        sink.lock().expect("lock").push(p);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready)
            .await
            .expect("suback in time")
            .expect("suback");
        Subscriber {
            received,
            _client: client,
        }
    }

    fn on(&self, topic: &str) -> Vec<Publish> {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .filter(|p| p.topic == topic)
            .cloned()
            .collect()
    }

    /// What arrived on `topic` once `done` holds for it, or after 5 s (the
    /// caller's assertion then says what is missing).
    async fn wait_on(&self, topic: &str, done: impl Fn(&[Publish]) -> bool) -> Vec<Publish> {
        for _ in 0..500 {
            let arrived = self.on(topic);
            if done(&arrived) {
                return arrived;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.on(topic)
    }

    /// The distinct event ids seen on `topic`, waiting until there are `n`.
    async fn wait_for_events(&self, topic: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..1000 {
            let events = self.events(topic);
            let mut ids: Vec<_> = events.iter().map(|e| e["id"].clone()).collect();
            ids.sort_by_key(|v| v.to_string());
            ids.dedup();
            if ids.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} events on {topic}", self.events(topic).len());
    }

    fn events(&self, topic: &str) -> Vec<serde_json::Value> {
        self.on(topic)
            .iter()
            .map(|p| serde_json::from_slice(&p.payload).expect("event JSON"))
            .collect()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: Store,
    stop: CancellationToken,
}

fn fixture() -> Fixture {
    let (dir, log) = scratch_log(&[SINK_NAME]);
    Fixture {
        _dir: dir,
        log,
        stop: CancellationToken::new(),
    }
}

impl Fixture {
    async fn append(&self, from: usize, to: usize) {
        let changes = (from..to)
            .map(|i| BalanceChange::example(&format!("tx-{i}"), 1_000 + i as u64))
            .collect();
        self.log.append_changes(changes).await.expect("append");
    }

    fn start(
        &self,
        config: MqttConfig,
        announcements: broadcast::Receiver<AnnouncementJson>,
    ) -> (Arc<SinkStats>, tokio::task::JoinHandle<()>) {
        self.start_sink(
            MqttSink::new(config, "shop-1").expect("sink"),
            announcements,
        )
    }

    fn start_sink(
        &self,
        sink: MqttSink,
        announcements: broadcast::Receiver<AnnouncementJson>,
    ) -> (Arc<SinkStats>, tokio::task::JoinHandle<()>) {
        let sink = Arc::new(sink);
        let stats = Arc::new(SinkStats::default());
        let handle = tokio::spawn(sink.run(
            Arc::new(self.log.clone()),
            stats.clone(),
            Shutdown {
                stop: self.stop.clone(),
                grace: Duration::from_secs(2),
            },
            announcements,
        ));
        (stats, handle)
    }

    async fn cursor_reaches(&self, seq: u64) {
        for _ in 0..1000 {
            if self.log.cursor_now(SINK_NAME).expect("cursor") >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "cursor stuck at {}",
            self.log.cursor_now(SINK_NAME).expect("cursor")
        );
    }
}

fn no_announcements() -> broadcast::Receiver<AnnouncementJson> {
    broadcast::channel(1).1
}

const EVENTS: &str = "soundbox/shop-1/events";
const STATUS: &str = "soundbox/shop-1/status";

#[tokio::test]
async fn publishes_every_entry_in_order_and_settles_on_puback() {
    let broker_addr = embedded_broker();
    let subscriber = Subscriber::connect(broker_addr).await;
    let f = fixture();
    f.append(0, 150).await;
    let (stats, handle) = f.start(config(broker_addr, 8), no_announcements());
    f.append(150, 300).await;

    let events = subscriber.wait_for_events(EVENTS, 300).await;
    f.cursor_reaches(300).await;
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (0..300).collect::<Vec<_>>(),
        "once each, in log order"
    );
    assert_eq!(events[7]["transaction_id"], "tx-7");
    assert_eq!(events[7]["amount"], 1_007);
    assert_eq!(events[7]["schema"], 1);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 300);
    let status = subscriber.on(STATUS);
    assert_eq!(status.first().map(|p| &p.payload[..]), Some(&b"online"[..]));

    // A late subscriber still learns the gateway is online (retained).
    let late = Subscriber::connect(broker_addr).await;
    let retained = late.wait_on(STATUS, |p| !p.is_empty()).await;
    assert_eq!(
        retained.last().map(|p| &p.payload[..]),
        Some(&b"online"[..])
    );

    // A clean stop says `offline`, retained.
    f.stop.cancel();
    handle.await.expect("sink task");
    let offline = |p: &[Publish]| p.last().is_some_and(|p| &p.payload[..] == b"offline");
    let status = subscriber.wait_on(STATUS, offline).await;
    assert_eq!(status.last().map(|p| &p.payload[..]), Some(&b"offline"[..]));
}

#[tokio::test]
async fn nothing_is_settled_without_a_broker_and_everything_goes_once_it_is_up() {
    let broker_addr = free_port();
    let f = fixture();
    f.append(0, 20).await;
    let (stats, _handle) = f.start(config(broker_addr, 4), no_announcements());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.log.cursor_now(SINK_NAME).expect("cursor"), 0);
    assert!(stats.retries.load(Ordering::Relaxed) >= 2, "it kept trying");

    broker::start(broker_addr, test_access()).expect("broker");
    let subscriber = Subscriber::connect(broker_addr).await;
    f.append(20, 30).await;
    f.cursor_reaches(30).await;
    // Entries 20..30 were appended after the subscriber was there, so it sees
    // them all; whether it also sees some of 0..20 depends on when the sink's
    // backoff let it connect, so wait for the later ones by sequence number.
    for _ in 0..1000 {
        let seqs: Vec<_> = subscriber
            .events(EVENTS)
            .iter()
            .map(|e| e["seq"].clone())
            .collect();
        if (20..30).all(|n| seqs.contains(&n.into())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seqs: Vec<_> = subscriber
        .events(EVENTS)
        .iter()
        .map(|e| e["seq"].clone())
        .collect();
    for n in 20..30 {
        assert!(seqs.contains(&n.into()), "entry {n} missing from {seqs:?}");
    }
    f.stop.cancel();
}

/// A TCP proxy in front of the broker that can drop every connection, and
/// refuse new ones, on command: a broker restart or a flaky link.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<tokio::sync::Notify>,
    refusing: Arc<AtomicBool>,
    /// Connections open through the proxy right now.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(tokio::sync::Notify::new());
        let refusing = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut2, refusing2, live2) = (cut.clone(), refusing.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing2.load(Ordering::SeqCst) {
                    continue;
                }
                let (cut, live) = (cut2.clone(), live2.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let cut = cut.notified();
                    live.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut => {}
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Proxy {
            addr,
            cut,
            refusing,
            live,
        }
    }

    fn cut_all(&self) {
        self.cut.notify_waiters();
    }

    /// Waits until the sink is connected through the proxy again, so a cut
    /// hits a connection instead of a sink still in its reconnect backoff.
    async fn wait_connected(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.live.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sink never reconnected"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn a_lost_connection_resends_from_the_cursor_and_loses_nothing() {
    let broker_addr = embedded_broker();
    let proxy = Proxy::start(broker_addr).await;
    let subscriber = Subscriber::connect(broker_addr).await;
    let f = fixture();
    let (stats, _handle) = f.start(config(proxy.addr, 16), no_announcements());
    let mut appended = 0;
    for round in 0..6 {
        f.append(appended, appended + 100).await;
        appended += 100;
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        proxy.wait_connected().await;
        proxy.cut_all();
        if round == 3 {
            // Down for a while, while payments keep coming.
            proxy.refusing.store(true, Ordering::SeqCst);
            f.append(appended, appended + 100).await;
            appended += 100;
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.refusing.store(false, Ordering::SeqCst);
        }
    }
    f.cursor_reaches(appended as u64).await;
    let events = subscriber.wait_for_events(EVENTS, appended).await;
    let mut seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let sent = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs,
        (0..appended as u64).collect::<Vec<_>>(),
        "every entry arrived"
    );
    assert!(stats.retries.load(Ordering::Relaxed) >= 6, "it reconnected");
    // At least once, and the duplicates are bounded by the window per cut.
    assert!(sent - appended <= 7 * 16, "{} resent", sent - appended);
    f.stop.cancel();
}

#[tokio::test]
async fn announcements_are_published_while_connected() {
    let broker_addr = embedded_broker();
    let subscriber = Subscriber::connect(broker_addr).await;
    let f = fixture();
    let (tx, rx) = broadcast::channel(ANNOUNCEMENT_BUFFER);
    // Sent before the sink connects: kept in the buffer.
    let announcement = AnnouncementJson {
        schema: 1,
        event_id: "abc".into(),
        seq: 0,
        hardware_id: "VNS-1".into(),
        request_id: "sbx-1".into(),
        amount: 150_000,
        words: "một trăm năm mươi nghìn đồng".into(),
        result: "played".into(),
        detail: None,
        at: "2026-11-26T00:00:00.000Z".into(),
    };
    tx.send(announcement.clone()).expect("send");
    let _sink = f.start(config(broker_addr, 4), rx);
    let topic = "soundbox/shop-1/announcements";
    let got = subscriber.wait_on(topic, |p| !p.is_empty()).await;
    assert_eq!(got.len(), 1);
    let json: serde_json::Value = serde_json::from_slice(&got[0].payload).expect("json");
    assert_eq!(json["words"], "một trăm năm mươi nghìn đồng");
    assert_eq!(json["result"], "played");
    f.stop.cancel();
}

fn puback(pkid: u16) -> Event {
    Event::Incoming(Incoming::PubAck(PubAck::new(pkid)))
}

#[test]
fn out_of_order_acks_settle_only_the_acknowledged_prefix() {
    let mut flight = InFlight::default();
    for seq in 10..14 {
        flight.requested.push_back(Tag::Event(seq));
        flight.events.push_back((seq, false));
    }
    flight.requested.push_back(Tag::Status);
    for pkid in 1..=5 {
        assert!(
            flight
                .on_event(&Event::Outgoing(Outgoing::Publish(pkid)))
                .is_empty()
        );
    }
    assert!(
        flight.on_event(&puback(2)).is_empty(),
        "11 acked, 10 not yet"
    );
    assert!(
        flight.on_event(&puback(5)).is_empty(),
        "status ack settles nothing"
    );
    assert_eq!(flight.on_event(&puback(1)), vec![10, 11]);
    assert!(
        flight.on_event(&puback(9)).is_empty(),
        "unknown ack ignored"
    );
    assert_eq!(flight.on_event(&puback(4)), Vec::<u64>::new());
    assert_eq!(flight.on_event(&puback(3)), vec![12, 13]);
    assert!(flight.is_empty());
}

#[test]
fn topics_are_under_prefix_and_gateway_id() {
    let topics = Topics::new("chain/hanoi", "shop-7");
    assert_eq!(topics.events, "chain/hanoi/shop-7/events");
    assert_eq!(topics.status, "chain/hanoi/shop-7/status");
    assert_eq!(topics.announcements, "chain/hanoi/shop-7/announcements");
}

#[test]
fn a_ca_file_without_certificates_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").expect("write");
    let error = tls_config(&MqttTls {
        ca_file: Some(path),
        identity: None,
    })
    .expect_err("no certs");
    assert!(error.to_string().contains("no PEM certificates"), "{error}");
}

#[test]
fn an_embedded_broker_port_in_use_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let error = broker::start(addr, test_access())
        .expect_err("port in use")
        .to_string();
    assert!(
        error.contains("mqtt.embedded_listen") && error.contains("another MQTT broker"),
        "{error}"
    );
}

#[tokio::test]
async fn two_gateways_with_one_client_id_back_off_instead_of_fighting() {
    let broker_addr = embedded_broker();
    let mut shared = config(broker_addr, 4);
    shared.retry = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(5),
        max_retry_after: Duration::from_secs(1),
    };
    let (a, b) = (fixture(), fixture());
    let (stats_a, _) = a.start(shared.clone(), no_announcements());
    let (stats_b, _) = b.start(shared, no_announcements());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reconnects =
        stats_a.retries.load(Ordering::Relaxed) + stats_b.retries.load(Ordering::Relaxed);
    // Each takeover drops the other at once; with the backoff reset on every
    // CONNACK that was a reconnect every ~25 ms (hundreds in 4 s).
    assert!(reconnects < 30, "{reconnects} reconnects in 4 s");
    a.stop.cancel();
    b.stop.cancel();
}

/// An anonymous client's connection to `addr` with `id`; returns how its
/// first `steps` event loop polls went.
async fn try_client(
    addr: SocketAddr,
    id: &str,
    act: impl AsyncFnOnce(&AsyncClient),
) -> Vec<Result<Event, String>> {
    let options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    act(&client).await;
    let mut seen = Vec::new();
    while seen.len() < 6 {
        match tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await {
            Ok(Ok(event)) => seen.push(Ok(event)),
            Ok(Err(error)) => {
                seen.push(Err(error.to_string()));
                break;
            }
            Err(_) => break,
        }
    }
    seen
}

#[tokio::test]
async fn behind_the_guard_only_the_gateway_publishes_on_its_topics() {
    let addr = free_port();
    let mut settings = config(addr, 8);
    settings.broker = MqttBroker::Embedded { listen: addr };
    let embedded = broker::start(addr, broker::Access::new(&settings)).expect("broker");
    let subscriber = Subscriber::connect(addr).await;
    let f = fixture();
    let sink = MqttSink::new(settings.clone(), "shop-1")
        .expect("sink")
        .with_embedded(&embedded);
    let (_stats, _handle) = f.start_sink(sink, no_announcements());
    f.append(0, 3).await;
    subscriber.wait_for_events(EVENTS, 3).await;

    // A fake payment: the client is disconnected before its PubAck.
    let fake = try_client(addr, "pos-1", async |c| {
        c.publish(EVENTS, QoS::AtLeastOnce, false, r#"{"amount":50000000}"#)
            .await
            .expect("queue");
    })
    .await;
    assert!(
        !fake
            .iter()
            .any(|e| matches!(e, Ok(Event::Incoming(Incoming::PubAck(_))))),
        "{fake:?}"
    );
    assert!(
        fake.last().is_some_and(Result::is_err),
        "disconnected: {fake:?}"
    );
    // The gateway's client id is refused at CONNECT.
    let takeover = try_client(addr, &settings.client_id, async |_| {}).await;
    assert!(
        matches!(&takeover[..], [Err(e)] if e.contains("BadClientId")),
        "{takeover:?}"
    );
    // Elsewhere, clients publish as before.
    let other = try_client(addr, "pos-2", async |c| {
        c.publish("pos/pos-2/hello", QoS::AtLeastOnce, false, "hi")
            .await
            .expect("queue");
    })
    .await;
    assert!(
        other
            .iter()
            .any(|e| matches!(e, Ok(Event::Incoming(Incoming::PubAck(_))))),
        "{other:?}"
    );

    f.append(3, 4).await;
    let events = subscriber.wait_for_events(EVENTS, 4).await;
    assert!(
        events.iter().all(|e| e["amount"] != 50_000_000),
        "{events:?}"
    );
    f.cursor_reaches(4).await;
    f.stop.cancel();
}

#[tokio::test]
async fn the_internal_broker_lets_in_only_its_own_logins() {
    let embedded = broker::start(free_port(), test_access()).expect("broker");
    let (internal, login) = embedded.sink_endpoint();
    assert!(internal.ip().is_loopback());
    assert_eq!(login.password.expose().len(), 32);
    assert!(!format!("{embedded:?}").contains(login.password.expose()));
    // Straight to rumqttd without a login: closed without a CONNACK.
    let anonymous = try_client(internal, "sneaky", async |_| {}).await;
    assert!(
        !anonymous
            .iter()
            .any(|e| matches!(e, Ok(Event::Incoming(Incoming::ConnAck(_))))),
        "{anonymous:?}"
    );
}

fn relay_config(broker_addr: SocketAddr, shops: &[(&str, &str)]) -> MqttConfig {
    MqttConfig {
        relay: Some(crate::config::RelayConfig {
            topic: "soundbox/{shop}/payments".into(),
            shops: shops
                .iter()
                .map(|(a, s)| (a.to_string(), s.to_string()))
                .collect(),
        }),
        ..config(broker_addr, 8)
    }
}

#[tokio::test]
async fn a_relay_publishes_each_payment_on_its_shops_topic_and_holds_unknown_accounts() {
    let broker_addr = embedded_broker();
    let subscriber = Subscriber::connect(broker_addr).await;
    let f = fixture();
    let change = |i: usize, account: &str| BalanceChange {
        account: account.into(),
        ..BalanceChange::example(&format!("tx-{i}"), 1_000 + i as u64)
    };
    let accounts = ["A1", "B2", "A1", "ZZ", "B2", "A1"];
    let changes = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| change(i, a))
        .collect();
    f.log.append_changes(changes).await.expect("append");
    let shops = [("A1", "shop-a"), ("B2", "shop-b")];
    let (_, handle) = f.start(relay_config(broker_addr, &shops), no_announcements());

    let a = subscriber
        .wait_for_events("soundbox/shop-a/payments", 3)
        .await;
    let b = subscriber
        .wait_for_events("soundbox/shop-b/payments", 2)
        .await;
    let seqs = |events: &[serde_json::Value]| -> Vec<u64> {
        events.iter().filter_map(|e| e["seq"].as_u64()).collect()
    };
    assert_eq!(seqs(&a), vec![0, 2, 5], "shop A's, in log order");
    assert_eq!(seqs(&b), vec![1, 4]);
    // Every entry is settled: the unknown account as a dead letter.
    f.cursor_reaches(6).await;
    assert!(
        subscriber.on(EVENTS).is_empty(),
        "a relay has no events topic"
    );
    let status = f.log.status_where(SINK_NAME, None).expect("status");
    assert_eq!(status.dead_letters, 1, "{status:?}");
    let dead = f
        .log
        .list_where(SINK_NAME, Some("dead"), 10, None)
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no shop for account ZZ"),
        "{dead:?}"
    );

    // The operator adds the shop and requeues: it goes to its topic.
    f.stop.cancel();
    handle.await.expect("sink task");
    let f2 = Fixture {
        _dir: tempfile::tempdir().expect("tempdir"),
        log: f.log.clone(),
        stop: CancellationToken::new(),
    };
    let shops = [("A1", "shop-a"), ("B2", "shop-b"), ("ZZ", "shop-z")];
    let (_, _handle) = f2.start(relay_config(broker_addr, &shops), no_announcements());
    assert_eq!(f2.log.requeue(SINK_NAME, None).await.expect("requeue"), 1);
    let z = subscriber
        .wait_for_events("soundbox/shop-z/payments", 1)
        .await;
    assert_eq!(seqs(&z), vec![3]);
    for _ in 0..500 {
        if f2
            .log
            .status_where(SINK_NAME, None)
            .expect("status")
            .dead_letters
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = f2.log.status_where(SINK_NAME, None).expect("status");
    assert_eq!((status.dead_letters, status.pending), (0, 0), "{status:?}");
    f2.stop.cancel();
}

#[tokio::test]
async fn the_health_document_is_retained_and_republished_on_change_only() {
    use crate::sinks::mqtt::HealthSnapshot;
    let broker_addr = embedded_broker();
    let subscriber = Subscriber::connect(broker_addr).await;
    let f = fixture();
    let snapshot = |fingerprint: u64, text: &str| {
        Some(Arc::new(HealthSnapshot {
            fingerprint,
            json: text.as_bytes().to_vec(),
        }))
    };
    let (feed, health) = tokio::sync::watch::channel(snapshot(1, "{\"n\":1}"));
    let sink = MqttSink::new(config(broker_addr, 8), "shop-1")
        .expect("sink")
        .with_health(health);
    let (_, _handle) = f.start_sink(sink, no_announcements());
    const HEALTH: &str = "soundbox/shop-1/health";
    let texts = || -> Vec<String> {
        subscriber
            .on(HEALTH)
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    };
    subscriber.wait_on(HEALTH, |p| !p.is_empty()).await;
    assert_eq!(texts(), vec!["{\"n\":1}"]);
    // Same fingerprint within health_every: not published again.
    feed.send_replace(snapshot(1, "{\"n\":2}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(), vec!["{\"n\":1}"]);
    // A changed fingerprint: at once.
    feed.send_replace(snapshot(2, "{\"n\":3}"));
    subscriber.wait_on(HEALTH, |p| p.len() == 2).await;
    assert_eq!(texts(), vec!["{\"n\":1}", "{\"n\":3}"]);
    // Retained: a late subscriber gets the latest.
    let late = Subscriber::connect(broker_addr).await;
    let latest = late.wait_on(HEALTH, |p| !p.is_empty()).await;
    assert_eq!(
        latest.last().map(|p| &p.payload[..]),
        Some(&b"{\"n\":3}"[..])
    );
    f.stop.cancel();
}
