//! Path rewrites.

use super::*;
use crate::config::common::SearchRegex;

#[test]
fn istio_prefix_and_full_rewrites() {
    let prefix = |v: &str| PathRewrite::Prefix(v.to_owned());
    let cases = [
        (
            prefix("/v2"),
            "/api/users?id=1",
            MatchedPath::Prefix(4),
            "/v2/users?id=1",
        ),
        (prefix("/"), "/api/users", MatchedPath::Prefix(5), "/users"),
        (prefix("/v2"), "/exact?x", MatchedPath::Whole, "/v2?x"),
        (prefix("/v2/"), "/x", MatchedPath::Prefix(1), "/v2/x"),
        (
            PathRewrite::Full("/new".into()),
            "/old/path?a=1",
            MatchedPath::Prefix(4),
            "/new?a=1",
        ),
        (
            PathRewrite::Full("/new?b=2".into()),
            "/old?a=1",
            MatchedPath::Whole,
            "/new?b=2",
        ),
    ];
    for (rewrite, path, matched, want) in cases {
        assert_eq!(
            rewrite_path(&rewrite, path, matched),
            want,
            "{rewrite:?} on {path}"
        );
    }
}

/// The Gateway API's `ReplacePrefixMatch` table.
#[test]
fn gateway_replace_prefix_match() {
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/foo/bar?q=1", "/foo", "/xyz", "/xyz/bar?q=1"),
        ("/anything", "/", "/xyz", "/xyz/anything"),
    ];
    for (path, prefix, replacement, want) in cases {
        let routes = CompiledRoutes {
            hostname: REVIEWS.into(),
            port: 9080,
            source: RouteSource::Default,
            http: vec![Route {
                name: None,
                origin: RouteOrigin {
                    object: None,
                    rule: 0,
                },
                matches: vec![RequestMatch {
                    path: Some(PathMatch::SegmentPrefix(prefix.into())),
                    ..RequestMatch::default()
                }],
                action: RouteAction::DirectResponse(DirectResponse {
                    status: 200,
                    body: None,
                }),
                filters: Filters::default(),
                timeout: None,
                retry: None,
            }],
            tcp: vec![],
        };
        let request = req(path);
        let matched = select_route(&routes, &request.view())
            .route()
            .expect("matches")
            .path;
        let rewrite = PathRewrite::SegmentPrefix(replacement.into());
        assert_eq!(
            rewrite_path(&rewrite, path, matched),
            want,
            "{path} / {prefix} → {replacement:?}"
        );
    }
}

#[test]
fn regex_rewrite_replaces_every_match() {
    let rewrite = PathRewrite::Regex {
        pattern: SearchRegex::new("^/service/([^/]+)(/.*)$").expect("regex"),
        substitution: "${2}/instance/${1}".into(),
    };
    assert_eq!(
        rewrite_path(&rewrite, "/service/foo/v1/api?x=1", MatchedPath::Whole),
        "/v1/api/instance/foo?x=1"
    );
    let all = PathRewrite::Regex {
        pattern: SearchRegex::new("o").expect("regex"),
        substitution: "0".into(),
    };
    assert_eq!(
        rewrite_path(&all, "/foo/boo", MatchedPath::Whole),
        "/f00/b00"
    );
}
