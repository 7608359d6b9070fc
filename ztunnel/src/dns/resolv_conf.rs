//! The pod's `/etc/resolv.conf`: where forwarded queries go, and the search list the proxy strips.
//!
//! The parser is as lenient as glibc's: unknown keywords and malformed values are ignored, the
//! last `search` or `domain` line wins, at most [`MAX_NAMESERVERS`] name servers are kept, and
//! `ndots` is capped at 15. Only what the proxy uses is kept.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::time::Duration;

use super::DnsError;

/// glibc's `MAXNS`: name servers after the third are ignored.
pub const MAX_NAMESERVERS: usize = 3;
/// glibc's cap on `ndots`.
const MAX_NDOTS: u8 = 15;
/// The DNS port, for `nameserver` addresses.
const DNS_PORT: u16 = 53;
/// Largest file read: a resolv.conf is a few hundred bytes.
const MAX_FILE_SIZE: u64 = 64 * 1024;

/// The parts of a resolv.conf the DNS proxy uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` addresses, port 53, in file order (at most [`MAX_NAMESERVERS`]).
    pub nameservers: Vec<SocketAddr>,
    /// The search list (`search`, or a single `domain`; the last such line wins), without
    /// trailing dots.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1, at most 15).
    pub ndots: u8,
    /// `options timeout:N`, if set.
    pub timeout: Option<Duration>,
    /// `options attempts:N`, if set.
    pub attempts: Option<u8>,
}

