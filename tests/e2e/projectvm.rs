//! ProjectVM end to end: provisioning, prerequisites, sync, re-sync on a revision change,
//! deletion, and a crash right after the instance insert.

use std::time::Duration;

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_exclusive, operator_shared};

fn manifest(name: &str, revision: &str) -> String {
    format!(
        r#"apiVersion: projectvm.dev/v1alpha1
kind: ProjectVM
metadata:
  name: {name}
spec:
  size: small
  repository:
    url: https://git.pvm.test/public/demo.git
    revision: {revision}
    depth: 1
  prerequisites:
    packages: [git, jq, tree]
    script: |
      set -eu
      echo "prepared by projectvm" > /etc/projectvm-prepared
"#
    )
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn projectvm_becomes_ready_and_resyncs_without_reprovisioning() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-pvm");
    let refs = b.refs("public");
    b.apply(&ns, &manifest("api", "main"));
    b.wait_condition(&ns, "pvm", "api", "Ready", READY_TIMEOUT);

    let obj = b.get(&ns, "pvm", "api");
    assert_eq!(obj["status"]["phase"], "Ready");
    assert_eq!(obj["status"]["repository"]["commit"], refs["main"].as_str());
    let id = obj["status"]["instance"]["id"].as_str().unwrap().to_string();
    assert!(obj["status"]["instance"]["hostKeyFingerprint"].as_str().unwrap().starts_with("SHA256:"));
    for c in ["InstanceReady", "PrerequisitesInstalled", "RepositorySynced", "Ready"] {
        let cond = Bed::condition(&obj, c).unwrap_or_else(|| panic!("condition {c} missing"));
        assert_eq!(cond["status"], "True", "{c}: {cond}");
        assert!(cond["lastTransitionTime"].is_string());
    }
    assert!(obj["status"]["cost"]["hourlyRate"].as_f64().unwrap() > 0.0);

    // On the VM, over SSH with the pinned host key: packages, script, checkout.
    let (code, out) = b.ssh(&ns, "pvm", "api", "dpkg-query -W -f='${Status}\\n' jq tree; cat /etc/projectvm-prepared; git -C /home/project/repo rev-parse HEAD; stat -c %U /home/project/repo");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("install ok installed").count(), 2, "{out}");
    assert!(out.contains("prepared by projectvm"), "{out}");
    assert!(out.contains(&refs["main"]), "{out}");
    assert!(out.trim_end().ends_with("project"), "checkout owned by the VM user: {out}");

    // Change the revision: fetch + checkout, same instance.
    b.kubectl(&[
        "-n",
        &ns,
        "patch",
        "pvm",
        "api",
        "--type=merge",
        "-p",
        r#"{"spec":{"repository":{"revision":"feature"}}}"#,
    ]);
    let feature = refs["feature"].clone();
    b.eventually("the feature commit to be synced", READY_TIMEOUT, || {
        let o = b.get(&ns, "pvm", "api");
        let synced = Bed::condition(&o, "RepositorySynced").is_some_and(|c| c["status"] == "True");
        (synced && o["status"]["repository"]["commit"] == feature.as_str()).then_some(())
    });
    let obj = b.get(&ns, "pvm", "api");
    assert_eq!(obj["status"]["instance"]["id"].as_str().unwrap(), id, "re-sync must not re-provision");
    let (code, out) = b.ssh(
        &ns,
        "pvm",
        "api",
        "git -C /home/project/repo rev-parse HEAD; test -f /home/project/repo/feature.txt && echo has-feature",
    );
    assert_eq!(code, 0);
    assert!(out.contains(&feature) && out.contains("has-feature"), "{out}");

    // Delete: instance gone, finalizer removed, nothing left in the emulator.
    let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
    b.kubectl(&["-n", &ns, "delete", "pvm", "api", "--timeout=180s"]);
    assert!(b.instances_of(&uid).is_empty(), "instance leaked: {:?}", b.instances_of(&uid));
    b.delete_namespace(&ns);
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn operator_killed_right_after_insert_adopts_the_instance() {
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-crash");
    b.apply(&ns, &manifest("crash", "main"));
    let uid = b.eventually("the resource's uid", Duration::from_secs(30), || {
        b.get(&ns, "pvm", "crash")["metadata"]["uid"].as_str().map(String::from)
    });
    // Kill the operator the moment the instance exists in the cloud.
    b.eventually("the instance insert", Duration::from_secs(60), || (!b.instances_of(&uid).is_empty()).then_some(()));
    b.operator_kill();
    b.operator_restart();
    b.wait_condition(&ns, "pvm", "crash", "Ready", READY_TIMEOUT);
    assert_eq!(b.instances_of(&uid).len(), 1, "exactly one instance after the crash");
    b.kubectl(&["-n", &ns, "delete", "pvm", "crash", "--timeout=180s"]);
    assert!(b.instances_of(&uid).is_empty());
    b.delete_namespace(&ns);
}
