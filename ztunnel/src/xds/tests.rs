//! The xDS client against an in-process fake istiod (TLS + HTTP/2 on 127.0.0.1:0).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Resource};
use proto::istio::security as sec_pb;
use proto::istio::workload as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::channel::{ChannelError, RootCert, TokenSource};
use super::client::{INITIAL_BACKOFF, MAX_BACKOFF, next_backoff};
use super::handler::{self, Known};
use super::testing::{self, AdsStream, TestPki, TestServer, response};
use super::*;
use crate::state::{NamespacedHostname, StateHandle};

const NODE_ID: &str = "ztunnel~10.0.0.9~ztunnel-abcde.istio-system~istio-system.svc.cluster.local";

// === fixtures ===

fn node() -> NodeInfo {
    NodeInfo {
        node_type: NodeType::Ztunnel,
        instance_ip: "10.0.0.9".into(),
        pod_name: "ztunnel-abcde".into(),
        pod_namespace: "istio-system".into(),
        node_name: "node-1".into(),
        cluster_id: "Kubernetes".into(),
        extra_metadata: BTreeMap::new(),
    }
}

fn uid(name: &str) -> String {
    format!("Kubernetes//Pod/default/{name}")
}

fn workload(name: &str, ip: [u8; 4]) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: uid(name),
            name: name.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            service_account: name.into(),
            ..Default::default()
        })),
    }
}

fn service(host: &str, vip: [u8; 4]) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service {
            name: host.into(),
            namespace: "default".into(),
            hostname: format!("{host}.default.svc.cluster.local"),
            addresses: vec![pb::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                ..Default::default()
            }],
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..Default::default()
        })),
    }
}

fn service_name(host: &str) -> String {
    format!("default/{host}.default.svc.cluster.local")
}

