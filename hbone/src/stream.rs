//! One HBONE tunnel as a byte stream.
//!
//! [`H2Stream`] turns the send and receive halves of an HTTP/2 `CONNECT` stream into
//! `AsyncRead + AsyncWrite`, honouring HTTP/2 flow control: writes wait for send capacity, and
//! received bytes give their window back as soon as they are taken from the connection.
//! Shutting down the write side sends `END_STREAM` (a half-close); the read side reports EOF when
//! the peer does the same.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::coalesce::OpenStream;
use crate::pool::Slot;

/// An open HBONE tunnel, on either the client or the server side.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet handed to the reader.
    /// The rest of a received chunk that a read could not take in full; never empty. Boxed, so
    /// a stream that is read chunk by chunk (the tunnel copy) carries one pointer for it.
    pending: Option<Box<Bytes>>,
    /// The peer has ended its side of the stream.
    recv_done: bool,
    /// We have ended our side of the stream.
    send_done: bool,
    /// What counts the stream as open while it lives. Held inline (not boxed) so a tunnel
    /// costs no allocation of its own.
    _hold: Hold,
}

/// What an [`H2Stream`] holds for its connection until it is dropped.
pub(crate) enum Hold {
    /// Nothing (a stream made outside a pool or server connection).
    None,
    /// The pool slot of a client-side tunnel (held for its `Drop` only).
    #[allow(dead_code)]
    Pool(Slot),
    /// The server connection's count of open streams.
    Served(OpenStream),
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("id", &self.send.stream_id())
            .field("recv_done", &self.recv_done)
            .field("send_done", &self.send_done)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, hold: Hold) -> Self {
        Self {
            send,
            recv,
            pending: None,
            recv_done: false,
            send_done: false,
            _hold: hold,
        }
    }

    /// Counts one more open stream on the server connection this stream came in on, for as
    /// long as the returned value lives; `None` for a stream of a client connection. For a
    /// tunnel whose bytes are written by several tasks in turn, such as an HTTP/2 connection
    /// inside it (the request tasks hand their frames to the connection's task): the
    /// connection's writer then lets ready tasks run before it sends, as it does when several
    /// tunnels are open, so that frames written in one pass of the scheduler leave together.
    pub fn count_another_writer(&self) -> Option<OpenStream> {
        match &self._hold {
            Hold::Served(open) => Some(open.another()),
            Hold::None | Hold::Pool(_) => None,
        }
    }

    /// Receives the next chunk of bytes from the peer without copying; `None` at end of stream.
    pub fn poll_recv_bytes(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if let Some(pending) = self.pending.take() {
            return Poll::Ready(Some(Ok(*pending)));
        }
        if self.recv_done {
            return Poll::Ready(None);
        }
        loop {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Give the window back now: the bytes leave HTTP/2's accounting here and the
                    // caller bounds what it buffers itself.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(h2_to_io(e)))),
                None => {
                    self.recv_done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }

    /// Sends bytes the caller already owns, without copying. Returns how many were sent (at
    /// least one, unless `data` is empty); the rest is left in `data`.
    pub fn poll_send_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.send_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel write side is closed",
            )));
        }
        let n = ready!(self.poll_send_capacity(cx, data.len()))?;
        let chunk = data.split_to(n);
        self.send.send_data(chunk, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// Waits until some send capacity (≤ `want`) is available.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            let cap = self.send.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap.min(want)));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel was closed by the peer",
                    )));
                }
            }
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(pending) = &mut this.pending {
            let n = buf.remaining().min(pending.len());
            buf.put_slice(&pending[..n]);
            pending.advance(n);
            if pending.is_empty() {
                this.pending = None;
            }
            return Poll::Ready(Ok(()));
        }
        let mut data = match ready!(this.poll_recv_bytes(cx)) {
            Some(Ok(data)) => data,
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => return Poll::Ready(Ok(())),
        };
        let n = buf.remaining().min(data.len());
        buf.put_slice(&data[..n]);
        if n < data.len() {
            data.advance(n);
            this.pending = Some(Box::new(data));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel write side is closed",
            )));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// All of `bufs` that fits the send capacity goes out as one DATA frame: an HTTP codec on
    /// top (hyper's HTTP/1.1, an inner HTTP/2) writes a head and a body, or several frames, in
    /// one call, and each frame here costs the connection a TLS record and a wake-up.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.send_done {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel write side is closed",
            )));
        }
        let n = ready!(this.poll_send_capacity(cx, total))?;
        let mut chunk = bytes::BytesMut::with_capacity(n);
        for buf in bufs {
            let take = buf.len().min(n - chunk.len());
            chunk.extend_from_slice(&buf[..take]);
            if chunk.len() == n {
                break;
            }
        }
        this.send
            .send_data(chunk.freeze(), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.send_done {
            this.send_done = true;
            if let Err(e) = this.send.send_data(Bytes::new(), true) {
                // A peer that has ended its side may close the stream without waiting for our
                // END_STREAM (both directions are then done); ending ours is moot, not an error.
                // Before the peer has finished, a closed stream is a real failure.
                if !this.recv_done {
                    return Poll::Ready(Err(h2_to_io(e)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Maps an HTTP/2 error onto the closest I/O error kind.
pub(crate) fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("http/2 i/o error"));
    }
    let kind = match err.reason() {
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) if err.is_reset() => {
            io::ErrorKind::ConnectionReset
        }
        Some(_) if err.is_go_away() => io::ErrorKind::ConnectionAborted,
        Some(_) => io::ErrorKind::ConnectionReset,
        None => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The client's side of an in-memory `CONNECT`: its request handle (kept so the connection
    /// stays open), the response to come and the stream's send half.
    pub(crate) type ClientSide = (
        h2::client::SendRequest<Bytes>,
        h2::client::ResponseFuture,
        SendStream<Bytes>,
    );

    /// A `CONNECT` sent over an in-memory HTTP/2 connection (no TLS): the request as the server
    /// received it, its responder, and the client's side.
    pub(crate) async fn connect_pair() -> (
        http::Request<RecvStream>,
        h2::server::SendResponse<Bytes>,
        ClientSide,
    ) {
        let (c, s) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            let accepted = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            accepted
        });
        let (client, conn) = h2::client::handshake(c).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("127.0.0.1:80")
            .body(())
            .unwrap();
        let (response, send) = client.send_request(req, false).unwrap();
        let (request, respond) = server.await.unwrap();
        (request, respond, (client, response, send))
    }

    /// Both ends of one tunnel over an in-memory HTTP/2 connection (no TLS), and the client's
    /// request handle (kept so the connection stays open).
    pub(crate) async fn tunnel_pair() -> (H2Stream, H2Stream, h2::client::SendRequest<Bytes>) {
        let (request, mut respond, (client, response, send)) = connect_pair().await;
        let answer = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let far = H2Stream::new(answer, request.into_body(), Hold::None);
        let recv = response.await.unwrap().into_body();
        (H2Stream::new(send, recv, Hold::None), far, client)
    }

    #[tokio::test]
    async fn reads_smaller_than_a_chunk_take_it_in_pieces() {
        let (mut near, mut far, _client) = tunnel_pair().await;
        let msg: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        far.write_all(&msg).await.unwrap();
        far.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut piece = [0u8; 7];
        loop {
            let n = near.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, msg);
        assert!(near.pending.is_none(), "nothing is held once all is read");
    }

    #[tokio::test]
    async fn half_close_after_the_peer_finished_and_went_away_is_clean() {
        let (mut near, mut far, _client) = tunnel_pair().await;
        far.write_all(b"response").await.unwrap();
        far.shutdown().await.unwrap();
        drop(far);
        let mut got = Vec::new();
        near.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        near.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_vectored_write_is_one_chunk() {
        let (mut near, mut far, _client) = tunnel_pair().await;
        let n = far
            .write_vectored(&[io::IoSlice::new(b"head "), io::IoSlice::new(b"body")])
            .await
            .unwrap();
        assert_eq!(n, 9);
        assert!(far.is_write_vectored());
        let chunk = std::future::poll_fn(|cx| near.poll_recv_bytes(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&chunk[..], b"head body");
    }
}
