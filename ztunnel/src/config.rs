//! Process configuration: parsed once at start-up from the environment.
//!
//! Names follow Istio ztunnel's environment variables wherever a knob exists upstream, so an
//! existing deployment's settings carry over; knobs of our own are marked as such. Each section
//! has its own small parser; [`Config::from_env`] assembles them. The environment is read
//! through the [`Env`] trait so tests pass a map instead of mutating the process environment.
//!
//! The result is immutable and shared as `Arc<Config>`; nothing on the data path reads the
//! environment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::ca_client::CaClientConfig;
use crate::xds::XdsConfig;

/// Istio's ports for the node proxy.
pub mod ports {
    /// Outbound capture.
    pub const OUTBOUND: u16 = 15001;
    /// Inbound plaintext capture.
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    /// Inbound HBONE.
    pub const INBOUND_HBONE: u16 = hbone::HBONE_PORT;
    /// DNS proxy.
    pub const DNS: u16 = 15053;
    /// SOCKS5 outbound (opt-in).
    pub const SOCKS5: u16 = 15080;
    /// Admin (localhost only).
    pub const ADMIN: u16 = 15000;
    /// Prometheus metrics.
    pub const METRICS: u16 = 15020;
    /// Readiness.
    pub const READINESS: u16 = 15021;
}

/// Where configuration values come from.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// Every variable, for the prefixed families (`ISTIO_META_*`, `XDS_HEADER_*`, …).
    fn vars(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value does not parse as the setting's type.
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Two settings contradict each other, or one requires another.
    #[error("{0}")]
    Conflict(String),
    /// The HBONE settings are not usable together.
    #[error("hbone: {0}")]
    Hbone(String),
}

/// How many workloads one process serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Many workloads (a node proxy). Upstream `PROXY_MODE=shared`, the default.
    Shared,
    /// One workload, named by `PROXY_WORKLOAD_INFO=<namespace>/<name>/<service-account>`.
    Dedicated(WorkloadInfo),
}

/// The workload a dedicated proxy serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// Namespace.
    pub namespace: String,
    /// Workload (pod) name.
    pub name: String,
    /// Service account.
    pub service_account: String,
}

/// What happens to outbound traffic whose destination the mesh does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// Pass it through as plain TCP (Istio's `ALLOW_ANY`, the default).
    AllowAny,
    /// Refuse it (Istio's `REGISTRY_ONLY`).
    RegistryOnly,
}

/// The local CA directory when neither a CA address nor a CA directory is configured.
pub const DEFAULT_LOCAL_CA_DIR: &str = "./var/lib/ztunnel/ca";

/// Where the mesh state comes from when running without a control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalState {
    /// No local state.
    None,
    /// A YAML file, hot-reloaded (`LOCAL_XDS_PATH`).
    File(PathBuf),
    /// Inline YAML (`LOCAL_XDS`).
    Inline(String),
}

/// Where workload certificates come from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// Istio's CA (`CA_ADDRESS`; istiod's in-cluster address by default in Kubernetes).
    Istio(Box<CaClientConfig>),
    /// A local CA whose root is generated into (or loaded from) this directory.
    Local(PathBuf),
    /// Istio's plug-in CA layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`) in this directory.
    Plugin(PathBuf),
}

/// Listener addresses. Port 0 lets the OS choose (tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    /// Outbound capture, 15001.
    pub outbound: SocketAddr,
    /// Inbound plaintext, 15006.
    pub inbound_plaintext: SocketAddr,
    /// Inbound HBONE, 15008.
    pub inbound_hbone: SocketAddr,
    /// SOCKS5, 15080 on localhost; `None` unless `UNSTABLE_ENABLE_SOCKS5=true`.
    pub socks5: Option<SocketAddr>,
    /// Admin, 15000 on localhost.
    pub admin: SocketAddr,
    /// Metrics, 15020.
    pub metrics: SocketAddr,
    /// Readiness, 15021.
    pub readiness: SocketAddr,
}

