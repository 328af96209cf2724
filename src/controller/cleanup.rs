//! Deletion: remove the instance (or leave it, with `Orphan`), finishing on its own when the
//! instance is already gone, so nobody ever removes the finalizer by hand. A failed delete
//! is reported like any other failure and retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::runtime::controller::Action;

use super::kind::VmKind;
use super::observe::{Who, cloud_key, placement};
use super::owner::Owner;
use super::status::Report;
use super::{Context, Error};
use crate::api::{DeletionPolicy, OperationKind, PendingOperation, Phase};
use crate::clock;
use crate::cloud::{CloudErrorKind, OperationRef, OperationState, naming};
use crate::conditions::{Reason, Update, types};

/// How soon to look again at a delete in flight.
const DELETE_POLL: Duration = Duration::from_secs(3);

enum Deletion {
    /// Nothing of ours is left: the finalizer comes off.
    Done,
    /// Still going: look again in this long.
    Pending(Duration),
}

pub async fn cleanup<K: VmKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let owner = obj.owner();
    ctx.tasks.forget(&owner.key());
    let status = obj.vm_status().cloned().unwrap_or_default();
    if let Some(addr) = status.instance.as_ref().and_then(|i| i.external_ip.clone().or(i.internal_ip.clone())) {
        ctx.vm.forget(&addr).await;
    }
    let (zone, name) = placement(&ctx, &*obj);
    let mut report = Report::new(status, obj.current_url().map(String::from), obj.meta().generation, Utc::now());

    if obj.machine().deletion_policy == DeletionPolicy::Orphan {
        report.normal("Orphaned", format!("deletionPolicy is Orphan: instance {name} in {zone} is kept"));
        publish(&ctx, &owner, &report).await;
        ctx.metrics.forget(K::LABEL, &owner.namespace, &owner.name);
        return Ok(Action::await_change());
    }
    report.status.phase = Some(Phase::Deleting);
    let outcome = match delete(&ctx, &mut report, &*obj, &zone, &name).await {
        Ok(d) => d,
        Err(e) => {
            let message = format!("deleting instance {name} failed: {e}");
            let reason = match &e {
                Error::Cloud(c) => c.condition_reason(),
                _ => Reason::KubernetesError,
            };
            report.set(Update::falsy(types::INSTANCE_READY, reason, message));
            Deletion::Pending(super::error_backoff(ctx.record_failure(&cloud_key(&*obj))))
        }
    };
    match outcome {
        Deletion::Done => {
            ctx.reset_failures(&cloud_key(&*obj));
            ctx.metrics.forget(K::LABEL, &owner.namespace, &owner.name);
            report.normal("Deleted", format!("instance {name} is gone"));
            publish(&ctx, &owner, &report).await;
            Ok(Action::await_change())
        }
        Deletion::Pending(retry_in) => {
            // Not finished: write the status and return an error, because the finalizer
            // helper removes the finalizer whenever cleanup returns Ok.
            super::writer::write(&ctx, &*obj, &report).await?;
            Err(Error::CleanupPending { what: format!("deleting instance {name}"), retry_in })
        }
    }
}

async fn delete<K: VmKind>(
    ctx: &Context,
    report: &mut Report,
    obj: &K,
    zone: &str,
    name: &str,
) -> Result<Deletion, Error> {
    if let Some(op) = report.status.operation.clone().filter(|o| o.kind == OperationKind::Delete) {
        match ctx.compute.operation(&OperationRef { name: op.name.clone(), zone: op.zone.clone() }).await {
            Ok(OperationState::Running { .. }) => {
                report.progress("Deleting", format!("deleting instance {name}"), None);
                return Ok(Deletion::Pending(DELETE_POLL));
            }
            Ok(OperationState::Done) => report.status.operation = None,
            Ok(OperationState::Failed(err)) => {
                report.status.operation = None;
                return Err(err.into());
            }
            // The operation is gone: the instance says how far it got.
            Err(e) if e.kind == CloudErrorKind::NotFound => report.status.operation = None,
            Err(e) => return Err(e.into()),
        }
    }
    // The instance under the name in use, and under the deterministic name when that is
    // another (a resource still on an instance the previous version named). Only ours is
    // deleted; anything else under those names — another cluster's above all — is left alone.
    let who = Who::of(ctx, obj);
    let id = who.id();
    let mut names = vec![name.to_string()];
    if id.instance_name() != name {
        names.push(id.instance_name());
    }
    let mut foreign = vec![];
    for name in &names {
        let Some(instance) = ctx.compute.get_instance(zone, name).await? else {
            continue;
        };
        let ownership = naming::ownership(&instance, &id);
        if !ownership.is_ours() {
            foreign.push(format!("instance {name} in {zone} belongs to {}", ownership.holder()));
            continue;
        }
        return match ctx.compute.delete_instance(zone, name).await? {
            Some(op) => {
                report.normal("Deleting", format!("deleting instance {name}"));
                report.status.operation = Some(PendingOperation {
                    name: op.name,
                    kind: OperationKind::Delete,
                    zone: op.zone,
                    started_at: Some(clock::time(report.now)),
                });
                report.progress("Deleting", format!("deleting instance {name}"), None);
                Ok(Deletion::Pending(DELETE_POLL))
            }
            // Gone between the get and the delete: the next pass finds nothing and finishes.
            None => Ok(Deletion::Pending(Duration::from_millis(100))),
        };
    }
    // Nothing of ours is left.
    ctx.instances.invalidate(zone);
    for f in foreign {
        report.event(
            kube::runtime::events::EventType::Warning,
            Reason::InstanceNameConflict.as_str(),
            format!("{f}; it is left alone: deleting this resource never deletes it"),
        );
    }
    Ok(Deletion::Done)
}

async fn publish(ctx: &Context, owner: &Owner, report: &Report) {
    for e in &report.events {
        ctx.publish(owner, e).await;
    }
}
