//! Services: a hostname with VIPs and ports, backed by the workloads that name it in their
//! `services` map, plus conversion from the `istio.workload.Service` protobuf message.

use proto::istio::workload as pb;

use super::workload::{
    ConvertError, GatewayAddress, NamespacedHostname, NetworkAddress, PortMap, enum_value,
    gateway_address, ip_from_bytes, port_map,
};

/// A locality scope that load balancing can prefer (local config: `Region`, `Zone`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum LoadBalancerScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same sub-zone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// How routing preferences are applied.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum LoadBalancerMode {
    /// Ignore the routing preferences (proto `UNSPECIFIED_MODE`).
    #[default]
    Standard,
    /// Only endpoints matching every preferred scope; otherwise none.
    Strict,
    /// Prefer the endpoints matching the most scopes, fall back to the others.
    Failover,
    /// No endpoint selection: traffic goes to the original destination address.
    Passthrough,
}

/// Which endpoints load balancing may pick.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
pub enum LoadBalancerHealthPolicy {
    /// Healthy endpoints only.
    #[default]
    OnlyHealthy,
    /// Unhealthy endpoints too.
    AllowAll,
}

/// Load-balancing settings of a service (local config field `loadBalancer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// Preferred scopes, most important first.
    #[serde(default)]
    pub routing_preferences: Vec<LoadBalancerScope>,
    /// How the preferences apply.
    #[serde(default)]
    pub mode: LoadBalancerMode,
    /// Which endpoints are eligible.
    #[serde(default)]
    pub health_policy: LoadBalancerHealthPolicy,
}

/// IP families a service accepts (local config: `Dual`, `IPv4`, `IPv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum IpFamily {
    /// Both.
    Dual,
    /// IPv4 only.
    IPv4,
    /// IPv6 only.
    IPv6,
}

/// A service: a `namespace/hostname` with VIPs and ports.
///
/// Its endpoints are not stored here but derived by the state store from workloads' `services`
/// maps, so workload and service updates can arrive in any order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hostname, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    /// Virtual IPs, each on a network.
    #[serde(default)]
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port; a target of 0 means "use the endpoint's own mapping".
    #[serde(default)]
    pub ports: PortMap,
    /// Identities the endpoints may present (SPIFFE URIs).
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Waypoint serving traffic addressed to this service.
    #[serde(default)]
    pub waypoint: Option<GatewayAddress>,
    /// Load-balancing settings (`None` = standard, healthy only).
    #[serde(default, alias = "loadBalancing")]
    pub load_balancer: Option<LoadBalancer>,
    /// Accepted IP families (`None` = derived from the addresses).
    #[serde(default)]
    pub ip_families: Option<IpFamily>,
    /// Preferred among services sharing the hostname in other namespaces.
    #[serde(default)]
    pub canonical: bool,
}

impl Service {
    /// The primary key, `namespace/hostname`.
    pub fn key(&self) -> NamespacedHostname {
        NamespacedHostname::new(self.namespace.clone(), self.hostname.clone())
    }

    /// The load-balancing mode (standard when unset).
    pub fn lb_mode(&self) -> LoadBalancerMode {
        self.load_balancer
            .as_ref()
            .map(|lb| lb.mode)
            .unwrap_or_default()
    }

    /// Checks the fields the local config cannot type: non-empty name, namespace and hostname.
    pub(crate) fn validate(&self) -> Result<(), ConvertError> {
        for (field, value) in [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("hostname", &self.hostname),
        ] {
            if value.is_empty() {
                return Err(ConvertError::MissingField { field });
            }
        }
        Ok(())
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: pb::Service) -> Result<Self, Self::Error> {
        use pb::load_balancing::{HealthPolicy, Mode, Scope};
        let vips = s
            .addresses
            .iter()
            .map(|a| {
                Ok(NetworkAddress::new(
                    a.network.clone(),
                    ip_from_bytes("addresses", &a.address)?,
                ))
            })
            .collect::<Result<_, ConvertError>>()?;
        let waypoint = s
            .waypoint
            .map(|g| gateway_address("waypoint", g))
            .transpose()?;
        let load_balancer = match s.load_balancing {
            None => None,
            Some(lb) => Some(LoadBalancer {
                routing_preferences: lb
                    .routing_preference
                    .iter()
                    .map(|v| {
                        Ok(match enum_value(field::SCOPE, *v)? {
                            Scope::Region => LoadBalancerScope::Region,
                            Scope::Zone => LoadBalancerScope::Zone,
                            Scope::Subzone => LoadBalancerScope::Subzone,
                            Scope::Node => LoadBalancerScope::Node,
                            Scope::Cluster => LoadBalancerScope::Cluster,
                            Scope::Network => LoadBalancerScope::Network,
                            Scope::UnspecifiedScope => {
                                return Err(ConvertError::UnknownEnum {
                                    field: field::SCOPE,
                                    value: *v,
                                });
                            }
                        })
                    })
                    .collect::<Result<_, ConvertError>>()?,
                mode: match enum_value("load_balancing.mode", lb.mode)? {
                    Mode::UnspecifiedMode => LoadBalancerMode::Standard,
                    Mode::Strict => LoadBalancerMode::Strict,
                    Mode::Failover => LoadBalancerMode::Failover,
                    Mode::Passthrough => LoadBalancerMode::Passthrough,
                },
                health_policy: match enum_value("load_balancing.health_policy", lb.health_policy)? {
                    HealthPolicy::OnlyHealthy => LoadBalancerHealthPolicy::OnlyHealthy,
                    HealthPolicy::AllowAll => LoadBalancerHealthPolicy::AllowAll,
                },
            }),
        };
        let ip_families = match enum_value("ip_families", s.ip_families)? {
            pb::IpFamilies::Automatic => None,
            pb::IpFamilies::Ipv4Only => Some(IpFamily::IPv4),
            pb::IpFamilies::Ipv6Only => Some(IpFamily::IPv6),
            pb::IpFamilies::Dual => Some(IpFamily::Dual),
        };
        let svc = Self {
            ports: port_map("ports", &s.ports)?,
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            subject_alt_names: s.subject_alt_names,
            waypoint,
            load_balancer,
            ip_families,
            canonical: s.canonical,
        };
        svc.validate()?;
        Ok(svc)
    }
}

/// Field names used in more than one place.
mod field {
    /// `load_balancing.routing_preference`.
    pub(super) const SCOPE: &str = "load_balancing.routing_preference";
}
