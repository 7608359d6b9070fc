//! A local mesh on loopback addresses, from a local config file: the README's first command.
//!
//! One ztunnel per node named in the config (`node:` of the workloads), each serving its HBONE
//! workloads on their own loopback addresses (inbound 15008, SOCKS5 15080), all sharing one local
//! CA; a small HTTP application on every target port of every workload; and a demo client that
//! sends requests from the first workload's SOCKS5 listener and reports what came back. The
//! mesh keeps running so a user can send their own traffic, e.g.
//! `curl --socks5-hostname 127.0.0.1:15080 http://httpbin.default.svc.cluster.local/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio_util::sync::CancellationToken;

use crate::admin::{AdminInputs, AdminServer, LogLevel, MetricsServer, ReadinessServer, Ready};
use crate::app::{AppError, Node, WorkloadPorts, WorkloadProxy};
use crate::config::ports;
use crate::identity::IdentityManager;
use crate::outbound::request::OutboundContext;
use crate::state::{self, LoadError, LocalConfig, StateHandle, TunnelProtocol};

/// The config used when none is given: `examples/localhost.yaml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../examples/localhost.yaml");

/// Quickstart settings.
#[derive(Clone)]
pub struct Options {
    /// A local config file (hot-reloaded); `None` uses [`DEFAULT_CONFIG`].
    pub config: Option<PathBuf>,
    /// Where the local CA keeps its root.
    pub state_dir: PathBuf,
    /// SOCKS5 port of every workload.
    pub socks5_port: u16,
    /// Runtime log-level control for the admin servers' `/logging`.
    pub log_level: Arc<dyn LogLevel>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("state_dir", &self.state_dir)
            .field("socks5_port", &self.socks5_port)
            .finish_non_exhaustive()
    }
}

/// A log level that cannot be changed (for embedding without a reload handle).
#[derive(Debug)]
pub struct FixedLogLevel(pub String);

impl LogLevel for FixedLogLevel {
    fn current(&self) -> String {
        self.0.clone()
    }

    fn set(&self, _spec: &str) -> Result<(), String> {
        Err("the log level of this process cannot be changed".into())
    }
}

/// The admin, metrics and readiness addresses of one node's ztunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeEndpoints {
    /// Admin (`/config_dump`, `/logging`, `/quitquitquit`).
    pub admin: SocketAddr,
    /// Prometheus metrics (`/stats/prometheus`).
    pub metrics: SocketAddr,
    /// Readiness (`/healthz/ready`).
    pub readiness: SocketAddr,
}

/// Why the quickstart could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// The config did not load.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The CA could not be set up.
    #[error(transparent)]
    Cert(#[from] hbone::cert::CertError),
    /// A listener did not start.
    #[error(transparent)]
    App(#[from] AppError),
    /// A demo application or a node's admin server could not bind.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The config has no HBONE workload to send traffic from.
    #[error("the config has no HBONE workload with a node to run a ztunnel for")]
    NoClient,
}

/// One request of the demo client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trial {
    /// What was asked for (`host:port`).
    pub target: String,
    /// The SOCKS5 reply code (0 = connected).
    pub socks_reply: u8,
    /// The first line of the application's answer, if any.
    pub answer: Option<String>,
}

