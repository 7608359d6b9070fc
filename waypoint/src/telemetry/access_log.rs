//! Envoy/Istio-style HTTP access logs: one [`AccessLogEntry`] per finished request, rendered
//! in Istio's default JSON (`accessLogEncoding: JSON`) or TEXT format and written by an
//! [`AccessLog`] sink.
//!
//! Renderings follow Envoy's:
//! - JSON: exactly Istio's keys (`EnvoyJSONLogFormatIstio`), one object per line; absent values
//!   are `null`; `response_code`, `bytes_received`, `bytes_sent` and `duration` are numbers;
//!   `upstream_service_time` is a string, as Envoy takes it from the
//!   `x-envoy-upstream-service-time` header (`"4"`);
//! - TEXT: Istio's `EnvoyTextLogFormat` template; absent values print `-`;
//! - `start_time` is RFC 3339 UTC with milliseconds, `2024-01-01T00:00:00.000Z`; durations are
//!   whole milliseconds.
//!
//! Values come from request headers, so the renderings escape them: JSON string escaping, and in
//! TEXT control characters are written as `\n`, `\r`, `\t` or `\xNN` so that one entry is always
//! one line.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Uri, Version};

use super::labels::ResponseFlags;

/// The JSON keys of an entry, in the order they are written (Istio's default JSON format).
pub const JSON_KEYS: [&str; 24] = [
    "start_time",
    "route_name",
    "method",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "response_code_details",
    "connection_termination_details",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "request_id",
    "authority",
    "upstream_host",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "requested_server_name",
    "upstream_transport_failure_reason",
    "upstream_cluster",
];

/// The access log record of one request (Envoy's command operators in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `%START_TIME%`: when the first byte of the request was received.
    pub start_time: SystemTime,
    /// `%ROUTE_NAME%`: the name of the matched route.
    pub route_name: Option<String>,
    /// `%REQ(:METHOD)%`.
    pub method: Option<Method>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`: the path before any rewrite, with the query.
    pub path: Option<String>,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: Option<Version>,
    /// `%RESPONSE_CODE%`: the status sent downstream; 0 when no response was sent.
    pub response_code: u16,
    /// `%RESPONSE_FLAGS%`: `-` when none.
    pub response_flags: ResponseFlags,
    /// `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`, `route_not_found`.
    pub response_code_details: Option<String>,
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub connection_termination_details: Option<String>,
    /// `%BYTES_RECEIVED%`: request body bytes received from downstream.
    pub bytes_received: u64,
    /// `%BYTES_SENT%`: response body bytes sent downstream.
    pub bytes_sent: u64,
    /// `%DURATION%`: from the first request byte to the last response byte.
    pub duration: Duration,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: time spent in the upstream.
    pub upstream_service_time: Option<Duration>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub x_forwarded_for: Option<String>,
    /// `%REQ(USER-AGENT)%`.
    pub user_agent: Option<String>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub request_id: Option<String>,
    /// `%REQ(:AUTHORITY)%`.
    pub authority: Option<String>,
    /// `%UPSTREAM_HOST%`: the endpoint the request was sent to, e.g. `10.0.0.5:9080`.
    pub upstream_host: Option<String>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the client connected to (the original
    /// destination carried by HBONE, e.g. the service VIP and port).
    pub downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's address.
    pub downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%`: the SNI of the downstream TLS handshake.
    pub requested_server_name: Option<String>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub upstream_transport_failure_reason: Option<String>,
    /// `%UPSTREAM_CLUSTER%`, e.g. `inbound-vip|9080|http|reviews.default.svc.cluster.local`.
    pub upstream_cluster: Option<String>,
}

/// A rendered field value.
enum Value<'a> {
    /// Absent: `null` / `-`.
    Null,
    /// A number.
    Num(u64),
    /// A string.
    Str(&'a str),
    /// A string built for the occasion.
    Owned(String),
}

/// `value` as a string field, `Null` when absent.
fn opt_str(value: Option<&str>) -> Value<'_> {
    value.map_or(Value::Null, Value::Str)
}

