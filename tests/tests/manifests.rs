//! The Helm charts of `manifests/charts/`, rendered offline by the bundled renderer
//! (`manifests/tools/render`: Go text/template and sprig, as `helm template`) and checked:
//! core objects against the Kubernetes API schemas (`kubernetes-validate --strict`), Gateway
//! API and Istio objects against the CRDs vendored in `manifests/schemas/`
//! (`manifests/tools/validate_crds.py --strict`), and the rendered ports, paths and
//! environment against the binaries' own constants and configuration parser. Broken values
//! are shown to be rejected, so the validators are known to bite.
//!
//! Needs `go` with Debian's sprig and yaml.v2 sources, and the Python packages pinned in
//! `manifests/tools/requirements.txt`; `scripts/test` installs them. A missing tool fails the
//! tests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use ztunnel::config::{CaSource, Config, ports};
use ztunnel::xds::{RootCert, TokenSource};

/// Kubernetes versions the core objects are validated against: the charts' minimum
/// (`kubeVersion` in their Chart.yaml) and the newest that kubernetes-validate ships.
const KUBE_VERSIONS: [&str; 2] = ["1.28.0", "1.37.0"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The renderer, built once per test binary; panics (with what to install) when a tool is
/// missing.
fn renderer() -> &'static Path {
    static RENDERER: OnceLock<PathBuf> = OnceLock::new();
    RENDERER.get_or_init(|| {
        check_python_packages();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let binary = out.join("helm-render");
        let build = Command::new("bash")
            .arg(repo().join("manifests/tools/render/build.sh"))
            .arg(&binary)
            .env("GOCACHE", out.join("go-build"))
            .output()
            .expect("running bash");
        assert!(
            build.status.success(),
            "building the chart renderer failed (scripts/test installs golang-go, \
             golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v2-dev):\n{}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
        binary
    })
}

/// The pinned versions of manifests/tools/requirements.txt are what python3 imports.
fn check_python_packages() {
    let reqs = std::fs::read_to_string(repo().join("manifests/tools/requirements.txt")).unwrap();
    let pins: Vec<(&str, &str)> = reqs
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once("==").expect("pinned requirement"))
        .collect();
    assert!(!pins.is_empty());
    for (name, version) in pins {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys; from importlib import metadata; print(metadata.version(sys.argv[1]))",
                name,
            ])
            .output()
            .expect("python3 is required by the manifests suite");
        let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            found,
            version,
            "python3 package {name}: {version} is required, found {:?} (scripts/test installs \
             manifests/tools/requirements.txt) {}",
            found,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One rendered or example document: where it came from, its text and its value.
#[derive(Clone, Debug)]
struct Doc {
    source: String,
    text: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Splits a multi-document YAML text into its non-empty documents.
fn docs(source: &str, text: &str) -> Vec<Doc> {
    let mut out = Vec::new();
    let mut chunk = String::new();
    for line in text.lines().chain(["---"]) {
        if line.trim_end() == "---" {
            if chunk
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                chunk.clear();
                continue;
            }
            let value: Value = serde_yaml_ng::from_str(&chunk)
                .unwrap_or_else(|e| panic!("{source}: not YAML: {e}\n{chunk}"));
            if !value.is_null() {
                let source = chunk
                    .lines()
                    .find_map(|l| l.strip_prefix("# Source: "))
                    .unwrap_or(source)
                    .to_string();
                out.push(Doc {
                    source,
                    text: std::mem::take(&mut chunk),
                    value,
                });
            }
            chunk.clear();
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    out
}

/// Runs the renderer on `chart` (a path under the repository) as release `name` in
/// istio-system: the output, or the error it printed.
fn try_render(chart: &str, args: &[&str]) -> Result<String, String> {
    let chart_dir = repo().join(chart);
    let name = chart_dir.file_name().unwrap().to_string_lossy().to_string();
    let out = Command::new(renderer())
        .arg(&name)
        .arg(&chart_dir)
        .args(["--namespace", "istio-system"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(chart: &str, args: &[&str]) -> Vec<Doc> {
    let text = try_render(chart, args).unwrap_or_else(|e| panic!("rendering {chart}: {e}"));
    docs(chart, &text)
}

/// A values file for `-f`.
fn values_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(yaml.as_bytes()).unwrap();
    f
}

fn is_custom_resource(doc: &Doc) -> bool {
    let api_version = doc.value["apiVersion"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    group == "gateway.networking.k8s.io" || group.ends_with(".istio.io")
}

/// The vendored CRD file that defines a custom resource's kind.
fn crd_file(doc: &Doc) -> PathBuf {
    let api_version = doc.value["apiVersion"].as_str().unwrap();
    let file = if api_version.contains(".istio.io/") {
        "istio-crds.yaml".to_string()
    } else {
        let kind = doc.kind().to_lowercase();
        let plural = if kind.ends_with('s') { "es" } else { "s" };
        format!("gateway-api-{kind}{plural}.yaml")
    };
    repo().join("manifests/schemas").join(file)
}

fn temp_yaml(docs: &[&Doc]) -> tempfile::NamedTempFile {
    let text: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    values_file(&text.join("---\n"))
}

/// Validates core objects with kubernetes-validate (strict, every version of
/// [`KUBE_VERSIONS`]) and custom resources with validate_crds.py (strict); the validators'
/// output when anything fails, is unknown to them or is skipped.
fn validate(docs: &[Doc]) -> Result<(), String> {
    assert!(!docs.is_empty());
    let (custom, core): (Vec<&Doc>, Vec<&Doc>) = docs.iter().partition(|d| is_custom_resource(d));
    if !core.is_empty() {
        let file = temp_yaml(&core);
        for version in KUBE_VERSIONS {
            let out = Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                .arg(file.path())
                .output()
                .unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let passed = report.matches(" passed for resource ").count();
            if !out.status.success() || report.contains("WARN") || passed != core.len() {
                return Err(format!(
                    "kubernetes-validate {version}: {passed} of {} passed\n{report}",
                    core.len()
                ));
            }
        }
    }
    if !custom.is_empty() {
        let file = temp_yaml(&custom);
        let crds: BTreeSet<PathBuf> = custom.iter().map(|d| crd_file(d)).collect();
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("manifests/tools/validate_crds.py"))
            .arg("--strict");
        for crd in &crds {
            cmd.arg("--crds").arg(crd);
        }
        let out = cmd.arg(file.path()).output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !report.contains(&format!("{} objects valid", custom.len())) {
            return Err(format!("validate_crds.py:\n{report}"));
        }
    }
    Ok(())
}

fn assert_valid(docs: &[Doc]) {
    if let Err(report) = validate(docs) {
        panic!("invalid manifests:\n{report}");
    }
}

/// The single document of `kind` named `name`.
fn one<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind}/{name} expected among {:?}",
        docs.iter()
            .map(|d| format!("{}: {}/{}", d.source, d.kind(), d.name()))
            .collect::<Vec<_>>()
    );
    &found[0].value
}

fn kinds(docs: &[Doc]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d.kind(), d.name()))
        .collect()
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect()
}

