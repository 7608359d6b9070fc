//! The in-pod manager's lifecycle on real network namespaces: a pod announced before the state
//! knows it waits and starts when it appears; its listeners live in the pod's namespace; a
//! re-add with a new namespace (sandbox recreated) replaces the proxy; `DelWorkload` stops it;
//! a snapshot without it drains it.
//!
//! Needs root (namespaces). As root every failure fails the test; without root it fails with a
//! message unless `ZTUNNEL_SKIP_NETNS_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambient_e2e::netns::{self, Topology};
use hbone::LocalCa;
use ztunnel::app::Node;
use ztunnel::config::WorkloadInfo;
use ztunnel::identity::IdentityManager;
use ztunnel::inpod::manager::{InpodManager, PodStatus};
use ztunnel::inpod::zds::WorkloadHandler;
use ztunnel::outbound::request::OutboundContext;
use ztunnel::state::{LocalConfig, MeshState, StateHandle};

const WAIT: Duration = Duration::from_secs(10);

const STATE: &str = r#"
workloads:
- uid: Kubernetes//Pod/default/web-1
  name: web-1
  namespace: default
  serviceAccount: web
  workloadIps: ["10.7.0.10"]
  protocol: HBONE
"#;

fn info() -> WorkloadInfo {
    WorkloadInfo {
        namespace: "default".into(),
        name: "web-1".into(),
        service_account: "web".into(),
    }
}

fn open(topo: &Topology, ns: &str) -> OwnedFd {
    OwnedFd::from(File::open(topo.netns_path(ns)).unwrap())
}

/// Whether something listens on 127.0.0.1:15008 inside `ns`.
async fn listening(topo: &Topology, ns: &str) -> bool {
    let addr: SocketAddr = "127.0.0.1:15008".parse().unwrap();
    netns::tcp_connect_from(topo, ns, addr).await.is_ok()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(manager: &InpodManager) -> Vec<PodStatus> {
    manager.status().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_proxies_follow_the_node_agent() {
    if !netns::require_root("pod_proxies_follow_the_node_agent") {
        return;
    }
    let mut topo = Topology::new();
    topo.add_namespace("sandbox-1").unwrap();
    topo.add_namespace("sandbox-2").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let roots = ca.roots().to_vec();
    let state = StateHandle::new(MeshState::default());
    let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
    let node = Node::new(
        state.clone(),
        identities,
        roots,
        hbone::Config::default(),
        OutboundContext::default(),
    )
    .unwrap();
    let manager = InpodManager::new(node, state.clone(), 0x539);
    let stop = tokio_util::sync::CancellationToken::new();
    manager.watch_state(stop.clone());

    // Announced before the state knows the workload: accepted, waiting, nothing listens.
    manager
        .add("pod-uid-1".into(), Some(info()), open(&topo, "sandbox-1"))
        .await
        .unwrap();
    let s = status(&manager).await;
    assert_eq!(s.len(), 1);
    assert!(!s[0].running && s[0].workload.is_none(), "{s:?}");
    assert!(!listening(&topo, "sandbox-1").await);

    // The state catches up: the proxy starts inside sandbox-1 (and not in sandbox-2).
    state.swap(LocalConfig::from_yaml(STATE).unwrap().into_state().unwrap());
    wait_until("the proxy starts", || listening(&topo, "sandbox-1")).await;
    let s = status(&manager).await;
    assert_eq!(
        s[0].workload.as_deref(),
        Some("Kubernetes//Pod/default/web-1")
    );
    assert!(s[0].running);
    assert!(!listening(&topo, "sandbox-2").await);

    // The same namespace again: nothing changes.
    let netns_1 = s[0].netns.clone();
    manager
        .add("pod-uid-1".into(), Some(info()), open(&topo, "sandbox-1"))
        .await
        .unwrap();
    assert_eq!(status(&manager).await[0].netns, netns_1);

    // The sandbox was recreated: the proxy moves to the new namespace.
    manager
        .add("pod-uid-1".into(), Some(info()), open(&topo, "sandbox-2"))
        .await
        .unwrap();
    wait_until("the proxy listens in sandbox-2", || {
        listening(&topo, "sandbox-2")
    })
    .await;
    wait_until("the old proxy stops", || async {
        !listening(&topo, "sandbox-1").await
    })
    .await;
    let s = status(&manager).await;
    assert_ne!(s[0].netns, netns_1);

    // DelWorkload: stopped and forgotten.
    manager.del("pod-uid-1".into()).await.unwrap();
    wait_until("the proxy stops on delete", || async {
        !listening(&topo, "sandbox-2").await
    })
    .await;
    assert!(status(&manager).await.is_empty());

    // Keep of an unknown pod is refused (its namespace was never received).
    let refused = manager.keep("pod-uid-1".into()).await.unwrap_err();
    assert!(refused.contains("unknown"), "{refused}");

    // A snapshot that does not list the pod drains it.
    manager
        .add("pod-uid-1".into(), Some(info()), open(&topo, "sandbox-1"))
        .await
        .unwrap();
    wait_until("the proxy starts again", || listening(&topo, "sandbox-1")).await;
    manager
        .snapshot_done(HashSet::from(["other-pod".to_string()]))
        .await
        .unwrap();
    wait_until("the proxy drains after the snapshot", || async {
        !listening(&topo, "sandbox-1").await
    })
    .await;
    assert!(status(&manager).await.is_empty());

    // Something that is not a network namespace is refused with the reason.
    let not_netns = OwnedFd::from(tempfile::tempfile().unwrap());
    let error = manager
        .add("pod-uid-2".into(), Some(info()), not_netns)
        .await
        .unwrap_err();
    assert!(
        error.contains("failed to enter network namespace"),
        "{error}"
    );
    assert!(status(&manager).await.is_empty());
    stop.cancel();
}
