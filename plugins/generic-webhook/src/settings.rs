//! The connector's config, read and checked on every call (each call is a
//! fresh sandbox). Every mistake is a `Fatal` naming the key: it is the
//! operator's to fix, not the sender's.

use soundbox_plugin_sdk::{ConnectorError, HttpResponse, config};

/// Every key this plugin reads; anything else is a typo worth failing on,
/// since a misspelt optional key would otherwise be ignored silently.
pub const KNOWN_KEYS: &[&str] = &[
    "provider",
    "currency",
    "items_pointer",
    "id_pointer",
    "amount_pointer",
    "amount_scale",
    "account_pointer",
    "account",
    "direction_pointer",
    "incoming_values",
    "outgoing_values",
    "negative_is_outgoing",
    "reference_pointer",
    "content_pointer",
    "counterparty_pointer",
    "occurred_at_pointer",
    "occurred_at_format",
    "extra_pointers",
    "skip_pointer",
    "skip_values",
    "auth",
    "allow_unsigned",
    "apikey_header",
    "api_key",
    "apikey_prefix",
    "hmac_header",
    "hmac_secret",
    "hmac_algorithm",
    "hmac_encoding",
    "hmac_prefix",
    "timestamp_header",
    "signed_payload",
    "max_skew_secs",
    "reply_status",
    "reply_body",
];

/// Defaults when `direction_pointer` is set without value lists.
pub const DEFAULT_INCOMING: &str = "in,incoming,credit,c";
pub const DEFAULT_OUTGOING: &str = "out,outgoing,debit,d";

/// The gateway's limit on `extra` entries per change.
const MAX_EXTRA: usize = 32;

/// A JSON pointer from the config, with the key it came from (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub key: &'static str,
    pub pointer: String,
}

