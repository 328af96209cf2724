//! Names of the objects the operator derives from a resource's name: its SSH key Secret, the
//! generated password Secret, the Workspace's Service, EndpointSlice and Ingress, and label
//! values. A resource may be named anything the API server accepts (a DNS-1123 subdomain of
//! up to 253 characters: digits first, dots allowed), while a Service needs a DNS-1035 label
//! (a letter first, no dots, at most 63) and a label value at most 63 characters. So a name
//! is used as it reads when it is valid where it goes; otherwise it is cut to fit and an
//! 8-hex-digit hash of the whole name keeps different resources apart. Pure.

use sha2::{Digest, Sha256};

/// The longest Kubernetes object name (a DNS-1123 subdomain).
const MAX_SUBDOMAIN: usize = 253;
/// The longest DNS-1035/DNS-1123 label (Service names, label values).
const MAX_LABEL: usize = 63;

fn hash8(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `name` + `suffix` as an object name of at most `max` characters: as it reads when that
/// fits, else the start of `name` and a hash of all of it.
fn fit(name: &str, suffix: &str, max: usize) -> String {
    let whole = format!("{name}{suffix}");
    if whole.len() <= max {
        return whole;
    }
    let hash = hash8(name);
    let room = max - suffix.len() - hash.len() - 1;
    // Names are ASCII (the API server admits nothing else), so byte cuts are character cuts;
    // trailing dots and dashes would leave an invalid name.
    let head = crate::text::head(name, room).trim_end_matches(['.', '-']);
    format!("{head}-{hash}{suffix}")
}

/// The Secret holding the operator's SSH key for a resource of kind `label`.
pub fn ssh_key_secret(label: &str, name: &str) -> String {
    fit(name, &format!("-{label}-ssh"), MAX_SUBDOMAIN)
}

/// The generated code-server password Secret of a Workspace.
pub fn password_secret(name: &str) -> String {
    fit(name, "-code-server", MAX_SUBDOMAIN)
}

/// The Workspace's Service (a DNS-1035 label) — also its Ingress's name.
pub fn service(name: &str) -> String {
    const SUFFIX: &str = "-workspace";
    let readable = name.len() + SUFFIX.len() <= MAX_LABEL
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if readable {
        return format!("{name}{SUFFIX}");
    }
    // Otherwise `ws-` makes it start with a letter, dots become dashes, and the hash of the
    // exact name keeps `a.b` and `a-b` apart.
    let clean = name.replace('.', "-");
    let hash = hash8(name);
    let room = MAX_LABEL - "ws-".len() - 1 - hash.len() - SUFFIX.len();
    let head = crate::text::head(&clean, room).trim_end_matches('-');
    format!("ws-{head}-{hash}{SUFFIX}")
}

/// The Workspace's EndpointSlice (a DNS-1123 subdomain), next to its Service.
pub fn endpoint_slice(name: &str) -> String {
    format!("{}-vm", service(name))
}

/// A label value (at most 63 characters; alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric) that stands for `name`.
pub fn label_value(name: &str) -> String {
    fit(name, "", MAX_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DNS-1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63.
    fn dns1035(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    /// DNS-1123 subdomain as the API server checks it: dot-separated alphanumeric runs with
    /// inner dashes, at most 253 in all (no limit per part).
    fn subdomain(s: &str) -> bool {
        s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && l.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    }

    fn label_ok(s: &str) -> bool {
        s.len() <= 63
            && (s.is_empty()
                || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && s.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))))
    }

    fn names() -> Vec<String> {
        let long_label = "a".repeat(63);
        let dotted_long = format!("{}.{}.{}.{}", "b".repeat(63), "c".repeat(63), "d".repeat(63), "e".repeat(61));
        vec![
            "demo".into(),
            "1st.dotted".into(),
            "9".into(),
            long_label,
            "x".repeat(202),
            dotted_long,
            format!("{}-", "a".repeat(60)).trim_end_matches('-').to_string() + "-z",
            "a.b-c.d".into(),
        ]
    }

    #[test]
    fn every_admitted_name_gives_valid_derived_names() {
        for n in names() {
            assert!(subdomain(&n), "test name {n} is itself admissible");
            let s = ssh_key_secret("projectvm", &n);
            assert!(subdomain(&s), "ssh secret {s}");
            let s = ssh_key_secret("workspace", &n);
            assert!(subdomain(&s), "ssh secret {s}");
            assert!(subdomain(&password_secret(&n)), "password secret {}", password_secret(&n));
            assert!(dns1035(&service(&n)), "service {} for {n}", service(&n));
            assert!(subdomain(&endpoint_slice(&n)), "endpoint slice {}", endpoint_slice(&n));
            assert!(label_ok(&label_value(&n)), "label value {}", label_value(&n));
        }
    }

    #[test]
    fn names_that_fit_read_as_before() {
        assert_eq!(ssh_key_secret("projectvm", "api"), "api-projectvm-ssh");
        assert_eq!(password_secret("demo"), "demo-code-server");
        assert_eq!(service("demo"), "demo-workspace");
        assert_eq!(endpoint_slice("demo"), "demo-workspace-vm");
        assert_eq!(label_value("demo"), "demo");
        assert!(service("1st.dotted").starts_with("ws-1st-dotted-"), "{}", service("1st.dotted"));
    }

    #[test]
    fn different_long_names_stay_apart() {
        let a = format!("{}a", "x".repeat(100));
        let b = format!("{}b", "x".repeat(100));
        assert_ne!(service(&a), service(&b));
        assert_ne!(label_value(&a), label_value(&b));
        // The dotted and dashed spellings of a name are different resources.
        assert_ne!(service("a.b"), service("a-b"));
    }
}
