//! The admin, metrics and readiness HTTP servers (upstream ports 15000, 15020 and 15021).
//!
//! Each server has the listener shape of the rest of the proxy: `new(addr, …)` binds (so port
//! 0 works and bind errors surface at start-up), `address()` reports the bound address, and
//! `run(shutdown)` serves until the token is cancelled. All three speak HTTP/1.1 through hyper,
//! one task per connection, with bounded request heads and bodies and a request-header read
//! timeout ([`HttpOptions`]), so a slow or hostile client cannot hold resources.
//!
//! # Layout
//! - [`readiness`]: the [`Ready`] gate and [`ReadinessServer`] (`/healthz/ready`).
//! - [`metrics`]: [`MetricsServer`] (`/metrics`, `/stats/prometheus`).
//! - [`server`]: [`AdminServer`] (`/config_dump`, `/logging`, `/quitquitquit`, `/`),
//!   localhost only.
//! - [`config_dump`](mod@config_dump): the JSON dump of state, certificates and configuration.
//! - [`logging`]: the [`LogLevel`] trait behind `/logging` and its reload-handle
//!   implementation.
//! - `serve`: the shared hyper plumbing.

pub mod config_dump;
pub mod logging;
pub mod metrics;
pub mod readiness;
pub mod serve;
pub mod server;

pub use self::config_dump::config_dump;
pub use self::logging::{LogLevel, LogStream, ReloadLogLevel};
pub use self::metrics::MetricsServer;
pub use self::readiness::{ReadinessServer, Ready, ReadyTask};
pub use self::serve::HttpOptions;
pub use self::server::{AdminInputs, AdminServer, WorkloadStateSource};

#[cfg(test)]
mod tests;
