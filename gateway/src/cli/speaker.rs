//! `speaker check|pair|notify|check-notify` and `speaker-sim`.
//!
//! `speaker pair` runs the flow of SePay's quick start
//! (developer.sepay.vn/vi/speaker-api/bat-dau-nhanh): `pair/check`, the shop
//! holds the speaker's button until it enters pairing mode, `pair/request`
//! (the speaker reads a 4-digit code aloud), `pair/verify`. SePay does not
//! publish which refusal codes mean what, so a refusal is shown with SePay's
//! own message, and advice comes from what `pair/check` says.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::config::{Config, DEFAULT_BASE_URL, Secret, SimulatorConfig, SpeakerApi};
use crate::speaker_api::client::{SpeakerClient, SpeakerCredentials, SpeakerError};
use crate::speaker_api::sim::{ErrorStyle, Faults, SimConfig, SimDevice, Simulator};
use crate::speaker_api::types::Device;

/// Codes typed before `speaker pair` gives up on a session.
const OTP_ATTEMPTS: u32 = 3;

#[derive(Debug, Args)]
pub struct Speaker {
    #[arg(long, short, default_value = "config.toml", env = "SOUNDBOX_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: SpeakerCommand,
}

#[derive(Debug, Subcommand)]
enum SpeakerCommand {
    /// Whether a speaker is paired and online (`pair/check`).
    Check { hardware_id: String },
    /// Pair a speaker: check it, hold its button until it enters pairing
    /// mode, then type the 4-digit code it reads aloud.
    Pair {
        hardware_id: String,
        /// The code, for scripts (otherwise it is asked for, and the command
        /// waits for Enter once the speaker is in pairing mode).
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
    /// Whether SePay delivered a notification, by its requestId alone:
    /// PENDING (not said yet), SUCCESS (said) or FAILED.
    CheckNotify { request_id: String },
}

impl SpeakerCommand {
    fn hardware_id(&self) -> Option<&str> {
        match self {
            SpeakerCommand::Check { hardware_id }
            | SpeakerCommand::Pair { hardware_id, .. }
            | SpeakerCommand::Notify { hardware_id, .. } => Some(hardware_id),
            SpeakerCommand::CheckNotify { .. } => None,
        }
    }
}

/// Why a `speaker` command stopped.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error(transparent)]
    Api(#[from] SpeakerError),
    /// The flow stopped on purpose; the text says what to do.
    #[error("{0}")]
    Stopped(String),
    #[error("cannot use the terminal: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a command talks to the person: results on `out`, instructions and
/// prompts on `prompts`, answers from `input`.
struct Console<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    prompts: &'a mut dyn Write,
    /// Someone is at a terminal: worth waiting for Enter.
    interactive: bool,
}

impl Console<'_> {
    /// One line typed after `prompt`; the end of the input stops the flow.
    fn ask(&mut self, prompt: &str) -> Result<String, CommandError> {
        write!(self.prompts, "{prompt}")?;
        self.prompts.flush()?;
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Err(CommandError::Stopped(
                "no answer typed (end of input)".into(),
            ));
        }
        Ok(line.trim().to_string())
    }
}

/// Credentials from `[speaker]`, overridden by the environment
/// (`SEPAY_SPEAKER_BASE_URL`, `SEPAY_SPEAKER_CLIENT_ID`, `SEPAY_SPEAKER_CLIENT_SECRET`).
fn credentials(config: &Config) -> anyhow::Result<SpeakerCredentials> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // What `[speaker]` says: a Speaker API and its credentials, or the
    // simulator inside the gateway (on its admin listener) and its own.
    let configured = config.speaker.as_ref().map(|s| match &s.api {
        SpeakerApi::Remote {
            base_url,
            client_id,
            client_secret,
        } => (base_url.clone(), client_id.clone(), client_secret.clone()),
        SpeakerApi::Simulator(_) => {
            let sim = SimConfig::default();
            (
                SimulatorConfig::base_url(config.gateway.admin_listen),
                sim.client_id,
                Secret::new(sim.client_secret),
            )
        }
    });
    let base_url = env("SEPAY_SPEAKER_BASE_URL")
        .or_else(|| configured.as_ref().map(|(url, _, _)| url.clone()))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    let client_id =
        env("SEPAY_SPEAKER_CLIENT_ID").or_else(|| configured.as_ref().map(|(_, id, _)| id.clone()));
    let client_secret = env("SEPAY_SPEAKER_CLIENT_SECRET")
        .map(Secret::new)
        .or_else(|| configured.map(|(_, _, secret)| secret));
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

