//! SePay's transaction API v2 → balance changes.
//!
//! Runs beside `sepay-webhook` and fills what its webhooks missed (SePay gives
//! up on a webhook after about 33 minutes of failures). Both declare provider
//! `sepay` and the same transaction id ([`sepay_common::transaction_id`]), so
//! the gateway announces a payment seen by both once.
//!
//! How a poll goes: each call fetches ONE page of
//! `GET {base_url}/v2/transactions?transaction_date_from=…&per_page=…&page=…`
//! and saves the cursor (`{from, page, max_seen}` in KV) in the same call that
//! returns the page's changes; the gateway applies the KV write only once the
//! changes are stored, so a failed store repeats the page. While SePay says
//! `has_more`, the next call comes after [`PAGE_DELAY_MS`] for the next page;
//! after the last page the next sweep starts at the latest transaction date
//! seen minus `overlap_minutes` (banks book some transfers late), on the
//! connector's interval. The cursor is a date, never SePay's `since_id` (its
//! inclusiveness is not documented) nor an assumed sort order; the overlap's
//! duplicates are absorbed by the gateway's dedupe. A gateway that was off
//! finds an old cursor and pages through everything since: the backfill.
//!
//! Config (`[connector.config]`): `api_token` (required), `base_url`,
//! `per_page`, `backfill_hours`, `overlap_minutes`, `account`; see the README.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use soundbox_plugin_sdk::http::HttpError;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, PollOutcome,
    PollingConnector, config, export_polling_connector, http, kv, log, time,
};

/// The dedupe provider, shared with `sepay-webhook`.
pub use sepay_common::PROVIDER;

/// KV key of the [`Cursor`].
pub const CURSOR_KEY: &str = "cursor";
pub const DEFAULT_BASE_URL: &str = "https://userapi.sepay.vn";
/// Delay before the next page of a backlog: SePay allows 3 requests a second.
pub const PAGE_DELAY_MS: u64 = 400;
/// The longest a 429's `Retry-After` makes us wait.
pub const MAX_RETRY_AFTER_MS: u64 = 600_000;
/// A clock before 2024-01-01 is not set yet (a Pi has no battery clock):
/// a first backfill from there would page through years.
const CLOCK_SET_AFTER: i64 = 1_704_067_200;
/// Transaction dates further ahead of our clock than this are not trusted to
/// move the cursor: one bogus date would make every later sweep miss payments.
const MAX_FUTURE_SECS: i64 = 24 * 3600;
/// The gateway's limits on a change's fields (see its `validate`).
const MAX_ACCOUNT_BYTES: usize = 64;
const MAX_REFERENCE_BYTES: usize = 256;
const MAX_CONTENT_BYTES: usize = 2048;
const MAX_EXTRA_VALUE_BYTES: usize = 256;

pub struct SepayPoller;

impl PollingConnector for SepayPoller {
    fn poll() -> Result<PollOutcome, ConnectorError> {
        poll_at(time::now_secs())
    }
}

export_polling_connector!(SepayPoller);

/// Where the poller is, kept in KV as small JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Unix seconds: the sweep asks for transactions dated from here on
    /// (`transaction_date_from`, inclusive).
    pub from: i64,
    /// The page of the sweep to fetch next (1-based).
    pub page: u32,
    /// Unix seconds: the latest transaction date seen so far.
    pub max_seen: i64,
}

/// The connector's config, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    api_token: String,
    pub base_url: String,
    pub per_page: u32,
    pub backfill_secs: i64,
    pub overlap_secs: i64,
    /// Keep only this account's (or virtual account's) transactions.
    pub account: Option<String>,
}

impl Settings {
    /// Reads and checks `[connector.config]`; a mistake there is `Fatal`.
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let api_token = config::require("api_token")?.trim().to_string();
        if api_token.is_empty() {
            return Err(ConnectorError::Fatal("config `api_token` is empty".into()));
        }
        let base_url = config::get_or("base_url", DEFAULT_BASE_URL)
            .trim()
            .trim_end_matches('/')
            .to_string();
        if !base_url.starts_with("https://") && !base_url.starts_with("http://") {
            return Err(ConnectorError::Fatal(format!(
                "config `base_url` is `{base_url}`; expected an http(s) URL like {DEFAULT_BASE_URL}"
            )));
        }
        let account = config::get("account")
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty());
        Ok(Settings {
            api_token,
            base_url,
            per_page: number("per_page", 100, 1, 100)? as u32,
            backfill_secs: number("backfill_hours", 24, 0, 24 * 366)? as i64 * 3600,
            overlap_secs: number("overlap_minutes", 10, 0, 24 * 60)? as i64 * 60,
            account,
        })
    }
}

