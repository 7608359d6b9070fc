//! The waypoint controller against the Kubernetes API server double (`ambient_e2e::kube`),
//! through real sockets: the exact server-side apply requests it sends for a Gateway of its
//! class, the Gateway status it writes before and after the waypoint Service has an address,
//! Gateways it must leave alone, refused listeners, deletion, retries after API errors, and
//! the bindings that let the waypoints read their L7 configuration (a RoleBinding per waypoint
//! in namespace scope, the subjects of one ClusterRoleBinding in cluster scope).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use ambient_e2e::kube::{ApiServer, RecordedRequest, resources};
use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::k8s::{Controller, ControllerConfig, ControllerOptions};

/// Upper bound of every wait (against hangs; nothing asserts durations).
const LIMIT: Duration = Duration::from_secs(30);
const MANAGER: &str = "ambient.local/waypoint-controller";
const APPLY: &str = "application/apply-patch+yaml";

const CONFIG: &str = "
gatewayClassName: ambient-waypoint
controllerName: ambient.local/waypoint-controller
watchNamespaces: []
waypoint:
  image: localhost/ambient/waypoint:test
  replicas: 1
  terminationGracePeriodSeconds: 30
  env:
    TRUST_DOMAIN: cluster.local
    CLUSTER_DOMAIN: cluster.local
";

struct Setup {
    server: ApiServer,
    controller: Controller,
}

async fn setup() -> Setup {
    setup_with(CONFIG).await
}

async fn setup_with(config: &str) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = ApiServer::start().await;
    for (name, controller) in [
        ("ambient-waypoint", MANAGER),
        ("istio-waypoint", "istio.io/mesh-controller"),
    ] {
        server.seed(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": name},
            "spec": {"controllerName": controller},
        }));
    }
    let config = ControllerConfig::from_yaml(config).unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let controller = Controller::start(
        server.client(),
        config,
        ControllerOptions {
            readiness_addr: loopback,
            metrics_addr: loopback,
        },
    )
    .await
    .unwrap();
    if tokio::time::timeout(LIMIT, controller.ready().wait())
        .await
        .is_err()
    {
        panic!(
            "the controller did not list the Gateways: {:#?}",
            server.requests()
        );
    }
    Setup { server, controller }
}

fn gateway(name: &str, class: &str, listeners: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": class, "listeners": listeners},
    })
}

fn hbone() -> Value {
    json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
}

fn status_path(name: &str) -> String {
    resources::GATEWAY.status_path("default", name)
}

/// Waits for a request `method path` matching `also`; returns it.
async fn wait_request(
    server: &ApiServer,
    method: &str,
    path: &str,
    also: impl Fn(&RecordedRequest) -> bool,
) -> RecordedRequest {
    server
        .wait_for(LIMIT, |s| {
            s.requests()
                .into_iter()
                .find(|r| r.method == method && r.path == path && also(r))
        })
        .await
        .unwrap_or_else(|| panic!("no {method} {path}; got {:#?}", server.requests()))
}

