//! ztunnel's transparent in-pod path between two network-namespace "nodes" vs direct TCP
//! between the same pods, measured in one run.
//!
//! The standard [`Topology`] (node1 and node2 joined by the `wire` bridge). pod-a (10.1.1.10,
//! service account `client`, node1) and pod-c (10.1.2.10, service account `server`, node2)
//! are enrolled: one in-process ztunnel per node in in-pod mode, fed by an in-process node
//! agent that installs the capture rules. pod-a's capture excludes outbound port 9999 and
//! pod-c's excludes inbound port 9999, so the same pods, sockets and network path serve both:
//!
//! ```text
//!   direct: pod-a ──────────── 10.1.2.10:9999 (plain TCP over the wire) ───────────→ pod-c app
//!   mesh:   pod-a ─capture→ ztunnel node1 ══ HBONE :15008 ══→ ztunnel node2 ──→ pod-c app :8080
//! ```
//!
//! The application in pod-c serves both ports. The client sockets are created inside pod-a
//! (unmodified applications: the kernel redirects the mesh port), through one thread that
//! stays in pod-a's namespace ([`netns::Entered`]: [`netns::tcp_connect_from`] would start a
//! thread per socket, which costs more than a direct connection and would flatten the
//! connection-rate ratio). Prints, for each scenario, direct, through the mesh and their ratio:
//! - single-connection throughput (median of alternating rounds; and the process CPU time per
//!   GB moved, which a busy machine disturbs less);
//! - 64-byte request/response latency p50/p99 (and the p50 the mesh adds);
//! - new connection + one 64-byte round trip, per second;
//!
//! followed by the goals of `ztunnel/benches/l4.rs` that apply to this path. Request/response
//! and connection rate alternate the two paths too, in slices of their bounds, so that the
//! noise of a shared machine falls on both alike. Every loop is bounded both in count and in
//! time. Before measuring, a packet capture of the wire checks that the direct port crosses
//! it in clear and the mesh port only inside HBONE; after, the ztunnels' metrics must count
//! exactly the mesh connections (and none of the direct ones), or the benchmark fails.
//!
//! Needs root (namespaces, nftables): without root it exits with an error, unless
//! `ZTUNNEL_SKIP_NETNS_TESTS=1`. Run with `cargo bench -p ambient-e2e --bench inpod` (add
//! `-- --quick` for a shorter run).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambient_e2e::inpod::{Node, counter, mesh_workload, pod_entry, principal};
use ambient_e2e::netns::{self, Topology};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client application's pod (node1).
const CLIENT_POD: &str = "pod-a";
/// The server application's pod (node2).
const SERVER_POD: &str = "pod-c";
/// The server port reached through the capture and HBONE.
const MESH_PORT: u16 = 8080;
/// The server port excluded from both captures: the direct baseline.
const DIRECT_PORT: u16 = 9999;
/// The HBONE port between the nodes.
const HBONE_PORT: u16 = 15008;
/// Size of the request/response and connection-rate messages.
const MSG: usize = 64;
/// The counter of connections a ztunnel opened.
const OPENED: &str = "istio_tcp_connections_opened_total";

struct Params {
    bulk_bytes: u64,
    bulk_time: Duration,
    rr_count: u64,
    rr_time: Duration,
    connect_count: u64,
    connect_time: Duration,
}

