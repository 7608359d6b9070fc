//! Compilation from inline YAML: sources and their precedence, host matching, VirtualService
//! and Gateway API semantics, DestinationRule policies.

use std::time::Duration;

use super::*;
use crate::config::istio::{ConsistentHash, RetryOn};

fn options() -> CompileOptions {
    CompileOptions::default()
}

fn vs(name: &str, namespace: &str, hosts: &str, http: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: {hosts}\n  http:\n{http}"
    )
}

fn direct(name: &str) -> String {
    format!("  - name: {name}\n    directResponse: {{status: 200}}\n")
}

fn routes<'a>(compiled: &'a Compiled, host: &str, port: u16) -> &'a CompiledRoutes {
    compiled
        .routes
        .get(host, port)
        .expect("service port compiled")
}

fn warnings(compiled: &Compiled) -> Vec<String> {
    compiled.warnings.iter().map(ToString::to_string).collect()
}

#[test]
fn no_configuration_means_the_default_route() {
    let compiled = compile_yaml("", &[reviews()], &options());
    let r = routes(&compiled, REVIEWS, 9080);
    assert_eq!(r.source, RouteSource::Default);
    assert_eq!(
        r.listener_name(),
        "inbound-vip|9080|http|reviews.default.svc.cluster.local"
    );
    assert_eq!(route_name(r, &req("/anything")), "default");
    let request = req("/");
    let RouteDecision::Route(m) = select_route(r, &request.view()) else {
        panic!("default route")
    };
    let Resolution::Forward(b) = m.resolve(0) else {
        panic!("forward")
    };
    assert_eq!(b.backend, Backend::new(REVIEWS, Some(9080), None));
    assert_eq!(m.route.retry, Some(RetryPolicy::istio_default()));
    assert_eq!(r.tcp.len(), 1);
}

#[test]
fn virtual_service_hosts_and_scope() {
    let services = [
        reviews(),
        ServiceTarget::kubernetes("reviews", "prod", "cluster.local", [9080]),
    ];
    let yaml = [
        vs("short", "default", "[reviews]", &direct("short")),
        vs(
            "other-ns",
            "prod",
            "[reviews.default.svc.cluster.local]",
            &direct("other-ns"),
        ),
        vs(
            "from-waypoint-ns",
            "mesh",
            "[reviews.prod.svc.cluster.local]",
            &direct("waypoint-ns"),
        ),
    ]
    .concat();
    let options = CompileOptions {
        waypoint_namespace: Some("mesh".into()),
        ..options()
    };
    let compiled = compile_yaml(&yaml, &services, &options);
    // `reviews` in namespace default is reviews.default.svc.cluster.local.
    assert_eq!(
        route_name(routes(&compiled, REVIEWS, 9080), &req("/")),
        "short"
    );
    // The VirtualService of namespace prod names the default service: out of its scope.
    assert!(
        warnings(&compiled)
            .iter()
            .any(|w| w.contains("VirtualService prod/other-ns")
                && w.contains("ignored for reviews.default.svc.cluster.local"))
    );
    // A VirtualService in the waypoint's namespace applies to any service.
    assert_eq!(
        route_name(
            routes(&compiled, "reviews.prod.svc.cluster.local", 9080),
            &req("/")
        ),
        "waypoint-ns"
    );
}

