//! Every instance is a real machine: a systemd-nspawn container booted from an overlay
//! over a cached Debian root filesystem, in its own network namespace on the test bridge.
//!
//! Per instance, under `STATE_DIR/machines/PROJECT/ZONE/NAME/`:
//! `upper/` + `work/` (the persistent boot disk, an overlay over `--rootfs`), `merged/`
//! (the mounted disk the container boots from), `console.log` (nspawn's output).
//! Network: netns `pvm-<name>-<hash>` with `eth0` holding the machine's address, the host
//! end `pvm<hash>` enslaved to the bridge (default `pvmbr0`, 10.213.0.1/24).
//! Control groups: a tree of its own per machine, `…/projectvm-machines/<netns>` (see
//! [`super::cgroup`]: machines sharing one made concurrent boots fail with 219/CGROUP).
//! Host limits: all machines' processes are root of the same user namespace, so they share
//! one `fs.inotify.max_user_instances` (128 by default, ~5 per idle machine): the backend
//! raises it (and `max_user_watches`) at start.
//! Boot verdict: once sshd answers, a thread waits for the machine's own
//! `systemctl is-system-running --wait` and keeps it (`machine.boot` in the admin view); a boot
//! that ends other than `running` is a warning in the emulator log, with the failed units.
//!
//! The "booting" fault ([`MachineSpec::booting`], [`MachineBackend::set_booting`]) holds a
//! machine in boot as far as logins go: a drop-in makes `systemd-user-sessions.service` skip
//! while the flag file `/var/lib/projectvm-agent/booting` exists on the disk, so the
//! `/run/nologin` systemd-tmpfiles made at boot stays, and pam_nologin refuses every non-root
//! login with "System is booting up…". Set on a running machine, the emulator writes
//! `/run/nologin` itself; cleared, it removes the flag and `/run/nologin` (what the unit does).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use super::cgroup::MachineCgroups;
use super::{MachineBackend, MachineExit, MachineKey, MachineSpec, MachineView};

/// What systemd-tmpfiles writes to `/run/nologin` at boot (systemd-nologin.conf).
const NOLOGIN: &str = "System is booting up. Unprivileged users are not permitted to log in yet. Please come back later. For technical details, see pam_nologin(8).\n";
/// On the machine's disk while the booting fault holds it.
const BOOTING_FLAG: &str = "var/lib/projectvm-agent/booting";
const BOOTING_DROPIN: &str = "etc/systemd/system/systemd-user-sessions.service.d/projectvm-testbed-booting.conf";
const BOOTING_DROPIN_TEXT: &str = "\
# Written by the projectvm test bed's Compute Engine emulator: while its \"booting\" fault holds
# this machine, the flag file below exists, this unit is skipped, /run/nologin stays and
# non-root logins are refused (pam_nologin).
[Unit]
ConditionPathExists=!/var/lib/projectvm-agent/booting
";
/// Host limits raised at start (never lowered): enough for 200 machines with code-server.
const INOTIFY_LIMITS: &[(&str, u64)] =
    &[("/proc/sys/fs/inotify/max_user_instances", 8192), ("/proc/sys/fs/inotify/max_user_watches", 1_048_576)];

#[derive(Debug, Clone)]
pub struct NspawnConfig {
    /// The cached Debian root filesystem (read-only lower layer).
    pub rootfs: PathBuf,
    /// Root filesystems for particular image families (e.g. a stock image without
    /// code-server); any other family boots `rootfs`.
    pub image_rootfs: Vec<(String, PathBuf)>,
    pub state_dir: PathBuf,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Until sshd must accept connections.
    pub boot_timeout: Duration,
    /// Until a clean poweroff must have ended the container (then SIGKILL).
    pub stop_timeout: Duration,
    /// Address claims shared by all emulator processes on the host.
    pub lock_dir: PathBuf,
}

impl NspawnConfig {
    pub fn new(rootfs: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            rootfs,
            image_rootfs: Vec::new(),
            state_dir,
            bridge: "pvmbr0".into(),
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            prefix_len: 24,
            boot_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            lock_dir: PathBuf::from("/run/projectvm-testbed/addresses"),
        }
    }
}

#[derive(Default)]
struct ExitSlot {
    state: Mutex<ExitState>,
    cv: Condvar,
}

#[derive(Default)]
struct ExitState {
    exited: Option<Option<i32>>,
    stop_requested: bool,
}

