//! Istio's standard label set for HTTP/gRPC request metrics reported by a waypoint, and how it is
//! derived from the mesh state of one request.
//!
//! Conventions follow Istio (the waypoint stats filter) and this workspace's ztunnel:
//! - `reporter` is always `waypoint`;
//! - every value that is not known is the string `unknown` (never empty), except
//!   `grpc_response_status`, which is empty for plain HTTP, as Istio emits it;
//! - `*_workload` is the owning controller (`workload_name`), `*_app` / `*_canonical_service`
//!   the canonical name, `*_version` / `*_canonical_revision` the canonical revision;
//! - principals are SPIFFE URIs: the source principal is the peer identity authenticated by the
//!   HBONE handshake in `connect_terminate`, the destination principal the identity of the chosen
//!   endpoint (which `connect_originate` verifies);
//! - `destination_service*` come from the service the client addressed, if any.
//!
//! The labels are split by how often they change so that the hot path does not rebuild
//! strings: [`WorkloadLabels`] for the source is fixed per downstream connection,
//! [`DestinationLabels`] per (service, endpoint), both shared behind an [`Arc`]; only the
//! response part of [`RequestLabels`] (protocol, code, gRPC status, flags) is per request, and
//! it is plain `Copy` data.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use hbone::Identity;
use ztunnel::state::service::Service;
use ztunnel::state::workload::Workload;
pub use ztunnel::telemetry::SecurityPolicy;
pub use ztunnel::telemetry::labels::UNKNOWN;

/// The `reporter` label value of every waypoint-reported request metric.
pub const REPORTER: &str = "waypoint";

/// The number of labels in a [`RequestLabels`].
pub const LABEL_COUNT: usize = 25;

/// `value`, or `unknown` when it is empty.
fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_owned()
    } else {
        value.to_owned()
    }
}

/// The labels describing one workload (either end of a request): Istio's `*_workload`,
/// `*_workload_namespace`, `*_principal`, `*_app`, `*_version`, `*_canonical_service`,
/// `*_canonical_revision` and `*_cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadLabels {
    /// `*_workload`: the owning controller, e.g. `reviews-v2`.
    pub workload: String,
    /// `*_workload_namespace`.
    pub workload_namespace: String,
    /// `*_principal`: the SPIFFE identity.
    pub principal: String,
    /// `*_app`: the canonical name.
    pub app: String,
    /// `*_version`: the canonical revision.
    pub version: String,
    /// `*_canonical_service`.
    pub canonical_service: String,
    /// `*_canonical_revision`.
    pub canonical_revision: String,
    /// `*_cluster`: the cluster id.
    pub cluster: String,
}

impl Default for WorkloadLabels {
    /// Every label `unknown`.
    fn default() -> Self {
        Self::of(None, None)
    }
}

impl WorkloadLabels {
    /// The labels of a workload, with `principal` as its identity (`unknown` when `None`).
    fn of(workload: Option<&Workload>, principal: Option<&Identity>) -> Self {
        let get = |f: fn(&Workload) -> &str| or_unknown(workload.map(f).unwrap_or_default());
        let canonical_service = get(|w| &w.canonical_name);
        let canonical_revision = get(|w| &w.canonical_revision);
        Self {
            workload: get(|w| &w.workload_name),
            workload_namespace: get(|w| &w.namespace),
            principal: principal.map_or_else(|| UNKNOWN.to_owned(), Identity::to_string),
            app: canonical_service.clone(),
            version: canonical_revision.clone(),
            canonical_service,
            canonical_revision,
            cluster: get(|w| &w.cluster_id),
        }
    }

    /// The source side of a request: `workload` is the downstream peer as found in the mesh
    /// state (by identity or address), `peer` the identity authenticated by the HBONE
    /// handshake.
    ///
    /// The principal is the authenticated identity only, never the looked-up workload's (which
    /// is not proof of anything). When the workload is not known, the namespace is taken from
    /// the authenticated identity, so `source_workload_namespace` stays meaningful.
    pub fn source(workload: Option<&Workload>, peer: Option<&Identity>) -> Self {
        let mut labels = Self::of(workload, peer);
        if labels.workload_namespace == UNKNOWN
            && let Some(peer) = peer
            && !peer.namespace().is_empty()
        {
            peer.namespace().clone_into(&mut labels.workload_namespace);
        }
        labels
    }

    /// The destination side of a request: `endpoint` is the workload chosen by the load
    /// balancer; its identity is the principal the upstream connection verifies.
    pub fn destination(endpoint: Option<&Workload>) -> Self {
        let identity = endpoint.map(Workload::identity);
        Self::of(endpoint, identity.as_ref())
    }
}

