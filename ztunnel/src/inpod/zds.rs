//! The ZDS client: ztunnel's side of istio-cni's in-pod redirection channel.
//!
//! # Where it sits
//!
//! In a cluster, istio-cni's node agent captures each enrolled pod's traffic inside the pod's
//! network namespace (the rules of [`super::rules`]), then hands the namespace to ztunnel over
//! this channel: a Unix `SOCK_SEQPACKET` socket at `INPOD_UDS` (default
//! [`DEFAULT_SOCKET_PATH`]) on which ztunnel is the client. For each pod ztunnel then opens its
//! listeners (15001, 15006, 15008, 15053) inside that namespace. This module speaks the
//! protocol and nothing else: what a workload means is up to a [`WorkloadHandler`], which the
//! node proxy implements by starting and stopping per-pod proxies.
//!
//! # Protocol (package `istio.workload.zds`)
//!
//! 1. ztunnel connects and sends `ZdsHello { version: V1 }`.
//! 2. The agent replays every pod it knows as `AddWorkload { uid, workload_info }`, each
//!    carrying exactly one `SCM_RIGHTS` descriptor, the pod's network namespace; or as
//!    `KeepWorkload { uid }` for a pod whose namespace it could not send (only before step 3).
//! 3. `SnapshotSent {}`: the replay is complete. The handler learns which uids were replayed
//!    ([`WorkloadHandler::snapshot_done`]) and drops the others; readiness turns true the
//!    first time this succeeds.
//! 4. Afterwards only `AddWorkload` and `DelWorkload { uid }`.
//!
//! Every request gets one `WorkloadResponse { ack: Ack { error } }`: an empty `error` accepts
//! it, a non-empty one rejects it and says why. Rejected, never fatal: a message that does not
//! decode, is larger than [`MAX_MESSAGE_SIZE`], or carries the wrong number of descriptors (an
//! `AddWorkload` with none or several, any other message with one) is answered with an error
//! and every descriptor it carried is closed; the handler does not see it.
//!
//! # Connection
//!
//! When the socket is absent or refuses, or the agent closes the connection, the client waits
//! [`INITIAL_BACKOFF`], doubling up to [`MAX_BACKOFF`] (reset after a connection that delivered
//! a request), and reconnects with a new hello; the agent then replays its state. Running
//! proxies are left alone meanwhile. An acknowledgement the agent does not take within
//! [`SEND_TIMEOUT`] drops the connection.

use std::collections::HashSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Env, WorkloadInfo};

pub(crate) mod packet;

#[cfg(test)]
mod tests;

use packet::{Packet, SeqPacket};

/// `INPOD_UDS` when unset, as upstream.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/ztunnel/ztunnel.sock";
/// Largest request accepted. A request is a uid and three Kubernetes names (at most ~700
/// bytes); anything longer is rejected, not read in pieces.
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// Longest error text sent back in an `Ack` (the handler's message is cut at a character
/// boundary).
pub const MAX_ACK_ERROR: usize = 1024;
/// How long the agent may take to accept one of our messages (hello or ack).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay, and the delay after a connection that delivered a request.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The delay before the next reconnect after waiting `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Settings of the ZDS client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZdsConfig {
    /// The node agent's socket (`INPOD_UDS`, default [`DEFAULT_SOCKET_PATH`]).
    pub socket_path: PathBuf,
}

impl Default for ZdsConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
        }
    }
}

impl ZdsConfig {
    /// Reads `INPOD_UDS` (empty means unset).
    pub fn from_env(env: &impl Env) -> Self {
        let socket_path = env
            .var("INPOD_UDS")
            .filter(|v| !v.trim().is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from);
        Self { socket_path }
    }
}

