//! The HBONE connection pool: many tunnels multiplexed over few mTLS connections.
//!
//! Outbound listeners ask the pool for a tunnel; the pool finds (or opens) an HTTP/2 connection
//! for the [`PoolKey`] — source identity, expected destination identities and destination
//! address — and opens a `CONNECT` stream on it.
//!
//! # Invariants
//! - A connection carries at most `min(pool_max_streams_per_connection, server's
//!   SETTINGS_MAX_CONCURRENT_STREAMS)` tunnels. Slots are reserved under the pool lock, including
//!   slots on a connection that is still being set up, so N concurrent requests open exactly
//!   ⌈N / limit⌉ connections.
//! - A connection that received `GOAWAY` (or closed) gets no new tunnels; its open tunnels carry
//!   on until they finish. A tunnel refused because of a `GOAWAY` race (`REFUSED_STREAM`) never
//!   reached the server and is retried on another connection.
//! - A connection with no tunnel for `pool_unused_release_timeout` is removed from the pool and
//!   closed.
//! - Nothing is awaited while the pool lock is held.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::cert::CertStore;
use crate::client::{self, TunnelRequest};
use crate::coalesce::OpenStreams;
use crate::config::Config;
use crate::error::Error;
use crate::identity::Identity;
use crate::sniff::ConnSignals;
use crate::socket::SocketFactory;
use crate::stream::{H2Stream, Hold};

/// How often a tunnel is retried after its connection went away before the server saw it.
const MAX_ATTEMPTS: usize = 4;
/// How often a request may be moved off a connection that turned out to allow fewer tunnels
/// than were reserved on it while it was being set up.
const MAX_SHEDS: usize = 64;

/// What a pooled connection is shared by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the client presents.
    pub source: Identity,
    /// The identities the server may present (any one of them).
    pub destination_identities: Vec<Identity>,
    /// The server's address (`<ip>:15008`).
    pub destination: SocketAddr,
}

/// An open tunnel.
#[derive(Debug)]
pub struct Tunnel {
    /// The byte stream.
    pub stream: H2Stream,
    /// The headers of the server's 200 response (e.g. the destination's `baggage`).
    pub response_headers: HeaderMap,
    /// The identity the server proved in the TLS handshake.
    pub peer_identity: Identity,
}

/// A pool of HBONE client connections. Cheap to clone; clones share the pool.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    roots: Vec<CertificateDer<'static>>,
    sockets: Arc<dyn SocketFactory>,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
    opened: AtomicU64,
    /// Cancelled when the pool is dropped: its connections close once their tunnels end.
    dropped: tokio_util::sync::CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// Setup state of a connection, published to the requests waiting for it.
#[derive(Clone, Debug)]
enum Setup {
    Connecting,
    Ready,
    Failed(Arc<str>),
}

#[derive(Debug)]
struct Conn {
    id: u64,
    key: PoolKey,
    limit: u32,
    /// Slots taken: the tunnels open or being opened. Shared with the connection's writer.
    streams: OpenStreams,
    closed: AtomicBool,
    signals: Arc<ConnSignals>,
    setup: watch::Receiver<Setup>,
    /// The pool's handle for opening streams; taken when the connection is released.
    send: Mutex<Option<h2::client::SendRequest<Bytes>>>,
    peer_identity: Mutex<Option<Identity>>,
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.signals.goaway()
    }

    fn capacity(&self) -> u32 {
        self.limit.min(self.signals.max_streams())
    }
}

/// Holds one stream slot of a connection; releases it when dropped.
pub(crate) struct Slot {
    conn: Arc<Conn>,
}

impl Slot {
    /// Keeps the slot if the connection's current capacity allows it; otherwise gives it back.
    fn keep_within_capacity(self) -> Option<Self> {
        let cap = self.conn.capacity();
        let shed = self
            .conn
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s > cap).then(|| s - 1)
            })
            .is_ok();
        if shed {
            // Already given back by the update above.
            let conn = self.conn.clone();
            std::mem::forget(self);
            drop(conn);
            return None;
        }
        Some(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.conn.idle_since) = Instant::now();
        }
    }
}

impl Pool {
    /// Creates a pool whose connections trust `roots`.
    pub fn new(config: Config, roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        Self::with_sockets(config, roots, crate::socket::default_sockets())
    }

