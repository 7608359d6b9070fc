//! L7 AuthorizationPolicy at the waypoint, end to end: client → ztunnel → waypoint → ztunnel →
//! backends over real sockets. Each test runs its own mesh on its own `127.<net>.0.0/16`.
//!
//! What is checked is what crossed the sockets: the status and body the client got, what the
//! backends received (nothing, for a denied request), the waypoint's access log, its
//! `/stats/prometheus` and its `config_dump`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambient_e2e::waypoint::{Net, WaypointMesh, get, send, series};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const REVIEWS_LISTENER: &str = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
const DENIED: &str = "RBAC: access denied";

/// An AuthorizationPolicy in `default` with `targets` (a YAML flow list) and `spec` lines.
fn policy(name: &str, targets: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: {targets}\n{spec}"
    )
}

const TO_REVIEWS: &str = "[{kind: Service, group: \"\", name: reviews}]";
const TO_WAYPOINT: &str = "[{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]";

/// Sends raw HTTP/1.1 `head` (request line and headers, without the blank line) with
/// `connection: close` through the mesh to `dst`; returns the status and the body.
async fn raw(mesh: &WaypointMesh, dst: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = mesh.connect(dst).await;
    stream
        .write_all(format!("{head}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The path a backend received, from its reply body `<backend> <path> <body length>`.
fn seen_path(body: &str) -> &str {
    body.split(' ').nth(1).unwrap_or_default()
}

async fn prometheus(mesh: &WaypointMesh) -> String {
    ambient_e2e::inpod::http_get(mesh.waypoint.metrics, "/stats/prometheus").await
}

fn denied_count(metrics: &str) -> Option<f64> {
    series(
        metrics,
        "envoy_http_rbac_denied",
        &[&format!("http_conn_manager_prefix=\"{REVIEWS_LISTENER}\"")],
    )
}

/// ALLOW by principal, namespace, method and path; DENY precedence; path normalisation before
/// authorization and routing; lower-case methods; the denied counter and the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_normalisation_counter_and_access_log() {
    let mesh = WaypointMesh::start(Net(39)).await;
    let reviews = mesh.net.reviews();

    // ALLOW sleep to GET /public* on reviews only.
    mesh.apply(&policy(
        "reviews-viewer",
        TO_REVIEWS,
        "  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n    to: [{operation: {methods: [GET], paths: [\"/public*\"]}}]\n",
    ));
    let mut client = mesh.http1(reviews).await;
    let (status, headers, _) = send(&mut client, get(REVIEWS, "/public/1", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-backend"));
    let before = mesh.backends.requests();
    let (status, headers, body) = send(&mut client, get(REVIEWS, "/private", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, DENIED);
    assert!(!headers.contains_key("x-backend"));
    let post = http::Request::post("/public/1")
        .header("host", REVIEWS)
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let (status, _, _) = send(&mut client, post).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "POST is not allowed");
    assert_eq!(
        mesh.backends.requests(),
        before,
        "denied requests never reach a backend"
    );
    // ratings is not targeted.
    let mut ratings = mesh.http1(mesh.net.ratings()).await;
    let (status, _, _) = send(&mut ratings, get(RATINGS, "/private", &[])).await;
    assert_eq!(status, StatusCode::OK);

    // A principal that is not sleep's: denied.
    mesh.apply(&policy(
        "other-only",
        TO_REVIEWS,
        "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/other]}}]}]\n",
    ));
    let (status, _, body) = send(&mut client, get(REVIEWS, "/public/1", &[])).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::FORBIDDEN, DENIED.as_bytes())
    );

    // By namespace: prod is denied, default allowed.
    mesh.apply(&policy(
        "prod-only",
        TO_REVIEWS,
        "  rules: [{from: [{source: {namespaces: [prod]}}]}]\n",
    ));
    let (status, _, _) = send(&mut client, get(REVIEWS, "/x", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    mesh.apply(&policy(
        "default-only",
        TO_REVIEWS,
        "  rules: [{from: [{source: {namespaces: [default]}}]}]\n",
    ));
    let (status, _, _) = send(&mut client, get(REVIEWS, "/x", &[])).await;
    assert_eq!(status, StatusCode::OK);

    // DENY wins over an ALLOW that matches; normalised paths cannot dodge it.
    mesh.apply(&format!(
        "{}---\n{}",
        policy(
            "allow-default",
            TO_WAYPOINT,
            "  rules: [{from: [{source: {namespaces: [default]}}]}]\n"
        ),
        policy(
            "deny-admin",
            TO_WAYPOINT,
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"
        ),
    ));
    mesh.access_log.clear();
    let before = mesh.backends.requests();
    for path in [
        "/admin",
        "/a/../admin",
        "//admin",
        "/%61dmin",
        "/./admin",
        "/x/%2E%2E/admin",
        "/admin?x=1",
    ] {
        let (status, body) = raw(
            &mesh,
            reviews,
            &format!("GET {path} HTTP/1.1\r\nhost: {REVIEWS}"),
        )
        .await;
        assert_eq!((status, body.as_str()), (403, DENIED), "GET {path}");
    }
    assert_eq!(
        mesh.backends.requests(),
        before,
        "no denied request reached a backend"
    );

    // Allowed requests reach the backend with the normalised path (the query kept).
    for (path, normalised) in [
        ("/x/../public/./y", "/public/y"),
        ("//ok//a", "/ok/a"),
        ("/%7Euser/%61", "/~user/a"),
        ("/a\\b", "/a/b"),
        ("/q/../r?p=/../s", "/r?p=/../s"),
    ] {
        let (status, body) = raw(
            &mesh,
            reviews,
            &format!("GET {path} HTTP/1.1\r\nhost: {REVIEWS}"),
        )
        .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert_eq!(seen_path(&body), normalised, "GET {path}");
    }

    // Requests that cannot be normalised, and lower-case methods: 400, nothing forwarded.
    let before = mesh.backends.requests();
    for head in [
        format!("GET /a%zz HTTP/1.1\r\nhost: {REVIEWS}"),
        format!("GET /a%00b HTTP/1.1\r\nhost: {REVIEWS}"),
        format!("get /ok HTTP/1.1\r\nhost: {REVIEWS}"),
        format!("Post /ok HTTP/1.1\r\nhost: {REVIEWS}\r\ncontent-length: 0"),
    ] {
        let (status, _) = raw(&mesh, reviews, &head).await;
        assert_eq!(status, 400, "{head}");
    }
    assert_eq!(mesh.backends.requests(), before);

    // The access log: 403 with the policy in response_code_details, the normalised path.
    let log = mesh.access_log();
    let denied: Vec<_> = log.iter().filter(|l| l["response_code"] == 403).collect();
    assert_eq!(denied.len(), 7, "{log:?}");
    for entry in &denied {
        assert_eq!(
            entry["response_code_details"],
            "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]"
        );
        assert_eq!(entry["response_flags"], "-");
        assert!(
            entry["path"].as_str().unwrap().starts_with("/admin"),
            "{entry}"
        );
        assert!(entry["upstream_host"].is_null());
    }
    let normalised = log
        .iter()
        .find(|l| l["path"] == "/public/y")
        .expect("logged");
    assert_eq!(normalised["response_code"], 200);
    let bad = log
        .iter()
        .filter(|l| l["response_code"] == 400)
        .map(|l| l["response_code_details"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(
        bad,
        [
            "path_normalization_failed",
            "path_normalization_failed",
            "invalid_method",
            "invalid_method"
        ]
    );

    // The counters, as Prometheus scrapes them: 2 + 1 + 1 denials before, 7 here.
    let metrics = prometheus(&mesh).await;
    assert_eq!(denied_count(&metrics), Some(11.0), "{metrics}");
    assert!(
        series(
            &metrics,
            "envoy_http_rbac_allowed",
            &[&format!("http_conn_manager_prefix=\"{REVIEWS_LISTENER}\"")]
        )
        .is_some_and(|n| n >= 7.0),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &[
                "response_code=\"403\"",
                "destination_service=\"reviews.default.svc.cluster.local\""
            ]
        ),
        Some(11.0)
    );
}

/// Targets (Service, Gateway, GatewayClass, selector), `when` on a header, hot reload through
/// the directory watch, invalid and CUSTOM policies failing closed, and `config_dump`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_conditions_reload_and_fail_closed() {
    let mesh = WaypointMesh::start(Net(40)).await;
    let mut reviews = mesh.http1(mesh.net.reviews()).await;
    let mut ratings = mesh.http1(mesh.net.ratings()).await;
    let deny_all = "  action: DENY\n  rules: [{}]\n";

    // (policies, reviews status, ratings status)
    let cases = [
        (policy("p", TO_REVIEWS, deny_all), 403, 200),
        (policy("p", TO_WAYPOINT, deny_all), 403, 403),
        (
            policy("p", "[{kind: Gateway, group: gateway.networking.k8s.io, name: other}]", deny_all),
            200,
            200,
        ),
        (
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: mesh, namespace: istio-system}\nspec:\n  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n  action: DENY\n  rules: [{}]\n".to_owned(),
            403,
            403,
        ),
        (
            policy("p", "[{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]", deny_all),
            200,
            200,
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sel, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  action: DENY\n  rules: [{}]\n".to_owned(),
            200,
            200,
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ns-wide, namespace: istio-system}\nspec:\n  action: DENY\n  rules: [{}]\n".to_owned(),
            200,
            200,
        ),
    ];
    for (yaml, reviews_status, ratings_status) in &cases {
        mesh.apply(yaml);
        let (status, _, _) = send(&mut reviews, get(REVIEWS, "/", &[])).await;
        assert_eq!(status.as_u16(), *reviews_status, "reviews with\n{yaml}");
        let (status, _, _) = send(&mut ratings, get(RATINGS, "/", &[])).await;
        assert_eq!(status.as_u16(), *ratings_status, "ratings with\n{yaml}");
    }

    // `when` on a request header.
    mesh.apply(&policy(
        "no-mallory",
        TO_REVIEWS,
        "  action: DENY\n  rules: [{when: [{key: \"request.headers[X-User]\", values: [mallory, \"evil*\"]}]}]\n",
    ));
    for (user, expected) in [
        (Some("mallory"), 403),
        (Some("evil-twin"), 403),
        (Some("alice"), 200),
        (None, 200),
    ] {
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        let (status, _, _) = send(&mut reviews, get(REVIEWS, "/w", &headers)).await;
        assert_eq!(status.as_u16(), expected, "x-user {user:?}");
    }

    // ipBlocks: the client's address as the tunnel carries it (the one the access log shows
    // as downstream_remote_address); remoteIpBlocks: the last x-forwarded-for entry.
    let log = mesh.access_log();
    let remote: SocketAddr = log.last().unwrap()["downstream_remote_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = remote.ip();
    for (block, expected) in [
        (format!("{client}/32"), 200),
        ("10.0.0.0/8".to_owned(), 403),
    ] {
        mesh.apply(&policy(
            "by-ip",
            TO_REVIEWS,
            &format!("  rules: [{{from: [{{source: {{ipBlocks: [\"{block}\"]}}}}]}}]\n"),
        ));
        let (status, _, _) = send(&mut reviews, get(REVIEWS, "/ip", &[])).await;
        assert_eq!(status.as_u16(), expected, "ipBlocks {block}");
    }
    mesh.apply(&policy(
        "by-remote",
        TO_REVIEWS,
        "  rules: [{from: [{source: {remoteIpBlocks: [\"203.0.113.0/24\"]}}]}]\n",
    ));
    for (xff, expected) in [
        (Some("198.51.100.1, 203.0.113.7"), 200),
        (Some("203.0.113.7, 198.51.100.1"), 403),
        (None, 403),
    ] {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
        let (status, _, _) = send(&mut reviews, get(REVIEWS, "/ip", &headers)).await;
        assert_eq!(status.as_u16(), expected, "x-forwarded-for {xff:?}");
    }

    // Hot reload through the directory watch: a new file applies to the next request.
    mesh.apply("");
    let extra = mesh.config_dir.join("zz-deny.yaml");
    std::fs::write(&extra, policy("late", TO_REVIEWS, deny_all)).unwrap();
    let status = until(
        || async {
            let mut c = mesh.http1(mesh.net.reviews()).await;
            send(&mut c, get(REVIEWS, "/", &[])).await.0
        },
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the watched file was applied"
    );
    std::fs::remove_file(&extra).unwrap();
    let status = until(
        || async {
            let mut c = mesh.http1(mesh.net.reviews()).await;
            send(&mut c, get(REVIEWS, "/", &[])).await.0
        },
        StatusCode::OK,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the removal was applied");

    // An invalid policy denies everything it targets, with the reason reported.
    mesh.access_log.clear();
    mesh.apply(&format!(
        "{}---\n{}",
        policy("allow-all", TO_WAYPOINT, "  rules: [{}]\n"),
        policy(
            "broken",
            TO_REVIEWS,
            "  action: DENY\n  rules: [{when: [{key: \"experimental.envoy.filters.x[y]\", values: [z]}]}]\n",
        ),
    ));
    let (status, _, body) = send(&mut reviews, get(REVIEWS, "/", &[])).await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::FORBIDDEN, DENIED.as_bytes())
    );
    let (status, _, _) = send(&mut ratings, get(RATINGS, "/", &[])).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "ratings is not a target of the broken policy"
    );
    let log = mesh.access_log();
    assert_eq!(
        log.iter().find(|l| l["response_code"] == 403).unwrap()["response_code_details"],
        "rbac_access_denied_matched_policy[ns[default]-policy[broken]-invalid]"
    );
    let dump = mesh.config_dump().await;
    let errors = dump["configErrors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("AuthorizationPolicy default/broken")
            && e.as_str().unwrap().contains("spec.rules[0].when[0]")),
        "{errors:?}"
    );
    let policies = dump["authorizationPolicies"].as_array().unwrap();
    let broken = policies.iter().find(|p| p["name"] == "broken").unwrap();
    assert!(
        broken["invalid"]
            .as_str()
            .unwrap()
            .contains("unsupported key"),
        "{broken}"
    );
    assert_eq!(broken["appliesTo"], serde_json::json!([REVIEWS]));
    let allow_all = policies.iter().find(|p| p["name"] == "allow-all").unwrap();
    assert_eq!(allow_all["action"], "ALLOW");
    assert_eq!(allow_all["appliesTo"].as_array().unwrap().len(), 2);

    // CUSTOM: no provider is available, so what it matches is denied, with a warning.
    mesh.apply(&policy(
        "ext",
        TO_REVIEWS,
        "  action: CUSTOM\n  provider: {name: my-ext-authz}\n  rules: [{to: [{operation: {paths: [\"/secure*\"]}}]}]\n",
    ));
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/secure/1", &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/open", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let dump = mesh.config_dump().await;
    let warnings = dump["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("\"my-ext-authz\" is not available")),
        "{warnings:?}"
    );
    assert_eq!(dump["authorizationPolicies"][0]["provider"], "my-ext-authz");
}

