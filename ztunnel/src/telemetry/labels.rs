//! Istio's standard TCP label set (`CommonTrafficLabels` upstream) and how it is derived from
//! the mesh state of one connection.
//!
//! Conventions follow Istio and upstream ztunnel:
//! - every value that is not known is the string `unknown` (never empty);
//! - `*_workload` is the owning controller (`workload_name`), `*_app` / `*_canonical_service`
//!   the canonical name, `*_version` / `*_canonical_revision` the canonical revision;
//! - principals are SPIFFE URIs (`spiffe://td/ns/x/sa/y`) and only reported for mutual TLS,
//!   where they were authenticated by the handshake; plaintext reports `unknown`;
//! - `destination_service*` come from the service the client addressed, if any.

use std::fmt;

use hbone::Identity;

use crate::state::service::Service;
use crate::state::workload::Workload;

/// The value of a label that is not known.
pub const UNKNOWN: &str = "unknown";

/// Which side of the connection reports the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The proxy of the client (outbound traffic).
    Source,
    /// The proxy of the server (inbound traffic).
    Destination,
}

impl Reporter {
    /// The label value: `source` or `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// The application protocol as reported in `request_protocol`. ztunnel is L4-only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// Opaque TCP.
    #[default]
    Tcp,
}

impl RequestProtocol {
    /// The label value: `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
        }
    }
}

/// Why a connection ended badly, as reported in `response_flags` (ztunnel's set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// Nothing to report: `-`.
    #[default]
    None,
    /// Denied by authorization policy: `DENY`.
    Deny,
    /// The upstream connection could not be established: `CONNECT`.
    Connect,
    /// The TLS handshake failed: `TLS_FAILURE`.
    TlsFailure,
    /// The HTTP/2 handshake failed: `H2_HANDSHAKE_FAILURE`.
    H2HandshakeFailure,
    /// Refused by network policy: `NETWORK_POLICY`.
    NetworkPolicy,
    /// No certificate could be obtained for the identity: `IDENTITY_ERROR`.
    IdentityError,
    /// The peer certificate is revoked: `CERT_REVOKED`.
    CertRevoked,
    /// Any other flag, rendered as given (e.g. Envoy-style `UH`, `NR`).
    Other(&'static str),
}

impl ResponseFlags {
    /// The label value (`-` when there is nothing to report).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::Connect => "CONNECT",
            Self::TlsFailure => "TLS_FAILURE",
            Self::H2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            Self::NetworkPolicy => "NETWORK_POLICY",
            Self::IdentityError => "IDENTITY_ERROR",
            Self::CertRevoked => "CERT_REVOKED",
            Self::Other(flag) => flag,
        }
    }
}

impl From<&'static str> for ResponseFlags {
    /// Maps a flag string to its variant; `""` and `-` are [`ResponseFlags::None`], unknown
    /// strings are kept as [`ResponseFlags::Other`].
    fn from(flag: &'static str) -> Self {
        match flag {
            "" | "-" => Self::None,
            "DENY" => Self::Deny,
            "CONNECT" => Self::Connect,
            "TLS_FAILURE" => Self::TlsFailure,
            "H2_HANDSHAKE_FAILURE" => Self::H2HandshakeFailure,
            "NETWORK_POLICY" => Self::NetworkPolicy,
            "IDENTITY_ERROR" => Self::IdentityError,
            "CERT_REVOKED" => Self::CertRevoked,
            other => Self::Other(other),
        }
    }
}

/// How the connection was secured, as reported in `connection_security_policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// Not mutual TLS (plaintext, or not known): `unknown`.
    #[default]
    Unknown,
    /// Mutual TLS (HBONE): `mutual_tls`.
    MutualTls,
}

impl SecurityPolicy {
    /// The label value: `mutual_tls` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => UNKNOWN,
            Self::MutualTls => "mutual_tls",
        }
    }
}

/// Istio's standard TCP metric labels for one connection, in Istio's order.
///
/// Every string field holds a non-empty value (`unknown` when not known). Build one with
/// [`ConnectionLabels::new`]; it is the key under which [`Metrics`](super::Metrics) caches its
/// counters, so connections with equal labels share a time series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionLabels {
    /// `reporter`: `source` (outbound) or `destination` (inbound).
    pub reporter: Reporter,
    /// `source_workload`: the client's owning controller, e.g. `sleep`.
    pub source_workload: String,
    /// `source_canonical_service`: the client's canonical name.
    pub source_canonical_service: String,
    /// `source_canonical_revision`: the client's canonical revision.
    pub source_canonical_revision: String,
    /// `source_workload_namespace`: the client's namespace.
    pub source_workload_namespace: String,
    /// `source_principal`: the client's SPIFFE identity, for mutual TLS only.
    pub source_principal: String,
    /// `source_app`: the client's canonical name.
    pub source_app: String,
    /// `source_version`: the client's canonical revision.
    pub source_version: String,
    /// `source_cluster`: the client's cluster id.
    pub source_cluster: String,
    /// `destination_service`: hostname of the addressed service.
    pub destination_service: String,
    /// `destination_service_namespace`: namespace of the addressed service.
    pub destination_service_namespace: String,
    /// `destination_service_name`: name of the addressed service.
    pub destination_service_name: String,
    /// `destination_workload`: the server's owning controller.
    pub destination_workload: String,
    /// `destination_canonical_service`: the server's canonical name.
    pub destination_canonical_service: String,
    /// `destination_canonical_revision`: the server's canonical revision.
    pub destination_canonical_revision: String,
    /// `destination_workload_namespace`: the server's namespace.
    pub destination_workload_namespace: String,
    /// `destination_principal`: the server's SPIFFE identity, for mutual TLS only.
    pub destination_principal: String,
    /// `destination_app`: the server's canonical name.
    pub destination_app: String,
    /// `destination_version`: the server's canonical revision.
    pub destination_version: String,
    /// `destination_cluster`: the server's cluster id.
    pub destination_cluster: String,
    /// `request_protocol`: always `tcp`.
    pub request_protocol: RequestProtocol,
    /// `response_flags`: `-` unless the connection failed.
    pub response_flags: ResponseFlags,
    /// `connection_security_policy`: `mutual_tls` or `unknown`.
    pub connection_security_policy: SecurityPolicy,
}

