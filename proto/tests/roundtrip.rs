//! Encode → decode round trips of every top-level message, with every field set to a non-default
//! value (oneofs, maps, optional fields and enums included), plus type URL checks.

use std::collections::HashMap;
use std::fmt::Debug;

use prost::{Message, Name};
use prost_types::{Any, Duration, Struct, Value, value::Kind};

use proto::envoy::config::core::v3 as core;
use proto::envoy::service::discovery::v3 as discovery;
use proto::envoy::r#type::v3::SemanticVersion;
use proto::google::rpc::Status;
use proto::istio::security as sec;
use proto::istio::v1::auth;
use proto::istio::workload as wl;
use proto::istio::workload::zds;

/// Encodes, decodes and compares; also checks the message is not empty, so a test cannot pass by
/// round-tripping a default value.
fn roundtrip<M: Message + Default + PartialEq + Debug>(msg: &M) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    assert!(!bytes.is_empty(), "message encodes to nothing: {msg:?}");
    assert_ne!(
        msg,
        &M::default(),
        "test message must not be the default value"
    );
    let decoded = M::decode(bytes.as_slice()).expect("decode");
    assert_eq!(&decoded, msg);
    // Length-delimited framing round-trips too.
    let framed = msg.encode_length_delimited_to_vec();
    assert_eq!(
        &M::decode_length_delimited(framed.as_slice()).expect("decode framed"),
        msg
    );
    bytes
}

fn string_struct(key: &str, value: &str) -> Struct {
    Struct {
        fields: [(
            key.to_string(),
            Value {
                kind: Some(Kind::StringValue(value.to_string())),
            },
        )]
        .into(),
    }
}

fn extension(name: &str) -> wl::Extension {
    wl::Extension {
        name: name.to_string(),
        config: Some(Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".to_string(),
            value: string_struct("k", "v").encode_to_vec(),
        }),
    }
}

fn network_address(ip: [u8; 4], length: Option<u32>) -> wl::NetworkAddress {
    wl::NetworkAddress {
        network: "net1".to_string(),
        address: ip.to_vec(),
        length,
    }
}