fn policy(name: &str) -> sec_pb::Authorization {
    sec_pb::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: sec_pb::Scope::Namespace as i32,
        action: sec_pb::Action::Deny as i32,
        rules: vec![sec_pb::Rule {
            clauses: vec![sec_pb::Clause {
                matches: vec![sec_pb::Match {
                    destination_ports: vec![9090],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn assert_ack(reply: &DeltaDiscoveryRequest, type_url: &str, nonce: &str) {
    assert_eq!(reply.type_url, type_url);
    assert_eq!(reply.response_nonce, nonce);
    assert!(
        reply.error_detail.is_none(),
        "unexpected NACK: {:?}",
        reply.error_detail
    );
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A client connected to a fake istiod.
struct Harness {
    _pki: TestPki,
    _server: TestServer,
    streams: mpsc::UnboundedReceiver<AdsStream>,
    state: StateHandle,
    readiness: Readiness,
    stats: std::sync::Arc<XdsStats>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start(token: Option<TokenSource>) -> Self {
        let pki = TestPki::new();
        let (server, streams) = testing::fake_ads(&pki).await;
        let mut control_plane = pki.control_plane(server.addr);
        control_plane.token = token;
        let state = StateHandle::default();
        let client = AdsClient::new(
            XdsConfig {
                control_plane,
                node: node(),
            },
            state.clone(),
        );
        let readiness = client.readiness();
        let stats = client.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(client.run(shutdown.clone()));
        Self {
            _pki: pki,
            _server: server,
            streams,
            state,
            readiness,
            stats,
            shutdown,
            task,
        }
    }

    async fn next_stream(&mut self) -> AdsStream {
        testing::next_stream(&mut self.streams).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(testing::WAIT, self.task)
            .await
            .expect("client stops on shutdown")
            .unwrap();
    }
}

// === the stream ===

#[tokio::test]
async fn initial_subscribe_carries_node_and_token() {
    let mut h = Harness::start(Some(TokenSource::Static(testing::TOKEN.into()))).await;
    let mut stream = h.next_stream().await;
    assert_eq!(
        stream
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer test-token")
    );
    assert_eq!(
        stream
            .metadata
            .get("clusterid")
            .and_then(|v| v.to_str().ok()),
        Some("Kubernetes")
    );
    let requests = stream.initial_requests().await;
    let urls: Vec<&str> = requests.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "type.googleapis.com/istio.security.Authorization",
            "type.googleapis.com/istio.workload.Address"
        ]
    );
    for request in &requests {
        // A wildcard subscription: no names, nothing known yet, not an ACK.
        assert!(request.resource_names_subscribe.is_empty());
        assert!(request.resource_names_unsubscribe.is_empty());
        assert!(request.initial_resource_versions.is_empty());
        assert!(request.response_nonce.is_empty());
        let node = request
            .node
            .as_ref()
            .expect("node in every initial request");
        assert_eq!(node.id, NODE_ID);
        let metadata = &node.metadata.as_ref().expect("metadata").fields;
        let field = |k: &str| match metadata.get(k).and_then(|v| v.kind.as_ref()) {
            Some(prost_types::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("metadata {k}: {other:?}"),
        };
        assert_eq!(field("NAME"), "ztunnel-abcde");
        assert_eq!(field("NAMESPACE"), "istio-system");
        assert_eq!(field("INSTANCE_IPS"), "10.0.0.9");
        assert_eq!(field("NODE_NAME"), "node-1");
        assert_eq!(field("CLUSTER_ID"), "Kubernetes");
    }
    assert!(!h.readiness.is_ready());
    h.stop().await;
}

#[tokio::test]
async fn add_then_remove_workload_service_and_policy() {
    let mut h = Harness::start(Some(TokenSource::Static(testing::TOKEN.into()))).await;
    let mut stream = h.next_stream().await;
    stream.initial_requests().await;

    let reply = stream
        .push(response(
            proto::ADDRESS_TYPE_URL,
            "n1",
            vec![
                testing::resource(&uid("sleep"), "v1", &workload("sleep", [10, 1, 0, 1])),
                testing::resource(
                    &service_name("echo"),
                    "v1",
                    &service("echo", [10, 96, 0, 1]),
                ),
            ],
            &[],
        ))
        .await;
    assert_ack(&reply, proto::ADDRESS_TYPE_URL, "n1");
    let state = h.state.current();
    let sleep = state
        .workload_by_uid(&uid("sleep"))
        .expect("workload added");
    assert_eq!(sleep.workload_ips, [ip(10, 1, 0, 1)]);
    assert!(state.workload_by_addr("", ip(10, 1, 0, 1)).is_some());
    assert_eq!(
        state
            .service_by_vip("", ip(10, 96, 0, 1))
            .map(|s| s.name.as_str()),
        Some("echo")
    );

    let reply = stream
        .push(response(
            proto::AUTHORIZATION_TYPE_URL,
            "n2",
            vec![testing::resource(
                "default/deny-9090",
                "v1",
                &policy("deny-9090"),
            )],
            &[],
        ))
        .await;
    assert_ack(&reply, proto::AUTHORIZATION_TYPE_URL, "n2");
    assert_eq!(h.state.current().policies().len(), 1);
    assert_eq!(h.state.current().policies()[0].name, "deny-9090");

    let reply = stream
        .push(response(
            proto::ADDRESS_TYPE_URL,
            "n3",
            vec![],
            &[&uid("sleep"), &service_name("echo")],
        ))
        .await;
    assert_ack(&reply, proto::ADDRESS_TYPE_URL, "n3");
    let reply = stream
        .push(response(
            proto::AUTHORIZATION_TYPE_URL,
            "n4",
            vec![],
            &["default/deny-9090"],
        ))
        .await;
    assert_ack(&reply, proto::AUTHORIZATION_TYPE_URL, "n4");
    let state = h.state.current();
    assert_eq!(state.workload_count(), 0);
    assert_eq!(state.service_count(), 0);
    assert!(state.service_by_vip("", ip(10, 96, 0, 1)).is_none());
    assert!(state.policies().is_empty());
    assert_eq!(h.stats.nacks.load(std::sync::atomic::Ordering::Relaxed), 0);
    h.stop().await;
}

#[tokio::test]
async fn malformed_resource_is_nacked_by_name_and_the_others_apply() {
    let mut h = Harness::start(None).await;
    let mut stream = h.next_stream().await;
    stream.initial_requests().await;
    assert_ack(
        &stream
            .push(response(
                proto::ADDRESS_TYPE_URL,
                "n1",
                vec![testing::resource(
                    &uid("a"),
                    "v1",
                    &workload("a", [10, 1, 0, 1]),
                )],
                &[],
            ))
            .await,
        proto::ADDRESS_TYPE_URL,
        "n1",
    );

    // One undecodable body, one workload without a namespace, one bad update of a resource we
    // hold; the good ones around them apply.
    let mut garbage = testing::resource("garbage", "v1", &workload("x", [10, 1, 0, 9]));
    if let Some(body) = garbage.resource.as_mut() {
        body.value = vec![0xff, 0xff, 0xff];
    }
    let mut no_namespace = workload("nons", [10, 1, 0, 3]);
    if let Some(pb::address::Type::Workload(w)) = no_namespace.r#type.as_mut() {
        w.namespace.clear();
    }
    let mut bad_update = workload("a", [10, 1, 0, 1]);
    if let Some(pb::address::Type::Workload(w)) = bad_update.r#type.as_mut() {
        w.addresses = vec![vec![1, 2, 3]];
    }
    let reply = stream
        .push(response(
            proto::ADDRESS_TYPE_URL,
            "n2",
            vec![
                testing::resource(&uid("b"), "v1", &workload("b", [10, 1, 0, 2])),
                garbage,
                testing::resource(&uid("nons"), "v1", &no_namespace),
                testing::resource(&uid("a"), "v2", &bad_update),
                testing::resource(
                    &service_name("echo"),
                    "v1",
                    &service("echo", [10, 96, 0, 1]),
                ),
            ],
            &[],
        ))
        .await;
    assert_eq!(reply.response_nonce, "n2", "a NACK echoes the nonce too");
    let detail = reply.error_detail.expect("NACK");
    assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
    assert!(
        detail.message.contains("garbage: cannot decode"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains(&format!(
            "{}: invalid workload: field namespace",
            uid("nons")
        )),
        "{}",
        detail.message
    );
    assert!(
        detail
            .message
            .contains(&format!("{}: invalid workload", uid("a"))),
        "{}",
        detail.message
    );
    assert!(!detail.message.contains(&uid("b")), "{}", detail.message);

    let state = h.state.current();
    assert!(
        state.workload_by_uid(&uid("b")).is_some(),
        "good workload applied"
    );
    assert!(
        state
            .service(&NamespacedHostname::new(
                "default",
                "echo.default.svc.cluster.local"
            ))
            .is_some()
    );
    assert!(state.workload_by_uid(&uid("nons")).is_none());
    assert_eq!(
        state
            .workload_by_uid(&uid("a"))
            .map(|w| w.workload_ips.clone()),
        Some(vec![ip(10, 1, 0, 1)]),
        "the previous version of a resource survives a bad update"
    );
    assert!(
        !h.readiness.is_ready(),
        "a NACKed type is not yet received in full"
    );
    assert_eq!(
        h.stats
            .rejected_resources
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // The bad update's version is not recorded: a reconnect reports v1.
    drop(stream);
    let mut stream = h.next_stream().await;
    let requests = stream.initial_requests().await;
    let versions = &requests[1].initial_resource_versions;
    assert_eq!(versions.get(&uid("a")).map(String::as_str), Some("v1"));
    assert!(!versions.contains_key("garbage"));
    assert!(!versions.contains_key(&uid("nons")));
    h.stop().await;
}

#[tokio::test]
async fn nack_detail_is_bounded() {
    let mut h = Harness::start(None).await;
    let mut stream = h.next_stream().await;
    stream.initial_requests().await;
    let bad: Vec<Resource> = (0..50)
        .map(|i| {
            let mut r = testing::resource(&format!("bad-{i}"), "1", &workload("x", [10, 0, 0, 1]));
            r.resource = None;
            r
        })
        .collect();
    let reply = stream
        .push(response(proto::ADDRESS_TYPE_URL, "n1", bad, &[]))
        .await;
    let message = reply.error_detail.expect("NACK").message;
    assert!(
        message.starts_with("bad-0: resource has no body; bad-1: "),
        "{message}"
    );
    assert!(message.contains("bad-19: "), "{message}");
    assert!(!message.contains("bad-20: "), "{message}");
    assert!(
        message.ends_with("; and 30 more rejected resources"),
        "{message}"
    );
    h.stop().await;
}

#[tokio::test]
async fn unknown_type_is_nacked() {
    let mut h = Harness::start(None).await;
    let mut stream = h.next_stream().await;
    stream.initial_requests().await;
    let reply = stream
        .push(response(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "n1",
            vec![],
            &[],
        ))
        .await;
    assert_eq!(reply.response_nonce, "n1");
    assert!(
        reply
            .error_detail
            .expect("NACK")
            .message
            .contains("unsupported type")
    );
    h.stop().await;
}

#[tokio::test]
async fn ready_once_both_types_are_applied_in_full() {
    let mut h = Harness::start(None).await;
    let mut stream = h.next_stream().await;
    stream.initial_requests().await;
    stream
        .push(response(proto::ADDRESS_TYPE_URL, "n1", vec![], &[]))
        .await;
    assert!(!h.readiness.is_ready(), "policies not received yet");
    let mut waiting = h.readiness.clone();
    let waiter = tokio::spawn(async move { waiting.wait().await });
    stream
        .push(response(proto::AUTHORIZATION_TYPE_URL, "n2", vec![], &[]))
        .await;
    assert!(
        tokio::time::timeout(testing::WAIT, waiter)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(h.readiness.is_ready());

    // Readiness survives losing the stream.
    drop(stream);
    let _stream = h.next_stream().await;
    assert!(h.readiness.is_ready());
    h.stop().await;
}

#[tokio::test]
async fn reconnect_keeps_state_and_resends_known_versions() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("istio-token");
    std::fs::write(&token_path, "token-one\n").unwrap();
    let mut h = Harness::start(Some(TokenSource::File(token_path.clone()))).await;

    let mut stream = h.next_stream().await;
    assert_eq!(
        stream
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer token-one"),
        "the token file is read, trimmed"
    );
    stream.initial_requests().await;
    stream
        .push(response(
            proto::ADDRESS_TYPE_URL,
            "n1",
            vec![
                testing::resource(&uid("a"), "7", &workload("a", [10, 1, 0, 1])),
                testing::resource(&service_name("echo"), "3", &service("echo", [10, 96, 0, 1])),
            ],
            &[],
        ))
        .await;
    stream
        .push(response(
            proto::AUTHORIZATION_TYPE_URL,
            "n2",
            vec![testing::resource("default/p", "5", &policy("p"))],
            &[],
        ))
        .await;
    let before = h.state.current();

    // istiod closes the stream; the token rotates meanwhile.
    std::fs::write(&token_path, "token-two").unwrap();
    drop(stream);
    let mut stream = h.next_stream().await;
    assert_eq!(
        stream
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer token-two"),
        "the token is re-read for every stream"
    );
    let requests = stream.initial_requests().await;
    assert_eq!(
        requests[0].initial_resource_versions,
        HashMap::from([("default/p".to_string(), "5".to_string())])
    );
    assert_eq!(
        requests[1].initial_resource_versions,
        HashMap::from([
            (uid("a"), "7".to_string()),
            (service_name("echo"), "3".to_string()),
        ])
    );
    assert_eq!(
        requests[1].node.as_ref().map(|n| n.id.as_str()),
        Some(NODE_ID)
    );
    let during = h.state.current();
    assert!(
        std::sync::Arc::ptr_eq(&before, &during),
        "state untouched while reconnecting"
    );
    assert!(during.workload_by_uid(&uid("a")).is_some());
    assert_eq!(during.policies().len(), 1);

    // A stream failing with a gRPC error is retried too; the diff arrives on the next stream.
    stream
        .fail(tonic::Status::unavailable("istiod restarting"))
        .await;
    let mut stream = h.next_stream().await;
    let requests = stream.initial_requests().await;
    assert_eq!(requests[1].initial_resource_versions.len(), 2);
    assert_ack(
        &stream
            .push(response(
                proto::ADDRESS_TYPE_URL,
                "n3",
                vec![],
                &[&uid("a")],
            ))
            .await,
        proto::ADDRESS_TYPE_URL,
        "n3",
    );
    assert!(h.state.current().workload_by_uid(&uid("a")).is_none());
    assert!(h.stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    h.stop().await;
}

#[tokio::test]
async fn untrusted_control_plane_is_refused() {
    let pki = TestPki::new();
    let (server, mut streams) = testing::fake_ads(&pki).await;
    let other = TestPki::new();
    let mut control_plane = pki.control_plane(server.addr);
    control_plane.root_cert = RootCert::Pem(other.root_pem.clone());
    let err = control_plane.connect().await.unwrap_err();
    assert!(matches!(err, ChannelError::Tls { .. }), "{err}");

    // The name checked is the host (or ALT_XDS_HOSTNAME), not just the chain.
    let mut control_plane = pki.control_plane(server.addr);
    control_plane.alt_hostname = Some("not-istiod.example".into());
    let err = control_plane.connect().await.unwrap_err();
    assert!(matches!(err, ChannelError::Tls { .. }), "{err}");
    control_plane.alt_hostname = Some("istiod.istio-system.svc".into());
    control_plane
        .connect()
        .await
        .expect("ALT hostname in the certificate");

    // A missing root file is a clear error, not a connection without verification.
    let mut control_plane = pki.control_plane(server.addr);
    control_plane.root_cert = RootCert::File("/nonexistent/root-cert.pem".into());
    assert!(matches!(
        control_plane.connect().await.unwrap_err(),
        ChannelError::Read { .. }
    ));
    assert!(streams.try_recv().is_err(), "no stream was opened");
}

#[tokio::test]
async fn failures_back_off_and_a_delivered_response_resets_the_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("istio-token");
    std::fs::write(&token_path, "  \n").unwrap();
    let mut h = Harness::start(Some(TokenSource::File(token_path.clone()))).await;
    let failures = |h: &Harness| h.stats.failures.load(std::sync::atomic::Ordering::Relaxed);

    // An empty token fails every attempt before a stream is opened. Attempts follow the
    // backoff (10, 20, 40, ... ms): about 6 in the first 400 ms, not hundreds.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let early = failures(&h);
    assert!((3..=9).contains(&early), "{early} failures in 400 ms");
    let deadline = tokio::time::Instant::now() + testing::WAIT;
    while failures(&h) < 8 {
        assert!(tokio::time::Instant::now() < deadline, "failures retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.streams.try_recv().is_err(), "no unauthenticated stream");

    // Once the token appears the client gets through (after the current delay, ~1.3 s).
    std::fs::write(&token_path, "late-token").unwrap();
    let mut stream = h.next_stream().await;
    assert_eq!(
        stream
            .metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer late-token")
    );
    stream.initial_requests().await;
    stream
        .push(response(proto::ADDRESS_TYPE_URL, "n1", vec![], &[]))
        .await;
    // The stream delivered a response: the next reconnect waits 10 ms, not 2.5 s.
    drop(stream);
    let start = tokio::time::Instant::now();
    let _stream = h.next_stream().await;
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "reconnected after {:?}",
        start.elapsed()
    );
    h.stop().await;
}

#[test]
fn backoff_doubles_from_10ms_to_15s() {
    let mut delays = vec![INITIAL_BACKOFF];
    while *delays.last().unwrap() < MAX_BACKOFF {
        delays.push(next_backoff(*delays.last().unwrap()));
    }
    assert_eq!(delays[..4], [10, 20, 40, 80].map(Duration::from_millis));
    assert_eq!(*delays.last().unwrap(), Duration::from_secs(15));
    assert_eq!(next_backoff(MAX_BACKOFF), MAX_BACKOFF);
}

// === applying responses ===

#[test]
fn removals_of_unknown_names_follow_the_resource_naming() {
    // State that did not come from this client (e.g. before a restart of the client object).
    let state = StateHandle::default();
    let mut known = Known::default();
    let seed = response(
        proto::ADDRESS_TYPE_URL,
        "n",
        vec![
            testing::resource(&uid("a"), "1", &workload("a", [10, 1, 0, 1])),
            testing::resource(&service_name("echo"), "1", &service("echo", [10, 96, 0, 1])),
        ],
        &[],
    );
    assert!(handler::apply(&state, &mut known, ResourceType::Address, &seed).is_empty());
    let policies = response(
        proto::AUTHORIZATION_TYPE_URL,
        "n",
        vec![testing::resource("default/p", "1", &policy("p"))],
        &[],
    );
    assert!(handler::apply(&state, &mut known, ResourceType::Authorization, &policies).is_empty());

    let mut fresh = Known::default();
    let removals = response(
        proto::ADDRESS_TYPE_URL,
        "n",
        vec![],
        &[&uid("a"), &service_name("echo"), "default/not-there"],
    );
    assert!(handler::apply(&state, &mut fresh, ResourceType::Address, &removals).is_empty());
    let removals = response(proto::AUTHORIZATION_TYPE_URL, "n", vec![], &["default/p"]);
    assert!(handler::apply(&state, &mut fresh, ResourceType::Authorization, &removals).is_empty());
    let state = state.current();
    assert_eq!(state.workload_count(), 0);
    assert_eq!(state.service_count(), 0);
    assert!(state.policies().is_empty());
}

#[test]
fn a_response_is_applied_as_one_snapshot() {
    let state = StateHandle::default();
    let mut changes = state.subscribe();
    changes.mark_unchanged();
    let mut known = Known::default();
    let many = response(
        proto::ADDRESS_TYPE_URL,
        "n",
        (1..=20)
            .map(|i| {
                testing::resource(
                    &uid(&format!("w{i}")),
                    "1",
                    &workload(&format!("w{i}"), [10, 2, 0, i]),
                )
            })
            .collect(),
        &[],
    );
    assert!(handler::apply(&state, &mut known, ResourceType::Address, &many).is_empty());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(state.current().workload_count(), 20);
    // An empty response publishes nothing.
    let empty = response(proto::ADDRESS_TYPE_URL, "n", vec![], &[]);
    assert!(handler::apply(&state, &mut known, ResourceType::Address, &empty).is_empty());
    assert!(!changes.has_changed().unwrap());
}

#[test]
fn wrong_body_type_and_empty_address_are_rejected() {
    let state = StateHandle::default();
    let mut known = Known::default();
    let mut wrong = testing::resource("default/p", "1", &policy("p"));
    wrong.name = uid("x");
    let mut no_body = testing::resource(&uid("y"), "1", &workload("y", [10, 0, 0, 1]));
    no_body.resource = None;
    let empty = testing::resource(&uid("z"), "1", &pb::Address { r#type: None });
    let rejections = handler::apply(
        &state,
        &mut known,
        ResourceType::Address,
        &response(
            proto::ADDRESS_TYPE_URL,
            "n",
            vec![wrong, no_body, empty],
            &[],
        ),
    );
    let messages: Vec<String> = rejections.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 3);
    assert!(
        messages[0].contains("istio.security.Authorization"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].ends_with("resource has no body"),
        "{}",
        messages[1]
    );
    assert!(
        messages[2].ends_with("neither a workload nor a service"),
        "{}",
        messages[2]
    );
    assert_eq!(state.current().workload_count(), 0);
}

// === configuration ===

fn env(vars: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    vars.iter().copied().collect()
}

#[test]
fn config_disabled_without_address_outside_kubernetes() {
    assert!(XdsConfig::from_env(&env(&[])).unwrap().is_none());
    assert!(
        XdsConfig::from_env(&env(&[
            ("XDS_ADDRESS", ""),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1")
        ]))
        .unwrap()
        .is_none(),
        "an empty XDS_ADDRESS disables xDS even in a cluster"
    );
    let c = XdsConfig::from_env(&env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]))
        .unwrap()
        .expect("in-cluster default");
    assert_eq!(
        c.control_plane.address.to_string(),
        "https://istiod.istio-system.svc:15012/"
    );
}

#[test]
fn config_from_env_upstream_names() {
    let c = XdsConfig::from_env(&env(&[
        ("XDS_ADDRESS", "istiod-rev1.istio-system.svc:15012"),
        ("XDS_ROOT_CA", "/etc/istio/root.pem"),
        ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        ("AUTH_TOKEN", "/var/run/secrets/tokens/istio-token"),
        ("ISTIO_META_CLUSTER_ID", "east"),
        ("CLUSTER_ID", "ignored"),
        ("INSTANCE_IP", "10.0.0.9"),
        ("POD_NAME", "ztunnel-abcde"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node-1"),
    ]))
    .unwrap()
    .unwrap();
    let cp = &c.control_plane;
    assert_eq!(
        cp.address.to_string(),
        "https://istiod-rev1.istio-system.svc:15012/"
    );
    assert_eq!(cp.root_cert, RootCert::File("/etc/istio/root.pem".into()));
    assert_eq!(cp.alt_hostname.as_deref(), Some("istiod.istio-system.svc"));
    assert_eq!(
        cp.token,
        Some(TokenSource::File(
            "/var/run/secrets/tokens/istio-token".into()
        ))
    );
    assert_eq!(cp.cluster_id, "east");
    assert_eq!(c.node.cluster_id, "east");
    assert_eq!(c.node.id(), NODE_ID);

    let defaults = XdsConfig::from_env(&env(&[("XDS_ADDRESS", "https://istiod:15012")]))
        .unwrap()
        .unwrap();
    assert_eq!(
        defaults.control_plane.root_cert,
        RootCert::File("./var/run/secrets/istio/root-cert.pem".into())
    );
    assert_eq!(defaults.node.instance_ip, "1.1.1.1");
    assert_eq!(defaults.control_plane.cluster_id, "Kubernetes");
    assert_eq!(defaults.node.id(), "ztunnel~1.1.1.1~.~.svc.cluster.local");

    let inline = XdsConfig::from_env(&env(&[
        ("XDS_ADDRESS", "https://istiod:15012"),
        (
            "XDS_ROOT_CA",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        ),
        ("AUTH_TOKEN", "eyJhbGciOi.static.token"),
    ]))
    .unwrap()
    .unwrap();
    assert!(matches!(inline.control_plane.root_cert, RootCert::Pem(_)));
    assert_eq!(
        inline.control_plane.token,
        Some(TokenSource::Static("eyJhbGciOi.static.token".into()))
    );
    assert!(
        !format!("{:?}", inline.control_plane).contains("static.token"),
        "token redacted"
    );
}

#[test]
fn waypoint_node_id_names_its_type_and_first_address() {
    let node = NodeInfo {
        node_type: NodeType::Waypoint,
        instance_ip: "10.0.0.7,fd00::7".into(),
        pod_name: "waypoint-5d9f".into(),
        pod_namespace: "bookinfo".into(),
        ..node()
    };
    assert_eq!(
        node.id(),
        "waypoint~10.0.0.7~waypoint-5d9f.bookinfo~bookinfo.svc.cluster.local"
    );
    let proto = node.to_proto();
    let fields = proto.metadata.unwrap().fields;
    assert_eq!(
        fields["INSTANCE_IPS"].kind,
        Some(prost_types::value::Kind::StringValue(
            "10.0.0.7,fd00::7".into()
        ))
    );
}

#[test]
fn config_rejects_plaintext_and_system_roots() {
    for (vars, var) in [
        (
            env(&[("XDS_ADDRESS", "http://istiod:15010")]),
            "XDS_ADDRESS",
        ),
        (
            env(&[("XDS_ADDRESS", "https://istiod:15012/path")]),
            "XDS_ADDRESS",
        ),
        (env(&[("XDS_ADDRESS", "https://:15012")]), "XDS_ADDRESS"),
        (
            env(&[
                ("XDS_ADDRESS", "https://istiod:15012"),
                ("XDS_ROOT_CA", "SYSTEM"),
            ]),
            "XDS_ROOT_CA",
        ),
    ] {
        match XdsConfig::from_env(&vars) {
            Err(crate::config::ConfigError::Invalid { name, .. }) => assert_eq!(name, var),
            other => panic!("{vars:?}: {other:?}"),
        }
    }
}

#[test]
fn prefixed_vars_become_metadata_and_headers() {
    let c = XdsConfig::from_env(&env(&[("XDS_ADDRESS", "https://istiod:15012")]))
        .unwrap()
        .unwrap()
        .with_prefixed_vars([
            ("ISTIO_META_DNS_CAPTURE".to_string(), "true".to_string()),
            (
                "ISTIO_METAJSON_LABELS".to_string(),
                r#"{"app":"ztunnel","n":2}"#.to_string(),
            ),
            ("XDS_HEADER_X_TENANT".to_string(), "blue".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ])
        .unwrap();
    let node = c.node.to_proto();
    let fields = node.metadata.unwrap().fields;
    assert_eq!(
        fields["DNS_CAPTURE"].kind,
        Some(prost_types::value::Kind::StringValue("true".into()))
    );
    match &fields["LABELS"].kind {
        Some(prost_types::value::Kind::StructValue(s)) => {
            assert_eq!(
                s.fields["app"].kind,
                Some(prost_types::value::Kind::StringValue("ztunnel".into()))
            );
            assert_eq!(
                s.fields["n"].kind,
                Some(prost_types::value::Kind::NumberValue(2.0))
            );
        }
        other => panic!("LABELS: {other:?}"),
    }
    assert!(!fields.contains_key("UNRELATED"));
    let headers: Vec<(String, String)> = c
        .control_plane
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    assert_eq!(headers, [("x_tenant".to_string(), "blue".to_string())]);

    let bad_json = XdsConfig::from_env(&env(&[("XDS_ADDRESS", "https://istiod:15012")]))
        .unwrap()
        .unwrap()
        .with_prefixed_vars([("ISTIO_METAJSON_X".to_string(), "{".to_string())]);
    assert!(bad_json.is_err());
}
