//! Circuit breaking (DestinationRule `trafficPolicy.connectionPool`), as Envoy enforces its
//! cluster circuit breakers.
//!
//! # Model
//!
//! Istio maps `tcp.maxConnections` → `max_connections`, `http.http1MaxPendingRequests` →
//! `max_pending_requests`, `http.http2MaxRequests` → `max_requests` and `http.maxRetries` →
//! `max_retries`; unset means 2³²−1 (unlimited). Admission ([`CircuitBreaker::admit`]) follows
//! Envoy's connection pool:
//!
//! 1. **Connection slot** (HTTP/1.1 upstreams only). An HTTP/1.1 connection carries one request
//!    at a time, so at most `maxConnections` HTTP/1.1 requests are in flight. A request that
//!    finds every slot busy waits, FIFO, in the pending queue if fewer than
//!    `http1MaxPendingRequests` requests are waiting; otherwise it overflows at once. HTTP/2
//!    requests are multiplexed and skip this step (the upstream pool limits its own
//!    connections with [`ConnectionLimits`]; Envoy's HTTP/2 pending queue only exists while
//!    the first connection is being established, which is the pool's business).
//! 2. **Request slot** (every protocol). When the request is attached, fewer than
//!    `http2MaxRequests` requests may be active, else it overflows at once (Envoy checks
//!    `max_requests` when attaching a stream to a connection, so waiting requests do not count).
//!
//! Both overflows are Envoy's `UO` response flag (HTTP 503) and count in
//! `upstream_rq_pending_overflow`, as in Envoy.
//!
//! Differences from Envoy, deliberately: limits are exact (Envoy's per-worker atomics may
//! overshoot by a request per worker), and Envoy's guarantee of one connection per selected
//! host even past `max_connections` is not modelled.
//!
//! # Invariants
//!
//! `requests_active`, `pending_active` and `retries_active` equal the number of live
//! [`RequestPermit`]s, waiting [`CircuitBreaker::admit`] futures and live [`RetryPermit`]s: each
//! is incremented only by a successful bounded increment and decremented by exactly one guard's
//! `Drop`, so cancellation (dropping a waiting `admit`) cannot leak a slot.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::istio::ConnectionPoolSettings;

/// Istio's value for an unset limit (2³²−1).
pub const UNLIMITED: u32 = u32::MAX;
/// Istio's default connect timeout (mesh `connectTimeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default idle timeout of upstream connections (HTTP and TCP).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The protocol the request will use upstream; it decides whether a connection slot is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1: one request per connection at a time.
    Http1,
    /// HTTP/2: requests multiplexed on a connection.
    Http2,
}

/// The request could not be admitted: Envoy's `UO` (upstream overflow), answered with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Overflow {
    /// Every connection slot was busy and the pending queue was full.
    #[error("upstream overflow: pending queue full ({limit} pending requests)")]
    PendingQueue {
        /// `http1MaxPendingRequests`.
        limit: u32,
    },
    /// `http2MaxRequests` requests were already active.
    #[error("upstream overflow: {limit} requests already active")]
    Requests {
        /// `http2MaxRequests`.
        limit: u32,
    },
}

impl Overflow {
    /// Envoy's response flag.
    pub fn response_flag(&self) -> &'static str {
        "UO"
    }

    /// The status answered downstream.
    pub fn status(&self) -> u16 {
        503
    }
}

/// Connection-level limits for the upstream connection pool of this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `tcp.maxConnections` (unset: 2³²−1).
    pub max_connections: u32,
    /// `http.maxRequestsPerConnection`: `None` = unlimited (unset or 0); 1 disables keep-alive.
    pub max_requests_per_connection: Option<NonZeroU32>,
    /// `tcp.connectTimeout` (unset: 10 s).
    pub connect_timeout: Duration,
    /// `http.idleTimeout`: close pooled connections idle this long (unset: 1 h).
    pub http_idle_timeout: Duration,
    /// `tcp.idleTimeout`: for TCP proxying (unset: 1 h).
    pub tcp_idle_timeout: Duration,
}

impl ConnectionLimits {
    /// Applies Istio's defaults.
    pub fn from_istio(pool: &ConnectionPoolSettings) -> Self {
        Self {
            max_connections: pool.tcp.max_connections.unwrap_or(UNLIMITED),
            max_requests_per_connection: pool
                .http
                .max_requests_per_connection
                .and_then(NonZeroU32::new),
            connect_timeout: pool
                .tcp
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            http_idle_timeout: pool.http.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
            tcp_idle_timeout: pool.tcp.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        }
    }
}

