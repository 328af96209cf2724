//! The SSH edge against a real OpenSSH server started on loopback by the test: pinned host
//! keys, key authentication, pooled connections, streamed output, time limits, and files
//! written without their content on any command line. Needs root and /usr/sbin/sshd
//! (testbed/scripts/install-host-deps.sh installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projectvm::ssh::{OutputChunk, SshError, SshPool, SshTarget, generate_keypair, write_file_command};

struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    host_key: String,
    client_key: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sshd(name: &str) -> Sshd {
    assert!(Path::new("/usr/sbin/sshd").exists(), "sshd missing: run testbed/scripts/install-host-deps.sh");
    let dir = std::env::temp_dir().join(format!("pvm-sshd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hk = dir.join("host_ed25519");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&hk).status().unwrap();
    assert!(st.success());
    let client = generate_keypair("test@projectvm");
    std::fs::write(dir.join("authorized_keys"), format!("{}\n", client.public_openssh)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPidFile none\n",
            hk = hk.display(),
            ak = dir.join("authorized_keys").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let host_key = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap().trim().to_string();
    Sshd { child, dir, port, host_key, client_key: client.private_openssh }
}

fn target(s: &Sshd) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port: s.port,
        user: "root".into(),
        pinned_host_key: s.host_key.clone(),
        private_key_openssh: s.client_key.clone(),
    }
}

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn exec_streams_reuses_and_bounds() {
    let s = sshd("exec");
    let pool = SshPool::new();
    let t = target(&s);

    let out = pool.exec(&t, "cat; echo out; echo err >&2; exit 3", Some(b"from stdin\n"), T, None).await.unwrap();
    assert_eq!(out.exit_status, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\nout\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // Output arrives while the command still runs.
    let first_chunk_at = Arc::new(Mutex::new(None));
    let seen = first_chunk_at.clone();
    let started = Instant::now();
    let cb = move |c: OutputChunk<'_>| {
        if let OutputChunk::Stderr(_) = c {
            seen.lock().unwrap().get_or_insert(started.elapsed());
        }
    };
    pool.exec(&t, "echo early >&2; sleep 1; echo late >&2", None, T, Some(&cb)).await.unwrap();
    let first = first_chunk_at.lock().unwrap().expect("streamed output");
    assert!(first < Duration::from_millis(900), "first chunk after {first:?}");

    // One connection served all of that.
    assert_eq!(pool.connects(), 1);

    // A command past its limit is cut off, and the pool recovers.
    let err = pool.exec(&t, "sleep 30", None, Duration::from_millis(500), None).await.unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
    let out = pool.exec(&t, "echo again", None, T, None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
}

#[tokio::test]
async fn wrong_host_key_is_refused_before_anything_runs() {
    let s = sshd("hostkey");
    let pool = SshPool::new();
    let mut t = target(&s);
    let other = generate_keypair("impostor");
    t.pinned_host_key = other.public_openssh;
    let marker = s.dir.join("ran");
    let err = pool.exec(&t, &format!("touch {}", marker.display()), None, T, None).await.unwrap_err();
    match err {
        SshError::HostKeyMismatch { expected, presented, .. } => {
            assert!(expected.starts_with("SHA256:") && presented.starts_with("SHA256:"));
            assert_ne!(expected, presented);
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
    assert!(!marker.exists(), "a command ran despite the host key mismatch");
}

#[tokio::test]
async fn wrong_client_key_fails_authentication() {
    let s = sshd("auth");
    let pool = SshPool::new();
    let mut t = target(&s);
    t.private_key_openssh = generate_keypair("stranger").private_openssh;
    let err = pool.exec(&t, "true", None, T, None).await.unwrap_err();
    assert!(matches!(err, SshError::AuthFailed { .. }), "{err:?}");
}

#[tokio::test]
async fn files_are_written_with_mode_and_never_on_a_command_line() {
    let s = sshd("write");
    let pool = SshPool::new();
    let t = target(&s);
    let path = s.dir.join("nested/dir/secret file");
    let secret = "tok'en $(id) `x` \"q\"\nsecond line\n";
    assert!(!write_file_command(path.to_str().unwrap(), 0o600, Some("root")).contains("tok'en"));

    // Sample every process's arguments while a large payload is written.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut seen = String::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
            seen.push_str(&String::from_utf8_lossy(&out.stdout));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    });
    let big = format!("{secret}{}", "x".repeat(4 << 20));
    pool.write_file(&t, path.to_str().unwrap(), big.as_bytes(), 0o600, Some("root"), T).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.join().unwrap();
    assert!(!seen.contains("tok'en"), "content appeared in a process's arguments");

    let written = std::fs::read(&path).unwrap();
    assert_eq!(written, big.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Overwriting is atomic and keeps the mode.
    pool.write_file(&t, path.to_str().unwrap(), secret.as_bytes(), 0o640, None, T).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
}
