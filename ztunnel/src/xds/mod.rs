//! The control-plane client: mesh state from istiod over delta ADS.
//!
//! # Where it sits
//!
//! In a cluster this module is the writer of [`crate::state`] (the local config file is the
//! other): istiod pushes `istio.workload.Address` resources (each a workload, keyed by uid, or a
//! service, keyed by `namespace/hostname`) and `istio.security.Authorization` policies (keyed by
//! `namespace/name`) over one `AggregatedDiscoveryService/DeltaAggregatedResources` stream.
//! Each resource is converted with the `TryFrom` impls of [`crate::state`] and [`crate::rbac`]
//! and applied through [`StateHandle::update`](crate::state::StateHandle::update); the listeners
//! only ever see the resulting snapshots. A resource that fails conversion is NACKed by name and
//! changes nothing; the others of its response are applied.
//!
//! The same [`channel`] (TLS to istiod, bearer token) carries the CA client,
//! [`crate::ca_client`].
//!
//! # Use
//! ```no_run
//! # async fn example(state: ztunnel::state::StateHandle) -> Result<(), ztunnel::config::ConfigError> {
//! use ztunnel::config::ProcessEnv;
//! use ztunnel::xds::{AdsClient, XdsConfig};
//!
//! if let Some(config) = XdsConfig::from_env(&ProcessEnv)? {
//!     let config = config.with_prefixed_vars(std::env::vars())?;
//!     let client = AdsClient::new(config, state);
//!     let mut ready = client.readiness();
//!     let shutdown = tokio_util::sync::CancellationToken::new();
//!     tokio::spawn(client.run(shutdown.clone()));
//!     ready.wait().await; // the first full state is in `state`
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`XdsConfig`] from the environment and the xDS node description.
//! - [`channel`]: the TLS + HTTP/2 channel to istiod and the call metadata (shared with the CA
//!   client).
//! - [`client`]: the stream: subscribe, ACK/NACK, reconnect with backoff, readiness.
//! - [`handler`]: applying one response to the state.

pub mod channel;
pub mod client;
pub mod config;
pub mod handler;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use channel::{Channel, ChannelError, ControlPlane, RootCert, TokenSource};
pub use client::{AdsClient, Readiness, XdsStats};
pub use config::{NodeInfo, NodeType, XdsConfig};
pub use handler::ResourceType;

/// Why an xDS stream ended with an error (the client then reconnects).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// istiod could not be reached, or the call could not be authenticated.
    #[error("control plane: {0}")]
    Channel(#[from] ChannelError),
    /// The stream failed with a gRPC status.
    #[error("stream failed: {}: {}", .0.code(), .0.message())]
    Grpc(#[from] tonic::Status),
    /// istiod sent nothing within [`client::FIRST_RESPONSE_TIMEOUT`].
    #[error("no response within {:?}", client::FIRST_RESPONSE_TIMEOUT)]
    FirstResponseTimeout,
    /// The outgoing request stream was closed by the transport.
    #[error("request stream closed")]
    RequestStreamClosed,
}