/// A running quickstart mesh.
#[derive(Debug)]
pub struct Quickstart {
    /// Node name → its workloads' listeners.
    pub nodes: BTreeMap<String, Vec<WorkloadProxy>>,
    /// Node name → its admin, metrics and readiness addresses (on the node's first workload
    /// address, all loopback).
    pub endpoints: BTreeMap<String, NodeEndpoints>,
    /// Cancelled by any node's `POST /quitquitquit`, and cancels every server when dropped.
    pub quit: CancellationToken,
    /// The SOCKS5 listener the demo client used.
    pub client_socks5: SocketAddr,
    /// The client workload's identity.
    pub client_identity: hbone::Identity,
    /// Demo applications: workload name and address.
    pub apps: Vec<(String, SocketAddr)>,
    /// What the demo client saw.
    pub trials: Vec<Trial>,
    /// The shared state (hot-reloaded when a file was given).
    pub state: StateHandle,
    _reload: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the mesh and runs the demo client once.
pub async fn start(opts: &Options) -> Result<Quickstart, QuickstartError> {
    let initial = match &opts.config {
        Some(path) => state::load_file(path)?,
        None => LocalConfig::from_yaml(DEFAULT_CONFIG)?.into_state()?,
    };
    let handle = StateHandle::new(initial);
    let reload = opts
        .config
        .as_ref()
        .map(|path| state::watch_file(path.clone(), handle.clone(), Duration::from_secs(1)));
    let current = handle.current();

    // One node proxy per node name, each serving its HBONE workloads.
    let mut nodes: BTreeMap<String, Vec<WorkloadProxy>> = BTreeMap::new();
    let mut client = None;
    let ca = hbone::LocalCa::load_or_generate(&opts.state_dir, "cluster.local")?;
    let roots = ca.roots().to_vec();
    let mut workloads: Vec<_> = current.workloads().cloned().collect();
    workloads.sort_by(|a, b| a.workload_ips.cmp(&b.workload_ips));
    let quit = CancellationToken::new();
    let mut endpoints = BTreeMap::new();
    let mut node_proxies: BTreeMap<String, Node> = BTreeMap::new();
    for w in workloads
        .iter()
        .filter(|w| w.protocol == TunnelProtocol::Hbone && !w.node.is_empty())
    {
        if !node_proxies.contains_key(&w.node) {
            let Some(ip) = w.workload_ips.first().copied() else {
                continue;
            };
            let ca = hbone::LocalCa::load_or_generate(&opts.state_dir, "cluster.local")?;
            let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(24 * 3600)));
            let ctx = OutboundContext {
                node: Some(w.node.clone()),
                ..OutboundContext::default()
            };
            let node = Node::new(
                handle.clone(),
                identities.clone(),
                roots.clone(),
                hbone::Config::default(),
                ctx,
            )?;
            let admin = AdminInputs {
                state: handle.clone(),
                identities,
                roots: roots.clone(),
                config: serde_json::json!({ "node": w.node, "mode": "quickstart" }),
                log_level: opts.log_level.clone(),
                quit: quit.clone(),
                workload_state: Default::default(),
            };
            endpoints.insert(w.node.clone(), serve_node(ip, &node, admin, &quit).await?);
            node_proxies.insert(w.node.clone(), node);
        }
        let Some(node) = node_proxies.get(&w.node) else {
            continue;
        };
        let ports = WorkloadPorts {
            socks5: Some(opts.socks5_port),
            ..WorkloadPorts::default()
        };
        let proxy = node.add_workload(w, ports).await?;
        if client.is_none() {
            client = proxy.socks5.map(|addr| (addr, w.identity()));
        }
        nodes.entry(w.node.clone()).or_default().push(proxy);
    }
    let (client_socks5, client_identity) = client.ok_or(QuickstartError::NoClient)?;

    // The applications: every target port of every workload.
    let mut apps = Vec::new();
    for w in &workloads {
        let Some(ip) = w.workload_ips.first() else {
            continue;
        };
        let mut ports: Vec<u16> = w
            .services
            .values()
            .flat_map(|m| m.values().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports.into_iter().filter(|p| *p != 0) {
            let addr = SocketAddr::new(*ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| QuickstartError::Bind { addr, source })?;
            tokio::spawn(http_app(listener, w.name.clone()));
            apps.push((w.name.clone(), addr));
        }
    }

    // The demo client: each service by hostname, then a port a policy denies.
    let mut trials = Vec::new();
    let mut services: Vec<_> = current.services().cloned().collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    for svc in services {
        for port in svc.ports.keys().copied().collect::<Vec<_>>() {
            trials.push(http_via_socks5(client_socks5, &svc.hostname, port).await);
        }
    }
    if let Some(target) = workloads
        .iter()
        .find(|w| w.name == "httpbin")
        .and_then(|w| w.workload_ips.first())
    {
        trials.push(http_via_socks5(client_socks5, &target.to_string(), 9999).await);
    }
    Ok(Quickstart {
        nodes,
        endpoints,
        quit,
        client_socks5,
        client_identity,
        apps,
        trials,
        state: handle,
        _reload: reload,
    })
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        self.quit.cancel();
    }
}

/// Binds and starts a node's admin (15000), metrics (15020) and readiness (15021) servers.
async fn serve_node(
    ip: std::net::IpAddr,
    node: &Node,
    admin: AdminInputs,
    quit: &CancellationToken,
) -> Result<NodeEndpoints, QuickstartError> {
    let at = |port| SocketAddr::new(ip, port);
    let bind_err = |port| {
        move |source| QuickstartError::Bind {
            addr: at(port),
            source,
        }
    };
    let admin = AdminServer::new(at(ports::ADMIN), admin)
        .await
        .map_err(bind_err(ports::ADMIN))?;
    let metrics = MetricsServer::new(at(ports::METRICS), node.metrics().clone())
        .await
        .map_err(bind_err(ports::METRICS))?;
    // Everything is bound and serving by the time this runs: the node is ready.
    let readiness = ReadinessServer::new(at(ports::READINESS), Ready::new())
        .await
        .map_err(bind_err(ports::READINESS))?;
    let endpoints = NodeEndpoints {
        admin: admin.address(),
        metrics: metrics.address(),
        readiness: readiness.address(),
    };
    tokio::spawn(admin.run(quit.clone()));
    tokio::spawn(metrics.run(quit.clone()));
    tokio::spawn(readiness.run(quit.clone()));
    Ok(endpoints)
}

/// A tiny HTTP/1.1 application: answers every request with who it is and who called.
async fn http_app(listener: TcpListener, name: String) {
    while let Ok((mut s, peer)) = listener.accept().await {
        let name = name.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded), then answer and close.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let body = format!("hello from {name} at {local}; the connection came from {peer}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// `GET /` to `host:port` through a SOCKS5 proxy; reports the reply code and the answer's body.
async fn http_via_socks5(proxy: SocketAddr, host: &str, port: u16) -> Trial {
    let target = format!("{host}:{port}");
    let result = async {
        let mut s = TcpStream::connect(proxy).await?;
        s.write_all(&[5, 1, 0]).await?;
        let mut greeting = [0u8; 2];
        s.read_exact(&mut greeting).await?;
        let mut req = vec![5, 1, 0, 3, host.len().min(255) as u8];
        req.extend_from_slice(&host.as_bytes()[..host.len().min(255)]);
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Ok::<_, std::io::Error>((reply[1], None));
        }
        // The answer is read to EOF, so the client asks for the connection to be closed (an
        // HTTP proxy on the way, such as a waypoint, would otherwise keep it open).
        s.write_all(
            format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut response = String::new();
        s.read_to_string(&mut response).await?;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim_end()
            .to_string();
        Ok((0, Some(body)))
    };
    match tokio::time::timeout(Duration::from_secs(10), result).await {
        Ok(Ok((socks_reply, answer))) => Trial {
            target,
            socks_reply,
            answer,
        },
        _ => Trial {
            target,
            socks_reply: 1,
            answer: None,
        },
    }
}