fn waypoint_by_hostname() -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(
            wl::NamespacedHostname {
                namespace: "istio-system".to_string(),
                hostname: "waypoint.istio-system.svc.cluster.local".to_string(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn waypoint_by_address(ip: [u8; 4]) -> wl::GatewayAddress {
    wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(network_address(
            ip, None,
        ))),
        hbone_mtls_port: 15008,
    }
}

fn full_workload() -> wl::Workload {
    wl::Workload {
        uid: "cluster1//v1/Pod/default/app-1".to_string(),
        name: "app-1".to_string(),
        namespace: "default".to_string(),
        addresses: vec![
            vec![10, 0, 0, 5],
            vec![0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
        ],
        hostname: "app-1.example.com".to_string(),
        network: "net1".to_string(),
        tunnel_protocol: wl::TunnelProtocol::Hbone.into(),
        trust_domain: "cluster.local".to_string(),
        service_account: "app".to_string(),
        waypoint: Some(waypoint_by_hostname()),
        network_gateway: Some(waypoint_by_address([192, 168, 1, 1])),
        node: "node-a".to_string(),
        canonical_name: "app".to_string(),
        canonical_revision: "v1".to_string(),
        workload_type: wl::WorkloadType::Pod.into(),
        workload_name: "app".to_string(),
        native_tunnel: true,
        application_tunnel: Some(wl::ApplicationTunnel {
            protocol: wl::application_tunnel::Protocol::Proxy.into(),
            port: 15088,
        }),
        services: HashMap::from([
            (
                "default/app.default.svc.cluster.local".to_string(),
                wl::PortList {
                    ports: vec![wl::Port {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: wl::AppProtocol::Http2.into(),
                    }],
                },
            ),
            (
                "default/other.default.svc.cluster.local".to_string(),
                wl::PortList {
                    ports: vec![wl::Port {
                        service_port: 443,
                        target_port: 8443,
                        app_protocol: wl::AppProtocol::Tls.into(),
                    }],
                },
            ),
        ]),
        authorization_policies: vec!["default/allow-app".to_string()],
        status: wl::WorkloadStatus::Unhealthy.into(),
        cluster_id: "cluster1".to_string(),
        locality: Some(wl::Locality {
            region: "eu".to_string(),
            zone: "eu-1".to_string(),
            subzone: "rack-7".to_string(),
        }),
        network_mode: wl::NetworkMode::HostNetwork.into(),
        extensions: vec![extension("workload-ext")],
        capacity: Some(3),
    }
}

fn full_service() -> wl::Service {
    wl::Service {
        name: "app".to_string(),
        namespace: "default".to_string(),
        hostname: "app.default.svc.cluster.local".to_string(),
        addresses: vec![
            network_address([10, 96, 0, 10], None),
            network_address([10, 97, 0, 0], Some(16)),
        ],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: wl::AppProtocol::Grpc.into(),
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/app".to_string()],
        waypoint: Some(waypoint_by_hostname()),
        load_balancing: Some(wl::LoadBalancing {
            routing_preference: vec![
                wl::load_balancing::Scope::Network.into(),
                wl::load_balancing::Scope::Region.into(),
                wl::load_balancing::Scope::Zone.into(),
            ],
            mode: wl::load_balancing::Mode::Failover.into(),
            health_policy: wl::load_balancing::HealthPolicy::AllowAll.into(),
            dns_connect_strategy: wl::load_balancing::DnsConnectStrategy::FirstHealthyRace.into(),
        }),
        ip_families: wl::IpFamilies::Dual.into(),
        extensions: vec![extension("service-ext")],
        canonical: true,
        ingress_use_waypoint: true,
        weighted_waypoints: vec![
            wl::WeightedWaypoint {
                destination: Some(waypoint_by_hostname()),
                weight: 90,
            },
            wl::WeightedWaypoint {
                destination: Some(waypoint_by_address([10, 0, 0, 9])),
                weight: 10,
            },
        ],
        visibility: wl::Visibility::Namespace.into(),
    }
}

fn full_authorization() -> sec::Authorization {
    use sec::string_match::MatchType;
    let string_match = |m: MatchType| sec::StringMatch {
        match_type: Some(m),
    };
    let address = |ip: [u8; 4], length| sec::Address {
        address: ip.to_vec(),
        length,
    };
    let service_account = |ns: &str, sa: &str| sec::ServiceAccountMatch {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
    };
    sec::Authorization {
        name: "allow-app".to_string(),
        namespace: "default".to_string(),
        scope: sec::Scope::WorkloadSelector.into(),
        action: sec::Action::Deny.into(),
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    namespaces: vec![string_match(MatchType::Exact("default".to_string()))],
                    not_namespaces: vec![string_match(MatchType::Prefix("kube-".to_string()))],
                    principals: vec![string_match(MatchType::Suffix("/sa/client".to_string()))],
                    not_principals: vec![string_match(MatchType::Presence(()))],
                    source_ips: vec![address([10, 0, 0, 0], 8)],
                    not_source_ips: vec![address([10, 1, 0, 0], 16)],
                    destination_ips: vec![address([10, 2, 0, 1], 32)],
                    not_destination_ips: vec![address([10, 3, 0, 0], 24)],
                    destination_ports: vec![80, 8080],
                    not_destination_ports: vec![9999],
                    service_accounts: vec![service_account("default", "client")],
                    not_service_accounts: vec![service_account("other", "bad")],
                    extensions: vec![extension("match-ext")],
                }],
            }],
        }],
        dry_run: true,
        extensions: vec![extension("policy-ext")],
    }
}

fn full_node() -> core::Node {
    core::Node {
        id: "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local".to_string(),
        cluster: "Kubernetes".to_string(),
        metadata: Some(string_struct("NAME", "ztunnel-abc")),
        locality: Some(core::Locality {
            region: "eu".to_string(),
            zone: "eu-1".to_string(),
            sub_zone: "rack-7".to_string(),
        }),
        user_agent_name: "ztunnel".to_string(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentBuildVersion(
            core::BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: 31,
                    patch: 2,
                }),
                metadata: Some(string_struct("build", "release")),
            },
        )),
        extensions: vec![core::Extension {
            name: "envoy.filters.http.router".to_string(),
            category: "envoy.filters.http".to_string(),
            type_descriptor: "envoy.extensions.filters.http.router.v3.Router".to_string(),
            version: Some(core::BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 3,
                    minor_number: 0,
                    patch: 0,
                }),
                metadata: None,
            }),
            disabled: true,
        }],
        client_features: vec!["envoy.lb.does_not_support_overprovisioning".to_string()],
    }
}

