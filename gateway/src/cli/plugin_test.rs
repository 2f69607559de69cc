//! `plugin test`: run a built plugin once, without a gateway or config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::{ConnectorConfig, PluginLimits};
use crate::connectors::{IncomingRequest, Plugin, Runtime};
use crate::log::{EventLog, LogOptions, Store};

#[derive(Debug, Args)]
pub struct PluginTest {
    /// The plugin (`.wasm` component).
    plugin: PathBuf,
    /// Webhook body: a file path, or the body itself.
    #[arg(long, conflicts_with = "poll")]
    webhook: Option<String>,
    /// The webhook's query string without `?` (VNPay IPNs carry their fields there).
    #[arg(long, default_value = "", conflicts_with = "poll")]
    query: String,
    /// The webhook's HTTP method.
    #[arg(long, default_value = "POST", conflicts_with = "poll")]
    method: String,
    /// Call `poll` instead of `handle`.
    #[arg(long)]
    poll: bool,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A plugin config value, `key=value` (repeatable).
    #[arg(long = "set")]
    settings: Vec<String>,
    /// Hosts the plugin may reach over HTTP (repeatable).
    #[arg(long = "allow-host")]
    allowed_hosts: Vec<String>,
}

impl PluginTest {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let mut settings = toml::Table::new();
        for pair in &self.settings {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--set `{pair}`: expected key=value"))?;
            settings.insert(k.trim().to_string(), toml::Value::String(v.to_string()));
        }
        let mut connector = ConnectorConfig::ad_hoc(self.plugin.clone(), settings);
        connector.allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // The plugin's KV lives in a throwaway store.
        let scratch = tempfile::tempdir()?;
        let store = Store::open(
            scratch.path(),
            LogOptions {
                min_free_disk_bytes: 0,
                wal_bytes: 1 << 20,
                ..LogOptions::default()
            },
        )?;
        let runtime = Arc::new(Runtime::new(PluginLimits::default(), None)?);
        let plugin = Plugin::load(runtime, &connector, &store).await?;

        let started = std::time::Instant::now();
        let output = if self.poll {
            let result = plugin.poll().await?;
            if let Some(kv) = plugin.kv_batch(result.kv_writes) {
                store.append(Vec::new(), Some(kv)).await?;
            }
            serde_json::json!({
                "world": plugin.world(),
                "changes": result.changes,
                "next_poll_ms": result.next_poll.map(|d| d.as_millis() as u64),
            })
        } else {
            let body = match &self.webhook {
                Some(arg) if std::path::Path::new(arg).is_file() => {
                    std::fs::read(arg).with_context(|| format!("reading {arg}"))?
                }
                Some(arg) => arg.as_bytes().to_vec(),
                None if !self.query.is_empty() => Vec::new(),
                None => anyhow::bail!("give --webhook <file|body>, --query or --poll"),
            };
            let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
            for h in &self.headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("--header `{h}`: expected Name: value"))?;
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k.trim()));
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let request = IncomingRequest {
                method: self.method.to_ascii_uppercase(),
                path: "/hooks/test".into(),
                query: self.query.trim_start_matches('?').to_string(),
                headers,
                body,
            };
            let result = plugin.handle(request).await?;
            if let Some(kv) = plugin.kv_batch(result.kv_writes) {
                store.append(Vec::new(), Some(kv)).await?;
            }
            serde_json::json!({
                "world": plugin.world(),
                "changes": result.changes,
                "reply": result.reply.map(|r| serde_json::json!({
                    "status": r.status,
                    "body": String::from_utf8_lossy(&r.body),
                })),
            })
        };
        let elapsed = started.elapsed();
        println!("{}", serde_json::to_string_pretty(&output)?);
        eprintln!("call took {:.3} ms", elapsed.as_secs_f64() * 1000.0);
        Ok(ExitCode::SUCCESS)
    }
}
