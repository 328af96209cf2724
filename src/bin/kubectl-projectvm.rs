//! `kubectl projectvm`: a kubectl plugin (krew-style name: put `kubectl-projectvm` on PATH)
//! for what users otherwise do with jsonpath and base64. It reads and patches through the
//! API server with the current kubeconfig, as kubectl would; the views are in
//! `projectvm::cli`.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use projectvm::api::{ProjectVM, Run, RunPhase, START_ANNOTATION, STOP_ANNOTATION, Workspace};
use projectvm::cli::{self, CostRow, Kind};

#[derive(Parser)]
#[command(name = "kubectl projectvm", about = "Open, start, stop and inspect ProjectVMs, Workspaces and Runs")]
struct Args {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A Workspace's URL and password; `--browser` also opens the URL.
    Open {
        name: String,
        #[arg(long)]
        browser: bool,
    },
    /// Start a stopped VM (the start-request annotation; for runStrategy Manual).
    Start { name: String },
    /// Stop a running VM (the stop-request annotation; for runStrategy Manual).
    Stop { name: String },
    /// Conditions as a table, with the failing step's whole message.
    Status { name: String },
    /// Cost of the ProjectVMs and Workspaces in the namespace, with the total; with `-f`,
    /// what the ProjectVMs and Workspaces in a manifest would cost, before applying it.
    Cost {
        /// A manifest file (`-` for standard input) to estimate instead of the namespace.
        #[arg(short = 'f', long)]
        filename: Option<std::path::PathBuf>,
        /// A rates file in the operator's `--rates-file` format (default: the built-in
        /// e2/us-central1 prices).
        #[arg(long, requires = "filename")]
        rates: Option<std::path::PathBuf>,
    },
    /// A Run's log tail; `-f` follows it until the Run ends.
    Logs {
        run: String,
        #[arg(short, long)]
        follow: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // An estimate of a manifest needs no cluster.
    if let Command::Cost { filename: Some(file), rates } = &args.command {
        return estimate(file, rates.as_deref());
    }
    let config = kube::Config::infer().await.context("reading the kubeconfig")?;
    let ns = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("connecting to Kubernetes")?;
    match args.command {
        Command::Open { name, browser } => open(&client, &ns, &name, browser).await,
        Command::Start { name } => request(&client, &ns, &name, START_ANNOTATION, "start").await,
        Command::Stop { name } => request(&client, &ns, &name, STOP_ANNOTATION, "stop").await,
        Command::Status { name } => status(&client, &ns, &name).await,
        Command::Cost { .. } => cost(&client, &ns).await,
        Command::Logs { run, follow } => logs(&client, &ns, &run, follow).await,
    }
}

/// A ProjectVM or Workspace by name (ProjectVM first).
async fn vm_kind(client: &Client, ns: &str, name: &str) -> anyhow::Result<Kind> {
    if Api::<ProjectVM>::namespaced(client.clone(), ns).get_opt(name).await?.is_some() {
        return Ok(Kind::ProjectVM);
    }
    if Api::<Workspace>::namespaced(client.clone(), ns).get_opt(name).await?.is_some() {
        return Ok(Kind::Workspace);
    }
    bail!("no ProjectVM or Workspace {ns}/{name}")
}

async fn request(client: &Client, ns: &str, name: &str, annotation: &str, what: &str) -> anyhow::Result<()> {
    let value = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let patch = serde_json::json!({ "metadata": { "annotations": { annotation: value } } });
    let pp = PatchParams::default();
    match vm_kind(client, ns, name).await? {
        Kind::Workspace => {
            Api::<Workspace>::namespaced(client.clone(), ns).patch(name, &pp, &Patch::Merge(&patch)).await?;
        }
        _ => {
            Api::<ProjectVM>::namespaced(client.clone(), ns).patch(name, &pp, &Patch::Merge(&patch)).await?;
        }
    }
    println!("{what} requested for {ns}/{name} ({annotation}={value}); it applies with runStrategy Manual");
    Ok(())
}

async fn open(client: &Client, ns: &str, name: &str, browser: bool) -> anyhow::Result<()> {
    let ws = Api::<Workspace>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .with_context(|| format!("no Workspace {ns}/{name}"))?;
    let status = ws.status.clone().unwrap_or_default();
    let ready = projectvm::conditions::is_true(&status.vm.conditions, projectvm::conditions::types::READY);
    let (password, source) = match (&ws.spec.code_server.auth, &ws.spec.code_server.password_secret_ref) {
        (projectvm::api::CodeServerAuth::None, _) => (None, "none (auth: none)".to_string()),
        (_, Some(r)) => {
            (secret_value(client, ns, &r.name, &r.key).await, format!("in Secret {}/{} key {}", ns, r.name, r.key))
        }
        (_, None) => {
            let secret = status
                .vm
                .objects
                .as_ref()
                .and_then(|o| o.password_secret.clone())
                .unwrap_or_else(|| format!("{name}-code-server"));
            let found = secret_value(client, ns, &secret, "password").await;
            (found, format!("in Secret {ns}/{secret} (not readable with your credentials)"))
        }
    };
    print!("{}", cli::open_view(status.url.as_deref(), password.as_deref(), &source, ready));
    if browser && let Some(url) = &status.url {
        let opened = std::process::Command::new("xdg-open").arg(url).status().map(|s| s.success()).unwrap_or(false);
        if !opened {
            eprintln!("could not open a browser (xdg-open); open the URL above");
        }
    }
    Ok(())
}

async fn secret_value(client: &Client, ns: &str, name: &str, key: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await.ok()??;
    let bytes = s.data?.get(key)?.0.clone();
    String::from_utf8(bytes).ok().map(|v| v.trim().to_string())
}

async fn status(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    if let Some(p) = Api::<ProjectVM>::namespaced(client.clone(), ns).get_opt(name).await? {
        let s = p.status.clone().unwrap_or_default();
        print!("{}", cli::status_view(Kind::ProjectVM, ns, name, Some(cli::vm_phase(Some(&s))), &s.conditions));
        return Ok(());
    }
    if let Some(w) = Api::<Workspace>::namespaced(client.clone(), ns).get_opt(name).await? {
        let s = w.status.clone().unwrap_or_default();
        print!("{}", cli::status_view(Kind::Workspace, ns, name, Some(cli::vm_phase(Some(&s.vm))), &s.vm.conditions));
        if let Some(url) = s.url {
            println!("\nURL: {url}");
        }
        return Ok(());
    }
    if let Some(r) = Api::<Run>::namespaced(client.clone(), ns).get_opt(name).await? {
        let s = r.status.clone().unwrap_or_default();
        let phase = s.phase.map(|p| format!("{p:?}"));
        print!("{}", cli::status_view(Kind::Run, ns, name, phase, &s.conditions));
        return Ok(());
    }
    bail!("no ProjectVM, Workspace or Run {ns}/{name}")
}

async fn cost(client: &Client, ns: &str) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for p in Api::<ProjectVM>::namespaced(client.clone(), ns).list(&Default::default()).await? {
        let s = p.status.clone();
        rows.push(CostRow {
            kind: Kind::ProjectVM,
            name: p.name_any(),
            phase: cli::vm_phase(s.as_ref()),
            cost: s.and_then(|s| s.cost),
        });
    }
    for w in Api::<Workspace>::namespaced(client.clone(), ns).list(&Default::default()).await? {
        let s = w.status.clone().map(|s| s.vm);
        rows.push(CostRow {
            kind: Kind::Workspace,
            name: w.name_any(),
            phase: cli::vm_phase(s.as_ref()),
            cost: s.and_then(|s| s.cost),
        });
    }
    print!("{}", cli::cost_view(ns, &rows));
    Ok(())
}

