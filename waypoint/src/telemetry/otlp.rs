//! OTLP/gRPC export of the waypoint's sampled spans to an OpenTelemetry collector.
//!
//! Where it sits: after the log phase of the inbound VIP listener. A finished, sampled request
//! becomes a [`SpanRecord`] that [`SpanExporter::submit`] puts on a bounded queue; it never
//! waits: when the queue is full the span is dropped and counted
//! (`envoy_tracing_opentelemetry_spans_dropped`). One background task takes spans off the
//! queue in batches (up to `max_export_batch_size`, or what arrived within `schedule_delay` of
//! the batch's first span) and sends each batch with `TraceService.Export` over plaintext
//! HTTP/2 (h2c, the collector's port 4317), bounded by `export_timeout`. A failed or timed-out
//! export drops its batch (counted) and the connection is made again for the next one.
//!
//! The settings are named after the OpenTelemetry SDK's environment variables
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`), with their
//! defaults.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
use proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
use proto::opentelemetry::proto::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value,
};
use proto::opentelemetry::proto::resource::v1::Resource;
use proto::opentelemetry::proto::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::metrics::SpanCounters;
use super::trace::{SpanRecord, SpanStatus};

/// The collector's OTLP/gRPC port.
pub const DEFAULT_OTLP_GRPC_PORT: u16 = 4317;
/// Longest time to connect to the collector (TCP and the HTTP/2 handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Span flag: the context's remote-ness is known (OTLP `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// Span flag: the parent is remote (OTLP `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
const FLAG_IS_REMOTE: u32 = 0x200;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The collector, `http://host:port` (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the port
    /// defaults to 4317). Plaintext HTTP/2 only.
    pub endpoint: Uri,
    /// `service.name` of the spans' resource (`OTEL_SERVICE_NAME`; default
    /// `<waypoint name>.<namespace>`, Istio's service cluster name).
    pub service_name: String,
    /// Most spans waiting for export; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub max_queue_size: usize,
    /// Longest wait for a batch to fill before it is sent (`OTEL_BSP_SCHEDULE_DELAY`, 5 s).
    pub schedule_delay: Duration,
    /// Most spans per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub max_export_batch_size: usize,
    /// Deadline of one export call, connecting included (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s).
    pub export_timeout: Duration,
}

impl OtlpSettings {
    /// Export to `endpoint` as `service_name` with the SDK's default batching.
    pub fn new(endpoint: Uri, service_name: String) -> Self {
        Self {
            endpoint,
            service_name,
            max_queue_size: 2048,
            schedule_delay: Duration::from_secs(5),
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an OTLP endpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    /// Not a URI.
    #[error("invalid OTLP endpoint {0:?}")]
    Invalid(String),
    /// `https://` (TLS to the collector) is not supported.
    #[error("OTLP endpoint {0:?}: only plaintext http:// is supported")]
    Scheme(String),
    /// No host.
    #[error("OTLP endpoint {0:?} has no host")]
    NoHost(String),
}

/// Parses a collector endpoint: `http://host[:port]` or `host[:port]`; the port defaults to
/// 4317, a trailing `/` is ignored.
pub fn parse_endpoint(value: &str) -> Result<Uri, EndpointError> {
    let trimmed = value.trim().trim_end_matches('/');
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| EndpointError::Invalid(value.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(EndpointError::Scheme(value.to_owned()));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| EndpointError::NoHost(value.to_owned()))?;
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(EndpointError::Invalid(value.to_owned()));
    }
    let port = uri.port_u16().unwrap_or(DEFAULT_OTLP_GRPC_PORT);
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("http://{host}:{port}")
        .parse()
        .map_err(|_| EndpointError::Invalid(value.to_owned()))
}

/// The exporter's queue; cheap to share.
#[derive(Debug, Clone)]
pub struct SpanExporter {
    queue: mpsc::Sender<SpanRecord>,
    counters: SpanCounters,
}

impl SpanExporter {
    /// Starts the export task (on the current runtime); it ends once every [`SpanExporter`]
    /// clone is dropped and the queue is flushed. `resource` are the resource attributes
    /// besides `service.name`.
    pub fn start(
        settings: OtlpSettings,
        resource: Vec<(&'static str, String)>,
        counters: SpanCounters,
    ) -> (Self, JoinHandle<()>) {
        let (queue, spans) = mpsc::channel(settings.max_queue_size.max(1));
        let mut attributes = vec![string_attribute("service.name", &settings.service_name)];
        attributes.extend(resource.iter().map(|(k, v)| string_attribute(k, v)));
        let resource = Resource {
            attributes,
            dropped_attributes_count: 0,
        };
        let task = tokio::spawn(export_loop(settings, resource, spans, counters.clone()));
        (Self { queue, counters }, task)
    }

    /// Queues `span` for export; drops it (counted) when the queue is full.
    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.counters.dropped.increment(1);
        }
    }
}

