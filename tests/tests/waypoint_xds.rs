//! The waypoint fed by istiod: its mesh state over delta xDS and its certificate from Istio's CA,
//! both from a fake istiod on `127.0.0.1:0` (TLS, bearer token), chosen by the waypoint's own
//! source selection from the environment variables a waypoint pod gets. Requests cross real
//! sockets: client → ztunnel → waypoint → ztunnel → backend. The ztunnels keep the harness's
//! local state file (they are not under test here); only the waypoint's view follows istiod.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ambient_e2e::inpod::http_get;
use ambient_e2e::waypoint::{APP_PORT, MeshOptions, Net, WaypointMesh, get, send};
use http::StatusCode;
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use proto::istio::workload as pb;
use tokio::sync::mpsc::UnboundedReceiver;
use waypoint::source::{SourceFlags, StateSource, WaypointNode};
use ztunnel::ca_client::testing::FakeCa;
use ztunnel::xds::testing::{self, AdsStream, TestPki, TestServer, response};

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// A fake istiod whose CA is the mesh's (the ztunnels' local CA), and the waypoint's sources
/// pointing at it.
struct Istiod {
    server: TestServer,
    streams: UnboundedReceiver<AdsStream>,
    ca: FakeCa,
    options: MeshOptions,
    _pki: TestPki,
    _ca_dir: tempfile::TempDir,
}

impl Istiod {
    async fn start(net: Net) -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        let mesh_ca =
            Arc::new(hbone::LocalCa::load_or_generate(ca_dir.path(), "cluster.local").unwrap());
        let pki = TestPki::signed_by(&mesh_ca);
        let ca = FakeCa::signing(mesh_ca);
        let (server, streams) = testing::fake_istiod(&pki, ca.clone()).await;
        let address = format!("https://{}", server.addr);
        let root = pki.root_path.to_str().unwrap().to_owned();
        // What a waypoint pod's environment holds (istiod's address made explicit).
        let env: HashMap<&str, &str> = HashMap::from([
            ("XDS_ADDRESS", address.as_str()),
            ("XDS_ROOT_CA", root.as_str()),
            ("CA_ADDRESS", address.as_str()),
            ("CA_ROOT_CA", root.as_str()),
            ("AUTH_TOKEN", testing::TOKEN),
            ("POD_NAME", "waypoint-6d8f"),
        ]);
        let sources = waypoint::source::select(
            &SourceFlags::default(),
            &WaypointNode {
                namespace: "default".into(),
                name: "waypoint".into(),
                service_account: "waypoint".into(),
                instance_ips: vec![IpAddr::V4(net.waypoint())],
            },
            &env,
        )
        .unwrap();
        assert!(matches!(sources.state, StateSource::Xds(_)));
        let options = MeshOptions {
            waypoint_sources: Some(sources),
            ca_dir: Some(ca_dir.path().to_path_buf()),
            ..MeshOptions::default()
        };
        Self {
            server,
            streams,
            ca,
            options,
            _pki: pki,
            _ca_dir: ca_dir,
        }
    }

    /// The waypoint's stream, past its subscription (one request per type), and its request
    /// for workload-API addresses.
    async fn subscribed(&mut self) -> (AdsStream, DeltaDiscoveryRequest) {
        let mut stream = testing::next_stream(&mut self.streams).await;
        let initial = stream.initial_requests().await;
        let types: Vec<&str> = initial.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(
            types,
            [proto::AUTHORIZATION_TYPE_URL, proto::ADDRESS_TYPE_URL],
            "one subscription per type"
        );
        let addresses = initial
            .into_iter()
            .find(|r| r.type_url == proto::ADDRESS_TYPE_URL)
            .unwrap();
        (stream, addresses)
    }
}

// === the workload API as istiod would push it for a Net ===

fn address(ip: std::net::Ipv4Addr) -> Vec<u8> {
    ip.octets().to_vec()
}

fn network_address(ip: std::net::Ipv4Addr) -> pb::NetworkAddress {
    pb::NetworkAddress {
        network: String::new(),
        address: address(ip),
        length: None,
    }
}

fn service_key(name: &str) -> String {
    format!("default/{name}.default.svc.cluster.local")
}

