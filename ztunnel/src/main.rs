//! The `ztunnel` binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Less memory per connection than the system allocator; see [`ztunnel::alloc`].
#[global_allocator]
static ALLOCATOR: ztunnel::alloc::Allocator = ztunnel::alloc::ALLOCATOR;

/// ztunnel: the ambient mesh node proxy.
///
/// Without a subcommand it runs the node proxy configured by Istio ztunnel's environment
/// variables (LOCAL_XDS_PATH, PROXY_MODE, NODE_NAME, ...); see `ztunnel run --help`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the node proxy configured by the environment (the default): the mesh state from
    /// LOCAL_XDS_PATH or LOCAL_XDS, shared mode (every HBONE workload of NODE_NAME, each on its
    /// own address) or PROXY_MODE=dedicated with PROXY_WORKLOAD_INFO=<ns>/<name>/<sa>,
    /// certificates from the local CA (LOCAL_CA_DIR) or a plug-in CA directory
    /// (CA_PLUGIN_DIR). SIGTERM, Ctrl-C or POST /quitquitquit drain it: listeners stop,
    /// connections get CONNECTION_TERMINATION_DEADLINE (default from
    /// TERMINATION_GRACE_PERIOD_SECONDS, else 5s) to finish.
    Run,
    /// Runs a local mesh on loopback addresses: one ztunnel per node of the local config
    /// (default: the embedded examples/localhost.yaml), demo applications, and a demo client;
    /// then keeps running for your own traffic until Ctrl-C.
    Quickstart {
        /// A local config file in Istio ztunnel's LOCAL_XDS_PATH schema (hot-reloaded).
        #[arg(long, env = "LOCAL_XDS_PATH")]
        config: Option<PathBuf>,
        /// Where the local CA keeps its root (generated on first run, reused after).
        #[arg(
            long,
            env = "ZTUNNEL_STATE_DIR",
            default_value = "target/ztunnel-state"
        )]
        state_dir: PathBuf,
        /// SOCKS5 port of every workload.
        #[arg(long, default_value_t = 15080)]
        socks5_port: u16,
        /// Exit after the demo client instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Opens an HBONE tunnel between two local workloads and reports what each side saw.
    Demo {
        /// Where the local CA keeps its root (generated on first run, reused after).
        #[arg(
            long,
            env = "ZTUNNEL_STATE_DIR",
            default_value = "target/ztunnel-state"
        )]
        state_dir: PathBuf,
        /// Megabytes sent through the tunnel and through plain TCP for the throughput line
        /// (0 skips it).
        #[arg(long, default_value_t = 512)]
        measure_mb: u64,
    },
    /// Runs a node agent in istio-cni's place, for VMs and tests: the pods of a YAML file
    /// (uid, name, namespace, serviceAccount, netns path, captureDns, exclude) get their
    /// capture rules installed and are handed to ztunnel over the ZDS socket; the file is
    /// hot-reloaded. Runs until SIGTERM or Ctrl-C; the rules are left in place on exit unless
    /// --remove-rules-on-exit.
    NodeAgent {
        /// The ZDS socket ztunnel connects to.
        #[arg(long, env = "INPOD_UDS", default_value = ztunnel::inpod::zds::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
        /// The pods file.
        #[arg(long)]
        pods: PathBuf,
        /// Remove every pod's capture rules when stopping.
        #[arg(long)]
        remove_rules_on_exit: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // The quickstart shows the access log (target `access`) by default.
    let default_filter = match command {
        Command::Run => "info",
        Command::Quickstart { .. } => "warn,access=info",
        Command::Demo { .. } => "warn",
        Command::NodeAgent { .. } => "info",
    };
    let log_level = std::sync::Arc::new(
        ztunnel::admin::logging::install(default_filter, ztunnel::admin::LogStream::Stdout)
            .context("failed to install the log subscriber")?,
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(command, Command::Run) {
        let available = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let workers = ztunnel::config::worker_threads(&ztunnel::config::ProcessEnv, available)
            .context("invalid configuration")?;
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    if matches!(command, Command::Run) {
        tracing::info!(workers = runtime.metrics().num_workers(), "worker threads");
    }
    match command {
        Command::Run => runtime.block_on(run(log_level)),
        Command::Quickstart {
            config,
            state_dir,
            socks5_port,
            once,
        } => {
            let opts = ztunnel::quickstart::Options {
                config,
                state_dir,
                socks5_port,
                log_level,
            };
            runtime.block_on(quickstart(opts, once))
        }
        Command::Demo {
            state_dir,
            measure_mb,
        } => runtime.block_on(demo(state_dir, measure_mb)),
        Command::NodeAgent {
            socket,
            pods,
            remove_rules_on_exit,
        } => runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let options = ztunnel::inpod::node_agent::NodeAgentOptions {
                remove_rules_on_shutdown: remove_rules_on_exit,
                ..Default::default()
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            let agent = ztunnel::inpod::node_agent::NodeAgentService::new(socket, pods)
                .with_options(options)
                .run(shutdown.clone());
            tokio::pin!(agent);
            let mut term =
                signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
            let reason = tokio::select! {
                result = &mut agent => return result.context("node agent failed"),
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "interrupt",
            };
            tracing::info!(reason, "shutting down");
            shutdown.cancel();
            agent.await.context("node agent failed")
        }),
    }
}

async fn run(log_level: std::sync::Arc<ztunnel::admin::ReloadLogLevel>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = ztunnel::config::Config::from_env(&ztunnel::config::ProcessEnv)
        .context("invalid configuration")?;
    let certificates = ztunnel::run::Certificates::from_config(&config)
        .await
        .context("failed to set up the certificate authority")?;
    let proxy = ztunnel::run::Proxy::start(config, certificates, log_level)
        .await
        .context("failed to start")?;
    let e = proxy.endpoints();
    tracing::info!(
        admin = %e.admin,
        metrics = %e.metrics,
        readiness = %e.readiness,
        "ztunnel started"
    );
    let ready = proxy.ready().clone();
    tokio::spawn(async move {
        ready.wait().await;
        tracing::info!("ready: mesh state and certificates loaded");
    });
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let quit = proxy.quit_requested();
    let reason = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "interrupt",
        () = quit.cancelled() => "quitquitquit",
    };
    tracing::info!(reason, "shutting down gracefully");
    // A second signal stops at once.
    tokio::select! {
        () = proxy.drain() => {}
        _ = term.recv() => tracing::warn!("second SIGTERM, exiting without waiting for connections"),
        _ = tokio::signal::ctrl_c() => tracing::warn!("second interrupt, exiting without waiting for connections"),
    }
    Ok(())
}

