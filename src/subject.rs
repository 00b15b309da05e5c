//! NATS subject patterns: validation, intersection and coverage.
//!
//! Owns the rules for what we accept as a subject pattern in a permission, and the set logic
//! the guard rails rely on. Pure: no I/O, no logging, no allocation.
//! Must never accept a pattern that the NATS server would read differently from us.
//!
//! Accepted patterns (stricter than the server on purpose):
//! - tokens separated by `.`; no empty token (`a..b`, `.a`, `a.` are invalid);
//! - every byte is printable ASCII `0x21..=0x7E`: no whitespace (so no `"subject queue"` form),
//!   no control characters, no non-ASCII (UTF-8 is refused so that look-alike characters such
//!   as a full-width `＄SYS` cannot slip past a guard rail);
//! - `*` only as a whole token; `>` only as the whole last token (`a*`, `a>`, `a.>.b` invalid);
//! - at most [`MAX_SUBJECT_LEN`] bytes.

use std::fmt;

/// Longest accepted pattern in bytes. Large enough for every private inbox prefix we generate
/// (`_INBOX_` + 63-byte namespace + `_` + 253-byte ServiceAccount name + `.>` = 326 bytes).
pub const MAX_SUBJECT_LEN: usize = 512;

/// Why a pattern is not a valid subject. `code()` is a bounded reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    Empty,
    TooLong,
    EmptyToken,
    /// Whitespace, control or non-ASCII character.
    BadCharacter,
    /// `*` or `>` inside a token, e.g. `a*`.
    PartialWildcard,
    /// `>` not as the last token.
    FullWildcardNotLast,
}

impl SubjectError {
    pub fn code(self) -> &'static str {
        match self {
            SubjectError::Empty => "empty",
            SubjectError::TooLong => "too_long",
            SubjectError::EmptyToken => "empty_token",
            SubjectError::BadCharacter => "bad_character",
            SubjectError::PartialWildcard => "partial_wildcard",
            SubjectError::FullWildcardNotLast => "full_wildcard_not_last",
        }
    }
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubjectError::Empty => "empty subject",
            SubjectError::TooLong => "subject longer than 512 bytes",
            SubjectError::EmptyToken => "empty token (two dots, or a leading or trailing dot)",
            SubjectError::BadCharacter => {
                "whitespace, control or non-ASCII character (only printable ASCII is accepted)"
            }
            SubjectError::PartialWildcard => "'*' or '>' must be a whole token",
            SubjectError::FullWildcardNotLast => "'>' must be the last token",
        })
    }
}

impl std::error::Error for SubjectError {}

/// Checks a subject pattern (wildcards allowed) against the rules in the module doc.
pub fn validate(s: &str) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong);
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(SubjectError::BadCharacter);
    }
    let mut tokens = s.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Err(SubjectError::PartialWildcard);
        }
        if t == ">" && tokens.peek().is_some() {
            return Err(SubjectError::FullWildcardNotLast);
        }
    }
    Ok(())
}

/// True if `s` is a valid pattern without wildcards (a concrete subject).
pub fn is_literal(s: &str) -> bool {
    validate(s).is_ok() && s.split('.').all(|t| t != "*" && t != ">")
}

