//! Source selection: flags and environment in, sources (or the reason there are none) out.

use std::collections::HashMap;

use super::*;

const ISTIOD: &str = "https://istiod.istio-system.svc:15012/";

fn node() -> WaypointNode {
    WaypointNode {
        namespace: "bookinfo".into(),
        name: "waypoint".into(),
        service_account: "waypoint-sa".into(),
        instance_ips: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
    }
}

fn flags(state: Option<&str>, ca_dir: Option<&str>, ca_plugin_dir: Option<&str>) -> SourceFlags {
    SourceFlags {
        state: state.map(str::to_owned),
        ca_dir: ca_dir.map(str::to_owned),
        ca_plugin_dir: ca_plugin_dir.map(str::to_owned),
    }
}

/// One line per outcome, so the table reads as a specification.
fn summary(result: Result<Sources, SourceError>) -> String {
    let sources = match result {
        Ok(s) => s,
        Err(SourceError::NoStateSource) => return "error: no state source".into(),
        Err(SourceError::Config(e)) => return format!("error: {e}"),
    };
    let state = match &sources.state {
        StateSource::File(p) => format!("file {}", p.display()),
        StateSource::Inline(_) => "inline".into(),
        StateSource::Xds(x) => format!("xds {}", x.control_plane.address),
    };
    let ca = match &sources.ca {
        CaSource::Istio(c) => format!(
            "istio-ca {} impersonate={}",
            c.control_plane.address, c.impersonate
        ),
        CaSource::Local(d) => format!("local-ca {}", d.display()),
        CaSource::Plugin(d) => format!("plugin-ca {}", d.display()),
    };
    format!("{state}; {ca}")
}

/// A case: its name, the flags, the environment, and the expected [`summary`].
type Case = (
    &'static str,
    SourceFlags,
    Vec<(&'static str, &'static str)>,
    String,
);

