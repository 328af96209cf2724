//! Workspace step: install code-server when the image lacks the wanted version (a pinned
//! release, sha256-checked, downloaded on the VM), write its config and the systemd unit the
//! operator owns (`projectvm-code-server.service`, opening the repository folder; it replaces
//! the drop-in on the image's unit), and restart it. Runs in parallel with the clone. Cheap
//! check: the VM records the fingerprint it last completed with.

use super::{Deadline, Prepared, SHORT, StepBlocked, StepEnv, marker_matches};
use crate::api::{CodeServerAuth, Workspace};
use crate::conditions::Reason;
use crate::controller::vm::VmAccess;
use crate::engine::fingerprint;
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::guest::{self, CodeServerConfig, CodeServerSource, git};
use crate::ssh::{SshError, SshTarget};

/// The configuration to apply.
#[derive(Clone, Debug)]
pub struct Work {
    pub cfg: CodeServerConfig,
    pub source: CodeServerSource,
}

/// Port, folder, auth mode, the password Secret's version and the wanted release make the
/// fingerprint (never the password itself): a new version re-runs the step, which upgrades.
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
        &env.code_server_source.version,
        &env.code_server_source.url(),
        &env.code_server_source.sha256,
    ]);
    Ok((fp, super::Work::CodeServer(Work { cfg, source: env.code_server_source.clone() })))
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
/// An install failure carries more: the cause and the tail of the download's output.
const INSTALL_TAIL_LINES: usize = 16;
/// At most this much of the VM's words goes into a condition message.
const TAIL_BYTES: usize = 2048;

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
    progress.report(
        None,
        format!(
            "installing code-server {} when missing, writing {}, restarting it",
            w.source.version,
            guest::CODE_SERVER_UNIT
        ),
    );
    let script = guest::code_server_apply(cfg, &w.source, fp);
    let (command, wait) = deadline.command(guest::RUN_AS_ROOT);
    let out = vm.exec(t, &command, Some(script.as_bytes()), wait, None).await?;
    if crate::shell::timed_out(out.exit_status) {
        return Ok(deadline.exceeded(crate::engine::StepId::CodeServer));
    }
    let stderr = crate::text::lossy(&out.stderr);
    if out.exit_status == guest::CODE_SERVER_INSTALL_FAILED {
        return Ok(TaskOutcome::failed(Reason::CodeServerInstallFailed, install_failed_message(&w.source, &stderr)));
    }
    if out.exit_status != 0 {
        return Ok(TaskOutcome::failed(
            Reason::CodeServerFailed,
            format!(
                "configuring code-server failed (exit {}): {}",
                out.exit_status,
                crate::text::clip_start(&git::tail(&stderr, ERROR_TAIL_LINES), TAIL_BYTES)
            ),
        ));
    }
    Ok(done())
}

/// The condition message of a failed install: the URL, then what the VM said (bounded).
fn install_failed_message(source: &CodeServerSource, stderr: &str) -> String {
    format!(
        "installing code-server {} from {} failed: {}",
        source.version,
        source.url(),
        crate::text::clip_start(&git::tail(stderr, INSTALL_TAIL_LINES), TAIL_BYTES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_failure_names_the_url_and_keeps_the_tail_bounded() {
        let source = CodeServerSource {
            url_template: "https://example.com/v{version}/cs-{version}.tar.gz".into(),
            version: "4.100.3".into(),
            sha256: "ab".repeat(32),
        };
        let noise = "é".repeat(5000);
        let stderr = format!("{noise}\nsha256 mismatch for https://example.com/v4.100.3/cs-4.100.3.tar.gz\n");
        let m = install_failed_message(&source, &stderr);
        assert!(m.starts_with(
            "installing code-server 4.100.3 from https://example.com/v4.100.3/cs-4.100.3.tar.gz failed: "
        ));
        assert!(m.ends_with("sha256 mismatch for https://example.com/v4.100.3/cs-4.100.3.tar.gz"), "{m}");
        assert!(m.len() < 2300, "{}", m.len());
    }
}
