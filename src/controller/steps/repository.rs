//! Both kinds: clone the repository, or fetch and check out when the revision changes, as the
//! VM user. A token reaches git only through a credential helper file written over stdin.

use super::{Deadline, Prepared, SHORT, StepBlocked, StepEnv, redact};
use crate::conditions::Reason;
use crate::controller::secrets::Token;
use crate::controller::vm::VmAccess;
use crate::engine::fingerprint;
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::guest::{self, RepoSync, git};
use crate::ssh::{OutputChunk, SshError, SshTarget};

/// Where the repository comes from and goes, from the kind's spec.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    pub revision: Option<String>,
    pub path: String,
    pub depth: Option<i32>,
    pub user: String,
    /// A credentials Secret is referenced.
    pub wants_token: bool,
}

/// What to sync, with the token when there is one.
#[derive(Clone, Debug)]
pub struct Work {
    pub sync: RepoSync,
    pub token: Option<Token>,
    /// The repository's `host[:port]`, the only one the credential helper answers for.
    pub host: String,
}

/// URL, revision, path, depth and the token's Secret version make the fingerprint (never
/// the token itself): a refreshed token re-runs the step.
pub fn prepare(env: &StepEnv, s: Source) -> Prepared {
    if s.wants_token && env.token.is_none() {
        let p = env.token_problem.clone();
        return Err(StepBlocked {
            reason: p.as_ref().map_or(Reason::SecretNotFound, |p| p.reason),
            message: p.map_or_else(|| "credentials Secret not readable".into(), |p| p.message),
        });
    }
    let (scheme, host) = origin(&s.url);
    // Admission refuses a token with a URL that is not https; this holds for objects admitted
    // before that rule existed.
    if env.token.is_some() && scheme != "https" {
        return Err(StepBlocked {
            reason: Reason::SecretNotAllowed,
            message: format!(
                "the repository token would be sent in clear text to {}: use an https:// URL",
                crate::text::clip(&s.url, 200)
            ),
        });
    }
    let helper = env.token.as_ref().map(|_| guest::credential_helper_path(&s.user));
    let token_version = env.token.as_ref().map(|t| t.version.as_str()).unwrap_or("");
    let fp = fingerprint(&[
        &env.instance_id,
        &s.url,
        s.revision.as_deref().unwrap_or(""),
        &s.path,
        &s.depth.map(|d| d.to_string()).unwrap_or_default(),
        token_version,
    ]);
    let sync = RepoSync {
        url: s.url,
        revision: s.revision,
        path: s.path,
        depth: s.depth,
        credential_helper: helper,
        user: s.user,
    };
    Ok((fp, super::Work::Repository(Work { sync, token: env.token.clone(), host })))
}

/// The URL's scheme and `host[:port]`, as git names them to a credential helper (`protocol=`
/// and `host=`, the port included when the URL gives one).
fn origin(url: &str) -> (String, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (String::new(), String::new());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    (scheme.to_ascii_lowercase(), authority.to_string())
}

/// git's progress output is read for the latest line only; this much of it is kept.
const PROGRESS_WINDOW: usize = 4096;
/// Lines of git's output that go into the condition on failure.
const ERROR_TAIL_LINES: usize = 6;

