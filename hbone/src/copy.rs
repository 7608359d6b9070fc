//! Bidirectional copy between the two ends of a proxied connection.
//!
//! The last step of every data path: once a tunnel is open, bytes flow between the application
//! socket and the tunnel until both sides are done. Each direction ends on its own: when one
//! side's reads reach end of stream, the other side's write half is shut down (a half-close) and
//! the opposite direction keeps flowing, so a client that shuts its write side still receives
//! the whole response.
//!
//! Buffers are sized to the flow, and an idle connection holds none: while a flow is small,
//! each direction reads into a buffer on the stack and writes straight from it (a heap copy is
//! kept only for bytes the writer could not take yet); a flow whose reads keep filling the buffer
//! steps up to heap buffers, which are stepped back down when reads stay small and given back
//! once the flow has found nothing to read for a second. A direction that has been waiting for
//! data that long therefore owns no buffer, whatever it carried before: memory per idle
//! connection is the copy's small fixed state, not its buffers.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::H2Stream;

/// Read size a direction starts with. Reads of this size go to a buffer on the stack, so they
/// cost no heap memory between reads.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// The read sizes a direction steps through as a flow proves to be bulk. The first is the stack
/// buffer; the others are heap buffers, held only while bytes are moving.
const SIZES: [usize; 3] = [INITIAL_BUFFER, 128 * 1024, 512 * 1024];
/// Consecutive reads that fill the buffer before it grows one step.
const GROW_AFTER: u8 = 2;
/// Consecutive reads under a quarter of the buffer before it shrinks one step.
const SHRINK_AFTER: u8 = 16;
/// How long a flow holding a heap buffer may find nothing to read before the buffer is given
/// back (and the flow starts over with small reads on the stack).
const QUIET: Duration = Duration::from_secs(1);

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
///
/// The future holds the two directions' state and nothing else (no buffer while idle), so it
/// stays small for the life of a long-lived connection.
pub fn copy_bidirectional<'a, A, B>(
    a: &'a mut A,
    b: &'a mut B,
    counters: Option<Arc<ByteCounters>>,
) -> CopyBidirectional<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    CopyBidirectional {
        a,
        b,
        counters,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
    }
}

/// The future of [`copy_bidirectional`].
pub struct CopyBidirectional<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    counters: Option<Arc<ByteCounters>>,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<A: ?Sized, B: ?Sized> CopyBidirectional<'_, A, B> {
    /// What has been moved so far (also after the copy was abandoned part-way).
    pub fn transferred(&self) -> Transferred {
        Transferred {
            a_to_b: self.a_to_b.amount,
            b_to_a: self.b_to_a.amount,
        }
    }
}

impl<A, B> Future for CopyBidirectional<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = Result<Transferred, CopyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let counters = this.counters.as_deref();
        let ab = this
            .a_to_b
            .poll_copy(cx, &mut *this.a, &mut *this.b, counters.map(|c| &c.a_to_b));
        let ba = this
            .b_to_a
            .poll_copy(cx, &mut *this.b, &mut *this.a, counters.map(|c| &c.b_to_a));
        both(ab, ba).map(|result| finish(result, this.transferred()))
    }
}

impl<A: ?Sized, B: ?Sized> std::fmt::Debug for CopyBidirectional<'_, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyBidirectional")
            .field("transferred", &self.transferred())
            .finish_non_exhaustive()
    }
}

/// The outcome of a copy that moved `transferred`.
fn finish(result: io::Result<()>, transferred: Transferred) -> Result<Transferred, CopyError> {
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
/// without copying: what `io` reads in bulk is frozen and queued on the tunnel as is, and what
/// the tunnel receives is written to `io` straight from the received frames.
pub fn copy_tunnel<'a, A>(
    io: &'a mut A,
    tunnel: &'a mut H2Stream,
    counters: Option<Arc<ByteCounters>>,
) -> CopyTunnel<'a, A>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    CopyTunnel {
        io,
        tunnel,
        counters,
        up: ToTunnel::default(),
        down: FromTunnel::default(),
    }
}

