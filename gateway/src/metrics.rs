//! Prometheus metrics, one process-wide registry. Stages count what happens
//! as it happens (calls, deliveries, responses, fsyncs); queue depths are
//! read from the log when `/metrics` is scraped, so they cannot drift.

use std::sync::{LazyLock, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Webhook responses by connector (`unknown` for no such connector) and status.
    pub webhook_responses: IntCounterVec,
    /// A webhook's handler entry to its answer, by connector and status.
    pub webhook_seconds: HistogramVec,
    /// Plugin calls by connector, kind (`webhook`/`poll`) and result
    /// (`ok`, `rejected`, `trap`, `timeout`, `cpu_budget`, `memory`, `invalid`, ...).
    pub plugin_calls: IntCounterVec,
    pub plugin_call_seconds: HistogramVec,
    /// Sink outcomes: `delivered`, `retry`, `expired`, `dead`.
    pub sink_outcomes: IntCounterVec,
    /// One `fdatasync`/`syncfs` of the event log.
    pub fsync_seconds: HistogramVec,
    /// Config reloads by result (`applied`, `rejected`).
    pub reloads: IntCounterVec,
    /// Changes refused for a bank time older than the dedupe window, by connector.
    pub stale_changes: IntCounterVec,
    // Read at scrape time.
    pub queue_pending: IntGaugeVec,
    pub queue_oldest_pending_seconds: IntGaugeVec,
    pub queue_dead_letters: IntGaugeVec,
    pub log_degraded: IntGauge,
    pub gc_runs: prometheus::IntCounter,
    /// Log lines dropped because stderr was not read fast enough.
    pub log_lines_dropped: prometheus::IntCounter,
    pub connector_consecutive_failures: IntGaugeVec,
    pub ready: IntGauge,
    /// Per routed speaker, from `pair/check`: 1, 0, or -1 before the first answer.
    pub speaker_online: IntGaugeVec,
    pub speaker_paired: IntGaugeVec,
    /// Announcement results by speaker (`sent`, `played`, `failed`, `unconfirmed`, `expired`, `refused`).
    pub announcements: IntCounterVec,
}

/// The registry, built on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Registers `metric` and hands it back for use.
fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid gauge"))
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid histogram"),
    )
}

