//! Istio's HTTP/gRPC request metrics of one waypoint, rendered in the Prometheus text format.
//!
//! Each [`RequestMetrics`] owns its own `metrics-exporter-prometheus` recorder; nothing is
//! installed as the process-global `metrics` recorder, so two waypoints in one process (tests,
//! the demo) never share a series. The admin server serves [`RequestMetrics::render`].
//!
//! The three distributions are real Prometheus histograms (`_bucket{le=...}`, `_sum`,
//! `_count`) with Envoy's default bucket bounds, which Istio uses for every histogram
//! (durations in milliseconds, sizes in bytes) unless overridden per pod.
//!
//! # Hot path
//!
//! [`RequestMetrics::record`] runs once per finished request. The handles of a label set are
//! registered on first use and cached under the [`RequestLabels`] (whose source and destination
//! parts are shared `Arc`s). Each thread also keeps the handles of the few label sets it
//! recorded last, found by the identity of those `Arc`s; so a recording is mostly a short scan
//! of that list, one atomic add and three lock-free histogram pushes. Otherwise it is a fast
//! hash of the labels (foldhash: the keys come from the mesh state and configuration, not
//! straight from a client) and a read-locked map lookup. Histogram samples are buffered by the
//! exporter until they are folded into their buckets, which happens on every render and, so
//! that an unscraped waypoint does not grow without bound, on one recording out of
//! [`UPKEEP_EVERY`] (or whenever [`RequestMetrics::upkeep`] is called).
//!
//! Label sets are bounded by the mesh state (workloads, services), the status codes and the
//! flags; nothing a client sends directly becomes a label value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::labels::RequestLabels;
use foldhash::fast::RandomState as FastHash;

/// `istio_requests_total`.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// `istio_request_duration_milliseconds`.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// `istio_request_bytes`.
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// `istio_response_bytes`.
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
/// `istio_build`.
pub const BUILD: &str = "istio_build";
/// TCP connections the waypoint opened to an upstream (the `tcp` chain).
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
/// TCP connections of the `tcp` chain that ended.
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
/// Bytes of TCP connections from the client towards the upstream.
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// Bytes of TCP connections from the upstream back to the client.
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
/// Envoy's listener counter of connections refused over the connection limit.
pub const DOWNSTREAM_CX_OVERFLOW: &str = "envoy_listener_downstream_cx_overflow";

/// Envoy's OpenTelemetry tracer counter of spans sent to the collector.
pub const TRACING_SPANS_SENT: &str = "envoy_tracing_opentelemetry_spans_sent";
/// Spans dropped before export: the export queue was full, or the export failed.
pub const TRACING_SPANS_DROPPED: &str = "envoy_tracing_opentelemetry_spans_dropped";

/// The span export counters ([`RequestMetrics::span_counters`]).
#[derive(Clone)]
pub struct SpanCounters {
    /// Spans the collector accepted.
    pub sent: Counter,
    /// Spans dropped (queue full, export failed or timed out).
    pub dropped: Counter,
}

impl std::fmt::Debug for SpanCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanCounters").finish_non_exhaustive()
    }
}

/// Envoy's default histogram bucket bounds, used by Istio for all its histograms.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buffered histogram samples are folded into buckets after this many recordings.
pub const UPKEEP_EVERY: u64 = 4096;

/// The histograms and their HELP texts (from Istio's metric reference).
const HISTOGRAMS: [(&str, &str); 3] = [
    (
        REQUEST_DURATION,
        "The duration of requests, in milliseconds",
    ),
    (REQUEST_BYTES, "The HTTP request body sizes, in bytes"),
    (RESPONSE_BYTES, "The HTTP response body sizes, in bytes"),
];

