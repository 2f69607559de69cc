//! Readers for one located value: a number that must be positive, a size
//! or duration in a unit, an address, a string with `${ENV}` expanded, a
//! retry policy. Each error names the value's line and key.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::ConfigError;
use super::env;
use super::locate::Locator;
use crate::retry::RetryPolicy;

/// A `host:port` socket address at `key`; 127.0.0.1:`default_port` if absent.
pub(super) fn address(
    loc: &Locator<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    default_port: u16,
) -> Result<SocketAddr, ConfigError> {
    let default = SocketAddr::from(([127, 0, 0, 1], default_port));
    match value {
        Some(v) => v.get_ref().parse::<SocketAddr>().map_err(|e| {
            let message = format!("`{}` is not an address like {default} ({e})", v.get_ref());
            loc.at(v.span(), key, message)
        }),
        None => Ok(default),
    }
}

/// `value` with `${ENV}` expanded; an unset variable is located at `key`.
pub(super) fn expand_env(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    env::expand(value.get_ref(), loc.env).map_err(|e| loc.at(value.span(), key, e))
}

/// A table with `${ENV}` expanded in every string; an unset variable is
/// located at the table, named `key`.
pub(super) fn expand_table(
    loc: &Locator<'_>,
    table: Spanned<toml::Table>,
    key: &str,
) -> Result<toml::Table, ConfigError> {
    let span = table.span();
    env::expand_table(table.into_inner(), loc.env).map_err(|e| loc.at(span, key, e))
}

/// A positive number of milliseconds at `key`, `default` if absent.
pub(super) fn millis(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    positive(loc, value, key, default.as_millis() as u64).map(Duration::from_millis)
}

/// A positive number of seconds at `key`, `default` if absent.
pub(super) fn secs(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: u64,
) -> Result<Duration, ConfigError> {
    positive(loc, value, key, default).map(Duration::from_secs)
}

/// `<prefix>.retry_initial_ms` and `<prefix>.retry_max_ms`, each
/// `default`'s if absent; `Retry-After` is capped as by default.
pub(super) fn retry(
    loc: &Locator<'_>,
    prefix: &str,
    initial: Option<Spanned<u64>>,
    max: Option<Spanned<u64>>,
    default: (Duration, Duration),
) -> Result<RetryPolicy, ConfigError> {
    let (default_initial, default_max) = default;
    Ok(RetryPolicy {
        initial: millis(
            loc,
            initial,
            &format!("{prefix}.retry_initial_ms"),
            default_initial,
        )?,
        max: millis(loc, max, &format!("{prefix}.retry_max_ms"), default_max)?,
        max_retry_after: RetryPolicy::default().max_retry_after,
    })
}

/// `value` (or `default`) in `unit`s of the base unit: MiB to bytes, days
/// to seconds. Too large to count in the base unit is an error at `key`, not
/// a wrap to a small or zero limit. `zero_ok`: 0 is allowed.
pub(super) fn scaled(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: u64,
    unit: u64,
    zero_ok: bool,
) -> Result<u64, ConfigError> {
    let span = value.as_ref().map_or(0..0, Spanned::span);
    let n = if zero_ok {
        value.map_or(default, Spanned::into_inner)
    } else {
        positive(loc, value, key, default)?
    };
    n.checked_mul(unit)
        .ok_or_else(|| loc.at(span, key, format!("{n} is too large")))
}

/// A positive size in `unit`s (1 << 20 for MiB), as bytes this machine can
/// address.
pub(super) fn memory_size(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: u64,
    unit: u64,
) -> Result<usize, ConfigError> {
    let span = value.as_ref().map_or(0..0, Spanned::span);
    let bytes = scaled(loc, value, key, default, unit, false)?;
    usize::try_from(bytes).map_err(|_| loc.at(span, key, "too large for this machine"))
}

/// A number at `key` that must be greater than 0; `default` if absent.
pub(super) fn positive(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        Some(v) if *v.get_ref() == 0 => Err(loc.at(v.span(), key, "must be greater than 0")),
        Some(v) => Ok(v.into_inner()),
        None => Ok(default),
    }
}