/// The number of labels in a [`ConnectionLabels`].
pub const LABEL_COUNT: usize = 23;

/// `value`, or `unknown` when it is empty.
fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_owned()
    } else {
        value.to_owned()
    }
}

/// The fields of one side (source or destination) taken from its workload.
struct Side {
    workload: String,
    canonical_service: String,
    canonical_revision: String,
    namespace: String,
    cluster: String,
}

impl Side {
    fn of(w: Option<&Workload>) -> Self {
        let get = |f: fn(&Workload) -> &str| or_unknown(w.map(f).unwrap_or_default());
        Self {
            workload: get(|w| &w.workload_name),
            canonical_service: get(|w| &w.canonical_name),
            canonical_revision: get(|w| &w.canonical_revision),
            namespace: get(|w| &w.namespace),
            cluster: get(|w| &w.cluster_id),
        }
    }
}

impl ConnectionLabels {
    /// Derives the labels of a connection.
    ///
    /// - `source` / `destination`: the workloads at each end, when known.
    /// - `source_identity`: the client identity proven by the mTLS handshake (inbound: the
    ///   peer certificate; outbound: the identity this proxy presented for the client).
    /// - `destination_identity`: the server identity verified by the handshake; when `None`,
    ///   the destination workload's identity is used (as upstream ztunnel does).
    /// - Principals are reported only when `security` is [`SecurityPolicy::MutualTls`];
    ///   otherwise they are `unknown` (nothing was authenticated).
    #[allow(clippy::too_many_arguments)] // Mirrors the inputs one by one; a struct adds nothing.
    pub fn new(
        reporter: Reporter,
        source: Option<&Workload>,
        source_identity: Option<&Identity>,
        destination: Option<&Workload>,
        destination_service: Option<&Service>,
        destination_identity: Option<&Identity>,
        security: SecurityPolicy,
        response_flags: ResponseFlags,
    ) -> Self {
        let mtls = security == SecurityPolicy::MutualTls;
        let principal = |id: Option<Identity>| match id {
            Some(id) if mtls => id.to_string(),
            _ => UNKNOWN.to_owned(),
        };
        let source_principal = principal(source_identity.cloned());
        let destination_principal = principal(
            destination_identity
                .cloned()
                .or_else(|| destination.map(Workload::identity)),
        );
        let svc =
            |f: fn(&Service) -> &str| or_unknown(destination_service.map(f).unwrap_or_default());
        let src = Side::of(source);
        let dst = Side::of(destination);
        Self {
            reporter,
            source_workload: src.workload,
            source_app: src.canonical_service.clone(),
            source_canonical_service: src.canonical_service,
            source_version: src.canonical_revision.clone(),
            source_canonical_revision: src.canonical_revision,
            source_workload_namespace: src.namespace,
            source_principal,
            source_cluster: src.cluster,
            destination_service: svc(|s| &s.hostname),
            destination_service_namespace: svc(|s| &s.namespace),
            destination_service_name: svc(|s| &s.name),
            destination_workload: dst.workload,
            destination_app: dst.canonical_service.clone(),
            destination_canonical_service: dst.canonical_service,
            destination_version: dst.canonical_revision.clone(),
            destination_canonical_revision: dst.canonical_revision,
            destination_workload_namespace: dst.namespace,
            destination_principal,
            destination_cluster: dst.cluster,
            request_protocol: RequestProtocol::Tcp,
            response_flags,
            connection_security_policy: security,
        }
    }

    /// The same labels with other response flags (e.g. for the close of a failed connection).
    pub fn with_response_flags(mut self, flags: ResponseFlags) -> Self {
        self.response_flags = flags;
        self
    }

    /// The `(name, value)` pairs in Istio's order, as exported.
    pub fn pairs(&self) -> [(&'static str, &str); LABEL_COUNT] {
        [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &self.source_workload),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_canonical_revision", &self.source_canonical_revision),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &self.source_app),
            ("source_version", &self.source_version),
            ("source_cluster", &self.source_cluster),
            ("destination_service", &self.destination_service),
            (
                "destination_service_namespace",
                &self.destination_service_namespace,
            ),
            ("destination_service_name", &self.destination_service_name),
            ("destination_workload", &self.destination_workload),
            (
                "destination_canonical_service",
                &self.destination_canonical_service,
            ),
            (
                "destination_canonical_revision",
                &self.destination_canonical_revision,
            ),
            (
                "destination_workload_namespace",
                &self.destination_workload_namespace,
            ),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &self.destination_app),
            ("destination_version", &self.destination_version),
            ("destination_cluster", &self.destination_cluster),
            ("request_protocol", self.request_protocol.as_str()),
            ("response_flags", self.response_flags.as_str()),
            (
                "connection_security_policy",
                self.connection_security_policy.as_str(),
            ),
        ]
    }
}

impl fmt::Display for ConnectionLabels {
    /// Prometheus label syntax without braces: `reporter="source",source_workload="sleep",...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.pairs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        Ok(())
    }
}
