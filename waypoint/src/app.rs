//! The waypoint as a set of bound listeners around one shared [`Core`]: the mesh state, the
//! compiled L7 configuration, the clusters and the `connect_originate` pool that every stage
//! reads. [`Core::refresh`] recomputes what depends on the state or the configuration (which
//! services are bound to this waypoint, their routes, the endpoints of each cluster) whenever
//! either changes; requests in flight keep the snapshot they started with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hbone::Identity;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use ztunnel::identity::IdentityManager;
use ztunnel::state::service::Service;
use ztunnel::state::workload::{HealthStatus, Workload};
use ztunnel::state::{MeshState, StateHandle};

use crate::authn::{AuthnContext, AuthnTable, JwksRegistry, JwksSettings};
use crate::authz::{AuthzOptions, AuthzTable};
use crate::cluster::{Cluster, ClusterEndpoint};
use crate::config::mesh::ExtensionProviders;
use crate::config::{ConfigError, ConfigSet};
use crate::egress::dns::{DnsCache, DnsError};
use crate::egress::tls::TlsResult;
use crate::egress::{
    EgressSettings, Endpoints, ExternalServices, PASSTHROUGH_CLUSTER, Upstream, UpstreamQuery,
};
use crate::route::{
    ClusterPolicy, CompileOptions, Compiled, ServicePort, ServiceTarget, cluster_name, compile,
};
use crate::stages::connect_originate::ConnectOriginate;
use crate::stages::connect_terminate::ConnectTerminate;
use crate::stages::inbound_vip::limits::DownstreamLimits;
use crate::stages::main_internal::{Bindings, SelfRef};
use crate::telemetry::{AccessLog, DestinationLabels, RequestMetrics, Tracer, TracingSettings};
use foldhash::fast::RandomState as FastHash;

/// Cached destination label sets before the cache starts over.
const MAX_LABEL_SETS: usize = 65_536;

/// How often the L7 configuration directory is checked for changes.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Errors setting up a waypoint.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The waypoint's certificate could not be obtained.
    #[error("no certificate for {identity}: {reason}")]
    Certificate {
        /// The identity.
        identity: Identity,
        /// Why.
        reason: String,
    },
    /// The HBONE server could not be configured.
    #[error("HBONE server: {0}")]
    Hbone(String),
    /// The worker threads could not be started.
    #[error("cannot start {count} worker threads: {source}")]
    Workers {
        /// How many were asked for.
        count: usize,
        /// The error.
        source: std::io::Error,
    },
}

/// Settings of one waypoint.
#[derive(Debug, Clone)]
pub struct WaypointOptions {
    /// How the waypoint is named in the mesh state.
    pub self_ref: SelfRef,
    /// The identity it presents, both to clients and to destinations.
    pub identity: Identity,
    /// The network it is on (empty = the default network).
    pub network: String,
    /// The cluster's DNS domain.
    pub domain_suffix: String,
    /// How long drained connections may take to finish.
    pub drain_deadline: Duration,
    /// How long a tunnel may wait for its first bytes before it is treated as TCP.
    pub protocol_detection_timeout: Duration,
    /// The mesh's root namespace (policies there with a `GatewayClass` target apply to every
    /// waypoint).
    pub root_namespace: String,
    /// How `jwksUri` key sets are fetched and kept.
    pub jwks: JwksSettings,
    /// Traffic to destinations outside the mesh: outbound traffic policy, TLS origination
    /// roots, DNS.
    pub egress: EgressSettings,
    /// Limits of the downstream HTTP connections (see [`DownstreamLimits`] for each default).
    pub downstream: DownstreamLimits,
    /// Trace sampling and span export (see [`TracingSettings`] for each default).
    pub tracing: TracingSettings,
    /// Whether the CUSTOM AuthorizationPolicies of one service may name different extension
    /// providers (istiod's `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`): each provider is
    /// then asked for the requests its own policies match, in policy name order, and any
    /// denial wins. Default false, as Istio: such a service denies every request.
    pub multiple_custom_authz_providers: bool,
    /// Worker threads serving the HBONE connections, each with its own single-threaded
    /// runtime and its own `connect_originate` pool ([`hbone::workers`]); 0 serves them on
    /// the runtime the waypoint was started on. Default 0; the binary's default is
    /// [`DEFAULT_WORKERS`].
    pub workers: usize,
}