/// The condition `type_` of the stored Gateway's status: (status, reason, message).
fn condition(gw: &Value, type_: &str) -> (String, String, String) {
    let c = gw["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

/// Plays the API server assigning Service `default/waypoint` its cluster IP `ip`; returns the
/// Gateway `default/waypoint` once the controller has marked it `Programmed=True`.
async fn assign_address(server: &ApiServer, ip: &str) -> Value {
    server.update(&resources::SERVICE, "default", "waypoint", |svc| {
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
    });
    server
        .wait_for(LIMIT, |s| {
            s.get(&resources::GATEWAY, "default", "waypoint")
                .filter(|g| condition(g, "Programmed").0 == "True")
        })
        .await
        .expect("Programmed=True")
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// The `value` of the environment variable `name` of a container (`None` when not set).
fn env_value(container: &Value, name: &str) -> Option<Value> {
    container["env"]
        .as_array()
        .expect("container env")
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].clone())
}

fn assert_apply(r: &RecordedRequest, path: &str) {
    assert_eq!((r.method.as_str(), r.path.as_str()), ("PATCH", path));
    assert_eq!(r.content_type.as_deref(), Some(APPLY), "{path}");
    assert_eq!(
        r.query_param("fieldManager").as_deref(),
        Some(MANAGER),
        "{path}"
    );
    assert_eq!(r.query_param("force").as_deref(), Some("true"), "{path}");
}

#[tokio::test]
async fn gateway_is_provisioned_then_programmed_when_its_service_has_an_address() {
    let Setup { server, controller } = setup().await;
    assert!(
        http_get(controller.readiness_address(), "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.clear_requests();
    let gw = server.seed(gateway("waypoint", "ambient-waypoint", hbone()));
    let uid = gw["metadata"]["uid"].as_str().unwrap().to_string();
    wait_request(&server, "PATCH", &status_path("waypoint"), |_| true).await;

    // The first reconcile: ServiceAccount, RoleBinding, mesh configuration, Deployment,
    // Service, then the status.
    let writes = server.writes();
    let sa_path = resources::SERVICE_ACCOUNT.object_path("default", "waypoint");
    let rb_path = resources::ROLE_BINDING.object_path("default", "waypoint");
    let mesh_path = resources::CONFIG_MAP.object_path("default", "waypoint-istio-mesh");
    let deploy_path = resources::DEPLOYMENT.object_path("default", "waypoint");
    let svc_path = resources::SERVICE.object_path("default", "waypoint");
    assert_apply(&writes[0], &sa_path);
    assert_apply(&writes[1], &rb_path);
    assert_apply(&writes[2], &mesh_path);
    assert_apply(&writes[3], &deploy_path);
    assert_apply(&writes[4], &svc_path);
    assert_apply(&writes[5], &status_path("waypoint"));
    assert!(
        writes.iter().all(|w| w.method == "PATCH"),
        "only server-side apply: {writes:#?}"
    );

    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": "waypoint",
        "uid": uid,
        "controller": true,
    }]);
    // The waypoint's ServiceAccount may read the L7 configuration of its namespace.
    assert_eq!(
        writes[1].json(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": "waypoint",
                "namespace": "default",
                "labels": {
                    "gateway.istio.io/managed": "ambient.local-waypoint-controller",
                    "gateway.networking.k8s.io/gateway-class-name": "ambient-waypoint",
                    "gateway.networking.k8s.io/gateway-name": "waypoint",
                    "istio.io/waypoint-for": "service",
                },
                "ownerReferences": owner,
            },
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "waypoint-controller-waypoint-config",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "waypoint", "namespace": "default"}],
        })
    );
    assert!(
        server
            .get(&resources::ROLE_BINDING, "default", "waypoint")
            .is_some()
    );
    for w in &writes[..5] {
        let body = w.json();
        assert_eq!(body["metadata"]["ownerReferences"], owner, "{}", w.path);
        assert_eq!(
            body["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
        assert_eq!(
            body["metadata"]["labels"]["gateway.istio.io/managed"],
            "ambient.local-waypoint-controller"
        );
    }
    let deployment = writes[3].json();
    assert_eq!(
        (
            deployment["apiVersion"].as_str(),
            deployment["kind"].as_str()
        ),
        (Some("apps/v1"), Some("Deployment"))
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "localhost/ambient/waypoint:test");
    assert_eq!(
        env_value(container, "WAYPOINT_CONFIG_SOURCE"),
        Some(json!("k8s://"))
    );
    assert_eq!(
        env_value(container, "WAYPOINT_CONFIG_NAMESPACES"),
        Some(json!("default"))
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["istio.io/dataplane-mode"],
        "none"
    );
    let service = writes[4].json();
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [15021, 15008, 15020]);
    let status = writes[5].json();
    assert_eq!(status["kind"], "Gateway");
    assert!(
        status.get("spec").is_none(),
        "a status write carries only the status"
    );

    // No ClusterIP yet: not programmed.
    let stored = server
        .get(&resources::GATEWAY, "default", "waypoint")
        .unwrap();
    let host = "waypoint.default.svc.cluster.local";
    assert_eq!(
        condition(&stored, "Programmed"),
        (
            "False".into(),
            "AddressNotUsable".into(),
            format!("Failed to assign to any requested addresses: hostname \"{host}\" not found")
        )
    );
    assert_eq!(condition(&stored, "Accepted").0, "True");
    assert!(
        server
            .get(&resources::DEPLOYMENT, "default", "waypoint")
            .is_some()
    );

    // The API server assigns the address: the Gateway becomes programmed with it.
    let programmed = assign_address(&server, "10.96.0.10").await;
    assert_eq!(
        condition(&programmed, "Programmed"),
        (
            "True".into(),
            "Programmed".into(),
            format!("Resource programmed, assigned to service(s) {host}:15008")
        )
    );
    assert_eq!(
        programmed["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.96.0.10"}, {"type": "Hostname", "value": host}])
    );
    let generation = programmed["metadata"]["generation"].clone();
    for c in programmed["status"]["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], generation);
    }
    // The applies kept the address the API server assigned.
    let svc = server
        .get(&resources::SERVICE, "default", "waypoint")
        .unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");

    let metrics = http_get(controller.metrics_address(), "/stats/prometheus").await;
    let applied = ambient_e2e::series(
        &metrics,
        "waypoint_controller_reconciles_total",
        &["result=\"applied\""],
    )
    .unwrap();
    assert!(applied >= 2.0, "{metrics}");
    controller.shutdown().await;
}

