//! The in-pod proxies of a node: what ztunnel does with the pods istio-cni announces over ZDS.
//!
//! # Where it sits
//!
//! [`InpodManager`] is the [`WorkloadHandler`] of the ZDS client ([`super::zds`]). For each
//! `AddWorkload` it enters the pod's network namespace ([`super::netns::Netns`]) and starts
//! that pod's proxy ([`crate::app::Node::add_pod`]): listeners 15001, 15006, 15008 (and 15053
//! when the node serves DNS) inside the namespace, every socket marked
//! ([`super::sockets::PodSockets`]).
//!
//! - The pod is matched to a workload of the mesh state by [`find_pod_workload`]: the workload
//!   whose uid is the pod's uid, else the one with the announced namespace and name. As
//!   upstream ("lazy loading"), a pod the state does not know yet is accepted and waits; its
//!   proxy starts as soon as the state has it (the capture rules are already in place, so its
//!   traffic is refused meanwhile — closed, never bypassing the mesh).
//! - `AddWorkload` for a known pod with the same namespace is a no-op; with a different one
//!   (the sandbox was recreated) the old proxy is drained and a new one started.
//! - `DelWorkload` stops the pod's proxy at once (the pod is gone: nothing to drain to).
//! - After `SnapshotSent`, pods not in the snapshot are drained and forgotten.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::netns::Netns;
use super::sockets::PodSockets;
use super::zds::WorkloadHandler;
use crate::app::{Node, WorkloadProxy};
use crate::config::WorkloadInfo;
use crate::state::{MeshState, StateHandle, Workload};

/// The workload of the mesh state that pod `uid` (announced with `info`) is: the one whose
/// uid is `uid`, else the one in `info`'s namespace with `info`'s name. A workload whose
/// service account differs from the announced one is not it (its identity would be wrong).
pub fn find_pod_workload(
    state: &MeshState,
    uid: &str,
    info: Option<&WorkloadInfo>,
) -> Option<Arc<Workload>> {
    let matches_sa = |w: &Workload| {
        info.is_none_or(|i| {
            i.service_account.is_empty() || w.service_account() == i.service_account
        })
    };
    if let Some(w) = state.workload_by_uid(uid)
        && matches_sa(w)
    {
        return Some(w.clone());
    }
    let info = info?;
    state
        .workloads()
        .find(|w| w.namespace == info.namespace && w.name == info.name && matches_sa(w))
        .cloned()
}

/// One announced pod.
struct Pod {
    info: Option<WorkloadInfo>,
    sockets: PodSockets,
    /// Running once its workload is known.
    proxy: Option<WorkloadProxy>,
}

/// What the manager reports about one pod (`workloadState` of `/config_dump`, and tests).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The pod's uid (as announced).
    pub uid: String,
    /// The workload serving it, once known.
    pub workload: Option<String>,
    /// Its network namespace.
    pub netns: String,
    /// Whether its proxy runs.
    pub running: bool,
}

/// The node's in-pod proxies; see the module documentation.
pub struct InpodManager {
    node: Node,
    mark: u32,
    state: StateHandle,
    pods: Mutex<HashMap<String, Pod>>,
    /// The last [`PodStatus`] list, readable without waiting (for the admin server).
    published: std::sync::Mutex<Vec<PodStatus>>,
}

impl std::fmt::Debug for InpodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InpodManager")
            .field("mark", &self.mark)
            .finish_non_exhaustive()
    }
}

