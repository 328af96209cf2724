//! A control group of its own for every machine.
//!
//! `systemd-nspawn --keep-unit` runs the container in the cgroup nspawn itself was started in
//! (it only adds `payload/` and `supervisor/` below it). On a host without systemd as PID 1
//! nobody makes a scope per machine, so every machine started from the emulator landed in the
//! *same* cgroup, `/payload`, and every machine's systemd managed the same
//! `/payload/system.slice/UNIT` directories: when one machine's oneshot unit finished, its
//! systemd removed the shared cgroup while another machine was attaching its freshly forked
//! process there — `Failed to attach to cgroup /system.slice/systemd-user-sessions.service:
//! No such file or directory`, the unit exits 219/CGROUP, `/run/nologin` stays and non-root
//! logins are refused (issue 8). Worse, a unit stopped in one machine could kill the processes
//! of that unit in all of them.
//!
//! So before nspawn runs, the emulator moves it into `<own cgroup>/projectvm-machines/<machine>`
//! in each hierarchy systemd uses (the unified one, and the named `name=systemd` v1 one on a
//! hybrid or legacy host); nspawn then builds `payload/` and `supervisor/` there, and each
//! machine's systemd manages a tree nobody else touches. The tree is removed once nspawn has
//! exited.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One cgroup hierarchy systemd manages: where it is mounted and where this process sits in it.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// `unified` or `name=systemd`
    kind: &'static str,
    /// The mount point of the hierarchy's root (as far as this process sees it).
    mount: PathBuf,
    /// This process's cgroup, relative to `mount`.
    own: PathBuf,
}

/// Where machines' cgroups go, per hierarchy.
#[derive(Debug, Clone, Default)]
pub struct MachineCgroups {
    hierarchies: Vec<Hierarchy>,
}

/// The cgroup directories made for one machine (one per hierarchy), with their `cgroup.procs`
/// opened for the spawned process to move itself in.
pub struct Placement {
    pub dirs: Vec<PathBuf>,
    procs: Vec<OwnedFd>,
}

impl Placement {
    /// File descriptors to write `0` to (in the child, between fork and exec).
    pub fn procs_fds(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// Move the calling process into each cgroup whose `cgroup.procs` is open as `fds`.
/// Async-signal-safe: meant for `pre_exec`.
pub fn enter(fds: &[i32]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of a static one-byte buffer to a descriptor the parent opened.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn unescape_mount_path(p: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount root, mount point)` of the first mount of a hierarchy matching `want`.
fn find_mount(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (fstype, superopts) = (*post.first()?, *post.get(2).unwrap_or(&""));
        if !want(fstype, superopts) {
            return None;
        }
        Some((unescape_mount_path(pre.get(3)?), PathBuf::from(unescape_mount_path(pre.get(4)?))))
    })
}

fn relative(own: &str, root: &str) -> Option<PathBuf> {
    let rest = own.strip_prefix(root.trim_end_matches('/'))?;
    Some(PathBuf::from(rest.trim_start_matches('/')))
}

impl MachineCgroups {
    /// Look at this process's cgroups (`/proc/self/cgroup`) and the mounted hierarchies.
    pub fn detect() -> Self {
        let (Ok(cgroup), Ok(mountinfo)) =
            (fs::read_to_string("/proc/self/cgroup"), fs::read_to_string("/proc/self/mountinfo"))
        else {
            return Self::default();
        };
        Self::from_proc(&cgroup, &mountinfo)
    }

    fn from_proc(cgroup: &str, mountinfo: &str) -> Self {
        let mut hierarchies = Vec::new();
        for line in cgroup.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let found = if id == "0" && ctrl.is_empty() {
                find_mount(mountinfo, |t, _| t == "cgroup2").map(|m| ("unified", m))
            } else if ctrl == "name=systemd" {
                find_mount(mountinfo, |t, o| t == "cgroup" && o.split(',').any(|x| x == "name=systemd"))
                    .map(|m| ("name=systemd", m))
            } else {
                None
            };
            if let Some((kind, (root, mount))) = found
                && let Some(own) = relative(path, &root)
            {
                hierarchies.push(Hierarchy { kind, mount, own });
            }
        }
        Self { hierarchies }
    }

    pub fn is_empty(&self) -> bool {
        self.hierarchies.is_empty()
    }

    /// e.g. `unified:/sys/fs/cgroup/unified/projectvm-machines, name=systemd:…`
    pub fn describe(&self) -> String {
        self.hierarchies
            .iter()
            .map(|h| format!("{}:{}", h.kind, h.mount.join(&h.own).join("projectvm-machines").display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn dirs(&self, machine: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.mount.join(&h.own).join("projectvm-machines").join(machine)).collect()
    }

    /// Make the machine's cgroup in every hierarchy (removing what an earlier run left, when
    /// it holds no process) and open each `cgroup.procs`.
    pub fn prepare(&self, machine: &str) -> io::Result<Placement> {
        let dirs = self.dirs(machine);
        let mut procs = Vec::new();
        for d in &dirs {
            if d.exists() {
                let _ = remove_tree(d);
            }
            fs::create_dir_all(d)?;
            let f = fs::OpenOptions::new().write(true).open(d.join("cgroup.procs"))?;
            procs.push(OwnedFd::from(f));
        }
        Ok(Placement { dirs, procs })
    }

    /// Remove the machine's cgroup trees once nothing runs in them (bounded wait: the last
    /// processes of a container may take a moment to be reaped after nspawn exits).
    pub fn remove(&self, machine: &str, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        for d in self.dirs(machine) {
            loop {
                match remove_tree(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }
}

/// rmdir a cgroup and all below it, deepest first (control files go with their directory).
fn remove_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/x/y\n0::/\n";
    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_host_uses_both_systemd_hierarchies() {
        let c = MachineCgroups::from_proc(HYBRID_CGROUP, HYBRID_MOUNTS);
        assert_eq!(
            c.dirs("m1"),
            vec![
                PathBuf::from("/sys/fs/cgroup/systemd/projectvm-machines/m1"),
                PathBuf::from("/sys/fs/cgroup/unified/projectvm-machines/m1"),
            ]
        );
    }

    #[test]
    fn unified_host_nested_process() {
        let c = MachineCgroups::from_proc(
            "0::/system.slice/ci.service\n",
            "40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(c.dirs("m"), vec![PathBuf::from("/sys/fs/cgroup/system.slice/ci.service/projectvm-machines/m")]);
    }

    #[test]
    fn mount_of_a_subtree() {
        // inside a container whose cgroup mount shows only its own subtree
        let c = MachineCgroups::from_proc("0::/ctr/inner\n", "40 1 0:30 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(c.dirs("m"), vec![PathBuf::from("/sys/fs/cgroup/inner/projectvm-machines/m")]);
    }

    #[test]
    fn no_cgroups_no_placement() {
        assert!(MachineCgroups::from_proc("", "").is_empty());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
    }
}
