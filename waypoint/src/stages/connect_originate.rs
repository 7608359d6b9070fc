//! `connect_originate`: the last stage. It opens HBONE tunnels, as the waypoint's own identity,
//! to `podIP:15008` through the [`hbone::Pool`] (the destination ztunnel terminates them and
//! checks its policies against the waypoint's identity), or plain TCP to workloads outside the
//! mesh, and keeps HTTP client connections over those tunnels for reuse:
//!
//! - HTTP/2 upstreams: one connection per endpoint, multiplexed;
//! - HTTP/1.1 upstreams: idle connections per endpoint, each back in the pool once its response
//!   has been read, up to `maxRequestsPerConnection` requests.
//!
//! Every failure is typed ([`OriginateError`]) so the listener can tell a connect failure (`UF`,
//! retried on `connect-failure`) from a reset (`UC`, retried on `reset`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hbone::{CertStore, H2Stream, Identity};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use ztunnel::identity::IdentityManager;

use super::inbound_pod::{Transport, TunnelMetadata};

/// The error type of bodies sent upstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body sent upstream.
pub type RequestBody = BoxBody<Bytes, BoxError>;

/// Default connect timeout (Istio's `connectTimeout` default is 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

pub use crate::cluster::UpstreamProtocol;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    /// The waypoint has no certificate for its identity.
    #[error("no certificate for the waypoint identity: {0}")]
    Identity(String),
    /// The tunnel or TCP connection could not be opened.
    #[error("upstream connect to {addr} failed: {reason}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Connecting took longer than the connect timeout.
    #[error("upstream connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The HTTP handshake over the tunnel failed.
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
    /// The request failed after the connection was up (reset, closed, protocol error).
    #[error("upstream request to {addr} failed: {source}")]
    Request {
        /// The endpoint.
        addr: SocketAddr,
        /// The error.
        source: hyper::Error,
    },
}

impl OriginateError {
    /// Whether the connection could not be established (Envoy `UF`, retry condition
    /// `connect-failure`), as opposed to a reset of an established one (`UC`, `reset`).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout(_) | Self::Handshake { .. }
        )
    }
}

/// A connection to an endpoint: an HBONE tunnel or plain TCP.
pub enum UpstreamIo {
    /// An HBONE tunnel.
    Hbone(H2Stream),
    /// Plain TCP.
    Tcp(TcpStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A pooled HTTP/1.1 sender and how many requests it has carried.
struct Http1Conn {
    sender: http1::SendRequest<RequestBody>,
    used: u32,
}

/// The pooled client connections of one endpoint.
#[derive(Default)]
struct EndpointConns {
    http1: Vec<Http1Conn>,
    http2: Option<http2::SendRequest<RequestBody>>,
}

/// Per-request connection settings from the cluster's connection pool.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Requests per HTTP/1.1 connection before it is closed (`None` = unlimited).
    pub max_requests_per_connection: Option<std::num::NonZeroU32>,
}

impl Default for ConnSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_requests_per_connection: None,
        }
    }
}

impl From<&crate::cluster::ConnectionLimits> for ConnSettings {
    fn from(limits: &crate::cluster::ConnectionLimits) -> Self {
        Self {
            connect_timeout: limits.connect_timeout,
            max_requests_per_connection: limits.max_requests_per_connection,
        }
    }
}

/// The `connect_originate` stage.
pub struct ConnectOriginate {
    pool: hbone::Pool,
    identities: Arc<IdentityManager>,
    identity: Identity,
    conns: Mutex<HashMap<SocketAddr, EndpointConns>>,
}