impl InpodManager {
    /// A manager starting pod proxies on `node`, marking their sockets with `mark`.
    pub fn new(node: Node, state: StateHandle, mark: u32) -> Arc<Self> {
        Arc::new(Self {
            node,
            mark,
            state,
            pods: Mutex::new(HashMap::new()),
            published: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The pods as of the last change, without waiting for a change in progress.
    pub fn status_now(&self) -> Vec<PodStatus> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes the status of `pods` for [`InpodManager::status_now`].
    fn publish(&self, pods: &HashMap<String, Pod>) {
        let status = status_of(pods);
        *self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Starts waiting pods whenever the mesh state changes, until `shutdown`.
    pub fn watch_state(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        let mut changes = self.state.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                this.start_waiting().await;
            }
        });
    }

    /// The pods and their proxies.
    pub async fn status(&self) -> Vec<PodStatus> {
        status_of(&*self.pods.lock().await)
    }

    /// Stops every pod proxy: listeners close, connections get the node's drain deadline.
    pub async fn drain(&self) {
        let pods: Vec<Pod> = {
            let mut all = self.pods.lock().await;
            let drained = all.drain().map(|(_, p)| p).collect();
            self.publish(&all);
            drained
        };
        for pod in &pods {
            if let Some(proxy) = &pod.proxy {
                proxy.shutdown();
            }
        }
        for pod in pods {
            if let Some(proxy) = pod.proxy {
                proxy.drain().await;
            }
        }
    }

    /// Tries to start the proxy of `uid` if its workload is known now.
    async fn try_start(&self, uid: &str, pod: &mut Pod) -> Result<(), String> {
        if pod.proxy.is_some() {
            return Ok(());
        }
        let state = self.state.current();
        let Some(workload) = find_pod_workload(&state, uid, pod.info.as_ref()) else {
            tracing::info!(
                pod = uid,
                info = ?pod.info,
                "pod waits for its workload in the mesh state"
            );
            return Ok(());
        };
        let proxy = self
            .node
            .add_pod(&workload, pod.sockets.clone())
            .await
            .map_err(|e| format!("failed to start the proxy of pod {uid}: {e}"))?;
        tracing::info!(
            pod = uid,
            workload = %workload.uid,
            netns = %pod.sockets.netns_id(),
            "pod proxy started"
        );
        pod.proxy = Some(proxy);
        Ok(())
    }

    async fn start_waiting(&self) {
        let mut pods = self.pods.lock().await;
        for (uid, pod) in pods.iter_mut() {
            if pod.proxy.is_none()
                && let Err(error) = self.try_start(uid, pod).await
            {
                tracing::warn!(pod = %uid, %error, "pod proxy did not start");
            }
        }
        self.publish(&pods);
    }
}

/// The status of `pods`, by uid.
fn status_of(pods: &HashMap<String, Pod>) -> Vec<PodStatus> {
    let mut out: Vec<_> = pods
        .iter()
        .map(|(uid, pod)| PodStatus {
            uid: uid.clone(),
            workload: pod.proxy.as_ref().map(|p| p.uid.clone()),
            netns: pod.sockets.netns_id().to_string(),
            running: pod.proxy.is_some(),
        })
        .collect();
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

/// Stops `proxy` in the background, letting its connections drain.
fn drain_in_background(proxy: WorkloadProxy) {
    proxy.shutdown();
    tokio::spawn(async move { proxy.drain().await });
}

impl WorkloadHandler for InpodManager {
    async fn add(
        &self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> Result<(), String> {
        let netns = Netns::new(netns).map_err(|e| e.to_string())?;
        let mut pods = self.pods.lock().await;
        if let Some(pod) = pods.get_mut(&uid) {
            if pod.sockets.netns_id() == netns.id() {
                pod.info = info.or(pod.info.take());
                let result = self.try_start(&uid, pod).await;
                self.publish(&pods);
                return result;
            }
            tracing::info!(
                pod = %uid,
                old = %pod.sockets.netns_id(),
                new = %netns.id(),
                "pod network namespace changed; replacing its proxy"
            );
            if let Some(proxy) = pods.remove(&uid).and_then(|p| p.proxy) {
                drain_in_background(proxy);
            }
        }
        let mut pod = Pod {
            info,
            sockets: PodSockets::new(Arc::new(netns), self.mark),
            proxy: None,
        };
        let result = self.try_start(&uid, &mut pod).await;
        if result.is_ok() {
            pods.insert(uid, pod);
        }
        self.publish(&pods);
        result
    }

    async fn keep(&self, uid: String) -> Result<(), String> {
        if self.pods.lock().await.contains_key(&uid) {
            Ok(())
        } else {
            Err(format!(
                "pod {uid} is unknown: it cannot be kept without its namespace"
            ))
        }
    }

    async fn del(&self, uid: String) -> Result<(), String> {
        let mut pods = self.pods.lock().await;
        if let Some(pod) = pods.remove(&uid) {
            tracing::info!(pod = %uid, "pod removed; its proxy stops");
            // Dropping the proxy stops its listeners; the pod is gone, so there is nothing to
            // drain towards.
            drop(pod);
        }
        self.publish(&pods);
        Ok(())
    }

    async fn snapshot_done(&self, present: HashSet<String>) -> Result<(), String> {
        let mut pods = self.pods.lock().await;
        let stale: Vec<String> = pods
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in stale {
            tracing::info!(pod = %uid, "pod not in the node agent's snapshot; draining it");
            if let Some(proxy) = pods.remove(&uid).and_then(|p| p.proxy) {
                drain_in_background(proxy);
            }
        }
        self.publish(&pods);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LocalConfig;

    const STATE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep-1
  name: sleep-1
  namespace: default
  serviceAccount: sleep
  workloadIps: [10.1.1.10]
  protocol: HBONE
- uid: 6a1d2c3e-pod-uid
  name: httpbin-1
  namespace: default
  serviceAccount: httpbin
  workloadIps: [10.1.1.11]
  protocol: HBONE
"#;

    fn info(ns: &str, name: &str, sa: &str) -> WorkloadInfo {
        WorkloadInfo {
            namespace: ns.into(),
            name: name.into(),
            service_account: sa.into(),
        }
    }

    #[test]
    fn pods_are_matched_by_uid_then_by_namespace_and_name() {
        let state = LocalConfig::from_yaml(STATE).unwrap().into_state().unwrap();
        let found = |uid: &str, info: Option<WorkloadInfo>| {
            find_pod_workload(&state, uid, info.as_ref()).map(|w| w.uid.clone())
        };
        let cases = [
            (
                "by namespace and name",
                "k8s-uid-1",
                Some(info("default", "sleep-1", "sleep")),
                Some("cluster1//v1/Pod/default/sleep-1"),
            ),
            (
                "by uid, without info",
                "6a1d2c3e-pod-uid",
                None,
                Some("6a1d2c3e-pod-uid"),
            ),
            (
                "by uid, info agrees",
                "6a1d2c3e-pod-uid",
                Some(info("default", "httpbin-1", "httpbin")),
                Some("6a1d2c3e-pod-uid"),
            ),
            (
                "service account differs: not this workload",
                "k8s-uid-1",
                Some(info("default", "sleep-1", "admin")),
                None,
            ),
            (
                "uid matches but the service account does not",
                "6a1d2c3e-pod-uid",
                Some(info("default", "httpbin-1", "admin")),
                None,
            ),
            (
                "empty service account in the info: not checked",
                "k8s-uid-1",
                Some(info("default", "sleep-1", "")),
                Some("cluster1//v1/Pod/default/sleep-1"),
            ),
            (
                "other namespace",
                "k8s-uid-1",
                Some(info("prod", "sleep-1", "sleep")),
                None,
            ),
            ("unknown uid, no info", "k8s-uid-1", None, None),
        ];
        for (name, uid, info, want) in cases {
            assert_eq!(found(uid, info).as_deref(), want, "{name}");
        }
    }
}
