//! One reconcile of a Run, top to bottom: the finalizer decides between apply and cleanup;
//! apply plans (not launched yet), observes (running) or finishes (artifacts, TTL), and the
//! status and events are written once at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::guest::{self, Ending, RunPaths};
use super::plan::{self, Plan, Target};
use super::status::{RunReport, events};
use super::{access, artifacts};
use crate::api::{ConditionStatus, ProjectVM, RUN_FINALIZER, Run, RunPhase};
use crate::clock;
use crate::conditions::Reason;
use crate::controller::owner::Owner;
use crate::controller::{Context, Error};
use crate::engine::{StepId, TaskView};
use crate::shell::{RUN_AS_ROOT, RUN_AS_USER, bounded};
use crate::ssh::SshTarget;

/// The kind's label in keys, metrics and logs.
pub const LABEL: &str = "run";
/// How often a running Run's log tail and state are read.
const OBSERVE_EVERY: Duration = Duration::from_secs(5);
/// Preparing the worktree (a fetch of the revision included).
const PREPARE_LIMIT: Duration = Duration::from_secs(180);
/// Short commands on the VM: launch, status, stop.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// How long deletion tries to reach the VM before it lets the Run go anyway.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(120);
/// Upload task backstop.
const UPLOAD_LIMIT: Duration = Duration::from_secs(4 * 3600);

pub fn key(run: &Run) -> String {
    format!("{LABEL}/{}/{}", run.namespace().unwrap_or_default(), run.name_any())
}

/// Entry point. A panic inside is this Run's error, never the process's end.
pub async fn reconcile(run: Arc<Run>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = run.namespace().ok_or_else(|| Error::Invalid("Run has no namespace".into()))?;
    let api: Api<Run> = Api::namespaced(ctx.client.clone(), &ns);
    if !in_this_shard(&ctx, &run, &ns).await? {
        // Another shard's operator owns it: touch nothing, not even the finalizer.
        return Ok(Action::await_change());
    }
    let run_key = run.clone();
    let result = finalizer(&api, RUN_FINALIZER, run, |event| async {
        let (run, deleting) = match event {
            FinalizerEvent::Apply(r) => (r, false),
            FinalizerEvent::Cleanup(r) => (r, true),
        };
        let work = async { if deleting { cleanup(&ctx, &run).await } else { apply(&ctx, &run).await } };
        match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let message = crate::text::panic_message(&*panic);
                tracing::error!(object = %key(&run), panic = %message, "run reconcile panicked");
                Err(Error::Internal(message))
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(LABEL, started.elapsed());
    if result.is_ok() {
        ctx.reset_failures(&key(&run_key));
    }
    result
}

/// Whether this operator's shard owns the Run: the shard of its ProjectVM, or, when that
/// ProjectVM does not exist, the shard the Run's own labels select (the default shard for
/// an unlabelled Run), so exactly one operator reports it missing.
async fn in_this_shard(ctx: &Context, run: &Run, ns: &str) -> Result<bool, Error> {
    let selector = &ctx.config.shard_selector;
    if selector.is_all() || ctx.cached_projectvm(ns, &run.spec.project_vm_ref.name).is_some() {
        return Ok(true);
    }
    let api: Api<ProjectVM> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_metadata_opt(&run.spec.project_vm_ref.name).await? {
        Some(pvm) => selector.matches(pvm.labels()),
        None => selector.matches(run.labels()),
    })
}

/// The start-request annotation value this Run sets on its ProjectVM.
fn start_value(run: &Run) -> String {
    format!("run/{}", run.uid().unwrap_or_default())
}

async fn project_vm(ctx: &Context, ns: &str, name: &str) -> Result<Option<Arc<ProjectVM>>, Error> {
    if let Some(p) = ctx.cached_projectvm(ns, name) {
        return Ok(Some(p));
    }
    // Not in the cache (just created, or the cache is still filling): ask the API server.
    let api: Api<ProjectVM> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(name).await?.map(Arc::new))
}

fn paths(run: &Run, pvm: &ProjectVM) -> Option<RunPaths> {
    let user = &pvm.spec.machine.user;
    RunPaths::new(user, &run.uid().unwrap_or_default(), &pvm.spec.repository.effective_path(user))
}

