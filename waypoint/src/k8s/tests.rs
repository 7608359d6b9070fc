//! Table tests of the controller's pure decision and of its configuration file.

use std::collections::BTreeMap;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::reconcile::{Desired, UNSUPPORTED_LISTENER, reconcile};
use super::reconcile::{cluster_role_binding, cluster_subjects, mesh_config_map};
use super::settings::{ConfigScope, ControllerConfig, SettingsError};

const CONFIG: &str = "
gatewayClassName: ambient-waypoint
controllerName: ambient.local/waypoint-controller
watchNamespaces: []
waypoint:
  image: registry.example/ambient/waypoint:1.0
  imagePullPolicy: IfNotPresent
  imagePullSecrets: [pull]
  replicas: 2
  terminationGracePeriodSeconds: 30
  env:
    RUST_LOG: info
    TRUST_DOMAIN: example.org
    CLUSTER_DOMAIN: cluster.local
    XDS_ADDRESS: istiod.mesh.svc:15012
    WAYPOINT_NAME: cannot-override
  resources:
    requests: {cpu: 100m, memory: 128Mi}
  podLabels: {team: a}
  podAnnotations:
    prometheus.io/path: /stats/prometheus
    prometheus.io/port: \"15020\"
    prometheus.io/scrape: \"true\"
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: []
  affinity: {}
  topologySpreadConstraints: []
";

fn config() -> ControllerConfig {
    ControllerConfig::from_yaml(CONFIG).unwrap()
}

fn class(name: &str, controller: &str, waypoint_for: Option<&str>) -> GatewayClass {
    let mut labels = json!({});
    if let Some(w) = waypoint_for {
        labels["istio.io/waypoint-for"] = json!(w);
    }
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name, "labels": labels},
        "spec": {"controllerName": controller},
    }))
    .unwrap()
}

fn gateway(patch: Value) -> Gateway {
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "ns1", "uid": "uid-1", "generation": 3},
        "spec": {
            "gatewayClassName": "ambient-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    });
    merge(&mut gw, patch);
    serde_json::from_value(gw).unwrap()
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

fn service(cluster_ip: Option<&str>) -> Service {
    let mut spec = json!({"ports": [{"port": 15008}]});
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    serde_json::from_value(json!({"metadata": {"name": "waypoint"}, "spec": spec})).unwrap()
}

fn time(s: &str) -> Time {
    serde_json::from_value(json!(s)).unwrap()
}

const NOW: &str = "2026-12-03T17:00:00Z";

fn run(gw: &Gateway, cls: &GatewayClass, svc: Option<&Service>) -> Option<Desired> {
    reconcile(gw, cls, &config(), svc, time(NOW))
}

/// `value` at a JSON pointer of the serialized `object`.
fn at(object: &impl serde::Serialize, pointer: &str) -> Value {
    serde_json::to_value(object)
        .unwrap()
        .pointer(pointer)
        .cloned()
        .unwrap_or(Value::Null)
}

fn cond(status: &Value, pointer: &str, type_: &str) -> (String, String, String) {
    let list = status
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let c = list
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
        c["message"].as_str().unwrap_or_default().into(),
    )
}

#[test]
fn which_gateways_are_ours() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let istio = class("istio-waypoint", "istio.io/mesh-controller", None);
    let cases: [(&str, Gateway, &GatewayClass, bool); 3] = [
        ("our class", gateway(json!({})), &ours, true),
        (
            "another controller's class",
            gateway(json!({"spec": {"gatewayClassName": "istio-waypoint"}})),
            &istio,
            false,
        ),
        (
            "a class other than the Gateway's",
            gateway(json!({"spec": {"gatewayClassName": "other"}})),
            &ours,
            false,
        ),
    ];
    for (what, gw, cls, want) in cases {
        assert_eq!(run(&gw, cls, None).is_some(), want, "{what}");
    }
}

