//! `networking.istio.io` objects: `VirtualService`, `DestinationRule`, `ServiceEntry`.
//!
//! Only the fields the waypoint acts on are typed; any other field is accepted and ignored
//! (Kubernetes objects carry many). A typed field with a malformed value, or a combination the
//! CRD's validation rules forbid, makes the whole object invalid. Durations follow
//! [`IstioDuration`] (Go syntax, at least 1ms).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::common::{
    HeaderMatchMap, IstioHeaderOps, Percent, PortSelector, SearchRegex, StringMatch,
    deserialize_via,
};
use super::duration::IstioDuration;

// === VirtualService ===

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to (short names are relative to the object's
    /// namespace; `*.suffix` wildcards).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways the rules apply to; ignored by waypoints (as in Istio).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP rules: the first matching one wins.
    #[serde(default)]
    pub http: Vec<HttpRule>,
    /// Ordered rules for opaque TCP traffic.
    #[serde(default)]
    pub tcp: Vec<TcpRule>,
    /// Namespaces the object is visible to; ignored by waypoints (as in Istio).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One entry of `spec.http` (Istio's `HTTPRoute`).
#[derive(Debug, Clone, Default)]
pub struct HttpRule {
    /// Name, for logs and stats.
    pub name: Option<String>,
    /// Match blocks, ORed; each block's conditions are ANDed; none = match everything.
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Redirect response instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Fixed response instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delegation to another VirtualService (gateways only; not supported by waypoints).
    pub delegate: Option<Delegate>,
    /// URI/authority rewrite before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Overall request timeout; none = disabled.
    pub timeout: Option<IstioDuration>,
    /// Retry policy; none = Istio's default policy.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror destinations with their percentages (`mirror` + `mirrorPercentage`, or
    /// `mirrors`).
    pub mirrors: Vec<HttpMirror>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header edits for every destination.
    pub headers: Option<Headers>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpRule {
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    route: Vec<HttpRouteDestination>,
    redirect: Option<HttpRedirect>,
    direct_response: Option<HttpDirectResponse>,
    delegate: Option<Delegate>,
    rewrite: Option<HttpRewrite>,
    timeout: Option<IstioDuration>,
    retries: Option<HttpRetry>,
    fault: Option<HttpFaultInjection>,
    mirror: Option<Destination>,
    mirror_percentage: Option<Percent>,
    mirror_percent: Option<u32>,
    #[serde(rename = "mirror_percent")]
    mirror_percent_snake: Option<u32>,
    #[serde(default)]
    mirrors: Vec<HttpMirror>,
    cors_policy: Option<CorsPolicy>,
    headers: Option<Headers>,
}

deserialize_via!(HttpRule, RawHttpRule);

impl TryFrom<RawHttpRule> for HttpRule {
    type Error = String;

    fn try_from(raw: RawHttpRule) -> Result<Self, String> {
        let actions = [
            !raw.route.is_empty(),
            raw.redirect.is_some(),
            raw.direct_response.is_some(),
            raw.delegate.is_some(),
        ];
        match actions.iter().filter(|set| **set).count() {
            0 => {
                return Err(
                    "one of route, redirect, directResponse or delegate is required".into(),
                );
            }
            1 => {}
            _ => {
                return Err(
                    "route, redirect, directResponse and delegate are mutually exclusive".into(),
                );
            }
        }
        if raw.redirect.is_some() && raw.rewrite.is_some() {
            return Err("rewrite cannot be used together with redirect".into());
        }
        if raw.route.len() > 1 && raw.route.iter().all(|d| d.weight == 0) {
            return Err("route: the total weight of several destinations must be above 0".into());
        }
        let mut mirrors = raw.mirrors;
        if let Some(destination) = raw.mirror {
            if !mirrors.is_empty() {
                return Err("mirror and mirrors cannot both be set".into());
            }
            let legacy = raw.mirror_percent.or(raw.mirror_percent_snake);
            let percentage = match (raw.mirror_percentage, legacy) {
                (Some(p), _) => Some(p),
                (None, Some(p)) if p > 100 => {
                    return Err(format!("mirrorPercent {p} is above 100"));
                }
                (None, Some(p)) => Some(Percent(f64::from(p))),
                (None, None) => None,
            };
            mirrors.push(HttpMirror {
                destination,
                percentage,
            });
        } else if raw.mirror_percentage.is_some() {
            return Err("mirrorPercentage requires mirror".into());
        }
        Ok(HttpRule {
            name: raw.name,
            matches: raw.matches,
            route: raw.route,
            redirect: raw.redirect,
            direct_response: raw.direct_response,
            delegate: raw.delegate,
            rewrite: raw.rewrite,
            timeout: raw.timeout,
            retries: raw.retries,
            fault: raw.fault,
            mirrors,
            cors_policy: raw.cors_policy,
            headers: raw.headers,
        })
    }
}

/// Istio's `HTTPMatchRequest`: conditions ANDed together.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    /// Name, appended to the rule name in logs.
    pub name: Option<String>,
    /// Path (without the query) match.
    pub uri: Option<StringMatch>,
    /// Scheme match.
    pub scheme: Option<StringMatch>,
    /// Method match.
    pub method: Option<StringMatch>,
    /// `:authority` / `Host` match.
    pub authority: Option<StringMatch>,
    /// Header matches; `{}` = the header is present.
    #[serde(default)]
    pub headers: HeaderMatchMap,
    /// Header matches that must NOT hold; `{}` = the header is absent.
    #[serde(default)]
    pub without_headers: HeaderMatchMap,
    /// Query parameter matches; `{}` = the parameter is present.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Destination (service) port.
    pub port: Option<u16>,
    /// Case-insensitive `uri` exact/prefix match.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Client workload labels; cannot be evaluated by a waypoint (the block never matches).
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Client namespace; not evaluated by waypoints (the block never matches).
    pub source_namespace: Option<String>,
    /// Gateways; ignored by waypoints.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// Istio's `Destination`: a service host, optional subset and port.
#[derive(Debug, Clone, Deserialize)]
pub struct Destination {
    /// Service hostname (short names are relative to the object's namespace).
    pub host: String,
    /// Subset defined by a DestinationRule.
    pub subset: Option<String>,
    /// Port; optional when the service has one port.
    pub port: Option<PortSelector>,
}

/// Istio's `HTTPRouteDestination`: a destination with a weight and header edits.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative weight; 0 with several destinations = no traffic.
    #[serde(default)]
    pub weight: u32,
    /// Header edits when this destination is chosen.
    pub headers: Option<Headers>,
}

/// Istio's `Headers`: request and response edits.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Headers {
    /// Edits of the request before forwarding.
    #[serde(default)]
    pub request: IstioHeaderOps,
    /// Edits of the response before returning it.
    #[serde(default)]
    pub response: IstioHeaderOps,
}

