//! The CA client against an in-process fake Istio CA (TLS + HTTP/2 on 127.0.0.1:0) that signs
//! CSRs with an `hbone::LocalCa`, or misbehaves on request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::LocalCa;
use hbone::cert::certs_to_pem;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;

use super::testing::{FakeCa, Mode};
use super::*;
use crate::identity::{IdentityError, IdentityManager};
use crate::xds::testing::{self, TestPki, TestServer};

const TTL: Duration = Duration::from_secs(3600);

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

/// A fake CA and a client configured for it.
struct Harness {
    fake: FakeCa,
    client: Arc<CaClient>,
    _server: TestServer,
    _pki: TestPki,
    _dirs: Vec<tempfile::TempDir>,
}

impl Harness {
    async fn start(impersonate: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap());
        let fake = FakeCa::signing(ca.clone());
        let pki = TestPki::new();
        let server = testing::serve(&pki, IstioCertificateServiceServer::new(fake.clone())).await;
        let client = CaClient::new(CaClientConfig {
            control_plane: pki.control_plane(server.addr),
            // The mesh root (workload certificates), distinct here from the serving root.
            trust_roots: RootCert::Pem(certs_to_pem(ca.roots())),
            impersonate,
        });
        Self {
            fake,
            client: Arc::new(client),
            _server: server,
            _pki: pki,
            _dirs: vec![dir],
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.fake.mode.lock().unwrap() = mode;
    }

    fn other_ca(&mut self) -> Arc<LocalCa> {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap());
        self._dirs.push(dir);
        ca
    }
}

#[tokio::test]
async fn issues_a_certificate_for_the_requested_identity() {
    let h = Harness::start(true).await;
    let cert = h.client.fetch(&id("sleep"), TTL).await.unwrap();
    assert_eq!(*cert.identity(), id("sleep"));
    assert_eq!(cert.chain().len(), 1, "the root is not presented");
    let lifetime = cert.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(lifetime > TTL - Duration::from_secs(60) && lifetime <= TTL);

    let seen = h.fake.seen.lock().unwrap();
    let [seen] = seen.as_slice() else {
        panic!("one request");
    };
    let header = |k: &str| seen.metadata.get(k).and_then(|v| v.to_str().ok());
    assert_eq!(header("authorization"), Some("Bearer test-token"));
    assert_eq!(header("clusterid"), Some("Kubernetes"));
    assert_eq!(seen.request.validity_duration, 3600);
    let impersonated = seen
        .request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
        .and_then(|v| v.kind.clone());
    assert_eq!(
        impersonated,
        Some(Kind::StringValue(
            "spiffe://cluster.local/ns/default/sa/sleep".into()
        ))
    );
    // The CSR: exactly one SAN, the SPIFFE URI; an ECDSA P-256 key; no subject.
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&seen.request.csr).unwrap();
    assert_eq!(
        csr.params.subject_alt_names,
        [SanType::URI(
            "spiffe://cluster.local/ns/default/sa/sleep"
                .try_into()
                .unwrap()
        )]
    );
    assert_eq!(*csr.public_key.algorithm(), PKCS_ECDSA_P256_SHA256);
    assert_eq!(csr.params.distinguished_name.iter().count(), 0);
}

#[tokio::test]
async fn dedicated_mode_does_not_impersonate() {
    let h = Harness::start(false).await;
    h.client.fetch(&id("app"), TTL).await.unwrap();
    assert!(h.fake.seen.lock().unwrap()[0].request.metadata.is_none());
}

