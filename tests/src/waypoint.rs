//! A waypoint mesh on loopback for the L7 suites and the waypoint benchmark:
//!
//! ```text
//! client ─SOCKS5─▶ ztunnel(node-a, as sleep) ─HBONE─▶ waypoint ─HBONE─▶ ztunnel(node-b) ─▶ backends
//! ```
//!
//! Every address lives in `127.<net>.0.0/16` (workloads `127.<net>.0.x`, service VIPs
//! `127.<net>.1.x`), so suites running in parallel use different `net`s and never collide on
//! the fixed ports (15008, 15080). Backends are HTTP/1.1 + HTTP/2 servers that say who they are
//! (`x-backend`), record every request they get, and behave by path: `/status/<code>`,
//! `/delay/<ms>`, `/flaky/<n>` (the first n requests of that path get 503),
//! `/fail-on/<backend>` (500 from that backend only), and gRPC echo
//! (each request message comes back as it arrives, then `grpc-status: 0`); WebSocket upgrades
//! and `/raw/…` paths are served byte by byte by [`crate::websocket`]. The services
//! `reviews` and `ratings` are bound to the waypoint, and so is the workload `ratings-v1`
//! (workload-addressed traffic to it crosses the waypoint as TCP).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use waypoint::run::{CaSource, RunConfig, Running, StateSource};
use waypoint::source::Sources;
pub use waypoint::stages::inbound_vip::limits::DownstreamLimits;
use waypoint::telemetry::{AccessLog, AccessLogFormat, MemoryLog};
use ztunnel::app::{Node, WorkloadPorts, WorkloadProxy};
use ztunnel::identity::IdentityManager;
use ztunnel::outbound::request::OutboundContext;
use ztunnel::state::{LocalConfig, StateHandle};

pub use crate::series;
use crate::{Target, socks5_connect};

/// The backends: name (`reviews-v1`), service, version, host byte of its address.
pub const BACKENDS: &[(&str, &str, &str, u8)] = &[
    ("reviews-v1", "reviews", "v1", 11),
    ("reviews-v2", "reviews", "v2", 12),
    ("reviews-v3", "reviews", "v3", 13),
    ("ratings-v1", "ratings", "v1", 21),
    ("ratings-v2", "ratings", "v2", 22),
];

/// The port every backend and service uses.
pub const APP_PORT: u16 = 9080;

/// The backends of the `reviews` service, one per version.
pub const REVIEWS_BACKENDS: &[&str] = &["reviews-v1", "reviews-v2", "reviews-v3"];

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The requests each backend received, by backend name.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    seen: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
    flaky: Arc<Mutex<HashMap<(String, String), u32>>>,
    /// Connections accepted by all backends.
    accepted: Arc<AtomicU64>,
    /// Requests received by all backends.
    requests: Arc<AtomicU64>,
    /// Benchmark mode ([`MeshOptions::echo_backends`]): record nothing, echo the body.
    echo: bool,
}

impl Backends {
    /// Requests received by `backend`.
    pub fn seen(&self, backend: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(backend)
            .cloned()
            .unwrap_or_default()
    }

    /// How many requests `backend` received for paths starting with `prefix`.
    pub fn count(&self, backend: &str, prefix: &str) -> usize {
        self.seen(backend)
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .count()
    }

    /// The requests any of `backends` received for paths starting with `prefix`, backend by
    /// backend in the order given.
    pub fn seen_by(&self, backends: &[&str], prefix: &str) -> Vec<Seen> {
        backends
            .iter()
            .flat_map(|b| self.seen(b))
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    /// How many requests `backends` together received for paths starting with `prefix`.
    pub fn count_by(&self, backends: &[&str], prefix: &str) -> usize {
        backends.iter().map(|b| self.count(b, prefix)).sum()
    }

    /// TCP connections accepted so far by all backends together (each one is a connection
    /// from the destination ztunnel, i.e. one HBONE CONNECT stream reaching the application).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests received so far by all backends together (counted in every mode).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Forgets everything received.
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.flaky.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Counts one request received.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, backend: &str, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(backend.to_owned())
            .or_default()
            .push(seen);
    }

