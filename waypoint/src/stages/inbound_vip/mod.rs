//! The inbound VIP listener `inbound-vip|<port>|http|<host>` (and `…|tcp|…`): the stage where
//! L7 happens. It serves HTTP/1.1, HTTP/2 and gRPC on the tunnelled stream after detecting the
//! protocol from its first bytes ([`detect`]); anything else is proxied as TCP through the
//! service's TCP routes.
//!
//! Every HTTP request runs the same phases, in this order:
//!
//! 0. **normalise** — a method with lower-case letters is refused (400 `invalid_method`); the
//!    path is normalised as Istio configures Envoy ([`crate::authz::normalize_path`]: unreserved
//!    escapes decoded, `\` → `/`, dot segments removed, slashes merged), or refused (400
//!    `path_normalization_failed`). Every later phase, the access log and the upstream see the
//!    normalised path.
//! 1. **authenticate** — the service's RequestAuthentication rules
//!    ([`authn`](crate::authn), Envoy's `jwt_authn`): a bad token → 401 (403 for a disallowed
//!    audience) with `www-authenticate`, nothing sent upstream; a valid one → token removed
//!    (unless forwarded), output headers set, the [`Authenticated`](crate::authn::Authenticated)
//!    principal attached to the request for the later phases; no token → on, unauthenticated.
//! 2. **authorize** — the AuthorizationPolicies that apply to the service
//!    ([`crate::authz::evaluate`]: invalid policies, CUSTOM, DENY, then ALLOW; AUDIT only
//!    logged), with the authenticated principal for `requestPrincipals` and
//!    `request.auth.*`: a denial is answered 403 `RBAC: access denied` with
//!    `rbac_access_denied_matched_policy[…]` as details, counted in `envoy_http_rbac_denied`,
//!    and nothing is sent upstream.
//! 3. **route** — the service port's [`CompiledRoutes`](crate::route::CompiledRoutes): first
//!    match wins ([`select_route`]); no match → 404 `NR`. A CORS preflight is answered here.
//!    The route's action resolves to a weighted backend, a redirect or a direct response.
//! 4. **filters** — fault injection (delay `DI`, abort `FI`), request header operations (route,
//!    then backend), rewrite, hop-by-hop headers, `x-request-id`.
//! 5. **select backend** — the inbound VIP cluster `inbound-vip|<port>|http[/<subset>]|<host>`:
//!    circuit breaking (503 `UO`), load balancing over healthy, non-ejected endpoints (503 `UH`).
//! 6. **send** — through the inbound pod listener (tunnel metadata) and `connect_originate`,
//!    with the route's per-try timeout and retries (`URX` when they run out) inside the
//!    route's timeout (504 `UT`); mirrors are sent fire-and-forget.
//! 7. **respond** — response header operations, CORS headers, a consistent-hash cookie.
//! 8. **log** — when the response body ends: `istio_requests_total` and friends, the access log.
//!
//! A tunnel detected as TCP is authorized once, on its L4 attributes, before its TCP route
//! (see `tcp`): a denied connection is closed.

pub mod detect;
mod log;
mod request;
mod tcp;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hbone::H2Stream;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWrite as _;

use self::detect::{Detected, Prefixed};
use super::inbound_pod::TunnelMetadata;
use super::{Downstream, PodTarget, VipTarget};
use crate::app::Core;
use crate::cluster::{Cluster, PickContext, Picked};

/// Streams multiplexed on one downstream HTTP/2 connection (Istio's `connect_terminate`
/// value).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Time allowed for a request's headers to arrive on an HTTP/1.1 connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request header block accepted.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// One endpoint of `cluster` for a request of `downstream`, with its tunnel metadata: the
/// endpoint step shared by HTTP attempts, mirrors and TCP. `None` when no endpoint is
/// available, or the state no longer knows the one chosen.
fn pick_endpoint(
    core: &Core,
    cluster: &Cluster,
    ctx: &PickContext<'_>,
    downstream: &Arc<Downstream>,
    host: &str,
) -> Option<(Picked, TunnelMetadata)> {
    let picked = cluster.pick(ctx, Instant::now()).ok()?;
    let workload = core.workload_at(picked.address)?;
    let target = PodTarget {
        workload,
        address: picked.address,
    };
    Some((picked, TunnelMetadata::new(target, downstream, Some(host))))
}

/// Serves one tunnel addressed to `vip`.
pub async fn serve(core: Arc<Core>, stream: H2Stream, downstream: Arc<Downstream>, vip: VipTarget) {
    let timeout = core.options().protocol_detection_timeout;
    let (detected, io) = Prefixed::detect(stream, timeout).await;
    match detected {
        Detected::Closed => {}
        Detected::Tcp => tcp::serve(core, io, downstream, vip).await,
        Detected::Http => serve_http(core, io, downstream, vip).await,
    }
}

/// Serves workload-addressed traffic: straight to the pod's inbound pod listener as TCP.
pub async fn serve_pod(
    core: Arc<Core>,
    stream: H2Stream,
    downstream: Arc<Downstream>,
    meta: TunnelMetadata,
) {
    tcp::serve_direct(core, stream, downstream, meta).await;
}

async fn serve_http(
    core: Arc<Core>,
    io: Prefixed<H2Stream>,
    downstream: Arc<Downstream>,
    vip: VipTarget,
) {
    let listener = Arc::new(request::Listener::new(core, downstream, vip));
    let service = service_fn(move |req| {
        let listener = Arc::clone(&listener);
        async move { Ok::<_, Infallible>(listener.handle(req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES as usize * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(EndOnDrop(io)), service)
        .await
    {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}

/// The tunnel under a downstream HTTP connection. When the connection is done, the tunnel is
/// ended with END_STREAM rather than reset, so the client's ztunnel sees a clean close.
struct EndOnDrop(Prefixed<H2Stream>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        // Ending an HTTP/2 stream queues a frame and never waits, so a no-op waker suffices.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = std::pin::Pin::new(&mut self.0).poll_shutdown(&mut cx);
    }
}

impl tokio::io::AsyncRead for EndOnDrop {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for EndOnDrop {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
