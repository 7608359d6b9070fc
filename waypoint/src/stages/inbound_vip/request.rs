//! The per-request phases of the inbound VIP listener (see the parent module for the order).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::activity::Activity;
use super::limits::DownstreamLimits;
use super::log::RequestLog;
use super::upgrade::{self, SpliceEnd};
use super::{Downstream, VipTarget};
use super::{ExternalError, Target, external_target, pick_endpoint, pick_target};
use crate::app::{Core, L7State};
use crate::authn::{self, Denial};
use crate::authz::{HttpAttributes, Reason, RequestAttributes, evaluate};
use crate::body::{BodyOutcome, Observed, Replay};
use crate::cluster::{Cluster, Outcome, PickContext};
use crate::egress::{self, Upstream, UpstreamQuery};
use crate::ext_authz::{self, HeaderEdit, Verdict};
use crate::filters::{self, AttemptOutcome, UpgradeAnswer};
use crate::route::{RequestView, Resolution, RetryPolicy, select_route};
use crate::stages::connect_originate::{BoxError, ConnSettings, UpstreamBody, UpstreamProtocol};
use crate::telemetry::{HttpStat, ResponseFlag, WorkloadLabels};

/// A response on its way to the client, before observation.
pub(super) type ResponseBody = BoxBody<Bytes, BoxError>;

/// The inbound VIP listener of one tunnel.
pub(super) struct Listener {
    pub(super) core: Arc<Core>,
    pub(super) downstream: Arc<Downstream>,
    vip: VipTarget,
    source_labels: Arc<WorkloadLabels>,
    /// `inbound-vip|<port>|http|<host>`, the stat prefix of the listener's counters.
    pub(super) name: String,
    /// Requests in flight on the connection (the idle timeout runs while there are none).
    activity: Arc<Activity>,
}

impl Listener {
    pub(super) fn new(
        core: Arc<Core>,
        downstream: Arc<Downstream>,
        vip: VipTarget,
        activity: Arc<Activity>,
    ) -> Self {
        let source_labels = Arc::new(WorkloadLabels::source(
            downstream.source.as_deref(),
            Some(&downstream.peer_identity),
        ));
        let name = vip.listener_name("http");
        Self {
            core,
            downstream,
            vip,
            source_labels,
            name,
            activity,
        }
    }

    /// Runs every phase for one request.
    pub(super) async fn handle(&self, request: Request<Incoming>) -> Response<Observed> {
        let in_flight = self.activity.start();
        let (mut parts, body) = request.into_parts();
        // Counted before anything is added: HTTP/1.1 heads over the limit never get here
        // (hyper answers 431), HTTP/2 header lists are counted here.
        let too_many_headers = self
            .core
            .options()
            .downstream
            .too_many_headers(parts.headers.len());
        self.sanitize(&mut parts);
        // Only HTTP/1.1 connections upgrade (hyper hands one over only then).
        let websocket =
            if parts.version == Version::HTTP_11 && parts.extensions.get::<OnUpgrade>().is_some() {
                filters::websocket_upgrade(&parts.headers)
            } else {
                None
            };
        let request_id = filters::ensure_request_id(&mut parts.headers, fastrand::u128(..));
        let trace = self.core.tracer.start(&parts.headers);
        // Normalised before anything reads the request: the access log shows the path that
        // was authorised, routed and forwarded.
        let normalized = if too_many_headers {
            Err(Refused::TooManyHeaders)
        } else {
            normalize(&mut parts).map_err(Refused::Normalization)
        };
        let mut log = RequestLog::start(
            self.core.access_log.is_enabled(),
            &self.downstream,
            &self.source_labels,
            &self.vip,
            &parts,
            (request_id, trace, self.core.tracer.is_exporting()),
        );
        let replay = Replay::new(body);
        let mut response = match normalized {
            Ok(()) => {
                self.phases(&mut parts, websocket.as_ref(), &replay, &mut log)
                    .await
            }
            Err(Refused::Normalization(details)) => {
                log.local_reply(StatusCode::BAD_REQUEST, None, details)
            }
            Err(Refused::TooManyHeaders) => {
                let mut reply = log.local_reply(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    None,
                    "too_many_headers",
                );
                if parts.version < Version::HTTP_2 {
                    reply
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                reply
            }
        };
        if websocket.is_some() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // An upgrade that did not happen (refused upstream, denied, answered locally): the
            // client's connection is not reused, because the bytes after an upgrade request's
            // head are not checked as HTTP any more (see `guard`).
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        log.response_code = response.status().as_u16();
        if log.grpc {
            log.grpc_status = crate::body::grpc_status(response.headers());
        }
        let core = Arc::clone(&self.core);
        let (mut head, body) = response.into_parts();
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // Only a WebSocket the upstream accepted gets here (see `upgrade_answer`): the
            // request is logged when the spliced stream ends.
            let upstream = head.extensions.remove::<OnUpgrade>();
            let downstream = parts.extensions.remove::<OnUpgrade>();
            if let (Some(upstream), Some(downstream)) = (upstream, downstream) {
                let idle = DownstreamLimits::enabled(core.options().downstream.idle_timeout);
                tokio::spawn(async move {
                    let (moved, end) = upgrade::splice(downstream, upstream, idle).await;
                    if end == SpliceEnd::Idle {
                        log.flags.insert(ResponseFlag::StreamIdleTimeout);
                    }
                    let outcome = BodyOutcome {
                        bytes: moved.b_to_a,
                        complete: true,
                        grpc_status: None,
                    };
                    log.finish(&core, outcome, replay.bytes_read() + moved.a_to_b);
                    drop(in_flight);
                });
                return Response::from_parts(head, Observed::new(body, Box::new(|_| {})));
            }
        }
        let observed = Observed::new(
            body,
            Box::new(move |outcome| {
                log.finish(&core, outcome, replay.bytes_read());
                drop(in_flight);
            }),
        );
        Response::from_parts(head, observed)
    }

