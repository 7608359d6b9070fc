//! Workload certificates and the swappable store that serves them.
//!
//! A [`WorkloadCertificate`] is what one identity presents in every HBONE handshake, as server and
//! as client: a leaf with exactly one SPIFFE URI SAN, its intermediates, and the private key,
//! already loaded into a rustls [`CertifiedKey`]. A [`CertStore`] holds the current certificate of
//! one identity; the TLS configurations built by [`crate::tls`] read it at every handshake, so
//! [`CertStore::replace`] (rotation) takes effect for new connections without touching
//! established ones.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::identity::{Identity, IdentityError};

/// Errors from loading, parsing, validating or issuing certificates.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum CertError {
    /// The PEM text could not be parsed.
    #[error("invalid PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// No certificate was found where at least one is required (empty chain or PEM bundle).
    #[error("no certificate found")]
    NoCertificate,
    /// No private key was found in the PEM text.
    #[error("no private key found")]
    NoPrivateKey,
    /// The leaf certificate has no URI SAN, so it names no SPIFFE identity.
    #[error("certificate has no URI SAN, exactly one SPIFFE ID is required")]
    NoUriSan,
    /// The leaf certificate has more than one URI SAN; an HBONE peer has exactly one identity.
    #[error("certificate has {count} URI SANs, exactly one SPIFFE ID is required")]
    MultipleUriSans {
        /// Number of URI SANs found.
        count: usize,
    },
    /// The URI SAN (or a trust domain given to the CA) is not a valid SPIFFE identity.
    #[error("invalid SPIFFE identity: {0}")]
    Identity(#[from] IdentityError),
    /// The private key could not be loaded by the crypto provider.
    #[error("unusable private key: {0}")]
    Key(#[source] rustls::Error),
    /// The private key does not belong to the (leaf or CA) certificate it was paired with.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// A certificate is not valid X.509 DER.
    #[error("invalid X.509 certificate: {0}")]
    X509(#[source] X509Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen failed to generate or load a key, or to sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A validity time cannot be represented in a certificate.
    #[error("certificate validity time out of range")]
    ValidityOutOfRange,
    /// A replacement certificate names a different identity than the store it was offered to.
    #[error("certificate identity changed from {expected} to {got}")]
    IdentityChanged {
        /// The identity of the store.
        expected: Identity,
        /// The identity of the rejected certificate.
        got: Identity,
    },
    /// A file of the CA directory layout is missing.
    #[error("CA file {} is missing", path.display())]
    MissingCaFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file of the CA directory layout could not be parsed; `source` says why.
    #[error("{}: {source}", path.display())]
    CaFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<CertError>,
    },
    /// The CA signing certificate is not a CA certificate (basicConstraints cA is not set).
    #[error("{} is not a CA certificate", path.display())]
    NotCa {
        /// The file holding the certificate.
        path: PathBuf,
    },
    /// The CA was asked to issue a certificate outside its trust domain.
    #[error("CA for trust domain {ca} cannot issue {requested}")]
    TrustDomainMismatch {
        /// The CA's trust domain.
        ca: String,
        /// The identity that was requested.
        requested: Identity,
    },
    /// The CA's own chain does not verify to its roots (checked when a CA is loaded by issuing and
    /// verifying a probe certificate).
    #[error("CA chain does not verify to its roots: {0}")]
    ChainInvalid(#[source] rustls::Error),
}

/// A workload's certificate chain (leaf first, then intermediates; the root is not required) and
/// private key.
///
/// Construction validates that the leaf carries exactly one URI SAN holding a valid SPIFFE
/// [`Identity`] and that the key matches the leaf; the rustls [`CertifiedKey`] presented in
/// handshakes is built once, so cloning is cheap. `Debug` never shows the key.
#[derive(Clone)]
pub struct WorkloadCertificate {
    identity: Identity,
    not_before: SystemTime,
    not_after: SystemTime,
    serial_hex: String,
    certified_key: Arc<CertifiedKey>,
}

impl WorkloadCertificate {
    /// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, SEC1 or
    /// PKCS#1); validates the leaf has exactly one URI SAN and that it is a valid [`Identity`].
    pub fn from_pem(cert_chain_pem: &str, private_key_pem: &str) -> Result<Self, CertError> {
        let chain = certs_from_pem(cert_chain_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).map_err(|e| match e {
                rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey,
                e => CertError::Pem(e),
            })?;
        Self::from_der(chain, key)
    }

    /// Builds from a DER chain (leaf first) and key, with the same validation as
    /// [`WorkloadCertificate::from_pem`].
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let leaf_der = chain.first().ok_or(CertError::NoCertificate)?;
        let leaf = parse_x509(leaf_der)?;
        let identity = identity_from_x509(&leaf)?;
        let not_before = asn1_to_system_time(leaf.validity().not_before.timestamp());
        let not_after = asn1_to_system_time(leaf.validity().not_after.timestamp());
        let serial_hex = hex(leaf.raw_serial());
        for intermediate in &chain[1..] {
            parse_x509(intermediate)?;
        }

        let signing_key = crate::tls::crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(CertError::Key)?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::KeyMismatch);
            }
            Err(e) => return Err(CertError::Key(e)),
        }

        Ok(Self {
            identity,
            not_before,
            not_after,
            serial_hex,
            certified_key: Arc::new(certified_key),
        })
    }

    /// The SPIFFE identity named by the leaf's URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Start of the leaf's validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `at` lies within the leaf's validity period (bounds inclusive).
    pub fn is_valid_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// The chain presented to peers: leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    /// The chain as concatenated PEM `CERTIFICATE` blocks, leaf first.
    pub fn chain_pem(&self) -> String {
        certs_to_pem(self.chain())
    }

    /// The leaf's serial number as lowercase hexadecimal without separators (the DER integer's
    /// content bytes, so a leading `00` appears when the high bit of the value is set).
    pub fn serial_hex(&self) -> String {
        self.serial_hex.clone()
    }

    /// The chain and signing key in the form rustls presents in a handshake (a cheap clone).
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified_key)
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified_key.cert.len())
            .finish_non_exhaustive()
    }
}

