//! Regular expressions in the dialect Envoy configures: RE2's syntax, matched against the whole
//! input (Envoy's `safe_regex` is a full match).
//!
//! The engine is `regex-lite`: small (about 62 KiB of this module), linear in the input, and,
//! like RE2, without backreferences or look-around. Where the two dialects differ the filter refuses at
//! load, so a pattern is never read two ways: RE2 refuses stacked repetition operators (`a**`,
//! `a++`) and counts over 1000, which `regex-lite` would take, so they are refused here first;
//! `regex-lite` refuses a few things RE2 takes (Unicode classes such as `\pL`, `\Q…\E`, `\C`,
//! a `{` that opens no count, which RE2 reads as a literal), which are refused too, with its
//! reason. `\w`, `\d`, `\s` and `\b` are ASCII in both.

use std::fmt;

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 4096;
/// The largest repetition count RE2 accepts.
const MAX_REPEAT: u32 = 1000;
/// The compiled program's memory bound (the engine's own default is 10 MiB).
const SIZE_LIMIT: usize = 1 << 20;

/// A compiled pattern that must match its whole input.
#[derive(Clone)]
pub struct Regex {
    pattern: String,
    /// Text every match starts with (a pre-filter: most rules' regexes start with a literal
    /// path, which most paths a filter sees do not).
    literal: String,
    compiled: regex_lite::Regex,
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.pattern)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Regex {}

impl Regex {
    /// Compiles `pattern`; the reason it is refused otherwise (fixed text, never the pattern).
    pub fn new(pattern: &str) -> Result<Regex, String> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("is longer than {MAX_PATTERN_BYTES} bytes"));
        }
        refuse_what_re2_refuses(pattern)?;
        let compiled = regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(SIZE_LIMIT)
            .build()
            .map_err(|e| {
                let why = e.to_string();
                let last = why.lines().last().unwrap_or("not a valid pattern").trim();
                format!("is not a regular expression this filter accepts ({last})")
            })?;
        Ok(Regex {
            pattern: pattern.to_string(),
            literal: literal_prefix(pattern),
            compiled,
        })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        text.starts_with(&self.literal) && self.compiled.is_match(text)
    }
}

/// The literal text every match of `pattern` starts with: its leading plain characters (after a
/// `^`), less the last one if a repetition follows it; nothing when an alternation anywhere
/// could make another branch match, or a flag group such as `(?i)` comes first.
fn literal_prefix(pattern: &str) -> String {
    let body = pattern.strip_prefix('^').unwrap_or(pattern);
    if body.contains('|') {
        return String::new();
    }
    let special = |c: char| "\\.+*?()[]{}^$|".contains(c);
    let end = body.find(special).unwrap_or(body.len());
    let mut literal = body[..end].to_string();
    if body[end..].starts_with(['*', '?', '+', '{']) {
        literal.pop();
    }
    literal
}

/// RE2's refusals that `regex-lite` lacks: a repetition operator applied to a repetition
/// (`a**`, `a+*`, `a{2}{3}`, `a*?+`), and counted repetitions over 1000.
fn refuse_what_re2_refuses(pattern: &str) -> Result<(), String> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    // Whether the previous item was a repetition operator (RE2's `lastRepeat`).
    let mut repeated = false;
    while i < bytes.len() {
        let (next, is_repeat) = match bytes[i] {
            b'\\' => (i + 2, false),
            b'[' => (class_end(bytes, i), false),
            b'*' | b'+' | b'?' => (lazy_suffix(bytes, i + 1), true),
            b'{' => match counted(bytes, i)? {
                Some(end) => (lazy_suffix(bytes, end), true),
                None => (i + 1, false),
            },
            _ => (i + 1, false),
        };
        if is_repeat && repeated {
            return Err("stacks repetition operators, which RE2 refuses".to_string());
        }
        repeated = is_repeat;
        i = next;
    }
    Ok(())
}

/// Past a non-greedy `?` after a repetition operator at `at`, if there is one.
fn lazy_suffix(bytes: &[u8], at: usize) -> usize {
    if bytes.get(at) == Some(&b'?') {
        at + 1
    } else {
        at
    }
}

/// The index just past the character class that opens at `start` (`[`), or the end of input.
fn class_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    if bytes.get(i) == Some(&b'^') {
        i += 1;
    }
    // A `]` right after the opening is a literal.
    if bytes.get(i) == Some(&b']') {
        i += 1;
    }
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'[' if bytes.get(i + 1) == Some(&b':') => {
                // A POSIX class `[:alpha:]` inside the class.
                let rest = &bytes[i + 2..];
                i += rest
                    .windows(2)
                    .position(|w| w == b":]")
                    .map_or(1, |p| p + 4);
            }
            b']' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// A counted repetition `{n}`, `{n,}` or `{n,m}` opening at `start`: the index past it, `None`
