//! The "log" phase: what a request did, collected along the phases and reported once its
//! response body has ended — Istio request metrics and the access log.

use std::any::Any;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use ztunnel::state::service::Service;
use ztunnel::state::workload::Workload;

use super::request::{ResponseBody, local_body};
use super::{Downstream, VipTarget};
use crate::app::Core;
use crate::body::BodyOutcome;
use crate::telemetry::access_log::protocol_str;
use crate::telemetry::trace::{RequestTrace, SpanRecord, operation_name, span_status};
use crate::telemetry::{
    AccessLogEntry, DestinationLabels, RequestLabels, ResponseFlag, ResponseFlags, WorkloadLabels,
};

/// The body of a 403 from authorization (Envoy's RBAC filter's).
pub(super) const RBAC_DENIED_BODY: &str = "RBAC: access denied";

/// What one request did.
pub(super) struct RequestLog {
    pub(super) start: Instant,
    /// The `source_*` labels, shared by every request of the tunnel.
    source_labels: Arc<WorkloadLabels>,
    /// The request fields of the access log, as the request arrived (only when the access log
    /// is on: building them is per-request work).
    entry: Option<AccessLogEntry>,
    pub(super) grpc: bool,
    pub(super) route_name: Option<String>,
    pub(super) response_code: u16,
    pub(super) grpc_status: Option<u32>,
    pub(super) flags: ResponseFlags,
    pub(super) details: Cow<'static, str>,
    pub(super) upstream_cluster: Option<String>,
    pub(super) upstream_host: Option<SocketAddr>,
    pub(super) upstream_service_time: Option<Duration>,
    pub(super) upstream_transport_failure_reason: Option<String>,
    pub(super) destination_service: Option<Arc<Service>>,
    pub(super) destination_workload: Option<Arc<Workload>>,
    pub(super) set_cookie: Option<HeaderValue>,
    /// The destination labels when they do not come from a service and an endpoint
    /// (`PassthroughCluster`, `BlackHoleCluster`).
    destination_labels: Option<Arc<DestinationLabels>>,
    /// Things that must live as long as the request (circuit-breaker permits).
    guards: Vec<Box<dyn Any + Send + Sync>>,
    /// The request's trace context (propagated upstream in the filters phase).
    pub(super) trace: RequestTrace,
    /// What the span needs from the request head; only when the span will be exported.
    span: Option<SpanStart>,
}

