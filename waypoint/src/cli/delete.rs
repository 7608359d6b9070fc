//! `waypoint delete`: deletes waypoint Gateways by name, every one of the namespace
//! (`--all`), or those of a revision (`-r`).
//!
//! Only Gateways of the `--gateway-class` class are deleted; a name that is not such a
//! Gateway is reported `not found`, as is one that disappears before its delete. Other
//! failures are collected and reported together after every delete was tried.

use std::io::Write;

use kube::api::{DeleteParams, ListParams};

use super::client::{self, Cluster};
use super::{DeleteArgs, Error, labels};

/// Checks the arguments as istioctl does, before any request: names, or `--all`/`-r`.
pub fn check(args: &DeleteArgs) -> Result<(), Error> {
    let every = args.all || args.revision().is_some();
    match (every, args.names.is_empty()) {
        (true, false) => Err(Error::DeleteNamesAndAll),
        (false, true) => Err(Error::DeleteNothing),
        _ => Ok(()),
    }
}

/// The label selector of `-r <revision>`.
pub fn revision_selector(revision: &str) -> String {
    format!("{}={revision}", labels::REVISION)
}

/// Runs `delete` in `cluster.namespace`.
pub async fn delete(
    cluster: &Cluster,
    args: &DeleteArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let ns = cluster.namespace.as_str();
    let gateways = cluster.gateways(ns);
    let class = args.common.gateway_class.as_str();
    let every = args.all || args.revision().is_some();
    let params = match args.revision() {
        Some(revision) if every => ListParams::default().labels(&revision_selector(revision)),
        _ => ListParams::default(),
    };
    let listed = gateways
        .list(&params)
        .await
        .map_err(|e| client::api_error(&e))?;
    let waypoints: Vec<String> = listed
        .items
        .into_iter()
        .filter(|gw| gw.spec.gateway_class_name == class)
        .filter_map(|gw| gw.metadata.name)
        .collect();
    let mut targets = Vec::new();
    if every {
        targets = waypoints;
    } else {
        for name in &args.names {
            if waypoints.contains(name) {
                targets.push(name.clone());
            } else {
                writeln!(out, "waypoint {ns}/{name} not found")?;
            }
        }
    }
    let mut failures = Vec::new();
    for name in &targets {
        match gateways.delete(name, &DeleteParams::default()).await {
            Ok(_) => writeln!(out, "waypoint {ns}/{name} deleted")?,
            Err(e) if client::is_not_found(&e) => writeln!(out, "waypoint {ns}/{name} not found")?,
            Err(e) => failures.push(client::message(&e)),
        }
    }
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Error::Delete(failures)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(names: &[&str], all: bool, revision: Option<&str>) -> DeleteArgs {
        DeleteArgs {
            common: crate::cli::CommonArgs {
                name: "waypoint".into(),
                namespace: None,
                kubeconfig: None,
                context: None,
                gateway_class: "istio-waypoint".into(),
            },
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            all,
            revision: revision.map(str::to_owned),
        }
    }

    #[test]
    fn names_xor_all_or_revision() {
        for (name, args, want) in [
            ("names", args(&["a", "b"], false, None), Ok(())),
            ("--all", args(&[], true, None), Ok(())),
            ("-r", args(&[], false, Some("canary")), Ok(())),
            ("--all -r", args(&[], true, Some("canary")), Ok(())),
            (
                "nothing",
                args(&[], false, None),
                Err(
                    "must specify a waypoint name or delete all using --all or delete specific revision using --revision",
                ),
            ),
            (
                "an empty -r is no revision",
                args(&[], false, Some("")),
                Err(
                    "must specify a waypoint name or delete all using --all or delete specific revision using --revision",
                ),
            ),
            (
                "names and --all",
                args(&["a"], true, None),
                Err("cannot specify waypoint names when deleting all waypoints"),
            ),
            (
                "names and -r",
                args(&["a"], false, Some("canary")),
                Err("cannot specify waypoint names when deleting all waypoints"),
            ),
        ] {
            assert_eq!(
                check(&args).map_err(|e| e.to_string()),
                want.map_err(str::to_owned),
                "{name}"
            );
        }
        assert_eq!(revision_selector("canary"), "istio.io/rev=canary");
    }
}
