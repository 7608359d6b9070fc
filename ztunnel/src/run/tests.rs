#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hbone::{Identity, WorkloadCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::*;
use crate::config::{Config, ProxyMode, WorkloadInfo};
use crate::identity::IssueFuture;
use crate::quickstart::FixedLogLevel;
use crate::state::LocalConfig;

const MESH: &str = r#"
workloads:
- uid: c//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.8.1"]
  protocol: HBONE
  node: node-a
- uid: c//v1/Pod/default/httpbin
  name: httpbin
  namespace: default
  serviceAccount: httpbin
  workloadIps: ["127.0.8.2"]
  protocol: HBONE
  node: node-b
- uid: c//v1/Pod/default/legacy
  name: legacy
  namespace: default
  serviceAccount: legacy
  workloadIps: ["127.0.8.3"]
  protocol: TCP
  node: node-a
- uid: c//v1/Pod/default/nowhere
  name: nowhere
  namespace: default
  serviceAccount: nowhere
  protocol: HBONE
  node: node-a
"#;

fn mesh() -> MeshState {
    LocalConfig::from_yaml(MESH).unwrap().into_state().unwrap()
}

fn dedicated(ns: &str, name: &str, sa: &str) -> ProxyMode {
    ProxyMode::Dedicated(WorkloadInfo {
        namespace: ns.into(),
        name: name.into(),
        service_account: sa.into(),
    })
}

#[test]
fn local_workloads_by_mode_and_node() {
    let state = mesh();
    let cases: Vec<(&str, ProxyMode, Option<&str>, Vec<&str>)> = vec![
        (
            "shared on node-a: its HBONE workload with an address",
            ProxyMode::Shared,
            Some("node-a"),
            vec!["c//v1/Pod/default/sleep"],
        ),
        (
            "shared on node-b",
            ProxyMode::Shared,
            Some("node-b"),
            vec!["c//v1/Pod/default/httpbin"],
        ),
        (
            "shared on an unknown node: nothing",
            ProxyMode::Shared,
            Some("node-z"),
            vec![],
        ),
        (
            "shared without a node name: every HBONE workload with an address",
            ProxyMode::Shared,
            None,
            vec!["c//v1/Pod/default/httpbin", "c//v1/Pod/default/sleep"],
        ),
        (
            "dedicated: the named workload",
            dedicated("default", "httpbin", "httpbin"),
            Some("node-a"),
            vec!["c//v1/Pod/default/httpbin"],
        ),
        (
            "dedicated: a TCP workload is served too (it asked for a proxy)",
            dedicated("default", "legacy", "legacy"),
            None,
            vec!["c//v1/Pod/default/legacy"],
        ),
        (
            "dedicated: another service account is not ours",
            dedicated("default", "httpbin", "sleep"),
            None,
            vec![],
        ),
        (
            "dedicated: another namespace is not ours",
            dedicated("other", "httpbin", "httpbin"),
            None,
            vec![],
        ),
    ];
    for (name, mode, node, want) in cases {
        let got: Vec<String> = local_workloads(&state, &mode, node).into_keys().collect();
        assert_eq!(got, want, "{name}");
    }
}

/// A certificate source that issues from a local CA once a permit is available.
struct Gated {
    ca: hbone::LocalCa,
    permits: Arc<Semaphore>,
}

impl CertificateSource for Gated {
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
        Box::pin(async move {
            let permit = self.permits.acquire().await;
            drop(permit);
            let cert: WorkloadCertificate = self.ca.issue(id, ttl)?;
            Ok(cert)
        })
    }
}

fn config(vars: &[(&str, &str)]) -> Config {
    let env: HashMap<&str, &str> = vars.iter().copied().collect();
    Config::from_env(&env).unwrap()
}

/// `GET path` on `addr`; the status code and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

#[tokio::test]
async fn ready_only_once_state_and_certificates_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let roots = ca.roots().to_vec();
    let permits = Arc::new(Semaphore::new(0));
    let certificates = Certificates {
        source: Box::new(Gated {
            ca,
            permits: permits.clone(),
        }),
        roots,
    };
    let config = config(&[
        ("LOCAL_XDS", MESH),
        ("NODE_NAME", "node-a"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.8.1"),
        ("READINESS_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("STATS_PORT", "0"),
    ]);
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();
    let readiness = proxy.endpoints().readiness;
    // While the certificate is being issued, the readiness server answers 503.
    let (status, body) = get(readiness, "/healthz/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("certificates"), "{body}");
    assert!(proxy.workloads().is_empty());

    permits.add_permits(1);
    proxy.ready().wait().await;
    let (status, body) = get(readiness, "/healthz/ready").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let served = proxy.workloads();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].uid, "c//v1/Pod/default/sleep");
    assert_eq!(served[0].inbound, "127.0.8.1:15008".parse().unwrap());
    assert_eq!(served[0].outbound, Some("127.0.8.1:15001".parse().unwrap()));
    assert_eq!(
        served[0].plaintext,
        Some("127.0.8.1:15006".parse().unwrap())
    );
    assert_eq!(served[0].socks5, None);

    // Draining: not ready, listeners closed.
    let drain = tokio::spawn(proxy.drain());
    drain.await.unwrap();
    assert!(TcpStream::connect("127.0.8.1:15008").await.is_err());
    assert!(get(readiness, "/healthz/ready").await.is_err());
}