impl Metrics {
    // The names and labels below are constants: registering them cannot fail
    // except through a typo here, which the first test run shows.
    fn new() -> Metrics {
        let registry = Registry::new_custom(Some("soundbox".into()), None).expect("valid prefix");
        let r = &registry;
        // 100 µs .. 10 s: a plugin call is ~1 ms, an fsync 0.1-10 ms on a Pi's SD card.
        let latency = prometheus::exponential_buckets(0.0001, 2.5, 13).expect("valid buckets");
        // A webhook's answer is one plugin call plus one fdatasync: 0.3-1 ms
        // on an SSD, where 0.1 ms steps tell a slow commit from a slow call;
        // up to seconds on a worn SD card or behind a stalled disk.
        let answer = [
            0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0007, 0.0008, 0.0009, 0.001, 0.00125, 0.0015,
            0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]
        .to_vec();
        Metrics {
            webhook_responses: counter(
                r,
                "webhook_responses_total",
                "Webhook responses sent, by connector and HTTP status.",
                &["connector", "status"],
            ),
            webhook_seconds: histogram(
                r,
                "webhook_duration_seconds",
                "Time from a webhook reaching its handler to its answer (plugin call and \
                 durable store included; the network and HTTP parsing are not), by connector \
                 and HTTP status.",
                &["connector", "status"],
                answer,
            ),
            plugin_calls: counter(
                r,
                "plugin_calls_total",
                "Plugin calls, by connector, kind and result.",
                &["connector", "kind", "result"],
            ),
            plugin_call_seconds: histogram(
                r,
                "plugin_call_duration_seconds",
                "Wall time of one plugin call, instantiation included.",
                &["connector", "kind"],
                latency.clone(),
            ),
            sink_outcomes: counter(
                r,
                "sink_outcomes_total",
                "Delivery attempts by sink and outcome (delivered, retry, expired, dead).",
                &["sink", "outcome"],
            ),
            fsync_seconds: histogram(
                r,
                "log_fsync_duration_seconds",
                "Time of one event-log sync to disk (fdatasync or syncfs).",
                &["call"],
                latency,
            ),
            reloads: counter(
                r,
                "config_reloads_total",
                "Config reloads, by result (applied, rejected).",
                &["result"],
            ),
            stale_changes: counter(
                r,
                "stale_changes_total",
                "Balance changes refused because their bank time is older than the dedupe window, by connector.",
                &["connector"],
            ),
            queue_pending: gauge(
                r,
                "queue_pending",
                "Entries a sink has not settled yet.",
                &["sink"],
            ),
            queue_oldest_pending_seconds: gauge(
                r,
                "queue_oldest_pending_age_seconds",
                "Age of the oldest entry a sink has not settled (0 when none).",
                &["sink"],
            ),
            queue_dead_letters: gauge(
                r,
                "queue_dead_letters",
                "Entries a sink gave up on, kept for `queue retry`.",
                &["sink"],
            ),
            log_degraded: plain_gauge(
                r,
                "log_degraded",
                "1 when the event log reports damage or its last commit failed.",
            ),
            gc_runs: register(
                r,
                prometheus::IntCounter::new("log_gc_runs_total", "Store GC passes run.")
                    .expect("valid counter"),
            ),
            log_lines_dropped: register(
                r,
                prometheus::IntCounter::new(
                    "log_lines_dropped_total",
                    "Log lines dropped because stderr (journald, a pipe) was not read fast enough.",
                )
                .expect("valid counter"),
            ),
            connector_consecutive_failures: gauge(
                r,
                "connector_consecutive_failures",
                "Plugin calls in a row that failed on the connector's side.",
                &["connector"],
            ),
            ready: plain_gauge(r, "ready", "1 when /readyz answers 200."),
            speaker_online: gauge(
                r,
                "speaker_online",
                "1 when pair/check last said the speaker is online, 0 offline, -1 not known yet.",
                &["hardware_id"],
            ),
            speaker_paired: gauge(
                r,
                "speaker_paired",
                "1 when pair/check last said the speaker is paired, 0 not paired, -1 not known yet.",
                &["hardware_id"],
            ),
            announcements: counter(
                r,
                "announcements_total",
                "Announcement results by speaker (sent, played, failed, unconfirmed, expired, refused).",
                &["hardware_id", "result"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(dropped) = DROPPED_LOG_LINES.get() {
            let dropped = dropped.dropped_lines() as u64;
            self.log_lines_dropped
                .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for valid metric families.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The log writer's count of dropped lines, read at scrape time.
static DROPPED_LOG_LINES: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Exports the log writer's dropped lines as `log_lines_dropped_total`; the
/// first writer given is the one counted.
pub fn count_dropped_log_lines(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = DROPPED_LOG_LINES.set(counter);
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;

    use tracing_appender::non_blocking::NonBlockingBuilder;

    use super::*;

    /// A stderr nobody reads: says when a write starts, which then waits
    /// until the test ends.
    struct Stalled {
        started: mpsc::Sender<()>,
        until: mpsc::Receiver<()>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.started.send(());
            let _ = self.until.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn exported_dropped_lines() -> u64 {
        metrics()
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("soundbox_log_lines_dropped_total "))
            .and_then(|v| v.parse().ok())
            .expect("log_lines_dropped_total exported")
    }

    #[test]
    fn log_lines_the_writer_drops_are_exported() {
        let (started, write_started) = mpsc::channel();
        let (unstall, until) = mpsc::channel();
        let (mut writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(2)
            .finish(Stalled { started, until });
        count_dropped_log_lines(writer.error_counter());
        writer
            .write_all(b"the line stderr is stuck on\n")
            .expect("lossy");
        write_started
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the writer thread took the first line");
        // Two more fit in the queue; the other eight are dropped.
        for _ in 0..10 {
            writer
                .write_all(b"a line\n")
                .expect("a lossy write never fails");
        }
        assert_eq!(exported_dropped_lines(), 8);
        writer.write_all(b"one more\n").expect("lossy");
        assert_eq!(exported_dropped_lines(), 9);
        drop(unstall);
        drop(guard);
    }
}
