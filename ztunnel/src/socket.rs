//! Socket helpers shared by the capture listeners (outbound 15001, inbound plaintext 15006).
//!
//! Captured connections reach ztunnel through the capture rules' `REDIRECT`, which rewrites the
//! destination to the listener; the kernel keeps the address the application asked for, and
//! [`original_dst`] reads it back (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).
//! [`DestinationMode`] says where an accepted connection is going.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where an accepted capture connection is going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DestinationMode {
    /// The socket's original destination (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), as set
    /// by a `REDIRECT` capture rule. A connection that was not redirected (e.g. a client
    /// connecting to the listener directly) has none, and its destination is the socket's local
    /// address, i.e. the listener itself — which loop protection then refuses.
    #[default]
    OriginalDst,
    /// Always this address: for running without capture rules (tests, local setups), where
    /// connecting to the listener stands for connecting to this address.
    Fixed(SocketAddr),
}

impl DestinationMode {
    /// The destination of `stream` under this mode; `None` only when the socket has no local
    /// address (it is already closed).
    pub fn destination(self, stream: &TcpStream) -> Option<SocketAddr> {
        match self {
            Self::Fixed(addr) => Some(addr),
            Self::OriginalDst => original_dst(stream).or_else(|| stream.local_addr().ok()),
        }
    }
}

/// The original destination of a redirected socket; `None` when it was not redirected.
#[cfg(target_os = "linux")]
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let addr = match stream.local_addr().ok()? {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    addr.ok()?.as_socket()
}

/// The original destination of a redirected socket; only Linux redirects.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> Option<SocketAddr> {
    None
}
