//! HTTPRoute / GRPCRoute with a Service parent (GAMMA) → routes.
//!
//! Each match of each rule becomes one route, and the routes attached to a service port are
//! ordered by the Gateway API precedence: for HTTPRoute, an `Exact` path, then a
//! `RegularExpression` path (longer pattern first; the spec leaves regexes to the
//! implementation), then the longest `PathPrefix`, then a method match, then the most header
//! matches, then the most query matches; ties go to the oldest route, then by
//! `namespace/name`, then rule and match order. GRPCRoute entries (longest service, then
//! method, then most headers) come before HTTPRoute entries on the same service port.

use std::time::Duration;

use super::{CompileOptions, ServicePort, ServiceTarget, Warning};
use crate::config::common::{FullRegex, HeaderOps};
use crate::config::gateway::{
    GatewayCors, GatewayValueMatch, GrpcRouteRule, HttpBackendRef, HttpPathMatch, HttpRouteFilter,
    HttpRouteRule, ParentReference, PathModifier, is_core_group,
};
use crate::config::{ConfigSet, Object, ObjectRef, Source, Spec};
use crate::route::model::{
    Backend, BackendStatus, CorsPolicy, DirectResponse, Filters, HeaderMatch, Mirror, PathMatch,
    PathRewrite, QueryParamMatch, Redirect, RedirectPort, RequestMatch, RetryPolicy, Rewrite,
    Route, RouteAction, RouteOrigin, ValueMatch, WeightedBackend,
};

/// Precedence of one match entry: larger sorts first.
type MatchKey = (u8, u8, usize, bool, usize, usize);

/// One match of one rule, compiled.
struct Entry {
    key: MatchKey,
    route: Route,
}

/// A Gateway API route compiled once, independently of the services it attaches to.
pub(super) struct CompiledGatewayRoute {
    object: ObjectRef,
    source: Source,
    creation: Option<String>,
    parents: Vec<ParentReference>,
    entries: Vec<Entry>,
}

/// Compiles every HTTPRoute and GRPCRoute that has a Service parent.
pub(super) fn compile_all(
    config: &ConfigSet,
    options: &CompileOptions,
    warnings: &mut Vec<Warning>,
) -> Vec<CompiledGatewayRoute> {
    let mut out = Vec::new();
    for route in &config.http_routes {
        if has_service_parent(&route.spec.parent_refs) {
            let mut c = RouteCompiler {
                object: route,
                options,
                warnings: &mut *warnings,
            };
            let entries = route
                .spec
                .rules
                .iter()
                .enumerate()
                .flat_map(|(i, r)| c.http_rule(i, r))
                .collect();
            out.push(compiled(route, &route.spec.parent_refs, entries));
        }
    }
    for route in &config.grpc_routes {
        if has_service_parent(&route.spec.parent_refs) {
            let mut c = RouteCompiler {
                object: route,
                options,
                warnings: &mut *warnings,
            };
            let entries = route
                .spec
                .rules
                .iter()
                .enumerate()
                .flat_map(|(i, r)| c.grpc_rule(i, r))
                .collect();
            out.push(compiled(route, &route.spec.parent_refs, entries));
        }
    }
    out.sort_by(|a, b| {
        (a.creation.as_deref(), &a.object.namespace, &a.object.name).cmp(&(
            b.creation.as_deref(),
            &b.object.namespace,
            &b.object.name,
        ))
    });
    out
}

fn has_service_parent(parents: &[ParentReference]) -> bool {
    parents.iter().any(ParentReference::is_service)
}

fn compiled<S: Spec>(
    object: &Object<S>,
    parents: &[ParentReference],
    entries: Vec<Entry>,
) -> CompiledGatewayRoute {
    CompiledGatewayRoute {
        object: object.object_ref(),
        source: object.source.clone(),
        creation: object.meta.creation_timestamp.clone(),
        parents: parents.to_vec(),
        entries,
    }
}

