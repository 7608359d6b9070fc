//! Runtime log-level control for `POST /logging`.
//!
//! The admin server talks to a [`LogLevel`]; [`ReloadLogLevel`] is the real one, changing the
//! `EnvFilter` of the process's subscriber through a `tracing_subscriber` reload handle. Tests
//! pass a fake. [`install`] sets up the process's subscriber the way both binaries run it, so
//! that benchmarks measure the same per-event and per-span costs as the binaries.

use std::fmt;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The process's log filter, readable and replaceable at runtime.
pub trait LogLevel: Send + Sync + 'static {
    /// The current filter, in `RUST_LOG` syntax (e.g. `info,access=debug`).
    fn current(&self) -> String;

    /// Replaces the filter with `spec` (`RUST_LOG` syntax); on error the filter is unchanged
    /// and the message says what is wrong with `spec`.
    fn set(&self, spec: &str) -> Result<(), String>;
}

/// A [`LogLevel`] backed by a reload handle of an [`EnvFilter`] layer, e.g.
///
/// ```no_run
/// use tracing_subscriber::{EnvFilter, Registry, reload, prelude::*};
/// let (filter, handle) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new("info"));
/// tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer()).init();
/// let level = ztunnel::admin::ReloadLogLevel::new(handle);
/// ```
pub struct ReloadLogLevel<S = Registry> {
    handle: reload::Handle<EnvFilter, S>,
}

impl<S> ReloadLogLevel<S> {
    /// Wraps `handle`.
    pub fn new(handle: reload::Handle<EnvFilter, S>) -> Self {
        Self { handle }
    }
}

impl<S> fmt::Debug for ReloadLogLevel<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadLogLevel").finish_non_exhaustive()
    }
}

impl<S: 'static> LogLevel for ReloadLogLevel<S> {
    fn current(&self) -> String {
        self.handle
            .with_current(|filter| filter.to_string())
            .unwrap_or_else(|e| format!("<unavailable: {e}>"))
    }

    fn set(&self, spec: &str) -> Result<(), String> {
        let filter = EnvFilter::builder()
            .parse(spec)
            .map_err(|e| format!("invalid log level {spec:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Where the text log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output (`ztunnel`).
    Stdout,
    /// Standard error (`waypoint`, whose standard output belongs to its commands).
    Stderr,
}

/// Installs the process's global subscriber: an [`EnvFilter`] from `RUST_LOG`, or
/// `default_filter` when that is unset or invalid, replaceable at runtime through the returned
/// [`ReloadLogLevel`], in front of the text formatter writing to `stream`. Colours only when
/// `stream` is a terminal and `NO_COLOR` is unset.
///
/// # Errors
///
/// When the process already has a global subscriber.
pub fn install(default_filter: &str, stream: LogStream) -> Result<ReloadLogLevel, TryInitError> {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let terminal = match stream {
        LogStream::Stdout => std::io::stdout().is_terminal(),
        LogStream::Stderr => std::io::stderr().is_terminal(),
    };
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none();
    let text = tracing_subscriber::fmt::layer().with_ansi(ansi);
    let subscriber = tracing_subscriber::registry().with(filter);
    match stream {
        LogStream::Stdout => subscriber
            .with(text.with_writer(std::io::stdout))
            .try_init()?,
        LogStream::Stderr => subscriber
            .with(text.with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(ReloadLogLevel::new(handle))
}
