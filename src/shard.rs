//! Sharding: which objects this operator reconciles, when several run side by side.
//!
//! Each operator Deployment takes the ProjectVMs and Workspaces whose labels match its
//! `--shard-selector`, a Kubernetes label selector. The convention is Flux's: shards select
//! `sharding.fluxcd.io/key in (shard1)`, and the default Deployment selects
//! `!sharding.fluxcd.io/key`, the objects without the label. The API server filters the
//! watches; this module parses the selector once at start-up (so a typo stops the operator
//! with a message instead of failing every watch) and matches labels itself, for what the
//! watches cannot filter: a Run belongs to the shard of its ProjectVM, whose labels are on
//! another object.

use std::collections::BTreeMap;

/// The label Flux's sharded controllers use, and the one the chart's shards select on.
pub const SHARD_KEY: &str = "sharding.fluxcd.io/key";

/// One term of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Term {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
            Term::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            // As in Kubernetes: an object without the key matches `key != v` and `notin`.
            Term::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
        }
    }
}

/// A parsed `--shard-selector`. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSelector {
    text: String,
    terms: Vec<Term>,
}

impl ShardSelector {
    /// Everything: one operator, no shards.
    pub fn all() -> Self {
        Self::default()
    }

    /// Parses the label selector syntax the API server accepts: terms joined by commas,
    /// each `key`, `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)` or
    /// `key notin (a,b)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let mut terms = Vec::new();
        for raw in split_terms(text)? {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(format!("empty term in label selector {text:?}"));
            }
            terms.push(parse_term(raw).map_err(|e| format!("label selector {text:?}: {e}"))?);
        }
        Ok(Self { text: text.to_string(), terms })
    }

    /// The selector as the API server takes it, for the watches; `None` when it selects all.
    pub fn as_watch_selector(&self) -> Option<&str> {
        (!self.text.is_empty()).then_some(self.text.as_str())
    }

    pub fn is_all(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| t.matches(labels))
    }
}

impl std::fmt::Display for ShardSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() { f.write_str("(all objects)") } else { f.write_str(&self.text) }
    }
}

/// Splits on the commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    if text.is_empty() {
        return Ok(vec![]);
    }
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in label selector {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in label selector {text:?}"));
    }
    out.push(&text[start..]);
    Ok(out)
}

fn parse_term(raw: &str) -> Result<Term, String> {
    if let Some(key) = raw.strip_prefix('!') {
        return Ok(Term::Absent(key_of(key.trim())?));
    }
    if let Some((k, v)) = raw.split_once("!=") {
        return Ok(Term::NotIn(key_of(k.trim())?, vec![value_of(v.trim())?]));
    }
    if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
        return Ok(Term::In(key_of(k.trim())?, vec![value_of(v.trim())?]));
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = raw.split_once(word) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| format!("{raw:?}: the values of `{}` go in parentheses", word.trim()))?;
            let values = inner.split(',').map(|v| value_of(v.trim())).collect::<Result<Vec<_>, _>>()?;
            let key = key_of(k.trim())?;
            return Ok(if negated { Term::NotIn(key, values) } else { Term::In(key, values) });
        }
    }
    Ok(Term::Exists(key_of(raw)?))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of up to 63 characters.
fn key_of(k: &str) -> Result<String, String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if !prefix_ok || !is_label_name(name) || name.is_empty() {
        return Err(format!("{k:?} is not a label key"));
    }
    Ok(k.to_string())
}

fn value_of(v: &str) -> Result<String, String> {
    if !v.is_empty() && !is_label_name(v) {
        return Err(format!("{v:?} is not a label value"));
    }
    Ok(v.to_string())
}

/// Up to 63 alphanumerics, `-`, `_` or `.`, beginning and ending alphanumeric.
fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn flux_convention_default_and_shards_split_the_objects() {
        let default = ShardSelector::parse("!sharding.fluxcd.io/key").unwrap();
        let one = ShardSelector::parse("sharding.fluxcd.io/key in (shard1)").unwrap();
        let two = ShardSelector::parse("sharding.fluxcd.io/key=shard2").unwrap();
        for obj in
            [labels(&[]), labels(&[(SHARD_KEY, "shard1")]), labels(&[(SHARD_KEY, "shard2")]), labels(&[("app", "x")])]
        {
            let takers = [&default, &one, &two].iter().filter(|s| s.matches(&obj)).count();
            assert_eq!(takers, 1, "exactly one shard takes {obj:?}");
        }
        assert!(one.matches(&labels(&[(SHARD_KEY, "shard1")])));
        assert!(default.matches(&labels(&[("app", "x")])));
        assert_eq!(one.as_watch_selector(), Some("sharding.fluxcd.io/key in (shard1)"));
    }

    #[test]
    fn the_whole_selector_syntax() {
        let s = ShardSelector::parse("tier notin (gold, silver),env!=prod, team==a,owner").unwrap();
        assert!(s.matches(&labels(&[("team", "a"), ("owner", "x")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("owner", "x"), ("tier", "gold")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("owner", "x"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("team", "a")])), "owner must exist");
        assert!(!s.matches(&labels(&[("team", "b"), ("owner", "x")])));
        assert!(s.matches(&labels(&[("team", "a"), ("owner", "x"), ("env", "dev")])));
    }

    #[test]
    fn empty_selects_everything_and_typos_are_refused() {
        let all = ShardSelector::parse("  ").unwrap();
        assert!(all.is_all() && all.matches(&labels(&[("a", "b")])));
        assert_eq!(all.as_watch_selector(), None);
        for bad in ["key in shard1", "a,,b", "key in (a", "Bad Key", "-x=1", "k=v w", "k in (a,(b))", "/k", "k=é"] {
            assert!(ShardSelector::parse(bad).is_err(), "{bad:?} refused");
        }
        let e = ShardSelector::parse("sharding.fluxcd.io/key in shard1").unwrap_err();
        assert!(e.contains("parentheses"), "{e}");
    }
}
