//! What the gateway knows of each routed speaker: paired and online as
//! `pair/check` last said, since when it has been offline, and what its lane
//! last did. The status page, `/api/status`, `/readyz`, `/metrics` and MQTT
//! read it; the lanes and their health checkers write it.
//!
//! A speaker is checked when its lane starts, after a failed or refused
//! notify (at most every [`RECHECK_AFTER_FAILURE`]), and every
//! [`CHECK_EVERY`] otherwise.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};

use crate::metrics::metrics;
use crate::model::now_ms;
use crate::speaker_api::types::Device;

/// How often a speaker is asked about when nothing goes wrong.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The soonest a failure makes its speaker be asked about again.
pub const RECHECK_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One speaker as the gateway knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpeakerState {
    pub hardware_id: String,
    /// From `pair/check`; None until the first answer.
    pub model: Option<String>,
    pub paired: Option<bool>,
    pub online: Option<bool>,
    /// When `pair/check` last answered (Unix ms).
    pub checked_at_ms: Option<i64>,
    /// Since when `pair/check` has said offline or not paired (Unix ms).
    pub down_since_ms: Option<i64>,
    /// Why the last check or notify failed, if it did (the API itself down,
    /// say); cleared by the next success.
    pub last_error: Option<String>,
    /// When its lane last had a notify accepted (Unix ms).
    pub last_sent_ms: Option<i64>,
}

impl SpeakerState {
    /// Online and paired as far as the last check knows.
    pub fn is_up(&self) -> bool {
        self.online != Some(false) && self.paired != Some(false)
    }

    /// What is wrong with it, in words a cashier reads at a glance.
    pub fn trouble(&self) -> Option<&'static str> {
        match (self.paired, self.online) {
            (Some(false), _) => Some("not paired"),
            (_, Some(false)) => Some("offline"),
            _ => None,
        }
    }
}

/// Every routed speaker's state, shared by the lanes and the admin server.
#[derive(Debug)]
pub struct SpeakerHealth {
    speakers: Mutex<BTreeMap<String, SpeakerState>>,
    /// Wakes the checker of a speaker whose notify just failed.
    wake: Mutex<BTreeMap<String, std::sync::Arc<Notify>>>,
    /// Every change, for MQTT (`speakers` topic).
    changes: broadcast::Sender<SpeakerState>,
}

impl Default for SpeakerHealth {
    fn default() -> Self {
        SpeakerHealth {
            speakers: Mutex::default(),
            wake: Mutex::default(),
            changes: broadcast::channel(256).0,
        }
    }
}

