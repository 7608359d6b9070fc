//! A node agent for use outside Kubernetes: istio-cni's part, driven by a YAML "pods file".
//!
//! # Where it sits
//!
//! In a cluster, istio-cni's node agent watches the pods of its node, installs the capture
//! rules inside each enrolled pod's network namespace and hands the namespace to ztunnel over
//! the ZDS socket. On a VM or a test machine there is no kubelet to watch: [`NodeAgentService`]
//! reads the pods from a file instead (network namespaces made with `ip netns add`, or
//! `/proc/<pid>/ns/net` of a container), and plays the rest of istio-cni's part with the same
//! building blocks ztunnel's tests use: [`super::rules`] for the capture and
//! [`super::agent::NodeAgent`] for the socket.
//!
//! ```yaml
//! pods:
//! - uid: 3f1c5d2e-0000-4000-8000-000000000001   # required, unique
//!   name: sleep                                  # required (WorkloadInfo.name)
//!   namespace: default                           # required (WorkloadInfo.namespace)
//!   serviceAccount: sleep                        # default "default"
//!   netns: /var/run/netns/pod-a                  # required, absolute path
//!   captureDns: true                             # default true
//!   exclude:                                     # optional, TCP left out of the capture
//!     outboundPorts: [9999]
//!     inboundPorts: []
//!     outboundCidrs: ["10.9.0.0/16"]
//! ```
//!
//! Unknown fields are rejected, as are duplicate uids; errors name the pod (index and uid)
//! and the field.
//!
//! # What it does
//!
//! 1. Binds the ZDS socket (creating its directory), loads the pods file (an invalid file at
//!    start-up is an error) and installs the capture rules in every pod's namespace. A pod
//!    whose rules cannot be installed is logged and left out: it is never announced to
//!    ztunnel (its traffic is not captured, so announcing it would promise a redirection
//!    that does not exist). It is retried every [`NodeAgentOptions::retry_interval`] and on
//!    every change of the file.
//! 2. For each ztunnel connection: reads the hello, replays an `AddWorkload` (with the
//!    namespace opened from its path) for every pod, then `SnapshotSent`.
//! 3. While connected, polls the file every [`NodeAgentOptions::poll_interval`]. A change is
//!    acted on once the file has stayed the same for one interval (so a file caught half
//!    written is not loaded); an invalid file is logged with its error and the previous pods
//!    are kept. New pods get rules then an `AddWorkload`; changed pods (see [`diff`]) get new
//!    rules then a new `AddWorkload` (ztunnel replaces its proxy when the namespace changed);
//!    removed pods get a `DelWorkload`, and their rules are removed once ztunnel has
//!    acknowledged it (so no connection escapes the proxy in between). Rejections (`Ack`
//!    errors) are logged at WARN with the uid.
//! 4. When ztunnel disconnects, waits for the next connection and replays. A new connection
//!    while one is open replaces it (an upgraded ztunnel connecting before the old one
//!    leaves), as the newest ztunnel is the one that must know the pods.
//!
//! The file is watched whether or not ztunnel is connected; changes made while it is away
//! are installed, and ztunnel learns them from the replay.
//!
//! # Shutdown
//!
//! On shutdown the socket file is removed. The capture rules are **left in place** by
//! default, as istio-cni does: pods stay captured (fail closed) across a restart of the
//! agent, and the next agent replaces them atomically. Set
//! [`NodeAgentOptions::remove_rules_on_shutdown`] to remove them instead.
//!
//! # Logs
//!
//! INFO, one line per action: `ztunnel connected`, `snapshot sent pods=N`,
//! `pod added uid=.. netns=..`, `pod replaced uid=.. netns=..`, `pod removed uid=..`,
//! `ztunnel disconnected`; WARN for rules that fail, rejections and invalid files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::agent::{Ack, AgentConnection, AgentError, NodeAgent};
use super::rules::{self, ApplyError, CaptureConfig, Exclusions, RenderError, Ruleset};
use crate::config::WorkloadInfo;

#[cfg(test)]
mod tests;

/// Largest pods file read.
pub const MAX_PODS_FILE_SIZE: u64 = 4 << 20;
/// Longest uid, name, namespace or service account (a ZDS message must stay within
/// [`super::zds::MAX_MESSAGE_SIZE`]).
pub const MAX_FIELD_LEN: usize = 512;
/// Service account of a pod whose file entry has none (Kubernetes' default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// One pod of the pods file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Pod uid (the ZDS key).
    pub uid: String,
    /// Name, namespace and service account sent with `AddWorkload`.
    pub info: WorkloadInfo,
    /// Path of the pod's network namespace (e.g. `/var/run/netns/pod-a`).
    pub netns: PathBuf,
    /// What is captured in it.
    pub capture: CaptureConfig,
}