/// How a redirect derives the port of its `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DerivePort {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// Istio's `HTTPRedirect`.
#[derive(Debug, Clone)]
pub struct HttpRedirect {
    /// Replaces the whole path (the query is kept unless the value has one).
    pub uri: Option<String>,
    /// Replaces the host.
    pub authority: Option<String>,
    /// Fixed port.
    pub port: Option<u16>,
    /// Derived port.
    pub derive_port: Option<DerivePort>,
    /// Replaces the scheme.
    pub scheme: Option<String>,
    /// Status code: 301 (default), 302, 303, 307 or 308.
    pub redirect_code: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<u16>,
    derive_port: Option<DerivePort>,
    scheme: Option<String>,
    redirect_code: Option<u16>,
}

deserialize_via!(HttpRedirect, RawHttpRedirect);

impl TryFrom<RawHttpRedirect> for HttpRedirect {
    type Error = String;

    fn try_from(raw: RawHttpRedirect) -> Result<Self, String> {
        if raw.port.is_some() && raw.derive_port.is_some() {
            return Err("port and derivePort are mutually exclusive".into());
        }
        let code = raw.redirect_code.unwrap_or(301);
        if ![301, 302, 303, 307, 308].contains(&code) {
            return Err(format!(
                "redirectCode {code} is not one of 301, 302, 303, 307, 308"
            ));
        }
        Ok(HttpRedirect {
            uri: raw.uri,
            authority: raw.authority,
            port: raw.port,
            derive_port: raw.derive_port,
            scheme: raw.scheme,
            redirect_code: code,
        })
    }
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone)]
pub struct HttpDirectResponse {
    /// Status code, 200..=599.
    pub status: u16,
    /// Body bytes (`body.string`, or `body.bytes` base64-decoded).
    pub body: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct RawDirectResponse {
    status: u32,
    body: Option<RawBody>,
}

#[derive(Deserialize)]
struct RawBody {
    string: Option<String>,
    bytes: Option<String>,
}

deserialize_via!(HttpDirectResponse, RawDirectResponse);

impl TryFrom<RawDirectResponse> for HttpDirectResponse {
    type Error = String;

