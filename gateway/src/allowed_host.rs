//! `allowed_hosts` entries: what a connector's config may list and how a
//! request's host is compared with them. The config checks each entry when
//! it loads; the plugins' `http-client` (`connectors::http_client`) matches
//! every request URL against the same parsed form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reqwest::Url;

/// A host as the policy compares it: a lower-case DNS name without the
/// trailing dot, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Domain(String),
    Ip(IpAddr),
}

impl HostName {
    /// From a host already normalised by the URL parser (`Url::host_str`):
    /// IPv4 in dotted form (decimal, octal and hex forms folded), IPv6 in
    /// brackets and compressed, names lower-case and IDNA-encoded.
    pub fn from_url_host(host: &str) -> HostName {
        if let Some(Ok(ip)) = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::parse::<Ipv6Addr>)
        {
            return HostName::Ip(IpAddr::V6(ip));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return HostName::Ip(IpAddr::V4(ip));
        }
        HostName::Domain(host.trim_end_matches('.').to_ascii_lowercase())
    }

    /// `localhost` or a loopback address (IPv4-mapped included).
    pub fn is_loopback(&self) -> bool {
        match self {
            HostName::Domain(d) => d == "localhost",
            HostName::Ip(ip) => canonical_ip(*ip).is_loopback(),
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Domain(d) => f.write_str(d),
            HostName::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Why an `allowed_hosts` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    #[error("empty host")]
    Empty,
    #[error(
        "expected host or host:port, like api.example.vn, *.example.vn, \
         127.0.0.1:8080 or [::1]:8080 (no scheme, path or user)"
    )]
    NotAHost,
    #[error("write an IPv6 address in brackets: [{0}] or [{0}]:8080")]
    UnbracketedIpv6(String),
    #[error("bad port `{0}`: expected 1-65535")]
    BadPort(String),
    #[error("`{0}` is not a valid host name or IP address")]
    BadHost(String),
    #[error("a wildcard needs a domain after `*.`, not an IP address")]
    WildcardIp,
}

/// One `allowed_hosts` entry: `host`, `host:port`, `[v6]`, `[v6]:port`,
/// `*.suffix` or `*.suffix:port`. Hosts are compared after the same
/// normalisation as request URLs (lower case, trailing dot and IPv6 brackets
/// dropped, IPv4 forms folded). A bare host allows only the scheme's default
/// port (443 for https, 80 for http), so listing `localhost` does not open
/// every service on the box; another port must be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// For a wildcard, the suffix after `*.`.
    host: HostName,
    wildcard: bool,
    /// `None`: the scheme's default port only.
    port: Option<u16>,
}

impl AllowedHost {
    /// Parses and normalises a config entry.
    pub fn parse(entry: &str) -> Result<AllowedHost, AllowedHostError> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(AllowedHostError::Empty);
        }
        if entry.contains("://")
            || entry.chars().any(|c| {
                matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control()
            })
        {
            return Err(AllowedHostError::NotAHost);
        }
        let (wildcard, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or(AllowedHostError::NotAHost)?;
            let after = &inner[close + 1..];
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(AllowedHostError::NotAHost)?),
            };
            (&rest[..close + 2], port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(AllowedHostError::UnbracketedIpv6(rest.to_string()));
                }
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = port.map(parse_port).transpose()?;
        let host = parse_host(host)?;
        if wildcard && matches!(host, HostName::Ip(_)) {
            return Err(AllowedHostError::WildcardIp);
        }
        Ok(AllowedHost {
            host,
            wildcard,
            port,
        })
    }

    /// Whether a request to `host` on `port` (scheme default `default_port`)
    /// is allowed by this entry.
    pub fn allows(&self, host: &HostName, port: u16, default_port: Option<u16>) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => default_port == Some(port),
        };
        port_ok && self.host_matches(host)
    }

    pub fn host_matches(&self, host: &HostName) -> bool {
        match (&self.host, host) {
            (HostName::Domain(suffix), HostName::Domain(name)) if self.wildcard => {
                name.len() > suffix.len()
                    && name.ends_with(suffix.as_str())
                    && name[..name.len() - suffix.len()].ends_with('.')
            }
            (pattern, host) => !self.wildcard && pattern == host,
        }
    }
}

/// The canonical text of an entry, as the config stores it.
impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Result<u16, AllowedHostError> {
    let bad = || AllowedHostError::BadPort(text.to_string());
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// Normalises a host the way the URL parser does for request URLs, so both
/// sides of the comparison agree.
fn parse_host(host: &str) -> Result<HostName, AllowedHostError> {
    let bad = || AllowedHostError::BadHost(host.to_string());
    let bracketed = host.starts_with('[');
    let trimmed = if bracketed {
        host
    } else {
        host.strip_suffix('.').unwrap_or(host)
    };
    if trimmed.is_empty() {
        return Err(AllowedHostError::Empty);
    }
    let url = Url::parse(&format!("https://{trimmed}/")).map_err(|_| bad())?;
    let parsed = url.host_str().ok_or_else(bad)?;
    if url.port().is_some() || url.path() != "/" {
        return Err(bad());
    }
    let name = HostName::from_url_host(parsed);
    if let HostName::Domain(d) = &name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !d.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(name)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it reaches.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
