//! `security.istio.io` `RequestAuthentication` (`v1`, `v1beta1`): which JWTs a request may
//! carry and how they are checked.
//!
//! Validated as the CRD and Istio's webhook do: at most one of `selector`, `targetRef` and
//! `targetRefs`; target references to a `Gateway`, `GatewayClass`, `Service` or
//! `ServiceEntry`, in the policy's own namespace; each rule with an issuer and at most one of
//! `jwks`, `jwksUri` and `jwks_uri`. An inline `jwks` is parsed here: a key set without any
//! usable key makes the object invalid. A `jwksUri` must be an `http://` or `https://` URL.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, Uri};
use serde::{Deserialize, Deserializer};

use super::common::{deserialize_via, header_name};
use super::duration::IstioDuration;
use crate::authn::KeySet;

/// The most `jwtRules` an object may have (the CRD's `maxItems`).
pub const MAX_JWT_RULES: usize = 4096;
/// The most `targetRefs` an object may have (the CRD's `maxItems`).
pub const MAX_TARGET_REFS: usize = 16;
/// The longest `jwksUri` (the CRD's `maxLength`).
pub const MAX_JWKS_URI_LEN: usize = 2048;

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Default)]
pub struct RequestAuthenticationSpec {
    /// `selector.matchLabels`: a workload selector. Never applies to a waypoint.
    pub selector: Option<BTreeMap<String, String>>,
    /// `targetRefs`, or the single `targetRef`.
    pub target_refs: Vec<PolicyTargetRef>,
    /// The rules.
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    selector: Option<RawSelector>,
    target_ref: Option<PolicyTargetRef>,
    target_refs: Option<Vec<PolicyTargetRef>>,
    #[serde(default)]
    jwt_rules: Vec<JwtRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

deserialize_via!(RequestAuthenticationSpec, RawSpec);

impl TryFrom<RawSpec> for RequestAuthenticationSpec {
    type Error = String;

    fn try_from(raw: RawSpec) -> Result<Self, String> {
        let set = [
            raw.selector.is_some(),
            raw.target_ref.is_some(),
            raw.target_refs.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("only one of targetRefs or selector can be set".into());
        }
        let target_refs = match (raw.target_ref, raw.target_refs) {
            (Some(one), _) => vec![one],
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        if target_refs.len() > MAX_TARGET_REFS {
            return Err(format!("targetRefs: at most {MAX_TARGET_REFS} are allowed"));
        }
        if raw.jwt_rules.len() > MAX_JWT_RULES {
            return Err(format!("jwtRules: at most {MAX_JWT_RULES} are allowed"));
        }
        Ok(Self {
            selector: raw.selector.map(|s| s.match_labels),
            target_refs,
            jwt_rules: raw.jwt_rules,
        })
    }
}

/// What a policy attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `gateway.networking.k8s.io` `Gateway`: the whole waypoint of that name.
    Gateway,
    /// `gateway.networking.k8s.io` `GatewayClass` (`istio-waypoint`, from the root namespace
    /// only): every waypoint.
    GatewayClass,
    /// Core `Service`: requests to that service.
    Service,
    /// `networking.istio.io` `ServiceEntry`: requests to its hosts.
    ServiceEntry,
}

/// A `targetRef(s)` entry (`PolicyTargetReference`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTargetRef {
    /// The kind.
    pub kind: TargetKind,
    /// The name of the target, in the policy's namespace.
    pub name: String,
}

#[derive(Deserialize)]
struct RawTargetRef {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

deserialize_via!(PolicyTargetRef, RawTargetRef);

impl TryFrom<RawTargetRef> for PolicyTargetRef {
    type Error = String;

    fn try_from(raw: RawTargetRef) -> Result<Self, String> {
        if raw.name.is_empty() {
            return Err("targetRef name must be set".into());
        }
        if raw.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
            return Err("cross namespace referencing is not currently supported".into());
        }
        let kind = match (raw.group.as_str(), raw.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => TargetKind::Gateway,
            ("gateway.networking.k8s.io", "GatewayClass") => TargetKind::GatewayClass,
            ("" | "core", "Service") => TargetKind::Service,
            ("networking.istio.io", "ServiceEntry") => TargetKind::ServiceEntry,
            (group, kind) => {
                return Err(format!(
                    "targetRef must be to a gateway.networking.k8s.io Gateway or GatewayClass, a \
                     core Service or a networking.istio.io ServiceEntry, not {group:?} {kind:?}"
                ));
            }
        };
        Ok(Self {
            kind,
            name: raw.name,
        })
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// `jwks`, parsed.
    Inline(Arc<KeySet>),
    /// `jwksUri` (or `jwks_uri`).
    Uri(Uri),
    /// Neither: OpenID Connect discovery at `<issuer>/.well-known/openid-configuration`.
    Discovery,
}

/// `presence`: whether a request must carry a token for the rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Presence {
    /// A request without a token passes unauthenticated (the default).
    #[default]
    Optional,
    /// A request without a token is denied (`Jwt is missing`).
    Required,
}

