//! The steps that run once the instance is up, one file each: its inputs and fingerprint
//! (`prepare`, pure) and its action. Long actions run on the VM as tracked background tasks;
//! the health probe and the route are cheap and run inline. This file plans them (with the
//! pure planner in `engine`) and dispatches.

pub mod code_server;
pub mod health;
pub mod prerequisites;
pub mod repository;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use super::Context;
use super::secrets::{SecretProblem, Token};
use super::status::Report;
use super::vm::VmAccess;
use crate::api::{ConditionStatus, RepositoryStatus, SecretKeyRef, Workspace};
use crate::clock;
use crate::conditions::{self, Reason, Update, types};
use crate::engine::tasks::{ProgressReporter, TaskOutcome, Wake};
use crate::engine::{StepDecision, StepId, StepNode, StepObservation, due, plan_steps};
use crate::ssh::{SshError, SshTarget};

/// Inputs resolved while observing that steps may need.
#[derive(Clone, Debug, Default)]
pub struct StepEnv {
    /// Instance id: part of every fingerprint, so a recreated instance re-runs every step.
    pub instance_id: String,
    /// Address the operator reaches the VM at.
    pub address: String,
    /// Repository token, when a Secret is referenced and readable.
    pub token: Option<Token>,
    /// Why the referenced token Secret cannot be used.
    pub token_problem: Option<SecretProblem>,
    /// code-server password (Workspace with password auth).
    pub password: Option<Token>,
    /// Why the referenced password Secret cannot be used.
    pub password_problem: Option<SecretProblem>,
    /// Where code-server is installed from when a VM lacks the wanted version.
    pub code_server_source: crate::guest::CodeServerSource,
    /// The VM's external address, when it has one (the URL is then on the internet).
    pub external_ip: Option<String>,
    /// The operator's configuration admits `codeServer.auth: none`.
    pub allow_auth_none: bool,
}

/// The action of a step with its inputs.
#[derive(Clone, Debug)]
pub enum Work {
    Prerequisites(prerequisites::Work),
    Repository(repository::Work),
    CodeServer(code_server::Work),
    Health {
        url: String,
    },
    /// `public`: the address is the VM's external one.
    Route {
        address: String,
        public: bool,
    },
}

/// A step ready to plan: its fingerprint and work, or why it cannot run.
pub type Prepared = Result<(String, Work), StepBlocked>;

/// A step that cannot run because of its inputs (e.g. a missing Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepBlocked {
    pub reason: Reason,
    pub message: String,
}

/// A step asked of a kind whose graph does not have it: an operator bug.
pub fn not_in_graph(kind: &str, step: StepId) -> StepBlocked {
    StepBlocked { reason: Reason::InternalError, message: format!("{kind} has no step {}", step.name()) }
}

/// What the steps need to know of the resource they run for; the kind fills it in.
pub struct Subject<'a> {
    /// `kind/namespace/name`, the key of its tasks.
    pub key: String,
    pub graph: &'static [StepNode],
    /// Each step of the graph, prepared from the spec.
    pub prepared: Vec<(StepId, Prepared)>,
    /// The repository's credentials Secret, if any.
    pub credentials: Option<&'a SecretKeyRef>,
    /// The Workspace, for its route.
    pub workspace: Option<&'a Workspace>,
    /// `progressTimeout`: the bound of each step's task.
    pub limit: Duration,
    /// Re-queues the resource when a task finishes or reports progress.
    pub wake: Wake,
}