async fn apply(ctx: &Arc<Context>, run: &Run) -> Result<Action, Error> {
    let before = run.status.clone().unwrap_or_default();
    let mut report = RunReport::new(before.clone(), run.metadata.generation, Utc::now());
    let outcome = step(ctx, run, &mut report).await;
    report.summarize();
    let owner = Owner::new(LABEL, run);
    if report.status != before {
        let value = serde_json::to_value(&report.status).map_err(|e| Error::Invalid(e.to_string()))?;
        ctx.cluster.write_status(&owner, value).await?;
    }
    for event in events(&before, &report.status) {
        ctx.publish(&owner, &event).await;
    }
    let finished_now =
        report.status.phase.is_some_and(RunPhase::finished) && !before.phase.is_some_and(RunPhase::finished);
    let launched_now = report.status.start_time.is_some() && before.start_time.is_none();
    if finished_now || launched_now {
        wake_peers(ctx, run);
    }
    outcome.map(Action::requeue)
}

/// Wakes the other waiting Runs on the same ProjectVM: a slot was freed (or taken).
fn wake_peers(ctx: &Context, run: &Run) {
    let ns = run.namespace();
    for other in ctx.runs() {
        let same = other.namespace() == ns && other.spec.project_vm_ref.name == run.spec.project_vm_ref.name;
        let waiting =
            other.status.as_ref().is_none_or(|s| s.start_time.is_none() && !s.phase.is_some_and(RunPhase::finished));
        if same && waiting && other.uid() != run.uid() {
            ctx.wake_run(ObjectRef::from_obj(&*other));
        }
    }
}

/// The other Runs on this Run's ProjectVM, from the watch cache.
fn peers(ctx: &Context, run: &Run) -> Vec<plan::Peer> {
    let ns = run.namespace();
    ctx.runs()
        .iter()
        .filter(|o| o.namespace() == ns && o.spec.project_vm_ref.name == run.spec.project_vm_ref.name)
        .map(|o| {
            let st = o.status.clone().unwrap_or_default();
            let finished = st.phase.is_some_and(RunPhase::finished);
            plan::Peer {
                uid: o.uid().unwrap_or_default(),
                name: o.name_any(),
                created: o.metadata.creation_timestamp.as_ref().map(clock::from_time),
                active: st.start_time.is_some() && !finished,
                // A Run held by something only a person can fix (a Secret not opted in)
                // does not hold the Runs behind it.
                waiting: st.start_time.is_none()
                    && !finished
                    && o.metadata.deletion_timestamp.is_none()
                    && !st.reason.as_deref().and_then(Reason::parse).is_some_and(Reason::is_terminal),
            }
        })
        .collect()
}

async fn step(ctx: &Arc<Context>, run: &Run, report: &mut RunReport) -> Result<Duration, Error> {
    let phase = report.status.phase.unwrap_or_default();
    if phase.finished() {
        return after_finish(ctx, run, report).await;
    }
    let ns = run.namespace().unwrap_or_default();
    let pvm_name = run.spec.project_vm_ref.name.clone();
    let pvm = project_vm(ctx, &ns, &pvm_name).await?;
    if report.status.start_time.is_some() {
        return observe(ctx, run, pvm.as_deref(), report).await;
    }
    let peers = peers(ctx, run);
    let uid = run.uid().unwrap_or_default();
    let name = run.name_any();
    let decision = plan::plan(&plan::Inputs {
        uid: &uid,
        name: &name,
        project_vm: &pvm_name,
        created: run.metadata.creation_timestamp.as_ref().map(clock::from_time),
        now: report.now,
        when_stopped: run.spec.when_stopped,
        target: Target::of(pvm.as_deref(), &start_value(run)),
        max_concurrent: pvm.as_ref().map_or(1, |p| p.spec.runs.max_concurrent),
        peers: &peers,
    });
    match decision {
        Plan::Wait { queued, reason, message, retry } => {
            report.waiting(if queued { RunPhase::Queued } else { RunPhase::Pending }, reason, &message);
            Ok(retry)
        }
        Plan::RequestStart { message } => {
            ctx.cluster.request_start(&ns, &pvm_name, &start_value(run)).await?;
            report.waiting(RunPhase::StartingVM, Reason::Starting, &message);
            Ok(Duration::from_secs(5))
        }
        Plan::StartingVM { message } => {
            report.waiting(RunPhase::StartingVM, Reason::Starting, &message);
            Ok(Duration::from_secs(5))
        }
        Plan::Fail { reason, message } => {
            report.finished(RunPhase::Failed, reason, &message, report.now);
            Ok(Duration::from_secs(1))
        }
        Plan::Launch => {
            let pvm = pvm.ok_or_else(|| Error::Invalid("launching without a ProjectVM".into()))?;
            launch(ctx, run, &pvm, report).await
        }
    }
}

