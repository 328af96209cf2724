//! Cutting text that came from outside (VM output, HTTP bodies, cloud messages) to a size
//! Kubernetes accepts. Every cut lands on a character boundary: `String::truncate` and byte
//! slicing panic inside a multi-byte character, and one tenant's output must never take the
//! operator down.

/// Marks where text was cut out.
const ELLIPSIS: &str = "…";

/// The longest prefix of `s` that is at most `max_bytes` long and ends on a character
/// boundary.
pub fn head(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The longest suffix of `s` that is at most `max_bytes` long and starts on a character
/// boundary.
pub fn tail(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut start = s.len() - max_bytes;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `s` cut to at most `max_bytes`, keeping its start (which usually says what failed) and
/// most of its end (for logs, the last lines say why), joined by an ellipsis.
pub fn clip(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let room = max_bytes.saturating_sub(ELLIPSIS.len());
    let first = head(s, room / 4);
    let last = tail(s, room - first.len());
    format!("{first}{ELLIPSIS}{last}")
}

/// `s` cut to at most `max_bytes`, keeping the end, marked with a leading ellipsis.
pub fn clip_start(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    format!("{ELLIPSIS}{}", tail(s, max_bytes.saturating_sub(ELLIPSIS.len())))
}

/// Bytes from outside as text: invalid UTF-8 becomes U+FFFD instead of an error.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The message of a panic payload, for the condition that reports it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "é"; // two bytes

    #[test]
    fn head_and_tail_never_split_a_character() {
        let s = E.repeat(700);
        for max in 0..20 {
            assert!(head(&s, max).len() <= max);
            assert!(tail(&s, max).len() <= max);
            assert_eq!(head(&s, max).len() % 2, 0);
            assert_eq!(tail(&s, max).len() % 2, 0);
        }
        assert_eq!(head("abc", 10), "abc");
        assert_eq!(tail("abc", 2), "bc");
        // Four-byte characters too.
        let emoji = "🦀".repeat(10);
        assert_eq!(head(&emoji, 5), "🦀");
        assert_eq!(tail(&emoji, 7), "🦀");
    }

    #[test]
    fn clip_keeps_start_and_end_within_the_limit() {
        let s = format!("prerequisites failed:\n{}\nEND", E.repeat(700));
        for max in [0, 1, 3, 4, 10, 100, 1000, 1001] {
            let c = clip(&s, max);
            assert!(c.len() <= max.max(ELLIPSIS.len()), "{max}: {} bytes", c.len());
        }
        let c = clip(&s, 1000);
        assert!(c.starts_with("prerequisites"));
        assert!(c.ends_with("\nEND"));
        assert!(c.contains(ELLIPSIS));
        assert_eq!(clip("short", 1000), "short");
    }

    #[test]
    fn clip_start_keeps_the_end() {
        let s = format!("{}END", E.repeat(3000));
        let c = clip_start(&s, 2048);
        assert!(c.len() <= 2048);
        assert!(c.starts_with(ELLIPSIS) && c.ends_with("END"));
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        assert_eq!(lossy(&[b'o', b'k', 0xff, 0xfe]), "ok\u{fffd}\u{fffd}");
    }

    #[test]
    fn panic_messages() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
    }
}
