//! Tests of the state module: local config, indexes, incremental updates, hot reload and
//! protobuf conversion.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use proto::istio::workload as pb;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn workload(uid: &str, ns: &str, sa: &str, ips: &[&str]) -> Workload {
    let mut w = Workload::new(uid, hbone::Identity::new("cluster.local", ns, sa).unwrap());
    w.workload_ips = ips.iter().map(|s| ip(s)).collect();
    w
}

fn service(ns: &str, host: &str, vip: &str) -> Service {
    LocalConfig::from_yaml(&format!(
        "services: [{{name: svc, namespace: {ns}, hostname: {host}, vips: [\"/{vip}\"], ports: {{80: 8080}}}}]"
    ))
    .unwrap()
    .services
    .remove(0)
}

// === local config ===

#[test]
fn example_localhost_yaml_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/localhost.yaml");
    let state = load_file(path).unwrap();
    assert_eq!(state.workload_count(), 3);
    assert_eq!(state.service_count(), 3);

    let sleep = state.workload_by_addr("", ip("127.0.0.1")).unwrap();
    assert_eq!(sleep.uid, "cluster1//v1/Pod/default/sleep");
    assert_eq!(sleep.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        sleep.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    let legacy = state.workload_by_addr("", ip("127.0.0.3")).unwrap();
    assert_eq!(legacy.protocol, TunnelProtocol::Tcp);

    let httpbin = state.service_by_vip("", ip("127.10.0.2")).unwrap();
    assert_eq!(httpbin.hostname, "httpbin.default.svc.cluster.local");
    let eps = state.endpoints(httpbin);
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].workload.uid, "cluster1//v1/Pod/default/httpbin");
    assert_eq!(MeshState::target_port(httpbin, &eps[0], 80), Some(8000));
    assert_eq!(MeshState::target_port(httpbin, &eps[0], 81), None);

    assert_eq!(state.policies().len(), 1);
    let applying: Vec<_> = state.policies_for(sleep).map(|p| p.name.as_str()).collect();
    assert_eq!(applying, ["deny-9999"]);
}

#[test]
fn policies_for_workload_by_scope() {
    let yaml = r#"
policies:
- {name: global, namespace: "", scope: Global, action: Deny, rules: []}
- {name: ns-a, namespace: a, scope: Namespace, action: Deny, rules: []}
- {name: ns-b, namespace: b, scope: Namespace, action: Deny, rules: []}
- {name: sel, namespace: a, scope: WorkloadSelector, action: Allow, rules: []}
- {name: sel-other, namespace: a, scope: WorkloadSelector, action: Allow, rules: []}
"#;
    let mut b = LocalConfig::from_yaml(yaml)
        .unwrap()
        .into_state()
        .unwrap()
        .to_builder();
    let mut w = workload("u", "a", "sa", &[]);
    w.authorization_policies = vec!["a/sel".into()];
    let names = |state: &MeshState| -> Vec<String> {
        state.policies_for(&w).map(|p| p.name.clone()).collect()
    };
    assert_eq!(names(b.state()), ["global", "ns-a", "sel"]);
    assert!(b.remove_policy("a", "ns-a").is_some());
    assert!(b.remove_policy("a", "ns-a").is_none());
    let mut replaced = b.state().policies()[0].clone();
    replaced.dry_run = true;
    assert!(b.insert_policy(replaced).is_some());
    let state = b.build();
    assert_eq!(names(&state), ["global", "sel"]);
    assert!(state.policies()[0].dry_run);
}

#[test]
fn local_config_full_schema() {
    let yaml = r#"
workloads:
- uid: c//v1/Pod/ns1/a
  name: a
  namespace: ns1
  serviceAccount: sa-a
  trustDomain: example.org
  workloadIps: ["10.0.0.1", "fd00::1"]
  protocol: HBONE
  networkMode: Standard
  node: node1
  network: net1
  canonicalName: a
  canonicalRevision: v2
  workloadName: a-deploy
  workloadType: deployment
  hostname: a.example
  waypoint:
    destination: net1/10.0.0.100
    hboneMtlsPort: 15008
  networkGateway:
    destination: istio-system/eastwest.istio-system.svc.cluster.local
    hboneMtlsPort: 15009
  nativeTunnel: false
  applicationTunnel: {protocol: PROXY, port: 15088}
  authorizationPolicies: ["ns1/allow-a"]
  status: Unhealthy
  clusterId: c
  locality: {region: r1, zone: z1, subzone: s1}
  capacity: 3
  services:
    ns1/a.ns1.svc.cluster.local: {80: 8080, 443: 0}
services:
- name: a
  namespace: ns1
  hostname: a.ns1.svc.cluster.local
  vips: ["net1/10.96.0.1"]
  ports: {80: 8080, 443: 8443}
  subjectAltNames: ["spiffe://example.org/ns/ns1/sa/sa-a"]
  waypoint: {destination: "ns1/waypoint.ns1.svc.cluster.local", hboneMtlsPort: 15008}
  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover, healthPolicy: AllowAll}
  ipFamilies: Dual
  canonical: true
