//! JSON Web Key Sets (RFC 7517) and JWS signature checks against them.
//!
//! A [`KeySet`] comes from a RequestAuthentication rule's inline `jwks` (parsed when the
//! configuration loads) or from the document its `jwksUri` serves ([`super::jwks`]). The
//! authenticate phase hands it a parsed token and gets Envoy's verdict: which keys are tried
//! (`kid` and `alg` must agree when both sides name one), and which status a failure reports.
//!
//! Supported keys: `RSA` (RS256/384/512, PS256/384/512), `EC` on P-256 and P-384 (ES256,
//! ES384), `OKP` Ed25519 (EdDSA) and `oct` (HS256/384/512). Keys of other types or curves are
//! skipped; a set without any usable key is invalid.

use std::fmt;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::JwtStatus;
use super::token::{Jwt, base64url_decode};

/// Why a JWKS document was rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The document is not a JSON object.
    #[error("Jwks is an invalid JSON: {0}")]
    InvalidJson(String),
    /// The object has no `keys` member.
    #[error("Jwks does not have [keys] field")]
    NoKeys,
    /// `keys` is not an array.
    #[error("[keys] in Jwks is not an array")]
    BadKeys,
    /// No key of the set can be used; the reason given is the first key's.
    #[error("Jwks doesn't have any valid public key ({0})")]
    NoValidKeys(String),
}

/// A parsed key set: the usable keys, in document order.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<String>,
}

/// One usable key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    material: Material,
}

/// A key with what it can verify.
#[derive(Clone)]
enum Material {
    Rsa(DecodingKey),
    Ec(Curve, DecodingKey),
    Ed25519(DecodingKey),
    Hmac(DecodingKey),
}

/// The elliptic curves supported for `EC` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// Length of an Ed25519 public key and of an Ed25519 signature.
const ED25519_KEY_LEN: usize = 32;
const ED25519_SIGNATURE_LEN: usize = 64;

impl KeySet {
    /// Parses a JWKS document. Keys that cannot be used are skipped (see [`KeySet::skipped`]);
    /// a document without a usable key is an error.
    pub fn parse(document: &str) -> Result<Self, JwksError> {
        let value: Value =
            serde_json::from_str(document).map_err(|e| JwksError::InvalidJson(e.to_string()))?;
        let Value::Object(root) = value else {
            return Err(JwksError::InvalidJson("not an object".into()));
        };
        let keys = match root.get("keys") {
            None => return Err(JwksError::NoKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(JwksError::BadKeys),
        };
        let mut set = KeySet {
            keys: Vec::new(),
            skipped: Vec::new(),
        };
        for (i, key) in keys.iter().enumerate() {
            match Key::parse(key) {
                Ok(key) => set.keys.push(key),
                Err(reason) => set.skipped.push(format!("keys[{i}]: {reason}")),
            }
        }
        if set.keys.is_empty() {
            let reason = set
                .skipped
                .first()
                .cloned()
                .unwrap_or_else(|| "[keys] is empty".to_owned());
            return Err(JwksError::NoValidKeys(reason));
        }
        Ok(set)
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Why each skipped key was skipped.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// The `kid`s of the usable keys (keys without one are not listed).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    /// Whether a token naming `kid` has a key to try: one with that `kid`, or one without any.
    pub fn has_key_for(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.kid.as_deref().is_none_or(|own| own == kid))
    }

    /// Checks the signature of `jwt`, as Envoy's `verifyJwtWithoutTimeChecking`: every key
    /// whose `kid` and `alg` do not contradict the token's is tried in order; the first that
    /// verifies wins. No candidate at all → [`JwtStatus::JwksKidAlgMismatch`]; candidates that
    /// all fail → [`JwtStatus::JwtVerificationFail`].
    pub fn verify(&self, jwt: &Jwt) -> Result<(), JwtStatus> {
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jwt.signature());
        let mut candidate = false;
        for key in &self.keys {
            if let (Some(token_kid), Some(key_kid)) = (jwt.kid(), key.kid.as_deref())
                && token_kid != key_kid
            {
                continue;
            }
            if key.alg.as_deref().is_some_and(|alg| alg != jwt.alg_name()) {
                continue;
            }
            candidate = true;
            let Some(decoding) = key.material.for_algorithm(jwt.alg()) else {
                continue;
            };
            if matches!(key.material, Material::Ed25519(_))
                && jwt.signature().len() != ED25519_SIGNATURE_LEN
            {
                return Err(JwtStatus::JwtEd25519SignatureWrongLength);
            }
            let verified = jsonwebtoken::crypto::verify(
                &signature,
                jwt.signing_input().as_bytes(),
                decoding,
                jwt.alg(),
            );
            if matches!(verified, Ok(true)) {
                return Ok(());
            }
        }
        Err(if candidate {
            JwtStatus::JwtVerificationFail
        } else {
            JwtStatus::JwksKidAlgMismatch
        })
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .field("kids", &self.kids().collect::<Vec<_>>())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Material {
    /// The key to verify `alg` with, when this key can (key type and curve agree).
    fn for_algorithm(&self, alg: Algorithm) -> Option<&DecodingKey> {
        use Algorithm::*;
        match (self, alg) {
            (Self::Rsa(key), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => Some(key),
            (Self::Ec(Curve::P256, key), ES256) | (Self::Ec(Curve::P384, key), ES384) => Some(key),
            (Self::Ed25519(key), EdDSA) => Some(key),
            (Self::Hmac(key), HS256 | HS384 | HS512) => Some(key),
            _ => None,
        }
    }
}

impl Key {
    fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(key) = value else {
            return Err("not an object".into());
        };
        let kty = match key.get("kty") {
            None => return Err("[kty] is missing in [keys]".into()),
            Some(Value::String(kty)) => kty.as_str(),
            Some(_) => return Err("[kty] is bad in [keys]".into()),
        };
        let kid = optional_string(key, "kid")?;
        let alg = optional_string(key, "alg")?;
        let material = match kty {
            "RSA" => rsa(key, alg.as_deref())?,
            "EC" => ec(key, alg.as_deref())?,
            "OKP" => okp(key, alg.as_deref())?,
            "oct" => oct(key, alg.as_deref())?,
            other => return Err(format!("[kty] {other:?} is not supported in [keys]")),
        };
        Ok(Key { kid, alg, material })
    }
}

fn optional_string(key: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match key.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("[{name}] field is not a string")),
    }
}

