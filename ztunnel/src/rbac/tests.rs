//! Tests for L4 authorization: table tests per field, structure, evaluation order, YAML and
//! protobuf conversion, and a property test against a naive reference evaluator.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proto::istio::security as pb;

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn id(td: &str, ns: &str, sa: &str) -> hbone::Identity {
    hbone::Identity::new(td, ns, sa).expect("valid test identity")
}

fn conn(identity: Option<hbone::Identity>, src: &str, dst: &str) -> Connection {
    Connection {
        src_identity: identity,
        src_ip: src.parse().expect("valid test ip"),
        dst: dst.parse().expect("valid test socket address"),
    }
}

/// 127.0.0.1 → 127.0.0.2:8080 without identity.
fn plaintext() -> Connection {
    conn(None, "127.0.0.1", "127.0.0.2:8080")
}

/// 127.0.0.1 → 127.0.0.2:8080 as td/ns/namespace/sa/account.
fn tls() -> Connection {
    conn(
        Some(id("td", "namespace", "account")),
        "127.0.0.1",
        "127.0.0.2:8080",
    )
}

/// 127.0.0.3 → 127.0.0.4:9090 as td-alt/ns/ns-alt/sa/sa-alt.
fn tls_alt() -> Connection {
    conn(
        Some(id("td-alt", "ns-alt", "sa-alt")),
        "127.0.0.3",
        "127.0.0.4:9090",
    )
}

/// fd00::1 → [fd00::2]:8080 as td/ns/namespace/sa/account.
fn tls_v6() -> Connection {
    conn(
        Some(id("td", "namespace", "account")),
        "fd00::1",
        "[fd00::2]:8080",
    )
}

