//! Path rewriting: the semantics of [`PathRewrite`] given how the route matched.

use super::matching::MatchedPath;
use super::model::PathRewrite;

/// Rewrites `path_and_query` (`:path`, with its query) by `rewrite`, given how the route's
/// path condition matched.
///
/// - [`PathRewrite::Full`]: the path becomes the value; the query is kept unless the value
///   has one.
/// - [`PathRewrite::Prefix`]: the matched prefix is replaced (Envoy's `prefix_rewrite`); when
///   the route matched the whole path (exact, regex) the whole path is replaced. A route
///   without a path condition matched the prefix `/`.
/// - [`PathRewrite::SegmentPrefix`]: the matched segments are replaced without doubling or
///   losing the `/` between the new prefix and the rest (Gateway API `ReplacePrefixMatch`:
///   `/foo/bar` with prefix `/foo` → `/xyz/bar` for `/xyz` or `/xyz/`, `/bar` for `""`).
/// - [`PathRewrite::Regex`]: every match in the path is replaced; the query is kept.
pub fn rewrite_path(rewrite: &PathRewrite, path_and_query: &str, matched: MatchedPath) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let with_query = |new_path: String| match query {
        Some(q) if !new_path.contains('?') => format!("{new_path}?{q}"),
        _ => new_path,
    };
    match rewrite {
        PathRewrite::Full(value) => with_query(value.clone()),
        PathRewrite::Prefix(value) => match matched {
            MatchedPath::Prefix(len) if len <= path.len() => {
                with_query(format!("{value}{}", &path[len..]))
            }
            _ => with_query(value.clone()),
        },
        PathRewrite::SegmentPrefix(value) => {
            let rest = match matched {
                MatchedPath::Prefix(len) if len <= path.len() => &path[len..],
                _ => "",
            };
            let mut new_path = String::with_capacity(value.len() + rest.len() + 1);
            new_path.push_str(value.trim_end_matches('/'));
            if !rest.is_empty() && !rest.starts_with('/') {
                new_path.push('/');
            }
            new_path.push_str(rest);
            if !new_path.starts_with('/') {
                new_path.insert(0, '/');
            }
            with_query(new_path)
        }
        PathRewrite::Regex {
            pattern,
            substitution,
        } => with_query(
            pattern
                .regex()
                .replace_all(path, substitution.as_str())
                .into_owned(),
        ),
    }
}
