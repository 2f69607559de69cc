//! `soundbox-gateway fleet status`: every gateway of a chain, from the
//! retained `status` and `health` messages under a prefix on the chain's
//! broker. Reads only; needs nothing but the broker and a login to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport,
};
use serde::Serialize;

use super::HealthDoc;
use crate::config::{ClientIdentity, MqttTls};
use crate::mqtt_link::{Connection, tls_config};
use crate::tasks::Tasks;

#[derive(Debug, clap::Args)]
pub struct FleetStatus {
    /// The chain's broker: mqtt://host:1883 or mqtts://host:8883.
    #[arg(long)]
    broker: String,
    /// The gateways' `topic_prefix`.
    #[arg(long, default_value = "soundbox")]
    prefix: String,
    /// CA certificates (PEM) to trust instead of the built-in roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with --key-file.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    #[arg(long)]
    username: Option<String>,
    /// The environment variable holding the password (never on the command line).
    #[arg(long, requires = "username")]
    password_env: Option<String>,
    /// Stop listening after this many seconds without a new message.
    #[arg(long, default_value_t = 2)]
    quiet_secs: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One gateway as the broker keeps it.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct GatewayView {
    pub id: String,
    /// The retained `status`: `online` or `offline` (None: never published).
    pub status: Option<String>,
    pub health: Option<HealthDoc>,
}

impl FleetStatus {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let gateways = self.collect().await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&gateways)?);
        } else {
            print!("{}", table(&gateways));
        }
        if gateways.is_empty() {
            eprintln!(
                "no gateway publishes under {}/ on {} (check --prefix and the broker's ACL)",
                self.prefix, self.broker
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn options(&self) -> anyhow::Result<MqttOptions> {
        let url = reqwest::Url::parse(&self.broker).context("--broker")?;
        let secure = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => anyhow::bail!("--broker: unknown scheme {other}; use mqtt:// or mqtts://"),
        };
        let host = url
            .host_str()
            .context("--broker: no host")?
            .trim_matches(|c| c == '[' || c == ']');
        let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
        let client_id = format!("soundbox-fleet-{}", std::process::id());
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 << 10, 256 << 10);
        if let Some(username) = &self.username {
            let password = match &self.password_env {
                Some(var) => std::env::var(var)
                    .with_context(|| format!("--password-env: {var} is not set"))?,
                None => String::new(),
            };
            options.set_credentials(username, password);
        }
        if secure {
            let tls = MqttTls {
                ca_file: self.ca_file.clone(),
                identity: match (&self.cert_file, &self.key_file) {
                    (Some(cert_file), Some(key_file)) => Some(ClientIdentity {
                        cert_file: cert_file.clone(),
                        key_file: key_file.clone(),
                    }),
                    _ => None,
                },
            };
            let config = tls_config(&tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        } else if self.ca_file.is_some() || self.cert_file.is_some() {
            anyhow::bail!("--ca-file and --cert-file need an mqtts:// broker");
        }
        Ok(options)
    }

    /// Subscribes to every gateway's `status` and `health` and takes the
    /// retained messages until the broker has been quiet for a while.
    async fn collect(&self) -> anyhow::Result<Vec<GatewayView>> {
        let (client, eventloop) = AsyncClient::new(self.options()?, 16);
        // A one-shot command: its event loop on a tree of its own, stopped
        // with the connection.
        let mut connection = Connection::drive(eventloop, &Tasks::new());
        let quiet = Duration::from_secs(self.quiet_secs.max(1));
        let mut gateways: BTreeMap<String, GatewayView> = BTreeMap::new();
        let status_suffix = "/status";
        let health_suffix = "/health";
        let base = format!("{}/", self.prefix);
        loop {
            let event = match tokio::time::timeout(quiet, connection.events.recv()).await {
                Err(_) => break,
                Ok(None) => anyhow::bail!("the connection to {} closed", self.broker),
                Ok(Some(Err(error))) => anyhow::bail!("{}: {error}", self.broker),
                Ok(Some(Ok(event))) => event,
            };
            match event {
                Event::Incoming(Incoming::ConnAck(ack)) => {
                    if ack.code != ConnectReturnCode::Success {
                        anyhow::bail!("{} refused the connection: {:?}", self.broker, ack.code);
                    }
                    for leaf in ["status", "health"] {
                        let filter = format!("{}/+/{leaf}", self.prefix);
                        client.subscribe(filter, QoS::AtLeastOnce).await?;
                    }
                }
                Event::Incoming(Incoming::Publish(p)) => {
                    let Some(rest) = p.topic.strip_prefix(&base) else {
                        continue;
                    };
                    if let Some(id) = rest.strip_suffix(status_suffix) {
                        let view = entry(&mut gateways, id);
                        view.status = Some(String::from_utf8_lossy(&p.payload).into_owned());
                    } else if let Some(id) = rest.strip_suffix(health_suffix) {
                        match serde_json::from_slice::<HealthDoc>(&p.payload) {
                            Ok(doc) => entry(&mut gateways, id).health = Some(doc),
                            Err(error) => {
                                eprintln!("{}: not a health document ({error})", p.topic);
                                entry(&mut gateways, id);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let _ = client.disconnect().await;
        Ok(gateways.into_values().collect())
    }
}

fn entry<'a>(gateways: &'a mut BTreeMap<String, GatewayView>, id: &str) -> &'a mut GatewayView {
    gateways
        .entry(id.to_string())
        .or_insert_with(|| GatewayView {
            id: id.to_string(),
            ..GatewayView::default()
        })
}

/// One line per gateway.
pub fn table(gateways: &[GatewayView]) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}  {}\n",
        "GATEWAY",
        "STATUS",
        "READY",
        "VERSION",
        "UPTIME",
        "PENDING",
        "OLDEST",
        "SPEAKERS",
        "CONNECTORS",
        "DISK",
        "AT"
    );
    for g in gateways {
        let status = g.status.as_deref().unwrap_or("?");
        let line = match &g.health {
            None => format!(
                "{:<20} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}  {}\n",
                g.id, status, "?", "?", "", "", "", "", "", "", "no health document"
            ),
            Some(h) => {
                let pending: u64 = h.sinks.iter().map(|s| s.pending).max().unwrap_or(0);
                let oldest = h.sinks.iter().filter_map(|s| s.oldest_pending_secs).max();
                let connectors = match h.connectors.failing.len() {
                    0 => format!("{} ok", h.connectors.ok),
                    n => format!("{n} failing"),
                };
                format!(
                    "{:<20} {:<8} {:<6} {:<10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9}  {}\n",
                    g.id,
                    status,
                    if h.ready { "yes" } else { "no" },
                    h.version,
                    duration(h.uptime_secs),
                    pending,
                    oldest.map_or("-".into(), duration),
                    format!("{}/{}", h.speakers.online, h.speakers.total),
                    connectors,
                    h.disk_free_bytes
                        .map_or("?".into(), |b| format!("{} MiB", b >> 20)),
                    h.at
                )
            }
        };
        out.push_str(&line);
        if let Some(h) = &g.health {
            for problem in &h.problems {
                out.push_str(&format!("    ! {problem}\n"));
            }
        }
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
