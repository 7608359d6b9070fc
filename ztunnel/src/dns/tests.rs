//! Tests of the DNS proxy over real loopback sockets, against a fake upstream resolver.
//!
//! The fake upstream answers on UDP and TCP (same port) with fixed records: `A 192.0.2.1`,
//! `AAAA 2001:db8::1`, `MX 10 mail.example.`; `big.example.` is truncated over UDP; `nx.example.`
//! is NXDOMAIN; other opcodes get an empty response with the same opcode.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::forward::{read_message, write_message};
use super::*;
use crate::state::{IpFamily, MeshState, NetworkAddress, Service, StateHandle};

/// A guard against hangs; no test waits this long unless it is broken.
const LONG: Duration = Duration::from_secs(10);

/// The fake upstream's IPv4 answer.
const UPSTREAM_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// A name from text (test input only).
pub(super) fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A service with `vips` given as `network/ip` (empty network allowed).
fn service(ns: &str, host: &str, vips: &[&str]) -> Service {
    Service {
        name: host.split('.').next().unwrap().to_owned(),
        namespace: ns.to_owned(),
        hostname: host.to_owned(),
        vips: vips
            .iter()
            .map(|v| {
                let (network, ip) = v.split_once('/').unwrap();
                NetworkAddress::new(network, ip.parse().unwrap())
            })
            .collect(),
        ports: Default::default(),
        subject_alt_names: Vec::new(),
        waypoint: None,
        load_balancer: None,
        ip_families: None,
        canonical: false,
    }
}

/// The mesh the tests resolve against (client namespace `ns1`, default network).
pub(super) fn mesh() -> MeshState {
    let mut b = MeshState::builder();
    b.insert_service(service(
        "ns1",
        "productpage.ns1.svc.cluster.local",
        &["/10.0.0.1"],
    ));
    b.insert_service(service(
        "ns2",
        "example.ns2.svc.cluster.local",
        &["/10.0.0.2"],
    ));
    b.insert_service(service(
        "ns1",
        "dual.ns1.svc.cluster.local",
        &["/10.0.0.3", "/fd00::3"],
    ));
    b.insert_service(service(
        "ns1",
        "v6only.ns1.svc.cluster.local",
        &["/fd00::4"],
    ));
    let mut v4 = service(
        "ns1",
        "v4family.ns1.svc.cluster.local",
        &["/10.0.0.5", "/fd00::5"],
    );
    v4.ip_families = Some(IpFamily::IPv4);
    b.insert_service(v4);
    b.insert_service(service(
        "ns1",
        "remote.ns1.svc.cluster.local",
        &["nw2/10.9.0.1"],
    ));
    b.insert_service(service(
        "ns1",
        "multi.ns1.svc.cluster.local",
        &["/10.0.1.1", "/10.0.1.2"],
    ));
    b.insert_service(service("ns1", "headless.ns1.svc.cluster.local", &[]));
    // ServiceEntry hosts (auto-allocated VIPs).
    b.insert_service(service("ns2", "api.example.com", &["/240.240.0.1"]));
    b.insert_service(service("ns2", "*.wild.example.com", &["/240.240.0.2"]));
    b.insert_service(service("ns1", "shared.example.com", &["/240.240.1.1"]));
    b.insert_service(service("ns2", "shared.example.com", &["/240.240.1.2"]));
    b.build()
}

// === fake upstream ===

/// A resolver on loopback answering fixed records on UDP and TCP (one port).
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

impl FakeUpstream {
    async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let count = udp_queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                let query = Message::from_vec(&buf[..len]).unwrap();
                let reply = upstream_answer(&query, false).to_vec().unwrap();
                udp.send_to(&reply, peer).await.unwrap();
            }
        });
        let count = tcp_queries.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    while let Ok(Some(q)) = read_message(&mut stream, 65535).await {
                        count.fetch_add(1, Ordering::SeqCst);
                        let query = Message::from_vec(&q).unwrap();
                        let reply = upstream_answer(&query, true).to_vec().unwrap();
                        write_message(&mut stream, &reply).await.unwrap();
                    }
                });
            }
        });
        Self {
            addr,
            udp_queries,
            tcp_queries,
        }
    }

    fn udp_count(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst)
    }

    fn tcp_count(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

/// A UDP socket and a TCP listener on the same loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no free port pair");
}

