//! VirtualService → routes.

use super::{CompileOptions, ServiceTarget, Warning, default_http_route, default_tcp_route};
use crate::config::common::{HeaderOps, StringMatch};
use crate::config::istio::{
    self, CorsPolicy as IstioCors, Destination, HttpMatchRequest, HttpRule, VirtualServiceSpec,
};
use crate::config::{ConfigSet, Object, ObjectRef, Source};
use crate::route::concrete::DestinationPolicies;
use crate::route::hostname::{resolve_host, specificity};
use crate::route::model::{
    Backend, BackendStatus, CompiledRoutes, CorsPolicy, DirectResponse, Fault, FaultAbort,
    FaultDelay, Filters, HeaderMatch, Mirror, PathMatch, PathRewrite, QueryParamMatch, Redirect,
    RedirectPort, RequestMatch, RetryPolicy, Rewrite, Route, RouteAction, RouteOrigin, RouteSource,
    TcpMatch, TcpRoute, ValueMatch, WeightedBackend,
};

/// Header keys Istio ignores in `headers` matches: they have fields of their own.
const RESERVED_HEADER_KEYS: [&str; 4] = ["uri", "scheme", "method", "authority"];

/// A VirtualService compiled once, independently of the services it may apply to.
pub(super) struct CompiledVs {
    pub(super) object: ObjectRef,
    pub(super) source: Source,
    /// Hosts, resolved.
    hosts: Vec<String>,
    http: Vec<Route>,
    tcp: Vec<TcpRoute>,
    /// Whether the object has HTTP rules, even if none survived compilation.
    http_rules_declared: bool,
}

/// Compiles every VirtualService, oldest first (the order merged routes keep).
pub(super) fn compile_all(
    config: &ConfigSet,
    options: &CompileOptions,
    destinations: &DestinationPolicies,
    warnings: &mut Vec<Warning>,
) -> Vec<CompiledVs> {
    let mut objects: Vec<&Object<VirtualServiceSpec>> = config.virtual_services.iter().collect();
    objects.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
    objects
        .into_iter()
        .map(|vs| {
            let mut compiler = VsCompiler {
                vs,
                options,
                destinations,
                warnings: &mut *warnings,
            };
            compiler.compile()
        })
        .collect()
}

/// The VirtualServices that apply to `service`: in scope (the service's or the waypoint's
/// namespace), with the most specific matching host, oldest first.
pub(super) fn select<'a>(
    service: &ServiceTarget,
    all: &'a [CompiledVs],
    options: &CompileOptions,
    warnings: &mut Vec<Warning>,
) -> Vec<&'a CompiledVs> {
    let mut candidates: Vec<(usize, &CompiledVs)> = Vec::new();
    for vs in all {
        let Some(best) = vs
            .hosts
            .iter()
            .filter_map(|h| specificity(h, &service.hostname))
            .max()
        else {
            continue;
        };
        let namespace = vs.object.namespace.as_str();
        let in_scope = namespace == service.namespace
            || options.waypoint_namespace.as_deref() == Some(namespace);
        if in_scope {
            candidates.push((best, vs));
        } else {
            warnings.push(Warning::at(
                vs.object.clone(),
                &vs.source,
                "spec.hosts",
                format!(
                    "ignored for {}: a waypoint applies VirtualServices from the service's namespace ({}) or its own",
                    service.hostname, service.namespace
                ),
            ));
        }
    }
    let Some(top) = candidates.iter().map(|(s, _)| *s).max() else {
        return Vec::new();
    };
    candidates
        .into_iter()
        .filter(|(s, _)| *s == top)
        .map(|(_, vs)| vs)
        .collect()
}

/// The routes of a service port from the selected VirtualServices.
pub(super) fn routes(hostname: &str, port: u16, selected: &[&CompiledVs]) -> CompiledRoutes {
    let mut http: Vec<Route> = selected
        .iter()
        .flat_map(|vs| vs.http.iter().cloned())
        .collect();
    let mut tcp: Vec<TcpRoute> = selected
        .iter()
        .flat_map(|vs| vs.tcp.iter().cloned())
        .collect();
    // A VirtualService whose HTTP rules all dropped out still restricts: requests get 404.
    if !selected.iter().any(|vs| vs.http_rules_declared) {
        http.push(default_http_route(hostname, port));
    }
    if tcp.is_empty() {
        tcp.push(default_tcp_route(hostname, port));
    }
    CompiledRoutes {
        hostname: hostname.to_owned(),
        port,
        source: RouteSource::VirtualServices(selected.iter().map(|vs| vs.object.clone()).collect()),
        http,
        tcp,
    }
}