/// The routes attached to a service port, in precedence order, with the objects they come
/// from; `None` when no route is attached.
pub(super) fn attached(
    service: &ServiceTarget,
    port: &ServicePort,
    all: &[CompiledGatewayRoute],
    warnings: &mut Vec<Warning>,
) -> Option<(Vec<ObjectRef>, Vec<Route>)> {
    let service_name = service.name.as_deref()?;
    let mut objects = Vec::new();
    let mut entries: Vec<&Entry> = Vec::new();
    for route in all {
        let route_ns = route.object.namespace.as_str();
        let targets = route.parents.iter().any(|p| {
            p.is_service()
                && p.name == service_name
                && p.namespace.as_deref().unwrap_or(route_ns) == service.namespace
                && p.port.is_none_or(|n| n == port.port)
                && p.section_name
                    .as_ref()
                    .is_none_or(|s| port.name.as_ref() == Some(s))
        });
        if !targets {
            continue;
        }
        if route_ns != service.namespace {
            warnings.push(Warning::at(
                route.object.clone(),
                &route.source,
                "spec.parentRefs",
                format!(
                    "ignored for {}: consumer routes (from another namespace than the service's) are not applied by waypoints",
                    service.hostname
                ),
            ));
            continue;
        }
        objects.push(route.object.clone());
        entries.extend(route.entries.iter());
    }
    if objects.is_empty() {
        return None;
    }
    // Stable: ties keep route age/name order, then rule and match order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.key));
    Some((
        objects,
        entries.into_iter().map(|e| e.route.clone()).collect(),
    ))
}

struct RouteCompiler<'a, S> {
    object: &'a Object<S>,
    options: &'a CompileOptions,
    warnings: &'a mut Vec<Warning>,
}

/// What a rule's filters and backends amount to, shared by all its matches.
struct RuleParts {
    action: RouteAction,
    filters: Filters,
}