/// Extracts the single SPIFFE identity from a DER leaf certificate.
///
/// Exactly one URI SAN is required and it must be a valid [`Identity`]; DNS, IP and other SAN
/// types are ignored.
pub fn identity_from_der(cert: &CertificateDer<'_>) -> Result<Identity, CertError> {
    identity_from_x509(&parse_x509(cert)?)
}

/// The leaf certificate a peer presented in an HBONE handshake, shared by every stream of its
/// connection. What `x-forwarded-client-cert` reports of it ([`CertDetails`]: the SHA-256 and
/// the RFC 2253 subject) is worked out on first use, once per connection, not once per tunnel.
#[derive(Debug)]
pub struct PeerCertificate {
    der: CertificateDer<'static>,
    details: OnceLock<CertDetails>,
}

/// The hash and subject of a certificate, as `x-forwarded-client-cert` carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDetails {
    /// Lower-case hex SHA-256 of the certificate's DER (`Hash`).
    pub hash: String,
    /// The subject as an RFC 2253 distinguished name, empty when it has none (`Subject`).
    pub subject: String,
}

impl PeerCertificate {
    /// The certificate `der`, its details not yet computed.
    pub fn new(der: CertificateDer<'static>) -> Self {
        Self {
            der,
            details: OnceLock::new(),
        }
    }

    /// The certificate as DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Its hash and subject, computed at the first call. A subject that cannot be read (never
    /// one of a certificate that passed the mTLS handshake) is empty.
    pub fn details(&self) -> &CertDetails {
        self.details.get_or_init(|| CertDetails {
            hash: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.der.as_ref()).as_ref(),
            ),
            subject: subject_rfc2253(&self.der).unwrap_or_default(),
        })
    }
}

