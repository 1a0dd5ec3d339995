//! The bodies of the fuzz targets: one function per target, taking the raw fuzzer input.
//!
//! The libFuzzer binaries in `fuzz_targets/` only call these, and `tests/fuzz_regressions.rs`
//! includes this very file (`#[path]`) to replay the seeds and every saved crash under plain
//! `cargo test`, so a crash found once is replayed through exactly the code that found it.
//!
//! The filter must never panic, whatever the input; the only panics here are `assert!`s of
//! properties the filter promises (a token it returns is a `b64token`, an allowed request loses
//! the headers the filter owns, a challenge is a valid header value, ...). Every decision uses
//! the fixed time [`NOW`], so a run is repeatable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use oauth_filter::authenticate;
use oauth_filter::cache;
use oauth_filter::challenge::DenyReason;
use oauth_filter::claims;
use oauth_filter::config::{self, Config, KeySource, Source};
use oauth_filter::decision::{
    self, Cached, Decision, KeysNow, Known, LocalKeys, Passed, Request, MAX_VERIFIED_CACHE_MS,
};
use oauth_filter::dpop;
use oauth_filter::extract::{self, Extracted};
use oauth_filter::headers;
use oauth_filter::identity;
use oauth_filter::introspection::{self, Answer, Failure};
use oauth_filter::jwt::keys::{self, Alg, Jwk, KeyMaterial, KeySet};
use oauth_filter::jwt::{self, host, verify};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Map, Value};
use sha2::{Sha256, Sha384, Sha512};
use std::sync::OnceLock;

/// The time of every decision (2023-11-14); the seed tokens expire in 2100.
pub const NOW: u64 = 1_700_000_000;

/// The fixed key set of the `jwt` target (and of the fixed requests of the others): an RSA-2048
/// key `rsa-1`, an EC P-256 key `ec-1` and the HMAC key [`HMAC_KEY`] as `hmac-1`. The private
/// RSA and EC keys signed the seed tokens in `corpus/jwt/` and are not kept; the HMAC key signs
/// tokens at run time (see [`jwt`]).
pub const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-1","use":"sig","n":"0QLNw2Ap2oHbDj_9b-DwJGIycHeyUXpxraRLkdE8cJ41mg3Y0Qeymv-KaUyEqZFq6mLoENaBNYqoDE8ud0PgIKz5hlFJr2VfH5IlxxlxbEYWHzGKZjnt-LOMecOhEvHeH7wOg4vtvcWi17Z1V4pvaTrO0kKdHzltXjDIgJVxJo2rXvFORM-KZhcswQ90YplrYrP3v32Wt4VM-Fy3uZks_Rf63KxWMcPglXp4IcpS4JLNJ2Ipvzio4TBsnqyUvWkpUt8qZISc0ZGlYBJd2v_VjgIFNNt6oe1MksAvb8ZO3m8AHNIonBoGhVaN2a0E5RUwpRlEudwi5MZkCJkBhgT6_Q","e":"AQAB"},{"kty":"EC","kid":"ec-1","crv":"P-256","x":"QAOYFvTd61Bl4FelKZcVLVQeBInflS6xtW-L3shPUCo","y":"5pFlPhEvrJeD0ZrhF3via1i9Nx0x1KHhbpQU1v4ga28"},{"kty":"oct","kid":"hmac-1","k":"b2F1dGgtZmlsdGVyIGZ1enppbmc6IGEgZml4ZWQsIHB1YmxpYyBITUFDIGtleSBvZiA2NCBieXRlcy4uLi4uLg"}]}"#;

/// The secret of `hmac-1` (public: it only signs fuzz inputs).
pub const HMAC_KEY: &[u8; 64] = b"oauth-filter fuzzing: a fixed, public HMAC key of 64 bytes......";

/// Every algorithm the filter knows.
const ALGS: [Alg; 13] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::ES512,
    Alg::EdDSA,
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
];

