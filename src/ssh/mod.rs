//! The SSH edge (russh client): per-resource ed25519 keys, host keys pinned from the
//! instance's guest attributes (never trusted on first use), one pooled connection per VM,
//! exec with a time limit and streamed output, and files written with their content sent
//! over stdin so it never appears on a command line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

/// An SSH key pair in OpenSSH formats.
#[derive(Clone)]
pub struct SshKeyPair {
    pub private_openssh: String,
    pub public_openssh: String,
}

/// A new ed25519 key pair.
pub fn generate_keypair(comment: &str) -> SshKeyPair {
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    SshKeyPair {
        private_openssh: key.to_openssh(LineEnding::LF).map(|z| z.to_string()).unwrap_or_default(),
        public_openssh: key.public_key().to_openssh().unwrap_or_default(),
    }
}

fn parse_public(s: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(s.trim()).map_err(|e| SshError::Key(format!("not an OpenSSH public key: {e}")))
}

/// `SHA256:...` fingerprint of an OpenSSH public key, as `ssh-keygen -lf` prints it.
pub fn host_key_fingerprint(public_openssh: &str) -> Result<String, SshError> {
    Ok(parse_public(public_openssh)?.fingerprint(HashAlg::Sha256).to_string())
}

/// POSIX single-quote quoting: safe for any string, including quotes, `$(...)`, `;` and
/// newlines.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The pinned host key, `ssh-ed25519 AAAA...`.
    pub pinned_host_key: String,
    pub private_key_openssh: String,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What a command produced.
#[derive(Clone, Debug, Default)]
pub struct ExecOutput {
    pub exit_status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Output as it streams in.
pub enum OutputChunk<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

#[derive(thiserror::Error, Debug, Clone)]
pub enum SshError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("host key mismatch at {host}: expected {expected}, presented {presented}")]
    HostKeyMismatch { host: String, expected: String, presented: String },
    #[error("SSH authentication as {user} at {host} failed")]
    AuthFailed { host: String, user: String },
    #[error("{what} did not finish within {}s", limit.as_secs())]
    Timeout { what: String, limit: Duration },
    #[error("SSH channel: {0}")]
    Channel(String),
    #[error("SSH key: {0}")]
    Key(String),
}

struct Verifier {
    expected: PublicKey,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_public_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_public_key else {
            *self.presented.lock().expect("verifier lock") = Some("a certificate".into());
            return Ok(false);
        };
        let ok = key.key_data() == self.expected.key_data();
        if !ok {
            *self.presented.lock().expect("verifier lock") = Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(ok)
    }
}

type Key = (String, u16, String, String);
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Handle<Verifier>>>>>;

/// Pooled SSH connections, one per (host, port, user, pinned key). Cheap to clone.
#[derive(Clone, Default)]
pub struct SshPool {
    slots: Arc<Mutex<HashMap<Key, Slot>>>,
    connects: Arc<std::sync::atomic::AtomicU64>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl SshPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections made so far (reuse shows as a count that does not grow).
    pub fn connects(&self) -> u64 {
        self.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn slot(&self, t: &SshTarget) -> Slot {
        let key = (t.host.clone(), t.port, t.user.clone(), t.pinned_host_key.trim().to_string());
        self.slots.lock().expect("pool lock").entry(key).or_default().clone()
    }

    async fn connect(&self, t: &SshTarget) -> Result<Arc<Handle<Verifier>>, SshError> {
        let expected = parse_public(&t.pinned_host_key)?;
        let presented = Arc::new(Mutex::new(None));
        let config = Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            ..Default::default()
        });
        let verifier = Verifier { expected: expected.clone(), presented: presented.clone() };
        let connecting = client::connect(config, (t.host.as_str(), t.port), verifier);
        let result = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.map_err(|_| SshError::Timeout {
            what: format!("SSH connection to {}:{}", t.host, t.port),
            limit: CONNECT_TIMEOUT,
        })?;
        let mut handle = match result {
            Ok(h) => h,
            Err(e) => {
                if let Some(p) = presented.lock().expect("verifier lock").take() {
                    return Err(SshError::HostKeyMismatch {
                        host: t.host.clone(),
                        expected: expected.fingerprint(HashAlg::Sha256).to_string(),
                        presented: p,
                    });
                }
                return Err(SshError::Connect(format!("{}:{}: {e}", t.host, t.port)));
            }
        };
        self.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key =
            PrivateKey::from_openssh(t.private_key_openssh.as_bytes()).map_err(|e| SshError::Key(e.to_string()))?;
        let auth = handle
            .authenticate_publickey(&t.user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await
            .map_err(|e| SshError::Connect(e.to_string()))?;
        if !auth.success() {
            return Err(SshError::AuthFailed { host: t.host.clone(), user: t.user.clone() });
        }
        Ok(Arc::new(handle))
    }

