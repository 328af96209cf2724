//! What a Run does on the VM, rendered as scripts (pure functions; every value that reaches a
//! script is shell-quoted, and secret values never appear in one: they travel as a file's
//! content over SSH stdin).
//!
//! A Run's directory, `/home/<user>/runs/<uid>/`, holds:
//! - `work/`: a git worktree of the ProjectVM's repository at the Run's commit (the
//!   "checkout" the user's paths are relative to);
//! - `run.sh`, `script`: the wrapper systemd starts and the user's script;
//! - `env`: the environment (mode 0600), deleted by the wrapper once read;
//! - `log`: the work's output; `launched`: written (once) when the unit is started;
//! - `result`: written by the unit's `ExecStopPost` when the work ends, however it ends.
//!
//! The `launched` file, written under a lock before `systemd-run`, is what makes a Run start
//! at most once: every later launch finds it and only reports.

use std::time::Duration;

use crate::shell::shell_quote;

/// Output line prefixes the scripts print and the parsers read.
pub const COMMIT_MARKER: &str = "PROJECTVM_COMMIT=";
pub const REVISION_MISSING: &str = "PROJECTVM_REVISION_NOT_FOUND";
pub const LAUNCH_MARKER: &str = "PROJECTVM_LAUNCH=";
pub const LOG_TAIL_MARKER: &str = "---PROJECTVM-LOG-TAIL---";

/// Bytes of the log's end the status script sends; the status keeps less (see `tail`).
pub const LOG_TAIL_READ: u64 = 16 * 1024;

/// Where a Run lives on the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPaths {
    pub user: String,
    /// The Run's UID, checked to be a plain UUID (it names files and a unit).
    pub uid: String,
    /// The ProjectVM's checkout, the worktree's origin.
    pub repo: String,
}

impl RunPaths {
    /// `None` when the UID is not a UUID (the API server makes UUIDs; anything else is not
    /// put into a path or a unit name).
    pub fn new(user: &str, uid: &str, repo: &str) -> Option<Self> {
        let plain = !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        plain.then(|| Self { user: user.to_string(), uid: uid.to_ascii_lowercase(), repo: repo.to_string() })
    }
    pub fn runs_dir(&self) -> String {
        format!("/home/{}/runs", self.user)
    }
    pub fn dir(&self) -> String {
        format!("{}/{}", self.runs_dir(), self.uid)
    }
    pub fn work(&self) -> String {
        format!("{}/work", self.dir())
    }
    pub fn unit(&self) -> String {
        format!("projectvm-run-{}.service", self.uid)
    }
    pub fn env_file(&self) -> String {
        format!("{}/env", self.dir())
    }
    pub fn wrapper(&self) -> String {
        format!("{}/run.sh", self.dir())
    }
    pub fn script_file(&self) -> String {
        format!("{}/script", self.dir())
    }
    pub fn log(&self) -> String {
        format!("{}/log", self.dir())
    }
}

/// Makes the Run's directory and worktree at `revision` (run as the VM user). A commit
/// already present is used as is; a branch or tag is fetched from the remote first, so it
/// runs at what the remote has now. Prints [`COMMIT_MARKER`], or [`REVISION_MISSING`] (exit
/// 3) when the remote has no such revision. Re-running is harmless.
pub fn prepare(p: &RunPaths, revision: &str) -> String {
    format!(
        r#"set -euo pipefail
dir={dir}; work={work}; repo={repo}; rev={rev}
mkdir -p -- {runs} "$dir"
if [ ! -d "$repo/.git" ] && [ ! -f "$repo/.git" ]; then
  echo "projectvm: the ProjectVM's checkout $repo is missing" >&2; exit 4
fi
commit=""
if [[ "$rev" =~ ^[0-9a-f]{{40}}$ ]] && git -C "$repo" cat-file -e "$rev^{{commit}}" 2>/dev/null; then
  commit=$rev
else
  if ! err=$(git -C "$repo" fetch --quiet origin "$rev" 2>&1); then
    echo "$err" >&2
    case "$err" in
      *"couldn't find remote ref"*|*"not our ref"*|*"no such remote ref"*|*"unadvertised object"*)
        echo {missing}; exit 3 ;;
    esac
    exit 5
  fi
  commit=$(git -C "$repo" rev-parse --verify -q "FETCH_HEAD^{{commit}}") || {{ echo {missing}; exit 3; }}
fi
if [ -e "$work" ]; then
  if [ "$(git -C "$work" rev-parse HEAD 2>/dev/null)" != "$commit" ]; then
    git -C "$repo" worktree remove --force "$work" 2>/dev/null || rm -rf -- "$work"
    git -C "$repo" worktree prune
  fi
fi
if [ ! -e "$work" ]; then
  git -C "$repo" worktree add --quiet --detach "$work" "$commit"
fi
echo "{COMMIT_MARKER}$commit"
"#,
        dir = shell_quote(&p.dir()),
        work = shell_quote(&p.work()),
        runs = shell_quote(&p.runs_dir()),
        repo = shell_quote(&p.repo),
        rev = shell_quote(revision),
        missing = REVISION_MISSING,
    )
}

