//! The `waypoint` binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use waypoint::run::RunConfig;
use waypoint::source::{SourceFlags, WaypointNode};
use waypoint::stages::inbound_vip::limits::DownstreamLimits;
use waypoint::telemetry::{AccessLog, AccessLogFormat};

/// ztunnel's allocator: fewer cycles per request than the system allocator (the request path
/// allocates headers, frames and buffers for every request) and less memory per connection;
/// see [`ztunnel::alloc`].
#[global_allocator]
static ALLOCATOR: ztunnel::alloc::Allocator = ztunnel::alloc::ALLOCATOR;

/// waypoint: the ambient mesh L7 proxy.
///
/// Without a subcommand it is the proxy: it serves HBONE on 15008 as its service account's
/// identity for the services and workloads bound to it in the mesh state (a file: --state /
/// LOCAL_XDS_PATH; or istiod over xDS: XDS_ADDRESS, with ztunnel's variables), routes their
/// requests by the VirtualServices, DestinationRules and HTTPRoutes of its configuration
/// directory, and tunnels each request to the destination pod's ztunnel. Its certificate comes
/// from Istio's CA (CA_ADDRESS), a local CA (LOCAL_CA_DIR) or a plug-in CA (CA_PLUGIN_DIR).
/// `waypoint quickstart` runs a whole local mesh with a waypoint and shows its routing;
/// `waypoint generate|apply|list|status|delete` are istioctl's `waypoint` commands.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The mesh state: a file in Istio ztunnel's local config schema (hot-reloaded). Without
    /// it (or LOCAL_XDS, inline YAML) the state comes from istiod: XDS_ADDRESS (istiod's
    /// in-cluster address inside Kubernetes), XDS_ROOT_CA, AUTH_TOKEN, as for ztunnel.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    state: Option<String>,
    /// A directory of Kubernetes YAML (VirtualService, DestinationRule, ServiceEntry,
    /// HTTPRoute, GRPCRoute, RequestAuthentication, AuthorizationPolicy), hot-reloaded.
    #[arg(long, env = "WAYPOINT_CONFIG_DIR", conflicts_with = "config_source")]
    config_dir: Option<PathBuf>,
    /// Istio's mesh config (the `meshConfig` YAML of the `istio` ConfigMap), read for its
    /// `extensionProviders`: the external authorizers CUSTOM AuthorizationPolicies name.
    /// Hot-reloaded; a missing file means no providers. Empty disables it.
    #[arg(long, env = "MESH_CONFIG_FILE", default_value = waypoint::config::mesh::DEFAULT_MESH_CONFIG_PATH)]
    mesh_config: PathBuf,
    /// Where the L7 configuration comes from instead of a directory, as an address of
    /// Istio's meshConfig.configSources: `k8s://` watches the same kinds on the Kubernetes
    /// API server (in-cluster config or KUBECONFIG). Default: none (the directory, if any).
    #[arg(long, env = "WAYPOINT_CONFIG_SOURCE", value_parser = parse_config_source)]
    config_source: Option<ConfigSourceKind>,
    /// With `k8s://`: the namespaces whose objects are read (comma-separated). Default: all.
    #[arg(long, env = "WAYPOINT_CONFIG_NAMESPACES", value_delimiter = ',')]
    config_namespaces: Vec<String>,
    /// The waypoint's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// The waypoint's name: its Gateway, and the Service services name as their waypoint.
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    name: String,
    /// The service account whose identity the waypoint presents (default: the name).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// The trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    domain: String,
    /// The waypoint's own addresses (comma-separated).
    #[arg(long, env = "INSTANCE_IP", value_delimiter = ',')]
    instance_ip: Vec<IpAddr>,
    /// Local CA state directory (root generated on first run). Without it, CA_PLUGIN_DIR or
    /// CA_ADDRESS (Istio's CA, with CA_ROOT_CA; istiod inside Kubernetes) the local CA is in
    /// target/ztunnel-state.
    #[arg(long, env = "LOCAL_CA_DIR")]
    ca_dir: Option<String>,
    /// Istio plug-in CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem);
    /// overrides the local CA. Neither may be combined with CA_ADDRESS.
    #[arg(long, env = "CA_PLUGIN_DIR")]
    ca_plugin_dir: Option<String>,
    /// HBONE listener.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, waypoint::ports::HBONE)))]
    hbone_addr: SocketAddr,
    /// Admin server (served to localhost only).
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, waypoint::ports::ADMIN)))]
    admin_addr: SocketAddr,
    /// Metrics server.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, waypoint::ports::METRICS)))]
    metrics_addr: SocketAddr,
    /// Readiness server.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, waypoint::ports::READINESS)))]
    readiness_addr: SocketAddr,
    /// Access log encoding: TEXT or JSON (Istio's meshConfig.accessLogEncoding).
    #[arg(long, env = "ACCESS_LOG_ENCODING", default_value = "TEXT")]
    access_log_encoding: String,
    /// Access log file; empty disables the access log (Istio's meshConfig.accessLogFile).
    #[arg(long, env = "ACCESS_LOG_FILE", default_value = "/dev/stdout")]
    access_log_file: String,
    /// Seconds connections get to finish on shutdown.
    #[arg(long, env = "TERMINATION_DRAIN_DURATION_SECONDS", default_value_t = 5)]
    drain_seconds: u64,
    /// The mesh's root namespace: RequestAuthentications there targeting the GatewayClass
    /// `istio-waypoint` apply to every waypoint.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = waypoint::authn::policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// How often a RequestAuthentication's jwksUri is fetched again (Go duration).
    #[arg(long, env = "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL", default_value = "20m", value_parser = go_duration)]
    jwks_refresh_interval: Duration,
    /// How long past a due refresh the previous jwksUri keys stay usable while fetches fail;
    /// after that, tokens of the issuer are denied until a fetch succeeds (Go duration).
    #[arg(long, env = "JWKS_GRACE_PERIOD", default_value = "40m", value_parser = go_duration)]
    jwks_grace: Duration,
    /// PEM bundle of the roots HTTPS jwksUri servers, and external hosts a DestinationRule
    /// originates TLS to without `caCertificates`, are verified with (default: the system
    /// bundle).
    #[arg(long, env = "SSL_CERT_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// What requests whose Host names no known service get (Istio's
    /// meshConfig.outboundTrafficPolicy.mode): ALLOW_ANY (PassthroughCluster, the original
    /// destination) or REGISTRY_ONLY (BlackHoleCluster, 502).
    #[arg(long, env = "OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY", value_parser = waypoint::egress::parse_outbound_policy)]
    outbound_traffic_policy: waypoint::egress::OutboundPolicy,
    /// Let the CUSTOM AuthorizationPolicies of one service name different extension
    /// providers (istiod's setting): each provider is asked for the requests its own
    /// policies match, in policy name order, any denial wins. Off by default, as Istio: such a
    /// service denies every request.
    #[arg(long, env = "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS", default_value_t = false, action = clap::ArgAction::Set)]
    multiple_custom_authz_providers: bool,
    /// Worker threads serving the HBONE connections (Envoy's --concurrency): each runs its
    /// own single-threaded runtime and keeps its own upstream connections, and serves every
    /// stream of the connections it is given. 0 = one per CPU core. The admin, metrics,
    /// readiness, xDS and configuration work runs on a thread of its own.
    #[arg(long, env = "WAYPOINT_CONCURRENCY", default_value_t = waypoint::app::DEFAULT_WORKERS)]
    concurrency: usize,
    /// How long resolved addresses of DNS ServiceEntries are used (Istio's
    /// meshConfig.dnsRefreshRate; Go duration).
    #[arg(long, env = "DNS_REFRESH_RATE", default_value = "60s", value_parser = go_duration)]
    dns_refresh_rate: Duration,
    /// Largest request header block in KiB; larger → 431 (Envoy max_request_headers_kb).
    #[arg(long, env = "MAX_REQUEST_HEADERS_KB", default_value_t = 60)]
    max_request_headers_kb: u32,
    /// Most request headers; more → 431 (Envoy max_headers_count).
    #[arg(long, env = "MAX_HEADERS_COUNT", default_value_t = 100)]
    max_headers_count: u32,
    /// HTTP/1.1: deadline from the first byte of a request head to its end; 0 disables it
    /// (Envoy request_headers_timeout; Go duration).
    #[arg(long, env = "REQUEST_HEADERS_TIMEOUT", default_value = "10s", value_parser = go_duration)]
    request_headers_timeout: Duration,
    /// A downstream connection with no request in flight for this long is closed; 0 disables
    /// it (Envoy idle_timeout; Go duration).
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "1h", value_parser = go_duration)]
    idle_timeout: Duration,
    /// Most downstream connections (tunnels) served at once; more are refused with 503.
    #[arg(long, env = "MAX_DOWNSTREAM_CONNECTIONS", default_value_t = 100_000)]
    max_downstream_connections: u32,
    /// Most concurrent streams on one downstream HTTP/2 connection (Envoy
    /// max_concurrent_streams).
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted; more → GOAWAY (rapid
    /// reset).
    #[arg(long, env = "MAX_PENDING_ACCEPT_RESET_STREAMS", default_value_t = 20)]
    max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the waypoint may reset for client errors; more → GOAWAY.
    #[arg(long, env = "MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = 1024)]
    max_local_error_reset_streams: usize,
    /// Consecutive HTTP/2 frames with an empty payload a client may send; more closes the
    /// connection (Envoy max_consecutive_inbound_frames_with_empty_payload).
    #[arg(
        long,
        env = "MAX_CONSECUTIVE_INBOUND_FRAMES_WITH_EMPTY_PAYLOAD",
        default_value_t = 1
    )]
    max_consecutive_inbound_frames_with_empty_payload: u32,
    /// Percentage (0-100) of requests traced when the caller sent no sampling decision
    /// (Istio's meshConfig.defaultConfig.tracing.sampling). An incoming sampled flag
    /// (traceparent flags, x-b3-sampled, b3) is always honoured.
    #[arg(long, env = "PILOT_TRACE_SAMPLING", default_value_t = waypoint::telemetry::trace::DEFAULT_SAMPLING_PERCENT, value_parser = sampling_percent)]
    trace_sampling: f64,
    /// OpenTelemetry collector receiving sampled spans over OTLP/gRPC, `http://host:port`
    /// (port 4317 by default; plaintext). Unset: no spans are exported, trace headers are
    /// still propagated.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = otlp_endpoint)]
    otlp_traces_endpoint: Option<http::Uri>,
    /// The waypoint's pod name, part of the spans' `node_id` (default: the name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// `service.name` of the exported spans (default: <name>.<namespace>).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    otel_service_name: Option<String>,
    /// Most spans waiting for export; more are dropped and counted.
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048)]
    otel_bsp_max_queue_size: usize,
    /// Longest wait, in milliseconds, before a partial batch of spans is exported.
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5000)]
    otel_bsp_schedule_delay: u64,
    /// Most spans per export call.
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512)]
    otel_bsp_max_export_batch_size: usize,
    /// Deadline, in milliseconds, of one export call.
    #[arg(long, env = "OTEL_BSP_EXPORT_TIMEOUT", default_value_t = 30000)]
    otel_bsp_export_timeout: u64,
}

