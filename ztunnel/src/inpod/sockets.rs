//! The sockets of one in-pod proxy: created inside the pod's network namespace and marked.
//!
//! # Where it sits
//!
//! Everything an in-pod proxy does on the network happens from the pod's namespace: its
//! listeners (15001, 15006, 15008, 15053) are bound there, and its connections — HBONE to peers
//! (through the pod's own [`hbone::Pool`]), plain TCP to destinations and to the application,
//! DNS to upstream resolvers — are dialled from there. [`PodSockets`] creates each such socket
//! on the namespace's thread ([`super::netns::Netns`]) and sets `SO_MARK` (ztunnel's mark,
//! 0x539 by default) on it, which the capture rules exempt: ztunnel's own traffic is never
//! redirected back to itself. The sockets are then used from the ordinary worker runtime.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, UdpSocket};

use super::netns::{Netns, NetnsId};

/// Pending connections each in-pod listener queues.
const LISTEN_BACKLOG: i32 = 1024;

/// Creates the sockets of one pod's proxy inside the pod's network namespace.
#[derive(Debug, Clone)]
pub struct PodSockets {
    netns: Arc<Netns>,
    mark: u32,
}

impl PodSockets {
    /// Sockets in `netns`, each marked with `mark`.
    pub fn new(netns: Arc<Netns>, mark: u32) -> Self {
        Self { netns, mark }
    }

    /// The pod's namespace.
    pub fn netns(&self) -> &Arc<Netns> {
        &self.netns
    }

    /// Which namespace the sockets live in.
    pub fn netns_id(&self) -> NetnsId {
        self.netns.id()
    }

    /// Runs `f` on a new non-blocking, marked socket of `family`'s address family inside the
    /// namespace.
    fn in_netns<T: Send + 'static>(
        &self,
        family: SocketAddr,
        ty: Type,
        f: impl FnOnce(Socket) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let mark = self.mark;
        self.netns.run(move || {
            let protocol = if ty == Type::DGRAM {
                Protocol::UDP
            } else {
                Protocol::TCP
            };
            let socket = Socket::new(Domain::for_address(family), ty, Some(protocol))?;
            socket.set_mark(mark)?;
            socket.set_nonblocking(true)?;
            f(socket)
        })?
    }

    /// A TCP listener bound to `addr` inside the namespace (IPv6 listeners are IPv6 only).
    pub fn tcp_listener(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.in_netns(addr, Type::STREAM, move |socket| {
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket.into())
        })
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
        self.in_netns(addr, Type::DGRAM, move |socket| {
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
    }
}

fn unspecified(family: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match family {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, 0)
}

impl hbone::SocketFactory for PodSockets {
    fn tcp(&self, destination: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self.in_netns(destination, Type::STREAM, |socket| {
            Ok(std::net::TcpStream::from(socket))
        })?;
        Ok(TcpSocket::from_std_stream(socket))
    }
}

impl crate::dns::UpstreamSockets for PodSockets {
    fn udp(&self, upstream: SocketAddr) -> io::Result<UdpSocket> {
        UdpSocket::from_std(self.udp_socket(unspecified(upstream))?)
    }

    fn tcp(&self, upstream: SocketAddr) -> io::Result<TcpSocket> {
        hbone::SocketFactory::tcp(self, upstream)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The test's own namespace: the sockets work as anywhere, and their mark is visible.
    fn own() -> PodSockets {
        let netns = Netns::new(OwnedFd::from(File::open("/proc/self/ns/net").unwrap())).unwrap();
        PodSockets::new(Arc::new(netns), 0x539)
    }

    #[tokio::test]
    async fn listeners_and_dialled_sockets_carry_the_mark() {
        let pod = own();
        let listener = tokio::net::TcpListener::from_std(
            pod.tcp_listener("127.0.9.1:0".parse().unwrap()).unwrap(),
        )
        .unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(socket2::SockRef::from(&listener).mark().unwrap(), 0x539);

        let dial = hbone::socket::connect(&pod, addr, std::time::Duration::from_secs(5));
        let (dialled, accepted) = tokio::join!(dial, listener.accept());
        let mut dialled = dialled.unwrap();
        let (mut accepted, _) = accepted.unwrap();
        assert_eq!(socket2::SockRef::from(&dialled).mark().unwrap(), 0x539);
        dialled.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        accepted.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        let udp =
            UdpSocket::from_std(pod.udp_socket("127.0.9.1:0".parse().unwrap()).unwrap()).unwrap();
        let upstream = crate::dns::UpstreamSockets::udp(&pod, udp.local_addr().unwrap()).unwrap();
        assert_eq!(socket2::SockRef::from(&upstream).mark().unwrap(), 0x539);
        upstream
            .send_to(b"q", udp.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0; 1];
        let (n, _) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"q");
    }
}
