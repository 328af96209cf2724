//! Reading git's output: clone progress for `status.progress`, and failures mapped to the
//! condition reasons users see.

use crate::conditions::Reason;

/// Why a sync failed, as users see it in the condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitFailure {
    RepositoryNotFound,
    AuthenticationFailed,
    RevisionNotFound,
    RepositoryUnreachable,
    CheckoutConflict,
    SyncFailed,
}

impl GitFailure {
    pub fn reason(self) -> Reason {
        match self {
            GitFailure::RepositoryNotFound => Reason::RepositoryNotFound,
            GitFailure::AuthenticationFailed => Reason::AuthenticationFailed,
            GitFailure::RevisionNotFound => Reason::RevisionNotFound,
            GitFailure::RepositoryUnreachable => Reason::RepositoryUnreachable,
            GitFailure::CheckoutConflict => Reason::CheckoutConflict,
            GitFailure::SyncFailed => Reason::SyncFailed,
        }
    }
}

/// Classifies git's stderr. `has_token` tells an authentication failure (a token was sent
/// and refused) from a repository the operator simply cannot see.
pub fn classify(stderr: &str, has_token: bool) -> GitFailure {
    let s = stderr.to_ascii_lowercase();
    let auth = s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("could not read password")
        || s.contains("the requested url returned error: 401")
        || s.contains("the requested url returned error: 403")
        || s.contains("invalid username or password")
        || s.contains("http basic: access denied");
    if auth {
        return if has_token { GitFailure::AuthenticationFailed } else { GitFailure::RepositoryNotFound };
    }
    if s.contains("repository not found")
        || s.contains("the requested url returned error: 404")
        || s.contains("does not appear to be a git repository")
        || (s.contains("repository '") && s.contains("' not found"))
    {
        return GitFailure::RepositoryNotFound;
    }
    if s.contains("remote branch") && s.contains("not found")
        || s.contains("couldn't find remote ref")
        || s.contains("not our ref")
        || s.contains("unknown revision")
        || s.contains("did not match any file(s) known to git")
        || s.contains("no such remote ref")
        || s.contains("upload-pack: not our ref")
    {
        return GitFailure::RevisionNotFound;
    }
    if s.contains("could not resolve host")
        || s.contains("connection refused")
        || s.contains("connection timed out")
        || s.contains("failed to connect")
        || s.contains("network is unreachable")
        || s.contains("no route to host")
        || s.contains("ssl certificate problem")
        || s.contains("server certificate verification failed")
    {
        return GitFailure::RepositoryUnreachable;
    }
    if s.contains("would be overwritten by checkout")
        || s.contains("please commit your changes or stash them")
        || s.contains("is not empty and is not a git checkout")
    {
        return GitFailure::CheckoutConflict;
    }
    GitFailure::SyncFailed
}

/// The overall clone percentage from git's `--progress` output (the latest line wins):
/// receiving objects is the bulk of a clone (0–90 %), resolving deltas the rest.
pub fn progress_percent(output: &str) -> Option<i32> {
    let line =
        output.rsplit(['\r', '\n']).find(|l| l.contains("Receiving objects:") || l.contains("Resolving deltas:"))?;
    let pct_end = line.find('%')?;
    let digits: String = line[..pct_end]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let pct: i32 = digits.parse().ok()?;
    let pct = pct.clamp(0, 100);
    Some(if line.contains("Resolving deltas:") { 90 + pct / 10 } else { pct * 9 / 10 })
}

/// The last `n` non-empty lines of git's output, with progress noise dropped, for messages.
pub fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !(l.contains("Receiving objects:")
                || l.contains("Resolving deltas:")
                || l.contains("Counting objects:")
                || l.contains("Compressing objects:")
                || l.starts_with("remote: Enumerating")
                || l.starts_with("remote: Total"))
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_git_messages() {
        let cases: &[(&str, bool, GitFailure)] = &[
            (
                "remote: Invalid username or password.\nfatal: Authentication failed for 'https://h/x.git/'",
                true,
                GitFailure::AuthenticationFailed,
            ),
            (
                "fatal: could not read Username for 'https://h': terminal prompts disabled",
                false,
                GitFailure::RepositoryNotFound,
            ),
            (
                "fatal: could not read Username for 'https://h': terminal prompts disabled",
                true,
                GitFailure::AuthenticationFailed,
            ),
            (
                "remote: Repository not found.\nfatal: repository 'https://h/x.git/' not found",
                false,
                GitFailure::RepositoryNotFound,
            ),
            (
                "fatal: unable to access 'https://h/x.git/': The requested URL returned error: 404",
                true,
                GitFailure::RepositoryNotFound,
            ),
            (
                "fatal: unable to access 'https://h/x.git/': The requested URL returned error: 401",
                true,
                GitFailure::AuthenticationFailed,
            ),
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin",
                false,
                GitFailure::RevisionNotFound,
            ),
            ("fatal: couldn't find remote ref nope", false, GitFailure::RevisionNotFound),
            ("error: Server does not allow request for unadvertised object abc", false, GitFailure::SyncFailed),
            (
                "fatal: unable to access 'https://h/': Could not resolve host: h",
                false,
                GitFailure::RepositoryUnreachable,
            ),
            (
                "fatal: unable to access 'https://h/': Failed to connect to h port 443: Connection refused",
                false,
                GitFailure::RepositoryUnreachable,
            ),
            (
                "error: Your local changes to the following files would be overwritten by checkout:\n\ta.txt",
                false,
                GitFailure::CheckoutConflict,
            ),
            ("something else entirely", false, GitFailure::SyncFailed),
        ];
        for (msg, tok, want) in cases {
            assert_eq!(classify(msg, *tok), *want, "{msg}");
        }
    }

    #[test]
    fn progress_from_clone_output() {
        assert_eq!(progress_percent("Cloning into 'x'...\n"), None);
        assert_eq!(progress_percent("Receiving objects:  50% (5/10)\r"), Some(45));
        assert_eq!(
            progress_percent(
                "Receiving objects:  10% (1/10)\rReceiving objects: 100% (10/10), done.\nResolving deltas:  50% (1/2)\r"
            ),
            Some(95)
        );
        assert_eq!(progress_percent("Resolving deltas: 100% (2/2), done.\n"), Some(100));
    }

    #[test]
    fn tail_drops_progress_noise() {
        let out = "Cloning into 'x'...\nReceiving objects:  50% (5/10)\rReceiving objects: 100%\nfatal: bad thing\n";
        assert_eq!(tail(out, 2), "Cloning into 'x'...\nfatal: bad thing");
    }
}
