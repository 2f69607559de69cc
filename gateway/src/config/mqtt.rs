//! `[[mqtt]]` sinks and `[connector.mqtt]` subscriptions: the broker
//! connection they share (URL, TLS with a client certificate, login, client
//! id), each sink's topics and relay table, each subscription's topic.
//!
//! The single `[mqtt]` table of earlier versions is still read: it is one
//! `[[mqtt]]` without a name, and keeps the sink name `mqtt` (and so its
//! cursor).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::{ConfigError, Locator, Secret, address, expand_env, millis, positive};
use crate::sinks::RetryPolicy;

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

/// A broker elsewhere: `mqtt://host:port` or `mqtts://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS (rustls).
    pub tls: Option<MqttTls>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// One `[[mqtt.embedded_users]]` account: a client of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUser {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqttTls {
    /// A PEM file of CA certificates to trust instead of the built-in roots
    /// (a chain's own CA, or a self-signed broker).
    pub ca_file: Option<PathBuf>,
    /// The gateway's own certificate and key (PEM), for brokers that know
    /// each shop by its client certificate.
    pub identity: Option<ClientIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[mqtt.relay]`: a relay gateway (in the cloud, taking a whole chain's
/// webhooks) publishes each payment on the topic of the shop that owns the
/// account it went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// With `{shop}` where the shop's id goes, e.g. `chain/{shop}/payments`.
    pub topic: String,
    /// Account number → shop id.
    pub shops: BTreeMap<String, String>,
}

/// What stands for the shop's id in [`RelayConfig::topic`].
pub const SHOP_PLACEHOLDER: &str = "{shop}";

impl RelayConfig {
    /// The topic for a payment to `account`; None if no shop owns it.
    pub fn topic_for(&self, account: &str) -> Option<String> {
        let shop = self.shops.get(account)?;
        Some(self.topic.replace(SHOP_PLACEHOLDER, shop))
    }
}

/// `[connector.mqtt]`: the connector's input from a subscription: each
/// message goes through the plugin like a webhook body, and is acknowledged
/// (PUBACK) only once its payments are stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    pub broker: Endpoint,
    /// A topic filter (`+` and `#` allowed).
    pub topic: String,
    /// Fixed, so the broker keeps the session (and what arrives while the
    /// gateway is away) for it.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    /// Reconnect backoff.
    pub retry: RetryPolicy,
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
    embedded_users: Option<Spanned<Vec<RawMqttUser>>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<u64>>,
    window: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    health_every_secs: Option<Spanned<u64>>,
    relay: Option<Spanned<RawRelay>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttUser {
    username: Spanned<String>,
    password: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    topic: Spanned<String>,
    #[serde(default)]
    shops: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubscription {
    broker: Spanned<String>,
    topic: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    keep_alive_secs: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
}

/// The most publishes in flight `[mqtt] window` allows.
const MAX_MQTT_WINDOW: u64 = 1000;

/// Shortest password `[[mqtt.embedded_users]]` accepts: the broker may be
/// on the shop's Wi-Fi.
const MIN_MQTT_PASSWORD: usize = 8;

/// What both a sink and a subscription need to reach an external broker.
struct Connection<'a> {
    broker: &'a Spanned<String>,
    ca_file: &'a Option<Spanned<String>>,
    cert_file: &'a Option<Spanned<String>>,
    key_file: &'a Option<Spanned<String>>,
}

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
    for (key, raw) in entries {
        let at = raw.span();
        let name_span = raw.get_ref().name.as_ref().map_or(at.clone(), |n| n.span());
        let client_span = raw
            .get_ref()
            .client_id
            .as_ref()
            .map_or(at.clone(), |c| c.span());
        let sink = parse_one(loc, &key, raw, gateway_id, resolve)?;
        if sinks.iter().any(|s| s.name == sink.name) {
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
        Some(n) => {
            let text = n.get_ref();
            if !is_name(text) {
                return Err(loc.at(
                    n.span(),
                    &k("name"),
                    "use 1-64 lower-case letters, digits, `-` or `_` (the sink is then mqtt:<name>)",
                ));
            }
            Some(text.clone())
        }
        None => None,
    };
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
        MqttBroker::External(parse_endpoint(
            loc,
            key,
            &connection,
            span.clone(),
            resolve,
        )?)
    };
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
    let embedded_users = parse_embedded_users(loc, key, &m, &broker, span.clone())?;
    let window_span = m.window.as_ref().map_or(span.clone(), |w| w.span());
    let window = positive(loc, m.window, &k("window"), 64)?;
    if window > MAX_MQTT_WINDOW {
        return Err(loc.at(
            window_span,
            &k("window"),
            format!("at most {MAX_MQTT_WINDOW}"),
        ));
    }
    let relay = m.relay.map(|r| parse_relay(loc, key, r)).transpose()?;
    Ok(MqttConfig {
        name,
        broker,
        topic_prefix,
        client_id,
        username,
        password,
        embedded_users,
        keep_alive: Duration::from_secs(positive(
            loc,
            m.keep_alive_secs,
            &k("keep_alive_secs"),
            30,
        )?),
        window: window as usize,
        retry: retry(loc, key, m.retry_initial_ms, m.retry_max_ms)?,
        relay,
        health_every: Duration::from_secs(positive(
            loc,
            m.health_every_secs,
            &k("health_every_secs"),
            60,
        )?),
    })
}

