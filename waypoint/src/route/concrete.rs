//! The concrete stage's policies: DestinationRules compiled per host, and the effective policy
//! of a cluster `inbound-vip|<port>|http[/<subset>]|<host>` (load balancer, connection pool,
//! outlier detection, TLS origination, subset labels).

use std::collections::BTreeMap;

use serde::Serialize;

use super::compile::{CompileOptions, Warning};
use super::hostname::{resolve_host, specificity};
use crate::config::istio::{
    ClientTlsSettings, ConnectionPoolSettings, ConsistentHash, DestinationRuleSpec,
    LoadBalancerSettings, OutlierDetection, SimpleLb, Subset, TrafficPolicy,
};
use crate::config::{ConfigSet, Object, ObjectRef};

/// The name Istio gives a waypoint cluster: `inbound-vip|<port>|<protocol>[/<subset>]|<host>`.
pub fn cluster_name(port: u16, protocol: &str, subset: Option<&str>, host: &str) -> String {
    match subset {
        Some(subset) => format!("inbound-vip|{port}|{protocol}/{subset}|{host}"),
        None => format!("inbound-vip|{port}|{protocol}|{host}"),
    }
}

/// The DestinationRules of every host, merged per host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestinationPolicies {
    hosts: Vec<HostPolicy>,
}

/// The merged DestinationRules of one host.
///
/// When several rules name the same host, the oldest (then by namespace/name) gives the traffic
/// policy and subsets are merged, the first definition of a name winning (as Istio merges
/// DestinationRules of one host).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPolicy {
    /// The host (resolved; may be a wildcard).
    pub host: String,
    /// The rules merged here.
    pub origins: Vec<ObjectRef>,
    /// Policy for every subset and port.
    pub traffic_policy: TrafficPolicy,
    /// Subsets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

/// The load-balancing algorithm of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Least outstanding requests (Istio's default).
    LeastRequest,
    /// Round robin.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// The address the caller asked for.
    Passthrough,
    /// Consistent hash on the key.
    ConsistentHash(ConsistentHash),
}

impl From<&LoadBalancerSettings> for LoadBalancer {
    fn from(settings: &LoadBalancerSettings) -> Self {
        match settings {
            LoadBalancerSettings::Simple(SimpleLb::Unspecified | SimpleLb::LeastRequest) => {
                Self::LeastRequest
            }
            LoadBalancerSettings::Simple(SimpleLb::RoundRobin) => Self::RoundRobin,
            LoadBalancerSettings::Simple(SimpleLb::Random) => Self::Random,
            LoadBalancerSettings::Simple(SimpleLb::Passthrough) => Self::Passthrough,
            LoadBalancerSettings::ConsistentHash(key) => Self::ConsistentHash(key.clone()),
        }
    }
}

/// The effective policy of one cluster (host, subset, port).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    /// Load balancer.
    pub load_balancer: LoadBalancer,
    /// Connection pool limits (unset fields = unlimited / defaults).
    pub connection_pool: ConnectionPoolSettings,
    /// Outlier detection, if enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS origination, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Endpoint labels selecting the subset (empty = every endpoint).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_labels: BTreeMap<String, String>,
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        Self {
            load_balancer: LoadBalancer::LeastRequest,
            connection_pool: ConnectionPoolSettings::default(),
            outlier_detection: None,
            tls: None,
            subset_labels: BTreeMap::new(),
        }
    }
}

