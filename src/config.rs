//! Operator configuration: command-line flags, each also readable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How the operator authenticates to Compute Engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CredentialsFlag {
    /// Application Default Credentials: Workload Identity, or a key file named by
    /// GOOGLE_APPLICATION_CREDENTIALS.
    Default,
    /// No credentials, for emulators.
    Anonymous,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// projectvm operator: one persistent Compute Engine VM per project, declared as a
/// Kubernetes resource.
#[derive(Clone, Debug, Parser)]
#[command(name = "projectvm-operator", version)]
pub struct Config {
    /// Google Cloud project the VMs live in.
    #[arg(long, env = "PROJECTVM_GCP_PROJECT")]
    pub gcp_project: String,
    /// Zone for resources that do not name one.
    #[arg(long, env = "PROJECTVM_DEFAULT_ZONE", default_value = "us-central1-a")]
    pub default_zone: String,
    /// Compute Engine endpoint override (an emulator's URL).
    #[arg(long, env = "PROJECTVM_COMPUTE_ENDPOINT")]
    pub compute_endpoint: Option<String>,
    /// Credentials for Compute Engine.
    #[arg(long, env = "PROJECTVM_CREDENTIALS", value_enum, default_value = "default")]
    pub credentials: CredentialsFlag,
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "PROJECTVM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "PROJECTVM_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PROJECTVM_LEASE_NAME", default_value = "projectvm-operator")]
    pub lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long the Lease holds without renewal: a follower takes over once this long has
    /// passed on its own monotonic clock since it last saw the Lease record change.
    #[arg(long, env = "PROJECTVM_LEASE_DURATION", default_value = "15s", value_parser = duration_flag)]
    pub lease_duration: Duration,
    /// The leader stops all work, and exits, when it has not renewed the Lease for this long
    /// (counted from the start of its last successful renewal). Shorter than the lease duration.
    #[arg(long, env = "PROJECTVM_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = duration_flag)]
    pub lease_renew_deadline: Duration,
    /// Time between tries to take or renew the Lease. Shorter than the renew deadline.
    #[arg(long, env = "PROJECTVM_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = duration_flag)]
    pub lease_retry_period: Duration,
    /// Log format.
    #[arg(long, env = "PROJECTVM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Long steps (SSH work on the VMs) running at once, across all resources.
    #[arg(long, env = "PROJECTVM_MAX_CONCURRENT_TASKS", default_value_t = 16)]
    pub max_concurrent_tasks: usize,
    /// Connect to the VMs' internal addresses (the operator runs inside the VPC).
    #[arg(long, env = "PROJECTVM_USE_INTERNAL_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub use_internal_ip: bool,
    /// YAML file with cost rates overriding the built-in e2/us-central1 table.
    #[arg(long, env = "PROJECTVM_RATES_FILE")]
    pub rates_file: Option<std::path::PathBuf>,
    /// Only watch this namespace (all namespaces when unset).
    #[arg(long, env = "PROJECTVM_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// SSH port on the VMs.
    #[arg(long, env = "PROJECTVM_SSH_PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// Where code-server is installed from when an image lacks it.
    #[arg(long, env = "PROJECTVM_CODE_SERVER_INSTALL_URL", default_value = "https://code-server.dev/install.sh")]
    pub code_server_install_url: String,
    /// VPC network for new instances.
    #[arg(long, env = "PROJECTVM_NETWORK")]
    pub network: Option<String>,
    /// Subnetwork for new instances.
    #[arg(long, env = "PROJECTVM_SUBNETWORK")]
    pub subnetwork: Option<String>,
    /// Seconds between steady-state checks of a resource that is Ready.
    #[arg(long, env = "PROJECTVM_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
}

/// A `15s` / `1m30s` duration flag.
fn duration_flag(s: &str) -> Result<Duration, String> {
    crate::clock::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration such as 15s or 1m30s"))
}
