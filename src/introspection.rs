//! RFC 7662 token introspection: the request the filter sends, and what it makes of the answer.

use crate::config::{split_url, ClientAuth, HttpUri, Introspection};
use crate::json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// The largest introspection answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B).
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The call to make: headers (pseudo-headers first) and the form body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    pub timeout_ms: u64,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Builds the introspection request for `token` (RFC 7662 §2.1).
pub fn request(config: &Introspection, token: &str) -> Option<Call> {
    let mut body = format!("token={}", form_encode(token));
    if let Some(hint) = &config.token_type_hint {
        body.push_str(&format!("&token_type_hint={}", form_encode(hint)));
    }
    client_post(
        &config.endpoint,
        &config.client_id,
        &config.client_secret,
        config.auth,
        body,
    )
}

/// A form POST to `endpoint` as OAuth client `id` (RFC 6749 §2.3.1): with `client_secret_basic`
/// the id and secret are form-urlencoded before base64; with `client_secret_post` they are
/// appended to `body`. `None` if the endpoint's URL is not usable.
pub fn client_post(
    endpoint: &HttpUri,
    id: &str,
    secret: &str,
    auth: ClientAuth,
    mut body: String,
) -> Option<Call> {
    let url = split_url(&endpoint.uri)?;
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), url.path),
        (":authority".to_string(), url.authority),
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept".to_string(), "application/json".to_string()),
    ];
    match auth {
        ClientAuth::Basic => {
            let pair = format!("{}:{}", form_encode(id), form_encode(secret));
            headers.push((
                "authorization".to_string(),
                format!("Basic {}", STANDARD.encode(pair)),
            ));
        }
        ClientAuth::Post => {
            body.push_str(&format!(
                "&client_id={}&client_secret={}",
                form_encode(id),
                form_encode(secret)
            ));
        }
    }
    Some(Call {
        cluster: endpoint.cluster.clone(),
        timeout_ms: endpoint.timeout_ms,
        headers,
        body,
    })
}

/// What an introspection answer says about the token.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `"active": true`, with the other members as the token's claims.
    Active(Map<String, Value>),
    /// Any other JSON object: the token is not usable.
    Inactive,
}

/// Why an answer could not be used at all (the request gets 503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    NoAnswer,
    Status(String),
    TooLarge,
    NotJson,
}

impl Failure {
    pub fn describe(&self) -> String {
        match self {
            Failure::NoAnswer => "no answer (timeout or connection failure)".to_string(),
            Failure::Status(code) => format!("HTTP {code}"),
            Failure::TooLarge => format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
            Failure::NotJson => "the answer is not a JSON object".to_string(),
        }
    }
}

/// Judges an answer: only HTTP 200 with a JSON object is an answer; in it, only `"active": true`
/// as a JSON boolean means active (`"true"` as a string, `1`, or no `active` at all do not).
pub fn parse(status: Option<&str>, body: &[u8]) -> Result<Answer, Failure> {
    match status {
        None => return Err(Failure::NoAnswer),
        Some("200") => {}
        Some(code) => return Err(Failure::Status(code.to_string())),
    }
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(Failure::TooLarge);
    }
    let mut doc = json::parse_object(body).map_err(|_| Failure::NotJson)?;
    if doc.get("active") != Some(&Value::Bool(true)) {
        return Ok(Answer::Inactive);
    }
    doc.remove("active");
    Ok(Answer::Active(doc))
}

/// Until when an answer may be cached (ms): an active token's (`claims`) until the earlier of
/// its `exp` and `cache_duration`, an inactive one's for `negative_cache_duration`. Not after
/// `now`: not cached.
pub fn cache_until(config: &Introspection, claims: Option<&Map<String, Value>>, now: u64) -> u64 {
    match claims {
        Some(claims) => {
            let limit = now.saturating_add(config.cache_duration_ms);
            match claims.get("exp").and_then(Value::as_f64) {
                Some(exp) if exp >= 0.0 => limit.min((exp * 1000.0) as u64),
                Some(_) => now,
                None => limit,
            }
        }
        None => now.saturating_add(config.negative_cache_duration_ms),
    }
}