policies: []
"#;
    let state = LocalConfig::from_yaml(yaml).unwrap().into_state().unwrap();
    let w = state.workload_by_uid("c//v1/Pod/ns1/a").unwrap();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/ns1/sa/sa-a"
    );
    assert_eq!(w.trust_domain(), "example.org");
    assert_eq!(w.service_account(), "sa-a");
    assert_eq!(w.workload_ips.len(), 2);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.capacity, 3);
    assert_eq!(w.locality.zone, "z1");
    assert_eq!(
        w.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Address(NetworkAddress::new("net1", ip("10.0.0.100")))
    );
    let gw = w.network_gateway.as_ref().unwrap();
    assert_eq!(gw.hbone_mtls_port, 15009);
    assert!(matches!(gw.destination, GatewayDestination::Hostname(_)));
    assert_eq!(
        w.application_tunnel,
        Some(ApplicationTunnel {
            protocol: ApplicationTunnelProtocol::Proxy,
            port: Some(15088)
        })
    );
    assert!(state.workload_by_addr("net1", ip("fd00::1")).is_some());
    assert!(
        state.workload_by_addr("", ip("10.0.0.1")).is_none(),
        "network is part of the key"
    );

    let s = state.service_by_vip("net1", ip("10.96.0.1")).unwrap();
    let lb = s.load_balancer.as_ref().unwrap();
    assert_eq!(lb.mode, LoadBalancerMode::Failover);
    assert_eq!(
        lb.routing_preferences,
        [LoadBalancerScope::Region, LoadBalancerScope::Zone]
    );
    assert_eq!(s.ip_families, Some(IpFamily::Dual));
    let eps = state.endpoints(s);
    // The endpoint maps 443 to 0, so the service's target port applies.
    assert_eq!(MeshState::target_port(s, &eps[0], 443), Some(8443));
    assert_eq!(MeshState::target_port(s, &eps[0], 80), Some(8080));
}

#[test]
fn local_config_defaults() {
    let yaml = "workloads: [{uid: u1, namespace: ns, workloadIps: [\"10.0.0.1\"]}]";
    let state = LocalConfig::from_yaml(yaml).unwrap().into_state().unwrap();
    let w = state.workload_by_uid("u1").unwrap();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/default"
    );
    assert_eq!(w.protocol, TunnelProtocol::Tcp);
    assert_eq!(w.status, HealthStatus::Healthy);
    assert_eq!(w.capacity, 1);
    for empty in ["", "  \n", "{}", "workloads: []"] {
        let state = LocalConfig::from_yaml(empty).unwrap().into_state().unwrap();
        assert_eq!(state.workload_count(), 0, "{empty:?}");
    }
}

