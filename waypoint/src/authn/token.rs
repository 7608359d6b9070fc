//! Finding tokens in a request and parsing them, as Envoy's `jwt_authn` extractor and
//! `jwt_verify_lib` do: where a rule looks (headers with an optional prefix, query parameters,
//! cookies; by default `Authorization: Bearer <token>` and `?access_token=`), how a located
//! token is removed before the request goes upstream, and the structural checks of a token
//! (three base64url parts, JSON header and payload, typed registered claims, time window).

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::JwtStatus;
use crate::route::{percent_decode, query_pairs};

/// The header prefix of the default location.
pub const BEARER_PREFIX: &str = "Bearer ";
/// The query parameter of the default location.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// base64url, padding optional (as `absl::WebSafeBase64Unescape`).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64url with or without padding.
pub fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    BASE64URL.decode(input).ok()
}

/// Where one rule looks for tokens, each list sorted and without duplicates (the order
/// Envoy's extractor visits them in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// Headers and the prefix before the token (empty: the whole value).
    pub headers: Vec<(HeaderName, String)>,
    /// Query parameters.
    pub params: Vec<String>,
    /// Cookies.
    pub cookies: Vec<String>,
}

impl Locations {
    /// The given locations; when all three are empty, the defaults
    /// (`Authorization: Bearer <token>` and `?access_token=`).
    pub fn new(
        mut headers: Vec<(HeaderName, String)>,
        mut params: Vec<String>,
        mut cookies: Vec<String>,
    ) -> Self {
        if headers.is_empty() && params.is_empty() && cookies.is_empty() {
            headers.push((http::header::AUTHORIZATION, BEARER_PREFIX.to_owned()));
            params.push(ACCESS_TOKEN_PARAM.to_owned());
        }
        headers.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        headers.dedup();
        params.sort();
        params.dedup();
        cookies.sort();
        cookies.dedup();
        Self {
            headers,
            params,
            cookies,
        }
    }
}

/// Where a token was found; what is removed when it is not forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A header (all its values are removed).
    Header(HeaderName),
    /// A query parameter (every occurrence is removed).
    Param(String),
    /// A cookie (left in place, as Envoy does).
    Cookie(String),
}

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    /// The token text.
    pub token: String,
    /// Where it was.
    pub source: TokenSource,
}

/// Every token `locations` find in a request: each value of each header (after its prefix,
/// which may appear anywhere in the value), the first value of each query parameter, the
/// first value of each cookie.
pub fn extract(locations: &Locations, headers: &HeaderMap, query: Option<&str>) -> Vec<FoundToken> {
    let mut found = Vec::new();
    for (name, prefix) in &locations.headers {
        for value in headers.get_all(name) {
            let value = String::from_utf8_lossy(value.as_bytes());
            let token = if prefix.is_empty() {
                value.into_owned()
            } else {
                let Some(at) = value.find(prefix.as_str()) else {
                    continue;
                };
                after_prefix(&value, at + prefix.len()).to_owned()
            };
            found.push(FoundToken {
                token,
                source: TokenSource::Header(name.clone()),
            });
        }
    }
    if !locations.params.is_empty()
        && let Some(query) = query
    {
        for param in &locations.params {
            if let Some(value) = query_pairs(query).find(|(k, _)| k == param).map(|(_, v)| v) {
                found.push(FoundToken {
                    token: value.into_owned(),
                    source: TokenSource::Param(param.clone()),
                });
            }
        }
    }
    for cookie in &locations.cookies {
        if let Some(value) = cookie_value(headers, cookie) {
            found.push(FoundToken {
                token: value,
                source: TokenSource::Cookie(cookie.clone()),
            });
        }
    }
    found
}

/// The token after a prefix ending at `from`: from the first base64url character or dot on;
/// the whole value when there is none (Envoy keeps it as is, and it fails to parse later).
fn after_prefix(value: &str, from: usize) -> &str {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match value.get(from..).and_then(|rest| rest.find(is_token_char)) {
        Some(start) => &value[from + start..],
        None => value,
    }
}

/// The first value of cookie `name` over all `Cookie` headers, without surrounding quotes.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            unquoted.to_owned()
        })
}

/// Removes a verified token from the request (unless the rule forwards it): the header, or
/// every occurrence of the query parameter. Cookies are left as they are.
pub fn remove(source: &TokenSource, headers: &mut HeaderMap, uri: &mut Uri) {
    match source {
        TokenSource::Header(name) => {
            headers.remove(name);
        }
        TokenSource::Param(param) => {
            if let Some(rewritten) = without_param(uri, param) {
                *uri = rewritten;
            }
        }
        TokenSource::Cookie(_) => {}
    }
}

