//! The inbound pod listener `inbound-pod|<port>|<podIP>`: one endpoint, chosen by the inbound
//! VIP cluster (or by `main_internal` for workload-addressed traffic). It turns the endpoint
//! into the metadata `connect_originate` needs: the `CONNECT` target `podIP:targetPort`, the
//! identity the destination must prove, and the `forwarded` and `baggage` headers that carry
//! the original client to the destination ztunnel.
//!
//! The headers and the identity are only needed when a new tunnel is opened (pooled upstream
//! connections reuse theirs), so [`TunnelMetadata`] keeps what they are made from and builds
//! them in [`TunnelMetadata::transport`].

use std::sync::Arc;

use hbone::{Identity, TunnelRequest, headers};
use ztunnel::state::workload::TunnelProtocol;

use super::{Downstream, PodTarget};

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
    /// Plain TCP to `podIP:targetPort` (a workload outside the mesh).
    Tcp,
}

/// The tunnel metadata of one endpoint.
#[derive(Debug, Clone)]
pub struct TunnelMetadata {
    /// The endpoint.
    pub target: PodTarget,
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
            target,
            downstream: Arc::clone(downstream),
            host: host.map(str::to_owned),
        }
    }

    /// How to reach the endpoint, with the headers of a new tunnel.
    pub fn transport(&self) -> Transport {
        match self.target.workload.protocol {
            TunnelProtocol::Hbone => {
                let client = self.downstream.client_addr();
                let mut request = TunnelRequest::new(self.target.address);
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
                    expected: vec![self.target.workload.identity()],
                }
            }
            TunnelProtocol::Tcp => Transport::Tcp,
        }
    }
}
