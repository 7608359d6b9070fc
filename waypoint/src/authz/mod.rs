//! L7 authorization: Istio `AuthorizationPolicy` as the waypoint enforces it.
//!
//! # Where this sits in the data path
//!
//! ```text
//! config dir (AuthorizationPolicy YAML) ─▶ config::authz ─▶ authz::compile ─▶ AuthzTable (in L7State)
//!                                                                               │ policies of the service
//! inbound-vip|<port>|http|<host>: normalise path ─▶ authorize ◀──────────────────┘
//!                                  (path::normalize)   (eval::evaluate) ─▶ route ─▶ filters ─▶ …
//! inbound-vip|<port>|tcp|<host>:  authorize (L4 attributes only) ─▶ TCP route ─▶ …
//! ```
//!
//! [`compile`] runs whenever the configuration or the mesh state changes: it decides which
//! policies apply to each service this waypoint serves and stores them in an [`AuthzTable`].
//! The inbound VIP listener then calls [`evaluate`] for every request, after the path was
//! normalised ([`normalize_path`]) and before routing; a denial is answered there with 403
//! `RBAC: access denied` and nothing reaches the backend. Everything here is pure: no I/O,
//! no clock, no logging.
//!
//! # Which policies apply (Istio's `policyattachment.go`, for a waypoint)
//!
//! Only policies with `targetRefs` apply; a `selector` policy, and a policy with neither (even
//! in the root namespace), never applies to a waypoint: ztunnel enforces those at the
//! destination. A target applies to a service this waypoint serves when it is
//!
//! - the `Gateway` of this waypoint (same name, policy in the waypoint's namespace): every
//!   service;
//! - the `GatewayClass` `istio-waypoint`, from a policy in the root namespace `istio-system`:
//!   every service;
//! - the `Service` of that name in the policy's namespace (a Kubernetes service, hostname
//!   `<name>.<ns>.svc.<domain>`);
//! - the `ServiceEntry` of that name in the policy's namespace: its hosts (or a mesh-state
//!   service of that name and namespace that is not a Kubernetes service).
//!
//! # Invalid policies fail closed
//!
//! A policy the loader rejected ([`RejectedPolicy`]) is compiled as a policy that matches
//! every request and denies it ([`Reason::Invalid`]), for the targets that could still be read
//! from it. When even those are unreadable, it covers every service of its namespace, and the
//! whole waypoint when it lives in the waypoint's namespace or the root namespace. A rejected
//! policy with a `selector` or without targets applies nowhere, as a valid one would. The
//! reasoning: Istio's admission webhook would have refused the object, but here it is already
//! written, and skipping it could open access (a broken DENY policy certainly would).
//!
//! # Layout
//! - this file: the compiled [`Policy`], [`compile`] and the [`AuthzTable`].
//! - `eval`: [`RequestAttributes`], [`evaluate`] and the [`Decision`].
//! - `path`: [`normalize_path`] and [`check_method`], applied before authorization and
//!   routing.

mod eval;
mod path;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState as FastHash;
use serde::Serialize;

pub use eval::{Decision, HttpAttributes, PolicyMatch, Reason, RequestAttributes, evaluate};
pub use path::{MethodError, PathError, check_method, normalize_path, normalize_uri};

use crate::config::authz::{
    Action, Attachment, AuthorizationPolicySpec, ROOT_NAMESPACE, RejectedPolicy, Rule, TargetKind,
    TargetRef, WAYPOINT_GATEWAY_CLASS,
};
use crate::config::mesh::ExtensionProviders;
use crate::config::{ConfigSet, Object};
use crate::route::ServiceTarget;

/// One policy, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Action (as written; an invalid policy denies whatever its action).
    pub action: Action,
    /// The provider of a CUSTOM policy: the name of an external authorizer of the mesh
    /// config (`extensionProviders`). A policy whose provider is not defined there denies the
    /// requests it matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The rules (none: the policy matches nothing).
    pub rules: Vec<Rule>,
    /// Why the policy is invalid; an invalid policy denies every request it applies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

impl Policy {
    fn valid(object: &Object<AuthorizationPolicySpec>) -> Self {
        Self {
            namespace: object.namespace().to_owned(),
            name: object.name().to_owned(),
            action: object.spec.action,
            provider: object.spec.provider.clone(),
            rules: object.spec.rules.clone().unwrap_or_default(),
            invalid: None,
        }
    }