/// The future of [`copy_tunnel`].
pub struct CopyTunnel<'a, A: ?Sized> {
    io: &'a mut A,
    tunnel: &'a mut H2Stream,
    counters: Option<Arc<ByteCounters>>,
    up: ToTunnel,
    down: FromTunnel,
}

impl<A: ?Sized> CopyTunnel<'_, A> {
    /// What has been moved so far (also after the copy was abandoned part-way): `a_to_b` from
    /// `io` to the tunnel, `b_to_a` back.
    pub fn transferred(&self) -> Transferred {
        Transferred {
            a_to_b: self.up.amount,
            b_to_a: self.down.amount,
        }
    }
}

impl<A> Future for CopyTunnel<'_, A>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = Result<Transferred, CopyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let counters = this.counters.as_deref();
        let ab = this
            .up
            .poll_copy(cx, &mut *this.io, this.tunnel, counters.map(|c| &c.a_to_b));
        let ba = this
            .down
            .poll_copy(cx, this.tunnel, &mut *this.io, counters.map(|c| &c.b_to_a));
        both(ab, ba).map(|result| finish(result, this.transferred()))
    }
}

impl<A: ?Sized> std::fmt::Debug for CopyTunnel<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyTunnel")
            .field("transferred", &self.transferred())
            .finish_non_exhaustive()
    }
}

/// Chooses a direction's read size from how full its reads come back.
#[derive(Debug, Default)]
struct Sizer {
    /// Index into [`SIZES`] of the current size.
    step: u8,
    full_reads: u8,
    small_reads: u8,
}

impl Sizer {
    fn size(&self) -> usize {
        SIZES[usize::from(self.step)]
    }

