//! Who may call the admin server: the `Host` check, the token and the
//! same-origin rule described in [`super`], as one layer over every route.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::{Live, error};
use crate::config::SIMULATOR_PATH;

/// Open to supervisors without the token (the `Host` check still applies).
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// What the guard needs to know.
#[derive(Debug)]
struct Guard {
    live: Arc<Live>,
    /// The admin listener's port: the only one a `Host` may name.
    port: u16,
}

/// `router` behind the guard, for an admin listener on `port`.
pub fn guarded(router: Router, live: Arc<Live>, port: u16) -> Router {
    let guard = Arc::new(Guard { live, port });
    router.layer(middleware::from_fn_with_state(guard, check))
}

async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Err(reason) = host_allowed(headers, guard.port) {
        return error(StatusCode::MISDIRECTED_REQUEST, reason);
    }
    let path = request.uri().path();
    let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD);
    // The simulated Speaker API checks its own credentials, as SePay's does:
    // the gateway's client and `speaker` commands call it without the admin
    // token. It still gets the Host check and the same-origin rule.
    let own_credentials = path
        .strip_prefix(SIMULATOR_PATH)
        .is_some_and(|rest| rest.starts_with("/devices/v1/"));
    let token = guard.live.config.load().admin.token.clone();
    let presented = match &token {
        Some(token) if !OPEN_PATHS.contains(&path) && !own_credentials => {
            match presented(headers, token.expose().as_bytes()) {
                Some(presented) => presented,
                None => return unauthorized(),
            }
        }
        _ => Presented::Nothing,
    };
    // A bearer token cannot come from another site's page: a browser sends
    // an Authorization header it was not given only as Basic credentials.
    if changes_state
        && presented != Presented::Bearer
        && let Err(reason) = same_origin(headers)
    {
        return error(StatusCode::FORBIDDEN, reason);
    }
    next.run(request).await
}

/// The admin token as the request shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    /// No token is needed here.
    Nothing,
    /// `Authorization: Bearer <token>`: a program that was given the token.
    Bearer,
    /// HTTP Basic with the token as the password: a browser, which sends it
    /// with every request, cross-site ones too.
    Basic,
}

/// The right token in `Authorization`, as Bearer or as a Basic password
/// (any user name); `None` when it is missing or wrong.
fn presented(headers: &HeaderMap, token: &[u8]) -> Option<Presented> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        let right: bool = credentials.as_bytes().ct_eq(token).into();
        return right.then_some(Presented::Bearer);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let split = decoded.iter().position(|&b| b == b':')?;
        let right: bool = decoded[split + 1..].ct_eq(token).into();
        return right.then_some(Presented::Basic);
    }
    None
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "this admin API needs `Authorization: Bearer <admin.token>` \
         (a browser asks for it as the password)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"soundbox-gateway admin\", charset=\"UTF-8\""),
    );
    response
}

/// Whether `Host` names this server: an IP address or `localhost`, with the
/// admin port. Not a check of which address was dialled: it refuses names,
/// so a page whose name was pointed here (DNS rebinding) is not served. A
/// request without `Host` (HTTP/1.0) is no browser's, and passes.
fn host_allowed(headers: &HeaderMap, port: u16) -> Result<(), String> {
    let Some(host) = headers.get(header::HOST) else {
        return Ok(());
    };
    let refused = || {
        format!(
            "the admin server answers to an IP address or localhost with port {port} in Host, \
             not to {}",
            clip(&String::from_utf8_lossy(host.as_bytes()))
        )
    };
    let authority = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
        .ok_or_else(refused)?;
    let port_ok = authority.port_u16().unwrap_or(80) == port;
    let name = authority.host();
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    let name_ok = bare.parse::<IpAddr>().is_ok() || name.eq_ignore_ascii_case("localhost");
    if port_ok && name_ok {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Whether a state-changing request comes from the admin's own pages, or
/// from no page at all (a program sends neither header).
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    const REFUSED: &str = "cross-origin request refused: a call that changes state must come from \
                           the admin's own page or carry `Authorization: Bearer <admin.token>`";
    if let Some(site) = headers.get("sec-fetch-site") {
        // `same-site` too is refused: another port on this host is same-site.
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(REFUSED);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
        let own = host.is_some_and(|host| {
            origin
                .as_bytes()
                .strip_prefix(b"http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        });
        if !own {
            return Err(REFUSED);
        }
    }
    Ok(())
}

/// A header value short enough to quote in a reply, without control
/// characters.
fn clip(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn host_must_be_an_ip_or_localhost_with_the_admin_port() {
        for ok in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LocalHost:8081",
            "[::1]:8081",
            "192.168.1.20:8081",
        ] {
            assert!(
                host_allowed(&headers(&[("host", ok)]), 8081).is_ok(),
                "{ok}"
            );
        }
        for refused in [
            "evil.example:8081",
            "127.0.0.1:9999",
            "localhost",
            "127.0.0.1.nip.io:8081",
            "",
        ] {
            assert!(
                host_allowed(&headers(&[("host", refused)]), 8081).is_err(),
                "{refused}"
            );
        }
        assert!(host_allowed(&headers(&[("host", "127.0.0.1")]), 80).is_ok());
        assert!(host_allowed(&HeaderMap::new(), 8081).is_ok(), "HTTP/1.0");
    }

    #[test]
    fn state_changes_need_the_own_origin() {
        let host = ("host", "127.0.0.1:8081");
        assert!(same_origin(&headers(&[host])).is_ok(), "a program");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8081")])).is_ok());
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        for foreign in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(
                same_origin(&headers(&[host, foreign])).is_err(),
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn the_token_is_taken_as_bearer_or_basic_password() {
        let token = b"s3cret-admin-token";
        let bearer = headers(&[("authorization", "Bearer s3cret-admin-token")]);
        assert_eq!(presented(&bearer, token), Some(Presented::Bearer));
        // "staff:s3cret-admin-token"
        let basic = headers(&[("authorization", "Basic c3RhZmY6czNjcmV0LWFkbWluLXRva2Vu")]);
        assert_eq!(presented(&basic, token), Some(Presented::Basic));
        let wrong = headers(&[("authorization", "Bearer nope")]);
        assert_eq!(presented(&wrong, token), None);
        assert_eq!(presented(&HeaderMap::new(), token), None);
    }
}
