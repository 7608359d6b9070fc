//! Loader tests: good objects kept, bad ones reported with file, line, object and field.

use std::path::Path;
use std::time::Duration;

use super::istio::{AbortStatus, LoadBalancerSettings, RetryOn, SimpleLb, TlsMode};
use super::*;
use crate::config::common::StringMatch;
use crate::config::gateway::{HttpPathMatch, HttpRouteFilter, PathModifier};

fn parse(content: &str) -> (ConfigSet, Vec<ConfigError>) {
    let mut set = ConfigSet::default();
    let errors = set.parse_file(Path::new("dir/config.yaml"), content);
    (set, errors)
}

fn vs_ref(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: Kind::VirtualService,
        namespace: "default".into(),
        name: name.into(),
    })
}

/// One VirtualService document with `http` rules given as YAML lines (indented under `http:`).
fn vs(name: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn loads_every_supported_kind_and_skips_others() {
    let content = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings}
spec:
  parentRefs: [{kind: Service, group: "", name: ratings}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo}
spec:
  parentRefs: [{kind: Service, group: "", name: echo}]
  rules:
  - matches: [{method: {service: echo.Echo}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec: {replicas: 1}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny}
spec: {}
"#;
    let (set, errors) = parse(content);
    assert_eq!(errors, vec![]);
    assert_eq!(set.len(), 6);
    assert_eq!(set.authorization_policies.len(), 1);
    assert_eq!(set.virtual_services[0].namespace(), "bookinfo");
    assert_eq!(set.destination_rules[0].namespace(), DEFAULT_NAMESPACE);
    assert_eq!(set.destination_rules[0].source.line, Some(11));
    assert_eq!(set.service_entries[0].spec.hosts, ["httpbin.org"]);
    // The CRD's defaults: one rule matching every path, no backends.
    let rules = &set.http_routes[0].spec.rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].matches[0].path, HttpPathMatch::Prefix("/".into()));
    assert_eq!(set.grpc_routes[0].spec.rules[0].matches.len(), 1);
}

#[test]
fn unknown_fields_are_accepted() {
    let content = vs(
        "reviews",
        "  - route:\n    - destination: {host: reviews}\n      weigth: 3\n    somethingNew: {a: 1}\n",
    ) + "  tls: []\nstatus: {observedGeneration: 3}\n";
    let (set, errors) = parse(&content);
    assert_eq!(errors, vec![]);
    assert_eq!(set.virtual_services.len(), 1);
}

