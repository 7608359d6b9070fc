//! Which JWT rules apply to which requests: the RequestAuthentications attached to this
//! waypoint, compiled into one ordered [`Provider`] list per service it serves.
//!
//! Attachment follows Istio for waypoints (policy attachment by `targetRefs`; a `selector`,
//! or no target at all, never applies to a waypoint):
//!
//! - `Gateway` named as the waypoint, from the waypoint's namespace: every request;
//! - `GatewayClass` `istio-waypoint`, from the root namespace: every request;
//! - `Service`: requests to that service (same namespace as the policy);
//! - `ServiceEntry`: requests to the hosts it declares (same namespace as the policy).
//!
//! A request's list holds the rules of every policy that applies, oldest policy first, then
//! stably sorted by issuer (Istio's `newPolicyApplier`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState as FastHash;
use serde::Serialize;

use super::jwks::{DEFAULT_FETCH_TIMEOUT, JwksLocation, JwksRegistry};
use super::{KeySource, Provider, ProviderSettings, RuleOrigin};
use crate::config::ConfigSet;
use crate::config::authn::{JwksSource, JwtRule, Presence, TargetKind};
use crate::route::ServiceTarget;

/// The GatewayClass of waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
/// Istio's default root namespace (`meshConfig.rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// What attachment depends on.
#[derive(Debug, Clone, Copy)]
pub struct AuthnContext<'a> {
    /// The waypoint's namespace.
    pub waypoint_namespace: &'a str,
    /// The waypoint's name (its Gateway's).
    pub waypoint_name: &'a str,
    /// The mesh's root namespace.
    pub root_namespace: &'a str,
    /// The services bound to the waypoint.
    pub services: &'a [ServiceTarget],
}

/// The rules of every service, compiled.
#[derive(Debug, Clone, Default)]
pub struct AuthnTable {
    /// The rules applying to every request.
    waypoint: Arc<[Arc<Provider>]>,
    /// The rules of requests to each hostname with service-specific rules.
    services: HashMap<String, Arc<[Arc<Provider>]>, FastHash>,
    /// What each policy attached to, for `config_dump`.
    policies: Vec<PolicySummary>,
}

impl AuthnTable {
    /// Compiles the RequestAuthentications of `config`; remote key sets come from `registry`.
    pub fn compile(config: &ConfigSet, ctx: &AuthnContext<'_>, registry: &JwksRegistry) -> Self {
        let mut objects: Vec<_> = config.request_authentications.iter().collect();
        objects.sort_by(|a, b| a.precedence_key().cmp(&b.precedence_key()));
        let mut waypoint: Vec<(usize, Arc<Provider>)> = Vec::new();
        let mut services: HashMap<String, Vec<(usize, Arc<Provider>)>> = HashMap::new();
        let mut policies = Vec::new();
        let mut sequence = 0;
        for object in objects {
            let namespace = object.namespace();
            let policy = format!("{namespace}/{}", object.name());
            let (whole, hosts) = attachment(config, ctx, namespace, &object.spec.target_refs);
            let mut summary = PolicySummary {
                policy: policy.clone(),
                applies_to: Vec::new(),
                ignored: None,
                rules: object.spec.jwt_rules.iter().map(RuleSummary::new).collect(),
            };
            if object.spec.selector.is_some() || object.spec.target_refs.is_empty() {
                summary.ignored = Some("only targetRefs attach policies to a waypoint".into());
            } else if !whole && hosts.is_empty() {
                summary.ignored = Some("no targetRef names this waypoint or its services".into());
            }
            if summary.ignored.is_some() {
                policies.push(summary);
                continue;
            }
            let providers: Vec<(usize, Arc<Provider>)> = object
                .spec
                .jwt_rules
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    sequence += 1;
                    let origin = RuleOrigin {
                        policy: policy.clone(),
                        index,
                    };
                    (sequence, Arc::new(provider(rule, origin, registry)))
                })
                .collect();
            if whole {
                summary.applies_to.push("*".into());
                waypoint.extend(providers.iter().cloned());
            }
            for host in hosts {
                summary.applies_to.push(host.clone());
                services
                    .entry(host)
                    .or_default()
                    .extend(providers.iter().cloned());
            }
            policies.push(summary);
        }
        let ordered = |mut list: Vec<(usize, Arc<Provider>)>| -> Arc<[Arc<Provider>]> {
            list.sort_by(|(a_seq, a), (b_seq, b)| (&a.issuer, a_seq).cmp(&(&b.issuer, b_seq)));
            list.dedup_by_key(|(seq, _)| *seq);
            list.into_iter().map(|(_, p)| p).collect()
        };
        let services = services
            .into_iter()
            .map(|(host, own)| {
                let mut all = waypoint.clone();
                all.extend(own);
                (host, ordered(all))
            })
            .collect();
        Self {
            waypoint: ordered(waypoint),
            services,
            policies,
        }
    }

    /// The rules of a request to `hostname`, in order.
    pub fn providers(&self, hostname: &str) -> Arc<[Arc<Provider>]> {
        self.services
            .get(hostname)
            .map_or_else(|| Arc::clone(&self.waypoint), Arc::clone)
    }

    /// Whether any rule applies anywhere.
    pub fn is_empty(&self) -> bool {
        self.waypoint.is_empty() && self.services.is_empty()
    }

    /// What each policy attached to, for `config_dump`.
    pub fn policies(&self) -> &[PolicySummary] {
        &self.policies
    }
}

