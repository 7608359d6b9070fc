//! Tests of the telemetry module: label derivation, the Prometheus exposition and the access
//! log formats.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::Identity;

use super::*;
use crate::state::service::Service;
use crate::state::workload::Workload;

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn sleep() -> Workload {
    let mut w = Workload::new(
        "Kubernetes//Pod/default/sleep-5d8b9c-x2x",
        id("spiffe://cluster.local/ns/default/sa/sleep"),
    );
    w.name = "sleep-5d8b9c-x2x".into();
    w.workload_name = "sleep".into();
    w.canonical_name = "sleep".into();
    w.canonical_revision = "latest".into();
    w.cluster_id = "Kubernetes".into();
    w
}

fn reviews() -> Workload {
    let mut w = Workload::new(
        "Kubernetes//Pod/bookinfo/reviews-v2-7f9c",
        id("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"),
    );
    w.name = "reviews-v2-7f9c".into();
    w.workload_name = "reviews-v2".into();
    w.canonical_name = "reviews".into();
    w.canonical_revision = "v2".into();
    w.cluster_id = "Kubernetes".into();
    w
}

fn reviews_svc() -> Service {
    Service {
        name: "reviews".into(),
        namespace: "bookinfo".into(),
        hostname: "reviews.bookinfo.svc.cluster.local".into(),
        vips: Vec::new(),
        ports: Default::default(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancer: None,
        ip_families: None,
        canonical: false,
    }
}

/// The labels of an inbound mTLS connection from sleep to the reviews service.
fn inbound_mtls() -> ConnectionLabels {
    ConnectionLabels::new(
        Reporter::Destination,
        Some(&sleep()),
        Some(&sleep().identity()),
        Some(&reviews()),
        Some(&reviews_svc()),
        None,
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    )
}

const ISTIO_LABEL_NAMES: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

// ---- labels ----

#[test]
fn label_names_are_istios_in_order() {
    let names: Vec<_> = inbound_mtls().pairs().iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ISTIO_LABEL_NAMES);
}

#[test]
fn labels_table() {
    let sleep = sleep();
    let reviews = reviews();
    let svc = reviews_svc();
    let sleep_id = sleep.identity();
    let other_id = id("spiffe://td/ns/x/sa/y");
    let u = "unknown";

    struct Case<'a> {
        name: &'a str,
        labels: ConnectionLabels,
        want: [&'a str; 23],
    }
    let cases = [
        Case {
            name: "inbound mTLS, everything known",
            labels: inbound_mtls(),
            want: [
                "destination",
                "sleep",
                "sleep",
                "latest",
                "default",
                "spiffe://cluster.local/ns/default/sa/sleep",
                "sleep",
                "latest",
                "Kubernetes",
                "reviews.bookinfo.svc.cluster.local",
                "bookinfo",
                "reviews",
                "reviews-v2",
                "reviews",
                "v2",
                "bookinfo",
                "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
                "reviews",
                "v2",
                "Kubernetes",
                "tcp",
                "-",
                "mutual_tls",
            ],
        },
        Case {
            name: "outbound plaintext: principals unknown, no service",
            labels: ConnectionLabels::new(
                Reporter::Source,
                Some(&sleep),
                Some(&sleep_id),
                Some(&reviews),
                None,
                Some(&other_id),
                SecurityPolicy::Unknown,
                ResponseFlags::Connect,
            ),
            want: [
                "source",
                "sleep",
                "sleep",
                "latest",
                "default",
                u,
                "sleep",
                "latest",
                "Kubernetes",
                u,
                u,
                u,
                "reviews-v2",
                "reviews",
                "v2",
                "bookinfo",
                u,
                "reviews",
                "v2",
                "Kubernetes",
                "tcp",
                "CONNECT",
                "unknown",
            ],
        },
        Case {
            name: "nothing known",
            labels: ConnectionLabels::new(
                Reporter::Destination,
                None,
                None,
                None,
                None,
                None,
                SecurityPolicy::MutualTls,
                ResponseFlags::None,
            ),
            want: [
                "destination",
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                "tcp",
                "-",
                "mutual_tls",
            ],
        },
        Case {
            name: "mTLS peer without a known workload; explicit destination identity wins",
            labels: ConnectionLabels::new(
                Reporter::Destination,
                None,
                Some(&other_id),
                Some(&reviews),
                Some(&svc),
                Some(&other_id),
                SecurityPolicy::MutualTls,
                ResponseFlags::Deny,
            ),
            want: [
                "destination",
                u,
                u,
                u,
                u,
                "spiffe://td/ns/x/sa/y",
                u,
                u,
                u,
                "reviews.bookinfo.svc.cluster.local",
                "bookinfo",
                "reviews",
                "reviews-v2",
                "reviews",
                "v2",
                "bookinfo",
                "spiffe://td/ns/x/sa/y",
                "reviews",
                "v2",
                "Kubernetes",
                "tcp",
                "DENY",
                "mutual_tls",
            ],
        },
        Case {
            name: "empty workload fields become unknown; namespace comes from the identity",
            labels: ConnectionLabels::new(
                Reporter::Source,
                Some(&Workload::new("uid", other_id.clone())),
                None,
                None,
                None,
                None,
                SecurityPolicy::MutualTls,
                ResponseFlags::Other("UH"),
            ),
            want: [
                "source",
                u,
                u,
                u,
                "x",
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                u,
                "tcp",
                "UH",
                "mutual_tls",
            ],
        },
    ];
    for case in cases {
        let got: Vec<_> = case.labels.pairs().iter().map(|(_, v)| *v).collect();
        assert_eq!(got, case.want, "{}", case.name);
    }
}

