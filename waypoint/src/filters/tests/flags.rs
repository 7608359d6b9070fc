//! Response flags.

use crate::filters::{ResponseFlag, ResponseFlags};
use crate::route;

#[test]
fn codes() {
    let cases = [
        (ResponseFlag::NoRouteFound, "NR"),
        (ResponseFlag::NoHealthyUpstream, "UH"),
        (ResponseFlag::UpstreamOverflow, "UO"),
        (ResponseFlag::UpstreamConnectionFailure, "UF"),
        (ResponseFlag::UpstreamRetryLimitExceeded, "URX"),
        (ResponseFlag::UpstreamRequestTimeout, "UT"),
        (ResponseFlag::DelayInjected, "DI"),
        (ResponseFlag::FaultInjected, "FI"),
        (ResponseFlag::DownstreamConnectionTermination, "DC"),
        (ResponseFlag::UpstreamConnectionTermination, "UC"),
        (ResponseFlag::NoClusterFound, "NC"),
        (ResponseFlag::UpstreamRemoteReset, "UR"),
        (ResponseFlag::LocalReset, "LR"),
    ];
    for (flag, code) in cases {
        assert_eq!(flag.as_str(), code);
        assert_eq!(flag.to_string(), code);
    }
    let mut seen = std::collections::HashSet::new();
    assert!(ResponseFlag::ALL.iter().all(|f| seen.insert(f.as_str())));
}

#[test]
fn sets_print_in_envoy_order() {
    let cases: [(&str, &[ResponseFlag], &str); 4] = [
        ("empty", &[], "-"),
        (
            "retry exhausted after connect failures",
            &[
                ResponseFlag::UpstreamRetryLimitExceeded,
                ResponseFlag::UpstreamConnectionFailure,
            ],
            "UF,URX",
        ),
        (
            "fault",
            &[ResponseFlag::FaultInjected, ResponseFlag::DelayInjected],
            "DI,FI",
        ),
        (
            "duplicates collapse",
            &[ResponseFlag::NoRouteFound, ResponseFlag::NoRouteFound],
            "NR",
        ),
    ];
    for (name, flags, want) in cases {
        let set: ResponseFlags = flags.iter().copied().collect();
        assert_eq!(set.to_string(), want, "{name}");
    }
}

#[test]
fn routing_flags_convert() {
    let mut flags = ResponseFlags::NONE;
    flags.insert(route::ResponseFlag::NoHealthyUpstream.into());
    assert!(flags.contains(ResponseFlag::NoHealthyUpstream));
    assert_eq!(
        ResponseFlag::from(route::ResponseFlag::NoRouteFound),
        ResponseFlag::NoRouteFound
    );
}
