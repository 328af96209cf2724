//! The VM edge of a reconcile: commands over SSH and code-server's health endpoint. Behind
//! one narrow trait, so the steps run unchanged against real VMs and against the scripted
//! guests of the scenario tests.

use std::time::Duration;

use crate::ssh::{ExecOutput, OutputChunk, SshError, SshPool, SshTarget};

/// Streamed output, as it arrives.
pub type OnOutput<'a> = Option<&'a (dyn Fn(OutputChunk<'_>) + Send + Sync)>;

/// What a reconcile does on a VM.
#[async_trait::async_trait]
pub trait VmAccess: Send + Sync + 'static {
    /// Runs `command` with optional stdin bytes, bounded by `timeout`.
    async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, SshError>;
    /// Writes a file as root with its content over stdin (never on a command line).
    async fn write_file(
        &self,
        target: &SshTarget,
        path: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
        timeout: Duration,
    ) -> Result<(), SshError>;
    /// Runs `command` and streams its standard output (see [`SshPool::exec_stream`]).
    async fn exec_stream(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<crate::ssh::ByteStream, SshError>;
    /// Drops pooled connections to `host` (the instance was replaced or deleted).
    async fn forget(&self, host: &str);
    /// GETs code-server's health URL once, bounded.
    async fn probe_health(&self, url: &str) -> HealthAnswer;
}

/// [`VmAccess`] over the SSH pool and an HTTP client.
pub struct LiveVms {
    pub ssh: SshPool,
    http: reqwest::Client,
}

impl LiveVms {
    pub fn new() -> Self {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Self { ssh: SshPool::new(), http }
    }
}

impl Default for LiveVms {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl VmAccess for LiveVms {
    async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, SshError> {
        self.ssh.exec(target, command, stdin, timeout, on_output).await
    }

    async fn write_file(
        &self,
        target: &SshTarget,
        path: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
        timeout: Duration,
    ) -> Result<(), SshError> {
        self.ssh.write_file(target, path, contents, mode, owner, timeout).await
    }

    async fn exec_stream(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<crate::ssh::ByteStream, SshError> {
        self.ssh.exec_stream(target, command, timeout).await
    }

    async fn forget(&self, host: &str) {
        self.ssh.forget(host).await;
    }

    async fn probe_health(&self, url: &str) -> HealthAnswer {
        match self.http.get(url).timeout(Duration::from_secs(5)).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = read_capped(resp, MAX_HEALTH_BODY).await;
                parse_health(status, &body)
            }
            Err(e) => HealthAnswer {
                healthy: false,
                alive: false,
                last_heartbeat_ms: 0,
                summary: format!("no answer: {}", error_chain(&e)),
            },
        }
    }
}

/// code-server's health answer is a few dozen bytes; anything past this is not read.
const MAX_HEALTH_BODY: usize = 16 * 1024;

/// Reads at most `cap` bytes of a body, as text.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    crate::text::lossy(&body)
}

/// What code-server's `/healthz` said.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthAnswer {
    pub healthy: bool,
    /// code-server saw a client within its heartbeat interval (a minute): someone is using it.
    pub alive: bool,
    /// Last heartbeat, Unix milliseconds; 0 when code-server saw no activity yet.
    pub last_heartbeat_ms: i64,
    pub summary: String,
}

/// Parses code-server's `/healthz` body: `{"status":"alive"|"expired","lastHeartbeat":ms}`.
pub fn parse_health(status: u16, body: &str) -> HealthAnswer {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let state = v.get("status").and_then(|s| s.as_str()).unwrap_or("");
    let hb = v.get("lastHeartbeat").and_then(|h| h.as_i64()).unwrap_or(0);
    let healthy = status == 200 && (state == "alive" || state == "expired");
    HealthAnswer {
        healthy,
        alive: healthy && state == "alive",
        last_heartbeat_ms: hb,
        summary: format!("HTTP {status} {}", crate::text::head(body, 200)),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_parsing() {
        let h = parse_health(200, r#"{"status":"alive","lastHeartbeat":1700000000000}"#);
        assert!(h.healthy && h.alive);
        assert_eq!(h.last_heartbeat_ms, 1_700_000_000_000);
        let h = parse_health(200, r#"{"status":"expired","lastHeartbeat":0}"#);
        assert!(h.healthy && !h.alive);
        assert!(!parse_health(502, "bad gateway").healthy);
        let long = parse_health(500, &"é".repeat(500));
        assert!(long.summary.len() <= 220);
    }
}
