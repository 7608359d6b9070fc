//! The inbound VIP cluster `inbound-vip|<port>|http[/<subset>]|<host>` at run time.
//!
//! # Where this sits
//!
//! ```text
//! inbound VIP listener ── route selection (crate::route) picks a Backend (host, subset, port)
//!        │                 and the concrete stage's ClusterPolicy (DestinationRule)
//!        ▼
//! inbound VIP cluster  ── THIS MODULE: circuit breaking (admit / try_retry), load balancing
//!        │                 (pick), outlier detection (report)
//!        ▼
//! inbound pod listener ── `inbound-pod|<port>|<podIP>`: the chosen endpoint (podIP:targetPort),
//!                          then connect_originate (HBONE to the pod's ztunnel)
//! ```
//!
//! One [`Cluster`] exists per cluster name, shared behind an `Arc` by every request task. Per
//! attempt the caller does, in order: [`Cluster::admit`] (or, for a retry, also
//! [`Cluster::try_retry`]), [`Cluster::pick`] with the hosts of earlier attempts in
//! [`PickContext::exclude`], sends the request to the inbound pod listener, and reports the
//! result with [`Cluster::report`]. The endpoint set is replaced with
//! [`Cluster::set_endpoints`] when the workloads behind the service change; endpoints that stay
//! keep their outlier state and active-request counts.
//!
//! Everything that decides takes `now: Instant` and never reads a clock, and all randomness
//! comes from a per-cluster `fastrand` generator that tests seed ([`Cluster::with_seed`]).
//!
//! Semantics follow Envoy as Istio configures it; see [`lb`] (balancers), [`hash`]
//! (consistent hash), [`breaker`] (connection pool / circuit breakers) and [`outlier`]
//! (outlier detection).

pub mod breaker;
pub mod hash;
pub mod lb;
pub mod outlier;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fastrand::Rng;
use foldhash::fast::RandomState as FastHash;
use http::{HeaderMap, HeaderValue};
use serde::Serialize;

pub use breaker::{
    ConnectionLimits, Overflow, RequestLimits, RequestPermit, RetryPermit, UpstreamProtocol,
};
pub use outlier::{Outcome, OutlierConfig};

use crate::config::duration::parse_duration;
use crate::config::istio::ConsistentHash;
use crate::route::{ClusterPolicy, LoadBalancer};
use breaker::CircuitBreaker;
use hash::{HashKey, KeyInputs, Ring};
use outlier::{Detector, EndpointOutlier};

/// One endpoint of the cluster: a pod of the service (subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    /// `podIP:targetPort`.
    pub address: SocketAddr,
    /// The workload's uid.
    pub uid: Arc<str>,
}

/// What [`Cluster::pick`] may look at in the request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// Request headers (consistent hash on a header or cookie).
    pub headers: &'a HeaderMap,
    /// The downstream client's address (consistent hash on the source IP).
    pub source_ip: Option<IpAddr>,
    /// The query string, without `?` (consistent hash on a query parameter).
    pub query: Option<&'a str>,
    /// Endpoints tried by earlier attempts of this request; avoided while any other endpoint is
    /// available (Istio's `previous_hosts` retry predicate).
    pub exclude: &'a [SocketAddr],
}

impl<'a> PickContext<'a> {
    /// A context with only headers.
    pub fn new(headers: &'a HeaderMap) -> Self {
        Self {
            headers,
            source_ip: None,
            query: None,
            exclude: &[],
        }
    }
}

/// The chosen endpoint.
#[derive(Debug)]
pub struct Picked {
    /// `podIP:targetPort`.
    pub address: SocketAddr,
    /// The workload's uid.
    pub uid: Arc<str>,
    /// Counts the request as active on this endpoint (least request) until dropped; keep it
    /// until the response is complete.
    pub active: ActiveRequest,
    /// Consistent hash on a cookie that was absent and has a ttl: the `Set-Cookie` value to add
    /// to the response, as Envoy does.
    pub set_cookie: Option<HeaderValue>,
}

/// An active request on one endpoint; decrements the endpoint's count when dropped.
#[derive(Debug)]
pub struct ActiveRequest(Arc<AtomicU32>);