impl Field {
    /// `key (pointer)`, for error messages.
    pub fn name(&self) -> String {
        if self.pointer.is_empty() {
            format!("`{}` (the whole body)", self.key)
        } else {
            format!("`{}` {}", self.key, self.pointer)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    Rfc3339,
    UnixSecs,
    UnixMillis,
    VietnamLocal,
    VietnamCompact,
}

impl TimeFormat {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::UnixSecs => "unix_s",
            TimeFormat::UnixMillis => "unix_ms",
            TimeFormat::VietnamLocal => "vietnam_local",
            TimeFormat::VietnamCompact => "vietnam_compact",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionRule {
    /// Every transaction is incoming money.
    AllIncoming,
    /// A field says; its value is looked up in these lists (lower-cased).
    Field {
        field: Field,
        incoming: Vec<String>,
        outgoing: Vec<String>,
    },
    /// A negative amount is outgoing money.
    NegativeIsOutgoing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedPayload {
    /// The raw body.
    Body,
    /// `<timestamp header>.<raw body>`.
    TimestampDotBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacSettings {
    pub header: String,
    pub secret: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub prefix: Option<String>,
    pub timestamp_header: Option<String>,
    pub payload: SignedPayload,
    pub max_skew_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    ApiKey {
        header: String,
        key: String,
        prefix: Option<String>,
    },
    Hmac(HmacSettings),
}

/// Everything the config says, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub provider: String,
    pub currency: String,
    pub items: Option<Field>,
    pub id: Field,
    pub amount: Field,
    pub amount_scale: u32,
    pub account_field: Option<Field>,
    pub account_fixed: Option<String>,
    pub direction: DirectionRule,
    pub reference: Option<Field>,
    pub content: Option<Field>,
    pub counterparty: Option<Field>,
    pub occurred_at: Option<(Field, TimeFormat)>,
    pub extra: Vec<(String, Field)>,
    pub skip: Option<(Field, Vec<String>)>,
    pub auth: Auth,
    pub reply_status: u16,
    pub reply_body: String,
}

fn fatal(message: String) -> ConnectorError {
    ConnectorError::Fatal(message)
}

/// A setting, `None` when absent or blank.
fn setting(key: &str) -> Option<String> {
    config::get(key).filter(|v| !v.trim().is_empty())
}

fn required(key: &str) -> Result<String, ConnectorError> {
    setting(key).ok_or_else(|| fatal(format!("config key `{key}` is not set")))
}

/// Checks RFC 6901 syntax: empty (the whole document) only where allowed,
/// else a leading `/`, and `~` only as `~0` or `~1`.
pub fn check_pointer(key: &str, pointer: &str, allow_whole: bool) -> Result<(), ConnectorError> {
    if pointer.is_empty() && allow_whole {
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err(fatal(format!(
            "config `{key}` = `{pointer}` is not a JSON pointer: it must start with `/` (e.g. `/data/amount`)"
        )));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(fatal(format!(
                "config `{key}` = `{pointer}`: `~` must be followed by 0 or 1 (`~0` is `~`, `~1` is `/`)"
            )));
        }
    }
    Ok(())
}

fn pointer(key: &'static str) -> Result<Option<Field>, ConnectorError> {
    match setting(key) {
        None => Ok(None),
        Some(p) => {
            let p = p.trim().to_string();
            check_pointer(key, &p, false)?;
            Ok(Some(Field { key, pointer: p }))
        }
    }
}

fn required_pointer(key: &'static str) -> Result<Field, ConnectorError> {
    pointer(key)?.ok_or_else(|| fatal(format!("config key `{key}` is not set")))
}

/// Comma-separated values, trimmed and lower-cased, blanks dropped.
pub fn value_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|v| v.trim().to_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

fn parse_bool(key: &str) -> Result<bool, ConnectorError> {
    match setting(key).as_deref().map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(fatal(format!(
            "config `{key}` is `{other}`; expected true or false"
        ))),
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, default: T) -> Result<T, ConnectorError> {
    match setting(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| fatal(format!("config `{key}` = `{text}` is not a valid number"))),
    }
}

fn one_of<T: Copy>(key: &str, default: &str, choices: &[(&str, T)]) -> Result<T, ConnectorError> {
    let text = setting(key).unwrap_or_else(|| default.to_string());
    let text = text.trim();
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            fatal(format!(
                "config `{key}` is `{text}`; expected one of {}",
                names.join(", ")
            ))
        })
}

impl Settings {
    /// Reads and checks the connector's config.
    pub fn load() -> Result<Settings, ConnectorError> {
        let mut unknown: Vec<String> = config::keys()
            .into_iter()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(fatal(format!(
                "unknown config key(s): {} (typo?)",
                unknown.join(", ")
            )));
        }