    /// Counts a request to a flaky path; returns how many came before it.
    fn flaky_count(&self, backend: &str, path: &str) -> u32 {
        let mut map = self.flaky.lock().unwrap_or_else(|p| p.into_inner());
        let n = map
            .entry((backend.to_owned(), path.to_owned()))
            .or_default();
        *n += 1;
        *n - 1
    }
}

/// The addresses of one mesh.
#[derive(Debug, Clone, Copy)]
pub struct Net(pub u8);

impl Net {
    /// A workload address.
    pub fn workload(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.0, 0, host)
    }
    /// A service VIP.
    pub fn vip(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.0, 1, host)
    }
    /// The client (sleep).
    pub fn client(self) -> Ipv4Addr {
        self.workload(1)
    }
    /// The waypoint.
    pub fn waypoint(self) -> Ipv4Addr {
        self.workload(9)
    }
    /// `reviews` VIP:port.
    pub fn reviews(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.vip(10)), APP_PORT)
    }
    /// `ratings` VIP:port.
    pub fn ratings(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.vip(20)), APP_PORT)
    }
}

/// The mesh state of a [`Net`].
pub fn mesh_yaml(net: Net) -> String {
    mesh_yaml_with(net, true)
}

/// The mesh state of a [`Net`]; with `bind_waypoint` false the services `reviews` and
/// `ratings` have no waypoint (clients' ztunnels tunnel straight to their endpoints; the
/// workload `ratings-v1` keeps its own waypoint binding).
pub fn mesh_yaml_with(net: Net, bind_waypoint: bool) -> String {
    let mut out = String::from("workloads:\n");
    out += &format!(
        "- uid: sleep\n  name: sleep\n  namespace: default\n  serviceAccount: sleep\n  workloadIps: [\"{}\"]\n  protocol: HBONE\n  node: node-a\n  canonicalName: sleep\n  canonicalRevision: v1\n  workloadName: sleep\n",
        net.client()
    );
    out += &format!(
        "- uid: waypoint\n  name: waypoint\n  namespace: default\n  serviceAccount: waypoint\n  workloadIps: [\"{}\"]\n  protocol: HBONE\n  node: node-w\n  canonicalName: waypoint\n  workloadName: waypoint\n  services:\n    default/waypoint.default.svc.cluster.local:\n      15008: 15008\n",
        net.waypoint()
    );
    for (name, service, version, host) in BACKENDS {
        out += &format!(
            "- uid: {name}\n  name: {name}\n  namespace: default\n  serviceAccount: {service}\n  workloadIps: [\"{}\"]\n  protocol: HBONE\n  node: node-b\n  canonicalName: {service}\n  canonicalRevision: {version}\n  workloadName: {name}\n  services:\n    default/{service}.default.svc.cluster.local:\n      {APP_PORT}: {APP_PORT}\n",
            net.workload(*host)
        );
        if *name == "ratings-v1" {
            // Workload-addressed traffic to ratings-v1 goes through the waypoint too.
            out += &format!("  waypoint:\n    destination: \"/{}\"\n", net.vip(9));
        }
    }
    out += "services:\n";
    out += &format!(
        "- name: waypoint\n  namespace: default\n  hostname: waypoint.default.svc.cluster.local\n  vips: [\"/{}\"]\n  ports:\n    15008: 15008\n",
        net.vip(9)
    );
    for (service, vip) in [("reviews", 10u8), ("ratings", 20)] {
        out += &format!(
            "- name: {service}\n  namespace: default\n  hostname: {service}.default.svc.cluster.local\n  vips: [\"/{}\"]\n  ports:\n    {APP_PORT}: {APP_PORT}\n",
            net.vip(vip),
        );
        if bind_waypoint {
            out += &format!(
                "  waypoint:\n    destination: \"/{}\"\n    hboneMtlsPort: 15008\n",
                net.vip(9)
            );
        }
    }
    out
}

