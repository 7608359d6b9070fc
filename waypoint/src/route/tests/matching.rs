//! Matching tables: every condition kind, alone and combined, and first-match-wins.

use super::*;
use crate::config::common::FullRegex;

fn regex(pattern: &str) -> FullRegex {
    FullRegex::new(pattern).expect("test regex")
}

fn header(name: &'static str, value: ValueMatch, invert: bool) -> HeaderMatch {
    HeaderMatch {
        name: HeaderName::from_static(name),
        value,
        invert,
    }
}

fn query(name: &str, value: ValueMatch) -> QueryParamMatch {
    QueryParamMatch {
        name: name.to_owned(),
        value,
    }
}

fn exact(v: &str) -> ValueMatch {
    ValueMatch::Exact(v.to_owned())
}

/// Routes with one route per match block, named after its index.
fn routes_of(blocks: Vec<Vec<RequestMatch>>) -> CompiledRoutes {
    CompiledRoutes {
        hostname: REVIEWS.to_owned(),
        port: 9080,
        source: RouteSource::Default,
        http: blocks
            .into_iter()
            .enumerate()
            .map(|(i, matches)| Route {
                name: Some(format!("r{i}")),
                origin: RouteOrigin {
                    object: None,
                    rule: i,
                },
                matches,
                action: RouteAction::DirectResponse(DirectResponse {
                    status: 200,
                    body: None,
                }),
                filters: Filters::default(),
                timeout: None,
                retry: None,
            })
            .collect(),
        tcp: Vec::new(),
    }
}

fn matches(block: &RequestMatch, request: &Req) -> bool {
    let routes = routes_of(vec![vec![block.clone()]]);
    select_route(&routes, &request.view()).route().is_some()
}

fn path(p: PathMatch) -> RequestMatch {
    RequestMatch {
        path: Some(p),
        ..RequestMatch::default()
    }
}

#[test]
fn path_conditions() {
    let exact_path = |v: &str, ignore_case| {
        path(PathMatch::Exact {
            value: v.into(),
            ignore_case,
        })
    };
    let prefix = |v: &str, ignore_case| {
        path(PathMatch::Prefix {
            value: v.into(),
            ignore_case,
        })
    };
    let segments = |v: &str| path(PathMatch::SegmentPrefix(v.into()));
    let cases: Vec<(&str, RequestMatch, &str, bool)> = vec![
        ("exact equal", exact_path("/a", false), "/a", true),
        (
            "exact ignores the query",
            exact_path("/a", false),
            "/a?x=1",
            true,
        ),
        (
            "exact trailing slash differs",
            exact_path("/a", false),
            "/a/",
            false,
        ),
        (
            "exact is case-sensitive",
            exact_path("/a", false),
            "/A",
            false,
        ),
        (
            "exact ignoreUriCase",
            exact_path("/a/B", true),
            "/A/b",
            true,
        ),
        ("prefix", prefix("/api", false), "/api/v1", true),
        (
            "prefix is a string prefix",
            prefix("/api", false),
            "/apix",
            true,
        ),
        (
            "prefix longer than path",
            prefix("/api", false),
            "/ap",
            false,
        ),
        (
            "prefix is case-sensitive",
            prefix("/api", false),
            "/API/v1",
            false,
        ),
        (
            "prefix ignoreUriCase",
            prefix("/api", true),
            "/API/v1",
            true,
        ),
        (
            "prefix not in the query",
            prefix("/api?x", false),
            "/api?x=1",
            false,
        ),
        ("segments: equal", segments("/foo"), "/foo", true),
        ("segments: trailing slash", segments("/foo"), "/foo/", true),
        ("segments: child", segments("/foo"), "/foo/bar", true),
        (
            "segments: not a partial segment",
            segments("/foo"),
            "/foobar",
            false,
        ),
        (
            "segments: value trailing slash ignored",
            segments("/foo/"),
            "/foo",
            true,
        ),
        (
            "segments: root matches all",
            segments("/"),
            "/anything",
            true,
        ),
        (
            "segments: query ignored",
            segments("/foo"),
            "/foo?bar",
            true,
        ),
        (
            "regex whole path",
            path(PathMatch::Regex(regex("/api/v[0-9]+"))),
            "/api/v12",
            true,
        ),
        (
            "regex is anchored",
            path(PathMatch::Regex(regex("/api/v[0-9]+"))),
            "/api/v12/x",
            false,
        ),
        (
            "regex ignores the query",
            path(PathMatch::Regex(regex("/a"))),
            "/a?b=c",
            true,
        ),
        ("no path condition", RequestMatch::default(), "/x", true),
    ];
    for (name, block, p, want) in cases {
        assert_eq!(matches(&block, &req(p)), want, "{name}");
    }
}

