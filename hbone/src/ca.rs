//! A local certificate authority issuing workload certificates.
//!
//! The node proxy needs a [`WorkloadCertificate`] for every identity it serves before any HBONE
//! connection can be made. Instead of asking a remote CA, it issues them with a [`LocalCa`]:
//! either a self-signed ECDSA P-256 root generated (and persisted) on first run, or a signing
//! certificate in Istio's plug-in CA layout. The CA's roots are the trust anchors handed to
//! [`crate::tls::server_config`] and [`crate::tls::client_config`].
//!
//! # Directory layout
//! Both loaders read the file names of Istio's `cacerts` secret:
//! - [`CA_CERT_FILE`] (`ca-cert.pem`): the signing certificate (a root or an intermediate);
//! - [`CA_KEY_FILE`] (`ca-key.pem`): its private key (PKCS#8, SEC1 or PKCS#1 PEM);
//! - [`ROOT_CERT_FILE`] (`root-cert.pem`): the trust root(s);
//! - [`CERT_CHAIN_FILE`] (`cert-chain.pem`): the chain from the signing certificate up to the
//!   root (plug-in layout only). Certificates that are roots are dropped from it, and the signing
//!   certificate itself may be included or not.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::cert::{CertError, WorkloadCertificate, certs_from_pem, parse_x509};
use crate::identity::{Identity, validate_trust_domain};

