//! The in-pod capture rules: the nftables ruleset that sends a pod's traffic to the ztunnel
//! listeners opened inside the pod's network namespace.
//!
//! # Where it sits
//!
//! In a cluster, istio-cni's node agent installs these rules (as iptables, or native nftables)
//! before it hands the pod's namespace to ztunnel over ZDS ([`super::zds`]). For VMs, tests and
//! local use ztunnel installs them itself with this module: [`Ruleset::render`] is a pure
//! function from a [`CaptureConfig`] to the text of one `nft -f -` transaction, and [`apply`]
//! runs `nft` inside the pod's namespace. The data path after that is the kernel's:
//!
//! ```text
//! app in pod ──connect(10.0.0.5:80)──> nat output ──REDIRECT──> 127.0.0.1:15001 (outbound listener)
//! peer ──────────────SYN to :8080───> nat prerouting ──REDIRECT──> :15006 (inbound plaintext)
//! peer ──────────────SYN to :15008──> (not redirected) ─────────> :15008 (inbound HBONE)
//! app ───────────────DNS to :53─────> nat output ──REDIRECT──> :15053 (DNS proxy)
//! ```
//!
//! The listeners read the address the application asked for with `SO_ORIGINAL_DST`
//! ([`crate::socket::original_dst`]).
//!
//! # The rules, and how they map to istio-cni's
//!
//! istio-cni's in-pod iptables rules (`cni/pkg/iptables/testdata/default.golden`) are rendered as
//! one `inet` table (IPv4 and IPv6 alike), [`TABLE`], with a base chain per hook:
//!
//! | chain | istio-cni | what it does |
//! |---|---|---|
//! | `nat-prerouting` (dstnat, -100) | nat `ISTIO_PRERT` | TCP arriving for the pod is redirected to 15006, except: from ztunnel's own sockets (mark `0x539/0xfff`), from the kubelet probe address (`169.254.7.127` / `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`), to `127.0.0.1` / `::1`, to port 15008, and to excluded inbound ports |
//! | `nat-output` (-100) | nat `ISTIO_OUTPUT` | DNS (UDP not leaving through `lo`, TCP not to `127.0.0.1` / `::1`) is redirected to 15053 when DNS capture is on; other TCP is redirected to 15001 except: from ztunnel's sockets, to the probe address, through `lo`, to excluded ports and CIDRs |
//! | `raw-prerouting`, `raw-output` (raw, -300) | raw `ISTIO_PRERT` / `ISTIO_OUTPUT` | with DNS capture only: ztunnel's upstream DNS exchanges (queries from marked sockets, answers to unmarked ones) live in conntrack zone 1, so they cannot collide with the application's redirected DNS flows |
//! | `mangle-prerouting`, `mangle-output` (mangle, -150) | mangle `ISTIO_PRERT` / `ISTIO_OUTPUT` | with [`CaptureConfig::original_source`] only: see below |
//!
//! Every redirect rule of istio-cni carries "mark is not `0x539`"; here a single "marked:
//! accept" rule leads each nat chain, which is the same thing. iptables' `! -d 127.0.0.1/32`
//! conditions become "to `127.0.0.1` (or `::1`): accept" rules, so the final redirect matches
//! both families (an `ip daddr` match in an `inet` chain would silently skip IPv6).
//!
//! # What is left out by default, and why
//!
//! The mangle part (`mark 0x539` → connmark `0x111`, restored on the application's replies) and
//! its policy routing (`ip rule fwmark 0x111/0xfff lookup 100`, `ip route local default dev lo
//! table 100`) only matter when ztunnel connects to the application *from the client's
//! address* (original-source preservation, `IP_TRANSPARENT`): the application's replies are then
//! addressed to a remote client, and must be routed back into ztunnel's socket instead of out of
//! the pod. ztunnel's inbound today connects from the pod's own address, whose replies are local
//! anyway, so these rules would match nothing; they are rendered (and the routing installed by
//! [`apply`]) only with [`CaptureConfig::original_source`]. istio-cni's `nat ISTIO_OUTPUT
//! mark 0x111: accept` rule belongs to the same mechanism and comes with it.
//!
//! # Per-pod exclusions (our addition)
//!
//! [`Exclusions`] leave TCP to some outbound ports or CIDRs, or to some inbound ports, out of
//! the capture (a long-standing request upstream, where ambient has no equivalent of the
//! sidecar's `excludeOutboundPorts` annotations). They apply to the TCP capture (15001 and
//! 15006) only; DNS capture is governed by [`CaptureConfig::dns_capture`] alone.
//!
//! # Applying
//!
//! The rendered text first creates (if absent) then deletes and recreates [`TABLE`], all in
//! one `nft -f -` transaction: applying is idempotent and atomic, and never touches rules
//! owned by others. [`apply`] enters the namespace on a dedicated thread (`setns`), so the
//! calling thread never changes namespace, and needs only the `nft` binary (plus `ip` for the
//! optional policy routing).

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::config::ports;

