//! The custom resources: `ProjectVM`, `Workspace` and `Run` in `projectvm.dev/v1alpha1`.

pub mod common;
pub mod machine;
pub mod projectvm;
pub mod repository;
pub mod run;
pub mod workspace;

pub use common::*;
pub use machine::MachineSpec;
pub use projectvm::{Prerequisites, ProjectVM, ProjectVMSpec, ProjectVMStatus};
pub use repository::{ProjectRepository, WorkspaceRepository};
pub use run::{ArtifactStatus, Run, RunPhase, RunSpec, RunStatus, RunsPolicy, WhenStopped};
pub use workspace::{CodeServerAuth, CodeServerSpec, IngressSpec, Workspace, WorkspaceSpec, WorkspaceStatus};

use kube::CustomResourceExt;

/// Field manager for everything the operator applies.
pub const FIELD_MANAGER: &str = "projectvm-operator";
/// Finalizer that makes deletion remove the VM first.
pub const FINALIZER: &str = "projectvm.dev/cleanup";
/// Annotation that pauses reconciling one resource.
pub const PAUSED_ANNOTATION: &str = "projectvm.dev/paused";
/// Annotation a person sets (to any new value, e.g. a timestamp) to start a stopped
/// `Manual` VM without editing its spec.
pub const START_ANNOTATION: &str = "projectvm.dev/start-requested";

/// Finalizer on a Run: deleting it stops its work on the VM and removes its directory.
pub const RUN_FINALIZER: &str = "projectvm.dev/run-cleanup";

/// Label a Secret carries, with the value `"true"`, to let ProjectVMs and Workspaces in its
/// namespace use it (`credentialsSecretRef`, `passwordSecretRef`). Without it the operator
/// refuses the reference (`SecretNotAllowed`) and never reads the Secret's data.
pub const SECRET_OPT_IN_LABEL: &str = "projectvm.dev/allowed";

/// The CRDs as YAML documents, in a stable order.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    vec![
        ("projectvm.dev_projectvms.yaml", serde_yaml::to_string(&ProjectVM::crd()).expect("CRD serializes")),
        ("projectvm.dev_workspaces.yaml", serde_yaml::to_string(&Workspace::crd()).expect("CRD serializes")),
        ("projectvm.dev_runs.yaml", serde_yaml::to_string(&Run::crd()).expect("CRD serializes")),
    ]
}
