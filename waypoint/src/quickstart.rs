//! The README's first command, `waypoint quickstart`: the local L4 mesh of
//! [`ztunnel::quickstart`] plus a waypoint in front of a demo service with three versions, and a
//! demo client that shows the waypoint's L7 routing at work.
//!
//! What runs, all on loopback addresses, from configuration embedded in the binary (so the
//! command works from any directory) and written to the state directory at start:
//!
//! - the mesh state `<state dir>/mesh.yaml`: `examples/localhost.yaml` (sleep, httpbin, legacy)
//!   with `examples/localhost-waypoint.yaml` appended (the waypoint's workload on 127.0.0.9 and
//!   `reviews` v1/v2/v3 on 127.0.0.11–13, the service `reviews` bound to the waypoint);
//! - one ztunnel per node, their demo applications (every workload port answers with the
//!   workload's name, so `reviews-v2` says it is v2) and the L4 demo client, exactly as
//!   [`ztunnel::quickstart::start`] runs them;
//! - the waypoint ([`crate::run::start`]) as `default/waypoint` on 127.0.0.9: HBONE 15008, admin
//!   15000, metrics 15020, readiness 15021 (the ztunnels use the same port numbers on their
//!   nodes' addresses 127.0.0.1 and 127.0.0.2), with the L7 configuration directory
//!   `<state dir>/l7/` holding `examples/waypoint/reviews-routing.yaml`: a DestinationRule with
//!   subsets v1..v3 and a VirtualService sending `end-user: jason` to v2 and splitting the rest
//!   80/20 between v1 and v3;
//! - the L7 demo client: from `sleep`'s SOCKS5 listener, HTTP/1.1 requests to
//!   `reviews.default.svc.cluster.local:9080` (sleep's ztunnel → HBONE → waypoint → HBONE →
//!   node-b's ztunnel → reviews-vN), some with `end-user: jason`, the rest without. Its
//!   [`Report`] counts the answers per version and reads the waypoint's access log and its
//!   `istio_requests_total{reporter="waypoint"}` series.
//!
//! The state directory also keeps the local CA's root, shared by the ztunnels and the waypoint.
//! Both files are hot-reloaded while the mesh runs (and overwritten at the next start).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::admin::LogLevel;
use ztunnel::state::MeshState;

use crate::config::ConfigSet;
use crate::run::{CaSource, RunConfig, RunError, Running, StateSource};
use crate::telemetry::{AccessLog, AccessLogFormat};

/// The waypoint's part of the mesh state, appended to [`ztunnel::quickstart::DEFAULT_CONFIG`].
pub const WAYPOINT_MESH: &str = include_str!("../../examples/localhost-waypoint.yaml");
/// The waypoint's L7 configuration: DestinationRule and VirtualService for `reviews`.
pub const REVIEWS_ROUTING: &str = include_str!("../../examples/waypoint/reviews-routing.yaml");

/// The waypoint's address (its workload in [`WAYPOINT_MESH`]).
pub const WAYPOINT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
/// The waypoint's namespace, name and service account.
pub const WAYPOINT: (&str, &str, &str) = ("default", "waypoint", "waypoint");
/// The demo service behind the waypoint.
pub const SERVICE: &str = "reviews.default.svc.cluster.local";
/// Its port.
pub const SERVICE_PORT: u16 = 9080;
/// The header the VirtualService matches, and the version it routes it to.
pub const HEADER_ROUTE: (&str, &str, &str) = ("end-user", "jason", "v2");
/// The weighted split of every other request, as in [`REVIEWS_ROUTING`].
pub const SPLIT: [(&str, u32); 2] = [("v1", 80), ("v3", 20)];
/// The SOCKS5 port of every workload.
pub const SOCKS5_PORT: u16 = 15080;

/// Lines of the waypoint's access log kept for the report.
const KEPT_ACCESS_LINES: usize = 64;
/// How long one demo request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the report waits for the waypoint's metrics to count the last requests.
const METRICS_SETTLE: Duration = Duration::from_secs(3);

/// Quickstart settings.
#[derive(Clone)]
pub struct Options {
    /// Where the mesh state, the L7 configuration and the local CA's root are kept.
    pub state_dir: PathBuf,
    /// Runtime log-level control for the admin servers' `/logging`. The `access` target (the
    /// ztunnels' per-connection access log) is turned off while the L7 demo client runs, so its
    /// hundreds of connections do not flood the output, and restored afterwards.
    pub log_level: Arc<dyn LogLevel>,
    /// Requests the L7 demo client sends with `end-user: jason`.
    pub header_requests: usize,
    /// Requests it sends without.
    pub split_requests: usize,
}

