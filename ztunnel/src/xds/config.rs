//! Settings of the xDS client, from the environment with upstream ztunnel's variable names.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `XDS_ADDRESS` | istiod's address; empty disables xDS | `https://istiod.istio-system.svc:15012` in Kubernetes (`KUBERNETES_SERVICE_HOST` set), else disabled |
//! | `XDS_ROOT_CA` | PEM file (or inline PEM) of the root istiod's certificate chains to | `./var/run/secrets/istio/root-cert.pem` |
//! | `ALT_XDS_HOSTNAME` | server name verified instead of the address's host | — |
//! | `AUTH_TOKEN` | token file (or the token itself) sent as `Bearer` | `./var/run/secrets/tokens/istio-token` if present |
//! | `ISTIO_META_CLUSTER_ID`, `CLUSTER_ID` | cluster id (metadata `CLUSTER_ID`, header `clusterid`) | `Kubernetes` |
//! | `INSTANCE_IP` | this pod's IP (node id, metadata `INSTANCE_IPS`) | `1.1.1.1` (as upstream) |
//! | `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME` | node id and metadata `NAME`, `NAMESPACE`, `NODE_NAME` | empty |
//! | `ISTIO_META_<k>`, `ISTIO_METAJSON_<k>` | extra node metadata (string / JSON value) | — |
//! | `XDS_HEADER_<name>` | extra gRPC metadata on the stream | — |
//!
//! The prefixed variables cannot be listed through [`Env`]; pass the process environment to
//! [`XdsConfig::with_prefixed_vars`].
//!
//! Differences from upstream: with `XDS_ADDRESS` unset outside Kubernetes xDS is off (upstream
//! dials `https://localhost:15012`), so local-file runs need no `XDS_ADDRESS=""`; plaintext
//! `http://` addresses and `XDS_ROOT_CA=SYSTEM` are refused.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use proto::envoy::config::core::v3::Node;

use super::channel::{self, ControlPlane};
use crate::config::{ConfigError, Env};

/// `INSTANCE_IP` when unset, as upstream.
pub const DEFAULT_INSTANCE_IP: &str = "1.1.1.1";

/// Everything the xDS client needs.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    /// The control plane and how to authenticate to it.
    pub control_plane: ControlPlane,
    /// How this node proxy describes itself to istiod.
    pub node: NodeInfo,
}

/// The kind of proxy, the first field of the node id (Istio's `NodeType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeType {
    /// A node proxy: `ztunnel`.
    #[default]
    Ztunnel,
    /// A waypoint: `waypoint`.
    Waypoint,
}

impl NodeType {
    /// The name istiod parses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ztunnel => "ztunnel",
            Self::Waypoint => "waypoint",
        }
    }
}

/// The proxy as istiod knows it: the xDS `Node`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// What kind of proxy this is.
    pub node_type: NodeType,
    /// This pod's IP (`INSTANCE_IP`); several are comma-separated, the first is in the node id.
    pub instance_ip: String,
    /// This pod's name (`POD_NAME`).
    pub pod_name: String,
    /// This pod's namespace (`POD_NAMESPACE`).
    pub pod_namespace: String,
    /// The Kubernetes node (`NODE_NAME`).
    pub node_name: String,
    /// The cluster id.
    pub cluster_id: String,
    /// Extra metadata (`ISTIO_META_*`, `ISTIO_METAJSON_*`); the fields above win on a clash.
    pub extra_metadata: BTreeMap<String, Value>,
}

impl XdsConfig {
    /// Reads the settings; `Ok(None)` when xDS is disabled (see the module table).
    pub fn from_env(env: &impl Env) -> Result<Option<Self>, ConfigError> {
        let Some(address) = channel::address_from_env(env, "XDS_ADDRESS")? else {
            return Ok(None);
        };
        let cluster_id = channel::cluster_id_from_env(env);
        let control_plane = ControlPlane {
            address,
            root_cert: channel::root_cert_from_env(env, "XDS_ROOT_CA")?,
            alt_hostname: channel::var(env, "ALT_XDS_HOSTNAME"),
            token: channel::token_from_env(env),
            cluster_id: cluster_id.clone(),
            headers: Vec::new(),
        };
        let node = NodeInfo {
            node_type: NodeType::Ztunnel,
            instance_ip: channel::var(env, "INSTANCE_IP")
                .unwrap_or_else(|| DEFAULT_INSTANCE_IP.into()),
            pod_name: channel::var(env, "POD_NAME").unwrap_or_default(),
            pod_namespace: channel::var(env, "POD_NAMESPACE").unwrap_or_default(),
            node_name: channel::var(env, "NODE_NAME").unwrap_or_default(),
            cluster_id,
            extra_metadata: BTreeMap::new(),
        };
        Ok(Some(Self {
            control_plane,
            node,
        }))
    }

    /// Adds what comes from prefixed variables (e.g. `std::env::vars()`): `XDS_HEADER_<name>`
    /// as stream metadata, `ISTIO_META_<key>` as string node metadata and
    /// `ISTIO_METAJSON_<key>` as JSON node metadata.
    pub fn with_prefixed_vars(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        self.control_plane.headers = channel::headers_from_vars("XDS_HEADER_", vars.clone())?;
        for (key, value) in vars {
            if let Some(k) = key.strip_prefix("ISTIO_METAJSON_") {
                let json: serde_json::Value =
                    serde_json::from_str(&value).map_err(|e| ConfigError::Invalid {
                        name: "ISTIO_METAJSON_*",
                        value: key.clone(),
                        reason: e.to_string(),
                    })?;
                self.node
                    .extra_metadata
                    .insert(k.to_string(), json_value(json));
            } else if let Some(k) = key.strip_prefix("ISTIO_META_") {
                self.node
                    .extra_metadata
                    .insert(k.to_string(), string(value));
            }
        }
        Ok(self)
    }
}

impl NodeInfo {
    /// The node id istiod parses: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`
    /// (`<type>` is `ztunnel` or `waypoint`; `<ip>` the first of the instance IPs).
    pub fn id(&self) -> String {
        let kind = self.node_type.as_str();
        let ip = self
            .instance_ip
            .split(',')
            .next()
            .unwrap_or_default()
            .trim();
        let (pod, ns) = (&self.pod_name, &self.pod_namespace);
        format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
    }

    /// The xDS `Node`: the id and the metadata `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`,
    /// `CLUSTER_ID` plus the extra metadata.
    pub fn to_proto(&self) -> Node {
        let mut fields = self.extra_metadata.clone();
        for (key, value) in [
            ("NAME", &self.pod_name),
            ("NAMESPACE", &self.pod_namespace),
            ("INSTANCE_IPS", &self.instance_ip),
            ("NODE_NAME", &self.node_name),
            ("CLUSTER_ID", &self.cluster_id),
        ] {
            fields.insert(key.to_string(), string(value.clone()));
        }
        Node {
            id: self.id(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }
}

fn string(value: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(value)),
    }
}

/// A JSON value as a `google.protobuf.Value`.
fn json_value(json: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match json {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        // Every JSON number has an f64 approximation (precision may be lost, as upstream).
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}