/// One `jwtRules` entry.
#[derive(Debug, Clone)]
pub struct JwtRule {
    /// `issuer`.
    pub issuer: String,
    /// `audiences`; empty = any.
    pub audiences: Vec<String>,
    /// The keys.
    pub jwks: JwksSource,
    /// `fromHeaders`: header and prefix.
    pub from_headers: Vec<JwtHeader>,
    /// `fromParams`.
    pub from_params: Vec<String>,
    /// `fromCookies`.
    pub from_cookies: Vec<String>,
    /// `outputPayloadToHeader`.
    pub output_payload_to_header: Option<HeaderName>,
    /// `outputClaimToHeaders`.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
    /// `timeout` of the key fetch; none = Istio's 5s.
    pub timeout: Option<IstioDuration>,
    /// `presence`.
    pub presence: Presence,
    /// `spaceDelimitedClaims`.
    pub space_delimited_claims: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJwtRule {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<NonEmpty>,
    jwks: Option<InlineJwks>,
    jwks_uri: Option<JwksUri>,
    #[serde(rename = "jwks_uri")]
    jwks_uri_snake: Option<JwksUri>,
    #[serde(default)]
    from_headers: Vec<JwtHeader>,
    #[serde(default)]
    from_params: Vec<NonEmpty>,
    #[serde(default)]
    from_cookies: Vec<NonEmpty>,
    output_payload_to_header: Option<OutputHeader>,
    #[serde(default)]
    output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    forward_original_token: bool,
    timeout: Option<IstioDuration>,
    #[serde(default)]
    presence: Presence,
    #[serde(default)]
    space_delimited_claims: Vec<NonEmpty>,
}

deserialize_via!(JwtRule, RawJwtRule);

impl TryFrom<RawJwtRule> for JwtRule {
    type Error = String;

    fn try_from(raw: RawJwtRule) -> Result<Self, String> {
        let issuer = raw.issuer.unwrap_or_default();
        if issuer.is_empty() {
            return Err("issuer must be set".into());
        }
        let jwks = match (raw.jwks, raw.jwks_uri, raw.jwks_uri_snake) {
            (None, None, None) => JwksSource::Discovery,
            (Some(InlineJwks(keys)), None, None) => JwksSource::Inline(keys),
            (None, Some(JwksUri(uri)), None) | (None, None, Some(JwksUri(uri))) => {
                JwksSource::Uri(uri)
            }
            _ => return Err("only one of jwks or jwksUri can be set".into()),
        };
        let strings = |list: Vec<NonEmpty>| list.into_iter().map(|s| s.0).collect();
        Ok(Self {
            issuer,
            audiences: strings(raw.audiences),
            jwks,
            from_headers: raw.from_headers,
            from_params: strings(raw.from_params),
            from_cookies: strings(raw.from_cookies),
            output_payload_to_header: raw.output_payload_to_header.map(|h| h.0),
            output_claim_to_headers: raw.output_claim_to_headers,
            forward_original_token: raw.forward_original_token,
            timeout: raw.timeout,
            presence: raw.presence,
            space_delimited_claims: strings(raw.space_delimited_claims),
        })
    }
}

/// A `fromHeaders` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    /// The header.
    pub name: HeaderName,
    /// The text before the token (`"Bearer "`); empty = the whole value.
    pub prefix: String,
}

#[derive(Deserialize)]
struct RawJwtHeader {
    #[serde(default)]
    name: String,
    #[serde(default)]
    prefix: String,
}

deserialize_via!(JwtHeader, RawJwtHeader);

impl TryFrom<RawJwtHeader> for JwtHeader {
    type Error = String;

    fn try_from(raw: RawJwtHeader) -> Result<Self, String> {
        if raw.name.is_empty() {
            return Err("name must be set".into());
        }
        Ok(Self {
            name: header_name(&raw.name)?,
            prefix: raw.prefix,
        })
    }
}

/// An `outputClaimToHeaders` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: HeaderName,
    /// The claim (`a.b` for a nested one).
    pub claim: String,
}

#[derive(Deserialize)]
struct RawClaimToHeader {
    #[serde(default)]
    header: String,
    #[serde(default)]
    claim: String,
}

deserialize_via!(ClaimToHeader, RawClaimToHeader);

impl TryFrom<RawClaimToHeader> for ClaimToHeader {
    type Error = String;

    fn try_from(raw: RawClaimToHeader) -> Result<Self, String> {
        if raw.claim.is_empty() {
            return Err("claim must be set".into());
        }
        let valid = !raw.header.is_empty()
            && raw
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!(
                "header {:?} must match ^[-_A-Za-z0-9]+$",
                raw.header
            ));
        }
        Ok(Self {
            header: header_name(&raw.header)?,
            claim: raw.claim,
        })
    }
}

/// A string that must not be empty.
struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(Self(s))
    }
}

/// `outputPayloadToHeader`: a header name.
struct OutputHeader(HeaderName);

impl<'de> Deserialize<'de> for OutputHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        header_name(&s).map(Self).map_err(serde::de::Error::custom)
    }
}

/// `jwks`: a JSON Web Key Set with at least one usable key.
struct InlineJwks(Arc<KeySet>);

impl<'de> Deserialize<'de> for InlineJwks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        KeySet::parse(&s)
            .map(|keys| Self(Arc::new(keys)))
            .map_err(serde::de::Error::custom)
    }
}

/// `jwksUri`: an `http://` or `https://` URL with a host.
struct JwksUri(Uri);

impl<'de> Deserialize<'de> for JwksUri {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse_jwks_uri(&s)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a `jwksUri`.
pub fn parse_jwks_uri(s: &str) -> Result<Uri, String> {
    if s.is_empty() || s.len() > MAX_JWKS_URI_LEN {
        return Err(format!(
            "url must be between 1 and {MAX_JWKS_URI_LEN} characters"
        ));
    }
    let uri: Uri = s.parse().map_err(|e| format!("invalid url {s:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("url must have scheme http:// or https://".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("url {s:?} has no host"));
    }
    Ok(uri)
}