/// What the node proxy does with the workloads the agent announces. Each call's error text
/// is sent back to the agent as the request's rejection.
///
/// Calls come one at a time, in the agent's order (the agent waits for each answer).
pub trait WorkloadHandler: Send + Sync {
    /// Start (or keep) proxying for pod `uid`, whose network namespace is `netns`. A uid seen
    /// before with a different namespace means the pod's sandbox was recreated.
    fn add(
        &self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Keep proxying for `uid`, whose namespace the agent could not send (before the
    /// snapshot ends only).
    fn keep(&self, uid: String) -> impl Future<Output = Result<(), String>> + Send;

    /// Stop proxying for `uid` now (the pod is gone).
    fn del(&self, uid: String) -> impl Future<Output = Result<(), String>> + Send;

    /// The agent's replay is complete: `present` holds the uids added or kept since this
    /// connection started (minus those deleted); the others should be drained.
    fn snapshot_done(
        &self,
        present: HashSet<String>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

impl<T: WorkloadHandler> WorkloadHandler for Arc<T> {
    fn add(
        &self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> impl Future<Output = Result<(), String>> + Send {
        (**self).add(uid, info, netns)
    }

    fn keep(&self, uid: String) -> impl Future<Output = Result<(), String>> + Send {
        (**self).keep(uid)
    }

    fn del(&self, uid: String) -> impl Future<Output = Result<(), String>> + Send {
        (**self).del(uid)
    }

    fn snapshot_done(
        &self,
        present: HashSet<String>,
    ) -> impl Future<Output = Result<(), String>> + Send {
        (**self).snapshot_done(present)
    }
}

/// A request from the agent, checked.
#[derive(Debug)]
pub enum Request {
    /// `AddWorkload`, with its namespace.
    Add {
        /// Pod uid.
        uid: String,
        /// Pod name, namespace and service account, when sent.
        info: Option<WorkloadInfo>,
        /// The pod's network namespace.
        netns: OwnedFd,
    },
    /// `KeepWorkload`.
    Keep {
        /// Pod uid.
        uid: String,
    },
    /// `DelWorkload`.
    Del {
        /// Pod uid.
        uid: String,
    },
    /// `SnapshotSent`.
    SnapshotSent,
}

/// Why a request was rejected; the text is the `Ack` error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The message was longer than [`MAX_MESSAGE_SIZE`].
    #[error("message larger than {MAX_MESSAGE_SIZE} bytes")]
    TooLarge,
    /// The message is not a `WorkloadRequest`.
    #[error("malformed WorkloadRequest: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A `WorkloadRequest` without a payload (or one this version does not know).
    #[error("WorkloadRequest without a known payload")]
    NoPayload,
    /// An `AddWorkload` without exactly one descriptor.
    #[error(
        "AddWorkload must carry exactly one file descriptor (the pod's network namespace), got {0}"
    )]
    FdCount(FdCount),
    /// A message other than `AddWorkload` carried descriptors.
    #[error("{kind} must not carry file descriptors, got {count}")]
    UnexpectedFds {
        /// The message.
        kind: &'static str,
        /// How many.
        count: FdCount,
    },
    /// A message without its uid.
    #[error("{0} without a uid")]
    MissingUid(&'static str),
    /// `KeepWorkload` after `SnapshotSent`.
    #[error("KeepWorkload is only valid before SnapshotSent")]
    KeepAfterSnapshot,
    /// A second `SnapshotSent` on one connection.
    #[error("SnapshotSent was already received on this connection")]
    DuplicateSnapshot,
    /// The handler refused the request.
    #[error("{0}")]
    Handler(String),
}

/// How many descriptors came with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdCount {
    /// This many.
    Exactly(usize),
    /// More than the receive buffer holds (the kernel closed the rest).
    MoreThan(usize),
}

impl std::fmt::Display for FdCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(n) => write!(f, "{n}"),
            Self::MoreThan(n) => write!(f, "more than {n}"),
        }
    }
}

fn fd_count(fds: &[OwnedFd], truncated: bool) -> FdCount {
    if truncated {
        FdCount::MoreThan(fds.len())
    } else {
        FdCount::Exactly(fds.len())
    }
}

fn uid(kind: &'static str, uid: String) -> Result<String, RequestError> {
    if uid.is_empty() {
        Err(RequestError::MissingUid(kind))
    } else {
        Ok(uid)
    }
}

