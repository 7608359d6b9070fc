//! `gateway.networking.k8s.io` routes: `HTTPRoute` and `GRPCRoute`.
//!
//! The API server's defaults are applied while parsing (a rule without `matches` matches every
//! path, a match without `path` is a `PathPrefix "/"`, a backend weight defaults to 1, a
//! redirect to 302), and the CRDs' CEL rules the waypoint depends on are checked, so a file
//! behaves as the same object would after `kubectl apply`.

use serde::{Deserialize, Deserializer};

use super::common::{FullRegex, Header, HeaderOps, deserialize_via, header_name, header_value};
use super::duration::GatewayDuration;

/// The core API group, as `group` fields write it (`""`; `core` is accepted too).
pub const CORE_GROUP: &str = "";
/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Host header matches; GAMMA implementations ignore them for Service parents.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// What the route attaches to (a `Service` for mesh routing).
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Rules; ordered by the Gateway API precedence when compiled.
    #[serde(default = "default_http_rules")]
    pub rules: Vec<HttpRouteRule>,
}

fn default_http_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule {
        name: None,
        matches: vec![HttpRouteMatch::default()],
        filters: Vec::new(),
        backend_refs: Vec::new(),
        timeouts: None,
    }]
}

/// A `parentRefs` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (default `gateway.networking.k8s.io`; `""` for a Service).
    #[serde(default = "default_parent_group")]
    pub group: String,
    /// Kind (default `Gateway`).
    #[serde(default = "default_parent_kind")]
    pub kind: String,
    /// Namespace (default: the route's).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Section (a port name for a Service).
    pub section_name: Option<String>,
    /// Port (for a Service: the service port the route applies to).
    pub port: Option<u16>,
}

fn default_parent_group() -> String {
    GATEWAY_GROUP.to_owned()
}

fn default_parent_kind() -> String {
    "Gateway".to_owned()
}

impl ParentReference {
    /// Whether the parent is a core `Service` (GAMMA).
    pub fn is_service(&self) -> bool {
        self.kind == "Service" && is_core_group(&self.group)
    }
}

/// Whether `group` names the core API group.
pub fn is_core_group(group: &str) -> bool {
    group == CORE_GROUP || group == "core"
}

/// An `HTTPRoute` rule.
#[derive(Debug, Clone)]
pub struct HttpRouteRule {
    /// Name, unique in the route.
    pub name: Option<String>,
    /// Matches, ORed (at least one after defaulting).
    pub matches: Vec<HttpRouteMatch>,
    /// Filters, applied in order.
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    pub backend_refs: Vec<HttpBackendRef>,
    /// Timeouts.
    pub timeouts: Option<HttpRouteTimeouts>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpRouteRule {
    name: Option<String>,
    matches: Option<Vec<HttpRouteMatch>>,
    #[serde(default)]
    filters: Vec<HttpRouteFilter>,
    #[serde(default)]
    backend_refs: Vec<HttpBackendRef>,
    timeouts: Option<HttpRouteTimeouts>,
}

deserialize_via!(HttpRouteRule, RawHttpRouteRule);

impl TryFrom<RawHttpRouteRule> for HttpRouteRule {
    type Error = String;

