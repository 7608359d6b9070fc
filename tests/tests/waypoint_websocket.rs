//! WebSocket upgrades through the waypoint end to end: client → ztunnel → waypoint → ztunnel →
//! the raw WebSocket backend of [`ambient_e2e::websocket`], every hop a real socket. The client
//! writes the upgrade request and the bytes after it by hand on its tunnel.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use ambient_e2e::waypoint::{BACKENDS, Net, Seen, WaypointMesh, get, read_to_close, send, series};
use ambient_e2e::websocket::{accept_key, head_end};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
/// Upper bound for anything the mesh must do "soon" (never a timing assertion).
const BOUND: Duration = Duration::from_secs(10);
/// The client's `Sec-WebSocket-Key` (RFC 6455's example nonce).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade request head for `path`.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {REVIEWS}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A response head read off a raw connection.
struct Head {
    status: u16,
    /// Lower-case `name: value` lines.
    lines: Vec<String>,
    /// Bytes read past the head.
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
}

/// Reads a response head (bounded in size and time).
async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        assert!(buf.len() < 64 * 1024, "response head too large");
        let n = tokio::time::timeout(BOUND, stream.read(&mut chunk))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let lines = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap();
            format!("{}: {}", name.trim().to_ascii_lowercase(), value.trim())
        })
        .collect();
    Head {
        status,
        lines,
        rest,
    }
}

