//! The waypoint's admin (15000, localhost only), metrics (15020) and readiness (15021) servers,
//! on the HTTP plumbing ztunnel's admin servers use. `config_dump` lists every stage of the
//! chain with its Istio-style name, the compiled routes and destination policies, the
//! AuthorizationPolicies with the services each applies to, the RequestAuthentications and the
//! fetch status of their `jwksUri` key sets, the clusters with their endpoints and counters, the
//! configuration problems found, and where the mesh state comes from.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Bytes;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use ztunnel::admin::LogLevel;
use ztunnel::admin::serve::{
    APPLICATION_JSON, Handler, HttpListener, HttpResponse, is_get, method_not_allowed, not_found,
    parse_query, response, text,
};
use ztunnel::identity::IdentityManager;
use ztunnel::xds::Readiness;

use crate::app::Core;
use crate::stages::{CONNECT_ORIGINATE, CONNECT_TERMINATE, MAIN_INTERNAL};

/// `Content-Type` of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

const INDEX: &str = "\
waypoint admin endpoints:
  GET  /config_dump   the state source, the chain's stages, routes, clusters, JWT rules and
                      key sets, certificates and problems (JSON)
  POST /logging       show the log level; ?level=<spec> sets it
  POST /quitquitquit  shut down gracefully
";

/// Where the mesh state comes from, as `config_dump` shows it (`stateSource`).
#[derive(Debug, Clone)]
pub enum StateOrigin {
    /// A file: `{"file": "<path>"}`.
    File(PathBuf),
    /// Inline YAML: `"inline"`.
    Inline,
    /// istiod: `{"xds": "<address>", "synced": <first push received>}`.
    Xds {
        /// istiod's address.
        address: String,
        /// Whether the first full push has arrived.
        synced: Readiness,
    },
}

impl StateOrigin {
    /// The `stateSource` value.
    pub fn to_json(&self) -> Value {
        match self {
            Self::File(path) => json!({ "file": path.display().to_string() }),
            Self::Inline => json!("inline"),
            Self::Xds { address, synced } => {
                json!({ "xds": address, "synced": synced.is_ready() })
            }
        }
    }
}