#[test]
fn method_authority_scheme_and_port() {
    let block = |f: fn(&mut RequestMatch)| {
        let mut m = RequestMatch::default();
        f(&mut m);
        m
    };
    let cases: Vec<(&str, RequestMatch, Req, bool)> = vec![
        (
            "method exact",
            block(|m| m.method = Some(exact("POST"))),
            req("/").method("POST"),
            true,
        ),
        (
            "method case-sensitive",
            block(|m| m.method = Some(exact("POST"))),
            req("/").method("post"),
            false,
        ),
        (
            "method prefix",
            block(|m| m.method = Some(ValueMatch::Prefix("P".into()))),
            req("/").method("PUT"),
            true,
        ),
        (
            "method regex",
            block(|m| m.method = Some(ValueMatch::Regex(regex("GET|HEAD")))),
            req("/").method("HEAD"),
            true,
        ),
        (
            "method regex anchored",
            block(|m| m.method = Some(ValueMatch::Regex(regex("GET")))),
            req("/").method("GETX"),
            false,
        ),
        (
            "authority exact",
            block(|m| m.authority = Some(exact("reviews:9080"))),
            req("/"),
            true,
        ),
        (
            "authority exact differs",
            block(|m| m.authority = Some(exact("reviews"))),
            req("/"),
            false,
        ),
        (
            "authority prefix",
            block(|m| m.authority = Some(ValueMatch::Prefix("reviews".into()))),
            req("/"),
            true,
        ),
        (
            "authority regex",
            block(|m| m.authority = Some(ValueMatch::Regex(regex("reviews(:[0-9]+)?")))),
            req("/").authority("reviews"),
            true,
        ),
        (
            "scheme http",
            block(|m| m.scheme = Some(exact("http"))),
            req("/"),
            true,
        ),
        (
            "scheme https never",
            block(|m| m.scheme = Some(exact("https"))),
            req("/"),
            false,
        ),
        ("port equal", block(|m| m.port = Some(9080)), req("/"), true),
        (
            "port differs",
            block(|m| m.port = Some(9080)),
            req("/").port(9081),
            false,
        ),
    ];
    for (name, block, request, want) in cases {
        assert_eq!(matches(&block, &request), want, "{name}");
    }
}

