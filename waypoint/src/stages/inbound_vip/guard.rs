//! Guards on the bytes of a downstream HTTP connection, between the tunnel and the HTTP server
//! of the inbound VIP listener: they see what the client sends before hyper parses it and cut
//! the connection on what hyper tolerates but a proxy must not.
//!
//! - HTTP/1.1 ([`H1Framing`], [`H1Guard`]): a request head with both `Content-Length` and
//!   `Transfer-Encoding`, or with `Content-Length` values that disagree, is request smuggling
//!   material (hyper would serve the first as chunked): the head never reaches hyper, the client
//!   gets `400 Bad Request` with `connection: close` and the connection ends, as Envoy answers
//!   (`http1.content_length_and_chunked_not_allowed`, `http1.content_length_not_allowed`…).
//!   The guard also runs the request-header deadline (Envoy `request_headers_timeout`): from
//!   the first byte of a request head to its end. Bodies are skipped by their framing
//!   (`Content-Length`, chunked) so every head of a kept-alive connection is checked; after an
//!   upgrade request or `CONNECT` the bytes are no longer HTTP and are not looked at.
//! - HTTP/2 ([`H2Frames`], [`H2Guard`]): counts consecutive frames with an empty payload
//!   (Envoy `max_consecutive_inbound_frames_with_empty_payload`); over the limit the connection
//!   is closed.
//!
//! The scanners are pure state machines fed with the bytes as they arrive, table-tested; the
//! wrappers are the I/O around them.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a header line kept for inspection: enough for the names and values looked at.
const LINE_KEEP: usize = 256;
/// Longest chunk-size line accepted by the scanner (hyper's own limit is lower).
const CHUNK_LINE_MAX: usize = 4096;

/// Why a connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// An HTTP/1.1 request with both `Content-Length` and `Transfer-Encoding`.
    #[error("request has both content-length and transfer-encoding")]
    ContentLengthAndTransferEncoding,
    /// An HTTP/1.1 request whose `Content-Length` values disagree or do not parse.
    #[error("request has an invalid or conflicting content-length")]
    InvalidContentLength,
    /// An HTTP/1.1 request head larger than `max_request_headers_kb`.
    #[error("request headers too large")]
    RequestHeadersTooLarge,
    /// A request head did not complete within the request-header deadline.
    #[error("request headers not received within the deadline")]
    RequestHeadersTimeout,
    /// Too many consecutive HTTP/2 frames with an empty payload.
    #[error("too many consecutive HTTP/2 frames with an empty payload")]
    EmptyFrameFlood,
}

impl Violation {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for it.
    pub fn details(self) -> &'static str {
        match self {
            Self::ContentLengthAndTransferEncoding => {
                "http1.content_length_and_chunked_not_allowed"
            }
            Self::InvalidContentLength => "http1.content_length_not_allowed",
            Self::RequestHeadersTimeout => "request_header_timeout",
            Self::RequestHeadersTooLarge => "http1.headers_too_large",
            Self::EmptyFrameFlood => "http2.inbound_empty_frames_flood",
        }
    }
}

/// Where the HTTP/1.1 scanner is in the request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum H1State {
    /// Reading a request head.
    Head(Head),
    /// Skipping a body of this many bytes.
    Body(u64),
    /// Reading a chunk-size line (this many bytes so far).
    ChunkSize {
        len: usize,
        size: Option<u64>,
        ext: bool,
    },
    /// Skipping chunk data.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data (`\r` seen or not).
    ChunkEnd,
    /// Reading trailer lines; `empty` = nothing on the current line yet.
    Trailers { empty: bool },
    /// Not HTTP any more (upgrade, CONNECT) or not parseable: nothing is checked.
    Opaque,
}

/// A request head being read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Head {
    /// Bytes of the head so far (leading empty lines excluded).
    bytes: usize,
    /// Whether the request line has been read.
    request_line: bool,
    /// Whether the request line is `CONNECT`.
    connect: bool,
    content_length: Option<u64>,
    bad_content_length: bool,
    transfer_encoding: bool,
    chunked: bool,
    upgrade: bool,
}

/// The HTTP/1.1 request-framing scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H1Framing {
    state: H1State,
    /// Largest request head, in bytes.
    max_head: usize,
    /// The current head line's first bytes ([`LINE_KEEP`] at most, `\r` left out). One buffer
    /// for the connection's whole life: cleared at each line end, allocated once.
    line: Vec<u8>,
}