/// The node proxy's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Shared (node) or dedicated (one workload).
    pub proxy_mode: ProxyMode,
    /// Mesh state without a control plane.
    pub local_state: LocalState,
    /// The control plane (`XDS_ADDRESS`; istiod's in-cluster address by default in
    /// Kubernetes unless a local state is given); `None` without one.
    pub xds: Option<Box<XdsConfig>>,
    /// Certificates.
    pub ca: CaSource,
    /// Trust domain of local identities (`TRUST_DOMAIN`, default `cluster.local`).
    pub trust_domain: String,
    /// Cluster id (`CLUSTER_ID`, or `ISTIO_META_CLUSTER_ID`; default `Kubernetes`).
    pub cluster_id: String,
    /// Network of this node (`NETWORK`, default empty).
    pub network: String,
    /// Node name (`NODE_NAME`).
    pub node_name: Option<String>,
    /// Lifetime requested for workload certificates (`SECRET_TTL`, default 24 h).
    pub secret_ttl: Duration,
    /// Unknown destinations (`OUTBOUND_TRAFFIC_POLICY`: `ALLOW_ANY` | `REGISTRY_ONLY`; our own
    /// knob, named after the mesh config field).
    pub outbound_policy: OutboundPolicy,
    /// Listener addresses.
    pub listeners: Listeners,
    /// How long draining connections may run after SIGTERM before they are closed
    /// (`CONNECTION_TERMINATION_DEADLINE`, else derived from `TERMINATION_GRACE_PERIOD_SECONDS`).
    pub drain_deadline: Duration,
    /// HBONE client and server settings.
    pub hbone: hbone::Config,
    /// In-pod mode: pods announced over ZDS by istio-cni (or `ztunnel node-agent`) instead of
    /// listeners on the workloads' own addresses; `None` when off.
    pub inpod: Option<InpodConfig>,
}

/// In-pod mode settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InpodConfig {
    /// The node agent's socket (`INPOD_UDS`, default `/var/run/ztunnel/ztunnel.sock`).
    pub zds: crate::inpod::zds::ZdsConfig,
    /// The mark on every socket of the pod proxies (`PACKET_MARK`, default 1337 = 0x539); the
    /// capture rules exempt it.
    pub mark: u32,
    /// Whether pod proxies serve DNS on 15053 (`DNS_CAPTURE`, ProxyConfig's
    /// `proxyMetadata.DNS_CAPTURE`; default true).
    pub dns_capture: bool,
    /// The resolv.conf whose name servers DNS queries the proxy does not answer are relayed to
    /// (`DNS_RESOLV_CONF`, our knob; default `/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// The cluster's DNS domain (`CLUSTER_DOMAIN`, default `cluster.local`).
    pub cluster_domain: String,
}

impl Config {
    /// Reads the configuration from `env`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let local_state = local_state(env)?;
        let config = Self {
            proxy_mode: proxy_mode(env)?,
            xds: xds(env, &local_state)?,
            local_state,
            ca: ca(env, DEFAULT_LOCAL_CA_DIR)?,
            trust_domain: string(env, "TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into()),
            cluster_id: string(env, "CLUSTER_ID")
                .or_else(|| string(env, "ISTIO_META_CLUSTER_ID"))
                .unwrap_or_else(|| "Kubernetes".into()),
            network: string(env, "NETWORK").unwrap_or_default(),
            node_name: string(env, "NODE_NAME"),
            secret_ttl: duration(env, "SECRET_TTL")?.unwrap_or(Duration::from_secs(24 * 3600)),
            outbound_policy: outbound_policy(env)?,
            listeners: listeners(env)?,
            drain_deadline: drain_deadline(env)?,
            hbone: hbone_config(env)?,
            inpod: inpod(env)?,
        };
        Ok(config)
    }
}

/// The floor of the automatic worker count.
const MIN_WORKER_THREADS: usize = 2;