impl<S: Spec> RouteCompiler<'_, S> {
    fn warn(&mut self, field: String, message: impl Into<String>) {
        self.warnings
            .push(Warning::new(self.object, field, message));
    }

    fn http_rule(&mut self, index: usize, rule: &HttpRouteRule) -> Vec<Entry> {
        let field = format!("spec.rules[{index}]");
        let parts = self.rule_parts(&field, &rule.filters, &rule.backend_refs, false);
        let (timeout, retry) = timeouts(rule);
        rule.matches
            .iter()
            .map(|m| {
                let path = match &m.path {
                    HttpPathMatch::Exact(v) => PathMatch::Exact {
                        value: v.clone(),
                        ignore_case: false,
                    },
                    HttpPathMatch::Prefix(v) => PathMatch::SegmentPrefix(v.clone()),
                    HttpPathMatch::Regex(r) => PathMatch::Regex(r.clone()),
                };
                let (rank, length) = match &m.path {
                    HttpPathMatch::Exact(v) => (3, v.len()),
                    HttpPathMatch::Regex(r) => (2, r.as_str().len()),
                    HttpPathMatch::Prefix(v) => (1, v.trim_end_matches('/').len()),
                };
                let key = (
                    0,
                    rank,
                    length,
                    m.method.is_some(),
                    m.headers.len(),
                    m.query_params.len(),
                );
                let matcher = RequestMatch {
                    path: Some(path),
                    method: m
                        .method
                        .as_ref()
                        .map(|method| ValueMatch::Exact(method.0.clone())),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| header_match(&h.name, &h.value))
                        .collect(),
                    query_params: m
                        .query_params
                        .iter()
                        .map(|q| QueryParamMatch {
                            name: q.name.clone(),
                            value: gateway_value(&q.value),
                        })
                        .collect(),
                    ..RequestMatch::default()
                };
                Entry {
                    key,
                    route: self.route(
                        index,
                        rule.name.clone(),
                        matcher,
                        &parts,
                        timeout,
                        retry.clone(),
                    ),
                }
            })
            .collect()
    }

    fn grpc_rule(&mut self, index: usize, rule: &GrpcRouteRule) -> Vec<Entry> {
        let field = format!("spec.rules[{index}]");
        let parts = self.rule_parts(&field, &rule.filters, &rule.backend_refs, true);
        let retry = Some(RetryPolicy::istio_default());
        if rule.matches.is_empty() {
            let route = self.route(
                index,
                rule.name.clone(),
                RequestMatch::default(),
                &parts,
                None,
                retry,
            );
            return vec![Entry {
                key: (1, 0, 0, false, 0, 0),
                route,
            }];
        }
        rule.matches
            .iter()
            .map(|m| {
                let (path, service_len, method_len) = match &m.method {
                    None => (None, 0, 0),
                    Some(method) => {
                        let lengths = (
                            method.service.as_ref().map_or(0, String::len),
                            method.method.as_ref().map_or(0, String::len),
                        );
                        (
                            Some(grpc_path(
                                method.regex,
                                method.service.as_deref(),
                                method.method.as_deref(),
                            )),
                            lengths.0,
                            lengths.1,
                        )
                    }
                };
                let key = (
                    1,
                    0,
                    service_len,
                    method_len > 0,
                    method_len,
                    m.headers.len(),
                );
                let matcher = RequestMatch {
                    path,
                    headers: m
                        .headers
                        .iter()
                        .map(|h| header_match(&h.name, &h.value))
                        .collect(),
                    ..RequestMatch::default()
                };
                Entry {
                    key,
                    route: self.route(
                        index,
                        rule.name.clone(),
                        matcher,
                        &parts,
                        None,
                        retry.clone(),
                    ),
                }
            })
            .collect()
    }

    fn route(
        &self,
        index: usize,
        name: Option<String>,
        matcher: RequestMatch,
        parts: &RuleParts,
        timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
    ) -> Route {
        Route {
            name,
            origin: RouteOrigin {
                object: Some(self.object.object_ref()),
                rule: index,
            },
            matches: vec![matcher],
            action: parts.action.clone(),
            filters: parts.filters.clone(),
            timeout,
            retry,
        }
    }

    fn rule_parts(
        &mut self,
        field: &str,
        filters: &[HttpRouteFilter],
        backend_refs: &[HttpBackendRef],
        grpc: bool,
    ) -> RuleParts {
        let mut out = Filters::default();
        let mut redirect = None;
        let mut unsupported = None;
        for (i, filter) in filters.iter().enumerate() {
            let filter_field = format!("{field}.filters[{i}]");
            match filter {
                HttpRouteFilter::RequestHeaderModifier(ops) => out.request_headers.extend(ops),
                HttpRouteFilter::ResponseHeaderModifier(ops) => out.response_headers.extend(ops),
                HttpRouteFilter::RequestMirror(mirror) => {
                    let backend = self.backend(
                        &format!("{filter_field}.requestMirror.backendRef"),
                        &mirror.backend_ref.group,
                        &mirror.backend_ref.kind,
                        &mirror.backend_ref.name,
                        mirror.backend_ref.namespace.as_deref(),
                        mirror.backend_ref.port,
                    );
                    if backend.status.is_ok() {
                        out.mirrors.push(Mirror {
                            backend,
                            percent: mirror.percent,
                        });
                    }
                }
                HttpRouteFilter::RequestRedirect(r) if !grpc => {
                    redirect = Some(Redirect {
                        scheme: r.scheme.map(|s| s.as_str().to_owned()),
                        host: r.hostname.clone(),
                        port: match (r.port, r.scheme) {
                            (Some(port), _) => RedirectPort::Set(port),
                            (None, Some(_)) => RedirectPort::FromProtocolDefault,
                            (None, None) => RedirectPort::FromRequestPort,
                        },
                        path: r.path.as_ref().map(path_rewrite),
                        status: r.status_code,
                    });
                }
                HttpRouteFilter::UrlRewrite(r) if !grpc => {
                    out.rewrite = Some(Rewrite {
                        path: r.path.as_ref().map(path_rewrite),
                        authority: r.hostname.clone(),
                    });
                }
                HttpRouteFilter::Cors(cors) if !grpc => out.cors = Some(cors_policy(cors)),
                HttpRouteFilter::Unsupported(kind) => {
                    unsupported = Some((filter_field, kind.clone()))
                }
                other => unsupported = Some((filter_field, filter_type(other).to_owned())),
            }
        }
        if let Some((filter_field, kind)) = unsupported {
            self.warn(
                filter_field,
                format!("filter type {kind} is not supported: requests matching this rule get 500"),
            );
            let action = RouteAction::DirectResponse(DirectResponse {
                status: 500,
                body: None,
            });
            return RuleParts {
                action,
                filters: Filters::default(),
            };
        }
        let action = match redirect {
            Some(redirect) => RouteAction::Redirect(redirect),
            None => RouteAction::Forward(
                backend_refs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| self.weighted_backend(&format!("{field}.backendRefs[{i}]"), b))
                    .collect(),
            ),
        };
        RuleParts {
            action,
            filters: out,
        }
    }

    fn weighted_backend(&mut self, field: &str, backend_ref: &HttpBackendRef) -> WeightedBackend {
        let mut backend = self.backend(
            field,
            &backend_ref.group,
            &backend_ref.kind,
            &backend_ref.name,
            backend_ref.namespace.as_deref(),
            backend_ref.port,
        );
        let mut request_headers = HeaderOps::default();
        let mut response_headers = HeaderOps::default();
        for (i, filter) in backend_ref.filters.iter().enumerate() {
            match filter {
                HttpRouteFilter::RequestHeaderModifier(ops) => request_headers.extend(ops),
                HttpRouteFilter::ResponseHeaderModifier(ops) => response_headers.extend(ops),
                other => {
                    let kind = filter_type(other);
                    self.warn(
                        format!("{field}.filters[{i}]"),
                        format!("backend filter type {kind} is not supported: requests sent to this backend get 500"),
                    );
                    backend.status =
                        BackendStatus::Invalid(format!("unsupported backend filter {kind}"));
                }
            }
        }
        WeightedBackend {
            backend,
            weight: backend_ref.weight,
            request_headers,
            response_headers,
        }
    }

    /// Resolves a backend reference: a core `Service` (port required) or an Istio
    /// `Hostname`; anything else is invalid (500).
    fn backend(
        &mut self,
        field: &str,
        group: &str,
        kind: &str,
        name: &str,
        namespace: Option<&str>,
        port: Option<u16>,
    ) -> Backend {
        let namespace = namespace.unwrap_or(self.object.namespace());
        let (host, problem) = if kind == "Service" && is_core_group(group) {
            let host = format!("{name}.{namespace}.svc.{}", self.options.domain_suffix);
            (
                host,
                port.is_none()
                    .then_some("port is required for a Service backend"),
            )
        } else if kind == "Hostname" && group == "networking.istio.io" {
            (
                name.to_ascii_lowercase(),
                port.is_none()
                    .then_some("port is required for a Hostname backend"),
            )
        } else {
            (name.to_owned(), Some("unsupported backend kind"))
        };
        let mut backend = Backend::new(host, port, None);
        if let Some(problem) = problem {
            let display_group = if group.is_empty() { "core" } else { group };
            self.warn(
                field.to_owned(),
                format!("{problem} ({display_group}/{kind} {namespace}/{name}): requests sent there get 500"),
            );
            backend.status = BackendStatus::Invalid(problem.to_owned());
        }
        backend
    }
}

