//! Types shared by both kinds: sizes, images, power and deletion policies, the
//! condition type and the status blocks both kinds report.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every projectvm resource.
pub const GROUP: &str = "projectvm.dev";

/// Default Linux user the operator creates on the VM and runs project work as.
pub const DEFAULT_USER: &str = "project";

// A machine size preset; each maps to a Compute Engine machine type. (A `//` comment, so
// the field's own doc becomes the `kubectl explain` text.)
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MachineSize {
    /// e2-small: 2 shared vCPUs, 2 GiB.
    Small,
    /// e2-medium: 2 shared vCPUs, 4 GiB.
    #[default]
    Medium,
    /// e2-standard-4: 4 vCPUs, 16 GiB.
    Large,
    /// e2-standard-8: 8 vCPUs, 32 GiB.
    Xlarge,
}

impl MachineSize {
    /// The Compute Engine machine type this preset stands for.
    pub fn machine_type(self) -> &'static str {
        match self {
            MachineSize::Small => "e2-small",
            MachineSize::Medium => "e2-medium",
            MachineSize::Large => "e2-standard-4",
            MachineSize::Xlarge => "e2-standard-8",
        }
    }
}

/// The boot image of the VM, named by image family and the project that publishes it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image family; the newest image of the family is used when the VM is created.
    #[serde(default = "default_image_family")]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"), length(max = 63))]
    pub family: String,
    /// Project that publishes the image family.
    #[serde(default = "default_image_project")]
    #[schemars(regex(pattern = r"^[a-z]([-a-z0-9.:]{0,61}[a-z0-9])?$"), length(max = 63))]
    pub project: String,
}

fn default_image_family() -> String {
    "ubuntu-2204-lts".into()
}
fn default_image_project() -> String {
    "ubuntu-os-cloud".into()
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self { family: default_image_family(), project: default_image_project() }
    }
}

impl ImageSpec {
    /// The `sourceImage` path Compute Engine expects for the newest image of the family.
    pub fn source_image(&self) -> String {
        format!("projects/{}/global/images/family/{}", self.project, self.family)
    }
}

/// How the operator manages the VM's power state.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum RunStrategy {
    /// Keep the VM running; a stop from anywhere else is undone.
    #[default]
    Always,
    /// Keep the VM stopped (the disk is kept).
    Halted,
    /// Start the VM when it is created, then leave its power state alone: stops done by
    /// idle shutdown or from inside the guest are respected. Wake it with the annotation
    /// `projectvm.dev/start-requested`.
    Manual,
}

/// What happens to the VM when the resource is deleted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum DeletionPolicy {
    /// Delete the VM and its disk.
    #[default]
    Delete,
    /// Keep the VM; only the Kubernetes resource goes away.
    Orphan,
}

/// A key of a Secret in the resource's own namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as this resource.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub name: String,
    /// Key within the Secret that holds the token.
    #[serde(default = "default_token_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// A status condition. `kubectl wait --for=condition=Ready` reads these.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready` or `RepositorySynced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A CamelCase word that says why the condition has this status.
    #[serde(default)]
    pub reason: String,
    /// A message for humans.
    #[serde(default)]
    pub message: String,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The `metadata.generation` this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Digest of the inputs this step last succeeded with; the step re-runs when they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// A condition's status.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// What a Compute Engine operation the operator started does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    #[default]
    Insert,
    Start,
    Stop,
    Delete,
    SetMachineType,
    SetMetadata,
}

impl OperationKind {
    /// The Compute Engine method's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Insert => "insert",
            OperationKind::Start => "start",
            OperationKind::Stop => "stop",
            OperationKind::Delete => "delete",
            OperationKind::SetMachineType => "setMachineType",
            OperationKind::SetMetadata => "setMetadata",
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the operator stopped a VM.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// `runStrategy: Halted`.
    Halted,
    /// No activity for `idleTimeout`.
    IdleTimeout,
    /// Running for `maxRunningTime`.
    RunningTimeout,
    /// Stopping to change the machine type.
    Resize,
    /// A person asked with the stop-request annotation (`runStrategy: Manual`).
    Requested,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Halted => "Halted",
            StopReason::IdleTimeout => "IdleTimeout",
            StopReason::RunningTimeout => "RunningTimeout",
            StopReason::Resize => "Resize",
            StopReason::Requested => "Requested",
        }
    }
}

/// Human-readable lifecycle phase.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
pub enum Phase {
    #[default]
    Pending,
    Provisioning,
    Installing,
    Syncing,
    Configuring,
    Ready,
    Stopping,
    Stopped,
    Resizing,
    Deleting,
    Failed,
}

