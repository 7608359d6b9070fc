use super::*;

fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
    pairs.iter().copied().collect()
}

#[test]
fn defaults_follow_upstream() {
    let c = Config::from_env(&env(&[])).unwrap();
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!(c.secret_ttl, Duration::from_secs(86_400));
    assert_eq!(c.outbound_policy, OutboundPolicy::AllowAny);
    assert_eq!(c.drain_deadline, Duration::from_secs(5));
    assert_eq!(c.local_state, LocalState::None);
    assert_eq!(c.listeners.outbound.port(), 15001);
    assert_eq!(c.listeners.inbound_plaintext.port(), 15006);
    assert_eq!(c.listeners.inbound_hbone.port(), 15008);
    assert_eq!(c.listeners.admin, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(c.listeners.metrics.port(), 15020);
    assert_eq!(c.listeners.readiness.port(), 15021);
    assert_eq!(c.listeners.socks5, None);
    assert_eq!(c.hbone, hbone::Config::default());
}

#[test]
fn settings_are_read() {
    let c = Config::from_env(&env(&[
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/sleep-1/sleep"),
        ("LOCAL_XDS_PATH", "examples/localhost.yaml"),
        ("TRUST_DOMAIN", "example.org"),
        ("ISTIO_META_CLUSTER_ID", "east"),
        ("SECRET_TTL", "1h30m"),
        ("OUTBOUND_TRAFFIC_POLICY", "REGISTRY_ONLY"),
        ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ("ZTUNNEL_BIND_ADDRESS", "127.0.0.7"),
        ("OUTBOUND_PORT", "0"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("HTTP2_STREAM_WINDOW_SIZE", "1048576"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "30s"),
    ]))
    .unwrap();
    assert_eq!(
        c.proxy_mode,
        ProxyMode::Dedicated(WorkloadInfo {
            namespace: "default".into(),
            name: "sleep-1".into(),
            service_account: "sleep".into()
        })
    );
    assert_eq!(
        c.local_state,
        LocalState::File("examples/localhost.yaml".into())
    );
    assert_eq!(c.trust_domain, "example.org");
    assert_eq!(c.cluster_id, "east");
    assert_eq!(c.secret_ttl, Duration::from_secs(5400));
    assert_eq!(c.outbound_policy, OutboundPolicy::RegistryOnly);
    assert_eq!(c.listeners.socks5, Some("127.0.0.1:15080".parse().unwrap()));
    assert_eq!(c.listeners.outbound, "127.0.0.7:0".parse().unwrap());
    assert_eq!(
        c.listeners.inbound_hbone,
        "127.0.0.7:15008".parse().unwrap()
    );
    assert_eq!(c.drain_deadline, Duration::from_secs(25));
    assert_eq!(c.hbone.window_size, 1 << 20);
    assert_eq!(c.hbone.pool_unused_release_timeout, Duration::from_secs(30));
}

#[test]
fn drain_deadline_rule() {
    for (vars, want) in [
        (vec![("TERMINATION_GRACE_PERIOD_SECONDS", "30")], 25),
        (vec![("TERMINATION_GRACE_PERIOD_SECONDS", "11")], 6),
        (vec![("TERMINATION_GRACE_PERIOD_SECONDS", "10")], 9),
        (vec![("TERMINATION_GRACE_PERIOD_SECONDS", "1")], 1),
        (vec![("TERMINATION_GRACE_PERIOD_SECONDS", "0")], 1),
        (
            vec![
                ("CONNECTION_TERMINATION_DEADLINE", "7s"),
                ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
            ],
            7,
        ),
    ] {
        let c = Config::from_env(&env(&vars)).unwrap();
        assert_eq!(c.drain_deadline, Duration::from_secs(want), "{vars:?}");
    }
}

#[test]
fn bad_settings_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PROXY_MODE", "sidecar")], "PROXY_MODE"),
        (
            &[
                ("PROXY_MODE", "dedicated"),
                ("PROXY_WORKLOAD_INFO", "default/sleep"),
            ],
            "PROXY_WORKLOAD_INFO",
        ),
        (&[("SECRET_TTL", "10 parsecs")], "SECRET_TTL"),
        (
            &[("OUTBOUND_TRAFFIC_POLICY", "allow")],
            "OUTBOUND_TRAFFIC_POLICY",
        ),
        (
            &[("UNSTABLE_ENABLE_SOCKS5", "yes")],
            "UNSTABLE_ENABLE_SOCKS5",
        ),
        (&[("OUTBOUND_PORT", "70000")], "OUTBOUND_PORT"),
        (&[("HTTP2_FRAME_SIZE", "-1")], "HTTP2_FRAME_SIZE"),
        (&[("INPOD_ENABLED", "maybe")], "INPOD_ENABLED"),
        (
            &[("INPOD_ENABLED", "true"), ("PACKET_MARK", "0x539")],
            "PACKET_MARK",
        ),
        (
            &[("INPOD_ENABLED", "true"), ("DNS_CAPTURE", "on")],
            "DNS_CAPTURE",
        ),
    ];
    for (vars, name) in cases {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        match Config::from_env(&map) {
            Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, *name),
            other => panic!("{vars:?}: expected Invalid({name}), got {other:?}"),
        }
    }
}

