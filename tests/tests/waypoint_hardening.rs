//! The waypoint's downstream limits and hardening end to end: client → ztunnel → waypoint →
//! ztunnel → backends, every hop a real socket. Offending clients write raw HTTP/1.1 bytes or
//! raw HTTP/2 frames into their tunnel; in every abuse case a bystander on another connection
//! keeps getting its answers from the backend while the offender is cut.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use ambient_e2e::h2frames::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, Frame, GOAWAY, HEADERS, PREFACE, RST_STREAM,
    SETTINGS, frame, frames,
};
use ambient_e2e::waypoint::{
    BACKENDS, DownstreamLimits, MeshOptions, Net, WaypointMesh, get, read_to_close, send, series,
};
use ambient_e2e::{Target, socks5_connect};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
/// Upper bound for anything the waypoint must do "soon" (never a timing assertion).
const BOUND: Duration = Duration::from_secs(10);

type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Whether any backend received a request for `path`.
fn reached_backend(mesh: &WaypointMesh, path: &str) -> bool {
    BACKENDS
        .iter()
        .any(|(name, ..)| mesh.backends.seen(name).iter().any(|s| s.path == path))
}

/// The bystander's request on its own connection: 200, and it reached a backend.
async fn bystander_ok(mesh: &WaypointMesh, client: &mut Http1, tag: &str) {
    let path = format!("/bystander/{tag}");
    let (status, _, _) = send(client, get(REVIEWS, &path, &[])).await;
    assert_eq!(status, StatusCode::OK, "bystander {tag}");
    assert!(
        reached_backend(mesh, &path),
        "bystander {tag} reached a backend"
    );
}

/// Writes `bytes`; a peer that already closed is fine (the offender is being cut).
async fn write_lossy(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = tokio::time::timeout(BOUND, stream.write_all(bytes)).await;
}

// --- raw HTTP/2 ---

const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// An HPACK integer with an `n`-bit prefix, `flags` in the first byte's high bits.
fn hpack_int(n: u8, flags: u8, value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![flags | u8::try_from(value).unwrap()];
    }
    let mut out = vec![flags | u8::try_from(max).unwrap()];
    let mut rest = value - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).unwrap());
    out
}

fn hpack_str(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(7, 0, s.len());
    out.extend_from_slice(s);
    out
}

/// A request header block: `:method` (static table), `:scheme http`, `:path`, `:authority`.
fn request_block(post: bool, path: &str) -> Vec<u8> {
    let mut out = vec![if post { 0x83 } else { 0x82 }, 0x86];
    // Literal without indexing, indexed name: 4 = `:path`, 1 = `:authority`.
    out.extend(hpack_int(4, 0, 4));
    out.extend(hpack_str(path.as_bytes()));
    out.extend(hpack_int(4, 0, 1));
    out.extend(hpack_str(REVIEWS.as_bytes()));
    out
}

/// The client preface and an empty SETTINGS frame.
fn h2_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY && f.payload.len() >= 8)
        .map(|f| u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]]))
}

async fn start(net: Net, downstream: DownstreamLimits) -> WaypointMesh {
    WaypointMesh::start_with(
        net,
        MeshOptions {
            downstream,
            ..MeshOptions::default()
        },
    )
    .await
}