/// What a shop owner should do about an error. `checked` is what
/// `pair/check` said after a refusal: SePay does not publish which codes
/// mean offline or not paired, so the advice comes from the speaker's
/// state, never from the code.
fn advice(error: &SpeakerError, checked: Option<(&str, &Result<Device, SpeakerError>)>) -> String {
    match (error, checked) {
        (SpeakerError::Transport(_), _) => format!(
            "{error} (with simulator = true, the simulator runs inside the gateway: start it first)"
        ),
        (SpeakerError::BadCredentials, _) => format!(
            "{error}: check [speaker] client_id and client_secret, or \
             SEPAY_SPEAKER_CLIENT_ID and SEPAY_SPEAKER_CLIENT_SECRET"
        ),
        (SpeakerError::Refused { .. }, Some((id, Ok(d)))) if !d.online => format!(
            "{error}\nspeaker {id} is offline: switch it on, wait until it is connected, then try again"
        ),
        (SpeakerError::Refused { .. }, Some((id, Ok(d)))) if !d.is_paired => {
            format!("{error}\nspeaker {id} is not paired: run `soundbox-gateway speaker pair {id}`")
        }
        (SpeakerError::Refused { .. }, Some((id, Ok(_)))) => format!(
            "{error}\nspeaker {id} is online and paired: the reason is SePay's message above"
        ),
        (SpeakerError::Refused { .. }, Some((id, Err(check)))) => format!(
            "{error}\nchecking speaker {id} failed too ({check}): \
             check the serial number printed on the device"
        ),
        _ => error.to_string(),
    }
}