    fn rejected(rejected: &RejectedPolicy) -> Self {
        Self {
            namespace: rejected.object.namespace.clone(),
            name: rejected.object.name.clone(),
            action: rejected.action.unwrap_or(Action::Deny),
            provider: None,
            rules: Vec::new(),
            invalid: Some(rejected.reason.clone()),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.action, self.namespace, self.name)
    }
}

/// What [`compile`] needs to know about this waypoint.
#[derive(Debug, Clone)]
pub struct AuthzOptions {
    /// The waypoint's name (its Gateway's).
    pub waypoint_name: String,
    /// The waypoint's namespace.
    pub waypoint_namespace: String,
    /// The root namespace ([`ROOT_NAMESPACE`] by default).
    pub root_namespace: String,
    /// The cluster's DNS domain, to tell Kubernetes services from ServiceEntry hosts.
    pub domain_suffix: String,
    /// The external authorizers of the mesh config, to warn about CUSTOM policies naming
    /// another provider (none by default).
    pub providers: Arc<ExtensionProviders>,
    /// Whether the CUSTOM policies that apply to one service may name different providers
    /// (Istio's `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`); see [`compile`]. Default
    /// false.
    pub multiple_custom_providers: bool,
}

impl AuthzOptions {
    /// Options for the waypoint `name` in `namespace`, with Istio's root namespace and the
    /// `cluster.local` domain.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            waypoint_name: name.to_owned(),
            waypoint_namespace: namespace.to_owned(),
            root_namespace: ROOT_NAMESPACE.to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            providers: Arc::default(),
            multiple_custom_providers: false,
        }
    }
}

/// The policies that apply to each served service.
#[derive(Debug, Clone, Default)]
pub struct AuthzTable {
    /// By service hostname.
    by_host: HashMap<String, Arc<[Arc<Policy>]>, FastHash>,
    /// The policies that apply to every service of this waypoint (for a hostname the table
    /// does not know, e.g. a service bound after the last compilation).
    waypoint_wide: Arc<[Arc<Policy>]>,
    /// Every policy loaded and where it applies, for `config_dump`.
    entries: Vec<PolicyEntry>,
    /// Services whose CUSTOM policies name more than one provider, denied whole.
    conflicts: Vec<String>,
}

/// One loaded policy, for `config_dump`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// The policy.
    #[serde(flatten, serialize_with = "serialize_policy")]
    pub policy: Arc<Policy>,
    /// What it attaches to.
    pub attachment: Attachment,
    /// The hostnames of the served services it applies to.
    pub applies_to: Vec<String>,
    /// Why it applies to none of them, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applied: Option<&'static str>,
    /// A warning for operators (a CUSTOM policy whose provider is not defined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

fn serialize_policy<S: serde::Serializer>(
    policy: &Arc<Policy>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    policy.as_ref().serialize(serializer)
}

impl AuthzTable {
    /// The policies that apply to requests for `hostname`.
    pub fn policies(&self, hostname: &str) -> &[Arc<Policy>] {
        self.by_host.get(hostname).unwrap_or(&self.waypoint_wide)
    }

    /// Every loaded policy with where it applies, in load order.
    pub fn entries(&self) -> &[PolicyEntry] {
        &self.entries
    }

    /// Problems worth a warning: applicable CUSTOM policies whose provider is not defined,
    /// applicable invalid policies, and services denied because their CUSTOM policies name
    /// more than one provider.
    pub fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        let policies = self.entries.iter().filter_map(|e| {
            if e.applies_to.is_empty() {
                return None;
            }
            e.warning.clone().or_else(|| {
                e.policy.invalid.as_ref().map(|reason| {
                    format!(
                        "invalid AuthorizationPolicy {} denies every request to {}: {reason}",
                        e.policy.key(),
                        e.applies_to.join(", ")
                    )
                })
            })
        });
        policies.chain(self.conflicts.iter().cloned())
    }
}

/// The name of the policy that stands for a service's CUSTOM provider conflict.
pub const CUSTOM_CONFLICT_POLICY: &str = "custom-provider-conflict";

