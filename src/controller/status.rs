//! The status builder: every stage of a reconcile reports into one [`Report`], and
//! [`Report::summarize`] turns the step conditions into `Ready`, the kstatus conditions
//! (`Reconciling`, `Stalled`), the phase, and the progress timeout. Pure: no I/O, so every
//! rule here is unit-tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::events::{Event, EventType};

use crate::api::{ConditionStatus, MachineSpec, OperationKind, Phase, Progress, RunStrategy, StopReason, VmStatus};
use crate::clock::{self, humanize};
use crate::conditions::{self, Reason, Severity, Update, types};
use crate::engine::{StepId, StepNode};

/// Event notes longer than this are cut (the API server refuses notes over 1 KiB).
const MAX_EVENT_NOTE_BYTES: usize = 1000;

/// How long a resource at rest goes between reconciles (drift checks read the shared
/// per-zone instance list, so this costs no per-object cloud call).
pub const AT_REST: Duration = Duration::from_secs(60);

/// What one reconcile found and decided, on its way to the API server.
pub struct Report {
    pub now: DateTime<Utc>,
    pub generation: Option<i64>,
    pub status: VmStatus,
    /// Workspace only: where to open it.
    pub url: Option<String>,
    pub events: Vec<Event>,
    pub requeue: Duration,
    /// A failure of the whole reconcile rather than of one step, for `Ready`.
    failure: Option<(Reason, String)>,
}

impl Report {
    pub fn new(status: VmStatus, url: Option<String>, generation: Option<i64>, now: DateTime<Utc>) -> Self {
        Self { now, generation, status, url, events: vec![], requeue: AT_REST, failure: None }
    }

    /// Sets a condition. A condition that newly turns False with a trouble reason emits an
    /// event: Warning when the reason needs a person, Normal when the operator retries.
    pub fn set(&mut self, update: Update) {
        let before = conditions::get(&self.status.conditions, update.type_);
        let newly = before.is_none_or(|b| b.status != update.status || b.reason != update.reason.as_str());
        if update.status == ConditionStatus::False && newly && update.reason.is_trouble() {
            let type_ = if update.reason.is_terminal() { EventType::Warning } else { EventType::Normal };
            self.event(type_, update.reason.as_str(), update.message.clone());
        }
        conditions::set(&mut self.status.conditions, update, self.generation, self.now);
    }