impl Default for H1Framing {
    fn default() -> Self {
        Self::with_max_head(usize::MAX)
    }
}

impl H1Framing {
    /// A scanner refusing request heads over `max_head` bytes.
    pub fn with_max_head(max_head: usize) -> Self {
        Self {
            state: H1State::Head(Head::default()),
            max_head,
            line: Vec::new(),
        }
    }

    /// Whether part of a request head has arrived and its end has not.
    pub fn in_head(&self) -> bool {
        matches!(&self.state, H1State::Head(head) if head.bytes > 0)
    }

    /// Consumes `bytes`; `Err` at the end of a head that must not be served.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                H1State::Opaque => return Ok(()),
                H1State::Body(remaining) | H1State::ChunkData(remaining) => {
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = if matches!(self.state, H1State::ChunkData(_)) {
                            H1State::ChunkEnd
                        } else {
                            H1State::Head(Head::default())
                        };
                    }
                    n
                }
                H1State::Head(head) => {
                    // A line at a time: the bytes up to the next line end are counted and the
                    // first of them kept, then the line end is handled.
                    let newline = memchr::memchr(b'\n', bytes);
                    let mut text = &bytes[..newline.unwrap_or(bytes.len())];
                    if head.bytes == 0 {
                        // A `\r` before a head's first byte belongs to an empty line.
                        while let [b'\r', rest @ ..] = text {
                            text = rest;
                        }
                    }
                    head.bytes += text.len();
                    if head.bytes > self.max_head {
                        return Err(Violation::RequestHeadersTooLarge);
                    }
                    self.keep(text);
                    match newline {
                        Some(at) => {
                            self.line_end()?;
                            at + 1
                        }
                        None => bytes.len(),
                    }
                }
                _ => {
                    self.byte(bytes[0])?;
                    1
                }
            };
            bytes = &bytes[used..];
        }
        Ok(())
    }

    /// Keeps the first bytes of a head line, `\r` left out, up to [`LINE_KEEP`].
    fn keep(&mut self, text: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.line.len());
        // The usual line has one `\r`, its last byte: the rest is copied as it is.
        let body = text.strip_suffix(b"\r").unwrap_or(text);
        let first = &body[..body.len().min(room)];
        if memchr::memchr(b'\r', first).is_none() {
            self.line.extend_from_slice(first);
        } else {
            self.line
                .extend(text.iter().copied().filter(|&b| b != b'\r').take(room));
        }
    }

    /// The end of a head line: the request line, a header, or the empty line ending the head.
    fn line_end(&mut self) -> Result<(), Violation> {
        let H1State::Head(head) = &mut self.state else {
            return Ok(());
        };
        if head.bytes == 0 {
            // Empty lines before a request line are ignored.
            return Ok(());
        }
        head.bytes += 1;
        if self.line.is_empty() {
            let head = std::mem::take(head);
            self.state = head.end()?;
        } else if !head.request_line {
            head.request_line = true;
            head.connect = self.line.starts_with(b"CONNECT ");
        } else {
            head.header(&self.line);
        }
        self.line.clear();
        Ok(())
    }

    /// One byte of a chunked body's framing or trailers.
    fn byte(&mut self, b: u8) -> Result<(), Violation> {
        match &mut self.state {
            H1State::ChunkSize { len, size, ext } => {
                *len += 1;
                if *len > CHUNK_LINE_MAX {
                    self.state = H1State::Opaque;
                    return Ok(());
                }
                match b {
                    b'\n' => {
                        self.state = match *size {
                            None => H1State::Opaque,
                            Some(0) => H1State::Trailers { empty: true },
                            Some(n) => H1State::ChunkData(n),
                        };
                    }
                    b'\r' => {}
                    _ if *ext => {}
                    b';' | b' ' | b'\t' => *ext = true,
                    _ => {
                        let digit = (b as char).to_digit(16);
                        *size = match (digit, *size) {
                            (Some(d), None) => Some(u64::from(d)),
                            (Some(d), Some(s)) if s < (1 << 60) => Some(s * 16 + u64::from(d)),
                            _ => {
                                self.state = H1State::Opaque;
                                return Ok(());
                            }
                        };
                    }
                }
            }
            H1State::ChunkEnd => match b {
                b'\r' => {}
                b'\n' => {
                    self.state = H1State::ChunkSize {
                        len: 0,
                        size: None,
                        ext: false,
                    };
                }
                _ => self.state = H1State::Opaque,
            },
            H1State::Trailers { empty } => match b {
                b'\r' => {}
                b'\n' if *empty => self.state = H1State::Head(Head::default()),
                b'\n' => *empty = true,
                _ => *empty = false,
            },
            H1State::Head(_) | H1State::Body(_) | H1State::ChunkData(_) | H1State::Opaque => {}
        }
        Ok(())
    }
}

