//! The SSH edge (russh client): per-resource ed25519 keys, host keys pinned from the
//! instance's guest attributes (never trusted on first use), one pooled connection per VM,
//! exec with a time limit and streamed output, and files written with their content sent
//! over stdin so it never appears on a command line.
//!
//! - [`keys`]: key generation, parsing and fingerprints.
//! - [`pool`]: [`SshPool`], connections, exec and file writes.
//! - [`quote`]: the remote side of [`SshPool::write_file`].
//!
//! Nothing here logs stdin: it carries tokens and passwords. Commands are logged at debug
//! level only, and commands never carry secrets (see [`SshPool::write_file`]).

use std::time::Duration;

mod keys;
mod pool;
mod quote;

pub use keys::{generate_keypair, host_key_fingerprint};
pub use pool::{MAX_OUTPUT_BYTES, SshPool};
pub use quote::write_file_command;

/// A command's output as it streams in, for copying large files without holding them.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// An SSH key pair in OpenSSH formats.
#[derive(Clone)]
pub struct SshKeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` PEM, unencrypted.
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA... comment`.
    pub public_openssh: String,
}

impl std::fmt::Debug for SshKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKeyPair").field("public_openssh", &self.public_openssh).finish_non_exhaustive()
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The pinned host key: `ssh-ed25519 AAAA...` or just the base64 blob. The server must
    /// present exactly this key.
    pub pinned_host_key: String,
    /// The client's private key, OpenSSH PEM.
    pub private_key_openssh: String,
}

impl std::fmt::Debug for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("pinned_host_key", &self.pinned_host_key)
            .finish_non_exhaustive()
    }
}

/// What a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_status: u32,
    /// The last [`pool::MAX_OUTPUT_BYTES`] of standard output.
    pub stdout: Vec<u8>,
    /// The last [`pool::MAX_OUTPUT_BYTES`] of standard error.
    pub stderr: Vec<u8>,
    /// Bytes of output dropped from the front of either stream to keep those bounds.
    pub dropped: u64,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_status == 0
    }
}

/// Output as it streams in.
#[derive(Clone, Copy, Debug)]
pub enum OutputChunk<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

#[derive(thiserror::Error, Debug, Clone)]
pub enum SshError {
    #[error("cannot connect over SSH: {0}")]
    Connect(String),
    /// Fingerprints (`SHA256:...`) of the pinned key and of the key the server presented.
    #[error("SSH host key mismatch at {host}: expected {expected}, the server presented {presented}")]
    HostKeyMismatch { host: String, expected: String, presented: String },
    #[error("SSH authentication as {user} at {host} failed")]
    AuthFailed { host: String, user: String },
    /// The VM refused the login because it has not finished booting; `said` is its words.
    #[error("the VM at {host} is still booting: it said {said:?}")]
    Booting { host: String, said: String },
    /// A command ran past its time limit.
    #[error("{what} did not finish within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// The VM did not answer in time: connecting, authenticating or opening a session.
    #[error("{what}: no answer within {limit:?}")]
    Unreachable { what: String, limit: Duration },
    #[error("SSH channel: {0}")]
    Channel(String),
    #[error("SSH key: {0}")]
    Key(String),
}

impl SshError {
    /// Whether the VM may simply not be ready yet (sshd still starting, the guest not yet
    /// holding the operator's key): worth retrying soon. A host key mismatch, a bad key or a
    /// command that failed is not.
    pub fn is_not_ready(&self) -> bool {
        matches!(
            self,
            SshError::Connect(_)
                | SshError::Unreachable { .. }
                | SshError::AuthFailed { .. }
                | SshError::Booting { .. }
        )
    }
}
