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
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hbone::copy::{CopyError, Transferred};
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
        uid: &Arc<str>,
        authorized: &Authorized,
    ) -> Result<(ConnectionGuard, TcpStream), InboundError> {
        let guard = self.tracker.register_checked(
            &self.state,
            checked,
            uid.clone(),
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
///
/// Kept for the whole life of a connection, so it holds only shared values and addresses: the
/// labels are the metrics' interned copy, and the access log record is built when it is
/// written.
struct Report {
    metrics: Arc<Metrics>,
    labels: Arc<ConnectionLabels>,
    /// The source workload (`src.workload`), when known.
    source: Option<Arc<Workload>>,
    /// The destination workload (`dst.workload`), when known.
    destination: Option<Arc<Workload>>,
    src_addr: SocketAddr,
    dst_addr: SocketAddr,
    /// The `CONNECT` authority, for HBONE.
    hbone_addr: Option<Authority>,
    start: Instant,
}

/// A `CONNECT` authority as logged (`dst.hbone_addr`). Usually it reads as the destination
/// address itself and then nothing is stored (an empty text, which allocates nothing);
/// otherwise its text.
struct Authority(Box<str>);

impl Authority {
    fn new(authority: &http::uri::Authority, dst: SocketAddr) -> Self {
        let text = authority.as_str();
        if text == dst.to_string() {
            Authority(Box::default())
        } else {
            Authority(text.into())
        }
    }

    /// The authority's text, given the connection's destination address.
    fn text(&self, dst: SocketAddr) -> String {
        if self.0.is_empty() {
            dst.to_string()
        } else {
            self.0.to_string()
        }
    }
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
        let labels = metrics.intern(labels);
        metrics.opened(&labels);
        Self {
            metrics: metrics.clone(),
            labels,
            source: src.cloned(),
            destination: dst.cloned(),
            src_addr,
            dst_addr,
            hbone_addr: None,
            start: Instant::now(),
        }
    }

    /// The access log record, without the outcome.
    fn log(&self) -> AccessLog {
        let mut log = AccessLog::from_labels(&self.labels, self.src_addr, self.dst_addr);
        if let Some(w) = &self.source {
            log.src_workload = Some(w.name.clone());
        }
        if let Some(w) = &self.destination {
            log.dst_workload = Some(w.name.clone());
        }
        log.dst_hbone_addr = self.hbone_addr.as_ref().map(|a| a.text(self.dst_addr));
        log.duration = self.start.elapsed();
        log
    }

    /// The connection was refused before any byte was carried.
    fn fail(self, error: &InboundError) {
        let labels = (*self.labels)
            .clone()
            .with_response_flags(ResponseFlags::from(error.response_flag()));
        self.metrics.failed(&labels);
        self.metrics.closed(&labels);
        let mut log = self.log();
        log.error = Some(error.to_string());
        log.emit();
    }

    /// The connection ended after carrying `to_dst` bytes from the source to the destination
    /// and `to_src` back; `revoked` when the policy watcher closed it.
    fn complete(
        self,
        to_dst: u64,
        to_src: u64,
        error: Option<String>,
        revoked: Option<&Revocation>,
    ) {
        let denied;
        let labels = match revoked {
            Some(_) => {
                denied = (*self.labels)
                    .clone()
                    .with_response_flags(ResponseFlags::Deny);
                &denied
            }
            None => &*self.labels,
        };
        // Istio's directions: `sent` is destination → source, `received` source → destination.
        self.metrics.bytes(labels, to_src, to_dst);
        self.metrics.closed(labels);
        let mut log = self.log();
        log.bytes_sent = to_dst;
        log.bytes_recv = to_src;
        log.error = revoked.map(ToString::to_string).or(error);
        log.emit();
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

impl InboundHandler {
    /// Everything before the copy: policy, the connection to the application and the answer
    /// to the `CONNECT`. `None` when the tunnel was refused (answered and reported).
    async fn open(
        &self,
        req: hbone::InboundRequest,
        responder: hbone::Responder,
    ) -> Option<Admitted> {
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
        report.hbone_addr = Some(Authority::new(&req.authority, dst_addr));
        let (_authorized, guard, app) = match self.serve(&state, &req).await {
            Ok(ok) => ok,
            Err(e) => {
                report.fail(&e);
                responder.reject(e.status());
                return None;
            }
        };
        let tunnel = match responder.accept(http::HeaderMap::new()) {
            Ok(t) => t,
            Err(e) => {
                report.complete(0, 0, Some(e.to_string()), None);
                return None;
            }
        };
        Some(Admitted {
            report,
            guard,
            app,
            tunnel,
        })
    }
}

/// An accepted tunnel: what it keeps while its bytes are copied (the request, its headers
/// and the policy decision are gone by then).
struct Admitted {
    report: Report,
    guard: ConnectionGuard,
    app: TcpStream,
    tunnel: hbone::H2Stream,
}

impl Admitted {
    /// Copies until both sides are done or the policy watcher revokes the connection, then
    /// reports it.
    fn run(self) -> impl Future<Output = ()> + Send {
        let Admitted {
            report,
            guard,
            mut app,
            mut tunnel,
        } = self;
        async move {
            // a = application, b = tunnel: a→b is the response, b→a the request.
            let mut copy = hbone::copy::copy_tunnel(&mut app, &mut tunnel, None);
            let (transferred, error) = copy_until_revoked(&mut copy, &guard).await;
            drop(copy);
            // On revocation, dropping the stream unfinished resets it (RST_STREAM) and closes
            // the application socket.
            drop(tunnel);
            drop(app);
            report.complete(
                transferred.b_to_a,
                transferred.a_to_b,
                error,
                guard.revocation(),
            );
        }
    }
}

/// A copy that knows what it has moved so far ([`hbone::copy::CopyTunnel`],
/// [`hbone::copy::CopyBidirectional`]).
trait ByteCopy: Future<Output = Result<Transferred, CopyError>> + Unpin {
    fn transferred(&self) -> Transferred;
}

impl<A> ByteCopy for hbone::copy::CopyTunnel<'_, A>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    fn transferred(&self) -> Transferred {
        hbone::copy::CopyTunnel::transferred(self)
    }
}

impl<A, B> ByteCopy for hbone::copy::CopyBidirectional<'_, A, B>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    fn transferred(&self) -> Transferred {
        hbone::copy::CopyBidirectional::transferred(self)
    }
}

