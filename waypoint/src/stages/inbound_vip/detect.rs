//! Protocol detection on a tunnelled stream: HTTP (HTTP/1.1 request line or the HTTP/2
//! preface) or opaque TCP, from the first bytes, which are then replayed to whoever reads the
//! stream ([`Prefixed`]).
//!
//! An HTTP/1.1 request line is a standard method followed by a space, or any method token
//! (up to [`MAX_METHOD_LEN`] characters, any case) followed by a space and an origin-form
//! (`/…`) or asterisk-form (`*`) target. Extension and lower-case methods are thus served as
//! HTTP, where AuthorizationPolicies see them (a lower-case method is refused with 400),
//! instead of reaching the backend as opaque bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/1.1 methods, with the space after them.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
/// Enough bytes to tell every candidate apart.
const SNIFF_BYTES: usize = 24;
/// The longest method token recognised without a standard method's spelling.
pub const MAX_METHOD_LEN: usize = 16;

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// Anything else, or nothing within the detection timeout (server-first protocols).
    Tcp,
    /// The stream ended before any byte.
    Closed,
}

/// Classifies `prefix`: `Some` once it is decided, `None` while it could still become HTTP.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    let candidates = METHODS.iter().copied().chain(std::iter::once(H2_PREFACE));
    let mut undecided = false;
    match request_line(prefix) {
        Some(true) => return Some(Detected::Http),
        Some(false) => {}
        None => undecided = true,
    }
    for candidate in candidates {
        let n = prefix.len().min(candidate.len());
        if prefix[..n] == candidate[..n] {
            if prefix.len() >= candidate.len() || (candidate == H2_PREFACE && prefix.len() >= 4) {
                return Some(Detected::Http);
            }
            undecided = true;
        }
    }
    if undecided && prefix.len() < SNIFF_BYTES {
        None
    } else {
        Some(Detected::Tcp)
    }
}

/// Whether `prefix` (non-empty) is the start of the HTTP/2 connection preface.
pub fn starts_h2(prefix: &[u8]) -> bool {
    let n = prefix.len().min(H2_PREFACE.len());
    n > 0 && prefix[..n] == H2_PREFACE[..n]
}

/// Whether `prefix` starts like `<method token> SP ('/' | '*')`: `None` while it still could.
fn request_line(prefix: &[u8]) -> Option<bool> {
    let method = prefix.iter().take_while(|b| is_tchar(**b)).count();
    if method == 0 || method > MAX_METHOD_LEN {
        return Some(false);
    }
    match (prefix.get(method), prefix.get(method + 1)) {
        (None, _) | (Some(b' '), None) => None,
        (Some(b' '), Some(b'/' | b'*')) => Some(true),
        _ => Some(false),
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A stream whose first bytes were read for detection and are served again first.
pub struct Prefixed<IO> {
    prefix: BytesMut,
    inner: IO,
}

impl<IO: AsyncRead + Unpin> Prefixed<IO> {
    /// Reads from `inner` until the protocol is known (or `timeout` passes with no decision:
    /// TCP) and returns the verdict with the stream, the bytes read still to be served.
    pub async fn detect(mut inner: IO, timeout: Duration) -> (Detected, Self) {
        let mut prefix = BytesMut::with_capacity(SNIFF_BYTES);
        let deadline = tokio::time::Instant::now() + timeout;
        let verdict = loop {
            if let Some(v) = (!prefix.is_empty()).then(|| classify(&prefix)).flatten() {
                break v;
            }
            let mut chunk = [0u8; SNIFF_BYTES];
            let want = SNIFF_BYTES - prefix.len();
            match tokio::time::timeout_at(deadline, inner.read(&mut chunk[..want])).await {
                Err(_) => break Detected::Tcp,
                Ok(Ok(0)) => {
                    break if prefix.is_empty() {
                        Detected::Closed
                    } else {
                        Detected::Tcp
                    };
                }
                Ok(Ok(n)) => prefix.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => break Detected::Closed,
            }
        };
        (verdict, Self { prefix, inner })
    }
}

impl<IO> Prefixed<IO> {
    /// `inner` served as it comes: nothing was read for detection.
    pub fn undetected(inner: IO) -> Self {
        Self {
            prefix: BytesMut::new(),
            inner,
        }
    }

    /// The detected bytes not yet read.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Option<Detected>)] = &[
            (b"GET / HTTP/1.1\r\n", Some(Detected::Http)),
            (b"GE", None),
            (b"POST ", Some(Detected::Http)),
            (b"PRI * HTTP/2.0\r\n", Some(Detected::Http)),
            (b"PRI", None),
            (b"\x16\x03\x01\x02\x00", Some(Detected::Tcp)),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Some(Detected::Tcp)),
            (b"SSH-2.0-Open", None),
            (b"GET/", Some(Detected::Tcp)),
            (b"get / HTTP/1.1", Some(Detected::Http)),
            (b"PROPFIND /a HTTP/1.1", Some(Detected::Http)),
            (b"M-SEARCH * HTTP/1.1", Some(Detected::Http)),
            (b"get ", None),
            (b"get key\r\n", Some(Detected::Tcp)),
            (b"PING\r\n", Some(Detected::Tcp)),
            (b"AVERYLONGMETHODNAME /", Some(Detected::Tcp)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                classify(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn detected_bytes_are_replayed() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (verdict, mut stream) = Prefixed::detect(b, Duration::from_secs(5)).await;
        assert_eq!(verdict, Detected::Http);
        let mut got = vec![0u8; 19];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_is_tcp_after_the_timeout() {
        let (_a, b) = tokio::io::duplex(64);
        let (verdict, _) = Prefixed::detect(b, Duration::from_millis(20)).await;
        assert_eq!(verdict, Detected::Tcp);
    }
}
