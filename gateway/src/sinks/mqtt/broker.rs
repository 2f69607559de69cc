//! The embedded MQTT broker (rumqttd), so a shop needs nothing else: POS
//! screens and displays on the box (or the LAN, if `embedded_listen` says
//! so) subscribe to it directly. Plain MQTT 3.1.1, no accounts: keep it on
//! loopback unless the network is trusted. It lives as long as the process.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {listen} (mqtt.embedded_listen): {source}{hint}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot start the embedded broker's thread: {0}")]
    Thread(std::io::Error),
}

/// Messages the broker keeps per topic for slow subscribers, in memory:
/// a few MiB at most, whatever a subscriber does.
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENTS: usize = 4;

/// How long `start` waits for rumqttd to accept connections.
const READY_WAIT: Duration = Duration::from_secs(2);

/// Starts rumqttd on `listen` on threads of its own, and returns once it
/// accepts connections (or after [`READY_WAIT`]): the MQTT sink connects
/// right after, and found nothing listening on about one start in three
/// (a `connection refused` warning, then a backoff before the first publish).
pub fn start(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd reports a failed bind only in its log, from its own thread;
    // binding here first puts the error in front of the user.
    std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Listen {
        listen,
        hint: if source.kind() == std::io::ErrorKind::AddrInUse {
            "; is another MQTT broker (Mosquitto?) running here? To use it, set \
             mqtt.broker = \"mqtt://127.0.0.1:1883\"; or move mqtt.embedded_listen"
        } else {
            ""
        },
        source,
    })?;
    let server = ServerSettings {
        name: "embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 << 10,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("embedded".to_string(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    wait_until_accepting(listen, READY_WAIT);
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(())
}

/// Polls `listen` (its loopback twin when it is a wildcard address) until a
/// TCP connect succeeds or `limit` passes. rumqttd binds on its own thread
/// and says nothing when it is ready. Blocks for the few milliseconds that
/// takes; it runs once per process.
fn wait_until_accepting(listen: SocketAddr, limit: Duration) {
    let probe = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&probe, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!(%listen, "the embedded MQTT broker is not accepting connections yet");
}
