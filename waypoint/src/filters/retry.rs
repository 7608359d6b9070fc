//! Retries: after each try, the **send** phase asks [`decide_retry`] whether to go back to
//! **select backend** (after [`retry_backoff`]) or to hand the outcome to **respond**.
//!
//! Conditions follow Envoy's `retry_on` (Istio's `retryOn`); the number of retries is
//! [`RetryPolicy::attempts`] (not counting the first try; Istio's default policy is
//! [`RetryPolicy::istio_default`]: 2 retries on connect failure, refused stream, gRPC
//! cancelled/unavailable and 503). A retry needs the request body again, so the listener keeps
//! a copy of at most [`RETRY_BUFFER_LIMIT`] bytes ([`body_retryable`]).

use std::time::Duration;

use super::flags::ResponseFlag;
use crate::config::istio::RetryOn;
use crate::route::RetryPolicy;

/// How much request body the listener keeps for retries, in bytes (64 KiB). A request whose
/// body grows past it is not retried: the bytes already sent upstream are gone. Envoy bounds
/// this with the route's `per_request_buffer_limit_bytes`, which defaults to the listener's
/// per-connection buffer limit; 64 KiB keeps the per-request memory of the waypoint small while
/// covering typical API bodies, and gRPC unary calls.
pub const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Envoy's default base interval of the retry backoff.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Envoy's maximum backoff interval, in multiples of the base.
pub const BACKOFF_MAX_FACTOR: u32 = 10;

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The upstream answered: HTTP status, and the `grpc-status` of the response headers
    /// (trailers-only gRPC responses) when there is one.
    Response(u16, Option<u32>),
    /// No connection to the endpoint (connect error, HBONE tunnel refused).
    ConnectFailure,
    /// The stream or connection was reset after the request was sent, before a response.
    Reset,
    /// The per-try timeout fired before a response.
    Timeout,
    /// The upstream refused the stream (HTTP/2 `REFUSED_STREAM`) before processing it.
    RefusedStream,
}

impl AttemptOutcome {
    /// The response flag of a try that ended without a response: `UF` (connect failure), `UR`
    /// (reset or refused stream), `UT` (timeout).
    pub fn response_flag(&self) -> Option<ResponseFlag> {
        match self {
            Self::Response(..) => None,
            Self::ConnectFailure => Some(ResponseFlag::UpstreamConnectionFailure),
            Self::Reset | Self::RefusedStream => Some(ResponseFlag::UpstreamRemoteReset),
            Self::Timeout => Some(ResponseFlag::UpstreamRequestTimeout),
        }
    }

    /// The status of the local reply when the last try ended without a response: 504 for a
    /// timeout (Envoy's `upstream request timeout`), 503 otherwise (`upstream connect error or
    /// disconnect/reset before headers`).
    pub fn error_status(&self) -> Option<u16> {
        match self {
            Self::Response(..) => None,
            Self::Timeout => Some(504),
            Self::ConnectFailure | Self::Reset | Self::RefusedStream => Some(503),
        }
    }

    /// Whether the request never reached the upstream application (Envoy's "reset before
    /// request"): a connect failure or a refused stream.
    fn before_request(&self) -> bool {
        matches!(self, Self::ConnectFailure | Self::RefusedStream)
    }
}

/// What to do after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again, after [`retry_backoff`].
    Retry,
    /// The outcome is final: a success, or a failure no condition covers.
    Done,
    /// The outcome calls for a retry but the retries are used up: the outcome is final and the
    /// log gets `URX`.
    LimitExceeded,
}