#[test]
fn the_most_specific_host_wins_and_equal_hosts_merge_oldest_first() {
    let with_time = |yaml: String, time: &str| {
        yaml.replacen(
            "namespace: default}",
            &format!("namespace: default, creationTimestamp: \"{time}\"}}"),
            1,
        )
    };
    let yaml = [
        vs("wildcard", "default", "['*.default.svc.cluster.local']", &direct("wildcard")),
        with_time(
            vs("newer", "default", "[reviews]", "  - name: newer\n    match: [{uri: {prefix: /}}]\n    directResponse: {status: 200}\n"),
            "2024-02-01T00:00:00Z",
        ),
        with_time(
            vs("older", "default", "[reviews.default.svc.cluster.local]", "  - name: older\n    match: [{uri: {prefix: /api}}]\n    directResponse: {status: 200}\n"),
            "2024-01-01T00:00:00Z",
        ),
    ]
    .concat();
    let services = [
        reviews(),
        ServiceTarget::kubernetes("ratings", "default", "cluster.local", [9080]),
    ];
    let compiled = compile_yaml(&yaml, &services, &options());
    let r = routes(&compiled, REVIEWS, 9080);
    let sources: Vec<String> = match &r.source {
        RouteSource::VirtualServices(objects) => objects.iter().map(|o| o.name.clone()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(sources, ["older", "newer"]);
    assert_eq!(route_name(r, &req("/api/x")), "older");
    assert_eq!(route_name(r, &req("/web")), "newer");
    // The wildcard still serves the other service.
    assert_eq!(
        route_name(
            routes(&compiled, "ratings.default.svc.cluster.local", 9080),
            &req("/")
        ),
        "wildcard"
    );
}

#[test]
fn gateway_api_routes_take_precedence_over_virtual_services() {
    let yaml = vs("legacy", "default", "[reviews]", &direct("legacy"))
        + r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews, port: 9080}]
  rules:
  - name: gamma
    backendRefs: [{name: reviews-v2, port: 9080}]
"#;
    let services = [ServiceTarget::kubernetes(
        "reviews",
        "default",
        "cluster.local",
        [9080, 9090],
    )];
    let compiled = compile_yaml(&yaml, &services, &options());
    let on_9080 = routes(&compiled, REVIEWS, 9080);
    assert!(matches!(&on_9080.source, RouteSource::GatewayApi(o) if o[0].name == "reviews"));
    assert_eq!(route_name(on_9080, &req("/")), "gamma");
    assert!(
        warnings(&compiled)
            .iter()
            .any(|w| w.contains("VirtualService default/legacy")
                && w.contains("Gateway API routes attached to the service take precedence"))
    );
    // The parentRef names port 9080 only: the VirtualService still serves 9090.
    assert_eq!(
        route_name(routes(&compiled, REVIEWS, 9090), &req("/").port(9090)),
        "legacy"
    );
}

#[test]
fn virtual_service_match_semantics() {
    let http = r#"  - name: source-only
    match: [{sourceLabels: {app: productpage}}]
    directResponse: {status: 200}
  - name: mixed
    match:
    - {uri: {prefix: /a}, sourceLabels: {app: x}}
    - {uri: {prefix: /b}}
    directResponse: {status: 200}
  - name: headers
    match:
    - headers: {end-user: {exact: jason}, x-present: {}, x-empty-prefix: {prefix: ""}, authority: {exact: ignored}}
      withoutHeaders: {x-debug: {}}
    directResponse: {status: 200}
  - name: query
    match: [{queryParams: {v: {}}, ignoreUriCase: true, uri: {exact: /Q}}]
    directResponse: {status: 200}
  - name: port
    match: [{port: 9090}]
    directResponse: {status: 200}
"#;
    let services = [ServiceTarget::kubernetes(
        "reviews",
        "default",
        "cluster.local",
        [9080, 9090],
    )];
    let compiled = compile_yaml(
        &vs("rules", "default", "[reviews]", http),
        &services,
        &options(),
    );
    let r = routes(&compiled, REVIEWS, 9080);
    let names: Vec<_> = r
        .http
        .iter()
        .map(|route| route.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["mixed", "headers", "query", "port"],
        "source-only can never match"
    );
    let cases = [
        (req("/a"), "NR"),
        (req("/b"), "mixed"),
        (
            req("/")
                .header("end-user", "jason")
                .header("x-present", "")
                .header("x-empty-prefix", "1"),
            "headers",
        ),
        (
            req("/")
                .header("end-user", "jason")
                .header("x-present", "")
                .header("x-empty-prefix", "1")
                .header("x-debug", "1"),
            "NR",
        ),
        (
            req("/")
                .header("end-user", "jason")
                .header("x-empty-prefix", "1"),
            "NR",
        ),
        (req("/q?v"), "query"),
        (req("/").port(9090), "port"),
        (req("/"), "NR"),
    ];
    for (request, want) in cases {
        assert_eq!(route_name(r, &request), want, "{}", request.path);
    }
    let w = warnings(&compiled);
    assert!(
        w.iter()
            .any(|w| w.contains("spec.http[0].match[0].sourceLabels: match block never matches"))
    );
    assert!(
        w.iter()
            .any(|w| w.contains("spec.http[0]: rule ignored: none of its match blocks can match"))
    );
    assert!(
        w.iter()
            .any(|w| w.contains("spec.http[2].match[0].headers.authority: ignored"))
    );
}

