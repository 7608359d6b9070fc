//! Waypoint tracing end to end: client → ztunnel → waypoint → ztunnel → backends, with a fake
//! OpenTelemetry collector on loopback (an OTLP/gRPC `TraceService` that records every export).
//! Checks what the backend receives (W3C / B3 headers continuing the client's trace from the
//! waypoint's span), what the collector receives (the waypoint's SERVER span with Envoy's and
//! Istio's attributes), and the sampling rules.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_e2e::waypoint::{BACKENDS, MeshOptions, Net, Seen, WaypointMesh, get, send};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use proto::opentelemetry::proto::common::v1::any_value;
use proto::opentelemetry::proto::trace::v1::{Span, span, status};
use tokio::net::TcpListener;
use tonic::codegen::Service;
use waypoint::telemetry::TracingSettings;
use waypoint::telemetry::otlp::OtlpSettings;

const REVIEWS_CLUSTER: &str = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
const SPAN_NAME: &str = "reviews.default.svc.cluster.local:9080/*";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// Upper bound on waiting for the collector (a hang guard, not a timing assertion).
const WAIT: Duration = Duration::from_secs(20);

/// The fake collector: records every export request; with `hang`, never answers.
#[derive(Clone, Default)]
struct Collector {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    hang: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Every span received so far.
    fn spans(&self) -> Vec<(Vec<(String, String)>, Span)> {
        let mut out = Vec::new();
        for request in self.requests.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let resource = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .map(|kv| (kv.key.clone(), string_value(kv)))
                    .collect::<Vec<_>>();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push((resource.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }

    /// Waits (bounded by [`WAIT`]) for a span of trace `trace_id` and returns it with its
    /// resource attributes.
    async fn span_of(&self, trace_id: &str) -> (Vec<(String, String)>, Span) {
        eventually(&format!("no span of trace {trace_id}"), || {
            self.spans()
                .into_iter()
                .find(|(_, s)| hex(&s.trace_id) == trace_id)
        })
        .await
    }

    /// Serves OTLP/gRPC over plaintext HTTP/2 on `addr`.
    async fn serve(self, addr: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        let server = TraceServiceServer::new(self);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let mut server = server.clone();
                        async move { Ok::<_, Infallible>(server.call(request).await.unwrap()) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        bound
    }
}

/// Waits (bounded by [`WAIT`]) until `check` returns something.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled counter `name` in the waypoint's metrics.
fn counter(mesh: &WaypointMesh, name: &str) -> Option<u64> {
    mesh.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn string_value(kv: &proto::opentelemetry::proto::common::v1::KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), string_value(kv)))
        .collect()
}

/// Starts a mesh on `net` whose waypoint samples `sampling`% and exports to `collector`
/// (none: no exporter).
async fn mesh_with(
    net: Net,
    sampling: f64,
    collector: Option<(Collector, Option<OtlpSettings>)>,
) -> WaypointMesh {
    let otlp = match collector {
        Some((collector, settings)) => {
            let addr = collector
                .serve(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(127, net.0, 2, 1)),
                    0,
                ))
                .await;
            let endpoint = waypoint::telemetry::otlp::parse_endpoint(&addr.to_string()).unwrap();
            let base = OtlpSettings {
                schedule_delay: Duration::from_millis(20),
                ..OtlpSettings::new(endpoint.clone(), "waypoint.default".into())
            };
            Some(match settings {
                Some(s) => OtlpSettings { endpoint, ..s },
                None => base,
            })
        }
        None => None,
    };
    WaypointMesh::start_with(
        net,
        MeshOptions {
            tracing: TracingSettings {
                sampling,
                otlp,
                ..TracingSettings::default()
            },
            ..MeshOptions::default()
        },
    )
    .await
}

