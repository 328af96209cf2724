//! Key material: the operator's ed25519 key pairs and the host keys it pins.

use russh::keys::ssh_encoding::base64::{Base64, Encoding as _};
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};

use super::{SshError, SshKeyPair};

/// A new ed25519 key pair; `comment` ends up after the public key and inside the private one.
pub fn generate_keypair(comment: &str) -> SshKeyPair {
    let mut seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment(comment);
    SshKeyPair {
        private_openssh: key
            .to_openssh(LineEnding::LF)
            .map(|pem| pem.to_string())
            .expect("an unencrypted ed25519 key always encodes"),
        public_openssh: key.public_key().to_openssh().expect("an ed25519 public key always encodes"),
    }
}

/// Parses a public key given as an OpenSSH line (`ssh-ed25519 AAAA... comment`) or as the bare
/// base64 blob (what the guest agent publishes under `hostkeys/` on some images).
pub(crate) fn parse_public(s: &str) -> Result<PublicKey, SshError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(SshError::Key("empty public key".into()));
    }
    if s.contains(char::is_whitespace) {
        return PublicKey::from_openssh(s).map_err(|e| SshError::Key(format!("not an OpenSSH public key: {e}")));
    }
    let blob = Base64::decode_vec(s).map_err(|e| SshError::Key(format!("public key blob is not base64: {e}")))?;
    PublicKey::from_bytes(&blob).map_err(|e| SshError::Key(format!("not an SSH public key blob: {e}")))
}

/// The `SHA256:<base64, no padding>` fingerprint of a public key, as `ssh-keygen -lf` prints it.
/// Accepts an OpenSSH line or the bare base64 blob.
pub fn host_key_fingerprint(public_openssh_or_base64: &str) -> Result<String, SshError> {
    Ok(fingerprint(&parse_public(public_openssh_or_base64)?))
}

pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

pub(crate) fn parse_private(openssh: &str) -> Result<PrivateKey, SshError> {
    let key = PrivateKey::from_openssh(openssh.trim().as_bytes())
        .map_err(|e| SshError::Key(format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(SshError::Key("the private key is passphrase-protected".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("pvm-ssh-keys-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn generated_keys_are_accepted_by_ssh_keygen() {
        let pair = generate_keypair("test@projectvm");
        assert!(pair.public_openssh.starts_with("ssh-ed25519 AAAA"));
        assert!(pair.public_openssh.ends_with(" test@projectvm"));
        assert!(pair.private_openssh.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert_ne!(generate_keypair("x").public_openssh, generate_keypair("x").public_openssh);

        let dir = TempDir::new("y");
        let f = dir.0.join("id");
        std::fs::write(&f, &pair.private_openssh).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&f).output().expect("ssh-keygen is installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let derived = String::from_utf8(out.stdout).unwrap();
        let ours: Vec<&str> = pair.public_openssh.split(' ').take(2).collect();
        let theirs: Vec<&str> = derived.split_whitespace().take(2).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let dir = TempDir::new("lf");
        // Our own key and one ssh-keygen made.
        let ours = generate_keypair("fp@projectvm").public_openssh;
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "theirs", "-f"])
            .arg(dir.0.join("theirs"))
            .status()
            .expect("ssh-keygen is installed");
        assert!(st.success());
        let theirs = std::fs::read_to_string(dir.0.join("theirs.pub")).unwrap();
        for (i, key) in [ours, theirs].into_iter().enumerate() {
            let f = dir.0.join(format!("k{i}.pub"));
            std::fs::write(&f, format!("{}\n", key.trim())).unwrap();
            let out = Command::new("ssh-keygen").arg("-lf").arg(&f).output().unwrap();
            assert!(out.status.success());
            let expected = String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_string();
            assert!(expected.starts_with("SHA256:") && !expected.ends_with('='));
            assert_eq!(host_key_fingerprint(&key).unwrap(), expected);
            // The bare base64 blob gives the same fingerprint.
            let blob = key.split_whitespace().nth(1).unwrap();
            assert_eq!(host_key_fingerprint(blob).unwrap(), expected);
            assert_eq!(host_key_fingerprint(&format!("  {}\n", key.trim())).unwrap(), expected);
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        for bad in ["", "   ", "not a key", "ssh-ed25519 !!!", "AAAA", "c3NoLWVkMjU1MTk="] {
            assert!(matches!(host_key_fingerprint(bad), Err(SshError::Key(_))), "{bad:?}");
        }
        assert!(parse_private("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n").is_err());
        assert!(parse_private(&generate_keypair("ok").private_openssh).is_ok());
    }
}