    fn try_from(raw: RawHttpRouteRule) -> Result<Self, String> {
        let matches = match raw.matches {
            Some(m) if !m.is_empty() => m,
            _ => vec![HttpRouteMatch::default()],
        };
        check_filters(&raw.filters)?;
        let redirect = raw
            .filters
            .iter()
            .any(|f| matches!(f, HttpRouteFilter::RequestRedirect(_)));
        if redirect && !raw.backend_refs.is_empty() {
            return Err("RequestRedirect filter must not be used together with backendRefs".into());
        }
        let single_prefix =
            matches.len() == 1 && matches!(matches[0].path, HttpPathMatch::Prefix(_));
        let prefix_modifiers = raw
            .filters
            .iter()
            .chain(raw.backend_refs.iter().flat_map(|b| b.filters.iter()))
            .any(HttpRouteFilter::replaces_prefix);
        if prefix_modifiers && !single_prefix {
            return Err(
                "a replacePrefixMatch path modifier requires exactly one PathPrefix match".into(),
            );
        }
        for (i, backend) in raw.backend_refs.iter().enumerate() {
            check_filters(&backend.filters).map_err(|e| format!("backendRefs[{i}]: {e}"))?;
        }
        if let Some(HttpRouteTimeouts {
            request: Some(request),
            backend_request: Some(backend),
        }) = &raw.timeouts
            && request.0 != std::time::Duration::ZERO
            && backend.0 > request.0
        {
            return Err("timeouts: backendRequest must not be longer than request".into());
        }
        Ok(HttpRouteRule {
            name: raw.name,
            matches,
            filters: raw.filters,
            backend_refs: raw.backend_refs,
            timeouts: raw.timeouts,
        })
    }
}

/// The CRD's rules on a filter list: no redirect together with a rewrite, and no filter type
/// (other than `RequestMirror` and `ExtensionRef`) repeated.
fn check_filters(filters: &[HttpRouteFilter]) -> Result<(), String> {
    let count = |pred: fn(&HttpRouteFilter) -> bool| filters.iter().filter(|f| pred(f)).count();
    let has_redirect = count(|f| matches!(f, HttpRouteFilter::RequestRedirect(_))) > 0;
    let has_rewrite = count(|f| matches!(f, HttpRouteFilter::UrlRewrite(_))) > 0;
    if has_redirect && has_rewrite {
        return Err("filters: RequestRedirect and URLRewrite cannot be used together".into());
    }
    type IsType = fn(&HttpRouteFilter) -> bool;
    let singles: [(&str, IsType); 5] = [
        ("RequestHeaderModifier", |f| {
            matches!(f, HttpRouteFilter::RequestHeaderModifier(_))
        }),
        ("ResponseHeaderModifier", |f| {
            matches!(f, HttpRouteFilter::ResponseHeaderModifier(_))
        }),
        ("RequestRedirect", |f| {
            matches!(f, HttpRouteFilter::RequestRedirect(_))
        }),
        ("URLRewrite", |f| {
            matches!(f, HttpRouteFilter::UrlRewrite(_))
        }),
        ("CORS", |f| matches!(f, HttpRouteFilter::Cors(_))),
    ];
    for (name, pred) in singles {
        if count(pred) > 1 {
            return Err(format!("filters: {name} filter cannot be repeated"));
        }
    }
    Ok(())
}

/// An `HTTPRouteMatch`: conditions ANDed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match (default `PathPrefix "/"`).
    #[serde(default)]
    pub path: HttpPathMatch,
    /// Header matches (names case-insensitive; the first of equal names counts).
    #[serde(default, deserialize_with = "dedup_header_matches")]
    pub headers: Vec<HeaderValueMatch>,
    /// Query parameter matches (the first of equal names counts).
    #[serde(default, deserialize_with = "dedup_query_matches")]
    pub query_params: Vec<QueryValueMatch>,
    /// Method.
    pub method: Option<HttpMethod>,
}

/// An `HTTPPathMatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpPathMatch {
    /// `Exact`.
    Exact(String),
    /// `PathPrefix`: whole path segments (`/foo` matches `/foo` and `/foo/bar`, not
    /// `/foobar`); a trailing `/` is ignored.
    Prefix(String),
    /// `RegularExpression` (RE2, whole path).
    Regex(FullRegex),
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        Self::Prefix("/".to_owned())
    }
}

#[derive(Deserialize)]
struct RawPathMatch {
    #[serde(rename = "type", default = "default_path_type")]
    kind: String,
    #[serde(default = "default_path_value")]
    value: String,
}

fn default_path_type() -> String {
    "PathPrefix".to_owned()
}

fn default_path_value() -> String {
    "/".to_owned()
}

deserialize_via!(HttpPathMatch, RawPathMatch);

impl TryFrom<RawPathMatch> for HttpPathMatch {
    type Error = String;

    fn try_from(raw: RawPathMatch) -> Result<Self, String> {
        let literal = |value: String| {
            if !value.starts_with('/') {
                return Err("value must be an absolute path (start with '/')".to_owned());
            }
            if value.contains("//") || value.contains("/./") || value.contains("/../") {
                return Err("value must not contain '//', '/./' or '/../'".to_owned());
            }
            if value.contains('?') || value.contains('#') {
                return Err("value must not contain '?' or '#'".to_owned());
            }
            Ok(value)
        };
        match raw.kind.as_str() {
            "Exact" => literal(raw.value).map(Self::Exact),
            "PathPrefix" => literal(raw.value).map(Self::Prefix),
            "RegularExpression" => FullRegex::new(&raw.value)
                .map(Self::Regex)
                .map_err(|e| format!("invalid regex {:?}: {e}", raw.value)),
            other => Err(format!(
                "type {other:?} is not one of Exact, PathPrefix, RegularExpression"
            )),
        }
    }
}

