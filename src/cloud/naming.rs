//! Deterministic instance names and labels. A controller that crashed after an insert finds
//! its instance again by name, and the labels say which resource it belongs to.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::CloudInstance;

const MAX: usize = 63;

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
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
/// (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`, at most 63 characters).
///
/// The readable form alone is used only when it is unambiguous: sanitising changed nothing,
/// it fits, and the namespace has no `-` (otherwise `ns-a`/`b` and `ns`/`a-b` would both read
/// `pvm-ns-a-b`). In every other case `--` and an 8-hex-digit hash of the exact
/// `kind/namespace/name` are appended, so two different resources never share a name: a
/// readable name never contains `--` (sanitising collapses it), so it cannot equal a hashed
/// one either.
pub fn instance_name(kind: &str, namespace: &str, name: &str) -> String {
    let (prefix, known) = match kind {
        "projectvm" => ("pvm", true),
        "workspace" => ("ws", true),
        _ => ("vm", false),
    };
    let raw = format!("{prefix}-{namespace}-{name}");
    let clean = sanitize(&raw, false).trim_end_matches('-').to_string();
    if known && clean == raw && clean.len() <= MAX && !namespace.contains('-') {
        return clean;
    }
    let hash = short_hash(&format!("{kind}/{namespace}/{name}"));
    let keep = MAX - hash.len() - 2;
    let mut base: String = clean.chars().take(keep).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}--{hash}")
}

/// The instance label keys, one constant each.
pub const LABEL_MANAGED_BY: &str = "managed-by";
pub const LABEL_KIND: &str = "projectvm-kind";
pub const LABEL_NAMESPACE: &str = "projectvm-namespace";
pub const LABEL_NAME: &str = "projectvm-name";
pub const LABEL_UID: &str = "projectvm-uid";
/// The value of [`LABEL_MANAGED_BY`] on every instance the operator makes.
pub const MANAGED_BY: &str = "projectvm";

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
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_KIND.to_string(), label_value(kind)),
        (LABEL_NAMESPACE.to_string(), label_value(namespace)),
        (LABEL_NAME.to_string(), label_value(name)),
        (LABEL_UID.to_string(), label_value(uid)),
    ])
}

/// Whether the instance was made by projectvm for this very object (its uid).
pub fn owned_by(instance: &CloudInstance, uid: &str) -> bool {
    let l = &instance.labels;
    l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && !uid.is_empty()
        && l.get(LABEL_UID) == Some(&label_value(uid))
}

/// Whether the instance was made for this resource: for this very object (uid), or for an
/// earlier object of the same kind, namespace and name (re-declared after `Orphan`), which
/// the new one adopts.
pub fn belongs_to(instance: &CloudInstance, kind: &str, namespace: &str, name: &str) -> bool {
    let l = &instance.labels;
    l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && l.get(LABEL_KIND) == Some(&label_value(kind))
        && l.get(LABEL_NAMESPACE) == Some(&label_value(namespace))
        && l.get(LABEL_NAME) == Some(&label_value(name))
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
        assert_eq!(instance_name("projectvm", "default", "api"), "pvm-default-api");
        assert_eq!(instance_name("workspace", "default", "demo"), "ws-default-demo");
        assert_eq!(instance_name("projectvm", "team", "my-api"), "pvm-team-my-api");
        // ambiguous split: readable prefix plus a hash
        let n = instance_name("projectvm", "team-a", "api");
        assert!(n.starts_with("pvm-team-a-api--") && n.len() == "pvm-team-a-api--".len() + 8, "{n}");
        // a readable name that looks like a hashed one cannot be one
        let tail = n.trim_start_matches("pvm-team-a-api--");
        assert_ne!(instance_name("projectvm", "team", &format!("a-api-{tail}")), n);
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
            // the same readable form, split differently
            ("projectvm", "ns-a", "b"),
            ("projectvm", "ns-a-b", "c"),
            ("projectvm", "ns-a", "b-c"),
            // sanitising collapses these onto one another
            ("projectvm", "ns", "a_b"),
            ("projectvm", "ns", "a..b"),
            // kinds never share names
            ("workspace", "ns", "a"),
            ("projectvm", "ns", "a"),
            ("other", "ns", "a"),
            ("another", "ns", "a"),
            ("projectvm", "", "a"),
            ("projectvm", "9ns", "A"),
            ("projectvm", "ns", "x.y.z.example.com"),
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
        assert_eq!(l["projectvm-kind"], "projectvm");
        assert_eq!(l["projectvm-name"].len(), 63);
        // distinct truncated values stay distinct
        assert_ne!(label_value(&"x".repeat(100)), label_value(&format!("{}y", "x".repeat(99))));
        assert_eq!(label_value("Team.A"), label_value("Team.A"));
        assert_ne!(label_value("team.a"), label_value("team-a"));
        assert_eq!(label_value("already_fine-1"), "already_fine-1");
    }

    #[test]
    fn ownership() {
        let mut inst =
            CloudInstance { labels: instance_labels("projectvm", "ns", "a", "old-uid"), ..Default::default() };
        assert!(belongs_to(&inst, "projectvm", "ns", "a"));
        assert!(!belongs_to(&inst, "projectvm", "ns", "b"));
        assert!(!belongs_to(&inst, "workspace", "ns", "a"));
        assert!(owned_by(&inst, "old-uid"));
        assert!(!owned_by(&inst, "new-uid"));
        assert!(!owned_by(&inst, ""));
        inst.labels.remove("managed-by");
        assert!(!belongs_to(&inst, "projectvm", "ns", "a"));
        assert!(!owned_by(&inst, "old-uid"));
    }
}
