//! Relaying queries the proxy does not answer to the pod's upstream resolvers.
//!
//! The client's query bytes go out unchanged (same id, flags, EDNS) over the transport they
//! came in on, from a fresh socket per query (random source port); the first well-formed answer
//! (QR set, same id) comes back unchanged. Upstreams are tried in order, each with its own
//! deadline, until one answers. A UDP answer with TC set is relayed as it is, so the client
//! retries over TCP itself; a UDP answer larger than the proxy accepts is replaced by a
//! truncated response for the same reason.
//!
//! Sockets come from an [`UpstreamSockets`]: in a pod they must be created inside the pod's
//! network namespace and carry ztunnel's mark, so the capture rules do not send them back to
//! the proxy (and the upstream sees the pod's address).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::message::{is_response_to, message_id};
use super::metrics::Transport;

/// Creates the sockets forwarded queries leave from.
pub trait UpstreamSockets: Send + Sync + fmt::Debug {
    /// A UDP socket bound to an ephemeral port of `upstream`'s family.
    fn udp(&self, upstream: SocketAddr) -> io::Result<UdpSocket>;
    /// A TCP socket of `upstream`'s family, not yet connected.
    fn tcp(&self, upstream: SocketAddr) -> io::Result<TcpSocket>;
}

/// Sockets in the calling thread's network namespace, optionally marked (`SO_MARK`, Linux
/// only; needs `CAP_NET_ADMIN`). Tests and runs without capture use `PlainSockets::default()`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainSockets {
    /// Mark to set on every socket (ztunnel's is `0x539`), if any.
    pub mark: Option<u32>,
}

impl PlainSockets {
    /// A socket2 socket of `upstream`'s family, marked and non-blocking.
    fn socket(&self, upstream: SocketAddr, ty: socket2::Type) -> io::Result<socket2::Socket> {
        let protocol = if ty == socket2::Type::DGRAM {
            socket2::Protocol::UDP
        } else {
            socket2::Protocol::TCP
        };
        let socket =
            socket2::Socket::new(socket2::Domain::for_address(upstream), ty, Some(protocol))?;
        if let Some(mark) = self.mark {
            set_mark(&socket, mark)?;
        }
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

#[cfg(target_os = "linux")]
fn set_mark(socket: &socket2::Socket, mark: u32) -> io::Result<()> {
    socket.set_mark(mark)
}

#[cfg(not(target_os = "linux"))]
fn set_mark(_socket: &socket2::Socket, _mark: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "socket marks need Linux",
    ))
}

impl UpstreamSockets for PlainSockets {
    fn udp(&self, upstream: SocketAddr) -> io::Result<UdpSocket> {
        let socket = self.socket(upstream, socket2::Type::DGRAM)?;
        let any: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        socket.bind(&SocketAddr::new(any, 0).into())?;
        UdpSocket::from_std(socket.into())
    }

    fn tcp(&self, upstream: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self.socket(upstream, socket2::Type::STREAM)?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

/// Why a forwarded query got no answer from one upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No upstream resolver is configured.
    #[error("no upstream resolver")]
    NoUpstream,
    /// A query without a DNS header cannot be matched with an answer.
    #[error("query has no dns header")]
    NoHeader,
    /// The socket could not be created, connected, written or read.
    #[error("upstream {upstream}: {source}")]
    Io {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// No answer before the deadline.
    #[error("upstream {upstream}: no answer within {timeout:?}")]
    Timeout {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// The deadline.
        timeout: Duration,
    },
    /// The TCP answer does not answer the query (wrong id, or not a response).
    #[error("upstream {upstream}: answer does not match the query")]
    Mismatch {
        /// The upstream resolver.
        upstream: SocketAddr,
    },
}

/// What an upstream sent back.
#[derive(Debug, PartialEq, Eq)]
pub enum Relay {
    /// The answer, to relay unchanged.
    Answer(Vec<u8>),
    /// A UDP answer larger than the proxy accepts: tell the client to retry over TCP.
    TooLarge,
}

/// Forwarding settings.
#[derive(Clone, Copy, Debug)]
pub struct ForwardLimits {
    /// Deadline of each upstream attempt (connect, send, answer).
    pub timeout: Duration,
    /// Largest UDP answer accepted from upstream.
    pub max_udp_message: usize,
    /// At most this many upstreams are tried per query.
    pub max_attempts: usize,
}

/// Sends `query` to `upstreams` in order over `transport` until one answers; returns the
/// answer, or the last upstream's error.
pub async fn forward(
    sockets: &dyn UpstreamSockets,
    upstreams: &[SocketAddr],
    query: &[u8],
    transport: Transport,
    limits: ForwardLimits,
) -> Result<Relay, ForwardError> {
    let id = message_id(query).ok_or(ForwardError::NoHeader)?;
    let mut last = ForwardError::NoUpstream;
    for &upstream in upstreams.iter().take(limits.max_attempts.max(1)) {
        let attempt = async {
            match transport {
                Transport::Udp => udp_exchange(sockets, upstream, query, id, limits).await,
                Transport::Tcp => tcp_exchange(sockets, upstream, query, id).await,
            }
        };
        let result = match tokio::time::timeout(limits.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout {
                upstream,
                timeout: limits.timeout,
            }),
        };
        match result {
            Ok(relay) => return Ok(relay),
            Err(e) => {
                tracing::debug!(error = %e, "dns upstream attempt failed");
                last = e;
            }
        }
    }
    Err(last)
}

/// One query over UDP: the first datagram that answers it (QR set, same id) wins; others are
/// ignored. The connected socket only receives from `upstream`.
async fn udp_exchange(
    sockets: &dyn UpstreamSockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    limits: ForwardLimits,
) -> Result<Relay, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let socket = sockets.udp(upstream).map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(query).await.map_err(io)?;
    // One byte more than accepted, to tell a too-large answer from one that just fits.
    let mut buf = vec![0u8; limits.max_udp_message + 1];
    loop {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        let answer = &buf[..len];
        if !is_response_to(answer, id) {
            continue;
        }
        if len > limits.max_udp_message {
            return Ok(Relay::TooLarge);
        }
        return Ok(Relay::Answer(answer.to_vec()));
    }
}

/// One query over TCP: a length-prefixed message each way on a fresh connection.
async fn tcp_exchange(
    sockets: &dyn UpstreamSockets,
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
) -> Result<Relay, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let socket = sockets.tcp(upstream).map_err(io)?;
    let mut stream = socket.connect(upstream).await.map_err(io)?;
    let _ = stream.set_nodelay(true);
    write_message(&mut stream, query).await.map_err(io)?;
    let answer = read_message(&mut stream, usize::from(u16::MAX))
        .await
        .map_err(io)?
        .ok_or_else(|| io(io::ErrorKind::UnexpectedEof.into()))?;
    if !is_response_to(&answer, id) {
        return Err(ForwardError::Mismatch { upstream });
    }
    Ok(Relay::Answer(answer))
}

/// Writes one length-prefixed DNS message (RFC 1035 §4.2.2).
pub async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "dns message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Reads one length-prefixed DNS message of at most `max` bytes; `None` on a clean end of
/// stream before the length.
pub async fn read_message(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("dns message of {len} bytes over the {max}-byte limit"),
        ));
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}
