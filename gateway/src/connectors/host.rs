//! What a plugin instance sees of the gateway: the store data of one call and
//! the host side of the `log`, `config`, `kv` and `http-client` imports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::soundbox::connector::{config, http_client, kv, log, types};
use super::http_client::PluginHttp;
use super::kv::{KvWrites, PluginKv};

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// Table elements all tables of one call may hold together (a funcref is
/// 8-16 bytes, so at most ~1.6 MiB).
pub const MAX_TABLE_ELEMENTS_PER_CALL: usize = 100_000;

/// What a connector shares across its calls.
pub struct ConnectorContext {
    pub name: String,
    /// `[connector.config]`, strings raw and everything else as JSON.
    pub settings: Vec<(String, String)>,
    pub kv: PluginKv,
    /// False for a signed plugin whose manifest does not declare KV.
    pub kv_allowed: bool,
    pub http: PluginHttp,
}

/// Settings by key only: their values are the connector's API keys and
/// secrets, and a `{:?}` in an error or a log line must not print them.
impl std::fmt::Debug for ConnectorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorContext")
            .field("name", &self.name)
            .field(
                "settings",
                &self
                    .settings
                    .iter()
                    .map(|(key, _)| (key, crate::config::Secret::new("")))
                    .collect::<Vec<_>>(),
            )
            .field("kv", &self.kv)
            .field("http", &self.http)
            .finish()
    }
}

/// The data of one call's store.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) connector: Arc<ConnectorContext>,
    pub(super) limiter: MemoryLimiter,
    pub(super) stderr: MemoryOutputPipe,
    /// When the call started, and how much of it was spent waiting in host
    /// imports: the CPU budget counts only the rest.
    pub(super) started: Instant,
    pub(super) host_time: Duration,
    /// Nanoseconds spent yielded to tokio at epoch ticks, waiting for a
    /// worker: not CPU this call used, so not charged to its budget.
    pub(super) yielded_ns: Arc<AtomicU64>,
    pub(super) cpu_exceeded: bool,
    /// This call's KV writes, applied after its changes are stored.
    pub(super) kv_writes: KvWrites,
}

impl CallState {
    pub fn new(
        connector: Arc<ConnectorContext>,
        memory_bytes: usize,
        pool: Arc<MemoryBudget>,
        stderr_bytes: usize,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(stderr_bytes);
        // An empty WASI context: no files, no env, no sockets, no stdin.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            connector,
            limiter: MemoryLimiter::new(memory_bytes, pool),
            stderr,
            started: Instant::now(),
            host_time: Duration::ZERO,
            yielded_ns: Arc::new(AtomicU64::new(0)),
            cpu_exceeded: false,
            kv_writes: KvWrites::default(),
        }
    }

    /// CPU time used so far: wall time minus time spent in host imports and
    /// waiting for a worker after yielding.
    pub fn cpu_used(&self) -> Duration {
        let yielded = Duration::from_nanos(self.yielded_ns.load(Ordering::Relaxed));
        self.started
            .elapsed()
            .saturating_sub(self.host_time)
            .saturating_sub(yielded)
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linear memory all plugin calls of the process may hold together, so the
/// per-call cap times the calls in flight cannot exhaust a Pi's RAM.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held by calls in flight.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which memory cap a call hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryExceeded {
    /// The call's own cap, over all its memories.
    Call,
    /// The process-wide budget, held by calls in flight.
    Budget,
}

/// Caps the sum of a call's linear memories (a component has several) and
/// its table elements, takes the memory from the process-wide
/// [`MemoryBudget`] and gives it back when the call's store is dropped.
/// Remembers which cap was hit, so a failed call is reported as a memory
/// blow-up rather than a generic trap.
pub struct MemoryLimiter {
    max_bytes: usize,
    /// Bytes of every memory of this store, as granted.
    memory: usize,
    table_elements: usize,
    pool: Arc<MemoryBudget>,
    pub(super) exceeded: Option<MemoryExceeded>,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize, pool: Arc<MemoryBudget>) -> Self {
        MemoryLimiter {
            max_bytes,
            memory: 0,
            table_elements: 0,
            pool,
            exceeded: None,
        }
    }

    /// Bytes of all this call's memories together.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.pool.give_back(self.memory);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        let total = self.memory.saturating_add(more);
        if total > self.max_bytes {
            self.exceeded = Some(MemoryExceeded::Call);
            wasmtime::bail!(
                "plugin memories would grow to {total} bytes together, over the {} byte cap",
                self.max_bytes
            );
        }
        if !self.pool.try_take(more) {
            self.exceeded = Some(MemoryExceeded::Budget);
            wasmtime::bail!(
                "plugin calls in flight hold the gateway's {} byte plugin memory budget",
                self.pool.limit()
            );
        }
        self.memory = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS_PER_CALL {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }
}

impl types::Host for CallState {}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let connector = self.connector.name.as_str();
        match level {
            log::Level::Trace => tracing::trace!(connector, "{message}"),
            log::Level::Debug => tracing::debug!(connector, "{message}"),
            log::Level::Info => tracing::info!(connector, "{message}"),
            log::Level::Warn => tracing::warn!(connector, "{message}"),
            log::Level::Error => tracing::error!(connector, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for CallState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .connector
            .settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self
            .connector
            .settings
            .iter()
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// What a signed plugin that did not declare KV gets from a KV write.
const KV_NOT_DECLARED: &str = "this plugin's signed manifest does not declare kv = true";

impl kv::Host for CallState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if !self.connector.kv_allowed {
            return Ok(None);
        }
        Ok(self.kv_writes.get(&self.connector.kv, &key))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if !self.connector.kv_allowed {
            return Ok(Err(KV_NOT_DECLARED.into()));
        }
        Ok(self.kv_writes.set(&self.connector.kv, &key, &value))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        if !self.connector.kv_allowed {
            return Ok(Err(KV_NOT_DECLARED.into()));
        }
        Ok(self.kv_writes.delete(&self.connector.kv, &key))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, String>> {
        if !self.connector.kv_allowed {
            return Ok(Err(KV_NOT_DECLARED.into()));
        }
        Ok(self
            .kv_writes
            .compare_and_swap(&self.connector.kv, &key, expected.as_deref(), &new))
    }
}

impl http_client::Host for CallState {
    async fn send(
        &mut self,
        request: types::HttpRequest,
    ) -> Result<types::HttpResponse, http_client::HttpError> {
        let started = Instant::now();
        let http = self.connector.http.clone();
        let result = http.send(request).await;
        self.host_time += started.elapsed();
        result
    }
}

/// Converts `[connector.config]` into what `config.get` serves.
pub fn settings_for_plugin(table: &toml::Table) -> Vec<(String, String)> {
    table
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            (k.clone(), text)
        })
        .collect()
}