impl ExitSlot {
    fn has_exited(&self) -> bool {
        self.state.lock().expect("lock").exited.is_some()
    }

    /// Wait until the process ended; false on timeout.
    fn wait(&self, timeout: Duration) -> bool {
        let st = self.state.lock().expect("lock");
        let (st, _) = self.cv.wait_timeout_while(st, timeout, |s| s.exited.is_none()).expect("lock");
        st.exited.is_some()
    }
}

struct Running {
    pid: u32,
    slot: Arc<ExitSlot>,
    /// How the boot ended, by the machine's own account (see [`watch_boot`]).
    boot: Arc<Mutex<Option<String>>>,
}

/// The machine's own verdict on its boot, once it is over: `systemctl is-system-running
/// --wait` inside it, and the failed units when that is not `running` (logged as a warning:
/// a degraded boot is how the shared-cgroup race of concurrent boots showed).
fn watch_boot(name: String, pid: u32, t0: Instant, slot: Arc<ExitSlot>, verdict: Arc<Mutex<Option<String>>>) {
    let in_machine = |init: &str, args: &[&str]| -> Option<String> {
        let out = Command::new("timeout")
            .args(["120", "nsenter", "-t", init, "-a"])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(init) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().map(str::to_string))
    else {
        return;
    };
    let state = in_machine(&init, &["systemctl", "is-system-running", "--wait"]).unwrap_or_default();
    if slot.has_exited() {
        return;
    }
    let ms = t0.elapsed().as_millis() as u64;
    let text = if state == "running" {
        tracing::info!(instance = %name, ms, "boot finished: running");
        state
    } else {
        let failed = in_machine(&init, &["systemctl", "--failed", "--no-legend", "--plain"]).unwrap_or_default();
        let units: Vec<&str> = failed.lines().filter_map(|l| l.split_whitespace().next()).collect();
        tracing::warn!(instance = %name, ms, state = %state, failed = ?units, "boot finished: not running");
        format!("{state}: {}", units.join(" "))
    };
    *verdict.lock().expect("lock") = Some(text);
}

pub struct NspawnBackend {
    cfg: NspawnConfig,
    exits: UnboundedSender<MachineExit>,
    running: Mutex<HashMap<MachineKey, Running>>,
    cgroups: MachineCgroups,
    /// Machines the booting fault holds (see the module doc).
    held: Mutex<std::collections::HashSet<MachineKey>>,
}

/// Raise a host limit to at least `want`; says what it did.
fn raise_limit(path: &str, want: u64) -> Option<String> {
    let cur: u64 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    if cur >= want {
        return None;
    }
    Some(match fs::write(path, want.to_string()) {
        Ok(()) => format!("{path}: {cur} -> {want}"),
        Err(e) => format!("{path}: could not raise {cur} to {want}: {e}"),
    })
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd, out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid we started (or its children).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m == p))
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

fn valid_user(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// `ssh-keys` metadata lines `USER:KEY…` grouped by user, in order of appearance.
pub fn parse_ssh_keys(metadata: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in metadata {
        if k != "ssh-keys" && k != "sshKeys" {
            continue;
        }
        for line in v.lines() {
            let line = line.trim();
            let Some((user, key)) = line.split_once(':') else {
                continue;
            };
            let (user, key) = (user.trim(), key.trim());
            if !valid_user(user) || key.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(u, _)| u == user) {
                Some((_, keys)) => keys.push(key.to_string()),
                None => out.push((user.to_string(), vec![key.to_string()])),
            }
        }
    }
    out
}

struct PasswdEntry {
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd_entry(root: &Path, user: &str) -> Option<PasswdEntry> {
    let text = fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == user).then(|| PasswdEntry {
            uid: f[2].parse().unwrap_or(0),
            gid: f[3].parse().unwrap_or(0),
            home: f[5].to_string(),
        })
    })
}

fn rootfs_for<'a>(cfg: &'a NspawnConfig, family: Option<&str>) -> &'a Path {
    family
        .and_then(|f| cfg.image_rootfs.iter().find(|(name, _)| name == f))
        .map_or(cfg.rootfs.as_path(), |(_, r)| r.as_path())
}

fn in_group(root: &Path, group: &str, user: &str) -> Option<bool> {
    let text = fs::read_to_string(root.join("etc/group")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == group).then(|| f[3].split(',').any(|m| m == user))
    })
}

