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

/// Creates the checkout's parent directory owned by the user (run as root).
pub fn prepare_repo_parent(sync: &RepoSync) -> String {
    let parent = parent_dir(&sync.path);
    format!(
        "set -eu\nif [ ! -d {p} ]; then install -d -o {u} -g {u} -m 0755 {p}; fi\n",
        p = shell_quote(&parent),
        u = shell_quote(&sync.user)
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
is_commit=no
if [[ "$rev" =~ ^[0-9a-f]{{7,40}}$ ]]; then is_commit=yes; fi
if [ ! -d "$dir/.git" ]; then
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    echo "fatal: $dir exists, is not empty and is not a git checkout" >&2
    exit 3
  fi
  if [ -z "$rev" ]; then
    g clone --progress "${{depth_args[@]}}" --single-branch -- "$url" "$dir"
  elif [ "$is_commit" = no ]; then
    g clone --progress "${{depth_args[@]}}" --single-branch --branch "$rev" -- "$url" "$dir"
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
    if [ "$is_commit" = no ] && g -C "$dir" ls-remote --exit-code --heads origin "$rev" >/dev/null 2>&1; then
      git -C "$dir" checkout -q -B "$rev" FETCH_HEAD
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

/// The credential helper git runs: answers `get` for one host with the token read from this
/// file's own text. The file is written with mode 0700 for the VM user only; `printf` is a
/// shell builtin, so the token never becomes a process argument.
pub fn credential_helper(host: &str, token: &str) -> String {
    format!(
        r#"#!/bin/sh
# Written by projectvm. Answers git's credential requests for one host.
[ "$1" = get ] || exit 0
host=
while IFS= read -r line && [ -n "$line" ]; do
  case "$line" in host=*) host="${{line#host=}}" ;; esac
done
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

/// code-server settings rendered into its config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeServerConfig {
    pub user: String,
    pub port: i32,
    pub folder: String,
    /// `Some(password)` for password auth, `None` for no auth.
    pub password: Option<String>,
}

/// Path of code-server's config for the user.
pub fn code_server_config_path(user: &str) -> String {
    format!("/home/{user}/.config/code-server/config.yaml")
}

/// Path of the systemd drop-in that points code-server at the folder.
pub fn code_server_dropin_path(user: &str) -> String {
    format!("/etc/systemd/system/code-server@{user}.service.d/10-projectvm.conf")
}

/// code-server's `config.yaml` (written over stdin: it can hold the password).
pub fn code_server_config(cfg: &CodeServerConfig) -> String {
    let mut out = format!("bind-addr: 0.0.0.0:{}\ncert: false\n", cfg.port);
    match &cfg.password {
        Some(p) => {
            out.push_str("auth: password\n");
            out.push_str(&format!("password: {}\n", yaml_quote(p)));
        }
        None => out.push_str("auth: none\n"),
    }
    out.push_str("disable-telemetry: true\ndisable-update-check: true\n");
    out
}

/// The systemd drop-in that makes code-server open the repository folder.
pub fn code_server_dropin(cfg: &CodeServerConfig) -> String {
    format!(
        "# Written by projectvm.\n[Service]\nExecStart=\nExecStart=/usr/bin/code-server --config {} {}\n",
        systemd_quote(&code_server_config_path(&cfg.user)),
        systemd_quote(&cfg.folder)
    )
}

/// Makes sure code-server is installed, creates the folder, reloads systemd and restarts
/// code-server (run as root, after the config and drop-in were written).
pub fn code_server_apply(cfg: &CodeServerConfig, install_url: &str, fingerprint: &str) -> String {
    format!(
        r#"set -euo pipefail
if ! command -v code-server >/dev/null 2>&1; then
  curl -fsSL {install_url} | sh -s -- --method standalone --prefix /usr/local
  ln -sf /usr/local/bin/code-server /usr/bin/code-server
fi
install -d -o {u} -g {u} -m 0755 {folder}
systemctl daemon-reload
systemctl enable -q code-server@{u}
systemctl restart code-server@{u}
install -d -m 0755 {state}
printf '%s\n' {fp} > {marker}
"#,
        install_url = shell_quote(install_url),
        u = shell_quote(&cfg.user),
        folder = shell_quote(&cfg.folder),
        state = STATE_DIR,
        fp = shell_quote(fingerprint),
        marker = marker_path("code-server"),
    )
}

/// Prints `PROJECTVM_ACTIVE=1` when a person is active on the VM right now: a terminal
/// session is open (utmp), or a process of the project user runs that the operator did not
/// start (a build left running in tmux or with nohup counts). Prints `PROJECTVM_ACTIVE=0`
/// otherwise.
pub fn activity_probe(user: &str) -> String {
    format!(
        r#"set -u
active=0
if [ -n "$(who 2>/dev/null)" ]; then active=1; fi
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
"#,
        u = shell_quote(user),
        marker = OPERATOR_ENV,
    )
}

/// YAML double-quoted scalar.
fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// systemd quoting for one ExecStart argument: double quotes, with `\`, `"`, `%` and `$`
/// escaped so no specifier or variable expansion applies.
fn systemd_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// Runs `bash -n` on a script: it must parse.
    fn assert_parses(script: &str) {
        let out = Command::new("bash").args(["-n", "-c", script]).output().expect("bash runs");
        assert!(out.status.success(), "script does not parse: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }

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
        assert!(script.contains("--single-branch --branch \"$rev\""));
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
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
        };
        let got = run("get", "protocol=https\nhost=git.example.com\n\n");
        assert_eq!(got, format!("username=x-access-token\npassword={token}\n"));
        assert_eq!(run("get", "protocol=https\nhost=evil.example.com\n\n"), "");
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
    fn code_server_config_quotes_password() {
        let cfg = CodeServerConfig {
            user: "project".into(),
            port: 8080,
            folder: "/home/project/my repo".into(),
            password: Some("p\"a\\ss\nword".into()),
        };
        let yaml = code_server_config(&cfg);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed["password"].as_str(), Some("p\"a\\ss\nword"));
        assert_eq!(parsed["bind-addr"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(parsed["auth"].as_str(), Some("password"));
        let none = code_server_config(&CodeServerConfig { password: None, ..cfg.clone() });
        assert!(none.contains("auth: none"));
        assert!(!none.contains("password:"));
    }

    #[test]
    fn code_server_dropin_escapes_specifiers() {
        let cfg = CodeServerConfig {
            user: "project".into(),
            port: 8080,
            folder: "/home/project/a%b$c\"d".into(),
            password: None,
        };
        let dropin = code_server_dropin(&cfg);
        assert!(dropin.contains("ExecStart=\nExecStart=/usr/bin/code-server --config \"/home/project/.config/code-server/config.yaml\" \"/home/project/a%%b$$c\\\"d\""));
        let apply = code_server_apply(&cfg, "https://code-server.dev/install.sh", "fp");
        assert_parses(&apply);
        assert!(apply.contains("systemctl restart code-server@'project'"));
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
}
