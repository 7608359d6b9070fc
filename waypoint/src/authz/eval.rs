//! Evaluating the policies that apply to a service against one request (or, on the TCP chain,
//! one connection), in Istio's order.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;
use http::HeaderMap;
use ipnet::IpNet;

use super::Policy;
use crate::authn::Authenticated;
use crate::config::authz::{
    Action, Attribute, Condition, Operation, Pattern, RequestPrincipalPattern, Rule, Source, Values,
};

/// The prefix of SPIFFE IDs; principals are matched without it.
const SPIFFE_PREFIX: &str = "spiffe://";

/// What an HTTP request adds to the connection's attributes.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// The method (already checked to be upper case).
    pub method: &'a str,
    /// The normalised path, without the query.
    pub path: &'a str,
    /// The `:authority` (or `Host`) as sent.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The authenticated JWT, if any.
    pub request_principal: Option<&'a Authenticated>,
}

/// What authorization knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    /// The peer identity proved by the HBONE handshake.
    pub source_identity: Option<&'a Identity>,
    /// The source address (`ipBlocks`, `source.ip`): the client workload's address as the
    /// tunnel carries it (the `forwarded` address of the HBONE `CONNECT`, else the peer's).
    pub source_ip: IpAddr,
    /// The original client address (`remoteIpBlocks`, `remote.ip`): the last
    /// `x-forwarded-for` entry when the request has one, else the source address.
    pub remote_ip: IpAddr,
    /// The original destination: service VIP and port.
    pub destination: SocketAddr,
    /// The SNI of the downstream TLS connection carrying the request, if any.
    pub sni: Option<&'a str>,
    /// The HTTP attributes; `None` on the TCP chain, where HTTP-only attributes are
    /// unknown: a rule of an ALLOW policy that uses one never matches, and in the other
    /// actions such constraints are ignored (the rule matches more), as Istio generates the
    /// network RBAC filter.
    pub http: Option<HttpAttributes<'a>>,
}

/// A policy and the rule of it that matched.
#[derive(Debug, Clone, Copy)]
pub struct PolicyMatch<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// The index of the matching rule; `None` for an invalid policy (it matches as a whole).
    pub rule: Option<usize>,
}