/// The only element of a list whose `key` is `value`.
fn named<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    let found: Vec<&Value> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .filter(|e| e[key] == value)
        .collect();
    assert_eq!(found.len(), 1, "{key}={value} in {list}");
    found[0]
}

/// Every Rust source under `dir`, concatenated.
fn sources(dir: &str) -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(&repo().join(dir), &mut out);
    out
}

/// The container's mount of `volume`.
fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    named(&container["volumeMounts"], "name", volume)["mountPath"]
        .as_str()
        .unwrap()
}

#[test]
fn renderer_renders_like_helm_template() {
    let fixture = "manifests/tools/render/testdata/fixture";
    let overrides = repo().join(fixture).join("override.yaml");
    let out = try_render(
        fixture,
        &[
            "-f",
            overrides.to_str().unwrap(),
            "--set",
            "grace=45,nested.over=set",
            "--set",
            "list={x,y}",
            "--set-string",
            "str=007",
            "--set",
            "leadingZero=007",
            "--set",
            r"annotations.example\.com/b=y",
            "--kube-version",
            "1.29.4",
        ],
    )
    .unwrap();
    // As `helm template fixture <dir> -n istio-system ...` prints it: documents in Helm's
    // install order (ServiceAccount, ConfigMap, Service), empty documents and NOTES.txt
    // dropped; numbers from values files are float64 ("1e+06"), from --set int64; a null in
    // a values file deletes the default; --set wins over -f.
    let expected = r#"---
# Source: fixture/templates/two.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: fixture-fixture
---
# Source: fixture/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: fixture-fixture
  namespace: istio-system
  annotations:
    example.com/a: x
    example.com/b: "y"
data:
  grace: "45"
  big: "1e+06"
  bigYaml: "1000000"
  missing: ""
  tpl: "release fixture in istio-system"
  chart: "fixture 1.2.3 4.5"
  kube: "v1.29.4 1 29"
  template: "fixture/templates/configmap.yaml"
  basePath: "fixture/templates"
  service: "Helm"
  list: "x,y"
  types: "int64 string string"
  nested: |
    keep: kept
    over: set
---
# Source: fixture/templates/two.yaml
apiVersion: v1
kind: Service
metadata:
  name: fixture-fixture
"#;
    assert_eq!(out, expected);

    // `required`, `fail` and Chart.yaml's kubeVersion stop the rendering with their message.
    let err = try_render(fixture, &["--set", "requireIt=true"]).unwrap_err();
    assert!(
        err.contains("requiredValue is needed when requireIt is set"),
        "{err}"
    );
    let err = try_render(fixture, &["--set", "failIt=true"]).unwrap_err();
    assert!(err.contains("failIt is set"), "{err}");
    let err = try_render(fixture, &["--kube-version", "1.19.0"]).unwrap_err();
    assert!(
        err.contains(
            "chart requires kubeVersion: >=1.20.0-0 which is incompatible with Kubernetes v1.19.0"
        ),
        "{err}"
    );
}

/// What a ztunnel DaemonSet rendering must amount to.
struct ZtunnelExpect {
    grace: u64,
    drain: Duration,
    istiod: &'static str,
    cluster_id: &'static str,
    network: &'static str,
    dns_capture: bool,
    image: String,
}

