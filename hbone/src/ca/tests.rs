use std::os::unix::fs::PermissionsExt;

use rustls::CertificateError;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use super::*;
use crate::cert::certs_to_pem;

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn verify_now(chain: &[CertificateDer<'static>], roots: &[CertificateDer<'static>]) {
    crate::tls::verify_chain(chain, roots, UnixTime::now()).unwrap();
}

#[test]
fn generate_persist_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state").join("ca");
    let ca = LocalCa::load_or_generate(&dir, TD).unwrap();
    assert_eq!(ca.trust_domain(), TD);
    assert_eq!(ca.roots().len(), 1);
    assert!(ca.intermediates().is_empty());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    for file in [CA_CERT_FILE, ROOT_CERT_FILE] {
        assert_eq!(
            certs_from_pem(&fs::read_to_string(dir.join(file)).unwrap()).unwrap(),
            ca.roots()
        );
    }
    let key_before = fs::read(dir.join(CA_KEY_FILE)).unwrap();
    let issued_before = ca.issue(&id("a", "b"), Duration::from_secs(600)).unwrap();

    let again = LocalCa::load_or_generate(&dir, TD).unwrap();
    assert_eq!(again.roots(), ca.roots());
    assert_eq!(fs::read(dir.join(CA_KEY_FILE)).unwrap(), key_before);
    // Certificates of the first instance verify against the reloaded roots and vice versa.
    verify_now(issued_before.chain(), again.roots());
    let issued_after = again
        .issue(&id("a", "b"), Duration::from_secs(600))
        .unwrap();
    verify_now(issued_after.chain(), ca.roots());
    // No temporary files left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE]);

    // A different directory is a different root.
    let other = LocalCa::load_or_generate(&tmp.path().join("other"), TD).unwrap();
    assert_ne!(other.roots(), ca.roots());
    assert_eq!(
        crate::tls::verify_chain(issued_before.chain(), other.roots(), UnixTime::now()),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    );
}

#[test]
fn partial_state_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    fs::remove_file(tmp.path().join(CA_CERT_FILE)).unwrap();
    let key_before = fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
    match LocalCa::load_or_generate(tmp.path(), TD) {
        Err(CertError::MissingCaFile { path }) => assert_eq!(path, tmp.path().join(CA_CERT_FILE)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fs::read(tmp.path().join(CA_KEY_FILE)).unwrap(), key_before);

    let tmp = tempfile::tempdir().unwrap();
    LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();
    match LocalCa::load_or_generate(tmp.path(), TD) {
        Err(CertError::MissingCaFile { path }) => assert_eq!(path, tmp.path().join(CA_KEY_FILE)),
        other => panic!("unexpected {other:?}"),
    }

    let tmp = tempfile::tempdir().unwrap();
    LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    fs::remove_file(tmp.path().join(ROOT_CERT_FILE)).unwrap();
    let err = LocalCa::load_or_generate(tmp.path(), TD).unwrap_err();
    assert!(err.to_string().contains(ROOT_CERT_FILE), "{err}");
}

#[test]
fn invalid_trust_domain_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        LocalCa::load_or_generate(tmp.path(), "Cluster.local"),
        Err(CertError::Identity(IdentityError::InvalidTrustDomainChar {
            ch: 'C'
        }))
    ));
    assert!(matches!(
        LocalCa::from_plugin_dir(tmp.path(), ""),
        Err(CertError::Identity(IdentityError::EmptyTrustDomain))
    ));
}

use crate::identity::IdentityError;

