//! A stand-in for the SePay Speaker API, in process (the default config and
//! the tests use it) or standalone (`speaker-sim`).
//!
//! Long because it follows each page of SePay's Speaker API (tokens,
//! devices, pairing, notify, notify status, faults) in one server, so the
//! simulator can be read against the published pages.
//!
//! It follows SePay's pages (developer.sepay.vn/vi/speaker-api/: "tong-quan",
//! "bat-dau-nhanh", "tao-access-token", "Kiểm tra thiết bị",
//! "yeu-cau-lien-ket-thiet-bi", "kiem-tra-otp",
//! "api-thong-bao-bien-dong-so-du", "Chi tiết trạng thái thông báo"):
//! Basic-auth token issue (HTTP 201, the token beside the envelope) with a
//! real expiry, bearer checks, devices that are paired or not and online or
//! not, OTP pairing sessions that expire, `requestId` idempotency (the same
//! id never plays twice), and `check_notify` by `requestId` alone answering
//! `PENDING` while the speaker is still talking, then `SUCCESS` (or
//! `FAILED`), with `amount` and `retriesCount` as strings.
//!
//! Where SePay is silent the simulator makes choices a client must not rely
//! on: business errors come as HTTP 200 with the code in the envelope or as
//! HTTP 4xx ([`ErrorStyle`]), and their codes are a plain 400 (offline, not
//! paired, wrong OTP, expired session) or 404 (unknown device or
//! `requestId`), with Vietnamese messages ([`super::types::codes`]). A bad
//! bearer token is code 401 in the same style.
//!
//! Fault injection (latency, 5xx, 429 with `Retry-After`, full outage, short
//! token TTL, play time, `FAILED` deliveries, never confirming) comes from
//! config (`[speaker.sim_faults]`) or `PUT /_sim/faults`; speakers go
//! offline and online through `PUT /_sim/devices/{hardware_id}/online`.
//! When it plays an announcement it logs the words the speaker would say.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
// std's Instant, except that tests on tokio's paused clock move it: token,
// OTP and play times pass without real waiting.
use tokio::time::Instant;

use super::types::{
    CheckNotifyRequest, Device, HardwareRequest, NotifyRequest, NotifyStatus, PairSession, Paired,
    VerifyRequest, codes,
};
use super::words::amount_words;

pub use crate::config::{ErrorStyle, Faults, SimDevice};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub client_id: String,
    pub client_secret: String,
    pub token_ttl: Duration,
    pub otp_ttl: Duration,
    pub devices: Vec<SimDevice>,
    pub faults: Faults,
    /// How long a speaker talks: `check_notify` answers `PENDING` for this
    /// long after `notify` (unless [`Faults::play_ms`] says otherwise).
    pub play_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            token_ttl: Duration::from_secs(6000),
            otp_ttl: Duration::from_secs(120),
            devices: Vec::new(),
            faults: Faults::default(),
            play_time: Duration::from_secs(2),
        }
    }
}

/// One announcement the simulated speaker played (or, in
/// [`Simulator::failed`], could not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Play {
    pub hardware_id: String,
    pub request_id: String,
    pub amount: u64,
    /// What the speaker said.
    pub words: String,
}

/// A notification SePay accepted, as `check_notify` reports it.
struct Notification {
    hardware_id: String,
    amount: u64,
    accepted: Instant,
    /// `createdAt`: `YYYY-MM-DD HH:MM:SS`, Vietnam time.
    created_at: String,
    /// How it ends once the play time has passed (decided at notify time).
    fails: bool,
}

struct Session {
    hardware_id: String,
    otp: String,
    expires: Instant,
}

