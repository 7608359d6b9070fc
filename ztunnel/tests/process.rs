//! The `ztunnel` binary end to end: configured from the environment only, as in a cluster.
//!
//! Two processes on loopback addresses share a local config file and a local CA:
//! - node A, shared mode (`NODE_NAME=node-a`), serves `sleep` (127.0.6.1) with SOCKS5 on;
//! - node B, dedicated mode (`PROXY_WORKLOAD_INFO=default/httpbin/httpbin`), serves `httpbin`
//!   on 127.0.6.2.
//!
//! Traffic goes client → A (SOCKS5) → HBONE → B → application; a malformed config file is
//! reported and the previous state keeps serving; access logs are checked on both sides. Both
//! processes are then stopped with SIGTERM while a connection is open: readiness turns 503, new
//! connections are refused (for B's HBONE peer A, a new tunnel fails rather than reusing the
//! drained connection), the open connection keeps working until the drain deadline, then it is
//! closed and the process exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.6.1"]
  protocol: HBONE
  node: node-a
  workloadName: sleep
- uid: cluster1//v1/Pod/default/httpbin
  name: httpbin
  namespace: default
  serviceAccount: httpbin
  workloadIps: ["127.0.6.2"]
  protocol: HBONE
  node: node-b
  workloadName: httpbin
  services:
    default/httpbin.default.svc.cluster.local:
      80: 8000
- uid: cluster1//v1/Pod/default/legacy
  name: legacy
  namespace: default
  serviceAccount: legacy
  workloadIps: ["127.0.6.3"]
  protocol: TCP
  node: node-b
services:
- name: httpbin
  namespace: default
  hostname: httpbin.default.svc.cluster.local
  vips: ["/127.10.6.2"]
  ports:
    80: 8000
"#;

