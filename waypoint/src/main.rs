//! The `waypoint` binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use waypoint::run::{CaSource, RunConfig};
use waypoint::telemetry::{AccessLog, AccessLogFormat};

/// waypoint: the ambient mesh L7 proxy.
///
/// Serves HBONE on 15008 as its service account's identity for the services and workloads
/// bound to it in the mesh state, routes their requests by the VirtualServices,
/// DestinationRules and HTTPRoutes of its configuration directory, and tunnels each request
/// to the destination pod's ztunnel.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The mesh state: a file in Istio ztunnel's local config schema (hot-reloaded).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    state: PathBuf,
    /// A directory of Kubernetes YAML (VirtualService, DestinationRule, ServiceEntry,
    /// HTTPRoute, GRPCRoute), hot-reloaded.
    #[arg(long, env = "WAYPOINT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
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
    /// Local CA state directory (root generated on first run).
    #[arg(long, env = "LOCAL_CA_DIR", default_value = "target/ztunnel-state")]
    ca_dir: PathBuf,
    /// Istio plug-in CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem);
    /// overrides the local CA.
    #[arg(long, env = "CA_PLUGIN_DIR")]
    ca_plugin_dir: Option<PathBuf>,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    /// Admin server (served to localhost only).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Metrics server.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Readiness server.
    #[arg(long, default_value = "0.0.0.0:15021")]
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
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none(),
                ),
        )
        .init();
    let log_level: Arc<dyn ztunnel::admin::LogLevel> =
        Arc::new(ztunnel::admin::ReloadLogLevel::new(reload));
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
    let config = RunConfig {
        state_path: cli.state,
        config_dir: cli.config_dir,
        service_account: cli.service_account.unwrap_or_else(|| cli.name.clone()),
        namespace: cli.namespace,
        name: cli.name,
        trust_domain: cli.trust_domain,
        domain_suffix: cli.domain,
        instance_ips: cli.instance_ip,
        ca: match cli.ca_plugin_dir {
            Some(dir) => CaSource::Plugin(dir),
            None => CaSource::Local(cli.ca_dir),
        },
        hbone_addr: cli.hbone_addr,
        admin_addr: cli.admin_addr,
        metrics_addr: cli.metrics_addr,
        readiness_addr: cli.readiness_addr,
        drain_deadline: Duration::from_secs(cli.drain_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime.block_on(async move {
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
    })
}
