//! The `http-client` import: outgoing HTTP on a plugin's behalf, under a
//! policy. Only hosts (and ports) in the connector's `allowed_hosts`; https
//! except to loopback; no ambient proxy; after DNS, private addresses are
//! refused unless allowed (so a hostile DNS answer cannot point a plugin at
//! the shop's LAN) and loopback is reached only through a loopback host
//! listed with its port; every redirect is checked again; `Host` and
//! hop-by-hop headers are dropped both ways; response size and time are
//! capped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Url, redirect};

use super::bindings::soundbox::connector::http_client::HttpError;
use super::bindings::types::{HttpRequest, HttpResponse};
use crate::allowed_host::{AllowedHost, HostName, canonical_ip};

/// Largest response body handed to a plugin.
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Longest a single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_REDIRECTS: usize = 5;

/// Who a connector may talk to.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// `allowed_hosts` entries (see [`AllowedHost`]); entries that do not
    /// parse match nothing.
    pub allowed_hosts: Vec<String>,
    pub allow_private_addresses: bool,
}

/// The policy in force: entries parsed once.
#[derive(Debug)]
struct Policy {
    allowed: Vec<AllowedHost>,
    allow_private_addresses: bool,
}

impl Policy {
    fn new(config: &HttpPolicy) -> Policy {
        let allowed = config
            .allowed_hosts
            .iter()
            .filter_map(|entry| match AllowedHost::parse(entry) {
                Ok(host) => Some(host),
                Err(e) => {
                    // Config load refuses these; a bad `--allow-host` ends here.
                    tracing::warn!(entry = %entry, error = %e, "allowed_hosts entry ignored");
                    None
                }
            })
            .collect();
        Policy {
            allowed,
            allow_private_addresses: config.allow_private_addresses,
        }
    }

    /// Checks scheme, host and port of a URL (the first one or a redirect
    /// target).
    fn check_url(&self, url: &Url) -> Result<(), String> {
        let raw = url.host_str().ok_or("URL has no host")?;
        let host = HostName::from_url_host(raw);
        let default_port = match url.scheme() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let port = url.port_or_known_default().unwrap_or(0);
        if !self
            .allowed
            .iter()
            .any(|entry| entry.allows(&host, port, default_port))
        {
            let hint = if self.allowed.iter().any(|e| e.host_matches(&host)) {
                format!(
                    " (a host without a port allows only the scheme's default port; list `{host}:{port}`)"
                )
            } else {
                String::new()
            };
            return Err(format!(
                "host `{host}` port {port} is not in this connector's allowed_hosts{hint}"
            ));
        }
        let loopback = host.is_loopback();
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => return Err(format!("plain http to `{host}`: only https leaves the box")),
            other => return Err(format!("scheme `{other}` is not allowed")),
        }
        if let HostName::Ip(ip) = host {
            self.check_ip(ip, loopback)?;
        }
        Ok(())
    }

    /// Checks an address the connection would go to. Loopback only when the
    /// URL's host is itself loopback: `allow_private_addresses` opens the
    /// LAN, not the gateway's own admin API to a name that resolves there.
    fn check_ip(&self, ip: IpAddr, host_is_loopback: bool) -> Result<(), String> {
        let ip = canonical_ip(ip);
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(format!("address {ip} is never reachable from a plugin"));
        }
        if ip.is_loopback() {
            return if host_is_loopback {
                Ok(())
            } else {
                Err(format!(
                    "address {ip} is loopback; only a loopback host (localhost, 127.0.0.1, [::1]) listed with its port reaches it"
                ))
            };
        }
        if is_private(ip) && !self.allow_private_addresses {
            return Err(format!(
                "address {ip} is private; set allow_private_addresses to reach it"
            ));
        }
        Ok(())
    }
}

/// Loopback, private, link-local, CGNAT, unspecified, multicast, reserved,
/// unique-local, IPv4-compatible: anything that is not the public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            // Mapped (::ffff:a.b.c.d) and the old compatible form (::a.b.c.d).
            if let Some(v4) = v6.to_ipv4() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names, then drops addresses the policy refuses.
