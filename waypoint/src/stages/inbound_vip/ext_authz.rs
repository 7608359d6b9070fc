//! The external authorization call of the authorize phase: a request a CUSTOM policy
//! matched is described to the policy's provider (see [`crate::ext_authz`]) before the DENY
//! and ALLOW policies are evaluated.
//!
//! The authorizer is reached like an upstream: a literal IP `service` directly over TCP, a
//! mesh service through its inbound VIP cluster (an endpoint picked from it, over HBONE). The
//! HTTP provider is asked over HTTP/1.1, the gRPC provider over HTTP/2. The whole check —
//! buffering the body when configured, connecting, the answer — runs within the provider's
//! `timeout`; any failure is an error verdict (`statusOnError`, or through with `failOpen`).

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use super::pick_endpoint;
use super::request::Listener;
use crate::body::{REPLAY_LIMIT, Replay};
use crate::cluster::{PickContext, Picked};
use crate::config::mesh::{BodySettings, ExtAuthzProvider, ProviderProtocol};
use crate::ext_authz::{
    CheckError, CheckInput, MAX_RESPONSE_BYTES, Outcome, Verdict, grpc, http as http_check,
    on_error,
};
use crate::stages::connect_originate::{BoxError, ConnSettings, UpstreamProtocol};
use crate::stages::inbound_pod::TunnelMetadata;

/// Most request-body bytes buffered for a check, whatever `maxRequestBytes` says: the body
/// is read through the shared replay record, which must still hold it for the upstream.
pub const MAX_CHECK_BODY_BYTES: usize = REPLAY_LIMIT / 2;

/// The buffered body for the check: `Err` when it is longer than `maxRequestBytes` and
/// partial messages are not allowed (413).
type BufferedBody = Result<Option<Bytes>, ()>;

