//! `speaker check|pair|notify|check-notify` and `speaker-sim`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::{Config, Secret};
use crate::speaker_api::client::{SpeakerClient, SpeakerCredentials, SpeakerError};
use crate::speaker_api::sim::{Faults, SimConfig, SimDevice, Simulator};

#[derive(Debug, Args)]
pub struct Speaker {
    #[arg(long, short, default_value = "config.toml", env = "SOUNDBOX_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: SpeakerCommand,
}

#[derive(Debug, Subcommand)]
enum SpeakerCommand {
    /// Whether a speaker is paired and online.
    Check { hardware_id: String },
    /// Pair a speaker: it reads a 4-digit code aloud, you type it in.
    Pair {
        hardware_id: String,
        /// The code, for scripts (otherwise it is asked for).
        #[arg(long)]
        otp: Option<String>,
    },
    /// Make a speaker announce an amount (a test announcement).
    Notify {
        hardware_id: String,
        #[arg(long)]
        amount: u64,
        /// Idempotency key; a fresh one by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Whether a speaker played a notification.
    CheckNotify {
        hardware_id: String,
        request_id: String,
    },
}

/// Credentials from `[speaker]`, overridden by the environment
/// (`SEPAY_SPEAKER_BASE_URL`, `SEPAY_SPEAKER_CLIENT_ID`, `SEPAY_SPEAKER_CLIENT_SECRET`).
fn credentials(config: &Config) -> anyhow::Result<SpeakerCredentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let speaker = config.speaker.as_ref();
    let simulated = speaker.and_then(|s| s.simulator.as_ref()).is_some();
    let base_url = env("SEPAY_SPEAKER_BASE_URL")
        .or_else(|| {
            simulated.then(|| {
                format!(
                    "http://{}{}/devices/v1",
                    config.gateway.admin_listen,
                    crate::app::SIMULATOR_PATH
                )
            })
        })
        .or_else(|| speaker.map(|s| s.base_url.clone()))
        .unwrap_or_else(|| crate::speaker_api::client::DEFAULT_BASE_URL.to_string());
    let client_id = env("SEPAY_SPEAKER_CLIENT_ID").or_else(|| speaker.map(|s| s.client_id.clone()));
    let client_secret = env("SEPAY_SPEAKER_CLIENT_SECRET")
        .map(Secret::new)
        .or_else(|| speaker.map(|s| s.client_secret.clone()));
    let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
        bail!(
            "no Speaker API credentials: set [speaker] client_id and client_secret in {}, \
             or SEPAY_SPEAKER_CLIENT_ID and SEPAY_SPEAKER_CLIENT_SECRET",
            config.source.display()
        );
    };
    Ok(SpeakerCredentials {
        base_url,
        client_id,
        client_secret,
    })
}

/// What a shop owner should do about an error.
fn advice(hardware_id: &str, error: &SpeakerError) -> String {
    match error {
        SpeakerError::Offline => format!(
            "speaker {hardware_id} is offline: switch it on, wait until it is connected, then try again"
        ),
        SpeakerError::NotPaired => format!(
            "speaker {hardware_id} is not paired yet: run `soundbox-gateway speaker pair {hardware_id}`"
        ),
        SpeakerError::NotFound(_) => {
            format!("no speaker {hardware_id}: check the serial number printed on the device")
        }
        SpeakerError::WrongOtp => "that code is not the one the speaker read".to_string(),
        SpeakerError::SessionExpired => {
            "the pairing session expired (it lasts about 2 minutes): run the command again"
                .to_string()
        }
        SpeakerError::Transport(_) => format!(
            "{error} (with simulator = true, the simulator runs inside the gateway: start it first)"
        ),
        other => other.to_string(),
    }
}

