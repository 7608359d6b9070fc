//! The indexed, immutable mesh-state snapshot and the handle that publishes new snapshots.
//!
//! Invariants (kept by [`MeshStateBuilder`], the only way to change a state):
//! - `by_addr`, `endpoints` and `by_vip`/`by_host` hold only keys present in `workloads` /
//!   `services`, and hold each of them exactly once; `by_host` holds the same `Arc` as
//!   `services`;
//! - `endpoints` is derived from workloads' `services` maps, so it exists for services that have
//!   not arrived yet and survives a service's removal and re-insertion.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::Policy;
use super::service::Service;
use super::workload::{NamespacedHostname, NetworkAddress, PortMap, TunnelProtocol, Workload};
use crate::rbac::Scope;

/// The maps of a snapshot: looked up per connection (and per request by the waypoint), keyed by
/// control-plane names and addresses, with a per-process random seed.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One immutable snapshot of the mesh: workloads, services and policies, indexed for the
/// lookups the listeners make per connection. Share it as `Arc<MeshState>`.
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    /// Workloads by uid.
    workloads: HashMap<String, Arc<Workload>>,
    /// Workload uids by address (several when addresses collide; see `workload_by_addr`).
    by_addr: HashMap<NetworkAddress, Vec<String>>,
    /// Services by `namespace/hostname`.
    services: HashMap<NamespacedHostname, Arc<Service>>,
    /// Service key by VIP (last writer wins on a collision).
    by_vip: HashMap<NetworkAddress, NamespacedHostname>,
    /// The services of each hostname, by namespace.
    by_host: HashMap<String, BTreeMap<String, Arc<Service>>>,
    /// Uids of the workloads naming each service in their `services` map.
    endpoints: HashMap<NamespacedHostname, BTreeSet<String>>,
    /// Authorization policies, in file / xDS order.
    policies: Vec<Policy>,
}

/// A workload serving a service, with its port mapping for that service.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    /// The workload.
    pub workload: &'a Arc<Workload>,
    /// Its service port → target port mapping for the service.
    pub ports: &'a PortMap,
}

impl MeshState {
    /// Starts building a state from empty.
    pub fn builder() -> MeshStateBuilder {
        MeshStateBuilder::default()
    }

    /// Starts building a new state from a copy of this one (for incremental xDS updates).
    pub fn to_builder(&self) -> MeshStateBuilder {
        MeshStateBuilder {
            state: self.clone(),
        }
    }