/// How long connections may drain after SIGTERM.
const DRAIN: Duration = Duration::from_secs(3);
/// Upper bound for anything the test waits on (start-up, exit after the drain).
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ztunnel` process with its log.
struct Ztunnel {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Ztunnel {
    fn spawn(dir: &std::path::Path, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
        cmd.env_clear()
            .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
            .env("LOCAL_CA_DIR", dir.join("ca"))
            .env("ADMIN_PORT", "0")
            .env("STATS_PORT", "0")
            .env("READINESS_PORT", "0")
            .env(
                "CONNECTION_TERMINATION_DEADLINE",
                format!("{}ms", DRAIN.as_millis()),
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn ztunnel");
        let log = Arc::new(Mutex::new(Vec::new()));
        // The log goes to stdout.
        let stdout = child.stdout.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`.
    async fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                let status = self.child.try_wait();
                panic!("no log line with {needle:?} ({status:?}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address logged as `name=<addr>` on the start-up line.
    async fn endpoint(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_for_log("ztunnel started").await;
        let key = format!("{name}=");
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        value.parse().unwrap()
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the process to exit; its exit status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`: status and body, or the connect error.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path).await
}

/// `method path` (no body) on `addr`: status and body, or the connect error.
async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((200, _)) = get(addr, "/healthz/ready").await {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_not_ready(addr: SocketAddr) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((503, body)) = get(addr, "/healthz/ready").await {
            return body;
        }
        assert!(Instant::now() < deadline, "{addr} still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SOCKS5 `CONNECT host:port` through `proxy`: the reply code and, on success, the stream.
/// The client binds the proxy's own address, as an application in that workload would.
async fn socks5(proxy: SocketAddr, host: &str, port: u16) -> std::io::Result<(u8, TcpStream)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(proxy.ip(), 0))?;
    let mut s = socket.connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).await?;
    assert_eq!(greeting, [5, 0]);
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len()).unwrap()];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    // Reply with an IPv4 bound address: 10 bytes.
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    Ok((reply[1], s))
}

/// Sends `msg` and expects it echoed.
async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(got, msg);
}

/// Waits until the peer closes `s` (EOF or reset).
async fn closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

/// The access log record (without its timestamp, level and duration) of the connection
/// whose line contains `needle`.
async fn access_record(node: &mut Ztunnel, needle: &str) -> String {
    let line = node.wait_for_log(needle).await;
    let record = line
        .split_once(" access: ")
        .unwrap_or_else(|| panic!("not an access log line: {line}"))
        .1;
    let (record, duration) = record
        .rsplit_once(" duration=")
        .unwrap_or_else(|| panic!("no duration: {line}"));
    assert!(
        duration
            .strip_suffix("ms")
            .is_some_and(|ms| ms.parse::<u64>().is_ok()),
        "{line}"
    );
    record.to_string()
}

/// An echo application.
async fn echo_app(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_dedicated_processes_carry_traffic_and_drain_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    // The CA root, once, before both processes read it.
    hbone::LocalCa::load_or_generate(&dir.path().join("ca"), "cluster.local").unwrap();
    echo_app("127.0.6.2:8000").await;
    echo_app("127.0.6.3:9000").await;

    let mut node_b = Ztunnel::spawn(
        dir.path(),
        &[
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/httpbin/httpbin"),
            ("ZTUNNEL_BIND_ADDRESS", "127.0.6.2"),
        ],
    );
    let mut node_a = Ztunnel::spawn(
        dir.path(),
        &[
            ("NODE_NAME", "node-a"),
            ("ZTUNNEL_BIND_ADDRESS", "127.0.6.1"),
            ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ],
    );
    let ready_a = node_a.endpoint("readiness").await;
    let ready_b = node_b.endpoint("readiness").await;
    wait_ready(ready_a).await;
    wait_ready(ready_b).await;
    let socks_a: SocketAddr = "127.0.6.1:15080".parse().unwrap();

    // Through HBONE to the dedicated proxy, by service hostname.
    let (code, mut tunnel) = socks5(socks_a, "httpbin.default.svc.cluster.local", 80)
        .await
        .unwrap();
    assert_eq!(code, 0, "a:\n{}\nb:\n{}", node_a.log(), node_b.log());
    echo(&mut tunnel, b"ping through the mesh").await;

    // B saw A's workload identity over mutual TLS.
    let (status, metrics) = get(node_b.endpoint("metrics").await, "/stats/prometheus")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(r#"reporter="destination""#)
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        opened.contains(r#"source_principal="spiffe://cluster.local/ns/default/sa/sleep""#),
        "{opened}"
    );
    assert!(
        opened.contains(r#"destination_principal="spiffe://cluster.local/ns/default/sa/httpbin""#),
        "{opened}"
    );
    assert!(
        opened.contains(r#"connection_security_policy="mutual_tls""#),
        "{opened}"
    );
    assert!(opened.ends_with(" 1"), "{opened}");

    // A malformed config file is reported and the previous state keeps serving.
    std::fs::write(dir.path().join("mesh.yaml"), "workloads: [ {uid: 1\n").unwrap();
    let warning = node_a.wait_for_log("failed to reload local config").await;
    assert!(warning.contains("WARN"), "{warning}");
    node_b.wait_for_log("failed to reload local config").await;
    let (code, mut again) = socks5(socks_a, "httpbin.default.svc.cluster.local", 80)
        .await
        .unwrap();
    assert_eq!(code, 0);
    echo(&mut again, b"previous state kept").await;
    drop(again);

    // One short connection, logged on both sides when it ends.
    let (code, mut short) = socks5(socks_a, "httpbin.default.svc.cluster.local", 80)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let client = short.local_addr().unwrap();
    short.write_all(b"twelve bytes").await.unwrap();
    short.shutdown().await.unwrap();
    let mut back = Vec::new();
    short.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"twelve bytes");
    let outbound = access_record(&mut node_a, &format!("src.addr={client} ")).await;
    assert_eq!(
        outbound,
        format!(
            "connection complete src.addr={client} src.workload=sleep src.namespace=default \
src.identity=spiffe://cluster.local/ns/default/sa/sleep dst.addr=127.0.6.2:15008 \
dst.hbone_addr=127.0.6.2:8000 dst.service=httpbin.default.svc.cluster.local \
dst.workload=httpbin dst.namespace=default \
dst.identity=spiffe://cluster.local/ns/default/sa/httpbin direction=outbound \
bytes_sent=12 bytes_recv=12"
        )
    );
    // B names the original client (from `Forwarded`) and its workload, found by that address.
    let inbound = access_record(&mut node_b, &format!("src.addr={client} ")).await;
    assert_eq!(
        inbound,
        format!(
            "connection complete src.addr={client} src.workload=sleep src.namespace=default \
src.identity=spiffe://cluster.local/ns/default/sa/sleep dst.addr=127.0.6.2:8000 \
dst.hbone_addr=127.0.6.2:8000 dst.workload=httpbin dst.namespace=default \
dst.identity=spiffe://cluster.local/ns/default/sa/httpbin direction=inbound \
bytes_sent=12 bytes_recv=12"
        )
    );

    // The outbound capture listener, reached without a capture rule, is its own destination:
    // refused as a loop (reset, nothing proxied).
    // The reset may already be seen by the connect.
    if let Ok(mut direct) = TcpStream::connect("127.0.6.1:15001").await {
        closed(&mut direct).await;
    }
    let line = node_a.wait_for_log("(loop)").await;
    assert!(line.contains("127.0.6.1:15001"), "{line}");

    // SIGTERM to B while the tunnel is open.
    node_b.terminate();
    let body = wait_not_ready(ready_b).await;
    assert!(body.contains("draining"), "{body}");
    // A new tunnel to B fails: B's listener is closed and its HBONE connection with A went
    // away (GOAWAY), so A does not reuse it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, _) = socks5(socks_a, "httpbin.default.svc.cluster.local", 80)
            .await
            .unwrap();
        if code != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "new tunnels still accepted by B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open tunnel works until the drain deadline, then B closes it and exits cleanly.
    echo(&mut tunnel, b"still here while draining").await;
    closed(&mut tunnel).await;
    assert!(node_b.exited().await.success(), "{}", node_b.log());
    node_b.wait_for_log("drained").await;

    // SIGTERM to A while a plain TCP connection (to a workload outside the mesh) is open.
    let (code, mut plain) = socks5(socks_a, "127.0.6.3", 9000).await.unwrap();
    assert_eq!(code, 0);
    echo(&mut plain, b"plain tcp").await;
    node_a.terminate();
    let body = wait_not_ready(ready_a).await;
    assert!(body.contains("draining"), "{body}");
    // The SOCKS5 listener stops accepting.
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(socks_a).await.is_ok() {
        assert!(Instant::now() < deadline, "SOCKS5 still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo(&mut plain, b"still open").await;
    closed(&mut plain).await;
    assert!(node_a.exited().await.success(), "{}", node_a.log());
    let log = node_a.log();
    assert!(
        log.contains(r#"shutting down gracefully reason="SIGTERM""#),
        "{log}"
    );
    assert!(log.contains("drain deadline reached"), "{log}");
}

/// ZTUNNEL_WORKER_THREADS sets the data path's worker threads; a bad value stops start-up with
/// an error naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    // A node with no workloads of its own, every port chosen by the OS: nothing it binds can
    // collide with the other test's processes.
    let quiet = [
        ("NODE_NAME", "node-c"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.6.9"),
        ("OUTBOUND_PORT", "0"),
        ("INBOUND_PLAINTEXT_PORT", "0"),
        ("INBOUND_HBONE_PORT", "0"),
    ];
    // The variable itself, and without it a quarter of the cores rounded up (at least 2).
    for setting in [("ZTUNNEL_WORKER_THREADS", "3"), ("ZTUNNEL_CPU_LIMIT", "12")] {
        let mut node = Ztunnel::spawn(dir.path(), &[quiet.as_slice(), &[setting]].concat());
        let line = node.wait_for_log("worker threads").await;
        assert!(line.contains("workers=3"), "{setting:?}: {line}");
        // Stopped once started: SIGTERM then drains rather than killing.
        node.endpoint("readiness").await;
        node.terminate();
        assert!(node.exited().await.success(), "{setting:?}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .envs(quiet)
        .env("LOCAL_XDS_PATH", dir.path().join("mesh.yaml"))
        .env("LOCAL_CA_DIR", dir.path().join("ca"))
        .env("ZTUNNEL_WORKER_THREADS", "lots")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ZTUNNEL_WORKER_THREADS=\"lots\""),
        "the error names the variable and its value: {stderr}"
    );
}

/// The log filter the process starts with (`RUST_LOG`) is the one its admin server reports
/// (`POST /logging` without parameters) and replaces at runtime: once replaced, the process
/// logs what the new filter lets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_replaces_the_log_filter_of_the_running_process() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let mut node = Ztunnel::spawn(
        dir.path(),
        &[
            ("NODE_NAME", "node-d"),
            ("ZTUNNEL_BIND_ADDRESS", "127.0.6.10"),
            ("OUTBOUND_PORT", "0"),
            ("INBOUND_PLAINTEXT_PORT", "0"),
            ("INBOUND_HBONE_PORT", "0"),
            // The admin server's own lines are held back at first.
            ("RUST_LOG", "info,ztunnel::admin=warn"),
        ],
    );
    let admin = node.endpoint("admin").await;
    let (status, body) = request(admin, "POST", "/logging").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("current log level is ")
            && body.contains("ztunnel::admin=warn")
            && body.contains("info"),
        "{body}"
    );

    let (status, body) = request(admin, "POST", "/logging?level=debug")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The admin server's info line, which the first filter held back, now gets through.
    let line = node.wait_for_log("log level changed").await;
    assert!(
        line.contains("INFO") && line.contains("level=debug"),
        "{line}"
    );
    let (_, body) = request(admin, "POST", "/logging").await.unwrap();
    assert_eq!(body, "current log level is debug\n");

    // `reset` restores the start-up filter.
    let (status, body) = request(admin, "POST", "/logging?reset").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (_, body) = request(admin, "POST", "/logging").await.unwrap();
    assert!(body.contains("ztunnel::admin=warn"), "{body}");
    node.terminate();
    assert!(node.exited().await.success(), "{}", node.log());
}
