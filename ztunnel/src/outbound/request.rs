//! The outbound routing decision: given the local workload a connection came from and the
//! address its application connected to, decide where the connection goes and how.
//!
//! [`build_request`] is a pure function of a [`MeshState`] snapshot, the source [`Workload`],
//! the original destination, an [`OutboundContext`] and an injected random source. It performs
//! no I/O; the listener (the "mover") dials [`OutboundRequest::destination`] and, for HBONE,
//! sends `CONNECT` with [`OutboundRequest::hbone_authority`] and accepts only a peer presenting
//! one of [`OutboundRequest::expected_identities`].
//!
//! # Algorithm (Istio ztunnel's `build_request`, single network)
//!
//! 1. **Loop protection.** A destination port among [`OutboundContext::proxy_ports`] (by default
//!    15001, 15006, 15008, 15080) is refused with [`OutboundError::SelfCall`] when the IP is
//!    loopback or unspecified, one of the source's own IPs, or the IP of a workload on this node
//!    ([`OutboundContext::node`]): those connections would come straight back into this proxy.
//! 2. **Service VIP** (looked up by `(ctx.network, dst IP)`). If the service has a `waypoint`
//!    and the source is not that waypoint, the connection goes over HBONE to the waypoint's
//!    `hbone_mtls_port` with `:authority` = the original `VIP:port`. A waypoint given as an
//!    address is the workload owning it (its identity is the expected one; unknown →
//!    [`OutboundError::WaypointIdentityUnknown`]) or, if the address is a service VIP, one
//!    endpoint of that service; a waypoint given as `namespace/hostname` is one endpoint of that
//!    service (none → [`OutboundError::WaypointUnresolved`]). When resolved through a service,
//!    that waypoint service's `subject_alt_names` are accepted too. The destination service's
//!    own SANs are *not* added for a waypoint: they name the backends, not the waypoint.
//! 3. **Endpoint selection** otherwise. A `PASSTHROUGH` service is passed through to the
//!    original destination. Else the service must expose the destination port
//!    ([`OutboundError::UnknownServicePort`]); one endpoint is picked with [`select_endpoint`]
//!    (health, locality, capacity; the injected `random`) and its port resolved with
//!    [`MeshState::target_port`]. No eligible endpoint → [`OutboundError::NoHealthyUpstream`].
//!    A service-addressed connection never uses the endpoint's own (workload) waypoint.
//! 4. **Workload address.** A destination IP owned by a workload with a `waypoint` goes over
//!    HBONE to that waypoint with `:authority` = the original destination, unless the source is
//!    that waypoint.
//! 5. **Direct.** An HBONE workload is reached at `podIP:15008` with `:authority` =
//!    `podIP:targetPort`, expecting the workload's identity (plus, when service-addressed, the
//!    service's `subject_alt_names` that parse as SPIFFE identities; invalid ones are skipped);
//!    a TCP workload gets plain TCP to `podIP:targetPort`. Workload-addressed traffic keeps the
//!    original port.
//! 6. **Unknown destination.** [`OutboundPolicy::AllowAny`] passes it through to the original
//!    destination; [`OutboundPolicy::RegistryOnly`] refuses it ([`OutboundError::RegistryOnly`]).
//! 7. **Multiple networks are not supported yet** (no double HBONE through a network gateway):
//!    endpoints on the local network are preferred, and a connection that can only go to
//!    another network (an endpoint or a waypoint there) fails with
//!    [`OutboundError::RemoteNetwork`].
//!
//! "The source is the waypoint" follows Istio's `check_from_waypoint`: the source is one of the
//! waypoint's workloads (same uid, or same identity and a shared IP).
//!
//! Not handled here: application tunnels (PROXY protocol) and native tunnels — the mover and the
//! inbound side deal with them — and hostname-only workloads (which need DNS): selecting one
//! fails with [`OutboundError::NoWorkloadAddress`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;

use crate::config::{Config, OutboundPolicy, ports};
use crate::state::{
    Endpoint, GatewayAddress, GatewayDestination, LoadBalancerMode, MeshState, Service,
    TunnelProtocol, Workload, select_endpoint,
};

/// The node proxy's own ports refused as outbound destinations by default (loop protection):
/// outbound capture, inbound plaintext, inbound HBONE and SOCKS5.
pub const DEFAULT_PROXY_PORTS: [u16; 4] = [
    ports::OUTBOUND,
    ports::INBOUND_PLAINTEXT,
    ports::INBOUND_HBONE,
    ports::SOCKS5,
];

/// The port HBONE is dialled on for a direct (waypoint-less) HBONE destination.
pub const HBONE_PORT: u16 = hbone::HBONE_PORT;

