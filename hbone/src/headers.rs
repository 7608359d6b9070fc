//! The HBONE request headers: names, and how their values are built and read.
//!
//! A tunnel request is `CONNECT <ip:port>` with:
//! - `forwarded: for="<client ip:port>"` (plus `;host=<service hostname>` when the client
//!   addressed a service) — who the tunnel is on behalf of;
//! - `baggage:` W3C baggage describing the source workload (`k8s.namespace.name=…,…`);
//! - `traceparent:` a W3C trace context for the connection.
//!
//! The node proxy fills them in; the server side hands them to the handler unchanged.
//!
//! `forwarded` and `traceparent` differ on every tunnel, so their values are built marked
//! sensitive: HTTP/2 sends them as never-indexed literals (HPACK, RFC 7541 §6.2.3) instead of
//! adding each to both ends' header tables, where a value that never repeats would only cost
//! memory on every pooled connection and push out the entries that do repeat (`baggage`, the
//! authority).

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::HeaderValue;

use crate::error::Error;

/// `baggage`: W3C baggage of the source workload.
pub const BAGGAGE: &str = "baggage";
/// `forwarded`: RFC 7239 `for=` (and `host=`) of the original client.
pub const FORWARDED: &str = "forwarded";
/// `traceparent`: W3C trace context of the connection.
pub const TRACEPARENT: &str = "traceparent";
/// `x-forwarded-network`: the network of the original client, on the inner `CONNECT` of a double
/// HBONE tunnel.
pub const X_FORWARDED_NETWORK: &str = "x-forwarded-network";

/// Longest header value we build or parse here; the server's header-list limit bounds the rest.
const MAX_VALUE_LEN: usize = 4096;

/// Builds `for="<addr>"` (IPv6 as `[ip]:port`, quoted as RFC 7239 requires), with
/// `;host=<host>` when the client addressed a service.
pub fn forwarded(client: SocketAddr, host: Option<&str>) -> Result<HeaderValue, Error> {
    let mut value = format!("for=\"{client}\"");
    if let Some(host) = host {
        let valid = !host.is_empty()
            && host.len() < MAX_VALUE_LEN
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !valid {
            return Err(Error::InvalidHeader {
                name: FORWARDED,
                reason: format!("bad host {host:?}"),
            });
        }
        let _ = write!(value, ";host={host}");
    }
    let mut value = HeaderValue::from_str(&value).map_err(|e| Error::InvalidHeader {
        name: FORWARDED,
        reason: e.to_string(),
    })?;
    // Unique per client connection: not worth a header-table entry (see the module docs).
    value.set_sensitive(true);
    Ok(value)
}

/// Reads the first `for=` of a `forwarded` value as a socket address. `None` when absent or not
/// an `ip:port` (obfuscated identifiers, `unknown`, …): the caller then falls back to the
/// connection's peer address.
pub fn forwarded_for(value: &HeaderValue) -> Option<SocketAddr> {
    let value = value.to_str().ok()?;
    if value.len() > MAX_VALUE_LEN {
        return None;
    }
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (key, val) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        val.trim().trim_matches('"').parse().ok()
    })
}

