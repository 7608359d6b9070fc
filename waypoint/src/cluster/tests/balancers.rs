//! Simple balancers, exclusion of earlier attempts, no endpoints.

use super::*;

#[test]
fn round_robin_rotates_in_endpoint_order() {
    let c = cluster(LoadBalancer::RoundRobin, 3);
    let now = Instant::now();
    let picks: Vec<usize> = (0..9).map(|_| index(pick(&c, now))).collect();
    for pair in picks.windows(2) {
        assert_eq!(pair[1], (pair[0] + 1) % 3, "rotation order in {picks:?}");
    }
    assert_eq!(
        histogram(picks.iter().map(|i| addr(*i as u8)), 3),
        [3, 3, 3]
    );
}

#[test]
fn round_robin_is_one_rotation_per_cluster() {
    // Two clusters over the same endpoints rotate independently.
    let a = cluster(LoadBalancer::RoundRobin, 2);
    let b = cluster(LoadBalancer::RoundRobin, 2);
    let now = Instant::now();
    let a1 = pick(&a, now);
    let b1 = pick(&b, now);
    let a2 = pick(&a, now);
    assert_ne!(a1, a2);
    assert_eq!(
        a1, b1,
        "same seed, same start, unaffected by the other cluster"
    );
}

#[test]
fn least_request_with_two_endpoints_picks_the_idle_one() {
    let c = cluster(LoadBalancer::LeastRequest, 2);
    let now = Instant::now();
    let busy = c.pick(&PickContext::new(&HeaderMap::new()), now).unwrap();
    for _ in 0..50 {
        let other = pick(&c, now);
        assert_ne!(other, busy.address);
    }
    drop(busy);
    let counts = histogram((0..1000).map(|_| pick(&c, now)), 2);
    assert!(counts.iter().all(|n| (400..=600).contains(n)), "{counts:?}");
}

#[test]
fn least_request_never_picks_the_most_loaded_of_many() {
    // Power of two (distinct) choices: any pair containing the loaded endpoint also contains
    // a less loaded one.
    let c = cluster(LoadBalancer::LeastRequest, 4);
    let now = Instant::now();
    let headers = HeaderMap::new();
    let others = [addr(1), addr(2), addr(3)];
    let only_first = PickContext {
        exclude: &others,
        ..PickContext::new(&headers)
    };
    let held: Vec<Picked> = (0..3).map(|_| c.pick(&only_first, now).unwrap()).collect();
    assert!(held.iter().all(|p| p.address == addr(0)));
    let loaded = c.endpoints();
    assert_eq!(loaded[0].active_requests, 3);
    assert!(loaded[1..].iter().all(|e| e.active_requests == 0));
    let counts = histogram((0..3000).map(|_| pick(&c, now)), 4);
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(
        counts[1..].iter().all(|n| (800..=1200).contains(n)),
        "{counts:?}"
    );
    drop(held);
    assert!(c.endpoints().iter().all(|e| e.active_requests == 0));
}

#[test]
fn balancers_spread_evenly_when_idle() {
    for lb in [
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        LoadBalancer::RoundRobin,
    ] {
        let c = cluster(lb.clone(), 4);
        let now = Instant::now();
        let counts = histogram((0..4000).map(|_| pick(&c, now)), 4);
        assert!(
            counts.iter().all(|n| (850..=1150).contains(n)),
            "{lb:?}: {counts:?}"
        );
    }
}

#[test]
fn passthrough_uses_the_first_endpoint() {
    let c = cluster(LoadBalancer::Passthrough, 3);
    let now = Instant::now();
    assert!((0..10).all(|_| pick(&c, now) == addr(0)));
    let headers = HeaderMap::new();
    let ctx = PickContext {
        exclude: &[addr(0)],
        ..PickContext::new(&headers)
    };
    assert_eq!(pick_with(&c, &ctx, now), addr(1));
}

#[test]
fn excluded_endpoints_are_avoided_while_others_remain() {
    let balancers = [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        LoadBalancer::Passthrough,
        LoadBalancer::ConsistentHash(ConsistentHash::HttpHeaderName("x-user".into())),
        LoadBalancer::ConsistentHash(ConsistentHash::UseSourceIp),
    ];
    let mut headers = HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    let now = Instant::now();
    for lb in balancers {
        let c = cluster(lb.clone(), 3);
        let ctx = PickContext {
            headers: &headers,
            source_ip: Some("192.168.1.1".parse().unwrap()),
            query: None,
            exclude: &[addr(0), addr(1)],
        };
        for _ in 0..20 {
            assert_eq!(pick_with(&c, &ctx, now), addr(2), "{lb:?}");
        }
        // Every endpoint excluded: one is still chosen.
        let all = [addr(0), addr(1), addr(2)];
        let ctx = PickContext {
            exclude: &all,
            ..ctx
        };
        assert!(c.pick(&ctx, now).is_ok(), "{lb:?}");
    }
}

#[test]
fn no_endpoints_is_no_healthy_upstream() {
    let c = cluster(LoadBalancer::LeastRequest, 0);
    let err = c
        .pick(&PickContext::new(&HeaderMap::new()), Instant::now())
        .unwrap_err();
    assert_eq!(
        err,
        PickError::NoHealthyUpstream {
            endpoints: 0,
            ejected: 0
        }
    );
    assert_eq!(err.response_flag(), "UH");
    assert_eq!(err.status(), 503);
    assert_eq!(
        err.to_string(),
        "no healthy upstream: 0 of 0 endpoints ejected"
    );
}

#[test]
fn set_endpoints_replaces_the_set_and_keeps_active_counts() {
    let c = cluster(LoadBalancer::RoundRobin, 2);
    let now = Instant::now();
    let headers = HeaderMap::new();
    let held = loop {
        let p = c.pick(&PickContext::new(&headers), now).unwrap();
        if p.address == addr(1) {
            break p;
        }
    };
    c.set_endpoints(vec![endpoint(1), endpoint(2), endpoint(2)]);
    let status = c.endpoints();
    assert_eq!(
        status.iter().map(|e| e.address).collect::<Vec<_>>(),
        [addr(1), addr(2)],
        "duplicates dropped, removed endpoint gone"
    );
    assert_eq!(status[0].active_requests, 1);
    let picks: Vec<SocketAddr> = (0..4).map(|_| pick(&c, now)).collect();
    assert!(picks.iter().all(|a| *a == addr(1) || *a == addr(2)));
    drop(held);
    assert_eq!(c.endpoints()[0].active_requests, 0);
}

#[test]
fn endpoint_status_serialises() {
    let c = cluster(LoadBalancer::LeastRequest, 1);
    let json = serde_json::to_value(c.endpoints()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "address": "10.0.0.0:8080",
            "uid": "Kubernetes//Pod/default/pod-0",
            "activeRequests": 0,
            "consecutive5xx": 0,
            "consecutiveGatewayErrors": 0,
            "ejections": 0
        }])
    );
    let stats = serde_json::to_value(c.stats()).unwrap();
    assert_eq!(stats["upstream_rq_pending_overflow"], 0);
}

#[test]
fn cluster_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cluster>();
    assert_send_sync::<Picked>();
    assert_send_sync::<RequestPermit>();
}
