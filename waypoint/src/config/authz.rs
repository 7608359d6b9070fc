//! `security.istio.io` (`v1`, `v1beta1`) `AuthorizationPolicy`: the input of the waypoint's L7
//! authorization ([`crate::authz`]).
//!
//! Parsing applies the rules Istio's admission webhook and CRD enforce, so a file behaves as
//! the same object would after `kubectl apply`: `targetRefs` kinds and groups, `selector` and
//! `targetRefs` mutually exclusive, `provider` only with `CUSTOM`, no `DENY` or `CUSTOM`
//! without `rules`, no empty `from`/`to`/`source`/`operation`, no empty values, valid IP
//! blocks and ports, known `when` keys with values of the right form.
//!
//! Unlike the routing kinds, unknown fields inside `rules` are errors: a misspelt field of an
//! ALLOW rule that was silently ignored would widen what the rule allows. Attributes this
//! waypoint cannot evaluate (`experimental.envoy.filters.*`, path templates) are errors too.
//!
//! An invalid policy is not simply dropped: the loader keeps what it can read of its targets
//! ([`Attachment::read`]) so that [`crate::authz`] can deny the requests it would have
//! covered (fail closed).

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::common::deserialize_via;
use super::gateway::{GATEWAY_GROUP, is_core_group};
use super::{ObjectRef, Source as ObjectSource};

mod values;

pub use values::{
    Attribute, Condition, Pattern, RequestPrincipalPattern, Values, parse_cidr, parse_port,
};
use values::{Cidr, PathPattern, PortValue};

/// Istio's root namespace: policies there may target the `istio-waypoint` GatewayClass.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The GatewayClass of waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
/// The API group of `ServiceEntry`.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// Most `targetRefs` the CRD accepts.
pub const MAX_TARGET_REFS: usize = 16;

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workload labels (`selector.matchLabels`); a selector policy never applies to a waypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// What the policy attaches to (`targetRefs`, or the deprecated single `targetRef`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// What a matching request gets.
    pub action: Action,
    /// The extension provider of a `CUSTOM` policy (`provider.name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The rules; the policy matches when any does. `None` when the field is absent (an ALLOW
    /// or AUDIT policy that matches nothing); `Some(vec![Rule::default()])` matches everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    selector: Option<WorkloadSelector>,
    target_ref: Option<TargetRef>,
    target_refs: Option<Vec<TargetRef>>,
    #[serde(default)]
    action: Action,
    provider: Option<Provider>,
    rules: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Provider {
    #[serde(default)]
    name: String,
}

deserialize_via!(AuthorizationPolicySpec, RawSpec);

impl TryFrom<RawSpec> for AuthorizationPolicySpec {
    type Error = String;

    fn try_from(raw: RawSpec) -> Result<Self, String> {
        let target_refs = match (raw.target_ref, raw.target_refs) {
            (Some(_), Some(_)) => {
                return Err("only one of targetRef or targetRefs can be set".into());
            }
            (Some(one), None) => vec![one],
            (None, Some(many)) => many,
            (None, None) => Vec::new(),
        };
        if target_refs.len() > MAX_TARGET_REFS {
            return Err(format!("targetRefs: at most {MAX_TARGET_REFS} are allowed"));
        }
        if raw.selector.is_some() && !target_refs.is_empty() {
            return Err("only one of targetRefs or selector can be set".into());
        }
        let provider = raw.provider.map(|p| p.name);
        match raw.action {
            Action::Custom => {
                if raw.rules.is_none() {
                    return Err("CUSTOM action without rules is never triggered; add an empty rule {} to apply it to every request".into());
                }
                if provider.as_deref().is_none_or(str::is_empty) {
                    return Err("provider.name must not be empty for action CUSTOM".into());
                }
                for (i, rule) in raw.rules.iter().flatten().enumerate() {
                    rule.check_custom(i)?;
                }
            }
            Action::Deny if raw.rules.is_none() => {
                return Err("DENY action without rules is never triggered; add an empty rule {} to apply it to every request".into());
            }
            action => {
                if provider.is_some() {
                    return Err(format!(
                        "provider must only be set with action CUSTOM, not {action}"
                    ));
                }
            }
        }
        Ok(Self {
            selector: raw.selector.map(|s| s.match_labels),
            target_refs,
            action: raw.action,
            provider,
            rules: raw.rules,
        })
    }
}

