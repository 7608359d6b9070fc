//! Helpers shared by the unit tests of the workspace's crates.
//!
//! Not on any data path: the tests of `hbone`'s and the waypoint's write coalescing count how
//! many writes reach a transport, and how often a task asks to be polled again. Both helpers
//! live here so that every crate's tests count the same way.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A transport that counts the writes that carried bytes to it (a `write` or a `writev` each);
/// everything else passes through.
#[derive(Debug)]
pub struct CountWrites<T> {
    inner: T,
    writes: Arc<AtomicUsize>,
}

impl<T> CountWrites<T> {
    /// Wraps `inner`, counting from zero.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            writes: Arc::default(),
        }
    }

    /// A handle on the count that stays readable after the transport has moved.
    pub fn counter(&self) -> WriteCount {
        WriteCount(Arc::clone(&self.writes))
    }

    fn count(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The count of a [`CountWrites`].
#[derive(Clone, Debug)]
pub struct WriteCount(Arc<AtomicUsize>);

impl WriteCount {
    /// Writes that carried bytes so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A waker that counts its wake-ups, for polling a future or an I/O object by hand.
#[derive(Debug, Default)]
pub struct CountingWaker(AtomicUsize);

impl CountingWaker {
    /// A new counter and a waker that counts on it.
    pub fn new() -> (Arc<Self>, Waker) {
        let counter = Arc::new(Self::default());
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    /// Wake-ups so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_the_writes_that_carried_bytes() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = CountWrites::new(client);
        let count = io.counter();
        io.write_all(b"abc").await.unwrap();
        assert_eq!(io.write(b"").await.unwrap(), 0);
        let bufs = [IoSlice::new(b"de"), IoSlice::new(b"f")];
        let n = io.write_vectored(&bufs).await.unwrap();
        assert!(n > 0);
        io.flush().await.unwrap();
        assert_eq!(count.get(), 2, "an empty write is not counted");
        let mut got = vec![0u8; 3 + n];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..3], b"abc");
    }

    #[test]
    fn counts_every_wake_up() {
        let (counter, waker) = CountingWaker::new();
        let other = waker.clone();
        waker.wake_by_ref();
        other.wake();
        assert_eq!(counter.count(), 2);
    }
}
