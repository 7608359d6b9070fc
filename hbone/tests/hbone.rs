//! End-to-end tests of HBONE tunnels through real sockets on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hbone::server::serve_connection;
use hbone::{
    CertStore, Config, Error, Identity, InboundRequest, LocalCa, Pool, Responder, Server, Shutdown,
    TunnelRequest, headers,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Mesh {
    _dir: tempfile::TempDir,
    ca: LocalCa,
    client_id: Identity,
    server_id: Identity,
    client: Arc<CertStore>,
    server: Arc<CertStore>,
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let client_id = Identity::new("cluster.local", "default", "sleep").unwrap();
    let server_id = Identity::new("cluster.local", "default", "httpbin").unwrap();
    let client = Arc::new(CertStore::new(
        ca.issue(&client_id, Duration::from_secs(3600)).unwrap(),
    ));
    let server = Arc::new(CertStore::new(
        ca.issue(&server_id, Duration::from_secs(3600)).unwrap(),
    ));
    Mesh {
        _dir: dir,
        ca,
        client_id,
        server_id,
        client,
        server,
    }
}

impl Mesh {
    fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        hbone::tls::server_config(self.server.clone(), self.ca.roots()).unwrap()
    }

    fn pool(&self, config: Config) -> Pool {
        Pool::new(config, self.ca.roots().to_vec()).unwrap()
    }

    /// Opens a tunnel from the client workload to the server at `addr`.
    async fn open(&self, pool: &Pool, addr: SocketAddr) -> hbone::Tunnel {
        self.try_open(pool, addr).await.unwrap()
    }

    /// Tries to open a tunnel from the client workload to the server at `addr`.
    async fn try_open(&self, pool: &Pool, addr: SocketAddr) -> Result<hbone::Tunnel, Error> {
        pool.connect(
            &self.client,
            vec![self.server_id.clone()],
            addr,
            &TunnelRequest::new(addr),
        )
        .await
    }

    /// Asserts that a new connection to the server at `addr` is refused (its listener closed).
    async fn assert_refused(&self, addr: SocketAddr) {
        let err = self
            .try_open(&self.pool(Config::default()), addr)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "got {err:?}");
    }
}

/// Writes `msg`, half-closes, and returns everything the server sends back.
async fn finish(stream: &mut hbone::H2Stream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    got
}

/// What the server saw of one request: authority, peer identity, forwarded-for, baggage, and
/// whether a traceparent came along.
type SeenRequest = (
    String,
    Identity,
    Option<SocketAddr>,
    Vec<(String, String)>,
    bool,
);

/// Echoes every tunnel back to its client, recording what it saw.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
}

async fn echo(seen: Seen, req: InboundRequest, responder: Responder) {
    seen.requests.lock().unwrap().push((
        req.authority.to_string(),
        req.peer_identity.clone(),
        req.forwarded_for(),
        req.baggage(),
        req.traceparent().is_some(),
    ));
    seen.peers.lock().unwrap().insert(req.peer_addr);
    let mut stream = responder.accept(http::HeaderMap::new()).unwrap();
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

async fn start_server<H: hbone::Handler>(
    mesh: &Mesh,
    config: Config,
    handler: H,
) -> (SocketAddr, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config, mesh.server_tls(), handler).unwrap();
    let shutdown = Shutdown::default();
    tokio::spawn(server.run(listener, shutdown.clone(), Duration::from_secs(5)));
    (addr, shutdown)
}

