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
/// Annotation a person sets (to any new value) to stop a running `Manual` VM without editing
/// its spec; idle shutdown and a later start request work as usual afterwards.
pub const STOP_ANNOTATION: &str = "projectvm.dev/stop-requested";

/// Finalizer on a Run: deleting it stops its work on the VM and removes its directory.
pub const RUN_FINALIZER: &str = "projectvm.dev/run-cleanup";

/// Label a Secret carries, with the value `"true"`, to let ProjectVMs and Workspaces in its
/// namespace use it (`credentialsSecretRef`, `passwordSecretRef`). Without it the operator
/// refuses the reference (`SecretNotAllowed`) and never reads the Secret's data.
pub const SECRET_OPT_IN_LABEL: &str = "projectvm.dev/allowed";

/// The CRDs as YAML documents, in a stable order, with their descriptions as flowing
/// paragraphs.
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    let yaml = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        let mut v = serde_json::to_value(crd).expect("CRD serializes");
        reflow_descriptions(&mut v);
        serde_yaml::to_string(&v).expect("CRD serializes")
    };
    vec![
        ("projectvm.dev_projectvms.yaml", yaml(ProjectVM::crd())),
        ("projectvm.dev_workspaces.yaml", yaml(Workspace::crd())),
        ("projectvm.dev_runs.yaml", yaml(Run::crd())),
    ]
}

/// Doc comments are wrapped at the source's width; `kubectl explain` would show each of
/// those line ends as a hard break in mid-sentence. Every `description` becomes paragraphs
/// (split at blank lines) whose lines are joined with spaces; list items (`- `) keep their
/// own lines.
pub fn reflow_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if k == "description" => *text = reflow(text),
                    other => reflow_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|para| {
            let mut out = String::new();
            for line in para.lines().map(str::trim) {
                if line.is_empty() {
                    continue;
                }
                if !out.is_empty() {
                    out.push(if line.starts_with("- ") { '\n' } else { ' ' });
                }
                out.push_str(line);
            }
            out
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_flowing_paragraphs() {
        assert_eq!(reflow("open `status.url` and land in\nthe code."), "open `status.url` and land in the code.");
        assert_eq!(reflow("One.\n\nTwo\nlines.\n- a\n- b"), "One.\n\nTwo lines.\n- a\n- b");
        for (_, yaml) in crd_yaml() {
            let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            let mut broken = Vec::new();
            fn walk(v: &serde_json::Value, broken: &mut Vec<String>) {
                match v {
                    serde_json::Value::Object(m) => m.iter().for_each(|(k, c)| match c {
                        serde_json::Value::String(t) if k == "description" => {
                            // A line break inside a paragraph must start a list item.
                            for para in t.split("\n\n") {
                                if para.lines().skip(1).any(|l| !l.starts_with("- ")) {
                                    broken.push(t.clone());
                                }
                            }
                        }
                        c => walk(c, broken),
                    }),
                    serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, broken)),
                    _ => {}
                }
            }
            walk(&v, &mut broken);
            assert!(broken.is_empty(), "descriptions with hard breaks: {broken:?}");
        }
    }
}
