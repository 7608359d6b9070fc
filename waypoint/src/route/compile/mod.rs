//! Compiling a [`ConfigSet`] into a [`RouteTable`] and [`DestinationPolicies`].
//!
//! Per service port, the routes come from the first source that applies:
//!
//! 1. **Gateway API routes** (`HTTPRoute`, `GRPCRoute`) in the service's namespace whose
//!    `parentRefs` name the Service (GAMMA: `kind: Service`, group `""` or `core`; a `port`
//!    narrows it to that port, a `sectionName` to the port of that name). Their match entries
//!    are merged and ordered by the Gateway API precedence.
//! 2. **VirtualServices** whose `hosts` cover the hostname, from the service's namespace or the
//!    waypoint's. The most specific host wins (exact, then the longest wildcard); several
//!    VirtualServices with that same host are merged, oldest first.
//! 3. A **default route** forwarding everything to the service itself.
//!
//! Gateway API routes take precedence over VirtualServices for the same service: Istio leaves
//! mixing the two undefined and documents VirtualService on waypoints as usable only where no
//! Gateway API route targets the service, and the Gateway API is the recommended, more
//! mature API for waypoints. A VirtualService shadowed this way is reported as a [`Warning`].
//!
//! Compiling never fails: anything that cannot be honoured is reported as a [`Warning`] and
//! handled as Istio would (a match block on client labels never matches, a subset no
//! DestinationRule defines answers 503, an unresolvable Gateway API backend answers 500).

mod gateway;
mod virtual_service;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use super::concrete::DestinationPolicies;
use super::model::{
    Backend, CompiledRoutes, Filters, RetryPolicy, Route, RouteAction, RouteOrigin, RouteSource,
    RouteTable, ServiceKey, TcpRoute, WeightedBackend,
};
use crate::config::common::HeaderOps;
use crate::config::{ConfigSet, Object, ObjectRef, Source, Spec};

/// Settings of a compilation.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The cluster's DNS domain (`cluster.local`), for short names and Service hostnames.
    pub domain_suffix: String,
    /// The waypoint's namespace: VirtualServices there apply to every service it serves.
    pub waypoint_namespace: Option<String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            domain_suffix: "cluster.local".to_owned(),
            waypoint_namespace: None,
        }
    }
}

/// A service port the waypoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port number.
    pub port: u16,
    /// Port name (what a Gateway API `sectionName` refers to).
    pub name: Option<String>,
}

/// A service the waypoint serves (from the mesh state): hostname, namespace, ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    /// Fully qualified hostname.
    pub hostname: String,
    /// Namespace.
    pub namespace: String,
    /// Kubernetes Service name, for Gateway API `parentRefs` (none for ServiceEntry hosts).
    pub name: Option<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
}

impl ServiceTarget {
    /// A Kubernetes Service: hostname `<name>.<namespace>.svc.<domain>`.
    pub fn kubernetes(
        name: &str,
        namespace: &str,
        domain: &str,
        ports: impl IntoIterator<Item = u16>,
    ) -> Self {
        Self {
            hostname: format!("{name}.{namespace}.svc.{domain}"),
            namespace: namespace.to_owned(),
            name: Some(name.to_owned()),
            ports: ports
                .into_iter()
                .map(|port| ServicePort { port, name: None })
                .collect(),
        }
    }

    /// The services the ServiceEntries of `config` declare: each non-wildcard host with the
    /// entry's ports.
    pub fn from_service_entries(config: &ConfigSet) -> Vec<Self> {
        config
            .service_entries
            .iter()
            .flat_map(|entry| {
                entry
                    .spec
                    .hosts
                    .iter()
                    .filter(|h| !h.starts_with('*'))
                    .map(|host| Self {
                        hostname: host.to_ascii_lowercase(),
                        namespace: entry.namespace().to_owned(),
                        name: None,
                        ports: entry
                            .spec
                            .ports
                            .iter()
                            .map(|p| ServicePort {
                                port: p.number,
                                name: Some(p.name.clone()),
                            })
                            .collect(),
                    })
            })
            .collect()
    }
}

