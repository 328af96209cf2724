//! Contract test of the Cloud Storage edge: `GcsStore` — the production implementation, on the
//! official `google-cloud-storage` client — against a real fake-gcs-server with only the
//! endpoint and the credentials changed. What was stored is read back through the emulator's
//! JSON API with plain HTTP, not through the code under test.
//!
//! Each test starts its own server (`testbed/scripts/fake-gcs.sh build` provides the binary)
//! on port 80 in a network namespace of its own, `pvm-st-<pid>-<n>`, joined to the root
//! namespace by a veth pair with a /30 in 10.214.0.0/16 — apart from the bed's pvm-gcs at
//! 10.213.0.3, so a running bed is never touched. Everything is removed when the test ends,
//! also when it fails; leftovers of killed runs are removed on the next start.
//!
//! Needs root (network namespaces); skipped with a message otherwise. As root, a server that
//! cannot be built or started fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use projectvm::cloud::gce::CredentialsMode;
use projectvm::storage::{ArtifactStore, ByteStream, GcsStore, StorageErrorKind};
use sha2::{Digest, Sha256};

const BUCKET: &str = "artifacts";
const MIB: u64 = 1024 * 1024;

/// One test at a time: each measures its own memory and throughput.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") { Some("not root (network namespaces)".into()) } else { None }
}

macro_rules! skip_unless_root {
    ($name:literal) => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED storage_contract::{}: {why}", $name);
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The fake-gcs-server binary, built (once, cached outside the repo) by the bed's script.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/scripts/fake-gcs.sh");
        let out = Command::new(&script).arg("build").stderr(Stdio::inherit()).output().expect("runs fake-gcs.sh");
        assert!(out.status.success(), "fake-gcs.sh build failed: {}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(stdout.lines().last().expect("fake-gcs.sh build prints the binary path").trim());
        assert!(path.is_file(), "fake-gcs.sh build printed {path:?}, which is no file");
        path
    })
}

/// Removes namespaces (and their veths) left by test processes that no longer exist.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pvm-st-") else { continue };
        let Some((pid, n)) = rest.split_once('-') else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = ip(&["link", "del", &format!("pvst{pid}x{n}")]);
        let _ = ip(&["netns", "del", &name]);
    }
}