/// Checks the DaemonSet against the upstream chart's facts and against our binary: its
/// environment is parsed by ztunnel's own configuration parser.
fn check_ztunnel_daemonset(ds: &Value, want: &ZtunnelExpect) {
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"]["app"],
        pod["metadata"]["labels"]["app"]
    );
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(
        pod["metadata"]["labels"]["sidecar.istio.io/inject"],
        "false"
    );
    assert_eq!(spec["serviceAccountName"], ds["metadata"]["name"]);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(
        spec["tolerations"],
        json!([
            {"effect": "NoSchedule", "operator": "Exists"},
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"effect": "NoExecute", "operator": "Exists"},
        ])
    );
    assert_eq!(spec["terminationGracePeriodSeconds"], want.grace);

    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["name"], "istio-proxy");
    assert_eq!(c["image"], want.image.as_str());
    assert_eq!(str_list(&c["args"]), ["run"]);

    // Ports: the binary's constants.
    let stats = named(&c["ports"], "name", "ztunnel-stats");
    assert_eq!(stats["containerPort"], ports::METRICS);
    assert_eq!(c["ports"].as_array().unwrap().len(), 1);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], ports::READINESS);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        ztunnel::admin::readiness::READY_PATH
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        ports::METRICS.to_string()
    );
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    // Prometheus scrapes /metrics unless told otherwise.
    assert!(annotations.get("prometheus.io/path").is_none());
    assert!(ztunnel::admin::metrics::METRICS_PATHS.contains(&"/metrics"));

    let sc = &c["securityContext"];
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    let added: BTreeSet<&str> = str_list(&sc["capabilities"]["add"]).into_iter().collect();
    assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]));
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsUser"], 0);

    // Volumes.
    let volumes = &spec["volumes"];
    let sock = named(volumes, "name", "cni-ztunnel-sock-dir");
    assert_eq!(sock["hostPath"]["path"], "/var/run/ztunnel");
    assert_eq!(sock["hostPath"]["type"], "DirectoryOrCreate");
    let sock_mount = mount_path(c, "cni-ztunnel-sock-dir");
    assert_eq!(sock_mount, "/var/run/ztunnel");
    let token =
        &named(volumes, "name", "istio-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "istio-ca");
    assert_eq!(token["expirationSeconds"], 43200);
    let token_file = Path::new(mount_path(c, "istio-token")).join(token["path"].as_str().unwrap());
    let root_cm = &named(volumes, "name", "istiod-ca-cert")["configMap"];
    assert_eq!(root_cm["name"], "istio-ca-root-cert");
    let root_file = Path::new(mount_path(c, "istiod-ca-cert")).join("root-cert.pem");
    assert_eq!(
        named(volumes, "name", "tmp")["emptyDir"],
        json!({}),
        "scratch space on a read-only root filesystem"
    );
    assert_eq!(mount_path(c, "tmp"), "/tmp");

    // Environment: downward API fields, and what ztunnel makes of the rest.
    let mut env: HashMap<&str, &str> = HashMap::new();
    let downward = [
        ("POD_NAME", "metadata.name", "ztunnel-x7k2p"),
        ("POD_NAMESPACE", "metadata.namespace", "istio-system"),
        ("NODE_NAME", "spec.nodeName", "node-1"),
        ("INSTANCE_IP", "status.podIP", "10.244.1.7"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName", "ztunnel"),
    ];
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if let Some(value) = e.get("value") {
            env.insert(name, value.as_str().expect("env values are strings"));
        } else {
            let field = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
            let (_, path, sample) = downward
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("unexpected downward-API variable {name}"));
            assert_eq!(field, *path, "{name}");
            env.insert(name, *sample);
        }
    }
    for (name, _, _) in downward {
        assert!(env.contains_key(name), "{name} is set");
    }
    // Every variable is one ztunnel reads, or one upstream's chart sets that is harmless:
    // RUST_LOG (read by the log filter), RUST_BACKTRACE (the Rust runtime), SERVICE_ACCOUNT.
    let ztunnel_src = sources("ztunnel/src");
    for name in env.keys() {
        assert!(
            ztunnel_src.contains(&format!("\"{name}\""))
                || ["RUST_LOG", "RUST_BACKTRACE", "SERVICE_ACCOUNT"].contains(name),
            "{name} is not read by ztunnel"
        );
    }
    assert_eq!(
        env["TERMINATION_GRACE_PERIOD_SECONDS"],
        want.grace.to_string()
    );

    // The kubelet sets KUBERNETES_SERVICE_HOST in every pod.
    env.insert("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let config = Config::from_env(&env).expect("ztunnel accepts the chart's environment");
    let istiod: http::Uri = want.istiod.parse().unwrap();
    let xds = config.xds.as_ref().expect("xDS from istiod");
    assert_eq!(xds.control_plane.address, istiod);
    assert_eq!(
        xds.control_plane.root_cert,
        RootCert::File(root_file.clone())
    );
    assert_eq!(
        xds.control_plane.token,
        Some(TokenSource::File(token_file.clone()))
    );
    assert_eq!(xds.node.node_name, "node-1");
    assert_eq!(xds.node.instance_ip, "10.244.1.7");
    let CaSource::Istio(ca) = &config.ca else {
        panic!("Istio's CA expected, got {:?}", config.ca);
    };
    assert_eq!(ca.control_plane.address, istiod);
    assert_eq!(ca.control_plane.root_cert, RootCert::File(root_file));
    assert_eq!(ca.control_plane.token, Some(TokenSource::File(token_file)));
    assert_eq!(config.cluster_id, want.cluster_id);
    assert_eq!(ca.control_plane.cluster_id, want.cluster_id);
    assert_eq!(config.network, want.network);
    assert_eq!(config.drain_deadline, want.drain);
    assert!(config.drain_deadline < Duration::from_secs(want.grace));
    let inpod = config.inpod.as_ref().expect("in-pod mode");
    assert_eq!(inpod.dns_capture, want.dns_capture);
    assert_eq!(
        inpod.zds.socket_path.parent().unwrap(),
        Path::new(sock_mount),
        "the ZDS socket is in the hostPath shared with istio-cni"
    );
    assert_eq!(
        Path::new(ztunnel::inpod::zds::DEFAULT_SOCKET_PATH)
            .parent()
            .unwrap(),
        Path::new(sock_mount)
    );
    assert_eq!(config.listeners.metrics.port(), ports::METRICS);
    assert_eq!(config.listeners.readiness.port(), ports::READINESS);
}

