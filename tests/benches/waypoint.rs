//! The waypoint's L7 path vs the same mesh without it, measured in one run.
//!
//! Two loopback meshes of [`WaypointMesh`] (backends, two in-process ztunnel nodes, a waypoint):
//!
//! ```text
//!   waypoint (127.60.x.x): client ─SOCKS5→ ztunnel A ═HBONE═→ waypoint ═HBONE═→ ztunnel B → backend
//!   baseline (127.61.x.x): client ─SOCKS5→ ztunnel A ═════════HBONE═════════→ ztunnel B → backend
//! ```
//!
//! In the baseline the service `reviews` is not bound to the waypoint (its waypoint runs, idle,
//! off the path). Every request is a `POST /echo` with a 1 KiB body to
//! `reviews.default.svc.cluster.local:9080` (three endpoints); the backend answers `200` with
//! the same 1 KiB (1 KiB up and 1 KiB down). HTTP/1.1 uses one client connection per
//! concurrent request; HTTP/2 one client connection carrying all the concurrent streams. Each
//! protocol has three rows: one request in flight, sixteen as fast as they are answered, and
//! sixteen paced at 1000 requests/s in all (the load behind Istio's published per-request CPU
//! figures).
//!
//! The waypoint of the measured path runs as the binary runs it: its HBONE connections on its
//! own worker threads (`waypoint-0`, `waypoint-1`, …, each a single-threaded runtime), the rest
//! on a one-thread runtime named `waypoint`. Its CPU time is the sum over those threads of
//! `/proc/self/task/<tid>/schedstat`
//! (nanoseconds; `stat`'s utime+stime in clock ticks if schedstat is missing), with its
//! user/kernel split and the threads' context switches per request beside it. The process
//! CPU time (getrusage: client, both ztunnels, backends and the waypoint) is reported for
//! context. The two paths alternate in slices so that the noise of a shared machine falls on
//! both alike. Every load loop is bounded in count and in time. The waypoint's access log is
//! disabled (Istio's default); its metrics are on.
//!
//! After the run the benchmark fails unless the waypoint counted every request of the
//! waypoint path and none of the baseline, and the backends received exactly the requests
//! sent. Run with `cargo bench -p ambient-e2e --bench waypoint` (add `-- --quick` for a
//! shorter run; `-- --waypoint-workers N` for the waypoint's worker threads, default 2 as in
//! Istio's published figures; `0` serves the connections on a two-thread work-stealing runtime
//! named `waypoint` instead). For profiling: `--only h1|h2` runs one protocol's rows,
//! `--count N` caps the requests per row and path, `--warmup N` sets the warm-up requests per
//! connection set, and `--seconds S` the time per row and path (all still bounded).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambient_e2e::waypoint::{MeshOptions, Net, WaypointMesh, series};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinSet;
use waypoint::telemetry::AccessLog;

/// The binaries' allocator (`ztunnel` and `waypoint` both install it), so that the waypoint's
/// CPU per request is the one the `waypoint` binary has.
#[global_allocator]
static ALLOCATOR: ztunnel::alloc::Allocator = ztunnel::alloc::ALLOCATOR;

/// The service's host (its VIP:port is `Net::reviews`).
const HOST: &str = "reviews.default.svc.cluster.local:9080";
/// Request and response body size.
const BODY: usize = 1024;
/// The rows of each protocol: concurrent requests in flight and, for the paced row, the total
/// request rate. One in flight (latency), sixteen as fast as they go (throughput), and Istio's
/// published method: 1000 requests/s over 16 connections.
const ROWS: [(usize, Option<u32>); 3] = [(1, None), (16, None), (16, Some(1000))];
/// Alternating slices of each row.
const SLICES: u32 = 5;
/// The name of the waypoint runtime's threads; its workers' are this, `-` and their index.
const WAYPOINT_THREAD: &str = waypoint::app::WORKER_THREAD_NAME;
/// The waypoint's goal: CPU per request (Istio's Envoy waypoint ≈ 250 µs).
const GOAL_CPU_US: f64 = 50.0;
/// The waypoint's request counter.
const REQUESTS: &str = "istio_requests_total";

