//! TCP through the waypoint: the `inbound-vip|<port>|tcp|<host>` chain for streams that are not
//! HTTP (VirtualService `tcp` routes, else the service itself), and workload-addressed tunnels
//! straight to their pod. Bytes are copied both ways with half-close.
//!
//! The service's AuthorizationPolicies are enforced first, on what a connection carries
//! (identity, addresses, ports): rules of ALLOW policies that need HTTP attributes never
//! match, and HTTP constraints of DENY rules are dropped (such a rule denies more), as Istio
//! generates the network RBAC filter. A denied connection is closed.
//!
//! Every connection is reported when it ends, as Envoy's TCP proxy does: the
//! `istio_tcp_connections_{opened,closed}_total` and `istio_tcp_{received,sent}_bytes_total`
//! counters (`reporter="waypoint"`, `request_protocol="tcp"`), and an access log line with the
//! cluster, the upstream host, the bytes each way and, for a connection closed before it
//! reached an upstream, the response flag (`NR`, `NC`, `UO`, `UH`, `UF`) or the policy denial.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hbone::H2Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::detect::Prefixed;
use super::{Downstream, Target, VipTarget, external_target, pick_target};
use crate::app::Core;
use crate::authz::{RequestAttributes, evaluate};
use crate::cluster::PickContext;
use crate::egress::{self, Upstream, UpstreamQuery};
use crate::route::{TcpView, pick_weighted, select_tcp_route};
use crate::stages::connect_originate::DEFAULT_CONNECT_TIMEOUT;
use crate::stages::inbound_pod::TunnelMetadata;
use crate::telemetry::{
    AccessLogEntry, RequestLabels, ResponseFlag, ResponseFlags, WorkloadLabels,
};

/// What one TCP connection reports when it ends (see the module docs).
struct TcpReport {
    started: Instant,
    start_time: SystemTime,
    downstream: Arc<Downstream>,
    service: Option<Arc<ztunnel::state::service::Service>>,
    workload: Option<Arc<ztunnel::state::workload::Workload>>,
    cluster: Option<String>,
    upstream: Option<std::net::SocketAddr>,
}

impl TcpReport {
    fn start(
        downstream: &Arc<Downstream>,
        service: Option<Arc<ztunnel::state::service::Service>>,
    ) -> Self {
        Self {
            started: Instant::now(),
            start_time: SystemTime::now(),
            downstream: Arc::clone(downstream),
            service,
            workload: None,
            cluster: None,
            upstream: None,
        }
    }

    /// Closed before any upstream was reached: `flag` and `details` say why.
    fn refused(self, core: &Core, flag: Option<ResponseFlag>, details: &str) {
        let flags = flag.map_or(ResponseFlags::NONE, ResponseFlags::one);
        self.finish(core, flags, Some(details), (0, 0));
    }

    /// Reports the connection: its counters and access log line.
    fn finish(
        self,
        core: &Core,
        flags: ResponseFlags,
        details: Option<&str>,
        (received, sent): (u64, u64),
    ) {
        let source = Arc::new(WorkloadLabels::source(
            self.downstream.source.as_deref(),
            Some(&self.downstream.peer_identity),
        ));
        let destination = core.destination_labels(self.service.as_ref(), self.workload.as_ref());
        let labels = RequestLabels::tcp(source, destination).with_response_flags(flags);
        let counters = core.metrics.tcp(&labels);
        counters.opened();
        counters.closed(received, sent);
        if core.access_log.is_enabled() {
            let mut entry = AccessLogEntry::new(self.start_time);
            entry.response_flags = flags;
            entry.connection_termination_details = details.map(str::to_owned);
            entry.bytes_received = received;
            entry.bytes_sent = sent;
            entry.duration = self.started.elapsed();
            entry.upstream_host = self.upstream.map(|a| a.to_string());
            entry.upstream_cluster = self.cluster;
            entry.downstream_local_address = Some(self.downstream.original_dst);
            entry.downstream_remote_address = Some(self.downstream.client_addr());
            core.access_log.log(&entry);
        }
    }
}

