//! Hop-by-hop headers: the listener strips them from the request in the **filters** phase
//! (before the request is re-encoded for the upstream) and from the response in the
//! **respond** phase. They describe one connection, not the message, and must not be
//! forwarded (RFC 9110 §7.6.1). A WebSocket upgrade's `upgrade`/`connection` headers are put
//! back after this runs ([`restore_upgrade`](super::restore_upgrade)): they must reach the
//! upstream, and the client must see the upstream's 101 with them.

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `keep-alive` (not in `http::header`).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// `proxy-connection` (a non-standard header some clients still send).
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `connection` and every header it nominates, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, `upgrade`, and `te` unless it asks for `trailers`
/// (gRPC needs `te: trailers` end to end; it is then normalized to exactly `trailers`, as Envoy
/// does).
///
/// A `connection` nomination of `host` or `te` is not followed: removing `host` would break the
/// HTTP/1.1 upstream request, and `te` is governed by the rule above.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names instead of a lookup each.
    let hop = [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        TE,
    ];
    if !headers.keys().any(|name| hop.contains(name)) {
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != HOST && *name != TE)
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    let wants_trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| {
            let coding = token.split(';').next().unwrap_or("");
            coding.trim().eq_ignore_ascii_case("trailers")
        });
    if wants_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    } else {
        headers.remove(TE);
    }
}
