//! Group commit: one thread owns every append. It takes all requests that
//! queued up while the previous sync ran, writes them in one sled
//! transaction, then makes them durable with a single flush + `fdatasync`, and
//! only then answers each caller. Concurrent webhooks therefore share one
//! sync instead of queueing behind one each.

use std::fs::File;
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use tokio::sync::oneshot;

use super::record::{self, LogEntry};
use super::sled_log::{Inner, be};
use super::{Appended, LogError};
use crate::model::{BalanceChange, now_ms};

/// At most this many requests share one commit, to bound the transaction.
const MAX_BATCH: usize = 512;

pub(super) enum Message {
    Append(Request),
    /// Commit what is queued, then stop.
    Close,
}

pub(super) struct Request {
    pub changes: Vec<BalanceChange>,
    pub reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// Runs until told to close or every sender is gone.
pub(super) fn run(inner: Arc<Inner>, requests: Receiver<Message>) {
    let mut closing = false;
    while !closing {
        let Ok(first) = requests.recv() else { return };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Append(request) => batch.push(request),
                Message::Close => closing = true,
            }
            if batch.len() < MAX_BATCH && !closing {
                next = requests.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let result = commit(&inner, &batch);
        match result {
            Ok(per_request) => {
                inner.set_last_error(None);
                for (request, appended) in batch.into_iter().zip(per_request) {
                    let _ = request.reply.send(Ok(appended));
                }
            }
            Err(error) => {
                tracing::error!(%error, "event log commit failed; senders get 503 and retry");
                inner.set_last_error(Some(error.to_string()));
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn commit(inner: &Inner, batch: &[Request]) -> Result<Vec<Vec<Appended>>, LogError> {
    inner.check_space()?;
    let first_seq = inner.next_seq();
    let now = now_ms();
    // Two writes per change, in one transaction: the entry and its dedupe
    // key commit together or not at all.
    let (per_request, next_seq) = (&inner.events, &inner.dedupe)
        .transaction(|(events, dedupe)| {
            let mut seq = first_seq;
            let mut per_request = Vec::with_capacity(batch.len());
            for request in batch {
                let mut appended = Vec::with_capacity(request.changes.len());
                for change in &request.changes {
                    let key = change.dedupe_key();
                    if let Some(existing) = dedupe.get(key.as_bytes())? {
                        appended.push(Appended::Duplicate(be(&existing)));
                        continue;
                    }
                    let entry = LogEntry {
                        seq,
                        appended_at_ms: now,
                        change: change.clone(),
                    };
                    events.insert(&seq.to_be_bytes(), record::encode(&entry))?;
                    let mut value = seq.to_be_bytes().to_vec();
                    value.extend_from_slice(&now.to_be_bytes());
                    dedupe.insert(key.as_bytes(), value)?;
                    appended.push(Appended::New(seq));
                    seq += 1;
                }
                per_request.push(appended);
            }
            Ok::<_, ConflictableTransactionError<()>>((per_request, seq))
        })
        .map_err(|e| LogError::Storage(format!("{e:?}")))?;
    // The entries and their dedupe keys are in the tree now, durable or
    // not: their numbers are taken even if the sync below fails. Reusing
    // them would overwrite these entries while their dedupe keys stay, and
    // the sender's retry would then be acknowledged as a duplicate of a
    // different payment: lost.
    inner.reserve(next_seq);
    inner.db.flush()?;
    #[cfg(test)]
    if inner
        .fail_next_sync
        .swap(false, std::sync::atomic::Ordering::SeqCst)
    {
        return Err(LogError::Storage("fdatasync: injected failure".into()));
    }
    sync_to_disk(&inner.data_file)?;
    inner.advance(next_seq);
    Ok(per_request)
}

/// sled's `flush()` only issues `sync_file_range`: the pages reach the disk
/// but not the file metadata or the drive's write cache, so it survives
/// `kill -9` and not a power cut. `fdatasync` on sled's data file (`state/db`,
/// which holds every segment of its log; sled's own flusher fsyncs the same
/// file) adds both. It is cheaper than `syncfs`, which would also wait for
/// every other dirty file on the filesystem; [`SledLog::open`] runs one
/// `syncfs` so the store's directory entries and config are durable too.
///
/// [`SledLog::open`]: super::SledLog::open
pub(super) fn sync_to_disk(data_file: &File) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let result = data_file
        .sync_data()
        .map_err(|e| LogError::Storage(format!("fdatasync: {e}")));
    observe_sync("fdatasync", started);
    result
}

fn observe_sync(call: &str, started: std::time::Instant) {
    crate::metrics::metrics()
        .fsync_seconds
        .with_label_values(&[call])
        .observe(started.elapsed().as_secs_f64());
}

/// Makes everything on the data directory's filesystem durable.
pub(super) fn sync_filesystem(dir: &File) -> Result<(), LogError> {
    let started = std::time::Instant::now();
    let result = rustix::fs::syncfs(dir).map_err(|e| LogError::Storage(format!("syncfs: {e}")));
    observe_sync("syncfs", started);
    result
}
