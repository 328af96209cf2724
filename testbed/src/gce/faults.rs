//! Fault knobs set through the admin API (`/emulator/v1/faults…`).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;

/// Method names the knobs are keyed by (Compute Engine's own names), or `*` for all.
pub const METHODS: &[&str] = &[
    "instances.insert",
    "instances.get",
    "instances.list",
    "instances.aggregatedList",
    "instances.start",
    "instances.stop",
    "instances.delete",
    "instances.setMachineType",
    "instances.setMetadata",
    "instances.setLabels",
    "instances.getGuestAttributes",
    "zoneOperations.get",
    "zoneOperations.wait",
];

/// The IAM permission each method needs (for 403 messages).
pub fn permission(method: &str) -> &'static str {
    match method {
        "instances.insert" => "compute.instances.create",
        "instances.get" => "compute.instances.get",
        "instances.list" | "instances.aggregatedList" => "compute.instances.list",
        "instances.start" => "compute.instances.start",
        "instances.stop" => "compute.instances.stop",
        "instances.delete" => "compute.instances.delete",
        "instances.setMachineType" => "compute.instances.setMachineType",
        "instances.setMetadata" => "compute.instances.setMetadata",
        "instances.setLabels" => "compute.instances.setLabels",
        "instances.getGuestAttributes" => "compute.instances.getGuestAttributes",
        _ => "compute.zoneOperations.get",
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MethodFault {
    /// Added to every call of the method, in milliseconds.
    pub latency_ms: u64,
    /// Probability (0..=1) that a call fails with `error_code`.
    pub error_rate: f64,
    /// HTTP code of the injected error: 503 (default), 500, 429, 403, 404, …
    pub error_code: Option<u16>,
    /// Google reason; defaults by code (backendError, rateLimitExceeded, forbidden, …).
    pub error_reason: Option<String>,
    /// Message; defaults to Google's wording for the code.
    pub error_message: Option<String>,
    /// Inject at most this many errors, then stop (None = no limit).
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaFault {
    pub metric: String,
    pub limit: f64,
    /// Region named in the message; defaults to the zone's region.
    pub region: Option<String>,
    /// How many of the next inserts fail (None = all until cleared).
    pub remaining: Option<u64>,
}

impl Default for QuotaFault {
    fn default() -> Self {
        Self { metric: "CPUS".into(), limit: 8.0, region: None, remaining: None }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct StuckFault {
    /// Operation types that get stuck (insert, start, stop, delete, setMachineType,
    /// setMetadata, setLabels); empty = all.
    pub operation_types: Vec<String>,
    /// How many of the next matching operations get stuck (None = all until cleared).
    pub remaining: Option<u64>,
}

/// Machines that stay "booting" as far as logins go: `/run/nologin` stays in place, so
/// pam_nologin refuses every non-root SSH login with "System is booting up. Unprivileged users
/// are not permitted to log in yet…" until the knob is cleared. Applies to running machines at
/// once and to every boot while set; the instances themselves are RUNNING as usual.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BootingFault {
    /// Instance names, or prefixes of names; empty = all instances.
    pub instances: Vec<String>,
}

impl BootingFault {
    pub fn matches(&self, instance: &str) -> bool {
        self.instances.is_empty() || self.instances.iter().any(|p| instance.starts_with(p.as_str()))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    pub methods: BTreeMap<String, MethodFault>,
    pub quota: Option<QuotaFault>,
    pub exhausted_zones: BTreeSet<String>,
    pub stuck: Option<StuckFault>,
    pub booting: Option<BootingFault>,
}

/// What the request path should do according to the knobs.
pub struct Decision {
    pub latency_ms: u64,
    pub error: Option<ApiError>,
}

impl Faults {
    /// Decide latency and an injected error for one call; consumes `remaining` counts.
    pub fn on_call(&mut self, method: &str, project: &str, resource: &str) -> Decision {
        let mut latency_ms = 0;
        let mut error = None;
        for key in [method, "*"] {
            let Some(f) = self.methods.get_mut(key) else {
                continue;
            };
            latency_ms = latency_ms.max(f.latency_ms);
            if error.is_some() || f.error_rate <= 0.0 || f.remaining == Some(0) {
                continue;
            }
            if rand::rng().random_bool(f.error_rate.clamp(0.0, 1.0)) {
                if let Some(r) = f.remaining.as_mut() {
                    *r -= 1;
                }
                error = Some(injected_error(f, method, project, resource));
            }
        }
        Decision { latency_ms, error }
    }

    /// Whether the next insert fails on quota; consumes one count.
    pub fn take_quota(&mut self) -> Option<QuotaFault> {
        let q = self.quota.as_mut()?;
        match q.remaining {
            Some(0) => None,
            Some(ref mut n) => {
                *n -= 1;
                Some(q.clone())
            }
            None => Some(q.clone()),
        }
    }

    /// Whether the booting fault holds this instance.
    pub fn holds_booting(&self, instance: &str) -> bool {
        self.booting.as_ref().is_some_and(|b| b.matches(instance))
    }

    /// Whether an operation of this type gets stuck; consumes one count.
    pub fn take_stuck(&mut self, op_type: &str) -> bool {
        let Some(s) = self.stuck.as_mut() else {
            return false;
        };
        if !s.operation_types.is_empty() && !s.operation_types.iter().any(|t| t == op_type) {
            return false;
        }
        match s.remaining {
            Some(0) => false,
            Some(ref mut n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }
}

fn injected_error(f: &MethodFault, method: &str, project: &str, resource: &str) -> ApiError {
    let code = f.error_code.unwrap_or(503);
    let mut e = match code {
        403 => ApiError::forbidden(permission(method), resource),
        404 => ApiError::not_found(resource),
        429 => ApiError::rate_limited(project),
        500 => ApiError::internal("Internal error. Please try again or contact Google Support."),
        503 => ApiError::backend_error(),
        c => ApiError::new(c, "backendError", "Injected error."),
    };
    if let Some(r) = &f.error_reason {
        e.reason = r.clone();
    }
    if let Some(m) = &f.error_message {
        e.message = m.clone();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booting_matches_names_and_prefixes() {
        let mut f = Faults::default();
        assert!(!f.holds_booting("ws-a"));
        f.booting = Some(BootingFault { instances: vec!["ws-".into(), "exact".into()] });
        assert!(f.holds_booting("ws-a"));
        assert!(f.holds_booting("exact"));
        assert!(!f.holds_booting("other"));
        f.booting = Some(BootingFault::default());
        assert!(f.holds_booting("anything"), "empty list = all");
    }
}
