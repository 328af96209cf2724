//! The emulator's records and their rendering into Compute Engine's JSON shapes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::errors::OperationError;

pub const API_BASE: &str = "https://www.googleapis.com/compute/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    Provisioning,
    Staging,
    Running,
    Stopping,
    Terminated,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Staging => "STAGING",
            Self::Running => "RUNNING",
            Self::Stopping => "STOPPING",
            Self::Terminated => "TERMINATED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OpStatus {
    Pending,
    Running,
    Done,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Done => "DONE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataItem {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestAttribute {
    pub namespace: String,
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootDisk {
    pub device_name: String,
    pub size_gb: i64,
    pub source_image: Option<String>,
    pub auto_delete: bool,
}

/// One instance as the emulator keeps it (also the persisted form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub id: u64,
    /// Short machine type name, e.g. `e2-medium`.
    pub machine_type: String,
    pub status: InstanceStatus,
    #[serde(default)]
    pub status_message: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub label_fingerprint: String,
    #[serde(default)]
    pub metadata: Vec<MetadataItem>,
    pub metadata_fingerprint: String,
    pub fingerprint: String,
    pub network: String,
    #[serde(default)]
    pub subnetwork: Option<String>,
    /// The instance has an access config (an external NAT address), as inserted.
    #[serde(default = "yes")]
    pub external_access: bool,
    pub address: Ipv4Addr,
    pub disk: BootDisk,
    #[serde(default)]
    pub deletion_protection: bool,
    pub creation_timestamp: String,
    #[serde(default)]
    pub last_start_timestamp: Option<String>,
    #[serde(default)]
    pub last_stop_timestamp: Option<String>,
    #[serde(default)]
    pub guest_attributes: Vec<GuestAttribute>,
    /// Request fields echoed back unchanged (description, tags, serviceAccounts, scheduling…).
    #[serde(default)]
    pub passthrough: serde_json::Map<String, Value>,
}

impl InstanceRecord {
    pub fn resource(&self) -> String {
        format!("projects/{}/zones/{}/instances/{}", self.project, self.zone, self.name)
    }

    pub fn self_link(&self) -> String {
        format!("{API_BASE}/{}", self.resource())
    }

    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|i| i.key == key).map(|i| i.value.as_str())
    }

    pub fn guest_attributes_enabled(&self) -> bool {
        self.metadata_value("enable-guest-attributes").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Value of a list-filter field.
    pub fn filter_field(&self, field: &str) -> Option<String> {
        if let Some(k) = field.strip_prefix("labels.") {
            return self.labels.get(k).cloned();
        }
        match field {
            "name" => Some(self.name.clone()),
            "status" => Some(self.status.as_str().to_string()),
            "zone" => Some(zone_url(&self.project, &self.zone)),
            "machineType" => Some(machine_type_url(&self.project, &self.zone, &self.machine_type)),
            "id" => Some(self.id.to_string()),
            _ => None,
        }
    }

    /// The `compute#instance` JSON.
    pub fn to_json(&self) -> Value {
        let zone = zone_url(&self.project, &self.zone);
        let mut access_config = json!({
            "kind": "compute#accessConfig",
            "type": "ONE_TO_ONE_NAT",
            "name": "External NAT",
            "networkTier": "PREMIUM",
        });
        // An ephemeral external address exists only while the instance runs.
        if self.status != InstanceStatus::Terminated {
            access_config["natIP"] = json!(self.address.to_string());
        }
        let access_configs = if self.external_access { vec![access_config] } else { Vec::new() };
        let mut nic = json!({
            "kind": "compute#networkInterface",
            "name": "nic0",
            "network": self.network,
            "networkIP": self.address.to_string(),
            "stackType": "IPV4_ONLY",
            "fingerprint": self.fingerprint,
            "accessConfigs": access_configs,
        });
        if let Some(s) = &self.subnetwork {
            nic["subnetwork"] = json!(s);
        }
        let disk = json!({
            "kind": "compute#attachedDisk",
            "type": "PERSISTENT",
            "mode": "READ_WRITE",
            "source": format!("{API_BASE}/projects/{}/zones/{}/disks/{}", self.project, self.zone, self.name),
            "deviceName": self.disk.device_name,
            "index": 0,
            "boot": true,
            "autoDelete": self.disk.auto_delete,
            "interface": "SCSI",
            "diskSizeGb": self.disk.size_gb.to_string(),
            "architecture": "X86_64",
        });
        let mut v = json!({
            "kind": "compute#instance",
            "id": self.id.to_string(),
            "creationTimestamp": self.creation_timestamp,
            "name": self.name,
            "machineType": machine_type_url(&self.project, &self.zone, &self.machine_type),
            "status": self.status.as_str(),
            "zone": zone,
            "canIpForward": false,
            "networkInterfaces": [nic],
            "disks": [disk],
            "metadata": {
                "kind": "compute#metadata",
                "fingerprint": self.metadata_fingerprint,
                "items": self.metadata,
            },
            "selfLink": self.self_link(),
            "labels": self.labels,
            "labelFingerprint": self.label_fingerprint,
            "startRestricted": false,
            "deletionProtection": self.deletion_protection,
            "fingerprint": self.fingerprint,
            "cpuPlatform": "Intel Broadwell",
        });
        if self.metadata.is_empty() {
            v["metadata"].as_object_mut().expect("object").remove("items");
        }
        if let Some(m) = &self.status_message {
            v["statusMessage"] = json!(m);
        }
        if let Some(t) = &self.last_start_timestamp {
            v["lastStartTimestamp"] = json!(t);
        }
        if let Some(t) = &self.last_stop_timestamp {
            v["lastStopTimestamp"] = json!(t);
        }
        let obj = v.as_object_mut().expect("object");
        for (k, val) in &self.passthrough {
            obj.entry(k.clone()).or_insert_with(|| val.clone());
        }
        v
    }
}