struct VsCompiler<'a> {
    vs: &'a Object<VirtualServiceSpec>,
    options: &'a CompileOptions,
    destinations: &'a DestinationPolicies,
    warnings: &'a mut Vec<Warning>,
}

impl VsCompiler<'_> {
    fn warn(&mut self, field: String, message: impl Into<String>) {
        self.warnings.push(Warning::new(self.vs, field, message));
    }

    fn compile(&mut self) -> CompiledVs {
        let spec = &self.vs.spec;
        let namespace = self.vs.namespace();
        let hosts = spec
            .hosts
            .iter()
            .map(|h| resolve_host(h, namespace, &self.options.domain_suffix))
            .collect();
        let http = spec
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| self.http_route(i, rule))
            .collect();
        let tcp = spec
            .tcp
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| self.tcp_route(i, rule))
            .collect();
        CompiledVs {
            object: self.vs.object_ref(),
            source: self.vs.source.clone(),
            hosts,
            http,
            tcp,
            http_rules_declared: !spec.http.is_empty(),
        }
    }

    fn http_route(&mut self, index: usize, rule: &HttpRule) -> Option<Route> {
        let field = format!("spec.http[{index}]");
        if rule.delegate.is_some() {
            self.warn(
                format!("{field}.delegate"),
                "rule ignored: delegation is only supported by ingress gateways, not waypoints",
            );
            return None;
        }
        let matches = self.http_matches(&field, &rule.matches)?;
        let action = if let Some(redirect) = &rule.redirect {
            RouteAction::Redirect(Redirect {
                scheme: redirect.scheme.clone(),
                host: redirect.authority.clone(),
                port: match (redirect.port, redirect.derive_port) {
                    (Some(port), _) => RedirectPort::Set(port),
                    (None, Some(istio::DerivePort::FromProtocolDefault)) => {
                        RedirectPort::FromProtocolDefault
                    }
                    (None, Some(istio::DerivePort::FromRequestPort)) => {
                        RedirectPort::FromRequestPort
                    }
                    (None, None) => RedirectPort::Unchanged,
                },
                path: redirect.uri.clone().map(PathRewrite::Full),
                status: redirect.redirect_code,
            })
        } else if let Some(response) = &rule.direct_response {
            RouteAction::DirectResponse(DirectResponse {
                status: response.status,
                body: response.body.clone(),
            })
        } else {
            let single = rule.route.len() == 1;
            let backends = rule
                .route
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    let headers = d.headers.clone().unwrap_or_default();
                    WeightedBackend {
                        backend: self
                            .backend(&format!("{field}.route[{j}].destination"), &d.destination),
                        // A single destination takes all traffic whatever its weight.
                        weight: if single { d.weight.max(1) } else { d.weight },
                        request_headers: headers.request.0,
                        response_headers: headers.response.0,
                    }
                })
                .collect();
            RouteAction::Forward(backends)
        };
        Some(Route {
            name: rule.name.clone(),
            origin: RouteOrigin {
                object: Some(self.vs.object_ref()),
                rule: index,
            },
            matches,
            action,
            filters: self.filters(&field, rule),
            timeout: rule.timeout.map(|t| t.0),
            retry: retry_policy(rule.retries.as_ref()),
        })
    }

    /// Converts the match blocks; `None` when blocks were given but none can ever match.
    fn http_matches(
        &mut self,
        field: &str,
        blocks: &[HttpMatchRequest],
    ) -> Option<Vec<RequestMatch>> {
        let mut out = Vec::with_capacity(blocks.len());
        for (j, block) in blocks.iter().enumerate() {
            let block_field = format!("{field}.match[{j}]");
            if !block.source_labels.is_empty() || block.source_namespace.is_some() {
                let which = if block.source_labels.is_empty() {
                    "sourceNamespace"
                } else {
                    "sourceLabels"
                };
                self.warn(
                    format!("{block_field}.{which}"),
                    "match block never matches: a waypoint cannot evaluate the client's labels or namespace",
                );
                continue;
            }
            out.push(self.request_match(&block_field, block));
        }
        if !blocks.is_empty() && out.is_empty() {
            self.warn(
                field.to_owned(),
                "rule ignored: none of its match blocks can match",
            );
            return None;
        }
        Some(out)
    }

    fn request_match(&mut self, field: &str, block: &HttpMatchRequest) -> RequestMatch {
        let mut headers = Vec::new();
        for (invert, map, key) in [
            (false, &block.headers, "headers"),
            (true, &block.without_headers, "withoutHeaders"),
        ] {
            for (name, value) in &map.0 {
                if RESERVED_HEADER_KEYS.contains(&name.as_str()) {
                    self.warn(
                        format!("{field}.{key}.{name}"),
                        format!("ignored: use the {name} field to match on {name}"),
                    );
                    continue;
                }
                headers.push(HeaderMatch {
                    name: name.clone(),
                    value: presence_match(value),
                    invert,
                });
            }
        }
        RequestMatch {
            name: block.name.clone(),
            path: block
                .uri
                .as_ref()
                .map(|uri| path_match(uri, block.ignore_uri_case)),
            method: block.method.as_ref().map(value_match),
            authority: block.authority.as_ref().map(value_match),
            scheme: block.scheme.as_ref().map(value_match),
            headers,
            query_params: block
                .query_params
                .iter()
                .map(|(name, value)| QueryParamMatch {
                    name: name.clone(),
                    value: presence_match(value),
                })
                .collect(),
            port: block.port,
        }
    }

    fn backend(&mut self, field: &str, destination: &Destination) -> Backend {
        let host = resolve_host(
            &destination.host,
            self.vs.namespace(),
            &self.options.domain_suffix,
        );
        let mut backend = Backend::new(
            host,
            destination.port.map(|p| p.number),
            destination.subset.clone(),
        );
        if let Some(subset) = &destination.subset
            && !self.destinations.has_subset(&backend.host, subset)
        {
            self.warn(
                format!("{field}.subset"),
                format!(
                    "no DestinationRule defines subset {subset:?} of {}: requests sent there get 503",
                    backend.host
                ),
            );
            backend.status = BackendStatus::UnknownSubset;
        }
        backend
    }

    fn filters(&mut self, field: &str, rule: &HttpRule) -> Filters {
        let headers = rule.headers.clone().unwrap_or_default();
        let rewrite = rule.rewrite.as_ref().map(|r| Rewrite {
            path: match (&r.uri, &r.uri_regex_rewrite) {
                (Some(uri), _) => Some(PathRewrite::Prefix(uri.clone())),
                (None, Some(regex)) => Some(PathRewrite::Regex {
                    pattern: regex.pattern.clone(),
                    substitution: regex.substitution.clone(),
                }),
                (None, None) => None,
            },
            authority: r.authority.clone(),
        });
        let fault = rule.fault.as_ref().map(|f| Fault {
            delay: f.delay.as_ref().map(|d| FaultDelay {
                delay: d.fixed_delay.0,
                percent: d.percentage.0,
            }),
            abort: f.abort.as_ref().map(|a| FaultAbort {
                status: a.status.clone(),
                percent: a.percentage.0,
            }),
        });
        let mirrors = rule
            .mirrors
            .iter()
            .enumerate()
            .map(|(j, m)| Mirror {
                backend: self.backend(&format!("{field}.mirrors[{j}].destination"), &m.destination),
                percent: m.percentage.map_or(100.0, |p| p.0),
            })
            .collect();
        Filters {
            request_headers: headers.request.0,
            response_headers: headers.response.0,
            rewrite,
            fault,
            mirrors,
            cors: rule.cors_policy.as_ref().map(cors_policy),
        }
    }

    fn tcp_route(&mut self, index: usize, rule: &istio::TcpRule) -> Option<TcpRoute> {
        let field = format!("spec.tcp[{index}]");
        let mut matches = Vec::new();
        for (j, block) in rule.matches.iter().enumerate() {
            if !block.source_labels.is_empty() || block.source_namespace.is_some() {
                self.warn(
                    format!("{field}.match[{j}]"),
                    "match block never matches: a waypoint cannot evaluate the client's labels or namespace",
                );
                continue;
            }
            matches.push(TcpMatch {
                port: block.port,
                destination_subnets: block.destination_subnets.iter().map(|n| n.0).collect(),
            });
        }
        if !rule.matches.is_empty() && matches.is_empty() {
            self.warn(field, "rule ignored: none of its match blocks can match");
            return None;
        }
        let single = rule.route.len() == 1;
        let backends = rule
            .route
            .iter()
            .enumerate()
            .map(|(j, d)| WeightedBackend {
                backend: self.backend(&format!("{field}.route[{j}].destination"), &d.destination),
                weight: if single { d.weight.max(1) } else { d.weight },
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            })
            .collect();
        Some(TcpRoute {
            origin: RouteOrigin {
                object: Some(self.vs.object_ref()),
                rule: index,
            },
            matches,
            backends,
        })
    }
}

