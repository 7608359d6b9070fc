//! The waypoint's Kubernetes configuration source end to end: objects seeded in the API server
//! double (`ambient_e2e::kube`) are watched by the waypoint over real sockets and route
//! requests through the whole chain (client → ztunnel → waypoint → ztunnel → backends), read
//! from every namespace or only from the namespaces of `--config-namespaces`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use ambient_e2e::kube::{ApiServer, RecordedRequest, resources};
use ambient_e2e::waypoint::{MeshOptions, Net, REVIEWS_BACKENDS, WaypointMesh, get, send};
use http::StatusCode;
use serde_json::{Value, json};
use waypoint::config::kubernetes::{KubeSourceSettings, READ_RESOURCES};
use waypoint::run::KubeSource;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
/// Upper bound for a change to reach the waypoint (not a timing assertion).
const LIMIT: Duration = Duration::from_secs(10);

fn subsets() -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "host": "reviews",
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
                {"name": "v3", "labels": {"version": "v3"}},
            ],
        },
    })
}

/// A VirtualService for reviews with one rule: `/a…` → `subset`. Other paths match no rule.
fn prefix_a_to(subset: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{
                "name": "a",
                "match": [{"uri": {"prefix": "/a"}}],
                "route": [{"destination": {"host": "reviews", "subset": subset}}],
            }],
        },
    })
}

async fn start_mesh(net: Net, api: &ApiServer) -> WaypointMesh {
    start_mesh_in(net, api, &[]).await
}

/// The mesh with the waypoint reading `namespaces` only (`--config-namespaces`; all when
/// empty).
async fn start_mesh_in(net: Net, api: &ApiServer, namespaces: &[&str]) -> WaypointMesh {
    let options = MeshOptions {
        kubernetes: Some(KubeSource {
            client: api.client(),
            settings: KubeSourceSettings {
                namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
                rediscover: Duration::from_millis(200),
                ..KubeSourceSettings::default()
            },
        }),
        ..MeshOptions::default()
    };
    WaypointMesh::start_with(net, options).await
}

/// Status and `x-backend` of `GET host path` through the mesh.
async fn request(mesh: &WaypointMesh, host: &str, path: &str) -> (StatusCode, String) {
    let dst = if host == REVIEWS {
        mesh.net.reviews()
    } else {
        mesh.net.ratings()
    };
    let mut client = mesh.http1(dst).await;
    let (status, headers, _) = send(&mut client, get(host, path, &[])).await;
    let backend = headers
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, backend)
}