/// fake-gcs-server in a namespace of its own, with bucket [`BUCKET`].
struct Emulator {
    child: Child,
    ns: String,
    veth: String,
    dir: PathBuf,
    url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Emulator {
    async fn start() -> Emulator {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = binary();
        remove_stale();
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let ns = format!("pvm-st-{pid}-{n}");
        let veth = format!("pvst{pid}x{n}");
        assert!(veth.len() <= 15, "interface name {veth} too long");
        // A /30 per (process, test): host .1, server .2.
        let slot = (pid.wrapping_mul(16).wrapping_add(n)) % 16384;
        let base = slot * 4;
        let (host, server) =
            (format!("10.214.{}.{}", base / 256, base % 256 + 1), format!("10.214.{}.{}", base / 256, base % 256 + 2));
        let dir = std::env::temp_dir().join(format!("pvm-storage-contract-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["addr", "add", &format!("{host}/30"), "dev", &veth])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{server}/30"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            Ok(())
        };
        let setup_result = setup();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(bin)
            .args(["-scheme", "http", "-host", "0.0.0.0", "-port", "80"])
            .args(["-backend", "filesystem", "-log-level", "warn"])
            .arg("-filesystem-root")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .expect("spawns fake-gcs-server");
        // From here on, Drop cleans up whatever happens.
        let mut emu = Emulator { child, ns, veth, dir, url: format!("http://{server}") };
        if let Err(e) = setup_result {
            panic!("setting up the test network failed: {e}");
        }
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = emu.child.try_wait().unwrap() {
                panic!("fake-gcs-server exited ({st}): {}", emu.log());
            }
            let ok = http
                .get(format!("{}/storage/v1/b", emu.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "fake-gcs-server did not answer at {}: {}", emu.url, emu.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = http
            .post(format!("{}/storage/v1/b?project=test", emu.url))
            .json(&serde_json::json!({ "name": BUCKET }))
            .send()
            .await
            .expect("bucket insert");
        assert!(r.status().is_success(), "creating the bucket: {}", r.status());
        emu
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    async fn store(&self) -> GcsStore {
        GcsStore::new(BUCKET, Some(&self.url), CredentialsMode::Anonymous)
            .await
            .expect("client builds")
            // A broken emulator fails the test in seconds instead of hanging it.
            .with_retries(3, Duration::from_secs(1))
            .with_deadline(Duration::from_secs(60), MIB)
    }

    fn object_path(&self, object: &str) -> String {
        format!("{}/storage/v1/b/{BUCKET}/o/{}", self.url, encode(object))
    }

    /// The object's bytes' sha256 and length, read through the JSON API; `None` when absent.
    async fn read_back(&self, object: &str) -> Option<(String, u64)> {
        let mut r = reqwest::get(format!("{}?alt=media", self.object_path(object))).await.expect("GET object");
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(r.status().is_success(), "GET {object}: {}", r.status());
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(c) = r.chunk().await.expect("object body") {
            n += c.len() as u64;
            h.update(&c);
        }
        Some((hex(&h.finalize()), n))
    }

    /// The object's metadata (size, contentType), through the JSON API.
    async fn metadata(&self, object: &str) -> serde_json::Value {
        let r = reqwest::get(self.object_path(object)).await.expect("GET metadata");
        assert!(r.status().is_success(), "GET metadata {object}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn object_names(&self) -> Vec<String> {
        let r = reqwest::get(format!("{}/storage/v1/b/{BUCKET}/o", self.url)).await.expect("list");
        let v: serde_json::Value = r.json().await.unwrap();
        v["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// The server's own peak memory, for the record.
    fn server_hwm_kib(&self) -> Option<u64> {
        // `ip netns exec` execs the server, so the child's pid is the server's.
        vm_hwm_kib(&format!("/proc/{}/status", self.child.id()))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (one path segment).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn vm_hwm_kib(status_file: &str) -> Option<u64> {
    let s = std::fs::read_to_string(status_file).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()
}

fn once(data: &'static [u8]) -> ByteStream {
    futures::stream::iter([Ok(Bytes::from_static(data))]).boxed()
}

/// `len` pseudo-random bytes, generated 64 KiB at a time (never held whole), then, if given,
/// an error in place of the rest.
fn generated(len: u64, fail_after: Option<u64>) -> ByteStream {
    const CHUNK: u64 = 64 * 1024;
    let stop = fail_after.unwrap_or(len).min(len);
    futures::stream::unfold((0u64, 0x9E37_79B9_7F4A_7C15u64), move |(at, mut x)| async move {
        if at >= stop {
            return (fail_after.is_some() && at < len)
                .then(|| (Err(std::io::Error::other("the SSH channel closed")), (len, x)));
        }
        let n = CHUNK.min(stop - at) as usize;
        let mut buf = Vec::with_capacity(n);
        while buf.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes()[..(n - buf.len()).min(8)]);
        }
        Some((Ok(Bytes::from(buf)), (at + n as u64, x)))
    })
    .boxed()
}

/// The sha256 of `generated(len, None)`, computed the same way, apart from the store.
async fn generated_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut s = generated(len, None);
    while let Some(c) = s.next().await {
        h.update(c.unwrap());
    }
    hex(&h.finalize())
}

#[tokio::test]
async fn small_object_round_trip() {
    skip_unless_root!("small_object_round_trip");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    assert_eq!(store.bucket(), BUCKET);
    let data: &'static [u8] = b"build output: ok\n";
    let parts = futures::stream::iter([Ok(Bytes::from_static(&data[..6])), Ok(Bytes::from_static(&data[6..]))]);
    let up = store.upload("runs/ns/r1/log.txt", "text/plain", data.len() as u64, parts.boxed()).await.unwrap();
    let want = hex(&Sha256::digest(data));
    assert_eq!(up.url, "gs://artifacts/runs/ns/r1/log.txt");
    assert_eq!((up.size, up.sha256.as_str()), (data.len() as u64, want.as_str()));
    assert_eq!(emu.read_back("runs/ns/r1/log.txt").await, Some((want, data.len() as u64)));
    let meta = emu.metadata("runs/ns/r1/log.txt").await;
    assert_eq!(meta["size"], "17", "{meta}");
    // (Not checked: the content type. fake-gcs-server v1.56.1 takes it from the media part's
    // header of a multipart upload and from each chunk's header of a resumable one, where the
    // client sends it, as Cloud Storage reads it, in the object's metadata.)
    // The same name again (a retried Run step): replaced, not refused.
    let again = store.upload("runs/ns/r1/log.txt", "text/plain", 3, once(b"new")).await.unwrap();
    assert_eq!(emu.read_back("runs/ns/r1/log.txt").await, Some((again.sha256, 3)));
}

#[tokio::test]
async fn empty_file() {
    skip_unless_root!("empty_file");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    let up = store.upload("runs/empty", "", 0, futures::stream::empty().boxed()).await.unwrap();
    assert_eq!(up.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(emu.read_back("runs/empty").await, Some((up.sha256, 0)));
    assert_eq!(emu.metadata("runs/empty").await["size"], "0");
}

#[tokio::test]
async fn names_with_spaces_and_unicode() {
    skip_unless_root!("names_with_spaces_and_unicode");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    for name in ["runs/ns/r/my report (final).txt", "runs/ns/r/ünïcødé/ファイル名 ✓.bin", "runs/ns/r/a+b=c&d?e#f%20"]
    {
        let up = store.upload(name, "application/octet-stream", 5, once(b"bytes")).await.unwrap();
        assert_eq!(up.url, format!("gs://artifacts/{name}"));
        assert_eq!(emu.read_back(name).await, Some((up.sha256, 5)), "{name}");
    }
    let mut names = emu.object_names().await;
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n == "runs/ns/r/ünïcødé/ファイル名 ✓.bin"), "{names:?}");
}

#[tokio::test]
async fn large_streamed_upload_stays_in_bounded_memory() {
    skip_unless_root!("large_streamed_upload_stays_in_bounded_memory");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    let len = 50 * MIB;
    let want = generated_sha256(len).await;
    // Reset the peak to the current footprint (Linux >= 4.0), so earlier tests' peaks do
    // not hide this one's.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM through /proc/self/clear_refs");
    let before = vm_hwm_kib("/proc/self/status").expect("VmHWM");
    let t = Instant::now();
    let up = store.upload("runs/ns/r/big.bin", "application/octet-stream", len, generated(len, None)).await.unwrap();
    let took = t.elapsed();
    let after = vm_hwm_kib("/proc/self/status").expect("VmHWM");
    let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "MEASURE storage_contract: 50 MiB streamed upload in {:.2}s ({:.1} MiB/s); client VmHWM {} -> {} KiB (+{:.1} MiB); \
         server VmHWM {:?} KiB",
        took.as_secs_f64(),
        50.0 / took.as_secs_f64(),
        before,
        after,
        growth_mib,
        emu.server_hwm_kib()
    );
    assert_eq!((up.size, up.sha256.as_str()), (len, want.as_str()));
    assert_eq!(emu.read_back("runs/ns/r/big.bin").await, Some((want, len)));
    // Holding the object whole would cost 50 MiB and more; one upload buffer is 8 MiB.
    assert!(growth_mib < 32.0, "the client's peak memory grew by {growth_mib:.1} MiB for a 50 MiB upload");
}

#[tokio::test]
async fn missing_bucket() {
    skip_unless_root!("missing_bucket");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = GcsStore::new("no-such-bucket", Some(&emu.url), CredentialsMode::Anonymous)
        .await
        .unwrap()
        .with_retries(3, Duration::from_secs(1));
    // Small (one request) and large (resumable) uploads take different paths.
    for (object, len) in [("runs/a.txt", 5), ("runs/big.bin", 20 * MIB)] {
        let body = if len == 5 { once(b"hello") } else { generated(len, None) };
        let e = store.upload(object, "text/plain", len, body).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::BucketNotFound, "{e}");
        assert!(!e.retryable);
        assert!(e.message.contains("no-such-bucket") && e.message.contains(object), "{e}");
    }
}

#[tokio::test]
async fn a_stream_that_fails_midway_leaves_no_object() {
    skip_unless_root!("a_stream_that_fails_midway_leaves_no_object");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    // Below the resumable threshold (one request), and across several resumable chunks.
    for (object, len, fail_after) in [("runs/small.bin", 100_000, 70_000), ("runs/large.bin", 30 * MIB, 20 * MIB)] {
        let e =
            store.upload(object, "application/octet-stream", len, generated(len, Some(fail_after))).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Source, "{e}");
        assert!(e.message.contains(object) && e.message.contains("the SSH channel closed"), "{e}");
        assert_eq!(emu.read_back(object).await, None, "{object} must not exist");
    }
    assert!(emu.object_names().await.is_empty());
}

#[tokio::test]
async fn a_stream_of_the_wrong_length_leaves_no_object() {
    skip_unless_root!("a_stream_of_the_wrong_length_leaves_no_object");
    let _one = SERIAL.lock().await;
    let emu = Emulator::start().await;
    let store = emu.store().await;
    #[rustfmt::skip]
    let cases: [(&str, u64, u64); 4] = [
        ("runs/short-small", 1000, 999),
        ("runs/long-small", 1000, 1001),
        // Ends early, after a resumable chunk went through.
        ("runs/short-large", 20 * MIB, 17 * MIB),
        // Exactly two resumable chunks, then one byte more: the last chunk must not finalize.
        ("runs/long-large", 16 * MIB, 16 * MIB + 1),
    ];
    for (object, declared, actual) in cases {
        let e = store.upload(object, "application/octet-stream", declared, generated(actual, None)).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Source, "{object}: {e}");
        assert!(!e.retryable && e.message.contains(object), "{e}");
        assert_eq!(emu.read_back(object).await, None, "{object} must not exist");
    }
    assert!(emu.object_names().await.is_empty());
}
