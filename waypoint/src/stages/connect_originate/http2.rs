//! The upstream HTTP/2 client of `connect_originate`, on the h2 crate directly.
//!
//! One connection per endpoint runs in a task of its own ([`connect`]); each request is driven
//! by the task of the downstream request that sends it. [`exchange`] opens the stream, pipes
//! the request body into it and waits for the response head in that one task; only a body
//! still flowing when the head arrives (a gRPC stream that goes on in both directions) is left
//! to a task of its own. A request costs no task of its own and no hand-over between tasks.
//!
//! [`exchange`] makes the request head valid for HTTP/2 first ([`prepare_head`]): the
//! connection-specific headers HTTP/2 forbids are removed and a `content-length` is set from an
//! exactly known body size, as hyper's client does. The response body ([`ResponseBody`]) gives back flow-control
//! capacity as it is read and ends with the trailers, if any.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use hbone::{OpenStream, OpenStreams};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{BoxError, RequestBody};
use crate::filters;

/// Stream flow-control window (hyper's client default).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection flow-control window (hyper's client default).
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Largest frame payload accepted.
const MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Bytes buffered per stream before a writer waits.
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Largest response header list accepted.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Body bytes a new stream may queue before the connection has given it send capacity (one
/// frame): a small body leaves with its HEADERS instead of waiting for a turn of the
/// connection's task.
const EAGER_BYTES: usize = 16 * 1024;

/// A pooled HTTP/2 connection: requests are opened with its sender while the connection task
/// runs.
#[derive(Clone)]
pub(super) struct Http2Conn {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// The requests in flight, as the connection's writer ([`super::Coalesce`]) counts them.
    streams: OpenStreams,
}

impl Http2Conn {
    /// Whether the connection has ended (a new one is needed).
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Runs the HTTP/2 handshake over `io` and starts the connection's task. Each request in
/// flight is counted in `streams`, which `io` may share.
pub(super) async fn connect<T>(
    io: T,
    addr: SocketAddr,
    streams: OpenStreams,
) -> Result<Http2Conn, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = Arc::clone(&closed);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
        }
        ended.store(true, Ordering::Release);
    });
    Ok(Http2Conn {
        sender,
        closed,
        streams,
    })
}

/// Removes what HTTP/2 forbids in a request head (RFC 9113 §8.2.2: the connection-specific
/// headers, and `te` other than `trailers`; the listener's own hop-by-hop rule,
/// [`filters::strip_hop_by_hop`], covers exactly these) and sets `content-length` from an
/// exactly known body size when the request has none, unless the body is empty and the method
/// gives a body no meaning (`GET`, `HEAD`, `DELETE`, `CONNECT`; RFC 9110 §8.6).
fn prepare_head(method: &Method, headers: &mut HeaderMap, exact_size: Option<u64>) {
    filters::strip_hop_by_hop(headers);
    let body_has_meaning = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    );
    if let Some(len) = exact_size
        && !headers.contains_key(CONTENT_LENGTH)
        && (len != 0 || body_has_meaning)
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// Why a request over HTTP/2 failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    /// The connection could not take the stream, or the stream was reset.
    #[error(transparent)]
    Stream(#[from] h2::Error),
    /// The request body failed before it was sent (the stream is reset).
    #[error("request body: {0}")]
    Body(BoxError),
}

/// Sends `request` on `conn`, its head made valid for HTTP/2 ([`prepare_head`]), and waits for
/// the response head, piping the body meanwhile. A body still flowing when the head arrives
/// goes on in a task of its own.
pub(super) async fn exchange(
    conn: &Http2Conn,
    request: http::Request<RequestBody>,
) -> Result<http::Response<ResponseBody>, ExchangeError> {
    let (mut head, body) = request.into_parts();
    prepare_head(&head.method, &mut head.headers, body.size_hint().exact());
    let head = http::Request::from_parts(head, ());
    // In flight until the head is answered and the body sent, whichever comes last.
    let open = OpenStream::new(&conn.streams);
    let mut sender = conn.sender.clone().ready().await?;
    let end_of_stream = body.is_end_stream();
    let (response, send) = sender.send_request(head, end_of_stream)?;
    let pipe = (!end_of_stream).then(|| Pipe {
        body,
        send,
        pending: None,
        eager_done: false,
    });
    let (response, pipe) = Exchange { response, pipe }.await?;
    if let Some(pipe) = pipe {
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = pipe.await {
                tracing::debug!(error = %e, "upstream HTTP/2 request body ended early");
            }
        });
    }
    let (parts, recv) = response.into_parts();
    let remaining = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Ok(http::Response::from_parts(
        parts,
        ResponseBody {
            recv,
            data_done: false,
            remaining,
        },
    ))
}

/// Waits for the response head while the request body is piped.
struct Exchange {
    response: ResponseFuture,
    pipe: Option<Pipe>,
}