    fn try_from(raw: RawDirectResponse) -> Result<Self, String> {
        use base64::Engine as _;
        let status = u16::try_from(raw.status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| format!("status {} is outside 200..=599", raw.status))?;
        let body = match raw.body {
            None => None,
            Some(RawBody {
                string: Some(s),
                bytes: None,
            }) => Some(s.into_bytes()),
            Some(RawBody {
                string: None,
                bytes: Some(b),
            }) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("body.bytes is not valid base64: {e}"))?,
            ),
            Some(RawBody {
                string: None,
                bytes: None,
            }) => None,
            Some(_) => return Err("body.string and body.bytes are mutually exclusive".into()),
        };
        Ok(HttpDirectResponse { status, body })
    }
}

/// Istio's `Delegate`.
#[derive(Debug, Clone, Deserialize)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace.
    pub namespace: Option<String>,
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone)]
pub struct HttpRewrite {
    /// New path, or new prefix when the rule matched on a `uri` prefix.
    pub uri: Option<String>,
    /// New authority/Host.
    pub authority: Option<String>,
    /// Regex substitution on the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<RegexRewrite>,
}

deserialize_via!(HttpRewrite, RawHttpRewrite);

impl TryFrom<RawHttpRewrite> for HttpRewrite {
    type Error = String;

    fn try_from(raw: RawHttpRewrite) -> Result<Self, String> {
        if raw.uri.is_some() && raw.uri_regex_rewrite.is_some() {
            return Err("uri and uriRegexRewrite are mutually exclusive".into());
        }
        Ok(HttpRewrite {
            uri: raw.uri,
            authority: raw.authority,
            uri_regex_rewrite: raw.uri_regex_rewrite,
        })
    }
}

/// Istio's `RegexRewrite`: every match of `match` in the path is replaced by `rewrite`
/// (`\1`-style group references, as RE2).
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    /// The pattern.
    pub pattern: SearchRegex,
    /// The replacement in `regex` crate syntax (`${1}`), converted from RE2's `\1`.
    pub substitution: String,
}

#[derive(Deserialize)]
struct RawRegexRewrite {
    #[serde(rename = "match")]
    pattern: SearchRegex,
    rewrite: String,
}

deserialize_via!(RegexRewrite, RawRegexRewrite);

impl TryFrom<RawRegexRewrite> for RegexRewrite {
    type Error = String;

    fn try_from(raw: RawRegexRewrite) -> Result<Self, String> {
        Ok(RegexRewrite {
            pattern: raw.pattern,
            substitution: re2_substitution(&raw.rewrite),
        })
    }
}

