//! Sinks: where logged payments go (the speaker, MQTT, an HTTP endpoint).
//!
//! A sink only says how to deliver one entry and whether a failure is worth
//! retrying ([`Sink`]). [`run_sink`] does the rest, the same for every sink:
//! reads the log from the sink's own cursor in order, skips what is too old
//! for it (expired, kept), retries with capped exponential backoff and full
//! jitter (or the server's `Retry-After`), dead-letters permanent failures,
//! and records every outcome in the log so a restart resumes where it was.

pub mod event;
pub mod http;
pub mod mqtt;
pub mod speaker;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::log::{EventLog, LogEntry, LogError, Settlement};
use crate::model::now_ms;

pub use crate::retry::{RetryPolicy, parse_retry_after, retry_after};

/// Why one delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again (connect error, timeout, 408, 429, 5xx).
    #[error("{reason}")]
    Retriable {
        reason: String,
        /// What the server asked for (`Retry-After`), if anything.
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again (other 4xx): dead-lettered.
    #[error("{reason}")]
    Permanent { reason: String },
    /// Cannot be delivered now and is not worth waiting for (a speaker that
    /// is not paired): settled as expired at once, kept, and reported.
    #[error("{reason}")]
    Expire { reason: String },
}

impl SinkError {
    pub fn retriable(reason: impl Into<String>) -> Self {
        SinkError::Retriable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        SinkError::Permanent {
            reason: reason.into(),
        }
    }
}

/// One destination for logged payments.
pub trait Sink: Send + Sync + 'static {
    /// Unique among sinks; names the sink's cursor in the log.
    fn name(&self) -> &str;

    /// An entry older than this when its turn comes is expired for this sink
    /// instead of delivered (a speaker must not announce an hour-old payment).
    fn max_age(&self) -> Option<Duration> {
        None
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Delivers one entry. Called again with the same entry after a crash or
    /// a retriable error, so it must be idempotent at the receiver (e.g. a
    /// request id derived from the dedupe key).
    fn deliver(&self, entry: &LogEntry) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once `entry` is settled, however it ended (the speaker sink
    /// reports expired and refused announcements from here).
    fn settled(&self, _entry: &LogEntry, _settlement: &Settlement) {}

    /// What the sink is known to be waiting for (a speaker that is
    /// offline), for the reason of an entry that expires before its own
    /// first attempt: it waited behind others for the same cause.
    fn why_waiting(&self) -> Option<String> {
        None
    }

    /// Whether `entry` is for this sink at all. A sink that takes only some
    /// entries (a speaker lane takes the payments routed to its speaker)
    /// has the others passed: its cursor moves over them, nothing is
    /// recorded, and they cost no delivery.
    fn wants(&self, _entry: &LogEntry) -> bool {
        true
    }
}

/// Counters since start, for metrics and the status page.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub expired: AtomicU64,
    pub dead: AtomicU64,
    /// When the current run of failed attempts began (Unix ms, 0 = none):
    /// `/readyz` reports a sink failing for longer than its threshold.
    pub failing_since_ms: AtomicI64,
    /// The current run's last failure, for the status page.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl SinkStats {
    /// Notes a failed attempt (the first of a run starts the clock).
    pub fn failed(&self, reason: &str) {
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }

    /// Notes that the destination works again.
    pub fn recovered(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = None;
        }
    }

    /// Since when (Unix ms) every attempt has failed, if they do.
    pub fn failing_since(&self) -> Option<i64> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        (since > 0).then_some(since)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// Entries read from the log per batch; keeps memory flat with a large backlog.
const READ_BATCH: usize = 64;

/// The names of every configured sink, in config order: one speaker lane
/// per routed speaker, the MQTT sinks, the forwards.
pub fn sink_names(config: &crate::config::Config) -> Vec<String> {
    let lanes: Vec<String> = match &config.speaker {
        Some(_) => speaker::routed_speakers(&config.routes)
            .iter()
            .map(|hw| speaker::lane_name(hw))
            .collect(),
        None => Vec::new(),
    };
    let mqtt = config.mqtt.iter().map(|m| m.sink_name());
    lanes
        .into_iter()
        .chain(mqtt)
        .chain(config.forwards.iter().map(|f| f.name.clone()))
        .collect()
}

