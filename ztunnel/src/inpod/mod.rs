//! In-pod redirection: how captured pod traffic reaches ztunnel.
//!
//! In ambient mode the istio-cni node agent installs capture rules inside each enrolled pod's
//! network namespace and hands that namespace to ztunnel over the ZDS unix socket; ztunnel then
//! opens its listeners (15001, 15006, 15008, 15053) inside the pod's namespace, so the pod's own
//! traffic is redirected to them without leaving the pod.
//!
//! # Layout
//! - [`rules`]: the capture ruleset (nftables), rendered from a per-pod config and applied
//!   inside a pod's namespace (ztunnel installs it itself for VMs, tests and local use).
//! - [`zds`]: the ZDS client (ztunnel's side of istio-cni's channel): pods and their network
//!   namespaces, handed to a [`zds::WorkloadHandler`].
//! - [`manager`]: the node's in-pod proxies, started and stopped as ZDS announces pods.
//! - [`netns`]: a thread inside a pod's network namespace that creates sockets there.
//! - [`sockets`]: the marked sockets of one pod's proxy, created in the pod's namespace.
//! - [`agent`]: the node-agent side of ZDS (istio-cni's role), for tests and local use.
//! - [`node_agent`]: a node agent outside Kubernetes (`ztunnel node-agent`): pods from a YAML
//!   file, their capture rules installed, and their namespaces handed to ztunnel over ZDS.

pub mod agent;
pub mod manager;
pub mod netns;
pub mod node_agent;
pub mod rules;
pub mod sockets;
pub mod zds;

/// What in-pod mode needs of the system, missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "in-pod mode needs to enter network namespaces and mark sockets (CAP_SYS_ADMIN and \
     CAP_NET_ADMIN): {0}"
)]
pub struct CapabilityError(#[source] std::io::Error);

/// Checks, once at start-up, that this process can enter a network namespace (its own) and
/// set `mark` on a socket there, as every pod proxy will: better to fail at once than on the
/// first pod.
pub fn verify_capabilities(mark: u32) -> Result<(), CapabilityError> {
    let own = netns::Netns::open("/proc/self/ns/net")
        .map_err(|e| CapabilityError(std::io::Error::from(e)))?;
    let sockets = sockets::PodSockets::new(std::sync::Arc::new(own), mark);
    sockets
        .tcp_listener(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            0,
        )))
        .map(drop)
        .map_err(CapabilityError)
}