/// The destination labels of a request: the addressed service and the chosen endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestinationLabels {
    /// `destination_service`: hostname of the addressed service.
    pub service: String,
    /// `destination_service_name`.
    pub service_name: String,
    /// `destination_service_namespace`.
    pub service_namespace: String,
    /// The `destination_*` workload labels of the chosen endpoint.
    pub workload: WorkloadLabels,
}

impl DestinationLabels {
    /// The labels of a request whose `Host` names no known service, sent to `cluster`
    /// (`PassthroughCluster` or `BlackHoleCluster`), as Istio labels them:
    /// `destination_service` = the `Host` (without port), `destination_service_name` = the
    /// cluster, everything else `unknown`.
    pub fn registry_miss(cluster: &str, host: Option<&str>) -> Self {
        Self {
            service: or_unknown(host.unwrap_or_default()),
            service_name: cluster.to_owned(),
            service_namespace: UNKNOWN.to_owned(),
            workload: WorkloadLabels::default(),
        }
    }

    /// The labels of a request to `service` (when addressed by service) served by `endpoint`
    /// (when one was chosen; `None` for requests that never reached an endpoint, e.g. no
    /// route or no healthy upstream).
    pub fn new(service: Option<&Service>, endpoint: Option<&Workload>) -> Self {
        let svc = |f: fn(&Service) -> &str| or_unknown(service.map(f).unwrap_or_default());
        Self {
            service: svc(|s| &s.hostname),
            service_name: svc(|s| &s.name),
            service_namespace: svc(|s| &s.namespace),
            workload: WorkloadLabels::destination(endpoint),
        }
    }
}

/// The application protocol as reported in `request_protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// HTTP/1.x or HTTP/2 that is not gRPC: `http`.
    #[default]
    Http,
    /// gRPC (`content-type: application/grpc*`): `grpc`.
    Grpc,
    /// A TCP connection (the `tcp` chain): `tcp`.
    Tcp,
}

impl RequestProtocol {
    /// The label value: `http` or `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }
}

/// One of Envoy's response flags, as they appear in `response_flags` and access logs.
///
/// Only the flags a waypoint can produce are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream host in the cluster.
    NoHealthyUpstream = 0,
    /// `UF`: the upstream connection failed.
    UpstreamConnectionFailure,
    /// `UO`: circuit breaking overflow (connection pool limits).
    UpstreamOverflow,
    /// `NR`: no route configured for the request.
    NoRouteFound,
    /// `URX`: the retry limit was reached.
    UpstreamRetryLimitExceeded,
    /// `NC`: the upstream cluster was not found.
    NoClusterFound,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `RL`: rate limited.
    RateLimited,
    /// `UAEX`: denied by an external authorization service (CUSTOM policy).
    UnauthorizedExternalService,
    /// `UT`: the upstream request timed out.
    UpstreamRequestTimeout,
    /// `LR`: the connection was reset locally.
    LocalReset,
    /// `UR`: the upstream reset the connection.
    UpstreamRemoteReset,
    /// `UC`: the upstream connection was terminated.
    UpstreamConnectionTermination,
    /// `DC`: the downstream connection was terminated.
    DownstreamConnectionTermination,
    /// `DPE`: the downstream request had an HTTP protocol error.
    DownstreamProtocolError,
    /// `UPE`: the upstream response had an HTTP protocol error.
    UpstreamProtocolError,
    /// `SI`: stream idle timeout.
    StreamIdleTimeout,
    /// `DT`: the request exceeded its maximum duration.
    DurationTimeout,
}

impl ResponseFlag {
    /// Every flag, in Envoy's rendering order.
    pub const ALL: [Self; 19] = [
        Self::NoHealthyUpstream,
        Self::UpstreamConnectionFailure,
        Self::UpstreamOverflow,
        Self::NoRouteFound,
        Self::UpstreamRetryLimitExceeded,
        Self::NoClusterFound,
        Self::DelayInjected,
        Self::FaultInjected,
        Self::RateLimited,
        Self::UnauthorizedExternalService,
        Self::UpstreamRequestTimeout,
        Self::LocalReset,
        Self::UpstreamRemoteReset,
        Self::UpstreamConnectionTermination,
        Self::DownstreamConnectionTermination,
        Self::DownstreamProtocolError,
        Self::UpstreamProtocolError,
        Self::StreamIdleTimeout,
        Self::DurationTimeout,
    ];

