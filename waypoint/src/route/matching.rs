//! Route selection: which route a request takes, and what that route does with it.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;

use super::model::{
    BackendStatus, CompiledRoutes, DirectResponse, HeaderMatch, PathMatch, QueryParamMatch,
    Redirect, RequestMatch, Route, RouteAction, TcpRoute, ValueMatch, WeightedBackend,
};
use super::weighted::pick_weighted;

/// The scheme a waypoint's downstream requests have: plaintext HTTP inside the HBONE tunnel.
const DOWNSTREAM_SCHEME: &str = "http";

/// What route selection looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method (`GET`).
    pub method: &'a str,
    /// `:path` with its query (`/api/v1?x=1`), already normalized by the listener.
    pub path: &'a str,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The service port the request was sent to.
    pub port: u16,
}

/// How the path condition of the chosen match block matched, for prefix rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedPath {
    /// The first `n` bytes of the path matched a prefix.
    Prefix(usize),
    /// The whole path matched (exact or regex).
    Whole,
}

/// The outcome of [`select_route`].
#[derive(Debug, Clone, Copy)]
pub enum RouteDecision<'a> {
    /// A route matched.
    Route(RouteMatch<'a>),
    /// No route matched: 404 with response flag `NR`.
    NoRoute,
}

impl<'a> RouteDecision<'a> {
    /// The matched route, if any.
    pub fn route(&self) -> Option<&RouteMatch<'a>> {
        match self {
            Self::Route(m) => Some(m),
            Self::NoRoute => None,
        }
    }
}

/// A matched route and how it matched.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// The route.
    pub route: &'a Route,
    /// The match block that matched (none for a route without conditions).
    pub matched: Option<&'a RequestMatch>,
    /// How its path condition matched.
    pub path: MatchedPath,
}

/// What to do with a request once its route is known ([`RouteMatch::resolve`]).
#[derive(Debug, Clone, Copy)]
pub enum Resolution<'a> {
    /// Send to this backend (the concrete stage picks an endpoint).
    Forward(&'a WeightedBackend),
    /// Answer with this redirect.
    Redirect(&'a Redirect),
    /// Answer with this response.
    DirectResponse(&'a DirectResponse),
    /// The chosen backend names a subset no DestinationRule defines: 503, flag `UH`.
    UnknownSubset(&'a WeightedBackend),
    /// The chosen backend reference is invalid (Gateway API): 500.
    InvalidBackend(&'a WeightedBackend),
    /// The route has no backend with a weight: 500.
    NoBackend,
}

impl Resolution<'_> {
    /// The status of the error response this resolution calls for, if it is an error.
    pub fn error_status(&self) -> Option<u16> {
        match self {
            Self::UnknownSubset(_) => Some(503),
            Self::InvalidBackend(_) | Self::NoBackend => Some(500),
            Self::Forward(_) | Self::Redirect(_) | Self::DirectResponse(_) => None,
        }
    }

    /// The Envoy response flag to log, if any.
    pub fn response_flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::UnknownSubset(_) => Some(ResponseFlag::NoHealthyUpstream),
            _ => None,
        }
    }
}

/// Envoy response flags set by routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseFlag {
    /// `NR`: no route configured for the request.
    NoRouteFound,
    /// `UH`: no healthy upstream (here: no such subset).
    NoHealthyUpstream,
}

impl ResponseFlag {
    /// The short code in access logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRouteFound => "NR",
            Self::NoHealthyUpstream => "UH",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RouteDecision<'_> {
    /// 404 for [`RouteDecision::NoRoute`].
    pub fn error_status(&self) -> Option<u16> {
        matches!(self, Self::NoRoute).then_some(404)
    }

    /// `NR` for [`RouteDecision::NoRoute`].
    pub fn response_flag(&self) -> Option<ResponseFlag> {
        matches!(self, Self::NoRoute).then_some(ResponseFlag::NoRouteFound)
    }
}

impl<'a> RouteMatch<'a> {
    /// Resolves the route's action; `random` (uniform over `u32`) picks among weighted
    /// backends.
    pub fn resolve(&self, random: u32) -> Resolution<'a> {
        match &self.route.action {
            RouteAction::Redirect(redirect) => Resolution::Redirect(redirect),
            RouteAction::DirectResponse(response) => Resolution::DirectResponse(response),
            RouteAction::Forward(backends) => match pick_weighted(backends, random) {
                None => Resolution::NoBackend,
                Some(chosen) => match chosen.backend.status {
                    BackendStatus::Ok => Resolution::Forward(chosen),
                    BackendStatus::UnknownSubset => Resolution::UnknownSubset(chosen),
                    BackendStatus::Invalid(_) => Resolution::InvalidBackend(chosen),
                },
            },
        }
    }
}

/// Selects the first route whose conditions the request meets.
pub fn select_route<'a>(
    routes: &'a CompiledRoutes,
    request: &RequestView<'_>,
) -> RouteDecision<'a> {
    let (path, query) = match request.path.split_once('?') {
        Some((path, query)) => (path, query),
        None => (request.path, ""),
    };
    let mut params = LazyQuery {
        raw: query,
        parsed: None,
    };
    for route in &routes.http {
        if route.matches.is_empty() {
            let path = MatchedPath::Prefix(usize::from(path.starts_with('/')));
            return RouteDecision::Route(RouteMatch {
                route,
                matched: None,
                path,
            });
        }
        for block in &route.matches {
            if let Some(matched_path) = match_block(block, request, path, &mut params) {
                return RouteDecision::Route(RouteMatch {
                    route,
                    matched: Some(block),
                    path: matched_path,
                });
            }
        }
    }
    RouteDecision::NoRoute
}