/// A difference between two versions of the pods: what the agent must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a handful of changes per file edit; boxing would only burden the match arms"
)]
pub enum Change {
    /// A new pod: install its rules, then announce it.
    Add(Pod),
    /// A pod gone from the file: `DelWorkload`, then remove its rules.
    Remove(Pod),
    /// A pod whose namespace path, capture configuration or workload info changed: install
    /// the new rules, announce it again, and remove the old rules when the namespace moved.
    Replace {
        /// The pod as it was.
        old: Pod,
        /// The pod as it is now.
        new: Pod,
    },
}

impl Change {
    /// The pod's uid.
    pub fn uid(&self) -> &str {
        match self {
            Self::Add(pod) | Self::Remove(pod) | Self::Replace { new: pod, .. } => &pod.uid,
        }
    }
}

/// What changed from `old` to `new` (pods are matched by uid): removals first, then
/// replacements, then additions, each sorted by uid. A pod is replaced when anything but its
/// uid changed; an unchanged pod yields nothing.
pub fn diff(old: &[Pod], new: &[Pod]) -> Vec<Change> {
    let old: BTreeMap<&str, &Pod> = old.iter().map(|p| (p.uid.as_str(), p)).collect();
    let new: BTreeMap<&str, &Pod> = new.iter().map(|p| (p.uid.as_str(), p)).collect();
    let mut removed = Vec::new();
    let mut replaced = Vec::new();
    let mut added = Vec::new();
    for (uid, pod) in &old {
        match new.get(uid) {
            None => removed.push(Change::Remove((*pod).clone())),
            Some(now) if now != pod => replaced.push(Change::Replace {
                old: (*pod).clone(),
                new: (*now).clone(),
            }),
            Some(_) => {}
        }
    }
    for (uid, pod) in &new {
        if !old.contains_key(uid) {
            added.push(Change::Add((*pod).clone()));
        }
    }
    removed.into_iter().chain(replaced).chain(added).collect()
}

/// Which pod of the file an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Position in the `pods` list, from 0.
    pub index: usize,
    /// Its uid, when it has one.
    pub uid: Option<String>,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.uid {
            Some(uid) => write!(f, "pods[{}] (uid {uid:?})", self.index),
            None => write!(f, "pods[{}]", self.index),
        }
    }
}

/// A pods file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodsFileError {
    /// The file could not be read.
    #[error("failed to read pods file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PODS_FILE_SIZE`].
    #[error("pods file {path} is {len} bytes, at most {MAX_PODS_FILE_SIZE} are read")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The YAML does not match the schema (syntax, unknown or missing field, wrong type).
    /// The message carries the YAML path (`pods[1].exclude.outboundPorts[0]`) and position.
    #[error("{}{message}", .pod.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Schema {
        /// The pod, when the error is inside one.
        pod: Option<PodRef>,
        /// The parser's message.
        message: String,
    },
    /// A field has a value the agent cannot use.
    #[error("{pod}: {field}: {message}")]
    Field {
        /// The pod.
        pod: PodRef,
        /// The field, as written in the file (`netns`, `exclude.outboundCidrs`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Two pods share a uid.
    #[error("{pod}: uid: duplicate uid, already used by pods[{first}]")]
    DuplicateUid {
        /// The second pod.
        pod: PodRef,
        /// Index of the first pod with that uid.
        first: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// `pods:` with nothing after it is no pods.
    #[serde(default)]
    pods: Option<Vec<RawPod>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    uid: String,
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: Option<String>,
    netns: PathBuf,
    #[serde(default = "default_true")]
    capture_dns: bool,
    #[serde(default)]
    exclude: RawExclude,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExclude {
    #[serde(default)]
    outbound_ports: Vec<u16>,
    #[serde(default)]
    inbound_ports: Vec<u16>,
    #[serde(default)]
    outbound_cidrs: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// Parses and validates the text of a pods file.
pub fn parse_pods(text: &str) -> Result<Vec<Pod>, PodsFileError> {
    // An empty document (or one holding only comments) is no pods.
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(Vec::new());
    }
    let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let message = e.to_string();
        match schema_error_pod(text, &message) {
            Some((pod, rest)) => PodsFileError::Schema {
                pod: Some(pod),
                message: rest.to_string(),
            },
            None => PodsFileError::Schema { pod: None, message },
        }
    })?;
    let mut pods = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw) in raw.pods.unwrap_or_default().into_iter().enumerate() {
        let pod_ref = PodRef {
            index,
            uid: Some(raw.uid.clone()),
        };
        if let Some(&first) = seen.get(&raw.uid) {
            return Err(PodsFileError::DuplicateUid {
                pod: pod_ref,
                first,
            });
        }
        seen.insert(raw.uid.clone(), index);
        pods.push(validate(raw, pod_ref)?);
    }
    Ok(pods)
}

