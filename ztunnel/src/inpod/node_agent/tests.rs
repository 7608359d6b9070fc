//! The pods file and [`diff`]. The service itself runs against real network namespaces in
//! `ztunnel/tests/node_agent.rs` (root only).

use super::*;

fn pod(uid: &str, netns: &str) -> Pod {
    Pod {
        uid: uid.to_string(),
        info: WorkloadInfo {
            namespace: "default".into(),
            name: format!("name-{uid}"),
            service_account: "sa".into(),
        },
        netns: PathBuf::from(netns),
        capture: CaptureConfig::default(),
    }
}

fn no_dns(mut p: Pod) -> Pod {
    p.capture.dns_capture = false;
    p
}

fn excluding(mut p: Pod, port: u16) -> Pod {
    p.capture.exclusions.outbound_ports.push(port);
    p
}

fn renamed(mut p: Pod, name: &str) -> Pod {
    p.info.name = name.to_string();
    p
}

/// Name, old pods, new pods, expected changes.
type DiffCase = (&'static str, Vec<Pod>, Vec<Pod>, Vec<Change>);

#[test]
fn diff_table() {
    let a = pod("a", "/var/run/netns/a");
    let b = pod("b", "/var/run/netns/b");
    let c = pod("c", "/var/run/netns/c");
    let a_moved = pod("a", "/var/run/netns/a2");
    let replace = |old: &Pod, new: Pod| Change::Replace {
        old: old.clone(),
        new,
    };
    let cases: Vec<DiffCase> = vec![
        ("both empty", vec![], vec![], vec![]),
        (
            "unchanged",
            vec![a.clone(), b.clone()],
            vec![b.clone(), a.clone()],
            vec![],
        ),
        (
            "from nothing, sorted by uid",
            vec![],
            vec![c.clone(), a.clone()],
            vec![Change::Add(a.clone()), Change::Add(c.clone())],
        ),
        (
            "to nothing",
            vec![b.clone(), a.clone()],
            vec![],
            vec![Change::Remove(a.clone()), Change::Remove(b.clone())],
        ),
        (
            "netns moved",
            vec![a.clone()],
            vec![a_moved.clone()],
            vec![replace(&a, a_moved.clone())],
        ),
        (
            "dns capture toggled",
            vec![a.clone()],
            vec![no_dns(a.clone())],
            vec![replace(&a, no_dns(a.clone()))],
        ),
        (
            "exclusions changed",
            vec![a.clone()],
            vec![excluding(a.clone(), 9999)],
            vec![replace(&a, excluding(a.clone(), 9999))],
        ),
        (
            "workload info changed",
            vec![a.clone()],
            vec![renamed(a.clone(), "other")],
            vec![replace(&a, renamed(a.clone(), "other"))],
        ),
        (
            "removals, then replacements, then additions",
            vec![a.clone(), b.clone()],
            vec![c.clone(), a_moved.clone()],
            vec![
                Change::Remove(b.clone()),
                replace(&a, a_moved.clone()),
                Change::Add(c.clone()),
            ],
        ),
    ];
    for (name, old, new, want) in cases {
        assert_eq!(diff(&old, &new), want, "case {name}");
    }
    assert_eq!(Change::Add(a.clone()).uid(), "a");
    assert_eq!(replace(&a, a_moved).uid(), "a");
}

const FULL: &str = r#"
pods:
- uid: 3f1c-a
  name: sleep
  namespace: default
  serviceAccount: sleep
  netns: /var/run/netns/pod-a
  captureDns: false
  exclude: {outboundPorts: [9999], inboundPorts: [8081], outboundCidrs: ["10.9.0.0/16", "192.168.1.1"]}
- uid: 3f1c-b
  name: httpbin
  namespace: apps
  netns: /proc/1234/ns/net
"#;

#[test]
fn parses_every_field_and_the_defaults() {
    let pods = parse_pods(FULL).unwrap();
    assert_eq!(pods.len(), 2);
    let a = &pods[0];
    assert_eq!(a.uid, "3f1c-a");
    assert_eq!(
        a.info,
        WorkloadInfo {
            namespace: "default".into(),
            name: "sleep".into(),
            service_account: "sleep".into(),
        }
    );
    assert_eq!(a.netns, PathBuf::from("/var/run/netns/pod-a"));
    assert!(!a.capture.dns_capture);
    assert_eq!(a.capture.exclusions.outbound_ports, vec![9999]);
    assert_eq!(a.capture.exclusions.inbound_ports, vec![8081]);
    assert_eq!(
        a.capture.exclusions.outbound_cidrs,
        vec![
            "10.9.0.0/16".parse::<IpNet>().unwrap(),
            "192.168.1.1/32".parse::<IpNet>().unwrap()
        ]
    );
    let b = &pods[1];
    assert_eq!(b.info.service_account, DEFAULT_SERVICE_ACCOUNT);
    assert_eq!(b.capture, CaptureConfig::default());
    assert!(b.capture.dns_capture);
}

#[test]
fn empty_files_have_no_pods() {
    for text in ["", "\n# nothing yet\n", "---\n", "pods: []\n", "pods:\n"] {
        assert_eq!(parse_pods(text).unwrap(), vec![], "{text:?}");
    }
}

/// Each invalid file, and the pieces its error message must contain.
#[test]
fn errors_name_the_pod_and_the_field() {
    let pod_b = |extra: &str| {
        format!(
            "pods:\n- {{uid: a, name: a, namespace: d, netns: /n/a}}\n- {{uid: b, name: b, namespace: d, netns: /n/b{extra}}}\n"
        )
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (pod_b(", colour: red"), vec!["pods[1]", "uid \"b\"", "colour"]),
        (
            "pods:\n- {name: a, namespace: d, netns: /n/a}\n".into(),
            vec!["pods[0]", "missing field `uid`"],
        ),
        (
            pod_b(", captureDns: maybe"),
            vec!["pods[1]", "uid \"b\"", "captureDns"],
        ),
        (
            pod_b(", exclude: {outboundPorts: [70000]}"),
            vec!["pods[1]", "uid \"b\"", "outboundPorts"],
        ),
        (
            pod_b(", exclude: {outboundPorts: [0]}"),
            vec!["pods[1] (uid \"b\")", "exclude.outboundPorts", "port 0"],
        ),
        (
            pod_b(", exclude: {ports: [1]}"),
            vec!["pods[1]", "uid \"b\"", "ports"],
        ),
        (
            pod_b(", exclude: {outboundCidrs: [\"10.0.0.0/33\"]}"),
            vec!["pods[1] (uid \"b\")", "exclude.outboundCidrs", "10.0.0.0/33"],
        ),
        (
            "pods:\n- {uid: a, name: a, namespace: d, netns: relative/path}\n".into(),
            vec!["pods[0] (uid \"a\")", "netns", "absolute"],
        ),
        (
            "pods:\n- {uid: a, name: '', namespace: d, netns: /n/a}\n".into(),
            vec!["pods[0] (uid \"a\")", "name", "empty"],
        ),
        (
            format!(
                "pods:\n- {{uid: a, name: a, namespace: d, serviceAccount: {}, netns: /n/a}}\n",
                "x".repeat(MAX_FIELD_LEN + 1)
            ),
            vec!["pods[0] (uid \"a\")", "serviceAccount", "at most 512"],
        ),
        (
            "pods:\n- {uid: a, name: a, namespace: d, netns: /n/a}\n- {uid: a, name: b, namespace: d, netns: /n/b}\n".into(),
            vec!["pods[1] (uid \"a\")", "duplicate uid", "pods[0]"],
        ),
        ("workloads: []\n".into(), vec!["unknown field `workloads`"]),
        ("pods: [\n".into(), vec!["line"]),
    ];
    for (text, want) in cases {
        let error = parse_pods(&text).expect_err(&text).to_string();
        assert_eq!(
            error.matches("pods[").count(),
            usize::from(error.contains("pods[")) + usize::from(error.contains("already used")),
            "the pod is named once: {error:?}"
        );
        for piece in want {
            assert!(
                error.contains(piece),
                "error for {text:?} is {error:?}, missing {piece:?}"
            );
        }
    }
}

#[test]
fn load_reads_bounded_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.yaml");
    match load_pods(&path) {
        Err(PodsFileError::Read { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected a read error, got {other:?}"),
    }
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(load_pods(&path).unwrap().len(), 2);
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(MAX_PODS_FILE_SIZE + 1).unwrap();
    assert!(matches!(
        load_pods(&path),
        Err(PodsFileError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn the_watcher_waits_for_a_stable_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pods.yaml");
    std::fs::write(&path, FULL).unwrap();
    let mut watcher = FileWatcher::new(path.clone());
    assert_eq!(watcher.load_initial().await.unwrap().len(), 2);
    assert!(watcher.poll().await.is_none(), "unchanged");
    std::fs::write(&path, "pods: []\n").unwrap();
    assert!(
        watcher.poll().await.is_none(),
        "first sight of a new version"
    );
    assert_eq!(watcher.poll().await.unwrap().unwrap(), vec![]);
    assert!(watcher.poll().await.is_none(), "acted on once");
    std::fs::write(&path, "pods: [").unwrap();
    assert!(watcher.poll().await.is_none());
    assert!(watcher.poll().await.unwrap().is_err(), "invalid version");
    assert!(watcher.poll().await.is_none(), "reported once");
    std::fs::remove_file(&path).unwrap();
    assert!(watcher.poll().await.is_none());
    assert!(matches!(
        watcher.poll().await,
        Some(Err(PodsFileError::Read { .. }))
    ));
}

#[test]
fn the_service_runs_on_any_worker() {
    fn assert_send<T: Send>(_: &T) {}
    let run = NodeAgentService::new("/nonexistent/ztunnel.sock", "/nonexistent/pods.yaml")
        .with_options(NodeAgentOptions::default())
        .run(CancellationToken::new());
    assert_send(&run);
}
