//! L7 configuration: the Kubernetes objects a user would `kubectl apply`, loaded from a
//! directory of YAML files or watched on the Kubernetes API server ([`kubernetes`]).
//!
//! This is the waypoint's input, not yet a stage of the chain. [`route`](crate::route) compiles
//! it into the tables the chain consults: VirtualService, HTTPRoute and GRPCRoute rules become
//! the routes of each `inbound-vip|<port>|http|<host>` listener (the logical stage);
//! DestinationRules become the policies of each `inbound-vip|<port>|http/<subset>|<host>`
//! cluster (the concrete stage); ServiceEntries declare hosts the waypoint may serve.
//!
//! [`authz`](crate::authz) compiles AuthorizationPolicies into the policies each inbound VIP
//! listener enforces.
//!
//! Supported objects: `networking.istio.io` (`v1`, `v1beta1`, `v1alpha3`) `VirtualService`,
//! `DestinationRule`, `ServiceEntry`; `gateway.networking.k8s.io` (`v1`, `v1beta1`) `HTTPRoute`
//! and (`v1`, `v1alpha2`) `GRPCRoute`; `security.istio.io` (`v1`, `v1beta1`)
//! `RequestAuthentication`, which [`authn`](crate::authn) compiles into the JWT checks of the
//! inbound VIP listeners, and `AuthorizationPolicy`. Other kinds in the directory are skipped.
//! Unknown fields are accepted (except inside AuthorizationPolicy rules, see [`authz`]); a
//! malformed known field, or a combination the CRD's rules forbid, makes the object invalid: it
//! is left out and reported as a [`ConfigError`] naming the file, the line, the object and the
//! field, while every other object is kept. An invalid AuthorizationPolicy is also kept aside
//! as a [`RejectedPolicy`](authz::RejectedPolicy), so that the requests it would have covered
//! are denied rather than let through.

pub mod authn;
pub mod authz;
pub mod common;
pub mod duration;
mod error;
pub mod gateway;
pub mod istio;
pub mod kubernetes;
mod loader;
pub mod mesh;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ConfigErrorKind};

/// The namespace of an object whose `metadata.namespace` is absent (as `kubectl apply`
/// without `-n`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds the loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    /// `networking.istio.io` `VirtualService`.
    VirtualService,
    /// `networking.istio.io` `DestinationRule`.
    DestinationRule,
    /// `networking.istio.io` `ServiceEntry`.
    ServiceEntry,
    /// `gateway.networking.k8s.io` `HTTPRoute`.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    /// `gateway.networking.k8s.io` `GRPCRoute`.
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
    /// `security.istio.io` `RequestAuthentication`.
    RequestAuthentication,
    /// `security.istio.io` `AuthorizationPolicy`.
    AuthorizationPolicy,
}

impl Kind {
    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::ServiceEntry => "ServiceEntry",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// Every kind the loader reads, in the order their objects are compiled.
    pub const ALL: [Self; 7] = [
        Self::VirtualService,
        Self::DestinationRule,
        Self::ServiceEntry,
        Self::HttpRoute,
        Self::GrpcRoute,
        Self::RequestAuthentication,
        Self::AuthorizationPolicy,
    ];