async fn export_loop(
    settings: OtlpSettings,
    resource: Resource,
    mut spans: mpsc::Receiver<SpanRecord>,
    counters: SpanCounters,
) {
    let batch_size = settings.max_export_batch_size.max(1);
    let mut channel: Option<Channel> = None;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.schedule_delay;
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let request = export_request(&resource, batch);
        let export = export(&mut channel, &settings.endpoint, request);
        match tokio::time::timeout(settings.export_timeout, export).await {
            Ok(Ok(())) => counters.sent.increment(count),
            Ok(Err(error)) => {
                tracing::debug!(%error, endpoint = %settings.endpoint, spans = count, "span export failed");
                counters.dropped.increment(count);
                channel = None;
            }
            Err(_) => {
                tracing::debug!(endpoint = %settings.endpoint, spans = count, "span export timed out");
                counters.dropped.increment(count);
                channel = None;
            }
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("HTTP/2: {0}")]
    Http2(hyper::Error),
    #[error("collector answered {0}")]
    Status(Box<tonic::Status>),
}

async fn export(
    channel: &mut Option<Channel>,
    endpoint: &Uri,
    request: ExportTraceServiceRequest,
) -> Result<(), ExportError> {
    let live = match channel.take() {
        Some(c) if !c.sender.is_closed() => c,
        _ => Channel::connect(endpoint).await?,
    };
    let mut client = TraceServiceClient::with_origin(live.clone(), endpoint.clone());
    let result = client.export(tonic::Request::new(request)).await;
    *channel = Some(live);
    match result {
        Ok(response) => {
            if let Some(partial) = response.into_inner().partial_success
                && partial.rejected_spans > 0
            {
                tracing::debug!(
                    rejected = partial.rejected_spans,
                    message = partial.error_message,
                    "collector rejected spans"
                );
            }
            Ok(())
        }
        Err(status) => Err(ExportError::Status(Box::new(status))),
    }
}

/// One plaintext HTTP/2 connection to the collector, the transport of the generated client.
#[derive(Clone, Debug)]
struct Channel {
    sender: SendRequest<tonic::body::Body>,
}

impl Channel {
    async fn connect(endpoint: &Uri) -> Result<Self, ExportError> {
        let host = endpoint
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = endpoint.port_u16().unwrap_or(DEFAULT_OTLP_GRPC_PORT);
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(ExportError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake::<_, tonic::body::Body>(TokioIo::new(tcp))
                    .await
                    .map_err(ExportError::Http2)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "OTLP collector connection closed");
                }
            });
            Ok(Self { sender })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ExportError::ConnectTimeout)?
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

/// The OTLP span of a record: kind SERVER, string attributes, error status for
/// [`SpanStatus::Error`], a remote parent.
pub fn otlp_span(record: SpanRecord) -> Span {
    let parent = record
        .parent_span_id
        .map(|id| id.to_be_bytes().to_vec())
        .unwrap_or_default();
    let remote = if record.parent_span_id.is_some() {
        FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE
    } else {
        FLAG_HAS_IS_REMOTE
    };
    Span {
        trace_id: record.context.trace_id.to_be_bytes().to_vec(),
        span_id: record.context.span_id.to_be_bytes().to_vec(),
        trace_state: record.tracestate.unwrap_or_default(),
        parent_span_id: parent,
        // Sampled (only sampled spans are exported).
        flags: 1 | remote,
        name: record.name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: record.start_unix_nanos,
        end_time_unix_nano: record.end_unix_nanos,
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| string_attribute(k, v))
            .collect(),
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(Status {
            message: String::new(),
            code: match record.status {
                SpanStatus::Unset => status::StatusCode::Unset as i32,
                SpanStatus::Error => status::StatusCode::Error as i32,
            },
        }),
    }
}

/// One export call's request: the batch under the waypoint's resource.
fn export_request(resource: &Resource, batch: Vec<SpanRecord>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "waypoint".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    attributes: Vec::new(),
                    dropped_attributes_count: 0,
                }),
                spans: batch.into_iter().map(otlp_span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::SpanContext;

    #[test]
    fn endpoints() {
        let ok = |v: &str, expected: &str| assert_eq!(parse_endpoint(v).unwrap(), expected, "{v}");
        ok(
            "http://otel-collector.observability:4317",
            "http://otel-collector.observability:4317/",
        );
        ok(
            "otel-collector.observability",
            "http://otel-collector.observability:4317/",
        );
        ok("127.0.0.1:4317/", "http://127.0.0.1:4317/");
        ok("http://[::1]:14317", "http://[::1]:14317/");
        assert!(matches!(
            parse_endpoint("https://collector:4317"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            parse_endpoint("http://collector:4317/v1/traces"),
            Err(EndpointError::Invalid(_))
        ));
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn span_encoding() {
        let record = SpanRecord {
            context: SpanContext {
                trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
                span_id: 0x1112_1314_1516_1718,
            },
            parent_span_id: Some(0x2122_2324_2526_2728),
            tracestate: Some("a=b".into()),
            name: "reviews.default.svc.cluster.local:9080/*".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![("http.status_code", "503".into())],
            status: SpanStatus::Error,
        };
        let span = otlp_span(record);
        assert_eq!(span.trace_id, (1..=16).collect::<Vec<u8>>());
        assert_eq!(span.span_id, (0x11..=0x18).collect::<Vec<u8>>());
        assert_eq!(span.parent_span_id, (0x21..=0x28).collect::<Vec<u8>>());
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.flags, 0x301);
        assert_eq!(span.trace_state, "a=b");
        assert_eq!(
            span.status.map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        assert_eq!(
            span.attributes,
            vec![string_attribute("http.status_code", "503")]
        );
    }
}
