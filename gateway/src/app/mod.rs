//! Wiring: starts every stage from a validated config, applies config
//! changes live ([`watch`] tells when), and stops the stages in flow order:
//! ingress first (in-flight webhooks and their plugin calls finish), then the
//! log is synced, then the sinks get a grace period to finish what they are
//! sending, then the rest of the task tree (admin server, GC, ...) gets a
//! deadline, then the log is closed.
//!
//! Long because it is the one place that wires every stage and applies a
//! reload to each of them; the order of start, reload and shutdown reads
//! best in one file.
//!
//! Every task hangs under one root ([`Tasks`]): each poller, subscription and
//! sink on a child of its own, which a reload cancels to replace it; the
//! listeners and the background work on children stopped in the order above.
//!
//! A reload validates the whole new config and loads every new or changed
//! plugin before it touches anything running; if any of that fails, the
//! running config stays. Then it swaps the connectors in one step (a call in
//! flight finishes on the plugin it started on), restarts the pollers and
//! sinks whose settings changed (a sink finishes its delivery in flight and
//! the new one resumes from the same durable cursor), and leaves the rest
//! alone. Settings that need a restart (listen addresses, data dir, limits,
//! the log's options, the simulator) are kept as they were, with a warning.

mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::status::{RefusedChange, SpeakerBoard};
use crate::admin::{self, Live};
use crate::config::{
    Config, ForwardConfig, MqttBroker, MqttConfig, RouteConfig, SIMULATOR_PATH, Secret,
    SimulatorConfig, SpeakerApi, SpeakerConfig, SubscriptionConfig,
};
use crate::connectors::{Connectors, Plugin, Runtime};
use crate::fleet::{self, HealthFeed};
use crate::http_server;
use crate::ingress::mqtt::{Subscription, SubscriptionStats};
use crate::ingress::{Ingress, StaleRule, poll};
use crate::log::{EventLog, LogOptions, Store};
use crate::metrics::metrics;
use crate::sinks::event::AnnouncementJson;
use crate::sinks::http::HttpSink;
use crate::sinks::mqtt::{ANNOUNCEMENT_BUFFER, MqttSink, broker};
use crate::sinks::speaker::{
    LEGACY_SINK_NAME, SpeakerHealth, SpeakerLane, SpeakerService, lane_speaker, routed_speakers,
    routes_of,
};
use crate::sinks::{Shutdown, SinkStats, run_sink, sink_names};
use crate::speaker_api::client::{SpeakerClient, SpeakerCredentials};
use crate::speaker_api::sim::{SimConfig, Simulator};
use crate::tasks::{TaskName, Tasks};

/// How often settled entries and old dedupe keys are collected.
const GC_EVERY: Duration = Duration::from_secs(600);

/// At shutdown, once ingress and the sinks have stopped, how long the rest
/// of the task tree (the admin server and its requests, a GC pass, the
/// health document, the embedded broker's guard) may take to finish.
const TREE_DEADLINE: Duration = Duration::from_secs(10);

/// How long the webhooks in flight may take to finish at shutdown beyond
/// their body's deadline and their plugin call's timeout (storing them).
const INGRESS_DRAIN_SLACK: Duration = Duration::from_secs(5);

/// Opens the store (events, sinks' state, plugin KV) under `data_dir`.
pub fn open_log(data_dir: &Path, options: LogOptions) -> anyhow::Result<Store> {
    Store::open(data_dir, options)
        .with_context(|| format!("cannot open the event log in {}", data_dir.display()))
}

fn runtime(config: &Config) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(
        config.limits.clone(),
        Some(config.gateway.data_dir.join("plugin-cache")),
    )?))
}

/// Builds the runtime and loads every connector.
pub async fn load_connectors(config: &Config, store: &Store) -> anyhow::Result<Arc<Connectors>> {
    let runtime = runtime(config)?;
    let connectors = Connectors::load_all(&runtime, &config.connectors, &config.plugins, store)
        .await
        .map_err(|(name, e)| anyhow::anyhow!("connector `{name}`: {e}"))?;
    Ok(Arc::new(connectors))
}

