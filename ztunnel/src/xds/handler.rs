//! Applying one delta response to the mesh state.
//!
//! Every resource of a response is decoded and converted on its own; the valid ones (and all
//! removals) are applied together in one [`StateHandle::update`], so readers see the whole
//! response at once, and the invalid ones are returned as [`Rejection`]s for the NACK. A
//! rejected update of a resource we already hold leaves the previous version in place.
//!
//! [`Known`] remembers, per resource name, the version we hold and the state key it was stored
//! under, so that a removal (which carries only the name) removes exactly what was added and a
//! reconnect can tell istiod what we already have (`initial_resource_versions`).

use std::collections::HashMap;
use std::fmt;

use prost::Message;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use proto::istio::security as security_pb;
use proto::istio::workload as workload_pb;

use crate::rbac::Authorization;
use crate::state::{
    ConvertError, MeshStateBuilder, NamespacedHostname, Service, StateHandle, Workload,
};

/// The resource types this client subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `istio.workload.Address`: a workload or a service.
    Address,
    /// `istio.security.Authorization`: an L4 policy.
    Authorization,
}

impl ResourceType {
    /// Both types, in subscription order.
    pub const ALL: [ResourceType; 2] = [ResourceType::Address, ResourceType::Authorization];

    /// The xDS type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Address => proto::ADDRESS_TYPE_URL,
            Self::Authorization => proto::AUTHORIZATION_TYPE_URL,
        }
    }

    /// The type with this URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }
}

/// Where a named resource lives in the state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StateKey {
    Workload(String),
    Service(NamespacedHostname),
    Policy { namespace: String, name: String },
}

/// What we hold, per type and resource name: its version and state key.
#[derive(Debug, Default)]
pub struct Known {
    resources: HashMap<ResourceType, HashMap<String, (String, StateKey)>>,
}

impl Known {
    /// Name → version of every resource of `kind` held, for `initial_resource_versions`.
    pub fn versions(&self, kind: ResourceType) -> HashMap<String, String> {
        self.resources
            .get(&kind)
            .map(|m| {
                m.iter()
                    .map(|(name, (version, _))| (name.clone(), version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A resource of a response that was not applied.
#[derive(Debug)]
pub struct Rejection {
    /// The resource name.
    pub name: String,
    /// Why.
    pub reason: RejectReason,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Why a resource was not applied.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RejectReason {
    /// The resource has no body.
    #[error("resource has no body")]
    MissingBody,
    /// The body's type URL is not the response's.
    #[error("resource body has type {0}, expected the response's type")]
    WrongType(String),
    /// The body does not decode as the response's type.
    #[error("cannot decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An `Address` that is neither a workload nor a service.
    #[error("address is neither a workload nor a service")]
    EmptyAddress,
    /// The workload is not valid.
    #[error("invalid workload: {0}")]
    Workload(#[source] ConvertError),
    /// The service is not valid.
    #[error("invalid service: {0}")]
    Service(#[source] ConvertError),
    /// The policy is not valid.
    #[error("invalid authorization policy: {0}")]
    Authorization(#[source] crate::rbac::ConvertError),
}

/// A converted resource, ready to insert. Workloads are boxed: they are several times larger
/// than the other variants and a response holds many converted resources at once.
enum Converted {
    Workload(Box<Workload>),
    Service(Service),
    Policy(Authorization),
}

impl Converted {
    fn key(&self) -> StateKey {
        match self {
            Self::Workload(w) => StateKey::Workload(w.uid.clone()),
            Self::Service(s) => StateKey::Service(s.key()),
            Self::Policy(p) => StateKey::Policy {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
        }
    }
}

/// Applies `response` (of type `kind`) to `state`; returns the rejected resources.
pub fn apply(
    state: &StateHandle,
    known: &mut Known,
    kind: ResourceType,
    response: &DeltaDiscoveryResponse,
) -> Vec<Rejection> {
    let mut rejections = Vec::new();
    let mut inserts = Vec::with_capacity(response.resources.len());
    for resource in &response.resources {
        match convert(kind, resource) {
            Ok(converted) => inserts.push((resource, converted)),
            Err(reason) => rejections.push(Rejection {
                name: resource.name.clone(),
                reason,
            }),
        }
    }
    let removals: Vec<&str> = response
        .removed_resources
        .iter()
        .map(String::as_str)
        .chain(
            response
                .removed_resource_names
                .iter()
                .map(|r| r.name.as_str()),
        )
        .collect();
    if inserts.is_empty() && removals.is_empty() {
        return rejections;
    }

    let held = known.resources.entry(kind).or_default();
    state.update(|builder| {
        for name in removals {
            let key = held.remove(name).map(|(_, key)| key);
            remove(builder, kind, name, key);
        }
        for (resource, converted) in inserts {
            let key = converted.key();
            // The same name now stands for something else (e.g. a new uid): drop the old entry.
            if let Some((_, previous)) = held.get(&resource.name)
                && *previous != key
            {
                remove(builder, kind, &resource.name, Some(previous.clone()));
            }
            match converted {
                Converted::Workload(w) => drop(builder.insert_workload(*w)),
                Converted::Service(s) => drop(builder.insert_service(s)),
                Converted::Policy(p) => drop(builder.insert_policy(p)),
            }
            held.insert(resource.name.clone(), (resource.version.clone(), key));
        }
    });
    rejections
}

/// Decodes and validates one resource.
fn convert(kind: ResourceType, resource: &Resource) -> Result<Converted, RejectReason> {
    let body = resource
        .resource
        .as_ref()
        .ok_or(RejectReason::MissingBody)?;
    if !body.type_url.is_empty() && body.type_url != kind.type_url() {
        return Err(RejectReason::WrongType(body.type_url.clone()));
    }
    match kind {
        ResourceType::Address => {
            use workload_pb::address::Type;
            match workload_pb::Address::decode(body.value.as_slice())?.r#type {
                Some(Type::Workload(w)) => Workload::try_from(w)
                    .map(|w| Converted::Workload(Box::new(w)))
                    .map_err(RejectReason::Workload),
                Some(Type::Service(s)) => Service::try_from(s)
                    .map(Converted::Service)
                    .map_err(RejectReason::Service),
                None => Err(RejectReason::EmptyAddress),
            }
        }
        ResourceType::Authorization => {
            let policy = security_pb::Authorization::decode(body.value.as_slice())?;
            Authorization::try_from(policy)
                .map(Converted::Policy)
                .map_err(RejectReason::Authorization)
        }
    }
}

/// Removes the resource `name`, stored under `key` when known. Unknown address names are tried
/// as a workload uid, then as a service's `namespace/hostname`; unknown policy names as
/// `namespace/name`.
fn remove(builder: &mut MeshStateBuilder, kind: ResourceType, name: &str, key: Option<StateKey>) {
    match key {
        Some(StateKey::Workload(uid)) => drop(builder.remove_workload(&uid)),
        Some(StateKey::Service(key)) => drop(builder.remove_service(&key)),
        Some(StateKey::Policy { namespace, name }) => {
            drop(builder.remove_policy(&namespace, &name))
        }
        None => match kind {
            ResourceType::Address => {
                if builder.remove_workload(name).is_none()
                    && let Ok(key) = name.parse::<NamespacedHostname>()
                {
                    drop(builder.remove_service(&key));
                }
            }
            ResourceType::Authorization => {
                if let Some((namespace, policy)) = name.split_once('/') {
                    drop(builder.remove_policy(namespace, policy));
                }
            }
        },
    }
}