#[test]
fn objects_names_labels_and_owner() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        Some("workload"),
    );
    // (case, gateway patch, deployment/service name, service account, waypoint-for)
    let cases = [
        ("defaults", json!({}), "waypoint", "waypoint", "workload"),
        (
            "name override",
            json!({"metadata": {"annotations": {"gateway.istio.io/name-override": "wp-deploy"}}}),
            "wp-deploy",
            "waypoint",
            "workload",
        ),
        (
            "service account override",
            json!({"metadata": {"annotations": {"gateway.istio.io/service-account": "wp-sa"}}}),
            "waypoint",
            "wp-sa",
            "workload",
        ),
        (
            "the Gateway's waypoint-for wins over the class's",
            json!({"metadata": {"labels": {"istio.io/waypoint-for": "all"}}}),
            "waypoint",
            "waypoint",
            "all",
        ),
        (
            "an unknown waypoint-for falls back to the class's",
            json!({"metadata": {"labels": {"istio.io/waypoint-for": "bogus"}}}),
            "waypoint",
            "waypoint",
            "workload",
        ),
    ];
    for (what, patch, name, sa, traffic) in cases {
        let d = run(&gateway(patch), &ours, None).unwrap();
        let (sa_obj, dep, svc, rb) = (
            d.service_account.unwrap(),
            d.deployment.unwrap(),
            d.service.unwrap(),
            d.role_binding.unwrap(),
        );
        assert_eq!(at(&sa_obj, "/metadata/name"), json!(sa), "{what}");
        assert_eq!(at(&rb, "/metadata/name"), json!(sa), "{what}");
        assert_eq!(at(&dep, "/metadata/name"), json!(name), "{what}");
        assert_eq!(at(&svc, "/metadata/name"), json!(name), "{what}");
        assert_eq!(
            at(&dep, "/spec/template/spec/serviceAccountName"),
            json!(sa),
            "{what}"
        );
        for obj in [at(&sa_obj, ""), at(&dep, ""), at(&svc, ""), at(&rb, "")] {
            assert_eq!(obj["metadata"]["namespace"], "ns1", "{what}");
            let labels = &obj["metadata"]["labels"];
            assert_eq!(
                labels["gateway.networking.k8s.io/gateway-name"], "waypoint",
                "{what}"
            );
            assert_eq!(
                labels["gateway.networking.k8s.io/gateway-class-name"],
                "ambient-waypoint"
            );
            assert_eq!(
                labels["gateway.istio.io/managed"],
                "ambient.local-waypoint-controller"
            );
            assert_eq!(labels["istio.io/waypoint-for"], traffic, "{what}");
            assert_eq!(
                obj["metadata"]["ownerReferences"],
                json!([{
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "name": "waypoint",
                    "uid": "uid-1",
                    "controller": true,
                }]),
                "{what}"
            );
        }
        let env = at(&dep, "/spec/template/spec/containers/0/env");
        let var = |n: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(var("ISTIO_META_WAYPOINT_FOR")["value"], traffic, "{what}");
        assert_eq!(var("SERVICE_ACCOUNT")["value"], sa, "{what}");
        assert_eq!(var("WAYPOINT_NAME")["value"], "waypoint", "{what}");
        assert_eq!(
            at(&svc, "/spec/selector"),
            json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
        );
    }
}

