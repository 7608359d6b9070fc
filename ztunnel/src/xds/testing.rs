//! Test support: an in-process control plane on `127.0.0.1:0` (TLS 1.3 + HTTP/2 serving a tonic
//! service) and a scriptable fake ADS server. Shared with the CA client's tests, and with other
//! crates' tests through the `testing` feature ([`fake_istiod`]: xDS and the CA on one address,
//! as istiod serves them). Not part of any data path; failures panic.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::{Message, Name};
use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use super::channel::{ControlPlane, RootCert, TokenSource};

/// How long a test waits for something the client should do.
pub const WAIT: Duration = Duration::from_secs(10);

/// The token the test control planes expect.
pub const TOKEN: &str = "test-token";

/// A root and a serving certificate for `localhost`, `127.0.0.1` and istiod's service name.
pub struct TestPki {
    /// The root, PEM.
    pub root_pem: String,
    /// The root, written to a file.
    pub root_path: PathBuf,
    server: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// A root of its own and a serving certificate it issued.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params
            .distinguished_name
            .push(DnType::CommonName, "test control plane root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root_params, root_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "istiod.istio-system.svc".to_string(),
        ])
        .unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];

        let dir = tempfile::tempdir().unwrap();
        let root_pem = root.pem();
        let root_path = dir.path().join("root-cert.pem");
        std::fs::write(&root_path, &root_pem).unwrap();
        Self {
            root_pem,
            root_path,
            server: Arc::new(server),
            _dir: dir,
        }
    }

    /// A control plane whose serving certificate is issued by the mesh CA `ca`, as istiod's is
    /// in a cluster (one root for the control plane and the workloads).
    pub fn signed_by(ca: &hbone::LocalCa) -> Self {
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "istiod.istio-system.svc".to_string(),
        ])
        .unwrap();
        params.distinguished_name.push(DnType::CommonName, "istiod");
        let (chain, key) = ca.sign_raw(params).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let dir = tempfile::tempdir().unwrap();
        let root_pem = hbone::cert::certs_to_pem(ca.roots());
        let root_path = dir.path().join("root-cert.pem");
        std::fs::write(&root_path, &root_pem).unwrap();
        Self {
            root_pem,
            root_path,
            server: Arc::new(server),
            _dir: dir,
        }
    }

    /// A control plane at `addr` trusting this root, with the test token.
    pub fn control_plane(&self, addr: SocketAddr) -> ControlPlane {
        ControlPlane {
            address: format!("https://{addr}").parse().unwrap(),
            root_cert: RootCert::File(self.root_path.clone()),
            alt_hostname: None,
            token: Some(TokenSource::Static(TOKEN.to_string())),
            cluster_id: "Kubernetes".to_string(),
            headers: Vec::new(),
        }
    }
}

/// A running test server; dropping it closes the listener and every connection.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` over TLS + HTTP/2 on `127.0.0.1:0`.
pub async fn serve<S>(pki: &TestPki, service: S) -> TestServer
where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it drops (and aborts) every connection.
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            while connections.try_join_next().is_some() {}
            let acceptor = acceptor.clone();
            let service = service.clone();
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let mut service = service.clone();
                    async move { service.call(request).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TestServer { addr, task }
}

/// One delta ADS stream as the fake server sees it.
pub struct AdsStream {
    /// The request metadata (headers).
    pub metadata: MetadataMap,
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl AdsStream {
    /// The next request from the client.
    pub async fn request(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("client request in time")
            .expect("request stream ok")
            .expect("request stream open")
    }

    /// The first request of each type, ordered by type URL.
    pub async fn initial_requests(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut requests = vec![self.request().await, self.request().await];
        requests.sort_by(|a, b| a.type_url.cmp(&b.type_url));
        requests
    }

    /// Sends a response.
    pub async fn send(&self, response: DeltaDiscoveryResponse) {
        self.responses.send(Ok(response)).await.unwrap();
    }

    /// Ends the stream with an error status.
    pub async fn fail(self, status: Status) {
        self.responses.send(Err(status)).await.unwrap();
    }

    /// Sends a response and returns the client's answer to it.
    pub async fn push(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        self.send(response).await;
        self.request().await
    }
}

/// A delta ADS server handing every stream to the test.
#[derive(Clone)]
struct FakeAds {
    streams: mpsc::UnboundedSender<AdsStream>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let (metadata, _, requests) = request.into_parts();
        let stream = AdsStream {
            metadata,
            requests,
            responses: tx,
        };
        self.streams
            .send(stream)
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Starts a fake istiod; each delta stream a client opens arrives on the receiver.
pub async fn fake_ads(pki: &TestPki) -> (TestServer, mpsc::UnboundedReceiver<AdsStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = serve(
        pki,
        AggregatedDiscoveryServiceServer::new(FakeAds { streams: tx }),
    )
    .await;
    (server, rx)
}

/// The next stream a client opens.
pub async fn next_stream(streams: &mut mpsc::UnboundedReceiver<AdsStream>) -> AdsStream {
    tokio::time::timeout(WAIT, streams.recv())
        .await
        .expect("client connected in time")
        .expect("server running")
}

/// A delta response of `type_url` with `nonce`, adding `resources` and removing `removed`.
pub fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|r| (*r).to_owned()).collect(),
        ..Default::default()
    }
}

/// A resource wrapping `message`.
pub fn resource<M: Message + Name>(name: &str, version: &str, message: &M) -> Resource {
    Resource {
        name: name.to_string(),
        version: version.to_string(),
        resource: Some(prost_types::Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        }),
        ..Default::default()
    }
}

/// Starts a fake istiod serving, on one address, the scriptable delta ADS server (each stream a
/// client opens arrives on the receiver) and the certificate service `ca` (e.g.
/// [`crate::ca_client::testing::FakeCa`]).
pub async fn fake_istiod<C: IstioCertificateService>(
    pki: &TestPki,
    ca: C,
) -> (TestServer, mpsc::UnboundedReceiver<AdsStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let istiod = Istiod {
        ads: AggregatedDiscoveryServiceServer::new(FakeAds { streams: tx }),
        ca: IstioCertificateServiceServer::new(ca),
    };
    (serve(pki, istiod).await, rx)
}

/// Routes each call by its gRPC service name.
struct Istiod<C> {
    ads: AggregatedDiscoveryServiceServer<FakeAds>,
    ca: IstioCertificateServiceServer<C>,
}

impl<C> Clone for Istiod<C> {
    fn clone(&self) -> Self {
        Self {
            ads: self.ads.clone(),
            ca: self.ca.clone(),
        }
    }
}

impl<C: IstioCertificateService> Service<http::Request<Incoming>> for Istiod<C> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let ca = <IstioCertificateServiceServer<C> as NamedService>::NAME;
        let is_ca = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(ca))
            .is_some_and(|rest| rest.starts_with('/'));
        if is_ca {
            self.ca.call(request)
        } else {
            self.ads.call(request)
        }
    }
}
