//! A network-namespace test harness: a small two-node "cluster" made of Linux network
//! namespaces, sockets created inside them, and a packet capture of the link between nodes.
//!
//! # Layout ([`Layout::standard`])
//!
//! ```text
//!                          wire (bridge br0: the inter-node link, captured by Capture)
//!                 ┌───────────────┴────────────────┐
//!        node1 wire0 10.99.0.1/24          node2 wire0 10.99.0.2/24
//!        br0 10.1.1.1/24                   br0 10.1.2.1/24
//!        ┌──────┴──────┐                   ┌──────┴──────┐
//!   pod-a 10.1.1.10  pod-b 10.1.1.11  pod-c 10.1.2.10  pod-d 10.1.2.11
//! ```
//!
//! Nodes forward (`ip_forward`) and route each other's pod subnet via the other node's wire
//! address; each pod has `lo` up, an `eth0` veth into its node's bridge and a default route via
//! the bridge address. The layout is data ([`NodeSpec`], [`PodSpec`]): a test can start from
//! another one, or [`Topology::add_pod`] / [`Topology::add_node`] later.
//!
//! # Names and cleanup
//!
//! Every namespace is named `zte-<pid>-<counter>-<logical name>` ([`PREFIX`]), so tests and
//! test binaries can run in parallel. A [`Topology`] deletes every namespace it created when
//! dropped, also while a test panics; [`cleanup_stale`] (run once per process by
//! [`Topology::new`]) removes those left by killed runs, whose pid is dead. Everything goes
//! through the `ip` command (found in `PATH`, else `/usr/sbin` or `/sbin`).
//!
//! # Root
//!
//! Namespaces need root. Tests call [`netns_tests_enabled`] first: as root it returns `true`;
//! otherwise it panics with a clear message, unless [`SKIP_ENV`]`=1`, where it prints a loud
//! notice and returns `false` (the test then returns early).

use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use ztunnel::inpod::netns::{Netns, NetnsError};

/// Prefix of every namespace the harness creates.
pub const PREFIX: &str = "zte-";
/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Set to `1` to skip (rather than fail) namespace tests when not root.
pub const SKIP_ENV: &str = "ZTUNNEL_SKIP_NETNS_TESTS";
/// Logical name of the namespace that holds the inter-node bridge.
pub const WIRE: &str = "wire";
/// Bytes of frames a [`Capture`] keeps by default (counting goes on after that).
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 << 20;
/// How long socket helpers wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The bridge in the wire namespace and in every node.
const BRIDGE: &str = "br0";
/// A node's interface on the wire.
const NODE_WIRE_IF: &str = "wire0";
/// A pod's interface.
const POD_IF: &str = "eth0";
/// How long the capture thread blocks in one read before checking whether to stop.
const CAPTURE_POLL: Duration = Duration::from_millis(50);
/// Largest frame read (veth may hand up GRO super-frames of up to 64 KiB).
const MAX_FRAME: usize = 256 << 10;

/// `true` when namespace tests can run (root); see the module documentation.
///
/// # Panics
/// When not root and [`SKIP_ENV`] is not `1`.
pub fn netns_tests_enabled() -> bool {
    require_root("this test")
}

/// [`netns_tests_enabled`], naming `test` in the messages.
///
/// # Panics
/// When not root and [`SKIP_ENV`] is not `1`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED {test}: it needs root (network namespaces); {SKIP_ENV}=1 is set ***\n"
        );
        return false;
    }
    panic!(
        "\n*** {test} needs root to create network namespaces. Run the tests as root \
         (e.g. sudo -E cargo test), or set {SKIP_ENV}=1 to skip it. ***\n"
    );
}

/// Whether this process runs as root (the owner of `/proc/self`), as namespaces need.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A harness failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A required binary is not installed.
    #[error("{binary} not found in PATH, /usr/sbin or /sbin (apt-get install -y {package})")]
    NotFound {
        /// The binary.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command could not be started.
    #[error("failed to run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr.
        stderr: String,
    },
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The layout is inconsistent (unknown node, duplicate name, address outside its subnet).
    #[error("invalid topology: {0}")]
    Layout(String),
}

