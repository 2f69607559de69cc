//! The brokers of a shop chain, without the gateway: a three-node NATS
//! cluster speaking MQTT and a Mosquitto broker that requires client
//! certificates. These tests prove the harness (`soundbox_e2e::nats`,
//! `soundbox_e2e::tls`) and pin down the broker behaviour the gateway will
//! rely on, with rumqttc alone: persistent sessions (clean session off),
//! QoS 1 and manual PUBACKs, as the gateway's MQTT client runs them.
//!
//! What NATS 2.9 does, as observed here:
//! - A retained message published on one node is served to a subscriber
//!   on any other node.
//! - A persistent session is cluster-wide: a client that subscribed through
//!   one node and comes back through another gets `session_present` and
//!   the QoS 1 messages published while it was away, without subscribing
//!   again.
//! - A QoS 1 message delivered but never PUBACKed is sent again with DUP,
//!   on the same connection once `ack_wait` has passed (NATS does not wait
//!   for a reconnect, as MQTT 3.1.1 brokers do), and after a reconnect, but
//!   not sooner than `ack_wait` after its last delivery: a reconnect alone
//!   does not bring it. A PUBACKed one is never sent again, provided the
//!   PUBACK was written before the socket closed.
//! - A client connected to a node that is SIGKILLed sees its connection
//!   drop at once; it has to reconnect, to that node once it is back or to
//!   another one. Clients of the other nodes keep publishing and receiving,
//!   though a QoS 1 PUBLISH can stall for seconds while JetStream elects
//!   new leaders (see `nats_node_killed_and_restarted`).

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnAck, ConnectReturnCode, Event, Incoming, MqttOptions, Outgoing, Publish, QoS,
    SubscribeReasonCode,
};
use soundbox_e2e::mqtt::{Mosquitto, mosquitto_available};
use soundbox_e2e::nats::{ACK_WAIT, NatsCluster, nats_available};
use soundbox_e2e::tls::{Pki, mqtt_transport, openssl_available};
use tokio::sync::mpsc;

