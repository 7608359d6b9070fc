//! Remote key sets: fetching a RequestAuthentication rule's `jwksUri`, caching the result and
//! keeping it fresh, for the authenticate phase of the inbound VIP listener.
//!
//! Each distinct (`jwksUri`, `timeout`) of the configuration has one [`RemoteJwks`], shared by
//! every rule naming it and owned by the compiled configuration ([`super::AuthnTable`]); the
//! [`JwksRegistry`] hands out the same one across reloads while it is in use. A background
//! task per key set fetches it when it is created, then every
//! [`JwksSettings::refresh_interval`] (Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`, 20 minutes
//! by default), and retries failures with a backoff.
//!
//! # Failing closed, and the grace period
//!
//! - A key set that was never fetched has no keys: tokens of its rules are denied
//!   (`Jwks remote fetch is failed`), never checked against a default key.
//! - A fetched key set stays usable until `refresh_interval + grace` after its last successful
//!   fetch ([`JwksSettings::grace`], 40 minutes by default, so one hour in all). A refresh that
//!   fails within that window keeps the previous keys (an issuer's transient outage does not
//!   lock every client out); past it the keys are dropped from use and tokens are denied until
//!   a fetch succeeds. A document that parses but has no usable key counts as a failure.
//! - A request never waits longer than the rule's `timeout` (Istio's default 5 s) for a fetch:
//!   when there are no usable keys, or the token's `kid` is not in the set (the issuer may have
//!   rotated its keys), it asks for a fetch and waits for it up to the timeout. Such on-demand
//!   fetches happen at most once per [`JwksSettings::on_demand_min_interval`]; in between, a
//!   request without usable keys is denied at once.
//!
//! HTTPS uses rustls (TLS 1.3, the aws-lc-rs provider of the rest of the proxy) with the
//! system's root certificates ([`JwksSettings::ca_file`], else the usual bundle locations).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::JwtStatus;
use super::keys::{JwksError, KeySet};

/// Istio's default `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// How long past a due refresh the previous keys stay usable by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40 * 60);
/// The shortest time between two fetches asked for by requests.
pub const DEFAULT_ON_DEMAND_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Istio's default `timeout` of a JWT rule's key fetch.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two retries of a failing fetch.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);
/// The largest JWKS document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Where root certificates are looked for when [`JwksSettings::ca_file`] is not set (Debian
/// and Ubuntu, RHEL and Fedora, Alpine, openSUSE).
pub const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// How remote key sets are fetched and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// How often a key set is fetched again after a success.
    pub refresh_interval: Duration,
    /// How long after a refresh came due the previous keys may still be used while fetches
    /// fail.
    pub grace: Duration,
    /// The shortest time between two fetches asked for by requests (no usable keys, unknown
    /// `kid`).
    pub on_demand_min_interval: Duration,
    /// The largest document accepted.
    pub max_document_bytes: usize,
    /// A PEM bundle of the roots HTTPS servers are verified with; `None` = the first of
    /// [`SYSTEM_CA_FILES`] that exists.
    pub ca_file: Option<PathBuf>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            grace: DEFAULT_GRACE,
            on_demand_min_interval: DEFAULT_ON_DEMAND_MIN_INTERVAL,
            max_document_bytes: MAX_DOCUMENT_BYTES,
            ca_file: None,
        }
    }
}

impl JwksSettings {
    /// How long after its last successful fetch a key set may be used.
    pub fn max_age(&self) -> Duration {
        self.refresh_interval.saturating_add(self.grace)
    }

    /// The wait before retrying after `failures` consecutive failures: the on-demand interval,
    /// doubling, at most [`MAX_RETRY_DELAY`] and never beyond the refresh interval.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let base = self.on_demand_min_interval.max(Duration::from_millis(100));
        let doubled = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
        doubled.min(MAX_RETRY_DELAY).min(self.refresh_interval)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URI has no host or an unsupported scheme.
    #[error("invalid jwksUri {0:?}")]
    InvalidUri(String),
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// No address of the host accepted a connection.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The last error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with another status than 200.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The body could not be read, or is larger than allowed.
    #[error("body: {0}")]
    Body(String),
    /// No answer within the rule's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The document is not a usable key set.
    #[error(transparent)]
    Invalid(#[from] JwksError),
    /// The OpenID Connect discovery document does not name a usable `jwks_uri`.
    #[error("OpenID discovery: {0}")]
    Discovery(String),
}

/// Fetches documents; the HTTP(S) client in production, scripted in tests.
pub trait Fetch: Send + Sync + 'static {
    /// The body of `uri`.
    fn fetch<'a>(&'a self, uri: &'a Uri) -> BoxFuture<'a, Result<String, FetchError>>;
}

