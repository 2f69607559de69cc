//! Configuration: TOML → raw serde structs (unknown keys are errors) →
//! [`Config`], validated, with paths resolved and `${ENV}` expanded.
//!
//! Every error names the file, the line and the key, because the person
//! reading it is a shop owner with a text editor.
//!
//! One file per section, each with its raw (serde) form, its typed form and
//! the parser between them: `gateway`, `limits`, `log`, `connectors`,
//! `forward`, `speaker` (and its `simulator`), `mqtt`, `admin`, `plugins`
//! (and [`trusted_key`]). Beside them: `locate` (byte spans to
//! `file:line:column`), `values` (one located value: a duration, a size, an
//! address), `name` (names and ids, checked by type), `env` (`${NAME}`).
//!
//! The config sits below everything it configures: it names their settings
//! and imports none of them (the event log's [`LogOptions`] excepted, which
//! the log owns).

mod admin;
mod connectors;
mod env;
mod forward;
mod gateway;
mod limits;
mod locate;
mod log;
mod mqtt;
mod name;
mod plugins;
mod simulator;
mod speaker;
pub mod trusted_key;
mod values;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::log::LogOptions;
use locate::Locator;

pub use crate::secret::Secret;
pub use admin::AdminConfig;
pub use connectors::{ALLOW_UNSIGNED, ConnectorConfig};
pub use forward::{ForwardConfig, redacted_url};
pub use gateway::GatewayConfig;
pub use limits::PluginLimits;
pub use mqtt::{
    ClientIdentity, Endpoint, MqttBroker, MqttConfig, MqttTls, MqttUser, RelayConfig,
    SubscriptionConfig, UNNAMED_SINK as UNNAMED_MQTT_SINK,
};
pub use plugins::{ALLOW_UNSIGNED_WORDS, PluginTrustConfig};
pub use simulator::{ErrorStyle, Faults, SIMULATOR_PATH, SimDevice, SimulatorConfig};
pub use speaker::{DEFAULT_BASE_URL, RouteConfig, SpeakerApi, SpeakerConfig};
pub use trusted_key::TrustedKey;

/// A config problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path, e.g. `connector[0].plugin`.
        key: String,
        message: String,
    },
}

/// The whole gateway configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from; relative paths inside resolve against its folder.
    pub source: PathBuf,
    pub gateway: GatewayConfig,
    pub limits: PluginLimits,
    pub log: LogOptions,
    pub connectors: Vec<ConnectorConfig>,
    pub forwards: Vec<ForwardConfig>,
    /// The speaker sink; None when `[speaker]` is absent.
    pub speaker: Option<SpeakerConfig>,
    pub routes: Vec<RouteConfig>,
    /// The MQTT sinks (`[[mqtt]]`, or the single `[mqtt]` of earlier versions).
    pub mqtt: Vec<MqttConfig>,
    pub admin: AdminConfig,
    /// `[plugins]`: whose plugins run.
    pub plugins: PluginTrustConfig,
}

/// The document as written: one raw section per file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: gateway::RawGateway,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    log: log::RawLog,
    #[serde(default)]
    connector: Vec<connectors::RawConnector>,
    #[serde(default)]
    forward: Vec<forward::RawForward>,
    speaker: Option<Spanned<speaker::RawSpeaker>>,
    #[serde(default)]
    route: Vec<speaker::RawRoute>,
    mqtt: Option<Spanned<mqtt::RawMqttSections>>,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    plugins: plugins::RawPlugins,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Reads and validates `path` for a command that only inspects
    /// (`queue`): a `${NAME}` that is not set stays the literal text instead
    /// of failing, since such commands never use connector, speaker,
    /// forward or MQTT secrets. `admin.token` must still be set: it is
    /// what the admin API asks for. Never run a gateway on this config.
    pub fn load_read_only(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with(path, &text, env::from_env_or_kept)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with(path, text, env::from_env)
    }

    /// Each section in turn, in the order their errors are reported.
    fn parse_with(
        path: &Path,
        text: &str,
        env: fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let loc = Locator { path, text, env };
        let raw: RawConfig = toml::from_str(text).map_err(|e| loc.parse_error(&e))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        let gateway = gateway::parse(&loc, raw.gateway, &resolve)?;
        let limits = limits::parse(&loc, raw.limits)?;
        let log = log::parse(&loc, raw.log)?;
        let plugins = plugins::parse(&loc, raw.plugins, &resolve)?;
        let mqtt = match raw.mqtt {
            Some(m) => mqtt::parse_sections(&loc, m, &gateway.id, &resolve)?,
            None => Vec::new(),
        };
        let context = connectors::Context {
            gateway_id: &gateway.id,
            listen: gateway.listen,
            mqtt: &mqtt,
            resolve: &resolve,
        };
        let connectors = connectors::parse(&loc, raw.connector, &context)?;
        let forwards = forward::parse(&loc, raw.forward)?;
        let speaker = raw.speaker.map(|s| speaker::parse(&loc, s)).transpose()?;
        let routes = speaker::parse_routes(&loc, raw.route, speaker.as_ref())?;
        let admin = admin::parse(&loc, raw.admin)?;

        Ok(Config {
            source: path.to_path_buf(),
            gateway,
            limits,
            log,
            connectors,
            forwards,
            speaker,
            routes,
            mqtt,
            admin,
            plugins,
        })
    }
}

#[cfg(test)]
mod tests;
