#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use bytes::Bytes;
use proto::envoy::config::core::v3 as core;
use proto::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use proto::envoy::r#type::v3::HttpStatus;
use proto::google::rpc::Status;

use super::{
    CheckInput, HeaderEdit, Outcome, Verdict, apply_edits, grpc, http as http_check, on_error,
};
use crate::config::mesh::{BodySettings, ExtensionProviders, HttpSettings};

fn settings(yaml_fields: &str) -> HttpSettings {
    let yaml = format!(
        "extensionProviders:\n- name: p\n  envoyExtAuthzHttp: {{service: 127.0.0.1, port: 1{yaml_fields}}}\n"
    );
    let (providers, errors) = ExtensionProviders::parse(&yaml).unwrap();
    assert_eq!(errors, [], "{yaml}");
    providers.get("p").unwrap().http().unwrap().clone()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn name(s: &str) -> HeaderName {
    HeaderName::from_bytes(s.as_bytes()).unwrap()
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

struct Fixture {
    method: Method,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Fixture {
    fn new(method: Method, pairs: &[(&str, &str)]) -> Self {
        Self {
            method,
            headers: headers(pairs),
            body: None,
        }
    }

    fn input(&self) -> CheckInput<'_> {
        CheckInput {
            method: &self.method,
            path: "/api/v1?x=1",
            host: "reviews.default.svc.cluster.local:9080",
            headers: &self.headers,
            version: Version::HTTP_11,
            body: self.body.as_ref(),
            source: (
                "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
                Some("spiffe://cluster.local/ns/default/sa/sleep"),
            ),
            destination: (
                "10.96.0.5:9080".parse().unwrap(),
                "spiffe://cluster.local/ns/default/sa/waypoint",
            ),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }
}

#[test]
fn http_check_request_carries_method_prefixed_path_host_and_selected_headers() {
    let s = settings(
        ", pathPrefix: /check, includeRequestHeadersInCheck: [x-ext-authz, \"x-user-*\", \"*-token\"], includeAdditionalHeadersInCheck: {x-from: waypoint, x-ext-authz: fixed}",
    );
    let mut f = Fixture::new(
        Method::POST,
        &[
            ("x-ext-authz", "allow"),
            ("x-user-id", "u1"),
            ("x-user-id", "u2"),
            ("my-token", "t"),
            ("cookie", "secret"),
            ("content-length", "5"),
            ("host", "elsewhere"),
        ],
    );
    let request = http_check::check_request(&s, &f.input()).unwrap();
    assert_eq!(request.method(), Method::POST);
    assert_eq!(request.uri(), "/check/api/v1?x=1");
    let h = request.headers();
    assert_eq!(h["host"], "reviews.default.svc.cluster.local:9080");
    assert_eq!(h["content-length"], "0");
    // includeAdditionalHeadersInCheck replaces the client's value.
    assert_eq!(h.get_all("x-ext-authz").iter().count(), 1);
    assert_eq!(h["x-ext-authz"], "fixed");
    assert_eq!(h["x-from"], "waypoint");
    let users: Vec<_> = h.get_all("x-user-id").iter().collect();
    assert_eq!(users, ["u1", "u2"]);
    assert_eq!(h["my-token"], "t");
    assert!(h.get("cookie").is_none());
    assert!(request.body().is_empty());

    f.body = Some(Bytes::from_static(b"hello"));
    let request = http_check::check_request(&s, &f.input()).unwrap();
    assert_eq!(request.headers()["content-length"], "5");
    assert_eq!(request.body(), "hello");

    // Without headers to include, only Host, method, path and Content-Length.
    let request = http_check::check_request(&settings(""), &f.input()).unwrap();
    let names: Vec<&str> = request.headers().keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["host", "content-length"]);
    assert_eq!(request.uri(), "/api/v1?x=1");
}

#[test]
fn http_verdicts() {
    let answer = headers(&[
        ("x-authz-user", "alice"),
        ("x-allowed", "yes"),
        ("x-deny-reason", "nope"),
        ("content-length", "4"),
        ("connection", "close"),
        ("content-type", "text/plain"),
    ]);
    let s = settings(
        ", headersToUpstreamOnAllow: [x-authz-user], headersToDownstreamOnAllow: [\"x-allow*\"], headersToDownstreamOnDeny: [\"*-reason\"]",
    );
    let v = http_check::verdict(&s, StatusCode::OK, &answer, Bytes::new());
    assert_eq!(
        v,
        Verdict::Allow {
            upstream: vec![HeaderEdit::Set(name("x-authz-user"), value("alice"))],
            downstream: vec![HeaderEdit::Set(name("x-allowed"), value("yes"))],
        }
    );
    // Any status but 200 denies, with that status and body.
    for status in [
        StatusCode::CREATED,
        StatusCode::FORBIDDEN,
        StatusCode::UNAUTHORIZED,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        let v = http_check::verdict(&s, status, &answer, Bytes::from_static(b"deny"));
        assert_eq!(
            v,
            Verdict::Deny {
                status,
                headers: vec![(name("x-deny-reason"), value("nope"))],
                body: Bytes::from_static(b"deny"),
            },
            "{status}"
        );
    }
    // Without headersToDownstreamOnDeny every header goes to the client, framing excepted;
    // without headersToUpstreamOnAllow nothing is added upstream.
    let v = http_check::verdict(&settings(""), StatusCode::FORBIDDEN, &answer, Bytes::new());
    let Verdict::Deny { headers, .. } = v else {
        panic!("{v:?}")
    };
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["x-authz-user", "x-allowed", "x-deny-reason", "content-type"]
    );
    let v = http_check::verdict(&settings(""), StatusCode::OK, &answer, Bytes::new());
    assert_eq!(
        v,
        Verdict::Allow {
            upstream: vec![],
            downstream: vec![]
        }
    );
}

#[test]
fn grpc_check_request_describes_peers_and_request() {
    use proto::envoy::config::core::v3::address::Address;
    use proto::envoy::config::core::v3::socket_address::PortSpecifier;
    let mut f = Fixture::new(
        Method::GET,
        &[
            ("x-request-id", "rid-1"),
            ("accept", "a"),
            ("accept", "b"),
            ("content-length", "3"),
        ],
    );
    f.body = Some(Bytes::from_static(b"a\xffb"));
    let body = BodySettings {
        max_request_bytes: 10,
        allow_partial_message: false,
        pack_as_bytes: false,
    };
    let request = grpc::check_request(&f.input(), Some(&body));
    let attributes = request.attributes.unwrap();
    let source = attributes.source.unwrap();
    assert_eq!(
        source.principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    let Some(Address::SocketAddress(addr)) = source.address.unwrap().address else {
        panic!("no socket address")
    };
    assert_eq!(addr.address, "10.0.0.1");
    assert_eq!(addr.port_specifier, Some(PortSpecifier::PortValue(40000)));
    let destination = attributes.destination.unwrap();
    assert_eq!(
        destination.principal,
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    let request = attributes.request.unwrap();
    assert_eq!(request.time.unwrap().seconds, 1_700_000_000);
    let http = request.http.unwrap();
    assert_eq!(http.id, "rid-1");
    assert_eq!(http.method, "GET");
    assert_eq!(http.path, "/api/v1?x=1");
    assert_eq!(http.host, "reviews.default.svc.cluster.local:9080");
    assert_eq!(http.scheme, "http");
    assert_eq!(http.protocol, "HTTP/1.1");
    assert_eq!(http.size, 3);
    assert_eq!(http.headers["accept"], "a,b");
    assert_eq!(http.headers[":method"], "GET");
    assert_eq!(http.headers[":path"], "/api/v1?x=1");
    assert_eq!(
        http.headers[":authority"],
        "reviews.default.svc.cluster.local:9080"
    );
    assert_eq!(http.body, "a\u{fffd}b");
    assert!(http.raw_body.is_empty());

    let packed = BodySettings {
        pack_as_bytes: true,
        ..body
    };
    let http = grpc::check_request(&f.input(), Some(&packed))
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
    assert_eq!(http.raw_body, b"a\xffb");
    assert!(http.body.is_empty());
    f.body = None;
    f.headers.remove("content-length");
    let http = grpc::check_request(&f.input(), None)
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
    assert_eq!(http.size, -1);
    assert!(http.body.is_empty());
}

fn option(key: &str, v: &str, append: Option<bool>, action: i32) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.into(),
            value: v.into(),
            raw_value: Vec::new(),
        }),
        append,
        append_action: action,
        keep_empty_value: false,
    }
}

