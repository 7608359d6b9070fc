//! Workload certificates: one per identity on this node, issued on first use and rotated.
//!
//! The inbound listener terminates HBONE with the certificate of the destination workload's
//! identity and the outbound listener presents the source workload's; both ask the
//! [`IdentityManager`]. It issues a certificate the first time an identity is needed (concurrent
//! requests share one issuance), caches it in a [`CertStore`], and renews it at half of its
//! lifetime in the background; the store swap means new handshakes use the new certificate while
//! established connections carry on. A failed renewal is retried with capped exponential backoff
//! while the current certificate stays in use.
//!
//! Where certificates come from is a [`CertificateSource`]: the local CA here, Istio's CA in a
//! cluster.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use hbone::cert::CertError;
use hbone::{CertStore, Identity, LocalCa, WorkloadCertificate};
use tokio::sync::OnceCell;

/// First retry delay after a failed renewal.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Longest delay between renewal attempts.
const RETRY_MAX: Duration = Duration::from_secs(150);

/// A future returned by a [`CertificateSource`].
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCertificate, CertError>> + Send + 'a>>;

/// Issues workload certificates.
pub trait CertificateSource: Send + Sync + 'static {
    /// Issues a certificate for `id`, valid for `ttl`.
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a>;
}

impl CertificateSource for Box<dyn CertificateSource> {
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
        (**self).issue(id, ttl)
    }
}

impl CertificateSource for LocalCa {
    fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
        Box::pin(async move { LocalCa::issue(self, id, ttl) })
    }
}

/// Why a certificate could not be provided.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Issuing the first certificate for the identity failed.
    #[error("no certificate for {identity}: {source}")]
    Issue {
        /// The identity.
        identity: Identity,
        /// Why issuing failed.
        #[source]
        source: CertError,
    },
    /// The identity's certificate expired and could not be renewed: its connections fail
    /// closed until a renewal succeeds.
    #[error("the certificate of {identity} expired at {expired_at:?} and could not be renewed")]
    Expired {
        /// The identity.
        identity: Identity,
        /// When it expired.
        expired_at: SystemTime,
    },
}

/// Certificates for the identities on this node.
pub struct IdentityManager {
    inner: Arc<Inner>,
}

struct Inner {
    source: Box<dyn CertificateSource>,
    ttl: Duration,
    /// Renewal comes early by a random share of the lifetime up to this.
    jitter: f64,
    certs: Mutex<HashMap<Identity, Arc<Entry>>>,
}