#[test]
fn ztunnel_chart_with_default_values() {
    let docs = render("manifests/charts/ztunnel", &[]);
    assert_eq!(
        kinds(&docs),
        ["ServiceAccount/ztunnel", "DaemonSet/ztunnel"]
    );
    assert_valid(&docs);
    let ds = one(&docs, "DaemonSet", "ztunnel");
    assert_eq!(ds["metadata"]["namespace"], "istio-system");
    assert_eq!(
        ds["metadata"]["labels"]["app.kubernetes.io/version"],
        env!("CARGO_PKG_VERSION"),
        "the chart's appVersion is the workspace version"
    );
    // Upgrades start the new pod on a node before stopping the old one.
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    check_ztunnel_daemonset(
        ds,
        &ZtunnelExpect {
            grace: 30,
            drain: Duration::from_secs(25),
            istiod: ztunnel::xds::channel::DEFAULT_ISTIOD_ADDRESS,
            cluster_id: "Kubernetes",
            network: "",
            dns_capture: true,
            image: format!("localhost/ambient/ztunnel:{}", env!("CARGO_PKG_VERSION")),
        },
    );
}

#[test]
fn ztunnel_chart_with_overrides() {
    let values = values_file(
        r#"
revision: canary
terminationGracePeriodSeconds: 8
network: west-net
multiCluster:
  clusterName: west
networkPolicy:
  enabled: true
resourceQuotas:
  enabled: true
seLinuxOptions:
  type: spc_t
imagePullSecrets: [regcred]
podAnnotations:
  example.com/team: mesh
"#,
    );
    let docs = render(
        "manifests/charts/ztunnel",
        &[
            "-f",
            values.path().to_str().unwrap(),
            "--set",
            "env.DNS_CAPTURE=false,hub=registry.example.com/mesh,tag=dev",
            "--set-string",
            "podLabels.version=2",
        ],
    );
    assert_eq!(
        kinds(&docs),
        [
            "NetworkPolicy/ztunnel",
            "ResourceQuota/ztunnel",
            "ServiceAccount/ztunnel",
            "DaemonSet/ztunnel"
        ]
    );
    assert_valid(&docs);
    let ds = one(&docs, "DaemonSet", "ztunnel");
    let pod = &ds["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["istio.io/rev"], "canary");
    assert_eq!(pod["metadata"]["annotations"]["example.com/team"], "mesh");
    assert_eq!(pod["metadata"]["labels"]["version"], "2");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["seLinuxOptions"],
        json!({"type": "spc_t"})
    );
    check_ztunnel_daemonset(
        ds,
        &ZtunnelExpect {
            grace: 8,
            // At 10 s or below ztunnel keeps 1 s for itself.
            drain: Duration::from_secs(7),
            istiod: "https://istiod-canary.istio-system.svc:15012",
            cluster_id: "west",
            network: "west-net",
            dns_capture: false,
            image: "registry.example.com/mesh/ztunnel:dev".into(),
        },
    );

    // The NetworkPolicy admits readiness and metrics to ztunnel's own pods, nothing else.
    let np = one(&docs, "NetworkPolicy", "ztunnel");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        ds["spec"]["selector"]["matchLabels"]
    );
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert!(ingress[0].get("from").is_none());
    let admitted: BTreeSet<(u64, &str)> = ingress[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(
        admitted,
        BTreeSet::from([
            (u64::from(ports::READINESS), "TCP"),
            (u64::from(ports::METRICS), "TCP")
        ])
    );
    assert_eq!(np["spec"]["egress"], json!([{}]));

    let quota = one(&docs, "ResourceQuota", "ztunnel");
    assert_eq!(
        quota["spec"]["scopeSelector"]["matchExpressions"][0]["values"],
        json!([pod["spec"]["priorityClassName"].clone()])
    );
}

