//! `waypoint apply`: server-side apply of the waypoint Gateway (field manager `istioctl`),
//! optionally waiting for the controller to report it `Programmed` and enrolling the
//! namespace (`istio.io/use-waypoint=<name>`).
//!
//! The steps and messages are istioctl's: the namespace is read first (it must exist); with
//! `--enroll-namespace` a namespace that already uses a waypoint is left alone unless
//! `--overwrite` is given (a warning, not an error), and a namespace not enrolled in ambient
//! gets a warning with the `kubectl label` command that enrolls it.

use std::io::Write;

use gateway_api::gateways::Gateway;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::time::{Instant, MissedTickBehavior};

use super::client::{self, Cluster};
use super::{ApplyArgs, Error, FIELD_MANAGER, POLL_INTERVAL, generate, labels};

/// Runs `apply` in `cluster.namespace`.
pub async fn apply(cluster: &Cluster, args: &ApplyArgs, out: &mut dyn Write) -> Result<(), Error> {
    let ns = cluster.namespace.as_str();
    let namespace = cluster.namespace(ns).await?;
    let ns_labels = namespace.metadata.labels.unwrap_or_default();
    let has_waypoint = ns_labels
        .get(labels::USE_WAYPOINT)
        .is_some_and(|v| !v.is_empty());
    if args.enroll_namespace {
        if has_waypoint && !args.overwrite {
            writeln!(
                out,
                "⚠️ Warning: namespace ({ns}) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command."
            )?;
            return Ok(());
        }
        let namespace = cluster
            .namespace(ns)
            .await
            .map_err(|e| Error::AmbientCheck(Box::new(e)))?;
        if !is_ambient(namespace.metadata.labels.as_ref()) {
            writeln!(
                out,
                "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace {ns} istio.io/dataplane-mode=ambient`"
            )?;
        }
    }
    let gateway = generate::gateway(&args.gateway.params(Some(ns)))?;
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let gateways = cluster.gateways(ns);
    gateways
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&gateway),
        )
        .await
        .map_err(|e| match client::is_not_found(&e) {
            true => Error::MissingCrds(client::message(&e)),
            false => client::api_error(&e),
        })?;
    writeln!(out, "✅ waypoint {ns}/{name} applied")?;
    if args.wait {
        wait_programmed(cluster, ns, &name, args.waypoint_timeout).await?;
        writeln!(out, "✅ waypoint {ns}/{name} is ready!")?;
    }
    if args.enroll_namespace {
        label_namespace(cluster, ns, &name)
            .await
            .map_err(|e| Error::LabelNamespace(Box::new(e)))?;
        writeln!(
            out,
            "✅ namespace {ns} labeled with \"{}: {name}\"",
            labels::USE_WAYPOINT
        )?;
    }
    Ok(())
}

/// Whether namespace labels enroll it in ambient (`istio.io/dataplane-mode=ambient`).
pub fn is_ambient(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(labels::DATAPLANE_MODE))
        .is_some_and(|mode| mode == labels::DATAPLANE_MODE_AMBIENT)
}

/// Whether the Gateway's status has `Programmed=True`.
pub fn is_programmed(gateway: &Gateway) -> bool {
    gateway
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
        })
}

/// Reads the Gateway every [`POLL_INTERVAL`] (the first read one interval after the start)
/// until it is `Programmed`, or fails once `timeout` has passed.
async fn wait_programmed(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    let gateways = cluster.gateways(ns);
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + POLL_INTERVAL, POLL_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let read = gateways.get(name).await;
        if read.as_ref().is_ok_and(is_programmed) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let (namespace, name) = match &read {
                Ok(gw) => (
                    gw.metadata.namespace.clone().unwrap_or_default(),
                    gw.metadata.name.clone().unwrap_or_default(),
                ),
                Err(_) => (String::new(), String::new()),
            };
            return Err(Error::WaitTimeout {
                namespace,
                name,
                cause: read.err().map(|e| client::message(&e)),
            });
        }
    }
}

/// Sets `istio.io/use-waypoint=<name>` on the namespace (read, then replaced as a whole).
async fn label_namespace(cluster: &Cluster, ns: &str, name: &str) -> Result<(), Error> {
    let mut namespace = cluster.namespace(ns).await?;
    namespace
        .metadata
        .labels
        .get_or_insert_default()
        .insert(labels::USE_WAYPOINT.to_owned(), name.to_owned());
    cluster
        .namespaces()
        .replace(ns, &PostParams::default(), &namespace)
        .await
        .map_err(|e| Error::NamespaceUpdate {
            namespace: ns.to_owned(),
            message: client::message(&e),
        })?;
    Ok(())
}