#[test]
fn selection_table() {
    let k8s = ("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let xds = ("XDS_ADDRESS", "istiod.istio-system.svc:15012");
    let ca = ("CA_ADDRESS", "https://istiod.istio-system.svc:15012");
    let cases: Vec<Case> = vec![
        (
            "file flag only",
            flags(Some("/m.yaml"), None, None),
            vec![],
            "file /m.yaml; local-ca target/ztunnel-state".into(),
        ),
        (
            "file variable only",
            flags(None, None, None),
            vec![("LOCAL_XDS_PATH", "/env.yaml")],
            "file /env.yaml; local-ca target/ztunnel-state".into(),
        ),
        (
            "the flag wins over the variable",
            flags(Some("/flag.yaml"), None, None),
            vec![("LOCAL_XDS_PATH", "/env.yaml")],
            "file /flag.yaml; local-ca target/ztunnel-state".into(),
        ),
        (
            "inline state",
            flags(None, None, None),
            vec![("LOCAL_XDS", "workloads: []")],
            "inline; local-ca target/ztunnel-state".into(),
        ),
        (
            "xds only",
            flags(None, None, None),
            vec![xds],
            format!("xds {ISTIOD}; local-ca target/ztunnel-state"),
        ),
        (
            "file and xds",
            flags(Some("/m.yaml"), None, None),
            vec![xds],
            "error: XDS_ADDRESS and LOCAL_XDS_PATH/LOCAL_XDS are mutually exclusive".into(),
        ),
        (
            "file and inline",
            flags(Some("/m.yaml"), None, None),
            vec![("LOCAL_XDS", "workloads: []")],
            "error: LOCAL_XDS_PATH and LOCAL_XDS are mutually exclusive".into(),
        ),
        (
            "neither",
            flags(None, None, None),
            vec![],
            "error: no state source".into(),
        ),
        (
            "xds disabled by an empty address",
            flags(None, None, None),
            vec![("XDS_ADDRESS", "")],
            "error: no state source".into(),
        ),
        (
            "plaintext xds refused",
            flags(None, None, None),
            vec![("XDS_ADDRESS", "http://istiod:15010")],
            "error: XDS_ADDRESS=\"http://istiod:15010\": only https:// is supported (the \
             bearer token must not travel in clear)"
                .into(),
        ),
        (
            "kubernetes: istiod for both by default",
            flags(None, None, None),
            vec![k8s],
            format!("xds {ISTIOD}; istio-ca {ISTIOD} impersonate=false"),
        ),
        (
            "kubernetes with a file: the file, the CA still istiod's",
            flags(Some("/m.yaml"), None, None),
            vec![k8s],
            format!("file /m.yaml; istio-ca {ISTIOD} impersonate=false"),
        ),
        (
            "istio CA",
            flags(Some("/m.yaml"), None, None),
            vec![ca],
            format!("file /m.yaml; istio-ca {ISTIOD} impersonate=false"),
        ),
        (
            "istio CA even in shared proxy mode asks for itself",
            flags(None, None, None),
            vec![xds, ca, ("PROXY_MODE", "shared")],
            format!("xds {ISTIOD}; istio-ca {ISTIOD} impersonate=false"),
        ),
        (
            "istio CA and a local CA flag",
            flags(Some("/m.yaml"), Some("/ca"), None),
            vec![ca],
            "error: CA_ADDRESS and CA_PLUGIN_DIR/LOCAL_CA_DIR are mutually exclusive".into(),
        ),
        (
            "istio CA and a plug-in CA variable",
            flags(Some("/m.yaml"), None, None),
            vec![ca, ("CA_PLUGIN_DIR", "/plugin")],
            "error: CA_ADDRESS and CA_PLUGIN_DIR/LOCAL_CA_DIR are mutually exclusive".into(),
        ),
        (
            "local CA flag",
            flags(Some("/m.yaml"), Some("/ca"), None),
            vec![],
            "file /m.yaml; local-ca /ca".into(),
        ),
        (
            "plug-in CA wins over a local CA",
            flags(Some("/m.yaml"), Some("/ca"), Some("/plugin")),
            vec![],
            "file /m.yaml; plugin-ca /plugin".into(),
        ),
        (
            "kubernetes with a local CA: no conflict, the local CA",
            flags(None, Some("/ca"), None),
            vec![k8s],
            format!("xds {ISTIOD}; local-ca /ca"),
        ),
        (
            "CA disabled by an empty address outside kubernetes",
            flags(Some("/m.yaml"), None, None),
            vec![("CA_ADDRESS", "")],
            "file /m.yaml; local-ca target/ztunnel-state".into(),
        ),
    ];
    for (name, flags, env, want) in cases {
        let env: HashMap<&str, &str> = env.into_iter().collect();
        let got = summary(select(&flags, &node(), &env));
        assert_eq!(got, want, "case {name:?}");
    }
}

fn metadata(x: &XdsConfig, key: &str) -> Option<String> {
    let proto = x.node.to_proto();
    match proto.metadata?.fields.get(key)?.kind.clone()? {
        Kind::StringValue(s) => Some(s),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn xds_of(env: &[(&str, &str)], node: &WaypointNode) -> XdsConfig {
    let env: HashMap<&str, &str> = env.iter().copied().collect();
    match select(&SourceFlags::default(), node, &env).unwrap().state {
        StateSource::Xds(x) => *x,
        other => panic!("not xDS: {other:?}"),
    }
}

#[test]
fn the_xds_node_describes_the_waypoint() {
    let x = xds_of(
        &[
            ("XDS_ADDRESS", "https://istiod:15012"),
            ("POD_NAME", "waypoint-7c9d-x2x"),
            ("POD_NAMESPACE", "ignored-the-flag-wins"),
            ("NODE_NAME", "node-1"),
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_META_MESH_ID", "mesh1"),
            ("ISTIO_META_SERVICE_ACCOUNT", "someone-else"),
        ],
        &node(),
    );
    assert_eq!(
        x.node.to_proto().id,
        "waypoint~10.0.0.7~waypoint-7c9d-x2x.bookinfo~bookinfo.svc.cluster.local"
    );
    for (key, want) in [
        ("NAME", "waypoint-7c9d-x2x"),
        ("NAMESPACE", "bookinfo"),
        ("INSTANCE_IPS", "10.0.0.7,fd00::7"),
        ("NODE_NAME", "node-1"),
        ("CLUSTER_ID", "east"),
        ("SERVICE_ACCOUNT", "waypoint-sa"),
        ("WORKLOAD_NAME", "waypoint"),
        ("MESH_ID", "mesh1"),
    ] {
        assert_eq!(metadata(&x, key).as_deref(), Some(want), "{key}");
    }
    assert_eq!(x.control_plane.cluster_id, "east");
}

#[test]
fn without_pod_name_or_addresses_the_node_uses_the_name_and_upstreams_default_ip() {
    let me = WaypointNode {
        instance_ips: Vec::new(),
        ..node()
    };
    let x = xds_of(
        &[
            ("XDS_ADDRESS", "https://istiod:15012"),
            ("ISTIO_META_WORKLOAD_NAME", "waypoint-deployment"),
        ],
        &me,
    );
    assert_eq!(
        x.node.id(),
        "waypoint~1.1.1.1~waypoint.bookinfo~bookinfo.svc.cluster.local"
    );
    assert_eq!(
        metadata(&x, "WORKLOAD_NAME").as_deref(),
        Some("waypoint-deployment")
    );
}