impl AuthorizationPolicySpec {
    /// What the policy attaches to.
    pub fn attachment(&self) -> Attachment {
        if !self.target_refs.is_empty() {
            Attachment::TargetRefs(self.target_refs.clone())
        } else if self.selector.is_some() {
            Attachment::Selector
        } else {
            Attachment::None
        }
    }

    /// Checks what depends on the object's namespace: a `targetRefs` entry may only name an
    /// object of the policy's own namespace (Istio does not support cross-namespace targets).
    pub fn check_namespace(&self, namespace: &str) -> Result<(), (String, String)> {
        for (i, target) in self.target_refs.iter().enumerate() {
            if let Some(ns) = &target.namespace
                && ns != namespace
            {
                return Err((
                    format!("spec.targetRefs[{i}].namespace"),
                    format!(
                        "cross-namespace targets are not supported: {ns:?} is not the policy's namespace {namespace:?}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `spec.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// A request must match an ALLOW policy when any applies.
    #[default]
    Allow,
    /// A matching request is denied.
    Deny,
    /// A matching request is recorded as audited; the decision does not change.
    Audit,
    /// A matching request is checked by an external authorizer (`provider`).
    Custom,
}

impl Action {
    /// Reads `spec.action` of a document that failed to parse (`ALLOW` when absent).
    pub fn read(document: &serde_yaml_ng::Value) -> Option<Self> {
        match document.get("spec").and_then(|s| s.get("action")) {
            None | Some(serde_yaml_ng::Value::Null) => Some(Self::Allow),
            Some(value) => serde_yaml_ng::from_value(value.clone()).ok(),
        }
    }

    /// Istio's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum TargetKind {
    /// `gateway.networking.k8s.io` `Gateway`: the whole waypoint of that name.
    Gateway,
    /// `gateway.networking.k8s.io` `GatewayClass` `istio-waypoint` (root namespace only):
    /// every waypoint.
    GatewayClass,
    /// Core `Service`: the requests to that service.
    Service,
    /// `networking.istio.io` `ServiceEntry`: the requests to its hosts.
    ServiceEntry,
}

/// A `targetRefs` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TargetRef {
    /// Kind (the group was checked against it).
    pub kind: TargetKind,
    /// Name.
    pub name: String,
    /// Namespace, when written (it must be the policy's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize)]
struct RawTargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

deserialize_via!(TargetRef, RawTargetRef);

impl TryFrom<RawTargetRef> for TargetRef {
    type Error = String;

    fn try_from(raw: RawTargetRef) -> Result<Self, String> {
        let kind = target_kind(&raw.group, &raw.kind)?;
        if raw.name.is_empty() {
            return Err("name must not be empty".into());
        }
        Ok(Self {
            kind,
            name: raw.name,
            namespace: raw.namespace.filter(|ns| !ns.is_empty()),
        })
    }
}

fn target_kind(group: &str, kind: &str) -> Result<TargetKind, String> {
    match (group, kind) {
        (GATEWAY_GROUP, "Gateway") => Ok(TargetKind::Gateway),
        (GATEWAY_GROUP, "GatewayClass") => Ok(TargetKind::GatewayClass),
        (g, "Service") if is_core_group(g) => Ok(TargetKind::Service),
        (NETWORKING_GROUP, "ServiceEntry") => Ok(TargetKind::ServiceEntry),
        _ => Err(format!(
            "unsupported target {}/{kind}: expected core/Service, {NETWORKING_GROUP}/ServiceEntry, {GATEWAY_GROUP}/Gateway or {GATEWAY_GROUP}/GatewayClass",
            if group.is_empty() { "core" } else { group }
        )),
    }
}

/// What a policy attaches to, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Attachment {
    /// The objects of `targetRefs`.
    TargetRefs(Vec<TargetRef>),
    /// Workloads chosen by labels: never a waypoint.
    Selector,
    /// Neither `targetRefs` nor `selector`: for a waypoint, nothing (such a policy is enforced
    /// by ztunnel at the destination, not here).
    None,
    /// The targets of an invalid object could not be read.
    Unreadable,
}

impl Attachment {
    /// Reads the targets of an object whose spec failed to parse: `targetRefs` (or
    /// `targetRef`) entries with a supported group and kind and a name, else the presence of a
    /// `selector`. Anything else about the targets that cannot be read gives
    /// [`Attachment::Unreadable`].
    pub fn read(document: &serde_yaml_ng::Value) -> Self {
        use serde_yaml_ng::Value;
        let Some(spec) = document.get("spec") else {
            return Self::None;
        };
        if spec.is_null() {
            return Self::None;
        }
        if !spec.is_mapping() {
            return Self::Unreadable;
        }
        let mut entries: Vec<&Value> = Vec::new();
        match spec.get("targetRefs") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(refs)) => entries.extend(refs),
            Some(_) => return Self::Unreadable,
        }
        match spec.get("targetRef") {
            None | Some(Value::Null) => {}
            Some(one) => entries.push(one),
        }
        let mut refs = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = |key: &str| entry.get(key).and_then(Value::as_str);
            let (Some(kind), Some(name)) = (text("kind"), text("name")) else {
                return Self::Unreadable;
            };
            let Ok(kind) = target_kind(text("group").unwrap_or_default(), kind) else {
                return Self::Unreadable;
            };
            refs.push(TargetRef {
                kind,
                name: name.to_owned(),
                namespace: text("namespace")
                    .filter(|ns| !ns.is_empty())
                    .map(str::to_owned),
            });
        }
        if !refs.is_empty() {
            Self::TargetRefs(refs)
        } else if spec.get("selector").is_some_and(|s| !s.is_null()) {
            Self::Selector
        } else {
            Self::None
        }
    }
}

/// An `AuthorizationPolicy` that could not be loaded, kept so that its targets fail closed.
#[derive(Debug, Clone)]
pub struct RejectedPolicy {
    /// Kind, namespace and name.
    pub object: ObjectRef,
    /// Where it came from.
    pub source: ObjectSource,
    /// What it attaches to, as far as that could be read.
    pub attachment: Attachment,
    /// Its action, when it could be read (shown in `config_dump`; an invalid policy denies
    /// whatever its action).
    pub action: Option<Action>,
    /// Why it was rejected.
    pub reason: String,
}

/// One entry of `spec.rules`: matches when every `from`, `to` and `when` part does.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rule {
    /// Sources, ORed; none = any source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    /// Operations, ORed; none = any operation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    /// Conditions, ANDed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    from: Option<Vec<RawFrom>>,
    to: Option<Vec<RawTo>>,
    #[serde(default)]
    when: Vec<Condition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: Option<Source>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: Option<Operation>,
}

deserialize_via!(Rule, RawRule);

impl TryFrom<RawRule> for Rule {
    type Error = String;

