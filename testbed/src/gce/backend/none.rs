//! Records only: no machine stands behind an instance. Boots take a configurable delay and
//! every instance has a made-up (but well-formed) ed25519 host key.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use rand::Rng;

use super::{MachineBackend, MachineKey, MachineSpec, MachineView};

pub struct NoneBackend {
    boot_delay: Duration,
    /// Running machines → whether the booting fault holds them.
    running: Mutex<HashMap<MachineKey, bool>>,
    keys: Mutex<HashMap<(MachineKey, u64), String>>,
}

impl NoneBackend {
    pub fn new(boot_delay: Duration) -> Self {
        Self { boot_delay, running: Mutex::default(), keys: Mutex::default() }
    }
}

/// The base64 blob of an ed25519 public key in SSH wire format (random key material).
pub fn fake_ed25519_blob() -> String {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    let key: [u8; 32] = rand::rng().random();
    blob.extend_from_slice(&key);
    base64::engine::general_purpose::STANDARD.encode(blob)
}

impl MachineBackend for NoneBackend {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn claim_address(&self, _addr: Ipv4Addr) -> bool {
        true
    }

    fn release_address(&self, _addr: Ipv4Addr) {}

    fn create_disk(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.keys.lock().expect("lock").insert((spec.key(), spec.id), fake_ed25519_blob());
        Ok(())
    }

    fn boot(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        std::thread::sleep(self.boot_delay);
        self.running.lock().expect("lock").insert(spec.key(), spec.booting);
        Ok(())
    }

    fn stop(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.running.lock().expect("lock").remove(&spec.key());
        Ok(())
    }

    fn destroy(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.running.lock().expect("lock").remove(&spec.key());
        self.keys.lock().expect("lock").remove(&(spec.key(), spec.id));
        Ok(())
    }

    fn apply_metadata(&self, _spec: &MachineSpec) -> anyhow::Result<()> {
        Ok(())
    }

    fn host_keys(&self, spec: &MachineSpec) -> anyhow::Result<Vec<(String, String)>> {
        let mut keys = self.keys.lock().expect("lock");
        let blob = keys.entry((spec.key(), spec.id)).or_insert_with(fake_ed25519_blob).clone();
        Ok(vec![("ssh-ed25519".to_string(), blob)])
    }

    fn inspect(&self, spec: &MachineSpec) -> MachineView {
        let held = self.running.lock().expect("lock").get(&spec.key()).copied();
        MachineView {
            backend: "none".into(),
            state: if held.is_some() { "running" } else { "stopped" }.into(),
            address: Some(spec.address),
            booting_held: held == Some(true),
            ..Default::default()
        }
    }

    fn set_booting(&self, spec: &MachineSpec, on: bool) -> anyhow::Result<()> {
        if let Some(held) = self.running.lock().expect("lock").get_mut(&spec.key()) {
            *held = on;
        }
        Ok(())
    }

    fn release(&self, spec: &MachineSpec) -> anyhow::Result<()> {
        self.stop(spec)
    }
}
