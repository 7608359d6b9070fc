//! Path and authority rewrites (VirtualService `rewrite`, Gateway API `URLRewrite`), applied by
//! the **filters** phase after route selection and before the backend is chosen, so that the
//! upstream sees the rewritten `:path` and `:authority`/`Host`.

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Uri, request};

use super::FilterError;
use crate::route::{MatchedPath, Rewrite, rewrite_path};

/// Envoy's `x-envoy-original-path`: the `:path` (with query) before a path rewrite. The access
/// log's path is `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`, so it shows what the client asked for.
pub const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// The request's authority: the URI's (HTTP/2 `:authority`, HTTP/1.1 absolute form), else the
/// `Host` header (HTTP/1.1 origin form).
pub fn request_authority(parts: &request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(Authority::as_str)
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
}

/// Applies a rewrite to a request.
///
/// - Path: [`rewrite_path`] given how the route matched; the query is kept unless the new path
///   has one. A result without a leading `/` gets one (the upstream needs an origin-form
///   target). When a path rewrite is configured, the original `:path` (with query) is stored in
///   [`ORIGINAL_PATH`], replacing any value the client sent, as Envoy does.
/// - Authority: see [`rewrite_authority`].
///
/// # Errors
///
/// [`FilterError::InvalidPath`] or [`FilterError::InvalidAuthority`] when the result is not a
/// valid URI component; the request is then left unchanged.
pub fn apply_rewrite(
    rewrite: &Rewrite,
    matched: MatchedPath,
    parts: &mut request::Parts,
) -> Result<(), FilterError> {
    let mut uri = parts.uri.clone().into_parts();
    let mut original_path = None;
    if let Some(path_rewrite) = &rewrite.path {
        let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut new_path = rewrite_path(path_rewrite, original, matched);
        if !new_path.starts_with('/') {
            new_path.insert(0, '/');
        }
        uri.path_and_query = Some(PathAndQuery::try_from(new_path.as_str()).map_err(|source| {
            FilterError::InvalidPath {
                path: new_path,
                source,
            }
        })?);
        // A `PathAndQuery` holds no control bytes, so it is always a valid header value.
        original_path = HeaderValue::from_bytes(original.as_bytes()).ok();
    }
    let new_authority = match &rewrite.authority {
        Some(authority) => Some(parse_authority(authority)?),
        None => None,
    };
    if let Some((authority, _)) = &new_authority
        && uri.authority.is_some()
    {
        uri.authority = Some(authority.clone());
    }
    let new_uri = Uri::from_parts(uri).map_err(FilterError::InvalidUri)?;
    // Nothing fails past this point: the request is changed all at once or not at all.
    parts.uri = new_uri;
    if let Some(original) = original_path {
        parts.headers.insert(ORIGINAL_PATH, original);
    }
    if let Some((_, host)) = new_authority {
        set_host_header(parts, host);
    }
    Ok(())
}

/// Replaces the request's authority.
///
/// The URI authority (HTTP/2 `:authority`) is replaced when the URI has one; the `Host` header
/// (HTTP/1.1) is replaced when present or when the URI has no authority, so an HTTP/2 request
/// does not grow a `Host` header it did not have. Envoy's `append_x_forwarded_host` is off in
/// Istio, so no `x-forwarded-host` is added.
///
/// # Errors
///
/// [`FilterError::InvalidAuthority`] when `authority` is not a valid authority.
pub fn rewrite_authority(authority: &str, parts: &mut request::Parts) -> Result<(), FilterError> {
    let (new_authority, host) = parse_authority(authority)?;
    if parts.uri.authority().is_some() {
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = Some(new_authority);
        parts.uri = Uri::from_parts(uri).map_err(FilterError::InvalidUri)?;
    }
    set_host_header(parts, host);
    Ok(())
}

fn parse_authority(authority: &str) -> Result<(Authority, HeaderValue), FilterError> {
    let invalid = || FilterError::InvalidAuthority(authority.to_owned());
    let parsed = Authority::try_from(authority).map_err(|_| invalid())?;
    let host = HeaderValue::from_str(authority).map_err(|_| invalid())?;
    Ok((parsed, host))
}

fn set_host_header(parts: &mut request::Parts, host: HeaderValue) {
    if parts.headers.contains_key(HOST) || parts.uri.authority().is_none() {
        parts.headers.insert(HOST, host);
    }
}
