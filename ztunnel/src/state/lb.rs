//! Endpoint selection for service-addressed traffic (Istio ztunnel's load balancing): health
//! filtering, locality ranking by routing preference, then a random pick weighted by capacity.
//!
//! Pure: the caller supplies the endpoints and the randomness, so decisions are reproducible.

use super::service::{LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Service};
use super::store::Endpoint;
use super::workload::{HealthStatus, Workload};

/// Picks the endpoint of `service` that traffic from `source` should go to.
///
/// - Unhealthy endpoints are skipped unless the health policy is `AllowAll`.
/// - With routing preferences, each endpoint is ranked by how many of the scopes, in order,
///   match `source` before the first mismatch. `Strict` keeps only endpoints matching all of
///   them; `Failover` keeps those of the best rank; `Standard` ignores the preferences.
/// - `Passthrough` services do no selection: the result is `None` and the caller connects to
///   the original destination.
/// - Among the remaining endpoints one is drawn with probability proportional to
///   `capacity` (uniformly if every capacity is 0). `random(n)` must return a value in `0..n`.
pub fn select_endpoint<'a>(
    service: &Service,
    source: &Workload,
    endpoints: &[Endpoint<'a>],
    mut random: impl FnMut(u32) -> u32,
) -> Option<Endpoint<'a>> {
    let lb = service.load_balancer.clone().unwrap_or_default();
    if lb.mode == LoadBalancerMode::Passthrough {
        return None;
    }
    let healthy_only = lb.health_policy == LoadBalancerHealthPolicy::OnlyHealthy;
    let eligible = endpoints
        .iter()
        .filter(|e| !healthy_only || e.workload.status == HealthStatus::Healthy);
    let candidates: Vec<Endpoint<'a>> = match lb.mode {
        LoadBalancerMode::Strict | LoadBalancerMode::Failover
            if !lb.routing_preferences.is_empty() =>
        {
            let ranked: Vec<(usize, Endpoint<'a>)> = eligible
                .map(|e| (rank(&lb.routing_preferences, source, e.workload), *e))
                .collect();
            let wanted = if lb.mode == LoadBalancerMode::Strict {
                lb.routing_preferences.len()
            } else {
                ranked.iter().map(|(r, _)| *r).max()?
            };
            ranked
                .into_iter()
                .filter(|(r, _)| *r == wanted)
                .map(|(_, e)| e)
                .collect()
        }
        _ => eligible.copied().collect(),
    };
    pick_weighted(&candidates, &mut random)
}

/// Number of leading `scopes` on which `dest` matches `source`.
fn rank(scopes: &[LoadBalancerScope], source: &Workload, dest: &Workload) -> usize {
    scopes
        .iter()
        .take_while(|scope| match scope {
            LoadBalancerScope::Region => source.locality.region == dest.locality.region,
            LoadBalancerScope::Zone => source.locality.zone == dest.locality.zone,
            LoadBalancerScope::Subzone => source.locality.subzone == dest.locality.subzone,
            LoadBalancerScope::Node => source.node == dest.node,
            LoadBalancerScope::Cluster => source.cluster_id == dest.cluster_id,
            LoadBalancerScope::Network => source.network == dest.network,
        })
        .count()
}

/// Draws one endpoint, weighted by capacity.
fn pick_weighted<'a>(
    candidates: &[Endpoint<'a>],
    random: &mut impl FnMut(u32) -> u32,
) -> Option<Endpoint<'a>> {
    if candidates.is_empty() {
        return None;
    }
    let total: u32 = candidates
        .iter()
        .fold(0u32, |sum, e| sum.saturating_add(e.workload.capacity));
    if total == 0 {
        let n = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
        let i = usize::try_from(random(n) % n).unwrap_or(0);
        return candidates.get(i).copied();
    }
    let mut point = random(total) % total;
    for e in candidates {
        if point < e.workload.capacity {
            return Some(*e);
        }
        point -= e.workload.capacity;
    }
    // Only reachable if the capacities saturated the sum; the last one takes the remainder.
    candidates.last().copied()
}

#[cfg(test)]
mod tests;
