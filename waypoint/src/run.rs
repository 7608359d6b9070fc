//! The waypoint as a process: certificates (local or plug-in CA), the mesh state (a local file
//! in Istio ztunnel's schema, hot-reloaded), the L7 configuration directory (hot-reloaded), the
//! chain's HBONE listener and the admin, metrics and readiness servers. Readiness turns green
//! once the state, the configuration and the waypoint's certificate are loaded.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, LocalCa};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ztunnel::admin::{LogLevel, ReadinessServer, Ready};
use ztunnel::identity::IdentityManager;
use ztunnel::state::StateHandle;

use crate::admin::{AdminInputs, Server};
use crate::app::{
    CONFIG_POLL_INTERVAL, Core, ListenAddrs, Waypoint, WaypointOptions, load_config_dir,
    watch_config_dir, watch_state,
};
use crate::authn::JwksSettings;
use crate::telemetry::{AccessLog, RequestMetrics};

/// How often the state file is checked for changes.
const STATE_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Lifetime of the waypoint's certificate from the local CA.
const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where certificates come from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A local CA whose root is generated into (or loaded from) this directory.
    Local(PathBuf),
    /// Istio's plug-in CA layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`).
    Plugin(PathBuf),
}

/// Everything the waypoint process needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The mesh state file (Istio ztunnel's local config schema).
    pub state_path: PathBuf,
    /// The directory of L7 configuration (Kubernetes YAML); none = default routes only.
    pub config_dir: Option<PathBuf>,
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
    #[error("mesh state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
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
    let ca = match &config.ca {
        CaSource::Local(dir) => LocalCa::load_or_generate(dir, &config.trust_domain),
        CaSource::Plugin(dir) => LocalCa::from_plugin_dir(dir, &config.trust_domain),
    }
    .map_err(|e| RunError::Ca(e.to_string()))?;
    let roots = ca.roots().to_vec();
    let identities = Arc::new(IdentityManager::new(ca, CERT_TTL));
    let ready = Ready::new();
    let state_task = ready.register("state");
    let config_task = ready.register("config");
    let cert_task = ready.register("certificate");

    let state = ztunnel::state::load_file(&config.state_path).map_err(|e| RunError::State {
        path: config.state_path.clone(),
        reason: e.to_string(),
    })?;
    let handle = StateHandle::new(state);
    let mut options = WaypointOptions::new(&config.namespace, &config.name, identity);
    options.self_ref.instance_ips = config.instance_ips.clone();
    options.domain_suffix = config.domain_suffix.clone();
    options.drain_deadline = config.drain_deadline;
    options.root_namespace = config.root_namespace.clone();
    options.jwks = config.jwks.clone();
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

    let mut tasks = Vec::new();
    tasks.push(ztunnel::state::watch_file(
        config.state_path.clone(),
        handle.clone(),
        STATE_POLL_INTERVAL,
    ));
    state_task.done();
    tasks.push(watch_state(Arc::clone(&core), &handle));
    if let Some(dir) = &config.config_dir {
        load_config_dir(&core, dir);
        tasks.push(watch_config_dir(
            Arc::clone(&core),
            dir.clone(),
            CONFIG_POLL_INTERVAL,
        ));
    }
    config_task.done();

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
    let readiness = ReadinessServer::new(config.readiness_addr, ready)
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
    let servers = CancellationToken::new();
    tasks.push(tokio::spawn(admin.run(servers.clone())));
    tasks.push(tokio::spawn(metrics_server.run(servers.clone())));
    tasks.push(tokio::spawn(readiness.run(servers.clone())));
    let shutdown = hbone::Shutdown::default();
    let run_shutdown = shutdown.clone();
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
