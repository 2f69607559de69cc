//! `queue status|list|retry|forget`: the same answers whether the gateway is running
//! (the store is locked: ask its admin API on loopback) or stopped (open the
//! store directly).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::admin::{QueueReport, QueueView};
use crate::config::Config;
use crate::log::{LogError, QueueItem, Store};
use crate::sinks::speaker::Routing;

#[derive(Debug, Args)]
pub struct Queue {
    #[arg(long, short, default_value = "config.toml", env = "SOUNDBOX_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Per sink: pending entries, age of the oldest, dead letters; and the log's health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Entries of one sink, newest first.
    List {
        /// The sink (optional when there is only one).
        #[arg(long)]
        sink: Option<String>,
        /// Only entries in this state: pending, requeued, delivered, expired, dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters again: one by its seq, or all with --dead.
    Retry {
        #[arg(long)]
        sink: Option<String>,
        #[arg(required_unless_present = "dead")]
        seq: Option<u64>,
        #[arg(long, conflicts_with = "seq")]
        dead: bool,
    },
    /// Let go of a sink the config no longer names: the store stops keeping
    /// its backlog (GC may then remove it). Shown in `status` until then.
    Forget {
        /// The sink, as `status` names it.
        sink: String,
    },
}

/// Where the answers come from.
enum Backend {
    Store(Box<QueueView>),
    Api {
        base: String,
        client: reqwest::Client,
    },
}

impl Backend {
    fn connect(config: &Config) -> anyhow::Result<Backend> {
        let sinks = crate::sinks::sink_names(config);
        match Store::open_as_is(&config.gateway.data_dir, config.log.clone()) {
            Ok(log) => Ok(Backend::Store(Box::new(QueueView {
                log,
                sinks,
                routing: Routing::of(config),
            }))),
            Err(LogError::Locked(_)) => {
                let mut headers = reqwest::header::HeaderMap::new();
                if let Some(token) = &config.admin.token {
                    let mut value = reqwest::header::HeaderValue::try_from(format!(
                        "Bearer {}",
                        token.expose()
                    ))
                    .context("admin.token is not a valid header value")?;
                    value.set_sensitive(true);
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
                Ok(Backend::Api {
                    base: format!("http://{}/api/queue", config.gateway.admin_listen),
                    client: reqwest::Client::builder()
                        .timeout(std::time::Duration::from_secs(10))
                        .default_headers(headers)
                        .build()?,
                })
            }
            Err(e) => Err(e).context("cannot open the event log"),
        }
    }

    async fn api<T: serde::de::DeserializeOwned>(
        request: reqwest::RequestBuilder,
        base: &str,
    ) -> anyhow::Result<T> {
        let response = request.send().await.with_context(|| {
            format!("the store is locked by a running gateway, but its admin API at {base} does not answer")
        })?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or(body);
            bail!("{reason}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    async fn report(&self) -> anyhow::Result<QueueReport> {
        match self {
            Backend::Store(view) => Ok(blocking(view, |view| view.report())?),
            Backend::Api { base, client } => Self::api(client.get(base), base).await,
        }
    }

    async fn list(
        &self,
        sink: &str,
        state: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<QueueItem>> {
        match self {
            Backend::Store(view) => Ok(blocking(view, |view| view.list(sink, state, limit))?),
            Backend::Api { base, client } => {
                let mut query = vec![("limit", limit.to_string())];
                if let Some(state) = state {
                    query.push(("state", state.to_string()));
                }
                let request = client.get(format!("{base}/{sink}")).query(&query);
                Self::api(request, base).await
            }
        }
    }

    async fn retry(&self, sink: &str, seq: Option<u64>) -> anyhow::Result<usize> {
        match self {
            Backend::Store(view) => Ok(view.log.requeue(sink, seq).await?),
            Backend::Api { base, client } => {
                let query = match seq {
                    Some(seq) => vec![("seq", seq.to_string())],
                    None => vec![("dead", "true".to_string())],
                };
                let request = client.post(format!("{base}/{sink}/retry")).query(&query);
                let reply: serde_json::Value = Self::api(request, base).await?;
                Ok(reply["requeued"].as_u64().unwrap_or(0) as usize)
            }
        }
    }

    async fn forget(&self, sink: &str) -> anyhow::Result<bool> {
        match self {
            Backend::Store(view) => {
                if view.sinks.iter().any(|s| s == sink) {
                    bail!(
                        "sink `{sink}` is in the config; remove it from the config before forgetting it"
                    );
                }
                Ok(view.log.forget(sink).await?)
            }
            Backend::Api { base, client } => {
                let request = client.post(format!("{base}/{sink}/forget"));
                match Self::api::<serde_json::Value>(request, base).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.to_string().contains("no registered sink") => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn close(self) {
        if let Backend::Store(view) = self
            && let Err(e) = tokio::task::spawn_blocking(move || view.log.close())
                .await
                .unwrap_or(Err(LogError::Closed))
        {
            tracing::warn!(error = %e, "closing the event log");
        }
    }
}

/// Runs a store read off the async workers (it may wait on the disk).
fn blocking<T>(
    view: &QueueView,
    read: impl FnOnce(&QueueView) -> Result<T, LogError>,
) -> Result<T, LogError> {
    tokio::task::block_in_place(|| read(view))
}

/// The sink to act on: the one given, or the only one there is.
fn pick_sink(report: &QueueReport, given: Option<String>) -> anyhow::Result<String> {
    let names: Vec<&str> = report.sinks.iter().map(|s| s.sink.as_str()).collect();
    let lanes: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| crate::sinks::speaker::lane_speaker(n).is_some())
        .collect();
    match given {
        Some(sink) if names.contains(&sink.as_str()) => Ok(sink),
        // `--sink speaker` with one speaker: its lane.
        Some(sink) if sink == crate::sinks::speaker::LEGACY_SINK_NAME && lanes.len() == 1 => {
            Ok(lanes[0].to_string())
        }
        Some(sink) => bail!("no sink named `{sink}` (sinks: {})", names.join(", ")),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None if names.is_empty() => bail!("no sinks are configured"),
        None => bail!("several sinks; pick one with --sink ({})", names.join(", ")),
    }
}

fn age(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The config as `queue` needs it: the store, the sinks and the admin API's
/// address and token. Secrets it never sends (a connector's `${ENV}` keys,
/// the speaker's, forwards', MQTT's) need not be set in this shell.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load_read_only(path)?)
}

impl Queue {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = load_config(&self.config)?;
        let backend = Backend::connect(&config)?;
        let result = self.command.run(&backend).await;
        backend.close().await;
        result
    }
}

impl QueueCommand {
    async fn run(self, backend: &Backend) -> anyhow::Result<ExitCode> {
        match self {
            QueueCommand::Status { json } => {
                let report = backend.report().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    return Ok(ExitCode::SUCCESS);
                }
                // Lanes are named after their speakers: as wide as the longest.
                let w = report
                    .sinks
                    .iter()
                    .map(|s| s.sink.len())
                    .fold(16, usize::max);
                println!(
                    "{:<w$} {:>8} {:>8} {:>6} {:>10} {:>8}",
                    "sink", "pending", "oldest", "dead", "delivered", "expired"
                );
                for s in &report.sinks {
                    println!(
                        "{:<w$} {:>8} {:>8} {:>6} {:>10} {:>8}{}",
                        s.sink,
                        s.pending,
                        s.oldest_pending_age_ms.map_or("-".to_string(), age),
                        s.dead_letters,
                        s.delivered,
                        s.expired,
                        if s.configured {
                            ""
                        } else {
                            "  (not in the config: kept until `queue forget`)"
                        }
                    );
                }
                let h = &report.health;
                if h.is_degraded() {
                    println!("log: DEGRADED {}", serde_json::to_string(h)?);
                } else {
                    println!("log: healthy");
                }
                Ok(ExitCode::SUCCESS)
            }
            QueueCommand::List {
                sink,
                state,
                limit,
                json,
            } => {
                let sink = pick_sink(&backend.report().await?, sink)?;
                let items = backend.list(&sink, state.as_deref(), limit).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&items)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let now = crate::model::now_ms();
                println!(
                    "{:>8} {:>6} {:<10} {:<12} {:>14} {:<20} reason",
                    "seq", "age", "state", "provider", "amount", "transaction"
                );
                for i in items {
                    println!(
                        "{:>8} {:>6} {:<10} {:<12} {:>10} {} {:<20} {}",
                        i.seq,
                        age(now - i.appended_at_ms),
                        i.state,
                        i.provider,
                        i.amount,
                        i.currency,
                        i.transaction_id,
                        i.reason.unwrap_or_default()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            QueueCommand::Forget { sink } => {
                if backend.forget(&sink).await? {
                    println!("forgot `{sink}`: its backlog is no longer kept");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("no registered sink named `{sink}`");
                    Ok(ExitCode::FAILURE)
                }
            }
            QueueCommand::Retry { sink, seq, dead } => {
                let sink = pick_sink(&backend.report().await?, sink)?;
                let n = backend.retry(&sink, if dead { None } else { seq }).await?;
                match (n, seq) {
                    (0, Some(seq)) => {
                        eprintln!("seq {seq} is not a dead letter of `{sink}`");
                        Ok(ExitCode::FAILURE)
                    }
                    (n, _) => {
                        println!("requeued {n} dead letter(s) of `{sink}`");
                        Ok(ExitCode::SUCCESS)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNSET: &str = "SOUNDBOX_TEST_QUEUE_SURELY_UNSET_SECRET";

    fn config_file(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin file");
        let path = dir.path().join("config.toml");
        let text = format!(
            "[gateway]\nadmin_listen = \"127.0.0.1:18081\"\n\
             [[connector]]\nname = \"bank\"\nplugin = \"p.wasm\"\n\
             [connector.config]\nsecret = \"${{{UNSET}}}\"\n{extra}"
        );
        std::fs::write(&path, text).expect("config");
        path
    }

    #[test]
    fn an_unset_connector_secret_still_gives_the_admin_address() {
        assert!(std::env::var(UNSET).is_err(), "{UNSET} is set");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_file(&dir, "");
        // `run` and `check` refuse it…
        let strict = Config::load(&path).expect_err("the secret is unset");
        assert!(strict.to_string().contains(UNSET), "{strict}");
        // …`queue` only needs the admin API and the store.
        let config = load_config(&path).expect("queue reads it");
        assert_eq!(
            config.gateway.admin_listen,
            "127.0.0.1:18081".parse().expect("address")
        );
        assert_eq!(config.gateway.data_dir, dir.path().join("data"));
    }

    #[test]
    fn speaker_and_forward_secrets_are_not_needed_either() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_file(
            &dir,
            &format!(
                "[speaker]\nclient_id = \"${{{UNSET}}}\"\nclient_secret = \"${{{UNSET}}}\"\n\
                 [[route]]\naccount = \"*\"\nspeakers = [\"VNS-1\"]\n\
                 [[forward]]\nname = \"pos\"\nurl = \"https://pos.example/hook\"\n\
                 [forward.headers]\nAuthorization = \"Bearer ${{{UNSET}}}\"\n"
            ),
        );
        let config = load_config(&path).expect("queue reads it");
        assert_eq!(
            crate::sinks::sink_names(&config),
            ["speaker:VNS-1", "pos"],
            "the sinks are all there"
        );
    }

    #[test]
    fn the_admin_token_it_sends_must_be_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = config_file(&dir, &format!("[admin]\ntoken = \"${{{UNSET}}}\"\n"));
        let error = load_config(&path).expect_err("the token is unset");
        let text = format!("{error:#}");
        assert!(
            text.contains("admin.token") && text.contains(UNSET),
            "{text}"
        );
    }
}
