//! The node proxy as a process: configuration → mesh state → certificates → listeners → drain.
//!
//! [`Proxy::start`] takes the [`Config`] read from the environment and:
//!
//! 1. binds the readiness (15021), metrics (15020) and admin (15000, localhost) servers first
//!    and starts them, with the readiness gate holding `state`, `certificates` and `workloads`
//!    pending, so `/healthz/ready` answers 503 until the proxy can take traffic;
//! 2. loads the mesh state (`LOCAL_XDS_PATH`, hot-reloaded, or inline `LOCAL_XDS`);
//! 3. serves the local workloads — in **shared** mode every HBONE workload of this node
//!    (`node` equal to `NODE_NAME`; all of them when `NODE_NAME` is unset), each on its own
//!    address with the configured ports; in **dedicated** mode the one workload named by
//!    `PROXY_WORKLOAD_INFO`, on the configured listener addresses. Each workload's certificate
//!    is issued before its listeners start. Workloads that appear, change or leave with a state
//!    change are started, replaced or drained.
//!
//! [`Proxy::drain`] is the graceful shutdown (SIGTERM, Ctrl-C or `POST /quitquitquit`):
//! readiness turns 503, every listener stops accepting, HBONE peers get `GOAWAY`, open
//! connections may finish until the drain deadline and are then closed; the admin, metrics and
//! readiness servers stop last.
//!
//! The decision of which workloads are local, [`local_workloads`], is a pure function.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{
    AdminInputs, AdminServer, LogLevel, MetricsServer, ReadinessServer, Ready, ReadyTask,
    WorkloadStateSource,
};
use crate::app::{AppError, ListenAddrs, Node, WorkloadProxy};
use crate::ca_client::CaClient;
use crate::config::{CaSource, Config, LocalState, ProxyMode, WorkloadInfo};
use crate::identity::{CertificateSource, IdentityManager};
use crate::inpod::manager::InpodManager;
use crate::inpod::zds::ZdsClient;
use crate::outbound::request::OutboundContext;
use crate::state::{
    self, LoadError, LocalConfig, MeshState, StateHandle, TunnelProtocol, Workload,
};
use crate::xds::{AdsClient, Readiness};