fn main() {
    if !netns::is_root() {
        if std::env::var(netns::SKIP_ENV).as_deref() == Ok("1") {
            eprintln!(
                "\n*** SKIPPED the inpod benchmark: it needs root (network namespaces, \
                 nftables); {}=1 is set ***\n",
                netns::SKIP_ENV
            );
            return;
        }
        eprintln!(
            "\n*** the inpod benchmark needs root to create network namespaces and nftables \
             rules. Run it as root (e.g. sudo -E cargo bench -p ambient-e2e --bench inpod), \
             or set {}=1 to skip it. ***\n",
            netns::SKIP_ENV
        );
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let p = if quick {
        // ~25 s: longer rounds than l4.rs's quick run, the namespaces' path being noisier.
        Params {
            bulk_bytes: 2 << 30,
            bulk_time: Duration::from_secs(2),
            rr_count: 20_000,
            rr_time: Duration::from_secs(2),
            connect_count: 2_000,
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

/// The first byte of a stream picks the application's behaviour: `S` sink (replies with the
/// byte count at EOF), `E` echo.
async fn serve(mut s: TcpStream) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    if mode[0] == b'S' {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        let _ = s.write_all(&total.to_be_bytes()).await;
        let _ = s.shutdown().await;
    } else {
        let mut buf = vec![0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Serves `port` on every address of `pod`.
async fn start_server(topo: &Topology, pod: &str, port: u16) {
    let listener = netns::tcp_listener_in(topo, pod, SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve(s));
                }
                // Out of fds: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
}

/// The namespaces, the two nodes and the client pod's handle. Fields drop in order: the
/// client's handle and the nodes (with their node agents) before the namespaces.
struct Bench {
    /// The client pod, entered once for all the client sockets.
    client: netns::Entered,
    node1: Node,
    node2: Node,
    topo: Topology,
    _dir: tempfile::TempDir,
    server: Ipv4Addr,
    /// Connections opened to the direct port, then to the mesh port.
    opened: [AtomicU64; 2],
}

async fn setup() -> Bench {
    let topo = Topology::standard().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_ip = topo.ip(CLIENT_POD);
    let server = topo.ip(SERVER_POD);
    let state = dir.path().join("mesh.yaml");
    let mesh = format!(
        "workloads:\n{}{}",
        mesh_workload(
            CLIENT_POD,
            "client",
            &client_ip.to_string(),
            "HBONE",
            "node1",
            ""
        ),
        mesh_workload(
            SERVER_POD,
            "server",
            &server.to_string(),
            "HBONE",
            "node2",
            ""
        ),
    );
    std::fs::write(&state, mesh).unwrap();

    start_server(&topo, SERVER_POD, MESH_PORT).await;
    start_server(&topo, SERVER_POD, DIRECT_PORT).await;

    let pods1 = format!(
        "pods:\n{}",
        pod_entry(
            &topo,
            CLIENT_POD,
            "client",
            &format!("  exclude: {{outboundPorts: [{DIRECT_PORT}]}}\n")
        )
    );
    let pods2 = format!(
        "pods:\n{}",
        pod_entry(
            &topo,
            SERVER_POD,
            "server",
            &format!("  exclude: {{inboundPorts: [{DIRECT_PORT}]}}\n")
        )
    );
    let node1 = Node::start("node1", dir.path(), &state, &pods1).await;
    let node2 = Node::start("node2", dir.path(), &state, &pods2).await;
    node1.wait_ready().await;
    node2.wait_ready().await;
    node1.wait_pods(&[&format!("uid-{CLIENT_POD}")]).await;
    node2.wait_pods(&[&format!("uid-{SERVER_POD}")]).await;
    let client = netns::Entered::new(topo.ns(CLIENT_POD)).unwrap();
    Bench {
        client,
        node1,
        node2,
        topo,
        _dir: dir,
        server,
        opened: [AtomicU64::new(0), AtomicU64::new(0)],
    }
}

impl Bench {
    /// A connection from inside the client pod to the server's mesh or direct port, with the
    /// application's `mode` byte sent.
    async fn open(&self, mesh: bool, mode: u8) -> TcpStream {
        let port = if mesh { MESH_PORT } else { DIRECT_PORT };
        let mut s = self
            .client
            .tcp_connect(SocketAddr::from((self.server, port)))
            .await
            .unwrap();
        self.opened[usize::from(mesh)].fetch_add(1, Ordering::Relaxed);
        s.set_nodelay(true).unwrap();
        s.write_all(&[mode]).await.unwrap();
        s
    }

    fn opened(&self, mesh: bool) -> u64 {
        self.opened[usize::from(mesh)].load(Ordering::Relaxed)
    }
}

/// Process CPU time (user + system, all threads): the client, both ztunnels and the server.
/// The kernel's forwarding between the namespaces is partly accounted elsewhere (softirq).
fn cpu_time() -> Duration {
    ambient_e2e::process_cpu_time()
}

/// Sends bulk data until `bytes` or `time` is reached; returns bytes per second as the sink
/// counted them, and the bytes sent.
async fn bulk(mut s: TcpStream, bytes: u64, time: Duration) -> (f64, u64) {
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
    (sent as f64 / elapsed, sent)
}

/// Ping-pong of `size`-byte messages on `s`, `count` times or for `time`, whichever comes
/// first, recorded into `h` (nanoseconds); returns the round trips done.
async fn request_response(
    s: &mut TcpStream,
    size: usize,
    count: u64,
    time: Duration,
    h: &mut Histogram<u64>,
) -> u64 {
    let msg = vec![1u8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    let mut n = 0;
    while n < count && start.elapsed() < time {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
        n += 1;
    }
    n
}

/// One round trip of `msg` on an echo stream; panics unless it comes back whole.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg, "echoed");
}

/// Opens connections (plus one 64-byte round trip each), `count` of them or for `time`,
/// whichever comes first; returns how many and the time taken.
async fn connections(b: &Bench, mesh: bool, count: u64, time: Duration) -> (u64, Duration) {
    let msg = [7u8; MSG];
    let start = Instant::now();
    let mut n = 0u64;
    while n < count && start.elapsed() < time {
        round_trip(&mut b.open(mesh, b'E').await, &msg).await;
        n += 1;
    }
    (n, start.elapsed())
}

/// Checks on the wire that the direct port crosses it in clear and the mesh port only
/// inside HBONE (one echo round trip each, with a marker).
async fn check_paths(b: &Bench) {
    let direct_marker = b"direct-path-marker-3c9e51";
    let mesh_marker = b"mesh-path-marker-8d2f07";
    let capture = netns::Capture::start(&b.topo).unwrap();
    round_trip(&mut b.open(false, b'E').await, direct_marker).await;
    round_trip(&mut b.open(true, b'E').await, mesh_marker).await;
    let wire = capture.stop();
    let flows = wire.tcp_flows();
    assert!(
        wire.contains(direct_marker) && wire.tcp_frames_with_port(DIRECT_PORT) > 0,
        "the direct connection did not cross the wire in clear: {flows:?}"
    );
    assert!(
        wire.tcp_frames_with_port(HBONE_PORT) > 0,
        "no HBONE frames on the wire: {flows:?}"
    );
    assert_eq!(
        wire.tcp_frames_with_port(MESH_PORT),
        0,
        "the mesh port crossed the wire outside HBONE: {flows:?}"
    );
    assert!(
        !wire.contains(mesh_marker),
        "the mesh connection's bytes crossed the wire in clear"
    );
}

/// Fails unless node2 counted, as the destination, exactly the mesh connections from the
/// client's identity, and neither ztunnel counted anything else (the direct port went around
/// both).
async fn check_metrics(b: &Bench) -> String {
    let mesh = b.opened(true);
    let direct = b.opened(false);
    let m2 = b.node2.metrics().await;
    let m1 = b.node1.metrics().await;
    let source_principal = format!("source_principal=\"{}\"", principal("client"));
    let from_client = counter(
        &m2,
        OPENED,
        &["reporter=\"destination\"", &source_principal],
    );
    assert!(
        from_client > 0,
        "node2's ztunnel counted no connection from the client: the mesh traffic did not go \
         through it\n{m2}"
    );
    assert_eq!(
        from_client, mesh,
        "node2's ztunnel counted {from_client} connections from the client, the benchmark \
         opened {mesh} to the mesh port\n{m2}"
    );
    let node2_all = counter(&m2, OPENED, &[]);
    assert_eq!(
        node2_all, mesh,
        "node2's ztunnel counted connections that were not the mesh's: the {direct} direct \
         connections must bypass it\n{m2}"
    );
    let node1_source = counter(&m1, OPENED, &["reporter=\"source\"", &source_principal]);
    let node1_all = counter(&m1, OPENED, &[]);
    assert_eq!(
        (node1_source, node1_all),
        (mesh, mesh),
        "node1's ztunnel must count exactly the {mesh} mesh connections (source) and none of \
         the {direct} direct ones\n{m1}"
    );
    format!(
        "verified: node2's ztunnel counted {from_client} connections from {} \
         (reporter=destination), node1's {node1_source} (reporter=source): exactly the {mesh} \
         opened to :{MESH_PORT}; none of the {direct} opened to :{DIRECT_PORT}",
        principal("client")
    )
}

/// Rounds of the throughput comparison.
const ROUNDS: usize = 5;
/// Alternating slices of the request/response and connection-rate scenarios.
const SLICES: u64 = 10;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn row(name: &str, unit: &str, direct: f64, mesh: f64) {
    let ratio = if direct > 0.0 {
        format!("{:>7.1}%", 100.0 * mesh / direct)
    } else {
        "      -".to_string()
    };
    println!("{name:<36} {direct:>12.1} {mesh:>16.1}  {unit:<8} {ratio}");
}

async fn run(p: Params) {
    let started = Instant::now();
    let b = setup().await;
    // Establish the HBONE connection node1 → node2 (and the certificates) before measuring.
    round_trip(&mut b.open(true, b'E').await, &[0u8; MSG]).await;
    round_trip(&mut b.open(false, b'E').await, &[0u8; MSG]).await;
    check_paths(&b).await;
    println!(
        "in-pod: {CLIENT_POD} (node1) → {SERVER_POD} {} (node2); direct :{DIRECT_PORT} \
         (excluded from both captures), mesh :{MESH_PORT} (captured, HBONE); setup {:.1} s",
        b.server,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "{:<36} {:>12} {:>16}  {:<8} {:>8}",
        "scenario", "direct TCP", "through the mesh", "unit", "mesh/direct"
    );
    println!("{}", "-".repeat(90));

    // Alternate the two paths a few times and keep the median of each: a shared 2-core machine
    // is noisy, and alternating spreads the noise over both.
    let (mut direct, mut mesh) = (Vec::new(), Vec::new());
    let (mut cpu, mut bytes) = ([Duration::ZERO; 2], [0u64; 2]);
    for _ in 0..ROUNDS {
        for (i, through_mesh) in [false, true].into_iter().enumerate() {
            let s = b.open(through_mesh, b'S').await;
            let t = cpu_time();
            let (rate, sent) = bulk(s, p.bulk_bytes, p.bulk_time).await;
            cpu[i] += cpu_time().saturating_sub(t);
            bytes[i] += sent;
            if through_mesh {
                mesh.push(rate);
            } else {
                direct.push(rate);
            }
        }
    }
    let (tput_d, tput_m) = (median(&mut direct) / 1e6, median(&mut mesh) / 1e6);
    row("throughput, 1 connection (median)", "MB/s", tput_d, tput_m);
    let ms_per_gb = |i: usize| cpu[i].as_secs_f64() * 1e3 / (bytes[i].max(1) as f64 / 1e9);
    row(
        "  CPU time per GB moved",
        "ms/GB",
        ms_per_gb(0),
        ms_per_gb(1),
    );
    let spread = |v: &[f64]| {
        format!(
            "{:.0}–{:.0}",
            v.first().copied().unwrap_or(0.0) / 1e6,
            v.last().copied().unwrap_or(0.0) / 1e6
        )
    };
    println!(
        "{:<36} {:>12} {:>16}  MB/s",
        "  range of the rounds",
        spread(&direct),
        spread(&mesh)
    );

    // Request/response and connection rate alternate the paths too, in slices of each bound.
    let mut conns = [b.open(false, b'E').await, b.open(true, b'E').await];
    let mut hist = [
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    ];
    // Warm up (not recorded).
    for s in &mut conns {
        for _ in 0..100 {
            round_trip(s, &[1u8; MSG]).await;
        }
    }
    let mut done = [0u64; 2];
    for _ in 0..SLICES {
        for (i, (s, h)) in conns.iter_mut().zip(&mut hist).enumerate() {
            done[i] +=
                request_response(s, MSG, p.rr_count / SLICES, p.rr_time / SLICES as u32, h).await;
        }
    }
    drop(conns);
    let [d, m] = &hist;
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    row("request/response 64 B, p50", "µs", q(d, 0.5), q(m, 0.5));
    row("request/response 64 B, p99", "µs", q(d, 0.99), q(m, 0.99));
    let added_p50 = q(m, 0.5) - q(d, 0.5);
    println!("{:<36} {:>12} {added_p50:>16.1}  µs", "  added p50", "");
    println!(
        "{:<36} {:>12} {:>16}  round trips",
        "  samples", done[0], done[1]
    );

    let (mut opened, mut took) = ([0u64; 2], [Duration::ZERO; 2]);
    let (count, time) = (p.connect_count / SLICES, p.connect_time / SLICES as u32);
    for _ in 0..SLICES {
        for (i, through_mesh) in [false, true].into_iter().enumerate() {
            let (n, t) = connections(&b, through_mesh, count, time).await;
            opened[i] += n;
            took[i] += t;
        }
    }
    let rate = |i: usize| opened[i] as f64 / took[i].as_secs_f64().max(1e-9);
    row(
        "new connection + 64 B round trip",
        "conn/s",
        rate(0),
        rate(1),
    );
    println!(
        "{:<36} {:>12.1} {:>16.1}  µs",
        "  time per connection",
        1e6 / rate(0),
        1e6 / rate(1)
    );
    println!();
    let verified = check_metrics(&b).await;
    println!("{verified}");

    println!();
    println!("goals (issue, as in l4.rs)             result");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let tput_pct = 100.0 * tput_m / tput_d;
    println!(
        "  throughput >= 35 % of direct         {tput_pct:>7.1} %   {}",
        verdict(tput_pct >= 35.0)
    );
    println!(
        "  RR p50 added <= 50 µs                {added_p50:>7.1} µs  {}",
        verdict(added_p50 <= 50.0)
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
