//! A Run's status, built purely: the phase with its conditions (kstatus included), and the
//! events a change of phase or reason deserves.

use chrono::{DateTime, Utc};
use kube::runtime::events::{Event, EventType};

use crate::api::{ConditionStatus, RunPhase, RunStatus};
use crate::clock;
use crate::conditions::{self, Reason, Update, types};

/// The status being built in one reconcile, and what to tell about it.
pub struct RunReport {
    pub status: RunStatus,
    pub generation: Option<i64>,
    pub now: DateTime<Utc>,
}

impl RunReport {
    pub fn new(status: RunStatus, generation: Option<i64>, now: DateTime<Utc>) -> Self {
        Self { status, generation, now }
    }

    fn set(&mut self, update: Update) {
        conditions::set(&mut self.status.conditions, update, self.generation, self.now);
    }

    fn headline(&mut self, reason: Reason, message: &str) {
        self.status.reason = Some(reason.as_str().to_string());
        self.status.message = Some(crate::text::clip(message, conditions::MAX_MESSAGE_BYTES));
    }

    /// Not launched yet: waiting (Pending, Queued) or starting the VM.
    pub fn waiting(&mut self, phase: RunPhase, reason: Reason, message: &str) {
        self.status.phase = Some(phase);
        self.set(Update::falsy(types::STARTED, reason, message));
        self.headline(reason, message);
    }

    /// Launched on the VM.
    pub fn running(&mut self, message: &str) {
        self.status.phase = Some(RunPhase::Running);
        self.set(Update::truthy(types::STARTED, Reason::Launched, message));
        self.status.reason = None;
        self.status.message = Some(crate::text::clip(message, conditions::MAX_MESSAGE_BYTES));
    }

    /// Launched, but the VM cannot be read right now (transient).
    pub fn unobserved(&mut self, message: &str) {
        self.status.message = Some(crate::text::clip(message, conditions::MAX_MESSAGE_BYTES));
    }

    /// The work ended (or never could start): `phase` is a finished one.
    pub fn finished(&mut self, phase: RunPhase, reason: Reason, message: &str, ended: DateTime<Utc>) {
        self.status.phase = Some(phase);
        if self.status.completion_time.is_none() {
            self.status.completion_time = Some(clock::time(ended));
        }
        if let (Some(start), Some(end)) = (&self.status.start_time, &self.status.completion_time) {
            self.status.duration =
                Some(clock::humanize(clock::elapsed(clock::from_time(end), clock::from_time(start))));
        }
        if self.status.start_time.is_none() {
            self.set(Update::falsy(types::STARTED, reason, message));
        }
        if phase == RunPhase::Succeeded {
            self.set(Update::truthy(types::COMPLETE, Reason::Succeeded, message));
            self.set(Update::falsy(types::FAILED, Reason::Succeeded, "the work succeeded"));
        } else {
            self.set(Update::falsy(types::COMPLETE, reason, message));
            self.set(Update::truthy(types::FAILED, reason, message));
        }
        self.headline(reason, message);
    }

    /// Where the log and artifacts stand.
    pub fn artifacts(&mut self, status: ConditionStatus, reason: Reason, message: &str) {
        self.set(Update::new(types::ARTIFACTS_UPLOADED, status, reason, message));
    }

    /// Whether the artifacts need nothing more: uploaded, not configured, or refused for
    /// good (too large). A failed upload is retried.
    pub fn artifacts_settled(&self) -> bool {
        match conditions::get(&self.status.conditions, types::ARTIFACTS_UPLOADED) {
            Some(c) if c.status == ConditionStatus::True => true,
            Some(c) => matches!(Reason::parse(&c.reason), Some(Reason::NotConfigured | Reason::ArtifactsTooLarge)),
            None => false,
        }
    }

    /// The kstatus conditions, from the phase: Reconciling while work is pending (the work,
    /// or copying its artifacts), Stalled when a reason that needs a person holds it.
    pub fn summarize(&mut self) {
        let phase = self.status.phase.unwrap_or_default();
        let headline = self.status.reason.as_deref().and_then(Reason::parse);
        let artifact_trouble = conditions::get(&self.status.conditions, types::ARTIFACTS_UPLOADED)
            .filter(|c| c.status == ConditionStatus::False)
            .and_then(|c| Reason::parse(&c.reason))
            .filter(|r| r.is_terminal());
        let stalled = match (phase.finished(), headline, artifact_trouble) {
            (_, _, Some(r)) => Some(r),
            (true, Some(r), _) if phase != RunPhase::Succeeded && r.is_terminal() => Some(r),
            (false, Some(r), _) if r.is_terminal() => Some(r),
            _ => None,
        };
        let message = self.status.message.clone().unwrap_or_default();
        match stalled {
            Some(r) => {
                let m = match artifact_trouble {
                    Some(_) => conditions::get(&self.status.conditions, types::ARTIFACTS_UPLOADED)
                        .map(|c| c.message.clone())
                        .unwrap_or_default(),
                    None => message.clone(),
                };
                self.set(Update::truthy(types::STALLED, r, m));
            }
            None => self.set(Update::falsy(types::STALLED, Reason::InProgress, "")),
        }
        let pending = !phase.finished() || (!self.artifacts_settled() && artifact_trouble.is_none());
        if pending && stalled.is_none() {
            let r = headline.unwrap_or(if phase.finished() { Reason::Uploading } else { Reason::InProgress });
            self.set(Update::truthy(types::RECONCILING, r, message));
        } else {
            self.set(Update::falsy(types::RECONCILING, Reason::Ready, ""));
        }
        self.status.observed_generation = self.generation;
    }
}

