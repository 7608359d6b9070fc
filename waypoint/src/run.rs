//! The waypoint as a process: certificates (istiod's CA, a local or a plug-in CA), the mesh
//! state (a local file in Istio ztunnel's schema, hot-reloaded, or istiod over delta xDS; see
//! [`crate::source`]), the L7 configuration (a directory, hot-reloaded, or watched on the
//! Kubernetes API server: [`crate::config::kubernetes`]), the chain's HBONE listener
//! and the admin, metrics and readiness servers. Readiness turns green once the state (from
//! istiod: its first full push), the configuration and the waypoint's certificate are loaded.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone::Identity;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ztunnel::admin::{LogLevel, ReadinessServer, Ready};
use ztunnel::identity::IdentityManager;
use ztunnel::run::Certificates;
use ztunnel::state::{LocalConfig, MeshState, StateHandle};
use ztunnel::xds::AdsClient;

use crate::admin::{AdminInputs, Server, StateOrigin};
use crate::app::{
    CONFIG_POLL_INTERVAL, Core, ListenAddrs, Waypoint, WaypointOptions, load_config_dir,
    watch_config_dir, watch_mesh_config, watch_state,
};
use crate::authn::JwksSettings;
use crate::config::kubernetes::{self, KubeSourceSettings};
use crate::egress::EgressSettings;
pub use crate::source::StateSource;
use crate::stages::inbound_vip::limits::DownstreamLimits;
use crate::telemetry::{AccessLog, RequestMetrics, TracingSettings};
pub use ztunnel::config::CaSource;

/// How often the state file is checked for changes.
const STATE_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Lifetime of the waypoint's certificate.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Everything the waypoint process needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The mesh state.
    pub state: StateSource,
    /// The directory of L7 configuration (Kubernetes YAML); none = default routes only.
    pub config_dir: Option<PathBuf>,
    /// Istio's mesh config file, read for its `extensionProviders` (the external authorizers
    /// of CUSTOM AuthorizationPolicies) and watched for changes; none = no providers.
    pub mesh_config: Option<PathBuf>,
    /// Watch the L7 configuration on the Kubernetes API server instead of a directory;
    /// `None` (the default) = `config_dir`.
    pub kubernetes: Option<KubeSource>,
    /// The waypoint's namespace.
    pub namespace: String,
    /// The waypoint's name (its Gateway and Service).
    pub name: String,
    /// The service account whose identity the waypoint presents.
    pub service_account: String,
    /// The trust domain.
    pub trust_domain: String,
    /// The cluster's DNS domain.
    pub domain_suffix: String,
    /// The waypoint's own addresses.
    pub instance_ips: Vec<IpAddr>,
    /// Certificates.
    pub ca: CaSource,
    /// HBONE (15008).
    pub hbone_addr: SocketAddr,
    /// Admin (15000, localhost).
    pub admin_addr: SocketAddr,
    /// Metrics (15020).
    pub metrics_addr: SocketAddr,
    /// Readiness (15021).
    pub readiness_addr: SocketAddr,
    /// How long connections get to finish on shutdown.
    pub drain_deadline: Duration,
    /// The mesh's root namespace (Istio's `meshConfig.rootNamespace`).
    pub root_namespace: String,
    /// How RequestAuthentication `jwksUri` key sets are fetched and kept.
    pub jwks: JwksSettings,
    /// Traffic to destinations outside the mesh (ServiceEntries, outbound traffic policy).
    pub egress: EgressSettings,
    /// Limits of the downstream HTTP connections (header size and count, timeouts,
    /// connections, HTTP/2 streams and abuse).
    pub downstream: DownstreamLimits,
    /// Trace sampling and OTLP span export (default: 1% sampling, no export).
    pub tracing: TracingSettings,
    /// Whether one service's CUSTOM AuthorizationPolicies may name different extension
    /// providers (istiod's `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`; default false: such
    /// a service denies every request).
    pub multiple_custom_authz_providers: bool,
    /// Worker threads serving the HBONE connections, each with its own single-threaded
    /// runtime; 0 serves them on the runtime `start` runs on (see [`WaypointOptions::workers`]).
    pub workers: usize,
}