/// A per-cluster Envoy-style counter (`envoy_cluster_*{cluster_name=...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterStat {
    /// `envoy_cluster_upstream_rq_pending_overflow`: requests rejected because the pending
    /// request limit (`http1MaxPendingRequests`) was reached.
    PendingOverflow,
    /// `envoy_cluster_upstream_cx_overflow`: connection limit (`maxConnections`) reached.
    ConnectionOverflow,
    /// `envoy_cluster_upstream_rq_retry_overflow`: retries not attempted because of the retry
    /// budget / circuit breaker.
    RetryOverflow,
    /// `envoy_cluster_outlier_detection_ejections_enforced_total`: hosts ejected by outlier
    /// detection.
    EjectionsEnforced,
}

impl ClusterStat {
    /// Every stat, in rendering order.
    pub const ALL: [Self; 4] = [
        Self::PendingOverflow,
        Self::ConnectionOverflow,
        Self::RetryOverflow,
        Self::EjectionsEnforced,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PendingOverflow => "envoy_cluster_upstream_rq_pending_overflow",
            Self::ConnectionOverflow => "envoy_cluster_upstream_cx_overflow",
            Self::RetryOverflow => "envoy_cluster_upstream_rq_retry_overflow",
            Self::EjectionsEnforced => "envoy_cluster_outlier_detection_ejections_enforced_total",
        }
    }

    /// The HELP text.
    fn help(self) -> &'static str {
        match self {
            Self::PendingOverflow => {
                "Requests rejected because the cluster's pending request limit was reached"
            }
            Self::ConnectionOverflow => {
                "Connections not opened because the cluster's connection limit was reached"
            }
            Self::RetryOverflow => "Retries not attempted because of the cluster's retry limit",
            Self::EjectionsEnforced => "Hosts ejected from the cluster by outlier detection",
        }
    }
}

/// A per-listener Envoy-style HTTP counter
/// (`envoy_http_*{http_conn_manager_prefix=...}`, Envoy's `http.<stat_prefix>.*` stats with the
/// stat prefix as a label, as Istio's stats tags render them). The stat prefix is the inbound
/// VIP listener's name, `inbound-vip|<port>|http|<host>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpStat {
    /// `envoy_http_rbac_allowed`: requests AuthorizationPolicies allowed (only counted where
    /// a policy applies, as Envoy has no RBAC filter otherwise).
    RbacAllowed,
    /// `envoy_http_rbac_denied`: requests AuthorizationPolicies denied (403).
    RbacDenied,
    /// `envoy_http_rbac_logged`: requests an AUDIT policy matched.
    RbacLogged,
    /// `envoy_http_ext_authz_ok`: requests a CUSTOM policy's provider allowed.
    ExtAuthzOk,
    /// `envoy_http_ext_authz_denied`: requests a CUSTOM policy's provider denied.
    ExtAuthzDenied,
    /// `envoy_http_ext_authz_error`: checks that got no usable answer (timeout, connection
    /// failure, malformed answer).
    ExtAuthzError,
    /// `envoy_http_ext_authz_failure_mode_allowed`: failed checks let through by `failOpen`.
    ExtAuthzFailureModeAllowed,
}

impl HttpStat {
    /// Every stat, in rendering order.
    pub const ALL: [Self; 7] = [
        Self::RbacAllowed,
        Self::RbacDenied,
        Self::RbacLogged,
        Self::ExtAuthzOk,
        Self::ExtAuthzDenied,
        Self::ExtAuthzError,
        Self::ExtAuthzFailureModeAllowed,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Self::RbacAllowed => "envoy_http_rbac_allowed",
            Self::RbacDenied => "envoy_http_rbac_denied",
            Self::RbacLogged => "envoy_http_rbac_logged",
            Self::ExtAuthzOk => "envoy_http_ext_authz_ok",
            Self::ExtAuthzDenied => "envoy_http_ext_authz_denied",
            Self::ExtAuthzError => "envoy_http_ext_authz_error",
            Self::ExtAuthzFailureModeAllowed => "envoy_http_ext_authz_failure_mode_allowed",
        }
    }

    /// The HELP text.
    fn help(self) -> &'static str {
        match self {
            Self::RbacAllowed => "Requests allowed by AuthorizationPolicies",
            Self::RbacDenied => "Requests denied by AuthorizationPolicies",
            Self::RbacLogged => "Requests matched by AUDIT AuthorizationPolicies",
            Self::ExtAuthzOk => "Requests the external authorizer of a CUSTOM policy allowed",
            Self::ExtAuthzDenied => "Requests the external authorizer of a CUSTOM policy denied",
            Self::ExtAuthzError => "External authorization checks that got no usable answer",
            Self::ExtAuthzFailureModeAllowed => {
                "Requests allowed by failOpen after a failed external authorization check"
            }
        }
    }
}