/// What one sink runs with: a reload restarts a sink only when this changed
/// (a lane only when `[speaker]` or a route naming its speaker changed).
#[derive(Debug, Clone, PartialEq)]
enum SinkSettings {
    SpeakerLane(SpeakerConfig, String, Vec<RouteConfig>),
    Mqtt(MqttConfig, String),
    Forward(ForwardConfig),
}

fn sink_settings(config: &Config, name: &str) -> Option<SinkSettings> {
    if let Some(hw) = lane_speaker(name) {
        let routes = routes_of(&config.routes, hw);
        return config
            .speaker
            .clone()
            .filter(|_| !routes.is_empty())
            .map(|s| SinkSettings::SpeakerLane(s, hw.to_string(), routes));
    }
    if let Some(mqtt) = config.mqtt.iter().find(|m| m.sink_name() == name) {
        return Some(SinkSettings::Mqtt(mqtt.clone(), config.gateway.id.clone()));
    }
    config
        .forwards
        .iter()
        .find(|f| f.name == name)
        .cloned()
        .map(SinkSettings::Forward)
}

/// A task on a child of the task tree: its own stop signal.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Task {
    /// Runs what `make` builds from a new child of `tasks` on that child.
    fn spawn<F>(tasks: &Tasks, name: impl Into<TaskName>, make: impl FnOnce(Tasks) -> F) -> Task
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let child = tasks.child();
        let stop = child.token().clone();
        let handle = child.spawn(name, make(child.clone()));
        Task { stop, handle }
    }

    /// Stops it and waits up to `wait`; past that it is aborted.
    async fn stop(self, wait: Duration) {
        self.stop.cancel();
        let mut handle = self.handle;
        if tokio::time::timeout(wait, &mut handle).await.is_err() {
            handle.abort();
        }
    }
}

struct RunningSink {
    task: Task,
    stats: Arc<SinkStats>,
}

/// Every stage that is running, and the config it runs with.
struct Gateway {
    config: Config,
    /// The root of the task tree.
    tasks: Tasks,
    log: Store,
    shared_log: Arc<dyn EventLog>,
    runtime: Arc<Runtime>,
    connectors: Arc<ArcSwap<Connectors>>,
    pollers: BTreeMap<String, Task>,
    sinks: BTreeMap<String, RunningSink>,
    announcements: broadcast::Sender<AnnouncementJson>,
    /// What the speaker lanes share (one client, one token), rebuilt when
    /// `[speaker]` changes.
    speaker_service: Option<Arc<SpeakerService>>,
    /// The in-process Speaker API simulator's base URL, when it runs.
    simulator_url: Option<String>,
    /// The embedded MQTT broker, once started (it cannot stop).
    embedded_broker: Option<broker::EmbeddedBroker>,
    /// Connectors' MQTT subscriptions, each with the settings it runs with.
    subscriptions: BTreeMap<String, (SubscriptionConfig, Arc<SubscriptionStats>, Task)>,
    /// The fleet health document the MQTT sinks keep retained.
    health: HealthFeed,
    live: Arc<Live>,
}

