//! The connector runtime: loads each `[[connector]]` plugin (a WebAssembly
//! component) and calls it in a sandbox.
//!
//! Long because loading, admitting, calling and budgeting a plugin share the
//! runtime's state; the imports (kv, http_client, host) and the manifest
//! checks (trust) are already files of their own.
//!
//! Invariants:
//! - One `InstancePre` per plugin, a fresh instance per call: a trapped
//!   instance is never re-entered, and calls share no guest state.
//! - Each call is capped: memory (limiter), CPU (epoch deadline that does not
//!   count time spent in host imports), wall time (tokio timeout), number of
//!   changes returned. Hitting a cap fails that call only.
//! - Plugins get an empty WASI context: no files, env, sockets or stdin. Their
//!   stderr is captured (bounded) and logged, so a panic message is visible.

mod bindings;
pub mod health;
pub mod host;
pub mod http_client;
pub mod kv;
pub mod runtime;
#[cfg(test)]
mod tests;
pub mod trust;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, UpdateDeadline};

use crate::config::{ConnectorConfig, PluginLimits, PluginTrustConfig};
use crate::log::{KvBatch, LogError, Store as EventStore};
use crate::model::{self, BalanceChange, Direction, InvalidChange};
use bindings::types as wit;
pub use health::{ConnectorHealth, HealthReport};
use host::{CallState, ConnectorContext, MemoryExceeded};
use http_client::{HttpPolicy, PluginHttp};
use kv::KvWrites;
pub use runtime::Runtime;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine, or a thread, task or client loading needs, failed; the
    /// context names which (`compile task`, `http client`, ...).
    #[error("wasm engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid WebAssembly component: {source:#}")]
    Compile {
        path: PathBuf,
        source: wasmtime::Error,
    },
    #[error(
        "{path} needs imports this gateway does not provide (built for another contract?): {source:#}"
    )]
    Link {
        path: PathBuf,
        source: wasmtime::Error,
    },
    #[error(
        "{path} exports neither `webhook` nor `poller` of soundbox:connector@0.1 (built for another contract major version?)"
    )]
    NoConnectorExport { path: PathBuf },
    #[error("connector state store: {0}")]
    Store(#[source] LogError),
    /// Unsigned (and the config does not allow it), signed by a key the
    /// config does not trust, or changed since it was signed.
    #[error(
        "{reason} ([plugins] in the config says whose plugins run; docs/security.md#signed-plugins)"
    )]
    Untrusted {
        reason: String,
        /// Unsigned, modified, ... as the status page names it.
        signature: trust::Signature,
    },
    /// Its manifest asks for more than the connector's config grants: the
    /// version running (if any) keeps serving.
    #[error("{path}: {source}; grant them in the connector's allowed_hosts to run this version")]
    NotGranted {
        path: PathBuf,
        source: trust::NotGranted,
    },
}

impl LoadError {
    /// An [`LoadError::Engine`] of `error`, in the context of `what`.
    fn engine<E>(error: E, what: &'static str) -> LoadError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        LoadError::Engine(wasmtime::Error::new(error).context(what))
    }

    /// For a plugin file refused for whose it is or what it asks: what the
    /// status page says of the file on disk (`modified`, `held: asks to
    /// reach …`); None for other failures.
    pub fn on_disk(&self) -> Option<String> {
        match self {
            LoadError::Untrusted { signature, .. } => Some(signature.to_string()),
            LoadError::NotGranted { source, .. } => Some(format!(
                "held: asks to reach {}, not granted",
                source.hosts.join(", ")
            )),
            _ => None,
        }
    }
}

/// Which of the contract's worlds a plugin implements, found by looking at
/// what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    WebhookConnector,
    PollingConnector,
    Connector,
}

impl World {
    pub fn handles_webhooks(self) -> bool {
        matches!(self, World::WebhookConnector | World::Connector)
    }

    pub fn polls(self) -> bool {
        matches!(self, World::PollingConnector | World::Connector)
    }
}

/// A connector's own refusal (`connector-error`), which the sender is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("transient: {0}")]
    Transient(String),
    #[error("connector failure: {0}")]
    Fatal(String),
}

