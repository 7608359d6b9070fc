//! Workloads (pods, VMs, ServiceEntry endpoints) and the small address types shared with
//! services, plus their conversion from the `istio.workload` protobuf messages.
//!
//! Everything here is owned and validated: a [`Workload`] always has a uid, a namespace and a
//! valid SPIFFE identity, so the data path never re-checks what xDS or the local file sent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hbone::Identity;
use hbone::identity::IdentityError;
use proto::istio::workload as pb;

/// Trust domain used when a workload does not name one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Service account used when a workload does not name one (as istiod does).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// HBONE port of a gateway or waypoint when none is given.
pub const DEFAULT_HBONE_PORT: u16 = 15008;

/// Why a protobuf resource (or a local-config entry) is not a valid workload or service.
///
/// Every variant names the offending field, so a NACK or a log line says exactly what to fix.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// A field that must be set is empty.
    #[error("field {field} must not be empty")]
    MissingField {
        /// The field, e.g. `uid`.
        field: &'static str,
    },
    /// An IP address is neither 4 nor 16 bytes long.
    #[error("field {field}: an IP address must be 4 or 16 bytes, got {len}")]
    IpLength {
        /// The field holding the address.
        field: &'static str,
        /// Length of the rejected byte string.
        len: usize,
    },
    /// The trust domain, namespace and service account do not form a valid SPIFFE identity.
    #[error("invalid identity (trustDomain/namespace/serviceAccount): {0}")]
    Identity(#[from] IdentityError),
    /// An enum field holds a value this proxy does not know.
    #[error("field {field}: unknown enum value {value}")]
    UnknownEnum {
        /// The enum field.
        field: &'static str,
        /// The raw wire value.
        value: i32,
    },
    /// `tunnel_protocol` is `LEGACY_ISTIO_MTLS`, which ztunnel neither sends nor accepts.
    #[error("field tunnel_protocol: LEGACY_ISTIO_MTLS is not supported")]
    LegacyIstioMtls,
    /// A port number does not fit in 16 bits.
    #[error("field {field}: port {value} is out of range")]
    PortOutOfRange {
        /// The port field.
        field: &'static str,
        /// The rejected value.
        value: u32,
    },
    /// A `namespace/hostname` key has no `/` or an empty part.
    #[error("field {field}: {value:?} is not of the form namespace/hostname")]
    NamespacedHostname {
        /// The field holding the key.
        field: &'static str,
        /// The rejected key.
        value: String,
    },
    /// A gateway address (waypoint or network gateway) has no destination.
    #[error("field {field}: gateway address has no destination")]
    MissingGatewayDestination {
        /// The gateway field.
        field: &'static str,
    },
}

/// How a workload receives mesh traffic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum TunnelProtocol {
    /// Plain TCP to `ip:targetPort` (proto `NONE`; local config `TCP`).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// HBONE to `ip:15008` (proto `HBONE`; local config `HBONE`).
    #[serde(rename = "HBONE")]
    Hbone,
}

/// Whether a workload takes part in load balancing.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum HealthStatus {
    /// Selected by load balancing.
    #[default]
    Healthy,
    /// Only selected when the service's health policy is `AllowAll`.
    Unhealthy,
}

/// Network mode of a workload.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum NetworkMode {
    /// The workload has its own IPs.
    #[default]
    Standard,
    /// The workload shares the node's IPs; it is not indexed by address.
    HostNetwork,
}

/// Where a workload runs, for locality-aware load balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: String,
    /// Zone within the region.
    pub zone: String,
    /// Sub-zone within the zone.
    pub subzone: String,
}

/// Protocol spoken by an application tunnel in front of the workload.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum ApplicationTunnelProtocol {
    /// No tunnel: plain TCP to the application.
    #[default]
    #[serde(rename = "NONE")]
    None,
    /// A PROXY protocol header precedes the application bytes.
    #[serde(rename = "PROXY")]
    Proxy,
}

/// An application-level tunnel the workload terminates itself (e.g. a sandwiched waypoint).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationTunnel {
    /// The tunnel protocol.
    pub protocol: ApplicationTunnelProtocol,
    /// Port to send tunnelled traffic to; `None` means the original target port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// An IP address on a named network (`"<network>/<ip>"`; the default network is `""`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: String,
    /// The address.
    pub ip: IpAddr,
}