/// Plans the steps against their conditions and tasks, and runs what is due.
pub async fn run(ctx: &Arc<Context>, report: &mut Report, subject: Subject<'_>, target: &SshTarget, env: &StepEnv) {
    let Subject { key, graph, prepared, credentials, workspace, limit, wake } = subject;
    let find = |id: StepId| prepared.iter().find(|(s, _)| *s == id).map(|(_, p)| p.clone());
    let conds = report.status.conditions.clone();
    let plan = plan_steps(graph, |id| {
        let condition = graph.iter().find(|n| n.id == id).map(|n| n.condition).unwrap_or_default();
        let c = conditions::get(&conds, condition);
        StepObservation {
            desired_fingerprint: match find(id) {
                Some(Ok((fp, _))) => fp,
                _ => String::new(),
            },
            recorded_fingerprint: c.and_then(|c| c.fingerprint.clone()),
            condition_true: c.is_some_and(|c| c.status == ConditionStatus::True),
            task: ctx.tasks.view(&key, id),
        }
    });
    let run_now = due(graph, &plan);

    for node in graph {
        let decision = plan.iter().find(|(id, _)| *id == node.id).map(|(_, d)| *d).unwrap_or(StepDecision::Blocked);
        let (fp, work) = match find(node.id) {
            Some(Ok(p)) => p,
            Some(Err(blocked)) => {
                report.set(Update::falsy(node.condition, blocked.reason, blocked.message.clone()));
                if node.id == StepId::Repository && credentials.is_some() {
                    report.set(Update::falsy(types::CREDENTIALS_CURRENT, blocked.reason, blocked.message));
                }
                report.soon(Duration::from_secs(30));
                continue;
            }
            None => continue,
        };
        match decision {
            StepDecision::Collect => {
                if let Some((task_fp, outcome)) = ctx.tasks.take_finished(&key, node.id) {
                    collect(report, credentials, node.id, node.condition, &task_fp, &fp, outcome, env.token.as_ref());
                }
                report.soon(Duration::from_millis(200));
            }
            StepDecision::Running => {
                let p = ctx.tasks.progress(&key, node.id).unwrap_or_default();
                report.set(Update::falsy(node.condition, Reason::InProgress, p.message.clone()));
                if node.id == StepId::Repository && env.token.is_some() {
                    report.set(Update::falsy(
                        types::CREDENTIALS_CURRENT,
                        Reason::Refreshing,
                        "writing the credential helper on the VM",
                    ));
                }
                report.progress(node.id.name(), p.message, p.percent);
                report.soon(Duration::from_secs(10));
            }
            StepDecision::BackingOff => {
                if let Some(d) = ctx.tasks.retry_in(&key, node.id) {
                    report.soon(d + Duration::from_millis(100));
                }
            }
            StepDecision::Blocked => {
                let failing =
                    conditions::false_reason(&report.status.conditions, node.condition).is_some_and(Reason::is_trouble);
                if !failing && !conditions::is_true(&report.status.conditions, node.condition) {
                    let waiting: Vec<&str> = node.after.iter().map(|s| s.name()).collect();
                    report.set(Update::falsy(
                        node.condition,
                        Reason::Waiting,
                        format!("waiting for {}", waiting.join(", ")),
                    ));
                }
            }
            StepDecision::UpToDate | StepDecision::Run => {}
        }
        if !run_now.contains(&node.id) {
            continue;
        }
        match work {
            Work::Health { url } => health::check(ctx, report, node.condition, &url, &fp).await,
            Work::Route { address, public } => match workspace {
                Some(ws) => route::apply(ctx, report, ws, node.condition, &address, public, &fp).await,
                None => {
                    report.set(Update::falsy(node.condition, Reason::InternalError, "only Workspaces have a route"))
                }
            },
            remote => {
                report.set(Update::falsy(node.condition, Reason::InProgress, format!("starting {}", node.id.name())));
                report.progress(node.id.name(), "starting", None);
                let vm = ctx.vm.clone();
                let target = target.clone();
                let step = node.id;
                let task_fp = fp.clone();
                ctx.tasks.spawn(&key, node.id, &fp, limit, wake.clone(), move |progress| {
                    run_remote(vm, target, step, remote, task_fp, limit, progress)
                });
                report.soon(Duration::from_secs(10));
            }
        }
    }
    // A step that finished in this pass unblocks the ones after it: look again right away
    // rather than at the next periodic pass (the operator's own status write does not
    // trigger one).
    let conds = &report.status.conditions;
    let unblocked = plan.iter().any(|(id, d)| {
        *d == StepDecision::Blocked
            && graph.iter().find(|n| n.id == *id).is_some_and(|n| {
                n.after.iter().all(|dep| {
                    graph.iter().find(|g| g.id == *dep).is_some_and(|g| conditions::is_true(conds, g.condition))
                })
            })
    });
    if unblocked {
        report.soon(Duration::from_millis(100));
    }
}

