//! `connect_originate`: the last stage. It opens HBONE tunnels, as the waypoint's own identity,
//! to `podIP:15008` through the [`hbone::Pool`] (the destination ztunnel terminates them and
//! checks its policies against the waypoint's identity), plain TCP to workloads and hosts
//! outside the mesh, or TLS to external hosts when a DestinationRule originates it
//! ([`crate::egress::tls`]), and keeps HTTP client connections over those for reuse:
//!
//! - HTTP/2 upstreams: one connection per endpoint, multiplexed, on the h2 crate directly
//!   ([`http2`]): each request is driven by the task of the downstream request, with no task of
//!   its own; the connection's writes are coalesced ([`Coalesce`]) so that the frames queued in
//!   one turn of the scheduler leave together;
//! - HTTP/1.1 upstreams: idle connections per endpoint, each back in the pool once its response
//!   body has been read to the end ([`UpstreamBody`]), up to `maxRequestsPerConnection`
//!   requests;
//! - WebSocket upgrades: a new HTTP/1.1 connection per request ([`ConnectOriginate::send_upgrade`]),
//!   never pooled; after a `101` it carries the spliced bytes.
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
use foldhash::fast::RandomState as FastHash;
use hbone::{CertStore, H2Stream, Identity};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use ztunnel::identity::IdentityManager;

use super::inbound_pod::{Transport, TunnelMetadata};

mod coalesce;
mod http2;
pub use coalesce::Coalesce;

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
    /// The TLS handshake with an external host failed (certificate not trusted or not valid
    /// for the name, protocol error) or TLS could not be set up.
    #[error("TLS_error: {reason}")]
    Tls {
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
        /// The error (hyper's for HTTP/1.1, h2's for HTTP/2).
        source: BoxError,
    },
    /// The request failed after the connection was up (reset, closed, protocol error).
    #[error("upstream request to {addr} failed: {source}")]
    Request {
        /// The endpoint.
        addr: SocketAddr,
        /// The error (hyper's for HTTP/1.1, h2's for HTTP/2).
        source: BoxError,
    },
}

impl OriginateError {
    /// Maps an HTTP client's handshake error with `addr`.
    fn handshake<E: Into<BoxError>>(addr: SocketAddr) -> impl FnOnce(E) -> Self {
        move |source| Self::Handshake {
            addr,
            source: source.into(),
        }
    }

    /// Maps an HTTP client's request error with `addr`.
    fn request<E: Into<BoxError>>(addr: SocketAddr) -> impl FnOnce(E) -> Self {
        move |source| Self::Request {
            addr,
            source: source.into(),
        }
    }

    /// Whether the connection could not be established (Envoy `UF`, retry condition
    /// `connect-failure`), as opposed to a reset of an established one (`UC`, `reset`).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout(_)
                | Self::Handshake { .. }
                | Self::Tls { .. }
        )
    }
}

