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

/// A valid cluster name, or empty for "not set" (an empty environment variable).
fn parse_cluster_name(s: &str) -> Result<String, String> {
    if !s.is_empty() {
        crate::cloud::naming::valid_cluster_name(s)?;
    }
    Ok(s.to_string())
}

/// The configuration with its cluster name settled: the one given, or else the uid of the
/// `kube-system` Namespace (stable for the cluster's life, unique per cluster). Start-up
/// fails with what to do when neither is available.
fn shard_flag(s: &str) -> Result<crate::shard::ShardSelector, String> {
    crate::shard::ShardSelector::parse(s)
}

pub async fn with_cluster_name(mut config: Config, client: &kube::Client) -> anyhow::Result<Config> {
    config.cluster_name = config.cluster_name.filter(|n| !n.is_empty());
    if let Some(name) = &config.cluster_name {
        tracing::info!(cluster = %name, "cluster name from --cluster-name");
        return Ok(config);
    }
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let uid = match api.get("kube-system").await {
        Ok(ns) => ns.metadata.uid.unwrap_or_default(),
        Err(e) => anyhow::bail!(
            "no cluster name: set --cluster-name (PROJECTVM_CLUSTER_NAME, chart value clusterName), or let the \
             operator read the kube-system Namespace (get namespaces/kube-system) to use its uid: {e}"
        ),
    };
    let name = uid.to_ascii_lowercase();
    crate::cloud::naming::valid_cluster_name(&name).map_err(|e| {
        anyhow::anyhow!("the kube-system Namespace's uid is no usable cluster name ({e}); set --cluster-name")
    })?;
    tracing::info!(cluster = %name, "cluster name from the kube-system Namespace's uid");
    config.cluster_name = Some(name);
    Ok(config)
}

#[cfg(test)]
mod cluster_name_tests {
    use super::*;

    #[test]
    fn cluster_name_flag_is_validated() {
        let base = ["op", "--gcp-project", "p"];
        let c = Config::try_parse_from(base.iter().copied().chain(["--cluster-name", "cluster-b"])).unwrap();
        assert_eq!(c.cluster_name.as_deref(), Some("cluster-b"));
        assert!(Config::try_parse_from(base).unwrap().cluster_name.is_none());
        let empty = Config::try_parse_from(base.iter().copied().chain(["--cluster-name", ""])).unwrap();
        assert_eq!(empty.cluster_name.as_deref(), Some(""), "empty: settled like unset at start-up");
        let e = Config::try_parse_from(base.iter().copied().chain(["--cluster-name", "Prod.EU"])).unwrap_err();
        assert!(e.to_string().contains("only lowercase letters"), "{e}");
    }
}

