//! Inbound: connections arriving for a workload this proxy serves.
//!
//! Each local workload has its own listeners, bound on its own address (as upstream ztunnel
//! binds them inside each pod's network namespace):
//!
//! - **HBONE (15008)**, [`InboundHandler`], presenting the workload's certificate. For every
//!   `CONNECT`: [`authorize`] (pure) — the target must be one of the workload's addresses (else
//!   400) and not one of the proxy's own ports; the workload's L4 policies are evaluated against
//!   the peer's verified identity, failing closed when a policy the workload names is missing
//!   (deny → 401); then the handler connects to the application at the target (503 if that
//!   fails), answers 200, and copies bytes both ways until both sides are done.
//! - **Plaintext (15006)**, [`PlaintextListener`]: captured non-HBONE traffic. The destination
//!   is the connection's original destination; policy is evaluated **without a peer identity**
//!   (so Istio's strict-mTLS `notPrincipals: [Presence]` DENY refuses it); a refused connection
//!   is closed without touching the application.
//!
//! Every accepted connection is registered with the node's [`ConnectionTracker`], whose policy
//! watcher closes it as soon as a new mesh state no longer allows it (late rejection), and is
//! reported in the node's [`Metrics`] (`reporter="destination"`) and in one [`AccessLog`]
//! record when it ends.
//!
//! # Layout
//! - this file: [`authorize`], [`InboundContext`], the HBONE [`InboundHandler`], telemetry.
//! - `plaintext`: [`PlaintextListener`] and [`DestinationMode`].

mod plaintext;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::copy::ByteCounters;
use http::StatusCode;
use tokio::net::TcpStream;

pub use plaintext::{DestinationMode, PlaintextListener};

use crate::config::ports;
use crate::connections::{ConnectionGuard, ConnectionTracker, Revocation, policy_decision};
use crate::rbac::{self, Connection, Decision};
use crate::state::{MeshState, StateHandle, Workload};
use crate::telemetry::{
    AccessLog, ConnectionLabels, Metrics, Reporter, ResponseFlags, SecurityPolicy,
};

