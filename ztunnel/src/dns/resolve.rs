//! The resolution decision: is a query for a mesh hostname, and if so what does it answer?
//!
//! [`resolve`] is a pure function of the query (name and type), the asking pod's [`ClientScope`]
//! and one [`MeshState`] snapshot. It never does I/O; the server turns its [`Resolution`] into a
//! response or hands the query to the forwarder.
//!
//! The rules follow upstream ztunnel's DNS proxy:
//!
//! - Only `A` and `AAAA` questions of class `IN` are answered here; every other type (MX, SRV,
//!   TXT, ... even for mesh names) is [`Resolution::Forward`]ed.
//! - A queried name is tried under several *aliases*: as queried; expanded to the Kubernetes
//!   FQDN the way the pod's own resolver would (`name` → `name.<client ns>.svc.<domain>`,
//!   `name.ns` → `name.ns.svc.<domain>`, `name.ns.svc` → `name.ns.svc.<domain>`); and with one of
//!   the pod's search domains stripped off (a stub resolver with `ndots:5` first asks
//!   `www.example.com.<ns>.svc.cluster.local`), in which case the answer is a CNAME to the
//!   stripped name followed by its addresses, saving the client the rest of its search list.
//! - Each alias is tried as is, then as wildcards of decreasing specificity (`*.example.com`,
//!   `*.com`), matching wildcard ServiceEntry hosts.
//! - Among services sharing a hostname, the one in the client's namespace wins, then canonical
//!   ones ([`MeshState::services_by_hostname`]). Services without VIPs are skipped (headless
//!   services are left to the cluster's DNS).
//! - The answer holds the service's VIPs of the queried family on the client's network. A
//!   service found with no such VIP, or whose `ip_families` exclude the family, is
//!   [`Resolution::NoData`] (`NOERROR`, no answers): the name exists, so not `NXDOMAIN`.

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::DnsError;
use crate::state::{IpFamily, MeshState, NamespacedHostname};

#[cfg(test)]
mod tests;

/// TTL of the records answered from the mesh state (upstream's `DEFAULT_TTL_SECONDS`).
pub const TTL_SECONDS: u32 = 30;

/// The asking pod's view of DNS: its namespace and network, the cluster domain and its search
/// list. Built once per server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientScope {
    /// The pod's namespace (short names resolve in it, and its services win ties).
    namespace: String,
    /// The pod's network: only VIPs on it are answered.
    network: String,
    /// Labels of the cluster domain, lowercase (`["cluster", "local"]`).
    cluster_domain: Vec<String>,
    /// Labels of each search domain, lowercase.
    search_domains: Vec<Vec<String>>,
}

impl ClientScope {
    /// The scope of a pod in `namespace` on `network`. `search_domains` is the pod's search
    /// list; when empty, Kubernetes' default for the namespace is used
    /// (`<ns>.svc.<domain> svc.<domain> <domain>`, as upstream hard-codes it).
    pub fn new(
        namespace: &str,
        network: &str,
        cluster_domain: &str,
        search_domains: &[String],
    ) -> Result<Self, DnsError> {
        let cluster = domain_labels(cluster_domain)?;
        let search = if search_domains.is_empty() {
            vec![
                format!("{namespace}.svc.{cluster_domain}"),
                format!("svc.{cluster_domain}"),
                cluster_domain.to_owned(),
            ]
        } else {
            search_domains.to_vec()
        };
        let search_domains = search
            .iter()
            .map(|d| domain_labels(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            namespace: namespace.to_owned(),
            network: network.to_owned(),
            cluster_domain: cluster,
            search_domains,
        })
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Splits a configured domain into lowercase labels, refusing what no query could match.
fn domain_labels(domain: &str) -> Result<Vec<String>, DnsError> {
    let trimmed = domain.trim_end_matches('.');
    let valid = !trimmed.is_empty()
        && trimmed.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(DnsError::InvalidDomain(domain.to_owned()));
    }
    Ok(trimmed.split('.').map(str::to_ascii_lowercase).collect())
}

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A mesh hostname with addresses of the queried family.
    Answer(Answer),
    /// A mesh hostname without addresses of the queried family: `NOERROR`, no answers.
    NoData {
        /// The service found.
        service: NamespacedHostname,
    },
    /// Not ours: relay the query to the pod's upstream resolvers.
    Forward,
}

/// An answer from the mesh state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The service found.
    pub service: NamespacedHostname,
    /// When a search domain was stripped to find the service: the queried name, which gets a
    /// CNAME to [`Answer::name`].
    pub cname_from: Option<Name>,
    /// Owner of the address records: the queried name, or the stripped one.
    pub name: Name,
    /// The service VIPs of the queried family on the client's network, in VIP order.
    pub addrs: Vec<IpAddr>,
}

impl Answer {
    /// The answer section: the optional CNAME, then one `A`/`AAAA` record per address, all
    /// with TTL [`TTL_SECONDS`].
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.addrs.len() + 1);
        if let Some(from) = &self.cname_from {
            out.push(record(from.clone(), RData::CNAME(CNAME(self.name.clone()))));
        }
        for addr in &self.addrs {
            let data = match addr {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            out.push(record(self.name.clone(), data));
        }
        out
    }
}

/// A class `IN` record with the proxy's TTL.
fn record(name: Name, data: RData) -> Record {
    let mut r = Record::from_rdata(name, TTL_SECONDS, data);
    r.dns_class = DNSClass::IN;
    r
}

