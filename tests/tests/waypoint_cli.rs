//! `waypoint generate|apply|list|status|delete` end to end: the real `waypoint` binary, with a
//! kubeconfig pointing at the Kubernetes API server double of `ambient_e2e::kube` on loopback.
//! Each test asserts the exact stdout, stderr and exit code (istioctl's), and the exact
//! requests the API server received.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ambient_e2e::binaries::{self, Process};
use ambient_e2e::kube::resources::{GATEWAY, GATEWAY_GROUP, NAMESPACE};
use ambient_e2e::kube::{ApiServer, RecordedRequest};
use serde_json::{Value, json};

const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1";

/// What one run of the binary printed and returned.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(stdout: &str) -> Run {
        Run {
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn error(stdout: &str, message: &str) -> Run {
        Run {
            code: Some(1),
            stdout: stdout.into(),
            stderr: format!("Error: {message}\n"),
        }
    }
}

/// An API server double and a kubeconfig for it (context namespace `default`).
struct Cluster {
    api: Arc<ApiServer>,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cluster {
    async fn start() -> Cluster {
        let api = Arc::new(ApiServer::start().await);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        Cluster {
            api,
            _dir: dir,
            kubeconfig,
        }
    }

    /// Runs `waypoint <args>` with `KUBECONFIG` set to the double's kubeconfig.
    async fn run(&self, args: &[&str]) -> Run {
        waypoint(args, Some(self.kubeconfig.as_path())).await
    }
}

/// Runs the `waypoint` binary (see `ambient_e2e::binaries`) off the runtime's threads, so
/// that the double keeps serving meanwhile. The process is killed if it outlives the bound.
async fn waypoint(args: &[&str], kubeconfig: Option<&Path>) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let kubeconfig = kubeconfig.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(binaries::binary("waypoint", "waypoint"));
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        let out = Process::spawn(&mut cmd).output(Duration::from_secs(120));
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn gateway(ns: &str, name: &str, class: &str, labels: Value, conditions: Value) -> Value {
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"gatewayClassName": class,
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    });
    if conditions != Value::Null {
        gw["status"] = json!({ "conditions": conditions });
    }
    gw
}

fn programmed() -> Value {
    json!([
        condition("Accepted", "True", "Accepted", "Resource accepted"),
        condition("Programmed", "True", "Programmed", "Resource programmed"),
    ])
}

/// `METHOD path[?query]` of each request. kube-rs starts a query with `&` when the request
/// has no parameter of its own before the options (`?&fieldManager=istioctl`); that empty
/// pair is dropped here, the parameters are kept as sent.
fn lines(requests: &[RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            let query = r.query.trim_start_matches('&');
            match query.is_empty() {
                true => format!("{} {}", r.method, r.path),
                false => format!("{} {}?{query}", r.method, r.path),
            }
        })
        .collect()
}