    /// Creates a pool whose connections trust `roots` and are dialled from sockets of
    /// `sockets` (e.g. created inside a pod's network namespace).
    pub fn with_sockets(
        config: Config,
        roots: Vec<CertificateDer<'static>>,
        sockets: Arc<dyn SocketFactory>,
    ) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self::unchecked(config, roots, sockets))
    }

    /// A new, empty pool with this pool's settings, roots and socket factory; it shares no
    /// connections with this one (e.g. one pool per worker thread).
    pub fn sibling(&self) -> Self {
        let inner = &self.inner;
        Self::unchecked(
            inner.config.clone(),
            inner.roots.clone(),
            Arc::clone(&inner.sockets),
        )
    }

    /// A pool of an already validated `config`.
    fn unchecked(
        config: Config,
        roots: Vec<CertificateDer<'static>>,
        sockets: Arc<dyn SocketFactory>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                roots,
                sockets,
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                opened: AtomicU64::new(0),
                dropped: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// Opens a tunnel to `destination` presenting `source`'s certificate; the server must prove
    /// one of `destination_identities`.
    pub async fn connect(
        &self,
        source: &Arc<CertStore>,
        destination_identities: Vec<Identity>,
        destination: SocketAddr,
        request: &TunnelRequest,
    ) -> Result<Tunnel, Error> {
        let key = PoolKey {
            source: source.identity(),
            destination_identities,
            destination,
        };
        let http_request = request.to_http()?;
        let mut attempts = 0;
        let mut sheds = 0;
        while attempts < MAX_ATTEMPTS && sheds < MAX_SHEDS {
            let (slot, setup) = self.reserve(&key);
            if let Some(setup_tx) = setup {
                // This request opened the connection; it sets it up for everyone waiting on it.
                // Boxed: the TLS and HTTP/2 handshakes are large futures, and most requests
                // find a connection open, so they do not carry that size.
                Box::pin(self.setup(&slot.conn, source.clone(), setup_tx)).await?;
            } else if !self.wait_ready(&slot.conn).await? {
                attempts += 1;
                continue;
            }
            // The server's limit is known now: a connection with more slots reserved than it
            // allows sheds the excess, which goes to another connection.
            let Some(slot) = slot.keep_within_capacity() else {
                sheds += 1;
                continue;
            };
            match self.open_stream(slot, http_request.clone()).await {
                Ok(tunnel) => return Ok(tunnel),
                Err(OpenError::Retry) => attempts += 1,
                Err(OpenError::Fatal(e)) => return Err(e),
            }
        }
        Err(Error::ConnectionLost(destination))
    }

    /// How many connections this pool has opened in total.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// How many connections are currently pooled (any key, including ones going away).
    pub fn connections_pooled(&self) -> usize {
        self.inner
            .conns
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Reserves a slot on a usable connection, or on a new one (returned with its setup sender).
    fn reserve(&self, key: &PoolKey) -> (Slot, Option<watch::Sender<Setup>>) {
        let mut map = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(key.clone()).or_default();
        for conn in list.iter() {
            if conn.usable() && conn.streams.load(Ordering::Acquire) < conn.capacity() {
                conn.streams.fetch_add(1, Ordering::AcqRel);
                return (Slot { conn: conn.clone() }, None);
            }
        }
        // A new connection starts with the limit the server announced on the last one, so the
        // slots reserved while it is being set up already fit.
        let known_limit = list
            .iter()
            .rev()
            .map(|c| c.signals.max_streams())
            .find(|m| *m != u32::MAX);
        let signals = Arc::new(ConnSignals::default());
        if let Some(limit) = known_limit {
            signals.assume_max_streams(limit);
        }
        let (tx, rx) = watch::channel(Setup::Connecting);
        let conn = Arc::new(Conn {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            key: key.clone(),
            limit: self.inner.config.pool_max_streams_per_connection,
            streams: Arc::new(AtomicU32::new(1)),
            closed: AtomicBool::new(false),
            signals,
            setup: rx,
            send: Mutex::new(None),
            peer_identity: Mutex::new(None),
            idle_since: Mutex::new(Instant::now()),
        });
        list.push(conn.clone());
        (Slot { conn }, Some(tx))
    }

    /// Sets up a new connection and publishes the outcome to the requests waiting on it.
    async fn setup(
        &self,
        conn: &Arc<Conn>,
        source: Arc<CertStore>,
        setup_tx: watch::Sender<Setup>,
    ) -> Result<(), Error> {
        let config = &self.inner.config;
        let key = &conn.key;
        let result = async {
            let est = client::establish(
                config,
                &self.inner.roots,
                source,
                key.destination_identities.clone(),
                key.destination,
                (conn.signals.clone(), Arc::clone(&conn.streams)),
                self.inner.sockets.as_ref(),
            )
            .await?;
            Ok::<_, Error>(est)
        }
        .await;
        let est = match result {
            Ok(est) => est,
            Err(e) => {
                self.remove(conn);
                let _ = setup_tx.send(Setup::Failed(e.to_string().into()));
                return Err(e);
            }
        };
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        // The connection task must run for the server's SETTINGS to be read.
        let driver = tokio::spawn(client::drive(est.connection, config.clone()));
        let settings = tokio::time::timeout(
            config.tls_handshake_timeout,
            conn.signals.settings_received(),
        )
        .await;
        if settings.is_err() {
            driver.abort();
            self.remove(conn);
            let e = Error::HandshakeTimeout(config.tls_handshake_timeout);
            let _ = setup_tx.send(Setup::Failed(e.to_string().into()));
            return Err(e);
        }
        *lock(&conn.send) = Some(est.send);
        *lock(&conn.peer_identity) = Some(est.peer_identity);
        tokio::spawn(watch_connection(
            Arc::downgrade(&self.inner),
            self.inner.dropped.clone(),
            conn.clone(),
            driver,
        ));
        let _ = setup_tx.send(Setup::Ready);
        Ok(())
    }

    /// Waits for another request's setup of `conn`. `Ok(false)`: set up was abandoned, retry.
    async fn wait_ready(&self, conn: &Arc<Conn>) -> Result<bool, Error> {
        let mut rx = conn.setup.clone();
        let state = rx
            .wait_for(|s| !matches!(s, Setup::Connecting))
            .await
            .map(|s| s.clone());
        match state {
            Ok(Setup::Ready) => Ok(true),
            Ok(Setup::Failed(reason)) => Err(Error::PooledConnectFailed {
                addr: conn.key.destination,
                reason: reason.to_string(),
            }),
            // The request setting the connection up was cancelled.
            Ok(Setup::Connecting) | Err(_) => {
                conn.closed.store(true, Ordering::Release);
                self.remove(conn);
                Ok(false)
            }
        }
    }

    async fn open_stream(
        &self,
        slot: Slot,
        request: http::Request<()>,
    ) -> Result<Tunnel, OpenError> {
        let conn = slot.conn.clone();
        let send = lock(&conn.send).clone();
        let Some(send) = send else {
            return Err(OpenError::Retry);
        };
        let peer_identity = lock(&conn.peer_identity).clone();
        let Some(peer_identity) = peer_identity else {
            return Err(OpenError::Retry);
        };
        let timeout = self.inner.config.request_timeout;
        let open = async {
            let mut send = send.ready().await?;
            let (response, send_stream) = send.send_request(request, false)?;
            let response = response.await?;
            Ok::<_, h2::Error>((response, send_stream))
        };
        let (response, send_stream) = match tokio::time::timeout(timeout, open).await {
            Err(_) => return Err(OpenError::Fatal(Error::RequestTimeout(timeout))),
            Ok(Err(e)) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                return Err(OpenError::Retry);
            }
            Ok(Err(e)) if connection_gone(&e) => {
                conn.closed.store(true, Ordering::Release);
                return Err(OpenError::Retry);
            }
            Ok(Err(e)) => return Err(OpenError::Fatal(Error::Http2(e))),
            Ok(Ok(r)) => r,
        };
        let (parts, recv) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(OpenError::Fatal(Error::Status(parts.status)));
        }
        Ok(Tunnel {
            stream: H2Stream::new(send_stream, recv, Hold::Pool(slot)),
            response_headers: parts.headers,
            peer_identity,
        })
    }

    fn remove(&self, conn: &Arc<Conn>) {
        remove(&self.inner, conn);
    }
}

