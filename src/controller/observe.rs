//! The first stage of a reconcile: read what it needs — the operator's SSH key for the
//! resource, the Compute Engine operation in flight, the instance, and (once the instance
//! runs) the Secrets the steps use. Everything read is recorded in the report; nothing here
//! changes the cloud.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use super::kind::VmKind;
use super::secrets::SshKey;
use super::status::Report;
use super::steps::StepEnv;
use super::{Context, Error};
use crate::api::{CodeServerAuth, InstanceStatus, OperationKind, PendingOperation};
use crate::clock;
use crate::cloud::naming::{Identity, Ownership};
use crate::cloud::{CloudErrorKind, CloudInstance, InstanceState, OperationRef, OperationState, naming};
use crate::conditions::{self, Reason, Update, types};
use crate::cost;

/// What the reconcile knows once the cloud has been read.
pub struct Observed {
    pub ssh_key: SshKey,
    /// The metadata items the operator manages on the instance.
    pub desired_metadata: BTreeMap<String, String>,
    pub zone: String,
    pub instance_name: String,
    pub instance: Option<CloudInstance>,
    /// Whose `instance` is, by its labels: only an instance of ours is ever changed.
    pub ownership: Option<Ownership>,
    /// An operation in flight that is not finished yet: nothing else is done this pass.
    pub waiting_for_operation: bool,
}

/// Who a resource is, for its instance's name and labels.
pub struct Who {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub kind: &'static str,
}

impl Who {
    pub fn of<K: VmKind>(ctx: &Context, obj: &K) -> Who {
        Who {
            cluster: ctx.cluster_name.clone(),
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            uid: obj.uid().unwrap_or_default(),
            kind: K::LABEL,
        }
    }

    pub fn id(&self) -> Identity<'_> {
        Identity {
            cluster: &self.cluster,
            kind: self.kind,
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
        }
    }
}

/// The zone and name of the resource's instance: its deterministic name, or the name the
/// previous version gave it when the status records that one (an instance made before
/// cluster names stays with its resource; see [`naming::legacy_instance_name`]).
pub fn placement<K: VmKind>(ctx: &Context, obj: &K) -> (String, String) {
    let status = obj.vm_status();
    let zone = status
        .and_then(|s| s.instance.as_ref())
        .and_then(|i| i.zone.clone())
        .or_else(|| obj.machine().zone.clone())
        .unwrap_or_else(|| ctx.config.default_zone.clone());
    let who = Who::of(ctx, obj);
    let id = who.id();
    let recorded = status.and_then(|s| s.instance.as_ref()).and_then(|i| i.name.as_deref());
    let legacy = id.legacy_instance_name();
    let name = if recorded == Some(legacy.as_str()) { legacy } else { id.instance_name() };
    (zone, name)
}

/// How soon to poll an operation of this age: most finish within seconds, so poll often
/// at first and back off to every 3 s for long ones.
pub fn operation_poll_interval(age: Duration) -> Duration {
    match age.as_secs() {
        0..5 => Duration::from_millis(500),
        5..30 => Duration::from_secs(1),
        _ => Duration::from_secs(3),
    }
}

