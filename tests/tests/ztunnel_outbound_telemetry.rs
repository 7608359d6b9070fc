//! Source-side (outbound) Istio metrics of a node: a client behind node A's SOCKS5 listener
//! reaches an application behind node B over HBONE, once allowed and once refused by node B's
//! L4 policy; node A reports both with `reporter="source"`.
//!
//! Uses its own loopback addresses (127.0.4.11, 127.0.4.12) so the fixed ports (15008, 15080)
//! never collide with other tests running in parallel.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambient_e2e::{Target, node, socks5_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ztunnel::app::WorkloadPorts;
use ztunnel::state::{LocalConfig, MeshState, StateHandle};

const CLIENT_IP: &str = "127.0.4.11";
const SERVER_IP: &str = "127.0.4.12";
const VIP: &str = "127.10.4.12";
const SLEEP: &str = "cluster1//v1/Pod/default/sleep";
const HTTPBIN: &str = "cluster1//v1/Pod/default/httpbin";

/// What the client sends.
const REQUEST: &[u8] = b"hello world";
/// What the application answers, after reading the request to its end.
const RESPONSE: &[u8] = b"a longer answer from httpbin";

/// `sleep` (node-a) and `httpbin` (node-b, behind service `httpbin` port 80 → `app_port`);
/// `denied_port` of httpbin is denied by policy.
fn mesh(app_port: u16, denied_port: u16) -> MeshState {
    let yaml = format!(
        r#"
workloads:
- uid: {SLEEP}
  name: sleep-7f9c
  namespace: default
  serviceAccount: sleep
  workloadName: sleep
  canonicalName: sleep
  canonicalRevision: v1
  clusterId: Kubernetes
  workloadIps: ["{CLIENT_IP}"]
  protocol: HBONE
  node: node-a
- uid: {HTTPBIN}
  name: httpbin-5d8b
  namespace: default
  serviceAccount: httpbin
  workloadName: httpbin
  canonicalName: httpbin
  canonicalRevision: v1
  clusterId: Kubernetes
  workloadIps: ["{SERVER_IP}"]
  protocol: HBONE
  node: node-b
  services:
    default/httpbin.default.svc.cluster.local:
      80: {app_port}
services:
- name: httpbin
  namespace: default
  hostname: httpbin.default.svc.cluster.local
  vips: ["/{VIP}"]
  ports:
    80: {app_port}
policies:
- name: deny-{denied_port}
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [{denied_port}]
"#
    );
    LocalConfig::from_yaml(&yaml).unwrap().into_state().unwrap()
}

/// An application that reads to EOF, then answers [`RESPONSE`] and closes.
async fn app(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            let _ = s.write_all(RESPONSE).await;
            let _ = s.shutdown().await;
        });
    }
}

/// The labels node A reports for a tunnel from sleep to httpbin.
fn labels(service: bool, flags: &str) -> String {
    let (svc, svc_ns, svc_name) = if service {
        ("httpbin.default.svc.cluster.local", "default", "httpbin")
    } else {
        ("unknown", "unknown", "unknown")
    };
    format!(
        "reporter=\"source\",source_workload=\"sleep\",source_canonical_service=\"sleep\",\
source_canonical_revision=\"v1\",source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",source_app=\"sleep\",\
source_version=\"v1\",source_cluster=\"Kubernetes\",destination_service=\"{svc}\",\
destination_service_namespace=\"{svc_ns}\",destination_service_name=\"{svc_name}\",\
destination_workload=\"httpbin\",destination_canonical_service=\"httpbin\",\
destination_canonical_revision=\"v1\",destination_workload_namespace=\"default\",\
destination_principal=\"spiffe://cluster.local/ns/default/sa/httpbin\",\
destination_app=\"httpbin\",destination_version=\"v1\",destination_cluster=\"Kubernetes\",\
request_protocol=\"tcp\",response_flags=\"{flags}\",connection_security_policy=\"mutual_tls\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_metrics_for_one_allowed_and_one_denied_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = TcpListener::bind((SERVER_IP, 0)).await.unwrap();
    let denied = TcpListener::bind((SERVER_IP, 0)).await.unwrap();
    let app_port = allowed.local_addr().unwrap().port();
    let denied_addr = denied.local_addr().unwrap();
    tokio::spawn(app(allowed));
    tokio::spawn(app(denied));

    let state = StateHandle::new(mesh(app_port, denied_addr.port()));
    let node_a = node(&state, "node-a", dir.path());
    let node_b = node(&state, "node-b", dir.path());
    let current = state.current();
    let a = node_a
        .add_workload(
            current.workload_by_uid(SLEEP).unwrap(),
            WorkloadPorts {
                socks5: Some(15080),
                ..WorkloadPorts::default()
            },
        )
        .await
        .unwrap();
    let _b = node_b
        .add_workload(
            current.workload_by_uid(HTTPBIN).unwrap(),
            WorkloadPorts::default(),
        )
        .await
        .unwrap();
    let proxy = a.socks5.unwrap();

    // Allowed, by service VIP: REQUEST there, RESPONSE back, then both sides close.
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (code, mut s) = socks5_connect(proxy, Target::Addr(vip)).await;
    assert_eq!(code, 0, "socks5 reply to {vip}");
    s.write_all(REQUEST).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("response timed out")
        .unwrap();
    assert_eq!(got, RESPONSE);
    drop(s);

    // Denied by node B's policy: 401 on the tunnel, "not allowed" (2) to the SOCKS5 client.
    let (code, _s) = socks5_connect(proxy, Target::Addr(denied_addr)).await;
    assert_eq!(code, 2, "socks5 reply to the denied {denied_addr}");

    let ok = labels(true, "-");
    let deny = labels(false, "DENY");
    let metrics = node_a.metrics().clone();
    let closed = format!("istio_tcp_connections_closed_total{{{ok}}} 1");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !metrics.render().lines().any(|l| l == closed) {
        assert!(
            Instant::now() < deadline,
            "the allowed tunnel was not reported closed\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = metrics.render();
    // Istio's directions: sent = response (upstream → client), received = request.
    for line in [
        format!("istio_tcp_connections_opened_total{{{ok}}} 1"),
        closed,
        format!("istio_tcp_sent_bytes_total{{{ok}}} {}", RESPONSE.len()),
        format!("istio_tcp_received_bytes_total{{{ok}}} {}", REQUEST.len()),
        format!("istio_tcp_connections_failed_total{{{deny}}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    // The denied tunnel never opened, and nothing is reported by the destination side here.
    let source_series = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count()
    };
    assert_eq!(
        source_series("istio_tcp_connections_opened_total"),
        1,
        "{text}"
    );
    assert_eq!(
        source_series("istio_tcp_connections_failed_total"),
        1,
        "{text}"
    );
    assert!(!text.contains("reporter=\"destination\""), "{text}");

    // Node B saw the same two tunnels from the destination side.
    let b_text = node_b.metrics().render();
    assert!(
        b_text.lines().any(|l| l
            .starts_with("istio_tcp_connections_failed_total{reporter=\"destination\"")
            && l.contains("response_flags=\"DENY\"")),
        "{b_text}"
    );
}
