//! Compiles the `.proto` files under `proto/` with protox (no `protoc` needed) and generates the
//! Rust message types, gRPC clients and gRPC servers with tonic-prost-build.

use std::path::{Path, PathBuf};

/// Every file to generate code for, relative to the `proto/` include directory.
const PROTOS: &[&str] = &[
    "workload.proto",
    "authorization.proto",
    "citadel.proto",
    "zds.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/config/core/v3/address.proto",
    "envoy/service/auth/v3/attribute_context.proto",
    "envoy/service/auth/v3/external_auth.proto",
    "envoy/type/v3/semantic_version.proto",
    "envoy/type/v3/http_status.proto",
    "google/rpc/status.proto",
    "opentelemetry/proto/common/v1/common.proto",
    "opentelemetry/proto/resource/v1/resource.proto",
    "opentelemetry/proto/trace/v1/trace.proto",
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", include.display());
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", include.join(proto).display());
    }

    let files: Vec<PathBuf> = PROTOS.iter().map(|proto| include.join(proto)).collect();
    let descriptors = protox::compile(&files, [include.as_path()])?;

    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` for every message, with the `type.googleapis.com/` prefix that `Any` and
    // xDS type URLs use.
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Callers bring their own HTTP/2 transport; tonic's is not compiled in.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(descriptors, config)?;

    check_outputs(Path::new(&std::env::var("OUT_DIR")?))
}

/// Fails the build early, with a clear message, if a package's output file is missing.
fn check_outputs(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    for package in [
        "istio.workload",
        "istio.workload.zds",
        "istio.security",
        "istio.v1.auth",
        "envoy.service.discovery.v3",
        "envoy.service.auth.v3",
        "envoy.config.core.v3",
        "envoy.r#type.v3",
        "google.rpc",
        "opentelemetry.proto.common.v1",
        "opentelemetry.proto.resource.v1",
        "opentelemetry.proto.trace.v1",
        "opentelemetry.proto.collector.trace.v1",
    ] {
        let file = out_dir.join(format!("{package}.rs"));
        if !file.exists() {
            return Err(format!("expected generated file {} is missing", file.display()).into());
        }
    }
    Ok(())
}
