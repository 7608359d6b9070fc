//! The gRPC channel to the control plane (istiod, port 15012), shared by the xDS client and the
//! CA client.
//!
//! Istio's control plane speaks gRPC over TLS. A [`ControlPlane`] says where it is and how this
//! node proxy authenticates: the server certificate must chain to a root read from a file (or
//! given inline), and every call carries the node proxy's Kubernetes service-account token as
//! `authorization: Bearer <token>` plus `clusterid: <cluster id>`. [`ControlPlane::connect`]
//! makes one HTTP/2 connection (TCP, TLS 1.3 with ALPN `h2`, then the HTTP/2 handshake) and
//! returns it as a [`Channel`], a tower service that the generated tonic clients run over.
//!
//! The root certificate and the token are re-read from their files at every connection
//! ([`ControlPlane::connect`]) and every call ([`ControlPlane::authorize`]) respectively, so
//! rotated files are picked up without a restart.
//!
//! # Limits
//! - [`CONNECT_TIMEOUT`] bounds name resolution, the TCP connect, the TLS handshake and the
//!   HTTP/2 handshake together.
//! - HTTP/2 keepalive pings every [`KEEPALIVE_INTERVAL`] detect a control plane that went away
//!   without closing the connection; [`KEEPALIVE_TIMEOUT`] without an answer closes it.
//! - Response header lists (headers and trailers) are limited to [`MAX_HEADER_LIST_SIZE`].
//! - The root certificate file is read up to [`MAX_ROOT_CERT_FILE_SIZE`], the token file up to
//!   [`MAX_TOKEN_FILE_SIZE`]. Message size limits are set per client (xDS and CA differ).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::str::FromStr;

use http::Uri;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use crate::config::{ConfigError, Env};

/// Longest time from starting to resolve the control plane's name until the HTTP/2 connection is
/// up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of HTTP/2 keepalive pings on control-plane connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header list (headers or trailers) accepted from the control plane.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Largest root certificate file read.
pub const MAX_ROOT_CERT_FILE_SIZE: u64 = 1024 * 1024;
/// Largest token file read (a Kubernetes service-account token is a few KiB).
pub const MAX_TOKEN_FILE_SIZE: u64 = 64 * 1024;

/// Upstream's default root certificate location (`XDS_ROOT_CA`, `CA_ROOT_CA`).
pub const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
/// Upstream's default service-account token location (`AUTH_TOKEN`).
pub const DEFAULT_TOKEN_PATH: &str = "./var/run/secrets/tokens/istio-token";
/// The control plane's address inside a Kubernetes cluster.
pub const DEFAULT_ISTIOD_ADDRESS: &str = "https://istiod.istio-system.svc:15012";
/// Cluster id when neither `ISTIO_META_CLUSTER_ID` nor `CLUSTER_ID` is set.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Where the trust root(s) of the control plane's certificate come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file, re-read at every connection.
    File(PathBuf),
    /// Inline PEM text.
    Pem(String),
}

/// Where the bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file (a projected service-account token), re-read for every call.
    File(PathBuf),
    /// A fixed token.
    Static(String),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

