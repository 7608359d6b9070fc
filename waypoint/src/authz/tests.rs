//! Tests for L7 authorization: policy parsing and its errors, which policies apply to which
//! service, each field and condition, Istio's evaluation order, the TCP chain's semantics,
//! path normalisation, and a randomized comparison with a reference evaluator written
//! independently below.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::authn::Authenticated;
use crate::config::ConfigError;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const DOMAIN: &str = "cluster.local";
const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn parse(yaml: &str) -> (ConfigSet, Vec<ConfigError>) {
    let mut set = ConfigSet::default();
    let errors = set.parse_file(Path::new("dir/authz.yaml"), yaml);
    (set, errors)
}

fn services() -> Vec<ServiceTarget> {
    let mut external = ServiceTarget::kubernetes("external", "default", DOMAIN, [443]);
    external.hostname = "api.example.com".into();
    vec![
        ServiceTarget::kubernetes("reviews", "default", DOMAIN, [9080]),
        ServiceTarget::kubernetes("ratings", "default", DOMAIN, [9080]),
        ServiceTarget::kubernetes("db", "other", DOMAIN, [5432]),
        external,
    ]
}

fn options() -> AuthzOptions {
    AuthzOptions::new("default", "waypoint")
}

fn table(yaml: &str) -> AuthzTable {
    let (config, _) = parse(yaml);
    compile(&config, &services(), &options())
}

/// A policy document in `default` targeting the waypoint's Gateway, with `spec` lines
/// (indented two spaces) after `targetRefs`.
fn gateway_policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs:\n  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}\n{spec}"
    )
}

fn identity(ns: &str, sa: &str) -> hbone::Identity {
    hbone::Identity::new(DOMAIN, ns, sa).expect("valid test identity")
}

/// A request from `sleep` in `default` (10.0.0.1) to reviews (10.96.0.1:9080), `GET /`.
struct Req {
    identity: Option<hbone::Identity>,
    source_ip: IpAddr,
    remote_ip: IpAddr,
    destination: SocketAddr,
    sni: Option<String>,
    method: String,
    path: String,
    host: String,
    headers: HeaderMap,
    token: Option<Authenticated>,
    tcp: bool,
}

impl Req {
    fn new() -> Self {
        Self {
            identity: Some(identity("default", "sleep")),
            source_ip: ip("10.0.0.1"),
            remote_ip: ip("10.0.0.1"),
            destination: "10.96.0.1:9080".parse().expect("addr"),
            sni: None,
            method: "GET".into(),
            path: "/".into(),
            host: "reviews.default.svc.cluster.local:9080".into(),
            headers: HeaderMap::new(),
            token: None,
            tcp: false,
        }
    }

    fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }

    fn path(mut self, p: &str) -> Self {
        self.path = p.into();
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers
            .append(name, HeaderValue::from_str(value).expect("header value"));
        self
    }

    fn from(mut self, ns: &str, sa: &str) -> Self {
        self.identity = Some(identity(ns, sa));
        self
    }

    fn attributes(&self) -> RequestAttributes<'_> {
        RequestAttributes {
            source_identity: self.identity.as_ref(),
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination: self.destination,
            sni: self.sni.as_deref(),
            http: (!self.tcp).then(|| HttpAttributes {
                method: &self.method,
                path: &self.path,
                host: &self.host,
                headers: &self.headers,
                request_principal: self.token.as_ref(),
            }),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid test ip")
}

/// `allowed` or the denial's details.
fn verdict(table: &AuthzTable, host: &str, req: &Req) -> String {
    let decision = evaluate(table.policies(host), &req.attributes());
    decision
        .response_code_details()
        .unwrap_or_else(|| "allowed".into())
}

