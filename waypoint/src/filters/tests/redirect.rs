//! Redirects and direct responses.

use super::*;
use crate::filters::{direct_response, redirect_response};
use crate::route::{DirectResponse, MatchedPath, PathRewrite, Redirect, RedirectPort};

fn redirect() -> Redirect {
    Redirect {
        scheme: None,
        host: None,
        port: RedirectPort::Unchanged,
        path: None,
        status: 301,
    }
}

#[test]
fn builds_the_location() {
    struct Case {
        name: &'static str,
        redirect: Redirect,
        uri: &'static str,
        host: &'static str,
        matched: MatchedPath,
        want: &'static str,
    }
    let base = redirect();
    let cases = [
        Case {
            name: "nothing changes but the answer",
            redirect: base.clone(),
            uri: "/a?q=1",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "http://svc:8080/a?q=1",
        },
        Case {
            name: "host redirect drops the request port (Envoy)",
            redirect: Redirect {
                host: Some("new.example".into()),
                ..base.clone()
            },
            uri: "/a",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "http://new.example/a",
        },
        Case {
            name: "explicit port",
            redirect: Redirect {
                port: RedirectPort::Set(9090),
                ..base.clone()
            },
            uri: "/a",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "http://svc:9090/a",
        },
        Case {
            name: "explicit default port is not written",
            redirect: Redirect {
                host: Some("example.org".into()),
                port: RedirectPort::Set(80),
                ..base.clone()
            },
            uri: "/a",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "http://example.org/a",
        },
        Case {
            name: "scheme https with protocol default port",
            redirect: Redirect {
                scheme: Some("https".into()),
                port: RedirectPort::FromProtocolDefault,
                ..base.clone()
            },
            uri: "/a?x",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "https://svc/a?x",
        },
        Case {
            name: "scheme https with explicit 443",
            redirect: Redirect {
                scheme: Some("https".into()),
                port: RedirectPort::Set(443),
                ..base.clone()
            },
            uri: "/a",
            host: "svc",
            matched: MatchedPath::Whole,
            want: "https://svc/a",
        },
        Case {
            name: "scheme https with explicit 8443",
            redirect: Redirect {
                scheme: Some("https".into()),
                port: RedirectPort::Set(8443),
                ..base.clone()
            },
            uri: "/a",
            host: "svc",
            matched: MatchedPath::Whole,
            want: "https://svc:8443/a",
        },
        Case {
            name: "from request port uses the service port",
            redirect: Redirect {
                host: Some("example.org".into()),
                port: RedirectPort::FromRequestPort,
                ..base.clone()
            },
            uri: "/a",
            host: "svc",
            matched: MatchedPath::Whole,
            want: "http://example.org:8080/a",
        },
        Case {
            name: "scheme change strips the old default port",
            redirect: Redirect {
                scheme: Some("https".into()),
                ..base.clone()
            },
            uri: "/a",
            host: "svc:80",
            matched: MatchedPath::Whole,
            want: "https://svc/a",
        },
        Case {
            name: "scheme change keeps a non-default port",
            redirect: Redirect {
                scheme: Some("https".into()),
                ..base.clone()
            },
            uri: "/a",
            host: "svc:8080",
            matched: MatchedPath::Whole,
            want: "https://svc:8080/a",
        },
        Case {
            name: "full path keeps the query",
            redirect: Redirect {
                path: Some(PathRewrite::Full("/new".into())),
                ..base.clone()
            },
            uri: "/old?a=1",
            host: "svc",
            matched: MatchedPath::Whole,
            want: "http://svc/new?a=1",
        },
        Case {
            name: "full path with its own query",
            redirect: Redirect {
                path: Some(PathRewrite::Full("/new?b=2".into())),
                ..base.clone()
            },
            uri: "/old?a=1",
            host: "svc",
            matched: MatchedPath::Whole,
            want: "http://svc/new?b=2",
        },
        Case {
            name: "segment prefix replace (Gateway API ReplacePrefixMatch)",
            redirect: Redirect {
                path: Some(PathRewrite::SegmentPrefix("/v2".into())),
                ..base.clone()
            },
            uri: "/v1/users?x",
            host: "svc",
            matched: MatchedPath::Prefix(3),
            want: "http://svc/v2/users?x",
        },
        Case {
            name: "IPv6 authority port handling",
            redirect: Redirect {
                port: RedirectPort::Set(81),
                ..base.clone()
            },
            uri: "/a",
            host: "[fd00::1]:8080",
            matched: MatchedPath::Whole,
            want: "http://[fd00::1]:81/a",
        },
    ];
    for case in cases {
        let parts = parts("GET", case.uri, &[("host", case.host)]);
        let response = redirect_response(&case.redirect, case.matched, &parts, 8080);
        assert_eq!(response.status(), 301, "{}", case.name);
        let location = response.headers().get("location").expect(case.name);
        assert_eq!(location, case.want, "{}", case.name);
    }
}

#[test]
fn http2_requests_use_the_uri_scheme_and_authority() {
    let parts = parts("GET", "http://svc.ns:8080/a", &[]);
    let response = redirect_response(&redirect(), MatchedPath::Whole, &parts, 8080);
    assert_eq!(
        response.headers().get("location").expect("location"),
        "http://svc.ns:8080/a"
    );
}

#[test]
fn status_codes() {
    let cases = [
        (301, 301),
        (302, 302),
        (307, 307),
        (308, 308),
        (200, 301),
        (0, 301),
    ];
    for (configured, want) in cases {
        let parts = parts("GET", "/", &[("host", "svc")]);
        let r = Redirect {
            status: configured,
            ..redirect()
        };
        let response = redirect_response(&r, MatchedPath::Whole, &parts, 80);
        assert_eq!(response.status(), want, "status {configured}");
    }
}

#[test]
fn invalid_location_is_a_500() {
    let parts = parts("GET", "/", &[("host", "svc")]);
    let r = Redirect {
        host: Some("bad\nhost".into()),
        ..redirect()
    };
    let response = redirect_response(&r, MatchedPath::Whole, &parts, 80);
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("location").is_none());
}

#[test]
fn direct_responses() {
    let cases = [
        ("with body", 503, Some("down"), Some("text/plain")),
        ("without body", 204, None, None),
        ("empty body", 200, Some(""), None),
    ];
    for (name, status, body, content_type) in cases {
        let d = DirectResponse {
            status,
            body: body.map(|b| b.as_bytes().to_vec()),
        };
        let response = direct_response(&d);
        assert_eq!(response.status(), status, "{name}");
        assert_eq!(
            response.body().as_ref(),
            body.unwrap_or("").as_bytes(),
            "{name}"
        );
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().expect("ascii")),
            content_type,
            "{name}"
        );
    }
}
