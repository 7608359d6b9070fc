//! `waypoint list` and `waypoint status`: the waypoint Gateways of a namespace (or of every
//! namespace) as istioctl's tables.
//!
//! A waypoint is a Gateway of the `--gateway-class` class. `list` shows each one's revision
//! (`istio.io/rev`, default `default`), traffic type (`istio.io/waypoint-for`, `none` when
//! absent) and `Programmed` status; `status` shows a condition per Gateway, read again every
//! second until it is `Programmed=True` (unless `--wait=false`), a row per reading. The row
//! builders are pure; the reads are in [`list`] and [`status`].

use std::io::Write;

use gateway_api::gateways::Gateway;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use tokio::time::{Instant, MissedTickBehavior};

use super::client::{self, Cluster};
use super::{Error, ListArgs, POLL_INTERVAL, StatusArgs, labels, table};

/// What `list` and `status` print when the namespace has no Gateway at all.
pub const NO_WAYPOINTS: &str = "No waypoints found.\n";

/// Runs `list`.
pub async fn list(cluster: &Cluster, args: &ListArgs, out: &mut dyn Write) -> Result<(), Error> {
    let gateways = read_all(cluster, args.all_namespaces).await?;
    if gateways.is_empty() {
        out.write_all(NO_WAYPOINTS.as_bytes())?;
        return Ok(());
    }
    let waypoints = waypoints(gateways, &args.common.gateway_class);
    out.write_all(list_table(&waypoints, args.all_namespaces).as_bytes())?;
    Ok(())
}

/// Lists the Gateways of the namespace, or of every namespace.
async fn read_all(cluster: &Cluster, all_namespaces: bool) -> Result<Vec<Gateway>, Error> {
    let api = match all_namespaces {
        true => cluster.all_gateways(),
        false => cluster.gateways(&cluster.namespace),
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| client::api_error(&e))?;
    Ok(list.items)
}

/// The Gateways of class `class`, sorted by namespace, then name.
pub fn waypoints(mut gateways: Vec<Gateway>, class: &str) -> Vec<Gateway> {
    gateways.retain(|gw| gw.spec.gateway_class_name == class);
    gateways.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    gateways
}

/// `list`'s table of `waypoints` (already filtered and sorted).
pub fn list_table(waypoints: &[Gateway], all_namespaces: bool) -> String {
    let mut text = String::new();
    if all_namespaces {
        text.push_str("NAMESPACE\t");
    }
    text.push_str("NAME\tREVISION\tTRAFFIC TYPE\tPROGRAMMED\n");
    for gw in waypoints {
        let label = |key: &str| {
            gw.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .filter(|v| !v.is_empty())
                .map(String::as_str)
        };
        let programmed = conditions(gw)
            .iter()
            .rev()
            .find(|c| c.type_ == "Programmed")
            .map_or("False", |c| c.status.as_str());
        if all_namespaces {
            text.push_str(gw.metadata.namespace.as_deref().unwrap_or_default());
            text.push('\t');
        }
        let row = [
            gw.metadata.name.as_deref().unwrap_or_default(),
            label(labels::REVISION).unwrap_or("default"),
            label(labels::WAYPOINT_FOR).unwrap_or("none"),
            programmed,
        ];
        text.push_str(&row.join("\t"));
        text.push('\n');
    }
    table::align(&text)
}

fn conditions(gw: &Gateway) -> &[Condition] {
    gw.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// The condition cells of a `status` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The condition type (`Programmed`, `Accepted`, ...).
    pub type_: String,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

impl From<&Condition> for Shown {
    fn from(c: &Condition) -> Self {
        Self {
            status: c.status.clone(),
            type_: c.type_.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        }
    }
}

/// The condition a `status` row shows, and whether the Gateway is `Programmed=True`.
///
/// As in istioctl, the conditions are scanned in order up to the first `Programmed=True`; the
/// row shows the last condition scanned, or `previous` (the condition of the row before, empty
/// at first) when the Gateway has none or could not be read.
pub fn status_condition(read: Option<&Gateway>, previous: &Shown) -> (Shown, bool) {
    let mut shown = previous.clone();
    for c in read.map(conditions).unwrap_or_default() {
        shown = Shown::from(c);
        if c.type_ == "Programmed" && c.status == "True" {
            return (shown, true);
        }
    }
    (shown, false)
}

/// One `status` row: `[NAMESPACE] NAME STATUS TYPE REASON MESSAGE`.
pub fn status_row(read: Option<&Gateway>, shown: &Shown, all_namespaces: bool) -> String {
    let meta = read.map(|gw| &gw.metadata);
    let namespace = meta
        .and_then(|m| m.namespace.as_deref())
        .unwrap_or_default();
    let name = meta.and_then(|m| m.name.as_deref()).unwrap_or_default();
    let mut cells = Vec::with_capacity(6);
    if all_namespaces {
        cells.push(namespace);
    }
    cells.extend([
        name,
        &shown.status,
        &shown.type_,
        &shown.reason,
        &shown.message,
    ]);
    cells.join("\t") + "\n"
}

/// Runs `status`.
pub async fn status(
    cluster: &Cluster,
    args: &StatusArgs,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let gateways = read_all(cluster, args.all_namespaces).await?;
    if gateways.is_empty() {
        out.write_all(NO_WAYPOINTS.as_bytes())?;
        return Ok(());
    }
    let waypoints = waypoints(gateways, &args.common.gateway_class);
    let mut text = String::from(match args.all_namespaces {
        true => "NAMESPACE\tNAME\tSTATUS\tTYPE\tREASON\tMESSAGE\n",
        false => "NAME\tSTATUS\tTYPE\tREASON\tMESSAGE\n",
    });
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(start + POLL_INTERVAL, POLL_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut shown = Shown::default();
    for gw in &waypoints {
        let namespace = gw.metadata.namespace.as_deref().unwrap_or_default();
        let name = gw.metadata.name.as_deref().unwrap_or_default();
        loop {
            ticks.tick().await;
            let read = cluster.gateways(namespace).get(name).await;
            let (condition, programmed) = status_condition(read.as_ref().ok(), &shown);
            shown = condition;
            text.push_str(&status_row(read.as_ref().ok(), &shown, args.all_namespaces));
            if !args.wait || programmed {
                break;
            }
            if start.elapsed() > args.waypoint_timeout {
                let meta = read.as_ref().ok().map(|gw| &gw.metadata);
                return Err(Error::StatusTimeout {
                    namespace: meta.and_then(|m| m.namespace.clone()).unwrap_or_default(),
                    name: meta.and_then(|m| m.name.clone()).unwrap_or_default(),
                    cause: read.err().map(|e| client::message(&e)),
                });
            }
        }
    }
    out.write_all(table::align(&text).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests;
