//! Golden wire bytes, written by hand from the protobuf encoding rules, that pin field numbers
//! and wire types.
//!
//! A field key is the varint `(field_number << 3) | wire_type`, with wire type 0 for varints and
//! 2 for length-delimited values (strings, bytes, messages, packed repeated scalars, map
//! entries). Keys of fields 16 and up take two bytes. Map entries are messages with the key as
//! field 1 and the value as field 2.

use std::collections::HashMap;

use prost::Message;
use prost_types::{Struct, Value, value::Kind};

use proto::envoy::service::discovery::v3 as discovery;
use proto::google::rpc::Status;
use proto::istio::security as sec;
use proto::istio::v1::auth;
use proto::istio::workload as wl;
use proto::istio::workload::zds;

/// Asserts the encoding, and that the bytes decode back to the same message.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, expected: &[u8]) {
    assert_eq!(msg.encode_to_vec(), expected, "encoding of {msg:?}");
    assert_eq!(&M::decode(expected).expect("decode golden bytes"), msg);
}

#[test]
fn workload_high_field_numbers() {
    let workload = wl::Workload {
        uid: "u".to_string(),
        hostname: "h".to_string(),
        services: HashMap::from([(
            "n/s".to_string(),
            wl::PortList {
                ports: vec![wl::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: wl::AppProtocol::Http2.into(),
                }],
            },
        )]),
        application_tunnel: Some(wl::ApplicationTunnel {
            protocol: wl::application_tunnel::Protocol::Proxy.into(),
            port: 15088,
        }),
        locality: Some(wl::Locality {
            region: "r".to_string(),
            zone: "z".to_string(),
            subzone: "s".to_string(),
        }),
        capacity: Some(5),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // uid = 20, length-delimited: (20 << 3) | 2 = 162 = varint a2 01
        0xa2, 0x01, 0x01, b'u',
        // hostname = 21: 170 = aa 01
        0xaa, 0x01, 0x01, b'h',
        // services = 22: 178 = b2 01; one map entry of 16 bytes
        0xb2, 0x01, 0x10,
            // entry key = 1: "n/s"
            0x0a, 0x03, b'n', b'/', b's',
            // entry value = 2: PortList, 9 bytes
            0x12, 0x09,
                // PortList.ports = 1: Port, 7 bytes
                0x0a, 0x07,
                    // service_port = 1: 80
                    0x08, 0x50,
                    // target_port = 2: 8080 = varint 90 3f
                    0x10, 0x90, 0x3f,
                    // app_protocol = 3: HTTP2 = 2
                    0x18, 0x02,
        // application_tunnel = 23: 186 = ba 01; 5 bytes
        0xba, 0x01, 0x05,
            // protocol = 1: PROXY = 1
            0x08, 0x01,
            // port = 2: 15088 = varint f0 75
            0x10, 0xf0, 0x75,
        // locality = 24: 194 = c2 01; 9 bytes
        0xc2, 0x01, 0x09,
            0x0a, 0x01, b'r', // region = 1
            0x12, 0x01, b'z', // zone = 2
            0x1a, 0x01, b's', // subzone = 3
        // capacity = 27: 218 = da 01; UInt32Value { value = 1: 5 }
        0xda, 0x01, 0x02, 0x08, 0x05,
    ];
    assert_wire(&workload, expected);

    // Wrapped in an Address, the workload is field 1.
    let address = wl::Address {
        r#type: Some(wl::address::Type::Workload(workload)),
    };
    let mut wrapped = vec![0x0a, expected.len() as u8];
    wrapped.extend_from_slice(expected);
    assert_wire(&address, &wrapped);
}

#[test]
fn workload_low_field_numbers() {
    let workload = wl::Workload {
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: wl::TunnelProtocol::LegacyIstioMtls.into(),
        native_tunnel: true,
        status: wl::WorkloadStatus::Unhealthy.into(),
        network_mode: wl::NetworkMode::HostNetwork.into(),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x1a, 0x04, 10, 0, 0, 1, // addresses = 3 (bytes)
        0x28, 0x02,              // tunnel_protocol = 5: LEGACY_ISTIO_MTLS = 2
        0x70, 0x01,              // native_tunnel = 14: (14 << 3) | 0 = 0x70
        0x88, 0x01, 0x01,        // status = 17: (17 << 3) | 0 = 136 = 88 01; UNHEALTHY
        0xc8, 0x01, 0x01,        // network_mode = 25: 200 = c8 01; HOST_NETWORK
    ];
    assert_wire(&workload, expected);
}

