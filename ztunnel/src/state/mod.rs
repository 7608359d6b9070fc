//! Mesh state: the workloads, services and authorization policies of the mesh, as seen by this
//! node proxy.
//!
//! # Where it sits in the data path
//!
//! State is written by the configuration sources and read by the listeners:
//!
//! - **Writers**: the local config file ([`load_file`], hot-reloaded by [`watch_file`]) or, in a
//!   cluster, the xDS client (protobuf resources converted with `TryFrom` into [`Workload`] and
//!   [`Service`], applied one by one through [`StateHandle::update`]). A writer always builds a
//!   complete new [`MeshState`] snapshot and swaps it in atomically; a resource or file that
//!   fails validation changes nothing.
//! - **Readers**: the outbound listener (is the original destination a service VIP or a
//!   workload? does it have a waypoint? which endpoint and target port, via
//!   [`select_endpoint`]? HBONE or TCP?) and the inbound listeners (which workload owns the
//!   destination IP, which policies apply to it). Each connection takes one snapshot with
//!   [`StateHandle::current`] and decides against it; [`StateHandle::subscribe`] wakes
//!   whoever must react to changes (e.g. re-checking live connections against new policies).
//!
//! # Layout
//! - [`workload`]: [`Workload`] and the address types; protobuf conversion and [`ConvertError`].
//! - [`service`]: [`Service`] and its load-balancing settings.
//! - [`store`]: the indexed [`MeshState`], its [`MeshStateBuilder`] and the [`StateHandle`].
//! - [`local`]: the local config file schema ([`LocalConfig`]) and loading.
//! - [`reload`]: polling hot reload of the local config file.
//! - [`lb`]: endpoint selection.

pub mod lb;
pub mod local;
pub mod reload;
pub mod service;
pub mod store;
pub mod workload;

pub use lb::select_endpoint;
pub use local::{LoadError, LocalConfig, LocalWorkload, load_file};
pub use reload::watch_file;
pub use service::{
    IpFamily, LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Service,
};
pub use store::{Endpoint, MeshState, MeshStateBuilder, StateHandle};
pub use workload::{
    ApplicationTunnel, ApplicationTunnelProtocol, ConvertError, GatewayAddress, GatewayDestination,
    HealthStatus, Locality, NamespacedHostname, NetworkAddress, NetworkMode, PortMap,
    TunnelProtocol, Workload,
};

/// An authorization policy as held in the state; the model and its evaluation live in
/// [`crate::rbac`].
pub type Policy = crate::rbac::Authorization;

#[cfg(test)]
mod tests;
