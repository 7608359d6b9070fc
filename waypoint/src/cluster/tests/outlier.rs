//! Outlier detection: consecutive errors, resets, ejection time, return to service, max
//! ejection percent, panic mode, state across endpoint updates.

use std::time::Duration;

use super::*;
use crate::cluster::outlier::{DEFAULT_BASE_EJECTION_TIME, DEFAULT_INTERVAL};
use crate::config::duration::IstioDuration;

const S: fn(u64) -> Duration = Duration::from_secs;

fn fail(c: &Cluster, endpoint: SocketAddr, times: u32, now: Instant) {
    for _ in 0..times {
        c.report(endpoint, Outcome::Status(500), now);
    }
}

fn ejected(c: &Cluster, now: Instant) -> Vec<SocketAddr> {
    c.endpoints_at(now)
        .into_iter()
        .filter(|e| e.ejected_until.is_some())
        .map(|e| e.address)
        .collect()
}

fn od_cluster(n: u8, od: OutlierDetection) -> Cluster {
    let policy = ClusterPolicy {
        load_balancer: LoadBalancer::RoundRobin,
        outlier_detection: Some(od),
        ..ClusterPolicy::default()
    };
    Cluster::with_seed("c".into(), &policy, endpoints(n), 3)
}

#[test]
fn defaults_applied_to_the_destination_rule() {
    let cases = [
        (
            OutlierDetection::default(),
            OutlierConfig {
                consecutive_5xx: 5,
                consecutive_gateway_errors: 0,
                interval: S(10),
                base_ejection_time: S(30),
                max_ejection_time: S(300),
                max_ejection_percent: 10,
                min_health_percent: 0,
            },
        ),
        (
            OutlierDetection {
                consecutive_5xx_errors: Some(0),
                consecutive_gateway_errors: Some(3),
                interval: Some(IstioDuration(S(1))),
                base_ejection_time: Some(IstioDuration(S(600))),
                max_ejection_percent: Some(Percentage(0)),
                min_health_percent: Some(Percentage(40)),
            },
            OutlierConfig {
                consecutive_5xx: 0,
                consecutive_gateway_errors: 3,
                interval: S(1),
                base_ejection_time: S(600),
                max_ejection_time: S(600),
                max_ejection_percent: 10,
                min_health_percent: 40,
            },
        ),
    ];
    for (istio, expected) in cases {
        assert_eq!(OutlierConfig::from_istio(&istio), expected, "{istio:?}");
    }
    assert_eq!(DEFAULT_INTERVAL, S(10));
    assert_eq!(DEFAULT_BASE_EJECTION_TIME, S(30));
}

#[test]
fn ejects_after_consecutive_5xx_and_skips_the_endpoint() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 5, 100),
        endpoints(3),
        1,
    );
    let t0 = Instant::now();
    fail(&c, addr(1), 4, t0);
    assert!(ejected(&c, t0).is_empty());
    c.report(addr(1), Outcome::Status(503), t0);
    assert_eq!(ejected(&c, t0), [addr(1)]);
    assert!((0..30).all(|_| pick(&c, t0) != addr(1)));
    let stats = c.stats_at(t0);
    assert_eq!(stats.outlier_detection_ejections_active, 1);
    assert_eq!(
        stats.outlier_detection_ejections_enforced_consecutive_5xx,
        1
    );
    assert_eq!(stats.outlier_detection_ejections_enforced_total, 1);
}

#[test]
fn a_success_resets_the_counters() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 3, 100),
        endpoints(2),
        1,
    );
    let t0 = Instant::now();
    for outcome in [
        Outcome::Status(500),
        Outcome::Status(502),
        Outcome::Status(404),
        Outcome::Status(500),
        Outcome::Timeout,
        Outcome::Status(200),
        Outcome::Reset,
        Outcome::ConnectFailure,
    ] {
        c.report(addr(0), outcome, t0);
    }
    assert!(ejected(&c, t0).is_empty());
    assert_eq!(c.endpoints_at(t0)[0].consecutive_5xx, 2);
    c.report(addr(0), Outcome::Status(501), t0);
    assert_eq!(ejected(&c, t0), [addr(0)]);
}

#[test]
fn local_failures_count_as_5xx_and_gateway_errors() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(0),
        consecutive_gateway_errors: Some(3),
        max_ejection_percent: Some(Percentage(100)),
        ..OutlierDetection::default()
    };
    let c = od_cluster(2, od);
    let t0 = Instant::now();
    // 500 is a 5xx but not a gateway error: it resets the gateway counter.
    for outcome in [
        Outcome::ConnectFailure,
        Outcome::Timeout,
        Outcome::Status(500),
    ] {
        c.report(addr(0), outcome, t0);
    }
    for outcome in [Outcome::Reset, Outcome::Status(504)] {
        c.report(addr(0), outcome, t0);
    }
    assert!(
        ejected(&c, t0).is_empty(),
        "consecutive5xxErrors 0 disables the 5xx detector"
    );
    c.report(addr(0), Outcome::Status(502), t0);
    assert_eq!(ejected(&c, t0), [addr(0)]);
    assert_eq!(
        c.stats_at(t0)
            .outlier_detection_ejections_enforced_consecutive_gateway_failure,
        1
    );
    assert_eq!(Outcome::ConnectFailure.status(), 503);
    assert_eq!(Outcome::Reset.status(), 503);
    assert_eq!(Outcome::Timeout.status(), 504);
}

