//! Lifecycle: power, resize, idle shutdown, cost, token refresh, deletion policies, pause
//! and the progress timeout — each observed on real machines through the emulator.

use std::time::Duration;

use crate::bed::{Bed, READY_TIMEOUT, bed, epoch_seconds, operator_exclusive, operator_shared, record_figure};

fn pvm(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\nspec:\n{extra}  repository:\n    url: https://git.pvm.test/public/demo.git\n  prerequisites:\n    packages: []\n"
    )
}

fn instance_status(b: &Bed, uid: &str) -> String {
    let list = b.instances_of(uid);
    assert_eq!(list.len(), 1, "expected one instance, got {list:?}");
    let i = &list[0];
    i.pointer("/instance/status").or_else(|| i.get("status")).and_then(|s| s.as_str()).unwrap_or("").to_string()
}

fn uid(b: &Bed, ns: &str, kind: &str, name: &str) -> String {
    b.get(ns, kind, name)["metadata"]["uid"].as_str().unwrap().to_string()
}

fn wait_phase(b: &Bed, ns: &str, name: &str, phase: &str, timeout: Duration) -> serde_json::Value {
    b.eventually(&format!("{name} phase {phase}"), timeout, || {
        let o = b.get(ns, "pvm", name);
        (o["status"]["phase"] == phase).then_some(o)
    })
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn run_strategies_and_waking_a_manual_vm() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-power");
    b.apply(&ns, &pvm("power", "  runStrategy: Halted\n"));
    let o = wait_phase(b, &ns, "power", "Stopped", READY_TIMEOUT);
    let id = uid(b, &ns, "pvm", "power");
    assert_eq!(instance_status(b, &id), "TERMINATED");
    assert_eq!(Bed::condition(&o, "Ready").unwrap()["status"], "False");

    // Always: starts, and a stop from inside the guest is undone.
    b.kubectl(&["-n", &ns, "patch", "pvm", "power", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Always"}}"#]);
    b.wait_condition(&ns, "pvm", "power", "Ready", READY_TIMEOUT);
    let _ = b.ssh(&ns, "pvm", "power", "sudo systemctl poweroff");
    b.eventually("the guest poweroff to be seen", Duration::from_secs(60), || {
        b.event_reasons(&ns, Some("power")).iter().any(|r| r == "Starting").then_some(())
    });
    b.wait_condition(&ns, "pvm", "power", "Ready", READY_TIMEOUT);

    // Manual: a stop inside the guest is respected ...
    b.kubectl(&["-n", &ns, "patch", "pvm", "power", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Manual"}}"#]);
    let _ = b.ssh(&ns, "pvm", "power", "sudo systemctl poweroff");
    wait_phase(b, &ns, "power", "Stopped", Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(instance_status(b, &id), "TERMINATED", "Manual must not restart the VM");
    // ... and the annotation wakes it once, acknowledged in status.
    b.kubectl(&["-n", &ns, "annotate", "pvm", "power", "projectvm.dev/start-requested=wake-1", "--overwrite"]);
    b.wait_condition(&ns, "pvm", "power", "Ready", READY_TIMEOUT);
    let o = b.get(&ns, "pvm", "power");
    assert_eq!(o["status"]["power"]["acknowledgedStartRequest"], "wake-1");
    b.kubectl(&["-n", &ns, "delete", "pvm", "power", "--timeout=180s"]);
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn resize_restores_the_previous_power_state() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-resize");
    b.apply(&ns, &pvm("grow", "  size: small\n"));
    b.wait_condition(&ns, "pvm", "grow", "Ready", READY_TIMEOUT);
    let before = b.get(&ns, "pvm", "grow");
    let id = before["status"]["instance"]["id"].clone();
    b.kubectl(&["-n", &ns, "patch", "pvm", "grow", "--type=merge", "-p", r#"{"spec":{"size":"large"}}"#]);
    let after = b.eventually("the resize", READY_TIMEOUT, || {
        let o = b.get(&ns, "pvm", "grow");
        (o["status"]["instance"]["machineType"] == "e2-standard-4"
            && Bed::condition(&o, "Ready").is_some_and(|c| c["status"] == "True"))
        .then_some(o)
    });
    assert_eq!(after["status"]["instance"]["id"], id, "resize keeps the instance");
    assert_eq!(after["status"]["instance"]["status"], "RUNNING", "running before, running after");
    let events = b.event_reasons(&ns, Some("grow"));
    assert!(events.iter().any(|r| r == "Resizing") && events.iter().any(|r| r == "Resized"), "{events:?}");

    // A stopped VM stays stopped through a resize.
    b.kubectl(&["-n", &ns, "patch", "pvm", "grow", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]);
    wait_phase(b, &ns, "grow", "Stopped", READY_TIMEOUT);
    b.kubectl(&["-n", &ns, "patch", "pvm", "grow", "--type=merge", "-p", r#"{"spec":{"size":"small"}}"#]);
    let o = b.eventually("the stopped resize", READY_TIMEOUT, || {
        let o = b.get(&ns, "pvm", "grow");
        (o["status"]["instance"]["machineType"] == "e2-small").then_some(o)
    });
    assert_eq!(o["status"]["instance"]["status"], "TERMINATED");
    // And with nothing changed, no stop/start loop: the instance stays put.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(b.get(&ns, "pvm", "grow")["status"]["instance"]["status"], "TERMINATED");
    b.kubectl(&["-n", &ns, "delete", "pvm", "grow", "--timeout=180s"]);
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn max_running_time_stops_a_vm_in_use_and_a_start_request_starts_it_again() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-max-running");
    b.apply(&ns, &pvm("capped", "  runStrategy: Manual\n  maxRunningTime: 1m\n"));
    b.wait_condition(&ns, "pvm", "capped", "Ready", READY_TIMEOUT);
    let first_started = epoch_seconds(b.get(&ns, "pvm", "capped")["status"]["lastStartedAt"].as_str().unwrap());
    // Someone is at work: the guardrail stops it anyway.
    let (code, _) = b.ssh(&ns, "pvm", "capped", "nohup sleep 900 >/dev/null 2>&1 & echo started");
    assert_eq!(code, 0);
    let o = wait_phase(b, &ns, "capped", "Stopped", Duration::from_secs(180));
    let ready = Bed::condition(&o, "Ready").unwrap();
    assert_eq!(ready["reason"], "RunningTimeout", "{ready}");
    let message = Bed::condition(&o, "InstanceReady").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("maxRunningTime 1m") && message.contains("running since"), "{message}");
    assert!(b.event_reasons(&ns, Some("capped")).iter().any(|r| r == "RunningTimeout"));
    let uid = o["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(instance_status(b, &uid), "TERMINATED");
    // The start-request annotation starts it for another period.
    b.kubectl(&["-n", &ns, "annotate", "pvm", "capped", "projectvm.dev/start-requested=again", "--overwrite"]);
    b.wait_condition(&ns, "pvm", "capped", "Ready", READY_TIMEOUT);
    let again = epoch_seconds(b.get(&ns, "pvm", "capped")["status"]["lastStartedAt"].as_str().unwrap());
    assert!(again > first_started + 50.0, "a new running period: {first_started} then {again}");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn idle_vm_is_stopped_and_an_active_one_is_not() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-idle");
    b.apply(&ns, &pvm("busy", "  runStrategy: Manual\n  idleTimeout: 1m\n"));
    b.apply(&ns, &pvm("idle", "  runStrategy: Manual\n  idleTimeout: 1m\n"));
    b.wait_condition(&ns, "pvm", "busy", "Ready", READY_TIMEOUT);
    b.wait_condition(&ns, "pvm", "idle", "Ready", READY_TIMEOUT);
    // The idle clock of the idle VM starts at its last activity or, with none, its start.
    let status = &b.get(&ns, "pvm", "idle")["status"];
    let idle_since = [status["lastActivityAt"].as_str(), status["power"]["runningSince"].as_str()]
        .into_iter()
        .flatten()
        .map(epoch_seconds)
        .fold(f64::MIN, f64::max);
    assert!(idle_since > 0.0, "neither lastActivityAt nor runningSince: {status}");
    // A person's long-running job on the busy VM.
    let (code, _) = b.ssh(&ns, "pvm", "busy", "nohup sleep 900 >/dev/null 2>&1 & echo started");
    assert_eq!(code, 0);
    let o = wait_phase(b, &ns, "idle", "Stopped", Duration::from_secs(240));
    let ready = Bed::condition(&o, "Ready").unwrap();
    assert_eq!(ready["reason"], "IdleTimeout", "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("last activity"), "{ready}");
    let events = b.event_reasons(&ns, Some("idle"));
    assert!(events.iter().any(|r| r == "IdleTimeout"), "{events:?}");
    // When the stop was decided (the IdleTimeout event) against when the timeout ran out.
    let times = b.kubectl(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=IdleTimeout,involvedObject.name=idle",
        "-o",
        "jsonpath={.items[0].eventTime} {.items[0].firstTimestamp}",
    ]);
    let stopped_at = times.split_whitespace().next().unwrap_or_else(|| panic!("no IdleTimeout event time: {times:?}"));
    let latency = epoch_seconds(stopped_at) - (idle_since + 60.0);
    record_figure(&format!("idle stop: {latency:.1} s after the 1m idleTimeout ran out"));
    assert!(latency >= -1.0, "stopped {latency:.1} s before the idle timeout ran out");
    // The busy one ran past its timeout and is still running, with fresh activity.
    let busy = b.get(&ns, "pvm", "busy");
    assert_eq!(busy["status"]["phase"], "Ready", "active VM must not be stopped");
    assert!(busy["status"]["lastActivityAt"].is_string());
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn cost_accrues_over_a_start_stop_cycle() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-cost");
    b.apply(&ns, &pvm("meter", "  size: large\n"));
    b.wait_condition(&ns, "pvm", "meter", "Ready", READY_TIMEOUT);
    std::thread::sleep(Duration::from_secs(5));
    b.kubectl(&["-n", &ns, "patch", "pvm", "meter", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]);
    let o = wait_phase(b, &ns, "meter", "Stopped", READY_TIMEOUT);
    let cost = &o["status"]["cost"];
    let power = &o["status"]["power"];
    let hours = power["runningHoursClosed"].as_f64().unwrap();
    assert!(hours > 0.0, "{power}");
    // By hand: e2-standard-4 at the default $0.134012/h for the recorded running time, plus
    // 50 GB of disk at $0.04/GB-month (730 h) since creation.
    let compute = hours * 0.134012;
    let recorded_compute = power["computeCostClosed"].as_f64().unwrap();
    assert!((recorded_compute - compute).abs() < 1e-9, "compute cost {recorded_compute} != by hand {compute}");
    let accrued = cost["accrued"].as_f64().unwrap();
    let disk = accrued - recorded_compute;
    // The disk was there at least as long as the VM ran, and at most since it was created.
    let disk_min = hours * 50.0 * 0.04 / 730.0;
    let created = chrono_hours_since(power["createdAt"].as_str().unwrap());
    let disk_max = (created + 0.01) * 50.0 * 0.04 / 730.0;
    assert!(disk >= disk_min - 1e-9 && disk <= disk_max + 1e-9, "disk cost {disk} outside [{disk_min}, {disk_max}]");
    let ran = hours * 3600.0;
    record_figure(&format!(
        "cost after one start/stop cycle: ran {ran:.1} s; accrued ${accrued:.8} = compute ${recorded_compute:.8} (by hand {ran:.1} s x $0.134012/h = ${compute:.8}) + disk ${disk:.8} (by hand between ${disk_min:.8} and ${disk_max:.8})"
    ));
    // The printer column and the per-namespace metric.
    let table = b.kubectl(&["-n", &ns, "get", "pvm", "meter"]);
    assert!(table.contains("COST") && table.contains('$'), "{table}");
    let metrics = b.metrics();
    assert!(
        metrics.contains(&format!("projectvm_namespace_cost_accrued_dollars{{namespace=\"{ns}\"}}")),
        "no namespace cost metric"
    );
    b.kubectl(&["-n", &ns, "delete", "pvm", "meter", "--timeout=180s"]);
    b.delete_namespace(&ns);
}

fn chrono_hours_since(ts: &str) -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    (now - epoch_seconds(ts)) / 3600.0
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn refreshed_token_reaches_the_running_vm() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-refresh");
    let old = b.git_token();
    let secret = |t: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: git-token\n  labels: {{projectvm.dev/allowed: 'true'}}\nstringData:\n  token: {t}\n"
        )
    };
    b.apply(&ns, &secret(&old));
    b.apply(&ns, "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: priv\nspec:\n  repository:\n    url: https://git.pvm.test/private/demo.git\n    credentialsSecretRef: {name: git-token}\n  prerequisites: {packages: []}\n");
    b.wait_condition(&ns, "pvm", "priv", "Ready", READY_TIMEOUT);
    let started = b.get(&ns, "pvm", "priv")["status"]["lastStartedAt"].clone();

    // The git host rotates: only the new token works from now on.
    let new = format!("{old}-rotated");
    b.set_git_tokens(&[&new]);
    let (code, _) = b.ssh(&ns, "pvm", "priv", "cd /home/project/repo && GIT_TERMINAL_PROMPT=0 git fetch -q origin");
    assert_ne!(code, 0, "the old token must no longer work");
    b.apply(&ns, &secret(&new));
    let version = b.get(&ns, "secret", "git-token")["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    b.eventually("CredentialsCurrent with the new Secret", Duration::from_secs(120), || {
        let o = b.get(&ns, "pvm", "priv");
        let c = Bed::condition(&o, "CredentialsCurrent")?;
        (c["status"] == "True" && c["message"].as_str().unwrap_or("").contains(&version)).then_some(())
    });
    let (code, out) =
        b.ssh(&ns, "pvm", "priv", "cd /home/project/repo && GIT_TERMINAL_PROMPT=0 git fetch origin && echo fetched");
    assert_eq!(code, 0, "git fetch with the refreshed token: {out}");
    assert_eq!(b.get(&ns, "pvm", "priv")["status"]["lastStartedAt"], started, "no restart");
    b.set_git_tokens(&[&old]);
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn orphan_policy_keeps_the_vm_and_a_new_resource_adopts_it() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-orphan");
    b.apply(&ns, &pvm("keep", "  deletionPolicy: Orphan\n"));
    b.wait_condition(&ns, "pvm", "keep", "Ready", READY_TIMEOUT);
    let first = b.get(&ns, "pvm", "keep");
    let id = first["status"]["instance"]["id"].clone();
    let name = first["status"]["instance"]["name"].as_str().unwrap().to_string();
    b.kubectl(&["-n", &ns, "delete", "pvm", "keep", "--timeout=120s"]);
    let kept = b.instance_named(&name).expect("Orphan keeps the instance");
    assert_eq!(kept["id"], id);
    // Declaring it again adopts the same instance instead of making a second one.
    b.apply(&ns, &pvm("keep", "  deletionPolicy: Delete\n"));
    b.wait_condition(&ns, "pvm", "keep", "Ready", READY_TIMEOUT);
    assert_eq!(b.get(&ns, "pvm", "keep")["status"]["instance"]["id"], id, "adopted, not recreated");
    let events = b.event_reasons(&ns, Some("keep"));
    assert!(events.iter().any(|r| r == "Adopted"), "{events:?}");
    b.kubectl(&["-n", &ns, "delete", "pvm", "keep", "--timeout=180s"]);
    assert!(b.instance_named(&name).is_none(), "Delete removes the adopted instance");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn pause_stops_reconciling_until_removed() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-pause");
    let refs = b.refs("public");
    b.apply(&ns, &pvm("p", ""));
    b.wait_condition(&ns, "pvm", "p", "Ready", READY_TIMEOUT);
    b.kubectl(&["-n", &ns, "annotate", "pvm", "p", "projectvm.dev/paused=true"]);
    b.eventually("the Paused event", Duration::from_secs(30), || {
        b.event_reasons(&ns, Some("p")).iter().any(|r| r == "Paused").then_some(())
    });
    b.kubectl(&[
        "-n",
        &ns,
        "patch",
        "pvm",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"repository":{"revision":"feature"}}}"#,
    ]);
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(b.get(&ns, "pvm", "p")["status"]["repository"]["commit"], refs["main"].as_str(), "paused: no sync");
    b.kubectl(&["-n", &ns, "annotate", "pvm", "p", "projectvm.dev/paused-"]);
    let feature = refs["feature"].clone();
    b.eventually("the resync after resume", READY_TIMEOUT, || {
        (b.get(&ns, "pvm", "p")["status"]["repository"]["commit"] == feature.as_str()).then_some(())
    });
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn stalled_step_fails_with_step_timed_out() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-stall");
    b.emulator("PUT", "faults/stuck", r#"{"operationTypes":["insert"],"remaining":1}"#);
    b.apply(&ns, &pvm("stall", "  progressTimeout: 1m\n"));
    let o = wait_phase(b, &ns, "stall", "Failed", Duration::from_secs(180));
    let ready = Bed::condition(&o, "Ready").unwrap();
    let instance = Bed::condition(&o, "InstanceReady").unwrap();
    let said = format!("{ready} {instance}");
    assert!(said.contains("StepTimedOut"), "{said}");
    assert!(said.contains("insert") || said.contains("Instance"), "names the step: {said}");
    b.emulator("POST", "operations/unstick", "{}");
    b.emulator("DELETE", "faults/stuck", "{}");
    b.wait_condition(&ns, "pvm", "stall", "Ready", READY_TIMEOUT);
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn cloud_refusals_are_reported_and_retried() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-refusals");
    let wait_instance_reason = |name: &str, reason: &str| {
        b.eventually(&format!("{name}: InstanceReady={reason}"), Duration::from_secs(120), || {
            let o = b.get(&ns, "pvm", name);
            let c = Bed::condition(&o, "InstanceReady")?;
            (c["status"] == "False" && c["reason"] == reason).then(|| c["message"].as_str().unwrap_or("").to_string())
        })
    };

    // Quota: the insert's operation fails; the condition names the quota; clearing it recovers.
    b.emulator("PUT", "faults/quota", r#"{"metric":"CPUS","limit":8.0,"region":"us-central1"}"#);
    b.apply(&ns, &pvm("quota", ""));
    let m = wait_instance_reason("quota", "QuotaExceeded");
    assert!(m.contains("CPUS"), "{m}");
    assert!(b.event_reasons(&ns, Some("quota")).iter().any(|r| r == "QuotaExceeded"));
    b.emulator("DELETE", "faults/quota", "{}");
    b.wait_condition(&ns, "pvm", "quota", "Ready", READY_TIMEOUT);

    // Deletion refused: the condition says so, the finalizer stays, retries back off;
    // once Compute Engine accepts, deletion finishes on its own.
    b.emulator(
        "PUT",
        "faults/methods/instances.delete",
        r#"{"errorRate":1.0,"errorCode":400,"errorReason":"invalidResourceUsage","errorMessage":"Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'."}"#,
    );
    let name = b.get(&ns, "pvm", "quota")["status"]["instance"]["name"].as_str().unwrap().to_string();
    b.kubectl(&["-n", &ns, "delete", "pvm", "quota", "--wait=false"]);
    let m = wait_instance_reason("quota", "ResourceInUse");
    assert!(m.contains("protected against deletion"), "{m}");
    assert!(b.get(&ns, "pvm", "quota")["metadata"]["finalizers"].is_array(), "finalizer kept while the VM exists");
    b.emulator("DELETE", "faults/methods/instances.delete", "{}");
    b.eventually("the resource to be gone", Duration::from_secs(360), || {
        let out = b.kubectl_output(&["-n", &ns, "get", "pvm", "quota"], None);
        (!out.status.success()).then_some(())
    });
    assert!(b.instance_named(&name).is_none(), "instance deleted once allowed");

    // An instance already gone (deleted behind the operator's back): deletion of the
    // resource still finishes on its own.
    b.apply(&ns, &pvm("gone", ""));
    b.wait_condition(&ns, "pvm", "gone", "Ready", READY_TIMEOUT);
    let name = b.get(&ns, "pvm", "gone")["status"]["instance"]["name"].as_str().unwrap().to_string();
    b.kubectl(&["-n", &ns, "annotate", "pvm", "gone", "projectvm.dev/paused=true"]);
    let url = format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances/{name}", b.var("EMULATOR_URL"));
    assert!(std::process::Command::new("curl").args(["-fsS", "-X", "DELETE", &url]).status().unwrap().success());
    b.eventually("the out-of-band delete", Duration::from_secs(60), || b.instance_named(&name).is_none().then_some(()));
    b.kubectl(&["-n", &ns, "delete", "pvm", "gone", "--timeout=60s"]);
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn idle_workspace_is_stopped_and_one_in_use_is_not() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-ws-idle");
    let ws = |name: &str| {
        format!(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  runStrategy: Manual\n  idleTimeout: 1m\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
        )
    };
    b.apply(&ns, &ws("in-use"));
    b.apply(&ns, &ws("unused"));
    b.wait_condition(&ns, "ws", "in-use", "Ready", READY_TIMEOUT);
    b.wait_condition(&ns, "ws", "unused", "Ready", READY_TIMEOUT);
    // A person works in one of them for longer than the idle timeout.
    let obj = b.get(&ns, "ws", "in-use");
    let url = obj["status"]["url"].as_str().unwrap().to_string();
    let secret = obj["status"]["objects"]["passwordSecret"].as_str().unwrap().to_string();
    let password = b.kubectl(&["-n", &ns, "get", "secret", &secret, "-o", "jsonpath={.data.password}"]);
    let password = String::from_utf8(crate::bed::base64_decode(password.trim())).unwrap();
    let shot = crate::bed::artifacts().join("workspace-in-use.png");
    // The password reaches the browser script through its environment, never its argv.
    let session = crate::bed::Browser {
        url: &url,
        password: Some(&password),
        expected: "README.md",
        screenshot: &shot,
        stay_seconds: Some(120),
        env: vec![],
    }
    .open();
    assert!(session.is_ok(), "browser session failed: {}", session.unwrap_err());
    let unused = b.get(&ns, "ws", "unused");
    assert_eq!(unused["status"]["phase"], "Stopped", "the unused workspace is stopped");
    assert_eq!(Bed::condition(&unused, "Ready").unwrap()["reason"], "IdleTimeout");
    let in_use = b.get(&ns, "ws", "in-use");
    assert_eq!(in_use["status"]["phase"], "Ready", "the workspace in use keeps running");
    assert!(in_use["status"]["lastActivityAt"].is_string(), "heartbeat recorded as activity");
    b.delete_namespace(&ns);
}