#[test]
fn service_waypoints() {
    let service = wl::Service {
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "ns".to_string(),
                    hostname: "wp".to_string(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        weighted_waypoints: vec![wl::WeightedWaypoint {
            destination: Some(wl::GatewayAddress {
                destination: Some(wl::gateway_address::Destination::Address(
                    wl::NetworkAddress {
                        network: String::new(),
                        address: vec![10, 0, 0, 1],
                        length: Some(32),
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            weight: 90,
        }],
        visibility: wl::Visibility::Namespace.into(),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // waypoint = 7: (7 << 3) | 2 = 0x3a; GatewayAddress, 13 bytes
        0x3a, 0x0d,
            // destination.hostname = 1: NamespacedHostname, 8 bytes
            0x0a, 0x08,
                0x0a, 0x02, b'n', b's', // namespace = 1
                0x12, 0x02, b'w', b'p', // hostname = 2
            // hbone_mtls_port = 3: 15008 = varint a0 75
            0x18, 0xa0, 0x75,
        // weighted_waypoints = 13: (13 << 3) | 2 = 0x6a; WeightedWaypoint, 17 bytes
        0x6a, 0x11,
            // destination = 1: GatewayAddress, 13 bytes
            0x0a, 0x0d,
                // destination.address = 2: NetworkAddress, 8 bytes
                0x12, 0x08,
                    0x12, 0x04, 10, 0, 0, 1, // address = 2
                    0x18, 0x20,              // length = 3: 32
                0x18, 0xa0, 0x75,            // hbone_mtls_port = 3
            // weight = 2: 90
            0x10, 0x5a,
        // visibility = 14: (14 << 3) | 0 = 0x70; NAMESPACE = 1
        0x70, 0x01,
    ];
    assert_wire(&service, expected);
}

#[test]
fn service_flags() {
    let service = wl::Service {
        ip_families: wl::IpFamilies::Ipv6Only.into(),
        canonical: true,
        ingress_use_waypoint: true,
        ..Default::default()
    };
    // ip_families = 9 (0x48), canonical = 11 (0x58), ingress_use_waypoint = 12 (0x60)
    assert_wire(&service, &[0x48, 0x02, 0x58, 0x01, 0x60, 0x01]);
}

#[test]
fn authorization_match_fields() {
    let matched = sec::Match {
        not_destination_ports: vec![9999],
        service_accounts: vec![sec::ServiceAccountMatch {
            namespace: "ns".to_string(),
            service_account: "sa".to_string(),
        }],
        extensions: vec![wl::Extension {
            name: "x".to_string(),
            config: None,
        }],
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // not_destination_ports = 10, packed: (10 << 3) | 2 = 0x52; 9999 = varint 8f 4e
        0x52, 0x02, 0x8f, 0x4e,
        // service_accounts = 11: (11 << 3) | 2 = 0x5a; ServiceAccountMatch, 8 bytes
        0x5a, 0x08,
            0x0a, 0x02, b'n', b's', // namespace = 1
            0x12, 0x02, b's', b'a', // serviceAccount = 2
        // extensions = 13: 0x6a; Extension { name = 1: "x" }
        0x6a, 0x03, 0x0a, 0x01, b'x',
    ];
    assert_wire(&matched, expected);

    let policy = sec::Authorization {
        action: sec::Action::Deny.into(),
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    not_service_accounts: vec![sec::ServiceAccountMatch::default()],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: true,
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x20, 0x01,                   // action = 4: DENY
        0x2a, 0x06,                   // rules = 5: Rule, 6 bytes
            0x0a, 0x04,               // clauses = 1: Clause, 4 bytes
                0x12, 0x02,           // matches = 2: Match, 2 bytes
                    0x62, 0x00,       // not_service_accounts = 12: (12 << 3) | 2 = 0x62, empty
        0x30, 0x01,                   // dry_run = 6
    ];
    assert_wire(&policy, expected);
}

#[test]
fn string_match_presence() {
    let presence = sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Presence(())),
    };
    // presence = 4: (4 << 3) | 2 = 0x22, an empty google.protobuf.Empty
    assert_wire(&presence, &[0x22, 0x00]);
}

#[test]
fn delta_discovery_request_fields() {
    let request = discovery::DeltaDiscoveryRequest {
        type_url: "t".to_string(),
        initial_resource_versions: HashMap::from([("a".to_string(), "1".to_string())]),
        response_nonce: "n".to_string(),
        error_detail: Some(Status {
            code: 3,
            message: "bad".to_string(),
            details: vec![],
        }),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x12, 0x01, b't',                   // type_url = 2
        // initial_resource_versions = 5: (5 << 3) | 2 = 0x2a; entry of 6 bytes
        0x2a, 0x06,
            0x0a, 0x01, b'a',               // key = 1
            0x12, 0x01, b'1',               // value = 2
        0x32, 0x01, b'n',                   // response_nonce = 6
        // error_detail = 7: 0x3a; google.rpc.Status, 7 bytes
        0x3a, 0x07,
            0x08, 0x03,                     // code = 1: 3
            0x12, 0x03, b'b', b'a', b'd',   // message = 2
    ];
    assert_wire(&request, expected);
}

#[test]
fn delta_discovery_response_fields() {
    let response = discovery::DeltaDiscoveryResponse {
        system_version_info: "v".to_string(),
        resources: vec![discovery::Resource {
            name: "r".to_string(),
            aliases: vec!["a".to_string()],
            ..Default::default()
        }],
        type_url: "t".to_string(),
        removed_resources: vec!["x".to_string()],
        nonce: "n".to_string(),
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 0x01, b'v',                   // system_version_info = 1
        0x12, 0x06,                         // resources = 2: Resource, 6 bytes
            0x1a, 0x01, b'r',               // name = 3
            0x22, 0x01, b'a',               // aliases = 4
        0x22, 0x01, b't',                   // type_url = 4
        0x2a, 0x01, b'n',                   // nonce = 5
        0x32, 0x01, b'x',                   // removed_resources = 6
    ];
    assert_wire(&response, expected);
}

#[test]
fn certificate_request_fields() {
    let request = auth::IstioCertificateRequest {
        csr: "C".to_string(),
        validity_duration: 86_400,
        metadata: Some(Struct {
            fields: [(
                "k".to_string(),
                Value {
                    kind: Some(Kind::StringValue("v".to_string())),
                },
            )]
            .into(),
        }),
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x0a, 0x01, b'C',                   // csr = 1
        0x18, 0x80, 0xa3, 0x05,             // validity_duration = 3: 86400 = varint 80 a3 05
        // metadata = 4: (4 << 3) | 2 = 0x22; Struct, 10 bytes
        0x22, 0x0a,
            0x0a, 0x08,                     // fields = 1: map entry, 8 bytes
                0x0a, 0x01, b'k',           // key = 1
                0x12, 0x03,                 // value = 2: Value, 3 bytes
                    0x1a, 0x01, b'v',       // string_value = 3
    ];
    assert_wire(&request, expected);

    let response = auth::IstioCertificateResponse {
        cert_chain: vec!["A".to_string(), "B".to_string()],
    };
    assert_wire(&response, &[0x0a, 0x01, b'A', 0x0a, 0x01, b'B']);
}

#[test]
fn zds_fields() {
    use zds::workload_request::Payload;

    let request = |payload| zds::WorkloadRequest {
        payload: Some(payload),
    };
    // snapshot_sent = 3: (3 << 3) | 2 = 0x1a, empty message
    assert_wire(
        &request(Payload::SnapshotSent(zds::SnapshotSent {})),
        &[0x1a, 0x00],
    );
    // del = 2 holding DelWorkload { uid = 2 }
    assert_wire(
        &request(Payload::Del(zds::DelWorkload {
            uid: "u".to_string(),
        })),
        &[0x12, 0x03, 0x12, 0x01, b'u'],
    );
    // keep = 5 holding KeepWorkload { uid = 1 }
    assert_wire(
        &request(Payload::Keep(zds::KeepWorkload {
            uid: "u".to_string(),
        })),
        &[0x2a, 0x03, 0x0a, 0x01, b'u'],
    );
    // add = 1 holding AddWorkload { uid = 1, workload_info = 2 { service_account = 3 } }
    assert_wire(
        &request(Payload::Add(zds::AddWorkload {
            uid: "u".to_string(),
            workload_info: Some(zds::WorkloadInfo {
                service_account: "s".to_string(),
                ..Default::default()
            }),
        })),
        &[0x0a, 0x08, 0x0a, 0x01, b'u', 0x12, 0x03, 0x1a, 0x01, b's'],
    );
    // version = 1: V1
    assert_wire(
        &zds::ZdsHello {
            version: zds::Version::V1.into(),
        },
        &[0x08, 0x01],
    );
    // ack = 1 holding Ack { error = 1 }
    assert_wire(
        &zds::WorkloadResponse {
            payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
                error: "e".to_string(),
            })),
        },
        &[0x0a, 0x03, 0x0a, 0x01, b'e'],
    );
}

#[test]
fn unknown_fields_are_skipped() {
    // A newer control plane may send fields this crate does not know; decoding must not fail.
    // Workload with uid "u" followed by an unknown field 99 (varint) = key 0x98 0x06, value 1.
    let bytes = [0xa2, 0x01, 0x01, b'u', 0x98, 0x06, 0x01];
    let decoded = wl::Workload::decode(bytes.as_slice()).expect("decode with unknown field");
    assert_eq!(decoded.uid, "u");
}

#[test]
fn ext_authz_check_request() {
    use proto::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
    let msg = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: "p".to_string(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".to_string(),
                    path: "/".to_string(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // CheckRequest.attributes = 1, 17 bytes
        0x0a, 0x11,
        // AttributeContext.source = 1, 3 bytes: Peer.principal = 4 (0x22) "p"
        0x0a, 0x03, 0x22, 0x01, b'p',
        // AttributeContext.request = 4 (0x22), 10 bytes
        0x22, 0x0a,
        // Request.http = 2 (0x12), 8 bytes
        0x12, 0x08,
        // HttpRequest.method = 2 (0x12) "GET"
        0x12, 0x03, b'G', b'E', b'T',
        // HttpRequest.path = 4 (0x22) "/"
        0x22, 0x01, b'/',
    ];
    assert_wire(&msg, expected);
}

#[test]
fn ext_authz_denied_check_response() {
    use proto::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, check_response};
    use proto::envoy::r#type::v3::{HttpStatus, StatusCode};
    let msg = CheckResponse {
        status: Some(Status {
            code: 7,
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: StatusCode::Forbidden.into(),
                }),
                headers: Vec::new(),
                body: "no".to_string(),
            },
        )),
        dynamic_metadata: None,
    };
    #[rustfmt::skip]
    let expected: &[u8] = &[
        // CheckResponse.status = 1: Status.code = 1 (varint) 7
        0x0a, 0x02, 0x08, 0x07,
        // CheckResponse.denied_response = 2, 9 bytes
        0x12, 0x09,
        // DeniedHttpResponse.status = 1: HttpStatus.code = 1, varint 403 = 93 03
        0x0a, 0x03, 0x08, 0x93, 0x03,
        // DeniedHttpResponse.body = 3 (0x1a) "no"
        0x1a, 0x02, b'n', b'o',
    ];
    assert_wire(&msg, expected);
}

