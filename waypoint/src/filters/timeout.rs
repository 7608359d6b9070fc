//! Timeouts: the route's overall timeout (VirtualService `timeout`, HTTPRoute
//! `timeouts.request`) covers the **send** phase across every try and backoff; the per-try
//! timeout (`retries.perTryTimeout`, HTTPRoute `timeouts.backendRequest`) covers one try. When
//! the overall timeout fires the answer is 504 with flag `UT`; a per-try timeout is an
//! [`AttemptOutcome::Timeout`](super::AttemptOutcome::Timeout), retried under the retry
//! conditions.
//!
//! Client-supplied `x-envoy-upstream-rq-timeout-ms` / `x-envoy-upstream-rq-per-try-timeout-ms`
//! are ignored: Envoy only honours `x-envoy-*` control headers from trusted (internal)
//! downstreams, and a waypoint's downstreams are arbitrary mesh workloads, so letting them
//! lengthen or shorten the operator's timeouts is not wanted. `grpc-timeout` is likewise not
//! consulted.

use std::time::Duration;

use crate::route::RetryPolicy;

/// The overall and per-try timeouts of a request, as Envoy computes them: a zero duration is
/// "disabled" (Istio's `0s`); a per-try timeout at least as long as the overall timeout is
/// dropped (Envoy ignores it: the overall timeout fires first).
pub fn effective_timeouts(
    route_timeout: Option<Duration>,
    retry: Option<&RetryPolicy>,
) -> (Option<Duration>, Option<Duration>) {
    let overall = route_timeout.filter(|d| !d.is_zero());
    let per_try = retry
        .and_then(|r| r.per_try_timeout)
        .filter(|d| !d.is_zero())
        .filter(|d| overall.is_none_or(|overall| *d < overall));
    (overall, per_try)
}