fn echo_handler(seen: Seen) -> impl hbone::Handler {
    move |req, resp| echo(seen.clone(), req, resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_carries_identities_and_headers() {
    let m = mesh();
    let seen = Seen::default();
    let (addr, _shutdown) = start_server(&m, Config::default(), echo_handler(seen.clone())).await;
    let pool = m.pool(Config::default());
    let client_addr: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let request = TunnelRequest::new("10.9.9.9:8080".parse().unwrap())
        .header(
            headers::FORWARDED,
            headers::forwarded(client_addr, None).unwrap(),
        )
        .header(
            headers::BAGGAGE,
            headers::baggage([("k8s.namespace.name", "default")]).unwrap(),
        )
        .header(
            headers::TRACEPARENT,
            headers::TraceParent::random().to_header(),
        );
    let mut tunnel = pool
        .connect(&m.client, vec![m.server_id.clone()], addr, &request)
        .await
        .unwrap();
    assert_eq!(tunnel.peer_identity, m.server_id);
    // A pooled tunnel is counted by its pool slot; only served streams count extra writers.
    assert!(tunnel.stream.count_another_writer().is_none());

    tunnel
        .stream
        .write_all(b"hello through the mesh")
        .await
        .unwrap();
    tunnel.stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tunnel.stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello through the mesh");

    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (authority, peer, forwarded, baggage, has_trace) = &requests[0];
    assert_eq!(authority, "10.9.9.9:8080");
    assert_eq!(peer, &m.client_id);
    assert_eq!(*forwarded, Some(client_addr));
    assert_eq!(
        baggage,
        &vec![("k8s.namespace.name".to_string(), "default".to_string())]
    );
    assert!(has_trace);
}

/// A deterministic byte source (xorshift), so both ends can be compared without storing 1 GiB.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_one_tunnel_arrives_intact() {
    const TOTAL: usize = 1 << 30;
    let m = mesh();
    // The server hashes everything it receives and answers with the digest.
    let handler = |_req: InboundRequest, responder: Responder| async move {
        let mut stream = responder.accept(http::HeaderMap::new()).unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            hasher.update(&buf[..n]);
        }
        stream
            .write_all(&(total as u64).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&hasher.finalize()).await.unwrap();
        stream.shutdown().await.unwrap();
    };
    let (addr, _shutdown) = start_server(&m, Config::default(), handler).await;
    let pool = m.pool(Config::default());
    let mut tunnel = m.open(&pool, addr).await;
    let mut hasher = Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < TOTAL {
        fill(&mut state, &mut buf);
        tunnel.stream.write_all(&buf).await.unwrap();
        hasher.update(&buf);
        sent += buf.len();
    }
    tunnel.stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tunnel.stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer.len(), 8 + 32);
    assert_eq!(
        u64::from_be_bytes(answer[..8].try_into().unwrap()),
        TOTAL as u64
    );
    assert_eq!(&answer[8..], hasher.finalize().as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_delivers_the_whole_response() {
    let m = mesh();
    // Reads the request to EOF first, then answers with 3 MiB: the client has already shut its
    // write side when the response starts.
    let handler = |_req: InboundRequest, responder: Responder| async move {
        let mut stream = responder.accept(http::HeaderMap::new()).unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"GET / please");
        stream.write_all(&vec![b'r'; 3 << 20]).await.unwrap();
        stream.shutdown().await.unwrap();
    };
    let (addr, _shutdown) = start_server(&m, Config::default(), handler).await;
    let pool = m.pool(Config::default());
    let mut tunnel = m.open(&pool, addr).await;
    let response = finish(&mut tunnel.stream, b"GET / please").await;
    assert_eq!(response.len(), 3 << 20);
    assert!(response.iter().all(|b| *b == b'r'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_status_reaches_the_client() {
    let m = mesh();
    let handler = |req: InboundRequest, responder: Responder| async move {
        match req.target().map(|t| t.port()) {
            Ok(1) => responder.reject(http::StatusCode::UNAUTHORIZED),
            Ok(2) => responder.reject(http::StatusCode::SERVICE_UNAVAILABLE),
            _ => drop(responder),
        }
    };
    let (addr, _shutdown) = start_server(&m, Config::default(), handler).await;
    let pool = m.pool(Config::default());
    for (port, want) in [(1, 401), (2, 503), (3, 500)] {
        let target = SocketAddr::new(addr.ip(), port);
        let err = pool
            .connect(
                &m.client,
                vec![m.server_id.clone()],
                addr,
                &TunnelRequest::new(target),
            )
            .await
            .unwrap_err();
        match err {
            Error::Status(s) => assert_eq!(s.as_u16(), want),
            other => panic!("port {port}: expected status {want}, got {other:?}"),
        }
    }
}

fn handshake_error(err: Error) -> rustls::Error {
    match err {
        Error::Handshake(e) => e,
        other => panic!("expected a TLS handshake error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_server_certificates_are_rejected_with_specific_errors() {
    use rustls::CertificateError;
    let m = mesh();
    let seen = Seen::default();
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = LocalCa::load_or_generate(other_dir.path(), "cluster.local").unwrap();
    let pool = m.pool(Config::default());
    let now = SystemTime::now();

    // Wrong root: the server's certificate comes from another CA.
    let foreign = Arc::new(CertStore::new(
        other_ca
            .issue(&m.server_id, Duration::from_secs(3600))
            .unwrap(),
    ));
    let expired = Arc::new(CertStore::new(
        m.ca.issue_with_validity(
            &m.server_id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap(),
    ));
    let (chain, key) = {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(m.server_id.to_string()).unwrap(),
            ),
            rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/other")
                    .unwrap(),
            ),
        ];
        m.ca.sign_raw(params).unwrap()
    };
    type Check = Box<dyn Fn(&rustls::Error) -> bool>;
    let cases: Vec<(&str, Arc<rustls::ServerConfig>, Check)> = vec![
        (
            "wrong root",
            hbone::tls::server_config(foreign, m.ca.roots()).unwrap(),
            Box::new(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                )
            }),
        ),
        (
            // The server does not present its expired certificate at all (fail closed); a
            // client's own check of an expired peer is covered in tests/tls.rs.
            "expired",
            hbone::tls::server_config(expired, m.ca.roots()).unwrap(),
            Box::new(|e| {
                matches!(
                    e,
                    rustls::Error::AlertReceived(rustls::AlertDescription::AccessDenied)
                )
            }),
        ),
        (
            "wrong SAN",
            m.server_tls(),
            Box::new(|e| {
                matches!(
                    hbone::tls::classify(e),
                    Some(hbone::tls::TlsError::IdentityMismatch { .. })
                )
            }),
        ),
    ];
    for (name, tls, check) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(Config::default(), tls, echo_handler(seen.clone())).unwrap();
        tokio::spawn(server.run(listener, Shutdown::default(), Duration::from_secs(1)));
        let expected = if name == "wrong SAN" {
            vec![Identity::new("cluster.local", "default", "not-httpbin").unwrap()]
        } else {
            vec![m.server_id.clone()]
        };
        let err = pool
            .connect(&m.client, expected, addr, &TunnelRequest::new(addr))
            .await
            .unwrap_err();
        let tls_err = handshake_error(err);
        assert!(check(&tls_err), "{name}: unexpected error {tls_err:?}");
    }

    // A server leaf with two URI SANs.
    let two_sans = hbone::WorkloadCertificate::from_der(chain, key);
    match two_sans {
        // Refused at load time already: the store can never hold it.
        Err(_) => {}
        Ok(_) => panic!("a certificate with two URI SANs must not load as a workload certificate"),
    }
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "no tunnel may open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_two_uri_sans_is_rejected_by_the_server() {
    let m = mesh();
    let seen = Seen::default();
    let (addr, _shutdown) = start_server(&m, Config::default(), echo_handler(seen.clone())).await;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(rcgen::string::Ia5String::try_from(m.client_id.to_string()).unwrap()),
        rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://cluster.local/ns/default/sa/other")
                .unwrap(),
        ),
    ];
    let (chain, key) = m.ca.sign_raw(params).unwrap();
    // Speak TLS directly: a workload certificate with two SANs cannot even be built.
    let mut roots = rustls::RootCertStore::empty();
    for r in m.ca.roots() {
        roots.add(r.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    // TLS 1.3: the client finishes first; the server's rejection arrives as an alert on read.
    let result = async {
        let mut tls = connector.connect(name, tcp).await?;
        let mut buf = [0u8; 1];
        tls.read(&mut buf).await
    }
    .await;
    assert!(result.is_err(), "server must refuse the client certificate");
    assert!(seen.requests.lock().unwrap().is_empty());
}

#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a raw TLS + HTTP/2 connection as the mesh client (for requests the pool never sends).
async fn raw_h2(m: &Mesh, addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let config =
        hbone::tls::client_config(m.client.clone(), m.ca.roots(), vec![m.server_id.clone()])
            .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_connect_requests_get_400() {
    let m = mesh();
    let seen = Seen::default();
    let (addr, _shutdown) = start_server(&m, Config::default(), echo_handler(seen.clone())).await;
    let send = raw_h2(&m, addr).await;
    for method in [http::Method::GET, http::Method::POST] {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(format!("https://{addr}/"))
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 400, "{method}");
    }
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "the handler never sees them"
    );
}