fn token(iss: &str, sub: &str) -> Authenticated {
    Authenticated {
        principal: format!("{iss}/{sub}"),
        issuer: iss.into(),
        subject: sub.into(),
        audiences: vec!["api".into(), "web".into()],
        presenter: Some("frontend".into()),
        claims: serde_json::json!({
            "iss": iss,
            "sub": sub,
            "groups": ["dev", "ops"],
            "team": "payments",
            "nested": {"level": "gold", "count": 3},
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_every_field() {
    let yaml = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: full, namespace: default}
spec:
  targetRef: {kind: Service, group: "", name: reviews}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep, "*/sa/admin"]
        notPrincipals: ["cluster.local/ns/test/*"]
        requestPrincipals: ["issuer/*"]
        notRequestPrincipals: ["*"]
        namespaces: [default]
        notNamespaces: ["kube-*"]
        ipBlocks: ["10.0.0.1", "10.1.0.0/16"]
        notIpBlocks: ["10.1.2.3"]
        remoteIpBlocks: ["192.168.0.0/16"]
        notRemoteIpBlocks: ["192.168.1.1"]
    to:
    - operation:
        hosts: ["Reviews*"]
        notHosts: [evil.com]
        ports: ["9080", 8080]
        notPorts: ["22"]
        methods: [GET]
        notMethods: [DELETE]
        paths: ["/api/*"]
        notPaths: ["*/internal"]
    when:
    - {key: "request.headers[X-User]", values: [alice]}
    - {key: source.ip, notValues: ["10.9.0.0/16"]}
    - {key: remote.ip, values: ["1.2.3.4"]}
    - {key: source.namespace, values: [default]}
    - {key: source.principal, values: ["*"]}
    - {key: request.auth.principal, values: ["iss/sub"]}
    - {key: request.auth.audiences, values: [api]}
    - {key: request.auth.presenter, values: [frontend]}
    - {key: "request.auth.claims[groups]", values: [dev]}
    - {key: "request.auth.claims[nested][level]", values: [gold]}
    - {key: destination.ip, values: ["10.96.0.0/12"]}
    - {key: destination.port, values: ["9080"]}
    - {key: connection.sni, values: ["*.example.com"]}
"#;
    let (set, errors) = parse(yaml);
    assert_eq!(errors, vec![]);
    let spec = &set.authorization_policies[0].spec;
    assert_eq!(spec.action, Action::Deny);
    assert_eq!(
        spec.attachment(),
        Attachment::TargetRefs(vec![TargetRef {
            kind: TargetKind::Service,
            name: "reviews".into(),
            namespace: None,
        }])
    );
    let rule = &spec.rules.as_ref().expect("rules")[0];
    let source = &rule.from[0];
    assert_eq!(source.principals.len(), 2);
    assert_eq!(source.ip_blocks[1].to_string(), "10.1.0.0/16");
    assert_eq!(source.ip_blocks[0].to_string(), "10.0.0.1/32");
    let op = &rule.to[0];
    assert_eq!(op.ports, vec![9080, 8080]);
    assert_eq!(op.hosts[0].to_string(), "reviews*", "hosts are lowercased");
    assert_eq!(rule.when.len(), 13);
    use crate::config::authz::Attribute;
    assert_eq!(
        rule.when[0].attribute,
        Attribute::RequestHeader(http::HeaderName::from_static("x-user"))
    );
    assert_eq!(
        rule.when[9].attribute,
        Attribute::RequestClaim(vec!["nested".into(), "level".into()])
    );
}

#[test]
fn patterns_follow_istio() {
    use crate::config::authz::Pattern;
    let cases = [
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("abc*", "abcd", true),
        ("abc*", "xabc", false),
        ("*abc", "xabc", true),
        ("*abc", "abcx", false),
        ("*", "x", true),
        ("*", "", false),
        ("a*c", "abc", false),
        ("a*c", "a*c", true),
        ("*abc*", "xabc*", true),
    ];
    for (pattern, value, expected) in cases {
        assert_eq!(
            Pattern::new(pattern).matches(value),
            expected,
            "{pattern:?} against {value:?}"
        );
        assert_eq!(Pattern::new(pattern).to_string(), pattern);
    }
}

/// Every invalid policy is reported with file, line, object and field, and kept as a
/// rejected policy with the targets that could be read.
#[test]
fn invalid_policies_are_reported_and_kept_aside() {
    struct Case {
        name: &'static str,
        spec: &'static str,
        field: &'static str,
        message: &'static str,
    }
    let cases = [
        Case {
            name: "unknown-key",
            spec: "  rules:\n  - when: [{key: request.foo, values: [x]}]\n",
            field: "spec.rules[0].when[0]",
            message: "unknown key \"request.foo\"",
        },
        Case {
            name: "envoy-metadata",
            spec: "  rules:\n  - when: [{key: \"experimental.envoy.filters.a.b[c]\", values: [x]}]\n",
            field: "spec.rules[0].when[0]",
            message: "unsupported key \"experimental.envoy.filters.a.b[c]\": Envoy filter metadata is not available in this waypoint",
        },
        Case {
            name: "no-values",
            spec: "  rules:\n  - when: [{key: source.ip}]\n",
            field: "spec.rules[0].when[0]",
            message: "at least one of values or notValues must be set for key source.ip",
        },
        Case {
            name: "bad-ip",
            spec: "  rules:\n  - from: [{source: {ipBlocks: [\"10.0.0.300\"]}}]\n",
            field: "spec.rules[0].from[0].source.ipBlocks[0]",
            message: "invalid IP address or CIDR block \"10.0.0.300\"",
        },
        Case {
            name: "bad-port",
            spec: "  rules:\n  - to: [{operation: {ports: [\"70000\"]}}]\n",
            field: "spec.rules[0].to[0].operation.ports[0]",
            message: "invalid port \"70000\": expected a number in [0, 65535]",
        },
        Case {
            name: "typo",
            spec: "  rules:\n  - to: [{operation: {paths: [/a], notPath: [/b]}}]\n",
            field: "spec.rules[0].to[0].operation.notPath",
            message: "unknown field `notPath`, expected one of `hosts`, `notHosts`, `ports`, `notPorts`, `methods`, `notMethods`, `paths`, `notPaths`",
        },
        Case {
            name: "empty-source",
            spec: "  rules:\n  - from: [{source: {}}]\n",
            field: "spec.rules[0].from[0].source",
            message: "source must not be empty",
        },
        Case {
            name: "empty-from",
            spec: "  rules:\n  - from: []\n",
            field: "spec.rules[0]",
            message: "from must not be empty",
        },
        Case {
            name: "empty-value",
            spec: "  rules:\n  - to: [{operation: {methods: [\"\"]}}]\n",
            field: "spec.rules[0].to[0].operation.methods[0]",
            message: "empty values are not allowed",
        },
        Case {
            name: "path-template",
            spec: "  rules:\n  - to: [{operation: {paths: [\"/a/{*}/b\"]}}]\n",
            field: "spec.rules[0].to[0].operation.paths[0]",
            message: "path templates are not supported: \"/a/{*}/b\"",
        },
        Case {
            name: "deny-without-rules",
            spec: "  action: DENY\n",
            field: "spec",
            message: "DENY action without rules is never triggered; add an empty rule {} to apply it to every request",
        },
        Case {
            name: "custom-without-provider",
            spec: "  action: CUSTOM\n  rules: [{}]\n",
            field: "spec",
            message: "provider.name must not be empty for action CUSTOM",
        },
        Case {
            name: "custom-principals",
            spec: "  action: CUSTOM\n  provider: {name: opa}\n  rules: [{from: [{source: {principals: [a]}}]}]\n",
            field: "spec",
            message: "rules[0]: from.source.principals is not supported with action CUSTOM",
        },
        Case {
            name: "provider-not-custom",
            spec: "  provider: {name: opa}\n  rules: [{}]\n",
            field: "spec",
            message: "provider must only be set with action CUSTOM, not ALLOW",
        },
        Case {
            name: "bad-action",
            spec: "  action: BLOCK\n",
            field: "spec.action",
            message: "unknown variant `BLOCK`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`",
        },
        Case {
            name: "bad-header-key",
            spec: "  rules:\n  - when: [{key: \"request.headers[]\", values: [x]}]\n",
            field: "spec.rules[0].when[0]",
            message: "invalid key \"request.headers[]\": expected request.headers[<name>]",
        },
    ];
    for case in &cases {
        let doc = gateway_policy(case.name, case.spec);
        let good = gateway_policy("good", "  rules: [{}]\n");
        let (set, errors) = parse(&format!("{good}---\n{doc}"));
        assert_eq!(
            set.authorization_policies.len(),
            1,
            "{}: good policy kept",
            case.name
        );
        assert_eq!(errors.len(), 1, "{}: {errors:?}", case.name);
        let error = &errors[0];
        assert_eq!(error.file, Path::new("dir/authz.yaml"));
        // The bad document starts on line 9 (after the good one and `---`); the line reported
        // is the offending field's, inside it.
        let last = 8 + doc.lines().count();
        assert!(
            error.line.is_some_and(|l| (9..=last).contains(&l)),
            "{}: line {:?}",
            case.name,
            error.line
        );
        assert_eq!(
            error.object.as_ref().map(|o| o.name.as_str()),
            Some(case.name)
        );
        assert_eq!(error.field.as_deref(), Some(case.field), "{}", case.name);
        assert_eq!(error.kind.to_string(), case.message, "{}", case.name);
        let rejected = &set.rejected_authorization_policies;
        assert_eq!(rejected.len(), 1, "{}", case.name);
        assert_eq!(rejected[0].object.name, case.name);
        assert!(
            matches!(&rejected[0].attachment, Attachment::TargetRefs(refs) if refs[0].kind == TargetKind::Gateway),
            "{}: {:?}",
            case.name,
            rejected[0].attachment
        );
    }
}

#[test]
fn target_refs_are_checked() {
    let cases = [
        (
            "targetRefs: [{kind: Gateway, name: waypoint}]",
            "unsupported target core/Gateway: expected core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway or gateway.networking.k8s.io/GatewayClass",
        ),
        (
            "targetRefs: [{kind: Service, group: \"\", name: a, namespace: other}]",
            "cross-namespace targets are not supported: \"other\" is not the policy's namespace \"default\"",
        ),
        (
            "{targetRef: {kind: Service, name: a}, targetRefs: [{kind: Service, name: b}]}",
            "only one of targetRef or targetRefs can be set",
        ),
        (
            "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: b}]}",
            "only one of targetRefs or selector can be set",
        ),
    ];
    for (spec, message) in cases {
        let spec = if spec.starts_with('{') {
            spec.to_owned()
        } else {
            format!("{{{spec}}}")
        };
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec: {spec}\n"
        );
        let (set, errors) = parse(&yaml);
        assert!(set.authorization_policies.is_empty(), "{spec}");
        assert_eq!(errors.len(), 1, "{spec}");
        assert_eq!(errors[0].kind.to_string(), message, "{spec}");
    }
}

#[test]
fn unsupported_version_is_rejected_and_fails_closed() {
    let yaml = "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n";
    let t = table(yaml);
    assert_eq!(
        verdict(&t, REVIEWS, &Req::new()),
        "rbac_access_denied_matched_policy[ns[default]-policy[p]-invalid]"
    );
    assert_eq!(
        verdict(&t, "ratings.default.svc.cluster.local", &Req::new()),
        "allowed"
    );
}

// ---------------------------------------------------------------------------------------------
// Attachment
// ---------------------------------------------------------------------------------------------

/// (policy namespace, targets YAML, hostnames it applies to)
#[test]
fn which_services_a_policy_applies_to() {
    let all = vec![
        REVIEWS,
        "ratings.default.svc.cluster.local",
        "db.other.svc.cluster.local",
        "api.example.com",
    ];
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "default",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]",
            all.clone(),
        ),
        (
            "default",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other-waypoint}]",
            vec![],
        ),
        (
            "other",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]",
            vec![],
        ),
        (
            "istio-system",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]",
            all.clone(),
        ),
        (
            "default",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]",
            vec![],
        ),
        (
            "istio-system",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio}]",
            vec![],
        ),
        (
            "default",
            "targetRefs: [{kind: Service, name: reviews}]",
            vec![REVIEWS],
        ),
        (
            "default",
            "targetRef: {kind: Service, group: core, name: reviews}",
            vec![REVIEWS],
        ),
        (
            "default",
            "targetRefs: [{kind: Service, name: reviews}, {kind: Service, name: ratings}]",
            vec![REVIEWS, "ratings.default.svc.cluster.local"],
        ),
        (
            "other",
            "targetRefs: [{kind: Service, name: reviews}]",
            vec![],
        ),
        (
            "other",
            "targetRefs: [{kind: Service, name: db}]",
            vec!["db.other.svc.cluster.local"],
        ),
        (
            "default",
            "targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: external}]",
            vec!["api.example.com"],
        ),
        (
            "default",
            "targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: reviews}]",
            vec![],
        ),
        (
            "default",
            "targetRefs: [{kind: Service, name: external}]",
            vec![],
        ),
        ("default", "selector: {matchLabels: {app: reviews}}", vec![]),
        ("default", "{}", vec![]),
        ("istio-system", "{}", vec![]),
    ];
    for (namespace, targets, expected) in cases {
        let spec = if targets == "{}" {
            "{}".to_owned()
        } else {
            format!("{{{targets}}}")
        };
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {namespace}}}\nspec: {spec}\n"
        );
        let (config, errors) = parse(&yaml);
        assert_eq!(errors, vec![], "{targets}");
        let t = compile(&config, &services(), &options());
        let mut applied: Vec<&str> = services()
            .iter()
            .filter(|s| !t.policies(&s.hostname).is_empty())
            .map(|s| {
                all.iter()
                    .copied()
                    .find(|h| *h == s.hostname)
                    .unwrap_or_default()
            })
            .collect();
        applied.sort_unstable();
        let mut expected = expected;
        expected.sort_unstable();
        assert_eq!(applied, expected, "{namespace}: {targets}");
        assert_eq!(t.entries()[0].applies_to.len(), expected.len(), "{targets}");
    }
}

