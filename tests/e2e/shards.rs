//! Sharding (Flux's convention): the bed's operator is the default shard
//! (`!sharding.fluxcd.io/key`, see `bed.sh`), and this test starts two more, `shard1` and
//! `shard2`, each with its own selector and Lease. Every object is reconciled by exactly one
//! of the three — shown by who reports it (each operator's events carry its name in
//! `reportingInstance`) and who exports its series — a Run follows its ProjectVM's shard,
//! and relabelling a ProjectVM hands it over to the other shard without a second instance.

use std::time::Duration;

use serde_json::Value;

use crate::bed::{Bed, OperatorProcess, READY_TIMEOUT, bed, operator_shared};

const KEY: &str = "sharding.fluxcd.io/key";

fn projectvm(name: &str, shard: Option<&str>) -> String {
    let labels = shard.map(|s| format!("  labels:\n    {KEY}: {s}\n")).unwrap_or_default();
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: {name}\n{labels}spec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n    depth: 1\n"
    )
}

fn shard(b: &Bed, name: &str) -> OperatorProcess {
    b.spawn_operator(
        name,
        &[
            ("PROJECTVM_SHARD_SELECTOR", &format!("{KEY} in ({name})")),
            ("PROJECTVM_LEASE_NAME", &format!("projectvm-operator-{name}")),
            ("POD_NAME", name),
        ],
    )
}

/// Who reported events about `object` (`reportingInstance` of each event; the bed's own
/// operator is `bed-operator`).
fn reporters(b: &Bed, ns: &str, object: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&b.kubectl(&[
        "-n",
        ns,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={object}"),
        "-o",
        "json",
    ]))
    .unwrap();
    let mut who: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reportingInstance"].as_str().unwrap_or("").to_string())
        .collect();
    who.sort();
    who.dedup();
    who
}

fn metrics_of(url: &str) -> String {
    let out = std::process::Command::new("curl").args(["-fsS", &format!("{url}/metrics")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether an operator's metrics carry the Ready series of `name` in `ns`.
fn exports(metrics: &str, ns: &str, name: &str) -> bool {
    let needle = format!("namespace=\"{ns}\",name=\"{name}\"");
    metrics.lines().any(|l| l.starts_with("projectvm_ready{") && l.contains(&needle))
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn each_object_has_exactly_one_operator_and_relabelling_hands_it_over() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-shards");
    let one = shard(b, "shard1");
    let two = shard(b, "shard2");
    let operators = [
        ("bed-operator", b.var("METRICS_URL").to_string()),
        ("shard1", one.metrics_url.clone()),
        ("shard2", two.metrics_url.clone()),
    ];

    b.apply(&ns, &projectvm("plain", None));
    b.apply(&ns, &projectvm("first", Some("shard1")));
    b.apply(&ns, &projectvm("second", Some("shard2")));
    for name in ["plain", "first", "second"] {
        b.wait_condition(&ns, "pvm", name, "Ready", READY_TIMEOUT);
    }
    // A Run carries no shard label: it follows its ProjectVM's.
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: Run\nmetadata: {name: job}\nspec:\n  projectVMRef: {name: first}\n  command: [\"true\"]\n",
    );
    b.wait_condition(&ns, "pvmrun", "job", "Complete", Duration::from_secs(120));

    for (object, owner) in [("plain", "bed-operator"), ("first", "shard1"), ("second", "shard2"), ("job", "shard1")] {
        assert_eq!(reporters(b, &ns, object), [owner], "{object} is reported by {owner} alone");
    }
    b.eventually("each ProjectVM's series in exactly one operator", Duration::from_secs(30), || {
        let all: Vec<String> = operators.iter().map(|(_, url)| metrics_of(url)).collect();
        [("plain", 0), ("first", 1), ("second", 2)]
            .iter()
            .all(|(name, i)| (0..3).all(|j| exports(&all[j], &ns, name) == (j == *i)))
            .then_some(())
    });
    let uid = b.get(&ns, "pvm", "first")["metadata"]["uid"].as_str().unwrap().to_string();
    let before: Vec<Value> = b.instances_of(&uid);
    assert_eq!(before.len(), 1, "one instance: {before:?}");

    // Hand `first` over to shard2.
    b.kubectl(&["-n", &ns, "label", "pvm", "first", &format!("{KEY}=shard2"), "--overwrite"]);
    b.eventually("shard2 takes over first, shard1 lets it go", Duration::from_secs(60), || {
        let (m1, m2) = (metrics_of(&one.metrics_url), metrics_of(&two.metrics_url));
        (exports(&m2, &ns, "first") && !exports(&m1, &ns, "first")).then_some(())
    });
    b.wait_condition(&ns, "pvm", "first", "Ready", READY_TIMEOUT);
    let after = b.instances_of(&uid);
    assert_eq!(after.len(), 1, "still one instance after the handover: {after:?}");
    assert_eq!(after[0]["id"], before[0]["id"], "the same instance, adopted, not a new one");
    let default_log = b.operator_log();
    assert!(
        !default_log.contains(&format!("{ns}/first")) && !default_log.contains(&format!("{ns}/second")),
        "the default shard never touched the labelled objects"
    );

    // Deletion is the owning shard's too.
    b.kubectl(&["-n", &ns, "delete", "pvm", "--all", "--wait=true", "--timeout=180s"]);
    assert!(b.instances_of(&uid).is_empty(), "first's instance was deleted by its shard");
    drop((one, two));
    b.delete_namespace(&ns);
}