/// Whether a token looks like a JWT (three segments, the first a JSON object): such tokens are
/// verified locally by a provider that has keys; all others are introspected.
pub fn is_jwt_shaped(token: &str) -> bool {
    crate::jwt::is_jwt_shaped(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(auth: ClientAuth) -> Introspection {
        Introspection {
            endpoint: HttpUri {
                uri: "https://idp.test:8443/oauth/introspect?x=1".into(),
                cluster: "idp".into(),
                timeout_ms: 1500,
            },
            client_id: "gate way".into(),
            client_secret: "s3cr:t/+%".into(),
            auth,
            token_type_hint: Some("access_token".into()),
            cache_duration_ms: 1000,
            negative_cache_duration_ms: 1000,
            cache_entries: 10,
        }
    }

    fn header<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
        call.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_request() {
        let call = request(&config(ClientAuth::Basic), "abc+/=").unwrap();
        assert_eq!(header(&call, ":method"), Some("POST"));
        assert_eq!(header(&call, ":path"), Some("/oauth/introspect?x=1"));
        assert_eq!(header(&call, ":authority"), Some("idp.test:8443"));
        assert_eq!(call.body, "token=abc%2B%2F%3D&token_type_hint=access_token");
        let basic = header(&call, "authorization").unwrap();
        let decoded = STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        // RFC 6749 §2.3.1: form-urlencode id and secret, then base64 "id:secret".
        assert_eq!(decoded, b"gate+way:s3cr%3At%2F%2B%25");
        assert_eq!((call.cluster.as_str(), call.timeout_ms), ("idp", 1500));
    }

    #[test]
    fn post_auth_request() {
        let mut c = config(ClientAuth::Post);
        c.token_type_hint = None;
        let call = request(&c, "tok").unwrap();
        assert_eq!(header(&call, "authorization"), None);
        assert_eq!(
            call.body,
            "token=tok&client_id=gate+way&client_secret=s3cr%3At%2F%2B%25"
        );
    }

    #[test]
    fn answers() {
        let ok = parse(Some("200"), br#"{"active":true,"sub":"a","scope":"x y"}"#).unwrap();
        let Answer::Active(claims) = ok else { panic!() };
        assert_eq!(claims["sub"], "a");
        assert!(!claims.contains_key("active"));
        for inactive in [
            &br#"{"active":false}"#[..],
            br#"{"active":"true"}"#,
            br#"{"active":1}"#,
            br#"{"sub":"a"}"#,
            br#"{"active":null}"#,
        ] {
            assert_eq!(parse(Some("200"), inactive), Ok(Answer::Inactive));
        }
        assert_eq!(parse(None, b""), Err(Failure::NoAnswer));
        assert_eq!(
            parse(Some("500"), br#"{"active":true}"#),
            Err(Failure::Status("500".into()))
        );
        assert_eq!(parse(Some("200"), b"<html>"), Err(Failure::NotJson));
        assert_eq!(parse(Some("200"), b"[true]"), Err(Failure::NotJson));
        assert_eq!(
            parse(Some("200"), br#"{"active":true,"active":false}"#),
            Err(Failure::NotJson)
        );
        let huge = format!(
            "{{\"active\":true,\"x\":\"{}\"}}",
            "a".repeat(MAX_RESPONSE_BYTES)
        );
        assert_eq!(parse(Some("200"), huge.as_bytes()), Err(Failure::TooLarge));
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt_shaped("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
        assert!(!is_jwt_shaped("opaque-token"));
        assert!(!is_jwt_shaped("a.b.c"));
        assert!(!is_jwt_shaped("eyJhbGciOiJIUzI1NiJ9.e30"));
        assert!(!is_jwt_shaped("eyJhbGciOiJIUzI1NiJ9.e30.s.x"));
    }
}