/// Events for what changed between two statuses: one per new phase, and one per new
/// trouble reason (Warning), so a person sees each step once, not on every pass.
pub fn events(before: &RunStatus, after: &RunStatus) -> Vec<Event> {
    let mut out = Vec::new();
    let note = |s: &RunStatus| s.message.clone().map(|m| crate::text::clip(&m, 1024));
    let changed = before.phase != after.phase || before.reason != after.reason;
    if changed && let Some(phase) = after.phase {
        let reason = after.reason.clone().unwrap_or_else(|| format!("{phase:?}"));
        let trouble = Reason::parse(&reason).is_some_and(Reason::is_trouble)
            || matches!(phase, RunPhase::Failed | RunPhase::TimedOut);
        out.push(Event {
            type_: if trouble { EventType::Warning } else { EventType::Normal },
            reason,
            note: note(after),
            action: format!("{phase:?}"),
            secondary: None,
        });
    }
    let artifact = |s: &RunStatus| {
        conditions::get(&s.conditions, types::ARTIFACTS_UPLOADED)
            .map(|c| (c.status, c.reason.clone(), c.message.clone()))
    };
    if let Some((status, reason, message)) = artifact(after)
        && artifact(before).map(|(s, r, _)| (s, r)) != Some((status, reason.clone()))
    {
        let trouble = Reason::parse(&reason).is_some_and(Reason::is_trouble);
        out.push(Event {
            type_: if trouble { EventType::Warning } else { EventType::Normal },
            reason,
            note: Some(crate::text::clip(&message, 1024)),
            action: "Artifacts".into(),
            secondary: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn cond<'a>(s: &'a RunStatus, t: &str) -> &'a crate::api::Condition {
        conditions::get(&s.conditions, t).unwrap()
    }

    #[test]
    fn a_queued_run_is_reconciling_and_a_failed_one_stalled() {
        let mut r = RunReport::new(RunStatus::default(), Some(1), now());
        r.waiting(RunPhase::Queued, Reason::Queued, "queued behind a");
        r.summarize();
        assert_eq!(cond(&r.status, types::RECONCILING).status, ConditionStatus::True);
        assert_eq!(cond(&r.status, types::STALLED).status, ConditionStatus::False);
        let before = r.status.clone();
        r.status.start_time = Some(clock::time(now()));
        r.running("running");
        r.finished(RunPhase::Failed, Reason::Failed, "exit code 3", now() + chrono::Duration::seconds(75));
        r.artifacts(ConditionStatus::True, Reason::Uploaded, "2 files");
        r.summarize();
        assert_eq!(r.status.duration.as_deref(), Some("1m15s"));
        assert_eq!(cond(&r.status, types::FAILED).status, ConditionStatus::True);
        assert_eq!(cond(&r.status, types::COMPLETE).status, ConditionStatus::False);
        assert_eq!(cond(&r.status, types::STALLED).reason, "Failed");
        assert_eq!(cond(&r.status, types::RECONCILING).status, ConditionStatus::False);
        let ev = events(&before, &r.status);
        assert!(ev.iter().any(|e| e.reason == "Failed" && e.type_ == EventType::Warning));
        assert!(ev.iter().any(|e| e.reason == "Uploaded" && e.type_ == EventType::Normal));
        assert!(events(&r.status, &r.status).is_empty(), "nothing changed, nothing told");
    }

    #[test]
    fn success_waits_for_its_artifacts_and_a_refused_upload_stalls() {
        let mut r = RunReport::new(RunStatus::default(), None, now());
        r.status.start_time = Some(clock::time(now()));
        r.finished(RunPhase::Succeeded, Reason::Succeeded, "exit code 0", now());
        r.artifacts(ConditionStatus::False, Reason::Uploading, "copying");
        r.summarize();
        assert_eq!(cond(&r.status, types::COMPLETE).status, ConditionStatus::True);
        assert_eq!(cond(&r.status, types::RECONCILING).status, ConditionStatus::True);
        r.artifacts(ConditionStatus::False, Reason::ArtifactUploadFailed, "bucket b: storage.objects.create denied");
        r.summarize();
        assert_eq!(cond(&r.status, types::STALLED).reason, "ArtifactUploadFailed");
        assert!(cond(&r.status, types::STALLED).message.contains("storage.objects.create"));
        assert!(!r.artifacts_settled(), "a refused upload is retried");
        r.artifacts(ConditionStatus::False, Reason::NotConfigured, "no bucket");
        r.summarize();
        assert!(r.artifacts_settled());
        assert_eq!(cond(&r.status, types::STALLED).status, ConditionStatus::False);
        assert_eq!(cond(&r.status, types::RECONCILING).status, ConditionStatus::False);
    }
}
