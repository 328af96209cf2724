//! Activity on a ProjectVM, for idle shutdown: an open terminal session or a process of the
//! project user that the operator did not start. (A Workspace's activity is code-server's
//! heartbeat, read by the health step.)

use std::time::Duration;

use super::kind::VmKind;
use super::status::Report;
use super::{Context, Error, instance, observe::Observed};
use crate::clock;
use crate::conditions::{self, types};
use crate::ssh::SshTarget;

const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Probes the VM when an idle timeout is set and the VM is set up, and asks to be back soon
/// enough that an idle stop comes shortly after the timeout.
pub async fn probe<K: VmKind>(ctx: &Context, report: &mut Report, obj: &K, target: &SshTarget) {
    let Some(idle) = obj.machine().idle_limit() else {
        return;
    };
    report.soon((idle / 4).clamp(Duration::from_secs(5), Duration::from_secs(30)));
    if !K::ACTIVITY_OVER_SSH || !conditions::is_true(&report.status.conditions, types::REPOSITORY_SYNCED) {
        return;
    }
    probe_over_ssh(ctx, report, obj, target).await;
}

async fn probe_over_ssh<K: VmKind>(ctx: &Context, report: &mut Report, obj: &K, target: &SshTarget) {
    let script = crate::guest::activity_probe(&obj.machine().user);
    match ctx.vm.exec(target, crate::guest::RUN_AS_USER, Some(script.as_bytes()), PROBE_LIMIT, None).await {
        Ok(out) => {
            let said = crate::text::lossy(&out.stdout);
            if said.contains("PROJECTVM_ACTIVE=1") {
                report.status.last_activity_at = Some(clock::time(report.now));
            } else if let Some(ended) =
                crate::guest::last_run_end(&said).and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            {
                // A Run that ended since the last look is activity at its end: the idle
                // timer starts again from there (never from a time in the future).
                let recorded = report.status.last_activity_at.as_ref().map(clock::from_time);
                let ended = ended.min(report.now);
                if recorded.is_none_or(|r| r < ended) {
                    report.status.last_activity_at = Some(clock::time(ended));
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "activity probe failed"),
    }
}

/// Before an idle stop, looks once more: the recorded activity may be old only because the
/// operator was not looking (it was down, or busy). Reachable VMs are asked directly.
pub async fn recheck_before_idle_stop<K: VmKind>(
    ctx: &Context,
    report: &mut Report,
    obj: &K,
    observed: &Observed,
) -> Result<(), Error> {
    let Some(inst) = observed.instance.as_ref() else {
        return Ok(());
    };
    let Some(access) = instance::access(ctx, report, obj, inst, observed).await? else {
        return Ok(());
    };
    if K::ACTIVITY_OVER_SSH {
        probe_over_ssh(ctx, report, obj, &access.target).await;
    } else if let Some(ws) = obj.as_workspace() {
        let url = format!("http://{}:{}/healthz", access.address, ws.spec.code_server.port);
        let answer = ctx.vm.probe_health(&url).await;
        super::steps::health::record_heartbeat(report, &answer);
    }
    Ok(())
}
