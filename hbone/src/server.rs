//! The server side of HBONE: accept mTLS connections on port 15008 and hand each `CONNECT` to a
//! handler.
//!
//! Per connection: TLS handshake within a deadline (the client must present a certificate from
//! the mesh roots with one SPIFFE identity), HTTP/2 with bounded windows and streams, then one
//! task per stream. A request that is not `CONNECT`, or whose authority is missing, gets 400; the
//! rest reach the [`Handler`] with the request metadata and the peer's verified identity, and the
//! handler decides the status (200 with a byte stream, or 401/503/… ).
//!
//! Draining: when asked to shut down, the server stops accepting, sends `GOAWAY` on every
//! connection and lets in-flight tunnels finish; after the drain deadline the rest are closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cert::PeerCertificate;
use crate::client::keepalive;
use crate::coalesce::{Coalesce, OpenStream, OpenStreams};
use crate::config::Config;
use crate::error::Error;
use crate::headers::{self, TraceParent};
use crate::identity::Identity;
use crate::stream::{H2Stream, Hold};
use crate::tls;
use crate::workers::Workers;

/// A tunnel request as the handler sees it.
#[derive(Debug)]
pub struct InboundRequest {
    /// The `CONNECT` authority (`ip:port`, or `host:port` for double HBONE).
    pub authority: http::uri::Authority,
    /// The request headers (`forwarded`, `baggage`, `traceparent`, …).
    pub headers: HeaderMap,
    /// The identity the client proved in the TLS handshake.
    pub peer_identity: Identity,
    /// The client's leaf certificate, shared by the streams of its connection.
    pub peer_certificate: Option<Arc<PeerCertificate>>,
    /// The client's address on this connection.
    pub peer_addr: SocketAddr,
    /// The address the client connected to.
    pub local_addr: SocketAddr,
}

impl InboundRequest {
    /// The target as a socket address; fails when the authority is a hostname.
    pub fn target(&self) -> Result<SocketAddr, Error> {
        self.authority
            .as_str()
            .parse()
            .map_err(|_| Error::InvalidAuthority(self.authority.to_string()))
    }

    /// The original client from the `forwarded` header, when present and well-formed.
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        self.headers
            .get(headers::FORWARDED)
            .and_then(headers::forwarded_for)
    }

    /// The source workload's baggage.
    pub fn baggage(&self) -> Vec<(String, String)> {
        self.headers
            .get(headers::BAGGAGE)
            .map(headers::parse_baggage)
            .unwrap_or_default()
    }

    /// The connection's trace context.
    pub fn traceparent(&self) -> Option<TraceParent> {
        self.headers
            .get(headers::TRACEPARENT)
            .and_then(TraceParent::parse)
    }
}

/// Answers one tunnel request. Dropping it unanswered answers 500.
#[derive(Debug)]
pub struct Responder {
    respond: Option<h2::server::SendResponse<Bytes>>,
    recv: Option<h2::RecvStream>,
    /// The stream, counted among its connection's open streams until it ends.
    open: Option<OpenStream>,
}

