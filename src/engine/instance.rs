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
    /// Whether the instance's labels say it was made for this resource in this cluster (this
    /// object, or an earlier one of the same kind, namespace and name, which this one adopts;
    /// see `naming::ownership`).
    pub owned: bool,
    /// Ours, but made by a version that did not label the cluster (see
    /// `naming::Ownership::OursUnlabelled`): the label is added first, so the cluster's bulk
    /// lists see it.
    pub cluster_label_missing: bool,
    pub desired_machine_type: &'a str,
    pub run_strategy: RunStrategy,
    /// Metadata items the operator manages (ssh-keys, enable-guest-attributes).
    pub desired_metadata: &'a BTreeMap<String, String>,
    pub power: &'a PowerStatus,
    /// Value of the start-request annotation, if set.
    pub start_request: Option<&'a str>,
    /// Value of the stop-request annotation, if set.
    pub stop_request: Option<&'a str>,
    /// Whether the idle timeout has passed with no activity.
    pub idle_expired: bool,
    /// Whether the VM has been running for `maxRunningTime`.
    pub running_expired: bool,
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
    /// An instance with this name exists but is not ours (another cluster's, another
    /// resource's, or not projectvm's): leave it alone.
    NameConflict,
    /// Add the cluster label to an instance of ours that lacks it.
    LabelCluster,
    /// Compute Engine is moving the instance between states; wait.
    WaitTransition,
    Stop(StopReason),
    Start(StartReason),
    SetMachineType(String),
    SetMetadata,
    /// The start request was seen while the VM already runs: acknowledge it only.
    AcknowledgeStartRequest,
    /// A stop request that needs no action (the VM is stopped, or `runStrategy` decides);
    /// record it as seen.
    AcknowledgeStopRequest,
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
        return InstanceAction::NameConflict;
    }
    if i.cluster_label_missing {
        return InstanceAction::LabelCluster;
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

    if !metadata_current(i.desired_metadata, &inst.metadata) {
        return InstanceAction::SetMetadata;
    }

    let requested = i.start_request.is_some_and(|r| i.power.acknowledged_start_request.as_deref() != Some(r));
    let stop_requested = i.stop_request.is_some_and(|r| i.power.acknowledged_stop_request.as_deref() != Some(r));
    match (i.run_strategy, running) {
        (RunStrategy::Manual, true) if stop_requested => return InstanceAction::Stop(StopReason::Requested),
        (_, _) if stop_requested => return InstanceAction::AcknowledgeStopRequest,
        _ => {}
    }
    match (i.run_strategy, running) {
        (RunStrategy::Always, false) => InstanceAction::Start(StartReason::Always),
        (RunStrategy::Halted, true) => InstanceAction::Stop(StopReason::Halted),
        (RunStrategy::Manual, false) if requested => InstanceAction::Start(StartReason::Requested),
        (RunStrategy::Manual, true) if requested => InstanceAction::AcknowledgeStartRequest,
        // The cost guardrail wins over activity: it stops a VM in use.
        (RunStrategy::Manual, true) if i.running_expired => InstanceAction::Stop(StopReason::RunningTimeout),
        (RunStrategy::Manual, true) if i.idle_expired => InstanceAction::Stop(StopReason::IdleTimeout),
        (RunStrategy::Halted, false) if requested => InstanceAction::AcknowledgeStartRequest,
        (_, true) => InstanceAction::Running,
        (_, false) => InstanceAction::Stopped,
    }
}

/// The metadata item holding SSH public keys, one `user:key` line each. People add their own
/// lines too (`gcloud compute ssh` does), so the operator manages only its own line in it.
pub const SSH_KEYS: &str = "ssh-keys";

/// Whether the instance's metadata has what the operator manages: every desired item as
/// desired, except `ssh-keys`, where only the operator's own line counts.
pub fn metadata_current(desired: &BTreeMap<String, String>, actual: &BTreeMap<String, String>) -> bool {
    desired.iter().all(|(k, v)| match k.as_str() {
        SSH_KEYS => ssh_keys_current(actual.get(k).map(String::as_str), v),
        _ => actual.get(k) == Some(v),
    })
}

