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
//! A flush with records queued first lets the tasks that are already ready run, once: it wakes
//! its own task and returns `Pending`, and sends when polled again. The HTTP/2 connection's
//! streams are written by other tasks (one per tunnel); when several of them have a frame ready
//! in the same pass of the scheduler, their frames leave in the flush's one `writev(2)` rather
//! than one each. It does so only while more than one stream of the connection is open
//! ([`OpenStreams`]): with one tunnel there is no other stream whose frames could join, and the
//! wait would cost a pass through the scheduler's queue and a second poll of the connection's
//! task for each flush, and save no write.
//!
//! Only for connections past their handshake: the HTTP/2 layer of the [`crate::client`] and
//! [`crate::server`] connections.

use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS stream whose plaintext writer can be reached without sending.
pub(crate) trait TlsSession {
    /// The connection's plaintext writer: what it takes is sealed and queued, not sent.
    fn writer(&mut self) -> rustls::Writer<'_>;
    /// Whether records are queued for sending.
    fn wants_write(&self) -> bool;
}

impl<IO> TlsSession for tokio_rustls::client::TlsStream<IO> {
    fn writer(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }

    fn wants_write(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

impl<IO> TlsSession for tokio_rustls::server::TlsStream<IO> {
    fn writer(&mut self) -> rustls::Writer<'_> {
        self.get_mut().1.writer()
    }

    fn wants_write(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

/// How many streams of one HTTP/2 connection are open: shared by the connection's writer
/// (this module's `Coalesce`, or another that waits for other streams' frames before it
/// writes) and whatever holds the streams (the pool's slots on the client side, an
/// [`OpenStream`] per stream on the server side).
pub type OpenStreams = Arc<AtomicU32>;

/// Whether other streams than the one being written are open on the connection `streams`
/// counts: the condition for a flush to let their tasks run first (see the module docs).
pub fn others_open(streams: &OpenStreams) -> bool {
    streams.load(Ordering::Relaxed) > 1
}

/// One open stream, counted in its connection's [`OpenStreams`] while it lives.
#[derive(Debug)]
pub struct OpenStream(OpenStreams);

impl OpenStream {
    /// Counts a stream that has just opened.
    pub fn new(streams: &OpenStreams) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(streams))
    }

    /// Counts one more on the same connection.
    pub fn another(&self) -> Self {
        Self::new(&self.0)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TLS stream that sends on flush (see the module docs). Reads pass through.
#[derive(Debug)]
pub(crate) struct Coalesce<S> {
    inner: S,
    /// Whether the current flush has already let the ready tasks run.
    yielded: bool,
    /// The connection's open streams: a flush waits for the others' frames only when there
    /// are others.
    streams: OpenStreams,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S, streams: OpenStreams) -> Self {
        Self {
            inner,
            yielded: false,
            streams,
        }
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
        let this = self.get_mut();
        if !this.inner.wants_write() {
            this.yielded = false;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded && others_open(&this.streams) {
            // Once per flush: the other streams' tasks ahead in the scheduler's queue may have
            // frames for this connection (see the module docs).
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.yielded = false;
        Poll::Ready(Ok(()))
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

    use test_support::{CountWrites, CountingWaker, WriteCount};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::ca::LocalCa;
    use crate::cert::CertStore;
    use crate::identity::Identity;
    use crate::tls;

    type Client = Coalesce<tokio_rustls::client::TlsStream<CountWrites<TcpStream>>>;

    /// A connected pair over loopback TLS whose client counts `streams` as its connection's
    /// open streams: (client, server, the client's socket writes).
    async fn pair(
        streams: &OpenStreams,
    ) -> (
        Client,
        tokio_rustls::server::TlsStream<TcpStream>,
        WriteCount,
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
        let tcp = CountWrites::new(TcpStream::connect(addr).await.unwrap());
        let writes = tcp.counter();
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let client = tokio_rustls::TlsConnector::from(client_cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        (
            Coalesce::new(client, Arc::clone(streams)),
            accept.await.unwrap(),
            writes,
        )
    }

    /// With other streams open, a flush with records queued wakes its task and waits one poll
    /// before it sends; a flush with nothing queued returns at once.
    #[tokio::test]
    async fn a_flush_with_records_queued_lets_ready_tasks_run_once() {
        let streams = OpenStreams::default();
        let _open = [OpenStream::new(&streams), OpenStream::new(&streams)];
        let (mut client, mut server, writes) = pair(&streams).await;
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let mut client = Pin::new(&mut client);
        assert!(
            client.as_mut().poll_flush(&mut cx).is_ready(),
            "nothing queued"
        );
        assert_eq!(counter.count(), 0);
        let before = writes.get();
        let written = client.as_mut().poll_write(&mut cx, b"hello");
        assert!(matches!(written, Poll::Ready(Ok(5))));
        assert!(client.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(counter.count(), 1, "its own task woken");
        assert_eq!(writes.get(), before, "nothing sent yet");
        assert!(matches!(
            client.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.get(), before + 1);
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The next flush with records queued yields again.
        let written = client.as_mut().poll_write(&mut cx, b"again");
        assert!(matches!(written, Poll::Ready(Ok(5))));
        assert!(client.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(counter.count(), 2);
    }

    /// With one stream open (or none) there are no other streams' frames to wait for: a flush
    /// sends at once, without waking its task. Once a second stream opens, flushes wait again,
    /// and when it closes they stop waiting.
    #[tokio::test]
    async fn a_flush_with_one_stream_open_sends_at_once() {
        let streams = OpenStreams::default();
        let first = OpenStream::new(&streams);
        let (mut client, mut server, writes) = pair(&streams).await;
        let (counter, waker) = CountingWaker::new();
        let mut cx = Context::from_waker(&waker);
        let mut client = Pin::new(&mut client);
        let before = writes.get();
        let written = client.as_mut().poll_write(&mut cx, b"alone");
        assert!(matches!(written, Poll::Ready(Ok(5))));
        assert!(matches!(
            client.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(counter.count(), 0, "its task is not woken");
        assert_eq!(writes.get(), before + 1, "sent by the first poll");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"alone");

        let second = OpenStream::new(&streams);
        assert!(matches!(
            client.as_mut().poll_write(&mut cx, b"two"),
            Poll::Ready(Ok(3))
        ));
        assert!(client.as_mut().poll_flush(&mut cx).is_pending(), "two open");
        assert_eq!(counter.count(), 1);
        assert!(client.as_mut().poll_flush(&mut cx).is_ready());

        drop(second);
        drop(first);
        assert_eq!(
            streams.load(Ordering::Relaxed),
            0,
            "closed streams uncounted"
        );
        assert!(matches!(
            client.as_mut().poll_write(&mut cx, b"none"),
            Poll::Ready(Ok(4))
        ));
        assert!(client.as_mut().poll_flush(&mut cx).is_ready(), "none open");
        assert_eq!(counter.count(), 1);
        assert_eq!(writes.get(), before + 3);
    }

    /// What the yield is for, through the `h2` crate on a current-thread runtime as on the
    /// waypoint's workers: one request wakes the connection's task, seven other streams'
    /// tasks become ready just after it, and all eight HEADERS leave in one write. Without
    /// the yield the connection's task runs first and sends the first request's alone.
    #[tokio::test]
    async fn frames_of_streams_ready_in_the_same_pass_leave_in_one_write() {
        // As the pool counts them: one slot per request in flight below.
        let open_streams = OpenStreams::default();
        let (client, server, writes) = pair(&open_streams).await;
        tokio::spawn(async move {
            let mut connection = h2::server::handshake(server).await.unwrap();
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                let _ = respond.send_response(http::Response::new(()), true);
            }
        });
        let (send, connection) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(connection);
        let get = || http::Request::get("http://server/").body(()).unwrap();
        let mut send = send.ready().await.unwrap();
        // The connection's own frames (SETTINGS and their acknowledgements) go first.
        let (response, _) = send.send_request(get(), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let go = Arc::new(tokio::sync::Notify::new());
        let streams: Vec<_> = (0..7)
            .map(|_| {
                let send = send.clone();
                let go = Arc::clone(&go).notified_owned();
                tokio::spawn(async move {
                    go.await;
                    let mut send = send.ready().await.unwrap();
                    let (response, _) = send.send_request(get(), true).unwrap();
                    response.await.unwrap().status()
                })
            })
            .collect();
        // The seven wait on `go`.
        tokio::task::yield_now().await;
        let _open: Vec<_> = (0..8).map(|_| OpenStream::new(&open_streams)).collect();
        let before = writes.get();
        let (first, _) = send.send_request(get(), true).unwrap();
        go.notify_waiters();
        assert_eq!(first.await.unwrap().status(), 200);
        for stream in streams {
            assert_eq!(stream.await.unwrap(), 200);
        }
        assert_eq!(writes.get() - before, 1, "eight requests, one write");
    }

    #[tokio::test]
    async fn writes_arrive_after_flush_in_order() {
        let (mut client, mut server, _) = pair(&OpenStreams::default()).await;
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
        let (mut client, mut server, _) = pair(&OpenStreams::default()).await;
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
