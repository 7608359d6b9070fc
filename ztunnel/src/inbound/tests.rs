use std::net::IpAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::state::LocalConfig;

const HTTPBIN: &str = "cluster1//v1/Pod/default/httpbin";

/// httpbin at 127.0.0.2 with a DENY on port 9999 for everyone, a selector ALLOW for sleep on
/// httpbin's other ports, and (optionally) a reference to a selector policy that does not exist.
fn state(extra_policy_ref: Option<&str>) -> MeshState {
    let missing = extra_policy_ref
        .map(|p| format!(", \"{p}\""))
        .unwrap_or_default();
    let yaml = format!(
        r#"
workloads:
- uid: {HTTPBIN}
  name: httpbin
  namespace: default
  serviceAccount: httpbin
  workloadIps: ["127.0.0.2"]
  protocol: HBONE
  authorizationPolicies: ["default/allow-sleep"{missing}]
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [9999]
- name: allow-sleep
  namespace: default
  scope: WorkloadSelector
  action: Allow
  rules:
  - - - principals: [{{Exact: cluster.local/ns/default/sa/sleep}}]
"#
    );
    LocalConfig::from_yaml(&yaml).unwrap().into_state().unwrap()
}

fn id(sa: &str) -> hbone::Identity {
    hbone::Identity::new("cluster.local", "default", sa).unwrap()
}

const PEER_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

