//! The step engine both kinds share. A kind is a small graph of steps; each step has a cheap
//! check (its condition's recorded fingerprint, or a marker on the VM), an idempotent action
//! run as a tracked background task, and a fingerprint of its inputs. Planning — what runs
//! next given the spec and what was observed — is pure and lives here and in [`instance`].

pub mod instance;
pub mod tasks;

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::conditions::types;

/// A step that runs on the VM (or against the cluster) once the instance is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepId {
    Prerequisites,
    Repository,
    CodeServer,
    Health,
    Route,
    /// A Run's log and artifacts, copied to Cloud Storage (not in any VM kind's graph).
    Artifacts,
}

impl StepId {
    /// The name used in `status.progress.step` and marker files.
    pub fn name(self) -> &'static str {
        match self {
            StepId::Prerequisites => "Prerequisites",
            StepId::Repository => "Repository",
            StepId::CodeServer => "CodeServer",
            StepId::Health => "Health",
            StepId::Route => "Route",
            StepId::Artifacts => "Artifacts",
        }
    }
}

/// A node of a kind's step graph.
#[derive(Clone, Copy, Debug)]
pub struct StepNode {
    pub id: StepId,
    /// The condition this step reports into.
    pub condition: &'static str,
    /// Steps that must have succeeded for the current inputs before this one starts.
    pub after: &'static [StepId],
    /// Whether the step's action is re-checked every reconcile even when its fingerprint is
    /// unchanged (cheap, inline checks such as the health probe and the route).
    pub every_reconcile: bool,
}

/// ProjectVM: instance → prerequisites → repository.
pub const PROJECTVM_GRAPH: &[StepNode] = &[
    StepNode {
        id: StepId::Prerequisites,
        condition: types::PREREQUISITES_INSTALLED,
        after: &[],
        every_reconcile: false,
    },
    StepNode {
        id: StepId::Repository,
        condition: types::REPOSITORY_SYNCED,
        after: &[StepId::Prerequisites],
        every_reconcile: false,
    },
];

/// Workspace: instance → (clone ∥ code-server configuration) → health → route.
pub const WORKSPACE_GRAPH: &[StepNode] = &[
    StepNode { id: StepId::Repository, condition: types::REPOSITORY_CLONED, after: &[], every_reconcile: false },
    StepNode { id: StepId::CodeServer, condition: types::CODE_SERVER_CONFIGURED, after: &[], every_reconcile: false },
    StepNode { id: StepId::Health, condition: types::HEALTHY, after: &[StepId::CodeServer], every_reconcile: true },
    StepNode { id: StepId::Route, condition: types::ROUTED, after: &[StepId::Health], every_reconcile: true },
];

/// What is known about one step when planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepObservation {
    /// Fingerprint of the step's current inputs.
    pub desired_fingerprint: String,
    /// Fingerprint recorded in the condition when the step last succeeded.
    pub recorded_fingerprint: Option<String>,
    /// Whether the step's condition is True.
    pub condition_true: bool,
    /// The background task for this step, if any.
    pub task: TaskView,
}

/// The task registry's view of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskView {
    /// No task known.
    Idle,
    /// Running, started for these inputs.
    Running { fingerprint: String },
    /// Finished with a result not yet written to status.
    Finished { fingerprint: String, success: bool },
    /// Failed earlier; may retry once the backoff has passed.
    BackingOff { fingerprint: String, ready: bool },
}

/// What to do with a step this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepDecision {
    /// Inputs unchanged and the step succeeded: nothing to do.
    UpToDate,
    /// Start (or, for inline steps, run) the action now.
    Run,
    /// A task is running; report its progress.
    Running,
    /// A task finished; record its result.
    Collect,
    /// Waiting for the backoff after a failure.
    BackingOff,
    /// Waiting for steps it depends on.
    Blocked,
}

