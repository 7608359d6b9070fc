//! `x-request-id`: set in the **filters** phase so the upstream, the access log
//! (`%REQ(X-REQUEST-ID)%`) and traces share one id per request.
//!
//! Like Envoy's UUID request-id extension for internal requests, an id the client sent is
//! kept (the caller's sidecar, ztunnel peer or application generated it, and keeping it is
//! what lets one request be followed across services); a missing or empty one is replaced by a
//! fresh random UUID (version 4).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `x-request-id` header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Returns the request's `x-request-id`, first setting it to a UUIDv4 made from `roll` (122
/// random bits are used) when it is absent or empty.
pub fn ensure_request_id(headers: &mut HeaderMap, roll: u128) -> HeaderValue {
    if let Some(existing) = headers.get(&REQUEST_ID).filter(|v| !v.is_empty()) {
        return existing.clone();
    }
    let id = uuid_v4(roll);
    headers.insert(REQUEST_ID, id.clone());
    id
}

/// Formats `roll` as a UUID version 4 (RFC 9562 §5.4): the version nibble is 4 and the variant
/// bits are `10`; the other 122 bits come from `roll`.
pub fn uuid_v4(roll: u128) -> HeaderValue {
    const VERSION_MASK: u128 = 0xF << 76;
    const VERSION_4: u128 = 0x4 << 76;
    const VARIANT_MASK: u128 = 0b11 << 62;
    const VARIANT_RFC: u128 = 0b10 << 62;
    let bits = (roll & !VERSION_MASK & !VARIANT_MASK) | VERSION_4 | VARIANT_RFC;
    let hex = format!("{bits:032x}");
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_str(&uuid).unwrap_or_else(|_| HeaderValue::from_static(""))
}