struct Params {
    /// Requests per row and path (upper bound).
    count: u64,
    /// Time per row and path (upper bound).
    time: Duration,
    /// Unrecorded requests per connection set before a row.
    warmup: u64,
    /// The protocols whose rows run.
    only: Vec<Proto>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let workers = args
        .iter()
        .position(|a| a == "--waypoint-workers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = match flag("--only").as_deref() {
        Some("h1") => vec![Proto::H1],
        Some("h2") => vec![Proto::H2],
        _ => vec![Proto::H1, Proto::H2],
    };
    let mut p = if quick {
        Params {
            count: 100_000,
            time: Duration::from_millis(1_000),
            warmup: 200,
            only: Vec::new(),
        }
    } else {
        Params {
            count: 1_000_000,
            time: Duration::from_millis(5_000),
            warmup: 1_000,
            only: Vec::new(),
        }
    };
    if let Some(n) = flag("--count").and_then(|v| v.parse().ok()) {
        p.count = n;
    }
    if let Some(n) = flag("--warmup").and_then(|v| v.parse().ok()) {
        p.warmup = n;
    }
    if let Some(s) = flag("--seconds").and_then(|v| v.parse::<f64>().ok())
        && s.is_finite()
        && s > 0.0
    {
        p.time = Duration::from_secs_f64(s.min(600.0));
    }
    p.only = only;
    // With workers the runtime keeps only the waypoint's control work, as in the binary.
    let waypoint_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if workers == 0 { 2 } else { 1 })
        .thread_name(WAYPOINT_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(p, waypoint_rt.handle().clone(), workers));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Self::H1 => "HTTP/1.1",
            Self::H2 => "HTTP/2",
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// One `POST /echo` with `body`; returns the response body's length.
    async fn post(&mut self, body: Bytes) -> usize {
        let response = match self {
            Self::H1(s) => {
                s.ready().await.expect("HTTP/1.1 connection ready");
                let request = http::Request::post("/echo")
                    .header("host", HOST)
                    .body(Full::new(body))
                    .unwrap();
                s.send_request(request).await.expect("HTTP/1.1 response")
            }
            Self::H2(s) => {
                s.ready().await.expect("HTTP/2 connection ready");
                let request = http::Request::post(format!("http://{HOST}/echo"))
                    .body(Full::new(body))
                    .unwrap();
                s.send_request(request).await.expect("HTTP/2 response")
            }
        };
        assert_eq!(response.status(), http::StatusCode::OK, "status");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .len()
    }
}

/// `concurrency` senders to `dst` through `mesh`: HTTP/1.1 one connection each, HTTP/2 one
/// shared connection.
async fn open(
    mesh: &WaypointMesh,
    dst: SocketAddr,
    proto: Proto,
    concurrency: usize,
) -> Vec<Sender> {
    let connect = || async {
        let s = mesh.connect(dst).await;
        s.set_nodelay(true).unwrap();
        TokioIo::new(s)
    };
    match proto {
        Proto::H1 => {
            let mut out = Vec::new();
            for _ in 0..concurrency {
                let (sender, conn) = http1::handshake(connect().await).await.unwrap();
                tokio::spawn(conn);
                out.push(Sender::H1(sender));
            }
            out
        }
        Proto::H2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), connect().await)
                .await
                .unwrap();
            tokio::spawn(conn);
            (0..concurrency)
                .map(|_| Sender::H2(sender.clone()))
                .collect()
        }
    }
}