    /// The workload with this uid.
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// The workload owning `ip` on `network`. When several claim it, prefers a pod, then an
    /// HBONE workload (the most trustworthy and most informative), then the smallest uid.
    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        let uids = self.by_addr.get(&NetworkAddress::new(network, ip))?;
        uids.iter()
            .filter_map(|uid| self.workloads.get(uid))
            .max_by_key(|w| {
                (
                    w.uid.contains("/Pod/"),
                    w.protocol == TunnelProtocol::Hbone,
                    std::cmp::Reverse(w.uid.as_str()),
                )
            })
    }

    /// All workloads, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// The service with this key.
    pub fn service(&self, key: &NamespacedHostname) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The service owning VIP `ip` on `network`.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        let key = self.by_vip.get(&NetworkAddress::new(network, ip))?;
        self.services.get(key)
    }

    /// Services with this hostname, best first: the one in `preferred_ns`, then canonical ones,
    /// then by namespace name.
    pub fn services_by_hostname(
        &self,
        hostname: &str,
        preferred_ns: Option<&str>,
    ) -> Vec<&Arc<Service>> {
        let Some(by_namespace) = self.by_host.get(hostname) else {
            return Vec::new();
        };
        let mut out: Vec<&Arc<Service>> = by_namespace.values().collect();
        // Stable sort: namespaces are already in name order.
        out.sort_by_key(|s| Self::preference(s, preferred_ns));
        out
    }

    /// The order of [`MeshState::services_by_hostname`] (smallest first).
    fn preference(service: &Service, preferred_ns: Option<&str>) -> (bool, bool) {
        (
            Some(service.namespace.as_str()) != preferred_ns,
            !service.canonical,
        )
    }

    /// The best service for `hostname` as seen from `preferred_ns` (see
    /// [`MeshState::services_by_hostname`]).
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        preferred_ns: Option<&str>,
    ) -> Option<&Arc<Service>> {
        // The first of the smallest, in namespace order: what the stable sort puts first.
        self.by_host
            .get(hostname)?
            .values()
            .min_by_key(|s| Self::preference(s, preferred_ns))
    }

    /// All services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The endpoints of `service` (all of them, healthy or not), ordered by uid.
    pub fn endpoints(&self, service: &Service) -> Vec<Endpoint<'_>> {
        self.endpoints_by_key(&service.key())
    }

    /// The endpoints of the service with key `key`, ordered by uid.
    pub fn endpoints_by_key(&self, key: &NamespacedHostname) -> Vec<Endpoint<'_>> {
        let Some(uids) = self.endpoints.get(key) else {
            return Vec::new();
        };
        uids.iter()
            .filter_map(|uid| {
                let workload = self.workloads.get(uid)?;
                let ports = workload.services.get(key)?;
                Some(Endpoint { workload, ports })
            })
            .collect()
    }

    /// The port to connect to on `endpoint` for `service_port` of `service`: the endpoint's own
    /// mapping if non-zero, else the service's target port if non-zero, else the service port.
    /// `None` when the service does not expose `service_port`.
    pub fn target_port(
        service: &Service,
        endpoint: &Endpoint<'_>,
        service_port: u16,
    ) -> Option<u16> {
        let service_target = *service.ports.get(&service_port)?;
        let target = match endpoint.ports.get(&service_port) {
            Some(&p) if p != 0 => p,
            _ if service_target != 0 => service_target,
            _ => service_port,
        };
        Some(target)
    }

    /// The authorization policies.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policies that apply to `workload`: global ones (empty namespace), namespace-scoped
    /// ones of its namespace, and selector ones it names in `authorization_policies`.
    pub fn policies_for<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Policy> {
        self.policies.iter().filter(move |p| match p.scope {
            Scope::Global => true,
            Scope::Namespace => p.namespace == workload.namespace,
            Scope::WorkloadSelector => workload
                .authorization_policies
                .iter()
                .any(|key| key.split_once('/') == Some((p.namespace.as_str(), p.name.as_str()))),
        })
    }

    /// Number of workloads.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

/// Mutable staging area for a new [`MeshState`]: insert and remove single resources with index
/// maintenance, then [`MeshStateBuilder::build`] an immutable snapshot.
#[derive(Debug, Default)]
pub struct MeshStateBuilder {
    /// The state being built; its indexes are consistent after every call.
    state: MeshState,
}

impl MeshStateBuilder {
    /// Inserts or replaces (by uid) a workload; returns the previous one.
    pub fn insert_workload(&mut self, workload: Workload) -> Option<Arc<Workload>> {
        let previous = self.remove_workload(&workload.uid);
        let s = &mut self.state;
        for addr in workload.network_addresses() {
            s.by_addr
                .entry(addr)
                .or_default()
                .push(workload.uid.clone());
        }
        for key in workload.services.keys() {
            s.endpoints
                .entry(key.clone())
                .or_default()
                .insert(workload.uid.clone());
        }
        s.workloads.insert(workload.uid.clone(), Arc::new(workload));
        previous
    }

    /// Removes the workload with this uid; returns it.
    pub fn remove_workload(&mut self, uid: &str) -> Option<Arc<Workload>> {
        let s = &mut self.state;
        let previous = s.workloads.remove(uid)?;
        for addr in previous.network_addresses() {
            if let Some(uids) = s.by_addr.get_mut(&addr) {
                uids.retain(|u| u != uid);
                if uids.is_empty() {
                    s.by_addr.remove(&addr);
                }
            }
        }
        for key in previous.services.keys() {
            if let Some(uids) = s.endpoints.get_mut(key) {
                uids.remove(uid);
                if uids.is_empty() {
                    s.endpoints.remove(key);
                }
            }
        }
        Some(previous)
    }

    /// Inserts or replaces (by `namespace/hostname`) a service; returns the previous one.
    pub fn insert_service(&mut self, service: Service) -> Option<Arc<Service>> {
        let key = service.key();
        let previous = self.remove_service(&key);
        let s = &mut self.state;
        for vip in &service.vips {
            s.by_vip.insert(vip.clone(), key.clone());
        }
        let service = Arc::new(service);
        s.by_host
            .entry(key.hostname.clone())
            .or_default()
            .insert(key.namespace.clone(), Arc::clone(&service));
        s.services.insert(key, service);
        previous
    }

