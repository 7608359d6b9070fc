//! The waypoint benchmark's package (`tests/bench`) must build the binaries' crates exactly as
//! `cargo build -p ztunnel -p waypoint` does. Cargo names each crate's symbols after its
//! features and those of everything below it, so one extra feature (a test double's, or one a
//! test-only dependency switches on) gives the benchmark different code than the binaries, and
//! a profile recorded by the benchmark (`scripts/dist`) no longer matches the shipped build.
//!
//! `cargo tree` resolves both from `Cargo.lock` without compiling anything.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Each package of the dependency graph `args` selects, with the feature sets it is built with
/// (one per kind of build: a build script's dependencies may differ from the target's).
fn feature_sets(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(["--format", "{p}|{f}"])
        .args(args)
        .current_dir(root)
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let line = line.trim_end_matches(" (*)");
        let Some((package, features)) = line.split_once('|') else {
            continue;
        };
        sets.entry(package.to_owned())
            .or_default()
            .insert(features.to_owned());
    }
    sets
}

/// The feature sets the benchmark builds a shipped package with and the binaries do not.
fn extra_features(
    shipped: &BTreeMap<String, BTreeSet<String>>,
    bench: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut extra = Vec::new();
    for (package, sets) in bench {
        let Some(shipped_sets) = shipped.get(package) else {
            continue;
        };
        for set in sets.difference(shipped_sets) {
            extra.push(format!("{package}: [{set}] (shipped: {shipped_sets:?})"));
        }
    }
    extra
}

#[test]
fn the_benchmark_builds_the_shipped_crates_with_the_shipped_features() {
    let shipped = feature_sets(&["-p", "ztunnel", "-p", "waypoint", "-e", "normal,build"]);
    let bench = feature_sets(&["-p", "ambient-bench", "-e", "normal,build,dev"]);
    for crate_name in [
        "ztunnel", "waypoint", "hbone", "tokio", "h2", "hyper", "rustls",
    ] {
        let in_both = |sets: &BTreeMap<String, BTreeSet<String>>| {
            sets.keys().any(|p| p.split(' ').next() == Some(crate_name))
        };
        assert!(
            in_both(&shipped) && in_both(&bench),
            "{crate_name} is missing from a graph"
        );
    }
    let extra = extra_features(&shipped, &bench);
    assert!(
        extra.is_empty(),
        "the benchmark builds shipped crates with features the binaries do not have; align \
         them in the workspace's Cargo.toml:\n{}",
        extra.join("\n")
    );
}

#[test]
fn a_test_feature_in_the_graph_is_reported() {
    let shipped = BTreeMap::from([(
        "ztunnel v0.1.0 (/w/ztunnel)".to_owned(),
        BTreeSet::from([String::new()]),
    )]);
    let bench = BTreeMap::from([
        (
            "ztunnel v0.1.0 (/w/ztunnel)".to_owned(),
            BTreeSet::from(["testing".to_owned()]),
        ),
        (
            "hdrhistogram v7.6.0".to_owned(),
            BTreeSet::from([String::new()]),
        ),
    ]);
    assert_eq!(
        extra_features(&shipped, &bench),
        vec![r#"ztunnel v0.1.0 (/w/ztunnel): [testing] (shipped: {""})"#.to_owned()]
    );
    assert!(extra_features(&shipped, &shipped).is_empty());
}
