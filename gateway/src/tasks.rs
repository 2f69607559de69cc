//! The task tree: every task the gateway spawns hangs under one root
//! cancellation token and joins one [`TaskTracker`], so shutdown can wait
//! for all of them (with a deadline) and say which did not finish.
//!
//! [`Tasks`] is the handle passed to whatever spawns: a token and the
//! tracker. [`Tasks::child`] gives a part of the gateway (a sink, a poller,
//! a listener) a token of its own, cancelled with its parent or alone (a
//! reload replacing that part), whose tasks still join the root's tracker.
//! Each task has a name; the names of those still running at the deadline
//! are logged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task's name, as logged when it does not finish in time.
pub type TaskName = Cow<'static, str>;

/// A node of the task tree: its cancellation token and the tree's tracker.
/// Cloning it gives the same node.
#[derive(Debug, Clone)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    running: Arc<Running>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    /// A new root.
    pub fn new() -> Tasks {
        Tasks {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            running: Arc::default(),
        }
    }

    /// Cancelled when this part of the gateway is to stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// A part under this one: its token is a child of this token (cancelled
    /// with it, or on its own); its tasks join the same tracker.
    pub fn child(&self) -> Tasks {
        Tasks {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
            running: self.running.clone(),
        }
    }

    /// Cancels this node and every node under it.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns `task` on the tree. It does not watch the token by itself:
    /// `task` does, or ends on its own.
    pub fn spawn<F>(&self, name: impl Into<TaskName>, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let entry = self.running.enter(name.into());
        self.tracker.spawn(async move {
            let _entry = entry;
            task.await
        })
    }

    /// Runs blocking `work` on tokio's blocking pool, on the tree. It
    /// cannot be cancelled; shutdown waits for it (up to its deadline).
    pub fn spawn_blocking<F, T>(&self, name: impl Into<TaskName>, work: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let entry = self.running.enter(name.into());
        self.tracker.spawn_blocking(move || {
            let _entry = entry;
            work()
        })
    }

    /// Tasks on the tree that have not finished.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// For the root: cancels every token of the tree, then waits up to
    /// `deadline` for every task on it. True if all finished; otherwise the
    /// ones still running are logged (and left to the runtime's end).
    pub async fn shut_down(&self, deadline: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let unfinished = self.running.names();
        tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            count = self.tracker.len(),
            tasks = %unfinished,
            "tasks still running at the shutdown deadline; leaving them"
        );
        false
    }

    /// The names of the tasks still running, with how many of each
    /// (`sink speaker:SB-1, http connection ×3`).
    pub fn running(&self) -> String {
        self.running.names()
    }
}

/// The names of the tasks running on a tree.
#[derive(Debug, Default)]
struct Running {
    next: AtomicU64,
    names: Mutex<BTreeMap<u64, TaskName>>,
}

impl Running {
    fn enter(self: &Arc<Self>, name: TaskName) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, name);
        Entry {
            running: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, TaskName>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn names(&self) -> String {
        let mut counts: BTreeMap<TaskName, usize> = BTreeMap::new();
        for name in self.lock().values() {
            *counts.entry(name.clone()).or_default() += 1;
        }
        let shown: Vec<String> = counts
            .into_iter()
            .map(|(name, n)| match n {
                1 => name.into_owned(),
                n => format!("{name} ×{n}"),
            })
            .collect();
        shown.join(", ")
    }
}

/// A task's place in [`Running`], freed when the task ends however it ends
/// (finished, cancelled, aborted, panicked).
struct Entry {
    running: Arc<Running>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_is_cancelled_with_its_parent_and_alone_leaves_the_parent() {
        let root = Tasks::new();
        let (a, b) = (root.child(), root.child());
        a.cancel();
        assert!(a.is_cancelled() && !b.is_cancelled() && !root.is_cancelled());
        root.cancel();
        assert!(b.is_cancelled());
    }

    /// On tokio's paused clock: the watcher's wait takes no real time, and
    /// the clock stands still while the blocking job runs (tokio does not
    /// auto-advance past a running `spawn_blocking`).
    #[tokio::test(start_paused = true)]
    async fn shut_down_waits_for_every_task_of_the_tree() {
        let root = Tasks::new();
        let child = root.child();
        let token = child.token().clone();
        let ended = Arc::new(AtomicU64::new(0));
        let count = ended.clone();
        child.spawn("watcher", async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            count.fetch_add(1, Ordering::SeqCst);
        });
        let count = ended.clone();
        root.spawn_blocking("blocking", move || {
            std::thread::sleep(Duration::from_millis(20));
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert!(root.shut_down(Duration::from_secs(5)).await);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        assert!(root.is_empty());
        assert_eq!(root.running(), "");
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_gives_up_at_the_deadline_and_names_what_still_runs() {
        let root = Tasks::new();
        for _ in 0..2 {
            root.spawn("stuck", std::future::pending::<()>());
        }
        root.spawn("done", async {});
        let aborted = root.spawn("aborted", std::future::pending::<()>());
        aborted.abort();
        let _ = aborted.await;
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        assert!(!root.shut_down(Duration::from_millis(50)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(50), "not sooner");
        assert_eq!(root.running(), "stuck ×2");
    }
}
