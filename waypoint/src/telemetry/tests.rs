//! Tests of the telemetry module: label derivation, the Prometheus exposition, the access log
//! formats and the sinks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use hbone::Identity;
use ztunnel::state::service::Service;
use ztunnel::state::workload::Workload;

use super::access_log::{JSON_KEYS, civil_from_days, format_rfc3339_millis};
use super::labels::{LABEL_COUNT, UNKNOWN, grpc_status_from_http};
use super::metrics::{BUCKETS, RECENT_LEN};
use super::*;

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

/// The labels of a 200 from sleep to reviews-v2 through the reviews service.
fn sleep_to_reviews() -> RequestLabels {
    RequestLabels::from_state(
        Some(&sleep()),
        Some(&id("spiffe://cluster.local/ns/default/sa/sleep")),
        Some(&reviews_svc()),
        Some(&reviews()),
        200,
    )
}

const SLEEP_TO_REVIEWS: &str = "reporter=\"waypoint\",source_workload=\"sleep\",\
source_canonical_service=\"sleep\",source_canonical_revision=\"latest\",\
source_workload_namespace=\"default\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\",source_app=\"sleep\",\
source_version=\"latest\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",\
destination_workload_namespace=\"bookinfo\",\
destination_principal=\"spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews\",\
destination_app=\"reviews\",destination_version=\"v2\",\
destination_service=\"reviews.bookinfo.svc.cluster.local\",\
destination_canonical_service=\"reviews\",destination_canonical_revision=\"v2\",\
destination_service_name=\"reviews\",destination_service_namespace=\"bookinfo\",\
destination_cluster=\"Kubernetes\",request_protocol=\"http\",response_code=\"200\",\
grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"";

// === labels ===

#[test]
fn labels_of_known_workloads() {
    let labels = sleep_to_reviews();
    assert_eq!(labels.to_string(), SLEEP_TO_REVIEWS);
    assert_eq!(labels.pairs().len(), LABEL_COUNT);
}

#[test]
fn labels_of_unknown_everything() {
    let labels = RequestLabels::from_state(None, None, None, None, 503)
        .with_response_flags(ResponseFlag::NoHealthyUpstream.into());
    for (name, value) in labels.pairs() {
        let expected = match name {
            "reporter" => "waypoint",
            "request_protocol" => "http",
            "response_code" => "503",
            "grpc_response_status" => "",
            "response_flags" => "UH",
            "connection_security_policy" => "mutual_tls",
            _ => UNKNOWN,
        };
        assert_eq!(value, expected, "{name}");
    }
}

#[test]
fn unknown_source_workload_keeps_authenticated_namespace_and_principal() {
    let peer = id("spiffe://cluster.local/ns/foo/sa/bar");
    let source = WorkloadLabels::source(None, Some(&peer));
    assert_eq!(source.workload, UNKNOWN);
    assert_eq!(source.canonical_service, UNKNOWN);
    assert_eq!(source.app, UNKNOWN);
    assert_eq!(source.workload_namespace, "foo");
    assert_eq!(source.principal, "spiffe://cluster.local/ns/foo/sa/bar");
}

#[test]
fn source_principal_is_the_peer_identity_not_the_workloads() {
    // A workload found by address whose identity differs from what the handshake proved.
    let source = WorkloadLabels::source(Some(&sleep()), None);
    assert_eq!(source.principal, UNKNOWN);
    assert_eq!(source.workload, "sleep");
    let other = id("spiffe://cluster.local/ns/default/sa/other");
    let source = WorkloadLabels::source(Some(&sleep()), Some(&other));
    assert_eq!(source.principal, other.to_string());
}

#[test]
fn workload_without_canonical_labels_is_unknown() {
    let bare = Workload::new("uid", id("spiffe://td/ns/ns1/sa/sa1"));
    let dest = DestinationLabels::new(None, Some(&bare));
    assert_eq!(dest.workload.workload, UNKNOWN);
    assert_eq!(dest.workload.canonical_revision, UNKNOWN);
    assert_eq!(dest.workload.version, UNKNOWN);
    assert_eq!(dest.workload.cluster, UNKNOWN);
    assert_eq!(dest.workload.workload_namespace, "ns1");
    assert_eq!(dest.workload.principal, "spiffe://td/ns/ns1/sa/sa1");
    assert_eq!(dest.service, UNKNOWN);
}