/// What one thread serving connections keeps for itself: its upstream connections are driven
/// by tasks of its own runtime, so that a request never wakes another thread to reach them.
#[derive(Debug)]
pub struct WorkerState {
    /// The worker's `connect_originate` stage and its connection pools.
    pub originate: Arc<ConnectOriginate>,
    /// Tunnels `connect_terminate` has accepted on this worker.
    pub tunnels: AtomicU64,
}

/// The binary's default number of worker threads: Istio's published waypoint figures use
/// two (Envoy `--concurrency 2`).
pub const DEFAULT_WORKERS: usize = 2;

impl WaypointOptions {
    /// Options for the waypoint `service_name` in `namespace` with `identity`.
    pub fn new(namespace: &str, service_name: &str, identity: Identity) -> Self {
        Self {
            self_ref: SelfRef {
                namespace: namespace.to_owned(),
                service_name: service_name.to_owned(),
                instance_ips: Vec::new(),
            },
            identity,
            network: String::new(),
            domain_suffix: "cluster.local".to_owned(),
            drain_deadline: Duration::from_secs(5),
            protocol_detection_timeout: Duration::from_secs(1),
            root_namespace: crate::authn::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
            jwks: JwksSettings::default(),
            egress: EgressSettings::default(),
            downstream: DownstreamLimits::default(),
            tracing: TracingSettings::default(),
            multiple_custom_authz_providers: false,
            workers: 0,
        }
    }

    /// Envoy's `node_id` of the waypoint, as istiod knows it:
    /// `waypoint~<first instance IP>~<pod>.<namespace>~<namespace>.svc.cluster.local` (the pod
    /// name defaults to the waypoint's name).
    pub fn node_id(&self) -> String {
        let ip = self
            .self_ref
            .instance_ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let name = self
            .tracing
            .pod_name
            .as_deref()
            .unwrap_or(&self.self_ref.service_name);
        let ns = &self.self_ref.namespace;
        format!("waypoint~{ip}~{name}.{ns}~{ns}.svc.cluster.local")
    }

    /// The attributes of every span the waypoint reports (Istio's custom tags).
    fn span_attributes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node_id", self.node_id()),
            ("zone", String::new()),
            ("component", "proxy".to_owned()),
            (
                "istio.canonical_service",
                self.self_ref.service_name.clone(),
            ),
            ("istio.mesh_id", self.identity.trust_domain().to_owned()),
            ("istio.namespace", self.self_ref.namespace.clone()),
        ]
    }
}

/// The L7 configuration in force.
#[derive(Debug, Default)]
pub struct L7State {
    /// The objects loaded.
    pub config: ConfigSet,
    /// Problems found loading them (each object with a problem was left out).
    pub errors: Vec<ConfigError>,
    /// The routes and destination policies compiled for the services bound here.
    pub compiled: Compiled,
    /// The services bound to this waypoint when it was compiled.
    pub services: Vec<ServiceTarget>,
    /// The RequestAuthentication rules of each service.
    pub authn: AuthnTable,
    /// The AuthorizationPolicies that apply to each of them.
    pub authz: AuthzTable,
    /// The external authorizers of the mesh config (`extensionProviders`), which CUSTOM
    /// policies name.
    pub providers: Arc<ExtensionProviders>,
    /// The `MESH_EXTERNAL` ServiceEntries.
    pub externals: ExternalServices,
}

/// What identifies a cluster and lets it be rebuilt when the state or configuration changes.
struct ClusterEntry {
    host: String,
    subset: Option<String>,
    port: u16,
    cluster: Arc<Cluster>,
}

/// What names a cluster (`inbound-vip|<port>|<protocol>[/<subset>]|<host>`), owned: the key
/// of [`Core`]'s cluster map.
#[derive(Debug)]
struct ClusterKey {
    port: u16,
    protocol: String,
    subset: Option<String>,
    host: String,
}

/// The same, borrowed from a request: what a lookup is made with.
struct ClusterKeyRef<'a> {
    port: u16,
    protocol: &'a str,
    subset: Option<&'a str>,
    host: &'a str,
}

/// The parts of a cluster key, owned or borrowed, so the map can be searched with borrowed
/// parts (`HashMap::get` takes any `Q` the key borrows as).
trait ClusterKeyView {
    fn parts(&self) -> (u16, &str, Option<&str>, &str);
}

