//! Route model types. They serialize to a readable form (YAML/JSON) for config dumps and
//! golden tests.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use serde::{Serialize, Serializer};

use crate::config::ObjectRef;
use crate::config::common::{FullRegex, HeaderOps, SearchRegex};
use crate::config::duration;
use crate::config::istio::{AbortStatus, RetryOn, UnmatchedPreflights};

/// Identifies a service port: the key of a listener `inbound-vip|<port>|…|<hostname>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceKey {
    /// Fully qualified hostname (`reviews.default.svc.cluster.local`).
    pub hostname: String,
    /// Service port.
    pub port: u16,
}

/// A service port as the table's keys compare, so that a lookup needs no [`ServiceKey`] (and
/// no copy of the hostname): a `(hostname, port)` pair is one too.
trait ServiceKeyRef {
    fn parts(&self) -> (&str, u16);
}

impl ServiceKeyRef for ServiceKey {
    fn parts(&self) -> (&str, u16) {
        (&self.hostname, self.port)
    }
}

impl ServiceKeyRef for (&str, u16) {
    fn parts(&self) -> (&str, u16) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn ServiceKeyRef + 'a> for ServiceKey {
    fn borrow(&self) -> &(dyn ServiceKeyRef + 'a) {
        self
    }
}

// The same order as `ServiceKey`'s derived one: hostname, then port.
impl PartialEq for dyn ServiceKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn ServiceKeyRef + '_ {}

impl PartialOrd for dyn ServiceKeyRef + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn ServiceKeyRef + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// The routes of every served service port.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    #[serde(serialize_with = "serialize_values")]
    pub(crate) services: BTreeMap<ServiceKey, CompiledRoutes>,
}

fn serialize_values<S: Serializer>(
    map: &BTreeMap<ServiceKey, CompiledRoutes>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

impl RouteTable {
    /// The routes of a service port.
    pub fn get(&self, hostname: &str, port: u16) -> Option<&CompiledRoutes> {
        self.services.get(&(hostname, port) as &dyn ServiceKeyRef)
    }

    /// Every service port, ordered by hostname and port.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledRoutes> {
        self.services.values()
    }

    /// The number of service ports.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service port is served.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The routes of one service port, HTTP and TCP.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledRoutes {
    /// Service hostname.
    pub hostname: String,
    /// Service port.
    pub port: u16,
    /// Where the routes come from.
    pub source: RouteSource,
    /// HTTP routes in evaluation order: the first match wins; none matching = 404 `NR`.
    pub http: Vec<Route>,
    /// TCP routes in evaluation order (for a port served as opaque TCP).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
}

impl CompiledRoutes {
    /// The HTTP listener name Istio gives this service port.
    pub fn listener_name(&self) -> String {
        format!("inbound-vip|{}|http|{}", self.port, self.hostname)
    }
}

/// Which configuration produced a service port's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteSource {
    /// No route applies: everything goes to the service itself.
    Default,
    /// These VirtualServices (merged in this order).
    VirtualServices(Vec<ObjectRef>),
    /// These HTTPRoutes/GRPCRoutes (merged by Gateway API precedence).
    GatewayApi(Vec<ObjectRef>),
}

/// Where a route comes from in its object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteOrigin {
    /// The object (none for the default route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Index of the rule in the object (`spec.http[i]`, `spec.rules[i]`).
    pub rule: usize,
}

/// One HTTP route: conditions, action, filters, timeout and retries.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// Name (VirtualService `http[].name`, HTTPRoute rule `name`), for logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Origin in the configuration.
    pub origin: RouteOrigin,
    /// Match blocks, ORed; empty = every request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    /// What to do with a matching request.
    pub action: RouteAction,
    /// Request/response processing around the action.
    #[serde(skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    /// Overall timeout; none = disabled.
    #[serde(
        serialize_with = "duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retries; none = disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// A match block: every condition must hold.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// Name of the block (VirtualService `match[].name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path condition (the path without the query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Method condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<ValueMatch>,
    /// `:authority` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<ValueMatch>,
    /// Scheme condition; the waypoint's downstream is always `http` (plaintext inside HBONE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<ValueMatch>,
    /// Header conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    /// Service port condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum PathMatch {
    /// The whole path equals the value.
    Exact {
        /// The value.
        value: String,
        /// ASCII case-insensitive.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ignore_case: bool,
    },
    /// The path starts with the value (plain string prefix, Istio/Envoy `prefix`).
    Prefix {
        /// The value.
        value: String,
        /// ASCII case-insensitive.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ignore_case: bool,
    },
    /// The path starts with the value's whole segments (Gateway API `PathPrefix`: `/foo`
    /// matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` of the value is
    /// ignored).
    SegmentPrefix(String),
    /// The whole path matches the regex (case-sensitive even with `ignoreUriCase`, as Envoy).
    Regex(FullRegex),
}

/// A value condition (method, authority, header, query parameter).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueMatch {
    /// The value is present (any value, including empty).
    Present,
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches whole.
    Regex(FullRegex),
}

/// A header condition. Several values of one header are joined with `,` before matching.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "serialize_header_name")]
    pub name: HeaderName,
    /// Condition on its value.
    pub value: ValueMatch,
    /// Inverted (VirtualService `withoutHeaders`): holds when the header is absent or the
    /// condition fails.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

fn serialize_header_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

/// A query parameter condition, on the first occurrence of the (percent-decoded) name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryParamMatch {
    /// Parameter name.
    pub name: String,
    /// Condition on its (percent-decoded) value.
    pub value: ValueMatch,
}

