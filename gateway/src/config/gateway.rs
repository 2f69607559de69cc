//! `[gateway]`: what this box is called, where it listens, where it keeps
//! its state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::name::TopicId;
use super::values::{address, positive};

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Names this box in logs and MQTT topics.
    pub id: String,
    /// Where webhooks arrive (`POST /hooks/<connector>`).
    pub listen: SocketAddr,
    /// Durable state: the event log, plugin KV, the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// Largest webhook body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// The admin API (`queue` commands while running); loopback by default.
    pub admin_listen: SocketAddr,
    /// How long in-flight deliveries may finish after a stop signal.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    id: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    admin_listen: Option<Spanned<String>>,
    shutdown_grace_secs: Option<Spanned<u64>>,
}

pub(super) fn parse(
    loc: &Locator<'_>,
    g: RawGateway,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<GatewayConfig, ConfigError> {
    let id = match &g.id {
        Some(id) => TopicId::at(
            loc,
            id,
            "gateway.id",
            "use 1-64 letters, digits, `-` or `_` (it becomes an MQTT topic level)",
        )?
        .into(),
        None => "gateway".to_string(),
    };
    let listen = address(loc, g.listen.as_ref(), "gateway.listen", 8080)?;
    let admin_listen = address(loc, g.admin_listen.as_ref(), "gateway.admin_listen", 8081)?;
    let shutdown_grace = Duration::from_secs(g.shutdown_grace_secs.map_or(10, Spanned::into_inner));
    let data_dir = resolve(g.data_dir.as_ref().map_or("data", |d| d.get_ref()));
    let max_body_bytes =
        positive(loc, g.max_body_bytes, "gateway.max_body_bytes", 64 << 10)? as usize;
    Ok(GatewayConfig {
        id,
        listen,
        data_dir,
        max_body_bytes,
        admin_listen,
        shutdown_grace,
    })
}