impl NetworkAddress {
    /// Builds an address on `network`.
    pub fn new(network: impl Into<String>, ip: IpAddr) -> Self {
        Self {
            network: network.into(),
            ip,
        }
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.ip)
    }
}

impl FromStr for NetworkAddress {
    type Err = String;

    /// Parses `"<network>/<ip>"`; the network may be empty (`"/10.0.0.1"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?} is not of the form <network>/<ip>"))?;
        let ip = ip
            .parse()
            .map_err(|e| format!("{s:?} is not of the form <network>/<ip>: {e}"))?;
        Ok(Self::new(network, ip))
    }
}

/// A service key: `"<namespace>/<hostname>"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedHostname {
    /// Namespace of the service.
    pub namespace: String,
    /// Hostname of the service, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
}

impl NamespacedHostname {
    /// Builds a key from its parts.
    pub fn new(namespace: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            hostname: hostname.into(),
        }
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

impl FromStr for NamespacedHostname {
    type Err = String;

    /// Parses `"<namespace>/<hostname>"`; neither part may be empty, the hostname has no `/`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
                Ok(Self::new(ns, host))
            }
            _ => Err(format!("{s:?} is not of the form <namespace>/<hostname>")),
        }
    }
}

/// Implements string-form serde for a `FromStr + Display` type.
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
serde_via_str!(NetworkAddress);
serde_via_str!(NamespacedHostname);

/// Where a gateway (waypoint or network gateway) is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    /// A concrete address.
    Address(NetworkAddress),
    /// A service, resolved through the service index.
    Hostname(NamespacedHostname),
}

impl FromStr for GatewayDestination {
    type Err = String;

    /// Parses `"<network>/<ip>"` first, then `"<namespace>/<hostname>"` (Istio's order).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<NetworkAddress>() {
            return Ok(Self::Address(addr));
        }
        s.parse::<NamespacedHostname>()
            .map(Self::Hostname)
            .map_err(|_| format!("{s:?} is neither <network>/<ip> nor <namespace>/<hostname>"))
    }
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(a) => a.fmt(f),
            Self::Hostname(h) => h.fmt(f),
        }
    }
}
serde_via_str!(GatewayDestination);

/// A waypoint or network gateway: where to send HBONE traffic on a workload's behalf.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// The gateway's address or service.
    pub destination: GatewayDestination,
    /// Its HBONE (mTLS) port; defaults to 15008.
    #[serde(default = "default_hbone_port")]
    pub hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    DEFAULT_HBONE_PORT
}

/// Port mapping of one workload for one service: service port → target port.
pub type PortMap = BTreeMap<u16, u16>;

/// A workload: one pod, VM or ServiceEntry endpoint, with its identity and addresses.
///
/// Built by [`Workload::new`] (then fields set directly), by `TryFrom<proto Workload>` or by
/// the local config loader. The SPIFFE identity is validated at construction and fixed there.
///
/// Serialises (for `config_dump`) in upstream ztunnel's camelCase field style, with the
/// identity as its `spiffe://` URI.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Unique id, the xDS primary key, e.g. `cluster1//v1/Pod/default/sleep`.
    pub uid: String,
    /// Name (pod name).
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// SPIFFE identity (`trust_domain`, namespace, service account); see [`Workload::identity`].
    #[serde(serialize_with = "serialize_display")]
    identity: Identity,
    /// IPs of the workload; empty for hostname-only workloads.
    pub workload_ips: Vec<IpAddr>,
    /// DNS hostname for workloads without IPs.
    pub hostname: String,
    /// Network the IPs belong to; empty for the default network.
    pub network: String,
    /// How the workload receives mesh traffic.
    pub protocol: TunnelProtocol,
    /// Network mode (host-network workloads are not indexed by IP).
    pub network_mode: NetworkMode,
    /// Node the workload runs on.
    pub node: String,
    /// `service.istio.io/canonical-name`.
    pub canonical_name: String,
    /// `service.istio.io/canonical-revision`.
    pub canonical_revision: String,
    /// Name of the owning controller (e.g. deployment name).
    pub workload_name: String,
    /// Kind of the owning controller, lowercase (`deployment`, `cronjob`, `pod`, `job`).
    pub workload_type: String,
    /// Waypoint that serves workload-addressed traffic to this workload.
    pub waypoint: Option<GatewayAddress>,
    /// Gateway to reach this workload from another network.
    pub network_gateway: Option<GatewayAddress>,
    /// The workload terminates HBONE itself.
    pub native_tunnel: bool,
    /// Application tunnel in front of the workload.
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Services this workload is an endpoint of, with its port mapping for each.
    pub services: BTreeMap<NamespacedHostname, PortMap>,
    /// Selector policies that apply to it, as `"<namespace>/<name>"`.
    pub authorization_policies: Vec<String>,
    /// Health, for load balancing.
    pub status: HealthStatus,
    /// Cluster id.
    pub cluster_id: String,
    /// Locality, for load balancing.
    pub locality: Locality,
    /// Relative load-balancing weight (default 1).
    pub capacity: u32,
}

