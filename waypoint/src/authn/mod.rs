//! Request authentication: the JWT checks of Istio's `RequestAuthentication`, Envoy's
//! `jwt_authn` filter on an Istio waypoint.
//!
//! Where it sits: the inbound VIP listener runs the **authenticate** phase first for every
//! HTTP request (after the request id, before routing; Istio's filter order puts `jwt_authn`
//! before RBAC and the router). [`policy`] compiles the RequestAuthentications attached to the
//! waypoint into one ordered [`Provider`] list per service; [`authenticate`] runs that list
//! against the request and either hands the next phases an [`Authenticated`] request
//! principal (attached to the request's extensions), lets the request through
//! unauthenticated (no token: AuthorizationPolicy decides later), or denies it with Envoy's
//! local reply ([`Denial`]).
//!
//! # Semantics (Istio's configuration of `jwt_authn`)
//!
//! Istio turns the rules `P1..Pn` (sorted by issuer) into the requirement
//! `any(P1, .., Pn, all(any(P1, allow_missing), .., any(Pn, allow_missing)))`:
//!
//! - each rule looks for tokens in its own locations ([`token::Locations`]; by default
//!   `Authorization: Bearer <token>` and the `access_token` query parameter);
//! - a rule is *satisfied* when it finds at least one token and every token it finds is
//!   valid for it: issuer equal to the rule's (else `Jwt issuer is not configured`), inside
//!   its `nbf`/`exp` window with [`CLOCK_SKEW_SECONDS`] of tolerance, an allowed audience when
//!   the rule lists audiences, and a signature that one of the rule's keys verifies;
//! - the request passes authenticated when some rule is satisfied (the first, in order,
//!   provides the principal and the header changes); it passes unauthenticated when no rule
//!   finds a token (a rule with `presence: REQUIRED` must find one); otherwise it is denied
//!   with the status of the first rule, in order, that found a bad token.
//!
//! A denial is Envoy's: `401` (`403` for a disallowed audience) with the status text as body,
//! `www-authenticate: Bearer realm="<scheme>://<host><path>", error="invalid_token"` and the
//! response code details `jwt_authn_access_denied{<status_with_underscores>}`. Before any
//! check, headers named by any rule's `outputPayloadToHeader` or `outputClaimToHeaders` are
//! removed from the request, so a client cannot forge them. CORS preflights are not checked
//! (Istio sets `bypass_cors_preflight`).
//!
//! Keys come from an inline `jwks` or from `jwksUri` through [`jwks`], which fails closed:
//! with no key set (never fetched, or unusable for too long) tokens of that rule are denied
//! with `Jwks remote fetch is failed`.

pub mod jwks;
pub mod keys;
pub mod policy;
pub mod token;

use std::sync::{Arc, OnceLock};

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;

pub use self::jwks::{JwksLocation, JwksRegistry, JwksSettings, JwksStatus, RemoteJwks};
pub use self::keys::{JwksError, KeySet};
pub use self::policy::{AuthnContext, AuthnTable};
use self::token::{FoundToken, Jwt, Locations};

/// Tolerance for `exp` and `nbf`: Envoy's default `clock_skew_seconds` (Istio does not set it).
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// The claims whose string values Istio splits on spaces for authorization (as
/// `spaceDelimitedClaims` does for others): `scope` and `permission`.
pub const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["permission", "scope"];

/// The prefix of the response code details of a denial.
const DETAILS_PREFIX: &str = "jwt_authn_access_denied";
/// Envoy truncates the path in the `www-authenticate` realm to this many bytes.
const MAX_REALM_PATH: usize = 256;

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident => $message:literal,)*) => {
        /// Why a token was rejected: `jwt_verify_lib`'s statuses, with Envoy's texts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
        #[non_exhaustive]
        pub enum JwtStatus {
            $($(#[$doc])* #[error($message)] $name,)*
        }

        impl JwtStatus {
            /// Every status, in declaration order.
            pub const ALL: &'static [JwtStatus] = &[$(Self::$name),*];

            /// Envoy's text for the status: the body of the denial.
            pub fn message(self) -> &'static str {
                match self {
                    $(Self::$name => $message,)*
                }
            }
        }
    };
}