/// What the reviews backends received for the request with `x-request-id: id`.
fn seen_by_id(mesh: &WaypointMesh, id: &str) -> Seen {
    BACKENDS
        .iter()
        .filter(|(_, service, _, _)| *service == "reviews")
        .flat_map(|(name, _, _, _)| mesh.backends.seen(name))
        .find(|s| s.headers.get("x-request-id").is_some_and(|v| v == id))
        .unwrap_or_else(|| panic!("no backend saw request {id}"))
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The parts of a `traceparent`: trace id, parent id, flags.
fn traceparent(seen: &Seen) -> (String, String, String) {
    let value = header(seen, "traceparent").expect("traceparent at the backend");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_and_b3_propagation_spans_and_sampling() {
    let collector = Collector::default();
    // 0%: only requests the caller sampled are exported.
    let mesh = mesh_with(Net(62), 0.0, Some((collector.clone(), None))).await;
    let reviews = mesh.net.reviews();
    let mut client = mesh.http1(reviews).await;

    // 1. W3C, sampled by the caller, with tracestate; no x-request-id (the waypoint makes one).
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = send(
        &mut client,
        get(
            "reviews:9080",
            "/w3c",
            &[
                ("traceparent", &tp),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("user-agent", "trace-test"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let entry = eventually("access log entry", || {
        mesh.access_log().into_iter().find(|e| e["path"] == "/w3c")
    })
    .await;
    let request_id = entry["request_id"]
        .as_str()
        .expect("request_id logged")
        .to_owned();
    assert_eq!(request_id.len(), 36, "{request_id}");
    let seen = seen_by_id(&mesh, &request_id);
    let (trace_id, parent, flags) = traceparent(&seen);
    assert_eq!(trace_id, TRACE);
    assert_ne!(parent, CLIENT_SPAN);
    assert_eq!(flags, "01");
    assert_eq!(header(&seen, "tracestate"), Some("congo=t61rcWkgMzE"));
    assert!(header(&seen, "x-b3-traceid").is_none() && header(&seen, "b3").is_none());

    let (resource, span) = collector.span_of(TRACE).await;
    assert_eq!(
        hex(&span.span_id),
        parent,
        "the backend's parent is the waypoint's span"
    );
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.kind, span::SpanKind::Server as i32);
    assert_eq!(span.name, SPAN_NAME);
    assert_eq!(span.trace_state, "congo=t61rcWkgMzE");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Unset as i32)
    );
    let attrs = attributes(&span);
    for (key, value) in [
        ("http.method", "GET"),
        ("http.url", "http://reviews:9080/w3c"),
        ("http.status_code", "200"),
        ("http.protocol", "HTTP/1.1"),
        ("upstream_cluster", REVIEWS_CLUSTER),
        ("guid:x-request-id", request_id.as_str()),
        ("user_agent", "trace-test"),
        ("response_flags", "-"),
        ("component", "proxy"),
        ("downstream_cluster", "-"),
        ("istio.canonical_service", "waypoint"),
        ("istio.namespace", "default"),
        ("istio.mesh_id", "cluster.local"),
        ("zone", ""),
    ] {
        assert_eq!(attrs.get(key).map(String::as_str), Some(value), "{key}");
    }
    let net = mesh.net;
    assert_eq!(
        attrs.get("node_id").map(String::as_str),
        Some(
            format!(
                "waypoint~{}~waypoint.default~default.svc.cluster.local",
                net.waypoint()
            )
            .as_str()
        )
    );
    // The downstream client's address, as the access log reports it.
    let remote: SocketAddr = entry["downstream_remote_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        attrs.get("peer.address").map(String::as_str),
        Some(remote.ip().to_string().as_str())
    );
    assert!(
        resource.contains(&("service.name".into(), "waypoint.default".into())),
        "{resource:?}"
    );

    // 2. B3 multi-header in → B3 out (same trace, the waypoint's span as parent), exported.
    let b3_trace = "a3ce929d0e0e47364bf92f3577b34da6";
    let (status, _, _) = send(
        &mut client,
        get(
            "reviews:9080",
            "/b3",
            &[
                ("x-request-id", "b3-multi"),
                ("x-b3-traceid", b3_trace),
                ("x-b3-spanid", CLIENT_SPAN),
                ("x-b3-sampled", "1"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen_by_id(&mesh, "b3-multi");
    assert_eq!(header(&seen, "x-b3-traceid"), Some(b3_trace));
    assert_eq!(header(&seen, "x-b3-parentspanid"), Some(CLIENT_SPAN));
    assert_eq!(header(&seen, "x-b3-sampled"), Some("1"));
    let b3_span = header(&seen, "x-b3-spanid").unwrap().to_owned();
    assert_ne!(b3_span, CLIENT_SPAN);
    assert!(header(&seen, "traceparent").is_none());
    let (_, span) = collector.span_of(b3_trace).await;
    assert_eq!(hex(&span.span_id), b3_span);
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        attributes(&span)
            .get("guid:x-request-id")
            .map(String::as_str),
        Some("b3-multi")
    );

    // 3. Single b3 header in → single b3 out.
    let single_trace = "0123456789abcdef0123456789abcdef";
    let (status, _, _) = send(
        &mut client,
        get(
            "reviews:9080",
            "/b3-single",
            &[
                ("x-request-id", "b3-single"),
                ("b3", &format!("{single_trace}-{CLIENT_SPAN}-1")),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen_by_id(&mesh, "b3-single");
    let b3 = header(&seen, "b3").expect("b3 at the backend");
    let parts: Vec<&str> = b3.split('-').collect();
    assert_eq!(parts.len(), 4, "{b3}");
    assert_eq!(parts[0], single_trace);
    assert_ne!(parts[1], CLIENT_SPAN);
    assert_eq!(&parts[2..], &["1", CLIENT_SPAN]);
    collector.span_of(single_trace).await;

    // 4. x-b3-sampled: 0 → propagated as not sampled, not exported.
    let unsampled_b3 = "fedcba9876543210fedcba9876543210";
    send(
        &mut client,
        get(
            "reviews:9080",
            "/b3-unsampled",
            &[
                ("x-request-id", "b3-unsampled"),
                ("x-b3-traceid", unsampled_b3),
                ("x-b3-spanid", CLIENT_SPAN),
                ("x-b3-sampled", "0"),
            ],
        ),
    )
    .await;
    let seen = seen_by_id(&mesh, "b3-unsampled");
    assert_eq!(header(&seen, "x-b3-traceid"), Some(unsampled_b3));
    assert_eq!(header(&seen, "x-b3-sampled"), Some("0"));

    // 5. No trace headers at 0% → a new trace propagated (W3C, not sampled), not exported.
    send(
        &mut client,
        get("reviews:9080", "/none", &[("x-request-id", "no-trace")]),
    )
    .await;
    let seen = seen_by_id(&mesh, "no-trace");
    let (fresh_trace, _, flags) = traceparent(&seen);
    assert_eq!(flags, "00");
    assert_ne!(fresh_trace, "0".repeat(32));

    // 6. Sampled request answered 503 → error status; exported after 4 and 5, so once it is
    //    in, the unsampled ones would have been too.
    let error_trace = "11111111111111112222222222222222";
    send(
        &mut client,
        get(
            "reviews:9080",
            "/status/503",
            &[
                ("x-request-id", "error"),
                ("traceparent", &format!("00-{error_trace}-{CLIENT_SPAN}-01")),
            ],
        ),
    )
    .await;
    let (_, span) = collector.span_of(error_trace).await;
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Error as i32)
    );
    assert_eq!(
        attributes(&span)
            .get("http.status_code")
            .map(String::as_str),
        Some("503")
    );
    let exported: Vec<String> = collector
        .spans()
        .iter()
        .map(|(_, s)| hex(&s.trace_id))
        .collect();
    assert!(!exported.contains(&unsampled_b3.to_owned()), "{exported:?}");
    assert!(!exported.contains(&fresh_trace), "{exported:?}");
    assert_eq!(exported.len(), 4, "{exported:?}");
    eventually("4 spans counted as sent", || {
        (counter(&mesh, "envoy_tracing_opentelemetry_spans_sent") == Some(4)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_headers_are_still_propagated() {
    let mesh = mesh_with(Net(63), 100.0, None).await;
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = send(
        &mut client,
        get(
            "reviews:9080",
            "/",
            &[("x-request-id", "plain"), ("traceparent", &tp)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen_by_id(&mesh, "plain");
    let (trace_id, parent, flags) = traceparent(&seen);
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, CLIENT_SPAN);

    // An invalid traceparent (upper-case hex) is treated as absent: a new trace, sampled at
    // 100%.
    let bad = format!("00-{}-{CLIENT_SPAN}-01", TRACE.to_uppercase());
    send(
        &mut client,
        get(
            "reviews:9080",
            "/",
            &[("x-request-id", "invalid"), ("traceparent", &bad)],
        ),
    )
    .await;
    let seen = seen_by_id(&mesh, "invalid");
    let (trace_id, _, flags) = traceparent(&seen);
    assert_ne!(trace_id, TRACE);
    assert_ne!(trace_id, TRACE.to_uppercase());
    assert_eq!(flags, "01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_drops_spans_and_never_blocks_requests() {
    let collector = Collector {
        hang: true,
        ..Collector::default()
    };
    let endpoint = waypoint::telemetry::otlp::parse_endpoint("127.0.0.1:1").unwrap();
    let settings = OtlpSettings {
        max_queue_size: 1,
        max_export_batch_size: 1,
        schedule_delay: Duration::from_millis(1),
        export_timeout: Duration::from_secs(300),
        ..OtlpSettings::new(endpoint, "waypoint.default".into())
    };
    let mesh = mesh_with(Net(64), 100.0, Some((collector.clone(), Some(settings)))).await;
    let mut client = mesh.http1(mesh.net.reviews()).await;
    // At most one span is stuck in export and one queued: of four, two or more are dropped.
    for i in 0..4 {
        let (status, _, _) = tokio::time::timeout(
            WAIT,
            send(
                &mut client,
                get(
                    "reviews:9080",
                    "/",
                    &[("x-request-id", &format!("stuck-{i}"))],
                ),
            ),
        )
        .await
        .expect("requests are not held up by the exporter");
        assert_eq!(status, StatusCode::OK);
    }
    eventually("two or more spans dropped", || {
        counter(&mesh, "envoy_tracing_opentelemetry_spans_dropped").filter(|n| *n >= 2)
    })
    .await;
    assert_eq!(
        counter(&mesh, "envoy_tracing_opentelemetry_spans_sent"),
        Some(0)
    );
    eventually("the collector got the first export", || {
        (!collector.requests.lock().unwrap().is_empty()).then_some(())
    })
    .await;
}
