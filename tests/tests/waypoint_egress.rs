//! The waypoint as an egress gateway, end to end: client → ztunnel → waypoint → a backend outside
//! the mesh (no ztunnel in front of it), every hop a real socket. `MESH_EXTERNAL` ServiceEntries
//! with STATIC, DNS and NONE resolution, the outbound traffic policy (`ALLOW_ANY` →
//! `PassthroughCluster`, `REGISTRY_ONLY` → `BlackHoleCluster`), and TLS origination from a
//! DestinationRule verified against a test CA. A backend outside the mesh also reads the
//! waypoint's upstream HTTP/2 in clear, which shows how its headers are encoded. Each test runs
//! its own mesh on its own `127.<net>.0.0/16`; external hosts live at `127.<net>.2.x`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use ambient_e2e::waypoint::{MeshOptions, Net, WaypointMesh, get, send, series};
use http::StatusCode;
use waypoint::egress::dns::{Resolver, Resolving};
use waypoint::egress::{EgressSettings, OutboundPolicy};

/// A resolver that knows a fixed set of names (no network).
#[derive(Debug)]
struct MapResolver(HashMap<String, IpAddr>);

impl Resolver for MapResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let found = self.0.get(host).map(|ip| vec![SocketAddr::new(*ip, port)]);
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unknown name"))
        })
    }
}

fn external(net: Net, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net.0, 2, host)
}

/// A mesh-state service for a ServiceEntry host bound to the waypoint (what istiod sends
/// ztunnel for a ServiceEntry labelled `istio.io/use-waypoint`).
fn entry_service(net: Net, name: &str, host: &str, vip: Ipv4Addr, port: u16) -> String {
    format!(
        "- name: {name}\n  namespace: default\n  hostname: {host}\n  vips: [\"/{vip}\"]\n  ports:\n    {port}: {port}\n  waypoint:\n    destination: \"/{}\"\n    hboneMtlsPort: 15008\n",
        net.vip(9)
    )
}

/// `inbound-vip|<port>|http|<host>`.
fn cluster(port: u16, host: &str) -> String {
    format!("inbound-vip|{port}|http|{host}")
}

/// The access log entry of the request with `path`.
fn log_of(mesh: &WaypointMesh, path: &str) -> serde_json::Value {
    let entries = mesh.access_log();
    entries
        .iter()
        .rev()
        .find(|e| e["path"] == path)
        .cloned()
        .unwrap_or_else(|| panic!("no access log entry for {path} in {entries:#?}"))
}

const STATIC_HOST: &str = "static.ext.test";
const DNS_HOST: &str = "dns.ext.test";
const NONE_HOST: &str = "none.ext.test";

/// Three external services: STATIC (VIP .1.50 → 127.<net>.2.1:8081), DNS (VIP .1.51, the host
/// resolves to 127.<net>.2.2, target port 8082) and NONE (the client dials 127.<net>.2.3:8083
/// itself), and their backends.
async fn resolutions_mesh(net: Net, policy: OutboundPolicy) -> WaypointMesh {
    let mut names = HashMap::new();
    names.insert(DNS_HOST.to_owned(), IpAddr::V4(external(net, 2)));
    let options = MeshOptions {
        extra_services: entry_service(net, "static-ext", STATIC_HOST, net.vip(50), 8080)
            + &entry_service(net, "dns-ext", DNS_HOST, net.vip(51), 8080)
            + &entry_service(net, "none-ext", NONE_HOST, external(net, 3), 8083),
        egress: EgressSettings {
            outbound_policy: policy,
            resolver: Arc::new(MapResolver(names)),
            ..EgressSettings::default()
        },
        ..MeshOptions::default()
    };
    let mesh = WaypointMesh::start_with(net, options).await;
    for (host, port, name) in [
        (1, 8081, "ext-static"),
        (2, 8082, "ext-dns"),
        (3, 8083, "ext-none"),
    ] {
        let addr = SocketAddr::new(IpAddr::V4(external(net, host)), port);
        mesh.spawn_external_backend(addr, name, None).await;
    }
    mesh.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: static-ext, namespace: default}}
