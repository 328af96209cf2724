//! One leader (issue 9): two operator processes on one Lease.
//!
//! - A leader frozen with SIGSTOP is replaced within the lease duration; the standby
//!   reconciles new work to Ready; when the frozen one resumes (SIGCONT) with watch events
//!   and timers pending, its log shows no SSH exec, no Compute Engine mutation and no
//!   Kubernetes write before it stands down and exits.
//! - A leader sent SIGTERM releases the Lease: the standby takes over at its next try, far
//!   sooner than the lease duration, and the process exits 0.
//!
//! The bed runs the production lease timings (testbed/bed.sh: 15s / 10s / 2s).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bed::{Bed, OperatorProcess, READY_TIMEOUT, bed, operator_exclusive, record_figure};

const LEASE_NS: &str = "projectvm-system";
const LEASE: &str = "projectvm-operator";

/// What an operator's log says it sent: the lines the e2e treats as work.
const WORK: [&str; 3] = ["ssh exec", "gce mutation", "kubernetes write"];

struct Timings {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

fn seconds(v: Option<&str>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| s.trim_end_matches('s').parse().ok()).unwrap_or(default))
}

/// The timings the bed operator runs with (client-go's defaults when unset).
fn timings(b: &Bed) -> Timings {
    let env = std::fs::read_to_string(b.state.join("operator.env")).unwrap_or_default();
    let get = |k: &str| env.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    Timings {
        lease_duration: seconds(get("PROJECTVM_LEASE_DURATION").as_deref(), 15),
        renew_deadline: seconds(get("PROJECTVM_LEASE_RENEW_DEADLINE").as_deref(), 10),
        retry_period: seconds(get("PROJECTVM_LEASE_RETRY_PERIOD").as_deref(), 2),
    }
}

/// The Lease's holder, `None` when nobody holds it.
fn holder(b: &Bed) -> Option<String> {
    let out = b.kubectl_output(&["-n", LEASE_NS, "get", "lease", LEASE, "-o", "jsonpath={.spec.holderIdentity}"], None);
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !h.is_empty()).then_some(h)
}

/// JSON log lines (the bed logs JSON) of `text`.
fn lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

fn message(l: &Value) -> &str {
    l["message"].as_str().unwrap_or_default()
}

/// The identity in the last "became leader" line.
fn leader_identity(text: &str) -> Option<String> {
    lines(text).iter().rev().find(|l| message(l) == "became leader")?["identity"].as_str().map(String::from)
}

/// The identity of the process that wrote the end of `text` (a log appended to by each
/// process started on it): the last "standing for leader" or "became leader" line (an
/// operator from before this change logs only the latter).
fn current_identity(text: &str) -> Option<String> {
    lines(text).iter().rev().find(|l| matches!(message(l), "standing for leader" | "became leader"))?["identity"]
        .as_str()
        .map(String::from)
}

/// Whether the process runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some(c) if c != 'Z' && c != 'X')
}

fn operator_log_len(b: &Bed) -> usize {
    b.operator_log().len()
}