#[test]
fn local_config_rejects_bad_input() {
    // (name, yaml, text the error must contain)
    let cases = [
        (
            "unknown top-level field",
            "workload: []",
            "unknown field `workload`",
        ),
        (
            "unknown workload field",
            "workloads: [{uid: u, namespace: n, workloadIP: \"1.2.3.4\"}]",
            "unknown field `workloadIP`",
        ),
        (
            "bad ip",
            "workloads:\n- uid: u\n  namespace: n\n  workloadIps: [\"1.2.3\"]",
            "line 4",
        ),
        (
            "bad protocol",
            "workloads: [{uid: u, namespace: n, protocol: HTTP}]",
            "unknown variant `HTTP`",
        ),
        (
            "missing namespace",
            "workloads: [{uid: u}]",
            "missing field `namespace`",
        ),
        (
            "empty uid",
            "workloads: [{namespace: n}]",
            "workload #0 (): field uid must not be empty",
        ),
        (
            "invalid service account",
            "workloads: [{uid: u, namespace: n, serviceAccount: \"a/b\"}]",
            "invalid identity",
        ),
        (
            "uppercase trust domain",
            "workloads: [{uid: u, namespace: n, trustDomain: Cluster.Local}]",
            "invalid identity",
        ),
        (
            "bad services key",
            "workloads: [{uid: u, namespace: n, services: {nohost: {80: 80}}}]",
            "workloads[0].services: \"nohost\" is not of the form <namespace>/<hostname>",
        ),
        (
            "port out of range",
            "workloads: [{uid: u, namespace: n, services: {n/h: {80: 70000}}}]",
            "70000",
        ),
        (
            "vip without network",
            "services: [{name: s, namespace: n, hostname: h, vips: [\"10.0.0.1\"], ports: {}}]",
            "<network>/<ip>",
        ),
        (
            "bad waypoint",
            "workloads: [{uid: u, namespace: n, waypoint: {destination: nope}}]",
            "neither",
        ),
        (
            "service without hostname",
            "services: [{name: s, namespace: n, hostname: \"\", vips: [], ports: {}}]",
            "service #0 (n/): field hostname must not be empty",
        ),
        (
            "bad lb mode",
            "services: [{name: s, namespace: n, hostname: h, loadBalancer: {mode: Random}}]",
            "unknown variant `Random`",
        ),
    ];
    for (name, yaml, want) in cases {
        let err = LocalConfig::from_yaml(yaml)
            .and_then(LocalConfig::into_state)
            .expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains(want),
            "{name}: {msg:?} does not contain {want:?}"
        );
    }
}

#[test]
fn load_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "workloads: [{uid: u, namespace: n, bogus: 1}]").unwrap();
    let msg = load_file(&path).unwrap_err().to_string();
    assert!(msg.contains("mesh.yaml"), "{msg}");
    assert!(msg.contains("bogus"), "{msg}");
    let missing = load_file(dir.path().join("missing.yaml")).unwrap_err();
    assert!(matches!(missing, LoadError::Read { .. }), "{missing}");
}

// === store ===

#[test]
fn insert_remove_maintains_indexes() {
    let key = NamespacedHostname::new("ns", "svc.ns");
    let mut b = MeshState::builder();
    let mut w1 = workload("u1", "ns", "sa", &["10.0.0.1"]);
    w1.services.insert(key.clone(), [(80, 8080)].into());
    b.insert_workload(w1.clone());
    b.insert_service(service("ns", "svc.ns", "10.96.0.1"));
    let s1 = b.state().clone();
    assert_eq!(s1.endpoints_by_key(&key).len(), 1);

    // Replace the workload with a new IP and no service: old indexes are cleaned.
    let w1b = workload("u1", "ns", "sa", &["10.0.0.2"]);
    assert!(b.insert_workload(w1b).is_some());
    let s2 = b.state().clone();
    assert!(s2.workload_by_addr("", ip("10.0.0.1")).is_none());
    assert_eq!(s2.workload_by_addr("", ip("10.0.0.2")).unwrap().uid, "u1");
    assert!(s2.endpoints_by_key(&key).is_empty());
    // The earlier snapshot is untouched.
    assert_eq!(s1.workload_by_addr("", ip("10.0.0.1")).unwrap().uid, "u1");

    // Endpoints known before their service arrives, and kept across its removal.
    b.insert_workload(w1);
    assert!(b.remove_service(&key).is_some());
    assert!(b.state().service_by_vip("", ip("10.96.0.1")).is_none());
    assert!(b.state().services_by_hostname("svc.ns", None).is_empty());
    assert_eq!(b.state().endpoints_by_key(&key).len(), 1);
    b.insert_service(service("ns", "svc.ns", "10.96.0.2"));
    let s3 = b.build();
    let svc = s3.service_by_vip("", ip("10.96.0.2")).unwrap();
    assert_eq!(s3.endpoints(svc).len(), 1);
    assert!(s3.service_by_vip("", ip("10.96.0.1")).is_none());

    let mut b = s3.to_builder();
    assert!(b.remove_workload("u1").is_some());
    assert!(b.remove_workload("u1").is_none());
    let s4 = b.build();
    assert_eq!(s4.workload_count(), 0);
    assert!(s4.workload_by_addr("", ip("10.0.0.1")).is_none());
    assert!(s4.endpoints_by_key(&key).is_empty());
}