/// The metadata to set: the instance's items, with the operator's items applied on top and
/// its line merged into `ssh-keys` (see [`merge_ssh_keys`]).
pub fn merge_metadata(
    actual: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut items = actual.clone();
    for (k, v) in desired {
        let value = match k.as_str() {
            SSH_KEYS => merge_ssh_keys(actual.get(k).map(String::as_str), v),
            _ => v.clone(),
        };
        items.insert(k.clone(), value);
    }
    items
}

/// The comment of an `ssh-keys` line `user:type base64 comment…`: what follows the key.
/// The operator's key for a resource carries `projectvm:<namespace>/<name>`.
fn key_comment(line: &str) -> Option<&str> {
    let (_, key) = line.split_once(':')?;
    let key = key.trim();
    let after_type = key.split_once(char::is_whitespace)?.1.trim_start();
    let comment = after_type.split_once(char::is_whitespace)?.1.trim();
    (!comment.is_empty()).then_some(comment)
}

/// Whether `line` is the operator's, given its current line `ours`: the same line, or one with
/// the same key comment (an earlier key or user of the same resource).
fn is_ours(line: &str, ours: &str) -> bool {
    let line = line.trim();
    line == ours.trim() || key_comment(ours).is_some_and(|c| key_comment(line) == Some(c))
}

/// Whether an `ssh-keys` value holds the operator's line `ours` and no stale line of the
/// operator for the same resource. Everybody else's lines do not matter.
pub fn ssh_keys_current(existing: Option<&str>, ours: &str) -> bool {
    let lines: Vec<&str> = existing.unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.contains(&ours.trim()) && lines.iter().all(|l| *l == ours.trim() || !is_ours(l, ours))
}