/// `value` (a displayable) as a string field, `Null` when absent.
fn opt_display(value: Option<impl std::fmt::Display>) -> Value<'static> {
    value.map_or(Value::Null, |v| Value::Owned(v.to_string()))
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Envoy's `%PROTOCOL%` rendering of an HTTP version.
pub fn protocol_str(version: Version) -> &'static str {
    if version == Version::HTTP_09 {
        "HTTP/0.9"
    } else if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else if version == Version::HTTP_11 {
        "HTTP/1.1"
    } else if version == Version::HTTP_2 {
        "HTTP/2"
    } else if version == Version::HTTP_3 {
        "HTTP/3"
    } else {
        "-"
    }
}

/// The value of header `name`, if present (invalid UTF-8 replaced).
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl AccessLogEntry {
    /// An entry for a request that started at `start_time`, with every other field absent or
    /// zero and no response flags.
    pub fn new(start_time: SystemTime) -> Self {
        Self {
            start_time,
            route_name: None,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: None,
            connection_termination_details: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            upstream_transport_failure_reason: None,
            upstream_cluster: None,
        }
    }

    /// Fills the request fields from a request head as received from downstream: method,
    /// path (`x-envoy-original-path` if set, else the URI's path and query), protocol,
    /// authority (the URI's, else `Host`), `x-forwarded-for`, `user-agent`, `x-request-id`.
    pub fn set_request(
        &mut self,
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
    ) {
        self.method = Some(method.clone());
        self.path = header(headers, "x-envoy-original-path")
            .or_else(|| uri.path_and_query().map(|pq| pq.as_str().to_owned()));
        self.protocol = Some(version);
        self.authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header(headers, "host"));
        self.x_forwarded_for = header(headers, "x-forwarded-for");
        self.user_agent = header(headers, "user-agent");
        self.request_id = header(headers, "x-request-id");
    }

    /// The fields in [`JSON_KEYS`] order.
    fn fields(&self) -> [(&'static str, Value<'_>); 24] {
        [
            (
                "start_time",
                Value::Owned(format_rfc3339_millis(self.start_time)),
            ),
            ("route_name", opt_str(self.route_name.as_deref())),
            ("method", opt_str(self.method.as_ref().map(Method::as_str))),
            ("path", opt_str(self.path.as_deref())),
            ("protocol", opt_str(self.protocol.map(protocol_str))),
            ("response_code", Value::Num(u64::from(self.response_code))),
            (
                "response_flags",
                Value::Owned(self.response_flags.to_string()),
            ),
            (
                "response_code_details",
                opt_str(self.response_code_details.as_deref()),
            ),
            (
                "connection_termination_details",
                opt_str(self.connection_termination_details.as_deref()),
            ),
            ("bytes_received", Value::Num(self.bytes_received)),
            ("bytes_sent", Value::Num(self.bytes_sent)),
            ("duration", Value::Num(millis(self.duration))),
            (
                "upstream_service_time",
                opt_display(self.upstream_service_time.map(millis)),
            ),
            ("x_forwarded_for", opt_str(self.x_forwarded_for.as_deref())),
            ("user_agent", opt_str(self.user_agent.as_deref())),
            ("request_id", opt_str(self.request_id.as_deref())),
            ("authority", opt_str(self.authority.as_deref())),
            ("upstream_host", opt_str(self.upstream_host.as_deref())),
            (
                "upstream_local_address",
                opt_display(self.upstream_local_address),
            ),
            (
                "downstream_local_address",
                opt_display(self.downstream_local_address),
            ),
            (
                "downstream_remote_address",
                opt_display(self.downstream_remote_address),
            ),
            (
                "requested_server_name",
                opt_str(self.requested_server_name.as_deref()),
            ),
            (
                "upstream_transport_failure_reason",
                opt_str(self.upstream_transport_failure_reason.as_deref()),
            ),
            (
                "upstream_cluster",
                opt_str(self.upstream_cluster.as_deref()),
            ),
        ]
    }

    /// The JSON form: one object on one line with exactly [`JSON_KEYS`], in that order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(768);
        out.push('{');
        for (i, (key, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, key);
            out.push(':');
            match value {
                Value::Null => out.push_str("null"),
                Value::Num(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Str(s) => push_json_str(&mut out, s),
                Value::Owned(s) => push_json_str(&mut out, &s),
            }
        }
        out.push('}');
        out
    }

    /// The TEXT form, Istio's default template:
    ///
    /// ```text
    /// [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    /// %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    /// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    /// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    /// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    /// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    /// %REQUESTED_SERVER_NAME% %ROUTE_NAME%
    /// ```
    ///
    /// on one line (without the trailing newline), absent values printed as `-`.
    pub fn to_text(&self) -> String {
        let [
            (_, start_time),
            (_, route_name),
            (_, method),
            (_, path),
            (_, protocol),
            (_, response_code),
            (_, response_flags),
            (_, response_code_details),
            (_, connection_termination_details),
            (_, bytes_received),
            (_, bytes_sent),
            (_, duration),
            (_, upstream_service_time),
            (_, x_forwarded_for),
            (_, user_agent),
            (_, request_id),
            (_, authority),
            (_, upstream_host),
            (_, upstream_local_address),
            (_, downstream_local_address),
            (_, downstream_remote_address),
            (_, requested_server_name),
            (_, upstream_transport_failure_reason),
            (_, upstream_cluster),
        ] = self.fields();
        let mut out = String::with_capacity(512);
        out.push('[');
        push_text(&mut out, &start_time);
        out.push_str("] \"");
        let sequence = [
            (method, " "),
            (path, " "),
            (protocol, "\" "),
            (response_code, " "),
            (response_flags, " "),
            (response_code_details, " "),
            (connection_termination_details, " \""),
            (upstream_transport_failure_reason, "\" "),
            (bytes_received, " "),
            (bytes_sent, " "),
            (duration, " "),
            (upstream_service_time, " \""),
            (x_forwarded_for, "\" \""),
            (user_agent, "\" \""),
            (request_id, "\" \""),
            (authority, "\" \""),
            (upstream_host, "\" "),
            (upstream_cluster, " "),
            (upstream_local_address, " "),
            (downstream_local_address, " "),
            (downstream_remote_address, " "),
            (requested_server_name, " "),
            (route_name, ""),
        ];
        for (value, separator) in sequence {
            push_text(&mut out, &value);
            out.push_str(separator);
        }
        out
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a TEXT value: `-` when absent, control characters escaped.
fn push_text(out: &mut String, value: &Value<'_>) {
    let s = match value {
        Value::Null => return out.push('-'),
        Value::Num(n) => {
            let _ = write!(out, "{n}");
            return;
        }
        Value::Str(s) => s,
        Value::Owned(s) => s.as_str(),
    };
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are within [1, 31] / [1, 12] by construction.
    let (month, day) = (
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    );
    (year, month, day)
}

/// `t` as RFC 3339 in UTC with milliseconds, Envoy's `%START_TIME%` default:
/// `2024-01-01T00:00:00.000Z`. Sub-millisecond parts are truncated (towards the past).
pub fn format_rfc3339_millis(t: SystemTime) -> String {
    let total_millis: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_millis()).unwrap_or(i128::MAX),
        // Before the epoch: round towards the past so that the fraction is non-negative.
        Err(e) => {
            let nanos = i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX);
            -((nanos + 999_999) / 1_000_000)
        }
    };
    let secs = total_millis.div_euclid(1000);
    let ms = total_millis.rem_euclid(1000);
    let days = i64::try_from(secs.div_euclid(86_400)).unwrap_or(0);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// The encoding of access log lines (Istio's `accessLogEncoding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessLogFormat {
    /// One JSON object per line ([`AccessLogEntry::to_json`]).
    #[default]
    Json,
    /// Istio's TEXT template ([`AccessLogEntry::to_text`]).
    Text,
}