impl Head {
    /// Notes a header line.
    fn header(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let part = trim(part);
                let parsed = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (parsed, self.content_length) {
                    (None, _) => self.bad_content_length = true,
                    (Some(n), Some(previous)) if n != previous => self.bad_content_length = true,
                    (Some(n), _) => self.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            self.chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }

    /// What follows the head, or why it must not be served.
    fn end(self) -> Result<H1State, Violation> {
        if self.transfer_encoding && (self.content_length.is_some() || self.bad_content_length) {
            return Err(Violation::ContentLengthAndTransferEncoding);
        }
        if self.bad_content_length {
            return Err(Violation::InvalidContentLength);
        }
        if self.upgrade || self.connect {
            return Ok(H1State::Opaque);
        }
        Ok(
            match (self.transfer_encoding, self.chunked, self.content_length) {
                // A non-chunked transfer coding: hyper answers 400.
                (true, false, _) => H1State::Opaque,
                (true, true, _) => H1State::ChunkSize {
                    len: 0,
                    size: None,
                    ext: false,
                },
                (false, _, Some(n)) if n > 0 => H1State::Body(n),
                _ => H1State::Head(Head::default()),
            },
        )
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Frame types whose empty payload counts.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// The HTTP/2 frame scanner: follows frame boundaries and counts consecutive frames with an
/// empty payload that end nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Frames {
    /// Most such frames in a row.
    max_empty: u32,
    /// Preface bytes still to skip.
    preface: usize,
    /// The frame header being read.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: u64,
    /// Consecutive empty frames so far.
    empty: u32,
}

impl H2Frames {
    /// A scanner for a connection that starts with the client preface.
    pub fn new(max_empty: u32) -> Self {
        Self {
            max_empty,
            preface: super::detect::H2_PREFACE.len(),
            header: [0; 9],
            header_len: 0,
            payload: 0,
            empty: 0,
        }
    }

    /// Consumes `bytes`; `Err` when the empty-frame limit is exceeded.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
                continue;
            }
            if self.payload > 0 {
                let n = usize::try_from(self.payload)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                self.frame()?;
            }
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<(), Violation> {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        let len = u64::from(u32::from_be_bytes([0, l0, l1, l2]));
        self.payload = len;
        let ends = match kind {
            DATA | HEADERS => flags & END_STREAM != 0,
            CONTINUATION => flags & END_HEADERS != 0,
            _ => return Ok(()),
        };
        if len == 0 && !ends {
            self.empty += 1;
            if self.empty > self.max_empty {
                return Err(Violation::EmptyFrameFlood);
            }
        } else {
            self.empty = 0;
        }
        Ok(())
    }
}

/// What a guard inspects.
#[derive(Debug)]
pub enum Scanner {
    /// HTTP/1.1 requests.
    H1(H1Framing),
    /// HTTP/2 frames.
    H2(H2Frames),
}

/// A downstream HTTP connection's stream with its guard.
pub struct Guarded<IO> {
    inner: IO,
    scanner: Scanner,
    /// The request-header deadline (HTTP/1.1), when enabled.
    header_timeout: Option<Duration>,
    /// Running while a request head is incomplete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The local reply still to write before the connection fails.
    reply: Option<(Violation, &'static [u8], usize)>,
    /// Set once the connection was cut.
    cut: Option<Violation>,
}

/// The reply to a request with broken framing.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nBad Request";

/// The reply to a request head over the size limit.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nRequest Header Fields Too Large";

impl<IO> Guarded<IO> {
    /// Guards `inner` with `scanner`; `header_timeout` applies to HTTP/1.1 request heads.
    pub fn new(inner: IO, scanner: Scanner, header_timeout: Option<Duration>) -> Self {
        Self {
            inner,
            scanner,
            header_timeout,
            deadline: None,
            reply: None,
            cut: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        match &mut self.scanner {
            Scanner::H1(s) => s.feed(bytes),
            Scanner::H2(s) => s.feed(bytes),
        }
    }

    fn in_head(&self) -> bool {
        matches!(&self.scanner, Scanner::H1(s) if s.in_head())
    }
}

fn cut_error(violation: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, violation)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(violation) = this.cut {
            return Poll::Ready(Err(cut_error(violation)));
        }
        if let Some((violation, reply, written)) = &mut this.reply {
            while *written < reply.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &reply[*written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if Pin::new(&mut this.inner).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
            let violation = *violation;
            this.reply = None;
            this.cut = Some(violation);
            return Poll::Ready(Err(cut_error(violation)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let result = this.feed(&buf.filled()[before..]);
                if let Err(violation) = result {
                    // The offending bytes never reach the HTTP server.
                    buf.set_filled(before);
                    tracing::info!(error = %violation, details = violation.details(), "downstream connection cut");
                    if matches!(this.scanner, Scanner::H1(_)) {
                        let reply = match violation {
                            Violation::RequestHeadersTooLarge => TOO_LARGE,
                            _ => BAD_REQUEST,
                        };
                        this.reply = Some((violation, reply, 0));
                        return Pin::new(this).poll_read(cx, buf);
                    }
                    this.cut = Some(violation);
                    return Poll::Ready(Err(cut_error(violation)));
                }
                if this.in_head() {
                    if this.deadline.is_none()
                        && let Some(timeout) = this.header_timeout
                    {
                        this.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
                    }
                } else {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    let violation = Violation::RequestHeadersTimeout;
                    tracing::info!(error = %violation, details = violation.details(), "downstream connection cut");
                    this.cut = Some(violation);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, violation)));
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
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

    fn h1(input: &[u8]) -> Result<H1Framing, Violation> {
        let mut s = H1Framing::default();
        s.feed(input)?;
        Ok(s)
    }

    #[test]
    fn h1_framing_table() {
        use Violation::*;
        // (input, expected outcome, whether a head is pending at the end)
        let cases: &[(&[u8], Result<bool, Violation>)] = &[
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", Ok(false)),
            (b"GET / HTTP/1.1\r\nhost: a\r\n", Ok(true)),
            (b"\r\n\r\n", Ok(false)),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(ContentLengthAndTransferEncoding),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Err(ContentLengthAndTransferEncoding),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3, 4\r\n\r\n",
                Err(InvalidContentLength),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
                Ok(false),
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
                Err(InvalidContentLength),
            ),
            // A body that looks like a smuggled head is skipped by its length.
            (
                b"POST / HTTP/1.1\r\ncontent-length: 59\r\n\r\nGET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: x\r\n\r\n",
                Ok(false),
            ),
            // The next head after a body is checked.
            (
                b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nokGET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(ContentLengthAndTransferEncoding),
            ),
            // Chunked bodies, with extensions and trailers, then the next head.
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nt: 1\r\n\r\nGET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                Err(ContentLengthAndTransferEncoding),
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
                Ok(true),
            ),
            // After an upgrade request the bytes are not HTTP.
            (
                b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                Ok(false),
            ),
        ];
        for (input, expected) in cases {
            let got = h1(input).map(|s| s.in_head());
            assert_eq!(&got, expected, "{}", String::from_utf8_lossy(input));
            assert_however_cut(input, expected);
        }
    }