/// The server-side apply istioctl sends for a waypoint Gateway.
fn assert_apply(request: &RecordedRequest, ns: &str, body: Value) {
    assert_eq!(request.method, "PATCH");
    assert_eq!(
        request.path,
        format!(
            "{GATEWAYS}/namespaces/{ns}/gateways/{}",
            body["metadata"]["name"].as_str().unwrap()
        )
    );
    assert_eq!(
        request.query.trim_start_matches('&'),
        "fieldManager=istioctl"
    );
    assert_eq!(
        request.query_param("fieldManager").as_deref(),
        Some("istioctl")
    );
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(request.json(), body);
    assert_eq!(request.status, 201, "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_enrolls_the_namespace_once_the_waypoint_is_programmed() {
    let cluster = Cluster::start().await;
    let api = cluster.api.clone();
    api.seed(namespace(
        "bookinfo",
        json!({"istio.io/dataplane-mode": "ambient"}),
    ));
    // The controller's part: once the Gateway exists, it reports it Programmed.
    let controller = tokio::spawn(async move {
        api.wait_for(Duration::from_secs(60), |api| {
            api.get(&GATEWAY, "bookinfo", "waypoint")
        })
        .await
        .expect("the Gateway is applied");
        api.update(&GATEWAY, "bookinfo", "waypoint", |gw| {
            gw["status"] = json!({ "conditions": programmed() });
        });
    });
    let run = cluster
        .run(&[
            "apply",
            "-n",
            "bookinfo",
            "--enroll-namespace",
            "--wait",
            "--waypoint-timeout",
            "60s",
        ])
        .await;
    controller.await.unwrap();
    assert_eq!(
        run,
        Run::ok(
            "✅ waypoint bookinfo/waypoint applied\n\
             ✅ waypoint bookinfo/waypoint is ready!\n\
             ✅ namespace bookinfo labeled with \"istio.io/use-waypoint: waypoint\"\n"
        )
    );

    let requests = cluster.api.requests();
    let gateway_path = format!("{GATEWAYS}/namespaces/bookinfo/gateways/waypoint");
    let polls = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == gateway_path)
        .count();
    assert!(polls >= 1, "--wait reads the Gateway");
    let others: Vec<RecordedRequest> = requests
        .into_iter()
        .filter(|r| !(r.method == "GET" && r.path == gateway_path))
        .collect();
    assert_eq!(
        lines(&others),
        [
            "GET /api/v1/namespaces/bookinfo".to_owned(),
            "GET /api/v1/namespaces/bookinfo".to_owned(),
            format!("PATCH {gateway_path}?fieldManager=istioctl"),
            "GET /api/v1/namespaces/bookinfo".to_owned(),
            "PUT /api/v1/namespaces/bookinfo".to_owned(),
        ]
    );
    assert_apply(
        &others[2],
        "bookinfo",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "bookinfo"},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        }),
    );
    assert_eq!(
        others[4].json()["metadata"]["labels"],
        json!({"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"})
    );
    let ns = cluster.api.get(&NAMESPACE, "", "bookinfo").unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["istio.io/use-waypoint"],
        "waypoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_warns_about_enrollment_and_keeps_an_enrolled_waypoint() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    api.seed(namespace("default", json!({})));

    // Not in ambient: a warning with the command to enroll it; the waypoint is applied anyway.
    let run = cluster.run(&["apply", "--enroll-namespace"]).await;
    assert_eq!(
        run,
        Run::ok(
            "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace default istio.io/dataplane-mode=ambient`\n\
             ✅ waypoint default/waypoint applied\n\
             ✅ namespace default labeled with \"istio.io/use-waypoint: waypoint\"\n"
        )
    );

    // The namespace now uses a waypoint: another one is not enrolled without --overwrite,
    // and nothing is written.
    api.clear_requests();
    let run = cluster
        .run(&["apply", "--enroll-namespace", "--name", "other"])
        .await;
    assert_eq!(
        run,
        Run::ok(
            "⚠️ Warning: namespace (default) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command.\n"
        )
    );
    assert_eq!(lines(&api.requests()), ["GET /api/v1/namespaces/default"]);
    assert!(api.get(&GATEWAY, "default", "other").is_none());

    // With --overwrite it is, with the labels of --for and -r.
    api.clear_requests();
    let run = cluster
        .run(&[
            "apply",
            "--enroll-namespace",
            "--name",
            "other",
            "--overwrite",
            "--for",
            "workload",
            "-r",
            "canary",
            "--gateway-class",
            "ambient-waypoint",
        ])
        .await;
    assert_eq!(
        run,
        Run::ok(
            "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace default istio.io/dataplane-mode=ambient`\n\
             ✅ waypoint default/other applied\n\
             ✅ namespace default labeled with \"istio.io/use-waypoint: other\"\n"
        )
    );
    let writes = api.writes();
    assert_eq!(writes.len(), 2, "{:?}", lines(&writes));
    assert_apply(
        &writes[0],
        "default",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "other", "namespace": "default",
                         "labels": {"istio.io/rev": "canary", "istio.io/waypoint-for": "workload"}},
            "spec": {"gatewayClassName": "ambient-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        }),
    );
    let ns = api.get(&NAMESPACE, "", "default").unwrap();
    assert_eq!(
        ns["metadata"]["labels"],
        json!({"istio.io/use-waypoint": "other"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_errors() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    api.seed(namespace("default", json!({})));

    let run = cluster.run(&["apply", "-n", "nope"]).await;
    assert_eq!(run, Run::error("", "namespace: nope not found"));

    let run = cluster.run(&["apply", "--name", "none"]).await;
    assert_eq!(
        run,
        Run::error(
            "",
            "failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value"
        )
    );
    let run = cluster.run(&["apply", "--for", "x"]).await;
    assert_eq!(
        run,
        Run::error(
            "",
            "failed to create gateway: invalid traffic type: x. Valid options are: [all none service workload]"
        )
    );
    assert!(api.writes().is_empty());

    // Not Programmed within --waypoint-timeout: the Gateway stays applied.
    let run = cluster
        .run(&["apply", "--wait", "--waypoint-timeout", "1s"])
        .await;
    assert_eq!(
        run,
        Run::error(
            "✅ waypoint default/waypoint applied\n",
            "timed out while waiting for waypoint\tdefault/waypoint"
        )
    );
    assert!(api.get(&GATEWAY, "default", "waypoint").is_some());

    // Without the Gateway API CRDs the apply is answered 404.
    api.set_group_enabled(GATEWAY_GROUP, false);
    api.clear_requests();
    let run = cluster.run(&["apply", "--name", "second"]).await;
    assert_eq!(
        run,
        Run::error(
            "",
            "missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: the server could not find the requested resource"
        )
    );
    let writes = api.writes();
    assert_eq!(
        (lines(&writes), writes[0].status),
        (
            vec![format!(
                "PATCH {GATEWAYS}/namespaces/default/gateways/second?fieldManager=istioctl"
            )],
            404
        )
    );
}

/// Gateways in `default` (two waypoints and an ingress gateway) and `bookinfo` (a waypoint of
/// this project's class).
fn seed_gateways(api: &ApiServer) {
    api.seed(gateway(
        "default",
        "waypoint",
        "istio-waypoint",
        json!({"istio.io/rev": "canary", "istio.io/waypoint-for": "all"}),
        programmed(),
    ));
    api.seed(gateway(
        "default",
        "w2",
        "istio-waypoint",
        json!({}),
        Value::Null,
    ));
    api.seed(gateway(
        "default",
        "ingress",
        "istio",
        json!({}),
        programmed(),
    ));
    api.seed(gateway(
        "bookinfo",
        "waypoint",
        "ambient-waypoint",
        json!({"istio.io/waypoint-for": "service"}),
        programmed(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_istioctl_tables() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    seed_gateways(api);

    assert_eq!(
        cluster.run(&["list"]).await,
        Run::ok(
            "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             w2           default      none             False\n\
             waypoint     canary       all              True\n"
        )
    );
    assert_eq!(
        cluster.run(&["list", "-A"]).await,
        Run::ok(
            "NAMESPACE     NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             default       w2           default      none             False\n\
             default       waypoint     canary       all              True\n"
        )
    );
    assert_eq!(
        cluster
            .run(&[
                "list",
                "--all-namespaces",
                "--gateway-class",
                "ambient-waypoint"
            ])
            .await,
        Run::ok(
            "NAMESPACE     NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             bookinfo      waypoint     default      service          True\n"
        )
    );
    assert_eq!(
        cluster.run(&["list", "-n", "empty"]).await,
        Run::ok("No waypoints found.\n")
    );
    assert_eq!(
        lines(&api.requests()),
        [
            format!("GET {GATEWAYS}/namespaces/default/gateways"),
            format!("GET {GATEWAYS}/gateways"),
            format!("GET {GATEWAYS}/gateways"),
            format!("GET {GATEWAYS}/namespaces/empty/gateways"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_each_waypoints_condition() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    seed_gateways(api);

    // One reading each: w2 has no conditions yet (empty cells), waypoint is Programmed.
    assert_eq!(
        cluster.run(&["status", "--wait=false"]).await,
        Run::ok(
            "NAME         STATUS     TYPE           REASON         MESSAGE\n\
             w2                                                    \n\
             waypoint     True       Programmed     Programmed     Resource programmed\n"
        )
    );
    assert_eq!(
        lines(&api.requests()),
        [
            format!("GET {GATEWAYS}/namespaces/default/gateways"),
            format!("GET {GATEWAYS}/namespaces/default/gateways/w2"),
            format!("GET {GATEWAYS}/namespaces/default/gateways/waypoint"),
        ]
    );
    assert_eq!(
        cluster
            .run(&["status", "-A", "--gateway-class", "ambient-waypoint"])
            .await,
        Run::ok(
            "NAMESPACE     NAME         STATUS     TYPE           REASON         MESSAGE\n\
             bookinfo      waypoint     True       Programmed     Programmed     Resource programmed\n"
        )
    );
    // Waiting (the default) for w2, which never becomes Programmed.
    assert_eq!(
        cluster.run(&["status", "--waypoint-timeout", "1s"]).await,
        Run::error(
            "",
            "failed to print waypoint status: timed out while retrieving status for waypoint\tdefault/w2"
        )
    );
    assert_eq!(
        cluster.run(&["status", "-n", "empty"]).await,
        Run::ok("No waypoints found.\n")
    );
    api.clear_requests();
    assert_eq!(
        cluster.run(&["status", "extra"]).await,
        Run::error("", "unknown subcommand \"extra\"")
    );
    assert!(api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_name_all_and_revision() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    for (name, class, labels) in [
        ("a", "istio-waypoint", json!({})),
        ("b", "istio-waypoint", json!({})),
        ("c", "istio-waypoint", json!({"istio.io/rev": "canary"})),
        ("ingress", "istio", json!({"istio.io/rev": "canary"})),
    ] {
        api.seed(gateway("default", name, class, labels, Value::Null));
    }

    // Argument errors are reported before any request.
    assert_eq!(
        cluster.run(&["delete"]).await,
        Run::error(
            "",
            "must specify a waypoint name or delete all using --all or delete specific revision using --revision"
        )
    );
    assert_eq!(
        cluster.run(&["delete", "a", "--all"]).await,
        Run::error(
            "",
            "cannot specify waypoint names when deleting all waypoints"
        )
    );
    assert!(api.requests().is_empty());

    // Names: only waypoints are deleted; the others are "not found".
    let run = cluster.run(&["delete", "a", "ingress", "missing"]).await;
    assert_eq!(
        run,
        Run::ok(
            "waypoint default/ingress not found\n\
             waypoint default/missing not found\n\
             waypoint default/a deleted\n"
        )
    );
    assert_eq!(
        lines(&api.requests()),
        [
            format!("GET {GATEWAYS}/namespaces/default/gateways"),
            format!("DELETE {GATEWAYS}/namespaces/default/gateways/a"),
        ]
    );
    assert!(api.get(&GATEWAY, "default", "ingress").is_some());

    // A revision: listed with its label selector; the ingress gateway of that revision stays.
    api.clear_requests();
    assert_eq!(
        cluster.run(&["delete", "-r", "canary"]).await,
        Run::ok("waypoint default/c deleted\n")
    );
    let requests = api.requests();
    assert_eq!(
        requests[0].query_param("labelSelector").as_deref(),
        Some("istio.io/rev=canary")
    );
    assert_eq!(
        lines(&requests)[1],
        format!("DELETE {GATEWAYS}/namespaces/default/gateways/c")
    );

    // A failed delete is reported after the others, in Go's multierror format.
    api.seed(gateway(
        "default",
        "d",
        "istio-waypoint",
        json!({}),
        Value::Null,
    ));
    let d = format!("{GATEWAYS}/namespaces/default/gateways/d");
    api.fail_next(http::Method::DELETE, &d, 500, 1);
    assert_eq!(
        cluster.run(&["delete", "--all"]).await,
        Run::error(
            "waypoint default/b deleted\n",
            &format!("1 error occurred:\n\t* injected failure of DELETE {d}\n\n")
        )
    );
    assert!(api.get(&GATEWAY, "default", "b").is_none());
    assert!(api.get(&GATEWAY, "default", "d").is_some());
    assert!(api.get(&GATEWAY, "default", "ingress").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_flag_context_and_namespace() {
    let cluster = Cluster::start().await;
    let api = &cluster.api;
    seed_gateways(api);
    // A kubeconfig whose context's namespace is bookinfo, given by flag (KUBECONFIG unset).
    let path = cluster._dir.path().join("bookinfo-kubeconfig");
    std::fs::write(&path, api.kubeconfig("bookinfo")).unwrap();
    let kubeconfig = path.to_str().unwrap();
    let table = "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
                 waypoint     default      service          True\n";
    assert_eq!(
        waypoint(
            &[
                "list",
                "--kubeconfig",
                kubeconfig,
                "--context",
                "double",
                "--gateway-class",
                "ambient-waypoint"
            ],
            None
        )
        .await,
        Run::ok(table)
    );
    // -n wins over the context's namespace.
    assert_eq!(
        waypoint(&["list", "-c", kubeconfig, "-n", "default"], None).await,
        Run::ok(
            "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n\
             w2           default      none             False\n\
             waypoint     canary       all              True\n"
        )
    );
    assert_eq!(
        lines(&api.requests()),
        [
            format!("GET {GATEWAYS}/namespaces/bookinfo/gateways"),
            format!("GET {GATEWAYS}/namespaces/default/gateways"),
        ]
    );
    // generate needs no cluster and writes no namespace unless -n is given.
    let run = waypoint(&["generate", "--for", "service"], None).await;
    assert_eq!(
        run,
        Run::ok(
            "apiVersion: gateway.networking.k8s.io/v1\n\
             kind: Gateway\n\
             metadata:\n  labels:\n    istio.io/waypoint-for: service\n  name: waypoint\n\
             spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n"
        )
    );
}