/// The proxy's own ports: a connection whose final destination is one of them would loop
/// through the proxy, so it is refused (upstream `illegal_ports`).
pub const ILLEGAL_PORTS: [u16; 4] = [
    ports::OUTBOUND,
    ports::INBOUND_PLAINTEXT,
    ports::INBOUND_HBONE,
    ports::SOCKS5,
];

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The `CONNECT` authority is not an `ip:port`.
    #[error("tunnel target {0:?} is not an ip:port")]
    BadAuthority(String),
    /// The workload this listener serves is no longer in the mesh state.
    #[error("workload {0} is not in the mesh state")]
    UnknownWorkload(String),
    /// The target address does not belong to the workload this listener serves.
    #[error("tunnel target {target} is not an address of workload {workload}")]
    NotLocal {
        /// The requested target.
        target: SocketAddr,
        /// The workload served here.
        workload: String,
    },
    /// The destination is one of the proxy's own listeners (loop protection).
    #[error("destination {0} is a port of the proxy itself")]
    SelfCall(SocketAddr),
    /// L4 policy denied the connection.
    #[error("{0}")]
    Denied(rbac::Reason),
    /// The application did not accept the connection.
    #[error("connect to application at {target} failed: {source}")]
    Connect {
        /// The application address.
        target: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

impl InboundError {
    /// The HTTP status answered to the `CONNECT`.
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::BadAuthority(_)
            | InboundError::NotLocal { .. }
            | InboundError::SelfCall(_) => StatusCode::BAD_REQUEST,
            InboundError::UnknownWorkload(_) | InboundError::Connect { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InboundError::Denied(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// Istio's response flag for telemetry.
    pub fn response_flag(&self) -> &'static str {
        match self {
            InboundError::Denied(_) => "DENY",
            InboundError::Connect { .. } | InboundError::UnknownWorkload(_) => "CONNECT",
            InboundError::BadAuthority(_)
            | InboundError::NotLocal { .. }
            | InboundError::SelfCall(_) => "-",
        }
    }
}

impl From<Revocation> for InboundError {
    fn from(r: Revocation) -> Self {
        match r {
            Revocation::Denied(reason) => InboundError::Denied(reason),
            Revocation::WorkloadRemoved(uid) => InboundError::UnknownWorkload(uid),
        }
    }
}

/// The accepted connection: where to connect and what policy said.
#[derive(Debug)]
pub struct Authorized {
    /// The destination workload.
    pub workload: Arc<Workload>,
    /// The application address to connect to.
    pub target: SocketAddr,
    /// The policy decision (allowed), with audit and dry-run outcomes.
    pub decision: Decision,
    /// What the decision was made on (kept to re-evaluate the live connection).
    pub connection: Connection,
}

/// Decides whether a tunnel to `target` from `peer` may reach workload `uid`.
pub fn authorize(
    state: &MeshState,
    uid: &str,
    target: SocketAddr,
    peer: &hbone::Identity,
    peer_ip: IpAddr,
) -> Result<Authorized, InboundError> {
    authorize_connection(state, uid, target, Some(peer), peer_ip)
}

/// Decides whether a connection to `target` from `src_ip` (with the peer identity proven by
/// mTLS, `None` for plaintext) may reach workload `uid`.
pub fn authorize_connection(
    state: &MeshState,
    uid: &str,
    target: SocketAddr,
    src_identity: Option<&hbone::Identity>,
    src_ip: IpAddr,
) -> Result<Authorized, InboundError> {
    let workload = state
        .workload_by_uid(uid)
        .ok_or_else(|| InboundError::UnknownWorkload(uid.to_string()))?;
    if !workload.workload_ips.contains(&target.ip()) {
        return Err(InboundError::NotLocal {
            target,
            workload: uid.to_string(),
        });
    }
    if ILLEGAL_PORTS.contains(&target.port()) {
        return Err(InboundError::SelfCall(target));
    }
    let connection = Connection {
        src_identity: src_identity.cloned(),
        src_ip,
        dst: target,
        dst_network: workload.network.clone(),
    };
    let decision = policy_decision(state, workload, &connection);
    if !decision.allowed {
        return Err(InboundError::Denied(decision.reason));
    }
    Ok(Authorized {
        workload: workload.clone(),
        target,
        decision,
        connection,
    })
}

/// What the inbound listeners of one node share.
#[derive(Clone, Debug)]
pub struct InboundContext {
    /// The mesh state.
    pub state: StateHandle,
    /// Live connections, re-evaluated when the policies change.
    pub tracker: ConnectionTracker,
    /// Where connections are counted (`reporter="destination"`).
    pub metrics: Arc<Metrics>,
    /// Deadline for connecting to the application.
    pub connect_timeout: Duration,
    /// Where connections to the application are dialled from (the pod's network namespace
    /// for an in-pod proxy).
    pub sockets: Arc<dyn hbone::SocketFactory>,
}

impl InboundContext {
    /// A context with its own (unwatched) tracker and metrics.
    pub fn new(state: StateHandle, connect_timeout: Duration) -> Self {
        Self {
            state,
            tracker: ConnectionTracker::new(),
            metrics: Arc::new(Metrics::new()),
            connect_timeout,
            sockets: hbone::socket::default_sockets(),
        }
    }

    /// Registers an authorized connection and connects to the application.
    async fn admit(
        &self,
        checked: &Arc<MeshState>,
        uid: &str,
        authorized: &Authorized,
    ) -> Result<(ConnectionGuard, TcpStream), InboundError> {
        let guard = self.tracker.register_checked(
            &self.state,
            checked,
            uid,
            authorized.connection.clone(),
        )?;
        let target = authorized.target;
        let app = hbone::socket::connect(self.sockets.as_ref(), target, self.connect_timeout)
            .await
            .map_err(|source| InboundError::Connect { target, source })?;
        // Revoked while connecting: refuse rather than answer and reset at once.
        if let Some(revoked) = guard.revocation() {
            return Err(revoked.clone().into());
        }
        Ok((guard, app))
    }
}

/// The source workload of a connection from `ip`, when the state knows one there — and, for
/// mTLS, only when it runs as the identity the peer proved.
fn source_workload<'a>(
    state: &'a MeshState,
    network: &str,
    ip: IpAddr,
    identity: Option<&hbone::Identity>,
) -> Option<&'a Arc<Workload>> {
    state
        .workload_by_addr(network, ip)
        .filter(|w| identity.is_none_or(|id| w.identity() == *id))
}

/// Metrics and access log of one inbound connection: opened on creation, then exactly one of
/// [`Report::fail`] or [`Report::complete`].
struct Report {
    metrics: Arc<Metrics>,
    labels: ConnectionLabels,
    log: AccessLog,
    start: Instant,
}

impl Report {
    /// Counts the connection opened.
    #[allow(clippy::too_many_arguments)] // The connection's facts, one by one.
    fn open(
        metrics: &Arc<Metrics>,
        state: &MeshState,
        uid: &str,
        src_identity: Option<&hbone::Identity>,
        src_addr: SocketAddr,
        dst_addr: SocketAddr,
        security: SecurityPolicy,
    ) -> Self {
        let dst = state.workload_by_uid(uid);
        let network = dst.map(|w| w.network.as_str()).unwrap_or_default();
        let src = source_workload(state, network, src_addr.ip(), src_identity);
        let labels = ConnectionLabels::new(
            Reporter::Destination,
            src.map(|w| &**w),
            src_identity,
            dst.map(|w| &**w),
            None,
            None,
            security,
            ResponseFlags::None,
        );
        metrics.opened(&labels);
        let mut log = AccessLog::from_labels(&labels, src_addr, dst_addr);
        if let Some(w) = src {
            log.src_workload = Some(w.name.clone());
        }
        if let Some(w) = dst {
            log.dst_workload = Some(w.name.clone());
        }
        Self {
            metrics: metrics.clone(),
            labels,
            log,
            start: Instant::now(),
        }
    }

