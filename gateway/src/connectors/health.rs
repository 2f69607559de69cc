//! How each connector's calls are going: what `/readyz`, `/api/status` and
//! the status page report, and the plugin-call metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::{CallError, Rejection};
use crate::metrics::metrics;
use crate::model::now_ms;

/// Counters of one loaded connector (a reload starts a fresh one).
#[derive(Debug, Default)]
pub struct ConnectorHealth {
    calls: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    last_ok_ms: AtomicI64,
    last_failure: Mutex<Option<(i64, String)>>,
}

/// A snapshot for the status API.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub calls: u64,
    pub failures: u64,
    pub consecutive_failures: u64,
    pub last_ok_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    pub last_failure: Option<String>,
}

impl CallError {
    /// The `result` label of `plugin_calls_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Rejected(Rejection::BadRequest(_)) => "bad_request",
            CallError::Rejected(Rejection::Unauthorized(_)) => "unauthorized",
            CallError::Rejected(Rejection::Transient(_)) => "transient",
            CallError::Rejected(Rejection::Fatal(_)) => "fatal",
            CallError::CpuBudget(_) => "cpu_budget",
            CallError::Memory(_) => "memory",
            CallError::MemoryBudget(_) => "memory_budget",
            CallError::TooLarge(_) => "too_large",
            CallError::Timeout(_) => "timeout",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
            CallError::TooManyChanges(..) => "too_many_changes",
            CallError::Invalid(_) => "invalid",
            CallError::NotExported(_) => "not_exported",
        }
    }

    /// True when the connector (not the sender) is at fault: a malformed or
    /// unsigned webhook says nothing about the connector's health, nor does
    /// a memory budget other calls hold.
    pub fn is_connector_fault(&self) -> bool {
        !matches!(
            self,
            CallError::Rejected(Rejection::BadRequest(_) | Rejection::Unauthorized(_))
                | CallError::MemoryBudget(_)
        )
    }
}

impl ConnectorHealth {
    /// Counts one call of `kind` (`webhook` or `poll`) that began at `started`.
    pub fn record<T>(
        &self,
        connector: &str,
        kind: &str,
        started: Instant,
        result: &Result<T, CallError>,
    ) {
        let m = metrics();
        m.plugin_call_seconds
            .with_label_values(&[connector, kind])
            .observe(started.elapsed().as_secs_f64());
        let label = result.as_ref().map_or_else(CallError::label, |_| "ok");
        m.plugin_calls
            .with_label_values(&[connector, kind, label])
            .inc();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let consecutive = match result {
            Err(error) if error.is_connector_fault() => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_failure.lock() {
                    *last = Some((now_ms(), error.to_string()));
                }
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
            }
            _ => {
                self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
                self.consecutive_failures.store(0, Ordering::Relaxed);
                0
            }
        };
        m.connector_consecutive_failures
            .with_label_values(&[connector])
            .set(consecutive as i64);
    }

    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> HealthReport {
        let last_ok = self.last_ok_ms.load(Ordering::Relaxed);
        let last_failure = self.last_failure.lock().ok().and_then(|l| l.clone());
        HealthReport {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures(),
            last_ok_ms: (last_ok > 0).then_some(last_ok),
            last_failure_ms: last_failure.as_ref().map(|(at, _)| *at),
            last_failure: last_failure.map(|(_, reason)| reason),
        }
    }
}
