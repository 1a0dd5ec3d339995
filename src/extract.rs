//! Finding the bearer token in a request (RFC 6750 §2).
//!
//! Every value of every configured header is read, not only the first: a request with two
//! `Authorization` headers, or a token in a header and in the query at once, is ambiguous and
//! refused as `invalid_request`, so the filter and the upstream can never disagree on which
//! credential was presented.
//!
//! A token after `Bearer ` is taken as it stands; whether its characters are a `b64token` and
//! whether the value holds one credential only (no comma) is checked by [`well_formed`] when
//! the token is not already known: a token found in the verified-token cache passed that check
//! when it was verified, and a cache hit then reads none of its bytes but the hash's.

use crate::config::Source;
use std::borrow::Cow;

/// The outcome of looking for a token.
/// Borrowed from the request and the configuration where it can be: this runs for every
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// Exactly one token, and where it was found; `unchecked`: its characters are yet to be
    /// checked with [`well_formed`] (the answer [`Extracted::settled`] gives).
    Token {
        token: Cow<'a, str>,
        source: &'a Source,
        unchecked: bool,
    },
    /// No credential for this provider at all (also a header with another auth scheme, such as
    /// `Basic`): the challenge carries no error code (RFC 6750 §3.1).
    Missing,
    /// A malformed or ambiguous credential: `invalid_request`, with a fixed description.
    Invalid(&'static str),
}

/// The bytes of RFC 6750's `b64token` before its trailing `=`s, as a table: this check runs
/// over every byte of every token, on every request.
const B64TOKEN: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let ok = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        table[b] = ok as u8;
        b += 1;
    }
    table
};

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // No early exit: a branch-free loop the compiler can unroll (tokens are mostly valid).
    !body.is_empty() && body.bytes().fold(1, |ok, b| ok & B64TOKEN[usize::from(b)]) == 1
}

impl<'a> Extracted<'a> {
    /// The outcome with the deferred check done: an unchecked token that is not well formed
    /// is [`Extracted::Invalid`].
    pub fn settled(self) -> Extracted<'a> {
        match self {
            Extracted::Token {
                token,
                source,
                unchecked: true,
            } => match well_formed(&token) {
                Ok(()) => Extracted::Token {
                    token,
                    source,
                    unchecked: false,
                },
                Err(why) => Extracted::Invalid(why),
            },
            other => other,
        }
    }
}

/// The check a token taken after `Bearer ` waits for: what the value holds after the scheme
/// and its spaces is one `b64token`, and the value has no comma (proxies join repeated headers
/// with commas: such a value is two credentials).
pub fn well_formed(token: &str) -> Result<(), &'static str> {
    if token.contains(',') {
        Err(ONE_CREDENTIAL)
    } else if is_b64token(token) {
        Ok(())
    } else {
        Err(NOT_B64TOKEN)
    }
}

/// The description of the 400 for a request with several credentials where one is allowed.
pub const ONE_CREDENTIAL: &str = "The request carries more than one credential";

/// What one header value holds for a header source.
enum HeaderValue<'a> {
    NotOurs,
    /// A token whose characters were checked (`false`) or are to be checked with
    /// [`well_formed`] (`true`).
    Token(Cow<'a, str>, bool),
    Invalid(&'static str),
}

/// The token of a value that starts with the scheme of `prefix` and a space, with its
/// characters unchecked (`None`: any other shape, for [`from_header_value`]'s full reading).
fn after_scheme<'a>(value: &'a [u8], prefix: &str) -> Option<&'a str> {
    let scheme = prefix.strip_suffix(' ')?;
    let head = value.get(..=scheme.len())?;
    if !(head.ends_with(b" ") && head[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())) {
        return None;
    }
    let rest = &value[scheme.len()..];
    let token = &rest[rest.iter().position(|&b| b != b' ')?..];
    std::str::from_utf8(token).ok()
}