/// How the connection leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/2 `CONNECT` over mutual TLS to [`OutboundRequest::destination`].
    Hbone,
    /// Plain TCP to a known mesh workload (one that does not speak HBONE).
    Tcp,
    /// Plain TCP to the original destination, which the mesh does not route (unknown
    /// destination under `ALLOW_ANY`, or a `PASSTHROUGH` service).
    Passthrough,
}

/// Everything [`build_request`] needs besides the mesh state and the connection itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundContext {
    /// Network of this node (`NETWORK`); addresses are looked up on it. Empty is the default
    /// network.
    pub network: String,
    /// Name of this node (`NODE_NAME`), to recognise local workloads for loop protection;
    /// `None` (or empty) checks only loopback and the source's own IPs.
    pub node: Option<String>,
    /// What to do with destinations the mesh does not know.
    pub policy: OutboundPolicy,
    /// This proxy's own ports, refused on local addresses (loop protection).
    pub proxy_ports: Vec<u16>,
}

impl Default for OutboundContext {
    /// Default network, no node name, `ALLOW_ANY`, [`DEFAULT_PROXY_PORTS`].
    fn default() -> Self {
        Self {
            network: String::new(),
            node: None,
            policy: OutboundPolicy::AllowAny,
            proxy_ports: DEFAULT_PROXY_PORTS.to_vec(),
        }
    }
}

impl OutboundContext {
    /// The context of a proxy running with `config`: its network, node name, outbound policy
    /// and listener ports (outbound, inbound plaintext, inbound HBONE and SOCKS5 — the SOCKS5
    /// default 15080 even when SOCKS5 is disabled; ports 0, i.e. OS-chosen, are skipped).
    pub fn from_config(config: &Config) -> Self {
        let l = &config.listeners;
        let mut proxy_ports = Vec::new();
        for port in [
            l.outbound.port(),
            l.inbound_plaintext.port(),
            l.inbound_hbone.port(),
            l.socks5.map_or(ports::SOCKS5, |a| a.port()),
        ] {
            if port != 0 && !proxy_ports.contains(&port) {
                proxy_ports.push(port);
            }
        }
        Self {
            network: config.network.clone(),
            node: config.node_name.clone(),
            policy: config.outbound_policy,
            proxy_ports,
        }
    }
}

/// The routing decision for one outbound connection: plain data for the mover and telemetry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundRequest {
    /// How to connect.
    pub protocol: Protocol,
    /// The address to dial: `waypointIP:hbonePort` or `podIP:15008` for HBONE,
    /// `podIP:targetPort` for TCP, the original destination for passthrough.
    pub destination: SocketAddr,
    /// The HBONE `CONNECT` `:authority`: the original destination when going through a
    /// waypoint, `podIP:targetPort` for direct HBONE; `None` unless the protocol is HBONE.
    pub hbone_authority: Option<SocketAddr>,
    /// The identities the HBONE peer may present (its certificate's URI SAN must be one of
    /// them). Never empty for HBONE; empty for TCP and passthrough.
    pub expected_identities: Vec<Identity>,
    /// The destination workload, when known: the chosen endpoint, the addressed workload (also
    /// when its waypoint is used). `None` for passthrough and for service traffic sent to a
    /// waypoint (the waypoint picks the endpoint).
    pub destination_workload: Option<Arc<Workload>>,
    /// The destination service, when the connection was addressed to a service VIP.
    pub destination_service: Option<Arc<Service>>,
    /// The waypoint workload dialled, when the connection goes through a waypoint.
    pub waypoint: Option<Arc<Workload>>,
    /// Identity of the source workload (the client certificate to present for HBONE).
    pub source_identity: Identity,
}