#[test]
fn address_collisions_prefer_pods_then_hbone() {
    let mut b = MeshState::builder();
    b.insert_workload(workload(
        "c//networking.istio.io/WorkloadEntry/ns/we",
        "ns",
        "a",
        &["10.0.0.1"],
    ));
    let mut pod = workload("c//v1/Pod/ns/p", "ns", "a", &["10.0.0.1"]);
    pod.protocol = TunnelProtocol::Hbone;
    b.insert_workload(pod);
    assert_eq!(
        b.state().workload_by_addr("", ip("10.0.0.1")).unwrap().uid,
        "c//v1/Pod/ns/p"
    );
    b.remove_workload("c//v1/Pod/ns/p");
    assert_eq!(
        b.state().workload_by_addr("", ip("10.0.0.1")).unwrap().uid,
        "c//networking.istio.io/WorkloadEntry/ns/we"
    );
}

#[test]
fn host_network_workloads_are_not_indexed_by_ip() {
    let mut w = workload("u", "ns", "sa", &["192.168.1.10"]);
    w.network_mode = NetworkMode::HostNetwork;
    let mut b = MeshState::builder();
    b.insert_workload(w);
    assert!(b.state().workload_by_addr("", ip("192.168.1.10")).is_none());
    assert!(b.state().workload_by_uid("u").is_some());
}

#[test]
fn services_by_hostname_preference() {
    let mut b = MeshState::builder();
    b.insert_service(service("a", "shared.example", "10.96.0.1"));
    let mut canonical = service("b", "shared.example", "10.96.0.2");
    canonical.canonical = true;
    b.insert_service(canonical);
    b.insert_service(service("c", "shared.example", "10.96.0.3"));
    let state = b.build();
    // (case, preferred namespace, expected first namespace)
    let cases = [
        ("caller's namespace wins", Some("c"), "c"),
        ("canonical when caller has none", Some("zzz"), "b"),
        ("canonical without a caller namespace", None, "b"),
        ("caller's namespace over canonical", Some("a"), "a"),
    ];
    for (name, ns, want) in cases {
        let got = state.service_by_hostname("shared.example", ns).unwrap();
        assert_eq!(got.namespace, want, "{name}");
        let all: Vec<&str> = state
            .services_by_hostname("shared.example", ns)
            .iter()
            .map(|s| s.namespace.as_str())
            .collect();
        assert_eq!(all.len(), 3, "{name}");
        assert_eq!(all[0], want, "{name}: the best comes first");
    }
    let order = |state: &MeshState, ns| -> Vec<String> {
        state
            .services_by_hostname("shared.example", ns)
            .iter()
            .map(|s| s.namespace.clone())
            .collect()
    };
    assert_eq!(order(&state, Some("c")), ["c", "b", "a"]);
    assert_eq!(order(&state, None), ["b", "a", "c"]);
    assert!(state.service_by_hostname("other.example", None).is_none());

    // A replaced service is the one found by hostname; without a canonical one, namespace order.
    let mut b = state.to_builder();
    let mut replaced = service("b", "shared.example", "10.96.0.9");
    replaced.canonical = false;
    assert!(b.insert_service(replaced).is_some());
    let state = b.build();
    assert_eq!(order(&state, None), ["a", "b", "c"]);
    let found = state
        .service_by_hostname("shared.example", Some("b"))
        .unwrap();
    assert_eq!(found.vips, service("b", "shared.example", "10.96.0.9").vips);
    let mut b = state.to_builder();
    assert!(
        b.remove_service(&NamespacedHostname::new("a", "shared.example"))
            .is_some()
    );
    let state = b.build();
    assert_eq!(order(&state, None), ["b", "c"]);
    assert_eq!(
        state
            .service_by_hostname("shared.example", None)
            .unwrap()
            .namespace,
        "b"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn handle_swaps_and_notifies() {
    let handle = StateHandle::default();
    let mut rx = handle.subscribe();
    let before = handle.current();
    let replaced = handle.update(|b| b.insert_workload(workload("u", "ns", "sa", &["10.0.0.1"])));
    assert!(replaced.is_none());
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().workload_count(), 1);
    assert_eq!(before.workload_count(), 0, "old snapshots are immutable");
    let old = handle.swap(MeshState::default());
    assert_eq!(old.workload_count(), 1);
    assert_eq!(handle.current().workload_count(), 0);
    assert!(rx.has_changed().unwrap());
}

// === hot reload ===

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Replaces `path` atomically, as a deployment tool would.
fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn hot_reload_keeps_state_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let a = "workloads: [{uid: a, namespace: ns, workloadIps: [\"10.0.0.1\"]}]";
    let b = "workloads: [{uid: b, namespace: ns, workloadIps: [\"10.0.0.2\"]}]\n";
    std::fs::write(&path, a).unwrap();
    let handle = StateHandle::new(load_file(&path).unwrap());
    let task = watch_file(&path, handle.clone(), Duration::from_millis(10));
    // Let the watcher take its first fingerprint before changing the file.
    tokio::time::sleep(Duration::from_millis(50)).await;

    replace_file(&path, "workloads: [{uid: x, namespace: ns, nope: 1}]");
    wait_for("a reload failure", || handle.reload_failures() == 1).await;
    assert!(
        handle.current().workload_by_uid("a").is_some(),
        "state A kept"
    );

    replace_file(&path, b);
    wait_for("state B", || {
        handle.current().workload_by_uid("b").is_some()
    })
    .await;
    assert!(handle.current().workload_by_uid("a").is_none());
    assert_eq!(handle.reload_failures(), 1);
    assert_eq!(handle.reloads(), 1);
    task.abort();
}