/// Checks one received message. On error every descriptor in `fds` is closed (dropped).
pub fn decode_request(
    bytes: &[u8],
    mut fds: Vec<OwnedFd>,
    truncated: bool,
    fds_truncated: bool,
) -> Result<Request, RequestError> {
    use zds::workload_request::Payload;

    if truncated {
        return Err(RequestError::TooLarge);
    }
    let payload = zds::WorkloadRequest::decode(bytes)?
        .payload
        .ok_or(RequestError::NoPayload)?;
    let no_fds = |kind: &'static str, fds: &[OwnedFd]| {
        if fds.is_empty() && !fds_truncated {
            Ok(())
        } else {
            Err(RequestError::UnexpectedFds {
                kind,
                count: fd_count(fds, fds_truncated),
            })
        }
    };
    match payload {
        Payload::Add(add) => {
            if fds.len() != 1 || fds_truncated {
                return Err(RequestError::FdCount(fd_count(&fds, fds_truncated)));
            }
            let uid = uid("AddWorkload", add.uid)?;
            let info = add.workload_info.map(|info| WorkloadInfo {
                namespace: info.namespace,
                name: info.name,
                service_account: info.service_account,
            });
            let netns = fds
                .pop()
                .ok_or(RequestError::FdCount(FdCount::Exactly(0)))?;
            Ok(Request::Add { uid, info, netns })
        }
        Payload::Keep(keep) => {
            no_fds("KeepWorkload", &fds)?;
            Ok(Request::Keep {
                uid: uid("KeepWorkload", keep.uid)?,
            })
        }
        Payload::Del(del) => {
            no_fds("DelWorkload", &fds)?;
            Ok(Request::Del {
                uid: uid("DelWorkload", del.uid)?,
            })
        }
        Payload::SnapshotSent(_) => {
            no_fds("SnapshotSent", &fds)?;
            Ok(Request::SnapshotSent)
        }
    }
}

/// The `WorkloadResponse` for a result: an empty error, or the error's text (cut to
/// [`MAX_ACK_ERROR`] bytes).
pub fn encode_ack(result: &Result<(), RequestError>) -> Vec<u8> {
    let error = match result {
        Ok(()) => String::new(),
        Err(e) => {
            let mut text = e.to_string();
            if text.is_empty() {
                text.push_str("rejected");
            }
            if text.len() > MAX_ACK_ERROR {
                let mut cut = MAX_ACK_ERROR;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            text
        }
    };
    zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack { error })),
    }
    .encode_to_vec()
}

/// Why a connection to the agent ended (the client then reconnects).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    /// The socket could not be reached.
    #[error("failed to connect to the Istio CNI node agent at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A message could not be sent.
    #[error("failed to send to the node agent: {0}")]
    Send(#[source] std::io::Error),
    /// The agent did not take a message within [`SEND_TIMEOUT`].
    #[error("the node agent did not take a message within {0:?}")]
    SendTimeout(Duration),
    /// A message could not be received.
    #[error("failed to receive from the node agent: {0}")]
    Receive(#[source] std::io::Error),
    /// The agent closed the connection.
    #[error("the node agent closed the connection")]
    Closed,
}

/// Whether the first snapshot has been applied; cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    /// Whether a snapshot has been applied (it stays true across reconnects).
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until ready; `false` if the client stopped before that.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|ready| *ready).await.is_ok()
    }
}

/// Counters of the ZDS client (for metrics and `config_dump`).
#[derive(Debug, Default)]
pub struct ZdsStats {
    /// Connections established (hello sent).
    pub connects: AtomicU64,
    /// Connection attempts that failed, and connections that ended.
    pub disconnects: AtomicU64,
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests rejected (acknowledged with an error).
    pub rejected: AtomicU64,
}

/// The ZDS client; see the module documentation.
#[derive(Debug)]
pub struct ZdsClient<H> {
    config: ZdsConfig,
    handler: H,
    ready: watch::Sender<bool>,
    stats: Arc<ZdsStats>,
}

/// What one connection has seen.
#[derive(Debug, Default)]
struct Session {
    /// Uids added or kept before `SnapshotSent`.
    replayed: HashSet<String>,
    snapshot_sent: bool,
}

impl<H: WorkloadHandler> ZdsClient<H> {
    /// A client driving `handler`; nothing happens until [`ZdsClient::run`].
    pub fn new(config: ZdsConfig, handler: H) -> Self {
        Self {
            config,
            handler,
            ready: watch::channel(false).0,
            stats: Arc::default(),
        }
    }