/// A sampling percentage in [0, 100].
fn sampling_percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
    }
}

/// An OTLP/gRPC collector endpoint.
fn otlp_endpoint(s: &str) -> Result<http::Uri, String> {
    waypoint::telemetry::otlp::parse_endpoint(s).map_err(|e| e.to_string())
}

/// Parses a Go-style duration (`20m`, `1h30m`, `90s`).
fn go_duration(s: &str) -> Result<Duration, String> {
    waypoint::config::duration::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a local mesh on loopback addresses from the embedded examples (no root, no
    /// Kubernetes): one ztunnel per node of examples/localhost.yaml with demo applications, a
    /// waypoint on 127.0.0.9 in front of `reviews` v1/v2/v3 with the VirtualService of
    /// examples/waypoint/reviews-routing.yaml (`end-user: jason` → v2, the rest 80/20 v1/v3),
    /// and demo clients whose results are printed: the L4 requests of `ztunnel quickstart`,
    /// then requests to `reviews` counted per version, with the waypoint's access log and
    /// metrics. Then keeps running for your own traffic until Ctrl-C.
    Quickstart {
        /// Exit after the report instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Where the mesh state, the L7 configuration and the local CA's root are kept (the
        /// configuration is rewritten at every start, the CA root reused).
        #[arg(
            long,
            env = "WAYPOINT_STATE_DIR",
            default_value = "target/waypoint-state"
        )]
        state_dir: PathBuf,
    },
    #[command(flatten)]
    Waypoint(waypoint::cli::Command),
    /// Runs the waypoint controller: for every Gateway API Gateway whose GatewayClass names
    /// the configured controller, creates the waypoint's ServiceAccount, Deployment and
    /// Service (server-side apply) and writes the Gateway's status. Talks to the API server of
    /// the in-cluster service account, or of KUBECONFIG.
    Controller {
        /// The configuration file (the chart's ConfigMap `config.yaml`).
        #[arg(long, default_value = "/etc/waypoint-controller/config.yaml")]
        config: PathBuf,
        /// Readiness server (`/healthz/ready`, ready once the Gateways are listed).
        #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, waypoint::ports::READINESS)))]
        readiness_addr: SocketAddr,
        /// Metrics server (`/stats/prometheus`).
        #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, waypoint::ports::METRICS)))]
        metrics_addr: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let command = cli.command.take();
    // The quickstart shows the ztunnels' access log (target `access`), not every info line.
    let default_filter = match command {
        None => "info",
        Some(Command::Quickstart { .. }) => "warn,access=info",
        // istioctl's output only: logs on request (RUST_LOG).
        Some(Command::Waypoint(_)) => "off",
        Some(Command::Controller { .. }) => "info",
    };
    let log_level: Arc<dyn ztunnel::admin::LogLevel> = Arc::new(
        ztunnel::admin::logging::install(default_filter, ztunnel::admin::LogStream::Stderr)
            .context("failed to install the log subscriber")?,
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if command.is_none() {
        // The proxy's traffic runs on its own worker threads (--concurrency); this runtime
        // keeps the admin, metrics, xDS and configuration work.
        builder.worker_threads(1);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    match command {
        None => runtime.block_on(run(cli, log_level)),
        Some(Command::Quickstart { once, state_dir }) => {
            let opts = waypoint::quickstart::Options::new(state_dir, log_level);
            runtime.block_on(quickstart(opts, once))
        }
        Some(Command::Waypoint(command)) => {
            let mut stdout = std::io::stdout().lock();
            let result = runtime.block_on(waypoint::cli::run(&command, &mut stdout));
            drop(stdout);
            if let Err(e) = result {
                // As istioctl: the message after `Error: ` on stderr, exit code 1.
                eprintln!("Error: {e}");
                drop(runtime);
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Controller {
            config,
            readiness_addr,
            metrics_addr,
        }) => runtime.block_on(controller(
            config,
            waypoint::k8s::ControllerOptions {
                readiness_addr,
                metrics_addr,
            },
        )),
    }
}

/// `waypoint controller`: reconciles Gateways until SIGTERM or Ctrl-C.
async fn controller(
    config: PathBuf,
    options: waypoint::k8s::ControllerOptions,
) -> anyhow::Result<()> {
    let settings = waypoint::k8s::ControllerConfig::load(&config)
        .with_context(|| format!("loading the controller configuration {}", config.display()))?;
    // kube's TLS uses the process-wide rustls provider: the one every other component uses.
    // An error means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server")?;
    let running = waypoint::k8s::Controller::start(client, settings, options)
        .await
        .context("starting the controller")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
    }
    running.shutdown().await;
    Ok(())
}

/// The L7 configuration sources other than a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigSourceKind {
    /// `k8s://`: the Kubernetes API server.
    Kubernetes,
}

fn parse_config_source(address: &str) -> Result<ConfigSourceKind, String> {
    match address {
        "k8s://" => Ok(ConfigSourceKind::Kubernetes),
        other => Err(format!(
            "unsupported config source {other:?}: the supported address is k8s:// (use --config-dir for a directory)"
        )),
    }
}

/// The proxy, configured by the flags and environment.
async fn run(cli: Cli, log_level: Arc<dyn ztunnel::admin::LogLevel>) -> anyhow::Result<()> {
    let service_account = cli.service_account.unwrap_or_else(|| cli.name.clone());
    let sources = waypoint::source::select(
        &SourceFlags {
            state: cli.state,
            ca_dir: cli.ca_dir,
            ca_plugin_dir: cli.ca_plugin_dir,
        },
        &WaypointNode {
            namespace: cli.namespace.clone(),
            name: cli.name.clone(),
            service_account: service_account.clone(),
            instance_ips: cli.instance_ip.clone(),
        },
        &ztunnel::config::ProcessEnv,
    )
    .context("choosing the mesh state and certificate sources")?;
    let format: AccessLogFormat = cli
        .access_log_encoding
        .parse()
        .context("ACCESS_LOG_ENCODING")?;
    let access_log = match cli.access_log_file.as_str() {
        "" => AccessLog::disabled(),
        "/dev/stdout" => AccessLog::stdout(format),
        path => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the access log {path}"))?;
            AccessLog::writer(format, file)
        }
    };
    let kubernetes = match cli.config_source {
        Some(ConfigSourceKind::Kubernetes) => Some(waypoint::run::KubeSource {
            client: {
                // As for the controller: kube's TLS uses the process-wide rustls provider.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                kube::Client::try_default().await.context(
                    "connecting to the Kubernetes API server (WAYPOINT_CONFIG_SOURCE=k8s://)",
                )?
            },
            settings: waypoint::config::kubernetes::KubeSourceSettings {
                namespaces: cli.config_namespaces,
                ..Default::default()
            },
        }),
        None => None,
    };
    let tracing = waypoint::telemetry::TracingSettings {
        sampling: cli.trace_sampling,
        pod_name: cli.pod_name.clone(),
        otlp: cli.otlp_traces_endpoint.map(|endpoint| {
            let service_name = cli
                .otel_service_name
                .unwrap_or_else(|| format!("{}.{}", cli.name, cli.namespace));
            waypoint::telemetry::otlp::OtlpSettings {
                max_queue_size: cli.otel_bsp_max_queue_size,
                schedule_delay: Duration::from_millis(cli.otel_bsp_schedule_delay),
                max_export_batch_size: cli.otel_bsp_max_export_batch_size,
                export_timeout: Duration::from_millis(cli.otel_bsp_export_timeout),
                ..waypoint::telemetry::otlp::OtlpSettings::new(endpoint, service_name)
            }
        }),
    };
    let config = RunConfig {
        state: sources.state,
        config_dir: cli.config_dir,
        mesh_config: (!cli.mesh_config.as_os_str().is_empty()).then_some(cli.mesh_config),
        kubernetes,
        service_account,
        namespace: cli.namespace,
        name: cli.name,
        trust_domain: cli.trust_domain,
        domain_suffix: cli.domain,
        instance_ips: cli.instance_ip,
        ca: sources.ca,
        hbone_addr: cli.hbone_addr,
        admin_addr: cli.admin_addr,
        metrics_addr: cli.metrics_addr,
        readiness_addr: cli.readiness_addr,
        drain_deadline: Duration::from_secs(cli.drain_seconds),
        root_namespace: cli.root_namespace,
        jwks: waypoint::authn::JwksSettings {
            refresh_interval: cli.jwks_refresh_interval,
            grace: cli.jwks_grace,
            ca_file: cli.jwks_ca_file.clone(),
            ..waypoint::authn::JwksSettings::default()
        },
        egress: waypoint::egress::EgressSettings {
            outbound_policy: cli.outbound_traffic_policy,
            ca_file: cli.jwks_ca_file,
            dns_refresh_rate: cli.dns_refresh_rate,
            ..waypoint::egress::EgressSettings::default()
        },
        tracing,
        multiple_custom_authz_providers: cli.multiple_custom_authz_providers,
        workers: match cli.concurrency {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        },
        downstream: DownstreamLimits {
            max_request_headers_kb: cli.max_request_headers_kb,
            max_headers_count: cli.max_headers_count,
            request_headers_timeout: cli.request_headers_timeout,
            idle_timeout: cli.idle_timeout,
            max_connections: cli.max_downstream_connections,
            max_concurrent_streams: cli.max_concurrent_streams,
            max_pending_accept_reset_streams: cli.max_pending_accept_reset_streams,
            max_local_error_reset_streams: cli.max_local_error_reset_streams,
            max_consecutive_inbound_frames_with_empty_payload: cli
                .max_consecutive_inbound_frames_with_empty_payload,
        },
    };
    let running = waypoint::run::start(config, Some(log_level), access_log)
        .await
        .context("starting the waypoint")?;
    let quit = running.quit.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = quit.cancelled() => tracing::info!("shutdown requested"),
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
    }
    running.shutdown().await;
    Ok(())
}

/// `waypoint quickstart`: the local mesh with a waypoint, its report, then (unless `once`)
/// your own traffic until Ctrl-C.
async fn quickstart(opts: waypoint::quickstart::Options, once: bool) -> anyhow::Result<()> {
    let q = waypoint::quickstart::start(&opts)
        .await
        .context("quickstart failed to start")?;
    println!();
    print!("{}", q.summary());
    if once {
        q.shutdown().await;
        return Ok(());
    }
    println!("(Ctrl-C or POST /quitquitquit to stop)");
    // From now on the waypoint's access log goes to stdout too, for your own requests.
    q.access_log.echo_to_stdout(true);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
        _ = q.mesh.quit.cancelled() => {}
        _ = q.waypoint.quit.cancelled() => {}
    }
    q.shutdown().await;
    Ok(())
}
