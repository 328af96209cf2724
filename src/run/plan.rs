//! Planning a Run that has not been launched yet: from its ProjectVM and the other Runs on
//! it, the one thing to do now. Pure, so every case is a unit test.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::{Phase, ProjectVM, RunStrategy, WhenStopped};
use crate::conditions::{self, Reason, types};

/// How long a Run waits for a ProjectVM that does not exist before it fails: GitOps tools
/// may apply a Run before the ProjectVM it names.
pub const MISSING_PROJECTVM_GRACE: Duration = Duration::from_secs(60);

/// The ProjectVM as planning needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Missing,
    /// Ready: running, prerequisites installed, repository synced.
    Ready,
    /// Its VM is stopped (or stopping).
    Stopped {
        run_strategy: RunStrategy,
        start_requested: bool,
    },
    /// Anything else: provisioning, syncing, failed, starting.
    NotReady {
        message: String,
    },
}

impl Target {
    /// Reads a ProjectVM; `start_value` is the start-request annotation value this Run sets.
    pub fn of(pvm: Option<&ProjectVM>, start_value: &str) -> Target {
        let Some(pvm) = pvm else {
            return Target::Missing;
        };
        let status = pvm.status.clone().unwrap_or_default();
        if conditions::is_true(&status.conditions, types::READY) && pvm.metadata.deletion_timestamp.is_none() {
            return Target::Ready;
        }
        let requested = pvm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::START_ANNOTATION))
            .is_some_and(|v| v == start_value);
        match status.phase {
            Some(Phase::Stopped | Phase::Stopping) => {
                Target::Stopped { run_strategy: pvm.spec.machine.run_strategy, start_requested: requested }
            }
            _ => {
                let ready = status.conditions.iter().find(|c| c.type_ == types::READY);
                let message = ready.map(|c| c.message.clone()).filter(|m| !m.is_empty()).unwrap_or_else(|| {
                    if pvm.metadata.deletion_timestamp.is_some() {
                        "it is being deleted".into()
                    } else {
                        "not ready yet".into()
                    }
                });
                Target::NotReady { message }
            }
        }
    }
}

/// Another Run on the same ProjectVM, for the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: String,
    pub name: String,
    pub created: Option<DateTime<Utc>>,
    /// Launched on the VM and not finished.
    pub active: bool,
    /// Waiting to be launched (not launched, not finished, not being deleted).
    pub waiting: bool,
}

/// What to do with a Run that has not been launched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Keep waiting, with this reason and message, and look again after `retry`.
    Wait { queued: bool, reason: Reason, message: String, retry: Duration },
    /// Ask the ProjectVM controller to start the stopped VM.
    RequestStart { message: String },
    /// The VM is being started for this Run.
    StartingVM { message: String },
    /// Fail the Run before it ran.
    Fail { reason: Reason, message: String },
    /// Prepare and launch it now.
    Launch,
}

/// The Run's inputs.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub project_vm: &'a str,
    pub created: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub when_stopped: WhenStopped,
    pub target: Target,
    pub max_concurrent: u32,
    /// The other Runs on the same ProjectVM (this one may be among them; it is skipped).
    pub peers: &'a [Peer],
}