impl ActiveRequest {
    fn start(counter: &Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickError {
    /// No endpoint, or every endpoint ejected (outside panic mode): Envoy's `UH`, HTTP 503.
    #[error("no healthy upstream: {ejected} of {endpoints} endpoints ejected")]
    NoHealthyUpstream {
        /// Endpoints in the cluster.
        endpoints: usize,
        /// Of which ejected.
        ejected: usize,
    },
}

impl PickError {
    /// Envoy's response flag.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::NoHealthyUpstream { .. } => "UH",
        }
    }

    /// The status answered downstream.
    pub fn status(&self) -> u16 {
        503
    }
}

/// One endpoint as shown by `config_dump` / the admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `podIP:targetPort`.
    pub address: SocketAddr,
    /// The workload's uid.
    pub uid: String,
    /// Requests in flight.
    pub active_requests: u32,
    /// Consecutive 5xx (incl. local failures) counted so far.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors counted so far.
    pub consecutive_gateway_errors: u32,
    /// Times ejected since the endpoint joined.
    pub ejections: u32,
    /// When the current ejection ends (not serialised: `Instant` is process-local).
    #[serde(skip)]
    pub ejected_until: Option<Instant>,
    /// Milliseconds left in the current ejection, if ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejection_remaining_ms: Option<u64>,
}

/// Counters and gauges of one cluster (Envoy's stat names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// Requests admitted and not finished.
    pub upstream_rq_active: u32,
    /// Requests waiting in the pending queue.
    pub upstream_rq_pending_active: u32,
    /// Retries in flight.
    pub upstream_rq_retry_active: u32,
    /// Requests refused by the pending-queue or max-requests breaker (`UO`).
    pub upstream_rq_pending_overflow: u64,
    /// Retries refused by the max-retries breaker.
    pub upstream_rq_retry_overflow: u64,
    /// Endpoints currently ejected.
    pub outlier_detection_ejections_active: u32,
    /// Ejections enforced, all detectors.
    pub outlier_detection_ejections_enforced_total: u64,
    /// Ejections enforced by the consecutive-5xx detector.
    pub outlier_detection_ejections_enforced_consecutive_5xx: u64,
    /// Ejections enforced by the consecutive-gateway-failure detector.
    pub outlier_detection_ejections_enforced_consecutive_gateway_failure: u64,
    /// Ejections refused by `maxEjectionPercent`.
    pub outlier_detection_ejections_overflow: u64,
}

/// An endpoint with its run-time state.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) address: SocketAddr,
    pub(crate) uid: Arc<str>,
    /// Active requests; shared with the [`ActiveRequest`] guards, so it survives
    /// [`Cluster::set_endpoints`].
    pub(crate) active: Arc<AtomicU32>,
    pub(crate) outlier: EndpointOutlier,
}

#[derive(Debug, Default, Clone, Copy)]
struct OutlierCounters {
    enforced_5xx: u64,
    enforced_gateway: u64,
    overflow: u64,
}

/// Mutable state, behind the cluster's mutex (held only for the short, non-async decisions).
#[derive(Debug)]
struct State {
    endpoints: Vec<Endpoint>,
    by_address: HashMap<SocketAddr, usize, FastHash>,
    /// The hash ring, for consistent-hash clusters.
    ring: Option<Ring>,
    /// Round-robin cursor.
    cursor: usize,
    rng: Rng,
    /// The earliest end of a current ejection (skips scanning when nothing can expire).
    next_expiry: Option<Instant>,
    outlier_counters: OutlierCounters,
}

/// The run-time inbound VIP cluster: endpoints, load balancer, circuit breakers, outlier
/// detection. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    policy: ClusterPolicy,
    outlier: Option<OutlierConfig>,
    /// Parsed `httpCookie.ttl`.
    cookie_ttl: Option<Duration>,
    connection_limits: ConnectionLimits,
    breaker: CircuitBreaker,
    state: Mutex<State>,
}

impl Cluster {
    /// Creates the cluster `name` (see [`crate::route::cluster_name`]) with its policy and
    /// endpoints, seeding its random generator from the thread's.
    pub fn new(name: String, policy: &ClusterPolicy, endpoints: Vec<ClusterEndpoint>) -> Self {
        Self::with_seed(name, policy, endpoints, fastrand::u64(..))
    }

