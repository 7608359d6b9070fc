//! Outbound: traffic leaving a local workload.
//!
//! Connections arrive on the workload's outbound listener (15001, original destination from
//! `SO_ORIGINAL_DST` after the capture rules redirected them) or on its SOCKS5 listener (15080,
//! destination from the handshake). For each one, [`request::build_request`] decides where it
//! goes; [`connect`] then opens the upstream — an HBONE tunnel through the pool, presenting the
//! source workload's certificate, or a plain TCP connection — and the bytes are copied until both
//! sides are done.
//!
//! Every outbound connection (captured or SOCKS5) is reported in the node's [`Metrics`] with `reporter="source"`:
//! `opened` once the upstream is connected, the bytes and `closed` when the copy ends, or
//! `failed` with a response flag when no upstream could be opened; and in one [`AccessLog`]
//! record (direction `outbound`) when it ends. A captured connection whose upstream cannot be
//! opened is reset; a SOCKS5 client gets the matching reply code instead.
//!
//! - [`request`]: the routing decision, a pure function.
//! - `capture`: [`OutboundListener`], the 15001 listener.

mod capture;
pub mod request;

pub use capture::OutboundListener;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::drain::ConnectionTasks;
use crate::identity::{IdentityError, IdentityManager};
use crate::socks5;
use crate::state::{StateHandle, Workload};
use crate::telemetry::{
    AccessLog, ConnectionLabels, Direction, Metrics, Reporter, ResponseFlags, SecurityPolicy,
};
use request::{OutboundContext, OutboundError, OutboundRequest, Protocol};

/// What the outbound path of every local workload shares.
#[derive(Clone, Debug)]
pub struct OutboundInputs {
    /// The mesh state.
    pub state: StateHandle,
    /// Certificates of local identities.
    pub identities: Arc<IdentityManager>,
    /// HBONE client connections.
    pub pool: hbone::Pool,
    /// Network, policy for unknown destinations, loop protection.
    pub ctx: OutboundContext,
    /// Deadline for plain TCP connects.
    pub connect_timeout: Duration,
    /// Where connections are counted (`reporter="source"`).
    pub metrics: Arc<Metrics>,
    /// Where plain TCP connections are dialled from (a pod's network namespace for an in-pod
    /// proxy; the pool has its own).
    pub sockets: Arc<dyn hbone::SocketFactory>,
}

