//! The client against the simulator, over real HTTP on loopback, in both
//! error styles; and against canned answers for what the simulator never
//! sends (numbers for strings, envelope-less errors).
//!
//! Tests that wait for a token, an OTP, a rate or a play to run out do so on
//! tokio's paused clock, which the client and the simulator read
//! (`tokio::time::Instant`): the clock moves only when every task waits and
//! no socket is ready, so a call on loopback is never cut short. The paced
//! client's test stays on real time: governor keeps its own clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

use super::*;
use crate::speaker_api::sim::testing::{device, serve_on_loopback};
use crate::speaker_api::sim::{ErrorStyle, Faults, SimConfig, Simulator};
use crate::speaker_api::types::NotifyState;

/// SePay does not say which style it uses: every refusal test runs in both.
const STYLES: [ErrorStyle; 2] = [ErrorStyle::Http200, ErrorStyle::Http4xx];

struct Fixture {
    sim: Simulator,
    client: Arc<SpeakerClient>,
    base_url: String,
}

async fn fixture() -> Fixture {
    fixture_in(ErrorStyle::default()).await
}

async fn fixture_in(error_style: ErrorStyle) -> Fixture {
    let sim = Simulator::new(SimConfig {
        devices: vec![
            device("VNS-PAIRED", true, true),
            device("VNS-NEW", false, true),
            device("VNS-OFF", true, false),
        ],
        faults: Faults {
            error_style,
            ..Faults::default()
        },
        play_time: Duration::from_millis(300),
        ..SimConfig::default()
    });
    let base_url = serve_on_loopback(&sim).await;
    let client = Arc::new(client_for(&base_url, "sim-secret"));
    Fixture {
        sim,
        client,
        base_url,
    }
}

fn client_for(base_url: &str, secret: &str) -> SpeakerClient {
    SpeakerClient::new(
        SpeakerCredentials {
            base_url: base_url.to_string(),
            client_id: "sim-client".into(),
            client_secret: Secret::new(secret),
        },
        Duration::from_secs(5),
    )
    .expect("client")
}

#[tokio::test]
async fn token_is_fetched_once_and_shared_by_concurrent_calls() {
    let f = fixture().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let client = f.client.clone();
        calls.push(tokio::spawn(
            async move { client.check("VNS-PAIRED").await },
        ));
    }
    for call in calls {
        let device = call.await.expect("join").expect("check");
        assert!(device.is_paired && device.online);
    }
    assert_eq!(f.sim.tokens_issued(), 1);
}

#[tokio::test]
async fn wrong_credentials_are_reported_as_such() {
    for style in STYLES {
        let f = fixture_in(style).await;
        let client = client_for(&f.base_url, "wrong");
        assert_eq!(
            client.check("VNS-PAIRED").await,
            Err(SpeakerError::BadCredentials),
            "{style:?}"
        );
    }
}

/// HTTP 401, and `code: 401` inside HTTP 200: a new token, the call once more.
#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_call_retried() {
    for style in STYLES {
        let f = fixture_in(style).await;
        f.client.check("VNS-PAIRED").await.expect("first");
        f.sim.expire_tokens();
        f.client.check("VNS-PAIRED").await.expect("after refresh");
        assert_eq!(f.sim.tokens_issued(), 2, "{style:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_is_replaced_before_it_expires() {
    let f = fixture().await;
    f.sim.set_token_ttl(Duration::from_secs(1));
    f.client.check("VNS-PAIRED").await.expect("first");
    // Past the refresh point (ttl minus a tenth), before the real expiry.
    tokio::time::sleep(Duration::from_millis(950)).await;
    f.client.check("VNS-PAIRED").await.expect("second");
    assert_eq!(
        f.sim.tokens_issued(),
        2,
        "refreshed ahead of expiry, no 401 needed"
    );
}

fn refused(code: i64, message: &str) -> SpeakerError {
    SpeakerError::Refused {
        code,
        message: message.into(),
    }
}

/// Refusals carry SePay's code and message, in either style, and are never
/// given a meaning (nor retried as is).
#[tokio::test]
async fn refusals_arrive_with_sepays_message_in_both_styles() {
    for style in STYLES {
        let f = fixture_in(style).await;
        let not_paired = f.client.notify("VNS-NEW", 1_000, "r1").await;
        assert_eq!(
            not_paired,
            Err(refused(400, "Thiết bị chưa được liên kết")),
            "{style:?}"
        );
        assert_eq!(
            f.client.notify("VNS-OFF", 1_000, "r2").await,
            Err(refused(400, "Thiết bị đang offline")),
            "{style:?}"
        );
        let unknown = f.client.check("VNS-NOPE").await.expect_err("unknown");
        assert_eq!(
            unknown,
            refused(404, "Không tìm thấy thiết bị"),
            "{style:?}"
        );
        assert!(!unknown.is_retriable());
        // Why is for pair/check to say.
        let off = f.client.check("VNS-OFF").await.expect("check");
        assert!(off.is_paired && !off.online);
    }
}

#[tokio::test]
async fn rate_limits_outages_and_server_errors() {
    let f = fixture().await;
    f.client.check("VNS-PAIRED").await.expect("token first");
    f.sim.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 3,
        ..Faults::default()
    });
    assert_eq!(
        f.client.check("VNS-PAIRED").await,
        Err(SpeakerError::RateLimited {
            retry_after: Some(Duration::from_secs(3))
        })
    );
    f.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        f.client.check("VNS-PAIRED").await,
        Err(SpeakerError::Server(500))
    );
    f.sim.set_faults(Faults {
        outage: true,
        ..Faults::default()
    });
    let err = f.client.check("VNS-PAIRED").await.expect_err("outage");
    assert_eq!(err, SpeakerError::Server(503));
    assert!(err.is_retriable());
}