/// Why a call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("plugin used up its CPU budget of {0:?}")]
    CpuBudget(Duration),
    #[error("plugin hit its memory cap of {0} bytes")]
    Memory(usize),
    #[error(
        "plugin calls in flight hold the gateway's plugin memory budget of {0} bytes; retry later"
    )]
    MemoryBudget(usize),
    #[error("connector returned too much: {0}")]
    TooLarge(String),
    #[error("plugin call did not finish within {0:?}")]
    Timeout(Duration),
    /// Shown as the trap's first line (without wasmtime's backtrace); the
    /// whole error is its source.
    #[error("plugin trapped: {}", trap_summary(.0))]
    Trap(#[source] wasmtime::Error),
    #[error("plugin could not be instantiated: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
    #[error("plugin returned {0} changes; the cap is {1}")]
    TooManyChanges(usize, usize),
    #[error("plugin returned an {0}")]
    Invalid(InvalidChange),
    #[error("connector does not export `{0}`")]
    NotExported(&'static str),
}

/// A request as the plugin will see it.
#[derive(Debug, Clone, Default)]
pub struct IncomingRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reply header by which a plugin that answers its sender normally still
/// reports a failure of its own (see [`Plugin::handle`]); never sent on.
pub const FAULT_HEADER: &str = "x-soundbox-connector-fault";

/// Removes every [`FAULT_HEADER`] from `reply`; the first one's value, if any.
fn take_fault(reply: &mut Reply) -> Option<String> {
    let mut fault = None;
    reply.headers.retain(|(k, v)| {
        if k.eq_ignore_ascii_case(FAULT_HEADER) {
            fault.get_or_insert_with(|| v.clone());
            false
        } else {
            true
        }
    });
    fault
}

/// The reply a plugin asks the gateway to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct WebhookResult {
    pub changes: Vec<BalanceChange>,
    pub reply: Option<Reply>,
    /// Committed with `changes` ([`Plugin::kv_batch`]).
    pub kv_writes: KvWrites,
}

#[derive(Debug)]
pub struct PollResult {
    pub changes: Vec<BalanceChange>,
    pub next_poll: Option<Duration>,
    /// Committed with `changes` ([`Plugin::kv_batch`]).
    pub kv_writes: KvWrites,
}

type CallFuture<'a, T> = Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>;

/// A loaded plugin, ready to be called any number of times concurrently.
pub struct Plugin {
    /// What it was loaded from (name, file, poll interval); a reload
    /// compares it to tell whether the connector changed.
    config: ConnectorConfig,
    world: World,
    pre: InstancePre<CallState>,
    webhook: Option<bindings::webhook::GuestIndices>,
    poller: Option<bindings::poller::GuestIndices>,
    context: Arc<ConnectorContext>,
    limits: PluginLimits,
    digest: [u8; 32],
    /// Whether, and by whom, it is signed; its manifest if it is.
    signature: trust::Signature,
    manifest: Option<trust::Manifest>,
    /// Its manifest and signature files as loaded: a new signature is a
    /// new plugin for a reload.
    sidecars: Option<[u8; 32]>,
    health: ConnectorHealth,
    /// Keeps the engine's epoch ticker alive as long as the plugin can be
    /// called; holds the process-wide memory budget.
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.config.name)
            .field("path", &self.config.plugin)
            .field("world", &self.world)
            .finish()
    }
}

