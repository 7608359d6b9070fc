//! HBONE: the secure tunnel between mesh proxies.
//!
//! HBONE carries one TCP connection per HTTP/2 `CONNECT` stream, over mutual TLS in which both
//! sides present a certificate with a single SPIFFE URI SAN
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`). The target of the tunnel is
//! the request's `:authority` (`<ip>:<port>`); the server listens on port 15008.
//!
//! This crate is a library with no knowledge of workloads or policies. It sits between the node
//! proxy's listeners (which decide *where* a connection goes) and the network:
//!
//! ```text
//! app bytes ─▶ client::Pool ──h2 CONNECT over mTLS──▶ server::serve ─▶ handler(Request, Stream)
//! ```
//!
//! # Layout
//! - [`identity`]: SPIFFE identities, strictly parsed.
//! - [`cert`]: workload certificates and a swappable certificate store (rotation).
//! - [`ca`]: a local certificate authority (generated root or Istio's plug-in CA layout).
//! - [`tls`]: rustls configurations and the SPIFFE-aware certificate verifiers.
//! - [`headers`]: the HBONE request headers (`forwarded`, `baggage`, `traceparent`).
//! - [`client`] and [`pool`]: opening tunnels, multiplexed over pooled HTTP/2 connections.
//! - [`server`]: accepting tunnels and handing them to a handler.
//! - [`workers`]: thread-per-core serving, one single-threaded runtime per worker thread.
//! - [`stream`]: an HTTP/2 stream as an `AsyncRead + AsyncWrite` byte stream.
//! - [`socket`]: where outgoing TCP sockets come from (e.g. a pod's network namespace).
//! - [`copy`]: bidirectional copy with half-close and adaptive buffers.
//! - `coalesce`: TLS writes sent once per HTTP/2 flush (one `writev` for several frames), and
//!   the count of a connection's open streams ([`OpenStreams`]) that decides whether a flush
//!   waits for other streams' frames.
//! - [`config`] and [`error`]: the knobs and the typed errors of all of the above.

pub mod ca;
pub mod cert;
pub mod client;
mod coalesce;
pub mod config;
pub mod copy;
pub mod error;
pub mod headers;
pub mod identity;
pub mod pool;
pub mod server;
mod sniff;
pub mod socket;
pub mod stream;
pub mod tls;
pub mod workers;

/// The port HBONE servers listen on.
pub const HBONE_PORT: u16 = 15008;

pub use ca::LocalCa;
pub use cert::{CertStore, WorkloadCertificate};
pub use client::TunnelRequest;
pub use coalesce::{OpenStream, OpenStreams, others_open};
pub use config::Config;
pub use error::Error;
pub use identity::Identity;
pub use pool::{Pool, PoolKey, Tunnel};
pub use server::{Handler, InboundRequest, Responder, Server, Shutdown};
pub use socket::{DefaultSockets, SocketFactory};
pub use stream::H2Stream;
pub use workers::Workers;