impl Options {
    /// The defaults: 10 requests with the header, 200 without.
    pub fn new(state_dir: impl Into<PathBuf>, log_level: Arc<dyn LogLevel>) -> Self {
        Self {
            state_dir: state_dir.into(),
            log_level,
            header_requests: 10,
            split_requests: 200,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("state_dir", &self.state_dir)
            .field("header_requests", &self.header_requests)
            .field("split_requests", &self.split_requests)
            .finish_non_exhaustive()
    }
}

/// Why the quickstart could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// A file of the state directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded configuration is broken (a build problem, not a user error).
    #[error("embedded quickstart configuration: {0}")]
    Embedded(String),
    /// The waypoint did not start.
    #[error("waypoint: {0}")]
    Waypoint(#[from] RunError),
    /// The ztunnels, applications or L4 demo client did not start.
    #[error(transparent)]
    Mesh(#[from] ztunnel::quickstart::QuickstartError),
}

/// What the L7 demo client saw and what the waypoint reported about it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Requests sent with `end-user: jason`.
    pub header_sent: usize,
    /// Their answers, by the version of the reviews workload that answered.
    pub header_answers: BTreeMap<String, usize>,
    /// Requests sent without the header.
    pub split_sent: usize,
    /// Their answers, by version.
    pub split_answers: BTreeMap<String, usize>,
    /// Requests that got no answer from a reviews workload (status or error), with the reason.
    pub failures: Vec<String>,
    /// Requests of the L4 demo client that went through the waypoint, by version.
    pub l4_answers: BTreeMap<String, usize>,
    /// One line of the waypoint's access log (Istio's TEXT format), for the first request.
    pub access_log_line: Option<String>,
    /// The waypoint's `istio_requests_total{reporter="waypoint"}`, summed per
    /// `destination_version`.
    pub waypoint_requests: BTreeMap<String, u64>,
}

impl Report {
    /// The share (0..=1) of the requests without the header that `version` answered.
    pub fn split_share(&self, version: &str) -> f64 {
        let answered: usize = self.split_answers.values().sum();
        if answered == 0 {
            return 0.0;
        }
        self.split_answers.get(version).copied().unwrap_or(0) as f64 / answered as f64
    }

    /// Whether every request with the header was answered by the routed version.
    pub fn header_all_routed(&self) -> bool {
        self.header_sent > 0
            && self.header_answers.get(HEADER_ROUTE.2).copied() == Some(self.header_sent)
    }

    /// Every request the demo clients got answered through the waypoint, by version: what
    /// the waypoint's metrics should count.
    pub fn answered_through_waypoint(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for map in [&self.header_answers, &self.split_answers, &self.l4_answers] {
            for (version, n) in map {
                *out.entry(version.clone()).or_default() += *n as u64;
            }
        }
        out
    }
}

/// The waypoint's access log: kept in memory for the report (a few lines) and, once
/// [`AccessLogTap::echo_to_stdout`] is on, printed as well.
#[derive(Debug, Clone, Default)]
pub struct AccessLogTap {
    inner: Arc<TapInner>,
}

#[derive(Debug, Default)]
struct TapInner {
    lines: Mutex<(Vec<String>, Vec<u8>)>,
    echo: AtomicBool,
}

impl AccessLogTap {
    /// Prints every further line to standard output (for the user's own traffic).
    pub fn echo_to_stdout(&self, on: bool) {
        self.inner.echo.store(on, Ordering::Relaxed);
    }

    /// The lines kept so far (at most a few dozen).
    pub fn lines(&self) -> Vec<String> {
        self.lock().0.clone()
    }

