//! Assembly: the listeners of each local workload, bound before anything runs.
//!
//! A [`Node`] holds what all local workloads share (mesh state, certificates, the HBONE pool).
//! [`Node::add_workload`] binds the workload's listeners on its own address — inbound HBONE
//! (15008, presenting the workload's certificate) and, when enabled, outbound capture (15001),
//! inbound plaintext (15006) and SOCKS5 (15080) — exactly as upstream ztunnel binds them inside
//! each pod's network namespace; then starts serving them. Dropping or
//! [`WorkloadProxy::shutdown`] stops them; [`WorkloadProxy::drain`] also waits until their
//! connections are finished (or closed at the node's drain deadline).
//!
//! The node's inbound connections share one [`ConnectionTracker`], re-evaluated by a policy
//! watcher (started with the first workload) whenever the mesh state changes, and one
//! [`Metrics`] ([`Node::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connections::ConnectionTracker;
use crate::dns::{DnsClient, DnsConfig, DnsContext, DnsError, DnsServer, PlainSockets};
use crate::identity::{IdentityError, IdentityManager};
use crate::inbound::{DestinationMode, InboundContext, InboundHandler, PlaintextListener};
use crate::inpod::sockets::PodSockets;
use crate::outbound::request::OutboundContext;
use crate::outbound::{OutboundInputs, OutboundListener, Socks5Listener};
use crate::state::{StateHandle, Workload};
use crate::telemetry::Metrics;

/// Why a workload's listeners could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The workload has no address to bind.
    #[error("workload {0} has no address")]
    NoAddress(String),
    /// A listener could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The workload's certificate could not be issued.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The TLS or HBONE configuration is invalid.
    #[error(transparent)]
    Hbone(#[from] hbone::Error),
    /// The DNS proxy's configuration is invalid.
    #[error("DNS proxy: {0}")]
    Dns(#[from] DnsError),
}

/// Ports of a workload's listeners (0 lets the OS choose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadPorts {
    /// Inbound HBONE (15008).
    pub hbone: u16,
    /// Outbound capture (15001), when enabled. Its destination is the original destination of
    /// each captured connection, so it is only useful with capture rules; off by default.
    pub outbound: Option<u16>,
    /// Inbound plaintext (15006), when enabled. Its destination is the original destination of
    /// each captured connection ([`DestinationMode::OriginalDst`]), so it is only useful with
    /// capture rules; off by default.
    pub plaintext: Option<u16>,
    /// SOCKS5 (15080), when enabled.
    pub socks5: Option<u16>,
}

impl Default for WorkloadPorts {
    fn default() -> Self {
        Self {
            hbone: crate::config::ports::INBOUND_HBONE,
            outbound: None,
            plaintext: None,
            socks5: None,
        }
    }
}

/// What the local workloads of one node share.
#[derive(Clone, Debug)]
pub struct Node {
    outbound: OutboundInputs,
    roots: Arc<Vec<CertificateDer<'static>>>,
    hbone: hbone::Config,
    drain_deadline: Duration,
    metrics: Arc<Metrics>,
    tracker: ConnectionTracker,
    /// Whether the policy watcher of `tracker` has been started.
    watching: Arc<AtomicBool>,
    /// The DNS proxy's settings; in-pod proxies serve DNS (15053) when set.
    dns: Option<DnsConfig>,
}

impl Node {
    /// A node with its state, certificate manager, trust roots and settings.
    pub fn new(
        state: StateHandle,
        identities: Arc<IdentityManager>,
        roots: Vec<CertificateDer<'static>>,
        hbone: hbone::Config,
        ctx: OutboundContext,
    ) -> Result<Self, AppError> {
        let pool = hbone::Pool::new(hbone.clone(), roots.clone())?;
        let metrics = Arc::new(Metrics::new());
        Ok(Self {
            outbound: OutboundInputs {
                state,
                identities,
                pool,
                ctx,
                connect_timeout: hbone.connect_timeout,
                metrics: metrics.clone(),
                sockets: hbone::socket::default_sockets(),
            },
            roots: Arc::new(roots),
            hbone,
            drain_deadline: Duration::from_secs(5),
            metrics,
            tracker: ConnectionTracker::new(),
            watching: Arc::new(AtomicBool::new(false)),
            dns: None,
        })
    }

    /// Serves DNS (15053) in every in-pod proxy with `config`.
    pub fn with_dns(mut self, config: DnsConfig) -> Self {
        self.dns = Some(config);
        self
    }

    /// Records this node's traffic in `metrics` (e.g. shared with the metrics server) instead of
    /// its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.outbound.metrics = metrics.clone();
        self.metrics = metrics;
        self
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node's live inbound connections.
    pub fn connections(&self) -> &ConnectionTracker {
        &self.tracker
    }

    /// What the node's inbound listeners share (state, connection tracker, metrics); starts
    /// the policy watcher on first use, so it must be called within a Tokio runtime.
    pub fn inbound_context(&self) -> InboundContext {
        if !self.watching.swap(true, Ordering::AcqRel) {
            self.tracker.watch(&self.outbound.state);
        }
        InboundContext {
            state: self.outbound.state.clone(),
            tracker: self.tracker.clone(),
            metrics: self.metrics.clone(),
            connect_timeout: self.hbone.connect_timeout,
            sockets: self.outbound.sockets.clone(),
        }
    }