    /// Removes the service with this key; returns it. Its endpoints stay known (they belong to
    /// the workloads) and reappear if the service comes back.
    pub fn remove_service(&mut self, key: &NamespacedHostname) -> Option<Arc<Service>> {
        let s = &mut self.state;
        let previous = s.services.remove(key)?;
        for vip in &previous.vips {
            if s.by_vip.get(vip) == Some(key) {
                s.by_vip.remove(vip);
            }
        }
        if let Some(namespaces) = s.by_host.get_mut(&key.hostname) {
            namespaces.remove(&key.namespace);
            if namespaces.is_empty() {
                s.by_host.remove(&key.hostname);
            }
        }
        Some(previous)
    }

    /// Replaces all policies.
    pub fn set_policies(&mut self, policies: Vec<Policy>) {
        self.state.policies = policies;
    }

    /// Inserts or replaces (by namespace and name) one policy; returns the previous one.
    pub fn insert_policy(&mut self, policy: Policy) -> Option<Policy> {
        let slot = self
            .state
            .policies
            .iter_mut()
            .find(|p| p.namespace == policy.namespace && p.name == policy.name);
        match slot {
            Some(existing) => Some(std::mem::replace(existing, policy)),
            None => {
                self.state.policies.push(policy);
                None
            }
        }
    }

    /// Removes the policy `namespace/name`; returns it.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) -> Option<Policy> {
        let index = self
            .state
            .policies
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)?;
        Some(self.state.policies.remove(index))
    }

    /// The state as built so far (for lookups while applying a batch).
    pub fn state(&self) -> &MeshState {
        &self.state
    }

    /// Finishes the snapshot.
    pub fn build(self) -> MeshState {
        self.state
    }
}

/// Shared counters about how the state has been fed.
#[derive(Debug, Default)]
struct Counters {
    /// Successful file reloads.
    reloads: AtomicU64,
    /// Failed file reloads (the previous state was kept).
    reload_failures: AtomicU64,
}

/// The current [`MeshState`], shared by every listener and swapped atomically by its writers
/// (the file loader, later xDS). Cloning the handle is cheap; all clones see the same state.
///
/// Readers call [`StateHandle::current`] once per connection and use that snapshot throughout;
/// [`StateHandle::subscribe`] tells them when it changes (e.g. to re-check policies).
#[derive(Clone, Debug)]
pub struct StateHandle {
    /// Holds the current snapshot and wakes subscribers when it is replaced.
    tx: Arc<watch::Sender<Arc<MeshState>>>,
    /// Reload statistics.
    counters: Arc<Counters>,
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new(MeshState::default())
    }
}

impl StateHandle {
    /// Creates a handle holding `state`.
    pub fn new(state: MeshState) -> Self {
        let (tx, _) = watch::channel(Arc::new(state));
        Self {
            tx: Arc::new(tx),
            counters: Arc::default(),
        }
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<MeshState> {
        self.tx.borrow().clone()
    }

    /// Replaces the snapshot and notifies subscribers; returns the previous one.
    pub fn swap(&self, state: MeshState) -> Arc<MeshState> {
        self.tx.send_replace(Arc::new(state))
    }

    /// Applies an incremental change to a copy of the current snapshot and publishes the
    /// result. Concurrent `update` calls are serialised, so no change is lost.
    pub fn update<R>(&self, change: impl FnOnce(&mut MeshStateBuilder) -> R) -> R {
        let mut result = None;
        self.tx.send_modify(|current| {
            let mut builder = current.to_builder();
            result = Some(change(&mut builder));
            *current = Arc::new(builder.build());
        });
        match result {
            Some(r) => r,
            // `send_modify` always runs its closure exactly once.
            None => unreachable!("send_modify did not run the update"),
        }
    }

    /// A receiver that is marked changed every time the snapshot is replaced.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.tx.subscribe()
    }

    /// Number of successful file reloads.
    pub fn reloads(&self) -> u64 {
        self.counters.reloads.load(Ordering::Relaxed)
    }

    /// Number of failed file reloads (each kept the previous state).
    pub fn reload_failures(&self) -> u64 {
        self.counters.reload_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn record_reload(&self, ok: bool) {
        let counter = if ok {
            &self.counters.reloads
        } else {
            &self.counters.reload_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