/// File name of the signing certificate.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the signing certificate's private key.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the trust root bundle.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the chain from the signing certificate up to the root (plug-in layout).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// How far in the past issued certificates start being valid, to tolerate clock skew between
/// peers.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Validity of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A local certificate authority issuing workload certificates.
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates presented after an issued leaf: the signing certificate (unless it is a root)
    /// and its intermediates, roots excluded.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Loads `ca-cert.pem`, `ca-key.pem` and `root-cert.pem` from `state_dir`, or generates a
    /// self-signed ECDSA P-256 root there on first run (the directory is created with mode 0700,
    /// the key file with mode 0600). A later call with the same directory loads the same root.
    ///
    /// If only one of `ca-cert.pem` and `ca-key.pem` exists the directory is left untouched and
    /// [`CertError::MissingCaFile`] names the missing one.
    pub fn load_or_generate(state_dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        validate_trust_domain(trust_domain)?;
        create_private_dir(state_dir)?;
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => {
                let ca = Self::load(state_dir, trust_domain, false)?;
                tracing::info!(dir = %state_dir.display(), "loaded local CA");
                Ok(ca)
            }
            (false, false) => {
                let ca = Self::generate(state_dir, trust_domain)?;
                tracing::info!(dir = %state_dir.display(), "generated new local CA root");
                Ok(ca)
            }
            (false, true) => Err(CertError::MissingCaFile { path: cert_path }),
            (true, false) => Err(CertError::MissingCaFile { path: key_path }),
        }
    }

    /// Loads Istio's plug-in CA layout from `dir`: `ca-cert.pem` (signing certificate, possibly
    /// an intermediate), `ca-key.pem`, `root-cert.pem` and `cert-chain.pem`.
    ///
    /// A missing file is reported as [`CertError::MissingCaFile`] naming it; a key that does not
    /// match `ca-cert.pem` as [`CertError::KeyMismatch`]; a signing certificate that is not a CA
    /// as [`CertError::NotCa`]; a chain that does not verify to the roots as
    /// [`CertError::ChainInvalid`].
    pub fn from_plugin_dir(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        validate_trust_domain(trust_domain)?;
        Self::load(dir, trust_domain, true)
    }

    /// Issues an ECDSA P-256 leaf for `id`, valid from [`CLOCK_SKEW`] ago until `lifetime` from
    /// now.
    ///
    /// The leaf has an empty subject, exactly one URI SAN (the identity, marked critical as the
    /// subject is empty), no DNS SAN, key usage digitalSignature and keyEncipherment, extended key
    /// usage serverAuth and clientAuth. The returned chain is the leaf followed by the CA's
    /// intermediates (roots excluded). `id` must be in the CA's trust domain.
    pub fn issue(
        &self,
        id: &Identity,
        lifetime: Duration,
    ) -> Result<WorkloadCertificate, CertError> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
        let not_after = now
            .checked_add(lifetime)
            .ok_or(CertError::ValidityOutOfRange)?;
        self.issue_with_validity(id, not_before, not_after)
    }

    /// Like [`LocalCa::issue`] with an explicit validity period (tests use it for expired and
    /// not-yet-valid certificates). Times are truncated to whole seconds.
    pub fn issue_with_validity(
        &self,
        id: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, CertError> {
        let params = self.leaf_params(id, not_before, not_after)?;
        let (chain, key) = self.sign_raw(params)?;
        WorkloadCertificate::from_der(chain, key)
    }

    /// Signs a PKCS#10 certificate signing request (PEM), the way Istio's CA answers
    /// `CreateCertificate`: the CSR's signature is checked, its single URI SAN must be a SPIFFE
    /// identity in the CA's trust domain, and only that identity and the CSR's public key are
    /// taken from it. Everything else (subject, extensions, validity from [`CLOCK_SKEW`] ago until
    /// `lifetime` from now) is the CA's choice, exactly as in [`LocalCa::issue`].
    ///
    /// Returns the chain: the new leaf, then the CA's intermediates (roots excluded). A malformed
    /// CSR or a bad signature is [`CertError::Rcgen`]; a CSR without exactly one URI SAN is
    /// [`CertError::NoUriSan`] or [`CertError::MultipleUriSans`]; an invalid identity is
    /// [`CertError::Identity`]; another trust domain is [`CertError::TrustDomainMismatch`].
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CertError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut uris = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str()),
                _ => None,
            });
        let uri = uris.next().ok_or(CertError::NoUriSan)?;
        let extra = uris.count();
        if extra > 0 {
            return Err(CertError::MultipleUriSans { count: extra + 1 });
        }
        let id: Identity = uri.parse()?;
        let now = SystemTime::now();
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH);
        let not_after = now
            .checked_add(lifetime)
            .ok_or(CertError::ValidityOutOfRange)?;
        let params = self.leaf_params(&id, not_before, not_after)?;
        let leaf = params.signed_by(&csr.public_key, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        Ok(chain)
    }

    /// The parameters of a workload leaf for `id` (see [`LocalCa::issue`] for its contents).
    fn leaf_params(
        &self,
        id: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateParams, CertError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CertError::TrustDomainMismatch {
                ca: self.trust_domain.clone(),
                requested: id.clone(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.not_before = to_offset_date_time(not_before)?;
        params.not_after = to_offset_date_time(not_after)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// Signs arbitrary certificate parameters with a fresh ECDSA P-256 key and returns the chain
    /// (leaf, then the CA's intermediates) and the key, without any identity validation. Test
    /// support, e.g. for leaves with two URI SANs.
    pub fn sign_raw(
        &self,
        params: CertificateParams,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(leaf.der().clone());
        chain.extend(self.intermediates.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }

    /// The trust roots that issued certificates chain to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The certificates presented after an issued leaf (roots excluded).
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The trust domain this CA issues identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Generates a self-signed root and persists it in `dir`.
    fn generate(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        // A subject unique to this root: roots generated for the same trust domain by different
        // nodes or runs must not be mistaken for each other's issuer during path building.
        let key_id = params.key_identifier(&key);
        let short_id = crate::cert::hex(key_id.get(..8).unwrap_or(&key_id));
        params.distinguished_name.push(
            DnType::CommonName,
            format!("HBONE local root CA {short_id}"),
        );
        params.not_before = to_offset_date_time(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH))?;
        params.not_after = to_offset_date_time(
            now.checked_add(ROOT_LIFETIME)
                .ok_or(CertError::ValidityOutOfRange)?,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root = params.self_signed(&key)?;
        let root_pem = crate::cert::certs_to_pem(std::slice::from_ref(root.der()));

        // The key goes first and the signing certificate last: an interrupted first run leaves a
        // key without `ca-cert.pem`, which is reported rather than silently replaced.
        write_file(&dir.join(CA_KEY_FILE), &key.serialize_pem(), 0o600)?;
        write_file(&dir.join(ROOT_CERT_FILE), &root_pem, 0o644)?;
        write_file(&dir.join(CA_CERT_FILE), &root_pem, 0o644)?;

        let issuer = Issuer::from_ca_cert_der(root.der(), key)?;
        Self::checked(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            intermediates: Vec::new(),
            roots: vec![root.der().clone()],
        })
    }

    /// Loads the layout described in the module documentation.
    fn load(dir: &Path, trust_domain: &str, chain_required: bool) -> Result<Self, CertError> {
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let root_path = dir.join(ROOT_CERT_FILE);
        let chain_path = dir.join(CERT_CHAIN_FILE);

        let ca_pem = read_required(&ca_cert_path)?;
        let key_pem = read_required(&ca_key_path)?;
        let roots_pem = read_required(&root_path)?;
        let chain_pem = if chain_required {
            Some(read_required(&chain_path)?)
        } else {
            read_optional(&chain_path)?
        };

        let ca_certs = in_file(&ca_cert_path, certs_from_pem(&ca_pem))?;
        let roots = in_file(&root_path, certs_from_pem(&roots_pem))?;
        let chain = match &chain_pem {
            // An empty chain file is what a self-signed Istio CA writes.
            Some(pem) if !pem.trim().is_empty() => in_file(&chain_path, certs_from_pem(pem))?,
            _ => Vec::new(),
        };

        let signing_der = &ca_certs[0];
        let signing = in_file(&ca_cert_path, parse_x509(signing_der))?;
        if !signing.is_ca() {
            return Err(CertError::NotCa { path: ca_cert_path });
        }
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            let err = match e {
                rustls_pki_types::pem::Error::NoItemsFound => CertError::NoPrivateKey,
                e => CertError::Pem(e),
            };
            CertError::CaFile {
                path: ca_key_path.clone(),
                source: Box::new(err),
            }
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CertError::CaFile {
            path: ca_key_path.clone(),
            source: Box::new(CertError::Rcgen(e)),
        })?;
        // Compare the key bits rather than whole SubjectPublicKeyInfo encodings, which may
        // legitimately differ in how the algorithm parameters are written.
        if key.public_key_raw() != signing.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::KeyMismatch);
        }

        let mut intermediates: Vec<CertificateDer<'static>> = Vec::new();
        for cert in ca_certs.iter().chain(chain.iter()) {
            if !roots.contains(cert) && !intermediates.contains(cert) {
                intermediates.push(cert.clone());
            }
        }

        let issuer = Issuer::from_ca_cert_der(signing_der, key)?;
        Self::checked(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            intermediates,
            roots,
        })
    }

    /// Issues a short-lived probe certificate and verifies it to the roots, so that a CA whose
    /// chain is broken (wrong intermediate, root not matching, expired CA) fails at load time
    /// rather than at the first handshake.
    fn checked(self) -> Result<Self, CertError> {
        let probe_id = Identity::new(&self.trust_domain, "hbone-ca-self-check", "probe")?;
        let probe = self.issue(&probe_id, CLOCK_SKEW)?;
        crate::tls::verify_chain(probe.chain(), &self.roots, UnixTime::now())
            .map_err(CertError::ChainInvalid)?;
        Ok(self)
    }
}