/// The `ssh-keys` value with the operator's line in it: every other line kept as it is and
/// where it is, the operator's line replacing its earlier one (or added at the end), once.
/// Blank lines are dropped. Idempotent.
pub fn merge_ssh_keys(existing: Option<&str>, ours: &str) -> String {
    let ours = ours.trim();
    let mut out: Vec<&str> = vec![];
    let mut placed = false;
    for line in existing.unwrap_or("").lines() {
        if line.trim().is_empty() {
            continue;
        }
        if is_ours(line, ours) {
            if !placed {
                out.push(ours);
                placed = true;
            }
            continue;
        }
        out.push(line.trim_end_matches('\r'));
    }
    if !placed {
        out.push(ours);
    }
    out.join("\n")
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
        stop_request: Option<&'static str>,
        idle: bool,
        running_too_long: bool,
        metadata: BTreeMap<String, String>,
        owned: bool,
        unlabelled: bool,
    }

    impl Case {
        fn new(instance: Option<CloudInstance>) -> Self {
            Self {
                instance,
                mt: "e2-medium",
                rs: RunStrategy::Always,
                power: PowerStatus::default(),
                start_request: None,
                stop_request: None,
                idle: false,
                running_too_long: false,
                metadata: [("ssh-keys".to_string(), "project:key".to_string())].into(),
                owned: true,
                unlabelled: false,
            }
        }
        fn plan(&self) -> InstanceAction {
            plan_instance(&InstanceInputs {
                instance: self.instance.as_ref(),
                owned: self.owned,
                cluster_label_missing: self.unlabelled,
                desired_machine_type: self.mt,
                run_strategy: self.rs,
                desired_metadata: &self.metadata,
                power: &self.power,
                start_request: self.start_request,
                stop_request: self.stop_request,
                idle_expired: self.idle,
                running_expired: self.running_too_long,
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
        assert_eq!(c.plan(), InstanceAction::NameConflict);
        c.instance = Some(inst(Stopping, "e2-small"));
        assert_eq!(c.plan(), InstanceAction::NameConflict, "never waited on, resized or started");
    }

    #[test]
    fn an_instance_without_the_cluster_label_gets_it_first() {
        let mut c = Case::new(Some(inst(Terminated, "e2-small")));
        c.unlabelled = true;
        assert_eq!(c.plan(), InstanceAction::LabelCluster);
        c.unlabelled = false;
        assert_eq!(c.plan(), InstanceAction::SetMachineType("e2-medium".into()));
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
    fn running_timeout_stops_an_active_vm_and_a_start_request_starts_it_again() {
        let mut c = Case::new(Some(inst(Running, "e2-medium")));
        c.rs = RunStrategy::Manual;
        c.running_too_long = true;
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::RunningTimeout), "activity does not keep it up");
        c.idle = true;
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::RunningTimeout), "the guardrail is the reason");
        c.instance = Some(inst(Terminated, "e2-medium"));
        assert_eq!(c.plan(), InstanceAction::Stopped, "stays stopped");
        c.start_request = Some("again");
        assert_eq!(c.plan(), InstanceAction::Start(StartReason::Requested));
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
    fn stop_request_stops_a_running_manual_vm_once() {
        let mut c = Case::new(Some(inst(Running, "e2-medium")));
        c.rs = RunStrategy::Manual;
        c.stop_request = Some("t1");
        assert_eq!(c.plan(), InstanceAction::Stop(StopReason::Requested));
        c.power.acknowledged_stop_request = Some("t1".into());
        assert_eq!(c.plan(), InstanceAction::Running, "acted upon once");
        // With Always it is only acknowledged: Always would start the VM again at once.
        c.rs = RunStrategy::Always;
        c.stop_request = Some("t2");
        assert_eq!(c.plan(), InstanceAction::AcknowledgeStopRequest);
        // A later start request still starts a stopped Manual VM.
        let mut s = Case::new(Some(inst(Terminated, "e2-medium")));
        s.rs = RunStrategy::Manual;
        s.stop_request = Some("t1");
        s.power.acknowledged_stop_request = Some("t1".into());
        s.start_request = Some("t3");
        assert_eq!(s.plan(), InstanceAction::Start(StartReason::Requested));
    }

    #[test]
    fn start_request_does_not_override_halted() {
        let mut c = Case::new(Some(inst(Terminated, "e2-medium")));
        c.rs = RunStrategy::Halted;
        c.start_request = Some("x");
        assert_eq!(c.plan(), InstanceAction::AcknowledgeStartRequest);
    }

    const OURS: &str = "project:ssh-ed25519 AAAAC3NzaOURS projectvm:team-a/api";
    const OLD_OURS: &str = "project:ssh-ed25519 AAAAC3NzaOLD projectvm:team-a/api";
    const PERSON: &str = "alice:ssh-rsa AAAAB3NzaALICE alice@laptop";
    const GCLOUD: &str = r#"alice:ecdsa-sha2-nistp256 AAAAE2VjZHNh google-ssh {"userName":"alice@example.com","expireOn":"2026-12-01T10:00:00+0000"}"#;
    const OTHER_RESOURCE: &str = "project:ssh-ed25519 AAAAC3NzaB projectvm:team-a/web";

    fn with_ssh_keys(value: &str) -> CloudInstance {
        let mut i = inst(Running, "e2-medium");
        i.metadata =
            [(SSH_KEYS.to_string(), value.to_string()), ("enable-guest-attributes".to_string(), "TRUE".to_string())]
                .into();
        i
    }

    fn desired() -> BTreeMap<String, String> {
        [(SSH_KEYS.to_string(), OURS.to_string()), ("enable-guest-attributes".to_string(), "TRUE".to_string())].into()
    }

    #[test]
    fn other_peoples_ssh_keys_do_not_make_metadata_stale() {
        let mut c = Case::new(Some(with_ssh_keys(&format!("{PERSON}\n{OURS}\n{GCLOUD}"))));
        c.metadata = desired();
        assert_eq!(c.plan(), InstanceAction::Running, "a person's keys are theirs: no fight");
        c.instance = Some(with_ssh_keys(&format!("{PERSON}\n{GCLOUD}")));
        assert_eq!(c.plan(), InstanceAction::SetMetadata, "our line is missing");
        c.instance = Some(with_ssh_keys(&format!("{OURS}\n{OLD_OURS}")));
        assert_eq!(c.plan(), InstanceAction::SetMetadata, "a stale key of ours remains");
        c.instance = Some(with_ssh_keys(&format!("{OURS}\n{OTHER_RESOURCE}")));
        assert_eq!(c.plan(), InstanceAction::Running, "another resource's line is not ours");
    }

    #[test]
    fn ssh_keys_current_looks_at_our_line_only() {
        assert!(ssh_keys_current(Some(OURS), OURS));
        assert!(ssh_keys_current(Some(&format!("{PERSON}\r\n{OURS}\r\n")), OURS));
        assert!(!ssh_keys_current(None, OURS));
        assert!(!ssh_keys_current(Some(""), OURS));
        assert!(!ssh_keys_current(Some(OLD_OURS), OURS));
        assert!(!ssh_keys_current(Some(&format!("{OURS}\n{OLD_OURS}")), OURS));
        // Our key under another user (spec.user changed) is stale too.
        assert!(!ssh_keys_current(
            Some(&format!("{OURS}\nolduser:ssh-ed25519 AAAAC3NzaOURS projectvm:team-a/api")),
            OURS
        ));
    }

    #[test]
    fn merge_keeps_other_lines_and_adds_ours_once() {
        let existing = format!("{PERSON}\n{GCLOUD}");
        let merged = merge_ssh_keys(Some(&existing), OURS);
        assert_eq!(merged, format!("{PERSON}\n{GCLOUD}\n{OURS}"));
        assert!(ssh_keys_current(Some(&merged), OURS));
        assert_eq!(merge_ssh_keys(None, OURS), OURS);
        assert_eq!(merge_ssh_keys(Some(""), OURS), OURS);
        assert_eq!(merge_ssh_keys(Some(&format!("{OURS}\n{OURS}")), OURS), OURS, "duplicates collapse");
    }

    #[test]
    fn merge_replaces_our_line_when_our_key_changed() {
        let existing = format!("{PERSON}\n{OLD_OURS}\n{GCLOUD}\n{OTHER_RESOURCE}");
        let merged = merge_ssh_keys(Some(&existing), OURS);
        assert_eq!(merged, format!("{PERSON}\n{OURS}\n{GCLOUD}\n{OTHER_RESOURCE}"), "replaced in place");
        assert!(!merged.contains("AAAAC3NzaOLD"));
    }

    #[test]
    fn merge_is_idempotent() {
        for existing in [
            None,
            Some(String::new()),
            Some(format!("{PERSON}\n\n{OLD_OURS}\r\n{GCLOUD}\n")),
            Some(format!("{OURS}\n{PERSON}")),
        ] {
            let once = merge_ssh_keys(existing.as_deref(), OURS);
            assert_eq!(merge_ssh_keys(Some(&once), OURS), once, "from {existing:?}");
            assert!(ssh_keys_current(Some(&once), OURS), "{once}");
            let items = merge_metadata(&with_ssh_keys(&once).metadata, &desired());
            assert!(metadata_current(&desired(), &items));
            assert_eq!(merge_metadata(&items, &desired()), items);
        }
    }

    #[test]
    fn merge_metadata_keeps_other_items_and_applies_ours() {
        let actual: BTreeMap<String, String> = [
            (SSH_KEYS.to_string(), PERSON.to_string()),
            ("startup-script".to_string(), "echo hi".to_string()),
            ("enable-guest-attributes".to_string(), "FALSE".to_string()),
        ]
        .into();
        let merged = merge_metadata(&actual, &desired());
        assert_eq!(merged["startup-script"], "echo hi");
        assert_eq!(merged["enable-guest-attributes"], "TRUE");
        assert_eq!(merged[SSH_KEYS], format!("{PERSON}\n{OURS}"));
        assert!(!metadata_current(&desired(), &actual));
        assert!(metadata_current(&desired(), &merged));
    }
}