/// The gateway's stale rule for `config`'s dedupe retention.
fn stale_rule(config: &Config) -> StaleRule {
    StaleRule::new(config.log.dedupe_retention)
}

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    // The root of every task the gateway spawns. Not `shutdown` itself: the
    // stages stop in flow order, each through its own child.
    let tasks = Tasks::new();
    let log = open_log(&config.gateway.data_dir, config.log.clone())?;
    let shared_log: Arc<dyn EventLog> = Arc::new(log.clone());
    let runtime = runtime(&config)?;
    let connectors = Connectors::load_all(&runtime, &config.connectors, &config.plugins, &log)
        .await
        .map_err(|(name, e)| anyhow::anyhow!("connector `{name}`: {e}"))?;
    let connectors = Arc::new(ArcSwap::from_pointee(connectors));
    prune_plugin_cache(&runtime, &connectors.load());
    let listener = bind(config.gateway.listen, "gateway.listen").await?;
    let addr = listener.local_addr()?;
    let admin_listener = bind(config.gateway.admin_listen, "gateway.admin_listen").await?;
    let admin_addr = admin_listener.local_addr()?;

    // What speakers were asked to say: for MQTT and the status page.
    let (announcements, _) = broadcast::channel(ANNOUNCEMENT_BUFFER);
    let speakers = Arc::new(SpeakerBoard::default());
    let follow = speakers.clone().follow(announcements.subscribe());
    let stop = tasks.token().clone();
    tasks.spawn("speaker board", async move {
        stop.run_until_cancelled(follow).await;
    });
    // The admin server, GC and the health document: stopped last.
    let background = tasks.child();
    let live = Arc::new(Live {
        log: log.clone(),
        config: ArcSwap::from_pointee(config.clone()),
        connectors: connectors.clone(),
        sinks: ArcSwap::from_pointee(Vec::new()),
        speakers,
        speaker_health: Arc::new(SpeakerHealth::default()),
        subscriptions: ArcSwap::from_pointee(Vec::new()),
        refused_change: ArcSwap::from_pointee(None),
        started,
        tasks: background.clone(),
    });
    let (health_feed, health) = tokio::sync::watch::channel(None);

    let mut extra_admin_routes = axum::Router::new();
    let mut simulator_url = None;
    if let Some(sim) = config.speaker.as_ref().and_then(|s| s.api.simulator()) {
        let simulator = Simulator::new(SimConfig {
            devices: sim.devices.clone(),
            faults: sim.faults.clone(),
            ..SimConfig::default()
        });
        extra_admin_routes = extra_admin_routes.nest(SIMULATOR_PATH, simulator.router());
        let url = SimulatorConfig::base_url(admin_addr);
        tracing::info!(base_url = %url, devices = sim.devices.len(), "Speaker API simulator in process");
        simulator_url = Some(url);
    }

    let mut gateway = Gateway {
        config: config.clone(),
        tasks: tasks.clone(),
        log: log.clone(),
        shared_log: shared_log.clone(),
        runtime,
        connectors: connectors.clone(),
        pollers: BTreeMap::new(),
        sinks: BTreeMap::new(),
        announcements,
        speaker_service: None,
        simulator_url,
        embedded_broker: None,
        subscriptions: BTreeMap::new(),
        health,
        live: live.clone(),
    };
    // Sinks first, so the backlog starts draining while ingress comes up.
    gateway.update_sinks(&config).await?;

    background.spawn(
        "event log GC",
        collect_garbage(log.clone(), background.clone()),
    );
    background.spawn(
        "fleet health document",
        fleet::keep_fresh(live.clone(), health_feed, background.clone()),
    );
    let admin = admin::serve(
        live.clone(),
        extra_admin_routes,
        admin_listener,
        background.clone(),
    );
    background.spawn("admin server", async move {
        if let Err(error) = admin.await {
            tracing::error!(%error, "admin server stopped");
        }
    });

    let ingress_tasks = tasks.child();
    let ingress = Arc::new(Ingress {
        connectors: connectors.clone(),
        log: shared_log.clone(),
        max_body_bytes: config.gateway.max_body_bytes,
        stale: stale_rule(&config),
    });
    // Webhooks in flight at shutdown: their body, their plugin call, storing.
    let drain = http_server::BODY_DEADLINE + config.limits.call_timeout + INGRESS_DRAIN_SLACK;
    let serving = ingress_tasks.spawn(
        "webhook ingress",
        ingress.serve(listener, ingress_tasks.clone(), drain),
    );
    gateway.update_pollers(&BTreeMap::new());
    gateway.update_subscriptions();
    let mut reloads = watch::Watcher::start(&config);
    tracing::info!(
        %addr,
        %admin_addr,
        gateway = %config.gateway.id,
        connectors = connectors.load().len(),
        sinks = gateway.sinks.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "webhook ingress listening"
    );
    warn_unsigned(&config);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.next() => {
                gateway.reload().await;
                reloads.watch(&gateway.config);
            }
        }
    }

    tracing::info!("shutting down: stopping ingress (webhooks and pollers)");
    ingress_tasks.cancel();
    // Every poller is told at once; a poll in flight finishes and is stored.
    let poll_wait = gateway.config.limits.call_timeout + Duration::from_secs(1);
    let pollers: Vec<Task> = std::mem::take(&mut gateway.pollers).into_values().collect();
    for poller in &pollers {
        poller.stop.cancel();
    }
    for poller in pollers {
        poller.stop(poll_wait).await;
    }
    // A message in hand is dropped unacknowledged: the broker sends it again.
    for (_, _, subscription) in std::mem::take(&mut gateway.subscriptions).into_values() {
        subscription.stop(Duration::from_secs(1)).await;
    }
    // Bounded: requests still in flight after `drain` are cut off.
    serving.await.context("ingress task")?.context("ingress")?;
    tracing::info!("ingress stopped; syncing the event log");
    log.checkpoint().await.context("syncing the event log")?;
    let grace = gateway.config.gateway.shutdown_grace;
    tracing::info!(grace_secs = grace.as_secs(), "stopping sinks");
    // Workers stop within the grace period on their own; the extra second is
    // for a sink stuck outside a delivery.
    let sinks: Vec<_> = std::mem::take(&mut gateway.sinks).into_values().collect();
    for sink in &sinks {
        sink.task.stop.cancel();
    }
    for sink in sinks {
        sink.task.stop(grace + Duration::from_secs(1)).await;
    }
    // The rest (admin server, GC, health document, the embedded broker's
    // guard); what has not finished by the deadline is logged and left.
    tasks.shut_down(TREE_DEADLINE).await;
    drop(gateway);
    tasks
        .spawn_blocking("closing the event log", move || log.close())
        .await
        .context("closing the event log")?
        .context("closing the event log")?;
    tracing::info!("stopped");
    Ok(())
}

