//! Outgoing HTTP through the gateway, which only lets a connector reach the
//! hosts its config allows (`allowed_hosts`), over https except to loopback.

pub use crate::__bindings::host::soundbox::connector::http_client::HttpError;
use crate::{HttpRequest, HttpResponse};

/// Sends `request`: `path` is the absolute URL, `query` is appended to it.
pub fn send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
    #[cfg(target_arch = "wasm32")]
    return crate::__bindings::host::soundbox::connector::http_client::send(request);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_env(|env| env.send(request));
}

/// A `GET` of `url` with headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, HttpError> {
    send(&HttpRequest {
        method: "GET".into(),
        path: url.into(),
        query: String::new(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect(),
        body: Vec::new(),
    })
}

/// Decodes `application/x-www-form-urlencoded` text (a query string) into pairs.
pub fn parse_form(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Encodes `input` the way HTML forms do: space → `+`; letters, digits and
/// `-_.*` kept; every other byte as `%XX` (upper case). This is Java's
/// `URLEncoder` over UTF-8; PHP's `urlencode` differs only in encoding `*`.
pub fn form_encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(decoded) => {
                        out.push(decoded);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let pairs = parse_form("a=1+2&b=%C3%A0%26x&c=&bad=%zz");
        assert_eq!(pairs[0], ("a".into(), "1 2".into()));
        assert_eq!(pairs[1], ("b".into(), "à&x".into()));
        assert_eq!(pairs[2], ("c".into(), "".into()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(form_encode("1 2&à"), "1+2%26%C3%A0");
    }
}
