//! Deterministic instance names and labels. A controller that crashed after an insert finds
//! its instance again by name, and the labels say which resource it belongs to.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::CloudInstance;

const MAX: usize = 63;

/// The first 8 hex digits of the SHA-256 of `s`.
fn short_hash(s: &str) -> String {
    hash_hex(s, 8)
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

/// The instance name a resource gets: `pvm-<namespace>-<name>--<hash>` (`ws-` for a
/// Workspace), a valid Compute Engine name (`[a-z]([-a-z0-9]{0,61}[a-z0-9])?`, at most 63
/// characters) for any namespace and name the API server accepts.
///
/// The readable part is the sanitised `<prefix>-<namespace>-<name>`, cut to fit; it only
/// helps people. Uniqueness comes from the 10-hex-digit hash of the exact
/// `cluster/kind/namespace/name` (none of which can hold a `/`), so the same namespace and
/// name in two clusters sharing a Google Cloud project get two instances.
pub fn instance_name(cluster: &str, kind: &str, namespace: &str, name: &str) -> String {
    let prefix = kind_prefix(kind);
    let hash = hash_hex(&format!("{cluster}/{kind}/{namespace}/{name}"), 10);
    let readable = sanitize(&format!("{prefix}-{namespace}-{name}"), false);
    let keep = MAX - hash.len() - 2;
    let mut base: String = readable.chars().take(keep).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}--{hash}")
}

/// The name the previous version gave an instance (no cluster in it): `pvm-<namespace>-<name>`
/// when that is unambiguous, otherwise with `--` and a hash of `kind/namespace/name`.
/// Only used to find instances that version made, so they stay with their resource.
pub fn legacy_instance_name(kind: &str, namespace: &str, name: &str) -> String {
    let prefix = kind_prefix(kind);
    let known = prefix != "vm";
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

fn kind_prefix(kind: &str) -> &'static str {
    match kind {
        "projectvm" => "pvm",
        "workspace" => "ws",
        _ => "vm",
    }
}

/// The first `digits` hex digits of the SHA-256 of `s` (at most 64).
fn hash_hex(s: &str, digits: usize) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(digits)
        .map(|n| char::from_digit(n.into(), 16).unwrap_or('0'))
        .collect()
}

/// Whether `s` is a usable cluster name: a Compute Engine label value (lowercase
/// `[-_a-z0-9]`, at most 63 characters), not empty.
pub fn valid_cluster_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the cluster name is empty".into());
    }
    if s.len() > MAX {
        return Err(format!("the cluster name {s:?} is longer than {MAX} characters"));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')) {
        return Err(format!(
            "the cluster name {s:?} holds {c:?}: only lowercase letters, digits, '-' and '_' are allowed \
             (it becomes the Compute Engine label {LABEL_CLUSTER})"
        ));
    }
    Ok(())
}

/// The instance label keys, one constant each.
pub const LABEL_MANAGED_BY: &str = "managed-by";
pub const LABEL_KIND: &str = "projectvm-kind";
pub const LABEL_NAMESPACE: &str = "projectvm-namespace";
pub const LABEL_NAME: &str = "projectvm-name";
pub const LABEL_UID: &str = "projectvm-uid";
/// The cluster whose operator made the instance (`--cluster-name`).
pub const LABEL_CLUSTER: &str = "projectvm-cluster";
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

/// Who a resource is, as far as its instance's name and labels go.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub cluster: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl Identity<'_> {
    /// The deterministic name of this resource's instance.
    pub fn instance_name(&self) -> String {
        instance_name(self.cluster, self.kind, self.namespace, self.name)
    }

    /// The name the previous version gave it.
    pub fn legacy_instance_name(&self) -> String {
        legacy_instance_name(self.kind, self.namespace, self.name)
    }

    /// The labels its instance carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        instance_labels(self.cluster, self.kind, self.namespace, self.name, self.uid)
    }
}

/// The labels every instance carries.
pub fn instance_labels(cluster: &str, kind: &str, namespace: &str, name: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_CLUSTER.to_string(), label_value(cluster)),
        (LABEL_KIND.to_string(), label_value(kind)),
        (LABEL_NAMESPACE.to_string(), label_value(namespace)),
        (LABEL_NAME.to_string(), label_value(name)),
        (LABEL_UID.to_string(), label_value(uid)),
    ])
}

/// The labels of a cluster's bulk lists: only its own instances.
pub fn cluster_selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_CLUSTER.to_string(), label_value(cluster)),
    ])
}