fn from_header_value<'a>(value: &'a [u8], prefix: &str) -> HeaderValue<'a> {
    if let Some(token) = after_scheme(value, prefix) {
        return HeaderValue::Token(Cow::Borrowed(token), true);
    }
    let Ok(value) = std::str::from_utf8(value) else {
        return HeaderValue::Invalid("The credentials are not valid text");
    };
    let scheme = prefix.trim_end_matches(' ');
    let is_scheme = scheme.len() < prefix.len();
    if is_scheme {
        // Proxies (Envoy among them) join repeated headers with commas, and no credential of
        // this kind contains one: a joined value holding our scheme is two credentials. Values
        // of other schemes with commas (Digest's parameters) are simply not ours.
        if value.contains(',') {
            let ours = value
                .split(',')
                .any(|piece| starts_scheme(piece.trim_start_matches([' ', '\t']), scheme));
            return if ours {
                HeaderValue::Invalid(ONE_CREDENTIAL)
            } else {
                HeaderValue::NotOurs
            };
        }
        // `Bearer <token>`: the scheme is case-insensitive; one or more spaces follow it.
        let head = value.get(..scheme.len());
        if !head.is_some_and(|h| h.eq_ignore_ascii_case(scheme)) {
            return HeaderValue::NotOurs;
        }
        let rest = &value[scheme.len()..];
        if rest.is_empty() {
            return HeaderValue::Invalid("The authorization scheme is given without a token");
        }
        if !rest.starts_with(' ') {
            // `Bearerx…` is another scheme; `Bearer\t…` is a malformed one.
            return if rest.as_bytes()[0].is_ascii_alphanumeric() || rest.starts_with('-') {
                HeaderValue::NotOurs
            } else {
                HeaderValue::Invalid("The authorization header is malformed")
            };
        }
        let token = rest.trim_start_matches(' ');
        if token.is_empty() {
            return HeaderValue::Invalid("The authorization scheme is given without a token");
        }
        checked(token)
    } else {
        let head = value.get(..prefix.len());
        if !head.is_some_and(|h| h.eq_ignore_ascii_case(prefix)) {
            return HeaderValue::NotOurs;
        }
        let token = &value[prefix.len()..];
        if token.is_empty() {
            return HeaderValue::Invalid("The token header is empty");
        }
        checked(token)
    }
}

/// Whether `text` is `scheme` alone or `scheme` followed by whitespace (case-insensitive).
fn starts_scheme(text: &str, scheme: &str) -> bool {
    text.get(..scheme.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
        && matches!(text.as_bytes().get(scheme.len()), None | Some(b' ' | b'\t'))
}

fn checked(token: &str) -> HeaderValue<'_> {
    if is_b64token(token) {
        HeaderValue::Token(Cow::Borrowed(token), false)
    } else {
        HeaderValue::Invalid(NOT_B64TOKEN)
    }
}

/// Splits the query of a `:path` into raw `(name, value)` pairs.
pub fn query_pairs(path: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Decodes `application/x-www-form-urlencoded` text; `None` if it is not valid.
pub fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Exactly two hex digits (from_str_radix alone would take "+f").
                let digit = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
                let (high, low) = (digit(i + 1)?, digit(i + 2)?);
                out.push(u8::try_from(high * 16 + low).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Looks for the token of a provider with `sources` in the request's headers (lower-case names,
/// every value) and its `:path`.
pub fn extract<'a>(
    sources: &'a [Source],
    headers: &'a [(&'a str, &'a [u8])],
    path: &'a str,
) -> Extracted<'a> {
    let mut found = Found {
        count: 0,
        last: None,
    };
    for source in sources {
        let mut add = |token: Cow<'a, str>, unchecked: bool| found.add(token, unchecked, source);
        let looked = match source {
            Source::Header { name, prefix } => in_headers(name, prefix, headers, &mut add),
            Source::Cookie(cookie) => in_cookies(cookie, headers, &mut add),
            Source::Param(param) => in_query(param, path, &mut add),
        };
        if let Err(why) = looked {
            // A malformed token found before the reason of this refusal is the one refused.
            return Extracted::Invalid(found.settle().err().unwrap_or(why));
        }
    }
    match (found.count, found.last) {
        (1, Some((token, unchecked, source))) => Extracted::Token {
            token,
            source,
            unchecked,
        },
        (0, _) | (_, None) => Extracted::Missing,
        _ => Extracted::Invalid("The request carries more than one token"),
    }
}

/// The tokens seen so far: how many, and the last, unchecked or not, with its source.
struct Found<'a> {
    count: usize,
    last: Option<(Cow<'a, str>, bool, &'a Source)>,
}

