//! Fault injection (VirtualService `fault`), the first step of the **filters** phase: decide
//! once per request, sleep for the delay (flag `DI`), then either answer the abort right away
//! (flag `FI`, nothing is sent upstream) or go on to select a backend.
//!
//! As in Istio's translation to Envoy's fault filter, the delay and the abort are decided
//! independently, each on its own share of requests, and a delayed request can also be
//! aborted (after the delay). The `x-envoy-fault-*` request headers are not honoured: Istio
//! does not enable header-controlled faults.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use super::flags::{ResponseFlag, ResponseFlags};
use crate::config::istio::AbortStatus;
use crate::route::Fault;

/// The response flag of a delayed request (`DI`).
pub const DELAY_FLAG: ResponseFlag = ResponseFlag::DelayInjected;

/// The response flag of an aborted request (`FI`).
pub const ABORT_FLAG: ResponseFlag = ResponseFlag::FaultInjected;

/// The body of an abort, as Envoy's (`fault filter abort`); also the `grpc-message` of a gRPC
/// abort.
pub const ABORT_BODY: &str = "fault filter abort";

/// The HTTP status of a gRPC abort sent to a request that is not gRPC (Envoy's choice).
const GRPC_ABORT_HTTP_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// `grpc-status` response header.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// `grpc-message` response header.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC `UNKNOWN`: what a status name nobody knows stands for.
const GRPC_UNKNOWN: u32 = 2;

/// What fault injection does to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Then answer this instead of forwarding.
    pub abort: Option<AbortStatus>,
}

impl FaultDecision {
    /// Whether the request is left alone.
    pub fn is_none(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }

    /// `DI` and/or `FI`.
    pub fn response_flags(&self) -> ResponseFlags {
        let mut flags = ResponseFlags::NONE;
        if self.delay.is_some() {
            flags.insert(DELAY_FLAG);
        }
        if self.abort.is_some() {
            flags.insert(ABORT_FLAG);
        }
        flags
    }
}

/// Decides the fault of one request. `delay_roll` and `abort_roll` are independent and uniform
/// in `[0, 100)`; a fault applies when its roll is below its percentage (so 100 % always
/// applies and 0 % never does).
pub fn decide_fault(fault: &Fault, delay_roll: f64, abort_roll: f64) -> FaultDecision {
    FaultDecision {
        delay: fault
            .delay
            .as_ref()
            .filter(|d| delay_roll < d.percent)
            .map(|d| d.delay),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| abort_roll < a.percent)
            .map(|a| a.status.clone()),
    }
}

/// Builds the answer to an aborted request, like Envoy's local reply:
///
/// - not gRPC (`grpc == false`): the HTTP status (503 for a gRPC status abort) with body
///   [`ABORT_BODY`] and `content-type: text/plain`;
/// - gRPC (`grpc == true`, the request's `content-type` is `application/grpc…`): a
///   trailers-only response, HTTP 200 with `content-type: application/grpc`, `grpc-status`
///   (the configured one, or mapped from the HTTP status as Envoy's `httpToGrpcStatus` does)
///   and `grpc-message: fault filter abort`, and an empty body: the listener sends the headers
///   with END_STREAM.
pub fn abort_response(status: &AbortStatus, grpc: bool) -> Response<Bytes> {
    if grpc {
        let code = match status {
            AbortStatus::Http(code) => http_to_grpc_status(*code),
            AbortStatus::Grpc(name) => grpc_status_code(name).unwrap_or(GRPC_UNKNOWN),
        };
        return grpc_trailers_only(code, ABORT_BODY);
    }
    let code = match status {
        AbortStatus::Http(code) => {
            StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        AbortStatus::Grpc(_) => GRPC_ABORT_HTTP_STATUS,
    };
    let mut response = Response::new(Bytes::from_static(ABORT_BODY.as_bytes()));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A gRPC trailers-only response: HTTP 200, `grpc-status` and `grpc-message` in the headers,
/// empty body. `message` must be printable ASCII without `%` (gRPC percent-encodes the rest);
/// other bytes are replaced by `?`.
pub fn grpc_trailers_only(code: u32, message: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    let message: String = message
        .chars()
        .map(|c| {
            if (' '..='~').contains(&c) && c != '%' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(GRPC_MESSAGE, value);
    }
    response
}

/// The number of a gRPC status given by name (`UNAVAILABLE`, case-insensitive) or number
/// (`14`); none for anything else.
pub fn grpc_status_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    if let Ok(number) = name.trim().parse::<u32>() {
        return (number < 17).then_some(number);
    }
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name.trim()))
        .and_then(|i| u32::try_from(i).ok())
}

/// The gRPC status Envoy gives an HTTP status (`Grpc::Utility::httpToGrpcStatus`): 400 →
/// INTERNAL, 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 404 → UNIMPLEMENTED, 429/502/503/504
/// → UNAVAILABLE, anything else → UNKNOWN. The one mapping, shared with the metrics' labels.
pub use crate::telemetry::labels::grpc_status_from_http as http_to_grpc_status;
