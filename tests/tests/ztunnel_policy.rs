//! Inbound policy enforcement on real sockets: plaintext (15006) under strict mTLS, live
//! revocation of established connections when the policies change, and the destination-side
//! Istio metrics of a node.
//!
//! Each test uses its own loopback addresses (127.0.3.x) so the fixed ports (15006, 15008,
//! 15080) never collide with other tests running in parallel.

#![allow(clippy::unwrap_used, missing_docs)]

use ambient_e2e::{Target, node, socks5_connect};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ztunnel::app::WorkloadPorts;
use ztunnel::inbound::{DestinationMode, PlaintextListener};
use ztunnel::state::{LocalConfig, MeshState, StateHandle};

/// `sleep` (node-a) at `client_ip` and `httpbin` (node-b) at `server_ip`, plus `policies`.
fn mesh(client_ip: &str, server_ip: &str, policies: &str) -> MeshState {
    let yaml = format!(
        r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep-7f9c
  namespace: default
  serviceAccount: sleep
  workloadName: sleep
  canonicalName: sleep
  canonicalRevision: v1
  clusterId: Kubernetes
  workloadIps: ["{client_ip}"]
  protocol: HBONE
  node: node-a
- uid: cluster1//v1/Pod/default/httpbin
  name: httpbin-5d8b
  namespace: default
  serviceAccount: httpbin
  workloadName: httpbin
  canonicalName: httpbin
  canonicalRevision: v1
  clusterId: Kubernetes
  workloadIps: ["{server_ip}"]
  protocol: HBONE
  node: node-b
policies: [{policies}]
"#
    );
    LocalConfig::from_yaml(&yaml).unwrap().into_state().unwrap()
}

const HTTPBIN: &str = "cluster1//v1/Pod/default/httpbin";
const SLEEP: &str = "cluster1//v1/Pod/default/sleep";

/// Istio's `istio_converted_static_strict`: DENY anything without a peer identity.
const STRICT: &str = "{name: istio_converted_static_strict, namespace: istio-system, scope: Global, action: Deny, rules: [[[{notPrincipals: [Presence]}]]]}";

fn deny_port(port: u16) -> String {
    format!(
        "{{name: deny-{port}, namespace: default, scope: Namespace, action: Deny, rules: [[[{{destinationPorts: [{port}]}}]]]}}"
    )
}

/// An echo application; counts connections accepted and bytes read.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

