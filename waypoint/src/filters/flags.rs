//! Envoy response flags: the short codes the access log's `%RESPONSE_FLAGS%` prints (`UF,URX`,
//! `DI`, `-`), and that operators grep for. Every phase of the listener sets them; the log phase
//! prints them. One set of types serves both: [`crate::telemetry`]'s.

pub use crate::telemetry::{ResponseFlag, ResponseFlags};

use std::fmt;

use crate::route;

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<route::ResponseFlag> for ResponseFlag {
    fn from(flag: route::ResponseFlag) -> Self {
        match flag {
            route::ResponseFlag::NoRouteFound => Self::NoRouteFound,
            route::ResponseFlag::NoHealthyUpstream => Self::NoHealthyUpstream,
            // A flag added to `route::ResponseFlag` without a mapping here is still a routing
            // failure, which Envoy reports as "no route".
            #[allow(unreachable_patterns)]
            _ => Self::NoRouteFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_flags_map_to_envoy_codes() {
        assert_eq!(
            ResponseFlag::from(route::ResponseFlag::NoRouteFound).as_str(),
            "NR"
        );
        assert_eq!(
            ResponseFlag::from(route::ResponseFlag::NoHealthyUpstream).as_str(),
            "UH"
        );
    }

    #[test]
    fn flags_print_in_envoy_order() {
        let flags: ResponseFlags = [
            ResponseFlag::UpstreamRetryLimitExceeded,
            ResponseFlag::UpstreamConnectionFailure,
        ]
        .into_iter()
        .collect();
        assert_eq!(flags.to_string(), "UF,URX");
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
    }
}
