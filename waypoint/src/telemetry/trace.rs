//! Trace context of the inbound VIP listener's requests: W3C Trace Context and B3 propagation,
//! the sampling decision and the waypoint's span.
//!
//! Where it sits: the inbound VIP listener (`inbound-vip|<port>|http|<host>`) reads the
//! incoming context right after the request is sanitised ([`extract`]), decides whether the
//! request is sampled ([`sample`]), gives the request its own span id ([`RequestTrace`]) and,
//! in the filters phase, writes the context the upstream continues from
//! ([`RequestTrace::inject`]): the trace id is kept and the parent becomes the waypoint's span.
//! The log phase turns the finished request into a [`SpanRecord`] that the OTLP exporter
//! ([`super::otlp`]) sends when the request was sampled.
//!
//! Formats:
//! - W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case
//!   hex only, all-zero ids and version `ff` invalid) with `tracestate` passed through
//!   unchanged when the `traceparent` is valid. An invalid `traceparent` is treated as absent
//!   (and its `tracestate` dropped), as the W3C specification requires.
//! - B3 multi-header (`x-b3-traceid` 16 or 32 hex, `x-b3-spanid`, `x-b3-parentspanid`,
//!   `x-b3-sampled` `1`/`0`, `x-b3-flags: 1` = debug) and the single `b3` header
//!   (`<trace id>-<span id>[-<sampling>[-<parent span id>]]` or only `<sampling>`). Hex is
//!   accepted in either case, as Zipkin's receivers do.
//!
//! The parent context comes from the first valid one of `traceparent`, `b3`, `x-b3-*`. The
//! upstream gets the context in every format the request carried (an invalid header of a
//! format is replaced); a request that carried none gets W3C `traceparent`.
//!
//! The headers that carry ids (`traceparent`, `b3`, `x-b3-traceid`, `x-b3-spanid`,
//! `x-b3-parentspanid`) differ on every request, so they are written marked sensitive: an HTTP/2
//! upstream gets them as never-indexed literals (HPACK, RFC 7541 §6.2.3) and the connection's
//! header table keeps the entries that repeat. `x-b3-sampled`, `x-b3-flags` and `tracestate`
//! are indexed as usual.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::metrics::SpanCounters;
use super::otlp::{OtlpSettings, SpanExporter};

/// W3C `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The single B3 header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// B3 trace id.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 span id.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 parent span id.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 sampling decision.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 debug flag.
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Every trace header: what [`RequestTrace::inject`] replaces. The index of each is its bit in
/// [`TraceHeaders`] ([`trace_header_index`]).
const TRACE_HEADERS: [HeaderName; 8] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
];

/// Which trace headers a header map has, found in one pass over its names. Most requests carry
/// none or one of the eight, and a lookup by name hashes the name each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TraceHeaders(u8);

impl TraceHeaders {
    fn of(headers: &HeaderMap) -> Self {
        let mut bits = 0u8;
        for name in headers.keys() {
            if let Some(index) = trace_header_index(name.as_str()) {
                bits |= 1 << index;
            }
        }
        Self(bits)
    }

    /// Whether `name` (one of [`TRACE_HEADERS`]) is there.
    fn has(self, name: &HeaderName) -> bool {
        trace_header_index(name.as_str()).is_some_and(|index| self.0 & (1 << index) != 0)
    }
}

/// The index in [`TRACE_HEADERS`] of a (lower-case) header name.
fn trace_header_index(name: &str) -> Option<usize> {
    Some(match name {
        "traceparent" => 0,
        "tracestate" => 1,
        "b3" => 2,
        "x-b3-traceid" => 3,
        "x-b3-spanid" => 4,
        "x-b3-parentspanid" => 5,
        "x-b3-sampled" => 6,
        "x-b3-flags" => 7,
        _ => return None,
    })
}

/// The trace headers that carry ids (a new value on every request): written never-indexed (see
/// the module docs).
const ID_HEADERS: [HeaderName; 5] = [
    TRACEPARENT,
    B3,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
];

/// Istio's default sampling percentage (`meshConfig.defaultConfig.tracing.sampling`).
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// A span's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The span id (never zero).
    pub span_id: u64,
}

