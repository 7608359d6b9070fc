//! `ztunnel node-agent` end to end, against real network namespaces (root only).
//!
//! The binary runs as istio-cni would, with a pods file naming three namespaces made with
//! `ip netns add`; the test plays ztunnel with the library's ZDS client and a handler that
//! records every call. It checks the replay (Adds with the right workload info and the
//! namespace's own handle, then the snapshot), the capture rules in each namespace, the hot
//! reload (a removed pod is deleted and its rules removed, an added pod is announced, an
//! invalid file changes nothing), the replay to a second connection, and a clean SIGTERM
//! (socket removed, rules left in place).
//!
//! Not root: the test fails with a message, unless `ZTUNNEL_SKIP_NETNS_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use ztunnel::config::WorkloadInfo;
use ztunnel::inpod::netns::NetnsId;
use ztunnel::inpod::zds::{WorkloadHandler, ZdsClient, ZdsConfig};

/// Upper bound for anything the test waits on.
const WAIT: Duration = Duration::from_secs(15);
/// Upper bound for the whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `true` when the test can run; panics with a message when it cannot and was not told to
/// skip.
fn netns_tests_enabled() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var("ZTUNNEL_SKIP_NETNS_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED: {} needs root (network namespaces, nftables); \
             ZTUNNEL_SKIP_NETNS_TESTS=1 is set ***\n",
            module_path!()
        );
        return false;
    }
    panic!(
        "\n*** {} needs root to create network namespaces and install nftables rules. \
         Run the tests as root (e.g. sudo -E cargo test), or set ZTUNNEL_SKIP_NETNS_TESTS=1 \
         to skip them. ***\n",
        module_path!()
    );
}

/// `name` in `PATH` or the sbin directories.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed (apt-get install -y iproute2 nftables)")
        })
}