statuses! {
    /// No token where a rule requires one.
    JwtMissed => "Jwt is missing",
    /// `nbf` is in the future (beyond the clock skew).
    JwtNotYetValid => "Jwt not yet valid",
    /// `exp` is in the past (beyond the clock skew).
    JwtExpired => "Jwt is expired",
    /// Not three non-empty parts separated by two dots.
    JwtBadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    /// The header is not base64url.
    JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
    /// The header is not a JSON object.
    JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
    /// `alg` is absent or not a string.
    JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
    /// `alg` is not a supported algorithm (`none` never is).
    JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
    /// `kid` is not a string.
    JwtHeaderBadKid => "Jwt header [kid] field is not a string",
    /// The payload is not base64url.
    JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
    /// An Ed25519 signature that is not 64 bytes.
    JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
    /// The payload is not a JSON object.
    JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
    /// `iss` is not a string.
    JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
    /// `sub` is not a string.
    JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
    /// `iat` is not a number.
    JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
    /// `iat` is negative or too large.
    JwtPayloadParseErrorIatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
    /// `nbf` is not a number.
    JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
    /// `nbf` is negative or too large.
    JwtPayloadParseErrorNbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
    /// `exp` is not a number.
    JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
    /// `exp` is negative or too large.
    JwtPayloadParseErrorExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
    /// `jti` is not a string.
    JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
    /// `aud` is neither a string nor a list of strings.
    JwtPayloadParseErrorAudNotString => "Jwt payload [aud] field is not a string or string list",
    /// The signature is not base64url.
    JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
    /// The token's issuer is not the issuer of the rule that found it.
    JwtUnknownIssuer => "Jwt issuer is not configured",
    /// None of the token's audiences is allowed (answered with 403).
    JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
    /// Keys matched the token but none verified its signature.
    JwtVerificationFail => "Jwt verification fails",
    /// The rule has no usable key.
    JwksNoValidKeys => "Jwks doesn't have any valid public key",
    /// No key of the set has the token's `kid` and `alg`.
    JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
    /// The rule's `jwksUri` has no usable key set (never fetched, or failing for too long).
    JwksFetchFail => "Jwks remote fetch is failed",
}

impl JwtStatus {
    /// The response code details Envoy logs for the denial:
    /// `jwt_authn_access_denied{Jwt_is_expired}`.
    pub fn details(self) -> &'static str {
        static DETAILS: OnceLock<Vec<String>> = OnceLock::new();
        let details = DETAILS.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|s| format!("{DETAILS_PREFIX}{{{}}}", s.message().replace(' ', "_")))
                .collect()
        });
        let index = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        details.get(index).map_or(DETAILS_PREFIX, String::as_str)
    }

    /// The status of the denial: 403 for a disallowed audience, else 401.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::JwtAudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The authenticated request principal, for the phases after authentication (authorization
/// reads it from the request's extensions) and for logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// Istio's request principal `<iss>/<sub>` (`request.auth.principal`).
    pub principal: String,
    /// `iss`.
    pub issuer: String,
    /// `sub` (empty when absent).
    pub subject: String,
    /// `aud` (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp`, the authorized presenter (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// The payload (`request.auth.claims`), with the space-delimited claims (`scope`,
    /// `permission` and the rule's `spaceDelimitedClaims`) split into lists of strings as
    /// Istio's authorization sees them.
    pub claims: Value,
}

impl Authenticated {
    fn new(jwt: &Jwt, space_delimited: &[String]) -> Self {
        let mut claims = jwt.payload.clone();
        for name in space_delimited {
            if let Some(Value::String(s)) = claims.get(name) {
                let list = s
                    .split(' ')
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_owned()))
                    .collect();
                claims.insert(name.clone(), Value::Array(list));
            }
        }
        let presenter = jwt
            .payload
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            principal: format!("{}/{}", jwt.issuer, jwt.subject),
            issuer: jwt.issuer.clone(),
            subject: jwt.subject.clone(),
            audiences: jwt.audiences.clone(),
            presenter,
            claims: Value::Object(claims),
        }
    }
}

/// Where a rule's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `jwks`, parsed when the configuration was loaded.
    Inline(Arc<KeySet>),
    /// `jwksUri` (or OpenID Connect discovery), fetched and cached.
    Remote(Arc<RemoteJwks>),
    /// No way to get keys (no `jwks` nor `jwksUri`, and an issuer that is not a URL).
    Unavailable,
}

impl KeySource {
    /// The keys to check a token naming `kid` with. A remote set may be fetched first (never
    /// longer than the rule's timeout).
    pub async fn keys(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwtStatus> {
        match self {
            Self::Inline(keys) => Ok(Arc::clone(keys)),
            Self::Remote(remote) => remote.keys(kid).await,
            Self::Unavailable => Err(JwtStatus::JwksNoValidKeys),
        }
    }
}

/// Identifies the rule a provider comes from: its object and index in `spec.jwtRules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOrigin {
    /// `namespace/name` of the RequestAuthentication.
    pub policy: String,
    /// The index of the rule.
    pub index: usize,
}

