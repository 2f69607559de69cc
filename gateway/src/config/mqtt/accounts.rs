//! `[[mqtt.embedded_users]]`: accounts for the embedded broker's clients
//! (POS screens).

use serde::Deserialize;
use toml::Spanned;

use super::super::ConfigError;
use super::super::locate::Locator;
use super::super::name::Taken;
use super::super::values::expand_env;
use super::{MqttBroker, RawMqtt};
use crate::secret::Secret;

/// One `[[mqtt.embedded_users]]` account: a client of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUser {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqttUser {
    username: Spanned<String>,
    password: Spanned<String>,
}

/// Shortest password `[[mqtt.embedded_users]]` accepts: the broker may be
/// on the shop's Wi-Fi.
const MIN_MQTT_PASSWORD: usize = 8;

/// `mqtt.embedded_users`, checked; and an embedded broker reachable from
/// the network must have some, or anyone there could read every payment.
pub(super) fn parse(
    loc: &Locator<'_>,
    key: &str,
    m: &RawMqtt,
    broker: &MqttBroker,
    span: std::ops::Range<usize>,
) -> Result<Vec<MqttUser>, ConfigError> {
    let mut users: Vec<MqttUser> = Vec::new();
    let mut taken = Taken::default();
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
        if !taken.take(username.clone()) {
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
