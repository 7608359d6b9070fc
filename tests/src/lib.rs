//! Workspace-level end-to-end suites and the helpers they share.
//!
//! The suites live in `tests/tests/`: each runs the real components in-process, on loopback
//! addresses, and asserts what crossed the sockets.
//!
//! - `demo.rs`: one HBONE tunnel between two workloads with a local CA.
//! - `quickstart.rs`: the README's first command, the local mesh from `examples/`.
//! - `ztunnel_l4.rs`: two node proxies — HBONE by VIP and hostname, plain TCP, passthrough.
//! - `ztunnel_policy.rs`: live revocation, strict mTLS against plaintext, inbound metrics.
//! - `waypoint_xds.rs`: the waypoint with its mesh state from a fake istiod over xDS and its
//!   certificate from istiod's CA (ztunnel's `testing` feature).
//!
//! - `k8s_controller.rs`: the waypoint controller against the Kubernetes API server double of
//!   [`kube`] (real sockets; the double records every request).
//! - `waypoint_kube_config.rs`: the waypoint's L7 configuration watched on that double.
//! - `waypoint_cli.rs`: the `waypoint` binary's istioctl-style commands against that double,
//!   run as processes ([`binaries`] finds the binary).
//!
//! - `netns_harness.rs`: the network-namespace harness of [`netns`] itself (root only).
//! - `inpod_netns.rs`: in-pod redirection across two namespace "nodes" (root only).
//!
//! Suites that bind fixed ports (15008, 15080, …) use their own loopback addresses
//! (127.0.2.x, 127.0.3.x, …) so that test binaries running in parallel never collide.
//!
//! [`netns`] builds a two-node topology of network namespaces (nodes, pods, the wire between
//! them), creates sockets inside them and captures the inter-node traffic, for suites that run
//! the real in-pod data path. [`inpod`] starts a node's ztunnel in in-pod mode and its node
//! agent on such a topology (used by `inpod_netns.rs` and the `inpod` benchmark).
//! [`h2frames`] writes and reads raw HTTP/2 frames, for suites that work below the codecs
//! (`waypoint_hardening.rs`, `waypoint_egress.rs`).

pub mod binaries;
pub mod h2frames;
pub mod inpod;
pub mod kube;
pub mod netns;
pub mod waypoint;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ztunnel::app::Node;
use ztunnel::identity::IdentityManager;
use ztunnel::outbound::request::OutboundContext;
use ztunnel::state::StateHandle;

/// CPU time of this process so far (user + system, all threads), for the benchmarks. Zero if
/// the kernel does not say.
pub fn process_cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| tv(u.user_time()) + tv(u.system_time()))
        .unwrap_or_default()
}

/// What a SOCKS5 client asks to connect to.
#[derive(Clone, Debug)]
pub enum Target<'a> {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A hostname and port.
    Domain(&'a str, u16),
}

/// SOCKS5 `CONNECT` to `target` through `proxy` (no authentication). Returns the reply code
/// (0 = connected) and the stream, which carries the connection when the code is 0.
///
/// # Panics
/// When the proxy does not speak SOCKS5: this is test code.
pub async fn socks5_connect(proxy: SocketAddr, target: Target<'_>) -> (u8, TcpStream) {
    let mut s = TcpStream::connect(proxy)
        .await
        .expect("connect to the socks5 listener");
    s.write_all(&[5, 1, 0]).await.expect("socks5 greeting");
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting)
        .await
        .expect("socks5 method reply");
    assert_eq!(greeting, [5, 0], "socks5 method");
    let mut req = vec![5, 1, 0];
    let port = match target {
        Target::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Target::Domain(host, port) => {
            req.push(3);
            req.push(u8::try_from(host.len()).expect("hostname up to 255 bytes"));
            req.extend_from_slice(host.as_bytes());
            port
        }
    };
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.expect("socks5 request");
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.expect("socks5 reply");
    let bound_len = match head[3] {
        4 => 16 + 2,
        _ => 4 + 2,
    };
    let mut bound = vec![0u8; bound_len];
    s.read_exact(&mut bound)
        .await
        .expect("socks5 bound address");
    (head[1], s)
}

/// A node proxy named `name` over `state`, with certificates from the local CA kept in `dir`
/// (every node of a test shares that CA).
///
/// # Panics
/// When the CA or the node cannot be set up: this is test code.
pub fn node(state: &StateHandle, name: &str, dir: &std::path::Path) -> Node {
    let ca = hbone::LocalCa::load_or_generate(dir, "cluster.local").expect("local CA");
    let roots = ca.roots().to_vec();
    let ctx = OutboundContext {
        node: Some(name.to_string()),
        ..OutboundContext::default()
    };
    let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
    Node::new(
        state.clone(),
        identities,
        roots,
        hbone::Config::default(),
        ctx,
    )
    .expect("node")
}

/// The sum of series `name` of the Prometheus text `metrics` over the lines whose labels
/// contain every one of `labels` (each `k="v"`); `None` when no line matches.
pub fn series(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}