/// ::ffff:127.0.0.1 → [::ffff:127.0.0.2]:8080, plaintext (a dual-stack listener's view).
fn plaintext_mapped() -> Connection {
    conn(None, "::ffff:127.0.0.1", "[::ffff:127.0.0.2]:8080")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("valid test prefix")
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn sa(ns: &str, sa: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

fn policy(name: &str, action: Action, rules: Vec<Vec<Vec<Match>>>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action,
        rules: rules
            .into_iter()
            .map(|clauses| Rule {
                clauses: clauses
                    .into_iter()
                    .map(|matches| Clause { matches })
                    .collect(),
            })
            .collect(),
        dry_run: false,
    }
}

fn single(m: Match) -> Authorization {
    policy("single", Action::Allow, vec![vec![vec![m]]])
}

// ---------------------------------------------------------------------------------------------
// Match fields
// ---------------------------------------------------------------------------------------------

/// One named case: a match and the expected result for each named connection.
struct FieldCase {
    name: &'static str,
    m: Match,
    /// Expected result for [plaintext, tls, tls_alt, tls_v6, plaintext_mapped].
    expect: [bool; 5],
}

#[test]
fn match_fields() {
    let conns = [
        ("plaintext", plaintext()),
        ("tls", tls()),
        ("tls_alt", tls_alt()),
        ("tls_v6", tls_v6()),
        ("plaintext_mapped", plaintext_mapped()),
    ];
    let cases = vec![
        FieldCase {
            name: "namespaces exact",
            m: Match {
                namespaces: vec![exact("namespace")],
                ..Default::default()
            },
            expect: [false, true, false, true, false],
        },
        FieldCase {
            name: "not_namespaces exact",
            m: Match {
                not_namespaces: vec![exact("namespace")],
                ..Default::default()
            },
            expect: [true, false, true, false, true],
        },
        FieldCase {
            name: "namespaces presence",
            m: Match {
                namespaces: vec![StringMatch::Presence],
                ..Default::default()
            },
            expect: [false, true, true, true, false],
        },
        FieldCase {
            name: "namespaces empty prefix fails without identity",
            m: Match {
                namespaces: vec![StringMatch::Prefix(String::new())],
                ..Default::default()
            },
            expect: [false, true, true, true, false],
        },
        FieldCase {
            name: "namespaces values are or-ed",
            m: Match {
                namespaces: vec![exact("nope"), StringMatch::Suffix("-alt".into())],
                ..Default::default()
            },
            expect: [false, false, true, false, false],
        },
        FieldCase {
            name: "principals exact without spiffe prefix",
            m: Match {
                principals: vec![exact("td/ns/namespace/sa/account")],
                ..Default::default()
            },
            expect: [false, true, false, true, false],
        },
        FieldCase {
            name: "principals exact with spiffe prefix never matches",
            m: Match {
                principals: vec![exact("spiffe://td/ns/namespace/sa/account")],
                ..Default::default()
            },
            expect: [false; 5],
        },
        FieldCase {
            name: "principals prefix trust domain",
            m: Match {
                principals: vec![StringMatch::Prefix("td-alt/".into())],
                ..Default::default()
            },
            expect: [false, false, true, false, false],
        },
        FieldCase {
            name: "principals suffix service account",
            m: Match {
                principals: vec![StringMatch::Suffix("/sa/account".into())],
                ..Default::default()
            },
            expect: [false, true, false, true, false],
        },
        FieldCase {
            name: "principals presence",
            m: Match {
                principals: vec![StringMatch::Presence],
                ..Default::default()
            },
            expect: [false, true, true, true, false],
        },
        FieldCase {
            name: "principals empty prefix fails without identity",
            m: Match {
                principals: vec![StringMatch::Prefix(String::new())],
                ..Default::default()
            },
            expect: [false, true, true, true, false],
        },
        FieldCase {
            name: "not_principals exact",
            m: Match {
                not_principals: vec![exact("td/ns/namespace/sa/account")],
                ..Default::default()
            },
            expect: [true, false, true, false, true],
        },
        FieldCase {
            name: "not_principals presence matches only plaintext",
            m: Match {
                not_principals: vec![StringMatch::Presence],
                ..Default::default()
            },
            expect: [true, false, false, false, true],
        },
        FieldCase {
            name: "service_accounts",
            m: Match {
                service_accounts: vec![sa("namespace", "account")],
                ..Default::default()
            },
            expect: [false, true, false, true, false],
        },
        FieldCase {
            name: "service_accounts needs both namespace and account",
            m: Match {
                service_accounts: vec![sa("namespace", "sa-alt"), sa("ns-alt", "account")],
                ..Default::default()
            },
            expect: [false; 5],
        },
        FieldCase {
            name: "not_service_accounts",
            m: Match {
                not_service_accounts: vec![sa("namespace", "account")],
                ..Default::default()
            },
            expect: [true, false, true, false, true],
        },
        FieldCase {
            name: "source_ips /32",
            m: Match {
                source_ips: vec![net("127.0.0.1/32")],
                ..Default::default()
            },
            expect: [true, true, false, false, true],
        },
        FieldCase {
            name: "not_source_ips /32",
            m: Match {
                not_source_ips: vec![net("127.0.0.1/32")],
                ..Default::default()
            },
            expect: [false, false, true, true, false],
        },
        FieldCase {
            name: "source_ips v6 /64",
            m: Match {
                source_ips: vec![net("fd00::/64")],
                ..Default::default()
            },
            expect: [false, false, false, true, false],
        },
        FieldCase {
            name: "source_ips v4 any does not contain v6",
            m: Match {
                source_ips: vec![net("0.0.0.0/0")],
                ..Default::default()
            },
            expect: [true, true, true, false, true],
        },
        FieldCase {
            name: "destination_ips /32",
            m: Match {
                destination_ips: vec![net("127.0.0.2/32")],
                ..Default::default()
            },
            expect: [true, true, false, false, true],
        },
        FieldCase {
            name: "not_destination_ips /32",
            m: Match {
                not_destination_ips: vec![net("127.0.0.2/32")],
                ..Default::default()
            },
            expect: [false, false, true, true, false],
        },
        FieldCase {
            name: "destination_ips cidr /24 with host bits",
            m: Match {
                destination_ips: vec![net("127.0.0.1/24")],
                ..Default::default()
            },
            expect: [true, true, true, false, true],
        },
        FieldCase {
            name: "not_destination_ips v6 /120",
            m: Match {
                not_destination_ips: vec![net("fd00::/120")],
                ..Default::default()
            },
            expect: [true, true, true, false, true],
        },
        FieldCase {
            name: "destination_ports",
            m: Match {
                destination_ports: vec![8080],
                ..Default::default()
            },
            expect: [true, true, false, true, true],
        },
        FieldCase {
            name: "not_destination_ports",
            m: Match {
                not_destination_ports: vec![8080],
                ..Default::default()
            },
            expect: [false, false, true, false, false],
        },
        FieldCase {
            name: "destination_ports values are or-ed",
            m: Match {
                destination_ports: vec![1, 9090],
                ..Default::default()
            },
            expect: [false, false, true, false, false],
        },
        FieldCase {
            name: "fields are and-ed",
            m: Match {
                namespaces: vec![exact("namespace")],
                destination_ports: vec![8080],
                source_ips: vec![net("127.0.0.0/8")],
                ..Default::default()
            },
            expect: [false, true, false, false, false],
        },
        FieldCase {
            name: "positive and negative of one field",
            m: Match {
                destination_ips: vec![net("127.0.0.0/8")],
                not_destination_ips: vec![net("127.0.0.4/32")],
                ..Default::default()
            },
            expect: [true, true, false, false, true],
        },
        FieldCase {
            name: "empty match never matches",
            m: Match::default(),
            expect: [false; 5],
        },
    ];
    for case in cases {
        let pol = single(case.m);
        for ((conn_name, c), want) in conns.iter().zip(case.expect) {
            assert_eq!(
                pol.matches(c),
                want,
                "case {:?}, connection {conn_name} ({c})",
                case.name
            );
        }
    }
}

#[test]
fn string_match_kinds() {
    let cases: &[(&str, StringMatch, &str, bool)] = &[
        ("exact match", exact("foo"), "foo", true),
        ("exact mismatch", exact("foo"), "fooo", false),
        ("exact empty value", exact("foo"), "", false),
        ("exact empty pattern", exact(""), "", true),
        (
            "prefix match",
            StringMatch::Prefix("foo".into()),
            "foobar",
            true,
        ),
        (
            "prefix mismatch",
            StringMatch::Prefix("foo".into()),
            "barfoo",
            false,
        ),
        (
            "prefix empty value",
            StringMatch::Prefix("foo".into()),
            "",
            false,
        ),
        (
            "suffix match",
            StringMatch::Suffix("foo".into()),
            "barfoo",
            true,
        ),
        (
            "suffix mismatch",
            StringMatch::Suffix("foo".into()),
            "foobar",
            false,
        ),
        (
            "suffix empty value",
            StringMatch::Suffix("foo".into()),
            "",
            false,
        ),
        ("presence match", StringMatch::Presence, "x", true),
        ("presence empty value", StringMatch::Presence, "", false),
    ];
    for (name, m, value, want) in cases {
        assert_eq!(m.matches(value), *want, "case {name:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Structure: rules OR, clauses AND, matches OR
// ---------------------------------------------------------------------------------------------

#[test]
fn structure() {
    let port = |p: u16| Match {
        destination_ports: vec![p],
        ..Default::default()
    };
    let ns = |n: &str| Match {
        namespaces: vec![exact(n)],
        ..Default::default()
    };
    /// Rule → clause → match, as in the YAML form.
    type Rules = Vec<Vec<Vec<Match>>>;
    let cases: Vec<(&str, Rules, bool)> = vec![
        ("no rules matches nothing", vec![], false),
        ("rule without clauses matches", vec![vec![]], true),
        ("clause without matches matches", vec![vec![vec![]]], true),
        (
            "clause with only an empty match fails",
            vec![vec![vec![Match::default()]]],
            false,
        ),
        (
            "empty match is skipped among others",
            vec![vec![vec![Match::default(), port(8080)]]],
            true,
        ),
        (
            "matches in a clause are or-ed",
            vec![vec![vec![port(1), port(8080)]]],
            true,
        ),
        (
            "clauses are and-ed (pass)",
            vec![vec![vec![port(8080)], vec![ns("namespace")]]],
            true,
        ),
        (
            "clauses are and-ed (fail)",
            vec![vec![vec![port(8080)], vec![ns("other")]]],
            false,
        ),
        (
            "rules are or-ed",
            vec![vec![vec![ns("other")]], vec![vec![port(8080)]]],
            true,
        ),
        (
            "no rule matches",
            vec![vec![vec![ns("other")]], vec![vec![port(1)]]],
            false,
        ),
    ];
    for (name, rules, want) in cases {
        let pol = policy("p", Action::Allow, rules);
        assert_eq!(pol.matches(&tls()), want, "case {name:?}");
    }
}

#[test]
fn key_is_namespace_slash_name() {
    let mut p = policy("name", Action::Deny, vec![]);
    assert_eq!(p.key(), "ns/name");
    p.namespace = String::new();
    assert_eq!(p.key(), "/name");
}

// ---------------------------------------------------------------------------------------------
// Evaluation order
// ---------------------------------------------------------------------------------------------

fn port_policy(name: &str, action: Action, port: u16) -> Authorization {
    policy(
        name,
        action,
        vec![vec![vec![Match {
            destination_ports: vec![port],
            ..Default::default()
        }]]],
    )
}

fn dry(mut p: Authorization) -> Authorization {
    p.dry_run = true;
    p
}

#[test]
fn evaluation_order() {
    struct Case {
        name: &'static str,
        policies: Vec<Authorization>,
        missing: Vec<String>,
        reason: Reason,
        audited: Vec<&'static str>,
        dry_run: Vec<(&'static str, bool)>,
    }
    let c = |name, policies, reason| Case {
        name,
        policies,
        missing: vec![],
        reason,
        audited: vec![],
        dry_run: vec![],
    };
    let cases = vec![
        c("no policies allows", vec![], Reason::NoPolicies),
        c(
            "matching deny denies",
            vec![port_policy("d", Action::Deny, 8080)],
            Reason::DeniedBy("ns/d".into()),
        ),
        c(
            "non-matching deny allows",
            vec![port_policy("d", Action::Deny, 1)],
            Reason::NoAllowPolicies,
        ),
        c(
            "deny beats allow",
            vec![
                port_policy("a", Action::Allow, 8080),
                port_policy("d", Action::Deny, 8080),
            ],
            Reason::DeniedBy("ns/d".into()),
        ),
        c(
            "first matching deny is named",
            vec![
                port_policy("d1", Action::Deny, 1),
                port_policy("d2", Action::Deny, 8080),
                port_policy("d3", Action::Deny, 8080),
            ],
            Reason::DeniedBy("ns/d2".into()),
        ),
        c(
            "matching allow allows",
            vec![
                port_policy("a1", Action::Allow, 1),
                port_policy("a2", Action::Allow, 8080),
            ],
            Reason::AllowedBy("ns/a2".into()),
        ),
        c(
            "allow with no match denies",
            vec![port_policy("a", Action::Allow, 1)],
            Reason::NotAllowed,
        ),
        c(
            "allow policy without rules denies everything",
            vec![policy("allow-nothing", Action::Allow, vec![])],
            Reason::NotAllowed,
        ),
        Case {
            name: "dry-run deny is ignored but reported",
            policies: vec![dry(port_policy("d", Action::Deny, 8080))],
            missing: vec![],
            reason: Reason::NoPolicies,
            audited: vec![],
            dry_run: vec![("ns/d", true)],
        },
        Case {
            name: "dry-run allow does not make allow policies exist",
            policies: vec![dry(port_policy("a", Action::Allow, 1))],
            missing: vec![],
            reason: Reason::NoPolicies,
            audited: vec![],
            dry_run: vec![("ns/a", false)],
        },
        Case {
            name: "audit is reported and ignored",
            policies: vec![
                port_policy("au", Action::Audit, 8080),
                port_policy("au2", Action::Audit, 1),
            ],
            missing: vec![],
            reason: Reason::NoPolicies,
            audited: vec!["ns/au"],
            dry_run: vec![],
        },
        Case {
            name: "audit does not satisfy allow",
            policies: vec![
                port_policy("au", Action::Audit, 8080),
                port_policy("a", Action::Allow, 1),
            ],
            missing: vec![],
            reason: Reason::NotAllowed,
            audited: vec!["ns/au"],
            dry_run: vec![],
        },
        Case {
            name: "missing policy denies",
            policies: vec![port_policy("a", Action::Allow, 8080)],
            missing: vec!["ns/gone".into()],
            reason: Reason::MissingPolicy("ns/gone".into()),
            audited: vec![],
            dry_run: vec![],
        },
        Case {
            name: "missing policy denies with no policies",
            policies: vec![],
            missing: vec!["ns/gone".into(), "ns/gone2".into()],
            reason: Reason::MissingPolicy("ns/gone".into()),
            audited: vec![],
            dry_run: vec![],
        },
        Case {
            name: "matching deny is named before a missing policy",
            policies: vec![port_policy("d", Action::Deny, 8080)],
            missing: vec!["ns/gone".into()],
            reason: Reason::DeniedBy("ns/d".into()),
            audited: vec![],
            dry_run: vec![],
        },
    ];
    for case in cases {
        let d = evaluate_with_missing(&case.policies, &case.missing, &tls());
        assert_eq!(d.reason, case.reason, "case {:?}", case.name);
        assert_eq!(d.allowed, case.reason.is_allowed(), "case {:?}", case.name);
        assert_eq!(d.audited, case.audited, "case {:?}", case.name);
        let dry: Vec<(&str, bool)> = d
            .dry_run
            .iter()
            .map(|o| (o.policy.as_str(), o.matched))
            .collect();
        assert_eq!(dry, case.dry_run, "case {:?}", case.name);
        if case.missing.is_empty() {
            assert_eq!(evaluate(&case.policies, &tls()), d, "case {:?}", case.name);
        }
    }
}

/// Istio's `istio-system/istio_converted_static_strict` (STRICT PeerAuthentication).
#[test]
fn static_strict_denies_plaintext_only() {
    let strict = Authorization {
        name: "istio_converted_static_strict".into(),
        namespace: "istio-system".into(),
        scope: Scope::Global,
        action: Action::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![StringMatch::Presence],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    };
    let d = evaluate([&strict], &plaintext());
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        Reason::DeniedBy("istio-system/istio_converted_static_strict".into())
    );
    assert!(evaluate([&strict], &tls()).allowed);
    assert!(
        evaluate([&strict], &plaintext_mapped())
            .reason
            .policy()
            .is_some()
    );
}

#[test]
fn reason_labels_and_display() {
    let d = evaluate_with_missing(
        [&dry(port_policy("d", Action::Deny, 8080))],
        &["ns/x".to_string()],
        &tls(),
    );
    assert_eq!(d.reason.as_str(), "missing_policy");
    assert_eq!(
        d.to_string(),
        "denied: policy ns/x is not known; dry-run deny ns/d matched"
    );
    assert_eq!(
        tls().to_string(),
        "127.0.0.1(spiffe://td/ns/namespace/sa/account)->127.0.0.2:8080"
    );
    assert_eq!(
        plaintext().to_string(),
        "127.0.0.1(plaintext)->127.0.0.2:8080"
    );
}

// ---------------------------------------------------------------------------------------------
// YAML (local config) form
// ---------------------------------------------------------------------------------------------

/// The `policies:` section of upstream ztunnel's `examples/localhost.yaml`.
const UPSTREAM_EXAMPLE: &str = r#"
- action: Allow
  rules:
  - - - notDestinationPorts:
        - 9999
  name: deny-9999
  namespace: default
  scope: Namespace
"#;

#[test]
fn yaml_upstream_example_parses() {
    let policies: Vec<Authorization> =
        serde_yaml_ng::from_str(UPSTREAM_EXAMPLE).expect("upstream example parses");
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p.key(), "default/deny-9999");
    assert_eq!(p.scope, Scope::Namespace);
    assert_eq!(p.action, Action::Allow);
    assert!(!p.dry_run);
    assert_eq!(
        p.rules,
        vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_destination_ports: vec![9999],
                    ..Default::default()
                }]
            }]
        }]
    );
    assert!(evaluate(&policies, &conn(None, "10.0.0.1", "10.0.0.2:80")).allowed);
    assert_eq!(
        evaluate(&policies, &conn(None, "10.0.0.1", "10.0.0.2:9999")).reason,
        Reason::NotAllowed
    );
}