    /// Like [`Cluster::new`] with a fixed seed for every random choice (tests).
    pub fn with_seed(
        name: String,
        policy: &ClusterPolicy,
        endpoints: Vec<ClusterEndpoint>,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::with_seed(seed);
        let cursor = rng.usize(..);
        let cluster = Self {
            cookie_ttl: cookie_ttl(&name, &policy.load_balancer),
            outlier: policy
                .outlier_detection
                .as_ref()
                .map(OutlierConfig::from_istio),
            connection_limits: ConnectionLimits::from_istio(&policy.connection_pool),
            breaker: CircuitBreaker::new(RequestLimits::from_istio(&policy.connection_pool)),
            name,
            policy: policy.clone(),
            state: Mutex::new(State {
                endpoints: Vec::new(),
                by_address: HashMap::default(),
                ring: None,
                cursor,
                rng,
                next_expiry: None,
                outlier_counters: OutlierCounters::default(),
            }),
        };
        cluster.set_endpoints(endpoints);
        cluster
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The DestinationRule policy the cluster was built from.
    pub fn policy(&self) -> &ClusterPolicy {
        &self.policy
    }

    /// Outlier detection with defaults applied, if enabled.
    pub fn outlier_config(&self) -> Option<&OutlierConfig> {
        self.outlier.as_ref()
    }

    /// Request-level circuit-breaker limits with defaults applied.
    pub fn request_limits(&self) -> &RequestLimits {
        self.breaker.limits()
    }

    /// Connection-level limits for the upstream connection pool.
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.connection_limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters more than failing every later request, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the endpoint set. Endpoints that stay (same address) keep their outlier state
    /// and active-request counts; a repeated address keeps its first entry.
    pub fn set_endpoints(&self, endpoints: Vec<ClusterEndpoint>) {
        let mut state = self.lock();
        let mut previous: HashMap<SocketAddr, Endpoint> =
            state.endpoints.drain(..).map(|e| (e.address, e)).collect();
        let mut by_address =
            HashMap::with_capacity_and_hasher(endpoints.len(), FastHash::default());
        let mut next = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            if by_address.contains_key(&endpoint.address) {
                continue;
            }
            by_address.insert(endpoint.address, next.len());
            next.push(match previous.remove(&endpoint.address) {
                Some(kept) => Endpoint {
                    uid: endpoint.uid,
                    ..kept
                },
                None => Endpoint {
                    address: endpoint.address,
                    uid: endpoint.uid,
                    active: Arc::default(),
                    outlier: EndpointOutlier::default(),
                },
            });
        }
        state.ring =
            matches!(self.policy.load_balancer, LoadBalancer::ConsistentHash(_)).then(|| {
                let addresses: Vec<SocketAddr> = next.iter().map(|e| e.address).collect();
                Ring::build(&addresses)
            });
        state.endpoints = next;
        state.by_address = by_address;
        state.next_expiry = self.next_expiry(&state.endpoints);
    }

