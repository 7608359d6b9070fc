//! Graceful shutdown of a listener's connections.
//!
//! Every listener (outbound 15001, SOCKS5 15080, inbound plaintext 15006) spawns one task per
//! accepted connection into its [`ConnectionTasks`]. When the listener is told to stop it stops
//! accepting and calls [`ConnectionTasks::drain`]: open connections may finish on their own
//! until the drain deadline, then the ones still open are closed (their tasks are cancelled,
//! which drops both sockets). The inbound HBONE listener drains the same way inside
//! [`hbone::Server`], and additionally sends its peers `GOAWAY`.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection tasks of one listener.
#[derive(Debug, Default)]
pub struct ConnectionTasks {
    tracker: TaskTracker,
    force: CancellationToken,
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
        let force = self.force.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = connection => {}
                () = force.cancelled() => {}
            }
        });
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
        self.tracker
            .spawn(until_forced(self.force.clone(), connection));
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
            self.force.cancel();
            self.tracker.wait().await;
        }
    }
}

/// The task of [`ConnectionTasks::spawn_with`]: the connection made by `connection`, until it
/// finishes or `force` is cancelled.
pub(crate) async fn until_forced<M, F>(force: CancellationToken, connection: M)
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::select! {
        () = connection() => {}
        () = force.cancelled() => {}
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
}