impl ClusterKeyView for ClusterKey {
    fn parts(&self) -> (u16, &str, Option<&str>, &str) {
        (
            self.port,
            &self.protocol,
            self.subset.as_deref(),
            &self.host,
        )
    }
}

impl ClusterKeyView for ClusterKeyRef<'_> {
    fn parts(&self) -> (u16, &str, Option<&str>, &str) {
        (self.port, self.protocol, self.subset, self.host)
    }
}

impl<'a> std::borrow::Borrow<dyn ClusterKeyView + 'a> for ClusterKey {
    fn borrow(&self) -> &(dyn ClusterKeyView + 'a) {
        self
    }
}

impl std::hash::Hash for dyn ClusterKeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn ClusterKeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn ClusterKeyView + '_ {}

// Hashed and compared through the view, as `Borrow` requires.
impl std::hash::Hash for ClusterKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for ClusterKey {}

/// The destination labels of a (service, endpoint) pair, with the pair they were made from.
struct LabelEntry {
    /// Held so that the address in the key stays this service's.
    _service: Option<Arc<Service>>,
    /// Held so that the address in the key stays this workload's.
    _endpoint: Option<Arc<Workload>>,
    labels: Arc<DestinationLabels>,
}

/// The state shared by every stage.
pub struct Core {
    state: StateHandle,
    options: WaypointOptions,
    bindings: ArcSwap<Bindings>,
    l7: ArcSwap<L7State>,
    config: Mutex<(ConfigSet, Vec<ConfigError>)>,
    /// The external authorizers of the mesh config.
    providers: Mutex<Arc<ExtensionProviders>>,
    /// The clusters by what names them; looked up without building the name.
    clusters: Mutex<HashMap<ClusterKey, ClusterEntry, FastHash>>,
    /// The `jwksUri` key sets in use.
    jwks: JwksRegistry,
    /// One permit per downstream connection served (`max_connections`).
    downstream_permits: Arc<tokio::sync::Semaphore>,
    /// Destination labels by the addresses of (service, endpoint), rebuilt after state changes.
    destination_labels: std::sync::RwLock<HashMap<(usize, usize), LabelEntry, FastHash>>,
    /// Resolved names of DNS ServiceEntries.
    dns: DnsCache,
    /// The TLS origination of each external cluster, by cluster name; cleared on refresh.
    egress_tls: Mutex<HashMap<String, TlsResult>>,
    /// `PassthroughCluster`: requests to the original destination (`ALLOW_ANY`).
    passthrough: Arc<Cluster>,
    /// What each thread serving connections keeps for itself: first the runtime the
    /// waypoint was started on, then each worker ([`Core::worker`]).
    workers: Box<[WorkerState]>,
    /// Request metrics.
    pub metrics: Arc<RequestMetrics>,
    /// The access log.
    pub access_log: AccessLog,
    /// Sampling and span export.
    pub tracer: Tracer,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core over `state`, tunnelling through `pool` with certificates from `identities`.
    pub fn new(
        state: StateHandle,
        options: WaypointOptions,
        identities: Arc<IdentityManager>,
        pool: hbone::Pool,
        metrics: Arc<RequestMetrics>,
        access_log: AccessLog,
    ) -> Arc<Self> {
        // A worker's upstream connections are driven by tasks of its own runtime, so each
        // worker has a pool of its own.
        let workers = std::iter::once(pool.clone())
            .chain((0..options.workers).map(|_| pool.sibling()))
            .map(|pool| WorkerState {
                originate: Arc::new(ConnectOriginate::new(
                    pool,
                    Arc::clone(&identities),
                    options.identity.clone(),
                )),
                tunnels: AtomicU64::new(0),
            })
            .collect();
        let jwks = JwksRegistry::new(options.jwks.clone());
        let dns = DnsCache::new(
            Arc::clone(&options.egress.resolver),
            options.egress.dns_refresh_rate,
        );
        let passthrough = Arc::new(Cluster::new(
            PASSTHROUGH_CLUSTER.to_owned(),
            &ClusterPolicy::default(),
            Vec::new(),
        ));
        let permits = usize::try_from(options.downstream.max_connections)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let tracer = Tracer::new(
            &options.tracing,
            options.span_attributes(),
            vec![("k8s.namespace.name", options.self_ref.namespace.clone())],
            || metrics.span_counters(),
        );
        let core = Arc::new(Self {
            tracer,
            downstream_permits: Arc::new(tokio::sync::Semaphore::new(permits)),
            state,
            options,
            jwks,
            dns,
            egress_tls: Mutex::new(HashMap::new()),
            passthrough,
            bindings: ArcSwap::from_pointee(Bindings::default()),
            l7: ArcSwap::from_pointee(L7State::default()),
            config: Mutex::new((ConfigSet::default(), Vec::new())),
            providers: Mutex::default(),
            clusters: Mutex::new(HashMap::default()),
            destination_labels: std::sync::RwLock::new(HashMap::default()),
            workers,
            metrics,
            access_log,
        });
        core.refresh();
        core
    }