#[test]
fn deployment_runs_the_waypoint_locked_down() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let dep = run(&gateway(json!({})), &ours, None)
        .unwrap()
        .deployment
        .unwrap();
    let pod = at(&dep, "/spec/template");
    let c = &pod["spec"]["containers"][0];
    // (field, expected)
    let cases: Vec<(&str, Value)> = vec![
        ("/spec/replicas", json!(2)),
        (
            "/spec/selector/matchLabels",
            json!({"gateway.networking.k8s.io/gateway-name": "waypoint"}),
        ),
    ];
    for (pointer, want) in cases {
        assert_eq!(at(&dep, pointer), want, "{pointer}");
    }
    let pod_cases: Vec<(&str, Value)> = vec![
        ("/metadata/labels/istio.io~1dataplane-mode", json!("none")),
        ("/metadata/labels/sidecar.istio.io~1inject", json!("false")),
        ("/metadata/labels/team", json!("a")),
        ("/metadata/annotations/prometheus.io~1scrape", json!("true")),
        ("/metadata/annotations/prometheus.io~1port", json!("15020")),
        (
            "/metadata/annotations/prometheus.io~1path",
            json!("/stats/prometheus"),
        ),
        ("/spec/imagePullSecrets", json!([{"name": "pull"}])),
        ("/spec/nodeSelector", json!({"kubernetes.io/os": "linux"})),
        ("/spec/terminationGracePeriodSeconds", json!(30)),
        (
            "/spec/containers/0/image",
            json!("registry.example/ambient/waypoint:1.0"),
        ),
        ("/spec/containers/0/imagePullPolicy", json!("IfNotPresent")),
        (
            "/spec/containers/0/readinessProbe/httpGet",
            json!({"path": "/healthz/ready", "port": 15021}),
        ),
        (
            "/spec/containers/0/securityContext/privileged",
            json!(false),
        ),
        (
            "/spec/containers/0/securityContext/allowPrivilegeEscalation",
            json!(false),
        ),
        (
            "/spec/containers/0/securityContext/readOnlyRootFilesystem",
            json!(true),
        ),
        (
            "/spec/containers/0/securityContext/runAsNonRoot",
            json!(true),
        ),
        (
            "/spec/containers/0/securityContext/capabilities",
            json!({"drop": ["ALL"]}),
        ),
        (
            "/spec/containers/0/resources/requests",
            json!({"cpu": "100m", "memory": "128Mi"}),
        ),
        (
            "/spec/volumes/0/projected/sources/0/serviceAccountToken",
            json!({"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}),
        ),
        (
            "/spec/volumes/1/configMap/name",
            json!("istio-ca-root-cert"),
        ),
    ];
    for (pointer, want) in pod_cases {
        assert_eq!(
            pod.pointer(pointer).cloned().unwrap_or(Value::Null),
            want,
            "{pointer}"
        );
    }
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = if e["value"].is_null() {
                e["valueFrom"].clone()
            } else {
                e["value"].clone()
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let env_cases: Vec<(&str, Value)> = vec![
        (
            "POD_NAMESPACE",
            json!({"fieldRef": {"fieldPath": "metadata.namespace"}}),
        ),
        (
            "INSTANCE_IP",
            json!({"fieldRef": {"fieldPath": "status.podIP"}}),
        ),
        ("WAYPOINT_NAME", json!("waypoint")),
        ("TRUST_DOMAIN", json!("example.org")),
        ("CLUSTER_DOMAIN", json!("cluster.local")),
        ("XDS_ADDRESS", json!("istiod.mesh.svc:15012")),
        ("CA_ADDRESS", json!("istiod.istio-system.svc:15012")),
        ("XDS_ROOT_CA", json!("/var/run/secrets/istio/root-cert.pem")),
        ("CA_ROOT_CA", json!("/var/run/secrets/istio/root-cert.pem")),
        ("AUTH_TOKEN", json!("/var/run/secrets/tokens/istio-token")),
        ("RUST_LOG", json!("info")),
    ];
    for (name, want) in env_cases {
        assert_eq!(env.get(name), Some(&want), "{name}");
    }
    let names: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names.iter().filter(|n| **n == "WAYPOINT_NAME").count(), 1);
}

/// The container's environment of `desired`'s Deployment: name → value.
fn env_values(desired: &Desired) -> BTreeMap<String, Value> {
    let dep = desired.deployment.as_ref().unwrap();
    at(dep, "/spec/template/spec/containers/0/env")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
        .collect()
}

#[test]
fn role_binding_grants_the_configuration_role_in_the_gateway_namespace() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    // (case, gateway patch, settings patch, expected binding)
    let cases = [
        (
            "defaults",
            json!({}),
            "",
            json!({
                "name": "waypoint",
                "role": "waypoint-controller-waypoint-config",
                "subjects": [{"kind": "ServiceAccount", "name": "waypoint", "namespace": "ns1"}],
            }),
        ),
        (
            "service account annotation, other namespace",
            json!({"metadata": {
                "namespace": "shop",
                "annotations": {"gateway.istio.io/service-account": "wp-sa"},
            }}),
            "",
            json!({
                "name": "wp-sa",
                "role": "waypoint-controller-waypoint-config",
                "subjects": [{"kind": "ServiceAccount", "name": "wp-sa", "namespace": "shop"}],
            }),
        ),
        (
            "another ClusterRole",
            json!({}),
            "  configClusterRole: mesh-waypoint-config\n",
            json!({
                "name": "waypoint",
                "role": "mesh-waypoint-config",
                "subjects": [{"kind": "ServiceAccount", "name": "waypoint", "namespace": "ns1"}],
            }),
        ),
    ];
    for (what, patch, extra, want) in cases {
        let settings = ControllerConfig::from_yaml(&format!("{CONFIG}{extra}")).unwrap();
        let d = reconcile(&gateway(patch), &ours, &settings, None, time(NOW)).unwrap();
        let rb = at(d.role_binding.as_ref().unwrap(), "");
        assert_eq!(rb["metadata"]["name"], want["name"], "{what}");
        assert_eq!(
            rb["metadata"]["namespace"], want["subjects"][0]["namespace"],
            "{what}"
        );
        assert_eq!(
            rb["roleRef"],
            json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": want["role"],
            }),
            "{what}"
        );
        assert_eq!(rb["subjects"], want["subjects"], "{what}");
        assert_eq!(
            rb["metadata"]["ownerReferences"][0]["uid"], "uid-1",
            "{what}"
        );
    }
    // Nothing is bound for a refused Gateway.
    let bad =
        gateway(json!({"spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}));
    assert!(run(&bad, &ours, None).unwrap().role_binding.is_none());
}

#[test]
fn config_source_environment_by_scope_and_overrides() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    // (case, settings appended to the waypoint section, source, namespaces, a RoleBinding)
    let cases = [
        ("namespace scope by default", "", "k8s://", "ns1", true),
        (
            "namespace scope",
            "  configScope: namespace\n",
            "k8s://",
            "ns1",
            true,
        ),
        (
            "cluster scope",
            "  configScope: cluster\n",
            "k8s://",
            "",
            false,
        ),
        (
            "env overrides the namespaces",
            "  configScope: namespace\n  env:\n    WAYPOINT_CONFIG_NAMESPACES: ns1,shared\n",
            "k8s://",
            "ns1,shared",
            true,
        ),
        (
            "env overrides the source",
            "  configScope: cluster\n  env:\n    WAYPOINT_CONFIG_SOURCE: xds://istiod:15010\n",
            "xds://istiod:15010",
            "",
            false,
        ),
    ];
    for (what, extra, source, namespaces, bound) in cases {
        // The test settings without their `env`, plus the case's lines.
        let base = CONFIG.split("  env:").next().unwrap();
        let settings = ControllerConfig::from_yaml(&format!("{base}{extra}")).unwrap();
        let d = reconcile(&gateway(json!({})), &ours, &settings, None, time(NOW)).unwrap();
        let env = env_values(&d);
        assert_eq!(env["WAYPOINT_CONFIG_SOURCE"], json!(source), "{what}");
        assert_eq!(
            env["WAYPOINT_CONFIG_NAMESPACES"],
            json!(namespaces),
            "{what}"
        );
        assert_eq!(d.role_binding.is_some(), bound, "{what}");
        let raw = at(
            d.deployment.as_ref().unwrap(),
            "/spec/template/spec/containers/0/env",
        );
        for name in ["WAYPOINT_CONFIG_SOURCE", "WAYPOINT_CONFIG_NAMESPACES"] {
            let count = raw
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == name)
                .count();
            assert_eq!(count, 1, "{what}: {name} once");
        }
    }
}