    fn clear(&self) {
        self.lock().0.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<String>, Vec<u8>)> {
        self.inner
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for AccessLogTap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.inner.echo.load(Ordering::Relaxed) {
            std::io::stdout().write_all(buf)?;
        }
        let mut guard = self.lock();
        let (lines, partial) = &mut *guard;
        partial.extend_from_slice(buf);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            if lines.len() < KEPT_ACCESS_LINES {
                lines.push(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.inner.echo.load(Ordering::Relaxed) {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// A running quickstart: the L4 mesh, the waypoint and what the demo clients saw.
#[derive(Debug)]
pub struct Quickstart {
    /// The ztunnels, applications and the L4 demo client's results.
    pub mesh: ztunnel::quickstart::Quickstart,
    /// The waypoint.
    pub waypoint: Running,
    /// The waypoint's access log.
    pub access_log: AccessLogTap,
    /// The mesh state file (hot-reloaded by the ztunnels and the waypoint).
    pub mesh_file: PathBuf,
    /// The waypoint's L7 configuration file (its directory is hot-reloaded).
    pub routing_file: PathBuf,
    /// The local CA's root certificate.
    pub ca_root: PathBuf,
    /// The L7 demo client's report.
    pub report: Report,
}

/// The mesh state of the quickstart: `examples/localhost.yaml` with
/// `examples/localhost-waypoint.yaml`'s workloads, services and policies appended.
pub fn mesh_yaml() -> Result<String, QuickstartError> {
    use serde_yaml_ng::{Mapping, Value};
    let parse = |name: &str, yaml: &str| match serde_yaml_ng::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(QuickstartError::Embedded(format!(
            "{name} is not a mapping"
        ))),
        Err(e) => Err(QuickstartError::Embedded(format!("{name}: {e}"))),
    };
    let mut merged: Mapping = parse(
        "examples/localhost.yaml",
        ztunnel::quickstart::DEFAULT_CONFIG,
    )?;
    for (key, value) in parse("examples/localhost-waypoint.yaml", WAYPOINT_MESH)? {
        match (merged.get_mut(&key), value) {
            (Some(Value::Sequence(base)), Value::Sequence(more)) => base.extend(more),
            (None, value) => {
                merged.insert(key, value);
            }
            (Some(_), _) => {
                return Err(QuickstartError::Embedded(format!(
                    "examples/localhost-waypoint.yaml: {key:?} cannot be merged"
                )));
            }
        }
    }
    let body = serde_yaml_ng::to_string(&Value::Mapping(merged))
        .map_err(|e| QuickstartError::Embedded(e.to_string()))?;
    Ok(format!(
        "# Written by `waypoint quickstart` at every start: examples/localhost.yaml followed by\n\
         # examples/localhost-waypoint.yaml (Istio ztunnel's LOCAL_XDS_PATH schema). The ztunnels and\n\
         # the waypoint hot-reload it; edits last until the next start.\n{body}"
    ))
}

/// Writes the configuration, starts the waypoint and the mesh, runs both demo clients and
/// reports. The mesh keeps running until the returned value is shut down or dropped.
pub async fn start(opts: &Options) -> Result<Quickstart, QuickstartError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuickstartError::Write { path, source }
    };
    let l7_dir = opts.state_dir.join("l7");
    std::fs::create_dir_all(&l7_dir).map_err(write_err(&l7_dir))?;
    let mesh_file = opts.state_dir.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh_yaml()?).map_err(write_err(&mesh_file))?;
    let routing_file = l7_dir.join("reviews-routing.yaml");
    let errors = ConfigSet::default().parse_file(&routing_file, REVIEWS_ROUTING);
    if let Some(e) = errors.first() {
        return Err(QuickstartError::Embedded(e.to_string()));
    }
    std::fs::write(&routing_file, REVIEWS_ROUTING).map_err(write_err(&routing_file))?;

    // The waypoint first, so that the L4 demo client's request to `reviews` finds it.
    let tap = AccessLogTap::default();
    let (namespace, name, service_account) = WAYPOINT;
    let at = |port| SocketAddr::new(WAYPOINT_IP, port);
    let config = RunConfig {
        state: StateSource::File(mesh_file.clone()),
        config_dir: Some(l7_dir),
        mesh_config: None,
        kubernetes: None,
        namespace: namespace.into(),
        name: name.into(),
        service_account: service_account.into(),
        trust_domain: "cluster.local".into(),
        domain_suffix: "cluster.local".into(),
        instance_ips: vec![WAYPOINT_IP],
        ca: CaSource::Local(opts.state_dir.clone()),
        hbone_addr: at(crate::ports::HBONE),
        admin_addr: at(crate::ports::ADMIN),
        metrics_addr: at(crate::ports::METRICS),
        readiness_addr: at(crate::ports::READINESS),
        drain_deadline: Duration::from_secs(1),
        root_namespace: crate::authn::policy::DEFAULT_ROOT_NAMESPACE.into(),
        jwks: crate::authn::JwksSettings::default(),
        egress: crate::egress::EgressSettings::default(),
        downstream: crate::stages::inbound_vip::limits::DownstreamLimits::default(),
        tracing: crate::telemetry::TracingSettings::default(),
        multiple_custom_authz_providers: false,
        workers: crate::app::DEFAULT_WORKERS,
    };
    let access_log = AccessLog::writer(AccessLogFormat::Text, tap.clone());
    let waypoint = crate::run::start(config, Some(opts.log_level.clone()), access_log).await?;

    let mesh_opts = ztunnel::quickstart::Options {
        config: Some(mesh_file.clone()),
        state_dir: opts.state_dir.clone(),
        socks5_port: SOCKS5_PORT,
        log_level: opts.log_level.clone(),
    };
    let mesh = match ztunnel::quickstart::start(&mesh_opts).await {
        Ok(mesh) => mesh,
        Err(e) => {
            waypoint.shutdown().await;
            return Err(e.into());
        }
    };

    let state = mesh.state.current();
    let mut report = Report {
        l4_answers: l4_through_waypoint(&state, &mesh.trials),
        ..Report::default()
    };
    tap.clear();
    let saved_level = opts.log_level.current();
    // Best effort: a fixed log level simply stays as it is.
    let _ = opts.log_level.set(&format!("{saved_level},access=off"));
    l7_demo(opts, mesh.client_socks5, &state, &mut report).await;
    let _ = opts.log_level.set(&saved_level);
    report.access_log_line = tap.lines().into_iter().next();

    // The waypoint counts a request when its response ends, just after the client has it.
    let expected = report.answered_through_waypoint();
    let deadline = tokio::time::Instant::now() + METRICS_SETTLE;
    loop {
        let metrics = http_get(waypoint.metrics, "/stats/prometheus")
            .await
            .unwrap_or_default();
        report.waypoint_requests = requests_by_version(&metrics);
        if report.waypoint_requests == expected || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Quickstart {
        mesh,
        waypoint,
        access_log: tap,
        mesh_file,
        routing_file,
        ca_root: opts.state_dir.join("root-cert.pem"),
        report,
    })
}

impl Quickstart {
    /// Drains the waypoint, then stops the ztunnels and applications.
    pub async fn shutdown(self) {
        let Self { mesh, waypoint, .. } = self;
        waypoint.shutdown().await;
        drop(mesh);
    }

