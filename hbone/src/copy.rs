//! Bidirectional copy between the two ends of a proxied connection.
//!
//! The last step of every data path: once a tunnel is open, bytes flow between the application
//! socket and the tunnel until both sides are done. Each direction ends on its own: when one
//! side's reads reach end of stream, the other side's write half is shut down (a half-close) and
//! the opposite direction keeps flowing, so a client that shuts its write side still receives
//! the whole response.
//!
//! Buffers are sized to the flow: each direction starts with [`INITIAL_BUFFER`] bytes, grows
//! step by step while reads keep filling the buffer (bulk transfer) and shrinks back when reads
//! stay small, so an idle or chatty connection costs little memory.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::H2Stream;

/// Buffer size a direction starts with.
pub const INITIAL_BUFFER: usize = 1024;
/// The buffer sizes a direction steps through as a flow proves to be bulk.
const SIZES: [usize; 4] = [INITIAL_BUFFER, 16 * 1024, 128 * 1024, 512 * 1024];
/// Consecutive reads that fill the buffer before it grows one step.
const GROW_AFTER: u8 = 2;
/// Consecutive reads under a quarter of the buffer before it shrinks one step.
const SHRINK_AFTER: u8 = 16;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// A copy that failed part-way; says how much had been moved.
#[derive(Debug, thiserror::Error)]
#[error("copy failed after {a_to_b} bytes a→b and {b_to_a} bytes b→a: {source}", a_to_b = transferred.a_to_b, b_to_a = transferred.b_to_a)]
pub struct CopyError {
    /// What had been moved before the failure.
    pub transferred: Transferred,
    /// The I/O error that ended the copy.
    #[source]
    pub source: io::Error,
}

/// Live byte counters, readable while a copy runs (for metrics of long-lived connections).
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// Bytes moved from `a` to `b` so far.
    pub a_to_b: AtomicU64,
    /// Bytes moved from `b` to `a` so far.
    pub b_to_a: AtomicU64,
}

/// Copies `a → b` and `b → a` until both directions reach end of stream, propagating each
/// half-close to the other side.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    counters: Option<Arc<ByteCounters>>,
) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    let result = poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, &mut *a, &mut *b, counters.as_ref().map(|c| &c.a_to_b));
        let ba = b_to_a.poll_copy(cx, &mut *b, &mut *a, counters.as_ref().map(|c| &c.b_to_a));
        both(ab, ba)
    })
    .await;
    let transferred = Transferred {
        a_to_b: a_to_b.amount,
        b_to_a: b_to_a.amount,
    };
    result.map(|()| transferred).map_err(|source| CopyError {
        transferred,
        source,
    })
}

