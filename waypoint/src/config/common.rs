//! Value types shared by the Istio and Gateway API objects: regexes, string matches,
//! percentages and header operations, each validated while it is parsed.

use std::collections::BTreeMap;
use std::fmt;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Upper bound for the compiled size of one configured regex (the `regex` crate's
/// `size_limit`). Configured patterns come from operators, not clients; the limit keeps one
/// pathological pattern from using unbounded memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Deserializes `R` from a mapping and converts it with `TryFrom`, inside the mapping's
/// visitor: a failed conversion is then reported at the mapping's own path, so an element of a
/// list keeps its index (`spec.http[2]`, not `spec.http`).
pub(crate) fn deserialize_validated<'de, D, R, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    struct Validated<R, T>(std::marker::PhantomData<(R, T)>);

    impl<'de, R, T> serde::de::Visitor<'de> for Validated<R, T>
    where
        R: Deserialize<'de>,
        T: TryFrom<R, Error = String>,
    {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            T::try_from(raw).map_err(serde::de::Error::custom)
        }
    }

    deserializer.deserialize_map(Validated(std::marker::PhantomData))
}

/// Implements `Deserialize` for a type through its `TryFrom<Raw, Error = String>`, with
/// [`deserialize_validated`].
macro_rules! deserialize_via {
    ($ty:ty, $raw:ty) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::config::common::deserialize_validated::<D, $raw, $ty>(deserializer)
            }
        }
    };
}
pub(crate) use deserialize_via;

/// A regex matched against a whole value, as Envoy's `safe_regex` (RE2 syntax, full match).
///
/// The `regex` crate has RE2's linear-time guarantee and nearly its syntax; the pattern is
/// anchored as `^(?:pattern)$`.
#[derive(Clone)]
pub struct FullRegex {
    source: String,
    regex: regex::Regex,
}

impl FullRegex {
    /// Compiles `pattern` for whole-value matching.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: pattern.to_owned(),
            regex,
        })
    }

    /// The pattern as configured (without the anchors).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl fmt::Debug for FullRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

impl PartialEq for FullRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for FullRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for FullRegex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        Self::new(&pattern)
            .map_err(|e| serde::de::Error::custom(format!("invalid regex {pattern:?}: {e}")))
    }
}

/// A regex searched for anywhere in a value, for substitutions (Istio's `uriRegexRewrite`,
/// Envoy's `regex_rewrite`: every match is replaced).
#[derive(Clone)]
pub struct SearchRegex {
    source: String,
    regex: regex::Regex,
}

impl SearchRegex {
    /// Compiles `pattern` unanchored.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: pattern.to_owned(),
            regex,
        })
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled regex.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }
}

impl fmt::Debug for SearchRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/", self.source)
    }
}

impl PartialEq for SearchRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for SearchRegex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for SearchRegex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(deserializer)?;
        Self::new(&pattern)
            .map_err(|e| serde::de::Error::custom(format!("invalid regex {pattern:?}: {e}")))
    }
}

/// Istio's `StringMatch`: one of `exact`, `prefix`, `regex`, or none (`{}`).
///
/// `{}` means "present" where Istio gives it that meaning (header and query parameter
/// matches); values are case-sensitive.
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    /// `{}`: no value given.
    Any,
    /// `exact: value`.
    Exact(String),
    /// `prefix: value`.
    Prefix(String),
    /// `regex: pattern` (RE2, whole value).
    Regex(FullRegex),
}

#[derive(Deserialize)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<FullRegex>,
}

deserialize_via!(StringMatch, RawStringMatch);

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        match (raw.exact, raw.prefix, raw.regex) {
            (None, None, None) => Ok(Self::Any),
            (Some(v), None, None) => Ok(Self::Exact(v)),
            (None, Some(v), None) => Ok(Self::Prefix(v)),
            (None, None, Some(r)) => Ok(Self::Regex(r)),
            _ => Err("only one of exact, prefix or regex may be set".into()),
        }
    }
}

/// A percentage in `[0, 100]` (Istio's `Percent { value }`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Percent(pub f64);

#[derive(Deserialize)]
struct RawPercent {
    #[serde(default)]
    value: f64,
}

deserialize_via!(Percent, RawPercent);

impl TryFrom<RawPercent> for Percent {
    type Error = String;

    fn try_from(raw: RawPercent) -> Result<Self, String> {
        if !(0.0..=100.0).contains(&raw.value) {
            return Err(format!("percentage {} is outside [0, 100]", raw.value));
        }
        Ok(Self(raw.value))
    }
}

/// Istio's `PortSelector { number }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortSelector {
    /// The port number.
    pub number: u16,
}

/// Parses a header name, lowercased (`http::HeaderName` rules: an RFC 9110 token).
pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

/// Parses a header value (visible ASCII, spaces and tabs; no CR or LF).
pub fn header_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name:?}"))
}

/// A header name and value, both validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name, lowercased.
    pub name: HeaderName,
    /// The value.
    pub value: HeaderValue,
}

impl Serialize for Header {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(
            self.name.as_str(),
            &String::from_utf8_lossy(self.value.as_bytes()),
        )?;
        map.end()
    }
}

/// Header edits: set (replace), add (append) and remove.
///
/// Istio writes `set`/`add` as maps and `remove` as a list; the Gateway API writes `set`/`add`
/// as lists of `{name, value}`. Both land here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOps {
    /// Headers to set, replacing any existing value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    /// Headers to append.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    /// Headers to remove.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_names"
    )]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Appends the operations of `other` (applied after those of `self`).
    pub fn extend(&mut self, other: &HeaderOps) {
        self.set.extend(other.set.iter().cloned());
        self.add.extend(other.add.iter().cloned());
        self.remove.extend(other.remove.iter().cloned());
    }
}

fn serialize_names<S: Serializer>(names: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(names.iter().map(HeaderName::as_str))
}

/// Istio's `HeaderOperations` (`set`/`add` maps, `remove` list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IstioHeaderOps(pub HeaderOps);

#[derive(Deserialize)]
struct RawIstioHeaderOps {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

fn header_pairs(map: BTreeMap<String, String>) -> Result<Vec<Header>, String> {
    map.into_iter()
        .map(|(name, value)| {
            Ok(Header {
                value: header_value(&name, &value)?,
                name: header_name(&name)?,
            })
        })
        .collect()
}

deserialize_via!(IstioHeaderOps, RawIstioHeaderOps);

impl TryFrom<RawIstioHeaderOps> for IstioHeaderOps {
    type Error = String;

    fn try_from(raw: RawIstioHeaderOps) -> Result<Self, String> {
        Ok(Self(HeaderOps {
            set: header_pairs(raw.set)?,
            add: header_pairs(raw.add)?,
            remove: raw
                .remove
                .iter()
                .map(|n| header_name(n))
                .collect::<Result<_, _>>()?,
        }))
    }
}

/// A map keyed by header name (Istio's `headers`/`withoutHeaders` matches), names validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderMatchMap(pub Vec<(HeaderName, StringMatch)>);

deserialize_via!(HeaderMatchMap, BTreeMap<String, StringMatch>);

impl TryFrom<BTreeMap<String, StringMatch>> for HeaderMatchMap {
    type Error = String;

    fn try_from(raw: BTreeMap<String, StringMatch>) -> Result<Self, String> {
        raw.into_iter()
            .map(|(name, m)| header_name(&name).map(|n| (n, m)))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}