/// Why an outbound connection cannot be routed. Every message names the address concerned.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The destination is one of this proxy's own ports on a local address; connecting would
    /// loop back into the proxy.
    #[error("refusing to connect to {dst}: it is a port of this proxy on a local address (loop)")]
    SelfCall {
        /// The original destination.
        dst: SocketAddr,
    },
    /// The destination is not known to the mesh and the outbound policy is `REGISTRY_ONLY`.
    #[error("destination {dst} is not in the mesh registry and the policy is REGISTRY_ONLY")]
    RegistryOnly {
        /// The original destination.
        dst: SocketAddr,
    },
    /// The service has no endpoint eligible for load balancing (none, all unhealthy, or none
    /// matching a strict routing preference).
    #[error("no healthy upstream for service {service} (destination {dst})")]
    NoHealthyUpstream {
        /// The service, `namespace/hostname`.
        service: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The connection was addressed to a service VIP on a port the service does not expose.
    #[error("service {service} has no port {port} (destination {dst})")]
    UnknownServicePort {
        /// The service, `namespace/hostname`.
        service: String,
        /// The port connected to.
        port: u16,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The waypoint could not be turned into an address: its service is unknown or has no
    /// eligible endpoint.
    #[error("waypoint {waypoint} for destination {dst} cannot be resolved to an address")]
    WaypointUnresolved {
        /// The waypoint as configured (`network/ip` or `namespace/hostname`).
        waypoint: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// No workload owns the waypoint's address, so there is no identity to verify it against.
    #[error("waypoint {waypoint} for destination {dst} is not a known workload: identity unknown")]
    WaypointIdentityUnknown {
        /// The waypoint address (IP and HBONE port).
        waypoint: SocketAddr,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The only possible upstream (endpoint or waypoint) is on another network; that needs
    /// double HBONE through a network gateway, which is not supported yet.
    #[error(
        "{upstream} for destination {dst} is on network {network:?}, not this node's; \
         multi-network routing is not supported yet"
    )]
    RemoteNetwork {
        /// The upstream: a workload uid or a waypoint address.
        upstream: String,
        /// Its network.
        network: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// The chosen workload has no IP address (a hostname-only workload, which needs DNS).
    #[error("workload {workload} chosen for destination {dst} has no IP address")]
    NoWorkloadAddress {
        /// The workload uid.
        workload: String,
        /// The original destination.
        dst: SocketAddr,
    },
    /// An HBONE request ended up with no identity to verify the peer against; it is refused
    /// rather than accepting any peer.
    #[error("no expected identity for HBONE to {destination} (destination {dst})")]
    NoExpectedIdentity {
        /// The address that would have been dialled.
        destination: SocketAddr,
        /// The original destination.
        dst: SocketAddr,
    },
}

impl OutboundError {
    /// An Envoy-style response flag for access logs and metrics: `UH` (no healthy upstream)
    /// when no upstream host could be picked, `NR` (no route) for everything else.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::NoHealthyUpstream { .. } | Self::WaypointUnresolved { .. } => "UH",
            _ => "NR",
        }
    }
}

/// Decides where a connection from `source` to `original_dst` goes and how (see the module
/// documentation for the rules). `random(n)` must return a value in `0..n`; it drives endpoint
/// selection and may be called several times.
pub fn build_request(
    state: &MeshState,
    source: &Workload,
    original_dst: SocketAddr,
    ctx: &OutboundContext,
    mut random: impl FnMut(u32) -> u32,
) -> Result<OutboundRequest, OutboundError> {
    let dst = original_dst;
    if is_self_call(state, source, dst, ctx) {
        return Err(OutboundError::SelfCall { dst });
    }
    let decide = Decision {
        state,
        source,
        dst,
        ctx,
    };
    if let Some(service) = state.service_by_vip(&ctx.network, dst.ip()) {
        return decide.service(service, &mut random);
    }
    if let Some(workload) = state.workload_by_addr(&ctx.network, dst.ip()) {
        return decide.workload(workload, &mut random);
    }
    match ctx.policy {
        OutboundPolicy::AllowAny => Ok(decide.passthrough(None)),
        OutboundPolicy::RegistryOnly => Err(OutboundError::RegistryOnly { dst }),
    }
}

/// Loop protection: a proxy port on loopback, the source's own IP or a workload of this node.
fn is_self_call(
    state: &MeshState,
    source: &Workload,
    dst: SocketAddr,
    ctx: &OutboundContext,
) -> bool {
    if !ctx.proxy_ports.contains(&dst.port()) {
        return false;
    }
    let ip = dst.ip().to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    if source
        .workload_ips
        .iter()
        .any(|own| own.to_canonical() == ip)
    {
        return true;
    }
    match (
        ctx.node.as_deref(),
        state.workload_by_addr(&ctx.network, ip),
    ) {
        (Some(node), Some(w)) => !node.is_empty() && w.node == node,
        _ => false,
    }
}

/// A resolved waypoint.
struct Waypoint {
    /// The waypoint workload.
    workload: Arc<Workload>,
    /// Where to dial it.
    address: SocketAddr,
    /// The identities it may present.
    identities: Vec<Identity>,
}

/// The inputs shared by every step of one decision.
struct Decision<'a> {
    state: &'a MeshState,
    source: &'a Workload,
    dst: SocketAddr,
    ctx: &'a OutboundContext,
}