spec:
  hosts: [{STATIC_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: "{static_ip}", ports: {{http: 8081}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dns-ext, namespace: default}}
spec:
  hosts: [{DNS_HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: 8082}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: none-ext, namespace: default}}
spec:
  hosts: [{NONE_HOST}]
  addresses: ["{none_ip}"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{{number: 8083, name: http, protocol: HTTP}}]
"#,
        static_ip = external(net, 1),
        none_ip = external(net, 3),
    ));
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_dns_and_none_service_entries_reach_their_external_backends() {
    let net = Net(55);
    let mesh = resolutions_mesh(net, OutboundPolicy::AllowAny).await;
    let cases = [
        (
            STATIC_HOST,
            SocketAddr::new(IpAddr::V4(net.vip(50)), 8080),
            "ext-static",
            "127.55.2.1:8081",
            cluster(8080, STATIC_HOST),
        ),
        (
            DNS_HOST,
            SocketAddr::new(IpAddr::V4(net.vip(51)), 8080),
            "ext-dns",
            "127.55.2.2:8082",
            cluster(8080, DNS_HOST),
        ),
        (
            NONE_HOST,
            SocketAddr::new(IpAddr::V4(external(net, 3)), 8083),
            "ext-none",
            "127.55.2.3:8083",
            cluster(8083, NONE_HOST),
        ),
    ];
    for (host, dst, backend, upstream_host, cluster_name) in &cases {
        let path = format!("/egress/{backend}");
        let mut client = mesh.http1(*dst).await;
        let response = send(&mut client, get(host, &path, &[])).await;
        assert_eq!(response.0, StatusCode::OK, "{host}: {response:?}");
        assert_eq!(response.1["x-backend"], *backend, "{host}");
        let seen = mesh.backends.seen(backend);
        assert_eq!(seen.len(), 1, "{backend} got exactly the request");
        assert_eq!(seen[0].path, path);
        assert_eq!(seen[0].headers["host"], *host);
        let entry = log_of(&mesh, &path);
        assert_eq!(entry["upstream_cluster"], cluster_name.as_str());
        assert_eq!(entry["upstream_host"], *upstream_host);
        assert_eq!(entry["response_code"], 200);
    }
    let metrics = mesh.metrics();
    for host in [STATIC_HOST, DNS_HOST, NONE_HOST] {
        let service = format!("destination_service=\"{host}\"");
        assert_eq!(
            series(
                &metrics,
                "istio_requests_total",
                &[&service, "response_code=\"200\""]
            ),
            Some(1.0),
            "the request metric for {host}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_passes_unknown_hosts_through_to_the_original_destination() {
    let net = Net(56);
    let mesh = resolutions_mesh(net, OutboundPolicy::AllowAny).await;
    let dst = SocketAddr::new(IpAddr::V4(external(net, 3)), 8083);
    let mut client = mesh.http1(dst).await;
    let response = send(&mut client, get("unknown.example", "/passthrough", &[])).await;
    assert_eq!(response.0, StatusCode::OK, "{response:?}");
    let seen = mesh.backends.seen("ext-none");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/passthrough");
    assert_eq!(seen[0].headers["host"], "unknown.example");
    let entry = log_of(&mesh, "/passthrough");
    assert_eq!(entry["upstream_cluster"], "PassthroughCluster");
    assert_eq!(entry["route_name"], "allow_any");
    assert_eq!(entry["upstream_host"], "127.56.2.3:8083");
    let metrics = mesh.metrics();
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &[
                "destination_service=\"unknown.example\"",
                "destination_service_name=\"PassthroughCluster\"",
                "response_code=\"200\"",
            ]
        ),
        Some(1.0),
        "the passthrough request metric:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_refuses_unknown_hosts_with_502() {
    let net = Net(57);
    let mesh = resolutions_mesh(net, OutboundPolicy::RegistryOnly).await;
    let dst = SocketAddr::new(IpAddr::V4(external(net, 3)), 8083);
    let mut client = mesh.http1(dst).await;
    let response = send(&mut client, get("unknown.example", "/blocked", &[])).await;
    assert_eq!(response.0, StatusCode::BAD_GATEWAY, "{response:?}");
    assert!(
        mesh.backends.seen("ext-none").is_empty(),
        "nothing reaches the backend"
    );
    let entry = log_of(&mesh, "/blocked");
    assert_eq!(entry["upstream_cluster"], "BlackHoleCluster");
    assert_eq!(entry["route_name"], "block_all");
    assert_eq!(entry["response_code"], 502);
    assert!(entry["upstream_host"].is_null(), "{entry}");
    let metrics = mesh.metrics();
    assert_eq!(
        series(
            &metrics,
            "istio_requests_total",
            &[
                "destination_service=\"unknown.example\"",
                "destination_service_name=\"BlackHoleCluster\"",
                "response_code=\"502\"",
            ]
        ),
        Some(1.0),
        "the black-hole request metric:\n{metrics}"
    );

    // The registered host on the same connection still goes through.
    let response = send(&mut client, get(NONE_HOST, "/allowed", &[])).await;
    assert_eq!(response.0, StatusCode::OK, "{response:?}");
    let seen = mesh.backends.seen("ext-none");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/allowed");
}

/// A CA and a server configuration with a certificate for `names` issued by it.
struct TestCa {
    pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }

    fn server(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let issuer = rcgen::Issuer::new(self.params.clone(), &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        Arc::new(config)
    }
}

const SECURE_HOST: &str = "secure.ext.test";
const WRONG_CA_HOST: &str = "wrongca.ext.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_origination_verifies_the_server_against_the_configured_roots() {
    let net = Net(58);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file);
    let options = MeshOptions {
        extra_services: entry_service(net, "secure-ext", SECURE_HOST, net.vip(60), 8080)
            + &entry_service(net, "wrongca-ext", WRONG_CA_HOST, net.vip(61), 8080),
        egress: EgressSettings {
            ca_file: Some(ca_file.clone()),
            ..EgressSettings::default()
        },
        ..MeshOptions::default()
    };
    let mesh = WaypointMesh::start_with(net, options).await;
    let secure = SocketAddr::new(IpAddr::V4(external(net, 1)), 8443);
    let wrong = SocketAddr::new(IpAddr::V4(external(net, 2)), 8443);
    mesh.spawn_external_backend(secure, "ext-tls", Some(ca.server(SECURE_HOST)))
        .await;
    // Valid for its name, but issued by a CA the waypoint does not trust.
    mesh.spawn_external_backend(wrong, "ext-wrong-ca", Some(other_ca.server(WRONG_CA_HOST)))
        .await;
    mesh.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure-ext, namespace: default}}