/// A VM command's stdout as text, or a message for the status.
async fn run_script(
    ctx: &Context,
    target: &SshTarget,
    as_root: bool,
    script: &str,
    limit: Duration,
) -> Result<(u32, String, String), String> {
    let command = bounded(if as_root { RUN_AS_ROOT } else { RUN_AS_USER }, limit);
    match ctx.vm.exec(target, &command, Some(script.as_bytes()), limit + Duration::from_secs(10), None).await {
        Ok(out) => Ok((out.exit_status, crate::text::lossy(&out.stdout), crate::text::lossy(&out.stderr))),
        Err(e) => Err(e.to_string()),
    }
}

/// Prepares the worktree, writes the wrapper and the environment, and starts the unit.
/// Anything already launched on the VM (an earlier pass that crashed before writing status)
/// is adopted, never started again.
async fn launch(ctx: &Arc<Context>, run: &Run, pvm: &ProjectVM, report: &mut RunReport) -> Result<Duration, Error> {
    let pvm_name = run.spec.project_vm_ref.name.clone();
    let Some(p) = paths(run, pvm) else {
        report.finished(RunPhase::Failed, Reason::InternalError, "the Run's UID is not a UUID", report.now);
        return Ok(Duration::from_secs(60));
    };
    let target = match access::target(ctx, pvm).await? {
        Ok(t) => t,
        Err(why) => {
            report.waiting(RunPhase::Pending, Reason::Waiting, &format!("waiting to reach the VM: {why}"));
            return Ok(Duration::from_secs(5));
        }
    };
    let transient = |report: &mut RunReport, what: &str, why: &str| {
        report.waiting(
            RunPhase::Pending,
            Reason::SSHUnavailable,
            &format!("{what} on the VM of ProjectVM {pvm_name} failed, retrying: {}", crate::text::clip(why, 1024)),
        );
        Ok(Duration::from_secs(10))
    };
    // Launched before? Then only adopt it.
    match run_script(ctx, &target, false, &guest::status(&p), COMMAND_LIMIT).await {
        Ok((_, out, _)) => {
            let o = guest::parse_status(out.as_bytes());
            if let Some(at) = o.launched_at {
                adopt(report, &p, at);
                return Ok(Duration::from_secs(1));
            }
        }
        Err(e) => return transient(report, "reading the Run's state", &e),
    }
    let env = match access::environment(ctx, run).await? {
        Ok(env) => env,
        Err(problem) => {
            report.waiting(RunPhase::Pending, problem.reason, &problem.message);
            return Ok(Duration::from_secs(60));
        }
    };
    let revision = match run.spec.revision.clone().or_else(|| pvm.status.as_ref()?.repository.as_ref()?.commit.clone())
    {
        Some(r) => r,
        None => {
            report.waiting(
                RunPhase::Pending,
                Reason::Waiting,
                &format!("ProjectVM {pvm_name} has not synced a commit yet"),
            );
            return Ok(Duration::from_secs(10));
        }
    };
    report.waiting(RunPhase::Pending, Reason::InProgress, &format!("preparing a worktree at {revision}"));
    let (code, out, err) = match run_script(ctx, &target, false, &guest::prepare(&p, &revision), PREPARE_LIMIT).await {
        Ok(r) => r,
        Err(e) => return transient(report, "preparing the Run's worktree", &e),
    };
    if out.contains(guest::REVISION_MISSING) {
        let message = format!(
            "revision {revision} does not exist in {}: {}",
            pvm.spec.repository.url,
            crate::text::tail(err.trim(), 512)
        );
        report.finished(RunPhase::Failed, Reason::RevisionNotFound, &message, report.now);
        return Ok(Duration::from_secs(1));
    }
    let Some(commit) = out.lines().find_map(|l| l.strip_prefix(guest::COMMIT_MARKER)).map(str::trim).map(String::from)
    else {
        return transient(
            report,
            "preparing the Run's worktree",
            &format!("exit {code}: {}", crate::text::tail(err.trim(), 512)),
        );
    };
    let work = match (&run.spec.command, &run.spec.script) {
        (Some(argv), _) => guest::Work::Command(argv.clone()),
        _ => guest::Work::Script,
    };
    let wrapper = guest::wrapper(&p, run.spec.working_dir.as_deref(), &work, &run.name_any(), &commit);
    let (vars, note) = env;
    let mut files: Vec<(String, Vec<u8>, u32)> =
        vec![(p.wrapper(), wrapper.into_bytes(), 0o700), (p.env_file(), guest::env_file(&vars).into_bytes(), 0o600)];
    if let Some(script) = &run.spec.script {
        files.push((p.script_file(), script.clone().into_bytes(), 0o600));
    }
    for (path, content, mode) in files {
        let written =
            ctx.vm.exec(&target, &guest::write_as_user(&path, mode), Some(&content), COMMAND_LIMIT, None).await;
        let failure = match written {
            Ok(out) if out.success() => continue,
            Ok(out) => {
                format!("exit {}: {}", out.exit_status, crate::text::tail(crate::text::lossy(&out.stderr).trim(), 512))
            }
            Err(e) => e.to_string(),
        };
        return transient(report, "writing the Run's files", &failure);
    }
    let (_, out, err) = match run_script(
        ctx,
        &target,
        true,
        &guest::launch(&p, run.timeout(), pvm.spec.runs.max_concurrent),
        COMMAND_LIMIT,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return transient(report, "starting the Run's unit", &e),
    };
    let said = out.lines().find_map(|l| l.strip_prefix(guest::LAUNCH_MARKER)).unwrap_or("").trim().to_string();
    match said.split_whitespace().next().unwrap_or("") {
        "started" | "already" => {
            report.status.start_time = Some(clock::time(report.now));
            report.status.commit = Some(commit.clone());
            report.status.unit = Some(p.unit());
            report.status.directory = Some(p.dir());
            let mut message = format!("running at {commit} in {} (unit {})", p.work(), p.unit());
            if let Some(n) = note {
                message.push_str("; ");
                message.push_str(&n);
            }
            report.running(&message);
            Ok(Duration::from_secs(2))
        }
        "queued" | "busy" => {
            report.waiting(
                RunPhase::Queued,
                Reason::Queued,
                &format!(
                    "waiting for a free slot on the VM of ProjectVM {pvm_name} (runs.maxConcurrent {}; {said})",
                    pvm.spec.runs.max_concurrent
                ),
            );
            Ok(Duration::from_secs(5))
        }
        "failed" => {
            report.status.commit = Some(commit);
            let message =
                format!("systemd could not start the Run's unit {}: {}", p.unit(), crate::text::tail(err.trim(), 1024));
            report.finished(RunPhase::Failed, Reason::LaunchFailed, &message, report.now);
            Ok(Duration::from_secs(1))
        }
        _ => transient(
            report,
            "starting the Run's unit",
            &format!("unexpected answer: {}", crate::text::tail(err.trim(), 512)),
        ),
    }
}

