//! Request telemetry of the waypoint: Istio request metrics, the access log and traces.
//!
//! This is the **log phase** of the inbound VIP listener `inbound-vip|<port>|http|<host>`: the
//! last step of each request's pipeline (`route → authorize → filters → select_backend → send
//! → respond → log`), run once the response has been sent downstream (or the request has
//! failed). It only observes: it hands nothing to a later stage. Its inputs come from the
//! earlier stages of the chain:
//!
//! - `connect_terminate`: the peer identity authenticated by the HBONE handshake (the
//!   `source_principal`) and the downstream addresses;
//! - the inbound VIP listener: the addressed service, the matched route, the request head, the
//!   response status, flags and byte counts;
//! - the inbound VIP cluster / inbound pod listener: the cluster name and the chosen endpoint
//!   (the `destination_*` workload labels and `upstream_host`).
//!
//! Modules:
//! - [`labels`]: Istio's standard request label set ([`RequestLabels`], `reporter="waypoint"`),
//!   derived from the source workload and peer identity and the destination service and
//!   endpoint; Envoy response flags ([`ResponseFlags`]).
//! - [`metrics`]: `istio_requests_total`, `istio_request_duration_milliseconds`,
//!   `istio_request_bytes`, `istio_response_bytes` (bucketed histograms), `istio_build` and a
//!   few Envoy-style per-cluster and per-listener counters (`envoy_http_rbac_*`), one independent Prometheus registry per
//!   [`RequestMetrics`] (no global recorder), rendered by the admin server.
//! - [`access_log`]: the per-request [`AccessLogEntry`] in Istio's JSON and TEXT formats and
//!   the [`AccessLog`] sink (stdout, any writer, memory for tests, or disabled).
//! - [`trace`]: W3C `traceparent` / B3 propagation, sampling and the per-request span
//!   ([`Tracer`]); [`otlp`]: the batching OTLP/gRPC span exporter.

pub mod access_log;
pub mod labels;
pub mod metrics;
pub mod otlp;
pub mod trace;

pub use access_log::{AccessLog, AccessLogEntry, AccessLogFormat, MemoryLog, UnknownFormat};
pub use labels::{
    DestinationLabels, RequestLabels, RequestProtocol, ResponseFlag, ResponseFlags, SecurityPolicy,
    WorkloadLabels,
};
pub use metrics::{ClusterStat, HttpStat, RequestMetrics, SpanCounters, TcpCounters};
pub use trace::{Tracer, TracingSettings};

#[cfg(test)]
mod tests;
