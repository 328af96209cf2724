//! The part of the spec both kinds share: what VM to run and how to manage it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DEFAULT_USER, DeletionPolicy, ImageSpec, MachineSize, RunStrategy};

/// The VM's shape and lifecycle. Flattened into both kinds' specs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    /// Size preset: `small`, `medium`, `large` or `xlarge` (e2-small, e2-medium,
    /// e2-standard-4, e2-standard-8). Set this or `machineType`, not both; `medium` when
    /// neither is set. Changing it resizes the VM (stop, set type, restore power state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<MachineSize>,
    /// Any Compute Engine machine type, e.g. `n2-standard-2`. Set this or `size`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$"), length(max = 63))]
    pub machine_type: Option<String>,
    /// Compute Engine zone, e.g. `us-central1-a`. Defaults to the operator's configured zone.
    /// Cannot be changed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]+-[a-z]+[0-9]+-[a-z]$"), length(max = 63))]
    pub zone: Option<String>,
    /// Boot image; defaults to Ubuntu 22.04 LTS. Cannot be changed after creation.
    #[serde(default)]
    pub image: ImageSpec,
    /// Boot disk size in GB. Cannot be changed after creation.
    #[serde(default = "default_disk_size")]
    #[schemars(range(min = 10, max = 65536))]
    pub disk_size_gb: i32,
    /// Power management: `Always` (keep running), `Halted` (keep stopped) or `Manual`
    /// (start once, then respect stops made by idle shutdown or inside the guest).
    #[serde(default)]
    pub run_strategy: RunStrategy,
    /// Stop the VM after this long without activity, e.g. `2h` or `90m`. Not allowed with
    /// `runStrategy: Always`, which would start it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub idle_timeout: Option<String>,
    /// Stop the VM once it has been running this long, even while someone is working on it,
    /// e.g. `12h`: a cost guardrail. The stop is recorded with reason `RunningTimeout`; set
    /// the annotation `projectvm.dev/start-requested` to a new value to start it again for
    /// another period. Not allowed with `runStrategy: Always`, which would start it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub max_running_time: Option<String>,
    /// A step that makes no progress for this long fails the resource with reason
    /// `StepTimedOut`, e.g. `15m`.
    #[serde(default = "default_progress_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub progress_timeout: String,
    /// `Delete` removes the VM with the resource; `Orphan` keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Linux user the operator creates on the VM; project work runs as this user.
    #[serde(default = "default_user")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_-]{0,31}$"), length(max = 32))]
    pub user: String,
}

fn default_disk_size() -> i32 {
    50
}
fn default_progress_timeout() -> String {
    "15m".into()
}
pub(crate) fn default_user() -> String {
    DEFAULT_USER.into()
}

/// `progressTimeout` when it cannot be read (admission makes that impossible).
const FALLBACK_PROGRESS_LIMIT: std::time::Duration = std::time::Duration::from_secs(900);

impl MachineSpec {
    /// `progressTimeout` as a duration.
    pub fn progress_limit(&self) -> std::time::Duration {
        crate::clock::parse_duration(&self.progress_timeout).unwrap_or(FALLBACK_PROGRESS_LIMIT)
    }

    /// `idleTimeout` as a duration, when set.
    pub fn idle_limit(&self) -> Option<std::time::Duration> {
        self.idle_timeout.as_deref().and_then(crate::clock::parse_duration)
    }

    /// `maxRunningTime` as a duration, when set.
    pub fn running_limit(&self) -> Option<std::time::Duration> {
        self.max_running_time.as_deref().and_then(crate::clock::parse_duration)
    }

    /// The machine type the spec asks for.
    pub fn desired_machine_type(&self) -> String {
        match (&self.machine_type, self.size) {
            (Some(mt), _) => mt.clone(),
            (None, Some(size)) => size.machine_type().to_string(),
            (None, None) => MachineSize::default().machine_type().to_string(),
        }
    }
}

/// Admission rules for the fields of [`MachineSpec`]. They go on the spec that flattens it,
/// since CEL rules see one object level at a time.
pub(crate) const MACHINE_RULES: &[(&str, &str)] = &[
    ("!(has(self.size) && has(self.machineType))", "set either size or machineType, not both"),
    (
        "!has(self.idleTimeout) || self.runStrategy != 'Always'",
        "idleTimeout needs runStrategy Manual or Halted: with Always the VM would be started again right after an idle stop",
    ),
    ("!has(self.idleTimeout) || duration(self.idleTimeout) >= duration('1m')", "idleTimeout must be at least 1m"),
    (
        "!has(self.maxRunningTime) || self.runStrategy != 'Always'",
        "maxRunningTime needs runStrategy Manual or Halted: with Always the VM would be started again right after the stop",
    ),
    (
        "!has(self.maxRunningTime) || duration(self.maxRunningTime) >= duration('1m')",
        "maxRunningTime must be at least 1m",
    ),
    ("duration(self.progressTimeout) >= duration('1m')", "progressTimeout must be at least 1m"),
    ("self.user != 'root'", "user must not be root"),
    (
        "has(oldSelf.zone) ? (has(self.zone) && self.zone == oldSelf.zone) : !has(self.zone)",
        "zone cannot be changed after creation; create a new resource in the other zone",
    ),
    (
        "!has(oldSelf.image) || (has(self.image) && self.image == oldSelf.image)",
        "image cannot be changed after creation: the boot disk was made from it; create a new resource with the other image",
    ),
    (
        "!has(oldSelf.diskSizeGb) || (has(self.diskSizeGb) && self.diskSizeGb == oldSelf.diskSizeGb)",
        "diskSizeGb cannot be changed after creation; create a new resource with the disk size you need",
    ),
];

/// Appends CEL rules to a schema's `x-kubernetes-validations`.
pub(crate) fn push_rules(schema: &mut schemars::Schema, rules: &[(&str, &str)]) {
    let list: Vec<serde_json::Value> =
        rules.iter().map(|(rule, message)| serde_json::json!({ "rule": rule, "message": message })).collect();
    push_validations(schema, list);
}

/// Appends CEL rules given in full (with `messageExpression`, `fieldPath` and so on).
pub(crate) fn push_validations(schema: &mut schemars::Schema, list: Vec<serde_json::Value>) {
    let obj = schema.ensure_object();
    let entry = obj.entry("x-kubernetes-validations").or_insert_with(|| serde_json::Value::Array(vec![]));
    if let serde_json::Value::Array(existing) = entry {
        existing.extend(list);
    }
}