#[test]
fn otlp_span_field_numbers() {
    use proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
    use proto::opentelemetry::proto::trace::v1::{Span, Status, span, status};

    // trace_id = 1 (bytes), kind = 6 (varint), start_time_unix_nano = 7 (fixed64),
    // status = 15 (message) with code = 3.
    let span = Span {
        trace_id: vec![0xaa],
        kind: span::SpanKind::Server.into(),
        start_time_unix_nano: 1,
        status: Some(Status {
            message: String::new(),
            code: status::StatusCode::Error.into(),
        }),
        ..Span::default()
    };
    assert_wire(
        &span,
        &[
            0x0a, 0x01, 0xaa, // trace_id
            0x30, 0x02, // kind SERVER
            0x39, 1, 0, 0, 0, 0, 0, 0, 0, // start_time_unix_nano
            0x7a, 0x02, 0x18, 0x02, // status { code ERROR }
        ],
    );
    // flags = 16 (fixed32): a two-byte key.
    let flags = Span {
        flags: 0x301,
        ..Span::default()
    };
    assert_wire(&flags, &[0x85, 0x01, 0x01, 0x03, 0x00, 0x00]);
    // parent_span_id = 4, attributes = 9: KeyValue { key = 1, value = 2 { string_value = 1 } }.
    let attributes = Span {
        parent_span_id: vec![0xcc],
        attributes: vec![KeyValue {
            key: "k".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".into())),
            }),
        }],
        ..Span::default()
    };
    assert_wire(
        &attributes,
        &[
            0x22, 0x01, 0xcc, // parent_span_id
            0x4a, 0x08, 0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, b'v', // attributes
        ],
    );
}
