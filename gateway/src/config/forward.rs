//! `[[forward]]`: HTTP endpoints every payment is POSTed to.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::name::{Name, Taken};
use super::values::{expand_env, expand_table, millis, retry};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    name: Spanned<String>,
    url: Spanned<String>,
    max_age_secs: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    #[serde(default)]
    headers: Option<Spanned<toml::Table>>,
}

/// Names reserved for the built-in sinks.
const RESERVED_SINK_NAMES: [&str; 2] = ["speaker", "mqtt"];

pub(super) fn parse(
    loc: &Locator<'_>,
    raw: Vec<RawForward>,
) -> Result<Vec<ForwardConfig>, ConfigError> {
    let mut names = Taken::reserving(RESERVED_SINK_NAMES.map(str::to_string));
    let mut forwards = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("forward[{i}].{k}");
        let name = Name::at(
            loc,
            &f.name,
            &key("name"),
            "use 1-64 lower-case letters, digits, `-` or `_`",
        )?;
        if !names.take(name.to_string()) {
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
            for (name, value) in expand_table(loc, table, &key("headers"))? {
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
        let retry = retry(
            loc,
            &format!("forward[{i}]"),
            f.retry_initial_ms,
            f.retry_max_ms,
            (d.initial, d.max),
        )?;
        forwards.push(ForwardConfig {
            name: name.into(),
            url,
            headers,
            max_age: f
                .max_age_secs
                .map(|v| Duration::from_secs(v.into_inner()))
                .filter(|d| !d.is_zero()),
            timeout: millis(
                loc,
                f.timeout_ms,
                &key("timeout_ms"),
                Duration::from_secs(10),
            )?,
            retry,
        });
    }
    Ok(forwards)
}
