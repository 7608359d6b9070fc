//! Path and authority rewrites.

use super::*;
use crate::config::common::SearchRegex;
use crate::filters::{FilterError, ORIGINAL_PATH, apply_rewrite, request_authority};
use crate::route::{MatchedPath, PathRewrite, Rewrite};

fn rewrite(path: Option<PathRewrite>, authority: Option<&str>) -> Rewrite {
    Rewrite {
        path,
        authority: authority.map(str::to_owned),
    }
}

fn prefix(value: &str) -> Option<PathRewrite> {
    Some(PathRewrite::Prefix(value.to_owned()))
}

#[test]
fn rewrites_path_and_authority() {
    struct Case {
        name: &'static str,
        uri: &'static str,
        headers: &'static [(&'static str, &'static str)],
        rewrite: Rewrite,
        matched: MatchedPath,
        want_uri: &'static str,
        want_host: Option<&'static str>,
        want_original: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "prefix rewrite keeps the query and records the original path",
            uri: "/api/users?id=1",
            headers: &[("host", "svc")],
            rewrite: rewrite(prefix("/v2"), None),
            matched: MatchedPath::Prefix(4),
            want_uri: "/v2/users?id=1",
            want_host: Some("svc"),
            want_original: Some("/api/users?id=1"),
        },
        Case {
            name: "full rewrite",
            uri: "/old/path?a=1",
            headers: &[("host", "svc")],
            rewrite: rewrite(Some(PathRewrite::Full("/new".into())), None),
            matched: MatchedPath::Whole,
            want_uri: "/new?a=1",
            want_host: Some("svc"),
            want_original: Some("/old/path?a=1"),
        },
        Case {
            name: "a rewrite without leading slash gets one",
            uri: "/api/users",
            headers: &[("host", "svc")],
            rewrite: rewrite(prefix(""), None),
            matched: MatchedPath::Prefix(5),
            want_uri: "/users",
            want_host: Some("svc"),
            want_original: Some("/api/users"),
        },
        Case {
            name: "regex rewrite",
            uri: "/service/42/info",
            headers: &[("host", "svc")],
            rewrite: rewrite(
                Some(PathRewrite::Regex {
                    pattern: SearchRegex::new("^/service/([^/]+)(/.*)$").expect("regex"),
                    substitution: "${2}/instance/${1}".into(),
                }),
                None,
            ),
            matched: MatchedPath::Whole,
            want_uri: "/info/instance/42",
            want_host: Some("svc"),
            want_original: Some("/service/42/info"),
        },
        Case {
            name: "a client's original-path header is replaced",
            uri: "/a",
            headers: &[("host", "svc"), ("x-envoy-original-path", "/forged")],
            rewrite: rewrite(prefix("/b"), None),
            matched: MatchedPath::Prefix(2),
            want_uri: "/b",
            want_host: Some("svc"),
            want_original: Some("/a"),
        },
        Case {
            name: "HTTP/1.1 authority rewrite replaces Host",
            uri: "/a",
            headers: &[("host", "svc:8080")],
            rewrite: rewrite(None, Some("new.example")),
            matched: MatchedPath::Whole,
            want_uri: "/a",
            want_host: Some("new.example"),
            want_original: None,
        },
        Case {
            name: "HTTP/2 authority rewrite replaces :authority and adds no Host",
            uri: "http://svc:8080/a?q",
            headers: &[],
            rewrite: rewrite(None, Some("new.example:9090")),
            matched: MatchedPath::Whole,
            want_uri: "http://new.example:9090/a?q",
            want_host: None,
            want_original: None,
        },
        Case {
            name: "absolute form with Host: both replaced, with the path",
            uri: "http://svc/api/x",
            headers: &[("host", "svc")],
            rewrite: rewrite(prefix("/"), Some("other")),
            matched: MatchedPath::Prefix(5),
            want_uri: "http://other/x",
            want_host: Some("other"),
            want_original: Some("/api/x"),
        },
        Case {
            name: "origin form without Host gets one",
            uri: "/a",
            headers: &[],
            rewrite: rewrite(None, Some("other")),
            matched: MatchedPath::Whole,
            want_uri: "/a",
            want_host: Some("other"),
            want_original: None,
        },
    ];
    for case in cases {
        let mut parts = parts("GET", case.uri, case.headers);
        apply_rewrite(&case.rewrite, case.matched, &mut parts).expect(case.name);
        assert_eq!(parts.uri.to_string(), case.want_uri, "{}", case.name);
        let host = parts
            .headers
            .get("host")
            .map(|h| h.to_str().expect("ascii"));
        assert_eq!(host, case.want_host, "{}", case.name);
        let original = parts
            .headers
            .get(ORIGINAL_PATH)
            .map(|h| h.to_str().expect("ascii"));
        assert_eq!(original, case.want_original, "{}", case.name);
    }
}

#[test]
fn invalid_results_are_errors_and_leave_the_request_alone() {
    let space = Rewrite {
        path: Some(PathRewrite::Regex {
            pattern: SearchRegex::new("x").expect("regex"),
            substitution: "a b".into(),
        }),
        authority: None,
    };
    let cases = [
        ("path with a space", space, "invalid path"),
        (
            "authority with a space",
            rewrite(prefix("/v2"), Some("bad host")),
            "invalid authority",
        ),
        (
            "authority with a path",
            rewrite(None, Some("host/path")),
            "invalid authority",
        ),
    ];
    for (name, rewrite, kind) in cases {
        let mut parts = parts("GET", "http://svc/x?q", &[("host", "svc")]);
        let err = apply_rewrite(&rewrite, MatchedPath::Whole, &mut parts).expect_err(name);
        let got = match err {
            FilterError::InvalidPath { .. } => "invalid path",
            FilterError::InvalidAuthority(_) => "invalid authority",
            other => panic!("{name}: unexpected {other}"),
        };
        assert_eq!(got, kind, "{name}");
        assert_eq!(parts.uri.to_string(), "http://svc/x?q", "{name}");
        assert_eq!(parts.headers.get("host").expect("host"), "svc", "{name}");
        assert!(parts.headers.get(ORIGINAL_PATH).is_none(), "{name}");
    }
}

#[test]
fn authority_comes_from_uri_then_host() {
    let cases = [
        ("http://a:1/x", &[("host", "b")][..], Some("a:1")),
        ("/x", &[("host", "b")][..], Some("b")),
        ("/x", &[][..], None),
    ];
    for (uri, headers, want) in cases {
        let parts = parts("GET", uri, headers);
        assert_eq!(request_authority(&parts), want, "{uri}");
    }
}