    /// The API group.
    pub const fn group(self) -> &'static str {
        match self {
            Self::VirtualService | Self::DestinationRule | Self::ServiceEntry => {
                "networking.istio.io"
            }
            Self::HttpRoute | Self::GrpcRoute => "gateway.networking.k8s.io",
            Self::RequestAuthentication | Self::AuthorizationPolicy => "security.istio.io",
        }
    }

    /// The resource name of the kind in API paths and RBAC rules (`virtualservices`).
    pub const fn plural(self) -> &'static str {
        match self {
            Self::VirtualService => "virtualservices",
            Self::DestinationRule => "destinationrules",
            Self::ServiceEntry => "serviceentries",
            Self::HttpRoute => "httproutes",
            Self::GrpcRoute => "grpcroutes",
            Self::RequestAuthentication => "requestauthentications",
            Self::AuthorizationPolicy => "authorizationpolicies",
        }
    }

    /// The API versions read, most preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Self::VirtualService | Self::DestinationRule | Self::ServiceEntry => {
                &["v1", "v1beta1", "v1alpha3"]
            }
            Self::HttpRoute => &["v1", "v1beta1"],
            Self::GrpcRoute => &["v1", "v1alpha2"],
            Self::RequestAuthentication | Self::AuthorizationPolicy => &["v1", "v1beta1"],
        }
    }

    /// Identifies a kind from `apiVersion` and `kind`: `None` when the loader does not read
    /// this kind at all, `Some(Err(kind))` when it does but not in this API version.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Result<Self, Self>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let this = Self::ALL
            .into_iter()
            .find(|k| k.group() == group && k.as_str() == kind)?;
        Some(if this.versions().contains(&version) {
            Ok(this)
        } else {
            Err(this)
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies an object: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The `metadata` fields the waypoint reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace ([`DEFAULT_NAMESPACE`] when absent).
    #[serde(default)]
    pub namespace: Option<String>,
    /// RFC 3339 creation time, when present; orders objects where Istio uses creation order.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file; for an object read from the Kubernetes API server, `<kind>
    /// <namespace>/<name>`.
    pub file: PathBuf,
    /// The 1-based line its document starts at, when known.
    pub line: Option<usize>,
}

/// The spec type of a kind.
pub trait Spec {
    /// The kind whose `spec` this is.
    const KIND: Kind;
}

impl Spec for istio::VirtualServiceSpec {
    const KIND: Kind = Kind::VirtualService;
}
impl Spec for istio::DestinationRuleSpec {
    const KIND: Kind = Kind::DestinationRule;
}
impl Spec for istio::ServiceEntrySpec {
    const KIND: Kind = Kind::ServiceEntry;
}
impl Spec for gateway::HttpRouteSpec {
    const KIND: Kind = Kind::HttpRoute;
}
impl Spec for gateway::GrpcRouteSpec {
    const KIND: Kind = Kind::GrpcRoute;
}
impl Spec for authn::RequestAuthenticationSpec {
    const KIND: Kind = Kind::RequestAuthentication;
}
impl Spec for authz::AuthorizationPolicySpec {
    const KIND: Kind = Kind::AuthorizationPolicy;
}

/// A loaded object: metadata, origin and typed spec.
#[derive(Debug, Clone)]
pub struct Object<S> {
    /// Metadata (namespace defaulted).
    pub meta: ObjectMeta,
    /// Where it came from.
    pub source: Source,
    /// The spec.
    pub spec: S,
}

impl<S: Spec> Object<S> {
    /// The name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// Kind, namespace and name.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: S::KIND,
            namespace: self.namespace().to_owned(),
            name: self.meta.name.clone(),
        }
    }

    /// The order Istio gives objects where several apply: oldest first (objects without a
    /// timestamp, as in files, sort first), then by namespace and name.
    pub fn precedence_key(&self) -> (Option<&str>, &str, &str) {
        (
            self.meta.creation_timestamp.as_deref(),
            self.namespace(),
            self.name(),
        )
    }
}

/// Every valid object of a config directory, by kind, in file order.
#[derive(Debug, Clone, Default)]
pub struct ConfigSet {
    /// `VirtualService`s.
    pub virtual_services: Vec<Object<istio::VirtualServiceSpec>>,
    /// `DestinationRule`s.
    pub destination_rules: Vec<Object<istio::DestinationRuleSpec>>,
    /// `ServiceEntry`s.
    pub service_entries: Vec<Object<istio::ServiceEntrySpec>>,
    /// `HTTPRoute`s.
    pub http_routes: Vec<Object<gateway::HttpRouteSpec>>,
    /// `GRPCRoute`s.
    pub grpc_routes: Vec<Object<gateway::GrpcRouteSpec>>,
    /// `RequestAuthentication`s.
    pub request_authentications: Vec<Object<authn::RequestAuthenticationSpec>>,
    /// Valid `AuthorizationPolicy`s.
    pub authorization_policies: Vec<Object<authz::AuthorizationPolicySpec>>,
    /// `AuthorizationPolicy`s that could not be loaded (also reported as errors).
    pub rejected_authorization_policies: Vec<authz::RejectedPolicy>,
    /// Where each loaded object came from, to report duplicates.
    seen: BTreeMap<ObjectRef, PathBuf>,
}

impl ConfigSet {
    /// The number of objects loaded.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests;