/// The whole `config_dump` document.
pub fn config_dump(
    core: &Core,
    hbone_address: Option<SocketAddr>,
    identities: &IdentityManager,
    roots: &[CertificateDer<'static>],
    state: &StateOrigin,
) -> Value {
    let l7 = core.l7();
    let bindings = core.bindings();
    let options = core.options();
    let mut stages = vec![json!({
        "name": CONNECT_TERMINATE,
        "kind": "listener",
        "address": hbone_address.map(|a| a.to_string()),
        "identity": options.identity.to_string(),
        // Per worker thread: the tunnels it was given (empty without worker threads).
        "workerTunnels": core.worker_tunnels(),
    })];
    stages.push(json!({
        "name": MAIN_INTERNAL,
        "kind": "listener",
        "addresses": bindings.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "services": bindings.services.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }));
    for routes in l7.compiled.routes.iter() {
        stages.push(json!({
            "name": routes.listener_name(),
            "kind": "listener",
            "routes": routes,
        }));
        stages.push(json!({
            "name": format!("inbound-vip|{}|tcp|{}", routes.port, routes.hostname),
            "kind": "listener",
            "tcpRoutes": routes.tcp,
        }));
    }
    let mut pods = Vec::new();
    for cluster in core.clusters() {
        let endpoints = cluster.endpoints();
        for endpoint in &endpoints {
            pods.push(json!({
                "name": format!("inbound-pod|{}|{}", endpoint.address.port(), endpoint.address.ip()),
                "kind": "listener",
                "workload": endpoint.uid,
                "identity": core.workload_at(endpoint.address).map(|w| w.identity().to_string()),
            }));
        }
        stages.push(json!({
            "name": cluster.name(),
            "kind": "cluster",
            "policy": cluster.policy(),
            "endpoints": endpoints,
            "stats": cluster.stats(),
        }));
    }
    pods.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    pods.dedup();
    stages.extend(pods);
    stages.push(json!({
        "name": CONNECT_ORIGINATE,
        "kind": "cluster",
        "identity": options.identity.to_string(),
        "pooledEndpoints": core.pooled_endpoints(),
    }));
    let certificates: Vec<Value> = identities
        .certificates()
        .into_iter()
        .map(|(identity, cert)| {
            json!({
                "identity": identity.to_string(),
                "serial": cert.serial_hex(),
                "expiry": ztunnel::admin::config_dump::rfc3339(ztunnel::admin::config_dump::unix_seconds(cert.not_after())),
            })
        })
        .collect();
    json!({
        "stateSource": state.to_json(),
        "stages": stages,
        "services": l7.services.iter().map(|s| json!({"hostname": s.hostname, "namespace": s.namespace, "ports": s.ports.iter().map(|p| p.port).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "destinationPolicies": l7.compiled.destinations,
        "externalServices": l7.externals,
        "outboundTrafficPolicy": match options.egress.outbound_policy {
            crate::egress::OutboundPolicy::AllowAny => "ALLOW_ANY",
            crate::egress::OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        },
        "requestAuthentications": l7.authn.policies(),
        "jwks": core.jwks().statuses(),
        "authorizationPolicies": l7.authz.entries(),
        "configErrors": l7.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "warnings": l7.compiled.warnings.iter().map(ToString::to_string).chain(l7.authz.warnings()).collect::<Vec<_>>(),
        "certificates": certificates,
        "rootCount": roots.len(),
    })
}

/// What the admin server reads and acts on.
pub struct AdminInputs {
    /// The waypoint.
    pub core: Arc<Core>,
    /// Where `connect_terminate` listens.
    pub hbone_address: Option<SocketAddr>,
    /// The certificates.
    pub identities: Arc<IdentityManager>,
    /// The trust roots.
    pub roots: Vec<CertificateDer<'static>>,
    /// Where the mesh state comes from.
    pub state: StateOrigin,
    /// The log filter.
    pub log_level: Option<Arc<dyn LogLevel>>,
    /// Cancelled by `/quitquitquit`.
    pub quit: CancellationToken,
}

struct AdminHandler {
    inputs: AdminInputs,
}

impl Handler for AdminHandler {
    fn handle(&self, request: Request<Bytes>, peer: SocketAddr) -> HttpResponse {
        if !peer.ip().to_canonical().is_loopback() {
            return text(
                StatusCode::FORBIDDEN,
                "the admin server only serves localhost\n",
            );
        }
        let method = request.method();
        match request.uri().path() {
            "/" if is_get(method) => text(StatusCode::OK, INDEX),
            "/config_dump" if is_get(method) => {
                let dump = config_dump(
                    &self.inputs.core,
                    self.inputs.hbone_address,
                    &self.inputs.identities,
                    &self.inputs.roots,
                    &self.inputs.state,
                );
                let body = serde_json::to_vec_pretty(&dump).unwrap_or_default();
                response(StatusCode::OK, APPLICATION_JSON, body)
            }
            "/config_dump" => method_not_allowed("GET"),
            "/logging" if method == Method::POST => {
                let Some(level) = &self.inputs.log_level else {
                    return text(StatusCode::NOT_IMPLEMENTED, "log level is fixed\n");
                };
                let query = request.uri().query().unwrap_or_default();
                let Some(pairs) = parse_query(query) else {
                    return text(StatusCode::BAD_REQUEST, "malformed query\n");
                };
                if let Some((_, spec)) = pairs.iter().find(|(k, _)| k == "level")
                    && let Err(e) = level.set(spec)
                {
                    return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
                }
                text(
                    StatusCode::OK,
                    format!("current log level is {}\n", level.current()),
                )
            }
            "/logging" => method_not_allowed("POST"),
            "/quitquitquit" if method == Method::POST => {
                self.inputs.quit.cancel();
                text(StatusCode::OK, "shutting down\n")
            }
            "/quitquitquit" => method_not_allowed("POST"),
            path => not_found(path),
        }
    }
}

struct MetricsHandler {
    core: Arc<Core>,
}

impl Handler for MetricsHandler {
    fn handle(&self, request: Request<Bytes>, _peer: SocketAddr) -> HttpResponse {
        match request.uri().path() {
            "/stats/prometheus" | "/metrics" if is_get(request.method()) => {
                response(StatusCode::OK, PROMETHEUS_TEXT, self.core.metrics.render())
            }
            "/stats/prometheus" | "/metrics" => method_not_allowed("GET"),
            path => not_found(path),
        }
    }
}

/// A bound HTTP server with one handler.
pub struct Server {
    listener: HttpListener,
    name: &'static str,
    handler: Arc<dyn Handler>,
}

impl Server {
    /// The admin server on `addr`.
    pub async fn admin(addr: SocketAddr, inputs: AdminInputs) -> io::Result<Self> {
        Ok(Self {
            listener: HttpListener::bind(addr).await?,
            name: "admin",
            handler: Arc::new(AdminHandler { inputs }),
        })
    }

    /// The metrics server on `addr`.
    pub async fn metrics(addr: SocketAddr, core: Arc<Core>) -> io::Result<Self> {
        Ok(Self {
            listener: HttpListener::bind(addr).await?,
            name: "metrics",
            handler: Arc::new(MetricsHandler { core }),
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.listener
            .serve(self.name, Arc::new(DynHandler(self.handler)), shutdown)
            .await;
    }
}

struct DynHandler(Arc<dyn Handler>);

impl Handler for DynHandler {
    fn handle(&self, request: Request<Bytes>, peer: SocketAddr) -> HttpResponse {
        self.0.handle(request, peer)
    }
}
