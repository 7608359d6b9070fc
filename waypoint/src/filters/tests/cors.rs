//! CORS.

use std::time::Duration;

use super::*;
use crate::config::istio::UnmatchedPreflights;
use crate::filters::{cors_preflight, cors_response_headers};
use crate::route::{CorsPolicy, ValueMatch};

fn policy(unmatched: Option<UnmatchedPreflights>) -> CorsPolicy {
    CorsPolicy {
        allow_origins: vec![
            ValueMatch::Exact("https://app.example".into()),
            ValueMatch::Prefix("https://dev.".into()),
        ],
        allow_methods: vec!["GET".into(), "POST".into()],
        allow_headers: vec!["x-a".into(), "x-b".into()],
        expose_headers: vec!["x-c".into()],
        max_age: Some(Duration::from_secs(86400)),
        allow_credentials: Some(true),
        unmatched_preflights: unmatched,
    }
}

#[test]
fn preflights() {
    const ALLOWED: Lines = &[
        "access-control-allow-credentials: true",
        "access-control-allow-headers: x-a,x-b",
        "access-control-allow-methods: GET,POST",
        "access-control-allow-origin: https://app.example",
        "access-control-max-age: 86400",
    ];
    let preflight: Headers = &[
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
    ];
    let foreign: Headers = &[
        ("origin", "https://evil.example"),
        ("access-control-request-method", "GET"),
    ];
    // (name, policy, method, headers, answer headers or none = forwarded)
    let cases: [(&str, CorsPolicy, &str, Headers, Option<Lines>); 9] = [
        (
            "allowed origin",
            policy(None),
            "OPTIONS",
            preflight,
            Some(ALLOWED),
        ),
        (
            "prefix-matched origin",
            policy(None),
            "OPTIONS",
            &[
                ("origin", "https://dev.example"),
                ("access-control-request-method", "GET"),
            ],
            Some(&[
                "access-control-allow-credentials: true",
                "access-control-allow-headers: x-a,x-b",
                "access-control-allow-methods: GET,POST",
                "access-control-allow-origin: https://dev.example",
                "access-control-max-age: 86400",
            ]),
        ),
        ("not OPTIONS", policy(None), "GET", preflight, None),
        (
            "no request method: a plain OPTIONS",
            policy(None),
            "OPTIONS",
            &[("origin", "https://app.example")],
            None,
        ),
        (
            "no origin",
            policy(None),
            "OPTIONS",
            &[("access-control-request-method", "GET")],
            None,
        ),
        (
            "foreign origin, default forwards",
            policy(None),
            "OPTIONS",
            foreign,
            None,
        ),
        (
            "foreign origin, UNSPECIFIED forwards",
            policy(Some(UnmatchedPreflights::Unspecified)),
            "OPTIONS",
            foreign,
            None,
        ),
        (
            "foreign origin, FORWARD",
            policy(Some(UnmatchedPreflights::Forward)),
            "OPTIONS",
            foreign,
            None,
        ),
        (
            "foreign origin, IGNORE answers without CORS headers",
            policy(Some(UnmatchedPreflights::Ignore)),
            "OPTIONS",
            foreign,
            Some(&[]),
        ),
    ];
    for (name, policy, method, headers, want) in cases {
        let parts = parts(method, "/", headers);
        let answer = cors_preflight(&policy, &parts);
        match (answer, want) {
            (None, None) => {}
            (Some(response), Some(want)) => {
                assert_eq!(response.status(), 200, "{name}");
                assert_eq!(dump(response.headers()), want, "{name}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn minimal_policy_preflight() {
    let policy = CorsPolicy {
        allow_origins: vec![ValueMatch::Exact("*".into())],
        allow_methods: vec![],
        allow_headers: vec![],
        expose_headers: vec![],
        max_age: None,
        allow_credentials: Some(false),
        unmatched_preflights: None,
    };
    let parts = parts(
        "OPTIONS",
        "/",
        &[
            ("origin", "https://any.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    let response = cors_preflight(&policy, &parts).expect("answered");
    assert_eq!(
        dump(response.headers()),
        ["access-control-allow-origin: https://any.example"]
    );
}

#[test]
fn actual_request_response_headers() {
    let cases: [(&str, Option<&str>, Headers, &[&str]); 4] = [
        (
            "allowed origin",
            Some("https://app.example"),
            &[("content-type", "text/html")],
            &[
                "access-control-allow-credentials: true",
                "access-control-allow-origin: https://app.example",
                "access-control-expose-headers: x-c",
                "content-type: text/html",
            ],
        ),
        (
            "upstream values are replaced",
            Some("https://app.example"),
            &[("access-control-allow-origin", "*")],
            &[
                "access-control-allow-credentials: true",
                "access-control-allow-origin: https://app.example",
                "access-control-expose-headers: x-c",
            ],
        ),
        (
            "foreign origin",
            Some("https://evil.example"),
            &[("content-type", "text/html")],
            &["content-type: text/html"],
        ),
        ("no origin", None, &[], &[]),
    ];
    for (name, origin, upstream, want) in cases {
        let mut headers = header_map(upstream);
        let origin = origin.map(|o| HeaderValue::from_str(o).expect("valid"));
        cors_response_headers(&policy(None), origin.as_ref(), &mut headers);
        assert_eq!(dump(&headers), want, "{name}");
    }
}
