//! Golden rulesets and validation. The rulesets are also applied for real in a network
//! namespace by `ztunnel/tests/inpod_rules.rs` (root only).

use super::*;

const DEFAULTS: &str = "\
table inet istio-ambient
delete table inet istio-ambient
table inet istio-ambient {
\tchain raw-prerouting {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tudp sport 53 meta mark & 0x00000fff != 0x00000539 ct zone set 1
\t}

\tchain raw-output {
\t\ttype filter hook output priority -300; policy accept;
\t\tudp dport 53 meta mark & 0x00000fff == 0x00000539 ct zone set 1
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip saddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 15008 accept
\t\tmeta l4proto tcp redirect to :15006
\t}

\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip daddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tudp dport 53 oifname != \"lo\" redirect to :15053
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 53 redirect to :15053
\t\toifname \"lo\" accept
\t\tmeta l4proto tcp redirect to :15001
\t}
}
";

const DNS_OFF: &str = "\
table inet istio-ambient
delete table inet istio-ambient
table inet istio-ambient {
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip saddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 15008 accept
\t\tmeta l4proto tcp redirect to :15006
\t}

\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip daddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\toifname \"lo\" accept
\t\tmeta l4proto tcp redirect to :15001
\t}
}
";

/// Exclusions in both families; duplicates collapse, overlapping and adjacent networks merge
/// (nft refuses overlapping elements in one set), host bits are dropped.
const WITH_EXCLUSIONS: &str = "\
table inet istio-ambient
delete table inet istio-ambient
table inet istio-ambient {
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip saddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 15008 accept
\t\ttcp dport { 9090 } accept
\t\tmeta l4proto tcp redirect to :15006
\t}

\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip daddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\toifname \"lo\" accept
\t\ttcp dport { 3306, 5432, 6379 } accept
\t\tip daddr { 10.0.0.0/8, 192.168.1.0/24, 198.51.100.0/24, 203.0.113.7/32 } accept
\t\tip6 daddr { 2001:db8::1/128, fd00::/8 } accept
\t\tmeta l4proto tcp redirect to :15001
\t}
}
";

const ORIGINAL_SOURCE: &str = "\
table inet istio-ambient
delete table inet istio-ambient
table inet istio-ambient {
\tchain raw-prerouting {
\t\ttype filter hook prerouting priority -300; policy accept;
\t\tudp sport 53 meta mark & 0x00000fff != 0x00000539 ct zone set 1
\t}

\tchain raw-output {
\t\ttype filter hook output priority -300; policy accept;
\t\tudp dport 53 meta mark & 0x00000fff == 0x00000539 ct zone set 1
\t}

\tchain mangle-prerouting {
\t\ttype filter hook prerouting priority -150; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 ct mark set ct mark & 0xfffff000 | 0x00000111
\t}

\tchain mangle-output {
\t\ttype route hook output priority -150; policy accept;
\t\tct mark & 0x00000fff == 0x00000111 meta mark set ct mark
\t}

\tchain nat-prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip saddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 saddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 15008 accept
\t\tmeta l4proto tcp redirect to :15006
\t}

\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark & 0x00000fff == 0x00000539 accept
\t\tmeta l4proto tcp ip daddr 169.254.7.127 accept
\t\tmeta l4proto tcp ip6 daddr fd16:9254:7127:1337:ffff:ffff:ffff:ffff accept
\t\tudp dport 53 oifname != \"lo\" redirect to :15053
\t\tip daddr 127.0.0.1 accept
\t\tip6 daddr ::1 accept
\t\ttcp dport 53 redirect to :15053
\t\tmeta mark & 0x00000fff == 0x00000111 accept
\t\toifname \"lo\" accept
\t\tmeta l4proto tcp redirect to :15001
\t}
}
";

const REMOVAL: &str = "\
table inet istio-ambient
delete table inet istio-ambient
";

fn exclusions() -> Exclusions {
    Exclusions::parse(
        "5432, 6379 3306,5432",
        "9090",
        "10.0.0.0/8, 10.1.0.0/16,192.168.1.0/25 192.168.1.128/25, fd00::/8,\
         fd00:1::/64, 203.0.113.7, 2001:db8::1, 198.51.100.77/24",
    )
    .unwrap()
}

#[test]
fn golden_rulesets() {
    let cases = [
        ("defaults", CaptureConfig::default(), DEFAULTS),
        (
            "dns off",
            CaptureConfig {
                dns_capture: false,
                ..Default::default()
            },
            DNS_OFF,
        ),
        (
            "with exclusions, v4 and v6",
            CaptureConfig {
                dns_capture: false,
                exclusions: exclusions(),
                ..Default::default()
            },
            WITH_EXCLUSIONS,
        ),
        (
            "empty exclusions render nothing (nft refuses empty sets)",
            CaptureConfig {
                exclusions: Exclusions::parse("", " , ", "").unwrap(),
                ..Default::default()
            },
            DEFAULTS,
        ),
        (
            "original source",
            CaptureConfig {
                original_source: true,
                ..Default::default()
            },
            ORIGINAL_SOURCE,
        ),
    ];
    for (name, config, expected) in cases {
        let ruleset = Ruleset::render(&config).unwrap();
        assert_eq!(ruleset.nft_text(), expected, "case {name:?}");
        let routing = if config.original_source {
            PolicyRouting::Install
        } else {
            PolicyRouting::Leave
        };
        assert_eq!(ruleset.policy_routing(), routing, "case {name:?}");
    }
}

