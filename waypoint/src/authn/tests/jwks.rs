//! Remote key sets: first fetch, refresh, grace, failing closed, unknown `kid`, the HTTP(S)
//! client. The cache tests run on paused time with a scripted fetcher; the client tests on
//! real loopback servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;
use crate::authn::jwks::{Fetch, FetchError, HttpFetcher, JwksLocation};
use crate::authn::{JwksRegistry, JwksSettings, JwtStatus, RemoteJwks};

/// What the scripted server does.
#[derive(Clone)]
enum Step {
    Serve(String),
    Fail,
    Hang,
}

/// A fetcher whose answer the test sets, counting calls.
struct Script {
    step: Mutex<Step>,
    calls: AtomicUsize,
}

impl Script {
    fn new(step: Step) -> Arc<Self> {
        Arc::new(Self {
            step: Mutex::new(step),
            calls: AtomicUsize::new(0),
        })
    }

    fn set(&self, step: Step) {
        *self.step.lock().unwrap() = step;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Fetch for Script {
    fn fetch<'a>(&'a self, _uri: &'a Uri) -> BoxFuture<'a, Result<String, FetchError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self.step.lock().unwrap().clone();
        Box::pin(async move {
            match step {
                Step::Serve(doc) => Ok(doc),
                Step::Fail => Err(FetchError::Status(StatusCode::SERVICE_UNAVAILABLE)),
                Step::Hang => std::future::pending().await,
            }
        })
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn settings() -> JwksSettings {
    JwksSettings {
        refresh_interval: Duration::from_secs(20 * 60),
        grace: Duration::from_secs(40 * 60),
        on_demand_min_interval: Duration::from_secs(5),
        ..JwksSettings::default()
    }
}

fn remote(script: &Arc<Script>) -> RemoteJwks {
    let uri: Uri = "http://jwks.example/keys".parse().unwrap();
    RemoteJwks::new(
        JwksLocation::Jwks(uri),
        TIMEOUT,
        settings(),
        Arc::clone(script) as Arc<dyn Fetch>,
    )
}

/// Lets the fetch task run what is ready.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn never_fetched_keys_fail_closed() {
    let script = Script::new(Step::Fail);
    let jwks = remote(&script);
    assert_eq!(jwks.keys(None).await.unwrap_err(), JwtStatus::JwksFetchFail);
    assert_eq!(
        jwks.keys(Some("k1")).await.unwrap_err(),
        JwtStatus::JwksFetchFail
    );
    let status = jwks.status();
    assert!(!status.usable);
    assert!(status.last_error.unwrap().contains("503"));
    assert_eq!(status.last_fetch_success, None);
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_the_first_fetch_but_not_beyond_the_timeout() {
    let key = TestKey::ec256("k1");
    let script = Script::new(Step::Hang);
    let jwks = remote(&script);
    // The fetch hangs: the request gives up after the timeout (paused time advances to it).
    assert_eq!(jwks.keys(None).await.unwrap_err(), JwtStatus::JwksFetchFail);
    assert!(
        jwks.status()
            .last_error
            .is_none_or(|e| e.contains("no answer"))
    );

    let script = Script::new(Step::Serve(jwks_doc(&[&key])));
    let jwks = remote(&script);
    let keys = jwks.keys(Some("k1")).await.unwrap();
    assert!(keys.has_key_for("k1"));
    assert_eq!(script.calls(), 1);
}

fn jwks_doc(keys: &[&TestKey]) -> String {
    super::jwks(keys)
}

#[tokio::test(start_paused = true)]
async fn keys_are_refreshed_and_kept_through_a_bounded_grace() {
    let k1 = TestKey::ec256("k1");
    let k2 = TestKey::ec256("k2");
    let script = Script::new(Step::Serve(jwks_doc(&[&k1])));
    let jwks = remote(&script);
    assert!(jwks.keys(Some("k1")).await.is_ok());
    assert_eq!(script.calls(), 1);

    // The periodic refresh picks up a rotation.
    script.set(Step::Serve(jwks_doc(&[&k2])));
    tokio::time::sleep(Duration::from_secs(20 * 60 + 1)).await;
    settle().await;
    assert_eq!(script.calls(), 2);
    let keys = jwks.keys(None).await.unwrap();
    assert!(keys.has_key_for("k2") && !keys.has_key_for("k1"));

    // The issuer goes away: the last keys stay usable for refresh interval + grace after
    // their fetch (retries keep failing meanwhile)...
    script.set(Step::Fail);
    tokio::time::sleep(Duration::from_secs(59 * 60)).await;
    settle().await;
    assert!(script.calls() > 3, "failed refreshes are retried");
    assert!(jwks.keys(None).await.is_ok(), "within the grace");
    let status = jwks.status();
    assert!(status.usable && status.consecutive_failures > 0 && status.last_error.is_some());

    // ...and not one moment longer.
    tokio::time::sleep(Duration::from_secs(2 * 60)).await;
    assert_eq!(jwks.keys(None).await.unwrap_err(), JwtStatus::JwksFetchFail);
    assert!(!jwks.status().usable);

    // A fetch that succeeds again restores them.
    script.set(Step::Serve(jwks_doc(&[&k1])));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(jwks.keys(Some("k1")).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_document_without_usable_keys_counts_as_a_failure() {
    let k1 = TestKey::ec256("k1");
    let script = Script::new(Step::Serve(r#"{"keys": []}"#.into()));
    let jwks = remote(&script);
    assert_eq!(jwks.keys(None).await.unwrap_err(), JwtStatus::JwksFetchFail);
    assert!(
        jwks.status()
            .last_error
            .unwrap()
            .contains("valid public key")
    );
    script.set(Step::Serve(jwks_doc(&[&k1])));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(jwks.keys(None).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_refetches_at_most_once_per_interval() {
    let k1 = TestKey::ec256("k1");
    let k2 = TestKey::ec256("k2");
    let script = Script::new(Step::Serve(jwks_doc(&[&k1])));
    let jwks = remote(&script);
    assert!(jwks.keys(Some("k1")).await.is_ok());
    assert_eq!(script.calls(), 1);

    // The issuer rotated to k2: a token naming k2 makes the waypoint fetch again (the first
    // fetch is more than the on-demand interval ago).
    script.set(Step::Serve(jwks_doc(&[&k1, &k2])));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let keys = jwks.keys(Some("k2")).await.unwrap();
    assert!(keys.has_key_for("k2"));
    assert_eq!(script.calls(), 2);

    // Unknown kids right after: no new fetch, the keys there are answer.
    let keys = jwks.keys(Some("k3")).await.unwrap();
    assert!(!keys.has_key_for("k3"));
    let _ = jwks.keys(Some("k4")).await;
    assert_eq!(script.calls(), 2);

    // Once the interval has passed, one more.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = jwks.keys(Some("k3")).await;
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_fetch() {
    let k1 = TestKey::ec256("k1");
    let script = Script::new(Step::Serve(jwks_doc(&[&k1])));
    let jwks = Arc::new(remote(&script));
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let jwks = Arc::clone(&jwks);
            tokio::spawn(async move { jwks.keys(Some("k1")).await.is_ok() })
        })
        .collect();
    for waiter in waiters {
        assert!(waiter.await.unwrap());
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_key_set_stops_its_fetches() {
    let script = Script::new(Step::Fail);
    let jwks = remote(&script);
    settle().await;
    let before = script.calls();
    drop(jwks);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(script.calls(), before);
}

#[tokio::test(start_paused = true)]
async fn the_registry_shares_key_sets_while_in_use() {
    let script = Script::new(Step::Fail);
    let registry = JwksRegistry::with_fetcher(settings(), Arc::clone(&script) as Arc<dyn Fetch>);
    let location = JwksLocation::Jwks("http://jwks.example/keys".parse().unwrap());
    let a = registry.get(&location, TIMEOUT);
    let b = registry.get(&location, TIMEOUT);
    assert!(Arc::ptr_eq(&a, &b));
    let other_timeout = registry.get(&location, Duration::from_secs(1));
    assert!(!Arc::ptr_eq(&a, &other_timeout));
    assert_eq!(registry.statuses().len(), 2);
    drop((a, b, other_timeout));
    assert!(registry.statuses().is_empty());
}

#[test]
fn retries_back_off_within_bounds() {
    let s = settings();
    assert_eq!(s.retry_delay(1), Duration::from_secs(5));
    assert_eq!(s.retry_delay(2), Duration::from_secs(10));
    assert_eq!(s.retry_delay(30), Duration::from_secs(300));
    assert_eq!(s.max_age(), Duration::from_secs(3600));
    let quick = JwksSettings {
        refresh_interval: Duration::from_secs(60),
        ..s
    };
    assert_eq!(quick.retry_delay(30), Duration::from_secs(60));
}

#[test]
fn discovery_locations() {
    assert_eq!(
        JwksLocation::discovery("https://accounts.example/"),
        Some(JwksLocation::Discovery(
            "https://accounts.example/.well-known/openid-configuration"
                .parse()
                .unwrap()
        ))
    );
    assert_eq!(JwksLocation::discovery("testing@secure.istio.io"), None);
}

/// A loopback HTTP/1.1 server answering every request with `status` and `body`.
async fn serve(status: StatusCode, body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_http_client_fetches_and_checks_answers() {
    let key = TestKey::ec256("k1");
    let fetcher = HttpFetcher::new(&JwksSettings {
        max_document_bytes: 4096,
        ..JwksSettings::default()
    });
    let ok = serve(StatusCode::OK, jwks_doc(&[&key])).await;
    let uri: Uri = format!("http://{ok}/keys").parse().unwrap();
    assert_eq!(fetcher.fetch(&uri).await.unwrap(), jwks_doc(&[&key]));

    let missing = serve(StatusCode::NOT_FOUND, String::new()).await;
    let uri: Uri = format!("http://{missing}/keys").parse().unwrap();
    assert!(matches!(
        fetcher.fetch(&uri).await,
        Err(FetchError::Status(StatusCode::NOT_FOUND))
    ));

    let large = serve(StatusCode::OK, "x".repeat(5000)).await;
    let uri: Uri = format!("http://{large}/keys").parse().unwrap();
    assert!(matches!(
        fetcher.fetch(&uri).await,
        Err(FetchError::Body(_))
    ));

    // Nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let uri: Uri = format!("http://{closed}/keys").parse().unwrap();
    assert!(matches!(
        fetcher.fetch(&uri).await,
        Err(FetchError::Connect { .. })
    ));
}

#[tokio::test]
async fn remote_keys_verify_tokens_end_to_end() {
    let key = TestKey::ec256("k1");
    let addr = serve(StatusCode::OK, jwks_doc(&[&key])).await;
    let registry = JwksRegistry::new(JwksSettings::default());
    let location = JwksLocation::Jwks(format!("http://{addr}/keys").parse().unwrap());
    let remote = registry.get(&location, TIMEOUT);
    let provider = Arc::new(crate::authn::Provider::new(
        super::settings(),
        crate::authn::KeySource::Remote(remote),
        crate::authn::RuleOrigin {
            policy: "default/remote".into(),
            index: 0,
        },
    ));
    let token = key.sign(&claims("alice"));
    let mut parts = http::Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let providers = [provider];
    let got = crate::authn::authenticate(&providers, &mut parts, now()).await;
    assert_eq!(
        got.unwrap().unwrap().principal,
        "https://issuer.example/alice"
    );
    let status = &registry.statuses()[0];
    assert!(status.usable && status.last_fetch_success.is_some());
    assert_eq!(status.kids, ["k1"]);
}

#[tokio::test]
async fn https_uses_the_configured_roots() {
    let key = TestKey::ec256("k1");
    let document = jwks_doc(&[&key]);
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let document = document.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |_req| {
                    let body = document.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("roots.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let uri: Uri = format!("https://127.0.0.1:{}/keys", addr.port())
        .parse()
        .unwrap();
    let trusted = HttpFetcher::new(&JwksSettings {
        ca_file: Some(ca_file),
        ..JwksSettings::default()
    });
    let body = trusted.fetch(&uri).await.unwrap();
    assert!(body.contains("\"k1\""));

    // Roots that did not issue the server's certificate: refused.
    let other = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_params.self_signed(&other).unwrap().pem()).unwrap();
    let untrusted = HttpFetcher::new(&JwksSettings {
        ca_file: Some(other_file),
        ..JwksSettings::default()
    });
    assert!(matches!(
        untrusted.fetch(&uri).await,
        Err(FetchError::Tls(_))
    ));
}
