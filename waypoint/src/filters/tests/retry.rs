//! Retry decisions and backoff.

use std::time::Duration;

use crate::config::istio::RetryOn;
use crate::filters::{
    AttemptOutcome, RETRY_BUFFER_LIMIT, RetryDecision, body_retryable, decide_retry, retry_backoff,
    should_retry,
};
use crate::route::RetryPolicy;

fn policy(retry_on: &[RetryOn], codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: retry_on.to_vec(),
        retriable_status_codes: codes.to_vec(),
        backoff: None,
        ignore_previous_hosts: true,
    }
}

#[test]
fn conditions() {
    use AttemptOutcome::{ConnectFailure, RefusedStream, Reset, Response, Timeout};
    let ok = |status| Response(status, None);
    let grpc = |code| Response(200, Some(code));
    // (condition, outcomes retried, outcomes not retried)
    let cases: Vec<(RetryOn, Vec<AttemptOutcome>, Vec<AttemptOutcome>)> = vec![
        (
            RetryOn::FiveXx,
            vec![
                ok(500),
                ok(503),
                ok(599),
                ConnectFailure,
                Reset,
                Timeout,
                RefusedStream,
            ],
            vec![ok(200), ok(404), ok(409), grpc(14)],
        ),
        (
            RetryOn::GatewayError,
            vec![
                ok(502),
                ok(503),
                ok(504),
                ConnectFailure,
                Reset,
                Timeout,
                RefusedStream,
            ],
            vec![ok(500), ok(501), ok(200)],
        ),
        (
            RetryOn::Reset,
            vec![
                ConnectFailure,
                AttemptOutcome::Reset,
                Timeout,
                RefusedStream,
            ],
            vec![ok(503)],
        ),
        (
            RetryOn::ResetBeforeRequest,
            vec![ConnectFailure, RefusedStream],
            vec![AttemptOutcome::Reset, Timeout, ok(503)],
        ),
        (
            RetryOn::ConnectFailure,
            vec![AttemptOutcome::ConnectFailure],
            vec![
                AttemptOutcome::Reset,
                Timeout,
                AttemptOutcome::RefusedStream,
                ok(503),
            ],
        ),
        (
            RetryOn::RefusedStream,
            vec![AttemptOutcome::RefusedStream],
            vec![
                AttemptOutcome::ConnectFailure,
                AttemptOutcome::Reset,
                ok(503),
            ],
        ),
        (
            RetryOn::Retriable4xx,
            vec![ok(409)],
            vec![ok(400), ok(429), ok(503)],
        ),
        (
            RetryOn::RetriableStatusCodes,
            vec![ok(503), ok(429)],
            vec![ok(500), AttemptOutcome::ConnectFailure],
        ),
        (RetryOn::Cancelled, vec![grpc(1)], vec![grpc(14), ok(503)]),
        (RetryOn::DeadlineExceeded, vec![grpc(4)], vec![grpc(1)]),
        (RetryOn::ResourceExhausted, vec![grpc(8)], vec![grpc(14)]),
        (RetryOn::Internal, vec![grpc(13)], vec![grpc(2)]),
        (
            RetryOn::Unavailable,
            vec![grpc(14), Response(503, Some(14))],
            vec![grpc(0), ok(503)],
        ),
        (RetryOn::EnvoyRatelimited, vec![], vec![ok(429), ok(503)]),
    ];
    for (condition, retried, not_retried) in cases {
        let policy = policy(&[condition], &[503, 429]);
        for outcome in retried {
            assert_eq!(
                decide_retry(&policy, 0, &outcome),
                RetryDecision::Retry,
                "{condition:?} should retry {outcome:?}"
            );
        }
        for outcome in not_retried {
            assert_eq!(
                decide_retry(&policy, 0, &outcome),
                RetryDecision::Done,
                "{condition:?} should not retry {outcome:?}"
            );
        }
    }
}

