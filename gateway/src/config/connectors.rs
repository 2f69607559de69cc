//! `[[connector]]`: which plugins run, what they may reach, their own
//! settings, and where their input comes from besides webhooks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::{Locator, key_line_after};
use super::mqtt::{self, MqttConfig, RawSubscription, SubscriptionConfig};
use super::name::{Name, Taken};
use super::values::{expand_table, secs};
use crate::allowed_host::AllowedHost;
use crate::secret::Secret;

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
pub(super) struct RawConnector {
    name: Spanned<String>,
    plugin: Spanned<String>,
    poll_interval_secs: Option<Spanned<u64>>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allow_private_addresses: bool,
    #[serde(default)]
    config: Option<Spanned<toml::Table>>,
    mqtt: Option<Spanned<RawSubscription>>,
}

/// What connectors are checked against: the gateway's id and webhook
/// listener, and the MQTT sinks (whose client ids a subscription must not
/// take).
pub(super) struct Context<'a> {
    pub(super) gateway_id: &'a str,
    pub(super) listen: SocketAddr,
    pub(super) mqtt: &'a [MqttConfig],
    pub(super) resolve: &'a dyn Fn(&str) -> PathBuf,
}

pub(super) fn parse(
    loc: &Locator<'_>,
    raw: Vec<RawConnector>,
    cx: &Context<'_>,
) -> Result<Vec<ConnectorConfig>, ConfigError> {
    let mut names = Taken::default();
    let mut connectors: Vec<ConnectorConfig> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("connector[{i}].{k}");
        let name = Name::at(
            loc,
            &c.name,
            &key("name"),
            "use 1-64 lower-case letters, digits, `-` or `_` (it becomes the webhook path /hooks/<name>)",
        )?;
        if !names.take(name.clone()) {
            return Err(loc.at(
                c.name.span(),
                &key("name"),
                format!("`{name}` is used by another connector"),
            ));
        }
        let plugin = (cx.resolve)(c.plugin.get_ref());
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
            let host = AllowedHost::parse(h.get_ref()).map_err(|e| {
                loc.at(
                    h.span(),
                    &format!("connector[{i}].allowed_hosts[{j}]"),
                    e.to_string(),
                )
            })?;
            allowed_hosts.push(host.to_string());
        }
        let poll_interval = secs(loc, c.poll_interval_secs, &key("poll_interval_secs"), 60)?;
        let settings = match c.config {
            Some(table) => expand_table(loc, table, &key("config"))?,
            None => toml::Table::new(),
        };
        if let Some(value) = settings.get(ALLOW_UNSIGNED) {
            let at = |message: &str| {
                // The table's span does not reach its keys: the key is
                // the first line after this connector's name that sets it.
                let key_span = key_line_after(loc.text, c.name.span().end, ALLOW_UNSIGNED);
                loc.at(key_span, &key("config.allow_unsigned"), message)
            };
            match value {
                toml::Value::Boolean(false) => {}
                toml::Value::Boolean(true) if cx.listen.ip().is_loopback() => {}
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
                let s = mqtt::parse_subscription(
                    loc,
                    &key("mqtt"),
                    raw,
                    cx.gateway_id,
                    name.as_str(),
                    cx.resolve,
                )?;
                let earlier = connectors.iter().filter_map(|c| c.subscription.as_ref());
                if let Err(why) = mqtt::check_client_id(cx.mqtt, earlier, &s) {
                    return Err(loc.at(at, &key("mqtt.client_id"), why));
                }
                Some(s)
            }
            None => None,
        };
        connectors.push(ConnectorConfig {
            name: name.into(),
            plugin,
            poll_interval,
            allowed_hosts,
            allow_private_addresses: c.allow_private_addresses,
            settings,
            subscription,
        });
    }
    Ok(connectors)
}
