//! CORS (VirtualService `corsPolicy`, Gateway API `CORS` filter) with Envoy's cors filter
//! semantics. In the **filters** phase, [`cors_preflight`] may answer a preflight by itself
//! (nothing is sent upstream); in the **respond** phase, [`cors_response_headers`] decorates the
//! response of an actual cross-origin request. Like Envoy, routes that redirect or answer
//! directly skip CORS.
//!
//! The policy never rejects a request: a browser enforces CORS from the headers it gets back.
//! Envoy neither checks the requested method or headers of a preflight against the allowed
//! ones; it advertises them and lets the browser decide.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, request};

use crate::config::istio::UnmatchedPreflights;
use crate::route::CorsPolicy;

/// Answers a CORS preflight, or returns none to forward the request.
///
/// A preflight is an `OPTIONS` request with a non-empty `origin` and a non-empty
/// `access-control-request-method`; anything else is forwarded (none).
///
/// - Allowed origin: 200 with `access-control-allow-origin` echoing the origin,
///   `access-control-allow-methods`, `-allow-headers` (comma-joined, when configured),
///   `-max-age` (seconds, when configured) and `-allow-credentials: true` (when true), and no
///   body.
/// - Origin not allowed: per `unmatchedPreflights`. Envoy's default
///   (`forward_not_matching_preflights: true`, Istio `UNSPECIFIED`/`FORWARD`) forwards the
///   preflight upstream (none); `IGNORE` answers 200 without any CORS header, so the browser
///   fails the preflight without the upstream seeing it.
///
/// An origin is allowed when one of `allowOrigins` matches it, or matches the literal `*`
/// (Envoy's rule, which makes an exact `*` allow every origin).
pub fn cors_preflight(policy: &CorsPolicy, parts: &request::Parts) -> Option<Response<()>> {
    if parts.method != Method::OPTIONS {
        return None;
    }
    let origin = parts.headers.get(ORIGIN).filter(|o| !o.is_empty())?;
    parts
        .headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty())?;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    if !origin_allowed(policy, origin) {
        return match policy.unmatched_preflights {
            Some(UnmatchedPreflights::Ignore) => Some(response),
            Some(UnmatchedPreflights::Forward | UnmatchedPreflights::Unspecified) | None => None,
        };
    }
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials == Some(true) {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    insert_list(headers, ACCESS_CONTROL_ALLOW_METHODS, &policy.allow_methods);
    insert_list(headers, ACCESS_CONTROL_ALLOW_HEADERS, &policy.allow_headers);
    if let Some(max_age) = policy.max_age {
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age.as_secs()));
    }
    Some(response)
}

/// Adds the CORS headers to the response of an actual (not preflight) request: when the request
/// had an allowed, non-empty `origin`, `access-control-allow-origin` echoes it,
/// `access-control-allow-credentials: true` is set when configured, and
/// `access-control-expose-headers` lists the exposed headers (comma-joined). Values are
/// replaced, not appended, as Envoy does. Responses to requests without an allowed origin are
/// left alone.
pub fn cors_response_headers(
    policy: &CorsPolicy,
    request_origin: Option<&HeaderValue>,
    headers: &mut HeaderMap,
) {
    let Some(origin) = request_origin.filter(|o| !o.is_empty()) else {
        return;
    };
    if !origin_allowed(policy, origin) {
        return;
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.allow_credentials == Some(true) {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    insert_list(
        headers,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        &policy.expose_headers,
    );
}

/// Whether the policy allows the origin.
pub fn origin_allowed(policy: &CorsPolicy, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    policy
        .allow_origins
        .iter()
        .any(|m| m.matches(origin) || m.matches("*"))
}

/// Inserts a comma-joined list (Istio joins with `,`); nothing when empty or not a valid value.
fn insert_list(headers: &mut HeaderMap, name: http::HeaderName, values: &[String]) {
    if values.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&values.join(",")) {
        headers.insert(name, value);
    }
}
