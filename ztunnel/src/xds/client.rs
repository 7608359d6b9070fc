//! The delta ADS stream: subscribe, apply, ACK/NACK, reconnect.
//!
//! One stream at a time. On (re)connect the client sends one request per type (wildcard
//! subscription, the node description, and `initial_resource_versions` = what it already holds),
//! then answers every response with exactly one request echoing its nonce: an ACK, or a NACK whose
//! `error_detail` names each rejected resource. When the stream ends or fails, the client waits
//! (10 ms, doubling up to 15 s; back to 10 ms once a stream delivered a response) and reconnects;
//! meanwhile the state it built keeps serving.
//!
//! Readiness: [`Readiness`] turns true once every subscribed type has had a response applied in
//! full (ACKed), as upstream ztunnel gates `/healthz/ready`; it stays true across reconnects.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use proto::google::rpc::Status;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::XdsError;
use super::config::XdsConfig;
use super::handler::{self, Known, ResourceType};
use crate::state::StateHandle;

/// First reconnect delay, and the delay after a stream that delivered a response.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Largest message accepted from istiod (as upstream: a full push of a large mesh is big).
pub const MAX_MESSAGE_SIZE: usize = 200 * 1024 * 1024;
/// How long istiod may take to send the first response of a stream (it answers a wildcard
/// subscription right away, if only with an empty response); then the client reconnects.
pub const FIRST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests buffered towards istiod (one ACK per response, so this never fills in practice).
const REQUEST_BUFFER: usize = 16;
/// Rejections named in one NACK's `error_detail`; the rest are counted. Keeps the message (which
/// istiod logs) bounded whatever the response held.
pub const MAX_NACK_DETAILS: usize = 20;

/// The delay before the next reconnect after waiting `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// The NACK message: the first [`MAX_NACK_DETAILS`] rejections as `name: reason`, joined by
/// `; `, then how many more there were.
fn nack_message(rejections: &[handler::Rejection]) -> String {
    let mut message = rejections
        .iter()
        .take(MAX_NACK_DETAILS)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if rejections.len() > MAX_NACK_DETAILS {
        message.push_str(&format!(
            "; and {} more rejected resources",
            rejections.len() - MAX_NACK_DETAILS
        ));
    }
    message
}

/// Whether the first full state has been received; cheap to clone.
#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    /// Whether every subscribed type has been received and applied in full.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until ready; `false` if the client stopped before that.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|ready| *ready).await.is_ok()
    }
}

/// Counters of the xDS client (for metrics and `config_dump`).
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Streams opened (the first connection included).
    pub connects: AtomicU64,
    /// Connection attempts or streams that failed.
    pub failures: AtomicU64,
    /// Responses received.
    pub responses: AtomicU64,
    /// Responses NACKed.
    pub nacks: AtomicU64,
    /// Resources rejected (a NACK may reject several).
    pub rejected_resources: AtomicU64,
}

/// The delta ADS client; see the module documentation.
#[derive(Debug)]
pub struct AdsClient {
    config: XdsConfig,
    state: StateHandle,
    known: Known,
    /// Types not yet ACKed once; readiness flips when it empties.
    pending: HashSet<ResourceType>,
    ready: watch::Sender<bool>,
    stats: Arc<XdsStats>,
}

/// How one stream ended.
struct StreamEnd {
    /// Whether at least one response arrived (resets the backoff).
    received: bool,
    /// `Ok` when istiod closed the stream cleanly.
    result: Result<(), XdsError>,
}

impl AdsClient {
    /// Creates a client that writes into `state`; nothing happens until [`AdsClient::run`].
    pub fn new(config: XdsConfig, state: StateHandle) -> Self {
        Self {
            config,
            state,
            known: Known::default(),
            pending: ResourceType::ALL.into_iter().collect(),
            ready: watch::channel(false).0,
            stats: Arc::default(),
        }
    }