async fn quickstart(opts: ztunnel::quickstart::Options, once: bool) -> anyhow::Result<()> {
    let q = ztunnel::quickstart::start(&opts)
        .await
        .context("quickstart failed to start")?;
    println!();
    println!(
        "local CA root: {}",
        opts.state_dir.join("root-cert.pem").display()
    );
    for (node, proxies) in &q.nodes {
        for p in proxies {
            let socks = p
                .socks5
                .map(|a| format!(", socks5 {a}"))
                .unwrap_or_default();
            println!(
                "ztunnel {node}: workload {} — hbone {}{socks}",
                p.uid, p.inbound
            );
        }
    }
    for (node, e) in &q.endpoints {
        println!(
            "ztunnel {node}: metrics http://{}/stats/prometheus, config http://{}/config_dump, ready http://{}/healthz/ready",
            e.metrics, e.admin, e.readiness
        );
    }
    for (name, addr) in &q.apps {
        println!("application {name} on {addr}");
    }
    println!();
    println!("demo client {} via {}:", q.client_identity, q.client_socks5);
    for t in &q.trials {
        match (&t.answer, t.socks_reply) {
            (Some(answer), 0) => println!("  {:<45} -> {answer}", t.target),
            (_, 2) => println!("  {:<45} -> refused: not allowed by policy", t.target),
            (_, code) => println!("  {:<45} -> failed (socks5 reply {code})", t.target),
        }
    }
    println!();
    println!("try it yourself:");
    println!(
        "  curl --socks5-hostname {} http://httpbin.default.svc.cluster.local/",
        q.client_socks5
    );
    if once {
        return Ok(());
    }
    println!("(Ctrl-C or POST /quitquitquit to stop)");
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal.context("waiting for Ctrl-C")?,
        _ = q.quit.cancelled() => {}
    }
    Ok(())
}

async fn demo(state_dir: PathBuf, measure_mb: u64) -> anyhow::Result<()> {
    let measure = (measure_mb > 0).then_some(measure_mb << 20);
    let r = ztunnel::demo::run(&state_dir, measure)
        .await
        .context("demo failed")?;
    println!("local CA root:            {}", r.ca_root.display());
    println!("client workload:          {}", r.client);
    println!("server workload:          {}", r.server);
    println!("client verified server:   {}", r.client_saw);
    println!("server verified client:   {}", r.server_saw);
    println!("CONNECT authority:        {}", r.authority);
    if let Some(f) = r.forwarded_for {
        println!("forwarded for:            {f}");
    }
    println!(
        "application received:     {:?}",
        String::from_utf8_lossy(&r.app_received)
    );
    println!(
        "reply through the tunnel: {:?}",
        String::from_utf8_lossy(&r.reply)
    );
    if let Some((tunnel, direct)) = r.throughput {
        println!(
            "throughput, {measure_mb} MiB:     through the tunnel and the inbound hop {:.0} MB/s, \
             plain TCP {:.0} MB/s ({:.0}%)",
            tunnel / 1e6,
            direct / 1e6,
            100.0 * tunnel / direct
        );
    }
    println!("full benchmark:           cargo bench -p hbone --bench hbone");
    Ok(())
}
