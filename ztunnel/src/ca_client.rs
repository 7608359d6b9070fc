//! Workload certificates from Istio's CA (`istio.v1.auth.IstioCertificateService`).
//!
//! # Where it sits
//!
//! The [`crate::identity::IdentityManager`] asks its [`CertificateSource`] for a certificate
//! whenever an identity is first needed and again at half-life; in a cluster that source is a
//! [`CaClient`]. For each request it generates a fresh ECDSA P-256 key, sends a CSR whose only
//! SAN is the SPIFFE identity (`validity_duration` = the requested TTL) to `CreateCertificate`
//! over the control-plane channel, [`crate::xds::channel`] (TLS, `authorization: Bearer
//! <token>`, `clusterid`), and in shared mode adds the request metadata
//! `ImpersonatedIdentity: <spiffe id>` so istiod checks that a workload of that identity runs on
//! this node.
//!
//! The returned chain (leaf first, root last) is checked before it can be installed: the leaf
//! must carry exactly the requested identity, the chain must verify to the trust roots, and the
//! leaf's key must be the CSR's. Anything else is a [`CaError`] and nothing is installed; the
//! manager keeps serving the current certificate and retries with backoff.
//!
//! # Limits
//! [`REQUEST_TIMEOUT`] per call (connecting included), [`MAX_RESPONSE_SIZE`] per response,
//! [`MAX_CHAIN_LEN`] certificates per chain, [`MAX_CONCURRENT_REQUESTS`] calls in flight.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hbone::cert::CertError;
use hbone::{Identity, WorkloadCertificate};
use prost_types::value::Kind;
use proto::istio::v1::auth::IstioCertificateRequest;
use proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::{Mutex, Semaphore};

use crate::config::{ConfigError, Env};
use crate::identity::{CertificateSource, IssueFuture};
use crate::xds::channel::{self, Channel, ChannelError, ControlPlane, RootCert};

/// Longest time one certificate request may take, connecting included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted from the CA.
pub const MAX_RESPONSE_SIZE: usize = 1024 * 1024;
/// Most certificates accepted in a returned chain.
pub const MAX_CHAIN_LEN: usize = 8;
/// Most certificate requests in flight at once (as upstream).
pub const MAX_CONCURRENT_REQUESTS: usize = 8;
/// The request metadata key naming the identity requested on a workload's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Settings of the CA client.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// The CA (istiod) and how to authenticate to it.
    pub control_plane: ControlPlane,
    /// Roots that issued chains must verify to (by default the same as `CA_ROOT_CA`: istiod's
    /// serving certificate and workload certificates share the mesh root).
    pub trust_roots: RootCert,
    /// Ask for identities on behalf of workloads (`ImpersonatedIdentity`); on in shared mode.
    pub impersonate: bool,
}

impl CaClientConfig {
    /// Reads the settings with upstream's variable names; `Ok(None)` when no remote CA is used:
    /// `FAKE_CA=true`, `CA_ADDRESS` set to the empty string, or `CA_ADDRESS` unset outside
    /// Kubernetes (`KUBERNETES_SERVICE_HOST` unset; upstream would dial `https://localhost:15012`).
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `CA_ADDRESS` | istiod's address | `https://istiod.istio-system.svc:15012` in Kubernetes |
    /// | `CA_ROOT_CA` | PEM file (or inline PEM) of the root | `./var/run/secrets/istio/root-cert.pem` |
    /// | `ALT_CA_HOSTNAME` | server name verified instead of the address's host | — |
    /// | `AUTH_TOKEN` | token file (or the token itself) | `./var/run/secrets/tokens/istio-token` if present |
    /// | `ISTIO_META_CLUSTER_ID`, `CLUSTER_ID` | sent as `clusterid` | `Kubernetes` |
    /// | `PROXY_MODE` | `shared` (impersonate) or `dedicated` | `shared` |
    /// | `CA_HEADER_<name>` | extra metadata, see [`CaClientConfig::with_prefixed_vars`] | — |
    pub fn from_env(env: &impl Env) -> Result<Option<Self>, ConfigError> {
        if channel::var(env, "FAKE_CA").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let Some(address) = channel::address_from_env(env, "CA_ADDRESS")? else {
            return Ok(None);
        };
        let root_cert = channel::root_cert_from_env(env, "CA_ROOT_CA")?;
        let impersonate = match channel::var(env, "PROXY_MODE")
            .map(|m| m.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("shared") => true,
            Some("dedicated") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "PROXY_MODE",
                    value: other.to_string(),
                    reason: "expected shared or dedicated".into(),
                });
            }
        };
        Ok(Some(Self {
            control_plane: ControlPlane {
                address,
                root_cert: root_cert.clone(),
                alt_hostname: channel::var(env, "ALT_CA_HOSTNAME"),
                token: channel::token_from_env(env),
                cluster_id: channel::cluster_id_from_env(env),
                headers: Vec::new(),
            },
            trust_roots: root_cert,
            impersonate,
        }))
    }

    /// Adds `CA_HEADER_<name>` variables (e.g. from `std::env::vars()`) as request metadata.
    pub fn with_prefixed_vars(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        self.control_plane.headers = channel::headers_from_vars("CA_HEADER_", vars)?;
        Ok(self)
    }
}