/// when the brace is a literal (as RE2 reads it), or an error for a count over 1000.
fn counted(bytes: &[u8], start: usize) -> Result<Option<usize>, String> {
    let Some(len) = bytes[start..].iter().position(|b| *b == b'}') else {
        return Ok(None);
    };
    let inner = &bytes[start + 1..start + len];
    let (low, high) = match inner.iter().position(|b| *b == b',') {
        Some(comma) => (&inner[..comma], &inner[comma + 1..]),
        None => (inner, inner),
    };
    let number = |digits: &[u8]| -> Option<u32> {
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            std::str::from_utf8(digits)
                .ok()?
                .parse()
                .unwrap_or(u32::MAX),
        )
    };
    let Some(low) = number(low) else {
        return Ok(None);
    };
    let high = if high.is_empty() {
        Some(low)
    } else {
        number(high)
    };
    let Some(high) = high else {
        return Ok(None);
    };
    if low > MAX_REPEAT || high > MAX_REPEAT {
        return Err(format!(
            "has a repetition count over {MAX_REPEAT}, which RE2 refuses"
        ));
    }
    Ok(Some(start + len + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_prefix_never_refuses_a_match() {
        for (pattern, prefix) in [
            ("/v[0-9]+/admin(/.*)?", "/v"),
            ("^/api/.*", "/api/"),
            ("/apis?/x", "/api"),
            ("/ab*c", "/a"),
            ("/a{2}", "/"),
            ("/a|/b", ""),
            ("(?i)/api", ""),
            ("/caf\u{e9}/.*", "/caf\u{e9}/"),
            (r"\d+", ""),
        ] {
            assert_eq!(literal_prefix(pattern), prefix, "{pattern}");
        }
        let r = Regex::new("/apis?/x").unwrap();
        assert!(r.matches("/api/x") && r.matches("/apis/x") && !r.matches("/ap/x"));
        let r = Regex::new("/v[0-9]+/admin(/.*)?").unwrap();
        assert!(r.matches("/v2/admin/x") && !r.matches("/api/orders"));
    }

    #[test]
    fn full_match_semantics() {
        let r = Regex::new(r"/v[0-9]+/admin(/.*)?").unwrap();
        assert!(r.matches("/v1/admin"));
        assert!(r.matches("/v12/admin/users"));
        assert!(!r.matches("/v1/administrator"));
        assert!(!r.matches("/x/v1/admin"));
        // Alternation is anchored as a whole, not just its first branch.
        let r = Regex::new("a|b").unwrap();
        assert!(r.matches("b") && !r.matches("ab"));
        let r = Regex::new(r"(?i)get|head").unwrap();
        assert!(r.matches("GET") && r.matches("Head") && !r.matches("POST"));
        // ASCII classes, as in RE2.
        assert!(!Regex::new(r"\w+").unwrap().matches("é"));
    }

    #[test]
    fn refuses_what_re2_refuses() {
        for bad in [
            r"(a)\1",
            r"a(?=b)",
            r"a(?!b)",
            r"(?<=a)b",
            r"(?<!a)b",
            r"(?>a)",
            r"a**",
            r"a++",
            r"a*+",
            r"a?*",
            r"a*?+",
            r"a{2}{3}",
            r"a{2}*",
            r"a{1001}",
            r"a{1,1001}",
            r"a{99999999999}",
            r"a\Z",
            r"(",
            r"a{2,1}",
        ] {
            assert!(Regex::new(bad).is_err(), "{bad} was accepted");
        }
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert!(Regex::new(&long).is_err());
    }

    #[test]
    fn accepts_what_re2_accepts() {
        for good in [
            r"a*?",
            r"a+?b",
            r"a??",
            r"a{2}?",
            r"a{1000}",
            r"a\{,3}",
            r"[*+]+",
            r"[]a]*",
            r"[^]a]+",
            r"[[:alpha:]]+",
            r"\*+",
            r"\{2}{3}",
            r"(?P<v>[0-9]+)",
            r"(?s).",
            r"^/api/.*$",
        ] {
            assert!(Regex::new(good).is_ok(), "{good} was refused");
        }
        assert!(Regex::new(r"a\{,3}").unwrap().matches("a{,3}"));
        // RE2 reads a brace that opens no count as a literal; here it must be escaped (`\{`).
        for literal in [r"a{,3}", r"a{", r"{}", r"x{a}"] {
            assert!(Regex::new(literal).is_err(), "{literal}");
        }
        assert!(Regex::new(r"[*+]+").unwrap().matches("*+*"));
    }

    #[test]
    fn errors_never_echo_the_pattern() {
        let e = Regex::new(r"secret-\pL").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("Unicode"), "{e}");
    }
}