#[test]
fn zero_disables_and_gateway_detector_is_off_by_default() {
    let off = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 0, 100),
        endpoints(2),
        1,
    );
    let t0 = Instant::now();
    fail(&off, addr(0), 100, t0);
    for _ in 0..100 {
        off.report(addr(0), Outcome::Status(503), t0);
    }
    assert!(ejected(&off, t0).is_empty());
}

#[test]
fn returns_to_service_after_the_ejection_time() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 1, 100),
        endpoints(2),
        1,
    );
    let t0 = Instant::now();
    fail(&c, addr(1), 1, t0);
    let status = &c.endpoints_at(t0)[1];
    assert_eq!(status.ejected_until, Some(t0 + S(30)));
    assert_eq!(status.ejection_remaining_ms, Some(30_000));
    let before = t0 + S(29);
    assert!((0..10).all(|_| pick(&c, before) == addr(0)));
    let after = t0 + S(30);
    let picks: Vec<SocketAddr> = (0..4).map(|_| pick(&c, after)).collect();
    assert!(picks.contains(&addr(1)), "{picks:?}");
    assert_eq!(c.endpoints_at(after)[1].consecutive_5xx, 0);
}

#[test]
fn ejection_time_grows_with_repeated_ejections_and_decays() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 1, 100),
        endpoints(2),
        1,
    );
    let t0 = Instant::now();
    let until = |now: Instant| c.endpoints_at(now)[1].ejected_until;

    fail(&c, addr(1), 1, t0);
    assert_eq!(until(t0), Some(t0 + S(30)));
    // Fails again right after returning: 2 × base.
    let t1 = t0 + S(30);
    fail(&c, addr(1), 1, t1);
    assert_eq!(until(t1), Some(t1 + S(60)));
    let t2 = t1 + S(60);
    fail(&c, addr(1), 1, t2);
    assert_eq!(until(t2), Some(t2 + S(90)));
    assert_eq!(c.endpoints_at(t2)[1].ejections, 3);

    // Three intervals in service bring the multiplier from 3 back to 0: next is 1 × base.
    let t3 = t2 + S(90) + S(30);
    fail(&c, addr(1), 1, t3);
    assert_eq!(until(t3), Some(t3 + S(30)));
}

#[test]
fn ejection_time_is_capped() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        base_ejection_time: Some(IstioDuration(S(100))),
        max_ejection_percent: Some(Percentage(100)),
        ..OutlierDetection::default()
    };
    let c = od_cluster(2, od);
    let mut now = Instant::now();
    let mut lengths = Vec::new();
    for _ in 0..6 {
        fail(&c, addr(1), 1, now);
        let until = c.endpoints_at(now)[1].ejected_until.unwrap();
        lengths.push((until - now).as_secs());
        now = until;
    }
    assert_eq!(lengths, [100, 200, 300, 300, 300, 300]);
}

#[test]
fn max_ejection_percent_limits_ejections() {
    // (endpoints, maxEjectionPercent, failing endpoints, expected ejected count)
    let cases = [
        (5, None, 5, 0),      // default 10 %: (0+1)/5 = 20 % > 10 %, never ejects
        (10, None, 3, 1),     // 10 % of 10 = 1
        (20, None, 3, 2),     // 10 % of 20 = 2
        (4, Some(50), 4, 2),  // 2 of 4
        (3, Some(50), 3, 1),  // 2/3 > 50 %
        (2, Some(100), 2, 2), // everything
    ];
    for (n, max, failing, expected) in cases {
        let od = OutlierDetection {
            consecutive_5xx_errors: Some(1),
            max_ejection_percent: max.map(Percentage),
            ..OutlierDetection::default()
        };
        let c = od_cluster(n, od);
        let t0 = Instant::now();
        for i in 0..failing {
            fail(&c, addr(i), 1, t0);
        }
        let stats = c.stats_at(t0);
        assert_eq!(
            ejected(&c, t0).len(),
            expected,
            "{n} endpoints, max {max:?}"
        );
        assert_eq!(
            stats.outlier_detection_ejections_overflow,
            u64::from(failing) - expected as u64,
            "{n} endpoints, max {max:?}"
        );
    }
}

