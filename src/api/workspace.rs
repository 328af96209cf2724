//! The `Workspace` kind: a VM running code-server on a repository.

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, VmStatus};
use super::machine::{MACHINE_RULES, MachineSpec, push_rules, push_validations};
use super::repository::{PATH_PATTERN, WorkspaceRepository, below_home_validation, path_rules};

/// A VM running code-server with a repository checked out: open `status.url` and land in
/// the code.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "projectvm.dev",
    version = "v1alpha1",
    kind = "Workspace",
    plural = "workspaces",
    singular = "workspace",
    shortname = "ws",
    namespaced,
    category = "projectvm",
    doc = "A Compute Engine VM running code-server on a checked-out repository, published at status.url.",
    status = "WorkspaceStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Cost","type":"string","jsonPath":".status.cost.display"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = workspace_rules)]
pub struct WorkspaceSpec {
    #[serde(flatten)]
    pub machine: MachineSpec,
    /// The repository opened in code-server.
    pub repository: WorkspaceRepository,
    /// code-server settings.
    #[serde(default)]
    pub code_server: CodeServerSpec,
    /// Folder on the VM that the repository is cloned into and code-server opens. It must be
    /// an absolute path below the VM user's home directory `/home/<user>/`, written without
    /// `.` or `..` segments, for example `/home/project/api`; when unset it is
    /// `/home/<user>/<repository name>`. The operator creates the folder for the user when it
    /// is missing, and never creates, re-owns or changes the permissions of a directory
    /// outside that home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN), length(max = 1024), transform = path_rules)]
    pub folder: Option<String>,
    /// Publish the workspace through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

fn workspace_rules(schema: &mut Schema) {
    push_rules(schema, MACHINE_RULES);
    push_validations(schema, vec![below_home_validation("folder", true, "api")]);
}

impl WorkspaceSpec {
    /// The folder the repository is cloned into.
    pub fn effective_folder(&self) -> String {
        match &self.folder {
            Some(f) => f.trim_end_matches('/').to_string(),
            None => format!("/home/{}/{}", self.machine.user, self.repository.name()),
        }
    }
}

/// How code-server listens and authenticates.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodeServerSpec {
    /// TCP port code-server listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// `password` (a generated password kept in the Secret `<name>-code-server`, unless
    /// `passwordSecretRef` names one) or `none`. Without a password anyone who reaches the
    /// port gets a shell on the VM, so `none` works only where the operator's administrators
    /// allow it, and never on a VM with an external address; otherwise the Workspace reports
    /// `AuthNoneNotAllowed`.
    #[serde(default)]
    pub auth: CodeServerAuth,
    /// Secret key holding the password to use instead of a generated one. The Secret must
    /// carry the label `projectvm.dev/allowed: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

fn default_port() -> i32 {
    8080
}

impl Default for CodeServerSpec {
    fn default() -> Self {
        Self { port: default_port(), auth: CodeServerAuth::default(), password_secret_ref: None }
    }
}

/// code-server authentication mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CodeServerAuth {
    /// Login with a password.
    #[default]
    Password,
    /// No login; only for networks you trust.
    None,
}

impl CodeServerAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeServerAuth::Password => "password",
            CodeServerAuth::None => "none",
        }
    }
}

/// An Ingress in front of the workspace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name the workspace is served at, e.g. `api.dev.example.com`.
    #[schemars(
        regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub host: String,
    /// IngressClass to use; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(max = 253))]
    pub class_name: Option<String>,
    /// URL path prefix.
    #[serde(default = "default_ingress_path")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"), length(max = 1024))]
    pub path: String,
    /// Secret holding the TLS certificate for `host`; the URL is https when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(max = 253))]
    pub tls_secret_name: Option<String>,
}

fn default_ingress_path() -> String {
    "/".into()
}

/// Observed state of a Workspace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// Where to open the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub vm: VmStatus,
}
