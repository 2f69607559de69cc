//! A gateway's admin API as tests and benches read it: any path, the status
//! API, `/metrics` parsed, `/readyz` waited for, subscriptions waited for.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gateway::Gateway;
use crate::wait::wait_until;

/// A client that waits long for a reply: a hung gateway fails the test (as
/// an error) instead of blocking it. One per call: a test's runtime ends
/// with the test, and a client's pooled connections with it.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// `GET /metrics`, parsed.
pub struct Metrics {
    pub content_type: String,
    pub text: String,
    pub scrape: prometheus_parse::Scrape,
}

impl Metrics {
    /// The sum of the samples of `name` that have `labels` (a histogram
    /// counts its observations, a summary 0); `None` if there are none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .reduce(|a, b| a + b)
    }
}

impl Gateway {
    /// `http://<admin address><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = client()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// `GET path` on the admin listener as JSON; fails unless 200.
    pub async fn admin_json(&self, path: &str) -> Value {
        let (status, body) = self.admin_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// `GET /api/status`.
    pub async fn api_status(&self) -> Value {
        self.admin_json("/api/status").await
    }

    /// `GET /metrics`, parsed as Prometheus text; fails unless 200.
    pub async fn metrics(&self) -> Metrics {
        let response = client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /metrics");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = response.text().await.expect("metrics text");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        Metrics {
            content_type,
            text,
            scrape,
        }
    }

    /// Polls `/readyz` until it answers `status`, up to `timeout`: its last
    /// answer, status and body.
    pub async fn wait_ready(&self, status: u16, timeout: Duration) -> (u16, String) {
        let mut last = (0, String::new());
        wait_until(timeout, async || {
            last = self.admin_get("/readyz").await;
            last.0 == status
        })
        .await;
        last
    }
}

/// Waits until each gateway's `/api/status` says its (first) subscription
/// is connected, all within `timeout`: a broker keeps a gateway's messages
/// only once its session exists.
pub async fn wait_subscribed(gateways: &[Gateway], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for (i, gw) in gateways.iter().enumerate() {
        let mut status = None;
        let subscribed = wait_until(
            deadline.saturating_duration_since(Instant::now()),
            async || {
                // Not yet listening, or not yet JSON: not yet subscribed.
                status = match client().get(gw.admin_url("/api/status")).send().await {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                status
                    .as_ref()
                    .and_then(|s| s["subscriptions"][0]["connected"].as_bool())
                    == Some(true)
            },
        )
        .await;
        assert!(
            subscribed,
            "gateway {i} ({}) never subscribed: {status:?}\n{}",
            gw.admin_addr,
            gw.log_tail(300)
        );
    }
}

/// Sink `name`'s entry in a report's `sinks` (`/api/status`, `/api/queue`,
/// `queue status --json`).
pub fn sink<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["sinks"]
        .as_array()
        .and_then(|sinks| sinks.iter().find(|s| s["sink"] == name))
}
