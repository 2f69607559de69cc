//! Turns a JSON body into balance changes by the configured pointers. Every
//! problem with the body is a `BadRequest` naming the pointer.

use serde_json::Value;
use soundbox_plugin_sdk::{BalanceChange, ConnectorError, Direction, time};

use crate::settings::{DirectionRule, Field, Settings, TimeFormat};

/// The gateway's limits on a change's text fields, checked here so the
/// sender gets a 400 naming the field rather than a 500.
const MAX_ID: usize = 128;
const MAX_ACCOUNT: usize = 64;
const MAX_SHORT: usize = 256;
const MAX_CONTENT: usize = 2048;

/// Floats at or above 2^53 may already have lost digits in parsing.
const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

fn bad(message: String) -> ConnectorError {
    ConnectorError::BadRequest(message)
}

/// Every change in `body`: one, or one per item of `items_pointer`, minus
/// the skipped ones.
pub fn changes(settings: &Settings, body: &[u8]) -> Result<Vec<BalanceChange>, ConnectorError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    match &settings.items {
        None => Ok(one(settings, &doc).map_err(bad)?.into_iter().collect()),
        Some(items) => {
            let list = doc
                .pointer(&items.pointer)
                .ok_or_else(|| bad(format!("{} not found in the body", items.name())))?
                .as_array()
                .ok_or_else(|| bad(format!("{} is not an array", items.name())))?;
            let mut out = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                if let Some(change) =
                    one(settings, item).map_err(|e| bad(format!("item {i}: {e}")))?
                {
                    out.push(change);
                }
            }
            Ok(out)
        }
    }
}

/// One transaction; `None` when the skip rule matches.
fn one(s: &Settings, doc: &Value) -> Result<Option<BalanceChange>, String> {
    if let Some((field, values)) = &s.skip
        && let Some(value) = optional_text(doc, field)?
        && values.contains(&value.trim().to_lowercase())
    {
        return Ok(None);
    }

    let id = required_id(doc, &s.id)?;
    let (amount, negative) = amount(lookup(doc, &s.amount)?, s.amount_scale)
        .map_err(|e| format!("{}: {e}", s.amount.name()))?;
    if amount == 0 {
        return Err(format!("{}: amount is 0", s.amount.name()));
    }
    let direction = match &s.direction {
        DirectionRule::NegativeIsOutgoing if negative => Direction::Outgoing,
        _ if negative => {
            return Err(format!(
                "{}: amount is negative (set `negative_is_outgoing = true` if that means outgoing)",
                s.amount.name()
            ));
        }
        DirectionRule::AllIncoming | DirectionRule::NegativeIsOutgoing => Direction::Incoming,
        DirectionRule::Field {
            field,
            incoming,
            outgoing,
        } => {
            let value = scalar_text(lookup(doc, field)?, field)?
                .ok_or_else(|| format!("{} is null", field.name()))?;
            let key = value.trim().to_lowercase();
            if incoming.contains(&key) {
                Direction::Incoming
            } else if outgoing.contains(&key) {
                Direction::Outgoing
            } else {
                return Err(format!(
                    "{} is `{value}`: not in `incoming_values` ({}) nor `outgoing_values` ({})",
                    field.name(),
                    incoming.join(","),
                    outgoing.join(",")
                ));
            }
        }
    };

    let from_body = match &s.account_field {
        Some(field) => optional_text(doc, field)?.filter(|a| !a.trim().is_empty()),
        None => None,
    };
    let account = match (from_body, &s.account_fixed, &s.account_field) {
        (Some(a), _, Some(field)) => checked(a.trim().to_string(), field, MAX_ACCOUNT)?,
        (None, Some(fixed), _) => fixed.clone(),
        (None, None, Some(field)) => {
            return Err(format!("{} not found in the body", field.name()));
        }
        _ => return Err("no account configured".into()),
    };

    let reference = short_text(doc, s.reference.as_ref())?;
    let counterparty = short_text(doc, s.counterparty.as_ref())?;
    let content = match &s.content {
        Some(field) => optional_text(doc, field)?.map(|c| truncate(c, MAX_CONTENT)),
        None => None,
    };
    let occurred_at_ms = match &s.occurred_at {
        Some((field, format)) => match optional_text(doc, field)? {
            Some(text) if !text.trim().is_empty() => {
                Some(parse_time(text.trim(), *format).ok_or_else(|| {
                    format!("{}: `{text}` is not {}", field.name(), format.name())
                })?)
            }
            _ => None,
        },
        None => None,
    };
    let mut extra = Vec::new();
    for (name, field) in &s.extra {
        if let Some(value) = doc.pointer(&field.pointer) {
            let text = match value {
                Value::Null => continue,
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            extra.push((name.clone(), truncate(text, MAX_SHORT)));
        }
    }

    Ok(Some(BalanceChange {
        provider: s.provider.clone(),
        transaction_id: id,
        account,
        amount,
        currency: s.currency.clone(),
        direction,
        reference,
        counterparty,
        content,
        occurred_at_ms,
        extra,
    }))
}

fn lookup<'a>(doc: &'a Value, field: &Field) -> Result<&'a Value, String> {
    doc.pointer(&field.pointer)
        .ok_or_else(|| format!("{} not found in the body", field.name()))
}

