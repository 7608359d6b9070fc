//! Request normalisation before authorization and routing: the path as Istio configures Envoy,
//! and the method.
//!
//! The normalised path is what AuthorizationPolicy `paths` see, what the route matcher sees and
//! what is forwarded, so a policy cannot be bypassed by spelling a path differently from how
//! the backend will read it. The steps, in Envoy's order:
//!
//! 1. **Percent-decoding of unreserved characters** (RFC 3986 §2.3: `A–Z a–z 0–9 - . _ ~`):
//!    `%61dmin` → `admin`, `%2e%2e` → `..`. Done once (`%2561` stays `%2561`). Other escapes are
//!    kept with upper-case hex digits (`%2f` → `%2F`): an escaped slash or backslash is not a
//!    separator (Envoy's `path_with_escaped_slashes_action` default, `KEEP_UNCHANGED`). An
//!    escape without two hex digits, and `%00`, make the request invalid (400).
//! 2. **Backslashes become slashes** (Istio's `BASE` normalisation).
//! 3. **Dot segments are removed** (RFC 3986 §5.2.4): `/a/./b/../c` → `/a/c`; `..` above the
//!    root stays at the root (`/../a` → `/a`).
//! 4. **Consecutive slashes are merged**: `//admin` → `/admin`.
//!
//! Steps 1–3 are Istio's default (`meshConfig.pathNormalization` `BASE`); step 4 is its
//! `MERGE_SLASHES` option, which Istio recommends against CVE-2021-31920 and which this
//! waypoint always applies: a DENY on `/admin` must cover `//admin`. Bytes that may not appear
//! in a path (controls, space, non-ASCII) are percent-encoded. A path that does not start with
//! `/` (`*`, or empty) is invalid. The query is kept as it is; policies compare the path
//! without it.
//!
//! The method must not contain lower-case letters (Istio rejects such requests with 400):
//! methods are compared case-sensitively, so `get` must not slip past a policy on `GET`.

use std::borrow::Cow;

use http::Uri;
use http::uri::PathAndQuery;

/// Why a path cannot be normalised (the request is answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {0}")]
    InvalidEscape(usize),
    /// `%00`.
    #[error("percent-encoded NUL at byte {0}")]
    EscapedNul(usize),
    /// The normalised path could not form a URI again.
    #[error("normalised path is not a valid URI path: {0}")]
    Uri(String),
}

/// A method with lower-case letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method {0:?} is not upper case")]
pub struct MethodError(pub String);

/// Checks that `method` has no lower-case letters.
pub fn check_method(method: &str) -> Result<(), MethodError> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(MethodError(method.to_owned()));
    }
    Ok(())
}

/// Normalises a path (without its query); borrowed when already normal.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let merged = normalize_steps(path)?;
    if merged == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(merged))
    }
}

/// The URI with its path normalised (`None` when it already is); the query is kept.
pub fn normalize_uri(uri: &Uri) -> Result<Option<Uri>, PathError> {
    let Cow::Owned(path) = normalize_path(uri.path())? else {
        return Ok(None);
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let path_and_query =
        PathAndQuery::try_from(path_and_query).map_err(|e| PathError::Uri(e.to_string()))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|e| PathError::Uri(e.to_string()))
}

/// Steps 1 to 4 in full.
fn normalize_steps(path: &str) -> Result<String, PathError> {
    Ok(merge_slashes(&remove_dot_segments(&decode(path)?)))
}

/// Whether the steps would leave the absolute `path` as it is, decided without building
/// anything: visible ASCII with no `%` or `\` (nothing to decode or escape), no `//` (nothing
/// to merge) and no `.` or `..` segment (nothing to remove). Most requests' paths are, so they
/// are normalised without an allocation.
fn is_normal(path: &str) -> bool {
    path.bytes()
        .all(|b| matches!(b, 0x21..=0x7e) && b != b'%' && b != b'\\')
        && !path.contains("//")
        && path
            .split('/')
            .all(|segment| segment != "." && segment != "..")
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
}

/// Step 1 and 2: one pass of percent-decoding of unreserved characters (other escapes
/// upper-cased), backslashes to slashes, bytes outside visible ASCII escaped.
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let high = bytes.get(i + 1).copied().and_then(hex_value);
                let low = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(PathError::InvalidEscape(i));
                };
                let value = high << 4 | low;
                if value == 0 {
                    return Err(PathError::EscapedNul(i));
                }
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    push_escaped(&mut out, value);
                }
                i += 3;
            }
            b'\\' => {
                out.push('/');
                i += 1;
            }
            0x21..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            _ => {
                push_escaped(&mut out, b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Step 3: RFC 3986 §5.2.4 on an absolute path (empty segments are kept).
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    // Whether the path ends with a directory (`/`, `/.`, `/..`).
    let mut directory = false;
    for segment in path.split('/').skip(1) {
        directory = false;
        match segment {
            "." => directory = true,
            ".." => {
                output.pop();
                directory = true;
            }
            s => output.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &output {
        out.push('/');
        out.push_str(segment);
    }
    if directory || out.is_empty() {
        out.push('/');
    }
    out
}

/// Step 4: runs of `/` become one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_taken_as_normal_are_what_the_steps_make_of_them() {
        let paths = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "/echo",
            "/a-b_c~d.e",
            "/a;b=c/d",
            "/.hidden/..x",
            "/a.",
            "/..a",
            "/a/.b/",
            "/A/Z/0/9",
            "/a:b@c!$&'()*+,",
            "/a//b",
            "//",
            "/a/./b",
            "/a/.",
            "/a/..",
            "/..",
            "/.",
            "/a/../b",
            "/%61",
            "/a%2Fb",
            "/a\\b",
            "/a b",
            "/caf\u{e9}",
            "/a\tb",
            "/a\u{7f}",
        ];
        let mut shortcut = 0;
        for path in paths {
            // The shortcut may leave a path to the full steps (`/a%2Fb` stays as it is); it
            // must never pass one they would change.
            if is_normal(path) {
                shortcut += 1;
                assert_eq!(
                    normalize_steps(path).as_deref(),
                    Ok(path),
                    "{path:?} taken as normal"
                );
            }
            assert_eq!(
                normalize_path(path).map(|p| p.into_owned()),
                normalize_steps(path),
                "{path:?}"
            );
        }
        assert_eq!(shortcut, 13, "the first 13 paths take the shortcut");
    }
}