impl std::fmt::Debug for ConnectOriginate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOriginate")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ConnectOriginate {
    /// Tunnels through `pool` as `identity` (its certificate from `identities`).
    pub fn new(pool: hbone::Pool, identities: Arc<IdentityManager>, identity: Identity) -> Self {
        Self {
            pool,
            identities,
            identity,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The waypoint's certificate.
    async fn certificate(&self) -> Result<Arc<CertStore>, OriginateError> {
        self.identities
            .fetch(&self.identity)
            .await
            .map_err(|e| OriginateError::Identity(e.to_string()))
    }

    /// Opens a byte stream to the endpoint of `meta`.
    pub async fn open(
        &self,
        meta: &TunnelMetadata,
        connect_timeout: Duration,
    ) -> Result<UpstreamIo, OriginateError> {
        let addr = meta.target.address;
        let connect = async {
            match meta.transport() {
                Transport::Hbone { request, expected } => {
                    let cert = self.certificate().await?;
                    let dial = SocketAddr::new(addr.ip(), hbone::HBONE_PORT);
                    let tunnel = self
                        .pool
                        .connect(&cert, expected, dial, &request)
                        .await
                        .map_err(|e| OriginateError::Connect {
                            addr,
                            reason: e.to_string(),
                        })?;
                    Ok(UpstreamIo::Hbone(tunnel.stream))
                }
                Transport::Tcp => {
                    let stream =
                        TcpStream::connect(addr)
                            .await
                            .map_err(|e| OriginateError::Connect {
                                addr,
                                reason: e.to_string(),
                            })?;
                    let _ = stream.set_nodelay(true);
                    Ok(UpstreamIo::Tcp(stream))
                }
            }
        };
        tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| OriginateError::ConnectTimeout(addr))?
    }

    /// Sends `request` to the endpoint of `meta` over a pooled (or new) connection.
    pub async fn send(
        self: &Arc<Self>,
        meta: &TunnelMetadata,
        protocol: UpstreamProtocol,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, OriginateError> {
        match protocol {
            UpstreamProtocol::Http2 => self.send_http2(meta, settings, request).await,
            UpstreamProtocol::Http1 => self.send_http1(meta, settings, request).await,
        }
    }

    async fn send_http2(
        &self,
        meta: &TunnelMetadata,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, OriginateError> {
        let addr = meta.target.address;
        let pooled = {
            let conns = self.lock();
            conns
                .get(&addr)
                .and_then(|c| c.http2.clone())
                .filter(|s| !s.is_closed())
        };
        let mut sender = match pooled {
            Some(sender) => sender,
            None => {
                let io = self.open(meta, settings.connect_timeout).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|source| OriginateError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                self.lock().entry(addr).or_default().http2 = Some(sender.clone());
                sender
            }
        };
        let request = to_origin_form(request, UpstreamProtocol::Http2);
        sender
            .send_request(request)
            .await
            .map_err(|source| OriginateError::Request { addr, source })
    }

    async fn send_http1(
        self: &Arc<Self>,
        meta: &TunnelMetadata,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, OriginateError> {
        let addr = meta.target.address;
        let pooled = {
            let mut conns = self.lock();
            let entry = conns.entry(addr).or_default();
            let mut found = None;
            while let Some(conn) = entry.http1.pop() {
                if !conn.sender.is_closed() && conn.sender.is_ready() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => {
                let io = self.open(meta, settings.connect_timeout).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(io))
                    .await
                    .map_err(|source| OriginateError::Handshake { addr, source })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
                    }
                });
                Http1Conn { sender, used: 0 }
            }
        };
        conn.used += 1;
        let request = to_origin_form(request, UpstreamProtocol::Http1);
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(|source| OriginateError::Request { addr, source })?;
        let reusable = settings
            .max_requests_per_connection
            .is_none_or(|max| conn.used < max.get());
        if reusable {
            // Back to the pool once the response body has been read and the connection can
            // take the next request.
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if conn.sender.ready().await.is_ok() {
                    let mut conns = this.lock();
                    let entry = conns.entry(addr).or_default();
                    if entry.http1.len() < MAX_IDLE_PER_ENDPOINT {
                        entry.http1.push(conn);
                    }
                }
            });
        }
        Ok(response)
    }

    /// Drops the pooled connections of endpoints not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.lock().retain(|addr, _| keep(addr));
    }

    /// The number of endpoints with pooled connections.
    pub fn endpoints(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, EndpointConns>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// HTTP/1.1 requests go upstream in origin form (`/path`), with `Host`; HTTP/2 requests carry
/// the authority in the URI (`:authority`) and no `Host`.
fn to_origin_form(
    mut request: http::Request<RequestBody>,
    protocol: UpstreamProtocol,
) -> http::Request<RequestBody> {
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    match protocol {
        UpstreamProtocol::Http1 => {
            if let Ok(uri) = path.parse() {
                *request.uri_mut() = uri;
            }
            if let Some(authority) = authority
                && let Ok(value) = http::HeaderValue::from_str(&authority)
            {
                request.headers_mut().insert(http::header::HOST, value);
            }
            *request.version_mut() = http::Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            if let Some(authority) = authority
                && let Ok(uri) = http::Uri::builder()
                    .scheme("http")
                    .authority(authority.as_str())
                    .path_and_query(path.as_str())
                    .build()
            {
                *request.uri_mut() = uri;
            }
            request.headers_mut().remove(http::header::HOST);
            *request.version_mut() = http::Version::HTTP_2;
        }
    }
    request
}