/// A required base64url member, decoded.
fn member(key: &Map<String, Value>, name: &str, kty: &str) -> Result<Vec<u8>, String> {
    match key.get(name) {
        None => Err(format!("[{name}] field is missing for an {kty} key")),
        Some(Value::String(s)) => base64url_decode(s)
            .ok_or_else(|| format!("[{name}] field is an invalid Base64url for an {kty} key")),
        Some(_) => Err(format!("[{name}] field is not string for an {kty} key")),
    }
}

fn rsa(key: &Map<String, Value>, alg: Option<&str>) -> Result<Material, String> {
    if alg.is_some_and(|a| !a.starts_with("RS") && !a.starts_with("PS")) {
        return Err("[alg] is not started with [RS] or [PS] for an RSA key".into());
    }
    let n = member(key, "n", "RSA")?;
    let e = member(key, "e", "RSA")?;
    if n.is_empty() || e.is_empty() {
        return Err("Jwks RSA [n] or [e] field is missing or has a parse error".into());
    }
    Ok(Material::Rsa(DecodingKey::from_rsa_raw_components(&n, &e)))
}

fn ec(key: &Map<String, Value>, alg: Option<&str>) -> Result<Material, String> {
    if alg.is_some_and(|a| !a.starts_with("ES")) {
        return Err("[alg] is not started with [ES] for an EC key".into());
    }
    let curve = match (optional_string(key, "crv")?.as_deref(), alg) {
        (Some("P-256"), None | Some("ES256")) | (None, None | Some("ES256")) => Curve::P256,
        (Some("P-384"), None | Some("ES384")) | (None, Some("ES384")) => Curve::P384,
        (Some("P-256" | "P-384"), Some(_)) => {
            return Err("[crv] field specified is not compatible with [alg] for an EC key".into());
        }
        _ => return Err("[crv] or [alg] field is not supported for an EC key".into()),
    };
    let x = member(key, "x", "EC")?;
    let y = member(key, "y", "EC")?;
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return Err("Jwks EC [x] and [y] fields have a parse error.".into());
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(Material::Ec(curve, DecodingKey::from_ec_der(&point)))
}

fn okp(key: &Map<String, Value>, alg: Option<&str>) -> Result<Material, String> {
    if alg.is_some_and(|a| a != "EdDSA") {
        return Err("[alg] is not [EdDSA] for an OKP key".into());
    }
    match key.get("crv") {
        None => return Err("[crv] field is missing for an OKP key".into()),
        Some(Value::String(crv)) if crv == "Ed25519" => {}
        Some(Value::String(_)) => return Err("[crv] field is not supported for an OKP key".into()),
        Some(_) => return Err("[crv] field is not string for an OKP key".into()),
    }
    let x = member(key, "x", "OKP")?;
    if x.len() != ED25519_KEY_LEN {
        return Err("Jwks OKP [x] field is wrong length.".into());
    }
    Ok(Material::Ed25519(DecodingKey::from_ed_der(&x)))
}

fn oct(key: &Map<String, Value>, alg: Option<&str>) -> Result<Material, String> {
    if alg.is_some_and(|a| !a.starts_with("HS")) {
        return Err("[alg] does not start with [HS] for an HMAC key".into());
    }
    let k = member(key, "k", "HMAC")?;
    if k.is_empty() {
        return Err("Jwks Oct key is an invalid Base64".into());
    }
    Ok(Material::Hmac(DecodingKey::from_secret(&k)))
}