/// Why an outbound connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundFailure {
    /// The source workload is no longer in the mesh state.
    #[error("source workload {0} is not in the mesh state")]
    UnknownSource(String),
    /// No route for the destination.
    #[error(transparent)]
    Route(#[from] OutboundError),
    /// No certificate for the source identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The HBONE tunnel could not be opened (handshake, refusal by the peer, …).
    #[error("hbone to {destination}: {source}")]
    Tunnel {
        /// The HBONE peer.
        destination: SocketAddr,
        /// What went wrong.
        #[source]
        source: hbone::Error,
    },
    /// The plain TCP connect failed.
    #[error("connect to {destination}: {source}")]
    Connect {
        /// The address dialled.
        destination: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A SOCKS5 hostname that is not a mesh service.
    #[error("unknown host {0}")]
    UnknownHost(String),
}

impl OutboundFailure {
    /// Istio's response flag for telemetry: `DENY` when the peer refused the tunnel with 401,
    /// `TLS_FAILURE` for a failed TLS handshake, `CONNECT` for other connect failures,
    /// `IDENTITY_ERROR` without a client certificate, and the routing error's own flag (`NR`,
    /// `UH`) when there is no route.
    pub fn response_flag(&self) -> ResponseFlags {
        match self {
            OutboundFailure::Tunnel { source, .. } => match source {
                hbone::Error::Status(s) if *s == http::StatusCode::UNAUTHORIZED => {
                    ResponseFlags::Deny
                }
                hbone::Error::Handshake(_)
                | hbone::Error::HandshakeIo(_)
                | hbone::Error::HandshakeTimeout(_)
                | hbone::Error::Tls(_) => ResponseFlags::TlsFailure,
                _ => ResponseFlags::Connect,
            },
            OutboundFailure::Connect { .. } | OutboundFailure::UnknownSource(_) => {
                ResponseFlags::Connect
            }
            OutboundFailure::Identity(_) => ResponseFlags::IdentityError,
            OutboundFailure::Route(e) => ResponseFlags::from(e.response_flag()),
            OutboundFailure::UnknownHost(_) => ResponseFlags::Other("NR"),
        }
    }
}

/// An opened upstream, ready for the copy.
#[derive(Debug)]
pub enum Upstream {
    /// The byte stream of an HBONE tunnel (the tunnel's response headers and peer identity
    /// are not kept: a connection holds only what its copy needs).
    Tunnel(hbone::H2Stream),
    /// A plain TCP connection.
    Tcp(TcpStream),
}

/// A random number in `0..n` for endpoint selection.
fn random(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let x = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (x % u64::from(n)) as u32
}

/// Decides and opens the upstream for a connection from workload `source_uid` (client address
/// `client`) to `original_dst`.
pub async fn connect(
    inputs: &OutboundInputs,
    source_uid: &str,
    client: SocketAddr,
    original_dst: SocketAddr,
) -> Result<(OutboundRequest, Upstream), OutboundFailure> {
    let (source, req) = route(inputs, source_uid, original_dst)?;
    let upstream = open(inputs, &source, client, &req).await?;
    Ok((req, upstream))
}

/// The routing decision for a connection from workload `source_uid` to `original_dst`, with
/// the source workload.
pub fn route(
    inputs: &OutboundInputs,
    source_uid: &str,
    original_dst: SocketAddr,
) -> Result<(Arc<Workload>, OutboundRequest), OutboundFailure> {
    let state = inputs.state.current();
    let source = state
        .workload_by_uid(source_uid)
        .ok_or_else(|| OutboundFailure::UnknownSource(source_uid.to_string()))?
        .clone();
    let req = request::build_request(&state, &source, original_dst, &inputs.ctx, random)?;
    Ok((source, req))
}

/// Opens the upstream chosen by `req` for a connection from `source` (client address
/// `client`).
pub async fn open(
    inputs: &OutboundInputs,
    source: &Workload,
    client: SocketAddr,
    req: &OutboundRequest,
) -> Result<Upstream, OutboundFailure> {
    let upstream = match req.protocol {
        Protocol::Hbone => {
            let certs = inputs.identities.fetch(&req.source_identity).await?;
            let authority = req.hbone_authority.unwrap_or(req.destination);
            let tunnel_request =
                tunnel_request(authority, client, source, req).map_err(|source| {
                    OutboundFailure::Tunnel {
                        destination: req.destination,
                        source,
                    }
                })?;
            let tunnel = inputs
                .pool
                .connect(
                    &certs,
                    req.expected_identities.clone(),
                    req.destination,
                    &tunnel_request,
                )
                .await
                .map_err(|source| OutboundFailure::Tunnel {
                    destination: req.destination,
                    source,
                })?;
            Upstream::Tunnel(tunnel.stream)
        }
        Protocol::Tcp | Protocol::Passthrough => {
            let stream = hbone::socket::connect(
                inputs.sockets.as_ref(),
                req.destination,
                inputs.connect_timeout,
            )
            .await
            .map_err(|source| OutboundFailure::Connect {
                destination: req.destination,
                source,
            })?;
            Upstream::Tcp(stream)
        }
    };
    Ok(upstream)
}

/// The HBONE request: `CONNECT <authority>` with the client in `forwarded`, the source
/// workload in `baggage` and a fresh `traceparent`.
fn tunnel_request(
    authority: SocketAddr,
    client: SocketAddr,
    source: &Workload,
    req: &OutboundRequest,
) -> Result<hbone::TunnelRequest, hbone::Error> {
    use hbone::headers;
    let host = req
        .destination_service
        .as_ref()
        .map(|s| s.hostname.as_str());
    let workload_kind = match source.workload_type.as_str() {
        "" => "deployment",
        kind => kind,
    };
    let kind_key = format!("k8s.{workload_kind}.name");
    let baggage = headers::baggage([
        ("k8s.cluster.name", source.cluster_id.as_str()),
        ("k8s.namespace.name", source.namespace.as_str()),
        (kind_key.as_str(), source.workload_name.as_str()),
        ("service.name", source.canonical_name.as_str()),
        ("service.version", source.canonical_revision.as_str()),
    ])?;
    Ok(hbone::TunnelRequest::new(authority)
        .header(headers::FORWARDED, headers::forwarded(client, host)?)
        .header(headers::BAGGAGE, baggage)
        .header(
            headers::TRACEPARENT,
            headers::TraceParent::random().to_header(),
        ))
}

/// Copies between the client and the upstream until both are done.
pub async fn copy(
    client: &mut TcpStream,
    mut upstream: Upstream,
) -> Result<hbone::copy::Transferred, hbone::copy::CopyError> {
    copy_upstream(client, &mut upstream).await
}

/// [`copy`] on a borrowed upstream: the caller's state holds it, and the copy's future is just
/// the copy (no second copy of the upstream, no state machine around it).
fn copy_upstream<'a>(
    client: &'a mut TcpStream,
    upstream: &'a mut Upstream,
) -> impl Future<Output = Result<hbone::copy::Transferred, hbone::copy::CopyError>> + Send + 'a {
    match upstream {
        Upstream::Tunnel(stream) => Either::Left(hbone::copy::copy_tunnel(client, stream, None)),
        Upstream::Tcp(tcp) => Either::Right(hbone::copy::copy_bidirectional(client, tcp, None)),
    }
}