#[cfg(test)]
mod tests;

/// The nftables table (family `inet`) that holds every rule of ours.
pub const TABLE: &str = "istio-ambient";
/// The mark on ztunnel's own sockets (`SO_MARK`), upstream's `PACKET_MARK` default 1337.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// The bits of the packet and connection marks the rules own, as istio-cni.
pub const MARK_MASK: u32 = 0xfff;
/// The connection mark of connections ztunnel opened towards the application
/// ([`CaptureConfig::original_source`] only).
pub const CONNMARK: u32 = 0x111;
/// Routing table of the policy route that returns replies to ztunnel (original source only).
pub const ROUTE_TABLE: u32 = 100;
/// Preference of the policy-routing rule (original source only), as istio-cni.
pub const RULE_PREFERENCE: u32 = 32764;
/// Default source address of kubelet probes after the node's probe SNAT (`HOST_PROBE_SNAT_IP`).
pub const DEFAULT_PROBE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// Default IPv6 source address of kubelet probes (`HOST_PROBE_SNAT_IPV6`).
pub const DEFAULT_PROBE_V6: Ipv6Addr = Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);
/// Entries allowed in each exclusion list (each is one set element; bounded because the lists
/// come from user configuration).
pub const MAX_EXCLUSIONS: usize = 256;
/// How long `nft` (or `ip`) may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a failing command's stderr kept in the error.
pub const MAX_STDERR: usize = 4096;

const DNS_PORT: u16 = 53;

/// What to capture in one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Redirect the pod's DNS (UDP and TCP port 53) to the DNS proxy on 15053 (istio-cni's
    /// `cni.ambient.dnsCapture`, on by default).
    pub dns_capture: bool,
    /// ztunnel connects to the application from the client's address, so replies must be
    /// routed back to ztunnel (see the module docs). Off by default.
    pub original_source: bool,
    /// Source of SNATed kubelet probes, never captured (`HOST_PROBE_SNAT_IP`).
    pub probe_v4: Ipv4Addr,
    /// IPv6 source of SNATed kubelet probes (`HOST_PROBE_SNAT_IPV6`).
    pub probe_v6: Ipv6Addr,
    /// Traffic left out of the capture.
    pub exclusions: Exclusions,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            dns_capture: true,
            original_source: false,
            probe_v4: DEFAULT_PROBE_V4,
            probe_v6: DEFAULT_PROBE_V6,
            exclusions: Exclusions::default(),
        }
    }
}

/// TCP left out of the capture, per pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    /// Destination ports of outbound connections that are not redirected to 15001.
    pub outbound_ports: Vec<u16>,
    /// Destination ports of inbound connections that are not redirected to 15006.
    pub inbound_ports: Vec<u16>,
    /// Destination networks of outbound connections that are not redirected to 15001.
    pub outbound_cidrs: Vec<IpNet>,
}

impl Exclusions {
    /// Parses the three lists as users write them (comma- or space-separated, as Istio's
    /// `excludeOutboundPorts`-style annotations): `"5432, 6379"`, `"9090"`,
    /// `"10.0.0.0/8,fd00::/8"`. A bare address in the CIDR list means that one host. Empty
    /// strings are empty lists.
    pub fn parse(
        outbound_ports: &str,
        inbound_ports: &str,
        outbound_cidrs: &str,
    ) -> Result<Self, RenderError> {
        let exclusions = Self {
            outbound_ports: parse_ports(ExclusionList::OutboundPorts, outbound_ports)?,
            inbound_ports: parse_ports(ExclusionList::InboundPorts, inbound_ports)?,
            outbound_cidrs: parse_cidrs(outbound_cidrs)?,
        };
        exclusions.validate()?;
        Ok(exclusions)
    }

