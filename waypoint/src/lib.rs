//! waypoint: the L7 proxy of the ambient mesh.
//!
//! A waypoint is provisioned from a Gateway API `Gateway` of class `istio-waypoint`. ztunnel
//! sends it the traffic of the services and workloads bound to it over HBONE; the waypoint
//! terminates the tunnel (`connect_terminate`), dispatches by destination (`main_internal`),
//! applies L7 routing and policy in the inbound VIP listener, picks an endpoint in the inbound
//! pod listener and re-tunnels each request to the destination pod's ztunnel
//! (`connect_originate`). The tunnel on both sides is the [`hbone`] crate.

/// The port a waypoint serves HBONE on (the Gateway's single `HBONE` listener).
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;
