//! HBONE vs plain loopback TCP, measured in one run.
//!
//! Prints a table with, for each scenario, the plain-TCP baseline, HBONE, and their ratio:
//! - single-connection throughput (one tunnel, bulk one way);
//! - request/response latency with 1-byte and 1 KiB messages (p50 and p99);
//! - new-tunnel rate: a fresh connection (TCP, or TCP + mTLS + HTTP/2) plus one round trip.
//!
//! Every loop is bounded both in count and in time. Run with
//! `cargo bench -p hbone --bench hbone` (add `-- --quick` for a shorter run).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::{
    CertStore, Config, Identity, InboundRequest, LocalCa, Pool, Responder, Server, Shutdown,
    TunnelRequest,
};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Params {
    bulk_bytes: u64,
    bulk_time: Duration,
    rr_count: u64,
    rr_time: Duration,
    connect_count: u64,
    connect_time: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let p = if quick {
        Params {
            bulk_bytes: 1 << 30,
            bulk_time: Duration::from_secs(1),
            rr_count: 5_000,
            rr_time: Duration::from_secs(2),
            connect_count: 500,
            connect_time: Duration::from_secs(2),
        }
    } else {
        Params {
            bulk_bytes: 8 << 30,
            bulk_time: Duration::from_secs(3),
            rr_count: 50_000,
            rr_time: Duration::from_secs(5),
            connect_count: 5_000,
            connect_time: Duration::from_secs(4),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(p));
}

/// Everything a scenario needs: a plain TCP sink/echo server and an HBONE server doing the same.
struct Bench {
    _dir: tempfile::TempDir,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    client: Arc<CertStore>,
    server_id: Identity,
    tcp_sink: SocketAddr,
    tcp_echo: SocketAddr,
    hbone: SocketAddr,
}

/// The first byte of a stream picks the server's behaviour: `S` sink, `E` echo.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        b'S' => {
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            let _ = s.write_all(&total.to_be_bytes()).await;
            let _ = s.shutdown().await;
        }
        _ => loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        },
    }
}

async fn setup() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let client_id = Identity::new("cluster.local", "default", "client").unwrap();
    let server_id = Identity::new("cluster.local", "default", "server").unwrap();
    let client = Arc::new(CertStore::new(
        ca.issue(&client_id, Duration::from_secs(3600)).unwrap(),
    ));
    let server = Arc::new(CertStore::new(
        ca.issue(&server_id, Duration::from_secs(3600)).unwrap(),
    ));

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s));
        }
    });

    let tls = hbone::tls::server_config(server, ca.roots()).unwrap();
    let handler = |_req: InboundRequest, responder: Responder| async move {
        if let Ok(stream) = responder.accept(http::HeaderMap::new()) {
            serve(stream).await;
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    let server = Server::new(Config::default(), tls, handler).unwrap();
    tokio::spawn(server.run(listener, Shutdown::default(), Duration::from_secs(1)));

    Bench {
        _dir: dir,
        roots: ca.roots().to_vec(),
        client,
        server_id,
        tcp_sink: tcp_addr,
        tcp_echo: tcp_addr,
        hbone: hbone_addr,
    }
}

impl Bench {
    async fn tcp(&self, mode: u8) -> TcpStream {
        let addr = if mode == b'S' {
            self.tcp_sink
        } else {
            self.tcp_echo
        };
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&[mode]).await.unwrap();
        s
    }

    async fn tunnel(&self, pool: &Pool, mode: u8) -> hbone::H2Stream {
        let t = pool
            .connect(
                &self.client,
                vec![self.server_id.clone()],
                self.hbone,
                &TunnelRequest::new(self.hbone),
            )
            .await
            .unwrap();
        let mut s = t.stream;
        s.write_all(&[mode]).await.unwrap();
        s
    }
}