/// The fake upstream's answer to `query`.
fn upstream_answer(query: &Message, tcp: bool) -> Message {
    let mut reply = Message::response(query.id, query.op_code);
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    if query.op_code != OpCode::Query {
        return reply;
    }
    let q = &query.queries[0];
    if q.name == n("nx.example.") {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    }
    if q.name == n("big.example.") && !tcp {
        reply.metadata.truncation = true;
        return reply;
    }
    let data = match q.query_type {
        RecordType::A => RData::A(A(UPSTREAM_V4)),
        RecordType::AAAA => RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        RecordType::MX => RData::MX(MX::new(10, n("mail.example."))),
        _ => return reply,
    };
    reply
        .answers
        .push(Record::from_rdata(q.name.clone(), 300, data));
    reply
}

// === the proxy under test ===

/// A running proxy for a pod in `ns1` (canonical service `sleep`, revision `v1`).
struct Proxy {
    udp: SocketAddr,
    tcp: SocketAddr,
    metrics: Arc<DnsMetrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn client() -> DnsClient {
    DnsClient {
        namespace: "ns1".to_owned(),
        network: String::new(),
        canonical_service: "sleep".to_owned(),
        canonical_revision: "v1".to_owned(),
    }
}

async fn start_proxy(upstreams: Vec<SocketAddr>, limits: DnsLimits) -> Proxy {
    start_proxy_with(StateHandle::new(mesh()), upstreams, limits).await
}

async fn start_proxy_with(
    state: StateHandle,
    upstreams: Vec<SocketAddr>,
    limits: DnsLimits,
) -> Proxy {
    let metrics = Arc::new(DnsMetrics::new());
    let ctx = DnsContext {
        state,
        client: client(),
        config: DnsConfig {
            upstreams,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            search_domains: Vec::new(),
            limits,
        },
        metrics: metrics.clone(),
        sockets: Arc::new(PlainSockets::default()),
    };
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = DnsServer::new(udp, tcp, ctx).unwrap();
    let (udp, tcp) = (server.address().unwrap(), server.tcp_address().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Proxy {
        udp,
        tcp,
        metrics,
        shutdown,
        task,
    }
}

/// A recursive query for `name`/`record_type` with `id`.
fn query(id: u16, name: &str, record_type: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n(name), record_type));
    m
}

/// Sends raw bytes over UDP and returns the first datagram back.
async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, _) = tokio::time::timeout(LONG, socket.recv_from(&mut buf))
        .await
        .expect("no udp reply")
        .unwrap();
    buf.truncate(len);
    buf
}

async fn udp_query(server: SocketAddr, q: &Message) -> Message {
    Message::from_vec(&udp_raw(server, &q.to_vec().unwrap()).await).unwrap()
}

async fn tcp_query(server: SocketAddr, q: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    write_message(&mut stream, &q.to_vec().unwrap())
        .await
        .unwrap();
    let reply = tokio::time::timeout(LONG, read_message(&mut stream, 65535))
        .await
        .expect("no tcp reply")
        .unwrap()
        .unwrap();
    Message::from_vec(&reply).unwrap()
}