/// One zonal operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecord {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub id: u64,
    pub operation_type: String,
    pub target_name: String,
    pub target_id: u64,
    pub status: OpStatus,
    pub progress: i32,
    pub insert_time: String,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(default)]
    pub error: Option<OperationError>,
    pub user: String,
    /// Held back by the "stuck" fault.
    #[serde(default)]
    pub stuck: bool,
}

impl OperationRecord {
    pub fn self_link(&self) -> String {
        format!("{API_BASE}/projects/{}/zones/{}/operations/{}", self.project, self.zone, self.name)
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "compute#operation",
            "id": self.id.to_string(),
            "name": self.name,
            "zone": zone_url(&self.project, &self.zone),
            "operationType": self.operation_type,
            "targetLink": format!("{API_BASE}/projects/{}/zones/{}/instances/{}", self.project, self.zone, self.target_name),
            "targetId": self.target_id.to_string(),
            "status": self.status.as_str(),
            "user": self.user,
            "progress": self.progress,
            "insertTime": self.insert_time,
            "selfLink": self.self_link(),
        });
        if let Some(t) = &self.start_time {
            v["startTime"] = json!(t);
        }
        if let Some(t) = &self.end_time {
            v["endTime"] = json!(t);
        }
        if let Some(e) = &self.error {
            v["error"] = json!({"errors": [{"code": e.code, "message": e.message}]});
            v["httpErrorStatusCode"] = json!(e.http_status);
            v["httpErrorMessage"] = json!(e.http_message);
        }
        v
    }
}

pub fn zone_url(project: &str, zone: &str) -> String {
    format!("{API_BASE}/projects/{project}/zones/{zone}")
}

pub fn machine_type_url(project: &str, zone: &str, machine_type: &str) -> String {
    format!("{API_BASE}/projects/{project}/zones/{zone}/machineTypes/{machine_type}")
}

/// The last path segment of a (full or partial) resource URL.
pub fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// The region a zone belongs to (`us-central1-a` → `us-central1`).
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map(|(r, _)| r).unwrap_or(zone)
}

/// Compute Engine style timestamp (RFC 3339 with millis and a Pacific offset).
pub fn timestamp() -> String {
    let offset = chrono::FixedOffset::west_opt(7 * 3600).expect("offset");
    chrono::Utc::now().with_timezone(&offset).format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// A 19-digit numeric id like Compute Engine's.
pub fn new_id() -> u64 {
    rand::rng().random_range(1_000_000_000_000_000_000..10_000_000_000_000_000_000)
}

/// A fingerprint: URL-safe base64 of 8 random bytes (the client decodes it as bytes).
pub fn new_fingerprint() -> String {
    let bytes: [u8; 8] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

pub fn new_operation_name() -> String {
    let mut r = rand::rng();
    format!(
        "operation-{}-{:013x}-{:08x}-{:08x}",
        chrono::Utc::now().timestamp_millis(),
        r.random_range(0..(1u64 << 52)),
        r.random::<u32>(),
        r.random::<u32>()
    )
}

/// Number of vCPUs of a machine type, for quota messages and limits.
pub fn vcpus(machine_type: &str) -> u32 {
    match machine_type {
        "e2-micro" | "e2-small" | "e2-medium" | "f1-micro" | "g1-small" => 2,
        _ => machine_type.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(2),
    }
}

/// Valid Compute Engine resource name.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && *b.last().expect("non-empty") != b'-'
}

fn yes() -> bool {
    true
}
