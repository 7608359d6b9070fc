//! Mutual TLS handshakes over loopback TCP with the HBONE server and client configurations.

// Helpers outside `#[test]` functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbone::ca::LocalCa;
use hbone::cert::{CertError, CertStore};
use hbone::identity::Identity;
use hbone::tls::{self, TlsError};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, CipherSuite, PeerIncompatible, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);
const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA in its own temporary state directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: LocalCa,
}

fn new_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), TD).unwrap();
    Pki { _dir: dir, ca }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa).unwrap()
}

fn server_id() -> Identity {
    id("backend", "server")
}

fn client_id() -> Identity {
    id("frontend", "client")
}

fn store(ca: &LocalCa, identity: &Identity) -> Arc<CertStore> {
    Arc::new(CertStore::new(ca.issue(identity, HOUR).unwrap()))
}

/// The standard pair of configurations: both sides issued by `pki`, the client expecting
/// [`server_id`].
fn configs(pki: &Pki) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let server = tls::server_config(store(&pki.ca, &server_id()), pki.ca.roots()).unwrap();
    let client = tls::client_config(
        store(&pki.ca, &client_id()),
        pki.ca.roots(),
        vec![server_id()],
    )
    .unwrap();
    (server, client)
}

/// Presents a fixed key (or none), bypassing [`CertStore`]'s validation.
#[derive(Debug)]
struct Fixed(Option<Arc<CertifiedKey>>);

impl Fixed {
    fn raw(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self(Some(Arc::new(
            CertifiedKey::from_der(chain, key, &tls::crypto_provider()).unwrap(),
        )))
    }
}

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

impl ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

fn with_server_cert(config: &Arc<rustls::ServerConfig>, cert: Fixed) -> Arc<rustls::ServerConfig> {
    let mut config = (**config).clone();
    config.cert_resolver = Arc::new(cert);
    Arc::new(config)
}

fn with_client_cert(config: &Arc<rustls::ClientConfig>, cert: Fixed) -> Arc<rustls::ClientConfig> {
    let mut config = (**config).clone();
    config.client_auth_cert_resolver = Arc::new(cert);
    Arc::new(config)
}

/// A leaf with the given URI SANs (no identity validation), signed by `ca`.
fn raw_leaf(ca: &LocalCa, uris: &[&str]) -> Fixed {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
        .collect();
    let (chain, key) = ca.sign_raw(params).unwrap();
    Fixed::raw(chain, key)
}

struct Outcome {
    server: io::Result<server::TlsStream<TcpStream>>,
    client: io::Result<client::TlsStream<TcpStream>>,
}

/// Runs one handshake over a fresh loopback connection. The client passes the server's IP as
/// the server name, as the HBONE pool does.
async fn handshake(
    server_config: Arc<rustls::ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config);
    let connector = TlsConnector::from(client_config);
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await
    };
    let client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    };
    let (server, client) = tokio::time::timeout(TIMEOUT, async { tokio::join!(server, client) })
        .await
        .expect("handshake timed out");
    Outcome { server, client }
}