/// The addresses of the A/AAAA answers, sorted.
fn addrs(reply: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asserts a local, authoritative NOERROR answer to `q` with `want` addresses, TTL 30.
fn assert_local_answer(q: &Message, reply: &Message, want: &[&str]) {
    assert_eq!(reply.id, q.id);
    assert_eq!(reply.message_type, MessageType::Response);
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.authoritative, "local answers are authoritative");
    assert!(reply.recursion_desired && reply.recursion_available);
    assert_eq!(reply.queries, q.queries);
    let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
    assert_eq!(addrs(reply), want);
    assert!(reply.answers.iter().all(|r| r.ttl == TTL_SECONDS));
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

fn labels(query_type: &str, protocol: &str) -> String {
    format!(
        "request_query_type=\"{query_type}\",request_protocol=\"{protocol}\",\
         source_canonical_service=\"sleep\",source_canonical_revision=\"v1\""
    )
}

// === tests ===

#[tokio::test]
async fn mesh_service_by_full_and_short_names() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;
    for (id, name) in [
        (1, "productpage."),
        (2, "productpage.ns1."),
        (3, "productpage.ns1.svc."),
        (4, "productpage.ns1.svc.cluster.local."),
    ] {
        let q = query(id, name, RecordType::A);
        let reply = udp_query(proxy.udp, &q).await;
        assert_local_answer(&q, &reply, &["10.0.0.1"]);
        assert_eq!(reply.answers[0].name, n(name), "{name}");
    }
    assert_eq!(upstream.udp_count(), 0, "mesh names never reach upstream");
}

#[tokio::test]
async fn aaaa_answers_and_nodata() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    let q = query(10, "dual.ns1.svc.cluster.local.", RecordType::AAAA);
    assert_local_answer(&q, &udp_query(proxy.udp, &q).await, &["fd00::3"]);
    let q = query(11, "dual.", RecordType::A);
    assert_local_answer(&q, &udp_query(proxy.udp, &q).await, &["10.0.0.3"]);
    let q = query(12, "multi.", RecordType::A);
    assert_local_answer(
        &q,
        &udp_query(proxy.udp, &q).await,
        &["10.0.1.1", "10.0.1.2"],
    );

    // An IPv4-only service asked for AAAA: NOERROR, no answers (not NXDOMAIN, not forwarded).
    let q = query(13, "productpage.", RecordType::AAAA);
    let reply = udp_query(proxy.udp, &q).await;
    assert_local_answer(&q, &reply, &[]);
    assert!(reply.answers.is_empty());
    assert_eq!(upstream.udp_count(), 0);
}

#[tokio::test]
async fn service_entry_hosts_and_search_domains() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    let q = query(20, "api.example.com.", RecordType::A);
    assert_local_answer(&q, &udp_query(proxy.udp, &q).await, &["240.240.0.1"]);
    let q = query(21, "foo.wild.example.com.", RecordType::A);
    assert_local_answer(&q, &udp_query(proxy.udp, &q).await, &["240.240.0.2"]);

    // What a stub resolver with ndots:5 asks first: CNAME to the real name, then its address.
    let q = query(22, "api.example.com.ns1.svc.cluster.local.", RecordType::A);
    let reply = udp_query(proxy.udp, &q).await;
    assert_local_answer(&q, &reply, &["240.240.0.1"]);
    assert_eq!(reply.answers.len(), 2);
    assert_eq!(
        reply.answers[0].name,
        n("api.example.com.ns1.svc.cluster.local.")
    );
    assert_eq!(
        reply.answers[0].data,
        RData::CNAME(hickory_proto::rr::rdata::CNAME(n("api.example.com.")))
    );
    assert_eq!(reply.answers[1].name, n("api.example.com."));
    assert_eq!(upstream.udp_count(), 0);
}

#[tokio::test]
async fn external_name_is_forwarded_and_relayed_unchanged() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    let q = query(0xBEEF, "www.external.example.", RecordType::A);
    let raw = udp_raw(proxy.udp, &q.to_vec().unwrap()).await;
    // Byte for byte what the upstream sends for this query.
    assert_eq!(raw, upstream_answer(&q, false).to_vec().unwrap());
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.id, 0xBEEF);
    assert!(!reply.authoritative);
    assert_eq!(addrs(&reply), vec![IpAddr::V4(UPSTREAM_V4)]);
    assert_eq!(reply.answers[0].ttl, 300, "upstream's TTL, not ours");
    assert_eq!(upstream.udp_count(), 1);

    // NXDOMAIN from upstream is relayed too.
    let q = query(0xBEF0, "nx.example.", RecordType::A);
    let reply = udp_query(proxy.udp, &q).await;
    assert_eq!(reply.id, 0xBEF0);
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    // A short name of a service in another namespace is not ours either.
    let q = query(0xBEF1, "example.", RecordType::A);
    assert_eq!(
        addrs(&udp_query(proxy.udp, &q).await),
        vec![IpAddr::V4(UPSTREAM_V4)]
    );
    assert_eq!(upstream.udp_count(), 3);
}