/// Opens `n` tunnels at once, holds them all open, and returns how many distinct TCP
/// connections the server saw.
async fn concurrent_tunnels(n: usize, client: Config, server: Config) -> (u64, usize) {
    let m = mesh();
    let seen = Seen::default();
    let (addr, _shutdown) = start_server(&m, server, echo_handler(seen.clone())).await;
    let pool = m.pool(client);
    let opens = (0..n).map(|i| {
        let pool = pool.clone();
        let (certs, ids) = (m.client.clone(), vec![m.server_id.clone()]);
        async move {
            let target = SocketAddr::new(addr.ip(), 1000 + i as u16);
            let mut t = pool
                .connect(&certs, ids, addr, &TunnelRequest::new(target))
                .await
                .unwrap();
            t.stream.write_all(&[i as u8]).await.unwrap();
            let mut b = [0u8; 1];
            t.stream.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i as u8);
            t
        }
    });
    let tunnels = futures_util::future::join_all(opens).await;
    assert_eq!(tunnels.len(), n);
    assert_eq!(seen.requests.lock().unwrap().len(), n);
    let peers = seen.peers.lock().unwrap().len();
    (pool.connections_opened(), peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams_use_exactly_ceil_n_over_limit_connections() {
    let (opened, server_saw) = concurrent_tunnels(1000, Config::default(), Config::default()).await;
    assert_eq!(opened, 10);
    assert_eq!(server_saw, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_never_exceeds_the_servers_settings() {
    let server = Config {
        server_max_concurrent_streams: 30,
        ..Config::default()
    };
    let (opened, server_saw) = concurrent_tunnels(300, Config::default(), server).await;
    assert_eq!(opened, 10, "300 tunnels / 30 per connection");
    assert_eq!(server_saw, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_moves_new_streams_to_a_new_connection_without_failures() {
    let m = mesh();
    let seen = Seen::default();
    let handler = Arc::new(echo_handler(seen.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = m.server_tls();
    // Our own accept loop: each connection gets its own shutdown, so one can be drained while
    // the listener keeps accepting.
    let drains: Arc<Mutex<Vec<Shutdown>>> = Arc::default();
    let d = drains.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let shutdown = Shutdown::default();
            d.lock().unwrap().push(shutdown.clone());
            let (tls, handler) = (tls.clone(), handler.clone());
            tokio::spawn(async move {
                serve_connection(&Config::default(), tls, tcp, handler, shutdown).await
            });
        }
    });
    let pool = m.pool(Config::default());
    let mut first = m.open(&pool, addr).await;
    // Short tunnels keep being opened while the server drains the first connection.
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for _ in 0..8 {
        let (pool, certs, ids, failures, stop) = (
            pool.clone(),
            m.client.clone(),
            vec![m.server_id.clone()],
            failures.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.is_cancelled() && done < 10_000 {
                match pool
                    .connect(&certs, ids.clone(), addr, &TunnelRequest::new(addr))
                    .await
                {
                    Ok(mut t) => {
                        t.stream.write_all(b"ping").await.unwrap();
                        t.stream.shutdown().await.unwrap();
                        let mut b = Vec::new();
                        t.stream.read_to_end(&mut b).await.unwrap();
                        assert_eq!(b, b"ping");
                    }
                    Err(e) => {
                        eprintln!("tunnel failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pool.connections_opened(),
        1,
        "all load shares the first connection"
    );
    drains.lock().unwrap()[0].drain.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no tunnel fails across the GOAWAY"
    );
    assert_eq!(
        pool.connections_opened(),
        2,
        "new tunnels moved to exactly one new connection"
    );
    // The tunnel opened before the GOAWAY still works, then finishes normally.
    let b = finish(&mut first.stream, b"still here").await;
    assert_eq!(b, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_connection_keeps_tunnels_and_new_handshakes_use_the_new_certificate() {
    let m = mesh();
    // The server starts with a certificate that expires in two seconds.
    let short = m.ca.issue(&m.server_id, Duration::from_secs(2)).unwrap();
    let server_certs = Arc::new(CertStore::new(short));
    let tls = hbone::tls::server_config(server_certs.clone(), m.ca.roots()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(Config::default(), tls, echo_handler(Seen::default())).unwrap();
    tokio::spawn(server.run(listener, Shutdown::default(), Duration::from_secs(1)));

    let pool = m.pool(Config::default());
    let mut before = m.open(&pool, addr).await;
    before.stream.write_all(b"one").await.unwrap();

    server_certs
        .replace(m.ca.issue(&m.server_id, Duration::from_secs(3600)).unwrap())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The old certificate has expired: a fresh handshake only succeeds with the new one.
    let fresh = m.pool(Config::default());
    let mut after = m
        .try_open(&fresh, addr)
        .await
        .expect("new handshake presents the rotated certificate");
    let got = finish(&mut after.stream, b"two").await;
    assert_eq!(got, b"two");

    // The connection established before the rotation still carries its tunnel.
    let got = finish(&mut before.stream, b" and more").await;
    assert_eq!(got, b"one and more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_closes_a_silent_client() {
    let m = mesh();
    let config = Config {
        tls_handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (addr, _shutdown) = start_server(&m, config, echo_handler(Seen::default())).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Say nothing; the server must hang up on its own.
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
    assert!(closed, "server kept a silent client open: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_server_port_never_panics() {
    let m = mesh();
    let seen = Seen::default();
    let handler = Arc::new(echo_handler(seen.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = m.server_tls();
    let config = Config {
        tls_handshake_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let (results_tx, mut results_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, handler, config, tx) = (
                tls.clone(),
                handler.clone(),
                config.clone(),
                results_tx.clone(),
            );
            let task = tokio::spawn(async move {
                serve_connection(&config, tls, tcp, handler, Shutdown::default()).await
            });
            tokio::spawn(async move {
                let _ = tx.send(task.await.map(|_| ()));
            });
        }
    });
    let mut state = 42u64;
    let mut inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb],
        vec![0x16, 0x03, 0x03, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00],
        Vec::new(),
    ];
    for len in [1, 7, 100, 5000, 70_000] {
        let mut v = vec![0u8; len];
        fill(&mut state, &mut v);
        inputs.push(v);
    }
    let count = inputs.len();
    for input in inputs {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(&input).await;
        let _ = tcp.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut sink)).await;
    }
    for _ in 0..count {
        let result = tokio::time::timeout(Duration::from_secs(5), results_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "a connection task panicked: {result:?}");
    }
    // And the server still serves real clients.
    let pool = m.pool(Config::default());
    let mut t = m.open(&pool, addr).await;
    let got = finish(&mut t.stream, b"ok").await;
    assert_eq!(got, b"ok");
    // Closing the pool's connection ends its server task normally too.
    drop(t);
    drop(pool);
    let result = tokio::time::timeout(Duration::from_secs(5), results_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_released() {
    let m = mesh();
    let (addr, _shutdown) =
        start_server(&m, Config::default(), echo_handler(Seen::default())).await;
    let config = Config {
        pool_unused_release_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let pool = m.pool(config);
    for round in 1..=2u64 {
        let mut t = m.open(&pool, addr).await;
        t.stream.shutdown().await.unwrap();
        let mut b = Vec::new();
        t.stream.read_to_end(&mut b).await.unwrap();
        drop(t);
        assert_eq!(pool.connections_pooled(), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            pool.connections_pooled(),
            0,
            "round {round}: idle connection released"
        );
        assert_eq!(pool.connections_opened(), round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_inflight_tunnels_finish_and_refuses_new_connections() {
    let m = mesh();
    let (addr, shutdown) = start_server(&m, Config::default(), echo_handler(Seen::default())).await;
    let pool = m.pool(Config::default());
    let mut t = m.open(&pool, addr).await;
    shutdown.drain.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // In flight: keeps working after the GOAWAY.
    let got = finish(&mut t.stream, b"finishing").await;
    assert_eq!(got, b"finishing");
    // New: the listener is closed.
    m.assert_refused(addr).await;
}

/// A relay to an HBONE server that can go silent: the sockets stay open but nothing is
/// forwarded any more, as when a peer node disappears without closing its connections.
struct FreezingRelay {
    addr: SocketAddr,
    /// Cancelled: stop forwarding.
    freeze: tokio_util::sync::CancellationToken,
    /// The sockets of the frozen connections, kept open.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl FreezingRelay {
    async fn start(server: SocketAddr) -> Self {
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = relay.local_addr().unwrap();
        let freeze = tokio_util::sync::CancellationToken::new();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, h) = (freeze.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((mut a, _)) = relay.accept().await {
                let mut b = TcpStream::connect(server).await.unwrap();
                let (f, h) = (f.clone(), h.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = f.cancelled() => {}
                    }
                    h.lock().unwrap().extend([a, b]);
                });
            }
        });
        Self { addr, freeze, held }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_left_open_past_the_drain_deadline_is_closed() {
    let m = mesh();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(
        Config::default(),
        m.server_tls(),
        echo_handler(Seen::default()),
    )
    .unwrap();
    let shutdown = Shutdown::default();
    let deadline = Duration::from_millis(300);
    let run = tokio::spawn(server.run(listener, shutdown.clone(), deadline));
    let pool = m.pool(Config::default());
    let mut t = m.open(&pool, addr).await;
    t.stream.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    t.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    let drained = std::time::Instant::now();
    shutdown.drain.cancel();
    // Within the deadline the tunnel still works.
    tokio::time::sleep(Duration::from_millis(100)).await;
    t.stream.write_all(b"during").await.unwrap();
    t.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    // The connection got a GOAWAY: no new tunnel on it (and the listener is closed).
    assert!(m.try_open(&pool, addr).await.is_err());
    // It is never finished: the deadline closes it, and the server's run ends.
    let read = tokio::time::timeout(Duration::from_secs(5), t.stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed at the drain deadline: {read:?}"
    );
    assert!(drained.elapsed() >= deadline, "{:?}", drained.elapsed());
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the server's run ends after the deadline")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_tears_down_a_connection_whose_client_stops_answering_pings() {
    let m = mesh();
    // The handler reports when its tunnel ends, and how.
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |_req: InboundRequest, responder: Responder| {
        let ended = ended_tx.clone();
        async move {
            let mut stream = responder.accept(http::HeaderMap::new()).unwrap();
            let (mut r, mut w) = tokio::io::split(&mut stream);
            let result = tokio::io::copy(&mut r, &mut w).await;
            let _ = ended.send(result.map_err(|e| e.kind()));
        }
    };
    let server_config = Config {
        keepalive_interval: Some(Duration::from_millis(100)),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (server, _shutdown) = start_server(&m, server_config, handler).await;
    let relay = FreezingRelay::start(server).await;
    // The client sends no PINGs of its own.
    let pool = m.pool(Config {
        keepalive_interval: None,
        ..Config::default()
    });
    let mut t = m.open(&pool, relay.addr).await;
    let mut buf = [0u8; 5];
    t.stream.write_all(b"alive").await.unwrap();
    t.stream.read_exact(&mut buf).await.unwrap();
    // Several of the server's keepalive rounds pass while the client still answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ended_rx.try_recv().is_err(), "the tunnel is still up");

    relay.freeze.cancel();
    // The client neither closes nor sends anything: only the server can end the tunnel.
    let ended = tokio::time::timeout(Duration::from_secs(3), ended_rx.recv()).await;
    assert!(
        matches!(ended, Ok(Some(_))),
        "the server's side of the tunnel ends once its pings go unanswered: {ended:?}"
    );
    assert!(!relay.held.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_keepalive_tears_down_a_dead_connection() {
    let m = mesh();
    let (server, _shutdown) =
        start_server(&m, Config::default(), echo_handler(Seen::default())).await;
    let relay = FreezingRelay::start(server).await;
    let config = Config {
        keepalive_interval: Some(Duration::from_millis(100)),
        keepalive_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let pool = m.pool(config);
    let mut t = m.open(&pool, relay.addr).await;
    let mut buf = [0u8; 5];
    t.stream.write_all(b"alive").await.unwrap();
    t.stream.read_exact(&mut buf).await.unwrap();
    // Several keepalive rounds pass while the peer still answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.connections_pooled(), 1);

    relay.freeze.cancel();
    let read = tokio::time::timeout(Duration::from_secs(3), t.stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the tunnel fails once pings go unanswered: {read:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pool.connections_pooled(),
        0,
        "the dead connection left the pool"
    );
    assert!(!relay.held.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_tunnel_proxies_both_ways_with_half_close_and_counts_bytes() {
    const UP: usize = 24 << 20;
    const DOWN: usize = 40 << 20;
    let m = mesh();
    // The application behind the server: reads the whole request, then answers with its digest
    // followed by DOWN bytes of pattern.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut request = Vec::new();
        s.read_to_end(&mut request).await.unwrap();
        s.write_all(&Sha256::digest(&request)).await.unwrap();
        let mut state = 7u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..DOWN >> 20 {
            fill(&mut state, &mut chunk);
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
    // The server node proxies each tunnel to the application, as ztunnel's inbound does.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |req: InboundRequest, responder: Responder| {
        let done_tx = done_tx.clone();
        async move {
            let mut app = TcpStream::connect(req.target().unwrap()).await.unwrap();
            let mut tunnel = responder.accept(http::HeaderMap::new()).unwrap();
            let counters = Arc::new(hbone::copy::ByteCounters::default());
            let t = hbone::copy::copy_tunnel(&mut app, &mut tunnel, Some(counters.clone()))
                .await
                .unwrap();
            let _ = done_tx.send((t, counters));
        }
    };
    let (addr, _shutdown) = start_server(&m, Config::default(), handler).await;
    let pool = m.pool(Config::default());
    let t = pool
        .connect(
            &m.client,
            vec![m.server_id.clone()],
            addr,
            &TunnelRequest::new(app_addr),
        )
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(t.stream);
    let writer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut state = 99u64;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..UP >> 20 {
            fill(&mut state, &mut chunk);
            hasher.update(&chunk);
            wr.write_all(&chunk).await.unwrap();
        }
        wr.shutdown().await.unwrap();
        hasher.finalize()
    });
    let mut response = Vec::new();
    rd.read_to_end(&mut response).await.unwrap();
    let sent_digest = writer.await.unwrap();
    assert_eq!(response.len(), 32 + DOWN);
    assert_eq!(
        &response[..32],
        sent_digest.as_slice(),
        "the application got every byte"
    );
    let mut expected = vec![0u8; DOWN];
    fill(&mut 7u64, &mut expected);
    assert!(
        response[32..] == expected[..],
        "the response arrived intact"
    );

    let (t, counters) = done_rx.recv().await.unwrap();
    // a = the application socket, b = the tunnel.
    assert_eq!(t.b_to_a, UP as u64);
    assert_eq!(t.a_to_b, (32 + DOWN) as u64);
    assert_eq!(counters.b_to_a.load(Ordering::Relaxed), UP as u64);
    assert_eq!(counters.a_to_b.load(Ordering::Relaxed), (32 + DOWN) as u64);
}

/// One served tunnel: its client's address, and the worker it was on when it started and
/// when it ended.
type ServedOn = (SocketAddr, Option<usize>, Option<usize>);

/// Which worker served each tunnel, by the tunnel's client connection.
#[derive(Clone, Default)]
struct OnWorkers {
    served: Arc<Mutex<Vec<ServedOn>>>,
}

impl hbone::Handler for OnWorkers {
    async fn handle(&self, req: InboundRequest, responder: Responder) {
        let before = hbone::workers::current();
        let mut stream = responder.accept(http::HeaderMap::new()).unwrap();
        // A task the handler spawns runs on the same worker.
        let spawned = tokio::spawn(async { hbone::workers::current() })
            .await
            .unwrap();
        assert_eq!(spawned, before);
        let (mut r, mut w) = tokio::io::split(&mut stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
        self.served
            .lock()
            .unwrap()
            .push((req.peer_addr, before, hbone::workers::current()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_each_connection_on_one_worker_in_turn_and_drain() {
    let m = mesh();
    let workers =
        hbone::Workers::start(std::num::NonZeroUsize::new(2).unwrap(), "hbone-w").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = OnWorkers::default();
    let server = Server::new(Config::default(), m.server_tls(), handler.clone()).unwrap();
    let shutdown = Shutdown::default();
    let serve = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            server
                .run_on(listener, &workers, shutdown, Duration::from_secs(5))
                .await;
        })
    };
    // Four client connections (one pool each), three tunnels on each.
    let mut pools = Vec::new();
    for c in 0..4u8 {
        let pool = m.pool(Config::default());
        for t in 0..3u8 {
            let mut tunnel = m.open(&pool, addr).await;
            let msg = [c, t, 42];
            assert_eq!(finish(&mut tunnel.stream, &msg).await, msg);
        }
        pools.push(pool);
    }
    let served = handler.served.lock().unwrap().clone();
    assert_eq!(served.len(), 12);
    let mut by_conn: std::collections::HashMap<SocketAddr, HashSet<Option<usize>>> =
        std::collections::HashMap::new();
    for (peer, before, after) in &served {
        assert!(before.is_some(), "served on a worker: {served:?}");
        assert_eq!(before, after, "a tunnel stays on its worker");
        by_conn.entry(*peer).or_default().insert(*before);
    }
    assert_eq!(by_conn.len(), 4, "one connection per pool: {by_conn:?}");
    assert!(by_conn.values().all(|w| w.len() == 1), "{by_conn:?}");
    let mut per_worker = [0usize; 2];
    for w in by_conn.values().flatten() {
        per_worker[w.unwrap()] += 1;
    }
    assert_eq!(
        per_worker,
        [2, 2],
        "connections alternate between the workers"
    );

    // Draining: an open tunnel finishes, new connections are refused, the server returns.
    let pool = m.pool(Config::default());
    let mut open = m.open(&pool, addr).await;
    shutdown.drain.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(finish(&mut open.stream, b"last").await, b"last");
    m.assert_refused(addr).await;
    drop((open, pool, pools));
    tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .expect("the server returns once its connections are closed")
        .unwrap();
}
