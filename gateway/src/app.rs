//! Wiring: starts every stage from a validated config and stops them in flow
//! order: ingress first (in-flight webhooks and their plugin calls finish),
//! then the log is synced, then the sinks get a grace period to finish what
//! they are sending, then the log is closed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, QueueView};
use crate::config::Config;
use crate::config::MqttBroker;
use crate::connectors::{Connectors, Runtime};
use crate::ingress::{Ingress, poll};
use crate::log::{EventLog, LogOptions, SledLog};
use crate::sinks::http::HttpSink;
use crate::sinks::mqtt::{ANNOUNCEMENT_BUFFER, MqttSink, SINK_NAME as MQTT_SINK, broker};
use crate::sinks::speaker::{SINK_NAME as SPEAKER_SINK, SpeakerSink};
use crate::sinks::{Shutdown, SinkStats, run_sink};
use crate::speaker_api::client::{SpeakerClient, SpeakerCredentials};
use crate::speaker_api::sim::{SimConfig, Simulator};

/// Where the in-process Speaker API simulator is served on the admin listener.
pub const SIMULATOR_PATH: &str = "/speaker-sim";

/// How often settled entries and old dedupe keys are collected.
const GC_EVERY: Duration = Duration::from_secs(600);

/// Opens the event log (and with it the state store) under `data_dir`.
pub fn open_log(data_dir: &Path, options: LogOptions) -> anyhow::Result<SledLog> {
    SledLog::open(data_dir, options)
        .with_context(|| format!("cannot open the event log in {}", data_dir.display()))
}

/// Builds the runtime and loads every connector.
pub async fn load_connectors(config: &Config, db: &sled::Db) -> anyhow::Result<Arc<Connectors>> {
    let runtime = Arc::new(Runtime::new(
        config.limits.clone(),
        Some(config.gateway.data_dir.join("plugin-cache")),
    )?);
    let connectors = Connectors::load_all(&runtime, &config.connectors, db)
        .await
        .map_err(|(name, e)| anyhow::anyhow!("connector `{name}`: {e}"))?;
    Ok(Arc::new(connectors))
}

