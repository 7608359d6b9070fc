//! `envoyExtAuthzGrpc`: the `CheckRequest`, its unary gRPC framing, and the meaning of the
//! `CheckResponse`.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use proto::envoy::config::core::v3 as core;
use proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context, check_response,
};
use proto::prost::Message;

use super::{CheckError, CheckInput, HeaderEdit, MAX_RESPONSE_BYTES, Verdict, is_framing};
use crate::config::mesh::BodySettings;

/// The `:path` of the call.
pub use proto::AUTHORIZATION_CHECK_PATH as CHECK_PATH;

/// The `CheckRequest`: source and destination addresses and principals, and the HTTP
/// request (id, method, headers with `:method`, `:path` and `:authority`, path, host,
/// scheme, protocol, size, and the body when included).
pub fn check_request(input: &CheckInput<'_>, body: Option<&BodySettings>) -> CheckRequest {
    let peer = |addr: std::net::SocketAddr, principal: Option<&str>| attribute_context::Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: addr.ip().to_canonical().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal: principal.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in input.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    headers.insert(":method".into(), input.method.as_str().to_owned());
    headers.insert(":path".into(), input.path.to_owned());
    headers.insert(":authority".into(), input.host.to_owned());
    let size = input
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(-1);
    let (text, raw) = match (input.body, body) {
        (Some(bytes), Some(settings)) if settings.pack_as_bytes => (String::new(), bytes.to_vec()),
        (Some(bytes), _) => (String::from_utf8_lossy(bytes).into_owned(), Vec::new()),
        (None, _) => (String::new(), Vec::new()),
    };
    let time = input
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| proto::prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(input.source.0, input.source.1)),
            destination: Some(peer(input.destination.0, Some(input.destination.1))),
            request: Some(attribute_context::Request {
                time,
                http: Some(attribute_context::HttpRequest {
                    id: input
                        .headers
                        .get(&crate::filters::REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    method: input.method.as_str().to_owned(),
                    headers,
                    path: input.path.to_owned(),
                    host: input.host.to_owned(),
                    scheme: "http".to_owned(),
                    size,
                    protocol: protocol(input.version).to_owned(),
                    body: text,
                    raw_body: raw,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Envoy's protocol strings.
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// One uncompressed gRPC message: flag 0, big-endian length, the encoded message.
pub fn frame(message: &CheckRequest) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut out);
    out.freeze()
}

/// The single `CheckResponse` of a unary response body.
pub fn unframe(mut body: Bytes) -> Result<CheckResponse, CheckError> {
    if body.len() < 5 {
        return Err(CheckError::Malformed(format!(
            "{} bytes, not a gRPC message",
            body.len()
        )));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(CheckError::Malformed("compressed message".into()));
    }
    if len > MAX_RESPONSE_BYTES {
        return Err(CheckError::TooLarge);
    }
    if body.len() != len {
        return Err(CheckError::Malformed(format!(
            "message of {len} bytes with {} bytes after the prefix",
            body.len()
        )));
    }
    CheckResponse::decode(body).map_err(|e| CheckError::Malformed(e.to_string()))
}

/// The verdict of a `CheckResponse`: code 0 allows, with `ok_response` edits of the upstream
/// request (`headers`, `headers_to_remove`) and of the client's response
/// (`response_headers_to_add`); any other code denies with the `denied_response` status
/// (403 when it sets none), headers and body.
pub fn verdict(response: CheckResponse) -> Verdict {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let (upstream, downstream) = match response.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) => {
                let mut upstream: Vec<HeaderEdit> = ok.headers.iter().filter_map(edit).collect();
                upstream.extend(
                    ok.headers_to_remove
                        .iter()
                        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                        .filter(|n| !is_framing(n))
                        .map(HeaderEdit::Remove),
                );
                let downstream = ok.response_headers_to_add.iter().filter_map(edit).collect();
                (upstream, downstream)
            }
            _ => (Vec::new(), Vec::new()),
        };
        return Verdict::Allow {
            upstream,
            downstream,
        };
    }
    let (status, headers, body) = match response.http_response {
        Some(check_response::HttpResponse::DeniedResponse(denied)) => {
            let status = denied
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| s.as_u16() >= 200)
                .unwrap_or(StatusCode::FORBIDDEN);
            let headers = denied
                .headers
                .iter()
                .filter_map(header)
                .filter(|(n, _)| !is_framing(n))
                .collect();
            (status, headers, Bytes::from(denied.body))
        }
        _ => (StatusCode::FORBIDDEN, Vec::new(), Bytes::new()),
    };
    Verdict::Deny {
        status,
        headers,
        body,
    }
}

/// A header of the answer; `None` when its name or value is not valid HTTP.
fn header(option: &core::HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = option.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
    let value = if h.raw_value.is_empty() {
        HeaderValue::from_str(&h.value).ok()?
    } else {
        HeaderValue::from_bytes(&h.raw_value).ok()?
    };
    Some((name, value))
}

/// The edit a `HeaderValueOption` asks for: `append: true` appends, `append: false` (or
/// unset, as Envoy defaults it here) replaces; `append_action` `ADD_IF_ABSENT` and
/// `OVERWRITE_IF_EXISTS` are honoured when `append` is unset.
fn edit(option: &core::HeaderValueOption) -> Option<HeaderEdit> {
    let (name, value) = header(option)?;
    if is_framing(&name) || (value.is_empty() && !option.keep_empty_value) {
        return None;
    }
    Some(match option.append {
        Some(true) => HeaderEdit::Append(name, value),
        Some(false) => HeaderEdit::Set(name, value),
        None => match HeaderAppendAction::try_from(option.append_action) {
            Ok(HeaderAppendAction::AddIfAbsent) => HeaderEdit::AddIfAbsent(name, value),
            Ok(HeaderAppendAction::OverwriteIfExists) => HeaderEdit::OverwriteIfExists(name, value),
            _ => HeaderEdit::Set(name, value),
        },
    })
}