/// The command that writes one of the Run's files from stdin, as the VM user (the login
/// user, no sudo): a private temporary file renamed over the target, so a symlink planted in
/// the directory is replaced, never followed, and root never writes there.
pub fn write_as_user(path: &str, mode: u32) -> String {
    format!(
        "{} sh -c {} sh {}",
        crate::shell::OPERATOR_ENV,
        shell_quote(&format!(
            "set -e; umask 077; p=$1; t=$(mktemp -- \"$p.XXXXXX\"); trap 'rm -f -- \"$t\"' EXIT; cat > \"$t\"; chmod {:04o} -- \"$t\"; mv -f -- \"$t\" \"$p\"; trap - EXIT",
            mode & 0o7777
        )),
        shell_quote(path)
    )
}

/// The Run's command, as the wrapper starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// argv, run without a shell.
    Command(Vec<String>),
    /// A bash script, in the Run's `script` file.
    Script,
}

/// The wrapper systemd runs (as the VM user): sends its output to the log, reads and deletes
/// the environment file, enters the working directory, and execs the work so the unit's
/// main process is the work itself.
pub fn wrapper(p: &RunPaths, working_dir: Option<&str>, work: &Work, run_name: &str, commit: &str) -> String {
    let cd = match working_dir.map(|d| d.trim_end_matches('/')).filter(|d| !d.is_empty()) {
        Some(d) => format!("{}/{}", p.work(), d),
        None => p.work(),
    };
    let exec = match work {
        Work::Command(argv) => format!("exec {}", argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")),
        Work::Script => format!("exec bash -e {}", shell_quote(&p.script_file())),
    };
    format!(
        r#"#!/bin/bash
# Written by projectvm for Run {name}; started by systemd unit {unit}.
set -u
exec >>{log} 2>&1
if [ -f {env} ]; then
  set -a; . {env}; set +a
  rm -f -- {env}
fi
export PROJECTVM_RUN={name} PROJECTVM_RUN_UID={uid} PROJECTVM_COMMIT={commit}
cd -- {cd} || {{ echo "projectvm: workingDir $(printf %q {cd}) does not exist in the checkout" >&2; exit 127; }}
{exec}
"#,
        name = shell_quote(run_name),
        unit = p.unit(),
        env = shell_quote(&p.env_file()),
        uid = shell_quote(&p.uid),
        commit = shell_quote(commit),
        cd = shell_quote(&cd),
        log = shell_quote(&p.log()),
    )
}

/// The environment file's content: `NAME='value'` lines, sourced by the wrapper. Names are
/// checked by the caller (`valid_env_name`); values are quoted, so any text is safe.
pub fn env_file(vars: &[(String, String)]) -> String {
    vars.iter().map(|(k, v)| format!("{k}={}\n", shell_quote(v))).collect()
}

/// A name bash accepts as a variable.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256
}

