//! Tests of the admin, metrics and readiness servers over real loopback sockets, with a raw
//! HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::{Identity, LocalCa};
use http::Request;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use super::config_dump::rfc3339;
use super::serve::{Handler, parse_query};
use super::server::AdminHandler;
use super::*;
use crate::identity::IdentityManager;
use crate::state::{LocalConfig, StateHandle};
use crate::telemetry::Metrics;
use crate::telemetry::labels::{ConnectionLabels, Reporter, ResponseFlags, SecurityPolicy};
use crate::telemetry::metrics::CONNECTIONS_OPENED;

/// Bound on every client wait, so a hung server fails the test instead of hanging it.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// An any-port loopback address.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `raw` and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, raw: &str) -> Reply {
    let read = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(CLIENT_DEADLINE, read).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `METHOD path` with `Connection: close` and no body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
    exchange(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path).await
}

async fn post(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "POST", path).await
}

// === readiness ===

#[test]
fn ready_gate_tracks_pending_tasks() {
    let ready = Ready::new();
    assert!(ready.is_ready());
    let state = ready.register("state");
    let certs = ready.register("certificates");
    let certs_again = ready.register("certificates");
    assert!(!ready.is_ready());
    assert_eq!(
        ready.pending(),
        ["certificates", "certificates", "state"],
        "sorted, duplicates kept"
    );
    certs.done();
    assert_eq!(ready.pending(), ["certificates", "state"]);
    drop(certs_again);
    drop(state);
    assert!(ready.is_ready());
    let late = ready.clone().register("late");
    assert!(
        !ready.is_ready(),
        "a late task makes the gate unready again"
    );
    late.done();
    assert!(ready.is_ready());
}

#[tokio::test]
async fn readiness_503_until_task_done_then_200() {
    let ready = Ready::new();
    let task = ready.register("mesh-state");
    let server = ReadinessServer::new(loopback(), ready.clone())
        .await
        .unwrap();
    let addr = server.address();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));

    let r = get(addr, "/healthz/ready").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("mesh-state"), "{}", r.body);

    task.done();
    let r = get(addr, "/healthz/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ready\n");

    assert_eq!(get(addr, "/healthz/other").await.status, 404);
    assert_eq!(get(addr, "/").await.status, 404);
    assert_eq!(post(addr, "/healthz/ready").await.status, 405);

    shutdown.cancel();
    tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .unwrap()
        .unwrap();
}

// === metrics ===

#[tokio::test]
async fn metrics_serves_recorded_series_on_both_paths() {
    let metrics = Arc::new(Metrics::new());
    let labels = ConnectionLabels::new(
        Reporter::Source,
        None,
        None,
        None,
        None,
        None,
        SecurityPolicy::Unknown,
        ResponseFlags::None,
    );
    metrics.opened(&labels);
    let line = format!("{CONNECTIONS_OPENED}{{{labels}}} 1");

    let server = MetricsServer::new(loopback(), metrics.clone())
        .await
        .unwrap();
    let addr = server.address();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));

    for path in ["/stats/prometheus", "/metrics"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            r.body.lines().any(|l| l == line),
            "{path}: missing {line:?} in\n{}",
            r.body
        );
    }
    // Every scrape renders afresh.
    metrics.opened(&labels);
    let again = format!("{CONNECTIONS_OPENED}{{{labels}}} 2");
    assert!(get(addr, "/metrics").await.body.lines().any(|l| l == again));

    assert_eq!(get(addr, "/metricsx").await.status, 404);
    assert_eq!(get(addr, "/stats").await.status, 404);
    assert_eq!(post(addr, "/metrics").await.status, 405);
    shutdown.cancel();
}

// === admin ===

/// A `LogLevel` that keeps the spec in memory and rejects specs containing `bad`.
struct FakeLevel(Mutex<String>);

