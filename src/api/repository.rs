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

/// Admission rules for a repository URL (both kinds).
pub(crate) const URL_RULES: &[(&str, &str)] = &[
    ("!self.matches('(^|/)[.][.]?(/|$)')", "repository URL must not contain '.' or '..' path segments"),
    // The repository's name is the last segment without `.git`; it names the default folder.
    (
        "!self.matches('(^|/)[.]{1,3}git/?$')",
        "the repository URL's last path segment must name the repository: without its .git suffix it must not be empty, '.' or '..'",
    ),
];

pub(crate) fn url_rules(schema: &mut Schema) {
    push_rules(schema, URL_RULES);
}

/// Admission rules for a revision (both kinds).
pub(crate) const REVISION_RULES: &[(&str, &str)] = &[
    (
        "!self.contains('..') && !self.contains('//') && !self.endsWith('/') && !self.endsWith('.lock')",
        "revision must be a valid git branch, tag or commit name (no '..', '//', trailing '/' or '.lock')",
    ),
    // The repository script treats 7-40 hex characters as a commit, and only a full commit id
    // can be fetched by id.
    (
        "!self.matches('^[0-9a-fA-F]{7,39}$')",
        "a revision of 7 to 39 hex characters looks like an abbreviated commit, which cannot be fetched: give the full 40-character commit SHA, or refs/heads/NAME or refs/tags/NAME for a branch or tag so named",
    ),
];

pub(crate) fn revision_rules(schema: &mut Schema) {
    push_rules(schema, REVISION_RULES);
}

pub(crate) fn path_rules(schema: &mut Schema) {
    push_rules(schema, &[("!self.matches('(^|/)[.][.]?(/|$)')", "path must not contain '.' or '..' segments")]);
}

/// A token travels only over https: refused at admission with any other URL.
const TOKEN_OVER_HTTPS: (&str, &str) = (
    "!has(self.credentialsSecretRef) || self.url.startsWith('https://')",
    "credentialsSecretRef needs an https:// repository URL: a token is never sent over plain http",
);
/// The same for a Workspace, whose GitHub shorthand `owner/repo` means https.
const TOKEN_OVER_HTTPS_OR_SHORTHAND: (&str, &str) = (
    "!has(self.credentialsSecretRef) || !self.url.contains('://') || self.url.startsWith('https://')",
    "credentialsSecretRef needs an https:// repository URL (or GitHub shorthand owner/repo): a token is never sent over plain http",
);

fn project_repository_rules(schema: &mut Schema) {
    push_rules(schema, &[TOKEN_OVER_HTTPS]);
}

fn workspace_repository_rules(schema: &mut Schema) {
    push_rules(schema, &[TOKEN_OVER_HTTPS_OR_SHORTHAND]);
}