fn constraints() -> discovery::DynamicParameterConstraints {
    use discovery::dynamic_parameter_constraints::{
        ConstraintList, SingleConstraint, Type, single_constraint::ConstraintType,
        single_constraint::Exists,
    };
    let single = |key: &str, c: ConstraintType| discovery::DynamicParameterConstraints {
        r#type: Some(Type::Constraint(SingleConstraint {
            key: key.to_string(),
            constraint_type: Some(c),
        })),
    };
    discovery::DynamicParameterConstraints {
        r#type: Some(Type::OrConstraints(ConstraintList {
            constraints: vec![
                single("shard", ConstraintType::Value("1".to_string())),
                discovery::DynamicParameterConstraints {
                    r#type: Some(Type::NotConstraints(Box::new(single(
                        "canary",
                        ConstraintType::Exists(Exists {}),
                    )))),
                },
                discovery::DynamicParameterConstraints {
                    r#type: Some(Type::AndConstraints(ConstraintList {
                        constraints: vec![single("zone", ConstraintType::Value("a".to_string()))],
                    })),
                },
            ],
        })),
    }
}

#[test]
fn address_workload_roundtrip() {
    let address = wl::Address {
        r#type: Some(wl::address::Type::Workload(full_workload())),
    };
    roundtrip(&address);
    roundtrip(&full_workload());
}

#[test]
fn address_service_roundtrip() {
    let address = wl::Address {
        r#type: Some(wl::address::Type::Service(full_service())),
    };
    roundtrip(&address);
    roundtrip(&full_service());
}

#[test]
fn optional_length_distinguishes_zero_from_unset() {
    let unset = network_address([10, 0, 0, 1], None);
    let zero = network_address([10, 0, 0, 1], Some(0));
    assert_ne!(unset.encode_to_vec(), zero.encode_to_vec());
    let decoded = wl::NetworkAddress::decode(roundtrip(&zero).as_slice()).expect("decode");
    assert_eq!(decoded.length, Some(0));
    let decoded = wl::NetworkAddress::decode(roundtrip(&unset).as_slice()).expect("decode");
    assert_eq!(decoded.length, None);
}

#[test]
fn authorization_roundtrip() {
    roundtrip(&full_authorization());
}

#[test]
fn delta_discovery_request_roundtrip() {
    let request = discovery::DeltaDiscoveryRequest {
        node: Some(full_node()),
        type_url: proto::ADDRESS_TYPE_URL.to_string(),
        resource_names_subscribe: vec!["*".to_string(), "net1/10.0.0.5".to_string()],
        resource_names_unsubscribe: vec!["net1/10.0.0.6".to_string()],
        resource_locators_subscribe: vec![discovery::ResourceLocator {
            name: "a".to_string(),
            dynamic_parameters: HashMap::from([("shard".to_string(), "1".to_string())]),
        }],
        resource_locators_unsubscribe: vec![discovery::ResourceLocator {
            name: "b".to_string(),
            dynamic_parameters: HashMap::from([("zone".to_string(), "a".to_string())]),
        }],
        initial_resource_versions: HashMap::from([
            (
                "cluster1//v1/Pod/default/app-1".to_string(),
                "v1".to_string(),
            ),
            (
                "default/app.default.svc.cluster.local".to_string(),
                "v2".to_string(),
            ),
        ]),
        response_nonce: "nonce-1".to_string(),
        error_detail: Some(Status {
            code: 3,
            message: "invalid workload".to_string(),
            details: vec![Any::from_msg(&full_workload()).expect("pack")],
        }),
    };
    roundtrip(&request);
}

