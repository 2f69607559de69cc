use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::log::{Store, scratch_log};
use crate::model::BalanceChange;

/// A sink that records what it was given and fails as scripted.
#[derive(Debug)]
struct ScriptedSink {
    name: String,
    max_age: Option<Duration>,
    /// Results for successive calls; `Ok` once the script runs out.
    script: Mutex<VecDeque<Result<(), SinkError>>>,
    delivered: Mutex<Vec<String>>,
    calls: AtomicU64,
}

impl ScriptedSink {
    fn new(name: &str, script: Vec<Result<(), SinkError>>) -> Arc<Self> {
        Arc::new(ScriptedSink {
            name: name.into(),
            max_age: None,
            script: Mutex::new(script.into()),
            delivered: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
        })
    }

    fn delivered(&self) -> Vec<String> {
        self.delivered.lock().expect("lock").clone()
    }
}

impl Sink for ScriptedSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(1),
        }
    }

    async fn deliver(&self, entry: &LogEntry) -> Result<(), SinkError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let next = self.script.lock().expect("lock").pop_front();
        match next {
            Some(Err(e)) => Err(e),
            _ => {
                self.delivered
                    .lock()
                    .expect("lock")
                    .push(entry.change.transaction_id.clone());
                Ok(())
            }
        }
    }
}

fn change(txid: &str, occurred_at_ms: Option<i64>) -> BalanceChange {
    BalanceChange {
        occurred_at_ms,
        ..BalanceChange::example(txid, 10_000)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: Store,
    stop: CancellationToken,
}

fn fixture(sinks: &[&str]) -> Fixture {
    let (dir, log) = scratch_log(sinks);
    Fixture {
        _dir: dir,
        log,
        stop: CancellationToken::new(),
    }
}

impl Fixture {
    fn start<S: Sink>(&self, sink: Arc<S>) -> (Arc<SinkStats>, tokio::task::JoinHandle<()>) {
        let stats = Arc::new(SinkStats::default());
        let handle = tokio::spawn(run_sink(
            sink,
            Arc::new(self.log.clone()),
            stats.clone(),
            Shutdown {
                stop: self.stop.clone(),
                grace: Duration::from_millis(100),
            },
        ));
        (stats, handle)
    }

    async fn append(&self, txids: &[&str]) {
        self.log
            .append_changes(txids.iter().map(|t| change(t, None)).collect())
            .await
            .expect("append");
    }

    /// Waits until `sink`'s cursor reaches `seq` (a few seconds at most).
    async fn settled_through(&self, sink: &str, seq: u64) {
        for _ in 0..500 {
            if self.log.cursor_now(sink).expect("cursor") >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{sink} stuck at cursor {}",
            self.log.cursor_now(sink).expect("cursor")
        );
    }
}

#[tokio::test]
async fn delivers_in_log_order_including_entries_appended_later() {
    let f = fixture(&["pos"]);
    f.append(&["1", "2", "3"]).await;
    let sink = ScriptedSink::new("pos", vec![]);
    let (stats, handle) = f.start(sink.clone());
    f.settled_through("pos", 3).await;
    f.append(&["4", "5"]).await;
    f.settled_through("pos", 5).await;
    assert_eq!(sink.delivered(), ["1", "2", "3", "4", "5"]);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 5);
    f.stop.cancel();
    handle.await.expect("join");
}

#[tokio::test]
async fn retriable_failures_are_retried_in_place_keeping_order() {
    let f = fixture(&["pos"]);
    f.append(&["1", "2"]).await;
    let sink = ScriptedSink::new(
        "pos",
        vec![
            Err(SinkError::retriable("connection refused")),
            Err(SinkError::Retriable {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_millis(30)),
            }),
        ],
    );
    let (stats, handle) = f.start(sink.clone());
    f.settled_through("pos", 2).await;
    assert_eq!(sink.delivered(), ["1", "2"]);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    assert_eq!(sink.calls.load(Ordering::Relaxed), 4);
    f.stop.cancel();
    handle.await.expect("join");
}