/// One compiled `jwtRules` entry: Envoy's `JwtProvider`.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The issuer tokens must name.
    pub issuer: String,
    /// Allowed audiences, normalised (scheme and trailing slash removed); empty = any.
    audiences: Vec<String>,
    /// Where tokens are looked for.
    pub locations: Locations,
    /// `forwardOriginalToken`: keep the token in the request.
    pub forward: bool,
    /// `outputPayloadToHeader`.
    pub payload_header: Option<HeaderName>,
    /// `outputClaimToHeaders`: header and claim (nested claims with `.`).
    pub claim_headers: Vec<(HeaderName, String)>,
    /// `presence: REQUIRED`: a request without a token for this rule is denied.
    pub required: bool,
    /// Claims whose string values become lists in [`Authenticated::claims`].
    space_delimited: Vec<String>,
    /// The keys.
    pub keys: KeySource,
    /// Where the rule comes from.
    pub origin: RuleOrigin,
}

/// A [`Provider`] without its keys and origin, as configured.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// The issuer.
    pub issuer: String,
    /// Allowed audiences (as configured).
    pub audiences: Vec<String>,
    /// Header locations (name, prefix).
    pub headers: Vec<(HeaderName, String)>,
    /// Query parameter locations.
    pub params: Vec<String>,
    /// Cookie locations.
    pub cookies: Vec<String>,
    /// `forwardOriginalToken`.
    pub forward: bool,
    /// `outputPayloadToHeader`.
    pub payload_header: Option<HeaderName>,
    /// `outputClaimToHeaders`.
    pub claim_headers: Vec<(HeaderName, String)>,
    /// `presence: REQUIRED`.
    pub required: bool,
    /// `spaceDelimitedClaims` (added to [`DEFAULT_SPACE_DELIMITED_CLAIMS`]).
    pub space_delimited: Vec<String>,
}

impl Provider {
    /// A provider from its settings, keys and origin.
    pub fn new(settings: ProviderSettings, keys: KeySource, origin: RuleOrigin) -> Self {
        let mut space_delimited: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(settings.space_delimited)
            .collect();
        space_delimited.sort();
        space_delimited.dedup();
        Self {
            issuer: settings.issuer,
            audiences: settings
                .audiences
                .iter()
                .map(|a| normalize_audience(a).to_owned())
                .collect(),
            locations: Locations::new(settings.headers, settings.params, settings.cookies),
            forward: settings.forward,
            payload_header: settings.payload_header,
            claim_headers: settings.claim_headers,
            required: settings.required,
            space_delimited,
            keys,
            origin,
        }
    }

    /// Whether one of `audiences` is allowed (all are when the rule lists none).
    pub fn audience_allowed(&self, audiences: &[String]) -> bool {
        self.audiences.is_empty()
            || audiences
                .iter()
                .any(|a| self.audiences.iter().any(|c| c == normalize_audience(a)))
    }

    /// Checks every token found for this rule, last found first (as Envoy does); returns them
    /// parsed, in the order found.
    async fn verify_all(&self, tokens: &[FoundToken], now: u64) -> Result<Vec<Jwt>, JwtStatus> {
        let mut verified = Vec::with_capacity(tokens.len());
        for found in tokens.iter().rev() {
            let jwt = Jwt::parse(&found.token)?;
            if !self.issuer.is_empty() && jwt.issuer != self.issuer {
                return Err(JwtStatus::JwtUnknownIssuer);
            }
            jwt.check_time(now, CLOCK_SKEW_SECONDS)?;
            if !self.audience_allowed(&jwt.audiences) {
                return Err(JwtStatus::JwtAudienceNotAllowed);
            }
            let keys = self.keys.keys(jwt.kid()).await?;
            keys.verify(&jwt)?;
            verified.push(jwt);
        }
        verified.reverse();
        Ok(verified)
    }

    /// The request changes for verified tokens: the payload and claim headers, and the token
    /// removed unless forwarded. Returns the principal of the first token (`None` only for an
    /// empty list, which is never verified).
    fn accept(
        &self,
        jwts: &[Jwt],
        tokens: &[FoundToken],
        parts: &mut Parts,
    ) -> Option<Authenticated> {
        for (jwt, found) in jwts.iter().zip(tokens) {
            if let Some(header) = &self.payload_header
                && let Ok(value) = HeaderValue::from_str(jwt.payload_base64url())
            {
                parts.headers.append(header.clone(), value);
            }
            for (header, claim) in &self.claim_headers {
                if let Some(value) = claim_header_value(&jwt.payload, claim) {
                    parts.headers.append(header.clone(), value);
                }
            }
            if !self.forward {
                token::remove(&found.source, &mut parts.headers, &mut parts.uri);
            }
        }
        jwts.first()
            .map(|jwt| Authenticated::new(jwt, &self.space_delimited))
    }
}

