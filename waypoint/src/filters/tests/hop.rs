//! Hop-by-hop headers.

use super::*;
use crate::filters::strip_hop_by_hop;

#[test]
fn strips_hop_by_hop_headers() {
    let cases: [(&str, Headers, &[&str]); 8] = [
        (
            "the fixed list",
            &[
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "h2c"),
                ("te", "gzip"),
                ("x-keep", "1"),
            ],
            &["x-keep: 1"],
        ),
        (
            "headers nominated by connection",
            &[
                ("connection", "close, X-Foo"),
                ("connection", "x-bar"),
                ("x-foo", "1"),
                ("x-bar", "2"),
                ("x-keep", "3"),
            ],
            &["x-keep: 3"],
        ),
        (
            "te: trailers is kept",
            &[("te", "trailers")],
            &["te: trailers"],
        ),
        (
            "te with trailers among codings is normalized",
            &[("te", "gzip, Trailers;q=0.5")],
            &["te: trailers"],
        ),
        ("te without trailers goes", &[("te", "deflate")], &[]),
        (
            "connection cannot nominate host or te",
            &[
                ("connection", "host, te"),
                ("host", "svc"),
                ("te", "trailers"),
            ],
            &["host: svc", "te: trailers"],
        ),
        (
            "garbage nominations are ignored",
            &[("connection", "bad name, ,x-a"), ("x-a", "1"), ("x-b", "2")],
            &["x-b: 2"],
        ),
        ("nothing to strip", &[("x-a", "1")], &["x-a: 1"]),
    ];
    for (name, before, after) in cases {
        let mut headers = header_map(before);
        strip_hop_by_hop(&mut headers);
        assert_eq!(dump(&headers), after, "{name}");
    }
}