pub fn plan(i: &Inputs) -> Plan {
    let pvm = i.project_vm;
    match &i.target {
        Target::Missing => {
            let age = i.created.map(|c| crate::clock::elapsed(i.now, c)).unwrap_or_default();
            if age >= MISSING_PROJECTVM_GRACE {
                return Plan::Fail {
                    reason: Reason::ProjectVMNotFound,
                    message: format!(
                        "ProjectVM {pvm} does not exist in this namespace (waited {}): create it, or create a Run that names an existing one",
                        crate::clock::humanize(MISSING_PROJECTVM_GRACE)
                    ),
                };
            }
            Plan::Wait {
                queued: false,
                reason: Reason::ProjectVMNotFound,
                message: format!("waiting for ProjectVM {pvm}, which does not exist yet"),
                retry: Duration::from_secs(10),
            }
        }
        Target::Stopped { run_strategy, start_requested } => match (i.when_stopped, run_strategy) {
            (WhenStopped::Fail, _) => Plan::Fail {
                reason: Reason::VMStopped,
                message: format!(
                    "the VM of ProjectVM {pvm} is stopped and this Run has whenStopped: Fail; start the VM (or use whenStopped: Start) and create the Run again"
                ),
            },
            (WhenStopped::Start, RunStrategy::Halted) => Plan::Wait {
                queued: false,
                reason: Reason::VMStopped,
                message: format!(
                    "ProjectVM {pvm} has runStrategy Halted, which keeps its VM stopped; the Run starts when it runs (set runStrategy Manual or Always)"
                ),
                retry: Duration::from_secs(60),
            },
            (WhenStopped::Start, _) if *start_requested => {
                Plan::StartingVM { message: format!("starting the VM of ProjectVM {pvm} for this Run") }
            }
            (WhenStopped::Start, _) => Plan::RequestStart {
                message: format!(
                    "the VM of ProjectVM {pvm} is stopped; asking for it to be started (whenStopped: Start)"
                ),
            },
        },
        Target::NotReady { message } => Plan::Wait {
            queued: false,
            reason: Reason::Waiting,
            message: format!("waiting for ProjectVM {pvm} to be Ready: {}", crate::text::clip(message, 512)),
            retry: Duration::from_secs(15),
        },
        Target::Ready => queue(i),
    }
}