/// Puts the bed back as the other e2e tests expect it: its own operator running and
/// leading. Never panics (it also runs while a failed test unwinds).
fn hand_back(b: &Bed, standby: Option<&mut OperatorProcess>) {
    let _ = Command::new("kill").args(["-CONT", &b.operator_pid().to_string()]).status();
    let from = operator_log_len(b);
    let _ = Command::new(crate::bed::repo_root().join("testbed/bed.sh"))
        .args(["operator-start", b.state.to_str().unwrap()])
        .output();
    if let Some(p) = standby
        && p.child.try_wait().is_ok_and(|s| s.is_none())
    {
        let _ = Command::new("kill").args(["-TERM", &p.pid().to_string()]).status();
        if p.wait_exit(Duration::from_secs(30)).is_none() {
            let _ = p.child.kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let log = b.operator_log();
        let me = leader_identity(log.get(from..).unwrap_or_default());
        if me.is_some() && me == holder(b) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("warning: the bed operator did not take the lease back within 60s");
}

/// Makes sure the bed operator leads; returns its identity.
fn bed_operator_leads(b: &Bed) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = b.operator_log();
        if let Some(me) = current_identity(&log)
            && alive(b.operator_pid())
            && holder(b).as_deref() == Some(me.as_str())
        {
            return me;
        }
        if Instant::now() > deadline {
            hand_back(b, None);
            let log = b.operator_log();
            let me = current_identity(&log).expect("the bed operator leads after a restart");
            assert_eq!(Some(me.clone()), holder(b), "the bed operator holds the lease");
            return me;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls until the Lease names someone other than `old`; how long that took.
fn wait_takeover(b: &Bed, old: &str, since: Instant, limit: Duration) -> Option<(String, Duration)> {
    let deadline = since + limit;
    while Instant::now() < deadline {
        if let Some(h) = holder(b).filter(|h| h != old) {
            return Some((h, since.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A ProjectVM whose prerequisites script takes `seconds`: a step task in flight.
fn pvm(name: &str, seconds: u32) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n  prerequisites:\n    packages: [git]\n    script: |\n      sleep {seconds}\n"
    )
}

/// Runs `test`, then hands the bed back whatever happened.
fn with_standby(b: &Bed, name: &str, test: impl FnOnce(&mut OperatorProcess)) {
    let mut standby = b.spawn_operator(name, &[]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&mut standby)));
    hand_back(b, Some(&mut standby));
    if let Err(p) = result {
        eprintln!("standby log tail:\n{}", tail(&standby.log_text(), 40));
        std::panic::resume_unwind(p);
    }
}

fn tail(text: &str, n: usize) -> String {
    let l: Vec<&str> = text.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_paused_leader_is_replaced_and_does_no_work_when_it_resumes() {
    let _guard = operator_exclusive();
    let b = bed();
    let t = timings(b);
    let ns = b.namespace("e2e-leader");
    let old = bed_operator_leads(b);
    with_standby(b, "leader-standby", |standby| {
        // The standby follows; the bed operator still leads.
        std::thread::sleep(t.retry_period * 2);
        assert_eq!(holder(b).as_deref(), Some(old.as_str()), "the bed operator still leads");
        assert!(standby.child.try_wait().unwrap().is_none(), "the standby runs:\n{}", standby.log_text());

        // The leader is busy: a VM whose prerequisites script runs as a step task.
        b.apply(&ns, &pvm("busy", 12));
        b.eventually("the leader to run the prerequisites step", READY_TIMEOUT, || {
            let o = b.get(&ns, "pvm", "busy");
            let up = Bed::condition(&o, "InstanceReady").is_some_and(|c| c["status"] == "True");
            (up && o.pointer("/status/progress/step").and_then(Value::as_str) == Some("Prerequisites")).then_some(())
        });
        std::thread::sleep(Duration::from_secs(2));
        let old_pid = b.operator_pid();
        b.operator_signal("STOP");
        let stopped = Instant::now();
        let mut problems = Vec::new();
        let before = lines(&b.operator_log());
        if !before.iter().any(|l| message(l) == "ssh exec") {
            problems.push("the leader had not started any SSH work before it was stopped".into());
        }
        // More for the frozen leader to find when it resumes: a watch event now, its step
        // task's answer and requeue timers due, and the new leader's changes.
        b.apply(&ns, &pvm("handover", 1));
        let (new, took) = wait_takeover(b, &old, stopped, Duration::from_secs(90))
            .unwrap_or_else(|| panic!("nobody took over within 90s\n{}", tail(&standby.log_text(), 40)));
        record_figure(&format!(
            "leader: standby took over {:.1}s after the leader was SIGSTOPped (lease duration {:?})",
            took.as_secs_f64(),
            t.lease_duration
        ));
        // The standby sees the last record up to a retry period late and tries once per
        // retry period after it ran out.
        if took > t.lease_duration + t.retry_period * 2 + Duration::from_secs(1) {
            problems.push(format!(
                "takeover took {took:?}, more than the lease duration {:?} plus two retry periods",
                t.lease_duration
            ));
        }
        if leader_identity(&standby.log_text()).as_deref() != Some(new.as_str()) {
            problems.push(format!("the lease names {new}, not the standby"));
        }
        b.wait_condition(&ns, "pvm", "handover", "Ready", READY_TIMEOUT);
        b.wait_condition(&ns, "pvm", "busy", "Ready", READY_TIMEOUT);

        // Resume the old leader, with its watch events and timers due at once.
        let from = operator_log_len(b);
        b.operator_signal("CONT");
        let resumed = Instant::now();
        let bound = t.renew_deadline + Duration::from_secs(2);
        while alive(old_pid) && resumed.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let gone = resumed.elapsed();
        let after = b.operator_log().get(from..).unwrap_or_default().to_string();
        if alive(old_pid) {
            problems.push("the resumed leader still runs 30s after SIGCONT".into());
        } else {
            record_figure(&format!("leader: the resumed old leader exited {:.2}s after SIGCONT", gone.as_secs_f64()));
            if gone > bound {
                problems.push(format!("the resumed leader took {gone:?} to exit (bound {bound:?})"));
            }
        }
        let log = lines(&after);
        let work: Vec<&Value> = log.iter().filter(|l| WORK.contains(&message(l))).collect();
        if !work.is_empty() {
            problems.push(format!(
                "the resumed leader acted after SIGCONT:\n{}",
                work.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
            ));
        }
        let refused = log.iter().filter(|l| message(l).starts_with("not leading")).count();
        eprintln!("resumed leader: {} log lines, {refused} refused by the fence, {} work", log.len(), work.len());
        if !log.iter().any(|l| message(l) == "lost leadership") {
            problems.push(format!("the resumed leader did not log that it lost leadership:\n{after}"));
        }
        // The new leader is undisturbed.
        assert_eq!(holder(b).as_deref(), Some(new.as_str()));
        for name in ["busy", "handover"] {
            let o = b.get(&ns, "pvm", name);
            assert_eq!(Bed::condition(&o, "Ready").unwrap()["status"], "True", "{o}");
        }
        assert!(problems.is_empty(), "{}\nresumed leader's log:\n{}", problems.join("\n"), tail(&after, 60));
    });
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_leader_stopped_with_sigterm_releases_the_lease_at_once() {
    let _guard = operator_exclusive();
    let b = bed();
    let t = timings(b);
    let old = bed_operator_leads(b);
    with_standby(b, "leader-standby-term", |standby| {
        std::thread::sleep(t.retry_period * 2);
        assert_eq!(holder(b).as_deref(), Some(old.as_str()), "the bed operator still leads");
        let old_pid = b.operator_pid();
        let from = operator_log_len(b);
        b.operator_signal("TERM");
        let sent = Instant::now();
        let quick = t.lease_duration / 2;
        let (new, took) = wait_takeover(b, &old, sent, Duration::from_secs(60)).expect("someone takes over");
        record_figure(&format!(
            "leader: standby took over {:.1}s after SIGTERM to the leader (lease duration {:?})",
            took.as_secs_f64(),
            t.lease_duration
        ));
        let mut problems = Vec::new();
        if took >= quick {
            problems.push(format!("takeover after SIGTERM took {took:?}: the lease was not released"));
        }
        if leader_identity(&standby.log_text()).as_deref() != Some(new.as_str()) {
            problems.push(format!("the lease names {new}, not the standby"));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(old_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(old_pid) {
            problems.push("the old leader still runs 30s after SIGTERM".into());
        }
        let after = b.operator_log().get(from..).unwrap_or_default().to_string();
        if !lines(&after).iter().any(|l| message(l) == "released the lease") {
            problems.push("the old leader did not log that it released the lease".into());
        }

        // And back: the bed's own operator stands by, the standby (now leading) gets SIGTERM.
        let from = operator_log_len(b);
        b.operator_restart();
        std::thread::sleep(t.retry_period * 2);
        standby.signal("TERM");
        let sent = Instant::now();
        let back = wait_takeover(b, &new, sent, Duration::from_secs(60));
        let status = standby.wait_exit(Duration::from_secs(30));
        match back {
            Some((h, took)) => {
                record_figure(&format!(
                    "leader: the bed operator took the lease back {:.1}s after SIGTERM to the standby",
                    took.as_secs_f64()
                ));
                if took >= quick {
                    problems.push(format!("handing back took {took:?}: the standby did not release"));
                }
                if leader_identity(b.operator_log().get(from..).unwrap_or_default()).as_deref() != Some(h.as_str()) {
                    problems.push(format!("the lease names {h}, not the restarted bed operator"));
                }
            }
            None => problems.push("nobody took the lease back from the standby".into()),
        }
        match status {
            Some(s) if s.success() => {}
            other => problems.push(format!("the standby exited with {other:?} on SIGTERM, not 0")),
        }
        assert!(
            problems.is_empty(),
            "{}\nold leader's log:\n{}\nstandby's log:\n{}",
            problems.join("\n"),
            tail(&after, 40),
            tail(&standby.log_text(), 40)
        );
    });
}