/// The git repository a ProjectVM keeps synced.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = project_repository_rules)]
pub struct ProjectRepository {
    /// HTTPS URL of the repository, e.g. `https://github.com/acme/api.git`. Credentials
    /// never go in the URL: use `credentialsSecretRef`.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048), transform = url_rules)]
    pub url: String,
    /// Branch, tag or commit to check out; the remote's default branch when unset. A commit
    /// is given as its full 40-character SHA; a branch or tag may also be written as
    /// `refs/heads/NAME` or `refs/tags/NAME`, which is how to name one whose name looks like
    /// an abbreviated commit. Changing it fetches and checks out the new revision without
    /// re-provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REVISION_PATTERN), length(max = 255), transform = revision_rules)]
    pub revision: Option<String>,
    /// Where the repository is checked out on the VM: an absolute path below the VM user's
    /// home directory `/home/<user>/`, written without `.` or `..` segments; by default
    /// `/home/<user>/repo`. The operator creates missing directories on the way there for the
    /// user, and never creates, re-owns or changes the permissions of a directory outside
    /// that home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN), length(max = 1024), transform = path_rules)]
    pub path: Option<String>,
    /// Clone only this many commits of history; full history when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub depth: Option<i32>,
    /// Secret key holding an access token for a private repository; the URL must then be
    /// https. The Secret must carry the label `projectvm.dev/allowed: "true"`, which its owner
    /// sets to let projectvm use it (service-account token Secrets are never used). The token
    /// reaches git only through a credential helper readable by the VM user, which answers
    /// for the repository's exact https host and port alone; refreshing the Secret updates
    /// the VM without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

impl ProjectRepository {
    /// The checkout path: `path`, or `/home/<user>/repo`.
    pub fn effective_path(&self, user: &str) -> String {
        match &self.path {
            Some(p) => p.trim_end_matches('/').to_string(),
            None => format!("/home/{user}/repo"),
        }
    }
}

/// The git repository a Workspace opens in code-server.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = workspace_repository_rules)]
pub struct WorkspaceRepository {
    /// HTTPS URL of the repository, or `owner/repo` for GitHub.
    #[schemars(regex(pattern = URL_OR_SHORTHAND_PATTERN), length(max = 2048), transform = url_rules)]
    pub url: String,
    /// Branch, tag or commit to check out; the remote's default branch when unset. A commit
    /// is given as its full 40-character SHA; a branch or tag may also be written as
    /// `refs/heads/NAME` or `refs/tags/NAME`, which is how to name one whose name looks like
    /// an abbreviated commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REVISION_PATTERN), length(max = 255), transform = revision_rules)]
    pub revision: Option<String>,
    /// Clone only this many commits of history; full history when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub depth: Option<i32>,
    /// Secret key holding an access token for a private repository; the URL must then be
    /// https. The Secret must carry the label `projectvm.dev/allowed: "true"`, which its owner
    /// sets to let projectvm use it (service-account token Secrets are never used). The token
    /// reaches git only through a credential helper answering for the repository's exact
    /// https host and port.
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

/// The repository's name from its URL: last path segment without a `.git` suffix. Admission
/// refuses URLs where that is empty, `.` or `..`; should one get through anyway, the name is
/// `repo`, never a segment that leaves the parent directory.
pub fn repo_name(url: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("repo");
    let name = last.strip_suffix(".git").unwrap_or(last);
    if matches!(name, "" | "." | "..") { "repo".into() } else { name.into() }
}

/// What admission says, in every refusal of a checkout folder outside the user's home.
pub const OUTSIDE_HOME: &str = "must be below the VM user's home directory";

/// The admission rule for a checkout folder below the VM user's home, for the spec that
/// holds both the folder (at `field`, e.g. `repository.path`) and `user`. It goes on the
/// spec, since CEL rules see one object level at a time, and points at the field.
/// `/home/<user>/` is 7 characters plus the user; the folder must go deeper than that.
pub(crate) fn below_home_validation(field: &str, optional: bool, example: &str) -> serde_json::Value {
    let below =
        format!("self.{field}.startsWith('/home/' + self.user + '/') && size(self.{field}) > size(self.user) + 7");
    let rule = if optional { format!("!has(self.{field}) || ({below})") } else { below };
    let tail = "the operator never creates, re-owns or re-modes directories outside it";
    serde_json::json!({
        "rule": rule,
        "message": format!("{field} {OUTSIDE_HOME}, /home/<user>/ (for example /home/project/{example}): {tail}"),
        "messageExpression": format!(
            "\"{field} \" + self.{field} + \" {OUTSIDE_HOME}, /home/\" + self.user + \"/ (for example /home/\" + self.user + \"/{example}): {tail}\""
        ),
        "fieldPath": format!(".{field}"),
        "reason": "FieldValueInvalid",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ProjectVM, Workspace};
    use kube::CustomResourceExt;
    use serde_json::Value;

    #[test]
    fn repository_name_never_leaves_the_parent_directory() {
        assert_eq!(repo_name("https://github.com/acme/api.git"), "api");
        assert_eq!(repo_name("https://github.com/acme/api/"), "api");
        assert_eq!(repo_name("acme/.github"), ".github");
        for url in
            ["https://h.example/o/...git", "https://h.example/o/..git", "https://h.example/o/.git/", "acme/...git"]
        {
            assert_eq!(repo_name(url), "repo", "{url}");
        }
    }

    /// The `x-kubernetes-validations` at a JSON pointer below `spec` of the first version.
    fn rules(crd: &Value, below_spec: &str) -> Vec<Value> {
        let ptr =
            format!("/spec/versions/0/schema/openAPIV3Schema/properties/spec{below_spec}/x-kubernetes-validations");
        crd.pointer(&ptr).and_then(Value::as_array).cloned().unwrap_or_else(|| panic!("no rules at {ptr}"))
    }

    fn has_rule(list: &[Value], fragment: &str) -> bool {
        list.iter().any(|r| r["rule"].as_str().is_some_and(|s| s.contains(fragment)))
    }

    #[test]
    fn both_kinds_carry_the_admission_rules() {
        let pvm = serde_json::to_value(ProjectVM::crd()).unwrap();
        let ws = serde_json::to_value(Workspace::crd()).unwrap();
        for (crd, repo) in [(&pvm, "/properties/repository"), (&ws, "/properties/repository")] {
            assert!(has_rule(&rules(crd, &format!("{repo}/properties/url")), "[.]{1,3}git"));
            assert!(has_rule(&rules(crd, &format!("{repo}/properties/revision")), "{7,39}"));
            let spec = rules(crd, "");
            for transition in ["self.image == oldSelf.image", "self.diskSizeGb == oldSelf.diskSizeGb"] {
                assert!(has_rule(&spec, transition), "{transition}");
            }
            // CEL cost estimates need bounded strings wherever a rule concatenates or compares.
            let props = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
            for field in ["/user", "/image/properties/family", "/image/properties/project"] {
                assert!(crd.pointer(&format!("{props}{field}/maxLength")).is_some(), "{field} has no maxLength");
            }
        }
        let path = rules(&pvm, "");
        let path = path.iter().find(|r| r["fieldPath"] == ".repository.path").expect("path rule");
        assert!(
            path["rule"]
                .as_str()
                .unwrap()
                .starts_with("!has(self.repository.path) || (self.repository.path.startsWith(")
        );
        assert!(path["messageExpression"].as_str().unwrap().contains(OUTSIDE_HOME));
        let folder = rules(&ws, "");
        let folder = folder.iter().find(|r| r["fieldPath"] == ".folder").expect("folder rule");
        assert!(folder["rule"].as_str().unwrap().starts_with("!has(self.folder) || (self.folder.startsWith("));
        assert!(folder["message"].as_str().unwrap().contains(OUTSIDE_HOME));
    }
}
