//! The HTTP/1.1 plumbing shared by the admin, metrics and readiness servers: bind, accept, one
//! task per connection, bounded request heads and bodies, a request-header read timeout, and
//! graceful close on shutdown.
//!
//! Handlers are synchronous: every endpoint answers from memory, so a handler gets the whole
//! (bounded) request and the peer address and returns a complete response.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The response type of every handler: a complete, in-memory body.
pub type HttpResponse = Response<Full<Bytes>>;

/// `Content-Type` of plain-text answers.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
/// `Content-Type` of JSON answers.
pub const APPLICATION_JSON: &str = "application/json";

/// Limits of the HTTP servers. The defaults suit endpoints that take no request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// How long a client has to send a complete request head (request line and headers) once
    /// it has started one; a client that is slower is disconnected. Default 10 s.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes; larger ones are refused (431) and the connection
    /// closed. hyper enforces at least 8 KiB. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Largest request body, in bytes; larger ones get 413. Default 64 KiB.
    pub max_body_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// A synchronous endpoint handler.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`, whose body has been read in full, from `peer`.
    fn handle(&self, request: Request<Bytes>, peer: SocketAddr) -> HttpResponse;
}

/// A bound HTTP listener, not yet serving.
#[derive(Debug)]
pub struct HttpListener {
    /// The bound socket.
    listener: TcpListener,
    /// Its local address (port 0 resolved).
    address: SocketAddr,
    /// Limits applied to every connection.
    pub options: HttpOptions,
}

impl HttpListener {
    /// Binds `addr` with default options.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            address,
            options: HttpOptions::default(),
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Accepts connections until `shutdown`, serving each on its own task with `handler`.
    /// Connections in progress finish their current request and close once `shutdown` fires.
    pub async fn serve<H: Handler>(
        self,
        server: &'static str,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        tracing::info!(server, address = %self.address, "HTTP server listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(server, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (handler, shutdown) = (handler.clone(), shutdown.clone());
            tokio::spawn(serve_connection(
                server,
                stream,
                peer,
                handler,
                self.options,
                shutdown,
            ));
        }
        tracing::info!(server, address = %self.address, "HTTP server stopped");
    }
}

/// Serves HTTP/1.1 requests on one connection until the client closes it, it times out, or
/// `shutdown` fires (then the request in flight completes first).
async fn serve_connection<H: Handler>(
    server: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    options: HttpOptions,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let max_body = options.max_body_bytes;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(respond(&*handler, request, peer, max_body).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(server, %peer, %error, "HTTP connection ended with an error");
    }
}

/// Reads the body (bounded) and runs the handler.
async fn respond<H: Handler>(
    handler: &H,
    request: Request<Incoming>,
    peer: SocketAddr,
    max_body: usize,
) -> HttpResponse {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return too_large(max_body);
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error.is::<http_body_util::LengthLimitError>() {
                return too_large(max_body);
            }
            return text(
                StatusCode::BAD_REQUEST,
                format!("bad request body: {error}\n"),
            );
        }
    };
    handler.handle(Request::from_parts(parts, body), peer)
}

/// 413 with the limit.
fn too_large(max_body: usize) -> HttpResponse {
    let mut response = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max_body} bytes\n"),
    );
    // The unread rest of the body makes the connection unusable.
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response with `status`, `content_type` and `body`.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    response(status, TEXT_PLAIN, body)
}

/// 404 for a path no endpoint serves.
pub fn not_found(path: &str) -> HttpResponse {
    text(StatusCode::NOT_FOUND, format!("no endpoint at {path}\n"))
}

/// 405 naming the allowed methods in `Allow`.
pub fn method_not_allowed(allowed: &'static str) -> HttpResponse {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allowed}\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allowed));
    response
}

/// Whether `method` is GET or HEAD (hyper sends no body for HEAD).
pub fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Parses an `application/x-www-form-urlencoded` query into `(key, value)` pairs, in order.
/// A key without `=` has an empty value. `None` when an escape is malformed or a decoded
/// part is not UTF-8.
pub fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space) of one query component.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