/// Runs the senders concurrently until `count` requests in all or `time`, whichever comes
/// first; returns the senders, the requests done and their latencies (ns). With `pace`, each
/// sender starts one request per `pace` (starts staggered evenly across the senders; a late
/// request delays the next instead of bunching), otherwise the next as soon as one is answered.
async fn load(
    senders: Vec<Sender>,
    count: u64,
    time: Duration,
    record: bool,
    pace: Option<Duration>,
) -> (Vec<Sender>, u64, Histogram<u64>) {
    let body = Bytes::from(vec![b'x'; BODY]);
    let budget = Arc::new(AtomicU64::new(count));
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = JoinSet::new();
    let n_senders = u32::try_from(senders.len()).unwrap().max(1);
    for (i, mut sender) in senders.into_iter().enumerate() {
        let (budget, body) = (Arc::clone(&budget), body.clone());
        let mut ticks = pace.map(|every| {
            let offset = every * u32::try_from(i).unwrap() / n_senders;
            let mut t = tokio::time::interval_at((start + offset).into(), every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
            let mut n = 0u64;
            loop {
                if let Some(t) = ticks.as_mut() {
                    t.tick().await;
                }
                if Instant::now() >= deadline
                    || budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                let t = Instant::now();
                let len = sender.post(body.clone()).await;
                let took = t.elapsed();
                assert_eq!(len, BODY, "the echoed body");
                if record {
                    h.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                }
                n += 1;
            }
            (sender, n, h)
        });
    }
    let mut out = Vec::new();
    let mut done = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
    while let Some(r) = tasks.join_next().await {
        let (sender, n, h) = r.expect("load task");
        out.push(sender);
        done += n;
        hist.add(h).unwrap();
    }
    (out, done, hist)
}

/// Process CPU time (user + system, all threads).
fn process_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .unwrap_or_default()
}

/// Clock ticks per second of `/proc/<pid>/task/<tid>/stat` (`sysconf(_SC_CLK_TCK)`: 100 on
/// every Linux architecture we run on).
const CLK_TCK: u64 = 100;

/// What the threads named `name` have used so far.
#[derive(Clone, Copy, Default)]
struct ThreadsUsage {
    /// CPU time (user + system).
    cpu: Duration,
    /// write(2)/writev(2) calls (`syscw` of `/proc/.../io`; tokio reads sockets with
    /// recv(2), which is not counted there).
    writes: u64,
    /// Bytes written by those calls (`wchar`).
    written: u64,
    /// Context switches (`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of
    /// `/proc/.../status`): a worker that runs out of work parks in epoll and is switched out.
    switches: u64,
    /// User and system CPU time (`stat` utime and stime, in clock ticks: coarse, exact enough
    /// over a row).
    user: Duration,
    system: Duration,
}

impl ThreadsUsage {
    fn since(self, before: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(before.cpu),
            writes: self.writes.saturating_sub(before.writes),
            written: self.written.saturating_sub(before.written),
            switches: self.switches.saturating_sub(before.switches),
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    fn add(&mut self, other: Self) {
        self.cpu += other.cpu;
        self.writes += other.writes;
        self.written += other.written;
        self.switches += other.switches;
        self.user += other.user;
        self.system += other.system;
    }
}

/// Whether a thread's `comm` is `name` or `name-<index>` (a worker of `name`).
fn named(comm: &str, name: &str) -> bool {
    let comm = comm.trim_end();
    comm == name
        || comm
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// Usage of the threads named `name` or `name-<index>`.
fn threads_usage(name: &str) -> ThreadsUsage {
    let mut usage = ThreadsUsage::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return usage;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !named(&comm, name) {
            continue;
        }
        let io = std::fs::read_to_string(path.join("io")).unwrap_or_default();
        let field = |key: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        usage.writes += field("syscw:");
        usage.written += field("wchar:");
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
            usage.switches += status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Some((user, system)) = stat_times(&path) {
            usage.user += user;
            usage.system += system;
        }
    }
    usage.cpu = threads_cpu(name).0;
    usage
}

/// CPU time of the threads named `name` or `name-<index>`, and how many there are. Threads that
/// ended in between are not counted: tokio's workers live as long as the runtime, and the
/// blocking pool's idle threads linger for 10 s.
fn threads_cpu(name: &str) -> (Duration, usize) {
    let mut total = Duration::ZERO;
    let mut threads = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (total, 0);
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !named(&comm, name) {
            continue;
        }
        threads += 1;
        // schedstat: time on CPU (ns), time waiting, timeslices.
        if let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += Duration::from_nanos(ns);
            continue;
        }
        if let Some((user, system)) = stat_times(&path) {
            total += user + system;
        }
    }
    (total, threads)
}

