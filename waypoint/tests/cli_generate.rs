//! `waypoint generate` against istioctl's output: one golden file per flag combination in
//! `tests/golden/generate/` (`<case>.yaml`: stdout; `<case>.stderr`: the error, exit code 1),
//! written from `istioctl waypoint generate`'s output for the same flags. Each case runs the
//! real binary and the library's [`waypoint::cli::run`].

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

/// (golden file, arguments after `waypoint generate`).
const CASES: &[(&str, &[&str])] = &[
    ("no-namespace.yaml", &[]),
    ("namespace-default.yaml", &["-n", "default"]),
    ("for-service.yaml", &["--for", "service", "-n", "default"]),
    ("for-workload.yaml", &["--for", "workload", "-n", "default"]),
    ("for-all.yaml", &["--for", "all", "-n", "default"]),
    ("for-none.yaml", &["--for", "none", "-n", "default"]),
    ("revision.yaml", &["-r", "rev1", "-n", "default"]),
    ("name.yaml", &["--name", "foo", "--namespace", "default"]),
    ("empty-name.yaml", &["--name", "", "-n", "default"]),
    (
        "combined.yaml",
        &[
            "--for", "all", "-r", "rev1", "--name", "foo", "-n", "default",
        ],
    ),
    ("invalid-for.stderr", &["--for", "x", "-n", "default"]),
    ("name-none.stderr", &["--name", "none", "-n", "default"]),
    // Not an istioctl flag: the class of this project's waypoint controller.
    (
        "gateway-class.yaml",
        &["--gateway-class", "ambient-waypoint", "-n", "default"],
    ),
];

fn golden(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/generate")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn binary_prints_istioctl_output() {
    for (file, args) in CASES {
        let out = Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .arg("generate")
            .args(*args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        if file.ends_with(".stderr") {
            assert_eq!(out.status.code(), Some(1), "{file}: exit code");
            assert_eq!(stdout, "", "{file}: stdout");
            assert_eq!(stderr, golden(file), "{file}: stderr");
        } else {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{file}: exit code, stderr {stderr}"
            );
            assert_eq!(stdout, golden(file), "{file}: stdout");
            assert_eq!(stderr, "", "{file}: stderr");
        }
    }
}

/// The subcommands as the binary parses them.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: waypoint::cli::Command,
}

#[tokio::test]
async fn library_prints_istioctl_output() {
    for (file, args) in CASES {
        let cli = Cli::try_parse_from(["waypoint", "generate"].iter().chain(args.iter())).unwrap();
        let mut out = Vec::new();
        let result = waypoint::cli::run(&cli.command, &mut out).await;
        match result {
            Ok(()) => assert_eq!(String::from_utf8(out).unwrap(), golden(file), "{file}"),
            Err(e) => {
                assert_eq!(format!("Error: {e}\n"), golden(file), "{file}");
                assert!(out.is_empty(), "{file}: nothing printed before the error");
            }
        }
    }
}

#[test]
fn generated_gateway_round_trips_through_the_typed_api() {
    let cli = Cli::try_parse_from([
        "waypoint", "generate", "--for", "workload", "-n", "bookinfo",
    ])
    .unwrap();
    let waypoint::cli::Command::Generate(args) = &cli.command else {
        panic!("generate parses as generate");
    };
    let yaml = waypoint::cli::generate::generate(&args.params(args.common.namespace())).unwrap();
    let gw: gateway_api::gateways::Gateway = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(gw.spec.gateway_class_name, "istio-waypoint");
    assert_eq!(gw.spec.listeners.len(), 1);
    assert_eq!(
        (
            gw.spec.listeners[0].port,
            gw.spec.listeners[0].protocol.as_str()
        ),
        (15008, "HBONE")
    );
    assert_eq!(
        gw.metadata.labels.unwrap()["istio.io/waypoint-for"],
        "workload"
    );
}
