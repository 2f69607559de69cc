//! The MQTT sink: every payment published (QoS 1) on the shop's broker, for
//! POS screens, customer displays and store systems.
//!
//! Long because the publish window, the PubAck bookkeeping and the reconnect
//! loop share one connection's state.
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
//! A gateway may have several MQTT sinks (`[[mqtt]]`): the shop's own
//! broker and the chain's cluster side by side, each with its own cursor.
//!
//! Topics under `<prefix>/<gateway-id>/`:
//! - `events`: one [`EventJson`] per payment, QoS 1, in log order. At least
//!   once: after a reconnect the unacknowledged tail is sent again, so
//!   consumers dedupe by `id`. Payments too old to announce are published too.
//!   A relay (`[mqtt.relay]`) publishes each payment on its shop's topic
//!   instead; one for an account no shop owns becomes a dead letter.
//! - `status`: retained `online` on connect; `offline` as the last will (the
//!   broker publishes it when the gateway dies) and on a clean stop.
//! - `health`: the retained fleet health document ([`crate::fleet`]), on
//!   every change and every `health_every_secs`.
//! - `announcements`: [`AnnouncementJson`] from the speaker sink, QoS 1, best
//!   effort: the last [`ANNOUNCEMENT_BUFFER`] wait in memory while the broker
//!   is away; they are not in the log.
//! - `speakers/<hardware id>`: retained [`SpeakerState`] (paired, online,
//!   since when it is down), on every change and after every connect.

pub mod broker;
pub mod guard;
mod health_feed;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{broadcast, mpsc};

use super::event::{AnnouncementJson, EventJson};
use super::speaker::{SpeakerHealth, SpeakerState};
use super::{Shutdown, SinkStats, pause};
use crate::config::{MqttBroker, MqttConfig};
use crate::log::{EventLog, LogEntry, Settlement};
pub use crate::mqtt_link::MqttError;
use crate::mqtt_link::{Connection, tls_config};
use crate::tasks::Tasks;
pub use health_feed::{HealthFeed, HealthSnapshot};

/// The name of the `[[mqtt]]` sink without a name (and of the single
/// `[mqtt]` of earlier versions).
pub const SINK_NAME: &str = crate::config::UNNAMED_MQTT_SINK;

/// Announcements kept in memory while the broker is unreachable.
pub const ANNOUNCEMENT_BUFFER: usize = 256;

/// rumqttc's in-flight limit above the event window, for status and
/// announcement publishes, so they never wait behind a full window.
const EXTRA_IN_FLIGHT: usize = 16;

/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Largest packet accepted from the broker or sent to it.
const MAX_PACKET_BYTES: usize = 256 << 10;

