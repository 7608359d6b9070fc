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
//!    and nothing is sent upstream. A request a CUSTOM policy matches is first checked by
//!    the policy's external authorizer (`ext_authz`, [`crate::ext_authz`]): its denial is
//!    the client's reply (`UAEX`, `ext_authz_denied`; `ext_authz_error` with
//!    `statusOnError` when it fails), its approval edits the request's headers and lets the
//!    DENY and ALLOW policies decide; counted in `envoy_http_ext_authz_*`. A provider not
//!    defined in the mesh config denies as an RBAC denial.
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
//! 7. **respond** — response header operations, CORS headers, a consistent-hash cookie, the
//!    headers an external authorizer asked for.
//! 8. **log** — when the response body ends: `istio_requests_total` and friends, the access log.
//!
//! Before phase 0, client-supplied `x-forwarded-client-cert` and `x-envoy-*` headers are removed
//! and the waypoint's own `x-forwarded-client-cert` is set; an `h2c` upgrade is refused (served
//! as HTTP/1.1) — see [`crate::filters::strip_internal_headers`]. The connection itself is
//! bounded by [`limits::DownstreamLimits`] (header size and count, request-header and idle
//! timeouts, HTTP/2 streams and abuse) and guarded against request smuggling ([`guard`]).
//!
//! **WebSocket upgrades** (HTTP/1.1 `connection: upgrade` + `upgrade: websocket`, Envoy's
//! `upgrade_configs: websocket`): the request runs every phase above like any other (a denial,
//! a fault abort or a direct response is the answer and nothing is upgraded); it is sent with
//! its `upgrade`/`connection: upgrade` and `sec-websocket-*` headers on a new upstream HTTP/1.1
//! connection of its own, never retried nor mirrored, the route timeout running until the
//! upstream's answer ([`crate::filters::upgrade_answer`]):
//!
//! - `101` with `upgrade: websocket`: the client gets the 101, then bytes are spliced both ways
//!   until both directions end, half-closes passed on (see `upgrade` for the deadlines that
//!   apply to the stream); the request is logged and counted (`response_code="101"`, bytes
//!   both ways) when the stream ends;
//! - any other answer is passed to the client with `connection: close`: the connection is not
//!   upgraded and not reused (after an upgrade head the request-smuggling guard no longer
//!   reads the connection as HTTP, so a second request on it would go unchecked);
//! - a `101` to a request that did not ask for an upgrade, or naming another protocol: 502,
//!   `UPE`, nothing spliced.
//!
//! Other upgrade tokens are not forwarded: the `upgrade` header is hop-by-hop and removed, and
//! the request is served as plain HTTP/1.1 (`h2c` as above). An HTTP/2 client cannot upgrade:
//! the HTTP/2 server does not offer extended CONNECT (RFC 8441,
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL` is not sent), so a `CONNECT` with `:protocol` is refused
//! by the HTTP/2 codec with a stream reset (`PROTOCOL_ERROR`) and the connection's other
//! streams go on.
//!
//! A tunnel detected as TCP is authorized once, on its L4 attributes, before its TCP route
//! (see `tcp`): a denied connection is closed.

mod activity;
pub mod detect;
mod ext_authz;
pub mod guard;
pub mod limits;
mod log;
mod request;
mod tcp;
mod upgrade;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hbone::H2Stream;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWrite as _;

use self::activity::Activity;
use self::detect::{Detected, Prefixed};
use self::guard::{Guarded, H1Framing, H2Frames, Scanner};
use self::limits::DownstreamLimits;
use super::inbound_pod::TunnelMetadata;
use super::{Downstream, PodTarget, VipTarget};
use crate::app::Core;
use crate::cluster::{Cluster, PickContext, Picked};
use crate::egress::dns::DnsError;
use crate::egress::tls::{TlsOrigination, TlsSetupError};
use crate::egress::{DeclaredProtocol, Endpoints};

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

/// How the attempts of a request, or a TCP connection, reach their endpoint.
enum Target {
    /// A mesh service's endpoint, picked from the cluster: HBONE (TCP to a workload outside
    /// the mesh).
    Mesh,
    /// An endpoint outside the mesh: picked from the cluster, or fixed by the request (`NONE`
    /// resolution, passthrough); plain TCP, or TLS when the cluster originates it.
    External {
        /// The address to send to, when the request fixes it.
        fixed: Option<std::net::SocketAddr>,
        /// The TLS to originate.
        tls: Option<Arc<TlsOrigination>>,
    },
}

/// Why an external service's cluster cannot be reached.
#[derive(Debug, thiserror::Error)]
enum ExternalError {
    /// Its DNS endpoints do not resolve.
    #[error(transparent)]
    Endpoints(#[from] DnsError),
    /// The TLS its DestinationRule originates cannot be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// The target of the external `cluster` (of `host`) with `endpoints`: its endpoints brought up
/// to date (DNS resolved) or the address the request fixes, and the TLS it originates. The
/// step shared by HTTP requests and TCP connections to ServiceEntries.
async fn external_target(
    core: &Core,
    cluster: &Cluster,
    endpoints: &Endpoints,
    host: &str,
) -> Result<Target, ExternalError> {
    let fixed = core.external_endpoints(cluster, endpoints).await?;
    let tls = core.egress_tls(cluster, host)?;
    Ok(Target::External { fixed, tls })
}

/// The endpoint of one attempt (or connection) and its metadata: picked from the cluster
/// unless the target fixes it. `None` when the cluster has no available endpoint.
fn pick_target(
    core: &Core,
    cluster: &Cluster,
    target: &Target,
    ctx: &PickContext<'_>,
    downstream: &Arc<Downstream>,
    host: &str,
) -> Option<(Option<Picked>, TunnelMetadata)> {
    match target {
        Target::Mesh => {
            let (picked, meta) = pick_endpoint(core, cluster, ctx, downstream, host)?;
            Some((Some(picked), meta))
        }
        Target::External {
            fixed: Some(address),
            tls,
        } => Some((
            None,
            TunnelMetadata::external(*address, tls.clone(), downstream),
        )),
        Target::External { fixed: None, tls } => {
            let picked = cluster.pick(ctx, Instant::now()).ok()?;
            let meta = TunnelMetadata::external(picked.address, tls.clone(), downstream);
            Some((Some(picked), meta))
        }
    }
}

/// Serves one tunnel addressed to `vip`.
///
/// A port a ServiceEntry declares opaque (`TCP`, `TLS`, …) is proxied as TCP at once; any other
/// is sniffed for HTTP first.
pub async fn serve(core: Arc<Core>, stream: H2Stream, downstream: Arc<Downstream>, vip: VipTarget) {
    let declared = core
        .l7()
        .externals
        .find(&vip.service.hostname, vip.port)
        .map(|(_, port)| port.protocol);
    if declared == Some(DeclaredProtocol::Tcp) {
        return tcp::serve(core, Prefixed::undetected(stream), downstream, vip).await;
    }
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
    let limits = core.options().downstream;
    let activity = Activity::new();
    let listener = Arc::new(request::Listener::new(
        core,
        downstream,
        vip,
        Arc::clone(&activity),
    ));
    let service = service_fn(move |req| {
        let listener = Arc::clone(&listener);
        // A request's phases hold several kilobytes of state while they wait; boxed, the HTTP
        // server moves a pointer instead of copying that state at every step of its own.
        Box::pin(async move { Ok::<_, Infallible>(listener.handle(req).await) })
    });
    let h2 = detect::starts_h2(io.prefix());
    let scanner = if h2 {
        Scanner::H2(H2Frames::new(
            limits.max_consecutive_inbound_frames_with_empty_payload,
        ))
    } else {
        Scanner::H1(H1Framing::with_max_head(limits.max_request_header_bytes()))
    };
    // HTTP/2 answers are written by a task per request, through the connection's task: the
    // HBONE connection waits for their frames as it does for other tunnels' (see
    // `H2Stream::count_another_writer`). HTTP/1.1 answers are written by this task alone.
    let _writers = h2.then(|| io.get_ref().count_another_writer());
    let header_timeout = DownstreamLimits::enabled(limits.request_headers_timeout);
    let io = Guarded::new(EndOnDrop(io), scanner, header_timeout);
    let builder = http_builder(&limits);
    let mut connection =
        Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    let idle = DownstreamLimits::enabled(limits.idle_timeout);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = activity.idle_expired(idle) => {
            tracing::debug!("downstream HTTP connection idle: closing");
            connection.as_mut().graceful_shutdown();
            // HTTP/2 waits for the client to acknowledge the GOAWAY's PING; a client that does
            // not is closed after the drain time.
            tokio::time::timeout(IDLE_DRAIN_TIMEOUT, connection.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
    drop(connection);
    // A WebSocket spliced off the connection outlives it: the tunnel (and its place under the
    // connection limit) is held until the stream ends.
    activity.drained().await;
}

/// The HTTP server of the inbound VIP listener, with the downstream limits.
fn http_builder(
    limits: &DownstreamLimits,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let header_bytes = limits.max_request_header_bytes();
    let header_list = u32::try_from(header_bytes).unwrap_or(u32::MAX);
    // One spare slot: hyper refuses a head that fills its header slots, and the exact count
    // is checked per request (431 with `connection: close`).
    let max_headers = usize::try_from(limits.max_headers_count)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The request-header deadline is the guard's (it starts at the first byte of a head, not
    // while a kept-alive connection waits for its next request); the idle timeout is ours.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(max_headers)
        .max_buf_size(header_bytes.max(MIN_BUF_SIZE));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams);
    builder
}

/// How long an idle connection gets to close after its GOAWAY (Envoy's `drain_timeout`
/// default).
const IDLE_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// hyper's smallest HTTP/1.1 read buffer.
const MIN_BUF_SIZE: usize = 8192;

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