fn filter_type(filter: &HttpRouteFilter) -> &str {
    match filter {
        HttpRouteFilter::RequestHeaderModifier(_) => "RequestHeaderModifier",
        HttpRouteFilter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
        HttpRouteFilter::RequestMirror(_) => "RequestMirror",
        HttpRouteFilter::RequestRedirect(_) => "RequestRedirect",
        HttpRouteFilter::UrlRewrite(_) => "URLRewrite",
        HttpRouteFilter::Cors(_) => "CORS",
        HttpRouteFilter::Unsupported(kind) => kind,
    }
}

/// Gateway API timeouts: `request` (zero = disabled) is the route timeout; `backendRequest`
/// bounds each try, as Istio maps it to the retry policy's per-try timeout.
fn timeouts(rule: &HttpRouteRule) -> (Option<Duration>, Option<RetryPolicy>) {
    let mut retry = RetryPolicy::istio_default();
    let Some(timeouts) = &rule.timeouts else {
        return (None, Some(retry));
    };
    let timeout = timeouts.request.map(|d| d.0).filter(|d| !d.is_zero());
    retry.per_try_timeout = timeouts
        .backend_request
        .map(|d| d.0)
        .filter(|d| !d.is_zero());
    (timeout, Some(retry))
}

fn path_rewrite(modifier: &PathModifier) -> PathRewrite {
    match modifier {
        PathModifier::ReplaceFullPath(p) => PathRewrite::Full(p.clone()),
        PathModifier::ReplacePrefixMatch(p) => PathRewrite::SegmentPrefix(p.clone()),
    }
}