#[test]
fn a_service_entry_loaded_alongside_names_its_hosts() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: default}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: payments}]
  rules: [{to: [{operation: {ports: ["8443"]}}]}]
"#;
    let t = table(yaml);
    assert_eq!(t.policies("api.example.com").len(), 1);
    assert!(t.policies(REVIEWS).is_empty());
}

/// Invalid policies deny everything where they apply; with unreadable targets they cover
/// their namespace (and the whole waypoint from its namespace or the root namespace).
#[test]
fn invalid_policies_fail_closed_for_their_targets() {
    let cases = [
        // (namespace, spec, hosts denied)
        (
            "default",
            "{targetRefs: [{kind: Service, name: reviews}], rules: [{when: [{key: bogus, values: [x]}]}]}",
            vec![REVIEWS],
        ),
        (
            "default",
            "{targetRefs: [{kind: Service, name: reviews}], action: DENY}",
            vec![REVIEWS],
        ),
        (
            "default",
            "{targetRefs: [{kind: Deployment, name: reviews}]}",
            vec![
                REVIEWS,
                "ratings.default.svc.cluster.local",
                "db.other.svc.cluster.local",
                "api.example.com",
            ],
        ),
        (
            "other",
            "{targetRefs: [{kind: Service, name: 42}], rules: 3}",
            vec!["db.other.svc.cluster.local"],
        ),
        (
            "other",
            "{targetRefs: 7}",
            vec!["db.other.svc.cluster.local"],
        ),
        (
            "istio-system",
            "[not, a, mapping]",
            vec![
                REVIEWS,
                "ratings.default.svc.cluster.local",
                "db.other.svc.cluster.local",
                "api.example.com",
            ],
        ),
        (
            "default",
            "{selector: {matchLabels: {app: a}}, rules: 3}",
            vec![],
        ),
        ("default", "{rules: 3}", vec![]),
    ];
    for (namespace, spec, denied) in cases {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bad, namespace: {namespace}}}\nspec: {spec}\n"
        );
        let (config, errors) = parse(&yaml);
        assert_eq!(errors.len(), 1, "{spec}");
        let t = compile(&config, &services(), &options());
        for service in services() {
            let expected = if denied.contains(&service.hostname.as_str()) {
                format!("rbac_access_denied_matched_policy[ns[{namespace}]-policy[bad]-invalid]")
            } else {
                "allowed".to_owned()
            };
            assert_eq!(
                verdict(&t, &service.hostname, &Req::new()),
                expected,
                "{namespace} {spec} for {}",
                service.hostname
            );
        }
        if !denied.is_empty() {
            assert_eq!(t.warnings().count(), 1, "{spec}");
        }
    }
}

#[test]
fn unknown_hosts_get_the_waypoint_wide_policies() {
    let t = table(&format!(
        "{}---\n{}",
        gateway_policy(
            "wide",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"
        ),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: narrow, namespace: default}\nspec:\n  targetRefs: [{kind: Service, name: reviews}]\n"
    ));
    let names =
        |host: &str| -> Vec<String> { t.policies(host).iter().map(|p| p.name.clone()).collect() };
    assert_eq!(names(REVIEWS), ["wide", "narrow"]);
    assert_eq!(names("ratings.default.svc.cluster.local"), ["wide"]);
    assert_eq!(names("new.default.svc.cluster.local"), ["wide"]);
}

// ---------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------

/// One ALLOW policy with a single rule (`rule` YAML) against named requests.
struct FieldCase {
    name: &'static str,
    rule: &'static str,
    allowed: Vec<Req>,
    denied: Vec<Req>,
}

fn check_fields(cases: Vec<FieldCase>) {
    for case in cases {
        let t = table(&gateway_policy(
            "p",
            &format!("  rules:\n  - {}\n", case.rule),
        ));
        assert_eq!(t.entries()[0].policy.invalid, None, "{}", case.name);
        for (i, req) in case.allowed.iter().enumerate() {
            assert_eq!(
                verdict(&t, REVIEWS, req),
                "allowed",
                "{} allowed[{i}]",
                case.name
            );
        }
        for (i, req) in case.denied.iter().enumerate() {
            assert_eq!(
                verdict(&t, REVIEWS, req),
                "rbac_access_denied_matched_policy[none]",
                "{} denied[{i}]",
                case.name
            );
        }
    }
}

#[test]
fn source_fields() {
    let mut remote = Req::new();
    remote.remote_ip = ip("192.168.1.7");
    let mut remote_other = Req::new();
    remote_other.remote_ip = ip("172.16.0.1");
    let mut mapped = Req::new();
    mapped.source_ip = ip("::ffff:10.0.0.1");
    let mut plain = Req::new();
    plain.identity = None;
    check_fields(vec![
        FieldCase {
            name: "principals exact",
            rule: "from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]",
            allowed: vec![Req::new()],
            denied: vec![Req::new().from("default", "other"), plain],
        },
        FieldCase {
            name: "principals with spiffe prefix never match",
            rule: "from: [{source: {principals: [spiffe://cluster.local/ns/default/sa/sleep]}}]",
            allowed: vec![],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "principals suffix and prefix",
            rule: "from: [{source: {principals: [\"*/sa/sleep\", \"cluster.local/ns/prod/*\"]}}]",
            allowed: vec![Req::new(), Req::new().from("prod", "x")],
            denied: vec![Req::new().from("default", "other")],
        },
        FieldCase {
            name: "notPrincipals",
            rule: "from: [{source: {notPrincipals: [\"*/sa/sleep\"]}}]",
            allowed: vec![Req::new().from("default", "other")],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "namespaces",
            rule: "from: [{source: {namespaces: [\"prod*\", default]}}]",
            allowed: vec![Req::new(), Req::new().from("prod-eu", "x")],
            denied: vec![Req::new().from("test", "sleep")],
        },
        FieldCase {
            name: "notNamespaces",
            rule: "from: [{source: {notNamespaces: [test]}}]",
            allowed: vec![Req::new()],
            denied: vec![Req::new().from("test", "sleep")],
        },
        FieldCase {
            name: "ipBlocks (IPv4-mapped addresses too)",
            rule: "from: [{source: {ipBlocks: [\"10.0.0.0/24\"]}}]",
            allowed: vec![Req::new(), mapped],
            denied: vec![{
                let mut r = Req::new();
                r.source_ip = ip("10.0.1.1");
                r
            }],
        },
        FieldCase {
            name: "notIpBlocks",
            rule: "from: [{source: {notIpBlocks: [\"10.0.0.1\"]}}]",
            allowed: vec![{
                let mut r = Req::new();
                r.source_ip = ip("10.0.0.2");
                r
            }],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "remoteIpBlocks",
            rule: "from: [{source: {remoteIpBlocks: [\"192.168.0.0/16\"]}}]",
            allowed: vec![remote],
            denied: vec![Req::new(), remote_other],
        },
        FieldCase {
            name: "two fields are ANDed, two sources ORed",
            rule: "from: [{source: {namespaces: [default], notPrincipals: [\"*/sa/other\"]}}, {source: {namespaces: [prod]}}]",
            allowed: vec![Req::new(), Req::new().from("prod", "other")],
            denied: vec![Req::new().from("default", "other")],
        },
    ]);
}