/// Whether a policy in `namespace` with `targets` attaches to the whole waypoint, and the
/// hostnames it attaches to.
fn attachment(
    config: &ConfigSet,
    ctx: &AuthnContext<'_>,
    namespace: &str,
    targets: &[crate::config::authn::PolicyTargetRef],
) -> (bool, Vec<String>) {
    let mut whole = false;
    let mut hosts = Vec::new();
    for target in targets {
        match target.kind {
            TargetKind::Gateway => {
                whole |= namespace == ctx.waypoint_namespace && target.name == ctx.waypoint_name;
            }
            TargetKind::GatewayClass => {
                whole |= namespace == ctx.root_namespace && target.name == WAYPOINT_GATEWAY_CLASS;
            }
            TargetKind::Service => hosts.extend(
                ctx.services
                    .iter()
                    .filter(|s| s.namespace == namespace && s.name.as_deref() == Some(&target.name))
                    .map(|s| s.hostname.clone()),
            ),
            TargetKind::ServiceEntry => hosts.extend(
                config
                    .service_entries
                    .iter()
                    .filter(|se| se.namespace() == namespace && se.name() == target.name)
                    .flat_map(|se| se.spec.hosts.iter().map(|h| h.to_ascii_lowercase())),
            ),
        }
    }
    hosts.sort();
    hosts.dedup();
    (whole, hosts)
}

/// The provider of one rule.
fn provider(rule: &JwtRule, origin: RuleOrigin, registry: &JwksRegistry) -> Provider {
    let timeout = rule.timeout.map_or(DEFAULT_FETCH_TIMEOUT, |t| t.0);
    let keys = match &rule.jwks {
        JwksSource::Inline(keys) => KeySource::Inline(Arc::clone(keys)),
        JwksSource::Uri(uri) => {
            KeySource::Remote(registry.get(&JwksLocation::Jwks(uri.clone()), timeout))
        }
        JwksSource::Discovery => match JwksLocation::discovery(&rule.issuer) {
            Some(location) => KeySource::Remote(registry.get(&location, timeout)),
            None => {
                tracing::warn!(
                    policy = %origin.policy,
                    issuer = %rule.issuer,
                    "JWT rule without jwks or jwksUri, and its issuer is no URL to discover keys from: its tokens are denied"
                );
                KeySource::Unavailable
            }
        },
    };
    let settings = ProviderSettings {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        headers: rule
            .from_headers
            .iter()
            .map(|h| (h.name.clone(), h.prefix.clone()))
            .collect(),
        params: rule.from_params.clone(),
        cookies: rule.from_cookies.clone(),
        forward: rule.forward_original_token,
        payload_header: rule.output_payload_to_header.clone(),
        claim_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| (c.header.clone(), c.claim.clone()))
            .collect(),
        required: rule.presence == Presence::Required,
        space_delimited: rule.space_delimited_claims.clone(),
    };
    Provider::new(settings, keys, origin)
}

/// A RequestAuthentication as `config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    /// `namespace/name`.
    pub policy: String,
    /// `*` for every request, else the hostnames.
    pub applies_to: Vec<String>,
    /// Why the policy does not apply here.
    pub ignored: Option<String>,
    /// Its rules.
    pub rules: Vec<RuleSummary>,
}

/// A JWT rule as `config_dump` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSummary {
    /// `issuer`.
    pub issuer: String,
    /// `audiences`.
    pub audiences: Vec<String>,
    /// `inline (<n> keys)`, the `jwksUri`, or `discovery`.
    pub jwks: String,
    /// Header locations as `name: prefix`.
    pub from_headers: Vec<String>,
    /// `fromParams`.
    pub from_params: Vec<String>,
    /// `fromCookies`.
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<String>,
    /// `outputClaimToHeaders` as `header: claim`.
    pub output_claim_to_headers: Vec<String>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
    /// Whether a token is required.
    pub required: bool,
    /// The key fetch timeout in milliseconds.
    pub timeout_ms: u64,
}

impl RuleSummary {
    fn new(rule: &JwtRule) -> Self {
        let timeout: Duration = rule.timeout.map_or(DEFAULT_FETCH_TIMEOUT, |t| t.0);
        Self {
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.clone(),
            jwks: match &rule.jwks {
                JwksSource::Inline(keys) => format!("inline ({} keys)", keys.len()),
                JwksSource::Uri(uri) => uri.to_string(),
                JwksSource::Discovery => "discovery".to_owned(),
            },
            from_headers: rule
                .from_headers
                .iter()
                .map(|h| format!("{}: {}", h.name, h.prefix))
                .collect(),
            from_params: rule.from_params.clone(),
            from_cookies: rule.from_cookies.clone(),
            output_payload_to_header: rule
                .output_payload_to_header
                .as_ref()
                .map(ToString::to_string),
            output_claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| format!("{}: {}", c.header, c.claim))
                .collect(),
            forward_original_token: rule.forward_original_token,
            required: rule.presence == Presence::Required,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