#[tokio::test(start_paused = true)]
async fn calls_over_the_allowed_rate_get_429_with_the_wait_that_passes() {
    let f = fixture().await;
    f.sim.set_faults(Faults {
        max_calls_per_sec: Some(5),
        ..Faults::default()
    });
    let mut limited = Vec::new();
    for _ in 0..30 {
        if let Err(e) = f.client.check("VNS-PAIRED").await {
            limited.push(e);
        }
    }
    assert!(!limited.is_empty(), "30 quick calls against 5/s");
    // A bucket of one call short waits 1/5 s, rounded up to a whole second.
    assert!(limited.iter().all(|e| *e
        == SpeakerError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }));
    assert_eq!(f.sim.stats().rate_limited, limited.len() as u64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.client
        .check("VNS-PAIRED")
        .await
        .expect("after Retry-After");
}

#[tokio::test]
async fn a_paced_client_stays_under_the_allowed_rate() {
    let f = fixture().await;
    let rate = 20;
    f.sim.set_faults(Faults {
        max_calls_per_sec: Some(rate),
        ..Faults::default()
    });
    let client =
        client_for(&f.base_url, "sim-secret").with_max_calls_per_sec(NonZeroU32::new(rate));
    let started = Instant::now();
    for _ in 0..40 {
        client.check("VNS-PAIRED").await.expect("paced call");
    }
    // 41 calls (with the token) spaced 1/20 s apart take at least 2 s.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(f.sim.stats().rate_limited, 0);
    assert_eq!(f.sim.stats().calls, 41);
}

