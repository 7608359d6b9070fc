//! Istio's TCP metrics for one proxy instance, rendered in the Prometheus text format.
//!
//! Each [`Metrics`] owns its own `metrics-exporter-prometheus` recorder; nothing is installed as
//! the process-global `metrics` recorder, so two proxies in one process (tests, the demo) never
//! share a counter. Counters are registered through the [`Recorder`] trait and their handles
//! cached per label set, so recording is a map lookup plus an atomic add; long-lived connections
//! can hold a [`ByteCounters`] to skip the lookup.
//!
//! `metrics-exporter-prometheus` adds no `_total` suffix, so the counters are named with it.
//! There are no histograms (which it would render as summaries unless buckets are set), so no
//! upkeep is needed: [`PrometheusHandle::render`] itself publishes pending descriptions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ::metrics::{Counter, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::labels::ConnectionLabels;

/// `istio_tcp_connections_opened_total`.
pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
/// `istio_tcp_connections_closed_total`.
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
/// `istio_tcp_sent_bytes_total`.
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
/// `istio_tcp_received_bytes_total`.
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
/// `istio_tcp_connections_failed_total` (unstable upstream).
pub const CONNECTIONS_FAILED: &str = "istio_tcp_connections_failed_total";
/// `istio_build`.
pub const BUILD: &str = "istio_build";

/// The per-label-set counters, in the order of the [`Kind`] discriminants.
const KINDS: [(Kind, &str, &str); 5] = [
    (
        Kind::Opened,
        CONNECTIONS_OPENED,
        "The total number of TCP connections opened",
    ),
    (
        Kind::Closed,
        CONNECTIONS_CLOSED,
        "The total number of TCP connections closed",
    ),
    (
        Kind::Sent,
        SENT_BYTES,
        "The size of total bytes sent during response in case of a TCP connection",
    ),
    (
        Kind::Received,
        RECEIVED_BYTES,
        "The size of total bytes received during request in case of a TCP connection",
    ),
    (
        Kind::Failed,
        CONNECTIONS_FAILED,
        "The total number of TCP connections that failed to establish (unstable)",
    ),
];

/// One of the labelled counters.
#[derive(Clone, Copy)]
enum Kind {
    Opened = 0,
    Closed = 1,
    Sent = 2,
    Received = 3,
    Failed = 4,
}

/// Counter handles of one label set, registered on first use so that only the series that
/// were touched are exported.
type Handles = [Option<Counter>; KINDS.len()];

/// Istio TCP metrics of one proxy instance.
pub struct Metrics {
    /// The recorder all handles are registered with.
    recorder: PrometheusRecorder,
    /// Renders the recorder's contents.
    handle: PrometheusHandle,
    /// Counter handles by label set. The keys are shared with the connections that have those
    /// labels ([`Metrics::intern`]), so a live connection does not keep a copy of its own.
    cache: Mutex<HashMap<Arc<ConnectionLabels>, Handles>>,
    /// The DNS proxies' metrics (`istio_dns_*`), rendered with the rest.
    dns: Arc<crate::dns::DnsMetrics>,
}

/// The two byte counters of one connection, for cheap incremental updates while it runs.
#[derive(Clone)]
pub struct ByteCounters {
    sent: Counter,
    received: Counter,
}