#[tokio::test]
async fn state_changes_start_and_drain_workloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, MESH).unwrap();
    let config = config(&[
        ("LOCAL_XDS_PATH", file.to_str().unwrap()),
        ("LOCAL_CA_DIR", dir.path().join("ca").to_str().unwrap()),
        ("NODE_NAME", "node-b"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.8.4"),
        ("INBOUND_HBONE_PORT", "0"),
        ("OUTBOUND_PORT", "0"),
        ("INBOUND_PLAINTEXT_PORT", "0"),
        ("READINESS_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("STATS_PORT", "0"),
    ]);
    let certificates = Certificates::from_config(&config).await.unwrap();
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();
    proxy.ready().wait().await;
    let uids = |p: &Proxy| p.workloads().into_iter().map(|w| w.uid).collect::<Vec<_>>();
    assert_eq!(uids(&proxy), vec!["c//v1/Pod/default/httpbin"]);
    let httpbin = proxy.workloads()[0].inbound;
    assert!(TcpStream::connect(httpbin).await.is_ok());

    // httpbin leaves node-b, sleep moves to it.
    let moved = MESH.replace("node: node-b", "node: node-x").replace(
        "workloadIps: [\"127.0.8.1\"]\n  protocol: HBONE\n  node: node-a",
        "workloadIps: [\"127.0.8.1\"]\n  protocol: HBONE\n  node: node-b",
    );
    assert_ne!(moved, MESH);
    std::fs::write(&file, &moved).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while uids(&proxy) != vec!["c//v1/Pod/default/sleep"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?} reloads {} failures {}",
            uids(&proxy),
            proxy.state().reloads(),
            proxy.state().reload_failures()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old workload's listener is closed, and only sleep's certificate is kept.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(httpbin).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "httpbin still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dump = get(proxy.endpoints().admin, "/config_dump").await.unwrap();
    assert_eq!(dump.0, 200);
    assert!(
        dump.1
            .contains("spiffe://cluster.local/ns/default/sa/sleep")
    );
    let json: serde_json::Value = serde_json::from_str(&dump.1).unwrap();
    assert_eq!(json["config"]["nodeName"], "node-b");
    assert_eq!(json["config"]["proxyMode"], "shared");
    proxy.drain().await;
}

#[tokio::test]
async fn a_dedicated_proxy_is_not_ready_until_its_workload_exists() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, "workloads: []\n").unwrap();
    let config = config(&[
        ("LOCAL_XDS_PATH", file.to_str().unwrap()),
        ("LOCAL_CA_DIR", dir.path().join("ca").to_str().unwrap()),
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/httpbin/httpbin"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.8.5"),
        ("INBOUND_HBONE_PORT", "0"),
        ("OUTBOUND_PORT", "0"),
        ("INBOUND_PLAINTEXT_PORT", "0"),
        ("READINESS_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("STATS_PORT", "0"),
    ]);
    let certificates = Certificates::from_config(&config).await.unwrap();
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();
    while proxy.ready().pending() != vec!["workloads"] {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = get(proxy.endpoints().readiness, "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("workloads"), "{body}");

    std::fs::write(&file, MESH).unwrap();
    tokio::time::timeout(Duration::from_secs(10), proxy.ready().wait())
        .await
        .expect("ready once the workload exists");
    let served = proxy.workloads();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].uid, "c//v1/Pod/default/httpbin");
    // Dedicated: the configured address, not the workload's.
    assert_eq!(
        served[0].inbound.ip(),
        "127.0.8.5".parse::<std::net::IpAddr>().unwrap()
    );
    proxy.drain().await;
}

