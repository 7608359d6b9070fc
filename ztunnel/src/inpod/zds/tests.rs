//! The ZDS client against the in-process node agent ([`crate::inpod::agent`]) on a socket in
//! a temporary directory.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds as pb;
use recorder::Recorder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::inpod::agent::{Ack, AgentConnection, NodeAgent};

/// How long a test waits for something the client should do.
const WAIT: Duration = Duration::from_secs(10);

/// A handler that reports every call on a channel and can be told to refuse some.
mod recorder {
    use super::*;

    /// One handler call.
    #[derive(Debug)]
    pub(super) enum Call {
        Add {
            uid: String,
            info: Option<WorkloadInfo>,
            netns: OwnedFd,
        },
        Keep(String),
        Del(String),
        Snapshot(HashSet<String>),
    }

    pub(super) struct Recorder {
        pub calls: mpsc::UnboundedSender<Call>,
        /// Uids (or `"snapshot"`) whose call fails with `"refused <uid>"`.
        pub refuse: HashSet<String>,
    }

    impl Recorder {
        fn result(&self, key: &str) -> Result<(), String> {
            if self.refuse.contains(key) {
                Err(format!("refused {key}"))
            } else {
                Ok(())
            }
        }
    }

    impl WorkloadHandler for Recorder {
        async fn add(
            &self,
            uid: String,
            info: Option<WorkloadInfo>,
            netns: OwnedFd,
        ) -> Result<(), String> {
            let result = self.result(&uid);
            let _ = self.calls.send(Call::Add { uid, info, netns });
            result
        }

        async fn keep(&self, uid: String) -> Result<(), String> {
            let result = self.result(&uid);
            let _ = self.calls.send(Call::Keep(uid));
            result
        }

        async fn del(&self, uid: String) -> Result<(), String> {
            let result = self.result(&uid);
            let _ = self.calls.send(Call::Del(uid));
            result
        }

        async fn snapshot_done(&self, present: HashSet<String>) -> Result<(), String> {
            let result = self.result("snapshot");
            let _ = self.calls.send(Call::Snapshot(present));
            result
        }
    }
}

use recorder::Call;

struct Harness {
    agent: NodeAgent,
    calls: mpsc::UnboundedReceiver<Call>,
    readiness: Readiness,
    stats: Arc<ZdsStats>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// An agent listening in a temp dir, and a client connecting to it.
    fn start(refuse: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ztunnel.sock");
        let agent = NodeAgent::bind(&path).unwrap();
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let handler = Recorder {
            calls: calls_tx,
            refuse: refuse.iter().map(|s| s.to_string()).collect(),
        };
        let client = ZdsClient::new(ZdsConfig { socket_path: path }, handler);
        let readiness = client.readiness();
        let stats = client.stats();
        let shutdown = CancellationToken::new();
        tokio::spawn(client.run(shutdown.clone()));
        Self {
            agent,
            calls,
            readiness,
            stats,
            shutdown,
            _dir: dir,
        }
    }

    /// Accepts the client's connection and checks its hello.
    async fn connection(&self) -> AgentConnection {
        let conn = tokio::time::timeout(WAIT, self.agent.accept())
            .await
            .expect("the client connects")
            .unwrap();
        let hello = conn.read_hello().await.unwrap();
        assert_eq!(hello.version(), pb::Version::V1);
        conn
    }

    async fn next_call(&mut self) -> Call {
        tokio::time::timeout(WAIT, self.calls.recv())
            .await
            .expect("a handler call")
            .expect("the client is running")
    }