    /// The state of the calling thread's worker; off the workers, the state of the runtime
    /// the waypoint was started on.
    pub fn worker(&self) -> &WorkerState {
        let index = hbone::workers::current().map_or(0, |worker| worker + 1);
        self.workers.get(index).unwrap_or(&self.workers[0])
    }

    /// The `connect_originate` stage of the calling thread's worker.
    pub fn originate(&self) -> &Arc<ConnectOriginate> {
        &self.worker().originate
    }

    /// The tunnels each worker has been given so far (empty without workers).
    pub fn worker_tunnels(&self) -> Vec<u64> {
        self.workers
            .iter()
            .skip(1)
            .map(|w| w.tunnels.load(Ordering::Relaxed))
            .collect()
    }

    /// The endpoints with pooled upstream connections, over every worker's pool.
    pub fn pooled_endpoints(&self) -> usize {
        let mut keys: Vec<_> = self
            .workers
            .iter()
            .flat_map(|w| w.originate.pooled_keys())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    /// The options.
    pub fn options(&self) -> &WaypointOptions {
        &self.options
    }

    /// A slot for one more downstream connection, held while it is served; `None` when
    /// `max_connections` are being served (the overflow is counted).
    pub fn admit_downstream(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = Arc::clone(&self.downstream_permits)
            .try_acquire_owned()
            .ok();
        if permit.is_none() {
            self.metrics.count_downstream_overflow();
        }
        permit
    }

    /// The current mesh state.
    pub fn mesh(&self) -> Arc<MeshState> {
        self.state.current()
    }

    /// What names this waypoint in the state.
    pub fn bindings(&self) -> Arc<Bindings> {
        self.bindings.load_full()
    }

    /// The `jwksUri` key sets in use, with their fetch status.
    pub fn jwks(&self) -> &JwksRegistry {
        &self.jwks
    }

    /// What authorization needs to know about this waypoint.
    fn authz_options(&self) -> AuthzOptions {
        let me = &self.options.self_ref;
        let mut options = AuthzOptions::new(&me.namespace, &me.service_name);
        options
            .domain_suffix
            .clone_from(&self.options.domain_suffix);
        options
            .root_namespace
            .clone_from(&self.options.root_namespace);
        options.providers = Arc::clone(&lock(&self.providers));
        options.multiple_custom_providers = self.options.multiple_custom_authz_providers;
        options
    }

    /// The L7 configuration in force.
    pub fn l7(&self) -> Arc<L7State> {
        self.l7.load_full()
    }

    /// Replaces the L7 configuration and recompiles.
    pub fn set_config(&self, config: ConfigSet, errors: Vec<ConfigError>) {
        for error in &errors {
            tracing::warn!(%error, "L7 configuration object ignored");
        }
        *lock(&self.config) = (config, errors);
        self.refresh();
    }

    /// Replaces the external authorizers of the mesh config and recompiles.
    pub fn set_extension_providers(&self, providers: ExtensionProviders) {
        *lock(&self.providers) = Arc::new(providers);
        self.refresh();
    }

    /// Recomputes the bindings, the routes of the bound services and every cluster's
    /// endpoints and policy from the current state and configuration.
    pub fn refresh(&self) {
        let state = self.state.current();
        let bindings = Bindings::resolve(&state, &self.options.self_ref);
        let services = served_services(&state, &bindings);
        let (config, errors) = lock(&self.config).clone();
        let options = CompileOptions {
            domain_suffix: self.options.domain_suffix.clone(),
            waypoint_namespace: Some(self.options.self_ref.namespace.clone()),
        };
        let compiled = compile(&config, &services, &options);
        for warning in &compiled.warnings {
            tracing::warn!(%warning, "L7 configuration");
        }
        let authn = AuthnTable::compile(
            &config,
            &AuthnContext {
                waypoint_namespace: &self.options.self_ref.namespace,
                waypoint_name: &self.options.self_ref.service_name,
                root_namespace: &self.options.root_namespace,
                services: &services,
            },
            &self.jwks,
        );
        let authz_options = self.authz_options();
        let authz = crate::authz::compile(&config, &services, &authz_options);
        for warning in authz.warnings() {
            tracing::warn!(%warning, "L7 authorization");
        }
        self.bindings.store(Arc::new(bindings));
        self.destination_labels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let externals = ExternalServices::compile(&config);
        let l7 = Arc::new(L7State {
            config,
            errors,
            compiled,
            services,
            authn,
            authz,
            providers: authz_options.providers,
            externals,
        });
        self.l7.store(Arc::clone(&l7));
        lock(&self.egress_tls).clear();
        let mut clusters = lock(&self.clusters);
        clusters.retain(|_, entry| {
            let policy = l7.compiled.destinations.cluster_policy(
                &entry.host,
                entry.subset.as_deref(),
                entry.port,
            );
            if &policy != entry.cluster.policy() {
                return false;
            }
            if let Some((external, port)) = l7.externals.find(&entry.host, entry.port) {
                if let Endpoints::Static(addresses) =
                    external.endpoints(&entry.host, port, SocketAddr::from(([0, 0, 0, 0], 0)))
                {
                    entry.cluster.set_endpoints(external_endpoints(&addresses));
                }
                // DNS endpoints are re-resolved by the requests that use them.
                return true;
            }
            let Some(service) = find_service(&state, &entry.host) else {
                return false;
            };
            entry.cluster.set_endpoints(endpoints(
                &state,
                &service,
                entry.port,
                &policy.subset_labels,
            ));
            true
        });
        let live: Vec<SocketAddr> = clusters
            .values()
            .flat_map(|e| e.cluster.endpoints().into_iter().map(|s| s.address))
            .collect();
        drop(clusters);
        for worker in &self.workers {
            worker.originate.retain(|addr| live.contains(addr));
        }
    }

    /// The cluster for `host`'s `port` (and `subset`), created on first use, with the mesh
    /// service of that hostname when there is one. `None` when neither a mesh service nor an
    /// external ServiceEntry (declaring `port`) has that hostname.
    pub fn cluster(
        &self,
        host: &str,
        subset: Option<&str>,
        port: u16,
        protocol: &str,
    ) -> Option<(Arc<Cluster>, Option<Arc<Service>>)> {
        let state = self.state.current();
        let service = find_service(&state, host);
        let l7 = self.l7.load();
        let external = l7.externals.find(host, port);
        if service.is_none() && external.is_none() {
            return None;
        }
        let wanted = ClusterKeyRef {
            port,
            protocol,
            subset,
            host,
        };
        let mut clusters = lock(&self.clusters);
        if let Some(entry) = clusters.get(&wanted as &dyn ClusterKeyView) {
            return Some((Arc::clone(&entry.cluster), service));
        }
        let name = cluster_name(port, protocol, subset, host);
        let policy = l7.compiled.destinations.cluster_policy(host, subset, port);
        let endpoints = match (external, &service) {
            (Some((external, external_port)), _) => {
                match external.endpoints(host, external_port, SocketAddr::from(([0, 0, 0, 0], 0))) {
                    Endpoints::Static(addresses) => external_endpoints(&addresses),
                    Endpoints::Dns(_) | Endpoints::OriginalDst(_) => Vec::new(),
                }
            }
            (None, Some(service)) => endpoints(&state, service, port, &policy.subset_labels),
            (None, None) => Vec::new(),
        };
        let cluster = Arc::new(Cluster::new(name, &policy, endpoints));
        let key = ClusterKey {
            port,
            protocol: protocol.to_owned(),
            subset: subset.map(str::to_owned),
            host: host.to_owned(),
        };
        clusters.insert(
            key,
            ClusterEntry {
                host: host.to_owned(),
                subset: subset.map(str::to_owned),
                port,
                cluster: Arc::clone(&cluster),
            },
        );
        Some((cluster, service))
    }

    /// Where a routed request goes: a mesh service, a ServiceEntry's endpoints,
    /// `PassthroughCluster` or `BlackHoleCluster` ([`crate::egress::select_upstream`] with
    /// this waypoint's state and outbound traffic policy).
    pub fn select_upstream<'a>(&self, l7: &'a L7State, query: &UpstreamQuery<'_>) -> Upstream<'a> {
        let state = self.state.current();
        crate::egress::select_upstream(
            query,
            &l7.externals,
            |host| state.service_by_hostname(host, None).is_some(),
            self.options.egress.outbound_policy,
        )
    }

    /// `PassthroughCluster`.
    pub fn passthrough_cluster(&self) -> Arc<Cluster> {
        Arc::clone(&self.passthrough)
    }

    /// Brings the endpoints of the external `cluster` up to date with `endpoints`: DNS names
    /// resolved (cached for the refresh rate). Returns the address to send to when it is
    /// fixed by the request (`NONE`: the original destination).
    pub async fn external_endpoints(
        &self,
        cluster: &Cluster,
        endpoints: &Endpoints,
    ) -> Result<Option<SocketAddr>, DnsError> {
        match endpoints {
            Endpoints::OriginalDst(addr) => Ok(Some(*addr)),
            Endpoints::Static(_) => Ok(None),
            Endpoints::Dns(names) => {
                let addresses = self.dns.resolve_all(names).await?;
                let current: Vec<SocketAddr> =
                    cluster.endpoints().into_iter().map(|e| e.address).collect();
                if current.len() != addresses.len()
                    || !addresses.iter().all(|a| current.contains(a))
                {
                    cluster.set_endpoints(external_endpoints(&addresses));
                }
                Ok(None)
            }
        }
    }

    /// The TLS the external `cluster` (of `host`) originates, per its DestinationRule policy:
    /// `None` for plain TCP. Built once per configuration.
    pub fn egress_tls(&self, cluster: &Cluster, host: &str) -> TlsResult {
        let Some(settings) = &cluster.policy().tls else {
            return Ok(None);
        };
        let mut cache = lock(&self.egress_tls);
        if let Some(found) = cache.get(cluster.name()) {
            return found.clone();
        }
        let built =
            crate::egress::tls::origination(settings, host, self.options.egress.ca_file.as_deref());
        if let Err(e) = &built {
            tracing::warn!(cluster = cluster.name(), error = %e, "TLS origination cannot be set up: requests fail");
        }
        cache.insert(cluster.name().to_owned(), built.clone());
        built
    }

    /// The clusters created so far, by name.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let mut out: Vec<Arc<Cluster>> = lock(&self.clusters)
            .values()
            .map(|e| Arc::clone(&e.cluster))
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// The source workload of a tunnel: the workload at `addr` whose identity is the one the
    /// peer proved, else the only workload with that identity. An address alone is never
    /// trusted, and an identity shared by several workloads elsewhere names none of them.
    pub fn source_workload(
        &self,
        addr: std::net::IpAddr,
        identity: &Identity,
    ) -> Option<Arc<Workload>> {
        let state = self.state.current();
        if let Some(w) = state
            .workload_by_addr(&self.options.network, addr)
            .filter(|w| &w.identity() == identity)
        {
            return Some(Arc::clone(w));
        }
        let mut found = state.workloads().filter(|w| &w.identity() == identity);
        match (found.next(), found.next()) {
            (Some(only), None) => Some(Arc::clone(only)),
            _ => None,
        }
    }

    /// The `destination_*` labels of requests to `service` served by `endpoint`, shared by
    /// every request with the same pair until the state changes.
    ///
    /// The cache is keyed by the addresses of the two state objects, and each entry holds
    /// them, so an address cannot be reused for another object while its entry lives; a state
    /// change brings new objects (new keys), and [`Core::refresh`] clears the cache.
    pub fn destination_labels(
        &self,
        service: Option<&Arc<Service>>,
        endpoint: Option<&Arc<Workload>>,
    ) -> Arc<DestinationLabels> {
        let key = (
            service.map_or(std::ptr::null(), Arc::as_ptr) as usize,
            endpoint.map_or(std::ptr::null(), Arc::as_ptr) as usize,
        );
        if let Some(entry) = self
            .destination_labels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(&entry.labels);
        }
        let labels = Arc::new(DestinationLabels::new(
            service.map(AsRef::as_ref),
            endpoint.map(AsRef::as_ref),
        ));
        let mut cache = self
            .destination_labels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A bound on distinct pairs: (services × endpoints) of one waypoint; cleared on change.
        if cache.len() >= MAX_LABEL_SETS {
            cache.clear();
        }
        cache.insert(
            key,
            LabelEntry {
                _service: service.cloned(),
                _endpoint: endpoint.cloned(),
                labels: Arc::clone(&labels),
            },
        );
        labels
    }