/// The handles of one request label set.
#[derive(Clone)]
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The counters of one TCP label set, cloned into each connection that reports under it.
#[derive(Clone)]
pub struct TcpCounters {
    opened: Counter,
    closed: Counter,
    received: Counter,
    sent: Counter,
}

impl TcpCounters {
    /// Counts a connection opened.
    pub fn opened(&self) {
        self.opened.increment(1);
    }

    /// Counts a connection closed after `received` bytes from the client and `sent` back.
    pub fn closed(&self, received: u64, sent: u64) {
        self.closed.increment(1);
        self.received.increment(received);
        self.sent.increment(sent);
    }
}

impl std::fmt::Debug for TcpCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCounters").finish_non_exhaustive()
    }
}

/// Istio request metrics of one waypoint.
pub struct RequestMetrics {
    /// TCP connection counters by label set.
    tcp: RwLock<HashMap<RequestLabels, TcpCounters, FastHash>>,
    /// The recorder all handles are registered with.
    recorder: PrometheusRecorder,
    /// Renders the recorder's contents.
    handle: PrometheusHandle,
    /// Handles by label set. Read-locked on the hot path; write-locked only to add a set.
    cache: RwLock<HashMap<RequestLabels, Handles, FastHash>>,
    /// Per-cluster counters by (stat, cluster name).
    clusters: Mutex<HashMap<(ClusterStat, String), Counter>>,
    /// Per-listener HTTP counters by listener name, then stat.
    listeners: RwLock<HashMap<String, HashMap<HttpStat, Counter>>>,
    /// `envoy_listener_downstream_cx_overflow`: tunnels refused over `max_connections`.
    downstream_overflow: Counter,
    /// Recordings so far, to schedule upkeep.
    recorded: AtomicU64,
    /// Tells this instance's entries in the per-thread [`RECENT`] handles from another's.
    id: u64,
}

/// Source of [`RequestMetrics::id`]s.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Label sets each thread recorded last, with their handles, most recent first.
pub(super) const RECENT_LEN: usize = 8;

