//! Tests of the SOCKS5 handshake over in-memory duplex streams and real loopback sockets.

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::net::{TcpListener, TcpStream};

/// A deadline no test should reach unless it is meant to.
const LONG: Duration = Duration::from_secs(10);

/// Greeting offering only "no authentication required".
const GREETING: [u8; 3] = [5, 1, 0];

/// What the server sends back after a failed request: `05 REP 00 01 0.0.0.0:0`.
fn failure(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// A CONNECT request to `addr` with address type `atyp` and the given address bytes.
fn request(cmd: u8, atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
    let mut out = vec![5, cmd, 0, atyp];
    out.extend_from_slice(addr);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// A CONNECT request for a domain name, with its length byte.
fn domain_request(name: &[u8], port: u16) -> Vec<u8> {
    let mut addr = vec![u8::try_from(name.len()).unwrap()];
    addr.extend_from_slice(name);
    request(1, 3, &addr, port)
}

/// Feeds `input` to a server over a duplex stream, closes the client's write side, and returns
/// what the handshake returned and everything the server wrote.
async fn run(input: &[u8], deadline: Duration) -> (Result<Destination, Socks5Error>, Vec<u8>) {
    let (mut client, mut server) = duplex(4096);
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let result = handshake(&mut server, deadline).await;
    drop(server);
    let mut output = Vec::new();
    client.read_to_end(&mut output).await.unwrap();
    (result, output)
}

/// Greeting followed by `req`, run to completion.
async fn run_request(req: &[u8]) -> (Result<Destination, Socks5Error>, Vec<u8>) {
    let mut input = GREETING.to_vec();
    input.extend_from_slice(req);
    run(&input, LONG).await
}

#[tokio::test]
async fn ipv4_connect() {
    let (result, output) = run_request(&request(1, 1, &[10, 1, 2, 3], 8080)).await;
    assert_eq!(
        result.unwrap(),
        Destination::Addr("10.1.2.3:8080".parse().unwrap())
    );
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn ipv6_connect() {
    let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let (result, output) = run_request(&request(1, 4, &ip.octets(), 443)).await;
    assert_eq!(
        result.unwrap(),
        Destination::Addr("[2001:db8::1]:443".parse().unwrap())
    );
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn domain_connect() {
    let (result, output) = run_request(&domain_request(b"reviews.default.svc_x-1", 9080)).await;
    let dest = result.unwrap();
    assert_eq!(
        dest,
        Destination::Domain("reviews.default.svc_x-1".into(), 9080)
    );
    assert_eq!(dest.port(), 9080);
    assert_eq!(dest.to_string(), "reviews.default.svc_x-1:9080");
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn domain_of_255_bytes_is_accepted() {
    let name = vec![b'a'; 255];
    let (result, _) = run_request(&domain_request(&name, 1)).await;
    assert_eq!(
        result.unwrap(),
        Destination::Domain(String::from_utf8(name).unwrap(), 1)
    );
}

#[tokio::test]
async fn ip_literal_domain_becomes_address() {
    let (result, _) = run_request(&domain_request(b"192.0.2.7", 80)).await;
    assert_eq!(
        result.unwrap(),
        Destination::Addr("192.0.2.7:80".parse().unwrap())
    );
    let (result, _) = run_request(&domain_request(b"::1", 80)).await;
    assert_eq!(
        result.unwrap(),
        Destination::Addr("[::1]:80".parse().unwrap())
    );
}

#[tokio::test]
async fn several_methods_offered() {
    let mut input = vec![5, 3, 2, 1, 0];
    input.extend_from_slice(&request(1, 1, &[127, 0, 0, 1], 1));
    let (result, output) = run(&input, LONG).await;
    assert!(result.is_ok());
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn pipelined_bytes_after_the_request_stay_in_the_stream() {
    let (mut client, mut server) = duplex(4096);
    let mut input = GREETING.to_vec();
    input.extend_from_slice(&request(1, 1, &[1, 2, 3, 4], 5));
    input.extend_from_slice(b"GET / HTTP/1.1\r\n");
    client.write_all(&input).await.unwrap();
    let dest = handshake(&mut server, LONG).await.unwrap();
    assert_eq!(dest, Destination::Addr("1.2.3.4:5".parse().unwrap()));
    let mut rest = [0u8; 16];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
}

#[tokio::test]
async fn reply_bytes_v4() {
    let mut out = Vec::new();
    reply(
        &mut out,
        Reply::Succeeded,
        "192.168.1.2:15080".parse().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(out, [0x05, 0x00, 0x00, 0x01, 192, 168, 1, 2, 0x3a, 0xe8]);
}

#[tokio::test]
async fn reply_bytes_v6() {
    let mut out = Vec::new();
    reply(&mut out, Reply::Succeeded, "[fd00::2]:443".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            0x05, 0x00, 0x00, 0x04, 0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x01,
            0xbb
        ]
    );
}

#[tokio::test]
async fn reply_codes() {
    let all = [
        (Reply::Succeeded, 0),
        (Reply::GeneralFailure, 1),
        (Reply::NotAllowed, 2),
        (Reply::NetworkUnreachable, 3),
        (Reply::HostUnreachable, 4),
        (Reply::ConnectionRefused, 5),
        (Reply::TtlExpired, 6),
        (Reply::CommandNotSupported, 7),
        (Reply::AddressTypeNotSupported, 8),
    ];
    for (r, code) in all {
        assert_eq!(r.code(), code);
        let mut out = Vec::new();
        reply(&mut out, r, "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(out, failure(code));
    }
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    assert_eq!(Reply::from_io_error(&refused), Reply::ConnectionRefused);
    let other = io::Error::other("boom");
    assert_eq!(Reply::from_io_error(&other), Reply::GeneralFailure);
}

#[tokio::test]
async fn wrong_version_in_greeting() {
    let (result, output) = run(&[4, 1, 0], LONG).await;
    assert!(matches!(result, Err(Socks5Error::BadVersion(4))));
    assert!(output.is_empty());
    assert_eq!(result.unwrap_err().reply(), None);
}

#[tokio::test]
async fn wrong_version_in_request() {
    let mut req = request(1, 1, &[1, 2, 3, 4], 5);
    req[0] = 4;
    let (result, output) = run_request(&req).await;
    assert!(matches!(result, Err(Socks5Error::BadVersion(4))));
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn no_acceptable_method() {
    let (result, output) = run(&[5, 1, 2], LONG).await;
    assert!(matches!(result, Err(Socks5Error::NoAcceptableMethod)));
    assert_eq!(output, [5, 0xff]);
    assert_eq!(result.unwrap_err().reply(), None);
}

#[tokio::test]
async fn zero_methods_is_no_acceptable_method() {
    let (result, output) = run(&[5, 0], LONG).await;
    assert!(matches!(result, Err(Socks5Error::NoAcceptableMethod)));
    assert_eq!(output, [5, 0xff]);
}

#[tokio::test]
async fn bind_and_udp_associate_not_supported() {
    for cmd in [2u8, 3, 0, 0xff] {
        let (result, output) = run_request(&request(cmd, 1, &[1, 2, 3, 4], 5)).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Socks5Error::UnsupportedCommand(c) if c == cmd));
        assert_eq!(err.reply(), Some(Reply::CommandNotSupported));
        let mut expected = vec![5, 0];
        expected.extend(failure(7));
        assert_eq!(output, expected);
    }
}

#[tokio::test]
async fn nonzero_reserved_byte() {
    let mut req = request(1, 1, &[1, 2, 3, 4], 5);
    req[2] = 1;
    let (result, output) = run_request(&req).await;
    assert!(matches!(result, Err(Socks5Error::BadReserved(1))));
    let mut expected = vec![5, 0];
    expected.extend(failure(1));
    assert_eq!(output, expected);
}

#[tokio::test]
async fn unknown_address_type() {
    for atyp in [0u8, 2, 5, 0xff] {
        let (result, output) = run_request(&request(1, atyp, &[1, 2, 3, 4], 5)).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Socks5Error::UnsupportedAddressType(a) if a == atyp));
        assert_eq!(err.reply(), Some(Reply::AddressTypeNotSupported));
        let mut expected = vec![5, 0];
        expected.extend(failure(8));
        assert_eq!(output, expected);
    }
}

#[tokio::test]
async fn bad_domains_rejected() {
    let bad: [&[u8]; 6] = [
        b"",
        b"h\xc3\xa9llo.example",
        b"\xff\xfe",
        b"a b",
        b"evil\0.example",
        b"host:80",
    ];
    for name in bad {
        let (result, output) = run_request(&domain_request(name, 80)).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Socks5Error::BadDomain), "{name:?}: {err:?}");
        assert_eq!(err.reply(), Some(Reply::GeneralFailure));
        let mut expected = vec![5, 0];
        expected.extend(failure(1));
        assert_eq!(output, expected, "{name:?}");
    }
}

#[tokio::test]
async fn overlong_domain_claim_is_an_error() {
    // The length byte promises 255 bytes; fewer arrive before the end of the stream.
    let mut req = vec![5, 1, 0, 3, 255];
    req.extend_from_slice(&[b'a'; 200]);
    let (result, output) = run_request(&req).await;
    match result {
        Err(Socks5Error::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected an early end of stream, got {other:?}"),
    }
    assert_eq!(output, [5, 0]);
}

#[tokio::test]
async fn stalled_client_times_out() {
    let (mut client, mut server) = duplex(64);
    client.write_all(&[5, 1]).await.unwrap();
    let result = handshake(&mut server, Duration::from_millis(200)).await;
    assert!(matches!(result, Err(Socks5Error::Timeout)), "{result:?}");
    assert_eq!(result.unwrap_err().reply(), None);
    drop(client);
}

#[tokio::test]
async fn stalled_client_after_greeting_times_out() {
    let (mut client, mut server) = duplex(64);
    let mut partial = GREETING.to_vec();
    partial.extend_from_slice(&[5, 1, 0, 3, 10, b'a']);
    client.write_all(&partial).await.unwrap();
    let result = handshake(&mut server, Duration::from_millis(200)).await;
    assert!(matches!(result, Err(Socks5Error::Timeout)), "{result:?}");
    drop(client);
}

#[tokio::test]
async fn every_truncation_is_an_error() {
    let requests = [
        request(1, 1, &[10, 0, 0, 1], 80),
        request(1, 4, &Ipv6Addr::LOCALHOST.octets(), 80),
        domain_request(b"example.com", 80),
    ];
    for req in requests {
        let mut full = GREETING.to_vec();
        full.extend_from_slice(&req);
        for len in 0..full.len() {
            let (result, _) = run(&full[..len], LONG).await;
            match result {
                Err(Socks5Error::Io(e)) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "prefix {len}")
                }
                other => panic!("prefix {len} of {full:?}: {other:?}"),
            }
        }
        let (result, _) = run(&full, LONG).await;
        assert!(result.is_ok());
    }
}

/// xorshift64: a deterministic pseudo-random source.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

#[tokio::test]
async fn garbage_never_panics_or_hangs() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut oks = 0;
    for i in 0..2_000 {
        let len = usize::try_from(rng.next() % 300).unwrap();
        let mut input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Steer most inputs past the first checks so the request parser sees garbage too.
        if i % 4 != 0 && input.len() >= 3 {
            input[0] = 5;
            input[1] = 1;
            input[2] = 0;
            if i % 2 == 0 && input.len() >= 7 {
                input[3] = 5;
                input[4] = 1;
                input[5] = 0;
                input[6] = [1, 3, 4, rng.byte()][usize::from(rng.byte() % 4)];
            }
        }
        let (result, output) = run(&input, LONG).await;
        match &result {
            Ok(_) => oks += 1,
            Err(Socks5Error::Timeout) => panic!("input {i} {input:?} hung the handshake"),
            Err(err) => {
                // Whatever reply the error names is the last thing the server wrote.
                if let Some(r) = err.reply() {
                    assert!(output.ends_with(&failure(r.code())), "{input:?}");
                }
            }
        }
        assert!(output.len() <= 2 + 10, "{input:?}: {output:?}");
    }
    assert!(oks > 0, "the steering should produce some valid requests");
}

