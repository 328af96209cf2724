//! Two clusters, one Google Cloud project: each operator labels its instances with its
//! cluster's name, which is also part of their names, so the same namespace/name in two
//! clusters gets two instances, and deleting one resource deletes only its own instance.
//! An instance labelled for another cluster under a resource's name is never adopted or
//! deleted (`InstanceNameConflict`).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::bed::{Bed, ControlPlane, READY_TIMEOUT, bed, operator_shared, repo_root};

const NS: &str = "e2e-clusters";

fn manifest(name: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n    depth: 1\n"
    )
}

fn ready(obj: &Value) -> bool {
    Bed::condition(obj, "Ready").is_some_and(|c| c["status"] == "True")
}

fn instance_name_of(obj: &Value) -> String {
    obj["status"]["instance"]["name"].as_str().expect("status.instance.name").to_string()
}

/// The bed cluster's name: the operator there runs without `--cluster-name`, so it is the
/// kube-system Namespace's uid (read through the chart's RBAC).
fn bed_cluster_name(b: &Bed) -> String {
    b.kubectl(&["get", "namespace", "kube-system", "-o", "jsonpath={.metadata.uid}"])
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn same_name_in_two_clusters_gets_two_instances_and_deletes_only_its_own() {
    let _guard = operator_shared();
    let b = bed();
    let cluster_a = bed_cluster_name(b);
    let second = ControlPlane::up(b, "cluster-b");
    second.kubectl(&["apply", "-f", &repo_root().join("crds").display().to_string()]);
    second.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/projectvms.projectvm.dev",
        "crd/workspaces.projectvm.dev",
        "--timeout=60s",
    ]);
    let ns = b.namespace(NS);
    second.kubectl(&["create", "namespace", NS]);
    let operator_b = b.spawn_operator(
        "cluster-b",
        &[
            ("KUBECONFIG", second.kubeconfig.as_str()),
            ("PROJECTVM_CLUSTER_NAME", "cluster-b"),
            // Its Lease lives in cluster B's default namespace.
            ("POD_NAMESPACE", "default"),
        ],
    );

    b.apply(&ns, &manifest("twin"));
    let out = second.kubectl_output(&["-n", NS, "apply", "-f", "-"], Some(&manifest("twin")));
    assert!(out.status.success(), "apply in cluster B: {}", String::from_utf8_lossy(&out.stderr));
    b.wait_condition(&ns, "pvm", "twin", "Ready", READY_TIMEOUT);
    b.eventually("twin Ready in cluster B", READY_TIMEOUT, || ready(&second.get(NS, "pvm", "twin")).then_some(()));

    let a = b.get(&ns, "pvm", "twin");
    let bb = second.get(NS, "pvm", "twin");
    let (name_a, name_b) = (instance_name_of(&a), instance_name_of(&bb));
    assert_ne!(name_a, name_b, "one namespace/name, two clusters: two instances");
    let inst_a = b.instance_named(&name_a).expect("cluster A's instance");
    let inst_b = b.instance_named(&name_b).expect("cluster B's instance");
    assert_eq!(inst_a["labels"]["projectvm-cluster"], cluster_a.as_str(), "{inst_a}");
    assert_eq!(inst_b["labels"]["projectvm-cluster"], "cluster-b", "{inst_b}");
    assert_eq!(inst_a["labels"]["projectvm-uid"], a["metadata"]["uid"]);
    assert_eq!(inst_b["labels"]["projectvm-uid"], bb["metadata"]["uid"]);
    let twins = instances_labelled(b, &[("projectvm-namespace", NS), ("projectvm-name", "twin")]);
    let mut names: Vec<&str> = twins.iter().filter_map(|i| i["name"].as_str()).collect();
    names.sort();
    let mut expected = [name_a.as_str(), name_b.as_str()];
    expected.sort();
    assert_eq!(names, expected, "exactly two instances for {NS}/twin");
    // Each cluster's label filter (its bulk list) finds its own only.
    let only_b = instances_labelled(b, &[("projectvm-cluster", "cluster-b"), ("projectvm-name", "twin")]);
    assert_eq!(only_b.iter().map(|i| i["name"].clone()).collect::<Vec<_>>(), [json!(name_b)]);
    let machines = b.emulator_instances();
    assert!(
        [&name_a, &name_b].iter().all(|n| machines.iter().any(|m| m["name"] == n.as_str())),
        "both are machines in the emulator"
    );
    let id_a = a["status"]["instance"]["id"].clone();

    // Deleting the resource in cluster B deletes B's instance and nothing of A's.
    second.kubectl(&["-n", NS, "delete", "pvm", "twin", "--wait=true", "--timeout=120s"]);
    b.eventually("cluster B's instance deleted", Duration::from_secs(60), || {
        b.instance_named(&name_b).is_none().then_some(())
    });
    let kept = b.instance_named(&name_a).expect("cluster A's instance survives B's delete");
    assert_eq!(kept["id"].to_string().trim_matches('"'), id_a.as_str().unwrap());
    // A stays Ready on the same instance through its next passes.
    std::thread::sleep(Duration::from_secs(5));
    let a = b.get(&ns, "pvm", "twin");
    assert!(ready(&a), "cluster A's twin stays Ready: {a}");
    assert_eq!(a["status"]["instance"]["id"], id_a);
    let reasons = b.event_reasons(&ns, Some("twin"));
    assert!(
        !reasons.iter().any(|r| ["InstanceReplaced", "Deleting", "InstanceNameConflict"].contains(&r.as_str())),
        "A's instance was never replaced, deleted or disputed: {reasons:?}"
    );
    let log_b = operator_b.log_text();
    assert!(log_b.contains("cluster-b"), "operator B logs its cluster name");
    drop(operator_b);
    b.kubectl(&["-n", &ns, "delete", "pvm", "twin", "--wait=true", "--timeout=120s"]);
    b.eventually("cluster A's instance deleted", Duration::from_secs(60), || {
        b.instance_named(&name_a).is_none().then_some(())
    });
    b.delete_namespace(&ns);
}

