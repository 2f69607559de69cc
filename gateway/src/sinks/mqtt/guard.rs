//! The embedded broker's front door.
//!
//! Long because it reads MQTT 3.1.1 packets itself (rumqttd has no per-topic
//! ACL), and each rule below is a few lines of that parsing.
//!
//! rumqttd 0.20 checks a login at CONNECT but has no per-topic ACL. So it
//! listens on a loopback port of its own, behind logins only this process
//! knows, and clients reach it through this guard on `mqtt.embedded_listen`.
//! The guard reads what a client sends, packet by packet (MQTT 3.1.1), and:
//! - checks the login against `mqtt.embedded_users`; with none, on a
//!   loopback listener, anyone may connect (to read);
//! - refuses the gateway's client id, so nobody can take its session over
//!   (the broker drops the older of two connections with one id);
//! - refuses a PUBLISH, or a last will, on `<topic_prefix>` or below: only
//!   the gateway speaks there. MQTT 3.1.1 has no negative PUBACK, so the
//!   client is disconnected;
//! - forwards everything else re-encoded, under the guard's own broker
//!   login, so the broker parses exactly what was checked.
//!
//! What the broker sends back is copied as is.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use rumqttc::mqttbytes::{self, Protocol};
use rumqttc::{ConnAck, Connect, ConnectReturnCode, Packet};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::{MqttConfig, MqttUser, Secret};
use crate::tasks::Tasks;

/// Largest packet a client may send (the broker's own limit before).
pub const MAX_PACKET_BYTES: usize = 256 << 10;

/// A client must send its CONNECT within this, or it is dropped: an idle
/// socket holds one of [`MAX_CLIENTS`].
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Client connections at once; more are closed on accept. Below rumqttd's
/// own cap, so the gateway's connection always finds room.
pub const MAX_CLIENTS: usize = 200;

/// How long the guard waits for rumqttd to take a connection.
const UPSTREAM_WAIT: Duration = Duration::from_secs(5);

/// Characters of a client-chosen string (client id, topic) a log line shows.
const SHOWN_CHARS: usize = 128;

/// A login to the internal broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: Secret,
}

/// Who may connect, and what is the gateway's alone. Follows `[mqtt]` on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `topic_prefix`: publishing on it or below is the gateway's alone.
    /// The whole tree, not just `<prefix>/<gateway id>/`: a screen that
    /// subscribes to `<prefix>/+/events` must not get a made-up gateway's
    /// payments either.
    pub prefix: String,
    /// The gateway's client id, refused to everyone else.
    pub gateway_client_id: String,
    /// Client accounts; with none, anonymous clients (loopback only).
    pub users: Vec<MqttUser>,
}

impl Access {
    pub fn new(config: &MqttConfig) -> Self {
        Access {
            prefix: config.topic_prefix.clone(),
            gateway_client_id: config.client_id.clone(),
            users: config.embedded_users.clone(),
        }
    }

