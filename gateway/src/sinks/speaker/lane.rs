//! One speaker's lane: the payments routed to it, announced in log order.
//!
//! The lane is a [`Sink`] of its own in the log, so its cursor, outcomes
//! and dead letters survive a restart and a power cut like any sink's, and
//! [`crate::sinks::run_sink`] gives it the same retry, expiry and settling
//! rules. What is particular to a speaker lives here:
//!
//! - A notify answering `SENT` settles the payment and frees the lane; the
//!   confirmation (`check_notify`) runs beside it ([`super::confirm`]).
//! - A refused notify is classified by asking SePay, never by a guessed
//!   code (speaker-api.md, "What SePay leaves open"): first `check_notify`
//!   with the same `requestId` (an earlier attempt that timed out may have
//!   been accepted: then it was sent), then `pair/check`: offline → retry
//!   until the payment is older than `max_age`; not paired → expired at
//!   once with "not paired"; online and paired yet refused → dead letter
//!   with SePay's message.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::confirm::{ConfirmPolicy, Pending, confirm};
use super::health::SpeakerHealth;
use super::{lane_name, request_id, speakers_for};
use crate::config::{RouteConfig, SpeakerConfig};
use crate::log::{LogEntry, Settlement};
use crate::metrics::metrics;
use crate::model::now_ms;
use crate::sinks::event::{AnnouncementJson, EVENT_SCHEMA, event_id, rfc3339};
use crate::sinks::{RetryPolicy, Sink, SinkError, age_ms};
use crate::speaker_api::client::{SpeakerClient, SpeakerError};
use crate::speaker_api::words::amount_words;
use crate::tasks::Tasks;

/// How long a lane waits before trying again when the API refuses the
/// client's credentials: every call would fail the same way until the
/// config is fixed, and hammering the token endpoint helps nobody.
const BAD_CREDENTIALS_PAUSE: Duration = Duration::from_secs(30);

/// Confirmations one lane runs at once; past that an announcement is
/// reported `unconfirmed` instead of queueing checks behind it (a speaker
/// says one payment in about two seconds: more in flight means the checks
/// would only burn the API's rate).
const MAX_CONFIRMATIONS: usize = 16;

/// What every lane of one `[speaker]` config shares: the client (one token,
/// one pacer), the settings, where results go.
#[derive(Debug)]
pub struct SpeakerService {
    pub client: Arc<SpeakerClient>,
    pub config: SpeakerConfig,
    pub health: Arc<SpeakerHealth>,
    /// Where announcements are reported (the MQTT sink listens), if anywhere.
    pub announcements: Option<broadcast::Sender<AnnouncementJson>>,
    pub confirm: ConfirmPolicy,
}

impl SpeakerService {
    pub fn new(
        client: Arc<SpeakerClient>,
        config: SpeakerConfig,
        health: Arc<SpeakerHealth>,
    ) -> Self {
        SpeakerService {
            client,
            config,
            health,
            announcements: None,
            confirm: ConfirmPolicy::default(),
        }
    }

    /// Reports every announcement (and expired or refused one) to `to`.
    pub fn with_announcements(mut self, to: broadcast::Sender<AnnouncementJson>) -> Self {
        self.announcements = Some(to);
        self
    }

    pub fn with_confirm_policy(mut self, policy: ConfirmPolicy) -> Self {
        self.confirm = policy;
        self
    }

    /// Publishes one result for `hardware_id` (no receiver is not an error:
    /// MQTT may not be connected yet).
    pub fn report(&self, announcement: AnnouncementJson) {
        metrics()
            .announcements
            .with_label_values(&[&announcement.hardware_id, &announcement.result])
            .inc();
        if let Some(to) = &self.announcements {
            let _ = to.send(announcement);
        }
    }
}

/// What an announcement is about, kept past the entry's settlement so the
/// confirmation can report it.
#[derive(Debug, Clone)]
pub struct Announced {
    pub seq: u64,
    pub event_id: String,
    pub hardware_id: String,
    pub request_id: String,
    pub amount: u64,
    /// When the payment becomes too old to announce (Unix ms).
    pub fresh_until_ms: i64,
}

