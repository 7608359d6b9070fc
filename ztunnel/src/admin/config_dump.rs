//! `/config_dump`: the proxy's state as JSON, in upstream ztunnel's shape (camelCase fields)
//! so `istioctl ztunnel-config` style tooling can read it.
//!
//! ```json
//! { "workloads": [...], "services": [...], "policies": [...],
//!   "certificates": [ { "identity": "spiffe://td/ns/x/sa/y", "state": "Available",
//!                       "certChain": [ { "pem": "...", "serialNumber": "0a1b...",
//!                                        "validFrom": "2026-01-01T00:00:00Z",
//!                                        "expirationTime": "2026-01-02T00:00:00Z" } ],
//!                       "rootCerts": [...] } ],
//!   "config": {...} }
//! ```
//!
//! The output is deterministic: workloads sorted by uid, services by `namespace/hostname`,
//! policies by namespace then name, certificates by identity.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hbone::{Identity, WorkloadCertificate};
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::state::MeshState;

/// The whole dump.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    workloads: Vec<&'a crate::state::Workload>,
    services: Vec<&'a crate::state::Service>,
    policies: Vec<&'a crate::state::Policy>,
    certificates: Vec<CertDump>,
    config: &'a serde_json::Value,
}

/// The certificate of one identity (upstream `CertDump`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertDump {
    /// The SPIFFE identity, `spiffe://…`.
    identity: String,
    /// `Available` (issued; certificates not yet issued are not listed).
    state: &'static str,
    /// The chain presented to peers, leaf first.
    cert_chain: Vec<CertsDump>,
    /// The trust roots peers are verified against.
    root_certs: Vec<CertsDump>,
}

/// One certificate (upstream `CertsDump`).
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct CertsDump {
    /// The certificate as one PEM block.
    pem: String,
    /// Serial number, lowercase hexadecimal of the DER integer's bytes.
    serial_number: String,
    /// Start of validity, RFC 3339 (UTC).
    valid_from: String,
    /// End of validity, RFC 3339 (UTC).
    expiration_time: String,
}

/// Builds the dump of `state`, the issued certificates `certs` (as returned by
/// [`crate::identity::IdentityManager::certificates`]), the trust `roots` and the caller's
/// `config` summary.
pub fn config_dump(
    state: &MeshState,
    certs: &[(Identity, Arc<WorkloadCertificate>)],
    roots: &[CertificateDer<'_>],
    config: &serde_json::Value,
) -> serde_json::Value {
    let mut workloads: Vec<_> = state.workloads().map(|w| w.as_ref()).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<_> = state.services().map(|s| s.as_ref()).collect();
    services.sort_by_key(|s| s.key());
    let mut policies: Vec<_> = state.policies().iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let root_certs: Vec<CertsDump> = roots.iter().map(dump_der).collect();
    let mut certs: Vec<_> = certs.iter().collect();
    certs.sort_by(|a, b| a.0.cmp(&b.0));
    let certificates = certs
        .into_iter()
        .map(|(identity, cert)| CertDump {
            identity: identity.to_string(),
            state: "Available",
            cert_chain: dump_chain(cert),
            root_certs: root_certs.clone(),
        })
        .collect();
    let dump = ConfigDump {
        workloads,
        services,
        policies,
        certificates,
        config,
    };
    // Serialising plain data into a `Value` cannot fail (all map keys are strings or
    // integers); fall back to `null` rather than panic if that ever changes.
    serde_json::to_value(&dump).unwrap_or_else(|error| {
        tracing::error!(%error, "config_dump serialisation failed");
        serde_json::Value::Null
    })
}

/// The leaf (from the already-validated certificate) and the intermediates (parsed).
fn dump_chain(cert: &WorkloadCertificate) -> Vec<CertsDump> {
    let chain = cert.chain();
    let mut out = Vec::with_capacity(chain.len());
    if let Some(leaf) = chain.first() {
        out.push(CertsDump {
            pem: hbone::cert::certs_to_pem(std::slice::from_ref(leaf)),
            serial_number: cert.serial_hex(),
            valid_from: rfc3339(unix_seconds(cert.not_before())),
            expiration_time: rfc3339(unix_seconds(cert.not_after())),
        });
    }
    out.extend(chain.iter().skip(1).map(dump_der));
    out
}

/// One DER certificate; fields that cannot be parsed are left empty.
fn dump_der(der: &CertificateDer<'_>) -> CertsDump {
    let pem = hbone::cert::certs_to_pem(std::slice::from_ref(der));
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, x509)) => CertsDump {
            pem,
            serial_number: hex(x509.raw_serial()),
            valid_from: rfc3339(x509.validity().not_before.timestamp()),
            expiration_time: rfc3339(x509.validity().not_after.timestamp()),
        },
        Err(_) => CertsDump {
            pem,
            serial_number: String::new(),
            valid_from: String::new(),
            expiration_time: String::new(),
        },
    }
}

/// Lowercase hexadecimal without separators.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Formats Unix seconds as RFC 3339 in UTC, e.g. `2026-11-22T05:00:00Z` (proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
