//! The `ztunnel` binary.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// ztunnel: the ambient mesh node proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    match cli.command {
        Command::Demo {
            state_dir,
            measure_mb,
        } => runtime.block_on(demo(state_dir, measure_mb)),
    }
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