/// The controller's configuration file, from its ConfigMap.
fn controller_config(docs: &[Doc]) -> Value {
    let cm = one(docs, "ConfigMap", "waypoint-controller");
    serde_yaml_ng::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
}

/// The verbs each (API group, resource) gets from a ClusterRole; a rule restricted to some
/// objects counts as the resource `<resource>:<name>,<name>`.
fn grants(role: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = match &rule["resourceNames"] {
            Value::Null => String::new(),
            names => str_list(names).join(","),
        };
        for group in str_list(&rule["apiGroups"]) {
            for resource in str_list(&rule["resources"]) {
                let resource = if names.is_empty() {
                    resource.to_string()
                } else {
                    format!("{resource}:{names}")
                };
                out.entry((group.to_string(), resource))
                    .or_default()
                    .extend(str_list(&rule["verbs"]).into_iter().map(String::from));
            }
        }
    }
    out
}

fn grant(group: &str, resource: &str, verbs: &[&str]) -> ((String, String), BTreeSet<String>) {
    (
        (group.to_string(), resource.to_string()),
        verbs.iter().map(|v| v.to_string()).collect(),
    )
}

/// Checks what every rendering of the controller chart must hold; returns the configuration.
fn check_waypoint_controller(docs: &[Doc], class: &str, controller_name: &str) -> Value {
    let deploy = one(docs, "Deployment", "waypoint-controller");
    let pod = &deploy["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(pod["spec"]["serviceAccountName"], "waypoint-controller");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none(), "no capabilities");
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"],
        waypoint::ports::READINESS
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"],
        ztunnel::admin::readiness::READY_PATH
    );
    assert_eq!(
        named(&c["ports"], "name", "status-port")["containerPort"],
        waypoint::ports::READINESS
    );
    // `waypoint controller --config <file>`, the file from the ConfigMap.
    let args = str_list(&c["args"]);
    assert_eq!(args[..2], ["controller", "--config"]);
    let config_file = Path::new(args[2]);
    assert_eq!(args.len(), 3);
    let config_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "waypoint-controller")
        .expect("the ConfigMap is mounted");
    assert_eq!(
        config_file.parent().unwrap(),
        Path::new(mount_path(c, config_volume["name"].as_str().unwrap()))
    );
    assert_eq!(config_file.file_name().unwrap(), "config.yaml");

    let gc = one(docs, "GatewayClass", class);
    assert_eq!(gc["spec"]["controllerName"], controller_name);
    assert_eq!(gc["metadata"]["labels"]["istio.io/waypoint-for"], "service");
    let config = controller_config(docs);
    assert_eq!(config["gatewayClassName"], class);
    assert_eq!(config["controllerName"], controller_name);
    // The controller's own parser accepts the file as rendered.
    let cm = one(docs, "ConfigMap", "waypoint-controller");
    let parsed =
        waypoint::k8s::ControllerConfig::from_yaml(cm["data"]["config.yaml"].as_str().unwrap())
            .unwrap();
    assert_eq!(parsed.controller_name, controller_name);
    assert_eq!(parsed.gateway_class_name, class);
    assert_eq!(
        Some(parsed.waypoint.image.as_str()),
        config["waypoint"]["image"].as_str()
    );

    // The waypoints' settings: an environment the waypoint binary reads, a drain shorter than
    // the grace period, the metrics port scraped.
    let w = &config["waypoint"];
    let main_rs = std::fs::read_to_string(repo().join("waypoint/src/main.rs")).unwrap();
    for name in w["env"].as_object().unwrap().keys() {
        assert!(
            main_rs.contains(&format!("env = \"{name}\"")) || name == "RUST_LOG",
            "{name} is not read by the waypoint"
        );
    }
    let grace = w["terminationGracePeriodSeconds"].as_u64().unwrap();
    let drain: u64 = w["env"]["TERMINATION_DRAIN_DURATION_SECONDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        0 < drain && drain < grace,
        "drain {drain} s, grace {grace} s"
    );
    let annotations = &w["podAnnotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        waypoint::ports::METRICS.to_string()
    );
    assert!(
        ztunnel::admin::metrics::METRICS_PATHS
            .contains(&annotations["prometheus.io/path"].as_str().unwrap())
    );

    // Least privilege: exactly these rights, on the cluster for the class, in the Gateways'
    // namespaces for the rest.
    assert_eq!(
        grants(one(
            docs,
            "ClusterRole",
            "waypoint-controller-gatewayclasses"
        )),
        BTreeMap::from([
            grant(
                "gateway.networking.k8s.io",
                "gatewayclasses",
                &["get", "list", "watch"]
            ),
            grant(
                "gateway.networking.k8s.io",
                "gatewayclasses/status",
                &["patch"]
            ),
        ])
    );
    let owned = ["create", "get", "list", "watch", "patch", "delete"];
    let scope = config["waypoint"]["configScope"].as_str().unwrap();
    let binding_rights = match scope {
        // A RoleBinding per waypoint, to the configuration role only.
        "namespace" => vec![
            grant("rbac.authorization.k8s.io", "rolebindings", &owned),
            grant(
                "rbac.authorization.k8s.io",
                "clusterroles:waypoint-controller-waypoint-config",
                &["bind"],
            ),
        ],
        _ => vec![],
    };
    assert_eq!(
        grants(one(docs, "ClusterRole", "waypoint-controller")),
        BTreeMap::from_iter(binding_rights.into_iter().chain([
            grant(
                "gateway.networking.k8s.io",
                "gateways",
                &["get", "list", "watch", "patch"]
            ),
            grant(
                "gateway.networking.k8s.io",
                "gateways/status",
                &["get", "patch"]
            ),
            grant("", "serviceaccounts", &owned),
            grant("", "services", &owned),
            grant("", "configmaps", &owned),
            grant("apps", "deployments", &owned),
            grant("", "events", &["create", "patch"]),
            grant("events.k8s.io", "events", &["create", "patch"]),
        ]))
    );
    // istiod's mesh configuration: that one ConfigMap, read, in istiod's namespace.
    let mesh_role = one(docs, "Role", "waypoint-controller-mesh-config");
    let mesh_namespace = config["meshConfig"]["namespace"].as_str().unwrap();
    let mesh_name = config["meshConfig"]["name"].as_str().unwrap();
    assert_eq!(mesh_role["metadata"]["namespace"], mesh_namespace);
    assert_eq!(
        grants(mesh_role),
        BTreeMap::from([grant(
            "",
            &format!("configmaps:{mesh_name}"),
            &["get", "list", "watch"]
        )])
    );
    let mesh_binding = one(docs, "RoleBinding", "waypoint-controller-mesh-config");
    assert_eq!(mesh_binding["metadata"]["namespace"], mesh_namespace);
    assert_eq!(
        mesh_binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "waypoint-controller-mesh-config"})
    );
    // The waypoints read exactly the kinds their Kubernetes source watches.
    let read: Vec<&str> = waypoint::config::kubernetes::READ_VERBS.to_vec();
    assert_eq!(
        grants(one(
            docs,
            "ClusterRole",
            "waypoint-controller-waypoint-config"
        )),
        waypoint::config::kubernetes::READ_RESOURCES
            .iter()
            .map(|(group, resource)| grant(group, resource, &read))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(
        config["waypoint"]["configClusterRole"],
        "waypoint-controller-waypoint-config"
    );
    // In cluster scope, the one binding of the waypoints, whose subjects only the controller
    // writes.
    let config_binding = docs.iter().find(|d| {
        d.kind() == "ClusterRoleBinding" && d.name() == "waypoint-controller-waypoint-config"
    });
    if scope == "cluster" {
        let binding = &config_binding.expect("the configuration binding").value;
        assert_eq!(
            binding["roleRef"]["name"],
            "waypoint-controller-waypoint-config"
        );
        assert!(binding.get("subjects").is_none(), "{binding}");
        assert_eq!(
            grants(one(
                docs,
                "ClusterRole",
                "waypoint-controller-waypoint-config-subjects"
            )),
            BTreeMap::from([
                grant(
                    "rbac.authorization.k8s.io",
                    "clusterrolebindings:waypoint-controller-waypoint-config",
                    &["get", "patch"]
                ),
                grant(
                    "rbac.authorization.k8s.io",
                    "clusterroles:waypoint-controller-waypoint-config",
                    &["bind"]
                ),
            ])
        );
    } else {
        assert!(config_binding.is_none());
    }
    let class_binding = one(
        docs,
        "ClusterRoleBinding",
        "waypoint-controller-gatewayclasses",
    );
    assert_eq!(
        class_binding["roleRef"]["name"],
        "waypoint-controller-gatewayclasses"
    );
    for binding in docs
        .iter()
        .filter(|d| d.kind().ends_with("RoleBinding"))
        .filter(|d| d.name() != "waypoint-controller-waypoint-config")
        .map(|d| &d.value)
    {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "waypoint-controller", "namespace": "istio-system"}])
        );
    }
    config
}