impl Plugin {
    /// Compiles (or loads from cache) and links the plugin of `config`.
    pub async fn load(
        runtime: Arc<Runtime>,
        config: &ConnectorConfig,
        trusted: &PluginTrustConfig,
        store: &EventStore,
    ) -> Result<Plugin, LoadError> {
        let path = config.plugin.clone();
        let compiling = runtime.clone();
        let (trust_config, connector) = (trusted.clone(), config.clone());
        let (component, digest, admitted, sidecars) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            // Checked before it is compiled: a changed file is "modified",
            // whatever the change did to the wasm.
            let sidecars = trust::sidecar_digest(&path);
            let verdict = trust::verify(&path, &bytes, &trust_config.trusted_keys);
            let admitted = admit(
                verdict,
                &trust_config,
                &connector,
                compiling.limits.memory_bytes,
            )?;
            let (component, digest) = compiling.compile_read(&path, &bytes)?;
            Ok::<_, LoadError>((component, digest, admitted, sidecars))
        })
        .await
        .map_err(|e| LoadError::engine(e, "compile task"))??;
        let Admitted {
            signature,
            manifest,
            granted,
        } = admitted;
        if signature == trust::Signature::Unsigned && !trusted.run_any {
            tracing::warn!(
                connector = %config.name,
                plugin = %config.plugin.display(),
                "running an unsigned plugin: nobody vouches for what it does ([plugins] unsigned = \"{}\")",
                crate::config::ALLOW_UNSIGNED_WORDS
            );
        }
        // Signed: what the manifest asks within what the config grants.
        // Unsigned (allowed): what the config grants.
        let (allowed_hosts, memory_bytes, kv_allowed) = match &granted {
            Some(g) => (g.allowed_hosts.clone(), g.memory_bytes, g.kv),
            None => (
                config.allowed_hosts.clone(),
                runtime.limits.memory_bytes,
                true,
            ),
        };
        let path = config.plugin.clone();
        let pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|source| LoadError::Link {
                path: path.clone(),
                source,
            })?;
        let webhook = bindings::webhook::GuestIndices::new(&pre).ok();
        let poller = bindings::poller::GuestIndices::new(&pre).ok();
        let world = match (&webhook, &poller) {
            (Some(_), Some(_)) => World::Connector,
            (Some(_), None) => World::WebhookConnector,
            (None, Some(_)) => World::PollingConnector,
            (None, None) => return Err(LoadError::NoConnectorExport { path }),
        };
        let http = PluginHttp::new(HttpPolicy {
            allowed_hosts,
            allow_private_addresses: config.allow_private_addresses,
        })
        .map_err(|e| LoadError::engine(e, "http client"))?;
        let kv = {
            let (quotas, store, name) = (runtime.kv.clone(), store.clone(), config.name.clone());
            tokio::task::spawn_blocking(move || quotas.open(&store, &name))
                .await
                .map_err(|e| LoadError::engine(e, "KV task"))?
                .map_err(LoadError::Store)?
        };
        let context = Arc::new(ConnectorContext {
            name: config.name.clone(),
            settings: host::settings_for_plugin(&config.settings),
            kv,
            kv_allowed,
            http,
        });
        let mut limits = runtime.limits.clone();
        limits.memory_bytes = memory_bytes;
        Ok(Plugin {
            config: config.clone(),
            world,
            pre,
            webhook,
            poller,
            context,
            limits,
            digest,
            signature,
            manifest,
            sidecars,
            health: ConnectorHealth::default(),
            runtime,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The `.wasm` file it was loaded from.
    pub fn path(&self) -> &std::path::Path {
        &self.config.plugin
    }

    pub fn world(&self) -> World {
        self.world
    }

    pub fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    /// True when `config` and the plugin file on disk are what this was
    /// loaded from: a reload keeps it (and its calls in flight) as it is.
    pub fn is_current(&self, config: &ConnectorConfig) -> bool {
        &self.config == config
            && file_digest(&config.plugin).is_ok_and(|d| d == self.digest)
            && trust::sidecar_digest(&config.plugin) == self.sidecars
    }

    /// Signed by whom, unsigned, ... as checked when it was loaded.
    pub fn signature(&self) -> &trust::Signature {
        &self.signature
    }

    /// Its signed manifest, if it has one.
    pub fn manifest(&self) -> Option<&trust::Manifest> {
        self.manifest.as_ref()
    }

    /// SHA-256 of the plugin file it was loaded from.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// How this connector's calls have gone since it was loaded.
    pub fn health(&self) -> &ConnectorHealth {
        &self.health
    }

    /// Calls the plugin's `webhook.handle` in a fresh instance.
    ///
    /// A reply carrying [`FAULT_HEADER`] is sent without it and counted as a
    /// failure with its value as the reason: for a provider that reads "call
    /// again" from a 200 body (ZaloPay's `return_code: 0`), the only answer
    /// that gets a retry is a success to the gateway, yet the connector
    /// could not do its job and `/readyz` must say why.
    pub async fn handle(&self, request: IncomingRequest) -> Result<WebhookResult, CallError> {
        let started = Instant::now();
        let mut result = self.call_handle(request).await;
        let fault = result
            .as_mut()
            .ok()
            .and_then(|r| r.reply.as_mut())
            .and_then(take_fault);
        match fault {
            Some(reason) => self.health.record(
                &self.config.name,
                "webhook",
                started,
                &Err::<(), _>(CallError::Rejected(Rejection::Transient(reason))),
            ),
            None => self
                .health
                .record(&self.config.name, "webhook", started, &result),
        }
        result
    }

    /// Calls the plugin's `poller.poll` in a fresh instance.
    pub async fn poll(&self) -> Result<PollResult, CallError> {
        let started = Instant::now();
        let result = self.call_poll().await;
        self.health
            .record(&self.config.name, "poll", started, &result);
        result
    }

    async fn call_handle(&self, request: IncomingRequest) -> Result<WebhookResult, CallError> {
        let indices = self
            .webhook
            .clone()
            .ok_or(CallError::NotExported("webhook"))?;
        let request = wit::HttpRequest {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request.headers,
            body: request.body,
        };
        let (outcome, kv_writes) = self
            .call(move |store, instance| {
                Box::pin(async move {
                    let guest = indices.load(&mut *store, instance)?;
                    guest.call_handle(&mut *store, &request).await
                })
            })
            .await?;
        let outcome = outcome.map_err(rejection)?;
        Ok(WebhookResult {
            changes: self.normalize(outcome.changes)?,
            reply: outcome.reply.map(|r| Reply {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            kv_writes,
        })
    }

    async fn call_poll(&self) -> Result<PollResult, CallError> {
        let indices = self
            .poller
            .clone()
            .ok_or(CallError::NotExported("poller"))?;
        let (outcome, kv_writes) = self
            .call(move |store, instance| {
                Box::pin(async move {
                    let guest = indices.load(&mut *store, instance)?;
                    guest.call_poll(&mut *store).await
                })
            })
            .await?;
        let outcome = outcome.map_err(rejection)?;
        Ok(PollResult {
            changes: self.normalize(outcome.changes)?,
            next_poll: outcome.next_poll_ms.map(Duration::from_millis),
            kv_writes,
        })
    }

    /// Applies a call's KV writes; call it once the call's changes are
    /// stored. A failure is logged, not returned: the changes are safe, and
    /// the plugin's next call sees its old state and repeats the work (the
    /// dedupe key absorbs what it finds again).
    /// A call's KV writes, to commit with the changes it returned.
    pub fn kv_batch(&self, writes: KvWrites) -> Option<KvBatch> {
        self.context.kv.batch(writes)
    }

    /// Runs `f` against a fresh instance under every cap, and turns a trap
    /// into the reason it happened. Returns the call's staged KV writes too.
    async fn call<T>(
        &self,
        f: impl for<'a> FnOnce(&'a mut Store<CallState>, &'a Instance) -> CallFuture<'a, T>,
    ) -> Result<(T, KvWrites), CallError> {
        let limits = &self.limits;
        let mut store = Store::new(
            self.pre.engine(),
            CallState::new(
                self.context.clone(),
                limits.memory_bytes,
                self.runtime.memory.clone(),
                limits.max_stderr_bytes,
            ),
        );
        store.limiter(|state| &mut state.limiter);
        // Every string and list the plugin hands the host (its result, or
        // the arguments of one import call) is charged against this before
        // the host allocates it: many entries pointing at one big string in
        // the guest cannot make the host copy it many times.
        store.set_hostcall_fuel(limits.max_result_bytes);
        let budget = limits.cpu_budget;
        store.set_epoch_deadline(1);
        // At every epoch tick the guest yields to tokio, so a plugin that
        // burns its budget holds a worker for one tick at a time, not for the
        // whole budget; the time it then waits for a worker is not charged.
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            if state.cpu_used() > budget {
                state.cpu_exceeded = true;
                wasmtime::bail!("CPU budget of {budget:?} used up");
            }
            let waited = state.yielded_ns.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(yield_to_runtime(waited)),
            ))
        });

        let run = async {
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (e, true))?;
            f(&mut store, &instance).await.map_err(|e| (e, false))
        };
        let outcome = tokio::time::timeout(limits.call_timeout, run).await;
        self.log_stderr(&store);
        let state = store.data_mut();
        match outcome {
            Err(_) => Err(CallError::Timeout(limits.call_timeout)),
            Ok(Ok(value)) => Ok((value, std::mem::take(&mut state.kv_writes))),
            Ok(Err(_)) if state.cpu_exceeded => Err(CallError::CpuBudget(budget)),
            Ok(Err(_)) if state.limiter.exceeded == Some(MemoryExceeded::Call) => {
                Err(CallError::Memory(limits.memory_bytes))
            }
            Ok(Err(_)) if state.limiter.exceeded == Some(MemoryExceeded::Budget) => {
                Err(CallError::MemoryBudget(self.runtime.memory.limit()))
            }
            Ok(Err((e, true))) => Err(CallError::Instantiate(e)),
            Ok(Err((e, false))) if is_hostcall_fuel_exhausted(&e) => {
                Err(CallError::TooLarge(format!(
                    "more than {} bytes of strings and lists in its result or in one host call",
                    limits.max_result_bytes
                )))
            }
            Ok(Err((e, false))) => Err(CallError::Trap(e)),
        }
    }

    fn log_stderr(&self, store: &Store<CallState>) {
        let output = store.data().stderr.contents();
        if output.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&output);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::warn!(connector = %self.config.name, "plugin stderr: {line}");
        }
    }

    /// Turns the plugin's changes into the flow's type and checks them.
    fn normalize(&self, changes: Vec<wit::BalanceChange>) -> Result<Vec<BalanceChange>, CallError> {
        if changes.len() > self.limits.max_changes_per_call {
            return Err(CallError::TooManyChanges(
                changes.len(),
                self.limits.max_changes_per_call,
            ));
        }
        let received_at_ms = model::now_ms();
        changes
            .into_iter()
            .map(|c| {
                let change = BalanceChange {
                    provider: c.provider,
                    transaction_id: c.transaction_id,
                    connector: self.config.name.clone(),
                    account: c.account,
                    amount: c.amount,
                    currency: c.currency,
                    direction: match c.direction {
                        wit::Direction::Incoming => Direction::In,
                        wit::Direction::Outgoing => Direction::Out,
                    },
                    reference: c.reference,
                    counterparty: c.counterparty,
                    content: c.content,
                    occurred_at_ms: c.occurred_at_ms,
                    received_at_ms,
                    extra: c.extra,
                };
                change.validate().map_err(CallError::Invalid)?;
                Ok(change)
            })
            .collect()
    }
}

