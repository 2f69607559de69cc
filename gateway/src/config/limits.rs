//! `[limits]`: the sandbox every plugin call runs in.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::values::{memory_size, positive, scaled};

/// Sandbox limits applied to every plugin call.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginLimits {
    /// Linear memory a plugin instance may grow to.
    pub memory_bytes: usize,
    /// CPU time one call may use (wall time in host calls excluded).
    pub cpu_budget: Duration,
    /// Wall-clock cap on one call, host calls included.
    pub call_timeout: Duration,
    /// Balance changes one call may return.
    pub max_changes_per_call: usize,
    /// Guest stderr kept per call (panic messages).
    pub max_stderr_bytes: usize,
    /// Linear memory all plugin calls in flight may hold together.
    pub total_memory_bytes: usize,
    /// What one call's result may make the gateway allocate: its strings,
    /// lists and reply together.
    pub max_result_bytes: usize,
    /// Plugin KV one connector may keep (keys and values).
    pub kv_max_bytes: u64,
    /// Plugin KV all connectors may keep together, apart from the event
    /// log's `max_disk_mb`.
    pub kv_total_bytes: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 32 << 20,
            cpu_budget: Duration::from_millis(200),
            call_timeout: Duration::from_secs(30),
            max_changes_per_call: 100,
            max_stderr_bytes: 16 << 10,
            total_memory_bytes: 128 << 20,
            max_result_bytes: 1 << 20,
            kv_max_bytes: 1 << 20,
            kv_total_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    memory_mb: Option<Spanned<u64>>,
    cpu_budget_ms: Option<Spanned<u64>>,
    call_timeout_ms: Option<Spanned<u64>>,
    max_changes_per_call: Option<Spanned<u64>>,
    total_memory_mb: Option<Spanned<u64>>,
    max_result_kb: Option<Spanned<u64>>,
    kv_max_kb: Option<Spanned<u64>>,
    kv_total_mb: Option<Spanned<u64>>,
}

pub(super) fn parse(loc: &Locator<'_>, l: RawLimits) -> Result<PluginLimits, ConfigError> {
    let d = PluginLimits::default();
    Ok(PluginLimits {
        memory_bytes: memory_size(loc, l.memory_mb, "limits.memory_mb", 32, 1 << 20)?,
        cpu_budget: Duration::from_millis(positive(
            loc,
            l.cpu_budget_ms,
            "limits.cpu_budget_ms",
            200,
        )?),
        call_timeout: Duration::from_millis(positive(
            loc,
            l.call_timeout_ms,
            "limits.call_timeout_ms",
            30_000,
        )?),
        max_changes_per_call: positive(
            loc,
            l.max_changes_per_call,
            "limits.max_changes_per_call",
            100,
        )? as usize,
        max_stderr_bytes: d.max_stderr_bytes,
        total_memory_bytes: memory_size(
            loc,
            l.total_memory_mb,
            "limits.total_memory_mb",
            d.total_memory_bytes as u64 >> 20,
            1 << 20,
        )?,
        max_result_bytes: memory_size(
            loc,
            l.max_result_kb,
            "limits.max_result_kb",
            d.max_result_bytes as u64 >> 10,
            1 << 10,
        )?,
        kv_max_bytes: scaled(
            loc,
            l.kv_max_kb,
            "limits.kv_max_kb",
            d.kv_max_bytes >> 10,
            1 << 10,
            false,
        )?,
        kv_total_bytes: scaled(
            loc,
            l.kv_total_mb,
            "limits.kv_total_mb",
            d.kv_total_bytes >> 20,
            1 << 20,
            false,
        )?,
    })
}
