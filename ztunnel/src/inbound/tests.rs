use std::net::IpAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
