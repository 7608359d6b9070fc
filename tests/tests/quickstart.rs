//! The README's first command: the local mesh from examples/localhost.yaml, with its demo
//! client's requests answered through HBONE, plain TCP and a policy refusal.

#![allow(clippy::unwrap_used, missing_docs)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_mesh_answers_the_demo_client() {
    let state = tempfile::tempdir().unwrap();
    let opts = ztunnel::quickstart::Options {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/localhost.yaml").into()),
        state_dir: state.path().to_path_buf(),
        socks5_port: 15080,
        log_level: std::sync::Arc::new(ztunnel::quickstart::FixedLogLevel("info".into())),
    };
    let q = ztunnel::quickstart::start(&opts).await.unwrap();
    assert_eq!(
        q.nodes.keys().cloned().collect::<Vec<_>>(),
        ["node-a", "node-b"]
    );
    assert_eq!(
        q.client_identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(q.client_socks5, "127.0.0.1:15080".parse().unwrap());

    let trial = |target: &str| {
        q.trials
            .iter()
            .find(|t| t.target == target)
            .unwrap()
            .clone()
    };
    let httpbin = trial("httpbin.default.svc.cluster.local:80");
    assert_eq!(httpbin.socks_reply, 0);
    assert!(
        httpbin
            .answer
            .as_deref()
            .unwrap()
            .starts_with("hello from httpbin at 127.0.0.2:8000;"),
        "{httpbin:?}"
    );
    let legacy = trial("legacy.default.svc.cluster.local:9000");
    assert!(
        legacy
            .answer
            .as_deref()
            .unwrap()
            .starts_with("hello from legacy at 127.0.0.3:9000;")
    );
    // examples/localhost.yaml denies port 9999 for the whole namespace.
    let denied = trial("127.0.0.2:9999");
    assert_eq!((denied.socks_reply, denied.answer), (2, None));

    // Node B's metrics count the tunnels it accepted and the one its policy refused.
    let node_b = q.endpoints["node-b"];
    let metrics = http_get(node_b.metrics, "/stats/prometheus").await;
    let opened = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("destination_workload=\"httpbin\"")
                && l.contains("source_workload=\"sleep\"")
        })
        .unwrap_or_else(|| panic!("no opened line for sleep→httpbin in:\n{metrics}"));
    assert!(
        opened.contains("connection_security_policy=\"mutual_tls\""),
        "{opened}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_failed_total{")
                && l.contains("response_flags=\"DENY\"")),
        "{metrics}"
    );
    assert!(
        http_get(node_b.readiness, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let dump = http_get(node_b.admin, "/config_dump").await;
    assert!(
        dump.contains("spiffe://cluster.local/ns/default/sa/httpbin"),
        "{dump}"
    );
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