impl Gateway {
    /// Reads the config file again and applies what changed, or nothing.
    async fn reload(&mut self) {
        let started = Instant::now();
        let path = self.config.source.clone();
        let new = match Config::load(&path) {
            Ok(new) => self.keep_restart_only(new),
            Err(error) => {
                metrics().reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(%error, "config change refused; still running the previous config");
                self.live.refused_change.store(Arc::new(Some(RefusedChange {
                    reason: error.to_string(),
                    connector: None,
                })));
                return;
            }
        };
        let previous = self.connectors.load_full();
        // Other trusted keys: every plugin is checked again.
        let same_trust = new.plugins == self.config.plugins;
        let unchanged_plugins = same_trust
            && new.connectors.len() == previous.len()
            && new
                .connectors
                .iter()
                .all(|c| previous.get(&c.name).is_some_and(|p| p.is_current(c)));
        if new == self.config && unchanged_plugins {
            tracing::debug!("config and plugins unchanged");
            // Back to what runs: an earlier refusal no longer stands.
            self.live.refused_change.store(Arc::new(None));
            return;
        }
        // Everything new is loaded before anything running is touched.
        let mut plugins = Vec::new();
        let (mut added, mut replaced) = (Vec::new(), Vec::new());
        for c in &new.connectors {
            match previous.get(&c.name) {
                Some(p) if same_trust && p.is_current(c) => {
                    plugins.push(p.clone());
                    continue;
                }
                Some(_) => replaced.push(c.name.clone()),
                None => added.push(c.name.clone()),
            }
            match Plugin::load(self.runtime.clone(), c, &new.plugins, &self.log).await {
                Ok(plugin) => plugins.push(Arc::new(plugin)),
                Err(error) => {
                    metrics().reloads.with_label_values(&["rejected"]).inc();
                    tracing::error!(connector = %c.name, %error, "config change refused: a plugin would not load; still running the previous config");
                    self.live.refused_change.store(Arc::new(Some(RefusedChange {
                        reason: format!("connector `{}`: {error}", c.name),
                        connector: error.on_disk().map(|state| (c.name.clone(), state)),
                    })));
                    return;
                }
            }
        }
        let removed: Vec<String> = previous
            .iter()
            .map(|p| p.name().to_string())
            .filter(|name| !new.connectors.iter().any(|c| &c.name == name))
            .collect();
        self.connectors
            .store(Arc::new(Connectors::from_plugins(plugins)));
        prune_plugin_cache(&self.runtime, &self.connectors.load());
        self.update_pollers(
            &previous
                .iter()
                .map(|p| (p.name().to_string(), p.clone()))
                .collect(),
        );
        self.config.connectors = new.connectors.clone();
        self.update_subscriptions();
        if let Err(error) = self.update_sinks(&new).await {
            // Only a sink that cannot be built (a bad CA file, say) gets here;
            // the others run with the new settings.
            tracing::error!(error = %crate::error::chain(error.as_ref()), "a sink could not start with the new config");
        }
        self.config = new;
        self.live.config.store(Arc::new(self.config.clone()));
        self.live.refused_change.store(Arc::new(None));
        metrics().reloads.with_label_values(&["applied"]).inc();
        tracing::info!(
            ?added,
            ?replaced,
            ?removed,
            ms = started.elapsed().as_millis() as u64,
            "config reloaded"
        );
        warn_unsigned(&self.config);
    }