    /// Sets how long draining connections may run when a workload's listeners stop.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Binds and starts the listeners of `workload` on its own (first) address.
    pub async fn add_workload(
        &self,
        workload: &Workload,
        ports: WorkloadPorts,
    ) -> Result<WorkloadProxy, AppError> {
        let ip = *workload
            .workload_ips
            .first()
            .ok_or_else(|| AppError::NoAddress(workload.uid.clone()))?;
        let at = |port| SocketAddr::new(ip, port);
        let addrs = ListenAddrs {
            hbone: at(ports.hbone),
            outbound: ports.outbound.map(at),
            plaintext: ports.plaintext.map(at),
            socks5: ports.socks5.map(at),
            dns: None,
        };
        self.add_workload_on(workload, addrs).await
    }

    /// Binds and starts the listeners of `workload` inside its pod's network namespace, as
    /// upstream's in-pod mode: 15008, 15001 and 15006 on the unspecified address of the
    /// workload's (first) address family, DNS on the loopback address (when the node serves
    /// DNS); every connection of the proxy is dialled from the pod's namespace too.
    pub async fn add_pod(
        &self,
        workload: &Workload,
        pod: PodSockets,
    ) -> Result<WorkloadProxy, AppError> {
        use crate::config::ports;
        let ipv6 = workload
            .workload_ips
            .first()
            .is_some_and(std::net::IpAddr::is_ipv6);
        let (any, loopback): (std::net::IpAddr, std::net::IpAddr) = if ipv6 {
            (
                std::net::Ipv6Addr::UNSPECIFIED.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            )
        } else {
            (
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                std::net::Ipv4Addr::LOCALHOST.into(),
            )
        };
        let addrs = ListenAddrs {
            hbone: SocketAddr::new(any, ports::INBOUND_HBONE),
            outbound: Some(SocketAddr::new(any, ports::OUTBOUND)),
            plaintext: Some(SocketAddr::new(any, ports::INBOUND_PLAINTEXT)),
            socks5: None,
            dns: self
                .dns
                .is_some()
                .then(|| SocketAddr::new(loopback, ports::DNS)),
        };
        self.start(workload, addrs, Some(pod)).await
    }

    /// Binds and starts the listeners of `workload` on `addrs` (a dedicated proxy binds the
    /// configured addresses rather than the workload's).
    pub async fn add_workload_on(
        &self,
        workload: &Workload,
        addrs: ListenAddrs,
    ) -> Result<WorkloadProxy, AppError> {
        self.start(workload, addrs, None).await
    }