/// The pod a schema error is in, and the message without its `pods[N]` prefix:
/// serde_yaml_ng's message starts with the YAML path (`pods[3].exclude: ...`); the uid is
/// looked up in a lenient parse of the same text.
fn schema_error_pod<'m>(text: &str, message: &'m str) -> Option<(PodRef, &'m str)> {
    let rest = message.strip_prefix("pods[")?;
    let close = rest.find(']')?;
    let index: usize = rest[..close].parse().ok()?;
    let rest = &rest[close + 1..];
    // `pods[3]: unknown field ...` or `pods[3].exclude: ...`.
    let rest = rest
        .strip_prefix(": ")
        .or_else(|| rest.strip_prefix('.'))
        .unwrap_or(rest);
    let uid = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("pods")?
                .get(index)?
                .get("uid")?
                .as_str()
                .map(str::to_string)
        });
    Some((PodRef { index, uid }, rest))
}

fn validate(raw: RawPod, pod: PodRef) -> Result<Pod, PodsFileError> {
    let field_error = |field: &'static str, message: String| PodsFileError::Field {
        pod: pod.clone(),
        field,
        message,
    };
    let service_account = raw
        .service_account
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_string());
    for (field, value) in [
        ("uid", &raw.uid),
        ("name", &raw.name),
        ("namespace", &raw.namespace),
        ("serviceAccount", &service_account),
    ] {
        if value.trim().is_empty() {
            return Err(field_error(field, "must not be empty".into()));
        }
        if value.len() > MAX_FIELD_LEN {
            return Err(field_error(
                field,
                format!("{} bytes, at most {MAX_FIELD_LEN} are allowed", value.len()),
            ));
        }
    }
    if !raw.netns.is_absolute() {
        return Err(field_error(
            "netns",
            format!(
                "{:?} is not an absolute path (e.g. /var/run/netns/<name>)",
                raw.netns
            ),
        ));
    }
    let mut outbound_cidrs = Vec::with_capacity(raw.exclude.outbound_cidrs.len());
    for entry in &raw.exclude.outbound_cidrs {
        let entry = entry.trim();
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| {
                field_error(
                    "exclude.outboundCidrs",
                    format!("{entry:?} is not a CIDR or an IP address"),
                )
            })?;
        outbound_cidrs.push(net);
    }
    let capture = CaptureConfig {
        dns_capture: raw.capture_dns,
        exclusions: Exclusions {
            outbound_ports: raw.exclude.outbound_ports,
            inbound_ports: raw.exclude.inbound_ports,
            outbound_cidrs,
        },
        ..CaptureConfig::default()
    };
    // Rendering validates the exclusions (port 0, list lengths).
    Ruleset::render(&capture).map_err(|e| {
        let field = match &e {
            RenderError::PortZero { list }
            | RenderError::InvalidPort { list, .. }
            | RenderError::InvalidCidr { list, .. }
            | RenderError::TooMany { list, .. } => match list {
                rules::ExclusionList::OutboundPorts => "exclude.outboundPorts",
                rules::ExclusionList::InboundPorts => "exclude.inboundPorts",
                rules::ExclusionList::OutboundCidrs => "exclude.outboundCidrs",
            },
        };
        field_error(field, e.to_string())
    })?;
    Ok(Pod {
        uid: raw.uid,
        info: WorkloadInfo {
            namespace: raw.namespace,
            name: raw.name,
            service_account,
        },
        netns: raw.netns,
        capture,
    })
}

/// Reads and parses the pods file at `path`.
pub fn load_pods(path: &Path) -> Result<Vec<Pod>, PodsFileError> {
    let text = read_bounded(path)?;
    parse_pods(&text)
}