#[test]
fn header_conditions() {
    let with = |h: HeaderMatch| RequestMatch {
        headers: vec![h],
        ..RequestMatch::default()
    };
    let cases: Vec<(&str, RequestMatch, Req, bool)> = vec![
        (
            "exact",
            with(header("x-user", exact("jason"), false)),
            req("/").header("x-user", "jason"),
            true,
        ),
        (
            "exact differs",
            with(header("x-user", exact("jason"), false)),
            req("/").header("x-user", "json"),
            false,
        ),
        (
            "exact absent",
            with(header("x-user", exact("jason"), false)),
            req("/"),
            false,
        ),
        (
            "exact empty value",
            with(header("x-user", exact(""), false)),
            req("/").header("x-user", ""),
            true,
        ),
        (
            "prefix",
            with(header("x-user", ValueMatch::Prefix("ja".into()), false)),
            req("/").header("x-user", "jason"),
            true,
        ),
        (
            "regex",
            with(header("x-user", ValueMatch::Regex(regex("j.*n")), false)),
            req("/").header("x-user", "jason"),
            true,
        ),
        (
            "regex anchored",
            with(header("x-user", ValueMatch::Regex(regex("j")), false)),
            req("/").header("x-user", "jason"),
            false,
        ),
        (
            "present",
            with(header("x-user", ValueMatch::Present, false)),
            req("/").header("x-user", ""),
            true,
        ),
        (
            "present absent",
            with(header("x-user", ValueMatch::Present, false)),
            req("/"),
            false,
        ),
        (
            "values joined with a comma",
            with(header("x-user", exact("a,b"), false)),
            req("/").header("x-user", "a").header("x-user", "b"),
            true,
        ),
        (
            "without: present → absent",
            with(header("x-debug", ValueMatch::Present, true)),
            req("/"),
            true,
        ),
        (
            "without: present → present fails",
            with(header("x-debug", ValueMatch::Present, true)),
            req("/").header("x-debug", "1"),
            false,
        ),
        (
            "without: exact, absent",
            with(header("x-env", exact("test"), true)),
            req("/"),
            true,
        ),
        (
            "without: exact, other value",
            with(header("x-env", exact("test"), true)),
            req("/").header("x-env", "prod"),
            true,
        ),
        (
            "without: exact, same value",
            with(header("x-env", exact("test"), true)),
            req("/").header("x-env", "test"),
            false,
        ),
    ];
    for (name, block, request, want) in cases {
        assert_eq!(matches(&block, &request), want, "{name}");
    }
}

#[test]
fn query_conditions() {
    let with = |q: QueryParamMatch| RequestMatch {
        query_params: vec![q],
        ..RequestMatch::default()
    };
    let cases: Vec<(&str, RequestMatch, &str, bool)> = vec![
        ("exact", with(query("v", exact("1"))), "/p?v=1", true),
        (
            "exact differs",
            with(query("v", exact("1"))),
            "/p?v=12",
            false,
        ),
        (
            "among others",
            with(query("v", exact("1"))),
            "/p?x=2&v=1",
            true,
        ),
        (
            "first occurrence counts",
            with(query("v", exact("1"))),
            "/p?v=2&v=1",
            false,
        ),
        ("absent", with(query("v", exact("1"))), "/p?w=1", false),
        ("no query", with(query("v", exact("1"))), "/p", false),
        (
            "exact empty for a bare key",
            with(query("debug", exact(""))),
            "/p?debug",
            true,
        ),
        (
            "present bare key",
            with(query("debug", ValueMatch::Present)),
            "/p?debug",
            true,
        ),
        (
            "present empty value",
            with(query("debug", ValueMatch::Present)),
            "/p?debug=",
            true,
        ),
        (
            "present absent",
            with(query("debug", ValueMatch::Present)),
            "/p?other=1",
            false,
        ),
        (
            "percent-decoded value",
            with(query("name", exact("a b"))),
            "/p?name=a%20b",
            true,
        ),
        (
            "percent-decoded name",
            with(query("a b", exact("1"))),
            "/p?a%20b=1",
            true,
        ),
        (
            "plus is not a space",
            with(query("name", exact("a b"))),
            "/p?name=a+b",
            false,
        ),
        (
            "prefix",
            with(query("v", ValueMatch::Prefix("ab".into()))),
            "/p?v=abc",
            true,
        ),
        (
            "regex",
            with(query("id", ValueMatch::Regex(regex(r"\d+")))),
            "/p?id=123",
            true,
        ),
        (
            "regex anchored",
            with(query("id", ValueMatch::Regex(regex(r"\d+")))),
            "/p?id=a123",
            false,
        ),
    ];
    for (name, block, p, want) in cases {
        assert_eq!(matches(&block, &req(p)), want, "{name}");
    }
}

