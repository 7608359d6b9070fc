//! `main_internal`: the dispatch stage. After `connect_terminate` has accepted a tunnel, the
//! original destination decides where it goes:
//!
//! - a **service VIP** of a service bound to this waypoint, on one of the service's ports → that
//!   port's inbound VIP listener `inbound-vip|<port>|http|<host>`;
//! - a **pod IP** of a workload bound to this waypoint → that pod's inbound pod listener
//!   `inbound-pod|<port>|<podIP>` directly (workload-addressed traffic);
//! - anything else → refused with a status saying why ([`Rejection`]).
//!
//! "Bound to this waypoint" means the service's (or workload's) `waypoint` names this waypoint:
//! one of its addresses (its Service's VIPs or its own instance IPs) or its Service's
//! `namespace/hostname`. Pure: the decision is [`dispatch`], table-tested.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use ztunnel::state::MeshState;
use ztunnel::state::workload::{GatewayAddress, GatewayDestination, NamespacedHostname};

use super::{PodTarget, VipTarget};

/// How this waypoint is named in the mesh state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfRef {
    /// The waypoint's namespace.
    pub namespace: String,
    /// The name of the waypoint's Service (the Gateway's name).
    pub service_name: String,
    /// The waypoint's own instance addresses (`INSTANCE_IP`).
    pub instance_ips: Vec<IpAddr>,
}

/// What a `waypoint` reference must name to mean this waypoint, resolved from the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// The waypoint's addresses: its Service's VIPs and its instance IPs.
    pub addresses: Vec<IpAddr>,
    /// The waypoint's Service as `namespace/hostname`.
    pub services: Vec<NamespacedHostname>,
}

impl Bindings {
    /// Resolves `me` against `state`.
    pub fn resolve(state: &MeshState, me: &SelfRef) -> Self {
        let mut bindings = Self {
            addresses: me.instance_ips.clone(),
            services: Vec::new(),
        };
        for service in state.services() {
            if service.namespace == me.namespace && service.name == me.service_name {
                bindings.services.push(NamespacedHostname::new(
                    &service.namespace,
                    &service.hostname,
                ));
                bindings
                    .addresses
                    .extend(service.vips.iter().map(|vip| vip.ip));
            }
        }
        bindings
    }

    /// Whether `gateway` names this waypoint.
    pub fn is_me(&self, gateway: &GatewayAddress) -> bool {
        match &gateway.destination {
            GatewayDestination::Address(addr) => self.addresses.contains(&addr.ip),
            GatewayDestination::Hostname(host) => self.services.contains(host),
        }
    }
}

/// Where `main_internal` sends a tunnel.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// A service port bound to this waypoint.
    Vip(VipTarget),
    /// A pod bound to this waypoint, addressed directly.
    Pod(PodTarget),
    /// Refused.
    Reject(Rejection),
}

/// Why a tunnel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The destination is neither a known service VIP nor a known workload address.
    #[error("destination {0} is not a known service or workload")]
    Unknown(SocketAddr),
    /// The destination is known but not bound to this waypoint.
    #[error("destination {dst} ({name}) does not use this waypoint")]
    NotBound {
        /// The destination.
        dst: SocketAddr,
        /// The service hostname or workload uid.
        name: String,
    },
    /// The service does not declare the port.
    #[error("service {service} has no port {port}")]
    UnknownPort {
        /// The service hostname.
        service: String,
        /// The port.
        port: u16,
    },
}

impl Rejection {
    /// The `CONNECT` response status: 400 for a destination this waypoint does not serve (the
    /// client's ztunnel sent it to the wrong place), 404 for a port the service lacks.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unknown(_) | Self::NotBound { .. } => StatusCode::BAD_REQUEST,
            Self::UnknownPort { .. } => StatusCode::NOT_FOUND,
        }
    }
}

