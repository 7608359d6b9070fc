//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! ztunnel captures the TCP traffic of the workloads on its node, carries it to the destination
//! node inside HBONE tunnels (HTTP/2 `CONNECT` over mutual TLS with SPIFFE identities, port
//! 15008), enforces L4 authorization on the receiving side and reports telemetry. The tunnel
//! itself is the [`hbone`] crate; this crate decides where connections go.
//!
//! # Layout
//! - [`app`]: a node and the listeners of each local workload, bound before they run.
//! - [`config`]: start-up configuration from the environment (upstream variable names).
//! - [`demo`]: both ends of a tunnel on one machine, with a local CA.
//! - [`identity`]: one certificate per local identity, issued on first use and rotated.
//! - [`state`]: the mesh state (workloads, services, policies), from a local file or istiod.
//! - [`inbound`]: tunnels arriving on 15008 for a local workload: policy, then the application.
//! - [`outbound`]: traffic leaving local workloads: the routing decision and the listener.
//! - [`socks5`]: the SOCKS5 handshake, for sending traffic into the mesh without capture rules.
//! - [`rbac`]: L4 authorization policies and their evaluation.
//! - [`telemetry`]: Istio TCP metrics and per-connection access logs.

pub mod app;
pub mod config;
pub mod demo;
pub mod identity;
pub mod inbound;
pub mod outbound;
pub mod rbac;
pub mod socks5;
pub mod state;
pub mod telemetry;