    async fn handle(&self, t: &SshTarget, fresh: bool) -> Result<Arc<Handle<Verifier>>, SshError> {
        let slot = self.slot(t);
        let mut guard = slot.lock().await;
        if !fresh && let Some(h) = guard.as_ref().filter(|h| !h.is_closed()) {
            return Ok(h.clone());
        }
        let h = self.connect(t).await?;
        *guard = Some(h.clone());
        Ok(h)
    }

    /// Runs `command` with optional stdin (then EOF), streaming output to `on_output`,
    /// bounded by `timeout`. A broken pooled connection is replaced once, transparently.
    pub async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_output: Option<&(dyn Fn(OutputChunk<'_>) + Send + Sync)>,
    ) -> Result<ExecOutput, SshError> {
        tracing::debug!(host = %target.host, command, "ssh exec");
        let run = async {
            let handle = self.handle(target, false).await?;
            let channel = match handle.channel_open_session().await {
                Ok(c) => c,
                Err(_) => {
                    // The pooled connection died (VM restarted, network blip): reconnect once.
                    let handle = self.handle(target, true).await?;
                    handle.channel_open_session().await.map_err(|e| SshError::Channel(e.to_string()))?
                }
            };
            run_channel(channel, command, stdin, on_output).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                // Dropping the connection ends the remote command with it.
                self.forget(&target.host).await;
                Err(SshError::Timeout { what: format!("command on {}", target.host), limit: timeout })
            }
        }
    }

