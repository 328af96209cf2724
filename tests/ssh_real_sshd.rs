//! The SSH edge against a real OpenSSH server started on loopback by each test: pinned host
//! keys, key authentication, pooled connections, streamed output, time limits, and files
//! written without their content on any command line.
//!
//! Needs root and /usr/sbin/sshd (Debian/Ubuntu: `apt-get install -y openssh-server`; the
//! server is only ever started by these tests, on 127.0.0.1 with a private config).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projectvm::shell::shell_quote;
use projectvm::ssh::{
    OutputChunk, SshError, SshPool, SshTarget, generate_keypair, host_key_fingerprint, write_file_command,
};

struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    host_key: String,
    client_key: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for pid in self.session_pids() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sshd {
    fn start(name: &str) -> Sshd {
        assert!(Path::new("/usr/sbin/sshd").exists(), "/usr/sbin/sshd is missing: apt-get install -y openssh-server");
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
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nStrictModes no\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nPidFile none\nLogLevel INFO\n",
                hk = hk.display(),
                ak = dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // sshd insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let host_key = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap().trim().to_string();
        Sshd { child, dir, port, host_key, client_key: client.private_openssh }
    }

    fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "root".into(),
            pinned_host_key: self.host_key.clone(),
            private_key_openssh: self.client_key.clone(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Logins sshd accepted so far: one per SSH connection.
    fn logins(&self) -> usize {
        self.log().matches("Accepted publickey for root").count()
    }

    /// The per-connection sshd processes (children of the listener this test started).
    fn session_pids(&self) -> Vec<u32> {
        let me = self.child.id();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...
            let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { continue };
            if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(me) {
                pids.push(pid);
            }
        }
        pids
    }
}

fn running(pattern: &str) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.contains(pattern))
}

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn exec_returns_output_exit_status_and_takes_stdin() {
    let s = Sshd::start("exec");
    let pool = SshPool::new();
    let t = s.target();

    let out = pool.exec(&t, "cat; echo out; echo err >&2; exit 3", Some(b"from stdin\n"), T, None).await.unwrap();
    assert_eq!(out.exit_status, 3);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\nout\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // Binary stdin, larger than the SSH window, echoed back while it is still being sent; of
    // the output, only a bounded tail is kept (a VM can print without end).
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = pool.exec(&t, "cat; cat /dev/null >&2", Some(&big), T, None).await.unwrap();
    assert_eq!(out.exit_status, 0);
    let tail = &big[big.len() - projectvm::ssh::MAX_OUTPUT_BYTES..];
    assert!(out.stdout == tail, "kept {} bytes", out.stdout.len());
    assert_eq!(out.dropped as usize, big.len() - projectvm::ssh::MAX_OUTPUT_BYTES);

    // A command that ignores its input still completes.
    let out = pool.exec(&t, "echo ignored", Some(&big), T, None).await.unwrap();
    assert_eq!(out.stdout, b"ignored\n");

    // No stdin means EOF right away.
    let out = pool.exec(&t, "wc -c", None, T, None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // Quoted arguments reach the remote shell intact.
    let hostile = "it's $(touch /tmp/pvm-pwned); `id` \"q\"\nline";
    let out = pool.exec(&t, &format!("printf %s {}", shell_quote(hostile)), None, T, None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), hostile);

    // Everything above went over one connection.
    assert_eq!(pool.connects(), 1);
    assert_eq!(s.logins(), 1);
}

#[tokio::test]
async fn output_streams_while_the_command_runs() {
    let s = Sshd::start("stream");
    let pool = SshPool::new();
    let t = s.target();
    // (when, on stderr, bytes)
    type Seen = Vec<(Duration, bool, Vec<u8>)>;
    let chunks: Arc<Mutex<Seen>> = Arc::default();
    let seen = chunks.clone();
    let started = Instant::now();
    let cb = move |c: OutputChunk<'_>| {
        let (is_err, data) = match c {
            OutputChunk::Stdout(d) => (false, d),
            OutputChunk::Stderr(d) => (true, d),
        };
        seen.lock().unwrap().push((started.elapsed(), is_err, data.to_vec()));
    };
    let out = pool.exec(&t, "echo one; sleep 1; echo two >&2; sleep 1; echo three", None, T, Some(&cb)).await.unwrap();
    let total = started.elapsed();
    assert_eq!(out.stdout, b"one\nthree\n");
    assert_eq!(out.stderr, b"two\n");
    let chunks = chunks.lock().unwrap();
    let first = chunks.iter().find(|c| c.2.starts_with(b"one")).expect("first chunk");
    let second = chunks.iter().find(|c| c.1 && c.2.starts_with(b"two")).expect("stderr chunk");
    assert!(!first.1);
    assert!(first.0 + Duration::from_millis(1500) < total, "first chunk at {:?} of {total:?}", first.0);
    assert!(second.0 + Duration::from_millis(500) < total, "stderr chunk at {:?} of {total:?}", second.0);
}