/// Instances in the test zone carrying all these labels, through the Compute API's label
/// filter (`(labels.a = "x") AND (labels.b = "y")`, as the operator's bulk lists send it).
fn instances_labelled(b: &Bed, labels: &[(&str, &str)]) -> Vec<Value> {
    let url = format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances", b.var("EMULATOR_URL"));
    let expr: Vec<String> = labels.iter().map(|(k, v)| format!("(labels.{k} = \"{v}\")")).collect();
    let filter = format!("filter={}", expr.join(" AND "));
    let out = Command::new("curl").args(["-fsS", "-G", &url, "--data-urlencode", &filter]).output().unwrap();
    assert!(out.status.success(), "emulator list failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
    for i in &items {
        for (k, want) in labels {
            assert_eq!(i["labels"][*k], *want, "filter ignored: {i}");
        }
    }
    items
}

/// Seeds an instance through the emulator's Compute API, as another cluster's operator would
/// have made it.
fn seed_instance(b: &Bed, name: &str, labels: Value) {
    let url = format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances", b.var("EMULATOR_URL"));
    let body = json!({
        "name": name,
        "machineType": "zones/us-central1-a/machineTypes/e2-small",
        "labels": labels,
        "disks": [{"boot": true, "autoDelete": true, "initializeParams": {"diskSizeGb": "10"}}],
        "networkInterfaces": [{"network": "global/networks/default"}],
    });
    let out = Command::new("curl")
        .args(["-fsS", "-X", "POST", "-H", "content-type: application/json", "--data-binary", &body.to_string(), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "seeding {name}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn another_clusters_instance_under_our_name_is_never_adopted_or_deleted() {
    let _guard = operator_shared();
    let b = bed();
    let cluster = bed_cluster_name(b);
    let ns = b.namespace("e2e-cluster-conflict");
    let name = projectvm::cloud::naming::instance_name(&cluster, "projectvm", &ns, "squatted");
    // Labelled for another cluster, under the very name this cluster's operator will pick
    // (a cluster renamed to this one, or two clusters configured alike).
    seed_instance(
        b,
        &name,
        json!({
            "managed-by": "projectvm",
            "projectvm-cluster": "elsewhere",
            "projectvm-kind": "projectvm",
            "projectvm-namespace": ns,
            "projectvm-name": "squatted",
            "projectvm-uid": "uid-elsewhere",
        }),
    );
    b.eventually("the seeded instance", Duration::from_secs(60), || b.instance_named(&name));
    let seeded = b.instance_named(&name).unwrap();

    b.apply(&ns, &manifest("squatted"));
    let obj = b.eventually("InstanceNameConflict", READY_TIMEOUT, || {
        let o = b.get(&ns, "pvm", "squatted");
        Bed::condition(&o, "InstanceReady").filter(|c| c["reason"] == "InstanceNameConflict").map(|_| o)
    });
    let c = Bed::condition(&obj, "InstanceReady").unwrap();
    assert_eq!(c["status"], "False");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains(&name) && message.contains("cluster elsewhere"), "{message}");
    let ready = Bed::condition(&obj, "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InstanceNameConflict")));
    b.eventually("a Warning InstanceNameConflict event", Duration::from_secs(30), || {
        b.event_reasons(&ns, Some("squatted")).iter().any(|r| r == "InstanceNameConflict").then_some(())
    });
    // Not adopted: the status never took the other cluster's instance as its own.
    assert!(obj["status"]["instance"]["id"].is_null(), "{obj}");
    let still = b.instance_named(&name).expect("left alone");
    assert_eq!(still["labels"], seeded["labels"], "labels untouched");
    assert_eq!(still["metadata"], seeded["metadata"], "metadata untouched");

    // Deleting the resource finishes on its own and leaves the instance where it is.
    b.kubectl(&["-n", &ns, "delete", "pvm", "squatted", "--wait=true", "--timeout=60s"]);
    assert!(b.instance_named(&name).is_some(), "another cluster's instance is never deleted");

    // Clean up as its own cluster would.
    let url = format!("{}/compute/v1/projects/testbed/zones/us-central1-a/instances/{name}", b.var("EMULATOR_URL"));
    let _ = Command::new("curl").args(["-fsS", "-X", "DELETE", &url]).output();
    b.delete_namespace(&ns);
}