#[tokio::test]
async fn issued_certificates_terminate_hbone_handshakes() {
    let h = Harness::start(true).await;
    let manager = IdentityManager::new(h.client.clone(), TTL);
    let (client_id, server_id) = (id("sleep"), id("echo"));
    let client_certs = manager.fetch(&client_id).await.unwrap();
    let server_certs = manager.fetch(&server_id).await.unwrap();
    assert_eq!(client_certs.identity(), client_id);
    let roots = h.fake.ca.roots().to_vec();

    let server_config = hbone::tls::server_config(server_certs, &roots).unwrap();
    let client_config =
        hbone::tls::client_config(client_certs, &roots, vec![server_id.clone()]).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let tls = tokio_rustls::TlsAcceptor::from(server_config)
            .accept(b)
            .await
            .unwrap();
        hbone::tls::peer_identity(tls.get_ref().1).unwrap()
    });
    let tls = tokio_rustls::TlsConnector::from(client_config)
        .connect(
            rustls::pki_types::ServerName::try_from("10.0.0.1").unwrap(),
            a,
        )
        .await
        .unwrap();
    assert_eq!(
        hbone::tls::peer_identity(tls.get_ref().1).unwrap(),
        server_id
    );
    // Keep the client side open until the server has read the client certificate.
    assert_eq!(server.await.unwrap(), client_id);
}

#[tokio::test]
async fn leaf_for_another_identity_is_rejected() {
    let h = Harness::start(true).await;
    h.set_mode(Mode::Identity(id("admin")));
    let err = h.client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(
        matches!(&err, CaError::IdentityMismatch { requested, got } if *requested == id("sleep") && *got == id("admin")),
        "{err}"
    );
    assert!(matches!(
        err.into_cert_error("ca"),
        CertError::IdentityChanged { .. }
    ));

    // Through the manager: nothing is installed.
    let manager = IdentityManager::new(h.client.clone(), TTL);
    let err = manager.fetch(&id("sleep")).await.unwrap_err();
    assert!(matches!(
        err,
        IdentityError::Issue {
            source: CertError::IdentityChanged { .. },
            ..
        }
    ));
    assert!(manager.certificates().is_empty());
}

#[tokio::test]
async fn chain_to_another_root_is_rejected() {
    let mut h = Harness::start(true).await;
    let other = h.other_ca();
    h.set_mode(Mode::OtherCa(other));
    let err = h.client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(matches!(err, CaError::UntrustedChain(_)), "{err}");
    assert!(matches!(
        err.into_cert_error("ca"),
        CertError::ChainInvalid(_)
    ));
}

#[tokio::test]
async fn leaf_with_another_key_is_rejected() {
    let h = Harness::start(true).await;
    h.set_mode(Mode::OtherKey(id("sleep")));
    let err = h.client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");
}

#[tokio::test]
async fn empty_chain_is_rejected() {
    let h = Harness::start(true).await;
    h.set_mode(Mode::Empty);
    let err = h.client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(matches!(err, CaError::EmptyChain), "{err}");
}

#[test]
fn malformed_and_oversized_chains_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let key = || {
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
    };
    let err = verify(&id("a"), vec!["garbage".into()], ca.roots(), key()).unwrap_err();
    assert!(matches!(err, CaError::InvalidCertificate(_)), "{err}");
    let leaf = certs_to_pem(ca.issue(&id("a"), TTL).unwrap().chain());
    let err = verify(&id("a"), vec![leaf; MAX_CHAIN_LEN + 1], ca.roots(), key()).unwrap_err();
    assert!(matches!(err, CaError::ChainTooLong(_)), "{err}");
}