#[tokio::test]
async fn state_from_istiod_gates_readiness_and_starts_the_node_workloads() {
    use proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use proto::istio::workload as pb;

    use crate::xds::testing;

    let pki = testing::TestPki::new();
    let (server, mut streams) = testing::fake_ads(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let address = format!("https://{}", server.addr);
    let root = pki.root_path.to_str().unwrap().to_string();
    let config = config(&[
        ("XDS_ADDRESS", &address),
        ("XDS_ROOT_CA", &root),
        ("AUTH_TOKEN", testing::TOKEN),
        ("LOCAL_CA_DIR", dir.path().join("ca").to_str().unwrap()),
        ("NODE_NAME", "node-a"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.8.6"),
        ("INBOUND_HBONE_PORT", "0"),
        ("OUTBOUND_PORT", "0"),
        ("INBOUND_PLAINTEXT_PORT", "0"),
        ("READINESS_PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("STATS_PORT", "0"),
    ]);
    assert!(config.xds.is_some());
    let certificates = Certificates::from_config(&config).await.unwrap();
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();

    // Connected and subscribed, but nothing pushed yet: not ready, waiting for the state.
    let mut stream = testing::next_stream(&mut streams).await;
    stream.initial_requests().await;
    let (status, body) = get(proxy.endpoints().readiness, "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("state"), "{body}");

    let workload = pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: "Kubernetes//Pod/default/sleep".into(),
            name: "sleep".into(),
            namespace: "default".into(),
            addresses: vec![vec![127, 0, 8, 6]],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            service_account: "sleep".into(),
            node: "node-a".into(),
            ..Default::default()
        })),
    };
    for (type_url, nonce, resources) in [
        (
            proto::ADDRESS_TYPE_URL,
            "n1",
            vec![testing::resource(
                "Kubernetes//Pod/default/sleep",
                "v1",
                &workload,
            )],
        ),
        (proto::AUTHORIZATION_TYPE_URL, "n2", vec![]),
    ] {
        let reply = stream
            .push(DeltaDiscoveryResponse {
                type_url: type_url.into(),
                nonce: nonce.into(),
                resources,
                ..Default::default()
            })
            .await;
        assert_eq!(reply.response_nonce, nonce);
        assert!(reply.error_detail.is_none(), "{reply:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), proxy.ready().wait())
        .await
        .expect("ready after the first state and the certificates");
    let served = proxy.workloads();
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0].uid, "Kubernetes//Pod/default/sleep");
    assert!(TcpStream::connect(served[0].inbound).await.is_ok());
    let (status, _) = get(proxy.endpoints().readiness, "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(status, 200);
    proxy.drain().await;
}

#[tokio::test]
async fn certificates_from_istios_ca_serve_hbone_between_two_proxies() {
    use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;

    use crate::ca_client::testing::FakeCa;
    use crate::xds::testing;

    // One mesh root for istiod's serving certificate and the workload certificates.
    let dir = tempfile::tempdir().unwrap();
    let mesh_ca = Arc::new(hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap());
    let pki = testing::TestPki::signed_by(&mesh_ca);
    let fake = FakeCa::signing(mesh_ca.clone());
    let server = testing::serve(&pki, IstioCertificateServiceServer::new(fake.clone())).await;
    let ca_address = format!("https://{}", server.addr);
    let root = pki.root_path.to_str().unwrap().to_string();

    let start = |node: &'static str, bind: &'static str| {
        let config = config(&[
            ("LOCAL_XDS", MESH),
            ("CA_ADDRESS", &ca_address),
            ("CA_ROOT_CA", &root),
            ("AUTH_TOKEN", testing::TOKEN),
            ("NODE_NAME", node),
            ("ZTUNNEL_BIND_ADDRESS", bind),
            ("UNSTABLE_ENABLE_SOCKS5", "true"),
            ("SOCKS5_PORT", "0"),
            ("OUTBOUND_PORT", "0"),
            ("INBOUND_PLAINTEXT_PORT", "0"),
            ("READINESS_PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("STATS_PORT", "0"),
        ]);
        assert!(matches!(config.ca, CaSource::Istio(_)));
        async move {
            let certificates = Certificates::from_config(&config).await.unwrap();
            let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), proxy.ready().wait())
                .await
                .expect("ready once the CA issued the certificates");
            proxy
        }
    };
    let node_a = start("node-a", "127.0.8.1").await;
    let node_b = start("node-b", "127.0.8.2").await;

    // Both certificates came from the CA, asked for on behalf of the workloads (shared mode).
    let asked: Vec<String> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            match s
                .request
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get(crate::ca_client::IMPERSONATED_IDENTITY))
                .and_then(|v| v.kind.clone())
            {
                Some(proto::prost_types::value::Kind::StringValue(id)) => id,
                other => format!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(
        asked.len(),
        2,
        "one CreateCertificate per workload: {asked:?}"
    );
    assert!(asked.contains(&"spiffe://cluster.local/ns/default/sa/sleep".to_string()));
    assert!(asked.contains(&"spiffe://cluster.local/ns/default/sa/httpbin".to_string()));

    // And they carry HBONE: sleep (node A, SOCKS5) → httpbin (node B) → the application.
    let app = tokio::net::TcpListener::bind("127.0.8.2:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let socks = node_a.workloads()[0].socks5.unwrap();
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).await.unwrap();
    let std::net::SocketAddr::V4(v4) = app_addr else {
        unreachable!("bound on IPv4")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "socks5 reply");
    s.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");

    node_a.drain().await;
    node_b.drain().await;
}