/// What TCP route selection looks at in a connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpView {
    /// The service port.
    pub port: u16,
    /// The original destination address, when known.
    pub destination: Option<IpAddr>,
}

/// Selects the first TCP route whose conditions the connection meets.
pub fn select_tcp_route<'a>(
    routes: &'a CompiledRoutes,
    connection: &TcpView,
) -> Option<&'a TcpRoute> {
    routes.tcp.iter().find(|route| {
        route.matches.is_empty()
            || route.matches.iter().any(|m| {
                m.port.is_none_or(|p| p == connection.port)
                    && (m.destination_subnets.is_empty()
                        || connection.destination.is_some_and(|ip| {
                            m.destination_subnets.iter().any(|n| n.contains(&ip))
                        }))
            })
    })
}

fn match_block(
    block: &RequestMatch,
    request: &RequestView<'_>,
    path: &str,
    params: &mut LazyQuery<'_>,
) -> Option<MatchedPath> {
    if block.port.is_some_and(|p| p != request.port) {
        return None;
    }
    let matched_path = match &block.path {
        Some(condition) => match_path(condition, path)?,
        None => MatchedPath::Prefix(usize::from(path.starts_with('/'))),
    };
    let value_ok =
        |m: &Option<ValueMatch>, value: &str| m.as_ref().is_none_or(|m| m.matches(value));
    if !value_ok(&block.method, request.method)
        || !value_ok(&block.authority, request.authority)
        || !value_ok(&block.scheme, DOWNSTREAM_SCHEME)
    {
        return None;
    }
    if !block.headers.iter().all(|h| h.matches(request.headers)) {
        return None;
    }
    if !block.query_params.is_empty() {
        let parsed = params.get();
        if !block.query_params.iter().all(|q| q.matches(parsed)) {
            return None;
        }
    }
    Some(matched_path)
}

fn match_path(condition: &PathMatch, path: &str) -> Option<MatchedPath> {
    match condition {
        PathMatch::Exact { value, ignore_case } => {
            let equal = if *ignore_case {
                path.eq_ignore_ascii_case(value)
            } else {
                path == value
            };
            equal.then_some(MatchedPath::Whole)
        }
        PathMatch::Prefix { value, ignore_case } => {
            let head = path.as_bytes().get(..value.len())?;
            let equal = if *ignore_case {
                head.eq_ignore_ascii_case(value.as_bytes())
            } else {
                head == value.as_bytes()
            };
            equal.then_some(MatchedPath::Prefix(value.len()))
        }
        PathMatch::SegmentPrefix(value) => {
            let prefix = value.trim_end_matches('/');
            let segment_end =
                path.len() == prefix.len() || path.as_bytes().get(prefix.len()) == Some(&b'/');
            (path.starts_with(prefix) && path.starts_with('/') && segment_end)
                .then_some(MatchedPath::Prefix(prefix.len()))
        }
        PathMatch::Regex(regex) => regex.is_match(path).then_some(MatchedPath::Whole),
    }
}

impl ValueMatch {
    /// Whether a present value meets the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(v) => value == v,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}

impl HeaderMatch {
    /// Whether the headers meet the condition (several values joined with `,`).
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let holds = match values.next() {
            None => false,
            Some(first) => {
                let mut joined: Cow<'_, str> = String::from_utf8_lossy(first.as_bytes());
                for more in values {
                    let owned = joined.to_mut();
                    owned.push(',');
                    owned.push_str(&String::from_utf8_lossy(more.as_bytes()));
                }
                self.value.matches(&joined)
            }
        };
        holds != self.invert
    }
}

impl QueryParamMatch {
    fn matches(&self, params: &[(Cow<'_, str>, Cow<'_, str>)]) -> bool {
        params
            .iter()
            .find(|(name, _)| *name == self.name)
            .is_some_and(|(_, value)| self.value.matches(value))
    }
}

/// The query, parsed the first time a route needs it.
struct LazyQuery<'q> {
    raw: &'q str,
    parsed: Option<Vec<(Cow<'q, str>, Cow<'q, str>)>>,
}

impl<'q> LazyQuery<'q> {
    fn get(&mut self) -> &[(Cow<'q, str>, Cow<'q, str>)] {
        let raw = self.raw;
        self.parsed.get_or_insert_with(|| parse_query(raw))
    }
}

/// Splits a query into percent-decoded name/value pairs (`+` is kept as is, as Envoy does);
/// a parameter without `=` has the empty value.
pub(crate) fn parse_query(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    query_pairs(query).collect()
}

/// The decoded `name=value` pairs of a query string, in order (a name without `=` has an
/// empty value).
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
}

/// `%XX` decoding; malformed escapes are kept as written, invalid UTF-8 is replaced.
pub(crate) fn percent_decode(input: &str) -> Cow<'_, str> {
    if !input.contains('%') {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            // Two hex digits make one byte; the cast cannot truncate (hi, lo < 16).
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}
