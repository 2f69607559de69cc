//! The wasmtime engine shared by every plugin: compilation (cached on disk),
//! the linker with our imports and an empty WASI, and the epoch ticker that
//! enforces CPU deadlines.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::LoadError;
use super::bindings::Connector as ConnectorWorld;
use super::host::{CallState, MemoryBudget};
use super::kv::KvQuotas;
use crate::config::PluginLimits;

/// How often the epoch advances; the CPU budget is checked at this grain.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine, the linker and the compiled-component cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: Option<PathBuf>,
    pub(super) limits: PluginLimits,
    /// Linear memory of every call in flight, against `limits.total_memory_bytes`.
    pub(super) memory: Arc<MemoryBudget>,
    /// Plugin KV quotas and their counts, shared by a connector's reloads.
    pub(super) kv: Arc<KvQuotas>,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine. `cache_dir`: where compiled plugins are kept so a
    /// restart does not recompile (None: compile every time).
    pub fn new(limits: PluginLimits, cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        if cfg!(target_pointer_width = "64") {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_for(&limits)));
            config.memory_reservation(
                (limits.memory_bytes as u64)
                    .next_power_of_two()
                    .max(64 << 20),
            );
            config.memory_guard_size(32 << 20);
        } else {
            // 32-bit ARM (Pulley): a pool of 128 memories of 96 MiB reserved
            // each is more address space than the process has. Each instance
            // maps just its cap instead; Pulley bounds-checks every access,
            // so no guard region is needed.
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            config.memory_reservation(limits.memory_bytes as u64);
            config.memory_guard_size(0);
            config.memory_reservation_for_growth(0);
        }
        let engine = Engine::new(&config).map_err(LoadError::Engine)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::Engine)?;
        ConnectorWorld::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |state| state)
            .map_err(LoadError::Engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| LoadError::engine(e, "epoch thread"))?;

        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            memory: Arc::new(MemoryBudget::new(
                limits.total_memory_bytes.max(limits.memory_bytes),
            )),
            kv: KvQuotas::new(limits.kv_max_bytes, limits.kv_total_bytes),
            limits,
            ticker_stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Plugin KV quotas and what each connector keeps.
    pub fn kv_quotas(&self) -> &KvQuotas {
        &self.kv
    }

    /// The process-wide plugin memory budget (its use, for metrics and tests).
    pub fn memory_budget(&self) -> &MemoryBudget {
        &self.memory
    }

    pub(super) fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    /// Compiles `path`, or loads it from the cache when this engine compiled
    /// the same bytes before; also returns the SHA-256 of the file's bytes
    /// (the cache key, and how a reload tells a rebuilt plugin). Blocking:
    /// call from a blocking thread.
    pub fn compile(&self, path: &Path) -> Result<(Component, [u8; 32]), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.compile_read(path, &bytes)
    }

    /// [`Runtime::compile`] of `bytes` already read from `path` (and
    /// checked against its signature: the very bytes that run).
    pub fn compile_read(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, [u8; 32]), LoadError> {
        let started = std::time::Instant::now();
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let Some(cache_dir) = &self.cache_dir else {
            return Ok((self.compile_bytes(path, bytes)?, digest));
        };
        let cached = cache_dir.join(self.cache_key(&digest));
        if cached.is_file() {
            // SAFETY: `deserialize_file` trusts its input. Only files in our own
            // cache directory are read, each written by `precompile_component`
            // of this engine configuration (the key includes its compatibility
            // hash), and a file that fails wasmtime's own checks is recompiled.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => {
                    tracing::info!(
                        plugin = %path.display(), wasm_bytes = bytes.len(), from_cache = true,
                        ms = started.elapsed().as_millis() as u64, "plugin loaded"
                    );
                    return Ok((component, digest));
                }
                Err(e) => {
                    tracing::warn!(path = %cached.display(), error = %e, "compiled plugin cache entry unusable; recompiling")
                }
            }
        }
        let compiled =
            self.engine
                .precompile_component(bytes)
                .map_err(|source| LoadError::Compile {
                    path: path.to_path_buf(),
                    source,
                })?;
        if let Err(e) = write_atomically(cache_dir, &cached, &compiled) {
            tracing::warn!(dir = %cache_dir.display(), error = %e, "cannot cache compiled plugin");
        }
        tracing::info!(
            plugin = %path.display(), wasm_bytes = bytes.len(), from_cache = false,
            ms = started.elapsed().as_millis() as u64, "plugin loaded"
        );
        // SAFETY: the bytes were produced by this engine a moment ago.
        #[allow(unsafe_code)]
        let component =
            unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(|source| {
                LoadError::Compile {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Ok((component, digest))
    }

    fn compile_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Component, LoadError> {
        Component::new(&self.engine, bytes).map_err(|source| LoadError::Compile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Deletes compiled plugins in the cache that none of `keep` (SHA-256
    /// digests of the plugin files in use) needs, and compiles of an older
    /// engine: each rebuilt plugin would otherwise leave its old entry (tens
    /// of MB for a Python or JavaScript one) on a Pi's SD card for good.
    /// Returns how many files went.
    pub fn prune_cache(&self, keep: &[[u8; 32]]) -> std::io::Result<usize> {
        let Some(dir) = &self.cache_dir else {
            return Ok(0);
        };
        let keep: Vec<String> = keep.iter().map(|d| self.cache_key(d)).collect();
        let mut removed = 0;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only files this gateway writes: `<digest>-<engine>.cwasm` and
            // their `.tmp<pid>` siblings left by a power cut.
            let ours = name.ends_with(".cwasm") || name.contains(".tmp");
            if ours && !keep.contains(&name) && entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Content hash of the plugin plus the engine's compatibility hash: a new
    /// wasmtime or different settings never read an old entry.
    fn cache_key(&self, digest: &[u8; 32]) -> String {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        format!("{}-{:016x}.cwasm", hex::encode(digest), compat.finish())
    }
}

/// The instance pool on 64-bit hosts. A Pi kernel gives a process 512 GiB
/// of address space: keep the pool small and each slot no bigger than the
/// memory cap allows.
fn pool_for(limits: &PluginLimits) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(64)
        .total_core_instances(256)
        .total_memories(128)
        .total_tables(128)
        .max_memories_per_component(8)
        .max_tables_per_component(8)
        .max_memory_size(limits.memory_bytes)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        // A fresh instance per call: keeping the first pages of a freed
        // slot resident (zeroed with memset instead of madvise) spares
        // the next instance the page faults. Bounded by slots in use.
        // With PAGEMAP_SCAN (Linux 6.7+; older kernels fall back) only the
        // pages a call dirtied are reset, wherever they are: a Rust plugin's
        // stack and heap sit above the first 256 KiB, so without it each
        // call ended in an madvise and a TLB shootdown on every core
        // (`--bench plugin_call`: p50 53.5 µs before, 28.2 µs after).
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    pool
}

/// Writes `bytes` to a temporary file beside `target`, syncs it and renames it
/// into place, so a power cut never leaves a half-written cache entry.
fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = target.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, target)
}
