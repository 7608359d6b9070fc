//! Telemetry: Istio TCP metrics and access logs.
//!
//! - [`labels`]: Istio's standard TCP label set ([`ConnectionLabels`]), derived from the
//!   workloads, service and identities of a connection.
//! - [`metrics`]: the `istio_tcp_*` counters and `istio_build`, one independent Prometheus
//!   registry per [`Metrics`] value (no global recorder).
//! - [`access_log`]: the per-connection [`AccessLog`] record, its text and JSON forms, and
//!   its emission at `tracing` target `access`.

pub mod access_log;
pub mod labels;
pub mod metrics;

pub use access_log::{AccessLog, Direction};
pub use labels::{ConnectionLabels, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy};
pub use metrics::{ByteCounters, Metrics};

#[cfg(test)]
mod tests;