impl Future for Exchange {
    type Output = Result<(http::Response<RecvStream>, Option<Pipe>), ExchangeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(pipe) = &mut this.pipe {
            match Pin::new(pipe).poll(cx) {
                Poll::Ready(Ok(())) => this.pipe = None,
                // The body failed: its error is the request's.
                Poll::Ready(Err(PipeError::Body(e))) => {
                    return Poll::Ready(Err(ExchangeError::Body(e)));
                }
                // The stream is over (reset by the peer): the response says why.
                Poll::Ready(Err(PipeError::Stream(_))) => this.pipe = None,
                Poll::Pending => {}
            }
        }
        let response = ready!(Pin::new(&mut this.response).poll(cx))?;
        Poll::Ready(Ok((response, this.pipe.take())))
    }
}

/// Why piping a request body stopped early.
#[derive(Debug, thiserror::Error)]
enum PipeError {
    /// Reading the body failed; the stream was reset.
    #[error("reading the request body: {0}")]
    Body(BoxError),
    /// The stream was reset or the connection closed.
    #[error("stream: {0}")]
    Stream(h2::Error),
}

/// Copies a request body into its stream as send capacity allows.
struct Pipe {
    body: RequestBody,
    send: SendStream<Bytes>,
    /// Data read from the body and not yet all sent, and whether it ends the body.
    pending: Option<(Bytes, bool)>,
    /// The first chunk was queued without waiting for capacity (at most [`EAGER_BYTES`]).
    eager_done: bool,
}

impl Pipe {
    fn poll_pipe(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PipeError>> {
        loop {
            if let Some((data, last)) = &mut self.pending {
                let eager = !self.eager_done && data.len() <= EAGER_BYTES;
                self.eager_done = true;
                let capacity = if eager {
                    data.len()
                } else {
                    self.send.reserve_capacity(data.len());
                    self.send.capacity()
                };
                if capacity == 0 {
                    match ready!(self.send.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Poll::Ready(Err(PipeError::Stream(e))),
                        None => {
                            return Poll::Ready(Err(PipeError::Stream(h2::Error::from(
                                h2::Reason::STREAM_CLOSED,
                            ))));
                        }
                    }
                }
                let chunk = data.split_to(capacity.min(data.len()));
                // The body's last bytes carry END_STREAM: no empty frame after them.
                let end = data.is_empty() && *last;
                if data.is_empty() {
                    self.pending = None;
                }
                self.send.send_data(chunk, end).map_err(PipeError::Stream)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if let Poll::Ready(reset) = self.send.poll_reset(cx) {
                let error = match reset {
                    Ok(reason) => h2::Error::from(reason),
                    Err(e) => e,
                };
                return Poll::Ready(Err(PipeError::Stream(error)));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.send
                        .send_data(Bytes::new(), true)
                        .map_err(PipeError::Stream)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = self.body.is_end_stream();
                        if data.has_remaining() {
                            self.pending = Some((data, last));
                        } else if last {
                            self.send
                                .send_data(Bytes::new(), true)
                                .map_err(PipeError::Stream)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.send
                                .send_trailers(trailers)
                                .map_err(PipeError::Stream)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.send.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(PipeError::Body(e)));
                }
            }
        }
    }
}

impl Future for Pipe {
    type Output = Result<(), PipeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_pipe(cx)
    }
}