    fn assert_no_call(&mut self) {
        if let Ok(call) = self.calls.try_recv() {
            panic!("unexpected handler call {call:?}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn netns() -> File {
    File::open("/proc/self/ns/net").unwrap()
}

fn info() -> WorkloadInfo {
    WorkloadInfo {
        namespace: "default".into(),
        name: "productpage-v1-1".into(),
        service_account: "bookinfo-productpage".into(),
    }
}

fn same_file(a: &impl AsFd, b: &impl AsFd) -> bool {
    let stat = |fd: &dyn AsFd| {
        let file = File::from(fd.as_fd().try_clone_to_owned().unwrap());
        let meta = file.metadata().unwrap();
        (meta.dev(), meta.ino())
    };
    stat(a) == stat(b)
}

/// A pipe whose write end is sent to the client: once every copy of it is closed, reading the
/// read end gives EOF. Returns whether that happens within `WAIT`.
async fn all_copies_closed(reader: std::io::PipeReader) -> bool {
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut buf = [0u8; 1];
        reader.read(&mut buf).unwrap() == 0
    });
    matches!(tokio::time::timeout(WAIT, read).await, Ok(Ok(true)))
}

#[tokio::test]
async fn a_session_with_the_node_agent() {
    let mut h = Harness::start(&["refused-pod"]);
    let conn = h.connection().await;
    assert!(!h.readiness.is_ready());

    // AddWorkload with the pod's namespace: the handler gets the same namespace.
    let ns = netns();
    let info = info();
    assert_eq!(
        conn.add("pod-1", Some(&info), ns.as_fd()).await.unwrap(),
        Ack::Accepted
    );
    match h.next_call().await {
        Call::Add {
            uid,
            info: got,
            netns,
        } => {
            assert_eq!(uid, "pod-1");
            assert_eq!(got, Some(info.clone()));
            assert!(
                same_file(&netns, &ns),
                "the handler gets the sent namespace"
            );
        }
        other => panic!("expected an add, got {other:?}"),
    }

    // Without workload info (older agents).
    assert_eq!(
        conn.add("pod-2", None, ns.as_fd()).await.unwrap(),
        Ack::Accepted
    );
    assert!(matches!(h.next_call().await, Call::Add { info: None, .. }));

    // No fd, and two fds: rejected, the handler never hears of it, the fds are closed.
    let add = |uid: &str| {
        pb::workload_request::Payload::Add(pb::AddWorkload {
            uid: uid.into(),
            workload_info: None,
        })
    };
    let ack = conn.request(add("pod-no-fd"), &[]).await.unwrap();
    assert_eq!(
        ack.rejection(),
        Some(
            "AddWorkload must carry exactly one file descriptor (the pod's network namespace), got 0"
        )
    );
    let (reader_a, writer_a) = std::io::pipe().unwrap();
    let (reader_b, writer_b) = std::io::pipe().unwrap();
    let ack = conn
        .request(add("pod-two-fds"), &[writer_a.as_fd(), writer_b.as_fd()])
        .await
        .unwrap();
    assert_eq!(
        ack.rejection(),
        Some(
            "AddWorkload must carry exactly one file descriptor (the pod's network namespace), got 2"
        )
    );
    drop((writer_a, writer_b));
    assert!(all_copies_closed(reader_a).await, "first fd closed");
    assert!(all_copies_closed(reader_b).await, "second fd closed");

    // Far more fds than the receive buffer holds (its room is rounded up for alignment, so a
    // few extra may still fit).
    let many: Vec<File> = (0..packet::MAX_RECEIVED_FDS * 4).map(|_| netns()).collect();
    let many: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
    let ack = conn.request(add("pod-many-fds"), &many).await.unwrap();
    assert!(
        ack.rejection()
            .unwrap()
            .contains("exactly one file descriptor (the pod's network namespace), got more than "),
        "{ack:?}"
    );
    h.assert_no_call();

    // The handler's refusal is the Ack's error; the pod still counts as replayed.
    assert_eq!(
        conn.add("refused-pod", None, ns.as_fd()).await.unwrap(),
        Ack::Rejected("refused refused-pod".into())
    );
    assert!(matches!(h.next_call().await, Call::Add { uid, .. } if uid == "refused-pod"));

    // Keep, then a deleted pod leaves the snapshot.
    assert_eq!(conn.keep("pod-kept").await.unwrap(), Ack::Accepted);
    assert!(matches!(h.next_call().await, Call::Keep(uid) if uid == "pod-kept"));
    assert_eq!(conn.del("pod-2").await.unwrap(), Ack::Accepted);
    assert!(matches!(h.next_call().await, Call::Del(uid) if uid == "pod-2"));

    // Snapshot: the handler learns what was replayed; ready.
    assert_eq!(conn.snapshot_sent().await.unwrap(), Ack::Accepted);
    match h.next_call().await {
        Call::Snapshot(present) => {
            let expected: HashSet<String> = ["pod-1", "refused-pod", "pod-kept"]
                .map(String::from)
                .into();
            assert_eq!(present, expected);
        }
        other => panic!("expected the snapshot, got {other:?}"),
    }
    tokio::time::timeout(WAIT, h.readiness.wait())
        .await
        .unwrap();
    assert!(h.readiness.is_ready());

    // After the snapshot: Keep and a second snapshot are protocol errors.
    assert_eq!(
        conn.keep("late").await.unwrap().rejection(),
        Some("KeepWorkload is only valid before SnapshotSent")
    );
    assert_eq!(
        conn.snapshot_sent().await.unwrap().rejection(),
        Some("SnapshotSent was already received on this connection")
    );
    h.assert_no_call();

    // Garbage, no known payload, an oversized message: rejected, the connection lives on.
    let ack = conn.send_raw(&[0xff, 0xff, 0xff], &[]).await.unwrap();
    assert!(
        ack.rejection()
            .unwrap()
            .starts_with("malformed WorkloadRequest:"),
        "{ack:?}"
    );
    // (An empty message reads as end-of-stream on a sequenced-packet socket, so the request
    // without a payload carries one field this version does not know: number 15, varint 1.)
    let ack = conn.send_raw(&[0x78, 0x01], &[]).await.unwrap();
    assert_eq!(
        ack.rejection(),
        Some("WorkloadRequest without a known payload")
    );
    let huge = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Del(pb::DelWorkload {
            uid: "x".repeat(MAX_MESSAGE_SIZE),
        })),
    };
    let ack = conn.send_raw(&huge.encode_to_vec(), &[]).await.unwrap();
    assert_eq!(ack.rejection(), Some("message larger than 4096 bytes"));

    // An fd on a message that takes none: rejected and closed.
    let (reader, writer) = std::io::pipe().unwrap();
    let del = pb::workload_request::Payload::Del(pb::DelWorkload {
        uid: "pod-1".into(),
    });
    let ack = conn.request(del, &[writer.as_fd()]).await.unwrap();
    assert_eq!(
        ack.rejection(),
        Some("DelWorkload must not carry file descriptors, got 1")
    );
    drop(writer);
    assert!(all_copies_closed(reader).await);
    assert_eq!(
        conn.del("").await.unwrap().rejection(),
        Some("DelWorkload without a uid")
    );
    h.assert_no_call();

    // Adds after the snapshot still work.
    assert_eq!(
        conn.add("pod-3", None, ns.as_fd()).await.unwrap(),
        Ack::Accepted
    );
    assert!(matches!(h.next_call().await, Call::Add { uid, .. } if uid == "pod-3"));

    // The agent goes away: the client reconnects with a new hello and a fresh session.
    drop(conn);
    let conn = h.connection().await;
    assert_eq!(conn.keep("pod-1").await.unwrap(), Ack::Accepted);
    assert!(matches!(h.next_call().await, Call::Keep(uid) if uid == "pod-1"));
    assert_eq!(conn.snapshot_sent().await.unwrap(), Ack::Accepted);
    match h.next_call().await {
        Call::Snapshot(present) => assert_eq!(present, HashSet::from(["pod-1".to_string()])),
        other => panic!("expected the snapshot, got {other:?}"),
    }
    assert!(h.readiness.is_ready());

    let stats = &h.stats;
    assert_eq!(stats.connects.load(Ordering::Relaxed), 2);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 11);
}

