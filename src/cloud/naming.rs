//! Deterministic instance names and labels. A controller that crashed after an insert finds
//! its instance again by name, and the labels say which resource it belongs to.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::CloudInstance;

const MAX: usize = 63;

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercases and replaces anything outside `[a-z0-9-]` with `-`, collapsing runs.
fn sanitize(s: &str, allow_underscore: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (allow_underscore && c == '_');
        let c = if ok { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    out
}

/// `pvm-<namespace>-<name>` or `ws-<namespace>-<name>`, a valid Compute Engine name
/// (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`). When sanitising changed anything or the name is
/// too long, a hash of the exact `kind/namespace/name` is appended so two resources never
/// share a name.
pub fn instance_name(kind: &str, namespace: &str, name: &str) -> String {
    let prefix = if kind == "workspace" { "ws" } else { "pvm" };
    let raw = format!("{prefix}-{namespace}-{name}");
    let clean = sanitize(&raw, false).trim_end_matches('-').to_string();
    if clean == raw && clean.len() <= MAX {
        return clean;
    }
    let hash = short_hash(&format!("{kind}/{namespace}/{name}"));
    let keep = MAX - hash.len() - 1;
    let mut base: String = clean.chars().take(keep).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{hash}")
}

/// A label value within Compute Engine's rules (lowercase `[-_a-z0-9]`, at most 63).
pub fn label_value(v: &str) -> String {
    let clean = sanitize(v, true);
    if clean == v && clean.len() <= MAX {
        return clean;
    }
    let hash = short_hash(v);
    let keep = MAX - hash.len() - 1;
    let base: String = clean.chars().take(keep).collect();
    format!("{base}-{hash}")
}

/// The labels every instance carries.
pub fn instance_labels(kind: &str, namespace: &str, name: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("managed-by".to_string(), "projectvm".to_string()),
        ("projectvm-kind".to_string(), label_value(kind)),
        ("projectvm-namespace".to_string(), label_value(namespace)),
        ("projectvm-name".to_string(), label_value(name)),
        ("projectvm-uid".to_string(), label_value(uid)),
    ])
}

/// Whether the instance was made for this resource: for this very object (uid), or for an
/// earlier object of the same kind, namespace and name (re-declared after `Orphan`), which
/// the new one adopts.
pub fn belongs_to(instance: &CloudInstance, kind: &str, namespace: &str, name: &str) -> bool {
    let l = &instance.labels;
    l.get("managed-by").map(String::as_str) == Some("projectvm")
        && l.get("projectvm-kind") == Some(&label_value(kind))
        && l.get("projectvm-namespace") == Some(&label_value(namespace))
        && l.get("projectvm-name") == Some(&label_value(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(n: &str) -> bool {
        let b = n.as_bytes();
        !n.is_empty()
            && n.len() <= 63
            && b[0].is_ascii_lowercase()
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !n.ends_with('-')
    }

    #[test]
    fn simple_names_stay_readable() {
        assert_eq!(instance_name("projectvm", "team-a", "api"), "pvm-team-a-api");
        assert_eq!(instance_name("workspace", "default", "demo"), "ws-default-demo");
    }

    #[test]
    fn names_are_valid_and_distinct() {
        let cases = [
            ("projectvm", "ns", "a.b"),
            ("projectvm", "ns", "a-b"),
            ("projectvm", "ns", &"x".repeat(253)),
            ("projectvm", "ns", &format!("{}y", "x".repeat(252))),
            ("workspace", &"n".repeat(63), &"m".repeat(253)),
            ("projectvm", "ns", "ends."),
        ];
        let names: Vec<String> = cases.iter().map(|(k, n, m)| instance_name(k, n, m)).collect();
        for n in &names {
            assert!(valid(n), "{n}");
        }
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "{names:?}");
        assert_eq!(instance_name("projectvm", "ns", "a.b"), instance_name("projectvm", "ns", "a.b"));
    }

    #[test]
    fn labels_follow_gce_rules() {
        let l = instance_labels("projectvm", "Team.A", &"x".repeat(100), "0d6f-11ee");
        for v in l.values() {
            assert!(
                v.len() <= 63
                    && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
                "{v}"
            );
        }
        assert_eq!(l["managed-by"], "projectvm");
        assert_eq!(l["projectvm-uid"], "0d6f-11ee");
    }

    #[test]
    fn ownership() {
        let mut inst =
            CloudInstance { labels: instance_labels("projectvm", "ns", "a", "old-uid"), ..Default::default() };
        assert!(belongs_to(&inst, "projectvm", "ns", "a"));
        assert!(!belongs_to(&inst, "projectvm", "ns", "b"));
        assert!(!belongs_to(&inst, "workspace", "ns", "a"));
        inst.labels.remove("managed-by");
        assert!(!belongs_to(&inst, "projectvm", "ns", "a"));
    }
}