#[test]
fn refused_ejection_resets_the_counter() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(2),
        max_ejection_percent: Some(Percentage(50)),
        ..OutlierDetection::default()
    };
    let c = od_cluster(2, od);
    let t0 = Instant::now();
    fail(&c, addr(0), 2, t0);
    fail(&c, addr(1), 2, t0);
    assert_eq!(ejected(&c, t0), [addr(0)]);
    assert_eq!(c.endpoints_at(t0)[1].consecutive_5xx, 0);
    // Once the first returns, the second needs two fresh errors.
    let t1 = t0 + S(30);
    fail(&c, addr(1), 1, t1);
    assert_eq!(ejected(&c, t1), Vec::<SocketAddr>::new());
    fail(&c, addr(1), 1, t1);
    assert_eq!(ejected(&c, t1), [addr(1)]);
}

#[test]
fn below_min_health_ejections_are_ignored() {
    let od = OutlierDetection {
        consecutive_5xx_errors: Some(1),
        max_ejection_percent: Some(Percentage(100)),
        min_health_percent: Some(Percentage(50)),
        ..OutlierDetection::default()
    };
    let c = od_cluster(4, od);
    let t0 = Instant::now();
    fail(&c, addr(0), 1, t0);
    fail(&c, addr(1), 1, t0);
    // 50 % healthy is not below 50 %: ejections honoured.
    let counts = histogram((0..40).map(|_| pick(&c, t0)), 4);
    assert_eq!(&counts[..2], [0, 0]);
    fail(&c, addr(2), 1, t0);
    // 25 % healthy: panic, every endpoint takes traffic.
    let counts = histogram((0..40).map(|_| pick(&c, t0)), 4);
    assert!(counts.iter().all(|n| *n == 10), "{counts:?}");
}

#[test]
fn all_ejected_without_panic_is_no_healthy_upstream() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::LeastRequest, 1, 100),
        endpoints(2),
        1,
    );
    let t0 = Instant::now();
    fail(&c, addr(0), 1, t0);
    fail(&c, addr(1), 1, t0);
    let headers = HeaderMap::new();
    assert_eq!(
        c.pick(&PickContext::new(&headers), t0).unwrap_err(),
        PickError::NoHealthyUpstream {
            endpoints: 2,
            ejected: 2
        }
    );
    assert!(c.pick(&PickContext::new(&headers), t0 + S(30)).is_ok());
}

#[test]
fn ejected_endpoints_are_skipped_by_every_balancer() {
    let balancers = [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        LoadBalancer::Passthrough,
        LoadBalancer::ConsistentHash(ConsistentHash::HttpHeaderName("x-user".into())),
    ];
    for lb in balancers {
        let c = Cluster::with_seed(
            "c".into(),
            &outlier_policy(lb.clone(), 1, 100),
            endpoints(3),
            5,
        );
        let t0 = Instant::now();
        fail(&c, addr(0), 1, t0);
        for k in 0..50 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", format!("u{k}").parse().unwrap());
            let picked = pick_with(&c, &PickContext::new(&headers), t0);
            assert_ne!(picked, addr(0), "{lb:?}");
        }
    }
}

#[test]
fn set_endpoints_keeps_outlier_state() {
    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 3, 100),
        endpoints(3),
        1,
    );
    let t0 = Instant::now();
    fail(&c, addr(1), 3, t0);
    fail(&c, addr(2), 2, t0);
    c.set_endpoints(vec![endpoint(2), endpoint(1), endpoint(4)]);
    let status = c.endpoints_at(t0);
    assert_eq!(status[1].address, addr(1));
    assert_eq!(status[1].ejected_until, Some(t0 + S(30)));
    assert_eq!(status[0].consecutive_5xx, 2);
    assert_eq!(status[2].consecutive_5xx, 0);
    fail(&c, addr(2), 1, t0);
    assert_eq!(ejected(&c, t0), [addr(2), addr(1)]);
    // A removed endpoint that comes back starts fresh.
    c.set_endpoints(vec![endpoint(0)]);
    c.set_endpoints(vec![endpoint(0), endpoint(1)]);
    assert!(ejected(&c, t0).is_empty());
}

#[test]
fn reports_without_detection_or_for_unknown_endpoints_are_ignored() {
    let plain = cluster(LoadBalancer::RoundRobin, 2);
    let t0 = Instant::now();
    fail(&plain, addr(0), 100, t0);
    assert!(ejected(&plain, t0).is_empty());
    assert_eq!(plain.endpoints_at(t0)[0].consecutive_5xx, 0);

    let c = Cluster::with_seed(
        "c".into(),
        &outlier_policy(LoadBalancer::RoundRobin, 1, 100),
        endpoints(2),
        1,
    );
    fail(&c, addr(9), 10, t0);
    assert!(ejected(&c, t0).is_empty());
}