#[test]
fn removal_deletes_the_table_and_the_routing_it_installed() {
    let removal = Ruleset::removal(&CaptureConfig::default());
    assert_eq!(removal.nft_text(), REMOVAL);
    assert_eq!(removal.policy_routing(), PolicyRouting::Leave);
    let removal = Ruleset::removal(&CaptureConfig {
        original_source: true,
        ..Default::default()
    });
    assert_eq!(removal.nft_text(), REMOVAL);
    assert_eq!(removal.policy_routing(), PolicyRouting::Remove);
}

#[test]
fn probe_addresses_are_configurable() {
    let ruleset = Ruleset::render(&CaptureConfig {
        probe_v4: Ipv4Addr::new(169, 254, 9, 9),
        probe_v6: "fd00::9".parse().unwrap(),
        ..Default::default()
    })
    .unwrap();
    let text = ruleset.nft_text();
    assert!(text.contains("meta l4proto tcp ip saddr 169.254.9.9 accept"));
    assert!(text.contains("meta l4proto tcp ip daddr 169.254.9.9 accept"));
    assert!(text.contains("meta l4proto tcp ip6 saddr fd00::9 accept"));
    assert!(!text.contains("169.254.7.127"));
}

#[test]
fn parse_rejects_bad_input() {
    let cases: [(&str, (&str, &str, &str), RenderError); 6] = [
        (
            "outbound port 0",
            ("80,0", "", ""),
            RenderError::PortZero {
                list: ExclusionList::OutboundPorts,
            },
        ),
        (
            "inbound port 0",
            ("", "0", ""),
            RenderError::PortZero {
                list: ExclusionList::InboundPorts,
            },
        ),
        (
            "port out of range",
            ("65536", "", ""),
            RenderError::InvalidPort {
                list: ExclusionList::OutboundPorts,
                value: "65536".into(),
            },
        ),
        (
            "port not a number",
            ("", "http", ""),
            RenderError::InvalidPort {
                list: ExclusionList::InboundPorts,
                value: "http".into(),
            },
        ),
        (
            "cidr does not parse",
            ("", "", "10.0.0.0/8,10.0.0.0/33"),
            RenderError::InvalidCidr {
                list: ExclusionList::OutboundCidrs,
                value: "10.0.0.0/33".into(),
            },
        ),
        (
            "cidr is a name",
            ("", "", "example.com"),
            RenderError::InvalidCidr {
                list: ExclusionList::OutboundCidrs,
                value: "example.com".into(),
            },
        ),
    ];
    for (name, (outbound, inbound, cidrs), expected) in cases {
        assert_eq!(
            Exclusions::parse(outbound, inbound, cidrs).unwrap_err(),
            expected,
            "case {name:?}"
        );
    }
}

#[test]
fn render_rejects_bad_input() {
    let port_zero = CaptureConfig {
        exclusions: Exclusions {
            inbound_ports: vec![8080, 0],
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        Ruleset::render(&port_zero).unwrap_err(),
        RenderError::PortZero {
            list: ExclusionList::InboundPorts
        }
    );

    let too_many = CaptureConfig {
        exclusions: Exclusions {
            outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap(); MAX_EXCLUSIONS + 1],
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        Ruleset::render(&too_many).unwrap_err(),
        RenderError::TooMany {
            list: ExclusionList::OutboundCidrs,
            count: MAX_EXCLUSIONS + 1,
            max: MAX_EXCLUSIONS,
        }
    );

    let many_ports = vec!["1"; MAX_EXCLUSIONS + 1].join(",");
    assert!(matches!(
        Exclusions::parse(&many_ports, "", ""),
        Err(RenderError::TooMany {
            list: ExclusionList::OutboundPorts,
            ..
        })
    ));
    let at_limit = vec!["1"; MAX_EXCLUSIONS].join(",");
    assert!(Exclusions::parse(&at_limit, "", "").is_ok());
}

#[test]
fn errors_name_the_list_and_the_value() {
    let error = Exclusions::parse("", "", "10.0.0.0/33").unwrap_err();
    assert_eq!(
        error.to_string(),
        "excluded outbound CIDRs: \"10.0.0.0/33\" is not a CIDR or an IP address"
    );
    let error = Exclusions::parse("0", "", "").unwrap_err();
    assert_eq!(
        error.to_string(),
        "excluded outbound ports: port 0 is not a valid port"
    );
}

#[test]
fn missing_binary_error_says_what_to_install() {
    let error = ApplyError::NotFound {
        binary: "nft",
        package: "nftables",
    };
    assert!(error.to_string().contains("apt-get install -y nftables"));
}
