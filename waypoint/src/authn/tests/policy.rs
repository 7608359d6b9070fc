//! Attachment: which RequestAuthentications apply to which services of the waypoint.

use std::path::Path;

use crate::authn::policy::{AuthnContext, AuthnTable};
use crate::authn::{JwksRegistry, JwksSettings};
use crate::config::ConfigSet;
use crate::route::ServiceTarget;

const JWKS: &str = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;

fn policy(namespace: &str, name: &str, issuer: &str, target: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{target}\n  jwtRules:\n  - issuer: {issuer}\n    jwks: '{JWKS}'\n---\n"
    )
}

fn table(yaml: &str) -> AuthnTable {
    let mut config = ConfigSet::default();
    let errors = config.parse_file(Path::new("authn.yaml"), yaml);
    assert_eq!(errors, vec![]);
    let services = [
        ServiceTarget::kubernetes("reviews", "default", "cluster.local", [9080]),
        ServiceTarget::kubernetes("ratings", "default", "cluster.local", [9080]),
    ];
    let ctx = AuthnContext {
        waypoint_namespace: "default",
        waypoint_name: "waypoint",
        root_namespace: "istio-system",
        services: &services,
    };
    AuthnTable::compile(&config, &ctx, &JwksRegistry::new(JwksSettings::default()))
}

fn issuers(table: &AuthnTable, host: &str) -> Vec<String> {
    table
        .providers(host)
        .iter()
        .map(|p| p.issuer.clone())
        .collect()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";

#[test]
fn targets_attach_as_in_istio() {
    let gateway =
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]";
    let other_gateway =
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other}]";
    let class =
        "  targetRef: {group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}";
    let service = "  targetRefs: [{kind: Service, group: \"\", name: reviews}]";
    let selector = "  selector: {matchLabels: {app: reviews}}";
    let yaml = [
        policy("default", "whole", "z-gateway", gateway),
        policy("default", "elsewhere", "other-gateway", other_gateway),
        policy("istio-system", "mesh", "m-class", class),
        policy("default", "class-outside-root", "class-outside-root", class),
        policy("default", "reviews-only", "a-service", service),
        policy("other", "service-elsewhere", "service-elsewhere", service),
        policy("default", "by-selector", "selector", selector),
        policy("default", "no-target", "no-target", ""),
    ]
    .concat();
    let table = table(&yaml);
    // Sorted by issuer; service rules only for that service.
    assert_eq!(
        issuers(&table, REVIEWS),
        ["a-service", "m-class", "z-gateway"]
    );
    assert_eq!(issuers(&table, RATINGS), ["m-class", "z-gateway"]);
    assert_eq!(issuers(&table, "unknown.example"), ["m-class", "z-gateway"]);
    let ignored: Vec<&str> = table
        .policies()
        .iter()
        .filter(|p| p.ignored.is_some())
        .map(|p| p.policy.as_str())
        .collect();
    assert_eq!(
        ignored,
        [
            "default/by-selector",
            "default/class-outside-root",
            "default/elsewhere",
            "default/no-target",
            "other/service-elsewhere"
        ]
    );
}

#[test]
fn service_entries_attach_to_their_hosts() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [API.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n---\n"
        .to_owned()
        + &policy(
            "default",
            "se",
            "se-issuer",
            "  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: api}]",
        );
    let table = table(&yaml);
    assert_eq!(issuers(&table, "api.example.com"), ["se-issuer"]);
    assert!(issuers(&table, REVIEWS).is_empty());
}

#[test]
fn no_policy_means_no_rules() {
    let table = table("");
    assert!(table.is_empty());
    assert!(table.providers(REVIEWS).is_empty());
}
