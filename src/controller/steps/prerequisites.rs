//! ProjectVM step: install the declared packages (only the missing ones) and run the script,
//! as root. Cheap check: the VM records the fingerprint it last completed with.

use super::{Deadline, Prepared, SHORT, StepEnv, marker_matches};
use crate::api::Prerequisites;
use crate::conditions::Reason;
use crate::controller::vm::VmAccess;
use crate::engine::fingerprint;
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::guest;
use crate::ssh::{SshError, SshTarget};

/// What to install.
#[derive(Clone, Debug)]
pub struct Work {
    pub packages: Vec<String>,
    pub script: Option<String>,
}

/// Packages and script text make the fingerprint: the script re-runs only when it changes.
pub fn prepare(spec: &Prerequisites, env: &StepEnv) -> Prepared {
    let packages = spec.effective_packages();
    let script = spec.script.clone();
    let fp = fingerprint(&[&env.instance_id, &packages.join(" "), script.as_deref().unwrap_or("")]);
    Ok((fp, super::Work::Prerequisites(Work { packages, script })))
}

/// Lines of the install log that go into the condition on failure.
const LOG_TAIL_LINES: u32 = 20;

pub async fn run(
    vm: &dyn VmAccess,
    t: &SshTarget,
    w: &Work,
    fp: &str,
    deadline: Deadline,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    if marker_matches(vm, t, "prerequisites", fp).await? {
        return Ok(TaskOutcome::ok(Reason::Installed, "prerequisites already installed"));
    }
    progress.report(None, format!("installing {} package(s)", w.packages.len()));
    if let Some(s) = &w.script {
        vm.write_file(t, guest::PREREQUISITES_SCRIPT, s.as_bytes(), 0o700, Some("root"), SHORT).await?;
    }
    let body = guest::prerequisites(&w.packages, w.script.is_some(), fp);
    let (command, wait) = deadline.command(guest::RUN_AS_ROOT);
    let out = vm.exec(t, &command, Some(body.as_bytes()), wait, None).await?;
    if crate::shell::timed_out(out.exit_status) {
        return Ok(deadline.exceeded(crate::engine::StepId::Prerequisites));
    }
    if out.exit_status == 0 {
        let installed = if w.packages.is_empty() { "no packages".to_string() } else { w.packages.join(", ") };
        return Ok(TaskOutcome::ok(Reason::Installed, format!("installed: {installed}")));
    }
    let tail = vm.exec(t, &guest::prerequisites_log_tail(LOG_TAIL_LINES), None, SHORT, None).await?;
    Ok(TaskOutcome::failed(
        Reason::PrerequisitesFailed,
        format!(
            "prerequisites failed (exit {}); last lines of {}:\n{}",
            out.exit_status,
            guest::PREREQUISITES_LOG,
            crate::text::lossy(&tail.stdout).trim_end()
        ),
    ))
}
