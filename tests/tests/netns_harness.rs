//! The network-namespace harness (`ambient_e2e::netns`) itself: the standard two-node
//! topology carries TCP and UDP between pods across nodes, the wire capture sees inter-node
//! plaintext (so a later "never appears on the wire" assertion means something) and nothing
//! of same-node traffic, pods can be added later, and every namespace is deleted — after a
//! normal drop, after a panic caught with `catch_unwind`, after a panicking thread, and when
//! left by a dead process.
//!
//! Root only: without root the tests fail with a message, unless
//! `ZTUNNEL_SKIP_NETNS_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambient_e2e::netns::{
    Capture, PodSpec, Topology, cleanup_stale, list_netns, netns_tests_enabled, nft_table_exists,
    run_in, tcp_connect_from, tcp_listener_in, udp_socket_in,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for each test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for each step.
const STEP: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Sends `marker` from `from` to a TCP echo-with-prefix server in `to` on `port`; returns the
/// reply and the client address the server saw.
async fn tcp_exchange(
    topology: &Topology,
    from: &str,
    to: &str,
    port: u16,
    marker: &[u8],
) -> (Vec<u8>, SocketAddr) {
    let addr = SocketAddr::from((topology.ip(to), port));
    let listener = tcp_listener_in(topology, to, addr).await.unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        let mut reply = b"got:".to_vec();
        reply.extend_from_slice(&got);
        stream.write_all(&reply).await.unwrap();
        stream.shutdown().await.unwrap();
        peer
    });
    let mut client = bounded("connect", tcp_connect_from(topology, from, addr))
        .await
        .unwrap();
    bounded("write", client.write_all(marker)).await.unwrap();
    bounded("shutdown", client.shutdown()).await.unwrap();
    let mut reply = Vec::new();
    bounded("read the reply", client.read_to_end(&mut reply))
        .await
        .unwrap();
    let peer = bounded("the server", server).await.unwrap();
    (reply, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_crosses_nodes_and_the_capture_sees_it() {
    if !netns_tests_enabled() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let topology = Topology::standard().expect("build the standard topology");
        assert_eq!(topology.ip("pod-a"), Ipv4Addr::new(10, 1, 1, 10));
        assert_eq!(topology.ip("node2"), Ipv4Addr::new(10, 99, 0, 2));
        let path = topology.netns_path("pod-c");
        assert!(
            path.to_string_lossy().starts_with("/var/run/netns/zte-")
                && path.to_string_lossy().ends_with("-pod-c"),
            "{}",
            path.display()
        );
        let capture = Capture::start(&topology).unwrap();

        // Across nodes: pod-a (node1) → pod-c (node2), no NAT on the way.
        let marker = b"PLAINTEXT-MARKER-a-to-c-7f3e";
        let (reply, peer) = tcp_exchange(&topology, "pod-a", "pod-c", 8080, marker).await;
        assert_eq!(reply, [b"got:".as_slice(), marker].concat());
        assert_eq!(peer.ip(), topology.ip("pod-a"));

        // Same node: pod-a → pod-b never reaches the wire.
        let local = b"SAME-NODE-MARKER-a-to-b-91c2";
        let (reply, _) = tcp_exchange(&topology, "pod-a", "pod-b", 8081, local).await;
        assert_eq!(reply, [b"got:".as_slice(), local].concat());

        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = capture.stop();
        assert_eq!(seen.error(), None);
        assert!(
            seen.contains(marker),
            "the wire capture must see cross-node plaintext ({} frames)",
            seen.frames()
        );
        assert!(seen.contains(b"got:PLAINTEXT-MARKER"), "and the reply");
        assert!(
            !seen.contains(local),
            "same-node traffic stays off the wire"
        );
        assert!(seen.tcp_frames_with_port(8080) > 0);
        assert_eq!(seen.tcp_frames_with_port(8081), 0);
        let a = SocketAddr::from((topology.ip("pod-a"), peer.port()));
        assert!(
            seen.tcp_flows()
                .keys()
                .any(|f| f.src == a && f.dst.port() == 8080),
            "the flow from pod-a: {:?}",
            seen.tcp_flows().keys().collect::<Vec<_>>()
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_crosses_nodes() {
    if !netns_tests_enabled() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let topology = Topology::standard().expect("build the standard topology");
        let d = SocketAddr::from((topology.ip("pod-d"), 5000));
        let server = udp_socket_in(&topology, "pod-d", d).await.unwrap();
        let b = SocketAddr::from((topology.ip("pod-b"), 0));
        let client = udp_socket_in(&topology, "pod-b", b).await.unwrap();
        // The first datagram may wait for ARP on three links; retry a few times.
        let mut buf = [0u8; 64];
        let mut received = None;
        for _ in 0..20 {
            client.send_to(b"udp-ping", d).await.unwrap();
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(250), server.recv_from(&mut buf)).await
            {
                received = Some(r.unwrap());
                break;
            }
        }
        let (n, from) = received.expect("a datagram from pod-b to pod-d");
        assert_eq!(&buf[..n], b"udp-ping");
        assert_eq!(from.ip(), topology.ip("pod-b"));
        server.send_to(b"udp-pong", from).await.unwrap();
        let (n, _) = bounded("the UDP reply", client.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"udp-pong");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_can_be_added_later() {
    if !netns_tests_enabled() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut topology = Topology::standard().expect("build the standard topology");
        topology
            .add_pod(PodSpec::new("pod-e", "node1", Ipv4Addr::new(10, 1, 1, 12)))
            .unwrap();
        // Outside its node's subnet, or on a node that does not exist: refused.
        assert!(
            topology
                .add_pod(PodSpec::new("pod-x", "node1", Ipv4Addr::new(10, 1, 2, 99)))
                .is_err()
        );
        assert!(
            topology
                .add_pod(PodSpec::new("pod-y", "node9", Ipv4Addr::new(10, 1, 9, 9)))
                .is_err()
        );
        assert!(topology.get("pod-x").is_none() && topology.get("pod-y").is_none());
        let (reply, peer) = tcp_exchange(&topology, "pod-e", "pod-d", 9000, b"from-e").await;
        assert_eq!(reply, b"got:from-e");
        assert_eq!(peer.ip(), Ipv4Addr::new(10, 1, 1, 12));
        // Commands run inside a namespace.
        let out = topology
            .ns("pod-e")
            .exec("ip", &["-4", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("10.1.1.12/24"));
        assert!(
            !nft_table_exists(&topology, "pod-e"),
            "no capture rules in a bare pod"
        );
        // Closures run inside a namespace.
        let inside = run_in(topology.ns("pod-e"), || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(inside, outside);
    })
    .await
    .expect("test timed out");
}

fn assert_gone(names: &[String]) {
    assert!(!names.is_empty());
    let listed = list_netns().unwrap();
    for name in names {
        assert!(!listed.contains(name), "{name} is still there: {listed:?}");
        assert!(!std::path::Path::new("/var/run/netns").join(name).exists());
    }
}

#[test]
fn namespaces_are_deleted_on_drop_and_on_panic() {
    if !netns_tests_enabled() {
        return;
    }
    // A normal drop.
    let topology = Topology::standard().expect("build the standard topology");
    let names = topology.names();
    assert_eq!(names.len(), 7, "wire, 2 nodes, 4 pods: {names:?}");
    let listed = list_netns().unwrap();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
    drop(topology);
    assert_gone(&names);

    // A panic caught in this thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        let topology = Topology::standard().expect("build the standard topology");
        tx.send(topology.names()).unwrap();
        panic!("the test body fails");
    });
    assert!(panicked.is_err());
    assert_gone(&rx.recv().unwrap());

    // A panic in a spawned thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut topology = Topology::new();
        topology.add_namespace("lonely").unwrap();
        tx.send(topology.names()).unwrap();
        panic!("the thread fails");
    });
    assert!(thread.join().is_err());
    assert_gone(&rx.recv().unwrap());
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !netns_tests_enabled() {
        return;
    }
    // A pid that just exited; the prefix is this test's own, so only its namespaces count.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let prefix = format!("ztstale{}-", std::process::id());
    let stale = format!("{prefix}{dead}-0-pod-a");
    let live = format!("{prefix}{}-0-pod-a", std::process::id());
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip");
    for name in [&stale, &live] {
        let status = std::process::Command::new(ip)
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
    }
    let removed = cleanup_stale(&prefix).unwrap();
    let listed = list_netns().unwrap();
    let _ = std::process::Command::new(ip)
        .args(["netns", "del", &live])
        .status();
    let _ = std::process::Command::new(ip)
        .args(["netns", "del", &stale])
        .status();
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!listed.contains(&stale) && listed.contains(&live));
}