    /// Whether publishing on `topic` is the gateway's alone.
    pub fn is_protected(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Why a CONNECT is refused: the CONNACK code, and words for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: ConnectReturnCode,
    pub why: &'static str,
}

/// Checks a client's CONNECT; returns what to forward to the broker.
/// `anonymous`: whether clients without an account may connect.
pub fn check_connect(
    access: &Access,
    anonymous: bool,
    broker_login: &Login,
    mut connect: Connect,
) -> Result<Connect, Refusal> {
    if connect.protocol != Protocol::V4 {
        return Err(Refusal {
            code: ConnectReturnCode::RefusedProtocolVersion,
            why: "only MQTT 3.1.1 is supported",
        });
    }
    match (&connect.login, access.users.is_empty()) {
        (_, true) if !anonymous => {
            // Only after a reload moved the accounts but not the listener.
            return Err(Refusal {
                code: ConnectReturnCode::NotAuthorized,
                why: "no accounts for a listener reachable from the network",
            });
        }
        (_, true) => {}
        (None, false) => {
            return Err(Refusal {
                code: ConnectReturnCode::NotAuthorized,
                why: "no username and password",
            });
        }
        (Some(login), false) => {
            if !known(&access.users, &login.username, &login.password) {
                return Err(Refusal {
                    code: ConnectReturnCode::BadUserNamePassword,
                    why: "wrong username or password",
                });
            }
        }
    }
    if connect.client_id == access.gateway_client_id {
        return Err(Refusal {
            code: ConnectReturnCode::BadClientId,
            why: "the gateway's own client id",
        });
    }
    if connect
        .last_will
        .as_ref()
        .is_some_and(|will| access.is_protected(&will.topic))
    {
        return Err(Refusal {
            code: ConnectReturnCode::NotAuthorized,
            why: "a last will on the gateway's topics",
        });
    }
    connect.set_login(
        broker_login.username.clone(),
        broker_login.password.expose(),
    );
    Ok(connect)
}

/// Whether `username` / `password` is one of `users` (the password compared
/// in constant time).
fn known(users: &[MqttUser], username: &str, password: &str) -> bool {
    users.iter().any(|u| {
        u.username == username
            && bool::from(u.password.expose().as_bytes().ct_eq(password.as_bytes()))
    })
}

/// Why a packet after CONNECT is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// A PUBLISH on the gateway's topics.
    Publish { topic: String },
    /// A packet only a broker sends, or a second CONNECT.
    NotFromClient(&'static str),
}

/// Whether a client's packet (after its CONNECT) may reach the broker.
pub fn check_packet(access: &Access, packet: &Packet) -> Result<(), Blocked> {
    match packet {
        Packet::Publish(p) if access.is_protected(&p.topic) => Err(Blocked::Publish {
            topic: p.topic.clone(),
        }),
        Packet::Publish(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::Subscribe(_)
        | Packet::Unsubscribe(_)
        | Packet::PingReq
        | Packet::Disconnect => Ok(()),
        Packet::Connect(_) => Err(Blocked::NotFromClient("a second CONNECT")),
        Packet::ConnAck(_) => Err(Blocked::NotFromClient("CONNACK")),
        Packet::SubAck(_) => Err(Blocked::NotFromClient("SUBACK")),
        Packet::UnsubAck(_) => Err(Blocked::NotFromClient("UNSUBACK")),
        Packet::PingResp => Err(Blocked::NotFromClient("PINGRESP")),
    }
}

/// Why reading a client's first packet failed.
#[derive(Debug, thiserror::Error)]
pub enum FirstPacketError {
    #[error("MQTT protocol level {0} (only 4, MQTT 3.1.1, is supported)")]
    Version(u8),
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("closed before its CONNECT")]
    Closed,
    #[error(transparent)]
    Mqtt(#[from] mqttbytes::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The protocol level a CONNECT frame asks for (4 is MQTT 3.1.1, 5 is MQTT
/// 5, 3 is MQTT 3.1), read from the raw bytes: rumqttc's v4 parser reads a
/// v5 CONNECT as if it were v4, or fails on its properties.
pub fn connect_level(frame: &[u8]) -> Option<u8> {
    if frame.first()? >> 4 != 1 {
        return None;
    }
    // The remaining length: 1-4 bytes, 7 bits each.
    let mut i = 1;
    while frame.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    i += 1;
    let name = usize::from(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]));
    frame.get(i + 2 + name).copied()
}

/// Reads the first packet, which must be a MQTT 3.1.1 CONNECT. Bytes after
/// it stay in `buf`.
pub async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Connect, FirstPacketError> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET_BYTES) {
            Ok(_) => break,
            Err(mqttbytes::Error::InsufficientBytes(more)) => {
                buf.reserve(more.max(256));
                if reader.read_buf(buf).await? == 0 {
                    return Err(FirstPacketError::Closed);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    match connect_level(buf) {
        Some(4) => {}
        Some(level) => return Err(FirstPacketError::Version(level)),
        None => return Err(FirstPacketError::NotConnect),
    }
    match Packet::read(buf, MAX_PACKET_BYTES)? {
        Packet::Connect(connect) => Ok(connect),
        _ => Err(FirstPacketError::NotConnect),
    }
}

/// Reads the next packet; None at a clean end of stream.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, FirstPacketError> {
    loop {
        match Packet::read(buf, MAX_PACKET_BYTES) {
            Ok(packet) => return Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(more)) => {
                buf.reserve(more.max(4096));
                if reader.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// `text` for a log line: at most [`SHOWN_CHARS`] characters, control and
/// bidi-override characters escaped, so a client cannot forge log lines.
pub fn printable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most one guard warning a second, so a client hammering the port
/// cannot flood the log; the next one says how many were left out.
#[derive(Debug, Default)]
struct Warnings(Mutex<(Option<Instant>, u64)>);

impl Warnings {
    /// Some(left out since the last one) when a warning may be logged now.
    fn allow(&self) -> Option<u64> {
        let Ok(mut state) = self.0.lock() else {
            return None;
        };
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now < last + Duration::from_secs(1))
        {
            state.1 += 1;
            return None;
        }
        let skipped = state.1;
        *state = (Some(now), 0);
        Some(skipped)
    }
}

/// The running guard: one per embedded broker.
#[derive(Debug)]
pub struct Guard {
    access: ArcSwap<Access>,
    /// Where clients connect (`mqtt.embedded_listen`).
    listen: SocketAddr,
    /// rumqttd, on loopback.
    upstream: SocketAddr,
    /// What every client is forwarded as.
    broker_login: Login,
    slots: Arc<Semaphore>,
    warnings: Warnings,
}

impl Guard {
    pub fn new(
        listen: SocketAddr,
        upstream: SocketAddr,
        broker_login: Login,
        access: Access,
    ) -> Self {
        Guard {
            access: ArcSwap::from_pointee(access),
            listen,
            upstream,
            broker_login,
            slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
            warnings: Warnings::default(),
        }
    }

    /// New settings for the connections that follow (and for the packets of
    /// those already open).
    pub fn set_access(&self, access: Access) {
        self.access.store(Arc::new(access));
    }

    /// Anonymous clients are let in only with no accounts configured and a
    /// listener nobody off this machine can reach.
    fn anonymous(&self) -> bool {
        self.listen.ip().is_loopback()
    }

    /// Accepts clients until `tasks` is cancelled (the gateway stops); each
    /// client is a task on `tasks`, dropped then too.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tasks: Tasks) {
        let stop = tasks.token().clone();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: let some close.
                    if self.warnings.allow().is_some() {
                        tracing::warn!(%error, "MQTT guard cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                if let Some(skipped) = self.warnings.allow() {
                    tracing::warn!(%peer, max = MAX_CLIENTS, skipped, "too many MQTT clients; connection closed");
                }
                continue;
            };
            let guard = self.clone();
            let stop = stop.clone();
            tasks.spawn("mqtt guard client", async move {
                stop.run_until_cancelled(guard.client(stream, peer)).await;
                drop(slot);
            });
        }
    }

    /// One client, from its CONNECT to the end of the connection.
    async fn client(&self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(512);
        let connect =
            match tokio::time::timeout(CONNECT_WAIT, read_connect(&mut stream, &mut buf)).await {
                Ok(Ok(connect)) => connect,
                Ok(Err(FirstPacketError::Version(level))) => {
                    tracing::debug!(%peer, level, "MQTT client refused: protocol version");
                    refuse(&mut stream, ConnectReturnCode::RefusedProtocolVersion).await;
                    return;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "MQTT client dropped before CONNECT");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "MQTT client dropped: no CONNECT in time");
                    return;
                }
            };
        let client_id = printable(&connect.client_id);
        let access = self.access.load_full();
        let connect = match check_connect(&access, self.anonymous(), &self.broker_login, connect) {
            Ok(connect) => connect,
            Err(refusal) => {
                if let Some(skipped) = self.warnings.allow() {
                    tracing::warn!(%peer, client_id, reason = refusal.why, skipped, "MQTT client refused");
                }
                refuse(&mut stream, refusal.code).await;
                return;
            }
        };
        let upstream = match tokio::time::timeout(UPSTREAM_WAIT, TcpStream::connect(self.upstream))
            .await
        {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                tracing::warn!(%peer, client_id, %error, "the embedded MQTT broker refused the guard");
                refuse(&mut stream, ConnectReturnCode::ServiceUnavailable).await;
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, client_id, "the embedded MQTT broker did not answer the guard");
                refuse(&mut stream, ConnectReturnCode::ServiceUnavailable).await;
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let (mut from_client, mut to_client) = stream.into_split();
        let (mut from_broker, mut to_broker) = upstream.into_split();
        let mut out = BytesMut::new();
        if send(&mut to_broker, &mut out, &Packet::Connect(connect))
            .await
            .is_err()
        {
            return;
        }
        let down = tokio::io::copy(&mut from_broker, &mut to_client);
        let up = self.forward(&mut from_client, &mut to_broker, buf, out, peer, &client_id);
        // Either side ending ends both: the halves drop, the sockets close.
        tokio::select! {
            _ = down => {}
            _ = up => {}
        }
    }

    /// Client to broker, one checked packet at a time, until either side
    /// closes or the client sends what it may not.
    async fn forward<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        from_client: &mut R,
        to_broker: &mut W,
        mut buf: BytesMut,
        mut out: BytesMut,
        peer: SocketAddr,
        client_id: &str,
    ) {
        loop {
            let packet = match read_packet(from_client, &mut buf).await {
                Ok(Some(packet)) => packet,
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!(%peer, client_id, %error, "MQTT client sent a malformed packet; disconnected");
                    return;
                }
            };
            if let Err(blocked) = check_packet(&self.access.load(), &packet) {
                // Once per connection: the connection ends here.
                if let Some(skipped) = self.warnings.allow() {
                    match blocked {
                        Blocked::Publish { topic } => tracing::warn!(
                            %peer, client_id, topic = printable(&topic), skipped,
                            "MQTT client tried to publish on the gateway's topics; disconnected"
                        ),
                        Blocked::NotFromClient(what) => tracing::warn!(
                            %peer, client_id, packet = what, skipped,
                            "MQTT client sent a packet clients may not send; disconnected"
                        ),
                    }
                }
                return;
            }
            if send(to_broker, &mut out, &packet).await.is_err() {
                return;
            }
        }
    }
}

/// Writes `packet`, encoded into `out`, to `to`.
async fn send<W: AsyncWrite + Unpin>(
    to: &mut W,
    out: &mut BytesMut,
    packet: &Packet,
) -> std::io::Result<()> {
    out.clear();
    packet
        .write(out, usize::MAX)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    to.write_all(out).await
}

/// Answers a refused CONNECT with `code`, then the connection closes.
async fn refuse(stream: &mut TcpStream, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck::new(code, false));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = send(stream, &mut out, &ack).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests;
