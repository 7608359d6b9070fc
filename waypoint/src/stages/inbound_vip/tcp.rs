//! TCP through the waypoint: the `inbound-vip|<port>|tcp|<host>` chain for streams that are not
//! HTTP (VirtualService `tcp` routes, else the service itself), and workload-addressed tunnels
//! straight to their pod. Bytes are copied both ways with half-close.
//!
//! The service's AuthorizationPolicies are enforced first, on what a connection carries
//! (identity, addresses, ports): rules of ALLOW policies that need HTTP attributes never
//! match, and HTTP constraints of DENY rules are dropped (such a rule denies more), as Istio
//! generates the network RBAC filter. A denied connection is closed.

use std::sync::Arc;
use std::time::Instant;

use hbone::H2Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::detect::Prefixed;
use super::{Downstream, VipTarget};
use crate::app::Core;
use crate::authz::{RequestAttributes, evaluate};
use crate::cluster::PickContext;
use crate::route::{TcpView, pick_weighted, select_tcp_route};
use crate::stages::connect_originate::DEFAULT_CONNECT_TIMEOUT;
use crate::stages::inbound_pod::TunnelMetadata;

/// Proxies a non-HTTP stream addressed to `vip`.
pub(super) async fn serve(
    core: Arc<Core>,
    mut io: Prefixed<H2Stream>,
    downstream: Arc<Downstream>,
    vip: VipTarget,
) {
    let listener = vip.listener_name("tcp");
    let l7 = core.l7();
    let policies = l7.authz.policies(&vip.service.hostname);
    if !policies.is_empty() {
        let source_ip = downstream.client_addr().ip();
        let attributes = RequestAttributes {
            source_identity: Some(&downstream.peer_identity),
            source_ip,
            remote_ip: source_ip,
            destination: downstream.original_dst,
            sni: None,
            http: None,
        };
        let decision = evaluate(policies, &attributes);
        for audited in &decision.audited {
            tracing::info!(target: "authz", %listener, policy = %audited, peer = %downstream.peer_identity, "connection audited");
        }
        if !decision.allowed {
            tracing::info!(target: "authz", %listener, reason = %decision.reason, peer = %downstream.peer_identity, "connection denied: closed");
            return;
        }
    }
    let Some(routes) = l7.compiled.routes.get(&vip.service.hostname, vip.port) else {
        tracing::info!(%listener, "no TCP route: connection closed");
        return;
    };
    let view = TcpView {
        port: vip.port,
        destination: Some(downstream.original_dst.ip()),
    };
    let Some(route) = select_tcp_route(routes, &view) else {
        tracing::info!(%listener, "no TCP route matched: connection closed");
        return;
    };
    let Some(backend) = pick_weighted(&route.backends, fastrand::u32(..)) else {
        tracing::info!(%listener, "TCP route has no backend: connection closed");
        return;
    };
    let port = backend.backend.port.unwrap_or(vip.port);
    let Some((cluster, _)) = core.cluster(
        &backend.backend.host,
        backend.backend.subset.as_deref(),
        port,
        "tcp",
    ) else {
        tracing::info!(%listener, host = %backend.backend.host, "TCP backend unknown: connection closed");
        return;
    };
    let Ok(_permit) = cluster.admit(crate::cluster::UpstreamProtocol::Http1).await else {
        tracing::info!(
            cluster = cluster.name(),
            "circuit breaker open: connection closed"
        );
        return;
    };
    let headers = http::HeaderMap::new();
    let ctx = PickContext {
        headers: &headers,
        source_ip: Some(downstream.client_addr().ip()),
        query: None,
        exclude: &[],
    };
    let host = vip.service.hostname.as_str();
    let Some((_picked, meta)) = super::pick_endpoint(&core, &cluster, &ctx, &downstream, host)
    else {
        tracing::info!(
            cluster = cluster.name(),
            "no healthy upstream: connection closed"
        );
        return;
    };
    let connect_timeout = cluster.connection_limits().connect_timeout;
    copy_to(&core, &mut io, &meta, cluster.name(), connect_timeout).await;
}

/// Proxies a workload-addressed tunnel to its pod.
pub(super) async fn serve_direct(
    core: Arc<Core>,
    mut stream: H2Stream,
    _downstream: Arc<Downstream>,
    meta: TunnelMetadata,
) {
    let name = meta.listener_name();
    copy_to(&core, &mut stream, &meta, &name, DEFAULT_CONNECT_TIMEOUT).await;
}

async fn copy_to<IO>(
    core: &Core,
    io: &mut IO,
    meta: &TunnelMetadata,
    cluster: &str,
    connect_timeout: std::time::Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut upstream = match core.originate.open(meta, connect_timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::info!(%cluster, upstream = %meta.address, error = %e, "TCP upstream connect failed");
            return;
        }
    };
    let copy = hbone::copy::copy_bidirectional(io, &mut upstream, None);
    match copy.await {
        Ok(transferred) => tracing::debug!(
            %cluster,
            upstream = %meta.address,
            ?transferred,
            duration_ms = started.elapsed().as_millis() as u64,
            "TCP connection complete"
        ),
        Err(e) => {
            tracing::debug!(%cluster, upstream = %meta.address, error = ?e, "TCP connection ended with an error")
        }
    }
}