#[test]
fn yaml_every_field() {
    let yaml = r#"
name: full
namespace: ns
scope: WorkloadSelector
action: Deny
dryRun: true
rules:
- - - namespaces: [{Exact: a}]
      notNamespaces: [{Prefix: kube-}]
      principals: [{Suffix: /sa/x}, Presence, {Presence: []}, {Presence: null}, {Presence: {}}, !Presence [], !Exact e]
      notPrincipals: [{Exact: td/ns/a/sa/y}]
      serviceAccounts: [{namespace: a, serviceAccount: x}]
      notServiceAccounts: [{namespace: b, serviceAccount: y}]
      sourceIps: ["10.0.0.0/8", "fd00::/64"]
      notSourceIps: ["10.1.0.0/16"]
      destinationIps: ["192.168.0.1/32"]
      notDestinationIps: ["192.168.0.2/32"]
      destinationPorts: [80, 443]
      notDestinationPorts: [9999]
    - destinationPorts: [1]
  - []
- []
"#;
    let p: Authorization = serde_yaml_ng::from_str(yaml).expect("full policy parses");
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Deny);
    assert!(p.dry_run);
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.rules[0].clauses.len(), 2);
    assert_eq!(p.rules[0].clauses[0].matches.len(), 2);
    assert!(p.rules[0].clauses[1].matches.is_empty());
    assert!(p.rules[1].clauses.is_empty());
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(m.namespaces, vec![exact("a")]);
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("kube-".into())]);
    assert_eq!(
        m.principals,
        vec![
            StringMatch::Suffix("/sa/x".into()),
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Presence,
            StringMatch::Presence,
            exact("e"),
        ]
    );
    assert_eq!(m.service_accounts, vec![sa("a", "x")]);
    assert_eq!(m.not_service_accounts, vec![sa("b", "y")]);
    assert_eq!(m.source_ips, vec![net("10.0.0.0/8"), net("fd00::/64")]);
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![9999]);

    // Round trip through the serialized (config_dump) form, YAML and JSON.
    let yaml_again = serde_yaml_ng::to_string(&p).expect("serializes");
    let back: Authorization = serde_yaml_ng::from_str(&yaml_again).expect("round trip parses");
    assert_eq!(back, p);
}