    pub fn event(&mut self, type_: EventType, reason: &str, note: impl Into<String>) {
        let note = crate::text::clip(&note.into(), MAX_EVENT_NOTE_BYTES);
        self.events.push(Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        });
    }

    pub fn normal(&mut self, reason: &str, note: impl Into<String>) {
        self.event(EventType::Normal, reason, note);
    }

    /// Records a failure of the reconcile as a whole (not of one step): it reaches `Ready`,
    /// with an event.
    pub fn fail(&mut self, reason: Reason, message: impl Into<String>) {
        let message = message.into();
        let type_ = if reason.is_terminal() { EventType::Warning } else { EventType::Normal };
        self.event(type_, reason.as_str(), message.clone());
        self.failure = Some((reason, message));
    }

    /// Asks to be reconciled again within `d`.
    pub fn soon(&mut self, d: Duration) {
        self.requeue = self.requeue.min(d);
    }

    /// Says what is happening now. This is not progress by itself: waiting messages must
    /// not reset the progress timer (see [`Report::progressed`]).
    pub fn progress(&mut self, step: &str, message: impl Into<String>, percent: Option<i32>) {
        let p = self.status.progress.get_or_insert_with(Progress::default);
        let risen = percent.is_some_and(|now| p.step.as_deref() == Some(step) && p.percent.is_none_or(|was| now > was));
        p.step = Some(step.to_string());
        p.message = Some(message.into());
        p.percent = percent;
        if risen {
            self.progressed();
        }
    }

    /// Records real progress (a step or an operation finished, the clone percentage rose):
    /// `progressTimeout` counts from here.
    pub fn progressed(&mut self) {
        let now = clock::time(self.now);
        self.status.progress.get_or_insert_with(Progress::default).last_progress_at = Some(now);
    }

    /// Ready, the kstatus conditions, the phase and the progress timeout, from the step
    /// conditions. Runs last, on every path.
    pub fn summarize(&mut self, graph: &[StepNode], machine: &MachineSpec) {
        if self.status.observed_generation != self.generation {
            // New desired state: the progress timer starts over.
            self.progressed();
        }
        self.status.observed_generation = self.generation;
        let conds = &self.status.conditions;
        let instance_ready = conditions::is_true(conds, types::INSTANCE_READY);
        let pending: Vec<&StepNode> = graph.iter().filter(|n| !conditions::is_true(conds, n.condition)).collect();
        let ready = instance_ready && pending.is_empty() && self.status.operation.is_none() && self.failure.is_none();
        if ready {
            let message = match &self.url {
                Some(u) => format!("ready at {u}"),
                None => "ready: instance running, prerequisites installed, repository synced".into(),
            };
            if !conditions::is_true(&self.status.conditions, types::READY) {
                self.normal("Ready", message.clone());
                self.progressed();
            }
            self.set(Update::truthy(types::READY, Reason::Ready, message.clone()));
            self.settle(Phase::Ready, "Ready", "ready");
            return;
        }

        // Not ready: say why, by the first condition that is not True.
        let blocking = std::iter::once(types::INSTANCE_READY)
            .chain(graph.iter().map(|n| n.condition))
            .find_map(|t| conditions::get(&self.status.conditions, t).filter(|c| c.status != ConditionStatus::True))
            .map(|c| (Reason::parse(&c.reason).unwrap_or(Reason::Pending), format!("{}: {}", c.type_, c.message)));
        // A failure a stage reported for the whole resource (a Kubernetes error, an internal
        // error) wins over a step's reason unless that one needs a person too.
        let (reason, message) = match (self.failure.clone(), blocking) {
            (Some(own), Some(b)) if !b.0.is_terminal() => own,
            (_, Some(b)) => b,
            (Some(own), None) => own,
            (None, None) => (Reason::Pending, "waiting for the instance".to_string()),
        };
        self.set(Update::falsy(types::READY, reason, message.clone()));

        match reason {
            Reason::Stopped | Reason::IdleTimeout | Reason::RunningTimeout => {
                return self.settle(Phase::Stopped, "Stopped", "VM is stopped");
            }
            _ => {}
        }
        let phase =
            match reason.severity() {
                Severity::Terminal => Phase::Failed,
                _ if self.status.operation.as_ref().is_some_and(|o| o.kind == OperationKind::Stop) => {
                    if self.resizing() { Phase::Resizing } else { Phase::Stopping }
                }
                _ if self.resizing() => Phase::Resizing,
                _ if !instance_ready => Phase::Provisioning,
                _ => match pending.first().map(|n| n.id) {
                    Some(StepId::Prerequisites) => Phase::Installing,
                    Some(StepId::Repository) => Phase::Syncing,
                    Some(_) => Phase::Configuring,
                    None => Phase::Provisioning,
                },
            };
        self.status.phase = Some(phase);
        if reason.is_terminal() {
            self.kstatus(Some((reason, &message)));
        } else {
            self.progress_timeout(machine, &message);
        }
    }

    /// The VM rests as asked (Ready, or stopped on purpose): nothing pending, no timer.
    fn settle(&mut self, phase: Phase, step: &str, message: &str) {
        self.status.phase = Some(phase);
        let p = self.status.progress.get_or_insert_with(Progress::default);
        p.step = Some(step.to_string());
        p.message = Some(message.to_string());
        p.percent = None;
        if p.last_progress_at.is_none() {
            self.progressed();
        }
        let ready = phase == Phase::Ready;
        let reason = if ready { Reason::Ready } else { Reason::Stopped };
        self.set(Update::falsy(types::RECONCILING, reason, format!("nothing pending: {message}")));
        self.set(Update::falsy(types::STALLED, reason, "not stalled"));
    }

    /// Reconciling is paused by annotation: nothing is touched, and the conditions say so.
    pub fn pause(&mut self, message: &str) {
        self.status.observed_generation = self.generation;
        self.set(Update::falsy(types::READY, Reason::Paused, message.to_string()));
        self.set(Update::falsy(types::RECONCILING, Reason::Paused, message.to_string()));
        self.set(Update::falsy(types::STALLED, Reason::Paused, "not stalled: reconciling is paused"));
    }

    fn resizing(&self) -> bool {
        self.status.power.as_ref().is_some_and(|p| p.resizing_to.is_some())
    }

    /// `Reconciling` and `Stalled` for a resource that is not ready: stalled on a terminal
    /// reason, or else reconciling.
    fn kstatus(&mut self, stalled: Option<(Reason, &str)>) {
        match stalled {
            Some((reason, message)) => {
                self.set(Update::falsy(
                    types::RECONCILING,
                    reason,
                    "stalled: the operator retries with backoff, but this needs a change",
                ));
                self.set(Update::truthy(types::STALLED, reason, message.to_string()));
            }
            None => {
                let message = conditions::get(&self.status.conditions, types::READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                self.set(Update::truthy(types::RECONCILING, Reason::InProgress, message));
                self.set(Update::falsy(types::STALLED, Reason::InProgress, "not stalled"));
            }
        }
    }

    /// Work is pending: `Reconciling=True`, unless nothing moved for `progressTimeout`;
    /// then `Ready=False` with `StepTimedOut`, naming the step and the limit.
    fn progress_timeout(&mut self, machine: &MachineSpec, message: &str) {
        let limit = machine.progress_limit();
        let last = self.status.progress.as_ref().and_then(|p| p.last_progress_at.as_ref()).map(clock::from_time);
        let Some(last) = last else {
            self.progressed();
            return self.kstatus(None);
        };
        if clock::elapsed(self.now, last) <= limit {
            let until = limit - clock::elapsed(self.now, last);
            self.soon(until + Duration::from_secs(1));
            return self.kstatus(None);
        }
        let step = self.status.progress.as_ref().and_then(|p| p.step.clone()).unwrap_or_else(|| "Instance".into());
        let timed_out =
            format!("step {step} made no progress for {} (progressTimeout); last state: {message}", humanize(limit));
        self.set(Update::falsy(types::READY, Reason::StepTimedOut, timed_out.clone()));
        self.status.phase = Some(Phase::Failed);
        self.kstatus(Some((Reason::StepTimedOut, &timed_out)));
    }
}