/// The VM says the work was launched (by a pass whose status write was lost).
fn adopt(report: &mut RunReport, p: &RunPaths, launched_at: i64) {
    let at = chrono::DateTime::from_timestamp(launched_at, 0).unwrap_or(report.now).min(report.now);
    report.status.start_time = Some(clock::time(at));
    report.status.unit = Some(p.unit());
    report.status.directory = Some(p.dir());
    report.running(&format!("running in {} (unit {}); found already launched", p.work(), p.unit()));
}

/// A launched Run: read its unit's state and log tail; record how it ended.
async fn observe(
    ctx: &Arc<Context>,
    run: &Run,
    pvm: Option<&ProjectVM>,
    report: &mut RunReport,
) -> Result<Duration, Error> {
    let pvm_name = &run.spec.project_vm_ref.name;
    let Some(pvm) = pvm else {
        report.finished(
            RunPhase::Failed,
            Reason::ProjectVMNotFound,
            &format!("ProjectVM {pvm_name} was deleted while the Run ran"),
            report.now,
        );
        return Ok(Duration::from_secs(1));
    };
    let Some(p) = paths(run, pvm) else {
        return Err(Error::Invalid("the Run's UID is not a UUID".into()));
    };
    if matches!(Target::of(Some(pvm), ""), Target::Stopped { .. }) {
        // Stopping the VM (by hand, runStrategy Halted, a resize) ended the work with it.
        let message = format!(
            "the VM of ProjectVM {pvm_name} was stopped while the Run ran, which ended the work; create the Run again to re-run it"
        );
        report.finished(RunPhase::Failed, Reason::VMStopped, &message, report.now);
        return Ok(Duration::from_secs(1));
    }
    let target = match access::target(ctx, pvm).await? {
        Ok(t) => t,
        Err(why) => {
            report.unobserved(&format!("cannot read the Run's state now: {why}"));
            return Ok(Duration::from_secs(15));
        }
    };
    let out = match run_script(ctx, &target, false, &guest::status(&p), COMMAND_LIMIT).await {
        Ok((_, out, _)) => out,
        Err(e) => {
            report.unobserved(&format!("cannot read the Run's state now, retrying: {}", crate::text::clip(&e, 512)));
            return Ok(Duration::from_secs(10));
        }
    };
    let o = guest::parse_status(out.as_bytes());
    let tail = guest::tail(&o.log_tail, 40, 4096);
    report.status.log_tail = (!tail.is_empty()).then_some(tail.clone());
    let ended_at =
        o.ended_at.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).unwrap_or(report.now).min(report.now);
    let limit = clock::humanize(run.timeout());
    match o.ending {
        Some(Ending::Exited { code: 0 }) => {
            report.status.exit_code = Some(0);
            report.finished(RunPhase::Succeeded, Reason::Succeeded, "the work exited with code 0", ended_at);
        }
        Some(Ending::Exited { code }) => {
            report.status.exit_code = Some(code);
            let message = format!("the work exited with code {code}; log tail:\n{}", guest::tail(&tail, 10, 1024));
            report.finished(RunPhase::Failed, Reason::Failed, &message, ended_at);
        }
        Some(Ending::TimedOut) => {
            let message = format!("the work ran longer than its timeout {limit} and was stopped");
            report.finished(RunPhase::TimedOut, Reason::TimedOut, &message, ended_at);
        }
        Some(Ending::Killed { signal }) => {
            let message = format!(
                "the work was killed by signal {signal} (its unit was stopped, or the VM shut down); log tail:\n{}",
                guest::tail(&tail, 10, 1024)
            );
            report.finished(RunPhase::Failed, Reason::Killed, &message, ended_at);
        }
        Some(Ending::LaunchFailed) => {
            report.finished(RunPhase::Failed, Reason::LaunchFailed, "systemd could not start the Run's unit", ended_at);
        }
        None if o.launched_at.is_none() || !o.unit_active() => {
            let message = format!(
                "the Run's unit {} is gone without recording how it ended (the VM was restarted or its directory removed)",
                p.unit()
            );
            report.finished(RunPhase::Failed, Reason::RunLost, &message, report.now);
        }
        None => {
            report.running(&format!("running for {} (limit {limit}); {} bytes of log", elapsed(report), o.log_bytes));
            return Ok(OBSERVE_EVERY);
        }
    }
    Ok(Duration::from_secs(1))
}