    /// The workload that owns `addr`.
    pub fn workload_at(&self, addr: SocketAddr) -> Option<Arc<Workload>> {
        self.state
            .current()
            .workload_by_addr(&self.options.network, addr.ip())
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The best service for a hostname (any namespace).
fn find_service(state: &MeshState, host: &str) -> Option<Arc<Service>> {
    state.service_by_hostname(host, None).cloned()
}

/// The services bound to this waypoint, as compile targets.
fn served_services(state: &MeshState, bindings: &Bindings) -> Vec<ServiceTarget> {
    let mut out: Vec<ServiceTarget> = state
        .services()
        .filter(|s| s.waypoint.as_ref().is_some_and(|gw| bindings.is_me(gw)))
        .map(|s| ServiceTarget {
            hostname: s.hostname.clone(),
            namespace: s.namespace.clone(),
            name: (!s.name.is_empty()).then(|| s.name.clone()),
            ports: s
                .ports
                .keys()
                .map(|&port| ServicePort { port, name: None })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    out
}

/// The labels a subset selector is matched against. The workload API carries no pod labels,
/// so these are the ones Istio derives its canonical name and revision from.
pub fn workload_labels(workload: &Workload) -> Vec<(&'static str, &str)> {
    let mut labels = Vec::new();
    if !workload.canonical_name.is_empty() {
        for key in [
            "app",
            "app.kubernetes.io/name",
            "service.istio.io/canonical-name",
        ] {
            labels.push((key, workload.canonical_name.as_str()));
        }
    }
    if !workload.canonical_revision.is_empty() {
        for key in [
            "version",
            "app.kubernetes.io/version",
            "service.istio.io/canonical-revision",
        ] {
            labels.push((key, workload.canonical_revision.as_str()));
        }
    }
    labels
}

/// Whether `workload` is selected by `selector` (every key present with the value).
pub fn selects(selector: &std::collections::BTreeMap<String, String>, workload: &Workload) -> bool {
    let labels = workload_labels(workload);
    selector
        .iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// The healthy endpoints of `service`'s `port` selected by `subset_labels`, as
/// `podIP:targetPort`.
fn endpoints(
    state: &MeshState,
    service: &Service,
    port: u16,
    subset_labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ClusterEndpoint> {
    state
        .endpoints(service)
        .into_iter()
        .filter(|e| e.workload.status == HealthStatus::Healthy)
        .filter(|e| selects(subset_labels, e.workload))
        .filter_map(|e| {
            let target = MeshState::target_port(service, &e, port)?;
            let ip = e.workload.workload_ips.first()?;
            Some(ClusterEndpoint {
                address: SocketAddr::new(*ip, target),
                uid: Arc::from(e.workload.uid.as_str()),
            })
        })
        .collect()
}

/// Cluster endpoints of external addresses (named by their address).
fn external_endpoints(addresses: &[SocketAddr]) -> Vec<ClusterEndpoint> {
    addresses
        .iter()
        .map(|a| ClusterEndpoint {
            address: *a,
            uid: Arc::from(a.to_string()),
        })
        .collect()
}

/// Watches `dir` and hands every changed version of its YAML objects to `core`. The first
/// load happens before this returns.
pub fn watch_config_dir(core: Arc<Core>, dir: PathBuf, interval: Duration) -> JoinHandle<()> {
    let mut last = fingerprint(&dir);
    load_config_dir(&core, &dir);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = fingerprint(&dir);
            if now != last {
                last = now;
                load_config_dir(&core, &dir);
            }
        }
    })
}

/// Loads `dir` into `core`; a directory that cannot be read keeps the previous configuration.
pub fn load_config_dir(core: &Core, dir: &Path) {
    match ConfigSet::load_dir(dir) {
        Ok((config, errors)) => {
            tracing::info!(
                dir = %dir.display(),
                objects = config.len(),
                errors = errors.len(),
                "L7 configuration loaded"
            );
            core.set_config(config, errors);
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot read the L7 configuration directory; keeping the previous one");
        }
    }
}

/// Loads the mesh config file at `path` into `core`: its `extensionProviders`. A missing
/// file is no providers; a file that cannot be read or parsed keeps the previous ones.
pub fn load_mesh_config(core: &Core, path: &Path) {
    match ExtensionProviders::load(path) {
        Ok((providers, errors)) => {
            for error in &errors {
                tracing::warn!(path = %path.display(), %error, "extension provider ignored");
            }
            tracing::info!(
                path = %path.display(),
                providers = providers.len(),
                errors = errors.len(),
                "mesh config loaded"
            );
            core.set_extension_providers(providers);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the mesh config; keeping the previous extension providers");
        }
    }
}

/// Watches the mesh config file at `path` and reloads it when it changes. The first load
/// happens before this returns.
pub fn watch_mesh_config(core: Arc<Core>, path: PathBuf, interval: Duration) -> JoinHandle<()> {
    let stamp = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    let mut last = stamp(&path);
    load_mesh_config(&core, &path);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamp(&path);
            if now != last {
                last = now;
                load_mesh_config(&core, &path);
            }
        }
    })
}

