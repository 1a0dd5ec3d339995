//! Finding the bearer token in a request (RFC 6750 §2).
//!
//! Every value of every configured header is read, not only the first: a request with two
//! `Authorization` headers, or a token in a header and in the query at once, is ambiguous and
//! refused as `invalid_request`, so the filter and the upstream can never disagree on which
//! credential was presented.

use crate::config::Source;

/// The outcome of looking for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// Exactly one token, and where it was found.
    Token { token: String, source: Source },
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

/// What one header value holds for a header source.
enum HeaderValue {
    NotOurs,
    Token(String),
    Invalid(&'static str),
}

fn from_header_value(value: &[u8], prefix: &str) -> HeaderValue {
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
                HeaderValue::Invalid("The request carries more than one credential")
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

fn checked(token: &str) -> HeaderValue {
    if is_b64token(token) {
        HeaderValue::Token(token.to_string())
    } else {
        HeaderValue::Invalid("The bearer token contains characters a bearer token cannot contain")
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
pub fn extract(sources: &[Source], headers: &[(&str, &[u8])], path: &str) -> Extracted {
    let mut found = Found {
        count: 0,
        last: None,
    };
    for source in sources {
        let mut add = |token: String| found.add(token, source);
        let looked = match source {
            Source::Header { name, prefix } => in_headers(name, prefix, headers, &mut add),
            Source::Cookie(cookie) => in_cookies(cookie, headers, &mut add),
            Source::Param(param) => in_query(param, path, &mut add),
        };
        if let Err(why) = looked {
            return Extracted::Invalid(why);
        }
    }
    match (found.count, found.last) {
        (1, Some((token, source))) => Extracted::Token {
            token,
            source: source.clone(),
        },
        (0, _) | (_, None) => Extracted::Missing,
        _ => Extracted::Invalid("The request carries more than one token"),
    }
}

/// The tokens seen so far: how many, and the last with the source it came from.
struct Found<'s> {
    count: usize,
    last: Option<(String, &'s Source)>,
}

impl<'s> Found<'s> {
    fn add(&mut self, token: String, source: &'s Source) {
        self.count += 1;
        self.last = Some((token, source));
    }
}

const NOT_B64TOKEN: &str = "The bearer token contains characters a bearer token cannot contain";

fn in_headers(
    name: &str,
    prefix: &str,
    headers: &[(&str, &[u8])],
    add: &mut dyn FnMut(String),
) -> Result<(), &'static str> {
    let mut values = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    if name == "authorization" && values.clone().nth(1).is_some() {
        return Err("The request has more than one Authorization header");
    }
    for (_, value) in values.by_ref() {
        match from_header_value(value, prefix) {
            HeaderValue::NotOurs => {}
            HeaderValue::Invalid(why) => return Err(why),
            HeaderValue::Token(token) => add(token),
        }
    }
    Ok(())
}

fn in_cookies(
    cookie: &str,
    headers: &[(&str, &[u8])],
    add: &mut dyn FnMut(String),
) -> Result<(), &'static str> {
    for pair in cookie_pairs(headers) {
        let (name, value) = pair.ok_or("The cookies are not valid text")?;
        if name != cookie || value.is_empty() {
            continue;
        }
        if !is_b64token(value) {
            return Err(NOT_B64TOKEN);
        }
        add(value.to_string());
    }
    Ok(())
}

fn in_query(param: &str, path: &str, add: &mut dyn FnMut(String)) -> Result<(), &'static str> {
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
        add(token);
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

    fn token(t: &str, s: &Source) -> Extracted {
        Extracted::Token {
            token: t.into(),
            source: s.clone(),
        }
    }

    #[test]
    fn authorization_header_shapes() {
        let s = bearer();
        let one = |v: &str| extract(&s, &h(&[("authorization", v)]), "/");
        assert_eq!(one("Bearer abc.def-_~+/=="), token("abc.def-_~+/==", &s[0]));
        assert_eq!(one("bearer abc"), token("abc", &s[0]));
        assert_eq!(one("BEARER   abc"), token("abc", &s[0]));
        assert_eq!(one("Basic dXNlcjpwYXNz"), Extracted::Missing);
        assert_eq!(one("Bearerabc"), Extracted::Missing);
        assert!(matches!(one("Bearer"), Extracted::Invalid(_)));
        assert!(matches!(one("Bearer "), Extracted::Invalid(_)));
        assert!(matches!(one("Bearer\tabc"), Extracted::Invalid(_)));
        assert!(matches!(one("Bearer a b"), Extracted::Invalid(_)));
        assert!(matches!(one("Bearer a,b"), Extracted::Invalid(_)));
        // Repeated headers joined by a proxy.
        assert!(matches!(
            one("Basic eA==,Bearer abc"),
            Extracted::Invalid(_)
        ));
        assert!(matches!(
            one("Bearer abc, bearer abc"),
            Extracted::Invalid(_)
        ));
        assert_eq!(
            one("Digest username=\"a\", realm=\"b\""),
            Extracted::Missing
        );
        assert!(matches!(one("Bearer ===="), Extracted::Invalid(_)));
        assert!(matches!(one("Bearer a=b"), Extracted::Invalid(_)));
        assert_eq!(extract(&s, &h(&[]), "/"), Extracted::Missing);
        let bad_utf8 = vec![("authorization", &b"Bearer \xff"[..])];
        assert!(matches!(extract(&s, &bad_utf8, "/"), Extracted::Invalid(_)));
    }

    #[test]
    fn two_credentials_are_invalid_request() {
        let s = both();
        let two = h(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(extract(&s, &two, "/"), Extracted::Invalid(_)));
        let mixed = h(&[("authorization", "Basic x"), ("authorization", "Bearer b")]);
        assert!(matches!(extract(&s, &mixed, "/"), Extracted::Invalid(_)));
        let header_and_query = h(&[("authorization", "Bearer a")]);
        assert!(matches!(
            extract(&s, &header_and_query, "/x?access_token=b"),
            Extracted::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a&access_token=a"),
            Extracted::Invalid(_)
        ));
    }

    #[test]
    fn query_parameter() {
        let s = both();
        assert_eq!(
            extract(&s, &[], "/x?a=1&access_token=abc.d%2De&b"),
            token("abc.d-e", &s[1])
        );
        assert_eq!(extract(&s, &[], "/x?access_tokenx=abc"), Extracted::Missing);
        assert!(matches!(
            extract(&s, &[], "/x?access_token="),
            Extracted::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a%2"),
            Extracted::Invalid(_)
        ));
        assert!(matches!(
            extract(&s, &[], "/x?access_token=a+b"),
            Extracted::Invalid(_)
        ));
        // Without from_params the query is never read.
        assert_eq!(
            extract(&bearer(), &[], "/x?access_token=abc"),
            Extracted::Missing
        );
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
            Extracted::Invalid(_)
        ));
    }

    #[test]
    fn cookies() {
        let s = vec![Source::Cookie("session".into())];
        let one = |v: &str| extract(&s, &h(&[("cookie", v)]), "/");
        assert_eq!(one("session=abc"), token("abc", &s[0]));
        assert_eq!(one("a=1; session=abc; b=2"), token("abc", &s[0]));
        assert_eq!(one("a=1;session=\"abc\""), token("abc", &s[0]));
        assert_eq!(one("sessionx=abc; xsession=abc"), Extracted::Missing);
        assert_eq!(one("session="), Extracted::Missing);
        assert_eq!(one("session"), Extracted::Missing);
        assert!(matches!(one("session=a b"), Extracted::Invalid(_)));
        assert!(matches!(one("session=a; session=a"), Extracted::Invalid(_)));
        // HTTP/2 may send each cookie in a header of its own.
        let two = h(&[("cookie", "session=a"), ("cookie", "session=b")]);
        assert!(matches!(extract(&s, &two, "/"), Extracted::Invalid(_)));
        let split = h(&[("cookie", "a=1"), ("cookie", "session=b")]);
        assert_eq!(extract(&s, &split, "/"), token("b", &s[0]));
        let bad_utf8 = vec![("cookie", &b"session=\xff"[..])];
        assert!(matches!(extract(&s, &bad_utf8, "/"), Extracted::Invalid(_)));
        // Many cookies by that name, however many: one clear refusal.
        let many = vec!["session=x"; 500].join("; ");
        assert!(matches!(one(&many), Extracted::Invalid(_)));
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
