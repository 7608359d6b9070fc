//! Write coalescing under the upstream HTTP/2 client of `connect_originate`.
//!
//! The client's connection task writes and flushes whatever frames are queued when it runs.
//! Requests queued by different tasks in the same turn of the scheduler (many downstream
//! requests at once, or a body that goes on after its HEADERS) would each get a flush of their
//! own. Over an HBONE tunnel each flush becomes a DATA frame of the tunnel, a TLS record and a
//! `writev(2)`, for bytes that were all in hand at once.
//!
//! [`Coalesce`] sits between that client and its transport (the tunnel, TCP or TLS). It keeps
//! what the client writes and, on a flush while more than one request is in flight on the
//! connection ([`OpenStreams`]), first yields once to the scheduler, so that tasks already
//! woken add their frames; the next flush writes everything kept as one chunk. With one
//! request in flight there is nobody else's frame to wait for, and a flush writes at once. A
//! flush with nothing kept passes straight through. At most [`MAX_KEPT`] bytes are kept: a
//! write beyond that first pushes the kept bytes down.
//!
//! This makes fewer flushes; under it, the tunnel's own TLS layer already sends the records of
//! one flush in one `writev(2)`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use hbone::OpenStreams;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes kept before a write pushes them down without waiting for a flush.
pub const MAX_KEPT: usize = 64 * 1024;