/// A header match of the Gateway API (`Exact` or `RegularExpression`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderValueMatch {
    /// Header name, lowercased.
    pub name: http::HeaderName,
    /// Value match.
    pub value: GatewayValueMatch,
}

/// A query parameter match of the Gateway API.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryValueMatch {
    /// Parameter name (exact, case-sensitive).
    pub name: String,
    /// Value match.
    pub value: GatewayValueMatch,
}

/// `Exact` or `RegularExpression` value match.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayValueMatch {
    /// Exact.
    Exact(String),
    /// RE2 regex, whole value.
    Regex(FullRegex),
}

#[derive(Deserialize)]
struct RawNameValueMatch {
    #[serde(rename = "type", default = "default_exact")]
    kind: String,
    name: String,
    value: String,
}

fn default_exact() -> String {
    "Exact".to_owned()
}

fn value_match(kind: &str, value: String) -> Result<GatewayValueMatch, String> {
    match kind {
        "Exact" => Ok(GatewayValueMatch::Exact(value)),
        "RegularExpression" => FullRegex::new(&value)
            .map(GatewayValueMatch::Regex)
            .map_err(|e| format!("invalid regex {value:?}: {e}")),
        other => Err(format!(
            "type {other:?} is not one of Exact, RegularExpression"
        )),
    }
}

fn dedup_header_matches<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<HeaderValueMatch>, D::Error> {
    let raw = Vec::<RawNameValueMatch>::deserialize(deserializer)?;
    let mut out: Vec<HeaderValueMatch> = Vec::with_capacity(raw.len());
    for m in raw {
        let name = header_name(&m.name).map_err(serde::de::Error::custom)?;
        let value = value_match(&m.kind, m.value).map_err(serde::de::Error::custom)?;
        if !out.iter().any(|h| h.name == name) {
            out.push(HeaderValueMatch { name, value });
        }
    }
    Ok(out)
}

fn dedup_query_matches<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<QueryValueMatch>, D::Error> {
    let raw = Vec::<RawNameValueMatch>::deserialize(deserializer)?;
    let mut out: Vec<QueryValueMatch> = Vec::with_capacity(raw.len());
    for m in raw {
        let value = value_match(&m.kind, m.value).map_err(serde::de::Error::custom)?;
        if !out.iter().any(|q| q.name == m.name) {
            out.push(QueryValueMatch {
                name: m.name,
                value,
            });
        }
    }
    Ok(out)
}

/// An HTTP method of `HTTPRouteMatch.method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMethod(pub String);

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const METHODS: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let method = String::deserialize(deserializer)?;
        if !METHODS.contains(&method.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "unknown method {method:?}"
            )));
        }
        Ok(Self(method))
    }
}

/// An `HTTPRouteFilter` (also used for `GRPCRoute`, whose filter types are a subset).
#[derive(Debug, Clone)]
pub enum HttpRouteFilter {
    /// Edit request headers.
    RequestHeaderModifier(HeaderOps),
    /// Edit response headers.
    ResponseHeaderModifier(HeaderOps),
    /// Copy requests to another backend.
    RequestMirror(RequestMirror),
    /// Answer with a redirect.
    RequestRedirect(RequestRedirect),
    /// Rewrite host and/or path before forwarding.
    UrlRewrite(UrlRewrite),
    /// CORS.
    Cors(GatewayCors),
    /// An implementation-specific filter (`ExtensionRef`) or a type this waypoint does not
    /// know; requests that reach it get a 500, as the Gateway API requires.
    Unsupported(String),
}

impl HttpRouteFilter {
    fn replaces_prefix(&self) -> bool {
        let path = match self {
            Self::RequestRedirect(r) => r.path.as_ref(),
            Self::UrlRewrite(r) => r.path.as_ref(),
            _ => None,
        };
        matches!(path, Some(PathModifier::ReplacePrefixMatch(_)))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<GatewayHeaderModifier>,
    response_header_modifier: Option<GatewayHeaderModifier>,
    request_mirror: Option<RequestMirror>,
    request_redirect: Option<RequestRedirect>,
    url_rewrite: Option<UrlRewrite>,
    cors: Option<GatewayCors>,
}

deserialize_via!(HttpRouteFilter, RawFilter);

impl TryFrom<RawFilter> for HttpRouteFilter {
    type Error = String;