impl SpeakerHealth {
    /// Every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SpeakerState> {
        self.changes.subscribe()
    }

    /// The state of every speaker the board knows, by hardware id.
    pub fn all(&self) -> Vec<SpeakerState> {
        self.speakers
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, hardware_id: &str) -> Option<SpeakerState> {
        self.speakers.lock().ok()?.get(hardware_id).cloned()
    }

    /// Keeps only `routed` on the board (a reload may drop speakers).
    pub fn retain(&self, routed: &[String]) {
        if let Ok(mut speakers) = self.speakers.lock() {
            speakers.retain(|id, _| routed.contains(id));
            for id in routed {
                speakers.entry(id.clone()).or_insert_with(|| SpeakerState {
                    hardware_id: id.clone(),
                    ..SpeakerState::default()
                });
            }
        }
        let m = metrics();
        for id in routed {
            if self.get(id).is_some_and(|s| s.online.is_none()) {
                m.speaker_online.with_label_values(&[id]).set(-1);
            }
        }
    }

    fn update(&self, hardware_id: &str, change: impl FnOnce(&mut SpeakerState)) {
        let state = {
            let Ok(mut speakers) = self.speakers.lock() else {
                return;
            };
            let state = speakers
                .entry(hardware_id.to_string())
                .or_insert_with(|| SpeakerState {
                    hardware_id: hardware_id.to_string(),
                    ..SpeakerState::default()
                });
            let before = state.clone();
            change(state);
            if *state == before {
                return;
            }
            state.clone()
        };
        let m = metrics();
        let gauge = |v: Option<bool>| v.map_or(-1, i64::from);
        m.speaker_online
            .with_label_values(&[hardware_id])
            .set(gauge(state.online));
        m.speaker_paired
            .with_label_values(&[hardware_id])
            .set(gauge(state.paired));
        let _ = self.changes.send(state);
    }

    /// What `pair/check` answered.
    pub fn checked(&self, device: &Device) {
        let now = now_ms();
        self.update(&device.hardware_id, |s| {
            let was_up = s.is_up() && s.online.is_some();
            s.model = Some(device.model.clone());
            s.paired = Some(device.is_paired);
            s.online = Some(device.online);
            s.checked_at_ms = Some(now);
            s.last_error = None;
            if s.is_up() {
                s.down_since_ms = None;
            } else if was_up || s.down_since_ms.is_none() {
                s.down_since_ms = Some(now);
            }
        });
    }

    /// A call about `hardware_id` failed for a reason that says nothing of
    /// the speaker itself (the API down, a timeout).
    pub fn call_failed(&self, hardware_id: &str, reason: &str) {
        self.update(hardware_id, |s| s.last_error = Some(reason.to_string()));
        self.recheck(hardware_id);
    }

    /// A notify to `hardware_id` was accepted: it is up.
    pub fn sent(&self, hardware_id: &str) {
        let now = now_ms();
        self.update(hardware_id, |s| {
            s.last_sent_ms = Some(now);
            s.last_error = None;
            if !s.is_up() {
                // It took a notify, so it is back; the next check confirms.
                s.online = Some(true);
                s.paired = Some(true);
                s.down_since_ms = None;
            }
        });
    }

    /// Asks for `hardware_id` to be checked soon.
    pub fn recheck(&self, hardware_id: &str) {
        self.waker(hardware_id).notify_one();
    }

    fn waker(&self, hardware_id: &str) -> std::sync::Arc<Notify> {
        match self.wake.lock() {
            Ok(mut wake) => wake.entry(hardware_id.to_string()).or_default().clone(),
            Err(_) => std::sync::Arc::new(Notify::new()),
        }
    }

    /// Waits until `hardware_id` should be checked again: [`CHECK_EVERY`],
    /// or sooner after a failure (but not before [`RECHECK_AFTER_FAILURE`]).
    pub async fn next_check(&self, hardware_id: &str) {
        let waker = self.waker(hardware_id);
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = async {
                tokio::time::sleep(RECHECK_AFTER_FAILURE).await;
                waker.notified().await;
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(online: bool, paired: bool) -> Device {
        Device {
            hardware_id: "VNS-1".into(),
            model: "S5 Plus".into(),
            is_paired: paired,
            online,
        }
    }

    #[test]
    fn offline_since_is_kept_across_checks_and_cleared_when_back() {
        let health = SpeakerHealth::default();
        health.retain(&["VNS-1".to_string()]);
        assert_eq!(health.get("VNS-1").and_then(|s| s.online), None);
        health.checked(&device(false, true));
        let since = health.get("VNS-1").and_then(|s| s.down_since_ms);
        assert!(since.is_some());
        assert_eq!(
            health.get("VNS-1").and_then(|s| s.trouble()),
            Some("offline")
        );
        health.checked(&device(false, true));
        assert_eq!(health.get("VNS-1").and_then(|s| s.down_since_ms), since);
        health.checked(&device(true, true));
        let state = health.get("VNS-1").expect("state");
        assert_eq!(state.down_since_ms, None);
        assert!(state.is_up());
        assert_eq!(state.trouble(), None);
    }

    #[test]
    fn not_paired_is_named_before_offline() {
        let health = SpeakerHealth::default();
        health.checked(&device(false, false));
        assert_eq!(
            health.get("VNS-1").and_then(|s| s.trouble()),
            Some("not paired")
        );
    }

    #[test]
    fn an_accepted_notify_marks_a_down_speaker_up() {
        let health = SpeakerHealth::default();
        let mut changes = health.subscribe();
        health.checked(&device(false, true));
        health.sent("VNS-1");
        let state = health.get("VNS-1").expect("state");
        assert!(state.is_up());
        assert!(state.last_sent_ms.is_some());
        assert_eq!(changes.try_recv().ok().and_then(|s| s.online), Some(false));
        assert_eq!(changes.try_recv().ok().and_then(|s| s.online), Some(true));
    }

    #[test]
    fn retain_drops_unrouted_speakers() {
        let health = SpeakerHealth::default();
        health.retain(&["A".to_string(), "B".to_string()]);
        health.retain(&["B".to_string()]);
        let ids: Vec<String> = health.all().into_iter().map(|s| s.hardware_id).collect();
        assert_eq!(ids, ["B"]);
    }
}