/// A transport whose writes are kept until a flush, and whose flushes wait one turn of the
/// scheduler before they write.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    kept: BytesMut,
    /// The pending flush has yielded once; the next poll writes.
    yielded: bool,
    /// The requests in flight on the connection: a flush waits for the others' frames only
    /// when there are others.
    streams: OpenStreams,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`, the transport of a connection whose requests in flight `streams` counts.
    pub fn new(inner: T, streams: OpenStreams) -> Self {
        Self {
            inner,
            kept: BytesMut::new(),
            yielded: false,
            streams,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes everything kept to the transport.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.kept.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.kept))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.kept.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Room for `len` more bytes, pushing down what is kept if it is full.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if self.kept.len() >= MAX_KEPT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len.min(MAX_KEPT - self.kept.len())))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
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
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut room = ready!(this.poll_room(cx, total))?;
        let n = room;
        for buf in bufs {
            if room == 0 {
                break;
            }
            let take = buf.len().min(room);
            this.kept.extend_from_slice(&buf[..take]);
            room -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.kept.is_empty() && !this.yielded && hbone::others_open(&this.streams) {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::Waker;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use test_support::{CountWrites, CountingWaker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A transport that records each write it is given.
    #[derive(Default, Clone)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<AtomicUsize>,
        shut: Arc<AtomicUsize>,
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }
    }

    /// A wrapper over a fresh recorder with `in_flight` requests counted on its connection,
    /// the recorder, and a waker that counts.
    fn fixture(in_flight: u32) -> (Coalesce<Recorder>, Recorder, Arc<CountingWaker>, Waker) {
        let rec = Recorder::default();
        let (wakes, waker) = CountingWaker::new();
        let streams = Arc::new(AtomicU32::new(in_flight));
        (Coalesce::new(rec.clone(), streams), rec, wakes, waker)
    }

    #[test]
    fn a_flush_yields_once_then_writes_everything_kept_as_one_chunk() {
        let (mut io, rec, wakes, waker) = fixture(2);
        let mut cx = Context::from_waker(&waker);

        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"HEADERS"),
            Poll::Ready(Ok(7))
        ));
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.count(), 1, "the flush asks to run again");
        assert!(rec.writes().is_empty());
        assert_eq!(rec.flushes.load(Ordering::Relaxed), 0);

        // What another task queues in between joins the same chunk.
        let bufs = [IoSlice::new(b"DA"), IoSlice::new(b"TA")];
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(4))
        ));
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rec.writes(), [b"HEADERSDATA".to_vec()]);
        assert_eq!(rec.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(io.kept.len(), 0);

        // The next flush with new bytes yields again.
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"PING");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(rec.writes(), [b"HEADERSDATA".to_vec(), b"PING".to_vec()]);
        assert_eq!(wakes.count(), 2);
    }

    /// With one request in flight there are no other tasks' frames to wait for: the flush
    /// writes at once. When a second request is in flight, flushes yield again.
    #[test]
    fn a_flush_with_one_request_in_flight_writes_at_once() {
        let (mut io, rec, wakes, waker) = fixture(1);
        let mut cx = Context::from_waker(&waker);
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"HEADERS");
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rec.writes(), [b"HEADERS".to_vec()]);
        assert_eq!(rec.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.count(), 0, "its task is not woken");

        io.streams.store(2, Ordering::Relaxed);
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"DATA");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.count(), 1);
        assert_eq!(rec.writes().len(), 1, "not yet written");
    }

    #[test]
    fn a_flush_with_nothing_kept_passes_straight_through() {
        let (mut io, rec, wakes, waker) = fixture(2);
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(rec.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.count(), 0);
    }

    #[test]
    fn shutdown_writes_what_is_kept_first() {
        let (mut io, rec, _, waker) = fixture(2);
        let mut cx = Context::from_waker(&waker);
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"GOAWAY");
        assert!(Pin::new(&mut io).poll_shutdown(&mut cx).is_ready());
        assert_eq!(rec.writes(), [b"GOAWAY".to_vec()]);
        assert_eq!(rec.shut.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_most_max_kept_bytes_wait_for_a_flush() {
        let (mut io, rec, _, waker) = fixture(2);
        let mut cx = Context::from_waker(&waker);
        let big = vec![7u8; MAX_KEPT + 10];
        let Poll::Ready(Ok(n)) = Pin::new(&mut io).poll_write(&mut cx, &big) else {
            panic!("the write did not complete");
        };
        assert_eq!(n, MAX_KEPT, "a write takes no more than there is room for");
        assert!(rec.writes().is_empty());
        let Poll::Ready(Ok(n)) = Pin::new(&mut io).poll_write(&mut cx, &big[n..]) else {
            panic!("the write did not complete");
        };
        assert_eq!(n, 10);
        assert_eq!(rec.writes().len(), 1, "the full buffer went down first");
        assert_eq!(rec.writes()[0].len(), MAX_KEPT);
        assert_eq!(io.kept.len(), 10);
    }

    /// An HTTP/2 echo server on `io`.
    fn serve_echo(io: DuplexStream) {
        let service = hyper::service::service_fn(|request: http::Request<Incoming>| async move {
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(http::Response::new(Full::new(body)))
        });
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service),
        );
    }

    /// Writes the waypoint's upstream HTTP/2 client ([`super::super::http2`]) makes to send
    /// `n` POSTs with a 1 KiB body at once (after the connection's own frames have settled),
    /// and the echoed bodies' total length.
    async fn writes_per_burst(n: usize, coalesce: bool) -> (usize, usize) {
        use super::super::http2::{connect, exchange};
        let (client, server) = tokio::io::duplex(256 * 1024);
        serve_echo(server);
        let counted = CountWrites::new(client);
        let writes = counted.counter();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9080));
        let streams = hbone::OpenStreams::default();
        let conn = if coalesce {
            let io = Coalesce::new(counted, Arc::clone(&streams));
            connect(io, addr, streams).await.unwrap()
        } else {
            connect(counted, addr, streams).await.unwrap()
        };
        let post = |body: Bytes| {
            let body = Full::new(body).map_err(|never| match never {}).boxed();
            http::Request::post("http://reviews:9080/echo")
                .body(body)
                .unwrap()
        };
        // The handshake's SETTINGS and their acknowledgements go first.
        let warm = exchange(&conn, post(Bytes::from_static(b"warm")))
            .await
            .unwrap();
        warm.into_body().collect().await.unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let before = writes.get();
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..n {
            let conn = conn.clone();
            let request = post(Bytes::from(vec![b'x'; 1024]));
            requests.spawn(async move {
                let response = exchange(&conn, request).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            });
        }
        let mut echoed = 0;
        while let Some(body) = requests.join_next().await {
            let body = body.unwrap();
            assert!(body.iter().all(|b| *b == b'x'));
            echoed += body.len();
        }
        (writes.get() - before, echoed)
    }

    /// A request's HEADERS and DATA leave in one write (the client queues a small body with
    /// its HEADERS), on a current-thread runtime like the waypoint's workers.
    #[tokio::test]
    async fn an_http2_request_with_a_body_leaves_in_one_write() {
        let (writes, echoed) = writes_per_burst(1, true).await;
        assert_eq!(echoed, 1024);
        assert_eq!(writes, 1, "HEADERS and DATA in one write");
    }

    /// The reason for the wrapper: requests sent by several tasks in the same turn of the
    /// scheduler share writes; without it each takes one of its own.
    #[tokio::test]
    async fn a_burst_of_requests_takes_fewer_writes_with_the_wrapper() {
        let (with, echoed) = writes_per_burst(8, true).await;
        assert_eq!(echoed, 8 * 1024);
        let (without, echoed) = writes_per_burst(8, false).await;
        assert_eq!(echoed, 8 * 1024);
        assert!(
            with < without,
            "{with} write(s) with the wrapper, {without} without"
        );
    }

    /// Bytes written through the wrapper arrive unchanged and in order, also when a write is
    /// larger than what may be kept.
    #[tokio::test]
    async fn bytes_arrive_unchanged_through_the_wrapper() {
        let (client, mut server) = tokio::io::duplex(16 * 1024);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut io = Coalesce::new(client, hbone::OpenStreams::default());
        let data: Vec<u8> = (0..(3 * MAX_KEPT + 123)).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(5000) {
            io.write_all(chunk).await.unwrap();
        }
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
    }
}