/// A loopback server running one handshake, answering success with a fixed bound address.
async fn tcp_server() -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<Destination, Socks5Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let dest = handshake(&mut stream, LONG).await?;
        let bound = "127.0.0.1:40000".parse().unwrap();
        reply(&mut stream, Reply::Succeeded, bound).await?;
        stream.write_all(b"hello").await?;
        Ok(dest)
    });
    (addr, task)
}

/// Client half over TCP: greeting, `req`, then the server's answers.
async fn tcp_client(addr: SocketAddr, req: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&GREETING).await.unwrap();
    let mut method = [0u8; 2];
    stream.read_exact(&mut method).await.unwrap();
    assert_eq!(method, [5, 0]);
    stream.write_all(req).await.unwrap();
    stream
}

#[tokio::test]
async fn tcp_connect_each_address_type() {
    let ip6: Ipv6Addr = "fd00::7".parse().unwrap();
    let cases = [
        (
            request(1, 1, &[10, 9, 8, 7], 80),
            Destination::Addr("10.9.8.7:80".parse().unwrap()),
        ),
        (
            request(1, 4, &ip6.octets(), 8443),
            Destination::Addr("[fd00::7]:8443".parse().unwrap()),
        ),
        (
            domain_request(b"productpage.bookinfo", 9080),
            Destination::Domain("productpage.bookinfo".into(), 9080),
        ),
    ];
    for (req, expected) in cases {
        let (addr, server) = tcp_server().await;
        let mut client = tcp_client(addr, &req).await;
        let mut answer = [0u8; 10];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0, 0, 1, 127, 0, 0, 1, 0x9c, 0x40]);
        let mut payload = [0u8; 5];
        client.read_exact(&mut payload).await.unwrap();
        assert_eq!(&payload, b"hello");
        assert_eq!(server.await.unwrap().unwrap(), expected);
    }
}

