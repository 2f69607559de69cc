//! `simulator = true` in `[speaker]`: the Speaker API simulator runs inside
//! the gateway, on the admin listener, with the speakers and faults of
//! `[[speaker.sim_devices]]` and `[speaker.sim_faults]`.
//!
//! This file owns that schema; the simulator (`speaker_api::sim`) uses the
//! same types. To the rest of the config a simulated speaker API is one
//! opaque [`SimulatorConfig`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Where the in-process Speaker API simulator is served on the admin listener.
pub const SIMULATOR_PATH: &str = "/speaker-sim";

/// The simulator's speakers and faults, as the config gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimulatorConfig {
    pub devices: Vec<SimDevice>,
    pub faults: Faults,
}

impl SimulatorConfig {
    /// The Speaker API base URL of the simulator served on the admin
    /// listener at `admin`.
    pub fn base_url(admin: SocketAddr) -> String {
        format!("http://{admin}{SIMULATOR_PATH}/devices/v1")
    }
}

/// How business errors are sent: SePay does not say, so the client must
/// handle both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorStyle {
    /// HTTP 4xx (the code's own status, 400 if it is not a 4xx) with the envelope.
    Http4xx,
    /// HTTP 200 with the error `code` in the envelope.
    #[default]
    Http200,
}

impl std::str::FromStr for ErrorStyle {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "http4xx" => Ok(ErrorStyle::Http4xx),
            "http200" => Ok(ErrorStyle::Http200),
            other => Err(format!("{other}: expected http4xx or http200")),
        }
    }
}

/// Injected misbehaviour; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every API call.
    pub latency_ms: u64,
    /// Share of calls answered 500 (0.0–1.0).
    pub error_rate: f64,
    /// Share of calls answered 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` of those 429s, seconds.
    pub retry_after_secs: u64,
    /// Every call answered 503.
    pub outage: bool,
    /// Tokens issued from now on live this long (seconds) instead of the configured TTL.
    pub token_ttl_secs: Option<u64>,
    /// The API's allowed rate: calls beyond this many per second (a bucket
    /// of one second's worth, refilled continuously) are answered 429 with
    /// the `Retry-After` that makes the next one pass. None: unlimited.
    pub max_calls_per_sec: Option<u32>,
    /// How long a speaker talks (milliseconds), overriding the simulator's
    /// `SimConfig::play_time`: `check_notify` answers `PENDING` until then.
    pub play_ms: Option<u64>,
    /// Share of accepted notifications (0.0–1.0) that end `FAILED` instead
    /// of `SUCCESS`: never played, listed by the simulator's `failed()`.
    pub failed_rate: f64,
    /// `check_notify` answers `PENDING` forever (a delivery never confirmed).
    pub never_confirm: bool,
    /// How business errors (and 401s) are sent.
    pub error_style: ErrorStyle,
}

/// A speaker the simulator knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDevice {
    pub hardware_id: String,
    #[serde(default = "default_model")]
    pub model: String,
    #[serde(default)]
    pub paired: bool,
    #[serde(default = "yes")]
    pub online: bool,
}

fn default_model() -> String {
    "S5 Plus".into()
}

fn yes() -> bool {
    true
}
