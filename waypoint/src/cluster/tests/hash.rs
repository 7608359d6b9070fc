//! Consistent hash: stickiness, movement on endpoint change, missing keys, cookies, parsing.

use std::collections::HashMap;

use super::*;
use crate::cluster::hash::{cookie_value, query_value, set_cookie_value, stable_hash};

fn header_lb() -> LoadBalancer {
    LoadBalancer::ConsistentHash(ConsistentHash::HttpHeaderName("x-user".into()))
}

fn cookie_lb(ttl: Option<&str>) -> LoadBalancer {
    LoadBalancer::ConsistentHash(ConsistentHash::HttpCookie {
        name: "session".into(),
        path: Some("/".into()),
        ttl: ttl.map(str::to_owned),
    })
}

fn pick_header(c: &Cluster, value: &str) -> SocketAddr {
    let mut headers = HeaderMap::new();
    headers.insert("x-user", value.parse().unwrap());
    pick_with(c, &PickContext::new(&headers), Instant::now())
}

fn owners(c: &Cluster, keys: usize) -> HashMap<usize, SocketAddr> {
    (0..keys)
        .map(|k| (k, pick_header(c, &format!("user-{k}"))))
        .collect()
}

#[test]
fn stable_hash_is_pinned() {
    // FNV-1a 64 + fmix64: changing these values reshuffles every session in a rollout.
    assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
    assert_eq!(stable_hash(b"a"), 0x82a2_a958_a9be_ce5b);
    assert_eq!(stable_hash(b"10.0.0.1:8080_0"), 0xb46a_6616_fb57_f583);
    assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
}

#[test]
fn same_key_same_endpoint_across_clusters_and_seeds() {
    let a = cluster(header_lb(), 5);
    let b = Cluster::with_seed("other".into(), &policy(header_lb()), endpoints(5), 99);
    for k in 0..200 {
        let key = format!("user-{k}");
        let first = pick_header(&a, &key);
        assert_eq!(pick_header(&a, &key), first);
        assert_eq!(pick_header(&b, &key), first, "stable across instances");
    }
}

#[test]
fn keys_spread_over_endpoints() {
    let c = cluster(header_lb(), 4);
    let counts = histogram(owners(&c, 4000).into_values(), 4);
    assert!(
        counts.iter().all(|n| (650..=1350).contains(n)),
        "{counts:?}"
    );
}

#[test]
fn adding_an_endpoint_moves_about_one_in_n_keys_all_to_it() {
    let c = cluster(header_lb(), 5);
    let before = owners(&c, 3000);
    c.set_endpoints(endpoints(6));
    let after = owners(&c, 3000);
    let moved: Vec<usize> = (0..3000).filter(|k| before[k] != after[k]).collect();
    let share = moved.len() as f64 / 3000.0;
    assert!((0.10..=0.24).contains(&share), "moved {share}");
    assert!(moved.iter().all(|k| after[k] == addr(5)));
}

#[test]
fn removing_an_endpoint_moves_only_its_keys() {
    let c = cluster(header_lb(), 5);
    let before = owners(&c, 3000);
    c.set_endpoints(vec![endpoint(0), endpoint(1), endpoint(3), endpoint(4)]);
    let after = owners(&c, 3000);
    for k in 0..3000 {
        if before[&k] == addr(2) {
            assert_ne!(after[&k], addr(2));
        } else {
            assert_eq!(after[&k], before[&k], "key {k} moved");
        }
    }
}

#[test]
fn endpoint_order_does_not_matter() {
    let c = cluster(header_lb(), 4);
    let before = owners(&c, 500);
    let mut reversed = endpoints(4);
    reversed.reverse();
    c.set_endpoints(reversed);
    assert_eq!(owners(&c, 500), before);
}

#[test]
fn missing_key_falls_back_to_random() {
    for lb in [
        header_lb(),
        cookie_lb(None),
        LoadBalancer::ConsistentHash(ConsistentHash::UseSourceIp),
        LoadBalancer::ConsistentHash(ConsistentHash::HttpQueryParameterName("u".into())),
    ] {
        let c = cluster(lb.clone(), 4);
        let now = Instant::now();
        let headers = HeaderMap::new();
        let picks = (0..800).map(|_| {
            let p = c.pick(&PickContext::new(&headers), now).unwrap();
            assert!(p.set_cookie.is_none());
            p.address
        });
        let counts = histogram(picks, 4);
        assert!(
            counts.iter().all(|n| (100..=300).contains(n)),
            "{lb:?}: {counts:?}"
        );
    }
}