/// [`JWKS`], parsed.
pub fn fixed_keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let set = keys::parse_jwks(JWKS.as_bytes()).expect("the fixed JWKS parses");
        assert_eq!((set.keys.len(), set.problems.len()), (3, 0), "{set:?}");
        set
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An HMAC tag of `input` with [`HMAC_KEY`]: SHA-512 or SHA-384 if `header` names HS512 or
/// HS384, else SHA-256.
fn hmac_tag(header: &[u8], input: &[u8]) -> Vec<u8> {
    fn tag<M: Mac + hmac::digest::KeyInit>(input: &[u8]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(HMAC_KEY)
            .expect("HMAC takes keys of any length");
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
    let names = |alg: &[u8]| header.windows(alg.len()).any(|w| w == alg);
    if names(b"HS512") {
        tag::<Hmac<Sha512>>(input)
    } else if names(b"HS384") {
        tag::<Hmac<Sha384>>(input)
    } else {
        tag::<Hmac<Sha256>>(input)
    }
}

/// A compact JWS of `header` and `payload` (any bytes), signed with `signature`, or with
/// [`HMAC_KEY`] when `signature` is empty.
fn compact(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let signature = if signature.is_empty() {
        hmac_tag(header, input.as_bytes())
    } else {
        signature.to_vec()
    };
    format!("{input}.{}", b64(signature))
}

/// A good token: HS256 by `hmac-1`, issuer, audience and scopes the fixed configurations accept.
fn good_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let claims = json!({
            "iss": "https://idp.example", "aud": ["api", "other"], "sub": "alice",
            "exp": 4_102_444_800u64, "scope": "read write admin", "client_id": "cli",
            "realm_access": {"roles": ["x", "y"]}
        });
        compact(
            br#"{"alg":"HS256","typ":"JWT","kid":"hmac-1"}"#,
            claims.to_string().as_bytes(),
            b"",
        )
    })
}

/// The configuration of the `jwt` and `headers` targets: one provider with [`JWKS`] inline,
/// tokens in `Authorization: Bearer` or `?access_token=`, three claims copied to headers.
fn jwt_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let doc = json!({
            "realm": "fuzz",
            "providers": {"corp": {
                "issuer": "https://idp.example", "audiences": ["api"],
                "local_jwks": {"inline_string": JWKS},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"],
                "claim_to_headers": [
                    {"header_name": "x-user", "claim_name": "sub"},
                    {"header_name": "x-roles", "claim_name": "realm_access.roles"},
                    {"header_name": "x-scope", "claim_name": "scope"}
                ]
            }},
            "protected_resources": {"api": {"resource": "https://idp.example/api",
                                            "authorization_servers": ["https://idp.example"]}},
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"prefix": "/admin"}, "requires": {"provider_name": "corp", "scopes": ["admin"]}},
                {"match": {"prefix": "/step"}, "protected_resource": "api", "requires": {
                    "provider_name": "corp", "acr_values": ["phr"], "max_age": 300}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "corp", "scopes": ["read"]}}
            ]
        });
        Config::from_json(doc.to_string().as_bytes()).expect("the jwt target's configuration")
    })
}

/// The configuration of the `introspection` target: one provider that only introspects.
fn introspection_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let doc = json!({
            "realm": "fuzz",
            "providers": {"opaque": {
                "issuer": "https://idp.example", "audiences": ["api"],
                "introspection": {
                    "http_uri": {"uri": "https://idp.example/introspect", "cluster": "idp"},
                    "client_id": "gateway", "client_secret": "s3cr:t/+%",
                    "token_type_hint": "access_token"
                },
                "claim_to_headers": [
                    {"header_name": "x-user", "claim_name": "sub"},
                    {"header_name": "x-client", "claim_name": "client_id"}
                ]
            }},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "opaque", "scopes": ["read"]}}]
        });
        Config::from_json(doc.to_string().as_bytes()).expect("the introspection configuration")
    })
}

/// What the filter knows, fixed: every provider's keys are [`JWKS`] (also remote ones), and
/// every introspected token has the answer `answer` (`None`: inactive).
struct Fixed<'a> {
    answer: Option<&'a Map<String, Value>>,
}