    /// The readiness signal ("first snapshot applied").
    pub fn readiness(&self) -> Readiness {
        Readiness(self.ready.subscribe())
    }

    /// The client's counters.
    pub fn stats(&self) -> Arc<ZdsStats> {
        self.stats.clone()
    }

    /// Talks to the agent until `shutdown` is cancelled, reconnecting forever.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let mut received = false;
            let error = tokio::select! {
                _ = shutdown.cancelled() => return,
                error = self.connection(&mut received) => error,
            };
            self.stats.disconnects.fetch_add(1, Ordering::Relaxed);
            if received {
                backoff = INITIAL_BACKOFF;
            }
            match &error {
                ZdsError::Connect { .. } => tracing::warn!(
                    %error,
                    retry_in = ?backoff,
                    "failed to connect to the Istio CNI node agent; is it running?"
                ),
                _ => tracing::warn!(%error, retry_in = ?backoff, "ZDS connection ended"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    /// One connection, from connecting to its end; `received` turns true with the first
    /// request.
    async fn connection(&self, received: &mut bool) -> ZdsError {
        let path = &self.config.socket_path;
        let socket = match SeqPacket::connect(path) {
            Ok(socket) => socket,
            Err(source) => {
                return ZdsError::Connect {
                    path: path.clone(),
                    source,
                };
            }
        };
        let hello = zds::ZdsHello {
            version: zds::Version::V1 as i32,
        }
        .encode_to_vec();
        if let Err(error) = send(&socket, &hello).await {
            return error;
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %path.display(), "connected to the Istio CNI node agent");

        let mut session = Session::default();
        let mut buf = vec![0; MAX_MESSAGE_SIZE];
        loop {
            let packet = match socket.recv(&mut buf).await {
                Ok(packet) if packet.is_eof() => return ZdsError::Closed,
                Ok(packet) => packet,
                Err(e) => return ZdsError::Receive(e),
            };
            *received = true;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let Packet {
                len,
                fds,
                truncated,
                fds_truncated,
            } = packet;
            let result = match decode_request(&buf[..len], fds, truncated, fds_truncated) {
                Ok(request) => self.handle(&mut session, request).await,
                Err(error) => Err(error),
            };
            if let Err(error) = &result {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "rejected a request of the node agent");
            }
            if let Err(error) = send(&socket, &encode_ack(&result)).await {
                return error;
            }
        }
    }

    async fn handle(&self, session: &mut Session, request: Request) -> Result<(), RequestError> {
        match request {
            Request::Add { uid, info, netns } => {
                tracing::debug!(%uid, ?info, "AddWorkload");
                if !session.snapshot_sent {
                    // Part of the replay whether or not it starts: the pod exists.
                    session.replayed.insert(uid.clone());
                }
                self.handler.add(uid, info, netns).await
            }
            Request::Keep { uid } => {
                tracing::debug!(%uid, "KeepWorkload");
                if session.snapshot_sent {
                    return Err(RequestError::KeepAfterSnapshot);
                }
                session.replayed.insert(uid.clone());
                self.handler.keep(uid).await
            }
            Request::Del { uid } => {
                tracing::debug!(%uid, "DelWorkload");
                session.replayed.remove(&uid);
                self.handler.del(uid).await
            }
            Request::SnapshotSent => {
                if session.snapshot_sent {
                    return Err(RequestError::DuplicateSnapshot);
                }
                session.snapshot_sent = true;
                let present = std::mem::take(&mut session.replayed);
                tracing::info!(workloads = present.len(), "snapshot received");
                self.handler
                    .snapshot_done(present)
                    .await
                    .map_err(RequestError::Handler)?;
                self.ready.send_replace(true);
                return Ok(());
            }
        }
        .map_err(RequestError::Handler)
    }
}

async fn send(socket: &SeqPacket, bytes: &[u8]) -> Result<(), ZdsError> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(bytes, &[])).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ZdsError::Send(e)),
        Err(_) => Err(ZdsError::SendTimeout(SEND_TIMEOUT)),
    }
}