/// What the operator knows about the Compute Engine instance.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Instance name in Compute Engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Numeric instance id; it changes when the instance is recreated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Zone the instance lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Machine type currently set on the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    /// Compute Engine status: PROVISIONING, STAGING, RUNNING, STOPPING, TERMINATED, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Internal (VPC) address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_ip: Option<String>,
    /// External address, when the instance has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
    /// SHA256 fingerprint of the pinned SSH host key, read from the instance's guest attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    /// The pinned SSH host public key (`ssh-ed25519 AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// A Compute Engine operation the operator started and is waiting for.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PendingOperation {
    /// Operation name, polled with zoneOperations.get.
    pub name: String,
    /// What the operation does: insert, start, stop, delete, setMachineType, setMetadata.
    pub kind: OperationKind,
    /// Zone of the operation.
    pub zone: String,
    /// When the operator started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

/// What the operator is doing right now.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The step in progress, e.g. `Repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What the step is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Completion percentage, while it is known (e.g. while cloning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    /// When the resource last made progress (a step finished, the clone percentage rose);
    /// `progressTimeout` counts from here. Waiting is not progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_at: Option<Time>,
}

/// Running cost, computed from the recorded start and stop times.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CostStatus {
    /// Price per running hour of the current machine type plus the disk, in USD.
    #[serde(default)]
    pub hourly_rate: f64,
    /// Hours the VM has been running since it was created.
    #[serde(default)]
    pub hours_used: f64,
    /// Cost accrued so far: compute while running, disk always, in USD.
    #[serde(default)]
    pub accrued: f64,
    /// Estimated cost of a 730-hour month at the current running pattern, in USD.
    #[serde(default)]
    pub estimated_monthly: f64,
    /// Display form of the accrued cost, e.g. `$1.23`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// When these figures were computed. They are refreshed every few minutes and on every
    /// power change, not on every reconcile, so a VM at rest does not rewrite its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_at: Option<Time>,
}

/// Power history the cost and idle logic need; survives operator restarts.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PowerStatus {
    /// Hours the VM ran in closed running periods (not counting the current one).
    #[serde(default)]
    pub running_hours_closed: f64,
    /// Compute cost accrued in closed running periods, in USD.
    #[serde(default)]
    pub compute_cost_closed: f64,
    /// Start of the current running period, when the VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<MicroTime>,
    /// When the instance was created; disk cost accrues from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<MicroTime>,
    /// Why the VM was last stopped by the operator (`IdleTimeout`, `RunningTimeout`, `Halted`, `Resize` or `Requested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stop_reason: Option<StopReason>,
    /// The last `projectvm.dev/start-requested` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_start_request: Option<String>,
    /// The last `projectvm.dev/stop-requested` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_stop_request: Option<String>,
    /// The machine type being applied by a resize in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resizing_to: Option<String>,
    /// Whether the VM was running when the resize in progress began (it is restored after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_restore_running: Option<bool>,
}

/// Observed state of the VM, shared by both kinds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    /// Lifecycle phase, for humans; automation should read `conditions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// ProjectVM: InstanceReady, PrerequisitesInstalled, RepositorySynced, Ready.
    /// Workspace: InstanceReady, RepositoryCloned, CodeServerConfigured, Healthy, Routed, Ready.
    /// Both: CredentialsCurrent when a credentials Secret is referenced, and the kstatus
    /// conditions GitOps tools read: Reconciling (True while work is pending) and Stalled
    /// (True when a reason that needs a person stops progress).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Compute Engine instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceStatus>,
    /// The repository as synced on the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<RepositoryStatus>,
    /// What is happening now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Cost so far and estimated per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostStatus>,
    /// When the VM was last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started_at: Option<Time>,
    /// When the resource first became Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ready_at: Option<Time>,
    /// Last activity seen: for a ProjectVM, an open terminal session or a process of the
    /// project user the operator did not start; for a Workspace, code-server's heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_at: Option<Time>,
    /// A Compute Engine operation in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<PendingOperation>,
    /// Power history used for cost and idle shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerStatus>,
    /// The objects the operator made for this resource, by name. Their names follow the
    /// resource's name where they can, and are shortened with a hash where Kubernetes'
    /// rules for them are stricter than for the resource's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<OwnedObjects>,
}

/// Names of the objects the operator made for a resource.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OwnedObjects {
    /// The Secret with the operator's SSH key for the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_secret: Option<String>,
    /// The Secret with the generated code-server password (Workspace, password auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// The Service that routes to the VM (Workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The EndpointSlice behind that Service (Workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_slice: Option<String>,
    /// The Ingress, when `ingress` is set (Workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

/// The repository as synced on the VM.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    /// The revision requested (branch, tag or commit), or the default branch's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The commit checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When the sync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<Time>,
}