impl Known for Fixed<'_> {
    fn keys_now(&self, _provider: usize) -> KeysNow<'_> {
        KeysNow::Ready {
            keys: &fixed_keys().keys,
            may_refetch: true,
        }
    }

    fn verified(&self, _key: &cache::TokenKey) -> Option<&Map<String, Value>> {
        None
    }

    fn introspected(&self, _provider: usize, _token: &str) -> Cached<'_> {
        match self.answer {
            Some(claims) => Cached::Active(claims),
            None => Cached::Inactive,
        }
    }
}

/// Decides `request` and checks what the filter promises of any decision.
fn decide_and_check<'c>(
    config: &'c Config,
    known: &dyn Known,
    request: Request<'_>,
) -> Decision<'c> {
    let decision = decision::decide(config, known, request);
    match &decision {
        Decision::Allow(forward) => {
            // A header the filter writes can never come from the client.
            for owned in &config.owned_headers {
                let sent = request
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(owned));
                assert!(
                    !sent || forward.remove.contains(&owned.as_str()),
                    "owned header {owned:?} kept: {forward:?}"
                );
            }
            for (name, value) in &forward.set {
                let injected = *name == "authorization" && forward.injected.is_some();
                assert!(
                    injected || config.owned_headers.iter().any(|o| o == name),
                    "{name:?} is not owned"
                );
                assert!(!value.chars().any(char::is_control), "{value:?}");
            }
            for verified in &forward.verified {
                // Verified by some provider the rule consulted, on a request that got through.
                assert!(matches!(
                    forward.passed,
                    Passed::Authenticated | Passed::Anonymous
                ));
                assert!(verified.until <= request.now * 1000 + MAX_VERIFIED_CACHE_MS);
            }
        }
        Decision::Deny(challenge) => {
            // The challenge goes out as a header value: printable ASCII only.
            if let Some(value) = &challenge.www_authenticate {
                assert!(
                    value.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{value:?}"
                );
            }
            assert!(challenge.www_authenticate.is_some() || challenge.status == 503);
            assert!(serde_json::from_str::<Value>(&challenge.body).is_ok());
            let status = match challenge.reason {
                DenyReason::MissingToken
                | DenyReason::InvalidToken
                | DenyReason::InsufficientUserAuthentication
                | DenyReason::InvalidDpopProof
                | DenyReason::UseDpopNonce => 401,
                DenyReason::InvalidRequest => 400,
                DenyReason::InsufficientScope => 403,
                DenyReason::Unavailable => 503,
            };
            assert_eq!(challenge.status, status);
            let _ = challenge.headers();
        }
        Decision::Serve(reply) => check_served(config, request.path, reply),
        Decision::Wait { provider, .. } => assert!(*provider < config.providers.len()),
        Decision::AwaitCredential { client, .. } => assert!(*client < config.clients.len()),
        Decision::Introspect { provider, token } => {
            assert!(*provider < config.providers.len());
            assert!(extract::is_b64token(token));
        }
    }
    decision
}

/// Only the metadata paths are answered, and only with what was built at load.
fn check_served(config: &Config, path: &str, reply: &oauth_filter::resource::Reply) {
    assert!(path.starts_with(oauth_filter::resource::WELL_KNOWN));
    assert!([200, 204, 404, 405].contains(&reply.status));
    let built = config.resources.iter().any(|r| r.document == reply.body);
    assert_eq!(reply.served, reply.status == 200 && built);
}

/// Whether `s` serializes as JSON without escapes.
fn plain(s: &str) -> bool {
    !s.chars().any(|c| c < ' ' || c == '"' || c == '\\')
}

/// Whether the strings of `value` (member names too) all serialize without escapes.
fn unescaped(value: &Value) -> bool {
    match value {
        Value::String(s) => plain(s),
        Value::Array(items) => items.iter().all(unescaped),
        Value::Object(members) => members.iter().all(|(k, v)| plain(k) && unescaped(v)),
        _ => true,
    }
}