impl Speaker {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let config = Config::load(&self.config)?;
        let client = SpeakerClient::new(credentials(&config)?, Duration::from_secs(15))?;
        let hardware_id = self.command.hardware_id().map(str::to_string);
        let stdin = std::io::stdin();
        let interactive = stdin.is_terminal();
        let mut input = std::io::BufReader::new(stdin);
        let (mut out, mut prompts) = (std::io::stdout(), std::io::stderr());
        let mut console = Console {
            input: &mut input,
            out: &mut out,
            prompts: &mut prompts,
            interactive,
        };
        match self.command.run(&client, &mut console).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(CommandError::Api(error)) => {
                // Why SePay refused is for pair/check to say.
                let checked = match (&error, &hardware_id) {
                    (SpeakerError::Refused { .. }, Some(id)) => {
                        Some((id.as_str(), client.check(id).await))
                    }
                    _ => None,
                };
                let checked = checked.as_ref().map(|(id, result)| (*id, result));
                eprintln!("error: {}", advice(&error, checked));
                Ok(ExitCode::FAILURE)
            }
            Err(other) => {
                eprintln!("error: {other}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn describe(d: &Device) -> String {
    format!(
        "speaker {} (model {}): {}, {}",
        d.hardware_id,
        d.model,
        if d.is_paired { "paired" } else { "not paired" },
        if d.online { "online" } else { "offline" }
    )
}

impl SpeakerCommand {
    async fn run(
        self,
        client: &SpeakerClient,
        console: &mut Console<'_>,
    ) -> Result<(), CommandError> {
        match self {
            SpeakerCommand::Check { hardware_id } => {
                let d = client.check(&hardware_id).await?;
                writeln!(console.out, "{}", describe(&d))?;
            }
            SpeakerCommand::Pair { hardware_id, otp } => {
                pair(client, console, &hardware_id, otp.as_deref()).await?;
            }
            SpeakerCommand::Notify {
                hardware_id,
                amount,
                request_id,
            } => {
                let request_id =
                    request_id.unwrap_or_else(|| format!("cli-{:016x}", fastrand::u64(..)));
                let status = client.notify(&hardware_id, amount, &request_id).await?;
                writeln!(
                    console.out,
                    "{}: {} (requestId {})",
                    status.hardware_id, status.status, status.request_id
                )?;
            }
            SpeakerCommand::CheckNotify { request_id } => {
                let c = client.check_notify(&request_id).await?;
                writeln!(
                    console.out,
                    "{}: {} ({}); speaker {}, amount {}, retries {}, created {}",
                    c.request_id,
                    c.status,
                    c.message,
                    c.hardware_id,
                    c.amount,
                    c.retries_count,
                    c.created_at.as_deref().unwrap_or("?")
                )?;
            }
        }
        Ok(())
    }
}

/// The published pairing flow ("bat-dau-nhanh", "yeu-cau-lien-ket-thiet-bi",
/// "kiem-tra-otp"): check, pairing mode, request, the spoken code, verify.
async fn pair(
    client: &SpeakerClient,
    console: &mut Console<'_>,
    hardware_id: &str,
    otp: Option<&str>,
) -> Result<(), CommandError> {
    let device = client.check(hardware_id).await?;
    writeln!(console.out, "{}", describe(&device))?;
    if !device.online {
        return Err(CommandError::Stopped(format!(
            "speaker {hardware_id} is offline, so it cannot read a code: switch it on, \
             wait until it is connected (it has its own 4G SIM), then run this again"
        )));
    }
    if device.is_paired {
        writeln!(
            console.out,
            "speaker {hardware_id} is already paired: nothing to do"
        )?;
        return Ok(());
    }
    writeln!(
        console.prompts,
        "Hold the speaker's button until it enters pairing mode."
    )?;
    if otp.is_none() && console.interactive {
        console.ask("Press Enter when it is in pairing mode: ")?;
    }
    let session = client.pair_request(hardware_id).await?;
    writeln!(
        console.prompts,
        "The speaker is reading a 4-digit code aloud."
    )?;
    for attempt in 1..=OTP_ATTEMPTS {
        let code = match otp {
            Some(code) => code.trim().to_string(),
            None => console.ask("Type the code: ")?,
        };
        match client
            .pair_verify(hardware_id, &session.session_id, &code)
            .await
        {
            Ok(paired) => {
                writeln!(
                    console.out,
                    "speaker {} paired at {}",
                    paired.hardware_id, paired.paired_time
                )?;
                return Ok(());
            }
            // SePay's message says why (a wrong code, an expired session…).
            Err(SpeakerError::Refused { message, .. })
                if otp.is_none() && attempt < OTP_ATTEMPTS =>
            {
                writeln!(
                    console.prompts,
                    "SePay did not accept that code: {message}. Try again ({} left).",
                    OTP_ATTEMPTS - attempt
                )?;
            }
            Err(SpeakerError::Refused { message, .. }) => {
                return Err(CommandError::Stopped(format!(
                    "SePay did not accept the code: {message}. Run `soundbox-gateway speaker \
                     pair {hardware_id}` again for a new code (a session lasts about 2 minutes)"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Stopped(format!(
        "no code accepted: run `soundbox-gateway speaker pair {hardware_id}` again"
    )))
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
    /// How business errors are sent: `http200` (the code in an HTTP 200
    /// envelope) or `http4xx`. SePay does not say which it uses.
    #[arg(long, default_value = "http200")]
    error_style: ErrorStyle,
    /// How long a speaker talks: `check_notify` answers PENDING until then.
    #[arg(long)]
    play_ms: Option<u64>,
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
                error_style: self.error_style,
                ..Faults::default()
            },
            play_time: self
                .play_ms
                .map_or(SimConfig::default().play_time, Duration::from_millis),
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Read;

    use super::*;
    use crate::speaker_api::sim::testing::{device, serve_on_loopback};

    /// What the person at the keyboard does, line by line.
    #[derive(Clone, Copy)]
    enum Typed {
        Enter,
        /// A code that is not the one the speaker read.
        Wrong,
        /// The code the speaker read.
        Heard,
    }

    /// Stdin as a person listening to the simulated speaker.
    struct Person {
        sim: Simulator,
        hardware_id: String,
        script: VecDeque<Typed>,
        line: Vec<u8>,
    }

    impl Read for Person {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.fill_buf()?.read(buf)?;
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Person {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            if self.line.is_empty()
                && let Some(next) = self.script.pop_front()
            {
                let heard = self.sim.spoken_otp(&self.hardware_id).unwrap_or_default();
                let text = match next {
                    Typed::Enter => String::new(),
                    Typed::Wrong if heard == "0000" => "1111".into(),
                    Typed::Wrong => "0000".into(),
                    Typed::Heard => heard,
                };
                self.line = format!("{text}\n").into_bytes();
            }
            Ok(&self.line)
        }

        fn consume(&mut self, n: usize) {
            self.line.drain(..n.min(self.line.len()));
        }
    }

    struct Session {
        sim: Simulator,
        client: SpeakerClient,
    }

    async fn session() -> Session {
        let sim = Simulator::new(SimConfig {
            devices: vec![
                device("VNS-NEW", false, true),
                device("VNS-PAIRED", true, true),
                device("VNS-OFF", false, false),
            ],
            play_time: Duration::ZERO,
            ..SimConfig::default()
        });
        let base_url = serve_on_loopback(&sim).await;
        let client = SpeakerClient::new(
            SpeakerCredentials {
                base_url,
                client_id: "sim-client".into(),
                client_secret: Secret::new("sim-secret"),
            },
            Duration::from_secs(5),
        )
        .expect("client");
        Session { sim, client }
    }

    /// Runs `command` with `typed` as stdin: its result, stdout and stderr.
    async fn run(
        s: &Session,
        command: SpeakerCommand,
        typed: &[Typed],
        interactive: bool,
    ) -> (Result<(), CommandError>, String, String) {
        let mut input = Person {
            sim: s.sim.clone(),
            hardware_id: command.hardware_id().unwrap_or_default().to_string(),
            script: typed.iter().copied().collect(),
            line: Vec::new(),
        };
        let (mut out, mut prompts) = (Vec::new(), Vec::new());
        let mut console = Console {
            input: &mut input,
            out: &mut out,
            prompts: &mut prompts,
            interactive,
        };
        let result = command.run(&s.client, &mut console).await;
        (
            result,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&prompts).into_owned(),
        )
    }

    fn pair(hardware_id: &str, otp: Option<&str>) -> SpeakerCommand {
        SpeakerCommand::Pair {
            hardware_id: hardware_id.into(),
            otp: otp.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn pair_checks_waits_for_pairing_mode_and_retries_a_refused_code() {
        let s = session().await;
        let typed = [Typed::Enter, Typed::Wrong, Typed::Heard];
        let (result, out, err) = run(&s, pair("VNS-NEW", None), &typed, true).await;
        result.expect("paired");
        assert!(out.contains("model S5 Plus): not paired, online"), "{out}");
        assert!(out.contains("speaker VNS-NEW paired at "), "{out}");
        let steps = [
            "Hold the speaker's button",
            "Press Enter",
            "reading a 4-digit code aloud",
            "SePay did not accept that code: Mã OTP không đúng",
        ];
        let at: Vec<usize> = steps
            .iter()
            .map(|step| err.find(step).unwrap_or_else(|| panic!("{step}: {err}")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "in order: {err}");
        assert!(s.client.check("VNS-NEW").await.expect("check").is_paired);
    }

    #[tokio::test]
    async fn pair_does_not_wait_for_enter_without_a_terminal() {
        let s = session().await;
        let (result, out, err) = run(&s, pair("VNS-NEW", None), &[Typed::Heard], false).await;
        result.expect("paired");
        assert!(out.contains("paired at"), "{out}");
        assert!(!err.contains("Press Enter"), "{err}");
    }

    #[tokio::test]
    async fn pair_stops_early_for_an_offline_or_already_paired_speaker() {
        let s = session().await;
        let (result, out, _) = run(&s, pair("VNS-OFF", Some("1234")), &[], false).await;
        let Err(CommandError::Stopped(why)) = result else {
            panic!("{result:?}")
        };
        assert!(out.contains("offline") && why.contains("offline"), "{why}");
        assert_eq!(s.sim.spoken_otp("VNS-OFF"), None, "no pairing requested");

        let (result, out, _) = run(&s, pair("VNS-PAIRED", None), &[], false).await;
        result.expect("nothing to do");
        assert!(out.contains("already paired"), "{out}");
        assert_eq!(s.sim.spoken_otp("VNS-PAIRED"), None);
    }

    #[tokio::test]
    async fn a_refused_code_stops_with_sepays_message() {
        let s = session().await;
        // --otp is tried once.
        let (result, _, _) = run(&s, pair("VNS-NEW", Some("abcd")), &[], false).await;
        let Err(CommandError::Stopped(why)) = result else {
            panic!("{result:?}")
        };
        assert!(why.contains("Mã OTP không đúng"), "{why}");
        // Three wrong codes typed.
        let typed = [Typed::Wrong; 3];
        let (result, _, err) = run(&s, pair("VNS-NEW", None), &typed, false).await;
        assert!(
            matches!(result, Err(CommandError::Stopped(_))),
            "{result:?}"
        );
        assert_eq!(err.matches("Try again").count(), 2, "{err}");
        // The end of the input.
        let (result, _, _) = run(&s, pair("VNS-NEW", None), &[], false).await;
        assert!(
            matches!(result, Err(CommandError::Stopped(_))),
            "{result:?}"
        );
        assert!(!s.client.check("VNS-NEW").await.expect("check").is_paired);
    }

    #[tokio::test]
    async fn check_notify_takes_the_request_id() {
        let s = session().await;
        s.client
            .notify("VNS-PAIRED", 150_000, "r-1")
            .await
            .expect("notify");
        let command = SpeakerCommand::CheckNotify {
            request_id: "r-1".into(),
        };
        let (result, out, _) = run(&s, command, &[], false).await;
        result.expect("check-notify");
        assert!(
            out.starts_with("r-1: SUCCESS (Gửi thành công); speaker VNS-PAIRED, amount 150000"),
            "{out}"
        );
    }

    #[test]
    fn advice_comes_from_pair_check_not_from_the_code() {
        let refused = SpeakerError::Refused {
            code: 400,
            message: "Thiết bị đang offline".into(),
        };
        let state = |paired, online| {
            Ok(Device {
                hardware_id: "VNS-1".into(),
                model: "S5 Plus".into(),
                is_paired: paired,
                online,
            })
        };
        let offline = advice(&refused, Some(("VNS-1", &state(true, false))));
        assert!(offline.contains("Thiết bị đang offline") && offline.contains("is offline"));
        let unpaired = advice(&refused, Some(("VNS-1", &state(false, true))));
        assert!(unpaired.contains("speaker pair VNS-1"), "{unpaired}");
        let fine = advice(&refused, Some(("VNS-1", &state(true, true))));
        assert!(fine.contains("SePay's message"), "{fine}");
        let unknown = advice(
            &refused,
            Some((
                "VNS-1",
                &Err(SpeakerError::Refused {
                    code: 404,
                    message: "Không tìm thấy thiết bị".into(),
                }),
            )),
        );
        assert!(unknown.contains("serial number"), "{unknown}");
        assert_eq!(advice(&refused, None), refused.to_string());
    }
}