/// A valid W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The caller's span.
    pub context: SpanContext,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A valid B3 context (single or multi-header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct B3Context {
    /// The caller's span; `None` when only a sampling decision was sent.
    pub context: Option<SpanContext>,
    /// Whether the trace id had 16 hex digits (64 bits).
    pub short_trace_id: bool,
    /// The sampling decision, when sent.
    pub sampled: Option<bool>,
    /// Debug (`x-b3-flags: 1`, `d`): sampled, whatever the rate.
    pub debug: bool,
}

/// The propagation formats a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Formats {
    /// `traceparent`.
    pub w3c: bool,
    /// `b3`.
    pub b3_single: bool,
    /// `x-b3-*`.
    pub b3_multi: bool,
}

impl Formats {
    /// Whether none was carried.
    pub fn is_empty(self) -> bool {
        !(self.w3c || self.b3_single || self.b3_multi)
    }
}

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Incoming {
    /// The caller's span, from the first valid format; `None` starts a new trace.
    pub parent: Option<SpanContext>,
    /// The caller's sampling decision, when it sent one.
    pub sampled: Option<bool>,
    /// The caller asked for debug sampling (B3).
    pub debug: bool,
    /// Whether the B3 trace id of the parent was 64 bits.
    pub short_trace_id: bool,
    /// The `tracestate` to pass on (only with a valid `traceparent`).
    pub tracestate: Option<HeaderValue>,
    /// The formats carried (valid or not).
    pub formats: Formats,
}

/// Two lower-case hex digits.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    match digits {
        [high, low] => Some((nibble(*high)? << 4) | nibble(*low)?),
        _ => None,
    }
}

/// Parses a hex id of up to 32 digits (upper case only when `upper_ok`), refusing all zeros.
fn hex_id(digits: &[u8], upper_ok: bool) -> Option<u128> {
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    let mut value: u128 = 0;
    for &b in digits {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' if upper_ok => b - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(nibble);
    }
    (value != 0).then_some(value)
}

fn span_id(digits: &[u8], upper_ok: bool) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    hex_id(digits, upper_ok).and_then(|v| u64::try_from(v).ok())
}

/// Parses a W3C `traceparent`. `None` when invalid: wrong length or separators, non
/// lower-case hex, version `ff`, an all-zero trace or parent id, or a version-`00` value
/// with trailing data. A later version is read by its version-`00` prefix, as the
/// specification asks.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    if value.len() < 55 {
        return None;
    }
    match hex_byte(&value[0..2])? {
        0xff => return None,
        0 if value.len() != 55 => return None,
        0 => {}
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_id(&value[3..35], false)?;
    let span_id = span_id(&value[36..52], false)?;
    let flags = hex_byte(&value[53..55])?;
    Some(TraceParent {
        context: SpanContext { trace_id, span_id },
        flags,
    })
}

/// Writes the low `4 * out.len()` bits of `value` into `out` as lower-case hex digits, most
/// significant first (ids are formatted on every request; `format!` takes several times
/// longer).
pub fn put_hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Two 64-bit halves: a 128-bit shift per digit costs more than the digit.
    let (high, low) = out.split_at_mut(out.len().saturating_sub(16));
    let mut half = value as u64;
    for slot in low.iter_mut().rev() {
        *slot = DIGITS[(half & 0xF) as usize];
        half >>= 4;
    }
    let mut half = (value >> 64) as u64;
    for slot in high.iter_mut().rev() {
        *slot = DIGITS[(half & 0xF) as usize];
        half >>= 4;
    }
}

/// `value` as `N` lower-case hex digits (its low `4 * N` bits).
fn hex_string<const N: usize>(value: u128) -> String {
    let mut digits = [0u8; N];
    put_hex(&mut digits, value);
    ascii_string(&digits)
}

/// Formats a version-`00` `traceparent`.
pub fn format_traceparent(context: SpanContext, sampled: bool) -> String {
    // 2 + 32 + 16 + 2 digits and 3 dashes.
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut out[3..35], context.trace_id);
    put_hex(&mut out[36..52], u128::from(context.span_id));
    put_hex(&mut out[53..55], u128::from(u8::from(sampled)));
    ascii_string(&out)
}

/// `bytes` (hex digits and dashes) as a string.
fn ascii_string(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap_or_default()
}

/// A B3 trace id: 16 or 32 hex digits. Returns the id and whether it was short.
fn b3_trace_id(digits: &[u8]) -> Option<(u128, bool)> {
    match digits.len() {
        16 => hex_id(digits, true).map(|id| (id, true)),
        32 => hex_id(digits, true).map(|id| (id, false)),
        _ => None,
    }
}