pub async fn observe<K: VmKind>(ctx: &Arc<Context>, report: &mut Report, obj: &K) -> Result<Observed, Error> {
    let owner = obj.owner();
    report.status.objects = Some(obj.owned_objects());
    let ssh_key = ctx.cluster.ssh_key(&owner).await?;
    let user = &obj.machine().user;
    let desired_metadata = BTreeMap::from([
        ("ssh-keys".to_string(), format!("{user}:{}", ssh_key.public_openssh)),
        ("enable-guest-attributes".to_string(), "TRUE".to_string()),
    ]);
    let (zone, instance_name) = placement(ctx, obj);
    let mut observed = Observed {
        ssh_key,
        desired_metadata,
        zone,
        instance_name,
        instance: None,
        ownership: None,
        waiting_for_operation: false,
    };

    // A cloud operation in flight: poll it, never wait on it.
    let mut fresh = report.status.instance.is_none();
    let mut insert_over = false;
    if let Some(op) = report.status.operation.clone() {
        match poll_operation(ctx, report, obj, &observed, &op).await? {
            Poll::Running => {
                observed.waiting_for_operation = true;
                return Ok(observed);
            }
            Poll::Over => {
                fresh = true;
                insert_over = op.kind == OperationKind::Insert && report.status.instance.is_none();
            }
        }
    }

    observed.instance = if fresh {
        ctx.compute.get_instance(&observed.zone, &observed.instance_name).await?
    } else {
        ctx.instances.get(&*ctx.compute, &observed.zone, &observed.instance_name).await?
    };
    // The instance we knew is missing from the list: read it directly before believing
    // that (the list may predate a change, or the instance may not carry our cluster label).
    if observed.instance.is_none() && !fresh {
        observed.instance = ctx.compute.get_instance(&observed.zone, &observed.instance_name).await?;
    }
    let who = Who::of(ctx, obj);
    let id = who.id();
    let mut ownership = observed.instance.as_ref().map(|i| naming::ownership(i, &id));
    // A name of the previous version holds nothing of ours (any more): from now on the
    // resource's instance is the one under its deterministic name.
    let name = id.instance_name();
    if observed.instance_name != name && !ownership.as_ref().is_some_and(Ownership::is_ours) {
        observed.instance_name = name;
        observed.instance = ctx.compute.get_instance(&observed.zone, &observed.instance_name).await?;
        ownership = observed.instance.as_ref().map(|i| naming::ownership(i, &id));
    }
    // An insert that finished with nothing under the deterministic name, before any
    // instance was recorded, was the previous version's (an upgrade in between): its
    // instance is under the old name.
    let legacy = id.legacy_instance_name();
    if insert_over && observed.instance.is_none() && legacy != observed.instance_name {
        let found = ctx.compute.get_instance(&observed.zone, &legacy).await?;
        let judged = found.as_ref().map(|i| naming::ownership(i, &id));
        if judged.as_ref().is_some_and(Ownership::is_ours) {
            (observed.instance_name, observed.instance, ownership) = (legacy, found, judged);
        }
    }
    if let Some(inst) = &observed.instance
        && ownership.as_ref().is_some_and(Ownership::is_ours)
    {
        record_instance(ctx, report, obj, inst);
    }
    observed.ownership = ownership;
    Ok(observed)
}

enum Poll {
    Running,
    /// Finished, failed or gone: the instance is read again.
    Over,
}

async fn poll_operation<K: VmKind>(
    ctx: &Context,
    report: &mut Report,
    obj: &K,
    observed: &Observed,
    op: &PendingOperation,
) -> Result<Poll, Error> {
    let started = op.started_at.as_ref().map(clock::from_time).unwrap_or(report.now);
    let age = clock::elapsed(report.now, started);
    let key = cloud_key(obj);
    match ctx.compute.operation(&OperationRef { name: op.name.clone(), zone: op.zone.clone() }).await {
        Ok(OperationState::Running { progress }) => {
            let limit = obj.machine().progress_limit();
            if age > limit {
                report.status.operation = None;
                report.set(Update::falsy(
                    types::INSTANCE_READY,
                    Reason::StepTimedOut,
                    format!(
                        "Compute Engine operation {} ({}) did not finish within {} (progressTimeout)",
                        op.name,
                        op.kind,
                        clock::humanize(limit)
                    ),
                ));
                report.soon(Duration::from_secs(30));
                return Ok(Poll::Running);
            }
            report.progress(
                "Instance",
                format!("waiting for Compute Engine operation {} ({})", op.kind, op.name),
                progress,
            );
            report.soon(operation_poll_interval(age));
            Ok(Poll::Running)
        }
        Ok(OperationState::Done) => {
            report.status.operation = None;
            ctx.instances.invalidate(&observed.zone);
            ctx.reset_failures(&key);
            operation_done(report, &observed.instance_name, op);
            Ok(Poll::Over)
        }
        Ok(OperationState::Failed(err)) => {
            // Recorded, and retried after a capped backoff, never in the same pass.
            report.status.operation = None;
            ctx.instances.invalidate(&observed.zone);
            let message =
                format!("Compute Engine {} of instance {} failed: {}", op.kind, observed.instance_name, err.message);
            report.set(Update::falsy(types::INSTANCE_READY, err.condition_reason(), message));
            let failures = ctx.record_failure(&key);
            report.soon(super::error_backoff(failures));
            report.progress("Instance", "waiting to retry the failed Compute Engine operation", None);
            Ok(Poll::Running)
        }
        // The operation is gone (expired, or the cloud lost it): forget it and read the
        // instance again, instead of polling a name that will never answer.
        Err(e) if e.kind == CloudErrorKind::NotFound => {
            report.status.operation = None;
            ctx.instances.invalidate(&observed.zone);
            report.normal(
                Reason::OperationLost.as_str(),
                format!("Compute Engine operation {} ({}) is gone; reading the instance again", op.name, op.kind),
            );
            Ok(Poll::Over)
        }
        Err(e) => Err(e.into()),
    }
}