fn elapsed(report: &RunReport) -> String {
    let start = report.status.start_time.as_ref().map(clock::from_time).unwrap_or(report.now);
    clock::humanize(clock::elapsed(report.now, start))
}

/// A finished Run: copy its log and artifacts, then honour `ttlAfterFinished`.
async fn after_finish(ctx: &Arc<Context>, run: &Run, report: &mut RunReport) -> Result<Duration, Error> {
    if !report.artifacts_settled()
        && let Some(wait) = copy_artifacts(ctx, run, report).await?
    {
        return Ok(wait);
    }
    let Some(ttl) = run.spec.ttl_after_finished.as_deref().and_then(clock::parse_duration) else {
        return Ok(Duration::from_secs(3600));
    };
    let ended = report.status.completion_time.as_ref().map(clock::from_time).unwrap_or(report.now);
    let age = clock::elapsed(report.now, ended);
    if age >= ttl {
        let ns = run.namespace().unwrap_or_default();
        ctx.cluster.delete_run(&ns, &run.name_any(), &run.uid().unwrap_or_default()).await?;
        return Ok(Duration::from_secs(5));
    }
    Ok(ttl - age + Duration::from_secs(1))
}

/// Starts, follows or takes the result of the upload task. `Some(wait)` while it is not
/// settled.
async fn copy_artifacts(ctx: &Arc<Context>, run: &Run, report: &mut RunReport) -> Result<Option<Duration>, Error> {
    let Some(store) = ctx.artifacts.clone() else {
        report.artifacts(
            ConditionStatus::False,
            Reason::NotConfigured,
            "not uploaded: the operator has no artifact bucket (--artifact-bucket, chart value artifacts.bucket); \
             the log tail is in status.logTail and the files stay on the VM until the Run is deleted",
        );
        return Ok(None);
    };
    let key = key(run);
    if report.status.start_time.is_none() {
        // It never ran: there is nothing to copy.
        report.artifacts(ConditionStatus::False, Reason::NotConfigured, "nothing to copy: the work never started");
        return Ok(None);
    }
    if let Some((_, outcome)) = ctx.tasks.take_finished(&key, StepId::Artifacts) {
        report.status.artifacts = artifacts::recorded(&outcome);
        let status = if outcome.success { ConditionStatus::True } else { ConditionStatus::False };
        report.artifacts(status, outcome.reason, &outcome.message);
        return Ok(if outcome.success || outcome.reason == Reason::ArtifactsTooLarge {
            None
        } else {
            Some(ctx.tasks.retry_in(&key, StepId::Artifacts).unwrap_or(Duration::from_secs(30)))
        });
    }
    match ctx.tasks.view(&key, StepId::Artifacts) {
        TaskView::Running { .. } => {
            let progress = ctx.tasks.progress(&key, StepId::Artifacts).map(|p| p.message).unwrap_or_default();
            report.artifacts(
                ConditionStatus::False,
                Reason::Uploading,
                &format!("copying to bucket {}: {progress}", store.bucket()),
            );
            return Ok(Some(Duration::from_secs(5)));
        }
        TaskView::BackingOff { ready: false, .. } => {
            return Ok(Some(ctx.tasks.retry_in(&key, StepId::Artifacts).unwrap_or(Duration::from_secs(30))));
        }
        _ => {}
    }
    let ns = run.namespace().unwrap_or_default();
    let Some(pvm) = project_vm(ctx, &ns, &run.spec.project_vm_ref.name).await? else {
        report.artifacts(
            ConditionStatus::False,
            Reason::ArtifactUploadFailed,
            "the ProjectVM is gone, and with it the Run's files",
        );
        return Ok(Some(Duration::from_secs(300)));
    };
    let target = match access::target(ctx, &pvm).await? {
        Ok(t) => t,
        Err(why) => {
            report.artifacts(
                ConditionStatus::False,
                Reason::Uploading,
                &format!("waiting to reach the VM to copy the artifacts: {why}"),
            );
            return Ok(Some(Duration::from_secs(30)));
        }
    };
    let Some(p) = paths(run, &pvm) else {
        return Err(Error::Invalid("the Run's UID is not a UUID".into()));
    };
    let job = artifacts::Job {
        store: store.clone(),
        vm: ctx.vm.clone(),
        target,
        paths: p,
        patterns: run.spec.artifacts.clone(),
        object_prefix: artifacts::object_prefix(
            &ctx.config.artifact_prefix,
            &ns,
            &run.name_any(),
            &run.uid().unwrap_or_default(),
        ),
        max_bytes: ctx.config.run_artifacts_max_bytes,
    };
    let wake = {
        let ctx = Arc::downgrade(ctx);
        let target = ObjectRef::from_obj(run);
        Arc::new(move || {
            if let Some(ctx) = ctx.upgrade() {
                ctx.wake_run(target.clone());
            }
        })
    };
    ctx.tasks.spawn(&key, StepId::Artifacts, "artifacts", UPLOAD_LIMIT, wake, move |progress| {
        artifacts::upload(job, progress)
    });
    report.artifacts(
        ConditionStatus::False,
        Reason::Uploading,
        &format!("copying the log and artifacts to bucket {}", store.bucket()),
    );
    Ok(Some(Duration::from_secs(5)))
}

