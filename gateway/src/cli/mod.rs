//! The `soundbox-gateway` command line.

mod log_fields;
mod plugin_sign;
mod plugin_test;
mod queue;
mod speaker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "soundbox-gateway",
    version,
    about = "Edge gateway for payment speakers"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SOUNDBOX_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "config.toml", env = "SOUNDBOX_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config and load every plugin, then exit (1 on any error).
    Check {
        #[arg(long, short, default_value = "config.toml", env = "SOUNDBOX_CONFIG")]
        config: PathBuf,
    },
    /// Inspect and retry the delivery queues (works while the gateway runs or is stopped).
    Queue(queue::Queue),
    /// Talk to the shop's speakers through the Speaker API: check, pair, notify, check-notify.
    Speaker(speaker::Speaker),
    /// Run the Speaker API simulator on its own.
    SpeakerSim(speaker::SpeakerSim),
    /// A chain's gateways, from their retained health on the chain's broker.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// List every gateway publishing under a prefix: online, ready, queues, speakers.
    Status(crate::fleet::status::FleetStatus),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run a plugin once: print what it found as JSON and the HTTP status the
    /// sender would get (exit 1 when the plugin fails the call).
    Test(plugin_test::PluginTest),
    /// Make a minisign key pair for signing plugins: <OUT>.key (secret,
    /// unencrypted, mode 0600) and <OUT>.pub.
    Keygen {
        /// Path prefix of the two files, e.g. keys/acme.
        out: PathBuf,
    },
    /// Write a plugin's manifest (its sha256, the hosts it needs, KV use,
    /// memory) beside it and sign it with a minisign key.
    Sign(plugin_sign::SignArgs),
    /// Show a plugin's manifest and whether it is signed by a trusted key
    /// (exit 1 unless it is).
    Inspect {
        /// The plugin (`.wasm` component).
        wasm: PathBuf,
        /// A trusted publisher key: the `RW…` public key line or a `.pub`
        /// file (repeatable).
        #[arg(long = "trust", value_name = "KEY")]
        trusted: Vec<String>,
    },
}

/// Parses the command line, runs the command, prints the whole error chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_writer = init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            drop(log_writer);
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    drop(runtime);
    // The queued log lines go out before the error that ends the run.
    drop(log_writer);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::error::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            crate::app::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => check(config).await,
        Command::Queue(queue) => queue.run().await,
        Command::Speaker(speaker) => speaker.run().await,
        Command::SpeakerSim(sim) => sim.run().await,
        Command::Fleet {
            command: FleetCommand::Status(args),
        } => args.run().await,
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => args.run().await,
        Command::Plugin {
            command: PluginCommand::Keygen { out },
        } => plugin_sign::keygen(&out).map(|()| ExitCode::SUCCESS),
        Command::Plugin {
            command: PluginCommand::Sign(args),
        } => plugin_sign::sign(&args).map(|()| ExitCode::SUCCESS),
        Command::Plugin {
            command: PluginCommand::Inspect { wasm, trusted },
        } => plugin_sign::inspect(&wasm, &trusted),
    }
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = Config::load(&path)?;
    // Load plugins against a throwaway store: `check` must not touch a
    // running gateway's state.
    let scratch = tempfile::tempdir()?;
    let log = crate::app::open_log(scratch.path(), config.log.clone())?;
    let connectors = crate::app::load_connectors(&config, &log).await?;
    println!("{}: ok", path.display());
    for plugin in connectors.iter() {
        println!(
            "  connector {:<20} {:?}, {}",
            plugin.name(),
            plugin.world(),
            plugin.signature()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received");
    token.cancel();
}

/// Log lines queued for stderr at most; past that, new lines are dropped
/// and counted (`soundbox_log_lines_dropped_total`). A few MiB: seconds of
/// a busy relay's log, hours of a shop's.
const LOG_LINES_QUEUED: usize = 10_000;

/// Log lines are formatted where they happen and written to stderr by a
/// thread of their own. Written inline, a reader that stops reading (a
/// stalled journald, a full pipe) blocks the async workers at their next
/// line, and no webhook is answered until it reads again; this way a stall
/// costs log lines, not payments. Drop the guard to write out what is
/// queued (it waits at most about a second).
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SOUNDBOX_LOG")
        // The embedded broker logs every client connect and disconnect (the
        // latter at error level): noise for a shop. SOUNDBOX_LOG=rumqttd=info
        // brings it back.
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn,rumqttd=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_QUEUED)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    crate::metrics::count_dropped_log_lines(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder
            .fmt_fields(log_fields::EscapedFields::default())
            .init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