/// projectvm operator: one persistent Compute Engine VM per project, declared as a
/// Kubernetes resource.
#[derive(Clone, Debug, Parser)]
#[command(name = "projectvm-operator", version)]
pub struct Config {
    /// Google Cloud project the VMs live in.
    #[arg(long, env = "PROJECTVM_GCP_PROJECT")]
    pub gcp_project: String,
    /// Name of this Kubernetes cluster, written on every instance (label `projectvm-cluster`)
    /// and part of its name, so clusters sharing a Google Cloud project never adopt or
    /// delete each other's instances. Lowercase letters, digits, `-` and `_`, at most 63.
    /// Default (also when empty): the uid of the `kube-system` Namespace, read at start-up.
    #[arg(long, env = "PROJECTVM_CLUSTER_NAME", value_parser = parse_cluster_name)]
    pub cluster_name: Option<String>,
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
    /// Reconciles running at once, per kind. Each holds its object's requests to the API
    /// server and Compute Engine in flight; unbounded, a thousand objects arriving together
    /// open as many connections at once. Long work runs as tasks, outside this limit.
    #[arg(long, env = "PROJECTVM_MAX_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Client-side rate limit of Compute Engine requests: `--compute-qps`, `--compute-burst`.
    #[command(flatten)]
    pub compute_limits: crate::cloud::ratelimit::ComputeLimits,
    /// Create VMs without an external address and connect to their internal ones (the operator
    /// runs inside the VPC): the recommended production setting.
    #[arg(long, env = "PROJECTVM_USE_INTERNAL_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub use_internal_ip: bool,
    /// Admit Workspaces with `codeServer.auth: none` (never on a VM with an external address).
    #[arg(long, env = "PROJECTVM_ALLOW_AUTH_NONE", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_auth_none: bool,
    /// YAML file with cost rates overriding the built-in e2/us-central1 table.
    #[arg(long, env = "PROJECTVM_RATES_FILE")]
    pub rates_file: Option<std::path::PathBuf>,
    /// Only watch these namespaces (comma-separated, or the flag repeated); all namespaces
    /// when empty. The chart's namespaced mode grants Roles in exactly these.
    #[arg(long, env = "PROJECTVM_WATCH_NAMESPACE", value_delimiter = ',')]
    pub watch_namespace: Vec<String>,
    /// Reconcile only the ProjectVMs and Workspaces whose labels match this label selector
    /// (and the Runs of those ProjectVMs), to split the objects among several operators, each
    /// with its own `--lease-name`. Following Flux, shards select
    /// `sharding.fluxcd.io/key in (NAME)` and the default operator `!sharding.fluxcd.io/key`.
    /// Empty: everything.
    #[arg(long, env = "PROJECTVM_SHARD_SELECTOR", default_value = "", value_parser = shard_flag)]
    pub shard_selector: crate::shard::ShardSelector,
    /// SSH port on the VMs.
    #[arg(long, env = "PROJECTVM_SSH_PORT", default_value_t = 22)]
    pub ssh_port: u16,
    /// VPC network for new instances.
    #[arg(long, env = "PROJECTVM_NETWORK")]
    pub network: Option<String>,
    /// Subnetwork for new instances.
    #[arg(long, env = "PROJECTVM_SUBNETWORK")]
    pub subnetwork: Option<String>,
    /// Seconds between steady-state checks of a resource that is Ready (at least 10). Each
    /// check reads the VM's activity and the zone's instance list, which is listed once per
    /// resync for all resources.
    #[arg(long, env = "PROJECTVM_RESYNC_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..))]
    pub resync_seconds: u64,
    /// The most a Run may copy to Cloud Storage (its log and artifacts together), in bytes;
    /// past it only the log is copied and the Run says `ArtifactsTooLarge`.
    #[arg(long, env = "PROJECTVM_RUN_ARTIFACTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub run_artifacts_max_bytes: u64,
    /// Cloud Storage bucket Run artifacts are copied to. Without it, Runs still run
    /// and keep their log tail in status, and say their artifacts were not copied. The
    /// operator's Google service account needs
    /// `roles/storage.objectCreator` on it.
    #[arg(long, env = "PROJECTVM_ARTIFACT_BUCKET")]
    pub artifact_bucket: Option<String>,
    /// Object name prefix for artifacts in the bucket (objects are `<prefix>/...`).
    #[arg(long, env = "PROJECTVM_ARTIFACT_PREFIX", default_value = "runs")]
    pub artifact_prefix: String,
    /// Cloud Storage endpoint override (an emulator's URL; it must listen on port 80 or 443).
    #[arg(long, env = "PROJECTVM_STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,
    /// code-server version a Workspace gets; a VM with another one (or none) gets this one.
    #[arg(long, env = "PROJECTVM_CODE_SERVER_VERSION", default_value = "4.100.3", value_parser = code_server_version)]
    pub code_server_version: String,
    /// Standalone release tarball to install code-server from, downloaded by the VM;
    /// `{version}` is replaced by the version.
    #[arg(
        long,
        env = "PROJECTVM_CODE_SERVER_URL",
        default_value = "https://github.com/coder/code-server/releases/download/v{version}/code-server-{version}-linux-amd64.tar.gz"
    )]
    pub code_server_url: String,
    /// sha256 of that tarball: required for installing (without it, only VMs that already
    /// have the version serve Workspaces).
    #[arg(long, env = "PROJECTVM_CODE_SERVER_SHA256", default_value = "", value_parser = sha256_flag)]
    pub code_server_sha256: String,
}