#[tokio::test]
async fn pairing_with_the_spoken_otp() {
    for style in STYLES {
        let f = fixture_in(style).await;
        let session = f.client.pair_request("VNS-NEW").await.expect("request");
        let otp = f.sim.spoken_otp("VNS-NEW").expect("spoken");
        assert_eq!(otp.len(), 4);
        let wrong = if otp == "0000" { "1111" } else { "0000" };
        assert_eq!(
            f.client
                .pair_verify("VNS-NEW", &session.session_id, wrong)
                .await,
            Err(refused(400, "Mã OTP không đúng")),
            "{style:?}"
        );
        let paired = f
            .client
            .pair_verify("VNS-NEW", &session.session_id, &otp)
            .await
            .expect("verify");
        assert!(paired.is_paired);
        assert!(f.client.check("VNS-NEW").await.expect("check").is_paired);
        // An offline speaker cannot read an OTP.
        assert_eq!(
            f.client.pair_request("VNS-OFF").await,
            Err(refused(400, "Thiết bị đang offline")),
            "{style:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_expired_pairing_session_is_refused() {
    let f = fixture().await;
    f.sim.set_otp_ttl(Duration::from_millis(50));
    let session = f.client.pair_request("VNS-NEW").await.expect("request");
    let otp = f.sim.spoken_otp("VNS-NEW").expect("spoken");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        f.client
            .pair_verify("VNS-NEW", &session.session_id, &otp)
            .await,
        Err(refused(400, "Phiên liên kết đã hết hạn"))
    );
}

/// `check_notify` until it stops answering PENDING (10 s at most); the
/// first answer in each state, in order.
async fn until_settled(client: &SpeakerClient, request_id: &str) -> Vec<NotifyCheck> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<NotifyCheck> = Vec::new();
    loop {
        let check = client.check_notify(request_id).await.expect("check");
        let settled = check.status != NotifyState::Pending;
        if seen.last().is_none_or(|last| last.status != check.status) {
            seen.push(check);
        }
        if settled {
            return seen;
        }
        assert!(Instant::now() < deadline, "still PENDING after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn notify_is_idempotent_by_request_id_and_plays_the_amount() {
    let f = fixture().await;
    for _ in 0..3 {
        let status = f
            .client
            .notify("VNS-PAIRED", 150_000, "sepay-92704")
            .await
            .expect("notify");
        assert_eq!(status.status, "SENT");
    }
    let plays = f.sim.plays();
    assert_eq!(plays.len(), 1);
    assert_eq!(plays[0].words, "một trăm năm mươi nghìn đồng");
}

/// By `requestId` alone: PENDING while the speaker talks (300 ms here), then
/// SUCCESS, with the documented fields.
#[tokio::test(start_paused = true)]
async fn check_notify_by_request_id_is_pending_then_success() {
    for style in STYLES {
        let f = fixture_in(style).await;
        f.client
            .notify("VNS-PAIRED", 150_000, "sepay-1")
            .await
            .expect("notify");
        let seen = until_settled(&f.client, "sepay-1").await;
        let states: Vec<&NotifyState> = seen.iter().map(|c| &c.status).collect();
        assert_eq!(
            states,
            [&NotifyState::Pending, &NotifyState::Success],
            "{style:?}"
        );
        let (first, done) = (&seen[0], &seen[1]);
        assert_eq!(first.message, "Đang chờ xử lý");
        assert_eq!(done.message, "Gửi thành công");
        assert_eq!(first.request_id, "sepay-1");
        assert_eq!(first.hardware_id, "VNS-PAIRED");
        assert_eq!(first.amount, "150000");
        assert_eq!(first.retries_count, "0");
        assert_eq!(first.last_retry_time, None);
        let created = first.created_at.clone().expect("createdAt");
        assert_eq!(created.len(), "2025-05-23 16:06:38".len(), "{created}");
        assert_eq!(
            f.client.check_notify("never-sent").await,
            Err(refused(404, "Không tìm thấy thông báo")),
            "{style:?}"
        );
    }
}

#[tokio::test]
async fn an_injected_failure_ends_failed_and_is_not_a_play() {
    let f = fixture().await;
    f.sim.set_faults(Faults {
        failed_rate: 1.0,
        play_ms: Some(0),
        ..Faults::default()
    });
    f.client
        .notify("VNS-PAIRED", 20_000, "sepay-f")
        .await
        .expect("notify is still SENT");
    let check = f.client.check_notify("sepay-f").await.expect("check");
    assert_eq!(check.status, NotifyState::Failed);
    assert_eq!(check.message, "Gửi thất bại");
    assert!(f.sim.plays().is_empty());
    assert_eq!(f.sim.failed().len(), 1);
}

// --- Canned answers: what the simulator never sends. ---

/// A server answering `/token/create` and every other call with fixed
/// replies; counts tokens and keeps the call bodies.
#[derive(Clone)]
struct Canned {
    token: (StatusCode, String),
    answer: (StatusCode, String),
    tokens: Arc<AtomicU64>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

const TOKEN_201: &str =
    r#"{"code":201,"message":"Resource created","data":"—","access_token":"t","ttl":6000}"#;

impl Canned {
    fn new(token: (u16, &str), answer: (u16, &str)) -> Canned {
        let status = |code| StatusCode::from_u16(code).expect("status");
        Canned {
            token: (status(token.0), token.1.to_string()),
            answer: (status(answer.0), answer.1.to_string()),
            tokens: Arc::default(),
            bodies: Arc::default(),
        }
    }

    /// Serves on loopback; a client for it.
    async fn serve(&self) -> SpeakerClient {
        use axum::response::IntoResponse;
        let token = self.clone();
        let answer = self.clone();
        let router = axum::Router::new()
            .route(
                "/token/create",
                axum::routing::post(move || async move {
                    token.tokens.fetch_add(1, Ordering::SeqCst);
                    json_reply(&token.token).into_response()
                }),
            )
            .fallback(move |body: String| async move {
                if let Ok(mut bodies) = answer.bodies.lock() {
                    bodies.push(body);
                }
                json_reply(&answer.answer).into_response()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        client_for(&format!("http://{addr}"), "secret")
    }
}

fn json_reply((status, body): &(StatusCode, String)) -> impl axum::response::IntoResponse {
    (
        *status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
}

#[tokio::test]
async fn check_notify_sends_the_request_id_alone_and_takes_numbers_for_strings() {
    let canned = Canned::new(
        (201, TOKEN_201),
        (
            200,
            r#"{"code":200,"message":"Thành công","data":{"requestId":"r-9","hardwareId":"VNS-1",
                "amount":1000,"status":"PENDING","message":"Đang chờ xử lý","retriesCount":2,
                "lastRetryTime":"2025-10-13 10:00:05","createdAt":"2025-10-13 10:00:00"}}"#,
        ),
    );
    let client = canned.serve().await;
    let check = client.check_notify("r-9").await.expect("check");
    assert_eq!(check.amount, "1000");
    assert_eq!(check.retries_count, "2");
    assert_eq!(check.status, NotifyState::Pending);
    assert_eq!(
        check.last_retry_time.as_deref(),
        Some("2025-10-13 10:00:05")
    );
    let bodies = canned.bodies.lock().expect("bodies").clone();
    let sent: serde_json::Value = serde_json::from_str(&bodies[0]).expect("json");
    assert_eq!(sent, serde_json::json!({ "requestId": "r-9" }));
}

#[test]
fn unknown_statuses_are_kept_not_rejected() {
    let check: NotifyCheck = serde_json::from_str(
        r#"{"requestId":"r","status":"QUEUED","amount":"5","retriesCount":"0","message":null}"#,
    )
    .expect("decode");
    assert_eq!(check.status, NotifyState::Other("QUEUED".into()));
    assert_eq!(check.message, "");
    assert_eq!(check.created_at, None);
}

/// HTTP 201 and a `data` of any type; the token is the one beside the envelope.
#[tokio::test]
async fn a_token_reply_of_http_201_is_accepted_whatever_its_data() {
    for data in [r#""—""#, "null", r#"{"x":1}"#, "[]"] {
        let token = format!(
            r#"{{"code":201,"message":"Resource created","data":{data},"access_token":"t","ttl":6000}}"#
        );
        let canned = Canned::new(
            (201, &token),
            (
                200,
                r#"{"code":200,"message":"Thành công","data":{"hardwareId":"VNS-1","model":"S5 Plus","isPaired":true,"online":true}}"#,
            ),
        );
        let client = canned.serve().await;
        let device = client.check("VNS-1").await.expect("check");
        assert!(device.online, "data {data}");
    }
}

/// A 401 inside HTTP 200 twice: one new token, then bad credentials.
#[tokio::test]
async fn a_second_401_in_200_means_bad_credentials() {
    let canned = Canned::new(
        (201, TOKEN_201),
        (200, r#"{"code":401,"message":"Unauthorized"}"#),
    );
    let client = canned.serve().await;
    assert_eq!(
        client.check("VNS-1").await,
        Err(SpeakerError::BadCredentials)
    );
    assert_eq!(canned.tokens.load(Ordering::SeqCst), 2);
}

/// The envelope code whatever the HTTP status; the HTTP status when there
/// is no envelope.
#[tokio::test]
async fn codes_are_read_from_the_envelope_or_the_status() {
    let cases: [((u16, &str), SpeakerError); 6] = [
        (
            (200, r#"{"code":503,"message":"Bảo trì","data":null}"#),
            SpeakerError::Server(503),
        ),
        (
            (200, r#"{"code":429,"message":"Too Many Requests"}"#),
            SpeakerError::RateLimited { retry_after: None },
        ),
        ((403, "Forbidden"), refused(403, "Forbidden")),
        ((502, "<html>Bad Gateway</html>"), SpeakerError::Server(502)),
        (
            (422, r#"{"code":422,"message":"Sai dữ liệu"}"#),
            refused(422, "Sai dữ liệu"),
        ),
        (
            (200, r#"{"code":418,"message":"Từ chối","data":null}"#),
            refused(418, "Từ chối"),
        ),
    ];
    for (answer, expected) in cases {
        let canned = Canned::new((201, TOKEN_201), answer);
        let client = canned.serve().await;
        assert_eq!(client.check("VNS-1").await, Err(expected), "{answer:?}");
    }
}

#[test]
fn a_token_reply_never_prints_its_token() {
    let reply: crate::speaker_api::types::TokenReply =
        serde_json::from_str(r#"{"code":201,"access_token":"tok-secret-1","ttl":6000}"#)
            .expect("token reply");
    let shown = format!("{reply:?}");
    assert!(!shown.contains("tok-secret-1"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}