    /// Checks the lists (no port 0, at most [`MAX_EXCLUSIONS`] entries each).
    pub fn validate(&self) -> Result<(), RenderError> {
        for (list, ports) in [
            (ExclusionList::OutboundPorts, &self.outbound_ports),
            (ExclusionList::InboundPorts, &self.inbound_ports),
        ] {
            check_count(list, ports.len())?;
            if ports.contains(&0) {
                return Err(RenderError::PortZero { list });
            }
        }
        check_count(ExclusionList::OutboundCidrs, self.outbound_cidrs.len())
    }
}

/// One of the exclusion lists, to name it in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExclusionList {
    /// [`Exclusions::outbound_ports`].
    OutboundPorts,
    /// [`Exclusions::inbound_ports`].
    InboundPorts,
    /// [`Exclusions::outbound_cidrs`].
    OutboundCidrs,
}

impl fmt::Display for ExclusionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutboundPorts => "excluded outbound ports",
            Self::InboundPorts => "excluded inbound ports",
            Self::OutboundCidrs => "excluded outbound CIDRs",
        })
    }
}

/// A capture configuration that cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenderError {
    /// Port 0 cannot be a destination.
    #[error("{list}: port 0 is not a valid port")]
    PortZero {
        /// The list that holds it.
        list: ExclusionList,
    },
    /// An entry of a port list is not a number from 1 to 65535.
    #[error("{list}: {value:?} is not a port (1-65535)")]
    InvalidPort {
        /// The list that holds it.
        list: ExclusionList,
        /// The entry.
        value: String,
    },
    /// An entry of the CIDR list is neither a network nor an address.
    #[error("{list}: {value:?} is not a CIDR or an IP address")]
    InvalidCidr {
        /// The list that holds it.
        list: ExclusionList,
        /// The entry.
        value: String,
    },
    /// A list is longer than [`MAX_EXCLUSIONS`].
    #[error("{list}: {count} entries, at most {max} are allowed")]
    TooMany {
        /// The list.
        list: ExclusionList,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
}

fn check_count(list: ExclusionList, count: usize) -> Result<(), RenderError> {
    if count > MAX_EXCLUSIONS {
        return Err(RenderError::TooMany {
            list,
            count,
            max: MAX_EXCLUSIONS,
        });
    }
    Ok(())
}

fn entries(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
}

fn parse_ports(list: ExclusionList, s: &str) -> Result<Vec<u16>, RenderError> {
    let mut ports = Vec::new();
    for entry in entries(s) {
        check_count(list, ports.len() + 1)?;
        let port: u16 = entry.parse().map_err(|_| RenderError::InvalidPort {
            list,
            value: entry.to_string(),
        })?;
        if port == 0 {
            return Err(RenderError::PortZero { list });
        }
        ports.push(port);
    }
    Ok(ports)
}

fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, RenderError> {
    let list = ExclusionList::OutboundCidrs;
    let mut cidrs = Vec::new();
    for entry in entries(s) {
        check_count(list, cidrs.len() + 1)?;
        let cidr = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| RenderError::InvalidCidr {
                list,
                value: entry.to_string(),
            })?;
        cidrs.push(cidr);
    }
    Ok(cidrs)
}

/// What [`apply`] does with the policy routing of [`CaptureConfig::original_source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyRouting {
    /// Nothing.
    Leave,
    /// Install the rule and the route (IPv4 and IPv6), keeping them if already there.
    Install,
    /// Remove the rule and the route, if present.
    Remove,
}

/// A rendered ruleset: the `nft -f -` text, and the policy routing that goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    nft: String,
    policy_routing: PolicyRouting,
}

