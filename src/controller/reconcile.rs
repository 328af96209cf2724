//! The reconcile pipeline both kinds share: read (spec, Secrets, the instance) → plan
//! (pure planners in `engine`) → apply (one cloud action, step tasks, inline steps) →
//! status (conditions, phase, progress, cost) written with server-side apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};

use super::kind::VmKind;
use super::secrets::{self, Token};
use super::work::{self, KindWork, StepEnv, Work};
use super::{Context, Error, FIELD_MANAGER, FINALIZER, PAUSED_ANNOTATION, START_ANNOTATION};
use crate::api::{
    CodeServerAuth, DeletionPolicy, InstanceStatus, PendingOperation, Phase, PowerStatus, Progress, RepositoryStatus,
    RunStrategy, VmStatus, Workspace,
};
use crate::cloud::{CloudError, CloudInstance, InstanceRequest, InstanceState, OperationRef, OperationState, naming};
use crate::conditions::{self, Status, Update, types};
use crate::cost;
use crate::engine::instance::{InstanceAction, InstanceInputs, StartReason, StopReason, plan_instance};
use crate::engine::tasks::humanize;
use crate::engine::{StepDecision, StepId, StepObservation, due, plan_steps};
use crate::ssh::{self, SshTarget};

/// `kind/namespace/name`, the key for tasks and backoff.
pub fn object_key<K: VmKind>(o: &K) -> String {
    format!("{}/{}/{}", K::LABEL, o.namespace().unwrap_or_default(), o.name_any())
}

/// Entry point for both controllers: the finalizer decides between apply and cleanup.
pub async fn reconcile<K: VmKind + KindWork>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or_else(|| Error::Invalid("resource has no namespace".into()))?;
    let key = object_key(&*obj);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let guarded = std::panic::AssertUnwindSafe(finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(o) => apply(o, ctx.clone()).await,
            FinalizerEvent::Cleanup(o) => cleanup(o, ctx.clone()).await,
        }
    }))
    .catch_unwind();
    let result = match guarded.await {
        Ok(r) => r.map_err(|e| Error::Finalizer(Box::new(e))),
        // A panic is this object's error, never the process's end: say so in its status
        // and let the error policy back off.
        Err(panic) => {
            let message = crate::text::panic_message(&*panic);
            report_internal_error(&obj, &ctx, &message).await;
            Err(Error::Internal(message))
        }
    };
    ctx.metrics.observe_reconcile(K::LABEL, started.elapsed());
    if result.is_ok() {
        ctx.reset_failures(&key);
    }
    result
}

/// Records an operator bug met while reconciling this object: `Ready=False` with reason
/// `InternalError` and a Warning event. Written from the status the object already has,
/// so the rest of it stays as it was.
async fn report_internal_error<K: VmKind + KindWork>(obj: &Arc<K>, ctx: &Arc<Context>, message: &str) {
    let mut run = Run::new(obj.clone(), ctx.clone());
    tracing::error!(object = %run.key, panic = %message, "reconcile panicked");
    run.set(Update::new(
        types::READY,
        Status::False,
        "InternalError",
        format!("the operator failed while reconciling this resource and will retry with backoff: {message}"),
    ));
    run.status.phase = Some(Phase::Failed);
    if let Err(e) = run.finish().await {
        tracing::warn!(error = %e, "recording the internal error failed");
    }
}

/// One reconcile's working state.
struct Run<K: VmKind> {
    obj: Arc<K>,
    ctx: Arc<Context>,
    key: String,
    now: DateTime<Utc>,
    zone: String,
    instance_name: String,
    status: VmStatus,
    url: Option<String>,
    events: Vec<Event>,
    requeue: Duration,
}

/// Event notes longer than this are cut (the API server refuses notes over 1 KiB).
const MAX_EVENT_NOTE_BYTES: usize = 1000;

const FAST: Duration = Duration::from_secs(3);

/// How soon to poll an operation of this age: most finish within seconds, so poll often
/// at first and back off to every 3 s for long ones.
pub fn operation_poll_interval(age: Duration) -> Duration {
    match age.as_secs() {
        0..5 => Duration::from_millis(500),
        5..30 => Duration::from_secs(1),
        _ => FAST,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.with_timezone(&Utc))
}

/// Parses `1h30m`-style durations (the forms the CRD admits).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += match c {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

pub fn state_str(s: &InstanceState) -> String {
    match s {
        InstanceState::Provisioning => "PROVISIONING".into(),
        InstanceState::Staging => "STAGING".into(),
        InstanceState::Running => "RUNNING".into(),
        InstanceState::Stopping => "STOPPING".into(),
        InstanceState::Suspending => "SUSPENDING".into(),
        InstanceState::Suspended => "SUSPENDED".into(),
        InstanceState::Repairing => "REPAIRING".into(),
        InstanceState::Terminated => "TERMINATED".into(),
        InstanceState::Other(o) => o.clone(),
    }
}

impl<K: VmKind + KindWork> Run<K> {
    fn new(obj: Arc<K>, ctx: Arc<Context>) -> Self {
        let status = obj.vm_status().cloned().unwrap_or_default();
        let zone = status
            .instance
            .as_ref()
            .and_then(|i| i.zone.clone())
            .or_else(|| obj.machine().zone.clone())
            .unwrap_or_else(|| ctx.config.default_zone.clone());
        let instance_name = naming::instance_name(K::LABEL, &obj.namespace().unwrap_or_default(), &obj.name_any());
        Self {
            key: object_key(&*obj),
            url: obj.current_url().map(String::from),
            obj,
            ctx,
            now: Utc::now(),
            zone,
            instance_name,
            status,
            events: vec![],
            requeue: Duration::from_secs(60),
        }
    }

    /// Key for counting consecutive cloud failures (kept apart from reconcile errors,
    /// whose count resets on every successful reconcile).
    fn cloud_key(&self) -> String {
        format!("{}#cloud", self.key)
    }

    fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    fn set(&mut self, update: Update) {
        let now = rfc3339(self.now);
        let generation = self.generation();
        let before = conditions::get(&self.status.conditions, update.type_).cloned();
        // A Warning event when a condition newly turns False with a specific reason.
        if update.status == Status::False
            && before.as_ref().is_none_or(|b| b.status != "False" || b.reason != update.reason)
            && is_failure_reason(&update.reason)
        {
            self.warn(&update.reason, &update.message);
        }
        conditions::set(&mut self.status.conditions, update, generation, &now);
    }

