//! What each step does, per kind: the step's inputs and fingerprint (pure), and the action
//! that runs them (SSH work on the VM, a health probe, or the route).

use std::time::Duration;

use kube::ResourceExt;

use super::secrets::Token;
use crate::api::{CodeServerAuth, ProjectVM, Workspace};
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::engine::{StepId, fingerprint};
use crate::guest::{self, CodeServerConfig, RepoSync, git};
use crate::ssh::{OutputChunk, SshError, SshPool, SshTarget};

/// Inputs resolved during the read phase that steps may need.
#[derive(Clone, Debug, Default)]
pub struct StepEnv {
    /// Instance id: part of every fingerprint, so a recreated instance re-runs every step.
    pub instance_id: String,
    /// Address the operator reaches the VM at.
    pub address: String,
    /// Repository token, when a Secret is referenced and readable.
    pub token: Option<Token>,
    /// Problem reading the referenced token Secret.
    pub token_problem: Option<String>,
    /// code-server password (Workspace with password auth).
    pub password: Option<Token>,
    pub code_server_install_url: String,
}

/// The action of a step with its inputs.
#[derive(Clone, Debug)]
pub enum Work {
    Prerequisites { packages: Vec<String>, script: Option<String> },
    Repository { sync: RepoSync, token: Option<Token>, host: String },
    CodeServer { cfg: CodeServerConfig, install_url: String },
    Health { url: String },
    Route { address: String },
}

/// A step ready to plan: its fingerprint and work, or why it cannot run.
pub type Prepared = Result<(String, Work), StepBlocked>;

/// A step that cannot run because of its inputs (e.g. a missing Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepBlocked {
    pub reason: &'static str,
    pub message: String,
}

/// Per-kind mapping from spec to step work.
pub trait KindWork {
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared;
}

fn repo_host(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|h| h.split(':').next().unwrap_or(h).to_string())
        .unwrap_or_default()
}

fn repository_work(
    env: &StepEnv,
    url: String,
    revision: Option<String>,
    path: String,
    depth: Option<i32>,
    user: &str,
    wants_token: bool,
) -> Prepared {
    if wants_token && env.token.is_none() {
        return Err(StepBlocked {
            reason: "SecretNotFound",
            message: env.token_problem.clone().unwrap_or_else(|| "credentials Secret not readable".into()),
        });
    }
    let helper = env.token.as_ref().map(|_| guest::credential_helper_path(user));
    let token_version = env.token.as_ref().map(|t| t.version.as_str()).unwrap_or("");
    let fp = fingerprint(&[
        &env.instance_id,
        &url,
        revision.as_deref().unwrap_or(""),
        &path,
        &depth.map(|d| d.to_string()).unwrap_or_default(),
        token_version,
    ]);
    let host = repo_host(&url);
    Ok((
        fp,
        Work::Repository {
            sync: RepoSync { url, revision, path, depth, credential_helper: helper, user: user.to_string() },
            token: env.token.clone(),
            host,
        },
    ))
}

impl KindWork for ProjectVM {
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared {
        let user = &self.spec.machine.user;
        match step {
            StepId::Prerequisites => {
                let packages = self.spec.prerequisites.effective_packages();
                let script = self.spec.prerequisites.script.clone();
                let fp = fingerprint(&[&env.instance_id, &packages.join(" "), script.as_deref().unwrap_or("")]);
                Ok((fp, Work::Prerequisites { packages, script }))
            }
            StepId::Repository => {
                let r = &self.spec.repository;
                repository_work(
                    env,
                    r.url.clone(),
                    r.revision.clone(),
                    r.path.trim_end_matches('/').to_string(),
                    r.depth,
                    user,
                    r.credentials_secret_ref.is_some(),
                )
            }
            other => {
                Err(StepBlocked { reason: "InternalError", message: format!("ProjectVM has no step {}", other.name()) })
            }
        }
    }
}

