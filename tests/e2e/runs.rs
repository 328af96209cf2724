//! Runs end to end: work executed on a ProjectVM's real machine under a systemd unit, its log
//! tail and artifacts brought back (to the bed's fake-gcs-server when it has one), the queue,
//! cancel, a crashed operator, a stopped Manual VM, and secrets in the environment.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_exclusive, operator_shared, record_figure};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn projectvm(name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: projectvm.dev/v1alpha1
kind: ProjectVM
metadata:
  name: {name}
spec:
  size: small
  repository:
    url: https://git.pvm.test/public/demo.git
    depth: 1
  prerequisites:
    packages: [git]
{extra}"#
    )
}

fn run_manifest(name: &str, pvm: &str, body: &str) -> String {
    format!(
        r#"apiVersion: projectvm.dev/v1alpha1
kind: Run
metadata:
  name: {name}
spec:
  projectVMRef: {{name: {pvm}}}
{body}"#
    )
}

/// Waits for a Run to reach a finished phase and returns it.
fn finished(b: &Bed, ns: &str, name: &str, timeout: Duration) -> Value {
    b.eventually(&format!("Run {name} to finish"), timeout, || {
        let r = b.get(ns, "pvmrun", name);
        let phase = r["status"]["phase"].as_str().unwrap_or("");
        matches!(phase, "Succeeded" | "Failed" | "TimedOut" | "Cancelled").then_some(r)
    })
}

fn phase(b: &Bed, ns: &str, name: &str) -> String {
    b.get(ns, "pvmrun", name)["status"]["phase"].as_str().unwrap_or("").to_string()
}

fn ready_pvm(b: &Bed, ns: &str, name: &str, extra: &str) {
    b.apply(ns, &projectvm(name, extra));
    b.wait_condition(ns, "pvm", name, "Ready", READY_TIMEOUT);
}

fn storage(b: &Bed) -> Option<(String, String)> {
    Some((b.env.get("STORAGE_URL")?.clone(), b.env.get("ARTIFACT_BUCKET")?.clone()))
}

