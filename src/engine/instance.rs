//! Planning for the instance: given the spec and what Compute Engine reports, the one
//! cloud action to take now. Pure; the controller executes the action and records the
//! resulting operation, then polls it on later reconciles.

use std::collections::BTreeMap;

pub use crate::api::StopReason;
use crate::api::{PowerStatus, RunStrategy};
use crate::cloud::{CloudInstance, InstanceState};

/// Everything the instance planner looks at.
#[derive(Clone, Debug)]
pub struct InstanceInputs<'a> {
    pub instance: Option<&'a CloudInstance>,
    /// Whether the instance's labels say it was made for this resource (this object, or an
    /// earlier one of the same kind, namespace and name, which this one adopts).
    pub owned: bool,
    pub desired_machine_type: &'a str,
    pub run_strategy: RunStrategy,
    /// Metadata items the operator manages (ssh-keys, enable-guest-attributes).
    pub desired_metadata: &'a BTreeMap<String, String>,
    pub power: &'a PowerStatus,
    /// Value of the start-request annotation, if set.
    pub start_request: Option<&'a str>,
    /// Whether the idle timeout has passed with no activity.
    pub idle_expired: bool,
}

/// Why the operator starts a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartReason {
    /// `runStrategy: Always` and the VM was found stopped.
    Always,
    /// Restoring the power state after a resize.
    AfterResize,
    /// A person asked with the start-request annotation.
    Requested,
}

/// The one cloud action to take now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceAction {
    /// No instance: create it.
    Create,
    /// An instance with this name exists but belongs to another resource.
    NameConflict {
        owner_uid: Option<String>,
    },
    /// Compute Engine is moving the instance between states; wait.
    WaitTransition,
    Stop(StopReason),
    Start(StartReason),
    SetMachineType(String),
    SetMetadata,
    /// The start request was seen while the VM already runs: acknowledge it only.
    AcknowledgeStartRequest,
    /// Running as desired: go on with the steps on the VM.
    Running,
    /// Stopped as desired.
    Stopped,
}

