//! ztunnel: the per-node L4 proxy of the ambient mesh.
//!
//! ztunnel captures the TCP traffic of the workloads on its node, carries it to the destination
//! node inside HBONE tunnels (HTTP/2 `CONNECT` over mutual TLS with SPIFFE identities, port
//! 15008), enforces L4 authorization on the receiving side and reports telemetry. The tunnel
//! itself is the [`hbone`] crate; this crate decides where connections go.
//!
//! # Layout
//! - [`alloc`]: the global allocator of the `ztunnel` binary (and of the L4 benchmark).
//! - [`admin`]: the admin (15000, localhost), metrics (15020) and readiness (15021) HTTP servers.
//! - [`app`]: a node and the listeners of each local workload, bound before they run.
//! - [`ca_client`]: workload certificates from Istio's CA (CSR over gRPC), checked before use.
//! - [`config`]: start-up configuration from the environment (upstream variable names).
//! - [`connections`]: live inbound connections, re-checked (and closed) when policies change.
//! - [`demo`]: both ends of a tunnel on one machine, with a local CA.
//! - [`dns`]: the DNS proxy (15053 in each pod): mesh and ServiceEntry hostnames answered from
//!   the state, everything else relayed to the pod's resolvers.
//! - [`drain`]: graceful shutdown of a listener's connections, up to a deadline.
//! - [`identity`]: one certificate per local identity, issued on first use and rotated.
//! - [`inbound`]: connections arriving for a local workload (HBONE on 15008, plaintext on 15006):
//!   policy, then the application.
//! - [`inpod`]: in-pod redirection: the ZDS protocol with istio-cni and the capture rules.
//! - [`outbound`]: traffic leaving local workloads: the routing decision and the listener.
//! - [`quickstart`]: a local mesh on loopback from a local config file (the README's first command).
//! - [`rbac`]: L4 authorization policies and their evaluation.
//! - [`run`]: the node proxy as a process: start-up from the environment, serving the local
//!   workloads as the state changes, graceful drain.
//! - [`socket`]: original destination of captured connections.
//! - [`socks5`]: the SOCKS5 handshake, for sending traffic into the mesh without capture rules.
//! - [`state`]: the mesh state (workloads, services, policies), from a local file or istiod.
//! - [`telemetry`]: Istio TCP metrics and per-connection access logs.
//! - [`xds`]: the delta ADS client that feeds the mesh state from istiod.

pub mod admin;
pub mod alloc;
pub mod app;
pub mod ca_client;
pub mod config;
pub mod connections;
pub mod demo;
pub mod dns;
pub mod drain;
pub mod identity;
pub mod inbound;
pub mod inpod;
pub mod outbound;
pub mod quickstart;
pub mod rbac;
pub mod run;
pub mod socket;
pub mod socks5;
pub mod state;
pub mod telemetry;
pub mod xds;
