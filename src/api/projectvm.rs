//! The `ProjectVM` kind: a persistent VM for one project.

use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::common::VmStatus;
use super::machine::{MACHINE_RULES, MachineSpec, push_rules, push_validations};
use super::repository::{ProjectRepository, below_home_validation};

/// A persistent Compute Engine VM for one project, kept ready to work in: running at the
/// declared size, prerequisites installed, repository synced.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "projectvm.dev",
    version = "v1alpha1",
    kind = "ProjectVM",
    plural = "projectvms",
    singular = "projectvm",
    shortname = "pvm",
    namespaced,
    category = "projectvm",
    doc = "A persistent Compute Engine VM for one project, kept running at the declared size with its prerequisites installed and its repository synced.",
    status = "ProjectVMStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Machine","type":"string","jsonPath":".status.instance.machineType"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.instance.externalIp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Cost","type":"string","jsonPath":".status.cost.display"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = projectvm_rules)]
pub struct ProjectVMSpec {
    #[serde(flatten)]
    pub machine: MachineSpec,
    /// The project's git repository, cloned into the VM and kept at `revision`.
    pub repository: ProjectRepository,
    /// Software installed on the VM before the repository is synced.
    #[serde(default)]
    pub prerequisites: Prerequisites,
    /// How the Runs that target this ProjectVM share it.
    #[serde(default)]
    pub runs: super::run::RunsPolicy,
}

fn projectvm_rules(schema: &mut Schema) {
    push_rules(schema, MACHINE_RULES);
    push_validations(schema, vec![below_home_validation("repository.path", true, "repo")]);
}

/// Packages and an optional script, installed idempotently; the log stays on the VM at
/// `/var/log/projectvm/prerequisites.log`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prerequisites {
    /// Debian/Ubuntu package names, optionally `name=version`. When unset: git, curl,
    /// ca-certificates. An empty list installs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), inner(regex(pattern = r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")))]
    pub packages: Option<Vec<String>>,
    /// A bash script run as root after the packages are installed. It runs again only when
    /// its text changes, so it should be safe to re-run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub script: Option<String>,
}

/// Packages installed when `prerequisites.packages` is unset.
pub const DEFAULT_PACKAGES: &[&str] = &["git", "curl", "ca-certificates"];

impl Prerequisites {
    /// The packages to install, applying the default list.
    pub fn effective_packages(&self) -> Vec<String> {
        match &self.packages {
            Some(p) => p.clone(),
            None => DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Observed state of a ProjectVM.
pub type ProjectVMStatus = VmStatus;
