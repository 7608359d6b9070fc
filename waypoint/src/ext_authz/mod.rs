//! External authorization (Envoy's `ext_authz`): what a CUSTOM AuthorizationPolicy's
//! provider is asked, and what its answer means.
//!
//! # Where this sits in the data path
//!
//! ```text
//! inbound-vip|<port>|http|<host>: authenticate ─▶ authorize:
//!   authz::evaluate ─▶ a CUSTOM policy matched ─▶ provider (config::mesh)
//!     ─▶ http::check_request / grpc::check_request ─▶ the authorizer (I/O in the stage)
//!     ─▶ http::verdict / grpc::verdict / on_error ─▶ Verdict
//!         Deny  ─▶ the authorizer's reply to the client; nothing goes upstream
//!         Allow ─▶ header edits on the request ─▶ DENY / ALLOW policies ─▶ route ─▶ …
//! ```
//!
//! Everything here is pure: building the check request from the client's request and turning
//! the authorizer's answer (or the failure to get one) into a [`Verdict`]. The inbound VIP
//! stage does the I/O (`stages::inbound_vip::ext_authz`).
//!
//! - `http`: `envoyExtAuthzHttp`: an HTTP/1.1 request with the client's method, the path
//!   behind `pathPrefix`, `Host`, the included headers and `Content-Length`; 200 allows,
//!   any other status denies with that status, the authorizer's body and headers.
//! - `grpc`: `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check` with the
//!   request's attributes; status code 0 allows, anything else denies (403 unless the
//!   `denied_response` sets a status).

pub mod grpc;
pub mod http;
#[cfg(test)]
mod tests;

use ::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;

use crate::config::mesh::ExtAuthzProvider;

/// Most bytes of an authorizer's response body read (HTTP body or gRPC message); a larger
/// answer is an error (`statusOnError`).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The `%RESPONSE_CODE_DETAILS%` of a request the authorizer denied.
pub const DENIED_DETAILS: &str = "ext_authz_denied";
/// The `%RESPONSE_CODE_DETAILS%` of a request refused because the authorizer failed.
pub const ERROR_DETAILS: &str = "ext_authz_error";
/// The `%RESPONSE_CODE_DETAILS%` of a request whose body is too long to be checked (413).
pub const BODY_TOO_LARGE_DETAILS: &str = "request_payload_too_large";

/// One change to a header map, from the authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every value (or add).
    Set(HeaderName, HeaderValue),
    /// Append a value.
    Append(HeaderName, HeaderValue),
    /// Add only when absent.
    AddIfAbsent(HeaderName, HeaderValue),
    /// Replace only when present.
    OverwriteIfExists(HeaderName, HeaderValue),
    /// Remove every value.
    Remove(HeaderName),
}

/// Applies `edits` to `headers`, in order.
pub fn apply_edits(edits: &[HeaderEdit], headers: &mut HeaderMap) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            HeaderEdit::Append(name, value) => {
                headers.append(name.clone(), value.clone());
            }
            HeaderEdit::AddIfAbsent(name, value) => {
                if !headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            HeaderEdit::OverwriteIfExists(name, value) => {
                if headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            HeaderEdit::Remove(name) => {
                headers.remove(name);
            }
        }
    }
}

/// What the authorizer decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The request continues (to the DENY and ALLOW policies, then routing).
    Allow {
        /// Edits of the request sent upstream.
        upstream: Vec<HeaderEdit>,
        /// Edits of the response sent to the client.
        downstream: Vec<HeaderEdit>,
    },
    /// The client gets this reply; nothing goes upstream.
    Deny {
        /// Status.
        status: StatusCode,
        /// Headers.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body.
        body: Bytes,
    },
}

/// How one check ended, for the `envoy_http_ext_authz_*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The authorizer allowed (`ext_authz.ok`).
    Ok,
    /// The authorizer denied (`ext_authz.denied`).
    Denied,
    /// No answer, or an unusable one (`ext_authz.error`), and `failOpen` is false.
    Error,
    /// No usable answer, and `failOpen` let the request through
    /// (`ext_authz.error` and `ext_authz.failure_mode_allowed`).
    FailureModeAllowed,
    /// The request body is longer than `maxRequestBytes` and partial messages are not
    /// allowed: answered 413 without asking the authorizer (not counted).
    BodyTooLarge,
}

/// Why a check got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The provider's service has no address to send to.
    #[error("no endpoint for extension provider service {0:?}")]
    NoEndpoint(String),
    /// The check request could not be sent, or its response not read.
    #[error("check request failed: {0}")]
    Transport(String),
    /// No answer within the provider's `timeout`.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("answer larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The gRPC call failed (a status other than OK for the call itself).
    #[error("gRPC status {code}: {message}")]
    Grpc {
        /// The `grpc-status`.
        code: u32,
        /// The `grpc-message`.
        message: String,
    },
    /// The gRPC answer is not a `CheckResponse`.
    #[error("malformed CheckResponse: {0}")]
    Malformed(String),
    /// The check request could not be built from the client's request.
    #[error("cannot build the check request: {0}")]
    Request(String),
}

/// The verdict when the authorizer could not be asked or gave no usable answer: allow with
/// `failOpen`, else deny with `statusOnError` and an empty body.
pub fn on_error(provider: &ExtAuthzProvider) -> (Verdict, Outcome) {
    if provider.fail_open {
        return (
            Verdict::Allow {
                upstream: Vec::new(),
                downstream: Vec::new(),
            },
            Outcome::FailureModeAllowed,
        );
    }
    (
        Verdict::Deny {
            status: provider.status_on_error,
            headers: Vec::new(),
            body: Bytes::new(),
        },
        Outcome::Error,
    )
}

/// What a check request is built from: the client's request after authentication.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// Method.
    pub method: &'a ::http::Method,
    /// Path and query, as forwarded (normalised).
    pub path: &'a str,
    /// `Host` / `:authority`.
    pub host: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// HTTP version.
    pub version: ::http::Version,
    /// The buffered body, when the provider includes it (at most `maxRequestBytes`).
    pub body: Option<&'a Bytes>,
    /// The client: address and identity (`spiffe://…`).
    pub source: (std::net::SocketAddr, Option<&'a str>),
    /// The destination: the service address and this waypoint's identity.
    pub destination: (std::net::SocketAddr, &'a str),
    /// When the request arrived.
    pub time: std::time::SystemTime,
}

/// Hop-by-hop and framing headers an authorizer's answer never passes on.
fn is_framing(name: &HeaderName) -> bool {
    name == ::http::header::HOST
        || name == ::http::header::CONTENT_LENGTH
        || name == ::http::header::TRANSFER_ENCODING
        || name == ::http::header::CONNECTION
        || name == "keep-alive"
        || name == ::http::header::TE
        || name == ::http::header::TRAILER
        || name == ::http::header::UPGRADE
        || name == "proxy-connection"
}