    /// Binds (in the process's namespace, or in the pod's when `pod` is given) and starts the
    /// listeners of `workload`.
    async fn start(
        &self,
        workload: &Workload,
        addrs: ListenAddrs,
        pod: Option<PodSockets>,
    ) -> Result<WorkloadProxy, AppError> {
        let certs = self.outbound.identities.fetch(&workload.identity()).await?;
        let tls = hbone::tls::server_config(certs, &self.roots).map_err(hbone::Error::from)?;
        let bind_err = |addr| move |source| AppError::Bind { addr, source };

        // An in-pod proxy dials from the pod's namespace: its own pool and sockets.
        let mut outbound_inputs = self.outbound.clone();
        let mut ctx = self.inbound_context();
        if let Some(pod) = &pod {
            let sockets: Arc<dyn hbone::SocketFactory> = Arc::new(pod.clone());
            outbound_inputs.pool = hbone::Pool::with_sockets(
                self.hbone.clone(),
                self.roots.as_ref().clone(),
                sockets.clone(),
            )?;
            outbound_inputs.sockets = sockets.clone();
            ctx.sockets = sockets;
        }
        let listen = |addr: SocketAddr| {
            let pod = pod.clone();
            async move {
                match pod {
                    Some(pod) => TcpListener::from_std(pod.tcp_listener(addr)?),
                    None => TcpListener::bind(addr).await,
                }
            }
        };

        // Bind everything first, so a port conflict leaves nothing half-started.
        let inbound = listen(addrs.hbone).await.map_err(bind_err(addrs.hbone))?;
        let outbound = match addrs.outbound {
            Some(addr) => Some(
                OutboundListener::from_listener(
                    listen(addr).await.map_err(bind_err(addr))?,
                    outbound_inputs.clone(),
                    &workload.uid,
                    DestinationMode::OriginalDst,
                )
                .with_drain_deadline(self.drain_deadline),
            ),
            None => None,
        };
        let plaintext = match addrs.plaintext {
            Some(addr) => Some(
                PlaintextListener::from_listener(
                    listen(addr).await.map_err(bind_err(addr))?,
                    ctx.clone(),
                    &workload.uid,
                    DestinationMode::OriginalDst,
                )
                .with_drain_deadline(self.drain_deadline),
            ),
            None => None,
        };
        let socks5 = match addrs.socks5 {
            Some(addr) => Some(
                Socks5Listener::new(addr, outbound_inputs.clone(), &workload.uid)
                    .await
                    .map_err(bind_err(addr))?
                    .with_drain_deadline(self.drain_deadline),
            ),
            None => None,
        };
        let dns = match (addrs.dns, &self.dns) {
            (Some(addr), Some(config)) => {
                let (udp, tcp) = match &pod {
                    Some(pod) => (
                        pod.udp_socket(addr).and_then(UdpSocket::from_std),
                        pod.tcp_listener(addr).and_then(TcpListener::from_std),
                    ),
                    None => (UdpSocket::bind(addr).await, TcpListener::bind(addr).await),
                };
                let sockets: Arc<dyn crate::dns::UpstreamSockets> = match &pod {
                    Some(pod) => Arc::new(pod.clone()),
                    None => Arc::new(PlainSockets::default()),
                };
                let ctx = DnsContext {
                    state: self.outbound.state.clone(),
                    client: DnsClient::from_workload(workload),
                    config: config.clone(),
                    metrics: self.metrics.dns().clone(),
                    sockets,
                };
                Some(DnsServer::new(
                    udp.map_err(bind_err(addr))?,
                    tcp.map_err(bind_err(addr))?,
                    ctx,
                )?)
            }
            _ => None,
        };
        let inbound_addr = inbound.local_addr().map_err(bind_err(addrs.hbone))?;
        let dns_addr = dns.as_ref().and_then(|d| d.address().ok());
        let outbound_addr = outbound.as_ref().and_then(|l| l.address().ok());
        let socks5_addr = socks5.as_ref().and_then(|l| l.address().ok());
        let plaintext_addr = plaintext.as_ref().and_then(|l| l.address().ok());

        let shutdown = hbone::Shutdown::default();
        let tasks = TaskTracker::new();
        let handler = InboundHandler::with_context(ctx, &workload.uid);
        let server = hbone::Server::new(self.hbone.clone(), tls, handler)?;
        tasks.spawn(server.run(inbound, shutdown.clone(), self.drain_deadline));
        if let Some(l) = outbound {
            tasks.spawn(l.run(shutdown.drain.clone()));
        }
        if let Some(l) = plaintext {
            tasks.spawn(l.run(shutdown.drain.clone()));
        }
        if let Some(l) = socks5 {
            tasks.spawn(l.run(shutdown.drain.clone()));
        }
        if let Some(d) = dns {
            tasks.spawn(d.run(shutdown.drain.clone()));
        }
        tasks.close();
        Ok(WorkloadProxy {
            uid: workload.uid.clone(),
            inbound: inbound_addr,
            outbound: outbound_addr,
            plaintext: plaintext_addr,
            socks5: socks5_addr,
            dns: dns_addr,
            netns: pod.map(|p| p.netns_id()),
            shutdown,
            tasks,
        })
    }
}

/// Where a workload's listeners bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddrs {
    /// Inbound HBONE (15008).
    pub hbone: SocketAddr,
    /// Outbound capture (15001), when enabled.
    pub outbound: Option<SocketAddr>,
    /// Inbound plaintext (15006), when enabled.
    pub plaintext: Option<SocketAddr>,
    /// SOCKS5 (15080), when enabled.
    pub socks5: Option<SocketAddr>,
    /// The DNS proxy (15053, UDP and TCP), when enabled and the node serves DNS.
    pub dns: Option<SocketAddr>,
}

/// The running listeners of one local workload.
#[derive(Debug)]
pub struct WorkloadProxy {
    /// The workload.
    pub uid: String,
    /// Inbound HBONE address.
    pub inbound: SocketAddr,
    /// Outbound capture address, when enabled.
    pub outbound: Option<SocketAddr>,
    /// Inbound plaintext address, when enabled.
    pub plaintext: Option<SocketAddr>,
    /// SOCKS5 address, when enabled.
    pub socks5: Option<SocketAddr>,
    /// DNS proxy address (UDP and TCP), when enabled.
    pub dns: Option<SocketAddr>,
    /// The pod network namespace the listeners live in (in-pod proxies only).
    pub netns: Option<crate::inpod::netns::NetnsId>,
    shutdown: hbone::Shutdown,
    tasks: TaskTracker,
}

impl WorkloadProxy {
    /// Stops accepting and drains: open tunnels finish (up to the node's drain deadline).
    pub fn shutdown(&self) {
        self.shutdown.drain.cancel();
    }

    /// Stops accepting, drains, and returns once every listener has stopped and its
    /// connections are finished or, at the drain deadline, closed.
    pub async fn drain(&self) {
        self.shutdown();
        self.tasks.wait().await;
    }

    /// Whether every listener has stopped and its connections are closed.
    pub fn is_stopped(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The token that stops this workload's listeners.
    pub fn drain_token(&self) -> CancellationToken {
        self.shutdown.drain.clone()
    }
}

impl Drop for WorkloadProxy {
    fn drop(&mut self) {
        self.shutdown.drain.cancel();
    }
}
