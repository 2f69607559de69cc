//! The MQTT sink: every payment published (QoS 1) on the shop's broker, for
//! POS screens, customer displays and store systems.
//!
//! rumqttc keeps unacknowledged publishes in memory only, and drops them when
//! the broker has no session for it; its event loop also reconnects at once,
//! forever. So here the log decides what is (re)sent: each connection is a
//! fresh rumqttc client and event loop, after every (re)connect the sink
//! publishes from its cursor, an entry counts as delivered only when the
//! broker's PubAck for it arrives, and reconnects back off (capped
//! exponential, full jitter). At most `window` event publishes are
//! unacknowledged at once; the cursor moves over the acknowledged prefix.
//!
//! Topics under `<prefix>/<gateway-id>/`:
//! - `events`: one [`EventJson`] per payment, QoS 1, in log order. At least
//!   once: after a reconnect the unacknowledged tail is sent again, so
//!   consumers dedupe by `id`. Payments too old to announce are published too.
//! - `status`: retained `online` on connect; `offline` as the last will (the
//!   broker publishes it when the gateway dies) and on a clean stop.
//! - `announcements`: [`AnnouncementJson`] from the speaker sink, QoS 1, best
//!   effort: the last [`ANNOUNCEMENT_BUFFER`] wait in memory while the broker
//!   is away; they are not in the log.
//! - `speakers/<hardware id>`: retained [`SpeakerState`] (paired, online,
//!   since when it is down), on every change and after every connect.

pub mod broker;
pub mod guard;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    QoS, TlsConfiguration, Transport,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::{broadcast, mpsc};

use super::event::{AnnouncementJson, EventJson};
use super::speaker::{SpeakerHealth, SpeakerState};
use super::{Shutdown, SinkStats, pause};
use crate::config::{MqttBroker, MqttConfig, MqttTls};
use crate::log::{EventLog, Settlement};

/// The sink's name in the log (its cursor).
pub const SINK_NAME: &str = "mqtt";

/// Announcements kept in memory while the broker is unreachable.
pub const ANNOUNCEMENT_BUFFER: usize = 256;

/// rumqttc's in-flight limit above the event window, for status and
/// announcement publishes, so they never wait behind a full window.
const EXTRA_IN_FLIGHT: usize = 16;

/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Largest packet accepted from the broker or sent to it.
const MAX_PACKET_BYTES: usize = 256 << 10;

/// Why the MQTT sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The three topics of one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub status: String,
    pub announcements: String,
    /// Followed by `/<hardware id>`.
    pub speakers: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway_id: &str) -> Self {
        let base = format!("{prefix}/{gateway_id}");
        Topics {
            events: format!("{base}/events"),
            status: format!("{base}/status"),
            announcements: format!("{base}/announcements"),
            speakers: format!("{base}/speakers"),
        }
    }

    /// Where `hardware_id`'s health is retained.
    pub fn speaker(&self, hardware_id: &str) -> String {
        format!("{}/{hardware_id}", self.speakers)
    }
}

