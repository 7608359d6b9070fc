//! The generated gRPC clients call the right HTTP/2 paths, and the generated servers route those
//! paths to the implementation.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::codegen::{BoxStream, Service};
use tonic::{Code, Request, Response, Status, Streaming};

use proto::envoy::service::discovery::v3::{
    self as discovery, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    aggregated_discovery_service_server::AggregatedDiscoveryService,
    aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
};
use proto::istio::v1::auth::{
    self, istio_certificate_service_client::IstioCertificateServiceClient,
    istio_certificate_service_server::IstioCertificateService,
    istio_certificate_service_server::IstioCertificateServiceServer,
};
use proto::{CREATE_CERTIFICATE_PATH, DELTA_AGGREGATED_RESOURCES_PATH};

/// A client transport that records request paths and answers every call with a trailers-only
/// `UNAVAILABLE` response.
#[derive(Clone, Default)]
struct RecordingTransport {
    paths: Arc<Mutex<Vec<String>>>,
}

impl RecordingTransport {
    fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("lock").clone()
    }
}

impl Service<http::Request<Body>> for RecordingTransport {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(
            request.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        self.paths
            .lock()
            .expect("lock")
            .push(request.uri().path().to_string());
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(Body::default())
            .expect("response");
        ready(Ok(response))
    }
}

#[tokio::test]
async fn ads_client_uses_delta_path() {
    let transport = RecordingTransport::default();
    let mut client = AggregatedDiscoveryServiceClient::with_origin(
        transport.clone(),
        "https://istiod.istio-system.svc:15012"
            .parse()
            .expect("uri"),
    );
    let requests = tokio_stream::iter(vec![discovery::DeltaDiscoveryRequest {
        type_url: proto::ADDRESS_TYPE_URL.to_string(),
        ..Default::default()
    }]);
    let status = client
        .delta_aggregated_resources(requests)
        .await
        .expect_err("transport answers UNAVAILABLE");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(transport.paths(), [DELTA_AGGREGATED_RESOURCES_PATH]);
}

#[tokio::test]
async fn ca_client_uses_create_certificate_path() {
    let transport = RecordingTransport::default();
    let mut client = IstioCertificateServiceClient::new(transport.clone());
    let status = client
        .create_certificate(auth::IstioCertificateRequest {
            csr: "csr".to_string(),
            validity_duration: 3600,
            metadata: None,
        })
        .await
        .expect_err("transport answers UNAVAILABLE");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(transport.paths(), [CREATE_CERTIFICATE_PATH]);
}

/// An ADS server that rejects state-of-the-world streams and answers each delta request with a
/// response naming the requested type.
struct TestAds;

#[tonic::async_trait]
impl AggregatedDiscoveryService for TestAds {
    type StreamAggregatedResourcesStream = BoxStream<discovery::DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<discovery::DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<discovery::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::failed_precondition("sotw"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<discovery::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let responses = Answers {
            requests: request.into_inner(),
            sent: 0,
        };
        Ok(Response::new(Box::pin(responses)))
    }
}

/// A CA that returns the CSR as the leaf of the chain.
struct TestCa;

#[tonic::async_trait]
impl IstioCertificateService for TestCa {
    async fn create_certificate(
        &self,
        request: Request<auth::IstioCertificateRequest>,
    ) -> Result<Response<auth::IstioCertificateResponse>, Status> {
        let request = request.into_inner();
        if request.validity_duration <= 0 {
            return Err(Status::invalid_argument("validity"));
        }
        Ok(Response::new(auth::IstioCertificateResponse {
            cert_chain: vec![request.csr, "root".to_string()],
        }))
    }
}

/// Sends an empty gRPC request to `path` and returns the `grpc-status` of the response.
async fn grpc_status_for<S>(server: &mut S, path: &str) -> String
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::default())
        .expect("request");
    let response = server.call(request).await.expect("infallible");
    let status = response
        .headers()
        .get("grpc-status")
        .expect("trailers-only response carries grpc-status in the headers");
    status.to_str().expect("ascii").to_string()
}

#[tokio::test]
async fn ads_server_routing() {
    let mut server = AggregatedDiscoveryServiceServer::new(TestAds);
    assert_eq!(
        grpc_status_for(
            &mut server,
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
        )
        .await,
        (Code::FailedPrecondition as i32).to_string()
    );
    assert_eq!(
        grpc_status_for(&mut server, "/envoy.service.discovery.v3.Nope/Delta").await,
        (Code::Unimplemented as i32).to_string()
    );
}

#[tokio::test]
async fn ca_client_and_server_in_process() {
    let mut client = IstioCertificateServiceClient::new(IstioCertificateServiceServer::new(TestCa));
    let response = client
        .create_certificate(auth::IstioCertificateRequest {
            csr: "leaf".to_string(),
            validity_duration: 86_400,
            metadata: None,
        })
        .await
        .expect("certificate")
        .into_inner();
    assert_eq!(response.cert_chain, ["leaf", "root"]);

    let status = client
        .create_certificate(auth::IstioCertificateRequest::default())
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn ads_client_and_server_in_process() {
    let mut client =
        AggregatedDiscoveryServiceClient::new(AggregatedDiscoveryServiceServer::new(TestAds));
    let requests = [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL].map(|type_url| {
        discovery::DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            ..Default::default()
        }
    });
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut received = Vec::new();
    while let Some(response) = responses.message().await.expect("response") {
        received.push((response.type_url, response.nonce));
    }
    assert_eq!(
        received,
        [
            (proto::ADDRESS_TYPE_URL.to_string(), "nonce-0".to_string()),
            (
                proto::AUTHORIZATION_TYPE_URL.to_string(),
                "nonce-1".to_string()
            ),
        ]
    );
}

/// Response stream of [`TestAds`]: one response per request, until the client half-closes.
struct Answers {
    requests: Streaming<discovery::DeltaDiscoveryRequest>,
    sent: usize,
}

impl Stream for Answers {
    type Item = Result<discovery::DeltaDiscoveryResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.requests).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Ready(Some(Ok(request))) => {
                let nonce = format!("nonce-{}", this.sent);
                this.sent += 1;
                Poll::Ready(Some(Ok(discovery::DeltaDiscoveryResponse {
                    type_url: request.type_url,
                    nonce,
                    ..Default::default()
                })))
            }
        }
    }
}

#[test]
fn service_names() {
    use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME as ADS;
    use proto::istio::v1::auth::istio_certificate_service_server::SERVICE_NAME as CA;

    assert_eq!(ADS, "envoy.service.discovery.v3.AggregatedDiscoveryService");
    assert_eq!(CA, "istio.v1.auth.IstioCertificateService");
    assert_eq!(
        DELTA_AGGREGATED_RESOURCES_PATH,
        format!("/{ADS}/DeltaAggregatedResources")
    );
    assert_eq!(CREATE_CERTIFICATE_PATH, format!("/{CA}/CreateCertificate"));
}
