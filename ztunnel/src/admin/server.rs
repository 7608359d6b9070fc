//! The admin server (upstream `localhost:15000`): `/config_dump`, `/logging`,
//! `/quitquitquit` and an index at `/`.
//!
//! Only loopback peers are served: a request from any other address gets 403, so the admin
//! endpoints stay private even if the server is bound to a wildcard address by mistake.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Bytes;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::config_dump::config_dump;
use super::logging::LogLevel;
use super::serve::{APPLICATION_JSON, Handler, HttpListener, HttpOptions, HttpResponse};
use super::serve::{is_get, method_not_allowed, not_found, parse_query, response, text};
use crate::identity::IdentityManager;
use crate::state::StateHandle;

/// The index served at `/`.
const INDEX: &str = "\
ztunnel admin endpoints:
  GET  /config_dump   workloads, services, policies, certificates and configuration (JSON)
  POST /logging       show the log level; ?level=<spec> sets it (e.g. info,access=debug), \
?reset restores the initial one
  POST /quitquitquit  shut down gracefully
";

/// What the admin endpoints read and act on.
pub struct AdminInputs {
    /// The mesh state, dumped by `/config_dump`.
    pub state: StateHandle,
    /// The workload certificates, dumped by `/config_dump`.
    pub identities: Arc<IdentityManager>,
    /// The trust roots, dumped as `rootCerts` of every certificate.
    pub roots: Vec<CertificateDer<'static>>,
    /// A serialisable summary of the effective configuration, dumped as `config`.
    pub config: serde_json::Value,
    /// The log filter `/logging` reads and changes; its value when the server is created is
    /// what `?reset` restores.
    pub log_level: Arc<dyn LogLevel>,
    /// Cancelled by `POST /quitquitquit` to start a graceful shutdown of the proxy.
    pub quit: CancellationToken,
    /// The live state of the in-pod proxies, dumped as `workloadState` once set.
    pub workload_state: WorkloadStateSource,
}

/// Where `/config_dump` reads the in-pod proxies' state from (set once they exist).
pub type WorkloadStateSource =
    Arc<std::sync::OnceLock<Box<dyn Fn() -> serde_json::Value + Send + Sync>>>;

impl fmt::Debug for AdminInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminInputs")
            .field("roots", &self.roots.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Routes and answers admin requests.
pub(super) struct AdminHandler {
    inputs: AdminInputs,
    /// The log filter at start-up, restored by `POST /logging?reset`.
    initial_level: String,
}

impl Handler for AdminHandler {
    fn handle(&self, request: Request<Bytes>, peer: SocketAddr) -> HttpResponse {
        if !peer.ip().to_canonical().is_loopback() {
            tracing::warn!(%peer, "refused admin request from a non-loopback address");
            return text(
                StatusCode::FORBIDDEN,
                "the admin server only serves localhost\n",
            );
        }
        let method = request.method();
        match request.uri().path() {
            "/" if is_get(method) => text(StatusCode::OK, INDEX),
            "/" => method_not_allowed("GET"),
            "/config_dump" if is_get(method) => self.config_dump(),
            "/config_dump" => method_not_allowed("GET"),
            "/logging" if method == Method::POST => self.logging(request.uri().query()),
            "/logging" => method_not_allowed("POST"),
            "/quitquitquit" if method == Method::POST => {
                tracing::info!(%peer, "shutdown requested through /quitquitquit");
                self.inputs.quit.cancel();
                text(StatusCode::OK, "shutting down\n")
            }
            "/quitquitquit" => method_not_allowed("POST"),
            path => not_found(path),
        }
    }
}

impl AdminHandler {
    /// A handler for `inputs`; the current log level becomes the one `?reset` restores.
    pub(super) fn new(inputs: AdminInputs) -> Self {
        let initial_level = inputs.log_level.current();
        Self {
            inputs,
            initial_level,
        }
    }

    /// `GET /config_dump`.
    fn config_dump(&self) -> HttpResponse {
        let dump = config_dump(
            &self.inputs.state.current(),
            &self.inputs.identities.certificates(),
            &self.inputs.roots,
            &self.inputs.config,
        );
        let mut dump = dump;
        if let (Some(source), Some(map)) = (self.inputs.workload_state.get(), dump.as_object_mut())
        {
            map.insert("workloadState".into(), source());
        }
        match serde_json::to_vec_pretty(&dump) {
            Ok(mut body) => {
                body.push(b'\n');
                response(StatusCode::OK, APPLICATION_JSON, body)
            }
            Err(error) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("config_dump: {error}\n"),
            ),
        }
    }

    /// `POST /logging[?level=<spec>|?reset]`.
    fn logging(&self, query: Option<&str>) -> HttpResponse {
        let Some(params) = parse_query(query.unwrap_or_default()) else {
            return text(StatusCode::BAD_REQUEST, "malformed query string\n");
        };
        let mut level = None;
        let mut reset = false;
        for (key, value) in params {
            match key.as_str() {
                "level" => level = Some(value),
                "reset" => reset = true,
                other => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}; use level=<spec> or reset\n"),
                    );
                }
            }
        }
        let log_level = &self.inputs.log_level;
        let result = match (level, reset) {
            (None, false) => return current_level(log_level.as_ref()),
            (Some(_), true) => Err("use either level=<spec> or reset, not both".to_owned()),
            (Some(spec), false) if spec.trim().is_empty() => {
                Err("level must not be empty".to_owned())
            }
            (Some(spec), false) => log_level.set(spec.trim()),
            (None, true) => log_level.set(&self.initial_level),
        };
        match result {
            Ok(()) => {
                tracing::info!(level = %log_level.current(), "log level changed");
                current_level(log_level.as_ref())
            }
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        }
    }
}

/// 200 with the current log level.
fn current_level(level: &dyn LogLevel) -> HttpResponse {
    text(
        StatusCode::OK,
        format!("current log level is {}\n", level.current()),
    )
}

/// The admin server. Bind it on a loopback address (upstream: `localhost:15000`); peers that
/// are not loopback are refused with 403 regardless.
pub struct AdminServer {
    listener: HttpListener,
    handler: AdminHandler,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("listener", &self.listener)
            .field("inputs", &self.handler.inputs)
            .finish()
    }
}

impl AdminServer {
    /// Binds `addr`. The current log level is recorded here as the one `?reset` restores.
    pub async fn new(addr: SocketAddr, inputs: AdminInputs) -> io::Result<Self> {
        Ok(Self {
            listener: HttpListener::bind(addr).await?,
            handler: AdminHandler::new(inputs),
        })
    }

    /// Replaces the default [`HttpOptions`].
    pub fn with_options(mut self, options: HttpOptions) -> Self {
        self.listener.options = options;
        self
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.listener.address()
    }

    /// Serves until `shutdown` (which may be the same token as [`AdminInputs::quit`]: the
    /// `/quitquitquit` response is still delivered).
    pub async fn run(self, shutdown: CancellationToken) {
        let handler = Arc::new(self.handler);
        self.listener.serve("admin", handler, shutdown).await;
    }
}
