//! The Compute Engine edge. Everything else in the operator talks to the cloud only through
//! the [`Compute`] trait, so controllers stay testable and the endpoint can point at an
//! emulator.

pub mod cache;
pub mod error;
pub mod gce;
pub mod metrics;
pub mod naming;
pub mod ratelimit;

use std::collections::BTreeMap;

pub use cache::InstanceCache;
pub use error::{CloudError, CloudErrorKind};

/// An instance's lifecycle state as Compute Engine reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum InstanceState {
    #[default]
    Provisioning,
    Staging,
    Running,
    Stopping,
    Suspending,
    Suspended,
    Repairing,
    Terminated,
    Other(String),
}

impl InstanceState {
    /// Compute Engine's own word for the state, e.g. `RUNNING`.
    pub fn as_str(&self) -> &str {
        match self {
            InstanceState::Provisioning => "PROVISIONING",
            InstanceState::Staging => "STAGING",
            InstanceState::Running => "RUNNING",
            InstanceState::Stopping => "STOPPING",
            InstanceState::Suspending => "SUSPENDING",
            InstanceState::Suspended => "SUSPENDED",
            InstanceState::Repairing => "REPAIRING",
            InstanceState::Terminated => "TERMINATED",
            InstanceState::Other(o) => o,
        }
    }
}

/// What the operator needs to know about an instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloudInstance {
    pub name: String,
    pub id: String,
    /// Short zone name, e.g. `us-central1-a`.
    pub zone: String,
    /// Short machine type, e.g. `e2-medium`.
    pub machine_type: String,
    pub state: InstanceState,
    pub labels: BTreeMap<String, String>,
    /// Fingerprint of the labels, hex; `setLabels` must quote it.
    pub label_fingerprint: Option<String>,
    /// Metadata fingerprint (hex), needed to update metadata.
    pub metadata_fingerprint: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub internal_ip: Option<String>,
    pub external_ip: Option<String>,
    pub deletion_protection: bool,
    pub created_at: Option<String>,
    pub last_start_at: Option<String>,
    pub last_stop_at: Option<String>,
}

/// A request to create an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRequest {
    pub name: String,
    pub zone: String,
    pub machine_type: String,
    /// `projects/P/global/images/family/F`.
    pub source_image: String,
    pub disk_size_gb: i64,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub network: Option<String>,
    pub subnetwork: Option<String>,
    pub external_ip: bool,
    pub service_account_email: Option<String>,
    pub tags: Vec<String>,
}

/// A started zonal operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRef {
    pub name: String,
    pub zone: String,
}

/// Where an operation stands.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationState {
    Running { progress: Option<i32> },
    Done,
    Failed(CloudError),
}

/// One guest attribute (e.g. `hostkeys/ssh-ed25519`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAttribute {
    pub namespace: String,
    pub key: String,
    pub value: String,
}

/// The cloud calls the operator makes. Mutations return the operation they started and
/// never wait for it; `operation` polls once.
#[async_trait::async_trait]
pub trait Compute: Send + Sync + 'static {
    async fn insert_instance(&self, req: &InstanceRequest) -> Result<OperationRef, CloudError>;
    /// `Ok(None)` when the instance does not exist.
    async fn get_instance(&self, zone: &str, name: &str) -> Result<Option<CloudInstance>, CloudError>;
    /// All instances in the zone carrying these labels (server-side filter, all pages).
    async fn list_instances(
        &self,
        zone: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<CloudInstance>, CloudError>;
    async fn start_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError>;
    async fn stop_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError>;
    /// `Ok(None)` when the instance is already gone: not-found is success.
    async fn delete_instance(&self, zone: &str, name: &str) -> Result<Option<OperationRef>, CloudError>;
    async fn set_machine_type(&self, zone: &str, name: &str, machine_type: &str) -> Result<OperationRef, CloudError>;
    /// Replaces the instance's labels; `fingerprint` is the one read with them.
    async fn set_labels(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError>;
    async fn set_metadata(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        items: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError>;
    /// `Ok(vec![])` when nothing is published yet.
    async fn guest_attributes(
        &self,
        zone: &str,
        name: &str,
        query_path: &str,
    ) -> Result<Vec<GuestAttribute>, CloudError>;
    async fn operation(&self, op: &OperationRef) -> Result<OperationState, CloudError>;
}

/// The last segment of a Compute Engine URL (`.../zones/us-central1-a` → `us-central1-a`).
pub fn short_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or(url).to_string()
}