impl NspawnBackend {
    /// The root filesystem of the machine's image family, else the default one.
    fn rootfs_for(&self, spec: &MachineSpec) -> &Path {
        rootfs_for(&self.cfg, spec.image_family())
    }

    pub fn new(cfg: NspawnConfig, exits: UnboundedSender<MachineExit>) -> anyhow::Result<Self> {
        for rootfs in std::iter::once(&cfg.rootfs).chain(cfg.image_rootfs.iter().map(|(_, r)| r)) {
            if !rootfs.join("usr/lib/systemd/systemd").exists() && !rootfs.join("lib/systemd/systemd").exists() {
                bail!("root filesystem {} does not look like one with systemd", rootfs.display());
            }
        }
        fs::create_dir_all(cfg.state_dir.join("machines"))?;
        fs::create_dir_all(&cfg.lock_dir)?;
        for (path, want) in INOTIFY_LIMITS {
            if let Some(what) = raise_limit(path, *want) {
                tracing::info!(limit = %what, "host limit for many machines");
            }
        }
        let cgroups = MachineCgroups::detect();
        if cgroups.is_empty() {
            tracing::warn!("no systemd cgroup hierarchy found: machines share nspawn's cgroup");
        } else {
            tracing::info!(cgroups = %cgroups.describe(), "machines get a cgroup of their own");
        }
        let b = Self { cfg, exits, running: Mutex::default(), cgroups, held: Mutex::default() };
        b.ensure_bridge()?;
        Ok(b)
    }