    /// Removes what the client may not send (internal headers, an `h2c` upgrade) and sets the
    /// waypoint's `x-forwarded-client-cert` (see [`filters::strip_internal_headers`]).
    fn sanitize(&self, parts: &mut Parts) {
        let removed = filters::strip_internal_headers(&mut parts.headers);
        if removed > 0 {
            tracing::debug!(removed, "client-supplied internal headers removed");
        }
        if filters::strip_h2c_upgrade(&mut parts.headers) {
            tracing::debug!("h2c upgrade refused: served as HTTP/1.1");
        }
        if let Some(xfcc) = &self.downstream.client_cert_details {
            parts
                .headers
                .insert(filters::FORWARDED_CLIENT_CERT, xfcc.clone());
        }
    }

    async fn phases(
        &self,
        parts: &mut Parts,
        websocket: Option<&HeaderValue>,
        replay: &Replay,
        log: &mut RequestLog,
    ) -> Response<ResponseBody> {
        let l7 = self.core.l7();
        // 1. Authenticate.
        if let Err(denied) = self.authenticate(&l7, parts, log).await {
            return denied;
        }

        // 2. Authorize.
        let authorizer_edits = match self.authorize(&l7, parts, replay, log).await {
            Ok(edits) => edits,
            Err(denied) => return denied,
        };

        // 3. Route.
        let host = self.vip.service.hostname.as_str();
        let port = self.vip.port;
        let Some(routes) = l7.compiled.routes.get(host, port) else {
            return log.local_reply(
                StatusCode::NOT_FOUND,
                Some(ResponseFlag::NoRouteFound),
                "route_not_found",
            );
        };
        let view = RequestView {
            method: parts.method.as_str(),
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority: filters::request_authority(parts).unwrap_or_default(),
            headers: &parts.headers,
            port,
        };
        let decision = select_route(routes, &view);
        let Some(matched) = decision.route().copied() else {
            return log.local_reply(
                StatusCode::NOT_FOUND,
                Some(ResponseFlag::NoRouteFound),
                "route_not_found",
            );
        };
        let route = matched.route;
        log.route_name = route.name.clone();
        let route_filters = &route.filters;
        if let Some(cors) = &route_filters.cors
            && let Some(preflight) = filters::cors_preflight(cors, parts)
        {
            log.details = "cors_response".into();
            return preflight.map(|()| empty());
        }
        let backend = match matched.resolve(fastrand::u32(..)) {
            Resolution::Forward(backend) => backend,
            Resolution::Redirect(redirect) => {
                log.details = "direct_response".into();
                return filters::redirect_response(redirect, matched.path, parts, port)
                    .map(|()| empty());
            }
            Resolution::DirectResponse(direct) => {
                log.details = "direct_response".into();
                return filters::direct_response(direct).map(full);
            }
            Resolution::UnknownSubset(_) => {
                return log.local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ResponseFlag::NoHealthyUpstream),
                    "no_healthy_upstream",
                );
            }
            Resolution::InvalidBackend(_) | Resolution::NoBackend => {
                return log.local_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(ResponseFlag::NoClusterFound),
                    "cluster_not_found",
                );
            }
        };

        // 4. Filters.
        if let Some(fault) = &route_filters.fault {
            let decision =
                filters::decide_fault(fault, fastrand::f64() * 100.0, fastrand::f64() * 100.0);
            if let Some(delay) = decision.delay {
                log.flags.insert(ResponseFlag::DelayInjected);
                tokio::time::sleep(delay).await;
            }
            if let Some(abort) = decision.abort {
                log.flags.insert(ResponseFlag::FaultInjected);
                log.details = "fault_filter_abort".into();
                return filters::abort_response(&abort, log.grpc).map(full);
            }
        }
        filters::apply_header_ops(&route_filters.request_headers, &mut parts.headers);
        filters::apply_header_ops(&backend.request_headers, &mut parts.headers);
        if let Some(rewrite) = &route_filters.rewrite
            && let Err(e) = filters::apply_rewrite(rewrite, matched.path, parts)
        {
            tracing::debug!(error = %e, "rewrite produced an invalid request");
            return log.local_reply(StatusCode::BAD_REQUEST, None, "rewrite_failed");
        }
        filters::strip_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = websocket {
            filters::restore_upgrade(&mut parts.headers, upgrade.clone());
        }
        // The upstream continues the trace from the waypoint's span.
        log.trace.inject(&mut parts.headers);

        // 5. Select backend: the inbound VIP cluster of a mesh service or a ServiceEntry,
        //    PassthroughCluster or BlackHoleCluster.
        let backend_port = backend.backend.port.unwrap_or(port);
        let authority = filters::request_authority(parts).map(egress::authority_host);
        let query = UpstreamQuery {
            service_host: host,
            backend_host: &backend.backend.host,
            backend_port,
            authority: authority.as_deref(),
            original_dst: self.downstream.original_dst,
        };
        let upstream = self.core.select_upstream(&l7, &query);
        let (cluster, target) = match self
            .select_cluster(
                upstream,
                &backend.backend,
                backend_port,
                authority.as_deref(),
                log,
            )
            .await
        {
            Ok(selected) => selected,
            Err(reply) => return reply,
        };
        // The route timeout runs from here: a request waiting in the pending queue is bounded
        // by it too.
        // An upgrade is never retried nor mirrored: its request head goes to one endpoint, on a
        // connection of its own; the route timeout runs until the upstream's answer.
        let retry = route.retry.as_ref().filter(|_| websocket.is_none());
        let (overall, per_try) = filters::effective_timeouts(route.timeout, retry);
        let deadline = overall.map(|t| tokio::time::Instant::now() + t);
        let admit = cluster.admit(upstream_protocol(parts));
        let admitted = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, admit).await.ok(),
            None => Some(admit.await),
        };
        let permit = match admitted {
            Some(Ok(permit)) => permit,
            Some(Err(_)) => {
                return log.local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ResponseFlag::UpstreamOverflow),
                    "upstream_reset_before_response_started{overflow}",
                );
            }
            None => {
                return log.local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    Some(ResponseFlag::UpstreamRequestTimeout),
                    "upstream_response_timeout",
                );
            }
        };
        log.hold(permit);

        for mirror in &route_filters.mirrors {
            if websocket.is_none() && fastrand::f64() * 100.0 < mirror.percent {
                self.shadow(&mirror.backend, backend_port, parts, replay);
            }
        }

        // 6. Send.
        let upstream_start = Instant::now();
        let mut response = match self
            .send_with_retries(
                (&cluster, &target),
                (retry, websocket.is_some()),
                (deadline, per_try),
                parts,
                replay,
                log,
            )
            .await
        {
            Ok(response) => response,
            Err(reply) => return reply,
        };
        log.upstream_service_time = Some(upstream_start.elapsed());
        let answer =
            filters::upgrade_answer(websocket.is_some(), response.status(), response.headers());
        if answer == UpgradeAnswer::ProtocolError {
            return log.local_reply(
                StatusCode::BAD_GATEWAY,
                Some(ResponseFlag::UpstreamProtocolError),
                "upstream_reset_before_response_started{protocol_error}",
            );
        }

        // 7. Respond.
        filters::apply_header_ops(&backend.response_headers, response.headers_mut());
        filters::apply_header_ops(&route_filters.response_headers, response.headers_mut());
        if let Some(cors) = &route_filters.cors {
            let origin = parts.headers.get(http::header::ORIGIN).cloned();
            filters::cors_response_headers(cors, origin.as_ref(), response.headers_mut());
        }
        if let Some(cookie) = log.set_cookie.take() {
            response
                .headers_mut()
                .append(http::header::SET_COOKIE, cookie);
        }
        ext_authz::apply_edits(&authorizer_edits, response.headers_mut());
        let switched = response.headers().get(http::header::UPGRADE).cloned();
        filters::strip_hop_by_hop(response.headers_mut());
        if let (UpgradeAnswer::Switch, Some(upgrade)) = (answer, switched) {
            filters::restore_upgrade(response.headers_mut(), upgrade);
        }
        log.details = "via_upstream".into();
        response.map(BodyExt::boxed)
    }

    /// The authenticate phase: the service's RequestAuthentication rules. A verified principal
    /// is attached to the request's extensions ([`authn::Authenticated`]) for the later
    /// phases; a denial is the reply.
    async fn authenticate(
        &self,
        l7: &L7State,
        parts: &mut Parts,
        log: &mut RequestLog,
    ) -> Result<(), Response<ResponseBody>> {
        let providers = l7.authn.providers(&self.vip.service.hostname);
        if providers.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let uri = parts.uri.clone();
        match authn::authenticate(&providers, parts, now).await {
            Ok(Some(authenticated)) => {
                tracing::debug!(principal = %authenticated.principal, "request authenticated");
                if parts.uri != uri {
                    log.set_path(&parts.uri);
                }
                parts.extensions.insert(authenticated);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(status) => {
                let scheme = parts
                    .headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("http");
                let authority = filters::request_authority(parts).unwrap_or_default();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let denial = Denial::new(status, scheme, authority, path);
                tracing::debug!(
                    reason = denial.body,
                    "request denied by RequestAuthentication"
                );
                log.details = std::borrow::Cow::Borrowed(denial.details);
                let mut response = local_body(denial.status, denial.body, log.grpc);
                if let Some(value) = denial.www_authenticate {
                    response
                        .headers_mut()
                        .insert(http::header::WWW_AUTHENTICATE, value);
                }
                Err(response)
            }
        }
    }

    /// The authorize phase: evaluates the AuthorizationPolicies of the service, asking a
    /// matching CUSTOM policy's external authorizer first. Returns the edits the authorizer
    /// asked for on the client's response, or the reply when the request is denied; counts
    /// the outcome and logs AUDIT matches.
    async fn authorize(
        &self,
        l7: &L7State,
        parts: &mut Parts,
        replay: &Replay,
        log: &mut RequestLog,
    ) -> Result<Vec<HeaderEdit>, Response<ResponseBody>> {
        let policies = l7.authz.policies(&self.vip.service.hostname);
        if policies.is_empty() {
            return Ok(Vec::new());
        }
        let source_ip = self.downstream.client_addr().ip();
        let attributes = RequestAttributes {
            source_identity: Some(&self.downstream.peer_identity),
            source_ip,
            remote_ip: forwarded_client(&parts.headers).unwrap_or(source_ip),
            destination: self.downstream.original_dst,
            sni: None,
            http: Some(HttpAttributes {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                host: filters::request_authority(parts).unwrap_or_default(),
                headers: &parts.headers,
                request_principal: parts.extensions.get::<authn::Authenticated>(),
            }),
        };
        let decision = evaluate(policies, &attributes);
        let metrics = &self.core.metrics;
        for audited in &decision.audited {
            metrics.count_http(HttpStat::RbacLogged, &self.name);
            tracing::info!(
                target: "authz",
                listener = %self.name,
                policy = %audited,
                method = %parts.method,
                path = parts.uri.path(),
                peer = %self.downstream.peer_identity,
                request_id = parts.headers.get(&filters::REQUEST_ID).and_then(|v| v.to_str().ok()),
                "request audited"
            );
        }
        // Every matching provider is asked, in policy name order; any denial wins.
        let mut response_edits = Vec::new();
        let mut reason = if decision.custom.is_empty() {
            decision.reason
        } else {
            decision.after_custom
        };
        for custom in &decision.custom {
            let name = custom.policy.provider.as_deref().unwrap_or_default();
            let Some(provider) = l7.providers.get(name) else {
                tracing::info!(
                    target: "authz",
                    listener = %self.name,
                    policy = %custom,
                    provider = name,
                    "request denied: the CUSTOM policy's extension provider is not defined in meshConfig.extensionProviders"
                );
                reason = Reason::Custom(*custom);
                break;
            };
            // Boxed: the external authorizer's call (a gRPC or HTTP client) is most of the
            // state a request could hold, and only CUSTOM policies make it.
            let (verdict, outcome) = Box::pin(self.ext_authz(provider, parts, replay)).await;
            count_ext_authz(metrics, outcome, &self.name);
            match verdict {
                Verdict::Deny {
                    status,
                    headers,
                    body,
                } => {
                    tracing::debug!(
                        target: "authz",
                        listener = %self.name,
                        policy = %custom,
                        provider = name,
                        status = status.as_u16(),
                        peer = %self.downstream.peer_identity,
                        "request denied by the external authorizer"
                    );
                    let details = match outcome {
                        ext_authz::Outcome::BodyTooLarge => {
                            return Err(log.local_reply(
                                status,
                                None,
                                ext_authz::BODY_TOO_LARGE_DETAILS,
                            ));
                        }
                        ext_authz::Outcome::Denied => ext_authz::DENIED_DETAILS,
                        _ => ext_authz::ERROR_DETAILS,
                    };
                    return Err(log.ext_authz_denied(details, status, headers, body));
                }
                Verdict::Allow {
                    upstream,
                    downstream,
                } => {
                    ext_authz::apply_edits(&upstream, &mut parts.headers);
                    response_edits.extend(downstream);
                }
            }
        }
        let Some(details) = reason.response_code_details() else {
            metrics.count_http(HttpStat::RbacAllowed, &self.name);
            return Ok(response_edits);
        };
        metrics.count_http(HttpStat::RbacDenied, &self.name);
        tracing::debug!(
            target: "authz",
            listener = %self.name,
            reason = %reason,
            peer = %self.downstream.peer_identity,
            "request denied"
        );
        Err(log.authz_denied(details))
    }

    /// The cluster a request goes to, and how its endpoints are reached; the reply instead
    /// when there is none (`BlackHoleCluster`, unknown host, unresolvable DNS endpoints, TLS
    /// that cannot be set up).
    async fn select_cluster(
        &self,
        upstream: Upstream<'_>,
        backend: &crate::route::Backend,
        port: u16,
        authority: Option<&str>,
        log: &mut RequestLog,
    ) -> Result<(Arc<Cluster>, Target), Response<ResponseBody>> {
        let endpoints = match upstream {
            Upstream::BlackHole => {
                log.route_name = Some(egress::BLOCK_ALL_ROUTE.to_owned());
                log.upstream_cluster = Some(egress::BLACKHOLE_CLUSTER.to_owned());
                log.set_registry_miss(egress::BLACKHOLE_CLUSTER, authority);
                return Err(log.local_reply(StatusCode::BAD_GATEWAY, None, "direct_response"));
            }
            Upstream::Passthrough(addr) => {
                log.route_name = Some(egress::ALLOW_ANY_ROUTE.to_owned());
                log.upstream_cluster = Some(egress::PASSTHROUGH_CLUSTER.to_owned());
                log.set_registry_miss(egress::PASSTHROUGH_CLUSTER, authority);
                let target = Target::External {
                    fixed: Some(addr),
                    tls: None,
                };
                return Ok((self.core.passthrough_cluster(), target));
            }
            Upstream::Mesh => None,
            Upstream::External { endpoints, .. } => Some(endpoints),
        };
        let Some((cluster, service)) =
            self.core
                .cluster(&backend.host, backend.subset.as_deref(), port, "http")
        else {
            return Err(log.local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(ResponseFlag::NoClusterFound),
                "cluster_not_found",
            ));
        };
        log.upstream_cluster = Some(cluster.name().to_owned());
        if service.is_some() {
            log.destination_service = service;
        }
        let Some(endpoints) = endpoints else {
            return Ok((cluster, Target::Mesh));
        };
        match external_target(&self.core, &cluster, &endpoints, &backend.host).await {
            Ok(target) => Ok((cluster, target)),
            Err(ExternalError::Endpoints(e)) => {
                tracing::debug!(cluster = cluster.name(), error = %e, "no endpoint for an external service");
                Err(log.local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ResponseFlag::NoHealthyUpstream),
                    "no_healthy_upstream",
                ))
            }
            Err(ExternalError::Tls(e)) => {
                log.upstream_transport_failure_reason = Some(format!("TLS_error: {e}"));
                Err(log.local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ResponseFlag::UpstreamConnectionFailure),
                    "upstream_reset_before_response_started{connection_failure}",
                ))
            }
        }
    }

    /// Sends to the cluster, retrying per the route's policy, until the route's deadline.
    async fn send_with_retries(
        &self,
        (cluster, target): (&Arc<Cluster>, &Target),
        (retry, upgrade): (Option<&RetryPolicy>, bool),
        (deadline, per_try): (Option<tokio::time::Instant>, Option<Duration>),
        parts: &Parts,
        replay: &Replay,
        log: &mut RequestLog,
    ) -> Result<Response<UpstreamBody>, Response<ResponseBody>> {
        let attempts = self.attempts(
            (cluster, target),
            (retry, upgrade),
            per_try,
            parts,
            replay,
            log,
        );
        match deadline {
            None => attempts.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, attempts).await {
                Ok(result) => result,
                Err(_) => Err(log.local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    Some(ResponseFlag::UpstreamRequestTimeout),
                    "upstream_response_timeout",
                )),
            },
        }
    }

    /// The attempts of a request; `upgrade`: a WebSocket upgrade, sent on a connection of its
    /// own.
    async fn attempts(
        &self,
        (cluster, target): (&Arc<Cluster>, &Target),
        (policy, upgrade): (Option<&RetryPolicy>, bool),
        per_try: Option<Duration>,
        parts: &Parts,
        replay: &Replay,
        log: &mut RequestLog,
    ) -> Result<Response<UpstreamBody>, Response<ResponseBody>> {
        let protocol = upstream_protocol(parts);
        let settings = ConnSettings::from(cluster.connection_limits());
        let query = parts.uri.query();
        let mut tried: Vec<std::net::SocketAddr> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let exclude: &[std::net::SocketAddr] = match policy {
                Some(p) if p.ignore_previous_hosts => &tried,
                _ => &[],
            };
            let ctx = PickContext {
                headers: &parts.headers,
                source_ip: Some(self.downstream.client_addr().ip()),
                query,
                exclude,
            };
            let host = self.vip.service.hostname.as_str();
            let Some((picked, meta)) =
                pick_target(&self.core, cluster, target, &ctx, &self.downstream, host)
            else {
                return Err(log.local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ResponseFlag::NoHealthyUpstream),
                    "no_healthy_upstream",
                ));
            };
            let address = meta.address;
            log.upstream_host = Some(address);
            if let Some(cookie) = picked.as_ref().and_then(|p| p.set_cookie.clone()) {
                log.set_cookie = Some(cookie);
            }
            log.destination_workload.clone_from(&meta.workload);
            let request = build_request(parts, replay.reader().boxed());
            let originate = self.core.originate();
            let send = async {
                if upgrade {
                    // Boxed: an upgrade opens a connection of its own (see `send_upgrade`).
                    Box::pin(originate.send_upgrade(&meta, settings, request)).await
                } else {
                    originate.send(&meta, protocol, settings, request).await
                }
            };
            let result = match per_try {
                Some(limit) => tokio::time::timeout(limit, send).await.ok(),
                None => Some(send.await),
            };
            let outcome = match &result {
                None => AttemptOutcome::Timeout,
                Some(Ok(response)) => AttemptOutcome::Response(
                    response.status().as_u16(),
                    crate::body::grpc_status(response.headers()),
                ),
                Some(Err(e)) if e.is_connect_failure() => AttemptOutcome::ConnectFailure,
                Some(Err(_)) => AttemptOutcome::Reset,
            };
            cluster.report(address, cluster_outcome(&outcome), Instant::now());
            drop(picked);
            let retry = policy.is_some_and(|p| {
                attempt <= p.attempts && filters::should_retry(p, attempt, &outcome)
            }) && replay.replayable();
            if retry && let Some(_budget) = cluster.try_retry() {
                tried.push(address);
                if let Some(p) = policy {
                    tokio::time::sleep(filters::retry_backoff(p, attempt, fastrand::f64())).await;
                }
                continue;
            }
            let exhausted = retry && attempt > 1;
            if attempt > 1 && (exhausted || policy.is_some_and(|p| attempt > p.attempts)) {
                log.flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
            }
            return match result {
                Some(Ok(response)) => Ok(response),
                None => Err(log.local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    Some(ResponseFlag::UpstreamRequestTimeout),
                    "upstream_per_try_timeout",
                )),
                Some(Err(e)) => {
                    log.upstream_transport_failure_reason = Some(e.to_string());
                    let (flag, details) = if e.is_connect_failure() {
                        (
                            ResponseFlag::UpstreamConnectionFailure,
                            "upstream_reset_before_response_started{connection_failure}",
                        )
                    } else {
                        (
                            ResponseFlag::UpstreamConnectionTermination,
                            "upstream_reset_before_response_started{connection_termination}",
                        )
                    };
                    Err(log.local_reply(StatusCode::SERVICE_UNAVAILABLE, Some(flag), details))
                }
            };
        }
    }

    /// Sends a copy of the request to `backend` and forgets it (Envoy's request mirroring:
    /// the authority gets a `-shadow` suffix; the response is read and dropped).
    fn shadow(
        &self,
        backend: &crate::route::Backend,
        default_port: u16,
        parts: &Parts,
        replay: &Replay,
    ) {
        let port = backend.port.unwrap_or(default_port);
        let Some((cluster, _)) =
            self.core
                .cluster(&backend.host, backend.subset.as_deref(), port, "http")
        else {
            return;
        };
        let ctx = PickContext {
            headers: &parts.headers,
            source_ip: Some(self.downstream.client_addr().ip()),
            query: parts.uri.query(),
            exclude: &[],
        };
        let Some((picked, meta)) =
            pick_endpoint(&self.core, &cluster, &ctx, &self.downstream, &backend.host)
        else {
            return;
        };
        let mut request = build_request(parts, replay.reader().boxed());
        let shadow_authority = shadow_host(filters::request_authority(parts).unwrap_or_default());
        if let Ok(value) = HeaderValue::from_str(&shadow_authority) {
            request.headers_mut().insert(http::header::HOST, value);
        }
        if let Ok(uri) = rebuild_uri(request.uri(), &shadow_authority) {
            *request.uri_mut() = uri;
        }
        let protocol = upstream_protocol(parts);
        let settings = ConnSettings::from(cluster.connection_limits());
        let core = Arc::clone(&self.core);
        tokio::spawn(async move {
            let _picked = picked;
            match core
                .originate()
                .send(&meta, protocol, settings, request)
                .await
            {
                Ok(response) => {
                    let _ = response.into_body().collect().await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, cluster = cluster.name(), "mirror request failed");
                }
            }
        });
    }
}