#[test]
fn response_flag_strings() {
    for (flag, s) in [
        (ResponseFlags::None, "-"),
        (ResponseFlags::Deny, "DENY"),
        (ResponseFlags::Connect, "CONNECT"),
        (ResponseFlags::TlsFailure, "TLS_FAILURE"),
        (ResponseFlags::H2HandshakeFailure, "H2_HANDSHAKE_FAILURE"),
        (ResponseFlags::NetworkPolicy, "NETWORK_POLICY"),
        (ResponseFlags::IdentityError, "IDENTITY_ERROR"),
        (ResponseFlags::CertRevoked, "CERT_REVOKED"),
        (ResponseFlags::Other("NR"), "NR"),
    ] {
        assert_eq!(flag.as_str(), s);
        assert_eq!(ResponseFlags::from(s), flag);
    }
    assert_eq!(ResponseFlags::from(""), ResponseFlags::None);
    let closed = inbound_mtls().with_response_flags(ResponseFlags::Deny);
    assert_eq!(closed.response_flags.as_str(), "DENY");
}

// ---- metrics ----

/// The label block of [`inbound_mtls`] as the exporter renders it.
const INBOUND_MTLS: &str = "reporter=\"destination\",source_workload=\"sleep\",\
source_canonical_service=\"sleep\",source_canonical_revision=\"latest\",\
source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",source_app=\"sleep\",\
source_version=\"latest\",source_cluster=\"Kubernetes\",\
destination_service=\"reviews.bookinfo.svc.cluster.local\",\
destination_service_namespace=\"bookinfo\",destination_service_name=\"reviews\",\
destination_workload=\"reviews-v2\",destination_canonical_service=\"reviews\",\
destination_canonical_revision=\"v2\",destination_workload_namespace=\"bookinfo\",\
destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\",\
destination_app=\"reviews\",destination_version=\"v2\",destination_cluster=\"Kubernetes\",\
request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"";

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn labels_display_matches_exposition() {
    assert_eq!(inbound_mtls().to_string(), INBOUND_MTLS);
}

#[test]
fn render_exact_output() {
    let m = Metrics::new();
    let l = inbound_mtls();
    m.opened(&l);
    m.bytes(&l, 100, 20);
    m.bytes(&l, 1, 2);
    m.closed(&l);
    let version = env!("CARGO_PKG_VERSION");
    let want = format!(
        "# HELP istio_build Istio component build info\n\
         # TYPE istio_build gauge\n\
         istio_build{{component=\"ztunnel\",tag=\"{version}\"}} 1\n\
         \n\
         # HELP istio_tcp_connections_closed_total The total number of TCP connections closed\n\
         # TYPE istio_tcp_connections_closed_total counter\n\
         istio_tcp_connections_closed_total{{{INBOUND_MTLS}}} 1\n\
         \n\
         # HELP istio_tcp_connections_opened_total The total number of TCP connections opened\n\
         # TYPE istio_tcp_connections_opened_total counter\n\
         istio_tcp_connections_opened_total{{{INBOUND_MTLS}}} 1\n\
         \n\
         # HELP istio_tcp_received_bytes_total The size of total bytes received during request \
         in case of a TCP connection\n\
         # TYPE istio_tcp_received_bytes_total counter\n\
         istio_tcp_received_bytes_total{{{INBOUND_MTLS}}} 22\n\
         \n\
         # HELP istio_tcp_sent_bytes_total The size of total bytes sent during response in case \
         of a TCP connection\n\
         # TYPE istio_tcp_sent_bytes_total counter\n\
         istio_tcp_sent_bytes_total{{{INBOUND_MTLS}}} 101\n"
    );
    assert_eq!(m.render(), want);
}