#[test]
fn virtual_service_actions_and_filters() {
    let http = r#"  - name: split
    match: [{uri: {prefix: /split}}]
    route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v3, port: {number: 9080}}
      weight: 10
      headers: {response: {set: {x-canary: "true"}}}
    timeout: 2s
    retries: {attempts: 0}
  - name: single
    match: [{uri: {prefix: /single}}]
    route: [{destination: {host: ratings.prod.svc.cluster.local}, weight: 0}]
    retries: {attempts: 4, retryOn: "503,reset"}
    rewrite: {uri: /v2, authority: ratings}
    fault: {abort: {httpStatus: 503}}
    mirror: {host: shadow}
  - name: redirect
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: example.com, port: 8443, scheme: https, redirectCode: 308}
  - name: retries-default-conditions
    route: [{destination: {host: reviews}}]
    retries: {attempts: 1, perTryTimeout: 250ms}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"#;
    let compiled = compile_yaml(
        &vs("actions", "default", "[reviews]", http),
        &[reviews()],
        &options(),
    );
    let r = routes(&compiled, REVIEWS, 9080);
    let route = |name: &str| {
        r.http
            .iter()
            .find(|h| h.name.as_deref() == Some(name))
            .expect("route")
    };

    let split = route("split");
    let RouteAction::Forward(backends) = &split.action else {
        panic!("forward")
    };
    assert_eq!(backends[0].backend.status, BackendStatus::Ok);
    assert_eq!(backends[1].backend.status, BackendStatus::UnknownSubset);
    assert_eq!((backends[0].weight, backends[1].weight), (90, 10));
    assert_eq!(split.timeout, Some(Duration::from_secs(2)));
    assert_eq!(split.retry, None, "attempts: 0 disables retries");
    assert!(
        warnings(&compiled)
            .iter()
            .any(|w| w.contains("spec.http[0].route[1].destination.subset")
                && w.contains("no DestinationRule defines subset \"v3\""))
    );
    let request = req("/split");
    let RouteDecision::Route(m) = select_route(r, &request.view()) else {
        panic!("split matches")
    };
    assert!(matches!(m.resolve(0), Resolution::Forward(_)));
    assert_eq!(m.resolve(u32::MAX).error_status(), Some(503));

    let single = route("single");
    let RouteAction::Forward(backends) = &single.action else {
        panic!("forward")
    };
    assert_eq!(
        backends[0].weight, 1,
        "a single destination takes all traffic"
    );
    assert_eq!(backends[0].backend.host, "ratings.prod.svc.cluster.local");
    let retry = single.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, 4);
    assert_eq!(
        retry.retry_on,
        [RetryOn::Reset, RetryOn::RetriableStatusCodes]
    );
    assert_eq!(retry.retriable_status_codes, [503]);
    let rewrite = single.filters.rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.path, Some(PathRewrite::Prefix("/v2".into())));
    assert_eq!(rewrite.authority.as_deref(), Some("ratings"));
    assert_eq!(
        single.filters.mirrors[0].backend.host,
        "shadow.default.svc.cluster.local"
    );
    assert_eq!(single.filters.mirrors[0].percent, 100.0);
    assert_eq!(
        single
            .filters
            .fault
            .as_ref()
            .and_then(|f| f.abort.as_ref())
            .map(|a| a.percent),
        Some(100.0)
    );

    let RouteAction::Redirect(redirect) = &route("redirect").action else {
        panic!("redirect")
    };
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.port, RedirectPort::Set(8443));
    assert_eq!(redirect.path, Some(PathRewrite::Full("/new".into())));

    let defaults = route("retries-default-conditions")
        .retry
        .as_ref()
        .expect("retry");
    assert_eq!(defaults.retry_on, RetryPolicy::default_conditions());
    assert_eq!(defaults.per_try_timeout, Some(Duration::from_millis(250)));
}

