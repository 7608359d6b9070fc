//! Table tests of the outbound routing decision, one case per rule of the module docs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::*;
use crate::state::{
    HealthStatus, LoadBalancer, LoadBalancerMode, NamespacedHostname, NetworkAddress, PortMap,
};

const NS: &str = "default";
const THIS_NODE: &str = "node1";
const WAYPOINT_HOST: &str = "waypoint.default.svc.cluster.local";

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", NS, sa).unwrap()
}

fn host(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

fn key(name: &str) -> NamespacedHostname {
    NamespacedHostname::new(NS, host(name))
}

/// A workload `uid` with service account `sa` at `ip`, on another node, TCP, healthy.
fn workload(uid: &str, sa: &str, ip: &str) -> Workload {
    let mut w = Workload::new(uid, id(sa));
    w.workload_ips = vec![ip.parse().unwrap()];
    w.node = "node2".into();
    w
}

fn hbone(mut w: Workload) -> Workload {
    w.protocol = TunnelProtocol::Hbone;
    w
}

/// Makes `w` an endpoint of service `name` with the given port map.
fn serves(mut w: Workload, name: &str, ports: &[(u16, u16)]) -> Workload {
    w.services
        .insert(key(name), ports.iter().copied().collect::<PortMap>());
    w
}

fn service(name: &str, vip: &str, ports: &[(u16, u16)]) -> Service {
    Service {
        name: name.into(),
        namespace: NS.into(),
        hostname: host(name),
        vips: vec![NetworkAddress::new("", vip.parse().unwrap())],
        ports: ports.iter().copied().collect::<BTreeMap<_, _>>(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancer: None,
        ip_families: None,
        canonical: true,
    }
}

fn waypoint_at(dest: &str, port: u16) -> Option<GatewayAddress> {
    Some(GatewayAddress {
        destination: dest.parse().unwrap(),
        hbone_mtls_port: port,
    })
}

/// The mesh of the tests:
///
/// | name        | address          | what                                                       |
/// |-------------|------------------|------------------------------------------------------------|
/// | sleep       | 10.0.0.1         | the usual source (HBONE, this node)                        |
/// | neighbour   | 10.0.0.2         | another workload of this node                              |
/// | reviews     | VIP 10.96.0.1    | 9080→9081, SANs (one invalid, one duplicate)               |
/// | reviews-v1/2| 10.0.1.1/.2      | HBONE endpoints (uid order v1, v2)                         |
/// | legacy      | VIP 10.96.0.2    | 80→8080, TCP endpoint 10.0.2.1; endpoint port 0 for 81     |
/// | productpage | VIP 10.96.0.3    | waypoint /10.0.9.1; endpoint 10.0.3.1 (HBONE)              |
/// | details     | VIP 10.96.0.4    | endpoint 10.0.4.1 (HBONE) with a workload waypoint 15009   |
/// | hostwp      | VIP 10.96.0.5    | waypoint default/waypoint.default.svc.cluster.local        |
/// | badwp       | VIP 10.96.0.6    | waypoint default/missing.default.svc.cluster.local         |
/// | ghostwp     | VIP 10.96.0.7    | waypoint /10.0.9.99 (nobody there)                         |
/// | vipwp       | VIP 10.96.0.8    | waypoint /10.96.0.9 (the waypoint service's VIP)           |
/// | waypoint    | VIP 10.96.0.9    | 15008; SANs; endpoint `waypoint` 10.0.9.1 (HBONE)          |
/// | ratings     | VIP 10.96.0.10   | endpoints ratings-a (unhealthy), ratings-b (healthy)       |
/// | pt          | VIP 10.96.0.11   | PASSTHROUGH, no endpoints                                  |
/// | empty       | VIP 10.96.0.12   | no endpoints                                               |
/// | remote      | VIP 10.96.0.13   | only endpoint on network net2                              |
/// | mixed       | VIP 10.96.0.14   | endpoints on net2 (uid first) and locally                  |
/// | dns         | VIP 10.96.0.15   | hostname-only endpoint                                     |
fn mesh() -> MeshState {
    let mut b = MeshState::builder();
    let mut sleep = hbone(workload("sleep", "sleep", "10.0.0.1"));
    sleep.node = THIS_NODE.into();
    b.insert_workload(sleep);
    let mut neighbour = workload("neighbour", "neighbour", "10.0.0.2");
    neighbour.node = THIS_NODE.into();
    b.insert_workload(neighbour);

    let mut reviews = service("reviews", "10.96.0.1", &[(9080, 9081)]);
    reviews.subject_alt_names = vec![
        "spiffe://cluster.local/ns/default/sa/reviews-extra".into(),
        "not-a-spiffe-id".into(),
        "spiffe://cluster.local/ns/default/sa/reviews".into(),
    ];
    b.insert_service(reviews);
    for (uid, ip) in [("reviews-v1", "10.0.1.1"), ("reviews-v2", "10.0.1.2")] {
        b.insert_workload(serves(
            hbone(workload(uid, "reviews", ip)),
            "reviews",
            &[(9080, 9081)],
        ));
    }

    b.insert_service(service("legacy", "10.96.0.2", &[(80, 8080), (81, 8081)]));
    b.insert_workload(serves(
        workload("legacy", "legacy", "10.0.2.1"),
        "legacy",
        &[(80, 8080), (81, 0)],
    ));

    let mut productpage = service("productpage", "10.96.0.3", &[(9080, 9080)]);
    productpage.waypoint = waypoint_at("/10.0.9.1", 15008);
    b.insert_service(productpage);
    b.insert_workload(serves(
        hbone(workload("productpage", "productpage", "10.0.3.1")),
        "productpage",
        &[(9080, 9080)],
    ));

    b.insert_service(service("details", "10.96.0.4", &[(9080, 9080)]));
    let mut details = serves(
        hbone(workload("details", "details", "10.0.4.1")),
        "details",
        &[(9080, 9080)],
    );
    details.waypoint = waypoint_at("/10.0.9.1", 15009);
    b.insert_workload(details);

    let mut hostwp = service("hostwp", "10.96.0.5", &[(80, 80)]);
    hostwp.waypoint = waypoint_at(&format!("{NS}/{WAYPOINT_HOST}"), 15008);
    b.insert_service(hostwp);
    let mut badwp = service("badwp", "10.96.0.6", &[(80, 80)]);
    badwp.waypoint = waypoint_at("default/missing.default.svc.cluster.local", 15008);
    b.insert_service(badwp);
    let mut ghostwp = service("ghostwp", "10.96.0.7", &[(80, 80)]);
    ghostwp.waypoint = waypoint_at("/10.0.9.99", 15008);
    b.insert_service(ghostwp);
    let mut vipwp = service("vipwp", "10.96.0.8", &[(80, 80)]);
    vipwp.waypoint = waypoint_at("/10.96.0.9", 15008);
    b.insert_service(vipwp);

    let mut waypoint_svc = service("waypoint", "10.96.0.9", &[(15008, 15008)]);
    waypoint_svc.subject_alt_names =
        vec!["spiffe://cluster.local/ns/default/sa/waypoint-alt".into()];
    b.insert_service(waypoint_svc);
    b.insert_workload(serves(
        hbone(workload("waypoint", "waypoint", "10.0.9.1")),
        "waypoint",
        &[(15008, 15008)],
    ));

    b.insert_service(service("ratings", "10.96.0.10", &[(9080, 9080)]));
    let mut ratings_a = serves(
        hbone(workload("ratings-a", "ratings", "10.0.5.1")),
        "ratings",
        &[(9080, 9080)],
    );
    ratings_a.status = HealthStatus::Unhealthy;
    b.insert_workload(ratings_a);
    b.insert_workload(serves(
        hbone(workload("ratings-b", "ratings", "10.0.5.2")),
        "ratings",
        &[(9080, 9080)],
    ));

    let mut pt = service("pt", "10.96.0.11", &[(443, 443)]);
    pt.load_balancer = Some(LoadBalancer {
        mode: LoadBalancerMode::Passthrough,
        ..LoadBalancer::default()
    });
    b.insert_service(pt);
    b.insert_service(service("empty", "10.96.0.12", &[(80, 80)]));

    b.insert_service(service("remote", "10.96.0.13", &[(80, 80)]));
    let mut far = serves(
        hbone(workload("remote-0", "remote", "10.1.0.1")),
        "remote",
        &[(80, 80)],
    );
    far.network = "net2".into();
    b.insert_workload(far);

    b.insert_service(service("mixed", "10.96.0.14", &[(80, 80)]));
    let mut far = serves(
        hbone(workload("mixed-0", "mixed", "10.1.0.2")),
        "mixed",
        &[(80, 80)],
    );
    far.network = "net2".into();
    b.insert_workload(far);
    b.insert_workload(serves(
        hbone(workload("mixed-1", "mixed", "10.0.6.1")),
        "mixed",
        &[(80, 80)],
    ));

    b.insert_service(service("dns", "10.96.0.15", &[(80, 80)]));
    let mut dns = serves(Workload::new("dns-0", id("dns")), "dns", &[(80, 80)]);
    dns.hostname = "db.example.com".into();
    b.insert_workload(dns);

    b.build()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What a case expects, compared field by field with the request.
#[derive(Debug, PartialEq)]
struct Want {
    protocol: Protocol,
    destination: SocketAddr,
    authority: Option<SocketAddr>,
    /// Service accounts of the expected identities, in order.
    identities: Vec<String>,
    /// Uid of the destination workload.
    workload: Option<String>,
    /// Name of the destination service.
    service: Option<String>,
    /// Uid of the waypoint.
    waypoint: Option<String>,
}

impl Want {
    fn of(r: &OutboundRequest) -> Self {
        Self {
            protocol: r.protocol,
            destination: r.destination,
            authority: r.hbone_authority,
            identities: r
                .expected_identities
                .iter()
                .map(|i| i.service_account().to_owned())
                .collect(),
            workload: r.destination_workload.as_ref().map(|w| w.uid.clone()),
            service: r.destination_service.as_ref().map(|s| s.name.clone()),
            waypoint: r.waypoint.as_ref().map(|w| w.uid.clone()),
        }
    }

    fn service(mut self, name: &str) -> Self {
        self.service = Some(name.into());
        self
    }

    fn workload(mut self, uid: &str) -> Self {
        self.workload = Some(uid.into());
        self
    }
}

fn want_hbone(dest: &str, authority: &str, ids: &[&str]) -> Want {
    Want {
        protocol: Protocol::Hbone,
        destination: addr(dest),
        authority: Some(addr(authority)),
        identities: ids.iter().map(|s| s.to_string()).collect(),
        workload: None,
        service: None,
        waypoint: None,
    }
}

fn want_waypoint(dest: &str, authority: &str, ids: &[&str]) -> Want {
    let mut w = want_hbone(dest, authority, ids);
    w.waypoint = Some("waypoint".into());
    w
}

fn want_tcp(dest: &str) -> Want {
    Want {
        protocol: Protocol::Tcp,
        destination: addr(dest),
        authority: None,
        identities: Vec::new(),
        workload: None,
        service: None,
        waypoint: None,
    }
}

fn want_passthrough(dest: &str) -> Want {
    Want {
        protocol: Protocol::Passthrough,
        ..want_tcp(dest)
    }
}

struct Case {
    name: &'static str,
    /// Uid of the source workload.
    source: &'static str,
    dst: &'static str,
    policy: OutboundPolicy,
    /// What the injected random source returns.
    random: u32,
    want: Result<Want, OutboundError>,
}

fn case(name: &'static str, dst: &'static str, want: Result<Want, OutboundError>) -> Case {
    Case {
        name,
        source: "sleep",
        dst,
        policy: OutboundPolicy::AllowAny,
        random: 0,
        want,
    }
}

fn self_call(dst: &str) -> Result<Want, OutboundError> {
    Err(OutboundError::SelfCall { dst: addr(dst) })
}

fn cases() -> Vec<Case> {
    let svc = |name: &str| key(name).to_string();
    vec![
        // Rule 1: loop protection.
        case(
            "loopback 15001",
            "127.0.0.1:15001",
            self_call("127.0.0.1:15001"),
        ),
        case(
            "loopback 15006",
            "127.0.0.1:15006",
            self_call("127.0.0.1:15006"),
        ),
        case(
            "loopback 15008",
            "127.0.0.1:15008",
            self_call("127.0.0.1:15008"),
        ),
        case(
            "loopback 15080",
            "127.0.0.1:15080",
            self_call("127.0.0.1:15080"),
        ),
        case(
            "ipv6 loopback 15001",
            "[::1]:15001",
            self_call("[::1]:15001"),
        ),
        case(
            "ipv4-mapped loopback",
            "[::ffff:127.0.0.1]:15006",
            self_call("[::ffff:127.0.0.1]:15006"),
        ),
        case(
            "unspecified 15008",
            "0.0.0.0:15008",
            self_call("0.0.0.0:15008"),
        ),
        case(
            "own ip 15008",
            "10.0.0.1:15008",
            self_call("10.0.0.1:15008"),
        ),
        case(
            "same-node workload 15006",
            "10.0.0.2:15006",
            self_call("10.0.0.2:15006"),
        ),
        case(
            "loopback on another port is unknown: passthrough",
            "127.0.0.1:8080",
            Ok(want_passthrough("127.0.0.1:8080")),
        ),
        case(
            "other-node workload 15008 is not a loop",
            "10.0.1.1:15008",
            Ok(want_hbone("10.0.1.1:15008", "10.0.1.1:15008", &["reviews"]).workload("reviews-v1")),
        ),
        // Rules 3 and 5: service-addressed, direct.
        case(
            "vip to hbone endpoint: authority podIP:targetPort, identity + SANs",
            "10.96.0.1:9080",
            Ok(want_hbone(
                "10.0.1.1:15008",
                "10.0.1.1:9081",
                &["reviews", "reviews-extra"],
            )
            .workload("reviews-v1")
            .service("reviews")),
        ),
        Case {
            name: "injected random picks the second endpoint",
            random: 1,
            ..case(
                "",
                "10.96.0.1:9080",
                Ok(want_hbone(
                    "10.0.1.2:15008",
                    "10.0.1.2:9081",
                    &["reviews", "reviews-extra"],
                )
                .workload("reviews-v2")
                .service("reviews")),
            )
        },
        case(
            "vip to tcp endpoint: podIP:targetPort",
            "10.96.0.2:80",
            Ok(want_tcp("10.0.2.1:8080")
                .workload("legacy")
                .service("legacy")),
        ),
        case(
            "endpoint port 0 falls back to the service target port",
            "10.96.0.2:81",
            Ok(want_tcp("10.0.2.1:8081")
                .workload("legacy")
                .service("legacy")),
        ),
        case(
            "vip on a port the service lacks",
            "10.96.0.1:1234",
            Err(OutboundError::UnknownServicePort {
                service: svc("reviews"),
                port: 1234,
                dst: addr("10.96.0.1:1234"),
            }),
        ),
        case(
            "unhealthy endpoint skipped",
            "10.96.0.10:9080",
            Ok(want_hbone("10.0.5.2:15008", "10.0.5.2:9080", &["ratings"])
                .workload("ratings-b")
                .service("ratings")),
        ),
        case(
            "no endpoints, passthrough service",
            "10.96.0.11:443",
            Ok(want_passthrough("10.96.0.11:443").service("pt")),
        ),
        case(
            "no endpoints",
            "10.96.0.12:80",
            Err(OutboundError::NoHealthyUpstream {
                service: svc("empty"),
                dst: addr("10.96.0.12:80"),
            }),
        ),
        case(
            "service-addressed ignores the endpoint's workload waypoint",
            "10.96.0.4:9080",
            Ok(want_hbone("10.0.4.1:15008", "10.0.4.1:9080", &["details"])
                .workload("details")
                .service("details")),
        ),
        // Rule 2: service waypoints.
        case(
            "vip with address waypoint: authority VIP:port, waypoint identity",
            "10.96.0.3:9080",
            Ok(
                want_waypoint("10.0.9.1:15008", "10.96.0.3:9080", &["waypoint"])
                    .service("productpage"),
            ),
        ),
        Case {
            source: "waypoint",
            ..case(
                "source is the waypoint: bypass",
                "10.96.0.3:9080",
                Ok(
                    want_hbone("10.0.3.1:15008", "10.0.3.1:9080", &["productpage"])
                        .workload("productpage")
                        .service("productpage"),
                ),
            )
        },
        case(
            "hostname waypoint resolved through its service, its SANs accepted",
            "10.96.0.5:80",
            Ok(want_waypoint(
                "10.0.9.1:15008",
                "10.96.0.5:80",
                &["waypoint", "waypoint-alt"],
            )
            .service("hostwp")),
        ),
        case(
            "address waypoint that is a service VIP",
            "10.96.0.8:80",
            Ok(want_waypoint(
                "10.0.9.1:15008",
                "10.96.0.8:80",
                &["waypoint", "waypoint-alt"],
            )
            .service("vipwp")),
        ),
        case(
            "hostname waypoint unknown",
            "10.96.0.6:80",
            Err(OutboundError::WaypointUnresolved {
                waypoint: "default/missing.default.svc.cluster.local".into(),
                dst: addr("10.96.0.6:80"),
            }),
        ),
        case(
            "address waypoint with no workload",
            "10.96.0.7:80",
            Err(OutboundError::WaypointIdentityUnknown {
                waypoint: addr("10.0.9.99:15008"),
                dst: addr("10.96.0.7:80"),
            }),
        ),
        // Rules 4 and 5: workload-addressed.
        case(
            "workload with waypoint: authority = original dst, waypoint port",
            "10.0.4.1:9080",
            Ok(want_waypoint("10.0.9.1:15009", "10.0.4.1:9080", &["waypoint"]).workload("details")),
        ),
        Case {
            source: "waypoint",
            ..case(
                "workload waypoint bypassed by the waypoint itself",
                "10.0.4.1:9080",
                Ok(want_hbone("10.0.4.1:15008", "10.0.4.1:9080", &["details"]).workload("details")),
            )
        },
        case(
            "workload-addressed hbone keeps the port, no service SANs",
            "10.0.1.2:7000",
            Ok(want_hbone("10.0.1.2:15008", "10.0.1.2:7000", &["reviews"]).workload("reviews-v2")),
        ),
        case(
            "workload-addressed tcp",
            "10.0.2.1:5432",
            Ok(want_tcp("10.0.2.1:5432").workload("legacy")),
        ),
        // Rule 6: unknown destinations.
        case(
            "unknown, ALLOW_ANY",
            "192.0.2.7:443",
            Ok(want_passthrough("192.0.2.7:443")),
        ),
        Case {
            policy: OutboundPolicy::RegistryOnly,
            ..case(
                "unknown, REGISTRY_ONLY",
                "192.0.2.7:443",
                Err(OutboundError::RegistryOnly {
                    dst: addr("192.0.2.7:443"),
                }),
            )
        },
        Case {
            policy: OutboundPolicy::RegistryOnly,
            ..case(
                "known service under REGISTRY_ONLY",
                "10.96.0.2:80",
                Ok(want_tcp("10.0.2.1:8080")
                    .workload("legacy")
                    .service("legacy")),
            )
        },
        // Rule 7: other networks.
        case(
            "only endpoint on another network",
            "10.96.0.13:80",
            Err(OutboundError::RemoteNetwork {
                upstream: "workload remote-0".into(),
                network: "net2".into(),
                dst: addr("10.96.0.13:80"),
            }),
        ),
        case(
            "local endpoint preferred over a remote one",
            "10.96.0.14:80",
            Ok(want_hbone("10.0.6.1:15008", "10.0.6.1:80", &["mixed"])
                .workload("mixed-1")
                .service("mixed")),
        ),
        // Not supported: hostname-only endpoints.
        case(
            "hostname-only endpoint",
            "10.96.0.15:80",
            Err(OutboundError::NoWorkloadAddress {
                workload: "dns-0".into(),
                dst: addr("10.96.0.15:80"),
            }),
        ),
    ]
}

#[test]
fn decisions() {
    let state = mesh();
    let mut failures = Vec::new();
    for c in cases() {
        let source = state.workload_by_uid(c.source).unwrap();
        let ctx = OutboundContext {
            node: Some(THIS_NODE.into()),
            policy: c.policy,
            ..OutboundContext::default()
        };
        let got = build_request(&state, source, addr(c.dst), &ctx, |n| c.random % n);
        if let Ok(req) = &got {
            assert_eq!(req.source_identity, source.identity(), "{}", c.name);
        }
        let got = got.as_ref().map(Want::of).map_err(Clone::clone);
        if got != c.want {
            failures.push(format!(
                "{} ({} → {}):\n  got  {got:?}\n  want {:?}",
                c.name, c.source, c.dst, c.want
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hbone_requests_always_carry_identities() {
    let state = mesh();
    let ctx = OutboundContext::default();
    let source = state.workload_by_uid("sleep").unwrap();
    for c in cases() {
        if let Ok(req) = build_request(&state, source, addr(c.dst), &ctx, |_| 0) {
            assert_eq!(
                req.protocol == Protocol::Hbone,
                !req.expected_identities.is_empty(),
                "{}",
                c.name
            );
            assert_eq!(
                req.protocol == Protocol::Hbone,
                req.hbone_authority.is_some(),
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn loop_protection_without_node_name_only_checks_loopback_and_own_ips() {
    let state = mesh();
    let source = state.workload_by_uid("sleep").unwrap();
    let ctx = OutboundContext::default();
    // 10.0.0.2 is on this node, but the context does not know the node's name.
    let req = build_request(&state, source, addr("10.0.0.2:15006"), &ctx, |_| 0).unwrap();
    assert_eq!(req.protocol, Protocol::Tcp);
    assert!(matches!(
        build_request(&state, source, addr("10.0.0.1:15001"), &ctx, |_| 0),
        Err(OutboundError::SelfCall { .. })
    ));
    let custom = OutboundContext {
        proxy_ports: vec![16001],
        ..OutboundContext::default()
    };
    assert!(build_request(&state, source, addr("127.0.0.1:15001"), &custom, |_| 0).is_ok());
    assert!(build_request(&state, source, addr("127.0.0.1:16001"), &custom, |_| 0).is_err());
}

#[test]
fn network_scopes_the_lookups() {
    let state = mesh();
    let source = state.workload_by_uid("sleep").unwrap();
    let ctx = OutboundContext {
        network: "net9".into(),
        policy: OutboundPolicy::RegistryOnly,
        ..OutboundContext::default()
    };
    // The VIP is on the default network, not on net9.
    assert_eq!(
        build_request(&state, source, addr("10.96.0.1:9080"), &ctx, |_| 0),
        Err(OutboundError::RegistryOnly {
            dst: addr("10.96.0.1:9080")
        })
    );
}

#[test]
fn random_is_asked_for_the_total_capacity() {
    let state = mesh();
    let source = state.workload_by_uid("sleep").unwrap();
    let mut asked = Vec::new();
    let req = build_request(
        &state,
        source,
        addr("10.96.0.1:9080"),
        &OutboundContext::default(),
        |n| {
            asked.push(n);
            n - 1
        },
    )
    .unwrap();
    assert_eq!(asked, [2]);
    assert_eq!(req.destination, addr("10.0.1.2:15008"));
}

#[test]
fn context_from_config() {
    let env: std::collections::HashMap<&str, &str> = [
        ("NETWORK", "net1"),
        ("NODE_NAME", "n1"),
        ("OUTBOUND_TRAFFIC_POLICY", "REGISTRY_ONLY"),
        ("OUTBOUND_PORT", "16001"),
        ("INBOUND_HBONE_PORT", "0"),
    ]
    .into_iter()
    .collect();
    let config = Config::from_env(&env).unwrap();
    let ctx = OutboundContext::from_config(&config);
    assert_eq!(ctx.network, "net1");
    assert_eq!(ctx.node.as_deref(), Some("n1"));
    assert_eq!(ctx.policy, OutboundPolicy::RegistryOnly);
    assert_eq!(ctx.proxy_ports, [16001, 15006, 15080]);
    assert_eq!(
        OutboundContext::default().proxy_ports,
        [15001, 15006, 15008, 15080]
    );
}

#[test]
fn error_messages_name_the_address_and_flags() {
    let e = OutboundError::NoHealthyUpstream {
        service: key("empty").to_string(),
        dst: addr("10.96.0.12:80"),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("default/empty.default.svc.cluster.local"),
        "{msg}"
    );
    assert!(msg.contains("10.96.0.12:80"), "{msg}");
    assert_eq!(e.response_flag(), "UH");
    let e = OutboundError::SelfCall {
        dst: addr("127.0.0.1:15001"),
    };
    assert!(e.to_string().contains("127.0.0.1:15001"));
    assert_eq!(e.response_flag(), "NR");
    // The request type is shareable between tasks.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<OutboundRequest>();
    send_sync::<OutboundError>();
}
