//! [`DnsServer`]: one pod's DNS proxy on a UDP socket and a TCP listener (15053), both bound by
//! the caller inside the pod's network namespace.
//!
//! Each query is classified ([`super::message::classify`]), decided against the current mesh
//! state ([`super::resolve()`]) and either answered at once or forwarded
//! ([`super::forward::forward`]) in a task of its own. Limits: UDP messages over
//! [`DnsLimits::max_udp_message`] are refused, TCP connections are capped
//! ([`DnsLimits::max_tcp_connections`]) and must send each length-prefixed query within
//! [`DnsLimits::tcp_idle_timeout`], and at most [`DnsLimits::max_in_flight`] forwards run at
//! once (more get `SERVFAIL` at once rather than queueing).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::forward::{self, ForwardLimits, Relay, read_message, write_message};
use super::message::{self, Incoming};
use super::metrics::{DnsLabels, Transport};
use super::resolve::{ClientScope, Resolution, resolve};
use super::{DnsClient, DnsContext, DnsError, DnsLimits, DnsMetrics, UpstreamSockets};
use crate::drain::ConnectionTasks;
use crate::state::StateHandle;

/// Back-off after a failed accept or receive, so a persistent error does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// The DNS proxy of one pod.
#[derive(Debug)]
pub struct DnsServer {
    /// Queries over UDP (shared with the forwarding tasks, which send the answers).
    udp: Arc<UdpSocket>,
    /// Queries over TCP.
    tcp: TcpListener,
    /// Decides and forwards.
    handler: Arc<Handler>,
}

impl DnsServer {
    /// A server answering on `udp` and `tcp` (already bound, normally to port 15053 in the
    /// pod's namespace) for the pod described by `ctx`. Fails when the configured cluster or
    /// search domains are not valid DNS names.
    pub fn new(udp: UdpSocket, tcp: TcpListener, ctx: DnsContext) -> Result<Self, DnsError> {
        let DnsContext {
            state,
            client,
            config,
            metrics,
            sockets,
        } = ctx;
        let scope = ClientScope::new(
            &client.namespace,
            &client.network,
            &config.cluster_domain,
            &config.search_domains,
        )?;
        // Never forward to ourselves: that would loop until the deadline.
        let own = [udp.local_addr(), tcp.local_addr()]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(DnsError::Address)?;
        let upstreams = config
            .upstreams
            .iter()
            .copied()
            .filter(|u| !own.contains(u))
            .collect();
        let handler = Handler {
            state,
            client,
            scope,
            upstreams,
            limits: config.limits,
            metrics,
            sockets,
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
        };
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            handler: Arc::new(handler),
        })
    }

    /// The bound UDP address (the same port as TCP in production).
    pub fn address(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The bound TCP address.
    pub fn tcp_address(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves queries until `shutdown`; queries being forwarded and open TCP connections then
    /// get one upstream timeout to finish before they are dropped.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = ConnectionTasks::new();
        tokio::join!(
            self.serve_udp(&tasks, &shutdown),
            self.serve_tcp(&tasks, &shutdown)
        );
        let deadline = self.handler.limits.upstream_timeout;
        drop(self);
        tasks.drain(deadline).await;
    }

    /// The UDP loop: local answers are sent from here, forwards run in tasks.
    async fn serve_udp(&self, tasks: &ConnectionTasks, shutdown: &CancellationToken) {
        let max = self.handler.limits.max_udp_message;
        // One byte more than accepted, to tell an oversized datagram from one that just fits.
        let mut buf = vec![0u8; max + 1];
        loop {
            let (len, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                received = self.udp.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns udp receive failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let query = &buf[..len];
            let step = if len > max {
                tracing::debug!(%peer, "dns udp query over the size limit");
                message::oversize_reply(query).map_or(Step::Drop, Step::Reply)
            } else {
                self.handler.prepare(query, Transport::Udp)
            };
            let reply = match step {
                Step::Drop => continue,
                Step::Reply(reply) => reply,
                Step::Forward(labels) => match self.handler.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (handler, udp, query) =
                            (self.handler.clone(), self.udp.clone(), query.to_vec());
                        tasks.spawn(async move {
                            let reply = handler.forward(&query, &labels, Transport::Udp).await;
                            drop(permit);
                            if let Some(reply) = reply {
                                send_udp(&udp, &reply, peer).await;
                            }
                        });
                        continue;
                    }
                    Err(_) => match self.handler.overloaded(query, &labels) {
                        Some(reply) => reply,
                        None => continue,
                    },
                },
            };
            send_udp(&self.udp, &reply, peer).await;
        }
    }

    /// The TCP accept loop: one task per connection, at most `max_tcp_connections`.
    async fn serve_tcp(&self, tasks: &ConnectionTasks, shutdown: &CancellationToken) {
        let connections = Arc::new(Semaphore::new(self.handler.limits.max_tcp_connections));
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns tcp accept failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "dns tcp connection limit reached, closing");
                continue;
            };
            let handler = self.handler.clone();
            tasks.spawn(async move {
                handler.serve_connection(stream).await;
                drop(permit);
            });
        }
    }
}

/// Sends a UDP reply; a failure only loses this answer (the client retries).
async fn send_udp(udp: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = udp.send_to(reply, peer).await {
        tracing::debug!(%peer, error = %e, "dns udp reply failed");
    }
}

/// What to do with one client message.
#[derive(Debug)]
enum Step {
    /// Nothing.
    Drop,
    /// Send this response.
    Reply(Vec<u8>),
    /// Relay the message upstream; its metric labels.
    Forward(DnsLabels),
}

