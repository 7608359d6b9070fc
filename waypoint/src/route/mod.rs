//! The compiled route model: what the `inbound-vip|<port>|http|<host>` listener consults for
//! every request (the *logical* stage), and the destination policies of the
//! `inbound-vip|<port>|http/<subset>|<host>` clusters (the *concrete* stage).
//!
//! [`compile()`] turns a [`ConfigSet`](crate::config::ConfigSet) into a [`RouteTable`]: for each
//! served service hostname and port, an ordered list of [`Route`]s where the first match wins.
//! Everything here is pure: no I/O, no clock, no randomness of its own (weighted choices take
//! the random number as an argument), so every decision is table-testable.
//!
//! Per request, the listener calls [`select_route`] (→ [`RouteDecision::NoRoute`] is a 404 with
//! response flag `NR`), then [`RouteMatch::resolve`] with a random number: forward to a
//! weighted [`Backend`] (service host, subset, port) handed to the concrete stage, answer a
//! redirect or a direct response, or fail with 503 (a subset no DestinationRule defines) or 500
//! (an invalid Gateway API backend, or no backend with weight). The route's [`Filters`],
//! timeout and retry policy travel with the decision.
//!
//! Sources, in precedence order per service port (see [`compile()`]): Gateway API routes with
//! the Service as parent (GAMMA), else VirtualServices whose hosts match the service, else a
//! default route to the service itself.

mod compile;
pub mod concrete;
pub(crate) mod hostname;
mod matching;
mod model;
mod rewrite;
mod weighted;

pub use compile::{CompileOptions, Compiled, ServicePort, ServiceTarget, Warning, compile};
pub use concrete::{ClusterPolicy, DestinationPolicies, HostPolicy, LoadBalancer, cluster_name};
pub use hostname::{host_matches, resolve_host};
pub use matching::{
    MatchedPath, RequestView, Resolution, ResponseFlag, RouteDecision, RouteMatch, TcpView,
    select_route, select_tcp_route,
};
pub(crate) use matching::{percent_decode, query_pairs};
pub use model::*;
pub use rewrite::rewrite_path;
pub use weighted::{Weighted, pick_weighted};

#[cfg(test)]
mod tests;