struct PolicyResolver {
    policy: Arc<Policy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let loopback = HostName::from_url_host(&host).is_loopback();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.check_ip(a.ip(), loopback).is_ok())
                .collect();
            if allowed.is_empty() {
                let reason = match addrs.first() {
                    Some(a) => policy.check_ip(a.ip(), loopback).err().unwrap_or_default(),
                    None => format!("`{host}` has no addresses"),
                };
                return Err(
                    Box::new(PolicyRefusal(reason)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[derive(Debug)]
struct PolicyRefusal(String);

impl std::fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyRefusal {}

/// One connector's HTTP client: the policy baked into DNS and redirects.
#[derive(Clone)]
pub struct PluginHttp {
    policy: Arc<Policy>,
    client: reqwest::Client,
}

impl std::fmt::Debug for PluginHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHttp")
            .field("policy", &self.policy)
            .finish()
    }
}

impl PluginHttp {
    pub fn new(policy: HttpPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(Policy::new(&policy));
        let redirect_policy = policy.clone();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // No ambient proxy (HTTPS_PROXY and friends): a proxy would
            // resolve the name itself, out of reach of the address check.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .redirect(redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error(PolicyRefusal("too many redirects".into()))
                } else if let Err(reason) = redirect_policy.check_url(attempt.url()) {
                    attempt.error(PolicyRefusal(format!("redirect refused: {reason}")))
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("soundbox-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(PluginHttp { policy, client })
    }

    /// Sends a plugin's request under the policy.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut url = Url::parse(&request.path)
            .map_err(|e| HttpError::Other(format!("bad URL `{}`: {e}", request.path)))?;
        if !request.query.is_empty() {
            let joined = match url.query() {
                Some(q) => format!("{q}&{}", request.query),
                None => request.query.clone(),
            };
            url.set_query(Some(&joined));
        }
        self.policy.check_url(&url).map_err(HttpError::NotAllowed)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| HttpError::Other(format!("bad method `{}`", request.method)))?;
        let mut builder = self.client.request(method, url);
        // Host, framing and hop-by-hop headers are the client's to set.
        for (name, value) in end_to_end(&request.headers, &["content-length"]) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body);
        }
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let headers = end_to_end(&headers, &[]);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus `Host`: passed on, they would let a plugin pick another virtual
/// host or smuggle framing, or hand it the connection's details.
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// `headers` without `Host`, hop-by-hop headers, those a `Connection`
/// header names, and `also`.
fn end_to_end(headers: &[(String, String)], also: &[&str]) -> Vec<(String, String)> {
    let named: Vec<String> = headers
        .iter()
        .filter(|(k, _)| {
            k.trim().eq_ignore_ascii_case("connection")
                || k.trim().eq_ignore_ascii_case("proxy-connection")
        })
        .flat_map(|(_, v)| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.trim().to_ascii_lowercase();
            !HOP_BY_HOP.contains(&k.as_str()) && !also.contains(&k.as_str()) && !named.contains(&k)
        })
        .cloned()
        .collect()
}

