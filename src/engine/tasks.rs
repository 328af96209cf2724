//! Tracked background tasks for long steps (SSH work on the VM). A reconcile never waits
//! for one: it starts the task, returns, and is woken when the task reports progress
//! (throttled) or finishes. The number of tasks running at once is bounded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::Semaphore;

use super::{StepId, TaskView, backoff};
use crate::clock::humanize;
use crate::conditions::Reason;

/// The result of a step's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutcome {
    pub success: bool,
    /// Condition reason.
    pub reason: Reason,
    /// Condition message; never contains secrets.
    pub message: String,
    /// Values the step produced, e.g. the commit checked out.
    pub outputs: HashMap<String, String>,
}

impl TaskOutcome {
    pub fn ok(reason: Reason, message: impl Into<String>) -> Self {
        Self { success: true, reason, message: message.into(), outputs: HashMap::new() }
    }
    pub fn failed(reason: Reason, message: impl Into<String>) -> Self {
        Self { success: false, reason, message: message.into(), outputs: HashMap::new() }
    }
    pub fn with_output(mut self, key: &str, value: impl Into<String>) -> Self {
        self.outputs.insert(key.into(), value.into());
        self
    }
}

/// Progress a running task reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressInfo {
    pub percent: Option<i32>,
    pub message: String,
}

enum State {
    Running { progress: Arc<Mutex<ProgressInfo>>, abort: tokio::task::AbortHandle },
    Finished(TaskOutcome),
    BackingOff { until: Instant },
}

struct Entry {
    fingerprint: String,
    state: State,
    /// Consecutive failures for this fingerprint.
    failures: u32,
}

type Key = (String, StepId);

/// How long past its limit a task may run before it is dropped (at most; half the limit
/// for short limits).
const BACKSTOP_GRACE: Duration = Duration::from_secs(30);

/// Wakes the owning object's reconcile.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The registry of step tasks, shared by both controllers.
#[derive(Clone)]
pub struct TaskRegistry {
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
    permits: Arc<Semaphore>,
}

/// Handed to a task so it can report progress; wakes the reconcile at most every
/// [`ProgressReporter::THROTTLE`].
#[derive(Clone)]
pub struct ProgressReporter {
    progress: Arc<Mutex<ProgressInfo>>,
    wake: Wake,
    last_wake: Arc<Mutex<Option<Instant>>>,
}

impl ProgressReporter {
    pub const THROTTLE: Duration = Duration::from_secs(2);

    pub fn report(&self, percent: Option<i32>, message: impl Into<String>) {
        let message = message.into();
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.percent == percent && p.message == message {
                return;
            }
            p.percent = percent;
            p.message = message;
        }
        let mut last = self.last_wake.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Self::THROTTLE) {
            *last = Some(Instant::now());
            (self.wake)();
        }
    }
}

impl TaskRegistry {
    pub fn new(max_concurrent: usize) -> Self {
        Self { entries: Arc::new(Mutex::new(HashMap::new())), permits: Arc::new(Semaphore::new(max_concurrent.max(1))) }
    }