/// `uri` without the query pairs named `param` (others kept as written); `None` when nothing
/// changes or the result would not be a valid URI.
fn without_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key) != param
        })
        .collect();
    let path = uri.path();
    let path_and_query = if kept.iter().all(|p| p.is_empty()) {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// The algorithms `jwt_verify_lib` implements that this proxy verifies too. ES512 (P-521) is
/// not available, so tokens using it are rejected as unsupported.
fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// A structurally valid token: its parts and the registered claims, typed.
#[derive(Debug, Clone)]
pub struct Jwt {
    alg: Algorithm,
    alg_name: String,
    kid: Option<String>,
    signing_input: String,
    payload_base64url: String,
    signature: Vec<u8>,
    /// `iss` (empty when absent).
    pub issuer: String,
    /// `sub` (empty when absent).
    pub subject: String,
    /// `aud`, a string or a list of strings.
    pub audiences: Vec<String>,
    /// `nbf` in Unix seconds (0 when absent).
    pub not_before: u64,
    /// `exp` in Unix seconds (0 when absent: no expiry).
    pub expires: u64,
    /// The whole payload.
    pub payload: Map<String, Value>,
}

impl Jwt {
    /// Parses `token`, checking what `jwt_verify_lib`'s `Jwt::parseFromString` checks, with its
    /// statuses.
    pub fn parse(token: &str) -> Result<Self, JwtStatus> {
        if token.bytes().filter(|&b| b == b'.').count() != 2 {
            return Err(JwtStatus::JwtBadFormat);
        }
        let parts: Vec<&str> = token.split('.').filter(|p| !p.is_empty()).collect();
        let [header_b64, payload_b64, signature_b64] = parts[..] else {
            return Err(JwtStatus::JwtBadFormat);
        };
        let header = json_object(header_b64).map_err(|bad_base64| {
            if bad_base64 {
                JwtStatus::JwtHeaderParseErrorBadBase64
            } else {
                JwtStatus::JwtHeaderParseErrorBadJson
            }
        })?;
        let alg_name = match header.get("alg") {
            Some(Value::String(alg)) => alg.clone(),
            _ => return Err(JwtStatus::JwtHeaderBadAlg),
        };
        let alg = algorithm(&alg_name).ok_or(JwtStatus::JwtHeaderNotImplementedAlg)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(JwtStatus::JwtHeaderBadKid),
        };
        let payload = json_object(payload_b64).map_err(|bad_base64| {
            if bad_base64 {
                JwtStatus::JwtPayloadParseErrorBadBase64
            } else {
                JwtStatus::JwtPayloadParseErrorBadJson
            }
        })?;
        let string_claim = |name: &str, status: JwtStatus| match payload.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(status),
        };
        let issuer = string_claim("iss", JwtStatus::JwtPayloadParseErrorIssNotString)?;
        let subject = string_claim("sub", JwtStatus::JwtPayloadParseErrorSubNotString)?;
        time_claim(
            &payload,
            "iat",
            JwtStatus::JwtPayloadParseErrorIatNotInteger,
            JwtStatus::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let not_before = time_claim(
            &payload,
            "nbf",
            JwtStatus::JwtPayloadParseErrorNbfNotInteger,
            JwtStatus::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let expires = time_claim(
            &payload,
            "exp",
            JwtStatus::JwtPayloadParseErrorExpNotInteger,
            JwtStatus::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string_claim("jti", JwtStatus::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(JwtStatus::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(JwtStatus::JwtPayloadParseErrorAudNotString),
        };
        let signature =
            base64url_decode(signature_b64).ok_or(JwtStatus::JwtSignatureParseErrorBadBase64)?;
        Ok(Self {
            alg,
            alg_name,
            kid,
            signing_input: format!("{header_b64}.{payload_b64}"),
            payload_base64url: payload_b64.to_owned(),
            signature,
            issuer,
            subject,
            audiences,
            not_before,
            expires,
            payload,
        })
    }

    /// The signature algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The `alg` header as written.
    pub fn alg_name(&self) -> &str {
        &self.alg_name
    }

    /// The `kid` header.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// `<header>.<payload>` as received: what the signature covers.
    pub fn signing_input(&self) -> &str {
        &self.signing_input
    }

    /// The payload part as received (base64url, what `outputPayloadToHeader` forwards).
    pub fn payload_base64url(&self) -> &str {
        &self.payload_base64url
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Checks `nbf` and `exp` at `now` (Unix seconds), allowing `skew` seconds either way.
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), JwtStatus> {
        if now.saturating_add(skew) < self.not_before {
            return Err(JwtStatus::JwtNotYetValid);
        }
        if self.expires != 0 && now > self.expires.saturating_add(skew) {
            return Err(JwtStatus::JwtExpired);
        }
        Ok(())
    }
}

/// Decodes a base64url JSON object; `Err(true)` for bad base64, `Err(false)` for bad JSON.
fn json_object(part: &str) -> Result<Map<String, Value>, bool> {
    let bytes = base64url_decode(part).ok_or(true)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(false),
    }
}

/// A numeric date claim: absent → 0; not a number → `wrong_type`; negative or beyond 64 bits
/// → `out_of_range`; fractions are truncated.
fn time_claim(
    payload: &Map<String, Value>,
    name: &str,
    wrong_type: JwtStatus,
    out_of_range: JwtStatus,
) -> Result<u64, JwtStatus> {
    let Some(value) = payload.get(name) else {
        return Ok(0);
    };
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    if value.is_i64() {
        return Err(out_of_range);
    }
    let n = value.as_f64().ok_or(wrong_type)?;
    // Below 2^64 after the check, so the truncating cast is exact for the integer part.
    if !(0.0..18_446_744_073_709_551_615.0).contains(&n) {
        return Err(out_of_range);
    }
    Ok(n as u64)
}