/// How a worker stops.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Cancelled when the gateway stops: no new delivery starts.
    pub stop: CancellationToken,
    /// How long an in-flight delivery may still run after `stop`.
    pub grace: Duration,
}

/// Delivers every entry of `log` to `sink`, in log order, until shut down.
pub async fn run_sink<S: Sink>(
    sink: Arc<S>,
    log: Arc<dyn EventLog>,
    stats: Arc<SinkStats>,
    shutdown: Shutdown,
) {
    let name = sink.name().to_string();
    let mut changes = log.watch();
    tracing::info!(sink = %name, "sink started");
    loop {
        if shutdown.stop.is_cancelled() {
            break;
        }
        // Mark the current log end as seen before reading, so a commit that
        // lands after the read still wakes the wait below.
        changes.borrow_and_update();
        // Requeued dead letters first, then the log from the cursor.
        let batch = log.next_batch(&name, READ_BATCH).await;
        let (batch, requeued) = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(sink = %name, %error, "cannot read the event log; retrying");
                if pause(&shutdown.stop, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
        };
        // Requeued dead letters are delivered whatever `wants` says: an
        // operator asked for them. Entries not for this sink are passed in
        // runs, each run recorded before the next delivery (the store moves
        // the cursor only over entries settled or passed).
        let read = batch.len();
        let mut passed: Option<u64> = None;
        for entry in batch {
            if !requeued && !sink.wants(&entry) {
                passed = Some(entry.seq);
                continue;
            }
            if let Some(through) = passed.take()
                && !pass(&*log, &name, through, &shutdown.stop).await
            {
                break;
            }
            if !deliver_one(sink.as_ref(), &*log, &stats, &shutdown, &entry).await {
                tracing::info!(sink = %name, "sink stopped");
                return;
            }
        }
        if let Some(through) = passed {
            pass(&*log, &name, through, &shutdown.stop).await;
        }
        // Nothing read, or a short batch that reached the log's end: wait
        // for the next commit or requeue (at once if one came since the
        // read) instead of reading again for nothing.
        if read == 0 || (!requeued && read < READ_BATCH) {
            tokio::select! {
                _ = shutdown.stop.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
    }
    tracing::info!(sink = %name, "sink stopped");
}

/// Moves `sink`'s cursor past entries that are not for it; a storage error
/// is retried like a settlement. False if the gateway is stopping.
async fn pass(log: &dyn EventLog, sink: &str, through: u64, stop: &CancellationToken) -> bool {
    loop {
        match log.pass(sink, through).await {
            Ok(()) => return true,
            Err(LogError::Closed) => return false,
            Err(error) => {
                tracing::error!(sink, through, %error, "cannot move the cursor; retrying");
                if pause(stop, Duration::from_secs(1)).await {
                    return false;
                }
            }
        }
    }
}

/// Counts `n` outcomes in `sink_outcomes_total`.
pub(crate) fn count(sink: &str, outcome: &str, n: u64) {
    crate::metrics::metrics()
        .sink_outcomes
        .with_label_values(&[sink, outcome])
        .inc_by(n);
}

/// Sleeps `delay` unless stopped first; true if stopped.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
    }
}

/// How old an entry is for TTL purposes: since the bank booked it when the
/// plugin says (and that is not in the future), else since it was logged.
/// The bank's time wins even when it is later than the logging time: that
/// happens when this machine's clock was behind (a Raspberry Pi that booted
/// without a real-time clock) and NTP has since corrected it, and the
/// logging time would then make a payment from a minute ago hours old.
pub fn age_ms(entry: &LogEntry, now: i64) -> i64 {
    let born = entry
        .change
        .occurred_at_ms
        .filter(|&at| at <= now)
        .unwrap_or(entry.appended_at_ms);
    (now - born).max(0)
}