/// An access log format name that is neither `json` nor `text`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown access log format {0:?}: expected \"json\" or \"text\"")]
pub struct UnknownFormat(pub String);

impl FromStr for AccessLogFormat {
    type Err = UnknownFormat;

    /// Parses `json` or `text`, in any case (Istio spells them `JSON` / `TEXT`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else if s.eq_ignore_ascii_case("text") {
            Ok(Self::Text)
        } else {
            Err(UnknownFormat(s.to_owned()))
        }
    }
}

impl AccessLogFormat {
    /// Renders `entry` in this format (one line, without the newline).
    pub fn render(self, entry: &AccessLogEntry) -> String {
        match self {
            Self::Json => entry.to_json(),
            Self::Text => entry.to_text(),
        }
    }
}

/// Where lines go.
enum Sink {
    /// Nowhere.
    Disabled,
    /// A writer, e.g. stdout. Locked for one `write_all` + `flush` per line.
    Writer(Mutex<BufWriter<Box<dyn Write + Send>>>),
    /// Memory, for tests.
    Memory(Arc<Mutex<Vec<String>>>),
}

/// The access log sink of one waypoint: renders each entry in its format and writes it as one
/// line.
///
/// Lines are rendered before the lock is taken; the lock covers one buffered write and a flush,
/// so an entry is never interleaved with another and is visible as soon as the request ends.
/// Writing is synchronous: a writer that blocks (a full stdout pipe) delays the request's
/// completion, as with Envoy's file sink under back-pressure. Write errors do not fail the
/// request; they are counted ([`AccessLog::write_errors`]) and the first is logged.
pub struct AccessLog {
    /// The encoding of lines.
    format: AccessLogFormat,
    /// The destination.
    sink: Sink,
    /// Lines that could not be written.
    errors: AtomicU64,
}