/// A scalar as text: strings as they are, numbers and booleans printed;
/// `None` for null; objects and arrays are the wrong type.
fn scalar_text(value: &Value, field: &Field) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) | Value::Object(_) => Err(format!(
            "{} is an {}, expected a string or number",
            field.name(),
            if value.is_array() { "array" } else { "object" }
        )),
    }
}

/// An optional field: absent or null is `None`.
fn optional_text(doc: &Value, field: &Field) -> Result<Option<String>, String> {
    match doc.pointer(&field.pointer) {
        None => Ok(None),
        Some(value) => scalar_text(value, field),
    }
}

fn short_text(doc: &Value, field: Option<&Field>) -> Result<Option<String>, String> {
    let Some(field) = field else { return Ok(None) };
    match optional_text(doc, field)? {
        Some(t) if !t.trim().is_empty() => {
            Ok(Some(checked(t.trim().to_string(), field, MAX_SHORT)?))
        }
        _ => Ok(None),
    }
}

/// The transaction id: a non-empty string or an integer.
fn required_id(doc: &Value, field: &Field) -> Result<String, String> {
    let value = lookup(doc, field)?;
    let id = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => {
            return Err(format!(
                "{} must be a string or an integer, got {value}",
                field.name()
            ));
        }
    };
    if id.is_empty() {
        return Err(format!("{} is empty", field.name()));
    }
    checked(id, field, MAX_ID)
}

fn checked(text: String, field: &Field, max: usize) -> Result<String, String> {
    if text.len() > max {
        return Err(format!("{} is longer than {max} bytes", field.name()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{} contains control characters", field.name()));
    }
    Ok(text)
}

/// Cuts `text` to at most `max` bytes on a character boundary (memos only:
/// losing the tail of a memo is better than refusing the payment).
fn truncate(mut text: String, max: usize) -> String {
    let end = soundbox_plugin_sdk::text::truncate(&text, max).len();
    text.truncate(end);
    text
}

/// An amount as (magnitude, is negative): an integer, or a decimal whose
/// fraction has at most `scale` digits, all zero. Never rounds.
pub fn amount(value: &Value, scale: u32) -> Result<(u64, bool), String> {
    let text = match value {
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !f.is_finite() || f.abs() >= MAX_EXACT_FLOAT {
                return Err(format!("{n} is too large to be exact"));
            }
            n.to_string()
        }
        Value::String(s) => s.trim().to_string(),
        other => return Err(format!("expected a number or numeric string, got {other}")),
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !is_digits(whole) || fraction.is_some_and(|f| !is_digits(f)) {
        return Err(format!("`{text}` is not a plain decimal number"));
    }
    if let Some(fraction) = fraction {
        if fraction.len() > scale as usize {
            return Err(format!(
                "`{text}` has {} decimal digit(s) but `amount_scale` is {scale}",
                fraction.len()
            ));
        }
        if fraction.bytes().any(|b| b != b'0') {
            return Err(format!(
                "`{text}` has a non-zero fraction; refusing to round it"
            ));
        }
    }
    let magnitude: u64 = whole
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    Ok((magnitude, negative && magnitude != 0))
}

/// A timestamp in `format` → Unix milliseconds.
pub fn parse_time(text: &str, format: TimeFormat) -> Option<i64> {
    match format {
        TimeFormat::UnixSecs => text.parse::<i64>().ok()?.checked_mul(1000),
        TimeFormat::UnixMillis => text.parse().ok(),
        TimeFormat::VietnamLocal => time::parse_vietnam_local(text),
        TimeFormat::VietnamCompact => time::parse_vietnam_compact(text),
        TimeFormat::Rfc3339 => time::parse_rfc3339(text),
    }
}
