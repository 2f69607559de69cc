//! `[speaker]` and `[[route]]`: the SePay Speaker API (or the simulator in
//! its place), how payments are announced, and which speakers announce
//! payments to which account.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::locate::Locator;
use super::name::NonBlank;
use super::simulator::{Faults, SimDevice, SimulatorConfig};
use super::values::{expand_env, millis, positive, retry};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

/// The production API ("bat-dau-nhanh"; no sandbox is published).
pub const DEFAULT_BASE_URL: &str = "https://speaker-api.sepay.vn/devices/v1";

/// `[speaker]`: the SePay Speaker API and how payments are announced.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerConfig {
    /// Which Speaker API the gateway talks to.
    pub api: SpeakerApi,
    /// Payments older than this are not announced (kept, counted as expired).
    pub max_age: Duration,
    pub announce_outgoing: bool,
    pub min_amount: u64,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// The Speaker API's allowed call rate; calls are spaced to it. None: unpaced.
    pub max_calls_per_sec: Option<NonZeroU32>,
}

/// Which Speaker API `[speaker]` talks to.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeakerApi {
    /// One at `base_url` (SePay's unless set), with the partner's credentials.
    Remote {
        base_url: String,
        client_id: String,
        client_secret: Secret,
    },
    /// `simulator = true`: the simulator runs in process, served on the
    /// admin listener ([`SimulatorConfig::base_url`] once that listens),
    /// with credentials of its own. No credentials, no internet.
    Simulator(SimulatorConfig),
}

impl SpeakerApi {
    /// The simulator's speakers and faults, if the gateway runs one.
    pub fn simulator(&self) -> Option<&SimulatorConfig> {
        match self {
            SpeakerApi::Simulator(simulator) => Some(simulator),
            SpeakerApi::Remote { .. } => None,
        }
    }
}

/// `[[route]]`: which speakers announce payments to which account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// An account number, or `*` for every account.
    pub account: String,
    pub speakers: Vec<String>,
    pub min_amount: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpeaker {
    #[serde(default)]
    simulator: bool,
    #[serde(default)]
    sim_devices: Vec<SimDevice>,
    #[serde(default)]
    sim_faults: Faults,
    base_url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    max_age_secs: Option<Spanned<u64>>,
    #[serde(default)]
    announce_outgoing: bool,
    #[serde(default)]
    min_amount: u64,
    timeout_ms: Option<Spanned<u64>>,
    retry_initial_ms: Option<Spanned<u64>>,
    retry_max_ms: Option<Spanned<u64>>,
    max_calls_per_sec: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    account: Spanned<String>,
    speakers: Spanned<Vec<String>>,
    #[serde(default)]
    min_amount: u64,
}

pub(super) fn parse(
    loc: &Locator<'_>,
    raw: Spanned<RawSpeaker>,
) -> Result<SpeakerConfig, ConfigError> {
    let span = raw.span();
    let s = raw.into_inner();
    let api = if s.simulator {
        SpeakerApi::Simulator(SimulatorConfig {
            devices: s.sim_devices,
            faults: s.sim_faults,
        })
    } else {
        let expanded = |v: Option<Spanned<String>>, key: &str| {
            v.map(|v| expand_env(loc, &v, &format!("speaker.{key}")))
                .transpose()
        };
        let missing = |key: &str| {
            loc.at(
                span.clone(),
                &format!("speaker.{key}"),
                format!(
                    "required unless simulator = true (e.g. {key} = \"${{SEPAY_SPEAKER_{}}}\")",
                    key.to_ascii_uppercase()
                ),
            )
        };
        let client_id = expanded(s.client_id, "client_id")?.ok_or_else(|| missing("client_id"))?;
        let client_secret =
            expanded(s.client_secret, "client_secret")?.ok_or_else(|| missing("client_secret"))?;
        let base_url = expanded(s.base_url, "base_url")?.unwrap_or_else(|| DEFAULT_BASE_URL.into());
        SpeakerApi::Remote {
            base_url,
            client_id,
            client_secret: Secret::new(client_secret),
        }
    };
    Ok(SpeakerConfig {
        api,
        max_age: Duration::from_secs(positive(loc, s.max_age_secs, "speaker.max_age_secs", 300)?),
        announce_outgoing: s.announce_outgoing,
        min_amount: s.min_amount,
        timeout: millis(
            loc,
            s.timeout_ms,
            "speaker.timeout_ms",
            Duration::from_secs(10),
        )?,
        // Shaped for voice: a payment is worth announcing only while the
        // customer is at the counter, so retries start sub-second and stay
        // within a few seconds (full jitter spreads them); `Retry-After`
        // is honoured and nothing waits past `max_age_secs`.
        retry: retry(
            loc,
            "speaker",
            s.retry_initial_ms,
            s.retry_max_ms,
            (Duration::from_millis(200), Duration::from_secs(3)),
        )?,
        max_calls_per_sec: s
            .max_calls_per_sec
            .map(|v| {
                NonZeroU32::new(*v.get_ref()).ok_or_else(|| {
                    loc.at(
                        v.span(),
                        "speaker.max_calls_per_sec",
                        "must be greater than 0",
                    )
                })
            })
            .transpose()?,
    })
}

/// Every `[[route]]`; they need a `[speaker]`.
pub(super) fn parse_routes(
    loc: &Locator<'_>,
    raw: Vec<RawRoute>,
    speaker: Option<&SpeakerConfig>,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        if speaker.is_none() {
            return Err(loc.at(
                r.account.span(),
                &key("account"),
                "routes need a [speaker] section",
            ));
        }
        let account = NonBlank::parse(r.account.get_ref()).ok_or_else(|| {
            loc.at(
                r.account.span(),
                &key("account"),
                "give an account number, or \"*\" for every account",
            )
        })?;
        let speakers: Option<Vec<NonBlank>> = r
            .speakers
            .get_ref()
            .iter()
            .map(|s| NonBlank::parse(s))
            .collect();
        let speakers = speakers.filter(|s| !s.is_empty()).ok_or_else(|| {
            loc.at(
                r.speakers.span(),
                &key("speakers"),
                "list the speakers' hardware ids (printed on each device)",
            )
        })?;
        routes.push(RouteConfig {
            account: account.into(),
            speakers: speakers.into_iter().map(String::from).collect(),
            min_amount: r.min_amount,
        });
    }
    Ok(routes)
}
