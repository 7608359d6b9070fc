//! Circuit breakers: request limit, HTTP/1.1 connection slots with a FIFO pending queue,
//! overflow, retries, connection limits.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::config::duration::IstioDuration;
use crate::config::istio::ConnectionPoolSettings;

fn pool_cluster(
    max_connections: Option<u32>,
    max_pending: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
) -> Arc<Cluster> {
    let mut pool = ConnectionPoolSettings::default();
    pool.tcp.max_connections = max_connections;
    pool.http.http1_max_pending_requests = max_pending;
    pool.http.http2_max_requests = max_requests;
    pool.http.max_retries = max_retries;
    let policy = ClusterPolicy {
        connection_pool: pool,
        ..ClusterPolicy::default()
    };
    Arc::new(Cluster::with_seed("c".into(), &policy, endpoints(2), 1))
}

/// Lets spawned tasks run until they block.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn http2_admits_up_to_max_requests_then_overflows_at_once() {
    let c = pool_cluster(Some(1), Some(0), Some(3), None);
    let mut permits = Vec::new();
    for _ in 0..3 {
        // maxConnections does not limit multiplexed HTTP/2 requests.
        permits.push(c.admit(UpstreamProtocol::Http2).await.unwrap());
    }
    let err = c.admit(UpstreamProtocol::Http2).await.unwrap_err();
    assert_eq!(err, Overflow::Requests { limit: 3 });
    assert_eq!((err.response_flag(), err.status()), ("UO", 503));
    assert_eq!(c.stats().upstream_rq_active, 3);
    assert_eq!(c.stats().upstream_rq_pending_overflow, 1);
    permits.pop();
    let _again = c.admit(UpstreamProtocol::Http2).await.unwrap();
    assert_eq!(c.stats().upstream_rq_active, 3);
}

#[tokio::test(flavor = "current_thread")]
async fn http1_waits_in_the_pending_queue_then_overflows() {
    // Istio's circuit-breaking task: maxConnections 1, http1MaxPendingRequests 1.
    let c = pool_cluster(Some(1), Some(1), None, None);
    let first = c.admit(UpstreamProtocol::Http1).await.unwrap();

    let waiter = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.admit(UpstreamProtocol::Http1).await }
    });
    settle().await;
    assert!(!waiter.is_finished());
    assert_eq!(c.stats().upstream_rq_pending_active, 1);

    let err = c.admit(UpstreamProtocol::Http1).await.unwrap_err();
    assert_eq!(err, Overflow::PendingQueue { limit: 1 });
    assert_eq!(c.stats().upstream_rq_pending_overflow, 1);

    drop(first);
    let second = waiter
        .await
        .unwrap()
        .expect("admitted once the slot is free");
    let stats = c.stats();
    assert_eq!(
        (stats.upstream_rq_active, stats.upstream_rq_pending_active),
        (1, 0)
    );
    drop(second);
    assert_eq!(c.stats().upstream_rq_active, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn pending_requests_are_released_fifo() {
    let c = pool_cluster(Some(1), Some(10), None, None);
    let first = c.admit(UpstreamProtocol::Http1).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for id in 0..5 {
        let c = Arc::clone(&c);
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = c.admit(UpstreamProtocol::Http1).await.unwrap();
            tx.send(id).unwrap();
            settle().await;
            drop(permit);
        }));
        // Enqueue in order.
        settle().await;
    }
    assert_eq!(c.stats().upstream_rq_pending_active, 5);
    drop(first);
    for task in tasks {
        task.await.unwrap();
    }
    drop(tx);
    let mut order = Vec::new();
    while let Some(id) = rx.recv().await {
        order.push(id);
    }
    assert_eq!(order, [0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_waiter_leaves_the_queue() {
    let c = pool_cluster(Some(1), Some(1), None, None);
    let first = c.admit(UpstreamProtocol::Http1).await.unwrap();
    let waiter = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.admit(UpstreamProtocol::Http1).await.map(drop) }
    });
    settle().await;
    assert_eq!(c.stats().upstream_rq_pending_active, 1);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(c.stats().upstream_rq_pending_active, 0);
    // The queue has room again, and the slot is not leaked.
    let second = tokio::spawn({
        let c = Arc::clone(&c);
        async move { c.admit(UpstreamProtocol::Http1).await.map(drop) }
    });
    settle().await;
    drop(first);
    second.await.unwrap().unwrap();
    let _third = c.admit(UpstreamProtocol::Http1).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn max_requests_is_checked_when_the_connection_slot_is_granted() {
    // Free connection slots but no request slot: overflow at once, slot handed back.
    let c = pool_cluster(Some(5), Some(5), Some(1), None);
    let _first = c.admit(UpstreamProtocol::Http1).await.unwrap();
    assert_eq!(
        c.admit(UpstreamProtocol::Http1).await.unwrap_err(),
        Overflow::Requests { limit: 1 }
    );
    assert_eq!(c.stats().upstream_rq_pending_active, 0);
    assert_eq!(c.stats().upstream_rq_active, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn defaults_are_unlimited() {
    let c = pool_cluster(None, None, None, None);
    let limits = *c.request_limits();
    assert_eq!(
        limits,
        RequestLimits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
        }
    );
    let mut permits = Vec::new();
    for i in 0..2000 {
        let protocol = if i % 2 == 0 {
            UpstreamProtocol::Http1
        } else {
            UpstreamProtocol::Http2
        };
        permits.push(c.admit(protocol).await.unwrap());
    }
    let retries: Vec<RetryPermit> = (0..2000).map(|_| c.try_retry().unwrap()).collect();
    assert_eq!(c.stats().upstream_rq_active, 2000);
    assert_eq!(c.stats().upstream_rq_retry_active, 2000);
    drop(retries);
}

#[test]
fn retries_are_limited_by_max_retries() {
    let c = pool_cluster(None, None, None, Some(2));
    let a = c.try_retry().unwrap();
    let _b = c.try_retry().unwrap();
    assert!(c.try_retry().is_none());
    assert_eq!(c.stats().upstream_rq_retry_overflow, 1);
    drop(a);
    assert!(c.try_retry().is_some());
    let none = pool_cluster(None, None, None, Some(0));
    assert!(none.try_retry().is_none());
}

#[test]
fn connection_limits_from_the_pool_settings() {
    let c = pool_cluster(None, None, None, None);
    assert_eq!(
        *c.connection_limits(),
        ConnectionLimits {
            max_connections: u32::MAX,
            max_requests_per_connection: None,
            connect_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(3600),
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    );

    let mut pool = ConnectionPoolSettings::default();
    pool.tcp.max_connections = Some(100);
    pool.tcp.connect_timeout = Some(IstioDuration(Duration::from_millis(250)));
    pool.tcp.idle_timeout = Some(IstioDuration(Duration::from_secs(30)));
    pool.http.max_requests_per_connection = Some(1);
    pool.http.idle_timeout = Some(IstioDuration(Duration::from_secs(5)));
    assert_eq!(
        ConnectionLimits::from_istio(&pool),
        ConnectionLimits {
            max_connections: 100,
            max_requests_per_connection: NonZeroU32::new(1),
            connect_timeout: Duration::from_millis(250),
            http_idle_timeout: Duration::from_secs(5),
            tcp_idle_timeout: Duration::from_secs(30),
        }
    );
    pool.http.max_requests_per_connection = Some(0);
    assert_eq!(
        ConnectionLimits::from_istio(&pool).max_requests_per_connection,
        None,
        "0 means unlimited"
    );
}