    fn try_from(raw: RawRule) -> Result<Self, String> {
        let from = match raw.from {
            Some(from) if from.is_empty() => return Err("from must not be empty".into()),
            Some(from) => from
                .into_iter()
                .enumerate()
                .map(|(i, f)| f.source.ok_or(format!("from[{i}].source must be set")))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let to = match raw.to {
            Some(to) if to.is_empty() => return Err("to must not be empty".into()),
            Some(to) => to
                .into_iter()
                .enumerate()
                .map(|(i, t)| t.operation.ok_or(format!("to[{i}].operation must be set")))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Self {
            from,
            to,
            when: raw.when,
        })
    }
}

impl Rule {
    /// Whether the rule uses an attribute that is known only for HTTP requests (hosts, methods,
    /// paths, request principals, request headers, JWT claims).
    pub fn uses_http_attributes(&self) -> bool {
        self.from
            .iter()
            .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
            || self.to.iter().any(Operation::uses_http_attributes)
            || self.when.iter().any(|c| c.attribute.is_http_only())
    }

    /// The restrictions of a CUSTOM policy: it runs before request authentication and peer
    /// identity checks, so it cannot use identities.
    fn check_custom(&self, index: usize) -> Result<(), String> {
        let unsupported = |what: &str| {
            Err(format!(
                "rules[{index}]: {what} is not supported with action CUSTOM"
            ))
        };
        for source in &self.from {
            for (empty, name) in [
                (source.namespaces.is_empty(), "from.source.namespaces"),
                (
                    source.not_namespaces.is_empty(),
                    "from.source.notNamespaces",
                ),
                (source.principals.is_empty(), "from.source.principals"),
                (
                    source.not_principals.is_empty(),
                    "from.source.notPrincipals",
                ),
                (
                    source.request_principals.is_empty(),
                    "from.source.requestPrincipals",
                ),
                (
                    source.not_request_principals.is_empty(),
                    "from.source.notRequestPrincipals",
                ),
            ] {
                if !empty {
                    return unsupported(name);
                }
            }
        }
        for condition in &self.when {
            if matches!(
                condition.attribute,
                Attribute::SourceNamespace | Attribute::SourcePrincipal
            ) || condition.key.starts_with("request.auth.")
            {
                return unsupported(&format!("when key {}", condition.key));
            }
        }
        Ok(())
    }
}

/// `rules[].from[].source`: fields ANDed, the values of a field ORed, a `not*` field matches
/// when none of its values does.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (SPIFFE ID without `spiffe://`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Pattern>,
    /// Peer identities that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<Pattern>,
    /// JWT principals (`<iss>/<sub>`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<RequestPrincipalPattern>,
    /// JWT principals that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<RequestPrincipalPattern>,
    /// Namespaces of the peer identity.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Pattern>,
    /// Namespaces that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<Pattern>,
    /// Source (direct peer) addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpNet>,
    /// Source addresses that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpNet>,
    /// Original client addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<IpNet>,
    /// Original client addresses that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<IpNet>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    principals: Vec<Pattern>,
    #[serde(default)]
    not_principals: Vec<Pattern>,
    #[serde(default)]
    request_principals: Vec<RequestPrincipalPattern>,
    #[serde(default)]
    not_request_principals: Vec<RequestPrincipalPattern>,
    #[serde(default)]
    namespaces: Vec<Pattern>,
    #[serde(default)]
    not_namespaces: Vec<Pattern>,
    #[serde(default)]
    ip_blocks: Vec<Cidr>,
    #[serde(default)]
    not_ip_blocks: Vec<Cidr>,
    #[serde(default)]
    remote_ip_blocks: Vec<Cidr>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<Cidr>,
}

deserialize_via!(Source, RawSource);

impl TryFrom<RawSource> for Source {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        let nets = |v: Vec<Cidr>| v.into_iter().map(|c| c.0).collect::<Vec<_>>();
        let source = Self {
            principals: raw.principals,
            not_principals: raw.not_principals,
            request_principals: raw.request_principals,
            not_request_principals: raw.not_request_principals,
            namespaces: raw.namespaces,
            not_namespaces: raw.not_namespaces,
            ip_blocks: nets(raw.ip_blocks),
            not_ip_blocks: nets(raw.not_ip_blocks),
            remote_ip_blocks: nets(raw.remote_ip_blocks),
            not_remote_ip_blocks: nets(raw.not_remote_ip_blocks),
        };
        if source == Self::default() {
            return Err("source must not be empty".into());
        }
        Ok(source)
    }
}