    /// Envoy's short name, e.g. `UH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamOverflow => "UO",
            Self::NoRouteFound => "NR",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::NoClusterFound => "NC",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::RateLimited => "RL",
            Self::UnauthorizedExternalService => "UAEX",
            Self::UpstreamRequestTimeout => "UT",
            Self::LocalReset => "LR",
            Self::UpstreamRemoteReset => "UR",
            Self::UpstreamConnectionTermination => "UC",
            Self::DownstreamConnectionTermination => "DC",
            Self::DownstreamProtocolError => "DPE",
            Self::UpstreamProtocolError => "UPE",
            Self::StreamIdleTimeout => "SI",
            Self::DurationTimeout => "DT",
        }
    }

    /// The flag with short name `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The bit of this flag in [`ResponseFlags`].
    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// A set of [`ResponseFlag`]s: `-` when empty, otherwise the short names joined by `,` in
/// Envoy's order (`UT,URX` renders as `URX,UT`).
///
/// A `Copy` bit set, so it costs nothing in a cache key; rendered only when a new series is
/// registered or an access log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// No flags (`-`).
    pub const NONE: Self = Self(0);

    /// The set with just `flag`.
    pub fn one(flag: ResponseFlag) -> Self {
        Self(flag.bit())
    }

    /// Adds `flag`.
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= flag.bit();
    }

    /// The set with `flag` added.
    #[must_use]
    pub fn with(mut self, flag: ResponseFlag) -> Self {
        self.insert(flag);
        self
    }

    /// Whether `flag` is set.
    pub fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags that are set, in Envoy's order.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// The rendering: `-`, one short name (borrowed) or several joined by `,`.
    pub fn to_str(self) -> Cow<'static, str> {
        let mut flags = self.iter();
        match (flags.next(), flags.next()) {
            (None, _) => Cow::Borrowed("-"),
            (Some(one), None) => Cow::Borrowed(one.as_str()),
            _ => Cow::Owned(self.to_string()),
        }
    }
}

impl From<ResponseFlag> for ResponseFlags {
    fn from(flag: ResponseFlag) -> Self {
        Self::one(flag)
    }
}

