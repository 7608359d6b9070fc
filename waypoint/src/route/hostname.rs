//! Hostnames as Istio objects write them: short names and wildcards.

/// Resolves a host written in an Istio object of `namespace`.
///
/// A name without a dot is a short name for a Kubernetes service of that namespace:
/// `reviews` → `reviews.<namespace>.svc.<domain>`. Anything else (`reviews.default`,
/// `*.example.com`, `*`) is taken as written (lowercased), as Istio does.
pub fn resolve_host(host: &str, namespace: &str, domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

/// Whether a (resolved) host pattern covers a service hostname: equal, or a wildcard
/// `*.suffix` covering any name that ends with `.suffix` (one or more labels), or `*`.
/// Comparison ignores ASCII case.
pub fn host_matches(pattern: &str, hostname: &str) -> bool {
    specificity(pattern, hostname).is_some()
}

/// How specifically `pattern` covers `hostname`: `None` if it does not; an exact name beats
/// any wildcard, and a longer wildcard suffix beats a shorter one (`*` is the least specific).
pub(crate) fn specificity(pattern: &str, hostname: &str) -> Option<usize> {
    if pattern.eq_ignore_ascii_case(hostname) {
        return Some(usize::MAX);
    }
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix('*')?;
    if !suffix.starts_with('.') || hostname.len() <= suffix.len() {
        return None;
    }
    let tail = &hostname[hostname.len() - suffix.len()..];
    tail.eq_ignore_ascii_case(suffix).then_some(suffix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_in_the_object_namespace() {
        let cases = [
            ("reviews", "default", "reviews.default.svc.cluster.local"),
            ("Reviews", "prod", "reviews.prod.svc.cluster.local"),
            ("reviews.default", "prod", "reviews.default"),
            (
                "reviews.default.svc.cluster.local",
                "prod",
                "reviews.default.svc.cluster.local",
            ),
            ("*.example.com", "prod", "*.example.com"),
            ("*", "prod", "*"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(
                resolve_host(host, ns, "cluster.local"),
                want,
                "{host} in {ns}"
            );
        }
    }

    #[test]
    fn wildcards_match_suffixes() {
        let svc = "reviews.default.svc.cluster.local";
        let cases = [
            (svc, true),
            ("REVIEWS.default.svc.cluster.local", true),
            ("*.default.svc.cluster.local", true),
            ("*.svc.cluster.local", true),
            ("*.cluster.local", true),
            ("*", true),
            ("*.reviews.default.svc.cluster.local", false),
            ("*eviews.default.svc.cluster.local", false),
            ("ratings.default.svc.cluster.local", false),
            ("*.other.svc.cluster.local", false),
        ];
        for (pattern, want) in cases {
            assert_eq!(host_matches(pattern, svc), want, "{pattern}");
        }
        let exact = specificity(svc, svc);
        let narrow = specificity("*.default.svc.cluster.local", svc);
        let wide = specificity("*.cluster.local", svc);
        let any = specificity("*", svc);
        assert!(exact > narrow && narrow > wide && wide > any);
    }
}