/// The state of one remote key set, shared with its fetch task.
#[derive(Debug, Default)]
struct FetchState {
    keys: Option<Arc<KeySet>>,
    last_success: Option<(Instant, SystemTime)>,
    last_attempt: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    /// A fetch is running or asked for.
    in_flight: bool,
    consecutive_failures: u32,
    fetches: u64,
}

impl FetchState {
    /// The keys, while within `max_age` of their fetch.
    fn usable(&self, now: Instant, max_age: Duration) -> Option<&Arc<KeySet>> {
        let (fetched, _) = self.last_success?;
        if now.saturating_duration_since(fetched) < max_age {
            self.keys.as_ref()
        } else {
            None
        }
    }
}

/// What a remote key set and its fetch task share.
struct Shared {
    uri: Uri,
    /// `uri` is an OpenID Connect discovery document naming the key set's URI.
    discovery: bool,
    timeout: Duration,
    settings: JwksSettings,
    state: Mutex<FetchState>,
    /// Asks the fetch task for a fetch now.
    wake: Notify,
    /// Bumped after every fetch attempt.
    done: watch::Sender<u64>,
}

/// One `jwksUri` with its cached keys and the task keeping them fresh (stopped when dropped).
pub struct RemoteJwks {
    shared: Arc<Shared>,
    task: Option<AbortHandle>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("uri", &self.shared.uri)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteJwks {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl RemoteJwks {
    /// A key set at `location`, fetched with `fetcher` within `timeout`. The first fetch starts at
    /// once on the current runtime; without a runtime there is no fetch and tokens are denied.
    pub fn new(
        location: JwksLocation,
        timeout: Duration,
        settings: JwksSettings,
        fetcher: Arc<dyn Fetch>,
    ) -> Self {
        let (done, _) = watch::channel(0);
        let (uri, discovery) = match location {
            JwksLocation::Jwks(uri) => (uri, false),
            JwksLocation::Discovery(uri) => (uri, true),
        };
        let shared = Arc::new(Shared {
            uri,
            discovery,
            timeout,
            settings,
            state: Mutex::new(FetchState {
                in_flight: true,
                ..FetchState::default()
            }),
            wake: Notify::new(),
            done,
        });
        let task = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Some(
                runtime
                    .spawn(run(Arc::clone(&shared), fetcher))
                    .abort_handle(),
            ),
            Err(_) => {
                tracing::warn!(uri = %shared.uri, "no runtime to fetch the JWKS; its tokens are denied");
                None
            }
        };
        Self { shared, task }
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.shared.uri
    }

    /// The fetch timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The keys to check a token naming `kid` with.
    ///
    /// Usable keys that have `kid` (or have keys without a `kid`) are returned at once.
    /// Otherwise a fetch is asked for (or joined, when one is running) and awaited up to the
    /// timeout, unless the last attempt is more recent than the on-demand interval. Without
    /// usable keys after that: [`JwtStatus::JwksFetchFail`].
    pub async fn keys(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwtStatus> {
        let settings = &self.shared.settings;
        let mut done = self.shared.done.subscribe();
        let wait = {
            let mut state = lock(&self.shared.state);
            let now = Instant::now();
            if let Some(keys) = state.usable(now, settings.max_age())
                && kid.is_none_or(|kid| keys.has_key_for(kid))
            {
                return Ok(Arc::clone(keys));
            }
            if state.in_flight {
                true
            } else if state.last_attempt.is_none_or(|(at, _)| {
                now.saturating_duration_since(at) >= settings.on_demand_min_interval
            }) {
                state.in_flight = true;
                self.shared.wake.notify_one();
                true
            } else {
                false
            }
        };
        if wait {
            // A timeout leaves the decision to the keys there are.
            let _ = tokio::time::timeout(self.shared.timeout, done.changed()).await;
        }
        let state = lock(&self.shared.state);
        state
            .usable(Instant::now(), settings.max_age())
            .cloned()
            .ok_or(JwtStatus::JwksFetchFail)
    }

    /// What `config_dump` shows.
    pub fn status(&self) -> JwksStatus {
        let state = lock(&self.shared.state);
        let max_age = self.shared.settings.max_age();
        let usable = state.usable(Instant::now(), max_age);
        let time = |t: Option<(Instant, SystemTime)>| t.map(|(_, wall)| rfc3339(wall));
        JwksStatus {
            uri: self.shared.uri.to_string(),
            discovery: self.shared.discovery,
            timeout_ms: u64::try_from(self.shared.timeout.as_millis()).unwrap_or(u64::MAX),
            usable: usable.is_some(),
            keys: usable.map_or(0, |k| k.len()),
            kids: usable.map_or_else(Vec::new, |k| k.kids().map(str::to_owned).collect()),
            last_fetch_attempt: time(state.last_attempt),
            last_fetch_success: time(state.last_success),
            usable_until: state.last_success.map(|(_, wall)| rfc3339(wall + max_age)),
            last_error: state.last_error.clone(),
            consecutive_failures: state.consecutive_failures,
            fetches: state.fetches,
        }
    }
}

/// The fetch status of a remote key set, for `config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwksStatus {
    /// The `jwksUri` (or the discovery document).
    pub uri: String,
    /// Whether `uri` is an OpenID Connect discovery document.
    pub discovery: bool,
    /// The fetch timeout in milliseconds.
    pub timeout_ms: u64,
    /// Whether tokens can be checked now.
    pub usable: bool,
    /// The number of usable keys.
    pub keys: usize,
    /// Their `kid`s.
    pub kids: Vec<String>,
    /// When the last fetch started (RFC 3339).
    pub last_fetch_attempt: Option<String>,
    /// When the last successful fetch started.
    pub last_fetch_success: Option<String>,
    /// When the keys stop being usable unless a fetch succeeds.
    pub usable_until: Option<String>,
    /// The error of the last fetch, when it failed.
    pub last_error: Option<String>,
    /// Failed fetches since the last success.
    pub consecutive_failures: u32,
    /// Fetch attempts so far.
    pub fetches: u64,
}

fn rfc3339(t: SystemTime) -> String {
    use ztunnel::admin::config_dump::{rfc3339, unix_seconds};
    rfc3339(unix_seconds(t))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fetch task: fetch, record, wait for the next refresh, retry or request; forever.
async fn run(shared: Arc<Shared>, fetcher: Arc<dyn Fetch>) {
    loop {
        {
            let mut state = lock(&shared.state);
            state.in_flight = true;
            state.last_attempt = Some((Instant::now(), SystemTime::now()));
        }
        let fetch = fetch_keys(fetcher.as_ref(), &shared.uri, shared.discovery);
        let result = match tokio::time::timeout(shared.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(shared.timeout)),
        };
        let delay = {
            let mut state = lock(&shared.state);
            let attempt = state.last_attempt;
            state.in_flight = false;
            state.fetches += 1;
            match result {
                Ok(keys) => {
                    tracing::debug!(uri = %shared.uri, keys = keys.len(), "JWKS fetched");
                    state.keys = Some(Arc::new(keys));
                    state.last_success = attempt;
                    state.last_error = None;
                    state.consecutive_failures = 0;
                    shared.settings.refresh_interval
                }
                Err(e) => {
                    state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                    let usable = state
                        .usable(Instant::now(), shared.settings.max_age())
                        .is_some();
                    tracing::warn!(
                        uri = %shared.uri,
                        error = %e,
                        failures = state.consecutive_failures,
                        keeping_previous_keys = usable,
                        "JWKS fetch failed"
                    );
                    state.last_error = Some(e.to_string());
                    shared.settings.retry_delay(state.consecutive_failures)
                }
            }
        };
        shared.done.send_modify(|n| *n = n.wrapping_add(1));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.wake.notified() => {}
        }
    }
}