    fn event(&mut self, type_: EventType, reason: &str, note: impl Into<String>) {
        // Events notes are capped by the API server; cut on a character boundary.
        let note = crate::text::clip(&note.into(), MAX_EVENT_NOTE_BYTES);
        self.events.push(Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        });
    }

    fn warn(&mut self, reason: &str, note: &str) {
        self.event(EventType::Warning, reason, note);
    }

    fn soon(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d);
    }

    fn power(&mut self) -> &mut PowerStatus {
        self.status.power.get_or_insert_with(PowerStatus::default)
    }

    fn progress(&mut self, step: &str, message: impl Into<String>, percent: Option<i32>) {
        let message = message.into();
        let p = self.status.progress.get_or_insert_with(Progress::default);
        let changed =
            p.step.as_deref() != Some(step) || p.message.as_deref() != Some(message.as_str()) || p.percent != percent;
        p.step = Some(step.to_string());
        p.message = Some(message);
        p.percent = percent;
        if changed {
            p.last_progress_at = Some(rfc3339(self.now));
        }
    }

    /// Writes the status (only when it changed) and publishes the collected events.
    async fn finish(mut self) -> Result<Action, Error> {
        self.status.observed_generation = self.generation();
        let ns = self.obj.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), &ns);
        let new = K::status_json(&self.status, self.url.as_deref());
        let old = self.obj.vm_status().map(|s| K::status_json(s, self.obj.current_url()));
        if old.as_ref() != Some(&new) {
            let patch = serde_json::json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "status": new,
            });
            api.patch_status(&self.obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
                .await?;
        }
        let reference = self.obj.object_ref(&());
        for e in &self.events {
            if let Err(err) = self.ctx.recorder.publish(e, &reference).await {
                tracing::warn!(object = %self.key, error = %err, "publishing event failed");
            }
        }
        if let Some(cost) = &self.status.cost {
            self.ctx.metrics.set_cost(K::LABEL, &ns, &self.obj.name_any(), cost.accrued, cost.hourly_rate);
        }
        self.ctx.metrics.set_ready(
            K::LABEL,
            &ns,
            &self.obj.name_any(),
            conditions::is_true(&self.status.conditions, types::READY),
        );
        Ok(Action::requeue(self.requeue))
    }
}

fn is_failure_reason(reason: &str) -> bool {
    !matches!(
        reason,
        "Provisioning"
            | "Starting"
            | "Stopping"
            | "Stopped"
            | "Waiting"
            | "InProgress"
            | "Pending"
            | "Resizing"
            | "Paused"
            | "Refreshing"
            | "NotReady"
    )
}

async fn apply<K: VmKind + KindWork>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut run = Run::new(obj.clone(), ctx.clone());

    // Paused: touch nothing, say so once.
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    let was_paused = run.status.progress.as_ref().and_then(|p| p.step.as_deref()) == Some("Paused");
    if paused {
        if !was_paused {
            run.event(
                EventType::Normal,
                "Paused",
                format!("reconciling paused by annotation {PAUSED_ANNOTATION}=true; remove it to resume"),
            );
            run.progress("Paused", format!("reconciling paused by annotation {PAUSED_ANNOTATION}"), None);
        }
        return run.finish().await.map(|_| Action::await_change());
    }
    if was_paused {
        run.event(EventType::Normal, "Resumed", "reconciling resumed");
        run.progress("Resuming", "reconciling resumed", None);
    }

    let key = secrets::ensure_ssh_key(&ctx, &*obj).await?;
    let user = obj.machine().user.clone();
    let desired_metadata = BTreeMap::from([
        ("ssh-keys".to_string(), format!("{user}:{}", key.public_openssh)),
        ("enable-guest-attributes".to_string(), "TRUE".to_string()),
    ]);

    // A cloud operation in flight: poll it, never wait on it.
    let mut fresh = run.status.instance.is_none();
    if let Some(op) = run.status.operation.clone() {
        match ctx.compute.operation(&OperationRef { name: op.name.clone(), zone: op.zone.clone() }).await {
            Ok(OperationState::Running { progress }) => {
                let started = parse_time(op.started_at.as_deref()).unwrap_or(run.now);
                let limit = parse_duration(&obj.machine().progress_timeout).unwrap_or(Duration::from_secs(900));
                if (run.now - started).to_std().unwrap_or_default() > limit {
                    run.status.operation = None;
                    run.set(Update::new(
                        types::INSTANCE_READY,
                        Status::False,
                        "StepTimedOut",
                        format!(
                            "Compute Engine operation {} ({}) did not finish within {}",
                            op.name,
                            op.kind,
                            humanize(limit)
                        ),
                    ));
                    run.status.phase = Some(Phase::Failed);
                    run.soon(Duration::from_secs(30));
                } else {
                    run.progress(
                        "Instance",
                        format!("waiting for Compute Engine operation {} ({})", op.kind, op.name),
                        progress,
                    );
                    run.soon(operation_poll_interval((run.now - started).to_std().unwrap_or_default()));
                }
                return run.finish().await;
            }
            Ok(OperationState::Done) => {
                run.status.operation = None;
                ctx.instances.invalidate(&run.zone);
                ctx.reset_failures(&run.cloud_key());
                fresh = true;
                operation_done(&mut run, &op);
            }
            Ok(OperationState::Failed(err)) => {
                // Record it and retry after a capped backoff, never in the same pass.
                run.status.operation = None;
                ctx.instances.invalidate(&run.zone);
                cloud_failure(&mut run, &op.kind, &err);
                let failures = ctx.record_failure(&run.cloud_key());
                run.soon(super::error_backoff(failures));
                summarize(&mut run);
                return run.finish().await;
            }
            Err(e) => return Err(e.into()),
        }
    }

    let instance = if fresh {
        ctx.compute.get_instance(&run.zone, &run.instance_name).await?
    } else {
        ctx.instances.get(&*ctx.compute, &run.zone, &run.instance_name).await?
    };

    // Power history and cost, from the cloud's own start/stop times.
    if let Some(inst) = &instance {
        observe_instance(&mut run, inst);
    }

    let start_request = obj.annotations().get(START_ANNOTATION).cloned();
    let idle_expired = idle_expired(&run, instance.as_ref());
    let desired_mt = obj.machine().desired_machine_type();
    let power = run.status.power.clone().unwrap_or_default();
    let action = plan_instance(&InstanceInputs {
        instance: instance.as_ref(),
        owned: instance
            .as_ref()
            .is_some_and(|i| naming::belongs_to(i, K::LABEL, &obj.namespace().unwrap_or_default(), &obj.name_any())),
        desired_machine_type: &desired_mt,
        run_strategy: obj.machine().run_strategy,
        desired_metadata: &desired_metadata,
        power: &power,
        start_request: start_request.as_deref(),
        idle_expired,
    });
    tracing::debug!(object = %run.key, ?action, "instance plan");

    match action {
        InstanceAction::Running => {
            let inst = instance.expect("running implies an instance");
            if run.status.power.as_ref().is_some_and(|p| p.resizing_to.is_some()) {
                let p = run.power();
                p.resizing_to = None;
                p.resize_restore_running = None;
                run.event(EventType::Normal, "Resized", format!("machine type is now {}", inst.machine_type));
            }
            run_steps(&mut run, &inst, &key).await?;
        }
        InstanceAction::Stopped => {
            let reason = run.status.power.as_ref().and_then(|p| p.last_stop_reason.clone());
            if run.status.power.as_ref().is_some_and(|p| p.resizing_to.is_some()) {
                let p = run.power();
                p.resizing_to = None;
                p.resize_restore_running = None;
                run.event(
                    EventType::Normal,
                    "Resized",
                    format!("machine type is now {desired_mt}; the VM stays stopped as it was"),
                );
            }
            let message = match reason.as_deref() {
                Some("IdleTimeout") => format!(
                    "stopped after idleTimeout {} without activity (last activity {})",
                    obj.machine().idle_timeout.clone().unwrap_or_default(),
                    run.status.last_activity_at.clone().unwrap_or_else(|| "never".into())
                ),
                Some("Halted") => "stopped: runStrategy is Halted".to_string(),
                _ if obj.machine().run_strategy == RunStrategy::Manual => format!(
                    "stopped; runStrategy Manual leaves it so. Set annotation {START_ANNOTATION} to a new value to start it"
                ),
                _ => "stopped".to_string(),
            };
            let reason = reason.filter(|r| r == "IdleTimeout").unwrap_or_else(|| "Stopped".into());
            run.set(Update::new(types::INSTANCE_READY, Status::False, reason.clone(), message.clone()));
            run.status.phase = Some(Phase::Stopped);
            run.set(Update::new(types::READY, Status::False, reason, message));
            run.status.progress = Some(Progress {
                step: Some("Stopped".into()),
                message: Some("VM is stopped".into()),
                percent: None,
                last_progress_at: Some(rfc3339(run.now)),
            });
            return run.finish().await;
        }
        other => {
            let inst = instance.clone();
            instance_action(&mut run, other, inst.as_ref(), &desired_metadata, start_request.as_deref()).await?;
        }
    }
    summarize(&mut run);
    run.finish().await
}