/// What a route does with a request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Forward to one of the weighted backends; none (or no weight) = 500.
    Forward(Vec<WeightedBackend>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
}

/// A backend with its weight and backend-specific header edits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Where to send.
    pub backend: Backend,
    /// Relative weight (0 = no traffic).
    pub weight: u32,
    /// Request header edits when chosen (after the route's).
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Response header edits when chosen (after the route's).
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
}

/// A destination: service host, subset and port — the input of the concrete stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Fully qualified service hostname.
    pub host: String,
    /// Port; none = the port of the request's service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Subset; none = every endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Whether the backend can be used.
    #[serde(skip_serializing_if = "BackendStatus::is_ok")]
    pub status: BackendStatus,
}

impl Backend {
    /// A usable backend.
    pub fn new(host: impl Into<String>, port: Option<u16>, subset: Option<String>) -> Self {
        Self {
            host: host.into(),
            port,
            subset,
            status: BackendStatus::Ok,
        }
    }
}

/// Whether a backend can be used; decided at compile time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendStatus {
    /// Usable.
    Ok,
    /// The subset is defined by no DestinationRule for the host: requests sent here get 503.
    UnknownSubset,
    /// A Gateway API backend reference that cannot be resolved (unsupported kind, missing
    /// port, unsupported backend filter): requests sent here get 500.
    Invalid(String),
}

impl BackendStatus {
    /// Whether the backend is usable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// A redirect response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// New scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host (without port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How the port is chosen.
    #[serde(skip_serializing_if = "RedirectPort::is_unchanged")]
    pub port: RedirectPort,
    /// New path; none = unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// Status code.
    pub status: u16,
}

/// The port of a redirect's `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RedirectPort {
    /// Keep the request's authority port, if any.
    Unchanged,
    /// This port.
    Set(u16),
    /// The scheme's default (80/443): no port in the `Location`.
    FromProtocolDefault,
    /// The request's service port.
    FromRequestPort,
}

impl RedirectPort {
    fn is_unchanged(&self) -> bool {
        matches!(self, Self::Unchanged)
    }
}

/// A fixed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_body"
    )]
    pub body: Option<Vec<u8>>,
}

fn serialize_body<S: Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match body {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// Processing around a route's action, in the order the pipeline applies it: fault, CORS,
/// rewrite and request headers before forwarding; response headers on the way back; mirrors
/// alongside.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    /// Request header edits.
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Response header edits.
    #[serde(skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Path/authority rewrite before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Fault injection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Request mirroring.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// CORS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

impl Filters {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.rewrite.is_none()
            && self.fault.is_none()
            && self.mirrors.is_empty()
            && self.cors.is_none()
    }
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rewrite {
    /// New path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// New authority / Host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// How a path is rewritten (see [`rewrite_path`](super::rewrite_path)). The query is kept
/// unless the new path carries one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathRewrite {
    /// Replace the whole path (VirtualService `redirect.uri`, Gateway API `ReplaceFullPath`).
    Full(String),
    /// Replace the matched prefix, or the whole path when the route did not match on a prefix
    /// (VirtualService `rewrite.uri`, Envoy's `prefix_rewrite`).
    Prefix(String),
    /// Replace the matched path segments (Gateway API `ReplacePrefixMatch`).
    SegmentPrefix(String),
    /// Replace every match of the regex (VirtualService `uriRegexRewrite`).
    Regex {
        /// The pattern.
        pattern: SearchRegex,
        /// The replacement (`${1}` group references).
        substitution: String,
    },
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// Delay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Abort.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A delay on a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    /// The delay.
    #[serde(serialize_with = "duration::serialize")]
    pub delay: Duration,
    /// Share of requests, in percent.
    pub percent: f64,
}

/// An abort on a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// Share of requests, in percent.
    pub percent: f64,
}

/// A mirror target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    /// Where copies go.
    pub backend: Backend,
    /// Share of requests, in percent.
    pub percent: f64,
}

/// A CORS policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Allowed origins.
    pub allow_origins: Vec<ValueMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    #[serde(
        serialize_with = "duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// Preflights from origins not allowed: forwarded (default) or answered plainly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (at least 1).
    pub attempts: u32,
    /// Timeout of each try.
    #[serde(
        serialize_with = "duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub retry_on: Vec<RetryOn>,
    /// Status codes retried under `retriable-status-codes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Minimum pause between tries; none = Envoy's default (25ms, jittered).
    #[serde(
        serialize_with = "duration::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff: Option<Duration>,
    /// Prefer hosts not tried yet.
    pub ignore_previous_hosts: bool,
}

impl RetryPolicy {
    /// Istio's policy for a route without `retries`: 2 retries on connect failure, refused
    /// stream, gRPC unavailable/cancelled and status 503, avoiding hosts already tried.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: Self::default_conditions(),
            retriable_status_codes: vec![503],
            backoff: None,
            ignore_previous_hosts: true,
        }
    }

    /// Istio's default `retryOn` conditions.
    pub fn default_conditions() -> Vec<RetryOn> {
        vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Unavailable,
            RetryOn::Cancelled,
            RetryOn::RetriableStatusCodes,
        ]
    }
}

/// One TCP route.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRoute {
    /// Origin in the configuration.
    pub origin: RouteOrigin,
    /// Match blocks, ORed; empty = every connection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<TcpMatch>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
}

/// A TCP match block.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpMatch {
    /// Service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Destination address in one of these networks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<ipnet::IpNet>,
}