/// A B3 sampling state: `1`/`true`, `0`/`false`, or `d` (debug, single header only).
fn b3_sampling(value: &[u8], single: bool) -> Option<(Option<bool>, bool)> {
    match value {
        b"1" => Some((Some(true), false)),
        b"0" => Some((Some(false), false)),
        b"true" if !single => Some((Some(true), false)),
        b"false" if !single => Some((Some(false), false)),
        b"d" if single => Some((Some(true), true)),
        _ => None,
    }
}

/// Parses the single `b3` header: `<trace id>-<span id>[-<sampling>[-<parent span id>]]` or
/// only `<sampling>` (`0`, `1`, `d`). `None` when invalid.
pub fn parse_b3_single(value: &[u8]) -> Option<B3Context> {
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    match parts.as_slice() {
        [sampling] => {
            let (sampled, debug) = b3_sampling(sampling, true)?;
            Some(B3Context {
                context: None,
                short_trace_id: false,
                sampled,
                debug,
            })
        }
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let (trace_id, short_trace_id) = b3_trace_id(trace)?;
            let span_id = span_id(span, true)?;
            let (sampled, debug) = match rest.first() {
                Some(s) => b3_sampling(s, true)?,
                None => (None, false),
            };
            if let Some(parent) = rest.get(1) {
                self::span_id(parent, true)?;
            }
            Some(B3Context {
                context: Some(SpanContext { trace_id, span_id }),
                short_trace_id,
                sampled,
                debug,
            })
        }
        _ => None,
    }
}

/// Parses the B3 multi-header context. `None` when invalid: ids of the wrong length or not
/// hex, a trace id without a span id (or the reverse), an unknown sampling value.
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<B3Context> {
    let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
    let debug = match get(&X_B3_FLAGS) {
        None => false,
        Some(b"1") => true,
        Some(b"0") => false,
        Some(_) => return None,
    };
    let sampled = match get(&X_B3_SAMPLED) {
        None => None,
        Some(v) => b3_sampling(v, false)?.0,
    };
    let context = match (get(&X_B3_TRACEID), get(&X_B3_SPANID)) {
        (None, None) => None,
        (Some(trace), Some(span)) => {
            let (trace_id, short) = b3_trace_id(trace)?;
            let span_id = span_id(span, true)?;
            if let Some(parent) = get(&X_B3_PARENTSPANID) {
                self::span_id(parent, true)?;
            }
            Some((SpanContext { trace_id, span_id }, short))
        }
        _ => return None,
    };
    Some(B3Context {
        context: context.map(|(c, _)| c),
        short_trace_id: context.is_some_and(|(_, short)| short),
        sampled: if debug { Some(true) } else { sampled },
        debug,
    })
}

/// Reads the trace context a request arrived with (see the module docs for precedence).
pub fn extract(headers: &HeaderMap) -> Incoming {
    let present = TraceHeaders::of(headers);
    let formats = Formats {
        w3c: present.has(&TRACEPARENT),
        b3_single: present.has(&B3),
        b3_multi: [&X_B3_TRACEID, &X_B3_SPANID, &X_B3_SAMPLED, &X_B3_FLAGS]
            .into_iter()
            .any(|name| present.has(name)),
    };
    let mut incoming = Incoming {
        formats,
        ..Incoming::default()
    };
    if formats.is_empty() {
        return incoming;
    }
    // More than one `traceparent` is invalid.
    let mut traceparents = headers.get_all(&TRACEPARENT).iter();
    if let (Some(value), None) = (traceparents.next(), traceparents.next())
        && let Some(parent) = parse_traceparent(value.as_bytes())
    {
        incoming.parent = Some(parent.context);
        incoming.sampled = Some(parent.flags & 1 == 1);
        incoming.tracestate = headers.get(&TRACESTATE).cloned();
        return incoming;
    }
    let b3 = headers
        .get(&B3)
        .and_then(|v| parse_b3_single(v.as_bytes()))
        .filter(|b3| b3.context.is_some() || !formats.b3_multi);
    let b3 = b3.or_else(|| formats.b3_multi.then(|| parse_b3_multi(headers)).flatten());
    if let Some(b3) = b3 {
        incoming.parent = b3.context;
        incoming.sampled = b3.sampled;
        incoming.debug = b3.debug;
        incoming.short_trace_id = b3.short_trace_id && b3.context.is_some();
    }
    incoming
}