/// How [`WaypointMesh::start_with`] sets the mesh up. The default is what
/// [`WaypointMesh::start`] does.
#[derive(Debug)]
pub struct MeshOptions {
    /// The runtime the waypoint runs on (all its tasks: listeners, connections, pools);
    /// `None` = the caller's runtime.
    pub waypoint_runtime: Option<tokio::runtime::Handle>,
    /// Whether the services `reviews` and `ratings` are bound to the waypoint. Unbound, the
    /// waypoint still runs but is off the path: client ztunnel → destination ztunnel.
    pub bind_waypoint: bool,
    /// The waypoint's access log; `None` = JSON lines in memory ([`WaypointMesh::access_log`]).
    /// With `Some`, [`WaypointMesh::access_log`] stays empty.
    pub access_log: Option<AccessLog>,
    /// Benchmark backends: they record nothing (only the counts in [`Backends`]) and answer
    /// every request with `200` and the request body, whatever the path.
    pub echo_backends: bool,
    /// How the waypoint fetches RequestAuthentication key sets.
    pub jwks: waypoint::authn::JwksSettings,
    /// Where the waypoint's mesh state and certificate come from (e.g. a fake istiod); `None`
    /// = the mesh's state file and the local CA of [`MeshOptions::ca_dir`]. The ztunnels
    /// always use the state file.
    pub waypoint_sources: Option<Sources>,
    /// The local CA's directory, whose root every ztunnel trusts and issues from (an existing
    /// CA is loaded); `None` = a new CA in the mesh's temporary directory.
    pub ca_dir: Option<PathBuf>,
    /// More services for the mesh state, as YAML list items appended to its `services` (e.g.
    /// ServiceEntry hosts bound to the waypoint).
    pub extra_services: String,
    /// The waypoint's egress settings (outbound traffic policy, TLS roots, DNS resolver).
    pub egress: waypoint::egress::EgressSettings,
    /// The waypoint's downstream connection limits.
    pub downstream: DownstreamLimits,
    /// Read the waypoint's L7 configuration from the Kubernetes API server (e.g. the double of
    /// [`crate::kube`]) instead of [`WaypointMesh::config_dir`]; [`WaypointMesh::start_with`]
    /// then returns once the waypoint is ready (its first configuration applied).
    pub kubernetes: Option<waypoint::run::KubeSource>,
    /// The waypoint's trace sampling and span export.
    pub tracing: waypoint::telemetry::TracingSettings,
    /// `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS` (default off).
    pub multiple_custom_authz_providers: bool,
    /// The waypoint's worker threads (0 = it serves on the runtime it was started on).
    /// Default: the binary's default, so that suites exercise the path the binary runs.
    pub waypoint_workers: usize,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            waypoint_runtime: None,
            bind_waypoint: true,
            access_log: None,
            echo_backends: false,
            jwks: waypoint::authn::JwksSettings::default(),
            waypoint_sources: None,
            ca_dir: None,
            extra_services: String::new(),
            egress: waypoint::egress::EgressSettings::default(),
            downstream: DownstreamLimits::default(),
            kubernetes: None,
            tracing: waypoint::telemetry::TracingSettings::default(),
            multiple_custom_authz_providers: false,
            waypoint_workers: waypoint::app::DEFAULT_WORKERS,
        }
    }
}