impl DestinationPolicies {
    /// Compiles every DestinationRule of `config`.
    pub(crate) fn compile(
        config: &ConfigSet,
        options: &CompileOptions,
        warnings: &mut Vec<Warning>,
    ) -> Self {
        let mut rules: Vec<&Object<DestinationRuleSpec>> =
            config.destination_rules.iter().collect();
        rules.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
        let mut hosts: Vec<HostPolicy> = Vec::new();
        for rule in rules {
            let host = resolve_host(&rule.spec.host, rule.namespace(), &options.domain_suffix);
            let index = match hosts.iter().position(|h| h.host == host) {
                Some(index) => index,
                None => {
                    hosts.push(HostPolicy {
                        host,
                        origins: Vec::new(),
                        traffic_policy: rule.spec.traffic_policy.clone().unwrap_or_default(),
                        subsets: Vec::new(),
                    });
                    hosts.len() - 1
                }
            };
            let merged = &mut hosts[index];
            if !merged.origins.is_empty() && rule.spec.traffic_policy.is_some() {
                warnings.push(Warning::new(
                    rule,
                    "spec.trafficPolicy",
                    format!(
                        "ignored: {} already sets the traffic policy of host {}",
                        merged.origins[0], merged.host
                    ),
                ));
            }
            merged.origins.push(rule.object_ref());
            for (i, subset) in rule.spec.subsets.iter().enumerate() {
                if merged.subsets.iter().any(|s| s.name == subset.name) {
                    warnings.push(Warning::new(
                        rule,
                        format!("spec.subsets[{i}]"),
                        format!(
                            "ignored: subset {:?} of host {} is already defined",
                            subset.name, merged.host
                        ),
                    ));
                } else {
                    merged.subsets.push(subset.clone());
                }
            }
        }
        Self { hosts }
    }

    /// The policy of the most specific rule host covering `host` (exact, then the longest
    /// wildcard).
    pub fn for_host(&self, host: &str) -> Option<&HostPolicy> {
        self.hosts
            .iter()
            .filter_map(|h| specificity(&h.host, host).map(|s| (s, h)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, h)| h)
    }

    /// Whether a DestinationRule defines `subset` for `host`.
    pub fn has_subset(&self, host: &str, subset: &str) -> bool {
        self.for_host(host)
            .is_some_and(|h| h.subsets.iter().any(|s| s.name == subset))
    }

    /// The effective policy of a cluster: the rule's policy, overridden by its settings for
    /// `port`, then by the subset's policy, then by the subset's settings for `port` (each of
    /// load balancer, connection pool, outlier detection and TLS replaced as a whole).
    pub fn cluster_policy(&self, host: &str, subset: Option<&str>, port: u16) -> ClusterPolicy {
        let mut layers = Layers::default();
        let mut labels = BTreeMap::new();
        if let Some(policy) = self.for_host(host) {
            layers.apply(&policy.traffic_policy, port);
            if let Some(subset) =
                subset.and_then(|name| policy.subsets.iter().find(|s| s.name == name))
            {
                if let Some(subset_policy) = &subset.traffic_policy {
                    layers.apply(subset_policy, port);
                }
                labels = subset.labels.clone();
            }
        }
        ClusterPolicy {
            load_balancer: layers
                .load_balancer
                .as_ref()
                .map_or(LoadBalancer::LeastRequest, LoadBalancer::from),
            connection_pool: layers.connection_pool.unwrap_or_default(),
            outlier_detection: layers.outlier_detection,
            tls: layers.tls,
            subset_labels: labels,
        }
    }
}

#[derive(Default)]
struct Layers {
    load_balancer: Option<LoadBalancerSettings>,
    connection_pool: Option<ConnectionPoolSettings>,
    outlier_detection: Option<OutlierDetection>,
    tls: Option<ClientTlsSettings>,
}

impl Layers {
    fn apply(&mut self, policy: &TrafficPolicy, port: u16) {
        self.set(
            policy.load_balancer.as_ref(),
            policy.connection_pool.as_ref(),
            policy.outlier_detection.as_ref(),
            policy.tls.as_ref(),
        );
        let port_policy = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|selector| selector.number == port));
        if let Some(p) = port_policy {
            self.set(
                p.load_balancer.as_ref(),
                p.connection_pool.as_ref(),
                p.outlier_detection.as_ref(),
                p.tls.as_ref(),
            );
        }
    }

    fn set(
        &mut self,
        load_balancer: Option<&LoadBalancerSettings>,
        connection_pool: Option<&ConnectionPoolSettings>,
        outlier_detection: Option<&OutlierDetection>,
        tls: Option<&ClientTlsSettings>,
    ) {
        if let Some(v) = load_balancer {
            self.load_balancer = Some(v.clone());
        }
        if let Some(v) = connection_pool {
            self.connection_pool = Some(v.clone());
        }
        if let Some(v) = outlier_detection {
            self.outlier_detection = Some(v.clone());
        }
        if let Some(v) = tls {
            self.tls = Some(v.clone());
        }
    }
}
