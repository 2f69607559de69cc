//! `[[mqtt]]` sinks and `[connector.mqtt]` subscriptions: the broker
//! connection they share (URL, TLS with a client certificate, login, client
//! id: [`connection`]), each sink's topics, embedded-broker accounts
//! ([`accounts`]) and relay table ([`relay`]), each subscription's topic
//! ([`subscription`]).
//!
//! The single `[mqtt]` table of earlier versions is still read: it is one
//! `[[mqtt]]` without a name, and keeps the sink name `mqtt` (and so its
//! cursor).

mod accounts;
mod connection;
mod relay;
mod subscription;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::name::{Name, Taken};
use super::values::{address, expand_env, positive, secs};
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use connection::{Connection, client_id, credentials, is_topic, parse_endpoint};

pub use accounts::MqttUser;
pub use connection::{ClientIdentity, Endpoint, MqttTls};
pub use relay::RelayConfig;
pub use subscription::SubscriptionConfig;
pub(super) use subscription::{RawSubscription, check_client_id, parse_subscription};

/// The sink name of an `[[mqtt]]` entry without a name.
pub const UNNAMED_SINK: &str = "mqtt";

/// One `[[mqtt]]` sink: every payment published on a broker.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// None: the sink is `mqtt` (at most one entry goes unnamed); else
    /// `mqtt:<name>`.
    pub name: Option<String>,
    pub broker: MqttBroker,
    /// Topics are `<topic_prefix>/<gateway.id>/{events,status,health,…}`.
    pub topic_prefix: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Accounts for the embedded broker's clients (POS screens); none lets
    /// anyone on a loopback `embedded_listen` read.
    pub embedded_users: Vec<MqttUser>,
    pub keep_alive: Duration,
    /// Publishes sent and not yet acknowledged, at most.
    pub window: usize,
    /// Reconnect backoff.
    pub retry: RetryPolicy,
    /// Relay role: each payment goes to its shop's topic instead of `events`.
    pub relay: Option<RelayConfig>,
    /// How often the retained health document is refreshed (it is also
    /// published on every change).
    pub health_every: Duration,
}

impl MqttConfig {
    /// The sink's name in the store: its cursor and queue.
    pub fn sink_name(&self) -> String {
        match &self.name {
            None => UNNAMED_SINK.to_string(),
            Some(name) => format!("{UNNAMED_SINK}:{name}"),
        }
    }
}

/// Which broker an MQTT sink talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttBroker {
    /// A broker inside the gateway (rumqttd) behind a guard listening here:
    /// clients read, only the gateway publishes under `topic_prefix`; off
    /// loopback, clients need an account (`embedded_users`).
    Embedded { listen: SocketAddr },
    /// A broker elsewhere.
    External(Endpoint),
}

/// `mqtt` in the raw document: the single `[mqtt]` table of earlier
/// versions, or the `[[mqtt]]` array.
#[derive(Debug)]
pub(super) enum RawMqttSections {
    One(Box<RawMqtt>),
    Many(Vec<Spanned<RawMqtt>>),
}

/// Reads a table as [`RawMqttSections::One`] and an array as
/// [`RawMqttSections::Many`], handing toml's own map and sequence through
/// so every field keeps its span (an untagged enum would lose them).
impl<'de> Deserialize<'de> for RawMqttSections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Sections;
        impl<'de> Visitor<'de> for Sections {
            type Value = RawMqttSections;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an [mqtt] table or [[mqtt]] entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawMqtt::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|one| RawMqttSections::One(Box::new(one)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RawMqttSections::Many)
            }
        }
        deserializer.deserialize_any(Sections)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    name: Option<Spanned<String>>,
    broker: Option<Spanned<String>>,
    embedded_listen: Option<Spanned<String>>,
    topic_prefix: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    embedded_users: Option<Spanned<Vec<accounts::RawMqttUser>>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<u64>>,
    window: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    health_every_secs: Option<Spanned<u64>>,
    relay: Option<Spanned<relay::RawRelay>>,
}

/// The most publishes in flight `[mqtt] window` allows.
const MAX_MQTT_WINDOW: u64 = 1000;

