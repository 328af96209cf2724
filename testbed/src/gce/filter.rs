//! The subset of Compute Engine list filters the emulator understands:
//! conjunctions (`AND` or juxtaposed parenthesised terms) of `FIELD OP VALUE`, where
//! FIELD is `name`, `status`, `zone`, `machineType`, `id` or `labels.KEY`, OP is `=`, `!=`
//! or `:` (has / contains), and VALUE is bare or double-quoted and may hold `*` wildcards.
//! `OR` is refused with Google's "Invalid list filter expression" error.

use super::errors::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Has,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub field: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub terms: Vec<Term>,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Eq,
    Ne,
    Colon,
}

fn invalid(expr: &str) -> ApiError {
    ApiError::invalid(format!("Invalid list filter expression '{expr}'."))
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, ApiError> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() || c == '(' || c == ')' => i += 1,
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(invalid(expr)),
                        Some('\\') => {
                            if let Some(n) = chars.get(i + 1) {
                                s.push(*n);
                            }
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Quoted(s));
            }
            '=' => {
                out.push(Tok::Eq);
                i += 1;
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Ne);
                i += 2;
            }
            _ => {
                let mut s = String::new();
                while let Some(ch) = chars.get(i) {
                    if ch.is_whitespace() || matches!(ch, '(' | ')' | '=' | ':' | '"') {
                        break;
                    }
                    if *ch == '!' && chars.get(i + 1) == Some(&'=') {
                        break;
                    }
                    s.push(*ch);
                    i += 1;
                }
                out.push(Tok::Word(s));
            }
        }
    }
    Ok(out)
}

impl Filter {
    pub fn parse(expr: &str) -> Result<Filter, ApiError> {
        let toks = tokenize(expr)?;
        let mut terms = Vec::new();
        let mut it = toks.into_iter().peekable();
        while let Some(tok) = it.next() {
            let field = match tok {
                Tok::Word(w) if w.eq_ignore_ascii_case("AND") => continue,
                Tok::Word(w) if w.eq_ignore_ascii_case("OR") || w.eq_ignore_ascii_case("NOT") => {
                    return Err(invalid(expr));
                }
                Tok::Word(w) => w,
                _ => return Err(invalid(expr)),
            };
            let op = match it.next() {
                Some(Tok::Eq) => Op::Eq,
                Some(Tok::Ne) => Op::Ne,
                Some(Tok::Colon) => Op::Has,
                Some(Tok::Word(w)) if w == "eq" => Op::Eq,
                Some(Tok::Word(w)) if w == "ne" => Op::Ne,
                _ => return Err(invalid(expr)),
            };
            let value = match it.next() {
                Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => w,
                _ => return Err(invalid(expr)),
            };
            if !(field == "name"
                || field == "status"
                || field == "zone"
                || field == "machineType"
                || field == "id"
                || field.starts_with("labels."))
            {
                return Err(ApiError::invalid(format!(
                    "Invalid list filter expression '{expr}': unsupported field '{field}'."
                )));
            }
            terms.push(Term { field, op, value });
        }
        Ok(Filter { terms })
    }

    /// `lookup(field)` gives the instance's value for a field, None when it has none.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let actual = lookup(&t.field);
            match t.op {
                Op::Eq => actual.is_some_and(|a| wildcard(&t.value, &a)),
                Op::Ne => !actual.is_some_and(|a| wildcard(&t.value, &a)),
                Op::Has => match actual {
                    None => false,
                    Some(a) => t.value == "*" || a.contains(&t.value),
                },
            }
        })
    }
}

/// Whole-string match where `*` stands for any run of characters.
pub fn wildcard(pattern: &str, s: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == s;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(field: &str) -> Option<String> {
        match field {
            "labels.managed-by" => Some("projectvm".into()),
            "labels.ns" => Some("team-a".into()),
            "name" => Some("pvm-abc".into()),
            "status" => Some("RUNNING".into()),
            _ => None,
        }
    }

    #[test]
    fn conjunctions() {
        for f in [
            r#"labels.managed-by = "projectvm""#,
            "labels.managed-by=projectvm",
            r#"(labels.managed-by = "projectvm") (labels.ns = "team-a")"#,
            r#"labels.managed-by = "projectvm" AND labels.ns = "team-a" AND status = RUNNING"#,
            "name = pvm-*",
            "labels.ns:*",
            "labels.other != x",
        ] {
            assert!(Filter::parse(f).unwrap().matches(labels), "{f}");
        }
        for f in [
            r#"labels.managed-by = "other""#,
            r#"labels.managed-by = "projectvm" AND labels.ns = "team-b""#,
            "labels.missing = x",
            "labels.missing:*",
            "name = other-*",
        ] {
            assert!(!Filter::parse(f).unwrap().matches(labels), "{f}");
        }
        assert!(Filter::parse("a = b OR c = d").is_err());
        assert!(Filter::parse("labels.x =").is_err());
        assert!(Filter::parse("").unwrap().terms.is_empty());
    }
}
