//! Waiting for something to become true, polled.

use std::time::{Duration, Instant};

/// The first pause between two checks; each pause doubles, up to [`SLOWEST`]:
/// what is about to happen is seen at once, a long wait polls a gateway
/// only a few times a second.
const FIRST: Duration = Duration::from_millis(10);
const SLOWEST: Duration = Duration::from_millis(100);

/// Polls `done` until it holds; whether it did within `timeout` (it is
/// checked once more at the deadline).
pub async fn wait_until(timeout: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST;
    loop {
        if done().await {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(SLOWEST);
    }
}

/// [`wait_until`] for code outside an async runtime: blocks the thread.
pub fn wait_until_blocking(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST;
    loop {
        if done() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(SLOWEST);
    }
}