/// Names, sizes and modification times of the files of `dir`.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata() {
                out.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Watches the mesh state and refreshes `core` on every change.
pub fn watch_state(core: Arc<Core>, state: &StateHandle) -> JoinHandle<()> {
    let mut changes = state.subscribe();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            core.refresh();
        }
    })
}

/// Addresses the waypoint listens on; port 0 picks a free port.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddrs {
    /// HBONE (`connect_terminate`), 15008.
    pub hbone: SocketAddr,
}

/// A waypoint's HBONE listener, bound and ready to run.
pub struct Waypoint {
    core: Arc<Core>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hbone_config: hbone::Config,
    /// The threads that serve the connections; none = the runtime that runs [`Waypoint::run`].
    workers: Option<hbone::Workers>,
}

/// The prefix of the worker threads' names (`waypoint-0`, `waypoint-1`, …).
pub const WORKER_THREAD_NAME: &str = "waypoint";

impl std::fmt::Debug for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waypoint")
            .field("address", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Waypoint {
    /// Binds `connect_terminate` on `addrs.hbone` with the waypoint's certificate, and starts
    /// the worker threads of [`WaypointOptions::workers`].
    pub async fn bind(
        core: Arc<Core>,
        identities: &IdentityManager,
        roots: &[CertificateDer<'static>],
        hbone_config: hbone::Config,
        addrs: ListenAddrs,
    ) -> Result<Self, AppError> {
        let identity = core.options().identity.clone();
        let certs = identities
            .fetch(&identity)
            .await
            .map_err(|e| AppError::Certificate {
                identity: identity.clone(),
                reason: e.to_string(),
            })?;
        let tls =
            hbone::tls::server_config(certs, roots).map_err(|e| AppError::Hbone(e.to_string()))?;
        let listener = TcpListener::bind(addrs.hbone)
            .await
            .map_err(|source| AppError::Bind {
                what: "HBONE",
                addr: addrs.hbone,
                source,
            })?;
        let count = core.options().workers;
        let workers = match std::num::NonZeroUsize::new(count) {
            None => None,
            Some(n) => Some(
                hbone::Workers::start(n, WORKER_THREAD_NAME)
                    .map_err(|source| AppError::Workers { count, source })?,
            ),
        };
        Ok(Self {
            core,
            listener,
            tls,
            hbone_config,
            workers,
        })
    }

    /// The HBONE address.
    pub fn address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown.drain` is cancelled, then drains up to the deadline.
    pub async fn run(self, shutdown: hbone::Shutdown) -> Result<(), AppError> {
        let deadline = self.core.options().drain_deadline;
        let handler = ConnectTerminate::new(Arc::clone(&self.core));
        let server = hbone::Server::new(self.hbone_config, self.tls, handler)
            .map_err(|e| AppError::Hbone(e.to_string()))?;
        match &self.workers {
            Some(workers) => {
                server
                    .run_on(self.listener, workers, shutdown, deadline)
                    .await;
            }
            None => server.run(self.listener, shutdown, deadline).await,
        }
        Ok(())
    }
}