/// The rustls error inside a handshake I/O error.
fn rustls_err(err: &io::Error) -> &rustls::Error {
    tls::rustls_error(err).unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

/// The [`TlsError`] a verifier put inside a handshake I/O error.
fn tls_err(err: &io::Error) -> &TlsError {
    tls::classify_io(err).unwrap_or_else(|| panic!("not a verifier rejection: {err:?}"))
}

fn expect_err<T>(result: io::Result<T>, side: &str) -> io::Error {
    match result {
        Ok(_) => panic!("{side} handshake unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// After the server rejected its certificate, a TLS 1.3 client learns it from the alert on its
/// first read.
async fn client_sees_alert(
    client: io::Result<client::TlsStream<TcpStream>>,
    alert: AlertDescription,
) {
    let err = match client {
        Err(e) => e,
        Ok(mut stream) => {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
                .await
                .expect("read timed out");
            match read {
                Ok(n) => panic!("client read {n} bytes from a server that rejected it"),
                Err(e) => e,
            }
        }
    };
    assert_eq!(rustls_err(&err), &rustls::Error::AlertReceived(alert));
}

/// Sends bytes both ways over an established connection.
async fn exchange(
    server: &mut server::TlsStream<TcpStream>,
    client: &mut client::TlsStream<TcpStream>,
    payload: &[u8],
) {
    client.write_all(payload).await.unwrap();
    client.flush().await.unwrap();
    let mut buf = vec![0u8; payload.len()];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, payload);
    let reply: Vec<u8> = payload.iter().rev().copied().collect();
    server.write_all(&reply).await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, reply);
}

#[tokio::test]
async fn mutual_tls_success() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let out = handshake(server_config, client_config).await;
    let mut server = out.server.unwrap();
    let mut client = out.client.unwrap();

    let server_conn = server.get_ref().1;
    let client_conn = client.get_ref().1;
    assert_eq!(tls::peer_identity(server_conn).unwrap(), client_id());
    assert_eq!(tls::peer_identity(client_conn).unwrap(), server_id());

    for conn in [&**server_conn as &rustls::CommonState, client_conn] {
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        let suite = conn.negotiated_cipher_suite().unwrap().suite();
        assert!(
            [
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
            .contains(&suite),
            "{suite:?}"
        );
    }
    exchange(&mut server, &mut client, b"hello over hbone").await;
}

#[tokio::test]
async fn client_accepts_any_of_several_expected_identities() {
    let pki = new_pki();
    let (server_config, _) = configs(&pki);
    let client_config = tls::client_config(
        store(&pki.ca, &client_id()),
        pki.ca.roots(),
        vec![id("other", "one"), server_id()],
    )
    .unwrap();
    let out = handshake(server_config, client_config).await;
    assert_eq!(
        tls::peer_identity(out.client.unwrap().get_ref().1).unwrap(),
        server_id()
    );
    out.server.unwrap();
}

#[tokio::test]
async fn client_rejects_unexpected_server_identity() {
    let pki = new_pki();
    let (server_config, _) = configs(&pki);
    let expected = vec![id("backend", "someone-else")];
    let client_config = tls::client_config(
        store(&pki.ca, &client_id()),
        pki.ca.roots(),
        expected.clone(),
    )
    .unwrap();
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.client, "client");
    match tls_err(&err) {
        TlsError::IdentityMismatch {
            expected: e,
            presented,
        } => {
            assert_eq!(e, &expected);
            assert_eq!(presented, &server_id());
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = expect_err(out.server, "server");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateUnknown)
    );
}

#[tokio::test]
async fn client_rejects_server_from_another_root() {
    let pki = new_pki();
    let other = new_pki();
    let (_, client_config) = configs(&pki);
    let server_config = tls::server_config(store(&other.ca, &server_id()), pki.ca.roots()).unwrap();
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.client, "client");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    let err = expect_err(out.server, "server");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::AlertReceived(AlertDescription::UnknownCA)
    );
}

#[tokio::test]
async fn server_rejects_client_from_another_root() {
    let pki = new_pki();
    let other = new_pki();
    let (server_config, _) = configs(&pki);
    let client_config = tls::client_config(
        store(&other.ca, &client_id()),
        pki.ca.roots(),
        vec![server_id()],
    )
    .unwrap();
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.server, "server");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    client_sees_alert(out.client, AlertDescription::UnknownCA).await;
}

#[tokio::test]
async fn client_rejects_expired_server_certificate() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let now = SystemTime::now();
    let expired = pki
        .ca
        .issue_with_validity(&server_id(), now - 2 * HOUR, now - HOUR)
        .unwrap();
    let server_config = with_server_cert(&server_config, Fixed(Some(expired.certified_key())));
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.client, "client");
    match rustls_err(&err) {
        rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            assert!(not_after < time);
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = expect_err(out.server, "server");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
    );
}

#[tokio::test]
async fn client_rejects_not_yet_valid_server_certificate() {
    let pki = new_pki();
    let (_, client_config) = configs(&pki);
    let now = SystemTime::now();
    let future = pki
        .ca
        .issue_with_validity(&server_id(), now + HOUR, now + 2 * HOUR)
        .unwrap();
    // The store accepts it (same identity): the check happens at the handshake.
    let server_store = store(&pki.ca, &server_id());
    server_store.replace(future).unwrap();
    let server_config = tls::server_config(server_store, pki.ca.roots()).unwrap();
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.client, "client");
    assert!(
        matches!(
            rustls_err(&err),
            rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
        ),
        "{err:?}"
    );
    expect_err(out.server, "server");
}

/// A store whose (only) certificate expired an hour ago, as after renewals failed until expiry.
fn expired_store(ca: &LocalCa, identity: &Identity) -> Arc<CertStore> {
    let now = SystemTime::now();
    let cert = ca
        .issue_with_validity(identity, now - 2 * HOUR, now - HOUR)
        .unwrap();
    Arc::new(CertStore::new(cert))
}

#[tokio::test]
async fn an_expired_own_server_certificate_is_not_presented() {
    let pki = new_pki();
    let (_, client_config) = configs(&pki);
    let server_config =
        tls::server_config(expired_store(&pki.ca, &server_id()), pki.ca.roots()).unwrap();
    let out = handshake(server_config, client_config.clone()).await;
    // The server has no certificate to present: the handshake fails on both sides.
    let err = expect_err(out.server, "server");
    assert!(
        matches!(rustls_err(&err), rustls::Error::General(_)),
        "{err:?}"
    );
    expect_err(out.client, "client");

    // Another identity of the same node, still valid, is unaffected.
    let valid = tls::server_config(store(&pki.ca, &server_id()), pki.ca.roots()).unwrap();
    let out = handshake(valid, client_config).await;
    out.server.unwrap();
    out.client.unwrap();
}