impl KindWork for Workspace {
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared {
        let user = &self.spec.machine.user;
        let port = self.spec.code_server.port;
        match step {
            StepId::Repository => {
                let r = &self.spec.repository;
                repository_work(
                    env,
                    r.clone_url(),
                    r.revision.clone(),
                    self.spec.effective_folder(),
                    r.depth,
                    user,
                    r.credentials_secret_ref.is_some(),
                )
            }
            StepId::CodeServer => {
                let password = match self.spec.code_server.auth {
                    CodeServerAuth::None => None,
                    CodeServerAuth::Password => match &env.password {
                        Some(p) => Some(p.clone()),
                        None => {
                            return Err(StepBlocked {
                                reason: "SecretNotFound",
                                message: "code-server password Secret not readable".into(),
                            });
                        }
                    },
                };
                let cfg = CodeServerConfig {
                    user: user.clone(),
                    port,
                    folder: self.spec.effective_folder(),
                    password: password.as_ref().map(|p| p.value.clone()),
                };
                let fp = fingerprint(&[
                    &env.instance_id,
                    &port.to_string(),
                    &cfg.folder,
                    self.spec.code_server.auth.as_str(),
                    password.as_ref().map(|p| p.version.as_str()).unwrap_or(""),
                ]);
                Ok((fp, Work::CodeServer { cfg, install_url: env.code_server_install_url.clone() }))
            }
            StepId::Health => {
                let url = format!("http://{}:{port}/healthz", env.address);
                Ok((fingerprint(&[&env.instance_id, &url]), Work::Health { url }))
            }
            StepId::Route => {
                let ingress = serde_json::to_string(&self.spec.ingress).unwrap_or_default();
                let fp = fingerprint(&[&env.instance_id, &env.address, &port.to_string(), &ingress, &self.name_any()]);
                Ok((fp, Work::Route { address: env.address.clone() }))
            }
            StepId::Prerequisites => {
                Err(StepBlocked { reason: "InternalError", message: "Workspace has no Prerequisites step".into() })
            }
        }
    }
}

/// Maps an SSH failure to a step outcome.
pub fn ssh_failure(step: StepId, e: &SshError) -> TaskOutcome {
    match e {
        SshError::HostKeyMismatch { host, expected, presented } => TaskOutcome::failed(
            "HostKeyMismatch",
            format!(
                "the VM at {host} presented host key {presented}, but the instance's guest attributes pin {expected}; refusing to connect"
            ),
        ),
        SshError::AuthFailed { host, user } => TaskOutcome::failed(
            "SSHAuthFailed",
            format!(
                "SSH login as {user} to the VM at {host} was refused; the operator's key may not be in the instance's ssh-keys metadata yet"
            ),
        ),
        SshError::Timeout { what, limit } => TaskOutcome::failed(
            "StepTimedOut",
            format!("step {} timed out after {}s: {what}", step.name(), limit.as_secs()),
        ),
        SshError::Unreachable { .. } | SshError::Connect(_) => TaskOutcome::failed(
            "SSHUnavailable",
            format!("step {}: the VM does not accept SSH connections: {e}", step.name()),
        ),
        other => TaskOutcome::failed("SSHUnavailable", format!("step {}: {other}", step.name())),
    }
}

/// How long a step waits for a VM that has just booted to accept the operator's SSH login.
const SSH_READY_BUDGET: Duration = Duration::from_secs(120);