/// An integer config value in `min..=max` (TOML numbers arrive as JSON text;
/// a quoted number is accepted too).
fn number(key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConnectorError> {
    let Some(text) = config::get(key) else {
        return Ok(default);
    };
    text.trim()
        .trim_matches('"')
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ConnectorError::Fatal(format!(
                "config `{key}` is `{text}`; expected an integer from {min} to {max}"
            ))
        })
}

/// One poll, with `now` (Unix seconds) as the clock: fetch one page, map
/// it, save the cursor that follows it.
pub fn poll_at(now: i64) -> Result<PollOutcome, ConnectorError> {
    let settings = Settings::from_config()?;
    let cursor = match load_cursor() {
        Some(cursor) => cursor,
        None if now < CLOCK_SET_AFTER => {
            return Err(ConnectorError::Transient(
                "the clock is not set yet; the first backfill waits for it".into(),
            ));
        }
        None => {
            let from = now - settings.backfill_secs;
            Cursor {
                from,
                page: 1,
                max_seen: from,
            }
        }
    };

    let response = http::send(&request(&settings, &cursor)).map_err(http_failed)?;
    if response.status == 429 {
        let wait = retry_after_ms(&response);
        log::warn(&format!(
            "SePay rate-limited us (429); next poll in {wait} ms, cursor unchanged"
        ));
        return Ok(PollOutcome {
            changes: Vec::new(),
            next_poll_ms: Some(wait),
        });
    }
    check_status(&response)?;
    let page = parse_page(&response.body, settings.per_page).map_err(|reason| {
        log::warn(&format!("unexpected answer from SePay: {reason}"));
        ConnectorError::Transient(reason)
    })?;

    let mut changes = Vec::new();
    let mut max_seen = cursor.max_seen;
    for item in &page.items {
        if let Some(at) = item_time(item)
            && at <= now + MAX_FUTURE_SECS
        {
            max_seen = max_seen.max(at);
        }
        match to_change(item, settings.account.as_deref()) {
            Ok(Some(change)) => changes.push(change),
            Ok(None) => {}
            Err(reason) => log::warn(&format!("skipped a SePay transaction: {reason}")),
        }
    }
    log::debug(&format!(
        "page {} from {}: {} transactions, {} changes",
        cursor.page,
        vietnam_local(cursor.from),
        page.items.len(),
        changes.len()
    ));

    // An empty page ends the sweep even if SePay says there is more.
    let (next, next_poll_ms) = if page.has_more && !page.items.is_empty() {
        let next = Cursor {
            page: cursor.page.saturating_add(1),
            max_seen,
            ..cursor
        };
        (next, Some(PAGE_DELAY_MS))
    } else {
        let next = Cursor {
            from: cursor.from.max(max_seen - settings.overlap_secs),
            page: 1,
            max_seen,
        };
        (next, None)
    };
    save_cursor(&next)?;
    Ok(PollOutcome {
        changes,
        next_poll_ms,
    })
}

/// The saved cursor; `None` on the first poll, or (with a warning) when what
/// is saved cannot be read, which starts over like a first poll.
fn load_cursor() -> Option<Cursor> {
    let saved = kv::get(CURSOR_KEY)?;
    match serde_json::from_slice::<Cursor>(&saved) {
        Ok(cursor) => Some(Cursor {
            page: cursor.page.max(1),
            ..cursor
        }),
        Err(e) => {
            log::warn(&format!(
                "saved cursor is unreadable ({e}); starting over from backfill_hours ago"
            ));
            None
        }
    }
}

