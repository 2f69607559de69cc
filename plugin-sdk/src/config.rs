//! The connector's own table from the gateway config (`[connector.config]`).
//! Strings come back as they are; numbers, booleans and tables as JSON text.

use crate::ConnectorError;

/// The value of `key`, if set.
pub fn get(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::config::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| env.config.get(key).cloned());
}

/// Every key that is set. Needs a 0.1.1 host.
pub fn keys() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::config::keys();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| env.config.keys().cloned().collect());
}

/// The value of `key`, or a [`ConnectorError::Fatal`] naming it: a missing
/// setting is the operator's mistake, not the sender's.
pub fn require(key: &str) -> Result<String, ConnectorError> {
    get(key).ok_or_else(|| ConnectorError::Fatal(format!("config key `{key}` is not set")))
}

/// The value of `key`, or `default`.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}
