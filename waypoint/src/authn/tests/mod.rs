//! Tests of request authentication: keys generated at test time, tokens signed here with
//! aws-lc-rs directly (not with the crate under test's verifier library).

mod decision;
mod jwks;
mod policy;

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::{KeySet, KeySource, Provider, ProviderSettings, RuleOrigin};

/// The issuer of most tests.
pub(crate) const ISSUER: &str = "https://issuer.example";

/// A signing key of one type.
pub(crate) enum Signer {
    Ec256(EcdsaKeyPair),
    Ec384(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(Arc<RsaKeyPair>),
    Hmac(Vec<u8>),
}

/// A test key: its signer and the `kid` its JWK carries.
pub(crate) struct TestKey {
    pub kid: Option<String>,
    pub signer: Signer,
}

/// One RSA key per test binary: generating RSA keys is slow.
fn rsa_key() -> Arc<RsaKeyPair> {
    static KEY: OnceLock<Arc<RsaKeyPair>> = OnceLock::new();
    Arc::clone(KEY.get_or_init(|| Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())))
}

impl TestKey {
    pub fn ec256(kid: &str) -> Self {
        Self::with(
            kid,
            Signer::Ec256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()),
        )
    }

    pub fn ec384(kid: &str) -> Self {
        Self::with(
            kid,
            Signer::Ec384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap()),
        )
    }

    pub fn ed25519(kid: &str) -> Self {
        Self::with(kid, Signer::Ed25519(Ed25519KeyPair::generate().unwrap()))
    }

    pub fn rsa(kid: &str) -> Self {
        Self::with(kid, Signer::Rsa(rsa_key()))
    }

    pub fn hmac(kid: &str) -> Self {
        Self::with(
            kid,
            Signer::Hmac(b"a shared secret of 32 bytes!!!!!".to_vec()),
        )
    }

    fn with(kid: &str, signer: Signer) -> Self {
        Self {
            kid: (!kid.is_empty()).then(|| kid.to_owned()),
            signer,
        }
    }

    /// The algorithm this key signs with by default.
    pub fn default_alg(&self) -> &'static str {
        match self.signer {
            Signer::Ec256(_) => "ES256",
            Signer::Ec384(_) => "ES384",
            Signer::Ed25519(_) => "EdDSA",
            Signer::Rsa(_) => "RS256",
            Signer::Hmac(_) => "HS256",
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.signer {
            Signer::Ec256(k) | Signer::Ec384(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "crv": crv, "x": b64(&point[1..=len]), "y": b64(&point[1 + len..])})
            }
            Signer::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
            Signer::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Hmac(secret) => json!({"kty": "oct", "k": b64(secret)}),
        };
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// A token with `claims`, signed with `alg` (the header names this key's `kid`).
    pub fn sign_with(&self, alg: &str, claims: &Value) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        sign_raw(self, &header, claims)
    }

    /// A token with `claims`, signed with the default algorithm.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(self.default_alg(), claims)
    }
}

/// Signs `header.claims` with `key` (whatever `alg` the header says).
pub(crate) fn sign_raw(key: &TestKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = SystemRandom::new();
    let signature = match &key.signer {
        Signer::Ec256(k) | Signer::Ec384(k) => {
            k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        }
        Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        Signer::Rsa(k) => {
            let mut sig = vec![0; k.public_modulus_len()];
            let padding: &dyn aws_lc_rs::signature::RsaEncoding = if header["alg"] == "PS256" {
                &RSA_PSS_SHA256
            } else {
                &RSA_PKCS1_SHA256
            };
            k.sign(padding, &rng, input.as_bytes(), &mut sig).unwrap();
            sig
        }
        Signer::Hmac(secret) => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
            aws_lc_rs::hmac::sign(&key, input.as_bytes())
                .as_ref()
                .to_vec()
        }
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A JWKS document of `keys`.
pub(crate) fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// Now, in Unix seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour, for `sub`.
pub(crate) fn claims(sub: &str) -> Value {
    let now = now();
    json!({"iss": ISSUER, "sub": sub, "aud": "api", "iat": now, "exp": now + 3600})
}

/// A provider with inline keys.
pub(crate) fn provider(settings: ProviderSettings, keys: &[&TestKey]) -> Arc<Provider> {
    let set = KeySet::parse(&jwks(keys)).unwrap();
    Arc::new(Provider::new(
        settings,
        KeySource::Inline(Arc::new(set)),
        RuleOrigin {
            policy: "default/test".into(),
            index: 0,
        },
    ))
}

/// Settings for `ISSUER` with default locations.
pub(crate) fn settings() -> ProviderSettings {
    ProviderSettings {
        issuer: ISSUER.into(),
        ..ProviderSettings::default()
    }
}
