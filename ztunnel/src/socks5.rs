//! SOCKS5 server protocol (RFC 1928), server side, without authentication.
//!
//! Upstream ztunnel offers an opt-in SOCKS5 listener (`127.0.0.1:15080`) so that local
//! applications can send traffic into the mesh without traffic-capture rules. This module is the
//! wire protocol of that listener, and nothing else: [`handshake`] reads the method negotiation
//! and the `CONNECT` request and returns the [`Destination`]; once the caller has tried to reach
//! it, [`reply`] tells the client how that went. After a [`Reply::Succeeded`] the stream carries
//! the application's bytes.
//!
//! ```text
//! client                              server
//! 05 NMETHODS METHODS...       ->
//!                              <-     05 00          (NO AUTHENTICATION REQUIRED)
//! 05 01 00 ATYP ADDR PORT      ->                    (CONNECT)
//!                              <-     05 REP 00 ATYP BND.ADDR BND.PORT   (reply())
//! ```
//!
//! Everything the peer controls is bounded: the handshake reads exactly the bytes the protocol
//! calls for (never beyond the request, so bytes the client pipelines after it stay in the
//! stream), into fixed-size buffers, and the whole exchange has a deadline.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[cfg(test)]
mod tests;

/// The protocol version byte of SOCKS5.
const VERSION: u8 = 0x05;
/// Method: no authentication required.
const METHOD_NO_AUTH: u8 = 0x00;
/// Method selection answer: no acceptable methods.
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Command: CONNECT.
const CMD_CONNECT: u8 = 0x01;
/// Address type: IPv4 address.
const ATYP_IPV4: u8 = 0x01;
/// Address type: fully-qualified domain name.
const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6 address.
const ATYP_IPV6: u8 = 0x04;

/// Where the client asked to be connected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An IP address and port (`ATYP` IPv4 or IPv6, or a domain that was an IP literal).
    Addr(SocketAddr),
    /// A host name and port, still to be resolved. The name is 1 to 255 bytes of ASCII letters,
    /// digits, `-`, `.` and `_`.
    Domain(String, u16),
}

impl Destination {
    /// The destination port.
    pub fn port(&self) -> u16 {
        match self {
            Destination::Addr(addr) => addr.port(),
            Destination::Domain(_, port) => *port,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Addr(addr) => write!(f, "{addr}"),
            Destination::Domain(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// The reply field (`REP`) of a SOCKS5 reply, with its RFC 1928 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `0x00`: succeeded.
    Succeeded,
    /// `0x01`: general SOCKS server failure.
    GeneralFailure,
    /// `0x02`: connection not allowed by ruleset.
    NotAllowed,
    /// `0x03`: network unreachable.
    NetworkUnreachable,
    /// `0x04`: host unreachable.
    HostUnreachable,
    /// `0x05`: connection refused.
    ConnectionRefused,
    /// `0x06`: TTL expired.
    TtlExpired,
    /// `0x07`: command not supported.
    CommandNotSupported,
    /// `0x08`: address type not supported.
    AddressTypeNotSupported,
}

impl Reply {
    /// The `REP` byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Reply::Succeeded => 0x00,
            Reply::GeneralFailure => 0x01,
            Reply::NotAllowed => 0x02,
            Reply::NetworkUnreachable => 0x03,
            Reply::HostUnreachable => 0x04,
            Reply::ConnectionRefused => 0x05,
            Reply::TtlExpired => 0x06,
            Reply::CommandNotSupported => 0x07,
            Reply::AddressTypeNotSupported => 0x08,
        }
    }

    /// The reply that best describes a failure to connect to the destination.
    pub fn from_io_error(err: &io::Error) -> Reply {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::TimedOut => Reply::TtlExpired,
            io::ErrorKind::PermissionDenied => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        }
    }
}

