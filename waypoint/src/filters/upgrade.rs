//! WebSocket upgrades (Envoy `upgrade_configs: [{upgrade_type: websocket}]`, as Istio configures
//! every HTTP connection manager): the decisions the listener takes on an upgrade, before the
//! **filters** phase strips hop-by-hop headers and after the **send** phase got the upstream's
//! answer.
//!
//! - An HTTP/1.1 request whose `connection` names `upgrade` and whose `upgrade` names
//!   `websocket` (tokens compared case-insensitively, in comma-separated lists) is a WebSocket
//!   upgrade ([`websocket_upgrade`]): it runs the normal phases, and its `upgrade` value and
//!   `connection: upgrade` are put back after [`strip_hop_by_hop`](super::strip_hop_by_hop)
//!   ([`restore_upgrade`]); `sec-websocket-*` headers are end to end and go through untouched.
//! - Any other upgrade token (`h2c` is refused earlier by
//!   [`strip_h2c_upgrade`](super::strip_h2c_upgrade)) is not forwarded: `upgrade` is removed
//!   with the other hop-by-hop headers and the request is served as plain HTTP/1.1.
//! - The upstream's answer ([`upgrade_answer`]): only `101 Switching Protocols` with an
//!   `upgrade` naming `websocket`, to a WebSocket upgrade request, switches the connection; a
//!   101 to a request that did not ask for it, or naming another protocol, is an upstream
//!   protocol error (502, `UPE`); anything else is an ordinary response.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, StatusCode};

/// The only upgrade protocol the waypoint forwards.
pub const WEBSOCKET: &str = "websocket";

/// Whether a comma-separated token list in any `name` value contains `token`
/// (case-insensitive).
fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The request's WebSocket upgrade: its `upgrade` value when `connection` names `upgrade` and
/// `upgrade` names `websocket`; `None` otherwise. Only HTTP/1.1 requests can upgrade (the
/// caller checks the version).
pub fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !has_token(headers, &CONNECTION, "upgrade") || !has_token(headers, &UPGRADE, WEBSOCKET) {
        return None;
    }
    let mut values = headers.get_all(UPGRADE).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value.clone()),
        // Several `upgrade` fields: forwarded as the one protocol the waypoint speaks.
        _ => Some(HeaderValue::from_static(WEBSOCKET)),
    }
}

/// Puts an upgrade's `upgrade: <value>` and `connection: upgrade` back, after the hop-by-hop
/// headers were stripped (request to the upstream, 101 to the client).
pub fn restore_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(UPGRADE, upgrade);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// What the listener does with the upstream's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeAnswer {
    /// An ordinary response: passed to the client (to an upgrade request, with
    /// `connection: close`: the connection is not upgraded and not reused).
    Response,
    /// A WebSocket upgrade accepted: 101 to the client, then bytes are spliced both ways.
    Switch,
    /// A 101 the request did not ask for, or for another protocol: 502 `UPE`, never spliced.
    ProtocolError,
}

/// Decides on the upstream's `status` and `headers` for a request that asked for a WebSocket
/// upgrade (`requested`) or not.
pub fn upgrade_answer(requested: bool, status: StatusCode, headers: &HeaderMap) -> UpgradeAnswer {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return UpgradeAnswer::Response;
    }
    if requested && has_token(headers, &UPGRADE, WEBSOCKET) {
        UpgradeAnswer::Switch
    } else {
        UpgradeAnswer::ProtocolError
    }
}
