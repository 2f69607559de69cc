//! Verifies a request by the configured `auth` mode, over the raw body bytes,
//! comparing in constant time.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use soundbox_plugin_sdk::{ConnectorError, HttpRequest, signature};

use crate::settings::{Algorithm, Auth, Encoding, HmacSettings, SignedPayload};

/// Timestamps at or above this are milliseconds: as seconds it is the year
/// 5138, as milliseconds 1973, so no real timestamp is ambiguous.
pub const MILLIS_THRESHOLD: i64 = 100_000_000_000;

const PADDING_OPTIONAL: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
/// Senders differ on padding and on the URL-safe alphabet; both decode.
const BASE64_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, PADDING_OPTIONAL);
const BASE64_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, PADDING_OPTIONAL);

fn unauthorized(reason: String) -> ConnectorError {
    ConnectorError::Unauthorized(reason)
}

/// Checks `request` against `auth` at `now_ms` (Unix milliseconds).
pub fn verify(auth: &Auth, request: &HttpRequest, now_ms: i64) -> Result<(), ConnectorError> {
    match auth {
        Auth::None => Ok(()),
        Auth::ApiKey {
            header,
            key,
            prefix,
        } => {
            let given = request
                .header(header)
                .ok_or_else(|| unauthorized(format!("missing {header} header")))?
                .trim();
            let given = match prefix {
                None => given,
                Some(prefix) => strip_prefix_ignore_case(given, prefix)
                    .ok_or_else(|| {
                        unauthorized(format!("{header} does not start with `{prefix}`"))
                    })?
                    .trim_start(),
            };
            if signature::constant_time_eq(given.as_bytes(), key.as_bytes()) {
                Ok(())
            } else {
                Err(unauthorized("wrong API key".into()))
            }
        }
        Auth::Hmac(hmac) => verify_hmac(hmac, request, now_ms),
    }
}

fn verify_hmac(
    hmac: &HmacSettings,
    request: &HttpRequest,
    now_ms: i64,
) -> Result<(), ConnectorError> {
    let timestamp = match &hmac.timestamp_header {
        None => None,
        Some(name) => {
            let text = request
                .header(name)
                .ok_or_else(|| unauthorized(format!("missing {name} header")))?
                .trim();
            let value: i64 = text.parse().map_err(|_| {
                unauthorized(format!("{name} is not a Unix timestamp (seconds or ms)"))
            })?;
            let at_ms = if value.abs() >= MILLIS_THRESHOLD {
                value
            } else {
                value.saturating_mul(1000)
            };
            let skew_ms = hmac.max_skew_secs.saturating_mul(1000);
            if now_ms.abs_diff(at_ms) > skew_ms {
                return Err(unauthorized(format!(
                    "{name} is more than {}s from now (replayed or clock off?)",
                    hmac.max_skew_secs
                )));
            }
            Some(text)
        }
    };

    let given = request
        .header(&hmac.header)
        .ok_or_else(|| unauthorized(format!("missing {} header", hmac.header)))?
        .trim();
    let given = match &hmac.prefix {
        Some(prefix) => strip_prefix_ignore_case(given, prefix).unwrap_or(given),
        None => given,
    };

    let expected: Vec<u8> = {
        let key = hmac.secret.as_bytes();
        let mut message = Vec::new();
        if let (SignedPayload::TimestampDotBody, Some(ts)) = (hmac.payload, timestamp) {
            message.extend_from_slice(ts.as_bytes());
            message.push(b'.');
        }
        message.extend_from_slice(&request.body);
        match hmac.algorithm {
            Algorithm::Sha256 => signature::hmac_sha256(key, &message).to_vec(),
            Algorithm::Sha512 => signature::hmac_sha512(key, &message).to_vec(),
        }
    };
    let ok = match hmac.encoding {
        Encoding::Hex => signature::verify_hex(given, &expected),
        Encoding::Base64 => BASE64_STANDARD
            .decode(given)
            .or_else(|_| BASE64_URL_SAFE.decode(given))
            .is_ok_and(|bytes| signature::constant_time_eq(&bytes, &expected)),
    };
    if ok {
        Ok(())
    } else {
        Err(unauthorized(format!("bad {} signature", hmac.header)))
    }
}

/// `text` without `prefix` (ASCII case-insensitive), if it starts with it.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        text.get(prefix.len()..)
    } else {
        None
    }
}