impl LogLevel for FakeLevel {
    fn current(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn set(&self, spec: &str) -> Result<(), String> {
        if spec.contains("bad") {
            return Err(format!("invalid log level {spec:?}"));
        }
        *self.0.lock().unwrap() = spec.to_owned();
        Ok(())
    }
}

const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/zeta
  name: zeta
  namespace: default
  serviceAccount: zeta
  workloadIps: ["127.0.0.3"]
- uid: cluster1//v1/Pod/default/alpha
  name: alpha
  namespace: default
  serviceAccount: alpha
  workloadIps: ["127.0.0.2"]
  protocol: HBONE
  services:
    default/alpha.default.svc.cluster.local:
      80: 8080
services:
- name: alpha
  namespace: default
  hostname: alpha.default.svc.cluster.local
  vips: ["/127.10.0.2"]
  ports:
    80: 8080
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [9999]
- name: allow-all
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - []
"#;

/// Admin inputs over a real state and a real identity manager (local CA in a tempdir).
struct Fixture {
    inputs: AdminInputs,
    level: Arc<FakeLevel>,
    quit: CancellationToken,
    identities: Arc<IdentityManager>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let roots = ca.roots().to_vec();
    let identities = Arc::new(IdentityManager::new(ca, Duration::from_secs(3600)));
    let state = StateHandle::new(LocalConfig::from_yaml(MESH).unwrap().into_state().unwrap());
    let level = Arc::new(FakeLevel(Mutex::new("info".to_owned())));
    let quit = CancellationToken::new();
    Fixture {
        inputs: AdminInputs {
            state,
            identities: identities.clone(),
            roots,
            config: serde_json::json!({ "proxyMode": "Shared", "adminAddr": "127.0.0.1:15000" }),
            log_level: level.clone(),
            quit: quit.clone(),
            workload_state: Default::default(),
        },
        level,
        quit,
        identities,
        _dir: dir,
    }
}

/// Starts an admin server over `inputs` with `options`; returns its address and run token.
async fn start_admin(inputs: AdminInputs, options: HttpOptions) -> (SocketAddr, CancellationToken) {
    let server = AdminServer::new(loopback(), inputs)
        .await
        .unwrap()
        .with_options(options);
    let addr = server.address();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    (addr, shutdown)
}

#[tokio::test]
async fn config_dump_has_state_certificates_and_config() {
    let f = fixture();
    let id = Identity::new("cluster.local", "default", "alpha").unwrap();
    let store = f.identities.fetch(&id).await.unwrap();
    let cert = store.current();
    let (addr, shutdown) = start_admin(f.inputs, HttpOptions::default()).await;

    let r = get(addr, "/config_dump").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();

    let uids: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["uid"].as_str().unwrap())
        .collect();
    assert_eq!(
        uids,
        [
            "cluster1//v1/Pod/default/alpha",
            "cluster1//v1/Pod/default/zeta"
        ],
        "sorted by uid"
    );
    let alpha = &dump["workloads"][0];
    assert_eq!(
        alpha["identity"],
        "spiffe://cluster.local/ns/default/sa/alpha"
    );
    assert_eq!(alpha["workloadIps"], serde_json::json!(["127.0.0.2"]));
    assert_eq!(alpha["protocol"], "HBONE");
    assert_eq!(
        alpha["services"]["default/alpha.default.svc.cluster.local"]["80"],
        8080
    );

    assert_eq!(
        dump["services"][0]["hostname"],
        "alpha.default.svc.cluster.local"
    );
    assert_eq!(
        dump["services"][0]["vips"],
        serde_json::json!(["/127.10.0.2"])
    );

    let policies: Vec<&str> = dump["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        ["allow-all", "deny-9999"],
        "sorted by namespace/name"
    );

    let certs = dump["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1);
    let c = &certs[0];
    assert_eq!(c["identity"], "spiffe://cluster.local/ns/default/sa/alpha");
    assert_eq!(c["state"], "Available");
    let leaf = &c["certChain"][0];
    assert_eq!(
        leaf["expirationTime"],
        rfc3339(
            cert.not_after()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        )
    );
    assert_eq!(leaf["serialNumber"], cert.serial_hex());
    assert!(
        leaf["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(leaf["validFrom"].as_str().unwrap().ends_with('Z'));
    let roots = c["rootCerts"].as_array().unwrap();
    assert!(!roots.is_empty());
    assert!(roots[0]["expirationTime"].as_str().unwrap().ends_with('Z'));
    assert!(!roots[0]["serialNumber"].as_str().unwrap().is_empty());

    assert_eq!(dump["config"]["proxyMode"], "Shared");

    // Deterministic: two dumps of the same state are identical.
    assert_eq!(get(addr, "/config_dump").await.body, r.body);
    assert_eq!(post(addr, "/config_dump").await.status, 405);
    shutdown.cancel();
}

#[tokio::test]
async fn logging_get_set_bad_spec_and_reset() {
    let f = fixture();
    let level = f.level.clone();
    let (addr, shutdown) = start_admin(f.inputs, HttpOptions::default()).await;

    let r = post(addr, "/logging").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "current log level is info\n");

    let r = post(addr, "/logging?level=debug").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "current log level is debug\n");
    assert_eq!(level.current(), "debug");

    let r = post(addr, "/logging?level=info%2Caccess%3Ddebug").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        level.current(),
        "info,access=debug",
        "query is percent-decoded"
    );

    let r = post(addr, "/logging?level=bad").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid log level \"bad\""), "{}", r.body);
    assert_eq!(level.current(), "info,access=debug", "unchanged on error");

    assert_eq!(post(addr, "/logging?level=").await.status, 400);
    assert_eq!(post(addr, "/logging?verbose=1").await.status, 400);
    assert_eq!(post(addr, "/logging?level=debug&reset").await.status, 400);
    assert_eq!(post(addr, "/logging?level=%zz").await.status, 400);

    let r = post(addr, "/logging?reset").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "current log level is info\n");
    assert_eq!(level.current(), "info");

    let r = get(addr, "/logging").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    shutdown.cancel();
}