#[test]
fn conflicting_settings_are_refused() {
    let both = env(&[("LOCAL_XDS_PATH", "a.yaml"), ("LOCAL_XDS", "workloads: []")]);
    assert!(matches!(
        Config::from_env(&both),
        Err(ConfigError::Conflict(_))
    ));
    let dedicated = env(&[("PROXY_MODE", "dedicated")]);
    assert!(matches!(
        Config::from_env(&dedicated),
        Err(ConfigError::Conflict(_))
    ));
    let windows = env(&[("HTTP2_STREAM_WINDOW_SIZE", "33554432")]);
    assert!(matches!(
        Config::from_env(&windows),
        Err(ConfigError::Hbone(_))
    ));
}

#[test]
fn durations() {
    for (s, want) in [
        ("10", Duration::from_secs(10)),
        ("500ms", Duration::from_millis(500)),
        ("5m", Duration::from_secs(300)),
        ("24h", Duration::from_secs(86_400)),
        ("1h30m15s", Duration::from_secs(5415)),
    ] {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
    for bad in ["", "s", "5d", "1.5h", "-1s", "5 m"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn control_plane_and_ca_selection() {
    /// Variables, whether xDS is on, and the CA kind: "istio", "local" or "plugin".
    type Case = (&'static [(&'static str, &'static str)], bool, &'static str);
    let cases: &[Case] = &[
        (&[], false, "local"),
        (&[("XDS_ADDRESS", "istiod.example:15012")], true, "local"),
        (&[("CA_ADDRESS", "istiod.example:15012")], false, "istio"),
        // In Kubernetes both default to istiod…
        (&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")], true, "istio"),
        // …unless a local state or a local CA is given.
        (
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("LOCAL_XDS_PATH", "mesh.yaml"),
                ("LOCAL_CA_DIR", "/tmp/ca"),
            ],
            false,
            "local",
        ),
        (
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("CA_PLUGIN_DIR", "/etc/cacerts"),
            ],
            true,
            "plugin",
        ),
        // Set to the empty string: off.
        (
            &[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("XDS_ADDRESS", ""),
            ],
            false,
            "istio",
        ),
    ];
    for (vars, xds, ca) in cases {
        let config = Config::from_env(&env(vars)).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
        assert_eq!(config.xds.is_some(), *xds, "{vars:?}");
        let kind = match config.ca {
            CaSource::Istio(_) => "istio",
            CaSource::Local(_) => "local",
            CaSource::Plugin(_) => "plugin",
        };
        assert_eq!(kind, *ca, "{vars:?}");
    }
    for vars in [
        &[
            ("XDS_ADDRESS", "istiod:15012"),
            ("LOCAL_XDS_PATH", "mesh.yaml"),
        ][..],
        &[("CA_ADDRESS", "istiod:15012"), ("LOCAL_CA_DIR", "/tmp/ca")][..],
        &[
            ("CA_ADDRESS", "istiod:15012"),
            ("CA_PLUGIN_DIR", "/etc/cacerts"),
        ][..],
    ] {
        assert!(
            matches!(Config::from_env(&env(vars)), Err(ConfigError::Conflict(_))),
            "{vars:?}"
        );
    }
}

#[test]
fn inpod_mode() {
    // Off outside Kubernetes unless asked for; on in Kubernetes (istio-cni hands over pods).
    assert_eq!(Config::from_env(&env(&[])).unwrap().inpod, None);
    let in_k8s = Config::from_env(&env(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("LOCAL_XDS_PATH", "/etc/ztunnel/state.yaml"),
    ]))
    .unwrap();
    assert_eq!(
        in_k8s.inpod,
        Some(InpodConfig {
            zds: crate::inpod::zds::ZdsConfig {
                socket_path: "/var/run/ztunnel/ztunnel.sock".into()
            },
            mark: 0x539,
            dns_capture: true,
            resolv_conf: "/etc/resolv.conf".into(),
            cluster_domain: "cluster.local".into(),
        })
    );
    let off_in_k8s = Config::from_env(&env(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("LOCAL_XDS_PATH", "/etc/ztunnel/state.yaml"),
        ("INPOD_ENABLED", "false"),
    ]))
    .unwrap();
    assert_eq!(off_in_k8s.inpod, None);
    let custom = Config::from_env(&env(&[
        ("INPOD_ENABLED", "true"),
        ("INPOD_UDS", "/tmp/zds.sock"),
        ("PACKET_MARK", "4242"),
        ("DNS_CAPTURE", "false"),
        ("DNS_RESOLV_CONF", "/tmp/resolv.conf"),
        ("CLUSTER_DOMAIN", "corp.example"),
    ]))
    .unwrap()
    .inpod
    .unwrap();
    assert_eq!(
        custom.zds.socket_path,
        std::path::Path::new("/tmp/zds.sock")
    );
    assert_eq!(custom.mark, 4242);
    assert!(!custom.dns_capture);
    assert_eq!(custom.resolv_conf, std::path::Path::new("/tmp/resolv.conf"));
    assert_eq!(custom.cluster_domain, "corp.example");
}