/// A version becomes a directory name on the VM: no separators, no leading dot.
fn code_server_version(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?} is not a version such as 4.100.3")) }
}

/// 64 hex digits (kept lowercase, as sha256sum prints them), or empty for none.
fn sha256_flag(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || (s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a sha256 is 64 hex digits".to_string())
    }
}

/// A `15s` / `1m30s` duration flag.
fn duration_flag(s: &str) -> Result<Duration, String> {
    crate::clock::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration such as 15s or 1m30s"))
}

impl Config {
    /// Where code-server comes from, for the Workspace step.
    pub fn code_server_source(&self) -> crate::guest::CodeServerSource {
        crate::guest::CodeServerSource {
            url_template: self.code_server_url.clone(),
            version: self.code_server_version.clone(),
            sha256: self.code_server_sha256.clone(),
        }
    }

    /// The namespaces to watch, without blanks and duplicates; empty means all namespaces.
    /// `--resync-seconds` as a duration.
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds)
    }

    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ns in self.watch_namespace.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if !out.iter().any(|o| o == ns) {
                out.push(ns.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["projectvm-operator", "--gcp-project", "p"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn watch_namespace_is_one_or_a_list() {
        assert!(parse(&[]).watched_namespaces().is_empty(), "unset: all namespaces");
        assert_eq!(parse(&["--watch-namespace", "team-a"]).watched_namespaces(), ["team-a"]);
        assert_eq!(parse(&["--watch-namespace", "team-a,team-b"]).watched_namespaces(), ["team-a", "team-b"]);
        assert_eq!(
            parse(&["--watch-namespace", "team-a", "--watch-namespace", "team-b,team-a"]).watched_namespaces(),
            ["team-a", "team-b"]
        );
        // An empty value (the chart's default) is all namespaces, not a namespace named "".
        assert!(parse(&["--watch-namespace", ""]).watched_namespaces().is_empty());
        assert_eq!(parse(&["--watch-namespace", " team-a , ,team-b"]).watched_namespaces(), ["team-a", "team-b"]);
    }

    #[test]
    fn artifact_flags() {
        let c = parse(&[]);
        assert_eq!((c.artifact_bucket, c.artifact_prefix.as_str(), c.storage_endpoint), (None, "runs", None));
        let c = parse(&[
            "--artifact-bucket",
            "arts",
            "--artifact-prefix",
            "ci/runs",
            "--storage-endpoint",
            "http://10.213.0.3",
        ]);
        assert_eq!(c.artifact_bucket.as_deref(), Some("arts"));
        assert_eq!(c.artifact_prefix, "ci/runs");
        assert_eq!(c.storage_endpoint.as_deref(), Some("http://10.213.0.3"));
    }

    #[test]
    fn code_server_flags() {
        let c = parse(&[]);
        assert_eq!(
            c.code_server_source().url(),
            "https://github.com/coder/code-server/releases/download/v4.100.3/code-server-4.100.3-linux-amd64.tar.gz"
        );
        assert_eq!(c.code_server_sha256, "");
        let sha = "AB".repeat(32);
        let c = parse(&["--code-server-version", "4.101.0", "--code-server-sha256", &sha]);
        assert_eq!(c.code_server_source().sha256, "ab".repeat(32));
        assert!(c.code_server_source().url().contains("/v4.101.0/code-server-4.101.0-linux-amd64"));
        let bad = |args: &[&str]| {
            let mut argv = vec!["projectvm-operator", "--gcp-project", "p"];
            argv.extend_from_slice(args);
            Config::try_parse_from(argv).is_err()
        };
        assert!(bad(&["--code-server-version", "../etc"]));
        assert!(bad(&["--code-server-version", ".hidden"]));
        assert!(bad(&["--code-server-version", ""]));
        assert!(bad(&["--code-server-sha256", "abc"]));
        assert!(bad(&["--code-server-sha256", &"g".repeat(64)]));
    }
}
