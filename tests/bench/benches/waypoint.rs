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
//! off the path). A third path measures the machine's floor for any proxy hop:
//!
//! ```text
//!   relay (127.62.0.1):    client ───TCP───→ relay ───TCP───→ backend reviews-v1 (127.61.0.11)
//! ```
//!
//! a plain TCP relay on one thread of its own (`relay`, a current-thread runtime like each
//! waypoint worker) that copies bytes both ways (`tokio::io::copy_bidirectional`) and does
//! nothing else: no TLS, no HTTP/2, no parsing. Its CPU per request is what one user-space hop
//! costs on this machine at the same load (the socket calls, the wake-ups, the scheduler),
//! before any proxy work; the goals table prints it beside the waypoint's. Every request is a `POST /echo` with a 1 KiB body to
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
//! disabled (Istio's default); its metrics are on. The process logs as the binaries do: their
//! subscriber at their default level, `info`, to standard error, except the ztunnels' per-connection
//! access lines (target `access`), which would interleave with the table; `RUST_LOG` overrides
//! the filter.
//!
//! After the run the benchmark fails unless the waypoint counted every request of the
//! waypoint path and none of the baseline, and the backends received exactly the requests
//! sent. Run with `cargo bench -p ambient-bench --bench waypoint` (add `-- --quick` for a
//! shorter run; `-- --waypoint-workers N` for the waypoint's worker threads, default 2 as in
//! Istio's published figures; `0` serves the connections on a two-thread work-stealing runtime
//! named `waypoint` instead). For profiling: `--only h1|h2` runs one protocol's rows, `--load
//! 1|16|paced` one load's, `--count N` caps the requests per row and path, `--warmup N` sets the
//! warm-up requests per connection set, and `--seconds S` the time per row and path (all still
//! bounded). `--pin` runs the waypoint's threads on a CPU of their own and every other thread
//! on the remaining CPUs, as when the waypoint has a node to itself.
//!
//! The benchmark lives in a package of its own (`tests/bench`) that enables no dependency
//! feature the binaries do not, so its build of ztunnel, the waypoint and their libraries is the
//! binaries' code, symbol for symbol. `cargo bench --profile dist` measures the `dist` build;
//! `scripts/dist bench` measures the shipped build, optimised with the profile of a training run
//! of this benchmark (see that script).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambient_e2e::waypoint::{APP_PORT, BACKENDS, Backends, MeshOptions, Net, WaypointMesh, series};
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
/// The plain relay's thread.
const RELAY_THREAD: &str = "relay";
/// The plain relay's listening address.
const RELAY_ADDR: &str = "127.62.0.1:0";
/// The paths of each row, in the order they run in a slice.
const PATHS: [&str; 3] = ["waypoint", "baseline", "relay"];

struct Params {
    /// Requests per row and path (upper bound).
    count: u64,
    /// Time per row and path (upper bound).
    time: Duration,
    /// Unrecorded requests per connection set before a row.
    warmup: u64,
    /// The protocols whose rows run.
    only: Vec<Proto>,
    /// The rows of [`ROWS`] that run.
    loads: Vec<(usize, Option<u32>)>,
}

fn main() {
    // The binaries' log subscriber and default level, so that every span and event costs
    // what it costs in the binaries (with no subscriber at all, `tracing` hands the spans of
    // hyper and h2 to the `log` crate instead). The ztunnels' access lines (one per connection,
    // not per request) are left out so that the table reads cleanly. `RUST_LOG` overrides this.
    let _log_level =
        ztunnel::admin::logging::install("info,access=off", ztunnel::admin::LogStream::Stderr)
            .expect("the bench's log subscriber");
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let pin = args.iter().any(|a| a == "--pin");
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
            loads: Vec::new(),
        }
    } else {
        Params {
            count: 1_000_000,
            time: Duration::from_millis(5_000),
            warmup: 1_000,
            only: Vec::new(),
            loads: Vec::new(),
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
    p.loads = match flag("--load").as_deref() {
        Some("1") => vec![ROWS[0]],
        Some("16") => vec![ROWS[1]],
        Some("paced") => vec![ROWS[2]],
        _ => ROWS.to_vec(),
    };
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
    rt.block_on(run(p, waypoint_rt.handle().clone(), workers, pin));
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

/// Where a path's client connections go.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// To `reviews` through the mesh's client ztunnel (SOCKS5).
    Mesh(&'a WaypointMesh),
    /// Straight to the plain relay.
    Relay(SocketAddr),
}

/// `concurrency` senders to `reviews` along `via`: HTTP/1.1 one connection each, HTTP/2 one
/// shared connection.
async fn open(via: Via<'_>, proto: Proto, concurrency: usize) -> Vec<Sender> {
    let connect = || async {
        let s = match via {
            Via::Mesh(mesh) => mesh.connect(mesh.net.reviews()).await,
            Via::Relay(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to the relay"),
        };
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

/// Starts the plain relay on a thread of its own named [`RELAY_THREAD`] and returns its
/// address: every connection it accepts is copied both ways to `to`, until either side
/// closes. The thread lives as long as the process.
fn spawn_relay(to: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind(RELAY_ADDR).expect("bind the relay");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::Builder::new()
        .name(RELAY_THREAD.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let mut outbound = tokio::net::TcpStream::connect(to).await?;
                        inbound.set_nodelay(true)?;
                        outbound.set_nodelay(true)?;
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                    });
                }
            });
        })
        .expect("the relay's thread");
    addr
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