impl Workload {
    /// Builds a workload with the given uid and identity; the namespace is the identity's and
    /// every other field takes its default (no IPs, TCP, healthy, capacity 1).
    pub fn new(uid: impl Into<String>, identity: Identity) -> Self {
        Self {
            uid: uid.into(),
            name: String::new(),
            namespace: identity.namespace().to_owned(),
            identity,
            workload_ips: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: TunnelProtocol::Tcp,
            network_mode: NetworkMode::Standard,
            node: String::new(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_name: String::new(),
            workload_type: String::new(),
            waypoint: None,
            network_gateway: None,
            native_tunnel: false,
            application_tunnel: None,
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            status: HealthStatus::Healthy,
            cluster_id: String::new(),
            locality: Locality::default(),
            capacity: 1,
        }
    }

    /// The workload's SPIFFE identity.
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    /// The trust domain of the identity.
    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }

    /// The service account of the identity.
    pub fn service_account(&self) -> &str {
        self.identity.service_account()
    }

    /// Network addresses under which the workload is indexed (none for host-network ones).
    pub fn network_addresses(&self) -> impl Iterator<Item = NetworkAddress> + '_ {
        let indexed = self.network_mode == NetworkMode::Standard;
        self.workload_ips
            .iter()
            .filter(move |_| indexed)
            .map(|ip| NetworkAddress::new(self.network.clone(), *ip))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workload {} ({})", self.uid, self.identity)
    }
}

/// Serialises a value as its `Display` string.
fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Builds the identity, applying Istio's defaults for an empty trust domain and service account.
pub(crate) fn identity_of(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<Identity, ConvertError> {
    let td = if trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        trust_domain
    };
    let sa = if service_account.is_empty() {
        DEFAULT_SERVICE_ACCOUNT
    } else {
        service_account
    };
    Ok(Identity::new(td, namespace, sa)?)
}

// === protobuf conversion ===

/// Decodes a 4- or 16-byte IP address.
pub(crate) fn ip_from_bytes(field: &'static str, b: &[u8]) -> Result<IpAddr, ConvertError> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(b) {
        return Ok(IpAddr::from(v6));
    }
    Err(ConvertError::IpLength {
        field,
        len: b.len(),
    })
}

/// Narrows a protobuf port to 16 bits.
pub(crate) fn port(field: &'static str, value: u32) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::PortOutOfRange { field, value })
}

/// Decodes a protobuf enum, naming the field on failure.
pub(crate) fn enum_value<E: TryFrom<i32>>(
    field: &'static str,
    value: i32,
) -> Result<E, ConvertError> {
    E::try_from(value).map_err(|_| ConvertError::UnknownEnum { field, value })
}

/// Converts a protobuf port list into a port map.
pub(crate) fn port_map(field: &'static str, ports: &[pb::Port]) -> Result<PortMap, ConvertError> {
    ports
        .iter()
        .map(|p| Ok((port(field, p.service_port)?, port(field, p.target_port)?)))
        .collect()
}

