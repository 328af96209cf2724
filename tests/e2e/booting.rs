//! A VM that never finishes booting (sshd answers every login with pam_nologin's "System is
//! booting up", as seen when a boot hangs) ends in `StepTimedOut` within `progressTimeout`,
//! naming the step, the limit and what the VM said — not in a retried SSHAuthFailed.

use std::time::{Duration, Instant};

use crate::bed::{Bed, bed, operator_exclusive, record_figure};

#[test]
#[ignore = "needs the test bed: ./scripts/test.sh"]
fn a_vm_stuck_booting_times_out_quoting_it() {
    // Exclusive: other tests reset the emulator's fault knobs.
    let _guard = operator_exclusive();
    let b = bed();
    let ns = b.namespace("e2e-booting");
    b.emulator("PUT", "faults/booting", r#"{"instances": ["pvm-e2e-booting-"]}"#);
    let started = Instant::now();
    b.apply(
        &ns,
        "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata:\n  name: stuck\nspec:\n  size: small\n  progressTimeout: 1m\n  repository: {url: https://git.pvm.test/public/demo.git}\n",
    );
    let ready = b.eventually("Ready=False StepTimedOut", Duration::from_secs(240), || {
        let o = b.get(&ns, "pvm", "stuck");
        let c = Bed::condition(&o, "Ready")?;
        (c["reason"] == "StepTimedOut").then_some(c)
    });
    let took = started.elapsed();
    b.emulator("DELETE", "faults/booting", "{}");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains("Prerequisites") && message.contains("1m"), "names the step and the limit: {message}");
    assert!(message.contains("System is booting up"), "quotes what the VM said: {message}");
    let o = b.get(&ns, "pvm", "stuck");
    assert_eq!(Bed::condition(&o, "Stalled").unwrap()["status"], "True");
    let reasons = b.event_reasons(&ns, Some("stuck"));
    assert!(!reasons.iter().any(|r| r == "SSHAuthFailed"), "booting was taken for an auth failure: {reasons:?}");
    record_figure(&format!(
        "a VM stuck booting ended in StepTimedOut {:.0} s after apply (progressTimeout 1m)",
        took.as_secs_f64()
    ));
    b.delete_namespace(&ns);
}
