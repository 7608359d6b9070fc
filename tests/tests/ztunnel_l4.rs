//! Two node proxies on loopback: a client behind node A's SOCKS5 listener reaches applications
//! behind node B through HBONE, by service VIP and by hostname; plain TCP and passthrough
//! destinations; and an L4 policy refusal.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;

use ambient_e2e::{Target, socks5_connect};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztunnel::app::{Node, WorkloadPorts};
use ztunnel::identity::IdentityManager;
use ztunnel::outbound::request::OutboundContext;
use ztunnel::state::{LocalConfig, StateHandle};

const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.2.1"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/default/httpbin
  name: httpbin
  namespace: default
  serviceAccount: httpbin
  workloadIps: ["127.0.2.2"]
  protocol: HBONE
  node: node-b
  services:
    default/httpbin.default.svc.cluster.local:
      80: 8000
- uid: cluster1//v1/Pod/default/legacy
  name: legacy
  namespace: default
  serviceAccount: legacy
  workloadIps: ["127.0.2.3"]
  protocol: TCP
  node: node-b
services:
- name: httpbin
  namespace: default
  hostname: httpbin.default.svc.cluster.local
  vips: ["/127.10.2.2"]
  ports:
    80: 8000
policies:
- name: no-admin-port
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [8001]
"#;

/// An application that answers `<name> got <n> bytes: <first bytes>` after reading to EOF.
async fn app(addr: &str, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                let reply = format!(
                    "{name} got {} bytes: {}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                );
                s.write_all(reply.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn exchange(mut s: TcpStream, msg: &str) -> String {
    s.write_all(msg.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_hbone_tcp_and_passthrough() {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let roots = ca.roots().to_vec();
    let state = StateHandle::new(LocalConfig::from_yaml(MESH).unwrap().into_state().unwrap());
    let node = |name: &str, ca: hbone::LocalCa| {
        let ctx = OutboundContext {
            node: Some(name.to_string()),
            ..OutboundContext::default()
        };
        let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
        Node::new(
            state.clone(),
            identities,
            roots.clone(),
            hbone::Config::default(),
            ctx,
        )
        .unwrap()
    };
    let node_a = node(
        "node-a",
        hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap(),
    );
    let node_b = node("node-b", ca);
    let current = state.current();
    let sleep = current
        .workload_by_uid("cluster1//v1/Pod/default/sleep")
        .unwrap();
    let httpbin = current
        .workload_by_uid("cluster1//v1/Pod/default/httpbin")
        .unwrap();

    let a = node_a
        .add_workload(
            sleep,
            WorkloadPorts {
                socks5: Some(15080),
                ..WorkloadPorts::default()
            },
        )
        .await
        .unwrap();
    let _b = node_b
        .add_workload(httpbin, WorkloadPorts::default())
        .await
        .unwrap();
    let proxy = a.socks5.unwrap();

    app("127.0.2.2:8000", "httpbin").await;
    app("127.0.2.2:8001", "httpbin-admin").await;
    app("127.0.2.3:9000", "legacy").await;
    let outside = app("127.0.2.9:0", "outside").await;

    // Service VIP → endpoint 127.0.2.2:8000 over HBONE through node B's inbound listener.
    let (code, s) = socks5_connect(proxy, Target::Addr("127.10.2.2:80".parse().unwrap())).await;
    assert_eq!(code, 0);
    assert_eq!(exchange(s, "GET /ip").await, "httpbin got 7 bytes: GET /ip");

    // The same service by hostname, resolved from the mesh state.
    let (code, s) = socks5_connect(
        proxy,
        Target::Domain("httpbin.default.svc.cluster.local", 80),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(exchange(s, "by name").await, "httpbin got 7 bytes: by name");

    // A plain-TCP workload.
    let (code, s) = socks5_connect(proxy, Target::Addr("127.0.2.3:9000".parse().unwrap())).await;
    assert_eq!(code, 0);
    assert_eq!(
        exchange(s, "hi legacy").await,
        "legacy got 9 bytes: hi legacy"
    );

    // Not in the mesh: passed through (ALLOW_ANY).
    let (code, s) = socks5_connect(proxy, Target::Addr(outside)).await;
    assert_eq!(code, 0);
    assert_eq!(exchange(s, "out").await, "outside got 3 bytes: out");

    // Denied by node B's policy: the tunnel is refused with 401, SOCKS5 says not allowed.
    let (code, _) = socks5_connect(proxy, Target::Addr("127.0.2.2:8001".parse().unwrap())).await;
    assert_eq!(code, 2, "connection not allowed by ruleset");

    // Unknown hostname.
    let (code, _) =
        socks5_connect(proxy, Target::Domain("nope.default.svc.cluster.local", 80)).await;
    assert_eq!(code, 4, "host unreachable");
}