impl fmt::Display for PolicyMatch<'_> {
    /// Istio's policy id: `ns[<ns>]-policy[<name>]-rule[<n>]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ns[{}]-policy[{}]-",
            self.policy.namespace, self.policy.name
        )?;
        match self.rule {
            Some(rule) => write!(f, "rule[{rule}]"),
            None => f.write_str("invalid"),
        }
    }
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// Allowed: no policy applies.
    NoPolicies,
    /// Allowed: policies apply, but no ALLOW policy, and nothing denied.
    NoAllowPolicies,
    /// Allowed: this ALLOW policy matched.
    AllowedBy(PolicyMatch<'a>),
    /// Denied: an invalid policy applies.
    Invalid(PolicyMatch<'a>),
    /// Denied: this CUSTOM policy matched and its provider cannot be asked (on the TCP
    /// chain, or when the provider is not defined in the mesh config).
    Custom(PolicyMatch<'a>),
    /// Denied: this DENY policy matched.
    DeniedBy(PolicyMatch<'a>),
    /// Denied: ALLOW policies apply and none matched.
    NotAllowed,
}

impl<'a> Reason<'a> {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(
            self,
            Self::NoPolicies | Self::NoAllowPolicies | Self::AllowedBy(_)
        )
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a denial:
    /// `rbac_access_denied_matched_policy[<policy id>]`, with `none` when no policy matched;
    /// `None` when the request is allowed.
    pub fn response_code_details(&self) -> Option<String> {
        if self.is_allowed() {
            return None;
        }
        Some(match self.policy() {
            Some(m) => format!("rbac_access_denied_matched_policy[{m}]"),
            None => "rbac_access_denied_matched_policy[none]".to_owned(),
        })
    }

    /// The policy that decided, if one did.
    pub fn policy(&self) -> Option<PolicyMatch<'a>> {
        match self {
            Self::AllowedBy(m) | Self::Invalid(m) | Self::Custom(m) | Self::DeniedBy(m) => Some(*m),
            Self::NoPolicies | Self::NoAllowPolicies | Self::NotAllowed => None,
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPolicies => f.write_str("allowed: no policies"),
            Self::NoAllowPolicies => f.write_str("allowed: no deny policy matched"),
            Self::AllowedBy(m) => write!(f, "allowed by {m}"),
            Self::Invalid(m) => write!(f, "denied by invalid policy {m}"),
            Self::Custom(m) => write!(
                f,
                "denied by {m}: CUSTOM provider {:?} is not available",
                m.policy.provider.as_deref().unwrap_or_default()
            ),
            Self::DeniedBy(m) => write!(f, "denied by {m}"),
            Self::NotAllowed => f.write_str("denied: no allow policy matched"),
        }
    }
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    /// Whether the request may proceed (`reason.is_allowed()`).
    pub allowed: bool,
    /// Why.
    pub reason: Reason<'a>,
    /// The AUDIT policies that matched, in order.
    pub audited: Vec<PolicyMatch<'a>>,
    /// The CUSTOM policies that matched, when any did and no invalid policy applies: one per
    /// extension provider (the first by policy name), in policy name order. Their providers
    /// decide first, in that order, and any denial wins (`reason` is then [`Reason::Custom`]
    /// of the first, the decision when a provider cannot be asked). Without
    /// `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS` there is at most one provider: the
    /// policies of a service naming several are replaced by a denial when compiled.
    pub custom: Vec<PolicyMatch<'a>>,
    /// The decision of the DENY and ALLOW policies alone: what applies once the CUSTOM
    /// provider allowed the request.
    pub after_custom: Reason<'a>,
}

impl Decision<'_> {
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a denial (see [`Reason::response_code_details`]).
    pub fn response_code_details(&self) -> Option<String> {
        self.reason.response_code_details()
    }
}

/// Evaluates `policies` (those that apply to the request's service) in Istio's order:
///
/// 1. an applicable invalid policy denies ([`Reason::Invalid`]);
/// 2. the matching CUSTOM policies send the request to their providers ([`Decision::custom`]);
///    [`Reason::Custom`] is the decision when the provider cannot be asked, and
///    [`Decision::after_custom`] the one that applies when it allows;
/// 3. a matching DENY policy denies ([`Reason::DeniedBy`]);
/// 4. with ALLOW policies present, one must match ([`Reason::AllowedBy`], else
///    [`Reason::NotAllowed`]); without, the request is allowed.
///
/// AUDIT policies never change the decision; those that match are listed in
/// [`Decision::audited`]. The first matching rule of each policy is reported.
pub fn evaluate<'a>(policies: &'a [Arc<Policy>], request: &RequestAttributes<'_>) -> Decision<'a> {
    let mut audited = Vec::new();
    let mut invalid = None;
    let mut custom: Vec<PolicyMatch<'a>> = Vec::new();
    let mut denied = None;
    let mut allowed = None;
    let mut any_allow = false;
    for policy in policies.iter().map(Arc::as_ref) {
        if policy.invalid.is_some() {
            invalid.get_or_insert(PolicyMatch { policy, rule: None });
            continue;
        }
        if policy.action == Action::Custom {
            if let Some(rule) = policy
                .rules
                .iter()
                .position(|r| rule_matches(r, policy.action, request))
            {
                custom.push(PolicyMatch {
                    policy,
                    rule: Some(rule),
                });
            }
            continue;
        }
        let slot = match policy.action {
            Action::Audit | Action::Custom => None,
            Action::Deny => Some(&mut denied),
            Action::Allow => {
                any_allow = true;
                Some(&mut allowed)
            }
        };
        if slot.as_ref().is_some_and(|s| s.is_some()) {
            continue;
        }
        let Some(rule) = policy
            .rules
            .iter()
            .position(|r| rule_matches(r, policy.action, request))
        else {
            continue;
        };
        let found = PolicyMatch {
            policy,
            rule: Some(rule),
        };
        match slot {
            Some(slot) => *slot = Some(found),
            None => audited.push(found),
        }
    }
    let after_custom = if let Some(m) = denied {
        Reason::DeniedBy(m)
    } else if let Some(m) = allowed {
        Reason::AllowedBy(m)
    } else if any_allow {
        Reason::NotAllowed
    } else if policies.is_empty() {
        Reason::NoPolicies
    } else {
        Reason::NoAllowPolicies
    };
    if invalid.is_some() {
        custom.clear();
    }
    custom.sort_by(|a, b| {
        (&a.policy.name, &a.policy.namespace).cmp(&(&b.policy.name, &b.policy.namespace))
    });
    let mut providers = std::collections::HashSet::new();
    custom.retain(|m| providers.insert(m.policy.provider.as_deref()));
    let reason = match (invalid, custom.first()) {
        (Some(m), _) => Reason::Invalid(m),
        (None, Some(m)) => Reason::Custom(*m),
        (None, None) => after_custom,
    };
    Decision {
        allowed: reason.is_allowed(),
        reason,
        audited,
        custom,
        after_custom,
    }
}

/// Whether `rule` (of a policy with `action`) matches: every part does; an empty part matches.
pub(super) fn rule_matches(rule: &Rule, action: Action, request: &RequestAttributes<'_>) -> bool {
    if request.http.is_none() && action == Action::Allow && rule.uses_http_attributes() {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request)))
        && rule.when.iter().all(|c| condition_matches(c, request))
}