#[tokio::test]
async fn a_failed_snapshot_is_rejected_and_not_ready() {
    let mut h = Harness::start(&["snapshot"]);
    let conn = h.connection().await;
    assert_eq!(
        conn.snapshot_sent().await.unwrap(),
        Ack::Rejected("refused snapshot".into())
    );
    assert!(matches!(h.next_call().await, Call::Snapshot(p) if p.is_empty()));
    assert!(!h.readiness.is_ready());
}

#[tokio::test]
async fn the_client_waits_for_the_agent_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.sock");
    let (calls, _rx) = mpsc::unbounded_channel();
    let client = ZdsClient::new(
        ZdsConfig {
            socket_path: path.clone(),
        },
        Recorder {
            calls,
            refuse: HashSet::new(),
        },
    );
    let stats = client.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client.run(shutdown.clone()));

    // A few attempts fail (10, 20, 40 ms apart) before the socket exists.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let failed = stats.disconnects.load(Ordering::Relaxed);
    assert!((2..=6).contains(&failed), "{failed} failed attempts");
    assert_eq!(stats.connects.load(Ordering::Relaxed), 0);

    let agent = NodeAgent::bind(&path).unwrap();
    let conn = tokio::time::timeout(WAIT, agent.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.read_hello().await.unwrap().version(), pb::Version::V1);
    assert_eq!(conn.snapshot_sent().await.unwrap(), Ack::Accepted);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    // The client's socket closed with it.
    conn.closed().await.unwrap();
}