    fn hash(spec: &MachineSpec) -> String {
        let mut h = Sha256::new();
        h.update(format!("{}/{}/{}/{}", spec.project, spec.zone, spec.name, spec.id));
        let d = h.finalize();
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn netns(spec: &MachineSpec) -> String {
        let short: String = spec.name.chars().take(20).collect();
        format!("pvm-{short}-{}", &Self::hash(spec)[..6])
    }

    pub fn veth(spec: &MachineSpec) -> String {
        format!("pvm{}", &Self::hash(spec)[..10])
    }

    fn dir(&self, spec: &MachineSpec) -> PathBuf {
        self.cfg.state_dir.join("machines").join(&spec.project).join(&spec.zone).join(&spec.name)
    }

    fn merged(&self, spec: &MachineSpec) -> PathBuf {
        self.dir(spec).join("merged")
    }

    fn ensure_bridge(&self) -> anyhow::Result<()> {
        let br = &self.cfg.bridge;
        if ip(&["link", "show", br]).is_err() {
            if let Err(e) = ip(&["link", "add", br, "type", "bridge"]) {
                // someone else (net.sh) may have made it meanwhile
                if ip(&["link", "show", br]).is_err() {
                    return Err(e);
                }
            }
            let _ = ip(&["link", "set", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
        }
        let addrs = ip(&["-4", "-o", "addr", "show", "dev", br])?;
        let want = format!("inet {}/", self.cfg.gateway);
        if !addrs.contains(&want) {
            let cidr = format!("{}/{}", self.cfg.gateway, self.cfg.prefix_len);
            if let Err(e) = ip(&["addr", "add", &cidr, "dev", br])
                && !ip(&["-4", "-o", "addr", "show", "dev", br])?.contains(&want)
            {
                return Err(e);
            }
        }
        ip(&["link", "set", br, "up"])?;
        Ok(())
    }

    fn ensure_netns(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let ns = Self::netns(spec);
        let veth = Self::veth(spec);
        if !Path::new("/run/netns").join(&ns).exists() {
            ip(&["netns", "add", &ns])?;
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if ip(&["link", "show", &veth]).is_err() {
            let _ = ip(&["-n", &ns, "link", "del", "eth0"]);
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        }
        ip(&["link", "set", &veth, "master", &self.cfg.bridge])?;
        ip(&["link", "set", &veth, "up"])?;
        let cidr = format!("{}/{}", spec.address, self.cfg.prefix_len);
        // A MAC derived from the address: a reused address keeps its MAC, so neighbours'
        // cached entries stay right (a random MAC made SSH wait 9-22 s for ARP to expire).
        let o = spec.address.octets();
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        ip(&["-n", &ns, "link", "set", "eth0", "address", &mac])?;
        let _ = ip(&["neigh", "del", &spec.address.to_string(), "dev", &self.cfg.bridge]);
        ip(&["-n", &ns, "addr", "replace", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "replace", "default", "via", &self.cfg.gateway.to_string(), "dev", "eth0"])?;
        Ok(())
    }

    fn remove_netns(&self, spec: &MachineSpec) {
        let ns = Self::netns(spec);
        let veth = Self::veth(spec);
        let _ = ip(&["link", "del", &veth]);
        if Path::new("/run/netns").join(&ns).exists()
            && let Err(e) = ip(&["netns", "del", &ns])
        {
            tracing::warn!(netns = %ns, error = %e, "could not delete netns");
        }
    }

    fn mount_disk(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let dir = self.dir(spec);
        let merged = dir.join("merged");
        let mode = fs::read_to_string(dir.join("disk-mode")).unwrap_or_default();
        if mode.trim() != "overlay" || is_mounted(&merged) {
            return Ok(());
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.rootfs_for(spec).display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged))?;
        Ok(())
    }

    fn unmount_disk(&self, spec: &MachineSpec) {
        let merged = self.merged(spec);
        if !is_mounted(&merged) {
            return;
        }
        for _ in 0..20 {
            if run(Command::new("umount").arg(&merged)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(path = %merged.display(), "umount busy; detaching lazily");
        let _ = run(Command::new("umount").arg("-l").arg(&merged));
    }

    fn prepare_first_boot(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let root = self.merged(spec);
        let ssh = root.join("etc/ssh");
        fs::create_dir_all(&ssh)?;
        for (t, extra) in [("ed25519", None), ("ecdsa", Some("256"))] {
            let key = ssh.join(format!("ssh_host_{t}_key"));
            if key.exists() {
                continue;
            }
            let mut cmd = Command::new("ssh-keygen");
            cmd.args(["-q", "-t", t, "-N", "", "-C"]).arg(format!("root@{}", spec.name)).arg("-f").arg(&key);
            if let Some(bits) = extra {
                cmd.args(["-b", bits]);
            }
            run(&mut cmd)?;
        }
        fs::write(root.join("etc/hostname"), format!("{}\n", spec.name))?;
        let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
        let line = format!("127.0.1.1\t{}", spec.name);
        if !hosts.contains(&line) {
            fs::write(root.join("etc/hosts"), format!("{hosts}{line}\n"))?;
        }
        let id: [u8; 16] = rand::random();
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(root.join("etc/machine-id"), format!("{id}\n"))?;
        Ok(())
    }

    /// The booting fault's files on the disk: the drop-in and the flag, present or not.
    fn write_booting(&self, spec: &MachineSpec, on: bool) -> anyhow::Result<()> {
        let root = self.merged(spec);
        let (flag, dropin) = (root.join(BOOTING_FLAG), root.join(BOOTING_DROPIN));
        if on {
            for f in [&flag, &dropin] {
                fs::create_dir_all(f.parent().expect("has a parent"))?;
            }
            fs::write(&dropin, BOOTING_DROPIN_TEXT)?;
            fs::write(&flag, "held by the emulator's booting fault\n")?;
        } else {
            for f in [&flag, &dropin] {
                match fs::remove_file(f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The machine's init (systemd) while it runs: nspawn's child.
    fn init_pid(&self, key: &MachineKey) -> Option<u32> {
        let pid = self.running.lock().expect("lock").get(key).filter(|r| !r.slot.has_exited()).map(|r| r.pid)?;
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    fn addr_lock(&self, addr: Ipv4Addr) -> PathBuf {
        self.cfg.lock_dir.join(addr.to_string())
    }

    fn forget(&self, key: &MachineKey) {
        self.running.lock().expect("lock").remove(key);
    }
}

impl MachineBackend for NspawnBackend {
    fn kind(&self) -> &'static str {
        "nspawn"
    }

    fn claim_address(&self, addr: Ipv4Addr) -> bool {
        let path = self.addr_lock(addr);
        let me = std::process::id();
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                use std::io::Write;
                let _ = write!(f, "{me}");
                true
            }
            Err(_) => {
                let holder: Option<u32> = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
                match holder {
                    Some(pid) if pid != me && pid_alive(pid) => false,
                    Some(pid) if pid == me => false,
                    _ => {
                        // stale claim of a process that is gone
                        fs::write(&path, me.to_string()).is_ok()
                    }
                }
            }
        }
    }

    fn release_address(&self, addr: Ipv4Addr) {
        let path = self.addr_lock(addr);
        if fs::read_to_string(&path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
            let _ = fs::remove_file(path);
        }
    }

    fn create_disk(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let dir = self.dir(spec);
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "stale machine directory; removing");
            self.unmount_disk(spec);
            fs::remove_dir_all(&dir)?;
        }
        for d in ["upper", "work", "merged"] {
            fs::create_dir_all(dir.join(d))?;
        }
        fs::write(dir.join("id"), spec.id.to_string())?;
        fs::write(dir.join("disk-mode"), "overlay")?;
        let t0 = Instant::now();
        if let Err(e) = self.mount_disk(spec) {
            tracing::warn!(error = %e, "overlayfs failed; copying the root filesystem instead");
            fs::write(dir.join("disk-mode"), "copy")?;
            run(Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(format!("{}/.", self.rootfs_for(spec).display()))
                .arg(dir.join("merged")))?;
        }
        self.prepare_first_boot(spec)?;
        tracing::info!(instance = %spec.name, ms = t0.elapsed().as_millis() as u64, "disk ready");
        Ok(())
    }

    fn boot(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let key = spec.key();
        {
            let running = self.running.lock().expect("lock");
            if let Some(r) = running.get(&key)
                && !r.slot.has_exited()
            {
                return Ok(());
            }
        }
        self.forget(&key);
        self.ensure_bridge()?;
        self.mount_disk(spec)?;
        self.ensure_netns(spec)?;
        self.write_booting(spec, spec.booting)?;
        if spec.booting {
            self.held.lock().expect("lock").insert(key.clone());
            tracing::info!(instance = %spec.name, "booting fault: this boot keeps /run/nologin");
        } else {
            self.held.lock().expect("lock").remove(&key);
        }
        let dir = self.dir(spec);
        let log_path = dir.join("console.log");
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let ns = Self::netns(spec);
        let t0 = Instant::now();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(self.merged(spec))
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                "--kill-signal=SIGRTMIN+4",
                "--console=pipe",
            ])
            .arg(format!("--network-namespace-path=/run/netns/{ns}"))
            .arg(format!("--machine={}", spec.name))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let cgroup_name = Self::netns(spec);
        let placement = match self.cgroups.prepare(&cgroup_name) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(instance = %spec.name, error = %e, "no cgroup of its own: it shares nspawn's");
                None
            }
        };
        if let Some(p) = &placement {
            let fds = p.procs_fds();
            // SAFETY: the closure only calls write(2) on descriptors opened above.
            unsafe {
                cmd.pre_exec(move || super::cgroup::enter(&fds));
            }
        }
        let mut child = cmd.spawn().context("spawning systemd-nspawn")?;
        if let Some(p) = &placement {
            tracing::debug!(instance = %spec.name, cgroups = ?p.dirs, "nspawn placed");
        }
        drop(placement);
        let pid = child.id();
        let slot = Arc::new(ExitSlot::default());
        let boot_verdict = Arc::new(Mutex::new(None));
        self.running
            .lock()
            .expect("lock")
            .insert(key.clone(), Running { pid, slot: slot.clone(), boot: boot_verdict.clone() });
        let tx = self.exits.clone();
        let (watch_slot, id) = (slot.clone(), spec.id);
        let cgroups = self.cgroups.clone();
        std::thread::Builder::new().name(format!("nspawn-{pid}")).spawn(move || {
            let code = child.wait().ok().and_then(|s| s.code());
            // before anyone can see the exit: a new boot of this machine makes the tree anew
            if let Err(e) = cgroups.remove(&cgroup_name, Duration::from_secs(5)) {
                tracing::warn!(machine = %key.name, error = %e, "could not remove the machine's cgroup");
            }
            let requested = {
                let mut st = watch_slot.state.lock().expect("lock");
                st.exited = Some(code);
                st.stop_requested
            };
            watch_slot.cv.notify_all();
            tracing::info!(machine = %key.name, pid, ?code, requested, "nspawn exited");
            if !requested {
                let _ = tx.send(MachineExit { key, id, pid, code });
            }
        })?;
        tracing::info!(instance = %spec.name, pid, address = %spec.address, "nspawn started");
        let target = SocketAddr::from((spec.address, 22));
        let deadline = t0 + self.cfg.boot_timeout;
        loop {
            if slot.has_exited() {
                bail!("the machine exited while booting; console tail:\n{}", tail(&log_path, 2000));
            }
            if TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd on {target} did not answer within {:?}; console tail:\n{}",
                    self.cfg.boot_timeout,
                    tail(&log_path, 2000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(instance = %spec.name, ms = t0.elapsed().as_millis() as u64, "sshd answers");
        let name = spec.name.clone();
        std::thread::Builder::new()
            .name(format!("boot-{pid}"))
            .spawn(move || watch_boot(name, pid, t0, slot, boot_verdict))?;
        Ok(())
    }

    fn stop(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        let key = spec.key();
        let Some((pid, slot)) = self.running.lock().expect("lock").get(&key).map(|r| (r.pid, r.slot.clone())) else {
            return Ok(());
        };
        slot.state.lock().expect("lock").stop_requested = true;
        if !slot.has_exited() {
            let t0 = Instant::now();
            // nspawn forwards SIGTERM as --kill-signal (SIGRTMIN+4: poweroff) to the init.
            signal(pid, libc::SIGTERM);
            if !slot.wait(self.cfg.stop_timeout) {
                tracing::warn!(instance = %spec.name, pid, "no clean poweroff in time; killing");
                let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
                for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                    signal(c, libc::SIGKILL);
                }
                // SAFETY: kill the process group nspawn leads (it was spawned with its own).
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
                if !slot.wait(Duration::from_secs(10)) {
                    bail!("systemd-nspawn (pid {pid}) did not exit after SIGKILL");
                }
            }
            tracing::info!(instance = %spec.name, ms = t0.elapsed().as_millis() as u64, "machine powered off");
        }
        self.forget(&key);
        Ok(())
    }

    fn destroy(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.stop(spec)?;
        self.held.lock().expect("lock").remove(&spec.key());
        self.remove_netns(spec);
        self.unmount_disk(spec);
        let dir = self.dir(spec);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        self.release_address(spec.address);
        Ok(())
    }

    fn apply_metadata(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.mount_disk(spec)?;
        let root = self.merged(spec);
        if !root.join("etc/passwd").exists() {
            bail!("no disk at {}", root.display());
        }
        let users = parse_ssh_keys(&spec.metadata);
        let chroot = |args: &[&str]| run(Command::new("chroot").arg(&root).args(args));
        if in_group(&root, "google-sudoers", "").is_none() {
            chroot(&["groupadd", "-f", "google-sudoers"])?;
            let sudoers = root.join("etc/sudoers.d/google_sudoers");
            fs::create_dir_all(root.join("etc/sudoers.d"))?;
            fs::write(&sudoers, "%google-sudoers ALL=(ALL:ALL) NOPASSWD:ALL\n")?;
            fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o440))?;
        }
        let state_dir = root.join("var/lib/projectvm-agent");
        fs::create_dir_all(&state_dir)?;
        let managed_file = state_dir.join("users");
        let previously: Vec<String> =
            fs::read_to_string(&managed_file).unwrap_or_default().lines().map(str::to_string).collect();
        for (user, keys) in &users {
            if passwd_entry(&root, user).is_none() {
                chroot(&["useradd", "-m", "-s", "/bin/bash", "-G", "google-sudoers", user])?;
            } else if user != "root" && in_group(&root, "google-sudoers", user) == Some(false) {
                chroot(&["usermod", "-aG", "google-sudoers", user])?;
            }
            let pw = passwd_entry(&root, user).context("user vanished after useradd")?;
            let home = root.join(pw.home.trim_start_matches('/'));
            let ssh = home.join(".ssh");
            fs::create_dir_all(&ssh)?;
            fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
            chown(&home, Some(pw.uid), Some(pw.gid))?;
            chown(&ssh, Some(pw.uid), Some(pw.gid))?;
            let ak = ssh.join("authorized_keys");
            let mut text = keys.join("\n");
            text.push('\n');
            fs::write(&ak, text)?;
            fs::set_permissions(&ak, fs::Permissions::from_mode(0o600))?;
            chown(&ak, Some(pw.uid), Some(pw.gid))?;
        }
        // Keys removed from metadata lose their access, as with Google's guest agent.
        for gone in previously.iter().filter(|u| !users.iter().any(|(n, _)| n == *u)) {
            if let Some(pw) = passwd_entry(&root, gone) {
                let ak = root.join(pw.home.trim_start_matches('/')).join(".ssh/authorized_keys");
                if ak.exists() {
                    fs::write(&ak, "")?;
                }
            }
        }
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        fs::write(&managed_file, names.join("\n"))?;
        tracing::info!(instance = %spec.name, users = ?names, "guest agent applied metadata");
        Ok(())
    }

