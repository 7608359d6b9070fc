//! The metrics server: Prometheus text exposition of the Istio TCP metrics on `/metrics` and
//! `/stats/prometheus` (upstream port 15020 on all interfaces).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;

use super::serve::{Handler, HttpListener, HttpOptions, HttpResponse, is_get, method_not_allowed};
use super::serve::{not_found, response};
use crate::telemetry::Metrics;

/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The paths serving the exposition (Prometheus' default and Istio's).
pub const METRICS_PATHS: [&str; 2] = ["/metrics", "/stats/prometheus"];

/// Renders the metrics.
struct MetricsHandler {
    metrics: Arc<Metrics>,
}

impl Handler for MetricsHandler {
    fn handle(&self, request: Request<Bytes>, _peer: SocketAddr) -> HttpResponse {
        if !METRICS_PATHS.contains(&request.uri().path()) {
            return not_found(request.uri().path());
        }
        if !is_get(request.method()) {
            return method_not_allowed("GET");
        }
        response(StatusCode::OK, PROMETHEUS_TEXT, self.metrics.render())
    }
}

/// The metrics server: `GET /metrics` and `GET /stats/prometheus` answer
/// [`Metrics::render`] as `text/plain; version=0.0.4`.
#[derive(Debug)]
pub struct MetricsServer {
    listener: HttpListener,
    metrics: Arc<Metrics>,
}

impl MetricsServer {
    /// Binds `addr`; every scrape renders `metrics` afresh.
    pub async fn new(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        Ok(Self {
            listener: HttpListener::bind(addr).await?,
            metrics,
        })
    }

    /// Replaces the default [`HttpOptions`].
    pub fn with_options(mut self, options: HttpOptions) -> Self {
        self.listener.options = options;
        self
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let handler = Arc::new(MetricsHandler {
            metrics: self.metrics,
        });
        self.listener.serve("metrics", handler, shutdown).await;
    }
}