struct SimState {
    config: SimConfig,
    devices: HashMap<String, SimDevice>,
    tokens: HashMap<String, Instant>,
    sessions: HashMap<String, Session>,
    notifications: HashMap<String, Notification>,
    /// The OTP each device last read aloud.
    spoken_otps: HashMap<String, String>,
    plays: Vec<Play>,
    /// Notifications that end `FAILED`: accepted, never played.
    failed: Vec<Play>,
    calls: u64,
    tokens_issued: u64,
    /// Calls `max_calls_per_sec` still lets through, and when it was last refilled.
    allowance: (f64, Instant),
    rate_limited: u64,
}

impl SimState {
    /// Takes one call from the `max_calls_per_sec` allowance; `Some(wait)`
    /// if there is none left, with how long until there is.
    fn over_rate_limit(&mut self) -> Option<Duration> {
        let limit = f64::from(self.config.faults.max_calls_per_sec?.max(1));
        let now = Instant::now();
        let (left, since) = self.allowance;
        let left = (left.min(limit) + now.duration_since(since).as_secs_f64() * limit).min(limit);
        if left >= 1.0 {
            self.allowance = (left - 1.0, now);
            return None;
        }
        self.allowance = (left, now);
        self.rate_limited += 1;
        Some(Duration::from_secs_f64((1.0 - left) / limit))
    }

    /// A business error in the configured [`ErrorStyle`].
    fn refuse(&self, code: i64, message: &str) -> Reply {
        refuse(self.config.faults.error_style, code, message)
    }

    fn play_time(&self) -> Duration {
        self.config
            .faults
            .play_ms
            .map_or(self.config.play_time, Duration::from_millis)
    }
}

/// What the simulator has seen, for tests and benches (`GET /_sim/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub calls: u64,
    pub plays: u64,
    pub tokens_issued: u64,
    /// Calls answered 429 because they exceeded `max_calls_per_sec`.
    pub rate_limited: u64,
    /// Notifications that ended `FAILED` (not counted in `plays`).
    #[serde(default)]
    pub failed: u64,
}