#[test]
fn cluster_subjects_are_the_provisioned_service_accounts() {
    let settings = config();
    let classes = vec![
        class(
            "ambient-waypoint",
            "ambient.local/waypoint-controller",
            None,
        ),
        class("istio-waypoint", "istio.io/mesh-controller", None),
    ];
    let gw = |namespace: &str, name: &str, patch: Value| {
        let mut p = json!({"metadata": {"namespace": namespace, "name": name}});
        merge(&mut p, patch);
        gateway(p)
    };
    let sa = |namespace: &str, name: &str| json!({"kind": "ServiceAccount", "name": name, "namespace": namespace});
    // (case, gateways, expected subjects)
    let cases = [
        ("none", vec![], json!([])),
        (
            "sorted by namespace then name",
            vec![
                gw("shop", "waypoint", json!({})),
                gw("bookinfo", "west", json!({})),
                gw("bookinfo", "east", json!({})),
            ],
            json!([
                sa("bookinfo", "east"),
                sa("bookinfo", "west"),
                sa("shop", "waypoint")
            ]),
        ),
        (
            "the service account annotation; a shared account once",
            vec![
                gw(
                    "a",
                    "one",
                    json!({"metadata": {"annotations": {"gateway.istio.io/service-account": "shared"}}}),
                ),
                gw(
                    "a",
                    "two",
                    json!({"metadata": {"annotations": {"gateway.istio.io/service-account": "shared"}}}),
                ),
            ],
            json!([sa("a", "shared")]),
        ),
        (
            "other classes, unknown classes, refused listeners and deletions are left out",
            vec![
                gw(
                    "a",
                    "istio",
                    json!({"spec": {"gatewayClassName": "istio-waypoint"}}),
                ),
                gw(
                    "a",
                    "nobody",
                    json!({"spec": {"gatewayClassName": "missing"}}),
                ),
                gw(
                    "a",
                    "http",
                    json!({"spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
                ),
                gw(
                    "a",
                    "going",
                    json!({"metadata": {"deletionTimestamp": "2026-12-03T16:00:00Z", "finalizers": ["x"]}}),
                ),
                gw("b", "kept", json!({})),
            ],
            json!([sa("b", "kept")]),
        ),
    ];
    for (what, gateways, want) in cases {
        let subjects = cluster_subjects(&gateways, &classes, &settings);
        assert_eq!(serde_json::to_value(&subjects).unwrap(), want, "{what}");
        let binding = cluster_role_binding(&settings, subjects);
        assert_eq!(
            at(&binding, ""),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "waypoint-controller-waypoint-config"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "waypoint-controller-waypoint-config",
                },
                "subjects": want,
            }),
            "{what}"
        );
    }
}

