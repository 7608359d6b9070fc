//! Tests of the run-time cluster: balancers and consistent hash, circuit breakers, outlier
//! detection.

mod balancers;
mod breaker;
mod hash;
mod outlier;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;

use super::*;
use crate::config::istio::{OutlierDetection, Percentage};

/// `10.0.0.<i>:8080`.
fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

fn endpoint(i: u8) -> ClusterEndpoint {
    ClusterEndpoint {
        address: addr(i),
        uid: Arc::from(format!("Kubernetes//Pod/default/pod-{i}")),
    }
}

/// Endpoints `10.0.0.0..n`.
fn endpoints(n: u8) -> Vec<ClusterEndpoint> {
    (0..n).map(endpoint).collect()
}

fn policy(load_balancer: LoadBalancer) -> ClusterPolicy {
    ClusterPolicy {
        load_balancer,
        ..ClusterPolicy::default()
    }
}

fn cluster(load_balancer: LoadBalancer, n: u8) -> Cluster {
    Cluster::with_seed(
        "inbound-vip|80|http|svc.ns.svc.cluster.local".into(),
        &policy(load_balancer),
        endpoints(n),
        7,
    )
}

/// Outlier detection ejecting after `consecutive` 5xx, up to `max_percent` of endpoints.
fn outlier_policy(load_balancer: LoadBalancer, consecutive: u32, max_percent: u8) -> ClusterPolicy {
    ClusterPolicy {
        load_balancer,
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx_errors: Some(consecutive),
            max_ejection_percent: Some(Percentage(max_percent)),
            ..OutlierDetection::default()
        }),
        ..ClusterPolicy::default()
    }
}

fn pick_with(cluster: &Cluster, ctx: &PickContext<'_>, now: Instant) -> SocketAddr {
    cluster.pick(ctx, now).expect("an endpoint").address
}

fn pick(cluster: &Cluster, now: Instant) -> SocketAddr {
    let headers = HeaderMap::new();
    pick_with(cluster, &PickContext::new(&headers), now)
}

/// Index `i` of `10.0.0.i`.
fn index(address: SocketAddr) -> usize {
    match address.ip() {
        IpAddr::V4(v4) => usize::from(v4.octets()[3]),
        IpAddr::V6(_) => usize::MAX,
    }
}

/// How many of `picks` went to each of `n` endpoints.
fn histogram(picks: impl IntoIterator<Item = SocketAddr>, n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for address in picks {
        counts[index(address)] += 1;
    }
    counts
}
