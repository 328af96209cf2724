//! The operator for the scale benchmark (`testbed/bench-scale.sh`): the real operator
//! (`projectvm::run_with_vms`: real controllers, Kubernetes client, Compute Engine client and
//! rate limit) with scripted guests in place of SSH and code-server, so a thousand objects
//! need no machines. Takes the operator's own flags.
//!
//! Built only with `--features scale-bench` (`cargo build --release --features scale-bench
//! --bin scale-operator`); nothing here is in the operator's binary.
//!
//! `BENCH_GUEST_LATENCY_MS` (default 200): how long each step's main command takes.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use projectvm::controller::vm::{HealthAnswer, OnOutput, VmAccess, parse_health};
use projectvm::ssh::{ExecOutput, SshError, SshTarget};

/// A commit the scripted clone reports.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Guests that answer each kind of command the steps send as a healthy, idle VM would.
struct ScriptedGuests {
    latency: Duration,
}

fn ok(stdout: &str) -> ExecOutput {
    ExecOutput { stdout: stdout.as_bytes().to_vec(), ..Default::default() }
}

#[async_trait::async_trait]
impl VmAccess for ScriptedGuests {
    async fn exec(
        &self,
        _target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        _timeout: Duration,
        _on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, SshError> {
        if command == "true" || command.starts_with("head -c ") || command.contains("tail -n") {
            return Ok(ok(""));
        }
        let input = stdin.map(String::from_utf8_lossy).unwrap_or_default();
        if input.contains("PROJECTVM_ACTIVE") {
            return Ok(ok("PROJECTVM_ACTIVE=0\n"));
        }
        let main_step = input.contains(projectvm::guest::scripts::COMMIT_MARKER)
            || input.contains("=== $(date")
            || input.contains("code-server");
        if main_step {
            tokio::time::sleep(self.latency).await;
        }
        if input.contains(projectvm::guest::scripts::COMMIT_MARKER) {
            return Ok(ok(&format!("PROJECTVM_COMMIT={COMMIT}\nPROJECTVM_BRANCH=main\n")));
        }
        Ok(ok(""))
    }

    async fn write_file(
        &self,
        _target: &SshTarget,
        _path: &str,
        _contents: &[u8],
        _mode: u32,
        _owner: Option<&str>,
        _timeout: Duration,
    ) -> Result<(), SshError> {
        Ok(())
    }

    async fn exec_stream(
        &self,
        _target: &SshTarget,
        _command: &str,
        _timeout: Duration,
    ) -> Result<projectvm::ssh::ByteStream, SshError> {
        Err(SshError::Channel("the scripted guests stream nothing".into()))
    }

    async fn forget(&self, _host: &str) {}

    async fn probe_health(&self, _url: &str) -> HealthAnswer {
        parse_health(200, r#"{"status":"expired","lastHeartbeat":0}"#)
    }
}

#[tokio::main]
async fn main() {
    let config = projectvm::config::Config::parse();
    projectvm::telemetry::init(config.log_format);
    let latency = std::env::var("BENCH_GUEST_LATENCY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let vms = Arc::new(ScriptedGuests { latency: Duration::from_millis(latency) });
    match projectvm::run_with_vms(config, vms).await {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}