async fn echo(ip: &str) -> Echo {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (a, r) = (accepted.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Echo {
        addr,
        accepted,
        received,
    }
}

/// SOCKS5 CONNECT to `target` through `proxy`; the stream once the reply says success.
async fn socks5(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let (code, s) = socks5_connect(proxy, Target::Addr(target)).await;
    assert_eq!(code, 0, "socks5 reply to {target}");
    s
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(got, msg);
}

/// Whether a read ends (EOF or error) within `limit`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_closes_live_tunnels_through_two_nodes_within_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ip, server_ip) = ("127.0.3.1", "127.0.3.2");
    let state = StateHandle::new(mesh(client_ip, server_ip, ""));
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
    let doomed = echo(server_ip).await;
    let kept = echo(server_ip).await;

    let mut c_doomed = socks5(proxy, doomed.addr).await;
    let mut c_kept = socks5(proxy, kept.addr).await;
    roundtrip(&mut c_doomed, b"before the change").await;
    roundtrip(&mut c_kept, b"before the change").await;
    assert_eq!(node_b.connections().len(), 2);

    // Deny the doomed application's port: node B resets the tunnel, node A closes the client.
    state.swap(mesh(client_ip, server_ip, &deny_port(doomed.addr.port())));
    let start = Instant::now();
    assert!(
        closed_within(&mut c_doomed, Duration::from_secs(1)).await,
        "the denied connection must be closed within 1 s"
    );
    assert!(start.elapsed() < Duration::from_secs(1));

    // The allowed connection keeps working.
    roundtrip(&mut c_kept, b"after the change").await;
    eventually("the revoked connection to leave the tracker", || {
        node_b.connections().len() == 1
    })
    .await;
    assert_eq!(doomed.received.load(Ordering::SeqCst), 17);
    assert_eq!(kept.received.load(Ordering::SeqCst), 17 + 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refuses_plaintext_while_hbone_from_a_mesh_peer_works() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ip, server_ip) = ("127.0.3.3", "127.0.3.4");
    let state = StateHandle::new(mesh(client_ip, server_ip, ""));
    let node_a = node(&state, "node-a", dir.path());
    let node_b = node(&state, "node-b", dir.path());
    let current = state.current();
    let httpbin = current.workload_by_uid(HTTPBIN).unwrap();
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
    let b = node_b
        .add_workload(
            httpbin,
            WorkloadPorts {
                plaintext: Some(15006),
                ..WorkloadPorts::default()
            },
        )
        .await
        .unwrap();
    let app = echo(server_ip).await;

    // The node's 15006 listener routes by original destination; without capture rules a
    // connection's destination is the listener itself, which loop protection refuses.
    let plain_15006 = b.plaintext.unwrap();
    assert_eq!(plain_15006, format!("{server_ip}:15006").parse().unwrap());
    let mut c = TcpStream::connect(plain_15006).await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);

    // A plaintext listener standing for captured traffic to the application's port.
    let plain = PlaintextListener::new(
        format!("{server_ip}:0").parse().unwrap(),
        node_b.inbound_context(),
        HTTPBIN,
        DestinationMode::Fixed(app.addr),
    )
    .await
    .unwrap();
    let plain_addr = plain.address().unwrap();
    // Stops with the workload's listeners.
    tokio::spawn(plain.run(b.drain_token()));

    // Permissive: plaintext reaches the application.
    let mut c = TcpStream::connect(plain_addr).await.unwrap();
    roundtrip(&mut c, b"plaintext ok").await;
    drop(c);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);

    // Strict mTLS: plaintext is refused before the application sees it...
    state.swap(mesh(client_ip, server_ip, STRICT));
    let mut c = TcpStream::connect(plain_addr).await.unwrap();
    let _ = c.write_all(b"let me in").await;
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);

    // ... while HBONE from the mesh peer on node A still gets through.
    let mut s = socks5(a.socks5.unwrap(), app.addr).await;
    roundtrip(&mut s, b"mtls ok").await;
    assert_eq!(app.accepted.load(Ordering::SeqCst), 2);

    let text = node_b.metrics().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_tcp_connections_failed_total{")
                && l.contains(r#"response_flags="DENY""#)
                && l.contains(r#"connection_security_policy="unknown""#)),
        "{text}"
    );
}

/// The labels of a tunnel from sleep (at 127.0.0.1, where loopback clients come from) to
/// httpbin, as node B reports them.
fn labels(flags: &str) -> String {
    format!(
        "reporter=\"destination\",source_workload=\"sleep\",source_canonical_service=\"sleep\",\
source_canonical_revision=\"v1\",source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",source_app=\"sleep\",\
source_version=\"v1\",source_cluster=\"Kubernetes\",destination_service=\"unknown\",\
destination_service_namespace=\"unknown\",destination_service_name=\"unknown\",\
destination_workload=\"httpbin\",destination_canonical_service=\"httpbin\",\
destination_canonical_revision=\"v1\",destination_workload_namespace=\"default\",\
destination_principal=\"spiffe://cluster.local/ns/default/sa/httpbin\",\
destination_app=\"httpbin\",destination_version=\"v1\",destination_cluster=\"Kubernetes\",\
request_protocol=\"tcp\",response_flags=\"{flags}\",connection_security_policy=\"mutual_tls\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_metrics_for_one_allowed_and_one_denied_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let server_ip = "127.0.3.6";
    let app = echo(server_ip).await;
    let denied = echo(server_ip).await;
    let state = StateHandle::new(mesh("127.0.0.1", server_ip, &deny_port(denied.addr.port())));
    let node_b = node(&state, "node-b", dir.path());
    let b = node_b
        .add_workload(
            state.current().workload_by_uid(HTTPBIN).unwrap(),
            WorkloadPorts::default(),
        )
        .await
        .unwrap();

    let ca = hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let sleep_id = hbone::Identity::new("cluster.local", "default", "sleep").unwrap();
    let httpbin_id = hbone::Identity::new("cluster.local", "default", "httpbin").unwrap();
    let certs = Arc::new(hbone::CertStore::new(
        ca.issue(&sleep_id, Duration::from_secs(3600)).unwrap(),
    ));
    let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
    let open = |target: SocketAddr| {
        let (pool, certs, httpbin_id) = (pool.clone(), certs.clone(), httpbin_id.clone());
        async move {
            pool.connect(
                &certs,
                vec![httpbin_id],
                b.inbound,
                &hbone::TunnelRequest::new(target),
            )
            .await
        }
    };

    // Allowed: 11 bytes there, 11 back, then both sides close.
    let mut t = open(app.addr).await.unwrap();
    roundtrip(&mut t.stream, b"hello world").await;
    t.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    t.stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // Denied by policy.
    match open(denied.addr).await {
        Err(hbone::Error::Status(s)) => assert_eq!(s.as_u16(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(denied.accepted.load(Ordering::SeqCst), 0);

    let ok = labels("-");
    let deny = labels("DENY");
    let metrics = node_b.metrics().clone();
    let closed = format!("istio_tcp_connections_closed_total{{{ok}}} 1");
    eventually("the allowed tunnel to be reported closed", || {
        metrics.render().lines().any(|l| l == closed)
    })
    .await;
    let text = metrics.render();
    let seen = app.received.load(Ordering::SeqCst);
    assert_eq!(seen, 11);
    for line in [
        format!("istio_tcp_connections_opened_total{{{ok}}} 2"),
        format!("istio_tcp_connections_failed_total{{{deny}}} 1"),
        format!("istio_tcp_connections_closed_total{{{deny}}} 1"),
        closed,
        format!("istio_tcp_received_bytes_total{{{ok}}} {seen}"),
        format!("istio_tcp_sent_bytes_total{{{ok}}} {seen}"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_failed_total{") && l.contains("\"-\"")),
        "{text}"
    );
}
