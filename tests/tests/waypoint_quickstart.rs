//! The README's first command, `waypoint quickstart --once`, in-process: the local mesh from
//! the embedded examples with a waypoint in front of `reviews` v1/v2/v3, its L4 demo client
//! and its L7 demo client, whose requests must follow the VirtualService (`end-user: jason` →
//! v2, the rest 80/20 v1/v3) and be counted by the waypoint.
//!
//! It uses the quickstart's fixed loopback addresses (127.0.0.1–3, .9, .11–13) and ports
//! (15000, 15008, 15020, 15021, 15080), like tests/tests/quickstart.rs; the two are separate
//! test binaries, which cargo runs one after the other, so they never overlap. Keep it the
//! only test in this binary.

#![allow(clippy::unwrap_used, missing_docs)]

use waypoint::quickstart::{HEADER_ROUTE, Options, SERVICE, SPLIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_quickstart_routes_by_header_and_weight_and_counts_it() {
    let state = tempfile::tempdir().unwrap();
    let opts = Options::new(
        state.path(),
        std::sync::Arc::new(ztunnel::quickstart::FixedLogLevel("info".into())),
    );
    let q = waypoint::quickstart::start(&opts).await.unwrap();
    let r = q.report.clone();
    let summary = q.summary();
    assert!(r.failures.is_empty(), "{:?}\n{summary}", r.failures);

    // The L4 demo still works, and its request to `reviews` went through the waypoint.
    let trial = |target: &str| {
        q.mesh
            .trials
            .iter()
            .find(|t| t.target == target)
            .unwrap_or_else(|| panic!("no trial {target}: {summary}"))
            .clone()
    };
    let httpbin = trial("httpbin.default.svc.cluster.local:80");
    assert!(
        httpbin
            .answer
            .as_deref()
            .unwrap()
            .starts_with("hello from httpbin at 127.0.0.2:8000;"),
        "{summary}"
    );
    assert_eq!(trial("127.0.0.2:9999").socks_reply, 2, "{summary}");
    let reviews = trial(&format!("{SERVICE}:9080"));
    let answer = reviews.answer.as_deref().unwrap_or_default();
    assert!(
        answer.starts_with("hello from reviews-v1 at 127.0.0.11:9080;")
            || answer.starts_with("hello from reviews-v3 at 127.0.0.13:9080;"),
        "the L4 demo's plain request to reviews must take the 80/20 route: {summary}"
    );
    assert_eq!(r.l4_answers.values().sum::<usize>(), 1, "{summary}");

    // `end-user: jason` → v2, every time.
    let (_, _, routed) = HEADER_ROUTE;
    assert_eq!(r.header_sent, 10);
    assert_eq!(
        r.header_answers.keys().collect::<Vec<_>>(),
        [routed],
        "{summary}"
    );
    assert!(r.header_all_routed(), "{summary}");

    // The rest: only v1 and v3, v1's share Binomial(200, 0.8): sd = 2.83 points; allow ±6 sd.
    assert_eq!(r.split_sent, 200);
    assert_eq!(r.split_answers.values().sum::<usize>(), 200, "{summary}");
    assert_eq!(
        r.split_answers.get("v2"),
        None,
        "v2 gets no unmatched request: {summary}"
    );
    let (v1, weight) = SPLIT[0];
    let expected = f64::from(weight) / 100.0;
    let sd = (expected * (1.0 - expected) / 200.0).sqrt();
    let share = r.split_share(v1);
    assert!(
        (share - expected).abs() <= 6.0 * sd,
        "{v1} share {share} vs {expected}: {summary}"
    );
    assert!(r.split_share("v3") > 0.0, "{summary}");

    // The waypoint's metrics count exactly what the clients saw, per destination_version.
    let counted = r.answered_through_waypoint();
    assert_eq!(r.waypoint_requests, counted, "{summary}");
    assert_eq!(counted.values().sum::<u64>(), 211, "{summary}");

    // Its access log has the first request, routed by the `jason` route to the v2 subset.
    let line = r.access_log_line.as_deref().unwrap();
    assert!(
        line.contains("\"GET /reviews/jason HTTP/1.1\" 200"),
        "{line}"
    );
    assert!(
        line.contains("inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"),
        "{line}"
    );
    assert!(line.ends_with(" jason"), "{line}");

    // What the command prints.
    assert!(summary.contains("all on v2, as routed"), "{summary}");
    assert!(
        summary.contains("istio_requests_total{reporter=\"waypoint\"} by destination_version: v1 "),
        "{summary}"
    );
    assert!(summary.contains("(through the waypoint)"), "{summary}");

    // The files the user can edit were written to the state directory.
    let mesh = std::fs::read_to_string(state.path().join("mesh.yaml")).unwrap();
    assert!(mesh.contains("reviews-v3") && mesh.contains("httpbin"));
    assert!(state.path().join("l7/reviews-routing.yaml").is_file());
    q.shutdown().await;
}
