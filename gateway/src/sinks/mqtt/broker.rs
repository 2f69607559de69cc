//! The embedded MQTT broker (rumqttd), so a shop needs nothing else: POS
//! screens and displays on the box (or the LAN, with accounts) subscribe to
//! it directly. Plain MQTT 3.1.1.
//!
//! rumqttd listens on a loopback port of its own and lets in only two
//! logins made up at start (never written anywhere): the gateway's MQTT sink
//! and the [`guard`](super::guard), which listens on `embedded_listen`,
//! checks what clients send and forwards it under its own login. rumqttd
//! lives as long as the process; the guard as long as the task tree it is
//! started on.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

pub use super::guard::Access;
use super::guard::{self, Guard, Login};
use crate::config::Secret;
use crate::tasks::Tasks;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {listen} (mqtt.embedded_listen): {source}{hint}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot find a loopback port for the embedded broker: {0}")]
    Internal(std::io::Error),
    #[error("cannot make up the embedded broker's passwords: no randomness from the system")]
    Random,
    #[error("the embedded broker needs the async runtime")]
    NoRuntime,
    #[error("cannot start the embedded broker's thread: {0}")]
    Thread(std::io::Error),
}

/// Messages the broker keeps per topic for slow subscribers, in memory:
/// a few MiB at most, whatever a subscriber does.
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENTS: usize = 4;

/// How long `start` waits for rumqttd to accept connections.
const READY_WAIT: Duration = Duration::from_secs(2);

/// The running embedded broker: where clients connect, and how the
/// gateway's own sink reaches rumqttd behind the guard.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    listen: SocketAddr,
    internal: SocketAddr,
    sink_login: Login,
    guard: Arc<Guard>,
}

impl EmbeddedBroker {
    /// Where clients connect (`mqtt.embedded_listen`, its port resolved).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// rumqttd itself, on loopback, and the gateway's login to it.
    pub fn sink_endpoint(&self) -> (SocketAddr, Login) {
        (self.internal, self.sink_login.clone())
    }

    /// Applies reloaded `[mqtt]` settings (accounts, prefix, client id).
    pub fn set_access(&self, access: Access) {
        self.guard.set_access(access);
    }
}

/// [`start_on`] a task tree of its own, never stopped: the guard serves
/// until the process ends.
pub fn start(listen: SocketAddr, access: Access) -> Result<EmbeddedBroker, BrokerError> {
    start_on(listen, access, &Tasks::new())
}

/// Starts rumqttd on a loopback port on threads of its own and the guard on
/// `listen` on `tasks` (on the current tokio runtime; until `tasks` is
/// cancelled), and returns once rumqttd accepts connections (or after
/// [`READY_WAIT`]): the MQTT sink connects right after, and found nothing
/// listening on about one start in three (a `connection refused` warning,
/// then a backoff before the first publish).
pub fn start_on(
    listen: SocketAddr,
    access: Access,
    tasks: &Tasks,
) -> Result<EmbeddedBroker, BrokerError> {
    // Bound here, before anything else, so a taken port is the error the
    // user sees; the guard then serves on this very socket.
    let public = std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Listen {
        listen,
        hint: if source.kind() == std::io::ErrorKind::AddrInUse {
            "; is another MQTT broker (Mosquitto?) running here? To use it, set \
             mqtt.broker = \"mqtt://127.0.0.1:1883\"; or move mqtt.embedded_listen"
        } else {
            ""
        },
        source,
    })?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| BrokerError::NoRuntime)?;
    let listen = public.local_addr().unwrap_or(listen);
    // rumqttd binds on its own and takes no socket; a port the OS just
    // handed out is free unless another process grabs it in between, and
    // then the logins below keep it out.
    let internal = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(BrokerError::Internal)?;
    let sink_login = random_login("gateway")?;
    let guard_login = random_login("guard")?;

    let allowed = [sink_login.clone(), guard_login.clone()];
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        // The guard's limit, plus room for the login it puts in a CONNECT.
        max_payload_size: guard::MAX_PACKET_BYTES + 1024,
        max_inflight_count: 1000,
        // Not `auth`: its map is in ConnectionSettings' Debug output.
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(
        move |_client_id: String, username: String, password: String| {
            let known = allowed.iter().any(|l| {
                l.username == username
                    && bool::from(subtle::ConstantTimeEq::ct_eq(
                        l.password.expose().as_bytes(),
                        password.as_bytes(),
                    ))
            });
            std::future::ready(known)
        },
    );
    let server = ServerSettings {
        name: "embedded".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            // The guard's clients, the gateway, and some slack for
            // connections the guard has closed and rumqttd not yet seen go.
            max_connections: guard::MAX_CLIENTS + 56,
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
    wait_until_accepting(internal, READY_WAIT);

    let guard = Arc::new(Guard::new(listen, internal, guard_login, access));
    let listener = {
        let _entered = runtime.enter();
        public
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(public))
            .map_err(|source| BrokerError::Listen {
                listen,
                source,
                hint: "",
            })?
    };
    tasks.spawn("mqtt guard", guard.clone().serve(listener, tasks.clone()));
    tracing::info!(%listen, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        listen,
        internal,
        sink_login,
        guard,
    })
}

/// A login with 128 random bits of password, from the system's CSPRNG.
fn random_login(username: &str) -> Result<Login, BrokerError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| BrokerError::Random)?;
    Ok(Login {
        username: username.to_string(),
        password: Secret::new(hex::encode(bytes)),
    })
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