/// The waypoint's own workload and Service (what its bindings are resolved from).
fn waypoint_resources(net: Net) -> Vec<Resource> {
    let workload = pb::Workload {
        uid: "waypoint".into(),
        name: "waypoint".into(),
        namespace: "default".into(),
        addresses: vec![address(net.waypoint())],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "waypoint".into(),
        node: "node-w".into(),
        canonical_name: "waypoint".into(),
        workload_name: "waypoint".into(),
        services: HashMap::from([(
            service_key("waypoint"),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: 15008,
                    target_port: 15008,
                    app_protocol: 0,
                }],
            },
        )]),
        ..Default::default()
    };
    let service = pb::Service {
        name: "waypoint".into(),
        namespace: "default".into(),
        hostname: "waypoint.default.svc.cluster.local".into(),
        addresses: vec![network_address(net.vip(9))],
        ports: vec![pb::Port {
            service_port: 15008,
            target_port: 15008,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    vec![
        testing::resource("waypoint", "1", &workload_address(workload)),
        testing::resource(
            &service_key("waypoint"),
            "1",
            &pb::Address {
                r#type: Some(pb::address::Type::Service(service)),
            },
        ),
    ]
}

/// `reviews`, bound to the waypoint by its VIP.
fn reviews_service(net: Net) -> Resource {
    let service = pb::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        hostname: REVIEWS.into(),
        addresses: vec![network_address(net.vip(10))],
        ports: vec![pb::Port {
            service_port: u32::from(APP_PORT),
            target_port: u32::from(APP_PORT),
            app_protocol: 0,
        }],
        waypoint: Some(pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Address(network_address(
                net.vip(9),
            ))),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    };
    testing::resource(
        &service_key("reviews"),
        "1",
        &pb::Address {
            r#type: Some(pb::address::Type::Service(service)),
        },
    )
}

/// The backend `reviews-<version>` (host byte as in the harness) as an endpoint of `reviews`.
fn reviews_backend(net: Net, version: &str, host: u8) -> Resource {
    let name = format!("reviews-{version}");
    let workload = pb::Workload {
        uid: name.clone(),
        name: name.clone(),
        namespace: "default".into(),
        addresses: vec![address(net.workload(host))],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "reviews".into(),
        node: "node-b".into(),
        canonical_name: "reviews".into(),
        canonical_revision: version.into(),
        workload_name: name.clone(),
        services: HashMap::from([(
            service_key("reviews"),
            pb::PortList {
                ports: vec![pb::Port {
                    service_port: u32::from(APP_PORT),
                    target_port: u32::from(APP_PORT),
                    app_protocol: 0,
                }],
            },
        )]),
        ..Default::default()
    };
    testing::resource(&name, "1", &workload_address(workload))
}

fn workload_address(workload: pb::Workload) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(workload)),
    }
}

/// Pushes and checks the ACK.
async fn push(stream: &mut AdsStream, response: DeltaDiscoveryResponse) {
    let nonce = response.nonce.clone();
    let reply = stream.push(response).await;
    assert_eq!(reply.response_nonce, nonce);
    assert!(reply.error_detail.is_none(), "NACK: {reply:?}");
}

/// The first full push: the waypoint, `reviews` with `backends`, no policies.
async fn first_push(stream: &mut AdsStream, net: Net, backends: Vec<Resource>) {
    let mut resources = waypoint_resources(net);
    resources.push(reviews_service(net));
    resources.extend(backends);
    push(
        stream,
        response(proto::ADDRESS_TYPE_URL, "a1", resources, &[]),
    )
    .await;
    push(
        stream,
        response(proto::AUTHORIZATION_TYPE_URL, "p1", Vec::new(), &[]),
    )
    .await;
}

// === observing the waypoint ===

/// `/healthz/ready`: status code and body.
async fn readiness(mesh: &WaypointMesh) -> (u16, String) {
    let raw = http_get(mesh.waypoint.readiness, "/healthz/ready").await;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, raw)
}

/// The endpoints of the waypoint's `reviews` cluster.
fn reviews_endpoints(mesh: &WaypointMesh) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = mesh
        .waypoint
        .core
        .clusters()
        .iter()
        .filter(|c| c.name().ends_with(REVIEWS))
        .flat_map(|c| c.endpoints().into_iter().map(|e| e.address))
        .collect();
    out.sort();
    out
}

