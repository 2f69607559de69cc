//! The HTTP sink against a real server on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;
use crate::config::Secret;
use crate::model::{BalanceChange, now_ms};

type Seen = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

/// Serves `status` (with `Retry-After: 7` when it is 429/503) and records requests.
async fn server(status: StatusCode) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/events",
        post(
            move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                let record = record.clone();
                async move {
                    record.lock().expect("lock").push((headers, body.0));
                    let mut response = (status, "upstream says no").into_response();
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE
                    {
                        response
                            .headers_mut()
                            .insert("retry-after", axum::http::HeaderValue::from_static("7"));
                    }
                    response
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

use axum::response::IntoResponse;

fn sink(url: &str) -> HttpSink {
    HttpSink::new(ForwardConfig {
        name: "pos".into(),
        url: reqwest::Url::parse(url).expect("url"),
        headers: vec![("Authorization".into(), Secret::new("Bearer s3cret"))],
        max_age: None,
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::default(),
    })
    .expect("client")
}

fn entry() -> LogEntry {
    LogEntry {
        seq: 3,
        appended_at_ms: now_ms(),
        change: BalanceChange::example("92704", 2_277_000),
    }
}

#[tokio::test]
async fn posts_the_event_json_with_an_idempotency_key_and_headers() {
    let (addr, seen) = server(StatusCode::OK).await;
    sink(&format!("http://{addr}/events"))
        .deliver(&entry())
        .await
        .expect("delivered");
    let seen = seen.lock().expect("lock");
    let (headers, body) = &seen[0];
    assert_eq!(body["schema"], 1);
    assert_eq!(body["amount"], 2_277_000);
    assert_eq!(body["transaction_id"], "92704");
    assert_eq!(body["direction"], "in");
    let id = body["id"].as_str().expect("id");
    assert_eq!(headers["idempotency-key"], id);
    assert_eq!(headers["authorization"], "Bearer s3cret");
}

#[tokio::test]
async fn classifies_statuses_and_reads_retry_after() {
    for (status, retriable) in [
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::REQUEST_TIMEOUT, true),
        (StatusCode::INTERNAL_SERVER_ERROR, true),
        (StatusCode::BAD_REQUEST, false),
        (StatusCode::UNPROCESSABLE_ENTITY, false),
        (StatusCode::MOVED_PERMANENTLY, false),
    ] {
        let (addr, _) = server(status).await;
        let err = sink(&format!("http://{addr}/events"))
            .deliver(&entry())
            .await
            .expect_err("fails");
        match (err, retriable) {
            (
                SinkError::Retriable {
                    reason,
                    retry_after,
                },
                true,
            ) => {
                assert!(reason.contains(status.as_str()), "{reason}");
                let expect = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                );
                assert_eq!(retry_after.is_some(), expect, "{status}");
                if expect {
                    assert_eq!(retry_after, Some(Duration::from_secs(7)));
                }
            }
            (SinkError::Permanent { reason }, false) => {
                assert!(reason.contains("upstream says no"), "{reason}");
            }
            (other, _) => panic!("{status}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retriable_and_the_error_hides_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = sink(&format!("http://user:pw@{addr}/events?token=abc"))
        .deliver(&entry())
        .await
        .expect_err("refused");
    let SinkError::Retriable { reason, .. } = err else {
        panic!("{err:?}");
    };
    assert!(
        !reason.contains("token=abc") && !reason.contains("pw"),
        "{reason}"
    );
}