/// User and system time of the thread at `path` (`/proc/self/task/<tid>`): the 14th and 15th
/// fields of `stat`, in clock ticks.
fn stat_times(path: &std::path::Path) -> Option<(Duration, Duration)> {
    let s = std::fs::read_to_string(path.join("stat")).ok()?;
    // The fields after the ")" that ends comm; utime and stime are the 12th and 13th of those.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Option<Duration> {
        let t = f.get(i)?.parse::<u64>().ok()?;
        Some(Duration::from_nanos(t * 1_000_000_000 / CLK_TCK))
    };
    Some((ticks(11)?, ticks(12)?))
}

/// Requests the waypoint counted.
fn waypoint_requests(mesh: &WaypointMesh) -> f64 {
    series(&mesh.metrics(), REQUESTS, &[]).unwrap_or(0.0)
}

/// The measurements of one path in one row.
#[derive(Default)]
struct Measured {
    requests: u64,
    elapsed: Duration,
    waypoint: ThreadsUsage,
    process_cpu: Duration,
    backend_conns: u64,
    hist: Option<Histogram<u64>>,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn q_us(&self, q: f64) -> f64 {
        self.hist
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3)
    }
    fn per_req_us(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

struct Row {
    proto: Proto,
    concurrency: usize,
    /// The total request rate of a paced row.
    rate: Option<u32>,
    paths: [Measured; 2],
}

impl Row {
    /// The load column: `16`, or `16@1000/s` for a paced row.
    fn load(&self) -> String {
        match self.rate {
            Some(r) => format!("{}@{r}/s", self.concurrency),
            None => self.concurrency.to_string(),
        }
    }
}

/// Measures one protocol and concurrency (at `rate` requests/s in all, or as fast as they go)
/// on both meshes (`[waypoint, baseline]`), alternating in slices.
async fn row(
    meshes: [&WaypointMesh; 2],
    proto: Proto,
    (concurrency, rate): (usize, Option<u32>),
    p: &Params,
) -> Row {
    let pace = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / f64::from(r.max(1))));
    let mut paths = [Measured::default(), Measured::default()];
    let mut senders = Vec::new();
    for (i, mesh) in meshes.iter().enumerate() {
        let before = mesh.backends.accepted();
        let s = open(mesh, mesh.net.reviews(), proto, concurrency).await;
        let warmup = p.warmup * concurrency as u64;
        let (s, n, _) = load(s, warmup, p.time.max(Duration::from_secs(10)), false, None).await;
        assert_eq!(n, warmup, "warm-up finished in time");
        senders.push(Some(s));
        paths[i].backend_conns = mesh.backends.accepted() - before;
    }
    for _ in 0..SLICES {
        for (i, slot) in senders.iter_mut().enumerate() {
            let m = &mut paths[i];
            let accepted = meshes[i].backends.accepted();
            let (wp0, proc0) = (threads_usage(WAYPOINT_THREAD), process_cpu());
            let start = Instant::now();
            let (s, n, h) = load(
                slot.take().unwrap(),
                p.count / u64::from(SLICES),
                p.time / SLICES,
                true,
                pace,
            )
            .await;
            m.elapsed += start.elapsed();
            m.waypoint.add(threads_usage(WAYPOINT_THREAD).since(wp0));
            m.process_cpu += process_cpu().saturating_sub(proc0);
            m.backend_conns += meshes[i].backends.accepted() - accepted;
            m.requests += n;
            match &mut m.hist {
                Some(all) => all.add(h).unwrap(),
                None => m.hist = Some(h),
            }
            *slot = Some(s);
        }
    }
    Row {
        proto,
        concurrency,
        rate,
        paths,
    }
}

