//! The `Run` kind: a piece of project work (a build, a test suite, an agent run) executed on
//! a ProjectVM the way a Job runs in a pod.
//!
//! The kind is `Run`, as the product contract calls it; its short name is `pvmrun`, since
//! other operators (Tekton among them) also define a kind called Run with the plural `runs`,
//! and `kubectl get pvmrun` is never ambiguous.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::common::Condition;
use super::machine::{push_rules, push_validations};
use super::repository::{REVISION_PATTERN, revision_rules};

/// The longest `timeout` a Run may ask for.
pub const MAX_RUN_TIMEOUT: &str = "168h";
/// The `timeout` of a Run that gives none.
pub const DEFAULT_RUN_TIMEOUT: &str = "1h";

/// A command or script executed once on a ProjectVM, in a git worktree of its own, with its
/// log and artifacts copied back.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "projectvm.dev",
    version = "v1alpha1",
    kind = "Run",
    plural = "runs",
    singular = "run",
    shortname = "pvmrun",
    namespaced,
    category = "projectvm",
    doc = "A command or script executed once on a ProjectVM, in a git worktree of its own, under a systemd unit that survives SSH drops and operator restarts; its log tail and artifacts are brought back.",
    status = "RunStatus",
    printcolumn = r#"{"name":"ProjectVM","type":"string","jsonPath":".spec.projectVMRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Exit","type":"integer","jsonPath":".status.exitCode"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".status.duration"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = run_rules)]
pub struct RunSpec {
    /// The ProjectVM, in the same namespace, whose VM runs this work. When that VM is
    /// stopped, `whenStopped` says whether the Run starts it or fails.
    #[serde(rename = "projectVMRef")]
    pub project_vm_ref: LocalObjectRef,
    /// The program and its arguments, run without a shell. Set this or `script`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(max = 4096)))]
    pub command: Option<Vec<String>>,
    /// A bash script, run with `bash -e`. Set this or `command`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub script: Option<String>,
    /// Where the work starts, relative to the Run's checkout (its directory on the VM); the
    /// checkout itself when unset. It cannot leave the checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*/?$"), length(max = 1024))]
    pub working_dir: Option<String>,
    /// Environment variables, each with a literal `value` or a value from a key of a Secret
    /// in the namespace (`valueFrom.secretKeyRef`). Such a Secret must carry the label
    /// `projectvm.dev/allowed: "true"`, as for repository credentials. Secret values reach
    /// the process through a file only it can read, never a command line, a log or the
    /// status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub env: Vec<RunEnvVar>,
    /// Every key of each listed Secret as an environment variable (optionally prefixed).
    /// The Secrets must carry the opt-in label `projectvm.dev/allowed: "true"`; keys that
    /// are not valid variable names are skipped, with a note in the `Started` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub env_from: Vec<RunEnvFrom>,
    /// The branch, tag or commit to run at. When unset, the commit the ProjectVM has synced
    /// when the Run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REVISION_PATTERN), length(max = 255), transform = revision_rules)]
    pub revision: Option<String>,
    /// The longest the work may run, e.g. `30m` or `2h` (at least 1s, at most 168h). At the
    /// limit it is stopped and the Run ends `TimedOut`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub timeout: String,
    /// Files to copy to Cloud Storage when the work ends: paths or globs (`*`, `?`, `**`)
    /// relative to the Run's checkout; a directory brings all files below it. The full log
    /// is always copied too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 1024), regex(pattern = r"^[^/\x00-\x1f].*$")))]
    pub artifacts: Vec<String>,
    /// Delete the Run (and its directory on the VM) this long after it finished, e.g. `24h`.
    /// Kept until deleted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub ttl_after_finished: Option<String>,
    /// What to do when the ProjectVM's VM is stopped: `Start` it (the default; idle
    /// shutdown stops it again later) or `Fail` the Run with reason `VMStopped`.
    #[serde(default)]
    pub when_stopped: WhenStopped,
}

fn default_timeout() -> String {
    DEFAULT_RUN_TIMEOUT.into()
}

/// A Run is a record of one execution: its spec never changes after creation.
fn run_rules(schema: &mut Schema) {
    push_rules(
        schema,
        &[
            ("has(self.command) != has(self.script)", "set exactly one of command (argv) or script"),
            ("duration(self.timeout) >= duration('1s')", "timeout must be at least 1s"),
            (
                "duration(self.timeout) <= duration('168h')",
                "timeout must be at most 168h (a week); split longer work into several Runs",
            ),
            (
                "!has(self.workingDir) || !self.workingDir.matches('(^|/)[.][.]?(/|$)')",
                "workingDir must stay inside the Run's checkout: no '.' or '..' segments",
            ),
            (
                "!has(self.ttlAfterFinished) || duration(self.ttlAfterFinished) >= duration('0s')",
                "ttlAfterFinished must be a duration such as 1h",
            ),
            ("self == oldSelf", "a Run's spec cannot change after creation: delete it and create a new Run"),
        ],
    );
    push_validations(
        schema,
        vec![serde_json::json!({
            "rule": "!has(self.artifacts) || self.artifacts.all(a, !a.matches('(^|/)[.][.](/|$)'))",
            "message": "artifacts are paths relative to the Run's checkout: no absolute paths and no '..' segments",
            "fieldPath": ".artifacts",
        })],
    );
}

