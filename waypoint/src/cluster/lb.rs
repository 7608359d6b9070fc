//! Load-balancing algorithms over the candidate endpoints of one pick.
//!
//! The caller ([`Cluster::pick`](super::Cluster::pick)) has already removed ejected endpoints
//! (unless in panic mode) and, when others remain, the endpoints excluded by earlier attempts;
//! what is left is `candidates`, indices into the cluster's endpoint list in list order, never
//! empty.
//!
//! * `ROUND_ROBIN`: one rotation per cluster; the next candidate at or after the cursor, which
//!   then moves past it (the cursor starts at a random index, as Envoy randomises its start).
//! * `LEAST_REQUEST` (Istio's default): Envoy's power of two choices on active requests: two
//!   distinct random candidates, the one with fewer active requests wins (ties: the first
//!   drawn). With exactly two candidates both are compared (ties: random), with one it is it.
//! * `RANDOM`: uniform over the candidates.
//! * `PASSTHROUGH`: Istio's `ORIGINAL_DST` load balancer forwards to the address the caller
//!   dialled. A waypoint's inbound VIP cluster is always reached through the service VIP, so
//!   there is no pod address to pass through; the first candidate in endpoint order is used
//!   (deterministic; with a single endpoint it is exactly passthrough).
//! * consistent hash: see [`super::hash`].

use std::sync::atomic::Ordering;

use fastrand::Rng;

use super::Endpoint;

/// Round robin: the first candidate at or after `cursor` (wrapping over `total` endpoints);
/// moves the cursor past it.
pub(crate) fn round_robin(candidates: &[usize], total: usize, cursor: &mut usize) -> usize {
    let start = *cursor % total.max(1);
    let chosen = candidates
        .iter()
        .copied()
        .find(|index| *index >= start)
        .or_else(|| candidates.first().copied())
        .unwrap_or(start);
    *cursor = (chosen + 1) % total.max(1);
    chosen
}

/// Least request, power of two choices.
pub(crate) fn least_request(candidates: &[usize], endpoints: &[Endpoint], rng: &mut Rng) -> usize {
    let active = |index: usize| endpoints[index].active.load(Ordering::Relaxed);
    match candidates {
        [] => 0,
        [only] => *only,
        [a, b] => match active(*a).cmp(&active(*b)) {
            std::cmp::Ordering::Less => *a,
            std::cmp::Ordering::Greater => *b,
            std::cmp::Ordering::Equal => {
                if rng.bool() {
                    *a
                } else {
                    *b
                }
            }
        },
        _ => {
            let first = rng.usize(..candidates.len());
            // Draw the second among the others, so the two choices are distinct.
            let mut second = rng.usize(..candidates.len() - 1);
            if second >= first {
                second += 1;
            }
            let (a, b) = (candidates[first], candidates[second]);
            if active(b) < active(a) { b } else { a }
        }
    }
}

/// Uniformly random.
pub(crate) fn random(candidates: &[usize], rng: &mut Rng) -> usize {
    if candidates.is_empty() {
        return 0;
    }
    candidates[rng.usize(..candidates.len())]
}

/// Passthrough: the first candidate in endpoint order.
pub(crate) fn passthrough(candidates: &[usize]) -> usize {
    candidates.first().copied().unwrap_or(0)
}
