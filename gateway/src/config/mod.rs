//! Configuration: TOML → raw serde structs (unknown keys are errors) →
//! [`Config`], validated, with paths resolved and `${ENV}` expanded.
//!
//! Every error names the file, the line and the key, because the person
//! reading it is a shop owner with a text editor.

mod env;
mod mqtt;
mod plugins;
mod secret;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::log::LogOptions;
use crate::sinks::RetryPolicy;
use crate::speaker_api::client::DEFAULT_BASE_URL;
use crate::speaker_api::sim::{Faults, SimConfig, SimDevice};

pub use mqtt::{
    ClientIdentity, Endpoint, MqttBroker, MqttConfig, MqttTls, MqttUser, RelayConfig,
    SubscriptionConfig, UNNAMED_SINK as UNNAMED_MQTT_SINK,
};
pub use plugins::{ALLOW_UNSIGNED_WORDS, PluginTrustConfig};
pub use secret::Secret;

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

/// `[speaker]`: the SePay Speaker API and how payments are announced.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerConfig {
    /// Run the Speaker API simulator in process (on the admin listener) and
    /// talk to it: no credentials, no internet. Its devices and faults.
    pub simulator: Option<(Vec<SimDevice>, Faults)>,
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Payments older than this are not announced (kept, counted as expired).
    pub max_age: Duration,
    pub announce_outgoing: bool,
    pub min_amount: u64,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// The Speaker API's allowed call rate; calls are spaced to it. None: unpaced.
    pub max_calls_per_sec: Option<NonZeroU32>,
}

/// `[[route]]`: which speakers announce payments to which account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// An account number, or `*` for every account.
    pub account: String,
    pub speakers: Vec<String>,
    pub min_amount: u64,
}

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

/// A `[[forward]]` sink: every payment POSTed as JSON to `url`.
#[derive(Clone, PartialEq)]
pub struct ForwardConfig {
    /// Unique among sinks; names its queue.
    pub name: String,
    pub url: reqwest::Url,
    /// Extra request headers (e.g. `Authorization`), `${ENV}` expanded; redacted in logs.
    pub headers: Vec<(String, Secret)>,
    /// Payments older than this are not sent (kept, counted as expired). None: no limit.
    pub max_age: Option<Duration>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// Without the URL's user info, query and fragment (tokens hide there).
impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("name", &self.name)
            .field("url", &redacted_url(&self.url))
            .field("headers", &self.headers)
            .field("max_age", &self.max_age)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// `url` as it may be logged: scheme, host, port and path; user info, query
/// and fragment (where tokens are put) replaced by `[redacted]`.
pub fn redacted_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str("[redacted]@");
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?[redacted]");
    }
    if url.fragment().is_some() {
        shown.push_str("#[redacted]");
    }
    shown
}

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

#[derive(Clone, PartialEq)]
pub struct ConnectorConfig {
    /// Unique; also the webhook path segment.
    pub name: String,
    /// The `.wasm` component, absolute.
    pub plugin: PathBuf,
    /// How often a polling connector is called.
    pub poll_interval: Duration,
    /// Hosts the plugin's `http-client` may reach, normalised: `host`,
    /// `*.suffix`, either with `:port` (a bare host is the scheme's default port).
    pub allowed_hosts: Vec<String>,
    /// Let `http-client` reach private/link-local addresses (e.g. a LAN bank box).
    pub allow_private_addresses: bool,
    /// The plugin's own table, `${ENV}` expanded; served through `config.get`.
    pub settings: toml::Table,
    /// `[connector.mqtt]`: messages from a broker subscription, beside webhooks.
    pub subscription: Option<SubscriptionConfig>,
}

/// The key in `[connector.config]` that lets a connector that can verify
/// its sender skip it (e.g. SePay's `auth = "none"`). The gateway allows it
/// only on a loopback listener and warns at every start; the plugin reads
/// the same key (`soundbox_plugin_sdk::config::allow_unsigned`).
pub const ALLOW_UNSIGNED: &str = "allow_unsigned";

