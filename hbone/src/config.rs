//! Knobs of the HBONE client, pool and server.
//!
//! The library owns its configuration: the node proxy maps its environment (`HTTP2_*`,
//! `POOL_*`, …) onto this struct. Every limit that a peer can push against is here, with the
//! reason for its default next to it.

use std::time::Duration;

use crate::error::Error;

/// Configuration shared by the HBONE client pool and server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// HTTP/2 initial stream window (bytes): how much one tunnel may have in flight before the
    /// receiver reads. Upstream env `HTTP2_STREAM_WINDOW_SIZE`. Default 4 MiB.
    pub window_size: u32,
    /// HTTP/2 connection window (bytes), shared by all streams of a connection. It must be larger
    /// than [`Config::window_size`] so a single stalled stream cannot block its siblings.
    /// Upstream env `HTTP2_CONNECTION_WINDOW_SIZE`. Default 16 MiB.
    pub connection_window_size: u32,
    /// Largest HTTP/2 frame we accept (bytes), 16 KiB ..= 16 MiB - 1. Upstream env
    /// `HTTP2_FRAME_SIZE`. Default 1 MiB.
    pub frame_size: u32,
    /// Client: the most tunnels multiplexed on one pooled connection before the pool opens
    /// another; never more than the server's `SETTINGS_MAX_CONCURRENT_STREAMS`. Upstream env
    /// `POOL_MAX_STREAMS_PER_CONNECTION`. Default 100.
    pub pool_max_streams_per_connection: u32,
    /// Client: a pooled connection with no tunnel for this long is closed. Upstream env
    /// `POOL_UNUSED_RELEASE_TIMEOUT`. Default 5 minutes.
    pub pool_unused_release_timeout: Duration,
    /// Server: `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to clients; bounds the tunnels (and
    /// their buffers) one client connection can hold open. Default 200.
    pub server_max_concurrent_streams: u32,
    /// Largest header block (bytes, HPACK-decoded) accepted from a peer. Default 16 KiB: HBONE
    /// requests carry a handful of short headers.
    pub max_header_list_size: u32,
    /// Deadline for the TLS handshake, on both sides. A client that connects and stays silent is
    /// disconnected after this. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Client: deadline for the TCP connect to the peer. Default 10 s.
    pub connect_timeout: Duration,
    /// Client: deadline for the server's answer to a `CONNECT`. Default 10 s.
    pub request_timeout: Duration,
    /// Interval between HTTP/2 PINGs on an otherwise healthy connection; `None` disables
    /// keepalive. Default 10 s.
    pub keepalive_interval: Option<Duration>,
    /// A PING without its acknowledgement for this long tears the connection down (and with it
    /// every tunnel it carries). Default 20 s.
    pub keepalive_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            window_size: 4 * 1024 * 1024,
            connection_window_size: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            pool_max_streams_per_connection: 100,
            pool_unused_release_timeout: Duration::from_secs(300),
            server_max_concurrent_streams: 200,
            max_header_list_size: 16 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Smallest legal HTTP/2 `SETTINGS_MAX_FRAME_SIZE` (RFC 9113 §6.5.2).
const MIN_FRAME_SIZE: u32 = 16 * 1024;
/// Largest legal HTTP/2 `SETTINGS_MAX_FRAME_SIZE`.
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Largest legal HTTP/2 flow-control window.
const MAX_WINDOW: u32 = (1 << 31) - 1;

impl Config {
    /// Checks the cross-field rules; the pool and server call this before using a config.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid =
            |field: &'static str, reason: String| Err(Error::InvalidConfig { field, reason });
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.frame_size) {
            return invalid(
                "frame_size",
                format!(
                    "{} is outside {MIN_FRAME_SIZE}..={MAX_FRAME_SIZE}",
                    self.frame_size
                ),
            );
        }
        if self.window_size == 0 || self.window_size > MAX_WINDOW {
            return invalid(
                "window_size",
                format!("{} is outside 1..={MAX_WINDOW}", self.window_size),
            );
        }
        if self.connection_window_size > MAX_WINDOW {
            return invalid(
                "connection_window_size",
                format!("{} is above {MAX_WINDOW}", self.connection_window_size),
            );
        }
        if self.connection_window_size <= self.window_size {
            return invalid(
                "connection_window_size",
                format!(
                    "{} must be larger than window_size {} so one stalled stream cannot block the \
                     connection",
                    self.connection_window_size, self.window_size
                ),
            );
        }
        if self.pool_max_streams_per_connection == 0 {
            return invalid(
                "pool_max_streams_per_connection",
                "must be at least 1".into(),
            );
        }
        if self.server_max_concurrent_streams == 0 {
            return invalid("server_max_concurrent_streams", "must be at least 1".into());
        }
        for (field, value) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be greater than zero".into());
            }
        }
        if self.keepalive_interval.is_some_and(|d| d.is_zero()) {
            return invalid(
                "keepalive_interval",
                "must be greater than zero (or disabled)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_matches_upstream_sizes() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.window_size, 4 << 20);
        assert_eq!(c.connection_window_size, 16 << 20);
        assert_eq!(c.frame_size, 1 << 20);
        assert_eq!(c.pool_max_streams_per_connection, 100);
    }

    #[test]
    fn invalid_fields_are_named() {
        type Mutate = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("frame_size", Box::new(|c| c.frame_size = 1000)),
            ("frame_size", Box::new(|c| c.frame_size = 1 << 24)),
            ("window_size", Box::new(|c| c.window_size = 0)),
            (
                "connection_window_size",
                Box::new(|c| c.connection_window_size = c.window_size),
            ),
            (
                "pool_max_streams_per_connection",
                Box::new(|c| c.pool_max_streams_per_connection = 0),
            ),
            (
                "tls_handshake_timeout",
                Box::new(|c| c.tls_handshake_timeout = Duration::ZERO),
            ),
            (
                "keepalive_interval",
                Box::new(|c| c.keepalive_interval = Some(Duration::ZERO)),
            ),
        ];
        for (want, mutate) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            match c.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
