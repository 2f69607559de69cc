//! Confirmation beside the lane: after `notify` answered `SENT`, ask
//! `check_notify` (by `requestId` alone, as SePay's "chi tiết trạng thái
//! thông báo" page documents) until it answers `SUCCESS` or `FAILED`, and
//! publish the outcome:
//!
//! - `SUCCESS` → `played`;
//! - `FAILED` → one new notify under a derived `requestId`
//!   ([`super::retry_request_id`]) while the payment is still fresh, then
//!   confirmed the same way: `played`, or `failed` with SePay's message;
//!   past `max_age` no new notify (an hour-late announcement confuses the
//!   cashier) and the result is `failed`;
//! - still `PENDING` after the last poll, or `check_notify` failing →
//!   `unconfirmed`.
//!
//! Confirmations are not durable: the payment was settled when `notify`
//! took it, so a restart loses only the confirmation report, never the
//! announcement.

use std::time::Duration;

use super::lane::{Announced, SpeakerService};
use super::retry_request_id;
use crate::model::now_ms;
use crate::speaker_api::types::NotifyState;

/// When `check_notify` is asked. SePay says nothing of how long a speaker
/// takes; the simulator plays for about 2 s, a real S5 about as long plus
/// its 4G delay. Assumed, and easy to change here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmPolicy {
    /// Before the first poll.
    pub first: Duration,
    /// Between polls.
    pub every: Duration,
    /// Polls before giving up as `unconfirmed`.
    pub polls: u32,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        ConfirmPolicy {
            first: Duration::from_millis(1500),
            every: Duration::from_secs(1),
            polls: 12,
        }
    }
}

/// An announcement waiting for its confirmation.
#[derive(Debug, Clone)]
pub struct Pending {
    announced: Announced,
}

impl Pending {
    pub fn new(announced: Announced) -> Self {
        Pending { announced }
    }
}

/// How one `requestId` ended, as far as `check_notify` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Played,
    Failed(String),
    Unconfirmed(String),
}

/// Polls `request_id` until it is settled at SePay or the policy runs out.
async fn poll(service: &SpeakerService, request_id: &str) -> Outcome {
    let policy = service.confirm;
    let mut last = String::from("still PENDING");
    for i in 0..policy.polls {
        tokio::time::sleep(if i == 0 { policy.first } else { policy.every }).await;
        match service.client.check_notify(request_id).await {
            Ok(check) => match check.status {
                NotifyState::Success => return Outcome::Played,
                NotifyState::Failed => {
                    return Outcome::Failed(if check.message.is_empty() {
                        "FAILED".to_string()
                    } else {
                        check.message
                    });
                }
                NotifyState::Pending => last = "still PENDING".to_string(),
                NotifyState::Other(status) => last = format!("status {status}"),
            },
            // Worth asking again: the API may be briefly down.
            Err(error) if error.is_retriable() => last = format!("check_notify failed: {error}"),
            Err(error) => return Outcome::Unconfirmed(format!("check_notify failed: {error}")),
        }
    }
    let waited = policy.first + policy.every * policy.polls.saturating_sub(1);
    Outcome::Unconfirmed(format!("{last} after {} s", waited.as_secs()))
}

/// Confirms one announcement and publishes how it ended.
pub async fn confirm(service: &SpeakerService, pending: Pending) {
    let a = &pending.announced;
    let outcome = poll(service, &a.request_id).await;
    let (request_id, outcome) = match outcome {
        Outcome::Failed(message) if now_ms() < a.fresh_until_ms => {
            let again = retry_request_id(&a.request_id);
            tracing::warn!(hardware_id = %a.hardware_id, request_id = %a.request_id, %message, "speaker could not play it; one new notify");
            let outcome = match service
                .client
                .notify(&a.hardware_id, a.amount, &again)
                .await
            {
                Ok(_) => match poll(service, &again).await {
                    Outcome::Failed(second) => {
                        Outcome::Failed(format!("{message}; again on a new notify: {second}"))
                    }
                    other => other,
                },
                Err(error) => Outcome::Failed(format!("{message}; the new notify failed: {error}")),
            };
            (again, outcome)
        }
        Outcome::Failed(message) => (
            a.request_id.clone(),
            Outcome::Failed(format!("{message}; too old for a new notify")),
        ),
        other => (a.request_id.clone(), other),
    };
    let (result, detail) = match outcome {
        Outcome::Played => ("played", None),
        Outcome::Failed(why) => ("failed", Some(why)),
        Outcome::Unconfirmed(why) => ("unconfirmed", Some(why)),
    };
    tracing::info!(hardware_id = %a.hardware_id, seq = a.seq, %request_id, result, detail = detail.as_deref().unwrap_or(""), "announcement confirmed");
    service.report(a.json(&request_id, result, detail));
}