#[test]
fn grpc_status_label() {
    let labels = sleep_to_reviews().with_grpc_status(Some(5));
    let get = |l: &RequestLabels, n: &str| {
        l.pairs()
            .into_iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    assert_eq!(get(&labels, "request_protocol"), "grpc");
    assert_eq!(get(&labels, "grpc_response_status"), "5");
    // No grpc-status: derived from the HTTP status.
    let mut labels = sleep_to_reviews().with_grpc_status(None);
    labels.response_code = 503;
    assert_eq!(get(&labels, "grpc_response_status"), "14");
    assert_eq!(grpc_status_from_http(200), 2);
    assert_eq!(grpc_status_from_http(404), 12);
}

#[test]
fn response_flags_render_in_envoy_order() {
    assert_eq!(ResponseFlags::NONE.to_string(), "-");
    assert_eq!(ResponseFlags::NONE.to_str(), "-");
    let flags = ResponseFlags::one(ResponseFlag::UpstreamRequestTimeout)
        .with(ResponseFlag::UpstreamRetryLimitExceeded);
    assert_eq!(flags.to_string(), "URX,UT");
    assert_eq!(flags.to_str(), "URX,UT");
    assert_eq!(
        ResponseFlags::one(ResponseFlag::UpstreamOverflow).to_str(),
        "UO"
    );
    for flag in ResponseFlag::ALL {
        assert_eq!(ResponseFlag::parse(flag.as_str()), Some(flag));
    }
    assert_eq!(ResponseFlag::parse("XX"), None);
}

// === metrics ===

/// The lines of `text` starting with `prefix`.
fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn render_exact_series_for_recorded_requests() {
    let metrics = RequestMetrics::new();
    let labels = sleep_to_reviews();
    metrics.record(&labels, Duration::from_millis(3), 100, 2000);
    metrics.record(&labels, Duration::from_millis(7), 0, 20);
    let text = metrics.render();
    let l = SLEEP_TO_REVIEWS;

    assert!(
        text.contains(&format!("istio_requests_total{{{l}}} 2\n")),
        "{text}"
    );

    let d = "istio_request_duration_milliseconds";
    for (le, count) in [
        ("0.5", 0),
        ("1", 0),
        ("5", 1),
        ("10", 2),
        ("3600000", 2),
        ("+Inf", 2),
    ] {
        let line = format!("{d}_bucket{{{l},le=\"{le}\"}} {count}\n");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(text.contains(&format!("{d}_sum{{{l}}} 10\n")), "{text}");
    assert!(text.contains(&format!("{d}_count{{{l}}} 2\n")), "{text}");
    assert_eq!(
        lines_with(&text, &format!("{d}_bucket{{")).len(),
        BUCKETS.len() + 1
    );

    let q = "istio_request_bytes";
    for (le, count) in [("0.5", 1), ("100", 2), ("+Inf", 2)] {
        let line = format!("{q}_bucket{{{l},le=\"{le}\"}} {count}\n");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(text.contains(&format!("{q}_sum{{{l}}} 100\n")), "{text}");

    let r = "istio_response_bytes";
    for (le, count) in [("10", 0), ("25", 1), ("1000", 1), ("2500", 2)] {
        let line = format!("{r}_bucket{{{l},le=\"{le}\"}} {count}\n");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(text.contains(&format!("{r}_sum{{{l}}} 2020\n")), "{text}");
    assert!(text.contains(&format!("{r}_count{{{l}}} 2\n")), "{text}");

    for name in ["istio_requests_total", d, q, r] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }
    assert!(text.contains("# TYPE istio_requests_total counter\n"));
    assert!(text.contains(&format!("# TYPE {d} histogram\n")));
    assert!(
        !text.contains("quantile="),
        "histograms must not be summaries"
    );
    assert!(text.contains(&format!(
        "istio_build{{component=\"waypoint\",tag=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn render_separates_label_sets_and_keeps_buckets_in_order() {
    let metrics = RequestMetrics::new();
    let ok = sleep_to_reviews();
    let failed = sleep_to_reviews().with_response_flags(ResponseFlag::UpstreamOverflow.into());
    let failed = RequestLabels {
        response_code: 503,
        ..failed
    };
    metrics.record(&ok, Duration::from_millis(1), 1, 1);
    metrics.record(&failed, Duration::from_millis(1), 1, 1);
    metrics.record(&failed, Duration::from_millis(1), 1, 1);
    let text = metrics.render();
    let totals = lines_with(&text, "istio_requests_total{");
    assert_eq!(totals.len(), 2, "{text}");
    assert!(totals.iter().any(|l| l.contains("response_code=\"503\"")
        && l.contains("response_flags=\"UO\"")
        && l.ends_with(" 2")));
    // Within each series, buckets follow the bounds, then _sum and _count.
    let d = "istio_request_duration_milliseconds";
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(d)).collect();
    assert_eq!(lines.len(), 2 * (BUCKETS.len() + 3));
    for series in lines.chunks(BUCKETS.len() + 3) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            assert!(
                series[i].contains(&format!("le=\"{bound}\"")),
                "{}",
                series[i]
            );
        }
        assert!(series[BUCKETS.len()].contains("le=\"+Inf\""));
        assert!(series[BUCKETS.len() + 1].starts_with(&format!("{d}_sum{{")));
        assert!(series[BUCKETS.len() + 2].starts_with(&format!("{d}_count{{")));
    }
    // Deterministic.
    assert_eq!(text, metrics.render());
}

#[test]
fn instances_are_independent() {
    let a = RequestMetrics::new();
    let b = RequestMetrics::new();
    a.record(&sleep_to_reviews(), Duration::from_millis(1), 0, 0);
    assert!(a.render().contains("istio_requests_total{"));
    assert!(!b.render().contains("istio_requests_total{"));
}

#[test]
fn each_recording_reaches_its_own_series_whatever_each_thread_remembers() {
    let a = RequestMetrics::new();
    let b = RequestMetrics::new();
    let shared = sleep_to_reviews();
    // Equal labels built apart (other `Arc`s): the same series.
    let apart = sleep_to_reviews();
    // More label sets than a thread remembers, interleaved with the others.
    let codes: Vec<u16> = (0..u16::try_from(2 * RECENT_LEN).unwrap())
        .map(|i| 300 + i)
        .collect();
    for _ in 0..3 {
        for &code in &codes {
            let labels = RequestLabels {
                response_code: code,
                ..shared.clone()
            };
            a.record(&labels, Duration::from_millis(1), 0, 0);
        }
        a.record(&shared, Duration::from_millis(1), 0, 0);
        a.record(&apart, Duration::from_millis(1), 0, 0);
        // Another instance with the very same labels: its own series.
        b.record(&shared, Duration::from_millis(1), 0, 0);
    }
    let total = |metrics: &RequestMetrics, code: u16| {
        let text = metrics.render();
        let series = lines_with(&text, "istio_requests_total{")
            .into_iter()
            .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert_eq!(series.len(), 1, "{code}: {text}");
        series[0].rsplit(' ').next().unwrap().to_owned()
    };
    for &code in &codes {
        assert_eq!(total(&a, code), "3", "code {code}");
    }
    assert_eq!(total(&a, 200), "6");
    assert_eq!(total(&b, 200), "3");
    assert_eq!(
        lines_with(&b.render(), "istio_requests_total{").len(),
        1,
        "{}",
        b.render()
    );
}

#[test]
fn cluster_counters() {
    let metrics = RequestMetrics::new();
    let cluster = "inbound-vip|9080|http/v1|reviews.bookinfo.svc.cluster.local";
    metrics.count_overflow(cluster);
    metrics.count_overflow(cluster);
    metrics.count_ejection(cluster);
    metrics.count_cluster(ClusterStat::ConnectionOverflow, "other");
    let text = metrics.render();
    assert!(text.contains(&format!(
        "envoy_cluster_upstream_rq_pending_overflow{{cluster_name=\"{cluster}\"}} 2\n"
    )));
    assert!(text.contains(&format!(
        "envoy_cluster_outlier_detection_ejections_enforced_total{{cluster_name=\"{cluster}\"}} 1\n"
    )));
    assert!(text.contains("envoy_cluster_upstream_cx_overflow{cluster_name=\"other\"} 1\n"));
    assert!(text.contains("# TYPE envoy_cluster_upstream_rq_pending_overflow counter\n"));
}

#[test]
fn record_cost_is_printed() {
    let metrics = RequestMetrics::new();
    let source = Arc::new(WorkloadLabels::source(
        Some(&sleep()),
        Some(&id("spiffe://cluster.local/ns/default/sa/sleep")),
    ));
    let destination = Arc::new(DestinationLabels::new(
        Some(&reviews_svc()),
        Some(&reviews()),
    ));
    let codes = [200, 404, 503];
    let n: u32 = 30_000;
    let start = Instant::now();
    for i in 0..n {
        // Per request: the shared sides are cloned (two refcounts), the rest is Copy.
        let labels = RequestLabels::new(source.clone(), destination.clone(), codes[i as usize % 3]);
        metrics.record(&labels, Duration::from_micros(u64::from(i)), 100, 1000);
    }
    let per = start.elapsed() / n;
    println!("RequestMetrics::record: {per:?} per request ({n} requests, 3 label sets)");
    assert!(metrics.render().contains("istio_requests_total{"));
}

// === access log ===

fn entry() -> AccessLogEntry {
    let mut e = AccessLogEntry::new(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    e.route_name = Some("reviews-v2".into());
    e.method = Some(http::Method::GET);
    e.path = Some("/reviews/0?x=1".into());
    e.protocol = Some(http::Version::HTTP_11);
    e.response_code = 200;
    e.response_code_details = Some("via_upstream".into());
    e.bytes_received = 12;
    e.bytes_sent = 345;
    e.duration = Duration::from_micros(6_900);
    e.upstream_service_time = Some(Duration::from_millis(4));
    e.user_agent = Some("curl/8.5.0".into());
    e.request_id = Some("3f1c-9b".into());
    e.authority = Some("reviews:9080".into());
    e.upstream_host = Some("10.0.0.5:9080".into());
    e.downstream_local_address = Some("10.96.0.10:9080".parse::<SocketAddr>().unwrap());
    e.downstream_remote_address = Some("10.0.0.7:40000".parse::<SocketAddr>().unwrap());
    e.upstream_cluster = Some("inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local".into());
    e
}

#[test]
fn json_has_exactly_istios_keys() {
    let json: serde_json::Value = serde_json::from_str(&entry().to_json()).unwrap();
    let keys: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
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
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(JSON_KEYS.iter().copied().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn json_values_are_typed() {
    let line = entry().to_json();
    assert!(!line.contains('\n'));
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["start_time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["protocol"], "HTTP/1.1");
    assert_eq!(json["response_code"], 200);
    assert_eq!(json["response_flags"], "-");
    assert_eq!(json["bytes_received"], 12);
    assert_eq!(json["bytes_sent"], 345);
    assert_eq!(json["duration"], 6);
    assert_eq!(json["upstream_service_time"], "4");
    assert_eq!(json["x_forwarded_for"], serde_json::Value::Null);
    assert_eq!(
        json["connection_termination_details"],
        serde_json::Value::Null
    );
    assert_eq!(json["upstream_local_address"], serde_json::Value::Null);
    assert_eq!(json["downstream_remote_address"], "10.0.0.7:40000");
    // Keys in Istio's order.
    let order: Vec<usize> = JSON_KEYS
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn json_escapes_header_values() {
    let mut e = entry();
    e.user_agent = Some("evil\"\n\\agent\u{1}".into());
    let line = e.to_json();
    assert!(!line.contains('\n'));
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["user_agent"], "evil\"\n\\agent\u{1}");
}

#[test]
fn text_golden_line() {
    assert_eq!(
        entry().to_text(),
        "[2023-11-14T22:13:20.123Z] \"GET /reviews/0?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" \
         12 345 6 4 \"-\" \"curl/8.5.0\" \"3f1c-9b\" \"reviews:9080\" \"10.0.0.5:9080\" \
         inbound-vip|9080|http|reviews.bookinfo.svc.cluster.local - 10.96.0.10:9080 \
         10.0.0.7:40000 - reviews-v2"
    );
}

#[test]
fn text_of_an_empty_entry_and_control_characters() {
    let mut e = AccessLogEntry::new(UNIX_EPOCH);
    e.response_flags = ResponseFlags::one(ResponseFlag::NoRouteFound);
    e.response_code = 404;
    e.user_agent = Some("a\nb\u{7}".into());
    e.protocol = Some(http::Version::HTTP_2);
    assert_eq!(
        e.to_text(),
        "[1970-01-01T00:00:00.000Z] \"- - HTTP/2\" 404 NR - - \"-\" 0 0 0 - \"-\" \"a\\nb\\x07\" \
         \"-\" \"-\" \"-\" - - - - - -"
    );
}

#[test]
fn set_request_fills_head_fields() {
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "reviews:9080".parse().unwrap());
    headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
    headers.insert("x-request-id", "abc".parse().unwrap());
    headers.insert("user-agent", "ua".parse().unwrap());
    let uri: http::Uri = "/a/b?c=d".parse().unwrap();
    let mut e = AccessLogEntry::new(UNIX_EPOCH);
    e.set_request(&http::Method::POST, &uri, http::Version::HTTP_2, &headers);
    assert_eq!(e.method, Some(http::Method::POST));
    assert_eq!(e.path.as_deref(), Some("/a/b?c=d"));
    assert_eq!(e.authority.as_deref(), Some("reviews:9080"));
    assert_eq!(e.x_forwarded_for.as_deref(), Some("1.2.3.4"));
    assert_eq!(e.request_id.as_deref(), Some("abc"));
    assert_eq!(e.user_agent.as_deref(), Some("ua"));
    // The original path wins over a rewritten one.
    headers.insert("x-envoy-original-path", "/orig".parse().unwrap());
    e.set_request(&http::Method::POST, &uri, http::Version::HTTP_2, &headers);
    assert_eq!(e.path.as_deref(), Some("/orig"));
}

#[test]
fn start_time_formatting() {
    let at = |secs: u64, millis: u64| {
        format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis),
        )
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(1_704_067_200, 0), "2024-01-01T00:00:00.000Z");
    // Leap days: 2024-02-29, 2000-02-29 (divisible by 400), and 2100 is not a leap year.
    assert_eq!(at(1_709_208_000, 7), "2024-02-29T12:00:00.007Z");
    assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    assert_eq!(at(1_735_689_599, 500), "2024-12-31T23:59:59.500Z");
    assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000Z");
    // Sub-millisecond parts are truncated.
    assert_eq!(
        format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(1_999_999)),
        "1970-01-01T00:00:00.001Z"
    );
    // Before the epoch.
    assert_eq!(
        format_rfc3339_millis(UNIX_EPOCH - Duration::from_millis(1)),
        "1969-12-31T23:59:59.999Z"
    );
    assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    // Round trip against a day-by-day walk over four centuries.
    let mut date = (1970_i64, 1_u32, 1_u32);
    for days in 0..146_097 {
        assert_eq!(civil_from_days(days), date, "day {days}");
        date = next_day(date);
    }
}

/// The day after `(y, m, d)`, by the calendar rules.
fn next_day((y, m, d): (i64, u32, u32)) -> (i64, u32, u32) {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let len = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    match (d < len, m < 12) {
        (true, _) => (y, m, d + 1),
        (false, true) => (y, m + 1, 1),
        (false, false) => (y + 1, 1, 1),
    }
}

#[test]
fn format_parsing() {
    assert_eq!("json".parse::<AccessLogFormat>(), Ok(AccessLogFormat::Json));
    assert_eq!("TEXT".parse::<AccessLogFormat>(), Ok(AccessLogFormat::Text));
    let err = "yaml".parse::<AccessLogFormat>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown access log format \"yaml\": expected \"json\" or \"text\""
    );
}

#[test]
fn memory_sink_keeps_lines() {
    let (log, handle) = AccessLog::memory();
    assert!(log.is_enabled());
    log.log(&entry());
    let (text_log, text_handle) = AccessLog::memory();
    let text_log = text_log.with_format(AccessLogFormat::Text);
    text_log.log(&entry());
    assert_eq!(handle.lines(), vec![entry().to_json()]);
    assert_eq!(text_handle.lines(), vec![entry().to_text()]);
    handle.clear();
    assert!(handle.lines().is_empty());
}

#[test]
fn writer_sink_writes_one_line_per_entry() {
    /// A writer appending to a shared buffer.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Shared::default();
    let log = AccessLog::writer(AccessLogFormat::Text, buf.clone());
    log.log(&entry());
    log.log(&entry());
    // Flushed per line: visible without dropping the sink.
    let written = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(written, format!("{0}\n{0}\n", entry().to_text()));
    assert_eq!(log.write_errors(), 0);
}

#[test]
fn writer_errors_are_counted() {
    struct Failing;
    impl std::io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }
    let log = AccessLog::writer(AccessLogFormat::Json, Failing);
    log.log(&entry());
    log.log(&entry());
    assert_eq!(log.write_errors(), 2);
}

#[test]
fn disabled_sink() {
    let log = AccessLog::disabled();
    assert!(!log.is_enabled());
    log.log(&entry());
}
