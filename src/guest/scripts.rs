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
const FOLDER_FUNCTIONS: &str = r#"below_home() {
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

/// Where code-server comes from when a VM lacks the wanted version: a standalone release
/// tarball (`{version}` in the URL template is replaced), checked by its sha256.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeServerSource {
    pub url_template: String,
    pub version: String,
    /// Lowercase hex; empty when not configured (then nothing is installed).
    pub sha256: String,
}

impl CodeServerSource {
    /// The release URL for the wanted version.
    pub fn url(&self) -> String {
        self.url_template.replace("{version}", &self.version)
    }
}

/// The unit the operator owns. It replaces the image's `code-server@.service` and the
/// drop-in earlier operators wrote, and serves the same end: code-server opening the folder.
pub const CODE_SERVER_UNIT: &str = "projectvm-code-server.service";
/// Where versions the operator installed live (`code-server-<version>/` below it).
pub const CODE_SERVER_LIB: &str = "/usr/local/lib";
/// Download and unpack output of the last install, on the VM; its tail goes into the condition.
pub const CODE_SERVER_INSTALL_LOG: &str = "/var/log/projectvm/code-server-install.log";
/// Exit status of the code-server script when the install (download, sha256, unpack) failed.
pub const CODE_SERVER_INSTALL_FAILED: u32 = 97;

/// The drop-in earlier operator versions wrote next to the image's templated unit.
fn code_server_old_dropin_path(user: &str) -> String {
    format!("/etc/systemd/system/code-server@{user}.service.d/10-projectvm.conf")
}

/// code-server's `config.yaml` (written over stdin: it can hold the password). Workspace
/// trust is off: the operator cloned the folder the user asked for, so the "Do you trust
/// the authors" prompt would only stand between them and their code.
pub fn code_server_config(cfg: &CodeServerConfig) -> String {
    let mut out = format!("bind-addr: 0.0.0.0:{}\ncert: false\n", cfg.port);
    match &cfg.password {
        Some(p) => {
            out.push_str("auth: password\n");
            out.push_str(&format!("password: {}\n", yaml_quote(p)));
        }
        None => out.push_str("auth: none\n"),
    }
    out.push_str("disable-telemetry: true\ndisable-update-check: true\ndisable-workspace-trust: true\n");
    out
}

/// The owned unit around its `ExecStart` line: (text before, arguments after the binary,
/// text after). The binary is found on the VM, so the script puts it in.
fn code_server_unit_parts(cfg: &CodeServerConfig) -> (String, String, String) {
    let head = format!(
        "# Written by projectvm: code-server for {user}, opening the workspace folder. It replaces\n\
         # the image's code-server@.service and the drop-in earlier versions wrote.\n\
         [Unit]\nDescription=code-server for the projectvm workspace\nAfter=network-online.target\n\n\
         [Service]\nType=exec\nUser={user}\n",
        user = cfg.user
    );
    let args =
        format!(" --config {} {}", systemd_quote(&code_server_config_path(&cfg.user)), systemd_quote(&cfg.folder));
    let tail = "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy=multi-user.target\n".to_string();
    (head, args, tail)
}

/// The owned unit for a code-server binary at `bin`.
pub fn code_server_unit(cfg: &CodeServerConfig, bin: &str) -> String {
    let (head, args, tail) = code_server_unit_parts(cfg);
    format!("{head}ExecStart={bin}{args}\n{tail}")
}

/// Where the script looks and writes: the VM's real paths, or a scratch tree in tests.
#[derive(Clone, Debug)]
struct CodeServerPaths {
    home: String,
    state: String,
    lib: String,
    unit_dir: String,
    log: String,
}

/// Finds code-server at the wanted version (one the operator installed, or the image's),
/// else downloads the release on the VM, checks its sha256 and unpacks it below
/// [`CODE_SERVER_LIB`]; prepares the folder (created for the user below their home;
/// nothing outside the home is re-owned or re-moded); writes the owned unit pointing at
/// that binary, retires the image's unit, reloads systemd and restarts code-server (run
/// as root, after the config was written). Install failures exit
/// [`CODE_SERVER_INSTALL_FAILED`] with the URL and the tail of the output on stderr.
pub fn code_server_apply(cfg: &CodeServerConfig, source: &CodeServerSource, fingerprint: &str) -> String {
    let paths = CodeServerPaths {
        home: user_home(&cfg.user),
        state: STATE_DIR.into(),
        lib: CODE_SERVER_LIB.into(),
        unit_dir: "/etc/systemd/system".into(),
        log: CODE_SERVER_INSTALL_LOG.into(),
    };
    code_server_apply_in(cfg, source, fingerprint, &paths)
}