/// Converts an RE2 replacement (`\1`, `\\`) into the `regex` crate's (`${1}`, `$$`).
fn re2_substitution(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len());
    let mut chars = re2.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Retry conditions (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RetryOn {
    /// Any 5xx, or no response (reset, timeout, connect failure).
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504.
    GatewayError,
    /// Reset, disconnect or timeout before a response.
    Reset,
    /// Reset before the request was sent upstream.
    ResetBeforeRequest,
    /// Connection failure.
    ConnectFailure,
    /// The upstream answered with `x-envoy-ratelimited`.
    EnvoyRatelimited,
    /// 409.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// One of the configured status codes.
    RetriableStatusCodes,
    /// A configured response header is present.
    RetriableHeaders,
    /// HTTP/3 connect failure after the request was sent.
    Http3PostConnectFailure,
    /// gRPC status CANCELLED.
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED.
    DeadlineExceeded,
    /// gRPC status INTERNAL.
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC status UNAVAILABLE.
    Unavailable,
}

impl RetryOn {
    /// Parses one Envoy condition name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "5xx" => Self::FiveXx,
            "gateway-error" => Self::GatewayError,
            "reset" => Self::Reset,
            "reset-before-request" => Self::ResetBeforeRequest,
            "connect-failure" => Self::ConnectFailure,
            "envoy-ratelimited" => Self::EnvoyRatelimited,
            "retriable-4xx" => Self::Retriable4xx,
            "refused-stream" => Self::RefusedStream,
            "retriable-status-codes" => Self::RetriableStatusCodes,
            "retriable-headers" => Self::RetriableHeaders,
            "http3-post-connect-failure" => Self::Http3PostConnectFailure,
            "cancelled" => Self::Cancelled,
            "deadline-exceeded" => Self::DeadlineExceeded,
            "internal" => Self::Internal,
            "resource-exhausted" => Self::ResourceExhausted,
            "unavailable" => Self::Unavailable,
            _ => return None,
        })
    }
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone)]
pub struct HttpRetry {
    /// Number of retries (not counting the first try); 0 disables retries.
    pub attempts: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<IstioDuration>,
    /// Conditions; empty = Istio's default conditions.
    pub retry_on: Vec<RetryOn>,
    /// Status codes that trigger a retry (numbers in `retryOn`).
    pub retriable_status_codes: Vec<u16>,
    /// Minimum pause between tries.
    pub backoff: Option<IstioDuration>,
    /// Avoid hosts already tried (default true in Istio).
    pub retry_ignore_previous_hosts: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpRetry {
    #[serde(default)]
    attempts: u32,
    per_try_timeout: Option<IstioDuration>,
    retry_on: Option<String>,
    backoff: Option<IstioDuration>,
    retry_ignore_previous_hosts: Option<bool>,
}

deserialize_via!(HttpRetry, RawHttpRetry);

impl TryFrom<RawHttpRetry> for HttpRetry {
    type Error = String;

    fn try_from(raw: RawHttpRetry) -> Result<Self, String> {
        let mut retry_on = Vec::new();
        let mut codes = Vec::new();
        for item in raw
            .retry_on
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
        {
            if item.is_empty() {
                continue;
            }
            if let Ok(code) = item.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(format!("retryOn: status code {code} is outside 100..=599"));
                }
                codes.push(code);
            } else if let Some(condition) = RetryOn::parse(item) {
                retry_on.push(condition);
            } else {
                return Err(format!("retryOn: unknown retry condition {item:?}"));
            }
        }
        Ok(HttpRetry {
            attempts: raw.attempts,
            per_try_timeout: raw.per_try_timeout,
            retry_on,
            retriable_status_codes: codes,
            backoff: raw.backoff,
            retry_ignore_previous_hosts: raw.retry_ignore_previous_hosts,
        })
    }
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Abort with an error instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// A fixed delay applied to a percentage of requests (100% when unset).
#[derive(Debug, Clone)]
pub struct FaultDelay {
    /// The delay.
    pub fixed_delay: IstioDuration,
    /// Share of requests delayed.
    pub percentage: Percent,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFaultDelay {
    fixed_delay: Option<IstioDuration>,
    exponential_delay: Option<serde::de::IgnoredAny>,
    percentage: Option<Percent>,
    percent: Option<u32>,
}

deserialize_via!(FaultDelay, RawFaultDelay);

impl TryFrom<RawFaultDelay> for FaultDelay {
    type Error = String;

    fn try_from(raw: RawFaultDelay) -> Result<Self, String> {
        if raw.exponential_delay.is_some() {
            return Err("exponentialDelay is not supported".into());
        }
        let fixed_delay = raw.fixed_delay.ok_or("fixedDelay is required")?;
        Ok(FaultDelay {
            fixed_delay,
            percentage: fault_percentage(raw.percentage, raw.percent)?,
        })
    }
}

fn fault_percentage(percentage: Option<Percent>, percent: Option<u32>) -> Result<Percent, String> {
    match (percentage, percent) {
        (Some(p), _) => Ok(p),
        (None, Some(p)) if p > 100 => Err(format!("percent {p} is above 100")),
        (None, Some(p)) => Ok(Percent(f64::from(p))),
        (None, None) => Ok(Percent(100.0)),
    }
}

/// What an injected abort answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortStatus {
    /// An HTTP status code (200..=599).
    Http(u16),
    /// A gRPC status (name such as `UNAVAILABLE`, or number).
    Grpc(String),
}