/// Waits, bounded, until the VM accepts an SSH login. A VM reported RUNNING may still be
/// starting sshd or installing the operator's key; retrying here in short steps avoids
/// failing the step and waiting out the (much longer) step backoff. Anything but "not ready
/// yet" (a host key mismatch, say) is returned at once.
async fn wait_for_ssh(
    ssh: &SshPool,
    t: &SshTarget,
    budget: Duration,
    progress: &ProgressReporter,
) -> Result<(), SshError> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut pause = Duration::from_millis(250);
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ssh.exec(t, "true", None, remaining.min(Duration::from_secs(20)), None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_ready() && remaining > pause => {
                tracing::debug!(host = %t.host, error = %e, "VM not accepting SSH yet");
                progress.report(None, "waiting for the VM to accept SSH");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a step's SSH work on the VM. Never puts a secret on a command line or in the
/// outcome: tokens and passwords travel only as file contents.
pub async fn run_remote(
    ssh: SshPool,
    target: SshTarget,
    step: StepId,
    work: Work,
    fp: String,
    limit: Duration,
    progress: ProgressReporter,
) -> TaskOutcome {
    if let Err(e) = wait_for_ssh(&ssh, &target, SSH_READY_BUDGET.min(limit), &progress).await {
        return ssh_failure(step, &e);
    }
    let result = match work {
        Work::Prerequisites { packages, script } => {
            prerequisites(&ssh, &target, &packages, script.as_deref(), &fp, limit, &progress).await
        }
        Work::Repository { sync, token, host } => {
            repository(&ssh, &target, &sync, token.as_ref(), &host, limit, &progress).await
        }
        Work::CodeServer { cfg, install_url } => {
            code_server(&ssh, &target, &cfg, &install_url, &fp, limit, &progress).await
        }
        Work::Health { .. } | Work::Route { .. } => {
            Ok(TaskOutcome::failed("InternalError", "inline step run as a task"))
        }
    };
    result.unwrap_or_else(|e| ssh_failure(step, &e))
}

const SHORT: Duration = Duration::from_secs(60);

async fn prerequisites(
    ssh: &SshPool,
    t: &SshTarget,
    packages: &[String],
    script: Option<&str>,
    fp: &str,
    limit: Duration,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    // Cheap check: the VM records the fingerprint it last completed with.
    let marker = ssh.exec(t, &guest::read_marker("prerequisites"), None, SHORT, None).await?;
    if String::from_utf8_lossy(&marker.stdout).trim() == fp {
        return Ok(TaskOutcome::ok("Installed", "prerequisites already installed"));
    }
    progress.report(None, format!("installing {} package(s)", packages.len()));
    if let Some(s) = script {
        ssh.write_file(t, guest::PREREQUISITES_SCRIPT, s.as_bytes(), 0o700, Some("root"), SHORT).await?;
    }
    let body = guest::prerequisites(packages, script.is_some(), fp);
    let out = ssh.exec(t, guest::RUN_AS_ROOT, Some(body.as_bytes()), limit, None).await?;
    if out.exit_status == 0 {
        return Ok(TaskOutcome::ok(
            "Installed",
            format!("installed: {}", if packages.is_empty() { "no packages".to_string() } else { packages.join(", ") }),
        ));
    }
    let tail = ssh.exec(t, &guest::prerequisites_log_tail(20), None, SHORT, None).await?;
    Ok(TaskOutcome::failed(
        "PrerequisitesFailed",
        format!(
            "prerequisites failed (exit {}); last lines of {}:\n{}",
            out.exit_status,
            guest::PREREQUISITES_LOG,
            String::from_utf8_lossy(&tail.stdout).trim_end()
        ),
    ))
}

async fn repository(
    ssh: &SshPool,
    t: &SshTarget,
    sync: &RepoSync,
    token: Option<&Token>,
    host: &str,
    limit: Duration,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    if let (Some(token), Some(helper)) = (token, sync.credential_helper.as_deref()) {
        ssh.exec(t, guest::RUN_AS_ROOT, Some(guest::prepare_credential_dir(&sync.user).as_bytes()), SHORT, None)
            .await?;
        let body = guest::credential_helper(host, &token.value);
        ssh.write_file(t, helper, body.as_bytes(), 0o700, Some(&sync.user), SHORT).await?;
    }
    ssh.exec(t, guest::RUN_AS_ROOT, Some(guest::prepare_repo_parent(sync).as_bytes()), SHORT, None).await?;
    progress.report(Some(0), format!("syncing {}", sync.url));
    let seen = std::sync::Mutex::new(String::new());
    let on_output = |chunk: OutputChunk<'_>| {
        if let OutputChunk::Stderr(bytes) = chunk {
            let mut s = seen.lock().expect("output lock");
            s.push_str(&String::from_utf8_lossy(bytes));
            // Keep the buffer small: only the latest progress line matters.
            if s.len() > 8192 {
                let cut = s.len() - 4096;
                let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
                s.drain(..cut);
            }
            if let Some(p) = git::progress_percent(&s) {
                progress.report(Some(p), "cloning");
            }
        }
    };
    let script = guest::repository_sync(sync);
    let out = ssh.exec(t, guest::RUN_AS_USER, Some(script.as_bytes()), limit, Some(&on_output)).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.exit_status != 0 {
        let kind = git::classify(&stderr, token.is_some());
        let subject = match kind {
            git::GitFailure::RepositoryNotFound => {
                format!("repository {} not found or not accessible", sync.url)
            }
            git::GitFailure::AuthenticationFailed => {
                format!("the token was rejected by {host}: refresh the credentials Secret")
            }
            git::GitFailure::RevisionNotFound => {
                format!("revision {:?} does not exist in {}", sync.revision.as_deref().unwrap_or("(default)"), sync.url)
            }
            git::GitFailure::RepositoryUnreachable => format!("cannot reach {host}"),
            git::GitFailure::CheckoutConflict => format!("cannot check out into {}", sync.path),
            git::GitFailure::SyncFailed => format!("syncing {} failed", sync.url),
        };
        let detail = redact(&git::tail(&stderr, 6), token);
        return Ok(TaskOutcome::failed(kind.reason(), format!("{subject}: {detail}")));
    }
    let value =
        |marker: &str| stdout.lines().find_map(|l| l.strip_prefix(marker)).map(str::trim).unwrap_or("").to_string();
    let commit = value(guest::COMMIT_MARKER);
    let branch = value(guest::BRANCH_MARKER);
    progress.report(Some(100), "synced");
    let revision = sync.revision.clone().unwrap_or(branch);
    Ok(TaskOutcome::ok("Synced", format!("{} at {} ({})", sync.path, short(&commit), revision))
        .with_output("commit", commit)
        .with_output("revision", revision))
}

fn short(commit: &str) -> &str {
    crate::text::head(commit, 12)
}

/// Removes a token from text in case a remote echoed it back.
pub fn redact(text: &str, token: Option<&Token>) -> String {
    match token {
        Some(t) if !t.value.is_empty() => text.replace(&t.value, "[REDACTED]"),
        _ => text.to_string(),
    }
}

async fn code_server(
    ssh: &SshPool,
    t: &SshTarget,
    cfg: &CodeServerConfig,
    install_url: &str,
    fp: &str,
    limit: Duration,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    let marker = ssh.exec(t, &guest::read_marker("code-server"), None, SHORT, None).await?;
    if String::from_utf8_lossy(&marker.stdout).trim() == fp {
        return Ok(TaskOutcome::ok("Configured", format!("code-server serves {} on port {}", cfg.folder, cfg.port)));
    }
    progress.report(None, "writing code-server configuration");
    ssh.write_file(
        t,
        &guest::code_server_config_path(&cfg.user),
        guest::code_server_config(cfg).as_bytes(),
        0o600,
        Some(&cfg.user),
        SHORT,
    )
    .await?;
    ssh.write_file(
        t,
        &guest::code_server_dropin_path(&cfg.user),
        guest::code_server_dropin(cfg).as_bytes(),
        0o644,
        Some("root"),
        SHORT,
    )
    .await?;
    progress.report(None, "restarting code-server");
    let script = guest::code_server_apply(cfg, install_url, fp);
    let out = ssh.exec(t, guest::RUN_AS_ROOT, Some(script.as_bytes()), limit, None).await?;
    if out.exit_status != 0 {
        return Ok(TaskOutcome::failed(
            "CodeServerFailed",
            format!(
                "configuring code-server failed (exit {}): {}",
                out.exit_status,
                git::tail(&String::from_utf8_lossy(&out.stderr), 8)
            ),
        ));
    }
    Ok(TaskOutcome::ok("Configured", format!("code-server serves {} on port {}", cfg.folder, cfg.port)))
}

/// What code-server's `/healthz` said.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthAnswer {
    pub healthy: bool,
    /// code-server saw a client within its heartbeat interval (a minute): someone is using it.
    pub alive: bool,
    /// Last heartbeat, Unix milliseconds; 0 when code-server saw no activity yet.
    pub last_heartbeat_ms: i64,
    pub summary: String,
}