/// Read access to the lines of an [`AccessLog::memory`] sink.
#[derive(Clone, Debug, Default)]
pub struct MemoryLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl MemoryLog {
    /// The lines written so far, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Forgets the lines written so far.
    pub fn clear(&self) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = match self.sink {
            Sink::Disabled => "disabled",
            Sink::Writer(_) => "writer",
            Sink::Memory(_) => "memory",
        };
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .field("sink", &sink)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    fn with_sink(format: AccessLogFormat, sink: Sink) -> Self {
        Self {
            format,
            sink,
            errors: AtomicU64::new(0),
        }
    }

    /// A sink writing to standard output (the binary's default).
    pub fn stdout(format: AccessLogFormat) -> Self {
        Self::writer(format, io::stdout())
    }

    /// A sink writing to `writer`.
    pub fn writer(format: AccessLogFormat, writer: impl Write + Send + 'static) -> Self {
        let boxed: Box<dyn Write + Send> = Box::new(writer);
        Self::with_sink(format, Sink::Writer(Mutex::new(BufWriter::new(boxed))))
    }

    /// A JSON sink keeping lines in memory (unbounded: for tests), and the handle to read them.
    /// Use [`AccessLog::with_format`] for TEXT.
    pub fn memory() -> (Self, MemoryLog) {
        let handle = MemoryLog::default();
        let log = Self::with_sink(AccessLogFormat::Json, Sink::Memory(handle.lines.clone()));
        (log, handle)
    }

    /// A sink that drops every entry.
    pub fn disabled() -> Self {
        Self::with_sink(AccessLogFormat::Json, Sink::Disabled)
    }

    /// The same sink with another format.
    #[must_use]
    pub fn with_format(mut self, format: AccessLogFormat) -> Self {
        self.format = format;
        self
    }

    /// The format of lines.
    pub fn format(&self) -> AccessLogFormat {
        self.format
    }

    /// Whether entries are written at all (callers may skip building them otherwise).
    pub fn is_enabled(&self) -> bool {
        !matches!(self.sink, Sink::Disabled)
    }

    /// The number of lines that could not be written.
    pub fn write_errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Writes `entry` as one line.
    pub fn log(&self, entry: &AccessLogEntry) {
        match &self.sink {
            Sink::Disabled => {}
            Sink::Memory(lines) => {
                let line = self.format.render(entry);
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
            Sink::Writer(writer) => {
                let mut line = self.format.render(entry);
                line.push('\n');
                let result = {
                    let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
                    w.write_all(line.as_bytes()).and_then(|()| w.flush())
                };
                if let Err(error) = result
                    && self.errors.fetch_add(1, Ordering::Relaxed) == 0
                {
                    tracing::warn!(%error, "cannot write access log; further failures are only counted");
                }
            }
        }
    }
}