impl Speaker {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = Config::load(&self.config)?;
        let client = SpeakerClient::new(credentials(&config)?, Duration::from_secs(15))?;
        let hardware_id = match &self.command {
            SpeakerCommand::Check { hardware_id }
            | SpeakerCommand::Pair { hardware_id, .. }
            | SpeakerCommand::Notify { hardware_id, .. }
            | SpeakerCommand::CheckNotify { hardware_id, .. } => hardware_id.clone(),
        };
        match self.command.run(&client).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(error) => {
                eprintln!("error: {}", advice(&hardware_id, &error));
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

impl SpeakerCommand {
    async fn run(self, client: &SpeakerClient) -> Result<(), SpeakerError> {
        match self {
            SpeakerCommand::Check { hardware_id } => {
                let d = client.check(&hardware_id).await?;
                println!(
                    "speaker {} (model {}): {}, {}",
                    d.hardware_id,
                    d.model,
                    if d.is_paired { "paired" } else { "not paired" },
                    if d.online { "online" } else { "offline" }
                );
            }
            SpeakerCommand::Pair { hardware_id, otp } => {
                let session = client.pair_request(&hardware_id).await?;
                let mut attempts = 0;
                loop {
                    let code = match &otp {
                        Some(code) => code.clone(),
                        None => ask("The speaker is reading a 4-digit code aloud. Type it here: ")
                            .map_err(|e| SpeakerError::Decode(e.to_string()))?,
                    };
                    match client
                        .pair_verify(&hardware_id, &session.session_id, code.trim())
                        .await
                    {
                        Ok(paired) => {
                            println!(
                                "speaker {} paired at {}",
                                paired.hardware_id, paired.paired_time
                            );
                            return Ok(());
                        }
                        Err(SpeakerError::WrongOtp) if otp.is_none() && attempts < 2 => {
                            attempts += 1;
                            eprintln!("That is not the code the speaker read; try again.");
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            SpeakerCommand::Notify {
                hardware_id,
                amount,
                request_id,
            } => {
                let request_id =
                    request_id.unwrap_or_else(|| format!("cli-{:016x}", fastrand::u64(..)));
                let status = client.notify(&hardware_id, amount, &request_id).await?;
                println!(
                    "{}: {} (requestId {})",
                    status.hardware_id, status.status, status.request_id
                );
            }
            SpeakerCommand::CheckNotify {
                hardware_id,
                request_id,
            } => {
                let status = client.check_notify(&hardware_id, &request_id).await?;
                println!("{}: {}", status.request_id, status.status);
            }
        }
        Ok(())
    }
}

fn ask(prompt: &str) -> std::io::Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line)
}

/// `speaker-sim`: the simulator on its own, for trying the CLI or another client.
#[derive(Debug, Args)]
pub struct SpeakerSim {
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// A device: `HWID`, optionally `:paired` and/or `:offline` (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    #[arg(long, default_value_t = 6000)]
    token_ttl_secs: u64,
    /// The API's allowed rate: calls beyond it are answered 429 with `Retry-After`.
    #[arg(long)]
    max_calls_per_sec: Option<u32>,
}

impl SpeakerSim {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let devices = self
            .devices
            .iter()
            .map(|spec| {
                let mut parts = spec.split(':');
                let hardware_id = parts.next().unwrap_or_default().to_string();
                let flags: Vec<&str> = parts.collect();
                SimDevice {
                    hardware_id,
                    model: "S5 Plus".into(),
                    paired: flags.contains(&"paired"),
                    online: !flags.contains(&"offline"),
                }
            })
            .collect();
        let sim = Simulator::new(SimConfig {
            client_id: self.client_id,
            client_secret: self.client_secret,
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            devices,
            faults: Faults {
                max_calls_per_sec: self.max_calls_per_sec,
                ..Faults::default()
            },
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(base_url = %format!("http://{addr}/devices/v1"), control = %format!("http://{addr}/_sim"), "Speaker API simulator listening");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(super::cancel_on_signal(stop.clone()));
        axum::serve(listener, sim.router())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        Ok(ExitCode::SUCCESS)
    }
}
