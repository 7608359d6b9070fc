//! Table tests of the resolution decision.

use std::net::IpAddr;

use hickory_proto::rr::{DNSClass, Name, RecordType};

use super::*;
use crate::dns::tests::{mesh, n};

/// The expected outcome of a case.
#[derive(Debug)]
enum Want {
    /// Answer for service `ns/host`: (CNAME from the queried name?, owner, addresses).
    Answer(
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static [&'static str],
    ),
    /// NODATA for service `ns/host`.
    NoData(&'static str),
    /// Forward.
    Forward,
}

struct Case {
    name: &'static str,
    query: &'static str,
    record_type: RecordType,
    want: Want,
}

fn case(name: &'static str, query: &'static str, record_type: RecordType, want: Want) -> Case {
    Case {
        name,
        query,
        record_type,
        want,
    }
}

fn ns1() -> ClientScope {
    ClientScope::new("ns1", "", "cluster.local", &[]).unwrap()
}

fn expected(want: &Want) -> Resolution {
    let key = |k: &str| {
        let (ns, host) = k.split_once('/').unwrap();
        NamespacedHostname::new(ns, host)
    };
    match want {
        Want::Answer(service, cname, owner, addrs) => Resolution::Answer(Answer {
            service: key(service),
            cname_from: None,
            name: n(owner),
            addrs: addrs.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect(),
        })
        .with_cname(*cname),
        Want::NoData(service) => Resolution::NoData {
            service: key(service),
        },
        Want::Forward => Resolution::Forward,
    }
}

impl Resolution {
    /// Sets the CNAME owner of an answer (test helper).
    fn with_cname(self, from: Option<&str>) -> Self {
        match self {
            Resolution::Answer(mut a) => {
                a.cname_from = from.map(n);
                Resolution::Answer(a)
            }
            other => other,
        }
    }
}

const PRODUCTPAGE: &str = "ns1/productpage.ns1.svc.cluster.local";

#[test]
fn resolve_table() {
    use RecordType::{A, AAAA, MX, SRV, TXT};
    let cases = [
        // Kubernetes short forms, from the client's namespace.
        case(
            "short name in own namespace",
            "productpage.",
            A,
            Want::Answer(PRODUCTPAGE, None, "productpage.", &["10.0.0.1"]),
        ),
        case(
            "name.namespace",
            "productpage.ns1.",
            A,
            Want::Answer(PRODUCTPAGE, None, "productpage.ns1.", &["10.0.0.1"]),
        ),
        case(
            "name.namespace.svc",
            "productpage.ns1.svc.",
            A,
            Want::Answer(PRODUCTPAGE, None, "productpage.ns1.svc.", &["10.0.0.1"]),
        ),
        case(
            "fqdn",
            "productpage.ns1.svc.cluster.local.",
            A,
            Want::Answer(
                PRODUCTPAGE,
                None,
                "productpage.ns1.svc.cluster.local.",
                &["10.0.0.1"],
            ),
        ),
        case(
            "case-insensitive, owner keeps the query's case",
            "ProductPage.NS1.svc.Cluster.Local.",
            A,
            Want::Answer(
                PRODUCTPAGE,
                None,
                "ProductPage.NS1.svc.Cluster.Local.",
                &["10.0.0.1"],
            ),
        ),
        case(
            "not fully qualified query name",
            "productpage",
            A,
            Want::Answer(PRODUCTPAGE, None, "productpage", &["10.0.0.1"]),
        ),
        case(
            "other namespace: name.namespace",
            "example.ns2.",
            A,
            Want::Answer(
                "ns2/example.ns2.svc.cluster.local",
                None,
                "example.ns2.",
                &["10.0.0.2"],
            ),
        ),
        case(
            "other namespace: short name is not ours",
            "example.",
            A,
            Want::Forward,
        ),
        case(
            "name.namespace.svc with a wrong middle label is not a kube form",
            "productpage.ns1.xyz.",
            A,
            Want::Forward,
        ),
        // Search domains appended by the client's stub resolver.
        case(
            "search domain stripped: CNAME to name.namespace",
            "productpage.ns1.ns1.svc.cluster.local.",
            A,
            Want::Answer(
                PRODUCTPAGE,
                Some("productpage.ns1.ns1.svc.cluster.local."),
                "productpage.ns1.",
                &["10.0.0.1"],
            ),
        ),
        case(
            "search domain stripped, AAAA of an IPv4 service: NODATA",
            "productpage.ns1.ns1.svc.cluster.local.",
            AAAA,
            Want::NoData(PRODUCTPAGE),
        ),
        case(
            "ServiceEntry host with the namespace search domain: CNAME",
            "api.example.com.ns1.svc.cluster.local.",
            A,
            Want::Answer(
                "ns2/api.example.com",
                Some("api.example.com.ns1.svc.cluster.local."),
                "api.example.com.",
                &["240.240.0.1"],
            ),
        ),
        case(
            "ServiceEntry host with the cluster-domain search domain: CNAME",
            "api.example.com.cluster.local.",
            A,
            Want::Answer(
                "ns2/api.example.com",
                Some("api.example.com.cluster.local."),
                "api.example.com.",
                &["240.240.0.1"],
            ),
        ),
        // ServiceEntry hosts and wildcards.
        case(
            "ServiceEntry host",
            "api.example.com.",
            A,
            Want::Answer(
                "ns2/api.example.com",
                None,
                "api.example.com.",
                &["240.240.0.1"],
            ),
        ),
        case(
            "wildcard ServiceEntry host",
            "foo.wild.example.com.",
            A,
            Want::Answer(
                "ns2/*.wild.example.com",
                None,
                "foo.wild.example.com.",
                &["240.240.0.2"],
            ),
        ),
        case(
            "wildcard, deeper name",
            "a.b.wild.example.com.",
            A,
            Want::Answer(
                "ns2/*.wild.example.com",
                None,
                "a.b.wild.example.com.",
                &["240.240.0.2"],
            ),
        ),
        case(
            "wildcard through a stripped search domain: no CNAME",
            "foo.wild.example.com.ns1.svc.cluster.local.",
            A,
            Want::Answer(
                "ns2/*.wild.example.com",
                None,
                "foo.wild.example.com.ns1.svc.cluster.local.",
                &["240.240.0.2"],
            ),
        ),
        case(
            "wildcard does not match its own suffix",
            "wild.example.com.",
            A,
            Want::Forward,
        ),
        // Families and networks.
        case(
            "dual-stack service, A",
            "dual.",
            A,
            Want::Answer(
                "ns1/dual.ns1.svc.cluster.local",
                None,
                "dual.",
                &["10.0.0.3"],
            ),
        ),
        case(
            "dual-stack service, AAAA",
            "dual.",
            AAAA,
            Want::Answer(
                "ns1/dual.ns1.svc.cluster.local",
                None,
                "dual.",
                &["fd00::3"],
            ),
        ),
        case(
            "IPv4 service, AAAA: NODATA, not NXDOMAIN",
            "productpage.",
            AAAA,
            Want::NoData(PRODUCTPAGE),
        ),
        case(
            "IPv6 service, A: NODATA",
            "v6only.",
            A,
            Want::NoData("ns1/v6only.ns1.svc.cluster.local"),
        ),
        case(
            "ip_families IPv4 hides an IPv6 VIP",
            "v4family.",
            AAAA,
            Want::NoData("ns1/v4family.ns1.svc.cluster.local"),
        ),
        case(
            "ip_families IPv4, A",
            "v4family.",
            A,
            Want::Answer(
                "ns1/v4family.ns1.svc.cluster.local",
                None,
                "v4family.",
                &["10.0.0.5"],
            ),
        ),
        case(
            "VIP only on another network: NODATA",
            "remote.",
            A,
            Want::NoData("ns1/remote.ns1.svc.cluster.local"),
        ),
        case(
            "several VIPs, in VIP order",
            "multi.",
            A,
            Want::Answer(
                "ns1/multi.ns1.svc.cluster.local",
                None,
                "multi.",
                &["10.0.1.1", "10.0.1.2"],
            ),
        ),
        case(
            "service without VIPs is left to the cluster DNS",
            "headless.",
            A,
            Want::Forward,
        ),
        case(
            "same host in several namespaces: the client's wins",
            "shared.example.com.",
            A,
            Want::Answer(
                "ns1/shared.example.com",
                None,
                "shared.example.com.",
                &["240.240.1.1"],
            ),
        ),
        // Not ours.
        case("external name", "www.google.com.", A, Want::Forward),
        case("MX for a mesh name", "productpage.", MX, Want::Forward),
        case(
            "SRV for a mesh name",
            "productpage.ns1.svc.cluster.local.",
            SRV,
            Want::Forward,
        ),
        case(
            "TXT for a ServiceEntry host",
            "api.example.com.",
            TXT,
            Want::Forward,
        ),
        case("root", ".", A, Want::Forward),
    ];
    let state = mesh();
    let scope = ns1();
    for c in cases {
        let got = resolve(&state, &scope, &n(c.query), c.record_type, DNSClass::IN);
        assert_eq!(got, expected(&c.want), "{}", c.name);
    }
}

#[test]
fn other_classes_are_forwarded() {
    let got = resolve(
        &mesh(),
        &ns1(),
        &n("productpage."),
        RecordType::A,
        DNSClass::CH,
    );
    assert_eq!(got, Resolution::Forward);
}

#[test]
fn names_with_unusual_bytes_are_forwarded() {
    let name = Name::from_labels(vec![&b"a.b"[..], b"ns1"]).unwrap();
    let got = resolve(&mesh(), &ns1(), &name, RecordType::A, DNSClass::IN);
    assert_eq!(got, Resolution::Forward);
}

#[test]
fn client_namespace_decides_short_names() {
    let ns2 = ClientScope::new("ns2", "", "cluster.local", &[]).unwrap();
    let got = resolve(&mesh(), &ns2, &n("example."), RecordType::A, DNSClass::IN);
    assert_eq!(
        got,
        expected(&Want::Answer(
            "ns2/example.ns2.svc.cluster.local",
            None,
            "example.",
            &["10.0.0.2"]
        ))
    );
    let got = resolve(
        &mesh(),
        &ns2,
        &n("productpage."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(got, Resolution::Forward);
    // A shared host prefers the client's namespace.
    let got = resolve(
        &mesh(),
        &ns2,
        &n("shared.example.com."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(
        got,
        expected(&Want::Answer(
            "ns2/shared.example.com",
            None,
            "shared.example.com.",
            &["240.240.1.2"]
        ))
    );
}

#[test]
fn client_network_decides_vips() {
    let nw2 = ClientScope::new("ns1", "nw2", "cluster.local", &[]).unwrap();
    let got = resolve(&mesh(), &nw2, &n("remote."), RecordType::A, DNSClass::IN);
    assert_eq!(
        got,
        expected(&Want::Answer(
            "ns1/remote.ns1.svc.cluster.local",
            None,
            "remote.",
            &["10.9.0.1"]
        ))
    );
    // The default-network VIP of productpage is not reachable from nw2.
    let got = resolve(
        &mesh(),
        &nw2,
        &n("productpage."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(got, expected(&Want::NoData(PRODUCTPAGE)));
}

#[test]
fn custom_search_domains_and_cluster_domain() {
    let scope = ClientScope::new(
        "ns1",
        "",
        "cluster.local",
        &[
            "corp.example".to_owned(),
            "ns1.svc.cluster.local.".to_owned(),
        ],
    )
    .unwrap();
    let got = resolve(
        &mesh(),
        &scope,
        &n("api.example.com.corp.example."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(
        got,
        expected(&Want::Answer(
            "ns2/api.example.com",
            Some("api.example.com.corp.example."),
            "api.example.com.",
            &["240.240.0.1"]
        ))
    );
    // The Kubernetes defaults are replaced: `svc.cluster.local` is no longer stripped.
    let got = resolve(
        &mesh(),
        &scope,
        &n("api.example.com.svc.cluster.local."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(got, Resolution::Forward);

    // Another cluster domain: short names expand to it.
    let other = ClientScope::new("ns1", "", "corp.internal", &[]).unwrap();
    let got = resolve(
        &mesh(),
        &other,
        &n("productpage."),
        RecordType::A,
        DNSClass::IN,
    );
    assert_eq!(got, Resolution::Forward);
}

#[test]
fn invalid_domains_are_refused() {
    for bad in ["", ".", "a..b", "bad domain", "x\\y"] {
        assert!(
            ClientScope::new("ns1", "", bad, &[]).is_err(),
            "cluster domain {bad:?}"
        );
        assert!(
            ClientScope::new("ns1", "", "cluster.local", &[bad.to_owned()]).is_err(),
            "search domain {bad:?}"
        );
    }
    assert_eq!(ns1().namespace(), "ns1");
}

#[test]
fn answer_records() {
    let answer = Answer {
        service: NamespacedHostname::new("ns1", "x"),
        cname_from: Some(n("x.ns1.ns1.svc.cluster.local.")),
        name: n("x.ns1."),
        addrs: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    };
    let records = answer.records();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r.ttl == TTL_SECONDS && r.dns_class == DNSClass::IN)
    );
    assert_eq!(records[0].record_type(), RecordType::CNAME);
    assert_eq!(records[0].name, n("x.ns1.ns1.svc.cluster.local."));
    assert_eq!(records[1].record_type(), RecordType::A);
    assert_eq!(records[1].name, n("x.ns1."));
    assert_eq!(records[2].record_type(), RecordType::AAAA);
}
