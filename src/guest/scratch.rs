//! Test helpers shared by the script tests: a scratch tree standing in for a VM's root, in
//! which rendered scripts run for real.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `bash -n` on a script: it must parse.
pub(crate) fn assert_parses(script: &str) {
    let out = Command::new("bash").args(["-n", "-c", script]).output().expect("bash runs");
    assert!(out.status.success(), "script does not parse: {}\n{script}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) fn owner(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().uid()
}

/// A scratch tree standing in for a VM's root: `home/<user>` (0750), a sticky
/// world-writable `tmp`, an `etc`, and in the home a private `.ssh`, a directory of the
/// user's own, and a link to `etc`. As root, the user is `nobody`, so the `runuser` and
/// `chown` paths run for real and a root-owned directory in the home can be set up.
pub(crate) struct Root {
    pub(crate) dir: PathBuf,
    pub(crate) user: String,
    pub(crate) uid: u32,
    pub(crate) as_root: bool,
}

impl Root {
    pub(crate) fn new(tag: &str) -> Root {
        let whoami = |args: &[&str]| {
            let out = Command::new("id").args(args).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let as_root = whoami(&["-u"]) == "0";
        let user = if as_root { "nobody".to_string() } else { whoami(&["-un"]) };
        let uid: u32 = whoami(&["-u", &user]).parse().unwrap();
        let gid: u32 = whoami(&["-g", &user]).parse().unwrap();
        let dir = std::env::temp_dir().join(format!("pvm-folders-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = Root { dir, user, uid, as_root };
        r.mkdir("home", 0o755);
        r.mkdir(&format!("home/{}", r.user), 0o750);
        r.mkdir("tmp", 0o1777);
        r.mkdir("etc", 0o755);
        std::fs::write(r.path("etc/passwd"), "root:x:0:0::/root:/bin/bash\n").unwrap();
        r.mkdir(&format!("home/{}/.ssh", r.user), 0o700);
        r.mkdir(&format!("home/{}/own", r.user), 0o700);
        std::os::unix::fs::symlink(r.path("etc"), r.home().join("link")).unwrap();
        if as_root {
            for d in [format!("home/{}", r.user), format!("home/{}/.ssh", r.user), format!("home/{}/own", r.user)] {
                std::os::unix::fs::chown(r.path(&d), Some(uid), Some(gid)).unwrap();
            }
            r.mkdir(&format!("home/{}/rootowned", r.user), 0o700);
        }
        r.mkdir("bin", 0o755);
        r.mkdir("units", 0o755);
        for (stub, text) in [("code-server", "echo 4.100.3 abc with Code 1.100.3"), ("systemctl", "exit 0")] {
            let p = r.path(&format!("bin/{stub}"));
            std::fs::write(&p, format!("#!/bin/sh\n{text}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        r
    }
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    pub(crate) fn home(&self) -> PathBuf {
        self.path(&format!("home/{}", self.user))
    }
    pub(crate) fn mkdir(&self, rel: &str, mode: u32) {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    /// Mode (with the sticky bit), owner and group of every directory that must never change.
    pub(crate) fn untouchable(&self) -> Vec<(PathBuf, u32, u32, u32)> {
        let mut dirs = vec![self.path("tmp"), self.path("etc"), self.path("home"), self.home()];
        dirs.push(self.home().join(".ssh"));
        dirs.push(self.home().join("own"));
        dirs.into_iter()
            .map(|d| {
                let m = std::fs::metadata(&d).unwrap();
                (d, m.permissions().mode() & 0o7777, m.uid(), m.gid())
            })
            .collect()
    }
    pub(crate) fn run(&self, script: &str) -> (bool, String) {
        let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash").args(["-c", script]).env("PATH", path).output().expect("bash runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