/// A running waypoint mesh.
pub struct WaypointMesh {
    /// The addresses.
    pub net: Net,
    /// The waypoint.
    pub waypoint: Running,
    /// The waypoint's access log (JSON lines).
    pub access_log: MemoryLog,
    /// What the backends received.
    pub backends: Backends,
    /// The client's SOCKS5 listener.
    pub socks5: SocketAddr,
    /// The waypoint's L7 configuration directory.
    pub config_dir: PathBuf,
    /// The waypoint's mesh config file (absent until [`WaypointMesh::apply_mesh_config`]).
    pub mesh_config: PathBuf,
    /// The local CA's directory (every proxy's certificates come from it).
    pub ca_dir: PathBuf,
    /// The client's node proxy (its metrics show the client's connections).
    pub node_a: Node,
    /// The backends' node proxy (its metrics show what arrived from the waypoint).
    pub node_b: Node,
    _proxies: Vec<WorkloadProxy>,
    _dir: tempfile::TempDir,
}

impl WaypointMesh {
    /// Starts the backends, the two node proxies and the waypoint on `net`.
    ///
    /// # Panics
    /// When anything cannot start: this is test code.
    pub async fn start(net: Net) -> Self {
        Self::start_with(net, MeshOptions::default()).await
    }

    /// [`WaypointMesh::start`] with `options`.
    ///
    /// # Panics
    /// When anything cannot start: this is test code.
    pub async fn start_with(net: Net, options: MeshOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_path = dir.path().join("mesh.yaml");
        let mut state_yaml = mesh_yaml_with(net, options.bind_waypoint);
        state_yaml.push_str(&options.extra_services);
        std::fs::write(&state_path, state_yaml).expect("write the mesh state");
        let config_dir = dir.path().join("l7");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        let mesh_config = dir.path().join("meshconfig");
        let ca_dir = options
            .ca_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("ca"));
        let state = StateHandle::new(
            LocalConfig::load_file(&state_path)
                .and_then(LocalConfig::into_state)
                .expect("mesh state"),
        );
        let backends = Backends {
            echo: options.echo_backends,
            ..Backends::default()
        };
        for (name, _, _, host) in BACKENDS {
            let addr = SocketAddr::new(IpAddr::V4(net.workload(*host)), APP_PORT);
            spawn_backend(addr, name, backends.clone()).await;
        }
        let node = |name: &str| {
            let ca = hbone::LocalCa::load_or_generate(&ca_dir, "cluster.local").expect("CA");
            let roots = ca.roots().to_vec();
            let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
            Node::new(
                state.clone(),
                identities,
                roots,
                hbone::Config::default(),
                OutboundContext {
                    node: Some(name.to_owned()),
                    ..OutboundContext::default()
                },
            )
            .expect("node")
        };
        let node_a = node("node-a");
        let node_b = node("node-b");
        let current = state.current();
        let mut proxies = Vec::new();
        let client = node_a
            .add_workload(
                current.workload_by_uid("sleep").expect("sleep"),
                WorkloadPorts {
                    socks5: Some(15080),
                    ..WorkloadPorts::default()
                },
            )
            .await
            .expect("client proxy");
        let socks5 = client.socks5.expect("socks5");
        proxies.push(client);
        for (name, _, _, _) in BACKENDS {
            let workload = current.workload_by_uid(name).expect("backend workload");
            proxies.push(
                node_b
                    .add_workload(workload, WorkloadPorts::default())
                    .await
                    .expect("backend proxy"),
            );
        }
        let (memory_log, memory) = AccessLog::memory();
        let access_log = options
            .access_log
            .unwrap_or_else(|| memory_log.with_format(AccessLogFormat::Json));
        let wp = IpAddr::V4(net.waypoint());
        let (state, ca) = match options.waypoint_sources {
            Some(sources) => (sources.state, sources.ca),
            None => (
                StateSource::File(state_path),
                CaSource::Local(ca_dir.clone()),
            ),
        };
        let config = RunConfig {
            state,
            config_dir: Some(config_dir.clone()),
            mesh_config: Some(mesh_config.clone()),
            kubernetes: options.kubernetes.clone(),
            namespace: "default".into(),
            name: "waypoint".into(),
            service_account: "waypoint".into(),
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            instance_ips: vec![wp],
            ca,
            hbone_addr: SocketAddr::new(wp, 15008),
            admin_addr: SocketAddr::new(wp, 0),
            metrics_addr: SocketAddr::new(wp, 0),
            readiness_addr: SocketAddr::new(wp, 0),
            drain_deadline: Duration::from_secs(1),
            root_namespace: waypoint::authn::policy::DEFAULT_ROOT_NAMESPACE.into(),
            jwks: options.jwks.clone(),
            egress: options.egress.clone(),
            downstream: options.downstream,
            tracing: options.tracing.clone(),
            multiple_custom_authz_providers: options.multiple_custom_authz_providers,
            workers: options.waypoint_workers,
        };
        let waypoint = match options.waypoint_runtime {
            None => waypoint::run::start(config, None, access_log)
                .await
                .expect("waypoint"),
            // Started from a task of that runtime, so everything it spawns lives there.
            Some(rt) => rt
                .spawn(waypoint::run::start(config, None, access_log))
                .await
                .expect("waypoint start task")
                .expect("waypoint"),
        };
        if options.kubernetes.is_some() {
            tokio::time::timeout(Duration::from_secs(30), waypoint.ready.wait())
                .await
                .expect("the waypoint is ready within 30 s (its configuration listed)");
        }
        Self {
            net,
            waypoint,
            access_log: memory,
            backends,
            socks5,
            config_dir,
            mesh_config,
            ca_dir,
            node_a,
            node_b,
            _proxies: proxies,
            _dir: dir,
        }
    }

    /// Replaces the waypoint's L7 configuration with `yaml` and applies it at once.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn apply(&self, yaml: &str) {
        std::fs::write(self.config_dir.join("config.yaml"), yaml).expect("write L7 config");
        waypoint::app::load_config_dir(&self.waypoint.core, &self.config_dir);
    }

    /// Replaces the waypoint's mesh config (Istio `meshConfig` YAML, e.g. its
    /// `extensionProviders`) with `yaml` and applies it at once.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn apply_mesh_config(&self, yaml: &str) {
        std::fs::write(&self.mesh_config, yaml).expect("write the mesh config");
        waypoint::app::load_mesh_config(&self.waypoint.core, &self.mesh_config);
    }

    /// A TCP stream from the client to `dst` through the mesh.
    ///
    /// # Panics
    /// When SOCKS5 refuses.
    pub async fn connect(&self, dst: SocketAddr) -> tokio::net::TcpStream {
        let (code, stream) = socks5_connect(self.socks5, Target::Addr(dst)).await;
        assert_eq!(code, 0, "SOCKS5 connect to {dst}");
        stream
    }

    /// An HTTP/1.1 client connection to `dst` through the mesh.
    ///
    /// # Panics
    /// When the connection cannot be set up.
    pub async fn http1(
        &self,
        dst: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = self.connect(dst).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        sender
    }

    /// An HTTP/2 client connection to `dst` through the mesh.
    ///
    /// # Panics
    /// When the connection cannot be set up.
    pub async fn http2<B>(&self, dst: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect(dst).await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        sender
    }

    /// The waypoint's metrics.
    ///
    /// # Panics
    /// Never in practice.
    pub fn metrics(&self) -> String {
        self.waypoint.core.metrics.render()
    }

    /// `config_dump`, fetched from the waypoint's admin server.
    ///
    /// # Panics
    /// When the admin server does not answer JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        let body = crate::inpod::http_get(self.waypoint.admin, "/config_dump").await;
        let json = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b);
        serde_json::from_str(json).expect("config_dump is JSON")
    }

    /// Starts a backend outside the mesh (no ztunnel in front of it) on `addr`, named `name`
    /// in [`WaypointMesh::backends`]; behind TLS with `tls` when set (its connections are
    /// counted once the handshake succeeds).
    pub async fn spawn_external_backend(
        &self,
        addr: SocketAddr,
        name: &'static str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        spawn_backend_with(addr, name, self.backends.clone(), tls).await;
    }

    /// The access log lines, parsed.
    ///
    /// # Panics
    /// When a line is not JSON.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.access_log
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect()
    }
}