/// Records what a finished operation did.
fn operation_done<K: VmKind + KindWork>(run: &mut Run<K>, op: &PendingOperation) {
    let (reason, note) = match op.kind.as_str() {
        "insert" => ("Created", format!("created instance {} in {}", run.instance_name, op.zone)),
        "start" => ("Started", format!("started instance {}", run.instance_name)),
        "stop" => ("Stopped", format!("stopped instance {}", run.instance_name)),
        "setMachineType" => ("MachineTypeSet", format!("set the machine type of {}", run.instance_name)),
        "setMetadata" => ("MetadataSet", format!("updated the metadata of {}", run.instance_name)),
        _ => return,
    };
    run.event(EventType::Normal, reason, note);
    run.progress("Instance", format!("{} finished", op.kind), None);
}

/// A failed cloud call or operation: condition, event, backoff.
fn cloud_failure<K: VmKind + KindWork>(run: &mut Run<K>, what: &str, err: &CloudError) {
    let reason = err.kind.condition_reason();
    let message = format!("Compute Engine {what} of instance {} failed: {}", run.instance_name, err.message);
    run.set(Update::new(types::INSTANCE_READY, Status::False, reason, message.clone()));
    run.set(Update::new(types::READY, Status::False, reason, message));
}

fn observe_instance<K: VmKind + KindWork>(run: &mut Run<K>, inst: &CloudInstance) {
    let running = inst.state == InstanceState::Running;
    let rate = run.ctx.rates.compute_hourly(&inst.machine_type);
    let power = run.status.power.clone().unwrap_or_default();
    let mut next = cost::observe_power(
        &power,
        running,
        parse_time(inst.last_start_at.as_deref()),
        parse_time(inst.last_stop_at.as_deref()),
        parse_time(inst.created_at.as_deref()),
        rate,
        run.now,
    );
    if running && power.running_since.is_none() {
        run.status.last_started_at = next.running_since.clone();
        next.last_stop_reason = None;
    }
    let disk = run.ctx.rates.disk_hourly(run.obj.machine().disk_size_gb);
    run.status.cost = Some(cost::cost(&next, rate, disk, run.now));
    run.status.power = Some(next);

    let prev = run.status.instance.clone().unwrap_or_default();
    let same_instance = prev.id.as_deref() == Some(inst.id.as_str());
    if prev.id.is_none() && inst.labels.get("projectvm-uid").map(String::as_str) != run.obj.uid().as_deref() {
        run.event(
            EventType::Normal,
            "Adopted",
            format!(
                "adopted existing instance {} (id {}) made for an earlier resource of the same name",
                inst.name, inst.id
            ),
        );
    }
    run.status.instance = Some(InstanceStatus {
        name: Some(inst.name.clone()),
        id: Some(inst.id.clone()),
        zone: Some(inst.zone.clone()),
        machine_type: Some(inst.machine_type.clone()),
        status: Some(state_str(&inst.state)),
        internal_ip: inst.internal_ip.clone(),
        external_ip: inst.external_ip.clone(),
        host_key: if same_instance { prev.host_key } else { None },
        host_key_fingerprint: if same_instance { prev.host_key_fingerprint } else { None },
    });
    if !same_instance && prev.id.is_some() {
        // A new instance under the same name: everything on the VM must be redone.
        for node in K::GRAPH {
            conditions::clear_fingerprint(&mut run.status.conditions, node.condition);
        }
        run.ctx.tasks.forget(&run.key);
        run.event(
            EventType::Warning,
            "InstanceReplaced",
            format!(
                "instance {} was recreated (id {} → {}); redoing every step",
                inst.name,
                prev.id.unwrap_or_default(),
                inst.id
            ),
        );
    }
}

