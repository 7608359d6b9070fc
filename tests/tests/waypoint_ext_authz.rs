//! CUSTOM AuthorizationPolicies with external authorizers (ext_authz), end to end: client →
//! ztunnel → waypoint → (authorizer) → ztunnel → backends over real sockets, with a fake HTTP
//! authorizer and a fake gRPC (`envoy.service.auth.v3.Authorization`) authorizer on loopback.
//!
//! What is checked is what crossed the sockets: what the authorizer was asked (and how many
//! times), the status, headers and body the client got, what the backends received (nothing
//! for a denied request), the waypoint's counters and access log.

#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_e2e::waypoint::{Net, REVIEWS_BACKENDS, WaypointMesh, get, send, series};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::envoy::config::core::v3 as core;
use proto::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use proto::envoy::r#type::v3::HttpStatus;
use proto::google::rpc::Status as RpcStatus;
use tokio::net::TcpListener;
use tonic::codegen::Service as _;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const LISTENER: &str = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
const TO_REVIEWS: &str = "[{kind: Service, group: \"\", name: reviews}]";
const DENIED_BODY: &str = "denied by ext_authz: no x-ext-authz: allow";

/// An AuthorizationPolicy in `default` targeting `reviews`.
fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: {TO_REVIEWS}\n{spec}"
    )
}

/// A CUSTOM policy sending `/secure*` requests to `provider`.
fn custom(provider: &str) -> String {
    policy(
        "ext",
        &format!(
            "  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{paths: [\"/secure*\"]}}}}]}}]\n"
        ),
    )
}

async fn prometheus(mesh: &WaypointMesh) -> String {
    ambient_e2e::inpod::http_get(mesh.waypoint.metrics, "/stats/prometheus").await
}

fn counter(metrics: &str, name: &str) -> f64 {
    series(
        metrics,
        name,
        &[&format!("http_conn_manager_prefix=\"{LISTENER}\"")],
    )
    .unwrap_or(0.0)
}

/// What an authorizer received.
#[derive(Debug, Clone)]
struct Asked {
    method: String,
    path: String,
    headers: HeaderMap,
}