/// Combines the two directions of a copy: done when both are, failed as soon as one fails.
fn both(ab: Poll<io::Result<()>>, ba: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match (ab, ba) {
        (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
        (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
        _ => Poll::Pending,
    }
}

/// Copies between an application stream and an HBONE tunnel, like [`copy_bidirectional`]
/// (`a` = `io`, `b` = `tunnel`), but hands buffers to HTTP/2 and takes them back from it
/// without copying: what `io` reads is frozen and queued on the tunnel as is, and what the
/// tunnel receives is written to `io` straight from the received frames.
pub async fn copy_tunnel<A>(
    io: &mut A,
    tunnel: &mut H2Stream,
    counters: Option<Arc<ByteCounters>>,
) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = ToTunnel::default();
    let mut down = FromTunnel::default();
    let result = poll_fn(|cx| {
        let ab = up.poll_copy(cx, &mut *io, tunnel, counters.as_ref().map(|c| &c.a_to_b));
        let ba = down.poll_copy(cx, tunnel, &mut *io, counters.as_ref().map(|c| &c.b_to_a));
        both(ab, ba)
    })
    .await;
    let transferred = Transferred {
        a_to_b: up.amount,
        b_to_a: down.amount,
    };
    result.map(|()| transferred).map_err(|source| CopyError {
        transferred,
        source,
    })
}

/// Chooses a direction's buffer size from how full its reads come back.
#[derive(Debug, Default)]
struct Sizer {
    /// Index into [`SIZES`] of the current size.
    step: usize,
    full_reads: u8,
    small_reads: u8,
}

impl Sizer {
    fn size(&self) -> usize {
        SIZES[self.step]
    }

    /// Records a read of `n` bytes into a buffer of `size`.
    fn observe(&mut self, n: usize, size: usize) {
        if n >= size {
            self.small_reads = 0;
            self.full_reads = self.full_reads.saturating_add(1);
        } else if n < size / 4 {
            self.full_reads = 0;
            self.small_reads = self.small_reads.saturating_add(1);
        } else {
            self.full_reads = 0;
            self.small_reads = 0;
        }
    }

    /// Moves one step up after repeated full reads, one step down after repeated small ones.
    /// Returns whether the size changed.
    fn adjust(&mut self) -> bool {
        if self.full_reads >= GROW_AFTER && self.step + 1 < SIZES.len() {
            self.step += 1;
            self.full_reads = 0;
            true
        } else if self.small_reads >= SHRINK_AFTER && self.step > 0 {
            self.step -= 1;
            self.small_reads = 0;
            true
        } else {
            false
        }
    }
}

/// One direction of a copy between two byte streams.
#[derive(Default)]
struct Direction {
    buf: Vec<u8>,
    sizer: Sizer,
    pos: usize,
    end: usize,
    read_done: bool,
    finished: bool,
    need_flush: bool,
    amount: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.end && !self.read_done {
                if self.sizer.adjust() || self.buf.is_empty() {
                    self.buf = vec![0; self.sizer.size()];
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.end = n;
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.sizer.observe(n, self.buf.len());
                        }
                    }
                }
            }
            while self.pos < self.end {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.amount += n as u64;
                self.need_flush = true;
                count(counter, n);
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                // The direction is done: give its buffer back.
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

fn count(counter: Option<&AtomicU64>, n: usize) {
    if let Some(counter) = counter {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Application stream → tunnel, handing each read buffer to HTTP/2 without a copy.
#[derive(Default)]
struct ToTunnel {
    buf: BytesMut,
    pending: Bytes,
    sizer: Sizer,
    read_done: bool,
    finished: bool,
    amount: u64,
}

impl ToTunnel {
    fn poll_copy<R>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        tunnel: &mut H2Stream,
        counter: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pending.is_empty() && !self.read_done {
                self.sizer.adjust();
                // Reuses the allocation once HTTP/2 has released the previous chunk.
                self.buf.reserve(self.sizer.size());
                let room = self.buf.capacity() - self.buf.len();
                let n = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut *reader),
                    cx,
                    &mut self.buf
                ))?;
                if n == 0 {
                    self.read_done = true;
                } else {
                    self.sizer.observe(n, room);
                    self.pending = self.buf.split().freeze();
                }
            }
            while !self.pending.is_empty() {
                let n = ready!(tunnel.poll_send_bytes(cx, &mut self.pending))?;
                self.amount += n as u64;
                count(counter, n);
            }
            if self.read_done {
                ready!(Pin::new(&mut *tunnel).poll_shutdown(cx))?;
                self.finished = true;
                self.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Tunnel → application stream, writing received frames out as they are.
#[derive(Default)]
struct FromTunnel {
    pending: Bytes,
    done: bool,
    finished: bool,
    need_flush: bool,
    amount: u64,
}

impl FromTunnel {
    fn poll_copy<W>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut H2Stream,
        writer: &mut W,
        counter: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pending.is_empty() && !self.done {
                match tunnel.poll_recv_bytes(cx) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(data))) => self.pending = data,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => self.done = true,
                }
            }
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                self.amount += n as u64;
                self.need_flush = true;
                count(counter, n);
            }
            if self.done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut client, mut proxy_a) = duplex(64 * 1024);
        let (mut proxy_b, mut server) = duplex(64 * 1024);
        let counters = Arc::new(ByteCounters::default());
        let c2 = counters.clone();
        let proxy =
            tokio::spawn(
                async move { copy_bidirectional(&mut proxy_a, &mut proxy_b, Some(c2)).await },
            );

        let request = vec![7u8; 300_000];
        let response = vec![9u8; 200_000];
        let (req, resp) = (request.clone(), response.clone());
        let backend = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, req, "server sees the whole request, then EOF");
            // The client has half-closed; the response must still reach it in full.
            server.write_all(&resp).await.unwrap();
            server.shutdown().await.unwrap();
        });
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, response);
        backend.await.unwrap();

        let t = proxy.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                a_to_b: 300_000,
                b_to_a: 200_000
            }
        );
        assert_eq!(counters.a_to_b.load(Ordering::Relaxed), 300_000);
        assert_eq!(counters.b_to_a.load(Ordering::Relaxed), 200_000);
    }

    #[test]
    fn buffer_grows_for_bulk_and_shrinks_when_chatty() {
        let mut sizer = Sizer::default();
        assert_eq!(sizer.size(), INITIAL_BUFFER);
        for _ in 0..(GROW_AFTER as usize * (SIZES.len() + 2)) {
            let size = sizer.size();
            sizer.observe(size, size);
            sizer.adjust();
        }
        assert_eq!(sizer.size(), *SIZES.last().unwrap());
        for _ in 0..(SHRINK_AFTER as usize * (SIZES.len() + 2)) {
            let size = sizer.size();
            sizer.observe(10, size);
            sizer.adjust();
        }
        assert_eq!(sizer.size(), INITIAL_BUFFER);
    }
}