const GAMMA: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-route, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - name: prefix-short
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: prefix-long
    matches: [{path: {type: PathPrefix, value: /api/v1}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: headers-2
    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: method
    matches: [{path: {type: PathPrefix, value: /api}, method: POST, headers: [{name: a, value: "1"}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: query
    matches: [{path: {type: PathPrefix, value: /api}, queryParams: [{name: q, value: "1"}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: exact
    matches: [{path: {type: Exact, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: regex
    matches: [{path: {type: RegularExpression, value: "/api/v[0-9]+/items"}}]
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-route, creationTimestamp: "2024-06-01T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews}]
  rules:
  - name: newer-same-prefix
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: catch-all
    backendRefs: [{name: reviews, port: 9080}]
"#;

#[test]
fn gateway_api_precedence() {
    let compiled = compile_yaml(GAMMA, &[reviews()], &options());
    let r = routes(&compiled, REVIEWS, 9080);
    let names: Vec<&str> = r
        .http
        .iter()
        .map(|h| h.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "exact",
            "regex",
            "prefix-long",
            "method",
            "headers-2",
            "query",
            "prefix-short",
            "newer-same-prefix",
            "catch-all",
        ]
    );
    let cases = [
        (req("/api"), "exact"),
        (req("/api/v2/items"), "regex"),
        (req("/api/v1/x"), "prefix-long"),
        (req("/api/x").method("POST").header("a", "1"), "method"),
        (req("/api/x").header("a", "1").header("b", "2"), "headers-2"),
        (req("/api/x?q=1"), "query"),
        (req("/api/x"), "prefix-short"),
        (req("/apix"), "catch-all"),
    ];
    for (request, want) in cases {
        assert_eq!(route_name(r, &request), want, "{}", request.path);
    }
}

#[test]
fn gateway_api_attachment_and_backends() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-section, namespace: default}
spec:
  parentRefs: [{kind: Service, group: core, name: reviews, sectionName: grpc}]
  rules:
  - name: section
    backendRefs:
    - {name: reviews, port: 9090, weight: 3}
    - {name: missing-port}
    - {kind: Hostname, group: networking.istio.io, name: api.example.com, port: 443}
    - {kind: ServiceImport, group: multicluster.x-k8s.io, name: x, port: 1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{kind: Service, group: "", name: reviews, namespace: default}]
  rules: [{name: consumer}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ingress, namespace: default}
spec:
  parentRefs: [{name: my-gateway}]
  rules: [{name: ingress}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: default}
spec:
  parentRefs: [{kind: Service, group: "", name: ratings}]
  rules:
  - name: extension
    matches: [{path: {type: PathPrefix, value: /ext}}]
    filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]
    backendRefs: [{name: ratings, port: 9080}]
  - name: rewrite
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: new.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: "1"}], remove: [x-b]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 4}}}
    backendRefs: [{name: ratings, port: 9080}]
    timeouts: {request: 5s, backendRequest: 1s}
  - name: redirect
    matches: [{path: {type: PathPrefix, value: /moved}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - name: no-backends
"#;
    let services = [
        ServiceTarget {
            hostname: REVIEWS.into(),
            namespace: "default".into(),
            name: Some("reviews".into()),
            ports: vec![
                ServicePort {
                    port: 9080,
                    name: Some("http".into()),
                },
                ServicePort {
                    port: 9090,
                    name: Some("grpc".into()),
                },
            ],
        },
        ServiceTarget::kubernetes("ratings", "default", "cluster.local", [9080]),
    ];
    let compiled = compile_yaml(yaml, &services, &options());
    // sectionName `grpc` attaches to port 9090 only; the consumer route is not applied.
    assert_eq!(
        routes(&compiled, REVIEWS, 9080).source,
        RouteSource::Default
    );
    let on_9090 = routes(&compiled, REVIEWS, 9090);
    assert!(matches!(&on_9090.source, RouteSource::GatewayApi(o) if o.len() == 1));
    let RouteAction::Forward(backends) = &on_9090.http[0].action else {
        panic!("forward")
    };
    let summary: Vec<(String, Option<u16>, u32, bool)> = backends
        .iter()
        .map(|b| {
            (
                b.backend.host.clone(),
                b.backend.port,
                b.weight,
                b.backend.status.is_ok(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "reviews.default.svc.cluster.local".into(),
                Some(9090),
                3,
                true
            ),
            (
                "missing-port.default.svc.cluster.local".into(),
                None,
                1,
                false
            ),
            ("api.example.com".into(), Some(443), 1, true),
            ("x".into(), Some(1), 1, false),
        ]
    );
    let w = warnings(&compiled);
    assert!(
        w.iter()
            .any(|w| w.contains("HTTPRoute other/consumer") && w.contains("consumer routes"))
    );
    assert!(
        w.iter()
            .any(|w| w.contains("spec.rules[0].backendRefs[1]: port is required"))
    );

    let ratings = routes(&compiled, "ratings.default.svc.cluster.local", 9080);
    let route = |name: &str| {
        ratings
            .http
            .iter()
            .find(|h| h.name.as_deref() == Some(name))
            .expect("route")
    };
    assert!(matches!(
        route("extension").action,
        RouteAction::DirectResponse(DirectResponse { status: 500, .. })
    ));
    assert!(
        w.iter()
            .any(|w| w.contains("filter type ExtensionRef is not supported"))
    );
    let rewrite = route("rewrite");
    let filters = &rewrite.filters;
    assert_eq!(
        filters.rewrite,
        Some(Rewrite {
            path: Some(PathRewrite::SegmentPrefix("/new".into())),
            authority: Some("new.example".into())
        })
    );
    assert_eq!(filters.request_headers.set[0].name, "x-a");
    assert_eq!(filters.mirrors[0].percent, 25.0);
    assert_eq!(rewrite.timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        rewrite.retry.as_ref().and_then(|r| r.per_try_timeout),
        Some(Duration::from_secs(1))
    );
    let RouteAction::Redirect(redirect) = &route("redirect").action else {
        panic!("redirect")
    };
    assert_eq!(
        (redirect.status, redirect.port),
        (302, RedirectPort::FromProtocolDefault)
    );
    let request = req("/anything");
    let RouteDecision::Route(m) = select_route(ratings, &request.view()) else {
        panic!("no-backends matches")
    };
    assert_eq!(m.route.name.as_deref(), Some("no-backends"));
    assert_eq!(m.resolve(0).error_status(), Some(500));
}

#[test]
fn grpc_route_methods() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo}
spec:
  parentRefs: [{kind: Service, group: "", name: echo}]
  rules:
  - name: exact
    matches: [{method: {service: pkg.Echo, method: Say}}]
    backendRefs: [{name: echo-v2, port: 9000}]
  - name: service
    matches: [{method: {service: pkg.Echo}}]
    backendRefs: [{name: echo, port: 9000}]
  - name: method-regex
    matches: [{method: {type: RegularExpression, method: "Get.*"}, headers: [{name: x-tenant, value: a}]}]
    backendRefs: [{name: echo, port: 9000}]
"#;
    let services = [ServiceTarget::kubernetes(
        "echo",
        "default",
        "cluster.local",
        [9000],
    )];
    let compiled = compile_yaml(yaml, &services, &options());
    let r = routes(&compiled, "echo.default.svc.cluster.local", 9000);
    let cases = [
        (req("/pkg.Echo/Say"), "exact"),
        (req("/pkg.Echo/Other"), "service"),
        (
            req("/pkg.Other/GetThing").header("x-tenant", "a"),
            "method-regex",
        ),
        (req("/pkg.Other/GetThing"), "NR"),
        (req("/pkg.Other/Say"), "NR"),
    ];
    for (request, want) in cases {
        assert_eq!(route_name(r, &request), want, "{}", request.path);
    }
}

#[test]
fn destination_rule_policies_merge_per_cluster() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}}
    portLevelSettings:
    - port: {number: 9443}
      tls: {mode: SIMPLE, sni: reviews.example}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: sticky
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 60s}}}
      outlierDetection: {consecutive5xxErrors: 3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-more, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets: [{name: v1, labels: {version: other}}, {name: v3, labels: {version: v3}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wildcard}
spec:
  host: "*.example.com"
  trafficPolicy: {tls: {mode: SIMPLE}}
"#;
    let compiled = compile_yaml(yaml, &[], &options());
    let d = &compiled.destinations;
    assert!(d.has_subset(REVIEWS, "v1") && d.has_subset(REVIEWS, "v3"));
    assert!(!d.has_subset(REVIEWS, "v2"));
    let plain = d.cluster_policy(REVIEWS, None, 9080);
    assert_eq!(
        plain.load_balancer,
        LoadBalancer::RoundRobin,
        "the oldest rule's policy wins"
    );
    assert_eq!(plain.connection_pool.tcp.max_connections, Some(10));
    assert_eq!(plain.tls, None);
    assert_eq!(
        d.cluster_policy(REVIEWS, None, 9443).tls.map(|t| t.sni),
        Some(Some("reviews.example".into()))
    );
    let v1 = d.cluster_policy(REVIEWS, Some("v1"), 9080);
    assert_eq!(
        v1.subset_labels.get("version").map(String::as_str),
        Some("v1"),
        "the first definition wins"
    );
    let sticky = d.cluster_policy(REVIEWS, Some("sticky"), 9080);
    assert!(matches!(
        sticky.load_balancer,
        LoadBalancer::ConsistentHash(ConsistentHash::HttpCookie { ref name, .. }) if name == "session"
    ));
    assert_eq!(
        sticky.connection_pool.tcp.max_connections,
        Some(10),
        "inherited from the rule"
    );
    assert_eq!(
        sticky
            .outlier_detection
            .and_then(|o| o.consecutive_5xx_errors),
        Some(3)
    );
    assert!(d.cluster_policy("api.example.com", None, 443).tls.is_some());
    assert_eq!(
        d.cluster_policy("unknown.host", None, 80),
        ClusterPolicy::default()
    );
    let w = warnings(&compiled);
    assert!(
        w.iter()
            .any(|w| w.contains("DestinationRule default/reviews-more")
                && w.contains("spec.trafficPolicy"))
    );
    assert!(
        w.iter()
            .any(|w| w.contains("spec.subsets[0]: ignored: subset \"v1\""))
    );
    assert_eq!(
        cluster_name(9080, "http", Some("v1"), REVIEWS),
        "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        cluster_name(9080, "http", None, REVIEWS),
        "inbound-vip|9080|http|reviews.default.svc.cluster.local"
    );
}

#[test]
fn tcp_rules_and_service_entries() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com, "*.wild.example.com"]
  ports: [{number: 3306, name: mysql, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.example.com]
  tcp:
  - match: [{port: 3306, sourceLabels: {app: x}}]
    route: [{destination: {host: never}}]
  - match: [{port: 3306}]
    route:
    - {destination: {host: db-primary.example.com}, weight: 80}
    - {destination: {host: db-replica.example.com}, weight: 20}
"#;
    let mut config = ConfigSet::default();
    assert_eq!(config.parse_file(Path::new("inline.yaml"), yaml), vec![]);
    let services = ServiceTarget::from_service_entries(&config);
    assert_eq!(
        services.len(),
        1,
        "wildcard hosts are not services of their own"
    );
    let compiled = compile(&config, &services, &options());
    let r = routes(&compiled, "db.example.com", 3306);
    assert_eq!(r.http.len(), 1, "no HTTP rules: the default HTTP route");
    let chosen = select_tcp_route(
        r,
        &TcpView {
            port: 3306,
            destination: None,
        },
    )
    .expect("tcp route");
    assert_eq!(chosen.origin.rule, 1);
    assert_eq!(
        pick_weighted(&chosen.backends, u32::MAX).map(|b| b.backend.host.as_str()),
        Some("db-replica.example.com")
    );
}

