//! The inbound pod listener `inbound-pod|<port>|<podIP>`: one endpoint, chosen by the inbound
//! VIP cluster (or by `main_internal` for workload-addressed traffic). It turns the endpoint
//! into the metadata `connect_originate` needs: the `CONNECT` target `podIP:targetPort`, the
//! identity the destination must prove, and the `forwarded` and `baggage` headers that carry
//! the original client to the destination ztunnel.
//!
//! The headers and the identity are only needed when a new tunnel is opened (pooled upstream
//! connections reuse theirs), so [`TunnelMetadata`] keeps what they are made from and builds
//! them in [`TunnelMetadata::transport`].
//!
//! An endpoint of a ServiceEntry outside the mesh (or the original destination of a
//! passthrough request) has no workload: it is reached over plain TCP, or TLS when the
//! cluster originates it ([`TunnelMetadata::external`]).

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::{Identity, TunnelRequest, headers};
use ztunnel::state::workload::{TunnelProtocol, Workload};

use super::{Downstream, PodTarget};
use crate::egress::tls::TlsOrigination;

/// How `connect_originate` reaches an endpoint.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HBONE to `podIP:15008` with this request, expecting these identities.
    Hbone {
        /// The `CONNECT` request (`:authority` = `podIP:targetPort`, `forwarded`, `baggage`).
        request: TunnelRequest,
        /// The identity the destination ztunnel must prove: the destination workload's.
        expected: Vec<Identity>,
    },
    /// Plain TCP to `podIP:targetPort` (a workload or a host outside the mesh).
    Tcp,
    /// TLS originated by the waypoint to a host outside the mesh.
    Tls(Arc<TlsOrigination>),
}

/// The tunnel metadata of one endpoint.
#[derive(Debug, Clone)]
pub struct TunnelMetadata {
    /// The endpoint's address: `podIP:targetPort`, or an external host's address.
    pub address: SocketAddr,
    /// The endpoint's workload; `None` outside the mesh.
    pub workload: Option<Arc<Workload>>,
    /// TLS to originate toward an endpoint outside the mesh.
    tls: Option<Arc<TlsOrigination>>,
    /// The tunnel the traffic came in on (original client, baggage).
    downstream: Arc<Downstream>,
    /// The service hostname the client addressed, carried in `forwarded`.
    host: Option<String>,
}

impl TunnelMetadata {
    /// The metadata for sending `downstream`'s traffic to `target`. `host` is the service
    /// hostname the client addressed, carried in `forwarded` when set.
    pub fn new(target: PodTarget, downstream: &Arc<Downstream>, host: Option<&str>) -> Self {
        Self {
            address: target.address,
            workload: Some(target.workload),
            tls: None,
            downstream: Arc::clone(downstream),
            host: host.map(str::to_owned),
        }
    }

    /// The metadata for sending `downstream`'s traffic to `address`, outside the mesh, with
    /// `tls` originated when set.
    pub fn external(
        address: SocketAddr,
        tls: Option<Arc<TlsOrigination>>,
        downstream: &Arc<Downstream>,
    ) -> Self {
        Self {
            address,
            workload: None,
            tls,
            downstream: Arc::clone(downstream),
            host: None,
        }
    }

    /// `inbound-pod|<port>|<podIP>`: how the endpoint is named in logs.
    pub fn listener_name(&self) -> String {
        format!("inbound-pod|{}|{}", self.address.port(), self.address.ip())
    }

    /// What distinguishes connections to this endpoint in the pool: its address and the TLS
    /// settings they were made with (0 = none).
    pub fn pool_key(&self) -> (SocketAddr, u64) {
        (self.address, self.tls.as_ref().map_or(0, |t| t.id))
    }

    /// How to reach the endpoint, with the headers of a new tunnel.
    pub fn transport(&self) -> Transport {
        let Some(workload) = &self.workload else {
            return match &self.tls {
                Some(tls) => Transport::Tls(Arc::clone(tls)),
                None => Transport::Tcp,
            };
        };
        match workload.protocol {
            TunnelProtocol::Hbone => {
                let client = self.downstream.client_addr();
                let mut request = TunnelRequest::new(self.address);
                // Headers that do not encode (odd baggage, odd hostnames) are left out rather
                // than failing the request: they are informational.
                if let Ok(value) = headers::forwarded(client, self.host.as_deref())
                    .or_else(|_| headers::forwarded(client, None))
                {
                    request = request.header(headers::FORWARDED, value);
                }
                let baggage = &self.downstream.baggage;
                if !baggage.is_empty()
                    && let Ok(value) =
                        headers::baggage(baggage.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                {
                    request = request.header(headers::BAGGAGE, value);
                }
                Transport::Hbone {
                    request,
                    expected: vec![workload.identity()],
                }
            }
            TunnelProtocol::Tcp => Transport::Tcp,
        }
    }
}
