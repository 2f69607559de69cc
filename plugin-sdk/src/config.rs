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

/// Whether the shop's config says, in words, that this connector may take
/// requests it cannot verify (`allow_unsigned = true` in `[connector.config]`).
///
/// A connector that can check its sender (an API key, a signature) must do
/// so unless this is true: an unsigned webhook is a payment anyone on the
/// network can invent. The gateway accepts the key only while its webhook
/// listener is on loopback, and warns at every start while it is on.
pub fn allow_unsigned() -> bool {
    get("allow_unsigned").is_some_and(|v| v.trim() == "true")
}

/// The error for a connector asked to skip verification without
/// [`allow_unsigned`]: a config mistake (500, connector flagged), not the
/// sender's.
pub fn unsigned_refused(what: &str) -> ConnectorError {
    ConnectorError::Fatal(format!(
        "{what}: this connector would accept unsigned requests; set the provider's key or \
         secret, or (for a demo on loopback only) `allow_unsigned = true`"
    ))
}