/// Counts one external authorization check (`envoy_http_ext_authz_*`); a check that failed
/// open counts as an error too, as Envoy's do.
fn count_ext_authz(
    metrics: &crate::telemetry::RequestMetrics,
    outcome: ext_authz::Outcome,
    listener: &str,
) {
    let stat = match outcome {
        ext_authz::Outcome::BodyTooLarge => return,
        ext_authz::Outcome::Ok => HttpStat::ExtAuthzOk,
        ext_authz::Outcome::Denied => HttpStat::ExtAuthzDenied,
        ext_authz::Outcome::Error => HttpStat::ExtAuthzError,
        ext_authz::Outcome::FailureModeAllowed => {
            metrics.count_http(HttpStat::ExtAuthzError, listener);
            HttpStat::ExtAuthzFailureModeAllowed
        }
    };
    metrics.count_http(stat, listener);
}

/// Why a request is answered before its phases run.
enum Refused {
    /// More header fields than `max_headers_count` (431).
    TooManyHeaders,
    /// The request cannot be normalised (400 with these details).
    Normalization(&'static str),
}

/// Normalises the request before any phase reads it: checks the method and normalises the
/// path (see [`crate::authz::normalize_path`]). Returns the `%RESPONSE_CODE_DETAILS%` of the
/// 400 to answer when the request cannot be normalised.
fn normalize(parts: &mut Parts) -> Result<(), &'static str> {
    if let Err(e) = crate::authz::check_method(parts.method.as_str()) {
        tracing::debug!(error = %e, "request refused");
        return Err("invalid_method");
    }
    if parts.method == http::Method::CONNECT {
        // An authority-form target has no path to normalise.
        return Ok(());
    }
    match crate::authz::normalize_uri(&parts.uri) {
        Ok(None) => Ok(()),
        Ok(Some(uri)) => {
            parts.uri = uri;
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, path = parts.uri.path(), "request refused");
            Err("path_normalization_failed")
        }
    }
}