pub async fn run(
    vm: &dyn VmAccess,
    t: &SshTarget,
    w: &Work,
    deadline: Deadline,
    progress: &ProgressReporter,
) -> Result<TaskOutcome, SshError> {
    let sync = &w.sync;
    if let (Some(token), Some(helper)) = (&w.token, sync.credential_helper.as_deref()) {
        vm.exec(t, guest::RUN_AS_ROOT, Some(guest::prepare_credential_dir(&sync.user).as_bytes()), SHORT, None).await?;
        let body = guest::credential_helper(&w.host, &token.value);
        vm.write_file(t, helper, body.as_bytes(), 0o700, Some(&sync.user), SHORT).await?;
    }
    vm.exec(t, guest::RUN_AS_ROOT, Some(guest::prepare_repo_parent(sync).as_bytes()), SHORT, None).await?;
    progress.report(Some(0), format!("syncing {}", sync.url));
    let seen = std::sync::Mutex::new(String::new());
    let on_output = |chunk: OutputChunk<'_>| {
        if let OutputChunk::Stderr(bytes) = chunk {
            let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
            s.push_str(&String::from_utf8_lossy(bytes));
            if s.len() > 2 * PROGRESS_WINDOW {
                let keep = crate::text::tail(&s, PROGRESS_WINDOW).to_string();
                *s = keep;
            }
            if let Some(p) = git::progress_percent(&s) {
                progress.report(Some(p), "cloning");
            }
        }
    };
    let script = guest::repository_sync(sync);
    let (command, wait) = deadline.command(guest::RUN_AS_USER);
    let out = vm.exec(t, &command, Some(script.as_bytes()), wait, Some(&on_output)).await?;
    if crate::shell::timed_out(out.exit_status) {
        return Ok(deadline.exceeded(crate::engine::StepId::Repository));
    }
    let stdout = crate::text::lossy(&out.stdout);
    let stderr = crate::text::lossy(&out.stderr);
    if out.exit_status != 0 {
        let kind = git::classify(&stderr, w.token.is_some());
        let subject = match kind {
            git::GitFailure::RepositoryNotFound => format!("repository {} not found or not accessible", sync.url),
            git::GitFailure::AuthenticationFailed => {
                format!("the token was rejected by {}: refresh the credentials Secret", w.host)
            }
            git::GitFailure::RevisionNotFound => {
                format!("revision {:?} does not exist in {}", sync.revision.as_deref().unwrap_or("(default)"), sync.url)
            }
            git::GitFailure::RepositoryUnreachable => format!("cannot reach {}", w.host),
            git::GitFailure::CheckoutConflict => format!("cannot check out into {}", sync.path),
            git::GitFailure::SyncFailed => format!("syncing {} failed", sync.url),
        };
        let detail = redact(&git::tail(&stderr, ERROR_TAIL_LINES), w.token.as_ref());
        return Ok(TaskOutcome::failed(kind.reason(), format!("{subject}: {detail}")));
    }
    let value =
        |marker: &str| stdout.lines().find_map(|l| l.strip_prefix(marker)).map(str::trim).unwrap_or("").to_string();
    let commit = value(guest::COMMIT_MARKER);
    let branch = value(guest::BRANCH_MARKER);
    progress.report(Some(100), "synced");
    let revision = sync.revision.clone().unwrap_or(branch);
    Ok(TaskOutcome::ok(Reason::Synced, format!("{} at {} ({})", sync.path, crate::text::head(&commit, 12), revision))
        .with_output("commit", commit)
        .with_output("revision", revision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_keeps_the_port() {
        assert_eq!(origin("https://git.example.com:8443/a/b.git"), ("https".into(), "git.example.com:8443".into()));
        assert_eq!(origin("https://git.example.com/a/b.git"), ("https".into(), "git.example.com".into()));
        assert_eq!(origin("HTTP://h/x"), ("http".into(), "h".into()));
        assert_eq!(origin("acme/demo"), (String::new(), String::new()));
    }

    fn source(url: &str) -> Source {
        Source {
            url: url.into(),
            revision: None,
            path: "/home/project/repo".into(),
            depth: None,
            user: "project".into(),
            wants_token: true,
        }
    }

    #[test]
    fn a_token_never_goes_over_plain_http() {
        let env = StepEnv { token: Some(Token { value: "tok".into(), version: "1".into() }), ..Default::default() };
        let err = prepare(&env, source("http://git.example.com/a.git")).unwrap_err();
        assert_eq!(err.reason, Reason::SecretNotAllowed);
        assert!(!err.message.contains("tok\""), "{}", err.message);
        let Ok((_, super::super::Work::Repository(w))) = prepare(&env, source("https://git.example.com:8443/a.git"))
        else {
            panic!("https with a token is prepared")
        };
        assert_eq!(w.host, "git.example.com:8443");
    }
}