fn header_match(name: &http::HeaderName, value: &GatewayValueMatch) -> HeaderMatch {
    HeaderMatch {
        name: name.clone(),
        value: gateway_value(value),
        invert: false,
    }
}

fn gateway_value(value: &GatewayValueMatch) -> ValueMatch {
    match value {
        GatewayValueMatch::Exact(v) => ValueMatch::Exact(v.clone()),
        GatewayValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    }
}

/// The `:path` condition of a gRPC method match (`/<service>/<method>`).
fn grpc_path(regex: bool, service: Option<&str>, method: Option<&str>) -> PathMatch {
    const ANY: &str = "[^/]+";
    let regex_path = |service: &str, method: &str| {
        // Both parts were validated as regexes (or escaped) at load time; the combination is
        // valid too, so a failure here is a bug: fall back to a path nothing matches.
        FullRegex::new(&format!("/(?:{service})/(?:{method})")).map_or_else(
            |_| PathMatch::Exact {
                value: String::new(),
                ignore_case: false,
            },
            PathMatch::Regex,
        )
    };
    match (regex, service, method) {
        (false, Some(s), Some(m)) => PathMatch::Exact {
            value: format!("/{s}/{m}"),
            ignore_case: false,
        },
        (false, Some(s), None) => PathMatch::Prefix {
            value: format!("/{s}/"),
            ignore_case: false,
        },
        (false, None, Some(m)) => regex_path(ANY, &regex::escape(m)),
        (true, s, m) => regex_path(s.unwrap_or(ANY), m.unwrap_or(ANY)),
        (false, None, None) => PathMatch::Prefix {
            value: "/".to_owned(),
            ignore_case: false,
        },
    }
}

/// Gateway API CORS: origins are exact, or carry `*` wildcards (`https://*.example.com`, `*`).
fn cors_policy(cors: &GatewayCors) -> CorsPolicy {
    let allow_origins = cors
        .allow_origins
        .iter()
        .map(|origin| {
            if origin.contains('*') {
                let pattern = origin
                    .split('*')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join(".*");
                FullRegex::new(&pattern)
                    .map_or_else(|_| ValueMatch::Exact(origin.clone()), ValueMatch::Regex)
            } else {
                ValueMatch::Exact(origin.clone())
            }
        })
        .collect();
    CorsPolicy {
        allow_origins,
        allow_methods: cors.allow_methods.clone(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        max_age: Some(Duration::from_secs(u64::from(cors.max_age))),
        allow_credentials: cors.allow_credentials,
        unmatched_preflights: None,
    }
}