/// A malformed field is reported with file, line, object and field path; the object is
/// dropped and the others of the file are kept.
#[test]
fn malformed_objects_are_reported_and_skipped() {
    struct Case {
        name: &'static str,
        http: &'static str,
        field: &'static str,
        message: &'static str,
    }
    let cases = [
        Case {
            name: "bad-weight",
            http: "  - route:\n    - destination: {host: a}\n      weight: lots\n",
            field: "spec.http[0].route[0].weight",
            message: "invalid type: string \"lots\", expected u32",
        },
        Case {
            name: "bad-timeout",
            http: "  - timeout: 3 seconds\n    route: [{destination: {host: a}}]\n",
            field: "spec.http[0].timeout",
            message: "invalid duration \"3 seconds\": unknown unit \" seconds\"",
        },
        Case {
            name: "zero-timeout",
            http: "  - timeout: 0s\n    route: [{destination: {host: a}}]\n",
            field: "spec.http[0].timeout",
            message: "duration \"0s\" must be at least 1ms",
        },
        Case {
            name: "bad-regex",
            http: "  - match: [{uri: {regex: '/api/(v1'}}]\n    route: [{destination: {host: a}}]\n",
            field: "spec.http[0].match[0].uri.regex",
            message: "invalid regex \"/api/(v1\"",
        },
        Case {
            name: "two-kinds",
            http: "  - match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{destination: {host: a}}]\n",
            field: "spec.http[0].match[0].uri",
            message: "only one of exact, prefix or regex may be set",
        },
        Case {
            name: "no-action",
            http: "  - match: [{uri: {exact: /a}}]\n",
            field: "spec.http[0]",
            message: "one of route, redirect, directResponse or delegate is required",
        },
        Case {
            name: "route-and-redirect",
            http: "  - route: [{destination: {host: a}}]\n    redirect: {uri: /b}\n",
            field: "spec.http[0]",
            message: "route, redirect, directResponse and delegate are mutually exclusive",
        },
        Case {
            name: "bad-retry-on",
            http: "  - route: [{destination: {host: a}}]\n    retries: {attempts: 2, retryOn: '5xx,sometimes'}\n",
            field: "spec.http[0].retries",
            message: "retryOn: unknown retry condition \"sometimes\"",
        },
        Case {
            name: "bad-percentage",
            http: "  - route: [{destination: {host: a}}]\n    fault: {abort: {httpStatus: 503, percentage: {value: 120}}}\n",
            field: "spec.http[0].fault.abort.percentage",
            message: "percentage 120 is outside [0, 100]",
        },
        Case {
            name: "bad-header-name",
            http: "  - match: [{headers: {'bad header': {exact: x}}}]\n    route: [{destination: {host: a}}]\n",
            field: "spec.http[0].match[0].headers",
            message: "invalid header name \"bad header\"",
        },
        Case {
            name: "bad-port",
            http: "  - route: [{destination: {host: a, port: {number: 70000}}}]\n",
            field: "spec.http[0].route[0].destination.port.number",
            message: "invalid value: integer `70000`, expected u16",
        },
        Case {
            name: "zero-weights",
            http: "  - route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]\n",
            field: "spec.http[0]",
            message: "route: the total weight of several destinations must be above 0",
        },
    ];
    for case in cases {
        let good = vs("good", "  - route: [{destination: {host: a}}]\n");
        let content = format!("{good}---\n{}", vs(case.name, case.http));
        let (set, errors) = parse(&content);
        assert_eq!(
            set.virtual_services.len(),
            1,
            "{}: the good object is kept",
            case.name
        );
        assert_eq!(errors.len(), 1, "{}: {errors:?}", case.name);
        let error = &errors[0];
        assert_eq!(error.file, Path::new("dir/config.yaml"), "{}", case.name);
        assert_eq!(error.object, vs_ref(case.name), "{}", case.name);
        assert_eq!(error.field.as_deref(), Some(case.field), "{}", case.name);
        let ConfigErrorKind::Invalid(message) = &error.kind else {
            panic!("{}: unexpected kind {:?}", case.name, error.kind);
        };
        assert!(
            message.starts_with(case.message),
            "{}: {message:?}",
            case.name
        );
        // The second document starts at line 9; the error is on or after it.
        assert!(
            error.line.is_some_and(|l| l >= 9),
            "{}: line {:?}",
            case.name,
            error.line
        );
        let shown = error.to_string();
        assert!(
            shown.starts_with("dir/config.yaml:")
                && shown.contains(&format!(
                    ": VirtualService default/{}: {}: ",
                    case.name, case.field
                )),
            "{shown}"
        );
    }
}

#[test]
fn reports_the_line_of_the_offending_field() {
    let content = vs(
        "reviews",
        "  - route:\n    - destination: {host: a}\n      weight: lots\n",
    );
    let (_, errors) = parse(&content);
    // Line 10 is `      weight: lots`.
    assert_eq!(errors[0].line, Some(10));
}

#[test]
fn document_level_problems() {
    let content = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {namespace: x}
spec: {hosts: [a]}
---
kind: VirtualService
metadata: {name: no-version}
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: future}
spec: {}
---
- just
- a list
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: no-spec}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ok}
spec: {host: a}
"#;
    let (set, errors) = parse(content);
    assert_eq!(set.len(), 1);
    type Summary<'a> = (Option<usize>, Option<String>, Option<&'a str>, String);
    let summary: Vec<Summary<'_>> = errors
        .iter()
        .map(|e| {
            (
                e.line,
                e.object.as_ref().map(ToString::to_string),
                e.field.as_deref(),
                e.kind.to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Some(2),
                Some("VirtualService x/".into()),
                Some("metadata.name"),
                "missing required field".into()
            ),
            (
                Some(7),
                None,
                Some("apiVersion"),
                "missing required field".into()
            ),
            (
                Some(10),
                Some("VirtualService default/future".into()),
                Some("apiVersion"),
                "unsupported apiVersion \"networking.istio.io/v2\" for kind VirtualService".into()
            ),
            (
                Some(15),
                None,
                None,
                "document is not a Kubernetes object (expected a mapping)".into()
            ),
            (
                Some(18),
                Some("DestinationRule default/no-spec".into()),
                None,
                "missing field `spec`".into()
            ),
        ]
    );
}

