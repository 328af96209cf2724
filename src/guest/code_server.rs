//! code-server on the VM: its config file, the systemd unit the operator owns, and the
//! script that installs a pinned release (checked by sha256), upgrades it, pre-trusts the
//! folder and restarts the service.

use super::scripts::{FOLDER_FUNCTIONS, STATE_DIR, user_home};
use crate::shell::shell_quote;

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
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::guest::scratch::{Root, assert_parses, owner};

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

    fn apply(r: &Root, folder: &Path) -> (bool, String) {
        let cfg =
            CodeServerConfig { user: r.user.clone(), port: 8080, folder: folder.display().to_string(), password: None };
        let script = code_server_apply_in(&cfg, &source("file:///nonexistent", ""), "fp", &paths(r));
        r.run(&script)
    }

    fn paths(r: &Root) -> CodeServerPaths {
        let p = |rel: &str| r.path(rel).display().to_string();
        CodeServerPaths {
            home: r.home().display().to_string(),
            state: p("state"),
            lib: p("lib"),
            unit_dir: p("units"),
            log: p("log/code-server-install.log"),
        }
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
            let (ok, err) = apply(&r, &folder);
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
            let (ok, err) = apply(&r, &folder);
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
        let (ok, err) = apply(&r, &home.join("src/api"));
        assert!(ok, "{err}");
        assert_eq!(owner(&home.join("src")), r.uid);
        assert_eq!(owner(&home.join("src/api")), r.uid);
        assert!(r.path("state/code-server.done").exists(), "the marker is written");
        // Existing ones of the user's own keep their modes, .ssh included.
        for folder in [home.join("own"), home.join(".ssh"), home.join("src/api")] {
            let (ok, err) = apply(&r, &folder);
            assert!(ok, "{}: {err}", folder.display());
        }
        assert_eq!(r.untouchable(), before);
        // One that is somebody else's is given to the user, its mode left as it was.
        if r.as_root {
            let d = home.join("rootowned");
            let (ok, err) = apply(&r, &d);
            assert!(ok, "{err}");
            assert_eq!(owner(&d), r.uid);
            assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777, 0o700);
        }
        // A file is not a folder.
        std::fs::write(home.join("file"), "x").unwrap();
        let (ok, err) = apply(&r, &home.join("file"));
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
                .args(["-c", &code_server_apply_in(&cfg, &src, "fp", &paths(&r))])
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
}