/// Sends `GET host path` until the answer is `expected`, at most for [`LIMIT`].
async fn wait_for_answer(
    mesh: &WaypointMesh,
    host: &str,
    path: &str,
    expected: (StatusCode, &str),
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, backend) = request(mesh, host, path).await;
        if (status, backend.as_str()) == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: still {status} {backend:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_from_the_api_server_routes_and_follows_updates_and_deletes() {
    let api = ApiServer::start().await;
    api.seed(subsets());
    api.seed(prefix_a_to("v2"));
    // Returns once ready: every kind listed and the first configuration applied.
    let mesh = start_mesh(Net(68), &api).await;
    assert!(mesh.waypoint.ready.is_ready());

    for _ in 0..5 {
        assert_eq!(
            request(&mesh, REVIEWS, "/a/1").await,
            (StatusCode::OK, "reviews-v2".to_owned())
        );
    }
    // No rule matches: 404 NR, nothing reaches a backend.
    assert_eq!(
        request(&mesh, REVIEWS, "/b").await,
        (StatusCode::NOT_FOUND, String::new())
    );
    let last = mesh.access_log().pop().unwrap();
    assert_eq!(last["response_code"], 404);
    assert_eq!(last["response_flags"], "NR");
    assert_eq!(mesh.backends.count("reviews-v2", "/a"), 5);
    assert_eq!(mesh.backends.count("reviews-v1", "/"), 0);

    // Updating the VirtualService in the API server changes the routing.
    api.update(&resources::VIRTUAL_SERVICE, "default", "reviews", |vs| {
        vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v3")
    })
    .unwrap();
    wait_for_answer(&mesh, REVIEWS, "/a/2", (StatusCode::OK, "reviews-v3")).await;
    for _ in 0..5 {
        assert_eq!(
            request(&mesh, REVIEWS, "/a/3").await,
            (StatusCode::OK, "reviews-v3".to_owned())
        );
    }
    assert_eq!(mesh.backends.count("reviews-v2", "/a/3"), 0);
    assert_eq!(mesh.waypoint.core.l7().config.virtual_services.len(), 1);

    // Deleting it removes its rules: `/b` no longer meets a VirtualService without a
    // matching rule, and takes the service's default route.
    api.remove(&resources::VIRTUAL_SERVICE, "default", "reviews")
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, _) = request(&mesh, REVIEWS, "/b").await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(tokio::time::Instant::now() < deadline, "/b still 404");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let l7 = mesh.waypoint.core.l7();
    assert!(l7.config.virtual_services.is_empty());
    assert_eq!(l7.config.destination_rules.len(), 1);
    assert!(l7.errors.is_empty(), "{:?}", l7.errors);
    let reached = mesh.backends.count_by(REVIEWS_BACKENDS, "/b");
    assert!(reached >= 1);

    // The waypoint only reads: it never wrote to the API server.
    assert!(
        api.writes().is_empty(),
        "the waypoint wrote to the API server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_object_is_reported_and_a_missing_group_holds_nothing() {
    let api = ApiServer::start().await;
    // Gateway API CRDs "not installed": HTTPRoute and GRPCRoute are not served.
    api.set_group_enabled(resources::GATEWAY_GROUP, false);
    api.seed(subsets());
    api.seed(prefix_a_to("v2"));
    api.seed(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {
            "hosts": ["ratings"],
            "http": [{"timeout": "3 seconds", "route": [{"destination": {"host": "ratings"}}]}],
        },
    }));
    api.seed(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "ratings", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "ratings", "port": 9080}],
            "rules": [{
                "filters": [{
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-from", "value": "httproute"}]},
                }],
                "backendRefs": [{"name": "ratings", "port": 9080}],
            }],
        },
    }));
    // Ready although two kinds are missing.
    let mesh = start_mesh(Net(69), &api).await;

    // The valid VirtualService applies; the malformed one is reported by kind and name.
    assert_eq!(
        request(&mesh, REVIEWS, "/a").await,
        (StatusCode::OK, "reviews-v2".to_owned())
    );
    let l7 = mesh.waypoint.core.l7();
    let errors: Vec<String> = l7.errors.iter().map(ToString::to_string).collect();
    assert_eq!(l7.errors.len(), 1, "{errors:?}");
    let error = &l7.errors[0];
    assert_eq!(
        error.file.display().to_string(),
        "VirtualService default/broken"
    );
    assert_eq!(error.field.as_deref(), Some("spec.http[0].timeout"));
    assert_eq!(error.object.as_ref().unwrap().name, "broken");
    assert!(
        errors[0].starts_with(
            "VirtualService default/broken: VirtualService default/broken: spec.http[0].timeout: "
        ),
        "{errors:?}"
    );
    assert_eq!(l7.config.virtual_services.len(), 1);
    assert!(l7.config.http_routes.is_empty());

    // Ratings takes its default route; the HTTPRoute is not served yet.
    let (status, _) = request(&mesh, RATINGS, "/r/1").await;
    assert_eq!(status, StatusCode::OK);
    let seen = mesh.backends.seen("ratings-v1");
    let seen_v2 = mesh.backends.seen("ratings-v2");
    assert!(
        seen.iter()
            .chain(&seen_v2)
            .all(|s| s.headers.get("x-from").is_none()),
        "no HTTPRoute applies yet"
    );

    // Installing the CRDs: the kind is found again and its object applies.
    api.set_group_enabled(resources::GATEWAY_GROUP, true);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while mesh.waypoint.core.l7().config.http_routes.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HTTPRoute never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.backends.clear();
    let (status, _) = request(&mesh, RATINGS, "/r/2").await;
    assert_eq!(status, StatusCode::OK);
    let seen: Vec<_> = ["ratings-v1", "ratings-v2"]
        .iter()
        .flat_map(|b| mesh.backends.seen(b))
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get("x-from").unwrap(), "httproute");
    // The rest of the configuration is unchanged.
    assert_eq!(
        request(&mesh, REVIEWS, "/a").await,
        (StatusCode::OK, "reviews-v2".to_owned())
    );
    assert_eq!(mesh.waypoint.core.l7().errors.len(), 1);
}