#[test]
fn authorize_table() {
    struct Case {
        name: &'static str,
        missing: Option<&'static str>,
        target: &'static str,
        peer: &'static str,
        want: Result<(), StatusCode>,
    }
    let cases = [
        Case {
            name: "allowed peer to app port",
            missing: None,
            target: "127.0.0.2:8000",
            peer: "sleep",
            want: Ok(()),
        },
        Case {
            name: "deny policy wins over allow",
            missing: None,
            target: "127.0.0.2:9999",
            peer: "sleep",
            want: Err(StatusCode::UNAUTHORIZED),
        },
        Case {
            name: "allow policy exists, peer not in it",
            missing: None,
            target: "127.0.0.2:8000",
            peer: "other",
            want: Err(StatusCode::UNAUTHORIZED),
        },
        Case {
            name: "target is not this workload",
            missing: None,
            target: "127.0.0.3:8000",
            peer: "sleep",
            want: Err(StatusCode::BAD_REQUEST),
        },
        Case {
            name: "loop protection: the proxy's own port",
            missing: None,
            target: "127.0.0.2:15008",
            peer: "sleep",
            want: Err(StatusCode::BAD_REQUEST),
        },
        Case {
            name: "missing selector policy fails closed",
            missing: Some("default/not-here"),
            target: "127.0.0.2:8000",
            peer: "sleep",
            want: Err(StatusCode::UNAUTHORIZED),
        },
    ];
    for c in cases {
        let state = state(c.missing);
        let got = authorize(
            &state,
            HTTPBIN,
            c.target.parse().unwrap(),
            &id(c.peer),
            PEER_IP,
        );
        match (&got, c.want) {
            (Ok(a), Ok(())) => {
                assert_eq!(a.workload.name, "httpbin", "{}", c.name);
                assert!(a.decision.allowed, "{}", c.name);
            }
            (Err(e), Err(status)) => assert_eq!(e.status(), status, "{}: {e}", c.name),
            _ => panic!("{}: got {got:?}, want {:?}", c.name, c.want),
        }
    }
    // The missing policy is named in the reason.
    let err = authorize(
        &state(Some("default/not-here")),
        HTTPBIN,
        "127.0.0.2:8000".parse().unwrap(),
        &id("sleep"),
        PEER_IP,
    )
    .unwrap_err();
    assert!(
        matches!(err, InboundError::Denied(rbac::Reason::MissingPolicy(ref k)) if k == "default/not-here"),
        "{err}"
    );
    // An unknown workload is unavailable, not allowed.
    let err = authorize(
        &state(None),
        "nope",
        "127.0.0.2:8000".parse().unwrap(),
        &id("sleep"),
        PEER_IP,
    )
    .unwrap_err();
    assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A real HBONE listener for httpbin in front of a real application socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_hbone_end_to_end_statuses_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let server_certs = Arc::new(hbone::CertStore::new(
        ca.issue(&id("httpbin"), Duration::from_secs(3600)).unwrap(),
    ));
    let handle = StateHandle::new(state(None));

    // The application on 127.0.0.2: records what it receives and answers.
    let app = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(b"pong").await.unwrap();
                s.shutdown().await.unwrap();
                got_tx.send(buf).unwrap();
            });
        }
    });
    // A closed port on the same workload for the 503 case.
    let closed = TcpListener::bind("127.0.0.2:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    let tls = hbone::tls::server_config(server_certs, ca.roots()).unwrap();
    let handler = InboundHandler::new(handle.clone(), HTTPBIN, Duration::from_secs(2));
    let server = hbone::Server::new(hbone::Config::default(), tls, handler).unwrap();
    tokio::spawn(server.run(listener, hbone::Shutdown::default(), Duration::from_secs(1)));

    let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
    let sleep = Arc::new(hbone::CertStore::new(
        ca.issue(&id("sleep"), Duration::from_secs(3600)).unwrap(),
    ));
    let other = Arc::new(hbone::CertStore::new(
        ca.issue(&id("other"), Duration::from_secs(3600)).unwrap(),
    ));
    let open = |certs: Arc<hbone::CertStore>, target: SocketAddr| {
        let pool = pool.clone();
        async move {
            pool.connect(
                &certs,
                vec![id("httpbin")],
                hbone_addr,
                &hbone::TunnelRequest::new(target),
            )
            .await
        }
    };

    // Allowed: bytes reach the application and come back.
    let mut t = open(sleep.clone(), app_addr).await.unwrap();
    assert_eq!(t.peer_identity, id("httpbin"));
    t.stream.write_all(b"ping from sleep").await.unwrap();
    t.stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    t.stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"pong");
    assert_eq!(got_rx.recv().await.unwrap(), b"ping from sleep");

    let status = |r: Result<hbone::Tunnel, hbone::Error>| match r {
        Err(hbone::Error::Status(s)) => s,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Denied by policy: the peer identity is not allowed.
    assert_eq!(
        status(open(other.clone(), app_addr).await),
        StatusCode::UNAUTHORIZED
    );
    // Not this workload's address.
    assert_eq!(
        status(open(sleep.clone(), "127.0.0.3:80".parse().unwrap()).await),
        StatusCode::BAD_REQUEST
    );
    // The application is not listening.
    assert_eq!(
        status(open(sleep.clone(), closed).await),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A policy change applies to the next tunnel: allow `other` too.
    let mut yaml_state = state(None).to_builder();
    let mut allow = yaml_state
        .state()
        .policies()
        .iter()
        .find(|p| p.name == "allow-sleep")
        .unwrap()
        .clone();
    allow.rules[0].clauses[0].matches[0]
        .principals
        .push(crate::rbac::StringMatch::Exact(
            "cluster.local/ns/default/sa/other".into(),
        ));
    yaml_state.insert_policy(allow);
    handle.swap(yaml_state.build());
    let mut t = open(other, app_addr).await.unwrap();
    t.stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    t.stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"pong");
}

// ---------------------------------------------------------------------------------------------
// Plaintext (15006), live revocation and telemetry.
// ---------------------------------------------------------------------------------------------

const WEB: &str = "cluster1//v1/Pod/default/web";

/// `web` at 127.0.4.2 (and `sleep` at 127.0.0.1, where loopback clients come from), with the
/// given extra policies appended verbatim.
fn web_state(policies: &str) -> MeshState {
    let yaml = format!(
        r#"
workloads:
- uid: {WEB}
  name: web
  namespace: default
  serviceAccount: web
  workloadIps: ["127.0.4.2"]
  protocol: HBONE
- uid: cluster1//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
policies: [{policies}]
"#
    );
    LocalConfig::from_yaml(&yaml).unwrap().into_state().unwrap()
}

/// Istio's `istio_converted_static_strict`: DENY anything without a peer identity.
const STRICT: &str = r#"{name: istio_converted_static_strict, namespace: istio-system, scope: Global, action: Deny, rules: [[[{notPrincipals: [Presence]}]]]}"#;

fn deny_port(port: u16) -> String {
    format!(
        r#"{{name: deny-{port}, namespace: default, scope: Namespace, action: Deny, rules: [[[{{destinationPorts: [{port}]}}]]]}}"#
    )
}

/// An echo application on `ip`; counts the connections it accepted and the bytes it read.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    received: Arc<std::sync::atomic::AtomicU64>,
}

