//! The README's first command, end to end: a local CA persisted on disk, two workloads, one HBONE
//! tunnel between them, and what each side verified.

#![allow(clippy::unwrap_used, missing_docs)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tunnels_between_two_verified_identities() {
    let state = tempfile::tempdir().unwrap();
    let report = ztunnel::demo::run(state.path(), Some(8 << 20))
        .await
        .unwrap();

    assert_eq!(
        report.client.to_string(),
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        report.server.to_string(),
        "spiffe://cluster.local/ns/default/sa/httpbin"
    );
    assert_eq!(
        report.client_saw, report.server,
        "client verified the server's SPIFFE identity"
    );
    assert_eq!(
        report.server_saw, report.client,
        "server verified the client's SPIFFE identity"
    );
    assert_eq!(report.app_received, b"hello from sleep to httpbin");
    assert_eq!(report.reply, b"httpbin got 27 bytes");
    assert_eq!(
        report.forwarded_for,
        Some("127.0.0.1:45000".parse().unwrap())
    );
    assert!(report.authority.starts_with("127.0.0.1:"));
    let (tunnel, direct) = report.throughput.unwrap();
    assert!(tunnel > 0.0 && direct > 0.0);

    // The root persists: a second run trusts the same CA.
    let root = std::fs::read(&report.ca_root).unwrap();
    let again = ztunnel::demo::run(state.path(), None).await.unwrap();
    assert_eq!(std::fs::read(&again.ca_root).unwrap(), root);
    assert_eq!(again.server_saw, again.client);
}