/// How often failed workloads are retried and a dedicated proxy looks for its workload.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// How often the local config file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The mesh state did not load.
    #[error(transparent)]
    State(#[from] LoadError),
    /// There is no source of mesh state.
    #[error(
        "no mesh state source: set XDS_ADDRESS (istiod), LOCAL_XDS_PATH (a file) or LOCAL_XDS \
         (inline YAML)"
    )]
    NoStateSource,
    /// The CA could not be set up.
    #[error(transparent)]
    Cert(#[from] hbone::cert::CertError),
    /// The CA's trust roots could not be read.
    #[error("CA trust roots: {0}")]
    Roots(#[from] crate::xds::ChannelError),
    /// The node could not be set up.
    #[error(transparent)]
    App(#[from] AppError),
    /// In-pod mode cannot work on this system.
    #[error(transparent)]
    Inpod(#[from] crate::inpod::CapabilityError),
    /// An admin, metrics or readiness server could not bind.
    #[error("failed to bind the {server} server on {addr}: {source}")]
    Bind {
        /// Which server.
        server: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// Where certificates come from and which roots peers are verified against.
pub struct Certificates {
    /// The issuer.
    pub source: Box<dyn CertificateSource>,
    /// The trust roots.
    pub roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// The certificate source of `config`: Istio's CA (`CA_ADDRESS`, roots from `CA_ROOT_CA`),
    /// the local CA (`LOCAL_CA_DIR`, generated on first use) or Istio's plug-in CA layout
    /// (`CA_PLUGIN_DIR`).
    pub async fn from_config(config: &Config) -> Result<Self, RunError> {
        Self::from_source(&config.ca, &config.trust_domain).await
    }

    /// The certificates of `source`; a local or plug-in CA issues in `trust_domain`.
    pub async fn from_source(source: &CaSource, trust_domain: &str) -> Result<Self, RunError> {
        let ca = match source {
            CaSource::Istio(remote) => {
                let roots = crate::xds::channel::load_roots(&remote.trust_roots).await?;
                return Ok(Self {
                    source: Box::new(CaClient::new((**remote).clone())),
                    roots,
                });
            }
            CaSource::Local(dir) => hbone::LocalCa::load_or_generate(dir, trust_domain)?,
            CaSource::Plugin(dir) => hbone::LocalCa::from_plugin_dir(dir, trust_domain)?,
        };
        let roots = ca.roots().to_vec();
        Ok(Self {
            source: Box::new(ca),
            roots,
        })
    }
}

/// The local workloads of `state` for a proxy in `mode` on node `node`, by uid.
///
/// Shared mode: HBONE workloads with an address whose `node` is `node` (every HBONE workload
/// with an address when `node` is `None`). Dedicated mode: the workload with the given
/// namespace and name, provided its service account matches (a different one is not ours:
/// serving it would hand out the wrong identity).
pub fn local_workloads(
    state: &MeshState,
    mode: &ProxyMode,
    node: Option<&str>,
) -> BTreeMap<String, Arc<Workload>> {
    let mut out = BTreeMap::new();
    for w in state.workloads() {
        let local = match mode {
            ProxyMode::Shared => {
                w.protocol == TunnelProtocol::Hbone
                    && !w.workload_ips.is_empty()
                    && node.is_none_or(|n| w.node == n)
            }
            ProxyMode::Dedicated(WorkloadInfo {
                namespace,
                name,
                service_account,
            }) => {
                w.namespace == *namespace
                    && w.name == *name
                    && w.service_account() == service_account.as_str()
            }
        };
        if local {
            out.insert(w.uid.clone(), w.clone());
        }
    }
    out
}

/// Where a workload's listeners bind: its own address with the configured ports (shared) or
/// the configured addresses (dedicated).
fn listen_addrs(config: &Config, workload: &Workload) -> Option<ListenAddrs> {
    let l = &config.listeners;
    match config.proxy_mode {
        ProxyMode::Shared => {
            let ip = *workload.workload_ips.first()?;
            let at = |addr: SocketAddr| SocketAddr::new(ip, addr.port());
            Some(ListenAddrs {
                hbone: at(l.inbound_hbone),
                outbound: Some(at(l.outbound)),
                plaintext: Some(at(l.inbound_plaintext)),
                socks5: l.socks5.map(at),
                dns: None,
            })
        }
        ProxyMode::Dedicated(_) => Some(ListenAddrs {
            hbone: l.inbound_hbone,
            outbound: Some(l.outbound),
            plaintext: Some(l.inbound_plaintext),
            socks5: l.socks5,
            dns: None,
        }),
    }
}

/// The admin, metrics and readiness addresses of a running proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Admin (`/config_dump`, `/logging`, `/quitquitquit`).
    pub admin: SocketAddr,
    /// Prometheus metrics (`/stats/prometheus`, `/metrics`).
    pub metrics: SocketAddr,
    /// Readiness (`/healthz/ready`).
    pub readiness: SocketAddr,
}

/// The listener addresses of one served workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedWorkload {
    /// The workload's uid.
    pub uid: String,
    /// Inbound HBONE.
    pub inbound: SocketAddr,
    /// Outbound capture.
    pub outbound: Option<SocketAddr>,
    /// Inbound plaintext.
    pub plaintext: Option<SocketAddr>,
    /// SOCKS5.
    pub socks5: Option<SocketAddr>,
}

/// The served workloads: the running listeners and the version of the workload they run for.
type Served = Arc<Mutex<BTreeMap<String, (Arc<Workload>, WorkloadProxy)>>>;

/// A running node proxy.
#[derive(Debug)]
pub struct Proxy {
    endpoints: Endpoints,
    ready: Ready,
    quit: CancellationToken,
    servers: CancellationToken,
    served: Served,
    reconcile: Option<JoinHandle<()>>,
    reload: Option<JoinHandle<()>>,
    stop_reconcile: CancellationToken,
    stop_xds: Option<CancellationToken>,
    state: StateHandle,
    inpod: Option<Arc<InpodManager>>,
}

impl Proxy {
    /// Starts the proxy with certificates from `certificates`.
    pub async fn start(
        config: Config,
        certificates: Certificates,
        log_level: Arc<dyn LogLevel>,
    ) -> Result<Self, RunError> {
        let config = Arc::new(config);
        let ready = Ready::new();
        let state_task = ready.register("state");
        let certs_task = ready.register("certificates");
        let workloads_task = ready.register("workloads");

        // Readiness first, so probes get an answer (503) while the rest starts.
        let servers = CancellationToken::new();
        let l = &config.listeners;
        let readiness = ReadinessServer::new(l.readiness, ready.clone())
            .await
            .map_err(|source| RunError::Bind {
                server: "readiness",
                addr: l.readiness,
                source,
            })?;

        let handle = StateHandle::new(MeshState::default());
        let identities = Arc::new(IdentityManager::new(certificates.source, config.secret_ttl));
        let node = Node::new(
            handle.clone(),
            identities.clone(),
            certificates.roots.clone(),
            config.hbone.clone(),
            OutboundContext::from_config(&config),
        )?
        .with_drain_deadline(config.drain_deadline);

        let quit = CancellationToken::new();
        let workload_state = WorkloadStateSource::default();
        let metrics = MetricsServer::new(l.metrics, node.metrics().clone())
            .await
            .map_err(|source| RunError::Bind {
                server: "metrics",
                addr: l.metrics,
                source,
            })?;
        let admin = AdminServer::new(
            l.admin,
            AdminInputs {
                state: handle.clone(),
                identities: identities.clone(),
                roots: certificates.roots,
                config: config_summary(&config),
                log_level,
                quit: quit.clone(),
                workload_state: workload_state.clone(),
            },
        )
        .await
        .map_err(|source| RunError::Bind {
            server: "admin",
            addr: l.admin,
            source,
        })?;
        let endpoints = Endpoints {
            admin: admin.address(),
            metrics: metrics.address(),
            readiness: readiness.address(),
        };
        tokio::spawn(readiness.run(servers.clone()));
        tokio::spawn(metrics.run(servers.clone()));
        tokio::spawn(admin.run(servers.clone()));

        // The state: from a local file or inline YAML now, or from istiod in the background.
        let mut stop_xds = None;
        let (reload, xds_ready) = match (&config.local_state, &config.xds) {
            (LocalState::File(path), _) => {
                // Watch first, so that a change while loading is picked up.
                let reload = state::watch_file(path, handle.clone(), RELOAD_INTERVAL);
                match state::load_file(path) {
                    Ok(initial) => {
                        handle.swap(initial);
                        (Some(reload), None)
                    }
                    Err(e) => {
                        reload.abort();
                        return Err(e.into());
                    }
                }
            }
            (LocalState::Inline(yaml), _) => {
                handle.swap(LocalConfig::from_yaml(yaml)?.into_state()?);
                (None, None)
            }
            (LocalState::None, Some(xds)) => {
                let client = AdsClient::new((**xds).clone(), handle.clone());
                let ready = client.readiness();
                let stop = CancellationToken::new();
                tokio::spawn(client.run(stop.clone()));
                stop_xds = Some(stop);
                (None, Some(ready))
            }
            (LocalState::None, None) => return Err(RunError::NoStateSource),
        };

        let served: Served = Arc::default();
        let stop_reconcile = CancellationToken::new();
        if let Some(inpod) = &config.inpod {
            // Pods come from the node agent; their proxies start once the state has them.
            crate::inpod::verify_capabilities(inpod.mark)?;
            let node = match inpod.dns_capture {
                true => node.with_dns(dns_config(inpod)),
                false => node,
            };
            let manager = InpodManager::new(node, handle.clone(), inpod.mark);
            let dump = Arc::downgrade(&manager);
            let _ = workload_state.set(Box::new(move || {
                let pods = dump.upgrade().map(|m| m.status_now()).unwrap_or_default();
                workload_state_json(&pods)
            }));
            manager.watch_state(stop_reconcile.clone());
            let client = ZdsClient::new(inpod.zds.clone(), manager.clone());
            let snapshot = ready.register("inpod");
            let mut zds_ready = client.readiness();
            tokio::spawn(client.run(stop_reconcile.clone()));
            let stop = stop_reconcile.clone();
            tokio::spawn(async move {
                if let Some(mut xds) = xds_ready {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        ready = xds.wait() => if !ready { return },
                    }
                }
                drop((state_task, certs_task, workloads_task));
                tokio::select! {
                    () = stop.cancelled() => {}
                    ready = zds_ready.wait() => if ready { drop(snapshot) },
                }
            });
            return Ok(Self {
                endpoints,
                ready,
                quit,
                servers,
                served,
                reconcile: None,
                reload,
                stop_reconcile,
                stop_xds,
                state: handle,
                inpod: Some(manager),
            });
        }
        let reconciler = Reconciler {
            config: config.clone(),
            node,
            identities,
            served: served.clone(),
        };
        let startup = Startup {
            state: state_task,
            certificates: certs_task,
            workloads: workloads_task,
            xds: xds_ready,
        };
        let reconcile =
            tokio::spawn(reconciler.run(handle.clone(), startup, stop_reconcile.clone()));
        Ok(Self {
            endpoints,
            ready,
            quit,
            servers,
            served,
            reconcile: Some(reconcile),
            reload,
            stop_reconcile,
            stop_xds,
            state: handle,
            inpod: None,
        })
    }

    /// The admin, metrics and readiness addresses.
    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    /// The readiness gate; [`Ready::wait`] waits for start-up to complete.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The mesh state.
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// Cancelled by `POST /quitquitquit`.
    pub fn quit_requested(&self) -> CancellationToken {
        self.quit.clone()
    }

    /// The pods announced by the node agent and their proxies (in-pod mode; empty otherwise).
    pub async fn pods(&self) -> Vec<crate::inpod::manager::PodStatus> {
        match &self.inpod {
            Some(manager) => manager.status().await,
            None => Vec::new(),
        }
    }

    /// The workloads served now, by uid.
    pub fn workloads(&self) -> Vec<ServedWorkload> {
        let served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        served
            .values()
            .map(|(_, p)| ServedWorkload {
                uid: p.uid.clone(),
                inbound: p.inbound,
                outbound: p.outbound,
                plaintext: p.plaintext,
                socks5: p.socks5,
            })
            .collect()
    }

    /// Graceful shutdown: not ready, stop accepting everywhere, let connections finish until
    /// the drain deadline, close the rest, then stop the admin, metrics and readiness servers.
    pub async fn drain(mut self) {
        let _draining = self.ready.register("draining");
        self.stop_reconcile.cancel();
        if let Some(reconcile) = self.reconcile.take() {
            let _ = reconcile.await;
        }
        if let Some(reload) = &self.reload {
            reload.abort();
        }
        let proxies: Vec<WorkloadProxy> = {
            let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *served)
                .into_values()
                .map(|(_, p)| p)
                .collect()
        };
        tracing::info!(workloads = proxies.len(), "draining");
        for p in &proxies {
            p.shutdown();
        }
        if let Some(inpod) = &self.inpod {
            inpod.drain().await;
        }
        for p in &proxies {
            p.drain().await;
        }
        tracing::info!("drained");
        self.servers.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop_xds {
            stop.cancel();
        }
        self.stop_reconcile.cancel();
        self.servers.cancel();
        if let Some(reload) = &self.reload {
            reload.abort();
        }
    }
}

/// Keeps the served workloads in line with the mesh state.
struct Reconciler {
    config: Arc<Config>,
    node: Node,
    identities: Arc<IdentityManager>,
    served: Served,
}

impl Reconciler {
    /// Starts, replaces and drains workloads to match `state`; returns whether a local workload
    /// is missing or failed to start (so a retry is due).
    async fn reconcile(&self, state: &MeshState) -> bool {
        let wanted = local_workloads(
            state,
            &self.config.proxy_mode,
            self.config.node_name.as_deref(),
        );
        // Gone or changed: drain in the background.
        let leaving: Vec<(Arc<Workload>, WorkloadProxy)> = {
            let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            let stale: Vec<String> = served
                .iter()
                .filter(|(uid, (w, _))| wanted.get(*uid).is_none_or(|now| !same_listeners(w, now)))
                .map(|(uid, _)| uid.clone())
                .collect();
            stale
                .into_iter()
                .filter_map(|uid| served.remove(&uid))
                .collect()
        };
        for (w, proxy) in leaving {
            tracing::info!(workload = %w.uid, "workload left or changed, draining its listeners");
            tokio::spawn(async move { proxy.drain().await });
        }
        let mut retry = wanted.is_empty();
        for (uid, w) in &wanted {
            let running = self
                .served
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(uid);
            if running {
                continue;
            }
            let Some(addrs) = listen_addrs(&self.config, w) else {
                continue;
            };
            match self.node.add_workload_on(w, addrs).await {
                Ok(proxy) => {
                    tracing::info!(
                        workload = %uid,
                        identity = %w.identity(),
                        inbound = %proxy.inbound,
                        "serving workload"
                    );
                    self.served
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(uid.clone(), (w.clone(), proxy));
                }
                Err(e) => {
                    tracing::error!(workload = %uid, error = %e, "workload listeners failed to start");
                    retry = true;
                }
            }
        }
        // Certificates of identities no served workload has any more.
        let in_use: HashSet<hbone::Identity> = self
            .served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(w, _)| w.identity())
            .collect();
        for (id, _) in self.identities.certificates() {
            if !in_use.contains(&id) {
                self.identities.forget(&id);
            }
        }
        retry
    }

    /// Completes start-up (the first state from istiod, when it is the source; then every local
    /// workload's certificate and listeners), then reconciles on every state change, and every
    /// [`RETRY_INTERVAL`] while something is missing.
    async fn run(self, handle: StateHandle, startup: Startup, stop: CancellationToken) {
        let Startup {
            state,
            certificates,
            workloads,
            xds,
        } = startup;
        if let Some(mut xds) = xds {
            tokio::select! {
                () = stop.cancelled() => return,
                ready = xds.wait() => if !ready { return },
            }
        }
        // Subscribed before the first pass, so no change is missed.
        let mut changes = handle.subscribe();
        drop(state);
        let mut retry = self.reconcile(&handle.current()).await;
        drop(certificates);
        // A dedicated proxy is not ready before its workload is served.
        let mut waiting = match self.config.proxy_mode {
            ProxyMode::Dedicated(_) if self.is_idle() => Some(workloads),
            _ => {
                drop(workloads);
                None
            }
        };
        loop {
            let tick = async {
                if retry {
                    tokio::time::sleep(RETRY_INTERVAL).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                () = tick => {}
            }
            retry = self.reconcile(&handle.current()).await;
            if !self.is_idle() {
                waiting.take();
            }
        }
    }

    /// Whether no workload is served.
    fn is_idle(&self) -> bool {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// `workloadState` of `/config_dump`: each pod by uid, `Up` once its proxy runs, `Pending`
/// while it waits for its workload in the mesh state.
fn workload_state_json(pods: &[crate::inpod::manager::PodStatus]) -> serde_json::Value {
    pods.iter()
        .map(|p| {
            let state = if p.running { "Up" } else { "Pending" };
            (
                p.uid.clone(),
                serde_json::json!({ "state": state, "workload": p.workload, "netns": p.netns }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The DNS proxy's settings: the name servers of the configured resolv.conf (none, with a
/// warning, when it cannot be read: mesh names are still answered).
fn dns_config(inpod: &crate::config::InpodConfig) -> crate::dns::DnsConfig {
    let conf = crate::dns::ResolvConf::read(&inpod.resolv_conf).unwrap_or_else(|error| {
        tracing::warn!(
            path = %inpod.resolv_conf.display(),
            %error,
            "no upstream resolvers: only mesh hostnames will resolve"
        );
        crate::dns::ResolvConf::default()
    });
    crate::dns::DnsConfig::from_resolv_conf(&conf, &inpod.cluster_domain)
}

/// The readiness tasks start-up completes, and the xDS readiness it waits for first.
struct Startup {
    state: ReadyTask,
    certificates: ReadyTask,
    workloads: ReadyTask,
    xds: Option<Readiness>,
}

/// Whether the listeners started for `before` still fit `after`: same addresses and identity.
fn same_listeners(before: &Workload, after: &Workload) -> bool {
    before.workload_ips == after.workload_ips && before.identity() == after.identity()
}

/// The effective configuration, as `config` in `/config_dump`.
fn config_summary(config: &Config) -> serde_json::Value {
    let l = &config.listeners;
    let mode = match &config.proxy_mode {
        ProxyMode::Shared => serde_json::json!("shared"),
        ProxyMode::Dedicated(w) => serde_json::json!({
            "dedicated": format!("{}/{}/{}", w.namespace, w.name, w.service_account)
        }),
    };
    let state = match &config.local_state {
        LocalState::File(p) => serde_json::json!({ "file": p.display().to_string() }),
        LocalState::Inline(_) => serde_json::json!("inline"),
        LocalState::None => serde_json::Value::Null,
    };
    serde_json::json!({
        "proxyMode": mode,
        "localState": state,
        "trustDomain": config.trust_domain,
        "clusterId": config.cluster_id,
        "network": config.network,
        "nodeName": config.node_name,
        "secretTtl": format!("{}s", config.secret_ttl.as_secs()),
        "outboundTrafficPolicy": match config.outbound_policy {
            crate::config::OutboundPolicy::AllowAny => "ALLOW_ANY",
            crate::config::OutboundPolicy::RegistryOnly => "REGISTRY_ONLY",
        },
        "drainDeadline": format!("{}ms", config.drain_deadline.as_millis()),
        "inpod": config.inpod.as_ref().map(|i| serde_json::json!({
            "socket": i.zds.socket_path.display().to_string(),
            "packetMark": i.mark,
            "dnsCapture": i.dns_capture,
            "resolvConf": i.resolv_conf.display().to_string(),
        })),
        "listeners": {
            "outbound": l.outbound.to_string(),
            "inboundPlaintext": l.inbound_plaintext.to_string(),
            "inboundHbone": l.inbound_hbone.to_string(),
            "socks5": l.socks5.map(|a| a.to_string()),
            "admin": l.admin.to_string(),
            "metrics": l.metrics.to_string(),
            "readiness": l.readiness.to_string(),
        },
    })
}

#[cfg(test)]
mod tests;