/// A connection to an endpoint: an HBONE tunnel, plain TCP or originated TLS.
pub enum UpstreamIo {
    /// An HBONE tunnel.
    Hbone(H2Stream),
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS originated to a host outside the mesh (boxed: the session state is large).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Hbone(s) => s.is_write_vectored(),
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    http2: Option<http2::Http2Conn>,
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
    /// Pooled connections by endpoint and TLS settings ([`TunnelMetadata::pool_key`]).
    conns: Mutex<HashMap<(SocketAddr, u64), EndpointConns, FastHash>>,
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
            conns: Mutex::new(HashMap::default()),
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
        let addr = meta.address;
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
                Transport::Tcp => Ok(UpstreamIo::Tcp(tcp_connect(addr).await?)),
                Transport::Tls(tls) => {
                    let stream = tcp_connect(addr).await?;
                    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                    let stream = connector
                        .connect(tls.server_name.clone(), stream)
                        .await
                        .map_err(|e| OriginateError::Tls {
                            addr,
                            reason: e.to_string(),
                        })?;
                    Ok(UpstreamIo::Tls(Box::new(stream)))
                }
            }
        };
        tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| OriginateError::ConnectTimeout(addr))?
    }

    /// Sends a WebSocket upgrade request to the endpoint of `meta` over a new HTTP/1.1
    /// connection of its own, never pooled: after a `101` the connection belongs to the
    /// upgraded stream (its `OnUpgrade` is in the response's extensions, see
    /// [`hyper::upgrade::on`]); after any other answer it closes once the response is read.
    pub async fn send_upgrade(
        &self,
        meta: &TunnelMetadata,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, OriginateError> {
        let addr = meta.address;
        let io = self.open(meta, settings.connect_timeout).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(OriginateError::handshake(addr))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream upgrade connection ended");
            }
        });
        let request = to_origin_form(request, UpstreamProtocol::Http1);
        let response = sender
            .send_request(request)
            .await
            .map_err(OriginateError::request(addr))?;
        Ok(response.map(|inner| UpstreamBody {
            inner: UpstreamInner::Http1(inner),
            release: None,
        }))
    }

    /// Sends `request` to the endpoint of `meta` over a pooled (or new) connection.
    pub async fn send(
        self: &Arc<Self>,
        meta: &TunnelMetadata,
        protocol: UpstreamProtocol,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, OriginateError> {
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
    ) -> Result<http::Response<UpstreamBody>, OriginateError> {
        let addr = meta.address;
        let key = meta.pool_key();
        let pooled = {
            let conns = self.lock();
            conns
                .get(&key)
                .and_then(|c| c.http2.clone())
                .filter(|c| !c.is_closed())
        };
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Box::pin(self.connect_http2(meta, settings)).await?;
                self.lock().entry(key).or_default().http2 = Some(conn.clone());
                conn
            }
        };
        let request = to_origin_form(request, UpstreamProtocol::Http2);
        let response = http2::exchange(&conn, request)
            .await
            .map_err(OriginateError::request(addr))?;
        Ok(response.map(|body| UpstreamBody {
            inner: UpstreamInner::Http2(body),
            release: None,
        }))
    }

    /// A new HTTP/2 connection to the endpoint of `meta`. Callers box this future: opening a
    /// connection (a TLS handshake, an HBONE tunnel) holds more state than a whole request
    /// exchange, and a request's future is as large as its largest step.
    async fn connect_http2(
        &self,
        meta: &TunnelMetadata,
        settings: ConnSettings,
    ) -> Result<http2::Http2Conn, OriginateError> {
        let addr = meta.address;
        let io = self.open(meta, settings.connect_timeout).await?;
        // One write per burst of frames: the HEADERS and DATA of the requests sent in one turn
        // of the scheduler.
        let streams = hbone::OpenStreams::default();
        http2::connect(Coalesce::new(io, Arc::clone(&streams)), addr, streams)
            .await
            .map_err(OriginateError::handshake(addr))
    }

    /// A new HTTP/1.1 connection to the endpoint of `meta`, its driver spawned. Boxed by
    /// callers, as [`Self::connect_http2`].
    async fn connect_http1(
        &self,
        meta: &TunnelMetadata,
        settings: ConnSettings,
    ) -> Result<Http1Conn, OriginateError> {
        let addr = meta.address;
        let io = self.open(meta, settings.connect_timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(OriginateError::handshake(addr))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(Http1Conn { sender, used: 0 })
    }

    async fn send_http1(
        self: &Arc<Self>,
        meta: &TunnelMetadata,
        settings: ConnSettings,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<UpstreamBody>, OriginateError> {
        let addr = meta.address;
        let key = meta.pool_key();
        let pooled = {
            let mut conns = self.lock();
            let entry = conns.entry(key).or_default();
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
            None => Box::pin(self.connect_http1(meta, settings)).await?,
        };
        conn.used += 1;
        let request = to_origin_form(request, UpstreamProtocol::Http1);
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(OriginateError::request(addr))?;
        // A 101 ends the connection's HTTP/1.1 (the listener refuses it as a protocol error).
        let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS
            && settings
                .max_requests_per_connection
                .is_none_or(|max| conn.used < max.get());
        let release = reusable.then(|| Release {
            originate: Arc::clone(self),
            key,
            conn,
        });
        Ok(response.map(|inner| UpstreamBody {
            inner: UpstreamInner::Http1(inner),
            release,
        }))
    }

    /// Puts an HTTP/1.1 connection whose exchange is over back in the pool. The connection
    /// takes its next request once hyper has seen the end of the response, which has
    /// usually happened by the time the response body has been read; if not yet, a task
    /// waits for it.
    fn release_http1(self: Arc<Self>, key: (SocketAddr, u64), mut conn: Http1Conn) {
        if conn.sender.is_ready() {
            self.pool_http1(key, conn);
            return;
        }
        if conn.sender.is_closed() {
            return;
        }
        tokio::spawn(async move {
            if conn.sender.ready().await.is_ok() {
                self.pool_http1(key, conn);
            }
        });
    }

    fn pool_http1(&self, key: (SocketAddr, u64), conn: Http1Conn) {
        let mut conns = self.lock();
        let entry = conns.entry(key).or_default();
        if entry.http1.len() < MAX_IDLE_PER_ENDPOINT {
            entry.http1.push(conn);
        }
    }

    /// Drops the pooled connections of endpoints not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.lock().retain(|(addr, _), _| keep(addr));
    }

    /// The endpoints (and TLS settings) with pooled connections.
    pub fn pooled_keys(&self) -> Vec<(SocketAddr, u64)> {
        self.lock().keys().copied().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, u64), EndpointConns, FastHash>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A TCP connection to `addr`, without Nagle.
async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, OriginateError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| OriginateError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A response body from upstream. The body of an HTTP/1.1 response on a reusable connection
/// puts the connection back in the pool when it ends (not when it is dropped halfway: hyper
/// closes such a connection).
pub struct UpstreamBody {
    inner: UpstreamInner,
    release: Option<Release>,
}

enum UpstreamInner {
    Http1(Incoming),
    Http2(http2::ResponseBody),
}

/// What returns an HTTP/1.1 connection to the pool.
struct Release {
    originate: Arc<ConnectOriginate>,
    key: (SocketAddr, u64),
    conn: Http1Conn,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(Release {
            originate,
            key,
            conn,
        }) = self.release.take()
        {
            originate.release_http1(key, conn);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            UpstreamInner::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
            UpstreamInner::Http1(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => this.release(),
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => this.release(),
                    Poll::Ready(Some(Err(_))) => this.release = None,
                    _ => {}
                }
                polled.map(|frame| frame.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            UpstreamInner::Http1(body) => body.is_end_stream(),
            UpstreamInner::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.inner {
            UpstreamInner::Http1(body) => body.size_hint(),
            UpstreamInner::Http2(body) => body.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was never polled because it was empty from the start (204, HEAD,
        // `content-length: 0`) is over too.
        if let UpstreamInner::Http1(body) = &self.inner
            && hyper::body::Body::is_end_stream(body)
        {
            self.release();
        }
    }
}

/// HTTP/1.1 requests go upstream in origin form (`/path`), with `Host`; HTTP/2 requests carry
/// the authority in the URI (`:authority`) and no `Host`.
fn to_origin_form(
    mut request: http::Request<RequestBody>,
    protocol: UpstreamProtocol,
) -> http::Request<RequestBody> {
    use http::header::HOST;
    use http::uri::{Authority, PathAndQuery, Scheme};
    let uri_authority = request.uri().authority().cloned();
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match protocol {
        UpstreamProtocol::Http1 => {
            *request.uri_mut() = http::Uri::from(path);
            let headers = request.headers_mut();
            match uri_authority {
                Some(authority) => {
                    if let Ok(value) = http::HeaderValue::from_str(authority.as_str()) {
                        headers.insert(HOST, value);
                    }
                }
                // `Host` is the authority already; only a repeated one changes (to its first).
                None => {
                    let mut hosts = headers.get_all(HOST).iter();
                    if let (Some(first), Some(_)) = (hosts.next(), hosts.next())
                        && first.to_str().is_ok()
                    {
                        let first = first.clone();
                        headers.insert(HOST, first);
                    }
                }
            }
            *request.version_mut() = http::Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            let authority = uri_authority.or_else(|| {
                let host = request.headers().get(HOST)?.to_str().ok()?;
                Authority::try_from(host).ok()
            });
            if let Some(authority) = authority {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority);
                parts.path_and_query = Some(path);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
            request.headers_mut().remove(HOST);
            *request.version_mut() = http::Version::HTTP_2;
        }
    }
    request
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::{BodyExt, Empty};

    use super::*;

    fn request(uri: &str, hosts: &[&str]) -> http::Request<RequestBody> {
        let mut request = http::Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *request.uri_mut() = uri.parse().unwrap();
        for host in hosts {
            request
                .headers_mut()
                .append(http::header::HOST, host.parse().unwrap());
        }
        request
    }

    fn hosts(request: &http::Request<RequestBody>) -> Vec<&str> {
        request
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn http1_upstream_requests_are_in_origin_form_with_host() {
        let r = to_origin_form(
            request("http://reviews:9080/a?b=1", &["other"]),
            UpstreamProtocol::Http1,
        );
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(hosts(&r), ["reviews:9080"]);
        assert_eq!(r.version(), http::Version::HTTP_11);

        let r = to_origin_form(request("/x", &["reviews"]), UpstreamProtocol::Http1);
        assert_eq!(r.uri(), "/x");
        assert_eq!(hosts(&r), ["reviews"]);

        let r = to_origin_form(request("/x", &["one", "two"]), UpstreamProtocol::Http1);
        assert_eq!(hosts(&r), ["one"]);

        let r = to_origin_form(request("reviews:9080", &[]), UpstreamProtocol::Http1);
        assert_eq!(r.uri(), "/");
        assert_eq!(hosts(&r), ["reviews:9080"]);
    }

    #[test]
    fn http2_upstream_requests_carry_the_authority_and_no_host() {
        let r = to_origin_form(
            request("/a?b=1", &["reviews:9080"]),
            UpstreamProtocol::Http2,
        );
        assert_eq!(r.uri(), "http://reviews:9080/a?b=1");
        assert!(hosts(&r).is_empty());
        assert_eq!(r.version(), http::Version::HTTP_2);

        let r = to_origin_form(
            request("https://ratings/x", &["ignored"]),
            UpstreamProtocol::Http2,
        );
        assert_eq!(r.uri(), "http://ratings/x");
        assert!(hosts(&r).is_empty());

        let r = to_origin_form(request("/x", &[]), UpstreamProtocol::Http2);
        assert_eq!(r.uri(), "/x");
    }
}