    fn host_keys(&self, spec: &MachineSpec) -> anyhow::Result<Vec<(String, String)>> {
        let ssh = self.merged(spec).join("etc/ssh");
        let mut keys = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&ssh)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("ssh_host_") && n.ends_with("_key.pub")
                })
            })
            .collect();
        entries.sort();
        for p in entries {
            let text = fs::read_to_string(&p)?;
            let mut f = text.split_whitespace();
            if let (Some(t), Some(b)) = (f.next(), f.next()) {
                keys.push((t.to_string(), b.to_string()));
            }
        }
        // ed25519 first: what clients pin by preference
        keys.sort_by_key(|(t, _)| if t == "ssh-ed25519" { 0 } else { 1 });
        Ok(keys)
    }

    fn inspect(&self, spec: &MachineSpec) -> MachineView {
        let (running, boot) = self
            .running
            .lock()
            .expect("lock")
            .get(&spec.key())
            .filter(|r| !r.slot.has_exited())
            .map(|r| (Some(r.pid), r.boot.lock().expect("lock").clone()))
            .unwrap_or_default();
        let dir = self.dir(spec);
        let ns = Self::netns(spec);
        let veth = Self::veth(spec);
        MachineView {
            backend: "nspawn".into(),
            state: if running.is_some() {
                "running"
            } else if dir.exists() {
                "stopped"
            } else {
                "absent"
            }
            .into(),
            pid: running,
            address: Some(spec.address),
            netns: Path::new("/run/netns").join(&ns).exists().then_some(ns),
            veth: ip(&["link", "show", &veth]).is_ok().then_some(veth),
            disk_dir: dir.exists().then(|| dir.display().to_string()),
            log: Some(dir.join("console.log").display().to_string()),
            booting_held: self.held.lock().expect("lock").contains(&spec.key()),
            boot: running.map(|_| boot.unwrap_or_else(|| "starting".into())),
        }
    }

    fn set_booting(&self, spec: &MachineSpec, on: bool) -> anyhow::Result<()> {
        let key = spec.key();
        let was = self.held.lock().expect("lock").contains(&key);
        if was == on {
            return Ok(());
        }
        if self.merged(spec).join("etc").exists() {
            self.write_booting(spec, on)?;
        }
        // A running machine: /run/nologin as systemd-tmpfiles writes it at boot, or gone as
        // systemd-user-sessions leaves it.
        if let Some(init) = self.init_pid(&key) {
            let nologin = PathBuf::from(format!("/proc/{init}/root/run/nologin"));
            if on {
                fs::write(&nologin, NOLOGIN).with_context(|| format!("writing {}", nologin.display()))?;
            } else {
                match fs::remove_file(&nologin) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(anyhow::Error::new(e).context(format!("removing {}", nologin.display())));
                    }
                    _ => {}
                }
            }
        }
        if on {
            self.held.lock().expect("lock").insert(key);
        } else {
            self.held.lock().expect("lock").remove(&key);
        }
        tracing::info!(instance = %spec.name, held = on, "booting fault: /run/nologin {}", if on { "kept" } else { "removed" });
        Ok(())
    }

    fn release(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.stop(spec)?;
        self.remove_netns(spec);
        self.unmount_disk(spec);
        self.release_address(spec.address);
        Ok(())
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    #[test]
    fn image_family_picks_the_rootfs() {
        let mut cfg = NspawnConfig::new("/rootfs/prepared".into(), "/state".into());
        cfg.image_rootfs = vec![("debian-stock".into(), "/rootfs/stock".into())];
        let spec = |image: Option<&str>| MachineSpec {
            project: "p".into(),
            zone: "z".into(),
            name: "n".into(),
            id: 1,
            address: Ipv4Addr::new(10, 213, 0, 16),
            machine_type: "e2-medium".into(),
            metadata: vec![],
            booting: false,
            source_image: image.map(str::to_string),
        };
        let stock = spec(Some("projects/p/global/images/family/debian-stock"));
        assert_eq!(stock.image_family(), Some("debian-stock"));
        assert_eq!(rootfs_for(&cfg, stock.image_family()), Path::new("/rootfs/stock"));
        let other = spec(Some("projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"));
        assert_eq!(rootfs_for(&cfg, other.image_family()), Path::new("/rootfs/prepared"));
        assert_eq!(spec(None).image_family(), None);
        assert_eq!(spec(Some("projects/p/global/images/disk-1")).image_family(), None);
    }
}