/// Something in the configuration that is accepted but not (fully) honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file of the object.
    pub file: Option<PathBuf>,
    /// The line of the object's document.
    pub line: Option<usize>,
    /// The object.
    pub object: Option<ObjectRef>,
    /// The field (`spec.http[1].match[0].sourceLabels`).
    pub field: Option<String>,
    /// What is not honoured, and what happens instead.
    pub message: String,
}

impl Warning {
    pub(crate) fn new<S: Spec>(
        object: &Object<S>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::at(object.object_ref(), &object.source, field, message)
    }

    pub(crate) fn at(
        object: ObjectRef,
        source: &Source,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        Self {
            file: Some(source.file.clone()),
            line: source.line,
            object: Some(object),
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            sep = ": ";
        }
        if let Some(object) = &self.object {
            write!(f, "{sep}{object}")?;
            sep = ": ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}{field}")?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

/// The result of [`compile()`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Routes per service port.
    pub routes: RouteTable,
    /// DestinationRule policies per host (the concrete stage).
    pub destinations: DestinationPolicies,
    /// What is accepted but not (fully) honoured, each reported once.
    pub warnings: Vec<Warning>,
}

/// Compiles the routes of every port of `services`, and the DestinationRule policies.
pub fn compile(
    config: &ConfigSet,
    services: &[ServiceTarget],
    options: &CompileOptions,
) -> Compiled {
    let mut warnings = Vec::new();
    let destinations = DestinationPolicies::compile(config, options, &mut warnings);
    let virtual_services =
        virtual_service::compile_all(config, options, &destinations, &mut warnings);
    let gateway_routes = gateway::compile_all(config, options, &mut warnings);
    let mut table = RouteTable::default();
    for service in services {
        let selected = virtual_service::select(service, &virtual_services, options, &mut warnings);
        for port in &service.ports {
            let attached = gateway::attached(service, port, &gateway_routes, &mut warnings);
            let routes = match attached {
                Some((objects, http)) => {
                    for vs in &selected {
                        warnings.push(Warning::at(
                            vs.object.clone(),
                            &vs.source,
                            "spec.hosts",
                            format!(
                                "ignored for {}:{}: Gateway API routes attached to the service take precedence",
                                service.hostname, port.port
                            ),
                        ));
                    }
                    let mut routes = default_routes(&service.hostname, port.port);
                    routes.source = RouteSource::GatewayApi(objects);
                    routes.http = http;
                    routes
                }
                None if !selected.is_empty() => {
                    virtual_service::routes(&service.hostname, port.port, &selected)
                }
                None => default_routes(&service.hostname, port.port),
            };
            let key = ServiceKey {
                hostname: service.hostname.clone(),
                port: port.port,
            };
            table.services.insert(key, routes);
        }
    }
    let mut seen = HashSet::new();
    warnings.retain(|w| seen.insert(w.to_string()));
    Compiled {
        routes: table,
        destinations,
        warnings,
    }
}

/// The routes of a service port no configuration applies to: everything to the service.
fn default_routes(hostname: &str, port: u16) -> CompiledRoutes {
    CompiledRoutes {
        hostname: hostname.to_owned(),
        port,
        source: RouteSource::Default,
        http: vec![default_http_route(hostname, port)],
        tcp: vec![default_tcp_route(hostname, port)],
    }
}

fn default_backend(hostname: &str, port: u16) -> WeightedBackend {
    WeightedBackend {
        backend: Backend::new(hostname, Some(port), None),
        weight: 1,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn default_http_route(hostname: &str, port: u16) -> Route {
    Route {
        name: Some("default".to_owned()),
        origin: RouteOrigin {
            object: None,
            rule: 0,
        },
        matches: Vec::new(),
        action: RouteAction::Forward(vec![default_backend(hostname, port)]),
        filters: Filters::default(),
        timeout: None,
        retry: Some(RetryPolicy::istio_default()),
    }
}

fn default_tcp_route(hostname: &str, port: u16) -> TcpRoute {
    TcpRoute {
        origin: RouteOrigin {
            object: None,
            rule: 0,
        },
        matches: Vec::new(),
        backends: vec![default_backend(hostname, port)],
    }
}
