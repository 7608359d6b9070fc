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
//!   ServiceEntry, HTTPRoute, GRPCRoute, RequestAuthentication, AuthorizationPolicy), loaded
//!   from a directory of Kubernetes YAML with per-object errors. Input of the chain, not a stage.
//! - [`authn`]: RequestAuthentication, the authenticate phase of the inbound VIP listener: JWT
//!   validation against inline or fetched (`jwksUri`) key sets, yielding the request principal
//!   later phases read.
//! - [`authz`]: L7 authorization (AuthorizationPolicy), pure: which policies apply to each
//!   served service, their evaluation per request, and the path normalisation that precedes
//!   authorization and routing in the inbound VIP listener.
//! - [`ext_authz`]: external authorization for CUSTOM policies, pure: the HTTP and gRPC
//!   check requests built from a request, and the verdict of the authorizer's answer.
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
//! - [`egress`]: where a request to a destination outside the mesh goes: a `MESH_EXTERNAL`
//!   ServiceEntry's endpoints (STATIC, DNS, NONE; TLS origination), `PassthroughCluster` or
//!   `BlackHoleCluster` by the outbound traffic policy. Pure decision plus the DNS cache and
//!   TLS settings the inbound VIP listener and `connect_originate` use.
//! - [`filters`]: pure per-request operations (header edits, rewrite, redirect, fault, CORS,
//!   retry decisions, timeouts, hop-by-hop headers, request ids).
//! - [`body`]: the replayable request body (retries, mirrors) and the observed response body
//!   (the log phase starts when it ends).
//! - [`telemetry`]: Istio request metrics (`reporter="waypoint"`) and the Envoy-style access log.
//! - [`app`]: the shared core (state, compiled configuration, clusters) and the bound HBONE
//!   listener, whose connections are served on worker threads ([`hbone::workers`]), each with
//!   its own runtime and its own `connect_originate` pools; [`run`]: the process (certificates, state and configuration watches, admin,
//!   metrics and readiness servers); [`admin`]: `config_dump` and the admin endpoints.
//! - [`source`]: where the mesh state (a local file or istiod over xDS) and the certificate
//!   (istiod's CA, a local or plug-in CA) come from, chosen from flags and environment with
//!   ztunnel's variable names. Inputs of the chain, not a stage.
//! - [`cli`]: `waypoint generate|apply|list|status|delete`, istioctl's `waypoint` commands:
//!   the Gateway a waypoint is provisioned from, and its status. Before the chain, not a stage.
//! - [`k8s`]: the waypoint controller (`waypoint controller`): provisions a waypoint
//!   (ServiceAccount, Deployment, Service) for each Gateway of its class and reports the
//!   Gateway's status. Before the chain, not a stage.
//! - [`quickstart`]: the README's first command: a local mesh with a waypoint in front of a
//!   demo service.

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod ext_authz;
pub mod filters;
pub mod k8s;
pub mod quickstart;
pub mod route;
pub mod run;
pub mod source;
pub mod stages;
pub mod telemetry;

/// The port a waypoint serves HBONE on (the Gateway's single `HBONE` listener).
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;

/// Istio's ports for a waypoint: the binary's default listeners, the waypoint Service's and
/// pods' ports, and the Helm chart's probes and scrape annotations.
pub mod ports {
    /// HBONE (`connect_terminate`).
    pub const HBONE: u16 = crate::HBONE_PORT;
    /// Admin (`config_dump`, `/logging`, `/quitquitquit`), served to localhost only.
    pub const ADMIN: u16 = 15000;
    /// Istio request metrics (`/stats/prometheus`).
    pub const METRICS: u16 = 15020;
    /// Readiness (`/healthz/ready`).
    pub const READINESS: u16 = 15021;
}
