//! `[connector.mqtt]`: a connector's input from a broker subscription.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::super::ConfigError;
use super::super::locate::Locator;
use super::super::values::{expand_env, secs};
use super::connection::{Connection, client_id, credentials, is_topic, parse_endpoint, retry};
use super::{Endpoint, MqttBroker, MqttConfig};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawSubscription {
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

/// `[connector.mqtt]` of connector `connector` (config key `key`).
pub(in crate::config) fn parse_subscription(
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
        keep_alive: secs(loc, s.keep_alive_secs, &k("keep_alive_secs"), 30)?,
        retry: retry(loc, key, s.retry_initial_ms, s.retry_max_ms)?,
    })
}

/// A subscription's client id differs from every sink's and earlier
/// subscription's on the same broker: a broker lets one client id connect at
/// a time, and two would take turns kicking each other off.
pub(in crate::config) fn check_client_id<'a>(
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
