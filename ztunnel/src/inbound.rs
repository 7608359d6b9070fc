//! Inbound: tunnels arriving on 15008 for a workload this proxy serves.
//!
//! Each local workload has its own HBONE listener, presenting that workload's certificate (as
//! upstream ztunnel does inside each pod's network namespace). For every `CONNECT`:
//!
//! 1. [`authorize`] (pure): the target must be one of the workload's addresses (else 400); the
//!    workload's L4 policies are evaluated against the peer's verified identity, failing closed
//!    when a policy the workload names is missing (deny → 401);
//! 2. the handler connects to the application at the target (503 if that fails), answers 200,
//!    and copies bytes both ways until both sides are done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::net::TcpStream;

use crate::rbac::{self, Connection, Decision};
use crate::state::{MeshState, StateHandle, Workload};

/// Why a tunnel was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// The `CONNECT` authority is not an `ip:port`.
    #[error("tunnel target {0:?} is not an ip:port")]
    BadAuthority(String),
    /// The workload this listener serves is no longer in the mesh state.
    #[error("workload {0} is not in the mesh state")]
    UnknownWorkload(String),
    /// The target address does not belong to the workload this listener serves.
    #[error("tunnel target {target} is not an address of workload {workload}")]
    NotLocal {
        /// The requested target.
        target: SocketAddr,
        /// The workload served here.
        workload: String,
    },
    /// L4 policy denied the connection.
    #[error("denied by policy: {0}")]
    Denied(rbac::Reason),
    /// The application did not accept the connection.
    #[error("connect to application at {target} failed: {source}")]
    Connect {
        /// The application address.
        target: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

impl InboundError {
    /// The HTTP status answered to the `CONNECT`.
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::BadAuthority(_) | InboundError::NotLocal { .. } => {
                StatusCode::BAD_REQUEST
            }
            InboundError::UnknownWorkload(_) | InboundError::Connect { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InboundError::Denied(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// Istio's response flag for telemetry.
    pub fn response_flag(&self) -> &'static str {
        match self {
            InboundError::Denied(_) => "DENY",
            InboundError::Connect { .. } | InboundError::UnknownWorkload(_) => "CONNECT",
            InboundError::BadAuthority(_) | InboundError::NotLocal { .. } => "-",
        }
    }
}

/// The accepted tunnel: where to connect and what policy said.
#[derive(Debug)]
pub struct Authorized {
    /// The destination workload.
    pub workload: Arc<Workload>,
    /// The application address to connect to.
    pub target: SocketAddr,
    /// The policy decision (allowed), with audit and dry-run outcomes.
    pub decision: Decision,
}

/// Decides whether a tunnel to `target` from `peer` may reach workload `uid`.
pub fn authorize(
    state: &MeshState,
    uid: &str,
    target: SocketAddr,
    peer: &hbone::Identity,
    peer_ip: std::net::IpAddr,
) -> Result<Authorized, InboundError> {
    let workload = state
        .workload_by_uid(uid)
        .ok_or_else(|| InboundError::UnknownWorkload(uid.to_string()))?;
    if !workload.workload_ips.contains(&target.ip()) {
        return Err(InboundError::NotLocal {
            target,
            workload: uid.to_string(),
        });
    }
    let policies: Vec<_> = state.policies_for(workload).collect();
    // A selector policy the workload names but the state lacks: deny rather than allow.
    let missing: Vec<String> = workload
        .authorization_policies
        .iter()
        .filter(|key| !policies.iter().any(|p| p.key() == **key))
        .cloned()
        .collect();
    let conn = Connection {
        src_identity: Some(peer.clone()),
        src_ip: peer_ip,
        dst: target,
        dst_network: workload.network.clone(),
    };
    let decision = rbac::evaluate_with_missing(policies, &missing, &conn);
    if !decision.allowed {
        return Err(InboundError::Denied(decision.reason));
    }
    Ok(Authorized {
        workload: workload.clone(),
        target,
        decision,
    })
}

/// The 15008 handler for one local workload.
#[derive(Clone, Debug)]
pub struct InboundHandler {
    state: StateHandle,
    uid: Arc<str>,
    connect_timeout: Duration,
}

impl InboundHandler {
    /// A handler for the workload `uid`.
    pub fn new(state: StateHandle, uid: &str, connect_timeout: Duration) -> Self {
        Self {
            state,
            uid: uid.into(),
            connect_timeout,
        }
    }

    async fn serve(
        &self,
        req: &hbone::InboundRequest,
    ) -> Result<(Authorized, TcpStream), InboundError> {
        let target = req
            .target()
            .map_err(|_| InboundError::BadAuthority(req.authority.to_string()))?;
        let state = self.state.current();
        let authorized = authorize(
            &state,
            &self.uid,
            target,
            &req.peer_identity,
            req.peer_addr.ip(),
        )?;
        let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await;
        let app = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(InboundError::Connect { target, source }),
            Err(_) => {
                let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                return Err(InboundError::Connect { target, source });
            }
        };
        let _ = app.set_nodelay(true);
        Ok((authorized, app))
    }
}

impl hbone::Handler for InboundHandler {
    async fn handle(&self, req: hbone::InboundRequest, responder: hbone::Responder) {
        let start = Instant::now();
        let (authorized, mut app) = match self.serve(&req).await {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(
                    target: "access",
                    direction = "inbound",
                    src.addr = %req.peer_addr,
                    src.identity = %req.peer_identity,
                    dst.addr = %req.authority,
                    error = %e,
                    response_flags = e.response_flag(),
                    "connection failed"
                );
                responder.reject(e.status());
                return;
            }
        };
        let Ok(mut tunnel) = responder.accept(http::HeaderMap::new()) else {
            return;
        };
        let result = hbone::copy::copy_tunnel(&mut app, &mut tunnel, None).await;
        let (sent, received, error) = match &result {
            Ok(t) => (t.a_to_b, t.b_to_a, None),
            Err(e) => (
                e.transferred.a_to_b,
                e.transferred.b_to_a,
                Some(e.source.to_string()),
            ),
        };
        tracing::info!(
            target: "access",
            direction = "inbound",
            src.addr = %req.peer_addr,
            src.identity = %req.peer_identity,
            dst.addr = %authorized.target,
            dst.workload = %authorized.workload.name,
            dst.namespace = %authorized.workload.namespace,
            dst.identity = %authorized.workload.identity(),
            bytes_sent = sent,
            bytes_recv = received,
            duration = ?start.elapsed(),
            error = error.as_deref().unwrap_or(""),
            "connection complete"
        );
    }
}

#[cfg(test)]
mod tests;
