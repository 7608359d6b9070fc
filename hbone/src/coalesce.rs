//! TLS writes that reach the socket once per flush.
//!
//! `tokio-rustls` seals and sends every write at once. HTTP/2 writes a frame or a few at a time
//! and flushes when it has nothing more to send, so a tunnelled response of a HEADERS and a DATA
//! frame used to cost two `write(2)` calls, each of which (on a loopback or a busy host) also
//! pays for the receiver's network stack. [`Coalesce`] hands each write to rustls, which seals
//! it into a record and queues it, and sends the queued records on flush, in one `writev(2)`
//! (rustls sends up to 64 records per call). It holds no buffer of its own: rustls bounds what
//! it queues (64 KiB); when the queue is full a write sends it first.
//!
//! Only for connections past their handshake: the HTTP/2 layer of the [`crate::client`] and
//! [`crate::server`] connections.

use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS stream whose plaintext writer can be reached without sending.
pub(crate) trait TlsSession {
    /// The connection's plaintext writer: what it takes is sealed and queued, not sent.
    fn writer(&mut self) -> rustls::Writer<'_>;
}

impl<IO> TlsSession for tokio_rustls::client::TlsStream<IO> {
    fn writer(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }
}

impl<IO> TlsSession for tokio_rustls::server::TlsStream<IO> {
    fn writer(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }
}

/// A TLS stream that sends on flush (see the module docs). Reads pass through.
#[derive(Debug)]
pub(crate) struct Coalesce<S> {
    inner: S,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + TlsSession + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        let n = this.inner.writer().write_vectored(bufs)?;
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        // rustls's queue is full: send it, then queue again.
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        match this.inner.writer().write_vectored(bufs)? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => Poll::Ready(Ok(n)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::ca::LocalCa;
    use crate::cert::CertStore;
    use crate::identity::Identity;
    use crate::tls;

    /// A connected pair over loopback TLS: (client, server).
    async fn pair() -> (
        Coalesce<tokio_rustls::client::TlsStream<TcpStream>>,
        tokio_rustls::server::TlsStream<TcpStream>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
        let store = |id: &Identity| {
            let cert = ca.issue(id, Duration::from_secs(3600)).unwrap();
            Arc::new(CertStore::new(cert))
        };
        let server_id = Identity::new("cluster.local", "default", "server").unwrap();
        let client_id = Identity::new("cluster.local", "default", "client").unwrap();
        let server_cfg = tls::server_config(store(&server_id), ca.roots()).unwrap();
        let client_cfg =
            tls::client_config(store(&client_id), ca.roots(), vec![server_id]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(server_cfg)
                .accept(tcp)
                .await
                .unwrap()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let client = tokio_rustls::TlsConnector::from(client_cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        (Coalesce::new(client), accept.await.unwrap())
    }

    #[tokio::test]
    async fn writes_arrive_after_flush_in_order() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"one ").await.unwrap();
        let n = client
            .write_vectored(&[IoSlice::new(b"two "), IoSlice::new(b"three")])
            .await
            .unwrap();
        assert_eq!(n, 9, "both slices are taken in one write");
        client.flush().await.unwrap();
        let mut got = [0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two three");
    }

    #[tokio::test]
    async fn more_than_the_tls_queue_goes_through() {
        let (mut client, mut server) = pair().await;
        let msg: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let expected = msg.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
        });
        client.write_all(&msg).await.unwrap();
        client.flush().await.unwrap();
        reader.await.unwrap();
    }
}
