//! `x-request-id`: set in the **filters** phase so the upstream, the access log
//! (`%REQ(X-REQUEST-ID)%`) and traces share one id per request.
//!
//! Like Envoy's UUID request-id extension for internal requests, an id the client sent is
//! kept (the caller's sidecar, ztunnel peer or application generated it, and keeping it is
//! what lets one request be followed across services); a missing or empty one is replaced by a
//! fresh random UUID (version 4).
//!
//! The id differs on every request, so it is marked sensitive, kept or new: an HTTP/2 upstream
//! gets it as a never-indexed literal (HPACK, RFC 7541 §6.2.3) rather than as a new entry in
//! the connection's header table, where ids that never repeat would push out the entries that
//! do (`x-forwarded-client-cert`, the authority). HTTP/1.1 is not affected.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::trace::put_hex;

/// The `x-request-id` header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Returns the request's `x-request-id`, first setting it to a UUIDv4 made from `roll` (122
/// random bits are used) when it is absent or empty. Either way the value is marked sensitive
/// (never indexed by HPACK).
pub fn ensure_request_id(headers: &mut HeaderMap, roll: u128) -> HeaderValue {
    if let Some(existing) = headers.get_mut(&REQUEST_ID).filter(|v| !v.is_empty()) {
        existing.set_sensitive(true);
        return existing.clone();
    }
    let mut id = uuid_v4(roll);
    id.set_sensitive(true);
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
    // 32 hex digits in groups of 8-4-4-4-12, most significant first.
    let mut out = [b'-'; 36];
    put_hex(&mut out[0..8], bits >> 96);
    put_hex(&mut out[9..13], bits >> 80);
    put_hex(&mut out[14..18], bits >> 64);
    put_hex(&mut out[19..23], bits >> 48);
    put_hex(&mut out[24..36], bits);
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_layout_version_and_variant() {
        let cases = [
            (0u128, "00000000-0000-4000-8000-000000000000"),
            (u128::MAX, "ffffffff-ffff-4fff-bfff-ffffffffffff"),
            (
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                "01234567-89ab-4def-8123-456789abcdef",
            ),
        ];
        for (roll, expected) in cases {
            assert_eq!(uuid_v4(roll), expected, "{roll:x}");
        }
    }

    #[test]
    fn a_client_id_is_kept_and_a_missing_one_set() {
        let mut headers = HeaderMap::new();
        let id = ensure_request_id(&mut headers, 0);
        assert_eq!(headers.get(&REQUEST_ID), Some(&id));
        let kept = ensure_request_id(&mut headers, u128::MAX);
        assert_eq!(kept, id);
    }

    #[test]
    fn ids_are_never_indexed() {
        let mut headers = HeaderMap::new();
        ensure_request_id(&mut headers, 7);
        assert!(headers[&REQUEST_ID].is_sensitive(), "a new id");
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("from-the-client"));
        let kept = ensure_request_id(&mut headers, 7);
        assert_eq!(kept, "from-the-client");
        assert!(
            kept.is_sensitive() && headers[&REQUEST_ID].is_sensitive(),
            "a kept id"
        );
    }
}