/// An object's bytes, read back through fake-gcs-server's JSON API.
fn object_bytes(url: &str, bucket: &str, object: &str) -> Vec<u8> {
    let enc: String = object
        .bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-_.~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect();
    let out = std::process::Command::new("curl")
        .args(["-fsS", &format!("{url}/storage/v1/b/{bucket}/o/{enc}?alt=media")])
        .output()
        .unwrap();
    assert!(out.status.success(), "reading gs://{bucket}/{object}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_run_succeeds_fails_or_times_out_with_its_log_and_artifacts() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-runs");
    ready_pvm(b, &ns, "box", "");
    let commit = b.get(&ns, "pvm", "box")["status"]["repository"]["commit"].as_str().unwrap().to_string();

    let applied = Instant::now();
    b.apply(
        &ns,
        &run_manifest(
            "ok",
            "box",
            r#"  script: |
    mkdir -p out/deep
    head -c 300000 /dev/urandom > out/deep/data.bin
    sha256sum out/deep/data.bin | cut -d' ' -f1 > out/data.sha256
    echo "report from $(git rev-parse HEAD)" > out/report.txt
    for i in $(seq 1 60); do echo "line $i"; done
  artifacts: [out, "missing/*"]
"#,
        ),
    );
    let r = finished(b, &ns, "ok", RUN_TIMEOUT);
    record_figure(&format!("run: apply -> Succeeded {:.1}s", applied.elapsed().as_secs_f64()));
    assert_eq!(r["status"]["phase"], "Succeeded", "{r}");
    assert_eq!(r["status"]["exitCode"], 0);
    assert_eq!(r["status"]["commit"], commit.as_str(), "runs at the ProjectVM's synced commit by default");
    let tail = r["status"]["logTail"].as_str().unwrap();
    assert!(tail.ends_with("line 60") && !tail.contains("line 1\n"), "a bounded tail: {tail}");
    assert!(r["status"]["startTime"].is_string() && r["status"]["completionTime"].is_string());
    b.wait_condition(&ns, "pvmrun", "ok", "Complete", Duration::from_secs(10));
    let uid = r["metadata"]["uid"].as_str().unwrap().to_string();

    // On the VM: the run's own worktree at the commit, the synced checkout untouched.
    let (code, out) = b.ssh(
        &ns,
        "pvm",
        "box",
        &format!("git -C /home/project/runs/{uid}/work rev-parse HEAD; cat /home/project/runs/{uid}/work/out/data.sha256; git -C /home/project/repo status --porcelain | wc -l"),
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], commit);
    let vm_sha = lines[1].to_string();
    assert_eq!(lines[2], "0", "the synced checkout is not disturbed");

    let uploaded = b.eventually("artifacts to settle", Duration::from_secs(120), || {
        let r = b.get(&ns, "pvmrun", "ok");
        let c = Bed::condition(&r, "ArtifactsUploaded")?;
        (c["reason"] != "Uploading").then_some(r)
    });
    let cond = Bed::condition(&uploaded, "ArtifactsUploaded").unwrap();
    match storage(b) {
        Some((url, bucket)) => {
            assert_eq!(cond["status"], "True", "{uploaded}");
            assert!(cond["message"].as_str().unwrap().contains("missing/*"), "unmatched patterns are named: {cond}");
            let arts = uploaded["status"]["artifacts"].as_array().unwrap();
            let names: Vec<&str> = arts.iter().map(|a| a["name"].as_str().unwrap()).collect();
            for n in ["run.log", "out/deep/data.bin", "out/report.txt", "out/data.sha256"] {
                assert!(names.contains(&n), "{n} in {names:?}");
            }
            let data = arts.iter().find(|a| a["name"] == "out/deep/data.bin").unwrap();
            assert_eq!(data["size"], 300000);
            assert_eq!(data["sha256"], vm_sha.as_str(), "the sha256 the VM computed");
            let object = data["url"].as_str().unwrap().strip_prefix(&format!("gs://{bucket}/")).unwrap().to_string();
            assert!(object.ends_with(&format!("{ns}/ok-{uid}/artifacts/out/deep/data.bin")), "{object}");
            let bytes = object_bytes(&url, &bucket, &object);
            assert_eq!(bytes.len(), 300000);
            assert_eq!(sha256_hex(&bytes), vm_sha, "the stored bytes are the VM's");
            let log = arts.iter().find(|a| a["name"] == "run.log").unwrap();
            let object = log["url"].as_str().unwrap().strip_prefix(&format!("gs://{bucket}/")).unwrap().to_string();
            let text = String::from_utf8(object_bytes(&url, &bucket, &object)).unwrap();
            assert!(text.contains("line 1\n") && text.contains("line 60"), "the full log is an artifact");
        }
        None => {
            assert_eq!(cond["reason"], "NotConfigured", "{uploaded}");
            assert!(cond["message"].as_str().unwrap().contains("--artifact-bucket"));
        }
    }

    // A failing run: exit code and tail, Failed, kstatus Failed.
    b.apply(&ns, &run_manifest("bad", "box", "  command: [bash, -c, \"echo about to fail; echo boom >&2; exit 3\"]\n"));
    let r = finished(b, &ns, "bad", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "Failed", "{r}");
    assert_eq!(r["status"]["exitCode"], 3);
    assert_eq!(r["status"]["reason"], "Failed");
    let failed = Bed::condition(&r, "Failed").unwrap();
    assert_eq!(failed["status"], "True");
    assert!(
        failed["message"].as_str().unwrap().contains("code 3") && failed["message"].as_str().unwrap().contains("boom"),
        "{failed}"
    );
    assert_eq!(b.kstatus(&ns, "pvmrun", "bad").0, "Failed");
    assert!(b.event_reasons(&ns, Some("bad")).contains(&"Failed".to_string()));

    // At a tag: its own commit, whatever the ProjectVM has synced.
    let tag = b.refs("public")["v1.0"].clone();
    b.apply(&ns, &run_manifest("tagged", "box", "  revision: v1.0\n  command: [git, rev-parse, HEAD]\n"));
    let r = finished(b, &ns, "tagged", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "Succeeded", "{r}");
    assert_eq!(r["status"]["commit"], tag.as_str());
    assert!(r["status"]["logTail"].as_str().unwrap().contains(&tag));

    // A timeout: stopped at the limit by systemd.
    b.apply(&ns, &run_manifest("slow", "box", "  timeout: 3s\n  script: |\n    echo sleeping\n    sleep 120\n"));
    let r = finished(b, &ns, "slow", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "TimedOut", "{r}");
    assert!(r["status"]["message"].as_str().unwrap().contains("3s"), "{r}");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn runs_queue_behind_max_concurrent_and_deleting_one_cancels_it() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-runs-queue");
    ready_pvm(b, &ns, "q", "  runs: {maxConcurrent: 1}\n");
    let body = |tag: &str| {
        format!(
            "  script: |\n    echo \"{tag} start $(date +%s.%N)\" >> /home/project/serial.log\n    sleep 3\n    echo \"{tag} end $(date +%s.%N)\" >> /home/project/serial.log\n"
        )
    };
    b.apply(
        &ns,
        &format!("{}---\n{}", run_manifest("first", "q", &body("first")), run_manifest("second", "q", &body("second"))),
    );
    b.eventually("the second Run to be queued", Duration::from_secs(60), || {
        (phase(b, &ns, "second") == "Queued").then_some(())
    });
    let queued = b.get(&ns, "pvmrun", "second");
    assert!(queued["status"]["message"].as_str().unwrap().contains("first"), "names what it waits for: {queued}");
    for n in ["first", "second"] {
        assert_eq!(finished(b, &ns, n, RUN_TIMEOUT)["status"]["phase"], "Succeeded");
    }
    let (_, log) = b.ssh(&ns, "pvm", "q", "cat /home/project/serial.log");
    let t = |what: &str| -> f64 {
        log.lines().find(|l| l.starts_with(what)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
    };
    assert!(t("first end") <= t("second start"), "serialized by the runs' own timestamps:\n{log}");

    // Cancel by delete: the unit is stopped and the directory removed.
    b.apply(&ns, &run_manifest("long", "q", "  script: sleep 600\n"));
    b.eventually("the long Run to run", Duration::from_secs(90), || (phase(b, &ns, "long") == "Running").then_some(()));
    let uid = b.get(&ns, "pvmrun", "long")["metadata"]["uid"].as_str().unwrap().to_string();
    let (_, active) = b.ssh(&ns, "pvm", "q", &format!("systemctl is-active projectvm-run-{uid}.service"));
    assert_eq!(active.trim(), "active");
    b.kubectl(&["-n", &ns, "delete", "pvmrun", "long", "--timeout=60s"]);
    let (_, after) = b.ssh(&ns, "pvm", "q", &format!("systemctl is-active projectvm-run-{uid}.service; test -e /home/project/runs/{uid} && echo dir-left || echo dir-gone; pgrep -u project -x sleep || echo no-process"));
    assert!(!after.lines().next().unwrap_or("").starts_with("active"), "{after}");
    assert!(after.contains("dir-gone") && after.contains("no-process"), "{after}");
    assert!(b.event_reasons(&ns, Some("long")).contains(&"Cancelled".to_string()));
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_run_survives_an_operator_crash_and_runs_once() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-runs-crash");
    ready_pvm(b, &ns, "c", "");
    b.apply(
        &ns,
        &run_manifest(
            "once",
            "c",
            "  script: |\n    echo run >> /home/project/counter\n    sleep 12\n    echo finished\n",
        ),
    );
    b.eventually("the Run to run", Duration::from_secs(90), || (phase(b, &ns, "once") == "Running").then_some(()));
    b.operator_kill();
    std::thread::sleep(Duration::from_secs(3));
    b.operator_restart();
    let r = finished(b, &ns, "once", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "Succeeded", "{r}");
    assert!(r["status"]["logTail"].as_str().unwrap().contains("finished"));
    let (_, counter) = b.ssh(&ns, "pvm", "c", "cat /home/project/counter");
    assert_eq!(counter.lines().count(), 1, "started exactly once: {counter}");

    // Killed between the launch and its status write: the next pass adopts, never relaunches.
    b.apply(&ns, &run_manifest("adopt", "c", "  script: |\n    echo run >> /home/project/counter2\n    sleep 4\n"));
    b.eventually("the second Run to start", Duration::from_secs(90), || {
        let (_, out) = b.ssh(&ns, "pvm", "c", "cat /home/project/counter2 2>/dev/null");
        (!out.is_empty()).then_some(())
    });
    b.operator_kill();
    b.operator_restart();
    assert_eq!(finished(b, &ns, "adopt", RUN_TIMEOUT)["status"]["phase"], "Succeeded");
    let (_, counter) = b.ssh(&ns, "pvm", "c", "cat /home/project/counter2");
    assert_eq!(counter.lines().count(), 1, "{counter}");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_run_starts_a_stopped_manual_vm_which_idles_out_after_it() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-runs-manual");
    ready_pvm(b, &ns, "m", "  runStrategy: Manual\n  idleTimeout: 1m\n");
    b.eventually("the idle VM to stop", Duration::from_secs(240), || {
        (b.get(&ns, "pvm", "m")["status"]["phase"] == "Stopped").then_some(())
    });
    // whenStopped: Fail refuses to start it.
    b.apply(&ns, &run_manifest("refused", "m", "  whenStopped: Fail\n  script: 'true'\n"));
    let r = finished(b, &ns, "refused", Duration::from_secs(60));
    assert_eq!(r["status"]["reason"], "VMStopped", "{r}");
    assert!(r["status"]["message"].as_str().unwrap().contains("ProjectVM m"));

    b.apply(&ns, &run_manifest("wake", "m", "  script: |\n    sleep 5\n    echo ran on a started VM\n"));
    let r = finished(b, &ns, "wake", Duration::from_secs(300));
    assert_eq!(r["status"]["phase"], "Succeeded", "{r}");
    // StartingVM lasts as long as a machine's boot (a second or two here): the events tell.
    let told = b.event_reasons(&ns, Some("wake"));
    assert!(told.contains(&"Starting".to_string()), "the Run said it started the VM: {told:?}");
    assert!(b.event_reasons(&ns, Some("m")).contains(&"StartRequested".to_string()));
    let ended = crate::bed::epoch_seconds(r["status"]["completionTime"].as_str().unwrap());
    // The idle timer started again at the Run's end: stopped by idle shutdown, after it.
    let pvm = b.eventually("idle shutdown after the Run", Duration::from_secs(300), || {
        let p = b.get(&ns, "pvm", "m");
        (p["status"]["phase"] == "Stopped").then_some(p)
    });
    let ready = Bed::condition(&pvm, "InstanceReady").unwrap();
    assert_eq!(ready["reason"], "IdleTimeout", "{pvm}");
    let activity = crate::bed::epoch_seconds(pvm["status"]["lastActivityAt"].as_str().unwrap());
    assert!(activity >= ended - 6.0, "last activity {activity} is the Run's end {ended} (or later)");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn secrets_reach_the_run_environment_and_nowhere_else() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-runs-env");
    ready_pvm(b, &ns, "e", "");
    let value = "pvm-run-secret-8c1f0b77e2";
    b.apply(
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {value}\n  user: app\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: opted\n  labels: {{projectvm.dev/allowed: \"true\"}}\nstringData:\n  password: {value}\n  user: app\n"
        ),
    );
    let body = "  env:\n  - {name: DB_PASSWORD, valueFrom: {secretKeyRef: {name: SECRET, key: password}}}\n  - {name: PLAIN, value: visible}\n  envFrom:\n  - {secretRef: {name: SECRET}, prefix: DB_}\n  script: |\n    printf %s \"$DB_PASSWORD\" | sha256sum | cut -d' ' -f1\n    echo \"user=$DB_user plain=$PLAIN\"\n    sleep 4\n";
    b.apply(&ns, &run_manifest("refused", "e", &body.replace("SECRET", "db")));
    b.eventually("SecretNotAllowed", Duration::from_secs(60), || {
        let r = b.get(&ns, "pvmrun", "refused");
        (r["status"]["reason"] == "SecretNotAllowed").then_some(())
    });
    assert_eq!(phase(b, &ns, "refused"), "Pending", "never launched");

    b.apply(&ns, &run_manifest("allowed", "e", &body.replace("SECRET", "opted")));
    b.eventually("the Run to run", Duration::from_secs(90), || (phase(b, &ns, "allowed") == "Running").then_some(()));
    let uid = b.get(&ns, "pvmrun", "allowed")["metadata"]["uid"].as_str().unwrap().to_string();
    let (_, seen) =
        b.ssh(&ns, "pvm", "e", &format!("ps -eo args; cat /home/project/runs/{uid}/*.sh; ls /home/project/runs/{uid}"));
    assert!(!seen.contains(value), "the value is on no command line and in no file left behind:\n{seen}");
    assert!(!seen.lines().any(|l| l == "env"), "the env file is gone once read:\n{seen}");
    let r = finished(b, &ns, "allowed", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "Succeeded", "{r}");
    let expected = {
        use sha2::Digest;
        sha2::Sha256::digest(value.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let tail = r["status"]["logTail"].as_str().unwrap();
    assert!(tail.contains(&expected) && tail.contains("user=app plain=visible"), "{tail}");

    // Nowhere else: status, events, the operator's log.
    let all = b.kubectl(&["-n", &ns, "get", "pvmrun", "-o", "yaml"]);
    assert!(!all.contains(value));
    let events = b.kubectl(&["-n", &ns, "get", "events", "-o", "yaml"]);
    assert!(!events.contains(value));
    assert!(!b.operator_log().contains(value), "the operator's log never has the value");
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn bad_runs_are_refused_at_admission_or_fail_with_a_reason() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-runs-bad");
    let refused = |body: &str, says: &str| {
        let out = b.kubectl_output(&["-n", &ns, "apply", "-f", "-"], Some(&run_manifest("x", "p", body)));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(says), "{body}: {err}");
    };
    refused("  command: [make]\n  script: make\n", "exactly one of command");
    refused("  projectVMRef: {name: p}\n", "exactly one of command");
    refused("  command: []\n", "command");
    refused("  script: make\n  artifacts: [/etc/passwd]\n", "artifacts");
    refused("  script: make\n  artifacts: [out/../../x]\n", "artifacts");
    refused("  script: make\n  workingDir: ../up\n", "workingDir");
    refused("  script: make\n  timeout: 500ms\n", "timeout");
    refused("  script: make\n  timeout: 200h\n", "at most 168h");

    // Immutable once created.
    b.apply(&ns, &run_manifest("fixed", "nowhere", "  script: 'true'\n"));
    let out = b.kubectl_output(
        &["-n", &ns, "apply", "-f", "-"],
        Some(&run_manifest("fixed", "nowhere", "  script: 'false'\n")),
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot change"));
    // The ProjectVM does not exist: waited for, then ProjectVMNotFound.
    assert_eq!(
        b.get(&ns, "pvmrun", "fixed")["status"]["reason"].as_str().unwrap_or("ProjectVMNotFound"),
        "ProjectVMNotFound"
    );
    let r = finished(b, &ns, "fixed", Duration::from_secs(120));
    assert_eq!(r["status"]["reason"], "ProjectVMNotFound", "{r}");

    // A revision the repository does not have.
    ready_pvm(b, &ns, "p", "");
    b.apply(&ns, &run_manifest("norev", "p", "  revision: no-such-branch\n  script: 'true'\n"));
    let r = finished(b, &ns, "norev", RUN_TIMEOUT);
    assert_eq!(r["status"]["reason"], "RevisionNotFound", "{r}");
    assert!(r["status"]["message"].as_str().unwrap().contains("no-such-branch"));
    b.delete_namespace(&ns);
}

/// Figures, recorded (never asserted): apply → the process started on the VM, next to a
/// direct SSH start of the same command; and a 100 MB artifact's copy to the bucket next to a
/// plain `ssh cat > file`.
#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn run_figures() {
    let _guard = operator_shared();
    let b = bed();
    let Some((url, bucket)) = storage(b) else {
        eprintln!("the bed has no Cloud Storage emulator; no figures");
        return;
    };
    let ns = b.namespace("e2e-runs-bench");
    ready_pvm(b, &ns, "bench", "");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    // Direct: ssh, then the same first command; the VM clock and ours are one clock here.
    let mut direct = Vec::new();
    for _ in 0..3 {
        let t0 = now();
        let (_, out) = b.ssh(&ns, "pvm", "bench", "date +%s.%N");
        direct.push(out.trim().parse::<f64>().unwrap() - t0);
    }
    let mut via_run = Vec::new();
    for i in 0..3 {
        let name = format!("start-{i}");
        let t0 = now();
        b.apply(&ns, &run_manifest(&name, "bench", "  script: date +%s.%N\n"));
        let r = finished(b, &ns, &name, RUN_TIMEOUT);
        let started: f64 = r["status"]["logTail"].as_str().unwrap().trim().parse().unwrap();
        via_run.push(started - t0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (d, r) = (median(&mut direct), median(&mut via_run));

    // 100 MB: one Run writes it and copies it; then the same file with ssh cat > file.
    let t0 = Instant::now();
    b.apply(
        &ns,
        &run_manifest("big", "bench", "  script: head -c 100000000 /dev/urandom > big.bin\n  artifacts: [big.bin]\n"),
    );
    finished(b, &ns, "big", RUN_TIMEOUT);
    let done = b.eventually("the 100 MB artifact", Duration::from_secs(600), || {
        let r = b.get(&ns, "pvmrun", "big");
        let c = Bed::condition(&r, "ArtifactsUploaded")?;
        (c["reason"] != "Uploading").then_some(r)
    });
    let upload_window = t0.elapsed().as_secs_f64();
    let cond = Bed::condition(&done, "ArtifactsUploaded").unwrap();
    assert_eq!(cond["status"], "True", "{done}");
    let finished_at = crate::bed::epoch_seconds(done["status"]["completionTime"].as_str().unwrap());
    let uploaded_at = crate::bed::epoch_seconds(cond["lastTransitionTime"].as_str().unwrap());
    let upload = (uploaded_at - finished_at).max(0.001);
    let art = done["status"]["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == "big.bin").unwrap().clone();
    assert_eq!(art["size"], 100000000);
    let object = art["url"].as_str().unwrap().strip_prefix(&format!("gs://{bucket}/")).unwrap().to_string();
    assert_eq!(sha256_hex(&object_bytes(&url, &bucket, &object)), art["sha256"].as_str().unwrap());
    let uid = done["metadata"]["uid"].as_str().unwrap().to_string();
    let copy = crate::bed::tempdir("run-bench").join("big.bin");
    let t1 = Instant::now();
    let code = b.ssh_to_file(&ns, "pvm", "bench", &format!("cat /home/project/runs/{uid}/work/big.bin"), &copy);
    let cat_copy = t1.elapsed().as_secs_f64();
    assert_eq!(code, 0);
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 100_000_000);
    let _ = std::fs::remove_file(&copy);
    let table = format!(
        "runs figures (median of 3 where repeated)\n\
         | what | seconds | ratio |\n|---|---|---|\n\
         | direct ssh start of the command | {d:.3} | 1.00 |\n\
         | Run apply -> process started on the VM | {r:.3} | {:.2} |\n\
         | plain `ssh cat > file` of the 100 MB | {cat_copy:.2} | 1.00 |\n\
         | 100 MB artifact: Run end -> uploaded (status times, 1 s resolution) | {upload:.2} | {:.2} |\n\
         | whole 100 MB Run: apply -> uploaded | {upload_window:.1} | |",
        r / d,
        upload / cat_copy
    );
    eprintln!("{table}");
    for line in table.lines() {
        record_figure(line);
    }
    b.delete_namespace(&ns);
}

/// Puts the bed's operator back, even when the test failed.
struct BedOperatorBack(&'static Bed);

impl Drop for BedOperatorBack {
    fn drop(&mut self) {
        // Not `operator_restart`, which asserts: a second panic here would abort the run.
        let _ = std::process::Command::new(crate::bed::repo_root().join("testbed/bed.sh"))
            .args(["operator-start", self.0.state.to_str().unwrap()])
            .output();
    }
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_refused_bucket_is_named_and_the_run_keeps_its_result() {
    let _guard = operator_exclusive();
    let b = bed();
    if storage(b).is_none() {
        eprintln!("the bed has no Cloud Storage emulator; nothing to refuse");
        return;
    }
    let ns = b.namespace("e2e-runs-bucket");
    // The same operator, pointed at a bucket that does not exist, in place of the bed's.
    b.operator_kill();
    let _back = BedOperatorBack(b);
    let op = b.spawn_operator("operator-no-bucket", &[("PROJECTVM_ARTIFACT_BUCKET", "no-such-bucket-e2e")]);
    ready_pvm(b, &ns, "nb", "");
    b.apply(&ns, &run_manifest("kept", "nb", "  script: echo made > out.txt\n  artifacts: [out.txt]\n"));
    let r = finished(b, &ns, "kept", RUN_TIMEOUT);
    assert_eq!(r["status"]["phase"], "Succeeded", "the work's result stands: {r}");
    let refused = b.eventually("ArtifactUploadFailed", Duration::from_secs(120), || {
        let r = b.get(&ns, "pvmrun", "kept");
        let c = Bed::condition(&r, "ArtifactsUploaded")?;
        (c["reason"] == "ArtifactUploadFailed").then_some(r)
    });
    let cond = Bed::condition(&refused, "ArtifactsUploaded").unwrap();
    assert_eq!(cond["status"], "False");
    assert!(cond["message"].as_str().unwrap().contains("no-such-bucket-e2e"), "names the bucket: {cond}");
    let stalled = Bed::condition(&refused, "Stalled").unwrap();
    assert_eq!((stalled["status"].as_str(), stalled["reason"].as_str()), (Some("True"), Some("ArtifactUploadFailed")));
    assert!(b.event_reasons(&ns, Some("kept")).contains(&"ArtifactUploadFailed".to_string()));
    drop(op);
    b.delete_namespace(&ns);
}
