//! MQTT ingress: a connector's input from a broker subscription
//! (`[connector.mqtt]`), e.g. a shop taking its payments from the chain's
//! relay through the chain's cluster.
//!
//! Each message goes through the connector's plugin like a webhook body
//! (`POST /mqtt/<topic>`, header `mqtt-topic`), and the broker gets its
//! PUBACK only once the payments it carried are durable in the log: the
//! session is persistent (fixed client id, clean session off), QoS 1 and
//! acks manual, so a message in hand when the gateway dies, or arriving
//! while it is away, is delivered again and dedupe absorbs the repeat.
//! Messages are handled one at a time, in the order the broker sends them.
//!
//! A message the plugin refuses for good (malformed, unauthorized, older
//! than the dedupe window) is acknowledged and dropped, loudly: kept
//! unacknowledged it would come back forever and block every message behind
//! it. Anything that may pass (storage, a busy or broken plugin) ends the
//! connection instead, so the broker sends it again after the reconnect.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, Publish, QoS, TlsConfiguration,
    Transport,
};
use serde::Serialize;

use super::StaleRule;
use crate::config::SubscriptionConfig;
use crate::connectors::{CallError, Connectors, IncomingRequest, Rejection};
use crate::log::{AppendExpected, EventLog};
use crate::model::now_ms;
use crate::mqtt_link::{Connection, MqttError, tls_config};
use crate::tasks::Tasks;

/// A connection that lasted this long resets the reconnect backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Largest message accepted from the broker.
const MAX_PACKET_BYTES: usize = 256 << 10;