/// The distinct providers of the valid CUSTOM policies in `policies`, sorted; `None` unless
/// there are several.
fn conflicting_providers(policies: &[Arc<Policy>]) -> Option<Vec<String>> {
    let mut providers: Vec<String> = policies
        .iter()
        .filter(|p| p.action == Action::Custom && p.invalid.is_none())
        .map(|p| p.provider.clone().unwrap_or_default())
        .collect();
    providers.sort();
    providers.dedup();
    (providers.len() > 1).then_some(providers)
}

/// Istio's refusal of several CUSTOM providers on one workload.
fn conflict_reason(providers: &[String]) -> String {
    format!(
        "only 1 provider can be used per workload, found multiple providers: [{}]",
        providers.join(" ")
    )
}

/// Without `multiple`, a policy list whose CUSTOM policies name several providers gets an
/// invalid policy in front, denying every request (Istio generates a deny-all for the
/// workload). Returns the providers when it did.
fn deny_conflict(
    policies: &mut Vec<Arc<Policy>>,
    namespace: &str,
    multiple: bool,
) -> Option<Vec<String>> {
    if multiple {
        return None;
    }
    let providers = conflicting_providers(policies)?;
    let deny = Policy {
        namespace: namespace.to_owned(),
        name: CUSTOM_CONFLICT_POLICY.to_owned(),
        action: Action::Custom,
        provider: None,
        rules: Vec::new(),
        invalid: Some(conflict_reason(&providers)),
    };
    policies.insert(0, Arc::new(deny));
    Some(providers)
}

/// Where a policy applies among the served services.
enum Scope {
    /// Every service of the waypoint.
    Waypoint,
    /// These services (indexes into the service list).
    Services(Vec<usize>),
}

/// Compiles the AuthorizationPolicies of `config` for the `services` this waypoint serves.
///
/// A service whose applicable CUSTOM policies name more than one extension provider is
/// denied whole, as istiod does for a workload ("only 1 provider can be used per workload,
/// found multiple providers: [a b]"): an invalid policy [`CUSTOM_CONFLICT_POLICY`] in the
/// waypoint's namespace is put in front of its policies and a warning names the providers
/// (fail closed). With [`AuthzOptions::multiple_custom_providers`] the policies stay as they
/// are and each provider is asked for the requests its own policies match
/// ([`Decision::custom`]).
pub fn compile(
    config: &ConfigSet,
    services: &[ServiceTarget],
    options: &AuthzOptions,
) -> AuthzTable {
    let mut per_service: Vec<Vec<Arc<Policy>>> = vec![Vec::new(); services.len()];
    let mut waypoint_wide: Vec<Arc<Policy>> = Vec::new();
    let mut entries = Vec::new();
    let valid = config
        .authorization_policies
        .iter()
        .map(|object| (Policy::valid(object), object.spec.attachment()));
    let rejected = config
        .rejected_authorization_policies
        .iter()
        .map(|r| (Policy::rejected(r), r.attachment.clone()));
    for (policy, attachment) in valid.chain(rejected) {
        let policy = Arc::new(policy);
        let (scope, not_applied) = match &attachment {
            Attachment::Selector => (None, Some("selector policies never apply to a waypoint")),
            Attachment::None => (
                None,
                Some("a policy without targetRefs never applies to a waypoint"),
            ),
            Attachment::TargetRefs(refs) => (
                Some(scope_of_refs(
                    &policy.namespace,
                    refs,
                    config,
                    services,
                    options,
                )),
                None,
            ),
            Attachment::Unreadable => (
                Some(unreadable_scope(&policy.namespace, services, options)),
                None,
            ),
        };
        let applies_to: Vec<String> = match &scope {
            None => Vec::new(),
            Some(Scope::Waypoint) => {
                waypoint_wide.push(Arc::clone(&policy));
                for list in &mut per_service {
                    list.push(Arc::clone(&policy));
                }
                services.iter().map(|s| s.hostname.clone()).collect()
            }
            Some(Scope::Services(indexes)) => indexes
                .iter()
                .filter_map(|&i| {
                    per_service.get_mut(i)?.push(Arc::clone(&policy));
                    services.get(i).map(|s| s.hostname.clone())
                })
                .collect(),
        };
        let not_applied = not_applied.or_else(|| {
            applies_to
                .is_empty()
                .then_some("no service served by this waypoint is targeted")
        });
        let warning = (policy.action == Action::Custom
            && policy.invalid.is_none()
            && policy
                .provider
                .as_deref()
                .is_none_or(|p| options.providers.get(p).is_none()))
        .then(|| {
            format!(
                "CUSTOM AuthorizationPolicy {}: extension provider {:?} is not available (not in meshConfig.extensionProviders); requests it matches are denied",
                policy.key(),
                policy.provider.as_deref().unwrap_or_default()
            )
        });
        entries.push(PolicyEntry {
            policy,
            attachment,
            applies_to,
            not_applied,
            warning,
        });
    }
    let namespace = options.waypoint_namespace.as_str();
    let multiple = options.multiple_custom_providers;
    let mut conflicts = Vec::new();
    for (service, list) in services.iter().zip(per_service.iter_mut()) {
        if let Some(providers) = deny_conflict(list, namespace, multiple) {
            conflicts.push(format!(
                "{}: every request to {} is denied (CUSTOM AuthorizationPolicies name several extension providers; PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS is off)",
                conflict_reason(&providers),
                service.hostname
            ));
        }
    }
    deny_conflict(&mut waypoint_wide, namespace, multiple);
    let by_host = services
        .iter()
        .zip(per_service)
        .map(|(service, list)| (service.hostname.clone(), Arc::from(list)))
        .collect();
    AuthzTable {
        by_host,
        waypoint_wide: Arc::from(waypoint_wide),
        entries,
        conflicts,
    }
}