#[tokio::test]
async fn permanent_failures_become_dead_letters_with_their_reason() {
    let f = fixture(&["pos"]);
    f.append(&["1", "2"]).await;
    let sink = ScriptedSink::new("pos", vec![Err(SinkError::permanent("HTTP 422: bad"))]);
    let (stats, handle) = f.start(sink.clone());
    f.settled_through("pos", 2).await;
    assert_eq!(sink.delivered(), ["2"]);
    assert_eq!(stats.dead.load(Ordering::Relaxed), 1);
    let dead = f.log.list("pos", Some("dead"), 10).expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].transaction_id, "1");
    assert_eq!(dead[0].reason.as_deref(), Some("HTTP 422: bad"));
    // Requeued from the CLI, it goes out again.
    assert_eq!(f.log.requeue("pos", None).await.expect("requeue"), 1);
    for _ in 0..300 {
        if sink.delivered().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sink.delivered(), ["2", "1"]);
    assert_eq!(f.log.status("pos").expect("status").dead_letters, 0);
    f.stop.cancel();
    handle.await.expect("join");
}

#[tokio::test]
async fn entries_older_than_max_age_are_expired_not_delivered() {
    let f = fixture(&["speaker"]);
    let an_hour_ago = now_ms() - 3_600_000;
    f.log
        .append_changes(vec![change("old", Some(an_hour_ago)), change("new", None)])
        .await
        .expect("append");
    let sink = Arc::new(ScriptedSink {
        max_age: Some(Duration::from_secs(300)),
        ..Arc::into_inner(ScriptedSink::new("speaker", vec![])).expect("sole owner")
    });
    let (stats, handle) = f.start(sink.clone());
    f.settled_through("speaker", 2).await;
    assert_eq!(sink.delivered(), ["new"]);
    assert_eq!(stats.expired.load(Ordering::Relaxed), 1);
    let status = f.log.status("speaker").expect("status");
    assert_eq!((status.expired, status.delivered), (1, 1));
    f.stop.cancel();
    handle.await.expect("join");
}

#[tokio::test]
async fn a_sink_that_is_down_does_not_hold_back_another() {
    let f = fixture(&["down", "up"]);
    f.append(&["1", "2", "3"]).await;
    let down = ScriptedSink::new(
        "down",
        (0..10_000)
            .map(|_| Err(SinkError::retriable("unreachable")))
            .collect(),
    );
    let up = ScriptedSink::new("up", vec![]);
    let (_, h1) = f.start(down.clone());
    let (_, h2) = f.start(up.clone());
    f.settled_through("up", 3).await;
    assert_eq!(up.delivered(), ["1", "2", "3"]);
    assert!(down.delivered().is_empty());
    assert_eq!(f.log.cursor_now("down").expect("cursor"), 0);
    f.stop.cancel();
    h1.await.expect("join");
    h2.await.expect("join");
}

#[tokio::test]
async fn stopping_leaves_the_undelivered_entry_pending() {
    let f = fixture(&["pos"]);
    f.append(&["1"]).await;
    let sink = ScriptedSink::new(
        "pos",
        (0..10_000)
            .map(|_| Err(SinkError::retriable("unreachable")))
            .collect(),
    );
    let (_, handle) = f.start(sink.clone());
    while sink.calls.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("stops promptly")
        .expect("join");
    assert_eq!(f.log.status("pos").expect("status").pending, 1);
}

#[test]
fn age_uses_booking_time_unless_it_is_in_the_future() {
    let now = 1_000_000;
    let entry = |occurred: Option<i64>| LogEntry {
        seq: 0,
        appended_at_ms: now - 1_000,
        change: change("1", occurred),
    };
    assert_eq!(age_ms(&entry(None), now), 1_000);
    assert_eq!(age_ms(&entry(Some(now - 60_000)), now), 60_000);
    assert_eq!(age_ms(&entry(Some(now + 60_000)), now), 1_000);
    // Logged while the clock was two hours behind, booked 10 s ago.
    let early = LogEntry {
        appended_at_ms: now - 7_200_000,
        ..entry(Some(now - 10_000))
    };
    assert_eq!(age_ms(&early, now), 10_000);
}