#[test]
fn source_ip_and_query_parameter_are_sticky() {
    let by_ip = cluster(LoadBalancer::ConsistentHash(ConsistentHash::UseSourceIp), 5);
    let by_query = cluster(
        LoadBalancer::ConsistentHash(ConsistentHash::HttpQueryParameterName("user".into())),
        5,
    );
    let headers = HeaderMap::new();
    let now = Instant::now();
    let mut seen_ip = std::collections::HashSet::new();
    for k in 0..50u8 {
        let ip: IpAddr = IpAddr::from([192, 168, 0, k]);
        let ctx = PickContext {
            source_ip: Some(ip),
            ..PickContext::new(&headers)
        };
        let first = pick_with(&by_ip, &ctx, now);
        seen_ip.insert(first);
        assert!((0..5).all(|_| pick_with(&by_ip, &ctx, now) == first));

        let query = format!("a=1&user=u{k}&b");
        let ctx = PickContext {
            query: Some(&query),
            ..PickContext::new(&headers)
        };
        let first = pick_with(&by_query, &ctx, now);
        let other_order = format!("user=u{k}");
        let ctx2 = PickContext {
            query: Some(&other_order),
            ..PickContext::new(&headers)
        };
        assert_eq!(pick_with(&by_query, &ctx2, now), first);
    }
    assert!(seen_ip.len() > 1);
}

#[test]
fn absent_cookie_with_ttl_generates_one_that_sticks() {
    let c = cluster(cookie_lb(Some("1h")), 5);
    let now = Instant::now();
    let picked = c.pick(&PickContext::new(&HeaderMap::new()), now).unwrap();
    let set_cookie = picked.set_cookie.clone().expect("a generated cookie");
    let text = set_cookie.to_str().unwrap().to_owned();
    let (pair, attributes) = text.split_once("; ").unwrap();
    assert_eq!(attributes, "Max-Age=3600; Path=/; HttpOnly");
    let value = pair
        .strip_prefix("session=\"")
        .unwrap()
        .strip_suffix('"')
        .unwrap();
    assert_eq!(value.len(), 16);
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));

    // The client sends it back (browsers keep the quotes): same endpoint every time.
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        format!("other=1; {pair}").parse().unwrap(),
    );
    for _ in 0..20 {
        let again = c.pick(&PickContext::new(&headers), now).unwrap();
        assert_eq!(again.address, picked.address);
        assert!(again.set_cookie.is_none());
    }
}

#[test]
fn cookie_ttl_zero_is_a_session_cookie_and_bad_ttl_generates_nothing() {
    let c = cluster(cookie_lb(Some("0s")), 3);
    let p = c
        .pick(&PickContext::new(&HeaderMap::new()), Instant::now())
        .unwrap();
    let text = p.set_cookie.unwrap();
    assert!(
        text.to_str().unwrap().ends_with("\"; Path=/; HttpOnly"),
        "{text:?}"
    );

    let c = cluster(cookie_lb(Some("soon")), 3);
    let p = c
        .pick(&PickContext::new(&HeaderMap::new()), Instant::now())
        .unwrap();
    assert!(p.set_cookie.is_none());
}

#[test]
fn cookie_parsing() {
    let cases: &[(&[&str], &str, Option<&str>)] = &[
        (&["session=abc"], "session", Some("abc")),
        (&["a=1; session=\"abc\"; b=2"], "session", Some("abc")),
        (&["a=1", "session=xyz"], "session", Some("xyz")),
        (&["sessionx=1; xsession=2"], "session", None),
        (&["session="], "session", Some("")),
        (&[], "session", None),
    ];
    for (lines, name, expected) in cases {
        let mut headers = HeaderMap::new();
        for line in *lines {
            headers.append(http::header::COOKIE, line.parse().unwrap());
        }
        assert_eq!(cookie_value(&headers, name), *expected, "{lines:?}");
    }
}

#[test]
fn query_parsing() {
    let cases = [
        ("user=a&x=b", "user", Some("a")),
        ("x=b&user=a&user=c", "user", Some("a")),
        ("user", "user", Some("")),
        ("username=a", "user", None),
        ("", "user", None),
        ("user=a%20b", "user", Some("a%20b")),
    ];
    for (query, name, expected) in cases {
        assert_eq!(query_value(query, name), expected, "{query:?}");
    }
}

#[test]
fn set_cookie_format() {
    let cases = [
        ("s", "v", None, 0, "s=\"v\"; HttpOnly"),
        (
            "s",
            "v",
            Some("/api"),
            90,
            "s=\"v\"; Max-Age=90; Path=/api; HttpOnly",
        ),
        ("s", "v", Some(""), 1, "s=\"v\"; Max-Age=1; HttpOnly"),
    ];
    for (name, value, path, secs, expected) in cases {
        let header =
            set_cookie_value(name, value, path, std::time::Duration::from_secs(secs)).unwrap();
        assert_eq!(header.to_str().unwrap(), expected);
    }
    assert!(set_cookie_value("bad\nname", "v", None, std::time::Duration::ZERO).is_none());
}
