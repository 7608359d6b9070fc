//! The raw WebSocket side of the waypoint mesh's backends (see [`crate::waypoint`]): a
//! connection whose first request head asks for an upgrade, or whose path starts with
//! `/raw/`, is served here with plain tokio instead of hyper, so the suites control every byte
//! the backend answers and see every byte it receives.
//!
//! Behaviour by path (the request is recorded in [`Backends`] like any other; for the
//! refusing paths its `body` is every byte the backend read after the head, until the
//! connection closed):
//!
//! - `/ws/…`: `101 Switching Protocols` with the `Sec-WebSocket-Accept` for the request's key,
//!   then every byte received is echoed back until the waypoint ends its side; the backend
//!   then ends its own. `/ws/close…` closes the connection after echoing its first read.
//! - `/ws-refuse/<code>…`: answers `<code>` with body `refused` and no upgrade.
//! - `/ws-other/…`: `101` switching to `upgrade: not-websocket`.
//! - `/raw/switch…`: `101` with `upgrade: websocket` to any request, upgrade or not.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::waypoint::{Backends, Seen};

/// The GUID of the WebSocket handshake (RFC 6455 §1.3).
pub const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest request head the raw backend reads.
const MAX_HEAD: usize = 16 * 1024;
/// Upper bound on how long the backend waits for a head or for the peer to close.
const BOUND: Duration = Duration::from_secs(10);

/// `Sec-WebSocket-Accept` for `key`: base64 of the SHA-1 of the key and the GUID.
pub fn accept_key(key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WEBSOCKET_GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The index just past the blank line ending the head in `bytes`.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Whether the connection's first request head (peeked, not consumed) is one the raw backend
/// serves. Waits a bounded time for a complete head; anything else goes to hyper.
pub(crate) async fn wants_raw(stream: &TcpStream) -> bool {
    let mut buf = vec![0u8; MAX_HEAD];
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if let Some(end) = head_end(&buf[..n]) {
            return is_raw_head(&buf[..end]);
        }
        if n == buf.len() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Part of a head: wait for the rest (peek returns at once while bytes are queued).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_raw_head(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let path = text.split(' ').nth(1).unwrap_or("");
    path.starts_with("/raw/") || text.contains("\r\nupgrade:")
}

/// A parsed request head.
fn parse_head(head: &[u8]) -> Option<(String, String, HeaderMap)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    Some((method, path, headers))
}

/// Serves one connection whose head [`wants_raw`].
pub(crate) async fn serve(mut stream: TcpStream, name: &'static str, backends: Backends) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        match tokio::time::timeout(BOUND, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 && buf.len() < MAX_HEAD => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let rest = buf.split_off(end);
    let Some((method, path, headers)) = parse_head(&buf) else {
        return;
    };
    backends.count_request();
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(accept_key)
        .unwrap_or_default();
    let seen = |body: Vec<u8>| Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: Bytes::from(body),
    };
    let switch = |upgrade: &str| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {upgrade}\r\nconnection: Upgrade\r\nsec-websocket-accept: {key}\r\nx-backend: {name}\r\n\r\n"
        )
    };
    if let Some(code) = path.strip_prefix("/ws-refuse/") {
        let code = code.split('/').next().unwrap_or("400");
        let answer = format!(
            "HTTP/1.1 {code} Refused\r\ncontent-length: 7\r\nx-backend: {name}\r\n\r\nrefused"
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let mut after = rest;
        let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut after)).await;
        backends.record(name, seen(after));
        return;
    }
    backends.record(name, seen(Vec::new()));
    if path.starts_with("/ws-other/") {
        let _ = stream.write_all(switch("not-websocket").as_bytes()).await;
    } else if path.starts_with("/raw/switch") {
        let _ = stream.write_all(switch("websocket").as_bytes()).await;
    } else if path.starts_with("/ws/") {
        if stream
            .write_all(switch("websocket").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        echo(stream, rest, path.starts_with("/ws/close")).await;
        return;
    } else {
        return;
    }
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut sink)).await;
}

/// Echoes every byte until end of stream, then ends the write side; `once`: closes after the
/// first read instead.
async fn echo(mut stream: TcpStream, first: Vec<u8>, once: bool) {
    if !first.is_empty() && stream.write_all(&first).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if once {
            break;
        }
    }
    let _ = stream.shutdown().await;
}
