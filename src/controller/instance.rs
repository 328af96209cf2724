//! Acting on the instance: the one cloud action the planner chose (its operation recorded
//! in status and polled on later passes, never awaited), the state of an instance at rest,
//! and — once it runs — pinning its host key and saying how to reach it.

use std::time::Duration;

use kube::ResourceExt;

use super::kind::VmKind;
use super::observe::{Observed, operation_poll_interval};
use super::status::{Report, running_timeout_message, stopped_message};
use super::{Context, Error};
use crate::api::{OperationKind, PendingOperation, PowerStatus, RunStrategy, StopReason};
use crate::api::{START_ANNOTATION, STOP_ANNOTATION};
use crate::clock;
use crate::cloud::{CloudInstance, InstanceRequest, InstanceState, naming};
use crate::conditions::{Reason, Update, types};
use crate::engine::instance::{InstanceAction, StartReason};
use crate::ssh::{self, SshTarget};

/// How soon to look again at an instance Compute Engine is moving between states.
const TRANSITION_POLL: Duration = Duration::from_secs(3);

fn power(report: &mut Report) -> &mut PowerStatus {
    report.status.power.get_or_insert_with(PowerStatus::default)
}

/// A resize that was under way has finished: say so once.
pub fn finish_resize(report: &mut Report, machine_type: &str, note: &str) {
    if report.status.power.as_ref().is_some_and(|p| p.resizing_to.is_some()) {
        let p = power(report);
        p.resizing_to = None;
        p.resize_restore_running = None;
        report.normal("Resized", format!("machine type is now {machine_type}{note}"));
    }
}

/// The VM is stopped as the spec wants.
pub fn stopped<K: VmKind>(report: &mut Report, obj: &K) {
    finish_resize(report, &obj.machine().desired_machine_type(), "; the VM stays stopped as it was");
    let last_stop = report.status.power.as_ref().and_then(|p| p.last_stop_reason);
    let activity = report.status.last_activity_at.as_ref().map(|t| clock::from_time(t).to_rfc3339());
    let started = report.status.last_started_at.as_ref().map(|t| clock::from_time(t).to_rfc3339());
    let message = stopped_message(obj.machine(), last_stop, activity, started);
    let reason = match last_stop {
        Some(StopReason::IdleTimeout) => Reason::IdleTimeout,
        Some(StopReason::RunningTimeout) => Reason::RunningTimeout,
        _ => Reason::Stopped,
    };
    report.set(Update::falsy(types::INSTANCE_READY, reason, message));
}