/// Starts the work under a transient systemd unit, at most once (run as root). Under a lock
/// it counts the run units already active on the VM: with `max_concurrent` or more it prints
/// `queued` and starts nothing. Prints one [`LAUNCH_MARKER`] line: `started`, `already`
/// (launched before; nothing done), `queued`, `busy` (the lock was held too long) or `failed`
/// (the unit could not be started; recorded as the Run's result).
///
/// Root only takes the lock (in `/run`, root's), counts units and calls `systemd-run`: every
/// file in the Run's directory — which the project user owns, and a Run's work could have
/// filled with symlinks — is written by the user, and the unit's output is redirected by the
/// wrapper, as the user, never opened by systemd as root.
pub fn launch(p: &RunPaths, timeout: Duration, max_concurrent: u32) -> String {
    format!(
        r#"set -u
dir={dir}; unit={unit}; user={user}
as_user() {{ runuser -u "$user" -- "$@"; }}
exec 9>>/run/projectvm-runs.lock
if ! flock -w 30 9; then echo "{LAUNCH_MARKER}busy"; exit 0; fi
if as_user test -e "$dir/launched"; then echo "{LAUNCH_MARKER}already"; exit 0; fi
active=$(systemctl list-units --plain --no-legend --state=activating,active,deactivating,reloading 'projectvm-run-*.service' | wc -l)
if [ "$active" -ge {max} ]; then echo "{LAUNCH_MARKER}queued active=$active"; exit 0; fi
as_user sh -c 'date +%s > "$1/launched"' sh "$dir" || {{ echo "{LAUNCH_MARKER}failed"; exit 0; }}
as_user sh -c 'cat > "$1/finish.sh" && chmod 0755 "$1/finish.sh"' sh "$dir" <<'FINISH'
#!/bin/sh
# ExecStopPost of a projectvm Run (as the project user): records how the work ended.
d=$(dirname "$0")
printf 'result=%s code=%s status=%s at=%s\n' "${{SERVICE_RESULT:-}}" "${{EXIT_CODE:-}}" "${{EXIT_STATUS:-}}" "$(date +%s)" > "$d/result.tmp"
mv -f "$d/result.tmp" "$d/result"
FINISH
if ! err=$(systemd-run --quiet --collect --unit "$unit" --uid "$user" --gid "$(id -g "$user")" \
    --working-directory "$dir" \
    -p RuntimeMaxSec={secs} -p TimeoutStopSec=15 -p KillMode=control-group -p StandardInput=null \
    -p "ExecStopPost=/bin/sh $dir/finish.sh" \
    /bin/bash "$dir/run.sh" 2>&1); then
  as_user sh -c 'printf "result=launch-failed code= status= at=%s\n" "$(date +%s)" > "$1/result"' sh "$dir"
  echo "$err" >&2
  echo "{LAUNCH_MARKER}failed"
  exit 0
fi
echo "{LAUNCH_MARKER}started"
"#,
        dir = shell_quote(&p.dir()),
        unit = shell_quote(&p.unit()),
        user = shell_quote(&p.user),
        max = max_concurrent.max(1),
        secs = timeout.as_secs().max(1),
    )
}

/// Reports the Run's state (run as the VM user): `launched=`, `state=` (the unit's
/// ActiveState), the `result` line when the work ended, `log_bytes=`, then after
/// [`LOG_TAIL_MARKER`] the last [`LOG_TAIL_READ`] bytes of the log.
pub fn status(p: &RunPaths) -> String {
    format!(
        r#"set -u
dir={dir}
echo "launched=$(head -c 32 "$dir/launched" 2>/dev/null | tr -dc 0-9)"
echo "state=$(systemctl show -p ActiveState --value {unit} 2>/dev/null | head -c 32)"
if [ -f "$dir/result" ]; then head -c 256 "$dir/result" | head -n 1; echo; fi
echo "log_bytes=$(stat -c %s -- "$dir/log" 2>/dev/null || echo 0)"
echo "{LOG_TAIL_MARKER}"
tail -c {n} -- "$dir/log" 2>/dev/null || true
"#,
        dir = shell_quote(&p.dir()),
        unit = shell_quote(&p.unit()),
        n = LOG_TAIL_READ,
    )
}

