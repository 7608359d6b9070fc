//! The local (file) mesh config: Istio ztunnel's `LOCAL_XDS_PATH` YAML schema, so upstream
//! files load unchanged.
//!
//! ```yaml
//! workloads:
//! - uid: cluster1//v1/Pod/default/sleep
//!   name: sleep
//!   namespace: default
//!   serviceAccount: sleep
//!   workloadIps: ["127.0.0.1"]
//!   protocol: HBONE            # or TCP (default)
//!   services:
//!     default/sleep.default.svc.cluster.local: {80: 8080}
//! services:
//! - name: sleep
//!   namespace: default
//!   hostname: sleep.default.svc.cluster.local
//!   vips: ["/127.10.0.1"]      # <network>/<ip>
//!   ports: {80: 8080}
//! policies: []
//! ```
//!
//! Loading builds a complete new [`MeshState`]; nothing is applied unless the whole file is
//! valid, and swapping it in is the caller's business ([`super::StateHandle::swap`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::Policy;
use super::service::Service;
use super::store::MeshState;
use super::workload::{
    ApplicationTunnel, ConvertError, GatewayAddress, HealthStatus, Locality, NamespacedHostname,
    NetworkMode, PortMap, TunnelProtocol, Workload, identity_of,
};

/// Why a local config could not be loaded.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum LoadError {
    /// The file could not be read.
    #[error("failed to read local config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (the message carries the field and line).
    #[error("{origin}: invalid local config: {source}")]
    Yaml {
        /// The file, or `<inline>`.
        origin: String,
        /// The parse error, with its location.
        source: serde_yaml_ng::Error,
    },
    /// An entry parsed but is not valid.
    #[error("{origin}: {kind} #{index} ({name}): {source}")]
    Invalid {
        /// The file, or `<inline>`.
        origin: String,
        /// `workload` or `service`.
        kind: &'static str,
        /// Zero-based position in its list.
        index: usize,
        /// The entry's uid / `namespace/hostname`, as far as known.
        name: String,
        /// What is wrong.
        source: ConvertError,
    },
}

/// The top level of a local config file.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    /// Workloads.
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    /// Authorization policies (`rbac` local-config form).
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Services.
    #[serde(default)]
    pub services: Vec<Service>,
}

/// One workload entry: the workload's own fields plus its `services` map.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    /// Unique id (defaults to empty, which is rejected, as every workload needs one).
    #[serde(default)]
    pub uid: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account (default `default`).
    #[serde(default)]
    pub service_account: String,
    /// Trust domain (default `cluster.local`).
    #[serde(default)]
    pub trust_domain: String,
    /// IPs.
    #[serde(default)]
    pub workload_ips: Vec<IpAddr>,
    /// `TCP` (default) or `HBONE`.
    #[serde(default)]
    pub protocol: TunnelProtocol,
    /// `Standard` (default) or `HostNetwork`.
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Node name.
    #[serde(default)]
    pub node: String,
    /// Network name.
    #[serde(default)]
    pub network: String,
    /// Canonical name.
    #[serde(default)]
    pub canonical_name: String,
    /// Canonical revision.
    #[serde(default)]
    pub canonical_revision: String,
    /// Owning controller's name.
    #[serde(default)]
    pub workload_name: String,
    /// Owning controller's kind, lowercase.
    #[serde(default)]
    pub workload_type: String,
    /// Hostname (for workloads without IPs).
    #[serde(default)]
    pub hostname: String,
    /// Waypoint.
    #[serde(default)]
    pub waypoint: Option<GatewayAddress>,
    /// Network gateway.
    #[serde(default)]
    pub network_gateway: Option<GatewayAddress>,
    /// The workload terminates HBONE itself.
    #[serde(default)]
    pub native_tunnel: bool,
    /// Application tunnel.
    #[serde(default)]
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Selector policies, `"<namespace>/<name>"`.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// `Healthy` (default) or `Unhealthy`.
    #[serde(default)]
    pub status: HealthStatus,
    /// Cluster id.
    #[serde(default)]
    pub cluster_id: String,
    /// Locality.
    #[serde(default)]
    pub locality: Locality,
    /// Load-balancing weight (default 1).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Services: `"<namespace>/<hostname>"` → {service port: target port}.
    #[serde(default)]
    pub services: BTreeMap<NamespacedHostname, PortMap>,
}