    fn try_from(raw: RawFilter) -> Result<Self, String> {
        fn required<T>(value: Option<T>, kind: &str, field: &str) -> Result<T, String> {
            value.ok_or_else(|| format!("type {kind} requires the {field} field"))
        }
        let kind = raw.kind.as_str();
        Ok(match kind {
            "RequestHeaderModifier" => Self::RequestHeaderModifier(
                required(raw.request_header_modifier, kind, "requestHeaderModifier")?.0,
            ),
            "ResponseHeaderModifier" => Self::ResponseHeaderModifier(
                required(raw.response_header_modifier, kind, "responseHeaderModifier")?.0,
            ),
            "RequestMirror" => {
                Self::RequestMirror(required(raw.request_mirror, kind, "requestMirror")?)
            }
            "RequestRedirect" => {
                Self::RequestRedirect(required(raw.request_redirect, kind, "requestRedirect")?)
            }
            "URLRewrite" => Self::UrlRewrite(required(raw.url_rewrite, kind, "urlRewrite")?),
            "CORS" => Self::Cors(required(raw.cors, kind, "cors")?),
            other => Self::Unsupported(other.to_owned()),
        })
    }
}

/// `HTTPHeaderFilter`: `set`/`add` lists of `{name, value}`, `remove` names.
#[derive(Debug, Clone)]
pub struct GatewayHeaderModifier(pub HeaderOps);

#[derive(Deserialize)]
struct RawHeaderModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

deserialize_via!(GatewayHeaderModifier, RawHeaderModifier);

impl TryFrom<RawHeaderModifier> for GatewayHeaderModifier {
    type Error = String;

    fn try_from(raw: RawHeaderModifier) -> Result<Self, String> {
        let pairs = |list: Vec<RawHeader>| -> Result<Vec<Header>, String> {
            list.into_iter()
                .map(|h| {
                    Ok(Header {
                        value: header_value(&h.name, &h.value)?,
                        name: header_name(&h.name)?,
                    })
                })
                .collect()
        };
        Ok(Self(HeaderOps {
            set: pairs(raw.set)?,
            add: pairs(raw.add)?,
            remove: raw
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
        }))
    }
}

/// `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone)]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendObjectReference,
    /// Share of requests copied, in percent (100 when unset).
    pub percent: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequestMirror {
    backend_ref: BackendObjectReference,
    percent: Option<u32>,
    fraction: Option<RawFraction>,
}

#[derive(Deserialize)]
struct RawFraction {
    numerator: u32,
    #[serde(default = "default_denominator")]
    denominator: u32,
}

fn default_denominator() -> u32 {
    100
}

deserialize_via!(RequestMirror, RawRequestMirror);

impl TryFrom<RawRequestMirror> for RequestMirror {
    type Error = String;

    fn try_from(raw: RawRequestMirror) -> Result<Self, String> {
        let percent = match (raw.percent, raw.fraction) {
            (Some(_), Some(_)) => return Err("only one of fraction or percent may be set".into()),
            (Some(p), None) if p > 100 => return Err(format!("percent {p} is above 100")),
            (Some(p), None) => f64::from(p),
            (None, Some(f)) => {
                if f.denominator == 0 || f.numerator > f.denominator {
                    return Err("fraction: numerator must not exceed a non-zero denominator".into());
                }
                f64::from(f.numerator) * 100.0 / f64::from(f.denominator)
            }
            (None, None) => 100.0,
        };
        Ok(Self {
            backend_ref: raw.backend_ref,
            percent,
        })
    }
}

/// `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<RedirectScheme>,
    /// New host.
    pub hostname: Option<String>,
    /// Path modifier.
    pub path: Option<PathModifier>,
    /// New port.
    pub port: Option<u16>,
    /// Status code: 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_code", deserialize_with = "redirect_code")]
    pub status_code: u16,
}

fn default_redirect_code() -> u16 {
    302
}

fn redirect_code<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let code = u16::deserialize(deserializer)?;
    if ![301, 302, 303, 307, 308].contains(&code) {
        return Err(serde::de::Error::custom(format!(
            "statusCode {code} is not one of 301, 302, 303, 307, 308"
        )));
    }
    Ok(code)
}

