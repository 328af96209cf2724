//! The last stage of every reconcile: the status (written only when it changed, under the
//! operator's field manager), the events collected on the way, and the per-object metrics.

use super::kind::VmKind;
use super::status::Report;
use super::{Context, Error};
use crate::conditions::{self, types};

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
        ctx.cluster.publish(owner, e).await;
    }
    if let Some(cost) = &report.status.cost {
        ctx.metrics.set_cost(K::LABEL, &owner.namespace, &owner.name, cost.accrued, cost.hourly_rate);
    }
    let ready = conditions::is_true(&report.status.conditions, types::READY);
    ctx.metrics.set_ready(K::LABEL, &owner.namespace, &owner.name, ready);
    Ok(())
}
