//! Fault injection.

use std::time::Duration;

use crate::config::istio::AbortStatus;
use crate::filters::{
    ABORT_FLAG, DELAY_FLAG, FaultDecision, abort_response, decide_fault, grpc_status_code,
    http_to_grpc_status,
};
use crate::route::{Fault, FaultAbort, FaultDelay};

fn fault(delay_percent: Option<f64>, abort_percent: Option<f64>) -> Fault {
    Fault {
        delay: delay_percent.map(|percent| FaultDelay {
            delay: Duration::from_secs(5),
            percent,
        }),
        abort: abort_percent.map(|percent| FaultAbort {
            status: AbortStatus::Http(503),
            percent,
        }),
    }
}

#[test]
fn decides_by_roll() {
    let delay = Some(Duration::from_secs(5));
    let abort = Some(AbortStatus::Http(503));
    let cases = [
        (
            "100% delay, any roll",
            fault(Some(100.0), None),
            99.999,
            0.0,
            delay,
            None,
        ),
        (
            "0% delay never applies",
            fault(Some(0.0), None),
            0.0,
            0.0,
            None,
            None,
        ),
        (
            "roll below the share",
            fault(Some(10.0), None),
            9.99,
            0.0,
            delay,
            None,
        ),
        (
            "roll at the share",
            fault(Some(10.0), None),
            10.0,
            0.0,
            None,
            None,
        ),
        (
            "abort only",
            fault(None, Some(50.0)),
            0.0,
            49.0,
            None,
            abort.clone(),
        ),
        (
            "abort roll too high",
            fault(None, Some(50.0)),
            0.0,
            50.0,
            None,
            None,
        ),
        (
            "independent rolls: both",
            fault(Some(50.0), Some(50.0)),
            1.0,
            2.0,
            delay,
            abort.clone(),
        ),
        (
            "independent rolls: delay only",
            fault(Some(50.0), Some(50.0)),
            1.0,
            60.0,
            delay,
            None,
        ),
        (
            "fractional share",
            fault(Some(0.5), None),
            0.4,
            0.0,
            delay,
            None,
        ),
    ];
    for (name, fault, delay_roll, abort_roll, want_delay, want_abort) in cases {
        let decision = decide_fault(&fault, delay_roll, abort_roll);
        assert_eq!(
            decision,
            FaultDecision {
                delay: want_delay,
                abort: want_abort
            },
            "{name}"
        );
    }
}

#[test]
fn flags() {
    let both = FaultDecision {
        delay: Some(Duration::from_millis(1)),
        abort: Some(AbortStatus::Http(500)),
    };
    assert_eq!(both.response_flags().to_string(), "DI,FI");
    assert!(both.response_flags().contains(DELAY_FLAG));
    assert!(both.response_flags().contains(ABORT_FLAG));
    assert_eq!(FaultDecision::default().response_flags().to_string(), "-");
    assert!(FaultDecision::default().is_none());
}

#[test]
fn abort_responses() {
    struct Case {
        name: &'static str,
        status: AbortStatus,
        grpc: bool,
        http: u16,
        grpc_status: Option<&'static str>,
        body: &'static str,
        content_type: &'static str,
    }
    let cases = [
        Case {
            name: "http abort",
            status: AbortStatus::Http(503),
            grpc: false,
            http: 503,
            grpc_status: None,
            body: "fault filter abort",
            content_type: "text/plain",
        },
        Case {
            name: "http 418 abort",
            status: AbortStatus::Http(418),
            grpc: false,
            http: 418,
            grpc_status: None,
            body: "fault filter abort",
            content_type: "text/plain",
        },
        Case {
            name: "grpc status on a plain request is a 503",
            status: AbortStatus::Grpc("UNAVAILABLE".into()),
            grpc: false,
            http: 503,
            grpc_status: None,
            body: "fault filter abort",
            content_type: "text/plain",
        },
        Case {
            name: "grpc status on a grpc request",
            status: AbortStatus::Grpc("RESOURCE_EXHAUSTED".into()),
            grpc: true,
            http: 200,
            grpc_status: Some("8"),
            body: "",
            content_type: "application/grpc",
        },
        Case {
            name: "numeric grpc status",
            status: AbortStatus::Grpc("14".into()),
            grpc: true,
            http: 200,
            grpc_status: Some("14"),
            body: "",
            content_type: "application/grpc",
        },
        Case {
            name: "http status on a grpc request is mapped",
            status: AbortStatus::Http(503),
            grpc: true,
            http: 200,
            grpc_status: Some("14"),
            body: "",
            content_type: "application/grpc",
        },
        Case {
            name: "unknown grpc name is UNKNOWN",
            status: AbortStatus::Grpc("NOPE".into()),
            grpc: true,
            http: 200,
            grpc_status: Some("2"),
            body: "",
            content_type: "application/grpc",
        },
    ];
    for case in cases {
        let response = abort_response(&case.status, case.grpc);
        assert_eq!(response.status(), case.http, "{}", case.name);
        assert_eq!(
            response.body().as_ref(),
            case.body.as_bytes(),
            "{}",
            case.name
        );
        let header = |n: &str| {
            response
                .headers()
                .get(n)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some(case.content_type),
            "{}",
            case.name
        );
        assert_eq!(
            header("grpc-status").as_deref(),
            case.grpc_status,
            "{}",
            case.name
        );
        if case.grpc {
            assert_eq!(
                header("grpc-message").as_deref(),
                Some("fault filter abort"),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn grpc_codes() {
    let names = [
        ("OK", Some(0)),
        ("cancelled", Some(1)),
        ("DEADLINE_EXCEEDED", Some(4)),
        ("UNAVAILABLE", Some(14)),
        ("UNAUTHENTICATED", Some(16)),
        ("16", Some(16)),
        ("17", None),
        ("", None),
        ("SOMETHING", None),
    ];
    for (name, want) in names {
        assert_eq!(grpc_status_code(name), want, "{name:?}");
    }
    let http = [
        (400, 13),
        (401, 16),
        (403, 7),
        (404, 12),
        (429, 14),
        (502, 14),
        (503, 14),
        (504, 14),
        (500, 2),
        (418, 2),
    ];
    for (status, want) in http {
        assert_eq!(http_to_grpc_status(status), want, "{status}");
    }
}