/// The three topics of one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub status: String,
    pub announcements: String,
    /// Retained fleet health document.
    pub health: String,
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
            health: format!("{base}/health"),
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
    /// Its name in the store (`mqtt` or `mqtt:<name>`).
    name: String,
    config: MqttConfig,
    topics: Topics,
    /// Built once at start, so a bad CA file stops the gateway with a clear error.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Each speaker's health, published retained, if there are speakers.
    speakers: Option<Arc<SpeakerHealth>>,
    /// With the embedded broker: rumqttd itself (behind the guard clients
    /// use) and the gateway's login to it.
    embedded: Option<(std::net::SocketAddr, guard::Login)>,
    /// The fleet health document to keep retained, if the app publishes one.
    health: Option<HealthFeed>,
    /// Where its event loops and its waits for the store run: the gateway's
    /// task tree ([`MqttSink::with_tasks`]), else a tree of its own.
    tasks: Tasks,
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

    /// Publishes the latest health document, retained, if it changed in
    /// what matters or `health_every` passed since the last one
    /// (`last`: when, and its fingerprint; None forces it).
    async fn publish_health(
        &self,
        client: &AsyncClient,
        flight: &mut InFlight,
        feed: &mut HealthFeed,
        last: &mut Option<(Instant, u64)>,
    ) -> Result<(), rumqttc::ClientError> {
        let Some(doc) = feed.borrow_and_update().clone() else {
            return Ok(());
        };
        let due = match last {
            None => true,
            Some((at, fingerprint)) => {
                *fingerprint != doc.fingerprint || at.elapsed() >= self.config.health_every
            }
        };
        if !due {
            return Ok(());
        }
        *last = Some((Instant::now(), doc.fingerprint));
        let topic = &self.topics.health;
        flight
            .publish(client, Tag::Announcement, topic, true, doc.json.clone())
            .await
    }

    /// Publishes one payment on `events`, or, for a relay, on its shop's
    /// topic; a relay's payment to an account no shop owns becomes a dead
    /// letter with the reason (requeued once the table has it).
    async fn publish_event(
        &self,
        client: &AsyncClient,
        flight: &mut InFlight,
        log: &dyn EventLog,
        entry: &LogEntry,
    ) -> Result<(), Publish> {
        let topic = match &self.config.relay {
            None => self.topics.events.clone(),
            Some(relay) => match relay.topic_for(&entry.change.account) {
                Some(topic) => topic,
                None => {
                    let reason = format!(
                        "no shop for account {} in [mqtt.relay.shops]",
                        entry.change.account
                    );
                    tracing::warn!(sink = %self.name, seq = entry.seq, %reason, "payment not relayed");
                    super::count(&self.name, "dead", 1);
                    let dead = Settlement::Dead { reason };
                    return log
                        .settle(&self.name, vec![entry.seq], dead)
                        .await
                        .map_err(|e| Publish::Lost(format!("cannot record a dead letter: {e}")));
                }
            },
        };
        let payload = serde_json::to_vec(&EventJson::from_entry(entry))
            .map_err(|e| Publish::Lost(format!("cannot encode an event: {e}")))?;
        flight
            .publish(client, Tag::Event(entry.seq), &topic, false, payload)
            .await
            .map_err(|_| Publish::Stopped)
    }

    /// Publishes through `broker` directly, not through its guard (which
    /// refuses the gateway's client id and topics to everyone else).
    pub fn with_embedded(mut self, broker: &broker::EmbeddedBroker) -> Self {
        self.embedded = Some(broker.sink_endpoint());
        self
    }

    pub fn new(config: MqttConfig, gateway_id: &str) -> Result<Self, MqttError> {
        let tls = match &config.broker {
            MqttBroker::External(endpoint) => endpoint.tls.as_ref().map(tls_config).transpose()?,
            MqttBroker::Embedded { .. } => None,
        };
        Ok(MqttSink {
            name: config.sink_name(),
            topics: Topics::new(&config.topic_prefix, gateway_id),
            config,
            tls,
            speakers: None,
            embedded: None,
            health: None,
            tasks: Tasks::new(),
        })
    }

    /// Runs its tasks (each connection's event loop, the waits for
    /// deliveries to be recorded) on `tasks`.
    pub fn with_tasks(mut self, tasks: Tasks) -> Self {
        self.tasks = tasks;
        self
    }

    /// Keeps `feed`'s latest document retained on `health`.
    pub fn with_health(mut self, feed: HealthFeed) -> Self {
        self.health = Some(feed);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
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
            (MqttBroker::External(endpoint), _) => (endpoint.host.clone(), endpoint.port),
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
            MqttBroker::External(endpoint) => endpoint.to_string(),
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
        tracing::info!(sink = %self.name, %broker, topic = %self.topics.events, "sink started");
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
            super::count(&self.name, "retry", 1);
            let delay = self.config.retry.delay(attempt, None);
            attempt = attempt.saturating_add(1);
            tracing::warn!(sink = %self.name, %broker, %reason, attempt, delay_ms = delay.as_millis() as u64, "MQTT connection failed; reconnecting");
            if pause(&shutdown.stop, delay).await {
                break;
            }
        }
        tracing::info!(sink = %self.name, "sink stopped");
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
        let mut connection = Connection::drive(eventloop, &self.tasks);
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
        tracing::info!(sink = %self.name, broker = %self.broker_name(), "connected to the MQTT broker");
        stats.recovered();

        let mut flight = InFlight::default();
        if flight
            .publish(&client, Tag::Status, &self.topics.status, true, "online")
            .await
            .is_err()
        {
            return SessionEnd::Lost("event loop stopped".into());
        }
        let mut next = match log.cursor(&self.name).await {
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
        let mut health = self.health.clone();
        let mut health_sent = None;
        if let Some(feed) = &mut health
            && self
                .publish_health(&client, &mut flight, feed, &mut health_sent)
                .await
                .is_err()
        {
            return SessionEnd::Lost("event loop stopped".into());
        }
        // A relay's dead letters (accounts no shop owned) can be requeued;
        // looked for after every commit or requeue, not on every PubAck.
        let mut look_for_requeued = self.config.relay.is_some();
        loop {
            // Mark the log end as seen before reading, so a commit after the
            // read still wakes the wait below.
            let end = *changes.borrow_and_update();
            let room = self.config.window.saturating_sub(flight.events.len());
            let mut batch = Vec::new();
            if room > 0 && look_for_requeued {
                look_for_requeued = false;
                match log.requeued(&self.name, room).await {
                    Ok(requeued) => batch.extend(
                        requeued
                            .into_iter()
                            .filter(|e| !flight.events.iter().any(|(s, _)| *s == e.seq)),
                    ),
                    Err(error) => {
                        return SessionEnd::Lost(format!("cannot read the event log: {error}"));
                    }
                }
            }
            // Only when there is something new: this loop turns on every
            // PubAck and announcement, and a read is a trip to the blocking
            // pool.
            let room = room.saturating_sub(batch.len());
            if room > 0 && next < end {
                match log.read(next, room).await {
                    Ok(entries) => {
                        if let Some(last) = entries.last() {
                            next = last.seq + 1;
                        }
                        batch.extend(entries);
                    }
                    Err(error) => {
                        return SessionEnd::Lost(format!("cannot read the event log: {error}"));
                    }
                }
            }
            for entry in batch {
                match self.publish_event(&client, &mut flight, log, &entry).await {
                    Ok(()) => {}
                    Err(Publish::Lost(reason)) => return SessionEnd::Lost(reason),
                    // The event loop stopped; its error is in the channel.
                    Err(Publish::Stopped) => break,
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
                    let (acked, lost) = take_ready(&mut connection, event, &mut flight);
                    self.settle(log, stats, acked);
                    if let Some(reason) = lost {
                        return SessionEnd::Lost(reason);
                    }
                }
                changed = changes.changed(), if !window_full => {
                    if changed.is_err() {
                        return SessionEnd::Stopped;
                    }
                    look_for_requeued = self.config.relay.is_some();
                }
                changed = next_health(&mut health) => {
                    if let (Ok(()), Some(feed)) = (changed, &mut health) {
                        if self.publish_health(&client, &mut flight, feed, &mut health_sent).await.is_err() {
                            continue;
                        }
                    } else {
                        health = None;
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
                        tracing::warn!(sink = %self.name, missed, "announcements dropped while the broker was away");
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
                let (acked, lost) = take_ready(connection, event, flight);
                self.settle(log, stats, acked);
                if lost.is_some() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                sink = %self.name,
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

impl MqttSink {
    /// Records delivered entries (one write for the whole run of them)
    /// without waiting for the store: it takes acknowledgements in any order,
    /// and the session keeps draining the broker's acks and the announcements
    /// meanwhile (waiting here, behind another commit's sync, made the
    /// announcement channel overflow under load). The write is queued when
    /// this returns; the wait for its outcome is a task of the sink's.
    fn settle(&self, log: &dyn EventLog, stats: &SinkStats, acked: Vec<u64>) {
        if acked.is_empty() {
            return;
        }
        let name = &self.name;
        let (first, count) = (acked[0], acked.len());
        stats.delivered.fetch_add(count as u64, Ordering::Relaxed);
        super::count(name, "delivered", count as u64);
        tracing::debug!(sink = %name, first, count, "delivered");
        let recorded = log.settle(name, acked, Settlement::Delivered);
        let name = name.clone();
        self.tasks.spawn("mqtt delivery record", async move {
            // They stay pending in the store: sent again after a restart,
            // which consumers dedupe by id.
            if let Err(error) = recorded.await {
                tracing::error!(sink = %name, %error, "cannot record MQTT deliveries");
            }
        });
    }
}

/// The next change of the health document, or never without a feed.
async fn next_health(
    feed: &mut Option<HealthFeed>,
) -> Result<(), tokio::sync::watch::error::RecvError> {
    match feed {
        Some(feed) => feed.changed().await,
        None => std::future::pending().await,
    }
}

/// Why an event was not published.
enum Publish {
    /// The event loop stopped (the connection's error follows).
    Stopped,
    /// The session cannot go on.
    Lost(String),
}

/// Takes in `first` and every event already queued behind it on
/// `connection`; returns the entries they acknowledged, and why the
/// connection ended if it did.
fn take_ready(
    connection: &mut Connection,
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
        next = match connection.events.try_recv() {
            Ok(event) => Some(event),
            Err(mpsc::error::TryRecvError::Empty) => return (acked, None),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
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

#[cfg(test)]
mod tests;