impl FromIterator<ResponseFlag> for ResponseFlags {
    fn from_iter<I: IntoIterator<Item = ResponseFlag>>(flags: I) -> Self {
        let mut set = Self::NONE;
        for flag in flags {
            set.insert(flag);
        }
        set
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

/// The gRPC status for an HTTP response without `grpc-status`, per the gRPC spec
/// ("HTTP to gRPC Status Code Mapping"): 400 → INTERNAL (13), 401 → UNAUTHENTICATED (16),
/// 403 → PERMISSION_DENIED (7), 404 → UNIMPLEMENTED (12), 429/502/503/504 → UNAVAILABLE (14),
/// anything else → UNKNOWN (2). Envoy applies the same fallback for `grpc_response_status`.
pub fn grpc_status_from_http(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Istio's standard HTTP/gRPC metric labels for one request reported by a waypoint.
///
/// The source and destination parts are shared ([`Arc`]) between the requests of a connection
/// or endpoint; the rest is per request. This is the key under which
/// [`RequestMetrics`](super::RequestMetrics) caches its handles, so requests with equal labels
/// share a time series. Build one with [`RequestLabels::new`] and the `with_*` setters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    /// The `source_*` labels: the downstream peer.
    pub source: Arc<WorkloadLabels>,
    /// The `destination_*` labels: the addressed service and the chosen endpoint.
    pub destination: Arc<DestinationLabels>,
    /// `request_protocol`: `http` or `grpc`.
    pub request_protocol: RequestProtocol,
    /// `response_code`: the HTTP status sent downstream; 0 when no response was sent (as
    /// Envoy reports a reset before the response).
    pub response_code: u16,
    /// `grpc_response_status`: the gRPC status code, for gRPC only; rendered empty for HTTP.
    /// A gRPC request with `None` reports the status derived from `response_code`
    /// ([`grpc_status_from_http`]).
    pub grpc_response_status: Option<u32>,
    /// `response_flags`: `-` unless something went wrong.
    pub response_flags: ResponseFlags,
    /// `connection_security_policy`: `mutual_tls` for HBONE (always, for a waypoint).
    pub connection_security_policy: SecurityPolicy,
}

impl RequestLabels {
    /// The labels of an HTTP request from `source` to `destination` answered with
    /// `response_code`, over mutual TLS and without response flags.
    pub fn new(
        source: Arc<WorkloadLabels>,
        destination: Arc<DestinationLabels>,
        response_code: u16,
    ) -> Self {
        Self {
            source,
            destination,
            request_protocol: RequestProtocol::Http,
            response_code,
            grpc_response_status: None,
            response_flags: ResponseFlags::NONE,
            connection_security_policy: SecurityPolicy::MutualTls,
        }
    }

    /// Derives every label from the mesh state at once (allocating both sides); prefer
    /// sharing [`WorkloadLabels`] / [`DestinationLabels`] on hot paths.
    pub fn from_state(
        source: Option<&Workload>,
        peer: Option<&Identity>,
        service: Option<&Service>,
        endpoint: Option<&Workload>,
        response_code: u16,
    ) -> Self {
        Self::new(
            Arc::new(WorkloadLabels::source(source, peer)),
            Arc::new(DestinationLabels::new(service, endpoint)),
            response_code,
        )
    }

    /// The same labels with another protocol.
    #[must_use]
    pub fn with_protocol(mut self, protocol: RequestProtocol) -> Self {
        self.request_protocol = protocol;
        self
    }

    /// The same labels as a gRPC request with `status` (`None`: derive it from the HTTP
    /// status).
    #[must_use]
    pub fn with_grpc_status(mut self, status: Option<u32>) -> Self {
        self.request_protocol = RequestProtocol::Grpc;
        self.grpc_response_status = status;
        self
    }

    /// The same labels with other response flags.
    #[must_use]
    pub fn with_response_flags(mut self, flags: ResponseFlags) -> Self {
        self.response_flags = flags;
        self
    }

    /// The `grpc_response_status` value: empty for HTTP and TCP, the status number for gRPC.
    pub fn grpc_response_status_str(&self) -> Cow<'static, str> {
        match self.request_protocol {
            RequestProtocol::Http | RequestProtocol::Tcp => Cow::Borrowed(""),
            RequestProtocol::Grpc => Cow::Owned(
                self.grpc_response_status
                    .unwrap_or_else(|| grpc_status_from_http(self.response_code))
                    .to_string(),
            ),
        }
    }

    /// The `(name, value)` pairs in Istio's order, as exported.
    pub fn pairs(&self) -> [(&'static str, Cow<'_, str>); LABEL_COUNT] {
        let s = &*self.source;
        let d = &*self.destination;
        let w = &d.workload;
        fn b(v: &str) -> Cow<'_, str> {
            Cow::Borrowed(v)
        }
        [
            ("reporter", b(REPORTER)),
            ("source_workload", b(&s.workload)),
            ("source_canonical_service", b(&s.canonical_service)),
            ("source_canonical_revision", b(&s.canonical_revision)),
            ("source_workload_namespace", b(&s.workload_namespace)),
            ("source_principal", b(&s.principal)),
            ("source_app", b(&s.app)),
            ("source_version", b(&s.version)),
            ("source_cluster", b(&s.cluster)),
            ("destination_workload", b(&w.workload)),
            ("destination_workload_namespace", b(&w.workload_namespace)),
            ("destination_principal", b(&w.principal)),
            ("destination_app", b(&w.app)),
            ("destination_version", b(&w.version)),
            ("destination_service", b(&d.service)),
            ("destination_canonical_service", b(&w.canonical_service)),
            ("destination_canonical_revision", b(&w.canonical_revision)),
            ("destination_service_name", b(&d.service_name)),
            ("destination_service_namespace", b(&d.service_namespace)),
            ("destination_cluster", b(&w.cluster)),
            ("request_protocol", b(self.request_protocol.as_str())),
            ("response_code", Cow::Owned(self.response_code.to_string())),
            ("grpc_response_status", self.grpc_response_status_str()),
            ("response_flags", self.response_flags.to_str()),
            (
                "connection_security_policy",
                b(self.connection_security_policy.as_str()),
            ),
        ]
    }
}

impl RequestLabels {
    /// The labels of a TCP connection from `source` to `destination`: `request_protocol`
    /// `tcp`, no response code.
    pub fn tcp(source: Arc<WorkloadLabels>, destination: Arc<DestinationLabels>) -> Self {
        Self::new(source, destination, 0).with_protocol(RequestProtocol::Tcp)
    }

    /// The pairs of a TCP connection's metrics: [`RequestLabels::pairs`] without the HTTP-only
    /// `response_code` and `grpc_response_status`, as Istio's TCP metrics carry them.
    pub fn tcp_pairs(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        self.pairs()
            .into_iter()
            .filter(|(name, _)| !matches!(*name, "response_code" | "grpc_response_status"))
    }
}

impl fmt::Display for RequestLabels {
    /// Prometheus label syntax without braces: `reporter="waypoint",source_workload="sleep",...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.pairs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        Ok(())
    }
}