/// Istio's `uri` match; `ignoreUriCase` applies to exact and prefix (Envoy ignores it for
/// regexes).
fn path_match(uri: &StringMatch, ignore_case: bool) -> PathMatch {
    match uri {
        StringMatch::Exact(v) => PathMatch::Exact {
            value: v.clone(),
            ignore_case,
        },
        StringMatch::Prefix(v) => PathMatch::Prefix {
            value: v.clone(),
            ignore_case,
        },
        StringMatch::Regex(r) => PathMatch::Regex(r.clone()),
        // `uri: {}` constrains nothing: the default prefix `/`.
        StringMatch::Any => PathMatch::Prefix {
            value: "/".to_owned(),
            ignore_case: false,
        },
    }
}

/// A method/authority/scheme match (`{}` constrains nothing).
fn value_match(m: &StringMatch) -> ValueMatch {
    match m {
        StringMatch::Any => ValueMatch::Present,
        StringMatch::Exact(v) => ValueMatch::Exact(v.clone()),
        StringMatch::Prefix(v) => ValueMatch::Prefix(v.clone()),
        StringMatch::Regex(r) => ValueMatch::Regex(r.clone()),
    }
}

/// A header/query parameter match: `{}` and an empty prefix mean "present" (Istio turns both
/// into a presence check).
fn presence_match(m: &StringMatch) -> ValueMatch {
    match m {
        StringMatch::Prefix(p) if p.is_empty() => ValueMatch::Present,
        other => value_match(other),
    }
}

