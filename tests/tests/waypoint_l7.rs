//! The waypoint end to end: client → ztunnel → waypoint → ztunnel → backends, every hop a real
//! socket (SOCKS5 into the client's ztunnel, HBONE to the waypoint, HBONE to the backends'
//! ztunnel). Each test runs its own mesh on its own `127.<net>.0.0/16`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use ambient_e2e::waypoint::{Net, REVIEWS_BACKENDS, WaypointMesh, get, send, series};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

fn backend_of(headers: &http::HeaderMap) -> String {
    headers
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routing_weighted_split_and_telemetry() {
    let mesh = WaypointMesh::start(Net(31)).await;
    mesh.apply(&format!(
        r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: split
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: 80
    - destination: {{host: reviews, subset: v3}}
      weight: 20
"#
    ));
    let mut client = mesh.http1(mesh.net.reviews()).await;

    // Header match → v2, every time.
    for _ in 0..20 {
        let (status, headers, _) = send(
            &mut client,
            get(REVIEWS, "/reviews/1", &[("end-user", "jason")]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(backend_of(&headers), "reviews-v2");
    }

    // 80/20 over 1000 requests: v1 count is Binomial(1000, 0.8), sd ≈ 12.6; ±6 sd.
    let mut v1 = 0;
    let mut v3 = 0;
    for _ in 0..1000 {
        let (status, headers, _) = send(&mut client, get(REVIEWS, "/reviews/2", &[])).await;
        assert_eq!(status, StatusCode::OK);
        match backend_of(&headers).as_str() {
            "reviews-v1" => v1 += 1,
            "reviews-v3" => v3 += 1,
            other => panic!("unexpected backend {other}"),
        }
    }
    assert_eq!(v1 + v3, 1000);
    assert!(
        (725..=875).contains(&v1),
        "v1 got {v1} of 1000, expected ≈800"
    );
    assert_eq!(mesh.backends.count("reviews-v2", "/reviews/2"), 0);

    // Metrics: reporter=waypoint with the standard labels, exact counts.
    let metrics = mesh.metrics();
    let common = [
        "reporter=\"waypoint\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "source_workload=\"sleep\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "request_protocol=\"http\"",
    ];
    let v2_labels: Vec<&str> = common
        .iter()
        .copied()
        .chain([
            "destination_workload=\"reviews-v2\"",
            "destination_version=\"v2\"",
        ])
        .collect();
    assert_eq!(
        series(&metrics, "istio_requests_total", &v2_labels),
        Some(20.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "istio_requests_total", &common),
        Some(1020.0),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "istio_request_duration_milliseconds_count",
            &v2_labels
        ),
        Some(20.0)
    );
    assert!(metrics.contains("istio_request_duration_milliseconds_bucket{"));

    // Access log: one JSON line per request with Envoy's field names.
    let log = mesh.access_log();
    assert_eq!(log.len(), 1020);
    let first = &log[0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec![
        "authority",
        "bytes_received",
        "bytes_sent",
        "connection_termination_details",
        "downstream_local_address",
        "downstream_remote_address",
        "duration",
        "method",
        "path",
        "protocol",
        "request_id",
        "requested_server_name",
        "response_code",
        "response_code_details",
        "response_flags",
        "route_name",
        "start_time",
        "upstream_cluster",
        "upstream_host",
        "upstream_local_address",
        "upstream_service_time",
        "upstream_transport_failure_reason",
        "user_agent",
        "x_forwarded_for",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(
        first["downstream_local_address"],
        mesh.net.reviews().to_string()
    );
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/reviews/1");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["response_code"], 200);
    assert_eq!(first["response_flags"], "-");
    assert_eq!(first["route_name"], "jason");
    assert_eq!(first["authority"], REVIEWS);
    assert_eq!(
        first["upstream_cluster"],
        "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        first["upstream_host"],
        format!("{}:9080", mesh.net.workload(12))
    );
    assert_eq!(first["response_code_details"], "via_upstream");
    assert!(first["request_id"].as_str().is_some_and(|s| s.len() == 36));
    assert!(first["bytes_sent"].as_u64().is_some_and(|b| b > 0));
    assert!(
        first["start_time"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_missing_subset_redirect_rewrite_and_headers() {
    let mesh = WaypointMesh::start(Net(32)).await;
    mesh.apply(&format!(
        r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: old
    match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new, authority: elsewhere.example}}
  - name: rewrite
    match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /v2/, authority: reviews.internal}}
    headers:
      request:
        set: {{x-route: rewrite}}
        remove: [x-drop]
      response:
        add: {{x-answered-by: waypoint}}
    route:
    - destination: {{host: reviews, subset: v1}}
  - name: ghost
    match: [{{uri: {{prefix: /ghost}}}}]
    route:
    - destination: {{host: reviews, subset: v9}}
  - name: known
    match: [{{uri: {{exact: /known}}}}]
    route:
    - destination: {{host: reviews, subset: v1}}
"#
    ));
    let mut client = mesh.http1(mesh.net.reviews()).await;

    let (status, _, body) = send(&mut client, get(REVIEWS, "/unknown", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], b"route_not_found");

    let (status, _, _) = send(&mut client, get(REVIEWS, "/ghost", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (status, headers, _) = send(&mut client, get(REVIEWS, "/old/page?x=1", &[])).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers.get("location").unwrap(),
        "http://elsewhere.example/new?x=1"
    );

    let (status, headers, _) = send(
        &mut client,
        get(
            REVIEWS,
            "/api/items?q=2",
            &[("x-drop", "1"), ("x-keep", "1")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("x-seen-path").unwrap(), "/v2/items?q=2");
    assert_eq!(headers.get("x-seen-host").unwrap(), "reviews.internal");
    assert_eq!(headers.get("x-answered-by").unwrap(), "waypoint");
    let seen = mesh.backends.seen("reviews-v1");
    let last = seen.last().unwrap();
    assert_eq!(last.headers.get("x-route").unwrap(), "rewrite");
    assert!(last.headers.get("x-drop").is_none());
    assert_eq!(last.headers.get("x-keep").unwrap(), "1");
    assert!(last.headers.get("x-request-id").is_some());

    // Nothing but the rewritten request reached a backend.
    let total = mesh.backends.count_by(REVIEWS_BACKENDS, "/");
    assert_eq!(total, 1);

    let log = mesh.access_log();
    let flags: Vec<(u64, String)> = log
        .iter()
        .map(|l| {
            (
                l["response_code"].as_u64().unwrap(),
                l["response_flags"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        vec![
            (404, "NR".to_owned()),
            (503, "UH".to_owned()),
            (301, "-".to_owned()),
            (200, "-".to_owned()),
        ]
    );
    assert_eq!(
        log[3]["path"], "/api/items?q=2",
        "the access log shows the original path"
    );
    let metrics = mesh.metrics();
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &["response_code=\"404\"", "response_flags=\"NR\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &["response_code=\"503\"", "response_flags=\"UH\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_timeouts_and_retries() {
    let mesh = WaypointMesh::start(Net(33)).await;
    mesh.apply(&format!(
        r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: delay
    match: [{{uri: {{prefix: /delayed}}}}]
    fault:
      delay: {{fixedDelay: 200ms, percentage: {{value: 100}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: abort-all
    match: [{{uri: {{prefix: /abort-all}}}}]
    fault:
      abort: {{httpStatus: 418, percentage: {{value: 100}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: abort-half
    match: [{{uri: {{prefix: /abort-half}}}}]
    fault:
      abort: {{httpStatus: 503, percentage: {{value: 50}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: slow
    match: [{{uri: {{prefix: /delay/}}}}]
    timeout: 100ms
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: retry
    match: [{{uri: {{prefix: /status/}}}}, {{uri: {{prefix: /flaky/}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
    route: [{{destination: {{host: reviews, subset: v2}}}}]
"#
    ));
    let mut client = mesh.http1(mesh.net.reviews()).await;

    // Delay: the request still succeeds; flagged DI; it took at least the delay.
    let started = Instant::now();
    let (status, _, _) = send(&mut client, get(REVIEWS, "/delayed", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Abort at 100%: 418 and the backend never sees it.
    let (status, _, body) = send(&mut client, get(REVIEWS, "/abort-all", &[])).await;
    assert_eq!(status.as_u16(), 418);
    assert_eq!(&body[..], b"fault filter abort");
    assert_eq!(mesh.backends.count("reviews-v1", "/abort-all"), 0);

    // Abort at 50% over 400 requests: aborted ≈ 200 (sd 10), and exactly the rest reached v1.
    let mut aborted = 0;
    for _ in 0..400 {
        let (status, _, _) = send(&mut client, get(REVIEWS, "/abort-half", &[])).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            aborted += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!((140..=260).contains(&aborted), "aborted {aborted} of 400");
    assert_eq!(
        mesh.backends.count("reviews-v1", "/abort-half"),
        400 - aborted
    );

    // Route timeout: 504 UT while the backend is still sleeping.
    let (status, _, _) = send(&mut client, get(REVIEWS, "/delay/2000", &[])).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // Retries on 5xx: 1 try + 3 retries reach the backend, then the 503 comes back (URX).
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let (status, _, _) = send(&mut client, get(REVIEWS, "/status/503", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mesh.backends.count("reviews-v2", "/status/503"), 4);
    // A path failing twice then succeeding: the client sees 200 after 3 attempts.
    let (status, _, _) = send(&mut client, get(REVIEWS, "/flaky/2", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mesh.backends.count("reviews-v2", "/flaky/2"), 3);

    let log = mesh.access_log();
    let find = |path: &str| {
        log.iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access log line for {path}"))
            .clone()
    };
    assert_eq!(find("/delayed")["response_flags"], "DI");
    assert!(find("/delayed")["duration"].as_u64().unwrap() >= 200);
    assert_eq!(find("/abort-all")["response_flags"], "FI");
    assert_eq!(
        find("/abort-all")["response_code_details"],
        "fault_filter_abort"
    );
    assert_eq!(find("/delay/2000")["response_flags"], "UT");
    assert_eq!(find("/status/503")["response_flags"], "URX");
    assert_eq!(find("/flaky/2")["response_flags"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_consistent_hash_circuit_breaking_and_outliers() {
    let mesh = WaypointMesh::start(Net(34)).await;
    mesh.apply(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v3, labels: {version: v3}}
  - name: limited
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        tcp: {maxConnections: 1}
        http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: mirrored
    match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 100}
  - name: limited
    match: [{uri: {prefix: /delay/}}]
    route: [{destination: {host: reviews, subset: limited}}]
    retries: {attempts: 0}
  - name: sticky
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 0}
"#,
    );
    let mut client = mesh.http1(mesh.net.reviews()).await;

    // Mirror: the client gets v1's answer; v3 receives the copy with a -shadow authority.
    let (status, headers, _) = send(&mut client, get(REVIEWS, "/mirror/1", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend_of(&headers), "reviews-v1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.backends.count("reviews-v3", "/mirror/1") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shadow = mesh.backends.seen("reviews-v3");
    assert_eq!(shadow.len(), 1, "the mirror received one copy");
    assert_eq!(
        shadow[0].headers.get("host").unwrap(),
        "reviews.default.svc.cluster.local-shadow"
    );

    // Consistent hash: a user sticks to one backend; several users spread.
    let mut chosen = std::collections::BTreeSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let (_, headers, _) =
            send(&mut client, get(REVIEWS, "/sticky", &[("x-user", &user)])).await;
        let first = backend_of(&headers);
        for _ in 0..10 {
            let (_, headers, _) =
                send(&mut client, get(REVIEWS, "/sticky", &[("x-user", &user)])).await;
            assert_eq!(backend_of(&headers), first, "{user} moved");
        }
        chosen.insert(first);
    }
    assert!(chosen.len() >= 2, "12 users all hashed to {chosen:?}");

    // Circuit breaking: one request in flight, one pending; the rest overflow with 503 UO.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = mesh.http1(mesh.net.reviews()).await;
        tasks.push(tokio::spawn(async move {
            send(&mut c, get(REVIEWS, "/delay/300", &[])).await.0
        }));
    }
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => overflow += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1 && overflow >= 1, "ok {ok}, overflow {overflow}");
    assert_eq!(ok + overflow, 6);
    let uo = mesh
        .access_log()
        .iter()
        .filter(|l| l["response_flags"] == "UO")
        .count();
    assert_eq!(uo, overflow);

    // Outlier detection: ratings-v2 fails `/fail-on/ratings-v2`, ratings-v1 answers it. With
    // round robin, v2 gets every other request until its second consecutive 5xx ejects it;
    // from then on everything goes to v1.
    let mut ratings = mesh.http1(mesh.net.ratings()).await;
    let host = "ratings.default.svc.cluster.local";
    let mut failures = 0;
    let mut tail = Vec::new();
    for i in 0..20 {
        let (status, headers, _) = send(&mut ratings, get(host, "/fail-on/ratings-v2", &[])).await;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            failures += 1;
        }
        if i >= 10 {
            tail.push((status, backend_of(&headers)));
        }
    }
    assert_eq!(failures, 2, "ratings-v2 answered twice before its ejection");
    assert!(
        tail.iter()
            .all(|(s, b)| *s == StatusCode::OK && b == "ratings-v1"),
        "{tail:?}"
    );
    let dump = mesh.config_dump().await;
    let cluster = dump["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["kind"] == "cluster"
                && s["name"] == "inbound-vip|9080|http|ratings.default.svc.cluster.local"
        })
        .unwrap()
        .clone();
    assert_eq!(
        cluster["stats"]["outlier_detection_ejections_enforced_consecutive_5xx"], 1,
        "{cluster}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_through_the_chain() {
    let mesh = WaypointMesh::start(Net(35)).await;
    mesh.apply(&format!(
        r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
"#
    ));
    // HTTP/2: several concurrent streams on one connection, header routing works.
    let mut h2 = mesh.http2::<Full<Bytes>>(mesh.net.reviews()).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        let user = if i % 2 == 0 { "jason" } else { "other" };
        let request = http::Request::get(format!("http://{REVIEWS}/h2/{i}"))
            .header("end-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let fut = h2.send_request(request);
        handles.push(tokio::spawn(async move {
            let r = fut.await.unwrap();
            assert_eq!(r.version(), http::Version::HTTP_2);
            (user, backend_of(r.headers()))
        }));
    }
    for h in handles {
        let (user, backend) = h.await.unwrap();
        let expected = if user == "jason" {
            "reviews-v2"
        } else {
            "reviews-v1"
        };
        assert_eq!(backend, expected);
    }
    let seen = mesh.backends.seen("reviews-v2");
    assert!(seen.iter().all(|s| s.path.starts_with("/h2/")));

    // gRPC unary.
    let mut grpc = mesh.http2::<Full<Bytes>>(mesh.net.reviews()).await;
    let message = ambient_e2e::waypoint::grpc_frame(b"hello");
    let request = http::Request::post(format!("http://{REVIEWS}/echo.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .unwrap();
    let response = grpc.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), message);

    // gRPC bidirectional streaming: each reply arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
    >(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut stream_client = mesh
        .http2::<http_body_util::StreamBody<
            tokio_stream::wrappers::ReceiverStream<
                Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
            >,
        >>(mesh.net.reviews())
        .await;
    let request = http::Request::post(format!("http://{REVIEWS}/echo.Echo/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = stream_client.send_request(request).await;
    let mut pending = Some(response);
    // The first message must go out before the response headers can come back.
    tx.send(Ok(hyper::body::Frame::data(
        ambient_e2e::waypoint::grpc_frame(b"m0"),
    )))
    .await
    .unwrap();
    let response = pending.take().unwrap().unwrap();
    let mut body = response.into_body();
    for i in 0..5 {
        if i > 0 {
            let msg = format!("m{i}");
            tx.send(Ok(hyper::body::Frame::data(
                ambient_e2e::waypoint::grpc_frame(msg.as_bytes()),
            )))
            .await
            .unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the reply streams back before the request ends")
            .unwrap()
            .unwrap();
        let data = frame.into_data().unwrap();
        assert_eq!(&data[5..], format!("m{i}").as_bytes());
    }
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap().get("grpc-status").unwrap(), "0");

    let metrics = mesh.metrics();
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &["request_protocol=\"grpc\"", "grpc_response_status=\"0\""]
        ),
        Some(2.0),
        "{metrics}"
    );
    let log = mesh.access_log();
    assert!(
        log.iter()
            .any(|l| l["protocol"] == "HTTP/2" && l["path"] == "/echo.Echo/Stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matches_weights_filters_and_config_dump() {
    let mesh = WaypointMesh::start(Net(36)).await;
    mesh.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: ratings, port: 9080}
  rules:
  - matches:
    - headers: [{name: end-user, value: jason}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-from, value: httproute}]
    backendRefs:
    - {name: ratings, port: 9080}
  - matches:
    - path: {type: PathPrefix, value: /moved}
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example, statusCode: 302}
  - matches:
    - path: {type: PathPrefix, value: /old-api}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new-api}
    - type: RequestMirror
      requestMirror:
        backendRef: {name: reviews, port: 9080}
    backendRefs:
    - {name: ratings, port: 9080}
  - matches:
    - path: {type: PathPrefix, value: /delay}
    timeouts: {request: 100ms}
    backendRefs:
    - {name: ratings, port: 9080}
  - backendRefs:
    - {name: ratings, port: 9080, weight: 80}
    - {name: reviews, port: 9080, weight: 20}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews-grpc, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - matches:
    - method: {service: echo.Echo, method: Unary}
    backendRefs:
    - {name: ratings, port: 9080}
  - backendRefs:
    - {name: reviews, port: 9080}
"#,
    );
    let mut client = mesh.http1(mesh.net.ratings()).await;
    let host = "ratings.default.svc.cluster.local";
    let (status, _, _) = send(&mut client, get(host, "/x", &[("end-user", "jason")])).await;
    assert_eq!(status, StatusCode::OK);
    let all: Vec<_> = ["ratings-v1", "ratings-v2"]
        .iter()
        .flat_map(|b| mesh.backends.seen(b))
        .collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].headers.get("x-from").unwrap(), "httproute");

    let (status, headers, _) = send(&mut client, get(host, "/moved/a", &[])).await;
    assert_eq!(status, StatusCode::FOUND);
    // Gateway API: no port given → the listener's (here the service's) port, kept unless 80.
    assert_eq!(
        headers.get("location").unwrap(),
        "http://new.example:9080/moved/a"
    );

    // URLRewrite (ReplacePrefixMatch) plus a mirror to another service.
    let (status, headers, _) = send(&mut client, get(host, "/old-api/x", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("x-seen-path").unwrap(), "/new-api/x");
    assert!(backend_of(&headers).starts_with("ratings-"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mirrored = || mesh.backends.count_by(REVIEWS_BACKENDS, "/new-api/x");
    while mirrored() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mirrored(), 1, "the mirror got the rewritten request once");

    // timeouts.request → 504.
    let (status, _, _) = send(&mut client, get(host, "/delay/2000", &[])).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // Weighted backendRefs across two services: 80/20 over 500 (sd ≈ 8.9; ±6 sd).
    let mut to_ratings = 0;
    for _ in 0..500 {
        let (status, headers, _) = send(&mut client, get(host, "/split", &[])).await;
        assert_eq!(status, StatusCode::OK);
        if backend_of(&headers).starts_with("ratings-") {
            to_ratings += 1;
        }
    }
    assert!(
        (346..=454).contains(&to_ratings),
        "ratings got {to_ratings} of 500"
    );

    // GRPCRoute on reviews: echo.Echo/Unary goes to ratings, anything else stays on reviews.
    let mut grpc = mesh.http2::<Full<Bytes>>(mesh.net.reviews()).await;
    for (method, expected) in [("Unary", "ratings-"), ("Other", "reviews-")] {
        let request = http::Request::post(format!("http://{REVIEWS}/echo.Echo/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(ambient_e2e::waypoint::grpc_frame(b"x")))
            .unwrap();
        let response = grpc.send_request(request).await.unwrap();
        assert!(
            backend_of(response.headers()).starts_with(expected),
            "{method}: {:?}",
            response.headers()
        );
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap().get("grpc-status").unwrap(), "0");
    }

    // config_dump, from the admin server, names every stage.
    let dump = mesh.config_dump().await;
    let names: Vec<String> = dump["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    for expected in [
        "connect_terminate",
        "main_internal",
        "inbound-vip|9080|http|ratings.default.svc.cluster.local",
        "inbound-vip|9080|http|reviews.default.svc.cluster.local",
        "inbound-vip|9080|tcp|ratings.default.svc.cluster.local",
        "connect_originate",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let pods: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("inbound-pod|9080|"))
        .collect();
    for host in [21, 22, 11, 12, 13] {
        let name = format!("inbound-pod|9080|{}", mesh.net.workload(host));
        assert!(pods.contains(&&name), "{name} missing from {names:?}");
    }
    assert_eq!(
        pods.len(),
        5,
        "one inbound-pod stage per endpoint used: {names:?}"
    );
    let listener = dump["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["kind"] == "listener"
                && s["name"] == "inbound-vip|9080|http|ratings.default.svc.cluster.local"
        })
        .unwrap();
    assert_eq!(listener["routes"]["http"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pod_addressed_and_refused_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mesh = WaypointMesh::start(Net(37)).await;

    // Bytes that are not HTTP take the inbound-vip|9080|tcp|… chain to a backend: its HTTP
    // server is what answers them (400). The waypoint reports a TCP connection, not a request.
    const PROBE: &[u8] = b"SSH-2.0-probe\r\n\r\n";
    let mut stream = mesh.connect(mesh.net.reviews()).await;
    stream.write_all(PROBE).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the backend answers through the TCP chain")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.access_log().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = mesh.access_log();
    assert_eq!(log.len(), 1, "one line for the connection: {log:#?}");
    let entry = &log[0];
    assert_eq!(
        entry["upstream_cluster"],
        "inbound-vip|9080|tcp|reviews.default.svc.cluster.local"
    );
    assert_eq!(entry["method"], serde_json::Value::Null);
    assert_eq!(entry["response_code"], 0);
    assert_eq!(entry["bytes_received"], PROBE.len() as u64);
    assert_eq!(entry["bytes_sent"], answer.len() as u64);
    assert_eq!(entry["response_flags"], "-");
    let upstream = entry["upstream_host"].as_str().unwrap();
    let metrics = mesh.metrics();
    let tcp = [
        "reporter=\"waypoint\"",
        "request_protocol=\"tcp\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        series(&metrics, "istio_tcp_connections_opened_total", &tcp),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "istio_tcp_connections_closed_total", &tcp),
        Some(1.0)
    );
    assert_eq!(
        series(&metrics, "istio_tcp_received_bytes_total", &tcp),
        Some(PROBE.len() as f64)
    );
    assert_eq!(
        series(&metrics, "istio_tcp_sent_bytes_total", &tcp),
        Some(answer.len() as f64)
    );
    // The destination workload is the reviews pod the bytes went to.
    let workload = metrics
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total"))
        .and_then(|l| l.split("destination_workload=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    assert!(
        REVIEWS_BACKENDS.contains(&workload),
        "{workload} ({upstream})"
    );
    assert!(
        !metrics.contains("istio_requests_total"),
        "no request: {metrics}"
    );
    mesh.access_log.clear();

    // Workload-addressed traffic to a pod bound to the waypoint goes through it (L4): the
    // backend's ztunnel sees the waypoint's identity as the source.
    let pod = std::net::SocketAddr::new(mesh.net.workload(21).into(), 9080);
    let mut client = mesh.http1(pod).await;
    let (status, headers, _) = send(&mut client, get("10.0.0.1", "/direct", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend_of(&headers), "ratings-v1");
    assert_eq!(mesh.backends.count("ratings-v1", "/direct"), 1);
    let node_metrics = mesh.node_b.metrics().render();
    assert!(
        series(
            &node_metrics,
            "istio_tcp_connections_opened_total",
            &[
                "source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"",
                "destination_workload=\"ratings-v1\"",
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "{node_metrics}"
    );

    // A tunnel for a destination this waypoint does not serve is refused with 400.
    let ca = hbone::LocalCa::load_or_generate(&mesh.ca_dir, "cluster.local").unwrap();
    let sleep = hbone::Identity::new("cluster.local", "default", "sleep").unwrap();
    let certs = std::sync::Arc::new(hbone::CertStore::new(
        ca.issue(&sleep, Duration::from_secs(600)).unwrap(),
    ));
    let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
    let waypoint_id = hbone::Identity::new("cluster.local", "default", "waypoint").unwrap();
    for target in [
        std::net::SocketAddr::new(mesh.net.vip(99).into(), 80),
        std::net::SocketAddr::new(mesh.net.workload(11).into(), 9080),
    ] {
        let result = pool
            .connect(
                &certs,
                vec![waypoint_id.clone()],
                mesh.waypoint.hbone,
                &hbone::TunnelRequest::new(target),
            )
            .await;
        match result {
            Err(hbone::Error::Status(status)) => assert_eq!(status, StatusCode::BAD_REQUEST),
            other => panic!("tunnel to {target}: expected 400, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_hot_reload_keeps_good_objects_and_reports_bad_ones() {
    let mesh = WaypointMesh::start(Net(38)).await;
    let mut client = mesh.http1(mesh.net.reviews()).await;
    // No configuration: the default route spreads over every reviews endpoint.
    let (status, _, _) = send(&mut client, get(REVIEWS, "/before", &[])).await;
    assert_eq!(status, StatusCode::OK);

    // A file appears in the watched directory with one valid VirtualService and one
    // malformed DestinationRule; the waypoint picks it up on its own.
    std::fs::write(
        mesh.config_dir.join("routing.yaml"),
        format!(
            r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: broken, namespace: default}}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {{simple: SIDEWAYS}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v3}}}}]
    headers:
      response:
        set: {{x-config: applied}}
"#
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, _) = send(&mut client, get(REVIEWS, "/after", &[])).await;
        assert_eq!(status, StatusCode::OK);
        if headers.contains_key("x-config") {
            assert_eq!(backend_of(&headers), "reviews-v3");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new VirtualService never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        let (_, headers, _) = send(&mut client, get(REVIEWS, "/after", &[])).await;
        assert_eq!(backend_of(&headers), "reviews-v3");
    }
    let dump = mesh.config_dump().await;
    let errors: Vec<String> = dump["configErrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = &errors[0];
    assert!(error.contains("routing.yaml"), "{error}");
    assert!(error.contains("broken"), "{error}");
    assert!(error.contains("loadBalancer"), "{error}");
}

/// A `MakeWriter` collecting log output into a shared buffer.
#[derive(Clone, Default)]
struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Sends one HTTP/1.1 request on a raw stream and reads until the end of its response headers
/// and `content-length` bytes of body.
async fn exchange(stream: &mut tokio::net::TcpStream, extra: &str) -> String {
    let request = format!("GET /reviews/1 HTTP/1.1\r\nhost: {REVIEWS}\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before the response was complete");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Tunnels through the waypoint end cleanly at every hop, whichever side closes first: the
/// client's ztunnel reports each connection as complete (`response_flags="-"`), not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_through_the_waypoint_close_cleanly_whoever_closes_first() {
    // The ztunnels' access log goes to `tracing`; this binary's only subscriber collects it.
    let logs = LogBuf::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_env_filter("warn,access=info")
        .init();
    let mesh = WaypointMesh::start(Net(47)).await;

    // The client closes first, after a response.
    let mut first = mesh.connect(mesh.net.reviews()).await;
    assert!(exchange(&mut first, "").await.starts_with("HTTP/1.1 200"));
    drop(first);

    // The waypoint closes first (`connection: close`); the client sees EOF, then closes.
    let mut second = mesh.connect(mesh.net.reviews()).await;
    assert!(
        exchange(&mut second, "connection: close\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut rest))
        .await
        .expect("the waypoint closes the connection")
        .unwrap();
    drop(second);

    // Both connections appear in the client ztunnel's access log, as complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ours = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("direction=outbound") && l.contains("127.47.1."))
            .map(str::to_owned)
            .collect()
    };
    let lines = loop {
        let lines = ours(&String::from_utf8_lossy(&logs.0.lock().unwrap()));
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert!(line.contains("connection complete"), "{line}");
        assert!(!line.contains("error="), "{line}");
    }
}

/// The match fields and the CORS policy not covered above, through the whole chain:
/// `queryParams`, `withoutHeaders`, `ignoreUriCase`, and `corsPolicy` preflight and actual
/// responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_params_without_headers_ignore_case_and_cors() {
    let mesh = WaypointMesh::start(Net(48)).await;
    mesh.apply(&format!(
        r#"{SUBSETS}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - name: by-query
    match:
    - queryParams:
        version: {{exact: three}}
    route:
    - destination: {{host: reviews, subset: v3}}
  - name: anonymous
    match:
    - uri: {{prefix: /anon}}
      withoutHeaders:
        end-user: {{}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: case-blind
    match:
    - uri: {{exact: /Upper/Path}}
      ignoreUriCase: true
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: rest
    corsPolicy:
      allowOrigins:
      - exact: https://shop.example.com
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-backend]
      maxAge: 600s
      allowCredentials: true
    route:
    - destination: {{host: reviews, subset: v1}}
"#
    ));
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let backend = |headers: &http::HeaderMap| backend_of(headers);

    // queryParams: only the exact value selects v3.
    let (status, headers, _) = send(&mut client, get(REVIEWS, "/q?version=three&x=1", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend(&headers), "reviews-v3");
    let (_, headers, _) = send(&mut client, get(REVIEWS, "/q?version=threes", &[])).await;
    assert_eq!(backend(&headers), "reviews-v1");

    // withoutHeaders: matches only while the header is absent.
    let (_, headers, _) = send(&mut client, get(REVIEWS, "/anon", &[])).await;
    assert_eq!(backend(&headers), "reviews-v2");
    let (_, headers, _) = send(&mut client, get(REVIEWS, "/anon", &[("end-user", "x")])).await;
    assert_eq!(backend(&headers), "reviews-v1");

    // ignoreUriCase: any case matches, and the path is forwarded unchanged.
    let (_, headers, _) = send(&mut client, get(REVIEWS, "/uPPER/pATH", &[])).await;
    assert_eq!(backend(&headers), "reviews-v2");
    assert!(
        mesh.backends
            .seen("reviews-v2")
            .iter()
            .any(|s| s.path == "/uPPER/pATH")
    );

    // CORS preflight from an allowed origin: answered by the waypoint, never forwarded.
    let before = mesh.backends.count("reviews-v1", "/cors");
    let preflight = http::Request::builder()
        .method(http::Method::OPTIONS)
        .uri("/cors")
        .header("host", REVIEWS)
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&mut client, preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    let h = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(h("access-control-allow-origin"), "https://shop.example.com");
    assert_eq!(h("access-control-allow-methods"), "GET,POST");
    assert_eq!(h("access-control-allow-headers"), "x-custom");
    assert_eq!(h("access-control-max-age"), "600");
    assert_eq!(h("access-control-allow-credentials"), "true");
    assert_eq!(mesh.backends.count("reviews-v1", "/cors"), before);

    // The actual request from that origin is forwarded and its response decorated.
    let (status, headers, _) = send(
        &mut client,
        get(REVIEWS, "/cors", &[("origin", "https://shop.example.com")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://shop.example.com"
    );
    assert_eq!(
        headers.get("access-control-expose-headers").unwrap(),
        "x-backend"
    );
    assert_eq!(mesh.backends.count("reviews-v1", "/cors"), before + 1);

    // Another origin: forwarded (Envoy's default for unmatched preflights), no CORS headers.
    let (_, headers, _) = send(
        &mut client,
        get(REVIEWS, "/cors", &[("origin", "https://evil.example.com")]),
    )
    .await;
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(mesh.backends.count("reviews-v1", "/cors"), before + 2);
}
