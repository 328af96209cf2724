//! Repository fields and their admission rules, shared by both kinds.

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::common::SecretKeyRef;
use super::machine::push_rules;

/// `http(s)://host[:port]/path` with no user info, whitespace or shell metacharacters.
pub const URL_PATTERN: &str =
    r"^https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[A-Za-z0-9._~+-]+)+/?$";
/// Either a URL as above or GitHub shorthand `owner/repo`.
pub const URL_OR_SHORTHAND_PATTERN: &str = r"^(https?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[A-Za-z0-9._~+-]+)+/?|[A-Za-z0-9]([A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100})$";
/// A branch, tag or commit name as git accepts it, without shell metacharacters.
pub const REVISION_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$";
/// An absolute path of plain segments.
pub const PATH_PATTERN: &str = r"^(/[A-Za-z0-9._+-]+)+/?$";

pub(crate) fn url_rules(schema: &mut Schema) {
    push_rules(
        schema,
        &[("!self.matches('(^|/)[.][.]?(/|$)')", "repository URL must not contain '.' or '..' path segments")],
    );
}

pub(crate) fn revision_rules(schema: &mut Schema) {
    push_rules(
        schema,
        &[(
            "!self.contains('..') && !self.contains('//') && !self.endsWith('/') && !self.endsWith('.lock')",
            "revision must be a valid git branch, tag or commit name (no '..', '//', trailing '/' or '.lock')",
        )],
    );
}

pub(crate) fn path_rules(schema: &mut Schema) {
    push_rules(schema, &[("!self.matches('(^|/)[.][.]?(/|$)')", "path must not contain '.' or '..' segments")]);
}

/// The git repository a ProjectVM keeps synced.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProjectRepository {
    /// HTTPS URL of the repository, e.g. `https://github.com/acme/api.git`. Credentials
    /// never go in the URL: use `credentialsSecretRef`.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048), transform = url_rules)]
    pub url: String,
    /// Branch, tag or commit to check out; the remote's default branch when unset.
    /// Changing it fetches and checks out the new revision without re-provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REVISION_PATTERN), length(max = 255), transform = revision_rules)]
    pub revision: Option<String>,
    /// Where the repository is checked out on the VM.
    #[serde(default = "default_project_path")]
    #[schemars(regex(pattern = PATH_PATTERN), length(max = 1024), transform = path_rules)]
    pub path: String,
    /// Clone only this many commits of history; full history when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub depth: Option<i32>,
    /// Secret key holding an access token for a private repository. The token reaches git
    /// only through a credential helper readable by the VM user; refreshing the Secret
    /// updates the VM without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

fn default_project_path() -> String {
    "/home/project/repo".into()
}

/// The git repository a Workspace opens in code-server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceRepository {
    /// HTTPS URL of the repository, or `owner/repo` for GitHub.
    #[schemars(regex(pattern = URL_OR_SHORTHAND_PATTERN), length(max = 2048), transform = url_rules)]
    pub url: String,
    /// Branch, tag or commit to check out; the remote's default branch when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REVISION_PATTERN), length(max = 255), transform = revision_rules)]
    pub revision: Option<String>,
    /// Clone only this many commits of history; full history when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub depth: Option<i32>,
    /// Secret key holding an access token for a private repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

impl WorkspaceRepository {
    /// The clone URL, expanding GitHub shorthand.
    pub fn clone_url(&self) -> String {
        if self.url.contains("://") { self.url.clone() } else { format!("https://github.com/{}.git", self.url) }
    }

    /// The repository's name: last path segment without `.git`.
    pub fn name(&self) -> String {
        repo_name(&self.url)
    }
}

/// The repository's name from its URL: last path segment without a `.git` suffix.
pub fn repo_name(url: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("repo");
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() { "repo".into() } else { name.into() }
}
