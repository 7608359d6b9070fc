//! Route model tests: matching tables, weighted choice, rewrites, compilation.

mod compile;
mod matching;
mod rewrite;
mod weighted;

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::config::ConfigSet;

/// A request for the tables: method, path, authority, headers, port.
pub(super) struct Req {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    headers: HeaderMap,
    port: u16,
}

pub(super) fn req(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        authority: "reviews:9080",
        headers: HeaderMap::new(),
        port: 9080,
    }
}

impl Req {
    pub(super) fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    pub(super) fn authority(mut self, authority: &'static str) -> Self {
        self.authority = authority;
        self
    }

    pub(super) fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub(super) fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    pub(super) fn view(&self) -> RequestView<'_> {
        RequestView {
            method: self.method,
            path: self.path,
            authority: self.authority,
            headers: &self.headers,
            port: self.port,
        }
    }
}

/// Loads inline YAML (errors fail the test) and compiles it for the given services.
pub(super) fn compile_yaml(
    yaml: &str,
    services: &[ServiceTarget],
    options: &CompileOptions,
) -> Compiled {
    let mut config = ConfigSet::default();
    let errors = config.parse_file(Path::new("inline.yaml"), yaml);
    assert!(errors.is_empty(), "config errors: {errors:#?}");
    compile(&config, services, options)
}

pub(super) fn reviews() -> ServiceTarget {
    ServiceTarget::kubernetes("reviews", "default", "cluster.local", [9080])
}

pub(super) const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// The name of the route a request takes, `NR` when none, `default` for the default route.
pub(super) fn route_name(routes: &CompiledRoutes, request: &Req) -> String {
    match select_route(routes, &request.view()) {
        RouteDecision::NoRoute => "NR".to_owned(),
        RouteDecision::Route(m) => m
            .route
            .name
            .clone()
            .unwrap_or_else(|| "<unnamed>".to_owned()),
    }
}
