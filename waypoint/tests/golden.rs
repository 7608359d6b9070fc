//! Golden compile tests: YAML fixtures → loader errors, compile warnings, route table and
//! destination policies, compared with `tests/fixtures/<name>.golden.yaml`.
//!
//! Set `WAYPOINT_UPDATE_GOLDEN=1` to rewrite the golden files after an intended change, then
//! review the diff.

use std::path::{Path, PathBuf};

use serde::Serialize;
use waypoint::config::ConfigSet;
use waypoint::route::{CompileOptions, DestinationPolicies, RouteTable, ServiceTarget, compile};

#[derive(Serialize)]
struct Golden<'a> {
    errors: Vec<String>,
    warnings: Vec<String>,
    routes: &'a RouteTable,
    destinations: &'a DestinationPolicies,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check(name: &str, services: &[ServiceTarget]) {
    let source = fixtures().join(format!("{name}.yaml"));
    let content = std::fs::read_to_string(&source).expect("fixture is readable");
    let mut config = ConfigSet::default();
    // A stable label instead of the absolute path, so goldens do not depend on the checkout.
    let errors = config.parse_file(Path::new(&format!("fixtures/{name}.yaml")), &content);
    let compiled = compile(&config, services, &CompileOptions::default());
    let golden = Golden {
        errors: errors.iter().map(ToString::to_string).collect(),
        warnings: compiled.warnings.iter().map(ToString::to_string).collect(),
        routes: &compiled.routes,
        destinations: &compiled.destinations,
    };
    // Through JSON, so enums read as `{variant: value}` maps, as in a JSON config dump.
    let json = serde_json::to_value(&golden).expect("golden serializes");
    let actual = serde_yaml_ng::to_string(&json).expect("golden renders as YAML");
    let golden_path = fixtures().join(format!("{name}.golden.yaml"));
    if std::env::var_os("WAYPOINT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, &actual).expect("golden is writable");
        return;
    }
    let expected = std::fs::read_to_string(&golden_path).unwrap_or_default();
    if actual != expected {
        let first_difference = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "{} differs from the compiled output at line {} (rerun with WAYPOINT_UPDATE_GOLDEN=1 \
             and review the diff):\n--- actual\n{actual}",
            golden_path.display(),
            first_difference + 1,
        );
    }
}

fn service(name: &str, namespace: &str, ports: &[u16]) -> ServiceTarget {
    ServiceTarget::kubernetes(name, namespace, "cluster.local", ports.iter().copied())
}

#[test]
fn bookinfo_virtual_services() {
    check(
        "bookinfo",
        &[
            service("reviews", "bookinfo", &[9080]),
            service("ratings", "bookinfo", &[9080]),
            service("details", "bookinfo", &[9080]),
        ],
    );
}

#[test]
fn gamma_routes() {
    check(
        "gamma",
        &[
            service("productpage", "bookinfo", &[9080, 9443]),
            service("echo", "bookinfo", &[7070]),
        ],
    );
}

#[test]
fn invalid_objects() {
    check("invalid", &[service("reviews", "default", &[9080])]);
}