fn classify(error: reqwest::Error) -> HttpError {
    // A policy refusal deep in DNS or a redirect surfaces as the error source.
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<PolicyRefusal>() {
            return HttpError::NotAllowed(refusal.0.clone());
        }
        source = e.source();
    }
    if error.is_timeout() {
        HttpError::Timeout
    } else if error.is_connect() {
        HttpError::Connect(error.to_string())
    } else {
        HttpError::Other(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], private: bool) -> Policy {
        Policy::new(&HttpPolicy {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allow_private_addresses: private,
        })
    }

    fn check(p: &Policy, url: &str) -> Result<(), String> {
        p.check_url(&Url::parse(url).expect("url"))
    }

    #[test]
    fn allowlist_and_wildcards() {
        let p = policy(&["userapi.sepay.vn", "*.casso.vn"], false);
        assert!(check(&p, "https://userapi.sepay.vn/v2/transactions").is_ok());
        assert!(check(&p, "https://USERAPI.sepay.vn/").is_ok());
        assert!(check(&p, "https://userapi.sepay.vn./").is_ok());
        assert!(check(&p, "https://userapi.sepay.vn:443/").is_ok());
        assert!(check(&p, "https://oauth.casso.vn/").is_ok());
        assert!(
            check(&p, "https://casso.vn/").is_err(),
            "wildcard needs a subdomain"
        );
        assert!(check(&p, "https://evilcasso.vn/").is_err());
        assert!(check(&p, "https://sepay.vn/").is_err());
        assert!(check(&policy(&[], false), "https://userapi.sepay.vn/").is_err());
    }

    #[test]
    fn https_only_except_loopback() {
        let p = policy(
            &["userapi.sepay.vn:80", "127.0.0.1:9000", "localhost:9000"],
            false,
        );
        assert!(check(&p, "http://userapi.sepay.vn/").is_err());
        assert!(check(&p, "http://127.0.0.1:9000/x").is_ok());
        assert!(check(&p, "http://localhost:9000/x").is_ok());
        assert!(check(&p, "ftp://userapi.sepay.vn:80/").is_err());
    }

    #[test]
    fn entries_are_normalised() {
        let ok = |entry: &str| AllowedHost::parse(entry).map(|h| h.to_string());
        assert_eq!(ok(" UserAPI.SePay.vn. ").as_deref(), Ok("userapi.sepay.vn"));
        assert_eq!(ok("*.Casso.vn:8443").as_deref(), Ok("*.casso.vn:8443"));
        assert_eq!(ok("[::1]").as_deref(), Ok("[::1]"));
        assert_eq!(ok("[0:0::1]:8080").as_deref(), Ok("[::1]:8080"));
        assert_eq!(ok("127.0.0.1:9000").as_deref(), Ok("127.0.0.1:9000"));
        assert_eq!(ok("2130706433").as_deref(), Ok("127.0.0.1"));
        assert_eq!(ok("0x7f.1:80").as_deref(), Ok("127.0.0.1:80"));
        for bad in [
            "",
            "https://x.vn",
            "x.vn/path",
            "user@x.vn",
            "::1",
            "[::1",
            "[::1]8080",
            "x.vn:",
            "x.vn:0",
            "x.vn:70000",
            "x.vn:+80",
            "*.127.0.0.1",
            "*",
            "*.",
            "a..vn",
            "bad*.vn",
            "a b.vn",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "`{bad}` accepted");
        }
    }

    #[test]
    fn bracketed_ipv6_entries_match() {
        // `[::1]` used to be accepted and then never match.
        let p = policy(&["[::1]", "[::1]:8080"], false);
        assert!(check(&p, "http://[::1]/").is_ok());
        assert!(check(&p, "http://[::1]:8080/").is_ok());
        assert!(check(&p, "http://[0:0::1]:8080/").is_ok());
        assert!(check(&p, "http://[::1]:8081/").is_err());
    }

    #[test]
    fn a_bare_host_allows_only_the_default_port() {
        // `localhost` used to open all of loopback, the admin API included.
        let p = policy(&["localhost", "127.0.0.1", "userapi.sepay.vn"], false);
        let e = check(&p, "http://localhost:9100/admin").expect_err("other port");
        assert!(
            e.contains("allowed_hosts") && e.contains("localhost:9100"),
            "{e}"
        );
        assert!(check(&p, "http://127.0.0.1:9100/").is_err());
        assert!(check(&p, "http://2130706433:9100/").is_err());
        assert!(check(&p, "http://localhost/").is_ok());
        assert!(check(&p, "http://127.0.0.1/").is_ok());
        assert!(check(&p, "https://userapi.sepay.vn:8443/").is_err());
        let p = policy(&["localhost:9000", "*.casso.vn:8443"], false);
        assert!(check(&p, "http://localhost:9000/").is_ok());
        assert!(check(&p, "http://localhost/").is_err());
        assert!(check(&p, "https://oauth.casso.vn:8443/").is_ok());
        assert!(check(&p, "https://oauth.casso.vn/").is_err());
    }

    #[test]
    fn other_spellings_of_an_address_are_the_same_address() {
        let p = policy(&["127.0.0.1:9000"], false);
        for url in [
            "http://2130706433:9000/",
            "http://0x7f000001:9000/",
            "http://0177.0.0.1:9000/",
            "http://127.1:9000/",
        ] {
            assert!(check(&p, url).is_ok(), "{url}");
        }
        // A mapped address is not the listed one, and is not plain-http loopback.
        assert!(check(&p, "http://[::ffff:127.0.0.1]:9000/").is_err());
        let p = policy(&["[::ffff:127.0.0.1]:9000", "[::ffff:10.0.0.1]"], false);
        assert!(check(&p, "http://[::ffff:127.0.0.1]:9000/").is_ok());
        assert!(check(&p, "https://[::ffff:10.0.0.1]/").is_err());
    }

    #[test]
    fn private_literals_refused_unless_allowed() {
        assert!(check(&policy(&["192.168.1.10"], false), "https://192.168.1.10/").is_err());
        assert!(check(&policy(&["192.168.1.10"], true), "https://192.168.1.10/").is_ok());
        assert!(
            check(
                &policy(&["169.254.169.254"], false),
                "https://169.254.169.254/"
            )
            .is_err()
        );
    }

    #[test]
    fn unspecified_and_loopback_by_other_names_are_refused_even_with_private_allowed() {
        let p = policy(&["0.0.0.0:9100", "[::]:9100", "bank.example.vn"], true);
        assert!(check(&p, "https://0.0.0.0:9100/").is_err());
        assert!(check(&p, "https://[::]:9100/").is_err());
        for ip in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            assert!(
                p.check_ip(ip.parse().expect("ip"), false).is_err(),
                "{ip} through a DNS name"
            );
        }
        assert!(
            p.check_ip("192.168.1.10".parse().expect("ip"), false)
                .is_ok()
        );
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "103.21.244.1", "2001:4860:4860::8888"] {
            assert!(!is_private(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn dns_answer_pointing_at_loopback_is_refused() {
        let p = Arc::new(policy(&["localhost:9000"], false));
        let resolver = PolicyResolver { policy: p.clone() };
        let name: Name = "localhost".parse().expect("name");
        assert!(
            resolver.resolve(name).await.is_ok(),
            "loopback name to loopback is allowed"
        );
        assert!(
            p.check_ip("127.0.0.1".parse().expect("ip"), false).is_err(),
            "another name resolving to loopback is refused"
        );
    }

    /// A loopback server: answers every connection with `reply` and hands
    /// each raw request (head and body) to the test.
    async fn server(reply: &'static str) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // Head, then as much body as Content-Length says.
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if raw.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&raw).into_owned());
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        (port, rx)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

    fn get(url: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: url.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn client(hosts: &[String]) -> PluginHttp {
        PluginHttp::new(HttpPolicy {
            allowed_hosts: hosts.to_vec(),
            allow_private_addresses: false,
        })
        .expect("client")
    }

    #[tokio::test]
    async fn a_listed_port_is_reached_and_another_is_not() {
        let (allowed, mut seen) = server(OK).await;
        let (other, mut other_seen) = server(OK).await;
        let http = client(&[format!("127.0.0.1:{allowed}"), "localhost".into()]);
        let reply = http
            .send(get(&format!("http://127.0.0.1:{allowed}/x")))
            .await
            .expect("allowed port");
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
        assert!(seen.recv().await.is_some());
        for url in [
            format!("http://127.0.0.1:{other}/"),
            format!("http://localhost:{other}/"),
        ] {
            match http.send(get(&url)).await {
                Err(HttpError::NotAllowed(reason)) => {
                    assert!(reason.contains("allowed_hosts"), "{reason}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(
            other_seen.try_recv().is_err(),
            "the other port saw a request"
        );
    }

    #[tokio::test]
    async fn a_redirect_to_another_port_is_refused() {
        let (other, mut other_seen) = server(OK).await;
        let redirect: &'static str = Box::leak(
            format!(
                "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{other}/admin\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (port, _seen) = server(redirect).await;
        let http = client(&[format!("127.0.0.1:{port}")]);
        match http.send(get(&format!("http://127.0.0.1:{port}/"))).await {
            Err(HttpError::NotAllowed(reason)) => assert!(reason.contains("redirect"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(other_seen.try_recv().is_err(), "the redirect was followed");
    }

    #[test]
    fn end_to_end_drops_connection_named_headers_in_any_case() {
        let headers: Vec<(String, String)> = [
            ("HOST", "x"),
            ("Connection", "keep-alive, X-Secret ,"),
            ("Proxy-Connection", "X-Other"),
            ("x-secret", "1"),
            ("X-Other", "2"),
            ("TE", "trailers"),
            ("Content-Length", "3"),
            ("Content-Type", "text/plain"),
            ("Authorization", "Bearer t"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept = |also: &[&str]| -> Vec<String> {
            end_to_end(&headers, also)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(kept(&["content-length"]), ["Content-Type", "Authorization"]);
        assert_eq!(
            kept(&[]),
            ["Content-Length", "Content-Type", "Authorization"]
        );
    }

    #[tokio::test]
    async fn host_and_hop_by_hop_headers_are_dropped_both_ways() {
        const REPLY: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\
            connection: close, X-Hop\r\nkeep-alive: timeout=5\r\nx-hop: secret\r\n\
            proxy-authenticate: Basic\r\ntrailer: x-t\r\nx-keep: yes\r\n\r\nok";
        let (port, mut seen) = server(REPLY).await;
        let http = client(&[format!("127.0.0.1:{port}")]);
        let headers = [
            ("Host", "admin.internal"),
            ("connection", "X-Drop"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("content-length", "999"),
            ("x-keep", "yes"),
        ];
        let reply = http
            .send(HttpRequest {
                method: "POST".into(),
                path: format!("http://127.0.0.1:{port}/in"),
                query: String::new(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: b"hello".to_vec(),
            })
            .await
            .expect("send");
        let request = seen.recv().await.expect("request").to_ascii_lowercase();
        assert!(
            request.contains(&format!("\r\nhost: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert!(request.contains("\r\ncontent-length: 5\r\n"), "{request}");
        assert!(request.contains("\r\nx-keep: yes\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\nhello"), "{request}");
        for gone in [
            "admin.internal",
            "x-drop",
            "keep-alive",
            "transfer-encoding",
            "te:",
            "trailer",
            "upgrade",
            "proxy-",
            "999",
        ] {
            assert!(!request.contains(gone), "`{gone}` sent: {request}");
        }
        let names: Vec<&str> = reply.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"x-keep"), "{names:?}");
        assert!(names.contains(&"content-length"), "{names:?}");
        for gone in [
            "connection",
            "keep-alive",
            "x-hop",
            "proxy-authenticate",
            "trailer",
        ] {
            assert!(!names.contains(&gone), "`{gone}` handed over: {names:?}");
        }
    }
}