#[test]
fn request_principal_fields() {
    let with = |iss: &str, sub: &str| {
        let mut r = Req::new();
        r.token = Some(token(iss, sub));
        r
    };
    check_fields(vec![
        FieldCase {
            name: "requestPrincipals any",
            rule: "from: [{source: {requestPrincipals: [\"*\"]}}]",
            allowed: vec![with("https://issuer.example", "alice")],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "requestPrincipals exact issuer/subject",
            rule: "from: [{source: {requestPrincipals: [\"https://issuer.example/alice\"]}}]",
            allowed: vec![with("https://issuer.example", "alice")],
            denied: vec![
                with("https://issuer.example", "bob"),
                with("https://other", "alice"),
            ],
        },
        FieldCase {
            name: "requestPrincipals issuer with any subject",
            rule: "from: [{source: {requestPrincipals: [\"https://issuer.example/*\"]}}]",
            allowed: vec![with("https://issuer.example", "bob")],
            denied: vec![
                with("https://issuer.example/x", "bob"),
                with("https://issuer.example", ""),
            ],
        },
        FieldCase {
            name: "requestPrincipals any issuer, exact subject",
            rule: "from: [{source: {requestPrincipals: [\"*/alice\"]}}]",
            allowed: vec![with("https://a", "alice"), with("https://b", "alice")],
            denied: vec![with("https://a", "alicex")],
        },
        FieldCase {
            name: "notRequestPrincipals * = no token",
            rule: "from: [{source: {notRequestPrincipals: [\"*\"]}}]",
            allowed: vec![Req::new()],
            denied: vec![with("https://a", "alice")],
        },
    ]);
}

#[test]
fn operation_fields() {
    let host = |h: &str| {
        let mut r = Req::new();
        r.host = h.into();
        r
    };
    let port = |p: u16| {
        let mut r = Req::new();
        r.destination.set_port(p);
        r
    };
    check_fields(vec![
        FieldCase {
            name: "paths exact, prefix, suffix",
            rule: "to: [{operation: {paths: [/public, \"/api/*\", \"*.png\"]}}]",
            allowed: vec![
                Req::new().path("/public"),
                Req::new().path("/api/v1"),
                Req::new().path("/img/a.png"),
            ],
            denied: vec![
                Req::new().path("/public/x"),
                Req::new().path("/API/v1"),
                Req::new().path("/api"),
            ],
        },
        FieldCase {
            name: "notPaths",
            rule: "to: [{operation: {notPaths: [\"/admin*\"]}}]",
            allowed: vec![Req::new().path("/x")],
            denied: vec![Req::new().path("/admin"), Req::new().path("/admin/x")],
        },
        FieldCase {
            name: "methods are case-sensitive",
            rule: "to: [{operation: {methods: [GET, \"P*\"]}}]",
            allowed: vec![
                Req::new(),
                Req::new().method("POST"),
                Req::new().method("PUT"),
            ],
            denied: vec![Req::new().method("DELETE"), Req::new().method("get")],
        },
        FieldCase {
            name: "notMethods",
            rule: "to: [{operation: {notMethods: [DELETE]}}]",
            allowed: vec![Req::new()],
            denied: vec![Req::new().method("DELETE")],
        },
        FieldCase {
            name: "hosts ignore case",
            rule: "to: [{operation: {hosts: [\"Reviews.default.svc.cluster.local:9080\", \"*.Example.com\", \"ratings*\"]}}]",
            allowed: vec![Req::new(), host("api.example.COM"), host("RATINGS:9080")],
            denied: vec![
                host("reviews.default.svc.cluster.local"),
                host("example.com"),
            ],
        },
        FieldCase {
            name: "notHosts",
            rule: "to: [{operation: {notHosts: [\"evil*\"]}}]",
            allowed: vec![Req::new()],
            denied: vec![host("EVIL.com")],
        },
        FieldCase {
            name: "ports",
            rule: "to: [{operation: {ports: [\"9080\"]}}]",
            allowed: vec![Req::new()],
            denied: vec![port(8080)],
        },
        FieldCase {
            name: "notPorts",
            rule: "to: [{operation: {notPorts: [\"8080\"]}}]",
            allowed: vec![Req::new()],
            denied: vec![port(8080)],
        },
        FieldCase {
            name: "operation fields ANDed, operations ORed",
            rule: "to: [{operation: {methods: [GET], paths: [/a]}}, {operation: {methods: [POST]}}]",
            allowed: vec![Req::new().path("/a"), Req::new().method("POST").path("/b")],
            denied: vec![Req::new().path("/b")],
        },
        FieldCase {
            name: "from, to and when are ANDed",
            rule: "{from: [{source: {namespaces: [default]}}], to: [{operation: {paths: [/a]}}], when: [{key: \"request.headers[x-user]\", values: [alice]}]}",
            allowed: vec![Req::new().path("/a").header("x-user", "alice")],
            denied: vec![
                Req::new().path("/b").header("x-user", "alice"),
                Req::new().path("/a"),
                Req::new()
                    .path("/a")
                    .header("x-user", "alice")
                    .from("prod", "sleep"),
            ],
        },
    ]);
}

