//! projectvm: a Kubernetes operator that gives every project its own persistent Compute
//! Engine VM and keeps it ready to work in.
//!
//! A map of the crate:
//! - [`api`]: the custom resources (`ProjectVM`, `Workspace`) and their admission rules.
//! - [`controller`]: the controllers and the shared reconcile pipeline.
//! - [`engine`]: step graphs, pure planners, and the background task registry.
//! - [`guest`]: the scripts steps run on the VM, and reading git's output.
//! - [`cloud`]: the Compute Engine edge (a narrow trait and its google-cloud-compute-v1 implementation).
//! - [`ssh`]: the SSH edge (russh, pinned host keys, pooled connections).
//! - [`clock`]: durations and status timestamps; [`shell`]: quoting for VM commands.
//! - [`text`]: cutting outside text on character boundaries.
//! - [`conditions`], [`cost`], [`metrics`], [`leader`], [`server`], [`config`], [`telemetry`].

pub mod api;
pub mod clock;
pub mod cloud;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod cost;
pub mod engine;
pub mod guest;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod shell;
pub mod ssh;
pub mod telemetry;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

/// Runs the operator until SIGTERM/SIGINT or loss of leadership.
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    let rates = match &config.rates_file {
        Some(p) => {
            cost::Rates::from_yaml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        None => cost::Rates::default(),
    };
    let credentials = match config.credentials {
        config::CredentialsFlag::Default => cloud::gce::CredentialsMode::Default,
        config::CredentialsFlag::Anonymous => cloud::gce::CredentialsMode::Anonymous,
    };
    let compute = cloud::gce::GceCompute::new(&config.gcp_project, config.compute_endpoint.as_deref(), credentials)
        .await
        .context("creating the Compute Engine client")?;
    let client = kube::Client::try_default().await.context("connecting to Kubernetes")?;
    let config = config::with_cluster_name(config, &client).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(server::serve(config.metrics_addr, metrics.clone(), ready.clone()));

    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    let lost_leadership: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = if config.leader_election {
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("projectvm-{}", std::process::id()));
        ready.store(true, Ordering::Relaxed);
        let cfg = leader::LeaseConfig {
            name: config.lease_name.clone(),
            namespace: config.lease_namespace.clone(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        Box::pin(leader::acquire(client.clone(), cfg).await)
    } else {
        Box::pin(futures::future::pending())
    };
    ready.store(true, Ordering::Relaxed);
    let edges = controller::Edges {
        client: client.clone(),
        cluster: Arc::new(controller::cluster::KubeCluster::new(client.clone())),
        compute: Arc::new(compute),
        vm: Arc::new(controller::vm::LiveVms::new()),
    };
    let (ctx, wakeups) = controller::Context::new(edges, config, rates, metrics);
    tokio::select! {
        _ = controller::run(client, ctx, wakeups, shutdown) => tracing::info!("controllers stopped"),
        _ = lost_leadership => anyhow::bail!("lost leadership; exiting so a new leader can take over"),
        r = server => { r.context("metrics server task")?.context("metrics server")?; }
    }
    Ok(())
}