const REVIEWS_FQDN: &str = "reviews.default.svc.cluster.local";
const RATINGS_FQDN: &str = "ratings.default.svc.cluster.local";

/// A DestinationRule in `namespace` giving `host` (a full name, so that it means the same
/// service from any namespace) the subsets `versions`.
fn subsets_in(namespace: &str, host: &str, versions: &[&str]) -> Value {
    let subsets: Vec<Value> = versions
        .iter()
        .map(|v| json!({"name": v, "labels": {"version": v}}))
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host.split('.').next().unwrap(), "namespace": namespace},
        "spec": {"host": host, "subsets": subsets},
    })
}

/// A VirtualService `name` in `namespace` for `host` (a full name): each `(prefix, subset)`
/// rule routes to that subset of `host`; other paths match no rule.
fn routes_in(namespace: &str, name: &str, host: &str, rules: &[(&str, &str)]) -> Value {
    let http: Vec<Value> = rules
        .iter()
        .map(|(prefix, subset)| {
            json!({
                "match": [{"uri": {"prefix": prefix}}],
                "route": [{"destination": {"host": host, "subset": subset}}],
            })
        })
        .collect();
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": [host], "http": http},
    })
}

/// The list and watch requests of the configuration kinds the API double received.
fn config_reads(api: &ApiServer) -> Vec<RecordedRequest> {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .filter(|r| {
            READ_RESOURCES
                .iter()
                .any(|(_, plural)| r.path.ends_with(&format!("/{plural}")))
        })
        .collect()
}

/// Every kind was listed and watched in each of `namespaces`, and nothing else was read:
/// no cluster-wide collection, no other namespace.
fn assert_reads_only(api: &ApiServer, namespaces: &[&str]) {
    let reads = config_reads(api);
    for r in &reads {
        assert!(
            namespaces
                .iter()
                .any(|ns| r.path.contains(&format!("/namespaces/{ns}/"))),
            "read outside {namespaces:?}: {} {}?{}",
            r.method,
            r.path,
            r.query
        );
    }
    for (group, plural) in READ_RESOURCES {
        for ns in namespaces {
            let collection = format!("/namespaces/{ns}/{plural}");
            let of_kind: Vec<&RecordedRequest> = reads
                .iter()
                .filter(|r| r.path.starts_with(&format!("/apis/{group}/")))
                .filter(|r| r.path.ends_with(&collection))
                .collect();
            assert!(
                of_kind.iter().any(|r| !r.is_watch()),
                "{plural} never listed in {ns}: {reads:#?}"
            );
            assert!(
                of_kind.iter().any(|r| r.is_watch()),
                "{plural} never watched in {ns}: {reads:#?}"
            );
        }
    }
}