#[test]
fn mesh_config_copy_next_to_the_waypoint() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let istio = class("istio-waypoint", "istio.io/mesh-controller", None);
    let mesh = "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 80}\n";
    // (case, gateway patch, class, istiod's `mesh`, expected name, expected data)
    let cases = [
        (
            "copied as is",
            json!({}),
            &ours,
            Some(mesh),
            Some("waypoint-istio-mesh"),
            json!({"mesh": mesh}),
        ),
        (
            "named after the Deployment",
            json!({"metadata": {"annotations": {"gateway.istio.io/name-override": "wp"}}}),
            &ours,
            Some(mesh),
            Some("wp-istio-mesh"),
            json!({"mesh": mesh}),
        ),
        (
            "istiod's ConfigMap missing: an empty copy",
            json!({}),
            &ours,
            None,
            Some("waypoint-istio-mesh"),
            Value::Null,
        ),
        (
            "another class: nothing",
            json!({"spec": {"gatewayClassName": "istio-waypoint"}}),
            &istio,
            Some(mesh),
            None,
            Value::Null,
        ),
        (
            "refused listeners: nothing",
            json!({"spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
            &ours,
            Some(mesh),
            None,
            Value::Null,
        ),
    ];
    for (what, patch, cls, source, name, data) in cases {
        let gw = gateway(patch);
        let copy = mesh_config_map(&gw, cls, &config(), source);
        let Some(name) = name else {
            assert!(copy.is_none(), "{what}");
            continue;
        };
        let copy = at(&copy.unwrap(), "");
        assert_eq!(copy["metadata"]["name"], name, "{what}");
        assert_eq!(copy["metadata"]["namespace"], "ns1", "{what}");
        assert_eq!(copy["data"], data, "{what}");
        assert_eq!(
            copy["metadata"]["ownerReferences"][0]["uid"], "uid-1",
            "{what}"
        );
        assert_eq!(
            copy["metadata"]["labels"]["gateway.istio.io/managed"],
            "ambient.local-waypoint-controller"
        );
        // The Deployment mounts that copy where the waypoint reads its mesh config by default.
        let dep = at(
            &reconcile(&gw, cls, &config(), None, time(NOW))
                .unwrap()
                .deployment,
            "",
        );
        let pod = &dep["spec"]["template"];
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{what}: no volume of {name}"));
        let mount = pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .cloned()
            .unwrap();
        assert_eq!(mount["mountPath"], "/etc/istio/config", "{what}");
        assert_eq!(mount["readOnly"], true);
        assert_eq!(
            format!("{}/mesh", mount["mountPath"].as_str().unwrap()),
            crate::config::mesh::DEFAULT_MESH_CONFIG_PATH
        );
        // The waypoint reloads the file: no hash of it rolls the pods.
        let annotations: Vec<&String> = pod["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert!(
            annotations.iter().all(|k| k.starts_with("prometheus.io/")),
            "{what}: {annotations:?}"
        );
    }
}

#[test]
fn service_ports() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let svc = run(&gateway(json!({})), &ours, None)
        .unwrap()
        .service
        .unwrap();
    let ports: Vec<(Value, Value, Value)> = at(&svc, "/spec/ports")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].clone(),
                p["port"].clone(),
                p["appProtocol"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (json!("status-port"), json!(15021), json!("tcp")),
            (json!("mesh"), json!(15008), json!("all")),
            (json!("metrics"), json!(15020), json!("http")),
        ]
    );
    assert_eq!(at(&svc, "/spec/type"), json!("ClusterIP"));
}