/// The original client address as the request reports it: the last `x-forwarded-for` entry
/// (what the hop in front of the client's ztunnel, e.g. an ingress gateway, appended), as
/// Envoy reads it with no trusted hops. `None` when absent or not an IP address.
fn forwarded_client(headers: &http::HeaderMap) -> Option<std::net::IpAddr> {
    let last = headers
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry.parse().ok()
}

/// Upstream requests use the downstream's HTTP version (gRPC and HTTP/2 stay HTTP/2).
fn upstream_protocol(parts: &Parts) -> UpstreamProtocol {
    match parts.version {
        Version::HTTP_2 => UpstreamProtocol::Http2,
        _ => UpstreamProtocol::Http1,
    }
}

/// The outlier-detection view of an attempt.
fn cluster_outcome(outcome: &AttemptOutcome) -> Outcome {
    match outcome {
        AttemptOutcome::Response(status, _) => Outcome::Status(*status),
        AttemptOutcome::ConnectFailure => Outcome::ConnectFailure,
        AttemptOutcome::Reset | AttemptOutcome::RefusedStream => Outcome::Reset,
        AttemptOutcome::Timeout => Outcome::Timeout,
    }
}

/// `host-shadow[:port]`.
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']')) =>
        {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

fn rebuild_uri(uri: &http::Uri, authority: &str) -> Result<http::Uri, http::Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if uri.authority().is_none() {
        return Ok(http::Uri::try_from(path)?);
    }
    http::Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query(path)
        .build()
}