fn estimate(file: &std::path::Path, rates: Option<&std::path::Path>) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| -> anyhow::Result<String> {
        if p == std::path::Path::new("-") {
            std::io::read_to_string(std::io::stdin().take(cli::MAX_MANIFEST_BYTES)).context("reading standard input")
        } else {
            let f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
            std::io::read_to_string(f.take(cli::MAX_MANIFEST_BYTES)).with_context(|| format!("reading {}", p.display()))
        }
    };
    let rates = match rates {
        Some(p) => projectvm::cost::Rates::from_yaml(&read(p)?).with_context(|| format!("parsing {}", p.display()))?,
        None => projectvm::cost::Rates::default(),
    };
    print!("{}", cli::estimate_view(&read(file)?, &rates)?);
    Ok(())
}

async fn logs(client: &Client, ns: &str, name: &str, follow: bool) -> anyhow::Result<()> {
    let api = Api::<Run>::namespaced(client.clone(), ns);
    let mut seen = String::new();
    loop {
        let run = api.get_opt(name).await?.with_context(|| format!("no Run {ns}/{name}"))?;
        let status = run.status.clone().unwrap_or_default();
        let tail = status.log_tail.clone().unwrap_or_default();
        let new = cli::new_log_lines(&seen, &tail);
        if !new.is_empty() {
            println!("{new}");
        }
        seen = tail;
        let finished = status.phase.is_some_and(RunPhase::finished);
        if !follow || finished {
            if finished || !follow {
                print!("{}", cli::run_summary(&status));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
