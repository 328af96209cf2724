//! What differs between the two kinds, behind one trait so the reconcile pipeline is shared.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{MachineSpec, ProjectVM, SecretKeyRef, VmStatus, Workspace, WorkspaceStatus};
use crate::engine::{PROJECTVM_GRAPH, StepNode, WORKSPACE_GRAPH};

/// A kind the operator manages a VM for.
pub trait VmKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// Short lowercase name used in instance names, labels and Secret names.
    const LABEL: &'static str;
    /// The kind's step graph.
    const GRAPH: &'static [StepNode];

    fn machine(&self) -> &MachineSpec;
    fn vm_status(&self) -> Option<&VmStatus>;
    /// The status to write, from the shared part and the URL (Workspace only).
    fn status_json(vm: &VmStatus, url: Option<&str>) -> serde_json::Value;
    fn current_url(&self) -> Option<&str> {
        None
    }
    /// The repository's credentials Secret, if any.
    fn credentials_ref(&self) -> Option<&SecretKeyRef>;
    /// The Workspace itself, for the steps only Workspaces have (code-server, route).
    fn as_workspace(&self) -> Option<&Workspace> {
        None
    }
    /// Secrets whose change must reach the VM (tokens, passwords).
    fn uses_secret(&self, name: &str) -> bool {
        self.credentials_ref().is_some_and(|r| r.name == name)
    }
}

impl VmKind for ProjectVM {
    const LABEL: &'static str = "projectvm";
    const GRAPH: &'static [StepNode] = PROJECTVM_GRAPH;

    fn machine(&self) -> &MachineSpec {
        &self.spec.machine
    }
    fn vm_status(&self) -> Option<&VmStatus> {
        self.status.as_ref()
    }
    fn status_json(vm: &VmStatus, _url: Option<&str>) -> serde_json::Value {
        serde_json::to_value(vm).unwrap_or_default()
    }
    fn credentials_ref(&self) -> Option<&SecretKeyRef> {
        self.spec.repository.credentials_secret_ref.as_ref()
    }
}

impl VmKind for Workspace {
    const LABEL: &'static str = "workspace";
    const GRAPH: &'static [StepNode] = WORKSPACE_GRAPH;

    fn machine(&self) -> &MachineSpec {
        &self.spec.machine
    }
    fn vm_status(&self) -> Option<&VmStatus> {
        self.status.as_ref().map(|s| &s.vm)
    }
    fn status_json(vm: &VmStatus, url: Option<&str>) -> serde_json::Value {
        serde_json::to_value(WorkspaceStatus { url: url.map(String::from), vm: vm.clone() }).unwrap_or_default()
    }
    fn current_url(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.url.as_deref())
    }
    fn as_workspace(&self) -> Option<&Workspace> {
        Some(self)
    }
    fn credentials_ref(&self) -> Option<&SecretKeyRef> {
        self.spec.repository.credentials_secret_ref.as_ref()
    }
    fn uses_secret(&self, name: &str) -> bool {
        self.credentials_ref().is_some_and(|r| r.name == name)
            || self.spec.code_server.password_secret_ref.as_ref().is_some_and(|r| r.name == name)
            || name == super::secrets::password_secret_name(&self.name_any())
    }
}
