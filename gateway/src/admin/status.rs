//! What the gateway is doing right now: the `/api/status` report, the
//! `/readyz` verdict and the scrape-time metrics, all from one snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::broadcast;

use super::QueueView;
use crate::config::Config;
use crate::connectors::{Connectors, HealthReport};
use crate::log::{LogHealth, QueueItem, SinkStatus, SledLog};
use crate::metrics::metrics;
use crate::model::now_ms;
use crate::sinks::SinkStats;
use crate::sinks::event::AnnouncementJson;
use crate::sinks::speaker::SINK_NAME as SPEAKER_SINK;

/// Payments the status page and `/api/status` list.
const RECENT: usize = 20;

/// The running parts, as the admin server sees them; a reload swaps them.
#[derive(Debug)]
pub struct Live {
    pub log: SledLog,
    pub config: ArcSwap<Config>,
    pub connectors: Arc<ArcSwap<Connectors>>,
    /// Each running sink and its counters, in config order.
    pub sinks: ArcSwap<Vec<(String, Arc<SinkStats>)>>,
    pub speakers: Arc<SpeakerBoard>,
    pub started: Instant,
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
    pub log: LogHealth,
    pub sinks: Vec<SinkReport>,
    pub connectors: Vec<ConnectorReport>,
    pub speakers: Vec<SpeakerReport>,
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
    #[serde(flatten)]
    pub health: HealthReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpeakerReport {
    pub hardware_id: String,
    /// The last announcement and its result, if any since start.
    pub last: Option<AnnouncementJson>,
}

impl Live {
    /// Everything at once; storage errors become problems, not failures.
    pub fn report(&self) -> StatusReport {
        let config = self.config.load();
        let sinks = self.sinks.load();
        let view = QueueView {
            log: self.log.clone(),
            sinks: sinks.iter().map(|(name, _)| name.clone()).collect(),
        };
        let mut problems = Vec::new();
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
                    if let Some(since) = failing_since_ms.filter(|&t| now - t > stall_ms) {
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
                    health,
                }
            })
            .collect();

        let mut speaker_ids: Vec<String> = config
            .routes
            .iter()
            .flat_map(|r| r.speakers.iter().cloned())
            .collect();
        speaker_ids.sort();
        speaker_ids.dedup();
        let speakers = speaker_ids
            .into_iter()
            .map(|id| SpeakerReport {
                last: self.speakers.get(&id),
                hardware_id: id,
            })
            .collect();

        let shown = if config.speaker.is_some() {
            Some(SPEAKER_SINK.to_string())
        } else {
            view.sinks.first().cloned()
        };
        let recent = match &shown {
            Some(sink) => self.log.list(sink, None, RECENT).unwrap_or_else(|error| {
                problems.push(format!("cannot list recent payments: {error}"));
                Vec::new()
            }),
            None => Vec::new(),
        };

        StatusReport {
            gateway: config.gateway.id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            ready: problems.is_empty(),
            problems,
            log: health,
            sinks: sink_reports,
            connectors,
            speakers,
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
