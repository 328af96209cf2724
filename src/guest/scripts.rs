//! Script renderers for each step. Scripts are sent as stdin to `bash -s` (never as a
//! command-line argument), so their text is not visible in `ps` on the VM.

use crate::shell::shell_quote;
pub use crate::shell::{OPERATOR_ENV, RUN_AS_ROOT, RUN_AS_USER};

/// Where the operator keeps its own state on the VM.
pub const STATE_DIR: &str = "/var/lib/projectvm";
/// The prerequisites log, kept on the VM; its tail goes into the condition on failure.
pub const PREREQUISITES_LOG: &str = "/var/log/projectvm/prerequisites.log";
/// The user-supplied prerequisites script, written with its content over stdin.
pub const PREREQUISITES_SCRIPT: &str = "/var/lib/projectvm/prerequisites.sh";
/// Marker lines the scripts print so the operator can pick values out of their output.
pub const COMMIT_MARKER: &str = "PROJECTVM_COMMIT=";
pub const BRANCH_MARKER: &str = "PROJECTVM_BRANCH=";

/// Path of the marker file recording the fingerprint a step last completed with.
pub fn marker_path(step: &str) -> String {
    format!("{STATE_DIR}/{step}.done")
}

/// Installs packages (only the missing ones) and runs the optional script, logging to
/// [`PREREQUISITES_LOG`]. Records `fingerprint` in the step's marker file on success.
pub fn prerequisites(packages: &[String], run_script: bool, fingerprint: &str) -> String {
    let pkgs: Vec<String> = packages.iter().map(|p| shell_quote(p)).collect();
    format!(
        r#"set -euo pipefail
install -d -m 0755 /var/log/projectvm {state}
exec >>{log} 2>&1
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) prerequisites"
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in {pkgs}; do
  name="${{p%%=*}}"
  if ! dpkg-query -W -f='${{Status}}' "$name" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${{#missing[@]}}" -gt 0 ]; then
  echo "installing: ${{missing[*]}}"
  apt-get -o DPkg::Lock::Timeout=300 update -q
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${{missing[@]}}"
else
  echo "all packages present"
fi
if [ {run_script} = yes ]; then
  echo "--- running prerequisites script"
  bash {script}
fi
printf '%s\n' {fp} > {marker}
echo "=== done"
"#,
        state = STATE_DIR,
        log = PREREQUISITES_LOG,
        pkgs = if pkgs.is_empty() { String::new() } else { pkgs.join(" ") },
        run_script = if run_script { "yes" } else { "no" },
        script = PREREQUISITES_SCRIPT,
        fp = shell_quote(fingerprint),
        marker = marker_path("prerequisites"),
    )
}

/// At most this much of the prerequisites log goes into a failure message.
pub const LOG_TAIL_BYTES: usize = 4096;

/// Prints the last lines of the prerequisites log (for the failure message).
pub fn prerequisites_log_tail(lines: u32) -> String {
    // Lines can be of any length: the byte bound keeps the answer small.
    format!("sudo -n tail -n {lines} {PREREQUISITES_LOG} 2>/dev/null | tail -c {LOG_TAIL_BYTES} || true")
}

/// Cheap check: prints the fingerprint a step last completed with, or nothing.
pub fn read_marker(step: &str) -> String {
    // A fingerprint is 24 hex digits; a marker pointed at something huge is read no further.
    format!("head -c 256 {} 2>/dev/null || true", marker_path(step))
}

/// What the repository step needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSync {
    pub url: String,
    pub revision: Option<String>,
    pub path: String,
    pub depth: Option<i32>,
    /// Path of the credential helper on the VM, when the repository needs a token.
    pub credential_helper: Option<String>,
    /// The VM user that owns the checkout.
    pub user: String,
}

/// The VM user's home directory: the only tree the operator creates or re-owns folders in.
pub fn user_home(user: &str) -> String {
    format!("/home/{user}")
}

