//! projectvm: a Kubernetes operator that gives every project its own persistent Compute
//! Engine VM and keeps it ready to work in.
//!
//! A map of the crate:
//! - [`api`]: the custom resources (`ProjectVM`, `Workspace`) and their admission rules.
//! - [`controller`]: the ProjectVM and Workspace controllers and their shared reconcile pipeline.
//! - [`run`]: the Run controller (work executed on a ProjectVM, its log and artifacts).
//! - [`storage`]: the Cloud Storage edge Run artifacts are copied to.
//! - [`engine`]: step graphs, pure planners, and the background task registry.
//! - [`guest`]: the scripts steps run on the VM, and reading git's output.
//! - [`cloud`]: the Compute Engine edge (a narrow trait and its google-cloud-compute-v1 implementation).
//! - [`ssh`]: the SSH edge (russh, pinned host keys, pooled connections).
//! - [`storage`]: the Cloud Storage edge for Run artifacts (a narrow trait, google-cloud-storage, an in-memory double).
//! - [`clock`]: durations and status timestamps; [`shell`]: quoting for VM commands.
//! - [`text`]: cutting outside text on character boundaries.
//! - [`leader`] and [`fence`]: one leader at a time, and nothing issued once it is unsure.
//! - [`cli`]: what the `kubectl projectvm` plugin prints.
//! - [`conditions`], [`cost`], [`metrics`], [`server`], [`config`], [`telemetry`].

pub mod api;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod cost;
pub mod engine;
pub mod fence;
pub mod guest;
pub mod kube_requests;
pub mod leader;
pub mod metrics;
pub mod run;
pub mod server;
pub mod shard;
pub mod shell;
pub mod ssh;
pub mod storage;
pub mod telemetry;
pub mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

/// How long SIGTERM waits for running reconciles before giving the lease up anyway (well
/// inside the chart's 30 s termination grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

fn server_ended(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    r.context("metrics server task")?.context("metrics server")?;
    anyhow::bail!("the metrics server stopped")
}

/// A one-thread runtime for leader election, shut down (without blocking) when dropped.
struct LeaseRuntime(Option<tokio::runtime::Runtime>);

impl LeaseRuntime {
    fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lease")
            .enable_all()
            .build()
            .context("starting the leader-election runtime")?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running").handle()
    }
}

