//! In-pod mode on a [`netns`](crate::netns) topology: a node's ztunnel (in shared in-pod mode)
//! and its node agent, both in this process, and the YAML that describes the mesh and the pods
//! handed over.
//!
//! A suite writes the mesh state ([`mesh_workload`] entries under `workloads:`), one pods file
//! per node ([`pod_entry`] entries under `pods:`), then starts a [`Node`] per node: the node
//! agent installs the capture rules in each listed pod and hands the pod to the ztunnel over
//! ZDS. [`Node::metrics`] and [`counter`] read what the ztunnel counted.
//!
//! Everything here panics on failure: it is test and benchmark code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use ztunnel::config::Config;
use ztunnel::inpod::node_agent::{NodeAgentOptions, NodeAgentService};
use ztunnel::quickstart::FixedLogLevel;
use ztunnel::run::{Certificates, Proxy};

use crate::netns::Topology;

/// Every wait of this module (readiness, pods running, metrics requests) is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// One workload of the mesh state (an entry of its `workloads:` list), in namespace `default`:
/// pod `name` with service account `sa` at `ip`, `protocol` `HBONE` or `TCP`, on `node`.
/// `extra` is appended as is (further fields, indented by two spaces, each line ending with a
/// newline).
pub fn mesh_workload(
    name: &str,
    sa: &str,
    ip: &str,
    protocol: &str,
    node: &str,
    extra: &str,
) -> String {
    format!(
        "- uid: Kubernetes//Pod/default/{name}
  name: {name}
  namespace: default
  serviceAccount: {sa}
  workloadIps: [\"{ip}\"]
  protocol: {protocol}
  node: {node}
  canonicalName: {sa}
  canonicalRevision: v1
  workloadName: {sa}
  workloadType: deployment
{extra}"
    )
}

/// The SPIFFE identity of service account `sa` of namespace `default`.
pub fn principal(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// One entry of a node agent's pods file (under `pods:`): `topo`'s pod `pod`, uid
/// `uid-<pod>`, with service account `sa`. `extra` is appended as is (e.g.
/// `"  exclude: {outboundPorts: [9999]}\n"`).
///
/// # Panics
/// When the topology has no namespace `pod`.
pub fn pod_entry(topo: &Topology, pod: &str, sa: &str, extra: &str) -> String {
    format!(
        "- uid: uid-{pod}
  name: {pod}
  namespace: default
  serviceAccount: {sa}
  netns: {}
{extra}",
        topo.netns_path(pod).display()
    )
}

/// A node: its ztunnel and its node agent, both in this process. The node agent stops when
/// this is dropped.
pub struct Node {
    proxy: Proxy,
    pods_file: PathBuf,
    agent_stop: CancellationToken,
}

impl Node {
    /// Starts node `name`: a node agent serving the pods file `<dir>/<name>-pods.yaml`
    /// (written with `pods`) on `<dir>/<name>.sock`, and a ztunnel in in-pod mode reading the
    /// mesh from the file `state`, with certificates from the local CA in `<dir>/ca` (shared by
    /// the nodes of `dir`). Its admin, metrics and readiness servers listen on ephemeral ports
    /// of 127.0.0.1.
    ///
    /// # Panics
    /// When the files cannot be written or the ztunnel cannot start.
    pub async fn start(name: &str, dir: &Path, state: &Path, pods: &str) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let pods_file = dir.join(format!("{name}-pods.yaml"));
        std::fs::write(&pods_file, pods).expect("write the pods file");
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.99.0.53\n").expect("write resolv.conf");
        let agent_stop = CancellationToken::new();
        let agent = NodeAgentService::new(&socket, &pods_file).with_options(NodeAgentOptions {
            poll_interval: Duration::from_millis(100),
            ..NodeAgentOptions::default()
        });
        let stop = agent_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.run(stop).await {
                panic!("node agent failed: {e}");
            }
        });

        let state = state.display().to_string();
        let socket = socket.display().to_string();
        let ca = dir.join("ca").display().to_string();
        let resolv = resolv.display().to_string();
        let env: HashMap<&str, &str> = [
            ("LOCAL_XDS_PATH", state.as_str()),
            ("NODE_NAME", name),
            ("INPOD_ENABLED", "true"),
            ("INPOD_UDS", socket.as_str()),
            ("LOCAL_CA_DIR", ca.as_str()),
            ("DNS_RESOLV_CONF", resolv.as_str()),
            ("ZTUNNEL_BIND_ADDRESS", "127.0.0.1"),
            ("ADMIN_PORT", "0"),
            ("STATS_PORT", "0"),
            ("READINESS_PORT", "0"),
            ("CONNECTION_TERMINATION_DEADLINE", "1s"),
        ]
        .into_iter()
        .collect();
        let config = Config::from_env(&env).expect("ztunnel configuration");
        let certificates = Certificates::from_config(&config)
            .await
            .expect("ztunnel certificates");
        let proxy = Proxy::start(config, certificates, Arc::new(FixedLogLevel("info".into())))
            .await
            .expect("start ztunnel");
        Self {
            proxy,
            pods_file,
            agent_stop,
        }
    }

    /// The node's ztunnel.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The node agent's pods file: rewrite it to add or remove pods.
    pub fn pods_file(&self) -> &Path {
        &self.pods_file
    }

    /// Waits (within [`WAIT`]) until the ztunnel is ready.
    ///
    /// # Panics
    /// When it is not ready in time.
    pub async fn wait_ready(&self) {
        tokio::time::timeout(WAIT, self.proxy.ready().wait())
            .await
            .expect("ztunnel ready");
    }

    /// The ztunnel's Prometheus metrics.
    ///
    /// # Panics
    /// When the metrics server does not answer within [`WAIT`].
    pub async fn metrics(&self) -> String {
        http_get(self.proxy.endpoints().metrics, "/stats/prometheus").await
    }

    /// Waits until the proxies of exactly `pods` (by uid, in the ztunnel's order) run.
    ///
    /// # Panics
    /// When that does not happen within [`WAIT`].
    pub async fn wait_pods(&self, pods: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.proxy.pods().await;
            let running: Vec<&str> = status
                .iter()
                .filter(|p| p.running)
                .map(|p| p.uid.as_str())
                .collect();
            if running == pods && status.len() == pods.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pods running {running:?}, expected {pods:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent_stop.cancel();
    }
}

/// `GET path` on `addr` (HTTP/1.1, `connection: close`); the whole response, head included.
///
/// # Panics
/// When the server does not answer within [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("response in time")
        .expect("read the response");
    out
}

/// The sum of a counter of the Prometheus text `metrics` over the series whose labels contain
/// every one of `labels` (each `name="value"`).
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    crate::series(metrics, name, labels).unwrap_or(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_matching_series() {
        let metrics = "# TYPE c counter\n\
            c{a=\"1\",b=\"x\"} 2\n\
            c{a=\"1\",b=\"y\"} 3\n\
            c{a=\"2\",b=\"x\"} 5\n\
            cc{a=\"1\"} 7\n";
        assert_eq!(counter(metrics, "c", &[]), 10);
        assert_eq!(counter(metrics, "c", &["a=\"1\""]), 5);
        assert_eq!(counter(metrics, "c", &["a=\"1\"", "b=\"x\""]), 2);
        assert_eq!(counter(metrics, "missing", &[]), 0);
        assert_eq!(
            principal("client"),
            "spiffe://cluster.local/ns/default/sa/client"
        );
    }
}