/// Items: header size and count limits (HTTP/1.1 and HTTP/2) and request smuggling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_and_request_smuggling_are_refused_before_the_backend() {
    let mesh = start(Net(50), DownstreamLimits::default()).await;
    let mut bystander = mesh.http1(mesh.net.reviews()).await;
    bystander_ok(&mesh, &mut bystander, "start").await;

    // HTTP/1.1: a header block over 60 KiB → 431, connection closed, nothing upstream.
    let mut raw = mesh.connect(mesh.net.reviews()).await;
    let big = "b".repeat(61 * 1024);
    write_lossy(
        &mut raw,
        format!("GET /big HTTP/1.1\r\nhost: {REVIEWS}\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    let (answer, closed) = read_to_close(&mut raw).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(closed, "oversized head: connection closed");
    assert!(!reached_backend(&mesh, "/big"));
    bystander_ok(&mesh, &mut bystander, "after-big").await;

    // HTTP/1.1: 101 headers → 431.
    let mut raw = mesh.connect(mesh.net.reviews()).await;
    let mut head = format!("GET /many HTTP/1.1\r\nhost: {REVIEWS}\r\n");
    for i in 0..100 {
        head += &format!("x-h{i}: v\r\n");
    }
    head += "\r\n";
    write_lossy(&mut raw, head.as_bytes()).await;
    let (answer, closed) = read_to_close(&mut raw).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(closed, "too many headers: connection closed");
    assert!(!reached_backend(&mesh, "/many"));

    // HTTP/2: a header list over 60 KiB → 431 on the stream (h2 answers it, then resets
    // the stream); more than 100 headers → 431; the connection stays usable.
    let mut h2 = mesh.http2::<Full<Bytes>>(mesh.net.reviews()).await;
    let many: Vec<(String, String)> = (0..101).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (path, headers) in [
        ("/h2-big", vec![("x-big", big.as_str())]),
        ("/h2-many", many),
    ] {
        let response = tokio::time::timeout(BOUND, h2.send_request(get(REVIEWS, path, &headers)))
            .await
            .expect("HTTP/2 answer in time")
            .expect("HTTP/2 response");
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{path}"
        );
        assert!(!reached_backend(&mesh, path), "{path} reached the backend");
    }
    let response = h2
        .send_request(get(REVIEWS, "/h2-after", &[]))
        .await
        .expect("HTTP/2 response");
    assert_eq!(response.status(), StatusCode::OK);
    bystander_ok(&mesh, &mut bystander, "after-h2").await;

    // Smuggling: Content-Length with Transfer-Encoding, and conflicting Content-Lengths.
    let smuggled = [
        format!(
            "POST /cl-te HTTP/1.1\r\nhost: {REVIEWS}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /te-cl HTTP/1.1\r\nhost: {REVIEWS}\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /cl-cl HTTP/1.1\r\nhost: {REVIEWS}\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde"
        ),
        // Behind a valid request on a kept-alive connection.
        format!(
            "POST /first HTTP/1.1\r\nhost: {REVIEWS}\r\ncontent-length: 2\r\n\r\nokPOST /second HTTP/1.1\r\nhost: {REVIEWS}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
    ];
    for request in &smuggled {
        let mut raw = mesh.connect(mesh.net.reviews()).await;
        write_lossy(&mut raw, request.as_bytes()).await;
        let (answer, closed) = read_to_close(&mut raw).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("HTTP/1.1 400"), "{request:?} → {answer}");
        assert!(closed, "{request:?}: connection closed");
    }
    for path in ["/cl-te", "/te-cl", "/cl-cl", "/second"] {
        assert!(!reached_backend(&mesh, path), "{path} reached the backend");
    }
    bystander_ok(&mesh, &mut bystander, "after-smuggling").await;
}

/// Item: request-header and idle timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    let limits = DownstreamLimits {
        request_headers_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..DownstreamLimits::default()
    };
    let mesh = start(Net(51), limits).await;

    // A partial header block: closed after the deadline, nothing upstream.
    let mut slow = mesh.connect(mesh.net.reviews()).await;
    write_lossy(&mut slow, b"GET /slow HTTP/1.1\r\nhost: revi").await;
    let (_, closed) = read_to_close(&mut slow).await;
    assert!(closed, "partial head: connection closed");
    assert!(!reached_backend(&mesh, "/slow"));

    // A connection that never sends a request: closed after the idle timeout.
    let mut silent = mesh.connect(mesh.net.reviews()).await;
    // The first bytes pick the protocol (otherwise the tunnel is TCP after detection).
    write_lossy(&mut silent, b"GET /first HTTP/1.1\r\nhost: reviews\r\n\r\n").await;
    let (answer, closed) = read_to_close(&mut silent).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(closed, "idle after a request: connection closed");

    // HTTP/2: idle → GOAWAY, then closed.
    let mut idle_h2 = mesh.connect(mesh.net.reviews()).await;
    write_lossy(&mut idle_h2, &h2_start()).await;
    let (answer, closed) = read_to_close(&mut idle_h2).await;
    assert!(closed, "idle HTTP/2 connection closed");
    assert!(
        goaway_code(&frames(&answer)).is_some(),
        "GOAWAY before close"
    );

    // A connection in use is not idle: a request longer than the idle timeout completes.
    let mut busy = mesh.http1(mesh.net.reviews()).await;
    let (status, _, _) = send(&mut busy, get(REVIEWS, "/delay/700", &[])).await;
    assert_eq!(status, StatusCode::OK);
}