/// Dispatches a tunnel to `dst` (the `CONNECT` target) on `network`.
pub fn dispatch(
    state: &MeshState,
    network: &str,
    bindings: &Bindings,
    dst: SocketAddr,
) -> Dispatch {
    if let Some(service) = state.service_by_vip(network, dst.ip()) {
        if !service
            .waypoint
            .as_ref()
            .is_some_and(|gw| bindings.is_me(gw))
        {
            return Dispatch::Reject(Rejection::NotBound {
                dst,
                name: service.hostname.clone(),
            });
        }
        if !service.ports.contains_key(&dst.port()) {
            return Dispatch::Reject(Rejection::UnknownPort {
                service: service.hostname.clone(),
                port: dst.port(),
            });
        }
        return Dispatch::Vip(VipTarget {
            service: Arc::clone(service),
            port: dst.port(),
        });
    }
    if let Some(workload) = state.workload_by_addr(network, dst.ip()) {
        if !workload
            .waypoint
            .as_ref()
            .is_some_and(|gw| bindings.is_me(gw))
        {
            return Dispatch::Reject(Rejection::NotBound {
                dst,
                name: workload.uid.clone(),
            });
        }
        return Dispatch::Pod(PodTarget {
            workload: Arc::clone(workload),
            address: dst,
        });
    }
    Dispatch::Reject(Rejection::Unknown(dst))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ztunnel::state::LocalConfig;

    const STATE: &str = r#"
workloads:
- uid: wp
  name: waypoint-abc
  namespace: default
  serviceAccount: waypoint
  workloadIps: ["10.0.0.9"]
  protocol: HBONE
  services:
    default/waypoint.default.svc.cluster.local: {15008: 15008}
- uid: r1
  name: reviews-v1
  namespace: default
  serviceAccount: reviews
  workloadIps: ["10.0.1.1"]
  protocol: HBONE
  waypoint: {destination: "/10.96.0.9"}
  services:
    default/reviews.default.svc.cluster.local: {9080: 9080}
- uid: p1
  name: pod-by-host
  namespace: default
  serviceAccount: p
  workloadIps: ["10.0.1.2"]
  protocol: HBONE
  waypoint: {destination: "default/waypoint.default.svc.cluster.local"}
- uid: o1
  name: other
  namespace: default
  serviceAccount: other
  workloadIps: ["10.0.1.3"]
  protocol: HBONE
  waypoint: {destination: "/10.96.0.99"}
services:
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  vips: ["/10.96.0.9"]
  ports: {15008: 15008}
- name: reviews
  namespace: default
  hostname: reviews.default.svc.cluster.local
  vips: ["/10.96.0.1"]
  ports: {9080: 9080}
  waypoint: {destination: "/10.96.0.9"}
- name: ratings
  namespace: default
  hostname: ratings.default.svc.cluster.local
  vips: ["/10.96.0.2"]
  ports: {9080: 9080}
  waypoint: {destination: "default/waypoint.default.svc.cluster.local"}
- name: details
  namespace: default
  hostname: details.default.svc.cluster.local
  vips: ["/10.96.0.3"]
  ports: {9080: 9080}
"#;

    fn state() -> MeshState {
        LocalConfig::from_yaml(STATE).unwrap().into_state().unwrap()
    }

    fn me() -> SelfRef {
        SelfRef {
            namespace: "default".into(),
            service_name: "waypoint".into(),
            instance_ips: vec!["10.0.0.9".parse().unwrap()],
        }
    }

    #[test]
    fn bindings_are_the_service_vips_instance_ips_and_hostname() {
        let b = Bindings::resolve(&state(), &me());
        assert_eq!(
            b.addresses,
            vec![
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                "10.96.0.9".parse().unwrap()
            ]
        );
        assert_eq!(
            b.services,
            vec![NamespacedHostname::new(
                "default",
                "waypoint.default.svc.cluster.local"
            )]
        );
    }

    #[test]
    fn dispatch_table() {
        let state = state();
        let b = Bindings::resolve(&state, &me());
        // (destination, expected outcome)
        let cases: &[(&str, &str)] = &[
            (
                "10.96.0.1:9080",
                "vip reviews.default.svc.cluster.local 9080",
            ),
            (
                "10.96.0.2:9080",
                "vip ratings.default.svc.cluster.local 9080",
            ),
            ("10.96.0.1:80", "reject 404"),
            ("10.96.0.3:9080", "reject 400"),
            ("10.0.1.1:9080", "pod r1 10.0.1.1:9080"),
            ("10.0.1.2:8080", "pod p1 10.0.1.2:8080"),
            ("10.0.1.3:8080", "reject 400"),
            ("192.0.2.1:80", "reject 400"),
        ];
        for (dst, expected) in cases {
            let got = match dispatch(&state, "", &b, dst.parse().unwrap()) {
                Dispatch::Vip(v) => format!("vip {} {}", v.service.hostname, v.port),
                Dispatch::Pod(p) => format!("pod {} {}", p.workload.uid, p.address),
                Dispatch::Reject(r) => format!("reject {}", r.status().as_u16()),
            };
            assert_eq!(&got, expected, "dispatch of {dst}");
        }
    }

    #[test]
    fn listener_names() {
        let state = state();
        let b = Bindings::resolve(&state, &me());
        let Dispatch::Vip(v) = dispatch(&state, "", &b, "10.96.0.1:9080".parse().unwrap()) else {
            panic!("expected a VIP");
        };
        assert_eq!(
            v.listener_name("http"),
            "inbound-vip|9080|http|reviews.default.svc.cluster.local"
        );
        let Dispatch::Pod(p) = dispatch(&state, "", &b, "10.0.1.1:9080".parse().unwrap()) else {
            panic!("expected a pod");
        };
        assert_eq!(p.listener_name(), "inbound-pod|9080|10.0.1.1");
    }
}