    /// The readiness signal ("first full state received").
    pub fn readiness(&self) -> Readiness {
        Readiness(self.ready.subscribe())
    }

    /// The client's counters.
    pub fn stats(&self) -> Arc<XdsStats> {
        self.stats.clone()
    }

    /// Streams from istiod until `shutdown` is cancelled, reconnecting forever.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            let end = tokio::select! {
                _ = shutdown.cancelled() => return,
                end = self.stream() => end,
            };
            if end.received {
                backoff = INITIAL_BACKOFF;
            }
            match &end.result {
                Ok(()) => tracing::info!(retry_in = ?backoff, "xDS stream closed by istiod"),
                Err(error) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, retry_in = ?backoff, "xDS stream failed; keeping the current state");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    /// One stream, from connecting to its end.
    async fn stream(&mut self) -> StreamEnd {
        let mut received = false;
        let result = self.stream_inner(&mut received).await;
        StreamEnd { received, result }
    }

    async fn stream_inner(&mut self, received: &mut bool) -> Result<(), XdsError> {
        let control_plane = &self.config.control_plane;
        let channel = control_plane.connect().await?;
        let mut client =
            AggregatedDiscoveryServiceClient::with_origin(channel, control_plane.address.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE);

        let (requests, rx) = mpsc::channel(REQUEST_BUFFER);
        for request in self.initial_requests() {
            tracing::debug!(
                type_url = request.type_url,
                known = request.initial_resource_versions.len(),
                "subscribing"
            );
            // The buffer holds more than the initial requests and the receiver is alive.
            requests
                .try_send(request)
                .map_err(|_| XdsError::RequestStreamClosed)?;
        }
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        control_plane.authorize(&mut request).await?;

        let mut responses = tokio::time::timeout(
            FIRST_RESPONSE_TIMEOUT,
            client.delta_aggregated_resources(request),
        )
        .await
        .map_err(|_| XdsError::FirstResponseTimeout)??
        .into_inner();
        tracing::info!(address = %control_plane.address, "xDS stream established");

        loop {
            let next = if *received {
                responses.message().await
            } else {
                tokio::time::timeout(FIRST_RESPONSE_TIMEOUT, responses.message())
                    .await
                    .map_err(|_| XdsError::FirstResponseTimeout)?
            };
            let Some(response) = next? else {
                return Ok(());
            };
            *received = true;
            let reply = self.handle(response);
            requests
                .send(reply)
                .await
                .map_err(|_| XdsError::RequestStreamClosed)?;
        }
    }

    /// The first request of each type on a new stream.
    fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        let node = self.config.node.to_proto();
        ResourceType::ALL
            .into_iter()
            .map(|kind| DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: kind.type_url().to_string(),
                initial_resource_versions: self.known.versions(kind),
                ..Default::default()
            })
            .collect()
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let error = match ResourceType::from_type_url(&response.type_url) {
            None => Some(format!("unsupported type {}", response.type_url)),
            Some(kind) => {
                let rejections = handler::apply(&self.state, &mut self.known, kind, &response);
                tracing::debug!(
                    type_url = response.type_url,
                    nonce = response.nonce,
                    resources = response.resources.len(),
                    removed = response.removed_resources.len(),
                    rejected = rejections.len(),
                    "xDS response applied"
                );
                if rejections.is_empty() {
                    self.mark_received(kind);
                    None
                } else {
                    self.stats
                        .rejected_resources
                        .fetch_add(rejections.len() as u64, Ordering::Relaxed);
                    Some(nack_message(&rejections))
                }
            }
        };
        if let Some(message) = &error {
            self.stats.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                type_url = response.type_url,
                nonce = response.nonce,
                error = message,
                "NACK: resources rejected"
            );
        }
        DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            error_detail: error.map(|message| Status {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn mark_received(&mut self, kind: ResourceType) {
        if self.pending.remove(&kind) && self.pending.is_empty() {
            tracing::info!("initial xDS state received");
            self.ready.send_replace(true);
        }
    }
}
