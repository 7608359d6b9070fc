//! Thread-per-core serving: worker threads that each run a single-threaded tokio runtime.
//!
//! A server that runs on [`Workers`] ([`crate::Server::run_on`]) accepts on its own runtime and
//! hands each accepted connection to one worker, in turn. From then on everything the
//! connection does runs on that worker's thread: its TLS, its HTTP/2 streams, the tasks its
//! handler spawns and the upstream connections those open. No task migrates between threads,
//! so a request does not wake another thread on its way through (a work-stealing runtime wakes
//! an idle thread for nearly every spawned task, and a pooled upstream connection is often
//! driven by another thread than the request using it).
//!
//! [`current`] tells code which worker it runs on, so that per-worker state (a connection
//! pool per worker, say) is picked without touching another thread's. Envoy's workers share
//! the model and its limit: one HTTP/2 connection, with all its streams, is served by one
//! worker.

use std::cell::Cell;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// The index of the worker whose thread this is.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread belongs to; `None` off the workers.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// Worker threads, each with its own single-threaded runtime. Dropping it stops them: tasks
/// still running on them are dropped at their next await.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` workers whose threads are named `<name>-<index>` (at most 15 bytes are
    /// kept by the kernel).
    pub fn start(count: NonZeroUsize, name: &str) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        // Stops the workers already started when a later one fails.
        let guard = stop.clone().drop_guard();
        let mut handles = Vec::with_capacity(count.get());
        for index in 0..count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(index)));
                    runtime.block_on(stop.cancelled());
                    // Without waiting for blocking tasks (a DNS lookup, say): the process
                    // is stopping them anyway.
                    runtime.shutdown_background();
                })?;
        }
        guard.disarm();
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are no workers (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `future` on the next worker, in turn.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(future)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn two() -> Workers {
        Workers::start(NonZeroUsize::new(2).unwrap(), "test-worker").unwrap()
    }

    #[tokio::test]
    async fn tasks_go_to_the_workers_in_turn_and_stay_on_their_thread() {
        let workers = two();
        assert_eq!(workers.len(), 2);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let task = workers.spawn(async {
                let before = (current(), std::thread::current().id());
                // A task that yields resumes on the thread it started on.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let name = std::thread::current().name().map(str::to_owned);
                (before, (current(), std::thread::current().id()), name)
            });
            seen.push(task.await.unwrap());
        }
        let indexes: Vec<_> = seen.iter().map(|(b, _, _)| b.0).collect();
        assert_eq!(indexes, [Some(0), Some(1), Some(0), Some(1)]);
        for (before, after, name) in &seen {
            assert_eq!(before, after);
            let index = before.0.unwrap();
            assert_eq!(
                name.as_deref(),
                Some(format!("test-worker-{index}").as_str())
            );
        }
        assert_ne!(seen[0].0.1, seen[1].0.1, "two workers, two threads");
        assert_eq!(seen[0].0.1, seen[2].0.1);
        assert_eq!(current(), None, "the test's own thread is not a worker");
    }

    #[tokio::test]
    async fn spawned_tasks_run_on_the_worker_that_spawned_them() {
        let workers = two();
        let (inner, outer) = workers
            .spawn(async {
                let inner = tokio::spawn(async { (current(), std::thread::current().id()) })
                    .await
                    .unwrap();
                (inner, (current(), std::thread::current().id()))
            })
            .await
            .unwrap();
        assert_eq!(inner, outer);
        assert_eq!(inner.0, Some(0));
    }

    #[tokio::test]
    async fn dropping_the_workers_stops_their_tasks() {
        let workers = two();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = workers.spawn(async move {
            // Holds the sender until the task is dropped.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The sender is dropped with the task, so the receiver sees the channel closed.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        assert!(matches!(closed, Ok(Err(_))), "task dropped: {closed:?}");
        assert!(task.await.unwrap_err().is_cancelled());
    }
}