/// The data path's worker threads, by upstream's rule: `ZTUNNEL_WORKER_THREADS` (a number, `N%`
/// of the cores, or `0` for all of them) if set; else the CPU limit `ZTUNNEL_RESOURCE_CPU_LIMIT`
/// (raised to the request `ZTUNNEL_RESOURCE_CPU_REQUEST`) if set; else a quarter of the cores
/// rounded up, but at least the request and at least 2. The cores are
/// `ZTUNNEL_RESOURCE_CPU_LIMIT`, else `ZTUNNEL_CPU_LIMIT` (the downward API), else `available`
/// (what the machine has). Read before the runtime starts, so not part of [`Config`].
pub fn worker_threads(env: &impl Env, available: usize) -> Result<usize, ConfigError> {
    let limit = cores(env, "ZTUNNEL_RESOURCE_CPU_LIMIT")?;
    let request = cores(env, "ZTUNNEL_RESOURCE_CPU_REQUEST")?.unwrap_or(0);
    let machine = match limit {
        Some(n) => n,
        None => cores(env, "ZTUNNEL_CPU_LIMIT")?.unwrap_or(available.max(1)),
    };
    if let Some(value) = string(env, "ZTUNNEL_WORKER_THREADS") {
        let name = "ZTUNNEL_WORKER_THREADS";
        let v = value.trim();
        let (number, share) = match v.strip_suffix('%') {
            Some(percent) => (percent.trim(), true),
            None => (v, false),
        };
        let n: usize = number
            .parse()
            .map_err(|_| invalid(name, &value, "expected a number or N% of the cores"))?;
        return match (share, n) {
            (true, 0) | (true, 101..) => Err(invalid(name, &value, "a percentage from 1% to 100%")),
            // Rounded up: a share of the cores is at least one thread.
            (true, p) => Ok((machine * p).div_ceil(100)),
            (false, 0) => Ok(machine),
            (false, n) => Ok(n),
        };
    }
    Ok(match limit {
        Some(limit) => limit.max(request),
        None => machine.div_ceil(4).max(request).max(MIN_WORKER_THREADS),
    })
}

/// A whole number of cores (Kubernetes' downward API with divisor 1 rounds up); `0` is unset.
fn cores(env: &impl Env, name: &'static str) -> Result<Option<usize>, ConfigError> {
    Ok(parse::<usize>(env, name)?.filter(|&n| n > 0))
}

fn string(env: &impl Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.is_empty())
}

fn invalid(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse<T: std::str::FromStr>(env: &impl Env, name: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match string(env, name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| invalid(name, &v, e.to_string())),
    }
}

fn boolean(env: &impl Env, name: &'static str) -> Result<bool, ConfigError> {
    match string(env, name)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(invalid(name, other, "expected true or false")),
    }
}

/// Parses durations as Istio writes them: `500ms`, `10s`, `5m`, `24h`, or combinations such as
/// `1h30m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large in {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            unit => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn duration(env: &impl Env, name: &'static str) -> Result<Option<Duration>, ConfigError> {
    match string(env, name) {
        None => Ok(None),
        Some(v) => parse_duration(&v)
            .map(Some)
            .map_err(|reason| invalid(name, &v, reason)),
    }
}

fn proxy_mode(env: &impl Env) -> Result<ProxyMode, ConfigError> {
    let mode = string(env, "PROXY_MODE").unwrap_or_else(|| "shared".into());
    match mode.to_ascii_lowercase().as_str() {
        "shared" => Ok(ProxyMode::Shared),
        "dedicated" => {
            let info = string(env, "PROXY_WORKLOAD_INFO").ok_or_else(|| {
                ConfigError::Conflict(
                    "PROXY_MODE=dedicated requires PROXY_WORKLOAD_INFO=<namespace>/<name>/<service-account>"
                        .into(),
                )
            })?;
            let parts: Vec<&str> = info.split('/').collect();
            match parts.as_slice() {
                [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                    Ok(ProxyMode::Dedicated(WorkloadInfo {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        service_account: sa.to_string(),
                    }))
                }
                _ => Err(invalid(
                    "PROXY_WORKLOAD_INFO",
                    &info,
                    "expected <namespace>/<name>/<service-account>",
                )),
            }
        }
        _ => Err(invalid("PROXY_MODE", &mode, "expected shared or dedicated")),
    }
}