impl Drop for LeaseRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context would panic.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT (then stops the controllers, releases the lease and
/// returns `Ok`) or loss of leadership (an error: the process exits non-zero and comes back
/// as a follower).
pub async fn run(config: config::Config) -> anyhow::Result<()> {
    run_with_vms(config, Arc::new(controller::vm::LiveVms::new())).await
}

/// [`run`] with another VM edge: the scale benchmark's scripted guests stand in for SSH and
/// code-server there (its binary is not the operator's; the operator always runs [`run`]).
pub async fn run_with_vms(config: config::Config, vms: Arc<dyn controller::vm::VmAccess>) -> anyhow::Result<()> {
    let timings = leader::Timings::new(config.lease_duration, config.lease_renew_deadline, config.lease_retry_period)
        .map_err(|e| anyhow::anyhow!(e))?;
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
    let metrics = Arc::new(metrics::Metrics::new());
    // One token bucket for the project: every Compute Engine request waits its turn there.
    let compute = cloud::gce::GceCompute::new(&config.gcp_project, config.compute_endpoint.as_deref(), credentials)
        .await
        .context("creating the Compute Engine client")?
        .with_rate_limit(Arc::new(cloud::ratelimit::RateLimiter::new(&config.compute_limits)))
        .with_request_metrics(cloud::metrics::ComputeRequests::registered(&metrics));
    let kube_requests = kube_requests::KubeRequests::registered(&metrics);
    // Run artifacts go to Cloud Storage with the same credentials, when a bucket is set.
    let artifacts =
        storage::store_from_config(&config, credentials).await.context("creating the Cloud Storage client")?;
    // Signal handlers first: a SIGTERM while standing for the lease ends the process cleanly.
    let mut signals = Box::pin(shutdown_signal()?);
    let kube_config = kube::Config::infer().await.context("connecting to Kubernetes")?;
    // The fence stops every GCE mutation, VM command and Kubernetes write once this replica
    // is no longer sure it leads (see `fence`); the Lease itself is written on a client of
    // its own, outside the fence.
    let fence = if config.leader_election { fence::Fence::closed() } else { fence::Fence::always_open() };
    // Counted inside the fence: only requests actually sent.
    let client = kube::client::ClientBuilder::try_from(kube_config.clone())
        .context("connecting to Kubernetes")?
        .with_layer(&kube_requests::CountLayer(kube_requests.clone()))
        .with_layer(&fence::FenceLayer(fence.clone()))
        .build();
    // Reads only: allowed through the fence before this replica leads.
    let config = config::with_cluster_name(config, &client).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut server = tokio::spawn(server::serve(config.metrics_addr, metrics.clone(), ready.clone()));

    // The Lease is taken and renewed on a runtime of its own, so reconcile work that keeps
    // the main workers busy (SSH handshakes, large answers; slow in a debug build) can never
    // delay a renewal past the renew deadline.
    let lease_runtime = LeaseRuntime::new()?;
    metrics.set_leader(&config.lease_name, !config.leader_election);
    let mut leadership = if config.leader_election {
        let cfg = leader::LeaseConfig {
            name: config.lease_name.clone(),
            namespace: config.lease_namespace.clone(),
            identity: leader::identity(),
            timings,
        };
        let (fence, ready) = (fence.clone(), ready.clone());
        let mut acquire = lease_runtime.handle().spawn(async move {
            // Made on the lease runtime: the client's connection worker runs there too.
            let lease_client = kube::client::ClientBuilder::try_from(kube_config)
                .context("connecting to Kubernetes")?
                .with_layer(&kube_requests::CountLayer(kube_requests))
                .build();
            let store = leader::KubeLeases::new(lease_client, &cfg.namespace, &cfg.name);
            anyhow::Ok(leader::Elector::new(store, cfg, fence, ready).acquire().await)
        });
        tokio::select! {
            l = &mut acquire => Some(l.context("the lease task")??),
            _ = &mut signals => {
                acquire.abort();
                tracing::info!("shutting down before leading");
                return Ok(());
            }
            r = &mut server => return server_ended(r),
        }
    } else {
        ready.store(true, Ordering::Relaxed);
        None
    };
    metrics.set_leader(&config.lease_name, true);
    let edges = controller::Edges {
        client: client.clone(),
        cluster: Arc::new(controller::cluster::KubeCluster::new(client.clone())),
        compute: Arc::new(fence::FencedCompute::new(Arc::new(compute), fence.clone())),
        vm: Arc::new(fence::FencedVms::new(vms, fence.clone())),
        artifacts,
    };
    let (ctx, wakeups) = controller::Context::new(edges, config, rates, metrics);
    let (stop_controllers, controllers_stopping) = tokio::sync::oneshot::channel::<()>();
    let controllers = controller::run(client, ctx.clone(), wakeups, async {
        let _ = controllers_stopping.await;
    });
    tokio::pin!(controllers);
    let mut stopped = false;
    tokio::select! {
        _ = &mut controllers => stopped = true,
        why = leader::lost(&mut leadership) => {
            // The fence is already closed; drop the controllers and their tasks now.
            ctx.metrics.set_leader(&ctx.config.lease_name, false);
            ctx.tasks.abort_all();
            anyhow::bail!("lost leadership ({why}); exiting so that this process comes back as a follower");
        }
        _ = &mut signals => tracing::info!("shutting down: stopping the controllers"),
        r = &mut server => return server_ended(r),
    }
    // Let running reconciles finish (still leading and renewing), within a bound.
    let _ = stop_controllers.send(());
    if !stopped {
        tokio::select! {
            _ = &mut controllers => {}
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers did not stop in time"),
            why = leader::lost(&mut leadership) => {
                ctx.tasks.abort_all();
                anyhow::bail!("lost leadership while shutting down ({why})");
            }
        }
    }
    tracing::info!("controllers stopped");
    ctx.tasks.abort_all();
    if let Some(l) = leadership {
        ctx.metrics.set_leader(&ctx.config.lease_name, false);
        l.step_down().await;
    }
    Ok(())
}
