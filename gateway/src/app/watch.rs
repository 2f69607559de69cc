//! When to reload: the config file or a plugin file changed on disk (seen
//! with `notify`), or the process got SIGHUP (`systemctl reload`).
//!
//! Folders are watched, not files: editors and `cargo build` replace a file
//! by renaming a new one over it, which a watch on the old file never sees.
//! Events for other files in those folders are ignored, and a burst of
//! events (an editor writes, renames and touches) becomes one reload.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::connectors::trust;

/// How long the files must be quiet before a reload starts.
const SETTLE: Duration = Duration::from_millis(300);

/// Reload requests.
pub struct Watcher {
    changes: mpsc::UnboundedReceiver<PathBuf>,
    sender: mpsc::UnboundedSender<PathBuf>,
    watcher: Option<RecommendedWatcher>,
    /// The files whose change means a reload.
    files: BTreeSet<PathBuf>,
    folders: BTreeSet<PathBuf>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Watcher {
    /// Watches `config`'s file and plugins; a failure to watch is logged
    /// (SIGHUP still works) and does not stop the gateway.
    pub fn start(config: &Config) -> Watcher {
        let (sender, changes) = mpsc::unbounded_channel();
        let forward = sender.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            use notify::EventKind::{Any, Create, Modify, Remove};
            // Not `Access`: reading the config for a reload would trigger the next one.
            if let Ok(event) = event
                && matches!(event.kind, Create(_) | Modify(_) | Remove(_) | Any)
            {
                for path in event.paths {
                    let _ = forward.send(path);
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(error) => {
                tracing::warn!(%error, "cannot watch files; reload with SIGHUP instead");
                None
            }
        };
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP"))
            .ok();
        let mut this = Watcher {
            changes,
            sender,
            watcher,
            files: BTreeSet::new(),
            folders: BTreeSet::new(),
            hangup,
        };
        this.watch(config);
        this
    }

    /// Watches exactly the files `config` names (after a reload they change).
    pub fn watch(&mut self, config: &Config) {
        // A plugin's manifest and signature too: a new signature (a new
        // version) is a change.
        let plugin_files = config.connectors.iter().flat_map(|c| {
            [
                c.plugin.clone(),
                trust::manifest_path(&c.plugin),
                trust::signature_path(&c.plugin),
            ]
        });
        let files: BTreeSet<PathBuf> = std::iter::once(config.source.clone())
            .chain(plugin_files)
            .map(|f| absolute(&f))
            .collect();
        let folders: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        if let Some(watcher) = &mut self.watcher {
            for gone in self.folders.difference(&folders) {
                let _ = watcher.unwatch(gone);
            }
            for folder in folders.difference(&self.folders) {
                if let Err(error) = watcher.watch(folder, RecursiveMode::NonRecursive) {
                    tracing::warn!(folder = %folder.display(), %error, "cannot watch for changes");
                }
            }
        }
        self.files = files;
        self.folders = folders;
        // Keeps the channel open even without a watcher.
        let _ = &self.sender;
    }

    /// Waits for the next change that concerns us, then for quiet.
    pub async fn next(&mut self) -> Option<()> {
        loop {
            let hangup = async {
                match &mut self.hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                path = self.changes.recv() => {
                    let path = path?;
                    if !self.files.contains(&absolute(&path)) {
                        continue;
                    }
                    tracing::info!(file = %path.display(), "file changed; reloading");
                }
                _ = hangup => tracing::info!("SIGHUP; reloading"),
            }
            // Let the burst end.
            loop {
                match tokio::time::timeout(SETTLE, self.changes.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(_) => return Some(()),
                }
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