/// Writes `payload` and reads exactly as many bytes back, concurrently (the echo would stall
/// on a large payload otherwise); returns what came back.
async fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(payload).await.unwrap();
    };
    let read = async {
        let mut back = vec![0u8; payload.len()];
        reader.read_exact(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(BOUND, async { tokio::join!(write, read) })
        .await
        .expect("echo in time");
    back
}

/// The requests any backend received for `path`.
fn seen(mesh: &WaypointMesh, path: &str) -> Vec<Seen> {
    BACKENDS
        .iter()
        .flat_map(|(name, ..)| mesh.backends.seen(name))
        .filter(|s| s.path == path)
        .collect()
}

/// Waits (bounded) for the access log line of `path` and returns it.
async fn log_line(mesh: &WaypointMesh, path: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(line) = mesh.access_log().into_iter().find(|l| l["path"] == path) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access log line for {path}: {:?}",
            mesh.access_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until a backend recorded `path`.
async fn seen_eventually(mesh: &WaypointMesh, path: &str) -> Seen {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        if let Some(s) = seen(mesh, path).pop() {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend saw {path}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Items: 101 with the backend's accept key; bytes echoed both ways (several round trips,
/// > 64 KiB); a bystander keeps working while the WebSocket is open; closing the client side
/// closes the backend's; access log and `istio_requests_total` with 101 and the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_upgraded_and_spliced_both_ways() {
    let mesh = WaypointMesh::start(Net(70)).await;
    let mut ws = mesh.connect(mesh.net.reviews()).await;
    ws.write_all(upgrade_request("/ws/echo").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut ws).await;
    assert_eq!(head.status, 101, "{:?}", head.lines);
    assert_eq!(
        head.header("sec-websocket-accept"),
        Some(accept_key(KEY).as_str())
    );
    assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(head.header("upgrade"), Some("websocket"));
    assert_eq!(head.header("connection"), Some("upgrade"));
    assert!(head.header("x-backend").is_some());
    assert!(head.rest.is_empty());

    // The backend got the upgrade with its WebSocket headers.
    let upgrade = seen_eventually(&mesh, "/ws/echo").await;
    assert_eq!(upgrade.headers["upgrade"], "WebSocket");
    assert_eq!(upgrade.headers["connection"], "upgrade");
    assert_eq!(upgrade.headers["sec-websocket-key"], KEY);
    assert_eq!(upgrade.headers["sec-websocket-version"], "13");

    let mut sent = 0u64;
    for i in 0..5 {
        let message = format!("message {i}");
        assert_eq!(
            round_trip(&mut ws, message.as_bytes()).await,
            message.as_bytes()
        );
        sent += message.len() as u64;
    }
    let large: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut ws, &large).await, large);
    sent += large.len() as u64;

    // A bystander on its own connection while the WebSocket is open.
    let mut bystander = mesh.http1(mesh.net.reviews()).await;
    let (status, _, _) = send(&mut bystander, get(REVIEWS, "/bystander", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&mesh, "/bystander").len(), 1);
    // Still open after it.
    assert_eq!(round_trip(&mut ws, b"after").await, b"after");
    sent += 5;

    // Closing the client's side ends the backend's: the client reads the end of stream.
    ws.shutdown().await.unwrap();
    let (tail, closed) = read_to_close(&mut ws).await;
    assert!(
        closed,
        "the WebSocket was closed from the backend's side too"
    );
    assert!(tail.is_empty());

    let line = log_line(&mesh, "/ws/echo").await;
    assert_eq!(line["response_code"], 101, "{line}");
    assert_eq!(line["bytes_received"], sent, "{line}");
    assert_eq!(line["bytes_sent"], sent, "{line}");
    assert_eq!(line["response_flags"], "-", "{line}");
    let metrics = mesh.metrics();
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &[
                "response_code=\"101\"",
                "destination_service_name=\"reviews\""
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// Items: the backend closing its side ends the client's (a half-close, passed on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_close_ends_the_websocket() {
    let mesh = WaypointMesh::start(Net(71)).await;
    let mut ws = mesh.connect(mesh.net.reviews()).await;
    ws.write_all(upgrade_request("/ws/close").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut ws).await;
    assert_eq!(head.status, 101);
    ws.write_all(b"last words").await.unwrap();
    let (rest, closed) = read_to_close(&mut ws).await;
    let echoed = [head.rest, rest].concat();
    assert_eq!(echoed, b"last words");
    assert!(closed, "the backend's close reached the client");
    // Half-closes are passed on: the stream ends (and is logged) once the client ends its
    // side too.
    ws.shutdown().await.unwrap();
    let line = log_line(&mesh, "/ws/close").await;
    assert_eq!(line["response_code"], 101, "{line}");
    assert_eq!(line["bytes_sent"], 10, "{line}");
    assert_eq!(line["bytes_received"], 10, "{line}");
}

/// Items: a backend answering 200 or 426 instead of 101 is passed through, the connection is
/// closed and nothing written after it reaches the backend; a 101 to a request that did not
/// ask for it, or naming another protocol, is a 502 `UPE`; an AuthorizationPolicy DENY on the
/// path answers 403 and the backend never sees the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_denied_and_unexpected_upgrades_are_not_spliced() {
    let mesh = WaypointMesh::start(Net(72)).await;
    for code in [200u16, 426] {
        let path = format!("/ws-refuse/{code}");
        let mut client = mesh.connect(mesh.net.reviews()).await;
        client
            .write_all(upgrade_request(&path).as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut client).await;
        assert_eq!(head.status, code);
        assert_eq!(head.header("connection"), Some("close"));
        assert!(head.header("upgrade").is_none());
        // Bytes after the refusal: neither a new protocol nor a second request upstream.
        let _ = client
            .write_all(b"GET /smuggled HTTP/1.1\r\nhost: reviews\r\n\r\n")
            .await;
        let (rest, closed) = read_to_close(&mut client).await;
        let body = [head.rest, rest].concat();
        assert_eq!(body, b"refused");
        assert!(closed, "{code}: the connection is closed after the refusal");
        let refused = seen_eventually(&mesh, &path).await;
        assert!(
            refused.body.is_empty(),
            "{code}: bytes reached the backend after its refusal: {:?}",
            refused.body
        );
        let line = log_line(&mesh, &path).await;
        assert_eq!(line["response_code"], u64::from(code), "{line}");
    }
    assert!(seen(&mesh, "/smuggled").is_empty());

    // A 101 to a plain request.
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let (status, _, _) = send(&mut client, get(REVIEWS, "/raw/switch", &[])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let line = log_line(&mesh, "/raw/switch").await;
    assert_eq!(line["response_code"], 502, "{line}");
    assert_eq!(line["response_flags"], "UPE", "{line}");

    // A 101 to another protocol than the one asked for.
    let mut other = mesh.connect(mesh.net.reviews()).await;
    other
        .write_all(upgrade_request("/ws-other/x").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut other).await;
    assert_eq!(head.status, 502);
    let line = log_line(&mesh, "/ws-other/x").await;
    assert_eq!(line["response_flags"], "UPE", "{line}");

    // The mesh still serves plain requests.
    let (status, _, _) = send(&mut client, get(REVIEWS, "/after", &[])).await;
    assert_eq!(status, StatusCode::OK);

    // An AuthorizationPolicy DENY on the path answers 403 and the backend never sees the
    // upgrade; other upgrades go on.
    mesh.apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-ws, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/ws/denied\"]}}]}]\n",
    );
    let mut client = mesh.connect(mesh.net.reviews()).await;
    client
        .write_all(upgrade_request("/ws/denied").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert_eq!(head.status, 403);
    assert!(head.header("upgrade").is_none());
    let (rest, closed) = read_to_close(&mut client).await;
    let body = [head.rest, rest].concat();
    assert_eq!(body, b"RBAC: access denied");
    assert!(closed, "the connection is closed after the denial");
    assert!(seen(&mesh, "/ws/denied").is_empty());
    let line = log_line(&mesh, "/ws/denied").await;
    assert_eq!(line["response_code"], 403, "{line}");

    let mut ws = mesh.connect(mesh.net.reviews()).await;
    ws.write_all(upgrade_request("/ws/allowed").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut ws).await;
    assert_eq!(head.status, 101);
    assert_eq!(round_trip(&mut ws, b"hello").await, b"hello");
}