spec:
  hosts: [{SECURE_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: 8443}}]
  endpoints: [{{address: "{secure_ip}"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure-ext, namespace: default}}
spec:
  host: {SECURE_HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 8080}}
      tls: {{mode: SIMPLE, sni: {SECURE_HOST}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: wrongca-ext, namespace: default}}
spec:
  hosts: [{WRONG_CA_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP, targetPort: 8443}}]
  endpoints: [{{address: "{wrong_ip}"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: wrongca-ext, namespace: default}}
spec:
  host: {WRONG_CA_HOST}
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: "{ca_path}"}}
"#,
        secure_ip = external(net, 1),
        wrong_ip = external(net, 2),
        ca_path = ca_file.display(),
    ));

    // The backend sees the request decrypted, as the client sent it in clear.
    let mut client = mesh
        .http1(SocketAddr::new(IpAddr::V4(net.vip(60)), 8080))
        .await;
    let response = send(&mut client, get(SECURE_HOST, "/tls/ok", &[])).await;
    assert_eq!(response.0, StatusCode::OK, "{response:?}");
    assert_eq!(response.1["x-backend"], "ext-tls");
    let seen = mesh.backends.seen("ext-tls");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/tls/ok");
    assert_eq!(seen[0].headers["host"], SECURE_HOST);
    let entry = log_of(&mesh, "/tls/ok");
    assert_eq!(
        entry["upstream_cluster"],
        cluster(8080, SECURE_HOST).as_str()
    );
    assert_eq!(entry["upstream_host"], "127.58.2.1:8443");

    // A server the configured CA did not issue: 503, the handshake failure as the reason,
    // and nothing processed by the backend.
    let mut client = mesh
        .http1(SocketAddr::new(IpAddr::V4(net.vip(61)), 8080))
        .await;
    let response = send(&mut client, get(WRONG_CA_HOST, "/tls/refused", &[])).await;
    assert_eq!(response.0, StatusCode::SERVICE_UNAVAILABLE, "{response:?}");
    assert!(mesh.backends.seen("ext-wrong-ca").is_empty());
    let entry = log_of(&mesh, "/tls/refused");
    assert_eq!(
        entry["upstream_cluster"],
        cluster(8080, WRONG_CA_HOST).as_str()
    );
    let flags = entry["response_flags"].as_str().unwrap();
    assert!(flags.split(',').any(|f| f == "UF"), "{entry}");
    let reason = entry["upstream_transport_failure_reason"].as_str().unwrap();
    assert!(reason.starts_with("TLS_error:"), "{entry}");
    assert!(reason.contains("invalid peer certificate"), "{entry}");
}

