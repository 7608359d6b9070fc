//! The waypoint controller's configuration file (`waypoint controller --config <file>`): the
//! `config.yaml` the Helm chart `manifests/charts/waypoint-controller` renders into its
//! ConfigMap. It names the GatewayClass the controller serves and holds the template of every
//! waypoint it provisions. Input of [`reconcile`](super::reconcile), not part of the data path.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use serde::Deserialize;

/// The chart's default GatewayClass name.
pub const DEFAULT_GATEWAY_CLASS: &str = "ambient-waypoint";
/// The chart's default `controllerName`.
pub const DEFAULT_CONTROLLER_NAME: &str = "ambient.local/waypoint-controller";
/// istiod's in-cluster address, the default `XDS_ADDRESS` and `CA_ADDRESS` of the waypoints.
pub const DEFAULT_ISTIOD_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// Where the waypoints find istiod's root certificate (the `istio-ca-root-cert` ConfigMap
/// istiod publishes in every namespace, mounted by the controller): the default
/// `XDS_ROOT_CA` and `CA_ROOT_CA`.
pub const DEFAULT_ROOT_CA: &str = "/var/run/secrets/istio/root-cert.pem";
/// Where the waypoints find their projected service account token (audience `istio-ca`):
/// the default `AUTH_TOKEN`.
pub const DEFAULT_TOKEN: &str = "/var/run/secrets/tokens/istio-token";

/// The chart's default name of the ClusterRole that lets waypoints read their L7
/// configuration (and, in [`ConfigScope::Cluster`], of the ClusterRoleBinding granting it).
pub const DEFAULT_CONFIG_CLUSTER_ROLE: &str = "waypoint-controller-waypoint-config";

/// Where each waypoint reads its L7 configuration (VirtualServices, HTTPRoutes,
/// AuthorizationPolicies, …) from the API server (`WAYPOINT_CONFIG_SOURCE=k8s://`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigScope {
    /// Its Gateway's namespace only (`WAYPOINT_CONFIG_NAMESPACES=<namespace>`), through a
    /// RoleBinding there to the configuration ClusterRole. The default.
    #[default]
    Namespace,
    /// Every namespace (`WAYPOINT_CONFIG_NAMESPACES` empty), through the one
    /// ClusterRoleBinding whose subjects the controller keeps equal to the waypoints it
    /// manages.
    Cluster,
}

/// The controller's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControllerConfig {
    /// The GatewayClass the controller is installed for (informational: the controller serves
    /// every class whose `spec.controllerName` is [`Self::controller_name`]). Default
    /// `ambient-waypoint`.
    #[serde(default = "default_class")]
    pub gateway_class_name: String,
    /// The `spec.controllerName` of the classes the controller serves, also its field manager
    /// for server-side apply. Default `ambient.local/waypoint-controller`.
    #[serde(default = "default_controller")]
    pub controller_name: String,
    /// Namespaces whose Gateways are served; empty (the default) means every namespace.
    #[serde(default)]
    pub watch_namespaces: Vec<String>,
    /// What goes into every waypoint.
    pub waypoint: WaypointTemplate,
    /// Where istiod's mesh configuration is read, to be copied next to every waypoint.
    #[serde(default)]
    pub mesh_config: MeshConfigSource,
}

/// istiod's mesh configuration: the ConfigMap whose `mesh` key (the `meshConfig` YAML) the
/// controller copies into a ConfigMap `<waypoint>-istio-mesh` in each Gateway's namespace,
/// mounted in the waypoint at `/etc/istio/config` (its default `MESH_CONFIG_FILE`,
/// `/etc/istio/config/mesh`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfigSource {
    /// istiod's namespace. Default `istio-system`.
    #[serde(default = "default_mesh_namespace")]
    pub namespace: String,
    /// The ConfigMap's name. Default `istio`.
    #[serde(default = "default_mesh_name")]
    pub name: String,
}

impl Default for MeshConfigSource {
    fn default() -> Self {
        Self {
            namespace: default_mesh_namespace(),
            name: default_mesh_name(),
        }
    }
}

fn default_mesh_namespace() -> String {
    "istio-system".into()
}

fn default_mesh_name() -> String {
    "istio".into()
}

