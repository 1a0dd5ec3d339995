//! RFC 7662 token introspection: the request the filter sends, and what it makes of the answer.

use crate::cache::Key;
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

/// One provider's introspection answers as a shell keeps them: its cache (and, in Wasm, the
/// slots the VMs share), its counters, its log throttle. What becomes of an answer
/// ([`settle`], [`failed`]) is written once, here.
pub trait Keeping {
    /// The shell's form of a cached answer (claims, or `None` for an inactive token).
    type Cached: Clone + From<Option<Map<String, Value>>>;
    /// The provider's name and settings.
    fn provider(&self) -> (&str, &Introspection);
    /// Caches `answer` for `key` until `until`; how many older answers it evicted.
    fn keep(&mut self, key: &Key, answer: &Self::Cached, until: u64, now: u64) -> usize;
    fn count(&mut self, counted: Counted);
    /// Whether a failure line may be logged now (see [`crate::throttle`]): how many were held.
    fn admit_log(&mut self, now: u64) -> Option<u64>;
}

/// The bytes a cached answer is counted as against a cache's budget: its claims, or a small
/// fixed size for an inactive token.
pub fn answer_size(claims: Option<&Map<String, Value>>) -> usize {
    claims.map_or(64, crate::cache::json_size)
}

/// What a shell counts of introspection calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Failure,
    Evicted(usize),
    /// How long a call took (ms).
    Latency(u64),
}

/// A call for `key` (asked for at `started`) came back with `result`: its answer cached for as
/// long as [`cache_until`] says and handed to the waiters; `None` when it failed.
pub fn settle<H: Keeping>(
    host: &mut H,
    key: &Key,
    result: Result<Answer, String>,
    started: u64,
    now: u64,
) -> Option<H::Cached> {
    host.count(Counted::Latency(now.saturating_sub(started)));
    let claims = match result {
        Ok(Answer::Active(claims)) => Some(claims),
        Ok(Answer::Inactive) => None,
        Err(why) => {
            failed(host, &why, now);
            return None;
        }
    };
    let until = cache_until(host.provider().1, claims.as_ref(), now);
    let cached = H::Cached::from(claims);
    if until > now {
        let evicted = host.keep(key, &cached, until, now);
        host.count(Counted::Evicted(evicted));
    }
    Some(cached)
}

/// A call failed (or could not be made): counted, and logged at most once per window.
pub fn failed(host: &mut impl Keeping, why: &str, now: u64) {
    host.count(Counted::Failure);
    if let Some(held) = host.admit_log(now) {
        log::warn!(
            "oauth-filter: provider {}: introspection failed: {why}{}",
            host.provider().0,
            crate::throttle::held_note(held)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that caches in a list and notes what it counted.
    struct FakeKeep {
        config: Introspection,
        kept: Vec<(Key, Option<usize>, u64)>,
        counted: Vec<Counted>,
        logs: u32,
    }

    impl Keeping for FakeKeep {
        type Cached = Option<Map<String, Value>>;
        fn provider(&self) -> (&str, &Introspection) {
            ("idp", &self.config)
        }
        fn keep(&mut self, key: &Key, answer: &Self::Cached, until: u64, _now: u64) -> usize {
            let answer = answer.as_ref().map(Map::len);
            self.kept.push((*key, answer, until));
            self.kept.len() - 1
        }
        fn count(&mut self, counted: Counted) {
            self.counted.push(counted);
        }
        fn admit_log(&mut self, _now: u64) -> Option<u64> {
            self.logs += 1;
            (self.logs == 1).then_some(0)
        }
    }

    #[test]
    fn answers_are_cached_for_as_long_as_they_may_be_and_failures_counted() {
        let mut host = FakeKeep {
            config: config(ClientAuth::Basic),
            kept: Vec::new(),
            counted: Vec::new(),
            logs: 0,
        };
        let mut settled = |key: u8, result: Result<Answer, String>, started: u64, now: u64| {
            let answer = settle(&mut host, &[key; 32], result, started, now);
            answer.map(|claims| claims.map(|c| c.len()))
        };
        let active = parse(Some("200"), br#"{"active": true, "sub": "a"}"#).unwrap();
        assert_eq!(settled(1, Ok(active), 100, 150), Some(Some(1)));
        let expired = parse(Some("200"), br#"{"active": true, "exp": 0}"#).unwrap();
        assert_eq!(settled(2, Ok(expired), 150, 160), Some(Some(1)));
        assert_eq!(settled(3, Ok(Answer::Inactive), 160, 170), Some(None));
        assert_eq!(settled(4, Err("HTTP 500".into()), 170, 200), None);
        failed(&mut host, "cannot call cluster idp", 210);
        assert_eq!(host.kept, [([1; 32], Some(1), 1150), ([3; 32], None, 1170)]);
        use Counted::*;
        let counted = [
            Latency(50),
            Evicted(0),
            Latency(10),
            Latency(10),
            Evicted(1),
        ];
        assert_eq!(host.counted[..5], counted);
        assert_eq!(host.counted[5..], [Latency(30), Failure, Failure]);
        assert_eq!(host.logs, 2);
    }

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
