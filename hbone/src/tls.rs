//! rustls configurations for HBONE and the SPIFFE-aware certificate verifiers.
//!
//! Every HBONE connection, in both directions, is TLS 1.3 with mutual authentication: this module
//! builds the [`rustls::ServerConfig`] used by the HBONE listener (port 15008) and the
//! [`rustls::ClientConfig`] used by the connection pool, both on the aws-lc-rs provider restricted
//! to AES-GCM suites and ALPN `h2`. Above the TLS layer the peer is known only by the
//! [`Identity`] returned by [`peer_identity`].
//!
//! # Verification
//! - The server requires a client certificate chaining to the trust roots whose leaf carries
//!   exactly one valid SPIFFE URI SAN; any identity is accepted (authorization happens later).
//! - The client verifies the chain and validity period against the trust roots, then requires the
//!   leaf's single SPIFFE URI SAN to be one of the identities it expects. The server name passed
//!   to the connector is ignored (callers usually pass the destination IP).
//!
//! # Errors seen by the verifying side
//! A rejected handshake fails with a [`rustls::Error`] on the side that rejected:
//! - chain to an unknown root: `InvalidCertificate(CertificateError::UnknownIssuer)` (a chain
//!   whose issuer has the same subject as a trusted root but another key fails with
//!   `InvalidCertificate(CertificateError::BadSignature)` instead);
//! - leaf without the needed extended key usage (serverAuth for servers, clientAuth for
//!   clients): `InvalidCertificate(CertificateError::InvalidPurpose..)`;
//! - leaf expired: `InvalidCertificate(CertificateError::ExpiredContext { .. })` (the `Context`
//!   variant, with the verification time and `notAfter`);
//! - leaf not yet valid: `InvalidCertificate(CertificateError::NotValidYetContext { .. })`;
//! - SPIFFE problems: `InvalidCertificate(CertificateError::Other(..))` wrapping a [`TlsError`]
//!   ([`TlsError::IdentityMismatch`] or [`TlsError::InvalidPeerIdentity`]), recovered with
//!   [`classify`] (or [`classify_io`] on the `std::io::Error` that tokio-rustls returns);
//! - server without a client certificate: `NoCertificatesPresented`;
//! - server facing a client that offers only TLS 1.2: `PeerIncompatible(..)`
//!   (`SupportedVersionsExtensionRequired`, or `Tls12NotOfferedOrEnabled` when the client sends
//!   a `supported_versions` extension), the client receiving a `protocol_version` alert.
//!
//! The other side sees the corresponding TLS alert (`AlertReceived(..)`). In TLS 1.3 a client
//! finishes its handshake before the server has checked the client certificate, so a client
//! rejected by the server sees the alert on its first read rather than from `connect`.
//!
//! # Resumption
//! Session resumption is disabled on both sides: every connection runs full certificate
//! verification, so identity checks, expiry and certificate rotation apply to every new
//! connection.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::cert::{CertError, CertStore, identity_from_der};
use crate::identity::Identity;