/// Whose an instance found under a resource's name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Made by projectvm in this cluster for this resource: this very object, or an earlier
    /// object of the same kind, namespace and name (re-declared after `Orphan`), which the
    /// new one adopts.
    Ours,
    /// Made for this very object (its uid) by a version that did not label the cluster: ours,
    /// and it gets the cluster label. Never one made for another uid: without the label
    /// nothing says which cluster that object lived in.
    OursUnlabelled,
    /// Labelled for another cluster: never adopted, changed or deleted.
    OtherCluster(String),
    /// Made by projectvm for another resource (or, unlabelled, another object).
    OtherResource { uid: Option<String> },
    /// Not made by projectvm.
    NotManaged,
}

impl Ownership {
    pub fn is_ours(&self) -> bool {
        matches!(self, Ownership::Ours | Ownership::OursUnlabelled)
    }

    /// Who holds the instance, for a message: "cluster X", "resource uid U", ….
    pub fn holder(&self) -> String {
        match self {
            Ownership::Ours | Ownership::OursUnlabelled => "this resource".into(),
            Ownership::OtherCluster(c) => format!("cluster {c} (label {LABEL_CLUSTER}={c})"),
            Ownership::OtherResource { uid: Some(u) } => format!("another resource (uid {u})"),
            Ownership::OtherResource { uid: None } => "another resource".into(),
            Ownership::NotManaged => {
                format!("something other than projectvm (no label {LABEL_MANAGED_BY}={MANAGED_BY})")
            }
        }
    }
}

/// Judges an instance found under the resource's name by its labels.
pub fn ownership(instance: &CloudInstance, id: &Identity<'_>) -> Ownership {
    let l = &instance.labels;
    if l.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return Ownership::NotManaged;
    }
    let uid = l.get(LABEL_UID).cloned();
    match l.get(LABEL_CLUSTER) {
        Some(c) if *c != label_value(id.cluster) => Ownership::OtherCluster(c.clone()),
        Some(_) => {
            let same = l.get(LABEL_KIND) == Some(&label_value(id.kind))
                && l.get(LABEL_NAMESPACE) == Some(&label_value(id.namespace))
                && l.get(LABEL_NAME) == Some(&label_value(id.name));
            if same { Ownership::Ours } else { Ownership::OtherResource { uid } }
        }
        None if !id.uid.is_empty() && uid.as_deref() == Some(label_value(id.uid).as_str()) => Ownership::OursUnlabelled,
        None => Ownership::OtherResource { uid },
    }
}