/// The simulator; cheap to clone (shared state).
#[derive(Clone)]
pub struct Simulator {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

type Reply = Response;

fn envelope(http: StatusCode, code: i64, message: &str, data: serde_json::Value) -> Reply {
    (
        http,
        axum::Json(json!({ "code": code, "message": message, "data": data })),
    )
        .into_response()
}

/// A business error: HTTP 200 with the error code, or the code's HTTP 4xx.
fn refuse(style: ErrorStyle, code: i64, message: &str) -> Reply {
    envelope(
        http_status(style, code),
        code,
        message,
        serde_json::Value::Null,
    )
}

fn http_status(style: ErrorStyle, code: i64) -> StatusCode {
    match style {
        ErrorStyle::Http200 => StatusCode::OK,
        ErrorStyle::Http4xx => u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(StatusCode::is_client_error)
            .unwrap_or(StatusCode::BAD_REQUEST),
    }
}

fn ok<T: Serialize>(message: &str, data: T) -> Reply {
    envelope(
        StatusCode::OK,
        codes::OK,
        message,
        serde_json::to_value(data).unwrap_or_default(),
    )
}

/// SePay's one error example, `{"code":401,"message":"Unauthorized"}`
/// (no `data`), in the configured style.
fn unauthorized(style: ErrorStyle) -> Reply {
    (
        http_status(style, codes::UNAUTHORIZED),
        axum::Json(json!({ "code": codes::UNAUTHORIZED, "message": "Unauthorized" })),
    )
        .into_response()
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let devices = config
            .devices
            .iter()
            .map(|d| (d.hardware_id.clone(), d.clone()))
            .collect();
        Simulator {
            state: Arc::new(Mutex::new(SimState {
                config,
                devices,
                tokens: HashMap::new(),
                sessions: HashMap::new(),
                notifications: HashMap::new(),
                spoken_otps: HashMap::new(),
                plays: Vec::new(),
                failed: Vec::new(),
                calls: 0,
                tokens_issued: 0,
                allowance: (f64::MAX, Instant::now()),
                rate_limited: 0,
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SimState) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.with(|s| s.config.faults = faults);
    }

    pub fn set_token_ttl(&self, ttl: Duration) {
        self.with(|s| s.config.token_ttl = ttl);
    }

    /// Adds or changes a device.
    pub fn set_device(&self, device: SimDevice) {
        self.with(|s| {
            s.devices.insert(device.hardware_id.clone(), device);
        });
    }

    /// Turns a speaker on or off; false if there is no such speaker.
    pub fn set_online(&self, hardware_id: &str, online: bool) -> bool {
        self.with(|s| {
            s.devices
                .get_mut(hardware_id)
                .map(|d| d.online = online)
                .is_some()
        })
    }

    /// Every speaker, by hardware id.
    pub fn devices(&self) -> Vec<SimDevice> {
        let mut devices: Vec<SimDevice> = self.with(|s| s.devices.values().cloned().collect());
        devices.sort_by(|a, b| a.hardware_id.cmp(&b.hardware_id));
        devices
    }

    /// Every announcement played so far, in order (not the `FAILED` ones).
    pub fn plays(&self) -> Vec<Play> {
        self.with(|s| s.plays.clone())
    }

    /// Every accepted notification that ends `FAILED`, in order.
    pub fn failed(&self) -> Vec<Play> {
        self.with(|s| s.failed.clone())
    }

    /// The OTP `hardware_id` last read aloud (what a person would hear).
    pub fn spoken_otp(&self, hardware_id: &str) -> Option<String> {
        self.with(|s| s.spoken_otps.get(hardware_id).cloned())
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.with(|s| s.tokens_issued)
    }

    /// Revokes every token, as if they had all expired.
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    pub fn set_otp_ttl(&self, ttl: Duration) {
        self.with(|s| s.config.otp_ttl = ttl);
    }

    /// API calls answered (faults included).
    pub fn calls(&self) -> u64 {
        self.with(|s| s.calls)
    }

    pub fn stats(&self) -> SimStats {
        self.with(|s| SimStats {
            calls: s.calls,
            plays: s.plays.len() as u64,
            tokens_issued: s.tokens_issued,
            rate_limited: s.rate_limited,
            failed: s.failed.len() as u64,
        })
    }

    /// The API under `/devices/v1`, and the control endpoints under `/_sim`.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/token/create", post(token_create))
            .route("/speaker/pair/check", post(pair_check))
            .route("/speaker/pair/request", post(pair_request))
            .route("/speaker/pair/verify", post(pair_verify))
            .route("/speaker/transactions/notify", post(notify))
            .route("/speaker/transactions/check_notify", post(check_notify));
        let control = Router::new()
            .route("/faults", put(put_faults))
            .route("/devices", put(put_device).get(get_devices))
            .route("/devices/{hardware_id}/online", put(put_online))
            .route("/plays", get(get_plays))
            .route("/failed", get(get_failed))
            .route("/stats", get(get_stats))
            .route("/otp/{hardware_id}", get(get_otp));
        Router::new()
            .nest("/devices/v1", api)
            .nest("/_sim", control)
            .with_state(self.clone())
    }

    /// Latency, outage, 429 and 500 as configured; `Some` ends the call.
    async fn faults(&self) -> Option<Reply> {
        let (faults, wait) = self.with(|s| {
            s.calls += 1;
            let wait = s.over_rate_limit();
            (s.config.faults.clone(), wait)
        });
        if let Some(wait) = wait {
            let mut reply = envelope(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "Too Many Requests",
                serde_json::Value::Null,
            );
            // Whole seconds, rounded up: waiting that long always passes.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                reply.headers_mut().insert("retry-after", v);
            }
            return Some(reply);
        }
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.outage {
            return Some(envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                "Service Unavailable",
                serde_json::Value::Null,
            ));
        }
        let roll = fastrand::f64();
        if roll < faults.rate_limit_rate {
            let mut reply = envelope(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                "Too Many Requests",
                serde_json::Value::Null,
            );
            if let Ok(v) = HeaderValue::from_str(&faults.retry_after_secs.to_string()) {
                reply.headers_mut().insert("retry-after", v);
            }
            return Some(reply);
        }
        if roll < faults.rate_limit_rate + faults.error_rate {
            return Some(envelope(
                StatusCode::INTERNAL_SERVER_ERROR,
                500,
                "Internal Server Error",
                serde_json::Value::Null,
            ));
        }
        None
    }