#[test]
fn conditions() {
    let with_token = || {
        let mut r = Req::new();
        r.token = Some(token("https://issuer.example", "alice"));
        r
    };
    let sni = |s: &str| {
        let mut r = Req::new();
        r.sni = Some(s.into());
        r
    };
    check_fields(vec![
        FieldCase {
            name: "request.headers: name ignores case, duplicates are joined",
            rule: "when: [{key: \"request.headers[X-User]\", values: [alice, \"a,*\"]}]",
            allowed: vec![
                Req::new().header("x-user", "alice"),
                Req::new().header("x-user", "a").header("x-user", "b"),
            ],
            denied: vec![Req::new(), Req::new().header("x-user", "bob")],
        },
        FieldCase {
            name: "request.headers * is presence",
            rule: "when: [{key: \"request.headers[x-debug]\", values: [\"*\"]}]",
            allowed: vec![
                Req::new().header("x-debug", ""),
                Req::new().header("x-debug", "1"),
            ],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "request.headers notValues: an absent header passes",
            rule: "when: [{key: \"request.headers[x-user]\", notValues: [bob]}]",
            allowed: vec![Req::new(), Req::new().header("x-user", "alice")],
            denied: vec![Req::new().header("x-user", "bob")],
        },
        FieldCase {
            name: "source.ip",
            rule: "when: [{key: source.ip, values: [\"10.0.0.0/8\"], notValues: [\"10.0.0.2\"]}]",
            allowed: vec![Req::new()],
            denied: vec![
                {
                    let mut r = Req::new();
                    r.source_ip = ip("10.0.0.2");
                    r
                },
                {
                    let mut r = Req::new();
                    r.source_ip = ip("fd00::1");
                    r
                },
            ],
        },
        FieldCase {
            name: "remote.ip",
            rule: "when: [{key: remote.ip, values: [\"1.2.3.4\"]}]",
            allowed: vec![{
                let mut r = Req::new();
                r.remote_ip = ip("1.2.3.4");
                r
            }],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "source.namespace and source.principal",
            rule: "when: [{key: source.namespace, values: [default]}, {key: source.principal, values: [\"*/sa/sleep\"]}]",
            allowed: vec![Req::new()],
            denied: vec![
                Req::new().from("default", "x"),
                Req::new().from("prod", "sleep"),
            ],
        },
        FieldCase {
            name: "destination.ip and destination.port",
            rule: "when: [{key: destination.ip, values: [\"10.96.0.0/16\"]}, {key: destination.port, values: [\"9080\"]}]",
            allowed: vec![Req::new()],
            denied: vec![{
                let mut r = Req::new();
                r.destination = "10.97.0.1:9080".parse().expect("addr");
                r
            }],
        },
        FieldCase {
            name: "connection.sni",
            rule: "when: [{key: connection.sni, values: [\"*.example.com\"]}]",
            allowed: vec![sni("a.example.com")],
            denied: vec![Req::new(), sni("example.org")],
        },
        FieldCase {
            name: "request.auth.principal",
            rule: "when: [{key: request.auth.principal, values: [\"https://issuer.example/alice\"]}]",
            allowed: vec![with_token()],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "request.auth.audiences and presenter",
            rule: "when: [{key: request.auth.audiences, values: [web]}, {key: request.auth.presenter, values: [\"front*\"]}]",
            allowed: vec![with_token()],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "request.auth.claims: list, string, nested",
            rule: "when: [{key: \"request.auth.claims[groups]\", values: [ops]}, {key: \"request.auth.claims[team]\", values: [\"pay*\"]}, {key: \"request.auth.claims[nested][level]\", values: [gold]}]",
            allowed: vec![with_token()],
            denied: vec![Req::new()],
        },
        FieldCase {
            name: "request.auth.claims: a non-string claim never matches",
            rule: "when: [{key: \"request.auth.claims[nested][count]\", values: [\"3\"]}]",
            allowed: vec![],
            denied: vec![with_token()],
        },
        FieldCase {
            name: "request.auth.claims notValues on a missing claim",
            rule: "when: [{key: \"request.auth.claims[missing]\", notValues: [x]}]",
            allowed: vec![with_token(), Req::new()],
            denied: vec![],
        },
    ]);
}

// ---------------------------------------------------------------------------------------------
// Evaluation order and actions
// ---------------------------------------------------------------------------------------------

#[test]
fn no_rules_versus_an_empty_rule() {
    // ALLOW without rules: a policy that matches nothing, so everything is denied.
    let t = table(&gateway_policy("p", ""));
    assert_eq!(
        verdict(&t, REVIEWS, &Req::new()),
        "rbac_access_denied_matched_policy[none]"
    );
    // ALLOW with `rules: [{}]`: matches everything.
    let t = table(&gateway_policy("p", "  rules: [{}]\n"));
    assert_eq!(verdict(&t, REVIEWS, &Req::new()), "allowed");
    // DENY with `rules: [{}]`: denies everything.
    let t = table(&gateway_policy("p", "  action: DENY\n  rules: [{}]\n"));
    assert_eq!(
        verdict(&t, REVIEWS, &Req::new()),
        "rbac_access_denied_matched_policy[ns[default]-policy[p]-rule[0]]"
    );
    // AUDIT alone: allowed.
    let t = table(&gateway_policy("p", "  action: AUDIT\n"));
    assert_eq!(verdict(&t, REVIEWS, &Req::new()), "allowed");
}

#[test]
fn deny_takes_precedence_and_audit_only_reports() {
    let yaml = [
        gateway_policy("allow-all", "  rules: [{}]\n"),
        gateway_policy(
            "deny-admin",
            "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/x]}}]\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
        ),
        gateway_policy(
            "audit-post",
            "  action: AUDIT\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n",
        ),
    ]
    .join("---\n");
    let t = table(&yaml);
    let policies = t.policies(REVIEWS);

    let req = Req::new().path("/admin/users");
    let d = evaluate(policies, &req.attributes());
    assert!(!d.allowed);
    assert_eq!(
        d.response_code_details().as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[1]]")
    );
    assert!(d.audited.is_empty());

    let req = Req::new().method("POST").path("/ok");
    let d = evaluate(policies, &req.attributes());
    assert!(d.allowed);
    assert!(
        matches!(d.reason, Reason::AllowedBy(m) if m.policy.name == "allow-all" && m.rule == Some(0))
    );
    assert_eq!(d.audited.len(), 1);
    assert_eq!(
        d.audited[0].to_string(),
        "ns[default]-policy[audit-post]-rule[0]"
    );

    let req = Req::new().method("POST").path("/admin");
    let d = evaluate(policies, &req.attributes());
    assert!(!d.allowed, "audit never allows what deny denies");
    assert_eq!(d.audited.len(), 1);
}

#[test]
fn only_deny_policies_allow_the_rest() {
    let t = table(&gateway_policy(
        "deny",
        "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
    ));
    let d = evaluate(t.policies(REVIEWS), &Req::new().attributes());
    assert!(d.allowed);
    assert!(matches!(d.reason, Reason::NoAllowPolicies));
    let d = evaluate(&[], &Req::new().attributes());
    assert!(matches!(d.reason, Reason::NoPolicies));
}

#[test]
fn custom_fails_closed_for_what_it_matches() {
    let t = table(&[
        gateway_policy(
            "ext",
            "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules: [{to: [{operation: {paths: [\"/secure*\"]}}]}]\n",
        ),
        gateway_policy("allow-all", "  rules: [{}]\n"),
    ]
    .join("---\n"));
    assert_eq!(verdict(&t, REVIEWS, &Req::new().path("/open")), "allowed");
    let req = Req::new().path("/secure/x");
    let d = evaluate(t.policies(REVIEWS), &req.attributes());
    assert!(matches!(d.reason, Reason::Custom(_)));
    assert_eq!(
        d.reason.to_string(),
        "denied by ns[default]-policy[ext]-rule[0]: CUSTOM provider \"my-ext-authz\" is not available"
    );
    let warnings: Vec<String> = t.warnings().collect();
    assert_eq!(
        warnings,
        [
            "CUSTOM AuthorizationPolicy default/ext: extension provider \"my-ext-authz\" is not available (not in meshConfig.extensionProviders); requests it matches are denied"
        ]
    );
}

/// CUSTOM comes first: a matching CUSTOM policy hands the request to its provider
/// (`custom`), and `after_custom` is what the DENY and ALLOW policies decide once the
/// provider allowed; an invalid policy denies before any provider is asked.
#[test]
fn custom_is_checked_before_deny_and_allow() {
    let custom = gateway_policy(
        "ext",
        "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules: [{to: [{operation: {paths: [\"/secure*\"]}}]}]\n",
    );
    let deny = gateway_policy(
        "deny-admin",
        "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/secure/admin\"]}}]}]\n",
    );
    let allow = gateway_policy(
        "allow-get",
        "  rules: [{to: [{operation: {methods: [GET]}}]}]\n",
    );
    let broken = gateway_policy(
        "broken",
        "  action: DENY\n  rules: [{when: [{key: nope, values: [x]}]}]\n",
    );
    let t = table(&[custom.clone(), deny, allow].join("---\n"));
    // (method, path, provider asked, decision after the provider allowed)
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "GET",
            "/open",
            false,
            "allowed by ns[default]-policy[allow-get]-rule[0]",
        ),
        ("POST", "/open", false, "denied: no allow policy matched"),
        (
            "GET",
            "/secure/x",
            true,
            "allowed by ns[default]-policy[allow-get]-rule[0]",
        ),
        ("POST", "/secure/x", true, "denied: no allow policy matched"),
        (
            "GET",
            "/secure/admin",
            true,
            "denied by ns[default]-policy[deny-admin]-rule[0]",
        ),
    ];
    for (method, path, asked, after) in cases {
        let req = Req::new().method(method).path(path);
        let d = evaluate(t.policies(REVIEWS), &req.attributes());
        assert_eq!(!d.custom.is_empty(), *asked, "{method} {path}");
        assert_eq!(d.after_custom.to_string(), *after, "{method} {path}");
        if *asked {
            // The decision when the provider cannot be asked: denied by the CUSTOM policy.
            assert!(matches!(d.reason, Reason::Custom(_)), "{method} {path}");
            assert_eq!(d.custom[0].to_string(), "ns[default]-policy[ext]-rule[0]");
        } else {
            assert_eq!(d.reason.to_string(), *after, "{method} {path}");
        }
    }
    let t = table(&[custom, broken].join("---\n"));
    let d = evaluate(
        t.policies(REVIEWS),
        &Req::new().path("/secure/x").attributes(),
    );
    assert!(d.custom.is_empty());
    assert!(matches!(d.reason, Reason::Invalid(_)));
}

