//! soundbox-gateway: payments in from banks and e-wallets, spoken by the
//! shop's SePay SoundBox.
//!
//! One folder per stage of the flow, each talking to the next through a
//! narrow type ([`model::BalanceChange`]):
//!
//! - [`config`]: TOML → validated [`config::Config`], errors with file, line, key.
//! - [`ingress`]: `POST /hooks/<connector>` (axum).
//! - [`connectors`]: the wasmtime host that runs connector plugins in a sandbox.
//! - [`log`]: the durable store: payments in segment files, the rest in sled;
//!   dedupe, group commit, per-sink acknowledgements.
//! - [`sinks`]: delivery from the log to each destination, with retries and TTL.
//! - [`admin`]: the loopback API behind `queue` while the gateway runs.
//! - [`http_server`]: the HTTP server of both listeners (timeouts, connection cap).
//! - [`app`]: wiring and shutdown order; [`tasks`]: the task tree every
//!   spawned task hangs under; [`cli`]: the command line.
//!
//! Below them all, shared by several: [`model`], [`secret`], [`retry`]
//! (backoff and `Retry-After`), [`error`] (an error with its causes on one
//! line), [`outbound`] (the gateway's own HTTP client), [`allowed_host`].
//! Every dependency between these top-level modules points down the flow
//! (config at the bottom; app, admin and cli on top), with no cycle:
//! `gateway/tests/module_graph.rs` checks it.

pub mod admin;
pub mod allowed_host;
pub mod app;
pub mod cli;
pub mod config;
pub mod connectors;
pub mod error;
pub mod fleet;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod http_server;
pub mod ingress;
pub mod log;
pub mod metrics;
pub mod model;
pub mod mqtt_link;
pub mod outbound;
pub mod retry;
pub mod secret;
pub mod sinks;
pub mod speaker_api;
pub mod tasks;
