//! Egress: requests the inbound VIP listener routed to a destination outside the mesh.
//!
//! # Where this sits
//!
//! ```text
//! inbound VIP listener ── route → Backend (host, port)
//!        │
//!        ▼
//! select_upstream ── THIS MODULE (pure): mesh service, ServiceEntry, PassthroughCluster or
//!        │            BlackHoleCluster
//!        ├─ mesh service ────── inbound VIP cluster → inbound pod listener → HBONE
//!        ├─ ServiceEntry ────── inbound VIP cluster `inbound-vip|<port>|http|<host>` whose
//!        │                      endpoints come from the entry's resolution (STATIC addresses,
//!        │                      DNS names resolved by [`dns`], NONE = the original
//!        │                      destination) → plain TCP, or TLS ([`tls`]) when a
//!        │                      DestinationRule originates it
//!        ├─ PassthroughCluster ─ the original destination over plain TCP (`ALLOW_ANY`)
//!        └─ BlackHoleCluster ── 502, nothing sent (`REGISTRY_ONLY`)
//! ```
//!
//! A `MESH_EXTERNAL` ServiceEntry bound to this waypoint is in the mesh state as a service with
//! a VIP, so ztunnel tunnels its traffic here with `:authority` = VIP:port like any other
//! service's; its resolution and endpoints come from the ServiceEntry object in the L7
//! configuration ([`ExternalServices`]). For such a service the request's `Host` is checked
//! against the registry, as an Envoy sidecar's outbound route does with its virtual hosts: a
//! `Host` that names no known service (no ServiceEntry host, no mesh service, not the address
//! dialled) goes to `PassthroughCluster` (the original destination) under `ALLOW_ANY`, or to
//! `BlackHoleCluster` (502) under `REGISTRY_ONLY`. Istio labels such requests
//! `destination_service_name` = the cluster name and `destination_service` = the `Host`.

pub mod dns;
pub mod tls;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
pub use ztunnel::config::OutboundPolicy;

use crate::config::ConfigSet;
use crate::config::istio::{Location, Resolution};
use crate::route::hostname::specificity;

/// Envoy's cluster for traffic to destinations the registry does not know (`ALLOW_ANY`).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Envoy's cluster for traffic the outbound policy refuses (`REGISTRY_ONLY`).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's route name for passed-through HTTP requests.
pub const ALLOW_ANY_ROUTE: &str = "allow_any";
/// Istio's route name for refused HTTP requests.
pub const BLOCK_ALL_ROUTE: &str = "block_all";
/// The environment variable of the outbound traffic policy (ztunnel's name for Istio's
/// `meshConfig.outboundTrafficPolicy.mode`).
pub const OUTBOUND_TRAFFIC_POLICY_ENV: &str = "OUTBOUND_TRAFFIC_POLICY";
/// Istio's default `meshConfig.dnsRefreshRate`.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(60);

/// How the waypoint treats traffic to destinations outside the mesh.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// What a request whose `Host` names no known service gets (Istio's
    /// `meshConfig.outboundTrafficPolicy.mode`, env `OUTBOUND_TRAFFIC_POLICY`: `ALLOW_ANY`,
    /// the default, or `REGISTRY_ONLY`).
    pub outbound_policy: OutboundPolicy,
    /// PEM roots that verify TLS-originated connections whose DestinationRule sets no
    /// `caCertificates` (env `SSL_CERT_FILE`; default: the system bundle).
    pub ca_file: Option<PathBuf>,
    /// How long resolved addresses of DNS ServiceEntries are used before they are resolved
    /// again (Istio's `meshConfig.dnsRefreshRate`, default 60 s).
    pub dns_refresh_rate: Duration,
    /// The resolver of DNS ServiceEntries (default: the system's, `getaddrinfo`).
    pub resolver: Arc<dyn dns::Resolver>,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self {
            outbound_policy: OutboundPolicy::AllowAny,
            ca_file: None,
            dns_refresh_rate: DEFAULT_DNS_REFRESH_RATE,
            resolver: Arc::new(dns::SystemResolver),
        }
    }
}

/// Parses an outbound traffic policy as Istio writes it.
pub fn parse_outbound_policy(value: &str) -> Result<OutboundPolicy, String> {
    match value {
        "ALLOW_ANY" => Ok(OutboundPolicy::AllowAny),
        "REGISTRY_ONLY" => Ok(OutboundPolicy::RegistryOnly),
        other => Err(format!("{other:?}: expected ALLOW_ANY or REGISTRY_ONLY")),
    }
}

/// A port of an external service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPort {
    /// The service port (what clients dial).
    pub number: u16,
    /// The port's name (what endpoints' `ports` map refers to).
    pub name: String,
    /// The port on the endpoints, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// What the port carries, from its `protocol` or name.
    pub protocol: DeclaredProtocol,
}

