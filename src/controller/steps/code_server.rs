//! Workspace step: install code-server when the image lacks it, write its config and the
//! systemd drop-in that opens the repository folder, and restart it. Runs in parallel with
//! the clone. Cheap check: the VM records the fingerprint it last completed with.

use super::{Deadline, Prepared, SHORT, StepBlocked, StepEnv, marker_matches};
use crate::api::{CodeServerAuth, Workspace};
use crate::conditions::Reason;
use crate::controller::vm::VmAccess;
use crate::engine::fingerprint;
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::guest::{self, CodeServerConfig, git};
use crate::ssh::{SshError, SshTarget};

/// The configuration to apply.
#[derive(Clone, Debug)]
pub struct Work {
    pub cfg: CodeServerConfig,
    pub install_url: String,
}

/// Port, folder, auth mode and the password Secret's version make the fingerprint (never
/// the password itself).
pub fn prepare(ws: &Workspace, env: &StepEnv) -> Prepared {
    let password = match ws.spec.code_server.auth {
        CodeServerAuth::None => {
            auth_none_allowed(env)?;
            None
        }
        CodeServerAuth::Password => match &env.password {
            Some(p) => Some(p.clone()),
            None => {
                let p = env.password_problem.clone();
                return Err(StepBlocked {
                    reason: p.as_ref().map_or(Reason::SecretNotFound, |p| p.reason),
                    message: p.map_or_else(|| "code-server password Secret not readable".into(), |p| p.message),
                });
            }
        },
    };
    let port = ws.spec.code_server.port;
    let cfg = CodeServerConfig {
        user: ws.spec.machine.user.clone(),
        port,
        folder: ws.spec.effective_folder(),
        password: password.as_ref().map(|p| p.value.clone()),
    };
    let fp = fingerprint(&[
        &env.instance_id,
        &port.to_string(),
        &cfg.folder,
        ws.spec.code_server.auth.as_str(),
        password.as_ref().map(|p| p.version.as_str()).unwrap_or(""),
    ]);
    Ok((fp, super::Work::CodeServer(Work { cfg, install_url: env.code_server_install_url.clone() })))
}

/// code-server without a password is a shell with passwordless sudo for whoever reaches the
/// port: only where the operator's configuration allows it, and never on an address the
/// internet can reach.
fn auth_none_allowed(env: &StepEnv) -> Result<(), StepBlocked> {
    if !env.allow_auth_none {
        return Err(StepBlocked {
            reason: Reason::AuthNoneNotAllowed,
            message: "codeServer.auth: none is not allowed by this operator's configuration: use auth: password, \
                      or ask the operator's administrators to set the chart value codeServer.allowAuthNone"
                .into(),
        });
    }
    if let Some(ip) = &env.external_ip {
        return Err(StepBlocked {
            reason: Reason::AuthNoneNotAllowed,
            message: format!(
                "codeServer.auth: none is never served on an external address, and this VM has {ip}: use auth: \
                 password, or run the operator with gcp.useInternalIp (VMs without external addresses)"
            ),
        });
    }
    Ok(())
}

/// Lines of the script's output that go into the condition on failure.
const ERROR_TAIL_LINES: usize = 8;

pub async fn run(
    vm: &dyn VmAccess,
    t: &SshTarget,
    w: &Work,
    fp: &str,
    deadline: Deadline,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    let cfg = &w.cfg;
    let done =
        || TaskOutcome::ok(Reason::Configured, format!("code-server serves {} on port {}", cfg.folder, cfg.port));
    if marker_matches(vm, t, "code-server", fp).await? {
        return Ok(done());
    }
    progress.report(None, "writing code-server configuration");
    let config = guest::code_server_config(cfg);
    vm.write_file(t, &guest::code_server_config_path(&cfg.user), config.as_bytes(), 0o600, Some(&cfg.user), SHORT)
        .await?;
    let dropin = guest::code_server_dropin(cfg);
    vm.write_file(t, &guest::code_server_dropin_path(&cfg.user), dropin.as_bytes(), 0o644, Some("root"), SHORT).await?;
    progress.report(None, "restarting code-server");
    let script = guest::code_server_apply(cfg, &w.install_url, fp);
    let (command, wait) = deadline.command(guest::RUN_AS_ROOT);
    let out = vm.exec(t, &command, Some(script.as_bytes()), wait, None).await?;
    if crate::shell::timed_out(out.exit_status) {
        return Ok(deadline.exceeded(crate::engine::StepId::CodeServer));
    }
    if out.exit_status != 0 {
        return Ok(TaskOutcome::failed(
            Reason::CodeServerFailed,
            format!(
                "configuring code-server failed (exit {}): {}",
                out.exit_status,
                git::tail(&crate::text::lossy(&out.stderr), ERROR_TAIL_LINES)
            ),
        ));
    }
    Ok(done())
}