#[test]
fn reload_log_level_changes_a_real_filter() {
    let (layer, handle) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new("info"));
    let subscriber = Registry::default().with(layer);
    let level = ReloadLogLevel::new(handle);
    assert_eq!(level.current(), "info");
    level.set("warn,access=debug").unwrap();
    let current = level.current();
    assert!(
        current.contains("access=debug") && current.contains("warn"),
        "{current}"
    );
    let err = level.set("info,x=notalevel").unwrap_err();
    assert!(err.contains("notalevel"), "{err}");
    assert_eq!(level.current(), current, "unchanged on error");
    // The filter is live in the subscriber it was installed in.
    tracing::subscriber::with_default(subscriber, || {
        assert!(tracing::enabled!(target: "access", tracing::Level::DEBUG));
        assert!(!tracing::enabled!(target: "other", tracing::Level::INFO));
    });
}

#[tokio::test]
async fn quitquitquit_cancels_the_token_and_stops_the_server() {
    let f = fixture();
    let quit = f.quit.clone();
    let server = AdminServer::new(loopback(), f.inputs).await.unwrap();
    let addr = server.address();
    // The usual wiring: the admin server itself stops on the shutdown it triggers.
    let run = tokio::spawn(server.run(quit.clone()));

    let r = get(addr, "/quitquitquit").await;
    assert_eq!(r.status, 405);
    assert!(!quit.is_cancelled());

    let r = post(addr, "/quitquitquit").await;
    assert_eq!(r.status, 200);
    assert!(quit.is_cancelled());
    tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("the admin server stops after /quitquitquit")
        .unwrap();
}

#[tokio::test]
async fn admin_index_and_unknown_paths() {
    let f = fixture();
    let (addr, shutdown) = start_admin(f.inputs, HttpOptions::default()).await;
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200);
    for endpoint in ["/config_dump", "/logging", "/quitquitquit"] {
        assert!(r.body.contains(endpoint), "{}", r.body);
    }
    assert_eq!(get(addr, "/nope").await.status, 404);
    assert_eq!(post(addr, "/config_dumpx").await.status, 404);
    assert!(!f.quit.is_cancelled());
    shutdown.cancel();
}

#[tokio::test]
async fn admin_refuses_non_loopback_peers() {
    let f = fixture();
    let handler = AdminHandler::new(f.inputs);
    let request = |path: &str| Request::post(path).body(Bytes::new()).unwrap();
    let remote: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let r = handler.handle(request("/quitquitquit"), remote);
    assert_eq!(r.status(), 403);
    assert!(!f.quit.is_cancelled(), "a refused request has no effect");
    let r = handler.handle(
        request("/logging?level=debug"),
        "[2001:db8::1]:1".parse().unwrap(),
    );
    assert_eq!(r.status(), 403);
    assert_eq!(f.level.current(), "info");
    // Loopback, including IPv4-mapped and IPv6 loopback, is served.
    for peer in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
        let r = handler.handle(request("/logging"), peer.parse().unwrap());
        assert_eq!(r.status(), 200, "{peer}");
    }
}

// === limits ===

#[tokio::test]
async fn slow_request_header_is_disconnected() {
    let f = fixture();
    let options = HttpOptions {
        header_read_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let (addr, shutdown) = start_admin(f.inputs, options).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Half a request head, then silence.
    stream
        .write_all(b"POST /quitquitquit HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(CLIENT_DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("the server closes a connection whose request head never completes");
    // Closed: EOF (possibly after an error response) or a reset.
    if read.is_ok() {
        let text = String::from_utf8_lossy(&out);
        assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert!(!f.quit.is_cancelled(), "the incomplete request never ran");
    // The server still serves others.
    assert_eq!(post(addr, "/logging").await.status, 200);
    shutdown.cancel();
}

#[tokio::test]
async fn oversized_body_is_refused() {
    let f = fixture();
    let options = HttpOptions {
        max_body_bytes: 1024,
        ..HttpOptions::default()
    };
    let (addr, shutdown) = start_admin(f.inputs, options).await;
    let r = exchange(
        addr,
        "POST /logging HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 413);
    // A small body is read and ignored.
    let r = exchange(
        addr,
        "POST /logging HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(r.status, 200);
    // A chunked body over the limit is caught while reading.
    let chunk = "a".repeat(2000);
    let r = exchange(
        addr,
        &format!(
            "POST /logging HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        ),
    )
    .await;
    assert_eq!(r.status, 413);
    shutdown.cancel();
}

// === helpers ===

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
}

#[test]
fn query_parsing() {
    assert_eq!(
        parse_query("level=info%2Caccess%3Ddebug&reset"),
        Some(vec![
            ("level".to_owned(), "info,access=debug".to_owned()),
            ("reset".to_owned(), String::new()),
        ])
    );
    assert_eq!(parse_query(""), Some(vec![]));
    assert_eq!(parse_query("a=%2"), None);
    assert_eq!(parse_query("a=%+1"), None);
    assert_eq!(parse_query("a=%ff"), None, "not UTF-8");
}
