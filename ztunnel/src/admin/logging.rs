//! Runtime log-level control for `POST /logging`.
//!
//! The admin server talks to a [`LogLevel`]; [`ReloadLogLevel`] is the real one, changing the
//! `EnvFilter` of the process's subscriber through a `tracing_subscriber` reload handle. Tests
//! pass a fake.

use std::fmt;

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