/// An MQTT client whose event loop runs in a task, reconnecting on its own
/// after an error (after 200 ms); what it receives, errors included, comes
/// out of [`Client::next`]. The event loop stops when it is dropped, without
/// a DISCONNECT: a crash, as the broker sees it.
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    /// PUBLISHes that came while [`Client::wait_for`] looked for something
    /// else (a PUBACK, a SUBACK), for the next [`Client::received`].
    held: std::collections::VecDeque<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Client `id` to `127.0.0.1:port` with clean session `clean`, manual
    /// PUBACKs and a 5 s keep-alive.
    fn options(id: &str, port: u16, clean: bool) -> MqttOptions {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_session(clean)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(5));
        options
    }

    /// Starts the event loop: it connects at once.
    fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(incoming)) => Ok(incoming),
                    // Written and flushed: reported as the DISCONNECT a
                    // broker never sends, for [`Client::disconnect`].
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Ok(Incoming::Disconnect),
                    Ok(Event::Outgoing(_)) => continue,
                    Err(e) => Err(e.to_string()),
                };
                let failed = event.is_err();
                if tx.send(event).is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Client {
            client,
            events,
            held: std::collections::VecDeque::new(),
            task,
        }
    }

    /// Connects and waits for a successful CONNACK (10 s).
    async fn connect(options: MqttOptions) -> (Client, ConnAck) {
        let mut client = Self::start(options);
        let connack = client
            .connack(Duration::from_secs(10))
            .await
            .expect("CONNACK");
        (client, connack)
    }

    /// The next event (an incoming packet or a connection error), if one
    /// comes within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Result<Incoming, String>> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The first CONNACK, or the first error before it.
    async fn connack(&mut self, timeout: Duration) -> Result<ConnAck, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Ok(Incoming::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                    return Ok(ack);
                }
                Some(Ok(Incoming::ConnAck(ack))) => return Err(format!("refused: {ack:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("no CONNACK in time".into()),
            }
        }
    }

    /// The first successful CONNACK within `timeout`, skipping connection
    /// errors (the loop keeps reconnecting): how long it took.
    async fn reconnected(&mut self, timeout: Duration) -> Option<(ConnAck, Duration)> {
        let started = Instant::now();
        self.wait_for(timeout, |incoming| match incoming {
            Incoming::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Some(ack.clone()),
            _ => None,
        })
        .await
        .map(|ack| (ack, started.elapsed()))
    }

    /// Waits for an incoming packet `want` picks a value from, held
    /// PUBLISHes first. PUBLISHes it does not want are held for later;
    /// other packets and connection errors are skipped (the loop
    /// reconnects).
    async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Incoming) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.held.len() {
            if let Some(found) = want(&Incoming::Publish(self.held[i].clone())) {
                self.held.remove(i);
                return Some(found);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Ok(incoming)) => {
                    if let Some(found) = want(&incoming) {
                        return Some(found);
                    }
                    if let Incoming::Publish(p) = incoming {
                        self.held.push_back(p);
                    }
                }
                Some(Err(_)) => {}
                None => return None,
            }
        }
    }

    /// Subscribes to `filter` at QoS 1 and returns the SUBACK's code.
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.wait_for(Duration::from_secs(10), |incoming| match incoming {
            Incoming::SubAck(ack) => Some(ack.return_codes[0]),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no SUBACK for {filter}"))
    }

    /// Publishes `payload` to `topic` at QoS 1 and waits for the PUBACK;
    /// how long it took.
    async fn publish(&mut self, topic: &str, payload: &str, retain: bool) -> Duration {
        let started = Instant::now();
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("publish");
        self.wait_for(Duration::from_secs(20), |incoming| {
            matches!(incoming, Incoming::PubAck(_)).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("no PUBACK for {payload} on {topic}"));
        started.elapsed()
    }

    /// The next PUBLISH received within `timeout`.
    async fn received(&mut self, timeout: Duration) -> Option<Publish> {
        self.wait_for(timeout, |incoming| match incoming {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// The next PUBLISH whose payload is `payload`, skipping others.
    async fn received_payload(&mut self, payload: &str, timeout: Duration) -> Option<Publish> {
        self.wait_for(timeout, |incoming| match incoming {
            Incoming::Publish(p) if p.payload.as_ref() == payload.as_bytes() => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Sends the PUBACK of `publish`.
    async fn ack(&self, publish: &Publish) {
        self.client.ack(publish).await.expect("ack");
    }

    /// Sends DISCONNECT (a clean goodbye; the session stays, as clean
    /// session is off) and stops the event loop once it is written, with
    /// every PUBACK asked for before it. Dropping the loop sooner closes
    /// the socket with them unsent: the broker then sends those messages
    /// again, rightly.
    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect");
        self.wait_for(Duration::from_secs(5), |incoming| {
            matches!(incoming, Incoming::Disconnect).then_some(())
        })
        .await
        .expect("DISCONNECT written");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.payload).into_owned()
}

/// A retained message published on node 0 is served to a subscriber that
/// comes later through node 2.
#[tokio::test(flavor = "multi_thread")]
async fn nats_retained_message_is_served_by_another_node() {
    if !nats_available() {
        return;
    }
    let started = Instant::now();
    let cluster = NatsCluster::start(3);
    eprintln!("cluster usable after {:?}", started.elapsed());

    let (mut publisher, _) = Client::connect(Client::options(
        "retained-publisher",
        cluster.mqtt_port(0),
        true,
    ))
    .await;
    let took = publisher
        .publish("chain/shop-1/status", "online", true)
        .await;
    eprintln!("retained PUBACK after {took:?}");

    // The retained message reaches the other nodes asynchronously; the
    // PUBACK means it is stored (replicated), not that node 2 has it yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    let got = loop {
        attempt += 1;
        let (mut subscriber, _) = Client::connect(Client::options(
            &format!("retained-reader-{attempt}"),
            cluster.mqtt_port(2),
            true,
        ))
        .await;
        assert_eq!(
            subscriber.subscribe("chain/+/status").await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        if let Some(p) = subscriber.received(Duration::from_secs(1)).await {
            subscriber.ack(&p).await;
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no retained message on node 2; logs:\n{}",
            cluster.all_logs()
        );
    };
    eprintln!("retained message served by node 2 on attempt {attempt}");
    assert_eq!(got.topic, "chain/shop-1/status");
    assert_eq!(text(&got), "online");
    assert!(got.retain, "served as retained");
}

/// A persistent session subscribed through node 0 gets, through node 2, what
/// was published through node 1 while it was away: the session and its
/// subscription are the cluster's, not a node's.
#[tokio::test(flavor = "multi_thread")]
async fn nats_persistent_session_moves_between_nodes() {
    if !nats_available() {
        return;
    }
    let cluster = NatsCluster::start(3);
    let topic = "chain/shop-1/payments";

    let (mut speaker, connack) = Client::connect(Client::options(
        "shop-1-speaker",
        cluster.mqtt_port(0),
        false,
    ))
    .await;
    assert!(!connack.session_present, "a new session");
    assert_eq!(
        speaker.subscribe(topic).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    speaker.disconnect().await;

    let (mut pos, _) = Client::connect(Client::options("pos", cluster.mqtt_port(1), true)).await;
    pos.publish(topic, "payment-1", false).await;

    let (mut speaker, connack) = Client::connect(Client::options(
        "shop-1-speaker",
        cluster.mqtt_port(2),
        false,
    ))
    .await;
    assert!(
        connack.session_present,
        "the session made through node 0 is present on node 2"
    );
    let p = speaker
        .received(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("payment-1 not delivered; logs:\n{}", cluster.all_logs()));
    assert_eq!(p.topic, topic);
    assert_eq!(text(&p), "payment-1");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    speaker.ack(&p).await;

    // Connected, without subscribing again: new messages flow too.
    pos.publish(topic, "payment-2", false).await;
    let p = speaker
        .received(Duration::from_secs(10))
        .await
        .expect("payment-2 while connected");
    assert_eq!(text(&p), "payment-2");
    speaker.ack(&p).await;
}

/// A QoS 1 message received and never PUBACKed is sent again: on the same
/// connection once `ack_wait` has passed, and after a reconnect (through
/// another node), though not before `ack_wait` since the last delivery.
/// Once PUBACKed, it is not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn nats_unacked_message_is_delivered_again() {
    if !nats_available() {
        return;
    }
    let cluster = NatsCluster::start(3);
    let topic = "chain/shop-2/payments";
    let (mut speaker, _) = Client::connect(Client::options(
        "shop-2-speaker",
        cluster.mqtt_port(0),
        false,
    ))
    .await;
    speaker.subscribe(topic).await;
    let (mut pos, _) = Client::connect(Client::options("pos", cluster.mqtt_port(1), true)).await;

    pos.publish(topic, "payment-1", false).await;
    let first = speaker
        .received(Duration::from_secs(10))
        .await
        .expect("payment-1");
    let delivered = Instant::now();
    assert_eq!(text(&first), "payment-1");
    assert!(!first.dup);

    // Not PUBACKed: NATS sends it again on the same connection, with DUP,
    // once ack_wait has passed (MQTT 3.1.1 only requires it on reconnect).
    let again = speaker
        .received(ACK_WAIT + Duration::from_secs(5))
        .await
        .expect("redelivered on the same connection after ack_wait");
    let after = delivered.elapsed();
    eprintln!("redelivered on the same connection after {after:?}");
    assert_eq!(text(&again), "payment-1");
    assert!(again.dup, "a redelivery carries DUP");
    assert!(
        after >= ACK_WAIT - Duration::from_millis(500),
        "not before ack_wait: {after:?}"
    );

    // Still not PUBACKed; the client crashes (no DISCONNECT) and its session
    // comes back through node 2 at once: the message comes again, not at
    // the reconnect but when ack_wait has run out since the last delivery
    // (JetStream's timer, not the MQTT session, decides).
    let second = Instant::now();
    drop(speaker);
    let (mut speaker, connack) = Client::connect(Client::options(
        "shop-2-speaker",
        cluster.mqtt_port(2),
        false,
    ))
    .await;
    assert!(connack.session_present);
    let third = speaker
        .received(ACK_WAIT + Duration::from_secs(5))
        .await
        .expect("redelivered after reconnecting");
    let after = second.elapsed();
    eprintln!(
        "redelivered after a reconnect through another node {after:?} after the last delivery (dup {})",
        third.dup
    );
    assert_eq!(text(&third), "payment-1");
    assert!(third.dup);
    assert!(
        after >= ACK_WAIT - Duration::from_millis(500),
        "not before ack_wait: {after:?}"
    );

    // Crashed again, and back only once ack_wait has run out: it comes at
    // once.
    drop(speaker);
    tokio::time::sleep(ACK_WAIT + Duration::from_secs(1)).await;
    let reconnecting = Instant::now();
    let (mut speaker, _) = Client::connect(Client::options(
        "shop-2-speaker",
        cluster.mqtt_port(1),
        false,
    ))
    .await;
    let fourth = speaker
        .received(Duration::from_secs(3))
        .await
        .expect("redelivered at once after a reconnect past ack_wait");
    eprintln!(
        "redelivered {:?} after a reconnect past ack_wait",
        reconnecting.elapsed()
    );
    assert_eq!(text(&fourth), "payment-1");
    speaker.ack(&fourth).await;

    // PUBACKed: never again, on this connection or the next (through
    // node 0 this time).
    pos.publish(topic, "payment-2", false).await;
    let next = speaker
        .received(Duration::from_secs(10))
        .await
        .expect("payment-2");
    assert_eq!(text(&next), "payment-2");
    speaker.ack(&next).await;
    speaker.disconnect().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.mqtt_unacked() != 0 {
        assert!(
            Instant::now() < deadline,
            "JetStream still waits for a PUBACK"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut speaker, _) = Client::connect(Client::options(
        "shop-2-speaker",
        cluster.mqtt_port(0),
        false,
    ))
    .await;
    if let Some(p) = speaker.received(ACK_WAIT + Duration::from_secs(1)).await {
        panic!("{} sent again after its PUBACK", text(&p));
    }
}

/// A node SIGKILLed: its clients lose their connection at once; clients of
/// the other nodes keep publishing and receiving. Restarted on the same
/// ports and store, it serves its clients again, sessions included.
#[tokio::test(flavor = "multi_thread")]
async fn nats_node_killed_and_restarted() {
    if !nats_available() {
        return;
    }
    let mut cluster = NatsCluster::start(3);
    eprintln!("meta leader before: {:?}", cluster.meta_leader(1));
    let (mut on_0, _) = Client::connect(Client::options(
        "shop-3-speaker",
        cluster.mqtt_port(0),
        false,
    ))
    .await;
    on_0.subscribe("chain/shop-3/payments").await;
    let (mut on_2, _) = Client::connect(Client::options(
        "shop-4-speaker",
        cluster.mqtt_port(2),
        false,
    ))
    .await;
    on_2.subscribe("chain/shop-4/payments").await;
    let (mut pos, _) = Client::connect(Client::options("pos", cluster.mqtt_port(1), false)).await;

    let killed = Instant::now();
    cluster.kill(0);
    match on_0.next(Duration::from_secs(10)).await {
        Some(Err(e)) => eprintln!(
            "client of the killed node: error after {:?}: {e}",
            killed.elapsed()
        ),
        other => panic!("client of the killed node: {other:?}"),
    }

    // The others carry on. If node 0 led the stream of MQTT messages,
    // JetStream first elects a new leader (a few seconds); a QoS 1 PUBLISH
    // meanwhile holds its connection for NATS's JetStream API timeout (4 s),
    // then NATS closes the connection without a PUBACK: the client
    // reconnects and sends it again (DUP). Had the first store gone
    // through after all, the message would be stored twice (not seen in
    // these runs). The PUBACK here is the one that finally came.
    let took = pos
        .publish("chain/shop-4/payments", "during-1", false)
        .await;
    eprintln!("PUBACK with node 0 down after {took:?}");
    let p = on_2
        .received(Duration::from_secs(10))
        .await
        .expect("node 2 delivers with node 0 down");
    assert_eq!(text(&p), "during-1");
    on_2.ack(&p).await;
    let mut copies = 1;
    while let Some(p) = on_2
        .received_payload("during-1", Duration::from_millis(500))
        .await
    {
        on_2.ack(&p).await;
        copies += 1;
    }
    eprintln!("during-1 delivered {copies} time(s)");
    // For node 0's client, while it is away.
    pos.publish("chain/shop-3/payments", "during-2", false)
        .await;

    let restarting = Instant::now();
    cluster.restart(0);
    eprintln!(
        "node 0 usable {:?} after restart ({:?} after the kill)",
        restarting.elapsed(),
        killed.elapsed()
    );

    // The old client's loop keeps reconnecting to node 0 and finds it back,
    // its session there, and what was published while it was away.
    let (connack, took) = on_0
        .reconnected(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no reconnect to node 0; log:\n{}", cluster.logs(0)));
    eprintln!("the old client reconnected {took:?} after node 0 was usable");
    assert!(connack.session_present);
    let p = on_0
        .received_payload("during-2", Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("during-2 on node 0; logs:\n{}", cluster.all_logs()));
    on_0.ack(&p).await;

    // Everything flows again, through every node.
    pos.publish("chain/shop-3/payments", "after", false).await;
    let p = on_0
        .received_payload("after", Duration::from_secs(10))
        .await
        .expect("after, on node 0");
    on_0.ack(&p).await;
    pos.publish("chain/shop-4/payments", "after", false).await;
    let p = on_2
        .received_payload("after", Duration::from_secs(10))
        .await
        .expect("after, on node 2");
    on_2.ack(&p).await;
}

/// What NATS 2.9's MQTT refuses, on a single node: QoS 2 (a subscription
/// is granted QoS 1; a QoS 2 PUBLISH closes the connection) and `.` or ` `
/// in a topic (the subscription fails; a PUBLISH closes the connection),
/// as MQTT topic levels become NATS subject tokens.
#[tokio::test(flavor = "multi_thread")]
async fn nats_mqtt_refuses_qos2_and_dots() {
    if !nats_available() {
        return;
    }
    let cluster = NatsCluster::start(1);
    let (mut client, _) =
        Client::connect(Client::options("limits", cluster.mqtt_port(0), true)).await;
    client
        .client
        .subscribe("chain/shop-1/payments", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    let granted = client
        .wait_for(Duration::from_secs(10), |incoming| match incoming {
            Incoming::SubAck(ack) => Some(ack.return_codes[0]),
            _ => None,
        })
        .await;
    assert_eq!(
        granted,
        Some(SubscribeReasonCode::Success(QoS::AtLeastOnce)),
        "QoS 2 granted as 1"
    );
    assert_eq!(
        client.subscribe("chain/shop.1/payments").await,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        client.subscribe("chain/shop 1/payments").await,
        SubscribeReasonCode::Failure
    );

    for (topic, qos) in [
        ("chain/shop-1/payments", QoS::ExactlyOnce),
        ("chain/shop.1/payments", QoS::AtLeastOnce),
    ] {
        client
            .client
            .publish(topic, qos, false, b"x".to_vec())
            .await
            .expect("publish");
        match client.next(Duration::from_secs(5)).await {
            Some(Err(e)) => eprintln!("PUBLISH {qos:?} to {topic}: connection closed ({e})"),
            other => panic!("PUBLISH {qos:?} to {topic}: {other:?}"),
        }
        // The loop reconnects, without the refused message (clean session).
        client
            .reconnected(Duration::from_secs(5))
            .await
            .expect("reconnect");
    }
}

/// Mosquitto with TLS client certificates: the CA's client connects (the
/// certificate's CN is its user name), publishes and receives.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_tls_client_certificate_connects() {
    if !mosquitto_available() || !openssl_available() {
        return;
    }
    let pki = Pki::generate();
    let broker = Mosquitto::start_tls(&pki, None);
    let mut options = Client::options("shop-1", broker.port, true);
    options.set_transport(mqtt_transport(pki.client_config(Some("shop-1"))));
    let (mut client, connack) = Client::connect(options).await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert_eq!(
        client.subscribe("chain/shop-1/payments").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    client
        .publish("chain/shop-1/payments", "payment-1", false)
        .await;
    let p = client
        .received(Duration::from_secs(10))
        .await
        .expect("own message back");
    assert_eq!(text(&p), "payment-1");
    client.ack(&p).await;
}

/// Mosquitto refuses a client without a certificate and one whose
/// certificate a rogue CA signed (even with a real shop's CN); a client that
/// does not trust the broker's CA refuses the broker.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_tls_refuses_missing_or_rogue_certificates() {
    if !mosquitto_available() || !openssl_available() {
        return;
    }
    let pki = Pki::generate();
    let broker = Mosquitto::start_tls(&pki, None);
    let cases = [
        ("no client certificate", pki.client_config(None)),
        ("rogue CA's certificate", pki.rogue_client_config()),
        (
            "broker's CA not trusted",
            Pki::rustls_config(
                &pki.rogue_ca_cert,
                Some((&pki.client_cert("shop-1").0, &pki.client_cert("shop-1").1)),
            ),
        ),
    ];
    for (case, config) in cases {
        let mut options = Client::options("shop-1", broker.port, true);
        options.set_transport(mqtt_transport(config));
        let mut client = Client::start(options);
        match client.connack(Duration::from_secs(10)).await {
            Err(e) => eprintln!("{case}: {e}"),
            Ok(ack) => panic!("{case}: connected ({ack:?})"),
        }
    }
    // Plain MQTT on the TLS port gets nowhere either.
    let mut client = Client::start(Client::options("plain", broker.port, true));
    let refused = client.connack(Duration::from_secs(10)).await;
    eprintln!("plain MQTT: {refused:?}");
    assert!(refused.is_err());
}

/// With an ACL, a shop reads its own payments topic only; the gateway
/// (its own certificate) writes to every shop's.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_tls_acl_keeps_a_shop_to_its_topic() {
    if !mosquitto_available() || !openssl_available() {
        return;
    }
    let pki = Pki::generate();
    let broker = Mosquitto::start_tls(
        &pki,
        Some("pattern read chain/%u/payments\n\nuser gateway\ntopic readwrite chain/#\n"),
    );
    let tls = |name: &str| mqtt_transport(pki.client_config(Some(name)));

    let mut options = Client::options("shop-1", broker.port, false);
    options.set_transport(tls("shop-1"));
    let (mut shop, _) = Client::connect(options).await;
    let own = shop.subscribe("chain/shop-1/payments").await;
    let other = shop.subscribe("chain/shop-2/payments").await;
    let wildcard = shop.subscribe("chain/+/payments").await;
    eprintln!("SUBACK: own {own:?}, other shop's {other:?}, wildcard {wildcard:?}");
    assert_eq!(own, SubscribeReasonCode::Success(QoS::AtLeastOnce));

    let mut options = Client::options("gateway", broker.port, true);
    options.set_transport(tls("gateway"));
    let (mut gateway, _) = Client::connect(options).await;
    gateway
        .publish("chain/shop-2/payments", "not-for-shop-1", false)
        .await;
    gateway
        .publish("chain/shop-1/payments", "for-shop-1", false)
        .await;

    // Mosquitto checks read access per message: shop-1 gets its own only,
    // whatever it subscribed to.
    let mut got = Vec::new();
    while let Some(p) = shop.received(Duration::from_secs(2)).await {
        shop.ack(&p).await;
        got.push((p.topic.clone(), text(&p)));
    }
    assert!(
        got.iter()
            .all(|(topic, payload)| topic == "chain/shop-1/payments" && payload == "for-shop-1"),
        "{got:?}"
    );
    assert!(!got.is_empty(), "shop-1 got its payment");

    // A shop may not write, not even to its own topic: Mosquitto answers
    // the PUBACK (MQTT 3.1.1 has no way to refuse) and drops the message.
    shop.publish("chain/shop-1/payments", "forged", false).await;
    if let Some(p) = shop.received(Duration::from_secs(1)).await {
        panic!("a shop's own publish went through: {}", text(&p));
    }
}