/// The sampling decision: the caller's when it sent one (debug always samples), else a
/// random draw: `roll` (uniform in `[0, 100)`) below `percent` (clamped to `[0, 100]`).
pub fn sample(incoming: Option<bool>, debug: bool, percent: f64, roll: f64) -> bool {
    if debug {
        return true;
    }
    match incoming {
        Some(decision) => decision,
        None => roll < percent.clamp(0.0, 100.0),
    }
}

/// The waypoint's span of one request: its context, its parent and how to propagate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    /// The waypoint's span.
    pub context: SpanContext,
    /// The caller's span id; `None` when the waypoint started the trace.
    pub parent_span_id: Option<u64>,
    /// Whether the span is recorded and exported (and the flag sent upstream).
    pub sampled: bool,
    /// Debug sampling, passed on in B3.
    pub debug: bool,
    /// Write a 64-bit B3 trace id.
    short_trace_id: bool,
    /// The `tracestate` passed on.
    pub tracestate: Option<HeaderValue>,
    /// The formats written upstream.
    pub formats: Formats,
}

impl RequestTrace {
    /// Continues `incoming` (or starts a trace with `new_trace_id`) with the span
    /// `new_span_id`; `sampled` is the decision of [`sample`]. Zero ids are replaced by 1.
    pub fn start(incoming: Incoming, new_trace_id: u128, new_span_id: u64, sampled: bool) -> Self {
        let trace_id = incoming.parent.map_or(new_trace_id.max(1), |p| p.trace_id);
        let formats = if incoming.formats.is_empty() {
            Formats {
                w3c: true,
                ..Formats::default()
            }
        } else {
            incoming.formats
        };
        Self {
            context: SpanContext {
                trace_id,
                span_id: new_span_id.max(1),
            },
            parent_span_id: incoming.parent.map(|p| p.span_id),
            sampled,
            debug: incoming.debug,
            short_trace_id: incoming.short_trace_id && trace_id >> 64 == 0,
            tracestate: incoming.tracestate,
            formats,
        }
    }

    /// Replaces every trace header of `headers` with this span's context, in
    /// [`RequestTrace::formats`].
    pub fn inject(&self, headers: &mut HeaderMap) {
        let present = TraceHeaders::of(headers);
        for name in &TRACE_HEADERS {
            if present.has(name) {
                headers.remove(name);
            }
        }
        let mut put = |name: HeaderName, value: String| {
            // Hex digits and dashes are always a valid header value; the string's buffer
            // becomes the value's.
            if let Ok(mut value) = HeaderValue::try_from(value) {
                value.set_sensitive(ID_HEADERS.contains(&name));
                headers.insert(name, value);
            }
        };
        if self.formats.w3c {
            put(TRACEPARENT, format_traceparent(self.context, self.sampled));
        }
        if !(self.formats.b3_multi || self.formats.b3_single) {
            return self.inject_tracestate(headers);
        }
        let trace_id = if self.short_trace_id {
            hex_string::<16>(self.context.trace_id)
        } else {
            hex_string::<32>(self.context.trace_id)
        };
        let span_id = hex_string::<16>(u128::from(self.context.span_id));
        if self.formats.b3_multi {
            put(X_B3_TRACEID, trace_id.clone());
            put(X_B3_SPANID, span_id.clone());
            if let Some(parent) = self.parent_span_id {
                put(X_B3_PARENTSPANID, hex_string::<16>(u128::from(parent)));
            }
            if self.debug {
                put(X_B3_FLAGS, "1".to_owned());
            } else {
                put(
                    X_B3_SAMPLED,
                    if self.sampled { "1" } else { "0" }.to_owned(),
                );
            }
        }
        if self.formats.b3_single {
            let sampling = match (self.debug, self.sampled) {
                (true, _) => "d",
                (false, true) => "1",
                (false, false) => "0",
            };
            let mut value = format!("{trace_id}-{span_id}-{sampling}");
            if let Some(parent) = self.parent_span_id {
                value.push('-');
                value.push_str(&hex_string::<16>(u128::from(parent)));
            }
            put(B3, value);
        }
        self.inject_tracestate(headers);
    }