async fn echo(ip: &str) -> Echo {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (a, r) = (accepted.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Echo {
        addr,
        accepted,
        received,
    }
}

impl Echo {
    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Writes `msg` and reads the echo back.
async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(got, msg);
}

/// A read that must end (EOF or error) within 1 s: the connection was closed by the proxy.
async fn assert_closed_within_1s<S: tokio::io::AsyncRead + Unpin>(s: &mut S, what: &str) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: read {n} bytes, expected the connection closed"),
        Err(_) => panic!("{what}: still open after 1 s"),
    }
}

/// Reads until EOF or error; whether the connection is closed (vs. still open after 2 s).
async fn closed_by_proxy(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A CA and an HBONE server for `web` on 127.0.4.2 using `ctx`.
async fn web_hbone(ctx: InboundContext) -> (hbone::LocalCa, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
    let certs = Arc::new(hbone::CertStore::new(
        ca.issue(&id("web"), Duration::from_secs(3600)).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.4.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = hbone::tls::server_config(certs, ca.roots()).unwrap();
    let server = hbone::Server::new(
        hbone::Config::default(),
        tls,
        InboundHandler::with_context(ctx, WEB),
    )
    .unwrap();
    tokio::spawn(server.run(listener, hbone::Shutdown::default(), Duration::from_secs(1)));
    (ca, addr, dir)
}

async fn tunnel(
    ca: &hbone::LocalCa,
    pool: &hbone::Pool,
    hbone_addr: SocketAddr,
    target: SocketAddr,
) -> Result<hbone::Tunnel, hbone::Error> {
    let sleep = Arc::new(hbone::CertStore::new(
        ca.issue(&id("sleep"), Duration::from_secs(3600)).unwrap(),
    ));
    pool.connect(
        &sleep,
        vec![id("web")],
        hbone_addr,
        &hbone::TunnelRequest::new(target),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_allowed_then_strict_mtls_refuses_it_but_not_hbone() {
    let handle = StateHandle::new(web_state(""));
    let ctx = InboundContext::new(handle.clone(), Duration::from_secs(2));
    let app = echo("127.0.4.2").await;
    let plain = PlaintextListener::new(
        "127.0.4.2:0".parse().unwrap(),
        ctx.clone(),
        WEB,
        DestinationMode::Fixed(app.addr),
    )
    .await
    .unwrap();
    let plain_addr = plain.address().unwrap();
    tokio::spawn(plain.run(CancellationToken::new()));

    // No policy: plaintext reaches the application.
    let mut c = TcpStream::connect(plain_addr).await.unwrap();
    roundtrip(&mut c, b"hello plaintext").await;
    c.shutdown().await.unwrap();
    assert!(closed_by_proxy(&mut c).await);
    assert_eq!(app.accepted(), 1);
    assert_eq!(app.received(), 15);

    // Strict mTLS: plaintext is closed without reaching the application...
    handle.swap(web_state(STRICT));
    let mut c = TcpStream::connect(plain_addr).await.unwrap();
    let _ = c.write_all(b"let me in").await;
    assert!(closed_by_proxy(&mut c).await, "plaintext must be refused");
    assert_eq!(
        app.accepted(),
        1,
        "a refused connection never reaches the app"
    );

    // ... while HBONE from a mesh peer still works.
    let (ca, hbone_addr, _dir) = web_hbone(ctx.clone()).await;
    let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
    let mut t = tunnel(&ca, &pool, hbone_addr, app.addr).await.unwrap();
    roundtrip(&mut t.stream, b"hello mtls").await;
    assert_eq!(app.accepted(), 2);

    let text = ctx.metrics.render();
    let failed = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_failed_total{"))
        .unwrap();
    assert!(failed.contains(r#"response_flags="DENY""#), "{failed}");
    assert!(
        failed.contains(r#"connection_security_policy="unknown""#),
        "{failed}"
    );
    assert!(failed.contains(r#"source_principal="unknown""#), "{failed}");
    assert!(failed.ends_with(" 1"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_original_dst_fallback_is_the_listener_itself_and_refused() {
    let handle = StateHandle::new(web_state(""));
    let ctx = InboundContext::new(handle, Duration::from_secs(2));
    let plain = PlaintextListener::new(
        "127.0.4.2:0".parse().unwrap(),
        ctx.clone(),
        WEB,
        DestinationMode::OriginalDst,
    )
    .await
    .unwrap();
    let plain_addr = plain.address().unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(plain.run(shutdown.clone()));
    // Not redirected: the destination is the listener, which loop protection refuses.
    let mut c = TcpStream::connect(plain_addr).await.unwrap();
    assert!(closed_by_proxy(&mut c).await);
    assert!(ctx.tracker.is_empty());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(plain_addr).await.is_err(), "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_change_closes_denied_live_connections_within_one_second() {
    let handle = StateHandle::new(web_state(""));
    let ctx = InboundContext::new(handle.clone(), Duration::from_secs(2));
    let _watcher = ctx.tracker.watch(&handle);
    let doomed = echo("127.0.4.2").await;
    let kept = echo("127.0.4.2").await;

    // Two HBONE tunnels on one pooled connection, and two plaintext connections.
    let (ca, hbone_addr, _dir) = web_hbone(ctx.clone()).await;
    let pool = hbone::Pool::new(hbone::Config::default(), ca.roots().to_vec()).unwrap();
    let mut t_doomed = tunnel(&ca, &pool, hbone_addr, doomed.addr).await.unwrap();
    let mut t_kept = tunnel(&ca, &pool, hbone_addr, kept.addr).await.unwrap();
    roundtrip(&mut t_doomed.stream, b"one").await;
    roundtrip(&mut t_kept.stream, b"two").await;

    let mut plain_listeners = Vec::new();
    for app in [&doomed, &kept] {
        let l = PlaintextListener::new(
            "127.0.4.2:0".parse().unwrap(),
            ctx.clone(),
            WEB,
            DestinationMode::Fixed(app.addr),
        )
        .await
        .unwrap();
        plain_listeners.push(l.address().unwrap());
        tokio::spawn(l.run(CancellationToken::new()));
    }
    let mut p_doomed = TcpStream::connect(plain_listeners[0]).await.unwrap();
    let mut p_kept = TcpStream::connect(plain_listeners[1]).await.unwrap();
    roundtrip(&mut p_doomed, b"three").await;
    roundtrip(&mut p_kept, b"four").await;
    assert_eq!(ctx.tracker.len(), 4);

    // Deny the doomed application's port: its connections close within 1 s.
    handle.swap(web_state(&deny_port(doomed.addr.port())));
    assert_closed_within_1s(&mut t_doomed.stream, "hbone tunnel").await;
    assert_closed_within_1s(&mut p_doomed, "plaintext connection").await;

    // The others are untouched.
    roundtrip(&mut t_kept.stream, b"still here").await;
    roundtrip(&mut p_kept, b"me too").await;
    // New connections to the denied port are refused.
    assert!(matches!(
        tunnel(&ca, &pool, hbone_addr, doomed.addr).await,
        Err(hbone::Error::Status(StatusCode::UNAUTHORIZED))
    ));

    // The revoked connections are closed with DENY and leave the tracker.
    let deadline = Instant::now() + Duration::from_secs(2);
    while ctx.tracker.len() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ctx.tracker.len(), 2);
    let text = ctx.metrics.render();
    let closed_deny: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains(r#"response_flags="DENY""#)
        })
        .collect();
    // mTLS: the revoked tunnel and the refused one; plaintext: the revoked connection.
    assert_eq!(closed_deny.len(), 2, "{text}");
    let mtls = r#"connection_security_policy="mutual_tls""#;
    assert!(
        closed_deny
            .iter()
            .any(|l| l.contains(mtls) && l.ends_with(" 2")),
        "{text}"
    );
    assert!(
        closed_deny
            .iter()
            .any(|l| !l.contains(mtls) && l.ends_with(" 1")),
        "{text}"
    );
}

/// Memory per idle connection: what an open tunnel's task keeps for its whole life. Tokio
/// allocates each task as a 128-byte-aligned cell, 104 bytes of its own plus the future, so a
/// future of at most 408 bytes takes a 512-byte cell. The policy check, the connection to the
/// application and the request headers are gone by then (the open phase is boxed and freed).
#[test]
fn inbound_tunnel_task_fits_a_512_byte_task_cell() {
    let size = hbone::server::tunnel_task_size::<InboundHandler>();
    assert!(size <= 408, "inbound tunnel task state: {size} bytes");
}