#[tokio::test]
async fn gateways_of_other_classes_are_never_written() {
    let Setup { server, controller } = setup().await;
    server.clear_requests();
    server.seed(gateway("istio", "istio-waypoint", hbone()));
    server.seed(gateway("nobody", "no-such-class", hbone()));
    // The controller looked at both classes, and decided.
    let class_path = |c: &str| format!("/apis/gateway.networking.k8s.io/v1/gatewayclasses/{c}");
    wait_request(&server, "GET", &class_path("istio-waypoint"), |r| {
        r.status == 200
    })
    .await;
    wait_request(&server, "GET", &class_path("no-such-class"), |r| {
        r.status == 404
    })
    .await;
    // A Gateway of ours afterwards is served: the controller is working.
    server.seed(gateway("ours", "ambient-waypoint", hbone()));
    wait_request(&server, "PATCH", &status_path("ours"), |_| true).await;
    let foreign: Vec<RecordedRequest> = server
        .writes()
        .into_iter()
        .filter(|w| {
            !["/ours", "/ours/status", "/ours-istio-mesh"]
                .iter()
                .any(|end| w.path.ends_with(end))
        })
        .collect();
    assert!(foreign.is_empty(), "{foreign:#?}");
    for name in ["istio", "nobody"] {
        let gw = server.get(&resources::GATEWAY, "default", name).unwrap();
        assert!(gw.get("status").is_none(), "{name} untouched");
        assert!(
            server
                .get(&resources::DEPLOYMENT, "default", name)
                .is_none()
        );
    }
    let metrics = http_get(controller.metrics_address(), "/metrics").await;
    let ignored = ambient_e2e::series(
        &metrics,
        "waypoint_controller_reconciles_total",
        &["result=\"ignored\""],
    )
    .unwrap();
    assert!(ignored >= 2.0, "{metrics}");
    controller.shutdown().await;
}

#[tokio::test]
async fn a_listener_other_than_hbone_15008_is_refused_and_nothing_deployed() {
    let Setup { server, controller } = setup().await;
    server.clear_requests();
    let listeners = json!([{"name": "http", "port": 80, "protocol": "HTTP"}]);
    server.seed(gateway("bad", "ambient-waypoint", listeners));
    let status = wait_request(&server, "PATCH", &status_path("bad"), |_| true).await;
    assert_apply(&status, &status_path("bad"));
    let body = status.json();
    let listener = &body["status"]["listeners"][0];
    assert_eq!(listener["name"], "http");
    let accepted = listener["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .unwrap();
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "UnsupportedProtocol");
    assert_eq!(
        accepted["message"],
        "Expected a single listener on port 15008 with protocol \"HBONE\""
    );
    let stored = server.get(&resources::GATEWAY, "default", "bad").unwrap();
    assert_eq!(condition(&stored, "Programmed").0, "False");
    assert_eq!(condition(&stored, "Accepted").0, "False");
    let writes = server.writes();
    assert_eq!(writes.len(), 1, "only the status: {writes:#?}");
    assert!(
        server
            .get(&resources::DEPLOYMENT, "default", "bad")
            .is_none()
    );
    controller.shutdown().await;
}