/// An abort applied to a percentage of requests (100% when unset).
#[derive(Debug, Clone)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// Share of requests aborted.
    pub percentage: Percent,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFaultAbort {
    http_status: Option<i32>,
    grpc_status: Option<String>,
    http2_error: Option<String>,
    percentage: Option<Percent>,
}

deserialize_via!(FaultAbort, RawFaultAbort);

impl TryFrom<RawFaultAbort> for FaultAbort {
    type Error = String;

    fn try_from(raw: RawFaultAbort) -> Result<Self, String> {
        let status = match (raw.http_status, raw.grpc_status, raw.http2_error) {
            (Some(code), None, None) => AbortStatus::Http(
                u16::try_from(code)
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .ok_or_else(|| format!("httpStatus {code} is outside 200..=599"))?,
            ),
            (None, Some(grpc), None) => AbortStatus::Grpc(grpc),
            (None, None, Some(_)) => return Err("http2Error is not supported".into()),
            (None, None, None) => return Err("one of httpStatus or grpcStatus is required".into()),
            _ => return Err("httpStatus, grpcStatus and http2Error are mutually exclusive".into()),
        };
        Ok(FaultAbort {
            status,
            percentage: fault_percentage(raw.percentage, None)?,
        })
    }
}

/// One mirror target.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpMirror {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests copied (100% when unset).
    pub percentage: Option<Percent>,
}

/// Istio's `CorsPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<IstioDuration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// What to do with preflights whose origin is not allowed.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Istio's `CorsPolicy.UnmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default: forward.
    Unspecified,
    /// Forward to the upstream.
    Forward,
    /// Answer without CORS headers.
    Ignore,
}

/// One entry of `spec.tcp`.
#[derive(Debug, Clone, Default)]
pub struct TcpRule {
    /// Match blocks, ORed; none = everything.
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

#[derive(Deserialize)]
struct RawTcpRule {
    #[serde(default, rename = "match")]
    matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    route: Vec<RouteDestination>,
}

deserialize_via!(TcpRule, RawTcpRule);

impl TryFrom<RawTcpRule> for TcpRule {
    type Error = String;

    fn try_from(raw: RawTcpRule) -> Result<Self, String> {
        if raw.route.is_empty() {
            return Err("route is required".into());
        }
        if raw.route.len() > 1 && raw.route.iter().all(|d| d.weight == 0) {
            return Err("route: the total weight of several destinations must be above 0".into());
        }
        Ok(TcpRule {
            matches: raw.matches,
            route: raw.route,
        })
    }
}

/// Istio's `L4MatchAttributes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    #[serde(default)]
    pub destination_subnets: Vec<IpNetOrAddr>,
    /// Destination (service) port.
    pub port: Option<u16>,
    /// Client workload labels; the block never matches in a waypoint.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Client namespace; the block never matches in a waypoint.
    pub source_namespace: Option<String>,
    /// Gateways; ignored by waypoints.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// A CIDR, or a bare address taken as a host prefix (`10.0.0.1` = `10.0.0.1/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IpNetOrAddr(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for IpNetOrAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Self(net));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Self(ipnet::IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("invalid IP address or CIDR {s:?}")))
    }
}

/// Istio's `RouteDestination` (TCP).
#[derive(Debug, Clone, Deserialize)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative weight.
    #[serde(default)]
    pub weight: u32,
}

// === DestinationRule ===

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service the rule applies to (short names relative to the object's namespace).
    pub host: String,
    /// Policies for every subset and port.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named endpoint subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces the object is visible to; not evaluated yet.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// A named subset of a service's endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name referenced by routes.
    pub name: String,
    /// Endpoint labels selecting the subset.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the rule's traffic policy for this subset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio's `TrafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits (circuit breaking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// Istio's `PortTrafficPolicy`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port the overrides apply to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Istio's `LoadBalancerSettings`: a simple algorithm or a consistent hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancerSettings {
    /// A simple algorithm.
    Simple(SimpleLb),
    /// Consistent hashing (soft session affinity).
    ConsistentHash(ConsistentHash),
}

