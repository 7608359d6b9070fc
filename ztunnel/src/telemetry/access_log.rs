//! Per-connection access log records (upstream ztunnel's `access` target).
//!
//! One [`AccessLog`] is written when a connection ends: `connection complete` on success,
//! `connection failed` with an `error` otherwise. It has two pure renderings, `key=value` text
//! ([`AccessLog::to_text`]) and one-line JSON ([`AccessLog::to_json`]), both with a fixed field
//! order and with absent fields left out; [`AccessLog::emit`] logs the text form through
//! `tracing` at target `access`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use hbone::Identity;

use super::labels::{ConnectionLabels, Reporter, SecurityPolicy, UNKNOWN};

/// The `tracing` target of access logs.
pub const TARGET: &str = "access";

/// Which way the connection went through this proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Arriving for a local workload (reporter `destination`).
    Inbound,
    /// Leaving a local workload (reporter `source`).
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl From<Reporter> for Direction {
    fn from(r: Reporter) -> Self {
        match r {
            Reporter::Source => Self::Outbound,
            Reporter::Destination => Self::Inbound,
        }
    }
}

/// The access log record of one connection.
///
/// `bytes_sent` counts bytes carried from the source towards the destination, `bytes_recv` the
/// bytes carried back, whatever the direction of the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// `src.addr`: the client's address.
    pub src_addr: SocketAddr,
    /// `src.workload`: the client's workload (pod) name.
    pub src_workload: Option<String>,
    /// `src.namespace`: the client's namespace.
    pub src_namespace: Option<String>,
    /// `src.identity`: the client's identity; set only for mutual TLS.
    pub src_identity: Option<Identity>,
    /// `src.cluster`: the client's cluster id.
    pub src_cluster: Option<String>,
    /// `dst.addr`: the address connected to (for HBONE, the tunnel endpoint).
    pub dst_addr: SocketAddr,
    /// `dst.hbone_addr`: the target inside the tunnel (the `CONNECT` authority), for HBONE.
    pub dst_hbone_addr: Option<String>,
    /// `dst.service`: hostname of the addressed service.
    pub dst_service: Option<String>,
    /// `dst.workload`: the server's workload (pod) name.
    pub dst_workload: Option<String>,
    /// `dst.namespace`: the server's namespace.
    pub dst_namespace: Option<String>,
    /// `dst.identity`: the server's identity; set only for mutual TLS.
    pub dst_identity: Option<Identity>,
    /// `dst.cluster`: the server's cluster id.
    pub dst_cluster: Option<String>,
    /// `direction`: `inbound` or `outbound`.
    pub direction: Direction,
    /// `bytes_sent`: bytes from source to destination.
    pub bytes_sent: u64,
    /// `bytes_recv`: bytes from destination to source.
    pub bytes_recv: u64,
    /// `duration`: how long the connection lasted, logged in whole milliseconds (`13ms`).
    pub duration: Duration,
    /// `error`: why the connection failed; `None` for success.
    pub error: Option<String>,
}

/// A label value, or `None` when it is `unknown`.
fn known(value: &str) -> Option<String> {
    (value != UNKNOWN && !value.is_empty()).then(|| value.to_owned())
}

impl AccessLog {
    /// A record with the addresses and direction set and every other field empty.
    pub fn new(direction: Direction, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        Self {
            src_addr,
            src_workload: None,
            src_namespace: None,
            src_identity: None,
            src_cluster: None,
            dst_addr,
            dst_hbone_addr: None,
            dst_service: None,
            dst_workload: None,
            dst_namespace: None,
            dst_identity: None,
            dst_cluster: None,
            direction,
            bytes_sent: 0,
            bytes_recv: 0,
            duration: Duration::ZERO,
            error: None,
        }
    }

    /// A record filled from a connection's metric labels: direction from the reporter,
    /// namespaces, clusters and the service, identities for mutual TLS only, and workloads from
    /// the canonical services (set `src_workload` / `dst_workload` to pod names if known).
    pub fn from_labels(
        labels: &ConnectionLabels,
        src_addr: SocketAddr,
        dst_addr: SocketAddr,
    ) -> Self {
        let mtls = labels.connection_security_policy == SecurityPolicy::MutualTls;
        let identity = |p: &str| {
            if mtls {
                p.parse::<Identity>().ok()
            } else {
                None
            }
        };
        Self {
            src_workload: known(&labels.source_canonical_service),
            src_namespace: known(&labels.source_workload_namespace),
            src_identity: identity(&labels.source_principal),
            src_cluster: known(&labels.source_cluster),
            dst_service: known(&labels.destination_service),
            dst_workload: known(&labels.destination_canonical_service),
            dst_namespace: known(&labels.destination_workload_namespace),
            dst_identity: identity(&labels.destination_principal),
            dst_cluster: known(&labels.destination_cluster),
            ..Self::new(labels.reporter.into(), src_addr, dst_addr)
        }
    }

