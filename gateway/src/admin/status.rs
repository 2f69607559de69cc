//! What the gateway is doing right now: the `/api/status` report, the
//! `/readyz` verdict and the scrape-time metrics, all from one snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;

use super::QueueView;
use crate::config::{Config, SubscriptionConfig};
use crate::connectors::{Connectors, HealthReport};
use crate::ingress::mqtt::{SubscriptionReport, SubscriptionStats};
use crate::log::LogError;
use crate::log::{LogHealth, QueueItem, SinkStatus, Store};
use crate::metrics::metrics;
use crate::model::now_ms;
use crate::sinks::SinkStats;
use crate::sinks::event::AnnouncementJson;
use crate::sinks::speaker::{
    Routing, SpeakerHealth, SpeakerState, lane_name, lane_speaker, routed_speakers,
};
use crate::tasks::Tasks;

/// Payments the status page and `/api/status` list.
const RECENT: usize = 20;

/// The running parts, as the admin server sees them; a reload swaps them.
#[derive(Debug)]
pub struct Live {
    pub log: Store,
    pub config: ArcSwap<Config>,
    pub connectors: Arc<ArcSwap<Connectors>>,
    /// Each running sink and its counters, in config order.
    pub sinks: ArcSwap<Vec<(String, Arc<SinkStats>)>>,
    pub speakers: Arc<SpeakerBoard>,
    /// Each routed speaker's health (pair/check), written by the lanes.
    pub speaker_health: Arc<SpeakerHealth>,
    /// Each connector's MQTT subscription, if it has one.
    pub subscriptions: ArcSwap<Vec<(String, SubscriptionConfig, Arc<SubscriptionStats>)>>,
    /// Why the last config change was refused (a bad line, or a plugin
    /// that would not load, such as an upgrade asking for a host the
    /// config does not grant); None once a change is applied.
    pub refused_change: ArcSwap<Option<RefusedChange>>,
    pub started: Instant,
    /// The admin server's part of the task tree: its reads of the store
    /// run there, so shutdown waits for them before the store closes.
    pub tasks: Tasks,
}

/// A config change the running gateway refused.
#[derive(Debug, Clone)]
pub struct RefusedChange {
    pub reason: String,
    /// The connector whose plugin would not load, and what is wrong with
    /// its file on disk (`modified`, `held: …`), when that was the reason.
    pub connector: Option<(String, String)>,
}

/// The last thing each speaker was asked to say, from the announcements.
#[derive(Debug, Default)]
pub struct SpeakerBoard {
    last: Mutex<BTreeMap<String, AnnouncementJson>>,
}