/// Delivers one entry, retrying as the sink's policy says, and settles it.
/// Returns false if the gateway is stopping and the entry was left pending.
async fn deliver_one<S: Sink>(
    sink: &S,
    log: &dyn EventLog,
    stats: &SinkStats,
    shutdown: &Shutdown,
    entry: &LogEntry,
) -> bool {
    let name = sink.name();
    let policy = sink.retry_policy();
    let mut attempt: u32 = 0;
    let mut last_error: Option<String> = None;
    let settlement = loop {
        let now = now_ms();
        let remaining = sink
            .max_age()
            .map(|max| max.as_millis() as i64 - age_ms(entry, now));
        if remaining.is_some_and(|r| r <= 0) {
            let max = sink.max_age().unwrap_or_default();
            let mut reason = format!("older than this sink's max age ({}s)", max.as_secs());
            if let Some(error) = last_error.clone().or_else(|| sink.why_waiting()) {
                reason.push_str(&format!("; last error: {error}"));
            }
            tracing::warn!(sink = %name, seq = entry.seq, %reason, "entry expired, not delivered");
            stats.expired.fetch_add(1, Ordering::Relaxed);
            count(name, "expired", 1);
            break Settlement::Expired { reason };
        }
        if shutdown.stop.is_cancelled() {
            return false;
        }
        let result = tokio::select! {
            result = sink.deliver(entry) => result,
            _ = async {
                shutdown.stop.cancelled().await;
                tokio::time::sleep(shutdown.grace).await;
            } => {
                tracing::warn!(sink = %name, seq = entry.seq, "delivery abandoned at shutdown; it is retried on the next start");
                return false;
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(sink = %name, seq = entry.seq, transaction_id = %entry.change.transaction_id, "delivered");
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.recovered();
                count(name, "delivered", 1);
                break Settlement::Delivered;
            }
            Err(SinkError::Expire { reason }) => {
                tracing::warn!(sink = %name, seq = entry.seq, %reason, "entry expired, not delivered");
                stats.expired.fetch_add(1, Ordering::Relaxed);
                count(name, "expired", 1);
                break Settlement::Expired { reason };
            }
            Err(SinkError::Permanent { reason }) => {
                tracing::error!(sink = %name, seq = entry.seq, %reason, "delivery refused; kept as a dead letter");
                stats.dead.fetch_add(1, Ordering::Relaxed);
                count(name, "dead", 1);
                break Settlement::Dead { reason };
            }
            Err(SinkError::Retriable {
                reason,
                retry_after,
            }) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                stats.failed(&reason);
                count(name, "retry", 1);
                let mut delay = policy.delay(attempt, retry_after);
                attempt = attempt.saturating_add(1);
                if let Some(r) = remaining {
                    // No point waiting past the entry's expiry.
                    delay = delay.min(Duration::from_millis(r as u64));
                }
                tracing::warn!(sink = %name, seq = entry.seq, %reason, attempt, delay_ms = delay.as_millis() as u64, "delivery failed; will retry");
                last_error = Some(reason);
                if pause(&shutdown.stop, delay).await {
                    return false;
                }
            }
        }
    };
    let settled = settle(log, name, entry, &settlement, &shutdown.stop).await;
    if settled {
        sink.settled(entry, &settlement);
    }
    settled
}

/// Records the outcome; a storage error is retried (the entry would otherwise
/// be sent again after a restart, which receivers tolerate but we avoid).
async fn settle(
    log: &dyn EventLog,
    sink: &str,
    entry: &LogEntry,
    settlement: &Settlement,
    stop: &CancellationToken,
) -> bool {
    loop {
        match log.settle(sink, vec![entry.seq], settlement.clone()).await {
            Ok(()) => return true,
            Err(LogError::Closed) => return false,
            Err(error) => {
                tracing::error!(sink, seq = entry.seq, %error, "cannot record delivery outcome; retrying");
                if pause(stop, Duration::from_secs(1)).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