#[tokio::test]
async fn ca_down_is_an_error() {
    // Nothing listening.
    let pki = TestPki::new();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let client = CaClient::new(CaClientConfig {
        control_plane: pki.control_plane(port),
        trust_roots: RootCert::Pem(pki.root_pem.clone()),
        impersonate: true,
    });
    let err = client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(
        matches!(err, CaError::Channel(ChannelError::Connect { .. })),
        "{err}"
    );
    match err.into_cert_error("https://istiod:15012") {
        CertError::Io { path, source } => {
            assert_eq!(path, PathBuf::from("https://istiod:15012"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other}"),
    }

    // A CA answering UNAVAILABLE.
    let h = Harness::start(true).await;
    h.set_mode(Mode::Down);
    let err = h.client.fetch(&id("sleep"), TTL).await.unwrap_err();
    assert!(
        matches!(&err, CaError::Status(s) if s.code() == tonic::Code::Unavailable),
        "{err}"
    );
    // The next call reconnects and succeeds once the CA is back.
    h.set_mode(Mode::Sign);
    h.client.fetch(&id("sleep"), TTL).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_keeps_the_current_certificate_while_the_ca_is_down() {
    let h = Harness::start(true).await;
    // Issued certificates start 60 s in the past: with a 66 s TTL the half-life falls about 3 s
    // after issuance.
    let manager = IdentityManager::new(h.client.clone(), Duration::from_secs(66));
    let store = manager.fetch(&id("sleep")).await.unwrap();
    let first = store.current().serial_hex();
    h.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        h.fake.seen.lock().unwrap().len() >= 2,
        "a renewal was attempted"
    );
    assert_eq!(store.current().serial_hex(), first, "old certificate kept");
    assert!(store.current().is_valid_at(SystemTime::now()));

    // Back up: the retry installs a new certificate.
    h.set_mode(Mode::Sign);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.current().serial_hex() == first {
        assert!(tokio::time::Instant::now() < deadline, "not rotated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.identity(), id("sleep"));
}

// === configuration ===

fn env(
    vars: &[(&'static str, &'static str)],
) -> std::collections::HashMap<&'static str, &'static str> {
    vars.iter().copied().collect()
}

#[test]
fn config_from_env() {
    assert!(CaClientConfig::from_env(&env(&[])).unwrap().is_none());
    assert!(
        CaClientConfig::from_env(&env(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("FAKE_CA", "true")
        ]))
        .unwrap()
        .is_none()
    );
    let c = CaClientConfig::from_env(&env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]))
        .unwrap()
        .unwrap();
    assert_eq!(
        c.control_plane.address.to_string(),
        "https://istiod.istio-system.svc:15012/"
    );
    assert!(c.impersonate, "shared mode by default");
    assert_eq!(c.trust_roots, c.control_plane.root_cert);

    let c = CaClientConfig::from_env(&env(&[
        ("CA_ADDRESS", "istiod-ca:15012"),
        ("CA_ROOT_CA", "/etc/ca/root.pem"),
        ("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
        ("AUTH_TOKEN", "static-token"),
        ("CLUSTER_ID", "west"),
        ("PROXY_MODE", "dedicated"),
    ]))
    .unwrap()
    .unwrap()
    .with_prefixed_vars([("CA_HEADER_X_ORG".to_string(), "acme".to_string())])
    .unwrap();
    assert_eq!(
        c.control_plane.address.to_string(),
        "https://istiod-ca:15012/"
    );
    assert_eq!(
        c.control_plane.root_cert,
        RootCert::File("/etc/ca/root.pem".into())
    );
    assert_eq!(
        c.control_plane.alt_hostname.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(
        c.control_plane.token,
        Some(crate::xds::TokenSource::Static("static-token".into()))
    );
    assert_eq!(c.control_plane.cluster_id, "west");
    assert!(!c.impersonate);
    assert_eq!(c.control_plane.headers.len(), 1);
    assert_eq!(c.control_plane.headers[0].0.as_str(), "x_org");

    assert!(matches!(
        CaClientConfig::from_env(&env(&[
            ("CA_ADDRESS", "https://ca:15012"),
            ("PROXY_MODE", "sidecar")
        ])),
        Err(ConfigError::Invalid {
            name: "PROXY_MODE",
            ..
        })
    ));
    assert!(matches!(
        CaClientConfig::from_env(&env(&[("CA_ADDRESS", "http://ca:15010")])),
        Err(ConfigError::Invalid {
            name: "CA_ADDRESS",
            ..
        })
    ));
}
