//! RequestAuthentication end to end: client → ztunnel → waypoint (JWT checks) → ztunnel →
//! backends, with keys inline or fetched from a JWKS server on loopback. Tokens are signed
//! here with EC P-256 keys generated at test time.

#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambient_e2e::waypoint::{MeshOptions, Net, Seen, WaypointMesh, get, send};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const ISSUER: &str = "https://issuer.example";

/// An EC P-256 signing key and its `kid`.
struct Key {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Key {
    fn new(kid: &str) -> Self {
        Self {
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            kid: kid.to_owned(),
        }
    }

    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

fn jwks(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn claims(iss: &str, sub: &str, exp_offset: i64) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({"iss": iss, "sub": sub, "aud": "api", "iat": now, "exp": now + exp_offset})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every request the `reviews` or `ratings` backends received.
fn seen(mesh: &WaypointMesh, service: &str) -> Vec<Seen> {
    ["v1", "v2", "v3"]
        .iter()
        .flat_map(|v| mesh.backends.seen(&format!("{service}-{v}")))
        .collect()
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

/// A JWKS server on loopback whose document the test can change.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(listener: TcpListener, document: String) -> Self {
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let shared = Arc::clone(&document);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let body = shared.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            task,
        }
    }

    fn set(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A RequestAuthentication attached to the waypoint (every service) or to one service.
fn policy(name: &str, target: &str, rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  targetRefs: [{target}]\n  jwtRules:\n  - {rule}\n---\n"
    )
}

const WAYPOINT: &str = "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}";

fn quick_jwks_options() -> MeshOptions {
    MeshOptions {
        jwks: waypoint::authn::JwksSettings {
            on_demand_min_interval: Duration::from_millis(100),
            ..waypoint::authn::JwksSettings::default()
        },
        ..MeshOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_keys_valid_invalid_and_missing_tokens() {
    let mesh = WaypointMesh::start(Net(42)).await;
    let key = Key::new("k1");
    let ratings_key = Key::new("r1");
    let rule = format!(
        "{{issuer: {ISSUER}, audiences: [api], jwks: '{}', outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}]}}",
        jwks(&[&key])
    );
    let ratings_rule = format!(
        "{{issuer: ratings-issuer, jwks: '{}', forwardOriginalToken: true}}",
        jwks(&[&ratings_key])
    );
    mesh.apply(
        &(policy("waypoint-jwt", WAYPOINT, &rule)
            + &policy(
                "ratings-jwt",
                "{kind: Service, group: \"\", name: ratings}",
                &ratings_rule,
            )),
    );
    let mut reviews = mesh.http1(mesh.net.reviews()).await;

    // A valid token: forwarded without it, with the payload and claim headers.
    let token = key.sign(&claims(ISSUER, "alice", 3600));
    let (status, _, _) = send(
        &mut reviews,
        get(
            REVIEWS,
            "/valid",
            &[("authorization", &bearer(&token)), ("x-jwt-sub", "forged")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let got = seen(&mesh, "reviews");
    assert_eq!(got.len(), 1);
    assert_eq!(header(&got[0], "authorization"), None);
    assert_eq!(header(&got[0], "x-jwt-payload"), token.split('.').nth(1));
    assert_eq!(header(&got[0], "x-jwt-sub"), Some("alice"));
    assert_eq!(got[0].headers.get_all("x-jwt-sub").iter().count(), 1);

    // A token in the query: removed before forwarding, and absent from the access log.
    mesh.backends.clear();
    let (status, _, _) = send(
        &mut reviews,
        get(REVIEWS, &format!("/query?a=1&access_token={token}"), &[]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&mesh, "reviews")[0].path, "/query?a=1");
    assert_eq!(
        header(&seen(&mesh, "reviews")[0], "x-jwt-sub"),
        Some("alice")
    );

    // No token: through, unauthenticated.
    mesh.backends.clear();
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/anonymous", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&mesh, "reviews").len(), 1);

    // Invalid tokens: Envoy's local replies, nothing reaches a backend.
    mesh.backends.clear();
    let expired = key.sign(&claims(ISSUER, "alice", -3600));
    let other_key = Key::new("k1").sign(&claims(ISSUER, "mallory", 3600));
    let wrong_audience = key.sign(&json!({"iss": ISSUER, "sub": "a", "aud": "other"}));
    let cases = [
        (expired.as_str(), StatusCode::UNAUTHORIZED, "Jwt is expired"),
        (
            other_key.as_str(),
            StatusCode::UNAUTHORIZED,
            "Jwt verification fails",
        ),
        (
            "not-a-jwt",
            StatusCode::UNAUTHORIZED,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            wrong_audience.as_str(),
            StatusCode::FORBIDDEN,
            "Audiences in Jwt are not allowed",
        ),
    ];
    for (token, code, body) in cases {
        let (status, headers, got) = send(
            &mut reviews,
            get(REVIEWS, "/denied?x=1", &[("authorization", &bearer(token))]),
        )
        .await;
        assert_eq!(status, code, "{body}");
        assert_eq!(got, body);
        assert_eq!(
            headers.get("www-authenticate").unwrap(),
            &format!("Bearer realm=\"http://{REVIEWS}/denied?x=1\", error=\"invalid_token\"")
        );
    }
    assert!(
        seen(&mesh, "reviews").is_empty(),
        "nothing was sent upstream"
    );

    // The access log: response code and Envoy's details, no response flag.
    let log = mesh.access_log();
    let denied: Vec<&Value> = log.iter().filter(|e| e["path"] == "/denied?x=1").collect();
    assert_eq!(denied.len(), 4);
    assert_eq!(denied[0]["response_code"], 401);
    assert_eq!(
        denied[0]["response_code_details"],
        "jwt_authn_access_denied{Jwt_is_expired}"
    );
    assert_eq!(denied[0]["response_flags"], "-");
    assert_eq!(denied[0]["upstream_host"], Value::Null);
    assert!(mesh.metrics().contains("response_code=\"401\""));
    assert!(log.iter().any(|e| e["path"] == "/query?a=1"));
    assert!(
        !log.iter()
            .any(|e| e["path"].as_str().unwrap_or_default().contains(&token))
    );

    // The ratings service has its own rule (on top of the waypoint's): its token is kept.
    let mut ratings = mesh.http1(mesh.net.ratings()).await;
    let ratings_token = ratings_key.sign(&claims("ratings-issuer", "bob", 3600));
    let (status, _, _) = send(
        &mut ratings,
        get(
            RATINGS,
            "/ratings",
            &[("authorization", &bearer(&ratings_token))],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let got = seen(&mesh, "ratings");
    assert_eq!(
        header(&got[0], "authorization"),
        Some(bearer(&ratings_token).as_str())
    );
    // The same token is not valid for reviews, which only has the waypoint-wide rule.
    let (status, _, body) = send(
        &mut reviews,
        get(
            REVIEWS,
            "/ratings-token",
            &[("authorization", &bearer(&ratings_token))],
        ),
    )
    .await;
    assert_eq!(
        (status, body.as_ref()),
        (
            StatusCode::UNAUTHORIZED,
            &b"Jwt issuer is not configured"[..]
        )
    );

    // config_dump lists the rules and where they apply.
    let dump = mesh.config_dump().await;
    let policies = dump["requestAuthentications"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    let ratings_policy = policies
        .iter()
        .find(|p| p["policy"] == "default/ratings-jwt")
        .unwrap();
    assert_eq!(ratings_policy["appliesTo"], json!([RATINGS]));
    let waypoint_policy = policies
        .iter()
        .find(|p| p["policy"] == "default/waypoint-jwt")
        .unwrap();
    assert_eq!(waypoint_policy["appliesTo"], json!(["*"]));
    assert_eq!(waypoint_policy["rules"][0]["issuer"], ISSUER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_server_and_key_rotation() {
    let mesh = WaypointMesh::start_with(Net(43), quick_jwks_options()).await;
    let k1 = Key::new("k1");
    let k2 = Key::new("k2");
    let server = JwksServer::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        jwks(&[&k1]),
    )
    .await;
    let uri = format!("http://{}/.well-known/jwks.json", server.addr);
    mesh.apply(&policy(
        "jwt",
        WAYPOINT,
        &format!("{{issuer: {ISSUER}, jwksUri: '{uri}'}}"),
    ));
    let mut reviews = mesh.http1(mesh.net.reviews()).await;

    let token = k1.sign(&claims(ISSUER, "alice", 3600));
    let (status, _, _) = send(
        &mut reviews,
        get(REVIEWS, "/one", &[("authorization", &bearer(&token))]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(
        &mut reviews,
        get(
            REVIEWS,
            "/bad",
            &[(
                "authorization",
                &bearer(&k1.sign(&claims("https://evil", "x", 60))),
            )],
        ),
    )
    .await;
    assert_eq!(
        (status, body.as_ref()),
        (
            StatusCode::UNAUTHORIZED,
            &b"Jwt issuer is not configured"[..]
        )
    );

    // The issuer rotates to k2: a token naming the new kid makes the waypoint fetch again.
    server.set(jwks(&[&k1, &k2]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rotated = k2.sign(&claims(ISSUER, "bob", 3600));
    let (status, _, _) = send(
        &mut reviews,
        get(REVIEWS, "/two", &[("authorization", &bearer(&rotated))]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let dump = mesh.config_dump().await;
    let status = &dump["jwks"][0];
    assert_eq!(status["uri"], uri);
    assert_eq!(status["usable"], true);
    assert_eq!(status["kids"], json!(["k1", "k2"]));
    assert!(status["lastFetchSuccess"].is_string());
    assert_eq!(status["lastError"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_server_fails_closed() {
    let mesh = WaypointMesh::start_with(Net(44), quick_jwks_options()).await;
    let key = Key::new("k1");
    // The port is free again before the first fetch: nothing answers there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let uri = format!("http://{addr}/jwks.json");
    mesh.apply(&policy(
        "jwt",
        WAYPOINT,
        &format!("{{issuer: {ISSUER}, jwksUri: '{uri}', timeout: 2s}}"),
    ));
    let mut reviews = mesh.http1(mesh.net.reviews()).await;
    let token = key.sign(&claims(ISSUER, "alice", 3600));

    let (status, headers, body) = send(
        &mut reviews,
        get(REVIEWS, "/", &[("authorization", &bearer(&token))]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, "Jwks remote fetch is failed");
    assert!(headers.get("www-authenticate").is_some());
    assert!(seen(&mesh, "reviews").is_empty());
    // Requests without a token are not affected.
    let (status, _, _) = send(&mut reviews, get(REVIEWS, "/", &[])).await;
    assert_eq!(status, StatusCode::OK);
    let dump = mesh.config_dump().await;
    assert_eq!(dump["jwks"][0]["usable"], false);
    assert!(
        dump["jwks"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("connect")
    );

    // The server comes up: a later request fetches the keys and is let through.
    let Ok(listener) = TcpListener::bind(addr).await else {
        return; // The port was taken meanwhile; the fail-closed part is what matters.
    };
    let _server = JwksServer::start(listener, jwks(&[&key])).await;
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        (status, _, _) = send(
            &mut reviews,
            get(REVIEWS, "/", &[("authorization", &bearer(&token))]),
        )
        .await;
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(status, StatusCode::OK);
}

/// RequestAuthentication feeding AuthorizationPolicy, as Istio's "require a JWT" recipe:
/// `requestPrincipals` and a `request.auth.claims` condition decide on the verified token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_on_the_verified_principal_and_claims() {
    let mesh = WaypointMesh::start(Net(49)).await;
    let key = Key::new("k1");
    mesh.apply(&format!(
        r#"{authn}apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{ISSUER}/alice", "{ISSUER}/bob"]
    when:
    - key: request.auth.claims[groups]
      values: [admins]
"#,
        authn = policy(
            "jwt",
            WAYPOINT,
            &format!("{{issuer: {ISSUER}, jwks: '{}'}}", jwks(&[&key]))
        ),
    ));
    let mut client = mesh.http1(mesh.net.reviews()).await;
    let token = |sub: &str, groups: &[&str]| {
        let mut c = claims(ISSUER, sub, 300);
        c["groups"] = json!(groups);
        key.sign(&c)
    };
    let request = |token: Option<String>| {
        let auth = token.map(|t| bearer(&t));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        get(REVIEWS, "/reviews/1", &headers)
    };

    // Alice in admins: authenticated and allowed.
    let (status, _, _) = send(&mut client, request(Some(token("alice", &["admins"])))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen(&mesh, "reviews").len(), 1);

    // No token: authentication passes it on, authorization denies it.
    let (status, _, body) = send(&mut client, request(None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    // A valid token for a principal not listed, and a listed one without the claim.
    let (status, _, _) = send(&mut client, request(Some(token("carol", &["admins"])))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&mut client, request(Some(token("bob", &["users"])))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A forged token for alice: 401 from authentication, before authorization.
    let forged = Key::new("k1").sign(&{
        let mut c = claims(ISSUER, "alice", 300);
        c["groups"] = json!(["admins"]);
        c
    });
    let (status, _, _) = send(&mut client, request(Some(forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert_eq!(
        seen(&mesh, "reviews").len(),
        1,
        "no denied request reached a backend"
    );
}
