//! Many at once: 20 Workspaces applied in one `kubectl apply` all reach Ready, one instance
//! each (issue 8: under such a burst a machine's boot used to fail with 219/CGROUP and its
//! Workspace never got past SSH).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bed::{Bed, bed, epoch_seconds, operator_shared, record_figure};

const COUNT: usize = 20;
const LIMIT: Duration = Duration::from_secs(600);

fn workspace(name: &str) -> String {
    format!(
        "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata:\n  name: {name}\nspec:\n  size: small\n  repository:\n    url: https://git.pvm.test/public/demo.git\n"
    )
}

/// Host memory in use (MemTotal - MemAvailable), in MiB.
fn host_mem_used_mib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| -> u64 {
        info.lines().find_map(|l| l.strip_prefix(k)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
    };
    (field("MemTotal:") - field("MemAvailable:")) / 1024
}

/// A process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    Some(kb / 1024)
}

fn ready(o: &Value) -> Option<Value> {
    Bed::condition(o, "Ready").filter(|c| c["status"] == "True")
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn twenty_workspaces_at_once_all_reach_ready() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-scale");
    let names: Vec<String> = (1..=COUNT).map(|i| format!("scale-{i:02}")).collect();
    let yaml = names.iter().map(|n| workspace(n)).collect::<Vec<_>>().join("---\n");
    let mem_before = host_mem_used_mib();
    let applied_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let t0 = Instant::now();
    b.apply(&ns, &yaml);

    // Wait (bounded) until every one is Ready, noting when each was first seen Ready.
    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    let mut mem_peak = mem_before;
    let items = loop {
        mem_peak = mem_peak.max(host_mem_used_mib());
        let list: Value = serde_json::from_str(&b.kubectl(&["-n", &ns, "get", "ws", "-o", "json"])).unwrap();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for o in &items {
            let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if ready(o).is_some() {
                seen.entry(name).or_insert_with(|| t0.elapsed());
            }
        }
        if seen.len() == COUNT {
            break items;
        }
        if t0.elapsed() > LIMIT {
            let waiting: Vec<String> = items
                .iter()
                .filter(|o| ready(o).is_none())
                .map(|o| {
                    let c = Bed::condition(o, "Ready").unwrap_or_default();
                    format!("{}: {} {}", o["metadata"]["name"], c["reason"], c["message"])
                })
                .collect();
            panic!(
                "{} of {COUNT} Workspaces Ready after {LIMIT:?}; not Ready:\n{}\noperator log tail:\n{}",
                seen.len(),
                waiting.join("\n"),
                b.operator_log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    };

    // One instance each, RUNNING.
    let mut instance_names = Vec::new();
    for o in &items {
        let name = o["metadata"]["name"].as_str().unwrap();
        let uid = o["metadata"]["uid"].as_str().unwrap();
        let instances = b.instances_of(uid);
        assert_eq!(instances.len(), 1, "{name}: {} instances: {instances:?}", instances.len());
        assert_eq!(instances[0]["status"], "RUNNING", "{name}");
        instance_names.push(instances[0]["name"].as_str().unwrap().to_string());
    }
    // And every machine's boot went well by its own account (the emulator keeps
    // `systemctl is-system-running --wait` from inside each): none degraded.
    let not_running: Vec<String> = b
        .emulator_instances()
        .iter()
        .filter(|i| instance_names.iter().any(|n| i["name"] == n.as_str()))
        .filter(|i| i["machine"]["boot"] != "running")
        .map(|i| format!("{}: {}", i["name"], i["machine"]["boot"]))
        .collect();
    assert!(not_running.is_empty(), "machines whose boot did not end `running`: {not_running:?}");

    // The time until the last one was Ready, from the conditions themselves (whole seconds;
    // the poll above bounds it from above, by its 2 s period).
    let transitions: Vec<f64> = items
        .iter()
        .map(|o| epoch_seconds(ready(o).unwrap()["lastTransitionTime"].as_str().expect("lastTransitionTime")))
        .collect();
    let last = transitions.iter().cloned().fold(f64::MIN, f64::max) - applied_at;
    let first = transitions.iter().cloned().fold(f64::MAX, f64::min) - applied_at;
    let mut sorted: Vec<f64> = transitions.iter().map(|t| t - applied_at).collect();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = sorted[COUNT / 2];
    let operator_rss = std::fs::read_to_string(b.state.join("operator.pid"))
        .ok()
        .and_then(|p| peak_rss_mib(p.trim()))
        .map(|m| format!("{m} MiB"))
        .unwrap_or_else(|| "unknown".into());
    let last_seen = seen.values().max().unwrap().as_secs_f64();
    record_figure(&format!(
        "e2e scale: {COUNT} Workspaces applied at once: last Ready after {last:.0} s (seen by polling at {last_seen:.0} s; first {first:.0} s, median {median:.0} s); \
         host memory in use {mem_before} -> peak {mem_peak} MiB (+{} MiB, ~{} MiB per Workspace); operator peak RSS {operator_rss}",
        mem_peak - mem_before,
        (mem_peak - mem_before) / COUNT as u64,
    ));
    b.delete_namespace(&ns);
}