    /// Writes a file atomically with mode and owner; the content travels over stdin only.
    pub async fn write_file(
        &self,
        target: &SshTarget,
        path: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
        timeout: Duration,
    ) -> Result<(), SshError> {
        let command = write_file_command(path, mode, owner);
        let out = self.exec(target, &command, Some(contents), timeout, None).await?;
        if out.exit_status != 0 {
            return Err(SshError::Channel(format!(
                "writing {path} failed (exit {}): {}",
                out.exit_status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Drops pooled connections to a host.
    pub async fn forget(&self, host: &str) {
        let slots: Vec<Slot> = {
            let mut map = self.slots.lock().expect("pool lock");
            let keys: Vec<Key> = map.keys().filter(|k| k.0 == host).cloned().collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        for s in slots {
            if let Ok(mut g) = s.try_lock()
                && let Some(h) = g.take()
            {
                let _ = h.disconnect(Disconnect::ByApplication, "", "en").await;
            }
        }
    }
}

/// The remote command for [`SshPool::write_file`]: no content, only the quoted path.
pub fn write_file_command(path: &str, mode: u32, owner: Option<&str>) -> String {
    let chown = match owner {
        Some(o) => format!("chown -- {}: \"$t\"; ", shell_quote(o)),
        None => String::new(),
    };
    let body = format!(
        "set -e; umask 077; d=$(dirname -- \"$1\"); [ -d \"$d\" ] || install -d -m 0755 -- \"$d\"; t=$(mktemp -- \"$1.XXXXXX\"); trap 'rm -f -- \"$t\"' EXIT; cat > \"$t\"; chmod {mode:o} -- \"$t\"; {chown}mv -f -- \"$t\" \"$1\"; trap - EXIT"
    );
    format!("PROJECTVM_OPERATOR=1 sudo -n sh -c {} sh {}", shell_quote(&body), shell_quote(path))
}

async fn run_channel(
    mut channel: russh::Channel<client::Msg>,
    command: &str,
    stdin: Option<&[u8]>,
    on_output: Option<&(dyn Fn(OutputChunk<'_>) + Send + Sync)>,
) -> Result<ExecOutput, SshError> {
    let ch = |e: russh::Error| SshError::Channel(e.to_string());
    channel.exec(true, command).await.map_err(ch)?;
    if let Some(input) = stdin {
        channel.data(input).await.map_err(ch)?;
    }
    channel.eof().await.map_err(ch)?;
    let mut out = ExecOutput::default();
    let mut exit = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { ref data } => {
                out.stdout.extend_from_slice(data);
                if let Some(cb) = on_output {
                    cb(OutputChunk::Stdout(data));
                }
            }
            ChannelMsg::ExtendedData { ref data, ext: 1 } => {
                out.stderr.extend_from_slice(data);
                if let Some(cb) = on_output {
                    cb(OutputChunk::Stderr(data));
                }
            }
            ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                return Err(SshError::Channel(format!("remote command killed by signal {signal_name:?}")));
            }
            _ => {}
        }
    }
    out.exit_status =
        exit.ok_or_else(|| SshError::Channel("the connection closed before the command exited".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn quoting_survives_a_real_shell() {
        for s in [
            "plain",
            "a; rm -rf /",
            "$(touch /tmp/x)",
            "`id`",
            "it's",
            "\"dq\"",
            "line\nbreak",
            "back\\slash",
            "",
            "'''",
        ] {
            let out = Command::new("/bin/sh").arg("-c").arg(format!("printf %s {}", shell_quote(s))).output().unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn keys_are_valid_openssh_and_fingerprints_match_ssh_keygen() {
        let pair = generate_keypair("test@projectvm");
        assert!(pair.public_openssh.starts_with("ssh-ed25519 "));
        assert!(pair.private_openssh.contains("BEGIN OPENSSH PRIVATE KEY"));
        let dir = std::env::temp_dir().join(format!("pvm-ssh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pubf = dir.join("k.pub");
        std::fs::write(&pubf, format!("{}\n", pair.public_openssh)).unwrap();
        if let Ok(out) = Command::new("ssh-keygen").arg("-lf").arg(&pubf).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let fp = host_key_fingerprint(&pair.public_openssh).unwrap();
            assert!(text.contains(&fp), "{text} vs {fp}");
        }
        let privf = dir.join("k");
        std::fs::write(&privf, &pair.private_openssh).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&privf, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Ok(out) = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&privf).output() {
            assert!(
                String::from_utf8_lossy(&out.stdout)
                    .starts_with(pair.public_openssh.split(' ').take(2).collect::<Vec<_>>().join(" ").as_str())
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(host_key_fingerprint("not a key").is_err());
    }

    #[test]
    fn write_command_never_carries_content_and_quotes_the_path() {
        let cmd = write_file_command("/home/project/it's $(x)/file", 0o600, Some("project"));
        assert!(cmd.contains("chmod 600"));
        assert!(cmd.ends_with(&shell_quote("/home/project/it's $(x)/file")));
        // Runs for real against a local directory (as whoever runs the tests).
        let dir = std::env::temp_dir().join(format!("pvm-write-{}", std::process::id()));
        let path = dir.join("sub/secret");
        let local =
            write_file_command(path.to_str().unwrap(), 0o600, None).replace("PROJECTVM_OPERATOR=1 sudo -n ", "");
        let mut child =
            Command::new("/bin/sh").arg("-c").arg(&local).stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"tok'$(x)\n").unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&path).unwrap(), b"tok'$(x)\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