    /// `connection complete`, or `connection failed` when there is an error.
    pub fn message(&self) -> &'static str {
        if self.error.is_some() {
            "connection failed"
        } else {
            "connection complete"
        }
    }

    /// The duration as logged: whole milliseconds, e.g. `13ms`.
    pub fn duration_str(&self) -> String {
        format!("{}ms", self.duration.as_millis())
    }

    /// The fields in their fixed order, absent ones left out.
    fn fields(&self) -> Vec<(&'static str, Value)> {
        let s = |v: &Option<String>| v.clone().map(Value::Str);
        let id = |v: &Option<Identity>| v.as_ref().map(|i| Value::Str(i.to_string()));
        [
            ("src.addr", Some(Value::Str(self.src_addr.to_string()))),
            ("src.workload", s(&self.src_workload)),
            ("src.namespace", s(&self.src_namespace)),
            ("src.identity", id(&self.src_identity)),
            ("src.cluster", s(&self.src_cluster)),
            ("dst.addr", Some(Value::Str(self.dst_addr.to_string()))),
            ("dst.hbone_addr", s(&self.dst_hbone_addr)),
            ("dst.service", s(&self.dst_service)),
            ("dst.workload", s(&self.dst_workload)),
            ("dst.namespace", s(&self.dst_namespace)),
            ("dst.identity", id(&self.dst_identity)),
            ("dst.cluster", s(&self.dst_cluster)),
            (
                "direction",
                Some(Value::Str(self.direction.as_str().to_owned())),
            ),
            ("bytes_sent", Some(Value::Num(self.bytes_sent))),
            ("bytes_recv", Some(Value::Num(self.bytes_recv))),
            ("duration", Some(Value::Str(self.duration_str()))),
            ("error", s(&self.error)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// The text form: the message, then `key=value` pairs in a fixed order; values containing
    /// spaces, quotes, `=` or control characters (or empty ones) are quoted and escaped.
    ///
    /// `connection complete src.addr=10.0.0.1:40000 ... duration=13ms`
    pub fn to_text(&self) -> String {
        let mut out = String::from(self.message());
        for (key, value) in self.fields() {
            match value {
                Value::Num(n) => {
                    let _ = write!(out, " {key}={n}");
                }
                Value::Str(s) if needs_quotes(&s) => {
                    let _ = write!(out, " {key}={s:?}");
                }
                Value::Str(s) => {
                    let _ = write!(out, " {key}={s}");
                }
            }
        }
        out
    }

    /// The JSON form, one object on one line, keys in a fixed order: `level` (`info` or
    /// `warn`), `scope` (`access`), `message`, then the fields as in [`AccessLog::to_text`]
    /// (byte counts as numbers, the duration as a string such as `"13ms"`).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let head = [
            ("level", Value::Str(self.level_str().to_owned())),
            ("scope", Value::Str(TARGET.to_owned())),
            ("message", Value::Str(self.message().to_owned())),
        ];
        for (i, (key, value)) in head.into_iter().chain(self.fields()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(key));
            out.push(':');
            match value {
                Value::Num(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Str(s) => out.push_str(&json_string(&s)),
            }
        }
        out.push('}');
        out
    }

    /// `info`, or `warn` for a failed connection.
    fn level_str(&self) -> &'static str {
        if self.error.is_some() { "warn" } else { "info" }
    }

    /// Logs the record at target `access`: INFO on success, WARN on failure, with the text
    /// form as the message.
    pub fn emit(&self) {
        let text = self.to_text();
        if self.error.is_some() {
            tracing::warn!(target: "access", "{text}");
        } else {
            tracing::info!(target: "access", "{text}");
        }
    }
}

/// A field value: numbers are unquoted in both forms.
enum Value {
    Str(String),
    Num(u64),
}

/// Whether a text value must be quoted to stay one token.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=' || c == '\\')
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    // Serializing a `str` cannot fail; the fallback is never taken.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}