/// Istio's `SimpleLB` (`LEAST_CONN` is read as its replacement `LEAST_REQUEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default: least request.
    Unspecified,
    /// Least outstanding requests (power of two choices).
    LeastRequest,
    /// Uniformly random.
    Random,
    /// Send to the address the caller asked for.
    Passthrough,
    /// Round robin.
    RoundRobin,
}

/// The key of a consistent hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ConsistentHash {
    /// A request header's value.
    HttpHeaderName(String),
    /// A cookie (generated with `ttl` when absent).
    HttpCookie {
        /// Cookie name.
        name: String,
        /// Cookie path.
        path: Option<String>,
        /// Lifetime of a generated cookie.
        ttl: Option<String>,
    },
    /// The client address.
    UseSourceIp,
    /// A query parameter's value.
    HttpQueryParameterName(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLoadBalancer {
    simple: Option<String>,
    consistent_hash: Option<RawConsistentHash>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConsistentHash {
    http_header_name: Option<String>,
    http_cookie: Option<RawHttpCookie>,
    #[serde(default)]
    use_source_ip: bool,
    http_query_parameter_name: Option<String>,
}

#[derive(Deserialize)]
struct RawHttpCookie {
    name: String,
    path: Option<String>,
    ttl: Option<String>,
}

deserialize_via!(LoadBalancerSettings, RawLoadBalancer);

impl TryFrom<RawLoadBalancer> for LoadBalancerSettings {
    type Error = String;

    fn try_from(raw: RawLoadBalancer) -> Result<Self, String> {
        match (raw.simple, raw.consistent_hash) {
            (Some(_), Some(_)) => Err("simple and consistentHash are mutually exclusive".into()),
            (Some(simple), None) => Ok(Self::Simple(match simple.as_str() {
                "UNSPECIFIED" => SimpleLb::Unspecified,
                "LEAST_CONN" | "LEAST_REQUEST" => SimpleLb::LeastRequest,
                "RANDOM" => SimpleLb::Random,
                "PASSTHROUGH" => SimpleLb::Passthrough,
                "ROUND_ROBIN" => SimpleLb::RoundRobin,
                other => return Err(format!("simple: unknown load balancer {other:?}")),
            })),
            (None, Some(hash)) => {
                let mut keys = Vec::new();
                if let Some(h) = hash.http_header_name {
                    crate::config::common::header_name(&h)?;
                    keys.push(ConsistentHash::HttpHeaderName(h.to_ascii_lowercase()));
                }
                if let Some(c) = hash.http_cookie {
                    keys.push(ConsistentHash::HttpCookie {
                        name: c.name,
                        path: c.path,
                        ttl: c.ttl,
                    });
                }
                if hash.use_source_ip {
                    keys.push(ConsistentHash::UseSourceIp);
                }
                if let Some(q) = hash.http_query_parameter_name {
                    keys.push(ConsistentHash::HttpQueryParameterName(q));
                }
                match keys.len() {
                    1 => Ok(Self::ConsistentHash(keys.remove(0))),
                    0 => Err("consistentHash: one hash key is required (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName)".into()),
                    _ => Err("consistentHash: only one hash key may be set".into()),
                }
            }
            (None, None) => Ok(Self::Simple(SimpleLb::Unspecified)),
        }
    }
}

/// Istio's `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tcp: TcpPoolSettings,
    /// HTTP limits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub http: HttpPoolSettings,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Istio's `ConnectionPoolSettings.TCPSettings` (the fields the waypoint enforces).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPoolSettings {
    /// Maximum connections to the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connect timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<IstioDuration>,
    /// Idle timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<IstioDuration>,
}

/// Istio's `ConnectionPoolSettings.HTTPSettings` (the fields the waypoint enforces).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPoolSettings {
    /// Requests queued while waiting for a connection.
    #[serde(
        rename = "http1MaxPendingRequests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<u32>,
    /// Concurrent requests to the destination.
    #[serde(rename = "http2MaxRequests", skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
    /// Requests per upstream connection (0/absent = unlimited, 1 = no keep-alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Concurrent retries to the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Idle timeout of upstream connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<IstioDuration>,
}