/// A TCP service outside the mesh: optionally behind TLS, it greets each client first with
/// `greeting` (a server-first protocol, like a database) when set, then echoes until the
/// client half-closes, and closes. Returns how many connections it completed (TLS included).
async fn spawn_tcp_external(
    addr: SocketAddr,
    greeting: Option<&'static [u8]>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Arc<std::sync::atomic::AtomicUsize> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, greeting: Option<&[u8]>) {
        if let Some(g) = greeting {
            s.write_all(g).await.unwrap();
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
            }
        }
        let _ = s.shutdown().await;
    }
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let counter = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                match tls {
                    Some(config) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        else {
                            return;
                        };
                        serve(s, greeting).await;
                    }
                    None => serve(tcp, greeting).await,
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    served
}

/// The connections `counter` has completed once it reaches `want` (or after an upper bound).
async fn completed(counter: &std::sync::atomic::AtomicUsize, want: usize) -> usize {
    let count = || counter.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..250 {
        if count() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    count()
}

/// The waypoint's metrics once the `name` series with `labels` reached `want` (or after an
/// upper bound): connections are reported when the waypoint has finished them, just after
/// the client saw them end.
async fn settled_metrics(mesh: &WaypointMesh, name: &str, labels: &[&str], want: f64) -> String {
    for _ in 0..250 {
        let metrics = mesh.metrics();
        if series(&metrics, name, labels) == Some(want) {
            return metrics;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    mesh.metrics()
}

/// Reads until end of stream, within an upper bound.
async fn read_to_end(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the stream ends")
        .unwrap();
    got
}

const DB_HOST: &str = "db.ext.test";
const CACHE_HOST: &str = "cache.ext.test";
const GREETING: &[u8] = b"220 db ready\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_entries_reach_static_and_dns_endpoints_without_protocol_detection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let net = Net(80);
    let mut names = HashMap::new();
    names.insert(CACHE_HOST.to_owned(), IpAddr::V4(external(net, 2)));
    let options = MeshOptions {
        extra_services: entry_service(net, "db-ext", DB_HOST, net.vip(52), 5432)
            + &entry_service(net, "cache-ext", CACHE_HOST, net.vip(53), 6379),
        egress: EgressSettings {
            resolver: Arc::new(MapResolver(names)),
            ..EgressSettings::default()
        },
        ..MeshOptions::default()
    };
    let mesh = WaypointMesh::start_with(net, options).await;
    let db = spawn_tcp_external(
        SocketAddr::new(IpAddr::V4(external(net, 1)), 15432),
        Some(GREETING),
        None,
    )
    .await;
    let cache = spawn_tcp_external(
        SocketAddr::new(IpAddr::V4(external(net, 2)), 16379),
        None,
        None,
    )
    .await;
    // The database port declares TCP; the cache's protocol comes from its port name.
    mesh.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db-ext, namespace: default}}
spec:
  hosts: [{DB_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: db, protocol: TCP, targetPort: 15432}}]
  endpoints: [{{address: "{db_ip}"}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cache-ext, namespace: default}}
spec:
  hosts: [{CACHE_HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 6379, name: redis-main, targetPort: 16379}}]