/// The subject of a DER certificate as an RFC 2253 distinguished name (the format Envoy puts
/// in `x-forwarded-client-cert`'s `Subject`): the RDNs last to first, separated by `,`,
/// multi-valued RDNs joined with `+`, attribute types by their short name (`CN`, `O`, …) or
/// dotted OID, the characters `,+"\<>;` escaped with `\`. Empty for an empty subject (SPIFFE
/// workload certificates). A value that is not a string is written as `#` and its DER bytes
/// in hex.
pub fn subject_rfc2253(cert: &CertificateDer<'_>) -> Result<String, CertError> {
    let x509 = parse_x509(cert)?;
    let registry = x509_parser::objects::oid_registry();
    let mut rdns: Vec<String> = x509
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type();
                    let name = x509_parser::objects::oid2abbrev(oid, registry)
                        .map_or_else(|_| oid.to_id_string(), str::to_owned);
                    let value = match attr.as_str() {
                        Ok(value) => escape_dn_value(value),
                        Err(_) => {
                            let hex: String = attr
                                .attr_value()
                                .data
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Ok(rdns.join(","))
}

/// Escapes an RFC 2253 attribute value.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Parses a PEM bundle of CA certificates (trust roots). At least one certificate is required and
/// each must be valid X.509; blocks other than `CERTIFICATE` are skipped.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertError::Pem)?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    for cert in &certs {
        parse_x509(cert)?;
    }
    Ok(certs)
}

/// Encodes certificates as concatenated PEM `CERTIFICATE` blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        pem_block(&mut out, "CERTIFICATE", cert);
    }
    out
}

/// Appends one PEM block with base64 lines of 64 characters.
pub(crate) fn pem_block(out: &mut String, label: &str, der: &[u8]) {
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let encoded = base64(der);
    for line in encoded.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lowercase hex without separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses one DER certificate, rejecting trailing bytes.
pub(crate) fn parse_x509<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, CertError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::X509(X509Error::InvalidCertificate)),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => {
            Err(CertError::X509(e))
        }
        Err(x509_parser::nom::Err::Incomplete(_)) => {
            Err(CertError::X509(X509Error::InvalidCertificate))
        }
    }
}

/// The single SPIFFE identity of a parsed certificate.
pub(crate) fn identity_from_x509(cert: &X509Certificate<'_>) -> Result<Identity, CertError> {
    let san = cert.subject_alternative_name().map_err(CertError::X509)?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let first = uris.next().ok_or(CertError::NoUriSan)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(CertError::MultipleUriSans { count: extra + 1 });
    }
    Ok(first.parse()?)
}

/// Converts an X.509 time (seconds since the Unix epoch, possibly negative) to a `SystemTime`.
fn asn1_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The certificate one identity currently presents; swapped at runtime on rotation.
///
/// Reads are lock-free. The identity is fixed when the store is created: a replacement must name
/// the same identity.
pub struct CertStore {
    identity: Identity,
    current: ArcSwap<WorkloadCertificate>,
}

impl CertStore {
    /// Creates a store presenting `cert`; its identity becomes the store's identity.
    pub fn new(cert: WorkloadCertificate) -> Self {
        Self {
            identity: cert.identity().clone(),
            current: ArcSwap::from_pointee(cert),
        }
    }

    /// The certificate presented now.
    pub fn current(&self) -> Arc<WorkloadCertificate> {
        self.current.load_full()
    }

    /// The rustls key of the current certificate, as a handshake needs it.
    pub fn current_certified_key(&self) -> Arc<CertifiedKey> {
        self.current.load().certified_key()
    }