/// The fake HTTP authorizer: allows requests carrying `x-ext-authz: allow` (200 with
/// `x-authz-user`, `x-ext-authz-check-result`, `x-authz-session`), denies the others (403
/// with a body and `x-ext-authz-check-result: denied`); under `/slow` it never answers.
async fn http_authorizer(addr: SocketAddr) -> Arc<Mutex<Vec<Asked>>> {
    let asked: Arc<Mutex<Vec<Asked>>> = Arc::default();
    let listener = TcpListener::bind(addr).await.unwrap();
    let record = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let record = Arc::clone(&record);
                    async move {
                        let (parts, _) = request.into_parts();
                        record.lock().unwrap().push(Asked {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts.headers.clone(),
                        });
                        if parts.uri.path().starts_with("/slow") {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let allowed = parts
                            .headers
                            .get("x-ext-authz")
                            .is_some_and(|v| v == "allow");
                        let response = if allowed {
                            Response::builder()
                                .header("x-ext-authz-check-result", "allowed")
                                .header("x-authz-user", "alice")
                                .header("x-authz-session", "s1")
                                .header("x-not-forwarded", "n")
                                .body(Full::new(Bytes::new()))
                        } else {
                            Response::builder()
                                .status(403)
                                .header("x-ext-authz-check-result", "denied")
                                .header("x-internal", "hidden")
                                .body(Full::new(Bytes::from(DENIED_BODY)))
                        };
                        Ok::<_, Infallible>(response.unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    asked
}

/// Requests the CUSTOM policy sends to the HTTP provider `ext-http` and what comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authorizer_allows_denies_and_fails() {
    let net = Net(65);
    let mesh = WaypointMesh::start(net).await;
    let authorizer = SocketAddr::new(net.workload(150).into(), 8000);
    let asked = http_authorizer(authorizer).await;
    let down = SocketAddr::new(net.workload(152).into(), 8000);
    mesh.apply_mesh_config(&format!(
        "defaultConfig: {{discoveryAddress: istiod.istio-system.svc:15012}}\nextensionProviders:\n\
         - name: ext-http\n  envoyExtAuthzHttp:\n    service: \"{ip}\"\n    port: {port}\n    pathPrefix: /check\n    includeRequestHeadersInCheck: [x-ext-authz]\n    headersToUpstreamOnAllow: [x-authz-user, \"x-ext-authz-*\"]\n    headersToDownstreamOnAllow: [x-authz-session]\n    headersToDownstreamOnDeny: [x-ext-authz-check-result]\n\
         - name: down\n  envoyExtAuthzHttp: {{service: \"{dip}\", port: {dport}}}\n\
         - name: down-open\n  envoyExtAuthzHttp: {{service: \"{dip}\", port: {dport}, failOpen: true}}\n\
         - name: slow\n  envoyExtAuthzHttp: {{service: \"{ip}\", port: {port}, pathPrefix: /slow, timeout: 200ms, statusOnError: \"504\"}}\n",
        ip = authorizer.ip(),
        port = authorizer.port(),
        dip = down.ip(),
        dport = down.port(),
    ));
    mesh.apply(&format!(
        "{}---\n{}",
        custom("ext-http"),
        policy(
            "deny-admin",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/secure/admin\"]}}]}]\n"
        )
    ));
    let mut reviews = mesh.http1(net.reviews()).await;

    // Not matched by the CUSTOM rules: never sent to the authorizer.
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/open", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(asked.lock().unwrap().is_empty());

    // Allowed: the backend gets the authorizer's headersToUpstreamOnAllow, the client the
    // headersToDownstreamOnAllow.
    let (status, headers, _) = send(
        &mut reviews,
        get(
            REVIEWS,
            "/secure/a?q=1",
            &[("x-ext-authz", "allow"), ("x-other", "z")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-authz-session"], "s1");
    let seen = mesh.backends.seen_by(REVIEWS_BACKENDS, "/secure/a");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-authz-user"], "alice");
    assert_eq!(seen[0].headers["x-ext-authz-check-result"], "allowed");
    assert!(seen[0].headers.get("x-not-forwarded").is_none());
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        let check = &asked[0];
        assert_eq!(check.method, "GET");
        assert_eq!(check.path, "/check/secure/a?q=1");
        assert_eq!(check.headers["x-ext-authz"], "allow");
        assert_eq!(check.headers["host"], REVIEWS);
        assert_eq!(check.headers["content-length"], "0");
        assert!(check.headers.get("x-other").is_none());
    }

    // Denied: the authorizer's status, body and headersToDownstreamOnDeny; nothing upstream.
    let post = Request::post("/secure/b")
        .header("host", REVIEWS)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&mut reviews, post).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, DENIED_BODY);
    assert_eq!(headers["x-ext-authz-check-result"], "denied");
    assert!(headers.get("x-internal").is_none());
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/b"), 0);
    {
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].method, "POST");
        assert_eq!(asked[1].path, "/check/secure/b");
    }
    let log = mesh.access_log();
    let entry = log
        .iter()
        .find(|l| l["path"] == "/secure/b")
        .expect("access log entry");
    assert_eq!(entry["response_code"], 403);
    assert_eq!(entry["response_flags"], "UAEX");
    assert_eq!(entry["response_code_details"], "ext_authz_denied");

    // Allowed by the authorizer, then denied by the DENY policy: CUSTOM runs first.
    let (status, _, body) = send(
        &mut reviews,
        get(REVIEWS, "/secure/admin", &[("x-ext-authz", "allow")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(asked.lock().unwrap().len(), 3);

    let metrics = prometheus(&mesh).await;
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_ok"), 2.0);
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_denied"), 1.0);
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_error"), 0.0);
    assert_eq!(counter(&metrics, "envoy_http_rbac_denied"), 1.0);

    // The authorizer is down: statusOnError (403 by default), nothing upstream.
    mesh.apply(&custom("down"));
    let (status, _, body) = send(&mut reviews, get(REVIEWS, "/secure/c", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/c"), 0);
    let log = mesh.access_log();
    let entry = log.iter().find(|l| l["path"] == "/secure/c").unwrap();
    assert_eq!(entry["response_code_details"], "ext_authz_error");
    assert_eq!(entry["response_flags"], "UAEX");

    // Down, with failOpen: the request goes through.
    mesh.apply(&custom("down-open"));
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/secure/d", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let reached = mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/d");
    assert_eq!(reached, 1);

    // No answer within the timeout: statusOnError 504.
    mesh.apply(&custom("slow"));
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(20),
        send(
            &mut reviews,
            get(REVIEWS, "/secure/e", &[("x-ext-authz", "allow")]),
        ),
    )
    .await
    .expect("an answer before the authorizer's");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(asked.lock().unwrap().last().unwrap().path, "/slow/secure/e");

    let metrics = prometheus(&mesh).await;
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_error"), 3.0);
    assert_eq!(
        counter(&metrics, "envoy_http_ext_authz_failure_mode_allowed"),
        1.0
    );

    // A provider the mesh config does not define: denied as before, by RBAC.
    let before = asked.lock().unwrap().len();
    mesh.apply(&custom("nope"));
    let (status, _, body) = send(
        &mut reviews,
        get(REVIEWS, "/secure/f", &[("x-ext-authz", "allow")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(asked.lock().unwrap().len(), before);
    let dump = mesh.config_dump().await;
    let warnings = dump["warnings"].to_string();
    assert!(
        warnings.contains("\\\"nope\\\" is not available"),
        "{warnings}"
    );
}

/// The fake gRPC authorizer: records every `CheckRequest`; allows requests whose headers
/// carry `x-ext-authz: allow` (adding `x-authz-user`, removing `x-remove-me`, adding
/// `x-trace` to the response), denies `/secure/teapot` with a 418 `denied_response`, and
/// the rest with PERMISSION_DENIED alone.
#[derive(Clone, Default)]
struct GrpcAuthorizer {
    asked: Arc<Mutex<Vec<CheckRequest>>>,
}

fn header(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for GrpcAuthorizer {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        self.asked.lock().unwrap().push(request.clone());
        let http = request
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let status = |code| {
            Some(RpcStatus {
                code,
                ..Default::default()
            })
        };
        let response = if http
            .headers
            .get("x-ext-authz")
            .is_some_and(|v| v == "allow")
        {
            CheckResponse {
                status: status(0),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-authz-user", "bob")],
                    headers_to_remove: vec!["x-remove-me".into()],
                    response_headers_to_add: vec![header("x-trace", "t1")],
                    ..Default::default()
                })),
                dynamic_metadata: None,
            }
        } else if http.path.starts_with("/secure/teapot") {
            CheckResponse {
                status: status(7),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 418 }),
                        headers: vec![header("x-reason", "teapot")],
                        body: "short and stout".into(),
                    },
                )),
                dynamic_metadata: None,
            }
        } else {
            CheckResponse {
                status: status(7),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

/// Serves `authorizer` (tonic's generated server) over HTTP/2 on `addr`.
async fn serve_grpc(addr: SocketAddr, authorizer: GrpcAuthorizer) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let server = AuthorizationServer::new(authorizer);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let mut server = server.clone();
                    async move { server.call(request).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Requests the CUSTOM policy sends to the gRPC provider `ext-grpc`: the `CheckRequest`
/// describes the client and the request, `ok_response` edits reach the backend and the
/// client, denials become 403 or the `denied_response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_authorizer_allows_denies_and_fails() {
    let net = Net(66);
    let mesh = WaypointMesh::start(net).await;
    let addr = SocketAddr::new(net.workload(150).into(), 9000);
    let authorizer = GrpcAuthorizer::default();
    serve_grpc(addr, authorizer.clone()).await;
    let down = SocketAddr::new(net.workload(152).into(), 9000);
    mesh.apply_mesh_config(&format!(
        "extensionProviders:\n\
         - name: ext-grpc\n  envoyExtAuthzGrpc:\n    service: \"{}\"\n    port: {}\n    timeout: 10s\n    includeRequestBodyInCheck: {{maxRequestBytes: 64}}\n\
         - name: grpc-down\n  envoyExtAuthzGrpc: {{service: \"{}\", port: {}, statusOnError: \"503\"}}\n",
        addr.ip(),
        addr.port(),
        down.ip(),
        down.port(),
    ));
    mesh.apply(&custom("ext-grpc"));
    let mut reviews = mesh.http1(net.reviews()).await;

    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/open", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(authorizer.asked.lock().unwrap().is_empty());

    // Allowed, with a body the authorizer sees and the backend still gets.
    let request = Request::post("/secure/a?x=1")
        .header("host", REVIEWS)
        .header("x-ext-authz", "allow")
        .header("x-remove-me", "secret")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, _) = send(&mut reviews, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-trace"], "t1");
    let seen = mesh.backends.seen_by(REVIEWS_BACKENDS, "/secure/a");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-authz-user"], "bob");
    assert!(seen[0].headers.get("x-remove-me").is_none());
    assert_eq!(seen[0].body, "hello");
    {
        let asked = authorizer.asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        let attributes = asked[0].attributes.clone().unwrap();
        let source = attributes.source.unwrap();
        assert_eq!(
            source.principal,
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        let destination = attributes.destination.unwrap();
        assert_eq!(
            destination.principal,
            "spiffe://cluster.local/ns/default/sa/waypoint"
        );
        let Some(core::address::Address::SocketAddress(dst)) = destination.address.unwrap().address
        else {
            panic!("no destination address");
        };
        assert_eq!(dst.address, net.reviews().ip().to_string());
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/secure/a?x=1");
        assert_eq!(http.host, REVIEWS);
        assert_eq!(http.protocol, "HTTP/1.1");
        assert_eq!(http.body, "hello");
        assert_eq!(http.size, 5);
        assert_eq!(http.headers["x-ext-authz"], "allow");
        assert_eq!(http.headers[":path"], "/secure/a?x=1");
        assert!(!http.id.is_empty());
    }

    // A body over maxRequestBytes (64): 413, without asking the authorizer.
    let request = Request::post("/secure/big")
        .header("host", REVIEWS)
        .header("x-ext-authz", "allow")
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    let (status, _, _) = send(&mut reviews, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(authorizer.asked.lock().unwrap().len(), 1);
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/big"), 0);

    // Denied without a denied_response: 403; with one: its status, headers and body.
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/secure/b", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, body) = send(&mut reviews, get(REVIEWS, "/secure/teapot", &[])).await;
    assert_eq!(status.as_u16(), 418);
    assert_eq!(headers["x-reason"], "teapot");
    assert_eq!(body, "short and stout");
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/b"), 0);
    assert_eq!(
        mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/teapot"),
        0
    );
    assert_eq!(authorizer.asked.lock().unwrap().len(), 3);

    // The authorizer is down: statusOnError.
    mesh.apply(&custom("grpc-down"));
    let (status, _, _) = send(
        &mut reviews,
        get(REVIEWS, "/secure/c", &[("x-ext-authz", "allow")]),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/secure/c"), 0);

    let metrics = prometheus(&mesh).await;
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_ok"), 1.0);
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_denied"), 2.0);
    assert_eq!(counter(&metrics, "envoy_http_ext_authz_error"), 1.0);
}

/// Two CUSTOM policies on `reviews` naming two HTTP providers of one fake authorizer,
/// `authz-a` (`/a-check`, forwards `x-ext-authz`) and `authz-b` (`/b-check`, forwards
/// nothing, so it denies). Written `b-second` first: the order asked is the policies' names'.
fn two_providers(mesh: &WaypointMesh, authorizer: SocketAddr) {
    mesh.apply_mesh_config(&format!(
        "extensionProviders:\n\
         - name: authz-a\n  envoyExtAuthzHttp: {{service: \"{ip}\", port: {port}, pathPrefix: /a-check, includeRequestHeadersInCheck: [x-ext-authz]}}\n\
         - name: authz-b\n  envoyExtAuthzHttp: {{service: \"{ip}\", port: {port}, pathPrefix: /b-check}}\n",
        ip = authorizer.ip(),
        port = authorizer.port(),
    ));
    mesh.apply(&format!(
        "{}---\n{}",
        policy(
            "b-second",
            "  action: CUSTOM\n  provider: {name: authz-b}\n  rules: [{to: [{operation: {paths: [\"/both*\", \"/b-only*\"]}}]}]\n"
        ),
        policy(
            "a-first",
            "  action: CUSTOM\n  provider: {name: authz-a}\n  rules: [{to: [{operation: {paths: [\"/both*\", \"/a-only*\"]}}]}]\n"
        ),
    ));
}

fn asked_paths(asked: &Mutex<Vec<Asked>>) -> Vec<String> {
    asked
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.path.clone())
        .collect()
}

/// By default (as istiod) a service whose CUSTOM policies name two providers denies every
/// request, asks no authorizer and reports the conflict in config_dump's warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_custom_providers_deny_the_service_by_default() {
    let net = Net(73);
    let mesh = WaypointMesh::start(net).await;
    let authorizer = SocketAddr::new(net.workload(150).into(), 8000);
    let asked = http_authorizer(authorizer).await;
    two_providers(&mesh, authorizer);
    let mut reviews = mesh.http1(net.reviews()).await;
    for path in ["/open", "/a-only", "/both"] {
        let (status, _, body) = send(
            &mut reviews,
            get(REVIEWS, path, &[("x-ext-authz", "allow")]),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body, "RBAC: access denied", "{path}");
    }
    assert!(asked_paths(&asked).is_empty());
    assert!(mesh.backends.seen_by(REVIEWS_BACKENDS, "/").is_empty());
    let dump = mesh.config_dump().await;
    let warnings = dump["warnings"].to_string();
    assert!(
        warnings.contains(
            "only 1 provider can be used per workload, found multiple providers: [authz-a authz-b]: every request to reviews.default.svc.cluster.local is denied"
        ),
        "{warnings}"
    );
}

/// With `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`, each provider is asked for the
/// requests its own policies match, in policy name order; any denial wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_custom_providers_are_each_asked_when_enabled() {
    let net = Net(74);
    let mesh = WaypointMesh::start_with(
        net,
        ambient_e2e::waypoint::MeshOptions {
            multiple_custom_authz_providers: true,
            ..Default::default()
        },
    )
    .await;
    let authorizer = SocketAddr::new(net.workload(150).into(), 8000);
    let asked = http_authorizer(authorizer).await;
    two_providers(&mesh, authorizer);
    let mut reviews = mesh.http1(net.reviews()).await;
    let allow = [("x-ext-authz", "allow")];

    // (path, status, the checks made in order)
    let cases: &[(&str, StatusCode, &[&str])] = &[
        ("/open", StatusCode::OK, &[]),
        ("/a-only", StatusCode::OK, &["/a-check/a-only"]),
        ("/b-only", StatusCode::FORBIDDEN, &["/b-check/b-only"]),
        (
            "/both",
            StatusCode::FORBIDDEN,
            &["/a-check/both", "/b-check/both"],
        ),
    ];
    for (path, expected, checks) in cases {
        asked.lock().unwrap().clear();
        let (status, _, body) = send(&mut reviews, get(REVIEWS, path, &allow)).await;
        assert_eq!(status, *expected, "{path}");
        assert_eq!(asked_paths(&asked), *checks, "{path}");
        let reached = mesh.backends.seen_by(REVIEWS_BACKENDS, path).len();
        if *expected == StatusCode::OK {
            assert_eq!(reached, 1, "{path}");
        } else {
            assert_eq!(body, DENIED_BODY, "{path}");
            assert_eq!(reached, 0, "{path}");
        }
    }
    // The first provider's denial ends it: the second is not asked.
    asked.lock().unwrap().clear();
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/both", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(asked_paths(&asked), ["/a-check/both"]);
    let dump = mesh.config_dump().await;
    assert!(!dump["warnings"].to_string().contains("only 1 provider"));
}