/// Every `[[mqtt]]` entry (or the one `[mqtt]`), checked one by one and
/// against each other: names, one embedded broker, client ids.
pub(super) fn parse_sections(
    loc: &Locator<'_>,
    raw: Spanned<RawMqttSections>,
    gateway_id: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<MqttConfig>, ConfigError> {
    let span = raw.span();
    let entries: Vec<(String, Spanned<RawMqtt>)> = match raw.into_inner() {
        RawMqttSections::One(one) => vec![("mqtt".into(), Spanned::new(span, *one))],
        RawMqttSections::Many(many) => many
            .into_iter()
            .enumerate()
            .map(|(i, m)| (format!("mqtt[{i}]"), m))
            .collect(),
    };
    let mut sinks: Vec<MqttConfig> = Vec::new();
    let mut names = Taken::default();
    for (key, raw) in entries {
        let at = raw.span();
        let name_span = raw.get_ref().name.as_ref().map_or(at.clone(), |n| n.span());
        let client_span = raw
            .get_ref()
            .client_id
            .as_ref()
            .map_or(at.clone(), |c| c.span());
        let sink = parse_one(loc, &key, raw, gateway_id, resolve)?;
        if !names.take(sink.name.clone()) {
            let why = match &sink.name {
                None => "only one [[mqtt]] may go without a name: give this one `name = \"…\"` \
                         (its sink is then mqtt:<name>)"
                    .to_string(),
                Some(name) => format!("`{name}` names another [[mqtt]] too"),
            };
            return Err(loc.at(name_span, &format!("{key}.name"), why));
        }
        if matches!(sink.broker, MqttBroker::Embedded { .. })
            && sinks
                .iter()
                .any(|s| matches!(s.broker, MqttBroker::Embedded { .. }))
        {
            return Err(loc.at(
                at,
                &format!("{key}.broker"),
                "only one [[mqtt]] may use the embedded broker",
            ));
        }
        if let Some(other) = sinks
            .iter()
            .find(|s| s.client_id == sink.client_id && s.broker == sink.broker)
        {
            return Err(loc.at(
                client_span,
                &format!("{key}.client_id"),
                format!(
                    "`{}` is also the client id of sink {} on the same broker; a broker lets one client id connect at a time",
                    sink.client_id,
                    other.sink_name()
                ),
            ));
        }
        sinks.push(sink);
    }
    Ok(sinks)
}

fn parse_one(
    loc: &Locator<'_>,
    key: &str,
    raw: Spanned<RawMqtt>,
    gateway_id: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MqttConfig, ConfigError> {
    let span = raw.span();
    let m = raw.into_inner();
    let k = |name: &str| format!("{key}.{name}");
    let name = match &m.name {
        Some(n) => Some(String::from(Name::at(
            loc,
            n,
            &k("name"),
            "use 1-64 lower-case letters, digits, `-` or `_` (the sink is then mqtt:<name>)",
        )?)),
        None => None,
    };
    let broker = parse_broker(loc, key, &m, span.clone(), resolve)?;
    let topic_prefix = match &m.topic_prefix {
        Some(p) => {
            let t = p.get_ref();
            if !is_topic(t, false) {
                return Err(loc.at(
                    p.span(),
                    &k("topic_prefix"),
                    "use topic levels like soundbox or chain/hanoi (no +, #, leading or trailing /)",
                ));
            }
            t.clone()
        }
        None => "soundbox".to_string(),
    };
    let default_client_id = match &name {
        None => format!("soundbox-{gateway_id}"),
        Some(name) => format!("soundbox-{gateway_id}-{name}"),
    };
    let client_id = client_id(loc, &m.client_id, &k("client_id"), default_client_id)?;
    let (username, password) = credentials(loc, key, &m.username, &m.password, span.clone())?;
    let embedded_users = accounts::parse(loc, key, &m, &broker, span.clone())?;
    let window_span = m.window.as_ref().map_or(span.clone(), |w| w.span());
    let window = positive(loc, m.window, &k("window"), 64)?;
    if window > MAX_MQTT_WINDOW {
        return Err(loc.at(
            window_span,
            &k("window"),
            format!("at most {MAX_MQTT_WINDOW}"),
        ));
    }
    let relay = m.relay.map(|r| relay::parse(loc, key, r)).transpose()?;
    Ok(MqttConfig {
        name,
        broker,
        topic_prefix,
        client_id,
        username,
        password,
        embedded_users,
        keep_alive: secs(loc, m.keep_alive_secs, &k("keep_alive_secs"), 30)?,
        window: window as usize,
        retry: connection::retry(loc, key, m.retry_initial_ms, m.retry_max_ms)?,
        relay,
        health_every: secs(loc, m.health_every_secs, &k("health_every_secs"), 60)?,
    })
}

/// `broker` (`embedded` if absent) and what goes with it: the embedded
/// broker's listener, or an external one's URL and TLS files.
fn parse_broker(
    loc: &Locator<'_>,
    key: &str,
    m: &RawMqtt,
    span: std::ops::Range<usize>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MqttBroker, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    let broker_text = match &m.broker {
        Some(b) => expand_env(loc, b, &k("broker"))?,
        None => "embedded".to_string(),
    };
    let broker_span = m.broker.as_ref().map_or(span.clone(), |b| b.span());
    let broker = if broker_text == "embedded" {
        let listen = address(loc, m.embedded_listen.as_ref(), &k("embedded_listen"), 1883)?;
        let external_only = [
            ("username", m.username.is_some()),
            ("password", m.password.is_some()),
            ("ca_file", m.ca_file.is_some()),
            ("cert_file", m.cert_file.is_some()),
            ("key_file", m.key_file.is_some()),
        ];
        if let Some((name, _)) = external_only.iter().find(|(_, set)| *set) {
            return Err(loc.at(
                broker_span,
                &k(name),
                "the embedded broker has no TLS, and the gateway logs into it with a password of its own; \
                 give POS screens accounts in mqtt.embedded_users, or set broker to an mqtt:// or mqtts:// URL",
            ));
        }
        MqttBroker::Embedded { listen }
    } else {
        if let Some(l) = &m.embedded_listen {
            return Err(loc.at(
                l.span(),
                &k("embedded_listen"),
                "only used with broker = \"embedded\"",
            ));
        }
        if let Some(u) = &m.embedded_users {
            return Err(loc.at(
                u.span(),
                &k("embedded_users"),
                "only used with broker = \"embedded\" (an external broker has accounts of its own)",
            ));
        }
        let broker = Spanned::new(broker_span.clone(), broker_text);
        let connection = Connection {
            broker: &broker,
            ca_file: &m.ca_file,
            cert_file: &m.cert_file,
            key_file: &m.key_file,
        };
        MqttBroker::External(parse_endpoint(loc, key, &connection, span, resolve)?)
    };
    Ok(broker)
}