    /// `tracestate` goes with `traceparent`.
    fn inject_tracestate(&self, headers: &mut HeaderMap) {
        if self.formats.w3c
            && let Some(state) = &self.tracestate
        {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

/// A span's outcome (OTLP `Status.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    /// No error recorded.
    Unset,
    /// The request failed (a 5xx response).
    Error,
}

/// One finished span, ready for export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The span.
    pub context: SpanContext,
    /// Its parent, when the trace was continued.
    pub parent_span_id: Option<u64>,
    /// The `tracestate` of its context.
    pub tracestate: Option<String>,
    /// The operation name (`<service host>:<port>/*`).
    pub name: String,
    /// Start and end, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End.
    pub end_unix_nanos: u64,
    /// String attributes, Envoy's tag names.
    pub attributes: Vec<(&'static str, String)>,
    /// Error for 5xx.
    pub status: SpanStatus,
}

/// The operation (span) name of a request to the service `host` on `port`: Istio's route
/// decorator, `<host>:<port>/*`. Built from the addressed service, never from the request,
/// so a client cannot mint names.
pub fn operation_name(host: &str, port: u16) -> String {
    format!("{host}:{port}/*")
}

/// The span status of a response code: an error for 5xx (and for no response at all).
pub fn span_status(response_code: u16) -> SpanStatus {
    if response_code >= 500 || response_code == 0 {
        SpanStatus::Error
    } else {
        SpanStatus::Unset
    }
}

/// Tracing settings of a waypoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Percentage (0–100) of requests sampled when the caller sent no sampling decision
    /// (Istio's `meshConfig.defaultConfig.tracing.sampling`, env `PILOT_TRACE_SAMPLING`;
    /// default [`DEFAULT_SAMPLING_PERCENT`], 1%).
    pub sampling: f64,
    /// Where sampled spans go; `None` (the default) exports nothing and only propagates.
    pub otlp: Option<OtlpSettings>,
    /// The waypoint's pod name (`POD_NAME`), part of the spans' `node_id`; default: the
    /// waypoint's name.
    pub pod_name: Option<String>,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            sampling: DEFAULT_SAMPLING_PERCENT,
            otlp: None,
            pod_name: None,
        }
    }
}

