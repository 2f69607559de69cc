//! `[log]`: how long the event log keeps what, and how much disk it may use.
//! The typed form is the log's own [`LogOptions`].

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::values::scaled;
use crate::log::LogOptions;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    dedupe_retention_days: Option<Spanned<u64>>,
    keep_settled_hours: Option<Spanned<u64>>,
    max_disk_mb: Option<Spanned<u64>>,
    min_free_disk_mb: Option<Spanned<u64>>,
    cache_mb: Option<Spanned<u64>>,
}

pub(super) fn parse(loc: &Locator<'_>, lr: RawLog) -> Result<LogOptions, ConfigError> {
    let dl = LogOptions::default();
    Ok(LogOptions {
        cache_bytes: scaled(
            loc,
            lr.cache_mb,
            "log.cache_mb",
            dl.cache_bytes >> 20,
            1 << 20,
            false,
        )?,
        dedupe_retention: Duration::from_secs(scaled(
            loc,
            lr.dedupe_retention_days,
            "log.dedupe_retention_days",
            30,
            24 * 3600,
            false,
        )?),
        keep_settled: Duration::from_secs(scaled(
            loc,
            lr.keep_settled_hours,
            "log.keep_settled_hours",
            24,
            3600,
            true,
        )?),
        max_disk_bytes: scaled(loc, lr.max_disk_mb, "log.max_disk_mb", 1024, 1 << 20, false)?,
        min_free_disk_bytes: scaled(
            loc,
            lr.min_free_disk_mb,
            "log.min_free_disk_mb",
            64,
            1 << 20,
            true,
        )?,
        segment_bytes: dl.segment_bytes,
        gather: dl.gather,
    })
}