/// Waits until the waypoint's `reviews` cluster has exactly `want` (a state change reaches the
/// clusters asynchronously after the ACK).
async fn until_reviews_endpoints(mesh: &WaypointMesh, want: &[SocketAddr]) {
    let deadline = Instant::now() + testing::WAIT;
    loop {
        let now = reviews_endpoints(mesh);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the waypoint's reviews endpoints stayed {now:?}, expected {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn backend_of(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn endpoint(net: Net, host: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(net.workload(host)), APP_PORT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_istiod_certificate_from_istios_ca_and_changes_followed() {
    let net = Net(45);
    let mut istiod = Istiod::start(net).await;
    let address = format!("https://{}/", istiod.server.addr);
    let options = std::mem::take(&mut istiod.options);
    let mesh = WaypointMesh::start_with(net, options).await;

    // The certificate: asked for once, for the waypoint's own identity (no impersonation),
    // with the token, and in use.
    {
        let seen = istiod.ca.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].request.metadata.is_none(),
            "no ImpersonatedIdentity"
        );
        assert_eq!(
            seen[0].metadata.get("authorization").unwrap(),
            &format!("Bearer {}", testing::TOKEN)
        );
    }
    let dump = mesh.config_dump().await;
    assert_eq!(
        dump["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );

    // Subscribed as a waypoint; nothing pushed yet: not ready, and config_dump says so.
    let (mut stream, subscription) = istiod.subscribed().await;
    let node = subscription.node.as_ref().unwrap();
    assert_eq!(
        node.id,
        "waypoint~127.45.0.9~waypoint-6d8f.default~default.svc.cluster.local"
    );
    let metadata = &node.metadata.as_ref().unwrap().fields;
    for (key, want) in [
        ("NAMESPACE", "default"),
        ("NAME", "waypoint-6d8f"),
        ("SERVICE_ACCOUNT", "waypoint"),
        ("INSTANCE_IPS", "127.45.0.9"),
    ] {
        assert_eq!(
            metadata[key].kind,
            Some(proto::prost_types::value::Kind::StringValue(want.into())),
            "{key}"
        );
    }
    let (status, body) = readiness(&mesh).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state"), "{body}");
    let dump = mesh.config_dump().await;
    assert_eq!(
        dump["stateSource"],
        serde_json::json!({ "xds": address, "synced": false })
    );

    // The first push, with reviews-v1 the only endpoint of reviews: ready, and serving it.
    first_push(&mut stream, net, vec![reviews_backend(net, "v1", 11)]).await;
    tokio::time::timeout(testing::WAIT, mesh.waypoint.ready.wait())
        .await
        .expect("ready after the first push");
    let (status, body) = readiness(&mesh).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mesh.config_dump().await["stateSource"]["synced"], true);

    let mut http = mesh.http1(net.reviews()).await;
    let (status, headers, body) = send(&mut http, get(REVIEWS, "/first", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend_of(&headers), "reviews-v1");
    assert_eq!(body, "reviews-v1 /first 0");
    assert_eq!(
        mesh.access_log().len(),
        1,
        "the request crossed the waypoint"
    );
    assert_eq!(reviews_endpoints(&mesh), [endpoint(net, 11)]);

    // istiod replaces reviews-v1 by reviews-v2: every request now goes to v2.
    push(
        &mut stream,
        response(
            proto::ADDRESS_TYPE_URL,
            "a2",
            vec![reviews_backend(net, "v2", 12)],
            &["reviews-v1"],
        ),
    )
    .await;
    until_reviews_endpoints(&mesh, &[endpoint(net, 12)]).await;
    for i in 0..5 {
        let path = format!("/after/{i}");
        let (status, headers, body) = send(&mut http, get(REVIEWS, &path, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(backend_of(&headers), "reviews-v2");
        assert_eq!(body, format!("reviews-v2 {path} 0"));
    }
    assert_eq!(mesh.backends.seen("reviews-v1").len(), 1);

    // istiod removes the last endpoint: the waypoint answers 503 itself.
    push(
        &mut stream,
        response(proto::ADDRESS_TYPE_URL, "a3", Vec::new(), &["reviews-v2"]),
    )
    .await;
    until_reviews_endpoints(&mesh, &[]).await;
    let (status, headers, _) = send(&mut http, get(REVIEWS, "/none", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(backend_of(&headers), "");
    assert_eq!(mesh.backends.seen("reviews-v2").len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stream_keeps_the_state_and_resubscribes_with_what_it_holds() {
    let net = Net(46);
    let mut istiod = Istiod::start(net).await;
    let options = std::mem::take(&mut istiod.options);
    let mesh = WaypointMesh::start_with(net, options).await;
    let (mut stream, _) = istiod.subscribed().await;
    first_push(&mut stream, net, vec![reviews_backend(net, "v3", 13)]).await;
    tokio::time::timeout(testing::WAIT, mesh.waypoint.ready.wait())
        .await
        .expect("ready after the first push");

    // istiod ends the stream: the waypoint keeps serving what it had, stays ready, and
    // reconnects naming every resource it holds.
    drop(stream);
    let (mut stream, subscription) = istiod.subscribed().await;
    let known = &subscription.initial_resource_versions;
    for name in ["reviews-v3", "waypoint", &service_key("reviews")] {
        assert!(known.contains_key(name), "{name} missing from {known:?}");
    }
    assert!(mesh.waypoint.ready.is_ready());
    let mut http = mesh.http1(net.reviews()).await;
    let (status, headers, _) = send(&mut http, get(REVIEWS, "/kept", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend_of(&headers), "reviews-v3");

    // The new stream's changes are followed.
    push(
        &mut stream,
        response(
            proto::ADDRESS_TYPE_URL,
            "b1",
            vec![reviews_backend(net, "v1", 11)],
            &["reviews-v3"],
        ),
    )
    .await;
    until_reviews_endpoints(&mesh, &[endpoint(net, 11)]).await;
    let (status, headers, _) = send(&mut http, get(REVIEWS, "/moved", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend_of(&headers), "reviews-v1");
}
