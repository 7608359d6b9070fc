//! Readiness: the [`Ready`] gate and the server answering `/healthz/ready` (port 15021).
//!
//! Start-up work that must finish before the proxy takes traffic (binding listeners, loading
//! the mesh state, fetching the first certificates) registers a [`ReadyTask`] and completes it
//! with [`ReadyTask::done`] or by dropping it. The proxy is ready once no task is pending;
//! a task registered later makes it unready again until that task completes.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Request, StatusCode};
use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;

use super::serve::{Handler, HttpListener, HttpOptions, HttpResponse, is_get, method_not_allowed};
use super::serve::{not_found, text};

/// The readiness path.
pub const READY_PATH: &str = "/healthz/ready";

/// The readiness gate: ready when every registered [`ReadyTask`] has completed.
///
/// Cloning is cheap; all clones share the same set of tasks.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    inner: Arc<Mutex<Pending>>,
    /// Woken whenever a task completes.
    completed: Arc<tokio::sync::Notify>,
}

/// The tasks still pending, by registration number.
#[derive(Debug, Default)]
struct Pending {
    /// Pending task names by id (ids are unique, names need not be).
    tasks: BTreeMap<u64, String>,
    /// The id of the next registered task.
    next_id: u64,
}

impl Ready {
    /// A gate with no pending task (ready).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a pending task named `name`; the gate is not ready until it completes.
    pub fn register(&self, name: impl Into<String>) -> ReadyTask {
        let mut pending = self.lock();
        let id = pending.next_id;
        pending.next_id += 1;
        pending.tasks.insert(id, name.into());
        ReadyTask {
            ready: self.clone(),
            id,
        }
    }

    /// Whether no task is pending.
    pub fn is_ready(&self) -> bool {
        self.lock().tasks.is_empty()
    }

    /// Waits until no task is pending.
    pub async fn wait(&self) {
        loop {
            let completed = self.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            if self.is_ready() {
                return;
            }
            completed.await;
        }
    }

    /// The names of the pending tasks, sorted.
    pub fn pending(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().tasks.values().cloned().collect();
        names.sort();
        names
    }
}

/// A start-up task the [`Ready`] gate waits for; completed by [`ReadyTask::done`] or on drop.
#[derive(Debug)]
#[must_use = "the task completes when dropped"]
pub struct ReadyTask {
    ready: Ready,
    id: u64,
}

impl ReadyTask {
    /// Marks the task complete (the same as dropping it, but explicit at the call site).
    pub fn done(self) {}
}

impl Drop for ReadyTask {
    fn drop(&mut self) {
        self.ready.lock().tasks.remove(&self.id);
        self.ready.completed.notify_waiters();
    }
}

/// Answers `/healthz/ready`.
struct ReadinessHandler {
    ready: Ready,
}

impl Handler for ReadinessHandler {
    fn handle(&self, request: Request<Bytes>, _peer: SocketAddr) -> HttpResponse {
        if request.uri().path() != READY_PATH {
            return not_found(request.uri().path());
        }
        if !is_get(request.method()) {
            return method_not_allowed("GET");
        }
        let pending = self.ready.pending();
        if pending.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready, pending: {}\n", pending.join(", ")),
            )
        }
    }
}

/// The readiness server (`/healthz/ready`, upstream port 15021 on all interfaces): 200 `ready`
/// when the [`Ready`] gate is open, 503 naming the pending tasks otherwise.
#[derive(Debug)]
pub struct ReadinessServer {
    listener: HttpListener,
    ready: Ready,
}

impl ReadinessServer {
    /// Binds `addr`; readiness is read from `ready` at every request.
    pub async fn new(addr: SocketAddr, ready: Ready) -> io::Result<Self> {
        Ok(Self {
            listener: HttpListener::bind(addr).await?,
            ready,
        })
    }

    /// Replaces the default [`HttpOptions`].
    pub fn with_options(mut self, options: HttpOptions) -> Self {
        self.listener.options = options;
        self
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let handler = Arc::new(ReadinessHandler { ready: self.ready });
        self.listener.serve("readiness", handler, shutdown).await;
    }
}