fn status(code: i32) -> Option<Status> {
    Some(Status {
        code,
        ..Default::default()
    })
}

#[test]
fn grpc_verdicts() {
    let ok = CheckResponse {
        status: status(0),
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option("x-user", "alice", None, 0),
                option("x-tag", "t", Some(true), 0),
                option("x-once", "o", None, 1),
                option("x-only", "y", None, 3),
                option("content-length", "9", None, 0),
            ],
            headers_to_remove: vec!["authorization".into(), "host".into()],
            response_headers_to_add: vec![option("x-trace", "t1", Some(false), 0)],
            dynamic_metadata: None,
        })),
        dynamic_metadata: None,
    };
    assert_eq!(
        grpc::verdict(ok),
        Verdict::Allow {
            upstream: vec![
                HeaderEdit::Set(name("x-user"), value("alice")),
                HeaderEdit::Append(name("x-tag"), value("t")),
                HeaderEdit::AddIfAbsent(name("x-once"), value("o")),
                HeaderEdit::OverwriteIfExists(name("x-only"), value("y")),
                HeaderEdit::Remove(name("authorization")),
            ],
            downstream: vec![HeaderEdit::Set(name("x-trace"), value("t1"))],
        }
    );
    // OK without an ok_response, and no status at all: allowed unchanged.
    for response in [
        CheckResponse {
            status: status(0),
            ..Default::default()
        },
        CheckResponse::default(),
    ] {
        assert_eq!(
            grpc::verdict(response),
            Verdict::Allow {
                upstream: vec![],
                downstream: vec![]
            }
        );
    }
    let cases: &[(Option<i32>, StatusCode)] = &[
        (None, StatusCode::FORBIDDEN),
        (Some(401), StatusCode::UNAUTHORIZED),
        (Some(429), StatusCode::TOO_MANY_REQUESTS),
        (Some(0), StatusCode::FORBIDDEN),
        (Some(99), StatusCode::FORBIDDEN),
        (Some(70000), StatusCode::FORBIDDEN),
    ];
    for (code, want) in cases {
        let denied = CheckResponse {
            status: status(7),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: code.map(|code| HttpStatus { code }),
                    headers: vec![option("x-reason", "policy", None, 0)],
                    body: "go away".into(),
                },
            )),
            dynamic_metadata: None,
        };
        assert_eq!(
            grpc::verdict(denied),
            Verdict::Deny {
                status: *want,
                headers: vec![(name("x-reason"), value("policy"))],
                body: Bytes::from_static(b"go away"),
            },
            "{code:?}"
        );
    }
    // Denied without a denied_response: 403, nothing else.
    assert_eq!(
        grpc::verdict(CheckResponse {
            status: status(16),
            ..Default::default()
        }),
        Verdict::Deny {
            status: StatusCode::FORBIDDEN,
            headers: vec![],
            body: Bytes::new()
        }
    );
}