    /// Keeps what only a restart can change, and says so.
    fn keep_restart_only(&self, mut new: Config) -> Config {
        let old = &self.config;
        let mut kept = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $key:expr) => {
                if new.$($field).+ != old.$($field).+ {
                    new.$($field).+ = old.$($field).+.clone();
                    kept.push($key);
                }
            };
        }
        keep!(gateway.listen, "gateway.listen");
        keep!(gateway.admin_listen, "gateway.admin_listen");
        keep!(gateway.data_dir, "gateway.data_dir");
        keep!(gateway.max_body_bytes, "gateway.max_body_bytes");
        keep!(limits, "[limits]");
        keep!(log, "[log]");
        let simulator = |c: &Config| c.speaker.as_ref().and_then(|s| s.api.simulator().cloned());
        if new.speaker.is_some() && simulator(&new) != simulator(old) {
            // The old speaker settings stay whole: the new ones would talk
            // to a simulator that is not running, or the reverse.
            new.speaker = old.speaker.clone();
            kept.push("speaker.simulator");
        }
        let running = self.embedded_broker.as_ref().map(|b| b.listen());
        for mqtt in &mut new.mqtt {
            if let (Some(running), MqttBroker::Embedded { listen }) = (running, &mut mqtt.broker)
                && *listen != running
            {
                *listen = running;
                kept.push("mqtt.embedded_listen");
            }
        }
        for key in kept {
            tracing::warn!(
                key,
                "changed in the config file; takes effect after a restart"
            );
        }
        new
    }

    /// Stops the pollers of connectors that went or changed, starts those of
    /// new or changed ones. `previous` is the connector set before.
    fn update_pollers(&mut self, previous: &BTreeMap<String, Arc<Plugin>>) {
        let current = self.connectors.load_full();
        let wait = self.config.limits.call_timeout + Duration::from_secs(1);
        for (name, plugin) in previous {
            let kept = current.get(name).is_some_and(|p| Arc::ptr_eq(p, plugin));
            if kept {
                continue;
            }
            let Some(old) = self.pollers.remove(name) else {
                continue;
            };
            // A poll in flight finishes and is stored; a replacement starts
            // only then, so two pollers never share a cursor.
            let replacement = current.get(name).filter(|p| p.world().polls()).cloned();
            let log = self.shared_log.clone();
            let stale = stale_rule(&self.config);
            let task = Task::spawn(&self.tasks, format!("poller {name}"), |tasks| async move {
                old.stop(wait).await;
                if let Some(plugin) = replacement
                    && !tasks.is_cancelled()
                {
                    poll::run_poller(plugin, log, stale, tasks.token().clone()).await;
                }
            });
            if current.get(name).is_some_and(|p| p.world().polls()) {
                self.pollers.insert(name.clone(), task);
            }
        }
        for plugin in current.iter().filter(|p| p.world().polls()) {
            if self.pollers.contains_key(plugin.name()) {
                continue;
            }
            let run = |tasks: Tasks| {
                poll::run_poller(
                    plugin.clone(),
                    self.shared_log.clone(),
                    stale_rule(&self.config),
                    tasks.token().clone(),
                )
            };
            let task = Task::spawn(&self.tasks, format!("poller {}", plugin.name()), run);
            self.pollers.insert(plugin.name().to_string(), task);
        }
    }

    /// Makes the running MQTT subscriptions match the connectors in
    /// `self.config`: stops those that went or changed, starts new ones. A
    /// subscription looks its plugin up per message, so a new plugin alone
    /// does not restart it.
    fn update_subscriptions(&mut self) {
        let wanted: BTreeMap<&str, &SubscriptionConfig> = self
            .config
            .connectors
            .iter()
            .filter_map(|c| Some((c.name.as_str(), c.subscription.as_ref()?)))
            .collect();
        let running: Vec<String> = self.subscriptions.keys().cloned().collect();
        for name in running {
            let same = matches!(
                (wanted.get(name.as_str()), self.subscriptions.get(&name)),
                (Some(new), Some((old, _, _))) if *new == old
            );
            if !same && let Some((_, _, task)) = self.subscriptions.remove(&name) {
                // Dropped between messages or in the middle of one: the
                // broker sends an unacknowledged message again.
                task.stop.cancel();
                task.handle.abort();
            }
        }
        for (name, config) in wanted {
            if self.subscriptions.contains_key(name) {
                continue;
            }
            let stats = Arc::new(SubscriptionStats::default());
            let subscription = Subscription::new(
                name,
                config.clone(),
                self.connectors.clone(),
                self.shared_log.clone(),
                stale_rule(&self.config),
                stats.clone(),
            );
            match subscription {
                Ok(subscription) => {
                    let task =
                        Task::spawn(&self.tasks, format!("mqtt subscription {name}"), |tasks| {
                            subscription.run(tasks)
                        });
                    self.subscriptions
                        .insert(name.to_string(), (config.clone(), stats, task));
                }
                Err(error) => {
                    tracing::error!(connector = %name, %error, "MQTT subscription not started");
                }
            }
        }
        let live = self
            .subscriptions
            .iter()
            .map(|(name, (config, stats, _))| (name.clone(), config.clone(), stats.clone()))
            .collect();
        self.live.subscriptions.store(Arc::new(live));
    }

    /// Makes the running sinks match `config`: stops those that went or
    /// changed (each finishes its delivery in flight), starts new or changed
    /// ones from their durable cursors.
    async fn update_sinks(&mut self, config: &Config) -> anyhow::Result<()> {
        let wanted = sink_names(config);
        let grace = config.gateway.shutdown_grace + Duration::from_secs(1);
        let mut stopping = Vec::new();
        for name in self.sinks.keys().cloned().collect::<Vec<_>>() {
            let same = wanted.contains(&name)
                && sink_settings(&self.config, &name) == sink_settings(config, &name);
            if !same && let Some(sink) = self.sinks.remove(&name) {
                tracing::info!(sink = %name, "restarting sink with new settings");
                sink.task.stop.cancel();
                stopping.push(sink.task);
            }
        }
        for task in stopping {
            task.stop(grace).await;
        }
        let mut first_error = None;
        // Lanes seen for the first time start where the single speaker sink
        // of earlier versions stopped, once; otherwise at the log's end.
        let handover = self
            .log
            .handover_cursor(LEGACY_SINK_NAME)
            .context("reading the cursor of the speaker sink")?;
        let routed = routed_speakers(&config.routes);
        self.live.speaker_health.retain(&routed);
        for name in &wanted {
            if self.sinks.contains_key(name) {
                continue;
            }
            // Registered before the sink runs: a sink seen for the first time
            // starts at the log's end, and one that registered late (MQTT
            // connects later) would skip payments.
            let start = lane_speaker(name).and(handover);
            let registered = self.log.register(name, start).await;
            let started = registered
                .with_context(|| format!("registering sink `{name}` in the store"))
                .and_then(|_| self.start_sink(config, name));
            match started {
                Ok(sink) => {
                    self.sinks.insert(name.clone(), sink);
                }
                Err(error) if first_error.is_none() => first_error = Some(error),
                Err(error) => {
                    tracing::error!(sink = %name, error = %crate::error::chain(error.as_ref()), "sink not started")
                }
            }
        }
        if handover.is_some() && wanted.iter().any(|n| lane_speaker(n).is_some()) {
            self.log
                .retire(LEGACY_SINK_NAME)
                .await
                .context("handing the speaker sink's cursor over to its lanes")?;
            tracing::info!(
                cursor = handover,
                "speaker lanes took over from the single speaker sink"
            );
        }
        let running = wanted
            .iter()
            .filter_map(|n| Some((n.clone(), self.sinks.get(n)?.stats.clone())))
            .collect();
        self.live.sinks.store(Arc::new(running));
        first_error.map_or(Ok(()), Err)
    }

    fn start_sink(&mut self, config: &Config, name: &str) -> anyhow::Result<RunningSink> {
        let stats = Arc::new(SinkStats::default());
        // The sink's own part of the tree: cancelled to stop or replace it.
        let tasks = self.tasks.child();
        let stop = tasks.token().clone();
        let shutdown = Shutdown {
            stop: stop.clone(),
            grace: config.gateway.shutdown_grace,
        };
        let log = self.shared_log.clone();
        let task_name = format!("sink {name}");
        let handle = match sink_settings(config, name) {
            Some(SinkSettings::Forward(forward)) => {
                let sink = HttpSink::new(forward).with_context(|| format!("forward `{name}`"))?;
                tasks.spawn(
                    task_name,
                    run_sink(Arc::new(sink), log, stats.clone(), shutdown),
                )
            }
            Some(SinkSettings::Mqtt(mqtt, gateway_id)) => {
                let access = broker::Access::new(&mqtt);
                let embedded = match mqtt.broker {
                    MqttBroker::Embedded { listen } => {
                        let embedded = match self.embedded_broker.take() {
                            Some(running) => running,
                            // On the root: it outlives the sinks.
                            None => broker::start_on(listen, access.clone(), &self.tasks)?,
                        };
                        // Reloaded accounts, prefix and client id apply.
                        embedded.set_access(access);
                        Some(self.embedded_broker.insert(embedded).clone())
                    }
                    MqttBroker::External(_) => None,
                };
                let mut sink = MqttSink::new(mqtt, &gateway_id)
                    .with_context(|| format!("sink `{name}`"))?
                    .with_speakers(self.live.speaker_health.clone())
                    .with_health(self.health.clone())
                    .with_tasks(tasks.clone());
                if let Some(embedded) = &embedded {
                    sink = sink.with_embedded(embedded);
                }
                tasks.spawn(
                    task_name,
                    Arc::new(sink).run(
                        log,
                        stats.clone(),
                        shutdown,
                        self.announcements.subscribe(),
                    ),
                )
            }
            Some(SinkSettings::SpeakerLane(speaker, hardware_id, routes)) => {
                let service = self.speaker_service(&speaker)?;
                let lane = Arc::new(SpeakerLane::new(
                    service,
                    &hardware_id,
                    routes,
                    tasks.clone(),
                ));
                let stats = stats.clone();
                let lane_tasks = tasks.clone();
                tasks.spawn(task_name, async move {
                    let health = lane_tasks.spawn(
                        format!("speaker health {hardware_id}"),
                        lane.clone().watch_health(),
                    );
                    run_sink(lane.clone(), log, stats, shutdown).await;
                    lane.stopped().await;
                    let _ = health.await;
                })
            }
            None => anyhow::bail!("no sink named `{name}` in the config"),
        };
        Ok(RunningSink {
            task: Task { stop, handle },
            stats,
        })
    }
}

