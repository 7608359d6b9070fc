//! Consistent hashing (DestinationRule `loadBalancer.consistentHash`): the hash key of a request,
//! the ring of endpoints, and the `Set-Cookie` of a generated session cookie.
//!
//! # Hash function
//!
//! Keys and ring points are hashed with 64-bit FNV-1a followed by the MurmurHash3 `fmix64`
//! finaliser ([`stable_hash`]). Both are fixed, public algorithms with no per-process key, so a
//! key maps to the same endpoint in every waypoint replica and across restarts (Envoy uses
//! xxHash64 for the same reason; the exact values differ, which only matters if replicas of
//! different implementations share traffic). The finaliser spreads FNV's weak high bits, which
//! matters here because the ring is ordered by the full 64-bit value.
//!
//! # Ring
//!
//! Istio programs Envoy's `RING_HASH` (minimum ring size 1024) unless `maglev` is chosen; the
//! waypoint's config model has no ring options. Every endpoint gets a fixed
//! [`POINTS_PER_ENDPOINT`] points hashed from `"<ip:port>_<i>"` (so the ring reaches 1024
//! points from 4 endpoints on). A key is served by the first point clockwise from its hash.
//! Unlike Envoy, whose points per host depend on the number of hosts, the points of an
//! endpoint never change, so when an endpoint is added or removed only the keys of the arcs it
//! gains or loses move (about `1/n`), and no other key moves. Ejected, or excluded (retried),
//! endpoints are skipped by walking on to the next point, as Envoy's ring rebuilt over healthy
//! hosts would do.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::config::istio::ConsistentHash;

/// Points on the ring per endpoint (share imbalance about `1/sqrt(256)` ≈ 6 %).
pub const POINTS_PER_ENDPOINT: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes `bytes` with FNV-1a (64 bit) and the MurmurHash3 `fmix64` finaliser; stable across
/// processes, platforms and releases.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    fmix64(hash)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// A hash ring over the endpoints of a cluster (by index into the cluster's endpoint list).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ring {
    /// `(point, endpoint index)`, sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring of `addresses` (`addresses[i]` is endpoint `i`).
    pub(crate) fn build(addresses: &[SocketAddr]) -> Self {
        if addresses.is_empty() {
            return Self::default();
        }
        let mut points = Vec::with_capacity(POINTS_PER_ENDPOINT * addresses.len());
        for (index, address) in addresses.iter().enumerate() {
            for replica in 0..POINTS_PER_ENDPOINT {
                let key = format!("{address}_{replica}");
                points.push((stable_hash(key.as_bytes()), index));
            }
        }
        // Ties (astronomically rare) are broken by endpoint index so the ring is deterministic.
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint serving `hash`: the first point at or after `hash` (wrapping) whose endpoint
    /// `accept`s; `None` when no endpoint does.
    pub(crate) fn lookup(&self, hash: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let len = self.points.len();
        (0..len)
            .map(|offset| self.points[(start + offset) % len].1)
            .find(|index| accept(*index))
    }
}

/// The consistent-hash key of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HashKey {
    /// The hash of the key's value.
    Hash(u64),
    /// The request has no key (absent header, cookie without ttl, no source address, absent
    /// query parameter): Envoy then picks at random.
    Missing,
    /// The cookie was absent and has a ttl: a new cookie value was generated; its hash routes
    /// this request and `set_cookie` goes on the response so later requests stick.
    NewCookie {
        /// Hash of the generated value.
        hash: u64,
        /// The `Set-Cookie` header value.
        set_cookie: HeaderValue,
    },
}

/// What [`hash_key`] reads from the request.
pub(crate) struct KeyInputs<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) source_ip: Option<IpAddr>,
    pub(crate) query: Option<&'a str>,
}

/// Computes the hash key of a request; `cookie_ttl` is the parsed `httpCookie.ttl` and
/// `new_cookie_value` generates a fresh cookie value when one is needed.
pub(crate) fn hash_key(
    key: &ConsistentHash,
    inputs: &KeyInputs<'_>,
    cookie_ttl: Option<Duration>,
    new_cookie_value: impl FnOnce() -> u64,
) -> HashKey {
    match key {
        ConsistentHash::HttpHeaderName(name) => header_hash(inputs.headers, name),
        ConsistentHash::HttpCookie { name, path, .. } => {
            if let Some(value) = cookie_value(inputs.headers, name) {
                return HashKey::Hash(stable_hash(value.as_bytes()));
            }
            let Some(ttl) = cookie_ttl else {
                return HashKey::Missing;
            };
            let value = format!("{:016x}", new_cookie_value());
            let hash = stable_hash(value.as_bytes());
            match set_cookie_value(name, &value, path.as_deref(), ttl) {
                Some(set_cookie) => HashKey::NewCookie { hash, set_cookie },
                // A cookie name or path that cannot be a header value: route by the generated
                // value anyway, but nothing can make the client stick.
                None => HashKey::Hash(hash),
            }
        }
        ConsistentHash::UseSourceIp => match inputs.source_ip {
            Some(ip) => HashKey::Hash(stable_hash(ip.to_string().as_bytes())),
            None => HashKey::Missing,
        },
        ConsistentHash::HttpQueryParameterName(name) => {
            match inputs.query.and_then(|query| query_value(query, name)) {
                Some(value) => HashKey::Hash(stable_hash(value.as_bytes())),
                None => HashKey::Missing,
            }
        }
    }
}

/// Hashes every value of header `name` (in order, joined by `,`), or `Missing`.
fn header_hash(headers: &HeaderMap, name: &str) -> HashKey {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return HashKey::Missing;
    }
    let mut joined: Vec<u8> = Vec::new();
    for (i, value) in values.enumerate() {
        if i > 0 {
            joined.push(b',');
        }
        joined.extend_from_slice(value.as_bytes());
    }
    HashKey::Hash(stable_hash(&joined))
}

/// The value of cookie `name` in the request's `Cookie` headers (first occurrence), with
/// surrounding double quotes removed as Envoy does.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// The value of query parameter `name` (first occurrence; not percent-decoded, as Envoy hashes
/// the raw value). A parameter without `=` has the empty value.
pub(crate) fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Formats a `Set-Cookie` value the way Envoy's router does for a generated hash cookie:
/// `name="value"; Max-Age=<whole seconds>; Path=<path>; HttpOnly` (no `Max-Age` for a zero ttl,
/// i.e. a session cookie; no `Path` when unset).
pub(crate) fn set_cookie_value(
    name: &str,
    value: &str,
    path: Option<&str>,
    ttl: Duration,
) -> Option<HeaderValue> {
    let mut cookie = format!("{name}=\"{value}\"");
    if ttl.as_secs() > 0 {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        cookie.push_str("; Path=");
        cookie.push_str(path);
    }
    cookie.push_str("; HttpOnly");
    HeaderValue::from_str(&cookie).ok()
}