#[test]
fn retry_limit() {
    let policy = RetryPolicy::istio_default();
    let cases = [
        (
            "first retry",
            0,
            AttemptOutcome::ConnectFailure,
            RetryDecision::Retry,
        ),
        (
            "second retry",
            1,
            AttemptOutcome::Response(503, None),
            RetryDecision::Retry,
        ),
        (
            "retries used up",
            2,
            AttemptOutcome::ConnectFailure,
            RetryDecision::LimitExceeded,
        ),
        (
            "success is done",
            0,
            AttemptOutcome::Response(200, None),
            RetryDecision::Done,
        ),
        (
            "success after retries is done",
            2,
            AttemptOutcome::Response(200, None),
            RetryDecision::Done,
        ),
        (
            "istio default does not retry 500",
            0,
            AttemptOutcome::Response(500, None),
            RetryDecision::Done,
        ),
        (
            "istio default does not retry a reset",
            0,
            AttemptOutcome::Reset,
            RetryDecision::Done,
        ),
        (
            "istio default retries gRPC unavailable",
            0,
            AttemptOutcome::Response(200, Some(14)),
            RetryDecision::Retry,
        ),
    ];
    for (name, done, outcome, want) in cases {
        assert_eq!(decide_retry(&policy, done, &outcome), want, "{name}");
        let retry = want == RetryDecision::Retry;
        assert_eq!(should_retry(&policy, done + 1, &outcome), retry, "{name}");
    }
}

#[test]
fn outcome_flags_and_statuses() {
    let cases = [
        (AttemptOutcome::Response(503, None), None, None),
        (AttemptOutcome::ConnectFailure, Some("UF"), Some(503)),
        (AttemptOutcome::Reset, Some("UR"), Some(503)),
        (AttemptOutcome::RefusedStream, Some("UR"), Some(503)),
        (AttemptOutcome::Timeout, Some("UT"), Some(504)),
    ];
    for (outcome, flag, status) in cases {
        assert_eq!(
            outcome.response_flag().map(|f| f.as_str()),
            flag,
            "{outcome:?}"
        );
        assert_eq!(outcome.error_status(), status, "{outcome:?}");
    }
}

#[test]
fn backoff_is_fully_jittered_exponential() {
    let default = RetryPolicy::istio_default();
    let custom = RetryPolicy {
        backoff: Some(Duration::from_millis(100)),
        ..RetryPolicy::istio_default()
    };
    let ms = Duration::from_millis;
    let cases = [
        ("first retry, lowest roll", &default, 1, 0.0, ms(0)),
        ("first retry, highest roll", &default, 1, 0.999_999, ms(24)),
        ("first retry, middle", &default, 1, 0.5, ms(12)),
        ("second retry, highest roll", &default, 2, 0.999_999, ms(74)),
        ("third retry, highest roll", &default, 3, 0.999_999, ms(174)),
        (
            "fourth retry is capped at 10x base",
            &default,
            4,
            0.999_999,
            ms(250),
        ),
        (
            "huge retry number is capped",
            &default,
            200,
            0.999_999,
            ms(250),
        ),
        (
            "retry 0 counts as the first",
            &default,
            0,
            0.999_999,
            ms(24),
        ),
        ("roll of 1 stays below the range", &default, 1, 1.0, ms(24)),
        ("NaN roll", &default, 1, f64::NAN, ms(0)),
        ("custom base", &custom, 2, 0.5, ms(150)),
        ("custom base cap", &custom, 10, 0.999_999, ms(1000)),
    ];
    for (name, policy, retry, roll, want) in cases {
        assert_eq!(retry_backoff(policy, retry, roll), want, "{name}");
    }
}

#[test]
fn body_limit() {
    assert!(body_retryable(0));
    assert!(body_retryable(RETRY_BUFFER_LIMIT));
    assert!(!body_retryable(RETRY_BUFFER_LIMIT + 1));
    assert_eq!(RETRY_BUFFER_LIMIT, 65536);
}