impl From<HarnessError> for io::Error {
    fn from(e: HarnessError) -> Self {
        match e {
            HarnessError::Io { context, source } => {
                io::Error::new(source.kind(), format!("{context}: {source}"))
            }
            e => io::Error::other(e),
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// `name` in `PATH`, else in the sbin directories.
fn find_binary(name: &'static str, package: &'static str) -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::NotFound {
            binary: name,
            package,
        })
}

fn ip_binary() -> Result<PathBuf, HarnessError> {
    find_binary("ip", "iproute2")
}

/// Runs `ip args...`; an error carries its stderr.
fn ip(args: &[&str]) -> Result<(), HarnessError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new(ip_binary()?)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip netns add` and `del` of this process, one at a time (the first `add` sets up the
/// shared mount of [`NETNS_DIR`], which does not like company).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn netns_add(name: &str) -> Result<(), HarnessError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name])
}

fn netns_del(name: &str) -> Result<(), HarnessError> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "del", name])
}

/// The named namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>, HarnessError> {
    let command = "ip netns list".to_string();
    let out = Command::new(ip_binary()?)
        .args(["netns", "list"])
        .output()
        .map_err(|source| HarnessError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // Lines are `name` or `name (id: N)`.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Deletes the namespaces named `<prefix><pid>-...` whose process is gone (left by killed
/// runs); the names deleted.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, HarnessError> {
    let mut removed = Vec::new();
    for name in list_netns()? {
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        netns_del(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// A node of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Logical name (`node1`).
    pub name: String,
    /// Its address on the wire.
    pub wire_ip: Ipv4Addr,
    /// Its address on its pods' bridge, their default gateway.
    pub pod_gateway: Ipv4Addr,
    /// Prefix length of its pod subnet.
    pub pod_prefix_len: u8,
}

impl NodeSpec {
    /// A node with a /24 pod subnet.
    pub fn new(name: &str, wire_ip: Ipv4Addr, pod_gateway: Ipv4Addr) -> Self {
        Self {
            name: name.to_string(),
            wire_ip,
            pod_gateway,
            pod_prefix_len: 24,
        }
    }

    /// Its pod subnet, as `a.b.c.d/len`.
    pub fn pod_subnet(&self) -> String {
        let net = network(self.pod_gateway, self.pod_prefix_len);
        format!("{net}/{}", self.pod_prefix_len)
    }
}

/// A pod of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// Logical name (`pod-a`).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its address, in the node's pod subnet.
    pub ip: Ipv4Addr,
}

impl PodSpec {
    /// A pod named `name` on `node`.
    pub fn new(name: &str, node: &str, ip: Ipv4Addr) -> Self {
        Self {
            name: name.to_string(),
            node: node.to_string(),
            ip,
        }
    }
}

/// Nodes and pods to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Prefix length of the wire subnet.
    pub wire_prefix_len: u8,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The pods.
    pub pods: Vec<PodSpec>,
}

impl Layout {
    /// The layout of the module documentation: two nodes, two pods each.
    pub fn standard() -> Self {
        Self {
            wire_prefix_len: 24,
            nodes: vec![
                NodeSpec::new(
                    "node1",
                    Ipv4Addr::new(10, 99, 0, 1),
                    Ipv4Addr::new(10, 1, 1, 1),
                ),
                NodeSpec::new(
                    "node2",
                    Ipv4Addr::new(10, 99, 0, 2),
                    Ipv4Addr::new(10, 1, 2, 1),
                ),
            ],
            pods: vec![
                PodSpec::new("pod-a", "node1", Ipv4Addr::new(10, 1, 1, 10)),
                PodSpec::new("pod-b", "node1", Ipv4Addr::new(10, 1, 1, 11)),
                PodSpec::new("pod-c", "node2", Ipv4Addr::new(10, 1, 2, 10)),
                PodSpec::new("pod-d", "node2", Ipv4Addr::new(10, 1, 2, 11)),
            ],
        }
    }
}

fn network(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// What a namespace is in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The inter-node link.
    Wire,
    /// A node.
    Node,
    /// A pod.
    Pod,
    /// Created with [`Topology::add_namespace`], not wired.
    Bare,
}

/// One namespace of a [`Topology`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    logical: String,
    name: String,
    path: PathBuf,
    role: Role,
    ip: Option<Ipv4Addr>,
}

impl Namespace {
    /// The name the test uses (`pod-a`).
    pub fn logical(&self) -> &str {
        &self.logical
    }

    /// The real, unique name (`zte-1234-0-pod-a`), for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A pod's address, a node's wire address; `None` for the wire and bare namespaces.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    /// Enters it on a thread (see [`Netns`]).
    pub fn open(&self) -> Result<Netns, HarnessError> {
        Ok(Netns::open(&self.path)?)
    }

    /// Runs `program args...` inside it (`ip netns exec`), `program` found in `PATH` or the
    /// sbin directories; its output, whatever its status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, HarnessError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program_path = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| PathBuf::from(program));
        let command = format!("ip netns exec {} {program} {}", self.name, args.join(" "));
        Command::new(ip_binary()?)
            .args(["netns", "exec", &self.name])
            .arg(program_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HarnessError::Spawn { command, source })
    }
}

impl AsRef<Path> for Namespace {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Topologies made by this process, for unique prefixes.
static TOPOLOGIES: AtomicUsize = AtomicUsize::new(0);
static STALE_CLEANUP: Once = Once::new();

/// Namespaces wired into nodes and pods; every one is deleted when dropped.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    wire_prefix_len: u8,
    namespaces: Vec<Namespace>,
    nodes: Vec<NodeSpec>,
    pods: Vec<PodSpec>,
}

impl Topology {
    /// An empty topology with a fresh prefix (`zte-<pid>-<counter>-`). The first one of the
    /// process also removes stale namespaces of dead runs.
    pub fn new() -> Self {
        STALE_CLEANUP.call_once(|| match cleanup_stale(PREFIX) {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("removed stale test namespaces: {removed:?}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("failed to remove stale test namespaces: {e}"),
        });
        let n = TOPOLOGIES.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("{PREFIX}{}-{n}-", std::process::id()),
            wire_prefix_len: 24,
            namespaces: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
        }
    }

    /// Builds `layout`: the wire, its nodes, their pods. On error, what was built is deleted.
    pub fn build(layout: &Layout) -> Result<Self, HarnessError> {
        let mut topology = Self::new();
        topology.wire_prefix_len = layout.wire_prefix_len;
        topology.add_wire()?;
        for node in &layout.nodes {
            topology.add_node(node.clone())?;
        }
        for pod in &layout.pods {
            topology.add_pod(pod.clone())?;
        }
        Ok(topology)
    }

    /// [`Topology::build`] of [`Layout::standard`].
    pub fn standard() -> Result<Self, HarnessError> {
        Self::build(&Layout::standard())
    }

    /// The prefix of this topology's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates an empty namespace (only `lo` up) named `<prefix><logical>`.
    pub fn add_namespace(&mut self, logical: &str) -> Result<&Namespace, HarnessError> {
        self.create(logical, Role::Bare, None)
    }

    fn create(
        &mut self,
        logical: &str,
        role: Role,
        addr: Option<Ipv4Addr>,
    ) -> Result<&Namespace, HarnessError> {
        if logical.is_empty()
            || !logical
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(HarnessError::Layout(format!(
                "namespace name {logical:?}: use letters, digits, '-' and '_'"
            )));
        }
        if self.get(logical).is_some() {
            return Err(HarnessError::Layout(format!(
                "namespace {logical:?} already exists"
            )));
        }
        let name = format!("{}{logical}", self.prefix);
        netns_add(&name)?;
        let namespace = Namespace {
            logical: logical.to_string(),
            path: Path::new(NETNS_DIR).join(&name),
            name,
            role,
            ip: addr,
        };
        self.namespaces.push(namespace);
        let index = self.namespaces.len() - 1;
        let name = self.namespaces[index].name.clone();
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(&self.namespaces[index])
    }

    fn add_wire(&mut self) -> Result<(), HarnessError> {
        let wire = self.create(WIRE, Role::Wire, None)?.name.clone();
        ip(&["-n", &wire, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &wire, "link", "set", BRIDGE, "up"])
    }

    /// Adds a node: its namespace, a veth to the wire, its pods' bridge, forwarding, and the
    /// routes between its pod subnet and every other node's.
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<(), HarnessError> {
        if self.get(WIRE).is_none() {
            self.add_wire()?;
        }
        let wire = self.ns(WIRE).name.clone();
        let index = self.nodes.len();
        let node = self
            .create(&spec.name, Role::Node, Some(spec.wire_ip))?
            .name
            .clone();
        let wire_side = format!("vn{index}");
        ip(&[
            "-n",
            &node,
            "link",
            "add",
            NODE_WIRE_IF,
            "type",
            "veth",
            "peer",
            "name",
            &wire_side,
            "netns",
            &wire,
        ])?;
        ip(&["-n", &wire, "link", "set", &wire_side, "master", BRIDGE])?;
        ip(&["-n", &wire, "link", "set", &wire_side, "up"])?;
        let wire_addr = format!("{}/{}", spec.wire_ip, self.wire_prefix_len);
        ip(&["-n", &node, "addr", "add", &wire_addr, "dev", NODE_WIRE_IF])?;
        ip(&["-n", &node, "link", "set", NODE_WIRE_IF, "up"])?;
        ip(&["-n", &node, "link", "add", BRIDGE, "type", "bridge"])?;
        let gateway = format!("{}/{}", spec.pod_gateway, spec.pod_prefix_len);
        ip(&["-n", &node, "addr", "add", &gateway, "dev", BRIDGE])?;
        ip(&["-n", &node, "link", "set", BRIDGE, "up"])?;
        self.ns(&spec.name)
            .clone()
            .exec_checked("sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        for other in &self.nodes {
            let other_ns = self.ns(&other.name).name.clone();
            let (theirs, their_ip) = (other.pod_subnet(), other.wire_ip.to_string());
            ip(&["-n", &node, "route", "add", &theirs, "via", &their_ip])?;
            let (ours, our_ip) = (spec.pod_subnet(), spec.wire_ip.to_string());
            ip(&["-n", &other_ns, "route", "add", &ours, "via", &our_ip])?;
        }
        self.nodes.push(spec);
        Ok(())
    }

    /// Adds a pod on its node: `lo` up, `eth0` veth into the node's bridge, default route via
    /// the node.
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<(), HarnessError> {
        let node_spec = self
            .nodes
            .iter()
            .find(|n| n.name == spec.node)
            .cloned()
            .ok_or_else(|| {
                HarnessError::Layout(format!("pod {}: no node {:?}", spec.name, spec.node))
            })?;
        if network(spec.ip, node_spec.pod_prefix_len)
            != network(node_spec.pod_gateway, node_spec.pod_prefix_len)
        {
            return Err(HarnessError::Layout(format!(
                "pod {} ({}) is outside the pod subnet {} of {}",
                spec.name,
                spec.ip,
                node_spec.pod_subnet(),
                node_spec.name
            )));
        }
        let node = self.ns(&node_spec.name).name.clone();
        let node_side = format!("vp{}", self.pods.len());
        let pod = self
            .create(&spec.name, Role::Pod, Some(spec.ip))?
            .name
            .clone();
        ip(&[
            "-n", &pod, "link", "add", POD_IF, "type", "veth", "peer", "name", &node_side, "netns",
            &node,
        ])?;
        ip(&["-n", &node, "link", "set", &node_side, "master", BRIDGE])?;
        ip(&["-n", &node, "link", "set", &node_side, "up"])?;
        let addr = format!("{}/{}", spec.ip, node_spec.pod_prefix_len);
        ip(&["-n", &pod, "addr", "add", &addr, "dev", POD_IF])?;
        ip(&["-n", &pod, "link", "set", POD_IF, "up"])?;
        let gateway = node_spec.pod_gateway.to_string();
        ip(&["-n", &pod, "route", "add", "default", "via", &gateway])?;
        self.pods.push(spec);
        Ok(())
    }

    /// The namespace with logical name `logical`.
    pub fn get(&self, logical: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|ns| ns.logical == logical)
    }

    /// The namespace with logical name `logical`.
    ///
    /// # Panics
    /// When there is none: this is test code.
    pub fn ns(&self, logical: &str) -> &Namespace {
        self.get(logical)
            .unwrap_or_else(|| panic!("no namespace {logical:?} in the topology"))
    }

    /// The wire namespace.
    ///
    /// # Panics
    /// When the topology has none.
    pub fn wire(&self) -> &Namespace {
        self.ns(WIRE)
    }

    /// `/var/run/netns/<name>` of `logical`.
    ///
    /// # Panics
    /// When there is no such namespace.
    pub fn netns_path(&self, logical: &str) -> PathBuf {
        self.ns(logical).path.clone()
    }

    /// The address of a pod, or the wire address of a node.
    ///
    /// # Panics
    /// When there is no such pod or node.
    pub fn ip(&self, logical: &str) -> Ipv4Addr {
        self.ns(logical)
            .ip
            .unwrap_or_else(|| panic!("namespace {logical:?} has no address"))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The pods.
    pub fn pods(&self) -> &[PodSpec] {
        &self.pods
    }

    /// Every namespace created, in order.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// The real names of every namespace created.
    pub fn names(&self) -> Vec<String> {
        self.namespaces.iter().map(|ns| ns.name.clone()).collect()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns_del(&ns.name) {
                eprintln!("failed to delete test namespace {}: {e}", ns.name);
            }
        }
    }
}

impl Namespace {
    fn exec_checked(&self, program: &str, args: &[&str]) -> Result<(), HarnessError> {
        let out = self.exec(program, args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Command {
                command: format!("ip netns exec {} {program} {}", self.name, args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Runs `f` on a thread inside the namespace at `ns` (a [`Namespace`] or a path) and returns
/// its result: sockets it creates belong to that namespace. Blocking; `f` must be short.
pub fn run_in<T, F>(ns: impl AsRef<Path>, f: F) -> Result<T, HarnessError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let netns = Netns::open(ns.as_ref())?;
    Ok(netns.run(f)?)
}

/// [`run_in`] from async code (on the blocking pool).
async fn run_in_async<T, F>(ns: &Path, f: F) -> Result<T, HarnessError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = ns.to_path_buf();
    tokio::task::spawn_blocking(move || run_in(path, f))
        .await
        .map_err(|e| HarnessError::Io {
            context: "the namespace task".into(),
            source: io::Error::other(e),
        })?
}

fn stream_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A TCP listener on `addr` inside the namespace at `netns` (a [`Namespace`] or a path).
pub async fn tcp_listener_at(
    netns: impl AsRef<Path>,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, HarnessError> {
    let ns = netns.as_ref();
    let listener = run_in_async(ns, move || -> io::Result<std::net::TcpListener> {
        let socket = stream_socket(addr)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    })
    .await?
    .map_err(io_error(format!("listen on {addr} in {}", ns.display())))?;
    tokio::net::TcpListener::from_std(listener).map_err(io_error("register the listener"))
}

/// A TCP connection to `addr` from a socket created inside the namespace at `netns`
/// (within [`CONNECT_TIMEOUT`]).
pub async fn tcp_connect_at(
    netns: impl AsRef<Path>,
    addr: SocketAddr,
) -> Result<tokio::net::TcpStream, HarnessError> {
    let ns = netns.as_ref();
    let context = format!("connect to {addr} from {}", ns.display());
    let socket = run_in_async(ns, move || -> io::Result<std::net::TcpStream> {
        Ok(stream_socket(addr)?.into())
    })
    .await?
    .map_err(io_error(context.clone()))?;
    connect_socket(socket, addr, context).await
}

/// Connects `socket` (created in some namespace) to `addr` within [`CONNECT_TIMEOUT`].
async fn connect_socket(
    socket: std::net::TcpStream,
    addr: SocketAddr,
    context: String,
) -> Result<tokio::net::TcpStream, HarnessError> {
    let socket = tokio::net::TcpSocket::from_std_stream(socket);
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(result) => result.map_err(io_error(context)),
        Err(_) => Err(HarnessError::Io {
            context,
            source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }),
    }
}

/// A namespace entered once for many sockets. [`tcp_connect_at`] and [`tcp_connect_from`]
/// enter the namespace anew for every socket (a thread that lives for that one socket); this
/// keeps one thread inside it, so a socket costs a hand-off to that thread, as for an
/// application that runs in the namespace. For benchmarks that open many connections. The
/// thread ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Entered {
    netns: Arc<Netns>,
    path: PathBuf,
}

impl Entered {
    /// Enters the namespace at `ns` (a [`Namespace`] or a path).
    pub fn new(ns: impl AsRef<Path>) -> Result<Self, HarnessError> {
        let path = ns.as_ref().to_path_buf();
        Ok(Self {
            netns: Arc::new(Netns::open(&path)?),
            path,
        })
    }

    /// What [`tcp_connect_at`] does, with a socket created by this namespace's thread.
    pub async fn tcp_connect(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, HarnessError> {
        let context = format!("connect to {addr} from {}", self.path.display());
        let netns = self.netns.clone();
        let socket = tokio::task::spawn_blocking(move || {
            netns
                .run(move || -> io::Result<std::net::TcpStream> { Ok(stream_socket(addr)?.into()) })
        })
        .await
        .map_err(|e| HarnessError::Io {
            context: "the namespace task".into(),
            source: io::Error::other(e),
        })??
        .map_err(io_error(context.clone()))?;
        connect_socket(socket, addr, context).await
    }
}

/// A UDP socket bound to `addr` inside the namespace at `netns`.
pub async fn udp_socket_at(
    netns: impl AsRef<Path>,
    addr: SocketAddr,
) -> Result<tokio::net::UdpSocket, HarnessError> {
    let ns = netns.as_ref();
    let socket = run_in_async(ns, move || -> io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    })
    .await?
    .map_err(io_error(format!("bind UDP {addr} in {}", ns.display())))?;
    tokio::net::UdpSocket::from_std(socket).map_err(io_error("register the UDP socket"))
}

/// A TCP listener on `addr` inside `topology`'s namespace `ns` (`"pod-c"`).
///
/// # Panics
/// When the topology has no namespace `ns`.
pub async fn tcp_listener_in(
    topology: &Topology,
    ns: &str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, HarnessError> {
    tcp_listener_at(topology.ns(ns), addr).await
}

/// A TCP connection to `addr` from inside `topology`'s namespace `ns` (within
/// [`CONNECT_TIMEOUT`]).
///
/// # Panics
/// When the topology has no namespace `ns`.
pub async fn tcp_connect_from(
    topology: &Topology,
    ns: &str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpStream, HarnessError> {
    tcp_connect_at(topology.ns(ns), addr).await
}

/// A UDP socket bound to `addr` inside `topology`'s namespace `ns`.
///
/// # Panics
/// When the topology has no namespace `ns`.
pub async fn udp_socket_in(
    topology: &Topology,
    ns: &str,
    addr: SocketAddr,
) -> Result<tokio::net::UdpSocket, HarnessError> {
    udp_socket_at(topology.ns(ns), addr).await
}

/// Whether ztunnel's capture table (`inet istio-ambient`) exists in `topology`'s namespace
/// `ns` (`nft list table` succeeds there).
///
/// # Panics
/// When the topology has no namespace `ns`.
pub fn nft_table_exists(topology: &Topology, ns: &str) -> bool {
    topology
        .ns(ns)
        .exec(
            "nft",
            &["list", "table", "inet", ztunnel::inpod::rules::TABLE],
        )
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// A TCP flow seen by a [`Capture`], as addressed in the frame (one entry per direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpFlow {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// Counters of one [`TcpFlow`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Frames.
    pub frames: u64,
    /// TCP payload bytes.
    pub payload_bytes: u64,
}

/// What a [`Capture`] saw.
#[derive(Clone, Debug, Default)]
pub struct CaptureResult {
    data: Vec<u8>,
    kept: Vec<Range<usize>>,
    frames: u64,
    bytes: u64,
    truncated: bool,
    tcp: BTreeMap<TcpFlow, FlowStats>,
    error: Option<String>,
}

impl CaptureResult {
    /// Whether a kept frame contains `marker` (a marker split across two TCP segments is
    /// not found: keep markers short).
    pub fn contains(&self, marker: &[u8]) -> bool {
        if marker.is_empty() {
            return true;
        }
        self.kept.iter().any(|r| {
            self.data[r.clone()]
                .windows(marker.len())
                .any(|w| w == marker)
        })
    }

    /// Frames seen. A frame crossing the wire bridge is seen twice (arriving from one node's
    /// veth, leaving through the other's).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes of all frames seen.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether frames were dropped from the kept bytes (the limit was reached); counters
    /// still cover every frame.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// TCP flows (IPv4 and IPv6) and their counters.
    pub fn tcp_flows(&self) -> &BTreeMap<TcpFlow, FlowStats> {
        &self.tcp
    }

    /// TCP frames from or to `port`.
    pub fn tcp_frames_with_port(&self, port: u16) -> u64 {
        self.tcp
            .iter()
            .filter(|(f, _)| f.src.port() == port || f.dst.port() == port)
            .map(|(_, s)| s.frames)
            .sum()
    }

    /// TCP frames neither from nor to `port` (e.g. 15008: whatever is not HBONE).
    pub fn tcp_frames_without_port(&self, port: u16) -> u64 {
        self.tcp
            .iter()
            .filter(|(f, _)| f.src.port() != port && f.dst.port() != port)
            .map(|(_, s)| s.frames)
            .sum()
    }

    /// The read error that ended the capture early, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn record(&mut self, frame: &[u8], limit: usize) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        if let Some((flow, payload)) = parse_tcp(frame) {
            let stats = self.tcp.entry(flow).or_default();
            stats.frames += 1;
            stats.payload_bytes += payload as u64;
        }
        if self.data.len() + frame.len() > limit {
            self.truncated = true;
            return;
        }
        let start = self.data.len();
        self.data.extend_from_slice(frame);
        self.kept.push(start..self.data.len());
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The TCP flow of an Ethernet frame, and its payload length.
fn parse_tcp(frame: &[u8]) -> Option<(TcpFlow, usize)> {
    let mut ethertype = be16(frame, 12)?;
    let mut offset = 14;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(frame, offset + 2)?;
        offset += 4;
    }
    let ip = frame.get(offset..)?;
    let (src, dst, tcp, ip_payload_len) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 || ihl < 20 {
                return None;
            }
            let total = usize::from(be16(ip, 2)?);
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(src),
                IpAddr::from(dst),
                ip.get(ihl..)?,
                total.checked_sub(ihl)?,
            )
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let payload = usize::from(be16(ip, 4)?);
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), ip.get(40..)?, payload)
        }
        _ => return None,
    };
    let sport = be16(tcp, 0)?;
    let dport = be16(tcp, 2)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    let flow = TcpFlow {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    };
    Some((flow, ip_payload_len.saturating_sub(data_offset)))
}

/// A packet capture (`AF_PACKET`, every protocol) of every interface of one namespace — the
/// wire, to see exactly what travels between nodes. Frames are read on a background thread
/// until [`Capture::stop`].
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CaptureResult>>,
}

impl Capture {
    /// Starts capturing on `topology`'s wire (every frame between nodes), keeping up to
    /// [`DEFAULT_CAPTURE_LIMIT`] bytes of frames. Frames sent after this returns are seen.
    ///
    /// # Panics
    /// When the topology has no wire.
    pub fn start(topology: &Topology) -> Result<Self, HarnessError> {
        Self::start_in(topology.wire(), DEFAULT_CAPTURE_LIMIT)
    }

    /// Starts capturing on every interface of the namespace at `ns` (a [`Namespace`] or a
    /// path), keeping up to `limit` bytes of frames.
    pub fn start_in(ns: impl AsRef<Path>, limit: usize) -> Result<Self, HarnessError> {
        let ns = ns.as_ref();
        let socket = run_in(ns, || -> io::Result<Socket> {
            // ETH_P_ALL, in network byte order.
            let all = Protocol::from(i32::from(0x0003u16.to_be()));
            let socket = Socket::new(Domain::PACKET, Type::RAW, Some(all))?;
            socket.set_read_timeout(Some(CAPTURE_POLL))?;
            // Best effort: capped by net.core.rmem_max.
            let _ = socket.set_recv_buffer_size(16 << 20);
            Ok(socket)
        })?
        .map_err(io_error(format!(
            "open a packet socket in {} (needs CAP_NET_RAW)",
            ns.display()
        )))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("netns-capture".into())
            .spawn(move || {
                let mut result = CaptureResult::default();
                let mut buf = vec![0u8; MAX_FRAME];
                while !thread_stop.load(Ordering::Relaxed) {
                    match (&socket).read(&mut buf) {
                        Ok(n) => result.record(&buf[..n], limit),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => {
                            result.error = Some(e.to_string());
                            break;
                        }
                    }
                }
                // Whatever is still queued was sent before `stop`: take it too.
                if result.error.is_none() && socket.set_nonblocking(true).is_ok() {
                    while let Ok(n) = (&socket).read(&mut buf) {
                        result.record(&buf[..n], limit);
                    }
                }
                result
            })
            .map_err(io_error("start the capture thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns what was seen, including the frames still queued in the socket.
    pub fn stop(mut self) -> CaptureResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_frames() {
        assert_eq!(
            NodeSpec::new("n", Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 1, 2, 1))
                .pod_subnet(),
            "10.1.2.0/24"
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 0),
            Ipv4Addr::UNSPECIFIED
        );
        // Ethernet + IPv4 (20) + TCP (20) + 5 bytes of payload.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, 0, 45, 0, 0, 0, 0, 64, 6, 0, 0]);
        frame.extend_from_slice(&[10, 1, 1, 10, 10, 1, 2, 10]);
        frame.extend_from_slice(&[0x9c, 0x40, 0x3a, 0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 0x50]);
        frame.extend_from_slice(&[0; 7]);
        frame.extend_from_slice(b"hello");
        let (flow, payload) = parse_tcp(&frame).unwrap();
        assert_eq!(flow.src, "10.1.1.10:40000".parse().unwrap());
        assert_eq!(flow.dst, "10.1.2.10:15016".parse().unwrap());
        assert_eq!(payload, 5);
        let mut result = CaptureResult::default();
        result.record(&frame, 1 << 20);
        result.record(&frame, 10);
        assert!(result.contains(b"hello") && !result.contains(b"bye"));
        assert_eq!((result.frames(), result.truncated()), (2, true));
        assert_eq!(result.tcp_frames_with_port(15016), 2);
        assert_eq!(result.tcp_frames_without_port(15016), 0);
        assert!(parse_tcp(&frame[..20]).is_none());
    }
}