/// Deleting a Run: stop its work if it still runs (the Run ends `Cancelled`), then remove
/// its directory. When the VM cannot be reached the Run is let go anyway after a while, with
/// a Warning event saying what was left behind.
async fn cleanup(ctx: &Arc<Context>, run: &Run) -> Result<Action, Error> {
    let key = key(run);
    ctx.tasks.forget(&key);
    let owner = Owner::new(LABEL, run);
    let ns = run.namespace().unwrap_or_default();
    let before = run.status.clone().unwrap_or_default();
    let launched = before.start_time.is_some();
    let Some(pvm) = project_vm(ctx, &ns, &run.spec.project_vm_ref.name).await? else {
        return Ok(Action::await_change());
    };
    let Some(p) = paths(run, &pvm) else {
        return Ok(Action::await_change());
    };
    if !launched {
        // Never launched: at most a prepared worktree is left. Removed when the VM can be
        // reached now; deletion never waits for it.
        if let Ok(target) = access::target(ctx, &pvm).await? {
            let _ = run_script(ctx, &target, false, &guest::remove(&p), COMMAND_LIMIT).await;
        }
        return Ok(Action::await_change());
    }
    let deleting_for = run
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| clock::elapsed(Utc::now(), clock::from_time(t)))
        .unwrap_or_default();
    let give_up = |what: String| async move {
        if deleting_for < CLEANUP_PATIENCE {
            return Err(Error::CleanupPending { what, retry_in: Duration::from_secs(10) });
        }
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "CleanupSkipped".into(),
            note: Some(crate::text::clip(&format!("{what}; the Run's directory may remain on the VM"), 1024)),
            action: "Delete".into(),
            secondary: None,
        };
        ctx.publish(&owner, &event).await;
        Ok(Action::await_change())
    };
    let target = match access::target(ctx, &pvm).await? {
        Ok(t) => t,
        Err(why) => return give_up(format!("cannot reach the VM: {why}")).await,
    };
    if !before.phase.is_some_and(RunPhase::finished) {
        if let Err(e) = run_script(ctx, &target, true, &guest::stop(&p), COMMAND_LIMIT).await {
            return give_up(format!("stopping the Run's unit failed: {e}")).await;
        }
        let mut report = RunReport::new(before.clone(), run.metadata.generation, Utc::now());
        report.finished(
            RunPhase::Cancelled,
            Reason::Cancelled,
            &format!("cancelled: the Run was deleted and its unit {} stopped", p.unit()),
            report.now,
        );
        report.summarize();
        if let Ok(value) = serde_json::to_value(&report.status) {
            let _ = ctx.cluster.write_status(&Owner::new(LABEL, run), value).await;
        }
        for event in events(&before, &report.status) {
            ctx.publish(&Owner::new(LABEL, run), &event).await;
        }
        wake_peers(ctx, run);
    }
    if let Err(e) = run_script(ctx, &target, false, &guest::remove(&p), COMMAND_LIMIT).await {
        return give_up(format!("removing the Run's directory failed: {e}")).await;
    }
    Ok(Action::await_change())
}