/// Key for counting consecutive cloud failures (kept apart from reconcile errors, whose
/// count resets on every successful reconcile).
pub fn cloud_key<K: VmKind>(obj: &K) -> String {
    format!("{}#cloud", super::object_key(obj))
}

/// Records what a finished operation did.
fn operation_done(report: &mut Report, instance: &str, op: &PendingOperation) {
    let (reason, note) = match op.kind {
        OperationKind::Insert => ("Created", format!("created instance {instance} in {}", op.zone)),
        OperationKind::Start => ("Started", format!("started instance {instance}")),
        OperationKind::Stop => ("Stopped", format!("stopped instance {instance}")),
        OperationKind::SetMachineType => ("MachineTypeSet", format!("set the machine type of {instance}")),
        OperationKind::SetMetadata => ("MetadataSet", format!("updated the metadata of {instance}")),
        OperationKind::Delete => ("Deleted", format!("deleted instance {instance}")),
    };
    report.normal(reason, note);
    report.progress("Instance", format!("{} finished", op.kind), None);
    report.progressed();
}

/// How often clock-derived cost figures are refreshed when nothing else changes.
pub const COST_REFRESH: Duration = Duration::from_secs(900);

/// Power history, cost and the instance's identity, from what Compute Engine reports.
fn record_instance<K: VmKind>(ctx: &Context, report: &mut Report, obj: &K, inst: &CloudInstance) {
    let running = inst.state == InstanceState::Running;
    let rate = ctx.rates.compute_hourly(&inst.machine_type);
    let power = report.status.power.clone().unwrap_or_default();
    let mut next = cost::observe_power(
        &power,
        running,
        clock::parse_rfc3339(inst.last_start_at.as_deref()),
        clock::parse_rfc3339(inst.last_stop_at.as_deref()),
        clock::parse_rfc3339(inst.created_at.as_deref()),
        rate,
        report.now,
    );
    if running && power.running_since.is_none() {
        report.status.last_started_at = next.running_since.as_ref().map(|t| clock::time(clock::from_micro_time(t)));
        next.last_stop_reason = None;
    }
    // Cost moves with the clock; refresh it on a power change or a rate change, or every
    // few minutes, so a VM at rest does not rewrite its status on every pass.
    let disk = ctx.rates.disk_hourly(obj.machine().disk_size_gb);
    let fresh_cost = cost::cost(&next, rate, disk, report.now);
    let stale = match &report.status.cost {
        None => true,
        Some(old) => {
            next != power
                || (old.hourly_rate - fresh_cost.hourly_rate).abs() > f64::EPSILON
                || old
                    .computed_at
                    .as_ref()
                    .is_none_or(|t| clock::elapsed(report.now, clock::from_time(t)) >= COST_REFRESH)
        }
    };
    if stale {
        report.status.cost = Some(fresh_cost);
    }
    report.status.power = Some(next);

    let prev = report.status.instance.clone().unwrap_or_default();
    let same_instance = prev.id.as_deref() == Some(inst.id.as_str());
    if prev.id.is_none() && !naming::owned_by(inst, obj.uid().as_deref().unwrap_or_default()) {
        report.normal(
            "Adopted",
            format!(
                "adopted existing instance {} (id {}) made for an earlier resource of the same name",
                inst.name, inst.id
            ),
        );
    }
    report.status.instance = Some(InstanceStatus {
        name: Some(inst.name.clone()),
        id: Some(inst.id.clone()),
        zone: Some(inst.zone.clone()),
        machine_type: Some(inst.machine_type.clone()),
        status: Some(inst.state.as_str().to_string()),
        internal_ip: inst.internal_ip.clone(),
        external_ip: inst.external_ip.clone(),
        host_key: if same_instance { prev.host_key } else { None },
        host_key_fingerprint: if same_instance { prev.host_key_fingerprint } else { None },
    });
    if !same_instance && prev.id.is_some() {
        // A new instance under the same name: everything on the VM must be redone.
        for node in K::GRAPH {
            conditions::clear_fingerprint(&mut report.status.conditions, node.condition);
        }
        ctx.tasks.forget(&super::object_key(obj));
        report.event(
            kube::runtime::events::EventType::Warning,
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

/// The Secrets the steps need, read once the instance runs. A missing or unusable Secret is
/// not an error of the reconcile: the step that needs it reports it.
pub async fn step_env<K: VmKind>(
    ctx: &Context,
    obj: &K,
    inst: &CloudInstance,
    address: &str,
) -> Result<StepEnv, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let mut env = StepEnv {
        instance_id: inst.id.clone(),
        address: address.to_string(),
        code_server_source: ctx.config.code_server_source(),
        external_ip: inst.external_ip.clone(),
        allow_auth_none: ctx.config.allow_auth_none,
        ..Default::default()
    };
    if let Some(r) = obj.credentials_ref() {
        match ctx.cluster.token(&ns, r).await? {
            Ok(t) => env.token = Some(t),
            Err(p) => env.token_problem = Some(p),
        }
    }
    if let Some(ws) = obj.as_workspace()
        && ws.spec.code_server.auth == CodeServerAuth::Password
    {
        match &ws.spec.code_server.password_secret_ref {
            Some(r) => match ctx.cluster.token(&ns, r).await? {
                Ok(t) => env.password = Some(t),
                Err(p) => env.password_problem = Some(p),
            },
            None => env.password = Some(ctx.cluster.generated_password(&obj.owner()).await?),
        }
    }
    Ok(env)
}

/// Whether the idle timeout has passed with no activity.
pub fn idle_expired<K: VmKind>(report: &Report, obj: &K, inst: Option<&CloudInstance>) -> bool {
    let Some(timeout) = obj.machine().idle_limit() else {
        return false;
    };
    if inst.is_none_or(|i| i.state != InstanceState::Running) {
        return false;
    }
    let power = report.status.power.as_ref();
    let since = [
        report.status.last_activity_at.as_ref().map(clock::from_time),
        power.and_then(|p| p.running_since.as_ref()).map(clock::from_micro_time),
    ]
    .into_iter()
    .flatten()
    .max();
    since.is_some_and(|t| clock::elapsed(report.now, t) >= timeout)
}

/// How long until `maxRunningTime` is reached, when it is set and the VM runs: zero once
/// it has passed.
pub fn running_time_left<K: VmKind>(report: &Report, obj: &K, inst: Option<&CloudInstance>) -> Option<Duration> {
    let limit = obj.machine().running_limit()?;
    if inst.is_none_or(|i| i.state != InstanceState::Running) {
        return None;
    }
    let since = report.status.power.as_ref()?.running_since.as_ref().map(clock::from_micro_time)?;
    Some(limit.saturating_sub(clock::elapsed(report.now, since)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_polling_backs_off() {
        assert_eq!(operation_poll_interval(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(operation_poll_interval(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(operation_poll_interval(Duration::from_secs(600)), Duration::from_secs(3));
    }
}
