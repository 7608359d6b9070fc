//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! ztunnel captures the TCP traffic of the workloads on its node, carries it to the destination
//! node inside HBONE tunnels (HTTP/2 `CONNECT` over mutual TLS with SPIFFE identities, port
//! 15008), enforces L4 authorization on the receiving side and reports telemetry. The tunnel
//! itself is the [`hbone`] crate; this crate decides where connections go.
//!
//! # Layout
//! - [`config`]: start-up configuration from the environment (upstream variable names).
//! - [`demo`]: both ends of a tunnel on one machine, with a local CA.
//! - [`identity`]: one certificate per local identity, issued on first use and rotated.
//! - [`state`]: the mesh state (workloads, services, policies), from a local file or istiod.
//! - [`rbac`]: L4 authorization policies and their evaluation.

pub mod config;
pub mod demo;
pub mod identity;
pub mod rbac;
pub mod state;