/// What a `RunningTimeout` stop says: the limit and when the running period began.
pub fn running_timeout_message(
    machine: &MachineSpec,
    started: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> String {
    format!(
        "running for maxRunningTime {} (running since {})",
        machine.max_running_time.clone().unwrap_or_default(),
        started.map(|t| crate::clock::from_time(t).to_rfc3339()).unwrap_or_else(|| "unknown".into())
    )
}

/// The message of a stopped VM's `InstanceReady`, saying why it is stopped.
pub fn stopped_message(
    machine: &MachineSpec,
    last_stop: Option<StopReason>,
    last_activity: Option<String>,
    last_started: Option<String>,
) -> String {
    match last_stop {
        Some(StopReason::IdleTimeout) => format!(
            "stopped after idleTimeout {} without activity (last activity {})",
            machine.idle_timeout.clone().unwrap_or_default(),
            last_activity.unwrap_or_else(|| "never".into())
        ),
        Some(StopReason::RunningTimeout) => format!(
            "stopped after running for maxRunningTime {} (running since {}); set annotation {} to a new value to start it again",
            machine.max_running_time.clone().unwrap_or_default(),
            last_started.unwrap_or_else(|| "unknown".into()),
            crate::api::START_ANNOTATION
        ),
        Some(StopReason::Halted) => "stopped: runStrategy is Halted".to_string(),
        Some(StopReason::Requested) => format!(
            "stopped on request (annotation {}); set annotation {} to a new value to start it",
            crate::api::STOP_ANNOTATION,
            crate::api::START_ANNOTATION
        ),
        _ if machine.run_strategy == RunStrategy::Manual => format!(
            "stopped; runStrategy Manual leaves it so. Set annotation {} to a new value to start it",
            crate::api::START_ANNOTATION
        ),
        _ => "stopped".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PendingOperation;
    use crate::engine::{PROJECTVM_GRAPH, WORKSPACE_GRAPH};
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 8, 0, 0).unwrap()
    }

    fn machine() -> MachineSpec {
        serde_json::from_value(serde_json::json!({})).unwrap()
    }

    fn report(at: DateTime<Utc>) -> Report {
        Report::new(VmStatus::default(), None, Some(1), at)
    }

    fn cond<'a>(r: &'a Report, t: &str) -> &'a crate::api::Condition {
        conditions::get(&r.status.conditions, t).unwrap_or_else(|| panic!("{t} missing"))
    }

    fn all_true(r: &mut Report, graph: &[StepNode]) {
        r.set(Update::truthy(types::INSTANCE_READY, Reason::Running, "running"));
        for n in graph {
            r.set(Update::truthy(n.condition, Reason::Synced, "done"));
        }
    }

    #[test]
    fn ready_when_every_step_is_true() {
        let mut r = report(t0());
        all_true(&mut r, PROJECTVM_GRAPH);
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert_eq!(cond(&r, types::READY).status, ConditionStatus::True);
        assert_eq!(cond(&r, types::RECONCILING).status, ConditionStatus::False);
        assert_eq!(cond(&r, types::STALLED).status, ConditionStatus::False);
        assert_eq!(r.status.phase, Some(Phase::Ready));
        assert!(r.events.iter().any(|e| e.reason == "Ready"));
        assert_eq!(r.status.observed_generation, Some(1));
    }

    #[test]
    fn terminal_reason_stalls_with_a_warning_and_phase_failed() {
        let mut r = report(t0());
        r.set(Update::truthy(types::INSTANCE_READY, Reason::Running, "running"));
        r.set(Update::truthy(types::PREREQUISITES_INSTALLED, Reason::Installed, "ok"));
        r.set(Update::falsy(types::REPOSITORY_SYNCED, Reason::RepositoryNotFound, "repository x not found"));
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert_eq!(r.status.phase, Some(Phase::Failed));
        let stalled = cond(&r, types::STALLED);
        assert_eq!((stalled.status, stalled.reason.as_str()), (ConditionStatus::True, "RepositoryNotFound"));
        assert!(stalled.message.contains("repository x not found"));
        assert_eq!(cond(&r, types::RECONCILING).status, ConditionStatus::False);
        assert_eq!(cond(&r, types::READY).reason, "RepositoryNotFound");
        assert!(r.events.iter().any(|e| e.type_ == EventType::Warning && e.reason == "RepositoryNotFound"));
    }

    #[test]
    fn transient_reason_is_progress_not_failure() {
        let mut r = report(t0());
        r.set(Update::truthy(types::INSTANCE_READY, Reason::Running, "running"));
        r.set(Update::falsy(types::REPOSITORY_CLONED, Reason::SSHUnavailable, "channel dropped"));
        r.summarize(WORKSPACE_GRAPH, &machine());
        assert_ne!(r.status.phase, Some(Phase::Failed));
        assert_eq!(r.status.phase, Some(Phase::Syncing));
        assert_eq!(cond(&r, types::STALLED).status, ConditionStatus::False);
        assert_eq!(cond(&r, types::RECONCILING).status, ConditionStatus::True);
        assert!(r.events.iter().all(|e| e.type_ != EventType::Warning), "a Warning for a transient reason");
    }

    #[test]
    fn events_fire_once_per_new_reason() {
        let mut r = report(t0());
        r.set(Update::falsy(types::HEALTHY, Reason::Unhealthy, "no answer"));
        r.set(Update::falsy(types::HEALTHY, Reason::Unhealthy, "still no answer"));
        assert_eq!(r.events.len(), 1);
        r.set(Update::falsy(types::HEALTHY, Reason::Waiting, "waiting"));
        assert_eq!(r.events.len(), 1, "waiting is not trouble");
    }

    #[test]
    fn waiting_messages_do_not_reset_the_progress_timer() {
        let mut r = report(t0());
        r.set(Update::truthy(types::INSTANCE_READY, Reason::Running, "running"));
        r.set(Update::falsy(types::PREREQUISITES_INSTALLED, Reason::SSHUnavailable, "booting"));
        r.summarize(PROJECTVM_GRAPH, &machine());
        // Twenty minutes of alternating waiting messages, no real progress.
        let mut status = r.status.clone();
        for minute in 1..=20 {
            let mut next = Report::new(status, None, Some(1), t0() + chrono::Duration::minutes(minute));
            next.progress("Prerequisites", format!("waiting for SSH ({minute})"), None);
            next.summarize(PROJECTVM_GRAPH, &machine());
            status = next.status;
        }
        let ready = conditions::get(&status.conditions, types::READY).unwrap();
        assert_eq!(ready.reason, "StepTimedOut");
        assert!(ready.message.contains("Prerequisites") && ready.message.contains("15m"), "{}", ready.message);
        assert!(ready.message.contains("booting"), "names the last thing seen: {}", ready.message);
        assert_eq!(status.phase, Some(Phase::Failed));
        assert!(conditions::is_true(&status.conditions, types::STALLED));
    }

    #[test]
    fn a_rising_percentage_is_progress() {
        let mut r = report(t0());
        r.progress("Repository", "cloning", Some(10));
        r.status.progress.as_mut().unwrap().last_progress_at = Some(clock::time(t0()));
        let mut later = Report::new(r.status.clone(), None, Some(1), t0() + chrono::Duration::minutes(10));
        later.progress("Repository", "cloning", Some(40));
        assert_eq!(
            later.status.progress.unwrap().last_progress_at,
            Some(clock::time(t0() + chrono::Duration::minutes(10)))
        );
        let mut same = Report::new(r.status.clone(), None, Some(1), t0() + chrono::Duration::minutes(10));
        same.progress("Repository", "cloning", Some(10));
        assert_eq!(same.status.progress.unwrap().last_progress_at, Some(clock::time(t0())));
    }

    #[test]
    fn a_stopped_vm_rests() {
        let mut r = report(t0());
        r.set(Update::falsy(types::INSTANCE_READY, Reason::IdleTimeout, "stopped after idleTimeout"));
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert_eq!(r.status.phase, Some(Phase::Stopped));
        assert_eq!(cond(&r, types::READY).reason, "IdleTimeout");
        assert_eq!(cond(&r, types::RECONCILING).status, ConditionStatus::False);
        assert_eq!(cond(&r, types::STALLED).status, ConditionStatus::False);
    }

    #[test]
    fn a_stop_in_flight_is_stopping_and_a_resize_is_resizing() {
        let mut r = report(t0());
        r.set(Update::falsy(types::INSTANCE_READY, Reason::Stopping, "stopping"));
        r.status.operation =
            Some(PendingOperation { name: "op".into(), kind: OperationKind::Stop, zone: "z".into(), started_at: None });
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert_eq!(r.status.phase, Some(Phase::Stopping));
        r.status.power = Some(crate::api::PowerStatus { resizing_to: Some("e2-small".into()), ..Default::default() });
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert_eq!(r.status.phase, Some(Phase::Resizing));
    }

    #[test]
    fn an_internal_error_stays_on_ready_until_a_terminal_step_reason_says_more() {
        let mut r = report(t0());
        r.set(Update::falsy(types::INSTANCE_READY, Reason::Provisioning, "creating"));
        r.fail(Reason::InternalError, "bug");
        r.summarize(PROJECTVM_GRAPH, &machine());
        assert!(r.events.iter().any(|e| e.type_ == EventType::Warning && e.reason == "InternalError"));
        assert_eq!(cond(&r, types::READY).reason, "InternalError");
        assert!(conditions::is_true(&r.status.conditions, types::STALLED));
    }

    #[test]
    fn paused_shows_in_conditions() {
        let mut r = report(t0());
        r.pause("paused by annotation");
        assert_eq!(cond(&r, types::READY).reason, "Paused");
        assert_eq!(cond(&r, types::RECONCILING).reason, "Paused");
        assert_eq!(cond(&r, types::RECONCILING).status, ConditionStatus::False);
    }

    #[test]
    fn event_notes_are_cut_on_character_boundaries() {
        let mut r = report(t0());
        r.set(Update::falsy(types::PREREQUISITES_INSTALLED, Reason::PrerequisitesFailed, "é".repeat(700)));
        let note = r.events[0].note.as_deref().unwrap();
        assert!(note.len() <= MAX_EVENT_NOTE_BYTES);
    }
}