/// Converts a protobuf gateway address.
pub(crate) fn gateway_address(
    field: &'static str,
    g: pb::GatewayAddress,
) -> Result<GatewayAddress, ConvertError> {
    let destination = match g.destination {
        Some(pb::gateway_address::Destination::Address(a)) => GatewayDestination::Address(
            NetworkAddress::new(a.network, ip_from_bytes(field, &a.address)?),
        ),
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            if h.namespace.is_empty() || h.hostname.is_empty() {
                return Err(ConvertError::NamespacedHostname {
                    field,
                    value: format!("{}/{}", h.namespace, h.hostname),
                });
            }
            GatewayDestination::Hostname(NamespacedHostname::new(h.namespace, h.hostname))
        }
        None => return Err(ConvertError::MissingGatewayDestination { field }),
    };
    let hbone_mtls_port = match g.hbone_mtls_port {
        0 => DEFAULT_HBONE_PORT,
        p => port(field, p)?,
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

impl TryFrom<pb::Workload> for Workload {
    type Error = ConvertError;

    /// Validates a workload from xDS. `LEGACY_ISTIO_MTLS` is rejected (ztunnel never speaks
    /// it); an empty trust domain / service account default to `cluster.local` / `default`.
    fn try_from(w: pb::Workload) -> Result<Self, Self::Error> {
        if w.uid.is_empty() {
            return Err(ConvertError::MissingField { field: "uid" });
        }
        if w.namespace.is_empty() {
            return Err(ConvertError::MissingField { field: "namespace" });
        }
        let identity = identity_of(&w.trust_domain, &w.namespace, &w.service_account)?;
        let protocol = match enum_value::<pb::TunnelProtocol>("tunnel_protocol", w.tunnel_protocol)?
        {
            pb::TunnelProtocol::None => TunnelProtocol::Tcp,
            pb::TunnelProtocol::Hbone => TunnelProtocol::Hbone,
            pb::TunnelProtocol::LegacyIstioMtls => return Err(ConvertError::LegacyIstioMtls),
        };
        let network_mode = match enum_value::<pb::NetworkMode>("network_mode", w.network_mode)? {
            pb::NetworkMode::Standard => NetworkMode::Standard,
            pb::NetworkMode::HostNetwork => NetworkMode::HostNetwork,
        };
        let status = match enum_value::<pb::WorkloadStatus>("status", w.status)? {
            pb::WorkloadStatus::Healthy => HealthStatus::Healthy,
            pb::WorkloadStatus::Unhealthy => HealthStatus::Unhealthy,
        };
        let workload_type = enum_value::<pb::WorkloadType>("workload_type", w.workload_type)?
            .as_str_name()
            .to_ascii_lowercase();
        let workload_ips = w
            .addresses
            .iter()
            .map(|a| ip_from_bytes("addresses", a))
            .collect::<Result<_, _>>()?;
        let waypoint = w
            .waypoint
            .map(|g| gateway_address("waypoint", g))
            .transpose()?;
        let network_gateway = w
            .network_gateway
            .map(|g| gateway_address("network_gateway", g))
            .transpose()?;
        let application_tunnel = match w.application_tunnel {
            Some(t) => Some(ApplicationTunnel {
                protocol: match enum_value("application_tunnel.protocol", t.protocol)? {
                    pb::application_tunnel::Protocol::None => ApplicationTunnelProtocol::None,
                    pb::application_tunnel::Protocol::Proxy => ApplicationTunnelProtocol::Proxy,
                },
                port: match t.port {
                    0 => None,
                    p => Some(port("application_tunnel.port", p)?),
                },
            }),
            None => None,
        };
        let services = w
            .services
            .into_iter()
            .map(|(key, ports)| {
                let name = key.parse().map_err(|_| ConvertError::NamespacedHostname {
                    field: "services",
                    value: key.clone(),
                })?;
                Ok((name, port_map("services", &ports.ports)?))
            })
            .collect::<Result<_, ConvertError>>()?;
        let locality = w.locality.unwrap_or_default();
        Ok(Self {
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            identity,
            workload_ips,
            hostname: w.hostname,
            network: w.network,
            protocol,
            network_mode,
            node: w.node,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            workload_type,
            waypoint,
            network_gateway,
            native_tunnel: w.native_tunnel,
            application_tunnel,
            services,
            authorization_policies: w.authorization_policies,
            status,
            cluster_id: w.cluster_id,
            locality: Locality {
                region: locality.region,
                zone: locality.zone,
                subzone: locality.subzone,
            },
            capacity: w.capacity.unwrap_or(1),
        })
    }
}