/// Fetches and parses a key set; through the discovery document first when `discovery`.
async fn fetch_keys(fetcher: &dyn Fetch, uri: &Uri, discovery: bool) -> Result<KeySet, FetchError> {
    let document = fetcher.fetch(uri).await?;
    if !discovery {
        return Ok(KeySet::parse(&document)?);
    }
    let jwks_uri = serde_json::from_str::<serde_json::Value>(&document)
        .ok()
        .and_then(|v| v.get("jwks_uri")?.as_str().map(str::to_owned))
        .ok_or_else(|| FetchError::Discovery("no jwks_uri in the discovery document".into()))?;
    let jwks_uri =
        crate::config::authn::parse_jwks_uri(&jwks_uri).map_err(FetchError::Discovery)?;
    let document = fetcher.fetch(&jwks_uri).await?;
    Ok(KeySet::parse(&document)?)
}

/// Where a key set is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksLocation {
    /// The key set itself (`jwksUri`).
    Jwks(Uri),
    /// An OpenID Connect discovery document whose `jwks_uri` names the key set (a rule
    /// without `jwks` or `jwksUri`).
    Discovery(Uri),
}

impl JwksLocation {
    /// The discovery document of `issuer`: `<issuer>/.well-known/openid-configuration`, when
    /// the issuer is an `http(s)` URL.
    pub fn discovery(issuer: &str) -> Option<Self> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        crate::config::authn::parse_jwks_uri(&url)
            .ok()
            .map(Self::Discovery)
    }
}