/// The template of every waypoint's Deployment.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointTemplate {
    /// The waypoint image (`<hub>/<image>:<tag>`; its entrypoint is the `waypoint` binary).
    /// Required.
    pub image: String,
    /// Image pull policy; unset (the default) leaves Kubernetes' default.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// Names of Secrets used to pull the image, in each Gateway's namespace. Default none.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Replicas of each waypoint Deployment. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Seconds between SIGTERM and SIGKILL for a waypoint pod. Default 30.
    #[serde(default = "default_grace")]
    pub termination_grace_period_seconds: i64,
    /// The waypoint container's environment besides the per-Gateway variables
    /// (`WAYPOINT_NAME`, `SERVICE_ACCOUNT`, `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`,
    /// `ISTIO_META_WAYPOINT_FOR`, which it cannot override). Unset, `XDS_ADDRESS` and
    /// `CA_ADDRESS` are istiod (`istiod.istio-system.svc:15012`), `XDS_ROOT_CA` and
    /// `CA_ROOT_CA` the mounted `istio-ca-root-cert` (`/var/run/secrets/istio/root-cert.pem`),
    /// `AUTH_TOKEN` the projected token (`/var/run/secrets/tokens/istio-token`),
    /// `TRUST_DOMAIN` and `CLUSTER_DOMAIN` `cluster.local`, `WAYPOINT_CONFIG_SOURCE`
    /// `k8s://` and `WAYPOINT_CONFIG_NAMESPACES` the Gateway's namespace (empty in `cluster`
    /// [`Self::config_scope`]).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU and memory of each waypoint. Default none.
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// Labels added to the waypoint pods. Default none.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Annotations added to the waypoint pods. The Prometheus scrape annotations
    /// (`prometheus.io/scrape: "true"`, `prometheus.io/port: "15020"`,
    /// `prometheus.io/path: /stats/prometheus`) are always set unless given here.
    #[serde(default)]
    pub pod_annotations: BTreeMap<String, String>,
    /// Node selector of the waypoint pods. Default none.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the waypoint pods. Default none.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the waypoint pods. Default none.
    #[serde(default)]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints of the waypoint pods. Default none.
    #[serde(default)]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Where the waypoints read their L7 configuration from the API server: `namespace` (the
    /// default: their Gateway's namespace) or `cluster` (every namespace). Sets the defaults
    /// of `WAYPOINT_CONFIG_SOURCE` (`k8s://`) and `WAYPOINT_CONFIG_NAMESPACES`, which
    /// [`Self::env`] overrides, and which binding grants the read access.
    #[serde(default)]
    pub config_scope: ConfigScope,
    /// The ClusterRole granting `get`, `list` and `watch` on the kinds the waypoints read
    /// (installed by the chart); in `cluster` scope also the name of the ClusterRoleBinding
    /// whose subjects the controller manages. Default `waypoint-controller-waypoint-config`.
    #[serde(default = "default_config_cluster_role")]
    pub config_cluster_role: String,
}

fn default_class() -> String {
    DEFAULT_GATEWAY_CLASS.into()
}

fn default_controller() -> String {
    DEFAULT_CONTROLLER_NAME.into()
}

fn default_config_cluster_role() -> String {
    DEFAULT_CONFIG_CLUSTER_ROLE.into()
}

fn default_replicas() -> i32 {
    1
}

fn default_grace() -> i64 {
    30
}

/// Why the configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (`at` is the field path).
    #[error("{at}: {message}")]
    Parse {
        /// Field path of the problem (`waypoint.replicas`).
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl ControllerConfig {
    /// Parses and validates the YAML of the configuration file.
    pub fn from_yaml(yaml: &str) -> Result<Self, SettingsError> {
        let de = serde_yaml_ng::Deserializer::from_str(yaml);
        let config: ControllerConfig =
            serde_path_to_error::deserialize(de).map_err(|e| SettingsError::Parse {
                at: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the configuration file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&yaml)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, message: &str| SettingsError::Invalid {
            field,
            message: message.to_string(),
        };
        if self
            .controller_name
            .split_once('/')
            .is_none_or(|(d, p)| d.is_empty() || p.is_empty())
        {
            return Err(invalid(
                "controllerName",
                "must be a domain-prefixed path (example.net/controller)",
            ));
        }
        if self.waypoint.image.trim().is_empty() {
            return Err(invalid("waypoint.image", "is required"));
        }
        if self.waypoint.replicas < 0 {
            return Err(invalid("waypoint.replicas", "must not be negative"));
        }
        if self.waypoint.termination_grace_period_seconds <= 0 {
            return Err(invalid(
                "waypoint.terminationGracePeriodSeconds",
                "must be a positive number of seconds",
            ));
        }
        if self.mesh_config.namespace.trim().is_empty() {
            return Err(invalid("meshConfig.namespace", "must not be empty"));
        }
        if self.mesh_config.name.trim().is_empty() {
            return Err(invalid("meshConfig.name", "must not be empty"));
        }
        if self.waypoint.config_cluster_role.trim().is_empty() {
            return Err(invalid("waypoint.configClusterRole", "must not be empty"));
        }
        Ok(())
    }

    /// The value of the managed-by label (`gateway.istio.io/managed`) on the objects the
    /// controller creates: the controller name with `/` replaced by `-`, as istiod's
    /// `istio.io-mesh-controller`.
    pub fn managed_label(&self) -> String {
        self.controller_name.replace('/', "-")
    }

    /// The waypoints' cluster DNS domain (`CLUSTER_DOMAIN` of [`WaypointTemplate::env`],
    /// default `cluster.local`).
    pub fn cluster_domain(&self) -> &str {
        self.waypoint
            .env
            .get("CLUSTER_DOMAIN")
            .map_or("cluster.local", String::as_str)
    }
}
