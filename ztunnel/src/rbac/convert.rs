//! `istio.security.Authorization` (xDS) → [`Authorization`].
//!
//! Unlike upstream ztunnel, which silently drops unparsable addresses and empty string matches
//! (turning `sourceIps: [<bad>]` into "any source"), every malformed value is an error here: a
//! policy is taken whole or not at all, and the caller NACKs the resource.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proto::istio::security as pb;

use super::{Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch};

/// Why an `istio.security.Authorization` could not be converted.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// `name` is empty.
    #[error("authorization policy has an empty name")]
    EmptyName,
    /// `scope` is not a known `istio.security.Scope`.
    #[error("unknown authorization scope {0}")]
    UnknownScope(i32),
    /// `action` is not a known `istio.security.Action` (only ALLOW and DENY are defined).
    #[error("unknown authorization action {0}")]
    UnknownAction(i32),
    /// A value inside a match is malformed.
    #[error("{at}: {error}")]
    Field {
        /// Where the value is.
        at: FieldPath,
        /// What is wrong with it.
        error: FieldError,
    },
}

/// The location of a value inside a policy: `rules[r].clauses[c].matches[m].<field>[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPath {
    /// Index of the rule.
    pub rule: usize,
    /// Index of the clause within the rule.
    pub clause: usize,
    /// Index of the match within the clause.
    pub matcher: usize,
    /// Name of the protobuf field (`source_ips`, `not_principals`, …).
    pub field: &'static str,
    /// Index of the value within the field.
    pub index: usize,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rules[{}].clauses[{}].matches[{}].{}[{}]",
            self.rule, self.clause, self.matcher, self.field, self.index
        )
    }
}

/// What is wrong with one value of a match.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// An address is neither 4 (IPv4) nor 16 (IPv6) bytes long.
    #[error("address is {0} bytes long, expected 4 (IPv4) or 16 (IPv6)")]
    AddressLength(usize),
    /// A prefix length is longer than the address.
    #[error("prefix length {length} is too long for {address}")]
    PrefixLength {
        /// The address.
        address: IpAddr,
        /// The rejected prefix length.
        length: u32,
    },
    /// A port does not fit in 16 bits.
    #[error("port {0} is out of range")]
    PortOutOfRange(u32),
    /// A string match has none of exact/prefix/suffix/presence set.
    #[error("string match has no match type")]
    EmptyStringMatch,
}

impl TryFrom<pb::Authorization> for Authorization {
    type Error = ConvertError;

    fn try_from(policy: pb::Authorization) -> Result<Self, ConvertError> {
        if policy.name.is_empty() {
            return Err(ConvertError::EmptyName);
        }
        let scope = match pb::Scope::try_from(policy.scope) {
            Ok(pb::Scope::Global) => Scope::Global,
            Ok(pb::Scope::Namespace) => Scope::Namespace,
            Ok(pb::Scope::WorkloadSelector) => Scope::WorkloadSelector,
            Err(_) => return Err(ConvertError::UnknownScope(policy.scope)),
        };
        // Never default an unknown action to anything: an unknown DENY read as ALLOW would let
        // traffic through.
        let action = match pb::Action::try_from(policy.action) {
            Ok(pb::Action::Allow) => Action::Allow,
            Ok(pb::Action::Deny) => Action::Deny,
            Err(_) => return Err(ConvertError::UnknownAction(policy.action)),
        };
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| convert_rule(r, rule))
            .collect::<Result<_, _>>()?;
        Ok(Authorization {
            name: policy.name,
            namespace: policy.namespace,
            scope,
            action,
            rules,
            dry_run: policy.dry_run,
        })
    }
}

fn convert_rule(r: usize, rule: &pb::Rule) -> Result<Rule, ConvertError> {
    let clauses = rule
        .clauses
        .iter()
        .enumerate()
        .map(|(c, clause)| {
            let matches = clause
                .matches
                .iter()
                .enumerate()
                .map(|(m, matcher)| convert_match(r, c, m, matcher))
                .collect::<Result<_, _>>()?;
            Ok(Clause { matches })
        })
        .collect::<Result<_, _>>()?;
    Ok(Rule { clauses })
}

/// Converts one match; `extensions` are ignored, as upstream does.
fn convert_match(r: usize, c: usize, m: usize, pm: &pb::Match) -> Result<Match, ConvertError> {
    let list = |field: &'static str| Values { r, c, m, field };
    Ok(Match {
        namespaces: list("namespaces").strings(&pm.namespaces)?,
        not_namespaces: list("not_namespaces").strings(&pm.not_namespaces)?,
        principals: list("principals").strings(&pm.principals)?,
        not_principals: list("not_principals").strings(&pm.not_principals)?,
        service_accounts: service_accounts(&pm.service_accounts),
        not_service_accounts: service_accounts(&pm.not_service_accounts),
        source_ips: list("source_ips").nets(&pm.source_ips)?,
        not_source_ips: list("not_source_ips").nets(&pm.not_source_ips)?,
        destination_ips: list("destination_ips").nets(&pm.destination_ips)?,
        not_destination_ips: list("not_destination_ips").nets(&pm.not_destination_ips)?,
        destination_ports: list("destination_ports").ports(&pm.destination_ports)?,
        not_destination_ports: list("not_destination_ports").ports(&pm.not_destination_ports)?,
    })
}

/// One repeated field of a match being converted; knows its location for errors.
struct Values {
    r: usize,
    c: usize,
    m: usize,
    field: &'static str,
}

impl Values {
    fn err(&self, index: usize, error: FieldError) -> ConvertError {
        ConvertError::Field {
            at: FieldPath {
                rule: self.r,
                clause: self.c,
                matcher: self.m,
                field: self.field,
                index,
            },
            error,
        }
    }

    fn strings(&self, values: &[pb::StringMatch]) -> Result<Vec<StringMatch>, ConvertError> {
        use pb::string_match::MatchType;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| match &v.match_type {
                Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
                Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
                Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
                Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
                None => Err(self.err(i, FieldError::EmptyStringMatch)),
            })
            .collect()
    }

    fn nets(&self, values: &[pb::Address]) -> Result<Vec<IpNet>, ConvertError> {
        values
            .iter()
            .enumerate()
            .map(|(i, a)| address_to_net(a).map_err(|e| self.err(i, e)))
            .collect()
    }

    fn ports(&self, values: &[u32]) -> Result<Vec<u16>, ConvertError> {
        values
            .iter()
            .enumerate()
            .map(|(i, &p)| u16::try_from(p).map_err(|_| self.err(i, FieldError::PortOutOfRange(p))))
            .collect()
    }
}

fn service_accounts(values: &[pb::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| ServiceAccountMatch {
            namespace: v.namespace.clone(),
            service_account: v.service_account.clone(),
        })
        .collect()
}

/// `Address { address: 4 or 16 bytes, length: prefix bits }` → [`IpNet`].
fn address_to_net(a: &pb::Address) -> Result<IpNet, FieldError> {
    let address = if let Ok(b) = <[u8; 4]>::try_from(a.address.as_slice()) {
        IpAddr::V4(Ipv4Addr::from(b))
    } else if let Ok(b) = <[u8; 16]>::try_from(a.address.as_slice()) {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        return Err(FieldError::AddressLength(a.address.len()));
    };
    let too_long = FieldError::PrefixLength {
        address,
        length: a.length,
    };
    let length = u8::try_from(a.length).map_err(|_| too_long.clone())?;
    IpNet::new(address, length).map_err(|_| too_long)
}