/// A redirect scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl RedirectScheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New Host/authority.
    pub hostname: Option<String>,
    /// Path modifier.
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the matched `PathPrefix` (whole segments).
    ReplacePrefixMatch(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathModifier {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

deserialize_via!(PathModifier, RawPathModifier);

impl TryFrom<RawPathModifier> for PathModifier {
    type Error = String;

    fn try_from(raw: RawPathModifier) -> Result<Self, String> {
        match (
            raw.kind.as_str(),
            raw.replace_full_path,
            raw.replace_prefix_match,
        ) {
            ("ReplaceFullPath", Some(p), None) => Ok(Self::ReplaceFullPath(p)),
            ("ReplacePrefixMatch", None, Some(p)) => Ok(Self::ReplacePrefixMatch(p)),
            ("ReplaceFullPath", _, _) => {
                Err("type ReplaceFullPath requires only replaceFullPath".into())
            }
            ("ReplacePrefixMatch", _, _) => {
                Err("type ReplacePrefixMatch requires only replacePrefixMatch".into())
            }
            (other, _, _) => Err(format!(
                "type {other:?} is not one of ReplaceFullPath, ReplacePrefixMatch"
            )),
        }
    }
}

/// `HTTPCORSFilter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayCors {
    /// Allowed origins (`*` wildcards allowed as in the spec).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Allowed methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether credentials are allowed.
    pub allow_credentials: Option<bool>,
    /// Preflight cache lifetime in seconds (default 5).
    #[serde(default = "default_max_age")]
    pub max_age: u32,
}

fn default_max_age() -> u32 {
    5
}

/// A `backendRefs` entry of an `HTTPRoute`/`GRPCRoute` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// API group (default core).
    #[serde(default)]
    pub group: String,
    /// Kind (default `Service`).
    #[serde(default = "default_backend_kind")]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    pub namespace: Option<String>,
    /// Port (required for a Service).
    pub port: Option<u16>,
    /// Relative weight (default 1; 0 = no traffic).
    #[serde(default = "default_weight", deserialize_with = "backend_weight")]
    pub weight: u32,
    /// Filters applied when this backend is chosen.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

fn default_backend_kind() -> String {
    "Service".to_owned()
}

fn default_weight() -> u32 {
    1
}

fn backend_weight<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let weight = u32::deserialize(deserializer)?;
    if weight > 1_000_000 {
        return Err(serde::de::Error::custom(format!(
            "weight {weight} is above 1000000"
        )));
    }
    Ok(weight)
}

/// A `BackendObjectReference` (mirror targets).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendObjectReference {
    /// API group (default core).
    #[serde(default)]
    pub group: String,
    /// Kind (default `Service`).
    #[serde(default = "default_backend_kind")]
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    pub namespace: Option<String>,
    /// Port (required for a Service).
    pub port: Option<u16>,
}

/// `HTTPRouteTimeouts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Whole request; zero disables.
    pub request: Option<GatewayDuration>,
    /// Each request to a backend (each try).
    pub backend_request: Option<GatewayDuration>,
}

// === GRPCRoute ===

/// `GRPCRoute.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Host matches; ignored for Service parents.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// What the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// A `GRPCRoute` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Name.
    pub name: Option<String>,
    /// Matches, ORed; none = every request.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters (header modifiers, mirror).
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
}

/// A `GRPCRouteMatch`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Service/method match.
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) matches.
    #[serde(default, deserialize_with = "dedup_header_matches")]
    pub headers: Vec<HeaderValueMatch>,
}

/// A `GRPCMethodMatch`: at least one of service and method.
#[derive(Debug, Clone)]
pub struct GrpcMethodMatch {
    /// `Exact` (false) or `RegularExpression` (true).
    pub regex: bool,
    /// Fully qualified service (`pkg.Service`).
    pub service: Option<String>,
    /// Method name.
    pub method: Option<String>,
}

#[derive(Deserialize)]
struct RawGrpcMethodMatch {
    #[serde(rename = "type", default = "default_exact")]
    kind: String,
    service: Option<String>,
    method: Option<String>,
}

deserialize_via!(GrpcMethodMatch, RawGrpcMethodMatch);

impl TryFrom<RawGrpcMethodMatch> for GrpcMethodMatch {
    type Error = String;

    fn try_from(raw: RawGrpcMethodMatch) -> Result<Self, String> {
        let regex = match raw.kind.as_str() {
            "Exact" => false,
            "RegularExpression" => true,
            other => {
                return Err(format!(
                    "type {other:?} is not one of Exact, RegularExpression"
                ));
            }
        };
        let service = raw.service.filter(|s| !s.is_empty());
        let method = raw.method.filter(|s| !s.is_empty());
        if service.is_none() && method.is_none() {
            return Err("one or both of service and method must be specified".into());
        }
        for part in [&service, &method].into_iter().flatten() {
            if regex {
                FullRegex::new(part).map_err(|e| format!("invalid regex {part:?}: {e}"))?;
            } else if part.contains('/') {
                return Err(format!("{part:?} must not contain '/'"));
            }
        }
        Ok(Self {
            regex,
            service,
            method,
        })
    }
}
