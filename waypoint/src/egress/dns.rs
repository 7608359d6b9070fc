//! DNS endpoints of external services: the names of `DNS` ServiceEntries (their hosts, or
//! their endpoints' addresses) resolved when a request needs them, and kept for the refresh
//! rate (Istio's `dnsRefreshRate`). The resolver is a trait so that tests can answer with
//! loopback addresses; the default asks the system (`getaddrinfo`).
//!
//! A name that stops resolving keeps its last addresses (as Envoy's DNS clusters keep their
//! hosts); a name that never resolved has none, and the request gets 503 `UH`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one resolution may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Names kept in the cache; past that it starts over (names come from configuration, not from
/// requests, so this is a safety bound).
const MAX_ENTRIES: usize = 4096;
/// Addresses kept per name.
const MAX_ADDRESSES: usize = 64;

/// A boxed resolution.
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves a hostname to addresses with `port`.
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses of `host`, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The system's resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Why a name has no addresses.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver failed and nothing was resolved before.
    #[error("cannot resolve {host}: {reason}")]
    Failed {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Entry {
    addresses: Arc<[SocketAddr]>,
    refresh_at: Instant,
}

/// Resolved names, each until its refresh time.
#[derive(Debug)]
pub struct DnsCache {
    resolver: Arc<dyn Resolver>,
    refresh: Duration,
    entries: Mutex<HashMap<(String, u16), Entry>>,
}

impl DnsCache {
    /// A cache over `resolver` whose entries are refreshed every `refresh`.
    pub fn new(resolver: Arc<dyn Resolver>, refresh: Duration) -> Self {
        Self {
            resolver,
            refresh,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, u16), now: Instant) -> Option<(Arc<[SocketAddr]>, bool)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .map(|e| (Arc::clone(&e.addresses), e.refresh_at > now))
    }

    /// The addresses of `host` with `port`: cached while fresh, else resolved again (the last
    /// addresses stay when resolving fails).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Arc<[SocketAddr]>, DnsError> {
        let key = (host.to_ascii_lowercase(), port);
        let stale = match self.cached(&key, Instant::now()) {
            Some((addresses, true)) => return Ok(addresses),
            Some((addresses, false)) => Some(addresses),
            None => None,
        };
        let result = tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.resolve(host, port))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
        let fresh = match result {
            Ok(mut addresses) if !addresses.is_empty() => {
                addresses.sort();
                addresses.dedup();
                addresses.truncate(MAX_ADDRESSES);
                Arc::<[SocketAddr]>::from(addresses)
            }
            Ok(_) | Err(_) if stale.is_some() => {
                tracing::debug!(host, "DNS resolution failed: keeping the last addresses");
                let addresses = stale.unwrap_or_else(|| Arc::from(Vec::new()));
                self.store(key, Arc::clone(&addresses));
                return Ok(addresses);
            }
            Ok(_) => {
                return Err(DnsError::Failed {
                    host: host.to_owned(),
                    reason: "no addresses".into(),
                });
            }
            Err(e) => {
                return Err(DnsError::Failed {
                    host: host.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        self.store(key, Arc::clone(&fresh));
        Ok(fresh)
    }

    fn store(&self, key: (String, u16), addresses: Arc<[SocketAddr]>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                addresses,
                refresh_at: Instant::now() + self.refresh,
            },
        );
    }

    /// The addresses of every name of `names`, in order, without duplicates. Fails only when
    /// no name has an address.
    pub async fn resolve_all(&self, names: &[(String, u16)]) -> Result<Vec<SocketAddr>, DnsError> {
        let mut out = Vec::new();
        let mut last_error = None;
        for (host, port) in names {
            match self.resolve(host, *port).await {
                Ok(addresses) => {
                    for a in addresses.iter() {
                        if !out.contains(a) {
                            out.push(*a);
                        }
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (out.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(out),
        }
    }
}
