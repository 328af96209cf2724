//! What comes back from a VM is bounded: a prerequisites script that prints 200 MB on one
//! line fails with the tail of its log in the condition, and the operator's memory does not
//! grow with it.

use std::time::Duration;

use crate::bed::{Bed, bed, operator_shared, record_figure};

/// The operator's resident memory must stay under this while a VM prints 200 MB (it idles
/// at 30–60 MiB on the bed; reading that output whole took several hundred MiB).
const RSS_BOUND_MIB: u64 = 200;

fn operator_rss_mib(b: &Bed) -> u64 {
    let pid = std::fs::read_to_string(b.state.join("operator.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn huge_step_output_stays_bounded() {
    let _guard = operator_shared();
    let b = bed();
    let ns = b.namespace("e2e-limits");
    let before = operator_rss_mib(b);
    b.apply(
        &ns,
        r#"apiVersion: projectvm.dev/v1alpha1
kind: ProjectVM
metadata:
  name: loud
spec:
  size: small
  repository: {url: https://git.pvm.test/public/demo.git}
  prerequisites:
    script: "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo THE-END; exit 1"
"#,
    );
    let mut peak = before;
    let message = b.eventually("PrerequisitesInstalled=PrerequisitesFailed", Duration::from_secs(300), || {
        peak = peak.max(operator_rss_mib(b));
        let o = b.get(&ns, "pvm", "loud");
        let c = Bed::condition(&o, "PrerequisitesInstalled")?;
        (c["status"] == "False" && c["reason"] == "PrerequisitesFailed")
            .then(|| c["message"].as_str().unwrap_or("").to_string())
    });
    assert!(message.contains("THE-END"), "the condition carries the log's tail: {message}");
    assert!(message.len() <= 2048, "condition message is {} bytes", message.len());
    record_figure(&format!(
        "operator RSS while a prerequisites script printed 200 MB: {before} MiB before, peak {peak} MiB (bound {RSS_BOUND_MIB} MiB)"
    ));
    assert!(peak < RSS_BOUND_MIB, "operator RSS peaked at {peak} MiB");
    b.delete_namespace(&ns);
}
