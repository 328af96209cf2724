//! `gce-emulator`: the Compute Engine emulator as a process.
//!
//! `gce-emulator --listen 127.0.0.1:0 --backend nspawn --rootfs PATH --state-dir DIR --ready-file FILE`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use projectvm_testbed::gce::backend::nspawn::NspawnConfig;
use projectvm_testbed::gce::{BackendChoice, Config, serve};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// Records only; instances reach RUNNING after --boot-delay-ms.
    None,
    /// Real systemd-nspawn machines (root, --rootfs needed).
    Nspawn,
}

#[derive(Parser, Debug)]
#[command(version, about = "Compute Engine emulator for the projectvm test bed")]
struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0", env = "GCE_EMULATOR_LISTEN")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "none")]
    backend: Backend,
    /// Cached Debian root filesystem (testbed/scripts/build-rootfs.sh prints it).
    #[arg(long, env = "PROJECTVM_ROOTFS")]
    rootfs: Option<PathBuf>,
    /// `FAMILY=PATH`: instances of that image family boot this root filesystem instead
    /// (repeatable), e.g. a stock image without code-server.
    #[arg(long, value_parser = image_rootfs)]
    image_rootfs: Vec<(String, PathBuf)>,
    /// Where state.json and the machines' disks live (nspawn needs one).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Write the bound address (host:port) here once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// On exit, delete all instances (machines, disks, namespaces) instead of only powering off.
    #[arg(long)]
    cleanup_on_exit: bool,
    /// `none` backend: time from STAGING to RUNNING.
    #[arg(long, default_value_t = 200)]
    boot_delay_ms: u64,
    /// nspawn: seconds until sshd must answer.
    #[arg(long, default_value_t = 60)]
    boot_timeout_secs: u64,
    /// nspawn: seconds a clean poweroff may take before SIGKILL.
    #[arg(long, default_value_t = 30)]
    stop_timeout_secs: u64,
    /// Longest block of zoneOperations.wait, in seconds.
    #[arg(long, default_value_t = 120)]
    operation_wait_secs: u64,
    /// Test bridge and its gateway address.
    #[arg(long, default_value = "pvmbr0")]
    bridge: String,
    /// Last address handed to instances (the first is 10.213.0.16). The default fits the
    /// bed's /24 bridge; the `none` backend reaches nobody, so a benchmark of more than 235
    /// instances can widen it (e.g. 10.213.255.250).
    #[arg(long, default_value = "10.213.0.250")]
    last_address: std::net::Ipv4Addr,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn image_rootfs(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((family, path)) if !family.is_empty() && !path.is_empty() => Ok((family.to_string(), PathBuf::from(path))),
        _ => Err(format!("{s:?} is not FAMILY=PATH")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Machine disks (overlay upper/work dirs) must be traversable by the machines' own
    // non-root users, whatever umask the emulator was started with.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe {
        libc::umask(0o022);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        sub.json().init();
    } else {
        sub.init();
    }

    let mut cfg = Config::none_backend();
    cfg.state_dir = args.state_dir.clone();
    cfg.operation_wait_timeout = Duration::from_secs(args.operation_wait_secs);
    anyhow::ensure!(args.last_address >= cfg.first_address, "--last-address is below {}", cfg.first_address);
    cfg.last_address = args.last_address;
    cfg.backend = match args.backend {
        Backend::None => BackendChoice::None { boot_delay: Duration::from_millis(args.boot_delay_ms) },
        Backend::Nspawn => {
            let rootfs = args.rootfs.clone().context("--backend nspawn needs --rootfs (or PROJECTVM_ROOTFS)")?;
            let state_dir = args.state_dir.clone().context("--backend nspawn needs --state-dir")?;
            let mut n = NspawnConfig::new(rootfs, state_dir);
            n.bridge = args.bridge.clone();
            n.image_rootfs = args.image_rootfs.clone();
            n.boot_timeout = Duration::from_secs(args.boot_timeout_secs);
            n.stop_timeout = Duration::from_secs(args.stop_timeout_secs);
            BackendChoice::Nspawn(n)
        }
    };

    let running = serve(cfg, args.listen).await?;
    let addr = running.addr.to_string();
    if let Some(f) = &args.ready_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{addr}\n"))?;
        std::fs::rename(&tmp, f)?;
    }
    println!("{addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
    tracing::info!(cleanup = args.cleanup_on_exit, "shutting down: powering off machines");
    running.stop(args.cleanup_on_exit).await;
    if let Some(f) = &args.ready_file {
        let _ = std::fs::remove_file(f);
    }
    tracing::info!("bye");
    Ok(())
}
