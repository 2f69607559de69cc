//! `[admin]`: who may use the admin API, and when `/readyz` says unready.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::locate::Locator;
use super::values::positive;
use super::{ConfigError, env};
use crate::secret::Secret;

/// `[admin]`: who may use the admin API, and when `/readyz` says unready.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// A bearer token the admin API asks for (`/healthz` and `/readyz` excepted).
    pub token: Option<Secret>,
    /// A sink is stalled when its oldest pending payment, or its current run
    /// of failed attempts, is older than this.
    pub stall_after: Duration,
    /// A connector is failing after this many failed calls in a row.
    pub connector_failures: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            stall_after: Duration::from_secs(120),
            connector_failures: 5,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    token: Option<Spanned<String>>,
    stall_after_secs: Option<Spanned<u64>>,
    connector_failures: Option<Spanned<u64>>,
}

pub(super) fn parse(loc: &Locator<'_>, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let d = AdminConfig::default();
    let token = match raw.token {
        Some(t) => {
            // Set even for read-only commands: `queue` sends it.
            let token = env::expand(t.get_ref(), env::from_env)
                .map_err(|e| loc.at(t.span(), "admin.token", e))?;
            if token.len() < 16 {
                return Err(loc.at(
                    t.span(),
                    "admin.token",
                    "use at least 16 characters (e.g. from `openssl rand -hex 16`)",
                ));
            }
            Some(Secret::new(token))
        }
        None => None,
    };
    Ok(AdminConfig {
        token,
        stall_after: Duration::from_secs(positive(
            loc,
            raw.stall_after_secs,
            "admin.stall_after_secs",
            d.stall_after.as_secs(),
        )?),
        connector_failures: positive(
            loc,
            raw.connector_failures,
            "admin.connector_failures",
            d.connector_failures,
        )?,
    })
}
