//! Fleet health: what a chain's head office sees of each gateway.
//!
//! Every MQTT sink keeps a retained [`HealthDoc`] on
//! `<topic_prefix>/<gateway id>/health`, refreshed on every change and every
//! `health_every_secs`; beside it the retained `status` (`online`, and
//! `offline` as the last will) says whether the gateway is connected right
//! now. `soundbox-gateway fleet status` ([`status`]) reads both back for every
//! gateway under a prefix. The schema is in `docs/fleet.md`; fields are only
//! ever added, and `schema` changes when a meaning does.

pub mod status;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::admin::status::{Live, StatusReport};
use crate::model::now_ms;
use crate::sinks::event::rfc3339;
pub use crate::sinks::mqtt::{HealthFeed, HealthSnapshot};
use crate::tasks::Tasks;

/// Bumped only on an incompatible change.
pub const HEALTH_SCHEMA: u32 = 1;

/// How often the document is rebuilt to look for a change.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// One gateway's health, as published retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthDoc {
    pub schema: u32,
    /// `gateway.id`.
    pub gateway: String,
    pub version: String,
    /// When this document was made, RFC 3339 UTC.
    pub at: String,
    pub uptime_secs: u64,
    /// What `/readyz` says, and why not.
    pub ready: bool,
    pub problems: Vec<String>,
    pub sinks: Vec<SinkHealth>,
    pub speakers: SpeakersHealth,
    pub connectors: ConnectorsHealth,
    pub subscriptions: Vec<SubscriptionHealth>,
    /// Free space where the store is, if it could be read.
    pub disk_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    /// Payments not yet delivered (or settled otherwise).
    pub pending: u64,
    pub oldest_pending_secs: Option<u64>,
    pub dead_letters: u64,
    /// Every attempt fails right now.
    pub failing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakersHealth {
    /// Routed speakers the Speaker API last said are online.
    pub online: u32,
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorsHealth {
    pub ok: u32,
    /// Connectors whose last calls failed (`admin.connector_failures` in a row).
    pub failing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionHealth {
    pub connector: String,
    pub connected: bool,
}

impl HealthDoc {
    /// The document for `report`.
    pub fn from_report(report: &StatusReport, failures: u64, disk_free_bytes: Option<u64>) -> Self {
        let failing: Vec<String> = report
            .connectors
            .iter()
            .filter(|c| c.health.consecutive_failures >= failures)
            .map(|c| c.name.clone())
            .collect();
        HealthDoc {
            schema: HEALTH_SCHEMA,
            gateway: report.gateway.clone(),
            version: report.version.to_string(),
            at: rfc3339(now_ms()),
            uptime_secs: report.uptime_secs,
            ready: report.ready,
            problems: report.problems.clone(),
            sinks: report
                .sinks
                .iter()
                .map(|s| SinkHealth {
                    name: s.queue.sink.clone(),
                    pending: s.queue.pending,
                    oldest_pending_secs: s
                        .queue
                        .oldest_pending_age_ms
                        .map(|ms| u64::try_from(ms / 1000).unwrap_or(0)),
                    dead_letters: s.queue.dead_letters,
                    failing: s.failing_since_ms.is_some(),
                })
                .collect(),
            speakers: SpeakersHealth {
                online: report
                    .speakers
                    .iter()
                    .filter(|s| s.health.online == Some(true))
                    .count() as u32,
                total: report.speakers.len() as u32,
            },
            connectors: ConnectorsHealth {
                ok: (report.connectors.len() - failing.len()) as u32,
                failing,
            },
            subscriptions: report
                .subscriptions
                .iter()
                .map(|s| SubscriptionHealth {
                    connector: s.connector.clone(),
                    connected: s.connected,
                })
                .collect(),
            disk_free_bytes,
        }
    }

    /// What counts as a change worth publishing at once: the verdict and
    /// the states, not the counts and ages that move with every payment.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.ready.hash(&mut h);
        self.problems.hash(&mut h);
        for s in &self.sinks {
            (&s.name, s.failing, s.pending > 0, s.dead_letters > 0).hash(&mut h);
        }
        (self.speakers.online, self.speakers.total).hash(&mut h);
        self.connectors.failing.hash(&mut h);
        for s in &self.subscriptions {
            (&s.connector, s.connected).hash(&mut h);
        }
        h.finish()
    }
}

/// Rebuilds the document every few seconds into `feed` until `tasks` is
/// cancelled (the building runs on `tasks`, off the async threads). Each
/// MQTT sink publishes it when its fingerprint changed or its own interval
/// passed.
pub async fn keep_fresh(
    live: Arc<Live>,
    feed: watch::Sender<Option<Arc<HealthSnapshot>>>,
    tasks: Tasks,
) {
    loop {
        let built = tasks
            .spawn_blocking("health document", {
                let live = live.clone();
                move || {
                    let report = live.report();
                    let config = live.config.load();
                    let free = disk_free(&config.gateway.data_dir);
                    HealthDoc::from_report(&report, config.admin.connector_failures, free)
                }
            })
            .await;
        match built {
            Ok(doc) => match serde_json::to_vec(&doc) {
                Ok(json) => {
                    let snapshot = HealthSnapshot {
                        fingerprint: doc.fingerprint(),
                        json,
                    };
                    feed.send_replace(Some(Arc::new(snapshot)));
                }
                Err(error) => tracing::error!(%error, "cannot encode the health document"),
            },
            Err(error) => tracing::error!(%error, "building the health document panicked"),
        }
        tokio::select! {
            _ = tasks.token().cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// Free bytes on the filesystem holding `dir`.
fn disk_free(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> HealthDoc {
        HealthDoc {
            schema: HEALTH_SCHEMA,
            gateway: "shop-1".into(),
            version: "0.1.0".into(),
            at: "2026-12-03T00:00:00.000Z".into(),
            uptime_secs: 10,
            ready: true,
            problems: Vec::new(),
            sinks: vec![SinkHealth {
                name: "speaker:SB-1".into(),
                pending: 1,
                oldest_pending_secs: Some(2),
                dead_letters: 0,
                failing: false,
            }],
            speakers: SpeakersHealth {
                online: 1,
                total: 1,
            },
            connectors: ConnectorsHealth {
                ok: 1,
                failing: Vec::new(),
            },
            subscriptions: vec![SubscriptionHealth {
                connector: "chain".into(),
                connected: true,
            }],
            disk_free_bytes: Some(1 << 30),
        }
    }

    #[test]
    fn counts_and_ages_do_not_count_as_a_change_states_do() {
        let base = doc();
        let mut busier = doc();
        busier.uptime_secs = 99;
        busier.at = "2026-12-03T00:01:00.000Z".into();
        busier.sinks[0].pending = 7;
        busier.sinks[0].oldest_pending_secs = Some(30);
        busier.disk_free_bytes = Some(1 << 29);
        assert_eq!(base.fingerprint(), busier.fingerprint());

        let changes: [fn(&mut HealthDoc); 6] = [
            |d| d.ready = false,
            |d| d.sinks[0].failing = true,
            |d| d.sinks[0].pending = 0,
            |d| d.speakers.online = 0,
            |d| d.connectors.failing = vec!["sepay".into()],
            |d| d.subscriptions[0].connected = false,
        ];
        for change in changes {
            let mut changed = doc();
            change(&mut changed);
            assert_ne!(base.fingerprint(), changed.fingerprint(), "{changed:?}");
        }
    }

    #[test]
    fn the_document_reads_back_and_the_table_names_every_gateway() {
        let json = serde_json::to_string(&doc()).expect("json");
        let back: HealthDoc = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, doc());
        let mut not_ready = doc();
        not_ready.gateway = "shop-2".into();
        not_ready.ready = false;
        not_ready.problems = vec!["Speaker SB-2 is offline".into()];
        let table = status::table(&[
            status::GatewayView {
                id: "shop-1".into(),
                status: Some("online".into()),
                health: Some(doc()),
            },
            status::GatewayView {
                id: "shop-2".into(),
                status: Some("offline".into()),
                health: Some(not_ready),
            },
            status::GatewayView {
                id: "shop-3".into(),
                status: None,
                health: None,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("shop-1") && lines[1].contains("online"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("shop-2") && lines[2].contains("offline"),
            "{table}"
        );
        assert!(lines[3].contains("! Speaker SB-2 is offline"), "{table}");
        assert!(
            lines[4].starts_with("shop-3") && lines[4].contains("no health document"),
            "{table}"
        );
    }
}