/// Why a certificate could not be obtained from the CA.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA could not be reached or the call not authenticated (the trust roots could not be
    /// loaded included).
    #[error("CA unreachable: {0}")]
    Channel(#[from] ChannelError),
    /// The CA answered with an error.
    #[error("CA refused the request: {}: {}", .0.code(), .0.message())]
    Status(#[source] tonic::Status),
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("CA did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The CSR could not be generated.
    #[error("cannot generate the CSR: {0}")]
    Csr(#[source] rcgen::Error),
    /// The response holds no certificate.
    #[error("CA returned an empty certificate chain")]
    EmptyChain,
    /// The response holds more than [`MAX_CHAIN_LEN`] certificates.
    #[error("CA returned {0} certificates, at most {MAX_CHAIN_LEN} are accepted")]
    ChainTooLong(usize),
    /// A returned certificate is not valid PEM / X.509.
    #[error("CA returned an unparsable certificate: {0}")]
    InvalidCertificate(#[source] CertError),
    /// The leaf does not name exactly one valid SPIFFE identity.
    #[error("issued leaf has no usable identity: {0}")]
    LeafIdentity(#[source] CertError),
    /// The leaf names another identity than the one requested.
    #[error("issued leaf is for {got}, requested {requested}")]
    IdentityMismatch {
        /// The identity requested.
        requested: Identity,
        /// The identity in the leaf.
        got: Identity,
    },
    /// The chain does not verify to the trust roots.
    #[error("issued chain does not verify to the trust roots: {0}")]
    UntrustedChain(#[source] rustls::Error),
    /// The leaf's key is not the one the CSR was made with.
    #[error("issued leaf does not carry the CSR's public key")]
    KeyMismatch,
    /// The certificate could not be loaded for use.
    #[error("issued certificate is unusable: {0}")]
    Unusable(#[source] CertError),
}

impl CaError {
    /// The closest [`CertError`], for [`CertificateSource`] (which speaks `CertError`). Errors
    /// without a counterpart (unreachable CA, refusals, timeouts) become [`CertError::Io`] with
    /// the CA address as the path and this error as the source, so the message stays specific.
    pub fn into_cert_error(self, ca: &str) -> CertError {
        let kind = match &self {
            Self::IdentityMismatch { requested, got } => {
                return CertError::IdentityChanged {
                    expected: requested.clone(),
                    got: got.clone(),
                };
            }
            Self::UntrustedChain(e) => return CertError::ChainInvalid(e.clone()),
            Self::KeyMismatch => return CertError::KeyMismatch,
            Self::Timeout => std::io::ErrorKind::TimedOut,
            Self::Channel(ChannelError::Connect { source, .. }) => source.kind(),
            _ => std::io::ErrorKind::Other,
        };
        match self {
            Self::InvalidCertificate(e) | Self::LeafIdentity(e) | Self::Unusable(e) => e,
            Self::Csr(e) => CertError::Rcgen(e),
            other => CertError::Io {
                path: PathBuf::from(ca),
                source: std::io::Error::new(kind, other),
            },
        }
    }
}

/// Istio CA client; a [`CertificateSource`] for the [`crate::identity::IdentityManager`].
#[derive(Debug)]
pub struct CaClient {
    config: CaClientConfig,
    /// The current connection, reused until it closes (or a call fails).
    channel: Mutex<Option<Channel>>,
    /// Bounds the calls in flight.
    permits: Semaphore,
}

impl CaClient {
    /// Creates a client; it connects on the first request.
    pub fn new(config: CaClientConfig) -> Self {
        Self {
            config,
            channel: Mutex::new(None),
            permits: Semaphore::new(MAX_CONCURRENT_REQUESTS),
        }
    }

    /// Requests a certificate for `id` valid for `ttl` and verifies it (module docs).
    pub async fn fetch(
        &self,
        id: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CaError> {
        // Never closed, so acquiring only waits.
        let _permit = self.permits.acquire().await;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Csr)?;
        let csr = csr_pem(id, &key)?;
        let request = IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: self.config.impersonate.then(|| prost_types::Struct {
                fields: BTreeMap::from([(
                    IMPERSONATED_IDENTITY.to_string(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue(id.to_string())),
                    },
                )]),
            }),
        };
        let chain = tokio::time::timeout(REQUEST_TIMEOUT, self.call(request))
            .await
            .map_err(|_| CaError::Timeout)??;
        let roots = channel::load_roots(&self.config.trust_roots).await?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        verify(id, chain, &roots, key)
    }

    /// One `CreateCertificate` call; returns the chain as sent (PEM strings).
    async fn call(&self, request: IstioCertificateRequest) -> Result<Vec<String>, CaError> {
        let control_plane = &self.config.control_plane;
        let channel = self.channel().await?;
        let mut client =
            IstioCertificateServiceClient::with_origin(channel, control_plane.address.clone())
                .max_decoding_message_size(MAX_RESPONSE_SIZE);
        let mut request = tonic::Request::new(request);
        control_plane.authorize(&mut request).await?;
        match client.create_certificate(request).await {
            Ok(response) => Ok(response.into_inner().cert_chain),
            Err(status) => {
                // The connection may be broken; make a fresh one next time.
                *self.channel.lock().await = None;
                Err(CaError::Status(status))
            }
        }
    }

    /// The open connection, or a new one.
    async fn channel(&self) -> Result<Channel, ChannelError> {
        let mut current = self.channel.lock().await;
        if let Some(channel) = current.as_ref().filter(|c| !c.is_closed()) {
            return Ok(channel.clone());
        }
        let channel = self.config.control_plane.connect().await?;
        *current = Some(channel.clone());
        Ok(channel)
    }
}

impl CertificateSource for CaClient {
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
        Box::pin(async move {
            self.fetch(id, ttl).await.map_err(|error| {
                tracing::warn!(identity = %id, %error, "certificate request to the CA failed");
                error.into_cert_error(&self.config.control_plane.address.to_string())
            })
        })
    }
}

/// A PEM CSR for `id`: empty subject, exactly one SAN (the SPIFFE URI), signed by `key`.
fn csr_pem(id: &Identity, key: &KeyPair) -> Result<String, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(CaError::Csr)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(CaError::Csr)
}

/// Checks a returned chain (see the module docs) and pairs it with `key`.
fn verify(
    id: &Identity,
    chain_pem: Vec<String>,
    roots: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
) -> Result<WorkloadCertificate, CaError> {
    let mut chain = Vec::new();
    for pem in &chain_pem {
        chain.extend(hbone::cert::certs_from_pem(pem).map_err(CaError::InvalidCertificate)?);
        if chain.len() > MAX_CHAIN_LEN {
            return Err(CaError::ChainTooLong(chain.len()));
        }
    }
    let leaf = chain.first().ok_or(CaError::EmptyChain)?;
    let got = hbone::cert::identity_from_der(leaf).map_err(CaError::LeafIdentity)?;
    if got != *id {
        return Err(CaError::IdentityMismatch {
            requested: id.clone(),
            got,
        });
    }
    verify_to_roots(&chain, roots).map_err(CaError::UntrustedChain)?;
    // Peers have the roots; present the leaf and intermediates only.
    chain.retain(|cert| !roots.contains(cert));
    WorkloadCertificate::from_der(chain, key).map_err(|e| match e {
        CertError::KeyMismatch => CaError::KeyMismatch,
        e => CaError::Unusable(e),
    })
}

/// Verifies `chain` (leaf first; the rest may be in any order and include the root) to `roots`
/// at the current time, for a leaf usable as a TLS server (as every HBONE certificate is).
fn verify_to_roots(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let (leaf, rest) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &rustls::server::ParsedCertificate::try_from(leaf)?,
        &store,
        rest,
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
}

/// Shared so tests elsewhere can point an [`crate::identity::IdentityManager`] at a client.
impl CertificateSource for Arc<CaClient> {
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
        CertificateSource::issue(self.as_ref(), id, ttl)
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
