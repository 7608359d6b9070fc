//! The limits of the inbound VIP listener's downstream HTTP connections: what one client (one
//! tunnel, i.e. one `CONNECT` stream accepted by `connect_terminate`) may hold open, how large
//! and how slow its requests may be, and how HTTP/2 abuse is cut off. Named after the Envoy
//! `HttpConnectionManager` / `Http2ProtocolOptions` fields an Istio waypoint is configured with;
//! where Envoy's default is unbounded the waypoint picks a bounded one, documented per field.
//!
//! Where each limit is enforced, and what the client sees:
//!
//! | setting | HTTP/1.1 | HTTP/2 |
//! |---|---|---|
//! | [`max_request_headers_kb`](DownstreamLimits::max_request_headers_kb) | 431, connection closed | 431 on the stream (h2 answers it, then resets the stream) |
//! | [`max_headers_count`](DownstreamLimits::max_headers_count) | 431, connection closed | 431 on the stream |
//! | [`request_headers_timeout`](DownstreamLimits::request_headers_timeout) | connection closed | — (header blocks are bounded by size and CONTINUATION count) |
//! | [`idle_timeout`](DownstreamLimits::idle_timeout) | connection closed | GOAWAY, then closed |
//! | [`max_connections`](DownstreamLimits::max_connections) | tunnel refused with 503 | tunnel refused with 503 |
//! | [`max_concurrent_streams`](DownstreamLimits::max_concurrent_streams) | — | `SETTINGS_MAX_CONCURRENT_STREAMS`; more streams are refused |
//! | [`max_pending_accept_reset_streams`](DownstreamLimits::max_pending_accept_reset_streams), [`max_local_error_reset_streams`](DownstreamLimits::max_local_error_reset_streams) | — | GOAWAY `ENHANCE_YOUR_CALM` (rapid reset) |
//! | [`max_consecutive_inbound_frames_with_empty_payload`](DownstreamLimits::max_consecutive_inbound_frames_with_empty_payload) | — | connection closed |
//!
//! An endless CONTINUATION sequence is cut by h2 itself: the frames of one header block may not
//! exceed `max_request_headers_kb` (nor a small multiple of it in count), else GOAWAY
//! `ENHANCE_YOUR_CALM`.

use std::time::Duration;

/// Limits of the downstream HTTP connections of the inbound VIP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamLimits {
    /// Largest request header block, in KiB (Envoy `max_request_headers_kb`). HTTP/1.1: the
    /// request line and headers; HTTP/2: the decoded header list
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`). Larger → 431. Default 60 (Envoy's).
    pub max_request_headers_kb: u32,
    /// Most request headers (Envoy `common_http_protocol_options.max_headers_count`). More →
    /// 431. Default 100 (Envoy's).
    pub max_headers_count: u32,
    /// HTTP/1.1: time from the first byte of a request head to its end (Envoy
    /// `request_headers_timeout`); a client that stops in the middle of its headers is
    /// disconnected. Zero disables it. Default 10 s (Envoy's default is disabled).
    pub request_headers_timeout: Duration,
    /// A connection with no request in flight for this long is closed (Envoy
    /// `common_http_protocol_options.idle_timeout`). Zero disables it. Default 1 h (Envoy's).
    pub idle_timeout: Duration,
    /// Most downstream connections (tunnels to a service or workload) served at once (Envoy's
    /// listener connection limit); one more is refused with `CONNECT` status 503 and counted in
    /// `envoy_listener_downstream_cx_overflow`. Default 100 000 (Envoy's is unbounded).
    pub max_connections: u32,
    /// Most concurrent streams on one downstream HTTP/2 connection (Envoy
    /// `http2_protocol_options.max_concurrent_streams`). Default 1024 (Envoy's is 2^31 − 1).
    pub max_concurrent_streams: u32,
    /// Streams the client may reset before the server has accepted them (the rapid reset
    /// attack, CVE-2023-44487); more → GOAWAY `ENHANCE_YOUR_CALM`. Default 20 (h2's).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client errors on one connection (CVE-2025-8671);
    /// more → GOAWAY `ENHANCE_YOUR_CALM`. Default 1024 (h2's).
    pub max_local_error_reset_streams: usize,
    /// Consecutive inbound HTTP/2 DATA, HEADERS or CONTINUATION frames with an empty payload
    /// that end nothing (Envoy
    /// `http2_protocol_options.max_consecutive_inbound_frames_with_empty_payload`); more closes
    /// the connection. Default 1 (Envoy's).
    pub max_consecutive_inbound_frames_with_empty_payload: u32,
}

impl Default for DownstreamLimits {
    fn default() -> Self {
        Self {
            max_request_headers_kb: 60,
            max_headers_count: 100,
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 100_000,
            max_concurrent_streams: 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_consecutive_inbound_frames_with_empty_payload: 1,
        }
    }
}

impl DownstreamLimits {
    /// The header block limit in bytes.
    pub fn max_request_header_bytes(&self) -> usize {
        usize::try_from(self.max_request_headers_kb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024)
    }

    /// Whether a request with `count` header fields is over the count limit.
    pub fn too_many_headers(&self, count: usize) -> bool {
        !u32::try_from(count).is_ok_and(|n| n <= self.max_headers_count)
    }

    /// `d`, or `None` when zero (disabled).
    pub(crate) fn enabled(d: Duration) -> Option<Duration> {
        (!d.is_zero()).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_count_limit() {
        let limits = DownstreamLimits::default();
        assert!(!limits.too_many_headers(0));
        assert!(!limits.too_many_headers(100));
        assert!(limits.too_many_headers(101));
        assert!(limits.too_many_headers(usize::MAX));
        assert_eq!(limits.max_request_header_bytes(), 60 * 1024);
    }

    #[test]
    fn zero_disables_timeouts() {
        assert_eq!(DownstreamLimits::enabled(Duration::ZERO), None);
        assert_eq!(
            DownstreamLimits::enabled(Duration::from_millis(300)),
            Some(Duration::from_millis(300))
        );
    }
}