fn code_server_apply_in(
    cfg: &CodeServerConfig,
    source: &CodeServerSource,
    fingerprint: &str,
    p: &CodeServerPaths,
) -> String {
    let (head, args, tail) = code_server_unit_parts(cfg);
    format!(
        r#"set -euo pipefail
user={u}
home={home}
{functions}want={version}
url={url}
sha={sha}
lib={lib}
log={log}
unit={unit_dir}/{unit_name}
fail_install() {{
  echo "$1" >&2
  if [ -s "$log" ]; then echo "--- last lines of $log:" >&2; tail -n 12 "$log" | tail -c 2048 >&2; fi
  exit {install_failed}
}}
# The version a code-server binary reports, or nothing (bounded: a broken one may hang).
version_of() {{
  local d v
  d=$(mktemp -d)
  # A first run logs a line (writing its default config) before the version line.
  v=$(HOME=$d timeout 60 "$1" --version </dev/null 2>>"$log" | grep -m 1 -E '^[0-9]+\.' | cut -d' ' -f1) || true
  rm -rf "$d"
  printf '%s' "$v"
}}
dir=$lib/code-server-$want
bin=""
install -d -m 0755 "$(dirname "$log")"
if [ -x "$dir/bin/code-server" ] && [ -e "$dir/.projectvm-installed" ]; then
  bin=$dir/bin/code-server
elif present=$(command -v code-server 2>/dev/null) && [ "$(version_of "$present")" = "$want" ]; then
  bin=$present
else
  : > "$log"
  [ -n "$sha" ] || fail_install "code-server $want is not on this VM and no sha256 is configured to install it from $url (operator flag --code-server-sha256, chart value codeServer.install.sha256)"
  command -v curl >/dev/null 2>&1 || fail_install "curl is missing on the VM: cannot download code-server from $url"
  install -d -m 0755 "$lib"
  tmp=$(mktemp -d "$lib/.code-server-$want.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "downloading $url" >>"$log"
  curl -fsSL --retry 2 --connect-timeout 20 --max-time 900 --max-filesize 2147483648 \
    -o "$tmp/release.tar.gz" "$url" >>"$log" 2>&1 ||
    fail_install "downloading code-server $want from $url failed"
  got=$(sha256sum "$tmp/release.tar.gz" | cut -d' ' -f1)
  [ "$got" = "$sha" ] || fail_install "sha256 mismatch for $url: the download has $got, the configured sha256 is $sha"
  mkdir "$tmp/x"
  tar -xzf "$tmp/release.tar.gz" -C "$tmp/x" --no-same-owner >>"$log" 2>&1 || fail_install "unpacking $url failed"
  tops=$(find "$tmp/x" -mindepth 1 -maxdepth 1 | wc -l)
  top=$(find "$tmp/x" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  [ "$tops" = 1 ] && [ -n "$top" ] && [ -x "$top/bin/code-server" ] ||
    fail_install "$url is not a code-server standalone release (one top directory holding bin/code-server)"
  got=$(version_of "$top/bin/code-server")
  [ "$got" = "$want" ] || fail_install "the code-server from $url reports version '$got', not $want"
  rm -rf "$dir"
  chmod 0755 "$top"
  mv -T "$top" "$dir"
  touch "$dir/.projectvm-installed"
  bin=$dir/bin/code-server
  echo "installed code-server $want in $dir" >>"$log"
fi
case "$bin" in
  /*) ;;
  *) echo "code-server found at a relative path: $bin" >&2; exit 1 ;;
esac
case "$bin" in
  *[!A-Za-z0-9/._+-]*) echo "code-server found at a path the unit cannot name: $bin" >&2; exit 1 ;;
esac
user_folder {folder}
# Pre-trusted folders: trust is off for the user too (the config turns it off for the server).
settings=$home/.local/share/code-server/User/settings.json
if [ ! -e "$settings" ] && [ ! -L "$settings" ] && below_home "$settings"; then
  {{ as_user mkdir -p -- "$(dirname "$settings")" &&
    printf '%s\n' '{{ "security.workspace.trust.enabled": false }}' | as_user tee -- "$settings" >/dev/null; }} ||
    echo "could not write $settings; code-server's own setting still turns workspace trust off" >&2
fi
new=$(mktemp "$unit.XXXXXX")
{{
  printf '%s' {head}
  printf 'ExecStart=%s%s\n' "$bin" {args}
  printf '%s' {tail}
}} >"$new"
chmod 0644 "$new"
if cmp -s "$new" "$unit"; then rm -f "$new"; else mv -f "$new" "$unit"; fi
# The image's templated unit and an earlier operator's drop-in served the same end.
systemctl disable --now -q "code-server@$user.service" >/dev/null 2>&1 || true
rm -f {old_dropin}
systemctl daemon-reload
systemctl enable -q {unit_name}
systemctl restart {unit_name}
# Versions installed earlier, no longer named by the unit.
for old in "$lib"/code-server-*; do
  if [ "$old" != "$dir" ] && [ -e "$old/.projectvm-installed" ]; then rm -rf -- "$old"; fi
done
install -d -m 0755 {state}
printf '%s\n' {fp} > {marker}
"#,
        functions = FOLDER_FUNCTIONS,
        u = shell_quote(&cfg.user),
        home = shell_quote(&p.home),
        version = shell_quote(&source.version),
        url = shell_quote(&source.url()),
        sha = shell_quote(&source.sha256),
        lib = shell_quote(&p.lib),
        log = shell_quote(&p.log),
        unit_dir = shell_quote(&p.unit_dir),
        unit_name = CODE_SERVER_UNIT,
        install_failed = CODE_SERVER_INSTALL_FAILED,
        folder = shell_quote(&cfg.folder),
        head = shell_quote(&head),
        args = shell_quote(&args),
        tail = shell_quote(&tail),
        old_dropin = shell_quote(&code_server_old_dropin_path(&cfg.user)),
        state = shell_quote(&p.state),
        fp = shell_quote(fingerprint),
        marker = shell_quote(&format!("{}/code-server.done", p.state)),
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
    fn code_server_unit_escapes_specifiers() {
        let cfg = CodeServerConfig {
            user: "project".into(),
            port: 8080,
            folder: "/home/project/a%b$c\"d".into(),
            password: None,
        };
        let unit = code_server_unit(&cfg, "/usr/local/lib/code-server-4.100.3/bin/code-server");
        assert!(unit.contains("\nExecStart=/usr/local/lib/code-server-4.100.3/bin/code-server --config \"/home/project/.config/code-server/config.yaml\" \"/home/project/a%%b$$c\\\"d\"\n"), "{unit}");
        assert!(unit.contains("\nUser=project\n") && unit.contains("replaces"));
        let apply = code_server_apply(&cfg, &source("https://example.com/cs-{version}.tar.gz", ""), "fp");
        assert_parses(&apply);
        assert!(apply.contains("systemctl restart projectvm-code-server.service"));
        assert!(apply.contains("url='https://example.com/cs-4.100.3.tar.gz'"));
        assert!(code_server_config(&cfg).contains("disable-workspace-trust: true\n"));
    }

    fn source(template: &str, sha256: &str) -> CodeServerSource {
        CodeServerSource { url_template: template.into(), version: "4.100.3".into(), sha256: sha256.into() }
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

    // --- Folders: nothing outside the user's home is ever re-owned or re-moded. ---

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    /// A scratch tree standing in for a VM's root: `home/<user>` (0750), a sticky
    /// world-writable `tmp`, an `etc`, and in the home a private `.ssh`, a directory of the
    /// user's own, and a link to `etc`. As root, the user is `nobody`, so the `runuser` and
    /// `chown` paths run for real and a root-owned directory in the home can be set up.
    struct Root {
        dir: PathBuf,
        user: String,
        uid: u32,
        as_root: bool,
    }

    impl Root {
        fn new(tag: &str) -> Root {
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
        fn path(&self, rel: &str) -> PathBuf {
            self.dir.join(rel)
        }
        fn home(&self) -> PathBuf {
            self.path(&format!("home/{}", self.user))
        }
        fn mkdir(&self, rel: &str, mode: u32) {
            let p = self.path(rel);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        /// Mode (with the sticky bit), owner and group of every directory that must never change.
        fn untouchable(&self) -> Vec<(PathBuf, u32, u32, u32)> {
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
        fn run(&self, script: &str) -> (bool, String) {
            let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
            let out = Command::new("bash").args(["-c", script]).env("PATH", path).output().expect("bash runs");
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        }
        fn code_server(&self, folder: &Path) -> (bool, String) {
            let cfg = CodeServerConfig {
                user: self.user.clone(),
                port: 8080,
                folder: folder.display().to_string(),
                password: None,
            };
            let script = code_server_apply_in(&cfg, &source("file:///nonexistent", ""), "fp", &self.paths());
            self.run(&script)
        }
        fn paths(&self) -> CodeServerPaths {
            let p = |rel: &str| self.path(rel).display().to_string();
            CodeServerPaths {
                home: self.home().display().to_string(),
                state: p("state"),
                lib: p("lib"),
                unit_dir: p("units"),
                log: p("log/code-server-install.log"),
            }
        }
        fn repo_parent(&self, path: &Path) -> (bool, String) {
            let mut s = sync("https://example.com/a.git", None, &path.display().to_string());
            s.user = self.user.clone();
            self.run(&prepare_repo_parent_in(&s, &self.home().display().to_string()))
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn owner(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().uid()
    }

    #[test]
    fn code_server_never_remodes_or_reowns_a_directory_outside_the_home() {
        let r = Root::new("cs");
        let before = r.untouchable();
        let home = r.home();
        // Existing directories outside the home, the home itself, and ways back out of it.
        for folder in [
            r.path("tmp"),
            r.path("etc"),
            r.path("home"),
            home.clone(),
            home.join(".."),
            home.join("link"),
            home.join("own/../.."),
        ] {
            let (ok, err) = r.code_server(&folder);
            assert!(ok, "{}: {err}", folder.display());
            assert!(err.contains("leaving its owner and permissions as they are"), "{}: {err}", folder.display());
            assert_eq!(r.untouchable(), before, "{} changed something", folder.display());
        }
        assert_eq!(
            std::fs::metadata(r.path("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777,
            "tmp keeps its sticky bit"
        );
        // A missing folder outside the home is not created: the step says why.
        for folder in [r.path("srv/app"), home.join("link/new"), home.join("../elsewhere")] {
            let (ok, err) = r.code_server(&folder);
            assert!(!ok, "{} was accepted", folder.display());
            assert!(err.contains("is not below"), "{err}");
            assert!(!folder.exists(), "{} was created", folder.display());
        }
        assert!(!r.path("etc/new").exists());
        assert_eq!(r.untouchable(), before);
    }

    #[test]
    fn code_server_folder_below_the_home_is_the_users() {
        let r = Root::new("own");
        let before = r.untouchable();
        let home = r.home();
        // Missing: made by the user, every directory on the way too.
        let (ok, err) = r.code_server(&home.join("src/api"));
        assert!(ok, "{err}");
        assert_eq!(owner(&home.join("src")), r.uid);
        assert_eq!(owner(&home.join("src/api")), r.uid);
        assert!(r.path("state/code-server.done").exists(), "the marker is written");
        // Existing ones of the user's own keep their modes, .ssh included.
        for folder in [home.join("own"), home.join(".ssh"), home.join("src/api")] {
            let (ok, err) = r.code_server(&folder);
            assert!(ok, "{}: {err}", folder.display());
        }
        assert_eq!(r.untouchable(), before);
        // One that is somebody else's is given to the user, its mode left as it was.
        if r.as_root {
            let d = home.join("rootowned");
            let (ok, err) = r.code_server(&d);
            assert!(ok, "{err}");
            assert_eq!(owner(&d), r.uid);
            assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o700);
        }
        // A file is not a folder.
        std::fs::write(home.join("file"), "x").unwrap();
        let (ok, err) = r.code_server(&home.join("file"));
        assert!(!ok && err.contains("is not a directory"), "{err}");
    }

    /// A standalone-layout release of a fake code-server reporting `version`; its file URL
    /// and sha256.
    fn fake_release(r: &Root, version: &str) -> (String, String) {
        let top = format!("code-server-{version}-linux-amd64");
        let build = r.path(&format!("release-{version}"));
        std::fs::create_dir_all(build.join(&top).join("bin")).unwrap();
        let bin = build.join(&top).join("bin/code-server");
        // Like code-server on its first run: a log line before the version.
        let text = format!(
            "#!/bin/sh\necho '[2026-12-01T14:42:31.393Z] info  Wrote default config file'\necho {version} 0123abc with Code 1.100.3\n"
        );
        std::fs::write(&bin, text).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tarball = r.path(&format!("{top}.tar.gz"));
        let ok = Command::new("tar").arg("-czf").arg(&tarball).arg("-C").arg(&build).arg(&top).status().unwrap();
        assert!(ok.success());
        let out = Command::new("sha256sum").arg(&tarball).output().unwrap();
        let sha = String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap().to_string();
        (format!("file://{}", r.path("code-server-{version}-linux-amd64.tar.gz").display()), sha)
    }

    #[test]
    fn code_server_is_installed_checked_and_upgraded() {
        let r = Root::new("install");
        // The image's code-server is another version: the wanted one is installed.
        std::fs::write(r.path("bin/code-server"), "#!/bin/sh\necho 4.99.0 abc with Code 1.99.0\n").unwrap();
        let (template, sha) = fake_release(&r, "4.100.3");
        let (_, sha_new) = fake_release(&r, "4.101.0");
        let cfg = CodeServerConfig {
            user: r.user.clone(),
            port: 8080,
            folder: r.home().join("repo").display().to_string(),
            password: None,
        };
        let run = |version: &str, sha: &str, template: &str| {
            let src = CodeServerSource { url_template: template.into(), version: version.into(), sha256: sha.into() };
            let out = Command::new("bash")
                .args(["-c", &code_server_apply_in(&cfg, &src, "fp", &r.paths())])
                .env("PATH", format!("{}:{}", r.path("bin").display(), std::env::var("PATH").unwrap_or_default()))
                .output()
                .unwrap();
            (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let unit = || std::fs::read_to_string(r.path("units/projectvm-code-server.service")).unwrap_or_default();
        let exec =
            |v: &str| format!("\nExecStart={}/code-server-{v}/bin/code-server --config", r.path("lib").display());

        // Nothing to install from without a sha256.
        let (code, err) = run("4.100.3", "", &template);
        assert_eq!(code, CODE_SERVER_INSTALL_FAILED as i32, "{err}");
        assert!(
            err.contains("no sha256 is configured") && err.contains("code-server-4.100.3-linux-amd64.tar.gz"),
            "{err}"
        );
        // A wrong sha256 says so, with the URL; nothing is installed.
        let (code, err) = run("4.100.3", &sha_new, &template);
        assert_eq!(code, CODE_SERVER_INSTALL_FAILED as i32, "{err}");
        assert!(err.contains("sha256 mismatch for file://") && err.contains(&sha), "{err}");
        assert!(!r.path("lib/code-server-4.100.3").exists());
        // A missing download names the URL and carries curl's words.
        let (code, err) = run("4.100.3", &sha, "file:///nonexistent/cs-{version}.tar.gz");
        assert_eq!(code, CODE_SERVER_INSTALL_FAILED as i32, "{err}");
        assert!(err.contains("from file:///nonexistent/cs-4.100.3.tar.gz failed") && err.contains("curl"), "{err}");

        // Installed, and the unit points at it.
        let (code, err) = run("4.100.3", &sha, &template);
        assert_eq!(code, 0, "{err}");
        assert!(unit().contains(&exec("4.100.3")), "{}", unit());
        assert!(r.path("lib/code-server-4.100.3/.projectvm-installed").exists());
        assert!(r.path("state/code-server.done").exists());
        let settings = r.home().join(".local/share/code-server/User/settings.json");
        assert!(std::fs::read_to_string(&settings).unwrap().contains("\"security.workspace.trust.enabled\": false"));
        // Again: nothing is downloaded (the source could be gone), the unit stays.
        let (code, err) = run("4.100.3", &sha, "file:///nonexistent/{version}");
        assert_eq!(code, 0, "{err}");
        assert!(unit().contains(&exec("4.100.3")));
        // A user's own settings are left alone.
        std::fs::write(&settings, "{}\n").unwrap();
        assert_eq!(run("4.100.3", &sha, &template).0, 0);
        assert_eq!(std::fs::read_to_string(&settings).unwrap(), "{}\n");

        // Another version wanted: installed, the unit moves to it, the old one goes.
        let (code, err) = run("4.101.0", &sha_new, &template);
        assert_eq!(code, 0, "{err}");
        assert!(unit().contains(&exec("4.101.0")), "{}", unit());
        assert!(!r.path("lib/code-server-4.100.3").exists(), "the version no unit names is removed");

        // The image's code-server at the wanted version is used as it is.
        std::fs::write(r.path("bin/code-server"), "#!/bin/sh\necho 4.102.0 abc with Code 1.102.0\n").unwrap();
        let (code, err) = run("4.102.0", "", "file:///nonexistent/{version}");
        assert_eq!(code, 0, "{err}");
        assert!(
            unit().contains(&format!("\nExecStart={} --config", r.path("bin/code-server").display())),
            "{}",
            unit()
        );
    }

    #[test]
    fn repo_parent_is_made_only_below_the_home() {
        let r = Root::new("parent");
        let before = r.untouchable();
        let home = r.home();
        let (ok, err) = r.repo_parent(&home.join("a/b/repo"));
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
            let (ok, err) = r.repo_parent(&path);
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
