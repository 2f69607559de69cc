//! The connector's config (`[connector.config]`), checked. Every key is
//! optional; a mistake in one is a [`ConnectorError::Fatal`] (500, connector
//! flagged), whatever the message.

use soundbox_plugin_sdk::{ConnectorError, config};

/// Every key this plugin reads.
pub const KNOWN_KEYS: &[&str] = &["expect_topic", "accounts", "allow_unsigned"];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Take messages only from this topic (`mqtt-topic` header).
    pub expect_topic: Option<String>,
    /// Take payments only for these accounts.
    pub accounts: Option<Vec<String>>,
    /// Also take HTTP requests to `/hooks/<connector>` (demos on loopback).
    pub allow_unsigned: bool,
}

fn fatal(message: String) -> ConnectorError {
    ConnectorError::Fatal(message)
}

impl Settings {
    pub fn load() -> Result<Settings, ConnectorError> {
        let mut unknown: Vec<String> = config::keys()
            .into_iter()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(fatal(format!(
                "unknown config key(s): {} (typo?)",
                unknown.join(", ")
            )));
        }

        let expect_topic = match config::get("expect_topic") {
            None => None,
            Some(topic) => {
                let topic = topic.trim().to_string();
                if topic.is_empty() {
                    return Err(fatal(
                        "config `expect_topic` is empty: leave it out, or give the shop's topic \
                         (e.g. `chain/shop-042/payments`)"
                            .into(),
                    ));
                }
                // A message is published on a topic name, never on a filter:
                // a wildcard here would refuse every message.
                if topic.contains(['+', '#']) {
                    return Err(fatal(format!(
                        "config `expect_topic` = `{topic}` has a wildcard (`+` or `#`); it must \
                         be the one topic this connector subscribes to"
                    )));
                }
                Some(topic)
            }
        };

        let accounts = match config::get("accounts") {
            None => None,
            Some(text) => Some(parse_accounts(&text)?),
        };

        let allow_unsigned = match config::get("allow_unsigned").as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(fatal(format!(
                    "config `allow_unsigned` is `{other}`; expected true or false"
                )));
            }
        };

        Ok(Settings {
            expect_topic,
            accounts,
            allow_unsigned,
        })
    }

    /// With `accounts`, a payment for any other account is refused: a relay
    /// misconfiguration must not make this shop announce another's payment.
    pub fn check_account(&self, account: &str) -> Result<(), ConnectorError> {
        match &self.accounts {
            Some(accounts) if !accounts.iter().any(|a| a == account) => {
                Err(ConnectorError::Unauthorized(format!(
                    "account {} is not this shop's",
                    crate::event::shown(account)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// `"0123, 0456"` or, from a TOML array, its JSON text `["0123","0456"]`.
pub fn parse_accounts(text: &str) -> Result<Vec<String>, ConnectorError> {
    let text = text.trim();
    let accounts: Vec<String> = if text.starts_with('[') {
        let list: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| fatal(format!("config `accounts` is not a list: {e}")))?;
        list.into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s.trim().to_string()),
                _ => Err(fatal(
                    "config `accounts`: a list must hold strings (account numbers in quotes)"
                        .into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect()
    } else {
        text.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    };
    if accounts.is_empty() {
        return Err(fatal(
            "config `accounts` lists no account: leave it out, or list the shop's account \
             numbers (`accounts = \"0123456789,0987654321\"`)"
                .into(),
        ));
    }
    Ok(accounts)
}