/// Decides whether to retry after a try, given how many retries were already made
/// (`retries_done`: 0 after the first try).
///
/// Conditions (Envoy `retry_on`):
///
/// | condition | responses | no response |
/// |---|---|---|
/// | `5xx` | 500–599 | connect failure, reset, refused stream, per-try timeout |
/// | `gateway-error` | 502, 503, 504 | connect failure, reset, refused stream, per-try timeout |
/// | `reset` | — | connect failure, reset, refused stream, per-try timeout |
/// | `reset-before-request` | — | connect failure, refused stream |
/// | `connect-failure` | — | connect failure |
/// | `refused-stream` | — | refused stream |
/// | `retriable-4xx` | 409 | — |
/// | `retriable-status-codes` | [`RetryPolicy::retriable_status_codes`] | — |
/// | `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable` | `grpc-status` 1, 4, 13, 8, 14 | — |
///
/// `envoy-ratelimited`, `retriable-headers` and `http3-post-connect-failure` need response
/// headers or HTTP/3, which this outcome does not carry: they never match.
pub fn decide_retry(
    policy: &RetryPolicy,
    retries_done: u32,
    outcome: &AttemptOutcome,
) -> RetryDecision {
    if !retriable(policy, outcome) {
        RetryDecision::Done
    } else if retries_done >= policy.attempts {
        RetryDecision::LimitExceeded
    } else {
        RetryDecision::Retry
    }
}

/// Whether to retry after try number `attempt` (1 for the first try): [`decide_retry`] with
/// `attempt - 1` retries done, answering [`RetryDecision::Retry`].
pub fn should_retry(policy: &RetryPolicy, attempt: u32, outcome: &AttemptOutcome) -> bool {
    decide_retry(policy, attempt.saturating_sub(1), outcome) == RetryDecision::Retry
}

fn retriable(policy: &RetryPolicy, outcome: &AttemptOutcome) -> bool {
    policy.retry_on.iter().any(|condition| {
        let status = match outcome {
            AttemptOutcome::Response(status, grpc) => (*status, *grpc),
            no_response => {
                return match condition {
                    RetryOn::FiveXx | RetryOn::GatewayError | RetryOn::Reset => true,
                    RetryOn::ResetBeforeRequest => no_response.before_request(),
                    RetryOn::ConnectFailure => *no_response == AttemptOutcome::ConnectFailure,
                    RetryOn::RefusedStream => *no_response == AttemptOutcome::RefusedStream,
                    _ => false,
                };
            }
        };
        match (condition, status) {
            (RetryOn::FiveXx, (code, _)) => (500..=599).contains(&code),
            (RetryOn::GatewayError, (code, _)) => matches!(code, 502..=504),
            (RetryOn::Retriable4xx, (code, _)) => code == 409,
            (RetryOn::RetriableStatusCodes, (code, _)) => {
                policy.retriable_status_codes.contains(&code)
            }
            (RetryOn::Cancelled, (_, Some(grpc))) => grpc == 1,
            (RetryOn::DeadlineExceeded, (_, Some(grpc))) => grpc == 4,
            (RetryOn::ResourceExhausted, (_, Some(grpc))) => grpc == 8,
            (RetryOn::Internal, (_, Some(grpc))) => grpc == 13,
            (RetryOn::Unavailable, (_, Some(grpc))) => grpc == 14,
            _ => false,
        }
    })
}

/// The pause before retry number `retry` (1 for the first retry), with Envoy's fully jittered
/// exponential backoff: uniform in `[0, (2^retry - 1) × base)`, capped at 10 × base. The base is
/// [`RetryPolicy::backoff`], else 25 ms (so 0–24 ms, 0–74 ms, 0–174 ms, then at most 250 ms);
/// like Envoy, it counts in whole milliseconds. `roll` is uniform in `[0, 1)`.
pub fn retry_backoff(policy: &RetryPolicy, retry: u32, roll: f64) -> Duration {
    let base_ms = policy
        .backoff
        .unwrap_or(DEFAULT_BACKOFF_BASE)
        .as_millis()
        .clamp(1, u128::from(u32::MAX));
    let max_ms = base_ms * u128::from(BACKOFF_MAX_FACTOR);
    let factor = (1u128 << retry.clamp(1, 64)) - 1;
    let range_ms = base_ms.saturating_mul(factor);
    let roll = if roll.is_finite() {
        roll.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // `range_ms` is below 2^96, well inside f64's range; the product is truncated to whole
    // milliseconds (and stays below `range_ms`, since `roll < 1`).
    let jittered = ((range_ms as f64) * roll) as u128;
    let ms = jittered.min(range_ms.saturating_sub(1)).min(max_ms);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Whether a request whose body has reached `body_bytes` so far can still be retried (its body
/// fits in [`RETRY_BUFFER_LIMIT`]).
pub fn body_retryable(body_bytes: u64) -> bool {
    body_bytes <= RETRY_BUFFER_LIMIT
}