/// Why a SOCKS5 handshake failed.
///
/// [`Socks5Error::reply`] tells which reply, if any, [`handshake`] already sent to the client
/// before returning the error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Socks5Error {
    /// The greeting or the request carried this version byte instead of `0x05`. Nothing was sent
    /// back: the peer does not speak SOCKS5.
    #[error("not SOCKS5: version byte {0:#04x}")]
    BadVersion(u8),
    /// The client did not offer "no authentication required" (`0x00`), the only method served.
    /// The method selection `05 FF` was sent.
    #[error("the client offered no acceptable authentication method")]
    NoAcceptableMethod,
    /// The command was not `CONNECT` (`BIND` is `0x02`, `UDP ASSOCIATE` `0x03`). Reply `0x07` was
    /// sent. Takes precedence over a bad reserved byte or domain name, not over an unsupported
    /// address type.
    #[error("SOCKS5 command {0:#04x} not supported")]
    UnsupportedCommand(u8),
    /// The reserved byte of the request was not zero. Reply `0x01` was sent.
    #[error("SOCKS5 request reserved byte is {0:#04x}, not zero")]
    BadReserved(u8),
    /// The address type was not IPv4 (`0x01`), domain name (`0x03`) or IPv6 (`0x04`). Reply
    /// `0x08` was sent. The address could not be read (its length is unknown), so if the client
    /// sent one, closing the socket may reset the connection before the client reads the reply.
    #[error("SOCKS5 address type {0:#04x} not supported")]
    UnsupportedAddressType(u8),
    /// The domain name was empty or held bytes other than ASCII letters, digits, `-`, `.` and
    /// `_`. Reply `0x01` was sent.
    #[error("SOCKS5 request carries an invalid domain name")]
    BadDomain,
    /// The handshake did not complete before its deadline. Nothing more is sent.
    #[error("SOCKS5 handshake timed out")]
    Timeout,
    /// Reading from or writing to the client failed; an early end of stream is
    /// [`io::ErrorKind::UnexpectedEof`]. Nothing more can be sent.
    #[error("SOCKS5 handshake I/O: {0}")]
    Io(#[from] io::Error),
}

impl Socks5Error {
    /// The reply that goes with this error: [`handshake`] has already sent it (best effort: a
    /// failure to write it is not reported over the original error). `None` when no reply fits,
    /// because the peer does not speak SOCKS5, the method negotiation failed (the client got
    /// `05 FF` instead), or the stream is gone or timed out.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Socks5Error::UnsupportedCommand(_) => Some(Reply::CommandNotSupported),
            Socks5Error::UnsupportedAddressType(_) => Some(Reply::AddressTypeNotSupported),
            Socks5Error::BadReserved(_) | Socks5Error::BadDomain => Some(Reply::GeneralFailure),
            Socks5Error::BadVersion(_)
            | Socks5Error::NoAcceptableMethod
            | Socks5Error::Timeout
            | Socks5Error::Io(_) => None,
        }
    }
}

/// Runs the server side of a SOCKS5 handshake on `stream`: method negotiation (only "no
/// authentication required" is accepted) and a `CONNECT` request, all within `deadline`.
///
/// On success the client is waiting for the outcome of the connection: answer it with
/// [`reply`]. On failure the reply that [`Socks5Error::reply`] names has already been sent and
/// the stream should be closed. Reads exactly the bytes of the greeting and the request, so
/// anything the client pipelined after them is still in `stream`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Result<Destination, Socks5Error> {
    match tokio::time::timeout(deadline, negotiate(stream)).await {
        Ok(result) => result,
        Err(_) => Err(Socks5Error::Timeout),
    }
}

