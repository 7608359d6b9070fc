//! TLS origination toward external services: a DestinationRule `trafficPolicy.tls` (or its
//! `portLevelSettings` entry) with `mode: SIMPLE` makes `connect_originate` speak TLS to the
//! ServiceEntry's endpoints, verifying the server's certificate chain against
//! `caCertificates` (a PEM file), else the configured roots ([`super::EgressSettings::ca_file`],
//! else the system bundle), for the name sent as SNI (`sni`, else the service host) and, when
//! `subjectAltNames` is set, for one of those names too.
//!
//! Anything the waypoint cannot honour fails closed: `MUTUAL` (client certificates),
//! `ISTIO_MUTUAL` toward a host outside the mesh, `insecureSkipVerify`, an unreadable CA file
//! or an invalid name make every request to the cluster fail with 503 `UF` and the reason as
//! `upstream_transport_failure_reason`, rather than sending in clear or unverified.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::istio::{ClientTlsSettings, TlsMode};

/// Why TLS cannot be originated with a cluster's settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// The mode is not supported toward external hosts.
    #[error("TLS mode {0} is not supported for external services")]
    UnsupportedMode(&'static str),
    /// `insecureSkipVerify` is not honoured.
    #[error("insecureSkipVerify is not supported: the server certificate is always verified")]
    InsecureSkipVerify,
    /// The roots could not be loaded.
    #[error("CA certificates: {0}")]
    Roots(String),
    /// The SNI or a subject alternative name is not a valid server name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How to originate TLS to one cluster's endpoints.
#[derive(Debug)]
pub struct TlsOrigination {
    /// The client configuration (roots, verifier).
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI, also the name the certificate must be valid for.
    pub server_name: ServerName<'static>,
    /// Distinguishes the connections made with these settings in the connection pool.
    pub id: u64,
}

/// The TLS origination of a cluster: `None` for plain TCP, or why it cannot be set up.
pub type TlsResult = Result<Option<Arc<TlsOrigination>>, TlsSetupError>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The TLS origination of `settings` toward `host`: `None` when the mode sends in clear
/// (`DISABLE`).
pub fn origination(
    settings: &ClientTlsSettings,
    host: &str,
    default_ca_file: Option<&Path>,
) -> TlsResult {
    match settings.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Simple => {}
        TlsMode::Mutual => return Err(TlsSetupError::UnsupportedMode("MUTUAL")),
        TlsMode::IstioMutual => return Err(TlsSetupError::UnsupportedMode("ISTIO_MUTUAL")),
    }
    if settings.insecure_skip_verify {
        return Err(TlsSetupError::InsecureSkipVerify);
    }
    let sni = settings.sni.as_deref().unwrap_or(host);
    let server_name = parse_server_name(sni)?;
    let alt_names = settings
        .subject_alt_names
        .iter()
        .map(String::as_str)
        .map(parse_server_name)
        .collect::<Result<Vec<_>, _>>()?;
    let ca_file = settings
        .ca_certificates
        .as_deref()
        .map(Path::new)
        .or(default_ca_file);
    let roots = crate::authn::jwks::load_roots(ca_file).map_err(TlsSetupError::Roots)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let verifier = Arc::new(AltNameVerifier {
        inner: webpki,
        alt_names,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = Vec::new();
    Ok(Some(Arc::new(TlsOrigination {
        config: Arc::new(config),
        server_name,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
    })))
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsSetupError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsSetupError::ServerName(name.to_owned()))
}

/// The WebPKI verifier (chain to the roots, valid for the SNI), plus: valid for one of the
/// DestinationRule's `subjectAltNames` when it lists any.
#[derive(Debug)]
struct AltNameVerifier {
    inner: Arc<WebPkiServerVerifier>,
    alt_names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.alt_names.is_empty() {
            return Ok(verified);
        }
        // The chain is verified; the subject alternative names only need the name check.
        let cert = ParsedCertificate::try_from(end_entity)?;
        let mut last = None;
        for name in &self.alt_names {
            match verify_server_name(&cert, name) {
                Ok(()) => return Ok(verified),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subject alternative name".into())))
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