#[test]
fn backoff_doubles_from_10ms_to_15s() {
    let mut delays = vec![INITIAL_BACKOFF];
    while *delays.last().unwrap() < MAX_BACKOFF {
        delays.push(next_backoff(*delays.last().unwrap()));
    }
    assert_eq!(delays[1], Duration::from_millis(20));
    assert_eq!(*delays.last().unwrap(), MAX_BACKOFF);
    assert_eq!(next_backoff(MAX_BACKOFF), MAX_BACKOFF);
}

#[test]
fn socket_path_from_inpod_uds() {
    use std::collections::HashMap;
    let empty: HashMap<&str, &str> = HashMap::new();
    assert_eq!(
        ZdsConfig::from_env(&empty).socket_path,
        PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
    let set = HashMap::from([("INPOD_UDS", "/tmp/zds.sock")]);
    assert_eq!(
        ZdsConfig::from_env(&set).socket_path,
        PathBuf::from("/tmp/zds.sock")
    );
    let blank = HashMap::from([("INPOD_UDS", "")]);
    assert_eq!(ZdsConfig::from_env(&blank), ZdsConfig::default());
}

#[test]
fn decode_checks_the_descriptors_per_message() {
    let fd = || -> OwnedFd { netns().into() };
    let encode = |payload| {
        pb::WorkloadRequest {
            payload: Some(payload),
        }
        .encode_to_vec()
    };
    let add = encode(pb::workload_request::Payload::Add(pb::AddWorkload {
        uid: "u".into(),
        workload_info: Some(pb::WorkloadInfo {
            name: "n".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
        }),
    }));
    let snapshot = encode(pb::workload_request::Payload::SnapshotSent(
        pb::SnapshotSent {},
    ));

    match decode_request(&add, vec![fd()], false, false).unwrap() {
        Request::Add { uid, info, .. } => {
            assert_eq!(uid, "u");
            let info = info.unwrap();
            assert_eq!(
                (
                    info.name.as_str(),
                    info.namespace.as_str(),
                    info.service_account.as_str()
                ),
                ("n", "ns", "sa")
            );
        }
        other => panic!("{other:?}"),
    }
    // (case, bytes, fds, message truncated, fds truncated, expected error)
    type Case<'a> = (&'a str, &'a [u8], Vec<OwnedFd>, bool, bool, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "add, one fd but more were cut",
            &add,
            vec![fd()],
            false,
            true,
            "got more than 1",
        ),
        (
            "add, two fds",
            &add,
            vec![fd(), fd()],
            false,
            false,
            "got 2",
        ),
        (
            "truncated message",
            &add,
            vec![fd()],
            true,
            false,
            "message larger than 4096 bytes",
        ),
        (
            "snapshot with an fd",
            &snapshot,
            vec![fd()],
            false,
            false,
            "SnapshotSent must not carry file descriptors, got 1",
        ),
    ];
    for (name, bytes, fds, truncated, fds_truncated, expected) in cases {
        let error = decode_request(bytes, fds, truncated, fds_truncated).unwrap_err();
        assert!(
            error.to_string().ends_with(expected),
            "case {name:?}: {error}"
        );
    }
    assert!(matches!(
        decode_request(&snapshot, vec![], false, false),
        Ok(Request::SnapshotSent)
    ));
}

#[test]
fn ack_errors_are_bounded() {
    let long = Err(RequestError::Handler("é".repeat(MAX_ACK_ERROR)));
    let response = pb::WorkloadResponse::decode(encode_ack(&long).as_slice()).unwrap();
    let Some(pb::workload_response::Payload::Ack(ack)) = response.payload else {
        panic!("no ack");
    };
    assert!(ack.error.len() <= MAX_ACK_ERROR);
    assert!(ack.error.starts_with('é'));

    let ok = pb::WorkloadResponse::decode(encode_ack(&Ok(())).as_slice()).unwrap();
    assert_eq!(
        ok.payload,
        Some(pb::workload_response::Payload::Ack(pb::Ack {
            error: String::new()
        }))
    );
}
