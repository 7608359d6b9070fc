//! Table tests of endpoint selection.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::service::{
    LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Service,
};
use super::super::store::Endpoint;
use super::super::workload::{HealthStatus, Locality, Workload};
use super::select_endpoint;

/// An endpoint description: (uid, region, zone, node, healthy, capacity).
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    u32,
);

fn wl(spec: Spec) -> Arc<Workload> {
    let (uid, region, zone, node, healthy, capacity) = spec;
    let mut w = Workload::new(
        uid,
        hbone::Identity::new("cluster.local", "ns", "sa").unwrap(),
    );
    w.locality = Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    w.node = node.into();
    w.status = if healthy {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    w.capacity = capacity;
    Arc::new(w)
}

fn svc(lb: Option<LoadBalancer>) -> Service {
    Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns".into(),
        vips: Vec::new(),
        ports: BTreeMap::from([(80, 8080)]),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancer: lb,
        ip_families: None,
        canonical: false,
    }
}

fn lb(
    mode: LoadBalancerMode,
    prefs: &[LoadBalancerScope],
    health: LoadBalancerHealthPolicy,
) -> Option<LoadBalancer> {
    Some(LoadBalancer {
        routing_preferences: prefs.to_vec(),
        mode,
        health_policy: health,
    })
}

struct Case {
    name: &'static str,
    lb: Option<LoadBalancer>,
    endpoints: Vec<Spec>,
    /// What the injected random source returns (taken modulo its bound).
    random: u32,
    /// The uid expected, or `None` for no endpoint.
    want: Option<&'static str>,
}

#[test]
fn select_endpoint_table() {
    use LoadBalancerHealthPolicy::{AllowAll, OnlyHealthy};
    use LoadBalancerMode::{Failover, Passthrough, Standard, Strict};
    use LoadBalancerScope::{Node, Region, Zone};
    // The source runs in region r1, zone z1, node n1.
    let local: Spec = ("local", "r1", "z1", "n1", true, 1);
    let same_region: Spec = ("same-region", "r1", "z2", "n2", true, 1);
    let remote: Spec = ("remote", "r2", "z9", "n9", true, 1);
    let sick_local: Spec = ("sick-local", "r1", "z1", "n1", false, 1);
    let cases = [
        Case {
            name: "no endpoints",
            lb: None,
            endpoints: vec![],
            random: 0,
            want: None,
        },
        Case {
            name: "default picks by random index",
            lb: None,
            endpoints: vec![local, same_region, remote],
            random: 2,
            want: Some("remote"),
        },
        Case {
            name: "unhealthy skipped by default",
            lb: None,
            endpoints: vec![sick_local, remote],
            random: 0,
            want: Some("remote"),
        },
        Case {
            name: "only unhealthy gives none",
            lb: None,
            endpoints: vec![sick_local],
            random: 0,
            want: None,
        },
        Case {
            name: "allow all includes unhealthy",
            lb: lb(Standard, &[], AllowAll),
            endpoints: vec![sick_local, remote],
            random: 0,
            want: Some("sick-local"),
        },
        Case {
            name: "standard ignores preferences",
            lb: lb(Standard, &[Region, Zone], OnlyHealthy),
            endpoints: vec![remote, local],
            random: 0,
            want: Some("remote"),
        },
        Case {
            name: "failover prefers full match",
            lb: lb(Failover, &[Region, Zone], OnlyHealthy),
            endpoints: vec![remote, same_region, local],
            random: 0,
            want: Some("local"),
        },
        Case {
            name: "failover falls back to best partial match",
            lb: lb(Failover, &[Region, Zone], OnlyHealthy),
            endpoints: vec![remote, same_region],
            random: 0,
            want: Some("same-region"),
        },
        Case {
            name: "failover falls back to no match",
            lb: lb(Failover, &[Region, Zone], OnlyHealthy),
            endpoints: vec![remote],
            random: 0,
            want: Some("remote"),
        },
        Case {
            name: "failover skips unhealthy best match",
            lb: lb(Failover, &[Region, Zone], OnlyHealthy),
            endpoints: vec![sick_local, same_region],
            random: 0,
            want: Some("same-region"),
        },
        Case {
            name: "rank stops at first mismatch",
            lb: lb(Failover, &[Zone, Node], OnlyHealthy),
            // Same node but another zone ranks 0, like the remote one; the random draw picks.
            endpoints: vec![("zone-miss-node-hit", "r1", "z2", "n1", true, 1), remote],
            random: 1,
            want: Some("remote"),
        },
        Case {
            name: "strict keeps full matches only",
            lb: lb(Strict, &[Region, Zone], OnlyHealthy),
            endpoints: vec![same_region, local, remote],
            random: 0,
            want: Some("local"),
        },
        Case {
            name: "strict drops partial matches",
            lb: lb(Strict, &[Region, Zone], OnlyHealthy),
            endpoints: vec![same_region, remote],
            random: 0,
            want: None,
        },
        Case {
            name: "strict with allow all accepts unhealthy local",
            lb: lb(Strict, &[Node], AllowAll),
            endpoints: vec![remote, sick_local],
            random: 0,
            want: Some("sick-local"),
        },
        Case {
            name: "passthrough selects nothing",
            lb: lb(Passthrough, &[], OnlyHealthy),
            endpoints: vec![local],
            random: 0,
            want: None,
        },
        Case {
            name: "capacity weights: draw inside first weight",
            lb: None,
            endpoints: vec![("big", "", "", "", true, 3), ("small", "", "", "", true, 1)],
            random: 2,
            want: Some("big"),
        },
        Case {
            name: "capacity weights: draw past first weight",
            lb: None,
            endpoints: vec![("big", "", "", "", true, 3), ("small", "", "", "", true, 1)],
            random: 3,
            want: Some("small"),
        },
        Case {
            name: "zero capacity never chosen when others have weight",
            lb: None,
            endpoints: vec![("zero", "", "", "", true, 0), ("one", "", "", "", true, 1)],
            random: 0,
            want: Some("one"),
        },
        Case {
            name: "all zero capacity falls back to uniform",
            lb: None,
            endpoints: vec![("z1", "", "", "", true, 0), ("z2", "", "", "", true, 0)],
            random: 1,
            want: Some("z2"),
        },
        Case {
            name: "out-of-range random is reduced modulo the bound",
            lb: None,
            endpoints: vec![local, remote],
            random: 5,
            want: Some("remote"),
        },
    ];
    let source = wl(local);
    let ports = BTreeMap::from([(80, 8080)]);
    for case in cases {
        let workloads: Vec<Arc<Workload>> = case.endpoints.iter().map(|s| wl(*s)).collect();
        let endpoints: Vec<Endpoint<'_>> = workloads
            .iter()
            .map(|workload| Endpoint {
                workload,
                ports: &ports,
            })
            .collect();
        let service = svc(case.lb);
        let mut bounds = Vec::new();
        let got = select_endpoint(&service, &source, &endpoints, |n| {
            bounds.push(n);
            case.random
        });
        assert_eq!(
            got.map(|e| e.workload.uid.as_str()),
            case.want,
            "{}",
            case.name
        );
        assert!(
            bounds.iter().all(|&n| n > 0),
            "{}: random bound 0",
            case.name
        );
    }
}
