//! The HTTP receiver a gateway's `[[forward]]` sink delivers to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::gateway::Gateway;
use crate::net::serve;
use crate::wait::wait_until_blocking;

/// What [`CountingSink`] saw of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub idempotency_key: String,
    pub transaction_id: String,
    pub seq: u64,
    pub amount: u64,
}

#[derive(Debug, Default)]
struct Counts {
    per_key: std::collections::HashMap<String, u32>,
    /// First arrival of each key, in arrival order.
    first: Vec<Arrival>,
    refused: u64,
}

/// An HTTP endpoint for the gateway's `[[forward]]` sink that counts
/// deliveries per `Idempotency-Key`, the way a receiver that dedupes would
/// (SePay's speaker API does so by `requestId`). It can be switched "down"
/// (answers 503) to simulate an outage.
pub struct CountingSink {
    pub url: String,
    counts: Arc<Mutex<Counts>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds to wait before answering each delivery.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl CountingSink {
    pub fn start() -> CountingSink {
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::Ordering;

        let counts: Arc<Mutex<Counts>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, d, slow) = (counts.clone(), down.clone(), delay_ms.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (counts, down, slow) = (c.clone(), d.clone(), slow.clone());
                async move {
                    let delay = slow.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    let mut counts = counts.lock().expect("counts");
                    if down.load(Ordering::SeqCst) {
                        counts.refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok())
                    else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let n = counts.per_key.entry(key.to_string()).or_default();
                    *n += 1;
                    if *n == 1 {
                        counts.first.push(Arrival {
                            idempotency_key: key.to_string(),
                            transaction_id: event["transaction_id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            seq: event["seq"].as_u64().unwrap_or(u64::MAX),
                            amount: event["amount"].as_u64().unwrap_or(0),
                        });
                    }
                    StatusCode::OK
                }
            }),
        );
        let addr = serve(app);
        let url = format!("http://{addr}/events");
        CountingSink {
            url,
            counts,
            down,
            delay_ms,
        }
    }

    /// Answers each delivery only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// While down, every delivery gets 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Each payment's first arrival, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.counts.lock().expect("counts").first.clone()
    }

    /// Deliveries accepted in all, redeliveries included.
    pub fn deliveries(&self) -> u64 {
        let counts = self.counts.lock().expect("counts");
        counts.per_key.values().map(|n| u64::from(*n)).sum()
    }

    /// Deliveries refused while down.
    pub fn refused(&self) -> u64 {
        self.counts.lock().expect("counts").refused
    }

    /// Waits until `n` distinct payments arrived, up to `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until_blocking(timeout, || self.arrivals().len() >= n)
    }

    /// Waits until every transaction id in `expected` arrived, then `settle`
    /// longer for anything that should not come, and asserts each arrived
    /// exactly once and nothing else did. `gw`'s log is shown on a miss.
    pub async fn assert_each_once(
        &self,
        expected: &std::collections::BTreeSet<String>,
        settle: Duration,
        gw: &Gateway,
    ) {
        assert!(
            self.wait_for(expected.len(), Duration::from_secs(60)),
            "{} of {} arrived\n{}",
            self.arrivals().len(),
            expected.len(),
            gw.logs()
        );
        tokio::time::sleep(settle).await;
        let got: std::collections::BTreeSet<String> = self
            .arrivals()
            .iter()
            .map(|a| a.transaction_id.clone())
            .collect();
        assert_eq!(&got, expected);
        assert_eq!(
            self.deliveries(),
            expected.len() as u64,
            "each payment delivered once"
        );
    }
}