/// A GET with `host` and extra headers.
///
/// # Panics
/// When the request cannot be built.
pub fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::new())).expect("request")
}

/// Sends `request` and reads the whole response: status, headers, body.
///
/// # Panics
/// When the exchange fails.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Reads `stream` until the peer ends its side (or the read fails), for at most 10 s and
/// 1 MiB; returns the bytes and whether the peer ended (`false`: the bound was hit first).
pub async fn read_to_close(stream: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // Bounded: the suites read one response or a few frames this way.
                if out.len() > 1024 * 1024 {
                    return (out, false);
                }
            }
        }
    }
}

async fn spawn_backend(addr: SocketAddr, name: &'static str, backends: Backends) {
    spawn_backend_with(addr, name, backends, None).await;
}

/// A backend on `addr`, behind TLS with `tls` when set. Connections whose TLS handshake
/// fails are not counted (nothing was processed).
async fn spawn_backend_with(
    addr: SocketAddr,
    name: &'static str,
    backends: Backends,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let listener = TcpListener::bind(addr).await.expect("bind backend");
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if backends.echo {
                let _ = stream.set_nodelay(true);
            }
            let backends = backends.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => {
                        backends.accepted.fetch_add(1, Ordering::Relaxed);
                        if !backends.echo && crate::websocket::wants_raw(&stream).await {
                            crate::websocket::serve(stream, name, backends).await;
                        } else {
                            serve_backend(TokioIo::new(stream), name, backends).await;
                        }
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            backends.accepted.fetch_add(1, Ordering::Relaxed);
                            serve_backend(TokioIo::new(stream), name, backends).await;
                        }
                    }
                }
            });
        }
    });
}