thread_local! {
    /// The handles of the label sets this thread recorded last. A worker's requests mostly
    /// repeat a few label sets (one connection's source, a few endpoints), and finding them
    /// here compares two pointers and a few small fields instead of hashing every label
    /// string and taking the shared map's lock.
    static RECENT: std::cell::RefCell<Vec<(u64, RequestLabels, Handles)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The value of `labels` in `map`, made by `register` on first use. Read-locked when it is
/// there; another thread may register the same labels meanwhile, which the write lock's entry
/// settles (registering twice would be harmless, the registry deduplicates by key, but
/// wasteful).
fn cached<V: Clone>(
    map: &RwLock<HashMap<RequestLabels, V, FastHash>>,
    labels: &RequestLabels,
    register: impl FnOnce() -> V,
) -> V {
    if let Some(found) = map
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(labels)
    {
        return found.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(labels.clone())
        .or_insert_with(register)
        .clone()
}

/// Whether `a` and `b` are the same label set by identity: the same shared source and
/// destination labels and equal small fields. Equal sets built separately compare unequal
/// here (and are then found in the map); the entries hold their `Arc`s, so a pointer seen
/// equal is never a freed one reused.
fn same_labels(a: &RequestLabels, b: &RequestLabels) -> bool {
    // Destructured so that a new field cannot be left out.
    let RequestLabels {
        source,
        destination,
        request_protocol,
        response_code,
        grpc_response_status,
        response_flags,
        connection_security_policy,
    } = a;
    Arc::ptr_eq(source, &b.source)
        && Arc::ptr_eq(destination, &b.destination)
        && *request_protocol == b.request_protocol
        && *response_code == b.response_code
        && *grpc_response_status == b.grpc_response_status
        && *response_flags == b.response_flags
        && *connection_security_policy == b.connection_security_policy
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metadata for registrations; the Prometheus recorder ignores it.
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

/// The recorder, with bucketed histograms for our three distributions.
fn build_recorder() -> PrometheusRecorder {
    let builder = HISTOGRAMS
        .iter()
        .try_fold(PrometheusBuilder::new(), |builder, (name, _)| {
            builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), &BUCKETS)
        });
    match builder {
        Ok(builder) => builder.build_recorder(),
        // Only an empty bucket list is rejected and BUCKETS is not empty: never taken (it
        // would render the histograms as summaries).
        Err(_) => PrometheusBuilder::new().build_recorder(),
    }
}

impl RequestMetrics {
    /// A fresh, empty set of metrics with its own recorder. `istio_build` is set to 1 with
    /// `component="waypoint"` and `tag` the crate version.
    pub fn new() -> Self {
        let recorder = build_recorder();
        let handle = recorder.handle();
        recorder.describe_counter(
            KeyName::from(REQUESTS_TOTAL),
            None,
            SharedString::from("The total number of requests handled by the waypoint"),
        );
        for (name, help) in HISTOGRAMS {
            recorder.describe_histogram(KeyName::from(name), None, SharedString::from(help));
        }
        for stat in ClusterStat::ALL {
            recorder.describe_counter(
                KeyName::from(stat.name()),
                None,
                SharedString::from(stat.help()),
            );
        }
        for stat in HttpStat::ALL {
            recorder.describe_counter(
                KeyName::from(stat.name()),
                None,
                SharedString::from(stat.help()),
            );
        }
        recorder.describe_gauge(
            KeyName::from(BUILD),
            None,
            SharedString::from("Istio component build info"),
        );
        let build = Key::from_parts(
            BUILD,
            vec![
                Label::new("component", "waypoint"),
                Label::new("tag", env!("CARGO_PKG_VERSION")),
            ],
        );
        recorder.register_gauge(&build, &metadata()).set(1.0);
        recorder.describe_counter(
            KeyName::from(DOWNSTREAM_CX_OVERFLOW),
            None,
            SharedString::from("Downstream connections refused over the connection limit"),
        );
        let overflow = Key::from_parts(
            DOWNSTREAM_CX_OVERFLOW,
            vec![Label::new(
                "listener_address",
                crate::stages::CONNECT_TERMINATE,
            )],
        );
        let downstream_overflow = recorder.register_counter(&overflow, &metadata());
        for (name, help) in [
            (TCP_OPENED, "TCP connections opened by the waypoint"),
            (TCP_CLOSED, "TCP connections of the waypoint that ended"),
            (
                TCP_RECEIVED,
                "Bytes received from clients on TCP connections",
            ),
            (TCP_SENT, "Bytes sent to clients on TCP connections"),
        ] {
            recorder.describe_counter(KeyName::from(name), None, SharedString::from(help));
        }
        Self {
            tcp: RwLock::new(HashMap::default()),
            downstream_overflow,
            recorder,
            handle,
            cache: RwLock::new(HashMap::default()),
            clusters: Mutex::new(HashMap::new()),
            listeners: RwLock::new(HashMap::new()),
            recorded: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Records one finished request: `istio_requests_total` +1, its duration (milliseconds,
    /// fractional) and its request and response body sizes.
    pub fn record(
        &self,
        labels: &RequestLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let millis = duration.as_secs_f64() * 1000.0;
        // Byte counts above 2^53 lose precision as f64; irrelevant for bucketing.
        #[allow(clippy::cast_precision_loss)]
        let (req, resp) = (request_bytes as f64, response_bytes as f64);
        let record = |h: &Handles| {
            h.requests.increment(1);
            h.duration.record(millis);
            h.request_bytes.record(req);
            h.response_bytes.record(resp);
        };
        let recent = RECENT.with_borrow(|recent| {
            recent
                .iter()
                .find(|(id, l, _)| *id == self.id && same_labels(l, labels))
                .map(|(_, _, handles)| record(handles))
                .is_some()
        });
        if !recent {
            let handles = self.handles(labels);
            record(&handles);
            RECENT.with_borrow_mut(|recent| {
                recent.truncate(RECENT_LEN - 1);
                recent.insert(0, (self.id, labels.clone(), handles));
            });
        }
        if self.recorded.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
            self.upkeep();
        }
    }

    /// The TCP counters of `labels` (registered on first use).
    pub fn tcp(&self, labels: &RequestLabels) -> TcpCounters {
        cached(&self.tcp, labels, || {
            let parts: Vec<Label> = labels
                .tcp_pairs()
                .map(|(k, v)| Label::new(k, v.into_owned()))
                .collect();
            let md = metadata();
            let counter = |name: &'static str| {
                self.recorder
                    .register_counter(&Key::from_parts(name, parts.clone()), &md)
            };
            TcpCounters {
                opened: counter(TCP_OPENED),
                closed: counter(TCP_CLOSED),
                received: counter(TCP_RECEIVED),
                sent: counter(TCP_SENT),
            }
        })
    }

    /// The handles of `labels`, registered on first use.
    fn handles(&self, labels: &RequestLabels) -> Handles {
        cached(&self.cache, labels, || self.register(labels))
    }

    /// Registers the handles of a label set.
    fn register(&self, labels: &RequestLabels) -> Handles {
        let parts: Vec<Label> = labels
            .pairs()
            .into_iter()
            .map(|(k, v)| Label::new(k, v.into_owned()))
            .collect();
        let key = |name: &'static str| Key::from_parts(name, parts.clone());
        let md = metadata();
        Handles {
            requests: self.recorder.register_counter(&key(REQUESTS_TOTAL), &md),
            duration: self
                .recorder
                .register_histogram(&key(REQUEST_DURATION), &md),
            request_bytes: self.recorder.register_histogram(&key(REQUEST_BYTES), &md),
            response_bytes: self.recorder.register_histogram(&key(RESPONSE_BYTES), &md),
        }
    }

    /// Adds one to the per-cluster counter `stat` of `cluster` (e.g.
    /// `inbound-vip|9080|http/v1|reviews.default.svc.cluster.local`).
    pub fn count_cluster(&self, stat: ClusterStat, cluster: &str) {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counter) = clusters.get(&(stat, cluster.to_owned())) {
            counter.increment(1);
            return;
        }
        let key = Key::from_parts(
            stat.name(),
            vec![Label::new("cluster_name", cluster.to_owned())],
        );
        let counter = self.recorder.register_counter(&key, &metadata());
        counter.increment(1);
        clusters.insert((stat, cluster.to_owned()), counter);
    }

    /// Adds one to the per-listener counter `stat` of `listener` (e.g.
    /// `inbound-vip|9080|http|reviews.default.svc.cluster.local`). The handle is looked up
    /// under a read lock; only the first count of a (stat, listener) pair registers it.
    pub fn count_http(&self, stat: HttpStat, listener: &str) {
        {
            let listeners = self
                .listeners
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(counter) = listeners.get(listener).and_then(|stats| stats.get(&stat)) {
                counter.increment(1);
                return;
            }
        }
        let mut listeners = self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        listeners
            .entry(listener.to_owned())
            .or_default()
            .entry(stat)
            .or_insert_with(|| {
                let key = Key::from_parts(
                    stat.name(),
                    vec![Label::new("http_conn_manager_prefix", listener.to_owned())],
                );
                self.recorder.register_counter(&key, &metadata())
            })
            .increment(1);
    }

    /// Counts a tunnel refused over the downstream connection limit
    /// (`envoy_listener_downstream_cx_overflow{listener_address="connect_terminate"}`).
    pub fn count_downstream_overflow(&self) {
        self.downstream_overflow.increment(1);
    }

    /// The span export counters, registered (at 0) on first call.
    pub fn span_counters(&self) -> SpanCounters {
        let register = |name: &'static str, help: &'static str| {
            self.recorder
                .describe_counter(KeyName::from(name), None, SharedString::from(help));
            self.recorder
                .register_counter(&Key::from_static_name(name), &metadata())
        };
        let sent = register(TRACING_SPANS_SENT, "Spans the OTLP collector accepted");
        let dropped = register(
            TRACING_SPANS_DROPPED,
            "Spans dropped: export queue full, export failed or timed out",
        );
        sent.increment(0);
        dropped.increment(0);
        SpanCounters { sent, dropped }
    }

    /// Counts a request rejected by circuit breaking
    /// (`envoy_cluster_upstream_rq_pending_overflow`).
    pub fn count_overflow(&self, cluster: &str) {
        self.count_cluster(ClusterStat::PendingOverflow, cluster);
    }

    /// Counts a host ejected by outlier detection
    /// (`envoy_cluster_outlier_detection_ejections_enforced_total`).
    pub fn count_ejection(&self, cluster: &str) {
        self.count_cluster(ClusterStat::EjectionsEnforced, cluster);
    }

    /// Folds buffered histogram samples into their buckets. Called automatically every
    /// [`UPKEEP_EVERY`] recordings and by [`RequestMetrics::render`]; an owner may also call
    /// it from a background task.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition (format 0.0.4) of every series recorded so far.
    ///
    /// The output is deterministic: metric families sorted by name, series sorted within a
    /// family, the lines of one histogram series (buckets in `le` order, `_sum`, `_count`)
    /// kept together.
    pub fn render(&self) -> String {
        sort_exposition(&self.handle.render())
    }
}

/// Sorts the families of an exposition by name and the series within each family.
///
/// The exporter separates families by blank lines and writes each histogram series as
/// consecutive `_bucket` lines, then `_sum`, then `_count`; label values are escaped, so none
/// contains a raw newline.
fn sort_exposition(text: &str) -> String {
    let mut families: Vec<(String, String)> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(sort_family)
        .collect();
    families.sort();
    let mut out = String::with_capacity(text.len());
    for (i, (_, block)) in families.into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&block);
    }
    out
}

/// One family block with its series sorted, keyed by the family name.
fn sort_family(block: &str) -> (String, String) {
    let mut comments = Vec::new();
    let mut series: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut name = String::new();
    let mut count_prefix = String::new();
    let mut histogram = false;
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            words.next().unwrap_or_default().clone_into(&mut name);
            histogram = words.next() == Some("histogram");
            count_prefix = format!("{name}_count");
            comments.push(line);
        } else if line.starts_with('#') {
            comments.push(line);
        } else if histogram {
            current.push(line);
            // A histogram series ends with its `_count` line.
            if line.starts_with(&count_prefix) {
                series.push(std::mem::take(&mut current));
            }
        } else {
            series.push(vec![line]);
        }
    }
    if !current.is_empty() {
        series.push(current);
    }
    series.sort_unstable();
    let mut out = comments.join("\n");
    for line in series.into_iter().flatten() {
        out.push('\n');
        out.push_str(line);
    }
    out.push('\n');
    (name, out)
}
