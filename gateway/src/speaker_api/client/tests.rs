//! The client against the simulator, over real HTTP on loopback.

use std::sync::Arc;

use super::*;
use crate::speaker_api::sim::testing::{device, serve_on_loopback};
use crate::speaker_api::sim::{Faults, SimConfig, Simulator};

struct Fixture {
    sim: Simulator,
    client: Arc<SpeakerClient>,
    base_url: String,
}

async fn fixture() -> Fixture {
    let sim = Simulator::new(SimConfig {
        devices: vec![
            device("VNS-PAIRED", true, true),
            device("VNS-NEW", false, true),
            device("VNS-OFF", true, false),
        ],
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
    let f = fixture().await;
    let client = client_for(&f.base_url, "wrong");
    assert_eq!(
        client.check("VNS-PAIRED").await,
        Err(SpeakerError::BadCredentials)
    );
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once_and_the_call_retried() {
    let f = fixture().await;
    f.client.check("VNS-PAIRED").await.expect("first");
    f.sim.expire_tokens();
    f.client.check("VNS-PAIRED").await.expect("after refresh");
    assert_eq!(f.sim.tokens_issued(), 2);
}

#[tokio::test]
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

#[tokio::test]
async fn errors_inside_http_200_are_typed() {
    let f = fixture().await;
    assert_eq!(
        f.client.notify("VNS-NEW", 1_000, "r1").await,
        Err(SpeakerError::NotPaired)
    );
    assert_eq!(
        f.client.notify("VNS-OFF", 1_000, "r2").await,
        Err(SpeakerError::Offline)
    );
    let unknown = f.client.check("VNS-NOPE").await.expect_err("unknown");
    assert!(matches!(unknown, SpeakerError::NotFound(_)), "{unknown}");
    assert!(SpeakerError::Offline.is_retriable());
    assert!(!unknown.is_retriable());
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

#[tokio::test]
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
    let f = fixture().await;
    let session = f.client.pair_request("VNS-NEW").await.expect("request");
    let otp = f.sim.spoken_otp("VNS-NEW").expect("spoken");
    assert_eq!(otp.len(), 4);
    let wrong = if otp == "0000" { "1111" } else { "0000" };
    assert_eq!(
        f.client
            .pair_verify("VNS-NEW", &session.session_id, wrong)
            .await,
        Err(SpeakerError::WrongOtp)
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
        Err(SpeakerError::Offline)
    );
}

#[tokio::test]
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
        Err(SpeakerError::SessionExpired)
    );
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
    let checked = f
        .client
        .check_notify("VNS-PAIRED", "sepay-92704")
        .await
        .expect("check");
    assert_eq!(checked.status, "PLAYED");
    assert!(matches!(
        f.client.check_notify("VNS-PAIRED", "never-sent").await,
        Err(SpeakerError::NotFound(_))
    ));
}
