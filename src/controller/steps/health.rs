//! Workspace step: `GET /healthz` on code-server until it answers, within a grace period
//! after it was (re)configured. Inline and cheap, so it runs every reconcile; its answer is
//! also the Workspace's activity signal for idle shutdown.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Prepared, StepEnv};
use crate::clock::{self, humanize};
use crate::conditions::{self, Reason, Update, types};
use crate::controller::Context;
use crate::controller::status::Report;
use crate::controller::vm::HealthAnswer;
use crate::engine::fingerprint;

/// The URL to probe.
pub fn prepare(port: i32, env: &StepEnv) -> Prepared {
    let url = format!("http://{}:{port}/healthz", env.address);
    Ok((fingerprint(&[&env.instance_id, &url]), super::Work::Health { url }))
}

/// How long code-server may take to answer after it was configured.
pub const GRACE: Duration = Duration::from_secs(180);

pub async fn check(ctx: &Context, report: &mut Report, condition: &'static str, url: &str, fp: &str) {
    let answer = ctx.vm.probe_health(url).await;
    record_heartbeat(report, &answer);
    if answer.healthy {
        report.set(
            Update::truthy(condition, Reason::Healthy, format!("GET {url}: {}", answer.summary))
                .with_fingerprint(Some(fp.to_string())),
        );
        return;
    }
    let configured_at = conditions::get(&report.status.conditions, types::CODE_SERVER_CONFIGURED)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(clock::from_time)
        .unwrap_or(report.now);
    if clock::elapsed(report.now, configured_at) < GRACE {
        report.set(Update::falsy(
            condition,
            Reason::Waiting,
            format!("waiting for code-server: GET {url}: {}", answer.summary),
        ));
        report.progress("Health", "waiting for code-server to answer", None);
        report.soon(Duration::from_millis(500));
    } else {
        report.set(Update::falsy(
            condition,
            Reason::Unhealthy,
            format!("code-server did not answer GET {url} within {}; last answer: {}", humanize(GRACE), answer.summary),
        ));
        report.soon(Duration::from_secs(15));
    }
}

/// code-server's heartbeat as activity. It is written at most once a minute; "alive" means a
/// client was active within that minute, so it counts as activity now (never stop someone
/// working).
pub fn record_heartbeat(report: &mut Report, answer: &HealthAnswer) {
    if answer.alive {
        report.status.last_activity_at = Some(clock::time(report.now));
    } else if answer.last_heartbeat_ms > 0
        && let Some(t) = DateTime::<Utc>::from_timestamp_millis(answer.last_heartbeat_ms)
    {
        let t = clock::time(t);
        if report.status.last_activity_at.as_ref().is_none_or(|prev| prev.0 < t.0) {
            report.status.last_activity_at = Some(t);
        }
    }
}