/// Writes a SOCKS5 reply, `05 REP 00 ATYP BND.ADDR BND.PORT`, and flushes it. `bound` is the
/// address the server uses towards the destination (clients rarely look at it; on failure
/// `0.0.0.0:0` is customary).
pub async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    result: Reply,
    bound: SocketAddr,
) -> io::Result<()> {
    // 4 header bytes, at most 16 address bytes, 2 port bytes.
    let mut buf = [0u8; 22];
    buf[0] = VERSION;
    buf[1] = result.code();
    buf[2] = 0x00;
    let addr_end = match bound.ip() {
        IpAddr::V4(ip) => {
            buf[3] = ATYP_IPV4;
            buf[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            buf[3] = ATYP_IPV6;
            buf[4..20].copy_from_slice(&ip.octets());
            20
        }
    };
    let end = addr_end + 2;
    buf[addr_end..end].copy_from_slice(&bound.port().to_be_bytes());
    stream.write_all(&buf[..end]).await?;
    stream.flush().await
}

/// The handshake without its deadline.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Destination, Socks5Error> {
    // Greeting: VER NMETHODS METHODS (NMETHODS is a byte, so at most 255 methods).
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let [version, nmethods] = head;
    if version != VERSION {
        return Err(Socks5Error::BadVersion(version));
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..usize::from(nmethods)];
    stream.read_exact(methods).await?;
    if !methods.contains(&METHOD_NO_AUTH) {
        // Best effort: the error matters more than whether the peer hears it.
        let _ = send(stream, &[VERSION, METHOD_NONE_ACCEPTABLE]).await;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    send(stream, &[VERSION, METHOD_NO_AUTH]).await?;

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT. The address is read in full before the
    // command and reserved byte are judged, so that a refused request leaves no unread bytes
    // behind (closing a TCP socket with unread data resets the connection, and the client would
    // lose the reply).
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let [version, command, reserved, atyp] = head;
    if version != VERSION {
        return Err(Socks5Error::BadVersion(version));
    }
    let destination = match atyp {
        ATYP_IPV4 => {
            let mut buf = [0u8; 6];
            stream.read_exact(&mut buf).await?;
            let [a, b, c, d, p0, p1] = buf;
            let ip = Ipv4Addr::new(a, b, c, d);
            let port = u16::from_be_bytes([p0, p1]);
            Some(Destination::Addr(SocketAddrV4::new(ip, port).into()))
        }
        ATYP_IPV6 => {
            let mut buf = [0u8; 18];
            stream.read_exact(&mut buf).await?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&buf[..16]);
            let port = u16::from_be_bytes([buf[16], buf[17]]);
            let ip = Ipv6Addr::from(octets);
            Some(Destination::Addr(SocketAddrV6::new(ip, port, 0, 0).into()))
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let len = usize::from(len[0]);
            // At most 255 name bytes and 2 port bytes.
            let mut buf = [0u8; 257];
            let buf = &mut buf[..len + 2];
            stream.read_exact(buf).await?;
            let (name, port) = buf.split_at(len);
            let port = u16::from_be_bytes([port[0], port[1]]);
            parse_domain(name, port)
        }
        // The length of an unknown address is unknown: answer at once.
        other => return Err(fail(stream, Socks5Error::UnsupportedAddressType(other)).await),
    };
    if command != CMD_CONNECT {
        return Err(fail(stream, Socks5Error::UnsupportedCommand(command)).await);
    }
    if reserved != 0 {
        return Err(fail(stream, Socks5Error::BadReserved(reserved)).await);
    }
    match destination {
        Some(destination) => Ok(destination),
        None => Err(fail(stream, Socks5Error::BadDomain).await),
    }
}

/// A domain name from a request: an IP literal (some clients send one as a name) becomes an
/// address; otherwise the name must be 1 to 255 ASCII letters, digits, `-`, `.` and `_`.
fn parse_domain(name: &[u8], port: u16) -> Option<Destination> {
    if name.is_empty() {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(Destination::Addr(SocketAddr::new(ip, port)));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then(|| Destination::Domain(name.to_owned(), port))
}

/// Sends the failure reply that goes with `err` (best effort) and hands `err` back.
async fn fail<S: AsyncWrite + Unpin>(stream: &mut S, err: Socks5Error) -> Socks5Error {
    if let Some(code) = err.reply() {
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let _ = reply(stream, code, unspecified).await;
    }
    err
}

/// Writes `bytes` and flushes them.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