/// Hands out one [`RemoteJwks`] per (`jwksUri`, timeout) while any compiled configuration
/// uses it.
pub struct JwksRegistry {
    settings: JwksSettings,
    fetcher: Arc<dyn Fetch>,
    entries: Mutex<HashMap<(JwksLocation, Duration), Weak<RemoteJwks>>>,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JwksRegistry {
    /// A registry fetching over HTTP(S).
    pub fn new(settings: JwksSettings) -> Self {
        let fetcher = Arc::new(HttpFetcher::new(&settings));
        Self::with_fetcher(settings, fetcher)
    }

    /// A registry fetching with `fetcher`.
    pub fn with_fetcher(settings: JwksSettings, fetcher: Arc<dyn Fetch>) -> Self {
        Self {
            settings,
            fetcher,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// The key set at `location` with `timeout`: the one in use, or a new one (whose first
    /// fetch starts now).
    pub fn get(&self, location: &JwksLocation, timeout: Duration) -> Arc<RemoteJwks> {
        let mut entries = lock(&self.entries);
        entries.retain(|_, weak| weak.strong_count() > 0);
        let key = (location.clone(), timeout);
        if let Some(existing) = entries.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let remote = Arc::new(RemoteJwks::new(
            location.clone(),
            timeout,
            self.settings.clone(),
            Arc::clone(&self.fetcher),
        ));
        entries.insert(key, Arc::downgrade(&remote));
        remote
    }

    /// The status of every key set in use, by URI.
    pub fn statuses(&self) -> Vec<JwksStatus> {
        let live: Vec<Arc<RemoteJwks>> = lock(&self.entries)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut out: Vec<JwksStatus> = live.iter().map(|r| r.status()).collect();
        out.sort_by(|a, b| (&a.uri, a.timeout_ms).cmp(&(&b.uri, b.timeout_ms)));
        out
    }
}

/// The HTTP/1.1 client for `jwksUri`s: plain TCP or rustls, one connection per fetch.
pub struct HttpFetcher {
    max_document_bytes: usize,
    ca_file: Option<PathBuf>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl HttpFetcher {
    /// A client with the limits and roots of `settings`.
    pub fn new(settings: &JwksSettings) -> Self {
        Self {
            max_document_bytes: settings.max_document_bytes,
            ca_file: settings.ca_file.clone(),
            tls: OnceLock::new(),
        }
    }

    /// The TLS client configuration, built on first use.
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, FetchError> {
        self.tls
            .get_or_init(|| tls_config(self.ca_file.as_deref()))
            .clone()
            .map_err(FetchError::Tls)
    }

    async fn get(&self, uri: &Uri) -> Result<String, FetchError> {
        let invalid = || FetchError::InvalidUri(uri.to_string());
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid()),
        };
        let authority = uri.authority().ok_or_else(invalid)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let stream = connect(&host, port).await?;
        let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "waypoint-jwks")
            .body(Empty::<Bytes>::new())
            .map_err(|_| invalid())?;
        if https {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| FetchError::Tls(format!("invalid server name {host:?}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls()?)
                .connect(name, stream)
                .await
                .map_err(|e| FetchError::Tls(e.to_string()))?;
            exchange(tls, request, self.max_document_bytes).await
        } else {
            exchange(stream, request, self.max_document_bytes).await
        }
    }
}

impl Fetch for HttpFetcher {
    fn fetch<'a>(&'a self, uri: &'a Uri) -> BoxFuture<'a, Result<String, FetchError>> {
        Box::pin(self.get(uri))
    }
}

/// A TCP connection to the first address of `host` that accepts one.
async fn connect(host: &str, port: u16) -> Result<TcpStream, FetchError> {
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| FetchError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(FetchError::Connect {
        host: host.to_owned(),
        source: last,
    })
}

/// One request on a fresh HTTP/1.1 connection; the body of a 200 answer, at most `limit`
/// bytes.
async fn exchange<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
    limit: usize,
) -> Result<String, FetchError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let response = async move {
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|e| FetchError::Body(e.to_string()))
    };
    // The connection ends once the sender is dropped with the finished exchange.
    let (result, _) = tokio::join!(response, connection);
    result
}

/// A client configuration trusting the roots of `ca_file`, else of the first system bundle.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = load_roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The root certificates of the PEM bundle `ca_file`, else of the first system bundle found
/// ([`SYSTEM_CA_FILES`]). Certificates rustls cannot use are skipped; none usable is an error.
pub(crate) fn load_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    let file = match ca_file {
        Some(file) => file.to_owned(),
        None => SYSTEM_CA_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| "no system root certificates found".to_owned())?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&file)
        .map_err(|e| format!("cannot read roots from {}: {e}", file.display()))?;
    for cert in certs.flatten() {
        // Bundles may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("no usable root certificate in {}", file.display()));
    }
    Ok(roots)
}
