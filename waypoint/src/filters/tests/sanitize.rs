//! Request sanitising.

use super::*;
use crate::filters::{client_cert_details, strip_h2c_upgrade, strip_internal_headers};
use hbone::cert::CertDetails;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    headers
}

/// Request headers as (name, value) pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn names(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    out.sort();
    out
}

#[test]
fn internal_headers_are_removed() {
    // (request headers, removed count, names left)
    let cases: &[(Pairs<'_>, usize, &[&str])] = &[
        (&[("host", "a")], 0, &["host"]),
        (
            &[
                ("x-forwarded-client-cert", "By=spiffe://evil;URI=spiffe://x"),
                ("X-Forwarded-Client-Cert", "Hash=00"),
                ("x-envoy-original-path", "/admin"),
                ("x-envoy-upstream-rq-timeout-ms", "1"),
                ("x-envoyish", "kept"),
                ("envoy-x", "kept"),
                ("host", "a"),
            ],
            4,
            &["envoy-x", "host", "x-envoyish"],
        ),
    ];
    for (input, removed, left) in cases {
        let mut headers = map(input);
        assert_eq!(strip_internal_headers(&mut headers), *removed, "{input:?}");
        assert_eq!(names(&headers), *left, "{input:?}");
    }
}

#[test]
fn h2c_upgrades_are_refused() {
    // (request headers, refused, names left)
    let cases: &[(Pairs<'_>, bool, &[&str])] = &[
        (
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
                ("host", "a"),
            ],
            true,
            &["connection", "host"],
        ),
        (&[("upgrade", "foo, H2C")], true, &[]),
        (
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            false,
            &["connection", "upgrade"],
        ),
        (&[("http2-settings", "x")], false, &["http2-settings"]),
    ];
    for (input, refused, left) in cases {
        let mut headers = map(input);
        assert_eq!(strip_h2c_upgrade(&mut headers), *refused, "{input:?}");
        assert_eq!(names(&headers), *left, "{input:?}");
    }
}

#[test]
fn client_cert_details_name_the_waypoint_and_the_client() {
    let waypoint = hbone::Identity::new("cluster.local", "default", "waypoint").expect("id");
    let client = hbone::Identity::new("cluster.local", "default", "sleep").expect("id");
    assert_eq!(
        client_cert_details(&waypoint, &client, None).expect("value"),
        "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=spiffe://cluster.local/ns/default/sa/sleep"
    );
    // (subject, the Subject element)
    let cases = [
        ("", "Subject=\"\""),
        ("CN=Test Client,O=Lyft", "Subject=\"CN=Test Client,O=Lyft\""),
        // RFC 2253 escapes quotes already; a bare one is escaped too.
        ("CN=a\\\"b", "Subject=\"CN=a\\\"b\""),
        ("CN=a\"b", "Subject=\"CN=a\\\"b\""),
        ("CN=a\\\\\"", "Subject=\"CN=a\\\\\\\"\""),
    ];
    for (subject, element) in cases {
        let cert = CertDetails {
            hash: "ab".repeat(32),
            subject: subject.to_owned(),
        };
        assert_eq!(
            client_cert_details(&waypoint, &client, Some(&cert)).expect("value"),
            format!(
                "By=spiffe://cluster.local/ns/default/sa/waypoint;Hash={};{element};URI=spiffe://cluster.local/ns/default/sa/sleep",
                "ab".repeat(32)
            ),
            "{subject}"
        );
    }
}