/// Attributes an error while parsing a CA file to that file.
fn in_file<T>(path: &Path, result: Result<T, CertError>) -> Result<T, CertError> {
    result.map_err(|e| CertError::CaFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Converts a `SystemTime` to the time type of certificate parameters, truncating to seconds.
fn to_offset_date_time(t: SystemTime) -> Result<time::OffsetDateTime, CertError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|_| CertError::ValidityOutOfRange)?,
        Err(e) => {
            let before = e.duration();
            // Round towards the past so that truncation never extends a validity period start.
            let whole =
                i64::try_from(before.as_secs()).map_err(|_| CertError::ValidityOutOfRange)?;
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    };
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| CertError::ValidityOutOfRange)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn exists(path: &Path) -> Result<bool, CertError> {
    path.try_exists().map_err(io_error(path))
}

fn read_required(path: &Path) -> Result<String, CertError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CertError::MissingCaFile {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(CertError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, CertError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as is.
fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

/// Writes `contents` to `path` with `mode` via a temporary file renamed into place, so a reader
/// never sees a partial file.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("pem.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    #[cfg(unix)]
    {
        // The mode given to open() only applies when the file is created.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error(&tmp))?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sign_csr_tests {
    use super::*;

    fn csr(sans: &[&str]) -> (KeyPair, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "ignored");
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    #[test]
    fn signs_the_csr_key_for_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
        let (key, pem) = csr(&["spiffe://cluster.local/ns/default/sa/sleep"]);
        let chain = ca.sign_csr(&pem, Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 1, "a generated root has no intermediates");
        crate::tls::verify_chain(&chain, ca.roots(), UnixTime::now()).unwrap();
        // The leaf carries the CSR's key: it pairs with the requester's private key.
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let cert = WorkloadCertificate::from_der(chain, key).unwrap();
        assert_eq!(
            cert.identity().to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert!(lifetime >= Duration::from_secs(3600) && lifetime <= Duration::from_secs(3661));
        // The subject the requester asked for is not copied.
        let leaf = parse_x509(&cert.chain()[0]).unwrap();
        assert_eq!(leaf.subject().iter_attributes().count(), 0);
    }

    #[test]
    fn rejects_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
        let ttl = Duration::from_secs(60);
        let (_, none) = csr(&[]);
        assert!(matches!(ca.sign_csr(&none, ttl), Err(CertError::NoUriSan)));
        let (_, two) = csr(&[
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/c/sa/d",
        ]);
        assert!(matches!(
            ca.sign_csr(&two, ttl),
            Err(CertError::MultipleUriSans { count: 2 })
        ));
        let (_, other_td) = csr(&["spiffe://other.domain/ns/a/sa/b"]);
        assert!(matches!(
            ca.sign_csr(&other_td, ttl),
            Err(CertError::TrustDomainMismatch { .. })
        ));
        let (_, not_spiffe) = csr(&["https://example.com/"]);
        assert!(matches!(
            ca.sign_csr(&not_spiffe, ttl),
            Err(CertError::Identity(_))
        ));
        assert!(matches!(
            ca.sign_csr("not a csr", ttl),
            Err(CertError::Rcgen(_))
        ));
    }
}