/// Parses code-server's `/healthz` body: `{"status":"alive"|"expired","lastHeartbeat":ms}`.
pub fn parse_health(status: u16, body: &str) -> HealthAnswer {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let state = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
    let hb = v.get("lastHeartbeat").and_then(|h| h.as_i64()).unwrap_or(0);
    let healthy = status == 200 && (state == "alive" || state == "expired");
    let snippet: String = body.chars().take(200).collect();
    HealthAnswer {
        healthy,
        alive: healthy && state == "alive",
        last_heartbeat_ms: hb,
        summary: format!("HTTP {status} {snippet}"),
    }
}

/// GETs the health URL once, bounded.
pub async fn probe_health(http: &reqwest::Client, url: &str) -> HealthAnswer {
    match http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            parse_health(status, &body)
        }
        Err(e) => HealthAnswer {
            healthy: false,
            alive: false,
            last_heartbeat_ms: 0,
            summary: format!("no answer: {}", error_chain(&e)),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvm(yaml: &str) -> ProjectVM {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn env() -> StepEnv {
        StepEnv { instance_id: "111".into(), address: "10.0.0.9".into(), ..Default::default() }
    }

    const BASE: &str = "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: a, namespace: n}\nspec:\n  repository: {url: 'https://git.example.com/acme/api.git', revision: main}\n";

    #[test]
    fn revision_change_changes_only_repository_fingerprint() {
        let a = pvm(BASE);
        let b = pvm(&BASE.replace("revision: main", "revision: feature"));
        let e = env();
        assert_eq!(a.prepare(StepId::Prerequisites, &e).unwrap().0, b.prepare(StepId::Prerequisites, &e).unwrap().0);
        assert_ne!(a.prepare(StepId::Repository, &e).unwrap().0, b.prepare(StepId::Repository, &e).unwrap().0);
    }

    #[test]
    fn recreated_instance_changes_every_fingerprint() {
        let a = pvm(BASE);
        let mut e2 = env();
        e2.instance_id = "222".into();
        for s in [StepId::Prerequisites, StepId::Repository] {
            assert_ne!(a.prepare(s, &env()).unwrap().0, a.prepare(s, &e2).unwrap().0);
        }
    }

    #[test]
    fn missing_secret_blocks_repository_with_secret_not_found() {
        let a = pvm(&BASE.replace("revision: main}", "revision: main, credentialsSecretRef: {name: tok}}"));
        let mut e = env();
        e.token_problem = Some("Secret n/tok (key \"token\") not found".into());
        let err = a.prepare(StepId::Repository, &e).unwrap_err();
        assert_eq!(err.reason, "SecretNotFound");
        assert!(err.message.contains("n/tok"));
    }

    #[test]
    fn refreshed_token_changes_fingerprint_and_never_enters_it() {
        let a = pvm(&BASE.replace("revision: main}", "revision: main, credentialsSecretRef: {name: tok}}"));
        let mut e = env();
        e.token = Some(Token { value: "secret-1".into(), version: "1".into() });
        let (fp1, w) = a.prepare(StepId::Repository, &e).unwrap();
        e.token = Some(Token { value: "secret-2".into(), version: "2".into() });
        let (fp2, _) = a.prepare(StepId::Repository, &e).unwrap();
        assert_ne!(fp1, fp2);
        assert!(!fp1.contains("secret"));
        let Work::Repository { sync, host, .. } = w else { panic!() };
        assert_eq!(host, "git.example.com");
        assert_eq!(sync.credential_helper.as_deref(), Some("/home/project/.config/projectvm/git-credential-helper"));
        assert!(!guest::repository_sync(&sync).contains("secret-1"));
    }

    #[test]
    fn workspace_defaults() {
        let w: Workspace = serde_yaml::from_str(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w, namespace: n}\nspec:\n  repository: {url: acme/demo}\n",
        )
        .unwrap();
        let mut e = env();
        e.password = Some(Token { value: "pw".into(), version: "3".into() });
        let (_, work) = w.prepare(StepId::Repository, &e).unwrap();
        let Work::Repository { sync, .. } = work else { panic!() };
        assert_eq!(sync.url, "https://github.com/acme/demo.git");
        assert_eq!(sync.path, "/home/project/demo");
        let (_, work) = w.prepare(StepId::CodeServer, &e).unwrap();
        let Work::CodeServer { cfg, .. } = work else { panic!() };
        assert_eq!(cfg.port, 8080);
        assert_eq!(cfg.password.as_deref(), Some("pw"));
        let (_, work) = w.prepare(StepId::Health, &e).unwrap();
        let Work::Health { url } = work else { panic!() };
        assert_eq!(url, "http://10.0.0.9:8080/healthz");
    }

    #[test]
    fn health_parsing() {
        let h = parse_health(200, r#"{"status":"alive","lastHeartbeat":1700000000000}"#);
        assert!(h.healthy && h.alive);
        assert_eq!(h.last_heartbeat_ms, 1_700_000_000_000);
        let h = parse_health(200, r#"{"status":"expired","lastHeartbeat":0}"#);
        assert!(h.healthy && !h.alive);
        assert!(!parse_health(502, "bad gateway").healthy);
    }

    #[test]
    fn redaction() {
        let t = Token { value: "tok123".into(), version: "1".into() };
        assert_eq!(redact("remote said tok123!", Some(&t)), "remote said [REDACTED]!");
    }

    #[test]
    fn ssh_failures_map_to_reasons() {
        let limit = Duration::from_secs(10);
        let unreachable = SshError::Unreachable { what: "SSH connection to 10.0.0.5:22".into(), limit };
        assert!(unreachable.is_not_ready());
        assert_eq!(ssh_failure(StepId::Repository, &unreachable).reason, "SSHUnavailable");
        // Only a command running past its limit is a timed-out step.
        let timeout = SshError::Timeout { what: "command on 10.0.0.5".into(), limit };
        assert!(!timeout.is_not_ready());
        assert_eq!(ssh_failure(StepId::Repository, &timeout).reason, "StepTimedOut");
        let refused = SshError::AuthFailed { host: "10.0.0.5".into(), user: "project".into() };
        assert!(refused.is_not_ready());
        assert_eq!(ssh_failure(StepId::CodeServer, &refused).reason, "SSHAuthFailed");
        let mismatch =
            SshError::HostKeyMismatch { host: "h".into(), expected: "SHA256:a".into(), presented: "SHA256:b".into() };
        assert!(!mismatch.is_not_ready(), "a host key mismatch is never waited out");
        assert_eq!(ssh_failure(StepId::CodeServer, &mismatch).reason, "HostKeyMismatch");
    }
}