/// The ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors from building TLS configurations and from verifying HBONE peers.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum TlsError {
    /// The peer's SPIFFE identity is valid but not one the client expected.
    #[error(
        "peer presented identity {presented}, expected one of [{}]",
        list(.expected)
    )]
    IdentityMismatch {
        /// The identities the client accepts for this connection.
        expected: Vec<Identity>,
        /// The identity in the peer's certificate.
        presented: Identity,
    },
    /// The peer's leaf certificate does not carry exactly one valid SPIFFE URI SAN (the
    /// [`CertError`] says which: [`CertError::NoUriSan`], [`CertError::MultipleUriSans`],
    /// [`CertError::Identity`], ...).
    #[error("peer certificate has no usable SPIFFE identity: {0}")]
    InvalidPeerIdentity(#[source] CertError),
    /// The connection has no peer certificate (handshake not complete, or no client auth).
    #[error("connection has no peer certificate")]
    NoPeerCertificate,
    /// A client configuration was requested with an empty list of expected server identities.
    #[error("no expected server identity given")]
    NoExpectedIdentities,
    /// A configuration was requested with no trust roots.
    #[error("no trust roots given")]
    NoTrustRoots,
    /// A trust root could not be used as a trust anchor.
    #[error("invalid trust root: {0}")]
    InvalidTrustRoot(#[source] rustls::Error),
    /// A certificate error while building a configuration.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The client-certificate verifier could not be built.
    #[error("cannot build client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// An error from rustls.
    #[error("TLS error: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Formats identities as a comma-separated list.
fn list(ids: &[Identity]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The crypto provider of every HBONE TLS configuration: aws-lc-rs, with only the
/// `TLS13_AES_256_GCM_SHA384` and `TLS13_AES_128_GCM_SHA256` cipher suites. Built once.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ],
            ..aws_lc_rs::default_provider()
        })
    }))
}

/// Builds the HBONE server TLS configuration.
///
/// TLS 1.3 only, AES-GCM suites only, ALPN `h2`, client certificate required, chaining to
/// `roots` and carrying exactly one valid SPIFFE URI SAN. The server certificate is read from
/// `certs` at every handshake, so [`CertStore::replace`] applies to new handshakes while
/// established connections are unaffected.
pub fn server_config(
    certs: Arc<CertStore>,
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = root_store(roots)?;
    let inner =
        WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider)).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier { inner }))
        .with_cert_resolver(Arc::new(StoreResolver(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Builds the HBONE client TLS configuration.
///
/// Same versions, suites and ALPN as [`server_config`]; the client certificate is read from
/// `certs` at every handshake. The server's chain must verify to `roots` (validity period
/// included) and its leaf must carry exactly one SPIFFE URI SAN that is one of `expected`; the
/// [`ServerName`] given to the connector is ignored. An empty `expected` is rejected
/// ([`TlsError::NoExpectedIdentities`]) rather than meaning "any identity".
pub fn client_config(
    certs: Arc<CertStore>,
    roots: &[CertificateDer<'static>],
    expected: Vec<Identity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentities);
    }
    let provider = crypto_provider();
    let verifier = SpiffeServerVerifier {
        roots: root_store(roots)?,
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(StoreResolver(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The verified SPIFFE identity of the peer of an established connection (its leaf certificate,
/// `peer_certificates()[0]`).
///
/// Pass a `rustls::ServerConnection` or `rustls::ClientConnection` (they dereference to
/// [`rustls::CommonState`]), e.g. `peer_identity(tls_stream.get_ref().1)`.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    identity_from_der(leaf).map_err(TlsError::InvalidPeerIdentity)
}

/// The [`TlsError`] inside a verifier rejection
/// (`InvalidCertificate(CertificateError::Other(..))`), if `err` is one.
pub fn classify(err: &rustls::Error) -> Option<&TlsError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<TlsError>()
        }
        _ => None,
    }
}

/// The [`rustls::Error`] inside an I/O error, as tokio-rustls reports handshake failures.
pub fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// [`classify`] applied to the [`rustls::Error`] inside an I/O error.
pub fn classify_io(err: &std::io::Error) -> Option<&TlsError> {
    rustls_error(err).and_then(classify)
}

/// Wraps a [`TlsError`] as the rustls error a verifier returns.
fn reject(err: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Builds a root store, requiring at least one usable root.
fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoTrustRoots);
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(TlsError::InvalidTrustRoot)?;
    }
    Ok(Arc::new(store))
}

/// Verifies that `chain` (leaf first) chains to one of `roots` at `now`, as the HBONE client
/// verifier does (without the identity check).
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    let store = root_store(roots).map_err(|e| match e {
        TlsError::InvalidTrustRoot(e) => e,
        _ => rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
    })?;
    let parsed = ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        intermediates,
        now,
        crypto_provider().signature_verification_algorithms.all,
    )
}

