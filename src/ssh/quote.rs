//! The remote command that writes a file from stdin.

use crate::shell::shell_quote;

/// The script behind [`write_file_command`]. `$1` is the path, `$2` the `chown` spec (empty: keep
/// root). Missing parent directories are created `0755` and given to the owner; the content goes
/// from stdin into a private temporary file next to the target, which gets its owner and mode
/// before it is renamed over the target, so readers see the old file or the new one, never a
/// partial one, and never one with looser permissions.
const WRITE_FILE_SCRIPT: &str = r#"set -e
umask 077
p=$1
o=$2
case $p in */) echo "not a file path: $p" >&2; exit 1;; esac
[ ! -d "$p" ] || { echo "refusing to replace the directory $p" >&2; exit 1; }
mkd() {
  [ -d "$1" ] && return 0
  mkd "$(dirname -- "$1")"
  if mkdir -m 0755 -- "$1" 2>/dev/null; then
    [ -z "$o" ] || chown -- "$o" "$1"
  else
    [ -d "$1" ]
  fi
}
d=$(dirname -- "$p")
mkd "$d"
t=$(mktemp -- "$d/.${p##*/}.XXXXXX")
trap 'rm -f -- "$t"' EXIT
cat > "$t"
[ -z "$o" ] || chown -- "$o" "$t"
chmod MODE -- "$t"
mv -f -- "$t" "$p"
trap - EXIT
"#;

/// The remote command for [`super::SshPool::write_file`]: runs as root through `sudo -n`, and
/// carries only the quoted path, mode and owner; the content travels over stdin.
pub fn write_file_command(path: &str, mode: u32, owner: Option<&str>) -> String {
    let script = WRITE_FILE_SCRIPT.replace("MODE", &format!("{:04o}", mode & 0o7777));
    // `user` alone also sets the user's login group; `user:group` is used as given.
    let chown = match owner {
        Some(o) if o.contains(':') => o.to_string(),
        Some(o) => format!("{o}:"),
        None => String::new(),
    };
    format!(
        "{} sudo -n sh -c {} sh {} {}",
        crate::shell::OPERATOR_ENV,
        shell_quote(&script),
        shell_quote(path),
        shell_quote(&chown)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    const HOSTILE: &[&str] = &[
        "plain",
        "",
        " ",
        "two words",
        "a; rm -rf /",
        "$(rm -rf /)",
        "${HOME}",
        "`id`",
        "it's",
        "'",
        "''",
        "'''",
        "\"dq\"",
        "line\nbreak\n",
        "\n",
        "back\\slash\\",
        "\\'",
        "'\\''",
        "tab\there",
        "*",
        "~",
        "-n",
        "--",
        "a|b&c>d<e",
        "héllo ✓",
        "!event",
    ];

    #[test]
    fn quoting_round_trips_through_a_real_shell() {
        for s in HOSTILE {
            let out = Command::new("/bin/sh").arg("-c").arg(format!("printf %s {}", shell_quote(s))).output().unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8(out.stdout).unwrap(), *s, "quoted as {}", shell_quote(s));
        }
        // All of them at once, as separate words.
        let words: Vec<String> = HOSTILE.iter().map(|s| shell_quote(s)).collect();
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("for a in {}; do printf '%s\\0' \"$a\"; done", words.join(" ")))
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        assert_eq!(got.len(), HOSTILE.len() + 1);
        for (g, s) in got.iter().zip(HOSTILE) {
            assert_eq!(*g, s.as_bytes());
        }
    }

    #[test]
    fn the_write_command_quotes_the_path_and_carries_no_content() {
        let path = "/home/project/it's $(x)/file; rm -rf /";
        let cmd = write_file_command(path, 0o600, Some("project"));
        assert!(cmd.starts_with("PROJECTVM_OPERATOR=1 sudo -n sh -c '"));
        assert!(cmd.ends_with(&format!("sh {} 'project:'", shell_quote(path))));
        assert!(cmd.contains("chmod 0600 --"));
        assert!(write_file_command(path, 0o4755, Some("a:b")).ends_with(" 'a:b'"));
        assert!(write_file_command(path, 0o644, None).ends_with(" ''"));
    }

    /// Runs the script locally (without sudo) against a temp directory.
    #[test]
    fn the_write_script_writes_atomically_with_mode() {
        let dir = std::env::temp_dir().join(format!("pvm-quote-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("new dir/it's/secret $(x)");
        let run_at = |path: &str, content: &[u8]| {
            let cmd = write_file_command(path, 0o600, None).replace(" sudo -n ", " ");
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // A refused write exits before reading its input; that is not this test's failure.
            let _ = child.stdin.take().unwrap().write_all(content);
            child.wait().unwrap()
        };
        let run = |content: &[u8], mode: u32| {
            let cmd = write_file_command(path.to_str().unwrap(), mode, None).replace(" sudo -n ", " ");
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // A refused write exits before reading its input; that is not this test's failure.
            let _ = child.stdin.take().unwrap().write_all(content);
            child.wait().unwrap()
        };
        assert!(run(b"tok'$(x)\n\\", 0o600).success());
        assert_eq!(std::fs::read(&path).unwrap(), b"tok'$(x)\n\\");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        let parent = path.parent().unwrap();
        assert_eq!(std::fs::metadata(parent).unwrap().permissions().mode() & 0o777, 0o755);
        // Overwrite with another mode; no temporary files stay behind.
        assert!(run(b"", 0o640).success());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(parent).unwrap().count(), 1);
        // A directory in the way is not replaced, and a path must name a file.
        assert!(!run_at(&format!("{}/", parent.display()), b"x").success());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(!run(b"x", 0o600).success());
        assert!(path.is_dir());
        assert_eq!(std::fs::read_dir(parent).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