/// One thread of this process.
struct Thread {
    /// `/proc/self/task/<tid>`.
    path: std::path::PathBuf,
    tid: i32,
    /// Its name, as `comm` gives it (with the trailing newline).
    comm: String,
}

/// The threads of this process, from `/proc/self/task`.
fn threads() -> std::io::Result<Vec<Thread>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        threads.push(Thread { path, tid, comm });
    }
    Ok(threads)
}

/// The `/proc/self/task/<tid>` directories of the threads named `name` or `name-<index>` (none
/// when `/proc` cannot be read).
fn threads_named(name: &str) -> impl Iterator<Item = std::path::PathBuf> {
    threads()
        .unwrap_or_default()
        .into_iter()
        .filter(move |t| named(&t.comm, name))
        .map(|t| t.path)
}

/// Pins the threads named `name` or `name-<index>` to the last CPU this process may use and
/// every other thread of the process to the rest, so that nothing else runs on the waypoint's
/// core (`--pin`). Threads started later inherit their creator's CPUs. Returns the waypoint's
/// CPU.
fn pin_threads(name: &str) -> Result<usize, String> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(|e| e.to_string())?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let [rest @ .., last] = cpus.as_slice() else {
        return Err("no CPU allowed".into());
    };
    if rest.is_empty() {
        return Err("--pin needs at least two CPUs".into());
    }
    let mut own = CpuSet::new();
    own.set(*last).map_err(|e| e.to_string())?;
    let mut others = CpuSet::new();
    for &c in rest {
        others.set(c).map_err(|e| e.to_string())?;
    }
    let mut pinned = 0;
    for thread in threads().map_err(|e| e.to_string())? {
        let waypoint = named(&thread.comm, name);
        let set = if waypoint { &own } else { &others };
        let tid = thread.tid;
        sched_setaffinity(Pid::from_raw(tid), set).map_err(|e| format!("thread {tid}: {e}"))?;
        pinned += usize::from(waypoint);
    }
    if pinned == 0 {
        return Err(format!("no thread named {name:?}"));
    }
    Ok(*last)
}