#[tokio::test]
async fn a_deleted_gateway_is_not_recreated() {
    let Setup { server, controller } = setup().await;
    server.seed(gateway("gone", "ambient-waypoint", hbone()));
    wait_request(&server, "PATCH", &status_path("gone"), |_| true).await;
    assert!(
        server
            .get(&resources::DEPLOYMENT, "default", "gone")
            .is_some()
    );
    // Deleted through the API; the double's garbage collector removes the owned objects.
    let api: kube::Api<gateway_api::gateways::Gateway> =
        kube::Api::namespaced(server.client(), "default");
    api.delete("gone", &Default::default()).await.unwrap();
    let deleted_at = server.requests().len();
    // A later Gateway is served; nothing of the deleted one comes back (a reconcile already
    // in flight may still apply an object, which its missing owner's garbage collection
    // removes), and its status is never written again.
    server.seed(gateway("next", "ambient-waypoint", hbone()));
    wait_request(&server, "PATCH", &status_path("next"), |_| true).await;
    let status_writes: Vec<RecordedRequest> = server.requests()[deleted_at..]
        .iter()
        .filter(|w| w.method == "PATCH" && w.path == status_path("gone"))
        .cloned()
        .collect();
    assert!(status_writes.is_empty(), "{status_writes:#?}");
    for rt in [
        resources::DEPLOYMENT,
        resources::SERVICE,
        resources::SERVICE_ACCOUNT,
        resources::ROLE_BINDING,
        resources::GATEWAY,
    ] {
        assert!(server.get(&rt, "default", "gone").is_none());
    }
    assert!(
        server
            .get(&resources::CONFIG_MAP, "default", "gone-istio-mesh")
            .is_none()
    );
    controller.shutdown().await;
}

#[tokio::test]
async fn an_api_error_on_apply_is_retried_until_applied() {
    let Setup { server, controller } = setup().await;
    let deploy_path = resources::DEPLOYMENT.object_path("default", "retry");
    server.fail_next(Method::PATCH, &deploy_path, 500, 2);
    server.clear_requests();
    server.seed(gateway("retry", "ambient-waypoint", hbone()));
    wait_request(&server, "PATCH", &status_path("retry"), |_| true).await;
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == deploy_path)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses[..3], [500, 500, 201], "{statuses:?}");
    let deployment = server
        .get(&resources::DEPLOYMENT, "default", "retry")
        .unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "localhost/ambient/waypoint:test"
    );
    // The Service is applied only after the Deployment succeeded (one reconcile's order).
    let first_service = server
        .requests()
        .iter()
        .position(|r| r.path == resources::SERVICE.object_path("default", "retry"))
        .unwrap();
    let first_success = server
        .requests()
        .iter()
        .position(|r| r.path == deploy_path && r.status == 201)
        .unwrap();
    assert!(first_success < first_service);
    let metrics = http_get(controller.metrics_address(), "/metrics").await;
    let errors = ambient_e2e::series(
        &metrics,
        "waypoint_controller_reconciles_total",
        &["result=\"error\""],
    )
    .unwrap();
    assert_eq!(errors, 2.0, "{metrics}");
    controller.shutdown().await;
}

fn mesh_source(mesh: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh, "meshNetworks": "networks: {}"},
    })
}

