//! `connect_terminate`: the waypoint's HBONE listener (15008). The [`hbone::Server`] has done
//! the mTLS handshake (the waypoint's own certificate; the client proved a SPIFFE identity) and
//! parsed the `CONNECT`; this stage collects what later stages need into a [`Downstream`] —
//! peer identity and certificate (hash and subject), original destination, baggage,
//! forwarded-for, the source workload — asks
//! `main_internal` where the tunnel goes, and accepts or refuses it. A tunnel over the
//! downstream connection limit (`max_connections`) is refused with 503 and counted in
//! `envoy_listener_downstream_cx_overflow`.

use std::sync::Arc;

use hbone::{InboundRequest, Responder};
use http::{HeaderMap, StatusCode};

use super::inbound_pod::TunnelMetadata;
use super::main_internal::{Dispatch, dispatch};
use super::{CONNECT_TERMINATE, Downstream, MAIN_INTERNAL, inbound_vip};
use crate::app::Core;

/// The `connect_terminate` stage: an [`hbone::Handler`].
#[derive(Debug, Clone)]
pub struct ConnectTerminate {
    core: Arc<Core>,
}

impl ConnectTerminate {
    /// The stage over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

impl hbone::Handler for ConnectTerminate {
    async fn handle(&self, request: InboundRequest, responder: Responder) {
        self.core
            .worker()
            .tunnels
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let original_dst = match request.target() {
            Ok(dst) => dst,
            Err(e) => {
                tracing::info!(peer = %request.peer_addr, error = %e, "CONNECT target is not ip:port");
                responder.reject(StatusCode::BAD_REQUEST);
                return;
            }
        };
        let forwarded_for = request.forwarded_for();
        let client_ip = forwarded_for.map_or(request.peer_addr.ip(), |a| a.ip());
        let source = self.core.source_workload(client_ip, &request.peer_identity);
        let downstream = Arc::new(Downstream {
            peer_identity: request.peer_identity.clone(),
            peer_addr: request.peer_addr,
            local_addr: request.local_addr,
            original_dst,
            forwarded_for,
            baggage: request.baggage(),
            source,
            client_cert_details: crate::filters::client_cert_details(
                &self.core.options().identity,
                &request.peer_identity,
                request.peer_certificate.as_deref().map(|c| c.details()),
            ),
        });
        let state = self.core.mesh();
        let bindings = self.core.bindings();
        let dispatched = dispatch(
            &state,
            &self.core.options().network,
            &bindings,
            original_dst,
        );
        // Held until the tunnel is done.
        let permit = match dispatched {
            Dispatch::Reject(_) => None,
            Dispatch::Vip(_) | Dispatch::Pod(_) => self.core.admit_downstream(),
        };
        match dispatched {
            Dispatch::Reject(reason) => {
                tracing::info!(
                    stage = MAIN_INTERNAL,
                    peer = %request.peer_identity,
                    dst = %original_dst,
                    %reason,
                    "tunnel refused"
                );
                responder.reject(reason.status());
            }
            Dispatch::Vip(_) | Dispatch::Pod(_) if permit.is_none() => {
                tracing::info!(
                    stage = CONNECT_TERMINATE,
                    peer = %request.peer_identity,
                    dst = %original_dst,
                    "downstream connection limit reached: tunnel refused"
                );
                responder.reject(StatusCode::SERVICE_UNAVAILABLE);
            }
            Dispatch::Vip(vip) => {
                let Ok(stream) = responder.accept(HeaderMap::new()) else {
                    return;
                };
                inbound_vip::serve(Arc::clone(&self.core), stream, downstream, vip).await;
            }
            Dispatch::Pod(pod) => {
                let Ok(stream) = responder.accept(HeaderMap::new()) else {
                    return;
                };
                let meta = TunnelMetadata::new(pod, &downstream, None);
                inbound_vip::serve_pod(Arc::clone(&self.core), stream, downstream, meta).await;
            }
        }
    }
}