"#,
        db_ip = external(net, 1),
    ));
    let db_vip = SocketAddr::new(IpAddr::V4(net.vip(52)), 5432);

    // A server-first protocol: the greeting arrives before the client says anything.
    let mut client = mesh.connect(db_vip).await;
    let mut greeting = [0u8; GREETING.len()];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_exact(&mut greeting),
    )
    .await
    .expect("greeting within the bound")
    .unwrap();
    assert_eq!(&greeting, GREETING);
    let payload: Vec<u8> = (0..=255u8).cycle().take(300 * 1024).collect();
    let writer = {
        let payload = payload.clone();
        let (mut rd, mut wr) = client.into_split();
        let w = tokio::spawn(async move {
            wr.write_all(&payload).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        rd.read_to_end(&mut echoed).await.unwrap();
        w.await.unwrap();
        echoed
    };
    assert_eq!(writer, payload, "every byte echoed back, in order");

    // A client that half-closes before sending anything still reaches the server: the port
    // is not sniffed, so an empty stream is not mistaken for a closed one.
    let mut client = mesh.connect(db_vip).await;
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, GREETING);

    // DNS resolution, TCP from the port name.
    let mut client = mesh
        .connect(SocketAddr::new(IpAddr::V4(net.vip(53)), 6379))
        .await;
    client.write_all(b"PING\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"PING\r\n");

    // Both backends saw their connections end.
    assert_eq!(completed(&db, 2).await, 2);
    assert_eq!(completed(&cache, 1).await, 1);
    // Reported by the waypoint as TCP: counters per connection and bytes each way.
    let db_service = format!("destination_service=\"{DB_HOST}\"");
    let tcp = [
        "reporter=\"waypoint\"",
        "request_protocol=\"tcp\"",
        db_service.as_str(),
    ];
    let sent = (payload.len() + 2 * GREETING.len()) as f64;
    let metrics = settled_metrics(&mesh, "istio_tcp_connections_closed_total", &tcp, 2.0).await;
    assert_eq!(
        series(&metrics, "istio_tcp_connections_opened_total", &tcp),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "istio_tcp_received_bytes_total", &tcp),
        Some(payload.len() as f64)
    );
    assert_eq!(
        series(&metrics, "istio_tcp_sent_bytes_total", &tcp),
        Some(sent)
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_") && l.contains("response_code")),
        "TCP metrics carry no response code: {metrics}"
    );
    let db_cluster = format!("inbound-vip|5432|tcp|{DB_HOST}");
    let entries: Vec<serde_json::Value> = mesh
        .access_log()
        .into_iter()
        .filter(|e| e["upstream_cluster"] == db_cluster.as_str())
        .collect();
    assert_eq!(entries.len(), 2, "one line per connection: {entries:#?}");
    assert!(
        entries
            .iter()
            .all(|e| e["upstream_host"] == "127.80.2.1:15432")
    );
    let mut received: Vec<u64> = entries
        .iter()
        .map(|e| e["bytes_received"].as_u64().unwrap())
        .collect();
    received.sort_unstable();
    assert_eq!(received, vec![0, payload.len() as u64]);

    let dump = mesh.config_dump().await;
    let text = dump.to_string();
    assert!(
        text.contains(&format!("inbound-vip|5432|tcp|{DB_HOST}")),
        "the TCP cluster is listed: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_service_entry_originates_tls_from_its_destination_rule() {
    use tokio::io::AsyncWriteExt;
    let net = Net(81);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file);
    let options = MeshOptions {
        extra_services: entry_service(net, "secure-db", SECURE_HOST, net.vip(60), 9000),
        egress: EgressSettings {
            ca_file: Some(ca_file.clone()),
            ..EgressSettings::default()
        },
        ..MeshOptions::default()
    };
    let mesh = WaypointMesh::start_with(net, options).await;
    let served = spawn_tcp_external(
        SocketAddr::new(IpAddr::V4(external(net, 1)), 9443),
        None,
        Some(ca.server(SECURE_HOST)),
    )
    .await;
    mesh.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure-db, namespace: default}}
spec:
  hosts: [{SECURE_HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp, protocol: TCP, targetPort: 9443}}]
  endpoints: [{{address: "{ip}"}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure-db, namespace: default}}
spec:
  host: {SECURE_HOST}
  trafficPolicy:
    tls: {{mode: SIMPLE}}