impl<'a> Decision<'a> {
    /// Rules 2 and 3: service-addressed traffic.
    fn service(
        &self,
        service: &Arc<Service>,
        random: &mut impl FnMut(u32) -> u32,
    ) -> Result<OutboundRequest, OutboundError> {
        if let Some(gw) = &service.waypoint
            && !self.source_is_waypoint(gw)
        {
            let wp = self.resolve_waypoint(gw, random)?;
            return self.via_waypoint(wp, None, Some(service));
        }
        if service.lb_mode() == LoadBalancerMode::Passthrough {
            return Ok(self.passthrough(Some(service)));
        }
        let port = self.dst.port();
        let unknown_port = || OutboundError::UnknownServicePort {
            service: service.key().to_string(),
            port,
            dst: self.dst,
        };
        if !service.ports.contains_key(&port) {
            return Err(unknown_port());
        }
        let endpoint = self.pick_endpoint(service, random)?.ok_or_else(|| {
            OutboundError::NoHealthyUpstream {
                service: service.key().to_string(),
                dst: self.dst,
            }
        })?;
        let target_port =
            MeshState::target_port(service, &endpoint, port).ok_or_else(unknown_port)?;
        let ip = self.workload_ip(endpoint.workload)?;
        self.direct(
            endpoint.workload,
            SocketAddr::new(ip, target_port),
            Some(service),
        )
    }

    /// Rules 4 and 5 for workload-addressed traffic.
    fn workload(
        &self,
        workload: &Arc<Workload>,
        random: &mut impl FnMut(u32) -> u32,
    ) -> Result<OutboundRequest, OutboundError> {
        if let Some(gw) = &workload.waypoint
            && !self.source_is_waypoint(gw)
        {
            let wp = self.resolve_waypoint(gw, random)?;
            return self.via_waypoint(wp, Some(workload), None);
        }
        self.direct(workload, self.dst, None)
    }

    /// HBONE to a waypoint, `:authority` = the original destination.
    fn via_waypoint(
        &self,
        wp: Waypoint,
        workload: Option<&Arc<Workload>>,
        service: Option<&Arc<Service>>,
    ) -> Result<OutboundRequest, OutboundError> {
        self.checked(OutboundRequest {
            protocol: Protocol::Hbone,
            destination: wp.address,
            hbone_authority: Some(self.dst),
            expected_identities: wp.identities,
            destination_workload: workload.cloned(),
            destination_service: service.cloned(),
            waypoint: Some(wp.workload),
            source_identity: self.source.identity(),
        })
    }

    /// Rule 5: straight to `workload` at `target` (its IP and target port).
    fn direct(
        &self,
        workload: &Arc<Workload>,
        target: SocketAddr,
        service: Option<&Arc<Service>>,
    ) -> Result<OutboundRequest, OutboundError> {
        let (protocol, destination, hbone_authority, expected_identities) = match workload.protocol
        {
            TunnelProtocol::Hbone => {
                let mut ids = vec![workload.identity()];
                if let Some(service) = service {
                    extend_sans(&mut ids, service);
                }
                (
                    Protocol::Hbone,
                    SocketAddr::new(target.ip(), HBONE_PORT),
                    Some(target),
                    ids,
                )
            }
            TunnelProtocol::Tcp => (Protocol::Tcp, target, None, Vec::new()),
        };
        self.checked(OutboundRequest {
            protocol,
            destination,
            hbone_authority,
            expected_identities,
            destination_workload: Some(workload.clone()),
            destination_service: service.cloned(),
            waypoint: None,
            source_identity: self.source.identity(),
        })
    }

    /// Plain TCP to the original destination.
    fn passthrough(&self, service: Option<&Arc<Service>>) -> OutboundRequest {
        OutboundRequest {
            protocol: Protocol::Passthrough,
            destination: self.dst,
            hbone_authority: None,
            expected_identities: Vec::new(),
            destination_workload: None,
            destination_service: service.cloned(),
            waypoint: None,
            source_identity: self.source.identity(),
        }
    }

    /// Refuses an HBONE request that would accept any peer.
    fn checked(&self, req: OutboundRequest) -> Result<OutboundRequest, OutboundError> {
        if req.protocol == Protocol::Hbone && req.expected_identities.is_empty() {
            return Err(OutboundError::NoExpectedIdentity {
                destination: req.destination,
                dst: self.dst,
            });
        }
        Ok(req)
    }

