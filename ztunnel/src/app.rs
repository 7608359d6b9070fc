//! Assembly: the listeners of each local workload, bound before anything runs.
//!
//! A [`Node`] holds what all local workloads share (mesh state, certificates, the HBONE pool).
//! [`Node::add_workload`] binds the workload's listeners on its own address — inbound HBONE
//! (15008, presenting the workload's certificate) and, when enabled, SOCKS5 (15080) — exactly as
//! upstream ztunnel binds them inside each pod's network namespace; then starts serving them.
//! Dropping or [`WorkloadProxy::shutdown`] stops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::{IdentityError, IdentityManager};
use crate::inbound::InboundHandler;
use crate::outbound::request::OutboundContext;
use crate::outbound::{OutboundInputs, Socks5Listener};
use crate::state::{StateHandle, Workload};

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
}

/// Ports of a workload's listeners (0 lets the OS choose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadPorts {
    /// Inbound HBONE (15008).
    pub hbone: u16,
    /// SOCKS5 (15080), when enabled.
    pub socks5: Option<u16>,
}

impl Default for WorkloadPorts {
    fn default() -> Self {
        Self {
            hbone: crate::config::ports::INBOUND_HBONE,
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
        Ok(Self {
            outbound: OutboundInputs {
                state,
                identities,
                pool,
                ctx,
                connect_timeout: hbone.connect_timeout,
            },
            roots: Arc::new(roots),
            hbone,
            drain_deadline: Duration::from_secs(5),
        })
    }

    /// Sets how long draining connections may run when a workload's listeners stop.
    pub fn with_drain_deadline(mut self, deadline: Duration) -> Self {
        self.drain_deadline = deadline;
        self
    }

    /// Binds and starts the listeners of `workload`.
    pub async fn add_workload(
        &self,
        workload: &Workload,
        ports: WorkloadPorts,
    ) -> Result<WorkloadProxy, AppError> {
        let ip = *workload
            .workload_ips
            .first()
            .ok_or_else(|| AppError::NoAddress(workload.uid.clone()))?;
        let certs = self.outbound.identities.fetch(&workload.identity()).await?;
        let tls = hbone::tls::server_config(certs, &self.roots).map_err(hbone::Error::from)?;

        // Bind everything first, so a port conflict leaves nothing half-started.
        let inbound_addr = SocketAddr::new(ip, ports.hbone);
        let inbound = TcpListener::bind(inbound_addr)
            .await
            .map_err(|source| AppError::Bind {
                addr: inbound_addr,
                source,
            })?;
        let socks5 = match ports.socks5 {
            Some(port) => {
                let addr = SocketAddr::new(ip, port);
                let l = Socks5Listener::new(addr, self.outbound.clone(), &workload.uid)
                    .await
                    .map_err(|source| AppError::Bind { addr, source })?;
                Some(l)
            }
            None => None,
        };
        let inbound_addr = inbound.local_addr().map_err(|source| AppError::Bind {
            addr: inbound_addr,
            source,
        })?;
        let socks5_addr = socks5.as_ref().and_then(|l| l.address().ok());

        let shutdown = hbone::Shutdown::default();
        let handler = InboundHandler::new(
            self.outbound.state.clone(),
            &workload.uid,
            self.hbone.connect_timeout,
        );
        let server = hbone::Server::new(self.hbone.clone(), tls, handler)?;
        tokio::spawn(server.run(inbound, shutdown.clone(), self.drain_deadline));
        if let Some(l) = socks5 {
            tokio::spawn(l.run(shutdown.drain.clone()));
        }
        Ok(WorkloadProxy {
            uid: workload.uid.clone(),
            inbound: inbound_addr,
            socks5: socks5_addr,
            shutdown,
        })
    }
}

/// The running listeners of one local workload.
#[derive(Debug)]
pub struct WorkloadProxy {
    /// The workload.
    pub uid: String,
    /// Inbound HBONE address.
    pub inbound: SocketAddr,
    /// SOCKS5 address, when enabled.
    pub socks5: Option<SocketAddr>,
    shutdown: hbone::Shutdown,
}

impl WorkloadProxy {
    /// Stops accepting and drains: open tunnels finish (up to the node's drain deadline).
    pub fn shutdown(&self) {
        self.shutdown.drain.cancel();
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