        let provider = required("provider")?.trim().to_string();
        if provider.len() > 64 || provider.chars().any(char::is_control) {
            return Err(fatal(
                "config `provider` must be at most 64 bytes without control characters".into(),
            ));
        }
        let currency = setting("currency").unwrap_or_else(|| "VND".into());
        let currency = currency.trim().to_string();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(fatal(format!(
                "config `currency` = `{currency}` is not a 3-letter upper-case ISO 4217 code"
            )));
        }

        // `items_pointer = ""` (RFC 6901: the whole document) means the body
        // itself is the array of transactions.
        let items = match config::get("items_pointer") {
            None => None,
            Some(p) => {
                let p = p.trim().to_string();
                check_pointer("items_pointer", &p, true)?;
                Some(Field {
                    key: "items_pointer",
                    pointer: p,
                })
            }
        };

        let id = required_pointer("id_pointer")?;
        let amount = required_pointer("amount_pointer")?;
        let amount_scale: u32 = parse_number("amount_scale", 0)?;
        if amount_scale > 18 {
            return Err(fatal("config `amount_scale` must be 0 to 18".into()));
        }

        let account_field = pointer("account_pointer")?;
        let account_fixed = setting("account").map(|a| a.trim().to_string());
        if account_field.is_none() && account_fixed.is_none() {
            return Err(fatal(
                "set config `account_pointer` (where the body names the account) or `account` (a fixed account number)"
                    .into(),
            ));
        }
        if let Some(a) = &account_fixed
            && (a.len() > 64 || a.chars().any(char::is_control))
        {
            return Err(fatal(
                "config `account` must be at most 64 bytes without control characters".into(),
            ));
        }

        let negative_is_outgoing = parse_bool("negative_is_outgoing")?;
        let direction = match (pointer("direction_pointer")?, negative_is_outgoing) {
            (Some(_), true) => {
                return Err(fatal(
                    "config sets both `direction_pointer` and `negative_is_outgoing = true`; choose one"
                        .into(),
                ));
            }
            (Some(field), false) => {
                let incoming =
                    value_list(&setting("incoming_values").unwrap_or(DEFAULT_INCOMING.into()));
                let outgoing =
                    value_list(&setting("outgoing_values").unwrap_or(DEFAULT_OUTGOING.into()));
                if let Some(both) = incoming.iter().find(|v| outgoing.contains(v)) {
                    return Err(fatal(format!(
                        "config: `{both}` is in both `incoming_values` and `outgoing_values`"
                    )));
                }
                if incoming.is_empty() {
                    return Err(fatal("config `incoming_values` is empty".into()));
                }
                DirectionRule::Field {
                    field,
                    incoming,
                    outgoing,
                }
            }
            (None, true) => DirectionRule::NegativeIsOutgoing,
            (None, false) => DirectionRule::AllIncoming,
        };

        let occurred_at = match pointer("occurred_at_pointer")? {
            None => None,
            Some(field) => {
                if setting("occurred_at_format").is_none() {
                    return Err(fatal(
                        "config `occurred_at_pointer` is set but `occurred_at_format` is not (rfc3339, unix_s, unix_ms, vietnam_local or vietnam_compact)"
                            .into(),
                    ));
                }
                let format = one_of(
                    "occurred_at_format",
                    "",
                    &[
                        ("rfc3339", TimeFormat::Rfc3339),
                        ("unix_s", TimeFormat::UnixSecs),
                        ("unix_ms", TimeFormat::UnixMillis),
                        ("vietnam_local", TimeFormat::VietnamLocal),
                        ("vietnam_compact", TimeFormat::VietnamCompact),
                    ],
                )?;
                Some((field, format))
            }
        };

        let extra = parse_extra_pointers(&setting("extra_pointers").unwrap_or_default())?;

        let skip = match pointer("skip_pointer")? {
            None => None,
            Some(field) => {
                let values = value_list(&required("skip_values")?);
                if values.is_empty() {
                    return Err(fatal("config `skip_values` is empty".into()));
                }
                Some((field, values))
            }
        };

        let reply_status: u16 = parse_number("reply_status", 200)?;
        // The reply goes out after the changes are stored: a non-2xx would
        // make the sender retry a payment we already have.
        if !(200..=299).contains(&reply_status) {
            return Err(fatal(format!(
                "config `reply_status` = {reply_status}: must be 2xx (it is sent after the payment is stored)"
            )));
        }
        let reply_body = config::get("reply_body").unwrap_or_else(|| r#"{"ok":true}"#.into());

        Ok(Settings {
            provider,
            currency,
            items,
            id,
            amount,
            amount_scale,
            account_field,
            account_fixed,
            direction,
            reference: pointer("reference_pointer")?,
            content: pointer("content_pointer")?,
            counterparty: pointer("counterparty_pointer")?,
            occurred_at,
            extra,
            skip,
            auth: load_auth()?,
            reply_status,
            reply_body,
        })
    }

    /// The reply sent once the changes are stored: JSON when the configured
    /// body is JSON, plain text otherwise.
    pub fn reply(&self) -> HttpResponse {
        if self.reply_status == 204 {
            return HttpResponse::empty(204);
        }
        let mut reply = HttpResponse::json(self.reply_status, self.reply_body.clone());
        if serde_json::from_str::<serde_json::Value>(&self.reply_body).is_err() {
            reply.headers = vec![("content-type".into(), "text/plain; charset=utf-8".into())];
        }
        reply
    }
}

