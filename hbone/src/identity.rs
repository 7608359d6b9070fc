//! SPIFFE identities, strictly parsed.
//!
//! Every HBONE peer is named by exactly one SPIFFE ID carried as the single URI SAN of its leaf
//! certificate. The TLS verifiers in [`crate::tls`] turn that SAN into an [`Identity`] during the
//! handshake, and everything above TLS (authorization, telemetry, the tunnel's `forwarded` header)
//! reasons about peers only through this type. Parsing is therefore strict: anything that is not
//! exactly `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` under the SPIFFE ID rules
//! is rejected with an error that says what was wrong, never normalised into something else.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The URI scheme of every SPIFFE ID.
const SCHEME: &str = "spiffe://";
/// Maximum length of a whole SPIFFE ID, in bytes (SPIFFE ID specification, section 2.3).
pub const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain, in bytes (SPIFFE ID specification, section 2.1).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE identity `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// The Istio form of a SPIFFE ID: a trust domain, a Kubernetes namespace and a service account.
/// Construct one with [`Identity::new`] or by parsing ([`FromStr`]); both enforce the same rules,
/// so every `Identity` value formats ([`fmt::Display`]) to a string that parses back to itself.
///
/// The URI is stored once and shared, so cloning is cheap. Ordering compares trust domain, then
/// namespace, then service account.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The full URI.
    uri: Arc<str>,
    /// End of the trust domain in `uri` (the `/` before `ns`).
    td_end: u16,
    /// End of the namespace in `uri` (the `/` before `sa`).
    ns_end: u16,
}

/// Why a string or a set of components is not a valid [`Identity`].
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The ID is longer than the SPIFFE limit of [`MAX_ID_LEN`] bytes.
    #[error("SPIFFE ID is {len} bytes long, the limit is {MAX_ID_LEN}")]
    TooLong {
        /// Length of the rejected ID, in bytes.
        len: usize,
    },
    /// The ID does not start with `spiffe://` (the scheme is case-sensitive).
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// The ID contains a `%`: SPIFFE IDs may not be percent-encoded.
    #[error("SPIFFE ID contains percent-encoding ('%'), which is not allowed")]
    PercentEncoded,
    /// The ID contains a query part (`?`).
    #[error("SPIFFE ID contains a query ('?'), which is not allowed")]
    QueryPresent,
    /// The ID contains a fragment part (`#`).
    #[error("SPIFFE ID contains a fragment ('#'), which is not allowed")]
    FragmentPresent,
    /// The trust domain (the URI authority) is empty.
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    /// The authority contains user information (`user@`).
    #[error("SPIFFE trust domain may not contain user info ('@')")]
    UserInfoPresent,
    /// The authority contains a port (`:port`).
    #[error("SPIFFE trust domain may not contain a port (':')")]
    PortPresent,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`] bytes.
    #[error("SPIFFE trust domain is {len} bytes long, the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong {
        /// Length of the rejected trust domain, in bytes.
        len: usize,
    },
    /// The trust domain contains a character other than lowercase ASCII letters, digits, `.`,
    /// `-` and `_` (uppercase letters included).
    #[error("SPIFFE trust domain contains invalid character {ch:?}")]
    InvalidTrustDomainChar {
        /// The first offending character.
        ch: char,
    },
    /// The path has fewer than the four segments of `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "SPIFFE ID path must be /ns/<namespace>/sa/<service-account>, found {found} segment(s)"
    )]
    MissingSegments {
        /// Number of path segments found.
        found: usize,
    },
    /// The path has more than the four segments of `/ns/<namespace>/sa/<service-account>`
    /// (a trailing `/` counts as an extra, empty, segment).
    #[error("SPIFFE ID path must be /ns/<namespace>/sa/<service-account>, found {found} segments")]
    ExtraSegments {
        /// Number of path segments found.
        found: usize,
    },
    /// A keyword segment is not `ns` (first segment) or `sa` (third segment).
    #[error("SPIFFE ID path segment {found:?} found where {expected:?} was expected")]
    WrongKeyword {
        /// The keyword required at that position (`ns` or `sa`).
        expected: &'static str,
        /// The segment actually present.
        found: String,
    },
    /// The namespace segment is empty.
    #[error("SPIFFE ID has an empty namespace")]
    EmptyNamespace,
    /// The service account segment is empty.
    #[error("SPIFFE ID has an empty service account")]
    EmptyServiceAccount,
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path segment may not be {segment:?}")]
    DotSegment {
        /// The offending segment (`.` or `..`).
        segment: String,
    },
    /// A path segment contains a character other than ASCII letters, digits, `.`, `-` and `_`.
    #[error("SPIFFE ID path segment contains invalid character {ch:?}")]
    InvalidPathChar {
        /// The first offending character.
        ch: char,
    },
}