#[test]
fn delta_discovery_response_roundtrip_with_address_resource() {
    let address = wl::Address {
        r#type: Some(wl::address::Type::Workload(full_workload())),
    };
    let packed = Any::from_msg(&address).expect("pack");
    assert_eq!(packed.type_url, proto::ADDRESS_TYPE_URL);

    let response = discovery::DeltaDiscoveryResponse {
        system_version_info: "2026-08-22T00:00:00Z/1".to_string(),
        resources: vec![discovery::Resource {
            name: "cluster1//v1/Pod/default/app-1".to_string(),
            resource_name: Some(discovery::ResourceName {
                name: "cluster1//v1/Pod/default/app-1".to_string(),
                dynamic_parameter_constraints: Some(constraints()),
            }),
            aliases: vec!["net1/10.0.0.5".to_string()],
            version: "v1".to_string(),
            resource: Some(packed),
            ttl: Some(Duration {
                seconds: 30,
                nanos: 500,
            }),
            cache_control: Some(discovery::resource::CacheControl { do_not_cache: true }),
            metadata: Some(core::Metadata {
                filter_metadata: HashMap::from([(
                    "istio".to_string(),
                    string_struct("trace", "abc"),
                )]),
                typed_filter_metadata: HashMap::from([(
                    "istio.typed".to_string(),
                    Any::from_msg(&core::ControlPlane {
                        identifier: "typed".to_string(),
                    })
                    .expect("pack"),
                )]),
            }),
        }],
        type_url: proto::ADDRESS_TYPE_URL.to_string(),
        removed_resources: vec!["net1/10.0.0.6".to_string()],
        removed_resource_names: vec![discovery::ResourceName {
            name: "gone".to_string(),
            dynamic_parameter_constraints: Some(constraints()),
        }],
        nonce: "nonce-2".to_string(),
        control_plane: Some(core::ControlPlane {
            identifier: "istiod-abc".to_string(),
        }),
    };
    let bytes = roundtrip(&response);

    let decoded = discovery::DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("decode");
    let any = decoded.resources[0].resource.as_ref().expect("resource");
    let unpacked: wl::Address = any.to_msg().expect("unpack Address");
    assert_eq!(unpacked, address);
    // The wrong type is refused rather than misread.
    assert!(any.to_msg::<sec::Authorization>().is_err());
}

#[test]
fn state_of_the_world_messages_roundtrip() {
    roundtrip(&discovery::DiscoveryRequest {
        version_info: "v1".to_string(),
        node: Some(full_node()),
        resource_names: vec!["a".to_string()],
        resource_locators: vec![discovery::ResourceLocator {
            name: "b".to_string(),
            dynamic_parameters: HashMap::from([("k".to_string(), "v".to_string())]),
        }],
        type_url: proto::AUTHORIZATION_TYPE_URL.to_string(),
        response_nonce: "n".to_string(),
        error_detail: Some(Status {
            code: 13,
            message: "internal".to_string(),
            details: vec![],
        }),
    });
    roundtrip(&discovery::DiscoveryResponse {
        version_info: "v2".to_string(),
        resources: vec![Any::from_msg(&full_authorization()).expect("pack")],
        canary: true,
        type_url: proto::AUTHORIZATION_TYPE_URL.to_string(),
        nonce: "n2".to_string(),
        control_plane: Some(core::ControlPlane {
            identifier: "istiod".to_string(),
        }),
    });
}

#[test]
fn certificate_messages_roundtrip() {
    roundtrip(&auth::IstioCertificateRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
            .to_string(),
        validity_duration: 86_400,
        metadata: Some(string_struct(
            "ImpersonatedIdentity",
            "spiffe://cluster.local/ns/default/sa/app",
        )),
    });
    roundtrip(&auth::IstioCertificateResponse {
        cert_chain: vec![
            "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n".to_string(),
            "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".to_string(),
        ],
    });
}

#[test]
fn zds_messages_roundtrip() {
    use zds::workload_request::Payload;

    roundtrip(&zds::ZdsHello {
        version: zds::Version::V1.into(),
    });

    let requests = [
        Payload::Add(zds::AddWorkload {
            uid: "pod-uid-1".to_string(),
            workload_info: Some(zds::WorkloadInfo {
                name: "app-1".to_string(),
                namespace: "default".to_string(),
                service_account: "app".to_string(),
            }),
        }),
        Payload::Keep(zds::KeepWorkload {
            uid: "pod-uid-2".to_string(),
        }),
        Payload::Del(zds::DelWorkload {
            uid: "pod-uid-3".to_string(),
        }),
        Payload::SnapshotSent(zds::SnapshotSent {}),
    ];
    for payload in requests {
        roundtrip(&zds::WorkloadRequest {
            payload: Some(payload),
        });
    }

    roundtrip(&zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
            error: "netns not found".to_string(),
        })),
    });
    // An ACK (empty error) is still a distinct, non-empty message on the wire.
    let ack = zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack::default())),
    };
    assert_eq!(roundtrip(&ack), [0x0a, 0x00]);
}