impl Ruleset {
    /// Renders the capture for `config`; see the module docs for the rules.
    pub fn render(config: &CaptureConfig) -> Result<Self, RenderError> {
        config.exclusions.validate()?;
        let mut out = String::new();
        replace_table_header(&mut out);
        out.push_str(&format!("table inet {TABLE} {{\n"));
        let mut chains = Vec::new();
        if config.dns_capture {
            chains.push(raw_chains());
        }
        if config.original_source {
            chains.push(mangle_chains());
        }
        chains.push(nat_prerouting(config));
        chains.push(nat_output(config));
        out.push_str(&chains.join("\n"));
        out.push_str("}\n");
        Ok(Self {
            nft: out,
            policy_routing: if config.original_source {
                PolicyRouting::Install
            } else {
                PolicyRouting::Leave
            },
        })
    }

    /// The ruleset that removes the capture: deletes [`TABLE`] (fine if it is absent), and the
    /// policy routing when `config` installed it.
    pub fn removal(config: &CaptureConfig) -> Self {
        let mut out = String::new();
        replace_table_header(&mut out);
        Self {
            nft: out,
            policy_routing: if config.original_source {
                PolicyRouting::Remove
            } else {
                PolicyRouting::Leave
            },
        }
    }

    /// The text fed to `nft -f -`.
    pub fn nft_text(&self) -> &str {
        &self.nft
    }

    /// The policy routing [`apply`] installs or removes with the table.
    pub fn policy_routing(&self) -> PolicyRouting {
        self.policy_routing
    }
}

impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.nft)
    }
}