    /// Whether reads go to the buffer on the stack (a small flow).
    fn on_stack(&self) -> bool {
        self.step == 0
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
        if self.full_reads >= GROW_AFTER && usize::from(self.step) + 1 < SIZES.len() {
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

/// Notices when a flow that holds a heap buffer has gone quiet. A bulk flow finds its reader
/// empty often, for microseconds at a time; giving the buffer back each time would cost an
/// allocation per read, so it is given back only after [`QUIET`] without a byte moved. One
/// pointer while unarmed (every small flow).
#[derive(Default)]
struct Quiet {
    /// Armed while a heap buffer is held and the reader has been found empty.
    timer: Option<Pin<Box<QuietTimer>>>,
}

pin_project_lite::pin_project! {
    /// The quiet timer and the direction's byte count when it was (re)armed.
    struct QuietTimer {
        #[pin]
        sleep: tokio::time::Sleep,
        armed_at: u64,
    }
}

impl Quiet {
    /// Called when a read finds nothing while a heap buffer is held; `true` once no byte has
    /// moved for [`QUIET`] (give the buffer back). Otherwise the timer will wake the task.
    fn poll_quiet(&mut self, cx: &mut Context<'_>, amount: u64) -> bool {
        let timer = self.timer.get_or_insert_with(|| {
            Box::pin(QuietTimer {
                sleep: tokio::time::sleep(QUIET),
                armed_at: amount,
            })
        });
        loop {
            let mut timer = timer.as_mut().project();
            if timer.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if amount == *timer.armed_at {
                self.timer = None;
                return true;
            }
            // Bytes moved since the timer was armed: wait for another quiet period.
            timer
                .sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + QUIET);
            *timer.armed_at = amount;
        }
    }

    fn stop(&mut self) {
        self.timer = None;
    }
}

/// A read buffer on the stack, [`INITIAL_BUFFER`] bytes, left uninitialised (reads fill it).
fn stack_buffer() -> [MaybeUninit<u8>; INITIAL_BUFFER] {
    [MaybeUninit::uninit(); INITIAL_BUFFER]
}

/// Reads once into `buf`'s spare room, at most `size` bytes (the buffer grows to make room);
/// returns how many were read, 0 at end of stream.
fn poll_read_heap<R>(
    cx: &mut Context<'_>,
    reader: &mut R,
    buf: &mut BytesMut,
    size: usize,
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    use bytes::BufMut;
    buf.reserve(size);
    tokio_util::io::poll_read_buf(Pin::new(reader), cx, &mut (&mut *buf).limit(size))
}

/// One direction of a copy between two byte streams.
#[derive(Default)]
struct Direction {
    /// Bytes read and not yet written; in a bulk flow, also the read buffer. Unallocated
    /// while a small flow waits for data, given back once a bulk flow has gone quiet (boxed:
    /// one pointer in every small flow's state).
    buf: Option<Box<BytesMut>>,
    sizer: Sizer,
    quiet: Quiet,
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
            if self.unwritten() == 0 && !self.read_done {
                self.sizer.adjust();
                let read = if self.sizer.on_stack() {
                    self.release();
                    self.poll_read_stack(cx, reader, writer, counter)
                } else {
                    let size = self.sizer.size();
                    let buf = self.buf.get_or_insert_default();
                    poll_read_heap(cx, reader, buf, size).map_ok(|n| {
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.sizer.observe(n, size);
                        }
                    })
                };
                match read {
                    Poll::Pending if self.unwritten() == 0 => {
                        // Nothing to read.
                        if !self.sizer.on_stack() && self.quiet.poll_quiet(cx, self.amount) {
                            self.release();
                            self.sizer = Sizer::default();
                        }
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    // The writer is full; what it could not take is in `buf`.
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            if let Some(buf) = &mut self.buf {
                while !buf.is_empty() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, buf))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    buf.advance(n);
                    self.amount += n as u64;
                    self.need_flush = true;
                    count(counter, n);
                }
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                self.release();
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Bytes read and not yet written.
    fn unwritten(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Gives the heap buffer back (it holds no unwritten bytes).
    fn release(&mut self) {
        self.buf = None;
        self.quiet.stop();
    }

    /// Small flow: reads into a buffer on the stack and writes from there; only what the writer
    /// cannot take right away is copied to `buf`. `Pending` with an empty `buf` means nothing
    /// could be read.
    fn poll_read_stack<R, W>(
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
        let mut stack = stack_buffer();
        let mut rb = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut *reader).poll_read(cx, &mut rb))?;
        let data = rb.filled();
        if data.is_empty() {
            self.read_done = true;
            return Poll::Ready(Ok(()));
        }
        self.sizer.observe(data.len(), INITIAL_BUFFER);
        let mut written = 0;
        while written < data.len() {
            match Pin::new(&mut *writer).poll_write(cx, &data[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.wrote(n, counter);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.buf
                        .get_or_insert_default()
                        .extend_from_slice(&data[written..]);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn wrote(&mut self, n: usize, counter: Option<&AtomicU64>) {
        self.amount += n as u64;
        self.need_flush = true;
        count(counter, n);
    }
}

fn count(counter: Option<&AtomicU64>, n: usize) {
    if let Some(counter) = counter {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Application stream → tunnel. Bulk reads are handed to HTTP/2 without a copy; small ones are
/// read on the stack and copied into a chunk of their exact size.
#[derive(Default)]
struct ToTunnel {
    /// Heap read buffer of a bulk flow, given back once the flow has gone quiet (boxed: one
    /// pointer in every small flow's state).
    buf: Option<Box<BytesMut>>,
    /// A chunk HTTP/2 could not take in full yet (flow control); never empty. Boxed: one
    /// pointer while nothing is held up, which is always the case for an idle connection.
    pending: Option<Box<Bytes>>,
    sizer: Sizer,
    quiet: Quiet,
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
            if let Some(mut chunk) = self.pending.take() {
                match self.send(cx, tunnel, &mut chunk, counter) {
                    Poll::Pending => {
                        self.pending = Some(chunk);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            if self.read_done {
                ready!(Pin::new(&mut *tunnel).poll_shutdown(cx))?;
                self.finished = true;
                self.release();
                return Poll::Ready(Ok(()));
            }
            self.sizer.adjust();
            let read = if self.sizer.on_stack() {
                self.release();
                let mut stack = stack_buffer();
                let mut rb = ReadBuf::uninit(&mut stack);
                Pin::new(&mut *reader)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| Bytes::copy_from_slice(rb.filled()))
            } else {
                // Reuses the allocation once HTTP/2 has released the previous chunk.
                let buf = self.buf.get_or_insert_default();
                poll_read_heap(cx, reader, buf, self.sizer.size()).map_ok(|_| buf.split().freeze())
            };
            match read {
                Poll::Pending => {
                    // Nothing to read (chunks already handed to HTTP/2 are freed once they are
                    // sent).
                    if !self.sizer.on_stack() && self.quiet.poll_quiet(cx, self.amount) {
                        self.release();
                        self.sizer = Sizer::default();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(chunk)) if chunk.is_empty() => self.read_done = true,
                Poll::Ready(Ok(mut chunk)) => {
                    self.sizer.observe(chunk.len(), self.sizer.size());
                    match self.send(cx, tunnel, &mut chunk, counter) {
                        Poll::Pending => {
                            self.pending = Some(Box::new(chunk));
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
            }
        }
    }

    /// Queues `chunk` on the tunnel, as far as flow control allows; what is left stays in it.
    fn send(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut H2Stream,
        chunk: &mut Bytes,
        counter: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>> {
        while !chunk.is_empty() {
            let n = ready!(tunnel.poll_send_bytes(cx, chunk))?;
            self.amount += n as u64;
            count(counter, n);
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the heap read buffer back.
    fn release(&mut self) {
        self.buf = None;
        self.quiet.stop();
    }
}

/// Tunnel → application stream, writing received frames out as they are.
#[derive(Default)]
struct FromTunnel {
    /// The part of a received frame the writer could not take yet; never empty. Boxed: one
    /// pointer while nothing is held up, and an idle direction keeps no reference into
    /// HTTP/2's receive buffers.
    pending: Option<Box<Bytes>>,
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
            if let Some(mut chunk) = self.pending.take() {
                match self.write(cx, writer, &mut chunk, counter) {
                    Poll::Pending => {
                        self.pending = Some(chunk);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
            }
            if self.done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            match tunnel.poll_recv_bytes(cx) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(mut chunk))) => {
                    match self.write(cx, writer, &mut chunk, counter) {
                        Poll::Pending => {
                            self.pending = Some(Box::new(chunk));
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => self.done = true,
            }
        }
    }

    /// Writes `chunk` out, as far as the writer takes it; what is left stays in it.
    fn write<W>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        chunk: &mut Bytes,
        counter: Option<&AtomicU64>,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        while !chunk.is_empty() {
            let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            chunk.advance(n);
            self.amount += n as u64;
            self.need_flush = true;
            count(counter, n);
        }
        Poll::Ready(Ok(()))
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

    /// Drives `copy` until `f` completes, without ending the copy.
    async fn drive<C, F>(copy: &mut C, f: F) -> F::Output
    where
        C: Future<Output = Result<Transferred, CopyError>> + Unpin,
        F: Future,
    {
        tokio::select! {
            r = copy => panic!("the copy ended early: {r:?}"),
            out = f => out,
        }
    }

    /// Writes `total` bytes into `w` while reading them from `r`, 64 KiB at a time.
    async fn bulk<W, R>(w: &mut W, r: &mut R, total: usize)
    where
        W: AsyncWrite + Unpin,
        R: AsyncRead + Unpin,
    {
        let chunk = vec![0x5a; 64 * 1024];
        let send = async {
            for _ in 0..total / chunk.len() {
                w.write_all(&chunk).await.unwrap();
            }
        };
        let receive = async {
            let mut buf = vec![0; 64 * 1024];
            let mut got = 0;
            while got < total {
                got += r.read(&mut buf).await.unwrap();
            }
        };
        tokio::join!(send, receive);
    }

    /// An idle connection costs no buffer: a small exchange is copied through the stack, a bulk
    /// transfer takes a heap buffer, and the buffer is given back once the flow has been quiet
    /// for [`QUIET`].
    #[tokio::test(start_paused = true)]
    async fn idle_copy_holds_no_buffer() {
        let (mut client, mut proxy_a) = duplex(1 << 20);
        let (mut proxy_b, mut server) = duplex(1 << 20);
        let mut copy = copy_bidirectional(&mut proxy_a, &mut proxy_b, None);
        let idle = |copy: &CopyBidirectional<'_, _, _>| {
            copy.a_to_b.buf.is_none()
                && copy.b_to_a.buf.is_none()
                && copy.a_to_b.quiet.timer.is_none()
                && copy.b_to_a.quiet.timer.is_none()
        };

        // Request/response: straight through the stack buffers.
        let mut got = [0u8; 4];
        client.write_all(b"ping").await.unwrap();
        drive(&mut copy, server.read_exact(&mut got)).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        drive(&mut copy, client.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"pong");
        assert!(idle(&copy), "a small flow never holds a buffer");

        // Bulk: the flow steps up to a heap buffer, kept while bytes keep moving.
        drive(&mut copy, bulk(&mut client, &mut server, 8 << 20)).await;
        assert!(copy.a_to_b.sizer.step > 0, "bulk reads use a bigger buffer");
        assert!(
            copy.a_to_b.buf.is_some(),
            "held between reads of a bulk flow"
        );

        // Quiet for a while: the buffer is given back, and the flow starts small again.
        drive(&mut copy, tokio::time::sleep(QUIET * 3)).await;
        assert!(idle(&copy), "given back after the quiet period");
        assert_eq!(copy.a_to_b.sizer.step, 0);
        assert_eq!(copy.transferred().a_to_b, 4 + (8 << 20));
    }

    /// The same for a tunnel: nothing is held between exchanges, neither a read buffer nor a
    /// reference into HTTP/2's receive buffers.
    #[tokio::test(start_paused = true)]
    async fn idle_tunnel_copy_holds_no_buffer() {
        let (mut near, mut far, _client) = crate::stream::tests::tunnel_pair().await;
        let (mut app, mut proxy) = duplex(1 << 20);
        let mut copy = copy_tunnel(&mut proxy, &mut near, None);
        let idle = |copy: &CopyTunnel<'_, _>| {
            copy.up.buf.is_none()
                && copy.up.pending.is_none()
                && copy.up.quiet.timer.is_none()
                && copy.down.pending.is_none()
        };

        let mut got = [0u8; 4];
        app.write_all(b"ping").await.unwrap();
        drive(&mut copy, far.read_exact(&mut got)).await.unwrap();
        far.write_all(b"pong").await.unwrap();
        drive(&mut copy, app.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"pong");
        assert!(idle(&copy), "a small flow never holds a buffer");

        drive(&mut copy, bulk(&mut app, &mut far, 8 << 20)).await;
        assert!(copy.up.sizer.step > 0, "bulk reads use a bigger buffer");
        drive(&mut copy, bulk(&mut far, &mut app, 8 << 20)).await;
        drive(&mut copy, tokio::time::sleep(QUIET * 3)).await;
        assert!(idle(&copy), "given back after the quiet period");
        assert_eq!(
            copy.transferred(),
            Transferred {
                a_to_b: 4 + (8 << 20),
                b_to_a: 4 + (8 << 20)
            }
        );
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
