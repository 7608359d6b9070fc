//! The workspace's binaries, for suites that run them as processes (the `waypoint` CLI
//! against the API server double of [`crate::kube`]).
//!
//! Integration tests of another package cannot use `CARGO_BIN_EXE_<name>`, so the binary is
//! found next to the test executable, in the same target directory and profile, and built
//! there first (once per test process; a no-op when it is up to date), so a suite never runs
//! a stale binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target directory and profile directory the running test executable was built into:
/// `<target>/<profile>/deps/<test>-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable is in deps/");
    deps.parent()
        .expect("deps/ is in the profile directory")
        .to_path_buf()
}

/// Cargo's flag for the profile whose output directory is `dir` (`release`, `debug`, or a
/// custom profile).
fn profile_flag(dir: &Path) -> Vec<String> {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => Vec::new(),
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
        None => vec!["--release".into()],
    }
}

/// The path of workspace binary `name` of package `package`, built first with the test's
/// profile and target directory.
///
/// # Panics
/// When cargo cannot build it: this is test code.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let dir = profile_dir();
    let path = dir.join(name);
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().expect("binary build lock");
    if !built.iter().any(|b| b == name) {
        let target = dir.parent().expect("the profile directory is in the target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args(["build", "--quiet", "-p", package, "--bin", name])
            .args(profile_flag(&dir))
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p {package} --bin {name} failed");
        built.push(name.to_owned());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}