/// Is there a concrete subject that both patterns match? Both must be valid patterns
/// (unchecked here; validate first). Examples: `*.>` ∩ `$SYS.x` = true, `a.*` ∩ `a.b.c` =
/// false, `a.>` ∩ `a` = false (`>` needs at least one token).
pub fn intersects(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // `>` matches one or more tokens; any non-empty remainder has an instance.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Does `a` match every subject that `b` matches (b ⊆ a)? Both must be valid patterns.
pub fn covers(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some(x), Some(y)) if x == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Does pattern `p` match the concrete subject `s`?
pub fn matches(p: &str, s: &str) -> bool {
    is_literal(s) && covers(p, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_patterns() {
        for s in [
            "a",
            "a.b",
            "*",
            ">",
            "*.>",
            "a.*.c",
            "foo.*.bar",
            "$SYS.>",
            "_INBOX.x",
            "a.>",
            "A-b_c.~!@#$%^&()+=",
            "\"quoted\"",
        ] {
            assert_eq!(validate(s), Ok(()), "{s:?}");
        }
        let long = format!("{}.b", "a".repeat(MAX_SUBJECT_LEN - 2));
        assert_eq!(long.len(), MAX_SUBJECT_LEN);
        assert_eq!(validate(&long), Ok(()));
    }

    #[test]
    fn invalid_patterns_with_their_reason() {
        use SubjectError::*;
        let cases: &[(&str, SubjectError)] = &[
            ("", Empty),
            ("a..b", EmptyToken),
            (".a", EmptyToken),
            ("a.", EmptyToken),
            (".", EmptyToken),
            (" a.b", BadCharacter),
            ("a.b ", BadCharacter),
            ("a b", BadCharacter),
            ("a\tb", BadCharacter),
            ("a.\nb", BadCharacter),
            ("a\rb", BadCharacter),
            ("a\u{0}b", BadCharacter),
            ("a\u{7f}", BadCharacter),
            ("caf\u{e9}", BadCharacter),
            ("\u{ff04}SYS.>", BadCharacter),
            ("a.b\u{200b}", BadCharacter),
            ("orders queue", BadCharacter),
            ("a*", PartialWildcard),
            ("*a", PartialWildcard),
            ("a.b>", PartialWildcard),
            (">>", PartialWildcard),
            ("**", PartialWildcard),
            ("a.>.b", FullWildcardNotLast),
            (">.a", FullWildcardNotLast),
            (">.>", FullWildcardNotLast),
        ];
        for (s, want) in cases {
            assert_eq!(validate(s), Err(*want), "{s:?}");
        }
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert_eq!(validate(&long), Err(TooLong));
    }

    #[test]
    fn literal_detection() {
        assert!(is_literal("a.b"));
        assert!(!is_literal("a.*"));
        assert!(!is_literal(">"));
        assert!(!is_literal("a..b"));
    }

    #[test]
    fn intersection_truth_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.>", "$SYS.x", true),
            ("a.*", "a.b.c", false),
            ("a.>", "a", false),
            ("a.>", "a.b", true),
            (">", "a", true),
            (">", ">", true),
            (">", "$SYS.>", true),
            ("*", "$SYS.>", false),
            ("*", "$SYS", true),
            ("*.*", "$SYS.>", true),
            ("*.*.*", "a.>", true),
            ("a.*.c", "a.b.*", true),
            ("a.*.c", "a.b.d", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("foo.*.bar", "foo.>", true),
            ("foo.*.bar", "*.x.*", true),
            ("foo.*.bar", "foo.x", false),
            ("_INBOX.>", "_INBOX_ns_sa.>", false),
            ("_INBOX.>", "*.x", true),
            ("$SYS.>", "shop.>", false),
            ("a", "a.b", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersects(a, b), *want, "{a} ∩ {b}");
            assert_eq!(intersects(b, a), *want, "{b} ∩ {a} (symmetry)");
        }
    }

    #[test]
    fn covers_truth_table() {
        let cases: &[(&str, &str, bool)] = &[
            (">", "a", true),
            (">", "a.>", true),
            ("a.>", ">", false),
            ("a.>", "a", false),
            ("a.>", "a.b.c", true),
            ("a.>", "a.*", true),
            ("a.*", "a.>", false),
            ("*.*", "a.b", true),
            ("a.b", "a.*", false),
            ("*", ">", false),
            ("a.*.c", "a.b.c", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(covers(a, b), *want, "{a} ⊇ {b}");
        }
    }

    /// Every pattern of up to 3 tokens over {x, y, *, >} and every concrete subject of up to
    /// 5 tokens over {x, y, z}: intersection and coverage agree with brute-force enumeration.
    /// `z` appears in no pattern, so it stands for "any other token"; 5 tokens exceed every
    /// pattern length, so `>` is exercised with longer tails.
    #[test]
    fn intersection_and_coverage_agree_with_enumeration() {
        fn all(alpha: &[&str], max: usize) -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            let mut layer: Vec<String> = alpha.iter().map(|s| s.to_string()).collect();
            for _ in 0..max {
                out.extend(layer.iter().cloned());
                layer = layer
                    .iter()
                    .flat_map(|p| alpha.iter().map(move |t| format!("{p}.{t}")))
                    .collect();
            }
            out
        }
        let patterns: Vec<String> = all(&["x", "y", "*", ">"], 3)
            .into_iter()
            .filter(|p| validate(p).is_ok())
            .collect();
        let subjects = all(&["x", "y", "z"], 5);
        // Reference matcher, independent of `covers`.
        fn m(p: &str, s: &str) -> bool {
            let (p, s): (Vec<&str>, Vec<&str>) = (p.split('.').collect(), s.split('.').collect());
            for (i, t) in p.iter().enumerate() {
                if *t == ">" {
                    return s.len() > i;
                }
                if i >= s.len() || (*t != "*" && *t != s[i]) {
                    return false;
                }
            }
            p.len() == s.len()
        }
        let mut checked = 0;
        for a in &patterns {
            let ma: Vec<bool> = subjects.iter().map(|s| m(a, s)).collect();
            for b in &patterns {
                let mb: Vec<bool> = subjects.iter().map(|s| m(b, s)).collect();
                let inter = ma.iter().zip(&mb).any(|(x, y)| *x && *y);
                let cov = ma.iter().zip(&mb).all(|(x, y)| !*y || *x);
                assert_eq!(intersects(a, b), inter, "{a} ∩ {b}");
                assert_eq!(covers(a, b), cov, "{a} ⊇ {b}");
                checked += 1;
            }
            for s in &subjects {
                assert_eq!(matches(a, s), m(a, s), "{a} ~ {s}");
            }
        }
        assert!(checked > 1000, "enumeration too small: {checked}");
    }
}