/// Records a finished task's result in its condition.
#[allow(clippy::too_many_arguments)]
fn collect(
    report: &mut Report,
    credentials: Option<&SecretKeyRef>,
    step: StepId,
    condition: &'static str,
    task_fp: &str,
    desired_fp: &str,
    outcome: TaskOutcome,
    token: Option<&Token>,
) {
    let message = redact(&outcome.message, token);
    if !outcome.success {
        report.set(Update::falsy(condition, outcome.reason, message.clone()));
        if step == StepId::Repository && outcome.reason == Reason::AuthenticationFailed && token.is_some() {
            report.set(Update::falsy(types::CREDENTIALS_CURRENT, Reason::AuthenticationFailed, message));
        }
        report.progress(step.name(), format!("failed: {}", outcome.reason), None);
        return;
    }
    // A result for inputs that have since changed still says what is on the VM, but the step
    // runs again for the new inputs.
    let current = task_fp == desired_fp;
    let update = if current {
        Update::truthy(condition, outcome.reason, message.clone()).with_fingerprint(Some(task_fp.to_string()))
    } else {
        Update::falsy(condition, Reason::InProgress, message.clone())
    };
    report.set(update);
    report.normal(outcome.reason.as_str(), format!("{}: {message}", step.name()));
    if step == StepId::Repository {
        report.status.repository = Some(RepositoryStatus {
            revision: outcome.outputs.get("revision").cloned(),
            commit: outcome.outputs.get("commit").cloned(),
            synced_at: Some(clock::time(report.now)),
        });
        if let (Some(t), Some(r)) = (token, credentials) {
            report.set(Update::truthy(
                types::CREDENTIALS_CURRENT,
                Reason::TokenApplied,
                format!(
                    "the credential helper on the VM holds the token from Secret {} (resourceVersion {})",
                    r.name, t.version
                ),
            ));
        }
    }
    report.progress(step.name(), "done", Some(100));
    report.progressed();
}

/// Maps an SSH failure to a step outcome.
pub fn ssh_failure(step: StepId, e: &SshError) -> TaskOutcome {
    match e {
        SshError::HostKeyMismatch { host, expected, presented } => TaskOutcome::failed(
            Reason::HostKeyMismatch,
            format!(
                "the VM at {host} presented host key {presented}, but the instance's guest attributes pin {expected}; refusing to connect"
            ),
        ),
        SshError::AuthFailed { host, user } => TaskOutcome::failed(
            Reason::SSHAuthFailed,
            format!(
                "SSH login as {user} to the VM at {host} was refused; the operator's key may not be in the instance's ssh-keys metadata yet"
            ),
        ),
        SshError::Booting { host, said } => TaskOutcome::failed(
            Reason::VMBooting,
            format!("the VM at {host} has not finished booting; it answers logins with: {said}"),
        ),
        SshError::Timeout { what, limit } => TaskOutcome::failed(
            Reason::StepTimedOut,
            format!("step {} timed out after {}: {what}", step.name(), clock::humanize(*limit)),
        ),
        SshError::Unreachable { .. } | SshError::Connect(_) => TaskOutcome::failed(
            Reason::SSHUnavailable,
            format!("step {}: the VM does not accept SSH connections: {e}", step.name()),
        ),
        other => TaskOutcome::failed(Reason::SSHUnavailable, format!("step {}: {other}", step.name())),
    }
}

/// How long a step waits for a VM that has just booted to accept the operator's SSH login.
const SSH_READY_BUDGET: Duration = Duration::from_secs(120);

/// A bound for the short commands around a step's main one (markers, file writes).
pub const SHORT: Duration = Duration::from_secs(60);