#[test]
fn yaml_syntax_errors_keep_earlier_documents() {
    let content = format!(
        "{}---\napiVersion: v1\nkind: [unclosed\n",
        vs("first", "  - route: [{destination: {host: a}}]\n")
    );
    let (set, errors) = parse(&content);
    assert_eq!(set.virtual_services.len(), 1);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(errors[0].kind, ConfigErrorKind::Yaml(_)),
        "{:?}",
        errors[0]
    );
    assert!(errors[0].line.is_some_and(|l| l >= 10), "{:?}", errors[0]);
}

#[test]
fn duplicates_are_reported() {
    let one = vs("reviews", "  - route: [{destination: {host: a}}]\n");
    let mut set = ConfigSet::default();
    assert_eq!(set.parse_file(Path::new("a.yaml"), &one), vec![]);
    let errors = set.parse_file(Path::new("b.yaml"), &one);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ConfigErrorKind::Duplicate("a.yaml".into()));
    assert_eq!(errors[0].file, Path::new("b.yaml"));
    assert_eq!(set.virtual_services.len(), 1);
}

#[test]
fn load_dir_reads_yaml_files_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, content: &str| {
        std::fs::write(dir.path().join(name), content).expect("write fixture");
    };
    write(
        "b.yml",
        &vs("second", "  - route: [{destination: {host: b}}]\n"),
    );
    write(
        "a.yaml",
        &vs("first", "  - route: [{destination: {host: a}}]\n"),
    );
    write(
        "c.yaml",
        &vs(
            "broken",
            "  - route: [{destination: {host: 7}}]\n  - nothing: 1\n",
        ),
    );
    write("notes.txt", "not: config");
    write(
        ".hidden.yaml",
        &vs("hidden", "  - route: [{destination: {host: h}}]\n"),
    );
    std::fs::create_dir(dir.path().join("sub")).expect("sub dir");
    std::fs::write(
        dir.path().join("sub/d.yaml"),
        vs("nested", "  - route: [{destination: {host: n}}]\n"),
    )
    .expect("write nested");

    let (set, errors) = ConfigSet::load_dir(dir.path()).expect("dir is readable");
    let names: Vec<&str> = set.virtual_services.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].file, dir.path().join("c.yaml"));
    assert_eq!(errors[0].object, vs_ref("broken"));
    assert_eq!(errors[0].field.as_deref(), Some("spec.http[1]"));

    assert!(ConfigSet::load_dir(&dir.path().join("missing")).is_err());
}

#[test]
fn virtual_service_fields_are_typed() {
    let content = vs(
        "full",
        r#"  - name: main
    match:
    - uri: {prefix: /api}
      ignoreUriCase: true
      headers: {X-User: {exact: jason}, x-any: {}}
      withoutHeaders: {x-debug: {}}
      queryParams: {v: {regex: "\\d+"}}
      method: {exact: GET}
      authority: {prefix: reviews}
      port: 9080
      sourceLabels: {app: productpage}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 75
      headers: {request: {set: {x-version: v2}}}
    - destination: {host: reviews, subset: v1}
      weight: 25
    rewrite: {uri: /v2, authority: reviews.internal}
    headers:
      request: {add: {x-a: "1"}, remove: [x-b]}
      response: {set: {x-c: "2"}}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "gateway-error,503"}
    fault:
      delay: {fixedDelay: 5s, percent: 10}
      abort: {grpcStatus: UNAVAILABLE}
    mirror: {host: reviews-shadow}
    mirrorPercentage: {value: 12.5}
    corsPolicy:
      allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*\\.b\\.example"}]
      allowMethods: [GET, POST]
      maxAge: 24h
      allowCredentials: true
  - directResponse: {status: 418, body: {bytes: "dGVhcG90"}}
  - redirect: {uri: /new, authority: other, derivePort: FROM_REQUEST_PORT}
"#,
    ) + "  tcp:\n  - match: [{port: 3306, destinationSubnets: [10.0.0.0/8, 192.168.1.1]}]\n    route: [{destination: {host: mysql}}]\n";
    let (set, errors) = parse(&content);
    assert_eq!(errors, vec![]);
    let spec = &set.virtual_services[0].spec;
    let rule = &spec.http[0];
    let m = &rule.matches[0];
    assert_eq!(m.uri, Some(StringMatch::Prefix("/api".into())));
    assert!(m.ignore_uri_case);
    let mut header_names: Vec<&str> = m.headers.0.iter().map(|(n, _)| n.as_str()).collect();
    header_names.sort_unstable();
    assert_eq!(header_names, ["x-any", "x-user"]);
    assert!(
        m.headers
            .0
            .iter()
            .any(|(n, v)| n == "x-any" && *v == StringMatch::Any)
    );
    assert_eq!(m.port, Some(9080));
    assert_eq!(rule.route[0].weight, 75);
    assert_eq!(rule.timeout.map(|t| t.0), Some(Duration::from_millis(1500)));
    let retries = rule.retries.as_ref().expect("retries");
    assert_eq!(retries.retry_on, [RetryOn::GatewayError]);
    assert_eq!(retries.retriable_status_codes, [503]);
    let fault = rule.fault.as_ref().expect("fault");
    assert_eq!(fault.delay.as_ref().map(|d| d.percentage.0), Some(10.0));
    assert_eq!(
        fault.abort.as_ref().map(|a| a.status.clone()),
        Some(AbortStatus::Grpc("UNAVAILABLE".into()))
    );
    assert_eq!(rule.mirrors.len(), 1);
    assert_eq!(rule.mirrors[0].percentage.map(|p| p.0), Some(12.5));
    assert_eq!(
        rule.cors_policy
            .as_ref()
            .and_then(|c| c.max_age)
            .map(|d| d.0),
        Some(Duration::from_secs(86400))
    );
    assert_eq!(
        spec.http[1]
            .direct_response
            .as_ref()
            .and_then(|d| d.body.clone()),
        Some(b"teapot".to_vec())
    );
    assert_eq!(
        spec.http[2].redirect.as_ref().map(|r| r.redirect_code),
        Some(301)
    );
    assert_eq!(spec.tcp[0].matches[0].destination_subnets.len(), 2);
}