    /// The endpoints and their state, for `config_dump` (ejection state as of now).
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.endpoints_at(Instant::now())
    }

    /// The endpoints and their state as of `now` (read-only: nothing is returned to service).
    pub fn endpoints_at(&self, now: Instant) -> Vec<EndpointStatus> {
        let state = self.lock();
        state
            .endpoints
            .iter()
            .map(|e| {
                let until = self
                    .outlier
                    .as_ref()
                    .and_then(|c| e.outlier.ejected_until(c))
                    .filter(|until| *until > now);
                EndpointStatus {
                    address: e.address,
                    uid: e.uid.to_string(),
                    active_requests: e.active.load(Ordering::Relaxed),
                    consecutive_5xx: e.outlier.consecutive_5xx,
                    consecutive_gateway_errors: e.outlier.consecutive_gateway,
                    ejections: e.outlier.ejections,
                    ejected_until: until,
                    ejection_remaining_ms: until.map(|u| {
                        u64::try_from(u.duration_since(now).as_millis()).unwrap_or(u64::MAX)
                    }),
                }
            })
            .collect()
    }

    /// The cluster's counters and gauges (ejections as of now).
    pub fn stats(&self) -> ClusterStats {
        self.stats_at(Instant::now())
    }

    /// The cluster's counters and gauges, with ejections as of `now`.
    pub fn stats_at(&self, now: Instant) -> ClusterStats {
        let (ejected, outlier) = {
            let state = self.lock();
            let ejected = self.outlier.as_ref().map_or(0, |c| {
                state
                    .endpoints
                    .iter()
                    .filter_map(|e| e.outlier.ejected_until(c))
                    .filter(|until| *until > now)
                    .count()
            });
            (ejected, state.outlier_counters)
        };
        let counters = self.breaker.counters();
        ClusterStats {
            upstream_rq_active: counters.requests_active.load(Ordering::Relaxed),
            upstream_rq_pending_active: counters.pending_active.load(Ordering::Relaxed),
            upstream_rq_retry_active: counters.retries_active.load(Ordering::Relaxed),
            upstream_rq_pending_overflow: counters.pending_overflow.load(Ordering::Relaxed),
            upstream_rq_retry_overflow: counters.retry_overflow.load(Ordering::Relaxed),
            outlier_detection_ejections_active: u32::try_from(ejected).unwrap_or(u32::MAX),
            outlier_detection_ejections_enforced_total: outlier.enforced_5xx
                + outlier.enforced_gateway,
            outlier_detection_ejections_enforced_consecutive_5xx: outlier.enforced_5xx,
            outlier_detection_ejections_enforced_consecutive_gateway_failure: outlier
                .enforced_gateway,
            outlier_detection_ejections_overflow: outlier.overflow,
        }
    }

    /// Chooses an endpoint for one attempt.
    ///
    /// Ejected endpoints are skipped unless the cluster is in panic mode (fewer than
    /// `minHealthPercent` in service), then every endpoint is a candidate. Endpoints in
    /// `ctx.exclude` are avoided while another candidate exists.
    pub fn pick(&self, ctx: &PickContext<'_>, now: Instant) -> Result<Picked, PickError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        self.return_expired(state, now);
        let total = state.endpoints.len();
        let ejected = state
            .endpoints
            .iter()
            .filter(|e| e.outlier.is_ejected())
            .count();
        let panic = ejected > 0 && self.outlier.is_some_and(|c| c.panics(ejected, total));
        let eligible = |e: &Endpoint| panic || !e.outlier.is_ejected();
        let mut candidates: Vec<usize> = (0..total)
            .filter(|i| {
                let e = &state.endpoints[*i];
                eligible(e) && !ctx.exclude.contains(&e.address)
            })
            .collect();
        if candidates.is_empty() {
            candidates = (0..total)
                .filter(|i| eligible(&state.endpoints[*i]))
                .collect();
        }
        if candidates.is_empty() {
            return Err(PickError::NoHealthyUpstream {
                endpoints: total,
                ejected,
            });
        }
        let mut set_cookie = None;
        let chosen = match &self.policy.load_balancer {
            LoadBalancer::RoundRobin => lb::round_robin(&candidates, total, &mut state.cursor),
            LoadBalancer::LeastRequest => {
                lb::least_request(&candidates, &state.endpoints, &mut state.rng)
            }
            LoadBalancer::Random => lb::random(&candidates, &mut state.rng),
            LoadBalancer::Passthrough => lb::passthrough(&candidates),
            LoadBalancer::ConsistentHash(key) => {
                let hash = self.hash_of(key, ctx, &mut state.rng, &mut set_cookie);
                let mut accept = vec![false; total];
                for index in &candidates {
                    accept[*index] = true;
                }
                state
                    .ring
                    .as_ref()
                    .and_then(|ring| ring.lookup(hash, |i| accept[i]))
                    .unwrap_or(candidates[0])
            }
        };
        let endpoint = &state.endpoints[chosen];
        Ok(Picked {
            address: endpoint.address,
            uid: Arc::clone(&endpoint.uid),
            active: ActiveRequest::start(&endpoint.active),
            set_cookie,
        })
    }

    /// The ring position of this request; a random one when the key is missing (Envoy).
    fn hash_of(
        &self,
        key: &ConsistentHash,
        ctx: &PickContext<'_>,
        rng: &mut Rng,
        set_cookie: &mut Option<HeaderValue>,
    ) -> u64 {
        let inputs = KeyInputs {
            headers: ctx.headers,
            source_ip: ctx.source_ip,
            query: ctx.query,
        };
        match hash::hash_key(key, &inputs, self.cookie_ttl, || rng.u64(..)) {
            HashKey::Hash(hash) => hash,
            HashKey::Missing => rng.u64(..),
            HashKey::NewCookie {
                hash,
                set_cookie: cookie,
            } => {
                *set_cookie = Some(cookie);
                hash
            }
        }
    }

    /// Admits a request through the circuit breakers (DestinationRule `connectionPool`):
    /// waits in the pending queue when allowed, else fails at once with [`Overflow`] (`UO`,
    /// 503). See [`breaker`] for the model; hold the permit until the response is complete.
    pub async fn admit(&self, protocol: UpstreamProtocol) -> Result<RequestPermit, Overflow> {
        self.breaker.admit(protocol).await
    }

    /// Takes a slot of the max-retries breaker (`http.maxRetries`, unlimited by default) for
    /// one retry; `None` means the retry must not be attempted (Envoy's `URX`-style overflow,
    /// counted in `upstream_rq_retry_overflow`).
    pub fn try_retry(&self) -> Option<RetryPermit> {
        self.breaker.try_retry()
    }

    /// Reports the outcome of one attempt on `endpoint` to outlier detection (no-op when
    /// disabled or the endpoint is gone). Do not report circuit-breaker overflows: they are
    /// not the endpoint's fault (Envoy ignores them too).
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(config) = self.outlier else {
            return;
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        self.return_expired(state, now);
        let Some(&index) = state.by_address.get(&endpoint) else {
            return;
        };
        let Some(detector) = state.endpoints[index].outlier.record(&config, outcome) else {
            return;
        };
        if state.endpoints[index].outlier.is_ejected() {
            return;
        }
        let ejected = state
            .endpoints
            .iter()
            .filter(|e| e.outlier.is_ejected())
            .count();
        if config.may_eject(ejected, state.endpoints.len()) {
            state.endpoints[index].outlier.eject(&config, now);
            match detector {
                Detector::Consecutive5xx => state.outlier_counters.enforced_5xx += 1,
                Detector::ConsecutiveGateway => state.outlier_counters.enforced_gateway += 1,
            }
            state.next_expiry = self.next_expiry(&state.endpoints);
            tracing::info!(
                cluster = %self.name,
                endpoint = %endpoint,
                ?detector,
                until = ?state.endpoints[index].outlier.ejected_until(&config).map(|u| u - now),
                "outlier ejected"
            );
        } else {
            state.outlier_counters.overflow += 1;
        }
        state.endpoints[index].outlier.reset_counter(detector);
    }

    /// Returns to service every endpoint whose ejection has expired by `now`.
    fn return_expired(&self, state: &mut State, now: Instant) {
        let Some(config) = self.outlier.as_ref() else {
            return;
        };
        if state.next_expiry.is_none_or(|next| next > now) {
            return;
        }
        for endpoint in &mut state.endpoints {
            endpoint.outlier.refresh(config, now);
        }
        state.next_expiry = self.next_expiry(&state.endpoints);
    }

    fn next_expiry(&self, endpoints: &[Endpoint]) -> Option<Instant> {
        let config = self.outlier.as_ref()?;
        endpoints
            .iter()
            .filter_map(|e| e.outlier.ejected_until(config))
            .min()
    }
}

/// Parses the cookie ttl of a consistent hash on a cookie; an unparsable ttl generates no
/// cookie (logged once per cluster), as if it were unset.
fn cookie_ttl(cluster: &str, load_balancer: &LoadBalancer) -> Option<Duration> {
    let LoadBalancer::ConsistentHash(ConsistentHash::HttpCookie { ttl: Some(ttl), .. }) =
        load_balancer
    else {
        return None;
    };
    match parse_duration(ttl) {
        Ok(ttl) => Some(ttl),
        Err(error) => {
            tracing::warn!(%cluster, %error, "consistentHash.httpCookie.ttl ignored");
            None
        }
    }
}
