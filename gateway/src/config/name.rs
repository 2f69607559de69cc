//! Names and ids the config gives things, each checked by its type, and
//! the one check that a name is not taken twice.
//!
//! The rules live here; the message, which says what the name becomes
//! (a webhook path, a sink, a topic level), is the caller's.

use std::collections::BTreeSet;
use std::fmt;

use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;

/// A sink or connector name: 1-64 lower-case letters, digits, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str) -> Option<Name> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        valid.then(|| Name(text.to_string()))
    }

    /// The name at `raw`, or an error at `key` saying `rule`.
    pub(super) fn at(
        loc: &Locator<'_>,
        raw: &Spanned<String>,
        key: &str,
        rule: &str,
    ) -> Result<Name, ConfigError> {
        Name::parse(raw.get_ref()).ok_or_else(|| loc.at(raw.span(), key, rule))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gateway or shop id: 1-64 letters, digits, `-`, `_`. It becomes one
/// MQTT topic level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicId(String);

impl TopicId {
    pub fn parse(text: &str) -> Option<TopicId> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        valid.then(|| TopicId(text.to_string()))
    }

    /// The id at `raw`, or an error at `key` saying `rule`.
    pub(super) fn at(
        loc: &Locator<'_>,
        raw: &Spanned<String>,
        key: &str,
        rule: &str,
    ) -> Result<TopicId, ConfigError> {
        TopicId::parse(raw.get_ref()).ok_or_else(|| loc.at(raw.span(), key, rule))
    }
}

impl From<TopicId> for String {
    fn from(id: TopicId) -> String {
        id.0
    }
}

/// Text that is not empty or only spaces: an account number, a speaker's
/// hardware id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonBlank(String);

impl NonBlank {
    pub fn parse(text: &str) -> Option<NonBlank> {
        (!text.trim().is_empty()).then(|| NonBlank(text.to_string()))
    }
}

impl From<NonBlank> for String {
    fn from(text: NonBlank) -> String {
        text.0
    }
}

/// The names taken so far in one namespace (connectors, sinks, a broker's
/// accounts): a second use of one is the caller's error at its line.
#[derive(Debug)]
pub(super) struct Taken<T: Ord>(BTreeSet<T>);

impl<T: Ord> Default for Taken<T> {
    fn default() -> Self {
        Taken(BTreeSet::new())
    }
}

impl<T: Ord> Taken<T> {
    /// Also taken from the start, e.g. the built-in sinks' names.
    pub(super) fn reserving(reserved: impl IntoIterator<Item = T>) -> Self {
        Taken(reserved.into_iter().collect())
    }

    /// Takes `name`; false if it was taken already.
    pub(super) fn take(&mut self, name: T) -> bool {
        self.0.insert(name)
    }
}