/// The next speaker change, or never when there is no board to follow.
async fn next_speaker_change(
    changes: &mut Option<broadcast::Receiver<SpeakerState>>,
) -> Result<SpeakerState, broadcast::error::RecvError> {
    match changes {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

#[derive(Debug)]
pub struct MqttSink {
    config: MqttConfig,
    topics: Topics,
    /// Built once at start, so a bad CA file stops the gateway with a clear error.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Each speaker's health, published retained, if there are speakers.
    speakers: Option<Arc<SpeakerHealth>>,
    /// With the embedded broker: rumqttd itself (behind the guard clients
    /// use) and the gateway's login to it.
    embedded: Option<(std::net::SocketAddr, guard::Login)>,
}

/// What a publish was, to know what its PubAck means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Event(u64),
    Status,
    Announcement,
}

/// How a connection ended.
enum SessionEnd {
    /// The gateway is stopping.
    Stopped,
    /// Lost or refused; reconnect after a pause.
    Lost(String),
}

impl MqttSink {
    /// Publishes every speaker's health (retained) on `speakers/<hardware id>`.
    pub fn with_speakers(mut self, speakers: Arc<SpeakerHealth>) -> Self {
        self.speakers = Some(speakers);
        self
    }

    async fn publish_speaker(
        &self,
        client: &AsyncClient,
        flight: &mut InFlight,
        state: &SpeakerState,
    ) -> Result<(), rumqttc::ClientError> {
        let payload = serde_json::to_vec(state).unwrap_or_default();
        let topic = self.topics.speaker(&state.hardware_id);
        flight
            .publish(client, Tag::Announcement, &topic, true, payload)
            .await
    }

    /// Publishes through `broker` directly, not through its guard (which
    /// refuses the gateway's client id and topics to everyone else).
    pub fn with_embedded(mut self, broker: &broker::EmbeddedBroker) -> Self {
        self.embedded = Some(broker.sink_endpoint());
        self
    }

    pub fn new(config: MqttConfig, gateway_id: &str) -> Result<Self, MqttError> {
        let tls = match &config.broker {
            MqttBroker::External { tls: Some(tls), .. } => Some(tls_config(tls)?),
            _ => None,
        };
        Ok(MqttSink {
            topics: Topics::new(&config.topic_prefix, gateway_id),
            config,
            tls,
            speakers: None,
            embedded: None,
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    fn options(&self) -> MqttOptions {
        let (host, port) = match (&self.config.broker, &self.embedded) {
            (MqttBroker::Embedded { .. }, Some((internal, _))) => {
                (internal.ip().to_string(), internal.port())
            }
            (MqttBroker::Embedded { listen }, None) => {
                let ip = if listen.ip().is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    listen.ip()
                };
                (ip.to_string(), listen.port())
            }
            (MqttBroker::External { host, port, .. }, _) => (host.clone(), *port),
        };
        let mut options = MqttOptions::new(&self.config.client_id, host, port);
        options
            .set_keep_alive(self.config.keep_alive)
            .set_clean_session(true)
            .set_inflight(in_flight_limit(self.config.window))
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_last_will(LastWill::new(
                &self.topics.status,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(username) = &self.config.username {
            let password = self.config.password.as_ref().map_or("", |p| p.expose());
            options.set_credentials(username, password);
        }
        if let (MqttBroker::Embedded { .. }, Some((_, login))) =
            (&self.config.broker, &self.embedded)
        {
            options.set_credentials(&login.username, login.password.expose());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }

    fn broker_name(&self) -> String {
        match &self.config.broker {
            MqttBroker::Embedded { listen } => format!("embedded broker on {listen}"),
            MqttBroker::External { host, port, tls } => {
                let scheme = if tls.is_some() { "mqtts" } else { "mqtt" };
                format!("{scheme}://{host}:{port}")
            }
        }
    }

    /// Publishes every log entry from the sink's cursor, reconnecting as
    /// needed, until shut down; forwards `announcements` while connected.
    pub async fn run(
        self: Arc<Self>,
        log: Arc<dyn EventLog>,
        stats: Arc<SinkStats>,
        shutdown: Shutdown,
        mut announcements: broadcast::Receiver<AnnouncementJson>,
    ) {
        let broker = self.broker_name();
        tracing::info!(sink = SINK_NAME, %broker, topic = %self.topics.events, "sink started");
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let end = self
                .session(&*log, &stats, &shutdown, &mut announcements)
                .await;
            let reason = match end {
                SessionEnd::Stopped => break,
                SessionEnd::Lost(reason) => reason,
            };
            // A connection that lasted starts the backoff afresh; one dropped
            // at once (another gateway with the same client id taking over,
            // a broker that refuses us after CONNACK) keeps backing off.
            if started.elapsed() >= STABLE_CONNECTION {
                attempt = 0;
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            stats.failed(&reason);
            super::count(SINK_NAME, "retry", 1);
            let delay = self.config.retry.delay(attempt, None);
            attempt = attempt.saturating_add(1);
            tracing::warn!(sink = SINK_NAME, %broker, %reason, attempt, delay_ms = delay.as_millis() as u64, "MQTT connection failed; reconnecting");
            if pause(&shutdown.stop, delay).await {
                break;
            }
        }
        tracing::info!(sink = SINK_NAME, "sink stopped");
    }

    /// One connection: connect, publish `online`, then the log from the
    /// cursor, until the connection fails or the gateway stops.
    async fn session(
        &self,
        log: &dyn EventLog,
        stats: &SinkStats,
        shutdown: &Shutdown,
        announcements: &mut broadcast::Receiver<AnnouncementJson>,
    ) -> SessionEnd {
        let (client, eventloop) = AsyncClient::new(self.options(), self.config.window * 2);
        let mut connection = Connection::drive(eventloop);
        let connack = tokio::select! {
            _ = shutdown.stop.cancelled() => return SessionEnd::Stopped,
            event = connection.events.recv() => event,
        };
        match connack {
            Some(Ok(Event::Incoming(Incoming::ConnAck(ack))))
                if ack.code == ConnectReturnCode::Success => {}
            Some(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => {
                return SessionEnd::Lost(format!("connection refused: {:?}", ack.code));
            }
            Some(Err(error)) => return SessionEnd::Lost(error.to_string()),
            other => return SessionEnd::Lost(format!("unexpected first packet: {other:?}")),
        }
        tracing::info!(sink = SINK_NAME, broker = %self.broker_name(), "connected to the MQTT broker");
        stats.recovered();

        let mut flight = InFlight::default();
        if flight
            .publish(&client, Tag::Status, &self.topics.status, true, "online")
            .await
            .is_err()
        {
            return SessionEnd::Lost("event loop stopped".into());
        }
        let mut next = match log.cursor(SINK_NAME).await {
            Ok(cursor) => cursor,
            Err(error) => return SessionEnd::Lost(format!("cannot read the event log: {error}")),
        };
        let mut changes = log.watch();
        let mut announcing = true;
        // Subscribed before the snapshot, so no change falls in between.
        let mut speaker_changes = self.speakers.as_ref().map(|s| s.subscribe());
        for state in self.speakers.iter().flat_map(|s| s.all()) {
            if self
                .publish_speaker(&client, &mut flight, &state)
                .await
                .is_err()
            {
                return SessionEnd::Lost("event loop stopped".into());
            }
        }
        loop {
            // Mark the log end as seen before reading, so a commit after the
            // read still wakes the wait below.
            let end = *changes.borrow_and_update();
            let room = self.config.window.saturating_sub(flight.events.len());
            // Only when there is something new: this loop turns on every
            // PubAck and announcement, and a read is a trip to the blocking
            // pool.
            if room > 0 && next < end {
                let batch = match log.read(next, room).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        return SessionEnd::Lost(format!("cannot read the event log: {error}"));
                    }
                };
                for entry in batch {
                    next = entry.seq + 1;
                    let payload = match serde_json::to_vec(&EventJson::from_entry(&entry)) {
                        Ok(payload) => payload,
                        Err(error) => {
                            return SessionEnd::Lost(format!("cannot encode an event: {error}"));
                        }
                    };
                    let tag = Tag::Event(entry.seq);
                    if flight
                        .publish(&client, tag, &self.topics.events, false, payload)
                        .await
                        .is_err()
                    {
                        // The event loop stopped; its error is in the channel.
                        break;
                    }
                }
            }
            let window_full = flight.events.len() >= self.config.window;
            tokio::select! {
                biased;
                _ = shutdown.stop.cancelled() => {
                    self.finish(&client, &mut connection, &mut flight, log, stats, shutdown.grace).await;
                    return SessionEnd::Stopped;
                }
                event = connection.events.recv() => {
                    // Everything already waiting too, so one write records a
                    // run of PubAcks (a write per ack caps the rate at the
                    // disk's flush rate).
                    let (acked, lost) = connection.take_ready(event, &mut flight);
                    settle(log, stats, acked);
                    if let Some(reason) = lost {
                        return SessionEnd::Lost(reason);
                    }
                }
                changed = changes.changed(), if !window_full => {
                    if changed.is_err() {
                        return SessionEnd::Stopped;
                    }
                }
                announcement = announcements.recv(), if announcing => match announcement {
                    Ok(announcement) => {
                        let payload = serde_json::to_vec(&announcement).unwrap_or_default();
                        let topic = &self.topics.announcements;
                        if flight.publish(&client, Tag::Announcement, topic, false, payload).await.is_err() {
                            continue;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(sink = SINK_NAME, missed, "announcements dropped while the broker was away");
                    }
                    Err(broadcast::error::RecvError::Closed) => announcing = false,
                },
                change = next_speaker_change(&mut speaker_changes) => match change {
                    Ok(state) => {
                        if self.publish_speaker(&client, &mut flight, &state).await.is_err() {
                            continue;
                        }
                    }
                    // Missed changes: publish every speaker's state afresh.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for state in self.speakers.iter().flat_map(|s| s.all()) {
                            let _ = self.publish_speaker(&client, &mut flight, &state).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => speaker_changes = None,
                },
            }
        }
    }

    /// A clean stop: retained `offline`, then wait (up to `grace`) for the
    /// acknowledgements of what is in flight, then disconnect.
    async fn finish(
        &self,
        client: &AsyncClient,
        connection: &mut Connection,
        flight: &mut InFlight,
        log: &dyn EventLog,
        stats: &SinkStats,
        grace: Duration,
    ) {
        let status = &self.topics.status;
        let sent = flight
            .publish(client, Tag::Status, status, true, "offline")
            .await;
        let drained = tokio::time::timeout(grace, async {
            while sent.is_ok() && !flight.is_empty() {
                let event = connection.events.recv().await;
                let (acked, lost) = connection.take_ready(event, flight);
                settle(log, stats, acked);
                if lost.is_some() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sink = SINK_NAME,
                in_flight = flight.events.len(),
                "stopping with publishes unacknowledged; they are sent again on the next start"
            );
        }
        if client.disconnect().await.is_ok() {
            // Let the event loop write the DISCONNECT (so the broker does not
            // publish the last will on top of our `offline`).
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(event)) = connection.events.recv().await {
                    if event == Event::Outgoing(Outgoing::Disconnect) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// rumqttc's in-flight limit for an event window of `window`.
fn in_flight_limit(window: usize) -> u16 {
    u16::try_from(window + EXTRA_IN_FLIGHT).unwrap_or(u16::MAX)
}

/// Records delivered entries (one write for the whole run of them) without
/// waiting for the store: it takes acknowledgements in any order, and the
/// session keeps draining the broker's acks and the announcements meanwhile
/// (waiting here, behind another commit's sync, made the announcement channel
/// overflow under load). The write is queued when this returns.
fn settle(log: &dyn EventLog, stats: &SinkStats, acked: Vec<u64>) {
    if acked.is_empty() {
        return;
    }
    let (first, count) = (acked[0], acked.len());
    stats.delivered.fetch_add(count as u64, Ordering::Relaxed);
    super::count(SINK_NAME, "delivered", count as u64);
    tracing::debug!(sink = SINK_NAME, first, count, "delivered");
    let recorded = log.settle(SINK_NAME, acked, Settlement::Delivered);
    tokio::spawn(async move {
        // They stay pending in the store: sent again after a restart, which
        // consumers dedupe by id.
        if let Err(error) = recorded.await {
            tracing::error!(sink = SINK_NAME, %error, "cannot record MQTT deliveries");
        }
    });
}

/// The rumqttc event loop on its own task, its events on a channel, so the
/// sink never cancels a `poll` half way through a packet.
struct Connection {
    events: mpsc::UnboundedReceiver<Result<Event, rumqttc::ConnectionError>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    fn drive(mut eventloop: EventLoop) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                // Stop at the first error: the next connection is a fresh
                // event loop, so rumqttc never resends on its own.
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        Connection { events, driver }
    }
}

impl Connection {
    /// Takes in `first` and every event already queued behind it; returns
    /// the entries they acknowledged, and why the connection ended if it did.
    fn take_ready(
        &mut self,
        first: Option<Result<Event, rumqttc::ConnectionError>>,
        flight: &mut InFlight,
    ) -> (Vec<u64>, Option<String>) {
        let mut acked = Vec::new();
        let mut next = first;
        loop {
            match next {
                Some(Ok(event)) => acked.extend(flight.on_event(&event)),
                Some(Err(error)) => return (acked, Some(error.to_string())),
                None => return (acked, Some("event loop stopped".into())),
            }
            next = match self.events.try_recv() {
                Ok(event) => Some(event),
                Err(mpsc::error::TryRecvError::Empty) => return (acked, None),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Publishes sent on one connection and not yet acknowledged.
///
/// rumqttc assigns packet ids inside its event loop and reports each as
/// `Outgoing::Publish(pkid)`, in the order the publishes were requested. So a
/// tag queued with each request is matched to its packet id when that event
/// arrives, and to its PubAck after.
#[derive(Debug, Default)]
struct InFlight {
    /// Tags of requested publishes whose packet id is not known yet.
    requested: VecDeque<Tag>,
    /// Tags by packet id, awaiting their PubAck.
    by_packet_id: HashMap<u16, Tag>,
    /// Event publishes in log order, and whether each is acknowledged.
    events: VecDeque<(u64, bool)>,
}

impl InFlight {
    async fn publish(
        &mut self,
        client: &AsyncClient,
        tag: Tag,
        topic: &str,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), rumqttc::ClientError> {
        // Queued before the request, so the event loop cannot report its
        // packet id first.
        self.requested.push_back(tag);
        if let Tag::Event(seq) = tag {
            self.events.push_back((seq, false));
        }
        client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
    }

    fn is_empty(&self) -> bool {
        self.requested.is_empty() && self.by_packet_id.is_empty()
    }

    /// Takes in one event loop event; returns the entries now delivered: the
    /// acknowledged prefix of the window, in log order.
    fn on_event(&mut self, event: &Event) -> Vec<u64> {
        match event {
            Event::Outgoing(Outgoing::Publish(packet_id)) => {
                if let Some(tag) = self.requested.pop_front() {
                    self.by_packet_id.insert(*packet_id, tag);
                }
                Vec::new()
            }
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(Tag::Event(seq)) = self.by_packet_id.remove(&ack.pkid)
                    && let Some(slot) = self.events.iter_mut().find(|(s, _)| *s == seq)
                {
                    slot.1 = true;
                }
                let mut delivered = Vec::new();
                while let Some(&(seq, true)) = self.events.front() {
                    delivered.push(seq);
                    self.events.pop_front();
                }
                delivered
            }
            _ => Vec::new(),
        }
    }
}

/// rustls with the `ring` provider and either the chain's own CA file or the
/// built-in web roots.
fn tls_config(tls: &MqttTls) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let ca_error = |reason: String| MqttError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificates in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
