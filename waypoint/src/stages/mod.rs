//! The stages of the waypoint's chain, as named types, in the order a request meets them:
//!
//! ```text
//! connect_terminate ─▶ main_internal ─┬▶ inbound-vip|<port>|http|<host> ─▶ inbound-vip|<port>|http/<subset>|<host>
//!   (mTLS + CONNECT)    (dispatch)     │    (HTTP server, per-request phases)   (cluster: LB, limits, outliers)
//!                                      │                                              │
//!                                      └▶ inbound-pod|<port>|<podIP> ◀────────────────┘
//!                                           (one endpoint: tunnel metadata)
//!                                                │
//!                                                ▼
//!                                         connect_originate ─▶ HBONE to <podIP>:15008
//! ```
//!
//! Each hand-off is an in-process call carrying typed metadata ([`Downstream`], [`VipTarget`],
//! [`PodTarget`]); there are no loopback sockets between stages. The names are Istio's, so the
//! stages read the same in logs, metrics and `config_dump` as an Envoy waypoint's.

pub mod connect_originate;
pub mod connect_terminate;
pub mod inbound_pod;
pub mod inbound_vip;
pub mod main_internal;

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::Identity;
use ztunnel::state::service::Service;
use ztunnel::state::workload::Workload;

/// The name of the HBONE-terminating stage (Istio's listener `connect_terminate`).
pub const CONNECT_TERMINATE: &str = "connect_terminate";
/// The name of the dispatch stage (Istio's internal listener `main_internal`).
pub const MAIN_INTERNAL: &str = "main_internal";
/// The name of the HBONE-originating stage (Istio's internal listener and cluster
/// `connect_originate`).
pub const CONNECT_ORIGINATE: &str = "connect_originate";

/// What `connect_terminate` learned about a tunnel, handed to every later stage.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The identity the peer proved in the mTLS handshake (the source workload's).
    pub peer_identity: Identity,
    /// The peer's address on the HBONE connection (the source ztunnel).
    pub peer_addr: SocketAddr,
    /// The waypoint's address the peer connected to.
    pub local_addr: SocketAddr,
    /// The original destination: the `CONNECT` target (service VIP:port or pod IP:port).
    pub original_dst: SocketAddr,
    /// The original client address from the `forwarded` header, when present.
    pub forwarded_for: Option<SocketAddr>,
    /// The source's baggage (`k8s.namespace.name`, `k8s.deployment.name`, …).
    pub baggage: Vec<(String, String)>,
    /// The source workload, when the state knows a workload with the peer's identity at the
    /// client address.
    pub source: Option<Arc<Workload>>,
    /// The `x-forwarded-client-cert` the waypoint sets on this tunnel's requests (its identity,
    /// the peer's and the peer's certificate), built once per tunnel.
    pub client_cert_details: Option<http::HeaderValue>,
}

impl Downstream {
    /// The client's address as seen by the application: the forwarded address when present,
    /// else the peer's.
    pub fn client_addr(&self) -> SocketAddr {
        self.forwarded_for.unwrap_or(self.peer_addr)
    }
}

/// A service port the dispatch chose: the input of its inbound VIP listener.
#[derive(Debug, Clone)]
pub struct VipTarget {
    /// The service.
    pub service: Arc<Service>,
    /// The service port addressed.
    pub port: u16,
}

impl VipTarget {
    /// `inbound-vip|<port>|<protocol>|<hostname>`.
    pub fn listener_name(&self, protocol: &str) -> String {
        format!(
            "inbound-vip|{}|{protocol}|{}",
            self.port, self.service.hostname
        )
    }
}

/// One endpoint to send to: the input of the inbound pod listener.
#[derive(Debug, Clone)]
pub struct PodTarget {
    /// The workload.
    pub workload: Arc<Workload>,
    /// `podIP:targetPort`.
    pub address: SocketAddr,
}

impl PodTarget {
    /// `inbound-pod|<port>|<podIP>`.
    pub fn listener_name(&self) -> String {
        format!("inbound-pod|{}|{}", self.address.port(), self.address.ip())
    }
}