impl<'a> Found<'a> {
    /// Takes a token in; from the second on, every token is checked at once, in the order
    /// found, so that the first malformed one is refused, as it would be alone.
    fn add(
        &mut self,
        token: Cow<'a, str>,
        unchecked: bool,
        source: &'a Source,
    ) -> Result<(), &'static str> {
        if self.count > 0 {
            self.settle()?;
            if unchecked {
                well_formed(&token)?;
            }
        }
        self.count += 1;
        self.last = Some((token, unchecked && self.count == 1, source));
        Ok(())
    }

    /// Checks the last token if it was not checked yet.
    fn settle(&mut self) -> Result<(), &'static str> {
        if let Some((token, unchecked @ true, _)) = &mut self.last {
            well_formed(token)?;
            *unchecked = false;
        }
        Ok(())
    }
}

const NOT_B64TOKEN: &str = "The bearer token contains characters a bearer token cannot contain";

fn in_headers<'a>(
    name: &str,
    prefix: &str,
    headers: &'a [(&'a str, &'a [u8])],
    add: &mut dyn FnMut(Cow<'a, str>, bool) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    // One pass over the headers (this runs for every source of every request).
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value);
    let (first, second) = (values.next(), values.next());
    if name == "authorization" && second.is_some() {
        return Err("The request has more than one Authorization header");
    }
    for value in first.into_iter().chain(second).chain(values) {
        match from_header_value(value, prefix) {
            HeaderValue::NotOurs => {}
            HeaderValue::Invalid(why) => return Err(why),
            HeaderValue::Token(token, unchecked) => add(token, unchecked)?,
        }
    }
    Ok(())
}

fn in_cookies<'a>(
    cookie: &str,
    headers: &'a [(&'a str, &'a [u8])],
    add: &mut dyn FnMut(Cow<'a, str>, bool) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    for pair in cookie_pairs(headers) {
        let (name, value) = pair.ok_or("The cookies are not valid text")?;
        if name != cookie || value.is_empty() {
            continue;
        }
        if !is_b64token(value) {
            return Err(NOT_B64TOKEN);
        }
        add(Cow::Borrowed(value), false)?;
    }
    Ok(())
}

fn in_query<'a>(
    param: &str,
    path: &'a str,
    add: &mut dyn FnMut(Cow<'a, str>, bool) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    for (name, value) in query_pairs(path) {
        if form_decode(name).as_deref() != Some(param) {
            continue;
        }
        let token = form_decode(value).ok_or("The token parameter is not valid URL encoding")?;
        if token.is_empty() {
            return Err("The token parameter is empty");
        }
        if !is_b64token(&token) {
            return Err(NOT_B64TOKEN);
        }
        add(Cow::Owned(token), false)?;
    }
    Ok(())
}

/// The `name=value` pairs of every `Cookie` header (RFC 6265 §5.4: `; `-separated; a value may
/// be quoted). `None` for a header that is not text. An empty value is no token.
fn cookie_pairs<'a>(
    headers: &'a [(&'a str, &'a [u8])],
) -> impl Iterator<Item = Option<(&'a str, &'a str)>> + 'a {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, value)| {
            let text = std::str::from_utf8(value);
            let not_text = text.is_err().then_some(None);
            text.unwrap_or("")
                .split(';')
                .map(|piece| Some(cookie_pair(piece)))
                .chain(not_text)
        })
}

fn cookie_pair(piece: &str) -> (&str, &str) {
    const SPACE: [char; 2] = [' ', '\t'];
    let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
    let value = value.trim_matches(SPACE);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (name.trim_matches(SPACE), value)
}

/// The `Cookie` header without the cookies `names` (every value of the header joined, as one
/// header), or `None` when no other cookie remains.
pub fn without_cookies(headers: &[(&str, &[u8])], names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|text| text.split(';'))
        .map(|piece| piece.trim_matches([' ', '\t']))
        .filter(|piece| !piece.is_empty() && !names.contains(&cookie_pair(piece).0))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The `:path` with every occurrence of query parameter `param` removed.