// === protobuf conversion ===

/// A named corruption of a valid message and the error it must produce.
type BadCase<T> = (&'static str, Box<dyn Fn(&mut T)>, ConvertError);

fn pb_workload() -> pb::Workload {
    pb::Workload {
        uid: "c//v1/Pod/ns/w".into(),
        name: "w".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "sa".into(),
        services: HashMap::from([(
            "ns/svc.ns".to_string(),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        ..Default::default()
    }
}

#[test]
fn workload_from_proto() {
    let w = Workload::try_from(pb_workload()).unwrap();
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/ns/sa/sa"
    );
    assert_eq!(w.workload_ips, vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(w.workload_type, "deployment");
    assert_eq!(w.capacity, 1);
    assert_eq!(
        w.services[&NamespacedHostname::new("ns", "svc.ns")],
        [(80, 8080)].into()
    );
}

#[test]
fn workload_from_proto_rejects_bad_input() {
    let gw_no_dest = pb::GatewayAddress {
        destination: None,
        hbone_mtls_port: 15008,
    };
    let cases: Vec<BadCase<pb::Workload>> = vec![
        (
            "empty uid",
            Box::new(|w| w.uid.clear()),
            ConvertError::MissingField { field: "uid" },
        ),
        (
            "empty namespace",
            Box::new(|w| w.namespace.clear()),
            ConvertError::MissingField { field: "namespace" },
        ),
        (
            "3-byte address",
            Box::new(|w| w.addresses = vec![vec![1, 2, 3]]),
            ConvertError::IpLength {
                field: "addresses",
                len: 3,
            },
        ),
        (
            "empty address",
            Box::new(|w| w.addresses = vec![vec![]]),
            ConvertError::IpLength {
                field: "addresses",
                len: 0,
            },
        ),
        (
            "legacy istio mtls",
            Box::new(|w| w.tunnel_protocol = pb::TunnelProtocol::LegacyIstioMtls as i32),
            ConvertError::LegacyIstioMtls,
        ),
        (
            "unknown tunnel protocol",
            Box::new(|w| w.tunnel_protocol = 42),
            ConvertError::UnknownEnum {
                field: "tunnel_protocol",
                value: 42,
            },
        ),
        (
            "unknown status",
            Box::new(|w| w.status = -1),
            ConvertError::UnknownEnum {
                field: "status",
                value: -1,
            },
        ),
        (
            "unknown workload type",
            Box::new(|w| w.workload_type = 9),
            ConvertError::UnknownEnum {
                field: "workload_type",
                value: 9,
            },
        ),
        (
            "bad services key",
            Box::new(|w| w.services = HashMap::from([("nohost".into(), pb::PortList::default())])),
            ConvertError::NamespacedHostname {
                field: "services",
                value: "nohost".into(),
            },
        ),
        (
            "service port out of range",
            Box::new(|w| {
                w.services = HashMap::from([(
                    "ns/h".into(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: 65536,
                            target_port: 1,
                            app_protocol: 0,
                        }],
                    },
                )])
            }),
            ConvertError::PortOutOfRange {
                field: "services",
                value: 65536,
            },
        ),
        (
            "waypoint without destination",
            Box::new(move |w| w.waypoint = Some(gw_no_dest.clone())),
            ConvertError::MissingGatewayDestination { field: "waypoint" },
        ),
        (
            "network gateway with 5-byte address",
            Box::new(|w| {
                w.network_gateway = Some(pb::GatewayAddress {
                    destination: Some(pb::gateway_address::Destination::Address(
                        pb::NetworkAddress {
                            network: "n".into(),
                            address: vec![1; 5],
                            length: None,
                        },
                    )),
                    hbone_mtls_port: 0,
                })
            }),
            ConvertError::IpLength {
                field: "network_gateway",
                len: 5,
            },
        ),
        (
            "application tunnel port out of range",
            Box::new(|w| {
                w.application_tunnel = Some(pb::ApplicationTunnel {
                    protocol: 1,
                    port: 1 << 20,
                })
            }),
            ConvertError::PortOutOfRange {
                field: "application_tunnel.port",
                value: 1 << 20,
            },
        ),
    ];
    for (name, mutate, want) in cases {
        let mut w = pb_workload();
        mutate(&mut w);
        assert_eq!(Workload::try_from(w).unwrap_err(), want, "{name}");
    }
    let mut bad_sa = pb_workload();
    bad_sa.service_account = "a b".into();
    assert!(
        matches!(Workload::try_from(bad_sa), Err(ConvertError::Identity(_))),
        "invalid service account"
    );
}

/// Deterministic garbage: no input may panic, and every accepted one is self-consistent.
#[test]
fn workload_from_proto_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut w = pb_workload();
        let len = (next() % 20) as usize;
        w.addresses = vec![(0..len).map(|_| next() as u8).collect()];
        w.tunnel_protocol = (next() % 5) as i32 - 1;
        w.status = (next() % 4) as i32 - 1;
        w.capacity = Some(next() as u32);
        if next() % 3 == 0 {
            w.namespace = String::from_utf8_lossy(&[next() as u8 % 128, b'x']).into_owned();
        }
        if let Ok(ok) = Workload::try_from(w) {
            assert!(!ok.uid.is_empty());
            assert_eq!(ok.identity().namespace(), ok.namespace);
        }
    }
}