#[test]
fn counters_per_label_set_and_failed() {
    let m = Metrics::new();
    let ok = inbound_mtls();
    let denied = ok.clone().with_response_flags(ResponseFlags::Deny);
    m.opened(&ok);
    m.opened(&ok);
    m.closed(&ok);
    m.failed(&denied);
    m.closed(&denied);
    let counters = m.byte_counters(&ok);
    counters.add(5, 0);
    counters.add(5, 7);
    let out = m.render();
    let denied_labels = INBOUND_MTLS.replace("response_flags=\"-\"", "response_flags=\"DENY\"");
    for line in [
        format!("istio_tcp_connections_opened_total{{{INBOUND_MTLS}}} 2"),
        format!("istio_tcp_connections_closed_total{{{INBOUND_MTLS}}} 1"),
        format!("istio_tcp_connections_closed_total{{{denied_labels}}} 1"),
        format!("istio_tcp_connections_failed_total{{{denied_labels}}} 1"),
        format!("istio_tcp_sent_bytes_total{{{INBOUND_MTLS}}} 10"),
        format!("istio_tcp_received_bytes_total{{{INBOUND_MTLS}}} 7"),
        "# HELP istio_tcp_connections_failed_total The total number of TCP connections that \
         failed to establish (unstable)"
            .to_owned(),
        "# TYPE istio_tcp_connections_failed_total counter".to_owned(),
    ] {
        assert!(has_line(&out, &line), "missing {line}\nin\n{out}");
    }
    // Only touched series are exported: no failed counter for the successful label set.
    assert!(!out.contains(&format!(
        "istio_tcp_connections_failed_total{{{INBOUND_MTLS}}}"
    )));
    assert!(!out.contains(&format!(
        "istio_tcp_connections_opened_total{{{denied_labels}}}"
    )));
}

#[test]
fn instances_are_independent() {
    let a = Metrics::new();
    let b = Metrics::new();
    let l = inbound_mtls();
    a.opened(&l);
    a.opened(&l);
    b.opened(&l);
    let line = |n: u64| format!("istio_tcp_connections_opened_total{{{INBOUND_MTLS}}} {n}");
    assert!(has_line(&a.render(), &line(2)));
    assert!(has_line(&b.render(), &line(1)));
    let c = Metrics::new();
    assert!(!c.render().contains("istio_tcp_connections_opened_total"));
    assert!(c.render().contains("istio_build{component=\"ztunnel\""));
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    let mut l = inbound_mtls();
    l.source_workload = "a\"b\\c".into();
    m.opened(&l);
    assert!(m.render().contains("source_workload=\"a\\\"b\\\\c\""));
    assert!(l.to_string().contains("source_workload=\"a\\\"b\\\\c\""));
}