/// The waypoint's tracer: samples, and hands sampled spans to the exporter.
#[derive(Debug)]
pub struct Tracer {
    sampling: f64,
    exporter: Option<SpanExporter>,
    /// The attributes every span has (`node_id`, `zone`, `istio.*`, `component`).
    common: Vec<(&'static str, String)>,
}

impl Tracer {
    /// A tracer with `settings`; with an OTLP endpoint the export task is started (on the
    /// current runtime). `common` are the attributes of every span, `resource` the resource
    /// attributes besides `service.name`; `counters` registers the export counters (only
    /// when exporting).
    pub fn new(
        settings: &TracingSettings,
        common: Vec<(&'static str, String)>,
        resource: Vec<(&'static str, String)>,
        counters: impl FnOnce() -> SpanCounters,
    ) -> Self {
        let exporter = settings
            .otlp
            .clone()
            .map(|otlp| SpanExporter::start(otlp, resource, counters()).0);
        Self {
            sampling: settings.sampling,
            exporter,
            common,
        }
    }

    /// A tracer that propagates only (1% sampling flags, nothing exported).
    pub fn disabled() -> Self {
        Self {
            sampling: DEFAULT_SAMPLING_PERCENT,
            exporter: None,
            common: Vec::new(),
        }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.exporter.is_some()
    }

    /// The trace of a request that arrived with `headers`: continued or started, sampled or
    /// not, with a fresh span id.
    pub fn start(&self, headers: &HeaderMap) -> RequestTrace {
        let incoming = extract(headers);
        let sampled = sample(
            incoming.sampled,
            incoming.debug,
            self.sampling,
            fastrand::f64() * 100.0,
        );
        RequestTrace::start(incoming, fastrand::u128(..), fastrand::u64(..), sampled)
    }

    /// Exports the span of a finished request when it was sampled; `attributes` are the
    /// request's, the common ones are added.
    pub fn finish(&self, mut span: SpanRecord, sampled: bool) {
        if !sampled {
            return;
        }
        if let Some(exporter) = &self.exporter {
            span.attributes.extend(self.common.iter().cloned());
            exporter.submit(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn ctx() -> SpanContext {
        SpanContext {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
        }
    }

    #[test]
    fn traceparent_validity() {
        let valid = |flags: u8| {
            Some(TraceParent {
                context: ctx(),
                flags,
            })
        };
        let cases: &[(String, Option<TraceParent>)] = &[
            (format!("00-{TRACE}-{SPAN}-01"), valid(1)),
            (format!("00-{TRACE}-{SPAN}-00"), valid(0)),
            (format!("00-{TRACE}-{SPAN}-09"), valid(9)),
            // A later version: read by its 00 prefix, more fields allowed.
            (format!("01-{TRACE}-{SPAN}-01"), valid(1)),
            (
                format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"),
                valid(1),
            ),
            (format!("cc-{TRACE}-{SPAN}-01x"), None),
            // Version ff is invalid.
            (format!("ff-{TRACE}-{SPAN}-01"), None),
            // Version 00 has exactly 55 characters.
            (format!("00-{TRACE}-{SPAN}-01-extra"), None),
            // All-zero ids.
            (format!("00-{}-{SPAN}-01", "0".repeat(32)), None),
            (format!("00-{TRACE}-{}-01", "0".repeat(16)), None),
            // Wrong lengths.
            (format!("00-{}-{SPAN}-01", &TRACE[..31]), None),
            (format!("00-{TRACE}-{}-01", &SPAN[..15]), None),
            (format!("00-{TRACE}-{SPAN}-1"), None),
            (String::new(), None),
            // Upper-case hex.
            (format!("00-{}-{SPAN}-01", TRACE.to_uppercase()), None),
            (format!("00-{TRACE}-{}-01", SPAN.to_uppercase()), None),
            (format!("0A-{TRACE}-{SPAN}-01"), None),
            (format!("00-{TRACE}-{SPAN}-0A"), None),
            // Not hex, wrong separators.
            (format!("00-{}-{SPAN}-01", TRACE.replace('4', "g")), None),
            (format!("00_{TRACE}-{SPAN}-01"), None),
            (format!("00-{TRACE}_{SPAN}-01"), None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_traceparent(value.as_bytes()), *expected, "{value}");
        }
    }

    #[test]
    fn trace_headers_are_found_by_their_index() {
        for (index, name) in TRACE_HEADERS.iter().enumerate() {
            assert_eq!(trace_header_index(name.as_str()), Some(index), "{name}");
            let mut headers = HeaderMap::new();
            headers.insert("x-other", HeaderValue::from_static("1"));
            headers.append(name, HeaderValue::from_static("a"));
            headers.append(name, HeaderValue::from_static("b"));
            assert_eq!(
                TraceHeaders::of(&headers),
                TraceHeaders(1 << index),
                "{name}"
            );
        }
        assert_eq!(trace_header_index("x-b3"), None);
        assert_eq!(TraceHeaders::of(&HeaderMap::new()), TraceHeaders(0));
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        let values = [
            0u128,
            1,
            0xf,
            0x10,
            u128::from(u64::MAX),
            u128::from(u64::MAX) + 1,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            u128::MAX,
        ];
        for value in values {
            for width in [0usize, 1, 2, 4, 8, 12, 15, 16, 17, 24, 31, 32] {
                let mut out = vec![b'?'; width];
                put_hex(&mut out, value);
                let full = format!("{value:032x}");
                assert_eq!(
                    std::str::from_utf8(&out),
                    Ok(&full[32 - width..]),
                    "{value:x} in {width} digits"
                );
            }
        }
        assert_eq!(hex_string::<16>(0xab), "00000000000000ab");
    }

    #[test]
    fn traceparent_round_trip() {
        let formatted = format_traceparent(ctx(), true);
        assert_eq!(formatted, format!("00-{TRACE}-{SPAN}-01"));
        assert_eq!(
            parse_traceparent(formatted.as_bytes()).map(|p| p.context),
            Some(ctx())
        );
        assert_eq!(
            format_traceparent(
                SpanContext {
                    trace_id: 1,
                    span_id: 2
                },
                false
            ),
            "00-00000000000000000000000000000001-0000000000000002-00"
        );
    }

    #[test]
    fn b3_single_validity() {
        let with = |sampled, debug, short| {
            Some(B3Context {
                context: Some(SpanContext {
                    trace_id: if short {
                        0xa3ce_929d_0e0e_4736
                    } else {
                        ctx().trace_id
                    },
                    span_id: ctx().span_id,
                }),
                short_trace_id: short,
                sampled,
                debug,
            })
        };
        let only = |sampled, debug| {
            Some(B3Context {
                context: None,
                short_trace_id: false,
                sampled,
                debug,
            })
        };
        let cases: &[(String, Option<B3Context>)] = &[
            (format!("{TRACE}-{SPAN}"), with(None, false, false)),
            (format!("{TRACE}-{SPAN}-1"), with(Some(true), false, false)),
            (format!("{TRACE}-{SPAN}-0"), with(Some(false), false, false)),
            (format!("{TRACE}-{SPAN}-d"), with(Some(true), true, false)),
            (
                format!("{TRACE}-{SPAN}-1-{SPAN}"),
                with(Some(true), false, false),
            ),
            (
                format!("{}-{SPAN}-1", &TRACE[16..]),
                with(Some(true), false, true),
            ),
            (
                format!("{}-{SPAN}", TRACE.to_uppercase()),
                with(None, false, false),
            ),
            ("0".into(), only(Some(false), false)),
            ("1".into(), only(Some(true), false)),
            ("d".into(), only(Some(true), true)),
            ("true".into(), None),
            (format!("{TRACE}-{SPAN}-2"), None),
            (format!("{TRACE}-{SPAN}-1-{SPAN}-x"), None),
            (format!("{TRACE}-{SPAN}-1-00f0"), None),
            (format!("{}-{SPAN}", &TRACE[..20]), None),
            (format!("{TRACE}-{}", "0".repeat(16)), None),
            (format!("{}-{SPAN}", "0".repeat(32)), None),
            (TRACE.to_owned(), None),
            (String::new(), None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_b3_single(value.as_bytes()), *expected, "{value}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn b3_multi_validity() {
        let ok = parse_b3_multi(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(
            ok,
            Some(B3Context {
                context: Some(ctx()),
                short_trace_id: false,
                sampled: Some(true),
                debug: false,
            })
        );
        let debug = parse_b3_multi(&headers(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]));
        assert_eq!(
            debug.map(|b| (b.sampled, b.debug)),
            Some((Some(true), true))
        );
        let not_sampled = parse_b3_multi(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!(
            not_sampled.map(|b| (b.context, b.sampled)),
            Some((None, Some(false)))
        );
        for invalid in [
            vec![("x-b3-traceid", TRACE)],
            vec![("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", &TRACE[..30]), ("x-b3-spanid", SPAN)],
            vec![("x-b3-traceid", TRACE), ("x-b3-spanid", "xyz")],
            vec![("x-b3-sampled", "yes")],
            vec![("x-b3-flags", "2")],
            vec![
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-parentspanid", "1"),
            ],
        ] {
            assert_eq!(parse_b3_multi(&headers(&invalid)), None, "{invalid:?}");
        }
    }

    #[test]
    fn extraction_precedence_and_formats() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        // W3C first; tracestate only with a valid traceparent.
        let incoming = extract(&headers(&[
            ("traceparent", &tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "0000000000000000000000000000000a"),
            ("x-b3-spanid", "000000000000000b"),
        ]));
        assert_eq!(incoming.parent, Some(ctx()));
        assert_eq!(incoming.sampled, Some(true));
        assert_eq!(
            incoming.tracestate,
            Some(HeaderValue::from_static("congo=t61rcWkgMzE"))
        );
        assert!(incoming.formats.w3c && incoming.formats.b3_multi && !incoming.formats.b3_single);
        // Invalid traceparent: absent, tracestate dropped, B3 used.
        let bad = format!("00-{}-{SPAN}-01", TRACE.to_uppercase());
        let incoming = extract(&headers(&[
            ("traceparent", &bad),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("b3", &format!("{TRACE}-{SPAN}-0")),
        ]));
        assert_eq!(incoming.parent, Some(ctx()));
        assert_eq!(incoming.sampled, Some(false));
        assert_eq!(incoming.tracestate, None);
        assert!(incoming.formats.w3c && incoming.formats.b3_single);
        // Two traceparents are invalid.
        let incoming = extract(&headers(&[("traceparent", &tp), ("traceparent", &tp)]));
        assert_eq!(incoming.parent, None);
        // Nothing.
        let incoming = extract(&HeaderMap::new());
        assert_eq!(incoming, Incoming::default());
        assert!(incoming.formats.is_empty());
    }

    #[test]
    fn sampling_decisions() {
        // (incoming, debug, percent, roll) → sampled
        let cases = [
            (Some(true), false, 0.0, 99.0, true),
            (Some(false), false, 100.0, 0.0, false),
            (Some(false), true, 0.0, 99.0, true),
            (None, false, 0.0, 0.0, false),
            (None, false, 100.0, 99.99, true),
            (None, false, 1.0, 0.5, true),
            (None, false, 1.0, 1.0, false),
            (None, false, 250.0, 99.0, true),
            (None, false, -1.0, 0.0, false),
            (None, false, f64::NAN, 0.0, false),
        ];
        for (incoming, debug, percent, roll, expected) in cases {
            assert_eq!(
                sample(incoming, debug, percent, roll),
                expected,
                "{incoming:?} {debug} {percent} {roll}"
            );
        }
    }

    #[test]
    fn injection_writes_the_received_formats_with_the_waypoint_as_parent() {
        let incoming = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]));
        let trace = RequestTrace::start(incoming, 7, 0xabc, true);
        let mut out = HeaderMap::new();
        trace.inject(&mut out);
        assert_eq!(out.get("x-b3-traceid").unwrap(), TRACE);
        assert_eq!(out.get("x-b3-spanid").unwrap(), "0000000000000abc");
        assert_eq!(out.get("x-b3-parentspanid").unwrap(), SPAN);
        assert_eq!(out.get("x-b3-sampled").unwrap(), "1");
        assert!(out.get("traceparent").is_none() && out.get("b3").is_none());

        // Short B3 trace ids stay short; single header with parent.
        let incoming = extract(&headers(&[("b3", &format!("{}-{SPAN}-d", &TRACE[16..]))]));
        let trace = RequestTrace::start(incoming, 7, 0xabc, true);
        let mut out = HeaderMap::new();
        trace.inject(&mut out);
        assert_eq!(
            out.get("b3").unwrap(),
            &format!("{}-0000000000000abc-d-{SPAN}", &TRACE[16..])
        );

        // None received: W3C, a new trace, no parent; stale invalid headers replaced.
        let trace = RequestTrace::start(Incoming::default(), 0x1234, 0xabc, false);
        let mut out = headers(&[("tracestate", "a=b")]);
        trace.inject(&mut out);
        assert_eq!(
            out.get("traceparent").unwrap(),
            "00-00000000000000000000000000001234-0000000000000abc-00"
        );
        assert!(out.get("tracestate").is_none());
        assert_eq!(trace.parent_span_id, None);
        // Every stale trace header goes, each of its values, and nothing else.
        let mut out = HeaderMap::new();
        for name in &TRACE_HEADERS {
            out.append(name, HeaderValue::from_static("stale"));
            out.append(name, HeaderValue::from_static("stale too"));
        }
        out.insert("x-other", HeaderValue::from_static("kept"));
        trace.inject(&mut out);
        let mut left: Vec<_> = out.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        left.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            left,
            [
                (
                    "traceparent",
                    HeaderValue::from_static(
                        "00-00000000000000000000000000001234-0000000000000abc-00"
                    )
                ),
                ("x-other", HeaderValue::from_static("kept")),
            ]
        );

        // W3C continued: same trace id, new parent id, tracestate kept.
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let incoming = extract(&headers(&[("traceparent", &tp), ("tracestate", "a=b")]));
        let trace = RequestTrace::start(incoming, 7, 0xabc, true);
        let mut out = HeaderMap::new();
        trace.inject(&mut out);
        assert_eq!(
            out.get("traceparent").unwrap(),
            &format!("00-{TRACE}-0000000000000abc-01")
        );
        assert_eq!(out.get("tracestate").unwrap(), "a=b");
        assert_eq!(trace.parent_span_id, Some(ctx().span_id));
    }

    #[test]
    fn id_headers_are_never_indexed() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let b3 = format!("{TRACE}-{SPAN}-1");
        let incoming = extract(&headers(&[
            ("traceparent", &tp),
            ("tracestate", "a=b"),
            ("b3", &b3),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", SPAN),
            ("x-b3-sampled", "1"),
        ]));
        let trace = RequestTrace::start(incoming, 7, 0xabc, true);
        let mut out = HeaderMap::new();
        trace.inject(&mut out);
        let mut written: Vec<_> = out
            .iter()
            .map(|(n, v)| (n.as_str(), v.is_sensitive()))
            .collect();
        written.sort_unstable();
        assert_eq!(
            written,
            [
                ("b3", true),
                ("traceparent", true),
                ("tracestate", false),
                ("x-b3-parentspanid", true),
                ("x-b3-sampled", false),
                ("x-b3-spanid", true),
                ("x-b3-traceid", true),
            ]
        );
    }

    #[test]
    fn span_names_and_status() {
        assert_eq!(
            operation_name("reviews.default.svc.cluster.local", 9080),
            "reviews.default.svc.cluster.local:9080/*"
        );
        assert_eq!(span_status(200), SpanStatus::Unset);
        assert_eq!(span_status(404), SpanStatus::Unset);
        assert_eq!(span_status(503), SpanStatus::Error);
        assert_eq!(span_status(0), SpanStatus::Error);
    }
}