/// `rules[].to[].operation`: fields ANDed, the values of a field ORed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `:authority` values (case-insensitive; lowercased here).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Pattern>,
    /// `:authority` values that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<Pattern>,
    /// Destination (service) ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Destination ports that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    /// Methods (case-sensitive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Pattern>,
    /// Methods that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<Pattern>,
    /// Normalised paths without the query (case-sensitive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Pattern>,
    /// Paths that must not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<Pattern>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOperation {
    #[serde(default)]
    hosts: Vec<Pattern>,
    #[serde(default)]
    not_hosts: Vec<Pattern>,
    #[serde(default)]
    ports: Vec<PortValue>,
    #[serde(default)]
    not_ports: Vec<PortValue>,
    #[serde(default)]
    methods: Vec<Pattern>,
    #[serde(default)]
    not_methods: Vec<Pattern>,
    #[serde(default)]
    paths: Vec<PathPattern>,
    #[serde(default)]
    not_paths: Vec<PathPattern>,
}

deserialize_via!(Operation, RawOperation);

impl TryFrom<RawOperation> for Operation {
    type Error = String;

    fn try_from(raw: RawOperation) -> Result<Self, String> {
        let ports = |v: Vec<PortValue>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        let paths = |v: Vec<PathPattern>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        let hosts = |v: Vec<Pattern>| v.into_iter().map(Pattern::into_lowercase).collect();
        let operation = Self {
            hosts: hosts(raw.hosts),
            not_hosts: hosts(raw.not_hosts),
            ports: ports(raw.ports),
            not_ports: ports(raw.not_ports),
            methods: raw.methods,
            not_methods: raw.not_methods,
            paths: paths(raw.paths),
            not_paths: paths(raw.not_paths),
        };
        if operation == Self::default() {
            return Err("operation must not be empty".into());
        }
        Ok(operation)
    }
}

impl Operation {
    /// Whether the operation constrains hosts, methods or paths (HTTP-only attributes).
    pub fn uses_http_attributes(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}