/// How one subscription is doing, for the status page and `/readyz`.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    connected: AtomicBool,
    /// Since when it is connected, or since when it is not (Unix ms; 0: never tried).
    since_ms: AtomicI64,
    /// Messages whose payments are stored and acknowledged.
    stored: AtomicU64,
    /// Messages refused for good and dropped.
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A subscription as `/api/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionReport {
    pub connector: String,
    pub broker: String,
    pub topic: String,
    pub connected: bool,
    /// Since when it is (dis)connected, Unix ms.
    pub since_ms: Option<i64>,
    pub stored: u64,
    pub dropped: u64,
    pub last_error: Option<String>,
}

impl SubscriptionStats {
    fn set_connected(&self, connected: bool) {
        if self.connected.swap(connected, Ordering::Relaxed) != connected
            || self.since_ms.load(Ordering::Relaxed) == 0
        {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn failed(&self, reason: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }

    pub fn report(&self, connector: &str, config: &SubscriptionConfig) -> SubscriptionReport {
        let since = self.since_ms.load(Ordering::Relaxed);
        SubscriptionReport {
            connector: connector.to_string(),
            broker: config.broker.to_string(),
            topic: config.topic.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            since_ms: (since > 0).then_some(since),
            stored: self.stored.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// One connector's subscription.
pub struct Subscription {
    connector: String,
    config: SubscriptionConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    connectors: Arc<ArcSwap<Connectors>>,
    log: Arc<dyn EventLog>,
    stale: StaleRule,
    stats: Arc<SubscriptionStats>,
}

/// What became of one message.
enum Handled {
    /// Its payments are stored (or it carried none): acknowledge it.
    Stored,
    /// Refused for good: acknowledge and drop it.
    Dropped(String),
    /// Could pass: reconnect, and the broker sends it again.
    Retry(String),
}

impl Subscription {
    pub fn new(
        connector: &str,
        config: SubscriptionConfig,
        connectors: Arc<ArcSwap<Connectors>>,
        log: Arc<dyn EventLog>,
        stale: StaleRule,
        stats: Arc<SubscriptionStats>,
    ) -> Result<Self, MqttError> {
        let tls = config.broker.tls.as_ref().map(tls_config).transpose()?;
        Ok(Subscription {
            connector: connector.to_string(),
            config,
            tls,
            connectors,
            log,
            stale,
            stats,
        })
    }

    fn options(&self) -> MqttOptions {
        let broker = &self.config.broker;
        let mut options = MqttOptions::new(&self.config.client_id, &broker.host, broker.port);
        options
            .set_keep_alive(self.config.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(username) = &self.config.username {
            let password = self.config.password.as_ref().map_or("", |p| p.expose());
            options.set_credentials(username, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }

    /// Receives until `tasks` is cancelled, reconnecting with backoff; each
    /// connection's event loop runs on `tasks`.
    pub async fn run(self, tasks: Tasks) {
        let stop = tasks.token();
        let (connector, broker) = (&self.connector, self.config.broker.to_string());
        tracing::info!(%connector, %broker, topic = %self.config.topic, "MQTT subscription started");
        self.stats.set_connected(false);
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let reason = tokio::select! {
                _ = stop.cancelled() => break,
                reason = self.session(&tasks) => reason,
            };
            self.stats.set_connected(false);
            self.stats.failed(&reason);
            if started.elapsed() >= STABLE_CONNECTION {
                attempt = 0;
            }
            let delay = self.config.retry.delay(attempt, None);
            attempt = attempt.saturating_add(1);
            tracing::warn!(%connector, %broker, %reason, attempt, delay_ms = delay.as_millis() as u64, "MQTT subscription lost; reconnecting");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(%connector, "MQTT subscription stopped");
    }

    /// One connection, until it fails; returns why. Dropped (cancelled)
    /// between messages or in the middle of one: an unacknowledged message
    /// comes again.
    async fn session(&self, tasks: &Tasks) -> String {
        let (client, eventloop) = AsyncClient::new(self.options(), 16);
        let mut connection = Connection::drive(eventloop, tasks);
        loop {
            let event = match connection.events.recv().await {
                Some(Ok(event)) => event,
                Some(Err(error)) => return error.to_string(),
                None => return "event loop stopped".into(),
            };
            match event {
                Event::Incoming(Incoming::ConnAck(ack)) => {
                    if ack.code != ConnectReturnCode::Success {
                        return format!("connection refused: {:?}", ack.code);
                    }
                    // Again even when the broker kept the session: cheap,
                    // and right if the topic changed.
                    if let Err(error) = client.subscribe(&self.config.topic, QoS::AtLeastOnce).await
                    {
                        return error.to_string();
                    }
                }
                Event::Incoming(Incoming::SubAck(ack)) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    if refused {
                        // Usually the broker's ACL: this shop may not read it.
                        return format!(
                            "the broker refused the subscription to {}",
                            self.config.topic
                        );
                    }
                    self.stats.set_connected(true);
                    tracing::info!(connector = %self.connector, topic = %self.config.topic, "MQTT subscription active");
                }
                Event::Incoming(Incoming::Publish(publish)) => {
                    match self.handle(&publish).await {
                        Handled::Stored => {
                            self.stats.stored.fetch_add(1, Ordering::Relaxed);
                        }
                        Handled::Dropped(reason) => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            self.stats.failed(&reason);
                            tracing::error!(
                                connector = %self.connector, topic = %publish.topic, %reason,
                                bytes = publish.payload.len(),
                                "MQTT message refused for good; acknowledged and dropped"
                            );
                        }
                        Handled::Retry(reason) => return reason,
                    }
                    if publish.qos != QoS::AtMostOnce
                        && let Err(error) = client.ack(&publish).await
                    {
                        return error.to_string();
                    }
                }
                _ => {}
            }
        }
    }

    /// The message through the plugin and into the log.
    async fn handle(&self, publish: &Publish) -> Handled {
        let name = &self.connector;
        let Some(plugin) = self.connectors.load().get(name).cloned() else {
            return Handled::Retry(format!("connector `{name}` is not loaded"));
        };
        let request = IncomingRequest {
            method: "POST".into(),
            path: format!("/mqtt/{}", publish.topic),
            query: String::new(),
            headers: vec![
                ("mqtt-topic".into(), publish.topic.clone()),
                ("content-type".into(), "application/json".into()),
            ],
            body: publish.payload.to_vec(),
        };
        let result = match plugin.handle(request).await {
            Ok(result) => result,
            Err(CallError::Rejected(Rejection::BadRequest(reason))) => {
                return Handled::Dropped(format!("malformed: {reason}"));
            }
            Err(CallError::Rejected(Rejection::Unauthorized(reason))) => {
                return Handled::Dropped(format!("unauthorized: {reason}"));
            }
            Err(error) => return Handled::Retry(format!("the plugin failed: {error}")),
        };
        let (changes, stale) = self.stale.sift(name, result.changes, now_ms());
        if stale > 0 && changes.is_empty() {
            return Handled::Dropped("older than the dedupe window".into());
        }
        let kv = plugin.kv_batch(result.kv_writes);
        match super::store(&*self.log, name, changes, kv, AppendExpected::default()).await {
            Ok(()) => Handled::Stored,
            Err(error) => Handled::Retry(format!("not stored: {error}")),
        }
    }
}
