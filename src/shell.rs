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
