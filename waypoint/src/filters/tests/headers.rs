//! Header edits.

use super::*;
use crate::config::common::{Header, HeaderOps};
use crate::filters::{apply_header_ops, authority_override};

fn header(name: &str, value: &str) -> Header {
    Header {
        name: HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
        value: HeaderValue::from_str(value).expect("valid value"),
    }
}

fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
    HeaderOps {
        set: set.iter().map(|(n, v)| header(n, v)).collect(),
        add: add.iter().map(|(n, v)| header(n, v)).collect(),
        remove: remove
            .iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("valid name"))
            .collect(),
    }
}

#[test]
fn set_add_remove_in_envoy_order() {
    struct Case {
        name: &'static str,
        before: &'static [(&'static str, &'static str)],
        ops: HeaderOps,
        after: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "set replaces every value",
            before: &[("x-a", "1"), ("x-a", "2"), ("x-b", "b")],
            ops: ops(&[("x-a", "new")], &[], &[]),
            after: &["x-a: new", "x-b: b"],
        },
        Case {
            name: "set adds a missing header",
            before: &[],
            ops: ops(&[("x-a", "new")], &[], &[]),
            after: &["x-a: new"],
        },
        Case {
            name: "add appends a field line",
            before: &[("x-a", "1")],
            ops: ops(&[], &[("x-a", "2")], &[]),
            after: &["x-a: 1", "x-a: 2"],
        },
        Case {
            name: "remove deletes every value",
            before: &[("x-a", "1"), ("x-a", "2"), ("x-b", "b")],
            ops: ops(&[], &[], &["x-a"]),
            after: &["x-b: b"],
        },
        Case {
            name: "remove runs before set and add of the same name",
            before: &[("x-a", "old"), ("x-b", "old")],
            ops: ops(&[("x-a", "set")], &[("x-b", "added")], &["x-a", "x-b"]),
            after: &["x-a: set", "x-b: added"],
        },
        Case {
            name: "add runs after set of the same name",
            before: &[("x-a", "old")],
            ops: ops(&[("x-a", "set")], &[("x-a", "added")], &[]),
            after: &["x-a: added", "x-a: set"],
        },
        Case {
            name: "the last set of a name wins",
            before: &[],
            ops: ops(&[("x-a", "first"), ("x-a", "second")], &[], &[]),
            after: &["x-a: second"],
        },
        Case {
            name: "host is never touched",
            before: &[("host", "svc")],
            ops: ops(&[("host", "other")], &[("host", "more")], &["host"]),
            after: &["host: svc"],
        },
        Case {
            name: "no ops is a no-op",
            before: &[("x-a", "1")],
            ops: HeaderOps::default(),
            after: &["x-a: 1"],
        },
    ];
    for case in cases {
        let mut headers = header_map(case.before);
        apply_header_ops(&case.ops, &mut headers);
        assert_eq!(dump(&headers), case.after, "{}", case.name);
    }
}

#[test]
fn host_set_is_an_authority_override() {
    let cases = [
        ("no host", ops(&[("x-a", "1")], &[], &[]), None),
        (
            "host set",
            ops(&[("host", "a.example")], &[], &[]),
            Some("a.example"),
        ),
        (
            "last host set wins",
            ops(&[("host", "a"), ("host", "b")], &[], &[]),
            Some("b"),
        ),
        ("host add is ignored", ops(&[], &[("host", "a")], &[]), None),
    ];
    for (name, ops, want) in cases {
        assert_eq!(
            authority_override(&ops).map(|v| v.to_str().expect("ascii")),
            want,
            "{name}"
        );
    }
}