async fn serve_backend<IO>(io: TokioIo<IO>, name: &'static str, backends: Backends)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let backends = backends.clone();
        async move { Ok::<_, Infallible>(backend(name, backends, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn backend(
    name: &'static str,
    backends: Backends,
    req: Request<Incoming>,
) -> Response<BackendBody> {
    backends.requests.fetch_add(1, Ordering::Relaxed);
    if backends.echo {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    }
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        backends.record(
            name,
            Seen {
                method: parts.method.to_string(),
                path,
                headers: parts.headers,
                body: Bytes::new(),
            },
        );
        return grpc_echo(name, body);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    backends.record(
        name,
        Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        },
    );
    let mut status = StatusCode::OK;
    let segments: Vec<&str> = path.split('?').next().unwrap_or("/").split('/').collect();
    match segments.as_slice() {
        ["", "status", code] => {
            status = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
        }
        ["", "delay", ms] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["", "fail-on", who] if *who == name => {
            status = StatusCode::INTERNAL_SERVER_ERROR;
        }
        ["", "flaky", n] => {
            let n: u32 = n.parse().unwrap_or(0);
            if backends.flaky_count(name, &path) < n {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
        _ => {}
    }
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{name} {path} {}", body.len())))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("x-backend", name.parse().expect("header value"));
    if let Ok(v) = host.parse() {
        headers.insert("x-seen-host", v);
    }
    if let Ok(v) = path.parse() {
        headers.insert("x-seen-path", v);
    }
    response
}

/// A gRPC echo: every request message comes back as soon as it arrives; trailers at the end.
fn grpc_echo(name: &'static str, body: Incoming) -> Response<BackendBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(16);
    tokio::spawn(async move {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(Frame::data(data))).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    response
        .headers_mut()
        .insert("x-backend", name.parse().expect("value"));
    response
}

/// A gRPC message frame: flag 0, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    Bytes::from(out)
}