impl Responder {
    /// Answers 200 (with `headers`) and returns the tunnel's byte stream.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, Error> {
        let (Some(mut respond), Some(recv)) = (self.respond.take(), self.recv.take()) else {
            return Err(Error::Status(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let mut response = http::Response::new(());
        *response.headers_mut() = headers;
        let send = respond.send_response(response, false)?;
        let hold = self.open.take().map_or(Hold::None, Hold::Served);
        Ok(H2Stream::new(send, recv, hold))
    }

    /// Refuses the tunnel with `status`.
    pub fn reject(mut self, status: StatusCode) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, status);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            send_status(respond, StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
}

fn send_status(mut respond: h2::server::SendResponse<Bytes>, status: StatusCode) {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    // The client may already be gone; nothing to do then.
    let _ = respond.send_response(response, true);
}

/// Decides what happens to each tunnel request.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request; runs in its own task.
    fn handle(
        &self,
        request: InboundRequest,
        responder: Responder,
    ) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(InboundRequest, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(
        &self,
        request: InboundRequest,
        responder: Responder,
    ) -> impl Future<Output = ()> + Send {
        self(request, responder)
    }
}

/// Signals that stop a server: `drain` starts a graceful shutdown, `force` ends what is left.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop accepting, send GOAWAY, let in-flight tunnels finish.
    pub drain: CancellationToken,
    /// Close every connection now.
    pub force: CancellationToken,
}

/// An HBONE server: a TLS configuration, a handler and the HTTP/2 limits.
#[derive(Debug)]
pub struct Server<H> {
    config: Config,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<H>,
}

impl<H: Handler> Server<H> {
    /// Creates a server; `tls` comes from [`crate::tls::server_config`].
    pub fn new(config: Config, tls: Arc<rustls::ServerConfig>, handler: H) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            config,
            tls,
            handler: Arc::new(handler),
        })
    }

    /// Accepts connections on `listener` until `shutdown.drain`, then waits for the open
    /// connections to finish, for at most `drain_deadline` before forcing them closed. Each
    /// connection is served by a task of the calling runtime.
    pub async fn run(self, listener: TcpListener, shutdown: Shutdown, drain_deadline: Duration) {
        self.serve(listener, None, shutdown, drain_deadline).await;
    }

    /// As [`Server::run`], but each accepted connection is served on one of `workers`, in
    /// turn; the listener itself stays on the calling runtime.
    pub async fn run_on(
        self,
        listener: TcpListener,
        workers: &Workers,
        shutdown: Shutdown,
        drain_deadline: Duration,
    ) {
        self.serve(listener, Some(workers), shutdown, drain_deadline)
            .await;
    }

    async fn serve(
        self,
        listener: TcpListener,
        workers: Option<&Workers>,
        shutdown: Shutdown,
        drain_deadline: Duration,
    ) {
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.drain.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let (config, tls, handler, shutdown) =
                            (self.config.clone(), self.tls.clone(), self.handler.clone(), shutdown.clone());
                        let Some(workers) = workers else {
                            tracker.spawn(async move {
                                connection_task(&config, tls, tcp, handler, shutdown, peer).await;
                            });
                            continue;
                        };
                        // Registered again with the reactor of the worker that serves it.
                        let tcp = match tcp.into_std() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "hbone connection could not be handed to a worker");
                                continue;
                            }
                        };
                        workers.spawn(tracker.track_future(async move {
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => connection_task(&config, tls, tcp, handler, shutdown, peer).await,
                                Err(e) => tracing::warn!(%peer, error = %e, "hbone connection could not be registered on its worker"),
                            }
                        }));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "hbone accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(drain_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "drain deadline passed; closing hbone connections"
            );
            shutdown.force.cancel();
            tracker.wait().await;
        }
    }
}

