//! The few disk operations the store's own files need, behind a trait so a
//! test can make the disk slow or failing (as Vector's disk buffer does
//! with its filesystem) without a test flag inside the store.
//!
//! sled does its own I/O; only the write-ahead file and the syncs that make
//! sled's data durable go through here.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The disk under the store.
pub trait Disk: Send + Sync + std::fmt::Debug + 'static {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data (and the metadata needed to read it back)
    /// reaches stable storage, the drive's write cache included.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Bytes an unprivileged writer may still use on `dir`'s filesystem.
    fn free_bytes(&self, dir: &File) -> io::Result<u64>;
}

/// The real disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl Disk for OsDisk {
    fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn free_bytes(&self, dir: &File) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(dir).map_err(io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
}

/// The disk the store uses unless told otherwise.
pub fn os_disk() -> Arc<dyn Disk> {
    Arc::new(OsDisk)
}

/// A disk whose syncs can be made slow or failing, for tests.
#[cfg(test)]
pub mod faulty {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    /// [`OsDisk`] with knobs: the next sync fails, every sync stalls, the
    /// filesystem looks full.
    #[derive(Debug, Default)]
    pub struct FaultyDisk {
        fail_next_sync: AtomicBool,
        sync_stall_ms: AtomicU64,
        /// Called at the start of every stalled sync (a test learns a commit
        /// is on the disk).
        stalls: AtomicU64,
        syncs: AtomicU64,
        free_bytes: Mutex<Option<u64>>,
    }

    impl FaultyDisk {
        pub fn new() -> Arc<FaultyDisk> {
            Arc::new(FaultyDisk::default())
        }

        /// The next `sync_data` fails with EIO (as `fdatasync` can).
        pub fn fail_next_sync(&self) {
            self.fail_next_sync.store(true, Ordering::SeqCst);
        }

        /// Every `sync_data` takes `stall` longer (an SD card that hangs).
        pub fn stall_syncs(&self, stall: Duration) {
            self.sync_stall_ms
                .store(stall.as_millis() as u64, Ordering::SeqCst);
        }

        /// How many syncs have stalled so far.
        pub fn stalled_syncs(&self) -> u64 {
            self.stalls.load(Ordering::SeqCst)
        }

        /// How many times `sync_data` was called.
        pub fn syncs(&self) -> u64 {
            self.syncs.load(Ordering::SeqCst)
        }

        /// Reports `bytes` free (None: the real figure).
        pub fn set_free_bytes(&self, bytes: Option<u64>) {
            *self.free_bytes.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
        }
    }

    impl Disk for FaultyDisk {
        fn write_at(&self, file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
            OsDisk.write_at(file, bytes, offset)
        }

        fn sync_data(&self, file: &File) -> io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            let stall = self.sync_stall_ms.load(Ordering::SeqCst);
            if stall > 0 {
                self.stalls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(stall));
            }
            if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                ));
            }
            OsDisk.sync_data(file)
        }

        fn free_bytes(&self, dir: &File) -> io::Result<u64> {
            match *self.free_bytes.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(bytes) => Ok(bytes),
                None => OsDisk.free_bytes(dir),
            }
        }
    }
}