#[test]
fn issued_leaf_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    let lifetime = Duration::from_secs(3600);
    let before = SystemTime::now();
    let cert = ca.issue(&id("ns1", "sa1"), lifetime).unwrap();
    let after = SystemTime::now();
    assert_eq!(cert.identity(), &id("ns1", "sa1"));
    assert_eq!(cert.chain().len(), 1);
    verify_now(cert.chain(), ca.roots());

    // Validity: skew before now, lifetime after now (whole seconds).
    let second = Duration::from_secs(1);
    assert!(cert.not_before() <= before - CLOCK_SKEW);
    assert!(cert.not_before() + second >= before - CLOCK_SKEW);
    assert!(cert.not_after() <= after + lifetime);
    assert!(cert.not_after() + second >= before + lifetime);

    let (_, x509) = x509_parser::parse_x509_certificate(cert.chain()[0].as_ref()).unwrap();
    assert!(
        x509.subject().iter().next().is_none(),
        "subject must be empty"
    );
    let spki = x509.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(
        cert.serial_hex(),
        crate::cert::hex(x509.raw_serial()),
        "serial"
    );

    let mut uri_sans = Vec::new();
    let mut other_sans = 0;
    let mut saw = (false, false, false, false);
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                assert!(ext.critical, "SAN must be critical with an empty subject");
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uri_sans.push(u.to_string()),
                        _ => other_sans += 1,
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ku.digital_signature());
                assert!(ku.key_encipherment());
                assert!(!ku.key_cert_sign());
                saw.0 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                saw.1 = true;
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca);
                saw.2 = true;
            }
            ParsedExtension::AuthorityKeyIdentifier(_) => saw.3 = true,
            _ => {}
        }
    }
    assert_eq!(uri_sans, ["spiffe://cluster.local/ns/ns1/sa/sa1"]);
    assert_eq!(other_sans, 0);
    assert_eq!(saw, (true, true, true, true));

    // Each issue is a fresh key and serial.
    let again = ca.issue(&id("ns1", "sa1"), lifetime).unwrap();
    assert_ne!(again.serial_hex(), cert.serial_hex());
    assert_ne!(
        again.certified_key().key.public_key(),
        cert.certified_key().key.public_key()
    );
}

#[test]
fn explicit_validity_and_trust_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    let nb = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let na = nb + Duration::from_secs(3600);
    let cert = ca.issue_with_validity(&id("a", "b"), nb, na).unwrap();
    assert_eq!((cert.not_before(), cert.not_after()), (nb, na));
    match crate::tls::verify_chain(cert.chain(), ca.roots(), UnixTime::now()) {
        Err(rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })) => {}
        other => panic!("unexpected {other:?}"),
    }

    let foreign = Identity::new("other.domain", "a", "b").unwrap();
    match ca.issue(&foreign, Duration::from_secs(60)) {
        Err(CertError::TrustDomainMismatch { ca: td, requested }) => {
            assert_eq!(td, TD);
            assert_eq!(requested, foreign);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        ca.issue(&id("a", "b"), Duration::MAX),
        Err(CertError::ValidityOutOfRange)
    ));
}

#[test]
fn offset_date_time_conversion() {
    assert_eq!(
        to_offset_date_time(UNIX_EPOCH + Duration::from_millis(1500))
            .unwrap()
            .unix_timestamp(),
        1
    );
    assert_eq!(
        to_offset_date_time(UNIX_EPOCH - Duration::from_millis(1500))
            .unwrap()
            .unix_timestamp(),
        -2
    );
}

/// A root, an intermediate signed by it, and their keys.
struct Hierarchy {
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    intermediate_key: KeyPair,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    params
}

fn hierarchy(name: &str) -> Hierarchy {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params(&format!("{name} root"));
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = ca_params(&format!("{name} intermediate"));
    params.use_authority_key_identifier_extension = true;
    let intermediate = params.signed_by(&intermediate_key, &root_issuer).unwrap();
    Hierarchy {
        root: root.der().clone(),
        intermediate: intermediate.der().clone(),
        intermediate_key,
    }
}