struct Entry {
    store: OnceCell<Arc<CertStore>>,
    rotation: tokio_util::sync::CancellationToken,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.rotation.cancel();
    }
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    /// Creates a manager issuing certificates valid for `ttl` from `source`.
    pub fn new(source: impl CertificateSource, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                source: Box::new(source),
                ttl,
                jitter: REFRESH_JITTER,
                certs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets the largest share of the lifetime by which renewal comes early (default
    /// [`REFRESH_JITTER`]; 0 renews exactly at half-life). Call before the first fetch.
    pub fn with_refresh_jitter(mut self, share: f64) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.jitter = share.clamp(0.0, 0.5);
        }
        self
    }

    /// The certificate store of `id`, issuing the first certificate if needed; an expired
    /// certificate (renewal kept failing) is [`IdentityError::Expired`].
    pub async fn fetch(&self, id: &Identity) -> Result<Arc<CertStore>, IdentityError> {
        let entry = {
            let mut certs = self.inner.certs.lock().unwrap_or_else(|p| p.into_inner());
            certs
                .entry(id.clone())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        store: OnceCell::new(),
                        rotation: tokio_util::sync::CancellationToken::new(),
                    })
                })
                .clone()
        };
        let store = entry
            .store
            .get_or_try_init(|| async {
                let cert = self
                    .inner
                    .source
                    .issue(id, self.inner.ttl)
                    .await
                    .map_err(|source| IdentityError::Issue {
                        identity: id.clone(),
                        source,
                    })?;
                let store = Arc::new(CertStore::new(cert));
                tokio::spawn(rotate(
                    Arc::downgrade(&self.inner),
                    store.clone(),
                    entry.rotation.clone(),
                ));
                Ok::<_, IdentityError>(store)
            })
            .await?;
        let current = store.current();
        if SystemTime::now() > current.not_after() {
            return Err(IdentityError::Expired {
                identity: id.clone(),
                expired_at: current.not_after(),
            });
        }
        Ok(store.clone())
    }

    /// Forgets `id` (its last workload left the node): rotation stops, the next fetch issues anew.
    pub fn forget(&self, id: &Identity) {
        let removed = self
            .inner
            .certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        drop(removed);
    }

    /// The current certificate of every identity, for `config_dump`.
    pub fn certificates(&self) -> Vec<(Identity, Arc<WorkloadCertificate>)> {
        let certs = self.inner.certs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = certs
            .iter()
            .filter_map(|(id, e)| e.store.get().map(|s| (id.clone(), s.current())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// When a certificate should be renewed: half-way through its validity.
pub fn refresh_at(cert: &WorkloadCertificate) -> SystemTime {
    refresh_at_with_jitter(cert, 0.0)
}

/// Default share of the lifetime by which renewal may come early, so the certificates of many
/// workloads (issued together at start-up) are not all renewed at the same instant.
pub const REFRESH_JITTER: f64 = 0.05;

/// When a certificate should be renewed: half-way through its validity, brought forward by
/// `early` (a share of the lifetime, clamped to `[0, 0.5]`).
pub fn refresh_at_with_jitter(cert: &WorkloadCertificate, early: f64) -> SystemTime {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let early = lifetime.mul_f64(early.clamp(0.0, 0.5));
    cert.not_before() + lifetime / 2 - early
}

/// A random number in `[0, 1)`.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let x = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Renews the certificate in `store` at half-life (with jitter) until cancelled or the manager
/// is gone.
async fn rotate(
    manager: Weak<Inner>,
    store: Arc<CertStore>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut retry = RETRY_INITIAL;
    loop {
        let current = store.current();
        let Some(early) = manager.upgrade().map(|m| m.jitter * jitter()) else {
            return;
        };
        let wait = refresh_at_with_jitter(&current, early)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = manager.upgrade() else {
            return;
        };
        let id = store.identity();
        match inner.source.issue(&id, inner.ttl).await {
            Ok(cert) => match store.replace(cert) {
                Ok(()) => {
                    retry = RETRY_INITIAL;
                    tracing::info!(identity = %id, "workload certificate rotated");
                }
                Err(e) => {
                    tracing::error!(identity = %id, error = %e, "rotated certificate refused")
                }
            },
            Err(e) => {
                tracing::warn!(identity = %id, error = %e, retry_in = ?retry, "certificate renewal failed; keeping the current one");
                drop(inner);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A local CA that counts issuances and can be told to fail the next few.
    struct Counting {
        ca: LocalCa,
        issued: Arc<AtomicUsize>,
        fail_next: Arc<AtomicUsize>,
    }

    impl CertificateSource for Counting {
        fn issue<'a>(&'a self, id: &'a Identity, ttl: Duration) -> IssueFuture<'a> {
            Box::pin(async move {
                if self.fail_next.load(Ordering::SeqCst) > 0 {
                    self.fail_next.fetch_sub(1, Ordering::SeqCst);
                    return Err(CertError::ValidityOutOfRange);
                }
                self.issued.fetch_add(1, Ordering::SeqCst);
                self.ca.issue(id, ttl)
            })
        }
    }

    fn manager(
        ttl: Duration,
    ) -> (
        IdentityManager,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
        let issued = Arc::new(AtomicUsize::new(0));
        let fail_next = Arc::new(AtomicUsize::new(0));
        let source = Counting {
            ca,
            issued: issued.clone(),
            fail_next: fail_next.clone(),
        };
        // No jitter: the tests know exactly when renewal is due.
        let m = IdentityManager::new(source, ttl).with_refresh_jitter(0.0);
        (m, issued, fail_next, dir)
    }

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "default", sa).unwrap()
    }

    #[tokio::test]
    async fn issues_once_per_identity_even_when_asked_concurrently() {
        let (m, issued, _, _dir) = manager(Duration::from_secs(3600));
        let (ida, idb) = (id("a"), id("b"));
        let (a, b, c) = tokio::join!(m.fetch(&ida), m.fetch(&ida), m.fetch(&idb));
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.identity(), id("a"));
        assert_eq!(c.identity(), id("b"));
        assert_eq!(issued.load(Ordering::SeqCst), 2);
        assert_eq!(
            m.certificates()
                .iter()
                .map(|(i, _)| i.clone())
                .collect::<Vec<_>>(),
            vec![id("a"), id("b")]
        );
        m.forget(&id("a"));
        m.fetch(&id("a")).await.unwrap();
        assert_eq!(
            issued.load(Ordering::SeqCst),
            3,
            "forgotten identity is issued anew"
        );
    }

    #[tokio::test]
    async fn first_issue_failure_is_reported_and_retried_on_next_fetch() {
        let (m, issued, fail_next, _dir) = manager(Duration::from_secs(3600));
        fail_next.store(1, Ordering::SeqCst);
        let err = m.fetch(&id("a")).await.unwrap_err();
        assert!(matches!(err, IdentityError::Issue { ref identity, .. } if *identity == id("a")));
        m.fetch(&id("a")).await.unwrap();
        assert_eq!(issued.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotates_at_half_life_and_survives_a_failed_renewal() {
        // Issued certificates start 60 s in the past (clock skew allowance): with a 66 s TTL
        // the validity spans 126 s and its half-life falls about 3 s after issuance (X.509
        // times are whole seconds, so up to half a second earlier).
        let (m, issued, fail_next, _dir) = manager(Duration::from_secs(66));
        let store = m.fetch(&id("a")).await.unwrap();
        let first = store.current().serial_hex();
        let at = refresh_at(&store.current());
        let lifetime = store
            .current()
            .not_after()
            .duration_since(store.current().not_before())
            .unwrap();
        assert_eq!(at, store.current().not_before() + lifetime / 2);
        // The first renewal fails; the certificate in use stays, and the retry succeeds.
        fail_next.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            store.current().serial_hex(),
            first,
            "not renewed before half-life"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.current().serial_hex() == first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "certificate was not rotated"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fail_next.load(Ordering::SeqCst),
            0,
            "the failing attempt happened"
        );
        assert_eq!(issued.load(Ordering::SeqCst), 2);
        assert_eq!(store.identity(), id("a"));
    }

    #[test]
    fn renewal_is_at_half_life_brought_forward_by_the_jitter() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_generate(dir.path(), "cluster.local").unwrap();
        let cert = ca.issue(&id("a"), Duration::from_secs(24 * 3600)).unwrap();
        let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
        let half = cert.not_before() + lifetime / 2;
        assert_eq!(refresh_at(&cert), half);
        assert_eq!(refresh_at_with_jitter(&cert, 0.0), half);
        assert_eq!(
            refresh_at_with_jitter(&cert, REFRESH_JITTER),
            half - lifetime.mul_f64(REFRESH_JITTER)
        );
        // Never earlier than issuance, whatever the share.
        assert_eq!(refresh_at_with_jitter(&cert, 7.0), cert.not_before());
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[tokio::test]
    async fn an_expired_certificate_fails_closed_for_its_identity_only() {
        let (m, _issued, fail_next, _dir) = manager(Duration::from_secs(1));
        let store = m.fetch(&id("short")).await.unwrap();
        // Every renewal fails from now on; the certificate expires a second after issuance.
        fail_next.store(usize::MAX, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (identity, expired_at) = loop {
            match m.fetch(&id("short")).await {
                Err(IdentityError::Expired {
                    identity,
                    expired_at,
                }) => break (identity, expired_at),
                Ok(_) => {
                    assert!(tokio::time::Instant::now() < deadline, "never expired");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("expected Expired, got {e:?}"),
            }
        };
        assert_eq!(identity, id("short"));
        assert_eq!(expired_at, store.current().not_after());
        assert!(SystemTime::now() > expired_at);
        // Another identity's (first) issuance is unaffected by the failing renewals of this one
        // once the CA recovers.
        fail_next.store(0, Ordering::SeqCst);
        let other = m.fetch(&id("other")).await.unwrap();
        assert_eq!(other.identity(), id("other"));
    }
}
