//! GitOps health, judged by the real kstatus library (sigs.k8s.io/cli-utils, the code Flux and
//! kpt run): both kinds carry `Reconciling` (True while work is pending), `Stalled` (True for a
//! terminal reason) and `Ready`, so kstatus reads them as InProgress, then Current or Failed.

use serde_json::Value;

use crate::bed::{Bed, READY_TIMEOUT, bed, operator_shared};

fn is_true(obj: &Value, condition: &str) -> bool {
    Bed::condition(obj, condition).is_some_and(|c| c["status"] == "True")
}

/// Waits until kstatus says Failed; returns the object and kstatus's message.
fn wait_failed(b: &Bed, ns: &str, kind: &str, name: &str) -> (Value, String) {
    b.eventually(&format!("{kind}/{name}: kstatus Failed"), READY_TIMEOUT, || {
        let o = b.get(ns, kind, name);
        let (status, message) = b.kstatus_of(&o);
        (status == "Failed").then_some((o, message))
    })
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn kstatus_reads_both_kinds() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-kstatus");
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: demo\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n",
    );
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: no-repo\nspec:\n  size: small\n  repository: {url: https://git.pvm.test/public/does-not-exist.git}\n",
    );
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: no-secret\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/private/demo.git\n    credentialsSecretRef: {name: missing}\n",
    );

    // A healthy Workspace: InProgress while the operator works, then Current once Ready.
    // (Before the operator's first status write the object has no conditions at all, which
    // kstatus reads as Current; only a Current with Ready=True counts as the end.)
    let mut seen = Vec::new();
    let message = b.eventually("ws/demo: kstatus Current with Ready=True", READY_TIMEOUT, || {
        let o = b.get(&ns, "ws", "demo");
        let (status, message) = b.kstatus_of(&o);
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        (status == "Current" && is_true(&o, "Ready")).then_some(message)
    });
    // `seen` lists each change of verdict once, so all but its last entry came before.
    assert!(
        seen[..seen.len() - 1].iter().any(|s| s == "InProgress"),
        "ws/demo was never InProgress before it became Current: {seen:?}"
    );
    assert!(!seen.iter().any(|s| s == "Failed"), "ws/demo went through Failed: {seen:?}");
    let o = b.get(&ns, "ws", "demo");
    assert!(!is_true(&o, "Reconciling") && !is_true(&o, "Stalled"), "Current but: {o:#}");
    assert_eq!(o["status"]["observedGeneration"], o["metadata"]["generation"], "{o:#}");
    assert_eq!(b.kstatus(&ns, "ws", "demo").0, "Current", "ws/demo did not stay Current ({message})");

    // A ProjectVM on a repository that does not exist: Stalled, so Failed, with the reason.
    let (o, message) = wait_failed(b, &ns, "pvm", "no-repo");
    let stalled = Bed::condition(&o, "Stalled").expect("Failed without a Stalled condition");
    assert_eq!(stalled["reason"], "RepositoryNotFound", "{o:#}");
    assert!(message.contains("does-not-exist"), "kstatus message does not name the repository: {message}");
    assert!(!is_true(&o, "Reconciling"), "Stalled and still Reconciling: {o:#}");

    // A Workspace whose credentials Secret is missing: Failed too, naming the Secret.
    let (o, message) = wait_failed(b, &ns, "ws", "no-secret");
    let stalled = Bed::condition(&o, "Stalled").expect("Failed without a Stalled condition");
    assert_eq!(stalled["reason"], "SecretNotFound", "{o:#}");
    assert!(message.contains(&format!("{ns}/missing")), "kstatus message does not name the Secret: {message}");

    b.delete_namespace(&ns);
}