/// The Kubernetes source of the L7 configuration: a client of the API server and what to
/// watch (see [`crate::config::kubernetes`]).
#[derive(Clone)]
pub struct KubeSource {
    /// The API server's client (in-cluster config or KUBECONFIG).
    pub client: kube::Client,
    /// Namespaces and timing.
    pub settings: KubeSourceSettings,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Errors starting the waypoint.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The identity is not a valid SPIFFE identity.
    #[error("invalid identity: {0}")]
    Identity(String),
    /// The CA could not be loaded or created.
    #[error("certificate authority: {0}")]
    Ca(String),
    /// The mesh state could not be loaded.
    #[error("mesh state {origin}: {reason}")]
    State {
        /// The file, or `LOCAL_XDS`.
        origin: String,
        /// Why.
        reason: String,
    },
    /// A listener could not start.
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    /// A server could not bind.
    #[error("cannot bind the {what} server on {addr}: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A started waypoint.
pub struct Running {
    /// The shared core (state, routes, clusters, telemetry).
    pub core: Arc<Core>,
    /// Where `connect_terminate` listens.
    pub hbone: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    /// The metrics server.
    pub metrics: SocketAddr,
    /// The readiness server.
    pub readiness: SocketAddr,
    /// Cancelled by `/quitquitquit`; cancel it to shut down.
    pub quit: CancellationToken,
    /// The readiness gate behind `/healthz/ready`.
    pub ready: Ready,
    shutdown: hbone::Shutdown,
    servers: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    main: JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("hbone", &self.hbone)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// Starts the waypoint. Everything is bound before anything runs.
pub async fn start(
    config: RunConfig,
    log_level: Option<Arc<dyn LogLevel>>,
    access_log: AccessLog,
) -> Result<Running, RunError> {
    let identity = Identity::new(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )
    .map_err(|e| RunError::Identity(e.to_string()))?;
    let certificates = Certificates::from_source(&config.ca, &config.trust_domain)
        .await
        .map_err(|e| RunError::Ca(e.to_string()))?;
    let roots = certificates.roots;
    let identities = Arc::new(IdentityManager::new(certificates.source, CERT_TTL));
    let ready = Ready::new();
    let state_task = ready.register("state");
    let config_task = ready.register("config");
    let cert_task = ready.register("certificate");

    let initial = match &config.state {
        StateSource::File(path) => {
            ztunnel::state::load_file(path).map_err(|e| RunError::State {
                origin: path.display().to_string(),
                reason: e.to_string(),
            })?
        }
        StateSource::Inline(yaml) => LocalConfig::from_yaml(yaml)
            .and_then(LocalConfig::into_state)
            .map_err(|e| RunError::State {
                origin: "LOCAL_XDS".into(),
                reason: e.to_string(),
            })?,
        // Empty until istiod's first push.
        StateSource::Xds(_) => MeshState::default(),
    };
    let handle = StateHandle::new(initial);
    let mut options = WaypointOptions::new(&config.namespace, &config.name, identity);
    options.self_ref.instance_ips = config.instance_ips.clone();
    options.domain_suffix = config.domain_suffix.clone();
    options.drain_deadline = config.drain_deadline;
    options.root_namespace = config.root_namespace.clone();
    options.jwks = config.jwks.clone();
    options.egress = config.egress.clone();
    options.downstream = config.downstream;
    options.tracing = config.tracing.clone();
    options.multiple_custom_authz_providers = config.multiple_custom_authz_providers;
    options.workers = config.workers;
    let pool = hbone::Pool::new(hbone::Config::default(), roots.clone())
        .map_err(|e| RunError::Ca(e.to_string()))?;
    let metrics = Arc::new(RequestMetrics::new());
    let core = Core::new(
        handle.clone(),
        options,
        Arc::clone(&identities),
        pool,
        metrics,
        access_log,
    );

    // Stops the admin, metrics and readiness servers and the xDS client; also when start-up
    // fails from here on.
    let servers = CancellationToken::new();
    let stop_on_error = servers.clone().drop_guard();
    // Subscribed before any source can change the state.
    let mut tasks = vec![watch_state(Arc::clone(&core), &handle)];
    let origin = match &config.state {
        StateSource::File(path) => {
            tasks.push(ztunnel::state::watch_file(
                path.clone(),
                handle.clone(),
                STATE_POLL_INTERVAL,
            ));
            state_task.done();
            StateOrigin::File(path.clone())
        }
        StateSource::Inline(_) => {
            state_task.done();
            StateOrigin::Inline
        }
        StateSource::Xds(xds) => {
            let client = AdsClient::new((**xds).clone(), handle.clone());
            let mut synced = client.readiness();
            let origin = StateOrigin::Xds {
                address: xds.control_plane.address.to_string(),
                synced: client.readiness(),
            };
            tasks.push(tokio::spawn(client.run(servers.clone())));
            let core = Arc::clone(&core);
            tasks.push(tokio::spawn(async move {
                if synced.wait().await {
                    // Ready means the first push is what the chain serves, not only applied
                    // to the state.
                    core.refresh();
                    tracing::info!("mesh state received from istiod");
                    state_task.done();
                }
            }));
            origin
        }
    };
    if let Some(path) = &config.mesh_config {
        // Loaded before readiness: the first load happens before this returns.
        tasks.push(watch_mesh_config(
            Arc::clone(&core),
            path.clone(),
            CONFIG_POLL_INTERVAL,
        ));
    }
    if let Some(source) = &config.kubernetes {
        // Ready once every kind is listed and the first configuration applied.
        let core = Arc::clone(&core);
        tasks.extend(kubernetes::watch(
            source.client.clone(),
            &source.settings,
            move |config, errors| core.set_config(config, errors),
            Some(config_task),
        ));
    } else {
        if let Some(dir) = &config.config_dir {
            load_config_dir(&core, dir);
            tasks.push(watch_config_dir(
                Arc::clone(&core),
                dir.clone(),
                CONFIG_POLL_INTERVAL,
            ));
        }
        config_task.done();
    }

    let waypoint = Waypoint::bind(
        Arc::clone(&core),
        &identities,
        &roots,
        hbone::Config::default(),
        ListenAddrs {
            hbone: config.hbone_addr,
        },
    )
    .await?;
    cert_task.done();
    let hbone_address = waypoint.address();
    let quit = CancellationToken::new();
    let admin = Server::admin(
        config.admin_addr,
        AdminInputs {
            core: Arc::clone(&core),
            hbone_address: Some(hbone_address),
            identities: Arc::clone(&identities),
            roots: roots.clone(),
            state: origin,
            log_level,
            quit: quit.clone(),
        },
    )
    .await
    .map_err(|source| RunError::Bind {
        what: "admin",
        addr: config.admin_addr,
        source,
    })?;
    let metrics_server = Server::metrics(config.metrics_addr, Arc::clone(&core))
        .await
        .map_err(|source| RunError::Bind {
            what: "metrics",
            addr: config.metrics_addr,
            source,
        })?;
    let readiness = ReadinessServer::new(config.readiness_addr, ready.clone())
        .await
        .map_err(|source| RunError::Bind {
            what: "readiness",
            addr: config.readiness_addr,
            source,
        })?;
    let (admin_addr, metrics_addr, readiness_addr) = (
        admin.address(),
        metrics_server.address(),
        readiness.address(),
    );
    tasks.push(tokio::spawn(admin.run(servers.clone())));
    tasks.push(tokio::spawn(metrics_server.run(servers.clone())));
    tasks.push(tokio::spawn(readiness.run(servers.clone())));
    let shutdown = hbone::Shutdown::default();
    let run_shutdown = shutdown.clone();
    stop_on_error.disarm();
    let main = tokio::spawn(async move {
        if let Err(e) = waypoint.run(run_shutdown).await {
            tracing::error!(error = %e, "waypoint stopped");
        }
    });
    tracing::info!(
        hbone = %hbone_address,
        admin = %admin_addr,
        metrics = %metrics_addr,
        readiness = %readiness_addr,
        "waypoint started"
    );
    Ok(Running {
        core,
        hbone: hbone_address,
        admin: admin_addr,
        metrics: metrics_addr,
        readiness: readiness_addr,
        quit,
        ready,
        shutdown,
        servers,
        tasks,
        main,
    })
}

impl Running {
    /// Drains: the HBONE listener stops accepting and sends GOAWAY, connections get the drain
    /// deadline to finish, then everything stops.
    pub async fn shutdown(self) {
        self.shutdown.drain.cancel();
        let deadline = self.core.options().drain_deadline + Duration::from_secs(1);
        if tokio::time::timeout(deadline, self.main).await.is_err() {
            self.shutdown.force.cancel();
        }
        self.servers.cancel();
        for task in self.tasks {
            task.abort();
        }
    }
}