/// A response body from an HTTP/2 upstream.
pub(super) struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    /// What `content-length` says is left.
    remaining: Option<u64>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR after the response is an early end, not a failure
                // (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderName;
    use http::header::{CONNECTION, TE};
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    const ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 80);

    /// A request body fed by the test, one chunk at a time; it ends when the sender is dropped.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    /// What the upstream saw of one request.
    #[derive(Debug)]
    struct Seen {
        head: http::request::Parts,
        /// The DATA frames' payloads, in order (an empty one included).
        frames: Vec<Bytes>,
    }

    /// An HTTP/2 upstream on `io`: answers each request with `200`, echoing every DATA frame
    /// as it arrives (the response head goes out with the first), then `grpc-status: 0`
    /// trailers once the request ends.
    fn upstream(io: tokio::io::DuplexStream) -> mpsc::UnboundedReceiver<Seen> {
        let (seen_tx, seen_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(io).await.expect("server handshake");
            while let Some(stream) = conn.accept().await {
                let (request, mut respond) = stream.expect("stream");
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let (head, mut body) = request.into_parts();
                    let response = http::Response::new(());
                    let mut send = respond.send_response(response, false).expect("head");
                    let mut frames = Vec::new();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.expect("data");
                        let _ = body.flow_control().release_capacity(chunk.len());
                        if !chunk.is_empty() {
                            send.send_data(chunk.clone(), false).expect("echo");
                        }
                        frames.push(chunk);
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    send.send_trailers(trailers).expect("trailers");
                    let _ = seen_tx.send(Seen { head, frames });
                });
            }
        });
        seen_rx
    }

    fn post(headers: &[(&str, &str)], body: RequestBody) -> http::Request<RequestBody> {
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri("http://reviews.default.svc.cluster.local/echo")
            .version(http::Version::HTTP_2)
            .body(body)
            .expect("request");
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        request
    }

    #[tokio::test]
    async fn a_request_with_a_body_goes_in_one_frame_and_its_response_comes_back_whole() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut seen = upstream(server_io);
        let conn = connect(client_io, ADDR, OpenStreams::default())
            .await
            .expect("client handshake");

        let body = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed();
        let request = post(&[("connection", "close"), ("te", "trailers")], body);
        let response = exchange(&conn, request).await.expect("exchange");
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(in_flight(&conn), 0, "answered and its body sent");
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
        assert_eq!(trailers.get("grpc-status").expect("grpc-status"), "0");

        let seen = seen.recv().await.expect("request seen");
        // The body's one chunk carried END_STREAM: no empty DATA frame after it.
        assert_eq!(seen.frames, vec![Bytes::from_static(b"hello")]);
        assert_eq!(seen.head.headers.get(CONTENT_LENGTH).expect("length"), "5");
        assert_eq!(seen.head.headers.get(TE).expect("te"), "trailers");
        assert!(seen.head.headers.get(CONNECTION).is_none());
        assert_eq!(
            seen.head.uri.authority().map(|a| a.as_str()),
            Some("reviews.default.svc.cluster.local")
        );
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn a_body_larger_than_the_peer_window_waits_for_capacity_and_arrives_whole() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut seen = upstream(server_io);
        let conn = connect(client_io, ADDR, OpenStreams::default())
            .await
            .expect("client handshake");
        // Four times the 65 535-byte window the upstream starts with.
        let payload: Bytes = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let body = http_body_util::Full::new(payload.clone())
            .map_err(|never| match never {})
            .boxed();
        let response = exchange(&conn, post(&[], body)).await.expect("exchange");
        let echoed = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(echoed, payload);
        let seen = seen.recv().await.expect("request seen");
        let received: usize = seen.frames.iter().map(Bytes::len).sum();
        assert_eq!(received, payload.len());
    }

    #[tokio::test]
    async fn a_body_still_flowing_after_the_response_head_goes_on() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut seen = upstream(server_io);
        let conn = connect(client_io, ADDR, OpenStreams::default())
            .await
            .expect("client handshake");

        let (feed, fed) = mpsc::channel(1);
        feed.send(Bytes::from_static(b"one")).await.expect("feed");
        let response = exchange(&conn, post(&[("te", "trailers")], Fed(fed).boxed()))
            .await
            .expect("the head arrives while the body is open");
        assert_eq!(in_flight(&conn), 1, "its body is still being sent");
        let mut body = response.into_body();
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"one"));

        // The next message is sent only after the first reply: the body is piped on.
        feed.send(Bytes::from_static(b"two")).await.expect("feed");
        let second = body.frame().await.expect("frame").expect("data");
        assert_eq!(
            second.into_data().expect("data"),
            Bytes::from_static(b"two")
        );
        drop(feed);
        let last = body.frame().await.expect("frame").expect("trailers");
        let trailers = last.into_trailers().expect("trailers");
        assert_eq!(trailers.get("grpc-status").expect("grpc-status"), "0");
        assert!(body.frame().await.is_none());

        let seen = seen.recv().await.expect("request seen");
        let data: Vec<Bytes> = seen.frames.into_iter().filter(|f| !f.is_empty()).collect();
        assert_eq!(
            data,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        assert!(seen.head.headers.get(CONTENT_LENGTH).is_none());
        assert_eq!(in_flight(&conn), 0, "the body has ended");
    }

    /// The requests `conn` counts in flight.
    fn in_flight(conn: &Http2Conn) -> u32 {
        conn.streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn heads_lose_what_http2_forbids_and_gain_a_content_length() {
        /// (method, headers in, exact body size, header names out, content-length out)
        type Case = (
            Method,
            &'static [(&'static str, &'static str)],
            Option<u64>,
            &'static [&'static str],
            Option<&'static str>,
        );
        let table: &[Case] = &[
            (
                Method::POST,
                &[
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-connection", "keep-alive"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                    ("x-app", "kept"),
                ],
                Some(1024),
                &["content-length", "x-app"],
                Some("1024"),
            ),
            // `te: trailers` (gRPC) stays; any other `te` goes.
            (Method::POST, &[("te", "trailers")], None, &["te"], None),
            (Method::POST, &[("te", "gzip")], None, &[], None),
            // A content-length already there is left alone.
            (
                Method::POST,
                &[("content-length", "7")],
                Some(7),
                &["content-length"],
                Some("7"),
            ),
            // An empty GET or DELETE gets none; an empty POST says 0.
            (Method::GET, &[], Some(0), &[], None),
            (Method::DELETE, &[], Some(0), &[], None),
            (Method::POST, &[], Some(0), &["content-length"], Some("0")),
            // A body of unknown size: none.
            (Method::POST, &[], None, &[], None),
        ];
        for (method, input, size, want_names, want_length) in table {
            let mut h = headers(input);
            prepare_head(method, &mut h, *size);
            assert_eq!(names(&h), *want_names, "{method} {input:?}");
            assert_eq!(
                h.get(CONTENT_LENGTH).map(|v| v.to_str().expect("ascii")),
                *want_length,
                "{method} {input:?}"
            );
        }
    }
}