/// What a port declares it carries: whether the inbound VIP listener serves it as HTTP, as
/// opaque TCP, or sniffs the first bytes to find out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeclaredProtocol {
    /// HTTP/1.1, HTTP/2 or gRPC: detected between those, never served as TCP.
    Http,
    /// Opaque bytes (`TCP`, `TLS`, `HTTPS`, `MONGO`, `MYSQL`, `REDIS`): proxied as TCP at
    /// once. Server-first protocols (a database greeting its client) must not wait for
    /// protocol detection.
    Tcp,
    /// Nothing declared, or a protocol the waypoint does not know: detected.
    Detect,
}

impl DeclaredProtocol {
    /// Istio's manual protocol selection for a port: its `protocol` when set, else the
    /// `<protocol>[-<suffix>]` prefix of its name. Case-insensitive.
    pub fn of(protocol: Option<&str>, name: &str) -> Self {
        let declared = match protocol {
            Some(p) if !p.is_empty() => p,
            _ => name.split('-').next().unwrap_or_default(),
        };
        match declared.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP2" | "HTTP_PROXY" | "GRPC" | "GRPC-WEB" => Self::Http,
            "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" => Self::Tcp,
            _ => Self::Detect,
        }
    }
}

/// One inline endpoint of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalEndpoint {
    /// An IP address, or (DNS resolution) a hostname.
    pub address: String,
    /// Port name → endpoint port.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

/// A `MESH_EXTERNAL` ServiceEntry, as the waypoint uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalService {
    /// `namespace/name` of the ServiceEntry.
    pub origin: String,
    /// Hosts, lower-cased (`*.example.com` wildcards included).
    pub hosts: Vec<String>,
    /// Ports.
    pub ports: Vec<ExternalPort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inline endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ExternalEndpoint>,
}

/// Where the endpoints of an external service port are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Fixed addresses (`STATIC`).
    Static(Vec<SocketAddr>),
    /// Names resolved through DNS, with the port to use (`DNS`, `DNS_ROUND_ROBIN`,
    /// `DYNAMIC_DNS`).
    Dns(Vec<(String, u16)>),
    /// The address the client dialled (`NONE`).
    OriginalDst(SocketAddr),
}

impl ExternalService {
    /// The endpoints of `port` when the service is addressed as `host`, for a client that
    /// dialled `original_dst`.
    pub fn endpoints(
        &self,
        host: &str,
        port: &ExternalPort,
        original_dst: SocketAddr,
    ) -> Endpoints {
        let default_port = port.target_port.unwrap_or(port.number);
        let endpoint_port =
            |e: &ExternalEndpoint| e.ports.get(&port.name).copied().unwrap_or(default_port);
        match self.resolution {
            Resolution::None => Endpoints::OriginalDst(original_dst),
            Resolution::Static => Endpoints::Static(
                self.endpoints
                    .iter()
                    .filter_map(|e| {
                        let ip: IpAddr = e.address.parse().ok()?;
                        Some(SocketAddr::new(ip, endpoint_port(e)))
                    })
                    .collect(),
            ),
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                if self.endpoints.is_empty() {
                    Endpoints::Dns(vec![(host.to_owned(), default_port)])
                } else {
                    Endpoints::Dns(
                        self.endpoints
                            .iter()
                            .map(|e| (e.address.clone(), endpoint_port(e)))
                            .collect(),
                    )
                }
            }
        }
    }
}

/// The `MESH_EXTERNAL` ServiceEntries of the L7 configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExternalServices {
    services: Vec<ExternalService>,
}

impl ExternalServices {
    /// The external services of `config`. `MESH_INTERNAL` entries are mesh services (their
    /// endpoints are workloads of the mesh state) and are left out, as are `unix://`
    /// endpoints and, for `STATIC`, endpoints that are not IP addresses (reported).
    pub fn compile(config: &ConfigSet) -> Self {
        let mut services = Vec::new();
        for entry in &config.service_entries {
            let spec = &entry.spec;
            if spec.location != Location::MeshExternal {
                continue;
            }
            let origin = format!("{}/{}", entry.namespace(), entry.name());
            let endpoints = spec
                .endpoints
                .iter()
                .filter_map(|e| {
                    let address = e.address.as_deref()?;
                    if address.starts_with("unix://") {
                        return None;
                    }
                    if spec.resolution == Resolution::Static && address.parse::<IpAddr>().is_err() {
                        tracing::warn!(serviceentry = %origin, address, "STATIC endpoint is not an IP address: ignored");
                        return None;
                    }
                    Some(ExternalEndpoint {
                        address: address.to_owned(),
                        ports: e.ports.clone(),
                    })
                })
                .collect();
            services.push(ExternalService {
                origin,
                hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                ports: spec
                    .ports
                    .iter()
                    .map(|p| ExternalPort {
                        number: p.number,
                        name: p.name.clone(),
                        target_port: p.target_port,
                        protocol: DeclaredProtocol::of(p.protocol.as_deref(), &p.name),
                    })
                    .collect(),
                resolution: spec.resolution,
                endpoints,
            });
        }
        Self { services }
    }