#[test]
fn yaml_audit_action_and_serialized_form() {
    let p = Authorization {
        name: "a".into(),
        namespace: "ns".into(),
        scope: Scope::Global,
        action: Action::Audit,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    principals: vec![StringMatch::Presence, exact("x")],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    };
    let yaml = serde_yaml_ng::to_string(&p).expect("serializes");
    assert!(yaml.contains("action: Audit"), "{yaml}");
    assert!(yaml.contains("dryRun: false"), "{yaml}");
    assert!(yaml.contains("Presence: []"), "{yaml}");
    assert!(yaml.contains("Exact: x"), "{yaml}");
    // Empty fields are omitted, as upstream does.
    assert!(!yaml.contains("namespaces"), "{yaml}");
    let back: Authorization = serde_yaml_ng::from_str(&yaml).expect("parses back");
    assert_eq!(back, p);
}

#[test]
fn yaml_rejections() {
    let cases: &[(&str, &str)] = &[
        (
            "empty name",
            "{name: '', namespace: n, scope: Global, action: Allow, rules: []}",
        ),
        (
            "missing action",
            "{name: p, namespace: n, scope: Global, rules: []}",
        ),
        (
            "unknown action",
            "{name: p, namespace: n, scope: Global, action: Custom, rules: []}",
        ),
        (
            "lowercase action",
            "{name: p, namespace: n, scope: Global, action: allow, rules: []}",
        ),
        (
            "unknown scope",
            "{name: p, namespace: n, scope: Cluster, action: Allow, rules: []}",
        ),
        (
            "unknown policy field",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [], extra: 1}",
        ),
        (
            "unknown match field",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{notDestinationPort: [1]}]]]}",
        ),
        (
            "bad cidr",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{sourceIps: ['10.0.0.0/33']}]]]}",
        ),
        (
            "port too large",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{destinationPorts: [70000]}]]]}",
        ),
        (
            "unknown string match kind",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{principals: [{Regex: x}]}]]]}",
        ),
        (
            "two string match kinds",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{principals: [{Exact: x, Prefix: y}]}]]]}",
        ),
        (
            "bare non-presence string",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{principals: [x]}]]]}",
        ),
        (
            "presence with a value",
            "{name: p, namespace: n, scope: Global, action: Allow, rules: [[[{principals: [{Presence: [1]}]}]]]}",
        ),
    ];
    for (name, yaml) in cases {
        assert!(
            serde_yaml_ng::from_str::<Authorization>(yaml).is_err(),
            "case {name:?} should be rejected"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf conversion
// ---------------------------------------------------------------------------------------------

fn pb_string(t: pb::string_match::MatchType) -> pb::StringMatch {
    pb::StringMatch {
        match_type: Some(t),
    }
}

fn pb_policy(m: pb::Match) -> pb::Authorization {
    pb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: pb::Scope::WorkloadSelector as i32,
        action: pb::Action::Deny as i32,
        rules: vec![pb::Rule {
            clauses: vec![
                pb::Clause { matches: vec![] },
                pb::Clause {
                    matches: vec![pb::Match::default(), m],
                },
            ],
        }],
        dry_run: true,
        extensions: vec![],
    }
}

#[test]
fn proto_conversion() {
    use pb::string_match::MatchType;
    let m = pb::Match {
        namespaces: vec![pb_string(MatchType::Exact("a".into()))],
        not_namespaces: vec![pb_string(MatchType::Prefix("b".into()))],
        principals: vec![pb_string(MatchType::Suffix("c".into()))],
        not_principals: vec![pb_string(MatchType::Presence(()))],
        source_ips: vec![pb::Address {
            address: vec![10, 0, 0, 0],
            length: 8,
        }],
        not_source_ips: vec![pb::Address {
            address: "fd00::"
                .parse::<std::net::Ipv6Addr>()
                .expect("v6")
                .octets()
                .to_vec(),
            length: 64,
        }],
        destination_ips: vec![pb::Address {
            address: vec![1, 2, 3, 4],
            length: 32,
        }],
        not_destination_ips: vec![pb::Address {
            address: vec![0; 16],
            length: 0,
        }],
        destination_ports: vec![80],
        not_destination_ports: vec![65535],
        service_accounts: vec![pb::ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "x".into(),
        }],
        not_service_accounts: vec![pb::ServiceAccountMatch {
            namespace: "b".into(),
            service_account: "y".into(),
        }],
        extensions: vec![],
    };
    let p = Authorization::try_from(pb_policy(m)).expect("converts");
    assert_eq!(p.key(), "ns/p");
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Deny);
    assert!(p.dry_run);
    assert_eq!(p.rules.len(), 1);
    assert!(p.rules[0].clauses[0].matches.is_empty());
    assert_eq!(p.rules[0].clauses[1].matches[0], Match::default());
    let want = Match {
        namespaces: vec![exact("a")],
        not_namespaces: vec![StringMatch::Prefix("b".into())],
        principals: vec![StringMatch::Suffix("c".into())],
        not_principals: vec![StringMatch::Presence],
        service_accounts: vec![sa("a", "x")],
        not_service_accounts: vec![sa("b", "y")],
        source_ips: vec![net("10.0.0.0/8")],
        not_source_ips: vec![net("fd00::/64")],
        destination_ips: vec![net("1.2.3.4/32")],
        not_destination_ips: vec![net("::/0")],
        destination_ports: vec![80],
        not_destination_ports: vec![65535],
    };
    assert_eq!(p.rules[0].clauses[1].matches[1], want);

    // Scopes and actions.
    for (scope, want) in [
        (pb::Scope::Global, Scope::Global),
        (pb::Scope::Namespace, Scope::Namespace),
        (pb::Scope::WorkloadSelector, Scope::WorkloadSelector),
    ] {
        let mut raw = pb_policy(pb::Match::default());
        raw.scope = scope as i32;
        assert_eq!(Authorization::try_from(raw).map(|p| p.scope), Ok(want));
    }
    let mut raw = pb_policy(pb::Match::default());
    raw.action = pb::Action::Allow as i32;
    assert_eq!(
        Authorization::try_from(raw).map(|p| p.action),
        Ok(Action::Allow)
    );
}

