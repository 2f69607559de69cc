//! Wiring: starts every stage from a validated config and stops them in flow
//! order (ingress first, then the rest).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connectors::{Connectors, Runtime};
use crate::ingress::Ingress;
use crate::log::Handoff;

/// sled's page cache; its default (1 GiB) is more than a Pi has.
pub const STORE_CACHE_BYTES: u64 = 8 << 20;

/// Opens the gateway's state store under `data_dir`.
pub fn open_store(data_dir: &Path) -> anyhow::Result<sled::Db> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    sled::Config::new()
        .path(data_dir.join("state"))
        .cache_capacity(STORE_CACHE_BYTES)
        .open()
        .with_context(|| format!("cannot open state store in {}", data_dir.display()))
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

/// Runs the gateway until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let db = open_store(&config.gateway.data_dir)?;
    let connectors = load_connectors(&config, &db).await?;
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (gateway.listen)",
                config.gateway.listen
            )
        })?;
    let addr = listener.local_addr()?;

    let tasks = TaskTracker::new();
    let ingress_stop = CancellationToken::new();
    let ingress = Arc::new(Ingress {
        connectors: connectors.clone(),
        handoff: Handoff,
        max_body_bytes: config.gateway.max_body_bytes,
    });
    let serving = tasks.spawn(ingress.serve(listener, ingress_stop.clone()));
    tasks.close();
    tracing::info!(
        %addr,
        gateway = %config.gateway.id,
        connectors = connectors.len(),
        startup_ms = started.elapsed().as_millis() as u64,
        "webhook ingress listening"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping ingress");
    ingress_stop.cancel();
    serving.await.context("ingress task")?.context("ingress")?;
    tasks.wait().await;
    db.flush_async().await.context("flushing state store")?;
    tracing::info!("stopped");
    Ok(())
}