impl Identity {
    /// Builds an identity from its components, applying the same rules as parsing.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let len = SCHEME.len()
            + trust_domain.len()
            + "/ns/".len()
            + namespace.len()
            + "/sa/".len()
            + service_account.len();
        if len > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len });
        }
        check_components_reserved(trust_domain)?;
        check_components_reserved(namespace)?;
        check_components_reserved(service_account)?;
        validate_trust_domain(trust_domain)?;
        check_segment(namespace, IdentityError::EmptyNamespace)?;
        check_segment(service_account, IdentityError::EmptyServiceAccount)?;
        Ok(Self::from_checked_parts(
            trust_domain,
            namespace,
            service_account,
        ))
    }

    /// Assembles an identity from components that have passed validation (so the whole URI is
    /// at most [`MAX_ID_LEN`] bytes and every offset fits in a `u16`).
    fn from_checked_parts(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        let uri = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let td_end = SCHEME.len() + trust_domain.len();
        let ns_end = td_end + "/ns/".len() + namespace.len();
        Self {
            uri: uri.into(),
            td_end: u16::try_from(td_end).unwrap_or(u16::MAX),
            ns_end: u16::try_from(ns_end).unwrap_or(u16::MAX),
        }
    }

    /// The whole SPIFFE ID, e.g. `spiffe://cluster.local/ns/default/sa/web`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        self.uri
            .get(SCHEME.len()..usize::from(self.td_end))
            .unwrap_or_default()
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        self.uri
            .get(usize::from(self.td_end) + "/ns/".len()..usize::from(self.ns_end))
            .unwrap_or_default()
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        self.uri
            .get(usize::from(self.ns_end) + "/sa/".len()..)
            .unwrap_or_default()
    }
}

/// Checks a trust domain on its own: non-empty, at most [`MAX_TRUST_DOMAIN_LEN`] bytes, made of
/// lowercase ASCII letters, digits, `.`, `-` and `_`, with no user info or port.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
    if trust_domain.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    if trust_domain.contains('@') {
        return Err(IdentityError::UserInfoPresent);
    }
    if trust_domain.contains(':') {
        return Err(IdentityError::PortPresent);
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TrustDomainTooLong {
            len: trust_domain.len(),
        });
    }
    if let Some(ch) = trust_domain
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(IdentityError::InvalidTrustDomainChar { ch });
    }
    Ok(())
}

/// Reports the URI delimiters that must never occur in any part of an ID, with the specific
/// error for each, before the finer per-component character checks run.
fn check_components_reserved(s: &str) -> Result<(), IdentityError> {
    if s.contains('%') {
        return Err(IdentityError::PercentEncoded);
    }
    if s.contains('#') {
        return Err(IdentityError::FragmentPresent);
    }
    if s.contains('?') {
        return Err(IdentityError::QueryPresent);
    }
    Ok(())
}