#[tokio::test]
async fn istiod_mesh_config_is_copied_next_to_each_waypoint_and_follows_changes() {
    const FIRST: &str = "extensionProviders:\n- name: ext-authz\n  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000}\n";
    const SECOND: &str = "extensionProviders:\n- name: ext-authz\n  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 9000}\n";
    let Setup { server, controller } = setup().await;
    server.seed(mesh_source(FIRST));
    let gw = server.seed(gateway("waypoint", "ambient-waypoint", hbone()));
    let uid = gw["metadata"]["uid"].as_str().unwrap().to_string();
    let copy_path = resources::CONFIG_MAP.object_path("default", "waypoint-istio-mesh");
    let apply = wait_request(&server, "PATCH", &copy_path, |r| {
        r.json()["data"]["mesh"] == FIRST
    })
    .await;
    assert_apply(&apply, &copy_path);
    // Only the `mesh` key, owned by the Gateway, labelled like the other objects.
    assert_eq!(
        apply.json(),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "waypoint-istio-mesh",
                "namespace": "default",
                "labels": {
                    "gateway.istio.io/managed": "ambient.local-waypoint-controller",
                    "gateway.networking.k8s.io/gateway-class-name": "ambient-waypoint",
                    "gateway.networking.k8s.io/gateway-name": "waypoint",
                    "istio.io/waypoint-for": "service",
                },
                "ownerReferences": [{
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "name": "waypoint",
                    "uid": uid,
                    "controller": true,
                }],
            },
            "data": {"mesh": FIRST},
        })
    );
    wait_request(&server, "PATCH", &status_path("waypoint"), |_| true).await;
    let deployment = server
        .get(&resources::DEPLOYMENT, "default", "waypoint")
        .unwrap();
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "waypoint-istio-mesh"),
        "{volumes}"
    );

    // istiod's mesh changes: the copy follows, the Deployment does not change (the waypoint
    // reloads the file; its pods are not rolled).
    let version = deployment["metadata"]["resourceVersion"].clone();
    server
        .update(&resources::CONFIG_MAP, "istio-system", "istio", |cm| {
            cm["data"]["mesh"] = json!(SECOND)
        })
        .unwrap();
    let copy = server
        .wait_for(LIMIT, |s| {
            s.get(&resources::CONFIG_MAP, "default", "waypoint-istio-mesh")
                .filter(|c| c["data"]["mesh"] == SECOND)
        })
        .await
        .unwrap_or_else(|| panic!("the copy never followed: {:#?}", server.writes()));
    assert_eq!(copy["data"].as_object().unwrap().len(), 1, "{copy}");
    let deployment = server
        .get(&resources::DEPLOYMENT, "default", "waypoint")
        .unwrap();
    assert_eq!(deployment["metadata"]["resourceVersion"], version);

    // istiod's ConfigMap is read by name only: the watch carries a metadata.name selector.
    let source_reads: Vec<RecordedRequest> = server
        .requests()
        .into_iter()
        .filter(|r| {
            r.path
                .starts_with("/api/v1/namespaces/istio-system/configmaps")
        })
        .collect();
    assert!(source_reads.iter().any(RecordedRequest::is_watch));
    for r in &source_reads {
        let by_name = r.path.ends_with("/configmaps/istio")
            || r.query_param("fieldSelector").as_deref() == Some("metadata.name=istio");
        assert!(by_name, "{} {}?{}", r.method, r.path, r.query);
    }
    controller.shutdown().await;
}

/// The configuration ClusterRoleBinding's path.
fn config_binding_path() -> String {
    resources::CLUSTER_ROLE_BINDING.object_path("", "waypoint-controller-waypoint-config")
}

/// Waits for an apply of the configuration ClusterRoleBinding whose subjects are `subjects`.
async fn wait_subjects(server: &ApiServer, subjects: &Value) -> RecordedRequest {
    let path = config_binding_path();
    let apply = wait_request(server, "PATCH", &path, |r| {
        r.status < 300 && r.json()["subjects"] == *subjects
    })
    .await;
    assert_apply(&apply, &path);
    apply
}

