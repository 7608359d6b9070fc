//! Header edits (VirtualService `headers.request|response`, Gateway API
//! `RequestHeaderModifier`/`ResponseHeaderModifier`, and the per-destination edits).
//!
//! The **filters** phase applies the request edits of the route and of the chosen backend
//! ([`WeightedBackend`](crate::route::WeightedBackend)) before the request is sent; the
//! **respond** phase applies the response edits before the response goes back downstream.
//! Each [`HeaderOps`] is applied as one unit by [`apply_header_ops`].

use http::header::HOST;
use http::{HeaderMap, HeaderValue};

use crate::config::common::HeaderOps;

/// Applies header edits in Envoy's order.
///
/// Istio translates `remove` to `request_headers_to_remove`, `set` to `headers_to_add` with
/// `OVERWRITE_IF_EXISTS_OR_ADD` and `add` to `headers_to_add` with `APPEND_IF_EXISTS_OR_ADD`,
/// listing the `set` entries before the `add` entries. Envoy's header parser removes first
/// (so "remove then add" of one name re-adds it), then applies `headers_to_add` in order. So:
///
/// 1. `remove`: every value of each name goes;
/// 2. `set`: each name's values are replaced by the one value (a later `set` of the same name
///    wins);
/// 3. `add`: the value is appended as one more field line (existing values stay).
///
/// `Host` is never touched here: Envoy refuses to modify `:`-prefixed and `host` headers, and
/// Istio turns a request `set` of `host`/`:authority` into an authority rewrite (see
/// [`authority_override`]). Names and values are validated when the configuration is loaded
/// ([`Header`](crate::config::common::Header) holds an `http::HeaderName` and a `HeaderValue`),
/// so no edit can fail here.
pub fn apply_header_ops(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in ops.remove.iter().filter(|name| **name != HOST) {
        headers.remove(name);
    }
    for header in ops.set.iter().filter(|h| h.name != HOST) {
        headers.insert(header.name.clone(), header.value.clone());
    }
    for header in ops.add.iter().filter(|h| h.name != HOST) {
        headers.append(header.name.clone(), header.value.clone());
    }
}

/// The authority a request `set` of `host` asks for, if any (the last one wins).
///
/// Istio turns `headers.request.set.host` into the route's `host_rewrite_literal`; the listener
/// applies it like a [`Rewrite`](crate::route::Rewrite) authority, with
/// [`rewrite_authority`](super::rewrite_authority).
pub fn authority_override(ops: &HeaderOps) -> Option<&HeaderValue> {
    ops.set
        .iter()
        .rev()
        .find(|h| h.name == HOST)
        .map(|h| &h.value)
}