/// Executes one cloud action and records the operation it started.
pub async fn act<K: VmKind>(
    ctx: &Context,
    report: &mut Report,
    obj: &K,
    action: &InstanceAction,
    observed: &Observed,
) -> Result<(), Error> {
    let zone = observed.zone.as_str();
    let name = observed.instance_name.as_str();
    let inst = observed.instance.as_ref();
    let machine = obj.machine();
    let start_request = obj.annotations().get(START_ANNOTATION).cloned();
    let stop_request = obj.annotations().get(STOP_ANNOTATION).cloned();
    let (kind, result) = match action {
        InstanceAction::Create => {
            let req = InstanceRequest {
                name: name.to_string(),
                zone: zone.to_string(),
                machine_type: machine.desired_machine_type(),
                source_image: machine.image.source_image(),
                disk_size_gb: i64::from(machine.disk_size_gb),
                labels: super::observe::Who::of(ctx, obj).id().labels(),
                metadata: observed.desired_metadata.clone(),
                network: ctx.config.network.clone(),
                subnetwork: ctx.config.subnetwork.clone(),
                external_ip: !ctx.config.use_internal_ip,
                service_account_email: None,
                tags: vec!["projectvm".into()],
            };
            // What it will cost, before it costs anything: in the status and, once, an event.
            if report.status.cost.is_none() {
                let will_run = machine.run_strategy != RunStrategy::Halted;
                let compute = ctx.rates.compute_hourly(&req.machine_type);
                let disk = ctx.rates.disk_hourly(machine.disk_size_gb);
                report.status.cost = Some(crate::cost::estimate(compute, disk, will_run, report.now));
                let note = crate::cost::estimate_note(&ctx.rates, &req.machine_type, machine.disk_size_gb, will_run);
                report.normal("CostEstimate", format!("creating {note}"));
            }
            let what = format!("creating instance {name} ({}) in {zone}", req.machine_type);
            report.set(Update::falsy(types::INSTANCE_READY, Reason::Provisioning, what.clone()));
            report.progress("Instance", what, None);
            (OperationKind::Insert, ctx.compute.insert_instance(&req).await)
        }
        InstanceAction::NameConflict => {
            let holder = observed.ownership.as_ref().map(|o| o.holder()).unwrap_or_else(|| "someone else".into());
            let cluster = &ctx.cluster_name;
            report.set(Update::falsy(
                types::INSTANCE_READY,
                Reason::InstanceNameConflict,
                format!(
                    "instance {name} in {zone} belongs to {holder}, not to this resource in cluster {cluster}; \
                     it is never adopted, changed or deleted from here: delete or rename it where it belongs, \
                     or give this resource another name"
                ),
            ));
            report.soon(Duration::from_secs(300));
            return Ok(());
        }
        InstanceAction::LabelCluster => {
            let cluster = &ctx.cluster_name;
            let mut labels = inst.map(|i| i.labels.clone()).unwrap_or_default();
            labels.insert(naming::LABEL_CLUSTER.to_string(), naming::label_value(cluster));
            let fp = inst.and_then(|i| i.label_fingerprint.clone());
            // Quick and idempotent: not tracked as the resource's operation; the next pass
            // sees the label (or adds it again).
            match ctx.compute.set_labels(zone, name, fp.as_deref(), &labels).await {
                Ok(_) => {
                    ctx.instances.invalidate(zone);
                    report.normal(
                        "ClusterLabelled",
                        format!(
                            "instance {name} was made by an earlier version without a cluster label; \
                             labelling it {}={cluster}",
                            naming::LABEL_CLUSTER
                        ),
                    );
                    report.soon(TRANSITION_POLL);
                    return Ok(());
                }
                Err(err) => {
                    let message = format!("Compute Engine setLabels of instance {name} failed: {}", err.message);
                    report.set(Update::falsy(types::INSTANCE_READY, err.condition_reason(), message));
                    return Err(Error::Reported(Box::new(err.into())));
                }
            }
        }
        InstanceAction::WaitTransition => {
            let state = inst.map(|i| i.state.clone()).unwrap_or_default();
            let reason = if state == InstanceState::Stopping { Reason::Stopping } else { Reason::Starting };
            let what = format!("instance is {}", state.as_str());
            report.set(Update::falsy(types::INSTANCE_READY, reason, what.clone()));
            report.progress("Instance", what, None);
            report.soon(TRANSITION_POLL);
            return Ok(());
        }
        InstanceAction::Stop(reason) => {
            match reason {
                StopReason::Resize => {
                    let to = machine.desired_machine_type();
                    let p = power(report);
                    p.resizing_to = Some(to.clone());
                    p.resize_restore_running = Some(true);
                    report.normal("Resizing", format!("stopping to change the machine type to {to}"));
                }
                StopReason::IdleTimeout => {
                    let last = report
                        .status
                        .last_activity_at
                        .as_ref()
                        .map(|t| clock::from_time(t).to_rfc3339())
                        .unwrap_or_else(|| "never".into());
                    let idle = machine.idle_timeout.clone().unwrap_or_default();
                    report.normal("IdleTimeout", format!("stopping: no activity for {idle} (last activity {last})"));
                }
                StopReason::RunningTimeout => {
                    let message = running_timeout_message(machine, report.status.last_started_at.as_ref());
                    report.normal("RunningTimeout", format!("stopping: {message}"));
                }
                StopReason::Halted => report.normal("Stopping", "runStrategy is Halted"),
                StopReason::Requested => {
                    power(report).acknowledged_stop_request = stop_request.clone();
                    report.normal("StopRequested", format!("stopping: annotation {STOP_ANNOTATION} was set"));
                }
            }
            power(report).last_stop_reason = Some(*reason);
            report.set(Update::falsy(
                types::INSTANCE_READY,
                Reason::Stopping,
                format!("stopping instance ({})", reason.as_str()),
            ));
            (OperationKind::Stop, ctx.compute.stop_instance(zone, name).await)
        }
        InstanceAction::Start(reason) => {
            match reason {
                StartReason::AfterResize => {
                    let mt = inst.map(|i| i.machine_type.clone()).unwrap_or_default();
                    finish_resize(report, &mt, "; starting the VM again as it was running");
                }
                StartReason::Requested => {
                    power(report).acknowledged_start_request = start_request.clone();
                    report.normal("StartRequested", format!("starting: annotation {START_ANNOTATION} was set"));
                }
                StartReason::Always => report.normal("Starting", "runStrategy is Always and the VM was stopped"),
            }
            report.set(Update::falsy(types::INSTANCE_READY, Reason::Starting, "starting instance"));
            report.progressed();
            (OperationKind::Start, ctx.compute.start_instance(zone, name).await)
        }
        InstanceAction::SetMachineType(mt) => {
            let p = power(report);
            p.resizing_to = Some(mt.clone());
            if p.resize_restore_running.is_none() {
                p.resize_restore_running = Some(false);
            }
            report.set(Update::falsy(types::INSTANCE_READY, Reason::Resizing, format!("setting machine type {mt}")));
            (OperationKind::SetMachineType, ctx.compute.set_machine_type(zone, name, mt).await)
        }
        InstanceAction::SetMetadata => {
            // Other items and other people's ssh-keys lines stay; only the operator's own change.
            let items = crate::engine::instance::merge_metadata(
                &inst.map(|i| i.metadata.clone()).unwrap_or_default(),
                &observed.desired_metadata,
            );
            let fp = inst.and_then(|i| i.metadata_fingerprint.clone());
            report.progress("Instance", "updating instance metadata (SSH key, guest attributes)", None);
            (OperationKind::SetMetadata, ctx.compute.set_metadata(zone, name, fp.as_deref(), &items).await)
        }
        InstanceAction::AcknowledgeStartRequest => {
            power(report).acknowledged_start_request = start_request;
            let note = if machine.run_strategy == RunStrategy::Halted {
                "start request ignored: runStrategy is Halted"
            } else {
                "start request acknowledged: the VM is already running"
            };
            report.normal("StartRequestAcknowledged", note);
            report.soon(TRANSITION_POLL);
            return Ok(());
        }
        InstanceAction::AcknowledgeStopRequest => {
            power(report).acknowledged_stop_request = stop_request;
            let note = match machine.run_strategy {
                RunStrategy::Always => "stop request ignored: runStrategy is Always, which would start the VM again",
                _ => "stop request acknowledged: the VM is already stopped",
            };
            report.normal("StopRequestAcknowledged", note);
            report.soon(TRANSITION_POLL);
            return Ok(());
        }
        InstanceAction::Running | InstanceAction::Stopped => return Ok(()),
    };
    match result {
        Ok(op) => {
            ctx.instances.invalidate(zone);
            report.status.operation = Some(PendingOperation {
                name: op.name,
                kind,
                zone: op.zone,
                started_at: Some(clock::time(report.now)),
            });
            report.soon(operation_poll_interval(Duration::ZERO));
            Ok(())
        }
        Err(err) => {
            // The refusal names the call and the instance; the error policy backs off.
            let message = format!("Compute Engine {kind} of instance {name} failed: {}", err.message);
            report.set(Update::falsy(types::INSTANCE_READY, err.condition_reason(), message));
            Err(Error::Reported(Box::new(err.into())))
        }
    }
}

