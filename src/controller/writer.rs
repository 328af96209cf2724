//! The last stage of every reconcile: the status (written only when it changed, under the
//! operator's field manager), the events collected on the way, and the per-object metrics.

use super::kind::VmKind;
use super::status::Report;
use super::{Context, Error};
use crate::clock;
use crate::conditions::{self, types};
use crate::metrics::VmGauges;

/// Writes the status when it changed, publishes the collected events, updates metrics.
pub async fn write<K: VmKind>(ctx: &Context, obj: &K, report: &Report) -> Result<(), Error> {
    let owner = &obj.owner();
    let new = K::status_json(&report.status, report.url.as_deref());
    let old = obj.vm_status().map(|s| K::status_json(s, obj.current_url()));
    if old.as_ref() != Some(&new) {
        ctx.cluster.write_status(owner, new).await?;
        ctx.metrics.status_written(K::LABEL);
    }
    for e in &report.events {
        ctx.publish(owner, e).await;
    }
    if let Some(cost) = &report.status.cost {
        ctx.metrics.set_cost(K::LABEL, &owner.namespace, &owner.name, cost.accrued, cost.hourly_rate);
    }
    let ready = conditions::is_true(&report.status.conditions, types::READY);
    ctx.metrics.set_ready(K::LABEL, &owner.namespace, &owner.name, ready);
    let vm = VmGauges {
        running: report.status.power.as_ref().is_some_and(|p| p.running_since.is_some()),
        last_activity: report.status.last_activity_at.as_ref().map(|t| clock::from_time(t).timestamp() as f64),
        idle_timeout: obj.machine().idle_limit().map(|d| d.as_secs_f64()),
    };
    ctx.metrics.set_vm(K::LABEL, &owner.namespace, &owner.name, vm);
    ctx.metrics.tasks_running.set(i64::try_from(ctx.tasks.running()).unwrap_or(i64::MAX));
    Ok(())
}

/// Records the first time the resource is Ready (in its status, and its time from creation in
/// the metrics); a resource Ready before the field existed gets it without a sample.
pub fn first_ready<K: VmKind>(ctx: &Context, obj: &K, report: &mut Report) {
    if report.status.first_ready_at.is_some() || !conditions::is_true(&report.status.conditions, types::READY) {
        return;
    }
    report.status.first_ready_at = Some(clock::time(report.now));
    let was_ready = obj.vm_status().is_some_and(|s| conditions::is_true(&s.conditions, types::READY));
    if let (false, Some(created)) = (was_ready, obj.meta().creation_timestamp.as_ref()) {
        let took = clock::elapsed(report.now, clock::from_time(created));
        ctx.metrics.first_ready(K::LABEL, took);
    }
}
