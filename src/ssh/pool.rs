//! Pooled, authenticated connections and what runs over them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::time::Instant;

use super::keys::{fingerprint, parse_private, parse_public};
use super::quote::write_file_command;
use super::{ExecOutput, OutputChunk, SshError, SshTarget};

/// TCP connect, key exchange and host key check; and, separately, authentication.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Opening a session channel on a pooled connection; longer means the connection is dead.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle pooled connection sends a keepalive this often and is dropped after
/// `KEEPALIVE_MAX` unanswered ones.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_MAX: usize = 3;
/// After a command's time limit: how long to spend asking the server to stop it.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Accepts the server only if it presents exactly the pinned key.
struct PinnedHostKey {
    expected: PublicKey,
    /// The fingerprint of a refused key, for the error.
    refused: Arc<Mutex<Option<String>>>,
    /// What the server said before authentication ended (sshd sends PAM's messages, such as
    /// pam_nologin's "System is booting up", as a banner before it closes the connection).
    banner: Arc<Mutex<Option<String>>>,
}

/// At most this much of a server's banner is kept.
const MAX_BANNER_BYTES: usize = 1024;

/// Whether a banner says the VM has not finished booting (pam_nologin's answer while
/// `/run/nologin` exists).
fn says_booting(banner: &str) -> bool {
    let b = banner.to_ascii_lowercase();
    b.contains("system is booting up") || b.contains("not permitted to log in yet")
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn auth_banner(&mut self, banner: &str, _session: &mut client::Session) -> Result<(), Self::Error> {
        *self.banner.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::text::head(banner.trim(), MAX_BANNER_BYTES).to_string());
        Ok(())
    }

    async fn check_server_key(&mut self, presented: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let refused = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.expected.key_data() => {
                return Ok(true);
            }
            PublicKeyOrCertificate::PublicKey { key, .. } => fingerprint(key),
            PublicKeyOrCertificate::Certificate(cert) => {
                format!("a certificate for {}", fingerprint(&PublicKey::from(cert.public_key().clone())))
            }
        };
        *self.refused.lock().expect("host key lock") = Some(refused);
        Ok(false)
    }
}

type Conn = Arc<Handle<PinnedHostKey>>;
/// One connection per key; the async lock serialises (re)connecting.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    user: String,
    pinned: String,
}

impl PoolKey {
    fn of(t: &SshTarget) -> Self {
        let pinned = parse_public(&t.pinned_host_key)
            .map(|k| fingerprint(&k))
            .unwrap_or_else(|_| t.pinned_host_key.trim().to_string());
        PoolKey { host: t.host.clone(), port: t.port, user: t.user.clone(), pinned }
    }
}

#[derive(Default)]
struct Inner {
    slots: Mutex<HashMap<PoolKey, Slot>>,
    connects: AtomicU64,
}

/// Pooled SSH connections, one per (host, port, user, pinned host key). Cheap to clone; clones
/// share the pool.
#[derive(Clone, Default)]
pub struct SshPool {
    inner: Arc<Inner>,
}

