//! Per-method counters of the Compute API calls the emulator serves (`/emulator/v1/requests`),
//! so a benchmark can tell how many cloud calls an operator makes at rest.
//!
//! A call is counted when it arrives at its method's handler (before latency and injected
//! errors, so failed calls count too), keyed by Compute Engine's method name. Calls that name
//! an instance are also attributed to it (`project/zone/name`); `zoneOperations.*` calls are
//! attributed to the instance their operation targets. List calls name no instance.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RequestCounts {
    /// method → calls
    pub methods: BTreeMap<String, u64>,
    /// `project/zone/instance` → method → calls
    pub instances: BTreeMap<String, BTreeMap<String, u64>>,
}

impl RequestCounts {
    pub fn record(&mut self, method: &str, instance: Option<String>) {
        *self.methods.entry(method.to_string()).or_default() += 1;
        if let Some(i) = instance {
            *self.instances.entry(i).or_default().entry(method.to_string()).or_default() += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.methods.values().sum()
    }
}

/// `projects/P/zones/Z/instances/NAME` → `P/Z/NAME`.
pub fn instance_of(resource: &str) -> Option<String> {
    let p: Vec<&str> = resource.split('/').collect();
    match p.as_slice() {
        ["projects", project, "zones", zone, "instances", name] if !name.is_empty() => {
            Some(format!("{project}/{zone}/{name}"))
        }
        _ => None,
    }
}

/// `projects/P/zones/Z/operations/OP` → `(P, Z, OP)`.
pub fn operation_of(resource: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = resource.split('/').collect();
    match p.as_slice() {
        ["projects", project, "zones", zone, "operations", op] => {
            Some((project.to_string(), zone.to_string(), op.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_attribution() {
        let mut c = RequestCounts::default();
        c.record("instances.get", instance_of("projects/p/zones/z/instances/a"));
        c.record("instances.get", instance_of("projects/p/zones/z/instances/a"));
        c.record("instances.list", instance_of("projects/p/zones/z"));
        assert_eq!(c.methods["instances.get"], 2);
        assert_eq!(c.methods["instances.list"], 1);
        assert_eq!(c.total(), 3);
        assert_eq!(c.instances.len(), 1);
        assert_eq!(c.instances["p/z/a"]["instances.get"], 2);
        assert_eq!(operation_of("projects/p/zones/z/operations/op-1"), Some(("p".into(), "z".into(), "op-1".into())));
        assert_eq!(operation_of("projects/p/zones/z/instances/a"), None);
    }
}