/// Whether wasmtime refused to lift more data than the store's hostcall
/// fuel allows. Its error type is private, so its message is matched (the
/// sandbox tests fail should a wasmtime upgrade reword it).
fn is_hostcall_fuel_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.to_string().contains("fuel allocated for hostcalls"))
}

/// Lets other tasks run, then adds the time this took to `waited`.
async fn yield_to_runtime(waited: Arc<AtomicU64>) {
    let from = Instant::now();
    tokio::task::yield_now().await;
    let nanos = u64::try_from(from.elapsed().as_nanos()).unwrap_or(u64::MAX);
    waited.fetch_add(nanos, Ordering::Relaxed);
}

fn rejection(error: wit::ConnectorError) -> CallError {
    CallError::Rejected(match error {
        wit::ConnectorError::BadRequest(r) => Rejection::BadRequest(r),
        wit::ConnectorError::Unauthorized(r) => Rejection::Unauthorized(r),
        wit::ConnectorError::Transient(r) => Rejection::Transient(r),
        wit::ConnectorError::Fatal(r) => Rejection::Fatal(r),
    })
}

/// SHA-256 of a plugin file.
/// A plugin the trust config lets run, and what its manifest is granted.
struct Admitted {
    signature: trust::Signature,
    manifest: Option<trust::Manifest>,
    /// None for an unsigned plugin: it gets what the connector's config grants.
    granted: Option<trust::Granted>,
}

