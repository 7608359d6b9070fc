//! The values of AuthorizationPolicy rules: `when` conditions with their typed values, Istio's
//! string patterns, JWT principal patterns, address blocks and ports, each validated while it
//! is parsed.

use std::fmt;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::common::{deserialize_via, header_name};

/// A `rules[].when[]` condition: the attribute named by `key` matches one of `values` (when
/// set) and none of `notValues`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The key as written.
    pub key: String,
    /// The attribute it names.
    pub attribute: Attribute,
    /// Values, ORed (empty = no constraint).
    pub values: Values,
    /// Values that must not match.
    pub not_values: Values,
}

/// What a `when` key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `request.headers[<name>]` (duplicate headers joined with `,`).
    RequestHeader(HeaderName),
    /// `source.ip`: the direct peer's address.
    SourceIp,
    /// `remote.ip`: the original client's address.
    RemoteIp,
    /// `source.namespace`: the peer identity's namespace.
    SourceNamespace,
    /// `source.principal`: the peer identity without `spiffe://`.
    SourcePrincipal,
    /// `request.auth.principal`: the JWT's `<iss>/<sub>`.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT's `aud`.
    RequestAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]…`: a (nested) JWT claim.
    RequestClaim(Vec<String>),
    /// `destination.ip`: the original destination address (the service VIP).
    DestinationIp,
    /// `destination.port`: the original destination port (the service port).
    DestinationPort,
    /// `connection.sni`: the SNI of the downstream TLS connection.
    ConnectionSni,
}

impl Attribute {
    /// Parses a `when` key.
    pub fn parse(key: &str) -> Result<Self, String> {
        if key.starts_with("experimental.envoy.filters.") {
            return Err(format!(
                "unsupported key {key:?}: Envoy filter metadata is not available in this waypoint"
            ));
        }
        if let Some(rest) = key.strip_prefix("request.headers") {
            let names = bracketed(rest)
                .ok_or_else(|| format!("invalid key {key:?}: expected request.headers[<name>]"))?;
            let [name] = names.as_slice() else {
                return Err(format!("invalid key {key:?}: expected one header name"));
            };
            return header_name(name).map(Self::RequestHeader);
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            let names = bracketed(rest).ok_or_else(|| {
                format!("invalid key {key:?}: expected request.auth.claims[<name>] or [<name>][<nested>]…")
            })?;
            return Ok(Self::RequestClaim(names));
        }
        Ok(match key {
            "source.ip" => Self::SourceIp,
            "remote.ip" => Self::RemoteIp,
            "source.namespace" => Self::SourceNamespace,
            "source.principal" => Self::SourcePrincipal,
            "request.auth.principal" => Self::RequestPrincipal,
            "request.auth.audiences" => Self::RequestAudiences,
            "request.auth.presenter" => Self::RequestPresenter,
            "destination.ip" => Self::DestinationIp,
            "destination.port" => Self::DestinationPort,
            "connection.sni" => Self::ConnectionSni,
            "" => return Err("key must not be empty".into()),
            _ => return Err(format!("unknown key {key:?}")),
        })
    }

    /// Whether only HTTP requests carry the attribute.
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            Self::RequestHeader(_)
                | Self::RequestPrincipal
                | Self::RequestAudiences
                | Self::RequestPresenter
                | Self::RequestClaim(_)
        )
    }

    fn parse_values(&self, values: Vec<String>) -> Result<Values, String> {
        let each = |f: &dyn Fn(&str) -> Result<(), String>| values.iter().try_for_each(|v| f(v));
        each(&|v| {
            if v.is_empty() {
                Err("values must not be empty strings".into())
            } else {
                Ok(())
            }
        })?;
        Ok(match self {
            Self::SourceIp | Self::RemoteIp | Self::DestinationIp => Values::Nets(
                values
                    .iter()
                    .map(|v| parse_cidr(v))
                    .collect::<Result<_, _>>()?,
            ),
            Self::DestinationPort => Values::Ports(
                values
                    .iter()
                    .map(|v| parse_port(v))
                    .collect::<Result<_, _>>()?,
            ),
            Self::RequestPrincipal => Values::RequestPrincipals(
                values
                    .iter()
                    .map(|v| RequestPrincipalPattern::new(v))
                    .collect(),
            ),
            _ => Values::Patterns(values.iter().map(|v| Pattern::new(v)).collect()),
        })
    }
}

/// `request.headers[x]` / `[a][b]` suffixes: the bracketed names, each non-empty.
fn bracketed(mut rest: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, tail) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_owned());
        rest = tail;
    }
    (!names.is_empty()).then_some(names)
}

/// The typed values of a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// String patterns.
    Patterns(Vec<Pattern>),
    /// Address blocks.
    Nets(Vec<IpNet>),
    /// Ports.
    Ports(Vec<u16>),
    /// JWT principals.
    RequestPrincipals(Vec<RequestPrincipalPattern>),
}

impl Values {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Patterns(v) => v.is_empty(),
            Self::Nets(v) => v.is_empty(),
            Self::Ports(v) => v.is_empty(),
            Self::RequestPrincipals(v) => v.is_empty(),
        }
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Patterns(v) => v.serialize(serializer),
            Self::Nets(v) => v.serialize(serializer),
            Self::Ports(v) => v.serialize(serializer),
            Self::RequestPrincipals(v) => v.serialize(serializer),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

deserialize_via!(Condition, RawCondition);

impl TryFrom<RawCondition> for Condition {
    type Error = String;

    fn try_from(raw: RawCondition) -> Result<Self, String> {
        let attribute = Attribute::parse(&raw.key)?;
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(format!(
                "at least one of values or notValues must be set for key {}",
                raw.key
            ));
        }
        let values = attribute
            .parse_values(raw.values)
            .map_err(|e| format!("values of key {}: {e}", raw.key))?;
        let not_values = attribute
            .parse_values(raw.not_values)
            .map_err(|e| format!("notValues of key {}: {e}", raw.key))?;
        Ok(Self {
            key: raw.key,
            attribute,
            values,
            not_values,
        })
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("key", &self.key)?;
        if !self.values.is_empty() {
            map.serialize_entry("values", &self.values)?;
        }
        if !self.not_values.is_empty() {
            map.serialize_entry("notValues", &self.not_values)?;
        }
        map.end()
    }
}

/// Istio's string match for policy values: `abc` exact, `abc*` prefix, `*abc` suffix, `*`
/// any non-empty value. A `*` anywhere else is a literal character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Ends with the value.
    Suffix(String),
    /// `*`: present and not empty.
    Any,
}

impl Pattern {
    /// Parses a value as Istio does (`*` first, then a leading `*`, then a trailing `*`).
    pub fn new(value: &str) -> Self {
        if value == "*" {
            Self::Any
        } else if let Some(suffix) = value.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(value.to_owned())
        }
    }

    /// Whether `value` matches (`Any` requires a non-empty value).
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Any => !value.is_empty(),
        }
    }

    pub(crate) fn into_lowercase(self) -> Self {
        match self {
            Self::Exact(s) => Self::Exact(s.to_ascii_lowercase()),
            Self::Prefix(s) => Self::Prefix(s.to_ascii_lowercase()),
            Self::Suffix(s) => Self::Suffix(s.to_ascii_lowercase()),
            Self::Any => Self::Any,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => f.write_str(s),
            Self::Prefix(s) => write!(f, "{s}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Any => f.write_str("*"),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        if value.is_empty() {
            return Err(serde::de::Error::custom("empty values are not allowed"));
        }
        Ok(Self::new(&value))
    }
}

/// A path value: a [`Pattern`], where Istio's path templates (`{*}`, `{**}`) are refused.
pub(super) struct PathPattern(pub(super) Pattern);

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        if value.is_empty() {
            return Err(serde::de::Error::custom("empty values are not allowed"));
        }
        if value.contains(['{', '}']) {
            return Err(serde::de::Error::custom(format!(
                "path templates are not supported: {value:?}"
            )));
        }
        Ok(Self(Pattern::new(&value)))
    }
}

/// A JWT principal value, `<iss>/<sub>` (split at the last `/`), matched as Istio does: the
/// issuer and the subject separately, each with its own [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestPrincipalPattern {
    /// The value as written.
    pub value: String,
    /// Issuer match.
    pub issuer: Pattern,
    /// Subject match.
    pub subject: Pattern,
}

impl RequestPrincipalPattern {
    /// Splits `value` into issuer and subject patterns.
    pub fn new(value: &str) -> Self {
        let split = value.rfind('/').map(|i| (&value[..i], &value[i + 1..]));
        let (issuer, subject) = if value == "*" {
            (Pattern::Any, Pattern::Any)
        } else if let Some(rest) = value.strip_prefix('*') {
            match split {
                Some((iss, sub)) => {
                    let issuer = if iss == "*" {
                        Pattern::Any
                    } else {
                        Pattern::Suffix(iss[1..].to_owned())
                    };
                    (issuer, Pattern::Exact(sub.to_owned()))
                }
                None => (Pattern::Any, Pattern::Suffix(rest.to_owned())),
            }
        } else if let Some(rest) = value.strip_suffix('*') {
            match split {
                Some((iss, sub)) => {
                    let subject = if sub == "*" {
                        Pattern::Any
                    } else {
                        Pattern::Prefix(sub[..sub.len() - 1].to_owned())
                    };
                    (Pattern::Exact(iss.to_owned()), subject)
                }
                None => (Pattern::Prefix(rest.to_owned()), Pattern::Any),
            }
        } else {
            match split {
                Some((iss, sub)) => (
                    Pattern::Exact(iss.to_owned()),
                    Pattern::Exact(sub.to_owned()),
                ),
                None => (
                    Pattern::Exact(value.to_owned()),
                    Pattern::Exact(String::new()),
                ),
            }
        };
        Self {
            value: value.to_owned(),
            issuer,
            subject,
        }
    }

    /// Whether a token with issuer `iss` and subject `sub` matches.
    pub fn matches(&self, iss: &str, sub: &str) -> bool {
        self.issuer.matches(iss) && self.subject.matches(sub)
    }
}

impl Serialize for RequestPrincipalPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl<'de> Deserialize<'de> for RequestPrincipalPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        if value.is_empty() {
            return Err(serde::de::Error::custom("empty values are not allowed"));
        }
        Ok(Self::new(&value))
    }
}

/// An IP address (a full-length block) or a CIDR block.
pub(super) struct Cidr(pub(super) IpNet);

/// Parses `10.0.0.1` or `10.0.0.0/8` (host bits are ignored, as Envoy masks them).
pub fn parse_cidr(value: &str) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value
        .parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid IP address or CIDR block {value:?}"))
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        parse_cidr(&value)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// A port, written as a string (the CRD's type) or a number.
pub(super) struct PortValue(pub(super) u16);

/// Parses a port number in `[0, 65535]`.
pub fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .map_err(|_| format!("invalid port {value:?}: expected a number in [0, 65535]"))
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u16::try_from(n).map(Self).map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid port {n}: expected a number in [0, 65535]"
                ))
            }),
            Raw::Text(s) => parse_port(&s).map(Self).map_err(serde::de::Error::custom),
        }
    }
}
