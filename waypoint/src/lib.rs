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
//!   the inbound VIP listener consults per request ([`select_route`](route::select_route): the
//!   logical stage); its [`DestinationPolicies`](route::DestinationPolicies) configure the
//!   inbound VIP clusters (the concrete stage).
//! - [`stages`]: the chain itself, one module per stage with Istio's names:
//!   `connect_terminate` (the HBONE handler), `main_internal` (dispatch, pure),
//!   `inbound_vip` (the HTTP/gRPC server and the per-request phases, TCP fallback),
//!   `inbound_pod` (one endpoint's tunnel metadata), `connect_originate` (HBONE to the
//!   destination ztunnel, upstream HTTP connection pooling).
//! - [`cluster`]: the inbound VIP cluster at run time: endpoints, load balancing, circuit
//!   breaking, outlier detection.
//! - [`filters`]: pure per-request operations (header edits, rewrite, redirect, fault, CORS,
//!   retry decisions, timeouts, hop-by-hop headers, request ids).
//! - [`body`]: the replayable request body (retries, mirrors) and the observed response body
//!   (the log phase starts when it ends).
//! - [`telemetry`]: Istio request metrics (`reporter="waypoint"`) and the Envoy-style access log.
//! - [`fxhash`]: the hasher of the hot-path caches.
//! - [`app`]: the shared core (state, compiled configuration, clusters) and the bound HBONE
//!   listener; [`run`]: the process (certificates, state and configuration watches, admin,
//!   metrics and readiness servers); [`admin`]: `config_dump` and the admin endpoints.
//! - [`quickstart`]: the README's first command: a local mesh with a waypoint in front of a
//!   demo service.

pub mod admin;
pub mod app;
pub mod body;
pub mod cluster;
pub mod config;
pub mod filters;
pub mod fxhash;
pub mod quickstart;
pub mod route;
pub mod run;
pub mod stages;
pub mod telemetry;

/// The port a waypoint serves HBONE on (the Gateway's single `HBONE` listener).
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;
