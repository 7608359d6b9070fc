//! The spliced stream of a WebSocket upgrade: once the upstream answered `101` and the client
//! got it (see [`crate::filters::upgrade_answer`]), both HTTP/1.1 connections are handed over
//! by hyper ([`hyper::upgrade::on`]) and bytes are copied both ways until both directions have
//! ended, each half-close passed on ([`hbone::copy::copy_bidirectional`]).
//!
//! Deadlines: the route timeout covered the request up to the `101` only (as Envoy's router);
//! the downstream connection's idle timeout (`idle_timeout`, no request in flight) never runs
//! while the stream is open, because the stream counts as the request in flight. Instead the
//! same `idle_timeout` bounds the stream's inactivity: a stream that moved no byte either way
//! for a whole period is closed (checked once per period, so it is closed between one and two
//! periods after its last byte). An active WebSocket is never cut.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hbone::copy::{ByteCounters, Transferred};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// How a spliced stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpliceEnd {
    /// Both directions reached end of stream.
    Closed,
    /// A side failed (reset, I/O error) or an upgrade was not handed over.
    Failed,
    /// No byte moved for the inactivity period.
    Idle,
}

/// Splices the client's upgraded connection (`downstream`) with the upstream's until both
/// directions end, or the stream is idle for `idle` (`None`: never). Returns the bytes moved
/// client → upstream (`a_to_b`) and upstream → client (`b_to_a`).
pub(super) async fn splice(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    idle: Option<Duration>,
) -> (Transferred, SpliceEnd) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade not completed");
            return (Transferred::default(), SpliceEnd::Failed);
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    let counters = Arc::new(ByteCounters::default());
    let copy = hbone::copy::copy_bidirectional(
        &mut downstream,
        &mut upstream,
        Some(Arc::clone(&counters)),
    );
    tokio::select! {
        result = copy => match result {
            Ok(transferred) => (transferred, SpliceEnd::Closed),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket stream ended with an error");
                (e.transferred, SpliceEnd::Failed)
            }
        },
        () = inactive(&counters, idle) => {
            tracing::debug!("WebSocket stream idle: closing");
            (read(&counters), SpliceEnd::Idle)
        }
    }
}

fn read(counters: &ByteCounters) -> Transferred {
    Transferred {
        a_to_b: counters.a_to_b.load(Ordering::Relaxed),
        b_to_a: counters.b_to_a.load(Ordering::Relaxed),
    }
}

/// Resolves once a whole `idle` period passed without a byte moving; never when `idle` is
/// `None`.
async fn inactive(counters: &ByteCounters, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut last = read(counters);
    loop {
        tokio::time::sleep(idle).await;
        let now = read(counters);
        if now == last {
            return;
        }
        last = now;
    }
}