    /// What the quickstart prints: where everything runs, the L4 demo client's results and
    /// the L7 report.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let q = &self.mesh;
        let _ = writeln!(out, "local CA root: {}", self.ca_root.display());
        let _ = writeln!(
            out,
            "mesh state:    {} (examples/localhost.yaml + examples/localhost-waypoint.yaml, hot-reloaded)",
            self.mesh_file.display()
        );
        let _ = writeln!(
            out,
            "L7 config:     {} (hot-reloaded)",
            self.routing_file.display()
        );
        for (node, proxies) in &q.nodes {
            for p in proxies {
                let socks = p
                    .socks5
                    .map(|a| format!(", socks5 {a}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "ztunnel {node}: workload {} — hbone {}{socks}",
                    p.uid, p.inbound
                );
            }
        }
        for (node, e) in &q.endpoints {
            let _ = writeln!(
                out,
                "ztunnel {node}: metrics http://{}/stats/prometheus, config http://{}/config_dump, ready http://{}/healthz/ready",
                e.metrics, e.admin, e.readiness
            );
        }
        let w = &self.waypoint;
        let (namespace, name, sa) = WAYPOINT;
        let _ = writeln!(
            out,
            "waypoint {namespace}/{name} (spiffe://cluster.local/ns/{namespace}/sa/{sa}): hbone {}, \
             metrics http://{}/stats/prometheus, config http://{}/config_dump, ready http://{}/healthz/ready",
            w.hbone, w.metrics, w.admin, w.readiness
        );
        for (name, addr) in &q.apps {
            let _ = writeln!(out, "application {name} on {addr}");
        }

        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "demo client {} via {}:",
            q.client_identity, q.client_socks5
        );
        for t in &q.trials {
            let via = if t.target.starts_with(SERVICE) {
                " (through the waypoint)"
            } else {
                ""
            };
            let _ = match (&t.answer, t.socks_reply) {
                (Some(answer), 0) => writeln!(out, "  {:<45} -> {answer}{via}", t.target),
                (_, 2) => writeln!(out, "  {:<45} -> refused: not allowed by policy", t.target),
                (_, code) => writeln!(out, "  {:<45} -> failed (socks5 reply {code})", t.target),
            };
        }