/// Serves one accepted connection and logs how it ended.
async fn connection_task<H: Handler>(
    config: &Config,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    handler: Arc<H>,
    shutdown: Shutdown,
    peer: SocketAddr,
) {
    if let Err(e) = serve_connection(config, tls, tcp, handler, shutdown).await {
        tracing::debug!(%peer, error = %e, "hbone connection ended with error");
    }
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve_connection<H: Handler>(
    config: &Config,
    tls: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    handler: Arc<H>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let peer_addr = tcp.peer_addr()?;
    let local_addr = tcp.local_addr()?;
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let deadline = config.tls_handshake_timeout;
    let streams = OpenStreams::default();
    let handshake = async {
        let tls_stream = acceptor.accept(tcp).await.map_err(Error::from_handshake)?;
        let peer_identity = tls::peer_identity(tls_stream.get_ref().1)?;
        let peer_certificate = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| Arc::new(PeerCertificate::new(leaf.clone().into_owned())));
        let tls_stream = Coalesce::new(tls_stream, Arc::clone(&streams));
        let conn = h2::server::Builder::new()
            .initial_window_size(config.window_size)
            .initial_connection_window_size(config.connection_window_size)
            .max_frame_size(config.frame_size)
            .max_concurrent_streams(config.server_max_concurrent_streams)
            .max_header_list_size(config.max_header_list_size)
            .max_send_buffer_size(config.window_size as usize)
            .handshake::<_, Bytes>(tls_stream)
            .await?;
        Ok::<_, Error>((conn, (peer_identity, peer_certificate)))
    };
    // Boxed, and freed once done: the TLS and HTTP/2 handshakes are large futures, and the
    // connection's task would otherwise keep room for them beside the connection for its whole
    // life.
    let (mut conn, (peer_identity, peer_certificate)) =
        Box::pin(tokio::time::timeout(deadline, handshake))
            .await
            .map_err(|_| Error::HandshakeTimeout(deadline))??;

    let (ping, interval, timeout) = (
        conn.ping_pong(),
        config.keepalive_interval,
        config.keepalive_timeout,
    );
    let keepalive = async move {
        match (ping, interval) {
            (Some(ping), Some(interval)) => keepalive(ping, interval, timeout).await,
            _ => std::future::pending().await,
        }
    };
    // A `Drain`, then maybe one other event: room for both, so the watcher never waits.
    let (events_tx, mut events) = tokio::sync::mpsc::channel(2);
    tokio::spawn(watch(shutdown, keepalive, events_tx));
    // Polled until it ends (the watcher gone): an ended receiver answers at once, forever.
    let mut watched = true;
    loop {
        tokio::select! {
            event = events.recv(), if watched => match event {
                Some(Event::Drain) => conn.graceful_shutdown(),
                Some(Event::Force) => {
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    // Flush the GOAWAY, briefly; the connection is dropped either way.
                    let _ = tokio::time::timeout(Duration::from_millis(100), std::future::poll_fn(|cx| conn.poll_closed(cx))).await;
                    return Ok(());
                }
                Some(Event::Dead(reason)) => {
                    tracing::warn!(%peer_addr, %reason, "hbone server connection torn down: keepalive failed");
                    return Ok(());
                }
                // The watcher is gone (its runtime is shutting down): nothing more to wait for.
                None => watched = false,
            },
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let peer = (&peer_identity, peer_certificate.as_ref());
                    let addrs = (peer_addr, local_addr);
                    let Some(call) = check(request, respond, peer, addrs, &streams) else {
                        continue;
                    };
                    tokio::spawn(tunnel_task(handler.clone(), Box::new(call)));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// What a connection's watcher tells its task.
enum Event {
    /// The server's `drain` signal: send GOAWAY, let the streams finish.
    Drain,
    /// The server's `force` signal: close now.
    Force,
    /// Keepalive PINGs went unanswered, for this reason.
    Dead(String),
}

/// Watches what ends or drains one connection: the server's shutdown signals and the
/// keepalive PINGs, in a task of its own. The connection's task polls one channel receiver
/// instead of these timers and cancellation tokens, which it would otherwise poll at each of
/// its wake-ups, once or twice per request on a busy connection. Sends at most a `Drain` and
/// then one of the others, and ends after that or when the connection's task is gone.
async fn watch(
    shutdown: Shutdown,
    keepalive: impl Future<Output = String>,
    events: tokio::sync::mpsc::Sender<Event>,
) {
    tokio::pin!(keepalive);
    let mut draining = false;
    let last = loop {
        tokio::select! {
            () = shutdown.force.cancelled() => break Event::Force,
            reason = &mut keepalive => break Event::Dead(reason),
            () = shutdown.drain.cancelled(), if !draining => {
                draining = true;
                if events.send(Event::Drain).await.is_err() {
                    return;
                }
            }
            () = events.closed() => return,
        }
    };
    let _ = events.send(last).await;
}

/// The task of one tunnel: the handler's future, and 16 bytes besides. The request comes boxed
/// and is moved out at the first poll: a task's state keeps what it captured for its whole
/// life, and a tunnel's task may live for days.
// Not an `async fn`: that would keep its arguments twice (as captured and as bound).
#[allow(clippy::manual_async_fn)]
fn tunnel_task<H: Handler>(
    handler: Arc<H>,
    call: Box<(InboundRequest, Responder)>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // `unbox` frees the box now; a partial move out of `*call` here would keep it
        // allocated until the task ends.
        let (request, responder) = unbox(call);
        handler.handle(request, responder).await;
    }
}

/// How many bytes of state the server keeps in the task of each open tunnel served by `H` (the
/// handler's future included), not counting the runtime's own per-task header. For memory
/// regression tests: every open tunnel holds this for its whole life.
pub fn tunnel_task_size<H: Handler>() -> usize {
    fn output_size<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    output_size(tunnel_task::<H>)
}

/// Moves a value out of its box and frees the box.
#[allow(clippy::boxed_local)] // Taking the box is the point: it is freed on return.
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Checks the request is a well-formed `CONNECT` (else answers 400) and makes the handler's
/// arguments.
fn check(
    request: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    (peer_identity, peer_certificate): (&Identity, Option<&Arc<PeerCertificate>>),
    (peer_addr, local_addr): (SocketAddr, SocketAddr),
    streams: &OpenStreams,
) -> Option<(InboundRequest, Responder)> {
    if request.method() != http::Method::CONNECT {
        tracing::debug!(method = %request.method(), %peer_addr, "non-CONNECT request refused");
        send_status(respond, StatusCode::BAD_REQUEST);
        return None;
    }
    let Some(authority) = request.uri().authority().cloned() else {
        send_status(respond, StatusCode::BAD_REQUEST);
        return None;
    };
    let (parts, recv) = request.into_parts();
    let inbound = InboundRequest {
        authority,
        headers: parts.headers,
        peer_identity: peer_identity.clone(),
        peer_certificate: peer_certificate.cloned(),
        peer_addr,
        local_addr,
    };
    let responder = Responder {
        respond: Some(respond),
        recv: Some(recv),
        open: Some(OpenStream::new(streams)),
    };
    Some((inbound, responder))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::stream::tests::{ClientSide, connect_pair};

    /// A `CONNECT` received on an in-memory HTTP/2 connection (no TLS) and checked as the
    /// server checks it, counted in `streams`; the client's side is kept so that its stream and
    /// connection stay open.
    async fn checked(streams: &OpenStreams) -> ((InboundRequest, Responder), ClientSide) {
        let (request, respond, client) = connect_pair().await;
        let identity = Identity::new("cluster.local", "default", "sleep").unwrap();
        let addr: SocketAddr = "127.0.0.1:15008".parse().unwrap();
        let call = check(request, respond, (&identity, None), (addr, addr), streams).unwrap();
        (call, client)
    }

    /// A tunnel counts as open on its connection from the moment it is checked until its
    /// stream is dropped; another writer counted on it holds one more until it is dropped.
    #[tokio::test]
    async fn a_served_tunnel_is_counted_open_until_its_stream_is_dropped() {
        let streams = OpenStreams::default();
        let open = || streams.load(Ordering::Relaxed);
        let ((_, responder), _client) = checked(&streams).await;
        assert_eq!(open(), 1, "checked, not yet answered");
        let stream = responder.accept(HeaderMap::new()).unwrap();
        assert_eq!(open(), 1);
        let writer = stream.count_another_writer().unwrap();
        assert_eq!(open(), 2);
        drop(writer);
        assert_eq!(open(), 1);
        drop(stream);
        assert_eq!(open(), 0);
    }

    /// A refused tunnel, or one dropped unanswered, no longer counts.
    #[tokio::test]
    async fn a_refused_tunnel_is_no_longer_counted() {
        let streams = OpenStreams::default();
        let ((_, responder), _client) = checked(&streams).await;
        responder.reject(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(streams.load(Ordering::Relaxed), 0);
        let ((_, responder), _client) = checked(&streams).await;
        drop(responder);
        assert_eq!(streams.load(Ordering::Relaxed), 0);
    }
}