    /// The same outcome however `input` is cut: in two at every position, and one byte at a
    /// time.
    fn assert_however_cut(input: &[u8], expected: &Result<bool, Violation>) {
        let name = String::from_utf8_lossy(input);
        for at in 0..=input.len() {
            let got = fed_in_pieces(H1Framing::default(), &[&input[..at], &input[at..]]);
            assert_eq!(&got, expected, "cut at {at}: {name}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let got = fed_in_pieces(H1Framing::default(), &bytes);
        assert_eq!(&got, expected, "bytewise: {name}");
    }

    /// Feeds `pieces` in turn, stopping at the first violation; whether a head is pending.
    fn fed_in_pieces(mut s: H1Framing, pieces: &[&[u8]]) -> Result<bool, Violation> {
        for piece in pieces {
            s.feed(piece)?;
        }
        Ok(s.in_head())
    }

    #[test]
    fn h1_head_lines_are_read_whole_however_they_arrive() {
        use Violation::*;
        let long_value = "x".repeat(LINE_KEEP * 2);
        let cases: Vec<(Vec<u8>, Result<bool, Violation>)> = vec![
            // Leading empty lines, then a head whose lines carry stray `\r`s.
            (
                b"\r\n\r\nPOST / HTTP/1.1\r\ncontent-\rlength: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                    .to_vec(),
                Err(ContentLengthAndTransferEncoding),
            ),
            // A header line longer than what is kept: its name is still read.
            (
                format!(
                    "POST / HTTP/1.1\r\nx-long: {long_value}\r\ncontent-length: 2\r\n\r\nokGET / HTTP/1.1\r\n"
                )
                .into_bytes(),
                Ok(true),
            ),
            (
                format!(
                    "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked{long_value}\r\n\r\n"
                )
                .into_bytes(),
                Err(ContentLengthAndTransferEncoding),
            ),
            // Bare `\n` line ends.
            (
                b"POST / HTTP/1.1\ncontent-length: 1\ncontent-length: 2\n\n".to_vec(),
                Err(InvalidContentLength),
            ),
        ];
        for (input, expected) in &cases {
            assert_however_cut(input, expected);
        }
    }

    #[test]
    fn h1_head_size_leaves_out_leading_empty_lines_and_counts_every_other_byte() {
        // 26 bytes of head after two empty lines; `\r`s inside the head count.
        let input = b"\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let head = input.len() - 4;
        for pieces in [
            vec![&input[..]],
            input.chunks(1).collect(),
            input.chunks(5).collect(),
        ] {
            assert_eq!(
                fed_in_pieces(H1Framing::with_max_head(head), &pieces),
                Ok(false)
            );
            assert_eq!(
                fed_in_pieces(H1Framing::with_max_head(head - 2), &pieces),
                Err(Violation::RequestHeadersTooLarge)
            );
        }
    }

    #[test]
    fn h1_heads_over_the_limit_are_refused() {
        let head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let mut at_limit = H1Framing::with_max_head(head.len() - 1);
        assert_eq!(at_limit.feed(head), Ok(()));
        let mut over = H1Framing::with_max_head(head.len() - 2);
        assert_eq!(over.feed(head), Err(Violation::RequestHeadersTooLarge));
    }

    #[test]
    fn h1_framing_is_the_same_byte_by_byte() {
        let input = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut s = H1Framing::default();
        let mut result = Ok(());
        for b in input {
            result = s.feed(std::slice::from_ref(b));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Violation::ContentLengthAndTransferEncoding));
    }

    fn frame(len: u32, kind: u8, flags: u8) -> Vec<u8> {
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        out.extend(std::iter::repeat_n(0u8, len as usize));
        out
    }

    #[test]
    fn h2_empty_frames_table() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let settings = frame(0, 0x4, 0);
        let cases: Vec<(Vec<Vec<u8>>, bool)> = vec![
            (vec![frame(0, DATA, 0)], true),
            (vec![frame(0, DATA, 0), frame(0, DATA, 0)], false),
            (
                vec![frame(0, DATA, 0), frame(5, DATA, 0), frame(0, DATA, 0)],
                true,
            ),
            (
                vec![frame(0, DATA, END_STREAM), frame(0, DATA, END_STREAM)],
                true,
            ),
            (vec![frame(0, HEADERS, 0), frame(0, CONTINUATION, 0)], false),
            (vec![frame(0, CONTINUATION, END_HEADERS); 3], true),
            // Other frame types neither count nor reset.
            (
                vec![frame(0, DATA, 0), settings.clone(), frame(0, DATA, 0)],
                false,
            ),
        ];
        for (frames, ok) in cases {
            let mut s = H2Frames::new(1);
            let mut input = preface.clone();
            input.extend_from_slice(&settings);
            for f in &frames {
                input.extend_from_slice(f);
            }
            assert_eq!(s.feed(&input).is_ok(), ok, "{frames:?}");
            // Split anywhere: the same verdict.
            let mut s = H2Frames::new(1);
            let result = input.chunks(5).try_for_each(|c| s.feed(c));
            assert_eq!(result.is_ok(), ok, "{frames:?} in pieces");
        }
    }
}