impl Announced {
    pub fn json(&self, request_id: &str, result: &str, detail: Option<String>) -> AnnouncementJson {
        AnnouncementJson {
            schema: EVENT_SCHEMA,
            event_id: self.event_id.clone(),
            seq: self.seq,
            hardware_id: self.hardware_id.clone(),
            request_id: request_id.to_string(),
            amount: self.amount,
            words: amount_words(self.amount),
            result: result.to_string(),
            detail,
            at: rfc3339(now_ms()),
        }
    }
}

/// One speaker's lane.
#[derive(Debug)]
pub struct SpeakerLane {
    service: Arc<SpeakerService>,
    hardware_id: String,
    name: String,
    /// The routes that name this speaker.
    routes: Vec<RouteConfig>,
    /// Confirmations in flight, stopped with the lane (they run on `tasks`).
    confirmations: TaskTracker,
    confirm_slots: Arc<Semaphore>,
    /// The lane's part of the task tree: cancelled when the lane stops.
    tasks: Tasks,
    stop: CancellationToken,
}

impl SpeakerLane {
    pub fn new(
        service: Arc<SpeakerService>,
        hardware_id: &str,
        routes: Vec<RouteConfig>,
        tasks: Tasks,
    ) -> Self {
        SpeakerLane {
            stop: tasks.token().clone(),
            tasks,
            service,
            hardware_id: hardware_id.to_string(),
            name: lane_name(hardware_id),
            routes,
            confirmations: TaskTracker::new(),
            confirm_slots: Arc::new(Semaphore::new(MAX_CONFIRMATIONS)),
        }
    }

    pub fn hardware_id(&self) -> &str {
        &self.hardware_id
    }

    fn announced(&self, entry: &LogEntry) -> Announced {
        let key = entry.change.dedupe_key();
        let age = age_ms(entry, now_ms());
        Announced {
            seq: entry.seq,
            event_id: event_id(&key),
            hardware_id: self.hardware_id.clone(),
            request_id: request_id(&key, &self.hardware_id),
            amount: entry.change.amount,
            fresh_until_ms: now_ms() - age + self.service.config.max_age.as_millis() as i64,
        }
    }

    /// Keeps the speaker's health fresh until the lane stops: checked at
    /// once, then every minute, sooner after a failure.
    pub async fn watch_health(self: Arc<Self>) {
        let health = &self.service.health;
        loop {
            match self.service.client.check(&self.hardware_id).await {
                Ok(device) => health.checked(&device),
                Err(error) => {
                    tracing::warn!(hardware_id = %self.hardware_id, %error, "speaker check failed");
                    health.call_failed(&self.hardware_id, &error.to_string());
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = health.next_check(&self.hardware_id) => {}
            }
        }
    }

    /// Waits for the confirmations in flight (they stop with the lane).
    pub async fn stopped(&self) {
        self.confirmations.close();
        self.confirmations.wait().await;
    }

    /// The notify was accepted: report it, start its confirmation.
    fn sent(&self, announced: Announced) {
        self.service.health.sent(&self.hardware_id);
        self.service
            .report(announced.json(&announced.request_id, "sent", None));
        tracing::info!(
            sink = %self.name,
            seq = announced.seq,
            hardware_id = %self.hardware_id,
            request_id = %announced.request_id,
            amount = announced.amount,
            "announcement sent"
        );
        match self.confirm_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let service = self.service.clone();
                let stop = self.stop.clone();
                let confirmation = self.confirmations.track_future(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = confirm(&service, Pending::new(announced)) => {}
                    }
                    drop(permit);
                });
                self.tasks.spawn("speaker confirmation", confirmation);
            }
            Err(_) => self.service.report(announced.json(
                &announced.request_id,
                "unconfirmed",
                Some(format!(
                    "not checked: {MAX_CONFIRMATIONS} announcements of this speaker were already being checked"
                )),
            )),
        }
    }

    /// Why a notify failed, as the retry loop should see it.
    async fn classify(&self, announced: &Announced, error: SpeakerError) -> Result<(), SinkError> {
        let hw = &self.hardware_id;
        let reason = format!("speaker {hw}: {error}");
        let health = &self.service.health;
        match error {
            SpeakerError::RateLimited { retry_after } => Err(SinkError::Retriable {
                reason,
                retry_after,
            }),
            SpeakerError::BadCredentials => {
                health.call_failed(hw, &reason);
                Err(SinkError::Retriable {
                    reason,
                    retry_after: Some(BAD_CREDENTIALS_PAUSE),
                })
            }
            SpeakerError::Refused { message, .. } => self.refused(announced, &message).await,
            e if e.is_retriable() => {
                health.call_failed(hw, &reason);
                Err(SinkError::retriable(reason))
            }
            // An answer the client could not read: the notify may have been
            // taken, and a retry under the same requestId is harmless.
            _ => Err(SinkError::retriable(reason)),
        }
    }

    /// A notify SePay refused: asks SePay what that means for this payment.
    async fn refused(&self, announced: &Announced, message: &str) -> Result<(), SinkError> {
        let hw = &self.hardware_id;
        let client = &self.service.client;
        // Known under this requestId: an earlier attempt got through.
        if client.check_notify(&announced.request_id).await.is_ok() {
            tracing::info!(hardware_id = %hw, request_id = %announced.request_id, "notify refused, but SePay knows this requestId: it was sent");
            return Ok(());
        }
        match client.check(hw).await {
            Ok(device) => {
                self.service.health.checked(&device);
                if !device.is_paired {
                    Err(SinkError::Expire {
                        reason: format!(
                            "speaker {hw} is not paired (SePay: {message}); pair it with `soundbox-gateway speaker pair {hw}`"
                        ),
                    })
                } else if !device.online {
                    Err(SinkError::retriable(format!(
                        "speaker {hw} is offline (SePay: {message})"
                    )))
                } else {
                    // It may have come back between the notify and the
                    // check (a 4G reconnect): one more notify settles it.
                    self.refused_while_up(announced, message).await
                }
            }
            Err(SpeakerError::Refused {
                message: check_message,
                ..
            }) => Err(SinkError::permanent(format!(
                "speaker {hw}: SePay refused the notify ({message}) and does not know the speaker ({check_message}); check the hardware id in [[route]]"
            ))),
            Err(error) => {
                let reason =
                    format!("speaker {hw}: notify refused ({message}); pair/check failed: {error}");
                self.service.health.call_failed(hw, &reason);
                Err(SinkError::retriable(reason))
            }
        }
    }
}