#[test]
fn conditions_of_a_block_are_anded_and_blocks_ored() {
    let both = RequestMatch {
        path: Some(PathMatch::Prefix {
            value: "/api".into(),
            ignore_case: false,
        }),
        headers: vec![header("x-user", exact("jason"), false)],
        method: Some(exact("GET")),
        ..RequestMatch::default()
    };
    assert!(matches(&both, &req("/api/x").header("x-user", "jason")));
    assert!(!matches(&both, &req("/api/x")));
    assert!(!matches(&both, &req("/web").header("x-user", "jason")));
    assert!(!matches(
        &both,
        &req("/api/x").header("x-user", "jason").method("POST")
    ));

    let either = routes_of(vec![vec![
        path(PathMatch::Exact {
            value: "/a".into(),
            ignore_case: false,
        }),
        path(PathMatch::Exact {
            value: "/b".into(),
            ignore_case: false,
        }),
    ]]);
    assert_eq!(route_name(&either, &req("/a")), "r0");
    assert_eq!(route_name(&either, &req("/b")), "r0");
    assert_eq!(route_name(&either, &req("/c")), "NR");
}

#[test]
fn first_match_wins() {
    let routes = routes_of(vec![
        vec![path(PathMatch::Prefix {
            value: "/api/v1".into(),
            ignore_case: false,
        })],
        vec![path(PathMatch::Prefix {
            value: "/api".into(),
            ignore_case: false,
        })],
        vec![],
        vec![path(PathMatch::Exact {
            value: "/api/v1/x".into(),
            ignore_case: false,
        })],
    ]);
    let cases = [
        ("/api/v1/x", "r0"),
        ("/api/v2", "r1"),
        ("/", "r2"),
        ("/other", "r2"),
    ];
    for (p, want) in cases {
        assert_eq!(route_name(&routes, &req(p)), want, "{p}");
    }
    let no_catch_all = routes_of(vec![vec![path(PathMatch::Exact {
        value: "/a".into(),
        ignore_case: false,
    })]]);
    let decision = select_route(&no_catch_all, &req("/b").view());
    assert!(matches!(decision, RouteDecision::NoRoute));
    assert_eq!(decision.error_status(), Some(404));
    assert_eq!(
        decision.response_flag().map(ResponseFlag::as_str),
        Some("NR")
    );
}

#[test]
fn matched_path_drives_prefix_rewrites() {
    let routes = routes_of(vec![
        vec![path(PathMatch::Prefix {
            value: "/API".into(),
            ignore_case: true,
        })],
        vec![path(PathMatch::SegmentPrefix("/web/".into()))],
        vec![path(PathMatch::Exact {
            value: "/exact".into(),
            ignore_case: false,
        })],
        vec![],
    ]);
    let rewrite = |p: &'static str, rewrite: PathRewrite| {
        let request = req(p);
        let decision = select_route(&routes, &request.view());
        let matched = decision.route().expect("a route").path;
        rewrite_path(&rewrite, p, matched)
    };
    assert_eq!(
        rewrite("/api/x?q=1", PathRewrite::Prefix("/v2".into())),
        "/v2/x?q=1"
    );
    assert_eq!(
        rewrite("/web/a/b", PathRewrite::SegmentPrefix("/site".into())),
        "/site/a/b"
    );
    assert_eq!(
        rewrite("/exact?q", PathRewrite::Prefix("/new".into())),
        "/new?q"
    );
    // A route without a path condition matched the prefix `/` (Envoy's default).
    assert_eq!(
        rewrite("/other", PathRewrite::Prefix("/v2/".into())),
        "/v2/other"
    );
}