fn read_bounded(path: &Path) -> Result<String, PodsFileError> {
    let read_error = |source| PodsFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > MAX_PODS_FILE_SIZE {
        return Err(PodsFileError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// Settings of [`NodeAgentService`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAgentOptions {
    /// How often the pods file is checked for changes.
    pub poll_interval: Duration,
    /// How often pods whose rules failed are retried.
    pub retry_interval: Duration,
    /// Remove every pod's capture rules on shutdown (default: leave them, see the module
    /// documentation).
    pub remove_rules_on_shutdown: bool,
}

impl Default for NodeAgentOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            retry_interval: Duration::from_secs(5),
            remove_rules_on_shutdown: false,
        }
    }
}

/// Why the node agent could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeAgentError {
    /// The socket's directory could not be created.
    #[error("failed to create the socket directory {path}: {source}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ZDS socket could not be bound.
    #[error(transparent)]
    Bind(AgentError),
    /// The pods file is unusable at start-up.
    #[error("invalid pods file {path}: {source}")]
    PodsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: PodsFileError,
    },
}

/// Why one pod's rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
enum RulesError {
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("the rules task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl RulesError {
    /// The namespace does not exist (any more).
    fn netns_missing(&self) -> bool {
        matches!(self, Self::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The node agent: see the module documentation.
#[derive(Clone, Debug)]
pub struct NodeAgentService {
    socket_path: PathBuf,
    pods_file: PathBuf,
    options: NodeAgentOptions,
}

impl NodeAgentService {
    /// An agent listening at `socket_path` (ztunnel's `INPOD_UDS`) for the pods of
    /// `pods_file`, with default options.
    pub fn new(socket_path: impl Into<PathBuf>, pods_file: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            pods_file: pods_file.into(),
            options: NodeAgentOptions::default(),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: NodeAgentOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs until `shutdown` is cancelled. Fails only at start-up (socket, pods file);
    /// everything after that is logged and survived.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), NodeAgentError> {
        if let Some(dir) = self.socket_path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| NodeAgentError::SocketDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let agent = NodeAgent::bind(&self.socket_path).map_err(NodeAgentError::Bind)?;
        let mut watcher = FileWatcher::new(self.pods_file.clone());
        let desired = watcher
            .load_initial()
            .await
            .map_err(|source| NodeAgentError::PodsFile {
                path: self.pods_file.clone(),
                source,
            })?;
        tracing::info!(
            socket = %self.socket_path.display(),
            pods_file = %self.pods_file.display(),
            pods = desired.len(),
            "node agent listening"
        );
        let mut state = State {
            desired,
            active: BTreeMap::new(),
            failed: BTreeSet::new(),
            conn: None,
        };
        state.reconcile().await;

        let mut ticker = tokio::time::interval(self.options.poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_retry = Instant::now() + self.options.retry_interval;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = agent.accept() => match accepted {
                    Ok(conn) => {
                        if state.conn.take().is_some() {
                            tracing::info!("a new ztunnel connection replaces the current one");
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            result = state.handshake(&conn) => match result {
                                Ok(()) => state.conn = Some(conn),
                                Err(error) => tracing::warn!(
                                    %error,
                                    "ZDS handshake with ztunnel failed; waiting for the next connection"
                                ),
                            },
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "failed to accept a ztunnel connection");
                        tokio::time::sleep(self.options.poll_interval).await;
                    }
                },
                ended = wait_closed(state.conn.as_ref()) => {
                    match ended {
                        Ok(()) => tracing::info!("ztunnel disconnected"),
                        Err(error) => tracing::warn!(%error, "ztunnel connection dropped"),
                    }
                    state.conn = None;
                }
                _ = ticker.tick() => {
                    let mut due = false;
                    if let Some(update) = watcher.poll().await {
                        due = true;
                        match update {
                            Ok(pods) => {
                                tracing::info!(
                                    file = %self.pods_file.display(),
                                    pods = pods.len(),
                                    "pods file changed"
                                );
                                state.desired = pods;
                            }
                            Err(error) => tracing::warn!(
                                file = %self.pods_file.display(),
                                %error,
                                "invalid pods file, keeping the previous pods"
                            ),
                        }
                    }
                    if !state.failed.is_empty() && Instant::now() >= next_retry {
                        due = true;
                    }
                    if due {
                        state.reconcile().await;
                        next_retry = Instant::now() + self.options.retry_interval;
                    }
                }
            }
        }

        if self.options.remove_rules_on_shutdown {
            for pod in state.active.values() {
                match uninstall(pod).await {
                    Ok(()) => tracing::info!(uid = %pod.uid, "capture rules removed"),
                    Err(error) => {
                        tracing::warn!(uid = %pod.uid, %error, "failed to remove capture rules")
                    }
                }
            }
        }
        tracing::info!(
            pods = state.active.len(),
            rules_left = !self.options.remove_rules_on_shutdown,
            "node agent stopped"
        );
        drop(agent);
        Ok(())
    }
}

/// Resolves when `conn` closes (`Ok`) or misbehaves (`Err`); never without a connection.
async fn wait_closed(conn: Option<&AgentConnection>) -> Result<(), AgentError> {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    loop {
        match conn.closed().await {
            // No message for a while: still connected.
            Err(AgentError::Timeout(_)) => continue,
            other => return other,
        }
    }
}

/// The agent's pods, and the connection they are announced on.
struct State {
    /// The last valid version of the file.
    desired: Vec<Pod>,
    /// Pods whose rules are installed (those announced to ztunnel), by uid.
    active: BTreeMap<String, Pod>,
    /// Uids whose rules failed, to retry.
    failed: BTreeSet<String>,
    /// The current ztunnel connection.
    conn: Option<AgentConnection>,
}

impl State {
    /// Hello, replay of every active pod, `SnapshotSent`.
    async fn handshake(&self, conn: &AgentConnection) -> Result<(), AgentError> {
        let hello = conn.read_hello().await?;
        tracing::info!(version = hello.version, "ztunnel connected");
        let mut sent = 0usize;
        for pod in self.active.values() {
            if send_add(conn, pod).await? {
                sent += 1;
            }
        }
        match conn.snapshot_sent().await? {
            Ack::Accepted => {}
            Ack::Rejected(error) => {
                tracing::warn!(%error, "ztunnel rejected the snapshot")
            }
        }
        tracing::info!(pods = sent, "snapshot sent");
        Ok(())
    }

    /// Brings the active pods to the desired ones, telling ztunnel when connected.
    async fn reconcile(&mut self) {
        let active: Vec<Pod> = self.active.values().cloned().collect();
        for change in diff(&active, &self.desired) {
            match change {
                Change::Add(pod) => self.add(pod).await,
                Change::Remove(pod) => {
                    self.failed.remove(&pod.uid);
                    self.remove(pod).await;
                }
                Change::Replace { old, new } => self.replace(old, new).await,
            }
        }
        let desired: BTreeSet<&str> = self.desired.iter().map(|p| p.uid.as_str()).collect();
        self.failed.retain(|uid| desired.contains(uid.as_str()));
    }

    async fn add(&mut self, pod: Pod) {
        if let Err(error) = install(&pod).await {
            self.install_failed(&pod, &error);
            return;
        }
        self.failed.remove(&pod.uid);
        let announced = self.announce(&pod).await;
        tracing::info!(uid = %pod.uid, netns = %pod.netns.display(), announced, "pod added");
        self.active.insert(pod.uid.clone(), pod);
    }

    async fn replace(&mut self, old: Pod, new: Pod) {
        if let Err(error) = install(&new).await {
            self.install_failed(&new, &error);
            // It can no longer be served as configured: take it away from ztunnel and drop
            // the old capture, which would otherwise redirect to listeners that are gone.
            self.remove(old).await;
            return;
        }
        self.failed.remove(&new.uid);
        let announced = self.announce(&new).await;
        tracing::info!(uid = %new.uid, netns = %new.netns.display(), announced, "pod replaced");
        if old.netns != new.netns {
            uninstall_logged(&old).await;
        }
        self.active.insert(new.uid.clone(), new);
    }

    async fn remove(&mut self, pod: Pod) {
        self.active.remove(&pod.uid);
        if let Some(conn) = &self.conn {
            match conn.del(&pod.uid).await {
                Ok(Ack::Accepted) => {}
                Ok(Ack::Rejected(error)) => {
                    tracing::warn!(uid = %pod.uid, %error, "ztunnel rejected DelWorkload")
                }
                Err(error) => self.connection_failed(&error),
            }
        }
        uninstall_logged(&pod).await;
        tracing::info!(uid = %pod.uid, "pod removed");
    }

    /// Sends `pod` to ztunnel if connected; whether it was sent.
    async fn announce(&mut self, pod: &Pod) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        match send_add(conn, pod).await {
            Ok(sent) => sent,
            Err(error) => {
                self.connection_failed(&error);
                false
            }
        }
    }

    fn connection_failed(&mut self, error: &AgentError) {
        tracing::warn!(%error, "ztunnel connection failed; waiting for the next connection");
        self.conn = None;
    }

    fn install_failed(&mut self, pod: &Pod, error: &RulesError) {
        tracing::warn!(
            uid = %pod.uid,
            netns = %pod.netns.display(),
            %error,
            "failed to install capture rules; the pod is not sent to ztunnel"
        );
        self.failed.insert(pod.uid.clone());
    }
}

/// `AddWorkload` for `pod`. `Ok(false)` when its namespace cannot be opened or ztunnel
/// rejected it (both logged); `Err` when the connection failed.
async fn send_add(conn: &AgentConnection, pod: &Pod) -> Result<bool, AgentError> {
    let netns = match File::open(&pod.netns) {
        Ok(netns) => netns,
        Err(error) => {
            tracing::warn!(
                uid = %pod.uid,
                netns = %pod.netns.display(),
                %error,
                "failed to open the pod's network namespace; not sent"
            );
            return Ok(false);
        }
    };
    match conn.add(&pod.uid, Some(&pod.info), netns.as_fd()).await? {
        Ack::Accepted => {
            tracing::debug!(uid = %pod.uid, "AddWorkload acknowledged");
            Ok(true)
        }
        Ack::Rejected(error) => {
            tracing::warn!(uid = %pod.uid, %error, "ztunnel rejected AddWorkload");
            Ok(false)
        }
    }
}

/// Installs `pod`'s capture rules (replacing any previous ones, atomically).
async fn install(pod: &Pod) -> Result<(), RulesError> {
    let ruleset = Ruleset::render(&pod.capture)?;
    let path = pod.netns.clone();
    tokio::task::spawn_blocking(move || {
        let netns = open_netns(&path)?;
        rules::apply(netns.as_fd(), &ruleset)?;
        Ok(())
    })
    .await?
}

/// Removes `pod`'s capture rules.
async fn uninstall(pod: &Pod) -> Result<(), RulesError> {
    let path = pod.netns.clone();
    let capture = pod.capture.clone();
    tokio::task::spawn_blocking(move || {
        let netns = open_netns(&path)?;
        rules::remove(netns.as_fd(), &capture)?;
        Ok(())
    })
    .await?
}

/// [`uninstall`], logging the outcome; a namespace that is gone has nothing to remove.
async fn uninstall_logged(pod: &Pod) {
    match uninstall(pod).await {
        Ok(()) => tracing::debug!(uid = %pod.uid, "capture rules removed"),
        Err(error) if error.netns_missing() => {
            tracing::debug!(uid = %pod.uid, "network namespace gone; no rules to remove")
        }
        Err(error) => tracing::warn!(
            uid = %pod.uid,
            netns = %pod.netns.display(),
            %error,
            "failed to remove capture rules"
        ),
    }
}

fn open_netns(path: &Path) -> Result<File, RulesError> {
    File::open(path).map_err(|source| RulesError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// A version of the file: its content hash, or `None` when unreadable.
type Version = Option<u64>;

/// Polls the pods file; a new version counts once it stayed the same for one poll.
struct FileWatcher {
    path: PathBuf,
    /// The version last acted on.
    last: Version,
    /// A new version seen at the previous poll.
    pending: Option<Version>,
}

impl FileWatcher {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            last: None,
            pending: None,
        }
    }

    async fn read(&self) -> Result<String, PodsFileError> {
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || read_bounded(&path)).await {
            Ok(result) => result,
            Err(e) => Err(PodsFileError::Read {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            }),
        }
    }

    /// Loads the file now and makes it the current version.
    async fn load_initial(&mut self) -> Result<Vec<Pod>, PodsFileError> {
        let text = self.read().await?;
        self.last = Some(hash(&text));
        parse_pods(&text)
    }

    /// `Some` when a new version is ready: the pods, or why the file is unusable.
    async fn poll(&mut self) -> Option<Result<Vec<Pod>, PodsFileError>> {
        let read = self.read().await;
        let current = read.as_ref().ok().map(|text| hash(text));
        if current == self.last {
            self.pending = None;
            return None;
        }
        if self.pending != Some(current) {
            self.pending = Some(current);
            return None;
        }
        self.pending = None;
        self.last = current;
        Some(read.and_then(|text| parse_pods(&text)))
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}