#[test]
fn service_from_proto() {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    let s = pb::Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: "".into(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        load_balancing: Some(pb::LoadBalancing {
            routing_preference: vec![Scope::Network as i32, Scope::Zone as i32],
            mode: Mode::Strict as i32,
            health_policy: HealthPolicy::AllowAll as i32,
            dns_connect_strategy: 0,
        }),
        ip_families: pb::IpFamilies::Ipv4Only as i32,
        ..Default::default()
    };
    let ok = Service::try_from(s.clone()).unwrap();
    assert_eq!(ok.vips, vec![NetworkAddress::new("", ip("10.96.0.1"))]);
    assert_eq!(ok.ports, [(80, 0)].into());
    assert_eq!(ok.lb_mode(), LoadBalancerMode::Strict);
    assert_eq!(ok.ip_families, Some(IpFamily::IPv4));

    let cases: Vec<BadCase<pb::Service>> = vec![
        (
            "empty hostname",
            Box::new(|s| s.hostname.clear()),
            ConvertError::MissingField { field: "hostname" },
        ),
        (
            "bad vip length",
            Box::new(|s| s.addresses[0].address = vec![1; 15]),
            ConvertError::IpLength {
                field: "addresses",
                len: 15,
            },
        ),
        (
            "unspecified scope",
            Box::new(|s| {
                if let Some(lb) = s.load_balancing.as_mut() {
                    lb.routing_preference = vec![0];
                }
            }),
            ConvertError::UnknownEnum {
                field: "load_balancing.routing_preference",
                value: 0,
            },
        ),
        (
            "unknown mode",
            Box::new(|s| {
                if let Some(lb) = s.load_balancing.as_mut() {
                    lb.mode = 7;
                }
            }),
            ConvertError::UnknownEnum {
                field: "load_balancing.mode",
                value: 7,
            },
        ),
        (
            "unknown ip families",
            Box::new(|s| s.ip_families = 4),
            ConvertError::UnknownEnum {
                field: "ip_families",
                value: 4,
            },
        ),
        (
            "target port out of range",
            Box::new(|s| s.ports[0].target_port = u32::MAX),
            ConvertError::PortOutOfRange {
                field: "ports",
                value: u32::MAX,
            },
        ),
    ];
    for (name, mutate, want) in cases {
        let mut bad = s.clone();
        mutate(&mut bad);
        assert_eq!(Service::try_from(bad).unwrap_err(), want, "{name}");
    }
}

#[test]
fn state_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Arc<MeshState>>();
    assert_send_sync::<StateHandle>();
}