#[tokio::test]
async fn other_record_types_and_opcodes_pass_through() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    // MX for an external name.
    let q = query(30, "mail-domain.example.", RecordType::MX);
    let reply = udp_query(proxy.udp, &q).await;
    assert_eq!(reply.id, 30);
    assert_eq!(
        reply.answers[0].data,
        RData::MX(MX::new(10, n("mail.example.")))
    );
    // MX for a mesh name goes upstream too (upstream ztunnel only answers A/AAAA).
    let q = query(31, "productpage.ns1.svc.cluster.local.", RecordType::MX);
    let reply = udp_query(proxy.udp, &q).await;
    assert_eq!(reply.answers[0].record_type(), RecordType::MX);
    assert_eq!(upstream.udp_count(), 2);

    // A NOTIFY is relayed, not refused with NOTIMP.
    let mut notify = Message::new(32, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(n("example.com."), RecordType::SOA));
    let reply = udp_query(proxy.udp, &notify).await;
    assert_eq!(reply.id, 32);
    assert_eq!(reply.op_code, OpCode::Notify);
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert_eq!(upstream.udp_count(), 3);
}

#[tokio::test]
async fn tcp_queries_local_and_forwarded() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    let q = query(40, "productpage.", RecordType::A);
    assert_local_answer(&q, &tcp_query(proxy.tcp, &q).await, &["10.0.0.1"]);

    let q = query(41, "www.external.example.", RecordType::A);
    let reply = tcp_query(proxy.tcp, &q).await;
    assert_eq!(reply.id, 41);
    assert_eq!(addrs(&reply), vec![IpAddr::V4(UPSTREAM_V4)]);
    assert_eq!(
        (upstream.udp_count(), upstream.tcp_count()),
        (0, 1),
        "same transport"
    );

    // Several queries on one connection.
    let mut stream = TcpStream::connect(proxy.tcp).await.unwrap();
    for id in [42, 43] {
        let q = query(id, "api.example.com.", RecordType::A);
        write_message(&mut stream, &q.to_vec().unwrap())
            .await
            .unwrap();
        let reply = tokio::time::timeout(LONG, read_message(&mut stream, 65535))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_local_answer(&q, &Message::from_vec(&reply).unwrap(), &["240.240.0.1"]);
    }
}

#[tokio::test]
async fn truncated_udp_answer_passes_through_then_tcp_gets_it_all() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;

    let q = query(50, "big.example.", RecordType::A);
    let reply = udp_query(proxy.udp, &q).await;
    assert!(reply.truncation, "TC from upstream is relayed");
    assert!(reply.answers.is_empty());
    let reply = tcp_query(proxy.tcp, &q).await;
    assert!(!reply.truncation);
    assert_eq!(addrs(&reply), vec![IpAddr::V4(UPSTREAM_V4)]);
}