fn save_cursor(cursor: &Cursor) -> Result<(), ConnectorError> {
    let json = serde_json::to_vec(cursor)
        .map_err(|e| ConnectorError::Fatal(format!("cannot encode the cursor: {e}")))?;
    kv::set(CURSOR_KEY, &json)
        .map_err(|e| ConnectorError::Transient(format!("cannot save the cursor: {e}")))
}

/// The request for the cursor's page.
fn request(settings: &Settings, cursor: &Cursor) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: format!("{}/v2/transactions", settings.base_url),
        query: format!(
            "transaction_date_from={}&per_page={}&page={}",
            percent_encode(&vietnam_local(cursor.from)),
            settings.per_page,
            cursor.page
        ),
        headers: vec![
            (
                "authorization".into(),
                format!("Bearer {}", settings.api_token),
            ),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
    }
}

fn http_failed(error: HttpError) -> ConnectorError {
    match error {
        HttpError::NotAllowed(reason) => ConnectorError::Fatal(format!(
            "the gateway refused the request to SePay ({reason}); check base_url and allowed_hosts"
        )),
        HttpError::Timeout => ConnectorError::Transient("SePay did not answer in time".into()),
        HttpError::Connect(reason) => {
            ConnectorError::Transient(format!("could not reach SePay: {reason}"))
        }
        HttpError::TooLarge => ConnectorError::Fatal(
            "SePay's answer is larger than the gateway accepts; lower per_page".into(),
        ),
        HttpError::Other(reason) => {
            ConnectorError::Transient(format!("request to SePay failed: {reason}"))
        }
    }
}