#[tokio::test]
async fn a_command_past_its_limit_is_stopped_and_the_pool_goes_on() {
    let s = Sshd::start("timeout");
    let pool = SshPool::new();
    let t = s.target();
    pool.exec(&t, "true", None, T, None).await.unwrap();

    // A neighbour on the same connection is not disturbed by the timeout.
    let neighbour = {
        let (pool, t) = (pool.clone(), t.clone());
        tokio::spawn(async move { pool.exec(&t, "sleep 2; echo neighbour", None, T, None).await })
    };
    let started = Instant::now();
    let ticking = "while :; do echo tick-31415; sleep 0.2; done";
    let err = pool.exec(&t, ticking, None, Duration::from_millis(700), None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    match &err {
        SshError::Timeout { limit, .. } => assert_eq!(*limit, Duration::from_millis(700)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The remote command was stopped: its channel is closed (so its next write fails), and it
    // is sent SIGTERM (which sshd honours for non-root logins only; these tests log in as root).
    let deadline = Instant::now() + Duration::from_secs(5);
    while running("tick-31415") {
        assert!(Instant::now() < deadline, "the timed-out command still runs on the server: {}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = neighbour.await.unwrap().unwrap();
    assert_eq!(out.stdout, b"neighbour\n");

    let out = pool.exec(&t, "echo again", None, T, None).await.unwrap();
    assert_eq!(out.stdout, b"again\n");
    assert_eq!(pool.connects(), 1, "the timeout should not have cost the connection");
    assert_eq!(s.logins(), 1);
}

#[tokio::test]
async fn connections_are_reused_and_replaced_when_broken() {
    let s = Sshd::start("reuse");
    let pool = SshPool::new();
    let t = s.target();
    // Concurrent commands share the connection.
    let runs: Vec<_> = (0..5)
        .map(|i| {
            let (pool, t) = (pool.clone(), t.clone());
            tokio::spawn(async move { pool.exec(&t, &format!("sleep 0.3; echo {i}"), None, T, None).await })
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        assert_eq!(r.await.unwrap().unwrap().stdout, format!("{i}\n").as_bytes());
    }
    assert_eq!(pool.connects(), 1);
    assert_eq!(s.logins(), 1);

    // The server side of the pooled connection dies: the next command reconnects on its own.
    let sessions = s.session_pids();
    assert!(!sessions.is_empty());
    for pid in sessions {
        Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = pool.exec(&t, "echo back", None, T, None).await.unwrap();
    assert_eq!(out.stdout, b"back\n");
    assert_eq!(pool.connects(), 2);
    assert_eq!(s.logins(), 2);

    // forget() drops it on purpose.
    pool.forget("127.0.0.1").await;
    pool.exec(&t, "true", None, T, None).await.unwrap();
    assert_eq!(pool.connects(), 3);
    pool.forget("elsewhere").await;
    pool.exec(&t, "true", None, T, None).await.unwrap();
    assert_eq!(pool.connects(), 3);

    // The pinned key may be given as the bare base64 blob; it is the same pool entry.
    let mut bare = t.clone();
    bare.pinned_host_key = s.host_key.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(pool.exec(&bare, "echo bare", None, T, None).await.unwrap().stdout, b"bare\n");
    assert_eq!(pool.connects(), 3);
}

#[tokio::test]
async fn wrong_host_key_is_refused_before_anything_runs() {
    let s = Sshd::start("hostkey");
    let pool = SshPool::new();
    let mut t = s.target();
    let impostor = generate_keypair("impostor").public_openssh;
    t.pinned_host_key = impostor.clone();
    let marker = s.dir.join("ran");
    let err =
        pool.exec(&t, &format!("touch {}", shell_quote(marker.to_str().unwrap())), None, T, None).await.unwrap_err();
    match err {
        SshError::HostKeyMismatch { host, expected, presented } => {
            assert_eq!(host, "127.0.0.1");
            assert_eq!(expected, host_key_fingerprint(&impostor).unwrap());
            assert_eq!(presented, host_key_fingerprint(&s.host_key).unwrap());
        }
        other => panic!("expected HostKeyMismatch, got {other:?}"),
    }
    assert!(!marker.exists(), "a command ran despite the host key mismatch");
    assert_eq!(s.logins(), 0);
    assert_eq!(pool.connects(), 0);

    // An unparseable pin is a key error, not a connection.
    t.pinned_host_key = "garbage".into();
    assert!(matches!(pool.exec(&t, "true", None, T, None).await, Err(SshError::Key(_))));
}

#[tokio::test]
async fn wrong_client_key_fails_authentication() {
    let s = Sshd::start("auth");
    let pool = SshPool::new();
    let mut t = s.target();
    t.private_key_openssh = generate_keypair("stranger").private_openssh;
    let err = pool.exec(&t, "true", None, T, None).await.unwrap_err();
    match err {
        SshError::AuthFailed { host, user } => assert_eq!((host.as_str(), user.as_str()), ("127.0.0.1", "root")),
        other => panic!("expected AuthFailed, got {other:?}"),
    }
    // The right key still works afterwards (the failed attempt was not pooled).
    let good = s.target();
    assert_eq!(pool.exec(&good, "echo ok", None, T, None).await.unwrap().stdout, b"ok\n");
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = SshTarget {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        pinned_host_key: generate_keypair("h").public_openssh,
        private_key_openssh: generate_keypair("c").private_openssh,
    };
    let err = SshPool::new().exec(&t, "true", None, T, None).await.unwrap_err();
    assert!(matches!(err, SshError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn files_are_written_with_mode_and_owner_and_never_on_a_command_line() {
    let s = Sshd::start("write");
    let pool = SshPool::new();
    let t = s.target();
    let path = s.dir.join("nested/dir/secret file");
    let path_str = path.to_str().unwrap();
    let secret = "tok'en-7f3c $(id) `x` \"q\"\\\nsecond line\n";
    let command = write_file_command(path_str, 0o600, Some("root"));
    assert!(!command.contains("tok'en") && !command.contains("7f3c"));

    // Sample every process's arguments while a large payload is written; the sampler must
    // have caught the write in progress for this to mean anything.
    let mut caught_the_write = false;
    for size_mb in [8usize, 32, 64] {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut seen = String::new();
            while !flag.load(Ordering::Relaxed) {
                let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
                seen.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            seen
        });
        let big = format!("{secret}{}", "x".repeat(size_mb << 20));
        let result = pool.write_file(&t, path_str, big.as_bytes(), 0o600, Some("root"), T).await;
        stop.store(true, Ordering::Relaxed);
        let seen = sampler.join().unwrap();
        result.unwrap();
        assert!(!seen.contains("7f3c"), "the content appeared in a process's arguments");
        assert_eq!(std::fs::read(&path).unwrap(), big.as_bytes());
        if seen.contains("sudo -n sh -c") && seen.contains("secret file") {
            caught_the_write = true;
            break;
        }
    }
    assert!(caught_the_write, "the ps sampler never saw the write running");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);

    // Overwriting replaces content and mode; no temporary files are left behind.
    pool.write_file(&t, path_str, secret.as_bytes(), 0o640, None, T).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

    // Owner: the file and the directories created for it belong to the owner.
    let owned = s.dir.join("home/new/dir/it's $(x); rm -rf ~");
    pool.write_file(&t, owned.to_str().unwrap(), b"'$(x)\n", 0o600, Some("nobody"), T).await.unwrap();
    let nobody = String::from_utf8(Command::new("id").args(["-u", "nobody"]).output().unwrap().stdout).unwrap();
    let nobody: u32 = nobody.trim().parse().unwrap();
    let meta = std::fs::metadata(&owned).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (nobody, 0o600));
    assert_eq!(std::fs::read(&owned).unwrap(), b"'$(x)\n");
    for created in [s.dir.join("home"), s.dir.join("home/new"), s.dir.join("home/new/dir")] {
        let m = std::fs::metadata(&created).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (nobody, 0o755), "{}", created.display());
    }
    assert_eq!(std::fs::metadata(&s.dir).unwrap().uid(), 0, "existing directories keep their owner");

    // Failures say why.
    let err = pool.write_file(&t, s.dir.to_str().unwrap(), b"x", 0o600, None, T).await.unwrap_err();
    assert!(matches!(&err, SshError::Channel(m) if m.contains("directory")), "{err:?}");
    let err = pool.write_file(&t, path_str, b"x", 0o600, Some("no-such-user-pvm"), T).await.unwrap_err();
    assert!(matches!(&err, SshError::Channel(m) if m.contains("no-such-user-pvm")), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret, "a failed write leaves the old file");
    assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[tokio::test]
async fn a_pooled_connection_that_stopped_answering_is_replaced() {
    let s = Sshd::start("frozen");
    let pool = SshPool::new();
    let t = s.target();
    pool.exec(&t, "true", None, T, None).await.unwrap();
    // The server side of the connection hangs without closing it (like a VM that froze or a
    // network path that went away): only a timeout can tell.
    for pid in s.session_pids() {
        Command::new("kill").arg("-STOP").arg(pid.to_string()).status().unwrap();
    }
    let started = Instant::now();
    let out = pool.exec(&t, "echo fresh", None, T, None).await.unwrap();
    assert_eq!(out.stdout, b"fresh\n");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(pool.connects(), 2);
}

/// A step's command is bounded on the server too: at its limit the whole process group is
/// stopped, background children included, so nothing of a timed-out attempt runs on.
#[tokio::test]
async fn a_bounded_command_leaves_nothing_running_after_its_limit() {
    let s = Sshd::start("bounded");
    let pool = SshPool::new();
    let t = s.target();
    let command = projectvm::shell::bounded(projectvm::shell::RUN_AS_USER, Duration::from_secs(2));
    // Quiet processes: nothing they write could fail and end them by itself.
    let script = "sleep 3141 & sleep 3142; echo never";
    let started = Instant::now();
    let out = pool.exec(&t, &command, Some(script.as_bytes()), Duration::from_secs(30), None).await.unwrap();
    assert!(projectvm::shell::timed_out(out.exit_status), "exit {}", out.exit_status);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("never"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while running("sleep 3141") || running("sleep 3142") {
        assert!(Instant::now() < deadline, "a process of the timed-out attempt still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