/// A field: one of `values` (if any) and none of `not_values` match.
fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}

/// The peer identity without `spiffe://`.
fn principal<'a>(request: &RequestAttributes<'a>) -> Option<&'a str> {
    request.source_identity.map(|id| {
        id.as_str()
            .strip_prefix(SPIFFE_PREFIX)
            .unwrap_or(id.as_str())
    })
}

fn in_net(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
}

fn source_matches(source: &Source, request: &RequestAttributes<'_>) -> bool {
    let principal = principal(request);
    let namespace = request.source_identity.map(Identity::namespace);
    field(&source.principals, &source.not_principals, |p| {
        principal.is_some_and(|v| p.matches(v))
    }) && field(&source.namespaces, &source.not_namespaces, |p| {
        namespace.is_some_and(|v| p.matches(v))
    }) && field(&source.ip_blocks, &source.not_ip_blocks, |n| {
        in_net(n, request.source_ip)
    }) && field(
        &source.remote_ip_blocks,
        &source.not_remote_ip_blocks,
        |n| in_net(n, request.remote_ip),
    ) && match &request.http {
        // On the TCP chain the JWT constraints are ignored (see `RequestAttributes::http`).
        None => true,
        Some(http) => field(
            &source.request_principals,
            &source.not_request_principals,
            |p| request_principal_matches(p, http.request_principal),
        ),
    }
}

fn request_principal_matches(
    pattern: &RequestPrincipalPattern,
    token: Option<&Authenticated>,
) -> bool {
    token.is_some_and(|t| {
        let (iss, sub) = (t.issuer.as_str(), t.subject.as_str());
        pattern.matches(iss, sub)
    })
}

fn operation_matches(operation: &Operation, request: &RequestAttributes<'_>) -> bool {
    let port = request.destination.port();
    if !field(&operation.ports, &operation.not_ports, |p| *p == port) {
        return false;
    }
    // On the TCP chain hosts, methods and paths are ignored (see `RequestAttributes::http`).
    let Some(http) = &request.http else {
        return true;
    };
    field(&operation.hosts, &operation.not_hosts, |p| {
        matches_ignore_case(p, http.host)
    }) && field(&operation.methods, &operation.not_methods, |p| {
        p.matches(http.method)
    }) && field(&operation.paths, &operation.not_paths, |p| {
        p.matches(http.path)
    })
}

/// [`Pattern::matches`] ignoring ASCII case; `pattern` is lowercase.
fn matches_ignore_case(pattern: &Pattern, value: &str) -> bool {
    let value = value.as_bytes();
    match pattern {
        Pattern::Exact(s) => value.eq_ignore_ascii_case(s.as_bytes()),
        Pattern::Prefix(s) => value
            .get(..s.len())
            .is_some_and(|v| v.eq_ignore_ascii_case(s.as_bytes())),
        Pattern::Suffix(s) => value
            .len()
            .checked_sub(s.len())
            .and_then(|start| value.get(start..))
            .is_some_and(|v| v.eq_ignore_ascii_case(s.as_bytes())),
        Pattern::Any => !value.is_empty(),
    }
}