impl SshPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// SSH connections established so far (past the host key check). Reuse shows as a count
    /// that does not grow.
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Runs `command` (given to the remote user's shell as is) with optional stdin bytes (then
    /// EOF), streaming output to `on_output` as it arrives, bounded by `timeout` (connecting
    /// included). On timeout the remote command is sent SIGTERM, the channel is closed, and
    /// [`SshError::Timeout`] is returned; the connection stays pooled for other commands.
    ///
    /// A pooled connection that turns out to be broken is dropped and re-established once,
    /// transparently. A command whose connection breaks while it runs is not re-run: that
    /// is a [`SshError::Channel`] error.
    pub async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_output: Option<&(dyn Fn(OutputChunk<'_>) + Send + Sync)>,
    ) -> Result<ExecOutput, SshError> {
        // Never log stdin: it carries tokens and passwords.
        tracing::debug!(
            host = %target.host,
            port = target.port,
            user = %target.user,
            command,
            stdin_bytes = stdin.map_or(0, <[u8]>::len),
            "ssh exec"
        );
        let deadline = Instant::now() + timeout;
        let channel = self.open_channel_by(target, deadline, timeout).await?;
        let (mut reader, writer) = channel.split();
        match tokio::time::timeout_at(deadline, run(&mut reader, &writer, command, stdin, on_output)).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => {
                // Do not leave a half-used session open on the pooled connection.
                let _ = tokio::time::timeout(CANCEL_GRACE, writer.close()).await;
                Err(e)
            }
            Err(_) => {
                tracing::debug!(host = %target.host, command, ?timeout, "ssh exec timed out; stopping it");
                let _ = tokio::time::timeout(CANCEL_GRACE, async {
                    let _ = writer.signal(Sig::TERM).await;
                    let _ = writer.close().await;
                })
                .await;
                Err(SshError::Timeout { what: format!("command on {}", target.host), limit: timeout })
            }
        }
    }

    /// Runs `command` and hands its standard output over as a stream of chunks, read only
    /// as fast as the consumer takes them (the SSH window then holds the remote side back),
    /// so a large file never sits in memory. The stream ends with an error when the command
    /// exits non-zero (its stderr's tail is the message), is killed, or passes `timeout`
    /// (connecting included).
    pub async fn exec_stream(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<super::ByteStream, SshError> {
        tracing::debug!(host = %target.host, port = target.port, user = %target.user, command, "ssh exec (streamed)");
        let deadline = Instant::now() + timeout;
        let channel = self.open_channel_by(target, deadline, timeout).await?;
        let (mut reader, writer) = channel.split();
        let err = |e: russh::Error| SshError::Channel(e.to_string());
        writer.exec(true, command).await.map_err(err)?;
        writer.eof().await.map_err(err)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(STREAM_CHUNKS);
        let host = target.host.clone();
        tokio::spawn(async move {
            let pump = pump_stdout(&mut reader, &tx);
            let ended = match tokio::time::timeout_at(deadline, pump).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = tokio::time::timeout(CANCEL_GRACE, writer.signal(Sig::TERM)).await;
                    Err(format!("reading from {host} took longer than {}", crate::clock::humanize(timeout)))
                }
            };
            if let Err(message) = ended {
                let _ = tx.send(Err(std::io::Error::other(message))).await;
            }
            let _ = tokio::time::timeout(CANCEL_GRACE, writer.close()).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Writes `contents` to `path` on the target, as root (`sudo -n`), atomically (a temporary
    /// file in the same directory, renamed over the target) with `mode` and, when given,
    /// `owner` (`user` or `user:group`; missing parent directories are created `0755` and
    /// given to the owner too). The content travels over stdin only, never on a command line.
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
        if !out.success() {
            return Err(SshError::Channel(format!(
                "writing {path} failed (exit {}): {}",
                out.exit_status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Drops (and disconnects) pooled connections to `host`, for when the instance was
    /// recreated or its host key changed. Commands running over them fail.
    pub async fn forget(&self, host: &str) {
        let slots: Vec<Slot> = {
            let mut map = self.inner.slots.lock().expect("pool lock");
            let keys: Vec<PoolKey> = map.keys().filter(|k| k.host == host).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for slot in slots {
            // A slot that is being (re)connected right now is no longer in the map; its
            // connection serves the one command that made it and is dropped with it.
            let conn = slot.try_lock().ok().and_then(|mut g| g.take());
            if let Some(conn) = conn {
                let _ = conn.disconnect(Disconnect::ByApplication, "", "en").await;
            }
        }
    }

    fn slot(&self, t: &SshTarget) -> Slot {
        let mut map = self.inner.slots.lock().expect("pool lock");
        // Forget connections that died (VM gone, keepalive failed) so the map does not grow.
        map.retain(|_, slot| slot.try_lock().map_or(true, |g| g.as_ref().is_none_or(|c| !c.is_closed())));
        map.entry(PoolKey::of(t)).or_default().clone()
    }

    /// The pooled connection, or a new one when there is none, it is closed, or it is `stale`.
    /// Also says whether the connection was reused.
    async fn connection(&self, slot: &Slot, t: &SshTarget, stale: Option<&Conn>) -> Result<(Conn, bool), SshError> {
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.is_closed()
            && stale.is_none_or(|s| !Arc::ptr_eq(s, conn))
        {
            return Ok((conn.clone(), true));
        }
        // A stale connection is not disconnected here: other commands may still be using it.
        *guard = None;
        let conn = Arc::new(self.connect(t).await?);
        *guard = Some(conn.clone());
        Ok((conn, false))
    }

    /// A session channel, connecting first when needed, by `deadline` (`limit` is how long
    /// that was, for the error).
    async fn open_channel_by(
        &self,
        t: &SshTarget,
        deadline: Instant,
        limit: Duration,
    ) -> Result<Channel<Msg>, SshError> {
        match tokio::time::timeout_at(deadline, self.open_channel(t)).await {
            Ok(c) => c,
            Err(_) => Err(SshError::Unreachable {
                what: format!("connecting to {}:{} to run a command", t.host, t.port),
                limit,
            }),
        }
    }

    async fn open_channel(&self, t: &SshTarget) -> Result<Channel<Msg>, SshError> {
        let slot = self.slot(t);
        let (conn, reused) = self.connection(&slot, t, None).await?;
        let first = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, conn.channel_open_session()).await;
        match first {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(e)) if !reused => return Err(SshError::Channel(format!("opening a session on {}: {e}", t.host))),
            Err(_) if !reused => {
                return Err(SshError::Unreachable {
                    what: format!("opening an SSH session on {}", t.host),
                    limit: CHANNEL_OPEN_TIMEOUT,
                });
            }
            Ok(Err(e)) => tracing::debug!(host = %t.host, error = %e, "pooled SSH connection failed; reconnecting"),
            Err(_) => tracing::debug!(host = %t.host, "pooled SSH connection does not answer; reconnecting"),
        }
        let (conn, _) = self.connection(&slot, t, Some(&conn)).await?;
        match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, conn.channel_open_session()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(SshError::Channel(format!("opening a session on {}: {e}", t.host))),
            Err(_) => Err(SshError::Unreachable {
                what: format!("opening an SSH session on {}", t.host),
                limit: CHANNEL_OPEN_TIMEOUT,
            }),
        }
    }

    async fn connect(&self, t: &SshTarget) -> Result<Handle<PinnedHostKey>, SshError> {
        let expected = parse_public(&t.pinned_host_key)?;
        let key = parse_private(&t.private_key_openssh)?;
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        });
        let refused = Arc::new(Mutex::new(None));
        let banner = Arc::new(Mutex::new(None));
        let verifier = PinnedHostKey { expected: expected.clone(), refused: refused.clone(), banner: banner.clone() };
        let addr = format!("{}:{}", t.host, t.port);
        tracing::debug!(%addr, user = %t.user, "ssh connect");
        let handshake = client::connect(config, (t.host.as_str(), t.port), verifier);
        let mut handle = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Err(_) => {
                return Err(SshError::Unreachable {
                    what: format!("SSH connection to {addr}"),
                    limit: CONNECT_TIMEOUT,
                });
            }
            Ok(Err(e)) => {
                return Err(match refused.lock().expect("host key lock").take() {
                    Some(presented) => {
                        SshError::HostKeyMismatch { host: t.host.clone(), expected: fingerprint(&expected), presented }
                    }
                    None => SshError::Connect(format!("{addr}: {e}")),
                });
            }
            Ok(Ok(h)) => h,
        };
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        let auth = async {
            let hash = if key.algorithm().is_rsa() { handle.best_supported_rsa_hash().await?.flatten() } else { None };
            handle.authenticate_publickey(t.user.as_str(), PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await
        };
        let result = match tokio::time::timeout(CONNECT_TIMEOUT, auth).await {
            Err(_) => {
                Err(SshError::Unreachable { what: format!("SSH authentication at {addr}"), limit: CONNECT_TIMEOUT })
            }
            Ok(Err(e)) => Err(SshError::Connect(format!("{addr}: authentication: {e}"))),
            Ok(Ok(r)) if r.success() => Ok(()),
            Ok(Ok(_)) => Err(SshError::AuthFailed { host: t.host.clone(), user: t.user.clone() }),
        };
        if let Err(e) = result {
            let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
            // A refusal that says why (the VM is still booting) is not an authentication failure.
            let said = banner.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(said) = said.filter(|b| says_booting(b)) {
                return Err(SshError::Booting { host: t.host.clone(), said });
            }
            return Err(e);
        }
        Ok(handle)
    }
}

/// Starts `command`, feeds stdin while collecting output (both at once, so a command that
/// writes a lot before it reads all its input cannot stall the connection), and waits for its
/// exit status.
async fn run(
    reader: &mut ChannelReadHalf,
    writer: &ChannelWriteHalf<Msg>,
    command: &str,
    stdin: Option<&[u8]>,
    on_output: Option<&(dyn Fn(OutputChunk<'_>) + Send + Sync)>,
) -> Result<ExecOutput, SshError> {
    let err = |e: russh::Error| SshError::Channel(e.to_string());
    writer.exec(true, command).await.map_err(err)?;
    let send = async {
        if let Some(input) = stdin
            && !input.is_empty()
        {
            writer.data(input).await?;
        }
        writer.eof().await
    };
    let receive = collect(reader, on_output);
    tokio::pin!(send, receive);
    let mut sending = true;
    loop {
        tokio::select! {
            sent = &mut send, if sending => {
                sending = false;
                // The command may exit without reading its input; what it did is in the output.
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "ssh exec: stdin not fully delivered");
                }
            }
            out = &mut receive => return out,
        }
    }
}

/// Chunks a streamed command may have in flight towards its consumer.
const STREAM_CHUNKS: usize = 8;

/// Forwards a streamed command's stdout; `Err` says how it ended badly. A consumer that went
/// away ends it early (the command is then stopped with the channel).
async fn pump_stdout(
    reader: &mut ChannelReadHalf,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
) -> Result<(), String> {
    let mut stderr = Vec::new();
    let mut dropped = 0;
    let mut exit_status = None;
    let mut signal = None;
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } if tx.send(Ok(bytes::Bytes::copy_from_slice(&data))).await.is_err() => {
                return Ok(());
            }
            ChannelMsg::Data { .. } => {}
            ChannelMsg::ExtendedData { data, ext: 1 } => keep_tail(&mut stderr, &data, &mut dropped),
            ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
            ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(format!("{signal_name:?}")),
            ChannelMsg::Failure => return Err("the server refused to run the command".into()),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let said = crate::text::lossy(&stderr);
    let said = crate::text::tail(said.trim(), 1024);
    match (exit_status, signal) {
        (Some(0), _) => Ok(()),
        (Some(s), _) => Err(format!("the command exited with status {s}: {said}")),
        (None, Some(sig)) => Err(format!("the command was killed by signal {sig}: {said}")),
        (None, None) => Err("the connection closed before the command exited".into()),
    }
}

/// Output kept per stream: the last this many bytes. A command on a VM can print without
/// end; what matters for a message is its end, and the operator's memory must not grow with
/// a tenant's output.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Appends `data` to `buf`, keeping at most the last [`MAX_OUTPUT_BYTES`] (trimmed in steps,
/// so appending stays linear); counts what was dropped.
fn keep_tail(buf: &mut Vec<u8>, data: &[u8], dropped: &mut u64) {
    if data.len() >= MAX_OUTPUT_BYTES {
        *dropped += (buf.len() + data.len() - MAX_OUTPUT_BYTES) as u64;
        buf.clear();
        buf.extend_from_slice(&data[data.len() - MAX_OUTPUT_BYTES..]);
        return;
    }
    buf.extend_from_slice(data);
    if buf.len() > 2 * MAX_OUTPUT_BYTES {
        let cut = buf.len() - MAX_OUTPUT_BYTES;
        *dropped += cut as u64;
        buf.drain(..cut);
    }
}

fn trim_tail(buf: &mut Vec<u8>, dropped: &mut u64) {
    if buf.len() > MAX_OUTPUT_BYTES {
        let cut = buf.len() - MAX_OUTPUT_BYTES;
        *dropped += cut as u64;
        buf.drain(..cut);
    }
}

async fn collect(
    reader: &mut ChannelReadHalf,
    on_output: Option<&(dyn Fn(OutputChunk<'_>) + Send + Sync)>,
) -> Result<ExecOutput, SshError> {
    let mut out = ExecOutput::default();
    let mut exit_status = None;
    let mut signal = None;
    while let Some(msg) = reader.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                keep_tail(&mut out.stdout, &data, &mut out.dropped);
                if let Some(cb) = on_output {
                    cb(OutputChunk::Stdout(&data));
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                keep_tail(&mut out.stderr, &data, &mut out.dropped);
                if let Some(cb) = on_output {
                    cb(OutputChunk::Stderr(&data));
                }
            }
            ChannelMsg::ExitStatus { exit_status: s } => exit_status = Some(s),
            ChannelMsg::ExitSignal { signal_name, core_dumped, .. } => {
                signal = Some(format!("{signal_name:?}{}", if core_dumped { " (core dumped)" } else { "" }));
            }
            ChannelMsg::Failure => return Err(SshError::Channel("the server refused to run the command".into())),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    trim_tail(&mut out.stdout, &mut out.dropped);
    trim_tail(&mut out.stderr, &mut out.dropped);
    match (exit_status, signal) {
        (Some(s), _) => {
            out.exit_status = s;
            Ok(out)
        }
        (None, Some(sig)) => Err(SshError::Channel(format!(
            "the remote command was killed by signal {sig}; stderr: {}",
            crate::text::tail(String::from_utf8_lossy(&out.stderr).trim(), 1024)
        ))),
        (None, None) => Err(SshError::Channel("the connection closed before the command exited".into())),
    }
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn pam_nologin_banner_means_booting() {
        assert!(says_booting(
            "System is booting up. Unprivileged users are not permitted to log in yet. Please come back later."
        ));
        assert!(!says_booting("Welcome to Ubuntu 22.04"));
    }

    #[test]
    fn output_keeps_a_bounded_tail() {
        let mut buf = Vec::new();
        let mut dropped = 0;
        let chunk = vec![b'x'; 10_000];
        for _ in 0..100 {
            keep_tail(&mut buf, &chunk, &mut dropped);
            assert!(buf.len() <= 2 * MAX_OUTPUT_BYTES);
        }
        keep_tail(&mut buf, b"END", &mut dropped);
        trim_tail(&mut buf, &mut dropped);
        assert_eq!(buf.len(), MAX_OUTPUT_BYTES);
        assert!(buf.ends_with(b"END"));
        assert_eq!(dropped as usize + buf.len(), 100 * 10_000 + 3);
        // One huge chunk at once.
        let mut buf = Vec::new();
        let mut dropped = 0;
        keep_tail(&mut buf, &vec![b'y'; 5 * MAX_OUTPUT_BYTES], &mut dropped);
        assert_eq!(buf.len(), MAX_OUTPUT_BYTES);
        assert_eq!(dropped as usize, 4 * MAX_OUTPUT_BYTES);
    }
}