enum OpenError {
    /// The server did not process the request (refused stream, or the connection went away);
    /// it is safe to send again.
    Retry,
    Fatal(Error),
}

/// The connection itself is gone (GOAWAY, closed socket): no new tunnels on it.
fn connection_gone(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.is_io()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn remove(inner: &Inner, conn: &Arc<Conn>) {
    let mut map = lock(&inner.conns);
    if let Some(list) = map.get_mut(&conn.key) {
        list.retain(|c| c.id != conn.id);
        if list.is_empty() {
            map.remove(&conn.key);
        }
    }
}

/// Removes `conn` from the pool and drops the pool's handle if it has had no tunnel for
/// `timeout`. Decided under the pool lock, so no slot can be reserved meanwhile.
fn release_if_idle(inner: &Inner, conn: &Conn, timeout: std::time::Duration) -> bool {
    let mut map = lock(&inner.conns);
    let idle =
        conn.streams.load(Ordering::Acquire) == 0 && lock(&conn.idle_since).elapsed() >= timeout;
    if !idle {
        return false;
    }
    conn.closed.store(true, Ordering::Release);
    if let Some(list) = map.get_mut(&conn.key) {
        list.retain(|c| c.id != conn.id);
        if list.is_empty() {
            map.remove(&conn.key);
        }
    }
    drop(map);
    // Dropping the last handle lets HTTP/2 close the connection cleanly.
    lock(&conn.send).take();
    true
}

/// Releases the connection when it has been idle too long, and forgets it when it closes.
async fn watch_connection(
    pool: Weak<Inner>,
    pool_dropped: tokio_util::sync::CancellationToken,
    conn: Arc<Conn>,
    mut driver: tokio::task::JoinHandle<()>,
) {
    let Some(timeout) = pool.upgrade().map(|p| p.config.pool_unused_release_timeout) else {
        return;
    };
    loop {
        let deadline = *lock(&conn.idle_since) + timeout;
        tokio::select! {
            _ = &mut driver => break,
            _ = pool_dropped.cancelled() => {
                // The pool is gone: no new tunnels; close once the open ones end.
                conn.closed.store(true, Ordering::Release);
                lock(&conn.send).take();
                let _ = (&mut driver).await;
                break;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let Some(inner) = pool.upgrade() else { break };
                let released = release_if_idle(&inner, &conn, timeout);
                drop(inner);
                if released {
                    tracing::debug!(destination = %conn.key.destination, "released idle hbone connection");
                    let _ = (&mut driver).await;
                    break;
                }
            }
        }
    }
    conn.closed.store(true, Ordering::Release);
    if let Some(inner) = pool.upgrade() {
        remove(&inner, &conn);
    }
}