impl Listener {
    /// Asks `provider` about the request. Never fails: an error becomes the provider's error
    /// verdict.
    pub(super) async fn ext_authz(
        &self,
        provider: &ExtAuthzProvider,
        parts: &Parts,
        replay: &Replay,
    ) -> (Verdict, Outcome) {
        let check = self.check(provider, parts, replay);
        let result = match tokio::time::timeout(provider.timeout, check).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Timeout(provider.timeout)),
        };
        match result {
            Ok(decided) => decided,
            Err(error) => {
                tracing::info!(
                    target: "authz",
                    listener = %self.name,
                    provider = provider.name,
                    %error,
                    fail_open = provider.fail_open,
                    "external authorization check failed"
                );
                on_error(provider)
            }
        }
    }

    async fn check(
        &self,
        provider: &ExtAuthzProvider,
        parts: &Parts,
        replay: &Replay,
    ) -> Result<(Verdict, Outcome), CheckError> {
        let body = match &provider.body {
            None => None,
            Some(settings) => match buffer_body(replay, settings).await? {
                Ok(body) => body,
                Err(()) => {
                    let verdict = Verdict::Deny {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        headers: Vec::new(),
                        body: Bytes::new(),
                    };
                    return Ok((verdict, Outcome::BodyTooLarge));
                }
            },
        };
        let downstream = &self.downstream;
        let source_principal = downstream.peer_identity.to_string();
        let own_identity = self.core.options().identity.to_string();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let input = CheckInput {
            method: &parts.method,
            path,
            host: crate::filters::request_authority(parts).unwrap_or_default(),
            headers: &parts.headers,
            version: parts.version,
            body: body.as_ref(),
            source: (downstream.client_addr(), Some(&source_principal)),
            destination: (downstream.original_dst, &own_identity),
            time: SystemTime::now(),
        };
        let (_picked, meta) = self.authorizer_endpoint(provider)?;
        let verdict = match &provider.protocol {
            ProviderProtocol::Http(settings) => {
                let request = http_check::check_request(settings, &input)?;
                let (status, headers, body) = self
                    .send(&meta, UpstreamProtocol::Http1, request)
                    .await
                    .map(|(status, headers, collected)| (status, headers, collected.0))?;
                http_check::verdict(settings, status, &headers, body)
            }
            ProviderProtocol::Grpc => {
                let message = grpc::check_request(&input, provider.body.as_ref());
                let uri = format!(
                    "http://{}{}",
                    authority(provider.hostname(), provider.port),
                    grpc::CHECK_PATH
                );
                let mut request = Request::builder()
                    .method(Method::POST)
                    .uri(uri)
                    .version(Version::HTTP_2)
                    .body(grpc::frame(&message))
                    .map_err(|e| CheckError::Request(e.to_string()))?;
                let headers = request.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
                if let Ok(value) =
                    HeaderValue::from_str(&format!("{}m", provider.timeout.as_millis()))
                {
                    headers.insert("grpc-timeout", value);
                }
                let (status, headers, (body, trailers)) =
                    self.send(&meta, UpstreamProtocol::Http2, request).await?;
                if status != StatusCode::OK {
                    return Err(CheckError::Transport(format!("HTTP status {status}")));
                }
                let code = crate::body::grpc_status(trailers.as_ref().unwrap_or(&headers))
                    .or_else(|| crate::body::grpc_status(&headers))
                    .ok_or_else(|| CheckError::Malformed("no grpc-status".into()))?;
                if code != 0 {
                    let message = trailers
                        .as_ref()
                        .unwrap_or(&headers)
                        .get("grpc-message")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default();
                    return Err(CheckError::Grpc { code, message });
                }
                grpc::verdict(grpc::unframe(body)?)
            }
        };
        let outcome = match verdict {
            Verdict::Allow { .. } => Outcome::Ok,
            Verdict::Deny { .. } => Outcome::Denied,
        };
        Ok((verdict, outcome))
    }

    /// Sends a check request and reads the whole answer (at most [`MAX_RESPONSE_BYTES`] of
    /// body, plus a gRPC message prefix): status, headers, body and trailers.
    async fn send(
        &self,
        meta: &TunnelMetadata,
        protocol: UpstreamProtocol,
        request: Request<Bytes>,
    ) -> Result<(StatusCode, HeaderMap, (Bytes, Option<HeaderMap>)), CheckError> {
        let request = request.map(|b| {
            Full::new(b)
                .map_err(|never| -> BoxError { match never {} })
                .boxed()
        });
        let response = self
            .core
            .originate()
            .send(meta, protocol, ConnSettings::default(), request)
            .await
            .map_err(|e| CheckError::Transport(e.to_string()))?;
        let (head, body) = response.into_parts();
        let collected = Limited::new(body, MAX_RESPONSE_BYTES + 5)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    CheckError::TooLarge
                } else {
                    CheckError::Transport(e.to_string())
                }
            })?;
        let trailers = collected.trailers().cloned();
        Ok((head.status, head.headers, (collected.to_bytes(), trailers)))
    }

    /// Where the authorizer is: a literal IP `service` directly, else an endpoint of the mesh
    /// service of that hostname.
    fn authorizer_endpoint(
        &self,
        provider: &ExtAuthzProvider,
    ) -> Result<(Option<Picked>, TunnelMetadata), CheckError> {
        let host = provider.hostname();
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            let address = SocketAddr::new(ip, provider.port);
            return Ok((
                None,
                TunnelMetadata::external(address, None, &self.downstream),
            ));
        }
        let no_endpoint = || CheckError::NoEndpoint(provider.service.clone());
        let (cluster, _) = self
            .core
            .cluster(host, None, provider.port, "http")
            .ok_or_else(no_endpoint)?;
        let headers = HeaderMap::new();
        let ctx = PickContext {
            headers: &headers,
            source_ip: None,
            query: None,
            exclude: &[],
        };
        let (picked, meta) = pick_endpoint(&self.core, &cluster, &ctx, &self.downstream, host)
            .ok_or_else(no_endpoint)?;
        Ok((Some(picked), meta))
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Reads the start of the request body for the check: up to `maxRequestBytes` (at most
/// [`MAX_CHECK_BODY_BYTES`]). A longer body is cut there with `allowPartialMessage`, else
/// refused (`Ok(Err(()))`, answered 413).
async fn buffer_body(replay: &Replay, settings: &BodySettings) -> Result<BufferedBody, CheckError> {
    let limit = usize::try_from(settings.max_request_bytes)
        .unwrap_or(usize::MAX)
        .min(MAX_CHECK_BODY_BYTES);
    let mut reader = replay.reader();
    let mut buffer = BytesMut::new();
    while buffer.len() <= limit {
        let Some(frame) = reader.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| CheckError::Transport(format!("request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    if buffer.len() > limit {
        if !settings.allow_partial_message {
            return Ok(Err(()));
        }
        buffer.truncate(limit);
    }
    Ok(Ok(Some(buffer.freeze())))
}
