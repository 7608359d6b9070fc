//! Request and response bodies as they cross the inbound VIP listener.
//!
//! - [`Replay`]: the downstream request body, shared by every attempt (retries) and by mirrors.
//!   The first reader pulls from the client and records what it read, up to a limit; later
//!   readers replay the record, then continue from the client. Nothing waits for the whole body
//!   before forwarding (gRPC streams flow), and a retry is possible only while the record is
//!   complete from the first byte ([`Replay::replayable`]).
//! - [`Observed`]: a response body that counts its bytes, notes a gRPC status from trailers and
//!   reports once when it ends, fails or is dropped — the "log" phase runs from there.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::stages::connect_originate::BoxError;

/// How much of a request body is kept for retries and mirrors.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why a replayed body cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The body was longer than the replay limit and this reader fell behind the record.
    #[error("request body exceeded the {REPLAY_LIMIT}-byte replay buffer")]
    Overflow,
    /// Reading from the client failed.
    #[error("reading the request body: {0}")]
    Source(String),
}

type SourceBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

struct Shared {
    source: Option<SourceBody>,
    /// Frames read so far (data and trailers), while within the limit.
    frames: Vec<Frame<Bytes>>,
    /// Data bytes read from the client.
    read: u64,
    /// The record lost frames: readers behind it cannot continue.
    overflow: bool,
    /// The client's body ended.
    complete: bool,
    /// Reading from the client failed.
    failed: Option<String>,
    /// Readers waiting for the next frame.
    waiters: Vec<Waker>,
}

/// The shared, replayable request body. Cheap to clone.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Replay {
    /// Wraps the client's body.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        let complete = body.is_end_stream();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: (!complete).then(|| body.map_err(Into::into).boxed()),
                frames: Vec::new(),
                read: 0,
                overflow: false,
                complete,
                failed: None,
                waiters: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reader from the first byte.
    pub fn reader(&self) -> ReplayReader {
        ReplayReader {
            replay: self.clone(),
            position: 0,
        }
    }

    /// Whether a new reader can still get the whole body (nothing was dropped from the record).
    pub fn replayable(&self) -> bool {
        !self.lock().overflow
    }

    /// Whether the client's body has ended.
    pub fn is_complete(&self) -> bool {
        self.lock().complete
    }

    /// Data bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().read
    }
}

/// One reader of a [`Replay`]: the body of one attempt or mirror.
pub struct ReplayReader {
    replay: Replay,
    position: usize,
}

fn clone_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
    if let Some(data) = frame.data_ref() {
        Frame::data(data.clone())
    } else if let Some(trailers) = frame.trailers_ref() {
        Frame::trailers(trailers.clone())
    } else {
        Frame::data(Bytes::new())
    }
}

impl Body for ReplayReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = this.replay.lock();
        if this.position < shared.frames.len() {
            let frame = clone_frame(&shared.frames[this.position]);
            this.position += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if shared.overflow && this.position != usize::MAX {
            // Frames after the record were handed to another reader only if this one is
            // behind; the reader at the head is marked with usize::MAX.
            return Poll::Ready(Some(Err(Box::new(ReplayError::Overflow))));
        }
        if shared.complete {
            return Poll::Ready(None);
        }
        if let Some(reason) = &shared.failed {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Source(reason.clone())))));
        }
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => {
                shared.waiters.push(cx.waker().clone());
                Poll::Pending
            }
            Poll::Ready(None) => {
                shared.complete = true;
                shared.source = None;
                wake_all(&mut shared);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.failed = Some(e.to_string());
                shared.source = None;
                wake_all(&mut shared);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                shared.read += len as u64;
                let recorded: usize = shared
                    .frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(Bytes::len))
                    .sum();
                if !shared.overflow && recorded + len <= REPLAY_LIMIT {
                    shared.frames.push(clone_frame(&frame));
                    this.position = shared.frames.len();
                } else {
                    shared.overflow = true;
                    shared.frames.clear();
                    this.position = usize::MAX;
                }
                if shared.source.as_ref().is_some_and(Body::is_end_stream) {
                    shared.complete = true;
                    shared.source = None;
                }
                wake_all(&mut shared);
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.replay.lock();
        shared.complete && (self.position == usize::MAX || self.position >= shared.frames.len())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for ReplayReader {
    fn drop(&mut self) {
        // The source may have registered this reader's waker only: let the others re-poll.
        wake_all(&mut self.replay.lock());
    }
}