/// Runs `copy` until both sides are done or the policy watcher revokes the connection; returns
/// what was moved and the copy's error, if any (none on revocation: the guard says why).
fn copy_until_revoked<'a, C: ByteCopy + Send>(
    copy: &'a mut C,
    guard: &'a ConnectionGuard,
) -> impl Future<Output = (Transferred, Option<String>)> + Send + 'a {
    std::future::poll_fn(move |cx| {
        if guard.poll_revoked(cx).is_ready() {
            return Poll::Ready((copy.transferred(), None));
        }
        Pin::new(&mut *copy).poll(cx).map(|result| match result {
            Ok(transferred) => (transferred, None),
            Err(e) => (e.transferred, Some(e.source.to_string())),
        })
    })
}

impl hbone::Handler for InboundHandler {
    fn handle(
        &self,
        req: hbone::InboundRequest,
        responder: hbone::Responder,
    ) -> impl Future<Output = ()> + Send {
        // The setup runs boxed and is freed before the copy starts, so a long-lived tunnel
        // keeps only what `Admitted` holds.
        let open = Box::pin(self.open(req, responder));
        async move {
            // `let else` (not `if let`): the `Option` is not kept beside the copy's state.
            let Some(admitted) = open.await else {
                return;
            };
            admitted.run().await;
        }
    }
}

#[cfg(test)]
mod tests;