/// Checks a namespace or service-account segment.
fn check_segment(segment: &str, empty: IdentityError) -> Result<(), IdentityError> {
    if segment.is_empty() {
        return Err(empty);
    }
    if segment == "." || segment == ".." {
        return Err(IdentityError::DotSegment {
            segment: segment.to_owned(),
        });
    }
    if let Some(ch) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdentityError::InvalidPathChar { ch });
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` strictly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: s.len() });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdentityError::WrongScheme)?;
        check_components_reserved(rest)?;

        let (authority, segments) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path.split('/').collect::<Vec<_>>()),
            None => (rest, Vec::new()),
        };
        validate_trust_domain(authority)?;

        let [ns_kw, namespace, sa_kw, service_account] = segments[..] else {
            let found = segments.len();
            return Err(if found < 4 {
                IdentityError::MissingSegments { found }
            } else {
                IdentityError::ExtraSegments { found }
            });
        };
        if ns_kw != "ns" {
            return Err(IdentityError::WrongKeyword {
                expected: "ns",
                found: ns_kw.to_owned(),
            });
        }
        check_segment(namespace, IdentityError::EmptyNamespace)?;
        if sa_kw != "sa" {
            return Err(IdentityError::WrongKeyword {
                expected: "sa",
                found: sa_kw.to_owned(),
            });
        }
        check_segment(service_account, IdentityError::EmptyServiceAccount)?;

        Ok(Self::from_checked_parts(
            authority,
            namespace,
            service_account,
        ))
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&&*self.uri).finish()
    }
}

impl PartialOrd for Identity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Identity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            self.trust_domain(),
            self.namespace(),
            self.service_account(),
        )
            .cmp(&(
                other.trust_domain(),
                other.namespace(),
                other.service_account(),
            ))
    }
}

impl AsRef<str> for Identity {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-productpage").unwrap(),
            id
        );
        assert_eq!(Identity::try_from(s).unwrap(), id);
    }

    #[test]
    fn accepted_characters() {
        for s in [
            "spiffe://td/ns/a/sa/b",
            "spiffe://my_td-1.example.org/ns/Kube-System/sa/My.Sa_1",
            "spiffe://td/ns/.../sa/..a",
        ] {
            let id: Identity = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn ordering_is_by_components() {
        let a = Identity::new("a", "z", "z").unwrap();
        let b = Identity::new("b", "a", "a").unwrap();
        let c = Identity::new("b", "a", "b").unwrap();
        assert!(a < b && b < c);
        // Component order, not string order: "a/" sorts after "a." as text.
        let short = Identity::new("a", "x", "x").unwrap();
        let long = Identity::new("a.b", "x", "x").unwrap();
        assert!(short < long);
        assert!(short.as_str() > long.as_str());
        assert_eq!(format!("{short:?}"), "Identity(\"spiffe://a/ns/x/sa/x\")");
        assert_eq!(std::mem::size_of::<Identity>(), 24);
    }

    #[test]
    fn malformed_ids() {
        use IdentityError as E;
        let long_td = "a".repeat(256);
        let long_id = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2048));
        let cases: Vec<(String, IdentityError)> = vec![
            ("spiffe://".into(), E::EmptyTrustDomain),
            ("spiffe:///ns/a/sa/b".into(), E::EmptyTrustDomain),
            (
                "spiffe://td/ns/a/sa/b/extra".into(),
                E::ExtraSegments { found: 5 },
            ),
            (
                "spiffe://td/ns/a/sa/b/".into(),
                E::ExtraSegments { found: 5 },
            ),
            ("spiffe://td/ns/a".into(), E::MissingSegments { found: 2 }),
            ("spiffe://td".into(), E::MissingSegments { found: 0 }),
            ("spiffe://td/".into(), E::MissingSegments { found: 1 }),
            (
                "spiffe://td/namespace/a/sa/b".into(),
                E::WrongKeyword {
                    expected: "ns",
                    found: "namespace".into(),
                },
            ),
            (
                "spiffe://td/ns/a/serviceaccount/b".into(),
                E::WrongKeyword {
                    expected: "sa",
                    found: "serviceaccount".into(),
                },
            ),
            ("spiffe://td/ns/a%2Fb/sa/b".into(), E::PercentEncoded),
            ("spiffe://td%2F/ns/a/sa/b".into(), E::PercentEncoded),
            ("spiffe://td/ns/a/sa/b%2F".into(), E::PercentEncoded),
            ("spiffe://td/ns/a/sa/b?x=1".into(), E::QueryPresent),
            ("spiffe://td/ns/a/sa/b#frag".into(), E::FragmentPresent),
            ("http://td/ns/a/sa/b".into(), E::WrongScheme),
            ("SPIFFE://td/ns/a/sa/b".into(), E::WrongScheme),
            ("spiffe:/td/ns/a/sa/b".into(), E::WrongScheme),
            ("".into(), E::WrongScheme),
            ("spiffe://user@td/ns/a/sa/b".into(), E::UserInfoPresent),
            ("spiffe://td:80/ns/a/sa/b".into(), E::PortPresent),
            (
                "spiffe://Cluster.local/ns/a/sa/b".into(),
                E::InvalidTrustDomainChar { ch: 'C' },
            ),
            (
                "spiffe://td!/ns/a/sa/b".into(),
                E::InvalidTrustDomainChar { ch: '!' },
            ),
            (
                format!("spiffe://{long_td}/ns/a/sa/b"),
                E::TrustDomainTooLong { len: 256 },
            ),
            (long_id.clone(), E::TooLong { len: long_id.len() }),
            ("spiffe://td/ns//sa/b".into(), E::EmptyNamespace),
            ("spiffe://td/ns/a/sa/".into(), E::EmptyServiceAccount),
            (
                "spiffe://td//a/sa/b".into(),
                E::WrongKeyword {
                    expected: "ns",
                    found: String::new(),
                },
            ),
            (
                "spiffe://td/ns/./sa/b".into(),
                E::DotSegment {
                    segment: ".".into(),
                },
            ),
            (
                "spiffe://td/ns/a/sa/..".into(),
                E::DotSegment {
                    segment: "..".into(),
                },
            ),
            (
                "spiffe://td/ns/a b/sa/b".into(),
                E::InvalidPathChar { ch: ' ' },
            ),
            (
                "spiffe://td/ns/a/sa/b:c".into(),
                E::InvalidPathChar { ch: ':' },
            ),
            (
                "spiffe://td/ns/a/sa/é".into(),
                E::InvalidPathChar { ch: 'é' },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Identity>(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn new_applies_the_same_rules() {
        use IdentityError as E;
        assert_eq!(Identity::new("", "a", "b"), Err(E::EmptyTrustDomain));
        assert_eq!(
            Identity::new("TD", "a", "b"),
            Err(E::InvalidTrustDomainChar { ch: 'T' })
        );
        assert_eq!(Identity::new("u@td", "a", "b"), Err(E::UserInfoPresent));
        assert_eq!(Identity::new("td:1", "a", "b"), Err(E::PortPresent));
        assert_eq!(Identity::new("td", "", "b"), Err(E::EmptyNamespace));
        assert_eq!(Identity::new("td", "a", ""), Err(E::EmptyServiceAccount));
        assert_eq!(
            Identity::new("td", "a/b", "b"),
            Err(E::InvalidPathChar { ch: '/' })
        );
        assert_eq!(Identity::new("td", "a%2F", "b"), Err(E::PercentEncoded));
        assert_eq!(Identity::new("td", "a", "b?"), Err(E::QueryPresent));
        assert_eq!(Identity::new("td", "a", "b#"), Err(E::FragmentPresent));
        assert_eq!(
            Identity::new("td", "..", "b"),
            Err(E::DotSegment {
                segment: "..".into()
            })
        );
        let long = "a".repeat(2040);
        assert!(matches!(
            Identity::new("td", &long, "b"),
            Err(E::TooLong { .. })
        ));
        assert_eq!(
            Identity::new(&"a".repeat(300), "a", "b"),
            Err(E::TrustDomainTooLong { len: 300 })
        );
    }

    #[test]
    fn max_lengths_are_inclusive() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let id = Identity::new(&td, "a", "b").unwrap();
        assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);

        let prefix = "spiffe://td/ns/a/sa/";
        let sa = "s".repeat(MAX_ID_LEN - prefix.len());
        let s = format!("{prefix}{sa}");
        assert_eq!(s.len(), MAX_ID_LEN);
        assert_eq!(s.parse::<Identity>().unwrap().to_string(), s);
        assert_eq!(Identity::new("td", "a", &sa).unwrap().to_string(), s);
    }
}