/// Item: maximum downstream connections and HTTP/2 streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_stream_limits() {
    let limits = DownstreamLimits {
        max_connections: 3,
        max_concurrent_streams: 2,
        ..DownstreamLimits::default()
    };
    let mesh = start(Net(52), limits).await;
    let mut bystander = mesh.http1(mesh.net.reviews()).await;
    bystander_ok(&mesh, &mut bystander, "one").await;
    let mut second = mesh.http1(mesh.net.reviews()).await;
    bystander_ok(&mesh, &mut second, "two").await;

    // HTTP/2 on the third: SETTINGS_MAX_CONCURRENT_STREAMS = 2; a third open stream is
    // refused.
    let mut h2 = mesh.connect(mesh.net.reviews()).await;
    let mut bytes = h2_start();
    for stream in [1u32, 3, 5] {
        let path = format!("/stream/{stream}");
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block(true, &path),
        ));
    }
    write_lossy(&mut h2, &bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + BOUND;
    let parsed = loop {
        let parsed = frames(&got);
        if parsed.iter().any(|f| f.kind == RST_STREAM && f.stream == 5) {
            break parsed;
        }
        match tokio::time::timeout_at(deadline, h2.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("RST_STREAM of stream 5: {other:?} after {:?}", frames(&got)),
        }
    };
    let settings = parsed
        .iter()
        .find(|f| f.kind == SETTINGS && f.flags == 0)
        .unwrap();
    let max_streams = settings
        .payload
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(max_streams, Some(2));
    let reset = parsed
        .iter()
        .find(|f| f.kind == RST_STREAM && f.stream == 5)
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(reset.payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
    assert!(!reached_backend(&mesh, "/stream/5"));

    // A fourth connection is over the limit: the tunnel is refused.
    let overflow = |m: &WaypointMesh| {
        series(
            &m.metrics(),
            "envoy_listener_downstream_cx_overflow",
            &["listener_address=\"connect_terminate\""],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(overflow(&mesh), 0.0);
    let (code, mut fourth) = socks5_connect(mesh.socks5, Target::Addr(mesh.net.reviews())).await;
    if code == 0 {
        write_lossy(
            &mut fourth,
            format!("GET /fourth HTTP/1.1\r\nhost: {REVIEWS}\r\n\r\n").as_bytes(),
        )
        .await;
        let (answer, closed) = read_to_close(&mut fourth).await;
        assert!(answer.is_empty() && closed, "refused tunnel: {answer:?}");
    }
    assert!(!reached_backend(&mesh, "/fourth"));
    assert_eq!(overflow(&mesh), 1.0);
    bystander_ok(&mesh, &mut bystander, "over-limit").await;

    // Once a connection ends, a new one is served.
    drop(second);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let (code, mut next) = socks5_connect(mesh.socks5, Target::Addr(mesh.net.reviews())).await;
        if code == 0 {
            write_lossy(
                &mut next,
                format!("GET /again HTTP/1.1\r\nhost: {REVIEWS}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let (answer, _) = read_to_close(&mut next).await;
            if String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a slot frees up when a connection ends"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reached_backend(&mesh, "/again"));
    drop(h2);
}

/// Item: HTTP/2 rapid reset, CONTINUATION flood and empty-frame flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_closes_the_offender_only() {
    let mesh = start(Net(53), DownstreamLimits::default()).await;
    let mut bystander = mesh.http1(mesh.net.reviews()).await;
    bystander_ok(&mesh, &mut bystander, "start").await;

    // Rapid reset: 1000 streams opened and reset at once → GOAWAY ENHANCE_YOUR_CALM.
    let mut offender = mesh.connect(mesh.net.reviews()).await;
    let mut bytes = h2_start();
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        bytes.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &request_block(false, "/rapid-reset"),
        ));
        bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    write_lossy(&mut offender, &bytes).await;
    let (answer, closed) = read_to_close(&mut offender).await;
    assert!(closed, "rapid reset: connection closed");
    assert_eq!(goaway_code(&frames(&answer)), Some(ENHANCE_YOUR_CALM));
    bystander_ok(&mesh, &mut bystander, "after-rapid-reset").await;

    // CONTINUATION flood: a header block that never ends → GOAWAY, closed.
    let mut offender = mesh.connect(mesh.net.reviews()).await;
    let mut bytes = h2_start();
    bytes.extend(frame(
        HEADERS,
        END_STREAM,
        1,
        &request_block(false, "/continuation"),
    ));
    write_lossy(&mut offender, &bytes).await;
    let mut field = vec![0x00];
    field.extend(hpack_str(b"a"));
    field.extend(hpack_str("x".repeat(1000).as_bytes()));
    let chunk: Vec<u8> = field.iter().copied().cycle().take(4096).collect();
    // At most 2000 frames (8 MiB) or until the waypoint stops reading.
    for _ in 0..2000 {
        let sent = tokio::time::timeout(
            BOUND,
            offender.write_all(&frame(CONTINUATION, 0, 1, &chunk)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
    let (answer, closed) = read_to_close(&mut offender).await;
    assert!(closed, "CONTINUATION flood: connection closed");
    assert!(
        goaway_code(&frames(&answer)).is_some(),
        "GOAWAY: {answer:?}"
    );
    assert!(!reached_backend(&mesh, "/continuation"));
    bystander_ok(&mesh, &mut bystander, "after-continuation").await;

    // Empty DATA frames: closed.
    let mut offender = mesh.connect(mesh.net.reviews()).await;
    let mut bytes = h2_start();
    bytes.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block(true, "/empty-frames"),
    ));
    for _ in 0..100 {
        bytes.extend(frame(DATA, 0, 1, &[]));
    }
    write_lossy(&mut offender, &bytes).await;
    let (_, closed) = read_to_close(&mut offender).await;
    assert!(closed, "empty-frame flood: connection closed");
    bystander_ok(&mesh, &mut bystander, "after-empty-frames").await;
}

/// Items: no h2c upgrade; client-supplied internal headers replaced by the waypoint's XFCC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_not_upgraded_and_internal_headers_are_replaced() {
    let mesh = start(Net(54), DownstreamLimits::default()).await;
    let mut client = mesh.http1(mesh.net.reviews()).await;

    // h2c: served as HTTP/1.1, the upgrade headers gone.
    let (status, headers, _) = send(
        &mut client,
        get(
            REVIEWS,
            "/h2c",
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("upgrade").is_none());
    let seen = BACKENDS
        .iter()
        .flat_map(|(name, ..)| mesh.backends.seen(name))
        .find(|s| s.path == "/h2c")
        .unwrap();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the backend"
        );
    }
    // The connection is still HTTP/1.1 and usable.
    let (status, _, _) = send(&mut client, get(REVIEWS, "/after-h2c", &[])).await;
    assert_eq!(status, StatusCode::OK);

    // Forged XFCC and x-envoy-* headers never reach the backend; the waypoint's XFCC names the
    // client's identity.
    let (status, _, _) = send(
        &mut client,
        get(
            REVIEWS,
            "/xfcc",
            &[
                (
                    "x-forwarded-client-cert",
                    "By=spiffe://cluster.local/ns/default/sa/reviews;URI=spiffe://cluster.local/ns/default/sa/admin",
                ),
                ("x-envoy-original-path", "/admin"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = BACKENDS
        .iter()
        .flat_map(|(name, ..)| mesh.backends.seen(name))
        .find(|s| s.path == "/xfcc")
        .unwrap();
    let xfcc: Vec<&str> = seen
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    // Envoy's elements in Envoy's order: the SHA-256 of the client's certificate and its
    // (empty, for a SPIFFE workload certificate) subject sit between `By` and `URI`.
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    let elements: Vec<&str> = xfcc[0].split(';').collect();
    assert_eq!(elements.len(), 4, "{xfcc:?}");
    assert_eq!(
        elements[0],
        "By=spiffe://cluster.local/ns/default/sa/waypoint"
    );
    let hash = elements[1].strip_prefix("Hash=").expect("Hash element");
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{hash}"
    );
    assert_eq!(elements[2], "Subject=\"\"");
    assert_eq!(
        elements[3],
        "URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert!(
        !seen
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("x-envoy-")),
        "{:?}",
        seen.headers
    );
    // The access log shows the path the client asked for, not a forged original path.
    let log = mesh.access_log();
    assert!(
        log.iter().any(|l| l["path"] == "/xfcc"),
        "access log: {log:?}"
    );
}

/// The threads of the waypoint named `waypoint-<index>` for this test's index 2 (only this test
/// starts a waypoint with three workers; the others have two).
fn third_worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "waypoint-2")
        })
        .count()
}