/// Why the control plane could not be reached or a call could not be prepared.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The control-plane address has no host.
    #[error("control plane address {0} has no host")]
    NoHost(String),
    /// The host (or `ALT_*_HOSTNAME`) is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// Resolving the control plane's host failed.
    #[error("resolving {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host resolved to no address.
    #[error("{0} resolved to no address")]
    NoAddress(String),
    /// Every resolved address refused or failed the TCP connection; the last error is kept.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (e.g. the server certificate does not chain to the root).
    #[error("TLS handshake with {server}: {source}")]
    Tls {
        /// The server name verified.
        server: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server did not negotiate HTTP/2 (ALPN `h2`).
    #[error("{0} did not negotiate HTTP/2 (ALPN h2)")]
    NoH2(String),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {0}")]
    Http2(#[source] hyper::Error),
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to {0} timed out after {CONNECT_TIMEOUT:?}")]
    Timeout(String),
    /// A root certificate or token file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A root certificate or token file is larger than its limit.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The root certificate PEM holds no usable certificate.
    #[error("invalid control plane root certificate: {0}")]
    RootCert(#[source] hbone::cert::CertError),
    /// A root certificate was refused as a trust anchor.
    #[error("unusable control plane root certificate: {0}")]
    TrustAnchor(#[source] rustls::Error),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// The token is empty.
    #[error("the bearer token is empty")]
    EmptyToken,
    /// The token (or the cluster id) cannot be sent as a header value.
    #[error("the {0} metadata value has characters not allowed in a header")]
    InvalidMetadata(&'static str),
}

/// Where the control plane is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `https://host:port` of the control plane.
    pub address: Uri,
    /// Trust root(s) of the control plane's serving certificate.
    pub root_cert: RootCert,
    /// Name verified in the server certificate instead of the address's host
    /// (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`).
    pub alt_hostname: Option<String>,
    /// Bearer token; `None` sends no `authorization` (istiod then refuses the call).
    pub token: Option<TokenSource>,
    /// Sent as `clusterid` metadata when not empty.
    pub cluster_id: String,
    /// Extra metadata sent with every call (`XDS_HEADER_<name>` / `CA_HEADER_<name>`).
    pub headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

impl ControlPlane {
    /// Connects: resolves the host, opens TCP (trying each address in turn), runs the TLS 1.3
    /// handshake verifying the server certificate against the root certificate (re-read now)
    /// and `alt_hostname` or the host, then the HTTP/2 handshake. All within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Channel, ChannelError> {
        let target = self.address.to_string();
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner())
            .await
            .map_err(|_| ChannelError::Timeout(target))?
    }

    async fn connect_inner(&self) -> Result<Channel, ChannelError> {
        let host = self
            .address
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| ChannelError::NoHost(self.address.to_string()))?;
        let port = self.address.port_u16().unwrap_or(443);
        let server = self.alt_hostname.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(server.clone())
            .map_err(|_| ChannelError::ServerName(server.clone()))?;
        let tls = tls_config(&load_roots(&self.root_cert).await?)?;

        let tcp = connect_tcp(&host, port).await?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|source| ChannelError::Tls {
                server: server.clone(),
                source,
            })?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ChannelError::NoH2(server));
        }

        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .handshake::<_, tonic::body::Body>(TokioIo::new(stream))
            .await
            .map_err(ChannelError::Http2)?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%address, %error, "control plane connection closed");
            }
        });
        Ok(Channel { sender })
    }

    /// Adds the call metadata: `authorization: Bearer <token>` (the token re-read now),
    /// `clusterid` and the extra headers.
    pub async fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ChannelError> {
        let metadata = request.metadata_mut();
        if let Some(token) = &self.token {
            let token = token.load().await?;
            let value = AsciiMetadataValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ChannelError::InvalidMetadata("authorization"))?;
            metadata.insert("authorization", value);
        }
        if !self.cluster_id.is_empty() {
            let value = AsciiMetadataValue::from_str(&self.cluster_id)
                .map_err(|_| ChannelError::InvalidMetadata("clusterid"))?;
            metadata.insert("clusterid", value);
        }
        for (name, value) in &self.headers {
            metadata.insert(name.clone(), value.clone());
        }
        Ok(())
    }
}