#[test]
fn metrics_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
    let m = Arc::new(Metrics::new());
    let l = inbound_mtls();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, l) = (m.clone(), l.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    m.bytes(&l, 1, 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(has_line(
        &m.render(),
        &format!("istio_tcp_sent_bytes_total{{{INBOUND_MTLS}}} 400")
    ));
}

// ---- access log ----

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn success() -> AccessLog {
    AccessLog {
        src_workload: Some("sleep-5d8b9c-x2x".into()),
        src_namespace: Some("default".into()),
        src_identity: Some(id("spiffe://cluster.local/ns/default/sa/sleep")),
        dst_hbone_addr: Some("10.0.1.7:9080".into()),
        dst_service: Some("reviews.bookinfo.svc.cluster.local".into()),
        dst_workload: Some("reviews-v2-7f9c".into()),
        dst_namespace: Some("bookinfo".into()),
        dst_identity: Some(id("spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")),
        bytes_sent: 120,
        bytes_recv: 4096,
        duration: Duration::from_micros(13_900),
        ..AccessLog::new(
            Direction::Outbound,
            addr("10.0.0.5:41234"),
            addr("10.0.1.7:15008"),
        )
    }
}

fn failure() -> AccessLog {
    AccessLog {
        src_workload: Some("sleep-5d8b9c-x2x".into()),
        src_namespace: Some("default".into()),
        dst_workload: Some("reviews-v2-7f9c".into()),
        dst_namespace: Some("bookinfo".into()),
        duration: Duration::from_millis(2),
        error: Some("connection refused (os error 111)".into()),
        ..AccessLog::new(
            Direction::Inbound,
            addr("10.0.0.5:41234"),
            addr("10.0.1.7:9080"),
        )
    }
}

const SUCCESS_TEXT: &str = "connection complete src.addr=10.0.0.5:41234 \
src.workload=sleep-5d8b9c-x2x src.namespace=default \
src.identity=spiffe://cluster.local/ns/default/sa/sleep dst.addr=10.0.1.7:15008 \
dst.hbone_addr=10.0.1.7:9080 dst.service=reviews.bookinfo.svc.cluster.local \
dst.workload=reviews-v2-7f9c dst.namespace=bookinfo \
dst.identity=spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews direction=outbound \
bytes_sent=120 bytes_recv=4096 duration=13ms";

const FAILURE_TEXT: &str = "connection failed src.addr=10.0.0.5:41234 \
src.workload=sleep-5d8b9c-x2x src.namespace=default dst.addr=10.0.1.7:9080 \
dst.workload=reviews-v2-7f9c dst.namespace=bookinfo direction=inbound bytes_sent=0 \
bytes_recv=0 duration=2ms error=\"connection refused (os error 111)\"";

#[test]
fn access_log_text() {
    assert_eq!(success().to_text(), SUCCESS_TEXT);
    assert_eq!(failure().to_text(), FAILURE_TEXT);
}

#[test]
fn access_log_json() {
    assert_eq!(
        success().to_json(),
        "{\"level\":\"info\",\"scope\":\"access\",\"message\":\"connection complete\",\
         \"src.addr\":\"10.0.0.5:41234\",\"src.workload\":\"sleep-5d8b9c-x2x\",\
         \"src.namespace\":\"default\",\
         \"src.identity\":\"spiffe://cluster.local/ns/default/sa/sleep\",\
         \"dst.addr\":\"10.0.1.7:15008\",\"dst.hbone_addr\":\"10.0.1.7:9080\",\
         \"dst.service\":\"reviews.bookinfo.svc.cluster.local\",\
         \"dst.workload\":\"reviews-v2-7f9c\",\"dst.namespace\":\"bookinfo\",\
         \"dst.identity\":\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\",\
         \"direction\":\"outbound\",\"bytes_sent\":120,\"bytes_recv\":4096,\
         \"duration\":\"13ms\"}"
    );
    assert_eq!(
        failure().to_json(),
        "{\"level\":\"warn\",\"scope\":\"access\",\"message\":\"connection failed\",\
         \"src.addr\":\"10.0.0.5:41234\",\"src.workload\":\"sleep-5d8b9c-x2x\",\
         \"src.namespace\":\"default\",\"dst.addr\":\"10.0.1.7:9080\",\
         \"dst.workload\":\"reviews-v2-7f9c\",\"dst.namespace\":\"bookinfo\",\
         \"direction\":\"inbound\",\"bytes_sent\":0,\"bytes_recv\":0,\"duration\":\"2ms\",\
         \"error\":\"connection refused (os error 111)\"}"
    );
    for log in [success(), failure()] {
        let json = log.to_json();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["direction"], log.direction.as_str());
    }
}

#[test]
fn access_log_quoting() {
    let mut log = failure();
    log.error = Some("bad \"thing\"\nhappened".into());
    log.dst_service = Some(String::new());
    let text = log.to_text();
    assert!(text.contains(" dst.service=\"\" "), "{text}");
    assert!(
        text.ends_with(" error=\"bad \\\"thing\\\"\\nhappened\""),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&log.to_json()).unwrap();
    assert_eq!(v["error"], "bad \"thing\"\nhappened");
}

#[test]
fn access_log_from_labels() {
    let src = addr("10.0.0.5:41234");
    let dst = addr("10.0.1.7:15008");
    let log = AccessLog::from_labels(&inbound_mtls(), src, dst);
    assert_eq!(log.direction, Direction::Inbound);
    assert_eq!(log.src_workload.as_deref(), Some("sleep"));
    assert_eq!(log.src_namespace.as_deref(), Some("default"));
    assert_eq!(log.src_identity, Some(sleep().identity()));
    assert_eq!(log.src_cluster.as_deref(), Some("Kubernetes"));
    assert_eq!(
        log.dst_service.as_deref(),
        Some("reviews.bookinfo.svc.cluster.local")
    );
    assert_eq!(log.dst_identity, Some(reviews().identity()));
    // Plaintext: no identities; unknown values are absent.
    let plain = ConnectionLabels::new(
        Reporter::Source,
        Some(&sleep()),
        Some(&sleep().identity()),
        None,
        None,
        None,
        SecurityPolicy::Unknown,
        ResponseFlags::None,
    );
    let log = AccessLog::from_labels(&plain, src, dst);
    assert_eq!(log.direction, Direction::Outbound);
    assert_eq!(log.src_identity, None);
    assert_eq!(log.dst_identity, None);
    assert_eq!(log.dst_service, None);
    assert_eq!(log.dst_namespace, None);
}

/// A `MakeWriter` collecting everything written into a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn emit_logs_at_target_access() {
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        success().emit();
        failure().emit();
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!(" INFO access: {SUCCESS_TEXT}"),
            format!(" WARN access: {FAILURE_TEXT}"),
        ]
    );
}