/// `workerTunnels` of `connect_terminate` in the waypoint's config_dump.
async fn worker_tunnels(mesh: &WaypointMesh) -> Vec<u64> {
    let dump = mesh.config_dump().await;
    let stage = dump["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "connect_terminate")
        .unwrap()
        .clone();
    stage["workerTunnels"]
        .as_array()
        .unwrap_or_else(|| panic!("workerTunnels in {stage}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

/// Worker threads: each HBONE connection is served whole by one worker, the connections go to
/// the workers in turn, every worker routes to the backends, and the workers stop with the
/// waypoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_take_connections_in_turn_and_stop_with_the_waypoint() {
    let mesh = WaypointMesh::start_with(
        Net(82),
        MeshOptions {
            waypoint_workers: 3,
            ..MeshOptions::default()
        },
    )
    .await;
    // A new thread takes its name once it runs.
    wait_for_third_worker_threads(1).await;
    assert_eq!(worker_tunnels(&mesh).await, [0, 0, 0]);

    // Three HBONE connections (one client pool each), two tunnels on each: every tunnel of a
    // connection lands on that connection's worker.
    let ca = hbone::LocalCa::load_or_generate(&mesh.ca_dir, "cluster.local").unwrap();
    let sleep = hbone::Identity::new("cluster.local", "default", "sleep").unwrap();
    let certs = std::sync::Arc::new(hbone::CertStore::new(
        ca.issue(&sleep, Duration::from_secs(600)).unwrap(),
    ));
    let waypoint_id = hbone::Identity::new("cluster.local", "default", "waypoint").unwrap();
    let mut pools = Vec::new();
    for conn in 0..3 {
        let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
        for tunnel in 0..2 {
            let t = pool
                .connect(
                    &certs,
                    vec![waypoint_id.clone()],
                    mesh.waypoint.hbone,
                    &hbone::TunnelRequest::new(mesh.net.reviews()),
                )
                .await
                .unwrap();
            let (mut client, driver) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(t.stream))
                    .await
                    .unwrap();
            tokio::spawn(driver);
            let path = format!("/worker/{conn}/{tunnel}");
            let (status, _, _) = send(&mut client, get(REVIEWS, &path, &[])).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(reached_backend(&mesh, &path), "{path} reached a backend");
        }
        assert_eq!(pool.connections_opened(), 1);
        pools.push(pool);
    }
    assert_eq!(worker_tunnels(&mesh).await, [2, 2, 2]);

    // The client's own path through ztunnel A: a fourth connection, on the first worker again.
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let (status, _, _) = send(&mut client, get(REVIEWS, "/worker/ztunnel", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(worker_tunnels(&mesh).await, [3, 2, 2]);

    drop((client, pools));
    mesh.waypoint.shutdown().await;
    wait_for_third_worker_threads(0).await;
}

/// Waits until [`third_worker_threads`] is `n`, for at most [`BOUND`].
async fn wait_for_third_worker_threads(n: usize) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while third_worker_threads() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} threads named waypoint-2, expected {n}",
            third_worker_threads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
