//! Opening the store without crash-looping and without silently wiping it.
//!
//! A store held by another process is an error (two gateways must not share
//! one). A store sled cannot open is renamed to `state.damaged-<unix ms>`, a
//! fresh one takes its place, and whatever the damaged one still yields is
//! copied over; [`LogHealth`] tells the operator. Only `run` recovers
//! ([`Recovery::MoveAside`]): a command that only looks (`queue status`)
//! must not swap the store, and with it every dedupe key and poller cursor,
//! for an empty one behind the operator's back.

use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use super::record;
use super::segment::{self, Op};
use super::{LogError, LogHealth, LogOptions, StorageError};
use crate::model::now_ms;

pub(super) struct Opened {
    pub db: sled::Db,
    pub health: LogHealth,
    /// Records of a moved-aside store's write-ahead file, to apply to the
    /// fresh one after the salvaged trees (they are newer).
    pub replay: Vec<Vec<Op>>,
}

/// Creates `dir` (and its parents) readable by this user only, and takes
/// other users' access away from one that exists: it holds every payment,
/// the plugins' KV (poll cursors, tokens a plugin keeps) and the compiled
/// plugins, and outside systemd's `StateDirectoryMode` the umask would
/// leave it world-readable. The group's access is left alone (the unit
/// gives it 0750 on purpose).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o007 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o007))?;
    }
    Ok(())
}

/// What to do with a store sled cannot open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Move it aside, start a fresh one and salvage what reads (`run`).
    MoveAside,
    /// Leave it where it is and say so ([`LogError::Damaged`]).
    Refuse,
}

pub(super) fn open_or_recover(
    data_dir: &Path,
    options: &LogOptions,
    recovery: Recovery,
) -> Result<Opened, LogError> {
    create_private_dir(data_dir)
        .map_err(|e| LogError::storage(format!("create {}", data_dir.display()), e))?;
    let path = data_dir.join("state");
    ensure_writable(&path)?;
    ensure_not_locked(&path)?;
    match try_open(&path, options) {
        // Taken by another process since the check above: still not damage.
        Err(Failed::Damaged(reason)) if reason.to_string().contains("could not acquire lock") => {
            Err(LogError::Locked(path.display().to_string()))
        }
        // The disk is full (or read-only, or failing): the store is fine
        // and a fresh one would not fit either. Moving it aside here would
        // strand every pending payment in it once space is back.
        Err(Failed::Environment(error)) => Err(error),
        Ok(db) => Ok(Opened {
            db,
            health: LogHealth::default(),
            replay: Vec::new(),
        }),
        Err(Failed::Damaged(reason)) if recovery == Recovery::Refuse => Err(LogError::Damaged {
            path: path.display().to_string(),
            reason,
        }),
        Err(Failed::Damaged(reason)) => {
            let aside = data_dir.join(format!("state.damaged-{}", now_ms()));
            tracing::error!(
                store = %path.display(),
                moved_to = %aside.display(),
                %reason,
                "event log store cannot be opened; moving it aside and starting a fresh one"
            );
            std::fs::rename(&path, &aside).map_err(|e| {
                let context = format!(
                    "store {} is damaged ({reason}) and cannot be moved aside",
                    path.display()
                );
                LogError::storage(context, e)
            })?;
            let db = try_open(&path, options).map_err(|failed| match failed {
                Failed::Damaged(reason) => LogError::Storage(reason),
                Failed::Environment(error) => error,
            })?;
            let salvaged = salvage(&aside, &db, options);
            tracing::warn!(salvaged, "entries salvaged from the damaged store");
            // A damaged store from before the segments may hold its last
            // commits only in its write-ahead file; read it where it lies
            // (the file is not changed). Newer stores replay their segments.
            let replay = segment::legacy_wal_records(&aside.join("wal"));
            Ok(Opened {
                db,
                health: LogHealth {
                    damaged_store: Some(aside.display().to_string()),
                    salvaged,
                    ..LogHealth::default()
                },
                replay,
            })
        }
    }
}

