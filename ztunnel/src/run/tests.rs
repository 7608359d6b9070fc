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
        ("READINESS_PORT", "15021"),
        ("ADMIN_PORT", "0"),
        ("STATS_PORT", "0"),
    ]);
    let readiness: SocketAddr = "127.0.8.1:15021".parse().unwrap();
    let start = tokio::spawn(Proxy::start(
        config,
        certificates,
        Arc::new(FixedLogLevel("info".into())),
    ));
    // While the certificate is being issued, the readiness server answers 503.
    let (status, body) = loop {
        match get(readiness, "/healthz/ready").await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("certificates"), "{body}");
    assert!(!start.is_finished());

    permits.add_permits(1);
    let proxy = start.await.unwrap().unwrap();
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
    let certificates = Certificates::from_config(&config).unwrap();
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();
    assert!(proxy.ready().is_ready());
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
    let certificates = Certificates::from_config(&config).unwrap();
    let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
        .await
        .unwrap();
    assert_eq!(proxy.ready().pending(), vec!["workloads"]);
    let (status, body) = get(proxy.endpoints().readiness, "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("workloads"), "{body}");

    std::fs::write(&file, MESH).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !proxy.ready().is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