/// The span of a sampled request, as its head arrived.
struct SpanStart {
    start: SystemTime,
    name: String,
    attributes: Vec<(&'static str, String)>,
}

impl SpanStart {
    /// Envoy's request tags of the span.
    fn new(
        downstream: &Downstream,
        vip: &VipTarget,
        parts: &Parts,
        request_id: &HeaderValue,
    ) -> Self {
        let header = |name: &str| {
            parts.headers.get(name).map_or_else(
                || "-".to_owned(),
                |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        };
        let authority = crate::filters::request_authority(parts).unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let attributes = vec![
            ("http.method", parts.method.as_str().to_owned()),
            ("http.url", format!("http://{authority}{path}")),
            ("http.protocol", protocol_str(parts.version).to_owned()),
            ("user_agent", header("user-agent")),
            (
                "guid:x-request-id",
                String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            ),
            (
                "downstream_cluster",
                header("x-envoy-downstream-service-cluster"),
            ),
            ("peer.address", downstream.client_addr().ip().to_string()),
        ];
        Self {
            start: SystemTime::now(),
            name: operation_name(&vip.service.hostname, vip.port),
            attributes,
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl RequestLog {
    /// Starts the record of a request as it arrived; `access_log` says whether the access log
    /// will want its fields.
    pub(super) fn start(
        access_log: bool,
        downstream: &Arc<Downstream>,
        source_labels: &Arc<WorkloadLabels>,
        vip: &VipTarget,
        parts: &Parts,
        (request_id, trace, exporting): (HeaderValue, RequestTrace, bool),
    ) -> Self {
        let span = (exporting && trace.sampled)
            .then(|| SpanStart::new(downstream, vip, parts, &request_id));
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let entry = access_log.then(|| {
            let mut entry = AccessLogEntry::new(SystemTime::now());
            entry.set_request(&parts.method, &parts.uri, parts.version, &parts.headers);
            if entry.request_id.is_none() {
                entry.request_id = request_id.to_str().ok().map(str::to_owned);
            }
            if entry.authority.is_none() {
                entry.authority = Some(String::new());
            }
            entry.downstream_local_address = Some(downstream.original_dst);
            entry.downstream_remote_address = Some(downstream.client_addr());
            entry
        });
        Self {
            start: Instant::now(),
            source_labels: Arc::clone(source_labels),
            entry,
            grpc,
            route_name: None,
            response_code: 0,
            grpc_status: None,
            flags: ResponseFlags::NONE,
            details: Cow::Borrowed(""),
            upstream_cluster: None,
            upstream_host: None,
            upstream_service_time: None,
            upstream_transport_failure_reason: None,
            destination_service: Some(Arc::clone(&vip.service)),
            destination_workload: None,
            set_cookie: None,
            destination_labels: None,
            guards: Vec::new(),
            trace,
            span,
        }
    }

    /// Records the request's path anew: after the authenticate phase removed a token from the
    /// query, the access log shows the request as it went on (as Envoy's does, whose
    /// `jwt_authn` rewrites `:path`), never the token.
    pub(super) fn set_path(&mut self, uri: &http::Uri) {
        if let Some(entry) = &mut self.entry {
            entry.path = uri.path_and_query().map(|pq| pq.as_str().to_owned());
        }
    }

    /// Labels the request as one whose `Host` the registry does not know, sent to `cluster`
    /// (`PassthroughCluster` or `BlackHoleCluster`): Istio's `destination_service` is then
    /// the `Host`, `destination_service_name` the cluster.
    pub(super) fn set_registry_miss(&mut self, cluster: &str, host: Option<&str>) {
        self.destination_labels = Some(Arc::new(DestinationLabels::registry_miss(cluster, host)));
    }

    /// Keeps `guard` alive until the request is logged.
    pub(super) fn hold(&mut self, guard: impl Any + Send + Sync) {
        self.guards.push(Box::new(guard));
    }

    /// A local reply with `status`, recording `flag` and `details`.
    pub(super) fn local_reply(
        &mut self,
        status: StatusCode,
        flag: Option<ResponseFlag>,
        details: &'static str,
    ) -> Response<ResponseBody> {
        if let Some(flag) = flag {
            self.flags.insert(flag);
        }
        self.details = Cow::Borrowed(details);
        local_body(status, details, self.grpc)
    }

    /// The reply to a request authorization denied: 403 `RBAC: access denied` (gRPC:
    /// `PERMISSION_DENIED` with that message), `details` naming the policy. Envoy's RBAC
    /// filter sets no response flag.
    pub(super) fn authz_denied(&mut self, details: String) -> Response<ResponseBody> {
        self.details = Cow::Owned(details);
        local_body(StatusCode::FORBIDDEN, RBAC_DENIED_BODY, self.grpc)
    }

    /// The reply to a request the external authorizer denied (or that its failure refused):
    /// its status, headers and body (gRPC: trailers-only, the status mapped to a gRPC code,
    /// the body as message), flag `UAEX`.
    pub(super) fn ext_authz_denied(
        &mut self,
        details: &'static str,
        status: StatusCode,
        headers: Vec<(http::HeaderName, HeaderValue)>,
        body: bytes::Bytes,
    ) -> Response<ResponseBody> {
        use http_body_util::{BodyExt, Full};
        self.flags.insert(ResponseFlag::UnauthorizedExternalService);
        self.details = Cow::Borrowed(details);
        let mut response = if self.grpc {
            let code = crate::filters::http_to_grpc_status(status.as_u16());
            crate::filters::grpc_trailers_only(code, &String::from_utf8_lossy(&body))
        } else {
            let mut response = Response::new(body);
            *response.status_mut() = status;
            response
        };
        for (name, value) in headers {
            if !response.headers().contains_key(&name) || !self.grpc {
                response.headers_mut().append(name, value);
            }
        }
        response.map(|b| Full::new(b).map_err(|never| match never {}).boxed())
    }

    /// Reports the request: `istio_requests_total` and the histograms, and the access log.
    pub(super) fn finish(mut self, core: &Core, body: BodyOutcome, request_bytes: u64) {
        if !body.complete && self.response_code != 0 {
            self.flags
                .insert(ResponseFlag::DownstreamConnectionTermination);
        }
        let duration = self.start.elapsed();
        let grpc_status = body.grpc_status.or(self.grpc_status);
        let destination = match self.destination_labels.take() {
            Some(labels) => labels,
            None => core.destination_labels(
                self.destination_service.as_ref(),
                self.destination_workload.as_ref(),
            ),
        };
        let mut labels = RequestLabels::new(
            Arc::clone(&self.source_labels),
            destination,
            self.response_code,
        )
        .with_response_flags(self.flags);
        if self.grpc {
            labels = labels.with_grpc_status(grpc_status);
        }
        core.metrics
            .record(&labels, duration, request_bytes, body.bytes);
        if let Some(span) = self.span.take() {
            let mut attributes = span.attributes;
            let cluster = self
                .upstream_cluster
                .clone()
                .unwrap_or_else(|| "-".to_owned());
            attributes.extend([
                ("http.status_code", self.response_code.to_string()),
                ("response_flags", self.flags.to_string()),
                ("upstream_cluster", cluster.clone()),
                ("upstream_cluster.name", cluster),
                ("request_size", request_bytes.to_string()),
                ("response_size", body.bytes.to_string()),
            ]);
            let status = span_status(self.response_code);
            if status == crate::telemetry::trace::SpanStatus::Error {
                attributes.push(("error", "true".to_owned()));
            }
            let record = SpanRecord {
                context: self.trace.context,
                parent_span_id: self.trace.parent_span_id,
                tracestate: self
                    .trace
                    .tracestate
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                name: span.name,
                start_unix_nanos: unix_nanos(span.start),
                end_unix_nanos: unix_nanos(SystemTime::now()),
                attributes,
                status,
            };
            core.tracer.finish(record, self.trace.sampled);
        }
        if let Some(mut entry) = self.entry {
            entry.route_name = self.route_name;
            entry.response_code = self.response_code;
            entry.response_flags = self.flags;
            entry.response_code_details =
                (!self.details.is_empty()).then(|| self.details.into_owned());
            entry.bytes_received = request_bytes;
            entry.bytes_sent = body.bytes;
            entry.duration = duration;
            entry.upstream_service_time = self.upstream_service_time;
            entry.upstream_host = self.upstream_host.map(|a| a.to_string());
            entry.upstream_cluster = self.upstream_cluster;
            entry.upstream_transport_failure_reason = self.upstream_transport_failure_reason;
            core.access_log.log(&entry);
        }
        drop(self.guards);
    }
}