/// One attempt's request: the (filtered) head and a reader of the shared body.
fn build_request(parts: &Parts, body: ResponseBody) -> Request<ResponseBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A local reply's body: Envoy answers local errors with their details as text.
pub(super) fn local_body(status: StatusCode, details: &str, grpc: bool) -> Response<ResponseBody> {
    if grpc {
        let code = filters::http_to_grpc_status(status.as_u16());
        return filters::grpc_trailers_only(code, details).map(full);
    }
    let mut response = Response::new(full(Bytes::from(details.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_host("reviews.default.svc.cluster.local"),
            "reviews.default.svc.cluster.local-shadow"
        );
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn forwarded_client_is_the_last_x_forwarded_for_entry() {
        let headers = |values: &[&str]| {
            let mut map = http::HeaderMap::new();
            for v in values {
                map.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
            }
            map
        };
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(forwarded_client(&headers(&[])), None);
        assert_eq!(
            forwarded_client(&headers(&["203.0.113.7"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&headers(&["198.51.100.1, 203.0.113.7"])),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client(&headers(&["198.51.100.1", "2001:db8::1 "])),
            ip("2001:db8::1")
        );
        assert_eq!(forwarded_client(&headers(&["198.51.100.1, unknown"])), None);
    }

    #[test]
    fn normalisation_refuses_lower_case_methods_and_bad_paths() {
        let parts = |method: &str, uri: &str| {
            let request = Request::builder()
                .method(http::Method::from_bytes(method.as_bytes()).unwrap())
                .uri(uri)
                .body(())
                .unwrap();
            request.into_parts().0
        };
        let mut p = parts("GET", "/a/../b?q=/../x");
        assert_eq!(normalize(&mut p), Ok(()));
        assert_eq!(p.uri, "/b?q=/../x");
        let mut p = parts("get", "/b");
        assert_eq!(normalize(&mut p), Err("invalid_method"));
        let mut p = parts("GET", "/a%zz");
        assert_eq!(normalize(&mut p), Err("path_normalization_failed"));
        let mut p = parts("CONNECT", "reviews:443");
        assert_eq!(normalize(&mut p), Ok(()));
        assert_eq!(p.uri, "reviews:443");
    }

    #[test]
    fn grpc_codes_of_local_replies() {
        assert_eq!(filters::http_to_grpc_status(503), 14);
        assert_eq!(filters::http_to_grpc_status(404), 12);
        assert_eq!(filters::http_to_grpc_status(504), 14);
        assert_eq!(filters::http_to_grpc_status(500), 2);
    }
}
