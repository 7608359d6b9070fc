//! L4 authorization policies and their evaluation.
//!
//! # Where this sits in the data path
//!
//! ```text
//! istiod (xDS istio.security.Authorization) ─┐
//! local config file (`policies:` YAML) ──────┴─▶ state (policy store) ──▶ rbac::evaluate
//!                                                                           ▲
//!   inbound HBONE (15008) / inbound plaintext (15006) ── Connection ────────┘
//! ```
//!
//! The inbound listeners build a [`Connection`] (peer identity from the mTLS handshake, if any,
//! source IP, original destination) and call [`evaluate`] (or [`evaluate_with_missing`]) with the
//! policies that apply to the *destination* workload — namespace-scoped policies of its
//! namespace, global policies and the selector policies it names — **before** connecting to the
//! application. The policy watcher calls the same functions again for every live connection when
//! the policies change, and drains connections that are now denied. Everything in this module is
//! pure and synchronous: no I/O, no locks, no logging; the [`Decision`] says why, so the access
//! log and metrics can report it.
//!
//! # Semantics (Istio's, as implemented by upstream ztunnel `src/rbac.rs` / `assert_rbac`)
//!
//! - A policy matches when **any** [`Rule`] matches; a policy with no rules matches nothing.
//! - A rule matches when **all** of its [`Clause`]s match; a rule with no clauses matches
//!   everything.
//! - A clause matches when **any** of its [`Match`]es matches; a clause with no matches matches
//!   everything, but a [`Match`] with every field empty never matches.
//! - Within a [`Match`] the fields are AND-ed; the values of one field are OR-ed; an empty field
//!   is no constraint; a `not_*` field matches when **none** of its values match.
//! - `principals` match the source identity without its `spiffe://` prefix
//!   (`td/ns/<ns>/sa/<sa>`); `namespaces` match the identity's namespace; `service_accounts`
//!   match (namespace, service account) exactly. Without a source identity (plaintext) every
//!   identity-based value fails to match, so positive identity fields fail and `not_*` identity
//!   fields succeed: `notPrincipals: [Presence]` matches exactly the plaintext connections
//!   (Istio's `istio_converted_static_strict` DENY policy). Upstream compares `namespaces`
//!   against `""` when there is no identity, so it differs from this only for patterns that
//!   match the empty string (`Exact("")`, `Prefix("")`, `Suffix("")`), which istiod never emits.
//! - Connection IPs are canonicalized (IPv4-mapped IPv6 → IPv4) before CIDR matching.
//! - [`evaluate`]: dry-run policies never affect the result; a matching DENY denies; AUDIT
//!   policies are only reported; with ALLOW policies present, one must match; otherwise allow.
//!
//! # Layout
//! - this file: the policy model, its local-config YAML form (serde) and matching.
//! - `convert`: `TryFrom<proto::istio::security::Authorization>` and [`ConvertError`].
//! - `eval`: [`Connection`], [`evaluate`], [`Decision`] and [`Reason`].

mod convert;
mod eval;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, MapAccess, VariantAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use convert::{ConvertError, FieldError, FieldPath};
pub use eval::{Connection, Decision, DryRunOutcome, Reason, evaluate, evaluate_with_missing};

/// The prefix of every SPIFFE ID; `principals` are matched against the ID without it.
const SPIFFE_PREFIX: &str = "spiffe://";

/// An L4 authorization policy (Istio `AuthorizationPolicy`, as flattened by istiod).
///
/// The serde form is the `policies:` entry of the local config file (camelCase, as upstream
/// ztunnel), e.g.
///
/// ```yaml
/// name: deny-9999
/// namespace: default
/// scope: Namespace          # Global | Namespace | WorkloadSelector
/// action: Deny              # Allow | Deny | Audit
/// rules:                    # rule → clause → match
/// - - - notDestinationPorts: [9999]
///       principals: [{Exact: cluster.local/ns/default/sa/client}, {Prefix: "cluster.local/"}]
///       sourceIps: ["10.0.0.0/8"]
/// dryRun: false             # optional
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Policy name; never empty.
    #[serde(deserialize_with = "non_empty_string")]
    pub name: String,
    /// Policy namespace (empty for policies without one).
    pub namespace: String,
    /// Which workloads the policy applies to (the state module selects; matching ignores it).
    pub scope: Scope,
    /// What a matching connection gets.
    pub action: Action,
    /// The policy matches when any rule matches; with no rules it matches nothing.
    pub rules: Vec<Rule>,
    /// Evaluated and reported, but never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that name the policy in `Workload.authorization_policies`.
    WorkloadSelector,
}

