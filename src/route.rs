//! Which rule a request falls under: the subset of Envoy's `RouteMatch` that `jwt_authn` rules
//! use. A path matcher (`prefix`, `path`, `path_separated_prefix`, `safe_regex`), with
//! `case_sensitive`, and header matchers (`headers`, Envoy's `HeaderMatcher`); methods match
//! through the `:method` pseudo-header. The query string is never part of the path matched.
//!
//! Header matchers and regular expressions cost nothing on rules that do not have them: a rule
//! is a path test, then a loop over its (usually empty) header matchers.

use crate::config::{err, header_name, ConfigError, Obj};
use crate::regex::Regex;
use serde_json::Value;

/// A rule's `match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `case_sensitive` (default true); it does not apply to `safe_regex`.
    pub case_sensitive: bool,
    /// All must match.
    pub headers: Vec<HeaderMatcher>,
}

/// How the path (without its query) is tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    SeparatedPrefix(String),
    /// The whole path must match.
    Regex(Regex),
}

/// One of Envoy's `HeaderMatcher`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcher {
    /// Lower case; pseudo-headers (`:method`, `:authority`) included.
    pub name: String,
    pub test: HeaderTest,
    pub invert: bool,
    /// `treat_missing_header_as_empty`: a missing header is tested as the empty string.
    pub missing_as_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    /// `present_match`: whether the header must be there (true) or absent (false).
    Present(bool),
    Value(StringMatch),
}

