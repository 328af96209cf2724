//! The custom resources: `ProjectVM` and `Workspace` in `projectvm.dev/v1alpha1`.

pub mod common;
pub mod machine;
pub mod projectvm;
pub mod repository;
pub mod workspace;

pub use common::*;
pub use machine::MachineSpec;
pub use projectvm::{Prerequisites, ProjectVM, ProjectVMSpec, ProjectVMStatus};
pub use repository::{ProjectRepository, WorkspaceRepository};
pub use workspace::{CodeServerAuth, CodeServerSpec, IngressSpec, Workspace, WorkspaceSpec, WorkspaceStatus};

use kube::CustomResourceExt;

/// The CRDs as YAML documents, in a stable order.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    vec![
        ("projectvm.dev_projectvms.yaml", serde_yaml::to_string(&ProjectVM::crd()).expect("CRD serializes")),
        ("projectvm.dev_workspaces.yaml", serde_yaml::to_string(&Workspace::crd()).expect("CRD serializes")),
    ]
}
