//! The connection to a broker elsewhere, as a sink and a subscription
//! both give it: the `mqtt://` or `mqtts://` URL, TLS files, login, client
//! id, reconnect backoff; and what a topic may look like.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::ConfigError;
use super::super::locate::Locator;
use super::super::values::{self, expand_env};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

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

/// What both a sink and a subscription need to reach an external broker.
pub(super) struct Connection<'a> {
    pub(super) broker: &'a Spanned<String>,
    pub(super) ca_file: &'a Option<Spanned<String>>,
    pub(super) cert_file: &'a Option<Spanned<String>>,
    pub(super) key_file: &'a Option<Spanned<String>>,
}

/// An `mqtt://` or `mqtts://` broker URL with its TLS files.
pub(super) fn parse_endpoint(
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

pub(super) fn client_id(
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

pub(super) fn credentials(
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

/// `<key>.retry_initial_ms` and `<key>.retry_max_ms`: reconnect backoff.
pub(super) fn retry(
    loc: &Locator<'_>,
    key: &str,
    initial: Option<Spanned<u64>>,
    max: Option<Spanned<u64>>,
) -> Result<RetryPolicy, ConfigError> {
    values::retry(
        loc,
        key,
        initial,
        max,
        (Duration::from_millis(500), Duration::from_secs(30)),
    )
}

/// Topic levels separated by `/`; with `filter`, `+` as a whole level and
/// `#` as the last one.
pub(super) fn is_topic(text: &str, filter: bool) -> bool {
    if text.is_empty() || text.len() > 1024 || text.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = text.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        let wildcard = filter && (*level == "+" || (*level == "#" && i == levels.len() - 1));
        wildcard || (!level.is_empty() && !level.contains(['+', '#']))
    })
}