/// Decides, for each step of the graph in order, what to do. A step is satisfied when its
/// decision is `UpToDate`, which unblocks the steps after it.
pub fn plan_steps(graph: &[StepNode], observe: impl Fn(StepId) -> StepObservation) -> Vec<(StepId, StepDecision)> {
    let mut decided: Vec<(StepId, StepDecision)> = Vec::with_capacity(graph.len());
    for node in graph {
        let obs = observe(node.id);
        let deps_ok =
            node.after.iter().all(|dep| decided.iter().any(|(id, d)| id == dep && *d == StepDecision::UpToDate));
        let up_to_date =
            obs.condition_true && obs.recorded_fingerprint.as_deref() == Some(obs.desired_fingerprint.as_str());
        let decision = match &obs.task {
            TaskView::Finished { .. } => StepDecision::Collect,
            TaskView::Running { fingerprint } if *fingerprint == obs.desired_fingerprint => StepDecision::Running,
            // A task for old inputs is still running: let it finish before starting anew.
            TaskView::Running { .. } => StepDecision::Running,
            _ if !deps_ok => StepDecision::Blocked,
            _ if up_to_date && !node.every_reconcile => StepDecision::UpToDate,
            TaskView::BackingOff { fingerprint, ready } if *fingerprint == obs.desired_fingerprint && !ready => {
                StepDecision::BackingOff
            }
            _ if up_to_date => StepDecision::Run,
            _ => StepDecision::Run,
        };
        // Inline steps that are up to date still run each reconcile, but they count as
        // satisfied for the steps after them.
        let effective = if node.every_reconcile && up_to_date && decision == StepDecision::Run {
            StepDecision::UpToDate
        } else {
            decision
        };
        decided.push((node.id, effective));
    }
    decided
}

/// The steps whose inputs are due to run now: `Run`, plus `every_reconcile` steps that
/// are up to date and have their dependencies satisfied.
pub fn due(graph: &[StepNode], plan: &[(StepId, StepDecision)]) -> Vec<StepId> {
    graph
        .iter()
        .filter_map(|node| {
            let decision = plan.iter().find(|(id, _)| *id == node.id)?.1;
            let run = decision == StepDecision::Run || (node.every_reconcile && decision == StepDecision::UpToDate);
            run.then_some(node.id)
        })
        .collect()
}