/// Envoy's `StringMatcher`: `exact`, `prefix`, `suffix`, `contains` or `safe_regex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch {
    pub kind: StringKind,
    /// ASCII case-insensitive comparison (not for `safe_regex`: use `(?i)`).
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl RouteMatch {
    /// Whether a request with this path (query excluded) and these headers fits.
    pub fn matches(&self, path: &str, headers: &[(&str, &[u8])]) -> bool {
        self.path_matches(path) && self.headers.iter().all(|h| h.matches(headers))
    }

    fn path_matches(&self, path: &str) -> bool {
        let starts = |prefix: &str| match path.get(..prefix.len()) {
            Some(head) if self.case_sensitive => head == prefix,
            Some(head) => head.eq_ignore_ascii_case(prefix),
            None => false,
        };
        match &self.path {
            PathMatch::Prefix(prefix) => starts(prefix),
            PathMatch::Exact(exact) => path.len() == exact.len() && starts(exact),
            PathMatch::SeparatedPrefix(prefix) => {
                starts(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
            PathMatch::Regex(regex) => regex.matches(path),
        }
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &[(&str, &[u8])]) -> bool {
        let mut values = headers.iter().filter(|(n, _)| *n == self.name);
        let first = values.next();
        let found = match &self.test {
            HeaderTest::Present(want) => first.is_some() == *want,
            HeaderTest::Value(test) => match first {
                None if self.missing_as_empty => test.matches(b""),
                // A missing header matches no value test, inverted or not (as in Envoy).
                None => return false,
                Some((_, one)) => match values.next() {
                    None => test.matches(one),
                    // Several values are tested joined by commas, as Envoy does.
                    Some(_) => {
                        let all: Vec<&[u8]> = headers
                            .iter()
                            .filter(|(n, _)| *n == self.name)
                            .map(|(_, v)| *v)
                            .collect();
                        test.matches(&all.join(&b","[..]))
                    }
                },
            },
        };
        found != self.invert
    }
}

impl StringMatch {
    pub fn matches(&self, value: &[u8]) -> bool {
        let same = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.kind {
            StringKind::Exact(s) => same(value, s.as_bytes()),
            StringKind::Prefix(s) => value.get(..s.len()).is_some_and(|h| same(h, s.as_bytes())),
            StringKind::Suffix(s) => value
                .len()
                .checked_sub(s.len())
                .is_some_and(|at| same(&value[at..], s.as_bytes())),
            StringKind::Contains(s) => value.windows(s.len()).any(|w| same(w, s.as_bytes())),
            StringKind::Regex(regex) => regex.matches(&String::from_utf8_lossy(value)),
        }
    }
}

/// A rule's `match` object.
pub(crate) fn parse(m: &Obj<'_>) -> Result<RouteMatch, ConfigError> {
    m.only(&[
        "prefix",
        "path",
        "path_separated_prefix",
        "safe_regex",
        "case_sensitive",
        "headers",
    ])?;
    let given: Vec<&str> = ["prefix", "path", "path_separated_prefix", "safe_regex"]
        .into_iter()
        .filter(|k| m.get(k).is_some())
        .collect();
    let path = match given.as_slice() {
        ["prefix"] => PathMatch::Prefix(slash_path(m, "prefix")?),
        ["path"] => PathMatch::Exact(slash_path(m, "path")?),
        ["path_separated_prefix"] => {
            let prefix = slash_path(m, "path_separated_prefix")?;
            if prefix.ends_with('/') || prefix.contains(['?', '#']) {
                return err(
                    m.field("path_separated_prefix"),
                    "must not end with '/' nor contain '?' or '#'",
                );
            }
            PathMatch::SeparatedPrefix(prefix)
        }
        ["safe_regex"] => PathMatch::Regex(regex_matcher(m, "safe_regex")?),
        _ => {
            return err(
                m.path.clone(),
                "needs exactly one of prefix, path, path_separated_prefix or safe_regex",
            )
        }
    };
    let case_sensitive = m.boolean("case_sensitive", true)?;
    if !case_sensitive && matches!(path, PathMatch::Regex(_)) {
        return err(
            m.field("case_sensitive"),
            "has no effect on safe_regex (Envoy ignores it there): use (?i) in the regex",
        );
    }
    let mut headers = Vec::new();
    for (i, item) in m.array("headers")?.into_iter().flatten().enumerate() {
        headers.push(header_matcher(&Obj::new(
            item,
            format!("{}[{i}]", m.field("headers")),
        )?)?);
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
    })
}

fn slash_path(m: &Obj<'_>, name: &str) -> Result<String, ConfigError> {
    let path = m.required_string(name)?;
    if !path.starts_with('/') {
        return err(m.field(name), "must start with '/'");
    }
    Ok(path.to_string())
}

/// Envoy's `RegexMatcher`: `regex`, and the deprecated `google_re2` (accepted, ignored).
fn regex_matcher(o: &Obj<'_>, name: &str) -> Result<Regex, ConfigError> {
    let Some(r) = o.object(name)? else {
        return err(o.field(name), "is required");
    };
    r.only(&["regex", "google_re2"])?;
    if r.get("google_re2").is_some() {
        r.object("google_re2")?;
    }
    let pattern = r.required_string("regex")?;
    Regex::new(pattern).map_err(|why| ConfigError {
        field: r.field("regex"),
        reason: why,
    })
}

/// The value tests of a `HeaderMatcher`: `string_match`, or Envoy's older one-field forms.
const HEADER_TESTS: [&str; 7] = [
    "string_match",
    "present_match",
    "exact_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "safe_regex_match",
];

fn header_matcher(h: &Obj<'_>) -> Result<HeaderMatcher, ConfigError> {
    let mut known = vec!["name", "invert_match", "treat_missing_header_as_empty"];
    known.extend(HEADER_TESTS);
    h.only(&known)?;
    let name = h.required_string("name")?;
    if let Err(why) = header_name(name.strip_prefix(':').unwrap_or(name)) {
        return err(h.field("name"), why);
    }
    let given: Vec<&str> = HEADER_TESTS
        .into_iter()
        .filter(|k| h.get(k).is_some())
        .collect();
    let test = match given.as_slice() {
        // No test: the header must be present (Envoy's default).
        [] => HeaderTest::Present(true),
        ["present_match"] => HeaderTest::Present(h.boolean("present_match", true)?),
        ["string_match"] => match h.object("string_match")? {
            Some(s) => HeaderTest::Value(string_match(&s)?),
            None => return err(h.field("string_match"), "is required"),
        },
        ["safe_regex_match"] => HeaderTest::Value(StringMatch {
            kind: StringKind::Regex(regex_matcher(h, "safe_regex_match")?),
            ignore_case: false,
        }),
        [one] => HeaderTest::Value(StringMatch {
            kind: literal(h, one)?,
            ignore_case: false,
        }),
        _ => {
            return err(
                h.path.clone(),
                format!("give only one of {}", given.join(", ")),
            )
        }
    };
    Ok(HeaderMatcher {
        name: name.to_ascii_lowercase(),
        test,
        invert: h.boolean("invert_match", false)?,
        missing_as_empty: h.boolean("treat_missing_header_as_empty", false)?,
    })
}

/// Envoy's `StringMatcher` object.
fn string_match(s: &Obj<'_>) -> Result<StringMatch, ConfigError> {
    s.only(&[
        "exact",
        "prefix",
        "suffix",
        "contains",
        "safe_regex",
        "ignore_case",
    ])?;
    let given: Vec<&str> = ["exact", "prefix", "suffix", "contains", "safe_regex"]
        .into_iter()
        .filter(|k| s.get(k).is_some())
        .collect();
    let kind = match given.as_slice() {
        ["safe_regex"] => StringKind::Regex(regex_matcher(s, "safe_regex")?),
        [one] => literal(s, one)?,
        _ => {
            return err(
                s.path.clone(),
                "needs exactly one of exact, prefix, suffix, contains or safe_regex",
            )
        }
    };
    let ignore_case = s.boolean("ignore_case", false)?;
    if ignore_case && matches!(kind, StringKind::Regex(_)) {
        return err(
            s.field("ignore_case"),
            "has no effect on safe_regex: use (?i) in the regex",
        );
    }
    Ok(StringMatch { kind, ignore_case })
}

/// A literal test named `name` (`exact` may be empty; the others may not).
fn literal(o: &Obj<'_>, name: &str) -> Result<StringKind, ConfigError> {
    let text = match o.get(name) {
        Some(Value::String(s)) if !s.is_empty() || name.starts_with("exact") => s.clone(),
        _ => return err(o.field(name), "must be a non-empty string"),
    };
    Ok(match name {
        "exact" | "exact_match" => StringKind::Exact(text),
        "prefix" | "prefix_match" => StringKind::Prefix(text),
        "suffix" | "suffix_match" => StringKind::Suffix(text),
        _ => StringKind::Contains(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(v: Value) -> Result<RouteMatch, String> {
        let o = Obj::new(&v, "match".into()).map_err(|e| e.to_string())?;
        parse(&o).map_err(|e| e.to_string())
    }

    fn fits(m: &RouteMatch, path: &str, headers: &[(&str, &str)]) -> bool {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        m.matches(path, &h)
    }

    #[test]
    fn path_matchers() {
        let m = route(json!({"prefix": "/api"})).unwrap();
        assert!(fits(&m, "/api", &[]) && fits(&m, "/apix", &[]) && !fits(&m, "/API", &[]));
        let m = route(json!({"prefix": "/api", "case_sensitive": false})).unwrap();
        assert!(fits(&m, "/API/x", &[]) && !fits(&m, "/ap", &[]));
        let m = route(json!({"path": "/a"})).unwrap();
        assert!(fits(&m, "/a", &[]) && !fits(&m, "/a/", &[]) && !fits(&m, "/A", &[]));
        let m = route(json!({"path": "/a", "case_sensitive": false})).unwrap();
        assert!(fits(&m, "/A", &[]) && !fits(&m, "/ab", &[]));
        let m = route(json!({"path_separated_prefix": "/api/dev"})).unwrap();
        for (path, expected) in [
            ("/api/dev", true),
            ("/api/dev/", true),
            ("/api/dev/v1", true),
            ("/api/developer", false),
            ("/api/de", false),
            ("/API/dev", false),
        ] {
            assert_eq!(fits(&m, path, &[]), expected, "{path}");
        }
        let m = route(json!({"safe_regex": {"regex": "/v[0-9]+/admin(/.*)?", "google_re2": {}}}))
            .unwrap();
        assert!(fits(&m, "/v2/admin/x", &[]) && !fits(&m, "/v2/administrator", &[]));
        // Multi-byte characters never split a comparison.
        let m = route(json!({"prefix": "/é", "case_sensitive": false})).unwrap();
        assert!(fits(&m, "/é/x", &[]) && !fits(&m, "/\u{e8}", &[]));
    }

    #[test]
    fn header_matchers() {
        let m = route(json!({"prefix": "/", "headers": [
            {"name": ":method", "string_match": {"exact": "GET"}}]}))
        .unwrap();
        assert!(fits(&m, "/", &[(":method", "GET")]));
        assert!(!fits(&m, "/", &[(":method", "POST")]) && !fits(&m, "/", &[]));
        let m = route(json!({"prefix": "/", "headers": [
            {"name": ":method", "string_match": {"exact": "get", "ignore_case": true}, "invert_match": true}]}))
        .unwrap();
        assert!(!fits(&m, "/", &[(":method", "GET")]) && fits(&m, "/", &[(":method", "PUT")]));
        // A missing header fails a value test even inverted, as in Envoy.
        assert!(!fits(&m, "/", &[]));
        let cases = [
            (
                json!({"name": "x-a", "string_match": {"prefix": "ab"}}),
                "abc",
                true,
            ),
            (
                json!({"name": "x-a", "string_match": {"suffix": "bc"}}),
                "abc",
                true,
            ),
            (
                json!({"name": "x-a", "string_match": {"suffix": "abcd"}}),
                "abc",
                false,
            ),
            (
                json!({"name": "x-a", "string_match": {"contains": "B", "ignore_case": true}}),
                "abc",
                true,
            ),
            (
                json!({"name": "x-a", "string_match": {"safe_regex": {"regex": "a.c"}}}),
                "abc",
                true,
            ),
            (
                json!({"name": "x-a", "string_match": {"safe_regex": {"regex": "b"}}}),
                "abc",
                false,
            ),
            (json!({"name": "x-a", "exact_match": "abc"}), "abc", true),
            (
                json!({"name": "x-a", "safe_regex_match": {"regex": "[a-c]+"}}),
                "abc",
                true,
            ),
            (
                json!({"name": "x-a", "string_match": {"exact": ""}}),
                "",
                true,
            ),
        ];
        for (matcher, value, expected) in cases {
            let m = route(json!({"prefix": "/", "headers": [matcher.clone()]})).unwrap();
            assert_eq!(fits(&m, "/", &[("x-a", value)]), expected, "{matcher}");
        }
        let present = route(json!({"prefix": "/", "headers": [{"name": "X-A"}]})).unwrap();
        assert!(fits(&present, "/", &[("x-a", "")]) && !fits(&present, "/", &[]));
        let absent =
            route(json!({"prefix": "/", "headers": [{"name": "x-a", "present_match": false}]}))
                .unwrap();
        assert!(!fits(&absent, "/", &[("x-a", "1")]) && fits(&absent, "/", &[]));
        let empty = route(json!({"prefix": "/", "headers": [
            {"name": "x-a", "string_match": {"exact": ""}, "treat_missing_header_as_empty": true}]}))
        .unwrap();
        assert!(fits(&empty, "/", &[]));
        // Repeated headers are tested joined with commas.
        let joined = route(json!({"prefix": "/", "headers": [
            {"name": "x-a", "string_match": {"exact": "1,2"}}]}))
        .unwrap();
        assert!(fits(&joined, "/", &[("x-a", "1"), ("x-a", "2")]));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                json!({"prefix": "/a", "path": "/b"}),
                "match: needs exactly one of",
            ),
            (json!({}), "match: needs exactly one of"),
            (json!({"prefix": "a"}), "match.prefix: must start with '/'"),
            (
                json!({"path_separated_prefix": "/a/"}),
                "match.path_separated_prefix: must not end",
            ),
            (
                json!({"path_separated_prefix": "/a?b"}),
                "match.path_separated_prefix: must not end",
            ),
            (
                json!({"safe_regex": ".*"}),
                "match.safe_regex: must be a JSON object",
            ),
            (
                json!({"safe_regex": {"regex": "(a)\\1"}}),
                "match.safe_regex.regex: is not a regular",
            ),
            (
                json!({"safe_regex": {"regex": "a**"}}),
                "match.safe_regex.regex: stacks repetition",
            ),
            (
                json!({"safe_regex": {"regex": "a"}, "case_sensitive": false}),
                "match.case_sensitive",
            ),
            (
                json!({"prefix": "/", "query_parameters": []}),
                "match.query_parameters: unknown field",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "bad name"}]}),
                "match.headers[0].name",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "x", "exact_match": "a", "prefix_match": "b"}]}),
                "match.headers[0]: give only one of",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "x", "string_match": {"prefix": ""}}]}),
                "match.headers[0].string_match.prefix: must be a non-empty string",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "x", "string_match": {}}]}),
                "match.headers[0].string_match: needs exactly one of",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "x", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": true}}]}),
                "match.headers[0].string_match.ignore_case",
            ),
            (
                json!({"prefix": "/", "headers": [{"name": "x", "range_match": {}}]}),
                "match.headers[0].range_match: unknown field",
            ),
        ];
        for (m, expected) in cases {
            let e = route(m.clone()).unwrap_err();
            assert!(
                e.starts_with(expected),
                "{m}: {e:?} does not start with {expected:?}"
            );
        }
    }
}
