//! The client side of a tunnel: what to ask for, and how one HTTP/2 connection is set up.
//!
//! [`TunnelRequest`] is what a listener hands to the [`crate::pool::Pool`]: the `CONNECT`
//! target and the HBONE headers. [`establish`] dials the peer, runs the mTLS handshake (the
//! server must present one of the expected SPIFFE identities), starts HTTP/2 and spawns the task
//! that drives the connection, keeps it alive with PINGs and releases it when idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::cert::CertStore;
use crate::coalesce::{Coalesce, OpenStreams};
use crate::config::Config;
use crate::error::Error;
use crate::identity::Identity;
use crate::sniff::{ConnSignals, Sniff};
use crate::tls;

/// A request for a tunnel: `CONNECT <authority>` plus headers.
#[derive(Clone, Debug)]
pub struct TunnelRequest {
    authority: http::uri::Authority,
    headers: HeaderMap,
}

impl TunnelRequest {
    /// A tunnel to `target` (`:authority` = `ip:port`).
    pub fn new(target: SocketAddr) -> Self {
        let authority = http::uri::Authority::try_from(target.to_string().as_str())
            // A SocketAddr always formats as a valid authority (`ip:port` or `[ip6]:port`).
            .unwrap_or_else(|_| http::uri::Authority::from_static("0.0.0.0:0"));
        Self {
            authority,
            headers: HeaderMap::new(),
        }
    }

    /// A tunnel to `host:port` (double HBONE: the inner `CONNECT` names a service hostname).
    pub fn to_host(host: &str, port: u16) -> Result<Self, Error> {
        let text = format!("{host}:{port}");
        let authority = http::uri::Authority::try_from(text.as_str())
            .map_err(|_| Error::InvalidAuthority(text))?;
        Ok(Self {
            authority,
            headers: HeaderMap::new(),
        })
    }

    /// Adds a header (`forwarded`, `baggage`, `traceparent`, …); see [`crate::headers`].
    pub fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.append(HeaderName::from_static(name), value);
        self
    }

    /// The `CONNECT` authority.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The headers sent with the request.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub(crate) fn to_http(&self) -> Result<http::Request<()>, Error> {
        let uri = http::Uri::builder()
            .authority(self.authority.clone())
            .build()
            .map_err(|_| Error::InvalidAuthority(self.authority.to_string()))?;
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(uri)
            .version(http::Version::HTTP_2)
            .body(())
            .map_err(|_| Error::InvalidAuthority(self.authority.to_string()))?;
        *req.headers_mut() = self.headers.clone();
        Ok(req)
    }
}

/// An HTTP/2 connection to a peer, ready for tunnels.
pub(crate) struct Established {
    pub(crate) send: h2::client::SendRequest<Bytes>,
    pub(crate) connection:
        h2::client::Connection<Sniff<Coalesce<tokio_rustls::client::TlsStream<TcpStream>>>, Bytes>,
    pub(crate) peer_identity: Identity,
}

/// Dials `destination`, authenticates it as one of `expected`, and starts HTTP/2. `shared` is
/// what the pool shares with the connection: where the server's signals are recorded, and the
/// count of its open tunnels. The caller spawns [`drive`] on the returned connection.
pub(crate) async fn establish(
    config: &Config,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    certs: Arc<CertStore>,
    expected: Vec<Identity>,
    destination: SocketAddr,
    (signals, streams): (Arc<ConnSignals>, OpenStreams),
    sockets: &dyn crate::socket::SocketFactory,
) -> Result<Established, Error> {
    let connect_error = |source| Error::Connect {
        addr: destination,
        source,
    };
    let socket = sockets.tcp(destination).map_err(connect_error)?;
    let tcp = tokio::time::timeout(config.connect_timeout, socket.connect(destination))
        .await
        .map_err(|_| Error::ConnectTimeout {
            addr: destination,
            timeout: config.connect_timeout,
        })?
        .map_err(connect_error)?;
    // Small writes (CONNECT headers, request/response traffic) must not wait for Nagle.
    let _ = tcp.set_nodelay(true);

    let client_config = tls::client_config(certs, roots, expected)?;
    let connector = tokio_rustls::TlsConnector::from(client_config);
    // The verifier checks the SPIFFE URI SAN; the server name is only a formality here.
    let name = ServerName::IpAddress(destination.ip().into());
    let tls_stream =
        tokio::time::timeout(config.tls_handshake_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| Error::HandshakeTimeout(config.tls_handshake_timeout))?
            .map_err(Error::from_handshake)?;
    let peer_identity = tls::peer_identity(tls_stream.get_ref().1)?;

    let io = Sniff::new(Coalesce::new(tls_stream, streams), signals);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(config.window_size)
        .initial_connection_window_size(config.connection_window_size)
        .max_frame_size(config.frame_size)
        .max_header_list_size(config.max_header_list_size)
        .max_send_buffer_size(config.window_size as usize)
        .enable_push(false)
        .handshake(io)
        .await?;
    Ok(Established {
        send,
        connection,
        peer_identity,
    })
}

/// Drives an HTTP/2 connection until it closes, or until keepalive PINGs go unanswered.
pub(crate) async fn drive<IO>(mut connection: h2::client::Connection<IO, Bytes>, config: Config)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The keepalive runs in a task of its own and reports a dead connection through a oneshot:
    // this task then polls a receiver at each wake-up rather than the keepalive's timer.
    let (dead_tx, dead_rx) = tokio::sync::oneshot::channel();
    if let (Some(ping), Some(interval)) = (connection.ping_pong(), config.keepalive_interval) {
        let timeout = config.keepalive_timeout;
        tokio::spawn(async move {
            let mut dead_tx = dead_tx;
            let reason = tokio::select! {
                reason = keepalive(ping, interval, timeout) => reason,
                // The connection ended first.
                () = dead_tx.closed() => return,
            };
            let _ = dead_tx.send(reason);
        });
    }
    tokio::select! {
        res = &mut connection => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "hbone client connection closed with error");
            }
        }
        // Without keepalive the sender is gone at once: `Err`, and the branch is disabled.
        Ok(reason) = dead_rx => {
            tracing::warn!(%reason, "hbone client connection torn down: keepalive failed");
        }
    }
}

/// Sends a PING every `interval`; returns why the connection is considered dead.
pub(crate) async fn keepalive(
    mut ping: h2::PingPong,
    interval: Duration,
    timeout: Duration,
) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => continue,
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no ping ack within {timeout:?}"),
        }
    }
}