/// Sends bulk data until `bytes` or `time` is reached; returns bytes per second as the sink
/// counted them.
async fn bulk<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: u64, time: Duration) -> f64 {
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes && start.elapsed() < time {
        s.write_all(&buf).await.unwrap();
        sent += buf.len() as u64;
    }
    s.shutdown().await.unwrap();
    let mut total = [0u8; 8];
    s.read_exact(&mut total).await.unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(total), sent, "sink saw every byte");
    sent as f64 / elapsed
}

/// Ping-pong of `size`-byte messages; returns the latency histogram in nanoseconds.
async fn request_response<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    size: usize,
    count: u64,
    time: Duration,
) -> Histogram<u64> {
    let msg = vec![1u8; size];
    let mut back = vec![0u8; size];
    let mut h = Histogram::<u64>::new(3).unwrap();
    // Warm up.
    for _ in 0..100 {
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..count {
        if start.elapsed() > time {
            break;
        }
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

/// New connections (plus one 1-byte round trip each) per second.
async fn connect_rate<F, Fut>(count: u64, time: Duration, mut one: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut n = 0u64;
    while n < count && start.elapsed() < time {
        one().await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn one_round_trip<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
}

/// Rounds of the throughput comparison.
const ROUNDS: usize = 5;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn row(name: &str, unit: &str, tcp: f64, hbone: f64) {
    println!(
        "{name:<34} {tcp:>14.1} {hbone:>14.1}  {unit:<8} {:>7.1}%",
        100.0 * hbone / tcp
    );
}

async fn run(p: Params) {
    let b = setup().await;
    let pool = Pool::new(Config::default(), b.roots.clone()).unwrap();
    // Establish the pooled connection before measuring streams on it.
    drop(b.tunnel(&pool, b'E').await);

    println!(
        "{:<34} {:>14} {:>14}  {:<8} {:>8}",
        "scenario", "plain TCP", "HBONE", "unit", "HBONE/TCP"
    );
    println!("{}", "-".repeat(86));

    // Alternate the two paths a few times and keep the median of each: a shared 2-core machine
    // is noisy, and alternating spreads the noise over both.
    let (mut tcp, mut hb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        tcp.push(bulk(b.tcp(b'S').await, p.bulk_bytes, p.bulk_time).await);
        hb.push(bulk(b.tunnel(&pool, b'S').await, p.bulk_bytes, p.bulk_time).await);
    }
    row(
        "throughput, 1 connection (median)",
        "MB/s",
        median(&mut tcp) / 1e6,
        median(&mut hb) / 1e6,
    );

    for size in [1usize, 1024] {
        let tcp = request_response(b.tcp(b'E').await, size, p.rr_count, p.rr_time).await;
        let hb = request_response(b.tunnel(&pool, b'E').await, size, p.rr_count, p.rr_time).await;
        for q in [50.0, 99.0] {
            let (t, h) = (
                tcp.value_at_quantile(q / 100.0) as f64 / 1e3,
                hb.value_at_quantile(q / 100.0) as f64 / 1e3,
            );
            row(&format!("request/response {size} B, p{q:.0}"), "µs", t, h);
        }
    }

    let tcp = connect_rate(p.connect_count, p.connect_time, || async {
        one_round_trip(b.tcp(b'E').await).await;
    })
    .await;
    let hb = connect_rate(p.connect_count, p.connect_time, || async {
        // A fresh pool: TCP connect + mTLS handshake + HTTP/2 + CONNECT every time.
        let fresh = Pool::new(Config::default(), b.roots.clone()).unwrap();
        one_round_trip(b.tunnel(&fresh, b'E').await).await;
    })
    .await;
    row("new connection + 1 round trip", "conn/s", tcp, hb);
    let pooled = connect_rate(p.connect_count, p.connect_time, || async {
        one_round_trip(b.tunnel(&pool, b'E').await).await;
    })
    .await;
    row("new tunnel on pooled connection", "conn/s", tcp, pooled);
}