/// Shell functions for the root scripts that prepare a checkout folder; they expect `user`
/// and `home` to be set. A path counts as below the home only after symlinks and `..` are
/// resolved, so a link from the home to `/etc` leads nowhere. Below the home, a missing
/// directory is made by the user itself (so every directory on the way is theirs) and an
/// existing one of somebody else's is given to the user; modes are never changed. Outside
/// the home nothing is created, re-owned or re-moded (admission refuses such folders; an
/// object stored before that rule is told so).
pub(crate) const FOLDER_FUNCTIONS: &str = r#"below_home() {
  local real realhome
  real="$(realpath -m -- "$1")"
  realhome="$(realpath -m -- "$home")"
  case "$real/" in "$realhome"/?*/) return 0 ;; esac
  return 1
}
as_user() {
  if [ "$(id -un)" = "$user" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}
# A checkout's parent: made for the user when missing and below the home; else left alone.
parent_folder() {
  if [ ! -e "$1" ] && [ ! -L "$1" ] && below_home "$1"; then
    as_user mkdir -p -- "$(realpath -m -- "$1")"
  fi
}
# The folder itself.
user_folder() {
  local real
  if ! below_home "$1"; then
    if [ -d "$1" ]; then
      echo "projectvm: $1 is not below $home; leaving its owner and permissions as they are" >&2
      return 0
    fi
    echo "projectvm: $1 does not exist and is not below $home, the only place the operator creates folders in" >&2
    return 3
  fi
  real="$(realpath -m -- "$1")"
  if [ ! -e "$real" ]; then
    as_user mkdir -p -- "$real"
  elif [ ! -d "$real" ]; then
    echo "projectvm: $1 exists and is not a directory" >&2
    return 3
  elif [ "$(stat -c %U -- "$real")" != "$user" ]; then
    chown -- "$user:" "$real"
  fi
}
"#;

/// Creates the checkout's parent directory for the user when it is missing and below the
/// user's home (run as root). Never touches anything outside the home.
pub fn prepare_repo_parent(sync: &RepoSync) -> String {
    prepare_repo_parent_in(sync, &user_home(&sync.user))
}

fn prepare_repo_parent_in(sync: &RepoSync, home: &str) -> String {
    format!(
        "set -eu\nuser={u}\nhome={h}\n{FOLDER_FUNCTIONS}parent_folder {p}\n",
        u = shell_quote(&sync.user),
        h = shell_quote(home),
        p = shell_quote(&parent_dir(&sync.path)),
    )
}

fn parent_dir(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => trimmed[..i].to_string(),
    }
}

/// Clones the repository, or fetches and checks out the revision when a checkout exists.
/// Runs as the VM user. Prints [`COMMIT_MARKER`] and [`BRANCH_MARKER`] lines at the end.
pub fn repository_sync(sync: &RepoSync) -> String {
    let q = |s: &str| shell_quote(s);
    format!(
        r#"set -euo pipefail
url={url}
rev={rev}
dir={dir}
depth={depth}
helper={helper}
export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=/bin/false SSH_ASKPASS=/bin/false
g() {{
  if [ -n "$helper" ]; then
    git -c credential.helper= -c "credential.helper=$helper" "$@"
  else
    git -c credential.helper= "$@"
  fi
}}
depth_args=()
if [ -n "$depth" ]; then depth_args=(--depth "$depth"); fi
# What the revision names: refs/heads/NAME a branch and refs/tags/NAME a tag exactly (also
# one whose name looks like a commit); 7-40 hex digits a commit (admission lets only full
# 40-digit ones through); anything else a branch or tag, as git clone --branch takes it.
kind=auto
name="$rev"
case "$rev" in
  refs/heads/?*) kind=branch; name="${{rev#refs/heads/}}" ;;
  refs/tags/?*) kind=tag; name="${{rev#refs/tags/}}" ;;
  *) if [[ "$rev" =~ ^[0-9a-f]{{7,40}}$ ]]; then kind=commit; fi ;;
