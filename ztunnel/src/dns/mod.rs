//! The DNS proxy: port 15053 inside each pod's network namespace.
//!
//! # Where it sits in the data path
//!
//! With DNS capture on, the pod's capture rules ([`crate::inpod::rules`]) redirect its DNS
//! queries (UDP and TCP port 53) to 15053 in the pod's own namespace, where the integration
//! has bound one [`DnsServer`] for that pod. Each query is then either answered from the mesh
//! state or relayed to the pod's own resolvers:
//!
//! ```text
//! app ──query to :53──> nat output REDIRECT ──> :15053 DnsServer (this pod's)
//!    A/AAAA for a mesh service / ServiceEntry host  ──> answered: its VIPs, TTL 30 s
//!    anything else (other names, other types, other opcodes)
//!        ──> same bytes, same transport ──> the pod's resolv.conf name servers
//!            (from a marked socket in the pod's namespace) ──> answer relayed unchanged
//! ```
//!
//! Answering mesh names locally is what makes ServiceEntry hosts without real DNS records
//! resolvable, and saves the cluster DNS the lookups for in-mesh services; the application then
//! connects to the VIP, which the outbound listener (15001) recognises.
//!
//! # Layout
//! - [`resolve`]: the decision, a pure function of (query name, type, client scope, state).
//! - [`message`]: classifying what arrived and building the proxy's own responses.
//! - [`forward`]: relaying to upstream resolvers over UDP or TCP, with deadlines.
//! - [`server`]: [`DnsServer`], the UDP and TCP listeners with their limits.
//! - [`metrics`]: upstream's `istio_dns_*` metrics ([`DnsMetrics`]).
//! - [`resolv_conf`]: the resolv.conf parser ([`ResolvConf`]).

pub mod forward;
pub mod message;
pub mod metrics;
pub mod resolv_conf;
pub mod resolve;
pub mod server;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use forward::{ForwardError, PlainSockets, UpstreamSockets};
pub use metrics::{DnsLabels, DnsMetrics, Transport};
pub use resolv_conf::ResolvConf;
pub use resolve::{Answer, ClientScope, Resolution, TTL_SECONDS, resolve};
pub use server::DnsServer;

use crate::state::{StateHandle, Workload};

/// The cluster DNS domain when none is configured.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Errors setting up the DNS proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A cluster or search domain that is not a valid DNS name.
    #[error("invalid dns domain {0:?}")]
    InvalidDomain(String),
    /// The resolv.conf could not be read.
    #[error("failed to read {path}: {source}")]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The bound sockets have no local address.
    #[error("dns listener address: {0}")]
    Address(#[source] std::io::Error),
}

/// Limits on what clients and upstreams can make the proxy do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsLimits {
    /// Largest UDP message accepted, from clients and from upstreams (larger client queries
    /// are answered `FORMERR` when they have a header; larger upstream answers become a
    /// truncated response, so the client retries over TCP).
    pub max_udp_message: usize,
    /// Largest length-prefixed query accepted over TCP; the connection is closed otherwise.
    pub max_tcp_message: usize,
    /// A TCP client must send each complete query within this time (idle included), and take
    /// each response within it; the connection is closed otherwise.
    pub tcp_idle_timeout: Duration,
    /// Open client TCP connections; more are closed at once.
    pub max_tcp_connections: usize,
    /// Queries being forwarded at once; more are answered `SERVFAIL`.
    pub max_in_flight: usize,
    /// Deadline of each upstream attempt.
    pub upstream_timeout: Duration,
    /// Upstreams tried per query, at most.
    pub max_upstream_attempts: usize,
}

impl Default for DnsLimits {
    fn default() -> Self {
        Self {
            max_udp_message: 4096,
            max_tcp_message: 16 * 1024,
            // Upstream's hickory server uses 5 s per TCP request.
            tcp_idle_timeout: Duration::from_secs(5),
            max_tcp_connections: 128,
            max_in_flight: 256,
            // Under glibc's 5 s client timeout, so the client gets SERVFAIL rather than silence.
            upstream_timeout: Duration::from_secs(2),
            max_upstream_attempts: resolv_conf::MAX_NAMESERVERS,
        }
    }
}

/// The DNS configuration of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Resolvers for everything not answered locally, tried in order (the pod's resolv.conf
    /// `nameserver`s, port 53).
    pub upstreams: Vec<SocketAddr>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The pod's search list; when empty, Kubernetes' default for its namespace.
    pub search_domains: Vec<String>,
    /// Limits.
    pub limits: DnsLimits,
}

impl DnsConfig {
    /// The configuration of a pod whose resolv.conf is `conf`.
    pub fn from_resolv_conf(conf: &ResolvConf, cluster_domain: &str) -> Self {
        Self {
            upstreams: conf.nameservers.clone(),
            cluster_domain: cluster_domain.to_owned(),
            search_domains: conf.search.clone(),
            limits: DnsLimits::default(),
        }
    }
}

/// The pod a server answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsClient {
    /// Its namespace.
    pub namespace: String,
    /// Its network (VIPs on other networks are not answered).
    pub network: String,
    /// Its canonical service (metrics label `source_canonical_service`).
    pub canonical_service: String,
    /// Its canonical revision (metrics label `source_canonical_revision`).
    pub canonical_revision: String,
}

impl DnsClient {
    /// The client fields of `workload`.
    pub fn from_workload(workload: &Workload) -> Self {
        Self {
            namespace: workload.namespace.clone(),
            network: workload.network.clone(),
            canonical_service: workload.canonical_name.clone(),
            canonical_revision: workload.canonical_revision.clone(),
        }
    }
}

/// Everything one pod's [`DnsServer`] needs.
#[derive(Clone, Debug)]
pub struct DnsContext {
    /// The mesh state, read once per query.
    pub state: StateHandle,
    /// The pod served.
    pub client: DnsClient,
    /// Its DNS configuration.
    pub config: DnsConfig,
    /// Where queries are counted (one per node, shared by the pods' servers).
    pub metrics: Arc<DnsMetrics>,
    /// Where forwarded queries leave from (in a pod: its namespace, marked).
    pub sockets: Arc<dyn UpstreamSockets>,
}