/// What a matching policy does to a connection.
///
/// The xDS API (`istio.security.Action`) only carries `ALLOW` and `DENY`; `Audit` exists for the
/// local config file and is reported in [`Decision::audited`] without affecting the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// With any ALLOW policy present, a connection must match one of them.
    Allow,
    /// A matching connection is denied.
    Deny,
    /// A matching connection is reported, nothing else.
    Audit,
}

impl Action {
    /// Lowercase name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of a policy: matches when all of its clauses match (and when it has none).
///
/// Serialized as the bare list of clauses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rule {
    /// The clauses, AND-ed.
    pub clauses: Vec<Clause>,
}

/// One clause of a rule: matches when any of its matches matches (and when it has none).
///
/// Serialized as the bare list of matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Clause {
    /// The alternatives, OR-ed.
    pub matches: Vec<Match>,
}

/// Connection attributes to match.
///
/// Fields are AND-ed, the values of one field OR-ed, and an empty field is no constraint. A
/// `not_*` field matches when none of its values match. A `Match` with every field empty never
/// matches (upstream semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    /// Source identity namespace is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    /// Source identity namespace is none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// Source identity (without `spiffe://`) is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    /// Source identity (without `spiffe://`) is none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    /// Source identity is one of these (namespace, service account) pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source identity is none of these (namespace, service account) pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Source IP is in one of these prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    /// Source IP is in none of these prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP is in one of these prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    /// Destination IP is in none of these prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    /// Destination port is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    /// Destination port is none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

/// A string comparison.
///
/// YAML form (upstream ztunnel's externally tagged enum): `{Exact: x}`, `{Prefix: x}`,
/// `{Suffix: x}`, `{Presence: []}`; the bare string `Presence`, `{Presence: null}` /
/// `{Presence: {}}` and YAML tags (`!Exact x`, `!Presence []`) are accepted too. Serialized as
/// a one-entry map, which is upstream's JSON form (`{"Exact":"x"}`, `{"Presence":[]}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Ends with the value.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

/// An exact (namespace, service account) pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

impl Authorization {
    /// The policy's key, `namespace/name`, as named by `Workload.authorization_policies`.
    pub fn key(&self) -> String {
        let mut key = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        key.push_str(&self.namespace);
        key.push('/');
        key.push_str(&self.name);
        key
    }

    /// Whether the connection matches the policy's rules (regardless of action and dry-run).
    pub fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|rule| rule.matches(conn))
    }
}

impl Rule {
    /// Whether every clause matches (true for a rule without clauses).
    pub fn matches(&self, conn: &Connection) -> bool {
        self.clauses.iter().all(|clause| clause.matches(conn))
    }
}

impl Clause {
    /// Whether any match matches (true for a clause without matches).
    pub fn matches(&self, conn: &Connection) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(conn))
    }
}

impl Match {
    /// Whether every field is empty (such a match never matches).
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.source_ips.is_empty()
            && self.not_source_ips.is_empty()
            && self.destination_ips.is_empty()
            && self.not_destination_ips.is_empty()
            && self.destination_ports.is_empty()
            && self.not_destination_ports.is_empty()
    }

    /// Whether the connection satisfies every non-empty field.
    pub fn matches(&self, conn: &Connection) -> bool {
        if self.is_empty() {
            return false;
        }
        let identity = conn.src_identity.as_ref();
        let namespace = identity.map(hbone::Identity::namespace);
        let principal = identity.and_then(|id| id.as_str().strip_prefix(SPIFFE_PREFIX));
        let src_ip = conn.src_ip.to_canonical();
        let dst_ip = conn.dst.ip().to_canonical();
        let dst_port = conn.dst.port();

        field(&self.namespaces, &self.not_namespaces, |m| {
            namespace.is_some_and(|ns| m.matches(ns))
        }) && field(&self.principals, &self.not_principals, |m| {
            principal.is_some_and(|p| m.matches(p))
        }) && field(&self.service_accounts, &self.not_service_accounts, |m| {
            identity.is_some_and(|id| m.matches(id))
        }) && field(&self.source_ips, &self.not_source_ips, |net| {
            net_contains(net, src_ip)
        }) && field(&self.destination_ips, &self.not_destination_ips, |net| {
            net_contains(net, dst_ip)
        }) && field(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == dst_port
        })
    }
}

/// One attribute: any positive value must match (if there are any) and no negative value may.
fn field<T>(positive: &[T], negative: &[T], mut matches: impl FnMut(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&mut matches)) && !negative.iter().any(matches)
}

