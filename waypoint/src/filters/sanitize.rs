//! Request sanitising in the **normalise** phase, before any other phase reads the request:
//! headers only a trusted proxy may set are removed from what the client sent, and an HTTP/2
//! cleartext upgrade is refused by serving the request as plain HTTP/1.1. The
//! `x-forwarded-client-cert` the waypoint itself sets is built here too ([`client_cert_details`],
//! set in the **filters** phase).
//!
//! - `x-forwarded-client-cert` from the client is dropped and replaced by the waypoint's own
//!   (Envoy `forward_client_cert_details: SANITIZE_SET` with
//!   `set_current_client_cert_details: {uri: true}`): a client cannot claim another identity to
//!   the backend. The value names the waypoint (`By`) and the client's SPIFFE identity
//!   (`URI`) as proven in the HBONE mTLS handshake; Envoy's `Hash` and `Subject` elements
//!   describe a certificate the waypoint's HTTP listener never sees (the tunnel ends in
//!   `connect_terminate`), so, as for Istio's synthesized XFCC from the tunnel identity, they
//!   are left out.
//! - `x-envoy-*` headers are Envoy's internal control and information headers (retry and
//!   timeout overrides, `x-envoy-original-path`, …); Envoy removes them from requests that do
//!   not come from a trusted internal peer, and a client of a waypoint is not one.
//! - `Upgrade: h2c` is not honoured (the waypoint speaks HTTP/2 only with prior knowledge, as
//!   Envoy): like Envoy's HTTP/1.1 codec, the `upgrade` and `http2-settings` headers are removed
//!   and the request is served as HTTP/1.1; `connection` goes with the other hop-by-hop headers.

use http::header::UPGRADE;
use http::{HeaderMap, HeaderName, HeaderValue};

use hbone::Identity;

/// `x-forwarded-client-cert`.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// `http2-settings`, sent with an `h2c` upgrade.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes the headers a client may not set: `x-forwarded-client-cert` and every `x-envoy-*`.
/// Returns how many were removed.
pub fn strip_internal_headers(headers: &mut HeaderMap) -> usize {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| *name == FORWARDED_CLIENT_CERT || name.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    let mut removed = 0;
    for name in internal {
        removed += headers.get_all(&name).iter().count();
        headers.remove(&name);
    }
    removed
}

/// Refuses an `h2c` upgrade: when `upgrade` names `h2c`, removes `upgrade` and
/// `http2-settings`. Returns whether it did.
pub fn strip_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let h2c = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("h2c"));
    if h2c {
        headers.remove(UPGRADE);
        headers.remove(HTTP2_SETTINGS);
    }
    h2c
}

/// The waypoint's `x-forwarded-client-cert`: `By=<waypoint identity>;URI=<client identity>`.
/// `None` when an identity does not fit a header value (never for SPIFFE URIs).
pub fn client_cert_details(by: &Identity, client: &Identity) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("By={by};URI={client}")).ok()
}