/// Proxies a non-HTTP stream addressed to `vip`.
pub(super) async fn serve(
    core: Arc<Core>,
    mut io: Prefixed<H2Stream>,
    downstream: Arc<Downstream>,
    vip: VipTarget,
) {
    let listener = vip.listener_name("tcp");
    let mut report = TcpReport::start(&downstream, Some(Arc::clone(&vip.service)));
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
            report.refused(&core, None, "rbac_access_denied");
            return;
        }
    }
    let Some(routes) = l7.compiled.routes.get(&vip.service.hostname, vip.port) else {
        tracing::info!(%listener, "no TCP route: connection closed");
        report.refused(&core, Some(ResponseFlag::NoRouteFound), "no_route");
        return;
    };
    let view = TcpView {
        port: vip.port,
        destination: Some(downstream.original_dst.ip()),
    };
    let Some(route) = select_tcp_route(routes, &view) else {
        tracing::info!(%listener, "no TCP route matched: connection closed");
        report.refused(&core, Some(ResponseFlag::NoRouteFound), "no_route");
        return;
    };
    let Some(backend) = pick_weighted(&route.backends, fastrand::u32(..)) else {
        tracing::info!(%listener, "TCP route has no backend: connection closed");
        report.refused(&core, Some(ResponseFlag::NoClusterFound), "no_cluster");
        return;
    };
    let port = backend.backend.port.unwrap_or(vip.port);
    let host = vip.service.hostname.as_str();
    let query = UpstreamQuery {
        service_host: host,
        backend_host: &backend.backend.host,
        backend_port: port,
        authority: None,
        original_dst: downstream.original_dst,
    };
    let endpoints = match core.select_upstream(&l7, &query) {
        Upstream::Mesh => None,
        Upstream::External { endpoints, .. } => Some(endpoints),
        // Without a `Host` a stream always has a registered destination; these only answer
        // HTTP requests naming an unknown host.
        Upstream::Passthrough(addr) => {
            let meta = TunnelMetadata::external(addr, None, &downstream);
            report.cluster = Some(egress::PASSTHROUGH_CLUSTER.to_owned());
            copy_to(&core, &mut io, &meta, report, DEFAULT_CONNECT_TIMEOUT).await;
            return;
        }
        Upstream::BlackHole => {
            tracing::info!(%listener, cluster = egress::BLACKHOLE_CLUSTER, "connection closed");
            report.cluster = Some(egress::BLACKHOLE_CLUSTER.to_owned());
            report.refused(&core, None, "blackhole");
            return;
        }
    };
    let Some((cluster, _)) = core.cluster(
        &backend.backend.host,
        backend.backend.subset.as_deref(),
        port,
        "tcp",
    ) else {
        tracing::info!(%listener, host = %backend.backend.host, "TCP backend unknown: connection closed");
        report.refused(&core, Some(ResponseFlag::NoClusterFound), "no_cluster");
        return;
    };
    report.cluster = Some(cluster.name().to_owned());
    let Ok(_permit) = cluster.admit(crate::cluster::UpstreamProtocol::Http1).await else {
        tracing::info!(
            cluster = cluster.name(),
            "circuit breaker open: connection closed"
        );
        report.refused(&core, Some(ResponseFlag::UpstreamOverflow), "overflow");
        return;
    };
    let headers = http::HeaderMap::new();
    let ctx = PickContext {
        headers: &headers,
        source_ip: Some(downstream.client_addr().ip()),
        query: None,
        exclude: &[],
    };
    let target = match endpoints {
        None => Target::Mesh,
        Some(endpoints) => {
            match external_target(&core, &cluster, &endpoints, &backend.backend.host).await {
                Ok(target) => target,
                Err(e) => {
                    tracing::info!(cluster = cluster.name(), error = %e, "external service unreachable: connection closed");
                    report.refused(
                        &core,
                        Some(ResponseFlag::NoHealthyUpstream),
                        "no_healthy_upstream",
                    );
                    return;
                }
            }
        }
    };
    let meta = pick_target(&core, &cluster, &target, &ctx, &downstream, host).map(|(_, m)| m);
    let Some(meta) = meta else {
        tracing::info!(
            cluster = cluster.name(),
            "no healthy upstream: connection closed"
        );
        report.refused(
            &core,
            Some(ResponseFlag::NoHealthyUpstream),
            "no_healthy_upstream",
        );
        return;
    };
    let connect_timeout = cluster.connection_limits().connect_timeout;
    copy_to(&core, &mut io, &meta, report, connect_timeout).await;
}

/// Proxies a workload-addressed tunnel to its pod.
pub(super) async fn serve_direct(
    core: Arc<Core>,
    mut stream: H2Stream,
    downstream: Arc<Downstream>,
    meta: TunnelMetadata,
) {
    let mut report = TcpReport::start(&downstream, None);
    report.cluster = Some(meta.listener_name());
    copy_to(&core, &mut stream, &meta, report, DEFAULT_CONNECT_TIMEOUT).await;
}

async fn copy_to<IO>(
    core: &Core,
    io: &mut IO,
    meta: &TunnelMetadata,
    mut report: TcpReport,
    connect_timeout: std::time::Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    report.upstream = Some(meta.address);
    report.workload = meta.workload.clone();
    let cluster = report.cluster.clone().unwrap_or_default();
    let mut upstream = match core.originate().open(meta, connect_timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::info!(%cluster, upstream = %meta.address, error = %e, "TCP upstream connect failed");
            report.refused(
                core,
                Some(ResponseFlag::UpstreamConnectionFailure),
                "upstream_connect_failed",
            );
            return;
        }
    };
    let copy = hbone::copy::copy_bidirectional(io, &mut upstream, None);
    let (transferred, details) = match copy.await {
        Ok(transferred) => {
            tracing::debug!(
                %cluster,
                upstream = %meta.address,
                ?transferred,
                duration_ms = report.started.elapsed().as_millis() as u64,
                "TCP connection complete"
            );
            (transferred, None)
        }
        Err(e) => {
            tracing::debug!(%cluster, upstream = %meta.address, error = ?e, "TCP connection ended with an error");
            (e.transferred, Some("connection_error"))
        }
    };
    report.finish(
        core,
        ResponseFlags::NONE,
        details,
        (transferred.a_to_b, transferred.b_to_a),
    );
}
