//! The DNS proxy's metrics, with upstream ztunnel's names and labels.
//!
//! Upstream (unstable) metrics, with its label set `request_query_type` (lowercase record type,
//! e.g. `a`, `aaaa`, `mx`), `request_protocol` (`udp`, `tcp`), `source_canonical_service` and
//! `source_canonical_revision` (`unknown` when empty):
//!
//! - [`REQUESTS`]: every query handled, answered locally or forwarded;
//! - [`UPSTREAM_REQUESTS`]: queries forwarded to an upstream resolver;
//! - [`UPSTREAM_FAILURES`]: forwarded queries that got no upstream answer (the client got
//!   `SERVFAIL`);
//! - [`UPSTREAM_DURATION`]: histogram of the time upstream took, with upstream's buckets.
//!
//! Like [`crate::telemetry::Metrics`], a [`DnsMetrics`] owns its own
//! `metrics-exporter-prometheus` recorder (no process-global recorder), so each instance — one
//! per node, shared by every pod's server — counts on its own and tests can read the values
//! back from [`DnsMetrics::render`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ::metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::DnsClient;

/// `istio_dns_requests_total`.
pub const REQUESTS: &str = "istio_dns_requests_total";
/// `istio_dns_upstream_requests_total`.
pub const UPSTREAM_REQUESTS: &str = "istio_dns_upstream_requests_total";
/// `istio_dns_upstream_failures_total`.
pub const UPSTREAM_FAILURES: &str = "istio_dns_upstream_failures_total";
/// `istio_dns_upstream_request_duration_seconds` (histogram).
pub const UPSTREAM_DURATION: &str = "istio_dns_upstream_request_duration_seconds";

/// Upstream's buckets for [`UPSTREAM_DURATION`], in seconds (sorted).
pub const DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

/// The value of a label upstream leaves unset.
const UNKNOWN: &str = "unknown";

/// Transport a query arrived on (label `request_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (length-prefixed messages).
    Tcp,
}

impl Transport {
    /// The label value: `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The label set of every DNS metric.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DnsLabels {
    /// Lowercase record type of the question (`a`, `aaaa`, `mx`, …; `unknown` without one).
    pub request_query_type: String,
    /// `udp` or `tcp`.
    pub request_protocol: &'static str,
    /// The client's canonical service.
    pub source_canonical_service: String,
    /// The client's canonical revision.
    pub source_canonical_revision: String,
}

impl DnsLabels {
    /// Labels of a query of `query_type` (e.g. `"A"`, lowercased here) over `transport` from
    /// `client`.
    pub fn new(query_type: &str, transport: Transport, client: &DnsClient) -> Self {
        let or_unknown = |s: &str| {
            if s.is_empty() {
                UNKNOWN.to_owned()
            } else {
                s.to_owned()
            }
        };
        Self {
            request_query_type: or_unknown(&query_type.to_ascii_lowercase()),
            request_protocol: transport.as_str(),
            source_canonical_service: or_unknown(&client.canonical_service),
            source_canonical_revision: or_unknown(&client.canonical_revision),
        }
    }

    /// The labels in exposition order.
    fn to_labels(&self) -> Vec<Label> {
        vec![
            Label::new("request_query_type", self.request_query_type.clone()),
            Label::new("request_protocol", self.request_protocol),
            Label::new(
                "source_canonical_service",
                self.source_canonical_service.clone(),
            ),
            Label::new(
                "source_canonical_revision",
                self.source_canonical_revision.clone(),
            ),
        ]
    }
}

/// Handles of one label set, each registered on first use so that only the series that were
/// touched are exported (a query answered locally has no upstream series).
#[derive(Default)]
struct Handles {
    requests: Option<Counter>,
    upstream_requests: Option<Counter>,
    upstream_failures: Option<Counter>,
    upstream_duration: Option<Histogram>,
}

/// The DNS metrics of one node proxy.
pub struct DnsMetrics {
    /// The recorder all handles are registered with.
    recorder: PrometheusRecorder,
    /// Renders the recorder's contents.
    handle: PrometheusHandle,
    /// Handles by label set (bounded: record types × 2 transports × the local workloads).
    cache: Mutex<HashMap<DnsLabels, Handles>>,
}

impl std::fmt::Debug for DnsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsMetrics").finish_non_exhaustive()
    }
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metadata for registrations; the Prometheus recorder ignores it.
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

impl DnsMetrics {
    /// A fresh, empty set of DNS metrics with its own recorder.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        // Only fails for an empty bucket list, which DURATION_BUCKETS is not; a summary would
        // be rendered instead of the histogram if it ever did.
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full(UPSTREAM_DURATION.to_owned()),
                &DURATION_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        for (name, help) in [
            (REQUESTS, "Total number of DNS requests (unstable)"),
            (
                UPSTREAM_REQUESTS,
                "Total number of DNS requests forwarded to upstream (unstable)",
            ),
            (
                UPSTREAM_FAILURES,
                "Total number of DNS requests that failed to forward upstream (unstable)",
            ),
        ] {
            recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
        }
        recorder.describe_histogram(
            KeyName::from(UPSTREAM_DURATION),
            Some(::metrics::Unit::Seconds),
            SharedString::from(
                "Total time in seconds Istio takes to get DNS response from upstream (unstable)",
            ),
        );
        Self {
            recorder,
            handle,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the handles of `labels`, under the cache lock.
    fn with_handles<R>(&self, labels: &DnsLabels, f: impl FnOnce(&mut Handles) -> R) -> R {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get_mut(labels) {
            Some(handles) => f(handles),
            None => f(cache.entry(labels.clone()).or_default()),
        }
    }

    /// The counter `name` for `labels`, held in `slot`, registered on first use.
    fn counter(
        &self,
        labels: &DnsLabels,
        name: &'static str,
        slot: fn(&mut Handles) -> &mut Option<Counter>,
    ) -> Counter {
        self.with_handles(labels, |handles| {
            slot(handles)
                .get_or_insert_with(|| {
                    let key = Key::from_parts(name, labels.to_labels());
                    self.recorder.register_counter(&key, &metadata())
                })
                .clone()
        })
    }

    /// Counts a query handled (`istio_dns_requests_total`).
    pub fn request(&self, labels: &DnsLabels) {
        self.counter(labels, REQUESTS, |h| &mut h.requests)
            .increment(1);
    }

    /// Counts a query forwarded upstream (`istio_dns_upstream_requests_total`).
    pub fn upstream_request(&self, labels: &DnsLabels) {
        self.counter(labels, UPSTREAM_REQUESTS, |h| &mut h.upstream_requests)
            .increment(1);
    }

    /// Counts a forwarded query that got no upstream answer
    /// (`istio_dns_upstream_failures_total`).
    pub fn upstream_failure(&self, labels: &DnsLabels) {
        self.counter(labels, UPSTREAM_FAILURES, |h| &mut h.upstream_failures)
            .increment(1);
    }

    /// Records how long upstream took (`istio_dns_upstream_request_duration_seconds`).
    pub fn upstream_duration(&self, labels: &DnsLabels, elapsed: Duration) {
        let histogram = self.with_handles(labels, |handles| {
            handles
                .upstream_duration
                .get_or_insert_with(|| {
                    let key = Key::from_parts(UPSTREAM_DURATION, labels.to_labels());
                    self.recorder.register_histogram(&key, &metadata())
                })
                .clone()
        });
        histogram.record(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4) of every series recorded so far; append it
    /// to the node's other metrics on the scrape endpoint.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
