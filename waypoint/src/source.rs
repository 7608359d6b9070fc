//! Where the waypoint's inputs come from: the mesh state (a local file, inline YAML, or istiod
//! over delta xDS) and its certificate (istiod's CA, a local CA, or Istio's plug-in CA files).
//!
//! Neither is a stage of the chain; both feed it. The mesh state decides which services and
//! workloads `main_internal` accepts as bound to this waypoint and which endpoints each inbound
//! VIP cluster has; the certificate is what `connect_terminate` presents to the client ztunnels
//! and `connect_originate` to the destination ztunnels, and the trust roots that come with it
//! verify both.
//!
//! [`select`] is a pure function of the flags and the environment. It uses ztunnel's variable
//! names and ztunnel's own parsers ([`ztunnel::config::local_state`], [`ztunnel::config::xds`],
//! [`ztunnel::config::ca`]), the flags standing for the variables they replace (`--state` for
//! `LOCAL_XDS_PATH`, `--ca-dir` for `LOCAL_CA_DIR`, `--ca-plugin-dir` for `CA_PLUGIN_DIR`), so:
//!
//! - the state comes from `LOCAL_XDS_PATH` or `LOCAL_XDS`, else from istiod (`XDS_ADDRESS`,
//!   istiod's in-cluster address by default inside Kubernetes); a local state next to an
//!   explicit `XDS_ADDRESS` is a conflict, and no source at all is [`SourceError::NoStateSource`];
//! - the certificate comes from Istio's CA (`CA_ADDRESS`, istiod by default inside Kubernetes)
//!   unless `LOCAL_CA_DIR` or `CA_PLUGIN_DIR` is set (the two kinds exclude each other), else
//!   from a local CA in [`DEFAULT_LOCAL_CA_DIR`].
//!
//! What differs from ztunnel is who asks. The xDS node is the waypoint's (node type
//! `waypoint`, its pod name and namespace, its addresses, metadata `SERVICE_ACCOUNT` and
//! `WORKLOAD_NAME`), and the CA is asked for the waypoint's own identity, without the
//! `ImpersonatedIdentity` a node proxy sends on behalf of its workloads.

use std::net::IpAddr;
use std::path::PathBuf;

use prost_types::Value;
use prost_types::value::Kind;
use ztunnel::config::{CaSource, ConfigError, Env, LocalState};
use ztunnel::xds::{NodeType, XdsConfig};

/// The local CA directory when no certificate source is configured (the quickstarts' CA).
pub const DEFAULT_LOCAL_CA_DIR: &str = "target/ztunnel-state";

/// Where the mesh state comes from.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// A file in Istio ztunnel's local config schema, hot-reloaded (`LOCAL_XDS_PATH`).
    File(PathBuf),
    /// The same schema inline (`LOCAL_XDS`).
    Inline(String),
    /// istiod over delta xDS (`XDS_ADDRESS`).
    Xds(Box<XdsConfig>),
}

/// The state and certificate sources.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The mesh state.
    pub state: StateSource,
    /// The certificate and trust roots.
    pub ca: CaSource,
}

/// The flags that stand for environment variables; `None` falls back to the variable.
#[derive(Debug, Clone, Default)]
pub struct SourceFlags {
    /// `--state` (`LOCAL_XDS_PATH`).
    pub state: Option<String>,
    /// `--ca-dir` (`LOCAL_CA_DIR`).
    pub ca_dir: Option<String>,
    /// `--ca-plugin-dir` (`CA_PLUGIN_DIR`).
    pub ca_plugin_dir: Option<String>,
}

/// The waypoint as its xDS node describes it.
#[derive(Debug, Clone)]
pub struct WaypointNode {
    /// Its namespace.
    pub namespace: String,
    /// Its name (the Gateway's); the pod name when `POD_NAME` is unset.
    pub name: String,
    /// The service account whose identity it presents.
    pub service_account: String,
    /// Its own addresses.
    pub instance_ips: Vec<IpAddr>,
}

/// Why the sources could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a local state nor istiod.
    #[error(
        "no mesh state source: set XDS_ADDRESS (istiod), or LOCAL_XDS_PATH / --state (a file in \
         Istio ztunnel's local config schema, e.g. examples/localhost.yaml), or LOCAL_XDS \
         (inline YAML); `waypoint quickstart` runs a complete local mesh instead"
    )]
    NoStateSource,
    /// A variable is invalid, or two contradict each other.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Chooses the sources from `flags` and `env` (see the module documentation).
pub fn select(
    flags: &SourceFlags,
    node: &WaypointNode,
    env: &impl Env,
) -> Result<Sources, SourceError> {
    let env = WithFlags { flags, env };
    let local = ztunnel::config::local_state(&env)?;
    let xds = ztunnel::config::xds(&env, &local)?;
    let state = match (local, xds) {
        (LocalState::File(path), _) => StateSource::File(path),
        (LocalState::Inline(yaml), _) => StateSource::Inline(yaml),
        (LocalState::None, Some(xds)) => StateSource::Xds(Box::new(describe(*xds, node))),
        (LocalState::None, None) => return Err(SourceError::NoStateSource),
    };
    let mut ca = ztunnel::config::ca(&env, DEFAULT_LOCAL_CA_DIR)?;
    if let CaSource::Istio(remote) = &mut ca {
        remote.impersonate = false;
    }
    Ok(Sources { state, ca })
}

/// The xDS node of the waypoint: ztunnel's node read from the environment, as a waypoint.
fn describe(mut xds: XdsConfig, me: &WaypointNode) -> XdsConfig {
    let node = &mut xds.node;
    node.node_type = NodeType::Waypoint;
    node.pod_namespace = me.namespace.clone();
    if node.pod_name.is_empty() {
        node.pod_name = me.name.clone();
    }
    if !me.instance_ips.is_empty() {
        node.instance_ip = me
            .instance_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
    }
    node.extra_metadata
        .insert("SERVICE_ACCOUNT".into(), string(&me.service_account));
    node.extra_metadata
        .entry("WORKLOAD_NAME".into())
        .or_insert_with(|| string(&me.name));
    xds
}

fn string(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

/// `env` with the flags in place of the variables they stand for.
struct WithFlags<'a, E> {
    flags: &'a SourceFlags,
    env: &'a E,
}

impl<E: Env> Env for WithFlags<'_, E> {
    fn var(&self, name: &str) -> Option<String> {
        let flag = match name {
            "LOCAL_XDS_PATH" => self.flags.state.as_ref(),
            "LOCAL_CA_DIR" => self.flags.ca_dir.as_ref(),
            "CA_PLUGIN_DIR" => self.flags.ca_plugin_dir.as_ref(),
            _ => None,
        };
        flag.cloned().or_else(|| self.env.var(name))
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.env.vars()
    }
}

#[cfg(test)]
mod tests;