    fn error_style(&self) -> ErrorStyle {
        self.with(|s| s.config.faults.error_style)
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.with(|s| {
            s.tokens
                .get(token)
                .is_some_and(|expires| *expires > Instant::now())
        })
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

async fn token_create(State(sim): State<Simulator>, headers: HeaderMap) -> Reply {
    if let Some(reply) = sim.faults().await {
        return reply;
    }
    let style = sim.error_style();
    let Some((id, secret)) = basic_credentials(&headers) else {
        return unauthorized(style);
    };
    let issued = sim.with(|s| {
        if id != s.config.client_id || secret != s.config.client_secret {
            return None;
        }
        let token = format!("sim-{:032x}", fastrand::u128(..));
        let ttl = s
            .config
            .faults
            .token_ttl_secs
            .map_or(s.config.token_ttl, Duration::from_secs);
        s.tokens.insert(token.clone(), Instant::now() + ttl);
        s.tokens_issued += 1;
        Some((token, ttl))
    });
    let Some((token, ttl)) = issued else {
        return unauthorized(style);
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "code": codes::CREATED,
            "message": "Resource created",
            "data": "—",
            "access_token": token,
            "ttl": ttl.as_secs(),
        })),
    )
        .into_response()
}

/// Parses a JSON body (unknown fields ignored), answering 400 when it does not fit.
fn parse<T: serde::de::DeserializeOwned>(style: ErrorStyle, body: &str) -> Result<T, Box<Reply>> {
    serde_json::from_str(body).map_err(|e| {
        Box::new(refuse(
            style,
            codes::BAD_REQUEST,
            &format!("Dữ liệu không hợp lệ: {e}"),
        ))
    })
}

/// The shared preamble of every bearer-authenticated call.
async fn guard<T: serde::de::DeserializeOwned>(
    sim: &Simulator,
    headers: &HeaderMap,
    body: &str,
) -> Result<T, Box<Reply>> {
    if let Some(reply) = sim.faults().await {
        return Err(Box::new(reply));
    }
    let style = sim.error_style();
    if !sim.bearer_ok(headers) {
        return Err(Box::new(unauthorized(style)));
    }
    parse(style, body)
}

fn device_view(d: &SimDevice) -> Device {
    Device {
        hardware_id: d.hardware_id.clone(),
        model: d.model.clone(),
        is_paired: d.paired,
        online: d.online,
    }
}

