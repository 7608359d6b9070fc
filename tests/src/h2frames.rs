//! Raw HTTP/2 frames (RFC 9113 §4, §6), for suites that speak HTTP/2 below the codecs: an
//! offending client that writes frames no well-behaved library would send, or a server that
//! reads exactly what the waypoint put on the wire.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame type `DATA`.
pub const DATA: u8 = 0x0;
/// Frame type `HEADERS`.
pub const HEADERS: u8 = 0x1;
/// Frame type `RST_STREAM`.
pub const RST_STREAM: u8 = 0x3;
/// Frame type `SETTINGS`.
pub const SETTINGS: u8 = 0x4;
/// Frame type `PING`.
pub const PING: u8 = 0x6;
/// Frame type `GOAWAY`.
pub const GOAWAY: u8 = 0x7;
/// Frame type `CONTINUATION`.
pub const CONTINUATION: u8 = 0x9;

/// Flag `END_STREAM` (`DATA`, `HEADERS`); the same bit is `ACK` on `SETTINGS` and `PING`.
pub const END_STREAM: u8 = 0x1;
/// Flag `ACK` (`SETTINGS`, `PING`).
pub const ACK: u8 = 0x1;
/// Flag `END_HEADERS` (`HEADERS`, `CONTINUATION`).
pub const END_HEADERS: u8 = 0x4;
/// Flag `PADDED` (`DATA`, `HEADERS`).
pub const PADDED: u8 = 0x8;
/// Flag `PRIORITY` (`HEADERS`).
pub const PRIORITY: u8 = 0x20;

/// One frame: its type, flags, stream id and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame type.
    pub kind: u8,
    /// The flags.
    pub flags: u8,
    /// The stream id (the reserved bit cleared).
    pub stream: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The header block fragment of a `HEADERS` frame: the payload without its padding and
    /// priority fields. `None` when those do not fit in the payload.
    pub fn header_block(&self) -> Option<&[u8]> {
        let mut block = self.payload.as_slice();
        if self.flags & PADDED != 0 {
            let (&pad, rest) = block.split_first()?;
            block = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
        }
        if self.flags & PRIORITY != 0 {
            block = block.get(5..)?;
        }
        Some(block)
    }
}

/// A frame's bytes.
///
/// # Panics
/// When `payload` does not fit the 24-bit length.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len < 1 << 24)
        .expect("an HTTP/2 frame payload under 16 MiB");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The frames of `bytes`, in order; a trailing partial frame is ignored.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((frame, used)) = parse(rest) {
        out.push(frame);
        rest = &rest[used..];
    }
    out
}

/// Reads one frame from `io`; `None` at the end of the stream or on an error.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = usize::try_from(u32::from_be_bytes([0, head[0], head[1], head[2]])).ok()?;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: stream_id(&head),
        payload,
    })
}

/// The first frame of `bytes` and the bytes it takes.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    let head = bytes.get(..9)?;
    let len = usize::try_from(u32::from_be_bytes([0, head[0], head[1], head[2]])).ok()?;
    let payload = bytes.get(9..9 + len)?.to_vec();
    let frame = Frame {
        kind: head[3],
        flags: head[4],
        stream: stream_id(head),
        payload,
    };
    Some((frame, 9 + len))
}

fn stream_id(head: &[u8]) -> u32 {
    u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_tails_are_left() {
        let mut bytes = frame(HEADERS, END_HEADERS, 3, b"abc");
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        let whole = bytes.len();
        bytes.extend(&frame(DATA, 0, 3, b"xyz")[..10]);
        let parsed = frames(&bytes);
        assert_eq!(
            parsed,
            [
                Frame {
                    kind: HEADERS,
                    flags: END_HEADERS,
                    stream: 3,
                    payload: b"abc".to_vec()
                },
                Frame {
                    kind: SETTINGS,
                    flags: ACK,
                    stream: 0,
                    payload: Vec::new()
                },
            ]
        );
        assert_eq!(frames(&bytes[..whole - 1]).len(), 1);
    }

    #[test]
    fn header_blocks_without_padding_and_priority() {
        type Case = (u8, &'static [u8], Option<&'static [u8]>);
        let cases: [Case; 5] = [
            (END_HEADERS, b"block", Some(b"block")),
            (PADDED, b"\x02blockpp", Some(b"block")),
            (PRIORITY, b"\x00\x00\x00\x01\x10block", Some(b"block")),
            (
                PADDED | PRIORITY,
                b"\x01\x00\x00\x00\x01\x10blockp",
                Some(b"block"),
            ),
            (PADDED, b"\x09short", None),
        ];
        for (flags, payload, expected) in cases {
            let frame = Frame {
                kind: HEADERS,
                flags,
                stream: 1,
                payload: payload.to_vec(),
            };
            assert_eq!(frame.header_block(), expected, "flags {flags:#x}");
        }
    }

    #[tokio::test]
    async fn frames_are_read_one_at_a_time() {
        let mut bytes = frame(PING, 0, 0, &[7; 8]);
        bytes.extend(frame(GOAWAY, 0, 0, &[0; 8]));
        let mut io = bytes.as_slice();
        assert_eq!(read_frame(&mut io).await.map(|f| f.kind), Some(PING));
        assert_eq!(read_frame(&mut io).await.map(|f| f.kind), Some(GOAWAY));
        assert_eq!(read_frame(&mut io).await, None);
    }
}
