//! The simulator on the wire: raw HTTP, so what a client sees is pinned
//! down (shapes, styles, states) without the client's interpretation.

use serde_json::{Value, json};

use super::testing::{device, serve_on_loopback};
use super::*;

struct Wire {
    sim: Simulator,
    http: reqwest::Client,
    /// `…/devices/v1`.
    api: String,
    /// `…/_sim`.
    control: String,
    token: String,
}

async fn wire(faults: Faults) -> Wire {
    let sim = Simulator::new(SimConfig {
        devices: vec![device("VNS-1", true, true), device("VNS-OFF", true, false)],
        faults,
        ..SimConfig::default()
    });
    let api = serve_on_loopback(&sim).await;
    let control = api.replace("/devices/v1", "/_sim");
    let http = reqwest::Client::new();
    let reply: Value = http
        .post(format!("{api}/token/create"))
        .basic_auth("sim-client", Some("sim-secret"))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = reply["access_token"].as_str().expect("token").to_string();
    Wire {
        sim,
        http,
        api,
        control,
        token,
    }
}

impl Wire {
    /// POSTs `body` with the bearer token: the HTTP status and the JSON.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let reply = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = reply.status().as_u16();
        (status, reply.json().await.expect("json"))
    }

    async fn notify(&self, hardware_id: &str, request_id: &str) -> (u16, Value) {
        self.post(
            "/speaker/transactions/notify",
            json!({ "hardwareId": hardware_id, "amount": 1000, "requestId": request_id }),
        )
        .await
    }

    async fn check(&self, request_id: &str) -> Value {
        let (status, reply) = self
            .post(
                "/speaker/transactions/check_notify",
                json!({ "requestId": request_id }),
            )
            .await;
        assert_eq!(
            (status, reply["code"].as_i64()),
            (200, Some(200)),
            "{reply}"
        );
        reply["data"].clone()
    }
}

#[tokio::test]
async fn the_token_is_http_201_beside_the_envelope() {
    let sim = Simulator::new(SimConfig::default());
    let api = serve_on_loopback(&sim).await;
    let reply = reqwest::Client::new()
        .post(format!("{api}/token/create"))
        .basic_auth("sim-client", Some("sim-secret"))
        .send()
        .await
        .expect("token");
    assert_eq!(reply.status().as_u16(), 201);
    let body: Value = reply.json().await.expect("json");
    assert_eq!(body["code"], 201);
    assert_eq!(body["data"], "—");
    assert_eq!(body["ttl"], 6000);
    assert!(body["access_token"].is_string());
}