#[tokio::test]
async fn an_expired_own_client_certificate_is_not_presented() {
    let pki = new_pki();
    let (server_config, _) = configs(&pki);
    let client_config = tls::client_config(
        expired_store(&pki.ca, &client_id()),
        pki.ca.roots(),
        vec![server_id()],
    )
    .unwrap();
    let out = handshake(server_config, client_config).await;
    // No client certificate is sent, and the server requires one.
    let err = expect_err(out.server, "server");
    assert!(
        matches!(rustls_err(&err), rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_rejects_expired_client_certificate() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let now = SystemTime::now();
    let expired = pki
        .ca
        .issue_with_validity(&client_id(), now - 2 * HOUR, now - HOUR)
        .unwrap();
    let client_config = with_client_cert(&client_config, Fixed(Some(expired.certified_key())));
    let out = handshake(server_config, client_config).await;

    let err = expect_err(out.server, "server");
    assert!(
        matches!(
            rustls_err(&err),
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "{err:?}"
    );
    client_sees_alert(out.client, AlertDescription::CertificateExpired).await;
}

#[tokio::test]
async fn client_rejects_server_with_two_uri_sans() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let leaf = raw_leaf(
        &pki.ca,
        &[
            "spiffe://cluster.local/ns/backend/sa/server",
            "spiffe://cluster.local/ns/backend/sa/admin",
        ],
    );
    let out = handshake(with_server_cert(&server_config, leaf), client_config).await;

    let err = expect_err(out.client, "client");
    assert!(
        matches!(
            tls_err(&err),
            TlsError::InvalidPeerIdentity(CertError::MultipleUriSans { count: 2 })
        ),
        "{err:?}"
    );
    let err = expect_err(out.server, "server");
    assert_eq!(
        rustls_err(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateUnknown)
    );
}

#[tokio::test]
async fn client_rejects_server_without_spiffe_identity() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);

    // Only a DNS SAN.
    let mut params = rcgen::CertificateParams::new(vec!["backend.example".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let (chain, key) = pki.ca.sign_raw(params).unwrap();
    let out = handshake(
        with_server_cert(&server_config, Fixed::raw(chain, key)),
        Arc::clone(&client_config),
    )
    .await;
    let err = expect_err(out.client, "client");
    assert!(
        matches!(
            tls_err(&err),
            TlsError::InvalidPeerIdentity(CertError::NoUriSan)
        ),
        "{err:?}"
    );

    // A URI SAN that is not an Istio SPIFFE ID.
    let leaf = raw_leaf(
        &pki.ca,
        &["spiffe://cluster.local/namespace/backend/sa/server"],
    );
    let out = handshake(with_server_cert(&server_config, leaf), client_config).await;
    let err = expect_err(out.client, "client");
    assert!(
        matches!(
            tls_err(&err),
            TlsError::InvalidPeerIdentity(CertError::Identity(
                hbone::identity::IdentityError::WrongKeyword { expected: "ns", .. }
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_rejects_client_with_two_uri_sans() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let leaf = raw_leaf(
        &pki.ca,
        &[
            "spiffe://cluster.local/ns/frontend/sa/client",
            "spiffe://cluster.local/ns/frontend/sa/other",
        ],
    );
    let out = handshake(server_config, with_client_cert(&client_config, leaf)).await;

    let err = expect_err(out.server, "server");
    assert!(
        matches!(
            tls_err(&err),
            TlsError::InvalidPeerIdentity(CertError::MultipleUriSans { count: 2 })
        ),
        "{err:?}"
    );
    client_sees_alert(out.client, AlertDescription::CertificateUnknown).await;
}

#[tokio::test]
async fn server_requires_a_client_certificate() {
    let pki = new_pki();
    let (server_config, client_config) = configs(&pki);
    let out = handshake(server_config, with_client_cert(&client_config, Fixed(None))).await;

    let err = expect_err(out.server, "server");
    assert_eq!(rustls_err(&err), &rustls::Error::NoCertificatesPresented);
    client_sees_alert(out.client, AlertDescription::CertificateRequired).await;
}

/// A TLS 1.2 ClientHello, optionally with a `supported_versions` extension listing only TLS 1.2,
/// offering ECDHE-ECDSA/RSA AES-GCM suites and ALPN h2.
fn tls12_client_hello(with_supported_versions: bool) -> Vec<u8> {
    let mut extensions: Vec<u8> = Vec::new();
    // supported_groups: x25519, secp256r1
    extensions.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed
    extensions.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    extensions.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
    ]);
    // application_layer_protocol_negotiation: h2
    extensions.extend([0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2']);
    if with_supported_versions {
        // supported_versions: TLS 1.2 only
        extensions.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x03]);
    }

    let mut body: Vec<u8> = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend([0x5a; 32]); // random
    body.push(0); // empty session id
    // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    // TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    body.extend([0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c]);
    body.extend([0x01, 0x00]); // null compression
    body.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);

    let mut handshake = vec![0x01]; // client_hello
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);

    let mut record = vec![0x16, 0x03, 0x01]; // handshake record
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls12_only_client_cannot_connect() {
    let pki = new_pki();
    let (server_config, _) = configs(&pki);
    for (with_supported_versions, reason) in [
        (false, PeerIncompatible::SupportedVersionsExtensionRequired),
        (true, PeerIncompatible::Tls12NotOfferedOrEnabled),
    ] {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::clone(&server_config));
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await
        };
        let client = async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&tls12_client_hello(with_supported_versions))
                .await
                .unwrap();
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await.unwrap();
            response
        };
        let (server, response) =
            tokio::time::timeout(TIMEOUT, async { tokio::join!(server, client) })
                .await
                .expect("timed out");

        let err = expect_err(server, "server");
        assert_eq!(rustls_err(&err), &rustls::Error::PeerIncompatible(reason));
        // One plaintext fatal protocol_version alert, then the connection is closed.
        assert_eq!(response.len(), 7, "{response:02x?}");
        assert_eq!(response[0], 0x15, "alert record");
        assert_eq!(
            &response[3..],
            &[0x00, 0x02, 0x02, 70],
            "fatal protocol_version"
        );
    }
}