impl Gateway {
    /// The lanes' shared service for `speaker`: the running one if its
    /// settings are the same, else a new one (new client, new token).
    fn speaker_service(&mut self, speaker: &SpeakerConfig) -> anyhow::Result<Arc<SpeakerService>> {
        if let Some(service) = &self.speaker_service
            && service.config == *speaker
        {
            return Ok(service.clone());
        }
        let credentials = match &speaker.api {
            SpeakerApi::Remote {
                base_url,
                client_id,
                client_secret,
            } => SpeakerCredentials {
                base_url: base_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
            },
            SpeakerApi::Simulator(_) => {
                let sim = SimConfig::default();
                SpeakerCredentials {
                    base_url: self
                        .simulator_url
                        .clone()
                        .context("the Speaker API simulator is not running")?,
                    client_id: sim.client_id,
                    client_secret: Secret::new(sim.client_secret),
                }
            }
        };
        let client = SpeakerClient::new(credentials, speaker.timeout)
            .context("building the Speaker API client")?
            .with_max_calls_per_sec(speaker.max_calls_per_sec);
        let service = Arc::new(
            SpeakerService::new(
                Arc::new(client),
                speaker.clone(),
                self.live.speaker_health.clone(),
            )
            .with_announcements(self.announcements.clone()),
        );
        self.speaker_service = Some(service.clone());
        Ok(service)
    }
}