#[test]
fn proto_conversion_errors() {
    use pb::string_match::MatchType;
    let at = |field| FieldPath {
        rule: 0,
        clause: 1,
        matcher: 1,
        field,
        index: 0,
    };
    let addr = |address: Vec<u8>, length| pb::Address { address, length };
    let cases: Vec<(&str, pb::Authorization, ConvertError)> = vec![
        (
            "empty name",
            pb::Authorization {
                name: String::new(),
                ..pb_policy(pb::Match::default())
            },
            ConvertError::EmptyName,
        ),
        (
            "unknown action (e.g. a future AUDIT)",
            pb::Authorization {
                action: 2,
                ..pb_policy(pb::Match::default())
            },
            ConvertError::UnknownAction(2),
        ),
        (
            "negative action",
            pb::Authorization {
                action: -1,
                ..pb_policy(pb::Match::default())
            },
            ConvertError::UnknownAction(-1),
        ),
        (
            "unknown scope",
            pb::Authorization {
                scope: 7,
                ..pb_policy(pb::Match::default())
            },
            ConvertError::UnknownScope(7),
        ),
        (
            "address of 5 bytes",
            pb_policy(pb::Match {
                source_ips: vec![addr(vec![1, 2, 3, 4, 5], 8)],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("source_ips"),
                error: FieldError::AddressLength(5),
            },
        ),
        (
            "empty address",
            pb_policy(pb::Match {
                not_destination_ips: vec![addr(vec![], 0)],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("not_destination_ips"),
                error: FieldError::AddressLength(0),
            },
        ),
        (
            "v4 prefix of 33",
            pb_policy(pb::Match {
                destination_ips: vec![addr(vec![1, 2, 3, 4], 33)],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("destination_ips"),
                error: FieldError::PrefixLength {
                    address: "1.2.3.4".parse().expect("ip"),
                    length: 33,
                },
            },
        ),
        (
            "v6 prefix beyond u8",
            pb_policy(pb::Match {
                not_source_ips: vec![addr(vec![0; 16], 300)],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("not_source_ips"),
                error: FieldError::PrefixLength {
                    address: "::".parse().expect("ip"),
                    length: 300,
                },
            },
        ),
        (
            "port out of range",
            pb_policy(pb::Match {
                not_destination_ports: vec![65536],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("not_destination_ports"),
                error: FieldError::PortOutOfRange(65536),
            },
        ),
        (
            "string match without type",
            pb_policy(pb::Match {
                principals: vec![pb::StringMatch { match_type: None }],
                ..Default::default()
            }),
            ConvertError::Field {
                at: at("principals"),
                error: FieldError::EmptyStringMatch,
            },
        ),
        (
            "second value is reported with its index",
            pb_policy(pb::Match {
                not_namespaces: vec![
                    pb_string(MatchType::Exact("a".into())),
                    pb::StringMatch { match_type: None },
                ],
                ..Default::default()
            }),
            ConvertError::Field {
                at: FieldPath {
                    index: 1,
                    ..at("not_namespaces")
                },
                error: FieldError::EmptyStringMatch,
            },
        ),
    ];
    for (name, raw, want) in cases {
        assert_eq!(Authorization::try_from(raw), Err(want), "case {name:?}");
    }
    let err = Authorization::try_from(pb_policy(pb::Match {
        destination_ports: vec![70000],
        ..Default::default()
    }))
    .expect_err("rejected");
    assert_eq!(
        err.to_string(),
        "rules[0].clauses[1].matches[1].destination_ports[0]: port 70000 is out of range"
    );
}

// ---------------------------------------------------------------------------------------------
// Property test against a naive reference evaluator
// ---------------------------------------------------------------------------------------------

/// A deliberately naive, independent evaluator: fields are read generically as
/// (attribute, negated, values), strings and prefixes are compared byte by byte, identity parts
/// are cut out of the SPIFFE URI by hand and CIDRs are checked with explicit bit masks.
mod reference {
    use super::*;

    #[derive(Clone, Copy)]
    enum Attr {
        Namespace,
        Principal,
        ServiceAccount,
        SourceIp,
        DestinationIp,
        DestinationPort,
    }

    enum Value<'a> {
        Str(&'a StringMatch),
        Sa(&'a ServiceAccountMatch),
        Net(&'a IpNet),
        Port(u16),
    }

    fn table(m: &Match) -> Vec<(Attr, bool, Vec<Value<'_>>)> {
        fn strs(v: &[StringMatch]) -> Vec<Value<'_>> {
            v.iter().map(Value::Str).collect()
        }
        fn sas(v: &[ServiceAccountMatch]) -> Vec<Value<'_>> {
            v.iter().map(Value::Sa).collect()
        }
        fn nets(v: &[IpNet]) -> Vec<Value<'_>> {
            v.iter().map(Value::Net).collect()
        }
        fn ports(v: &[u16]) -> Vec<Value<'_>> {
            v.iter().map(|p| Value::Port(*p)).collect()
        }
        vec![
            (Attr::Namespace, false, strs(&m.namespaces)),
            (Attr::Namespace, true, strs(&m.not_namespaces)),
            (Attr::Principal, false, strs(&m.principals)),
            (Attr::Principal, true, strs(&m.not_principals)),
            (Attr::ServiceAccount, false, sas(&m.service_accounts)),
            (Attr::ServiceAccount, true, sas(&m.not_service_accounts)),
            (Attr::SourceIp, false, nets(&m.source_ips)),
            (Attr::SourceIp, true, nets(&m.not_source_ips)),
            (Attr::DestinationIp, false, nets(&m.destination_ips)),
            (Attr::DestinationIp, true, nets(&m.not_destination_ips)),
            (Attr::DestinationPort, false, ports(&m.destination_ports)),
            (Attr::DestinationPort, true, ports(&m.not_destination_ports)),
        ]
    }

    /// `(principal without scheme, namespace, service account)` cut from the URI by hand.
    fn identity_parts(conn: &Connection) -> Option<(String, String, String)> {
        let uri = conn.src_identity.as_ref()?.to_string();
        let scheme = "spiffe://";
        if uri.len() < scheme.len() || &uri.as_bytes()[..scheme.len()] != scheme.as_bytes() {
            return None;
        }
        let rest = uri[scheme.len()..].to_string();
        let parts: Vec<&str> = rest.split('/').collect();
        // td / "ns" / ns / "sa" / sa
        if parts.len() != 5 {
            return None;
        }
        Some((rest.clone(), parts[2].to_string(), parts[4].to_string()))
    }

    fn str_matches(m: &StringMatch, value: &[u8]) -> bool {
        match m {
            StringMatch::Exact(s) => value == s.as_bytes(),
            StringMatch::Prefix(s) => {
                let s = s.as_bytes();
                if value.len() < s.len() {
                    return false;
                }
                let mut i = 0;
                while i < s.len() {
                    if value[i] != s[i] {
                        return false;
                    }
                    i += 1;
                }
                true
            }
            StringMatch::Suffix(s) => {
                let s = s.as_bytes();
                if value.len() < s.len() {
                    return false;
                }
                let off = value.len() - s.len();
                let mut i = 0;
                while i < s.len() {
                    if value[off + i] != s[i] {
                        return false;
                    }
                    i += 1;
                }
                true
            }
            StringMatch::Presence => !value.is_empty(),
        }
    }

    /// (is_v6, 128-bit value) with IPv4-mapped IPv6 unmapped by hand.
    fn bits(ip: IpAddr) -> (bool, u128) {
        match ip {
            IpAddr::V4(v4) => (false, u32::from(v4) as u128),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                if b >> 32 == 0xffff {
                    (false, b & 0xffff_ffff)
                } else {
                    (true, b)
                }
            }
        }
    }

    fn cidr_contains(n: &IpNet, ip: IpAddr) -> bool {
        let (net_v6, net_bits, width) = match n {
            IpNet::V4(v4) => (false, u32::from(v4.addr()) as u128, 32u32),
            IpNet::V6(v6) => (true, u128::from(v6.addr()), 128u32),
        };
        let (ip_v6, ip_bits) = bits(ip);
        if net_v6 != ip_v6 {
            return false;
        }
        let len = n.prefix_len() as u32;
        if len == 0 {
            return true;
        }
        let shift = width - len;
        (net_bits >> shift) == (ip_bits >> shift)
    }

    fn value_matches(attr: Attr, v: &Value<'_>, conn: &Connection) -> bool {
        let id = identity_parts(conn);
        match (attr, v) {
            (Attr::Namespace, Value::Str(m)) => match &id {
                Some((_, ns, _)) => str_matches(m, ns.as_bytes()),
                None => false,
            },
            (Attr::Principal, Value::Str(m)) => match &id {
                Some((p, _, _)) => str_matches(m, p.as_bytes()),
                None => false,
            },
            (Attr::ServiceAccount, Value::Sa(s)) => match &id {
                Some((_, ns, sa)) => *ns == s.namespace && *sa == s.service_account,
                None => false,
            },
            (Attr::SourceIp, Value::Net(n)) => cidr_contains(n, conn.src_ip),
            (Attr::DestinationIp, Value::Net(n)) => cidr_contains(n, conn.dst.ip()),
            (Attr::DestinationPort, Value::Port(p)) => *p == conn.dst.port(),
            _ => unreachable!("table pairs attributes with their value kinds"),
        }
    }

    fn match_matches(m: &Match, conn: &Connection) -> bool {
        let t = table(m);
        let mut constrained = false;
        for (attr, negated, values) in &t {
            if values.is_empty() {
                continue;
            }
            constrained = true;
            let mut hit = false;
            for v in values {
                if value_matches(*attr, v, conn) {
                    hit = true;
                }
            }
            if *negated == hit {
                return false;
            }
        }
        constrained
    }

    pub(super) fn policy_matches(p: &Authorization, conn: &Connection) -> bool {
        let mut result = false;
        for rule in &p.rules {
            let mut all = true;
            for clause in &rule.clauses {
                let mut any = clause.matches.is_empty();
                for m in &clause.matches {
                    if match_matches(m, conn) {
                        any = true;
                    }
                }
                if !any {
                    all = false;
                }
            }
            if all {
                result = true;
            }
        }
        result
    }

    pub(super) fn evaluate(
        policies: &[Authorization],
        missing: &[String],
        conn: &Connection,
    ) -> Decision {
        let enforced: Vec<&Authorization> = policies.iter().filter(|p| !p.dry_run).collect();
        let dry_run = policies
            .iter()
            .filter(|p| p.dry_run)
            .map(|p| DryRunOutcome {
                policy: format!("{}/{}", p.namespace, p.name),
                action: p.action,
                matched: policy_matches(p, conn),
            })
            .collect();
        let audited = enforced
            .iter()
            .filter(|p| p.action == Action::Audit && policy_matches(p, conn))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let denies: Vec<&&Authorization> = enforced
            .iter()
            .filter(|p| p.action == Action::Deny)
            .collect();
        let allows: Vec<&&Authorization> = enforced
            .iter()
            .filter(|p| p.action == Action::Allow)
            .collect();

        let mut reason = None;
        for d in &denies {
            if reason.is_none() && policy_matches(d, conn) {
                reason = Some(Reason::DeniedBy(format!("{}/{}", d.namespace, d.name)));
            }
        }
        if reason.is_none() && !missing.is_empty() {
            reason = Some(Reason::MissingPolicy(missing[0].clone()));
        }
        if reason.is_none() && allows.is_empty() {
            reason = Some(if denies.is_empty() {
                Reason::NoPolicies
            } else {
                Reason::NoAllowPolicies
            });
        }
        if reason.is_none() {
            for a in &allows {
                if reason.is_none() && policy_matches(a, conn) {
                    reason = Some(Reason::AllowedBy(format!("{}/{}", a.namespace, a.name)));
                }
            }
        }
        let reason = reason.unwrap_or(Reason::NotAllowed);
        let allowed = matches!(
            reason,
            Reason::AllowedBy(_) | Reason::NoAllowPolicies | Reason::NoPolicies
        );
        Decision {
            allowed,
            reason,
            audited,
            dry_run,
        }
    }
}

/// xorshift64* — deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
    fn list<T>(&mut self, max: usize, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.below(max + 1);
        (0..n).map(|_| f(self)).collect()
    }
    /// Usually empty (so matches stay satisfiable), otherwise 1..=2 values.
    fn sparse<T>(&mut self, f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        if self.chance(4) {
            let n = 1 + self.below(2);
            let mut f = f;
            (0..n).map(|_| f(self)).collect()
        } else {
            Vec::new()
        }
    }
}

const NAMESPACES: &[&str] = &["a", "b", "ab"];
const ACCOUNTS: &[&str] = &["x", "y"];
const TRUST_DOMAINS: &[&str] = &["td", "other.td"];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.0.1.5",
    "192.168.1.1",
    "fd00::1",
    "fd00:1::5",
    "::ffff:10.0.0.1",
];
const NETS: &[&str] = &[
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.1/32",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "fd00::/64",
    "fd00::/16",
    "::/0",
    "::ffff:10.0.0.0/104",
];
const PORTS: &[u16] = &[80, 443, 9999];