async fn pair_check(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> Reply {
    let req: HardwareRequest = match guard(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    sim.with(|s| match s.devices.get(&req.hardware_id) {
        Some(device) => ok("Thành công", device_view(device)),
        None => s.refuse(codes::NOT_FOUND, "Không tìm thấy thiết bị"),
    })
}

async fn pair_request(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> Reply {
    let req: HardwareRequest = match guard(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    sim.with(|s| {
        let Some(device) = s.devices.get(&req.hardware_id).cloned() else {
            return s.refuse(codes::NOT_FOUND, "Không tìm thấy thiết bị");
        };
        if !device.online {
            return s.refuse(codes::BAD_REQUEST, "Thiết bị đang offline");
        }
        let otp = format!("{:04}", fastrand::u16(0..10_000));
        let session_id = format!("{:032x}", fastrand::u128(..));
        let expires = Instant::now() + s.config.otp_ttl;
        s.sessions.insert(
            session_id.clone(),
            Session {
                hardware_id: device.hardware_id.clone(),
                otp: otp.clone(),
                expires,
            },
        );
        s.spoken_otps.insert(device.hardware_id.clone(), otp.clone());
        tracing::info!(target: "speaker_sim", hardware_id = %device.hardware_id, %otp, "speaker reads the pairing OTP aloud");
        ok(
            "Thành công",
            PairSession {
                hardware_id: device.hardware_id,
                model: device.model,
                is_paired: device.paired,
                session_id,
                online: true,
            },
        )
    })
}

async fn pair_verify(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> Reply {
    let req: VerifyRequest = match guard(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    sim.with(|s| {
        let Some(session) = s.sessions.get(&req.session_id) else {
            return s.refuse(
                codes::BAD_REQUEST,
                "Phiên liên kết không tồn tại hoặc đã hết hạn",
            );
        };
        if session.expires <= Instant::now() {
            s.sessions.remove(&req.session_id);
            return s.refuse(codes::BAD_REQUEST, "Phiên liên kết đã hết hạn");
        }
        if session.hardware_id != req.hardware_id {
            return s.refuse(
                codes::BAD_REQUEST,
                "Phiên liên kết không thuộc thiết bị này",
            );
        }
        if session.otp != req.otp {
            return s.refuse(codes::BAD_REQUEST, "Mã OTP không đúng");
        }
        s.sessions.remove(&req.session_id);
        let style = s.config.faults.error_style;
        let Some(device) = s.devices.get_mut(&req.hardware_id) else {
            return refuse(style, codes::NOT_FOUND, "Không tìm thấy thiết bị");
        };
        device.paired = true;
        let paired_time = vietnam_time_now();
        ok(
            "Liên kết thành công",
            Paired {
                hardware_id: device.hardware_id.clone(),
                model: device.model.clone(),
                is_paired: true,
                paired_time,
            },
        )
    })
}

async fn notify(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> Reply {
    let req: NotifyRequest = match guard(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    sim.with(|s| {
        if req.request_id.is_empty() || req.request_id.len() > 64 {
            return s.refuse(codes::BAD_REQUEST, "requestId phải có 1-64 ký tự");
        }
        if req.amount == 0 {
            return s.refuse(codes::BAD_REQUEST, "amount phải lớn hơn 0");
        }
        // Idempotent: a requestId seen before is acknowledged, not replayed.
        if let Some(seen) = s.notifications.get(&req.request_id) {
            return ok(
                "Đã gửi thông báo thành công",
                NotifyStatus {
                    hardware_id: seen.hardware_id.clone(),
                    request_id: req.request_id.clone(),
                    status: "SENT".into(),
                },
            );
        }
        // "The device must be paired and currently online."
        let Some(device) = s.devices.get(&req.hardware_id) else {
            return s.refuse(codes::NOT_FOUND, "Không tìm thấy thiết bị");
        };
        if !device.paired {
            return s.refuse(codes::BAD_REQUEST, "Thiết bị chưa được liên kết");
        }
        if !device.online {
            return s.refuse(codes::BAD_REQUEST, "Thiết bị đang offline");
        }
        let fails = fastrand::f64() < s.config.faults.failed_rate;
        let play = Play {
            hardware_id: req.hardware_id.clone(),
            request_id: req.request_id.clone(),
            amount: req.amount,
            words: amount_words(req.amount),
        };
        if fails {
            tracing::info!(target: "speaker_sim", hardware_id = %play.hardware_id, request_id = %play.request_id, amount = play.amount, "speaker will not play it (FAILED injected)");
            s.failed.push(play);
        } else {
            tracing::info!(target: "speaker_sim", hardware_id = %play.hardware_id, request_id = %play.request_id, amount = play.amount, words = %play.words, "speaker plays");
            s.plays.push(play);
        }
        s.notifications.insert(
            req.request_id.clone(),
            Notification {
                hardware_id: req.hardware_id.clone(),
                amount: req.amount,
                accepted: Instant::now(),
                created_at: vietnam_time_now(),
                fails,
            },
        );
        ok(
            "Đã gửi thông báo thành công",
            NotifyStatus {
                hardware_id: req.hardware_id,
                request_id: req.request_id,
                status: "SENT".into(),
            },
        )
    })
}

/// "Chi tiết trạng thái thông báo": by `requestId` alone (a `hardwareId`
/// sent along is ignored); `PENDING` while the speaker talks, then
/// `SUCCESS` or `FAILED`.
async fn check_notify(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> Reply {
    let req: CheckNotifyRequest = match guard(&sim, &headers, &body).await {
        Ok(r) => r,
        Err(reply) => return *reply,
    };
    sim.with(|s| {
        let Some(n) = s.notifications.get(&req.request_id) else {
            return s.refuse(codes::NOT_FOUND, "Không tìm thấy thông báo");
        };
        let talking = n.accepted.elapsed() < s.play_time();
        let (status, message) = if s.config.faults.never_confirm || talking {
            ("PENDING", "Đang chờ xử lý")
        } else if n.fails {
            ("FAILED", "Gửi thất bại")
        } else {
            ("SUCCESS", "Gửi thành công")
        };
        ok(
            "Thành công",
            json!({
                "requestId": req.request_id,
                "hardwareId": n.hardware_id,
                "amount": n.amount.to_string(),
                "status": status,
                "message": message,
                "retriesCount": "0",
                "lastRetryTime": null,
                "createdAt": n.created_at,
            }),
        )
    })
}

async fn put_faults(State(sim): State<Simulator>, axum::Json(faults): axum::Json<Faults>) -> Reply {
    sim.set_faults(faults.clone());
    axum::Json(faults).into_response()
}

async fn put_device(
    State(sim): State<Simulator>,
    axum::Json(device): axum::Json<SimDevice>,
) -> Reply {
    sim.set_device(device.clone());
    axum::Json(device).into_response()
}

/// `PUT /_sim/devices/{hardware_id}/online` with `true` or `false`.
async fn put_online(
    State(sim): State<Simulator>,
    Path(hardware_id): Path<String>,
    axum::Json(online): axum::Json<bool>,
) -> Reply {
    if sim.set_online(&hardware_id, online) {
        axum::Json(json!({ "hardware_id": hardware_id, "online": online })).into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such device").into_response()
    }
}

async fn get_devices(State(sim): State<Simulator>) -> Reply {
    axum::Json(sim.devices()).into_response()
}

async fn get_plays(State(sim): State<Simulator>) -> Reply {
    axum::Json(sim.plays()).into_response()
}

async fn get_failed(State(sim): State<Simulator>) -> Reply {
    axum::Json(sim.failed()).into_response()
}

async fn get_stats(State(sim): State<Simulator>) -> Reply {
    axum::Json(sim.stats()).into_response()
}

async fn get_otp(State(sim): State<Simulator>, Path(hardware_id): Path<String>) -> Reply {
    match sim.spoken_otp(&hardware_id) {
        Some(otp) => axum::Json(json!({ "otp": otp })).into_response(),
        None => (StatusCode::NOT_FOUND, "no OTP spoken").into_response(),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in Vietnam time (UTC+7), as the API formats times.
fn vietnam_time_now() -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(7 * 3600);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Test helpers shared by the client's and the speaker sink's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{SimDevice, Simulator};

    /// Serves `sim` on a free loopback port; returns the API base URL.
    pub async fn serve_on_loopback(sim: &Simulator) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = sim.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/devices/v1")
    }

    pub fn device(id: &str, paired: bool, online: bool) -> SimDevice {
        SimDevice {
            hardware_id: id.into(),
            model: "S5 Plus".into(),
            paired,
            online,
        }
    }
}

#[cfg(test)]
mod tests;