impl SpeakerBoard {
    /// Keeps the board up to date until the sender is dropped.
    pub async fn follow(self: Arc<Self>, mut announcements: broadcast::Receiver<AnnouncementJson>) {
        loop {
            match announcements.recv().await {
                Ok(a) => {
                    if let Ok(mut last) = self.last.lock() {
                        last.insert(a.hardware_id.clone(), a);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn get(&self, hardware_id: &str) -> Option<AnnouncementJson> {
        self.last.lock().ok()?.get(hardware_id).cloned()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub gateway: String,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub ready: bool,
    /// Why not ready; empty when ready.
    pub problems: Vec<String>,
    /// What needs an eye but does not (yet) make the gateway unready: a
    /// speaker that just went offline, with the payments waiting for it.
    pub warnings: Vec<String>,
    pub log: LogHealth,
    pub sinks: Vec<SinkReport>,
    pub connectors: Vec<ConnectorReport>,
    pub speakers: Vec<SpeakerReport>,
    /// Connectors' MQTT subscriptions.
    pub subscriptions: Vec<SubscriptionReport>,
    /// The latest payments, newest first, with the speaker sink's state of each.
    pub recent: Vec<QueueItem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    #[serde(flatten)]
    pub queue: SinkStatus,
    /// Since when every attempt has failed (Unix ms), if they do.
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectorReport {
    pub name: String,
    /// `webhook`, `poll` or `webhook+poll`.
    pub kind: &'static str,
    pub plugin: String,
    /// Signed (by whom), unsigned, ... as checked when it was loaded.
    pub signature: String,
    /// A newer file on disk that a reload refused (`modified`, `held: …`):
    /// the version above keeps running.
    pub on_disk: Option<String>,
    /// The signed manifest's name and version, if it has one.
    pub version: Option<String>,
    #[serde(flatten)]
    pub health: HealthReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeakerReport {
    /// Paired and online as `pair/check` last said, and since when it is down.
    #[serde(flatten)]
    pub health: SpeakerState,
    /// Payments waiting in this speaker's lane, the oldest's age, and the
    /// first few amounts (what the cashier would ask about).
    pub waiting: u64,
    pub oldest_waiting_age_ms: Option<i64>,
    pub waiting_amounts: Vec<u64>,
    /// The last announcement and its result, if any since start.
    pub last: Option<AnnouncementJson>,
}

/// Amounts of a lane's waiting payments the status page names.
const WAITING_SHOWN: usize = 3;

/// One line a cashier reads at a glance: which speaker, what is wrong,
/// which payments wait for it.
fn speaker_problem(id: &str, trouble: &str, down_ms: i64, waiting: u64, amounts: &[u64]) -> String {
    let since = match down_ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s => format!("{} min", s / 60),
    };
    let waits = match waiting {
        0 => "no payment waits for it".to_string(),
        n => {
            let shown: Vec<String> = amounts.iter().map(|a| super::page::vnd(*a)).collect();
            let more = if n as usize > amounts.len() {
                ", …"
            } else {
                ""
            };
            format!(
                "{n} payment{} wait{} for it ({}{more})",
                if n == 1 { "" } else { "s" },
                if n == 1 { "s" } else { "" },
                shown.join(", ")
            )
        }
    };
    format!("Speaker {id} is {trouble} (for {since}): {waits}")
}

/// The newest payments routed to any speaker, each with how its lanes
/// stand: waiting while any lane waits, else the worst outcome.
fn recent_payments(
    view: &QueueView,
    speakers: &[SpeakerReport],
) -> Result<Vec<QueueItem>, LogError> {
    let rank = |state: &str| match state {
        "pending" | "requeued" => 4,
        "dead" => 3,
        "expired" => 2,
        "delivered" => 1,
        _ => 0,
    };
    let mut merged: BTreeMap<u64, QueueItem> = BTreeMap::new();
    for s in speakers {
        for item in view.list(&lane_name(&s.health.hardware_id), None, RECENT)? {
            match merged.get_mut(&item.seq) {
                Some(seen) if rank(&item.state) > rank(&seen.state) => *seen = item,
                Some(_) => {}
                None => {
                    merged.insert(item.seq, item);
                }
            }
        }
    }
    Ok(merged.into_values().rev().take(RECENT).collect())
}

impl Live {
    /// Everything at once; storage errors become problems, not failures.
    pub fn report(&self) -> StatusReport {
        let config = self.config.load();
        let sinks = self.sinks.load();
        let view = QueueView {
            log: self.log.clone(),
            sinks: crate::sinks::sink_names(&config),
            routing: Routing::of(&config),
        };
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let refused = self.refused_change.load_full();
        if let Some(refused) = refused.as_ref() {
            warnings.push(format!(
                "a config change was refused; still running the previous config: {}",
                refused.reason
            ));
        }
        let speaker_health = self.speaker_health.all();
        // A lane whose speaker is down is reported once, as the speaker.
        let speaker_down = |sink: &str| {
            lane_speaker(sink).is_some_and(|hw| {
                speaker_health
                    .iter()
                    .any(|s| s.hardware_id == hw && s.trouble().is_some())
            })
        };
        for c in config.connectors.iter().filter(|c| c.allows_unsigned()) {
            warnings.push(unsigned_warning(&c.name));
        }
        let now = now_ms();
        let stall_ms = config.admin.stall_after.as_millis() as i64;
        let stall_secs = config.admin.stall_after.as_secs();

        let health = self.log.health();
        if health.is_degraded() {
            let why = health
                .last_error
                .clone()
                .or_else(|| {
                    health
                        .damaged_store
                        .as_ref()
                        .map(|p| format!("a damaged store was moved aside to {p}"))
                })
                .unwrap_or_else(|| format!("{} entries failed their checksum", health.quarantined));
            problems.push(format!("event log degraded: {why}"));
        }

        let mut sink_reports = Vec::new();
        match view.report() {
            Ok(report) => {
                for queue in report.sinks {
                    let stats = sinks.iter().find(|(n, _)| *n == queue.sink).map(|(_, s)| s);
                    let failing_since_ms = stats.and_then(|s| s.failing_since());
                    let last_error = stats.and_then(|s| s.last_error());
                    if !queue.configured {
                        if queue.pending > 0 {
                            warnings.push(format!(
                                "sink `{}` is no longer in the config and keeps {} payment(s) from GC; `queue forget {}` lets them go",
                                queue.sink, queue.pending, queue.sink
                            ));
                        }
                    } else if stats.is_none() {
                        // A warning, not a problem: a reload restarting the
                        // sink passes through this state for a moment.
                        warnings.push(format!(
                            "sink `{}` is configured but not running (it failed to start; see the log); its {} pending payment(s) are kept",
                            queue.sink, queue.pending
                        ));
                    } else if speaker_down(&queue.sink) {
                        // Named below, with its speaker.
                    } else if let Some(since) = failing_since_ms.filter(|&t| now - t > stall_ms) {
                        problems.push(format!(
                            "sink `{}`: every attempt has failed for {} s (over {stall_secs} s): {}",
                            queue.sink,
                            (now - since) / 1000,
                            last_error.as_deref().unwrap_or("unknown error")
                        ));
                    } else if let Some(age) = queue.oldest_pending_age_ms.filter(|&a| a > stall_ms)
                    {
                        problems.push(format!(
                            "sink `{}`: the oldest pending payment is {} s old (over {stall_secs} s)",
                            queue.sink,
                            age / 1000
                        ));
                    }
                    sink_reports.push(SinkReport {
                        queue,
                        failing_since_ms,
                        last_error,
                    });
                }
            }
            Err(error) => problems.push(format!("cannot read the queues: {error}")),
        }

        let connectors: Vec<ConnectorReport> = self
            .connectors
            .load()
            .iter()
            .map(|p| {
                let health = p.health().report();
                if health.consecutive_failures >= config.admin.connector_failures {
                    problems.push(format!(
                        "connector `{}`: the last {} calls failed: {}",
                        p.name(),
                        health.consecutive_failures,
                        health.last_failure.as_deref().unwrap_or("unknown error")
                    ));
                }
                ConnectorReport {
                    name: p.name().to_string(),
                    kind: match (p.world().handles_webhooks(), p.world().polls()) {
                        (true, true) => "webhook+poll",
                        (false, true) => "poll",
                        _ => "webhook",
                    },
                    plugin: p
                        .path()
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    signature: p.signature().to_string(),
                    on_disk: refused
                        .as_ref()
                        .as_ref()
                        .and_then(|r| r.connector.as_ref())
                        .filter(|(name, _)| name == p.name())
                        .map(|(_, state)| state.clone()),
                    version: p.manifest().map(|m| format!("{} {}", m.name, m.version)),
                    health,
                }
            })
            .collect();

        let subscriptions: Vec<SubscriptionReport> = self
            .subscriptions
            .load()
            .iter()
            .map(|(name, config, stats)| stats.report(name, config))
            .collect();
        for s in subscriptions.iter().filter(|s| !s.connected) {
            let down_ms = s.since_ms.map_or(0, |t| (now - t).max(0));
            let message = format!(
                "connector `{}`: not subscribed to {} on {} for {} s: {}",
                s.connector,
                s.topic,
                s.broker,
                down_ms / 1000,
                s.last_error.as_deref().unwrap_or("connecting")
            );
            if down_ms > stall_ms {
                problems.push(message);
            } else {
                warnings.push(message);
            }
        }

        let speaker_ids = if config.speaker.is_some() {
            routed_speakers(&config.routes)
        } else {
            Vec::new()
        };
        let mut speakers = Vec::new();
        for id in speaker_ids {
            let lane = lane_name(&id);
            let queue = view.status(&lane).ok();
            let waiting_amounts: Vec<u64> = view
                .waiting(&lane, WAITING_SHOWN)
                .map(|entries| entries.iter().map(|e| e.change.amount).collect())
                .unwrap_or_default();
            let health = speaker_health
                .iter()
                .find(|s| s.hardware_id == id)
                .cloned()
                .unwrap_or_else(|| SpeakerState {
                    hardware_id: id.clone(),
                    ..SpeakerState::default()
                });
            let waiting = queue.as_ref().map_or(0, |q| q.pending);
            if let Some(trouble) = health.trouble() {
                let down_ms = health.down_since_ms.map_or(0, |t| (now - t).max(0));
                let message = speaker_problem(&id, trouble, down_ms, waiting, &waiting_amounts);
                if down_ms > stall_ms {
                    problems.push(message);
                } else {
                    warnings.push(message);
                }
            } else if let Some(error) = &health.last_error
                && waiting > 0
            {
                warnings.push(format!(
                    "Speaker {id}: {waiting} payment(s) waiting; the last call failed: {error}"
                ));
            }
            speakers.push(SpeakerReport {
                last: self.speakers.get(&id),
                health,
                waiting,
                oldest_waiting_age_ms: queue.and_then(|q| q.oldest_pending_age_ms),
                waiting_amounts,
            });
        }

        let recent = recent_payments(&view, &speakers).unwrap_or_else(|error| {
            problems.push(format!("cannot list recent payments: {error}"));
            Vec::new()
        });

        StatusReport {
            gateway: config.gateway.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            ready: problems.is_empty(),
            problems,
            warnings,
            log: health,
            sinks: sink_reports,
            connectors,
            speakers,
            subscriptions,
            recent,
        }
    }

    /// Sets the scrape-time gauges from a fresh report.
    pub fn update_metrics(&self, report: &StatusReport) {
        let m = metrics();
        for sink in &report.sinks {
            let q = &sink.queue;
            let label = [q.sink.as_str()];
            m.queue_pending
                .with_label_values(&label)
                .set(q.pending as i64);
            m.queue_oldest_pending_seconds
                .with_label_values(&label)
                .set(q.oldest_pending_age_ms.unwrap_or(0) / 1000);
            m.queue_dead_letters
                .with_label_values(&label)
                .set(q.dead_letters as i64);
        }
        m.log_degraded.set(i64::from(report.log.is_degraded()));
        m.ready.set(i64::from(report.ready));
    }
}

/// Said at every start and on the status page while a connector takes
/// unsigned webhooks: anyone who reaches the listener can fake a payment.
pub fn unsigned_warning(connector: &str) -> String {
    format!(
        "Connector {connector} accepts unsigned webhooks (allow_unsigned = true): anything \
         that can reach the webhook listener can make the speaker announce a payment that \
         never happened. Set the provider's API key or signature secret before going live."
    )
}