#[tokio::test]
async fn cluster_scope_keeps_the_config_binding_subjects_to_the_waypoints() {
    let config = format!("{CONFIG}  configScope: cluster\n");
    let Setup { server, controller } = setup_with(&config).await;
    // As the chart creates it: no subjects.
    server.seed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "waypoint-controller-waypoint-config"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "waypoint-controller-waypoint-config",
        },
    }));
    server.seed(gateway("east", "ambient-waypoint", hbone()));
    let mut west = gateway("west", "ambient-waypoint", hbone());
    west["metadata"]["namespace"] = json!("shop");
    west["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": "west-sa"});
    server.seed(west);
    server.seed(gateway("istio", "istio-waypoint", hbone()));
    server.seed(gateway(
        "bad",
        "ambient-waypoint",
        json!([{"name": "http", "port": 80, "protocol": "HTTP"}]),
    ));
    let sa = |namespace: &str, name: &str| json!({"kind": "ServiceAccount", "name": name, "namespace": namespace});

    // Both waypoints' ServiceAccounts, sorted; not the other class's, not the refused one's.
    let both = json!([sa("default", "east"), sa("shop", "west-sa")]);
    let apply = wait_subjects(&server, &both).await;
    assert_eq!(
        apply.json(),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "waypoint-controller-waypoint-config"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "waypoint-controller-waypoint-config",
            },
            "subjects": both,
        })
    );
    let stored = server
        .get(
            &resources::CLUSTER_ROLE_BINDING,
            "",
            "waypoint-controller-waypoint-config",
        )
        .unwrap();
    assert_eq!(stored["subjects"], both);
    // Cluster scope: no RoleBinding, and the waypoints read every namespace.
    wait_request(&server, "PATCH", &status_path("east"), |_| true).await;
    assert!(
        server
            .writes()
            .iter()
            .all(|w| !w.path.contains("/rolebindings/")),
        "{:#?}",
        server.writes()
    );
    let deployment = server
        .get(&resources::DEPLOYMENT, "default", "east")
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "WAYPOINT_CONFIG_SOURCE"),
        Some(json!("k8s://"))
    );
    assert_eq!(
        env_value(container, "WAYPOINT_CONFIG_NAMESPACES"),
        Some(json!(""))
    );

    // A deleted Gateway's ServiceAccount leaves the binding.
    let api: kube::Api<gateway_api::gateways::Gateway> =
        kube::Api::namespaced(server.client(), "default");
    api.delete("east", &Default::default()).await.unwrap();
    wait_subjects(&server, &json!([sa("shop", "west-sa")])).await;
    let stored = server
        .get(
            &resources::CLUSTER_ROLE_BINDING,
            "",
            "waypoint-controller-waypoint-config",
        )
        .unwrap();
    assert_eq!(stored["subjects"], json!([sa("shop", "west-sa")]));
    controller.shutdown().await;
}

/// A loopback address with a port free at the time of the call (for a spawned binary, whose
/// bound port cannot be read back).
fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `/healthz/ready` answered 200, tried until the server is up (bounded by [`LIMIT`]).
async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/healthz/ready")
                .await
                .starts_with("HTTP/1.1 200")
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `waypoint controller --config <file>` process, talking to the double through
/// KUBECONFIG: it provisions a Gateway of its class, reports it Programmed once the Service
/// has an address, answers readiness, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_binary_provisions_a_gateway_and_stops_on_sigterm() {
    use ambient_e2e::binaries::{self, Process};
    use std::process::Stdio;

    let server = ApiServer::start().await;
    server.seed(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "ambient-waypoint"},
        "spec": {"controllerName": MANAGER},
    }));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let readiness = free_loopback_addr();
    let metrics = free_loopback_addr();
    let mut command = std::process::Command::new(binaries::binary("waypoint", "waypoint"));
    command
        .arg("controller")
        .arg("--config")
        .arg(&config)
        .args(["--readiness-addr", &readiness.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Process::spawn(&mut command);

    // Ready once the Gateways are listed.
    wait_ready(readiness).await;
    let listed = server
        .requests()
        .into_iter()
        .any(|r| r.method == "GET" && r.path == resources::GATEWAY.collection_path(None));
    assert!(listed, "ready before listing: {:#?}", server.requests());

    server.seed(gateway("waypoint", "ambient-waypoint", hbone()));
    let owned = server
        .wait_for(LIMIT, |s| {
            let sa = s.get(&resources::SERVICE_ACCOUNT, "default", "waypoint")?;
            let deployment = s.get(&resources::DEPLOYMENT, "default", "waypoint")?;
            let service = s.get(&resources::SERVICE, "default", "waypoint")?;
            Some((sa, deployment, service))
        })
        .await;
    let (_, deployment, service) = owned.unwrap_or_else(|| {
        panic!("nothing provisioned: {:#?}", server.writes());
    });
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "localhost/ambient/waypoint:test"
    );
    assert_eq!(
        service["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );

    // The API server assigns the Service its address: the Gateway becomes Programmed.
    let programmed = assign_address(&server, "10.96.0.11").await;
    assert_eq!(
        condition(&programmed, "Programmed"),
        (
            "True".into(),
            "Programmed".into(),
            "Resource programmed, assigned to service(s) waypoint.default.svc.cluster.local:15008"
                .into()
        )
    );
    assert!(
        http_get(readiness, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // SIGTERM: a clean exit, 0.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(process.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = process.wait_timeout(LIMIT);
        (status, process)
    })
    .await
    .unwrap();
    let (status, process) = status;
    let status = status.expect("the controller exits after SIGTERM");
    let output = process.output(Duration::from_secs(1));
    assert_eq!(
        status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