/// `[connector.mqtt]` of connector `connector` (config key `key`).
pub(super) fn parse_subscription(
    loc: &Locator<'_>,
    key: &str,
    raw: Spanned<RawSubscription>,
    gateway_id: &str,
    connector: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<SubscriptionConfig, ConfigError> {
    let span = raw.span();
    let s = raw.into_inner();
    let k = |name: &str| format!("{key}.{name}");
    let broker_text = expand_env(loc, &s.broker, &k("broker"))?;
    let broker = Spanned::new(s.broker.span(), broker_text);
    let connection = Connection {
        broker: &broker,
        ca_file: &s.ca_file,
        cert_file: &s.cert_file,
        key_file: &s.key_file,
    };
    let endpoint = parse_endpoint(loc, key, &connection, span.clone(), resolve)?;
    let topic = expand_env(loc, &s.topic, &k("topic"))?;
    if !is_topic(&topic, true) {
        return Err(loc.at(
            s.topic.span(),
            &k("topic"),
            "a topic filter like chain/shop-042/payments (`+` for one level, `#` last for the rest)",
        ));
    }
    let client_id = client_id(
        loc,
        &s.client_id,
        &k("client_id"),
        format!("soundbox-{gateway_id}-in-{connector}"),
    )?;
    let (username, password) = credentials(loc, key, &s.username, &s.password, span)?;
    Ok(SubscriptionConfig {
        broker: endpoint,
        topic,
        client_id,
        username,
        password,
        keep_alive: Duration::from_secs(positive(
            loc,
            s.keep_alive_secs,
            &k("keep_alive_secs"),
            30,
        )?),
        retry: retry(loc, key, s.retry_initial_ms, s.retry_max_ms)?,
    })
}

/// An `mqtt://` or `mqtts://` broker URL with its TLS files.
fn parse_endpoint(
    loc: &Locator<'_>,
    key: &str,
    c: &Connection<'_>,
    span: std::ops::Range<usize>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Endpoint, ConfigError> {
    let k = |name: &str| format!("{key}.{name}");
    let text = c.broker.get_ref();
    let bad = |why: &str| {
        loc.at(
            c.broker.span(),
            &k("broker"),
            format!(
                "`{text}`: {why}; expected \"embedded\", mqtt://host:1883 or mqtts://host:8883"
            ),
        )
    };
    let url = reqwest::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    let secure = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(bad(&format!("unknown scheme {other}"))),
    };
    let file = |v: &Option<Spanned<String>>, name: &str| -> Result<Option<PathBuf>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        if !secure {
            return Err(loc.at(v.span(), &k(name), "only used with an mqtts:// broker"));
        }
        let path = resolve(v.get_ref());
        if !path.is_file() {
            return Err(loc.at(v.span(), &k(name), format!("no file at {}", path.display())));
        }
        Ok(Some(path))
    };
    let ca_file = file(c.ca_file, "ca_file")?;
    let cert_file = file(c.cert_file, "cert_file")?;
    let key_file = file(c.key_file, "key_file")?;
    let identity = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(ClientIdentity {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(loc.at(span, &k("key_file"), "cert_file needs its key_file"));
        }
        (None, Some(_)) => {
            return Err(loc.at(span, &k("cert_file"), "key_file needs its cert_file"));
        }
    };
    if url.path().len() > 1 || url.query().is_some() || !url.username().is_empty() {
        return Err(bad(
            "give only the host and port (username and password have their own keys)",
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
    let tls = secure.then_some(MqttTls { ca_file, identity });
    Ok(Endpoint { host, port, tls })
}

fn client_id(
    loc: &Locator<'_>,
    value: &Option<Spanned<String>>,
    key: &str,
    default: String,
) -> Result<String, ConfigError> {
    match value {
        Some(c) if c.get_ref().is_empty() || c.get_ref().len() > 128 => {
            Err(loc.at(c.span(), key, "use 1-128 characters"))
        }
        Some(c) => Ok(c.get_ref().clone()),
        None => Ok(default),
    }
}

fn credentials(
    loc: &Locator<'_>,
    key: &str,
    username: &Option<Spanned<String>>,
    password: &Option<Spanned<String>>,
    span: std::ops::Range<usize>,
) -> Result<(Option<String>, Option<Secret>), ConfigError> {
    let password_span = password.as_ref().map(Spanned::span);
    let username = username
        .as_ref()
        .map(|u| expand_env(loc, u, &format!("{key}.username")))
        .transpose()?;
    let password = password
        .as_ref()
        .map(|p| expand_env(loc, p, &format!("{key}.password")).map(Secret::new))
        .transpose()?;
    if password.is_some() && username.is_none() {
        let at = password_span.unwrap_or(span);
        return Err(loc.at(
            at,
            &format!("{key}.password"),
            "a password needs a username",
        ));
    }
    Ok((username, password))
}

fn retry(
    loc: &Locator<'_>,
    key: &str,
    initial: Option<Spanned<u64>>,
    max: Option<Spanned<u64>>,
) -> Result<RetryPolicy, ConfigError> {
    let d = RetryPolicy::default();
    Ok(RetryPolicy {
        initial: millis(
            loc,
            initial,
            &format!("{key}.retry_initial_ms"),
            Duration::from_millis(500),
        )?,
        max: millis(
            loc,
            max,
            &format!("{key}.retry_max_ms"),
            Duration::from_secs(30),
        )?,
        max_retry_after: d.max_retry_after,
    })
}

fn parse_relay(
    loc: &Locator<'_>,
    key: &str,
    raw: Spanned<RawRelay>,
) -> Result<RelayConfig, ConfigError> {
    let span = raw.span();
    let r = raw.into_inner();
    let k = |name: &str| format!("{key}.relay.{name}");
    let topic = r.topic.get_ref();
    let filled = topic.replace(SHOP_PLACEHOLDER, "shop");
    if topic.matches(SHOP_PLACEHOLDER).count() != 1 || !is_topic(&filled, false) {
        return Err(loc.at(
            r.topic.span(),
            &k("topic"),
            "a topic with {shop} once where the shop's id goes, e.g. \"chain/{shop}/payments\"",
        ));
    }
    if r.shops.is_empty() {
        return Err(loc.at(
            span,
            &k("shops"),
            "list which shop owns each account: [mqtt.relay.shops] \"0123456789\" = \"shop-042\"",
        ));
    }
    let mut shops = BTreeMap::new();
    for (account, shop) in r.shops {
        if account.get_ref().trim().is_empty() {
            return Err(loc.at(account.span(), &k("shops"), "an empty account number"));
        }
        if !is_shop_id(shop.get_ref()) {
            return Err(loc.at(
                shop.span(),
                &k(&format!("shops.{}", account.get_ref())),
                "a shop id: 1-64 letters, digits, `-` or `_` (it becomes a topic level; use the shop gateway's gateway.id)",
            ));
        }
        shops.insert(account.into_inner(), shop.into_inner());
    }
    Ok(RelayConfig {
        topic: topic.clone(),
        shops,
    })
}

/// `mqtt.embedded_users`, checked; and an embedded broker reachable from
/// the network must have some, or anyone there could read every payment.
fn parse_embedded_users(
    loc: &Locator<'_>,
    key: &str,
    m: &RawMqtt,
    broker: &MqttBroker,
    span: std::ops::Range<usize>,
) -> Result<Vec<MqttUser>, ConfigError> {
    let mut users: Vec<MqttUser> = Vec::new();
    for (i, u) in m
        .embedded_users
        .iter()
        .flat_map(|u| u.get_ref())
        .enumerate()
    {
        let key = |k: &str| format!("{key}.embedded_users[{i}].{k}");
        let username = expand_env(loc, &u.username, &key("username"))?;
        if username.is_empty() || username.len() > 128 || username.chars().any(char::is_control) {
            return Err(loc.at(u.username.span(), &key("username"), "use 1-128 characters"));
        }
        if users.iter().any(|v| v.username == username) {
            return Err(loc.at(
                u.username.span(),
                &key("username"),
                format!("`{username}` is listed twice"),
            ));
        }
        let password = expand_env(loc, &u.password, &key("password"))?;
        if password.chars().count() < MIN_MQTT_PASSWORD || password.len() > 1024 {
            return Err(loc.at(
                u.password.span(),
                &key("password"),
                format!("use {MIN_MQTT_PASSWORD}-1024 characters, e.g. \"${{POS_MQTT_PASSWORD}}\" from the environment file"),
            ));
        }
        users.push(MqttUser {
            username,
            password: Secret::new(password),
        });
    }
    if let MqttBroker::Embedded { listen } = broker
        && !listen.ip().is_loopback()
        && users.is_empty()
    {
        let at = m.embedded_listen.as_ref().map_or(span, |l| l.span());
        return Err(loc.at(
            at,
            &format!("{key}.embedded_listen"),
            format!(
                "{listen} is reachable from the network, so the embedded broker needs accounts: \
                 add [[mqtt.embedded_users]] with a username and password for the POS screens, \
                 or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(users)
}

/// A sink or connector name: 1-64 lower-case letters, digits, `-`, `_`.
pub(super) fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
}

/// A gateway or shop id: it becomes one MQTT topic level.
pub(super) fn is_shop_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Topic levels separated by `/`; with `filter`, `+` as a whole level and
/// `#` as the last one.
fn is_topic(text: &str, filter: bool) -> bool {
    if text.is_empty() || text.len() > 1024 || text.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = text.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        let wildcard = filter && (*level == "+" || (*level == "#" && i == levels.len() - 1));
        wildcard || (!level.is_empty() && !level.contains(['+', '#']))
    })
}

/// A subscription's client id differs from every sink's and earlier
/// subscription's on the same broker: a broker lets one client id connect at
/// a time, and two would take turns kicking each other off.
pub(super) fn check_client_id<'a>(
    sinks: &[MqttConfig],
    earlier: impl Iterator<Item = &'a SubscriptionConfig>,
    new: &SubscriptionConfig,
) -> Result<(), String> {
    let broker = new.broker.to_string();
    let taken_by_sink = sinks.iter().find(|s| {
        s.client_id == new.client_id
            && matches!(&s.broker, MqttBroker::External(e) if e.to_string() == broker)
    });
    if let Some(sink) = taken_by_sink {
        return Err(format!(
            "`{}` is the client id of sink {} on the same broker; a broker lets one client id connect at a time",
            new.client_id,
            sink.sink_name()
        ));
    }
    let mut earlier = earlier;
    if earlier.any(|s| s.client_id == new.client_id && s.broker.to_string() == broker) {
        return Err(format!(
            "`{}` is the client id of another connector's subscription on the same broker",
            new.client_id
        ));
    }
    Ok(())
}
