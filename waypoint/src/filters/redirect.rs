//! Redirects and direct responses: routes that answer by themselves
//! ([`Resolution::Redirect`](crate::route::Resolution::Redirect),
//! [`Resolution::DirectResponse`](crate::route::Resolution::DirectResponse)). The listener
//! builds the answer here right after route selection; nothing is sent upstream. The **respond**
//! phase still applies the route's response header edits, and the **log** phase logs it without
//! a response flag.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderValue, Response, StatusCode, request};

use super::FilterError;
use super::rewrite::request_authority;
use crate::route::{DirectResponse, MatchedPath, Redirect, RedirectPort, rewrite_path};

/// The scheme of the waypoint's downstream requests when the URI has none (HTTP/1.1 origin
/// form): plaintext HTTP inside the HBONE tunnel.
const DEFAULT_SCHEME: &str = "http";

/// Builds the `Location` of a redirect (VirtualService `HTTPRedirect`, Gateway API
/// `RequestRedirect`), as Envoy's `RedirectAction` does:
///
/// - scheme: the redirect's, else the request's (`http` for origin-form requests);
/// - host: the redirect's, else the request's authority host;
/// - port ([`RedirectPort`]):
///   - `Set(p)`: `p`;
///   - `FromRequestPort`: `downstream_port`, the service port the request was sent to
///     (VirtualService `derivePort: FROM_REQUEST_PORT`; Gateway API without scheme and port);
///   - `FromProtocolDefault`: none, the scheme's default (VirtualService `derivePort:
///     FROM_PROTOCOL_DEFAULT`; Gateway API with a scheme and no port);
///   - `Unchanged`: the request's authority port, except that Envoy drops it when the redirect
///     sets a host (envoy#17318) and when the scheme changes and the port was the old scheme's
///     default (`http://a:80` → `https://a`);
///
///   and a port that is the scheme's default (80 for `http`, 443 for `https`) is never written,
///   as the Gateway API asks;
/// - path: [`rewrite_path`] of the redirect's path rewrite (full, or prefix with how the route
///   matched), else the request's; the query is kept unless the new path carries one; a
///   leading `/` is added when missing.
///
/// # Errors
///
/// [`FilterError::InvalidLocation`] when the result is not a valid header value (a configured
/// host with control characters).
pub fn redirect_location(
    redirect: &Redirect,
    matched: MatchedPath,
    parts: &request::Parts,
    downstream_port: u16,
) -> Result<HeaderValue, FilterError> {
    let request_scheme = parts.uri.scheme_str().unwrap_or(DEFAULT_SCHEME);
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let (request_host, request_port) = split_host_port(request_authority(parts).unwrap_or(""));
    let host = redirect.host.as_deref().unwrap_or(request_host);
    let port: Option<String> = match redirect.port {
        RedirectPort::Set(port) => Some(port.to_string()),
        RedirectPort::FromRequestPort => Some(downstream_port.to_string()),
        RedirectPort::FromProtocolDefault => None,
        RedirectPort::Unchanged if redirect.host.is_some() => None,
        RedirectPort::Unchanged => request_port
            .filter(|port| {
                scheme.eq_ignore_ascii_case(request_scheme)
                    || default_port(request_scheme) != Some(*port)
            })
            .map(str::to_owned),
    };
    let port = port.filter(|port| default_port(scheme) != Some(port.as_str()));

    let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let mut path = match &redirect.path {
        Some(rewrite) => rewrite_path(rewrite, original, matched),
        None => original.to_owned(),
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }

    let location = match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    HeaderValue::from_bytes(location.as_bytes()).map_err(|_| FilterError::InvalidLocation(location))
}

/// Answers a redirect: the redirect's status (301 when it is not a 3xx code) with the
/// [`redirect_location`] and no body.
///
/// When no valid `Location` can be built the answer is a 500, which the configuration cannot
/// otherwise produce.
pub fn redirect_response(
    redirect: &Redirect,
    matched: MatchedPath,
    parts: &request::Parts,
    downstream_port: u16,
) -> Response<()> {
    let mut response = Response::new(());
    match redirect_location(redirect, matched, parts, downstream_port) {
        Ok(location) => {
            *response.status_mut() = StatusCode::from_u16(redirect.status)
                .ok()
                .filter(StatusCode::is_redirection)
                .unwrap_or(StatusCode::MOVED_PERMANENTLY);
            response.headers_mut().insert(LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    response
}

/// Answers a direct response (VirtualService `directResponse`): its status, and its body with
/// `content-type: text/plain` as Envoy's local replies have. A status outside 100..=999
/// (rejected when the configuration is loaded) becomes 500.
pub fn direct_response(d: &DirectResponse) -> Response<Bytes> {
    let body = d.body.clone().map(Bytes::from).unwrap_or_default();
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !response.body().is_empty() {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// Splits an authority into host and port (`[::1]:80` → `[::1]`, `80`).
pub(super) fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let colon = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match colon {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    }
}

fn default_port(scheme: &str) -> Option<&'static str> {
    if scheme.eq_ignore_ascii_case("http") {
        Some("80")
    } else if scheme.eq_ignore_ascii_case("https") {
        Some("443")
    } else {
        None
    }
}
