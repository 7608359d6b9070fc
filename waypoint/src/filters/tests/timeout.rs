//! Route and per-try timeouts.

use std::time::Duration;

use crate::filters::effective_timeouts;
use crate::route::RetryPolicy;

#[test]
fn per_try_is_capped_by_overall() {
    let s = Duration::from_secs;
    let retry = |per_try: Option<Duration>| RetryPolicy {
        per_try_timeout: per_try,
        ..RetryPolicy::istio_default()
    };
    let cases = [
        ("nothing", None, None, (None, None)),
        ("overall only", Some(s(10)), None, (Some(s(10)), None)),
        (
            "retry without per-try",
            Some(s(10)),
            Some(retry(None)),
            (Some(s(10)), None),
        ),
        (
            "per-try below overall",
            Some(s(10)),
            Some(retry(Some(s(2)))),
            (Some(s(10)), Some(s(2))),
        ),
        (
            "per-try equal to overall is dropped",
            Some(s(10)),
            Some(retry(Some(s(10)))),
            (Some(s(10)), None),
        ),
        (
            "per-try above overall is dropped",
            Some(s(10)),
            Some(retry(Some(s(30)))),
            (Some(s(10)), None),
        ),
        (
            "per-try without overall",
            None,
            Some(retry(Some(s(3)))),
            (None, Some(s(3))),
        ),
        (
            "zero overall is disabled",
            Some(s(0)),
            Some(retry(Some(s(3)))),
            (None, Some(s(3))),
        ),
        (
            "zero per-try is disabled",
            Some(s(10)),
            Some(retry(Some(s(0)))),
            (Some(s(10)), None),
        ),
    ];
    for (name, overall, retry, want) in cases {
        assert_eq!(effective_timeouts(overall, retry.as_ref()), want, "{name}");
    }
}