/// The names of every configured sink, in config order.
pub fn sink_names(config: &Config) -> Vec<String> {
    let speaker = config.speaker.as_ref().map(|_| SPEAKER_SINK.to_string());
    let mqtt = config.mqtt.as_ref().map(|_| MQTT_SINK.to_string());
    speaker
        .into_iter()
        .chain(mqtt)
        .chain(config.forwards.iter().map(|f| f.name.clone()))
        .collect()
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let log = open_log(&config.gateway.data_dir, config.log.clone())?;
    let shared_log: Arc<dyn EventLog> = Arc::new(log.clone());
    let connectors = load_connectors(&config, log.db()).await?;
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (gateway.listen)",
                config.gateway.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.gateway.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (gateway.admin_listen)",
                config.gateway.admin_listen
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;

    // Every sink's cursor exists before the first webhook is taken: a sink
    // seen for the first time starts at the log's end, so one that
    // registered late (MQTT does on its first connect) would skip payments.
    for sink in sink_names(&config) {
        log.cursor(&sink)
            .with_context(|| format!("reading the cursor of sink `{sink}`"))?;
    }
    // Sinks first, so the backlog starts draining while ingress comes up.
    let sinks_stop = CancellationToken::new();
    let sink_tasks = TaskTracker::new();
    let stop_sinks = Shutdown {
        stop: sinks_stop.clone(),
        grace: config.gateway.shutdown_grace,
    };
    for forward in &config.forwards {
        let sink = HttpSink::new(forward.clone())
            .with_context(|| format!("forward `{}`", forward.name))?;
        sink_tasks.spawn(run_sink(
            Arc::new(sink),
            shared_log.clone(),
            Arc::new(SinkStats::default()),
            stop_sinks.clone(),
        ));
    }
    // What speakers were asked to say, for the MQTT `announcements` topic.
    let (announcements, announcements_rx) = tokio::sync::broadcast::channel(ANNOUNCEMENT_BUFFER);
    if let Some(mqtt) = &config.mqtt {
        if let MqttBroker::Embedded { listen } = mqtt.broker {
            broker::start(listen)?;
        }
        let sink = MqttSink::new(mqtt.clone(), &config.gateway.id).context("[mqtt]")?;
        sink_tasks.spawn(Arc::new(sink).run(
            shared_log.clone(),
            Arc::new(SinkStats::default()),
            stop_sinks.clone(),
            announcements_rx,
        ));
    }
    let mut extra_admin_routes = axum::Router::new();
    if let Some(speaker) = &config.speaker {
        let mut credentials = SpeakerCredentials {
            base_url: speaker.base_url.clone(),
            client_id: speaker.client_id.clone(),
            client_secret: speaker.client_secret.clone(),
        };
        if let Some((devices, faults)) = &speaker.simulator {
            let simulator = Simulator::new(SimConfig {
                devices: devices.clone(),
                faults: faults.clone(),
                ..SimConfig::default()
            });
            extra_admin_routes = extra_admin_routes.nest(SIMULATOR_PATH, simulator.router());
            credentials.base_url = format!("http://{admin_addr}{SIMULATOR_PATH}/devices/v1");
            tracing::info!(base_url = %credentials.base_url, devices = devices.len(), "Speaker API simulator in process");
        }
        let client = SpeakerClient::new(credentials, speaker.timeout)
            .context("building the Speaker API client")?;
        let mut sink = SpeakerSink::new(Arc::new(client), speaker.clone(), config.routes.clone());
        if config.mqtt.is_some() {
            sink = sink.with_announcements(announcements.clone());
        }
        sink_tasks.spawn(run_sink(
            Arc::new(sink),
            shared_log.clone(),
            Arc::new(SinkStats::default()),
            stop_sinks.clone(),
        ));
    }
    sink_tasks.close();

    let background_stop = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(collect_garbage(
        log.clone(),
        sink_names(&config),
        background_stop.clone(),
    ));
    let view = Arc::new(QueueView {
        log: log.clone(),
        sinks: sink_names(&config),
    });
    background.spawn(admin::serve(
        view,
        extra_admin_routes,
        admin_listener,
        background_stop.clone(),
    ));
    background.close();

    let ingress_stop = CancellationToken::new();
    let ingress = Arc::new(Ingress {
        connectors: connectors.clone(),
        log: shared_log.clone(),
        max_body_bytes: config.gateway.max_body_bytes,
    });
    let serving = tokio::spawn(ingress.serve(listener, ingress_stop.clone()));
    let pollers = TaskTracker::new();
    for plugin in connectors.iter().filter(|p| p.world().polls()) {
        pollers.spawn(poll::run_poller(
            plugin.clone(),
            shared_log.clone(),
            ingress_stop.clone(),
        ));
    }
    pollers.close();
    tracing::info!(
        %addr,
        %admin_addr,
        gateway = %config.gateway.id,
        connectors = connectors.len(),
        sinks = sink_names(&config).len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "webhook ingress listening"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping ingress (webhooks and pollers)");
    ingress_stop.cancel();
    serving.await.context("ingress task")?.context("ingress")?;
    pollers.wait().await;
    tracing::info!("ingress stopped; syncing the event log");
    log.sync().context("syncing the event log")?;
    tracing::info!(
        grace_secs = config.gateway.shutdown_grace.as_secs(),
        "stopping sinks"
    );
    sinks_stop.cancel();
    // Workers stop within the grace period on their own; the extra second is
    // for a sink stuck outside a delivery.
    let _ = tokio::time::timeout(
        config.gateway.shutdown_grace + Duration::from_secs(1),
        sink_tasks.wait(),
    )
    .await;
    background_stop.cancel();
    background.wait().await;
    log.close().context("closing the event log")?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs GC now and then, off the async threads.
async fn collect_garbage(log: SledLog, sinks: Vec<String>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(GC_EVERY) => {}
        }
        let (log, sinks) = (log.clone(), sinks.clone());
        match tokio::task::spawn_blocking(move || log.gc(&sinks)).await {
            Ok(Ok(report)) => tracing::debug!(?report, "event log GC"),
            Ok(Err(error)) => tracing::error!(%error, "event log GC failed"),
            Err(error) => tracing::error!(%error, "event log GC panicked"),
        }
    }
}
