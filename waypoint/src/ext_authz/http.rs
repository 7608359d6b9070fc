//! `envoyExtAuthzHttp`: the check request and the meaning of the authorizer's response.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};

use super::{CheckError, CheckInput, HeaderEdit, Verdict, is_framing};
use crate::config::mesh::{HttpSettings, header_matches};

/// The check request: the client's method, `pathPrefix` + the client's path and query,
/// `Host` of the client's request, the headers `includeRequestHeadersInCheck` selects, the
/// `includeAdditionalHeadersInCheck` headers (replacing same-named ones), and
/// `Content-Length` of the included body (0 without one).
pub fn check_request(
    settings: &HttpSettings,
    input: &CheckInput<'_>,
) -> Result<Request<Bytes>, CheckError> {
    let path = format!("{}{}", settings.path_prefix, input.path);
    let mut request = Request::builder()
        .method(input.method.clone())
        .uri(path)
        .body(input.body.cloned().unwrap_or_default())
        .map_err(|e| CheckError::Request(e.to_string()))?;
    let headers = request.headers_mut();
    for (name, value) in input.headers {
        if !is_framing(name) && header_matches(&settings.include_request_headers, name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in &settings.additional_headers {
        headers.insert(name.clone(), value.clone());
    }
    let host = HeaderValue::from_str(input.host).map_err(|e| CheckError::Request(e.to_string()))?;
    headers.insert(http::header::HOST, host);
    let length = input.body.map_or(0, Bytes::len);
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(request)
}

/// The verdict of the authorizer's response: 200 allows, with the
/// `headersToUpstreamOnAllow` headers set on the upstream request and the
/// `headersToDownstreamOnAllow` ones on the client's response; any other status denies
/// with that status, the body, and the `headersToDownstreamOnDeny` headers (every header
/// when that list is empty).
pub fn verdict(
    settings: &HttpSettings,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Verdict {
    let pick = |patterns| {
        headers
            .iter()
            .filter(move |(name, _)| !is_framing(name) && header_matches(patterns, name))
            .map(|(name, value)| HeaderEdit::Set(name.clone(), value.clone()))
            .collect::<Vec<_>>()
    };
    if status == StatusCode::OK {
        return Verdict::Allow {
            upstream: pick(&settings.headers_to_upstream_on_allow),
            downstream: pick(&settings.headers_to_downstream_on_allow),
        };
    }
    let deny_all = settings.headers_to_downstream_on_deny.is_empty();
    let headers = headers
        .iter()
        .filter(|(name, _)| {
            !is_framing(name)
                && (deny_all || header_matches(&settings.headers_to_downstream_on_deny, name))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Verdict::Deny {
        status,
        headers,
        body,
    }
}