fn gen_string_match(rng: &mut Rng, values: &[String]) -> StringMatch {
    let v = rng.pick(values);
    match rng.below(4) {
        0 => StringMatch::Exact(v),
        1 => StringMatch::Prefix(v.chars().take(rng.below(v.len() + 1)).collect()),
        2 => StringMatch::Suffix(v.chars().skip(rng.below(v.len() + 1)).collect()),
        _ => StringMatch::Presence,
    }
}

fn gen_match(rng: &mut Rng) -> Match {
    let namespaces: Vec<String> = NAMESPACES.iter().map(|s| s.to_string()).collect();
    let mut principals = Vec::new();
    for td in TRUST_DOMAINS {
        for ns in NAMESPACES {
            for sa in ACCOUNTS {
                principals.push(format!("{td}/ns/{ns}/sa/{sa}"));
            }
        }
    }
    principals.push("spiffe://td/ns/a/sa/x".to_string());
    let nets: Vec<IpNet> = NETS.iter().map(|n| net(n)).collect();
    let sa_match = |r: &mut Rng| sa(r.pick(NAMESPACES), r.pick(ACCOUNTS));
    Match {
        namespaces: rng.sparse(|r| gen_string_match(r, &namespaces)),
        not_namespaces: rng.sparse(|r| gen_string_match(r, &namespaces)),
        principals: rng.sparse(|r| gen_string_match(r, &principals)),
        not_principals: rng.sparse(|r| gen_string_match(r, &principals)),
        service_accounts: rng.sparse(sa_match),
        not_service_accounts: rng.sparse(sa_match),
        source_ips: rng.sparse(|r| r.pick(&nets)),
        not_source_ips: rng.sparse(|r| r.pick(&nets)),
        destination_ips: rng.sparse(|r| r.pick(&nets)),
        not_destination_ips: rng.sparse(|r| r.pick(&nets)),
        destination_ports: rng.sparse(|r| r.pick(PORTS)),
        not_destination_ports: rng.sparse(|r| r.pick(PORTS)),
    }
}