/// A worker-thread case: the environment, the cores the machine has, the threads expected.
type WorkerCase = (&'static [(&'static str, &'static str)], usize, usize);

#[test]
fn worker_threads_follow_upstreams_rule() {
    let cases: &[WorkerCase] = &[
        // Automatic: a quarter of the cores rounded up, at least 2.
        (&[], 2, 2),
        (&[], 8, 2),
        (&[], 16, 4),
        (&[], 64, 16),
        (&[], 9, 3),
        // At least the request.
        (&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "6")], 16, 6),
        // A limit is the count, raised to the request.
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1")], 64, 1),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "3")], 64, 3),
        (
            &[
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"),
                ("ZTUNNEL_RESOURCE_CPU_REQUEST", "4"),
            ],
            64,
            4,
        ),
        // The downward API's limit counts as the cores, not as the count.
        (&[("ZTUNNEL_CPU_LIMIT", "32")], 64, 8),
        (&[("ZTUNNEL_CPU_LIMIT", "0")], 64, 16),
        // Explicit: a number, all the cores, a share of them.
        (&[("ZTUNNEL_WORKER_THREADS", "5")], 2, 5),
        (&[("ZTUNNEL_WORKER_THREADS", "0")], 12, 12),
        (&[("ZTUNNEL_WORKER_THREADS", "50%")], 12, 6),
        (&[("ZTUNNEL_WORKER_THREADS", "10%")], 12, 2),
        (&[("ZTUNNEL_WORKER_THREADS", "1%")], 2, 1),
        (
            &[
                ("ZTUNNEL_WORKER_THREADS", "0"),
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "3"),
            ],
            64,
            3,
        ),
        (
            &[
                ("ZTUNNEL_WORKER_THREADS", "100%"),
                ("ZTUNNEL_CPU_LIMIT", "4"),
            ],
            64,
            4,
        ),
    ];
    for (vars, available, expected) in cases {
        let e: HashMap<&str, &str> = vars.iter().copied().collect();
        assert_eq!(
            worker_threads(&e, *available).unwrap(),
            *expected,
            "{vars:?} on {available} cores"
        );
    }
    for (name, value) in [
        ("ZTUNNEL_WORKER_THREADS", "many"),
        ("ZTUNNEL_WORKER_THREADS", "0%"),
        ("ZTUNNEL_WORKER_THREADS", "150%"),
        ("ZTUNNEL_WORKER_THREADS", "-1"),
        ("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m"),
        ("ZTUNNEL_CPU_LIMIT", "two"),
    ] {
        let e: HashMap<&str, &str> = [(name, value)].into_iter().collect();
        match worker_threads(&e, 4) {
            Err(ConfigError::Invalid { name: n, .. }) => assert_eq!(n, name, "{value}"),
            other => panic!("{name}={value}: expected an error naming it, got {other:?}"),
        }
    }
}