fn idle_expired<K: VmKind + KindWork>(run: &Run<K>, inst: Option<&CloudInstance>) -> bool {
    let Some(timeout) = run.obj.machine().idle_timeout.as_deref().and_then(parse_duration) else {
        return false;
    };
    if inst.is_none_or(|i| i.state != InstanceState::Running) {
        return false;
    }
    let since =
        [run.status.last_activity_at.as_deref(), run.status.power.as_ref().and_then(|p| p.running_since.as_deref())]
            .into_iter()
            .filter_map(parse_time)
            .max();
    since.is_some_and(|t| (run.now - t).to_std().unwrap_or_default() >= timeout)
}

/// Executes one cloud action and records the operation it started.
async fn instance_action<K: VmKind + KindWork>(
    run: &mut Run<K>,
    action: InstanceAction,
    inst: Option<&CloudInstance>,
    metadata: &BTreeMap<String, String>,
    start_request: Option<&str>,
) -> Result<(), Error> {
    let ctx = run.ctx.clone();
    let zone = run.zone.clone();
    let name = run.instance_name.clone();
    let result = match &action {
        InstanceAction::Create => {
            let m = run.obj.machine();
            let req = InstanceRequest {
                name: name.clone(),
                zone: zone.clone(),
                machine_type: m.desired_machine_type(),
                source_image: m.image.source_image(),
                disk_size_gb: i64::from(m.disk_size_gb),
                labels: naming::instance_labels(
                    K::LABEL,
                    &run.obj.namespace().unwrap_or_default(),
                    &run.obj.name_any(),
                    run.obj.uid().as_deref().unwrap_or(""),
                ),
                metadata: metadata.clone(),
                network: ctx.config.network.clone(),
                subnetwork: ctx.config.subnetwork.clone(),
                external_ip: !ctx.config.use_internal_ip,
                service_account_email: None,
                tags: vec!["projectvm".into()],
            };
            run.set(Update::new(
                types::INSTANCE_READY,
                Status::False,
                "Provisioning",
                format!("creating instance {name} ({}) in {zone}", req.machine_type),
            ));
            run.progress("Instance", format!("creating instance {name}"), None);
            run.status.phase = Some(Phase::Provisioning);
            ctx.compute.insert_instance(&req).await.map(|op| Some(("insert", op)))
        }
        InstanceAction::NameConflict { owner_uid } => {
            let message = format!(
                "an instance named {name} already exists in {zone} and belongs to {}; delete or rename it",
                owner_uid
                    .as_deref()
                    .map(|u| format!("resource uid {u}"))
                    .unwrap_or_else(|| "something other than projectvm".into())
            );
            run.set(Update::new(types::INSTANCE_READY, Status::False, "InstanceNameConflict", message.clone()));
            run.set(Update::new(types::READY, Status::False, "InstanceNameConflict", message));
            run.status.phase = Some(Phase::Failed);
            run.soon(Duration::from_secs(300));
            Ok(None)
        }
        InstanceAction::WaitTransition => {
            let state = inst.map(|i| state_str(&i.state)).unwrap_or_default();
            let reason = if state == "STOPPING" { "Stopping" } else { "Starting" };
            run.set(Update::new(types::INSTANCE_READY, Status::False, reason, format!("instance is {state}")));
            run.progress("Instance", format!("instance is {state}"), None);
            run.soon(FAST);
            Ok(None)
        }
        InstanceAction::Stop(reason) => {
            match reason {
                StopReason::Resize => {
                    let to = run.obj.machine().desired_machine_type();
                    let p = run.power();
                    p.resizing_to = Some(to.clone());
                    p.resize_restore_running = Some(true);
                    run.event(EventType::Normal, "Resizing", format!("stopping to change the machine type to {to}"));
                }
                StopReason::IdleTimeout => {
                    let last = run.status.last_activity_at.clone().unwrap_or_else(|| "never".into());
                    run.event(
                        EventType::Normal,
                        "IdleTimeout",
                        format!(
                            "stopping: no activity for {} (last activity {last})",
                            run.obj.machine().idle_timeout.clone().unwrap_or_default()
                        ),
                    );
                }
                StopReason::Halted => run.event(EventType::Normal, "Stopping", "runStrategy is Halted"),
            }
            run.power().last_stop_reason = Some(reason.as_str().to_string());
            run.set(Update::new(
                types::INSTANCE_READY,
                Status::False,
                "Stopping",
                format!("stopping instance ({})", reason.as_str()),
            ));
            ctx.compute.stop_instance(&zone, &name).await.map(|op| Some(("stop", op)))
        }
        InstanceAction::Start(reason) => {
            match reason {
                StartReason::AfterResize => {
                    let p = run.power();
                    p.resizing_to = None;
                    p.resize_restore_running = None;
                    let mt = inst.map(|i| i.machine_type.clone()).unwrap_or_default();
                    run.event(
                        EventType::Normal,
                        "Resized",
                        format!("machine type is now {mt}; starting the VM again as it was running"),
                    );
                }
                StartReason::Requested => {
                    run.power().acknowledged_start_request = start_request.map(String::from);
                    run.event(
                        EventType::Normal,
                        "StartRequested",
                        format!("starting: annotation {START_ANNOTATION} was set"),
                    );
                }
                StartReason::Always => {
                    run.event(EventType::Normal, "Starting", "runStrategy is Always and the VM was stopped")
                }
            }
            run.set(Update::new(types::INSTANCE_READY, Status::False, "Starting", "starting instance"));
            ctx.compute.start_instance(&zone, &name).await.map(|op| Some(("start", op)))
        }
        InstanceAction::SetMachineType(mt) => {
            let p = run.power();
            p.resizing_to = Some(mt.clone());
            if p.resize_restore_running.is_none() {
                p.resize_restore_running = Some(false);
            }
            run.set(Update::new(
                types::INSTANCE_READY,
                Status::False,
                "Resizing",
                format!("setting machine type {mt}"),
            ));
            ctx.compute.set_machine_type(&zone, &name, mt).await.map(|op| Some(("setMachineType", op)))
        }
        InstanceAction::SetMetadata => {
            let mut items = inst.map(|i| i.metadata.clone()).unwrap_or_default();
            items.extend(metadata.clone());
            let fp = inst.and_then(|i| i.metadata_fingerprint.clone());
            run.progress("Instance", "updating instance metadata (SSH key, guest attributes)", None);
            ctx.compute.set_metadata(&zone, &name, fp.as_deref(), &items).await.map(|op| Some(("setMetadata", op)))
        }
        InstanceAction::AcknowledgeStartRequest => {
            run.power().acknowledged_start_request = start_request.map(String::from);
            let note = if run.obj.machine().run_strategy == RunStrategy::Halted {
                "start request ignored: runStrategy is Halted"
            } else {
                "start request acknowledged: the VM is already running"
            };
            run.event(EventType::Normal, "StartRequestAcknowledged", note);
            run.soon(FAST);
            Ok(None)
        }
        InstanceAction::Running | InstanceAction::Stopped => Ok(None),
    };
    match result {
        Ok(Some((kind, op))) => {
            ctx.instances.invalidate(&zone);
            run.status.operation = Some(PendingOperation {
                name: op.name,
                kind: kind.into(),
                zone: op.zone,
                started_at: Some(rfc3339(run.now)),
            });
            if matches!(action, InstanceAction::Stop(StopReason::Resize) | InstanceAction::SetMachineType(_)) {
                run.status.phase = Some(Phase::Resizing);
            }
            run.soon(operation_poll_interval(Duration::ZERO));
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => {
            let kind = match &action {
                InstanceAction::Create => "insert",
                InstanceAction::Stop(_) => "stop",
                InstanceAction::Start(_) => "start",
                InstanceAction::SetMachineType(_) => "setMachineType",
                _ => "setMetadata",
            };
            cloud_failure(run, kind, &err);
            if err.kind.retryable() {
                Err(err.into())
            } else {
                run.status.phase = Some(Phase::Failed);
                run.soon(Duration::from_secs(120));
                Ok(())
            }
        }
    }
}

/// The instance runs: pin its host key, then plan and run the kind's steps.
async fn run_steps<K: VmKind + KindWork>(
    run: &mut Run<K>,
    inst: &CloudInstance,
    key: &secrets::SshKey,
) -> Result<(), Error> {
    let ctx = run.ctx.clone();
    let Some(address) = (if ctx.config.use_internal_ip {
        inst.internal_ip.clone()
    } else {
        inst.external_ip.clone().or_else(|| inst.internal_ip.clone())
    }) else {
        run.set(Update::new(
            types::INSTANCE_READY,
            Status::False,
            "NoAddress",
            "the instance has no address the operator can reach",
        ));
        run.soon(FAST);
        return Ok(());
    };

    // Pin the host key the guest agent published; never trust on first use.
    let pinned = run.status.instance.as_ref().and_then(|i| i.host_key.clone());
    let host_key = match pinned {
        Some(k) => k,
        None => {
            let attrs = ctx.compute.guest_attributes(&run.zone, &run.instance_name, "hostkeys/").await?;
            let preferred = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"];
            let found = preferred
                .iter()
                .find_map(|t| attrs.iter().find(|a| a.key == *t).map(|a| format!("{} {}", a.key, a.value.trim())));
            match found {
                Some(k) => {
                    let fp = ssh::host_key_fingerprint(&k).unwrap_or_default();
                    if let Some(i) = run.status.instance.as_mut() {
                        i.host_key = Some(k.clone());
                        i.host_key_fingerprint = Some(fp);
                    }
                    k
                }
                None => {
                    run.set(Update::new(
                        types::INSTANCE_READY,
                        Status::False,
                        "Waiting",
                        "waiting for the guest agent to publish the SSH host keys (guest attributes hostkeys/)",
                    ));
                    run.progress("Instance", "waiting for host keys", None);
                    run.soon(FAST);
                    return Ok(());
                }
            }
        }
    };
    run.set(Update::new(
        types::INSTANCE_READY,
        Status::True,
        "Running",
        format!("instance {} is running at {address}", inst.name),
    ));

    let machine = run.obj.machine().clone();
    let target = SshTarget {
        host: address.clone(),
        port: ctx.config.ssh_port,
        user: machine.user.clone(),
        pinned_host_key: host_key,
        private_key_openssh: key.private_openssh.clone(),
    };

    // Secrets the steps need.
    let ns = run.obj.namespace().unwrap_or_default();
    let mut env = StepEnv {
        instance_id: inst.id.clone(),
        address: address.clone(),
        code_server_install_url: ctx.config.code_server_install_url.clone(),
        ..Default::default()
    };
    if let Some(r) = run.obj.credentials_ref() {
        match secrets::read_token(&ctx, &ns, r).await? {
            Ok(t) => env.token = Some(t),
            Err(p) => env.token_problem = Some(p.message),
        }
    }
    if let Some(ws) = run.obj.clone().as_workspace() {
        env.password = workspace_password(run, ws).await?;
    }

    let limit = parse_duration(&machine.progress_timeout).unwrap_or(Duration::from_secs(900));
    let prepared: Vec<(StepId, work::Prepared)> =
        K::GRAPH.iter().map(|n| (n.id, run.obj.prepare(n.id, &env))).collect();
    let find = |id: StepId| prepared.iter().find(|(s, _)| *s == id).map(|(_, p)| p.clone());
    let conds = run.status.conditions.clone();
    let plan = plan_steps(K::GRAPH, |id| {
        let node = K::GRAPH.iter().find(|n| n.id == id).expect("node in graph");
        let c = conditions::get(&conds, node.condition);
        StepObservation {
            desired_fingerprint: match find(id) {
                Some(Ok((fp, _))) => fp,
                _ => String::new(),
            },
            recorded_fingerprint: c.and_then(|c| c.fingerprint.clone()),
            condition_true: c.is_some_and(|c| c.status == "True"),
            task: ctx.tasks.view(&run.key, id),
        }
    });
    let run_now = due(K::GRAPH, &plan);

    for node in K::GRAPH {
        let decision = plan.iter().find(|(id, _)| *id == node.id).map(|(_, d)| *d).unwrap_or(StepDecision::Blocked);
        let prep = find(node.id).expect("prepared");
        let (fp, work) = match prep {
            Ok(p) => p,
            Err(blocked) => {
                run.set(Update::new(node.condition, Status::False, blocked.reason, blocked.message.clone()));
                if run.obj.credentials_ref().is_some() && blocked.reason == "SecretNotFound" {
                    run.set(Update::new(types::CREDENTIALS_CURRENT, Status::False, "SecretNotFound", blocked.message));
                }
                run.soon(Duration::from_secs(30));
                continue;
            }
        };
        match decision {
            StepDecision::Collect => {
                if let Some((task_fp, outcome)) = ctx.tasks.take_finished(&run.key, node.id) {
                    collect(run, node.id, node.condition, &task_fp, &fp, outcome, env.token.as_ref());
                }
                run.soon(Duration::from_millis(200));
            }
            StepDecision::Running => {
                let p = ctx.tasks.progress(&run.key, node.id).unwrap_or_default();
                run.set(Update::new(node.condition, Status::False, "InProgress", p.message.clone()));
                if node.id == StepId::Repository && env.token.is_some() {
                    run.set(Update::new(
                        types::CREDENTIALS_CURRENT,
                        Status::False,
                        "Refreshing",
                        "writing the credential helper on the VM",
                    ));
                }
                run.progress(node.id.name(), p.message, p.percent);
                run.soon(Duration::from_secs(10));
            }
            StepDecision::BackingOff => {
                if let Some(d) = ctx.tasks.retry_in(&run.key, node.id) {
                    run.soon(d + Duration::from_millis(100));
                }
            }
            StepDecision::Blocked => {
                if !conditions::is_true(&run.status.conditions, node.condition) || !run_now.contains(&node.id) {
                    let waiting: Vec<&str> = node.after.iter().map(|s| s.name()).collect();
                    if !conditions::get(&run.status.conditions, node.condition)
                        .is_some_and(|c| c.status == "False" && is_failure_reason(&c.reason))
                    {
                        run.set(Update::new(
                            node.condition,
                            Status::False,
                            "Waiting",
                            format!("waiting for {}", waiting.join(", ")),
                        ));
                    }
                }
            }
            StepDecision::UpToDate | StepDecision::Run => {}
        }
        if !run_now.contains(&node.id) {
            continue;
        }
        match work {
            Work::Health { url } => health(run, node.condition, &url, &fp).await,
            Work::Route { address } => route(run, node.condition, &address, &fp).await?,
            remote => {
                run.set(Update::new(
                    node.condition,
                    Status::False,
                    "InProgress",
                    format!("starting {}", node.id.name()),
                ));
                run.progress(node.id.name(), "starting", None);
                let ssh = ctx.ssh.clone();
                let t = target.clone();
                let step = node.id;
                let fp2 = fp.clone();
                ctx.tasks.spawn(&run.key, node.id, &fp, limit, ctx.waker(&*run.obj), move |progress| {
                    work::run_remote(ssh, t, step, remote, fp2, limit, progress)
                });
                run.soon(Duration::from_secs(10));
            }
        }
    }

    // Activity, for idle shutdown: code-server's heartbeat (Workspace, from the health
    // probe) or a person's sessions and processes on the VM (ProjectVM).
    if K::LABEL == "projectvm"
        && machine.idle_timeout.is_some()
        && conditions::is_true(&run.status.conditions, types::REPOSITORY_SYNCED)
    {
        let probe = crate::guest::activity_probe(&machine.user);
        match ctx
            .ssh
            .exec(&target, crate::guest::RUN_AS_USER, Some(probe.as_bytes()), Duration::from_secs(20), None)
            .await
        {
            Ok(out) if String::from_utf8_lossy(&out.stdout).contains("PROJECTVM_ACTIVE=1") => {
                run.status.last_activity_at = Some(rfc3339(run.now));
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(object = %run.key, error = %e, "activity probe failed"),
        }
    }
    // Look at activity often enough that an idle stop comes soon after the timeout.
    if let Some(idle) = machine.idle_timeout.as_deref().and_then(parse_duration) {
        run.soon((idle / 4).clamp(Duration::from_secs(5), Duration::from_secs(30)));
    }
    Ok(())
}

/// Finds the code-server password: the referenced Secret, or the generated one.
async fn workspace_password<K: VmKind + KindWork>(run: &mut Run<K>, ws: &Workspace) -> Result<Option<Token>, Error> {
    let ctx = run.ctx.clone();
    if ws.spec.code_server.auth == CodeServerAuth::None {
        return Ok(None);
    }
    let ns = ws.namespace().unwrap_or_default();
    if let Some(r) = &ws.spec.code_server.password_secret_ref {
        return match secrets::read_token(&ctx, &ns, r).await? {
            Ok(t) => Ok(Some(t)),
            Err(p) => {
                run.set(Update::new(types::CODE_SERVER_CONFIGURED, Status::False, "SecretNotFound", p.message));
                Ok(None)
            }
        };
    }
    Ok(Some(secrets::ensure_password(&ctx, &*run.obj).await?))
}

/// Records a finished task's result in its condition.
fn collect<K: VmKind + KindWork>(
    run: &mut Run<K>,
    step: StepId,
    condition: &'static str,
    task_fp: &str,
    desired_fp: &str,
    outcome: crate::engine::tasks::TaskOutcome,
    token: Option<&Token>,
) {
    let message = work::redact(&outcome.message, token);
    if outcome.success {
        // A result for inputs that have since changed still says what is on the VM, but
        // the step runs again for the new inputs.
        let fp = (task_fp == desired_fp).then(|| task_fp.to_string());
        let status = if fp.is_some() { Status::True } else { Status::False };
        let reason = if fp.is_some() { outcome.reason.clone() } else { "InProgress".into() };
        run.set(Update::new(condition, status, reason, message.clone()).with_fingerprint(fp.clone()));
        run.event(EventType::Normal, &outcome.reason, format!("{}: {message}", step.name()));
        if step == StepId::Repository {
            run.status.repository = Some(RepositoryStatus {
                revision: outcome.outputs.get("revision").cloned(),
                commit: outcome.outputs.get("commit").cloned(),
                synced_at: Some(rfc3339(run.now)),
            });
            if let Some(t) = token {
                run.set(Update::new(
                    types::CREDENTIALS_CURRENT,
                    Status::True,
                    "TokenApplied",
                    format!("the credential helper on the VM holds the token from the referenced Secret (resourceVersion {})", t.version),
                ));
            }
        }
        run.progress(step.name(), "done", Some(100));
    } else {
        run.set(Update::new(condition, Status::False, outcome.reason.clone(), message.clone()));
        if step == StepId::Repository && outcome.reason == "AuthenticationFailed" && token.is_some() {
            run.set(Update::new(types::CREDENTIALS_CURRENT, Status::False, "AuthenticationFailed", message.clone()));
        }
        run.progress(step.name(), format!("failed: {}", outcome.reason), None);
    }
}

/// How long code-server may take to answer after it was configured.
const HEALTH_GRACE: Duration = Duration::from_secs(180);

async fn health<K: VmKind + KindWork>(run: &mut Run<K>, condition: &'static str, url: &str, fp: &str) {
    let answer = work::probe_health(&run.ctx.http, url).await;
    // code-server writes its heartbeat at most once a minute; "alive" means a client was
    // active within that minute, so it counts as activity now (never stop someone working).
    if answer.alive {
        run.status.last_activity_at = Some(rfc3339(run.now));
    } else if answer.last_heartbeat_ms > 0
        && let Some(t) = DateTime::<Utc>::from_timestamp_millis(answer.last_heartbeat_ms)
    {
        let t = rfc3339(t);
        if run.status.last_activity_at.as_deref().is_none_or(|prev| prev < t.as_str()) {
            run.status.last_activity_at = Some(t);
        }
    }
    if answer.healthy {
        run.set(
            Update::new(condition, Status::True, "Healthy", format!("GET {url}: {}", answer.summary))
                .with_fingerprint(Some(fp.to_string())),
        );
        return;
    }
    // code-server gets a bounded grace period after being (re)configured.
    let configured_at = conditions::get(&run.status.conditions, types::CODE_SERVER_CONFIGURED)
        .and_then(|c| parse_time(c.last_transition_time.as_deref()))
        .unwrap_or(run.now);
    let waited = (run.now - configured_at).to_std().unwrap_or_default();
    if waited < HEALTH_GRACE {
        run.set(Update::new(
            condition,
            Status::False,
            "Waiting",
            format!("waiting for code-server: GET {url}: {}", answer.summary),
        ));
        run.progress("Health", "waiting for code-server to answer", None);
        run.soon(Duration::from_millis(500));
    } else {
        run.set(Update::new(
            condition,
            Status::False,
            "Unhealthy",
            format!(
                "code-server did not answer GET {url} within {}; last answer: {}",
                humanize(HEALTH_GRACE),
                answer.summary
            ),
        ));
        run.soon(Duration::from_secs(15));
    }
}

async fn route<K: VmKind + KindWork>(
    run: &mut Run<K>,
    condition: &'static str,
    address: &str,
    fp: &str,
) -> Result<(), Error> {
    let obj = run.obj.clone();
    let Some(ws) = obj.as_workspace() else {
        return Err(Error::Invalid("only Workspaces have a route".into()));
    };
    super::route::apply(&run.ctx, ws, address).await?;
    let url = super::route::url(ws.spec.ingress.as_ref(), address, ws.spec.code_server.port);
    if run.url.as_deref() != Some(url.as_str()) {
        run.event(EventType::Normal, "Routed", format!("workspace is served at {url}"));
    }
    run.url = Some(url.clone());
    run.set(
        Update::new(
            condition,
            Status::True,
            "Routed",
            format!("Service {} routes to {address}; open {url}", super::route::service_name(&ws.name_any())),
        )
        .with_fingerprint(Some(fp.to_string())),
    );
    Ok(())
}

/// Ready, phase and the progress timeout, from the conditions.
fn summarize<K: VmKind + KindWork>(run: &mut Run<K>) {
    let instance_ready = conditions::is_true(&run.status.conditions, types::INSTANCE_READY);
    let pending: Vec<&'static str> =
        K::GRAPH.iter().map(|n| n.condition).filter(|c| !conditions::is_true(&run.status.conditions, c)).collect();
    let ready = instance_ready && pending.is_empty() && run.status.operation.is_none();
    if ready {
        let was = conditions::is_true(&run.status.conditions, types::READY);
        let msg = match &run.url {
            Some(u) => format!("ready at {u}"),
            None => "ready: instance running, prerequisites installed, repository synced".into(),
        };
        run.set(Update::new(types::READY, Status::True, "Ready", msg.clone()));
        if !was {
            run.event(EventType::Normal, "Ready", msg);
        }
        run.status.phase = Some(Phase::Ready);
        run.status.progress = Some(Progress {
            step: Some("Ready".into()),
            message: Some("ready".into()),
            percent: None,
            last_progress_at: Some(rfc3339(run.now)),
        });
        return;
    }
    // Not ready: say why, by the first condition that is not True.
    let blocking = std::iter::once(types::INSTANCE_READY)
        .chain(K::GRAPH.iter().map(|n| n.condition))
        .find_map(|t| conditions::get(&run.status.conditions, t).filter(|c| c.status != "True").cloned());
    let (reason, message) = match &blocking {
        Some(c) => (c.reason.clone(), format!("{}: {}", c.type_, c.message)),
        None => ("NotReady".to_string(), "waiting for the instance".to_string()),
    };
    let failing = blocking.as_ref().is_some_and(|c| is_failure_reason(&c.reason));
    run.set(Update::new(types::READY, Status::False, reason, message));
    if run.status.phase != Some(Phase::Resizing) || run.status.operation.is_none() {
        run.status.phase = Some(if failing {
            Phase::Failed
        } else if run.status.operation.as_ref().is_some_and(|o| o.kind == "stop") {
            Phase::Stopping
        } else if run.status.power.as_ref().is_some_and(|p| p.resizing_to.is_some()) {
            Phase::Resizing
        } else if !instance_ready {
            Phase::Provisioning
        } else {
            match K::GRAPH.iter().find(|n| pending.contains(&n.condition)).map(|n| n.id) {
                Some(StepId::Prerequisites) => Phase::Installing,
                Some(StepId::Repository) => Phase::Syncing,
                Some(_) => Phase::Configuring,
                None => Phase::Provisioning,
            }
        });
    }
    // Progress timeout: no progress for that long fails the resource, naming the step.
    let limit = parse_duration(&run.obj.machine().progress_timeout).unwrap_or(Duration::from_secs(900));
    let last = run.status.progress.as_ref().and_then(|p| parse_time(p.last_progress_at.as_deref()));
    match last {
        None => run.progress("Pending", "starting", None),
        Some(t) if (run.now - t).to_std().unwrap_or_default() > limit => {
            let step = run.status.progress.as_ref().and_then(|p| p.step.clone()).unwrap_or_else(|| "Instance".into());
            let message = format!("step {step} made no progress for {} (progressTimeout)", humanize(limit));
            let already =
                conditions::get(&run.status.conditions, types::READY).is_some_and(|c| c.reason == "StepTimedOut");
            if !already {
                run.warn("StepTimedOut", &message);
            }
            let generation = run.generation();
            let now = rfc3339(run.now);
            conditions::set(
                &mut run.status.conditions,
                Update::new(types::READY, Status::False, "StepTimedOut", message),
                generation,
                &now,
            );
            run.status.phase = Some(Phase::Failed);
        }
        _ => {}
    }
}

/// Deletion: remove the instance (or leave it, with `Orphan`), finishing on its own when
/// the instance is already gone.
async fn cleanup<K: VmKind + KindWork>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut run = Run::new(obj.clone(), ctx.clone());
    ctx.tasks.forget(&run.key);
    if let Some(addr) = run.status.instance.as_ref().and_then(|i| i.external_ip.clone().or(i.internal_ip.clone())) {
        ctx.ssh.forget(&addr).await;
    }
    if obj.machine().deletion_policy == DeletionPolicy::Orphan {
        run.event(
            EventType::Normal,
            "Orphaned",
            format!("deletionPolicy is Orphan: instance {} in {} is kept", run.instance_name, run.zone),
        );
        let reference = obj.object_ref(&());
        for e in &run.events {
            let _ = ctx.recorder.publish(e, &reference).await;
        }
        return Ok(Action::await_change());
    }
    run.status.phase = Some(Phase::Deleting);
    if let Some(op) = run.status.operation.clone().filter(|o| o.kind == "delete") {
        match ctx.compute.operation(&OperationRef { name: op.name.clone(), zone: op.zone.clone() }).await? {
            OperationState::Running { .. } => {
                run.progress("Deleting", format!("deleting instance {}", run.instance_name), None);
                return keep_finalizer(run, FAST).await;
            }
            OperationState::Done => {
                run.status.operation = None;
            }
            OperationState::Failed(err) => {
                run.status.operation = None;
                cloud_failure(&mut run, "delete", &err);
                let failures = run.ctx.record_failure(&run.cloud_key());
                return keep_finalizer(run, super::error_backoff(failures)).await;
            }
        }
    }
    let instance = ctx.compute.get_instance(&run.zone, &run.instance_name).await?;
    let ours = instance
        .as_ref()
        .is_some_and(|i| naming::belongs_to(i, K::LABEL, &obj.namespace().unwrap_or_default(), &obj.name_any()));
    if !ours {
        // Gone (or never ours): nothing left to do, the finalizer comes off.
        ctx.instances.invalidate(&run.zone);
        ctx.reset_failures(&run.cloud_key());
        ctx.metrics.forget(K::LABEL, &obj.namespace().unwrap_or_default(), &obj.name_any());
        run.event(EventType::Normal, "Deleted", format!("instance {} is gone", run.instance_name));
        let reference = obj.object_ref(&());
        for e in &run.events {
            let _ = ctx.recorder.publish(e, &reference).await;
        }
        return Ok(Action::await_change());
    }
    match ctx.compute.delete_instance(&run.zone, &run.instance_name).await {
        Ok(Some(op)) => {
            run.event(EventType::Normal, "Deleting", format!("deleting instance {}", run.instance_name));
            run.status.operation = Some(PendingOperation {
                name: op.name,
                kind: "delete".into(),
                zone: op.zone,
                started_at: Some(rfc3339(run.now)),
            });
            run.progress("Deleting", format!("deleting instance {}", run.instance_name), None);
            keep_finalizer(run, FAST).await
        }
        // Gone between the get and the delete: the next pass finds nothing and finishes.
        Ok(None) => keep_finalizer(run, Duration::from_millis(100)).await,
        Err(err) => {
            cloud_failure(&mut run, "delete", &err);
            let failures = run.ctx.record_failure(&run.cloud_key());
            keep_finalizer(run, super::error_backoff(failures)).await
        }
    }
}

/// Deletion is not finished: write the status and return an error, because the finalizer
/// helper removes the finalizer whenever cleanup returns Ok.
async fn keep_finalizer<K: VmKind + KindWork>(run: Run<K>, retry_in: Duration) -> Result<Action, Error> {
    let what = format!("deleting instance {}", run.instance_name);
    run.finish().await?;
    Err(Error::CleanupPending { what, retry_in })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn operation_polling_backs_off() {
        assert_eq!(operation_poll_interval(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(operation_poll_interval(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(operation_poll_interval(Duration::from_secs(600)), Duration::from_secs(3));
    }

    #[test]
    fn failure_reasons() {
        assert!(is_failure_reason("RepositoryNotFound"));
        assert!(is_failure_reason("QuotaExceeded"));
        assert!(!is_failure_reason("Waiting"));
        assert!(!is_failure_reason("InProgress"));
    }
}