async fn run(p: Params, waypoint_rt: tokio::runtime::Handle, workers: usize) {
    let started = Instant::now();
    let mesh = |net: u8, bind: bool, rt: Option<tokio::runtime::Handle>| {
        // The baseline's idle waypoint serves on the bench's runtime: no threads of its own.
        let waypoint_workers = if rt.is_some() { workers } else { 0 };
        WaypointMesh::start_with(
            Net(net),
            MeshOptions {
                waypoint_runtime: rt,
                waypoint_workers,
                bind_waypoint: bind,
                access_log: Some(AccessLog::disabled()),
                echo_backends: true,
                ..MeshOptions::default()
            },
        )
    };
    let with = mesh(60, true, Some(waypoint_rt)).await;
    let without = mesh(61, false, None).await;
    let (_, wp_threads) = threads_cpu(WAYPOINT_THREAD);
    let expected = if workers == 0 { 2 } else { workers + 1 };
    assert!(
        wp_threads >= expected,
        "found {wp_threads} waypoint threads ({WAYPOINT_THREAD:?}, {WAYPOINT_THREAD:?}-N), \
         expected {expected}"
    );
    let meshes = [&with, &without];
    let sent_before = [with.backends.requests(), without.backends.requests()];

    println!(
        "waypoint L7 path (127.60.x.x) vs no waypoint (127.61.x.x): POST /echo, 1 KiB request \
         body answered with the same 1 KiB; service reviews (3 endpoints)"
    );
    println!(
        "waypoint: {}; client, ztunnels and backends: 2 workers; {} CPUs; access log off; \
         setup {:.1} s",
        if workers == 0 {
            format!("one work-stealing runtime of 2 threads named {WAYPOINT_THREAD:?}")
        } else {
            format!(
                "{workers} worker thread(s) {WAYPOINT_THREAD:?}-N with a runtime each, control \
                 runtime of 1 thread {WAYPOINT_THREAD:?}"
            )
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "{:<9} {:<9} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>13} {:>8} {:>8} {:>11} {:>8}",
        "path",
        "protocol",
        "load",
        "requests",
        "req/s",
        "p50 µs",
        "p99 µs",
        "wp CPU",
        "wp usr/sys",
        "wp sw/r",
        "proc CPU",
        "wp writes/r",
        "be conns"
    );
    println!("{}", "-".repeat(130));
    let mut rows = Vec::new();
    for proto in p.only.clone() {
        for shape in ROWS {
            let r = row(meshes, proto, shape, &p).await;
            for (i, m) in r.paths.iter().enumerate() {
                let per = |x: u64| x as f64 / m.requests.max(1) as f64;
                println!(
                    "{:<9} {:<9} {:>9} {:>8} {:>7.0} {:>8.1} {:>8.1} {:>8.1} {:>13} {:>8.2} {:>8.1} {:>11} {:>8}",
                    if i == 0 { "waypoint" } else { "baseline" },
                    proto.name(),
                    r.load(),
                    m.requests,
                    m.rps(),
                    m.q_us(0.5),
                    m.q_us(0.99),
                    m.per_req_us(m.waypoint.cpu),
                    format!(
                        "{:.0}/{:.0}",
                        m.per_req_us(m.waypoint.user),
                        m.per_req_us(m.waypoint.system)
                    ),
                    per(m.waypoint.switches),
                    m.per_req_us(m.process_cpu),
                    format!(
                        "{:.1}/{:.0}B",
                        per(m.waypoint.writes),
                        per(m.waypoint.written)
                    ),
                    m.backend_conns,
                );
            }
            rows.push(r);
        }
    }
    println!();
    println!(
        "load: requests in flight (HTTP/1.1: one connection each; HTTP/2: streams on one \
         connection), as fast as they are answered, or paced at a total rate (n@rate/s, Istio's \
         published method: 1000 requests/s over 16 connections)."
    );
    println!(
        "wp CPU: CPU time (µs) of the waypoint's threads ({WAYPOINT_THREAD:?} and {WAYPOINT_THREAD:?}-N; schedstat) per request; \
         on the baseline rows it is the idle waypoint of the measured mesh (expected ≈ 0). wp \
         usr/sys: the same split into user and kernel time (stat, 10 ms ticks). wp sw/r: the \
         waypoint threads' context switches per request (a worker that runs out of work parks \
         in epoll; each wake-up costs kernel time)."
    );
    println!(
        "proc CPU: the whole process (client, 2 ztunnels, backends, waypoint) per request, µs. \
         wp writes/r: the waypoint's write(2)/writev(2) calls and bytes written (TLS included) \
         per request. be conns: connections the backends accepted during the row (warm-up \
         included)."
    );

    println!();
    println!(
        "{:<9} {:>9} {:>12} {:>12} {:>12} {:>14} {:>14}",
        "protocol",
        "load",
        "req/s wp/base",
        "p50 wp/base",
        "p99 wp/base",
        "added p50 µs",
        "added proc CPU"
    );
    println!("{}", "-".repeat(94));
    for r in &rows {
        let [w, b] = &r.paths;
        println!(
            "{:<9} {:>9} {:>12.1}% {:>11.2}x {:>11.2}x {:>14.1} {:>11.1} µs",
            r.proto.name(),
            r.load(),
            100.0 * w.rps() / b.rps().max(1e-9),
            w.q_us(0.5) / b.q_us(0.5).max(1e-9),
            w.q_us(0.99) / b.q_us(0.99).max(1e-9),
            w.q_us(0.5) - b.q_us(0.5),
            w.per_req_us(w.process_cpu) - b.per_req_us(b.process_cpu),
        );
    }

    // Every request of the waypoint path went through the waypoint; none of the baseline.
    let sent: [u64; 2] = [0, 1].map(|i| {
        rows.iter().map(|r| r.paths[i].requests).sum::<u64>()
            + rows
                .iter()
                .map(|r| p.warmup * r.concurrency as u64)
                .sum::<u64>()
    });
    let received = [
        with.backends.requests() - sent_before[0],
        without.backends.requests() - sent_before[1],
    ];
    assert_eq!(
        received, sent,
        "the backends received exactly the requests sent"
    );
    let counted = [waypoint_requests(&with), waypoint_requests(&without)];
    assert_eq!(
        counted,
        [sent[0] as f64, 0.0],
        "the waypoint of 127.60 must count every request of its path, that of 127.61 none"
    );
    println!();
    println!(
        "verified: the waypoint counted {} requests ({REQUESTS}) = all sent on its path; the \
         baseline mesh's waypoint 0 of {}; backends received exactly the requests sent. Backend \
         connections over the whole run: waypoint path {}, baseline {}.",
        counted[0],
        sent[1],
        with.backends.accepted(),
        without.backends.accepted()
    );

    println!();
    println!("goal (issue)                                  result");
    for r in &rows {
        let w = &r.paths[0];
        let us = w.per_req_us(w.waypoint.cpu);
        println!(
            "  waypoint CPU <= {GOAL_CPU_US:.0} µs/req, {:<8} load {:>9} {us:>8.1} µs  {}",
            r.proto.name(),
            r.load(),
            if us <= GOAL_CPU_US { "met" } else { "NOT met" }
        );
    }
    println!(
        "  (Istio publishes ~250 µs per request for its Envoy waypoint: 0.25 vCPU per 1000 rps)"
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