#[tokio::test]
async fn large_local_answer_is_truncated_over_udp_only() {
    // A service with many VIPs: more than fits in 512 bytes for a client without EDNS.
    let many: Vec<String> = (1..=60).map(|i| format!("/10.1.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let upstream = FakeUpstream::start().await;
    let mut b = mesh().to_builder();
    b.insert_service(service("ns1", "many.ns1.svc.cluster.local", &many));
    let state = StateHandle::new(b.build());
    let proxy = start_proxy_with(state, vec![upstream.addr], DnsLimits::default()).await;
    let (udp_addr, tcp_addr) = (proxy.udp, proxy.tcp);

    let q = query(60, "many.", RecordType::A);
    let reply = udp_query(udp_addr, &q).await;
    assert!(reply.truncation);
    assert!(reply.answers.is_empty());
    // With EDNS and a 4096-byte payload, it fits.
    let mut q_edns = q.clone();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q_edns.edns = Some(edns);
    let reply = udp_query(udp_addr, &q_edns).await;
    assert!(!reply.truncation);
    assert_eq!(reply.answers.len(), 60);
    assert!(reply.edns.is_some(), "EDNS query, EDNS response");
    // Over TCP there is no truncation.
    let reply = tcp_query(tcp_addr, &q).await;
    assert!(!reply.truncation);
    assert_eq!(reply.answers.len(), 60);
    assert_eq!(upstream.udp_count() + upstream.tcp_count(), 0);
}

#[tokio::test]
async fn state_is_read_per_query() {
    let upstream = FakeUpstream::start().await;
    let state = StateHandle::new(MeshState::default());
    let proxy = start_proxy_with(state.clone(), vec![upstream.addr], DnsLimits::default()).await;
    let addr = proxy.udp;

    let q = query(70, "productpage.", RecordType::A);
    assert_eq!(
        addrs(&udp_query(addr, &q).await),
        vec![IpAddr::V4(UPSTREAM_V4)]
    );
    state.swap(mesh());
    assert_local_answer(&q, &udp_query(addr, &q).await, &["10.0.0.1"]);
}

#[tokio::test]
async fn upstream_down_is_servfail() {
    // A port with nothing behind it, on UDP and TCP.
    let dead = {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        drop((udp, tcp));
        addr
    };
    let proxy = start_proxy(vec![dead], DnsLimits::default()).await;

    let q = query(80, "www.external.example.", RecordType::A);
    let reply = udp_query(proxy.udp, &q).await;
    assert_eq!(reply.id, 80);
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert_eq!(reply.queries, q.queries, "question echoed");
    let q = query(81, "www.external.example.", RecordType::A);
    let reply = tcp_query(proxy.tcp, &q).await;
    assert_eq!(reply.id, 81);
    assert_eq!(reply.response_code, ResponseCode::ServFail);

    // No upstream at all: the same.
    let none = start_proxy(Vec::new(), DnsLimits::default()).await;
    let reply = udp_query(none.udp, &query(82, "x.example.", RecordType::A)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);

    let text = proxy.metrics.render();
    for protocol in ["udp", "tcp"] {
        let l = labels("a", protocol);
        assert_eq!(
            sample(&text, metrics::REQUESTS, &l),
            Some(1.0),
            "{protocol}"
        );
        assert_eq!(sample(&text, metrics::UPSTREAM_REQUESTS, &l), Some(1.0));
        assert_eq!(sample(&text, metrics::UPSTREAM_FAILURES, &l), Some(1.0));
    }
}

#[tokio::test]
async fn forward_limit_answers_servfail() {
    let upstream = FakeUpstream::start().await;
    let limits = DnsLimits {
        max_in_flight: 0,
        ..DnsLimits::default()
    };
    let proxy = start_proxy(vec![upstream.addr], limits).await;
    let q = query(90, "www.external.example.", RecordType::A);
    assert_eq!(
        udp_query(proxy.udp, &q).await.response_code,
        ResponseCode::ServFail
    );
    assert_eq!(
        tcp_query(proxy.tcp, &q).await.response_code,
        ResponseCode::ServFail
    );
    // Local answers need no forward.
    let q = query(91, "productpage.", RecordType::A);
    assert_local_answer(&q, &udp_query(proxy.udp, &q).await, &["10.0.0.1"]);
    assert_eq!(upstream.udp_count() + upstream.tcp_count(), 0);
}

#[tokio::test]
async fn malformed_queries() {
    let upstream = FakeUpstream::start().await;
    let limits = DnsLimits {
        max_udp_message: 512,
        ..DnsLimits::default()
    };
    let proxy = start_proxy(vec![upstream.addr], limits).await;

    // A header announcing a question that is not there: FORMERR, id kept.
    let header = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = Message::from_vec(&udp_raw(proxy.udp, &header).await).unwrap();
    assert_eq!(reply.id, 0x1234);
    assert_eq!(reply.message_type, MessageType::Response);
    assert_eq!(reply.response_code, ResponseCode::FormErr);
    // Two questions in one query: FORMERR.
    let mut two = query(0x1235, "a.example.", RecordType::A);
    two.add_query(Query::query(n("b.example."), RecordType::A));
    let reply = udp_query(proxy.udp, &two).await;
    assert_eq!(reply.response_code, ResponseCode::FormErr);
    // A datagram over the size limit with a query header: FORMERR.
    let mut big = header.to_vec();
    big.resize(600, 0);
    let reply = Message::from_vec(&udp_raw(proxy.udp, &big).await).unwrap();
    assert_eq!(
        (reply.id, reply.response_code),
        (0x1234, ResponseCode::FormErr)
    );

    // No header, or a response: dropped. The next reply on the same socket is the valid
    // query's.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[1, 2, 3, 4, 5], proxy.udp).await.unwrap();
    let mut response = upstream_answer(&query(0x4444, "x.example.", RecordType::A), false);
    response.metadata.id = 0x4444;
    socket
        .send_to(&response.to_vec().unwrap(), proxy.udp)
        .await
        .unwrap();
    let q = query(0x5555, "productpage.", RecordType::A);
    socket
        .send_to(&q.to_vec().unwrap(), proxy.udp)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(LONG, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Message::from_vec(&buf[..len]).unwrap().id, 0x5555);

    // Over TCP: FORMERR for a bad body, then the connection stays usable.
    let mut stream = TcpStream::connect(proxy.tcp).await.unwrap();
    write_message(&mut stream, &header).await.unwrap();
    let reply = read_message(&mut stream, 65535).await.unwrap().unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().response_code,
        ResponseCode::FormErr
    );
    // A length prefix over the TCP limit closes the connection.
    stream.write_all(&[0xFF, 0xFF]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LONG, stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty(), "closed without a reply");
    assert_eq!(upstream.udp_count() + upstream.tcp_count(), 0);
}

#[tokio::test]
async fn tcp_connection_limit() {
    let upstream = FakeUpstream::start().await;
    let limits = DnsLimits {
        max_tcp_connections: 1,
        ..DnsLimits::default()
    };
    let proxy = start_proxy(vec![upstream.addr], limits).await;
    // The first connection is served (and holds the only slot while open).
    let mut first = TcpStream::connect(proxy.tcp).await.unwrap();
    let q = query(100, "productpage.", RecordType::A);
    write_message(&mut first, &q.to_vec().unwrap())
        .await
        .unwrap();
    let reply = read_message(&mut first, 65535).await.unwrap().unwrap();
    assert_local_answer(&q, &Message::from_vec(&reply).unwrap(), &["10.0.0.1"]);
    // The second is closed at once.
    let mut second = TcpStream::connect(proxy.tcp).await.unwrap();
    let _ = write_message(&mut second, &q.to_vec().unwrap()).await;
    let read = tokio::time::timeout(LONG, read_message(&mut second, 65535))
        .await
        .unwrap();
    assert!(matches!(read, Ok(None) | Err(_)), "{read:?}");
    // Once the first is closed, a new connection is served.
    drop(first);
    let reply = loop {
        let mut third = TcpStream::connect(proxy.tcp).await.unwrap();
        write_message(&mut third, &q.to_vec().unwrap())
            .await
            .unwrap();
        if let Ok(Some(reply)) = read_message(&mut third, 65535).await {
            break reply;
        }
        tokio::task::yield_now().await;
    };
    assert_local_answer(&q, &Message::from_vec(&reply).unwrap(), &["10.0.0.1"]);
}

#[tokio::test]
async fn metrics_after_queries() {
    let upstream = FakeUpstream::start().await;
    let proxy = start_proxy(vec![upstream.addr], DnsLimits::default()).await;
    for (id, name, t) in [
        (1, "productpage.", RecordType::A),
        (2, "api.example.com.", RecordType::A),
        (3, "productpage.", RecordType::AAAA),
        (4, "www.external.example.", RecordType::A),
        (5, "mail-domain.example.", RecordType::MX),
    ] {
        udp_query(proxy.udp, &query(id, name, t)).await;
    }
    tcp_query(proxy.tcp, &query(6, "www.external.example.", RecordType::A)).await;
    // Malformed queries are not counted (they have no question type).
    udp_raw(proxy.udp, &[0, 7, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await;

    let text = proxy.metrics.render();
    let a_udp = labels("a", "udp");
    assert_eq!(sample(&text, metrics::REQUESTS, &a_udp), Some(3.0));
    assert_eq!(
        sample(&text, metrics::REQUESTS, &labels("aaaa", "udp")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, metrics::REQUESTS, &labels("mx", "udp")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, metrics::REQUESTS, &labels("a", "tcp")),
        Some(1.0)
    );
    assert_eq!(sample(&text, metrics::UPSTREAM_REQUESTS, &a_udp), Some(1.0));
    assert_eq!(
        sample(&text, metrics::UPSTREAM_REQUESTS, &labels("mx", "udp")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, metrics::UPSTREAM_REQUESTS, &labels("a", "tcp")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, metrics::UPSTREAM_REQUESTS, &labels("aaaa", "udp")),
        None
    );
    assert!(
        !text.contains(metrics::UPSTREAM_FAILURES),
        "no failures:\n{text}"
    );
    let count = format!("{}_count", metrics::UPSTREAM_DURATION);
    assert_eq!(sample(&text, &count, &a_udp), Some(1.0));
    assert_eq!(sample(&text, &count, &labels("mx", "udp")), Some(1.0));
    let inf = format!("{a_udp},le=\"+Inf\"");
    assert_eq!(
        sample(
            &text,
            &format!("{}_bucket", metrics::UPSTREAM_DURATION),
            &inf
        ),
        Some(1.0),
        "rendered as a histogram with buckets:\n{text}"
    );
    assert!(text.contains("# TYPE istio_dns_requests_total counter"));
    assert!(text.contains("# TYPE istio_dns_upstream_request_duration_seconds histogram"));
}

#[tokio::test]
async fn metrics_labels_default_to_unknown() {
    let m = DnsMetrics::new();
    let l = DnsLabels::new("SRV", Transport::Tcp, &DnsClient::default());
    m.request(&l);
    m.upstream_duration(&l, Duration::from_millis(3));
    let text = m.render();
    let want = "request_query_type=\"srv\",request_protocol=\"tcp\",\
                source_canonical_service=\"unknown\",source_canonical_revision=\"unknown\"";
    assert_eq!(sample(&text, metrics::REQUESTS, want), Some(1.0), "{text}");
    // 3 ms lands in the 0.005 bucket, not in 0.001.
    let bucket = format!("{}_bucket", metrics::UPSTREAM_DURATION);
    assert_eq!(
        sample(&text, &bucket, &format!("{want},le=\"0.001\"")),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, &bucket, &format!("{want},le=\"0.005\"")),
        Some(1.0)
    );
}

#[tokio::test]
async fn run_ends_on_shutdown() {
    let proxy = start_proxy(Vec::new(), DnsLimits::default()).await;
    proxy.shutdown.cancel();
    tokio::time::timeout(LONG, proxy.task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn config_from_resolv_conf_and_client_from_workload() {
    let conf = ResolvConf::parse("nameserver 10.96.0.10\nsearch ns1.svc.cluster.local\n");
    let config = DnsConfig::from_resolv_conf(&conf, "cluster.local");
    assert_eq!(
        config.upstreams,
        vec!["10.96.0.10:53".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(config.search_domains, vec!["ns1.svc.cluster.local"]);
    assert_eq!(config.limits, DnsLimits::default());

    let mut w = crate::state::Workload::new(
        "uid",
        hbone::Identity::new("cluster.local", "ns1", "sleep").unwrap(),
    );
    w.namespace = "ns1".to_owned();
    w.network = "nw1".to_owned();
    w.canonical_name = "sleep".to_owned();
    w.canonical_revision = "v1".to_owned();
    let c = DnsClient::from_workload(&w);
    assert_eq!((c.namespace.as_str(), c.network.as_str()), ("ns1", "nw1"));
    assert_eq!(
        (c.canonical_service.as_str(), c.canonical_revision.as_str()),
        ("sleep", "v1")
    );
}