/// The address the operator connects to: the internal one with `--use-internal-ip`, else the
/// external one when the instance has it.
pub fn reachable_address(
    config: &crate::config::Config,
    internal: Option<&String>,
    external: Option<&String>,
) -> Option<String> {
    if config.use_internal_ip { internal.cloned() } else { external.or(internal).cloned() }
}

/// How the operator reaches a running instance.
pub struct Access {
    pub address: String,
    pub target: SshTarget,
}

/// The instance runs: find its address and pin the host key the guest agent published
/// (never trusted on first use). `None` while either is not there yet.
pub async fn access<K: VmKind>(
    ctx: &Context,
    report: &mut Report,
    obj: &K,
    inst: &CloudInstance,
    observed: &Observed,
) -> Result<Option<Access>, Error> {
    let Some(address) = reachable_address(&ctx.config, inst.internal_ip.as_ref(), inst.external_ip.as_ref()) else {
        report.set(Update::falsy(
            types::INSTANCE_READY,
            Reason::NoAddress,
            "the instance has no address the operator can reach",
        ));
        report.soon(TRANSITION_POLL);
        return Ok(None);
    };
    let pinned = report.status.instance.as_ref().and_then(|i| i.host_key.clone());
    let host_key = match pinned {
        Some(k) => k,
        None => {
            let attrs = ctx.compute.guest_attributes(&observed.zone, &observed.instance_name, "hostkeys/").await?;
            let preferred = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"];
            let found = preferred
                .iter()
                .find_map(|t| attrs.iter().find(|a| a.key == *t).map(|a| format!("{} {}", a.key, a.value.trim())));
            let Some(k) = found else {
                report.set(Update::falsy(
                    types::INSTANCE_READY,
                    Reason::Waiting,
                    "waiting for the guest agent to publish the SSH host keys (guest attributes hostkeys/)",
                ));
                report.progress("Instance", "waiting for host keys", None);
                report.soon(TRANSITION_POLL);
                return Ok(None);
            };
            let fp = ssh::host_key_fingerprint(&k).unwrap_or_default();
            if let Some(i) = report.status.instance.as_mut() {
                i.host_key = Some(k.clone());
                i.host_key_fingerprint = Some(fp);
            }
            k
        }
    };
    if report.status.instance.as_ref().and_then(|i| i.status.as_deref()) == Some("RUNNING")
        && !crate::conditions::is_true(&report.status.conditions, types::INSTANCE_READY)
    {
        report.progressed();
    }
    report.set(Update::truthy(
        types::INSTANCE_READY,
        Reason::Running,
        format!("instance {} is running at {address}", inst.name),
    ));
    let target = SshTarget {
        host: address.clone(),
        port: ctx.config.ssh_port,
        user: obj.machine().user.clone(),
        pinned_host_key: host_key,
        private_key_openssh: observed.ssh_key.private_openssh.clone(),
    };
    Ok(Some(Access { address, target }))
}
