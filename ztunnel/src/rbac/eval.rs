//! Evaluating the policies of a destination workload against one connection.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::{Action, Authorization};

/// What L4 authorization knows about an inbound connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    /// Peer identity from the mTLS handshake; `None` for plaintext (inbound passthrough, 15006).
    pub src_identity: Option<hbone::Identity>,
    /// Source IP as seen by ztunnel (IPv4-mapped IPv6 addresses are matched as IPv4).
    pub src_ip: IpAddr,
    /// Original destination: the workload IP and port the client connected to.
    pub dst: SocketAddr,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.src_identity {
            Some(id) => write!(f, "{}({id})->{}", self.src_ip, self.dst),
            None => write!(f, "{}(plaintext)->{}", self.src_ip, self.dst),
        }
    }
}

/// The outcome of [`evaluate`]: the verdict, why, and what non-enforcing policies saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed; always `reason.is_allowed()`.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// Keys of the (enforced) AUDIT policies that matched, in evaluation order.
    pub audited: Vec<String>,
    /// Every dry-run policy and whether it matched, in evaluation order.
    pub dry_run: Vec<DryRunOutcome>,
}

/// What a dry-run policy would have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunOutcome {
    /// The policy key, `namespace/name`.
    pub policy: String,
    /// The policy's action.
    pub action: Action,
    /// Whether the connection matched the policy's rules.
    pub matched: bool,
}

/// Why a connection was allowed or denied.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Denied: this DENY policy (key) matched.
    DeniedBy(String),
    /// Denied: the workload names this policy but we do not have it (fail closed).
    MissingPolicy(String),
    /// Denied: ALLOW policies apply and none matched.
    NotAllowed,
    /// Allowed: this ALLOW policy (key) matched.
    AllowedBy(String),
    /// Allowed: DENY policies apply, none matched, and no ALLOW policy applies.
    NoAllowPolicies,
    /// Allowed: no enforced ALLOW or DENY policy applies.
    NoPolicies,
}

impl Reason {
    /// Whether this reason lets the connection through.
    pub fn is_allowed(&self) -> bool {
        match self {
            Reason::DeniedBy(_) | Reason::MissingPolicy(_) | Reason::NotAllowed => false,
            Reason::AllowedBy(_) | Reason::NoAllowPolicies | Reason::NoPolicies => true,
        }
    }

    /// A fixed, low-cardinality label for metrics (no policy names).
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::DeniedBy(_) => "denied_by_policy",
            Reason::MissingPolicy(_) => "missing_policy",
            Reason::NotAllowed => "not_allowed",
            Reason::AllowedBy(_) => "allowed_by_policy",
            Reason::NoAllowPolicies => "no_allow_policies",
            Reason::NoPolicies => "no_policies",
        }
    }

    /// The policy the reason names, if any.
    pub fn policy(&self) -> Option<&str> {
        match self {
            Reason::DeniedBy(p) | Reason::MissingPolicy(p) | Reason::AllowedBy(p) => Some(p),
            Reason::NotAllowed | Reason::NoAllowPolicies | Reason::NoPolicies => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeniedBy(p) => write!(f, "denied by policy {p}"),
            Reason::MissingPolicy(p) => write!(f, "denied: policy {p} is not known"),
            Reason::NotAllowed => f.write_str("denied: no allow policy matched"),
            Reason::AllowedBy(p) => write!(f, "allowed by policy {p}"),
            Reason::NoAllowPolicies => f.write_str("allowed: no deny policy matched"),
            Reason::NoPolicies => f.write_str("allowed: no policies"),
        }
    }
}

/// Evaluates the policies that apply to the destination workload, in Istio's order.
///
/// 1. Dry-run policies are matched and reported in [`Decision::dry_run`], never enforced.
/// 2. The first matching DENY policy denies ([`Reason::DeniedBy`]).
/// 3. AUDIT policies that match are reported in [`Decision::audited`], nothing else.
/// 4. With no ALLOW policy, allow ([`Reason::NoPolicies`] / [`Reason::NoAllowPolicies`]).
/// 5. The first matching ALLOW policy allows ([`Reason::AllowedBy`]); none → [`Reason::NotAllowed`].
///
/// Every policy is matched (not just until the verdict is known) so the report is complete.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    conn: &Connection,
) -> Decision {
    evaluate_with_missing(policies, &[], conn)
}

/// [`evaluate`], failing closed on policies the destination names but the state lacks.
///
/// `missing` holds the keys of selector policies listed in the workload's
/// `authorization_policies` that are not in the policy store (not yet received, or just
/// removed). Unless a DENY policy already matched, a non-empty `missing` denies with
/// [`Reason::MissingPolicy`] naming the first one: an absent DENY policy must not allow.
pub fn evaluate_with_missing<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    missing: &[String],
    conn: &Connection,
) -> Decision {
    let mut audited = Vec::new();
    let mut dry_run = Vec::new();
    let mut denied_by: Option<&Authorization> = None;
    let mut allowed_by: Option<&Authorization> = None;
    let mut any_allow = false;
    let mut any_deny = false;

    for policy in policies {
        let matched = policy.matches(conn);
        if policy.dry_run {
            dry_run.push(DryRunOutcome {
                policy: policy.key(),
                action: policy.action,
                matched,
            });
            continue;
        }
        match policy.action {
            Action::Deny => {
                any_deny = true;
                if matched && denied_by.is_none() {
                    denied_by = Some(policy);
                }
            }
            Action::Allow => {
                any_allow = true;
                if matched && allowed_by.is_none() {
                    allowed_by = Some(policy);
                }
            }
            Action::Audit => {
                if matched {
                    audited.push(policy.key());
                }
            }
        }
    }

    let reason = if let Some(policy) = denied_by {
        Reason::DeniedBy(policy.key())
    } else if let Some(name) = missing.first() {
        Reason::MissingPolicy(name.clone())
    } else if !any_allow {
        if any_deny {
            Reason::NoAllowPolicies
        } else {
            Reason::NoPolicies
        }
    } else if let Some(policy) = allowed_by {
        Reason::AllowedBy(policy.key())
    } else {
        Reason::NotAllowed
    };
    Decision {
        allowed: reason.is_allowed(),
        reason,
        audited,
        dry_run,
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if !self.audited.is_empty() {
            write!(f, "; audited by {}", self.audited.join(","))?;
        }
        for d in &self.dry_run {
            let verdict = if d.matched {
                "matched"
            } else {
                "did not match"
            };
            write!(f, "; dry-run {} {} {verdict}", d.action, d.policy)?;
        }
        Ok(())
    }
}
