//! MQTT publish throughput: the MQTT sink (read the log, publish QoS 1, wait
//! for PUBACK, record delivery) against a bare rumqttc client publishing the
//! same payloads with the same in-flight window (no log), to the embedded
//! broker and to Mosquitto, in one run.
//! Run: `cargo bench -p soundbox-gateway --bench mqtt_publish`
//! (Mosquitto rows need `mosquitto`: `apt-get install mosquitto`.)
//!
//! Each row publishes `EVENTS` payments already in the log (a backlog after
//! an outage: the sink's best case for batching); no subscriber is attached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use soundbox_e2e::free_port;
use soundbox_e2e::mqtt::{Mosquitto, mosquitto_installed};
use soundbox_gateway::config::{Endpoint, MqttBroker, MqttConfig};
use soundbox_gateway::log::{LogOptions, Store};
use soundbox_gateway::model::BalanceChange;
use soundbox_gateway::sinks::event::EventJson;
use soundbox_gateway::sinks::mqtt::{MqttSink, SINK_NAME, broker};
use soundbox_gateway::sinks::{RetryPolicy, Shutdown, SinkStats};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 10_000;
const WINDOWS: [usize; 4] = [1, 16, 64, 256];

fn change(i: usize) -> BalanceChange {
    BalanceChange {
        reference: Some(format!("MBVCB.{i}")),
        content: Some("CT DEN:0123456789 thanh toan don hang".into()),
        ..BalanceChange::example(&format!("bench-{i}"), 150_000)
    }
}

/// A log in a temp dir under target/ (a real disk) holding `EVENTS` payments.
async fn filled_log() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let log = Store::open(
        dir.path(),
        LogOptions {
            min_free_disk_bytes: 0,
            ..LogOptions::default()
        },
    )
    .expect("open log");
    log.register(SINK_NAME, None).await.expect("register");
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        log.append_changes(chunk.iter().map(|&i| change(i)).collect())
            .await
            .expect("append");
    }
    (dir, log)
}

/// Events per second through the MQTT sink with `window`.
async fn sink_rate(broker_addr: SocketAddr, window: usize) -> f64 {
    let (_dir, log) = filled_log().await;
    let config = MqttConfig {
        name: None,
        broker: MqttBroker::External(Endpoint {
            host: broker_addr.ip().to_string(),
            port: broker_addr.port(),
            tls: None,
        }),
        topic_prefix: "bench".into(),
        client_id: format!("bench-sink-{window}-{}", broker_addr.port()),
        username: None,
        password: None,
        embedded_users: Vec::new(),
        keep_alive: Duration::from_secs(30),
        window,
        retry: RetryPolicy::default(),
        relay: None,
        health_every: Duration::from_secs(60),
    };
    let sink = Arc::new(MqttSink::new(config, "shop").expect("sink"));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(sink.run(
        Arc::new(log.clone()),
        Arc::new(SinkStats::default()),
        Shutdown {
            stop: stop.clone(),
            grace: Duration::from_secs(1),
        },
        tokio::sync::broadcast::channel(1).1,
    ));
    while log.cursor_now(SINK_NAME).expect("cursor") < EVENTS as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    rate
}

/// Events per second for a bare rumqttc client: the same JSON payloads,
/// QoS 1, at most `window` unacknowledged; no log reads or writes.
async fn bare_rate(broker_addr: SocketAddr, window: usize) -> f64 {
    let payloads: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            let entry = soundbox_gateway::log::LogEntry {
                seq: i as u64,
                appended_at_ms: 0,
                change: change(i),
            };
            serde_json::to_vec(&EventJson::from_entry(&entry)).expect("json")
        })
        .collect();
    let id = format!("bench-bare-{window}-{}", broker_addr.port());
    let mut options = MqttOptions::new(id, broker_addr.ip().to_string(), broker_addr.port());
    options
        .set_inflight(u16::try_from(window).expect("window"))
        .set_max_packet_size(256 << 10, 256 << 10);
    let (client, mut eventloop) = AsyncClient::new(options, window * 2);
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        for payload in payloads {
            client
                .publish("bench/bare/events", QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        client
    });
    let mut acked = 0;
    while acked < EVENTS {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.expect("poll") {
            acked += 1;
        }
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    let _ = publisher.await;
    rate
}

#[tokio::main]
async fn main() {
    let embedded = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // Through the guard, as a POS client publishing on its own topics would:
    // the bench's `bench/` prefix is not the one it protects.
    let access = broker::Access {
        prefix: "soundbox".into(),
        gateway_client_id: "soundbox-bench".into(),
        users: Vec::new(),
    };
    broker::start(embedded, access).expect("embedded broker");
    // Nothing kept on disk, and room for the whole backlog.
    let mosquitto = mosquitto_installed().then(|| {
        Mosquitto::start_without_persistence("allow_anonymous true\nmax_queued_messages 100000\n")
    });
    if mosquitto.is_none() {
        println!("mosquitto not found: its rows are skipped (apt-get install mosquitto)");
    }
    let mut brokers = vec![("embedded (guard)", embedded)];
    if let Some(broker) = &mosquitto {
        brokers.push(("mosquitto", SocketAddr::from(([127, 0, 0, 1], broker.port))));
    }

    println!("MQTT publish, {EVENTS} events of ~420 bytes, QoS 1, loopback");
    println!(
        "{:<20} {:>6} {:>14} {:>14} {:>8}",
        "broker", "window", "sink ev/s", "bare ev/s", "sink/bare"
    );
    for (name, addr) in brokers {
        for window in WINDOWS {
            let bare = bare_rate(addr, window).await;
            let sink = sink_rate(addr, window).await;
            println!(
                "{name:<20} {window:>6} {sink:>14.0} {bare:>14.0} {:>7.2}x",
                sink / bare
            );
        }
    }
}