/// `add table` (a no-op when it exists) then `delete table`: the transaction works whether or
/// not the table is there, and a following `table { ... }` recreates it from scratch.
fn replace_table_header(out: &mut String) {
    out.push_str(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"));
}

fn marked(mark: u32) -> String {
    format!("meta mark & {MARK_MASK:#010x} == {mark:#010x}")
}

fn chain(name: &str, kind: &str, hook: &str, priority: i32, rules: &[String]) -> String {
    let mut out = format!(
        "\tchain {name} {{\n\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n"
    );
    for rule in rules {
        let _ = writeln!(out, "\t\t{rule}");
    }
    out.push_str("\t}\n");
    out
}

fn raw_chains() -> String {
    let unmarked = format!("meta mark & {MARK_MASK:#010x} != {ZTUNNEL_MARK:#010x}");
    [
        chain(
            "raw-prerouting",
            "filter",
            "prerouting",
            -300,
            &[format!("udp sport {DNS_PORT} {unmarked} ct zone set 1")],
        ),
        chain(
            "raw-output",
            "filter",
            "output",
            -300,
            &[format!(
                "udp dport {DNS_PORT} {} ct zone set 1",
                marked(ZTUNNEL_MARK)
            )],
        ),
    ]
    .join("\n")
}

fn mangle_chains() -> String {
    let keep = !MARK_MASK;
    [
        chain(
            "mangle-prerouting",
            "filter",
            "prerouting",
            -150,
            &[format!(
                "{} ct mark set ct mark & {keep:#010x} | {CONNMARK:#010x}",
                marked(ZTUNNEL_MARK)
            )],
        ),
        // A `route` chain: changing the mark of a locally generated packet re-routes it.
        chain(
            "mangle-output",
            "route",
            "output",
            -150,
            &[format!(
                "ct mark & {MARK_MASK:#010x} == {CONNMARK:#010x} meta mark set ct mark"
            )],
        ),
    ]
    .join("\n")
}

fn port_set(ports: &[u16]) -> Option<String> {
    let ports: BTreeSet<u16> = ports.iter().copied().collect();
    if ports.is_empty() {
        return None;
    }
    let items: Vec<String> = ports.iter().map(u16::to_string).collect();
    Some(format!("{{ {} }}", items.join(", ")))
}

fn nat_prerouting(config: &CaptureConfig) -> String {
    let mut rules = vec![
        format!("{} accept", marked(ZTUNNEL_MARK)),
        format!("meta l4proto tcp ip saddr {} accept", config.probe_v4),
        format!("meta l4proto tcp ip6 saddr {} accept", config.probe_v6),
        "ip daddr 127.0.0.1 accept".to_string(),
        "ip6 daddr ::1 accept".to_string(),
        format!("tcp dport {} accept", ports::INBOUND_HBONE),
    ];
    if let Some(set) = port_set(&config.exclusions.inbound_ports) {
        rules.push(format!("tcp dport {set} accept"));
    }
    rules.push(format!(
        "meta l4proto tcp redirect to :{}",
        ports::INBOUND_PLAINTEXT
    ));
    chain("nat-prerouting", "nat", "prerouting", -100, &rules)
}

fn nat_output(config: &CaptureConfig) -> String {
    let mut rules = vec![
        format!("{} accept", marked(ZTUNNEL_MARK)),
        format!("meta l4proto tcp ip daddr {} accept", config.probe_v4),
        format!("meta l4proto tcp ip6 daddr {} accept", config.probe_v6),
    ];
    if config.dns_capture {
        rules.push(format!(
            "udp dport {DNS_PORT} oifname != \"lo\" redirect to :{}",
            ports::DNS
        ));
    }
    rules.push("ip daddr 127.0.0.1 accept".to_string());
    rules.push("ip6 daddr ::1 accept".to_string());
    if config.dns_capture {
        rules.push(format!("tcp dport {DNS_PORT} redirect to :{}", ports::DNS));
    }
    if config.original_source {
        rules.push(format!("{} accept", marked(CONNMARK)));
    }
    rules.push("oifname \"lo\" accept".to_string());
    if let Some(set) = port_set(&config.exclusions.outbound_ports) {
        rules.push(format!("tcp dport {set} accept"));
    }
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = IpNet::aggregate(&config.exclusions.outbound_cidrs)
        .into_iter()
        .partition(|net| matches!(net, IpNet::V4(_)));
    for (family, nets) in [("ip", v4), ("ip6", v6)] {
        if !nets.is_empty() {
            let items: Vec<String> = nets.iter().map(IpNet::to_string).collect();
            rules.push(format!("{family} daddr {{ {} }} accept", items.join(", ")));
        }
    }
    rules.push(format!("meta l4proto tcp redirect to :{}", ports::OUTBOUND));
    chain("nat-output", "nat", "output", -100, &rules)
}

/// Installing or removing rules failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The namespace handle could not be duplicated for the worker thread.
    #[error("failed to duplicate the network namespace handle: {0}")]
    Netns(#[source] std::io::Error),
    /// The worker thread could not be started.
    #[error("failed to start the thread that enters the pod's network namespace: {0}")]
    Thread(#[source] std::io::Error),
    /// The worker thread panicked.
    #[error("the thread that applies the rules panicked")]
    ThreadPanicked,
    /// `setns` refused the handle (not a network namespace, or missing `CAP_SYS_ADMIN`).
    #[error("failed to enter the pod's network namespace: {0}")]
    EnterNetns(#[source] nix::Error),
    /// A required binary is not installed.
    #[error(
        "{binary} not found in PATH, /usr/sbin or /sbin (install the {package} package, e.g. apt-get install -y {package})"
    )]
    NotFound {
        /// The binary (`nft`, `ip`).
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The binary could not be started.
    #[error("failed to run {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The binary did not finish within [`COMMAND_TIMEOUT`] and was killed.
    #[error("{binary} did not finish within {timeout:?}")]
    Timeout {
        /// The binary.
        binary: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// `nft` rejected the ruleset.
    #[error("nft -f - failed ({status}): {stderr}")]
    Nft {
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (at most [`MAX_STDERR`] bytes).
        stderr: String,
    },
    /// An `ip rule` / `ip route` command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Ip {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (at most [`MAX_STDERR`] bytes).
        stderr: String,
    },
}

/// Applies `ruleset` inside the network namespace `netns` (an open `/proc/<pid>/ns/net` or
/// `/var/run/netns/<name>`, or the fd received over ZDS), then its policy routing. Blocking
/// (it waits for `nft`); call it from `spawn_blocking` in async code.
///
/// The table is replaced in one transaction: on failure the previous rules (if any) stay.
/// The policy routing, when requested, follows the table, so a routing failure leaves the
/// capture in place (failing closed) and is reported.
pub fn apply(netns: BorrowedFd<'_>, ruleset: &Ruleset) -> Result<(), ApplyError> {
    let netns = netns.try_clone_to_owned().map_err(ApplyError::Netns)?;
    let ruleset = ruleset.clone();
    let worker = std::thread::Builder::new()
        .name("inpod-rules".into())
        .spawn(move || {
            // Only this thread moves; it ends right after.
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(ApplyError::EnterNetns)?;
            run_nft(&ruleset.nft)?;
            match ruleset.policy_routing {
                PolicyRouting::Leave => Ok(()),
                PolicyRouting::Install => install_policy_routing(),
                PolicyRouting::Remove => remove_policy_routing(),
            }
        })
        .map_err(ApplyError::Thread)?;
    worker.join().map_err(|_| ApplyError::ThreadPanicked)?
}

/// Removes the capture from `netns`: [`apply`] of [`Ruleset::removal`].
pub fn remove(netns: BorrowedFd<'_>, config: &CaptureConfig) -> Result<(), ApplyError> {
    apply(netns, &Ruleset::removal(config))
}

fn run_nft(text: &str) -> Result<(), ApplyError> {
    let nft = find_binary("nft").ok_or(ApplyError::NotFound {
        binary: "nft",
        package: "nftables",
    })?;
    let (status, stderr) = run("nft", &nft, &["-f", "-"], Some(text))?;
    if status.success() {
        Ok(())
    } else {
        Err(ApplyError::Nft { status, stderr })
    }
}

/// The policy-routing commands, per family: the rule, and the local default route.
fn policy_routing_commands(verb_rule: &str, verb_route: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for (family, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        commands.push(
            [
                family,
                "rule",
                verb_rule,
                "fwmark",
                &format!("{CONNMARK:#x}/{MARK_MASK:#x}"),
                "pref",
                &RULE_PREFERENCE.to_string(),
                "lookup",
                &ROUTE_TABLE.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        );
        commands.push(
            [
                family,
                "route",
                verb_route,
                "local",
                default,
                "dev",
                "lo",
                "table",
                &ROUTE_TABLE.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    commands
}

fn install_policy_routing() -> Result<(), ApplyError> {
    // `rule add` of an identical rule fails with EEXIST: the rule is there, fine. `route
    // replace` is idempotent.
    run_ip_commands(&policy_routing_commands("add", "replace"), &["File exists"])
}

fn remove_policy_routing() -> Result<(), ApplyError> {
    // ENOENT (no such rule) and ESRCH (no such route): already gone.
    run_ip_commands(
        &policy_routing_commands("del", "del"),
        &["No such file or directory", "No such process"],
    )
}

/// Runs `ip` with each of `commands`; a failure whose stderr contains one of `benign` counts
/// as success.
fn run_ip_commands(commands: &[Vec<String>], benign: &[&str]) -> Result<(), ApplyError> {
    let ip = find_binary("ip").ok_or(ApplyError::NotFound {
        binary: "ip",
        package: "iproute2",
    })?;
    for args in commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stderr) = run("ip", &ip, &args, None)?;
        if !status.success() && !benign.iter().any(|b| stderr.contains(b)) {
            return Err(ApplyError::Ip {
                command: format!("ip {}", args.join(" ")),
                status,
                stderr,
            });
        }
    }
    Ok(())
}

/// `name` in `PATH`, else in the sbin directories (often not in a non-login root's `PATH`).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `program` with `stdin`, under [`COMMAND_TIMEOUT`]; its exit status and (bounded)
/// stderr.
fn run(
    binary: &'static str,
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(ExitStatus, String), ApplyError> {
    let spawn_error = |source| ApplyError::Spawn { binary, source };
    let mut child = Command::new(program)
        .args(args)
        // Error messages in English, which `run_ip_commands` matches.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;

    // Feed stdin and drain stderr on their own threads, so neither pipe can block the
    // deadline below.
    let writer = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(text)) => {
            let text = text.to_owned();
            // A write error means the program exited early; its status says why.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            }))
        }
        _ => None,
    };
    let reader = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut pipe).take(MAX_STDERR as u64).read_to_end(&mut kept);
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            kept
        })
    });

    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(spawn_error)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ApplyError::Timeout {
                    binary,
                    timeout: COMMAND_TIMEOUT,
                });
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stderr = reader
        .and_then(|r| r.join().ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    Ok((status, stderr))
}