impl SpeakerLane {
    /// A notify refused while `pair/check` says the speaker is online and
    /// paired: tried once more, and a dead letter only if refused again.
    async fn refused_while_up(&self, announced: &Announced, first: &str) -> Result<(), SinkError> {
        let hw = &self.hardware_id;
        match self
            .service
            .client
            .notify(hw, announced.amount, &announced.request_id)
            .await
        {
            Ok(_) => Ok(()),
            Err(SpeakerError::Refused { message, .. }) => Err(SinkError::permanent(format!(
                "speaker {hw} is online and paired, yet SePay refused the notify twice: {first}; {message}"
            ))),
            Err(error) => Err(SinkError::retriable(format!(
                "speaker {hw}: notify refused ({first}), then failed: {error}"
            ))),
        }
    }
}

impl Sink for SpeakerLane {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_age(&self) -> Option<Duration> {
        Some(self.service.config.max_age)
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.service.config.retry
    }

    fn why_waiting(&self) -> Option<String> {
        let state = self.service.health.get(&self.hardware_id)?;
        let trouble = state.trouble()?;
        Some(format!("speaker {} is {trouble}", self.hardware_id))
    }

    fn wants(&self, entry: &LogEntry) -> bool {
        speakers_for(&self.service.config, &self.routes, entry).contains(&self.hardware_id.as_str())
    }

    async fn deliver(&self, entry: &LogEntry) -> Result<(), SinkError> {
        let announced = self.announced(entry);
        let sent = self
            .service
            .client
            .notify(
                &self.hardware_id,
                entry.change.amount,
                &announced.request_id,
            )
            .await;
        match sent {
            Ok(_) => {}
            Err(error) => self.classify(&announced, error).await?,
        }
        self.sent(announced);
        Ok(())
    }

    fn settled(&self, entry: &LogEntry, settlement: &Settlement) {
        let result = match settlement {
            Settlement::Delivered => return,
            Settlement::Expired { .. } => "expired",
            Settlement::Dead { .. } => "refused",
        };
        let announced = self.announced(entry);
        let detail = settlement.reason().map(str::to_string);
        self.service
            .report(announced.json(&announced.request_id, result, detail));
    }
}