esac
if [ ! -d "$dir/.git" ]; then
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    echo "fatal: $dir exists, is not empty and is not a git checkout" >&2
    exit 3
  fi
  if [ -z "$rev" ]; then
    g clone --progress "${{depth_args[@]}}" --single-branch -- "$url" "$dir"
  elif [ "$kind" = auto ] || [ "$kind" = branch ]; then
    g clone --progress "${{depth_args[@]}}" --single-branch --branch "$name" -- "$url" "$dir"
  else
    mkdir -p "$dir"
    git -C "$dir" init -q
    git -C "$dir" remote add origin "$url"
    g -C "$dir" fetch --progress "${{depth_args[@]}}" origin "$rev"
    git -C "$dir" checkout -q --detach FETCH_HEAD
  fi
else
  current_url="$(git -C "$dir" remote get-url origin 2>/dev/null || true)"
  if [ "$current_url" != "$url" ]; then
    git -C "$dir" remote set-url origin "$url" 2>/dev/null || git -C "$dir" remote add origin "$url"
  fi
  if [ -z "$rev" ]; then
    g -C "$dir" fetch --progress "${{depth_args[@]}}" origin
    git -C "$dir" merge -q --ff-only '@{{upstream}}' 2>/dev/null || true
  else
    g -C "$dir" fetch --progress "${{depth_args[@]}}" origin "$rev"
    if [ "$kind" = branch ] || {{ [ "$kind" = auto ] && g -C "$dir" ls-remote --exit-code --heads origin "$rev" >/dev/null 2>&1; }}; then
      git -C "$dir" checkout -q -B "$name" FETCH_HEAD
    else
      git -C "$dir" checkout -q --detach FETCH_HEAD
    fi
  fi
fi
# The user's own git commands on the VM use the same helper, so a refreshed token works
# for them too.
git -C "$dir" config --local --unset-all credential.helper 2>/dev/null || true
if [ -n "$helper" ]; then
  git -C "$dir" config --local --add credential.helper ''
  git -C "$dir" config --local --add credential.helper "$helper"
fi
echo "{commit_marker}$(git -C "$dir" rev-parse HEAD)"
echo "{branch_marker}$(git -C "$dir" symbolic-ref -q --short HEAD || true)"
"#,
        url = q(&sync.url),
        rev = q(sync.revision.as_deref().unwrap_or("")),
        dir = q(sync.path.trim_end_matches('/')),
        depth = q(&sync.depth.map(|d| d.to_string()).unwrap_or_default()),
        helper = q(sync.credential_helper.as_deref().unwrap_or("")),
        commit_marker = COMMIT_MARKER,
        branch_marker = BRANCH_MARKER,
    )
}

/// The credential helper git runs: answers `get` only for https on the repository's exact
/// `host[:port]` (git passes the port in `host=` when the URL has one), with the token read
/// from this file's own text. The file is written with mode 0700 for the VM user only;
/// `printf` is a shell builtin, so the token never becomes a process argument.
pub fn credential_helper(host: &str, token: &str) -> String {
    format!(
        r#"#!/bin/sh
# Written by projectvm. Answers git's credential requests for one https host and port.
[ "$1" = get ] || exit 0
protocol=
host=
while IFS= read -r line && [ -n "$line" ]; do
  case "$line" in
    protocol=*) protocol="${{line#protocol=}}" ;;
    host=*) host="${{line#host=}}" ;;
  esac
done
[ "$protocol" = https ] || exit 0
[ "$host" = {host} ] || exit 0
printf 'username=x-access-token\n'
printf 'password=%s\n' {token}
"#,
        host = shell_quote(host),
        token = shell_quote(token),
    )
}

/// Directory for the credential helper, in the user's home.
pub fn credential_helper_path(user: &str) -> String {
    format!("/home/{user}/.config/projectvm/git-credential-helper")
}

