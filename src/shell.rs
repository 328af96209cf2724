//! Shell text the operator sends to VMs: quoting, and the commands scripts run under. A
//! leaf module, so the SSH edge and the guest scripts both use it without depending on each
//! other.

/// Environment marker on every command the operator runs, so activity detection can tell
/// the operator's own processes from a person's.
pub const OPERATOR_ENV: &str = "PROJECTVM_OPERATOR=1";
/// The command that runs a script fed on stdin as root.
pub const RUN_AS_ROOT: &str = "PROJECTVM_OPERATOR=1 sudo -n bash -s";
/// The command that runs a script fed on stdin as the login user.
pub const RUN_AS_USER: &str = "PROJECTVM_OPERATOR=1 bash -s";

/// After the time limit, how long a remote command may take to stop before it is killed.
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `run_as` ([`RUN_AS_ROOT`] or [`RUN_AS_USER`]) bounded on the VM itself. `timeout` runs the
/// script in a process group of its own and, at the limit, signals the whole group (TERM,
/// then KILL after [`KILL_GRACE`]), so nothing of a timed-out attempt — a hung clone, an apt
/// holding the dpkg lock — lives on beside the retry. Exit status 124 (or 137 after KILL)
/// says the limit was reached.
pub fn bounded(run_as: &str, limit: std::time::Duration) -> String {
    let secs = limit.as_secs().max(1);
    let wrapped = format!("timeout -k {}s {secs}s bash -s", KILL_GRACE.as_secs());
    run_as.replacen("bash -s", &wrapped, 1)
}

/// Whether an exit status is `timeout`'s: the command ran past its limit and was stopped.
pub fn timed_out(exit_status: u32) -> bool {
    exit_status == 124 || exit_status == 137
}

/// POSIX single-quote quoting: `'...'` with each `'` written as `'\''`. Safe for any string,
/// including quotes, backslashes, `$(...)`, backticks, `;`, globs and newlines; the empty string
/// becomes `''`.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str(r"'\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_commands_keep_their_user_and_marker() {
        let root = bounded(RUN_AS_ROOT, std::time::Duration::from_secs(90));
        assert_eq!(root, "PROJECTVM_OPERATOR=1 sudo -n timeout -k 5s 90s bash -s");
        let user = bounded(RUN_AS_USER, std::time::Duration::from_millis(10));
        assert_eq!(user, "PROJECTVM_OPERATOR=1 timeout -k 5s 1s bash -s");
        assert!(timed_out(124) && timed_out(137) && !timed_out(0) && !timed_out(1));
    }
}