#[test]
fn grpc_framing() {
    let f = Fixture::new(Method::GET, &[]);
    let request = grpc::check_request(&f.input(), None);
    let framed = grpc::frame(&request);
    assert_eq!(framed[0], 0);
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    assert_eq!(len, framed.len() - 5);

    let response = CheckResponse {
        status: status(7),
        ..Default::default()
    };
    let mut body = vec![0, 0, 0, 0, 4];
    body.extend(proto::prost::Message::encode_to_vec(&response));
    assert_eq!(grpc::unframe(Bytes::from(body.clone())).unwrap(), response);
    let bad: &[(&[u8], &str)] = &[
        (&[0, 0, 0], "not a gRPC message"),
        (&[1, 0, 0, 0, 0], "compressed"),
        (&[0, 0, 0, 0, 9, 1], "with 1 bytes after the prefix"),
        (&[0, 0, 0, 0, 2, 0xff, 0xff], "malformed CheckResponse"),
        (&[0, 0, 2, 0, 0], "larger than"),
    ];
    for (bytes, want) in bad {
        let e = grpc::unframe(Bytes::copy_from_slice(bytes)).unwrap_err();
        assert!(e.to_string().contains(want), "{bytes:?}: {e}");
    }
}

#[test]
fn errors_fail_closed_with_status_on_error_or_open() {
    let (providers, _) = ExtensionProviders::parse(
        "extensionProviders:\n- {name: closed, envoyExtAuthzGrpc: {service: 127.0.0.1, port: 1}}\n- {name: custom, envoyExtAuthzHttp: {service: 127.0.0.1, port: 1, statusOnError: \"503\"}}\n- {name: open, envoyExtAuthzHttp: {service: 127.0.0.1, port: 1, failOpen: true, statusOnError: \"503\"}}\n",
    )
    .unwrap();
    let deny = |status| Verdict::Deny {
        status,
        headers: vec![],
        body: Bytes::new(),
    };
    assert_eq!(
        on_error(providers.get("closed").unwrap()),
        (deny(StatusCode::FORBIDDEN), Outcome::Error)
    );
    assert_eq!(
        on_error(providers.get("custom").unwrap()),
        (deny(StatusCode::SERVICE_UNAVAILABLE), Outcome::Error)
    );
    assert_eq!(
        on_error(providers.get("open").unwrap()),
        (
            Verdict::Allow {
                upstream: vec![],
                downstream: vec![]
            },
            Outcome::FailureModeAllowed
        )
    );
}

#[test]
fn header_edits() {
    let mut map = headers(&[("a", "1"), ("a", "2"), ("b", "1"), ("d", "1")]);
    apply_edits(
        &[
            HeaderEdit::Set(name("a"), value("x")),
            HeaderEdit::Append(name("b"), value("2")),
            HeaderEdit::AddIfAbsent(name("b"), value("3")),
            HeaderEdit::AddIfAbsent(name("c"), value("1")),
            HeaderEdit::OverwriteIfExists(name("e"), value("1")),
            HeaderEdit::OverwriteIfExists(name("d"), value("2")),
            HeaderEdit::Remove(name("zz")),
        ],
        &mut map,
    );
    fn all<'m>(map: &'m HeaderMap, n: &str) -> Vec<&'m str> {
        map.get_all(n).iter().map(|v| v.to_str().unwrap()).collect()
    }
    assert_eq!(all(&map, "a"), ["x"]);
    assert_eq!(all(&map, "b"), ["1", "2"]);
    assert_eq!(all(&map, "c"), ["1"]);
    assert_eq!(all(&map, "d"), ["2"]);
    assert!(all(&map, "e").is_empty());
    apply_edits(&[HeaderEdit::Remove(name("a"))], &mut map);
    assert!(all(&map, "a").is_empty());
}