/// Creates the helper's directory, private to the user (run as root).
pub fn prepare_credential_dir(user: &str) -> String {
    let dir = format!("/home/{user}/.config/projectvm");
    format!(
        "set -eu\ninstall -d -o {u} -g {u} -m 0700 /home/{u}/.config {d}\nchmod 0700 {d}\n",
        u = shell_quote(user),
        d = shell_quote(&dir)
    )
}

/// Prints `PROJECTVM_ACTIVE=1` when a person is active on the VM right now: a terminal
/// session, or a process of the project user that the operator did not start (a build left
/// running in tmux or with nohup counts), or a Run's unit. Prints `PROJECTVM_ACTIVE=0`
/// otherwise, and `PROJECTVM_LAST_RUN_END=<unix seconds>` for the most recent end of a Run
/// (0 when none ended), so the idle timer starts again when the last Run ends.
pub fn activity_probe(user: &str) -> String {
    format!(
        r#"set -u
active=0
if [ -n "$(who 2>/dev/null)" ]; then active=1; fi
if systemctl list-units --plain --no-legend --state=activating,active,deactivating 'projectvm-run-*.service' 2>/dev/null | grep -q .; then
  active=1
fi
for pid in $(pgrep -u {u} 2>/dev/null); do
  [ "$active" = 1 ] && break
  comm=$(cat /proc/$pid/comm 2>/dev/null || true)
  case "$comm" in sshd|systemd|"(sd-pam)") continue ;; esac
  if [ -r /proc/$pid/environ ] && tr '\0' '\n' < /proc/$pid/environ | grep -qx '{marker}'; then
    continue
  fi
  [ -e /proc/$pid ] && active=1
done
echo "PROJECTVM_ACTIVE=$active"
last=$(find /home/{u}/runs -mindepth 2 -maxdepth 2 -name result -printf '%T@\n' 2>/dev/null | sort -n | tail -n 1)
echo "PROJECTVM_LAST_RUN_END=${{last%.*}}"
"#,
        u = shell_quote(user),
        marker = OPERATOR_ENV,
    )
}

