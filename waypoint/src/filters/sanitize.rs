//! Request sanitising in the **normalise** phase, before any other phase reads the request:
//! headers only a trusted proxy may set are removed from what the client sent, and an HTTP/2
//! cleartext upgrade is refused by serving the request as plain HTTP/1.1. The
//! `x-forwarded-client-cert` the waypoint itself sets is built here too ([`client_cert_details`],
//! set in the **filters** phase).
//!
//! - `x-forwarded-client-cert` from the client is dropped and replaced by the waypoint's own
//!   (Envoy `forward_client_cert_details: SANITIZE_SET` with
//!   `set_current_client_cert_details: {uri: true}`): a client cannot claim another identity to
//!   the backend. The value is Envoy's: `By=<waypoint identity>;Hash=<hex SHA-256 of the
//!   client's certificate (DER)>;Subject="<its subject, RFC 2253>";URI=<client identity>`,
//!   from the certificate the client presented in the HBONE mTLS handshake
//!   ([`hbone::cert::PeerCertificate`], whose details are worked out once per HBONE connection;
//!   `connect_terminate` builds the value once per tunnel). `Subject` is always quoted
//!   (`""` for SPIFFE workload certificates, which have an empty subject); a `"` inside it is
//!   escaped with `\`.
//! - `x-envoy-*` headers are Envoy's internal control and information headers (retry and
//!   timeout overrides, `x-envoy-original-path`, …); Envoy removes them from requests that do
//!   not come from a trusted internal peer, and a client of a waypoint is not one.
//! - `Upgrade: h2c` is not honoured (the waypoint speaks HTTP/2 only with prior knowledge, as
//!   Envoy): like Envoy's HTTP/1.1 codec, the `upgrade` and `http2-settings` headers are removed
//!   and the request is served as HTTP/1.1; `connection` goes with the other hop-by-hop headers.

use http::header::UPGRADE;
use http::{HeaderMap, HeaderName, HeaderValue};

use hbone::Identity;
use hbone::cert::CertDetails;

/// `x-forwarded-client-cert`.
pub const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// `http2-settings`, sent with an `h2c` upgrade.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes the headers a client may not set: `x-forwarded-client-cert` and every `x-envoy-*`.
/// Returns how many were removed.
pub fn strip_internal_headers(headers: &mut HeaderMap) -> usize {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| *name == FORWARDED_CLIENT_CERT || name.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    let mut removed = 0;
    for name in internal {
        removed += headers.get_all(&name).iter().count();
        headers.remove(&name);
    }
    removed
}

/// Refuses an `h2c` upgrade: when `upgrade` names `h2c`, removes `upgrade` and
/// `http2-settings`. Returns whether it did.
pub fn strip_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let h2c = headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("h2c"));
    if h2c {
        headers.remove(UPGRADE);
        headers.remove(HTTP2_SETTINGS);
    }
    h2c
}

/// The waypoint's `x-forwarded-client-cert`:
/// `By=<waypoint identity>;Hash=<hash>;Subject="<subject>";URI=<client identity>`, without
/// `Hash` and `Subject` when the certificate is not known. `None` when a value does not fit a
/// header (never for SPIFFE URIs and RFC 2253 subjects of printable strings).
pub fn client_cert_details(
    by: &Identity,
    client: &Identity,
    cert: Option<&CertDetails>,
) -> Option<HeaderValue> {
    let value = match cert {
        Some(cert) => {
            // Already escaped by RFC 2253 (`\"`); any other quote is escaped here.
            let mut subject = String::with_capacity(cert.subject.len());
            let mut escaped = false;
            for c in cert.subject.chars() {
                if c == '"' && !escaped {
                    subject.push('\\');
                }
                escaped = c == '\\' && !escaped;
                subject.push(c);
            }
            format!(
                "By={by};Hash={};Subject=\"{subject}\";URI={client}",
                cert.hash
            )
        }
        None => format!("By={by};URI={client}"),
    };
    HeaderValue::from_str(&value).ok()
}