/// Builds a W3C `baggage` value from key/value pairs, percent-encoding what the format forbids.
pub fn baggage<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderValue, Error> {
    let mut out = String::new();
    for (key, val) in pairs {
        if val.is_empty() {
            continue;
        }
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !key_ok {
            return Err(Error::InvalidHeader {
                name: BAGGAGE,
                reason: format!("bad key {key:?}"),
            });
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        for b in val.bytes() {
            // baggage-octet: printable ASCII except space, '"', ',', ';', '\\' and '%'.
            let plain = (0x21..=0x7e).contains(&b) && !b"\",;\\%".contains(&b);
            if plain {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    if out.len() > MAX_VALUE_LEN {
        return Err(Error::InvalidHeader {
            name: BAGGAGE,
            reason: "too long".into(),
        });
    }
    HeaderValue::from_str(&out).map_err(|e| Error::InvalidHeader {
        name: BAGGAGE,
        reason: e.to_string(),
    })
}

/// Parses a W3C `baggage` value into key/value pairs (properties after `;` are dropped, values
/// percent-decoded). Malformed members are skipped rather than failing the tunnel.
pub fn parse_baggage(value: &HeaderValue) -> Vec<(String, String)> {
    let Ok(value) = value.to_str() else {
        return Vec::new();
    };
    if value.len() > MAX_VALUE_LEN {
        return Vec::new();
    }
    value
        .split(',')
        .filter_map(|member| {
            let kv = member.split(';').next()?;
            let (k, v) = kv.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), percent_decode(v.trim())?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A W3C trace context (`traceparent`), version 00.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id (never all zero).
    pub trace_id: u128,
    /// 8-byte parent (span) id (never zero).
    pub parent_id: u64,
    /// Trace flags; bit 0 = sampled.
    pub flags: u8,
}

impl TraceParent {
    /// A new random, sampled trace context.
    pub fn random() -> Self {
        let mut bytes = [0u8; 24];
        // The OS random source only fails when the platform has none; the ids are then derived
        // from the clock, which is still unique enough for correlating a connection's logs.
        if rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut bytes)
            .is_err()
        {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(1);
            bytes[..16].copy_from_slice(&nanos.to_be_bytes());
            bytes[16..].copy_from_slice(&(nanos as u64 | 1).to_be_bytes());
        }
        let mut trace = [0u8; 16];
        trace.copy_from_slice(&bytes[..16]);
        let mut parent = [0u8; 8];
        parent.copy_from_slice(&bytes[16..]);
        Self {
            trace_id: u128::from_be_bytes(trace).max(1),
            parent_id: u64::from_be_bytes(parent).max(1),
            flags: 1,
        }
    }

    /// Parses a version-00 `traceparent`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let s = value.to_str().ok()?;
        let mut parts = s.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version != "00"
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
            return None;
        }
        let tp = Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (tp.trace_id != 0 && tp.parent_id != 0).then_some(tp)
    }

    /// The header value, `00-<trace>-<parent>-<flags>`.
    pub fn to_header(&self) -> HeaderValue {
        let s = format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        );
        // Only lowercase hex digits and dashes: always a valid header value.
        let mut value = HeaderValue::from_str(&s).unwrap_or_else(|_| {
            HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
        });
        // Random per tunnel: not worth a header-table entry (see the module docs).
        value.set_sensitive(true);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trip() {
        let v4: SocketAddr = "10.0.0.1:4321".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        let h = forwarded(v4, None).unwrap();
        assert_eq!(h, "for=\"10.0.0.1:4321\"");
        assert!(h.is_sensitive(), "never indexed by HPACK");
        assert_eq!(forwarded_for(&h), Some(v4));
        let h = forwarded(v6, Some("reviews.default.svc.cluster.local")).unwrap();
        assert_eq!(
            h,
            "for=\"[fd00::1]:80\";host=reviews.default.svc.cluster.local"
        );
        assert_eq!(forwarded_for(&h), Some(v6));
        assert!(forwarded(v4, Some("bad host")).is_err());
        assert_eq!(
            forwarded_for(&HeaderValue::from_static("for=unknown")),
            None
        );
        assert_eq!(
            forwarded_for(&HeaderValue::from_static("host=x;For=\"1.2.3.4:5\"")),
            "1.2.3.4:5".parse().ok()
        );
    }

    #[test]
    fn baggage_round_trip_and_escaping() {
        let h = baggage([
            ("k8s.namespace.name", "default"),
            ("k8s.deployment.name", "a b,c"),
            ("service.version", ""),
        ])
        .unwrap();
        assert_eq!(
            h,
            "k8s.namespace.name=default,k8s.deployment.name=a%20b%2Cc"
        );
        assert_eq!(
            parse_baggage(&h),
            vec![
                ("k8s.namespace.name".to_string(), "default".to_string()),
                ("k8s.deployment.name".to_string(), "a b,c".to_string()),
            ]
        );
        assert!(baggage([("bad key", "x")]).is_err());
        assert_eq!(
            parse_baggage(&HeaderValue::from_static("a=1;prop, =x,b=%zz,c=3")),
            vec![
                ("a".to_string(), "1".to_string()),
                ("c".to_string(), "3".to_string()),
            ]
        );
    }

    #[test]
    fn traceparent_round_trip() {
        let tp = TraceParent::random();
        let h = tp.to_header();
        assert_eq!(h.len(), 55);
        assert!(h.is_sensitive(), "never indexed by HPACK");
        assert_eq!(TraceParent::parse(&h), Some(tp));
        assert_ne!(TraceParent::random(), tp);
        for bad in [
            "01-00000000000000000000000000000001-0000000000000001-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-0000000000000000000000000000000A-0000000000000001-01",
            "00-00000000000000000000000000000001-0000000000000001",
        ] {
            assert_eq!(
                TraceParent::parse(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }
}