fn pem(certs: &[&CertificateDer<'static>]) -> String {
    let owned: Vec<_> = certs.iter().map(|c| (*c).clone()).collect();
    certs_to_pem(&owned)
}

/// Writes the plug-in layout; `cert-chain.pem` holds the intermediate then the root.
fn write_plugin(dir: &Path, h: &Hierarchy) {
    fs::write(dir.join(CA_CERT_FILE), pem(&[&h.intermediate])).unwrap();
    fs::write(dir.join(CA_KEY_FILE), h.intermediate_key.serialize_pem()).unwrap();
    fs::write(dir.join(ROOT_CERT_FILE), pem(&[&h.root])).unwrap();
    fs::write(dir.join(CERT_CHAIN_FILE), pem(&[&h.intermediate, &h.root])).unwrap();
}

#[test]
fn plugin_layout_issues_verifiable_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hierarchy("test");
    write_plugin(tmp.path(), &h);
    let ca = LocalCa::from_plugin_dir(tmp.path(), TD).unwrap();
    assert_eq!(ca.roots(), std::slice::from_ref(&h.root));
    assert_eq!(ca.intermediates(), std::slice::from_ref(&h.intermediate));

    let cert = ca.issue(&id("a", "b"), Duration::from_secs(600)).unwrap();
    assert_eq!(cert.chain().len(), 2);
    assert_eq!(cert.chain()[1], h.intermediate);
    let roots =
        certs_from_pem(&fs::read_to_string(tmp.path().join(ROOT_CERT_FILE)).unwrap()).unwrap();
    verify_now(cert.chain(), &roots);
    // Without the intermediate the leaf does not verify: the chain really goes through it.
    assert_eq!(
        crate::tls::verify_chain(&cert.chain()[..1], &roots, UnixTime::now()),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    );

    // cert-chain.pem without the signing certificate (only the root): same chain.
    fs::write(tmp.path().join(CERT_CHAIN_FILE), pem(&[&h.root])).unwrap();
    let ca = LocalCa::from_plugin_dir(tmp.path(), TD).unwrap();
    assert_eq!(ca.intermediates(), std::slice::from_ref(&h.intermediate));
    verify_now(
        ca.issue(&id("a", "b"), Duration::from_secs(600))
            .unwrap()
            .chain(),
        &roots,
    );
}

#[test]
fn plugin_layout_with_self_signed_signing_cert() {
    // ca-cert.pem is the root itself: no intermediates are presented.
    let tmp = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root = ca_params("root only").self_signed(&key).unwrap();
    fs::write(tmp.path().join(CA_CERT_FILE), root.pem()).unwrap();
    fs::write(tmp.path().join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    fs::write(tmp.path().join(ROOT_CERT_FILE), root.pem()).unwrap();
    fs::write(tmp.path().join(CERT_CHAIN_FILE), "").unwrap();
    let ca = LocalCa::from_plugin_dir(tmp.path(), TD).unwrap();
    assert!(ca.intermediates().is_empty());
    let cert = ca.issue(&id("a", "b"), Duration::from_secs(600)).unwrap();
    assert_eq!(cert.chain().len(), 1);
    verify_now(cert.chain(), ca.roots());
}

#[test]
fn plugin_layout_missing_files_are_named() {
    let h = hierarchy("test");
    for missing in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let tmp = tempfile::tempdir().unwrap();
        write_plugin(tmp.path(), &h);
        fs::remove_file(tmp.path().join(missing)).unwrap();
        let err = LocalCa::from_plugin_dir(tmp.path(), TD).unwrap_err();
        match &err {
            CertError::MissingCaFile { path } => assert_eq!(path, &tmp.path().join(missing)),
            other => panic!("{missing}: unexpected {other:?}"),
        }
        assert!(err.to_string().contains(missing), "{err}");
    }
}