/// Whether `verdict` may run under `trusted`: signed by a trusted key and
/// asking no more than `connector` grants, or unsigned where the config
/// allows it (or any plugin for `plugin test`).
fn admit(
    verdict: trust::Verdict,
    trusted: &PluginTrustConfig,
    connector: &ConnectorConfig,
    memory_bytes: usize,
) -> Result<Admitted, LoadError> {
    let signature = verdict.signature();
    let unsigned_allowed =
        matches!(verdict, trust::Verdict::Unsigned { .. }) && trusted.allow_unsigned;
    match verdict {
        // `plugin test`: the author's own file, with the memory and KV its
        // manifest declares and the hosts the test allows.
        trust::Verdict::Signed { manifest, .. } if trusted.run_any => {
            let granted = trust::Granted {
                allowed_hosts: connector.allowed_hosts.clone(),
                memory_bytes: manifest.needs.memory_bytes(memory_bytes),
                kv: manifest.needs.kv,
            };
            Ok(Admitted {
                signature,
                manifest: Some(manifest),
                granted: Some(granted),
            })
        }
        trust::Verdict::Signed { manifest, .. } => {
            let granted = trust::grant(&manifest.needs, &connector.allowed_hosts, memory_bytes)
                .map_err(|source| LoadError::NotGranted {
                    path: connector.plugin.clone(),
                    source,
                })?;
            Ok(Admitted {
                signature,
                manifest: Some(manifest),
                granted: Some(granted),
            })
        }
        // Unsigned where allowed (or anything for `plugin test`): what its
        // connector's config grants.
        _ if unsigned_allowed || trusted.run_any => Ok(Admitted {
            signature,
            manifest: None,
            granted: None,
        }),
        refused => Err(LoadError::Untrusted {
            reason: refused.to_string(),
            signature,
        }),
    }
}

