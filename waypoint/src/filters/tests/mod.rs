//! Table tests of the filters, one file per filter family.

use http::{HeaderMap, HeaderName, HeaderValue, Request, request};

mod cors;
mod fault;
mod flags;
mod headers;
mod hop;
mod redirect;
mod request_id;
mod retry;
mod rewrite;
mod sanitize;
mod timeout;
mod upgrade;

/// Header pairs of a test case.
type Headers = &'static [(&'static str, &'static str)];

/// Expected `name: value` lines of a test case.
type Lines = &'static [&'static str];

/// A request head from a method, a URI and headers.
fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("valid test request").into_parts().0
}

/// A header map from pairs (repeated names append).
fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid name"),
            HeaderValue::from_str(value).expect("valid value"),
        );
    }
    map
}

/// The header map as sorted `name: value` lines, values of one name in order.
fn dump(map: &HeaderMap) -> Vec<String> {
    let mut lines: Vec<String> = map
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().expect("ascii")))
        .collect();
    lines.sort();
    lines
}