#[test]
fn waypoint_controller_chart_with_default_values() {
    let docs = render("manifests/charts/waypoint-controller", &[]);
    assert_eq!(
        kinds(&docs),
        [
            "ServiceAccount/waypoint-controller",
            "ConfigMap/waypoint-controller",
            "ClusterRole/waypoint-controller-gatewayclasses",
            "ClusterRole/waypoint-controller",
            "ClusterRole/waypoint-controller-waypoint-config",
            "ClusterRoleBinding/waypoint-controller-gatewayclasses",
            "ClusterRoleBinding/waypoint-controller",
            "Role/waypoint-controller-mesh-config",
            "RoleBinding/waypoint-controller-mesh-config",
            "Deployment/waypoint-controller",
            "GatewayClass/ambient-waypoint",
        ]
    );
    assert_valid(&docs);
    // Not istiod's class, so both controllers can run in one cluster.
    let config = check_waypoint_controller(
        &docs,
        "ambient-waypoint",
        "ambient.local/waypoint-controller",
    );
    assert_eq!(
        one(&docs, "ClusterRoleBinding", "waypoint-controller")["roleRef"]["name"],
        "waypoint-controller"
    );
    assert_eq!(config["watchNamespaces"], json!([]));
    assert_eq!(config["waypoint"]["configScope"], "namespace");
    assert_eq!(
        config["meshConfig"],
        json!({"namespace": "istio-system", "name": "istio"})
    );
    let w = &config["waypoint"];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(w["image"], format!("localhost/ambient/waypoint:{version}"));
    assert_eq!(
        one(&docs, "Deployment", "waypoint-controller")["spec"]["template"]["spec"]["containers"]
            [0]["image"],
        format!("localhost/ambient/waypoint:{version}")
    );
    assert_eq!(w["terminationGracePeriodSeconds"], 30);
    assert_eq!(w["env"]["TERMINATION_DRAIN_DURATION_SECONDS"], "25");
    assert_eq!(
        w["env"],
        json!({
            "RUST_LOG": "info",
            "TRUST_DOMAIN": "cluster.local",
            "CLUSTER_DOMAIN": "cluster.local",
            "ACCESS_LOG_ENCODING": "TEXT",
            "ACCESS_LOG_FILE": "/dev/stdout",
            "TERMINATION_DRAIN_DURATION_SECONDS": "25",
        })
    );
}