impl TokenSource {
    /// The token, trimmed of surrounding whitespace; never empty.
    async fn load(&self) -> Result<String, ChannelError> {
        let token = match self {
            Self::Static(token) => token.trim().to_string(),
            Self::File(path) => {
                let bytes = read_limited(path, MAX_TOKEN_FILE_SIZE).await?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            }
        };
        if token.is_empty() {
            return Err(ChannelError::EmptyToken);
        }
        Ok(token)
    }
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> ChannelError + '_ {
    move |source| ChannelError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file of at most `limit` bytes.
async fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ChannelError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(read_error(path))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_error(path))?;
    if bytes.len() as u64 > limit {
        return Err(ChannelError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Loads the certificates of a [`RootCert`] (at least one).
pub async fn load_roots(root: &RootCert) -> Result<Vec<CertificateDer<'static>>, ChannelError> {
    let pem = match root {
        RootCert::Pem(pem) => pem.clone(),
        RootCert::File(path) => {
            let bytes = read_limited(path, MAX_ROOT_CERT_FILE_SIZE).await?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    hbone::cert::certs_from_pem(&pem).map_err(ChannelError::RootCert)
}

/// TLS 1.3, ALPN `h2`, server verified by WebPKI against `roots` (hostname or IP SAN).
fn tls_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, ChannelError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(ChannelError::TrustAnchor)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ChannelError::TlsConfig)?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens TCP to the first address of `host` that accepts.
async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, ChannelError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ChannelError::Resolve {
            host: host.to_string(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small request/response messages: do not wait to coalesce them.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(source) => last = Some(ChannelError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| ChannelError::NoAddress(host.to_string())))
}

/// One HTTP/2 connection to the control plane, as the transport of the generated tonic clients
/// (`Client::with_origin(channel, address)`). Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Channel {
    sender: SendRequest<tonic::body::Body>,
}

impl Channel {
    /// Whether the connection is gone (a new one must be made).
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}

// === configuration from the environment ===

/// A non-empty variable.
pub(crate) fn var(env: &impl Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

fn invalid(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The control-plane address from `name` (`XDS_ADDRESS`, `CA_ADDRESS`): `None` when set to the
/// empty string (disabled); when unset, istiod's in-cluster address if `KUBERNETES_SERVICE_HOST`
/// is set, else `None`. A value without a scheme gets `https://`; plaintext `http://` is refused
/// because the bearer token would travel in clear.
pub(crate) fn address_from_env(
    env: &impl Env,
    name: &'static str,
) -> Result<Option<Uri>, ConfigError> {
    let value = match env.var(name) {
        Some(v) if v.trim().is_empty() => return Ok(None),
        Some(v) => v.trim().to_string(),
        None if var(env, "KUBERNETES_SERVICE_HOST").is_some() => DEFAULT_ISTIOD_ADDRESS.into(),
        None => return Ok(None),
    };
    let with_scheme = if value.contains("://") {
        value.clone()
    } else {
        format!("https://{value}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(name, &value, e.to_string()))?;
    match uri.scheme_str() {
        Some("https") => {}
        _ => {
            return Err(invalid(
                name,
                &value,
                "only https:// is supported (the bearer token must not travel in clear)",
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(name, &value, "no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(invalid(name, &value, "must not have a path"));
    }
    Ok(Some(uri))
}

/// The root certificate from `name` (`XDS_ROOT_CA`, `CA_ROOT_CA`), upstream's default path when
/// unset. Inline PEM is recognised by its `-----BEGIN`; anything else is a file path. `SYSTEM`
/// (the OS trust store) is not supported.
pub(crate) fn root_cert_from_env(
    env: &impl Env,
    name: &'static str,
) -> Result<RootCert, ConfigError> {
    let value = var(env, name).unwrap_or_else(|| DEFAULT_ROOT_CERT.into());
    if value.trim() == "SYSTEM" {
        return Err(invalid(
            name,
            &value,
            "the system trust store is not supported; give a PEM file or inline PEM",
        ));
    }
    if value.contains("-----BEGIN") {
        Ok(RootCert::Pem(value))
    } else {
        Ok(RootCert::File(PathBuf::from(value.trim())))
    }
}

/// The bearer token (`AUTH_TOKEN`): an existing file, or a path (contains `/`) to be read at
/// call time, or else the token itself. When unset, upstream's default file if it exists, else
/// no token.
pub(crate) fn token_from_env(env: &impl Env) -> Option<TokenSource> {
    match var(env, "AUTH_TOKEN") {
        Some(value) if Path::new(&value).exists() || value.contains('/') => {
            Some(TokenSource::File(PathBuf::from(value)))
        }
        Some(value) => Some(TokenSource::Static(value)),
        None if Path::new(DEFAULT_TOKEN_PATH).exists() => {
            Some(TokenSource::File(PathBuf::from(DEFAULT_TOKEN_PATH)))
        }
        None => None,
    }
}

/// The cluster id: `ISTIO_META_CLUSTER_ID`, else `CLUSTER_ID`, else `Kubernetes`.
pub(crate) fn cluster_id_from_env(env: &impl Env) -> String {
    var(env, "ISTIO_META_CLUSTER_ID")
        .or_else(|| var(env, "CLUSTER_ID"))
        .unwrap_or_else(|| DEFAULT_CLUSTER_ID.into())
}

/// Extra call metadata from variables named `<prefix><header>` (`XDS_HEADER_`, `CA_HEADER_`),
/// sorted by name.
pub(crate) fn headers_from_vars(
    prefix: &'static str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(AsciiMetadataKey, AsciiMetadataValue)>, ConfigError> {
    let mut out = Vec::new();
    for (key, value) in vars {
        let Some(header) = key.strip_prefix(prefix) else {
            continue;
        };
        let name = AsciiMetadataKey::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid(prefix, &key, "not a valid header name"))?;
        let value = AsciiMetadataValue::from_str(&value)
            .map_err(|_| invalid(prefix, &key, "value is not a valid header value"))?;
        out.push((name, value));
    }
    out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(out)
}