/// A named network namespace, deleted when dropped (also on panic).
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new(n: usize) -> Self {
        let name = format!("zt-na-{}-{n}", std::process::id());
        // A leftover of a killed run with a recycled pid.
        let _ = Command::new(binary("ip"))
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let out = Command::new(binary("ip"))
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn id(&self) -> NetnsId {
        NetnsId::of(File::open(self.path()).unwrap().as_fd()).unwrap()
    }

    /// Whether our capture table exists in the namespace.
    fn has_rules(&self) -> bool {
        Command::new(binary("ip"))
            .args(["netns", "exec", &self.name])
            .arg(binary("nft"))
            .args(["list", "table", "inet", ztunnel::inpod::rules::TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new(binary("ip"))
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The `ztunnel node-agent` process with its log; killed when dropped.
struct AgentProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl AgentProcess {
    fn spawn(socket: &Path, pods: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .args(["node-agent", "--socket"])
            .arg(socket)
            .arg("--pods")
            .arg(pods)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Log lines that contain every one of `pieces`.
    fn count(&self, pieces: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| pieces.iter().all(|p| line.contains(p)))
            .count()
    }

    fn logged(&self, pieces: &[&str]) -> bool {
        self.count(pieces) > 0
    }

    /// Waits until a log line contains every one of `pieces`.
    async fn wait_log(&self, pieces: &[&str]) {
        self.wait_log_count(pieces, 1).await;
    }

    /// Waits until `n` log lines contain every one of `pieces`.
    async fn wait_log_count(&self, pieces: &[&str], n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count(pieces) < n {
            assert!(
                Instant::now() < deadline,
                "no log line with {pieces:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call of the handler.
#[derive(Debug)]
enum Call {
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    },
    Keep(String),
    Del(String),
    Snapshot(HashSet<String>),
}

/// A ztunnel stand-in that records every call and accepts it.
struct Recorder(mpsc::UnboundedSender<Call>);

impl WorkloadHandler for Recorder {
    async fn add(
        &self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    ) -> Result<(), String> {
        let _ = self.0.send(Call::Add { uid, info, netns });
        Ok(())
    }

    async fn keep(&self, uid: String) -> Result<(), String> {
        let _ = self.0.send(Call::Keep(uid));
        Ok(())
    }

    async fn del(&self, uid: String) -> Result<(), String> {
        let _ = self.0.send(Call::Del(uid));
        Ok(())
    }

    async fn snapshot_done(&self, present: HashSet<String>) -> Result<(), String> {
        let _ = self.0.send(Call::Snapshot(present));
        Ok(())
    }
}

/// A running ZDS client and what it records.
struct Client {
    calls: mpsc::UnboundedReceiver<Call>,
    shutdown: CancellationToken,
}

impl Client {
    fn start(socket: &Path) -> Self {
        let (tx, calls) = mpsc::unbounded_channel();
        let client = ZdsClient::new(
            ZdsConfig {
                socket_path: socket.to_path_buf(),
            },
            Recorder(tx),
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(client.run(shutdown.clone()));
        Self { calls, shutdown }
    }

    async fn next(&mut self, agent: &AgentProcess) -> Call {
        match tokio::time::timeout(WAIT, self.calls.recv()).await {
            Ok(Some(Call::Keep(uid))) => panic!("the node agent never sends Keep, got {uid}"),
            Ok(Some(call)) => call,
            other => panic!(
                "no call from the node agent ({other:?}); log:\n{}",
                agent.log_text()
            ),
        }
    }

    /// Expects an `AddWorkload` for `pod` with its namespace.
    async fn expect_add(&mut self, agent: &AgentProcess, pod: &PodDef<'_>) {
        match self.next(agent).await {
            Call::Add { uid, info, netns } => {
                assert_eq!(uid, pod.uid);
                assert_eq!(
                    info,
                    Some(WorkloadInfo {
                        namespace: pod.namespace.to_string(),
                        name: pod.name.to_string(),
                        service_account: pod.service_account.to_string(),
                    })
                );
                assert_eq!(
                    NetnsId::of(netns.as_fd()).unwrap(),
                    pod.netns.id(),
                    "the namespace handle of {}",
                    pod.uid
                );
            }
            other => panic!("expected Add {}, got {other:?}", pod.uid),
        }
    }

    async fn expect_snapshot(&mut self, agent: &AgentProcess, uids: &[&str]) {
        match self.next(agent).await {
            Call::Snapshot(present) => assert_eq!(
                present,
                uids.iter().map(|u| u.to_string()).collect::<HashSet<_>>()
            ),
            other => panic!("expected the snapshot, got {other:?}"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct PodDef<'a> {
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    netns: &'a TestNetns,
}

fn pods_yaml(pods: &[&PodDef<'_>]) -> String {
    let mut out = String::from("pods:\n");
    for p in pods {
        out.push_str(&format!(
            "- uid: {}\n  name: {}\n  namespace: {}\n  serviceAccount: {}\n  netns: {}\n  \
             exclude: {{outboundPorts: [9999], outboundCidrs: [\"10.9.0.0/16\"]}}\n",
            p.uid,
            p.name,
            p.namespace,
            p.service_account,
            p.netns.path().display()
        ));
    }
    out
}

/// Replaces the file atomically (write and rename), as editors and config tools do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_until(what: &str, agent: &AgentProcess, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_hands_pods_to_ztunnel_and_follows_the_file() {
    if !netns_tests_enabled() {
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .expect("the test timed out");
}

async fn scenario() {
    let (ns_a, ns_b, ns_c) = (TestNetns::new(1), TestNetns::new(2), TestNetns::new(3));
    let a = PodDef {
        uid: "uid-a",
        name: "sleep",
        namespace: "default",
        service_account: "sleep",
        netns: &ns_a,
    };
    let b = PodDef {
        uid: "uid-b",
        name: "httpbin",
        namespace: "apps",
        service_account: "httpbin",
        netns: &ns_b,
    };
    let c = PodDef {
        uid: "uid-c",
        name: "late",
        namespace: "default",
        service_account: "late",
        netns: &ns_c,
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/ztunnel.sock");
    let pods = dir.path().join("pods.yaml");
    write_atomic(&pods, &pods_yaml(&[&a, &b]));

    let agent = AgentProcess::spawn(&socket, &pods);
    wait_until("the ZDS socket", &agent, || socket.exists()).await;
    // The agent binds its socket, then installs the rules of the pods in the file before it
    // serves anyone: they appear without ztunnel connecting.
    wait_until("rules before ztunnel connects", &agent, || {
        ns_a.has_rules() && ns_b.has_rules()
    })
    .await;

    // Connect: replay in uid order, then the snapshot.
    let mut client = Client::start(&socket);
    client.expect_add(&agent, &a).await;
    client.expect_add(&agent, &b).await;
    client.expect_snapshot(&agent, &[a.uid, b.uid]).await;
    agent.wait_log(&["ztunnel connected"]).await;
    agent.wait_log(&["snapshot sent", "pods=2"]).await;
    assert!(agent.logged(&["pod added", "uid=uid-a", "netns=/var/run/netns/zt-na-"]));
    assert!(
        !ns_c.has_rules(),
        "no rules in a namespace that is not in the file"
    );

    // b leaves the file: DelWorkload, then its rules go.
    write_atomic(&pods, &pods_yaml(&[&a]));
    match client.next(&agent).await {
        Call::Del(uid) => assert_eq!(uid, b.uid),
        other => panic!("expected Del uid-b, got {other:?}"),
    }
    wait_until("uid-b's rules removed", &agent, || !ns_b.has_rules()).await;
    agent.wait_log(&["pod removed", "uid=uid-b"]).await;
    assert!(ns_a.has_rules());

    // c joins: rules, then AddWorkload.
    write_atomic(&pods, &pods_yaml(&[&a, &c]));
    client.expect_add(&agent, &c).await;
    assert!(ns_c.has_rules(), "rules are installed before the Add");
    agent
        .wait_log(&["pod added", "uid=uid-c", "announced=true"])
        .await;

    // An invalid file is reported and changes nothing.
    write_atomic(&pods, "pods:\n- uid: uid-a\n  colour: red\n");
    agent.wait_log(&["invalid pods file", "colour"]).await;
    // The same pods again (a new version after the invalid one): nothing to do.
    let changes = agent.count(&["pods file changed"]);
    write_atomic(&pods, &pods_yaml(&[&a, &c]));
    agent
        .wait_log_count(&["pods file changed", "pods=2"], changes)
        .await;
    agent
        .wait_log_count(&["pods file changed"], changes + 1)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        client.calls.try_recv().is_err(),
        "no call for an invalid or unchanged file"
    );
    assert!(ns_a.has_rules() && ns_c.has_rules());

    // ztunnel goes away and comes back: a full replay.
    drop(client);
    agent.wait_log(&["ztunnel disconnected"]).await;
    let mut client = Client::start(&socket);
    client.expect_add(&agent, &a).await;
    client.expect_add(&agent, &c).await;
    client.expect_snapshot(&agent, &[a.uid, c.uid]).await;

    // SIGTERM: a clean exit, the socket removed, the rules left in place.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent_pid(&agent)).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut agent = agent;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the node agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        agent.log_text()
    );
    assert!(!socket.exists(), "the socket file is removed on exit");
    assert!(
        ns_a.has_rules() && ns_c.has_rules(),
        "rules are left in place"
    );
    drop(client);
}

fn agent_pid(agent: &AgentProcess) -> u32 {
    agent.child.id()
}