#[test]
fn type_urls() {
    assert_eq!(wl::Address::type_url(), proto::ADDRESS_TYPE_URL);
    assert_eq!(
        sec::Authorization::type_url(),
        proto::AUTHORIZATION_TYPE_URL
    );
    assert_eq!(wl::Address::full_name(), "istio.workload.Address");
    assert_eq!(
        sec::Authorization::full_name(),
        "istio.security.Authorization"
    );
    assert_eq!(
        discovery::DeltaDiscoveryRequest::full_name(),
        "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    );
    assert_eq!(core::Node::full_name(), "envoy.config.core.v3.Node");
    assert_eq!(Status::full_name(), "google.rpc.Status");
    assert_eq!(
        auth::IstioCertificateRequest::full_name(),
        "istio.v1.auth.IstioCertificateRequest"
    );
    assert_eq!(
        zds::WorkloadRequest::full_name(),
        "istio.workload.zds.WorkloadRequest"
    );
    assert_eq!(
        wl::application_tunnel::Protocol::Proxy.as_str_name(),
        "PROXY",
        "enum names follow the proto"
    );
}

#[test]
fn enum_values_match_upstream() {
    use wl::load_balancing::{DnsConnectStrategy, HealthPolicy, Mode, Scope};

    let pairs: &[(i32, i32)] = &[
        (wl::TunnelProtocol::None as i32, 0),
        (wl::TunnelProtocol::Hbone as i32, 1),
        (wl::TunnelProtocol::LegacyIstioMtls as i32, 2),
        (wl::WorkloadType::Deployment as i32, 0),
        (wl::WorkloadType::Cronjob as i32, 1),
        (wl::WorkloadType::Pod as i32, 2),
        (wl::WorkloadType::Job as i32, 3),
        (wl::WorkloadStatus::Healthy as i32, 0),
        (wl::WorkloadStatus::Unhealthy as i32, 1),
        (wl::NetworkMode::Standard as i32, 0),
        (wl::NetworkMode::HostNetwork as i32, 1),
        (wl::IpFamilies::Automatic as i32, 0),
        (wl::IpFamilies::Ipv4Only as i32, 1),
        (wl::IpFamilies::Ipv6Only as i32, 2),
        (wl::IpFamilies::Dual as i32, 3),
        (wl::Visibility::Public as i32, 0),
        (wl::Visibility::Namespace as i32, 1),
        (wl::AppProtocol::Unknown as i32, 0),
        (wl::AppProtocol::Http11 as i32, 1),
        (wl::AppProtocol::Http2 as i32, 2),
        (wl::AppProtocol::Grpc as i32, 3),
        (wl::AppProtocol::Tcp as i32, 4),
        (wl::AppProtocol::Tls as i32, 5),
        (wl::application_tunnel::Protocol::None as i32, 0),
        (wl::application_tunnel::Protocol::Proxy as i32, 1),
        (Scope::UnspecifiedScope as i32, 0),
        (Scope::Region as i32, 1),
        (Scope::Zone as i32, 2),
        (Scope::Subzone as i32, 3),
        (Scope::Node as i32, 4),
        (Scope::Cluster as i32, 5),
        (Scope::Network as i32, 6),
        (Mode::UnspecifiedMode as i32, 0),
        (Mode::Strict as i32, 1),
        (Mode::Failover as i32, 2),
        (Mode::Passthrough as i32, 3),
        (HealthPolicy::OnlyHealthy as i32, 0),
        (HealthPolicy::AllowAll as i32, 1),
        (DnsConnectStrategy::Default as i32, 0),
        (DnsConnectStrategy::FirstHealthyRace as i32, 1),
        (sec::Scope::Global as i32, 0),
        (sec::Scope::Namespace as i32, 1),
        (sec::Scope::WorkloadSelector as i32, 2),
        (sec::Action::Allow as i32, 0),
        (sec::Action::Deny as i32, 1),
        (zds::Version::NotUsed as i32, 0),
        (zds::Version::V1 as i32, 1),
    ];
    for (index, (actual, expected)) in pairs.iter().enumerate() {
        assert_eq!(actual, expected, "entry {index}");
    }
}

#[test]
fn ext_authz_messages() {
    use proto::envoy::service::auth::v3::{
        self as authz, AttributeContext, CheckRequest, CheckResponse, attribute_context as ac,
        check_response,
    };
    use proto::envoy::r#type::v3::{HttpStatus, StatusCode};
    let header = |k: &str, v: &str| core::HeaderValue {
        key: k.to_string(),
        value: v.to_string(),
        raw_value: v.as_bytes().to_vec(),
    };
    let option = |k: &str, v: &str| core::HeaderValueOption {
        header: Some(header(k, v)),
        append: Some(true),
        append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExists.into(),
        keep_empty_value: true,
    };
    let peer = |ip: &str, port: u32, principal: &str| ac::Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                protocol: core::socket_address::Protocol::Udp.into(),
                address: ip.to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                resolver_name: "r".to_string(),
                ipv4_compat: true,
            })),
        }),
        service: "svc".to_string(),
        labels: HashMap::from([("app".to_string(), "a".to_string())]),
        principal: principal.to_string(),
        certificate: "cert".to_string(),
    };
    let metadata = core::Metadata {
        filter_metadata: HashMap::from([("f".to_string(), string_struct("k", "v"))]),
        typed_filter_metadata: HashMap::new(),
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.0.1", 40000, "spiffe://cluster.local/ns/a/sa/b")),
            destination: Some(peer("10.0.0.2", 9080, "spiffe://cluster.local/ns/w/sa/w")),
            request: Some(ac::Request {
                time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                http: Some(ac::HttpRequest {
                    id: "id".to_string(),
                    method: "POST".to_string(),
                    headers: HashMap::from([(":path".to_string(), "/x?y".to_string())]),
                    path: "/x?y".to_string(),
                    host: "reviews".to_string(),
                    scheme: "http".to_string(),
                    query: "q".to_string(),
                    fragment: "f".to_string(),
                    size: 3,
                    protocol: "HTTP/1.1".to_string(),
                    body: "abc".to_string(),
                    raw_body: b"abc".to_vec(),
                    header_map: Some(core::HeaderMap {
                        headers: vec![header("a", "1"), header("a", "2")],
                    }),
                }),
            }),
            context_extensions: HashMap::from([("k".to_string(), "v".to_string())]),
            metadata_context: Some(metadata.clone()),
            route_metadata_context: Some(metadata),
            tls_session: Some(ac::TlsSession {
                sni: "reviews".to_string(),
            }),
        }),
    };
    roundtrip(&request);
    let pipe = core::Address {
        address: Some(core::address::Address::Pipe(core::Pipe {
            path: "/run/s".to_string(),
            mode: 0o600,
        })),
    };
    roundtrip(&pipe);
    let ok = CheckResponse {
        status: Some(Status {
            code: 0,
            message: "fine".to_string(),
            details: Vec::new(),
        }),
        http_response: Some(check_response::HttpResponse::OkResponse(
            authz::OkHttpResponse {
                headers: vec![option("x-user", "u")],
                dynamic_metadata: Some(string_struct("k", "v")),
                headers_to_remove: vec!["authorization".to_string()],
                response_headers_to_add: vec![option("x-trace", "t")],
            },
        )),
        dynamic_metadata: Some(string_struct("a", "b")),
    };
    roundtrip(&ok);
    let denied = CheckResponse {
        status: Some(Status {
            code: 7,
            message: "no".to_string(),
            details: Vec::new(),
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            authz::DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: StatusCode::Unauthorized.into(),
                }),
                headers: vec![option("www-authenticate", "Bearer")],
                body: "denied".to_string(),
            },
        )),
        dynamic_metadata: None,
    };
    roundtrip(&denied);
    assert_eq!(
        CheckRequest::type_url(),
        "type.googleapis.com/envoy.service.auth.v3.CheckRequest"
    );
    assert_eq!(StatusCode::Forbidden as i32, 403);
    assert_eq!(StatusCode::TooManyRequests as i32, 429);
    assert_eq!(
        core::header_value_option::HeaderAppendAction::OverwriteIfExists as i32,
        3
    );
}
