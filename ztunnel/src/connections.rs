//! Live inbound connections and continuous policy enforcement ("late rejection").
//!
//! Upstream ztunnel's `ConnectionManager` + `PolicyWatcher` (`src/proxy/connection_manager.rs`):
//! every inbound connection a node accepts — HBONE (15008) and plaintext (15006) — is
//! [registered](ConnectionTracker::register) with the [`rbac::Connection`] it was authorized
//! with and the uid of the destination workload. The returned [`ConnectionGuard`] deregisters
//! it when dropped, so the tracker holds exactly the live connections.
//!
//! [`ConnectionTracker::watch`] spawns the policy watcher: a task subscribed to
//! [`StateHandle::subscribe`] that, on every new mesh state, re-evaluates every tracked
//! connection ([`ConnectionTracker::reevaluate`]) and cancels those that the new state no
//! longer allows. The data path copies bytes under `tokio::select!` with
//! [`ConnectionGuard::cancelled`], so a revoked connection is closed as soon as the state is
//! published (HBONE: the tunnel stream is dropped, which resets it; plaintext: both sockets are
//! dropped). Allowed connections are left untouched.
//!
//! A connection that is authorized against one snapshot and registered while a newer one is
//! being published must not slip through: [`ConnectionTracker::register_checked`] registers
//! first, then re-checks against the current state when it differs from the snapshot the
//! connection was authorized with. Either the watcher's pass sees the registration, or the
//! re-check sees the new state.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use tokio::task::JoinHandle;

use crate::rbac::{self, Connection, Decision};
use crate::state::{MeshState, StateHandle, Workload};

