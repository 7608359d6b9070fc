//! Watches the frames a server sends on a pooled client connection.
//!
//! The pool must know two things the `h2` client does not expose: the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (to never place more tunnels on a connection than the
//! server accepts) and whether the server sent `GOAWAY` (to move new tunnels to another
//! connection while the existing ones finish). [`Sniff`] sits between TLS and HTTP/2 on the read
//! side, follows the frame headers (9 bytes each, payloads skipped) and records both in
//! [`ConnSignals`]. It never changes the bytes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const FRAME_HEADER: usize = 9;
const TYPE_SETTINGS: u8 = 0x4;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// SETTINGS payload bytes kept for parsing; a server sends a handful of 6-byte entries.
const SETTINGS_KEEP: usize = 6 * 16;

/// What the server told us on a connection.
#[derive(Debug)]
pub(crate) struct ConnSignals {
    goaway: AtomicBool,
    /// The server's last `SETTINGS_MAX_CONCURRENT_STREAMS` (`u32::MAX` until it sets one).
    max_streams: AtomicU32,
    settings_seen: AtomicBool,
    settings: Notify,
}

impl Default for ConnSignals {
    fn default() -> Self {
        Self {
            goaway: AtomicBool::new(false),
            max_streams: AtomicU32::new(u32::MAX),
            settings_seen: AtomicBool::new(false),
            settings: Notify::new(),
        }
    }
}

impl ConnSignals {
    /// The server sent `GOAWAY`: no new tunnels on this connection.
    pub(crate) fn goaway(&self) -> bool {
        self.goaway.load(Ordering::Acquire)
    }

    /// Marks the connection as going away (also used when it closes).
    pub(crate) fn set_goaway(&self) {
        self.goaway.store(true, Ordering::Release);
    }

    /// The server's stream limit.
    pub(crate) fn max_streams(&self) -> u32 {
        self.max_streams.load(Ordering::Acquire)
    }

    /// Starts from a limit learned on an earlier connection to the same server, until this
    /// connection's own SETTINGS arrive.
    pub(crate) fn assume_max_streams(&self, limit: u32) {
        self.max_streams.store(limit, Ordering::Release);
    }

    /// Waits for the server's first SETTINGS frame.
    pub(crate) async fn settings_received(&self) {
        loop {
            let notified = self.settings.notified();
            if self.settings_seen.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Parser state: where we are in the frame stream.
#[derive(Debug)]
enum State {
    Header {
        got: usize,
        header: [u8; FRAME_HEADER],
    },
    Payload {
        remaining: usize,
        settings: Option<Vec<u8>>,
    },
}

/// The read side of a client connection, watched for SETTINGS and GOAWAY.
#[derive(Debug)]
pub(crate) struct Sniff<IO> {
    io: IO,
    state: State,
    /// A SETTINGS frame was read but HTTP/2 may not have applied it yet.
    settings_pending: bool,
    signals: std::sync::Arc<ConnSignals>,
}

impl<IO> Sniff<IO> {
    pub(crate) fn new(io: IO, signals: std::sync::Arc<ConnSignals>) -> Self {
        Self {
            io,
            state: State::Header {
                got: 0,
                header: [0; FRAME_HEADER],
            },
            settings_pending: false,
            signals,
        }
    }

    /// Follows the frame stream over newly read bytes.
    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Header { got, header } => {
                    let take = (FRAME_HEADER - *got).min(data.len());
                    header[*got..*got + take].copy_from_slice(&data[..take]);
                    *got += take;
                    data = &data[take..];
                    if *got == FRAME_HEADER {
                        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                        let (kind, flags) = (header[3], header[4]);
                        if kind == TYPE_GOAWAY {
                            self.signals.set_goaway();
                        }
                        let settings = (kind == TYPE_SETTINGS && flags & FLAG_ACK == 0)
                            .then(|| Vec::with_capacity(len.min(SETTINGS_KEEP)));
                        self.state = State::Payload {
                            remaining: len,
                            settings,
                        };
                        if len == 0 {
                            self.end_payload();
                        }
                    }
                }
                State::Payload {
                    remaining,
                    settings,
                } => {
                    let take = (*remaining).min(data.len());
                    if let Some(buf) = settings {
                        let keep = take.min(SETTINGS_KEEP - buf.len());
                        buf.extend_from_slice(&data[..keep]);
                    }
                    *remaining -= take;
                    data = &data[take..];
                    if *remaining == 0 {
                        self.end_payload();
                    }
                }
            }
        }
    }

    fn end_payload(&mut self) {
        let prev = std::mem::replace(
            &mut self.state,
            State::Header {
                got: 0,
                header: [0; FRAME_HEADER],
            },
        );
        if let State::Payload {
            settings: Some(payload),
            ..
        } = prev
        {
            for entry in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([entry[0], entry[1]]);
                if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                    let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    self.signals.max_streams.store(value, Ordering::Release);
                }
            }
            self.settings_pending = true;
        }
    }

    /// Announces a SETTINGS frame once HTTP/2 has applied it: HTTP/2 only reads again after it
    /// has processed every frame it already read, so the next read is the moment.
    fn announce_settings(&mut self) {
        if std::mem::take(&mut self.settings_pending) {
            self.signals.settings_seen.store(true, Ordering::Release);
            self.signals.settings.notify_waiters();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniff<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.announce_settings();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let filled = buf.filled();
            if filled.len() > before {
                this.observe(&filled[before..]);
            } else {
                // End of stream: nothing more will be opened here.
                this.signals.set_goaway();
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniff<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_settings_and_goaway_across_split_reads() {
        let signals = Arc::new(ConnSignals::default());
        let mut s = Sniff::new((), signals.clone());
        let mut bytes = frame(TYPE_SETTINGS, 0, &[0, 4, 0, 0, 1, 0, 0, 3, 0, 0, 0, 42]);
        bytes.extend(frame(0x0, 0, &vec![0xAA; 70_000])); // DATA, skipped
        bytes.extend(frame(TYPE_SETTINGS, FLAG_ACK, &[]));
        // Feed one byte at a time: frame boundaries must be followed exactly.
        for b in &bytes {
            s.observe(std::slice::from_ref(b));
        }
        assert_eq!(signals.max_streams(), 42);
        assert!(
            !signals.settings_seen.load(Ordering::Acquire),
            "announced only on the next read"
        );
        s.announce_settings();
        assert!(signals.settings_seen.load(Ordering::Acquire));
        assert!(!signals.goaway());
        s.observe(&frame(
            TYPE_GOAWAY,
            0,
            &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        ));
        assert!(signals.goaway());
    }

    #[test]
    fn ack_settings_do_not_change_the_limit() {
        let signals = Arc::new(ConnSignals::default());
        let mut s = Sniff::new((), signals.clone());
        s.observe(&frame(TYPE_SETTINGS, FLAG_ACK, &[]));
        assert_eq!(signals.max_streams(), u32::MAX);
        assert!(!signals.settings_seen.load(Ordering::Acquire));
    }
}