/// The request-level limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// `tcp.maxConnections`, as the HTTP/1.1 concurrency limit.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`.
    pub max_requests: u32,
    /// `http.maxRetries`.
    pub max_retries: u32,
}

impl RequestLimits {
    /// Applies Istio's defaults (all unlimited).
    pub fn from_istio(pool: &ConnectionPoolSettings) -> Self {
        Self {
            max_connections: pool.tcp.max_connections.unwrap_or(UNLIMITED),
            max_pending_requests: pool.http.http1_max_pending_requests.unwrap_or(UNLIMITED),
            max_requests: pool.http.http2_max_requests.unwrap_or(UNLIMITED),
            max_retries: pool.http.max_retries.unwrap_or(UNLIMITED),
        }
    }
}

/// Gauges and counters of the circuit breakers (Envoy's names).
#[derive(Debug, Default)]
pub(crate) struct BreakerCounters {
    pub(crate) requests_active: AtomicU32,
    pub(crate) pending_active: AtomicU32,
    pub(crate) retries_active: AtomicU32,
    pub(crate) pending_overflow: AtomicU64,
    pub(crate) retry_overflow: AtomicU64,
}

/// The circuit breakers of one cluster.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    limits: RequestLimits,
    /// HTTP/1.1 connection slots; tokio's semaphore is fair, which makes the queue FIFO.
    http1_slots: Arc<Semaphore>,
    counters: Arc<BreakerCounters>,
}

impl CircuitBreaker {
    pub(crate) fn new(limits: RequestLimits) -> Self {
        let slots = usize::try_from(limits.max_connections)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            limits,
            http1_slots: Arc::new(Semaphore::new(slots)),
            counters: Arc::default(),
        }
    }

    pub(crate) fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    pub(crate) fn counters(&self) -> &BreakerCounters {
        &self.counters
    }

    /// Admits a request (see the module docs), waiting in the pending queue when allowed.
    pub(crate) async fn admit(
        &self,
        protocol: UpstreamProtocol,
    ) -> Result<RequestPermit, Overflow> {
        let connection = match protocol {
            UpstreamProtocol::Http2 => None,
            UpstreamProtocol::Http1 => Some(self.connection_slot().await?),
        };
        if !bounded_increment(&self.counters.requests_active, self.limits.max_requests) {
            self.counters
                .pending_overflow
                .fetch_add(1, Ordering::Relaxed);
            // `connection` drops here, handing the slot to the next waiter.
            return Err(Overflow::Requests {
                limit: self.limits.max_requests,
            });
        }
        Ok(RequestPermit {
            counters: Arc::clone(&self.counters),
            _connection: connection,
        })
    }

    async fn connection_slot(&self) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(slot) = Arc::clone(&self.http1_slots).try_acquire_owned() {
            return Ok(slot);
        }
        if !bounded_increment(
            &self.counters.pending_active,
            self.limits.max_pending_requests,
        ) {
            self.counters
                .pending_overflow
                .fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::PendingQueue {
                limit: self.limits.max_pending_requests,
            });
        }
        let _pending = CounterGuard(&self.counters.pending_active);
        // The semaphore is never closed, so acquiring only fails if it were; treat that as a
        // full queue rather than panicking.
        Arc::clone(&self.http1_slots)
            .acquire_owned()
            .await
            .map_err(|_| Overflow::PendingQueue {
                limit: self.limits.max_pending_requests,
            })
    }

    /// Takes a retry slot, or counts a retry overflow.
    pub(crate) fn try_retry(&self) -> Option<RetryPermit> {
        if bounded_increment(&self.counters.retries_active, self.limits.max_retries) {
            Some(RetryPermit {
                counters: Arc::clone(&self.counters),
            })
        } else {
            self.counters.retry_overflow.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Increments `counter` if it is below `limit`; `true` if it did.
fn bounded_increment(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |value| {
            (value < limit).then_some(value + 1)
        })
        .is_ok()
}

/// Decrements a counter on drop (a pending request leaving the queue, however it leaves).
struct CounterGuard<'a>(&'a AtomicU32);

impl Drop for CounterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request; holds its request slot (and HTTP/1.1 connection slot) until dropped.
#[derive(Debug)]
#[must_use = "the request slot is released when the permit is dropped"]
pub struct RequestPermit {
    counters: Arc<BreakerCounters>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.counters.requests_active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry in flight; counts against `maxRetries` until dropped.
#[derive(Debug)]
#[must_use = "the retry slot is released when the permit is dropped"]
pub struct RetryPermit {
    counters: Arc<BreakerCounters>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.counters.retries_active.fetch_sub(1, Ordering::AcqRel);
    }
}