/// The most recent end of a Run, from [`activity_probe`]'s output.
pub fn last_run_end(probe_output: &str) -> Option<i64> {
    probe_output
        .lines()
        .find_map(|l| l.strip_prefix("PROJECTVM_LAST_RUN_END="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|t| *t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::scratch::{Root, assert_parses, owner};
    use std::path::Path;
    use std::process::Command;

    const HOSTILE: &[&str] = &[
        "a; rm -rf /",
        "$(touch /tmp/pwned)",
        "`id`",
        "it's \"quoted\"",
        "line\nbreak",
        "../../etc/passwd",
        "back\\slash",
        "",
    ];

    /// Runs the first lines of a rendered script (the variable assignments) in bash and
    /// prints the variables back: hostile values must arrive byte for byte.
    fn eval_assignments(script: &str, vars: &[&str]) -> Vec<String> {
        let assignments: String =
            script.lines().skip(1).take_while(|l| !l.starts_with("export")).collect::<Vec<_>>().join("\n");
        let mut prog = assignments;
        for v in vars {
            prog.push_str(&format!("\nprintf '%s\\0' \"${v}\""));
        }
        let out = Command::new("bash").args(["-c", &prog]).output().expect("bash runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|s| !s.is_empty() || vars.is_empty())
            .map(String::from)
            .collect()
    }

    fn sync(url: &str, rev: Option<&str>, path: &str) -> RepoSync {
        RepoSync {
            url: url.into(),
            revision: rev.map(String::from),
            path: path.into(),
            depth: Some(1),
            credential_helper: None,
            user: "project".into(),
        }
    }

    #[test]
    fn repository_script_parses_and_carries_hostile_values_verbatim() {
        for h in HOSTILE.iter().filter(|h| !h.is_empty()) {
            let s = sync(&format!("https://example.com/{h}"), Some(h), &format!("/home/project/{h}"));
            let script = repository_sync(&s);
            assert_parses(&script);
            let vals = eval_assignments(&script, &["url", "rev", "dir"]);
            assert_eq!(vals[0], format!("https://example.com/{h}"));
            assert_eq!(vals[1], *h);
            assert_eq!(vals[2], format!("/home/project/{h}").trim_end_matches('/'));
        }
    }

    #[test]
    fn repository_script_uses_single_branch_and_depth() {
        let script = repository_sync(&sync("https://example.com/a.git", Some("main"), "/home/project/repo"));
        assert!(script.contains("--single-branch --branch \"$name\""));
        assert!(script.contains("depth='1'"));
        assert!(script.contains("fetch --progress"));
        assert!(script.contains(COMMIT_MARKER));
    }

    #[test]
    fn credential_helper_answers_only_its_host_and_only_get() {
        let token = "tok'en$(id)\"`x`";
        let helper = credential_helper("git.example.com", token);
        let dir = std::env::temp_dir().join(format!("pvm-helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("helper");
        std::fs::write(&path, &helper).unwrap();
        let run = |arg: &str, input: &str| {
            let mut child = Command::new("sh")
                .arg(&path)
                .arg(arg)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            // A helper that refuses exits without reading: its closed stdin is no failure.
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
            String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
        };
        let got = run("get", "protocol=https\nhost=git.example.com\n\n");
        assert_eq!(got, format!("username=x-access-token\npassword={token}\n"));
        assert_eq!(run("get", "protocol=https\nhost=evil.example.com\n\n"), "");
        assert_eq!(run("get", "protocol=http\nhost=git.example.com\n\n"), "", "never over plain http");
        assert_eq!(run("get", "protocol=https\nhost=git.example.com:8443\n\n"), "", "another port is another host");
        let on_port = dir.join("helper-port");
        std::fs::write(&on_port, credential_helper("git.example.com:8443", token)).unwrap();
        let out = Command::new("sh")
            .arg(&on_port)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"protocol=https\nhost=git.example.com:8443\n\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("username=x-access-token\npassword={token}\n"));
        assert_eq!(run("store", "protocol=https\nhost=git.example.com\n\n"), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prerequisites_script_quotes_packages_and_records_fingerprint() {
        let script = prerequisites(&["jq".into(), "tree=2.1.0-1".into()], true, "fp-1");
        assert_parses(&script);
        assert!(script.contains("for p in 'jq' 'tree=2.1.0-1'; do"));
        assert!(script.contains("bash /var/lib/projectvm/prerequisites.sh"));
        assert!(script.contains("printf '%s\\n' 'fp-1' > /var/lib/projectvm/prerequisites.done"));
        let none = prerequisites(&[], false, "fp");
        assert_parses(&none);
        assert!(none.contains("if [ no = yes ]"));
    }

    #[test]
    fn parent_dirs() {
        assert_eq!(parent_dir("/home/project/repo"), "/home/project");
        assert_eq!(parent_dir("/home/project/repo/"), "/home/project");
        assert_eq!(parent_dir("/repo"), "/");
        assert_parses(&prepare_repo_parent(&sync("https://e.com/a", None, "/srv/x/y")));
    }

    #[test]
    fn activity_probe_parses() {
        assert_parses(&activity_probe("project"));
    }

    fn repo_parent(r: &Root, path: &Path) -> (bool, String) {
        let mut s = sync("https://example.com/a.git", None, &path.display().to_string());
        s.user = r.user.clone();
        r.run(&prepare_repo_parent_in(&s, &r.home().display().to_string()))
    }

    #[test]
    fn repo_parent_is_made_only_below_the_home() {
        let r = Root::new("parent");
        let before = r.untouchable();
        let home = r.home();
        let (ok, err) = repo_parent(&r, &home.join("a/b/repo"));
        assert!(ok, "{err}");
        assert_eq!(owner(&home.join("a")), r.uid);
        assert_eq!(owner(&home.join("a/b")), r.uid);
        for path in [
            home.join("repo"),
            r.path("tmp/repo"),
            r.path("etc/repo"),
            r.path("srv/x/repo"),
            home.join("link/x/repo"),
            home.join("../../srv/repo"),
        ] {
            let (ok, err) = repo_parent(&r, &path);
            assert!(ok, "{}: {err}", path.display());
        }
        assert!(!r.path("srv").exists(), "nothing is created outside the home");
        assert!(!r.path("etc/x").exists(), "not through a link either");
        assert_eq!(r.untouchable(), before);
    }

    // --- Revisions: full commits, and branches and tags named exactly. ---

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs the rendered repository script; returns (exit, commit marker, branch marker, stderr).
    fn run_sync(s: &RepoSync) -> (i32, String, String, String) {
        let out = Command::new("bash")
            .args(["-c", &repository_sync(s)])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let marker = |m: &str| stdout.lines().find_map(|l| l.strip_prefix(m)).unwrap_or("").trim().to_string();
        (
            out.status.code().unwrap_or(-1),
            marker(COMMIT_MARKER),
            marker(BRANCH_MARKER),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn repository_script_takes_full_commits_and_exact_refs() {
        let dir = std::env::temp_dir().join(format!("pvm-revisions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let origin = dir.join("origin");
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q"]);
        git(&origin, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let first = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["tag", "v1"]);
        git(&origin, &["commit", "-q", "--allow-empty", "-m", "two"]);
        let main = git(&origin, &["rev-parse", "HEAD"]);
        // A branch whose name looks like an abbreviated commit.
        git(&origin, &["checkout", "-q", "-b", "deadbeef", &first]);
        git(&origin, &["commit", "-q", "--allow-empty", "-m", "hex branch"]);
        let hex_branch = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["checkout", "-q", "main"]);
        let url = format!("file://{}", origin.display());
        let at = |rev: Option<&str>, n: &str| {
            let mut s = sync(&url, rev, &dir.join(n).display().to_string());
            s.depth = None;
            s
        };

        // Fresh clones.
        let (code, commit, _, err) = run_sync(&at(Some(&first), "by-commit"));
        assert_eq!((code, commit.as_str()), (0, first.as_str()), "{err}");
        let (code, commit, branch, err) = run_sync(&at(Some("refs/heads/deadbeef"), "by-head"));
        assert_eq!((code, commit.as_str(), branch.as_str()), (0, hex_branch.as_str(), "deadbeef"), "{err}");
        let (code, commit, _, err) = run_sync(&at(Some("refs/tags/v1"), "by-tag"));
        assert_eq!((code, commit.as_str()), (0, first.as_str()), "{err}");
        let (code, commit, branch, err) = run_sync(&at(Some("main"), "by-name"));
        assert_eq!((code, commit.as_str(), branch.as_str()), (0, main.as_str(), "main"), "{err}");
        // An abbreviated commit cannot be fetched (admission refuses it for that reason).
        let (code, _, _, err) = run_sync(&at(Some(&first[..12]), "by-short"));
        assert_ne!(code, 0);
        assert_eq!(crate::guest::git::classify(&err, false), crate::guest::git::GitFailure::RevisionNotFound, "{err}");

        // An existing checkout moves to each of them.
        let mut s = at(Some("main"), "moving");
        assert_eq!(run_sync(&s).0, 0);
        for (rev, want, want_branch) in [
            ("refs/heads/deadbeef", &hex_branch, "deadbeef"),
            ("refs/tags/v1", &first, ""),
            (main.as_str(), &main, ""),
            ("main", &main, "main"),
        ] {
            s.revision = Some(rev.to_string());
            let (code, commit, branch, err) = run_sync(&s);
            assert_eq!((code, &commit, branch.as_str()), (0, want, want_branch), "{rev}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