/// Claims as they reach the caches: `json_size` never counts less than their JSON text (the
/// property `cache::json_size` documents, for strings without escapes), and the header values
/// made from them are never control characters.
fn check_claims(claims: &Map<String, Value>) {
    let size = cache::json_size(claims);
    if claims.iter().all(|(k, v)| plain(k) && unescaped(v)) {
        let text = serde_json::to_vec(claims).map_or(0, |t| t.len());
        assert!(size >= text, "json_size {size} < {text} bytes of JSON");
    }
    let _ = claims::scopes(claims);
    for name in claims
        .keys()
        .map(String::as_str)
        .chain(["sub", "a.b", "realm_access.roles"])
    {
        if let Some(value) = identity::claim_value(claims, name) {
            assert!(!value.chars().any(char::is_control), "{value:?}");
        }
    }
}

/// `extract`: token extraction from arbitrary headers and query.
///
/// Input: line 1 lists the provider's token sources, `;`-separated, each `h:<header>:<prefix>`
/// or `q:<query parameter>` or `c:<cookie>` (none usable: `Authorization: Bearer`); line 2 is the `:path`; every
/// further line is a header, `<name>:<value>` (the value any bytes but a newline).
pub fn extract(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let spec = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let mut sources: Vec<Source> = spec
        .split(';')
        .filter_map(|s| match s.splitn(3, ':').collect::<Vec<_>>()[..] {
            ["h", name, prefix] if !name.is_empty() => Some(Source::Header {
                name: name.to_ascii_lowercase(),
                prefix: prefix.to_string(),
            }),
            ["q", param] if !param.is_empty() => Some(Source::Param(param.to_string())),
            ["c", cookie] if !cookie.is_empty() => Some(Source::Cookie(cookie.to_string())),
            _ => None,
        })
        .collect();
    if sources.is_empty() {
        sources.push(Source::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
    }
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let owned: Vec<(String, &[u8])> = lines
        .map(|line| match line.iter().position(|b| *b == b':') {
            Some(i) => (
                String::from_utf8_lossy(&line[..i]).into_owned(),
                &line[i + 1..],
            ),
            None => (String::from_utf8_lossy(line).into_owned(), &[][..]),
        })
        .collect();
    let request_headers: Vec<(&str, &[u8])> = owned.iter().map(|(n, v)| (n.as_str(), *v)).collect();

    let found = extract::extract(&sources, &request_headers, &path);
    // The deferred check only ever turns a token into a refusal, never into another token.
    let settled = found.clone().settled();
    match (&found, &settled) {
        (Extracted::Token { token: a, .. }, Extracted::Token { token: b, .. }) => assert_eq!(a, b),
        (Extracted::Token { .. }, Extracted::Invalid(_)) => {}
        (raw, settled) => assert_eq!(raw, settled),
    }
    match settled {
        Extracted::Token { token, source, .. } => {
            assert!(extract::is_b64token(&token), "{token:?}");
            assert!(sources.contains(source));
            // A token taken from the query is gone from the path the upstream sees.
            if let Source::Param(param) = source {
                let stripped = extract::strip_param(&path, param);
                let again = extract::extract(std::slice::from_ref(source), &[], &stripped);
                assert!(
                    !matches!(again, Extracted::Token { .. }),
                    "{path:?} stripped of {param:?} is {stripped:?}, still with a token"
                );
            }
            // A token taken from a cookie is gone from the Cookie header the upstream sees.
            if let Source::Cookie(cookie) = source {
                let kept = extract::without_cookies(&request_headers, &[cookie.as_str()]);
                let kept: Vec<(&str, &[u8])> =
                    kept.iter().map(|c| ("cookie", c.as_bytes())).collect();
                let again = extract::extract(std::slice::from_ref(source), &kept, "/");
                assert!(
                    !matches!(again, Extracted::Token { .. }),
                    "{kept:?} still has the {cookie:?} cookie"
                );
            }
        }
        Extracted::Invalid(why) => assert!(!why.is_empty()),
        Extracted::Missing => {}
    }
    for (name, value) in extract::query_pairs(&path) {
        let _ = (extract::form_decode(name), extract::form_decode(value));
    }
}

/// `jwt`: parsing and signature verification against [`JWKS`], then the whole decision.
///
/// Input without a newline: the token itself. Input with one: `<header JSON>\n<payload
/// JSON>\n<signature bytes>`, base64url-encoded into a token here; with no signature bytes it
/// is signed with [`HMAC_KEY`], so arbitrary headers and claims get past the signature check to
/// the claim checks, scopes and `claim_to_headers`.
pub fn jwt(data: &[u8]) {
    let token = if data.contains(&b'\n') {
        let mut parts = data.splitn(3, |b| *b == b'\n');
        let header = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        compact(header, payload, parts.next().unwrap_or_default()).into_bytes()
    } else {
        data.to_vec()
    };
    let config = jwt_config();
    let keys = &fixed_keys().keys;

    if let Ok(text) = std::str::from_utf8(&token) {
        let shaped = jwt::is_jwt_shaped(text);
        assert_eq!(shaped, introspection::is_jwt_shaped(text));
        let if_jwt = jwt::parse_if_jwt(text);
        assert_eq!(shaped, if_jwt.is_some());
        let parsed = jwt::parse(text);
        let mut signed = false;
        if let Ok(jws) = &parsed {
            assert!(matches!(if_jwt, Some(Ok(_))));
            assert!(text.starts_with(jws.signing_input));
            let _ = host::host_hash(jws.alg);
            if let Some(der) = host::ecdsa_der(jws.alg, &jws.signature) {
                assert_eq!(der[0], 0x30);
            }
            signed = jwt::verify_signature(jws, keys).is_ok();
        }
        let provider = &config.providers[0];
        if let Ok(claims) = authenticate::authenticate(provider, keys, text, NOW) {
            assert!(signed, "authenticated without a valid signature");
            check_claims(&claims);
        }
    }

    // The token in a request, as the filter sees it.
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(&token);
    let request_headers: Vec<(&str, &[u8])> =
        vec![("authorization", &value[..]), ("x-user", &b"mallory"[..])];
    let request = Request {
        path: "/api/orders?page=2",
        headers: &request_headers,
        now: NOW,
    };
    let decision = decide_and_check(config, &LocalKeys(config), request);
    if let Decision::Allow(forward) = &decision {
        if forward.passed == Passed::Authenticated {
            // Allowed only with a token `authenticate` accepts on its own.
            let text = std::str::from_utf8(&token).expect("an allowed token is text");
            let provider = &config.providers[0];
            let accepted =
                authenticate::authenticate(provider, keys, text.trim_start_matches(' '), NOW);
            assert!(accepted.is_ok(), "{accepted:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(&token) {
        let path = format!("/admin/users?access_token={text}&x=1");
        let request = Request {
            path: &path,
            headers: &[],
            now: NOW,
        };
        decide_and_check(config, &LocalKeys(config), request);
    }
}

/// `jwks`: JWKS parsing, then every key it gives checks a signature with every algorithm it
/// accepts (arbitrary moduli, exponents and points in the verifiers), and the fixed HS256 token
/// is checked against the whole set (key choice by `kid`).
pub fn jwks(data: &[u8]) {
    let Ok(set) = keys::parse_jwks(data) else {
        return;
    };
    // Problems never echo key material: no key member of 16 characters or more shows up.
    let doc: Value = serde_json::from_slice(data).unwrap_or_default();
    let secrets: Vec<&str> = doc
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|jwk| ["k", "n", "e", "x", "y", "d", "p", "q"].map(|m| jwk.get(m)))
        .filter_map(|v| v.and_then(Value::as_str))
        .filter(|s| s.len() >= 16)
        .collect();
    for problem in &set.problems {
        for secret in &secrets {
            assert!(!problem.contains(secret), "{problem:?} echoes key material");
        }
    }
    for (i, key) in set.keys.iter().enumerate() {
        if let Some(pinned) = key.alg {
            assert!(pinned.fits(&key.material), "{key:?}");
        }
        if key.kid.is_some() {
            assert!(
                set.keys[..i].iter().all(|k| k.kid != key.kid),
                "kid repeats"
            );
        }
        check_key(key);
    }
    let token = good_token();
    let jws = jwt::parse(token).expect("the fixed token parses");
    let _ = jwt::verify_signature(&jws, &set.keys);
}

/// One key of a parsed set: RSA and EC keys have their DER for the host's verifier, and the key
/// checks a signature of the right length (and an empty one) with each algorithm it accepts.
fn check_key(key: &Jwk) {
    let input = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0";
    let spki = host::spki_der(&key.material);
    assert_eq!(
        spki.is_some(),
        !matches!(key.material, KeyMaterial::Ed25519(_) | KeyMaterial::Hmac(_))
    );
    for alg in ALGS.into_iter().filter(|alg| key.accepts(*alg)) {
        let len = match (&key.material, alg) {
            (KeyMaterial::Rsa(k), _) => k.size(),
            (_, Alg::ES256 | Alg::EdDSA | Alg::HS256) => 64,
            (_, Alg::ES384 | Alg::HS384) => 96,
            (_, Alg::ES512) => 132,
            _ => 64,
        };
        for signature in [vec![0x5a; len], Vec::new()] {
            let _ = verify::verify(alg, &key.material, input, &signature);
            let _ = host::ecdsa_der(alg, &signature);
        }
    }
}

/// `introspection`: RFC 7662 answers, then the decision on a token with that answer.
///
/// Input: line 1 is the HTTP status (empty: no answer at all), the rest the body.
pub fn introspection(data: &[u8]) {
    let (status, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let status = (!status.is_empty()).then(|| String::from_utf8_lossy(status).into_owned());
    let config = introspection_config();
    let provider = &config.providers[0];
    let answer = introspection::parse(status.as_deref(), body);
    let claims = match &answer {
        Ok(Answer::Active(claims)) => {
            assert!(!claims.contains_key("active"));
            check_claims(claims);
            let _ = claims::check_vouched(claims, &provider.claims, NOW);
            Some(claims)
        }
        Ok(Answer::Inactive) => None,
        Err(failure) => {
            let _ = failure.describe();
            if status.as_deref() == Some("200") {
                assert!(matches!(failure, Failure::TooLarge | Failure::NotJson));
            }
            return;
        }
    };
    let request_headers: Vec<(&str, &[u8])> = vec![
        ("authorization", &b"Bearer opaque-token.123"[..]),
        ("x-user", &b"mallory"[..]),
    ];
    let request = Request {
        path: "/orders",
        headers: &request_headers,
        now: NOW,
    };
    let decision = decide_and_check(config, &Fixed { answer: claims }, request);
    if let Decision::Allow(forward) = decision {
        // Allowed only on an active answer that passes the claim checks and grants `read`.
        assert_eq!(forward.passed, Passed::Authenticated);
        let claims = claims.expect("allowed on an active answer");
        assert!(claims::check_vouched(claims, &provider.claims, NOW).is_ok());
        assert!(claims::has_scopes(claims, &["read".to_string()]));
    }

    // The body as a token: form encoding round-trips, the request can always be built.
    if let Ok(text) = std::str::from_utf8(body) {
        let encoded = introspection::form_encode(text);
        assert!(encoded.is_ascii());
        assert_eq!(extract::form_decode(&encoded).as_deref(), Some(text));
        if let Some(settings) = &provider.introspection {
            let call = introspection::request(settings, text).expect("a valid endpoint");
            assert!(call.body.is_ascii());
        }
    }
}

/// A request's headers: names and values.
type RequestHeaders<'a> = Vec<(&'a str, &'a [u8])>;

/// `config`: the configuration parser; a configuration it accepts then decides a few requests.
pub fn config(data: &[u8]) {
    let config = match Config::from_json(data) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(!config.providers.is_empty());
    for provider in &config.providers {
        assert!(!provider.sources.is_empty());
        if let Some(settings) = &provider.introspection {
            assert!(introspection::request(settings, "tok").is_some());
        }
        if let KeySource::Remote(remote) = &provider.keys {
            // The URLs the filter will call must be ones it can call.
            for uri in remote.jwks.iter().chain(&remote.discovery) {
                assert!(config::split_url(&uri.uri).is_some(), "{uri:?}");
            }
        }
        assert!(provider.claims.clock_skew_seconds <= config::MAX_CLOCK_SKEW);
    }
    for rule in &config.rules {
        if let Some(requires) = &rule.requires {
            let count = config.providers.len();
            assert!(requires.providers(count).iter().all(|p| p < count));
            assert_eq!(rule.providers, requires.providers(count));
        }
        assert!(rule.resource.is_none_or(|r| r < config.resources.len()));
    }
    check_resources(&config);
    let token = good_token();
    let query = format!("/api/orders?access_token={token}");
    let bearer = format!("Bearer {token}");
    let requests: [(&str, RequestHeaders<'_>); 4] = [
        (&query, vec![("x-user", &b"mallory"[..])]),
        (
            "/admin",
            vec![
                ("authorization", bearer.as_bytes()),
                ("x-api-key", token.as_bytes()),
            ],
        ),
        (
            "/",
            vec![
                ("authorization", &b"Bearer opaque-token"[..]),
                ("x-scopes", &b"all"[..]),
            ],
        ),
        ("/public/x", vec![]),
    ];
    let answer = json!({
        "sub": "alice", "scope": "read write admin", "exp": 4_102_444_800u64,
        "iss": "https://idp.example", "aud": "api", "client_id": "cli"
    });
    let answer = answer.as_object();
    for (path, request_headers) in &requests {
        let request = Request {
            path,
            headers: request_headers,
            now: NOW,
        };
        decide_and_check(&config, &LocalKeys(&config), request);
        decide_and_check(&config, &Fixed { answer }, request);
    }
}

/// Each protected resource's document is JSON naming the configured resource, is served at its
/// own path (GET), and its URL, the challenges' `resource_metadata`, is quotable.
fn check_resources(config: &Config) {
    for r in &config.resources {
        let doc: Value = serde_json::from_str(&r.document).expect("a document is JSON");
        assert_eq!(doc["resource"].as_str(), Some(r.resource.as_str()));
        assert!(r
            .metadata_path
            .starts_with(oauth_filter::resource::WELL_KNOWN));
        assert!(r.metadata_url.ends_with(&r.metadata_path));
        assert!(plain(&r.metadata_url), "{:?}", r.metadata_url);
        assert!(!r.audiences.is_empty());
        let get = [(":method", &b"GET"[..])];
        let request = Request {
            path: &r.metadata_path,
            headers: &get,
            now: NOW,
        };
        let Decision::Serve(reply) = decide_and_check(config, &LocalKeys(config), request) else {
            panic!("{} is not served", r.metadata_path);
        };
        assert_eq!((reply.status, &reply.body), (200, &r.document));
    }
}

/// `headers`: the proxy-wasm header-map buffer parser; the pairs it gives round-trip, and make a
/// request the `jwt` target's configuration decides (`:path` from the pairs, as the host does).
pub fn headers(data: &[u8]) {
    let pairs = headers::parse_pairs(data);
    if let Some(count) = data.get(..4) {
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
        assert!(pairs.len() as u64 <= u64::from(count));
    } else {
        assert!(pairs.is_empty());
    }
    let text: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(n, v)| Some((*n, std::str::from_utf8(v).ok()?)))
        .collect();
    let wire = headers::serialize_pairs(&text);
    let back = headers::parse_pairs(&wire);
    let back: Vec<(&str, &str)> = back
        .iter()
        .map(|(n, v)| (*n, std::str::from_utf8(v).expect("serialized from text")))
        .collect();
    assert_eq!(back, text);

    let path = pairs
        .iter()
        .find(|(n, _)| *n == ":path")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .unwrap_or("/");
    let config = jwt_config();
    let request = Request {
        path,
        headers: &pairs,
        now: NOW,
    };
    decide_and_check(config, &LocalKeys(config), request);
}

/// `host_answers`: what other parties hand the shell besides tokens. The first byte picks the
/// parser, the rest is its input: an OIDC discovery document (`remote::parse_discovery`), the
/// key-fetch record other VMs wrote to shared data (`remote::Record::from_bytes`, whose
/// schedule must stay sane whatever the numbers), or the host's `verify_signature` answer
/// (`jwt::host::verify_result`).
pub fn host_answers(data: &[u8]) {
    use oauth_filter::remote::{self, Record};
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            const ISSUER: &str = "https://idp.test";
            if let Ok(found) = remote::parse_discovery(rest, ISSUER) {
                assert!(config::split_url(&found.jwks_uri).is_some());
                if let Some(endpoint) = &found.introspection_endpoint {
                    assert!(config::split_url(endpoint).is_some());
                }
            }
        }
        1 => {
            let record = Record::from_bytes(rest);
            assert_eq!(Record::from_bytes(&record.to_bytes()), record);
            for now in [
                0,
                1,
                record.failed_at,
                record.fetched_at,
                u64::MAX / 2,
                u64::MAX,
            ] {
                let _ = record.fetch_due(300_000, now, true);
                let _ = record.fetch_due(0, now, false);
                if record.refetch_allowed(now) {
                    assert!(!record.backing_off(now));
                }
                let next = record.started(now, true).failed(now);
                // Right after a failure the provider backs off (the end of time aside).
                assert!(next.backing_off(now) || now > u64::MAX - remote::MAX_BACKOFF_MS);
                let good = record.started(now, false).succeeded(String::new(), now);
                assert_eq!(good.failures, 0);
            }
            assert!(record.backoff_ms() <= remote::MAX_BACKOFF_MS);
        }
        _ => {
            let _ = host::verify_result(rest);
        }
    }
}

/// The request of every `dpop_proof` input: `GET https://api.example/orders`.
pub const DPOP_TARGET: dpop::Target<'static> = dpop::Target {
    method: "GET",
    scheme: "https",
    authority: "api.example",
    path: "/orders?page=2",
};

