//! The decision: token extraction, validation outcomes, header outputs, denials.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::request::Parts;
use http::{HeaderName, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::authn::token::{self, Jwt, Locations, TokenSource};
use crate::authn::{Authenticated, Denial, JwtStatus, authenticate};

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::get(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn run(
    providers: &[Arc<Provider>],
    parts: &mut Parts,
) -> Result<Option<Authenticated>, JwtStatus> {
    authenticate(providers, parts, now()).await
}

/// Makes a case's token from the configured key and another key with the same `kid`.
type MakeToken = Box<dyn Fn(&TestKey, &TestKey) -> String>;

/// One row of the validation table: how its token is made and the outcome.
struct Case {
    name: &'static str,
    token: MakeToken,
    expect: Result<(), JwtStatus>,
}

fn case(
    name: &'static str,
    token: impl Fn(&TestKey, &TestKey) -> String + 'static,
    expect: Result<(), JwtStatus>,
) -> Case {
    Case {
        name,
        token: Box::new(token),
        expect,
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

#[tokio::test]
async fn validation_outcomes() {
    let key = TestKey::ec256("k1");
    let other = TestKey::ec256("k1");
    let now = now();
    let cases = vec![
        case("valid", |k, _| k.sign(&claims("alice")), Ok(())),
        case(
            "expired",
            move |k, _| k.sign(&with(claims("a"), "exp", json!(now - 120))),
            Err(JwtStatus::JwtExpired),
        ),
        case(
            "expired within the clock skew",
            move |k, _| k.sign(&with(claims("a"), "exp", json!(now - 30))),
            Ok(()),
        ),
        case(
            "nbf in the future",
            move |k, _| k.sign(&with(claims("a"), "nbf", json!(now + 120))),
            Err(JwtStatus::JwtNotYetValid),
        ),
        case(
            "nbf within the clock skew",
            move |k, _| k.sign(&with(claims("a"), "nbf", json!(now + 30))),
            Ok(()),
        ),
        case(
            "no exp",
            |k, _| {
                let mut c = claims("a");
                c.as_object_mut().unwrap().remove("exp");
                k.sign(&c)
            },
            Ok(()),
        ),
        case(
            "wrong issuer",
            |k, _| k.sign(&with(claims("a"), "iss", json!("https://evil.example"))),
            Err(JwtStatus::JwtUnknownIssuer),
        ),
        case(
            "no issuer",
            |k, _| {
                let mut c = claims("a");
                c.as_object_mut().unwrap().remove("iss");
                k.sign(&c)
            },
            Err(JwtStatus::JwtUnknownIssuer),
        ),
        case(
            "wrong audience",
            |k, _| k.sign(&with(claims("a"), "aud", json!("other"))),
            Err(JwtStatus::JwtAudienceNotAllowed),
        ),
        case(
            "audience list with one allowed",
            |k, _| k.sign(&with(claims("a"), "aud", json!(["x", "api"]))),
            Ok(()),
        ),
        case(
            "audience with scheme and slash",
            |k, _| k.sign(&with(claims("a"), "aud", json!("https://api/"))),
            Ok(()),
        ),
        case(
            "no audience",
            |k, _| {
                let mut c = claims("a");
                c.as_object_mut().unwrap().remove("aud");
                k.sign(&c)
            },
            Err(JwtStatus::JwtAudienceNotAllowed),
        ),
        case(
            "bad signature (another key, same kid)",
            |_, o| o.sign(&claims("a")),
            Err(JwtStatus::JwtVerificationFail),
        ),
        case(
            "tampered payload",
            |k, _| {
                let token = k.sign(&claims("alice"));
                let parts: Vec<&str> = token.split('.').collect();
                let forged = b64(&claims("admin").to_string());
                format!("{}.{forged}.{}", parts[0], parts[2])
            },
            Err(JwtStatus::JwtVerificationFail),
        ),
        case(
            "alg none",
            |_, _| {
                format!(
                    "{}.{}.",
                    b64(r#"{"alg":"none"}"#),
                    b64(&claims("a").to_string())
                )
            },
            Err(JwtStatus::JwtBadFormat),
        ),
        case(
            "alg none with a signature",
            |_, _| {
                format!(
                    "{}.{}.AAAA",
                    b64(r#"{"alg":"none","kid":"k1"}"#),
                    b64(&claims("a").to_string())
                )
            },
            Err(JwtStatus::JwtHeaderNotImplementedAlg),
        ),
        case(
            "alg missing",
            |_, _| {
                format!(
                    "{}.{}.AAAA",
                    b64(r#"{"kid":"k1"}"#),
                    b64(&claims("a").to_string())
                )
            },
            Err(JwtStatus::JwtHeaderBadAlg),
        ),
        case(
            "HS256 with the public key as secret",
            |k, _| {
                let header = json!({"alg": "HS256", "kid": "k1"});
                let secret = TestKey {
                    kid: None,
                    signer: Signer::Hmac(k.jwk().to_string().into_bytes()),
                };
                sign_raw(&secret, &header, &claims("a"))
            },
            Err(JwtStatus::JwtVerificationFail),
        ),
        case(
            "unknown kid",
            |_, _| TestKey::ec256("k2").sign(&claims("a")),
            Err(JwtStatus::JwksKidAlgMismatch),
        ),
        case(
            "no kid: every key is tried",
            |_, _| TestKey::ec256("").sign(&claims("a")),
            Err(JwtStatus::JwtVerificationFail),
        ),
        case(
            "malformed: one part",
            |_, _| "abc".into(),
            Err(JwtStatus::JwtBadFormat),
        ),
        case(
            "malformed: empty part",
            |_, _| "a..b".into(),
            Err(JwtStatus::JwtBadFormat),
        ),
        case(
            "malformed: header not base64url",
            |_, _| "a*b.e30.AA".into(),
            Err(JwtStatus::JwtHeaderParseErrorBadBase64),
        ),
        case(
            "malformed: header not JSON",
            |_, _| format!("{}.e30.AA", b64("nope")),
            Err(JwtStatus::JwtHeaderParseErrorBadJson),
        ),
        case(
            "malformed: payload not JSON",
            |_, _| format!("{}.{}.AA", b64(r#"{"alg":"ES256"}"#), b64("[1]")),
            Err(JwtStatus::JwtPayloadParseErrorBadJson),
        ),
        case(
            "malformed: signature not base64url",
            |k, _| format!("{}!", k.sign(&claims("a"))),
            Err(JwtStatus::JwtSignatureParseErrorBadBase64),
        ),
        case(
            "exp is a string",
            |k, _| k.sign(&with(claims("a"), "exp", json!("soon"))),
            Err(JwtStatus::JwtPayloadParseErrorExpNotInteger),
        ),
        case(
            "exp is negative",
            |k, _| k.sign(&with(claims("a"), "exp", json!(-1))),
            Err(JwtStatus::JwtPayloadParseErrorExpOutOfRange),
        ),
        case(
            "sub is a number",
            |k, _| k.sign(&with(claims("a"), "sub", json!(7))),
            Err(JwtStatus::JwtPayloadParseErrorSubNotString),
        ),
        case(
            "aud is a number",
            |k, _| k.sign(&with(claims("a"), "aud", json!(7))),
            Err(JwtStatus::JwtPayloadParseErrorAudNotString),
        ),
        case(
            "iss is a list",
            |k, _| k.sign(&with(claims("a"), "iss", json!([ISSUER]))),
            Err(JwtStatus::JwtPayloadParseErrorIssNotString),
        ),
        case(
            "ES512 is not supported",
            |_, _| {
                format!(
                    "{}.{}.AAAA",
                    b64(r#"{"alg":"ES512"}"#),
                    b64(&claims("a").to_string())
                )
            },
            Err(JwtStatus::JwtHeaderNotImplementedAlg),
        ),
    ];
    let p = provider(
        ProviderSettings {
            audiences: vec!["api".into()],
            ..settings()
        },
        &[&key],
    );
    for case in cases {
        let token = (case.token)(&key, &other);
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        let got = run(&[Arc::clone(&p)], &mut parts).await.map(|a| {
            assert!(a.is_some(), "{}: a valid token authenticates", case.name);
        });
        assert_eq!(got, case.expect, "{}", case.name);
    }
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    let keys = [
        TestKey::ec256("es256"),
        TestKey::ec384("es384"),
        TestKey::ed25519("eddsa"),
        TestKey::rsa("rsa"),
        TestKey::hmac("hs256"),
    ];
    let refs: Vec<&TestKey> = keys.iter().collect();
    let p = provider(settings(), &refs);
    let mut tokens: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.default_alg().to_owned(), k.sign(&claims("a"))))
        .collect();
    tokens.push(("PS256".into(), keys[3].sign_with("PS256", &claims("a"))));
    for (alg, token) in tokens {
        let mut parts = request("/", &[("authorization", &bearer(&token))]);
        let got = run(&[Arc::clone(&p)], &mut parts).await;
        assert!(matches!(got, Ok(Some(_))), "{alg}: {got:?}");
    }
}

#[tokio::test]
async fn a_key_set_only_verifies_with_its_own_key_types() {
    // An RSA key cannot verify an ES256 token, even with matching kids.
    let ec = TestKey::ec256("same");
    let mut rsa = TestKey::rsa("same");
    rsa.kid = Some("same".into());
    let p = provider(settings(), &[&rsa]);
    let mut parts = request("/", &[("authorization", &bearer(&ec.sign(&claims("a"))))]);
    assert_eq!(
        run(&[p], &mut parts).await,
        Err(JwtStatus::JwtVerificationFail)
    );

    // A JWK whose `alg` differs from the token's is not a candidate.
    let key = TestKey::rsa("k");
    let mut jwk = key.jwk();
    jwk["alg"] = json!("RS384");
    let set = KeySet::parse(&json!({"keys": [jwk]}).to_string()).unwrap();
    let jwt = Jwt::parse(&key.sign(&claims("a"))).unwrap();
    assert_eq!(set.verify(&jwt), Err(JwtStatus::JwksKidAlgMismatch));
}

#[tokio::test]
async fn no_token_passes_unauthenticated() {
    let key = TestKey::ec256("k1");
    let p = provider(settings(), &[&key]);
    for headers in [
        vec![],
        // The prefix is case-sensitive, as Envoy's: not a token location.
        vec![("authorization", "bearer abc")],
        vec![("authorization", "Basic dXNlcjpwYXNz")],
    ] {
        let mut parts = request("/", &headers);
        assert_eq!(
            run(&[Arc::clone(&p)], &mut parts).await,
            Ok(None),
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn tokens_are_found_where_the_rule_says() {
    let key = TestKey::ec256("k1");
    let token = key.sign(&claims("alice"));

    // Default: the access_token query parameter, percent-decoded; removed from the URI.
    let p = provider(settings(), &[&key]);
    let encoded = token.replace('.', "%2E");
    let mut parts = request(&format!("/p?a=1&access_token={encoded}&b=2"), &[]);
    let got = run(&[p], &mut parts).await.unwrap().unwrap();
    assert_eq!(got.principal, "https://issuer.example/alice");
    assert_eq!(parts.uri.to_string(), "/p?a=1&b=2");

    // A custom header with a prefix, and a cookie; the default locations are then off.
    let custom = provider(
        ProviderSettings {
            headers: vec![(HeaderName::from_static("x-jwt"), "Token ".into())],
            cookies: vec!["session".into()],
            ..settings()
        },
        &[&key],
    );
    let mut parts = request("/", &[("x-jwt", &format!("Token {token}"))]);
    assert!(
        run(&[Arc::clone(&custom)], &mut parts)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        parts.headers.get("x-jwt").is_none(),
        "the token header is removed"
    );

    let mut parts = request("/", &[("cookie", &format!("a=b; session=\"{token}\""))]);
    assert!(
        run(&[Arc::clone(&custom)], &mut parts)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        parts.headers.get("cookie").is_some(),
        "cookies are left as they are"
    );

    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    assert_eq!(
        run(&[custom], &mut parts).await,
        Ok(None),
        "not a location of this rule"
    );
}

#[test]
fn extraction_follows_envoy() {
    let locations = Locations::new(
        vec![
            (HeaderName::from_static("x-b"), String::new()),
            (HeaderName::from_static("authorization"), "Bearer ".into()),
        ],
        vec![],
        vec![],
    );
    let mut headers = http::HeaderMap::new();
    headers.append("authorization", "Scheme x, Bearer   one".parse().unwrap());
    headers.append("authorization", "Bearer two".parse().unwrap());
    headers.append("x-b", "three".parse().unwrap());
    let found = token::extract(&locations, &headers, None);
    let tokens: Vec<&str> = found.iter().map(|f| f.token.as_str()).collect();
    // Sorted locations; every value of a header; the prefix anywhere in the value.
    assert_eq!(tokens, ["one", "two", "three"]);
    assert_eq!(
        found[2].source,
        TokenSource::Header(HeaderName::from_static("x-b"))
    );
    // The defaults when nothing is configured.
    let defaults = Locations::new(vec![], vec![], vec![]);
    assert_eq!(
        defaults.headers,
        [(http::header::AUTHORIZATION, "Bearer ".to_owned())]
    );
    assert_eq!(defaults.params, ["access_token"]);
}

#[tokio::test]
async fn every_token_of_a_rule_must_be_valid() {
    let key = TestKey::ec256("k1");
    let p = provider(settings(), &[&key]);
    let good = key.sign(&claims("alice"));
    let expired = key.sign(&with(claims("bob"), "exp", json!(now() - 3600)));
    let mut parts = request(
        &format!("/?access_token={expired}"),
        &[("authorization", &bearer(&good))],
    );
    assert_eq!(run(&[p], &mut parts).await, Err(JwtStatus::JwtExpired));
}

#[tokio::test]
async fn several_rules_follow_istio() {
    let a = TestKey::ec256("a");
    let b = TestKey::ec256("b");
    let rule_a = provider(settings(), &[&a]);
    let rule_b = provider(
        ProviderSettings {
            issuer: "issuer-b".into(),
            ..ProviderSettings::default()
        },
        &[&b],
    );
    let rule_b_header = provider(
        ProviderSettings {
            issuer: "issuer-b".into(),
            headers: vec![(HeaderName::from_static("x-b"), String::new())],
            ..ProviderSettings::default()
        },
        &[&b],
    );
    let token_b = b.sign(&with(claims("bob"), "iss", json!("issuer-b")));
    let bad_b = b.sign(&with(
        with(claims("bob"), "iss", json!("issuer-b")),
        "exp",
        json!(1),
    ));

    // Shared default location: the token's issuer picks the rule.
    let rules = [Arc::clone(&rule_b), Arc::clone(&rule_a)];
    let mut parts = request("/", &[("authorization", &bearer(&token_b))]);
    assert_eq!(
        run(&rules, &mut parts).await.unwrap().unwrap().principal,
        "issuer-b/bob"
    );
    let mut parts = request("/", &[("authorization", &bearer(&a.sign(&claims("al"))))]);
    assert_eq!(
        run(&rules, &mut parts).await.unwrap().unwrap().issuer,
        ISSUER
    );

    // A token at a location only rule A reads, from issuer B: no rule accepts it.
    let rules = [Arc::clone(&rule_a), Arc::clone(&rule_b_header)];
    let mut parts = request("/", &[("authorization", &bearer(&token_b))]);
    assert_eq!(
        run(&rules, &mut parts).await,
        Err(JwtStatus::JwtUnknownIssuer)
    );

    // A bad token for rule B alone is denied with its own status.
    let mut parts = request("/", &[("x-b", &bad_b)]);
    assert_eq!(run(&rules, &mut parts).await, Err(JwtStatus::JwtExpired));

    // Istio's outer "any": rule A satisfied is enough, whatever rule B's locations hold.
    let mut parts = request(
        "/",
        &[
            ("authorization", &bearer(&a.sign(&claims("al")))),
            ("x-b", &bad_b),
        ],
    );
    assert_eq!(
        run(&rules, &mut parts).await.unwrap().unwrap().subject,
        "al"
    );
}

#[tokio::test]
async fn required_presence_denies_requests_without_token() {
    let key = TestKey::ec256("k1");
    let p = provider(
        ProviderSettings {
            required: true,
            ..settings()
        },
        &[&key],
    );
    let mut parts = request("/", &[]);
    assert_eq!(
        run(&[Arc::clone(&p)], &mut parts).await,
        Err(JwtStatus::JwtMissed)
    );
    let mut parts = request("/", &[("authorization", &bearer(&key.sign(&claims("a"))))]);
    assert!(run(&[p], &mut parts).await.unwrap().is_some());
}

#[tokio::test]
async fn outputs_and_the_principal() {
    let key = TestKey::ec256("k1");
    let p = provider(
        ProviderSettings {
            payload_header: Some(HeaderName::from_static("x-jwt-payload")),
            claim_headers: vec![
                (HeaderName::from_static("x-sub"), "sub".into()),
                (HeaderName::from_static("x-level"), "level".into()),
                (HeaderName::from_static("x-ratio"), "ratio".into()),
                (HeaderName::from_static("x-admin"), "admin".into()),
                (HeaderName::from_static("x-team"), "org.team".into()),
                (HeaderName::from_static("x-groups"), "groups".into()),
                (HeaderName::from_static("x-missing"), "missing".into()),
            ],
            space_delimited: vec!["roles".into()],
            ..settings()
        },
        &[&key],
    );
    let mut c = claims("alice");
    for (k, v) in [
        ("level", json!(3)),
        ("ratio", json!(1.5)),
        ("admin", json!(true)),
        ("org", json!({"team": "blue"})),
        ("groups", json!(["a", "b"])),
        ("azp", json!("frontend")),
        ("scope", json!("read write")),
        ("roles", json!("x y")),
    ] {
        c[k] = v;
    }
    let token = key.sign(&c);
    let mut parts = request(
        "/",
        &[
            ("authorization", &bearer(&token)),
            // Forged by the client: replaced by the verified values.
            ("x-jwt-payload", "forged"),
            ("x-missing", "forged"),
        ],
    );
    let got = run(&[p], &mut parts).await.unwrap().unwrap();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("x-jwt-payload").as_deref(), token.split('.').nth(1));
    assert_eq!(header("x-sub").as_deref(), Some("alice"));
    assert_eq!(header("x-level").as_deref(), Some("3"));
    assert_eq!(header("x-ratio").as_deref(), Some("1.500000"));
    assert_eq!(header("x-admin").as_deref(), Some("true"));
    assert_eq!(header("x-team").as_deref(), Some("blue"));
    assert_eq!(header("x-groups"), None, "lists are not copied");
    assert_eq!(header("x-missing"), None, "the forged value is removed");
    assert_eq!(parts.headers.get_all("x-jwt-payload").iter().count(), 1);
    assert_eq!(header("authorization"), None, "the token is not forwarded");
    assert_eq!(got.principal, "https://issuer.example/alice");
    assert_eq!(got.audiences, ["api"]);
    assert_eq!(got.presenter.as_deref(), Some("frontend"));
    assert_eq!(got.claims["scope"], json!(["read", "write"]));
    assert_eq!(got.claims["roles"], json!(["x", "y"]));
    assert_eq!(got.claims["org"]["team"], "blue");
}

#[tokio::test]
async fn forwarded_tokens_stay() {
    let key = TestKey::ec256("k1");
    let p = provider(
        ProviderSettings {
            forward: true,
            ..settings()
        },
        &[&key],
    );
    let token = bearer(&key.sign(&claims("a")));
    let mut parts = request("/", &[("authorization", &token)]);
    assert!(run(&[p], &mut parts).await.unwrap().is_some());
    assert_eq!(parts.headers.get("authorization").unwrap(), token.as_str());
}

#[tokio::test]
async fn output_headers_are_removed_even_without_token() {
    let key = TestKey::ec256("k1");
    let p = provider(
        ProviderSettings {
            payload_header: Some(HeaderName::from_static("x-jwt-payload")),
            ..settings()
        },
        &[&key],
    );
    let mut parts = request("/", &[("x-jwt-payload", "forged")]);
    assert_eq!(run(&[p], &mut parts).await, Ok(None));
    assert!(parts.headers.get("x-jwt-payload").is_none());
}

#[tokio::test]
async fn cors_preflights_are_not_checked() {
    let key = TestKey::ec256("k1");
    let p = provider(settings(), &[&key]);
    let mut parts = request(
        "/",
        &[
            ("authorization", "Bearer garbage"),
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
    );
    parts.method = http::Method::OPTIONS;
    assert_eq!(run(&[Arc::clone(&p)], &mut parts).await, Ok(None));
    parts.method = http::Method::GET;
    assert_eq!(run(&[p], &mut parts).await, Err(JwtStatus::JwtBadFormat));
}

#[test]
fn denials_are_envoys() {
    let denial = Denial::new(JwtStatus::JwtExpired, "http", "reviews:9080", "/api?x=1");
    assert_eq!(denial.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denial.body, "Jwt is expired");
    assert_eq!(denial.details, "jwt_authn_access_denied{Jwt_is_expired}");
    assert_eq!(
        denial.www_authenticate.unwrap(),
        "Bearer realm=\"http://reviews:9080/api?x=1\", error=\"invalid_token\""
    );

    let missing = Denial::new(JwtStatus::JwtMissed, "http", "h", "/");
    assert_eq!(
        missing.www_authenticate.unwrap(),
        "Bearer realm=\"http://h/\""
    );

    let audience = Denial::new(JwtStatus::JwtAudienceNotAllowed, "http", "h", "/");
    assert_eq!(audience.status, StatusCode::FORBIDDEN);
    assert_eq!(audience.body, "Audiences in Jwt are not allowed");

    let long = format!("/{}", "a".repeat(400));
    let truncated = Denial::new(JwtStatus::JwtVerificationFail, "http", "h", &long);
    let value = truncated.www_authenticate.unwrap();
    assert_eq!(
        value.len(),
        "Bearer realm=\"http://h\"".len() + 256 + ", error=\"invalid_token\"".len()
    );
}

#[test]
fn every_status_has_envoys_details() {
    for status in JwtStatus::ALL {
        let details = status.details();
        assert_eq!(
            details,
            format!(
                "jwt_authn_access_denied{{{}}}",
                status.message().replace(' ', "_")
            ),
        );
        assert!(!details.contains(' '));
        assert_eq!(status.to_string(), status.message());
    }
    assert_eq!(
        JwtStatus::JwtVerificationFail.message(),
        "Jwt verification fails"
    );
    assert_eq!(
        JwtStatus::JwtUnknownIssuer.message(),
        "Jwt issuer is not configured"
    );
}

#[test]
fn key_sets_skip_unusable_keys_and_reject_empty_ones() {
    let key = TestKey::ec256("good");
    let document = json!({"keys": [
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "unknown"},
        key.jwk(),
    ]});
    let set = KeySet::parse(&document.to_string()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.skipped().len(), 2);
    assert!(set.has_key_for("good"));
    assert!(!set.has_key_for("other"));

    for bad in [
        "not json",
        "[]",
        r#"{"nokeys": []}"#,
        r#"{"keys": {}}"#,
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "RSA", "n": "AQAB"}]}"#,
        r#"{"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES384", "x": "AA", "y": "AA"}]}"#,
    ] {
        assert!(KeySet::parse(bad).is_err(), "{bad}");
    }
}