/// A stable digest of a step's inputs.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Capped exponential backoff: 5 s, 10 s, 20 s, … up to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn obs(fp: &str, recorded: Option<&str>, ok: bool, task: TaskView) -> StepObservation {
        StepObservation {
            desired_fingerprint: fp.into(),
            recorded_fingerprint: recorded.map(String::from),
            condition_true: ok,
            task,
        }
    }

    fn plan(graph: &[StepNode], m: HashMap<StepId, StepObservation>) -> HashMap<StepId, StepDecision> {
        plan_steps(graph, |id| m.get(&id).cloned().unwrap_or(obs("fp", None, false, TaskView::Idle)))
            .into_iter()
            .collect()
    }

    #[test]
    fn fresh_projectvm_runs_prerequisites_first() {
        let p = plan(PROJECTVM_GRAPH, HashMap::new());
        assert_eq!(p[&StepId::Prerequisites], StepDecision::Run);
        assert_eq!(p[&StepId::Repository], StepDecision::Blocked);
    }

    #[test]
    fn repository_runs_once_prerequisites_are_current() {
        let mut m = HashMap::new();
        m.insert(StepId::Prerequisites, obs("a", Some("a"), true, TaskView::Idle));
        let p = plan(PROJECTVM_GRAPH, m);
        assert_eq!(p[&StepId::Prerequisites], StepDecision::UpToDate);
        assert_eq!(p[&StepId::Repository], StepDecision::Run);
    }

    #[test]
    fn changed_inputs_rerun_only_that_step() {
        // revision changed: repository fingerprint differs, prerequisites untouched
        let mut m = HashMap::new();
        m.insert(StepId::Prerequisites, obs("a", Some("a"), true, TaskView::Idle));
        m.insert(StepId::Repository, obs("new", Some("old"), true, TaskView::Idle));
        let p = plan(PROJECTVM_GRAPH, m);
        assert_eq!(p[&StepId::Prerequisites], StepDecision::UpToDate);
        assert_eq!(p[&StepId::Repository], StepDecision::Run);
    }

    #[test]
    fn changed_prerequisites_block_repository_until_done() {
        let mut m = HashMap::new();
        m.insert(StepId::Prerequisites, obs("b", Some("a"), true, TaskView::Running { fingerprint: "b".into() }));
        m.insert(StepId::Repository, obs("r", Some("r"), true, TaskView::Idle));
        let p = plan(PROJECTVM_GRAPH, m);
        assert_eq!(p[&StepId::Prerequisites], StepDecision::Running);
        assert_eq!(p[&StepId::Repository], StepDecision::Blocked);
    }

    #[test]
    fn workspace_clone_and_code_server_run_side_by_side() {
        let p = plan(WORKSPACE_GRAPH, HashMap::new());
        assert_eq!(p[&StepId::Repository], StepDecision::Run);
        assert_eq!(p[&StepId::CodeServer], StepDecision::Run);
        assert_eq!(p[&StepId::Health], StepDecision::Blocked);
        assert_eq!(p[&StepId::Route], StepDecision::Blocked);
    }

    #[test]
    fn health_runs_while_clone_is_still_running() {
        let mut m = HashMap::new();
        m.insert(StepId::Repository, obs("r", None, false, TaskView::Running { fingerprint: "r".into() }));
        m.insert(StepId::CodeServer, obs("c", Some("c"), true, TaskView::Idle));
        let p = plan(WORKSPACE_GRAPH, m);
        assert_eq!(p[&StepId::Repository], StepDecision::Running);
        assert_eq!(p[&StepId::Health], StepDecision::Run);
        assert_eq!(p[&StepId::Route], StepDecision::Blocked);
    }

    #[test]
    fn steady_state_rechecks_inline_steps_only() {
        let mut m = HashMap::new();
        for id in [StepId::Repository, StepId::CodeServer, StepId::Health, StepId::Route] {
            m.insert(id, obs("f", Some("f"), true, TaskView::Idle));
        }
        let p = plan_steps(WORKSPACE_GRAPH, |id| m[&id].clone());
        assert!(p.iter().all(|(_, d)| *d == StepDecision::UpToDate), "{p:?}");
        assert_eq!(due(WORKSPACE_GRAPH, &p), vec![StepId::Health, StepId::Route]);
    }

    #[test]
    fn finished_task_is_collected_even_when_inputs_moved_on() {
        let mut m = HashMap::new();
        m.insert(
            StepId::Prerequisites,
            obs("new", None, false, TaskView::Finished { fingerprint: "old".into(), success: true }),
        );
        let p = plan(PROJECTVM_GRAPH, m);
        assert_eq!(p[&StepId::Prerequisites], StepDecision::Collect);
    }

    #[test]
    fn backoff_holds_retry_of_same_inputs_but_not_new_ones() {
        let mut m = HashMap::new();
        m.insert(
            StepId::Prerequisites,
            obs("a", None, false, TaskView::BackingOff { fingerprint: "a".into(), ready: false }),
        );
        assert_eq!(plan(PROJECTVM_GRAPH, m.clone())[&StepId::Prerequisites], StepDecision::BackingOff);
        m.insert(
            StepId::Prerequisites,
            obs("b", None, false, TaskView::BackingOff { fingerprint: "a".into(), ready: false }),
        );
        assert_eq!(plan(PROJECTVM_GRAPH, m.clone())[&StepId::Prerequisites], StepDecision::Run);
        m.insert(
            StepId::Prerequisites,
            obs("a", None, false, TaskView::BackingOff { fingerprint: "a".into(), ready: true }),
        );
        assert_eq!(plan(PROJECTVM_GRAPH, m)[&StepId::Prerequisites], StepDecision::Run);
    }

    #[test]
    fn fingerprints_are_stable_and_unambiguous() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
        assert_eq!(fingerprint(&["x"]).len(), 24);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