/// Plans the instance. Order matters: transitions settle first, then size, then metadata,
/// then power.
pub fn plan_instance(i: &InstanceInputs<'_>) -> InstanceAction {
    let Some(inst) = i.instance else {
        return InstanceAction::Create;
    };
    if !i.owned {
        return InstanceAction::NameConflict { owner_uid: inst.labels.get(crate::cloud::naming::LABEL_UID).cloned() };
    }
    let running = match &inst.state {
        InstanceState::Running => true,
        InstanceState::Terminated | InstanceState::Suspended => false,
        _ => return InstanceAction::WaitTransition,
    };

    // Size: stop, set the type, then restore the power state it had.
    if inst.machine_type != i.desired_machine_type {
        return if running {
            InstanceAction::Stop(StopReason::Resize)
        } else {
            InstanceAction::SetMachineType(i.desired_machine_type.to_string())
        };
    }
    if i.power.resizing_to.is_some() && !running && i.power.resize_restore_running == Some(true) {
        return InstanceAction::Start(StartReason::AfterResize);
    }

    let metadata_current = i.desired_metadata.iter().all(|(k, v)| inst.metadata.get(k) == Some(v));
    if !metadata_current {
        return InstanceAction::SetMetadata;
    }

    let requested = i.start_request.is_some_and(|r| i.power.acknowledged_start_request.as_deref() != Some(r));
    match (i.run_strategy, running) {
        (RunStrategy::Always, false) => InstanceAction::Start(StartReason::Always),
        (RunStrategy::Halted, true) => InstanceAction::Stop(StopReason::Halted),
        (RunStrategy::Manual, false) if requested => InstanceAction::Start(StartReason::Requested),
        (RunStrategy::Manual, true) if requested => InstanceAction::AcknowledgeStartRequest,
        (RunStrategy::Manual, true) if i.idle_expired => InstanceAction::Stop(StopReason::IdleTimeout),
        (RunStrategy::Halted, false) if requested => InstanceAction::AcknowledgeStartRequest,
        (_, true) => InstanceAction::Running,
        (_, false) => InstanceAction::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(state: InstanceState, mt: &str) -> CloudInstance {
        CloudInstance {
            name: "pvm-ns-a".into(),
            id: "1".into(),
            machine_type: mt.into(),
            state,
            labels: [("projectvm-uid".to_string(), "uid-1".to_string())].into(),
            metadata: [("ssh-keys".to_string(), "project:key".to_string())].into(),
            ..Default::default()
        }
    }

    struct Case {
        instance: Option<CloudInstance>,
        mt: &'static str,
        rs: RunStrategy,
        power: PowerStatus,
        start_request: Option<&'static str>,
        idle: bool,
        metadata: BTreeMap<String, String>,
        owned: bool,
    }

    impl Case {
        fn new(instance: Option<CloudInstance>) -> Self {
            Self {
                instance,
                mt: "e2-medium",
                rs: RunStrategy::Always,
                power: PowerStatus::default(),
                start_request: None,
                idle: false,
                metadata: [("ssh-keys".to_string(), "project:key".to_string())].into(),
                owned: true,
            }
        }
        fn plan(&self) -> InstanceAction {
            plan_instance(&InstanceInputs {
                instance: self.instance.as_ref(),
                owned: self.owned,
                desired_machine_type: self.mt,
                run_strategy: self.rs,
                desired_metadata: &self.metadata,
                power: &self.power,
                start_request: self.start_request,
                idle_expired: self.idle,
            })
        }
    }

    use InstanceState::*;

    #[test]
    fn missing_instance_is_created() {
        assert_eq!(Case::new(None).plan(), InstanceAction::Create);
    }

    #[test]
    fn foreign_instance_is_a_conflict() {
        let mut c = Case::new(Some(inst(Running, "e2-medium")));
        c.owned = false;
        assert_eq!(c.plan(), InstanceAction::NameConflict { owner_uid: Some("uid-1".into()) });
    }

    #[test]
    fn our_running_instance_is_adopted_as_running() {
        assert_eq!(Case::new(Some(inst(Running, "e2-medium"))).plan(), InstanceAction::Running);
    }

    #[test]
    fn transitions_are_waited_for() {
        for s in [Provisioning, Staging, Stopping, Suspending, Repairing] {
            assert_eq!(Case::new(Some(inst(s, "e2-medium"))).plan(), InstanceAction::WaitTransition);
        }
    }

    #[test]
    fn resize_of_running_vm_stops_then_sets_then_restarts() {
        let mut c = Case::new(Some(inst(Running, "e2-small")));
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::Resize));
        c.instance = Some(inst(Terminated, "e2-small"));
        c.power.resizing_to = Some("e2-medium".into());
        c.power.resize_restore_running = Some(true);
        assert_eq!(c.plan(), InstanceAction::SetMachineType("e2-medium".into()));
        c.instance = Some(inst(Terminated, "e2-medium"));
        assert_eq!(c.plan(), InstanceAction::Start(StartReason::AfterResize));
    }

    #[test]
    fn resize_of_stopped_vm_keeps_it_stopped() {
        let mut c = Case::new(Some(inst(Terminated, "e2-small")));
        c.rs = RunStrategy::Manual;
        c.power.resizing_to = Some("e2-medium".into());
        c.power.resize_restore_running = Some(false);
        assert_eq!(c.plan(), InstanceAction::SetMachineType("e2-medium".into()));
        c.instance = Some(inst(Terminated, "e2-medium"));
        assert_eq!(c.plan(), InstanceAction::Stopped);
    }

    #[test]
    fn no_loop_when_nothing_changed() {
        let c = Case::new(Some(inst(Running, "e2-medium")));
        assert_eq!(c.plan(), InstanceAction::Running);
        let mut m = Case::new(Some(inst(Terminated, "e2-medium")));
        m.rs = RunStrategy::Manual;
        assert_eq!(m.plan(), InstanceAction::Stopped);
    }

    #[test]
    fn metadata_drift_is_corrected() {
        let mut c = Case::new(Some(inst(Running, "e2-medium")));
        c.metadata.insert("enable-guest-attributes".into(), "TRUE".into());
        assert_eq!(c.plan(), InstanceAction::SetMetadata);
    }

    #[test]
    fn run_strategies() {
        let mut c = Case::new(Some(inst(Terminated, "e2-medium")));
        assert_eq!(c.plan(), InstanceAction::Start(StartReason::Always));
        c.rs = RunStrategy::Halted;
        assert_eq!(c.plan(), InstanceAction::Stopped);
        c.instance = Some(inst(Running, "e2-medium"));
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::Halted));
        c.rs = RunStrategy::Manual;
        assert_eq!(c.plan(), InstanceAction::Running);
        c.instance = Some(inst(Terminated, "e2-medium"));
        assert_eq!(c.plan(), InstanceAction::Stopped, "manual respects a stop");
    }

    #[test]
    fn idle_stops_only_manual_running_vms() {
        let mut c = Case::new(Some(inst(Running, "e2-medium")));
        c.rs = RunStrategy::Manual;
        c.idle = true;
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::IdleTimeout));
        c.idle = false;
        assert_eq!(c.plan(), InstanceAction::Running);
    }

    #[test]
    fn start_request_wakes_manual_vm_once() {
        let mut c = Case::new(Some(inst(Terminated, "e2-medium")));
        c.rs = RunStrategy::Manual;
        c.start_request = Some("2026-11-22T10:00:00Z");
        assert_eq!(c.plan(), InstanceAction::Start(StartReason::Requested));
        c.power.acknowledged_start_request = Some("2026-11-22T10:00:00Z".into());
        assert_eq!(c.plan(), InstanceAction::Stopped);
        c.instance = Some(inst(Running, "e2-medium"));
        c.start_request = Some("again");
        assert_eq!(c.plan(), InstanceAction::AcknowledgeStartRequest);
    }

    #[test]
    fn start_request_does_not_override_halted() {
        let mut c = Case::new(Some(inst(Terminated, "e2-medium")));
        c.rs = RunStrategy::Halted;
        c.start_request = Some("x");
        assert_eq!(c.plan(), InstanceAction::AcknowledgeStartRequest);
    }
}
