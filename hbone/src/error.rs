//! The errors of the HBONE library.
//!
//! One enum for the tunnel as a whole, with the TLS, certificate and identity families kept in
//! their own enums ([`TlsError`], [`CertError`], [`IdentityError`]) and wrapped here.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cert::CertError;
use crate::identity::IdentityError;
use crate::tls::TlsError;

/// An error opening, serving or using an HBONE tunnel.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`crate::config::Config`] field has a value that cannot work.
    #[error("invalid hbone config field {field}: {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// The TCP connection to the peer failed.
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TCP connection to the peer did not complete within the deadline.
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The peer address.
        addr: SocketAddr,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The TLS handshake was refused by rustls or the peer (certificate rejected, protocol
    /// mismatch, …). [`crate::tls::classify`] tells SPIFFE-specific rejections apart.
    #[error("tls handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
    /// The TLS handshake failed at the transport (the peer closed, reset, …).
    #[error("tls handshake failed: {0}")]
    HandshakeIo(#[source] std::io::Error),
    /// The TLS handshake did not complete within the deadline.
    #[error("tls handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// TLS configuration or peer verification failed outside the handshake.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A certificate could not be loaded or issued.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A SPIFFE identity was malformed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The HTTP/2 layer failed (protocol error, reset, connection closed).
    #[error("http/2: {0}")]
    Http2(#[from] h2::Error),
    /// The server answered the `CONNECT` with a status other than 200.
    #[error("tunnel refused with status {0}")]
    Status(http::StatusCode),
    /// The server did not answer the `CONNECT` within the deadline.
    #[error("no response to CONNECT within {0:?}")]
    RequestTimeout(Duration),
    /// The `CONNECT` authority is not a valid `host:port`.
    #[error("invalid tunnel authority {0:?}")]
    InvalidAuthority(String),
    /// A header value could not be built or parsed.
    #[error("invalid {name} header: {reason}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Setting up the pooled connection this request was waiting for failed.
    #[error("connection to {addr} failed: {reason}")]
    PooledConnectFailed {
        /// The peer address.
        addr: SocketAddr,
        /// The setup error, as reported to the request that ran the setup.
        reason: String,
    },
    /// The pooled connection went away (GOAWAY or close) before the tunnel could be opened, on
    /// every attempt.
    #[error("connection to {0} kept going away before the tunnel opened")]
    ConnectionLost(SocketAddr),
    /// An I/O error on an established tunnel.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Maps a tokio-rustls handshake error to [`Error::Handshake`] when rustls produced it, so
    /// callers can match the certificate error; transport errors stay [`Error::HandshakeIo`].
    pub(crate) fn from_handshake(err: std::io::Error) -> Self {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Error::Handshake(tls.clone()),
            None => Error::HandshakeIo(err),
        }
    }
}