/// Listens on `addr`; an error names the config key it came from.
/// Logs, at every start and reload, each connector that takes unsigned
/// webhooks, so it is never left on by accident.
fn warn_unsigned(config: &Config) {
    for c in config.connectors.iter().filter(|c| c.allows_unsigned()) {
        tracing::warn!(connector = %c.name, "{}", crate::admin::status::unsigned_warning(&c.name));
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Drops compiled plugins no loaded connector uses (a failure only costs disk).
fn prune_plugin_cache(runtime: &Runtime, connectors: &Connectors) {
    let keep: Vec<[u8; 32]> = connectors.iter().map(|p| p.digest()).collect();
    match runtime.prune_cache(&keep) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "old compiled plugins removed from the cache"),
        Err(error) => tracing::warn!(%error, "cannot clean the compiled-plugin cache"),
    }
}

/// Runs GC now and then until `tasks` is cancelled, off the async threads
/// (on `tasks`). The store keeps whatever any registered sink still needs,
/// running or not.
async fn collect_garbage(log: Store, tasks: Tasks) {
    let every = gc_interval();
    loop {
        tokio::select! {
            _ = tasks.token().cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let log = log.clone();
        match tasks
            .spawn_blocking("event log GC pass", move || log.gc())
            .await
        {
            Ok(Ok(report)) => tracing::debug!(?report, "event log GC"),
            Ok(Err(error)) => tracing::error!(%error, "event log GC failed"),
            Err(error) => tracing::error!(%error, "event log GC panicked"),
        }
        metrics().gc_runs.inc();
    }
}

/// [`GC_EVERY`], or what the `SOUNDBOX_TEST_GC_EVERY_MS` test knob says (e2e
/// tests that must see GC run within seconds).
fn gc_interval() -> Duration {
    std::env::var("SOUNDBOX_TEST_GC_EVERY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(GC_EVERY, Duration::from_millis)
}