#[test]
fn waypoint_controller_chart_scoped_to_namespaces() {
    let args = [
        "--set",
        "watchNamespaces={bookinfo,shop}",
        "--set",
        "gatewayClass.name=istio-waypoint,gatewayClass.controllerName=example.com/waypoints",
        "--set",
        "waypoint.terminationGracePeriodSeconds=8,waypoint.hub=registry.example.com/mesh",
        "--set",
        "waypoint.env.ACCESS_LOG_ENCODING=JSON",
    ];
    let docs = render("manifests/charts/waypoint-controller", &args);
    assert_eq!(
        kinds(&docs),
        [
            "ServiceAccount/waypoint-controller",
            "ConfigMap/waypoint-controller",
            "ClusterRole/waypoint-controller-gatewayclasses",
            "ClusterRole/waypoint-controller",
            "ClusterRole/waypoint-controller-waypoint-config",
            "ClusterRoleBinding/waypoint-controller-gatewayclasses",
            "Role/waypoint-controller-mesh-config",
            "RoleBinding/waypoint-controller",
            "RoleBinding/waypoint-controller",
            "RoleBinding/waypoint-controller-mesh-config",
            "Deployment/waypoint-controller",
            "GatewayClass/istio-waypoint",
        ]
    );
    assert_valid(&docs);
    let config = check_waypoint_controller(&docs, "istio-waypoint", "example.com/waypoints");
    // The Gateway rights only in the listed namespaces.
    let bound: Vec<(&str, &str)> = docs
        .iter()
        .filter(|d| d.kind() == "RoleBinding" && d.name() == "waypoint-controller")
        .map(|d| {
            (
                d.value["metadata"]["namespace"].as_str().unwrap(),
                d.value["roleRef"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bound,
        [
            ("bookinfo", "waypoint-controller"),
            ("shop", "waypoint-controller")
        ]
    );
    assert_eq!(config["watchNamespaces"], json!(["bookinfo", "shop"]));
    let w = &config["waypoint"];
    assert_eq!(
        w["image"],
        format!(
            "registry.example.com/mesh/waypoint:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(w["env"]["TERMINATION_DRAIN_DURATION_SECONDS"], "7");
    assert_eq!(w["env"]["ACCESS_LOG_ENCODING"], "JSON");

    // A configuration change restarts the controller.
    let checksum = |docs: &[Doc]| {
        one(docs, "Deployment", "waypoint-controller")["spec"]["template"]["metadata"]
            ["annotations"]["checksum/config"]
            .clone()
    };
    let defaults = render("manifests/charts/waypoint-controller", &[]);
    assert_ne!(checksum(&docs), checksum(&defaults));
    assert_eq!(
        checksum(&defaults),
        checksum(&render("manifests/charts/waypoint-controller", &[]))
    );
}

#[test]
fn waypoint_controller_chart_with_cluster_config_scope() {
    for args in [
        &["--set", "waypoint.configScope=cluster"][..],
        &[
            "--set",
            "waypoint.configScope=cluster",
            "--set",
            "watchNamespaces={bookinfo}",
        ][..],
    ] {
        let docs = render("manifests/charts/waypoint-controller", args);
        let config = check_waypoint_controller(
            &docs,
            "ambient-waypoint",
            "ambient.local/waypoint-controller",
        );
        assert_eq!(config["waypoint"]["configScope"], "cluster", "{args:?}");
        let parsed = waypoint::k8s::ControllerConfig::from_yaml(
            one(&docs, "ConfigMap", "waypoint-controller")["data"]["config.yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            parsed.waypoint.config_scope,
            waypoint::k8s::ConfigScope::Cluster
        );
        // The subjects' rights are cluster-wide even when the Gateways are watched in some
        // namespaces only: a ClusterRoleBinding is written cluster-wide.
        let binder = one(
            &docs,
            "ClusterRoleBinding",
            "waypoint-controller-waypoint-config-subjects",
        );
        assert_eq!(
            binder["roleRef"]["name"],
            "waypoint-controller-waypoint-config-subjects"
        );
        assert_valid(&docs);
    }
    let err = try_render(
        "manifests/charts/waypoint-controller",
        &["--set", "waypoint.configScope=everywhere"],
    )
    .unwrap_err();
    assert!(
        err.contains("waypoint.configScope must be namespace or cluster, got everywhere"),
        "{err}"
    );
}

#[test]
fn examples_are_valid() {
    let mut all = Vec::new();
    for dir in ["examples/waypoint", "manifests/examples"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{dir}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            all.extend(docs(&file.display().to_string(), &text));
        }
    }
    assert_valid(&all);
    let kinds: BTreeSet<&str> = all.iter().map(Doc::kind).collect();
    for kind in [
        "VirtualService",
        "DestinationRule",
        "HTTPRoute",
        "Gateway",
        "Namespace",
    ] {
        assert!(kinds.contains(kind), "an example {kind}");
    }

    // The example waypoint is the chart's: its default class, the one HBONE listener.
    let chart_values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("manifests/charts/waypoint-controller/values.yaml"))
            .unwrap(),
    )
    .unwrap();
    let gateway = one(&all, "Gateway", "waypoint");
    assert_eq!(
        gateway["spec"]["gatewayClassName"],
        chart_values["gatewayClass"]["name"]
    );
    assert_eq!(
        gateway["spec"]["listeners"],
        json!([{"name": "mesh", "port": waypoint::ports::HBONE, "protocol": "HBONE"}])
    );
    assert_eq!(waypoint::ports::HBONE, hbone::HBONE_PORT);
    let ns = one(&all, "Namespace", "default");
    assert_eq!(
        ns["metadata"]["labels"]["istio.io/use-waypoint"],
        gateway["metadata"]["name"]
    );
}

#[test]
fn broken_values_are_rejected() {
    // A wrong type in a value reaches the DaemonSet and fails the Kubernetes schema.
    let docs = render(
        "manifests/charts/ztunnel",
        &["--set", "terminationGracePeriodSeconds=soon"],
    );
    let err = validate(&docs).unwrap_err();
    assert!(
        err.contains("terminationGracePeriodSeconds: 'soon' is not of type 'integer'"),
        "{err}"
    );
    // A misspelt field fails the strict validation.
    let values = values_file(
        "affinity:\n  nodeAffinty:\n    requiredDuringSchedulingIgnoredDuringExecution: {}\n",
    );
    let docs = render(
        "manifests/charts/ztunnel",
        &["-f", values.path().to_str().unwrap()],
    );
    let err = validate(&docs).unwrap_err();
    assert!(err.contains("'nodeAffinty' was unexpected"), "{err}");
    // A controller name without a domain fails the GatewayClass CRD.
    let docs = render(
        "manifests/charts/waypoint-controller",
        &["--set", "gatewayClass.controllerName=waypoints"],
    );
    let err = validate(&docs).unwrap_err();
    assert!(
        err.contains(
            "GatewayClass/ambient-waypoint: spec.controllerName: 'waypoints' does not match"
        ),
        "{err}"
    );

    // Custom resources: a string where the CRD wants a list, a misspelt field, a label that is
    // not a string.
    let example =
        std::fs::read_to_string(repo().join("examples/waypoint/reviews-routing.yaml")).unwrap();
    for (broken, message) in [
        (
            example.replace("hosts: [reviews]", "hosts: reviews"),
            "VirtualService/reviews: spec.hosts: 'reviews' is not of type 'array'",
        ),
        (
            example.replace("weight: 80", "wieght: 80"),
            "'wieght' was unexpected",
        ),
        (
            example.replace("labels: {version: v1}", "labels: {version: 1}"),
            "DestinationRule/reviews: spec.subsets.0.labels.version: 1 is not of type 'string'",
        ),
    ] {
        assert_ne!(broken, example);
        let err = validate(&docs_of(&broken)).unwrap_err();
        assert!(err.contains(message), "{message}:\n{err}");
    }
    assert!(validate(&docs_of(&example)).is_ok());

    // Values the charts refuse themselves.
    let err = try_render("manifests/charts/ztunnel", &["--set", "hub="]).unwrap_err();
    assert!(err.contains("hub: the image registry"), "{err}");
    let err = try_render(
        "manifests/charts/waypoint-controller",
        &["--set", "waypoint.terminationGracePeriodSeconds=-3"],
    )
    .unwrap_err();
    assert!(
        err.contains("waypoint.terminationGracePeriodSeconds must be a positive whole number"),
        "{err}"
    );
    let err = try_render("manifests/charts/ztunnel", &["--kube-version", "1.27.9"]).unwrap_err();
    assert!(
        err.contains("incompatible with Kubernetes v1.27.9"),
        "{err}"
    );
}

fn docs_of(text: &str) -> Vec<Doc> {
    docs("example", text)
}