/// `LOCAL_XDS_PATH` (a file) or `LOCAL_XDS` (inline YAML), mutually exclusive.
pub fn local_state(env: &impl Env) -> Result<LocalState, ConfigError> {
    match (string(env, "LOCAL_XDS_PATH"), string(env, "LOCAL_XDS")) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict(
            "LOCAL_XDS_PATH and LOCAL_XDS are mutually exclusive".into(),
        )),
        (Some(path), None) => Ok(LocalState::File(path.into())),
        (None, Some(yaml)) => Ok(LocalState::Inline(yaml)),
        (None, None) => Ok(LocalState::None),
    }
}

/// Istio's CA when `CA_ADDRESS` is set (or defaults to istiod in Kubernetes), unless a local or
/// plug-in CA directory is named; those are our own knobs (upstream's `FAKE_CA` is in-memory).
/// Without any of them, a local CA in `default_local_dir`.
pub fn ca(env: &impl Env, default_local_dir: &str) -> Result<CaSource, ConfigError> {
    let plugin = string(env, "CA_PLUGIN_DIR");
    let local = string(env, "LOCAL_CA_DIR");
    let explicit_remote = string(env, "CA_ADDRESS").is_some();
    if explicit_remote && (plugin.is_some() || local.is_some()) {
        return Err(ConfigError::Conflict(
            "CA_ADDRESS and CA_PLUGIN_DIR/LOCAL_CA_DIR are mutually exclusive".into(),
        ));
    }
    if plugin.is_none()
        && local.is_none()
        && let Some(remote) = CaClientConfig::from_env(env)?
    {
        return Ok(CaSource::Istio(Box::new(
            remote.with_prefixed_vars(env.vars())?,
        )));
    }
    Ok(match plugin {
        Some(dir) => CaSource::Plugin(dir.into()),
        None => CaSource::Local(local.unwrap_or_else(|| default_local_dir.into()).into()),
    })
}

/// The xDS client: on when `XDS_ADDRESS` is set, or by default in Kubernetes when no local
/// state is given; an explicit `XDS_ADDRESS` next to a local state is a conflict.
pub fn xds(env: &impl Env, local: &LocalState) -> Result<Option<Box<XdsConfig>>, ConfigError> {
    let explicit = string(env, "XDS_ADDRESS").is_some();
    if *local != LocalState::None {
        if explicit {
            return Err(ConfigError::Conflict(
                "XDS_ADDRESS and LOCAL_XDS_PATH/LOCAL_XDS are mutually exclusive".into(),
            ));
        }
        return Ok(None);
    }
    XdsConfig::from_env(env)?
        .map(|c| c.with_prefixed_vars(env.vars()).map(Box::new))
        .transpose()
}

/// `INPOD_ENABLED` (default: on in Kubernetes, where istio-cni hands over the pods; off
/// elsewhere, where workloads are served on their own addresses) and its settings.
fn inpod(env: &impl Env) -> Result<Option<InpodConfig>, ConfigError> {
    let enabled = match string(env, "INPOD_ENABLED") {
        Some(_) => boolean(env, "INPOD_ENABLED")?,
        None => string(env, "KUBERNETES_SERVICE_HOST").is_some(),
    };
    if !enabled {
        return Ok(None);
    }
    let dns_capture = match string(env, "DNS_CAPTURE") {
        Some(_) => boolean(env, "DNS_CAPTURE")?,
        None => true,
    };
    Ok(Some(InpodConfig {
        zds: crate::inpod::zds::ZdsConfig::from_env(env),
        mark: parse::<u32>(env, "PACKET_MARK")?.unwrap_or(crate::inpod::rules::ZTUNNEL_MARK),
        dns_capture,
        resolv_conf: string(env, "DNS_RESOLV_CONF")
            .map_or_else(|| PathBuf::from("/etc/resolv.conf"), PathBuf::from),
        cluster_domain: string(env, "CLUSTER_DOMAIN")
            .unwrap_or_else(|| crate::dns::DEFAULT_CLUSTER_DOMAIN.into()),
    }))
}

