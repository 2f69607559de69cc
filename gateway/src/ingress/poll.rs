//! Pollers: one task per polling connector calls its plugin's `poll` on the
//! connector's interval (or when the plugin asked to be called again), stores
//! what it returns, then applies the call's KV writes (its cursor).
//!
//! Only one poll of a connector runs at a time, so a poller never races
//! itself for its cursor. A failed poll, or changes the log could not store,
//! leave the cursor where it was: the next poll fetches the same payments
//! again, after a backoff that grows with consecutive failures.
//!
//! A polled change older than the dedupe window ([`super::StaleRule`]) is
//! dropped with a warning and counted, and the rest of the batch is stored
//! and the cursor moved on: a stale item must not hold the poller back
//! forever, and fetching it again would only drop it again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::connectors::{CallError, Plugin, Rejection};
use crate::log::{AppendExpected, EventLog};
use crate::model;
use crate::sinks::RetryPolicy;

/// A plugin asking to be polled again sooner than this gets this: a plugin
/// returning `next-poll-ms: 0` must not spin a core.
const MIN_NEXT_POLL: Duration = Duration::from_millis(50);
/// …and one asking for longer than a day gets a day.
const MAX_NEXT_POLL: Duration = Duration::from_secs(24 * 3600);
/// Consecutive failures back off up to this long (never less than the interval).
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(600);

/// Polls `plugin` until `stop` is cancelled; the first poll happens at once,
/// so a gateway that was off backfills as soon as it is up. A poll in
/// progress when `stop` comes finishes and its changes are stored.
pub async fn run_poller(
    plugin: Arc<Plugin>,
    log: Arc<dyn EventLog>,
    stale: super::StaleRule,
    stop: CancellationToken,
) {
    let name = plugin.name().to_string();
    let interval = plugin.poll_interval();
    let backoff = RetryPolicy {
        initial: Duration::from_secs(1),
        max: MAX_FAILURE_BACKOFF.max(interval),
        max_retry_after: MAX_FAILURE_BACKOFF,
    };
    tracing::info!(connector = %name, interval_secs = interval.as_secs(), "poller started");
    let mut failures: u32 = 0;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = match poll_once(&plugin, &*log, stale).await {
            Ok(next) => {
                failures = 0;
                next.map_or(interval, |n| n.clamp(MIN_NEXT_POLL, MAX_NEXT_POLL))
            }
            Err(()) => {
                failures = failures.saturating_add(1);
                // Errors never make a poller call sooner than its interval.
                interval.max(backoff.delay(failures - 1, None))
            }
        };
        tracing::debug!(connector = %name, next_in_ms = wait.as_millis() as u64, "next poll");
    }
    tracing::info!(connector = %name, "poller stopped");
}

/// One poll: call, store, commit the cursor. `Ok` carries the delay the
/// plugin asked for; `Err` means the poll failed (already logged).
async fn poll_once(
    plugin: &Plugin,
    log: &dyn EventLog,
    stale: super::StaleRule,
) -> Result<Option<Duration>, ()> {
    let name = plugin.name();
    let result = match plugin.poll().await {
        Ok(result) => result,
        Err(error) => {
            log_failure(name, &error);
            return Err(());
        }
    };
    let found = result.changes.len();
    let (changes, _) = stale.sift(name, result.changes, model::now_ms());
    let kv = plugin.kv_batch(result.kv_writes);
    if let Err(error) = super::store(log, name, changes, kv, AppendExpected::default()).await {
        tracing::error!(
            connector = %name, %error, found,
            "could not store polled changes; the next poll fetches them again"
        );
        return Err(());
    }
    tracing::debug!(connector = %name, found, "poll done");
    Ok(result.next_poll)
}

fn log_failure(name: &str, error: &CallError) {
    match error {
        CallError::Rejected(Rejection::Transient(reason)) => {
            tracing::warn!(connector = %name, %reason, "poll failed; will retry")
        }
        _ => tracing::error!(connector = %name, %error, "poll failed; will retry"),
    }
}