/// Whether the instance was made by projectvm for this very object (its uid).
pub fn owned_by(instance: &CloudInstance, uid: &str) -> bool {
    let l = &instance.labels;
    l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && !uid.is_empty()
        && l.get(LABEL_UID) == Some(&label_value(uid))
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
    fn names_stay_readable() {
        let n = instance_name("prod", "projectvm", "default", "api");
        assert!(n.starts_with("pvm-default-api--") && n.len() == "pvm-default-api--".len() + 10, "{n}");
        assert!(instance_name("prod", "workspace", "default", "demo").starts_with("ws-default-demo--"));
        assert!(instance_name("prod", "projectvm", "team-a", "my.api").starts_with("pvm-team-a-my-api--"));
        // deterministic
        assert_eq!(n, instance_name("prod", "projectvm", "default", "api"));
    }

    #[test]
    fn clusters_never_share_a_name() {
        let a = instance_name("cluster-a", "projectvm", "team", "api");
        let b = instance_name("cluster-b", "projectvm", "team", "api");
        assert_ne!(a, b);
        assert_eq!(a.split("--").next(), b.split("--").next(), "same readable part");
        // the hash covers an unambiguous encoding: moving a '-' between parts changes it
        assert_ne!(instance_name("a-b", "projectvm", "c", "d"), instance_name("a", "projectvm", "b-c", "d"));
        assert_ne!(instance_name("c", "projectvm", "ns-a", "b"), instance_name("c", "projectvm", "ns", "a-b"));
    }

    #[test]
    fn legacy_names_are_the_previous_versions() {
        assert_eq!(legacy_instance_name("projectvm", "default", "api"), "pvm-default-api");
        assert_eq!(legacy_instance_name("workspace", "default", "demo"), "ws-default-demo");
        let n = legacy_instance_name("projectvm", "team-a", "api");
        assert!(n.starts_with("pvm-team-a-api--") && n.len() == "pvm-team-a-api--".len() + 8, "{n}");
        // a new name is never a legacy one (hash lengths differ, and a readable legacy name has no `--`)
        for (ns, name) in [("default", "api"), ("team-a", "api"), ("ns", &*"x".repeat(253))] {
            assert_ne!(instance_name("c", "projectvm", ns, name), legacy_instance_name("projectvm", ns, name));
        }
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
        let mut names = vec![];
        for cluster in ["a", "b", "9f1c2d3e-0000-4000-8000-000000000000", &"c".repeat(63)] {
            for (k, n, m) in &cases {
                names.push(instance_name(cluster, k, n, m));
                names.push(legacy_instance_name(k, n, m));
            }
        }
        for n in &names {
            assert!(valid(n), "{n}");
        }
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        // each legacy name appears once per cluster
        assert_eq!(dedup.len(), cases.len() * 4 + cases.len(), "{names:?}");
    }

    /// Property-style: many random namespace/name pairs the API server accepts (DNS labels
    /// and subdomains), in several clusters, always give valid, distinct names.
    #[test]
    fn random_names_are_valid_and_distinct() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-.";
        let mut word = |max: usize, dots: bool| {
            let len = 1 + (next() as usize) % max;
            let mut w = String::new();
            for i in 0..len {
                let span = if dots { alphabet.len() } else { alphabet.len() - 1 };
                let mut c = alphabet[(next() as usize) % span] as char;
                if (i == 0 || i == len - 1) && !c.is_ascii_alphanumeric() {
                    c = 'a';
                }
                w.push(c);
            }
            w
        };
        let mut seen = std::collections::HashMap::new();
        for _ in 0..3000 {
            let ns = word(63, false);
            let name = word(253, true);
            for cluster in ["east", "west"] {
                for kind in ["projectvm", "workspace"] {
                    let n = instance_name(cluster, kind, &ns, &name);
                    assert!(valid(&n), "{n} from {cluster}/{kind}/{ns}/{name}");
                    let key = format!("{cluster}/{kind}/{ns}/{name}");
                    if let Some(prev) = seen.insert(n.clone(), key.clone()) {
                        assert_eq!(prev, key, "{n} shared");
                    }
                }
            }
        }
    }

    #[test]
    fn cluster_names_are_label_values() {
        for ok in ["prod", "cluster-b", "eu_west_1", "0d6f5c1e-8a1b-4c2d-9e3f-123456789abc", &"x".repeat(63)] {
            assert_eq!(valid_cluster_name(ok), Ok(()), "{ok}");
            assert_eq!(label_value(ok), ok);
        }
        for bad in ["", "Prod", "a.b", "a/b", "ünï", &"x".repeat(64)] {
            assert!(valid_cluster_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_follow_gce_rules() {
        let l = instance_labels("prod", "projectvm", "Team.A", &"x".repeat(100), "0d6f-11ee");
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
        assert_eq!(l["projectvm-cluster"], "prod");
        assert_eq!(
            cluster_selector("prod"),
            BTreeMap::from([
                ("managed-by".to_string(), "projectvm".to_string()),
                ("projectvm-cluster".to_string(), "prod".to_string()),
            ])
        );
        assert_eq!(l["projectvm-name"].len(), 63);
        // distinct truncated values stay distinct
        assert_ne!(label_value(&"x".repeat(100)), label_value(&format!("{}y", "x".repeat(99))));
        assert_eq!(label_value("Team.A"), label_value("Team.A"));
        assert_ne!(label_value("team.a"), label_value("team-a"));
        assert_eq!(label_value("already_fine-1"), "already_fine-1");
    }

    fn id<'a>(cluster: &'a str, name: &'a str, uid: &'a str) -> Identity<'a> {
        Identity { cluster, kind: "projectvm", namespace: "ns", name, uid }
    }

    #[test]
    fn ownership_by_labels() {
        let mut inst = CloudInstance { labels: id("a", "x", "old-uid").labels(), ..Default::default() };
        assert_eq!(ownership(&inst, &id("a", "x", "old-uid")), Ownership::Ours);
        assert_eq!(ownership(&inst, &id("a", "x", "new-uid")), Ownership::Ours, "re-declared after Orphan");
        assert_eq!(ownership(&inst, &id("b", "x", "old-uid")), Ownership::OtherCluster("a".into()));
        assert_eq!(ownership(&inst, &id("a", "y", "u")), Ownership::OtherResource { uid: Some("old-uid".into()) });
        let ws = Identity { kind: "workspace", ..id("a", "x", "u") };
        assert!(!ownership(&inst, &ws).is_ours());
        assert!(owned_by(&inst, "old-uid"));
        assert!(!owned_by(&inst, "new-uid"));
        assert!(!owned_by(&inst, ""));

        // made by the previous version: no cluster label
        inst.labels.remove(LABEL_CLUSTER);
        assert_eq!(ownership(&inst, &id("a", "x", "old-uid")), Ownership::OursUnlabelled);
        assert_eq!(
            ownership(&inst, &id("a", "x", "new-uid")),
            Ownership::OtherResource { uid: Some("old-uid".into()) }
        );
        assert!(!ownership(&inst, &id("a", "x", "")).is_ours());

        inst.labels.remove("managed-by");
        assert_eq!(ownership(&inst, &id("a", "x", "old-uid")), Ownership::NotManaged);
        assert!(!owned_by(&inst, "old-uid"));
        assert!(Ownership::OtherCluster("east".into()).holder().contains("cluster east"));
    }
}