/// Retries `request` until it returns `want` or 10 s pass; returns the last status.
async fn until<F, Fut>(request: F, want: StatusCode) -> StatusCode
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = request().await;
        if status == want || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// AUDIT only logs; HTTP/2 and gRPC denials; TCP connections authorized on L4 attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_http2_grpc_and_tcp() {
    let mesh = WaypointMesh::start(Net(41)).await;
    let reviews = mesh.net.reviews();
    mesh.apply(&format!(
        "{}---\n{}",
        policy(
            "audit-post",
            TO_REVIEWS,
            "  action: AUDIT\n  rules: [{to: [{operation: {methods: [POST]}}]}]\n"
        ),
        policy(
            "deny-secret",
            TO_REVIEWS,
            "  action: DENY\n  rules: [{to: [{operation: {paths: [\"/secret*\"]}}]}]\n"
        ),
    ));

    // AUDIT: allowed and counted.
    let mut client = mesh.http1(reviews).await;
    for _ in 0..3 {
        let post = http::Request::post("/audited")
            .header("host", REVIEWS)
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let (status, _, _) = send(&mut client, post).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        mesh.backends.count("reviews-v1", "/audited")
            + mesh.backends.count("reviews-v2", "/audited")
            + mesh.backends.count("reviews-v3", "/audited"),
        3
    );
    let metrics = prometheus(&mesh).await;
    assert_eq!(
        series(
            &metrics,
            "envoy_http_rbac_logged",
            &[&format!("http_conn_manager_prefix=\"{REVIEWS_LISTENER}\"")]
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(denied_count(&metrics), None, "nothing denied yet");

    // HTTP/2: 403 on the stream, other streams of the connection unaffected.
    let mut h2 = mesh.http2::<Full<Bytes>>(reviews).await;
    let request = http::Request::get(format!("http://{REVIEWS}/secret/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        DENIED
    );
    let request = http::Request::get(format!("http://{REVIEWS}/public"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        h2.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );

    // gRPC: PERMISSION_DENIED (7) in a trailers-only response.
    let request = http::Request::post(format!("http://{REVIEWS}/secret.Svc/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(ambient_e2e::waypoint::grpc_frame(b"hi")))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(grpc_status.as_deref(), Some("7"));
    let metrics = prometheus(&mesh).await;
    assert_eq!(denied_count(&metrics), Some(2.0), "{metrics}");

    // TCP: a DENY on a path denies every opaque connection (its HTTP part cannot be checked).
    let accepted = mesh.backends.accepted();
    let mut tcp = mesh.connect(reviews).await;
    tcp.write_all(b"\x16\x03\x01 not http at all\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the denied connection is closed");
    assert!(buf.is_empty());
    assert_eq!(
        mesh.backends.accepted(),
        accepted,
        "no connection reached a backend"
    );

    // Without the DENY, opaque bytes are proxied (the backend answers 400 to them).
    mesh.apply(&policy(
        "audit-post",
        TO_REVIEWS,
        "  action: AUDIT\n  rules: [{}]\n",
    ));
    let mut tcp = mesh.connect(reviews).await;
    tcp.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(mesh.backends.accepted() > accepted, "proxied to a backend");
}