impl ResolvConf {
    /// Parses the text of a resolv.conf; never fails (like glibc, malformed lines are skipped).
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            ndots: 1,
            ..Self::default()
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(addr) = words.next().and_then(nameserver)
                        && conf.nameservers.len() < MAX_NAMESERVERS
                    {
                        conf.nameservers.push(addr);
                    }
                }
                Some("search") => {
                    conf.search = words
                        .take_while(|w| !w.starts_with('#') && !w.starts_with(';'))
                        .map(|d| d.trim_end_matches('.').to_owned())
                        .filter(|d| !d.is_empty())
                        .collect();
                }
                Some("domain") => {
                    conf.search = words
                        .next()
                        .map(|d| d.trim_end_matches('.').to_owned())
                        .filter(|d| !d.is_empty())
                        .into_iter()
                        .collect();
                }
                Some("options") => {
                    for option in words {
                        conf.option(option);
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses the resolv.conf at `path` (at most 64 KiB are read).
    pub fn read(path: &Path) -> Result<Self, DnsError> {
        use std::io::Read;
        let error = |source| DnsError::ReadResolvConf {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(error)?;
        let mut text = String::new();
        file.take(MAX_FILE_SIZE)
            .read_to_string(&mut text)
            .map_err(error)?;
        Ok(Self::parse(&text))
    }

    /// Applies one `options` word.
    fn option(&mut self, option: &str) {
        let (name, value) = option.split_once(':').unwrap_or((option, ""));
        match name {
            "ndots" => {
                if let Ok(n) = value.parse::<u32>() {
                    self.ndots = u8::try_from(n.min(u32::from(MAX_NDOTS))).unwrap_or(MAX_NDOTS);
                }
            }
            "timeout" => {
                if let Ok(n) = value.parse::<u8>() {
                    self.timeout = Some(Duration::from_secs(u64::from(n.max(1))));
                }
            }
            "attempts" => {
                if let Ok(n) = value.parse::<u8>() {
                    self.attempts = Some(n.max(1));
                }
            }
            _ => {}
        }
    }
}

/// A `nameserver` value: an IPv4 or IPv6 address, the latter with an optional numeric zone
/// (`fe80::1%2`); interface-name zones cannot be resolved here and are skipped.
fn nameserver(value: &str) -> Option<SocketAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, zone) = value.split_once('%')?;
    let ip = ip.parse().ok()?;
    let scope = zone.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_table() {
        struct Case {
            name: &'static str,
            text: &'static str,
            nameservers: Vec<SocketAddr>,
            search: Vec<&'static str>,
            ndots: u8,
        }
        let cases = [
            Case {
                name: "kubernetes pod",
                text: "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                       nameserver 10.96.0.10\noptions ndots:5\n",
                nameservers: vec![addr("10.96.0.10:53")],
                search: vec![
                    "default.svc.cluster.local",
                    "svc.cluster.local",
                    "cluster.local",
                ],
                ndots: 5,
            },
            Case {
                name: "empty file: defaults",
                text: "",
                nameservers: vec![],
                search: vec![],
                ndots: 1,
            },
            Case {
                name: "comments, blank lines, tabs, trailing dots",
                text: "# comment\n; other comment\n\n\tnameserver\t1.1.1.1 \nsearch a.example. b.example # tail\n",
                nameservers: vec![addr("1.1.1.1:53")],
                search: vec!["a.example", "b.example"],
                ndots: 1,
            },
            Case {
                name: "ipv6 and zones: numeric kept, named skipped",
                text: "nameserver fd00::10\nnameserver fe80::1%2\nnameserver fe80::1%eth0\n",
                nameservers: vec![
                    addr("[fd00::10]:53"),
                    SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
                ],
                search: vec![],
                ndots: 1,
            },
            Case {
                name: "at most three name servers, malformed skipped",
                text: "nameserver bogus\nnameserver 10.0.0.1\nnameserver 10.0.0.2\n\
                       nameserver\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n",
                nameservers: vec![
                    addr("10.0.0.1:53"),
                    addr("10.0.0.2:53"),
                    addr("10.0.0.3:53"),
                ],
                search: vec![],
                ndots: 1,
            },
            Case {
                name: "last search or domain line wins",
                text: "search one.example two.example\ndomain three.example\n",
                nameservers: vec![],
                search: vec!["three.example"],
                ndots: 1,
            },
            Case {
                name: "domain then search",
                text: "domain three.example\nsearch one.example\n",
                nameservers: vec![],
                search: vec!["one.example"],
                ndots: 1,
            },
            Case {
                name: "ndots capped at 15, malformed ignored, later wins",
                text: "options ndots:99\noptions ndots:x rotate\n",
                nameservers: vec![],
                search: vec![],
                ndots: 15,
            },
            Case {
                name: "several options on one line",
                text: "options edns0 ndots:2 timeout:3 attempts:4\n",
                nameservers: vec![],
                search: vec![],
                ndots: 2,
            },
            Case {
                name: "unknown keywords ignored",
                text: "sortlist 10.0.0.0/8\nlookup file bind\nnameserver 8.8.8.8\n",
                nameservers: vec![addr("8.8.8.8:53")],
                search: vec![],
                ndots: 1,
            },
        ];
        for c in cases {
            let got = ResolvConf::parse(c.text);
            assert_eq!(got.nameservers, c.nameservers, "{}", c.name);
            assert_eq!(got.search, c.search, "{}", c.name);
            assert_eq!(got.ndots, c.ndots, "{}", c.name);
        }
    }

    #[test]
    fn timeout_and_attempts() {
        let got = ResolvConf::parse("options timeout:3 attempts:0\n");
        assert_eq!(got.timeout, Some(Duration::from_secs(3)));
        assert_eq!(got.attempts, Some(1));
        assert_eq!(ResolvConf::parse("").timeout, None);
    }

    #[test]
    fn read_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(
            &path,
            "nameserver 10.96.0.10\nsearch ns1.svc.cluster.local\n",
        )
        .unwrap();
        let got = ResolvConf::read(&path).unwrap();
        assert_eq!(got.nameservers, vec![addr("10.96.0.10:53")]);
        assert_eq!(got.search, vec!["ns1.svc.cluster.local"]);
        let missing = ResolvConf::read(&dir.path().join("absent"));
        assert!(matches!(missing, Err(DnsError::ReadResolvConf { .. })));
    }
}