fn default_capacity() -> u32 {
    1
}

impl TryFrom<LocalWorkload> for Workload {
    type Error = ConvertError;

    fn try_from(w: LocalWorkload) -> Result<Self, Self::Error> {
        if w.uid.is_empty() {
            return Err(ConvertError::MissingField { field: "uid" });
        }
        if w.namespace.is_empty() {
            return Err(ConvertError::MissingField { field: "namespace" });
        }
        let identity = identity_of(&w.trust_domain, &w.namespace, &w.service_account)?;
        let mut out = Workload::new(w.uid, identity);
        out.name = w.name;
        out.workload_ips = w.workload_ips;
        out.hostname = w.hostname;
        out.network = w.network;
        out.protocol = w.protocol;
        out.network_mode = w.network_mode;
        out.node = w.node;
        out.canonical_name = w.canonical_name;
        out.canonical_revision = w.canonical_revision;
        out.workload_name = w.workload_name;
        out.workload_type = w.workload_type;
        out.waypoint = w.waypoint;
        out.network_gateway = w.network_gateway;
        out.native_tunnel = w.native_tunnel;
        out.application_tunnel = w.application_tunnel;
        out.services = w.services;
        out.authorization_policies = w.authorization_policies;
        out.status = w.status;
        out.cluster_id = w.cluster_id;
        out.locality = w.locality;
        out.capacity = w.capacity;
        Ok(out)
    }
}

impl LocalConfig {
    /// Parses a config from YAML text; errors say which field on which line is wrong.
    /// Semantic checks (uid, identity, ...) happen in [`LocalConfig::into_state`].
    pub fn from_yaml(yaml: &str) -> Result<Self, LoadError> {
        Self::parse(yaml, "<inline>")
    }

    /// Reads and parses a config file; errors name the file.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates, naming `origin` in errors.
    fn parse(yaml: &str, origin: &str) -> Result<Self, LoadError> {
        let config: Self = if yaml.trim().is_empty() {
            // An empty document is an empty mesh, not a schema error.
            Self::default()
        } else {
            serde_yaml_ng::from_str(yaml).map_err(|source| LoadError::Yaml {
                origin: origin.to_owned(),
                source,
            })?
        };
        Ok(config)
    }

    /// Builds a complete state from this config.
    pub fn into_state(self) -> Result<MeshState, LoadError> {
        self.build("<inline>")
    }

    fn build(self, origin: &str) -> Result<MeshState, LoadError> {
        let mut builder = MeshState::builder();
        for (index, w) in self.workloads.into_iter().enumerate() {
            let name = w.uid.clone();
            let workload = Workload::try_from(w).map_err(|source| LoadError::Invalid {
                origin: origin.to_owned(),
                kind: "workload",
                index,
                name,
                source,
            })?;
            builder.insert_workload(workload);
        }
        for (index, s) in self.services.into_iter().enumerate() {
            if let Err(source) = s.validate() {
                return Err(LoadError::Invalid {
                    origin: origin.to_owned(),
                    kind: "service",
                    index,
                    name: s.key().to_string(),
                    source,
                });
            }
            builder.insert_service(s);
        }
        builder.set_policies(self.policies);
        Ok(builder.build())
    }
}

/// Reads, parses and validates a local config file into a fresh state (nothing is swapped).
pub fn load_file(path: impl AsRef<Path>) -> Result<MeshState, LoadError> {
    let path = path.as_ref();
    let config = LocalConfig::load_file(path)?;
    config.build(&path.display().to_string())
}
