//! The per-request filters of the inbound VIP listener `inbound-vip|<port>|http|<host>`.
//!
//! The listener runs every request through fixed phases:
//!
//! ```text
//! authenticate → route → filters → select backend → send ⟲ (retry) → respond → log
//! ```
//!
//! [`route`](crate::route) picks the route. This module holds the pure operations of the
//! **filters** phase (what happens to the request between routing and sending) and of the
//! **respond** phase (what happens to the answer), plus the decisions the **send** phase asks
//! for. Nothing here does I/O, reads the clock or draws random numbers: randomness comes in as
//! arguments (`roll`s), so every function is table-tested. The listener sleeps, sends and logs.
//!
//! Per request, in order:
//!
//! 1. **filters**
//!    - [`strip_hop_by_hop`] and [`ensure_request_id`]; a WebSocket upgrade
//!      ([`websocket_upgrade`]) gets its `upgrade`/`connection` back ([`restore_upgrade`]);
//!    - [`cors_preflight`] may answer a preflight (Istio puts the CORS filter before the fault
//!      filter; routes that redirect or answer directly skip it);
//!    - [`decide_fault`]: sleep for the delay (`DI`), answer [`abort_response`] (`FI`);
//!    - a route that answers by itself (Envoy's router, after the fault filter):
//!      [`redirect_response`] or [`direct_response`], then straight to **respond**;
//!    - [`apply_rewrite`] (path and authority, [`ORIGINAL_PATH`] kept for the log), then the
//!      request [`apply_header_ops`] of the route and of the chosen backend;
//! 2. **select backend / send**: [`effective_timeouts`]; after each try [`decide_retry`] →
//!    [`retry_backoff`] and back to **select backend** while [`body_retryable`]; a failed last
//!    try maps to [`AttemptOutcome::error_status`] and [`AttemptOutcome::response_flag`];
//! 3. **respond**: [`upgrade_answer`] (switch, pass, or 502 `UPE`); [`strip_hop_by_hop`] on the
//!    response, the response [`apply_header_ops`],
//!    [`cors_response_headers`];
//! 4. **log**: the [`ResponseFlags`] collected on the way.

mod cors;
mod fault;
mod flags;
mod headers;
mod hop;
mod redirect;
mod request_id;
mod retry;
mod rewrite;
mod sanitize;
mod timeout;
mod upgrade;

pub use cors::{cors_preflight, cors_response_headers, origin_allowed};
pub use fault::{
    ABORT_BODY, ABORT_FLAG, DELAY_FLAG, FaultDecision, GRPC_MESSAGE, GRPC_STATUS, abort_response,
    decide_fault, grpc_status_code, grpc_trailers_only, http_to_grpc_status,
};
pub use flags::{ResponseFlag, ResponseFlags};
pub use headers::{apply_header_ops, authority_override};
pub use hop::strip_hop_by_hop;
pub use redirect::{direct_response, redirect_location, redirect_response};
pub use request_id::{REQUEST_ID, ensure_request_id, uuid_v4};
pub use retry::{
    AttemptOutcome, BACKOFF_MAX_FACTOR, DEFAULT_BACKOFF_BASE, RETRY_BUFFER_LIMIT, RetryDecision,
    body_retryable, decide_retry, retry_backoff, should_retry,
};
pub use rewrite::{ORIGINAL_PATH, apply_rewrite, request_authority, rewrite_authority};
pub use sanitize::{
    FORWARDED_CLIENT_CERT, client_cert_details, strip_h2c_upgrade, strip_internal_headers,
};
pub use timeout::effective_timeouts;
pub use upgrade::{UpgradeAnswer, WEBSOCKET, restore_upgrade, upgrade_answer, websocket_upgrade};

/// Why a filter could not transform a request.
///
/// Each is a configuration the loader could not rule out (a rewrite whose result is not a
/// valid URI); the listener answers 500.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The rewritten path is not a valid URI path and query.
    #[error("rewritten path {path:?} is not a valid URI path: {source}")]
    InvalidPath {
        /// The rewritten path.
        path: String,
        /// Why it is invalid.
        source: http::uri::InvalidUri,
    },
    /// The rewritten authority is not a valid URI authority or `Host` value.
    #[error("rewritten authority {0:?} is not a valid authority")]
    InvalidAuthority(String),
    /// The rewritten URI could not be assembled.
    #[error("rewritten URI is invalid: {0}")]
    InvalidUri(#[source] http::uri::InvalidUriParts),
    /// A redirect's `Location` is not a valid header value.
    #[error("redirect location {0:?} is not a valid header value")]
    InvalidLocation(String),
}

#[cfg(test)]
mod tests;