#[tokio::test]
async fn rotation_applies_to_new_handshakes_only() {
    let pki = new_pki();
    let server_store = store(&pki.ca, &server_id());
    let client_store = store(&pki.ca, &client_id());
    let server_config = tls::server_config(Arc::clone(&server_store), pki.ca.roots()).unwrap();
    let client_config =
        tls::client_config(Arc::clone(&client_store), pki.ca.roots(), vec![server_id()]).unwrap();

    let old_server = server_store.current();
    let old_client = client_store.current();
    let out = handshake(Arc::clone(&server_config), Arc::clone(&client_config)).await;
    let mut server1 = out.server.unwrap();
    let mut client1 = out.client.unwrap();
    exchange(&mut server1, &mut client1, b"before rotation").await;

    let new_server = pki.ca.issue(&server_id(), HOUR).unwrap();
    let new_client = pki.ca.issue(&client_id(), HOUR).unwrap();
    assert_ne!(new_server.serial_hex(), old_server.serial_hex());
    server_store.replace(new_server.clone()).unwrap();
    client_store.replace(new_client.clone()).unwrap();

    let out = handshake(server_config, client_config).await;
    let mut server2 = out.server.unwrap();
    let mut client2 = out.client.unwrap();
    let leaf_seen_by_client = &client2.get_ref().1.peer_certificates().unwrap()[0];
    let leaf_seen_by_server = &server2.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(leaf_seen_by_client, &new_server.chain()[0]);
    assert_eq!(leaf_seen_by_server, &new_client.chain()[0]);
    assert_eq!(
        serial_of(leaf_seen_by_client),
        new_server.serial_hex(),
        "new handshake presents the new serial"
    );
    exchange(&mut server2, &mut client2, b"new connection").await;

    // The connection established before the swap is unaffected.
    assert_eq!(
        serial_of(&client1.get_ref().1.peer_certificates().unwrap()[0]),
        old_server.serial_hex()
    );
    assert_eq!(
        &server1.get_ref().1.peer_certificates().unwrap()[0],
        &old_client.chain()[0]
    );
    exchange(
        &mut server1,
        &mut client1,
        b"after rotation, old connection",
    )
    .await;

    // Rotation to another identity is refused and changes nothing.
    let intruder = pki.ca.issue(&id("backend", "intruder"), HOUR).unwrap();
    assert!(matches!(
        server_store.replace(intruder),
        Err(CertError::IdentityChanged { .. })
    ));
    assert_eq!(server_store.current().serial_hex(), new_server.serial_hex());
}

fn serial_of(cert: &CertificateDer<'_>) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn peer_identity_requires_a_certificate() {
    // A connection that has not handshaken has no peer certificate.
    let pki = new_pki();
    let (_, client_config) = configs(&pki);
    let conn = rustls::ClientConnection::new(
        client_config,
        ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into()),
    )
    .unwrap();
    assert!(matches!(
        tls::peer_identity(&conn),
        Err(TlsError::NoPeerCertificate)
    ));
}