/// Creation order decides; names break ties, so every replica agrees.
fn queue(i: &Inputs) -> Plan {
    let active = i.peers.iter().filter(|p| p.active && p.uid != i.uid).count();
    let mut ahead: Vec<&Peer> = i
        .peers
        .iter()
        .filter(|p| p.waiting && p.uid != i.uid && (p.created, p.name.as_str()) < (i.created, i.name))
        .collect();
    ahead.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let max = i.max_concurrent.max(1) as usize;
    if active + ahead.len() < max {
        return Plan::Launch;
    }
    let mut waits_for: Vec<String> = i.peers.iter().filter(|p| p.active).map(|p| p.name.clone()).collect();
    waits_for.extend(ahead.iter().map(|p| p.name.clone()));
    let shown: Vec<String> = waits_for.iter().take(5).cloned().collect();
    let more = if waits_for.len() > 5 { format!(" and {} more", waits_for.len() - 5) } else { String::new() };
    Plan::Wait {
        queued: true,
        reason: Reason::Queued,
        message: format!(
            "queued behind {} on ProjectVM {} (runs.maxConcurrent {max}): {}{more}",
            if active > 0 && !ahead.is_empty() {
                format!("{active} running and {} earlier Run(s)", ahead.len())
            } else if active > 0 {
                format!("{active} running Run(s)")
            } else {
                format!("{} earlier Run(s)", ahead.len())
            },
            i.project_vm,
            shown.join(", ")
        ),
        retry: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_700_000_000 + s, 0)
    }

    fn peer(name: &str, created: i64, active: bool) -> Peer {
        Peer { uid: name.into(), name: name.into(), created: t(created), active, waiting: !active }
    }

    fn inputs<'a>(target: Target, peers: &'a [Peer], max: u32) -> Inputs<'a> {
        Inputs {
            uid: "me",
            name: "me",
            project_vm: "pvm",
            created: t(10),
            now: t(20).unwrap(),
            when_stopped: WhenStopped::Start,
            target,
            max_concurrent: max,
            peers,
        }
    }

    #[test]
    fn a_ready_vm_with_a_free_slot_launches() {
        assert_eq!(plan(&inputs(Target::Ready, &[], 1)), Plan::Launch);
        let peers = [peer("me", 10, false), peer("later", 11, false)];
        assert_eq!(plan(&inputs(Target::Ready, &peers, 1)), Plan::Launch, "later Runs do not hold it back");
    }

    #[test]
    fn runs_queue_in_creation_order() {
        let running = [peer("first", 1, true)];
        let Plan::Wait { queued: true, reason, message, .. } = plan(&inputs(Target::Ready, &running, 1)) else {
            panic!()
        };
        assert_eq!(reason, Reason::Queued);
        assert!(message.contains("first") && message.contains("maxConcurrent 1"), "{message}");
        // An earlier waiting Run goes first even when a slot is free.
        let earlier = [peer("earlier", 5, false)];
        assert!(matches!(plan(&inputs(Target::Ready, &earlier, 1)), Plan::Wait { queued: true, .. }));
        assert_eq!(plan(&inputs(Target::Ready, &earlier, 2)), Plan::Launch);
        // Same creation second: the name decides.
        let mut tie = peer("a", 10, false);
        tie.uid = "a".into();
        assert!(matches!(plan(&inputs(Target::Ready, &[tie], 1)), Plan::Wait { queued: true, .. }));
    }

    #[test]
    fn stopped_vms_are_started_or_fail_the_run() {
        let stopped = |rs, requested| Target::Stopped { run_strategy: rs, start_requested: requested };
        assert!(matches!(plan(&inputs(stopped(RunStrategy::Manual, false), &[], 1)), Plan::RequestStart { .. }));
        assert!(matches!(plan(&inputs(stopped(RunStrategy::Manual, true), &[], 1)), Plan::StartingVM { .. }));
        let Plan::Wait { reason, message, .. } = plan(&inputs(stopped(RunStrategy::Halted, false), &[], 1)) else {
            panic!()
        };
        assert_eq!(reason, Reason::VMStopped);
        assert!(message.contains("Halted"));
        let mut fail = inputs(stopped(RunStrategy::Manual, false), &[], 1);
        fail.when_stopped = WhenStopped::Fail;
        let Plan::Fail { reason, message } = plan(&fail) else { panic!() };
        assert_eq!(reason, Reason::VMStopped);
        assert!(message.contains("pvm"));
    }

    #[test]
    fn a_missing_projectvm_is_waited_for_then_fails() {
        let Plan::Wait { reason, .. } = plan(&inputs(Target::Missing, &[], 1)) else { panic!() };
        assert_eq!(reason, Reason::ProjectVMNotFound);
        let mut late = inputs(Target::Missing, &[], 1);
        late.now = t(100).unwrap();
        let Plan::Fail { reason, message } = plan(&late) else { panic!() };
        assert_eq!(reason, Reason::ProjectVMNotFound);
        assert!(message.contains("ProjectVM pvm"));
    }

    #[test]
    fn a_projectvm_that_is_not_ready_is_waited_for_with_its_message() {
        let Plan::Wait { queued: false, message, .. } =
            plan(&inputs(Target::NotReady { message: "cloning 40%".into() }, &[], 1))
        else {
            panic!()
        };
        assert!(message.contains("cloning 40%"));
    }

    #[test]
    fn targets_are_read_from_the_projectvm() {
        let mut pvm: ProjectVM = serde_yaml::from_str(
            "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: p, namespace: n}\nspec:\n  runStrategy: Manual\n  repository: {url: 'https://h.example/r.git'}\n",
        )
        .unwrap();
        assert_eq!(Target::of(None, "x"), Target::Missing);
        assert!(matches!(Target::of(Some(&pvm), "x"), Target::NotReady { .. }));
        pvm.status = Some(crate::api::VmStatus { phase: Some(Phase::Stopped), ..Default::default() });
        assert_eq!(
            Target::of(Some(&pvm), "x"),
            Target::Stopped { run_strategy: RunStrategy::Manual, start_requested: false }
        );
        pvm.metadata.annotations =
            Some([(crate::api::START_ANNOTATION.to_string(), "x".to_string())].into_iter().collect());
        assert_eq!(
            Target::of(Some(&pvm), "x"),
            Target::Stopped { run_strategy: RunStrategy::Manual, start_requested: true }
        );
    }
}