#[test]
fn destination_rule_fields_are_typed() {
    let content = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: X-User}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: two-keys}
spec:
  host: ratings
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, httpHeaderName: x}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-percent}
spec:
  host: ratings
  trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}
"#;
    let (set, errors) = parse(content);
    let fields: Vec<(&str, Option<&str>)> = errors
        .iter()
        .map(|e| {
            (
                e.object.as_ref().map_or("", |o| o.name.as_str()),
                e.field.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("two-keys", Some("spec.trafficPolicy.loadBalancer")),
            (
                "bad-percent",
                Some("spec.trafficPolicy.outlierDetection.maxEjectionPercent")
            ),
        ]
    );
    let spec = &set.destination_rules[0].spec;
    let policy = spec.traffic_policy.as_ref().expect("policy");
    assert!(matches!(
        policy.load_balancer,
        Some(LoadBalancerSettings::ConsistentHash(_))
    ));
    let pool = policy.connection_pool.as_ref().expect("pool");
    assert_eq!(pool.tcp.max_connections, Some(100));
    assert_eq!(pool.http.max_requests_per_connection, Some(1));
    assert_eq!(
        policy.tls.as_ref().map(|t| t.mode),
        Some(TlsMode::IstioMutual)
    );
    let subset_lb = spec.subsets[0]
        .traffic_policy
        .as_ref()
        .and_then(|p| p.load_balancer.clone());
    assert_eq!(
        subset_lb,
        Some(LoadBalancerSettings::Simple(SimpleLb::LeastRequest))
    );
}

#[test]
fn http_route_rules_follow_the_crd() {
    let route = |rules: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: svc}}]\n  rules:\n{rules}"
        )
    };
    let (set, errors) = parse(&route(
        "  - matches: [{path: {type: PathPrefix, value: /foo}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /bar}}\n    - type: ExtensionRef\n      extensionRef: {group: x, kind: y, name: z}\n    backendRefs: [{name: svc, port: 80}]\n    timeouts: {request: 10s, backendRequest: 2s}\n",
    ));
    assert_eq!(errors, vec![]);
    let rule = &set.http_routes[0].spec.rules[0];
    assert!(
        matches!(&rule.filters[0], HttpRouteFilter::UrlRewrite(r) if r.path == Some(PathModifier::ReplacePrefixMatch("/bar".into())))
    );
    assert!(
        matches!(&rule.filters[1], HttpRouteFilter::Unsupported(kind) if kind == "ExtensionRef")
    );
    assert_eq!(rule.backend_refs[0].weight, 1);

    let invalid = [
        (
            "  - matches: [{path: {type: Exact, value: /foo}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n",
            "spec.rules[0]",
            "a replacePrefixMatch path modifier requires exactly one PathPrefix match",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 302}}]\n    backendRefs: [{name: svc, port: 80}]\n",
            "spec.rules[0]",
            "RequestRedirect filter must not be used together with backendRefs",
        ),
        (
            "  - matches: [{path: {value: foo}}]\n",
            "spec.rules[0].matches[0].path",
            "value must be an absolute path",
        ),
        (
            "  - filters: [{type: RequestMirror}]\n",
            "spec.rules[0].filters[0]",
            "type RequestMirror requires the requestMirror field",
        ),
        (
            "  - backendRefs: [{name: svc, port: 80, weight: 2000000}]\n",
            "spec.rules[0].backendRefs[0].weight",
            "weight 2000000 is above 1000000",
        ),
        (
            "  - timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0]",
            "timeouts: backendRequest must not be longer than request",
        ),
        (
            "  - matches: [{method: FETCH}]\n",
            "spec.rules[0].matches[0].method",
            "unknown method \"FETCH\"",
        ),
    ];
    for (rules, field, message) in invalid {
        let (set, errors) = parse(&route(rules));
        assert!(set.http_routes.is_empty(), "{rules}");
        assert_eq!(errors.len(), 1, "{rules}: {errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some(field), "{rules}");
        assert!(
            errors[0].kind.to_string().starts_with(message),
            "{rules}: {}",
            errors[0].kind
        );
    }
}