#[test]
fn an_invalid_policy_denies_even_when_another_allows() {
    let t = table(
        &[
            gateway_policy("allow-all", "  rules: [{}]\n"),
            gateway_policy(
                "broken",
                "  action: DENY\n  rules: [{when: [{key: nope, values: [x]}]}]\n",
            ),
        ]
        .join("---\n"),
    );
    assert_eq!(
        verdict(&t, REVIEWS, &Req::new()),
        "rbac_access_denied_matched_policy[ns[default]-policy[broken]-invalid]"
    );
    assert_eq!(t.entries().len(), 2);
    assert_eq!(
        t.entries()[1].policy.action,
        Action::Deny,
        "the action as written"
    );
    assert!(
        t.entries()[1]
            .policy
            .invalid
            .as_deref()
            .is_some_and(|r| r.contains("unknown key"))
    );
}

/// On the TCP chain, ALLOW rules with HTTP attributes never match, and the HTTP parts of DENY
/// rules are dropped (the rule denies more).
#[test]
fn tcp_connections_see_only_l4_attributes() {
    let tcp = || {
        let mut r = Req::new();
        r.tcp = true;
        r
    };
    let cases = [
        ("  rules: [{to: [{operation: {paths: [/a]}}]}]\n", false),
        (
            "  rules: [{to: [{operation: {ports: [\"9080\"]}}]}]\n",
            true,
        ),
        (
            "  rules: [{from: [{source: {namespaces: [default]}}], when: [{key: \"request.headers[x]\", values: [y]}]}]\n",
            false,
        ),
        (
            "  rules:\n  - to: [{operation: {paths: [/a]}}]\n  - from: [{source: {namespaces: [default]}}]\n",
            true,
        ),
        (
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n",
            false,
        ),
        (
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin], ports: [\"8080\"]}}]}]\n",
            true,
        ),
        (
            "  action: DENY\n  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]\n",
            false,
        ),
        (
            "  action: DENY\n  rules: [{from: [{source: {namespaces: [prod]}}], when: [{key: request.auth.presenter, values: [x]}]}]\n",
            true,
        ),
    ];
    for (spec, allowed) in cases {
        let t = table(&gateway_policy("p", spec));
        let d = evaluate(t.policies(REVIEWS), &tcp().attributes());
        assert_eq!(d.allowed, allowed, "{spec}");
    }
}

// ---------------------------------------------------------------------------------------------
// Path and method normalisation
// ---------------------------------------------------------------------------------------------