/// Opens the store at `path` again in this process, after a failure (a
/// full disk): no recovery, no move aside; any failure is an error.
pub(super) fn reopen(path: &Path, options: &LogOptions) -> Result<sled::Db, LogError> {
    try_open(path, options).map_err(|failed| match failed {
        Failed::Damaged(reason) => LogError::Storage(reason),
        Failed::Environment(error) => error,
    })
}

/// Why sled would not open a store.
enum Failed {
    /// Something about the store itself (or a lock held elsewhere).
    Damaged(StorageError),
    /// The machine refused an operation (disk full, read-only, I/O error):
    /// not the store's fault, and a fresh store would fail the same way.
    Environment(LogError),
}

fn try_open(path: &Path, options: &LogOptions) -> Result<sled::Db, Failed> {
    // No background flusher: the write-ahead file makes each commit
    // durable, and a checkpoint flushes sled (when half the file is used, or
    // every 30 s). sled's own flush every 500 ms only added writes, and
    // stalled commits behind its `sync_file_range`.
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_bytes)
        .flush_every_ms(None);
    // sled panics on some kinds of corruption instead of returning an error.
    match catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if is_environment(&e) => Err(Failed::Environment(
            LogError::io(path.display().to_string(), e),
        )),
        Ok(Err(e)) => Err(Failed::Damaged(StorageError::new(String::new(), e))),
        Err(_) => Err(Failed::Damaged(StorageError::msg(
            "sled panicked while opening the store",
        ))),
    }
}

/// An I/O error the operating system reported for an operation (ENOSPC,
/// EROFS, EIO, ...), as opposed to sled finding the files inconsistent
/// (which it reports as corruption, or as an unexpected end of file).
fn is_environment(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    error.raw_os_error().is_some()
        || matches!(
            error.kind(),
            StorageFull | QuotaExceeded | ReadOnlyFilesystem | PermissionDenied
        )
}

/// A store we may not write (owned by another user, e.g. after a command
/// run as root) is not damaged: moving it aside would hide every pending
/// payment in it. Refuse it, and say who must own it.
fn ensure_writable(path: &Path) -> Result<(), LogError> {
    for file in [path.to_path_buf(), path.join("db"), path.join("conf")] {
        let opened = if file == path {
            std::fs::read_dir(&file).map(drop)
        } else {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
                .map(drop)
        };
        if let Err(e) = opened
            && e.kind() == std::io::ErrorKind::PermissionDenied
        {
            let context = format!(
                "{}: the gateway's user must own the data directory (e.g. chown -R soundbox-gateway: {})",
                file.display(),
                path.parent().unwrap_or(path).display()
            );
            return Err(LogError::storage(context, e));
        }
    }
    Ok(())
}

/// sled locks `state/db` exclusively; if another process holds it, stop
/// here rather than mistaking the lock for damage.
fn ensure_not_locked(path: &Path) -> Result<(), LogError> {
    let db_file = path.join("db");
    let Ok(file) = File::open(&db_file) else {
        return Ok(()); // not created yet
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(()), // released when `file` drops
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LogError::Locked(path.display().to_string())),
        Err(_) => Ok(()),
    }
}

/// Copies every tree that still reads from the damaged store at `aside`
/// into `fresh`; event records are copied only if their checksum holds.
/// Returns how many event records were copied.
fn salvage(aside: &Path, fresh: &sled::Db, options: &LogOptions) -> u64 {
    let Ok(old) = try_open(aside, options) else {
        return 0;
    };
    let copied = catch_unwind(AssertUnwindSafe(|| copy_trees(&old, fresh)));
    match copied {
        Ok(n) => n,
        Err(_) => {
            tracing::error!("salvage stopped: the damaged store panicked while being read");
            0
        }
    }
}

fn copy_trees(old: &sled::Db, fresh: &sled::Db) -> u64 {
    let mut events = 0;
    for name in old.tree_names() {
        let (Ok(from), Ok(to)) = (old.open_tree(&name), fresh.open_tree(&name)) else {
            continue;
        };
        let is_events = &*name == b"events";
        for item in from.iter() {
            let Ok((key, value)) = item else { break };
            if is_events && record::decode(&value).is_err() {
                continue;
            }
            if to.insert(key, value).is_ok() && is_events {
                events += 1;
            }
        }
    }
    let _ = fresh.flush();
    events
}