/// `aud` as Envoy compares it: without an `http://` or `https://` scheme and one trailing
/// slash.
fn normalize_audience(audience: &str) -> &str {
    let rest = audience
        .strip_prefix("http://")
        .or_else(|| audience.strip_prefix("https://"))
        .unwrap_or(audience);
    rest.strip_suffix('/').unwrap_or(rest)
}

/// The header value of claim `path` (`a.b` walks into objects): strings as they are, whole
/// non-negative numbers as integers, other numbers with six decimals, booleans as
/// `true`/`false`; nothing for other types, empty strings or values a header cannot carry.
fn claim_header_value(payload: &serde_json::Map<String, Value>, path: &str) -> Option<HeaderValue> {
    let mut segments = path.split('.');
    let mut value = payload.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match n.as_u64() {
            Some(u) => u.to_string(),
            None => format!("{:.6}", n.as_f64()?),
        },
        _ => return None,
    };
    if text.is_empty() {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_cors_preflight(parts: &Parts) -> bool {
    let present = |name: HeaderName| parts.headers.get(name).is_some_and(|v| !v.is_empty());
    parts.method == Method::OPTIONS
        && present(http::header::ORIGIN)
        && present(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Authenticates a request against `providers` (one service's, in order) at `now` (Unix
/// seconds). See the module documentation for the semantics.
///
/// `Ok(Some(_))`: a rule was satisfied and the request was changed accordingly (token removed
/// unless forwarded, output headers added). `Ok(None)`: no token, the request goes on
/// unauthenticated. `Err(status)`: the request is denied ([`Denial::new`]).
pub async fn authenticate(
    providers: &[Arc<Provider>],
    parts: &mut Parts,
    now: u64,
) -> Result<Option<Authenticated>, JwtStatus> {
    if providers.is_empty() || is_cors_preflight(parts) {
        return Ok(None);
    }
    for provider in providers {
        sanitize(provider, &mut parts.headers);
    }
    let found: Vec<Vec<FoundToken>> = providers
        .iter()
        .map(|p| token::extract(&p.locations, &parts.headers, parts.uri.query()))
        .collect();
    let mut failures: Vec<Option<JwtStatus>> = vec![None; providers.len()];
    for ((provider, tokens), failure) in providers.iter().zip(&found).zip(&mut failures) {
        if tokens.is_empty() {
            continue;
        }
        match provider.verify_all(tokens, now).await {
            Ok(jwts) => {
                if let Some(authenticated) = provider.accept(&jwts, tokens, parts) {
                    return Ok(Some(authenticated));
                }
            }
            Err(status) => *failure = Some(status),
        }
    }
    for ((provider, tokens), failure) in providers.iter().zip(&found).zip(failures) {
        if let Some(status) = failure {
            return Err(status);
        }
        if tokens.is_empty() && provider.required {
            return Err(JwtStatus::JwtMissed);
        }
    }
    Ok(None)
}

/// Removes the headers a rule outputs, so only the waypoint sets them.
fn sanitize(provider: &Provider, headers: &mut HeaderMap) {
    if let Some(header) = &provider.payload_header {
        headers.remove(header);
    }
    for (header, _) in &provider.claim_headers {
        headers.remove(header);
    }
}

/// Envoy's local reply for a denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 401, or 403 for a disallowed audience.
    pub status: StatusCode,
    /// The body: the status text (`Jwt is expired`).
    pub body: &'static str,
    /// `%RESPONSE_CODE_DETAILS%`: `jwt_authn_access_denied{Jwt_is_expired}`.
    pub details: &'static str,
    /// `www-authenticate`: `Bearer realm="<uri>"`, with `, error="invalid_token"` unless the
    /// token is missing.
    pub www_authenticate: Option<HeaderValue>,
}

impl Denial {
    /// The reply for `status` to a request to `scheme://authority` + `path_and_query`.
    pub fn new(status: JwtStatus, scheme: &str, authority: &str, path_and_query: &str) -> Self {
        let mut end = path_and_query.len().min(MAX_REALM_PATH);
        while !path_and_query.is_char_boundary(end) {
            end -= 1;
        }
        let mut value = format!(
            "Bearer realm=\"{scheme}://{authority}{}\"",
            &path_and_query[..end]
        );
        if status != JwtStatus::JwtMissed {
            value.push_str(", error=\"invalid_token\"");
        }
        Self {
            status: status.http_status(),
            body: status.message(),
            details: status.details(),
            www_authenticate: HeaderValue::from_str(&value).ok(),
        }
    }
}

#[cfg(test)]
mod tests;