/// One form of the queried name to look up.
#[derive(Debug)]
struct Alias {
    /// Lowercase labels.
    labels: Vec<String>,
    /// How many leading labels of the query remain when a search domain was stripped.
    stripped: Option<usize>,
}

/// Decides how to handle a question for `name` of type `record_type` and class `class`, asked
/// by the pod of `scope`, against `state`.
pub fn resolve(
    state: &MeshState,
    scope: &ClientScope,
    name: &Name,
    record_type: RecordType,
    class: DNSClass,
) -> Resolution {
    let family = match record_type {
        RecordType::A => IpFamily::IPv4,
        RecordType::AAAA => IpFamily::IPv6,
        _ => return Resolution::Forward,
    };
    if class != DNSClass::IN {
        return Resolution::Forward;
    }
    let Some(labels) = plain_labels(name) else {
        return Resolution::Forward;
    };
    for alias in aliases(scope, labels) {
        for (host, wildcard) in wildcards(&alias.labels) {
            let best = state
                .services_by_hostname(&host, Some(&scope.namespace))
                .into_iter()
                .find(|s| !s.vips.is_empty());
            let Some(service) = best else { continue };
            let key = service.key();
            let excluded = matches!(
                (service.ip_families, family),
                (Some(IpFamily::IPv4), IpFamily::IPv6) | (Some(IpFamily::IPv6), IpFamily::IPv4)
            );
            let addrs: Vec<IpAddr> = service
                .vips
                .iter()
                .filter(|v| v.network == scope.network && same_family(v.ip, family))
                .map(|v| v.ip)
                .collect();
            if excluded || addrs.is_empty() {
                return Resolution::NoData { service: key };
            }
            // Found through a stripped search domain: CNAME from the queried name to the
            // stripped one, which owns the addresses (not for wildcards, as upstream).
            let stripped_owner = match alias.stripped {
                Some(keep) if !wildcard => leading_labels(name, keep),
                _ => None,
            };
            let (owner, cname_from) = match stripped_owner {
                Some(owner) => (owner, Some(name.clone())),
                None => (name.clone(), None),
            };
            return Resolution::Answer(Answer {
                service: key,
                cname_from,
                name: owner,
                addrs,
            });
        }
    }
    Resolution::Forward
}

/// The first `keep` labels of `name`, as an FQDN, case preserved.
fn leading_labels(name: &Name, keep: usize) -> Option<Name> {
    let mut out = Name::from_labels(name.iter().take(keep)).ok()?;
    out.set_fqdn(true);
    Some(out)
}

/// Whether `ip` is of `family` (`IPv4` or `IPv6`).
fn same_family(ip: IpAddr, family: IpFamily) -> bool {
    matches!(
        (ip, family),
        (IpAddr::V4(_), IpFamily::IPv4) | (IpAddr::V6(_), IpFamily::IPv6)
    )
}

/// The lowercase labels of `name`, or `None` when a label holds anything a mesh hostname
/// cannot (hostnames are letters, digits, `-`, `_`, and `*` for wildcards).
fn plain_labels(name: &Name) -> Option<Vec<String>> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| {
            l.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
                .then(|| String::from_utf8_lossy(l).to_ascii_lowercase())
        })
        .collect::<Option<_>>()?;
    (!labels.is_empty()).then_some(labels)
}

/// The aliases of a queried name, most specific first, without duplicates.
fn aliases(scope: &ClientScope, labels: Vec<String>) -> Vec<Alias> {
    let mut out: Vec<Alias> = kube_fqdns(scope, &labels);
    for search in &scope.search_domains {
        if labels.len() > search.len() && labels.ends_with(search) {
            let keep = labels.len() - search.len();
            for mut alias in kube_fqdns(scope, &labels[..keep]) {
                if !out.iter().any(|a| a.labels == alias.labels) {
                    alias.stripped = Some(keep);
                    out.push(alias);
                }
            }
        }
    }
    out
}

/// `labels` itself, then the Kubernetes service FQDN it is a short form of, if any:
/// `svc` → `svc.<client ns>.svc.<domain>`, `svc.ns` → `svc.ns.svc.<domain>`, `svc.ns.svc` →
/// `svc.ns.svc.<domain>`.
fn kube_fqdns(scope: &ClientScope, labels: &[String]) -> Vec<Alias> {
    let mut out = vec![Alias {
        labels: labels.to_vec(),
        stripped: None,
    }];
    let svc = || "svc".to_owned();
    let suffix: Vec<String> = match labels {
        [_] => [
            vec![scope.namespace.to_ascii_lowercase(), svc()],
            scope.cluster_domain.clone(),
        ]
        .concat(),
        [_, _] => [vec![svc()], scope.cluster_domain.clone()].concat(),
        [_, _, last] if last == "svc" => scope.cluster_domain.clone(),
        _ => Vec::new(),
    };
    if !suffix.is_empty() {
        out.push(Alias {
            labels: [labels.to_vec(), suffix].concat(),
            stripped: None,
        });
    }
    out
}

/// The hostnames to look up for an alias: itself, then wildcards replacing ever more leading
/// labels (`a.b.c` → `a.b.c`, `*.b.c`, `*.c`); the flag tells wildcards apart.
fn wildcards(labels: &[String]) -> impl Iterator<Item = (String, bool)> + '_ {
    let exact = std::iter::once((labels.join("."), false));
    let wild = (1..labels.len()).map(move |i| (format!("*.{}", labels[i..].join(".")), true));
    exact.chain(wild)
}