/// Istio's `OutlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection.
    #[serde(
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Sweep interval (Istio default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<IstioDuration>,
    /// Minimum ejection time (Istio default 30s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<IstioDuration>,
    /// Maximum share of hosts ejected (Istio default 10%).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<Percentage>,
    /// Ejection stops below this share of healthy hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<Percentage>,
}

/// An integer percentage, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentage(pub u8);

impl<'de> Deserialize<'de> for Percentage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        u8::try_from(value)
            .ok()
            .filter(|v| *v <= 100)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom(format!("{value} is outside 0..=100")))
    }
}

/// Istio's `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// TLS, server authenticated.
    Simple,
    /// Mutual TLS with the given client certificate.
    Mutual,
    /// Mutual TLS with the mesh identity.
    IstioMutual,
}

/// Istio's `ClientTLSSettings` (fields the waypoint reads).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// TLS mode.
    pub mode: TlsMode,
    /// SNI to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Accepted server SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Secret with the client credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// CA file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Client certificate file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Client key file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Skip server verification.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

// === ServiceEntry ===

/// `ServiceEntry.spec`.
#[derive(Debug, Clone)]
pub struct ServiceEntrySpec {
    /// Hostnames of the service.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    pub addresses: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    pub location: Location,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Static endpoints.
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects in-mesh workloads as endpoints.
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// Namespaces the object is visible to; not evaluated yet.
    pub export_to: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceEntry {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<ServicePort>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    resolution: Option<Resolution>,
    #[serde(default)]
    endpoints: Vec<WorkloadEntry>,
    workload_selector: Option<RawWorkloadSelector>,
    #[serde(default)]
    export_to: Vec<String>,
}

#[derive(Deserialize)]
struct RawWorkloadSelector {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

deserialize_via!(ServiceEntrySpec, RawServiceEntry);

impl TryFrom<RawServiceEntry> for ServiceEntrySpec {
    type Error = String;

    fn try_from(raw: RawServiceEntry) -> Result<Self, String> {
        if raw.hosts.is_empty() {
            return Err("hosts: at least one host is required".into());
        }
        if raw.hosts.iter().any(|h| h == "*") {
            return Err("hosts: hostname cannot be wildcard".into());
        }
        let resolution = raw.resolution.unwrap_or(Resolution::None);
        if raw.workload_selector.is_some() && !raw.endpoints.is_empty() {
            return Err("only one of workloadSelector or endpoints can be set".into());
        }
        if resolution == Resolution::None && !raw.endpoints.is_empty() {
            return Err("resolution NONE cannot set endpoints".into());
        }
        for (i, port) in raw.ports.iter().enumerate() {
            if port.number == 0 {
                return Err(format!("ports[{i}].number must be between 1 and 65535"));
            }
            if raw.ports[..i].iter().any(|p| p.number == port.number) {
                return Err(format!(
                    "ports[{i}]: port number {} is duplicated",
                    port.number
                ));
            }
        }
        Ok(ServiceEntrySpec {
            hosts: raw.hosts,
            addresses: raw.addresses,
            ports: raw.ports,
            location: raw.location.unwrap_or(Location::MeshExternal),
            resolution,
            endpoints: raw.endpoints,
            workload_selector: raw.workload_selector.map(|s| s.labels),
            export_to: raw.export_to,
        })
    }
}

/// Istio's `ServicePort`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number.
    pub number: u16,
    /// Protocol (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, …).
    pub protocol: Option<String>,
    /// Port name.
    pub name: String,
    /// Port on the endpoints.
    pub target_port: Option<u16>,
}

/// Istio's `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh (the default).
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// Istio's `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the address asked for (the default).
    None,
    /// The listed endpoint addresses.
    Static,
    /// Resolve the endpoints (or the hosts) through DNS.
    Dns,
    /// DNS, one connection per resolved address in turn.
    DnsRoundRobin,
    /// DNS resolved per request (wildcard hosts).
    DynamicDns,
}

/// Istio's `WorkloadEntry` (inline endpoint).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP, hostname or `unix://` path.
    pub address: Option<String>,
    /// Port name → endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Endpoint labels (subset selection).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network.
    pub network: Option<String>,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// Service account of the endpoint.
    pub service_account: Option<String>,
}