/// Usage of the threads named `name` or `name-<index>`.
fn threads_usage(name: &str) -> ThreadsUsage {
    let mut usage = ThreadsUsage::default();
    for path in threads_named(name) {
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
    for path in threads_named(name) {
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
    /// The threads of the path's proxy: the waypoint's on the waypoint and baseline paths (on
    /// the baseline it is off the path), the relay's on the relay path.
    proxy: ThreadsUsage,
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
    /// In the order of [`PATHS`].
    paths: [Measured; 3],
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
/// on each path of [`PATHS`] (`paths`: where its connections go, and the backends that answer
/// them), alternating in slices.
async fn row(
    paths: [(Via<'_>, &Backends); 3],
    proto: Proto,
    (concurrency, rate): (usize, Option<u32>),
    p: &Params,
) -> Row {
    let pace = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / f64::from(r.max(1))));
    let mut measured = [
        Measured::default(),
        Measured::default(),
        Measured::default(),
    ];
    let mut senders = Vec::new();
    for (i, (via, backends)) in paths.iter().enumerate() {
        let before = backends.accepted();
        let s = open(*via, proto, concurrency).await;
        let warmup = p.warmup * concurrency as u64;
        let (s, n, _) = load(s, warmup, p.time.max(Duration::from_secs(10)), false, None).await;
        assert_eq!(n, warmup, "warm-up finished in time");
        senders.push(Some(s));
        measured[i].backend_conns = backends.accepted() - before;
    }
    for _ in 0..SLICES {
        for (i, slot) in senders.iter_mut().enumerate() {
            let m = &mut measured[i];
            let backends = paths[i].1;
            let threads = if matches!(paths[i].0, Via::Relay(_)) {
                RELAY_THREAD
            } else {
                WAYPOINT_THREAD
            };
            let accepted = backends.accepted();
            let (usage0, proc0) = (threads_usage(threads), ambient_e2e::process_cpu_time());
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
            m.proxy.add(threads_usage(threads).since(usage0));
            m.process_cpu += ambient_e2e::process_cpu_time().saturating_sub(proc0);
            m.backend_conns += backends.accepted() - accepted;
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
        paths: measured,
    }
}

async fn run(p: Params, waypoint_rt: tokio::runtime::Handle, workers: usize, pin: bool) {
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
    // The relay forwards to the baseline mesh's reviews-v1: its requests are counted there.
    let reviews_v1 = BACKENDS
        .iter()
        .find(|(name, ..)| *name == "reviews-v1")
        .map(|(.., host)| *host)
        .expect("the reviews-v1 backend");
    let relay = spawn_relay(SocketAddr::new(
        std::net::IpAddr::V4(without.net.workload(reviews_v1)),
        APP_PORT,
    ));
    let pinned = if pin {
        Some(pin_threads(WAYPOINT_THREAD).expect("pinning the threads (--pin)"))
    } else {
        None
    };
    let paths = [
        (Via::Mesh(&with), &with.backends),
        (Via::Mesh(&without), &without.backends),
        (Via::Relay(relay), &without.backends),
    ];
    let sent_before = [with.backends.requests(), without.backends.requests()];

    println!(
        "waypoint L7 path (127.60.x.x) vs no waypoint (127.61.x.x) vs a plain TCP relay \
         ({relay} → 127.61 reviews-v1): POST /echo, 1 KiB request body answered with the same \
         1 KiB; service reviews (3 endpoints)"
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
    if let Some(cpu) = pinned {
        println!(
            "pinned (--pin): the waypoint's threads on CPU {cpu}, every other thread on the \
             other CPUs"
        );
    }
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
        for &shape in &p.loads {
            let r = row(paths, proto, shape, &p).await;
            for (i, m) in r.paths.iter().enumerate() {
                let per = |x: u64| x as f64 / m.requests.max(1) as f64;
                println!(
                    "{:<9} {:<9} {:>9} {:>8} {:>7.0} {:>8.1} {:>8.1} {:>8.1} {:>13} {:>8.2} {:>8.1} {:>11} {:>8}",
                    PATHS[i],
                    proto.name(),
                    r.load(),
                    m.requests,
                    m.rps(),
                    m.q_us(0.5),
                    m.q_us(0.99),
                    m.per_req_us(m.proxy.cpu),
                    format!(
                        "{:.0}/{:.0}",
                        m.per_req_us(m.proxy.user),
                        m.per_req_us(m.proxy.system)
                    ),
                    per(m.proxy.switches),
                    m.per_req_us(m.process_cpu),
                    // The relay sends with send(2), which `syscw` does not count.
                    if PATHS[i] == "relay" {
                        "-".to_string()
                    } else {
                        format!("{:.1}/{:.0}B", per(m.proxy.writes), per(m.proxy.written))
                    },
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
         on the baseline rows it is the idle waypoint of the measured mesh (expected ≈ 0), on \
         the relay rows the relay's thread ({RELAY_THREAD:?}). wp usr/sys: the same split into \
         user and kernel time (stat, 10 ms ticks). wp sw/r: those threads' context switches \
         per request (a worker that runs out of work parks in epoll; each wake-up costs kernel \
         time). The columns that follow are of the same threads."
    );
    println!(
        "proc CPU: the whole process (client, 2 ztunnels, backends, waypoint) per request, µs. \
         wp writes/r: the waypoint's write(2)/writev(2) calls and bytes written (TLS included) \
         per request (not for the relay, which writes with send(2), uncounted there). be conns: connections the backends accepted during the row (warm-up \
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
        let [w, b, _] = &r.paths;
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

    // Every request of the waypoint path went through the waypoint; none of the baseline's
    // or the relay's. The baseline mesh's backends answered both of those paths.
    let sent_on = |i: usize| {
        rows.iter().map(|r| r.paths[i].requests).sum::<u64>()
            + rows
                .iter()
                .map(|r| p.warmup * r.concurrency as u64)
                .sum::<u64>()
    };
    let sent = [sent_on(0), sent_on(1) + sent_on(2)];
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
         baseline mesh's waypoint 0 of {} (baseline and relay paths); backends received exactly \
         the requests sent. Backend connections over the whole run: waypoint path {}, baseline \
         and relay {}.",
        counted[0],
        sent[1],
        with.backends.accepted(),
        without.backends.accepted()
    );

    println!();
    println!(
        "goal (issue)                                  result        plain relay here  waypoint/relay  \
         goal-relay  waypoint-relay"
    );
    for r in &rows {
        let [w, _, relay] = &r.paths;
        let us = w.per_req_us(w.proxy.cpu);
        let floor = relay.per_req_us(relay.proxy.cpu);
        println!(
            "  waypoint CPU <= {GOAL_CPU_US:.0} µs/req, {:<8} load {:>9} {us:>8.1} µs  {:<7} {floor:>8.1} µs {:>12.1}x \
             {:>8.1} µs {:>11.1} µs",
            r.proto.name(),
            r.load(),
            if us <= GOAL_CPU_US { "met" } else { "NOT met" },
            us / floor.max(1e-9),
            GOAL_CPU_US - floor,
            us - floor,
        );
    }
    println!(
        "  (plain relay: the CPU per request of a thread that only copies the same bytes between \
         two TCP sockets, at the same load: what one user-space hop costs on this machine)"
    );
    println!(
        "  (goal-relay: what the goal leaves for the proxy's own work above that hop here; \
         waypoint-relay: what the waypoint's work costs above it. The relay's time is almost all \
         kernel time: the socket calls and the wake-ups; see its usr/sys above)"
    );
    println!(
        "  (Istio publishes ~250 µs per request for its Envoy waypoint: 0.25 vCPU per 1000 rps)"
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
