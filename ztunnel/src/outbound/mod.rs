//! Outbound: traffic leaving a local workload.
//!
//! Connections arrive on the workload's outbound listener (15001, original destination from
//! `SO_ORIGINAL_DST` after the capture rules redirected them) or on its SOCKS5 listener (15080,
//! destination from the handshake). For each one, [`request::build_request`] decides where it
//! goes; [`connect`] then opens the upstream — an HBONE tunnel through the pool, presenting the
//! source workload's certificate, or a plain TCP connection — and the bytes are copied until both
//! sides are done.
//!
//! - [`request`]: the routing decision, a pure function.

pub mod request;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::identity::{IdentityError, IdentityManager};
use crate::socks5;
use crate::state::{StateHandle, Workload};
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

/// An opened upstream, ready for the copy.
#[derive(Debug)]
pub enum Upstream {
    /// An HBONE tunnel.
    Tunnel(Box<hbone::Tunnel>),
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
    let state = inputs.state.current();
    let source = state
        .workload_by_uid(source_uid)
        .ok_or_else(|| OutboundFailure::UnknownSource(source_uid.to_string()))?
        .clone();
    let req = request::build_request(&state, &source, original_dst, &inputs.ctx, random)?;
    drop(state);
    let upstream = match req.protocol {
        Protocol::Hbone => {
            let certs = inputs.identities.fetch(&req.source_identity).await?;
            let authority = req.hbone_authority.unwrap_or(req.destination);
            let tunnel_request =
                tunnel_request(authority, client, &source, &req).map_err(|source| {
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
            Upstream::Tunnel(Box::new(tunnel))
        }
        Protocol::Tcp | Protocol::Passthrough => {
            let connect =
                tokio::time::timeout(inputs.connect_timeout, TcpStream::connect(req.destination))
                    .await;
            let stream = match connect {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(OutboundFailure::Connect {
                        destination: req.destination,
                        source,
                    });
                }
                Err(_) => {
                    let source =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                    return Err(OutboundFailure::Connect {
                        destination: req.destination,
                        source,
                    });
                }
            };
            let _ = stream.set_nodelay(true);
            Upstream::Tcp(stream)
        }
    };
    Ok((req, upstream))
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
    upstream: Upstream,
) -> Result<hbone::copy::Transferred, hbone::copy::CopyError> {
    match upstream {
        Upstream::Tunnel(mut tunnel) => {
            hbone::copy::copy_tunnel(client, &mut tunnel.stream, None).await
        }
        Upstream::Tcp(mut tcp) => hbone::copy::copy_bidirectional(client, &mut tcp, None).await,
    }
}

/// The SOCKS5 listener of one local workload (opt-in; for sending traffic into the mesh
/// without capture rules). Hostnames are resolved against the mesh's service hostnames.
#[derive(Debug)]
pub struct Socks5Listener {
    listener: TcpListener,
    inputs: OutboundInputs,
    source_uid: Arc<str>,
}

/// How long a SOCKS5 client has to complete its handshake.
const SOCKS5_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

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
        })
    }

    /// The bound address.
    pub fn address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let (stream, client) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "socks5 accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (inputs, uid) = (self.inputs.clone(), self.source_uid.clone());
            tokio::spawn(async move { socks5_connection(inputs, &uid, stream, client).await });
        }
    }
}

async fn socks5_connection(
    inputs: OutboundInputs,
    uid: &str,
    mut stream: TcpStream,
    client: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let start = Instant::now();
    let destination = match socks5::handshake(&mut stream, SOCKS5_HANDSHAKE_DEADLINE).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%client, error = %e, "socks5 handshake failed");
            return;
        }
    };
    let bound = stream.local_addr().unwrap_or(client);
    let target = match resolve(&inputs, uid, &destination) {
        Ok(t) => t,
        Err(e) => {
            let _ = socks5::reply(&mut stream, socks5::Reply::HostUnreachable, bound).await;
            log_failure(uid, client, &destination.to_string(), &e);
            return;
        }
    };
    match connect(&inputs, uid, client, target).await {
        Ok((req, upstream)) => {
            if socks5::reply(&mut stream, socks5::Reply::Succeeded, bound)
                .await
                .is_err()
            {
                return;
            }
            let result = copy(&mut stream, upstream).await;
            let (sent, received, error) = match &result {
                Ok(t) => (t.b_to_a, t.a_to_b, None),
                Err(e) => (
                    e.transferred.b_to_a,
                    e.transferred.a_to_b,
                    Some(e.source.to_string()),
                ),
            };
            tracing::info!(
                target: "access",
                direction = "outbound",
                src.addr = %client,
                src.workload_uid = uid,
                dst.addr = %target,
                dst.hbone_addr = %req.destination,
                protocol = ?req.protocol,
                bytes_sent = sent,
                bytes_recv = received,
                duration = ?start.elapsed(),
                error = error.as_deref().unwrap_or(""),
                "connection complete"
            );
        }
        Err(e) => {
            let reply = match &e {
                OutboundFailure::Tunnel {
                    source: hbone::Error::Status(s),
                    ..
                } if *s == http::StatusCode::UNAUTHORIZED => socks5::Reply::NotAllowed,
                OutboundFailure::Connect { source, .. } => socks5::Reply::from_io_error(source),
                OutboundFailure::Route(OutboundError::RegistryOnly { .. }) => {
                    socks5::Reply::NotAllowed
                }
                _ => socks5::Reply::GeneralFailure,
            };
            let _ = socks5::reply(&mut stream, reply, bound).await;
            log_failure(uid, client, &target.to_string(), &e);
        }
    }
}

fn log_failure(uid: &str, client: SocketAddr, dst: &str, e: &OutboundFailure) {
    tracing::warn!(
        target: "access",
        direction = "outbound",
        src.addr = %client,
        src.workload_uid = uid,
        dst.addr = dst,
        error = %e,
        "connection failed"
    );
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