#[test]
fn path_normalisation_table() {
    let ok = [
        ("/", "/"),
        ("/admin", "/admin"),
        ("/a/../admin", "/admin"),
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../admin", "/admin"),
        ("/../../..", "/"),
        ("//admin", "/admin"),
        ("/a///b//", "/a/b/"),
        ("/a//../b", "/a/b"),
        ("/%61dmin", "/admin"),
        ("/%41%5a%2d%2E%5f%7E%30", "/AZ-._~0"),
        ("/%2e%2e/admin", "/admin"),
        ("/a/%2E%2E/admin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/a%5cb", "/a%5Cb"),
        ("/%2561", "/%2561"),
        ("/a\\b", "/a/b"),
        ("/a\\..\\admin", "/admin"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a b", "/a%20b"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("/.hidden/..x", "/.hidden/..x"),
    ];
    for (input, expected) in ok {
        assert_eq!(
            normalize_path(input).as_deref(),
            Ok(expected),
            "normalize_path({input:?})"
        );
    }
    let err = [
        ("", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("admin", PathError::NotAbsolute),
        ("/a%zzb", PathError::InvalidEscape(2)),
        ("/a%2", PathError::InvalidEscape(2)),
        ("/a%", PathError::InvalidEscape(2)),
        ("/a%00b", PathError::EscapedNul(2)),
    ];
    for (input, expected) in err {
        assert_eq!(
            normalize_path(input),
            Err(expected),
            "normalize_path({input:?})"
        );
    }
    assert!(matches!(
        normalize_path("/already/normal"),
        Ok(std::borrow::Cow::Borrowed(_))
    ));
}

#[test]
fn uri_normalisation_keeps_query_and_authority() {
    let cases = [
        ("/a/../b?x=/../y", Some("/b?x=/../y")),
        ("/b?x=1", None),
        (
            "http://reviews:9080//admin?q",
            Some("http://reviews:9080/admin?q"),
        ),
    ];
    for (input, expected) in cases {
        let uri: http::Uri = input.parse().expect("uri");
        let got = normalize_uri(&uri).expect("normalises");
        assert_eq!(got.map(|u| u.to_string()).as_deref(), expected, "{input}");
    }
}

#[test]
fn methods_must_be_upper_case() {
    for ok in ["GET", "POST", "M-SEARCH", "PROPFIND", "X_1"] {
        assert_eq!(check_method(ok), Ok(()), "{ok}");
    }
    for bad in ["get", "Get", "pOST", "m-search"] {
        assert_eq!(check_method(bad), Err(MethodError(bad.into())), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized comparison with a reference evaluator
// ---------------------------------------------------------------------------------------------

/// The reference model: policies as plain strings, evaluated by direct interpretation of
/// Istio's documented semantics, independently of the types under test.
mod reference {
    use std::net::IpAddr;

    /// Fields of a source or operation, ANDed: (field name, values).
    pub type Fields = Vec<(&'static str, Vec<&'static str>)>;
    /// `from` or `to`: absent, or alternatives ORed.
    pub type Alternatives = Option<Vec<Fields>>;

    #[derive(Debug, Clone)]
    pub struct Policy {
        pub name: String,
        pub action: &'static str,
        pub rules: Option<Vec<Rule>>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct Rule {
        pub from: Alternatives,
        pub to: Alternatives,
        pub when: Vec<(&'static str, &'static str, Vec<&'static str>)>,
    }

    #[derive(Debug, Clone)]
    pub struct Request {
        pub namespace: &'static str,
        pub service_account: &'static str,
        pub source_ip: IpAddr,
        pub remote_ip: IpAddr,
        pub port: u16,
        pub method: &'static str,
        pub path: &'static str,
        pub host: &'static str,
        pub user: Option<&'static str>,
    }

    /// Istio's value syntax: `*` non-empty, `*x` suffix, `x*` prefix, else exact.
    fn glob(pattern: &str, value: &str) -> bool {
        if pattern == "*" {
            return !value.is_empty();
        }
        if let Some(s) = pattern.strip_prefix('*') {
            return value.ends_with(s);
        }
        if let Some(p) = pattern.strip_suffix('*') {
            return value.starts_with(p);
        }
        pattern == value
    }

    fn cidr(block: &str, ip: IpAddr) -> bool {
        let (addr, len) = block.split_once('/').unwrap_or((block, "32"));
        let (IpAddr::V4(addr), IpAddr::V4(ip)) = (addr.parse::<IpAddr>().expect("ip"), ip) else {
            return false;
        };
        let len: u32 = len.parse().expect("len");
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        u32::from(addr) & mask == u32::from(ip) & mask
    }

    fn value_of(field: &str, value: &str, r: &Request) -> bool {
        let principal = format!("cluster.local/ns/{}/sa/{}", r.namespace, r.service_account);
        match field {
            "principals" => glob(value, &principal),
            "namespaces" => glob(value, r.namespace),
            "ipBlocks" => cidr(value, r.source_ip),
            "remoteIpBlocks" => cidr(value, r.remote_ip),
            "ports" => value.parse::<u16>().ok() == Some(r.port),
            "methods" => glob(value, r.method),
            "paths" => glob(value, r.path),
            "hosts" => glob(&value.to_lowercase(), &r.host.to_lowercase()),
            other => panic!("unknown field {other}"),
        }
    }

    /// `field` or `notField`: any value (positive) / no value (negative).
    fn field_matches(field: &str, values: &[&str], r: &Request) -> bool {
        match field.strip_prefix("not") {
            Some(rest) => {
                let mut chars = rest.chars();
                let first = chars.next().expect("name").to_ascii_lowercase();
                let name: String = std::iter::once(first).chain(chars).collect();
                !values.iter().any(|v| value_of(&name, v, r))
            }
            None => values.iter().any(|v| value_of(field, v, r)),
        }
    }

    fn condition(key: &str, values: &[&str], negative: bool, r: &Request) -> bool {
        let hit = values.iter().any(|v| match key {
            "request.headers[x-user]" => r.user.is_some_and(|u| *v == "*" || glob(v, u)),
            "source.ip" => cidr(v, r.source_ip),
            "destination.port" => v.parse::<u16>().ok() == Some(r.port),
            "source.namespace" => glob(v, r.namespace),
            other => panic!("unknown key {other}"),
        });
        if negative { !hit } else { hit }
    }

    fn rule_matches(rule: &Rule, r: &Request) -> bool {
        let part = |alternatives: &Alternatives| {
            alternatives.as_ref().is_none_or(|alts| {
                alts.iter()
                    .any(|fields| fields.iter().all(|(f, v)| field_matches(f, v, r)))
            })
        };
        part(&rule.from)
            && part(&rule.to)
            && rule
                .when
                .iter()
                .all(|(key, kind, values)| condition(key, values, *kind == "notValues", r))
    }

    fn first_rule(p: &Policy, r: &Request) -> Option<usize> {
        p.rules
            .as_ref()?
            .iter()
            .position(|rule| rule_matches(rule, r))
    }

    /// The details string the waypoint would log, or `allowed`; and the audited policy ids.
    pub fn evaluate(policies: &[Policy], r: &Request) -> (String, Vec<String>) {
        let id = |p: &Policy, i: usize| format!("ns[default]-policy[{}]-rule[{i}]", p.name);
        let audited = policies
            .iter()
            .filter(|p| p.action == "AUDIT")
            .filter_map(|p| first_rule(p, r).map(|i| id(p, i)))
            .collect();
        for action in ["CUSTOM", "DENY"] {
            for p in policies.iter().filter(|p| p.action == action) {
                if let Some(i) = first_rule(p, r) {
                    return (
                        format!("rbac_access_denied_matched_policy[{}]", id(p, i)),
                        audited,
                    );
                }
            }
        }
        let allows: Vec<&Policy> = policies.iter().filter(|p| p.action == "ALLOW").collect();
        if allows.is_empty() || allows.iter().any(|p| first_rule(p, r).is_some()) {
            return ("allowed".into(), audited);
        }
        ("rbac_access_denied_matched_policy[none]".into(), audited)
    }
}

/// Renders a reference policy as the YAML a user would write (rules in flow style).
fn render(p: &reference::Policy) -> String {
    let list = |values: &[&str]| {
        let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut spec = format!("  action: {}\n", p.action);
    if p.action == "CUSTOM" {
        spec.push_str("  provider: {name: ext}\n");
    }
    if let Some(rules) = &p.rules {
        if rules.is_empty() {
            spec.push_str("  rules: []\n");
        } else {
            spec.push_str("  rules:\n");
        }
        for rule in rules {
            let mut parts = Vec::new();
            for (key, inner, section) in [
                ("from", "source", &rule.from),
                ("to", "operation", &rule.to),
            ] {
                let Some(alternatives) = section else {
                    continue;
                };
                let items: Vec<String> = alternatives
                    .iter()
                    .map(|fields| {
                        let body: Vec<String> = fields
                            .iter()
                            .map(|(f, v)| format!("{f}: {}", list(v)))
                            .collect();
                        format!("{{{inner}: {{{}}}}}", body.join(", "))
                    })
                    .collect();
                parts.push(format!("{key}: [{}]", items.join(", ")));
            }
            if !rule.when.is_empty() {
                let items: Vec<String> = rule
                    .when
                    .iter()
                    .map(|(key, kind, values)| {
                        format!("{{key: {key:?}, {kind}: {}}}", list(values))
                    })
                    .collect();
                parts.push(format!("when: [{}]", items.join(", ")));
            }
            spec.push_str(&format!("  - {{{}}}\n", parts.join(", ")));
        }
    }
    gateway_policy(&p.name, &spec)
}

fn random_policy(rng: &mut fastrand::Rng, index: usize) -> reference::Policy {
    const SOURCE: &[(&str, &[&str])] = &[
        (
            "principals",
            &[
                "cluster.local/ns/default/sa/sleep",
                "*/sa/admin",
                "cluster.local/ns/prod/*",
                "*",
            ],
        ),
        (
            "notPrincipals",
            &["cluster.local/ns/default/sa/sleep", "*/sa/admin"],
        ),
        ("namespaces", &["default", "prod", "pro*", "*"]),
        ("notNamespaces", &["default", "*od"]),
        ("ipBlocks", &["10.0.0.1", "10.0.0.0/8", "192.168.0.0/16"]),
        ("notIpBlocks", &["10.0.0.0/24", "192.168.1.1"]),
        ("remoteIpBlocks", &["172.16.0.0/12", "10.0.0.1"]),
        ("notRemoteIpBlocks", &["172.16.5.5"]),
    ];
    const OPERATION: &[(&str, &[&str])] = &[
        ("methods", &["GET", "POST", "P*"]),
        ("notMethods", &["DELETE", "GET"]),
        ("paths", &["/admin", "/admin*", "*/x", "/"]),
        ("notPaths", &["/admin*", "/public"]),
        ("ports", &["9080", "8080"]),
        ("notPorts", &["8080"]),
        (
            "hosts",
            &[
                "reviews*",
                "Reviews.default.svc.cluster.local:9080",
                "*.example.com",
            ],
        ),
        ("notHosts", &["RATINGS*"]),
    ];
    const WHEN: &[(&str, &[&str])] = &[
        ("request.headers[x-user]", &["alice", "bo*", "*"]),
        ("source.ip", &["10.0.0.0/8", "192.168.1.1"]),
        ("destination.port", &["9080", "8080"]),
        ("source.namespace", &["default", "p*"]),
    ];
    let pick = |rng: &mut fastrand::Rng, values: &[&'static str]| -> Vec<&'static str> {
        let n = rng.usize(1..=2.min(values.len()));
        let mut out: Vec<&'static str> = Vec::new();
        while out.len() < n {
            let v = values[rng.usize(..values.len())];
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    };
    let fields = |rng: &mut fastrand::Rng, table: &[(&'static str, &[&'static str])]| {
        let n = rng.usize(1..=2);
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        while out.len() < n {
            let (name, values) = table[rng.usize(..table.len())];
            if out.iter().all(|(f, _)| *f != name) {
                out.push((name, pick(rng, values)));
            }
        }
        out
    };
    let action = ["ALLOW", "ALLOW", "DENY", "AUDIT", "CUSTOM"][rng.usize(..5)];
    let rules = if action == "ALLOW" || action == "AUDIT" {
        (rng.usize(..6) > 0).then(|| rng.usize(0..=3))
    } else {
        Some(rng.usize(1..=3))
    };
    let rules = rules.map(|n| {
        (0..n)
            .map(|_| reference::Rule {
                from: (rng.bool() && action != "CUSTOM")
                    .then(|| (0..rng.usize(1..=2)).map(|_| fields(rng, SOURCE)).collect()),
                to: rng.bool().then(|| {
                    (0..rng.usize(1..=2))
                        .map(|_| fields(rng, OPERATION))
                        .collect()
                }),
                when: (0..rng.usize(0..=2))
                    .map(|_| {
                        let (key, values) = WHEN[rng.usize(..WHEN.len())];
                        let key = if action == "CUSTOM" && key == "source.namespace" {
                            "source.ip"
                        } else {
                            key
                        };
                        let values = WHEN
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map_or(values, |(_, v)| v);
                        let kind = if rng.bool() { "values" } else { "notValues" };
                        (key, kind, pick(rng, values))
                    })
                    .collect(),
            })
            .collect()
    });
    reference::Policy {
        name: format!("p{index}"),
        action,
        rules,
    }
}

fn random_request(rng: &mut fastrand::Rng) -> reference::Request {
    let pick = |rng: &mut fastrand::Rng, values: &[&'static str]| values[rng.usize(..values.len())];
    let ips = [
        "10.0.0.1",
        "10.0.0.7",
        "10.3.0.1",
        "192.168.1.1",
        "172.16.5.5",
    ];
    reference::Request {
        namespace: pick(rng, &["default", "prod", "test"]),
        service_account: pick(rng, &["sleep", "admin"]),
        source_ip: ip(pick(rng, &ips)),
        remote_ip: ip(pick(rng, &ips)),
        port: [9080, 8080][rng.usize(..2)],
        method: pick(rng, &["GET", "POST", "PUT", "DELETE"]),
        path: pick(rng, &["/admin", "/admin/x", "/x", "/public", "/", "/a/x"]),
        host: pick(
            rng,
            &[
                "reviews.default.svc.cluster.local:9080",
                "REVIEWS",
                "ratings:9080",
                "api.example.com",
            ],
        ),
        user: [None, Some("alice"), Some("bob"), Some("")][rng.usize(..4)],
    }
}

fn to_req(r: &reference::Request) -> Req {
    let mut req = Req::new().from(r.namespace, r.service_account);
    req.source_ip = r.source_ip;
    req.remote_ip = r.remote_ip;
    req.destination.set_port(r.port);
    req.method = r.method.into();
    req.path = r.path.into();
    req.host = r.host.into();
    if let Some(user) = r.user {
        req = req.header("x-user", user);
    }
    req
}

#[test]
fn matches_the_reference_evaluator() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_a07e);
    let mut denied = 0;
    let mut allowed = 0;
    for round in 0..400 {
        let policies: Vec<reference::Policy> = (0..rng.usize(1..=4))
            .map(|i| random_policy(&mut rng, i))
            .collect();
        let yaml: Vec<String> = policies.iter().map(render).collect();
        let yaml = yaml.join("---\n");
        let (config, errors) = parse(&yaml);
        assert_eq!(errors, vec![], "round {round}:\n{yaml}");
        assert_eq!(
            config.authorization_policies.len(),
            policies.len(),
            "{yaml}"
        );
        let t = compile(&config, &services(), &options());
        for _ in 0..25 {
            let r = random_request(&mut rng);
            let (expected, expected_audit) = reference::evaluate(&policies, &r);
            let req = to_req(&r);
            let d = evaluate(t.policies(REVIEWS), &req.attributes());
            let got = d
                .response_code_details()
                .unwrap_or_else(|| "allowed".into());
            assert_eq!(got, expected, "round {round} request {r:?}\n{yaml}");
            let audit: Vec<String> = d.audited.iter().map(ToString::to_string).collect();
            assert_eq!(audit, expected_audit, "round {round} request {r:?}\n{yaml}");
            if d.allowed {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    // Both outcomes are well represented, so the comparison means something.
    assert!(
        allowed > 1500 && denied > 1500,
        "allowed {allowed}, denied {denied}"
    );
}

#[test]
fn policies_are_shared_not_copied() {
    let t = table(&gateway_policy("p", "  rules: [{}]\n"));
    let a = &t.policies(REVIEWS)[0];
    let b = &t.policies("ratings.default.svc.cluster.local")[0];
    assert!(Arc::ptr_eq(a, b));
}

/// CUSTOM policies naming two providers: by default (as istiod) every request to the service
/// is denied and a warning names the providers; with multiple providers allowed, each
/// matching provider is asked, in policy name order, once.
#[test]
fn several_custom_providers_deny_unless_allowed() {
    let yaml = [
        gateway_policy(
            "b-second",
            "  action: CUSTOM\n  provider: {name: authz-b}\n  rules: [{to: [{operation: {paths: [\"/b*\", \"/both*\"]}}]}]\n",
        ),
        gateway_policy(
            "a-first",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/a*\", \"/both*\"]}}]}]\n",
        ),
        gateway_policy(
            "a-again",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/both*\"]}}]}]\n",
        ),
    ]
    .join("---\n");
    let (config, _) = parse(&yaml);

    let t = compile(&config, &services(), &options());
    for path in ["/a", "/b", "/both", "/neither"] {
        let d = evaluate(t.policies(REVIEWS), &Req::new().path(path).attributes());
        assert!(d.custom.is_empty(), "{path}");
        assert!(matches!(d.reason, Reason::Invalid(_)), "{path}");
        assert_eq!(
            d.response_code_details().as_deref(),
            Some(
                "rbac_access_denied_matched_policy[ns[default]-policy[custom-provider-conflict]-invalid]"
            ),
            "{path}"
        );
    }
    let warnings: Vec<String> = t.warnings().collect();
    let expected: Vec<String> = services()
        .iter()
        .map(|s| format!(
            "only 1 provider can be used per workload, found multiple providers: [authz-a authz-b]: every request to {} is denied (CUSTOM AuthorizationPolicies name several extension providers; PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is off)",
            s.hostname
        ))
        .collect();
    // The providers are not defined in this mesh config either: one warning per policy, then
    // the conflicts.
    assert_eq!(warnings[warnings.len() - expected.len()..], expected[..]);

    let mut multiple = options();
    multiple.multiple_custom_providers = true;
    let t = compile(&config, &services(), &multiple);
    // (path, the policies whose providers are asked, in order)
    let cases: &[(&str, &[&str])] = &[
        ("/a", &["a-first"]),
        ("/b", &["b-second"]),
        ("/both", &["a-again", "b-second"]),
        ("/neither", &[]),
    ];
    for (path, asked) in cases {
        let d = evaluate(t.policies(REVIEWS), &Req::new().path(path).attributes());
        let names: Vec<&str> = d.custom.iter().map(|m| m.policy.name.as_str()).collect();
        assert_eq!(names, *asked, "{path}");
        assert_eq!(d.allowed, asked.is_empty(), "{path}");
    }
    assert!(!t.warnings().any(|w| w.contains("only 1 provider")));
}

/// One provider named by several CUSTOM policies is no conflict.
#[test]
fn one_custom_provider_in_several_policies_is_asked_once() {
    let yaml = [
        gateway_policy(
            "one",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/x\"]}}]}]\n",
        ),
        gateway_policy(
            "two",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{}]\n",
        ),
    ]
    .join("---\n");
    let t = table(&yaml);
    let d = evaluate(t.policies(REVIEWS), &Req::new().path("/x").attributes());
    assert_eq!(d.custom.len(), 1);
    assert_eq!(d.custom[0].policy.name, "one");
    assert!(!t.warnings().any(|w| w.contains("only 1 provider")));
}