/// Why a live connection was closed by the policy watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revocation {
    /// The destination workload's policies now deny the connection.
    Denied(rbac::Reason),
    /// The destination workload is no longer in the mesh state.
    WorkloadRemoved(String),
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Reason`'s display reads "denied by policy <key>" (or why else it denies).
            Revocation::Denied(reason) => write!(f, "connection closed: {reason}"),
            Revocation::WorkloadRemoved(uid) => {
                write!(f, "connection closed: workload {uid} was removed")
            }
        }
    }
}

/// Evaluates the L4 policies of `workload` for `conn` against `state`: namespace, global and
/// selector policies, failing closed on selector policies the workload names but `state` lacks.
pub fn policy_decision(state: &MeshState, workload: &Workload, conn: &Connection) -> Decision {
    let policies: Vec<_> = state.policies_for(workload).collect();
    let missing: Vec<String> = workload
        .authorization_policies
        .iter()
        .filter(|key| !policies.iter().any(|p| p.key() == **key))
        .cloned()
        .collect();
    rbac::evaluate_with_missing(policies, &missing, conn)
}

/// Re-checks a connection to workload `uid` against `state`: `Err` when it must be closed.
pub fn recheck(state: &MeshState, uid: &str, conn: &Connection) -> Result<Decision, Revocation> {
    let workload = state
        .workload_by_uid(uid)
        .ok_or_else(|| Revocation::WorkloadRemoved(uid.to_owned()))?;
    let decision = policy_decision(state, workload, conn);
    if decision.allowed {
        Ok(decision)
    } else {
        Err(Revocation::Denied(decision.reason))
    }
}

/// One tracked connection.
#[derive(Debug)]
struct Entry {
    uid: Arc<str>,
    conn: Connection,
    /// Set once, before the waiter is woken, by whoever revokes the connection.
    revoked: OnceLock<Box<Revocation>>,
    /// The task waiting for a revocation ([`ConnectionGuard::poll_revoked`]). A waker slot
    /// rather than a cancellation token: it costs no allocation of its own, and waiting on
    /// it adds nothing to the waiting future.
    waiter: Mutex<Option<Waker>>,
}

impl Entry {
    fn revoke(&self, why: Revocation) {
        if self.revoked.set(Box::new(why)).is_ok() {
            let waiter = self
                .waiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = waiter {
                waker.wake();
            }
        }
    }

    fn is_revoked(&self) -> bool {
        self.revoked.get().is_some()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Dense, indexed by the guards' keys: 16 bytes a connection (a hash map would take about
    /// 28, with its control bytes and load factor).
    conns: Mutex<slab::Slab<Arc<Entry>>>,
}

/// The live inbound connections of a node. Cloning is cheap; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct ConnectionTracker {
    inner: Arc<Inner>,
}

/// A tracked connection; dropping it deregisters the connection.
#[derive(Debug)]
pub struct ConnectionGuard {
    tracker: Weak<Inner>,
    key: usize,
    entry: Arc<Entry>,
}

impl ConnectionGuard {
    /// Completes when the connection has been revoked (see [`ConnectionGuard::revocation`]).
    /// One task at a time may wait (the connection's own).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(|cx| self.poll_revoked(cx))
    }

    /// `Ready` once the connection has been revoked; otherwise the task is woken when it is.
    /// One task at a time may wait (the last one to poll is woken).
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.entry.is_revoked() {
            return Poll::Ready(());
        }
        {
            let mut waiter = self
                .entry
                .waiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !waiter.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waiter = Some(cx.waker().clone());
            }
        }
        // A revocation between the check above and the registration found no waker to wake.
        if self.entry.is_revoked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Why the connection was revoked, once it has been.
    pub fn revocation(&self) -> Option<&Revocation> {
        self.entry.revoked.get().map(|r| &**r)
    }

    /// The connection as authorized.
    pub fn connection(&self) -> &Connection {
        &self.entry.conn
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.tracker.upgrade() {
            inner
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_remove(self.key);
        }
    }
}

/// What one pass of the policy watcher did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reevaluation {
    /// Connections checked.
    pub checked: usize,
    /// Connections closed, with why.
    pub revoked: Vec<(Connection, Revocation)>,
}

impl ConnectionTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tracks a connection to workload `uid` until the guard is dropped. Pass the uid as an
    /// `Arc<str>` the caller already holds to share it rather than copy it per connection.
    pub fn register(&self, uid: impl Into<Arc<str>>, conn: Connection) -> ConnectionGuard {
        let entry = Arc::new(Entry {
            uid: uid.into(),
            conn,
            revoked: OnceLock::new(),
            waiter: Mutex::new(None),
        });
        let key = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(entry.clone());
        ConnectionGuard {
            tracker: Arc::downgrade(&self.inner),
            key,
            entry,
        }
    }

    /// Registers a connection that was authorized against `checked`, then re-checks it if
    /// `state` has moved on since, so no policy change between the check and the registration
    /// is missed. `Err` when the newer state denies it (nothing stays registered).
    pub fn register_checked(
        &self,
        state: &StateHandle,
        checked: &Arc<MeshState>,
        uid: impl Into<Arc<str>>,
        conn: Connection,
    ) -> Result<ConnectionGuard, Revocation> {
        let guard = self.register(uid, conn);
        let now = state.current();
        if !Arc::ptr_eq(&now, checked) {
            recheck(&now, &guard.entry.uid, guard.connection())?;
        }
        Ok(guard)
    }

    /// Number of live tracked connections.
    pub fn len(&self) -> usize {
        self.inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-evaluates every tracked connection against `state` and revokes (cancels) those it no
    /// longer allows. Each revocation is logged at target `access`.
    pub fn reevaluate(&self, state: &MeshState) -> Reevaluation {
        // Evaluate outside the lock: registrations and drops must not wait on policy matching.
        let entries: Vec<Arc<Entry>> = self
            .inner
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, entry)| entry.clone())
            .collect();
        let mut out = Reevaluation {
            checked: entries.len(),
            revoked: Vec::new(),
        };
        for entry in entries {
            if entry.is_revoked() {
                continue;
            }
            if let Err(why) = recheck(state, &entry.uid, &entry.conn) {
                tracing::info!(
                    target: "access",
                    direction = "inbound",
                    connection = %entry.conn,
                    dst.workload = %entry.uid,
                    error = %why,
                    "policy changed: closing connection"
                );
                entry.revoke(why.clone());
                out.revoked.push((entry.conn.clone(), why));
            }
        }
        out
    }

    /// Spawns the policy watcher: re-evaluates every tracked connection each time `state`
    /// publishes a new snapshot. The task ends when the tracker (all its clones) is dropped and
    /// the state changes once more, or when the state handle is gone.
    pub fn watch(&self, state: &StateHandle) -> JoinHandle<()> {
        let mut rx = state.subscribe();
        // The watcher must not keep the tracker alive on its own.
        let tracker = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let snapshot = rx.borrow_and_update().clone();
                let Some(inner) = tracker.upgrade() else {
                    return;
                };
                let result = ConnectionTracker { inner }.reevaluate(&snapshot);
                tracing::debug!(
                    checked = result.checked,
                    revoked = result.revoked.len(),
                    "re-evaluated live connections against the new mesh state"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::LocalConfig;

    const UID: &str = "cluster1//v1/Pod/default/httpbin";

    fn state(deny_port: u16) -> MeshState {
        let yaml = format!(
            r#"
workloads:
- uid: {UID}
  name: httpbin
  namespace: default
  serviceAccount: httpbin
  workloadIps: ["127.0.0.2"]
  protocol: HBONE
policies:
- name: deny-port
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [{deny_port}]
"#
        );
        LocalConfig::from_yaml(&yaml).unwrap().into_state().unwrap()
    }

    fn conn(port: u16) -> Connection {
        Connection {
            src_identity: Some(hbone::Identity::new("cluster.local", "default", "sleep").unwrap()),
            src_ip: "127.0.0.1".parse().unwrap(),
            dst: format!("127.0.0.2:{port}").parse().unwrap(),
        }
    }

    #[test]
    fn reevaluate_revokes_only_denied_and_guards_deregister() {
        let tracker = ConnectionTracker::new();
        let a = tracker.register(UID, conn(8000));
        let b = tracker.register(UID, conn(9000));
        assert_eq!(tracker.len(), 2);

        let r = tracker.reevaluate(&state(1));
        assert_eq!(r.checked, 2);
        assert!(r.revoked.is_empty());

        let r = tracker.reevaluate(&state(9000));
        assert_eq!(r.revoked.len(), 1);
        assert!(a.revocation().is_none());
        assert!(b.revocation().is_some());
        let why = b.revocation().unwrap();
        assert_eq!(
            why.to_string(),
            "connection closed: denied by policy default/deny-port"
        );

        // The workload disappearing revokes everything left.
        tracker.reevaluate(&MeshState::default());
        assert!(matches!(
            a.revocation(),
            Some(Revocation::WorkloadRemoved(_))
        ));
        // A revoked connection keeps its first reason.
        assert!(matches!(b.revocation(), Some(Revocation::Denied(_))));

        drop(a);
        assert_eq!(tracker.len(), 1);
        drop(b);
        assert!(tracker.is_empty());
    }

    #[test]
    fn register_checked_sees_a_state_published_after_the_check() {
        let handle = StateHandle::new(state(1));
        let checked = handle.current();
        let tracker = ConnectionTracker::new();
        handle.swap(state(8000));
        let err = tracker
            .register_checked(&handle, &checked, UID, conn(8000))
            .unwrap_err();
        assert!(matches!(err, Revocation::Denied(_)));
        assert!(tracker.is_empty());
        let ok = tracker.register_checked(&handle, &handle.current(), UID, conn(9000));
        assert!(ok.is_ok());
        assert_eq!(tracker.len(), 1);
    }

    #[tokio::test]
    async fn watcher_cancels_on_state_change() {
        let handle = StateHandle::new(state(1));
        let tracker = ConnectionTracker::new();
        let _task = tracker.watch(&handle);
        let denied = tracker.register(UID, conn(8000));
        let allowed = tracker.register(UID, conn(9000));
        handle.swap(state(8000));
        tokio::time::timeout(Duration::from_secs(1), denied.cancelled())
            .await
            .unwrap();
        assert!(allowed.revocation().is_none());
    }
}