/// The services `refs` (of a policy in `namespace`) name.
fn scope_of_refs(
    namespace: &str,
    refs: &[TargetRef],
    config: &ConfigSet,
    services: &[ServiceTarget],
    options: &AuthzOptions,
) -> Scope {
    let mut indexes = Vec::new();
    for target in refs {
        if target
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            continue;
        }
        match target.kind {
            TargetKind::Gateway => {
                if namespace == options.waypoint_namespace && target.name == options.waypoint_name {
                    return Scope::Waypoint;
                }
            }
            TargetKind::GatewayClass => {
                if namespace == options.root_namespace && target.name == WAYPOINT_GATEWAY_CLASS {
                    return Scope::Waypoint;
                }
            }
            TargetKind::Service => indexes.extend(
                services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        s.namespace == namespace
                            && s.name.as_deref() == Some(target.name.as_str())
                            && is_kubernetes_service(s, options)
                    })
                    .map(|(i, _)| i),
            ),
            TargetKind::ServiceEntry => indexes.extend(
                services
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        s.namespace == namespace
                            && service_entry_covers(config, namespace, &target.name, s, options)
                    })
                    .map(|(i, _)| i),
            ),
        }
    }
    indexes.sort_unstable();
    indexes.dedup();
    Scope::Services(indexes)
}

/// Where a rejected policy whose targets cannot be read applies: the whole waypoint when it
/// could have targeted it (its namespace, or the root namespace), else every service of its
/// namespace.
fn unreadable_scope(namespace: &str, services: &[ServiceTarget], options: &AuthzOptions) -> Scope {
    if namespace == options.waypoint_namespace || namespace == options.root_namespace {
        return Scope::Waypoint;
    }
    Scope::Services(
        services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.namespace == namespace)
            .map(|(i, _)| i)
            .collect(),
    )
}

/// Whether `service` is the Kubernetes Service `<name>.<namespace>.svc.<domain>`.
fn is_kubernetes_service(service: &ServiceTarget, options: &AuthzOptions) -> bool {
    service.name.as_deref().is_some_and(|name| {
        service.hostname.eq_ignore_ascii_case(&format!(
            "{name}.{}.svc.{}",
            service.namespace, options.domain_suffix
        ))
    })
}

/// Whether the ServiceEntry `name` of `namespace` covers `service`: a loaded ServiceEntry of
/// that name lists its hostname, or the mesh state names the service after it (istiod names
/// ServiceEntry services after the object) and it is not a Kubernetes service.
fn service_entry_covers(
    config: &ConfigSet,
    namespace: &str,
    name: &str,
    service: &ServiceTarget,
    options: &AuthzOptions,
) -> bool {
    let listed = config.service_entries.iter().any(|entry| {
        entry.namespace() == namespace
            && entry.name() == name
            && entry
                .spec
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&service.hostname))
    });
    listed || (service.name.as_deref() == Some(name) && !is_kubernetes_service(service, options))
}