fn cors_policy(cors: &IstioCors) -> CorsPolicy {
    let mut allow_origins: Vec<ValueMatch> = cors
        .allow_origin
        .iter()
        .map(|o| ValueMatch::Exact(o.clone()))
        .collect();
    allow_origins.extend(cors.allow_origins.iter().map(value_match));
    CorsPolicy {
        allow_origins,
        allow_methods: cors.allow_methods.clone(),
        allow_headers: cors.allow_headers.clone(),
        expose_headers: cors.expose_headers.clone(),
        max_age: cors.max_age.map(|d| d.0),
        allow_credentials: cors.allow_credentials,
        unmatched_preflights: cors.unmatched_preflights,
    }
}

/// Istio's retry semantics: no `retries` = the default policy; `attempts: 0` = none; no
/// `retryOn` = the default conditions; status codes in `retryOn` imply
/// `retriable-status-codes`.
fn retry_policy(retries: Option<&istio::HttpRetry>) -> Option<RetryPolicy> {
    let Some(retries) = retries else {
        return Some(RetryPolicy::istio_default());
    };
    if retries.attempts == 0 {
        return None;
    }
    let (mut retry_on, codes) =
        if retries.retry_on.is_empty() && retries.retriable_status_codes.is_empty() {
            (RetryPolicy::default_conditions(), vec![503])
        } else {
            (
                retries.retry_on.clone(),
                retries.retriable_status_codes.clone(),
            )
        };
    if !codes.is_empty() && !retry_on.contains(&istio::RetryOn::RetriableStatusCodes) {
        retry_on.push(istio::RetryOn::RetriableStatusCodes);
    }
    Some(RetryPolicy {
        attempts: retries.attempts,
        per_try_timeout: retries.per_try_timeout.map(|d| d.0),
        retry_on,
        retriable_status_codes: codes,
        backoff: retries.backoff.map(|d| d.0),
        ignore_previous_hosts: retries.retry_ignore_previous_hosts.unwrap_or(true),
    })
}