/// The per-query logic shared by the UDP and TCP paths.
#[derive(Debug)]
struct Handler {
    /// The mesh state, read once per query.
    state: StateHandle,
    /// The pod served (metric labels).
    client: DnsClient,
    /// The pod's namespace, network and search list.
    scope: ClientScope,
    /// Upstream resolvers, in order.
    upstreams: Vec<SocketAddr>,
    /// Limits.
    limits: DnsLimits,
    /// Counters.
    metrics: Arc<DnsMetrics>,
    /// Upstream socket factory.
    sockets: Arc<dyn UpstreamSockets>,
    /// Permits for forwards in flight.
    in_flight: Arc<Semaphore>,
}

impl Handler {
    /// Classifies a message and answers what can be answered without I/O.
    fn prepare(&self, bytes: &[u8], transport: Transport) -> Step {
        let query = match message::classify(bytes) {
            Incoming::Drop => return Step::Drop,
            Incoming::Malformed(reply) => {
                tracing::debug!("malformed dns query, answering FORMERR");
                return Step::Reply(reply);
            }
            Incoming::Passthrough { query_type } => {
                let qtype = query_type.map(|t| t.to_string()).unwrap_or_default();
                return Step::Forward(DnsLabels::new(&qtype, transport, &self.client));
            }
            Incoming::Query(query) => query,
        };
        let Some(question) = message::question(&query) else {
            // `classify` only returns queries with one question.
            return Step::Drop;
        };
        let labels = DnsLabels::new(&question.query_type.to_string(), transport, &self.client);
        // EDNS versions other than 0 are left to upstream (it answers BADVERS).
        if query.edns.as_ref().is_some_and(|e| e.version() != 0) {
            return Step::Forward(labels);
        }
        let state = self.state.current();
        let resolution = resolve(
            &state,
            &self.scope,
            &question.name,
            question.query_type,
            question.query_class,
        );
        let udp_limit = (transport == Transport::Udp).then_some(self.limits.max_udp_message);
        let records = match resolution {
            Resolution::Forward => return Step::Forward(labels),
            Resolution::NoData { service } => {
                tracing::debug!(name = %question.name, %service, "dns: no data of this family");
                Vec::new()
            }
            Resolution::Answer(mut answer) => {
                tracing::debug!(name = %question.name, service = %answer.service, "dns: answered");
                shuffle(&mut answer.addrs);
                answer.records()
            }
        };
        self.metrics.request(&labels);
        Step::Reply(message::answer_reply(&query, records, udp_limit))
    }

    /// Relays `query` upstream and returns what to send back: the upstream answer unchanged,
    /// a truncated response for a too-large UDP answer, or `SERVFAIL`.
    async fn forward(
        &self,
        query: &[u8],
        labels: &DnsLabels,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.metrics.request(labels);
        self.metrics.upstream_request(labels);
        let limits = ForwardLimits {
            timeout: self.limits.upstream_timeout,
            max_udp_message: self.limits.max_udp_message,
            max_attempts: self.limits.max_upstream_attempts,
        };
        let start = Instant::now();
        let result =
            forward::forward(&*self.sockets, &self.upstreams, query, transport, limits).await;
        self.metrics.upstream_duration(labels, start.elapsed());
        match result {
            Ok(Relay::Answer(answer)) => Some(answer),
            Ok(Relay::TooLarge) => {
                message::truncated_reply(query).or_else(|| message::servfail(query))
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns forward failed, answering SERVFAIL");
                self.metrics.upstream_failure(labels);
                message::servfail(query)
            }
        }
    }

    /// `SERVFAIL` for a query that could not be forwarded because too many are in flight.
    fn overloaded(&self, query: &[u8], labels: &DnsLabels) -> Option<Vec<u8>> {
        tracing::debug!("dns forwards at their limit, answering SERVFAIL");
        self.metrics.request(labels);
        self.metrics.upstream_request(labels);
        self.metrics.upstream_failure(labels);
        message::servfail(query)
    }

    /// Serves length-prefixed queries on one TCP connection, one at a time, until the client
    /// closes it, sends something unusable, or stays idle past the deadline.
    async fn serve_connection(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let idle = self.limits.tcp_idle_timeout;
        loop {
            let read = read_message(&mut stream, self.limits.max_tcp_message);
            let query = match tokio::time::timeout(idle, read).await {
                Ok(Ok(Some(query))) => query,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "dns tcp read failed, closing");
                    return;
                }
                Err(_) => return,
            };
            let reply = match self.prepare(&query, Transport::Tcp) {
                Step::Drop => return,
                Step::Reply(reply) => Some(reply),
                Step::Forward(labels) => match self.in_flight.clone().try_acquire_owned() {
                    Ok(_permit) => self.forward(&query, &labels, Transport::Tcp).await,
                    Err(_) => self.overloaded(&query, &labels),
                },
            };
            let Some(reply) = reply else { return };
            let write = write_message(&mut stream, &reply);
            if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
                return;
            }
        }
    }
}

/// Shuffles `items` in place (Fisher–Yates over a xorshift seeded from the hasher's random
/// keys), so clients spread over a service's VIPs as upstream's random order does.
fn shuffle<T>(items: &mut [T]) {
    let mut x = RandomState::new().build_hasher().finish() | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = usize::try_from(x % bound).unwrap_or(0);
        items.swap(i, j);
    }
}