#[test]
fn resolution_of_actions_and_backends() {
    let backend = |subset: Option<&str>, status: BackendStatus, weight| WeightedBackend {
        backend: Backend {
            host: REVIEWS.into(),
            port: None,
            subset: subset.map(Into::into),
            status,
        },
        weight,
        request_headers: Default::default(),
        response_headers: Default::default(),
    };
    let mut routes = routes_of(vec![vec![]]);
    let resolve = |routes: &CompiledRoutes, random| {
        let request = req("/");
        match select_route(routes, &request.view()) {
            RouteDecision::Route(m) => {
                let resolution = m.resolve(random);
                (
                    match resolution {
                        Resolution::Forward(b) => format!("forward {:?}", b.backend.subset),
                        Resolution::Redirect(_) => "redirect".into(),
                        Resolution::DirectResponse(d) => format!("direct {}", d.status),
                        Resolution::UnknownSubset(b) => {
                            format!("unknown subset {:?}", b.backend.subset)
                        }
                        Resolution::InvalidBackend(_) => "invalid".into(),
                        Resolution::NoBackend => "no backend".into(),
                    },
                    resolution.error_status(),
                    resolution.response_flag().map(ResponseFlag::as_str),
                )
            }
            RouteDecision::NoRoute => ("NR".into(), Some(404), Some("NR")),
        }
    };
    assert_eq!(resolve(&routes, 0), ("direct 200".into(), None, None));

    routes.http[0].action = RouteAction::Forward(vec![
        backend(Some("v1"), BackendStatus::Ok, 50),
        backend(Some("v3"), BackendStatus::UnknownSubset, 50),
    ]);
    assert_eq!(
        resolve(&routes, 0),
        ("forward Some(\"v1\")".into(), None, None)
    );
    assert_eq!(
        resolve(&routes, u32::MAX),
        ("unknown subset Some(\"v3\")".into(), Some(503), Some("UH"))
    );

    routes.http[0].action = RouteAction::Forward(vec![backend(
        None,
        BackendStatus::Invalid("port".into()),
        1,
    )]);
    assert_eq!(resolve(&routes, 7), ("invalid".into(), Some(500), None));

    routes.http[0].action = RouteAction::Forward(vec![backend(None, BackendStatus::Ok, 0)]);
    assert_eq!(resolve(&routes, 7), ("no backend".into(), Some(500), None));
    routes.http[0].action = RouteAction::Forward(vec![]);
    assert_eq!(resolve(&routes, 7), ("no backend".into(), Some(500), None));
}

#[test]
fn tcp_route_selection() {
    let net = |s: &str| s.parse::<ipnet::IpNet>().expect("test net");
    let backend = WeightedBackend {
        backend: Backend::new(REVIEWS, None, None),
        weight: 1,
        request_headers: Default::default(),
        response_headers: Default::default(),
    };
    let tcp = |rule, matches| TcpRoute {
        origin: RouteOrigin { object: None, rule },
        matches,
        backends: vec![backend.clone()],
    };
    let routes = CompiledRoutes {
        tcp: vec![
            tcp(
                0,
                vec![TcpMatch {
                    port: Some(3306),
                    destination_subnets: vec![net("10.0.0.0/8")],
                }],
            ),
            tcp(
                1,
                vec![TcpMatch {
                    port: Some(3306),
                    destination_subnets: vec![],
                }],
            ),
            tcp(2, vec![]),
        ],
        ..routes_of(vec![])
    };
    let pick = |port, ip: Option<&str>| {
        let view = TcpView {
            port,
            destination: ip.map(|ip| ip.parse().expect("test ip")),
        };
        select_tcp_route(&routes, &view).map(|r| r.origin.rule)
    };
    assert_eq!(pick(3306, Some("10.1.2.3")), Some(0));
    assert_eq!(pick(3306, Some("192.168.0.1")), Some(1));
    assert_eq!(pick(3306, None), Some(1));
    assert_eq!(pick(5432, Some("10.1.2.3")), Some(2));
}