    /// The external services, in configuration order.
    pub fn services(&self) -> &[ExternalService] {
        &self.services
    }

    /// Whether no external service is configured.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The service whose hosts cover `host` most specifically (an exact host beats a
    /// wildcard, a longer wildcard a shorter one; the first entry wins a tie).
    pub fn by_host(&self, host: &str) -> Option<&ExternalService> {
        let mut best: Option<(usize, &ExternalService)> = None;
        for service in &self.services {
            let Some(score) = service
                .hosts
                .iter()
                .filter_map(|h| specificity(h, host))
                .max()
            else {
                continue;
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, service));
            }
        }
        best.map(|(_, s)| s)
    }

    /// The service covering `host` that declares `port`, with that port.
    pub fn find(&self, host: &str, port: u16) -> Option<(&ExternalService, &ExternalPort)> {
        let service = self.by_host(host)?;
        let port = service.ports.iter().find(|p| p.number == port)?;
        Some((service, port))
    }
}

/// What [`select_upstream`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamQuery<'a> {
    /// The hostname of the service whose VIP the client dialled.
    pub service_host: &'a str,
    /// The host of the backend the route chose.
    pub backend_host: &'a str,
    /// The backend's port.
    pub backend_port: u16,
    /// The request's `Host` without its port; `None` for TCP.
    pub authority: Option<&'a str>,
    /// The address the client dialled (the `CONNECT` target).
    pub original_dst: SocketAddr,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream<'a> {
    /// A mesh service: its inbound VIP cluster, endpoints from the mesh state, HBONE.
    Mesh,
    /// A ServiceEntry's port.
    External {
        /// The entry.
        service: &'a ExternalService,
        /// The port.
        port: &'a ExternalPort,
        /// Where its endpoints are.
        endpoints: Endpoints,
    },
    /// `PassthroughCluster`: the original destination, plain TCP.
    Passthrough(SocketAddr),
    /// `BlackHoleCluster`: refused with 502.
    BlackHole,
}

impl Upstream<'_> {
    /// The cluster name of passthrough and black-hole decisions.
    pub fn special_cluster(&self) -> Option<&'static str> {
        match self {
            Self::Passthrough(_) => Some(PASSTHROUGH_CLUSTER),
            Self::BlackHole => Some(BLACKHOLE_CLUSTER),
            Self::Mesh | Self::External { .. } => None,
        }
    }
}

/// Decides where a routed request goes. `is_mesh_host` says whether a hostname is a mesh
/// service's.
///
/// 1. When the dialled service is an external one and the request's `Host` names no known
///    service (no external host, no mesh service, not the dialled address): `ALLOW_ANY` →
///    [`Upstream::Passthrough`] to the dialled address, `REGISTRY_ONLY` →
///    [`Upstream::BlackHole`].
/// 2. A backend host an external service covers, on one of its ports → that service's
///    endpoints ([`ExternalService::endpoints`]).
/// 3. Anything else is a mesh service (or unknown, which the mesh path answers).
pub fn select_upstream<'a>(
    query: &UpstreamQuery<'_>,
    externals: &'a ExternalServices,
    is_mesh_host: impl Fn(&str) -> bool,
    policy: OutboundPolicy,
) -> Upstream<'a> {
    if let Some(authority) = query.authority
        && externals.by_host(query.service_host).is_some()
    {
        let known = authority_is_address(authority, query.original_dst.ip())
            || externals.by_host(authority).is_some()
            || is_mesh_host(authority);
        if !known {
            return match policy {
                OutboundPolicy::AllowAny => Upstream::Passthrough(query.original_dst),
                OutboundPolicy::RegistryOnly => Upstream::BlackHole,
            };
        }
    }
    match externals.find(query.backend_host, query.backend_port) {
        Some((service, port)) => Upstream::External {
            service,
            port,
            endpoints: service.endpoints(query.backend_host, port, query.original_dst),
        },
        None => Upstream::Mesh,
    }
}

/// Whether `host` (an authority without its port) is the IP address `ip`.
fn authority_is_address(host: &str, ip: IpAddr) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|a| a == ip)
}

/// The host of an authority (`host[:port]`, `[v6][:port]`), lower-cased; borrowed from
/// `authority` when it has no upper-case letter.
pub fn authority_host(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            // The brackets stay: `[` + address + `]`.
            Some((v6, _)) => &authority[..v6.len() + 2],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}