        let r = &self.report;
        let (header, value, routed) = HEADER_ROUTE;
        let counts = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                return "none".to_owned();
            }
            m.iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "L7 demo: http://{SERVICE}:{SERVICE_PORT}/ through the waypoint, routed by VirtualService {namespace}/reviews:"
        );
        let with = format!("requests with {header}: {value}");
        let _ = writeln!(
            out,
            "  {:>3} {with} -> {}  ({})",
            r.header_sent,
            counts(&r.header_answers),
            if r.header_all_routed() {
                format!("all on {routed}, as routed")
            } else {
                format!("expected all on {routed}")
            }
        );
        let answered: usize = r.split_answers.values().sum();
        let shares = SPLIT
            .iter()
            .map(|(v, w)| format!("{v} {:.1}% (configured {w}%)", 100.0 * r.split_share(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "  {:>3} {:<width$} -> {}",
            r.split_sent,
            "requests without",
            counts(&r.split_answers),
            width = with.len()
        );
        if answered > 0 {
            // Binomial standard deviation of a share p over n requests, in points.
            let p = f64::from(SPLIT[0].1) / 100.0;
            let two_sigma = 200.0 * (p * (1.0 - p) / answered as f64).sqrt();
            let _ = writeln!(
                out,
                "      observed split: {shares}; ±2σ over {answered} requests = ±{two_sigma:.1} points"
            );
        }
        if !r.failures.is_empty() {
            let _ = writeln!(
                out,
                "  {} requests failed, e.g. {}",
                r.failures.len(),
                r.failures[0]
            );
        }
        if let Some(line) = &r.access_log_line {
            let _ = writeln!(out, "  waypoint access log, first request:");
            let _ = writeln!(out, "    {line}");
        }
        let total: u64 = r.waypoint_requests.values().sum();
        let l4: usize = r.l4_answers.values().sum();
        let _ = writeln!(
            out,
            "  waypoint istio_requests_total{{reporter=\"waypoint\"}} by destination_version: {} (total {total}: the {} above{})",
            r.waypoint_requests
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.header_sent + r.split_sent,
            if l4 > 0 {
                format!(" + {l4} from the L4 demo client")
            } else {
                String::new()
            }
        );

        let _ = writeln!(out);
        let _ = writeln!(out, "try it yourself:");
        let _ = writeln!(
            out,
            "  curl --socks5-hostname {} http://httpbin.default.svc.cluster.local/",
            q.client_socks5
        );
        let _ = writeln!(
            out,
            "  curl --socks5-hostname {} -H '{header}: {value}' http://{SERVICE}:{SERVICE_PORT}/",
            q.client_socks5
        );
        let _ = writeln!(
            out,
            "  edit {} (e.g. the weights): the waypoint reloads it",
            self.routing_file.display()
        );
        out
    }
}

/// The L4 demo client's answers that came through the waypoint, by version.
fn l4_through_waypoint(
    state: &MeshState,
    trials: &[ztunnel::quickstart::Trial],
) -> BTreeMap<String, usize> {
    let bound: Vec<&str> = state
        .services()
        .filter(|s| s.waypoint.is_some())
        .map(|s| s.hostname.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for t in trials {
        let host = t
            .target
            .rsplit_once(':')
            .map_or(t.target.as_str(), |(h, _)| h);
        if !bound.contains(&host) {
            continue;
        }
        if let Some(version) = t.answer.as_deref().and_then(|a| version_of(state, a)) {
            *out.entry(version).or_default() += 1;
        }
    }
    out
}

/// The version (`canonicalRevision`) of the workload that wrote `answer` (the demo
/// applications answer `hello from <workload> at ...`).
fn version_of(state: &MeshState, answer: &str) -> Option<String> {
    let name = answer.strip_prefix("hello from ")?.split(' ').next()?;
    state
        .workloads()
        .find(|w| w.name == name)
        .map(|w| w.canonical_revision.clone())
}

/// Sends the L7 demo's requests and counts the answers.
async fn l7_demo(opts: &Options, socks5: SocketAddr, state: &MeshState, report: &mut Report) {
    let (header, value, _) = HEADER_ROUTE;
    let mut sender = None;
    let plan = std::iter::repeat_n(true, opts.header_requests)
        .chain(std::iter::repeat_n(false, opts.split_requests));
    for with_header in plan {
        if with_header {
            report.header_sent += 1;
        } else {
            report.split_sent += 1;
        }
        let path = if with_header {
            "/reviews/jason"
        } else {
            "/reviews"
        };
        let headers: &[(&str, &str)] = if with_header { &[(header, value)] } else { &[] };
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, request(&mut sender, socks5, path, headers))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
        match result.and_then(|body| {
            version_of(state, &body).ok_or_else(|| format!("unexpected answer {body:?}"))
        }) {
            Ok(version) => {
                let map = if with_header {
                    &mut report.header_answers
                } else {
                    &mut report.split_answers
                };
                *map.entry(version).or_default() += 1;
            }
            Err(e) => {
                // Start over on a new connection after a failure.
                sender = None;
                report.failures.push(e);
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One GET through the mesh on the kept-alive connection (opened on first use); the body.
async fn request(
    sender: &mut Option<Sender>,
    socks5: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut s = match sender.take() {
        Some(s) if !s.is_closed() => s,
        _ => {
            let stream = socks5_connect(socks5, SERVICE, SERVICE_PORT)
                .await
                .map_err(|e| format!("SOCKS5 connect: {e}"))?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            s
        }
    };
    let mut builder = http::Request::get(path)
        .header("host", SERVICE)
        .header("user-agent", "waypoint-quickstart");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    s.ready().await.map_err(|e| format!("connection: {e}"))?;
    let response = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    *sender = Some(s);
    let body = String::from_utf8_lossy(&body).trim_end().to_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// A TCP stream to `host:port` through a SOCKS5 proxy (no authentication, domain name).
async fn socks5_connect(proxy: SocketAddr, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).await?;
    let len = u8::try_from(host.len()).map_err(std::io::Error::other)?;
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply {}", reply[1])));
    }
    Ok(s)
}

/// `GET path` with `connection: close`; the whole response, head and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// `istio_requests_total{reporter="waypoint",...}` summed per `destination_version`.
pub fn requests_by_version(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("istio_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        if !labels.contains("reporter=\"waypoint\"") {
            continue;
        }
        let version = labels
            .split_once("destination_version=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map_or("unknown", |(v, _)| v);
        if let Ok(n) = value.trim().parse::<f64>() {
            *out.entry(version.to_owned()).or_default() += n as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_embedded_mesh_state_loads_with_reviews_bound_to_the_waypoint() {
        let state = ztunnel::state::LocalConfig::from_yaml(&mesh_yaml().unwrap())
            .unwrap()
            .into_state()
            .unwrap();
        let reviews = state.services().find(|s| s.hostname == SERVICE).unwrap();
        assert_eq!(
            reviews.waypoint.as_ref().unwrap().destination.to_string(),
            format!("/{WAYPOINT_IP}")
        );
        // localhost.yaml's entries are all still there.
        for name in [
            "sleep",
            "httpbin",
            "legacy",
            "waypoint",
            "reviews-v1",
            "reviews-v3",
        ] {
            assert!(state.workloads().any(|w| w.name == name), "{name}");
        }
        // The waypoint runs as its own process: no node, so no ztunnel serves it.
        let waypoint = state.workloads().find(|w| w.name == "waypoint").unwrap();
        assert!(waypoint.node.is_empty());
    }

    #[test]
    fn the_embedded_routing_loads_and_matches_the_documented_split() {
        let mut set = ConfigSet::default();
        let errors = set.parse_file(Path::new("reviews-routing.yaml"), REVIEWS_ROUTING);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (set.virtual_services.len(), set.destination_rules.len()),
            (1, 1)
        );
        for (version, weight) in SPLIT {
            assert!(
                REVIEWS_ROUTING.contains(&format!(
                    "{{host: reviews, subset: {version}}}\n      weight: {weight}"
                )),
                "{version} {weight}"
            );
        }
    }

    #[test]
    fn waypoint_requests_are_summed_per_destination_version() {
        let metrics = "# TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"waypoint\",destination_version=\"v1\",response_code=\"200\"} 3\n\
            istio_requests_total{reporter=\"waypoint\",destination_version=\"v1\",response_code=\"503\"} 1\n\
            istio_requests_total{reporter=\"waypoint\",destination_version=\"v3\"} 2\n\
            istio_requests_total{reporter=\"destination\",destination_version=\"v3\"} 7\n\
            istio_request_bytes_sum{reporter=\"waypoint\",destination_version=\"v3\"} 9\n";
        let got = requests_by_version(metrics);
        assert_eq!(
            got,
            BTreeMap::from([("v1".to_owned(), 4), ("v3".to_owned(), 2)])
        );
    }

    #[test]
    fn the_tap_keeps_whole_lines() {
        let mut tap = AccessLogTap::default();
        tap.write_all(b"first line\nsec").unwrap();
        tap.write_all(b"ond\n").unwrap();
        assert_eq!(tap.lines(), ["first line", "second"]);
    }
}