#[test]
fn gateway_status_table() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let host = "waypoint.ns1.svc.cluster.local";
    let programmed = format!("Resource programmed, assigned to service(s) {host}:15008");
    let not_found =
        format!("Failed to assign to any requested addresses: hostname \"{host}\" not found");
    struct Case {
        what: &'static str,
        gateway: Value,
        service: Option<Service>,
        deployed: bool,
        programmed: (&'static str, &'static str, String),
        listener_accepted: (&'static str, &'static str, &'static str),
        addresses: Value,
    }
    let cases = [
        Case {
            what: "no Service yet",
            gateway: json!({}),
            service: None,
            deployed: true,
            programmed: ("False", "AddressNotUsable", not_found.clone()),
            listener_accepted: ("True", "Accepted", "No errors found"),
            addresses: Value::Null,
        },
        Case {
            what: "Service without ClusterIP",
            gateway: json!({}),
            service: Some(service(None)),
            deployed: true,
            programmed: ("False", "AddressNotUsable", not_found.clone()),
            listener_accepted: ("True", "Accepted", "No errors found"),
            addresses: Value::Null,
        },
        Case {
            what: "Service with ClusterIP",
            gateway: json!({}),
            service: Some(service(Some("10.0.0.7"))),
            deployed: true,
            programmed: ("True", "Programmed", programmed.clone()),
            listener_accepted: ("True", "Accepted", "No errors found"),
            addresses: json!([
                {"type": "IPAddress", "value": "10.0.0.7"},
                {"type": "Hostname", "value": host},
            ]),
        },
        Case {
            what: "HTTP listener",
            gateway: json!({"spec": {"listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
            service: Some(service(Some("10.0.0.7"))),
            deployed: false,
            programmed: ("False", "Invalid", UNSUPPORTED_LISTENER.into()),
            listener_accepted: ("False", "UnsupportedProtocol", UNSUPPORTED_LISTENER),
            addresses: Value::Null,
        },
        Case {
            what: "HBONE on another port",
            gateway: json!({"spec": {"listeners": [{"name": "mesh", "port": 15009, "protocol": "HBONE"}]}}),
            service: None,
            deployed: false,
            programmed: ("False", "Invalid", UNSUPPORTED_LISTENER.into()),
            listener_accepted: ("False", "UnsupportedProtocol", UNSUPPORTED_LISTENER),
            addresses: Value::Null,
        },
        Case {
            what: "two listeners",
            gateway: json!({"spec": {"listeners": [
                {"name": "mesh", "port": 15008, "protocol": "HBONE"},
                {"name": "extra", "port": 15009, "protocol": "HBONE"},
            ]}}),
            service: None,
            deployed: false,
            programmed: ("False", "Invalid", UNSUPPORTED_LISTENER.into()),
            listener_accepted: ("False", "UnsupportedProtocol", UNSUPPORTED_LISTENER),
            addresses: Value::Null,
        },
    ];
    for case in cases {
        let what = case.what;
        let d = run(&gateway(case.gateway), &ours, case.service.as_ref()).unwrap();
        assert_eq!(d.deployment.is_some(), case.deployed, "{what}");
        assert_eq!(d.service.is_some(), case.deployed, "{what}");
        let status = serde_json::to_value(&d.gateway_status).unwrap();
        let (s, r, m) = cond(&status, "/conditions", "Programmed");
        assert_eq!(
            (s.as_str(), r.as_str(), m),
            (
                case.programmed.0,
                case.programmed.1,
                case.programmed.2.clone()
            ),
            "{what}"
        );
        let accepted = cond(&status, "/conditions", "Accepted");
        assert_eq!(
            accepted.0,
            if case.deployed { "True" } else { "False" },
            "{what}"
        );
        assert_eq!(
            cond(&status, "/conditions", "ResolvedRefs").1,
            "ResolvedRefs",
            "{what}"
        );
        let (s, r, m) = cond(&status, "/listeners/0/conditions", "Accepted");
        assert_eq!(
            (s.as_str(), r.as_str(), m.as_str()),
            case.listener_accepted,
            "{what}"
        );
        assert_eq!(status["addresses"], case.addresses, "{what}");
        for c in status["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], 3, "{what}");
            assert_eq!(c["lastTransitionTime"], NOW, "{what}");
        }
        assert_eq!(
            status["listeners"][0]["supportedKinds"],
            json!([
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
                {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"},
            ]),
            "{what}"
        );
    }
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let ours = class(
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
        None,
    );
    let first = run(&gateway(json!({})), &ours, None)
        .unwrap()
        .gateway_status;
    let mut gw = gateway(json!({}));
    gw.status = Some(first.clone());
    let later = reconcile(&gw, &ours, &config(), None, time("2026-12-03T18:00:00Z")).unwrap();
    assert_eq!(
        later.gateway_status, first,
        "same status, same times: no status write"
    );
    let programmed = reconcile(
        &gw,
        &ours,
        &config(),
        Some(&service(Some("10.0.0.7"))),
        time("2026-12-03T18:00:00Z"),
    )
    .unwrap();
    let status = serde_json::to_value(&programmed.gateway_status).unwrap();
    let times: BTreeMap<String, Value> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["lastTransitionTime"].clone(),
            )
        })
        .collect();
    assert_eq!(times["Accepted"], NOW);
    assert_eq!(times["Programmed"], "2026-12-03T18:00:00Z");
    // Once reported, the address stays even when the Service is not observed.
    let mut gw = gateway(json!({}));
    gw.status = Some(programmed.gateway_status.clone());
    let again = reconcile(&gw, &ours, &config(), None, time("2026-12-03T19:00:00Z")).unwrap();
    assert_eq!(
        again.gateway_status.addresses,
        programmed.gateway_status.addresses
    );
}

#[test]
fn config_file_errors() {
    let cases = [
        ("waypoint: {}", "waypoint: missing field `image`"),
        (
            "waypoint: {image: x, replica: 1}",
            "waypoint: unknown field `replica`",
        ),
        (
            "waypoint: {image: x, replicas: many}",
            "waypoint.replicas: invalid type",
        ),
        (
            "controllerName: nodomain\nwaypoint: {image: x}",
            "controllerName: must be a domain-prefixed path",
        ),
        ("waypoint: {image: ' '}", "waypoint.image: is required"),
        (
            "waypoint: {image: x, terminationGracePeriodSeconds: 0}",
            "waypoint.terminationGracePeriodSeconds: must be a positive",
        ),
        (
            "waypoint: {image: x, configScope: everywhere}",
            "waypoint.configScope: unknown variant `everywhere`",
        ),
        (
            "waypoint: {image: x, configClusterRole: ''}",
            "waypoint.configClusterRole: must not be empty",
        ),
        (
            "meshConfig: {namespace: ''}\nwaypoint: {image: x}",
            "meshConfig.namespace: must not be empty",
        ),
        (
            "meshConfig: {nmae: istio}\nwaypoint: {image: x}",
            "meshConfig: unknown field `nmae`",
        ),
    ];
    for (yaml, want) in cases {
        let err = ControllerConfig::from_yaml(yaml).unwrap_err();
        assert!(matches!(
            err,
            SettingsError::Parse { .. } | SettingsError::Invalid { .. }
        ));
        assert!(err.to_string().contains(want), "{yaml}: {err}");
    }
    let minimal = ControllerConfig::from_yaml("waypoint: {image: x}").unwrap();
    assert_eq!(minimal.gateway_class_name, "ambient-waypoint");
    assert_eq!(minimal.controller_name, "ambient.local/waypoint-controller");
    assert_eq!(minimal.waypoint.replicas, 1);
    assert_eq!(minimal.cluster_domain(), "cluster.local");
    assert_eq!(minimal.waypoint.config_scope, ConfigScope::Namespace);
    assert_eq!(
        (
            minimal.mesh_config.namespace.as_str(),
            minimal.mesh_config.name.as_str()
        ),
        ("istio-system", "istio")
    );
    assert_eq!(
        minimal.waypoint.config_cluster_role,
        "waypoint-controller-waypoint-config"
    );
}