    /// The connection was refused before any byte was carried.
    fn fail(mut self, error: &InboundError) {
        let labels = self
            .labels
            .clone()
            .with_response_flags(ResponseFlags::from(error.response_flag()));
        self.metrics.failed(&labels);
        self.metrics.closed(&labels);
        self.log.duration = self.start.elapsed();
        self.log.error = Some(error.to_string());
        self.log.emit();
    }

    /// The connection ended after carrying `to_dst` bytes from the source to the destination
    /// and `to_src` back; `revoked` when the policy watcher closed it.
    fn complete(
        mut self,
        to_dst: u64,
        to_src: u64,
        error: Option<String>,
        revoked: Option<&Revocation>,
    ) {
        let labels = match revoked {
            Some(_) => self.labels.clone().with_response_flags(ResponseFlags::Deny),
            None => self.labels.clone(),
        };
        // Istio's directions: `sent` is destination → source, `received` source → destination.
        self.metrics.bytes(&labels, to_src, to_dst);
        self.metrics.closed(&labels);
        self.log.bytes_sent = to_dst;
        self.log.bytes_recv = to_src;
        self.log.duration = self.start.elapsed();
        self.log.error = revoked.map(ToString::to_string).or(error);
        self.log.emit();
    }
}

/// The original client of a tunnel: the address the source proxy reported in `Forwarded: for=`
/// (the tunnel's TCP peer is that proxy, not the client), else the tunnel's peer address. It is
/// the source for policy (`ipBlocks`), telemetry and the access log; the peer identity always
/// comes from the TLS handshake.
fn source_addr(req: &hbone::InboundRequest) -> SocketAddr {
    req.headers
        .get(hbone::headers::FORWARDED)
        .and_then(hbone::headers::forwarded_for)
        .unwrap_or(req.peer_addr)
}

/// The 15008 handler for one local workload.
#[derive(Clone, Debug)]
pub struct InboundHandler {
    ctx: InboundContext,
    uid: Arc<str>,
}

impl InboundHandler {
    /// A handler for the workload `uid`, with its own tracker and metrics.
    pub fn new(state: StateHandle, uid: &str, connect_timeout: Duration) -> Self {
        Self::with_context(InboundContext::new(state, connect_timeout), uid)
    }

    /// A handler for the workload `uid` sharing the node's tracker and metrics.
    pub fn with_context(ctx: InboundContext, uid: &str) -> Self {
        Self {
            ctx,
            uid: uid.into(),
        }
    }

    async fn serve(
        &self,
        state: &Arc<MeshState>,
        req: &hbone::InboundRequest,
    ) -> Result<(Authorized, ConnectionGuard, TcpStream), InboundError> {
        let target = req
            .target()
            .map_err(|_| InboundError::BadAuthority(req.authority.to_string()))?;
        let authorized = authorize(
            state,
            &self.uid,
            target,
            &req.peer_identity,
            source_addr(req).ip(),
        )?;
        let (guard, app) = self.ctx.admit(state, &self.uid, &authorized).await?;
        Ok((authorized, guard, app))
    }
}

impl hbone::Handler for InboundHandler {
    async fn handle(&self, req: hbone::InboundRequest, responder: hbone::Responder) {
        let state = self.ctx.state.current();
        let dst_addr = req.target().unwrap_or(req.local_addr);
        let mut report = Report::open(
            &self.ctx.metrics,
            &state,
            &self.uid,
            Some(&req.peer_identity),
            source_addr(&req),
            dst_addr,
            SecurityPolicy::MutualTls,
        );
        report.log.dst_hbone_addr = Some(req.authority.to_string());
        let (_authorized, guard, mut app) = match self.serve(&state, &req).await {
            Ok(ok) => ok,
            Err(e) => {
                report.fail(&e);
                responder.reject(e.status());
                return;
            }
        };
        let mut tunnel = match responder.accept(http::HeaderMap::new()) {
            Ok(t) => t,
            Err(e) => {
                report.complete(0, 0, Some(e.to_string()), None);
                return;
            }
        };
        // a = application, b = tunnel: a→b is the response, b→a the request.
        let counters = Arc::new(ByteCounters::default());
        let error = tokio::select! {
            result = hbone::copy::copy_tunnel(&mut app, &mut tunnel, Some(counters.clone())) => {
                result.err().map(|e| e.source.to_string())
            }
            () = guard.cancelled() => None,
        };
        // On revocation, dropping the stream unfinished resets it (RST_STREAM) and closes the
        // application socket.
        drop(tunnel);
        drop(app);
        report.complete(
            counters.b_to_a.load(std::sync::atomic::Ordering::Relaxed),
            counters.a_to_b.load(std::sync::atomic::Ordering::Relaxed),
            error,
            guard.revocation(),
        );
    }
}

#[cfg(test)]
mod tests;
