//! Where outgoing TCP sockets come from.
//!
//! By default a connection is dialled from the process's own network namespace
//! ([`DefaultSockets`]). A node proxy serving a pod from inside the pod's network namespace
//! supplies its own [`SocketFactory`], whose sockets are created in that namespace (and carry
//! the mark that exempts them from the pod's capture rules); the pool and every other dialler
//! then use it through [`connect`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Creates the sockets outgoing TCP connections are dialled from.
pub trait SocketFactory: Send + Sync + fmt::Debug {
    /// A TCP socket of `destination`'s family, not yet connected.
    fn tcp(&self, destination: SocketAddr) -> io::Result<TcpSocket>;
}

/// Sockets of the calling process's network namespace, without options.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultSockets;

impl SocketFactory for DefaultSockets {
    fn tcp(&self, destination: SocketAddr) -> io::Result<TcpSocket> {
        match destination {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
    }
}

/// The default factory, shared.
pub fn default_sockets() -> Arc<dyn SocketFactory> {
    Arc::new(DefaultSockets)
}

/// Dials `destination` from a socket of `sockets`, giving up after `timeout`; sets
/// `TCP_NODELAY` (tunnels and proxied connections carry small writes that must not wait).
pub async fn connect(
    sockets: &dyn SocketFactory,
    destination: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = sockets.tcp(destination)?;
    let stream = tokio::time::timeout(timeout, socket.connect(destination))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