/// `Retry-After` of a 429 in ms: whole seconds (SePay's v1 API named the
/// header `x-sepay-userapi-retry-after`); 1 s when absent, at most 10 min.
fn retry_after_ms(response: &HttpResponse) -> u64 {
    let secs = ["retry-after", "x-sepay-userapi-retry-after"]
        .iter()
        .find_map(|name| header(response, name)?.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    secs.saturating_mul(1000).min(MAX_RETRY_AFTER_MS)
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Any status but 2xx (429 is handled before) as the error it means.
fn check_status(response: &HttpResponse) -> Result<(), ConnectorError> {
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let said = error_message(&response.body);
    let with = |what: String| match &said {
        Some(message) => format!("{what}: {message}"),
        None => what,
    };
    Err(match status {
        401 | 403 => ConnectorError::Fatal(with("SePay rejected the API token".into())),
        408 | 500..=599 => ConnectorError::Transient(with(format!("SePay answered {status}"))),
        // 404, 422 and the other 4xx: the request itself is wrong (a date
        // format SePay refuses, say); asking again will not help.
        400..=499 => ConnectorError::Fatal(with(format!("SePay answered {status}"))),
        _ => ConnectorError::Transient(with(format!("SePay answered {status}"))),
    })
}

/// SePay's `{status: "error", message, error_code}`, as one short line.
fn error_message(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let message = json.get("message").and_then(Value::as_str)?;
    let code = json.get("error_code").and_then(|c| text_of(Some(c)));
    let line = match code {
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    };
    let line: String = line.chars().filter(|c| !c.is_control()).collect();
    Some(soundbox_plugin_sdk::text::truncate(&line, 300).to_string())
}

/// One page of `GET /v2/transactions`.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    pub has_more: bool,
}

/// Reads a 2xx answer: `data` must be a list; `meta.pagination.has_more`,
/// when missing, is taken to be "the page is full".
pub fn parse_page(body: &[u8], per_page: u32) -> Result<Page, String> {
    let mut json: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if json.get("status").and_then(Value::as_str) == Some("error") {
        return Err(format!(
            "SePay answered an error: {}",
            error_message(body).unwrap_or_else(|| "(no message)".into())
        ));
    }
    let Some(Value::Array(items)) = json.get_mut("data").map(Value::take) else {
        return Err("the answer has no `data` list".into());
    };
    let has_more = match json.pointer("/meta/pagination/has_more") {
        Some(Value::Bool(more)) => *more,
        _ => items.len() >= per_page as usize,
    };
    Ok(Page { items, has_more })
}

/// When the item happened, in Unix seconds.
fn item_time(item: &Value) -> Option<i64> {
    let date = item.get("transaction_date")?.as_str()?;
    time::parse_vietnam_local(date).map(|ms| ms.div_euclid(1000))
}

/// One v2 transaction as a balance change. `Ok(None)`: nothing to report (no
/// money moved, or another account than `only_account`; logged at debug).
/// `Err`: an item that cannot be reported as it is (the caller warns and
/// skips it rather than hold back the whole page forever).
pub fn to_change(
    item: &Value,
    only_account: Option<&str>,
) -> Result<Option<BalanceChange>, String> {
    let field = |name: &str| text_of(item.get(name));
    let sepay_id = field("id").unwrap_or_default();
    let what = |reason: &str| format!("transaction {sepay_id}: {reason}");

    let account = field("account_number")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| what("no account_number"))?;
    if account.len() > MAX_ACCOUNT_BYTES || account.chars().any(char::is_control) {
        return Err(what("account_number is not a plausible account"));
    }
    let va = field("va");
    if let Some(only) = only_account
        && account != only
        && va.as_deref().map(str::trim) != Some(only)
    {
        log::debug(&what(&format!("account {account} is not {only}")));
        return Ok(None);
    }
    let amount_in = amount(item.get("amount_in")).map_err(|e| what(&format!("amount_in {e}")))?;
    let amount_out =
        amount(item.get("amount_out")).map_err(|e| what(&format!("amount_out {e}")))?;
    let (direction, amount) = match (amount_in, amount_out) {
        (0, 0) => {
            log::debug(&what("amount_in and amount_out are both 0"));
            return Ok(None);
        }
        (n, 0) => (Direction::Incoming, n),
        (0, n) => (Direction::Outgoing, n),
        _ => return Err(what("both amount_in and amount_out are set")),
    };
    let date = field("transaction_date");
    let occurred_at_ms = date.as_deref().and_then(time::parse_vietnam_local);
    let reference = field("reference_number")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let transaction_id = sepay_common::transaction_id(
        &account,
        reference.as_deref(),
        direction,
        amount,
        occurred_at_ms,
        &sepay_id,
    );

    let mut extra = Vec::new();
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let v = soundbox_plugin_sdk::text::truncate(&v, MAX_EXTRA_VALUE_BYTES).to_string();
            extra.push((k.to_string(), v));
        }
    };
    keep("sepayId", Some(sepay_id.clone()));
    keep("bank_brand_name", field("bank_brand_name"));
    keep("va", va);
    keep("code", field("code"));
    keep("accumulated", field("accumulated"));
    keep("transaction_date", date);

    Ok(Some(BalanceChange {
        provider: PROVIDER.into(),
        transaction_id,
        account,
        amount,
        currency: "VND".into(),
        direction,
        reference: reference.filter(|r| r.len() <= MAX_REFERENCE_BYTES),
        counterparty: None,
        content: field("transaction_content")
            .map(|c| soundbox_plugin_sdk::text::truncate(&c, MAX_CONTENT_BYTES).to_string()),
        occurred_at_ms,
        extra,
    }))
}

/// A string or a number as text; `None` for null, absent or anything else.
fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An amount in whole đồng: a JSON integer, or a number or numeric string
/// that is exactly integral (`150000`, `"150000"`, `"150000.00"`). Null or
/// absent is 0. Anything else (negative, `"150000.50"`) is an error.
fn amount(value: Option<&Value>) -> Result<u64, String> {
    let bad = |v: &Value| format!("`{v}` is not a whole number of đồng");
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => Ok(whole),
            // Below 2^53 an f64 holds every integer exactly.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => {
                Ok(f as u64)
            }
            _ => Err(bad(v)),
        },
        Some(v @ Value::String(s)) => {
            let s = s.trim();
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || !digits(whole) || !fraction.bytes().all(|b| b == b'0') {
                return Err(bad(v));
            }
            whole.parse().map_err(|_| bad(v))
        }
        Some(v) => Err(bad(v)),
    }
}

/// Unix seconds as Vietnam local time, `YYYY-MM-DD HH:MM:SS`: the format of
/// SePay's dates, and (an assumption) of `transaction_date_from`.
pub fn vietnam_local(unix_secs: i64) -> String {
    let local = unix_secs + time::VIETNAM_OFFSET_SECS;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // Civil from days, Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Percent-encodes a query value (`%20` for space: unambiguous for any server).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
