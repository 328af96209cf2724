//! One reconcile, top to bottom: the finalizer decides between apply and cleanup; apply runs
//! observe → plan → act, and whatever happened — success, a refused cloud call, a Kubernetes
//! error, a panic — reaches status through the builder in [`super::status`] before the
//! reconcile returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};

use super::kind::VmKind;
use super::status::Report;
use super::{Context, Error, activity, cleanup, instance, kind, observe, plan, steps, writer};
use crate::api::StopReason;
use crate::api::{FINALIZER, PAUSED_ANNOTATION};
use crate::conditions;
use crate::conditions::types;
use crate::engine::instance::InstanceAction;

/// Entry point for both controllers. A panic inside is this object's error, never the
/// process's end: it is recorded in the object's status and backed off like any error.
pub async fn reconcile<K: VmKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().ok_or_else(|| Error::Invalid("resource has no namespace".into()))?;
    let key = super::object_key(&*obj);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            FinalizerEvent::Apply(o) => contained(o, ctx.clone(), false).await,
            FinalizerEvent::Cleanup(o) => contained(o, ctx.clone(), true).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe_reconcile(K::LABEL, started.elapsed());
    if result.is_ok() {
        ctx.reset_failures(&key);
    }
    result
}

/// Runs apply (or cleanup) with a panic contained to this object: it becomes the object's
/// `InternalError`, written to its status with an event, and is backed off like any error.
pub async fn contained<K: VmKind>(obj: Arc<K>, ctx: Arc<Context>, deleting: bool) -> Result<Action, Error> {
    let work = async {
        if deleting { cleanup::cleanup(obj.clone(), ctx.clone()).await } else { apply(obj.clone(), ctx.clone()).await }
    };
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = crate::text::panic_message(&*panic);
            tracing::error!(object = %super::object_key(&*obj), panic = %message, "reconcile panicked");
            report_internal_error(&*obj, &ctx, &message).await;
            Err(Error::Internal(message))
        }
    }
}

/// What the pipeline left to do after acting.
enum Flow {
    Continue,
    /// Paused by annotation: nothing touched; woken only by a change.
    Paused,
}

/// Reconciles a live resource: runs the pipeline, then builds and writes the status.
pub async fn apply<K: VmKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let status = obj.vm_status().cloned().unwrap_or_default();
    let mut report = Report::new(status, obj.current_url().map(String::from), obj.meta().generation, Utc::now());
    report.requeue = ctx.config.resync();
    let outcome = pipeline(&ctx, &mut report, &*obj).await;
    if let Err(e) = &outcome {
        record_error(&mut report, e);
    }
    if !matches!(outcome, Ok(Flow::Paused)) {
        report.summarize(K::GRAPH, obj.machine());
        writer::first_ready(&ctx, &*obj, &mut report);
    }
    writer::write(&ctx, &*obj, &report).await?;
    match outcome {
        Ok(Flow::Continue) => Ok(Action::requeue(report.requeue)),
        Ok(Flow::Paused) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

async fn pipeline<K: VmKind>(ctx: &Arc<Context>, report: &mut Report, obj: &K) -> Result<Flow, Error> {
    if paused(report, obj) {
        return Ok(Flow::Paused);
    }
    let observed = observe::observe(ctx, report, obj).await?;
    if observed.waiting_for_operation {
        return Ok(Flow::Continue);
    }
    let mut action = plan::instance(report, obj, &observed);
    if action == InstanceAction::Stop(StopReason::IdleTimeout) {
        activity::recheck_before_idle_stop(ctx, report, obj, &observed).await?;
        action = plan::instance(report, obj, &observed);
    }
    match action {
        InstanceAction::Running => {
            let inst =
                observed.instance.as_ref().ok_or_else(|| Error::Invalid("running without an instance".into()))?;
            instance::finish_resize(report, &inst.machine_type, "");
            let Some(access) = instance::access(ctx, report, obj, inst, &observed).await? else {
                return Ok(Flow::Continue);
            };
            let env = observe::step_env(ctx, obj, inst, &access.address).await?;
            steps::run(ctx, report, kind::step_subject(ctx, obj, &env), &access.target, &env).await;
            activity::probe(ctx, report, obj, &access.target).await;
            // Back when maxRunningTime is reached, not a resync later.
            if let Some(left) = observe::running_time_left(report, obj, Some(inst)) {
                report.soon(left.max(Duration::from_secs(1)));
            }
        }
        InstanceAction::Stopped => instance::stopped(report, obj),
        action => instance::act(ctx, report, obj, &action, &observed).await?,
    }
    Ok(Flow::Continue)
}

/// Paused by annotation: say so once (an event when it starts and when it ends).
fn paused<K: VmKind>(report: &mut Report, obj: &K) -> bool {
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    let was_paused =
        conditions::false_reason(&report.status.conditions, types::READY) == Some(conditions::Reason::Paused);
    let message = format!("reconciling paused by annotation {PAUSED_ANNOTATION}=true; remove it to resume");
    match (paused, was_paused) {
        (true, false) => report.normal("Paused", message.clone()),
        (false, true) => {
            report.normal("Resumed", "reconciling resumed");
            report.progressed();
        }
        _ => {}
    }
    if paused {
        report.pause(&message);
    }
    paused
}

/// An error that ended the pipeline early, in the status: the call that failed and why.
fn record_error(report: &mut Report, e: &Error) {
    use conditions::{Reason, Update};
    match e {
        // Already in a condition, with the call that failed.
        Error::Reported(_) => {}
        Error::Cloud(c) => report.set(Update::falsy(
            types::INSTANCE_READY,
            c.condition_reason(),
            format!("Compute Engine: {}", c.message),
        )),
        Error::Kube(kube::Error::Api(s)) if s.code == 403 => {
            report.fail(Reason::PermissionDenied, format!("the Kubernetes API refused the operator: {}", s.message))
        }
        Error::Kube(kube::Error::Api(s)) if s.code == 422 => {
            report.fail(Reason::InvalidRequest, format!("the Kubernetes API refused an object: {}", s.message))
        }
        other => report.fail(Reason::KubernetesError, other.to_string()),
    }
}

/// Records an operator bug met while reconciling this object: `Ready=False` with reason
/// `InternalError` and a Warning event, written over the status the object already has.
async fn report_internal_error<K: VmKind>(obj: &K, ctx: &Context, message: &str) {
    let status = obj.vm_status().cloned().unwrap_or_default();
    let mut report = Report::new(status, obj.current_url().map(String::from), obj.meta().generation, Utc::now());
    report.fail(
        conditions::Reason::InternalError,
        format!("the operator failed while reconciling this resource and will retry with backoff: {message}"),
    );
    report.summarize(K::GRAPH, obj.machine());
    if let Err(e) = writer::write(ctx, obj, &report).await {
        tracing::warn!(error = %e, "recording the internal error failed");
    }
}