fn condition_matches(condition: &Condition, request: &RequestAttributes<'_>) -> bool {
    if request.http.is_none() && condition.attribute.is_http_only() {
        return true;
    }
    let any = |values: &Values| !values.is_empty() && attribute_matches(condition, values, request);
    (condition.values.is_empty() || any(&condition.values)) && !any(&condition.not_values)
}

/// Whether the attribute of `condition` matches any of `values`.
fn attribute_matches(
    condition: &Condition,
    values: &Values,
    request: &RequestAttributes<'_>,
) -> bool {
    let http = request.http.as_ref();
    match (&condition.attribute, values) {
        (Attribute::RequestHeader(name), Values::Patterns(patterns)) => {
            let Some(headers) = http.map(|h| h.headers) else {
                return false;
            };
            let Some(value) = joined_header(headers, name) else {
                return false;
            };
            patterns
                .iter()
                .any(|p| matches!(p, Pattern::Any) || p.matches(&value))
        }
        (Attribute::SourceIp, Values::Nets(nets)) => {
            nets.iter().any(|n| in_net(n, request.source_ip))
        }
        (Attribute::RemoteIp, Values::Nets(nets)) => {
            nets.iter().any(|n| in_net(n, request.remote_ip))
        }
        (Attribute::DestinationIp, Values::Nets(nets)) => {
            nets.iter().any(|n| in_net(n, request.destination.ip()))
        }
        (Attribute::DestinationPort, Values::Ports(ports)) => {
            ports.contains(&request.destination.port())
        }
        (Attribute::SourceNamespace, Values::Patterns(patterns)) => {
            let ns = request.source_identity.map(Identity::namespace);
            any_pattern(patterns, ns)
        }
        (Attribute::SourcePrincipal, Values::Patterns(patterns)) => {
            any_pattern(patterns, principal(request))
        }
        (Attribute::ConnectionSni, Values::Patterns(patterns)) => {
            any_pattern(patterns, request.sni)
        }
        (Attribute::RequestPrincipal, Values::RequestPrincipals(patterns)) => {
            let token = http.and_then(|h| h.request_principal);
            patterns.iter().any(|p| request_principal_matches(p, token))
        }
        (Attribute::RequestAudiences, Values::Patterns(patterns)) => {
            let token = http.and_then(|h| h.request_principal);
            token.is_some_and(|t| {
                t.audiences
                    .iter()
                    .any(|aud| patterns.iter().any(|p| p.matches(aud)))
            })
        }
        (Attribute::RequestPresenter, Values::Patterns(patterns)) => {
            let token = http.and_then(|h| h.request_principal);
            any_pattern(patterns, token.and_then(|t| t.presenter.as_deref()))
        }
        (Attribute::RequestClaim(path), Values::Patterns(patterns)) => {
            let token = http.and_then(|h| h.request_principal);
            token
                .and_then(|t| claim(&t.claims, path))
                .is_some_and(|value| claim_matches(value, patterns))
        }
        // The loader types the values by attribute; another combination never occurs and
        // never matches.
        _ => false,
    }
}

fn any_pattern(patterns: &[Pattern], value: Option<&str>) -> bool {
    value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

/// The values of header `name`, joined with `,` when repeated (as Envoy presents them).
fn joined_header<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes());
    for value in values {
        let joined = out.to_mut();
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    Some(out)
}

/// The claim at `path` (`[a][b]` → `claims.a.b`).
fn claim<'c>(claims: &'c serde_json::Value, path: &[String]) -> Option<&'c serde_json::Value> {
    path.iter()
        .try_fold(claims, |value, key| value.get(key.as_str()))
}

/// A string claim matches a pattern; a list claim matches when one of its strings does.
fn claim_matches(value: &serde_json::Value, patterns: &[Pattern]) -> bool {
    match value {
        serde_json::Value::String(s) => patterns.iter().any(|p| p.matches(s)),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(serde_json::Value::as_str)
            .any(|s| patterns.iter().any(|p| p.matches(s))),
        _ => false,
    }
}