/// `name=/pointer,name2=/other` → pairs.
pub fn parse_extra_pointers(text: &str) -> Result<Vec<(String, Field)>, ConnectorError> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, p) = entry.split_once('=').ok_or_else(|| {
            fatal(format!(
                "config `extra_pointers`: `{entry}` is not `name=/pointer`"
            ))
        })?;
        let (name, p) = (name.trim(), p.trim());
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(fatal(format!(
                "config `extra_pointers`: `{entry}` has no name"
            )));
        }
        check_pointer("extra_pointers", p, false)?;
        out.push((
            name.to_string(),
            Field {
                key: "extra_pointers",
                pointer: p.to_string(),
            },
        ));
    }
    if out.len() > MAX_EXTRA {
        return Err(fatal(format!(
            "config `extra_pointers` has {} entries; at most {MAX_EXTRA}",
            out.len()
        )));
    }
    Ok(out)
}

fn load_auth() -> Result<Auth, ConnectorError> {
    #[derive(Clone, Copy)]
    enum Mode {
        None,
        ApiKey,
        Hmac,
    }
    if setting("auth").is_none() {
        return Err(fatal(
            "config key `auth` is not set: none, apikey or hmac (`none` must be said explicitly)"
                .into(),
        ));
    }
    let mode = one_of(
        "auth",
        "",
        &[
            ("none", Mode::None),
            ("apikey", Mode::ApiKey),
            ("hmac", Mode::Hmac),
        ],
    )?;
    match mode {
        // Secure by default: `none` also needs the words `allow_unsigned =
        // true`, which the gateway allows only on a loopback listener.
        Mode::None if soundbox_plugin_sdk::config::allow_unsigned() => Ok(Auth::None),
        Mode::None => Err(soundbox_plugin_sdk::config::unsigned_refused(
            "auth = \"none\"",
        )),
        Mode::ApiKey => Ok(Auth::ApiKey {
            header: setting("apikey_header")
                .unwrap_or_else(|| "authorization".into())
                .trim()
                .to_ascii_lowercase(),
            key: required("api_key")?,
            // Not trimmed: `Apikey ` ends with the space that separates it.
            prefix: config::get("apikey_prefix").filter(|p| !p.is_empty()),
        }),
        Mode::Hmac => {
            let timestamp_header =
                setting("timestamp_header").map(|h| h.trim().to_ascii_lowercase());
            let payload = one_of(
                "signed_payload",
                if timestamp_header.is_some() {
                    "timestamp.body"
                } else {
                    "body"
                },
                &[
                    ("body", SignedPayload::Body),
                    ("timestamp.body", SignedPayload::TimestampDotBody),
                ],
            )?;
            if payload == SignedPayload::TimestampDotBody && timestamp_header.is_none() {
                return Err(fatal(
                    "config `signed_payload = \"timestamp.body\"` needs `timestamp_header`".into(),
                ));
            }
            Ok(Auth::Hmac(HmacSettings {
                header: required("hmac_header")?.trim().to_ascii_lowercase(),
                secret: required("hmac_secret")?,
                algorithm: one_of(
                    "hmac_algorithm",
                    "sha256",
                    &[("sha256", Algorithm::Sha256), ("sha512", Algorithm::Sha512)],
                )?,
                encoding: one_of(
                    "hmac_encoding",
                    "hex",
                    &[("hex", Encoding::Hex), ("base64", Encoding::Base64)],
                )?,
                prefix: setting("hmac_prefix").map(|p| p.trim().to_string()),
                timestamp_header,
                payload,
                max_skew_secs: parse_number("max_skew_secs", 300)?,
            }))
        }
    }
}
