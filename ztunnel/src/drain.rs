//! Graceful shutdown of a listener's connections.
//!
//! Every listener (outbound 15001, SOCKS5 15080, inbound plaintext 15006) spawns one task per
//! accepted connection into its [`ConnectionTasks`]. When the listener is told to stop it stops
//! accepting and calls [`ConnectionTasks::drain`]: open connections may finish on their own
//! until the drain deadline, then the ones still open are closed (their tasks are aborted,
//! which drops both sockets). The inbound HBONE listener drains the same way inside
//! [`hbone::Server`], and additionally sends its peers `GOAWAY`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::task::TaskTracker;

/// The connection tasks of one listener.
#[derive(Debug, Default)]
pub struct ConnectionTasks {
    tracker: TaskTracker,
    open: Arc<Mutex<OpenTasks>>,
}

/// The abort handles of the running connection tasks, to close those still open at the drain
/// deadline. A connection pays for its entry here (some 20 bytes) rather than for a future
/// waiting on a cancellation token in its task's state (some 80 bytes, for the whole life of
/// the connection).
#[derive(Debug, Default)]
struct OpenTasks {
    handles: HashMap<tokio::task::Id, AbortHandle>,
    /// Tasks that ended before their handle was recorded; the handle is then not recorded.
    ended_early: HashSet<tokio::task::Id>,
    /// Set at the drain deadline, when every recorded task is aborted.
    aborted: bool,
}

impl OpenTasks {
    fn lock(open: &Mutex<OpenTasks>) -> std::sync::MutexGuard<'_, OpenTasks> {
        open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held by a connection's task: forgets the task's abort handle when the task ends (its
/// future is dropped, whether finished or aborted).
struct Forget(Arc<Mutex<OpenTasks>>);

impl Drop for Forget {
    fn drop(&mut self) {
        // The runtime sets the task id while it drops a task's future, too.
        let Some(id) = tokio::task::try_id() else {
            return;
        };
        let mut open = OpenTasks::lock(&self.0);
        if !open.aborted && open.handles.remove(&id).is_none() {
            open.ended_early.insert(id);
        }
    }
}

impl ConnectionTasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `connection` until it finishes or the drain deadline passes.
    pub fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_with(move || connection);
    }

    /// Like [`ConnectionTasks::spawn`], but the connection's future is made by `connection`
    /// inside the task. Use it for long-lived connections: a future handed to a task is kept
    /// twice in the task's state (as the captured value and as the value being polled), while
    /// here only the (small) closure is captured.
    pub fn spawn_with<M, F>(&self, connection: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(self.task(connection));
        self.remember(&handle);
    }

    /// The future of a connection's task, as [`ConnectionTasks::spawn_with`] spawns it.
    pub(crate) fn task<M, F>(&self, connection: M) -> impl Future<Output = ()> + Send + 'static
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let forget = Forget(self.open.clone());
        self.tracker.track_future(async move {
            connection().await;
            drop(forget);
        })
    }

    /// Records the abort handle of a task just spawned, unless the task has already ended.
    fn remember(&self, handle: &JoinHandle<()>) {
        let id = handle.id();
        let mut open = OpenTasks::lock(&self.open);
        if !open.ended_early.remove(&id) && !open.aborted {
            open.handles.insert(id, handle.abort_handle());
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits for the open connections to finish, closing those still open after `deadline`.
    pub async fn drain(self, deadline: Duration) {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tracker.len(),
                "drain deadline reached, closing the remaining connections"
            );
            let handles: Vec<AbortHandle> = {
                let mut open = OpenTasks::lock(&self.open);
                open.aborted = true;
                open.ended_early.clear();
                open.handles.drain().map(|(_, h)| h).collect()
            };
            for handle in handles {
                handle.abort();
            }
            self.tracker.wait().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finished_connections_end_the_drain_before_the_deadline() {
        let tasks = ConnectionTasks::new();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            d.store(true, Ordering::SeqCst);
        });
        let start = tokio::time::Instant::now();
        tasks.drain(Duration::from_secs(10)).await;
        assert!(done.load(Ordering::SeqCst), "the connection ran to its end");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_still_open_at_the_deadline_are_cancelled() {
        let tasks = ConnectionTasks::new();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            f.store(true, Ordering::SeqCst);
        });
        assert_eq!(tasks.len(), 1);
        let start = tokio::time::Instant::now();
        tasks.drain(Duration::from_secs(2)).await;
        assert!(!finished.load(Ordering::SeqCst), "cancelled, not finished");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn ended_connections_leave_no_abort_handle_behind() {
        let tasks = ConnectionTasks::new();
        // Ends before `spawn_with` records its handle on a multi-thread runtime, or right
        // after on this one: either way nothing stays recorded.
        for _ in 0..3 {
            tasks.spawn(async {});
        }
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(tasks.is_empty());
        let open = OpenTasks::lock(&tasks.open);
        assert!(open.handles.is_empty(), "{:?}", open.handles);
        assert!(open.ended_early.is_empty(), "{:?}", open.ended_early);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_ending_while_being_spawned_are_not_recorded() {
        let tasks = ConnectionTasks::new();
        for _ in 0..2_000 {
            tasks.spawn(async {});
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while !tasks.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let open = OpenTasks::lock(&tasks.open);
        assert!(open.handles.is_empty(), "{} recorded", open.handles.len());
        assert!(
            open.ended_early.is_empty(),
            "{} left",
            open.ended_early.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_drops_each_open_connection() {
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let tasks = ConnectionTasks::new();
        let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        for flag in &flags {
            let held = Dropped(flag.clone());
            tasks.spawn_with(move || async move {
                let _held = held;
                std::future::pending::<()>().await;
            });
        }
        tokio::task::yield_now().await;
        tasks.drain(Duration::from_secs(1)).await;
        assert!(flags.iter().all(|f| f.load(Ordering::SeqCst)));
    }
}