/// The SOCKS5 listener of one local workload (opt-in; for sending traffic into the mesh
/// without capture rules). Hostnames are resolved against the mesh's service hostnames.
#[derive(Debug)]
pub struct Socks5Listener {
    listener: TcpListener,
    inputs: OutboundInputs,
    source_uid: Arc<str>,
    drain_deadline: Duration,
}

/// How long a SOCKS5 client has to complete its handshake.
const SOCKS5_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// How long open connections may run after a listener is shut down, unless set otherwise.
const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

impl Socks5Listener {
    /// Binds the listener for workload `source_uid`.
    pub async fn new(
        addr: SocketAddr,
        inputs: OutboundInputs,
        source_uid: &str,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            inputs,
            source_uid: source_uid.into(),
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
        })
    }

    /// Sets how long open connections may run once [`Socks5Listener::run`] is shut down.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// The bound address.
    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown`; open connections then get the drain deadline to
    /// finish before they are closed.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = ConnectionTasks::new();
        // One copy of the inputs for all connections, not one each.
        let inputs = Arc::new(self.inputs);
        loop {
            let (stream, client) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "socks5 accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Boxed here, so the task captures one pointer rather than the arguments.
            let open = Box::pin(socks5_open(
                inputs.clone(),
                self.source_uid.clone(),
                stream,
                client,
            ));
            tasks.spawn_with(move || serve(open));
        }
        drop(self.listener);
        tasks.drain(self.drain_deadline).await;
    }
}

/// The SOCKS5 handshake, routing and upstream of one connection: everything before the copy.
async fn socks5_open(
    inputs: Arc<OutboundInputs>,
    uid: Arc<str>,
    mut stream: TcpStream,
    client: SocketAddr,
) -> Option<Proxied> {
    let _ = stream.set_nodelay(true);
    let start = Instant::now();
    let destination = match socks5::handshake(&mut stream, SOCKS5_HANDSHAKE_DEADLINE).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%client, error = %e, "socks5 handshake failed");
            return None;
        }
    };
    let bound = stream.local_addr().unwrap_or(client);
    let target = match resolve(&inputs, &uid, &destination) {
        Ok(t) => t,
        Err(e) => {
            // No address to report: the port asked for on the unspecified address.
            let dst = SocketAddr::new(
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                destination_port(&destination),
            );
            Report::unrouted(&inputs, &uid, client, dst, start).fail(&e);
            let _ = socks5::reply(&mut stream, socks5::Reply::HostUnreachable, bound).await;
            return None;
        }
    };
    proxy(
        &inputs,
        &uid,
        stream,
        client,
        target,
        start,
        Entry::Socks5 { bound },
    )
    .await
}

/// Runs a connection in two phases. `open` (handshake, routing, upstream) is boxed and freed
/// once it is done, so what a connection keeps for its (possibly long) life is only what the
/// copy needs: the two streams and the report.
async fn serve<F>(open: Pin<Box<F>>)
where
    F: Future<Output = Option<Proxied>> + Send,
{
    // `let else` (not `if let`): the `Option` is not kept beside the copy's state.
    let Some(proxied) = open.await else {
        return;
    };
    proxied.run().await;
}

/// How a connection entered the proxy, which decides how its client learns the outcome of
/// opening the upstream.
#[derive(Clone, Copy, Debug)]
enum Entry {
    /// Captured on the outbound listener (`own` is that listener's address): the client
    /// believes it is already connected, so a failure resets the connection.
    Captured {
        /// The listener's own address; a connection to it is a loop.
        own: Option<SocketAddr>,
    },
    /// SOCKS5: a reply, with the listener's address as the bound address.
    Socks5 {
        /// The address put in the reply.
        bound: SocketAddr,
    },
}

impl Entry {
    /// Tells the client the upstream could not be opened.
    async fn refuse(self, stream: &mut TcpStream, e: &OutboundFailure) {
        match self {
            Entry::Captured { .. } => {
                // Closing with linger 0 sends RST, as a refused connection would.
                let _ = socket2::SockRef::from(&*stream).set_linger(Some(Duration::ZERO));
            }
            Entry::Socks5 { bound } => {
                let _ = socks5::reply(stream, failure_reply(e), bound).await;
            }
        }
    }

    /// Tells the client the upstream is open.
    async fn accept(self, stream: &mut TcpStream) -> std::io::Result<()> {
        match self {
            Entry::Captured { .. } => Ok(()),
            Entry::Socks5 { bound } => socks5::reply(stream, socks5::Reply::Succeeded, bound).await,
        }
    }
}

/// Routes one connection of workload `uid` from `client` to `target` and opens the upstream;
/// `None` when it could not be opened (the client has been told, the failure reported).
async fn proxy(
    inputs: &OutboundInputs,
    uid: &str,
    mut stream: TcpStream,
    client: SocketAddr,
    target: SocketAddr,
    start: Instant,
    entry: Entry,
) -> Option<Proxied> {
    let routed = match entry {
        Entry::Captured { own } if own == Some(target) => {
            Err(OutboundFailure::Route(OutboundError::SelfCall {
                dst: target,
            }))
        }
        _ => route(inputs, uid, target),
    };
    let (source, req) = match routed {
        Ok(r) => r,
        Err(e) => {
            // Counted before the client hears of it: whoever the client tells finds the
            // failure in the metrics and the access log already.
            Report::unrouted(inputs, uid, client, target, start).fail(&e);
            entry.refuse(&mut stream, &e).await;
            return None;
        }
    };
    let report = Report::routed(inputs, &source, &req, client, start);
    let upstream = match open(inputs, &source, client, &req).await {
        Ok(u) => u,
        Err(e) => {
            report.fail(&e);
            entry.refuse(&mut stream, &e).await;
            return None;
        }
    };
    let report = report.opened();
    if let Err(e) = entry.accept(&mut stream).await {
        report.complete(0, 0, Some(e.to_string()));
        return None;
    }
    Some(Proxied {
        client: stream,
        upstream,
        report,
    })
}

/// A connection whose upstream is open: what it keeps while its bytes are copied.
struct Proxied {
    client: TcpStream,
    upstream: Upstream,
    report: Report,
}

impl Proxied {
    /// Copies until both sides are done, then reports the connection.
    fn run(self) -> impl Future<Output = ()> + Send {
        let Proxied {
            mut client,
            mut upstream,
            report,
        } = self;
        async move {
            // a = client, b = upstream: a→b is the request, b→a the response.
            let (transferred, error) = match copy_upstream(&mut client, &mut upstream).await {
                Ok(t) => (t, None),
                Err(e) => (e.transferred, Some(e.source.to_string())),
            };
            report.complete(transferred.a_to_b, transferred.b_to_a, error);
        }
    }
}

/// The SOCKS5 reply to a connection that could not be opened.
fn failure_reply(e: &OutboundFailure) -> socks5::Reply {
    match e {
        OutboundFailure::Tunnel {
            source: hbone::Error::Status(s),
            ..
        } if *s == http::StatusCode::UNAUTHORIZED => socks5::Reply::NotAllowed,
        OutboundFailure::Connect { source, .. } => socks5::Reply::from_io_error(source),
        OutboundFailure::Route(OutboundError::RegistryOnly { .. }) => socks5::Reply::NotAllowed,
        _ => socks5::Reply::GeneralFailure,
    }
}

fn destination_port(destination: &socks5::Destination) -> u16 {
    match destination {
        socks5::Destination::Addr(addr) => addr.port(),
        socks5::Destination::Domain(_, port) => *port,
    }
}

/// Metrics (`reporter="source"`) and access log of one outbound connection: either
/// [`Report::fail`], or [`Report::opened`] then [`Report::complete`].
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
    client: SocketAddr,
    /// The address dialled (for HBONE the tunnel endpoint).
    dst: SocketAddr,
    /// The `CONNECT` authority, for HBONE.
    hbone_addr: Option<SocketAddr>,
    start: Instant,
}

impl Report {
    /// A connection with no route (or no source workload): only the source side is known.
    fn unrouted(
        inputs: &OutboundInputs,
        uid: &str,
        client: SocketAddr,
        dst: SocketAddr,
        start: Instant,
    ) -> Self {
        let state = inputs.state.current();
        let source = state.workload_by_uid(uid);
        let labels = ConnectionLabels::new(
            Reporter::Source,
            source.map(|w| &**w),
            None,
            None,
            None,
            None,
            SecurityPolicy::Unknown,
            ResponseFlags::None,
        );
        Self {
            metrics: inputs.metrics.clone(),
            labels: Arc::new(labels),
            source: source.cloned(),
            destination: None,
            client,
            dst,
            hbone_addr: None,
            start,
        }
    }

    /// A routed connection: the destination workload, service and expected identity from
    /// `req`; mutual TLS for HBONE. `dst.addr` is the address dialled (for HBONE the tunnel
    /// endpoint), `dst.hbone_addr` the `CONNECT` authority.
    fn routed(
        inputs: &OutboundInputs,
        source: &Arc<Workload>,
        req: &OutboundRequest,
        client: SocketAddr,
        start: Instant,
    ) -> Self {
        let security = match req.protocol {
            Protocol::Hbone => SecurityPolicy::MutualTls,
            Protocol::Tcp | Protocol::Passthrough => SecurityPolicy::Unknown,
        };
        // The identity the peer must prove: the destination workload's when it is the one
        // expected (direct HBONE), otherwise the first expected one (a waypoint).
        let expected = req
            .destination_workload
            .as_ref()
            .map(|w| w.identity())
            .filter(|id| req.expected_identities.contains(id))
            .or_else(|| req.expected_identities.first().cloned());
        let labels = ConnectionLabels::new(
            Reporter::Source,
            Some(source),
            Some(&req.source_identity),
            req.destination_workload.as_deref(),
            req.destination_service.as_deref(),
            expected.as_ref(),
            security,
            ResponseFlags::None,
        );
        Self {
            labels: inputs.metrics.intern(labels),
            metrics: inputs.metrics.clone(),
            source: Some(source.clone()),
            destination: req.destination_workload.clone(),
            client,
            dst: req.destination,
            hbone_addr: (req.protocol == Protocol::Hbone)
                .then(|| req.hbone_authority.unwrap_or(req.destination)),
            start,
        }
    }

    /// The access log record, without the outcome.
    fn log(&self) -> AccessLog {
        let mut log = AccessLog::from_labels(&self.labels, self.client, self.dst);
        log.direction = Direction::Outbound;
        if let Some(w) = &self.source {
            log.src_workload = Some(w.name.clone());
        }
        if let Some(w) = &self.destination {
            log.dst_workload = Some(w.name.clone());
        }
        log.dst_hbone_addr = self.hbone_addr.map(|a| a.to_string());
        log.duration = self.start.elapsed();
        log
    }

    /// No upstream could be opened: counted failed with the failure's response flag.
    fn fail(self, error: &OutboundFailure) {
        let labels = (*self.labels)
            .clone()
            .with_response_flags(error.response_flag());
        self.metrics.failed(&labels);
        let mut log = self.log();
        log.error = Some(error.to_string());
        log.emit();
    }

    /// The upstream is connected: counted opened.
    fn opened(self) -> Self {
        self.metrics.opened(&self.labels);
        self
    }

    /// The connection ended after carrying `to_dst` bytes from the client to the upstream and
    /// `to_src` back.
    fn complete(self, to_dst: u64, to_src: u64, error: Option<String>) {
        // Istio's directions: `sent` is destination → source, `received` source → destination.
        self.metrics.bytes(&self.labels, to_src, to_dst);
        self.metrics.closed(&self.labels);
        let mut log = self.log();
        log.bytes_sent = to_dst;
        log.bytes_recv = to_src;
        log.error = error;
        log.emit();
    }
}

/// A SOCKS5 destination as a socket address: IPs as given, hostnames as a mesh service's VIP.
fn resolve(
    inputs: &OutboundInputs,
    uid: &str,
    destination: &socks5::Destination,
) -> Result<SocketAddr, OutboundFailure> {
    match destination {
        socks5::Destination::Addr(addr) => Ok(*addr),
        socks5::Destination::Domain(host, port) => {
            let state = inputs.state.current();
            let namespace = state
                .workload_by_uid(uid)
                .map(|w| w.namespace.clone())
                .unwrap_or_default();
            state
                .service_by_hostname(host, Some(&namespace))
                .and_then(|s| {
                    s.vips
                        .iter()
                        .find(|v| v.network == inputs.ctx.network)
                        .map(|v| v.ip)
                })
                .map(|ip| SocketAddr::new(ip, *port))
                .ok_or_else(|| OutboundFailure::UnknownHost(host.clone()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::app::{Node, WorkloadPorts};
    use crate::state::LocalConfig;

    use super::*;

    /// A `MakeWriter` collecting everything written into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep-7f9c
  namespace: default
  serviceAccount: sleep
  workloadName: sleep
  canonicalName: sleep
  clusterId: Kubernetes
  workloadIps: ["127.0.4.21"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/default/httpbin
  name: httpbin-5d8b
  namespace: default
  serviceAccount: httpbin
  workloadName: httpbin
  canonicalName: httpbin
  clusterId: Kubernetes
  workloadIps: ["127.0.4.22"]
  protocol: HBONE
  node: node-b
"#;

    fn node(state: &StateHandle, name: &str, dir: &std::path::Path) -> Node {
        let ca = hbone::LocalCa::load_or_generate(dir, "cluster.local").unwrap();
        let roots = ca.roots().to_vec();
        let ctx = OutboundContext {
            node: Some(name.to_string()),
            ..OutboundContext::default()
        };
        let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
        Node::new(
            state.clone(),
            identities,
            roots,
            hbone::Config::default(),
            ctx,
        )
        .unwrap()
    }

    /// The size of the future `f` returns, without calling it.
    fn output_size<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Memory per idle connection: what an open connection's task keeps for its whole life.
    /// Tokio allocates each task as a 128-byte-aligned cell, 104 bytes of its own plus the
    /// future, so a future of at most 408 bytes takes a 512-byte cell. The SOCKS5 and captured
    /// connections share `serve` (the open phase is boxed and freed before the copy).
    #[tokio::test]
    async fn outbound_connection_task_fits_a_512_byte_task_cell() {
        let tasks = ConnectionTasks::new();
        let socks5 = output_size(
            |inputs: Arc<OutboundInputs>, uid: Arc<str>, stream: TcpStream, client: SocketAddr| {
                // As `Socks5Listener::run` and `ConnectionTasks::spawn_with` spawn it.
                let open = Box::pin(socks5_open(inputs, uid, stream, client));
                tasks.task(move || serve(open))
            },
        );
        assert!(
            socks5 <= 408,
            "socks5 connection task state: {socks5} bytes"
        );
    }

    /// Current-thread runtime: every task (listeners, HBONE client and server) runs on this
    /// thread, so the thread-local subscriber sees the access log.
    #[tokio::test]
    async fn socks5_connection_is_access_logged_through_two_nodes() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let state = StateHandle::new(LocalConfig::from_yaml(MESH).unwrap().into_state().unwrap());
        let node_a = node(&state, "node-a", dir.path());
        let node_b = node(&state, "node-b", dir.path());
        let current = state.current();
        let a = node_a
            .add_workload(
                current
                    .workload_by_uid("cluster1//v1/Pod/default/sleep")
                    .unwrap(),
                WorkloadPorts {
                    socks5: Some(0),
                    ..WorkloadPorts::default()
                },
            )
            .await
            .unwrap();
        let _b = node_b
            .add_workload(
                current
                    .workload_by_uid("cluster1//v1/Pod/default/httpbin")
                    .unwrap(),
                WorkloadPorts::default(),
            )
            .await
            .unwrap();
        // The application: reads to EOF, answers 5 bytes.
        let app = TcpListener::bind("127.0.4.22:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = app.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(b"world").await.unwrap();
            s.shutdown().await.unwrap();
        });

        // SOCKS5 by hand: greeting, CONNECT to the application's IPv4 address.
        let mut s = TcpStream::connect(a.socks5.unwrap()).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut reply = [0u8; 2];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [5, 0]);
        let SocketAddr::V4(v4) = app_addr else {
            unreachable!()
        };
        let mut req = vec![5, 1, 0, 1];
        req.extend_from_slice(&v4.ip().octets());
        req.extend_from_slice(&v4.port().to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[1], 0, "socks5 reply {reply:?}");
        let client = s.local_addr().unwrap();

        s.write_all(b"hello there").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"world");
        drop(s);

        let deadline = Instant::now() + Duration::from_secs(3);
        let line = loop {
            let text = buf.text();
            if let Some(l) = text
                .lines()
                .find(|l| l.contains("direction=outbound"))
                .map(str::to_owned)
            {
                break l;
            }
            assert!(Instant::now() < deadline, "no outbound access log\n{text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // `INFO access: <record>`; the duration varies, so compare up to it.
        let expected = format!(
            " INFO access: connection complete src.addr={client} src.workload=sleep-7f9c \
src.namespace=default src.identity=spiffe://cluster.local/ns/default/sa/sleep \
src.cluster=Kubernetes dst.addr=127.0.4.22:15008 dst.hbone_addr={app_addr} \
dst.workload=httpbin-5d8b dst.namespace=default \
dst.identity=spiffe://cluster.local/ns/default/sa/httpbin dst.cluster=Kubernetes \
direction=outbound bytes_sent=11 bytes_recv=5 duration="
        );
        assert!(line.starts_with(&expected), "{line}\nexpected {expected}");
        let rest = &line[expected.len()..];
        assert!(
            rest.ends_with("ms") && rest[..rest.len() - 2].parse::<u64>().is_ok(),
            "{line}"
        );
    }
}