fn gen_policy(rng: &mut Rng, i: usize) -> Authorization {
    Authorization {
        name: format!("p{i}"),
        namespace: rng.pick(NAMESPACES).to_string(),
        scope: rng.pick(&[Scope::Global, Scope::Namespace, Scope::WorkloadSelector]),
        action: rng.pick(&[
            Action::Allow,
            Action::Allow,
            Action::Deny,
            Action::Deny,
            Action::Audit,
        ]),
        rules: rng.list(2, |r| Rule {
            clauses: r.list(2, |r| Clause {
                matches: r.list(2, gen_match),
            }),
        }),
        dry_run: rng.chance(5),
    }
}

fn gen_conn(rng: &mut Rng) -> Connection {
    let identity = if rng.chance(4) {
        None
    } else {
        Some(id(
            rng.pick(TRUST_DOMAINS),
            rng.pick(NAMESPACES),
            rng.pick(ACCOUNTS),
        ))
    };
    let src_ip: IpAddr = rng.pick(IPS).parse().expect("valid test ip");
    let dst_ip: IpAddr = rng.pick(IPS).parse().expect("valid test ip");
    Connection {
        src_identity: identity,
        src_ip,
        dst: SocketAddr::new(dst_ip, rng.pick(PORTS)),
    }
}