#[test]
fn plugin_layout_rejects_bad_material() {
    let h = hierarchy("test");

    // Key of another certificate.
    let tmp = tempfile::tempdir().unwrap();
    write_plugin(tmp.path(), &h);
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    fs::write(tmp.path().join(CA_KEY_FILE), other_key.serialize_pem()).unwrap();
    assert!(matches!(
        LocalCa::from_plugin_dir(tmp.path(), TD),
        Err(CertError::KeyMismatch)
    ));

    // Unparseable key file.
    fs::write(tmp.path().join(CA_KEY_FILE), "garbage").unwrap();
    match LocalCa::from_plugin_dir(tmp.path(), TD) {
        Err(CertError::CaFile { path, source }) => {
            assert_eq!(path, tmp.path().join(CA_KEY_FILE));
            assert!(matches!(*source, CertError::NoPrivateKey));
        }
        other => panic!("unexpected {other:?}"),
    }

    // Signing certificate that is not a CA.
    let tmp = tempfile::tempdir().unwrap();
    write_plugin(tmp.path(), &h);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::default().self_signed(&leaf_key).unwrap();
    fs::write(tmp.path().join(CA_CERT_FILE), leaf.pem()).unwrap();
    fs::write(tmp.path().join(CA_KEY_FILE), leaf_key.serialize_pem()).unwrap();
    match LocalCa::from_plugin_dir(tmp.path(), TD) {
        Err(CertError::NotCa { path }) => assert_eq!(path, tmp.path().join(CA_CERT_FILE)),
        other => panic!("unexpected {other:?}"),
    }

    // root-cert.pem is not the root of the intermediate.
    let tmp = tempfile::tempdir().unwrap();
    write_plugin(tmp.path(), &h);
    let unrelated = hierarchy("unrelated");
    fs::write(tmp.path().join(ROOT_CERT_FILE), pem(&[&unrelated.root])).unwrap();
    fs::write(tmp.path().join(CERT_CHAIN_FILE), pem(&[&h.intermediate])).unwrap();
    assert!(matches!(
        LocalCa::from_plugin_dir(tmp.path(), TD),
        Err(CertError::ChainInvalid(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )))
    ));

    // Empty root bundle.
    let tmp = tempfile::tempdir().unwrap();
    write_plugin(tmp.path(), &h);
    fs::write(tmp.path().join(ROOT_CERT_FILE), "").unwrap();
    match LocalCa::from_plugin_dir(tmp.path(), TD) {
        Err(CertError::CaFile { path, source }) => {
            assert_eq!(path, tmp.path().join(ROOT_CERT_FILE));
            assert!(matches!(*source, CertError::NoCertificate));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn sign_raw_allows_arbitrary_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(tmp.path(), TD).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
        SanType::URI("spiffe://cluster.local/ns/a/sa/c".try_into().unwrap()),
    ];
    let (chain, key) = ca.sign_raw(params).unwrap();
    verify_now(&chain, ca.roots());
    assert!(matches!(
        WorkloadCertificate::from_der(chain, key),
        Err(CertError::MultipleUriSans { count: 2 })
    ));
}

#[test]
fn plugin_layout_with_rsa_intermediate() {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("rsa test root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let intermediate = ca_params("rsa test intermediate")
        .signed_by(&key, &root_issuer)
        .unwrap();
    let h = Hierarchy {
        root: root.der().clone(),
        intermediate: intermediate.der().clone(),
        intermediate_key: key,
    };
    let tmp = tempfile::tempdir().unwrap();
    write_plugin(tmp.path(), &h);
    let ca = LocalCa::from_plugin_dir(tmp.path(), TD).unwrap();
    let cert = ca.issue(&id("a", "b"), Duration::from_secs(600)).unwrap();
    verify_now(cert.chain(), ca.roots());

    // An RSA key that is not the intermediate's.
    let other =
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    fs::write(tmp.path().join(CA_KEY_FILE), other.serialize_pem()).unwrap();
    assert!(matches!(
        LocalCa::from_plugin_dir(tmp.path(), TD),
        Err(CertError::KeyMismatch)
    ));
}