/// `{"requestId"}` alone, as documented; a `hardwareId` sent along is ignored.
#[tokio::test]
async fn check_notify_takes_the_request_id_alone_with_string_fields() {
    let w = wire(Faults {
        play_ms: Some(0),
        ..Faults::default()
    })
    .await;
    assert_eq!(w.notify("VNS-1", "r-1").await.1["data"]["status"], "SENT");
    let data = w.check("r-1").await;
    assert_eq!(data["requestId"], "r-1");
    assert_eq!(data["hardwareId"], "VNS-1");
    assert_eq!(data["amount"], "1000");
    assert_eq!(data["status"], "SUCCESS");
    assert_eq!(data["message"], "Gửi thành công");
    assert_eq!(data["retriesCount"], "0");
    assert_eq!(data["lastRetryTime"], Value::Null);
    let created = data["createdAt"].as_str().expect("createdAt");
    let shape: String = created
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-dd dd:dd:dd");
    let (status, with_hardware) = w
        .post(
            "/speaker/transactions/check_notify",
            json!({ "requestId": "r-1", "hardwareId": "VNS-OTHER" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(with_hardware["data"]["status"], "SUCCESS");
}

/// Never confirming, and the play time changed at run time.
#[tokio::test]
async fn never_confirm_keeps_it_pending_until_lifted() {
    let w = wire(Faults {
        play_ms: Some(0),
        never_confirm: true,
        ..Faults::default()
    })
    .await;
    w.notify("VNS-1", "r-1").await;
    for _ in 0..3 {
        let data = w.check("r-1").await;
        assert_eq!(data["status"], "PENDING");
        assert_eq!(data["message"], "Đang chờ xử lý");
    }
    assert_eq!(
        w.sim.plays().len(),
        1,
        "played; only the confirmation is missing"
    );
    w.sim.set_faults(Faults {
        play_ms: Some(60_000),
        ..Faults::default()
    });
    assert_eq!(w.check("r-1").await["status"], "PENDING", "still talking");
    w.sim.set_faults(Faults {
        play_ms: Some(0),
        ..Faults::default()
    });
    assert_eq!(w.check("r-1").await["status"], "SUCCESS");
}

#[tokio::test]
async fn an_injected_failure_is_failed_not_played() {
    let w = wire(Faults {
        play_ms: Some(0),
        failed_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let (status, reply) = w.notify("VNS-1", "r-1").await;
    assert_eq!((status, &reply["data"]["status"]), (200, &json!("SENT")));
    let data = w.check("r-1").await;
    assert_eq!(data["status"], "FAILED");
    assert_eq!(data["message"], "Gửi thất bại");
    // Idempotent even so: no second attempt, no play.
    w.notify("VNS-1", "r-1").await;
    assert!(w.sim.plays().is_empty());
    assert_eq!(w.sim.failed().len(), 1);
    let stats = w.sim.stats();
    assert_eq!((stats.plays, stats.failed), (0, 1));
    let failed: Value = reqwest::get(format!("{}/failed", w.control))
        .await
        .expect("failed")
        .json()
        .await
        .expect("json");
    assert_eq!(failed[0]["request_id"], "r-1");
    let stats: Value = reqwest::get(format!("{}/stats", w.control))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["failed"], 1);
}

/// Business errors: HTTP 200 with the code, or the code's HTTP 4xx; the
/// codes are a plain 400 or 404, and the 401 follows the same style.
#[tokio::test]
async fn business_errors_come_in_the_configured_style() {
    for (style, four_xx) in [(ErrorStyle::Http200, false), (ErrorStyle::Http4xx, true)] {
        let w = wire(Faults {
            error_style: style,
            ..Faults::default()
        })
        .await;
        let expect = |code: u16| if four_xx { code } else { 200 };
        let (status, reply) = w.notify("VNS-OFF", "r-1").await;
        assert_eq!((status, &reply["code"]), (expect(400), &json!(400)));
        assert_eq!(reply["message"], "Thiết bị đang offline");
        assert_eq!(reply["data"], Value::Null);
        let (status, reply) = w.notify("VNS-NOPE", "r-2").await;
        assert_eq!((status, &reply["code"]), (expect(404), &json!(404)));
        let (status, reply) = w
            .post(
                "/speaker/transactions/check_notify",
                json!({ "requestId": "never" }),
            )
            .await;
        assert_eq!((status, &reply["code"]), (expect(404), &json!(404)));
        let (status, reply) = w
            .post("/speaker/transactions/check_notify", json!({}))
            .await;
        assert_eq!((status, &reply["code"]), (expect(400), &json!(400)));
        w.sim.expire_tokens();
        let (status, reply) = w.notify("VNS-1", "r-3").await;
        assert_eq!((status, &reply["code"]), (expect(401), &json!(401)));
        assert_eq!(reply["message"], "Unauthorized");
    }
}

#[tokio::test]
async fn speakers_go_offline_and_online_at_run_time() {
    let w = wire(Faults::default()).await;
    assert!(w.sim.set_online("VNS-1", false));
    assert!(!w.sim.set_online("VNS-NOPE", false));
    assert_eq!(w.notify("VNS-1", "r-1").await.1["code"], 400);
    let put = |id: &str, online: bool| {
        w.http
            .put(format!("{}/devices/{id}/online", w.control))
            .json(&online)
            .send()
    };
    assert_eq!(
        put("VNS-1", true).await.expect("put").status().as_u16(),
        200
    );
    assert_eq!(
        put("VNS-NOPE", true).await.expect("put").status().as_u16(),
        404
    );
    assert_eq!(w.notify("VNS-1", "r-1").await.1["data"]["status"], "SENT");
    let devices: Value = reqwest::get(format!("{}/devices", w.control))
        .await
        .expect("devices")
        .json()
        .await
        .expect("json");
    assert_eq!(
        devices,
        json!([
            { "hardware_id": "VNS-1", "model": "S5 Plus", "paired": true, "online": true },
            { "hardware_id": "VNS-OFF", "model": "S5 Plus", "paired": true, "online": false },
        ])
    );
}

#[test]
fn faults_take_the_new_keys_and_default_them() {
    let old: Faults = serde_json::from_value(json!({ "error_rate": 0.5 })).expect("old keys");
    assert_eq!(old.error_style, ErrorStyle::Http200);
    assert_eq!(
        (old.play_ms, old.failed_rate, old.never_confirm),
        (None, 0.0, false)
    );
    let new: Faults = serde_json::from_value(json!({
        "error_style": "http4xx", "play_ms": 100, "failed_rate": 0.25, "never_confirm": true
    }))
    .expect("new keys");
    assert_eq!(new.error_style, ErrorStyle::Http4xx);
    assert_eq!(new.play_ms, Some(100));
    assert!(serde_json::from_value::<Faults>(json!({ "error_style": "http500" })).is_err());
    assert!(serde_json::from_value::<Faults>(json!({ "nonsense": 1 })).is_err());
    assert_eq!("http4xx".parse::<ErrorStyle>(), Ok(ErrorStyle::Http4xx));
}
