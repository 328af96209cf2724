//! What stands behind an instance: nothing (`none`, records only) or a real machine
//! (`nspawn`). Backend calls block; the emulator runs them on blocking threads.

use std::net::Ipv4Addr;

use serde::Serialize;

pub mod cgroup;
pub mod none;
pub mod nspawn;

/// What a backend needs to know about an instance.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub project: String,
    pub zone: String,
    pub name: String,
    pub id: u64,
    pub address: Ipv4Addr,
    pub machine_type: String,
    pub metadata: Vec<(String, String)>,
    /// The emulator's booting fault holds this machine: its next boot keeps `/run/nologin`.
    pub booting: bool,
    /// The boot disk's `sourceImage` (`projects/P/global/images/family/F`), which picks the
    /// root filesystem.
    pub source_image: Option<String>,
}

impl MachineSpec {
    pub fn key(&self) -> MachineKey {
        MachineKey { project: self.project.clone(), zone: self.zone.clone(), name: self.name.clone() }
    }

    /// The image family named by the source image (`…/images/family/F`), if any.
    pub fn image_family(&self) -> Option<&str> {
        let image = self.source_image.as_deref()?;
        let (_, family) = image.rsplit_once("/images/family/")?;
        (!family.is_empty() && !family.contains('/')).then_some(family)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct MachineKey {
    pub project: String,
    pub zone: String,
    pub name: String,
}

/// A machine's process ended without the emulator asking (e.g. `poweroff` in the guest).
#[derive(Debug, Clone)]
pub struct MachineExit {
    pub key: MachineKey,
    pub id: u64,
    pub pid: u32,
    pub code: Option<i32>,
}

/// What `GET /emulator/v1/instances` shows about the machine.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineView {
    pub backend: String,
    /// running | stopped | absent
    pub state: String,
    pub pid: Option<u32>,
    pub address: Option<Ipv4Addr>,
    pub netns: Option<String>,
    pub veth: Option<String>,
    pub disk_dir: Option<String>,
    pub log: Option<String>,
    /// The booting fault holds it: `/run/nologin` stays, non-root logins are refused.
    pub booting_held: bool,
    /// While it runs, how its boot went by its own account: `starting` (not over yet),
    /// `running`, or e.g. `degraded: systemd-user-sessions.service` (state: failed units).
    pub boot: Option<String>,
}

pub trait MachineBackend: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Reserve an address for a machine (may fail when another process holds it).
    fn claim_address(&self, addr: Ipv4Addr) -> bool;
    fn release_address(&self, addr: Ipv4Addr);
    /// Make the persistent boot disk of a new instance.
    fn create_disk(&self, spec: &MachineSpec) -> anyhow::Result<()>;
    /// Boot from the disk; returns once the machine accepts SSH connections.
    fn boot(&self, spec: &MachineSpec) -> anyhow::Result<()>;
    /// Power the machine off cleanly (bounded; forced at the end).
    fn stop(&self, spec: &MachineSpec) -> anyhow::Result<()>;
    /// Stop and remove everything: disk, namespace, links, address.
    fn destroy(&self, spec: &MachineSpec) -> anyhow::Result<()>;
    /// The guest agent's job: users and authorized keys from metadata.
    fn apply_metadata(&self, spec: &MachineSpec) -> anyhow::Result<()>;
    /// SSH host public keys on the disk: (type, base64 blob).
    fn host_keys(&self, spec: &MachineSpec) -> anyhow::Result<Vec<(String, String)>>;
    fn inspect(&self, spec: &MachineSpec) -> MachineView;
    /// Hold (or let go of) a machine in boot as far as logins go: `/run/nologin` stays, so
    /// pam_nologin refuses non-root logins. Applies now if it runs and to its next boots.
    fn set_booting(&self, _spec: &MachineSpec, _on: bool) -> anyhow::Result<()> {
        Ok(())
    }
    /// Emulator shutdown without deletion: stop, and drop runtime resources (mounts,
    /// namespaces, address claims) but keep the disk.
    fn release(&self, spec: &MachineSpec) -> anyhow::Result<()>;
}
