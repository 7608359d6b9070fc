//! waypoint: the L7 proxy of the ambient mesh.
//!
//! A waypoint is provisioned from a Gateway API `Gateway` of class `istio-waypoint`. ztunnel
//! sends it the traffic of the services and workloads bound to it over HBONE; the waypoint
//! terminates the tunnel (`connect_terminate`), dispatches by destination (`main_internal`),
//! applies L7 routing and policy in the inbound VIP listener, picks an endpoint in the inbound
//! pod listener and re-tunnels each request to the destination pod's ztunnel
//! (`connect_originate`). The tunnel on both sides is the [`hbone`] crate.
//!
//! # Layout
//!
//! Where each module sits in the chain
//! `connect_terminate → main_internal → inbound VIP listener → inbound VIP cluster →
//! inbound pod listener → connect_originate`:
//!
//! - [`config`]: the L7 configuration as users write it (VirtualService, DestinationRule,
//!   ServiceEntry, HTTPRoute, GRPCRoute), loaded from a directory of Kubernetes YAML with
//!   per-object errors. Input of the chain, not a stage.
//! - [`route`]: the compiled, pure route model. Its [`RouteTable`](route::RouteTable) is what
//!   the **inbound VIP listener** `inbound-vip|<port>|http|<host>` consults per request
//!   ([`select_route`](route::select_route): the logical stage, VirtualService/HTTPRoute
//!   routing to a service, subset and port); its
//!   [`DestinationPolicies`](route::DestinationPolicies) configure the **inbound VIP cluster**
//!   `inbound-vip|<port>|http/<subset>|<host>` (the concrete stage: load balancer, connection
//!   pool, outlier detection, TLS). The endpoint stage (inbound pod listener,
//!   `connect_originate`) and the listeners themselves come next.

pub mod admin;
pub mod app;
pub mod body;
pub mod cluster;
pub mod config;
pub mod filters;
pub mod route;
pub mod run;
pub mod stages;
pub mod telemetry;

/// The port a waypoint serves HBONE on (the Gateway's single `HBONE` listener).
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;