/// The secret the `dpop_proof` target's nonces are made with.
pub const DPOP_SECRET: [u8; 32] = [0x5a; 32];

/// A DPoP proof, then optionally a newline and the access token it is for (`token` if none),
/// checked against [`DPOP_TARGET`] at [`NOW`] with nonces required. A proof that passes must be
/// small enough, name a key by a 43-character thumbprint, carry a `jti`, and be remembered no
/// longer than `max_age` plus the skew; any refusal has a fixed description.
pub fn dpop_proof(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (proof, token) = text.split_once('\n').unwrap_or((text, "token"));
    let expect = dpop::Expect {
        target: DPOP_TARGET,
        token,
        now: NOW,
        max_age: 60,
        skew: 60,
        jkt: None,
        nonce_secret: Some(&DPOP_SECRET),
    };
    let check =
        |alg, key: &Jwk, input: &[u8], sig: &[u8]| verify::verify(alg, &key.material, input, sig);
    match dpop::check(proof, &expect, &check) {
        Ok(proven) => {
            assert!(proof.len() <= dpop::MAX_PROOF_BYTES);
            assert_eq!(proven.thumbprint.len(), 43);
            assert!(!proven.jti.is_empty() && proven.jti.len() <= dpop::MAX_JTI_BYTES);
            assert!(proven.until <= NOW + 60 + 120);
        }
        Err(e) => {
            assert!(
                e.description().starts_with("The DPoP proof") || e == dpop::ProofError::Missing
            );
        }
    }
    // The same text as a slot of the replay store never panics either.
    let _ = dpop::replay::record(data, dpop::replay::Use { key: 1, until: NOW }, NOW);
}