fn outbound_policy(env: &impl Env) -> Result<OutboundPolicy, ConfigError> {
    match string(env, "OUTBOUND_TRAFFIC_POLICY").as_deref() {
        None | Some("ALLOW_ANY") => Ok(OutboundPolicy::AllowAny),
        Some("REGISTRY_ONLY") => Ok(OutboundPolicy::RegistryOnly),
        Some(other) => Err(invalid(
            "OUTBOUND_TRAFFIC_POLICY",
            other,
            "expected ALLOW_ANY or REGISTRY_ONLY",
        )),
    }
}

fn listeners(env: &impl Env) -> Result<Listeners, ConfigError> {
    let ipv6 = parse::<bool>(env, "IPV6_ENABLED")?.unwrap_or(true);
    let any: IpAddr = if ipv6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let localhost: IpAddr = Ipv4Addr::LOCALHOST.into();
    // Our own knob for running several node proxies on one machine: the address the
    // wildcard listeners bind (e.g. a loopback address per node).
    let bind = parse::<IpAddr>(env, "ZTUNNEL_BIND_ADDRESS")?.unwrap_or(any);
    let port = |name: &'static str, default: u16| -> Result<u16, ConfigError> {
        Ok(parse::<u16>(env, name)?.unwrap_or(default))
    };
    let socks5 = boolean(env, "UNSTABLE_ENABLE_SOCKS5")?
        .then(|| {
            Ok::<_, ConfigError>(SocketAddr::new(
                localhost,
                port("SOCKS5_PORT", ports::SOCKS5)?,
            ))
        })
        .transpose()?;
    Ok(Listeners {
        outbound: SocketAddr::new(bind, port("OUTBOUND_PORT", ports::OUTBOUND)?),
        inbound_plaintext: SocketAddr::new(
            bind,
            port("INBOUND_PLAINTEXT_PORT", ports::INBOUND_PLAINTEXT)?,
        ),
        inbound_hbone: SocketAddr::new(bind, port("INBOUND_HBONE_PORT", ports::INBOUND_HBONE)?),
        socks5,
        admin: SocketAddr::new(localhost, port("ADMIN_PORT", ports::ADMIN)?),
        metrics: SocketAddr::new(bind, port("STATS_PORT", ports::METRICS)?),
        readiness: SocketAddr::new(bind, port("READINESS_PORT", ports::READINESS)?),
    })
}

/// Upstream's rule: `CONNECTION_TERMINATION_DEADLINE` when set; else from the pod's termination
/// grace period T: `max(T-5, 1)` s when T > 10, else `max(T-1, 1)` s; else 5 s.
fn drain_deadline(env: &impl Env) -> Result<Duration, ConfigError> {
    if let Some(d) = duration(env, "CONNECTION_TERMINATION_DEADLINE")? {
        return Ok(d);
    }
    Ok(
        match parse::<u64>(env, "TERMINATION_GRACE_PERIOD_SECONDS")? {
            Some(t) if t > 10 => Duration::from_secs((t - 5).max(1)),
            Some(t) => Duration::from_secs(t.saturating_sub(1).max(1)),
            None => Duration::from_secs(5),
        },
    )
}

fn hbone_config(env: &impl Env) -> Result<hbone::Config, ConfigError> {
    let mut c = hbone::Config::default();
    if let Some(v) = parse::<u32>(env, "HTTP2_STREAM_WINDOW_SIZE")? {
        c.window_size = v;
    }
    if let Some(v) = parse::<u32>(env, "HTTP2_CONNECTION_WINDOW_SIZE")? {
        c.connection_window_size = v;
    }
    if let Some(v) = parse::<u32>(env, "HTTP2_FRAME_SIZE")? {
        c.frame_size = v;
    }
    if let Some(v) = parse::<u32>(env, "POOL_MAX_STREAMS_PER_CONNECTION")? {
        c.pool_max_streams_per_connection = v;
    }
    if let Some(v) = duration(env, "POOL_UNUSED_RELEASE_TIMEOUT")? {
        c.pool_unused_release_timeout = v;
    }
    c.validate()
        .map_err(|e| ConfigError::Hbone(e.to_string()))?;
    Ok(c)
}

#[cfg(test)]
mod tests;
