#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::dns::{DnsCache, Resolver, Resolving};
use super::*;
use crate::config::ConfigSet;

const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static-ext, namespace: egress}
spec:
  hosts: [api.static.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: HTTPS, targetPort: 8443}
  endpoints:
  - {address: 192.0.2.1}
  - {address: 192.0.2.2, ports: {http: 8080}}
  - {address: not-an-ip.test}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-ext, namespace: egress}
spec:
  hosts: [api.dns.test, "*.wild.test"]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-endpoints, namespace: egress}
spec:
  hosts: [api.lb.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: a.lb.test}
  - {address: b.lb.test, ports: {http: 9090}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none-ext, namespace: egress}
spec:
  hosts: [api.none.test]
  addresses: [198.51.100.7]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: internal, namespace: egress}
spec:
  hosts: [internal.mesh.test]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}]
"#;

fn externals() -> ExternalServices {
    let mut config = ConfigSet::default();
    let errors = config.parse_file(std::path::Path::new("entries.yaml"), ENTRIES);
    assert!(errors.is_empty(), "{errors:?}");
    ExternalServices::compile(&config)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn compile_keeps_mesh_external_entries_and_valid_static_endpoints() {
    let ext = externals();
    let origins: Vec<&str> = ext.services().iter().map(|s| s.origin.as_str()).collect();
    assert_eq!(
        origins,
        [
            "egress/static-ext",
            "egress/dns-ext",
            "egress/dns-endpoints",
            "egress/none-ext"
        ]
    );
    let addresses: Vec<&str> = ext.services()[0]
        .endpoints
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(addresses, ["192.0.2.1", "192.0.2.2"]);
}

/// Where a request goes: (service dialled, backend host, port, Host, policy) → decision.
#[test]
fn select_upstream_table() {
    let ext = externals();
    let mesh_hosts = ["reviews.default.svc.cluster.local"];
    let is_mesh = |h: &str| mesh_hosts.contains(&h);
    let dst = addr("198.51.100.7:80");
    let allow = OutboundPolicy::AllowAny;
    let only = OutboundPolicy::RegistryOnly;
    // (service dialled, backend host, backend port, Host, policy, expected)
    type Case<'a> = (
        &'a str,
        &'a str,
        u16,
        Option<&'a str>,
        OutboundPolicy,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        // STATIC: the endpoints with their port (named port, else target port, else port).
        (
            "api.static.test",
            "api.static.test",
            80,
            Some("api.static.test"),
            allow,
            "external egress/static-ext static [192.0.2.1:80, 192.0.2.2:8080]",
        ),
        (
            "api.static.test",
            "api.static.test",
            443,
            None,
            only,
            "external egress/static-ext static [192.0.2.1:8443, 192.0.2.2:8443]",
        ),
        // DNS without endpoints resolves the host; a wildcard host resolves the name asked.
        (
            "api.dns.test",
            "api.dns.test",
            80,
            Some("api.dns.test"),
            only,
            "external egress/dns-ext dns [api.dns.test:8080]",
        ),
        (
            "x.wild.test",
            "x.wild.test",
            80,
            Some("x.wild.test"),
            only,
            "external egress/dns-ext dns [x.wild.test:8080]",
        ),
        // DNS with endpoints resolves each endpoint's address.
        (
            "api.lb.test",
            "api.lb.test",
            80,
            Some("api.lb.test"),
            allow,
            "external egress/dns-endpoints dns [a.lb.test:80, b.lb.test:9090]",
        ),
        // NONE: the address the client dialled.
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("api.none.test"),
            only,
            "external egress/none-ext original 198.51.100.7:80",
        ),
        // A Host naming the dialled address, another external host or a mesh service is known.
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("198.51.100.7"),
            only,
            "external egress/none-ext original 198.51.100.7:80",
        ),
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("api.static.test"),
            only,
            "external egress/none-ext original 198.51.100.7:80",
        ),
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("reviews.default.svc.cluster.local"),
            only,
            "external egress/none-ext original 198.51.100.7:80",
        ),
        // An unknown Host: the outbound traffic policy decides.
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("evil.example"),
            allow,
            "passthrough 198.51.100.7:80",
        ),
        (
            "api.none.test",
            "api.none.test",
            80,
            Some("evil.example"),
            only,
            "blackhole",
        ),
        (
            "api.static.test",
            "api.static.test",
            80,
            Some("evil.example"),
            only,
            "blackhole",
        ),
        // TCP (no Host) is not checked.
        (
            "api.none.test",
            "api.none.test",
            80,
            None,
            only,
            "external egress/none-ext original 198.51.100.7:80",
        ),
        // Mesh services keep Istio's `*` virtual host: any Host routes.
        (
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local",
            9080,
            Some("evil.example"),
            only,
            "mesh",
        ),
        // A port the entry does not declare, or a host nobody declares: the mesh path.
        (
            "api.static.test",
            "api.static.test",
            8080,
            Some("api.static.test"),
            only,
            "mesh",
        ),
        (
            "reviews.default.svc.cluster.local",
            "api.static.test",
            80,
            Some("reviews"),
            only,
            "external egress/static-ext static [192.0.2.1:80, 192.0.2.2:8080]",
        ),
        // MESH_INTERNAL entries are mesh services.
        (
            "internal.mesh.test",
            "internal.mesh.test",
            80,
            Some("nope.example"),
            only,
            "mesh",
        ),
    ];
    for (service_host, backend_host, port, authority, policy, expected) in cases {
        let query = UpstreamQuery {
            service_host,
            backend_host,
            backend_port: *port,
            authority: *authority,
            original_dst: dst,
        };
        let got = match select_upstream(&query, &ext, is_mesh, *policy) {
            Upstream::Mesh => "mesh".to_owned(),
            Upstream::Passthrough(a) => format!("passthrough {a}"),
            Upstream::BlackHole => "blackhole".to_owned(),
            Upstream::External {
                service, endpoints, ..
            } => {
                let how = match endpoints {
                    Endpoints::Static(a) => format!(
                        "static [{}]",
                        a.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Endpoints::Dns(n) => format!(
                        "dns [{}]",
                        n.iter()
                            .map(|(h, p)| format!("{h}:{p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Endpoints::OriginalDst(a) => format!("original {a}"),
                };
                format!("external {} {how}", service.origin)
            }
        };
        assert_eq!(
            &got, expected,
            "{service_host} → {backend_host}:{port} Host {authority:?} {policy:?}"
        );
    }
}

#[test]
fn authority_hosts() {
    assert_eq!(authority_host("Example.COM:8080"), "example.com");
    assert_eq!(authority_host("example.com"), "example.com");
    assert_eq!(authority_host("[2001:DB8::1]:80"), "[2001:db8::1]");
    assert_eq!(authority_host("10.0.0.1:80"), "10.0.0.1");
    assert_eq!(authority_host("[2001:db8::1]"), "[2001:db8::1]");
    assert_eq!(authority_host("[2001:db8::1"), "[2001:db8::1");
    assert_eq!(authority_host("host:port"), "host:port");
    // Already lower case: nothing is allocated.
    for authority in ["example.com:8080", "[2001:db8::1]:80", "10.0.0.1"] {
        assert!(
            matches!(authority_host(authority), std::borrow::Cow::Borrowed(_)),
            "{authority}"
        );
    }
    assert!(authority_is_address(
        "[2001:db8::1]",
        "2001:db8::1".parse().unwrap()
    ));
    assert!(!authority_is_address(
        "10.0.0.2",
        "10.0.0.1".parse().unwrap()
    ));
}

#[test]
fn outbound_policies_parse_as_istio_writes_them() {
    assert_eq!(
        parse_outbound_policy("ALLOW_ANY"),
        Ok(OutboundPolicy::AllowAny)
    );
    assert_eq!(
        parse_outbound_policy("REGISTRY_ONLY"),
        Ok(OutboundPolicy::RegistryOnly)
    );
    assert!(parse_outbound_policy("allow_any").is_err());
}

/// Answers from a list that the test changes, counting lookups.
#[derive(Debug, Default)]
struct Scripted {
    answers: std::sync::Mutex<Vec<std::io::Result<Vec<SocketAddr>>>>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl Resolver for Scripted {
    fn resolve(&self, _host: &str, port: u16) -> Resolving {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next = self.answers.lock().unwrap().remove(0);
        let next = next.map(|v| {
            v.into_iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect()
        });
        Box::pin(async move { next })
    }
}

#[tokio::test]
async fn dns_cache_keeps_answers_for_the_refresh_rate_and_the_last_on_failure() {
    let resolver = Arc::new(Scripted::default());
    *resolver.answers.lock().unwrap() = vec![
        Ok(vec![addr("127.0.0.2:0"), addr("127.0.0.1:0")]),
        Err(std::io::Error::other("servfail")),
        Ok(vec![addr("127.0.0.3:0")]),
    ];
    // Fresh for an hour: the second lookup is served from the cache.
    let cache = DnsCache::new(resolver.clone(), Duration::from_secs(3600));
    let first = cache.resolve("h.test", 80).await.unwrap();
    assert_eq!(&*first, [addr("127.0.0.1:80"), addr("127.0.0.2:80")]);
    let again = cache.resolve("H.test", 80).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(
        resolver.lookups.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Always stale: a failure keeps the last answer, then a new answer replaces it.
    let cache = DnsCache::new(resolver.clone(), Duration::ZERO);
    *resolver.answers.lock().unwrap() = vec![
        Ok(vec![addr("127.0.0.1:0")]),
        Err(std::io::Error::other("servfail")),
        Ok(vec![addr("127.0.0.3:0")]),
    ];
    assert_eq!(
        &*cache.resolve("h.test", 80).await.unwrap(),
        [addr("127.0.0.1:80")]
    );
    assert_eq!(
        &*cache.resolve("h.test", 80).await.unwrap(),
        [addr("127.0.0.1:80")]
    );
    assert_eq!(
        &*cache.resolve("h.test", 80).await.unwrap(),
        [addr("127.0.0.3:80")]
    );

    // A name that never resolved is an error; resolve_all fails only when nothing resolved.
    *resolver.answers.lock().unwrap() = vec![
        Err(std::io::Error::other("nxdomain")),
        Err(std::io::Error::other("nxdomain")),
        Ok(vec![addr("127.0.0.9:0")]),
    ];
    assert!(cache.resolve("gone.test", 80).await.is_err());
    let all = cache
        .resolve_all(&[("gone.test".into(), 80), ("ok.test".into(), 81)])
        .await
        .unwrap();
    assert_eq!(all, [addr("127.0.0.9:81")]);
}

#[test]
fn tls_origination_fails_closed_on_what_it_cannot_honour() {
    use crate::config::istio::{ClientTlsSettings, TlsMode};
    use tls::{TlsSetupError, origination};
    let settings = |mode| ClientTlsSettings {
        mode,
        sni: None,
        subject_alt_names: Vec::new(),
        credential_name: None,
        ca_certificates: None,
        client_certificate: None,
        private_key: None,
        insecure_skip_verify: false,
    };
    assert!(matches!(
        origination(&settings(TlsMode::Disable), "a.test", None),
        Ok(None)
    ));
    assert_eq!(
        origination(&settings(TlsMode::Mutual), "a.test", None).err(),
        Some(TlsSetupError::UnsupportedMode("MUTUAL"))
    );
    assert_eq!(
        origination(&settings(TlsMode::IstioMutual), "a.test", None).err(),
        Some(TlsSetupError::UnsupportedMode("ISTIO_MUTUAL"))
    );
    let mut skip = settings(TlsMode::Simple);
    skip.insecure_skip_verify = true;
    assert_eq!(
        origination(&skip, "a.test", None).err(),
        Some(TlsSetupError::InsecureSkipVerify)
    );
    let mut missing = settings(TlsMode::Simple);
    missing.ca_certificates = Some("/nonexistent/ca.pem".into());
    assert!(matches!(
        origination(&missing, "a.test", None),
        Err(TlsSetupError::Roots(_))
    ));
    let mut bad_sni = settings(TlsMode::Simple);
    bad_sni.sni = Some("not a name".into());
    assert!(matches!(
        origination(&bad_sni, "a.test", None),
        Err(TlsSetupError::ServerName(_))
    ));
}

#[test]
fn declared_protocol_follows_istio_protocol_selection() {
    use super::DeclaredProtocol::{Detect, Http, Tcp};
    let cases: &[(Option<&str>, &str, super::DeclaredProtocol)] = &[
        (Some("HTTP"), "web", Http),
        (Some("http2"), "x", Http),
        (Some("GRPC"), "x", Http),
        (Some("GRPC-Web"), "x", Http),
        (Some("TCP"), "http", Tcp),
        (Some("TLS"), "x", Tcp),
        (Some("HTTPS"), "x", Tcp),
        (Some("MONGO"), "x", Tcp),
        (Some("MySQL"), "x", Tcp),
        (Some("REDIS"), "x", Tcp),
        (Some("UDP"), "x", Detect),
        (Some(""), "tcp-db", Tcp),
        (None, "http-web", Http),
        (None, "grpc", Http),
        (None, "redis-main", Tcp),
        (None, "https", Tcp),
        (None, "web", Detect),
        (None, "", Detect),
    ];
    for (protocol, name, want) in cases {
        assert_eq!(
            super::DeclaredProtocol::of(*protocol, name),
            *want,
            "{protocol:?} {name:?}"
        );
    }
}