impl ByteCounters {
    /// Adds `sent` to `istio_tcp_sent_bytes_total` and `received` to
    /// `istio_tcp_received_bytes_total` (see [`Metrics::bytes`] for the directions).
    pub fn add(&self, sent: u64, received: u64) {
        if sent > 0 {
            self.sent.increment(sent);
        }
        if received > 0 {
            self.received.increment(received);
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metadata for registrations; the Prometheus recorder ignores it.
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

impl Metrics {
    /// A fresh, empty set of metrics with its own recorder. `istio_build` is set to 1 with
    /// `component="ztunnel"` and `tag` the crate version.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        for (_, name, help) in KINDS {
            recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
        }
        recorder.describe_gauge(
            KeyName::from(BUILD),
            None,
            SharedString::from("Istio component build info"),
        );
        let build = Key::from_parts(
            BUILD,
            vec![
                Label::new("component", "ztunnel"),
                Label::new("tag", env!("CARGO_PKG_VERSION")),
            ],
        );
        recorder.register_gauge(&build, &metadata()).set(1.0);
        Self {
            recorder,
            handle,
            cache: Mutex::new(HashMap::new()),
            dns: Arc::new(crate::dns::DnsMetrics::new()),
        }
    }

    /// The DNS proxies' metrics, exported with these.
    pub fn dns(&self) -> &Arc<crate::dns::DnsMetrics> {
        &self.dns
    }

    /// The shared copy of `labels`: connections with equal labels hold one allocation between
    /// them (the one their counters are cached under) instead of a copy each.
    pub fn intern(&self, labels: ConnectionLabels) -> Arc<ConnectionLabels> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((shared, _)) = cache.get_key_value(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        cache.insert(shared.clone(), Handles::default());
        shared
    }

    /// The counter `kind` for `labels`, registered on first use.
    fn counter(&self, kind: Kind, labels: &ConnectionLabels) -> Counter {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let handles = match cache.get_mut(labels) {
            Some(handles) => handles,
            None => cache.entry(Arc::new(labels.clone())).or_default(),
        };
        handles[kind as usize]
            .get_or_insert_with(|| {
                let (_, name, _) = KINDS[kind as usize];
                let key = Key::from_parts(
                    name,
                    labels
                        .pairs()
                        .into_iter()
                        .map(|(k, v)| Label::new(k, v.to_owned()))
                        .collect::<Vec<_>>(),
                );
                self.recorder.register_counter(&key, &metadata())
            })
            .clone()
    }

    /// Counts a connection opened (`istio_tcp_connections_opened_total`).
    pub fn opened(&self, labels: &ConnectionLabels) {
        self.counter(Kind::Opened, labels).increment(1);
    }

    /// Counts a connection closed (`istio_tcp_connections_closed_total`).
    pub fn closed(&self, labels: &ConnectionLabels) {
        self.counter(Kind::Closed, labels).increment(1);
    }

    /// Counts a connection that could not be established (`istio_tcp_connections_failed_total`).
    pub fn failed(&self, labels: &ConnectionLabels) {
        self.counter(Kind::Failed, labels).increment(1);
    }

    /// Adds transferred bytes; may be called any number of times during a connection.
    ///
    /// Istio's directions: `sent` is the response direction (destination to source,
    /// `istio_tcp_sent_bytes_total`), `received` the request direction (source to destination,
    /// `istio_tcp_received_bytes_total`).
    pub fn bytes(&self, labels: &ConnectionLabels, sent: u64, received: u64) {
        self.byte_counters(labels).add(sent, received);
    }

    /// The byte counters for `labels`, to hold for the life of a connection.
    pub fn byte_counters(&self, labels: &ConnectionLabels) -> ByteCounters {
        ByteCounters {
            sent: self.counter(Kind::Sent, labels),
            received: self.counter(Kind::Received, labels),
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every series recorded so far.
    ///
    /// The output is deterministic: metric families sorted by name, samples sorted within a
    /// family (the exporter itself iterates hash maps).
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str("\n\n");
        text.push_str(&self.dns.render());
        sort_exposition(&text)
    }
}

/// Sorts the families of an exposition by name and the samples of each family.
///
/// Families are separated by blank lines; label values and HELP texts are escaped by the
/// exporter, so neither contains a raw newline.
fn sort_exposition(text: &str) -> String {
    let mut families: Vec<(String, String)> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let (mut comments, mut samples): (Vec<&str>, Vec<&str>) = block
                .lines()
                .filter(|l| !l.is_empty())
                .partition(|l| l.starts_with('#'));
            samples.sort_unstable();
            comments.extend(samples);
            let name = comments
                .iter()
                .find_map(|l| l.strip_prefix("# TYPE "))
                .and_then(|l| l.split(' ').next())
                .unwrap_or_default()
                .to_owned();
            let mut out = comments.join("\n");
            out.push('\n');
            (name, out)
        })
        .collect();
    families.sort();
    families
        .into_iter()
        .map(|(_, block)| block)
        .collect::<Vec<_>>()
        .join("\n")
}