"#,
        ip = external(net, 1),
    ));
    // The client speaks in clear; only a TLS server can echo it back.
    let mut client = mesh
        .connect(SocketAddr::new(IpAddr::V4(net.vip(60)), 9000))
        .await;
    client.write_all(b"in clear, sent over TLS").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"in clear, sent over TLS");
    assert_eq!(completed(&served, 1).await, 1);
}

/// An HTTP/2 (prior knowledge) server outside the mesh that answers every request `200` with
/// no body and records, per connection, the length of each request's header block: what the
/// waypoint's HPACK encoder made of the request's headers.
async fn spawn_h2_header_recorder(addr: SocketAddr) -> Arc<std::sync::Mutex<Vec<Vec<usize>>>> {
    use ambient_e2e::h2frames::{
        ACK, END_HEADERS, END_STREAM, HEADERS, PING, PREFACE, SETTINGS, frame, read_frame,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blocks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let recorded = Arc::clone(&blocks);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let mut preface = [0u8; PREFACE.len()];
                tcp.read_exact(&mut preface).await.unwrap();
                assert_eq!(preface, PREFACE);
                tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
                let index = {
                    let mut all = recorded.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                while let Some(f) = read_frame(&mut tcp).await {
                    let answer = match f.kind {
                        SETTINGS if f.flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
                        PING if f.flags & ACK == 0 => frame(PING, ACK, 0, &f.payload),
                        HEADERS => {
                            assert!(f.flags & END_HEADERS != 0, "a header block in one frame");
                            assert!(f.flags & END_STREAM != 0, "GETs without a body");
                            let block = f.header_block().unwrap().len();
                            recorded.lock().unwrap()[index].push(block);
                            // `:status: 200` is entry 8 of HPACK's static table.
                            frame(HEADERS, END_STREAM | END_HEADERS, f.stream, &[0x88])
                        }
                        _ => continue,
                    };
                    tcp.write_all(&answer).await.unwrap();
                }
            });
        }
    });
    blocks
}

/// The ids that are new on every request (`x-request-id`, `traceparent`) go upstream as
/// never-indexed literals, so the upstream connection's HPACK table keeps the headers that
/// repeat. Were the ids indexed, each request would add two entries (about 180 of the table's
/// 4,096 bytes), and every twenty-odd requests the long `x-forwarded-client-cert` and the
/// authority would fall out of the table and be sent in full again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_ids_do_not_churn_the_upstream_hpack_table() {
    let net = Net(77);
    const HOST: &str = "h2.ext.test";
    let options = MeshOptions {
        extra_services: entry_service(net, "h2-ext", HOST, net.vip(50), 8080),
        ..MeshOptions::default()
    };
    let mesh = WaypointMesh::start_with(net, options).await;
    let blocks =
        spawn_h2_header_recorder(SocketAddr::new(IpAddr::V4(external(net, 1)), 8081)).await;
    mesh.apply(&format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: h2-ext, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: "{ip}", ports: {{http: 8081}}}}]
"#,
        ip = external(net, 1),
    ));
    let mut client = mesh
        .http2::<http_body_util::Full<bytes::Bytes>>(SocketAddr::new(IpAddr::V4(net.vip(50)), 8080))
        .await;
    const REQUESTS: usize = 80;
    for i in 0..REQUESTS {
        // Paths of one length: `:path` is never indexed, so its length shows in every block.
        let request = http::Request::get(format!("http://{HOST}:8080/hpack/{i:03}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    let blocks = blocks.lock().unwrap().clone();
    let lengths = blocks.iter().max_by_key(|c| c.len()).unwrap();
    assert_eq!(
        lengths.len(),
        REQUESTS,
        "one upstream connection carried them all: {blocks:?}"
    );
    // The first block brings the headers that repeat; from the second on only the ids (and
    // the path) are literals, whose Huffman codes differ by a few bytes with the digits drawn.
    let later = &lengths[1..];
    let (min, max) = (later.iter().min().unwrap(), later.iter().max().unwrap());
    assert!(
        max - min <= 8,
        "header blocks from the second on: {later:?}"
    );
    assert!(
        lengths[0] > max + 100,
        "the first block carries the repeated headers: {lengths:?}"
    );
}