fn file_digest(path: &std::path::Path) -> Result<[u8; 32], LoadError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha2::Sha256::digest(&bytes).into())
}

/// The first line of a trap, without wasmtime's backtrace.
fn trap_summary(error: &wasmtime::Error) -> String {
    let trap = error
        .downcast_ref::<wasmtime::Trap>()
        .map(|t| t.to_string());
    trap.unwrap_or_else(|| {
        error
            .to_string()
            .lines()
            .next()
            .unwrap_or("unknown")
            .to_string()
    })
}

/// Every configured connector, by name.
#[derive(Debug, Default)]
pub struct Connectors {
    by_name: BTreeMap<String, Arc<Plugin>>,
}

impl Connectors {
    /// Loads every connector; the first failure names its connector.
    pub async fn load_all(
        runtime: &Arc<Runtime>,
        configs: &[ConnectorConfig],
        trusted: &PluginTrustConfig,
        store: &EventStore,
    ) -> Result<Connectors, (String, LoadError)> {
        let mut by_name = BTreeMap::new();
        for config in configs {
            let plugin = Plugin::load(runtime.clone(), config, trusted, store)
                .await
                .map_err(|e| (config.name.clone(), e))?;
            tracing::info!(connector = %config.name, world = ?plugin.world(), plugin = %config.plugin.display(), signature = %plugin.signature(), "connector loaded");
            by_name.insert(config.name.clone(), Arc::new(plugin));
        }
        Ok(Connectors { by_name })
    }

    /// Connectors already loaded, e.g. some kept and some new after a reload.
    pub fn from_plugins(plugins: impl IntoIterator<Item = Arc<Plugin>>) -> Connectors {
        Connectors {
            by_name: plugins
                .into_iter()
                .map(|p| (p.name().to_string(), p))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