fn wake_all(shared: &mut Shared) {
    for waker in shared.waiters.drain(..) {
        waker.wake();
    }
}

/// What an [`Observed`] body reports when it is done.
#[derive(Debug, Clone, Default)]
pub struct BodyOutcome {
    /// Data bytes sent to the client.
    pub bytes: u64,
    /// The body ended normally (not dropped or failed halfway).
    pub complete: bool,
    /// `grpc-status` from the trailers, when any.
    pub grpc_status: Option<u32>,
}

/// Called once when an [`Observed`] body ends.
pub type OnDone = Box<dyn FnOnce(BodyOutcome) + Send + Sync>;

/// A response body that reports its size and end.
pub struct Observed {
    inner: Option<http_body_util::combinators::BoxBody<Bytes, BoxError>>,
    outcome: BodyOutcome,
    on_done: Option<OnDone>,
}

impl Observed {
    /// Observes `inner`; `on_done` runs when it ends or is dropped.
    pub fn new<B>(inner: B, on_done: OnDone) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self {
            inner: Some(inner.map_err(Into::into).boxed()),
            outcome: BodyOutcome::default(),
            on_done: Some(on_done),
        }
    }

    fn finish(&mut self, complete: bool) {
        self.inner = None;
        self.outcome.complete = complete;
        if let Some(done) = self.on_done.take() {
            done(std::mem::take(&mut self.outcome));
        }
    }
}

/// The `grpc-status` of a header map.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.outcome.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.outcome.grpc_status = grpc_status(trailers).or(this.outcome.grpc_status);
                }
                let end = this.inner.as_ref().is_some_and(Body::is_end_stream);
                if end {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if self.on_done.is_some() {
            let complete = self.inner.as_ref().is_some_and(Body::is_end_stream);
            self.finish(complete);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn second_reader_replays_what_the_first_read() {
        let replay = Replay::new(chunks(&[b"hello ", b"world"]));
        let first = replay.reader().collect().await.unwrap().to_bytes();
        assert_eq!(&first[..], b"hello world");
        assert!(replay.replayable());
        assert!(replay.is_complete());
        let second = replay.reader().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"hello world");
        assert_eq!(replay.bytes_read(), 11);
    }

    #[tokio::test]
    async fn a_reader_dropped_early_leaves_the_rest_to_the_next() {
        let replay = Replay::new(chunks(&[b"a", b"b", b"c"]));
        let mut first = replay.reader();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"a"));
        drop(first);
        let second = replay.reader().collect().await.unwrap().to_bytes();
        assert_eq!(&second[..], b"abc");
    }

    #[tokio::test]
    async fn over_the_limit_the_head_reader_continues_and_replay_is_refused() {
        static BIG: [u8; REPLAY_LIMIT] = [7u8; REPLAY_LIMIT];
        let replay = Replay::new(chunks(&[&BIG, b"tail"]));
        let first = replay.reader().collect().await.unwrap().to_bytes();
        assert_eq!(first.len(), REPLAY_LIMIT + 4);
        assert!(!replay.replayable());
        let second = replay.reader().collect().await;
        assert!(second.is_err(), "a replay after an overflow must fail");
    }

    #[tokio::test]
    async fn observed_counts_bytes_and_reports_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let body = Observed::new(
            Full::new(Bytes::from_static(b"12345")),
            Box::new(move |o| tx.send(o).unwrap()),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 5);
        let outcome = rx.recv().unwrap();
        assert_eq!(outcome.bytes, 5);
        assert!(outcome.complete);
        assert!(rx.try_recv().is_err(), "reported once");
    }

    #[tokio::test]
    async fn observed_dropped_halfway_reports_incomplete() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut body = Observed::new(
            chunks(&[b"ab", b"cd"]),
            Box::new(move |o| tx.send(o).unwrap()),
        );
        let _ = body.frame().await;
        drop(body);
        let outcome = rx.recv().unwrap();
        assert_eq!(outcome.bytes, 2);
        assert!(!outcome.complete);
    }
}