/// Presents the current certificate of a [`CertStore`], as server and as client.
struct StoreResolver(Arc<CertStore>);

impl fmt::Debug for StoreResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreResolver")
            .field(&self.0.identity().to_string())
            .finish()
    }
}

impl StoreResolver {
    /// The current key, unless its certificate has expired: an identity whose renewal failed
    /// until expiry fails closed (the handshake fails for lack of a certificate) instead of
    /// presenting a certificate every peer would refuse anyway.
    fn current_unexpired(&self) -> Option<Arc<CertifiedKey>> {
        let cert = self.0.current();
        if std::time::SystemTime::now() > cert.not_after() {
            tracing::warn!(
                identity = %cert.identity(),
                serial = %cert.serial_hex(),
                "workload certificate expired, refusing the handshake"
            );
            return None;
        }
        Some(cert.certified_key())
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current_unexpired()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current_unexpired()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server side: the WebPKI client verifier (chain, validity, clientAuth usage) followed by the
/// single-SPIFFE-identity check.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_from_der(end_entity).map_err(|e| reject(TlsError::InvalidPeerIdentity(e)))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: chain and validity against the trust roots, then the server's single SPIFFE
/// identity must be one of `expected`.
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("roots", &self.roots.len())
            .field("expected", &list(&self.expected))
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let presented =
            identity_from_der(end_entity).map_err(|e| reject(TlsError::InvalidPeerIdentity(e)))?;
        if !self.expected.contains(&presented) {
            return Err(reject(TlsError::IdentityMismatch {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_restricted() {
        let provider = crypto_provider();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            vec![
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ]
        );
        assert!(Arc::ptr_eq(&provider, &crypto_provider()));
    }

    #[test]
    fn classify_only_matches_wrapped_tls_errors() {
        let err = reject(TlsError::NoPeerCertificate);
        assert!(matches!(classify(&err), Some(TlsError::NoPeerCertificate)));
        let plain = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(classify(&plain).is_none());
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert!(matches!(
            classify_io(&io),
            Some(TlsError::NoPeerCertificate)
        ));
        assert!(rustls_error(&io).is_some());
        assert!(classify_io(&std::io::Error::other("x")).is_none());
    }

    #[test]
    fn config_arguments_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::LocalCa::load_or_generate(dir.path(), "td").unwrap();
        let id = Identity::new("td", "a", "b").unwrap();
        let store = Arc::new(CertStore::new(
            ca.issue(&id, std::time::Duration::from_secs(60)).unwrap(),
        ));
        assert!(matches!(
            client_config(Arc::clone(&store), ca.roots(), vec![]),
            Err(TlsError::NoExpectedIdentities)
        ));
        assert!(matches!(
            client_config(Arc::clone(&store), &[], vec![id.clone()]),
            Err(TlsError::NoTrustRoots)
        ));
        assert!(matches!(
            server_config(Arc::clone(&store), &[]),
            Err(TlsError::NoTrustRoots)
        ));
        assert!(matches!(
            server_config(Arc::clone(&store), &[CertificateDer::from(vec![1, 2, 3])]),
            Err(TlsError::InvalidTrustRoot(_))
        ));
        let server = server_config(Arc::clone(&store), ca.roots()).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        let client = client_config(store, ca.roots(), vec![id]).unwrap();
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn mismatch_error_lists_identities() {
        let a = Identity::new("td", "a", "a").unwrap();
        let b = Identity::new("td", "b", "b").unwrap();
        let c = Identity::new("td", "c", "c").unwrap();
        let msg = TlsError::IdentityMismatch {
            expected: vec![a, b],
            presented: c,
        }
        .to_string();
        assert_eq!(
            msg,
            "peer presented identity spiffe://td/ns/c/sa/c, expected one of \
             [spiffe://td/ns/a/sa/a, spiffe://td/ns/b/sa/b]"
        );
    }
}