#[test]
fn the_table_finds_each_service_port_by_hostname_and_port() {
    // Hostnames that prefix one another and ports that sort differently as text.
    let keys = [
        ("a.default.svc.cluster.local", 80),
        ("a.default.svc.cluster.local", 9080),
        ("a.default.svc.cluster.local", 10000),
        ("a.default.svc.cluster.localx", 80),
        ("ab.default.svc.cluster.local", 443),
        ("b.default.svc.cluster.local", 1),
    ];
    let mut table = RouteTable::default();
    for (host, port) in keys {
        let key = ServiceKey {
            hostname: host.to_owned(),
            port,
        };
        let routes = CompiledRoutes {
            hostname: host.to_owned(),
            port,
            source: RouteSource::Default,
            http: Vec::new(),
            tcp: Vec::new(),
        };
        table.services.insert(key, routes);
    }
    for (host, port) in keys {
        let found = table.get(host, port).expect("compiled service port");
        assert_eq!((found.hostname.as_str(), found.port), (host, port));
    }
    for (host, port) in [
        ("a.default.svc.cluster.local", 81),
        ("a.default.svc.cluster.loca", 80),
        ("ab.default.svc.cluster.local", 80),
        ("", 80),
        ("c.default.svc.cluster.local", 1),
    ] {
        assert!(table.get(host, port).is_none(), "{host}:{port}");
    }
    let order: Vec<_> = table
        .iter()
        .map(|r| (r.hostname.as_str(), r.port))
        .collect();
    assert_eq!(order, keys, "ordered by hostname, then port");
}