    /// Picks an endpoint of `service`, preferring this node's network. `Ok(None)` when nothing
    /// is eligible; [`OutboundError::RemoteNetwork`] when only endpoints on other networks are.
    fn pick_endpoint(
        &self,
        service: &Service,
        random: &mut impl FnMut(u32) -> u32,
    ) -> Result<Option<Endpoint<'a>>, OutboundError> {
        let all = self.state.endpoints(service);
        let local: Vec<Endpoint<'a>> = all
            .iter()
            .filter(|e| e.workload.network == self.ctx.network)
            .copied()
            .collect();
        if let Some(e) = select_endpoint(service, self.source, &local, &mut *random) {
            return Ok(Some(e));
        }
        if local.len() == all.len() {
            return Ok(None);
        }
        match select_endpoint(service, self.source, &all, &mut *random) {
            Some(e) => Err(OutboundError::RemoteNetwork {
                upstream: format!("workload {}", e.workload.uid),
                network: e.workload.network.clone(),
                dst: self.dst,
            }),
            None => Ok(None),
        }
    }

    /// The workload's IP to dial: the first of the original destination's family, else the
    /// first one.
    fn workload_ip(&self, workload: &Workload) -> Result<IpAddr, OutboundError> {
        let ips = &workload.workload_ips;
        ips.iter()
            .find(|ip| ip.is_ipv4() == self.dst.ip().is_ipv4())
            .or_else(|| ips.first())
            .copied()
            .ok_or_else(|| OutboundError::NoWorkloadAddress {
                workload: workload.uid.clone(),
                dst: self.dst,
            })
    }

    /// The workloads a waypoint stands for: the one at its address, or the endpoints of its
    /// service.
    fn waypoint_workloads(&self, gw: &GatewayAddress) -> Vec<&'a Arc<Workload>> {
        let service = match &gw.destination {
            GatewayDestination::Address(addr) => {
                if let Some(w) = self.state.workload_by_addr(&addr.network, addr.ip) {
                    return vec![w];
                }
                self.state.service_by_vip(&addr.network, addr.ip)
            }
            GatewayDestination::Hostname(key) => self.state.service(key),
        };
        service.map_or_else(Vec::new, |s| {
            self.state
                .endpoints(s)
                .into_iter()
                .map(|e| e.workload)
                .collect()
        })
    }

    /// Istio's `check_from_waypoint`: the source is one of the waypoint's workloads (same uid,
    /// or same identity and a shared IP).
    fn source_is_waypoint(&self, gw: &GatewayAddress) -> bool {
        let src = self.source;
        self.waypoint_workloads(gw).iter().any(|w| {
            w.uid == src.uid
                || (w.identity() == src.identity()
                    && w.workload_ips
                        .iter()
                        .any(|ip| src.workload_ips.contains(ip)))
        })
    }

    /// Turns a waypoint gateway address into a concrete address and its identities.
    fn resolve_waypoint(
        &self,
        gw: &GatewayAddress,
        random: &mut impl FnMut(u32) -> u32,
    ) -> Result<Waypoint, OutboundError> {
        let unresolved = || OutboundError::WaypointUnresolved {
            waypoint: gw.destination.to_string(),
            dst: self.dst,
        };
        let service = match &gw.destination {
            GatewayDestination::Address(addr) => {
                let address = SocketAddr::new(addr.ip, gw.hbone_mtls_port);
                if addr.network != self.ctx.network {
                    return Err(OutboundError::RemoteNetwork {
                        upstream: format!("waypoint {address}"),
                        network: addr.network.clone(),
                        dst: self.dst,
                    });
                }
                if let Some(w) = self.state.workload_by_addr(&addr.network, addr.ip) {
                    return Ok(Waypoint {
                        workload: w.clone(),
                        address,
                        identities: vec![w.identity()],
                    });
                }
                self.state.service_by_vip(&addr.network, addr.ip).ok_or(
                    OutboundError::WaypointIdentityUnknown {
                        waypoint: address,
                        dst: self.dst,
                    },
                )?
            }
            GatewayDestination::Hostname(key) => self.state.service(key).ok_or_else(unresolved)?,
        };
        let endpoint = self
            .pick_endpoint(service, random)?
            .ok_or_else(unresolved)?;
        let ip = self.workload_ip(endpoint.workload)?;
        let mut identities = vec![endpoint.workload.identity()];
        extend_sans(&mut identities, service);
        Ok(Waypoint {
            workload: endpoint.workload.clone(),
            address: SocketAddr::new(ip, gw.hbone_mtls_port),
            identities,
        })
    }
}

/// Appends the service's `subject_alt_names` that parse as SPIFFE identities and are not
/// already present; invalid ones are skipped.
fn extend_sans(ids: &mut Vec<Identity>, service: &Service) {
    for san in &service.subject_alt_names {
        if let Ok(id) = san.parse::<Identity>()
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests;