pub fn strip_param(path: &str, param: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && form_decode(name).as_deref() != Some(param)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer() -> Vec<Source> {
        vec![Source::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }]
    }

    fn both() -> Vec<Source> {
        let mut s = bearer();
        s.push(Source::Param("access_token".into()));
        s
    }

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    /// What extraction found, owned (the tests' closures build their headers anew).
    #[derive(Debug, PartialEq)]
    enum Got {
        Token(String, Source, bool),
        Missing,
        Invalid(&'static str),
    }

    fn got(e: Extracted<'_>) -> Got {
        match e {
            Extracted::Token {
                token,
                source,
                unchecked,
            } => Got::Token(token.into_owned(), source.clone(), unchecked),
            Extracted::Missing => Got::Missing,
            Extracted::Invalid(why) => Got::Invalid(why),
        }
    }

    fn token(t: &str, s: &Source) -> Got {
        Got::Token(t.into(), s.clone(), false)
    }

    /// What extraction answers once the deferred check is done.
    fn extract(sources: &[Source], headers: &[(&str, &[u8])], path: &str) -> Got {
        got(super::extract(sources, headers, path).settled())
    }

    /// What extraction answers before it.
    fn raw(sources: &[Source], headers: &[(&str, &[u8])], path: &str) -> Got {
        got(super::extract(sources, headers, path))
    }

    #[test]
    fn authorization_header_shapes() {
        let s = bearer();
        let one = |v: &str| extract(&s, &h(&[("authorization", v)]), "/");
        assert_eq!(one("Bearer abc.def-_~+/=="), token("abc.def-_~+/==", &s[0]));
        assert_eq!(one("bearer abc"), token("abc", &s[0]));
        assert_eq!(one("BEARER   abc"), token("abc", &s[0]));
        assert_eq!(one("Basic dXNlcjpwYXNz"), Got::Missing);
        assert_eq!(one("Bearerabc"), Got::Missing);
        assert!(matches!(one("Bearer"), Got::Invalid(_)));
        assert!(matches!(one("Bearer "), Got::Invalid(_)));
        assert!(matches!(one("Bearer\tabc"), Got::Invalid(_)));
        assert!(matches!(one("Bearer a b"), Got::Invalid(_)));
        assert!(matches!(one("Bearer a,b"), Got::Invalid(_)));
        // Repeated headers joined by a proxy.
        assert!(matches!(one("Basic eA==,Bearer abc"), Got::Invalid(_)));
        assert!(matches!(one("Bearer abc, bearer abc"), Got::Invalid(_)));
        assert_eq!(one("Digest username=\"a\", realm=\"b\""), Got::Missing);
        assert!(matches!(one("Bearer ===="), Got::Invalid(_)));
        assert!(matches!(one("Bearer a=b"), Got::Invalid(_)));
        assert_eq!(extract(&s, &h(&[]), "/"), Got::Missing);
        let bad_utf8 = vec![("authorization", &b"Bearer \xff"[..])];
        assert!(matches!(extract(&s, &bad_utf8, "/"), Got::Invalid(_)));
    }

    #[test]
    fn bearer_tokens_are_checked_when_settled_with_the_same_answers() {
        let s = bearer();
        let unsettled = |v: &str| raw(&s, &h(&[("authorization", v)]), "/");
        let settled = |v: &str| extract(&s, &h(&[("authorization", v)]), "/");
        let unchecked = |t: &str| Got::Token(t.into(), s[0].clone(), true);
        assert_eq!(unsettled("Bearer a,b"), unchecked("a,b"));
        assert_eq!(unsettled("bearer  a b"), unchecked("a b"));
        for (value, why) in [
            ("Bearer a,b", ONE_CREDENTIAL),
            ("Bearer ,", ONE_CREDENTIAL),
            ("Bearer abc, Basic eA==", ONE_CREDENTIAL),
            ("Bearer a b", NOT_B64TOKEN),
            ("Bearer \tabc", NOT_B64TOKEN),
            ("Bearer ====", NOT_B64TOKEN),
            (
                "Bearer    ",
                "The authorization scheme is given without a token",
            ),
            ("Bearer, x", ONE_CREDENTIAL),
            ("Bearer\tabc", "The authorization header is malformed"),
        ] {
            assert_eq!(settled(value), Got::Invalid(why), "{value}");
        }
        let bad_utf8 = vec![("authorization", &b"Bearer a\xff"[..])];
        assert_eq!(
            raw(&s, &bad_utf8, "/"),
            Got::Invalid("The credentials are not valid text")
        );
        // With two sources, the first malformed token is refused, before the count.
        let s = both();
        let first_bad = h(&[("authorization", "Bearer a b")]);
        assert_eq!(
            raw(&s, &first_bad, "/x?access_token=b"),
            Got::Invalid(NOT_B64TOKEN)
        );
        assert_eq!(
            raw(&s, &first_bad, "/x?access_token=%zz"),
            Got::Invalid(NOT_B64TOKEN)
        );
        let fine = h(&[("authorization", "Bearer a")]);
        assert_eq!(
            raw(&s, &fine, "/x?access_token=b"),
            Got::Invalid("The request carries more than one token")
        );
    }

    #[test]
    fn two_credentials_are_invalid_request() {
        let s = both();
        let two = h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(extract(&s, &two, "/"), Got::Invalid(_)));
        let mixed = h(&[("authorization", "Basic x"), ("authorization", "Bearer b")]);
        assert!(matches!(extract(&s, &mixed, "/"), Got::Invalid(_)));
        let header_and_query = h(&[("authorization", "Bearer a")]);
        assert!(matches!(
            extract(&s, &header_and_query, "/x?access_token=b"),
            Got::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a&access_token=a"),
            Got::Invalid(_)
        ));
    }

    #[test]
    fn query_parameter() {
        let s = both();
        assert_eq!(
            extract(&s, &[], "/x?a=1&access_token=abc.d%2De&b"),
            token("abc.d-e", &s[1])
        );
        assert_eq!(extract(&s, &[], "/x?access_tokenx=abc"), Got::Missing);
        assert!(matches!(
            extract(&s, &[], "/x?access_token="),
            Got::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a%2"),
            Got::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a+b"),
            Got::Invalid(_)
        ));
        // Without from_params the query is never read.
        assert_eq!(extract(&bearer(), &[], "/x?access_token=abc"), Got::Missing);
    }

    #[test]
    fn custom_header_without_prefix() {
        let s = vec![Source::Header {
            name: "x-jwt".into(),
            prefix: String::new(),
        }];
        assert_eq!(
            extract(&s, &h(&[("x-jwt", "abc")]), "/"),
            token("abc", &s[0])
        );
        assert!(matches!(
            extract(&s, &h(&[("x-jwt", "a"), ("x-jwt", "b")]), "/"),
            Got::Invalid(_)
        ));
    }

    #[test]
    fn cookies() {
        let s = vec![Source::Cookie("session".into())];
        let one = |v: &str| extract(&s, &h(&[("cookie", v)]), "/");
        assert_eq!(one("session=abc"), token("abc", &s[0]));
        assert_eq!(one("a=1; session=abc; b=2"), token("abc", &s[0]));
        assert_eq!(one("a=1;session=\"abc\""), token("abc", &s[0]));
        assert_eq!(one("sessionx=abc; xsession=abc"), Got::Missing);
        assert_eq!(one("session="), Got::Missing);
        assert_eq!(one("session"), Got::Missing);
        assert!(matches!(one("session=a b"), Got::Invalid(_)));
        assert!(matches!(one("session=a; session=a"), Got::Invalid(_)));
        // HTTP/2 may send each cookie in a header of its own.
        let two = h(&[("cookie", "session=a"), ("cookie", "session=b")]);
        assert!(matches!(extract(&s, &two, "/"), Got::Invalid(_)));
        let split = h(&[("cookie", "a=1"), ("cookie", "session=b")]);
        assert_eq!(extract(&s, &split, "/"), token("b", &s[0]));
        let bad_utf8 = vec![("cookie", &b"session=\xff"[..])];
        assert!(matches!(extract(&s, &bad_utf8, "/"), Got::Invalid(_)));
        // Many cookies by that name, however many: one clear refusal.
        let many = vec!["session=x"; 500].join("; ");
        assert!(matches!(one(&many), Got::Invalid(_)));
        assert_eq!(
            without_cookies(
                &h(&[("cookie", "a=1; session=x"), ("cookie", "b=2")]),
                &["session"]
            ),
            Some("a=1; b=2".to_string())
        );
        assert_eq!(
            without_cookies(&h(&[("cookie", "session=x")]), &["session"]),
            None
        );
    }

    #[test]
    fn strips_only_the_token_parameter() {
        assert_eq!(strip_param("/a?access_token=x", "access_token"), "/a");
        assert_eq!(
            strip_param("/a?b=1&access_token=x&c=2", "access_token"),
            "/a?b=1&c=2"
        );
        assert_eq!(strip_param("/a", "access_token"), "/a");
        assert_eq!(strip_param("/a?access%5Ftoken=x&d", "access_token"), "/a?d");
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%+f"), None);
        assert_eq!(form_decode("%-1"), None);
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%4A%4a").as_deref(), Some("JJ"));
        assert_eq!(form_decode("%ff"), None);
    }
}