#[tokio::test]
async fn tcp_bind_is_refused() {
    let (addr, server) = tcp_server().await;
    let mut client = tcp_client(addr, &request(2, 1, &[1, 1, 1, 1], 1)).await;
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, failure(7));
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, Socks5Error::UnsupportedCommand(2)));
}

#[tokio::test]
async fn tcp_client_gone_mid_greeting() {
    let (addr, server) = tcp_server().await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&[5, 2, 0]).await.unwrap();
    drop(client);
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, Socks5Error::Io(_)), "{err:?}");
}

#[tokio::test]
async fn command_is_judged_after_the_whole_address() {
    // BIND with a bad domain: the command is what the client hears about.
    let mut req = domain_request(b"a b", 1);
    req[1] = 2;
    let (result, output) = run_request(&req).await;
    assert!(matches!(result, Err(Socks5Error::UnsupportedCommand(2))));
    let mut expected = vec![5, 0];
    expected.extend(failure(7));
    assert_eq!(output, expected);
}

#[tokio::test]
async fn tcp_bad_domain_reply_arrives_before_close() {
    for name in [&b""[..], b"bad name", b"\xc3\xa9"] {
        let (addr, server) = tcp_server().await;
        let mut client = tcp_client(addr, &domain_request(name, 443)).await;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, failure(1));
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, Socks5Error::BadDomain), "{err:?}");
    }
}
