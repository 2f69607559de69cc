//! The gateway's event JSON, schema 1 (docs/mqtt.md, "Event JSON") → one
//! balance change.
//!
//! Every rule of the gateway's own check of a balance change is applied
//! here too, so a message the gateway would refuse is a `bad-request` (the
//! sender's fault) rather than a plugin error. Fields this plugin does not
//! read (`seq`, `received_at`, and any added later: schema 1 only ever gains
//! fields) are ignored: `seq` is a place in the relay's log, and the shop's
//! gateway sets its own `received_at` and `connector`.

use serde_json::{Map, Value};
use soundbox_plugin_sdk::{BalanceChange, ConnectorError, Direction};

/// The schema this plugin reads.
pub const SCHEMA: u64 = 1;

// The gateway's bounds on a balance change (`BalanceChange::validate`).
const MAX_PROVIDER: usize = 64;
const MAX_TRANSACTION_ID: usize = 128;
const MAX_ACCOUNT: usize = 64;
const MAX_REFERENCE: usize = 256;
const MAX_COUNTERPARTY: usize = 256;
const MAX_CONTENT: usize = 2048;
const MAX_AMOUNT: u64 = 1_000_000_000_000_000;
/// Bound on `id` and `connector`, kept in `extra` (the gateway allows 8 KiB).
const MAX_EXTRA_VALUE: usize = 128;

fn bad(message: String) -> ConnectorError {
    ConnectorError::BadRequest(message)
}

/// `text` for an error message: control characters escaped, at most 64
/// characters, so a reason never carries a whole hostile value.
pub fn shown(text: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for c in text.chars().take(MAX) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// A JSON value for an error message.
fn shown_value(value: &Value) -> String {
    shown(&value.to_string())
}

/// The payment in one message body.
pub fn parse(body: &[u8]) -> Result<BalanceChange, ConnectorError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let Value::Object(event) = value else {
        return Err(bad(
            "expected one event object (the gateway's event JSON, schema 1)".into(),
        ));
    };

    match event.get("schema") {
        None | Some(Value::Null) => return Err(bad("`schema` is missing".into())),
        Some(v) if v.as_u64() == Some(SCHEMA) => {}
        Some(v) => {
            return Err(bad(format!(
                "schema {} is not supported: this plugin reads schema {SCHEMA}",
                shown_value(v)
            )));
        }
    }

    let provider = required_text(&event, "provider", MAX_PROVIDER)?;
    let transaction_id = required_text(&event, "transaction_id", MAX_TRANSACTION_ID)?;
    let account = required_text(&event, "account", MAX_ACCOUNT)?;

    let amount = match event.get("amount") {
        None | Some(Value::Null) => return Err(bad("`amount` is missing".into())),
        Some(v) => v.as_u64().ok_or_else(|| {
            bad(format!(
                "`amount` must be a positive integer (minor units), not {}",
                shown_value(v)
            ))
        })?,
    };
    if amount == 0 {
        return Err(bad("`amount` is 0".into()));
    }
    if amount > MAX_AMOUNT {
        return Err(bad(format!("`amount` is implausibly large: {amount}")));
    }

    let currency = required_text(&event, "currency", usize::MAX)?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(bad(format!(
            "`currency` `{}` is not an ISO 4217 code",
            shown(&currency)
        )));
    }

    let direction = match required_text(&event, "direction", usize::MAX)?.as_str() {
        "in" => Direction::Incoming,
        "out" => Direction::Outgoing,
        other => {
            return Err(bad(format!(
                "`direction` is `{}`; expected `in` or `out`",
                shown(other)
            )));
        }
    };

    let occurred_at_ms = match optional_text(&event, "occurred_at", usize::MAX)? {
        None => None,
        Some(text) => Some(
            soundbox_plugin_sdk::time::parse_rfc3339(&text).ok_or_else(|| {
                bad(format!(
                    "`occurred_at` `{}` is not an RFC 3339 time",
                    shown(&text)
                ))
            })?,
        ),
    };

    let mut extra = Vec::new();
    for (field, key) in [("id", "relay_event_id"), ("connector", "relay_connector")] {
        if let Some(value) = optional_text(&event, field, MAX_EXTRA_VALUE)? {
            extra.push((key.to_string(), value));
        }
    }

    Ok(BalanceChange {
        provider,
        transaction_id,
        account,
        amount,
        currency,
        direction,
        reference: optional_text(&event, "reference", MAX_REFERENCE)?,
        counterparty: optional_text(&event, "counterparty", MAX_COUNTERPARTY)?,
        content: optional_text(&event, "content", MAX_CONTENT)?,
        occurred_at_ms,
        extra,
    })
}

/// A string that must be there, not blank, without control characters,
/// kept exactly as sent (the dedupe key is made of such strings).
fn required_text(
    event: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<String, ConnectorError> {
    let text = match event.get(field) {
        None | Some(Value::Null) => return Err(bad(format!("`{field}` is missing"))),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(bad(format!(
                "`{field}` must be a string, not {}",
                shown_value(v)
            )));
        }
    };
    if text.trim().is_empty() {
        return Err(bad(format!("`{field}` is empty")));
    }
    if text.len() > max {
        return Err(bad(format!("`{field}` is longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(format!("`{field}` contains control characters")));
    }
    Ok(text.clone())
}

/// A string or null (or absent).
fn optional_text(
    event: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ConnectorError> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > max => {
            Err(bad(format!("`{field}` is longer than {max} bytes")))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(bad(format!(
            "`{field}` must be a string or null, not {}",
            shown_value(v)
        ))),
    }
}