/// The plugin's settings by key only: their values hold API keys and secrets.
impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .field("poll_interval", &self.poll_interval)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allow_private_addresses", &self.allow_private_addresses)
            .field("settings", &RedactedTable(&self.settings))
            .field("subscription", &self.subscription)
            .finish()
    }
}

/// A TOML table shown as `{key: [redacted], …}`.
struct RedactedTable<'a>(&'a toml::Table);

impl std::fmt::Debug for RedactedTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, Secret::new(""))))
            .finish()
    }
}

impl ConnectorConfig {
    /// Whether the config lets this connector accept unsigned requests.
    pub fn allows_unsigned(&self) -> bool {
        self.settings.get(ALLOW_UNSIGNED) == Some(&toml::Value::Boolean(true))
    }

    /// A connector for `plugin test`: no config file, settings from `--set`.
    pub fn ad_hoc(plugin: PathBuf, settings: toml::Table) -> Self {
        ConnectorConfig {
            name: "test".into(),
            plugin,
            poll_interval: Duration::from_secs(60),
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            settings,
            subscription: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    connector: Vec<RawConnector>,
    #[serde(default)]
    forward: Vec<RawForward>,
    speaker: Option<Spanned<RawSpeaker>>,
    #[serde(default)]
    route: Vec<RawRoute>,
    mqtt: Option<Spanned<mqtt::RawMqttSections>>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    plugins: plugins::RawPlugins,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token: Option<Spanned<String>>,
    stall_after_secs: Option<Spanned<u64>>,
    connector_failures: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpeaker {
    #[serde(default)]
    simulator: bool,
    #[serde(default)]
    sim_devices: Vec<SimDevice>,
    #[serde(default)]
    sim_faults: Faults,
    base_url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    max_age_secs: Option<Spanned<u64>>,
    #[serde(default)]
    announce_outgoing: bool,
    #[serde(default)]
    min_amount: u64,
    timeout_ms: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    max_calls_per_sec: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    account: Spanned<String>,
    speakers: Spanned<Vec<String>>,
    #[serde(default)]
    min_amount: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dedupe_retention_days: Option<Spanned<u64>>,
    keep_settled_hours: Option<Spanned<u64>>,
    max_disk_mb: Option<Spanned<u64>>,
    min_free_disk_mb: Option<Spanned<u64>>,
    cache_mb: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    name: Spanned<String>,
    url: Spanned<String>,
    max_age_secs: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    #[serde(default)]
    headers: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    admin_listen: Option<Spanned<String>>,
    shutdown_grace_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mb: Option<Spanned<u64>>,
    cpu_budget_ms: Option<Spanned<u64>>,
    call_timeout_ms: Option<Spanned<u64>>,
    max_changes_per_call: Option<Spanned<u64>>,
    total_memory_mb: Option<Spanned<u64>>,
    max_result_kb: Option<Spanned<u64>>,
    kv_max_kb: Option<Spanned<u64>>,
    kv_total_mb: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnector {
    name: Spanned<String>,
    plugin: Spanned<String>,
    poll_interval_secs: Option<Spanned<u64>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allow_private_addresses: bool,
    #[serde(default)]
    config: Option<Spanned<toml::Table>>,
    mqtt: Option<Spanned<mqtt::RawSubscription>>,
}

/// Where each part of the document is, for error messages.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where `${NAME}` comes from.
    env: fn(&str) -> Option<String>,
}

impl Locator<'_> {
    fn at(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
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

    fn parse_with(
        path: &Path,
        text: &str,
        env: fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let loc = Locator { path, text, env };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            loc.at(
                span.clone(),
                &key_at(text, span.start),
                e.message().to_string(),
            )
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        let g = raw.gateway;
        let id = match g.id {
            Some(id) => {
                let valid = !id.get_ref().is_empty()
                    && id.get_ref().len() <= 64
                    && id
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !valid {
                    return Err(loc.at(
                        id.span(),
                        "gateway.id",
                        "use 1-64 letters, digits, `-` or `_` (it becomes an MQTT topic level)",
                    ));
                }
                id.into_inner()
            }
            None => "gateway".to_string(),
        };
        let listen = address(&loc, g.listen.as_ref(), "gateway.listen", 8080)?;
        let admin_listen = address(&loc, g.admin_listen.as_ref(), "gateway.admin_listen", 8081)?;
        let shutdown_grace = Duration::from_secs(match g.shutdown_grace_secs {
            Some(v) => v.into_inner(),
            None => 10,
        });
        let data_dir = resolve(g.data_dir.as_ref().map_or("data", |d| d.get_ref()));
        let max_body_bytes =
            positive(&loc, g.max_body_bytes, "gateway.max_body_bytes", 64 << 10)? as usize;

        let d = PluginLimits::default();
        let l = raw.limits;
        let limits = PluginLimits {
            memory_bytes: memory_size(&loc, l.memory_mb, "limits.memory_mb", 32, 1 << 20)?,
            cpu_budget: Duration::from_millis(positive(
                &loc,
                l.cpu_budget_ms,
                "limits.cpu_budget_ms",
                200,
            )?),
            call_timeout: Duration::from_millis(positive(
                &loc,
                l.call_timeout_ms,
                "limits.call_timeout_ms",
                30_000,
            )?),
            max_changes_per_call: positive(
                &loc,
                l.max_changes_per_call,
                "limits.max_changes_per_call",
                100,
            )? as usize,
            max_stderr_bytes: d.max_stderr_bytes,
            total_memory_bytes: memory_size(
                &loc,
                l.total_memory_mb,
                "limits.total_memory_mb",
                d.total_memory_bytes as u64 >> 20,
                1 << 20,
            )?,
            max_result_bytes: memory_size(
                &loc,
                l.max_result_kb,
                "limits.max_result_kb",
                d.max_result_bytes as u64 >> 10,
                1 << 10,
            )?,
            kv_max_bytes: scaled(
                &loc,
                l.kv_max_kb,
                "limits.kv_max_kb",
                d.kv_max_bytes >> 10,
                1 << 10,
                false,
            )?,
            kv_total_bytes: scaled(
                &loc,
                l.kv_total_mb,
                "limits.kv_total_mb",
                d.kv_total_bytes >> 20,
                1 << 20,
                false,
            )?,
        };

        let dl = LogOptions::default();
        let lr = raw.log;
        let log = LogOptions {
            cache_bytes: scaled(
                &loc,
                lr.cache_mb,
                "log.cache_mb",
                dl.cache_bytes >> 20,
                1 << 20,
                false,
            )?,
            dedupe_retention: Duration::from_secs(scaled(
                &loc,
                lr.dedupe_retention_days,
                "log.dedupe_retention_days",
                30,
                24 * 3600,
                false,
            )?),
            keep_settled: Duration::from_secs(scaled(
                &loc,
                lr.keep_settled_hours,
                "log.keep_settled_hours",
                24,
                3600,
                true,
            )?),
            max_disk_bytes: scaled(
                &loc,
                lr.max_disk_mb,
                "log.max_disk_mb",
                1024,
                1 << 20,
                false,
            )?,
            min_free_disk_bytes: scaled(
                &loc,
                lr.min_free_disk_mb,
                "log.min_free_disk_mb",
                64,
                1 << 20,
                true,
            )?,
            segment_bytes: dl.segment_bytes,
        };

        let plugin_trust = plugins::parse(&loc, raw.plugins, &resolve)?;

        let mqtt = match raw.mqtt {
            Some(m) => mqtt::parse_sections(&loc, m, &id, &resolve)?,
            None => Vec::new(),
        };

        let mut names = BTreeSet::new();
        let mut connectors: Vec<ConnectorConfig> = Vec::new();
        for (i, c) in raw.connector.into_iter().enumerate() {
            let key = |k: &str| format!("connector[{i}].{k}");
            let name = c.name.get_ref();
            if !mqtt::is_name(name) {
                return Err(loc.at(c.name.span(), &key("name"), "use 1-64 lower-case letters, digits, `-` or `_` (it becomes the webhook path /hooks/<name>)"));
            }
            if !names.insert(name.clone()) {
                return Err(loc.at(
                    c.name.span(),
                    &key("name"),
                    format!("`{name}` is used by another connector"),
                ));
            }
            let plugin = resolve(c.plugin.get_ref());
            if !plugin.is_file() {
                return Err(loc.at(
                    c.plugin.span(),
                    &key("plugin"),
                    format!(
                        "no plugin file at {} (build the plugins first: make plugins)",
                        plugin.display()
                    ),
                ));
            }
            let mut allowed_hosts = Vec::new();
            for (j, h) in c.allowed_hosts.iter().enumerate() {
                // The same normaliser the http-client matches request URLs with.
                let host = crate::connectors::http_client::AllowedHost::parse(h.get_ref())
                    .map_err(|e| {
                        loc.at(
                            h.span(),
                            &format!("connector[{i}].allowed_hosts[{j}]"),
                            e.to_string(),
                        )
                    })?;
                allowed_hosts.push(host.to_string());
            }
            let poll_interval = Duration::from_secs(positive(
                &loc,
                c.poll_interval_secs,
                &key("poll_interval_secs"),
                60,
            )?);
            let settings = match c.config {
                Some(table) => {
                    let span = table.span();
                    env::expand_table(table.into_inner(), loc.env)
                        .map_err(|e| loc.at(span, &key("config"), e))?
                }
                None => toml::Table::new(),
            };
            if let Some(value) = settings.get(ALLOW_UNSIGNED) {
                let at = |message: &str| {
                    // The table's span does not reach its keys: the key is
                    // the first line after this connector's name that sets it.
                    let from = c.name.span().end;
                    let key_span = text[from..]
                        .split_inclusive('\n')
                        .scan(from, |offset, line| {
                            let start = *offset;
                            *offset += line.len();
                            Some((start, line))
                        })
                        .find(|(_, line)| {
                            line.trim_start()
                                .strip_prefix(ALLOW_UNSIGNED)
                                .is_some_and(|rest| rest.trim_start().starts_with('='))
                        })
                        .map_or(0..0, |(start, line)| {
                            let indent = line.len() - line.trim_start().len();
                            start + indent..start + indent + ALLOW_UNSIGNED.len()
                        });
                    loc.at(key_span, &key("config.allow_unsigned"), message)
                };
                match value {
                    toml::Value::Boolean(false) => {}
                    toml::Value::Boolean(true) if listen.ip().is_loopback() => {}
                    toml::Value::Boolean(true) => {
                        return Err(at(
                            "unsigned webhooks are allowed only while gateway.listen is on \
                             loopback (127.0.0.1 or [::1]): anyone who can reach the listener \
                             could make the speaker announce a payment that never happened. \
                             Use the provider's signature or API key instead (auth = \"apikey\" \
                             or \"hmac\")",
                        ));
                    }
                    _ => return Err(at("expected true or false")),
                }
            }
            let subscription = match c.mqtt {
                Some(raw) => {
                    let at = raw.span();
                    let s = mqtt::parse_subscription(&loc, &key("mqtt"), raw, &id, name, &resolve)?;
                    let earlier = connectors.iter().filter_map(|c| c.subscription.as_ref());
                    if let Err(why) = mqtt::check_client_id(&mqtt, earlier, &s) {
                        return Err(loc.at(at, &key("mqtt.client_id"), why));
                    }
                    Some(s)
                }
                None => None,
            };
            connectors.push(ConnectorConfig {
                name: c.name.into_inner(),
                plugin,
                poll_interval,
                allowed_hosts,
                allow_private_addresses: c.allow_private_addresses,
                settings,
                subscription,
            });
        }

        let forwards = parse_forwards(&loc, raw.forward)?;
        let speaker = raw.speaker.map(|s| parse_speaker(&loc, s)).transpose()?;
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            if speaker.is_none() {
                return Err(loc.at(
                    r.account.span(),
                    &format!("route[{i}].account"),
                    "routes need a [speaker] section",
                ));
            }
            if r.account.get_ref().trim().is_empty() {
                return Err(loc.at(
                    r.account.span(),
                    &format!("route[{i}].account"),
                    "give an account number, or \"*\" for every account",
                ));
            }
            if r.speakers.get_ref().is_empty()
                || r.speakers.get_ref().iter().any(|s| s.trim().is_empty())
            {
                return Err(loc.at(
                    r.speakers.span(),
                    &format!("route[{i}].speakers"),
                    "list the speakers' hardware ids (printed on each device)",
                ));
            }
            routes.push(RouteConfig {
                account: r.account.into_inner(),
                speakers: r.speakers.into_inner(),
                min_amount: r.min_amount,
            });
        }

        let admin = parse_admin(&loc, raw.admin)?;

        Ok(Config {
            source: path.to_path_buf(),
            gateway: GatewayConfig {
                id,
                listen,
                data_dir,
                max_body_bytes,
                admin_listen,
                shutdown_grace,
            },
            limits,
            log,
            connectors,
            forwards,
            speaker,
            routes,
            mqtt,
            admin,
            plugins: plugin_trust,
        })
    }
}

fn parse_speaker(
    loc: &Locator<'_>,
    raw: Spanned<RawSpeaker>,
) -> Result<SpeakerConfig, ConfigError> {
    let span = raw.span();
    let s = raw.into_inner();
    let expanded = |v: Option<Spanned<String>>, key: &str| {
        v.map(|v| expand_env(loc, &v, &format!("speaker.{key}")))
            .transpose()
    };
    let sim = SimConfig::default();
    let (simulator, base_url, client_id, client_secret) = if s.simulator {
        (
            Some((s.sim_devices, s.sim_faults)),
            String::new(), // set when the simulator is listening
            sim.client_id,
            sim.client_secret,
        )
    } else {
        let missing = |key: &str| {
            loc.at(
                span.clone(),
                &format!("speaker.{key}"),
                format!(
                    "required unless simulator = true (e.g. {key} = \"${{SEPAY_SPEAKER_{}}}\")",
                    key.to_ascii_uppercase()
                ),
            )
        };
        let id = expanded(s.client_id, "client_id")?.ok_or_else(|| missing("client_id"))?;
        let secret =
            expanded(s.client_secret, "client_secret")?.ok_or_else(|| missing("client_secret"))?;
        let base = expanded(s.base_url, "base_url")?.unwrap_or_else(|| DEFAULT_BASE_URL.into());
        (None, base, id, secret)
    };
    let d = RetryPolicy::default();
    let ms = |v, k: &str, default| millis(loc, v, &format!("speaker.{k}"), default);
    Ok(SpeakerConfig {
        simulator,
        base_url,
        client_id,
        client_secret: Secret::new(client_secret),
        max_age: Duration::from_secs(positive(loc, s.max_age_secs, "speaker.max_age_secs", 300)?),
        announce_outgoing: s.announce_outgoing,
        min_amount: s.min_amount,
        timeout: ms(s.timeout_ms, "timeout_ms", Duration::from_secs(10))?,
        // Shaped for voice: a payment is worth announcing only while the
        // customer is at the counter, so retries start sub-second and stay
        // within a few seconds (full jitter spreads them); `Retry-After`
        // is honoured and nothing waits past `max_age_secs`.
        retry: RetryPolicy {
            initial: ms(
                s.retry_initial_ms,
                "retry_initial_ms",
                Duration::from_millis(200),
            )?,
            max: ms(s.retry_max_ms, "retry_max_ms", Duration::from_secs(3))?,
            max_retry_after: d.max_retry_after,
        },
        max_calls_per_sec: s
            .max_calls_per_sec
            .map(|v| {
                NonZeroU32::new(*v.get_ref()).ok_or_else(|| {
                    loc.at(
                        v.span(),
                        "speaker.max_calls_per_sec",
                        "must be greater than 0",
                    )
                })
            })
            .transpose()?,
    })
}

/// Names reserved for the built-in sinks.
const RESERVED_SINK_NAMES: [&str; 2] = ["speaker", "mqtt"];

fn parse_forwards(
    loc: &Locator<'_>,
    raw: Vec<RawForward>,
) -> Result<Vec<ForwardConfig>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut forwards = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("forward[{i}].{k}");
        let name = f.name.get_ref();
        if !mqtt::is_name(name) {
            return Err(loc.at(
                f.name.span(),
                &key("name"),
                "use 1-64 lower-case letters, digits, `-` or `_`",
            ));
        }
        if RESERVED_SINK_NAMES.contains(&name.as_str()) || !names.insert(name.clone()) {
            return Err(loc.at(
                f.name.span(),
                &key("name"),
                format!("`{name}` is already the name of another sink"),
            ));
        }
        let url_text = expand_env(loc, &f.url, &key("url"))?;
        let url = reqwest::Url::parse(&url_text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                loc.at(
                    f.url.span(),
                    &key("url"),
                    "expected an http:// or https:// URL",
                )
            })?;
        let mut headers = Vec::new();
        if let Some(table) = f.headers {
            let span = table.span();
            let expanded = env::expand_table(table.into_inner(), loc.env)
                .map_err(|e| loc.at(span.clone(), &key("headers"), e))?;
            for (name, value) in expanded {
                let Some(value) = value.as_str() else {
                    return Err(loc.at(
                        span,
                        &key(&format!("headers.{name}")),
                        "header values are strings",
                    ));
                };
                headers.push((name, Secret::new(value)));
            }
        }
        let d = RetryPolicy::default();
        let ms = |v, k: &str, default| millis(loc, v, &key(k), default);
        let retry = RetryPolicy {
            initial: ms(f.retry_initial_ms, "retry_initial_ms", d.initial)?,
            max: ms(f.retry_max_ms, "retry_max_ms", d.max)?,
            max_retry_after: d.max_retry_after,
        };
        forwards.push(ForwardConfig {
            name: f.name.into_inner(),
            url,
            headers,
            max_age: f
                .max_age_secs
                .map(|v| Duration::from_secs(v.into_inner()))
                .filter(|d| !d.is_zero()),
            timeout: ms(f.timeout_ms, "timeout_ms", Duration::from_secs(10))?,
            retry,
        });
    }
    Ok(forwards)
}

/// A `host:port` socket address at `key`; 127.0.0.1:`default_port` if absent.
fn address(
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
fn parse_admin(loc: &Locator<'_>, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
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

fn expand_env(
    loc: &Locator<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    env::expand(value.get_ref(), loc.env).map_err(|e| loc.at(value.span(), key, e))
}

/// A positive number of milliseconds at `key`, `default` if absent.
fn millis(
    loc: &Locator<'_>,
    value: Option<Spanned<u64>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    positive(loc, value, key, default.as_millis() as u64).map(Duration::from_millis)
}

/// `value` (or `default`) in `unit`s of the base unit: MiB to bytes, days
/// to seconds. Too large to count in the base unit is an error at `key`, not
/// a wrap to a small or zero limit. `zero_ok`: 0 is allowed.
fn scaled(
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
fn memory_size(
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

fn positive(
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

/// The dotted key on the line containing `offset`, best effort, for parse
/// errors that carry only a position (e.g. `listen = 8080x`).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    for line in text[..offset].lines() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table.is_empty(), key) {
        (_, Some(k)) if line.contains('=') => {
            if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            }
        }
        (false, _) => table,
        (true, _) => "(top level)".to_string(),
    }
}

#[cfg(test)]
mod tests;