fn request_authentication(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

const OCT_JWKS: &str = r#"'{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}'"#;

#[test]
fn loads_request_authentications() {
    use super::authn::{JwksSource, Presence, TargetKind};
    let content = request_authentication(
        "jwt",
        &format!(
            "  targetRefs:\n  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}\n  - {{kind: Service, name: reviews}}\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [api]\n    jwks: {OCT_JWKS}\n    fromHeaders: [{{name: X-Jwt, prefix: 'Token '}}]\n    fromParams: [token]\n    fromCookies: [session]\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n    forwardOriginalToken: true\n    timeout: 2s\n    presence: REQUIRED\n  - issuer: other\n    jwks_uri: https://issuer.example/keys\n  - issuer: https://discovered.example\n"
        ),
    ) + "---\n"
        + &request_authentication("beta", "  selector: {matchLabels: {app: a}}\n")
            .replace("security.istio.io/v1", "security.istio.io/v1beta1");
    let (set, errors) = parse(&content);
    assert_eq!(errors, vec![]);
    assert_eq!(set.request_authentications.len(), 2);
    let spec = &set.request_authentications[0].spec;
    assert_eq!(spec.target_refs.len(), 2);
    assert_eq!(spec.target_refs[0].kind, TargetKind::Gateway);
    assert_eq!(spec.target_refs[1].kind, TargetKind::Service);
    let rule = &spec.jwt_rules[0];
    assert_eq!(rule.audiences, ["api"]);
    assert!(matches!(&rule.jwks, JwksSource::Inline(keys) if keys.len() == 1));
    assert_eq!(rule.from_headers[0].name, "x-jwt");
    assert_eq!(rule.from_headers[0].prefix, "Token ");
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
    assert_eq!(rule.timeout.map(|t| t.0), Some(Duration::from_secs(2)));
    assert_eq!(rule.presence, Presence::Required);
    assert!(rule.forward_original_token);
    assert!(
        matches!(&spec.jwt_rules[1].jwks, JwksSource::Uri(u) if u == "https://issuer.example/keys")
    );
    assert!(matches!(spec.jwt_rules[2].jwks, JwksSource::Discovery));
    assert!(set.request_authentications[1].spec.selector.is_some());
}

#[test]
fn malformed_request_authentications_are_reported() {
    let cases = [
        (
            "  jwtRules:\n  - issuer: a\n    jwks: '{\"keys\": []}'\n",
            "spec.jwtRules[0].jwks",
            "Jwks doesn't have any valid public key",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwks: 'not json'\n",
            "spec.jwtRules[0].jwks",
            "Jwks is an invalid JSON",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: ftp://keys.example/jwks\n",
            "spec.jwtRules[0].jwksUri",
            "url must have scheme http:// or https://",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    jwksUri: https://k.example/a\n    jwks_uri: https://k.example/b\n",
            "spec.jwtRules[0]",
            "only one of jwks or jwksUri can be set",
        ),
        (
            "  jwtRules:\n  - audiences: [api]\n",
            "spec.jwtRules[0]",
            "issuer must be set",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    audiences: ['']\n",
            "spec.jwtRules[0].audiences[0]",
            "must not be empty",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    outputClaimToHeaders: [{header: 'x:sub', claim: sub}]\n",
            "spec.jwtRules[0].outputClaimToHeaders[0]",
            "header \"x:sub\" must match",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    fromHeaders: [{prefix: 'Bearer '}]\n",
            "spec.jwtRules[0].fromHeaders[0]",
            "name must be set",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    timeout: 0s\n",
            "spec.jwtRules[0].timeout",
            "duration \"0s\" must be at least 1ms",
        ),
        (
            "  jwtRules:\n  - issuer: a\n    presence: SOMETIMES\n",
            "spec.jwtRules[0].presence",
            "unknown variant",
        ),
        (
            "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: a}]\n",
            "spec",
            "only one of targetRefs or selector can be set",
        ),
        (
            "  targetRefs: [{kind: Pod, name: a}]\n",
            "spec.targetRefs[0]",
            "targetRef must be to",
        ),
        (
            "  targetRef: {kind: Service, name: a, namespace: other}\n",
            "spec.targetRef",
            "cross namespace referencing is not currently supported",
        ),
    ];
    for (spec, field, message) in cases {
        let content = request_authentication("good", "  jwtRules: [{issuer: a}]\n")
            + "---\n"
            + &request_authentication("bad", spec);
        let (set, errors) = parse(&content);
        assert_eq!(
            set.request_authentications.len(),
            1,
            "{spec}: the good one is kept"
        );
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert_eq!(errors[0].field.as_deref(), Some(field), "{spec}");
        assert_eq!(
            errors[0].object.as_ref().map(|o| (o.kind, o.name.as_str())),
            Some((Kind::RequestAuthentication, "bad"))
        );
        let ConfigErrorKind::Invalid(got) = &errors[0].kind else {
            panic!("{spec}: {:?}", errors[0].kind);
        };
        assert!(got.starts_with(message), "{spec}: {got:?}");
        assert!(errors[0].line.is_some(), "{spec}");
    }
}

/// Objects from the API server go through the same decoding as files, each named
/// `<kind> <namespace>/<name>` where the file would be.
#[test]
fn objects_load_like_files_and_are_named_by_kind_and_name() {
    let value = |yaml: &str| -> serde_yaml_ng::Value { serde_yaml_ng::from_str(yaml).unwrap() };
    let good = vs(
        "reviews",
        "  - route: [{destination: {host: reviews, subset: v2}}]\n",
    );
    let bad = vs(
        "bad",
        "  - timeout: 3 seconds\n    route: [{destination: {host: a}}]\n",
    );
    let objects = vec![
        value(&good),
        value(&bad),
        value("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped}\n"),
        value(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: x}\nspec: {}\n",
        ),
        value(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-typo, namespace: default}\nspec: {action: DENYY}\n",
        ),
    ];
    let mut set = ConfigSet::default();
    let errors = set.add_objects(&objects);

    let (from_file, file_errors) = parse(&good);
    assert_eq!(file_errors, vec![]);
    assert_eq!(set.virtual_services.len(), 1);
    assert_eq!(
        format!("{:?}", set.virtual_services[0].spec),
        format!("{:?}", from_file.virtual_services[0].spec)
    );
    assert_eq!(
        set.virtual_services[0].source,
        Source {
            file: "VirtualService default/reviews".into(),
            line: None
        }
    );

    let found: Vec<(String, Option<String>, Option<ObjectRef>)> = errors
        .iter()
        .map(|e| {
            (
                e.file.display().to_string(),
                e.field.clone(),
                e.object.clone(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "VirtualService x/".to_owned(),
                Some("metadata.name".to_owned()),
                Some(ObjectRef {
                    kind: Kind::VirtualService,
                    namespace: "x".into(),
                    name: String::new(),
                }),
            ),
            (
                "VirtualService default/bad".to_owned(),
                Some("spec.http[0].timeout".to_owned()),
                vs_ref("bad"),
            ),
            (
                "AuthorizationPolicy default/deny-typo".to_owned(),
                Some("spec.action".to_owned()),
                Some(ObjectRef {
                    kind: Kind::AuthorizationPolicy,
                    namespace: "default".into(),
                    name: "deny-typo".into(),
                }),
            ),
        ]
    );
    assert!(errors.iter().all(|e| e.line.is_none()));
    // The rejected policy is kept aside so that what it covers is denied.
    assert_eq!(set.rejected_authorization_policies.len(), 1);
    assert_eq!(set.len(), 1);

    // The same object twice (e.g. listed at two versions) is a duplicate.
    let errors = set.add_objects(&objects[..1]);
    assert_eq!(
        errors.iter().map(|e| &e.kind).collect::<Vec<_>>(),
        vec![&ConfigErrorKind::Duplicate(
            "VirtualService default/reviews".into()
        )]
    );
}