#[test]
fn agrees_with_reference_evaluator() {
    const CASES: usize = 5_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = std::collections::BTreeMap::<&'static str, usize>::new();
    let mut matched_policies = 0usize;
    for case in 0..CASES {
        let policies: Vec<Authorization> =
            (0..rng.below(5)).map(|i| gen_policy(&mut rng, i)).collect();
        let missing = if rng.chance(12) {
            vec!["ns/missing".to_string()]
        } else {
            vec![]
        };
        let conn = gen_conn(&mut rng);
        for p in &policies {
            let want = reference::policy_matches(p, &conn);
            assert_eq!(
                p.matches(&conn),
                want,
                "case {case}: policy {p:?}, connection {conn:?}"
            );
            matched_policies += usize::from(want);
        }
        let got = evaluate_with_missing(&policies, &missing, &conn);
        let want = reference::evaluate(&policies, &missing, &conn);
        assert_eq!(
            got, want,
            "case {case}: policies {policies:?}, connection {conn:?}"
        );
        *seen.entry(got.reason.as_str()).or_default() += 1;
    }
    // Guard against a generator so skewed that agreement is trivial.
    for reason in [
        "denied_by_policy",
        "missing_policy",
        "not_allowed",
        "allowed_by_policy",
        "no_allow_policies",
        "no_policies",
    ] {
        assert!(
            seen.get(reason).copied().unwrap_or(0) >= 50,
            "too few {reason}: {seen:?}"
        );
    }
    assert!(
        matched_policies >= 500,
        "too few matching policies: {matched_policies}"
    );
}

/// The config_dump (JSON) form matches upstream ztunnel's serde output.
#[test]
fn json_form_matches_upstream() {
    let p = Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![StringMatch::Presence],
                    principals: vec![StringMatch::Prefix("td/".into())],
                    service_accounts: vec![sa("a", "x")],
                    source_ips: vec![net("10.0.0.0/8")],
                    not_destination_ports: vec![9999],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: true,
    };
    let json = serde_json::to_string(&p).expect("serializes");
    assert_eq!(
        json,
        r#"{"name":"p","namespace":"ns","scope":"WorkloadSelector","action":"Deny","rules":[[[{"principals":[{"Prefix":"td/"}],"notPrincipals":[{"Presence":[]}],"serviceAccounts":[{"namespace":"a","serviceAccount":"x"}],"sourceIps":["10.0.0.0/8"],"notDestinationPorts":[9999]}]]],"dryRun":true}"#
    );
    let back: Authorization = serde_json::from_str(&json).expect("parses back");
    assert_eq!(back, p);
}
