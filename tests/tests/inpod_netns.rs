//! In-pod redirection end to end, on network namespaces: two "nodes" and four "pods" joined by
//! veths and bridges, private addresses that exist only inside those namespaces, one ztunnel
//! per node in shared in-pod mode fed by a node agent over ZDS, capture rules installed in the
//! enrolled pods, and unmodified clients and servers inside the pods.
//!
//! ```text
//!   node1 (10.99.0.1)                         node2 (10.99.0.2)
//!   ├─ pod-a 10.1.1.10  client  (sa client)   ├─ pod-c 10.1.2.10  echo  (sa echo) ← echo VIP 10.96.0.10:80
//!   └─ pod-b 10.1.1.11  intruder (sa intruder)└─ pod-d 10.1.2.11  not in the mesh (no capture)
//!                 node1 ──── wire (bridge; the packet capture) ──── node2
//! ```
//!
//! Needs root (namespaces, nftables). As root every failure fails the test; without root it
//! fails with a message unless `ZTUNNEL_SKIP_NETNS_TESTS=1` (for laptops).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambient_e2e::inpod::{Node, WAIT, counter, mesh_workload, pod_entry};
use ambient_e2e::netns::{self, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO_VIP: &str = "10.96.0.10";

fn mesh() -> String {
    format!(
        "workloads:
{}{}{}{}services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: [\"/{ECHO_VIP}\"]
  ports:
    80: 8080
policies:
- name: deny-intruder
  namespace: default
  scope: Namespace
  action: Deny
  rules: [[[{{principals: [{{Exact: cluster.local/ns/default/sa/intruder}}]}}]]]
- name: deny-7070
  namespace: default
  scope: Namespace
  action: Deny
  rules: [[[{{destinationPorts: [7070]}}]]]
",
        mesh_workload("pod-a", "client", "10.1.1.10", "HBONE", "node1", ""),
        mesh_workload("pod-b", "intruder", "10.1.1.11", "HBONE", "node1", ""),
        mesh_workload(
            "pod-c",
            "echo",
            "10.1.2.10",
            "HBONE",
            "node2",
            "  services:\n    default/echo.default.svc.cluster.local:\n      80: 8080\n"
        ),
        mesh_workload("pod-d", "plain", "10.1.2.11", "TCP", "node2", ""),
    )
}

/// A backend in a pod: accepts connections on `port`, answers each line-less request with
/// `"<name> saw <peer ip>: <request>"`, and remembers what it received.
struct Backend {
    received: Received,
}

/// What a backend received: the peer and the bytes of each connection.
type Received = Arc<std::sync::Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

impl Backend {
    async fn start(topo: &Topology, pod: &str, port: u16) -> Self {
        let listener = netns::tcp_listener_in(topo, pod, SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .unwrap();
        let received: Received = Arc::default();
        let seen = received.clone();
        let name = pod.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let Ok(Ok(n)) = tokio::time::timeout(WAIT, stream.read(&mut buf)).await else {
                        return;
                    };
                    buf.truncate(n);
                    let reply = format!(
                        "{name} saw {}: {}",
                        peer.ip(),
                        String::from_utf8_lossy(&buf)
                    );
                    seen.lock().unwrap().push((peer, buf));
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { received }
    }

    fn received(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }
}

/// From inside `pod`, connects to `dst`, sends `payload` and reads the reply to the end.
async fn exchange(
    topo: &Topology,
    pod: &str,
    dst: SocketAddr,
    payload: &[u8],
) -> std::io::Result<String> {
    let mut s = tokio::time::timeout(WAIT, netns::tcp_connect_from(topo, pod, dst))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(payload).await?;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A DNS query for `name` (type A, recursion desired) with id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The IPv4 addresses in the answer section of a response to a single-question query.
fn dns_answers(response: &[u8]) -> (u8, Vec<std::net::Ipv4Addr>) {
    let rcode = response[3] & 0x0f;
    let answers = u16::from_be_bytes([response[6], response[7]]);
    // Skip the header and the question.
    let mut i = 12;
    while response[i] != 0 {
        i += 1 + response[i] as usize;
    }
    i += 5;
    let mut out = Vec::new();
    for _ in 0..answers {
        // Name: a pointer (2 bytes) or labels.
        if response[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while response[i] != 0 {
                i += 1 + response[i] as usize;
            }
            i += 1;
        }
        let rtype = u16::from_be_bytes([response[i], response[i + 1]]);
        let len = u16::from_be_bytes([response[i + 8], response[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && len == 4 {
            out.push(std::net::Ipv4Addr::new(
                response[i],
                response[i + 1],
                response[i + 2],
                response[i + 3],
            ));
        }
        i += len;
    }
    (rcode, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_mesh_across_two_nodes() {
    if !netns::require_root("transparent_mesh_across_two_nodes") {
        return;
    }
    let topo = Topology::standard().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mesh.yaml");
    std::fs::write(&state, mesh()).unwrap();

    // Backends: pod-c serves 8080 (the echo service's target port) and 7070 (denied by
    // policy); pod-d (not in the mesh) serves 8080 and 9999.
    let echo = Backend::start(&topo, "pod-c", 8080).await;
    let echo_7070 = Backend::start(&topo, "pod-c", 7070).await;
    let plain = Backend::start(&topo, "pod-d", 8080).await;
    let plain_9999 = Backend::start(&topo, "pod-d", 9999).await;

    // pod-a excludes outbound port 9999 from the capture.
    let pods1 = format!(
        "pods:\n{}{}",
        pod_entry(
            &topo,
            "pod-a",
            "client",
            "  exclude: {outboundPorts: [9999]}\n"
        ),
        pod_entry(&topo, "pod-b", "intruder", "")
    );
    let pods2 = format!("pods:\n{}", pod_entry(&topo, "pod-c", "echo", ""));
    let node1 = Node::start("node1", dir.path(), &state, &pods1).await;
    let node2 = Node::start("node2", dir.path(), &state, &pods2).await;
    node1.wait_ready().await;
    node2.wait_ready().await;
    node1.wait_pods(&["uid-pod-a", "uid-pod-b"]).await;
    node2.wait_pods(&["uid-pod-c"]).await;

    let capture = netns::Capture::start(&topo).unwrap();

    // 1. pod-a → the echo VIP: captured, tunnelled as pod-a's identity, delivered to pod-c by
    //    pod-c's proxy (the backend sees its own pod's address as the peer).
    let marker = "plaintext-marker-7f3a9c";
    let vip: SocketAddr = format!("{ECHO_VIP}:80").parse().unwrap();
    let reply = exchange(&topo, "pod-a", vip, marker.as_bytes())
        .await
        .unwrap();
    assert_eq!(reply, format!("pod-c saw 10.1.2.10: {marker}"));
    // 2. pod-a → pod-c's own address: the same path.
    let direct: SocketAddr = "10.1.2.10:8080".parse().unwrap();
    let reply = exchange(&topo, "pod-a", direct, marker.as_bytes())
        .await
        .unwrap();
    assert_eq!(reply, format!("pod-c saw 10.1.2.10: {marker}"));
    assert_eq!(echo.received().len(), 2);

    // The bytes between the nodes were TLS: the marker never crossed the wire in clear.
    let wire = capture.stop();
    assert!(
        wire.tcp_frames_with_port(15008) > 0,
        "the capture saw the tunnels' packets"
    );
    assert_eq!(
        wire.tcp_frames_without_port(15008),
        0,
        "every TCP packet between the nodes was HBONE: {:?}",
        wire.tcp_flows()
    );
    assert!(
        !wire.contains(marker.as_bytes()),
        "the plaintext marker crossed the wire between the nodes"
    );

    // pod-c's ztunnel saw pod-a's identity over mutual TLS.
    let m2 = node2.metrics().await;
    let from_client = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        counter(&m2, "istio_tcp_connections_opened_total", &from_client),
        2,
        "{m2}"
    );
    let m1 = node1.metrics().await;
    assert_eq!(
        counter(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
                "destination_service=\"echo.default.svc.cluster.local\"",
            ]
        ),
        1,
        "{m1}"
    );

    // 3. L4 deny across nodes: the intruder's connection is refused by pod-c's proxy and the
    //    backend receives nothing.
    let before = echo.received().len();
    let denied = exchange(&topo, "pod-b", vip, b"let me in").await;
    assert!(
        denied.as_ref().map_or(true, |r| r.is_empty()),
        "denied connection got {denied:?}"
    );
    assert_eq!(echo.received().len(), before);
    let denials = |m: &str| {
        counter(
            m,
            "istio_tcp_connections_failed_total",
            &[
                "reporter=\"destination\"",
                "destination_workload=\"echo\"",
                "response_flags=\"DENY\"",
            ],
        )
    };
    assert_eq!(denials(&node2.metrics().await), 1);

    // 4. A pod outside the mesh reaching a mesh pod lands on its 15006: policy applies (7070 is
    //    denied), and what is allowed arrives from pod-c's proxy, without identity.
    let reply = exchange(&topo, "pod-d", direct, b"hello from outside")
        .await
        .unwrap();
    assert_eq!(reply, "pod-c saw 10.1.2.10: hello from outside");
    let refused = exchange(&topo, "pod-d", "10.1.2.10:7070".parse().unwrap(), b"no").await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "{refused:?}"
    );
    assert!(echo_7070.received().is_empty());
    let m2 = node2.metrics().await;
    assert_eq!(denials(&m2), 2, "{m2}");
    assert_eq!(
        counter(
            &m2,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "destination_workload=\"echo\"",
                "source_workload=\"plain\"",
                "source_principal=\"unknown\"",
                "connection_security_policy=\"unknown\"",
            ]
        ),
        2,
        "both plaintext connections counted (one then denied): {m2}"
    );

    // 5. Excluded port: pod-a → pod-d:9999 bypasses the capture (plaintext on the wire, no
    //    outbound connection counted), while pod-a → pod-d:8080 is captured.
    let capture = netns::Capture::start(&topo).unwrap();
    let bypass = "bypass-marker-51e0";
    let reply = exchange(
        &topo,
        "pod-a",
        "10.1.2.11:9999".parse().unwrap(),
        bypass.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply, format!("pod-d saw 10.1.1.10: {bypass}"));
    let wire = capture.stop();
    assert!(
        wire.contains(bypass.as_bytes()),
        "excluded traffic is not tunnelled"
    );
    assert_eq!(plain_9999.received().len(), 1);
    let m1 = node1.metrics().await;
    let to_plain = [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "destination_workload=\"plain\"",
    ];
    assert_eq!(
        counter(&m1, "istio_tcp_connections_opened_total", &to_plain),
        0
    );
    let reply = exchange(
        &topo,
        "pod-a",
        "10.1.2.11:8080".parse().unwrap(),
        b"captured",
    )
    .await
    .unwrap();
    assert_eq!(reply, "pod-d saw 10.1.1.10: captured");
    assert_eq!(plain.received().len(), 1);
    let m1 = node1.metrics().await;
    assert_eq!(
        counter(&m1, "istio_tcp_connections_opened_total", &to_plain),
        1,
        "{m1}"
    );

    // 6. DNS: a query to the pod's resolver is answered by the pod's DNS proxy with the VIP.
    for (id, name) in [
        (1u16, "echo.default.svc.cluster.local"),
        (2, "echo.default"),
        (3, "echo.default.svc"),
    ] {
        let udp = netns::udp_socket_in(&topo, "pod-a", SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .unwrap();
        udp.send_to(&dns_query(id, name), "10.1.1.1:53")
            .await
            .unwrap();
        let mut buf = vec![0; 1500];
        let (n, _) = tokio::time::timeout(WAIT, udp.recv_from(&mut buf))
            .await
            .expect("DNS answer")
            .unwrap();
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), id);
        let (rcode, ips) = dns_answers(&buf[..n]);
        assert_eq!((rcode, ips), (0, vec![ECHO_VIP.parse().unwrap()]), "{name}");
    }
    let m1 = node1.metrics().await;
    assert!(
        counter(&m1, "istio_dns_requests_total", &[]) >= 3,
        "DNS requests counted: {m1}"
    );

    // 7. DelWorkload: pod-b leaves the pods file; its proxy stops and its traffic is no longer
    //    captured (its connection to pod-d is not counted by node1, and its 15001 is gone).
    let m1 = node1.metrics().await;
    let from_intruder = ["reporter=\"source\"", "source_workload=\"intruder\""];
    let before = counter(&m1, "istio_tcp_connections_opened_total", &from_intruder);
    let pods1 = format!(
        "pods:\n{}",
        pod_entry(
            &topo,
            "pod-a",
            "client",
            "  exclude: {outboundPorts: [9999]}\n"
        )
    );
    std::fs::write(node1.pods_file(), pods1).unwrap();
    node1.wait_pods(&["uid-pod-a"]).await;
    let deadline = Instant::now() + WAIT;
    while netns::nft_table_exists(&topo, "pod-b") {
        assert!(Instant::now() < deadline, "pod-b's capture rules stay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = exchange(&topo, "pod-b", "10.1.2.11:8080".parse().unwrap(), b"free")
        .await
        .unwrap();
    assert_eq!(reply, "pod-d saw 10.1.1.11: free");
    let m1 = node1.metrics().await;
    assert_eq!(
        counter(&m1, "istio_tcp_connections_opened_total", &from_intruder),
        before
    );
    assert!(
        netns::tcp_connect_from(&topo, "pod-b", "10.1.1.11:15001".parse().unwrap())
            .await
            .is_err(),
        "pod-b's outbound listener is gone"
    );

    drop(node1);
    drop(node2);
}