/// Stops the Run's unit if it still runs (run as root); the unit's `ExecStopPost` records
/// the end.
pub fn stop(p: &RunPaths) -> String {
    format!(
        "set -u\nunit={unit}\nif systemctl is-active --quiet \"$unit\"; then timeout 30 systemctl stop \"$unit\" || systemctl kill -s KILL \"$unit\"; fi\nsystemctl reset-failed \"$unit\" 2>/dev/null || true\n",
        unit = shell_quote(&p.unit()),
    )
}

/// Removes the Run's worktree and directory (run as the VM user, whose files they are).
pub fn remove(p: &RunPaths) -> String {
    format!(
        "set -u\ndir={dir}; repo={repo}\nif [ -d \"$dir/work\" ]; then git -C \"$repo\" worktree remove --force \"$dir/work\" 2>/dev/null || true; fi\nrm -rf -- \"$dir\"\ngit -C \"$repo\" worktree prune 2>/dev/null || true\n",
        dir = shell_quote(&p.dir()),
        repo = shell_quote(&p.repo),
    )
}

/// Lists the files the artifact patterns match (run as the VM user, in the checkout):
/// `F <size> <path>` records, NUL-terminated, with paths relative to the checkout after
/// symlinks are resolved; a match that resolves outside the checkout is reported as `O
/// <pattern>` and never read; a pattern that matches nothing as `N <pattern>`. Directories
/// bring every file below them.
pub fn list_artifacts(p: &RunPaths, patterns: &[String]) -> String {
    let list: Vec<String> = patterns.iter().map(|s| shell_quote(s)).collect();
    format!(
        r#"set -u
shopt -s globstar nullglob dotglob
cd -- {work} 2>/dev/null || exit 0
root=$(pwd -P)
emit() {{
  local real
  real=$(realpath -e -- "$1" 2>/dev/null) || return 0
  case "$real" in "$root"/*) ;; *) printf 'O %s\0' "$1"; return 0 ;; esac
  [ -f "$real" ] || return 0
  printf 'F %s %s\0' "$(stat -c %s -- "$real")" "${{real#"$root"/}}"
}}
for pattern in {list}; do
  matched=0
  IFS=
  for f in $pattern; do
    matched=1
    if [ -d "$f" ] && [ ! -L "$f" ]; then
      while IFS= read -r -d '' g; do emit "$g"; done < <(find "$f" -type f -print0)
    else
      emit "$f"
    fi
  done
  unset IFS
  [ "$matched" = 1 ] || printf 'N %s\0' "$pattern"
done
"#,
        work = shell_quote(&p.work()),
        list = if list.is_empty() { "''".to_string() } else { list.join(" ") },
    )
}

/// Streams one file of the checkout to stdout (run as the VM user). `path` is one the
/// listing printed: relative, resolved inside the checkout.
pub fn cat_artifact(p: &RunPaths, path: &str) -> String {
    format!("cd -- {} && exec cat -- {}", shell_quote(&p.work()), shell_quote(path))
}

/// Streams the log to stdout (run as the VM user).
pub fn cat_log(p: &RunPaths) -> String {
    format!("exec cat -- {}", shell_quote(&p.log()))
}

/// What the listing found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// (path, size), each path once, in the order found.
    pub files: Vec<(String, u64)>,
    /// Patterns that matched nothing.
    pub unmatched: Vec<String>,
    /// Matches that resolved outside the checkout (never read).
    pub outside: Vec<String>,
    /// Records that could not be read (not UTF-8, malformed).
    pub skipped: usize,
}

/// Parses [`list_artifacts`]' output. Never trusts it: sizes must parse, paths must be
/// relative UTF-8 without `..` segments, and duplicates are dropped.
pub fn parse_listing(out: &[u8]) -> Listing {
    let mut l = Listing::default();
    let mut seen = std::collections::HashSet::new();
    for rec in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let Ok(text) = std::str::from_utf8(rec) else {
            l.skipped += 1;
            continue;
        };
        match text.split_once(' ') {
            Some(("F", rest)) => {
                let Some((size, path)) = rest.split_once(' ') else {
                    l.skipped += 1;
                    continue;
                };
                let (Ok(size), true) = (size.parse::<u64>(), safe_relative(path)) else {
                    l.skipped += 1;
                    continue;
                };
                if seen.insert(path.to_string()) {
                    l.files.push((path.to_string(), size));
                }
            }
            Some(("N", pattern)) => l.unmatched.push(pattern.to_string()),
            Some(("O", pattern)) => l.outside.push(pattern.to_string()),
            _ => l.skipped += 1,
        }
    }
    l
}

/// A relative path with no empty, `.` or `..` segment and no control characters.
pub fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !path.chars().any(|c| c.is_control())
}

/// How the work ended, from the `result` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Exited with this code (0 is success).
    Exited { code: i32 },
    /// Stopped at `RuntimeMaxSec`.
    TimedOut,
    /// Killed by a signal (stopped by the operator, or the VM shut down).
    Killed { signal: String },
    /// The unit could not be started.
    LaunchFailed,
}

/// What the status script reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Unix seconds the work was launched, when it was.
    pub launched_at: Option<i64>,
    /// The unit's ActiveState (`active`, `inactive`, … or empty when it is gone).
    pub state: String,
    pub ending: Option<Ending>,
    /// Unix seconds the work ended.
    pub ended_at: Option<i64>,
    pub log_bytes: u64,
    /// The end of the log, as sent (lossy UTF-8).
    pub log_tail: String,
}

impl Observed {
    /// The unit runs (or is being started or stopped).
    pub fn unit_active(&self) -> bool {
        matches!(self.state.as_str(), "active" | "activating" | "deactivating" | "reloading")
    }
}

/// Parses [`status`]' output; anything unexpected is ignored, never trusted.
pub fn parse_status(out: &[u8]) -> Observed {
    let marker = LOG_TAIL_MARKER.as_bytes();
    let (head, tail) = match out.windows(marker.len()).position(|w| w == marker) {
        Some(i) => {
            let rest = &out[i + marker.len()..];
            (&out[..i], rest.strip_prefix(b"\n").unwrap_or(rest))
        }
        None => (out, &[][..]),
    };
    let mut o = Observed { log_tail: crate::text::lossy(tail), ..Default::default() };
    for line in crate::text::lossy(head).lines() {
        if let Some(v) = line.strip_prefix("launched=") {
            o.launched_at = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("state=") {
            o.state = v.trim().chars().filter(char::is_ascii_alphabetic).collect();
        } else if let Some(v) = line.strip_prefix("log_bytes=") {
            o.log_bytes = v.trim().parse().unwrap_or(0);
        } else if line.starts_with("result=") {
            let (ending, at) = parse_result(line);
            o.ending = ending;
            o.ended_at = at;
        }
    }
    o
}

/// `result=<SERVICE_RESULT> code=<EXIT_CODE> status=<EXIT_STATUS> at=<unix>`, as systemd
/// gives them to `ExecStopPost`.
fn parse_result(line: &str) -> (Option<Ending>, Option<i64>) {
    let field = |k: &str| {
        line.split_whitespace().find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('='))).unwrap_or("")
    };
    let at = field("at").parse().ok();
    let result = field("result");
    let code = field("code");
    let status = field("status");
    let ending = match (result, code) {
        ("launch-failed", _) => Ending::LaunchFailed,
        ("timeout", _) => Ending::TimedOut,
        (_, "exited") => Ending::Exited { code: status.parse().unwrap_or(-1) },
        (_, "killed" | "dumped") => {
            Ending::Killed { signal: status.chars().filter(char::is_ascii_alphanumeric).take(16).collect() }
        }
        ("success", _) => Ending::Exited { code: 0 },
        _ => return (None, at),
    };
    (Some(ending), at)
}

/// The last `max_lines` lines of a log, at most `max_bytes`, cut on character boundaries.
pub fn tail(log: &str, max_lines: usize, max_bytes: usize) -> String {
    let trimmed = log.trim_end_matches('\n');
    let start = trimmed.rmatch_indices('\n').nth(max_lines.saturating_sub(1)).map_or(0, |(i, _)| i + 1);
    crate::text::tail(&trimmed[start..], max_bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn paths() -> RunPaths {
        RunPaths::new("project", "0b9c6f3e-2b7a-4c59-9d0e-6f1f2a3b4c5d", "/home/project/repo").unwrap()
    }

    fn assert_parses(script: &str) {
        let out = Command::new("bash").arg("-n").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "bash -n: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn only_a_uuid_names_files_and_units() {
        assert!(RunPaths::new("project", "../../etc", "/r").is_none());
        assert!(RunPaths::new("project", "a b", "/r").is_none());
        assert!(RunPaths::new("project", "", "/r").is_none());
        let p = paths();
        assert_eq!(p.dir(), "/home/project/runs/0b9c6f3e-2b7a-4c59-9d0e-6f1f2a3b4c5d");
        assert_eq!(p.unit(), "projectvm-run-0b9c6f3e-2b7a-4c59-9d0e-6f1f2a3b4c5d.service");
    }

    #[test]
    fn every_script_parses() {
        let p = paths();
        assert_parses(&prepare(&p, "main"));
        assert_parses(&launch(&p, Duration::from_secs(60), 1));
        assert_parses(&status(&p));
        assert_parses(&stop(&p));
        assert_parses(&remove(&p));
        assert_parses(&list_artifacts(&p, &["out/*.txt".into(), "it's here".into()]));
        assert_parses(&list_artifacts(&p, &[]));
        assert_parses(&wrapper(&p, Some("sub dir"), &Work::Command(vec!["echo".into(), "$(id)".into()]), "r", "c"));
        assert_parses(&wrapper(&p, None, &Work::Script, "r", "c"));
    }

    #[test]
    fn files_are_written_as_the_user_and_replace_symlinks() {
        let dir = std::env::temp_dir().join(format!("pvm-run-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(dir.join("victim"), dir.join("env")).unwrap();
        let target = dir.join("env");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(write_as_user(&target.to_string_lossy(), 0o600))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"A='1'\n").unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(dir.join("victim")).unwrap(), "keep", "the symlink was not followed");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "A='1'\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::symlink_metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn root_writes_nothing_in_the_users_run_directory() {
        // The directory is the project user's: a Run could have planted symlinks in it, so
        // every write there goes through `as_user`, and systemd opens no file in it.
        let script = launch(&paths(), Duration::from_secs(5), 1);
        for line in script.lines().filter(|l| l.contains("\"$dir") || l.contains("$1/")) {
            let redirect = line.replace("2>&1", "").contains('>');
            let writes = redirect || line.contains("chown") || line.contains("chmod");
            assert!(!writes || line.trim_start().starts_with("as_user"), "root writes in the run directory: {line}");
        }
        assert!(!script.contains("StandardOutput=append"), "the wrapper, as the user, opens the log");
        assert!(wrapper(&paths(), None, &Work::Script, "r", "c").contains("exec >>'/home/project/runs/"));
    }

    #[test]
    fn the_wrapper_runs_argv_without_a_shell_and_reads_the_env_file_once() {
        let dir = std::env::temp_dir().join(format!("pvm-run-wrapper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = RunPaths { user: "u".into(), uid: "1".into(), repo: "/r".into() };
        // Point the paths at a scratch directory by rewriting them in the rendered text.
        let base = dir.to_string_lossy().to_string();
        std::fs::create_dir_all(dir.join("work/sub")).unwrap();
        let secret = "s3cr3t 'quoted' $(touch /tmp/pwned) \n second line";
        std::fs::write(dir.join("env"), env_file(&[("TOKEN".into(), secret.into())])).unwrap();
        let script = wrapper(
            &p,
            Some("sub"),
            &Work::Command(vec![
                "bash".into(),
                "-c".into(),
                "printf '%s|%s|%s' \"$TOKEN\" \"$PWD\" \"$1\"".into(),
                "x".into(),
                "$(id)".into(),
            ]),
            "r",
            "c0ffee",
        )
        .replace(&p.dir(), &base);
        std::fs::write(dir.join("log"), "earlier\n").unwrap();
        let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "the work's output goes to the log, appended");
        let text = std::fs::read_to_string(dir.join("log")).unwrap();
        assert_eq!(text, format!("earlier\n{secret}|{base}/work/sub|$(id)"));
        assert!(!dir.join("env").exists(), "the env file is removed once read");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_listing_stays_inside_the_checkout() {
        let dir = std::env::temp_dir().join(format!("pvm-run-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let work = dir.join("work");
        std::fs::create_dir_all(work.join("out/deep")).unwrap();
        std::fs::write(work.join("out/a.txt"), "aa").unwrap();
        std::fs::write(work.join("out/deep/b.bin"), "bbbb").unwrap();
        std::fs::write(work.join("odd name\nline.txt"), "x").unwrap();
        std::fs::write(dir.join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), work.join("link")).unwrap();
        let p = RunPaths { user: "u".into(), uid: "1".into(), repo: "/r".into() };
        let script = list_artifacts(
            &p,
            &["out".into(), "out/*.txt".into(), "link".into(), "missing/*".into(), "**/*.bin".into()],
        )
        .replace(&p.dir(), &dir.to_string_lossy());
        let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let l = parse_listing(&out.stdout);
        let mut files = l.files.clone();
        files.sort();
        assert_eq!(files, [("out/a.txt".to_string(), 2), ("out/deep/b.bin".to_string(), 4)]);
        assert_eq!(l.outside, ["link"]);
        assert_eq!(l.unmatched, ["missing/*"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listings_are_never_trusted() {
        let l =
            parse_listing(b"F 12 ../etc/passwd\0F x a\0F 3 /abs\0F 5 ok.txt\0F 5 ok.txt\0\xff\xfe\0junk\0F 7 a\nb\0");
        assert_eq!(l.files, [("ok.txt".to_string(), 5)]);
        assert_eq!(l.skipped, 6);
    }

    #[test]
    fn status_parsing() {
        let o = parse_status(
            b"launched=1700000000\nstate=inactive\nresult=exit-code code=exited status=3 at=1700000060\nlog_bytes=42\n---PROJECTVM-LOG-TAIL---\nline 1\n\xffline 2\n",
        );
        assert_eq!(o.launched_at, Some(1_700_000_000));
        assert_eq!(o.ending, Some(Ending::Exited { code: 3 }));
        assert_eq!(o.ended_at, Some(1_700_000_060));
        assert_eq!(o.log_bytes, 42);
        assert!(o.log_tail.starts_with("line 1\n"));
        assert!(!o.unit_active());
        let t = parse_status(b"launched=1\nstate=failed\nresult=timeout code=killed status=TERM at=2\n");
        assert_eq!(t.ending, Some(Ending::TimedOut));
        let k = parse_status(b"state=inactive\nresult=signal code=killed status=KILL at=2\n");
        assert_eq!(k.ending, Some(Ending::Killed { signal: "KILL".into() }));
        let ok = parse_status(b"state=active\nresult=success code=exited status=0 at=2\n");
        assert_eq!(ok.ending, Some(Ending::Exited { code: 0 }));
        let none = parse_status(b"launched=\nstate=\n");
        assert_eq!(none.launched_at, None);
        assert_eq!(none.ending, None);
        // A forged, huge or hostile result line does not break anything.
        let bad = parse_status(b"result=exit-code code=exited status=99999999999999999999 at=x\n");
        assert_eq!(bad.ending, Some(Ending::Exited { code: -1 }));
    }

    #[test]
    fn tails_are_bounded_on_character_boundaries() {
        let log = (1..=100).map(|i| format!("line {i} é\n")).collect::<String>();
        let t = tail(&log, 3, 4096);
        assert_eq!(t, "line 98 é\nline 99 é\nline 100 é");
        let t = tail(&"é".repeat(5000), 40, 4096);
        assert!(t.len() <= 4096 && t.chars().all(|c| c == 'é'));
        assert_eq!(tail("", 40, 4096), "");
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("DB_PASSWORD") && valid_env_name("_x1"));
        assert!(!valid_env_name("1A") && !valid_env_name("A-B") && !valid_env_name("") && !valid_env_name("A=B"));
    }
}
