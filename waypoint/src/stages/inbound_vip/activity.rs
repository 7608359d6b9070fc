//! The idle timeout of a downstream HTTP connection (Envoy's `idle_timeout`): the connection
//! is closed once no request has been in flight on it for that long. It sits beside the HTTP
//! server of the inbound VIP listener: every request holds an [`InFlight`] from its head to the
//! end of its response body (or of its spliced WebSocket), and the connection's task runs
//! [`Activity::idle_expired`] next to the server.
//!
//! A request only touches two atomics: it never wakes the connection's task nor re-arms a
//! timer. The timer is checked when it fires instead ([`next_check`], a pure decision): if the
//! connection was idle for the whole timeout it is closed, otherwise the timer is set again for
//! the end of the timeout counted from the last moment it was busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The requests in flight on one downstream connection and when it last became idle.
#[derive(Debug)]
pub(super) struct Activity {
    /// The time the other fields count from.
    base: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in nanoseconds from `base` (0 before any).
    idle_since: AtomicU64,
    /// Woken when the count drops to zero ([`Activity::drained`]).
    zero: Notify,
}

/// One request in flight; dropping it ends the request.
#[derive(Debug)]
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Recorded before the count drops, so that whoever sees the count at zero also sees
        // this time (or a later one).
        activity
            .idle_since
            .fetch_max(activity.nanos(Instant::now()), Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.zero.notify_waiters();
        }
    }
}

/// What the idle timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Idle for the whole timeout: close the connection.
    Expired,
    /// Busy at some point since: check again then.
    At(Instant),
}

/// The idle timer's decision at `now`, with `in_flight` requests open and the last one ended
/// at `idle_since` (the connection's start if none has).
pub(super) fn next_check(
    in_flight: usize,
    idle_since: Instant,
    now: Instant,
    idle: Duration,
) -> Check {
    if in_flight > 0 {
        return Check::At(now + idle);
    }
    let expires = idle_since + idle;
    if expires <= now {
        Check::Expired
    } else {
        Check::At(expires)
    }
}

impl Activity {
    /// No request in flight, idle from now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            zero: Notify::new(),
        })
    }

    /// A request starts.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Resolves when no request has been in flight for `idle`; never when `idle` is `None`.
    pub(super) async fn idle_expired(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        let timer = tokio::time::sleep_until(self.base + idle);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            let in_flight = self.in_flight.load(Ordering::Acquire);
            let since = self.idle_since.load(Ordering::Acquire);
            let idle_since = self.base + Duration::from_nanos(since);
            match next_check(in_flight, idle_since, Instant::now(), idle) {
                Check::Expired => return,
                Check::At(at) => timer.as_mut().reset(at),
            }
        }
    }

    /// Resolves once no request is in flight.
    pub(super) async fn drained(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn the_timer_decides_from_the_count_and_the_last_idle_moment() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (in flight, idle since, now) → decision
        let table = [
            // Idle since the start, the whole timeout: closed.
            (0, t0, t0 + s(10), Check::Expired),
            (0, t0, t0 + s(12), Check::Expired),
            // A request ended 4 s ago: 6 s left.
            (0, t0 + s(6), t0 + s(10), Check::At(t0 + s(16))),
            // Ended just now: a whole timeout again.
            (0, t0 + s(10), t0 + s(10), Check::At(t0 + s(20))),
            // Busy: never closed; checked a timeout later.
            (1, t0, t0 + s(10), Check::At(t0 + s(20))),
            (3, t0, t0 + s(50), Check::At(t0 + s(60))),
        ];
        for (in_flight, since, now, want) in table {
            assert_eq!(
                next_check(in_flight, since, now, IDLE),
                want,
                "{in_flight} in flight, idle since {:?}, now {:?}",
                since - t0,
                now - t0
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_a_timeout_after_its_last_request() {
        let activity = Activity::new();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let request = activity.start();
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(request);
        activity.idle_expired(Some(IDLE)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(33));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection_open() {
        let activity = Activity::new();
        let _request = activity.start();
        let expired =
            tokio::time::timeout(Duration::from_secs(100), activity.idle_expired(Some(IDLE))).await;
        assert!(expired.is_err(), "expired with a request in flight");
        let never = tokio::time::timeout(Duration::from_secs(100), activity.idle_expired(None));
        assert!(never.await.is_err(), "no idle timeout: never expires");
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_the_last_request() {
        let activity = Activity::new();
        activity.drained().await;
        let first = activity.start();
        let second = activity.start();
        let waiter = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                activity.drained().await;
                Instant::now()
            }
        });
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "drained with a request in flight");
        drop(second);
        let drained_at = waiter.await.expect("waiter");
        assert_eq!(drained_at - start, Duration::from_secs(2));
    }
}