/// Waits, bounded, until the VM accepts an SSH login. A VM reported RUNNING may still be
/// starting sshd or installing the operator's key; retrying here in short steps avoids
/// failing the step and waiting out the (much longer) step backoff. Anything but "not ready
/// yet" (a host key mismatch, say) is returned at once.
async fn wait_for_ssh(
    vm: &dyn VmAccess,
    t: &SshTarget,
    budget: Duration,
    progress: &ProgressReporter,
) -> Result<(), SshError> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut pause = Duration::from_millis(250);
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match vm.exec(t, "true", None, remaining.min(Duration::from_secs(20)), None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_ready() && remaining > pause => {
                tracing::debug!(host = %t.host, error = %e, "VM not accepting SSH yet");
                // What the VM said goes into the condition, and so into a timeout's message.
                progress.report(
                    None,
                    format!("waiting for the VM to accept SSH: {}", crate::text::head(&e.to_string(), 300)),
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A step's time limit, passed down to the commands it runs so that the VM stops a command
/// at the limit itself (see [`crate::shell::bounded`]) before the operator gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    pub limit: Duration,
}

/// How much longer than the remote bound the operator waits for a command's answer.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

impl Deadline {
    pub fn starting_now(limit: Duration) -> Self {
        Self { at: tokio::time::Instant::now() + limit, limit }
    }

    /// What is left of the limit (at least a second, so a late command still gets a try).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1))
    }

    /// `run_as` bounded on the VM by what is left, and how long to wait for its answer.
    pub fn command(&self, run_as: &str) -> (String, Duration) {
        let left = self.remaining();
        (crate::shell::bounded(run_as, left), left + crate::shell::KILL_GRACE + ANSWER_GRACE)
    }

    /// The outcome when the VM stopped a command at the limit.
    pub fn exceeded(&self, step: StepId) -> TaskOutcome {
        TaskOutcome::failed(
            Reason::StepTimedOut,
            format!(
                "step {} did not finish within {} (progressTimeout); the VM stopped it",
                step.name(),
                clock::humanize(self.limit)
            ),
        )
    }
}

/// The step's cheap check: whether the VM's marker file records `fp`, the fingerprint the
/// step last completed with.
pub async fn marker_matches(vm: &dyn VmAccess, t: &SshTarget, step: &str, fp: &str) -> Result<bool, SshError> {
    let marker = vm.exec(t, &crate::guest::read_marker(step), None, SHORT, None).await?;
    Ok(crate::text::lossy(&marker.stdout).trim() == fp)
}

/// Runs a step's SSH work on the VM. Never puts a secret on a command line or in the
/// outcome: tokens and passwords travel only as file contents.
pub async fn run_remote(
    vm: Arc<dyn VmAccess>,
    target: SshTarget,
    step: StepId,
    work: Work,
    fp: String,
    limit: Duration,
    progress: ProgressReporter,
) -> TaskOutcome {
    let deadline = Deadline::starting_now(limit);
    if let Err(e) = wait_for_ssh(&*vm, &target, SSH_READY_BUDGET.min(limit), &progress).await {
        return ssh_failure(step, &e);
    }
    let result = match work {
        Work::Prerequisites(w) => prerequisites::run(&*vm, &target, &w, &fp, deadline, &progress).await,
        Work::Repository(w) => repository::run(&*vm, &target, &w, deadline, &progress).await,
        Work::CodeServer(w) => code_server::run(&*vm, &target, &w, &fp, deadline, &progress).await,
        Work::Health { .. } | Work::Route { .. } => {
            Ok(TaskOutcome::failed(Reason::InternalError, "inline step run as a task"))
        }
    };
    result.unwrap_or_else(|e| ssh_failure(step, &e))
}

/// Removes a token from text in case a remote echoed it back.
pub fn redact(text: &str, token: Option<&Token>) -> String {
    match token {
        Some(t) if !t.value.is_empty() => text.replace(&t.value, "[REDACTED]"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(ssh_failure(StepId::Repository, &unreachable).reason, Reason::SSHUnavailable);
        // Only a command running past its limit is a timed-out step.
        let timeout = SshError::Timeout { what: "command on 10.0.0.5".into(), limit };
        assert!(!timeout.is_not_ready());
        assert_eq!(ssh_failure(StepId::Repository, &timeout).reason, Reason::StepTimedOut);
        let refused = SshError::AuthFailed { host: "10.0.0.5".into(), user: "project".into() };
        assert!(refused.is_not_ready());
        assert_eq!(ssh_failure(StepId::CodeServer, &refused).reason, Reason::SSHAuthFailed);
        let mismatch =
            SshError::HostKeyMismatch { host: "h".into(), expected: "SHA256:a".into(), presented: "SHA256:b".into() };
        assert!(!mismatch.is_not_ready(), "a host key mismatch is never waited out");
        assert_eq!(ssh_failure(StepId::CodeServer, &mismatch).reason, Reason::HostKeyMismatch);
    }
}