/// A reference to an object in the same namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What a Run does when its ProjectVM's VM is stopped.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum WhenStopped {
    /// Start the VM, run, and leave it to idle shutdown to stop it again.
    #[default]
    Start,
    /// Fail the Run with reason `VMStopped`.
    Fail,
}

/// One environment variable of a Run.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = env_var_rules)]
pub struct RunEnvVar {
    /// The variable's name.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    /// A literal value (visible in the spec; use `valueFrom` for secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub value: Option<String>,
    /// Where the value comes from instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<RunEnvSource>,
}

fn env_var_rules(schema: &mut Schema) {
    push_rules(schema, &[("has(self.value) != has(self.valueFrom)", "set exactly one of value or valueFrom")]);
}

/// The source of an environment variable's value.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunEnvSource {
    /// A key of an opted-in Secret in the Run's namespace.
    pub secret_key_ref: super::common::SecretKeyRef,
}

/// All keys of one Secret as environment variables.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunEnvFrom {
    /// The Secret (it must carry the opt-in label).
    pub secret_ref: LocalObjectRef,
    /// Put before every key, e.g. `DB_`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 64))]
    pub prefix: Option<String>,
}

/// Lifecycle phase of a Run, for humans; automation should read `conditions`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RunPhase {
    /// Accepted; waiting for its ProjectVM to be ready.
    #[default]
    Pending,
    /// Waiting for earlier Runs on the same ProjectVM (`spec.runs.maxConcurrent`).
    Queued,
    /// The VM was stopped and is being started for this Run.
    StartingVM,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl RunPhase {
    /// The work ended (however it ended).
    pub fn finished(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::TimedOut | RunPhase::Cancelled)
    }
}

/// Observed state of a Run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Pending, Queued, StartingVM, Running, Succeeded, Failed, TimedOut or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// `Started` (the work was launched on the VM), `Complete` (it succeeded), `Failed` (it
    /// failed, timed out, was cancelled or could not start), `ArtifactsUploaded`, and the
    /// kstatus conditions `Reconciling` and `Stalled`. `kubectl wait
    /// --for=condition=Complete` waits for success, as for a Job.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the work was launched on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// How long it ran, e.g. `1m12s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The process's exit code, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The commit the work ran at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The last lines of the log (at most 40 lines and 4 KiB), refreshed every few seconds
    /// while the work runs. The whole log is an artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// The files copied to Cloud Storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactStatus>,
    /// The reason the Run failed or waits, as in its conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The systemd unit the work runs under on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The Run's directory on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

/// One file copied to Cloud Storage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// The path relative to the Run's checkout (`run.log` for the log).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// `gs://bucket/object`.
    pub url: String,
}

/// Limits on the Runs of one ProjectVM.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunsPolicy {
    /// How many Runs may execute on the VM at once; later ones wait as `Queued`, in creation
    /// order.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent: u32,
}

impl Default for RunsPolicy {
    fn default() -> Self {
        Self { max_concurrent: default_max_concurrent() }
    }
}

fn default_max_concurrent() -> u32 {
    1
}

impl Run {
    /// `timeout` as a duration (admission keeps it within bounds).
    pub fn timeout(&self) -> std::time::Duration {
        crate::clock::parse_duration(&self.spec.timeout).unwrap_or(std::time::Duration::from_secs(3600))
    }

    /// Every Secret the Run reads, by name.
    pub fn secret_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .spec
            .env
            .iter()
            .filter_map(|e| e.value_from.as_ref().map(|v| v.secret_key_ref.name.as_str()))
            .chain(self.spec.env_from.iter().map(|e| e.secret_ref.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_carries_the_rules_and_columns() {
        let crd = serde_json::to_value(Run::crd()).unwrap();
        let spec = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec").unwrap();
        let rules: Vec<&str> =
            spec["x-kubernetes-validations"].as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
        assert!(rules.iter().any(|r| r.contains("has(self.command) != has(self.script)")));
        assert!(rules.iter().any(|r| r.contains("self == oldSelf")));
        assert!(spec.pointer("/properties/projectVMRef").is_some(), "field is spelled projectVMRef");
        let cols = crd.pointer("/spec/versions/0/additionalPrinterColumns").unwrap().as_array().unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["ProjectVM", "Phase", "Exit", "Duration", "Reason", "Message", "Age"]);
        assert_eq!(crd.pointer("/spec/names/shortNames/0").unwrap(), "pvmrun");
    }

    #[test]
    fn defaults_and_secret_names() {
        let r: Run = serde_yaml::from_str(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Run\nmetadata: {name: r, namespace: n}\nspec:\n  projectVMRef: {name: p}\n  script: make test\n  env:\n  - {name: A, value: x}\n  - {name: B, valueFrom: {secretKeyRef: {name: s1, key: k}}}\n  envFrom:\n  - secretRef: {name: s2}\n  - secretRef: {name: s1}\n",
        )
        .unwrap();
        assert_eq!(r.timeout(), std::time::Duration::from_secs(3600));
        assert_eq!(r.spec.when_stopped, WhenStopped::Start);
        assert_eq!(r.secret_names(), ["s1", "s2"]);
    }
}