/// Sends `GET host path` `n` times; the backends each reached, in order.
async fn backends_of(mesh: &WaypointMesh, host: &str, path: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (status, backend) = request(mesh, host, path).await;
        assert_eq!(status, StatusCode::OK, "{host}{path}");
        out.push(backend);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_namespaces_limit_the_objects_read_to_those_namespaces() {
    let api = ApiServer::start().await;
    // Namespace `default` (the services' own) is read; `shop` is not.
    api.seed(subsets_in("default", REVIEWS_FQDN, &["v1", "v2", "v3"]));
    api.seed(routes_in(
        "default",
        "reviews",
        REVIEWS_FQDN,
        &[("/a", "v2")],
    ));
    api.seed(routes_in(
        "shop",
        "reviews",
        REVIEWS_FQDN,
        &[("/a", "v3"), ("/b", "v1")],
    ));
    api.seed(subsets_in("shop", RATINGS_FQDN, &["v1", "v2"]));
    let mesh = start_mesh_in(Net(75), &api, &["default"]).await;
    assert!(mesh.waypoint.ready.is_ready());

    // `default`'s rule sends every `/a` request to v2; `shop`'s would have sent them to v3.
    assert_eq!(
        backends_of(&mesh, REVIEWS, "/a/1", 5).await,
        vec!["reviews-v2"; 5]
    );
    assert_eq!(mesh.backends.count("reviews-v2", "/a/1"), 5);
    assert_eq!(mesh.backends.count("reviews-v3", "/"), 0);
    // `shop`'s `/b` rule does not exist for the waypoint: no rule matches, 404 NR, nothing
    // reaches a backend.
    assert_eq!(
        request(&mesh, REVIEWS, "/b").await,
        (StatusCode::NOT_FOUND, String::new())
    );
    assert_eq!(mesh.backends.count_by(REVIEWS_BACKENDS, "/b"), 0);
    // Only `default`'s objects were loaded: `shop`'s VirtualService and DestinationRule never
    // reached the waypoint.
    let l7 = mesh.waypoint.core.l7();
    let loaded: Vec<(String, String)> = l7
        .config
        .virtual_services
        .iter()
        .map(|o| (o.namespace().to_owned(), o.name().to_owned()))
        .chain(
            l7.config
                .destination_rules
                .iter()
                .map(|o| (o.namespace().to_owned(), o.name().to_owned())),
        )
        .collect();
    assert_eq!(
        loaded,
        [
            ("default".to_owned(), "reviews".to_owned()),
            ("default".to_owned(), "reviews".to_owned())
        ]
    );
    assert!(l7.errors.is_empty(), "{:?}", l7.errors);

    // Every kind read in `default` only: never cluster-wide, never `shop`.
    assert_reads_only(&api, &["default"]);
    assert!(
        api.writes().is_empty(),
        "the waypoint wrote: {:#?}",
        api.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_namespaces_read_each_listed_namespace() {
    let api = ApiServer::start().await;
    api.seed(subsets_in("default", REVIEWS_FQDN, &["v1", "v2", "v3"]));
    api.seed(routes_in(
        "default",
        "reviews",
        REVIEWS_FQDN,
        &[("/a", "v2")],
    ));
    // The ratings route names a subset that only `shop`'s DestinationRule defines.
    api.seed(routes_in(
        "default",
        "ratings",
        RATINGS_FQDN,
        &[("/r", "v2")],
    ));
    api.seed(subsets_in("shop", RATINGS_FQDN, &["v1", "v2"]));
    // Not listed: never read.
    api.seed(routes_in("other", "reviews", REVIEWS_FQDN, &[("/a", "v3")]));
    let mesh = start_mesh_in(Net(76), &api, &["default", "shop"]).await;

    // Both namespaces' objects apply: `/r` reaches the v2 subset `shop` defines.
    assert_eq!(
        backends_of(&mesh, REVIEWS, "/a/1", 4).await,
        vec!["reviews-v2"; 4]
    );
    assert_eq!(
        backends_of(&mesh, RATINGS, "/r/1", 4).await,
        vec!["ratings-v2"; 4]
    );
    assert_eq!(mesh.backends.count("ratings-v1", "/"), 0);
    assert_eq!(mesh.backends.count("reviews-v3", "/"), 0);
    let l7 = mesh.waypoint.core.l7();
    assert_eq!(l7.config.virtual_services.len(), 2);
    let rules: Vec<&str> = l7
        .config
        .destination_rules
        .iter()
        .map(|o| o.namespace())
        .collect();
    assert_eq!(rules, ["default", "shop"]);
    assert!(l7.errors.is_empty(), "{:?}", l7.errors);

    assert_reads_only(&api, &["default", "shop"]);
    let other: Vec<RecordedRequest> = config_reads(&api)
        .into_iter()
        .filter(|r| r.path.contains("/namespaces/other/"))
        .collect();
    assert!(other.is_empty(), "{other:#?}");
}