    /// How the planner sees this step's task.
    pub fn view(&self, object: &str, step: StepId) -> TaskView {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&(object.to_string(), step)) {
            None => TaskView::Idle,
            Some(e) => match &e.state {
                State::Running { .. } => TaskView::Running { fingerprint: e.fingerprint.clone() },
                State::Finished(o) => TaskView::Finished { fingerprint: e.fingerprint.clone(), success: o.success },
                State::BackingOff { until } => {
                    TaskView::BackingOff { fingerprint: e.fingerprint.clone(), ready: Instant::now() >= *until }
                }
            },
        }
    }

    /// Progress of a running task.
    pub fn progress(&self, object: &str, step: StepId) -> Option<ProgressInfo> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match &entries.get(&(object.to_string(), step))?.state {
            State::Running { progress, .. } => Some(progress.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            _ => None,
        }
    }

    /// Time until a backing-off step may retry.
    pub fn retry_in(&self, object: &str, step: StepId) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match &entries.get(&(object.to_string(), step))?.state {
            State::BackingOff { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        }
    }

    /// Starts the step's action in the background, bounded by `limit`. Does nothing when a
    /// task for this step is already running.
    pub fn spawn<F, Fut>(&self, object: &str, step: StepId, fingerprint: &str, limit: Duration, wake: Wake, action: F)
    where
        F: FnOnce(ProgressReporter) -> Fut + Send + 'static,
        Fut: Future<Output = TaskOutcome> + Send + 'static,
    {
        let key = (object.to_string(), step);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let failures = match entries.get(&key) {
            Some(Entry { state: State::Running { .. }, .. }) => return,
            Some(e) if e.fingerprint == fingerprint => e.failures,
            _ => 0,
        };
        let progress = Arc::new(Mutex::new(ProgressInfo { percent: None, message: "queued".into() }));
        let reporter =
            ProgressReporter { progress: progress.clone(), wake: wake.clone(), last_wake: Arc::new(Mutex::new(None)) };
        let permits = self.permits.clone();
        let registry = self.entries.clone();
        let task_key = key.clone();
        let fp = fingerprint.to_string();
        let handle = tokio::spawn(async move {
            let outcome = match permits.acquire_owned().await {
                Ok(_permit) => {
                    reporter.report(None, "started");
                    // A panic in a step is that step's failure, never a task stuck "running".
                    let guarded = std::panic::AssertUnwindSafe(action(reporter)).catch_unwind();
                    // A backstop only: the step bounds its commands on the VM by `limit`
                    // and reports that itself, a little before this fires.
                    match tokio::time::timeout(limit + (limit / 2).min(BACKSTOP_GRACE), guarded).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(panic)) => TaskOutcome::failed(
                            Reason::InternalError,
                            format!(
                                "step {} failed inside the operator: {}",
                                task_key.1.name(),
                                crate::text::panic_message(&*panic)
                            ),
                        ),
                        Err(_) => TaskOutcome::failed(
                            Reason::StepTimedOut,
                            format!("step {} did not finish within {}", task_key.1.name(), humanize(limit)),
                        ),
                    }
                }
                Err(_) => TaskOutcome::failed(Reason::Shutdown, "operator is shutting down"),
            };
            {
                let mut entries = registry.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = entries.get_mut(&task_key)
                    && e.fingerprint == fp
                {
                    e.state = State::Finished(outcome);
                }
            }
            wake();
        });
        entries.insert(
            key,
            Entry {
                fingerprint: fingerprint.to_string(),
                state: State::Running { progress, abort: handle.abort_handle() },
                failures,
            },
        );
    }

    /// Takes a finished task's result. A failure leaves the step backing off (capped
    /// exponential in the number of consecutive failures for the same inputs).
    pub fn take_finished(&self, object: &str, step: StepId) -> Option<(String, TaskOutcome)> {
        let key = (object.to_string(), step);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get_mut(&key)?;
        let State::Finished(outcome) = &entry.state else {
            return None;
        };
        let outcome = outcome.clone();
        let fingerprint = entry.fingerprint.clone();
        if outcome.success {
            entries.remove(&key);
        } else {
            let delay = backoff(entry.failures);
            entry.failures += 1;
            entry.state = State::BackingOff { until: Instant::now() + delay };
        }
        Some((fingerprint, outcome))
    }

    /// Aborts and forgets every task of an object (it was deleted or its instance replaced).
    pub fn forget(&self, object: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(o, _), e| {
            if o != object {
                return true;
            }
            if let State::Running { abort, .. } = &e.state {
                abort.abort();
            }
            false
        });
    }

    /// Aborts every running task (this replica stopped leading or is shutting down).
    pub fn abort_all(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries.values() {
            if let State::Running { abort, .. } = &e.state {
                abort.abort();
            }
        }
        entries.clear();
    }

    /// Number of tasks currently running (for metrics).
    pub fn running(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().filter(|e| matches!(e.state, State::Running { .. })).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter_wake() -> (Wake, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        (
            Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
            n,
        )
    }

    async fn wait_finished(r: &TaskRegistry, step: StepId) {
        for _ in 0..200 {
            if matches!(r.view("o", step), TaskView::Finished { .. }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("task did not finish");
    }

    #[tokio::test]
    async fn task_runs_reports_and_finishes() {
        let r = TaskRegistry::new(2);
        let (wake, woken) = counter_wake();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        r.spawn("o", StepId::Repository, "fp", Duration::from_secs(5), wake, |p| async move {
            p.report(Some(50), "cloning");
            let _ = rx.await;
            TaskOutcome::ok(Reason::Synced, "done").with_output("commit", "abc")
        });
        assert_eq!(r.view("o", StepId::Repository), TaskView::Running { fingerprint: "fp".into() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(r.progress("o", StepId::Repository).unwrap().percent, Some(50));
        // a second spawn while running is ignored
        r.spawn("o", StepId::Repository, "fp2", Duration::from_secs(5), Arc::new(|| {}), |_| async {
            TaskOutcome::ok(Reason::Installed, "")
        });
        tx.send(()).unwrap();
        wait_finished(&r, StepId::Repository).await;
        let (fp, out) = r.take_finished("o", StepId::Repository).unwrap();
        assert_eq!(fp, "fp");
        assert_eq!(out.outputs["commit"], "abc");
        assert_eq!(r.view("o", StepId::Repository), TaskView::Idle);
        assert!(woken.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn timeout_reports_step_timed_out_and_backs_off() {
        let r = TaskRegistry::new(1);
        r.spawn("o", StepId::Prerequisites, "fp", Duration::from_millis(20), Arc::new(|| {}), |_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            TaskOutcome::ok(Reason::Installed, "")
        });
        wait_finished(&r, StepId::Prerequisites).await;
        let (_, out) = r.take_finished("o", StepId::Prerequisites).unwrap();
        assert!(!out.success);
        assert_eq!(out.reason, Reason::StepTimedOut);
        assert!(out.message.contains("Prerequisites"), "{}", out.message);
        assert_eq!(r.view("o", StepId::Prerequisites), TaskView::BackingOff { fingerprint: "fp".into(), ready: false });
        assert!(r.retry_in("o", StepId::Prerequisites).unwrap() <= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let r = TaskRegistry::new(1);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        r.spawn("a", StepId::Repository, "fp", Duration::from_secs(5), Arc::new(|| {}), |_| async move {
            let _ = rx.await;
            TaskOutcome::ok(Reason::Installed, "")
        });
        r.spawn("b", StepId::Repository, "fp", Duration::from_secs(5), Arc::new(|| {}), |p| async move {
            p.report(None, "second running");
            TaskOutcome::ok(Reason::Installed, "")
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(r.progress("b", StepId::Repository).unwrap().message, "queued");
        tx.send(()).unwrap();
        for _ in 0..200 {
            if matches!(r.view("b", StepId::Repository), TaskView::Finished { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(r.view("b", StepId::Repository), TaskView::Finished { .. }));
    }

    #[tokio::test]
    async fn forget_aborts() {
        let r = TaskRegistry::new(1);
        r.spawn("o", StepId::Repository, "fp", Duration::from_secs(5), Arc::new(|| {}), |_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            TaskOutcome::ok(Reason::Installed, "")
        });
        assert_eq!(r.running(), 1);
        r.forget("o");
        assert_eq!(r.running(), 0);
        assert_eq!(r.view("o", StepId::Repository), TaskView::Idle);
    }

    #[tokio::test]
    async fn abort_all_stops_every_task() {
        let r = TaskRegistry::new(4);
        let (done, seen) = tokio::sync::oneshot::channel::<()>();
        let guard = Arc::new(Mutex::new(Some(done)));
        for o in ["a", "b"] {
            let g = guard.clone();
            r.spawn(o, StepId::Repository, "fp", Duration::from_secs(5), Arc::new(|| {}), move |_| async move {
                // Dropped (not run to the end) when aborted.
                struct OnDrop(Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);
                impl Drop for OnDrop {
                    fn drop(&mut self) {
                        if let Some(tx) = self.0.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let _d = OnDrop(g);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                TaskOutcome::ok(Reason::Installed, "")
            });
        }
        tokio::task::yield_now().await;
        assert_eq!(r.running(), 2);
        r.abort_all();
        assert_eq!(r.running(), 0);
        tokio::time::timeout(Duration::from_secs(5), seen).await.expect("an aborted task is dropped").ok();
        assert_eq!(r.view("a", StepId::Repository), TaskView::Idle);
    }
}