/// Whether `ip` (already canonical, see [`IpAddr::to_canonical`]) is inside `net`.
///
/// IPv4 prefixes never contain IPv6 addresses and vice versa; IPv4-mapped IPv6 connection
/// addresses are canonicalized to IPv4 first, so a dual-stack listener cannot dodge a v4 rule.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
}

impl StringMatch {
    /// Whether `value` satisfies the comparison. `Presence` requires a non-empty value.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

impl ServiceAccountMatch {
    /// Whether the identity has exactly this namespace and service account (any trust domain).
    pub fn matches(&self, identity: &hbone::Identity) -> bool {
        identity.namespace() == self.namespace && identity.service_account() == self.service_account
    }
}

/// Serde helper: a string that must not be empty.
fn non_empty_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let value = String::deserialize(deserializer)?;
    if value.is_empty() {
        return Err(de::Error::invalid_value(
            de::Unexpected::Str(&value),
            &"a non-empty string",
        ));
    }
    Ok(value)
}

const STRING_MATCH_VARIANTS: &[&str] = &["Exact", "Prefix", "Suffix", "Presence"];

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A one-entry map rather than an enum variant: YAML gets `Exact: x` (not a `!Exact x`
        // tag), JSON gets upstream's `{"Exact":"x"}` / `{"Presence":[]}`.
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            StringMatch::Exact(s) => map.serialize_entry("Exact", s)?,
            StringMatch::Prefix(s) => map.serialize_entry("Prefix", s)?,
            StringMatch::Suffix(s) => map.serialize_entry("Suffix", s)?,
            StringMatch::Presence => map.serialize_entry("Presence", &[(); 0])?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringMatchVisitor)
    }
}

/// Reads a [`StringMatch`] from a one-entry map or the bare string `Presence`.
struct StringMatchVisitor;

impl<'de> Visitor<'de> for StringMatchVisitor {
    type Value = StringMatch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of {Exact: s}, {Prefix: s}, {Suffix: s}, {Presence: []} or Presence")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<StringMatch, E> {
        match value {
            "Presence" => Ok(StringMatch::Presence),
            other => Err(E::unknown_variant(other, &["Presence"])),
        }
    }

    /// YAML tags (`!Exact x`, `!Presence []`), as an enum-aware serializer would write them.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<StringMatch, A::Error> {
        let (kind, variant) = data.variant::<String>()?;
        match kind.as_str() {
            "Exact" => variant.newtype_variant().map(StringMatch::Exact),
            "Prefix" => variant.newtype_variant().map(StringMatch::Prefix),
            "Suffix" => variant.newtype_variant().map(StringMatch::Suffix),
            "Presence" => variant
                .newtype_variant::<EmptyValue>()
                .map(|_| StringMatch::Presence),
            other => Err(de::Error::unknown_variant(other, STRING_MATCH_VARIANTS)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMatch, A::Error> {
        let Some(kind) = map.next_key::<String>()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let value = match kind.as_str() {
            "Exact" => StringMatch::Exact(map.next_value()?),
            "Prefix" => StringMatch::Prefix(map.next_value()?),
            "Suffix" => StringMatch::Suffix(map.next_value()?),
            "Presence" => {
                map.next_value::<EmptyValue>()?;
                StringMatch::Presence
            }
            other => return Err(de::Error::unknown_variant(other, STRING_MATCH_VARIANTS)),
        };
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "a string match has exactly one of Exact, Prefix, Suffix, Presence",
            ));
        }
        Ok(value)
    }
}

/// The payload of `Presence`: `[]`, `{}`, `null` or nothing at all.
struct EmptyValue;

impl<'de> Deserialize<'de> for EmptyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EmptyVisitor;
        impl<'de> Visitor<'de> for EmptyVisitor {
            type Value = EmptyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty value ([], {} or null)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<EmptyValue, E> {
                Ok(EmptyValue)
            }
            fn visit_none<E: de::Error>(self) -> Result<EmptyValue, E> {
                Ok(EmptyValue)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<EmptyValue, A::Error> {
                match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(EmptyValue),
                    Some(_) => Err(de::Error::invalid_length(1, &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EmptyValue, A::Error> {
                match map.next_key::<de::IgnoredAny>()? {
                    None => Ok(EmptyValue),
                    Some(_) => Err(de::Error::invalid_length(1, &self)),
                }
            }
        }
        deserializer.deserialize_any(EmptyVisitor)
    }
}