    /// Installs a new certificate for new handshakes; established connections keep the one they
    /// negotiated. Rejected with [`CertError::IdentityChanged`] if its identity differs from the
    /// store's.
    pub fn replace(&self, cert: WorkloadCertificate) -> Result<(), CertError> {
        if cert.identity() != &self.identity {
            return Err(CertError::IdentityChanged {
                expected: self.identity.clone(),
                got: cert.identity().clone(),
            });
        }
        let new_serial = cert.serial_hex.clone();
        let old = self.current.swap(Arc::new(cert));
        tracing::info!(
            identity = %self.identity,
            old_serial = %old.serial_hex,
            new_serial = %new_serial,
            "workload certificate replaced"
        );
        Ok(())
    }

    /// The identity every certificate of this store names.
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("identity", &self.identity.to_string())
            .field("current", &*self.current.load())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::LocalCa;

    fn ca(dir: &tempfile::TempDir) -> LocalCa {
        LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap()
    }

    fn id(ns: &str, sa: &str) -> Identity {
        Identity::new("cluster.local", ns, sa).unwrap()
    }

    #[test]
    fn subjects_in_rfc2253() {
        // (subject attributes in certificate order, the RFC 2253 string)
        let cases: &[(&[(rcgen::DnType, &str)], &str)] = &[
            (&[], ""),
            (
                &[
                    (rcgen::DnType::CountryName, "US"),
                    (rcgen::DnType::OrganizationName, "Lyft"),
                    (rcgen::DnType::CommonName, "Test Client"),
                ],
                "CN=Test Client,O=Lyft,C=US",
            ),
            (
                &[(rcgen::DnType::CommonName, "a,b+c\"d;e<f>g\\h")],
                "CN=a\\,b\\+c\\\"d\\;e\\<f\\>g\\\\h",
            ),
            (
                &[(rcgen::DnType::CommonName, " padded ")],
                "CN=\\ padded\\ ",
            ),
        ];
        for (attributes, expected) in cases {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            for (ty, value) in *attributes {
                params.distinguished_name.push(ty.clone(), *value);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(
                subject_rfc2253(cert.der()).unwrap(),
                *expected,
                "{attributes:?}"
            );
        }
    }

    #[test]
    fn peer_certificate_details_are_the_sha256_and_subject_computed_once() {
        use sha2::{Digest, Sha256};
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let peer = PeerCertificate::new(cert.der().clone());
        let want: String = Sha256::digest(cert.der().as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let details = peer.details();
        assert_eq!(details.hash, want);
        assert_eq!(details.subject, "CN=client");
        assert_eq!(peer.der(), cert.der());
        // Later calls (other tunnels of the connection) get the same, already computed, value.
        assert!(std::ptr::eq(details, peer.details()));
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn pem_round_trip_and_debug_hides_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir);
        let cert = ca
            .issue(&id("ns1", "sa1"), Duration::from_secs(3600))
            .unwrap();
        let pem = cert.chain_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let parsed = certs_from_pem(&pem).unwrap();
        assert_eq!(parsed, cert.chain());

        let debug = format!("{cert:?}");
        assert!(
            debug.contains("spiffe://cluster.local/ns/ns1/sa/sa1"),
            "{debug}"
        );
        assert!(!debug.to_lowercase().contains("key"), "{debug}");
        assert_eq!(cert.serial_hex().len() % 2, 0);
        assert!(
            cert.serial_hex()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
        );
    }

    #[test]
    fn from_pem_parses_key_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir);
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
            rcgen::SanType::DnsName("ignored.example".try_into().unwrap()),
        ];
        let (chain, key) = ca.sign_raw(params).unwrap();
        let leaf_pem = certs_to_pem(&chain);
        let mut key_pem = String::new();
        pem_block(&mut key_pem, "PRIVATE KEY", key.secret_der());
        let cert = WorkloadCertificate::from_pem(&leaf_pem, &key_pem).unwrap();
        assert_eq!(cert.identity(), &id("a", "b"));
        assert_eq!(cert.chain().len(), 1);

        // Key of another certificate.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(matches!(
            WorkloadCertificate::from_pem(&leaf_pem, &other.serialize_pem()),
            Err(CertError::KeyMismatch)
        ));
        assert!(matches!(
            WorkloadCertificate::from_pem(&leaf_pem, ""),
            Err(CertError::NoPrivateKey)
        ));
        assert!(matches!(
            WorkloadCertificate::from_pem("", &key_pem),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            WorkloadCertificate::from_pem(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &key_pem
            ),
            Err(CertError::Pem(_))
        ));
        assert!(matches!(
            WorkloadCertificate::from_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                &key_pem
            ),
            Err(CertError::X509(_))
        ));
    }

    #[test]
    fn san_rules() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir);
        let sign = |sans: Vec<rcgen::SanType>| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans;
            let (chain, key) = ca.sign_raw(params).unwrap();
            (chain, key)
        };
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());

        let (chain, key) = sign(vec![
            uri("spiffe://cluster.local/ns/a/sa/b"),
            uri("spiffe://cluster.local/ns/a/sa/c"),
        ]);
        assert!(matches!(
            identity_from_der(&chain[0]),
            Err(CertError::MultipleUriSans { count: 2 })
        ));
        assert!(matches!(
            WorkloadCertificate::from_der(chain, key),
            Err(CertError::MultipleUriSans { count: 2 })
        ));

        let (chain, key) = sign(vec![rcgen::SanType::DnsName(
            "a.example".try_into().unwrap(),
        )]);
        assert!(matches!(
            identity_from_der(&chain[0]),
            Err(CertError::NoUriSan)
        ));
        assert!(matches!(
            WorkloadCertificate::from_der(chain, key),
            Err(CertError::NoUriSan)
        ));

        let (chain, _) = sign(vec![]);
        assert!(matches!(
            identity_from_der(&chain[0]),
            Err(CertError::NoUriSan)
        ));

        let (chain, _) = sign(vec![uri("spiffe://cluster.local/ns/a")]);
        assert!(matches!(
            identity_from_der(&chain[0]),
            Err(CertError::Identity(IdentityError::MissingSegments {
                found: 2
            }))
        ));

        let (chain, _) = sign(vec![uri("https://example.com/")]);
        assert!(matches!(
            identity_from_der(&chain[0]),
            Err(CertError::Identity(IdentityError::WrongScheme))
        ));
    }

    #[test]
    fn store_rotation_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir);
        let first = ca.issue(&id("a", "b"), Duration::from_secs(60)).unwrap();
        let store = CertStore::new(first.clone());
        assert_eq!(store.identity(), id("a", "b"));
        assert_eq!(store.current().serial_hex(), first.serial_hex());

        let second = ca.issue(&id("a", "b"), Duration::from_secs(60)).unwrap();
        assert_ne!(second.serial_hex(), first.serial_hex());
        store.replace(second.clone()).unwrap();
        assert_eq!(store.current().serial_hex(), second.serial_hex());
        assert_eq!(store.current_certified_key().cert, second.chain());

        let other = ca
            .issue(&id("a", "other"), Duration::from_secs(60))
            .unwrap();
        match store.replace(other) {
            Err(CertError::IdentityChanged { expected, got }) => {
                assert_eq!(expected, id("a", "b"));
                assert_eq!(got, id("a", "other"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(store.current().serial_hex(), second.serial_hex());
    }

    #[test]
    fn validity_times() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(&dir);
        let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let na = nb + Duration::from_secs(86_400);
        let cert = ca.issue_with_validity(&id("a", "b"), nb, na).unwrap();
        assert_eq!(cert.not_before(), nb);
        assert_eq!(cert.not_after(), na);
        assert!(cert.is_valid_at(nb + Duration::from_secs(10)));
        assert!(!cert.is_valid_at(na + Duration::from_secs(1)));
        assert_eq!(asn1_to_system_time(-5), UNIX_EPOCH - Duration::from_secs(5));
    }
}
